//! What the in-process cluster tests share: a course client's walk (its own moves answered
//! once each, in order) and the check that each client sees exactly the players in range.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use cport_mmo::Rng;
use cport_mmo_client::blocking::Client;
use cport_mmo_proto::{ClientPacket, Direction, ServerPacket};

/// One client's walk: `steps` moves (a teleport now and then), each answered by its own
/// `SC_MOVE_OBJECT` before the next, with the `move_time` it sent (a teleport echoes the
/// last one); anything else in between is applied to its picture (which fails on a packet
/// that contradicts it). Move times continue from `first`.
pub fn walk_from(c: &mut Client, seed: u64, first: u32, steps: u32) {
    let rng = Rng::new(seed);
    let mut last = first.saturating_sub(1);
    for t in first..first + steps {
        let r = rng.next_u64();
        let want = if r % 13 == 0 {
            c.send(&ClientPacket::Teleport);
            last
        } else {
            c.move_(Direction::ALL[(r >> 8) as usize % 4], t);
            last = t;
            t
        };
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                Instant::now() < until,
                "client {}: no answer to move {t}",
                c.id
            );
            let p = c.recv_apply();
            if let ServerPacket::MoveObject { id, move_time, .. } = p {
                if id as u32 == c.id {
                    assert_eq!(move_time, want, "client {}: its own moves, in order", c.id);
                    break;
                }
            }
        }
    }
}

/// [`walk_from`] from move time 1.
pub fn walk(c: &mut Client, seed: u64, steps: u32) {
    walk_from(c, seed, 1, steps);
}

/// Reads what is on its way to each client (for `quiet`), applying it.
pub fn settle(clients: &mut [Client], quiet: Duration) {
    for c in clients.iter_mut() {
        while let Some(p) = c.try_recv(quiet) {
            c.apply(&p);
        }
    }
}

/// Each client sees exactly the other clients within `range` of it (players only: `users`
/// is the first NPC id).
pub fn check_pictures(clients: &[Client], range: u16, users: usize) {
    let pos: Vec<(u32, (u16, u16))> = clients.iter().map(|c| (c.id, c.pos)).collect();
    for c in clients {
        let seen: Vec<u32> = c
            .picture
            .keys()
            .copied()
            .filter(|&id| (id as usize) < users)
            .collect();
        let mut truth: Vec<u32> = pos
            .iter()
            .filter(|&&(id, p)| {
                id != c.id && p.0.abs_diff(c.pos.0) <= range && p.1.abs_diff(c.pos.1) <= range
            })
            .map(|&(id, _)| id)
            .collect();
        truth.sort_unstable();
        let mut seen = seen;
        seen.sort_unstable();
        assert_eq!(
            seen, truth,
            "client {} at {:?} sees these players",
            c.id, c.pos
        );
    }
}
