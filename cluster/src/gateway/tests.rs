//! The routing state machine's promises, driven without sockets or a bus: each test feeds
//! [`Routes`] client packets, closes, zone entries and timers, and checks what it sent.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cport_mmo::cluster::wire::Msg;
use cport_mmo::cluster::Layout;
use cport_mmo_proto::{ClientPacket, Direction, ServerPacket, SizeField};

use super::{Closing, Effects, Ids, Routes, Settings, Timer, TimerKind, MAX_HELD};

/// Everything the state machine did, in order per kind.
#[derive(Default)]
struct Rec {
    zone: Vec<(u16, Msg)>,
    sent: Vec<(u32, Bytes)>,
    closed: Vec<(u32, Closing)>,
    timers: Vec<(Duration, Timer)>,
}

impl Effects<u32> for Rec {
    fn zone(&mut self, zone: u16, m: Msg) {
        self.zone.push((zone, m));
    }
    fn send(&mut self, conn: &u32, bytes: Bytes) {
        self.sent.push((*conn, bytes));
    }
    fn close(&mut self, conn: &u32, how: Closing) {
        self.closed.push((*conn, how));
    }
    fn timer(&mut self, after: Duration, timer: Timer) {
        self.timers.push((after, timer));
    }
}

impl Rec {
    fn take_zone(&mut self) -> Vec<(u16, Msg)> {
        std::mem::take(&mut self.zone)
    }
}

const H: SizeField = SizeField::U8;

fn routes_with(max_users: usize) -> Routes<u32> {
    let set = Settings {
        layout: Layout::new(2000, 4).unwrap(),
        header: H,
        login_timeout: Duration::from_secs(5),
        handoff_timeout: Duration::from_secs(3),
    };
    Routes::new(set, Ids::new(0, 1, max_users))
}

fn routes() -> Routes<u32> {
    routes_with(100)
}

fn login(name: &str) -> Vec<u8> {
    ClientPacket::Login {
        name: cport_mmo_proto::name(name),
    }
    .encode(H)
}

fn mv(t: u32) -> Vec<u8> {
    ClientPacket::Move {
        direction: Direction::Right,
        move_time: t,
    }
    .encode(H)
}

fn packet(player: u32, epoch: u32, t: u32) -> Msg {
    Msg::Packet {
        player,
        epoch,
        packet: Bytes::from(mv(t)),
    }
}

fn home(name: &str) -> u16 {
    Layout::new(2000, 4).unwrap().home_of(name) as u16
}

/// Session `sid` (client `conn`) logs in as `name` and zone `zone` takes it at `epoch`.
/// Returns the player id; the recorder is emptied.
fn logged_in(
    r: &mut Routes<u32>,
    fx: &mut Rec,
    sid: u64,
    name: &str,
    zone: u16,
    epoch: u32,
) -> u32 {
    let now = Instant::now();
    r.on_connect(sid, sid as u32);
    r.on_packet(sid, &login(name), now, fx);
    let player = r.player_of(sid).expect("a player id");
    r.on_bus(
        zone,
        Msg::Owned {
            session: sid,
            player,
            epoch,
        },
        now,
        fx,
    );
    assert_eq!(r.route_of(sid), Some((zone, epoch)));
    *fx = Rec::default();
    player
}

/// Zone `zone` begins handing `sid`'s player off to `to`; the gateway answers `Held`.
fn begin(r: &mut Routes<u32>, fx: &mut Rec, sid: u64, zone: u16, epoch: u32, to: u16) -> Timer {
    let player = r.player_of(sid).unwrap();
    let m = Msg::HandoffBegin {
        session: sid,
        player,
        epoch,
        to,
    };
    r.on_bus(zone, m, Instant::now(), fx);
    assert_eq!(fx.take_zone(), vec![(zone, Msg::Held { player, epoch })]);
    let (after, t) = fx.timers.pop().expect("a hand-off timer");
    assert_eq!(
        (after, t.kind),
        (Duration::from_secs(3), TimerKind::Handoff)
    );
    t
}

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
    r.on_close(2, now, &mut fx);
    fx.take_zone();
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
fn a_hand_off_switches_the_route_and_releases_held_packets_at_the_new_epoch() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    let p = logged_in(&mut r, &mut fx, 5, "walker", 0, 1);
    r.on_packet(5, &mv(1), now, &mut fx);
    assert_eq!(fx.take_zone(), vec![(0, packet(p, 1, 1))]);
    let _ = begin(&mut r, &mut fx, 5, 0, 1, 1);
    r.on_packet(5, &mv(2), now, &mut fx);
    r.on_packet(5, &mv(3), now, &mut fx);
    assert!(fx.zone.is_empty());
    assert_eq!(r.route_of(5), None, "holding");
    let owned = Msg::Owned {
        session: 5,
        player: p,
        epoch: 2,
    };
    r.on_bus(1, owned, now, &mut fx);
    assert_eq!(
        fx.take_zone(),
        vec![
            (
                1,
                Msg::Confirm {
                    player: p,
                    epoch: 2
                }
            ),
            (1, packet(p, 2, 2)),
            (1, packet(p, 2, 3)),
        ]
    );
    r.on_packet(5, &mv(4), now, &mut fx);
    assert_eq!(fx.take_zone(), vec![(1, packet(p, 2, 4))]);
    assert_eq!(r.counters().handoffs_completed, 1);
}

