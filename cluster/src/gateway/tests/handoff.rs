//! Hand-offs: completed, cancelled, stale, timed out, and clients that close meanwhile.

use std::time::Instant;

use cport_mmo::cluster::wire::Msg;

use super::*;

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
            next: 2,
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
    // The old zone, which timed out waiting for the new one's ack, cancels: it is refused.
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
            Msg::Revoke {
                player: p,
                epoch: 1
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
fn a_hand_off_that_times_out_falls_back_to_the_old_owner() {
    let (mut r, mut fx, now) = (routes(), Rec::default(), Instant::now());
    let p = logged_in(&mut r, &mut fx, 5, "t", 1, 1);
    let t = begin(&mut r, &mut fx, 5, 1, 1, 0);
    r.on_packet(5, &mv(1), now, &mut fx);
    // Neither zone 1's cancel nor zone 0's claim arrives (lost on the bus): at the timeout
    // zone 0's claim at the offered epoch is refused and zone 1 keeps the player, with the
    // held packet.
    r.on_timer(t, now, &mut fx);
    assert_eq!(
        fx.take_zone(),
        vec![
            (
                0,
                Msg::Revoke {
                    player: p,
                    epoch: 2
                }
            ),
            (
                1,
                Msg::Confirm {
                    player: p,
                    epoch: 1
                }
            ),
            (
                1,
                Msg::Packet {
                    player: p,
                    epoch: 1,
                    packet: Bytes::from(mv(1))
                }
            ),
        ]
    );
    assert!(fx.closed.is_empty(), "the client stays");
    assert_eq!((r.counters().handoff_timeouts, r.counters().held), (1, 0));
    assert_eq!(r.route_of(5), Some((1, 1)));
    // The claim comes late after all: refused again; the old owner's late cancel is
    // answered with the Confirm again (it may not have had the first).
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
    r.on_bus(
        1,
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
            1,
            Msg::Confirm {
                player: p,
                epoch: 1
            }
        )]
    );
    // Packets go on to zone 1.
    r.on_packet(5, &mv(2), now, &mut fx);
    assert_eq!(
        fx.take_zone(),
        vec![(
            1,
            Msg::Packet {
                player: p,
                epoch: 1,
                packet: Bytes::from(mv(2))
            }
        )]
    );
}
