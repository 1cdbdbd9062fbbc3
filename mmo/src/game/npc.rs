//! NPCs: where they start, waking when a player comes to see them, a move per timer while
//! seen (asleep otherwise), death and respawn.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use cport_mmo_proto::{splitmix64, Direction, Name};

use super::{Game, RESPAWN};
use crate::net::Host;
use crate::rules;
use crate::world::State;

/// Where NPC `i` starts on a `size`-wide board for this seed (deterministic).
pub fn npc_position(seed: u64, i: usize, size: u16) -> (u16, u16) {
    let r =
        splitmix64(seed ^ 0xA5A5_5A5A_0F0F_F0F0 ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    (
        (r % u64::from(size)) as u16,
        ((r >> 32) % u64::from(size)) as u16,
    )
}

impl<H: Host> Game<H> {
    /// An NPC came into some player's view: if it slept, schedule its first move.
    pub(super) fn wake(&self, srv: &H, npc: u32) {
        if self.npc_elsewhere(npc).is_some() {
            return; // a ghost: its own zone wakes it (it holds a ghost of the player too)
        }
        let i = (npc - self.world.max_users) as usize;
        if self.world.awake[i]
            .compare_exchange(false, true, SeqCst, SeqCst)
            .is_ok()
        {
            self.counters.awake_npcs.fetch_add(1, Relaxed);
            self.schedule(srv, npc);
        }
    }

    pub(super) fn schedule(&self, srv: &H, npc: u32) {
        self.counters.npc_timers.fetch_add(1, Relaxed);
        if !srv.post_after(self.npc_interval, u64::from(npc), 0) {
            // The port is shutting down: the NPC sleeps.
            self.counters.npc_timers.fetch_sub(1, Relaxed);
            self.world.awake[(npc - self.world.max_users) as usize].store(false, SeqCst);
            self.counters.awake_npcs.fetch_sub(1, Relaxed);
        }
    }

    /// An NPC's move timer fired: move one random cell if a player sees it, else sleep.
    pub(super) fn npc_tick(&self, srv: &H, npc: u32) {
        let w = &self.world;
        self.counters.npc_timers.fetch_sub(1, Relaxed);
        let i = (npc - w.max_users) as usize;
        // Held for the whole move: a hit cannot kill it halfway (a dead NPC never moves).
        let life = self.npc_life[i].lock();
        {
            let mut v = w.objs[npc as usize].view.lock();
            if v.set.is_empty() || !life.alive {
                // Decided under the NPC's view lock: a player adding it to its view after
                // this finds `awake` false and wakes it again.
                w.awake[i].store(false, SeqCst);
                // A sleeping NPC gives its view set's memory back (once per sleep): kept,
                // every NPC ever seen would hold an allocation for the server's whole life
                // (the soak's heap grew with the NPCs its logins had woken).
                if v.set.is_empty() {
                    v.set.shrink_to_fit();
                }
                self.counters.awake_npcs.fetch_sub(1, Relaxed);
                return;
            }
        }
        let dir = Direction::ALL[(self.rng.next_u64() % 4) as usize];
        let from = w.pos(npc);
        let mut to = w.step(from, dir.delta());
        if !self.in_my_zone(to) {
            // NPCs stay in the zone they belong to: its border stops them as the board's
            // edge does (ARCHITECTURE.md, "Cluster").
            to = from;
        }
        w.set_pos(npc, to);
        w.sector_move(npc, from, to);
        let name = w.objs[npc as usize].view.lock().name;
        let mine = self.mine(npc, to, name, Some(self.move_packet(npc, to, 0)));
        self.reconcile_all(srv, npc, to, &mine);
        self.publish_band(srv, npc, to, 0, Some(name));
        self.counters.npc_moves.fetch_add(1, Relaxed);
        self.schedule(srv, npc);
        drop(life);
    }

    /// An NPC's hit points reached 0 (its life lock held, `alive` already false): off the
    /// board (`SC_REMOVE_OBJECT` to who saw it), back after the respawn delay.
    pub(super) fn kill_npc(&self, srv: &H, npc: u32) {
        let w = &self.world;
        self.counters.npc_kills.fetch_add(1, Relaxed);
        let (cands, name): (Vec<u32>, Name) = {
            let mut v = w.objs[npc as usize].view.lock();
            v.state = State::Left;
            (v.set.iter().copied().collect(), v.name)
        };
        let pos = w.pos(npc);
        w.sector_remove(npc, pos);
        let mine = self.mine(npc, pos, name, None);
        for c in cands {
            self.reconcile(srv, npc, c, &mine);
        }
        self.leave_band(srv, npc);
        let _ = srv.post_after(self.npc_respawn, RESPAWN | u64::from(npc), 0);
    }

    /// An NPC's respawn timer: full health at its spawn cell, ADD to the players near.
    pub(super) fn respawn(&self, srv: &H, npc: u32) {
        let w = &self.world;
        let i = (npc - w.max_users) as usize;
        let mut life = self.npc_life[i].lock();
        if life.alive {
            return;
        }
        life.alive = true;
        life.hp = rules::NPC_HP;
        let to = self.npc_spawn[i];
        w.set_pos(npc, to);
        let name = {
            let mut v = w.objs[npc as usize].view.lock();
            v.state = State::InGame;
            v.name
        };
        w.sector_insert(npc, to);
        let mine = self.mine(npc, to, name, None);
        self.reconcile_all(srv, npc, to, &mine);
        self.publish_band(srv, npc, to, 0, Some(name));
        self.counters.npc_respawns.fetch_add(1, Relaxed);
        drop(life);
    }
}
