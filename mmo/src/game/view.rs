//! Who sees whom: every change of "A sees B" goes through `Game::reconcile`, under both view
//! locks, and sends the ADD/REMOVE/MOVE packets before unlocking (the argument is in
//! [`crate::world`]'s docs); a player leaving the board.

use std::cell::OnceCell;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use cport_mmo_proto::{Name, ServerPacket};

use super::Game;
use crate::net::{Conn, Host};
use crate::world::{unpack, State};

/// The packets about the object being handled that go to others, each encoded at most once
/// (most moves need only the MOVE).
pub(super) struct Mine {
    id: u32,
    pos: u32,
    name: Name,
    /// `SC_MOVE_OBJECT` for those who saw it and still do (`None` for login and leave).
    mv: Option<Bytes>,
    add: OnceCell<Bytes>,
    remove: OnceCell<Bytes>,
    /// Cluster hand-off: where this player's client was told each object is (sorted by id),
    /// so that an object it still sees but that moved meanwhile gets one `SC_MOVE_OBJECT`.
    pub told: Vec<(u32, u32)>,
}

impl Mine {
    fn told(&self, id: u32) -> Option<u32> {
        let i = self.told.binary_search_by_key(&id, |t| t.0).ok()?;
        Some(self.told[i].1)
    }
}

impl<H: Host> Game<H> {
    pub(super) fn add_packet(&self, id: u32, pos: u32, name: &Name) -> Bytes {
        let (x, y) = unpack(pos);
        self.encode(ServerPacket::AddObject {
            id: id as i32,
            x: x as i16,
            y: y as i16,
            name: *name,
        })
    }

    pub(super) fn move_packet(&self, id: u32, pos: u32, move_time: u32) -> Bytes {
        let (x, y) = unpack(pos);
        self.encode(ServerPacket::MoveObject {
            id: id as i32,
            x: x as i16,
            y: y as i16,
            move_time,
        })
    }

    pub(super) fn mine(&self, id: u32, pos: u32, name: Name, mv: Option<Bytes>) -> Mine {
        Mine {
            id,
            pos,
            name,
            mv,
            add: OnceCell::new(),
            remove: OnceCell::new(),
            told: Vec::new(),
        }
    }

    pub(super) fn mine_add(&self, m: &Mine) -> Bytes {
        m.add
            .get_or_init(|| self.add_packet(m.id, m.pos, &m.name))
            .clone()
    }

    pub(super) fn mine_remove(&self, m: &Mine) -> Bytes {
        m.remove
            .get_or_init(|| self.encode(ServerPacket::RemoveObject { id: m.id as i32 }))
            .clone()
    }

    /// Brings "`me` sees `other`" (and the converse) in line with where both are now, under
    /// both view locks (lower id first), sending the packets before unlocking.
    pub(super) fn reconcile(&self, srv: &H, me: u32, other: u32, mine: &Mine) {
        let w = &self.world;
        if me == other || (w.is_npc(me) && w.is_npc(other)) {
            return;
        }
        let (lo, hi) = (me.min(other), me.max(other));
        let mut g_lo = w.objs[lo as usize].view.lock();
        let mut g_hi = w.objs[hi as usize].view.lock();
        let (m, o) = if me == lo {
            (&mut *g_lo, &mut *g_hi)
        } else {
            (&mut *g_hi, &mut *g_lo)
        };
        let other_pos = w.pos(other);
        let now = m.state == State::InGame
            && o.state == State::InGame
            && w.in_range(w.pos(me), other_pos);
        // Each direction on its own: on a single server the two sets always agree, but a
        // cluster hand-off installs the client's picture as `me`'s set, which may differ.
        let m_knows = m.set.contains(&other);
        let o_knows = o.set.contains(&me);
        if now {
            let mut added = false;
            if o_knows {
                if let (Some(mv), Some(s)) = (&mine.mv, &o.session) {
                    s.send(mv.clone());
                }
            } else {
                o.set.insert(me);
                if let Some(s) = &o.session {
                    s.send(self.mine_add(mine));
                }
                added = true;
            }
            if !m_knows {
                m.set.insert(other);
                if let Some(s) = &m.session {
                    s.send(self.add_packet(other, other_pos, &o.name));
                }
                added = true;
            } else if let Some(told) = mine.told(other) {
                if told != other_pos {
                    if let Some(s) = &m.session {
                        s.send(self.move_packet(other, other_pos, 0));
                    }
                }
            }
            if mine.mv.is_some() && w.is_npc(other) && !w.is_npc(me) {
                self.script_saw_move(srv, other, me); // a player moved in this NPC's view
            }
            if added {
                if w.is_npc(other) {
                    self.wake(srv, other);
                } else if w.is_npc(me) {
                    self.wake(srv, me);
                }
            }
        } else {
            if m_knows {
                m.set.remove(&other);
                if let Some(s) = &m.session {
                    s.send(self.encode(ServerPacket::RemoveObject { id: other as i32 }));
                }
            }
            if o_knows {
                o.set.remove(&me);
                if let Some(s) = &o.session {
                    s.send(self.mine_remove(mine));
                }
            }
        }
    }

    /// Reconciles `me` with everything near `pos` and everything in its view set.
    pub(super) fn reconcile_all(&self, srv: &H, me: u32, pos: u32, mine: &Mine) {
        let w = &self.world;
        let mut cands: Vec<u32> = w.objs[me as usize]
            .view
            .lock()
            .set
            .iter()
            .copied()
            .collect();
        w.near(pos, !w.is_npc(me), &mut cands);
        cands.sort_unstable();
        cands.dedup();
        for c in cands {
            self.reconcile(srv, me, c, mine);
        }
    }

    /// Takes player `id` off the board (logout or disconnect): REMOVE to everyone who saw it.
    pub(super) fn leave(&self, srv: &H, id: u32) {
        if self.take_off(srv, id) {
            self.counters.players.fetch_sub(1, Relaxed);
        }
        self.leave_band(srv, id);
    }

    /// Takes object `id` off the board (a player leaving, a ghost dropped): REMOVE to
    /// everyone who saw it. `false` if it was not on the board.
    pub(super) fn take_off(&self, srv: &H, id: u32) -> bool {
        let w = &self.world;
        let cands: Vec<u32> = {
            let mut v = w.objs[id as usize].view.lock();
            let was_in = v.state == State::InGame;
            v.state = State::Left;
            v.session = None;
            if !was_in {
                return false;
            }
            v.set.iter().copied().collect()
        };
        let pos = w.pos(id);
        w.sector_remove(id, pos);
        // Never added to anyone now: only its REMOVE is sent.
        let mine = self.mine(id, pos, [0; cport_mmo_proto::NAME_SIZE], None);
        for c in cands {
            self.reconcile(srv, id, c, &mine);
        }
        true
    }
}