#[test]
fn the_routed_packet_before_held_is_sent_before_it() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    let p = logged_in(&mut r, &mut fx, 5, "x", 0, 1);
    r.on_packet(5, &mv(1), now, &mut fx);
    r.on_bus(
        0,
        Msg::HandoffBegin {
            session: 5,
            player: p,
            epoch: 1,
            to: 3,
        },
        now,
        &mut fx,
    );
    assert_eq!(
        fx.take_zone(),
        vec![
            (0, packet(p, 1, 1)),
            (
                0,
                Msg::Held {
                    player: p,
                    epoch: 1
                }
            )
        ]
    );
}

#[test]
fn a_cancelled_hand_off_releases_the_held_packets_back_to_the_old_zone() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    let p = logged_in(&mut r, &mut fx, 5, "back", 2, 4);
    let t = begin(&mut r, &mut fx, 5, 2, 4, 3);
    r.on_packet(5, &mv(1), now, &mut fx);
    r.on_bus(
        2,
        Msg::HandoffCancel {
            session: 5,
            player: p,
            epoch: 4,
        },
        now,
        &mut fx,
    );
    assert_eq!(
        fx.take_zone(),
        vec![
            (
                2,
                Msg::Confirm {
                    player: p,
                    epoch: 4
                }
            ),
            (2, packet(p, 4, 1))
        ]
    );
    assert_eq!(r.route_of(5), Some((2, 4)));
    // The old hold's timer no longer does anything.
    r.on_timer(t, now, &mut fx);
    assert!(fx.zone.is_empty() && fx.closed.is_empty());
    assert_eq!(r.counters().handoffs_cancelled, 1);
}

#[test]
fn a_stale_owned_is_revoked() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    let p = logged_in(&mut r, &mut fx, 5, "s", 0, 3);
    // Not holding.
    let owned = |epoch| Msg::Owned {
        session: 5,
        player: p,
        epoch,
    };
    r.on_bus(1, owned(4), now, &mut fx);
    assert_eq!(
        fx.take_zone(),
        vec![(
            1,
            Msg::Revoke {
                player: p,
                epoch: 4
            }
        )]
    );
    // Holding, but not a newer epoch.
    begin(&mut r, &mut fx, 5, 0, 3, 1);
    r.on_bus(1, owned(3), now, &mut fx);
    assert_eq!(
        fx.take_zone(),
        vec![(
            1,
            Msg::Revoke {
                player: p,
                epoch: 3
            }
        )]
    );
    assert_eq!(r.route_of(5), None, "still holding");
    // Another player's id on this session.
    r.on_bus(
        1,
        Msg::Owned {
            session: 5,
            player: p + 1,
            epoch: 9,
        },
        now,
        &mut fx,
    );
    assert_eq!(
        fx.take_zone(),
        vec![(
            1,
            Msg::Revoke {
                player: p + 1,
                epoch: 9
            }
        )]
    );
    assert_eq!(r.counters().revokes, 3);
}

#[test]
fn a_cancel_after_the_hand_off_completed_is_revoked() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    let p = logged_in(&mut r, &mut fx, 5, "c", 0, 1);
    begin(&mut r, &mut fx, 5, 0, 1, 1);
    r.on_bus(
        1,
        Msg::Owned {
            session: 5,
            player: p,
            epoch: 2,
        },
        now,
        &mut fx,
    );
    fx.take_zone();
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
            Msg::Revoke {
                player: p,
                epoch: 1
            }
        )]
    );
    assert_eq!(r.route_of(5), Some((1, 2)));
}

#[test]
fn a_client_that_closes_while_routed_is_disconnected_at_its_owner() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    let p = logged_in(&mut r, &mut fx, 5, "bye", 3, 7);
    r.on_close(5, now, &mut fx);
    assert_eq!(
        fx.take_zone(),
        vec![(
            3,
            Msg::Disconnect {
                player: p,
                epoch: 7
            }
        )]
    );
    assert_eq!(r.counters().sessions, 0);
    // A late claim on it: the owner was told already, so it is refused.
    r.on_bus(
        1,
        Msg::Owned {
            session: 5,
            player: p,
            epoch: 8,
        },
        now,
        &mut fx,
    );
    assert_eq!(
        fx.take_zone(),
        vec![(
            1,
            Msg::Revoke {
                player: p,
                epoch: 8
            }
        )]
    );
}

