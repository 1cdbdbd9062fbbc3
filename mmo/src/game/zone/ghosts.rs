//! Other zones' objects on this board (ghosts), a packet routed to an owned player, and
//! the result of a hit on another zone's NPC.

use std::sync::atomic::Ordering::Relaxed;

use cport_mmo_proto::Name;

use crate::cluster::state::bump;
use crate::game::{Game, Phase};
use crate::net::Host;
use crate::world::State;

impl<H: Host> Game<H> {
    /// Runs `f` with player `id`'s login lock held if it is a player not owned here (an NPC:
    /// without a lock; ghosts of one object come from one zone at a time, in order). A
    /// player this zone owns is never touched by ghost messages: counted as stale.
    pub(crate) fn ghost_locked(&self, id: u32, f: impl FnOnce()) {
        let z = self.zone.as_ref().expect("a zone");
        if self.world.is_npc(id) {
            return f();
        }
        let l = self.players[id as usize].login.lock();
        if l.epoch != 0 {
            bump(&z.counters.stale);
            return;
        }
        f();
        drop(l);
    }

    pub(crate) fn ghost_enter(&self, srv: &H, id: u32, pos: u32, name: Name) {
        let w = &self.world;
        let z = self.zone.as_ref().expect("a zone");
        self.ghost_locked(id, || {
            let (was_in, from) = {
                let mut v = w.objs[id as usize].view.lock();
                let was_in = v.state == State::InGame;
                v.state = State::InGame;
                v.name = name;
                let from = w.pos(id);
                w.set_pos(id, pos);
                (was_in, from)
            };
            if was_in {
                w.sector_move(id, from, pos);
            } else {
                w.sector_insert(id, pos);
                z.counters.ghosts.fetch_add(1, Relaxed);
            }
            let mine = self.mine(id, pos, name, None);
            self.reconcile_all(srv, id, pos, &mine);
        });
    }

    pub(crate) fn ghost_move(&self, srv: &H, id: u32, pos: u32, move_time: u32) {
        let w = &self.world;
        let z = self.zone.as_ref().expect("a zone");
        self.ghost_locked(id, || {
            let (name, from) = {
                let v = w.objs[id as usize].view.lock();
                if v.state != State::InGame {
                    bump(&z.counters.stale);
                    return;
                }
                let from = w.pos(id);
                w.set_pos(id, pos);
                (v.name, from)
            };
            w.sector_move(id, from, pos);
            let mine = self.mine(id, pos, name, Some(self.move_packet(id, pos, move_time)));
            self.reconcile_all(srv, id, pos, &mine);
        });
    }

    pub(crate) fn ghost_leave(&self, srv: &H, id: u32) {
        let z = self.zone.as_ref().expect("a zone");
        self.ghost_locked(id, || {
            if self.take_off(srv, id) {
                z.counters.ghosts.fetch_sub(1, Relaxed);
            }
        });
    }

    /// A packet the gateway routed to an owned player.
    pub(crate) fn remote_packet(&self, player: u32, epoch: u32, packet: &[u8]) {
        let z = self.zone.as_ref().expect("a zone");
        let mut l = self.players[player as usize].login.lock();
        if l.epoch != epoch || epoch == 0 || l.phase != Phase::InGame {
            bump(&z.counters.stale);
            return;
        }
        let Some(session) = l.session.clone() else {
            return;
        };
        match cport_mmo_proto::ClientPacket::decode(packet, self.header) {
            Ok(p) => self.handle(&session, player, p, &mut l),
            Err(e) => {
                drop(l);
                self.reject(&session, e.to_string());
            }
        }
    }

    /// The result of a hit on another zone's NPC, for the attacker owned here.
    pub(crate) fn attack_result(&self, attacker: u32, npc: u32, damage: i32, left: i32) {
        let z = self.zone.as_ref().expect("a zone");
        let mut l = self.players[attacker as usize].login.lock();
        if l.epoch == 0 || !l.placed {
            // It left or moved on meanwhile: the hit stands, its reward is lost.
            bump(&z.counters.stale);
            return;
        }
        let Some(session) = l.session.clone() else {
            return;
        };
        bump(&z.counters.remote_attacks);
        let before = *self.players[attacker as usize].stats.lock();
        self.credit_hit(&session, attacker, npc, damage, left);
        self.after_hits(&session, attacker, before, &mut l);
    }
}
