//! Logins, player ids, the hold limit, and what clients and zones may send.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cport_mmo::cluster::wire::Msg;

use super::*;
use crate::gateway::MAX_HELD;
use cport_mmo_proto::ServerPacket;

#[test]
fn a_login_goes_to_the_home_zone_holds_and_owned_releases_in_order() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    r.on_connect(7, 1);
    r.on_packet(7, &login("alice"), now, &mut fx);
    let player = r.player_of(7).unwrap();
    assert_eq!(
        fx.take_zone(),
        vec![(
            home("alice"),
            Msg::Login {
                session: 7,
                player,
                name: "alice".into()
            }
        )]
    );
    assert_eq!(fx.timers[0].0, Duration::from_secs(5));
    for t in 0..3 {
        r.on_packet(7, &mv(t), now, &mut fx);
    }
    assert!(fx.zone.is_empty(), "held while logging in");
    assert_eq!(r.counters().held, 3);
    // The player's cell is in zone 2: that zone takes it.
    let owned = Msg::Owned {
        session: 7,
        player,
        epoch: 1,
    };
    r.on_bus(2, owned, now, &mut fx);
    let mut want = vec![(2, Msg::Confirm { player, epoch: 1 })];
    want.extend((0..3).map(|t| (2, packet(player, 1, t))));
    assert_eq!(fx.take_zone(), want);
    r.on_packet(7, &mv(9), now, &mut fx);
    assert_eq!(fx.take_zone(), vec![(2, packet(player, 1, 9))]);
    let c = r.counters();
    assert_eq!((c.logins, c.held, c.routed), (1, 0, 4));
    assert!(fx.closed.is_empty() && fx.sent.is_empty());
}

#[test]
fn a_first_packet_other_than_login_is_rejected() {
    let (mut r, mut fx) = (routes(), Rec::default());
    r.on_connect(1, 1);
    r.on_packet(1, &mv(0), Instant::now(), &mut fx);
    assert_eq!(
        fx.closed,
        vec![(1, Closing::Reject("packet type 1 before login".into()))]
    );
    assert!(fx.zone.is_empty());
    // Nothing it sends afterwards is taken.
    r.on_packet(1, &login("bob"), Instant::now(), &mut fx);
    assert!(fx.zone.is_empty() && r.player_of(1).is_none());
}

#[test]
fn a_packet_that_does_not_decode_is_rejected() {
    let (mut r, mut fx) = (routes(), Rec::default());
    let p = logged_in(&mut r, &mut fx, 1, "carol", 0, 1);
    r.on_packet(1, &[3, 1, 9], Instant::now(), &mut fx); // CS_MOVE of 3 bytes
    assert!(matches!(&fx.closed[..], [(1, Closing::Reject(_))]));
    assert!(fx.zone.is_empty());
    r.on_close(1, Instant::now(), &mut fx);
    assert_eq!(
        fx.take_zone(),
        vec![(
            0,
            Msg::Disconnect {
                player: p,
                epoch: 1
            }
        )]
    );
}

#[test]
fn a_bad_name_is_told_login_fail_and_closed_after_flush() {
    let (mut r, mut fx) = (routes(), Rec::default());
    r.on_connect(1, 1);
    r.on_packet(1, &login(""), Instant::now(), &mut fx);
    let fail = Bytes::from(ServerPacket::LoginFail.encode(H));
    assert_eq!(fx.sent, vec![(1, fail)]);
    assert_eq!(fx.closed, vec![(1, Closing::AfterFlush)]);
    assert!(fx.zone.is_empty() && r.player_of(1).is_none());
    assert_eq!(r.counters().login_fails, 1);
}

#[test]
fn without_a_free_id_the_login_is_refused_as_server_full() {
    let (mut r, mut fx, now) = (routes_with(1), Rec::default(), Instant::now());
    r.on_connect(1, 1);
    r.on_packet(1, &login("a"), now, &mut fx);
    r.on_connect(2, 2);
    r.on_packet(2, &login("b"), now, &mut fx);
    assert_eq!(fx.zone.len(), 1, "only the first login reaches a zone");
    assert_eq!(fx.sent[0].0, 2);
    assert_eq!(fx.closed, vec![(2, Closing::AfterFlush)]);
}