#[test]
fn a_close_mid_hand_off_disconnects_the_zone_it_resolves_to() {
    let now = Instant::now();
    // Resolved by `Owned`: the new zone.
    let (mut r, mut fx) = (routes(), Rec::default());
    let p = logged_in(&mut r, &mut fx, 5, "m", 0, 1);
    begin(&mut r, &mut fx, 5, 0, 1, 2);
    r.on_packet(5, &mv(1), now, &mut fx);
    r.on_close(5, now, &mut fx);
    assert!(fx.zone.is_empty(), "nobody to tell yet");
    assert_eq!((r.counters().sessions, r.counters().held), (0, 0));
    r.on_bus(
        2,
        Msg::Owned {
            session: 5,
            player: p,
            epoch: 2,
        },
        now,
        &mut fx,
    );
    assert_eq!(
        fx.take_zone(),
        vec![(
            2,
            Msg::Disconnect {
                player: p,
                epoch: 2
            }
        )]
    );

    // Resolved by `HandoffCancel`: the old zone.
    let (mut r, mut fx) = (routes(), Rec::default());
    let p = logged_in(&mut r, &mut fx, 5, "m", 0, 1);
    let t = begin(&mut r, &mut fx, 5, 0, 1, 2);
    r.on_close(5, now, &mut fx);
    let cancel = Msg::HandoffCancel {
        session: 5,
        player: p,
        epoch: 1,
    };
    r.on_bus(0, cancel, now, &mut fx);
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
    r.on_timer(t, now, &mut fx);
    assert!(fx.zone.is_empty(), "resolved once");

    // Resolved by nothing: the timeout tells the route zone.
    let (mut r, mut fx) = (routes(), Rec::default());
    let p = logged_in(&mut r, &mut fx, 5, "m", 0, 1);
    let t = begin(&mut r, &mut fx, 5, 0, 1, 2);
    r.on_close(5, now, &mut fx);
    r.on_timer(t, now, &mut fx);
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
    assert!(fx.closed.is_empty(), "the client is gone already");
    // The new zone answers too late: it is refused, not told to save.
    r.on_bus(
        2,
        Msg::Owned {
            session: 5,
            player: p,
            epoch: 2,
        },
        now,
        &mut fx,
    );
    assert_eq!(
        fx.take_zone(),
        vec![(
            2,
            Msg::Revoke {
                player: p,
                epoch: 2
            }
        )]
    );
}

#[test]
fn a_hand_off_that_times_out_closes_the_client_and_disconnects_the_route_zone() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    let p = logged_in(&mut r, &mut fx, 5, "t", 1, 1);
    let t = begin(&mut r, &mut fx, 5, 1, 1, 0);
    r.on_packet(5, &mv(1), now, &mut fx);
    r.on_timer(t, now, &mut fx);
    assert_eq!(
        fx.take_zone(),
        vec![(
            1,
            Msg::Disconnect {
                player: p,
                epoch: 1
            }
        )]
    );
    assert!(matches!(&fx.closed[..], [(5, Closing::Abort(_))]));
    assert_eq!((r.counters().handoff_timeouts, r.counters().held), (1, 0));
    // What the client still sends goes nowhere; a late Owned is refused.
    r.on_packet(5, &mv(2), now, &mut fx);
    r.on_bus(
        0,
        Msg::Owned {
            session: 5,
            player: p,
            epoch: 2,
        },
        now,
        &mut fx,
    );
    assert_eq!(
        fx.take_zone(),
        vec![(
            0,
            Msg::Revoke {
                player: p,
                epoch: 2
            }
        )]
    );
    r.on_close(5, now, &mut fx);
    assert!(fx.zone.is_empty(), "no second Disconnect");
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
fn at_most_64_packets_are_held_and_one_more_rejects_the_session() {
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
            Closing::Reject("more than 64 packets while logging in".into())
        )]
    );
    assert_eq!(r.counters().held, 64);
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
        };
        r.on_bus(zone, m, now, &mut fx);
    }
    // A cancel with nothing to cancel.
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
    assert_eq!((c.stale, c.unknown_session), (5, 1));
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

