//! A zone's new run as the gateway meets it: the names restated, the old run's players
//! resumed from their last save with the client's picture, the old run's batches refused.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cport_mmo::cluster::wire::Msg;
use cport_mmo_proto::ServerPacket;

use super::*;

/// What the zone sent the client, through the gateway (its picture is tracked from it).
fn send(r: &mut Routes<u32>, fx: &mut Rec, zone: u16, sid: u64, p: ServerPacket) {
    let m = Msg::Send {
        session: sid,
        bytes: Bytes::from(p.encode(H)),
    };
    r.on_bus(zone, m, Instant::now(), fx);
}

#[test]
fn the_first_run_met_hears_relock_done_and_a_new_run_resumes_the_old_runs_players() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    // The first run of zone 1 met: nothing to restate yet.
    assert!(r.zone_run(1, 100, &mut fx));
    assert_eq!(fx.take_zone(), vec![(1, Msg::RelockDone)]);
    assert!(r.zone_run(1, 100, &mut fx), "the same run again");
    assert!(fx.zone.is_empty());
    // A player of zone 1, whose client was told where it is, one NPC, one other player
    // (then removed).
    let name = "resumed";
    let p = logged_in(&mut r, &mut fx, 5, name, 1, 3);
    let add = |id, x, y| ServerPacket::AddObject {
        id,
        x,
        y,
        name: cport_mmo_proto::name("x"),
    };
    let info = ServerPacket::LoginInfo {
        id: p as i32,
        hp: 10,
        max_hp: 10,
        exp: 0,
        level: 1,
        x: 7,
        y: 8,
    };
    for pkt in [
        info,
        add(150, 9, 9),
        add(3, 6, 6),
        ServerPacket::RemoveObject { id: 3 },
        ServerPacket::MoveObject {
            id: p as i32,
            x: 8,
            y: 8,
            move_time: 4,
        },
    ] {
        send(&mut r, &mut fx, 1, 5, pkt);
    }
    assert_eq!(fx.sent.len(), 5, "forwarded as is");
    // A run older than the newest: refused.
    assert!(!r.zone_run(1, 99, &mut fx));
    assert_eq!(r.counters().stale_batches, 1);
    // Zone 1's new run speaks: relocks for the names it is home to, then the resume.
    assert!(r.zone_run(1, 200, &mut fx));
    let home = home(name);
    let mut want = Vec::new();
    if home == 1 {
        want.push((
            1,
            Msg::Relock {
                player: p,
                name: name.into(),
            },
        ));
    }
    want.push((1, Msg::RelockDone));
    want.push((
        home,
        Msg::Resume {
            session: 5,
            player: p,
            name: name.into(),
            epoch: 4,
            view: vec![(p, 8, 8), (150, 9, 9)],
        },
    ));
    assert_eq!(fx.take_zone(), want);
    assert_eq!(r.route_of(5), None, "held while resumed");
    let (after, t) = fx.timers.pop().expect("the resume's timer");
    assert_eq!((after, t.kind), (Duration::from_secs(5), TimerKind::Login));
    // The client's packets wait; the zone that takes the player back gets them after
    // Confirm.
    r.on_packet(5, &mv(9), now, &mut fx);
    assert!(fx.zone.is_empty());
    r.on_bus(
        2,
        Msg::Owned {
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
            (2, packet(p, 4, 9)),
        ]
    );
    assert_eq!(r.route_of(5), Some((2, 4)));
    let c = r.counters();
    assert_eq!((c.zone_restarts, c.resumes, c.resumed), (1, 1, 1));
    assert!(fx.closed.is_empty(), "the client never left");
    // The stale timer does nothing.
    r.on_timer(t, now, &mut fx);
    assert!(fx.zone.is_empty() && fx.closed.is_empty());
}

#[test]
fn a_resume_nobody_answers_is_asked_again_then_the_client_is_closed() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    let p = logged_in(&mut r, &mut fx, 5, "lost", 0, 1);
    assert!(r.zone_run(0, 1, &mut fx));
    assert!(r.zone_run(0, 2, &mut fx));
    let resume = |epoch| Msg::Resume {
        session: 5,
        player: p,
        name: "lost".into(),
        epoch,
        view: vec![],
    };
    let h = home("lost");
    assert!(fx.take_zone().contains(&(h, resume(2))));
    for _ in 1..3 {
        let (_, t) = fx.timers.pop().unwrap();
        r.on_timer(t, now, &mut fx);
        assert_eq!(
            fx.take_zone(),
            vec![(h, resume(2))],
            "asked again, same epoch"
        );
        assert!(fx.closed.is_empty());
    }
    let (_, t) = fx.timers.pop().unwrap();
    r.on_timer(t, now, &mut fx);
    assert!(matches!(&fx.closed[..], [(5, Closing::Abort(_))]));
    assert_eq!(r.counters().resume_timeouts, 1);
    // Its close frees the name at home (epoch 0), as a login given up does.
    r.on_close(5, now, &mut fx);
    assert_eq!(
        fx.take_zone(),
        vec![(
            h,
            Msg::Disconnect {
                player: p,
                epoch: 0
            }
        )]
    );
}

#[test]
fn a_hand_off_whose_old_owner_died_is_resumed_and_the_first_claim_wins() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    let p = logged_in(&mut r, &mut fx, 5, "orphan", 1, 1);
    assert!(r.zone_run(1, 1, &mut fx));
    fx = Rec::default();
    begin(&mut r, &mut fx, 5, 1, 1, 2);
    fx = Rec::default();
    assert!(r.zone_run(1, 2, &mut fx), "zone 1 restarted mid hand-off");
    let (after, t) = fx.timers.pop().expect("the orphan's wait");
    assert_eq!(after, Duration::from_millis(500));
    assert!(
        !fx.zone.iter().any(|(_, m)| matches!(m, Msg::Resume { .. })),
        "zone 2 may still claim it"
    );
    fx.zone.clear();
    r.on_timer(t, now, &mut fx);
    // Above the epoch the hand-off offered (2).
    assert!(fx.take_zone().contains(&(
        home("orphan"),
        Msg::Resume {
            session: 5,
            player: p,
            name: "orphan".into(),
            epoch: 3,
            view: vec![],
        }
    )));
    // Zone 2's claim comes late after all: the first claim wins, and the resume's own claim
    // (at 3, from whichever zone took the save) is refused.
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
            Msg::Confirm {
                player: p,
                epoch: 2
            }
        )]
    );
    r.on_bus(
        3,
        Msg::Owned {
            session: 5,
            player: p,
            epoch: 3,
        },
        now,
        &mut fx,
    );
    assert_eq!(
        fx.take_zone(),
        vec![(
            3,
            Msg::Revoke {
                player: p,
                epoch: 3
            }
        )]
    );
    assert_eq!(r.route_of(5), Some((2, 2)));
}

#[test]
fn a_hand_off_claimed_after_its_old_owner_died_stands() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    let p = logged_in(&mut r, &mut fx, 5, "claimed", 1, 1);
    assert!(r.zone_run(1, 1, &mut fx));
    fx = Rec::default();
    begin(&mut r, &mut fx, 5, 1, 1, 2);
    assert!(r.zone_run(1, 2, &mut fx));
    let (_, t) = fx.timers.pop().unwrap();
    fx = Rec::default();
    // The state reached zone 2 before zone 1 died: its claim is taken as usual.
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
            Msg::Confirm {
                player: p,
                epoch: 2
            }
        )]
    );
    r.on_timer(t, now, &mut fx);
    assert!(fx.zone.is_empty(), "no resume after all");
    assert_eq!(r.route_of(5), Some((2, 2)));
}