#[test]
fn a_login_no_zone_answers_fails_and_a_late_owned_is_told_disconnect() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    r.on_connect(1, 1);
    r.on_packet(1, &login("slow"), now, &mut fx);
    let player = r.player_of(1).unwrap();
    let (_, t) = fx.timers[0];
    r.on_packet(1, &mv(1), now, &mut fx);
    r.on_timer(t, now, &mut fx);
    assert_eq!(fx.sent.len(), 1, "SC_LOGIN_FAIL");
    assert_eq!(fx.closed, vec![(1, Closing::AfterFlush)]);
    assert_eq!(r.counters().login_timeouts, 1);
    fx.take_zone();
    // The zone answers while the session is still flushing: it is told to remove the player,
    // and nothing held is released.
    let owned = Msg::Owned {
        session: 1,
        player,
        epoch: 1,
    };
    r.on_bus(1, owned.clone(), now, &mut fx);
    assert_eq!(
        fx.take_zone(),
        vec![(1, Msg::Disconnect { player, epoch: 1 })]
    );
    r.on_close(1, now, &mut fx);
    assert!(fx.zone.is_empty());
    assert_eq!(r.counters().held, 0);

    // And after the close, an answer from a zone for a login nobody was told about.
    r.on_connect(2, 2);
    r.on_packet(2, &login("slower"), now, &mut fx);
    let p2 = r.player_of(2).unwrap();
    fx.take_zone();
    r.on_close(2, now, &mut fx);
    // The home zone frees the name of a login given up.
    assert_eq!(
        fx.take_zone(),
        vec![(
            home("slower"),
            Msg::Disconnect {
                player: p2,
                epoch: 0
            }
        )]
    );
    r.on_bus(
        3,
        Msg::Owned {
            session: 2,
            player: p2,
            epoch: 1,
        },
        now,
        &mut fx,
    );
    assert_eq!(
        fx.take_zone(),
        vec![(
            3,
            Msg::Disconnect {
                player: p2,
                epoch: 1
            }
        )]
    );
}

#[test]
fn a_freed_id_is_not_reused_within_the_quarantine_and_comes_back_first_in_first_out() {
    let (mut r, mut fx, t0) = (routes_with(3), Rec::default(), Instant::now());
    for sid in 1..=3 {
        r.on_connect(sid, sid as u32);
        r.on_packet(sid, &login(&format!("p{sid}")), t0, &mut fx);
    }
    assert_eq!(
        (1..=3).map(|s| r.player_of(s).unwrap()).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    r.on_close(2, t0, &mut fx);
    r.on_close(1, t0 + Duration::from_secs(1), &mut fx);
    let try_login = |r: &mut Routes<u32>, fx: &mut Rec, sid: u64, at: Instant| {
        r.on_connect(sid, sid as u32);
        r.on_packet(sid, &login("again"), at, fx);
        r.player_of(sid)
    };
    assert_eq!(
        try_login(&mut r, &mut fx, 10, t0 + Duration::from_secs(9)),
        None
    );
    assert_eq!(
        try_login(&mut r, &mut fx, 11, t0 + Duration::from_secs(10)),
        Some(1)
    );
    assert_eq!(
        try_login(&mut r, &mut fx, 12, t0 + Duration::from_secs(10)),
        None
    );
    assert_eq!(
        try_login(&mut r, &mut fx, 13, t0 + Duration::from_secs(11)),
        Some(0)
    );
}

#[test]
fn at_most_max_held_packets_are_held_and_one_more_rejects_the_session() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    r.on_connect(1, 1);
    r.on_packet(1, &login("flood"), now, &mut fx);
    for t in 0..MAX_HELD as u32 {
        r.on_packet(1, &mv(t), now, &mut fx);
    }
    assert!(fx.closed.is_empty());
    r.on_packet(1, &mv(99), now, &mut fx);
    assert_eq!(
        fx.closed,
        vec![(
            1,
            Closing::Reject(format!("more than {MAX_HELD} packets while logging in"))
        )]
    );
    assert_eq!(r.counters().held, MAX_HELD as u64);
    r.on_close(1, now, &mut fx);
    assert_eq!(r.counters().held, 0);

    // The same limit while handed off.
    let p = logged_in(&mut r, &mut fx, 2, "flood2", 0, 1);
    begin(&mut r, &mut fx, 2, 0, 1, 1);
    for t in 0..=MAX_HELD as u32 {
        r.on_packet(2, &mv(t), now, &mut fx);
    }
    assert!(matches!(&fx.closed[..], [(2, Closing::Reject(w))] if w.contains("handed off")));
    // The hand-off completes after the reject: the new zone removes the player.
    r.on_bus(
        1,
        Msg::Owned {
            session: 2,
            player: p,
            epoch: 2,
        },
        now,
        &mut fx,
    );
    assert_eq!(
        fx.take_zone(),
        vec![(
            1,
            Msg::Disconnect {
                player: p,
                epoch: 2
            }
        )]
    );
}