/// One step of a random run: what a client, a zone or a timer does.
#[derive(Debug, Clone)]
enum Step {
    Connect,
    Login(usize, u8),
    Move(usize),
    Junk(usize, Vec<u8>),
    Close(usize),
    Owned(u16, usize, u32, u32),
    Begin(u16, usize, u32, u32, u16),
    Cancel(u16, usize, u32, u32),
    Send(usize),
    CloseBy(u16, usize, bool),
    Timer(usize),
    Later(u64),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let s = 0..6usize;
    prop_oneof![
        Just(Step::Connect),
        (s.clone(), any::<u8>()).prop_map(|(s, n)| Step::Login(s, n)),
        s.clone().prop_map(Step::Move),
        s.clone().prop_map(Step::Move),
        (s.clone(), proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(s, v)| Step::Junk(s, v)),
        s.clone().prop_map(Step::Close),
        (0..4u16, s.clone(), 0..4u32, 0..5u32).prop_map(|(z, s, p, e)| Step::Owned(z, s, p, e)),
        (0..4u16, s.clone(), 0..4u32, 0..5u32, 0..5u16)
            .prop_map(|(z, s, p, e, t)| Step::Begin(z, s, p, e, t)),
        (0..4u16, s.clone(), 0..4u32, 0..5u32).prop_map(|(z, s, p, e)| Step::Cancel(z, s, p, e)),
        s.clone().prop_map(Step::Send),
        (0..4u16, s.clone(), any::<bool>()).prop_map(|(z, s, w)| Step::CloseBy(z, s, w)),
        (0..20usize).prop_map(Step::Timer),
        (0..12_000u64).prop_map(Step::Later),
    ]
}

proptest::proptest! {
    /// Whatever clients, zones and timers do, in any order: no panic, and the state stays
    /// consistent (counters, held packets, phases).
    #[test]
    fn any_sequence_of_events_keeps_the_state_consistent(
        steps in proptest::collection::vec(step(), 1..120)
    ) {
        let (mut r, mut fx) = (routes_with(4), Rec::default());
        let mut now = Instant::now();
        // Open sessions, and every session ever (zones may name closed ones); a step names
        // one by index, modulo their count.
        let mut ids: Vec<u64> = Vec::new();
        let mut all: Vec<u64> = Vec::new();
        let pick = |ids: &Vec<u64>, i: usize| (!ids.is_empty()).then(|| ids[i % ids.len()]);
        for st in steps {
            match st {
                Step::Connect => {
                    let id = 1000 + all.len() as u64;
                    ids.push(id);
                    all.push(id);
                    r.on_connect(id, id as u32);
                }
                Step::Login(i, n) => if let Some(id) = pick(&ids, i) {
                    r.on_packet(id, &login(&format!("p{n}")), now, &mut fx);
                },
                Step::Move(i) => if let Some(id) = pick(&ids, i) {
                    r.on_packet(id, &mv(1), now, &mut fx);
                },
                Step::Junk(i, v) => if let Some(id) = pick(&ids, i) {
                    r.on_packet(id, &v, now, &mut fx);
                },
                Step::Close(i) => if let Some(id) = pick(&ids, i) {
                    // The server layer closes a session once: it leaves `ids`, not `all`.
                    r.on_close(id, now, &mut fx);
                    ids.retain(|&x| x != id);
                },
                Step::Owned(z, i, p, e) => {
                    let session = pick(&all, i).unwrap_or(7);
                    let player = r.player_of(session).unwrap_or(p);
                    r.on_bus(z, Msg::Owned { session, player, epoch: e }, now, &mut fx);
                }
                Step::Begin(z, i, p, e, to) => {
                    let session = pick(&all, i).unwrap_or(7);
                    let player = r.player_of(session).unwrap_or(p);
                    let m = Msg::HandoffBegin { session, player, epoch: e, to };
                    r.on_bus(z, m, now, &mut fx);
                }
                Step::Cancel(z, i, p, e) => {
                    let session = pick(&all, i).unwrap_or(7);
                    let player = r.player_of(session).unwrap_or(p);
                    r.on_bus(z, Msg::HandoffCancel { session, player, epoch: e }, now, &mut fx);
                }
                Step::Send(i) => {
                    let session = pick(&all, i).unwrap_or(7);
                    let bytes = Bytes::from_static(&[2, 7]);
                    r.on_bus(0, Msg::Send { session, bytes }, now, &mut fx);
                }
                Step::CloseBy(z, i, why) => {
                    let session = pick(&all, i).unwrap_or(7);
                    let reason = why.then(|| "bye".to_string());
                    r.on_bus(z, Msg::Close { session, reason }, now, &mut fx);
                }
                Step::Timer(i) => if !fx.timers.is_empty() {
                    let t = fx.timers[i % fx.timers.len()].1;
                    r.on_timer(t, now, &mut fx);
                },
                Step::Later(ms) => now += Duration::from_millis(ms),
            }
            if let Err(e) = r.check() {
                proptest::prop_assert!(false, "{}", e);
            }
            // Only zones of the layout are ever addressed.
            proptest::prop_assert!(fx.zone.iter().all(|(z, _)| *z < 4));
        }
        // Every client closes: nothing is held, nobody is open.
        for id in ids {
            r.on_close(id, now, &mut fx);
        }
        proptest::prop_assert_eq!((r.counters().sessions, r.counters().held), (0, 0));
    }
}