#[test]
fn zones_sends_and_closes_reach_the_client_and_unknown_sessions_are_dropped() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    logged_in(&mut r, &mut fx, 5, "z", 0, 1);
    let bytes = Bytes::from_static(&[2, 7, 3, 8]);
    r.on_bus(
        0,
        Msg::Send {
            session: 5,
            bytes: bytes.clone(),
        },
        now,
        &mut fx,
    );
    r.on_bus(
        0,
        Msg::Send {
            session: 6,
            bytes: bytes.clone(),
        },
        now,
        &mut fx,
    );
    assert_eq!(fx.sent, vec![(5, bytes)]);
    assert_eq!(r.counters().unknown_session, 1);
    r.on_bus(
        0,
        Msg::Close {
            session: 5,
            reason: Some("CS_LOGIN when already logged in".into()),
        },
        now,
        &mut fx,
    );
    assert_eq!(
        fx.closed,
        vec![(5, Closing::Reject("CS_LOGIN when already logged in".into()))]
    );
    let (mut r, mut fx) = (routes(), Rec::default());
    logged_in(&mut r, &mut fx, 5, "z", 0, 1);
    r.on_bus(
        0,
        Msg::Close {
            session: 5,
            reason: None,
        },
        now,
        &mut fx,
    );
    assert_eq!(fx.closed, vec![(5, Closing::AfterFlush)]);
}

#[test]
fn junk_from_zones_is_counted_and_ignored() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    let p = logged_in(&mut r, &mut fx, 5, "j", 0, 1);
    // Entries a gateway never takes.
    r.on_bus(0, Msg::GhostLeave { id: 3 }, now, &mut fx);
    r.on_bus(
        0,
        Msg::Held {
            player: p,
            epoch: 1,
        },
        now,
        &mut fx,
    );
    assert_eq!(r.counters().misdirected, 2);
    // A hand-off begun by a zone that is not the route, at a wrong epoch, to no zone, or
    // for an unknown session.
    for (zone, epoch, to, session) in [
        (1, 1, 2, 5),
        (0, 2, 1, 5),
        (0, 1, 9, 5),
        (0, 1, 0, 5),
        (0, 1, 1, 77),
    ] {
        let m = Msg::HandoffBegin {
            session,
            player: p,
            epoch,
            to,
            next: epoch + 1,
        };
        r.on_bus(zone, m, now, &mut fx);
    }
    // A cancel with nothing to cancel, from the route zone at its epoch: the zone says a
    // claim again whose Confirm it never got (lost on the bus), and gets it again.
    r.on_bus(
        0,
        Msg::HandoffCancel {
            session: 5,
            player: p,
            epoch: 1,
        },
        now,
        &mut fx,
    );
    assert_eq!(
        fx.take_zone(),
        vec![(
            0,
            Msg::Confirm {
                player: p,
                epoch: 1
            }
        )]
    );
    assert_eq!(r.counters().restated, 1);
    // A timer that is not the session's.
    let t = Timer {
        kind: TimerKind::Handoff,
        session: 5,
        serial: 12345,
    };
    r.on_timer(t, now, &mut fx);
    assert!(fx.zone.is_empty() && fx.closed.is_empty() && fx.timers.is_empty());
    assert_eq!(r.route_of(5), Some((0, 1)));
    let c = r.counters();
    // Four stale hand-off starts (the unknown session is counted apart); the cancel was a
    // restated claim.
    assert_eq!((c.stale, c.unknown_session, c.restated), (4, 1, 1));
}

#[test]
fn timers_survive_the_trip_through_a_port_key() {
    for t in [
        Timer {
            kind: TimerKind::Login,
            session: u64::MAX,
            serial: u32::MAX,
        },
        Timer {
            kind: TimerKind::Handoff,
            session: 1 << 32 | 5,
            serial: 0,
        },
    ] {
        assert!(t.key() <= cport_server::MAX_USER_KEY);
        assert_eq!(Timer::from_key(t.key(), t.value()), Some(t));
    }
    assert_eq!(Timer::from_key(1, 0), None);
}
