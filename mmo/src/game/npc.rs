//! NPCs: where they start, waking when a player comes to see them, a move per timer while
//! seen (asleep otherwise), chases and attacks, death and respawn.
//!
//! Two kinds, fixed per NPC by [`npc_aggressive`]: a **peaceful** NPC walks at random and,
//! once a player hits it, chases and attacks that player; an **aggressive** one also picks
//! the nearest player it sees by itself. A chase walks the A* way around obstacles
//! ([`super::path`]), attacks when next to its target, and gives up (back to walking at
//! random) when the target leaves its view, goes farther than the give-up distance from the
//! NPC's spawn cell or from the NPC, or cannot be reached. [`Game::npc_step_toward`] and
//! [`Game::npc_attack`] are the two moves, for scripts too.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use cport_mmo_proto::{splitmix64, Direction, Name};

use super::path::{self, Path};
use super::{Game, NpcLife, Phase, NO_PLAYER, RESPAWN};
use crate::map::Map;
use crate::net::Host;
use crate::rules;
use crate::world::{pack, unpack, State};

/// Where NPC `i` starts on a `size`-wide board for this seed (deterministic).
pub fn npc_position(seed: u64, i: usize, size: u16) -> (u16, u16) {
    let r =
        splitmix64(seed ^ 0xA5A5_5A5A_0F0F_F0F0 ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    (
        (r % u64::from(size)) as u16,
        ((r >> 32) % u64::from(size)) as u16,
    )
}

/// Where NPC `i` spawns on a `size`-wide board with obstacles `map`: [`npc_position`] if
/// that cell is open, else the first open one of up to 64 more draws from the same seed and
/// index, else the next open cell in row order. Deterministic; without a map it is
/// [`npc_position`]. (`Engine` refuses a map without an open cell.)
pub fn npc_spawn(seed: u64, i: usize, size: u16, map: Option<&Map>) -> (u16, u16) {
    let first = npc_position(seed, i, size);
    let Some(m) = map else { return first };
    if !m.blocked(first.0, first.1) {
        return first;
    }
    let mut k = 0u64;
    m.open_cell(|| {
        k += 1;
        splitmix64(seed ^ 0x5EED_0B57 ^ (i as u64).rotate_left(17) ^ k.wrapping_mul(0x9E37))
    })
    .unwrap_or(first)
}

/// Whether NPC `id` is aggressive when `percent` of them are (by id, from `seed`).
pub fn npc_aggressive(seed: u64, id: u32, percent: u8) -> bool {
    splitmix64(seed ^ 0xA66E_5517_u64.wrapping_mul(u64::from(id) + 1)) % 100 < u64::from(percent)
}

/// Ticks an aggressive NPC that found no way to its target waits before it looks again.
const CALM_TICKS: u8 = 8;

/// Chebyshev distance of two packed cells (the view range's measure).
fn cheb(a: u32, b: u32) -> u16 {
    let ((ax, ay), (bx, by)) = (unpack(a), unpack(b));
    ax.abs_diff(bx).max(ay.abs_diff(by))
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
        let mut life = self.npc_life[i].lock();
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
        let mut attack = None;
        match self.npc_target(npc, &mut life) {
            None => self.npc_wander(srv, npc),
            Some(t) => match self.npc_path(npc, unpack(w.pos(t))) {
                Path::Here => attack = Some(t),
                Path::Steps(steps) => self.npc_move(srv, npc, pack(steps[0].0, steps[0].1)),
                Path::Unreachable | Path::Bound => {
                    life.target = NO_PLAYER;
                    life.calm = CALM_TICKS;
                    self.npc_wander(srv, npc);
                }
            },
        }
        self.schedule(srv, npc);
        drop(life);
        // After the life lock: a player's login lock comes before it.
        if let Some(t) = attack {
            if !self.npc_attack(npc, t) {
                self.npc_life[i].lock().target = NO_PLAYER;
            }
        }
    }

    /// The player NPC `npc` chases now (its life lock held): the one it has while the chase
    /// holds, else, for an aggressive NPC, the nearest player it sees that is within the
    /// give-up distance of its spawn cell (the lowest id of the nearest). Records it.
    fn npc_target(&self, npc: u32, life: &mut NpcLife) -> Option<u32> {
        let w = &self.world;
        let i = (npc - w.max_users) as usize;
        let (me, home) = (w.pos(npc), self.npc_spawn[i]);
        let seen: Vec<u32> = {
            let v = w.objs[npc as usize].view.lock();
            if life.target != NO_PLAYER && v.set.contains(&life.target) {
                vec![life.target]
            } else {
                life.target = NO_PLAYER;
                if !npc_aggressive(self.seed, npc, self.aggressive_pct) {
                    return None;
                }
                if life.calm > 0 {
                    life.calm -= 1;
                    return None;
                }
                v.set.iter().copied().filter(|&o| !w.is_npc(o)).collect()
            }
        };
        let t = seen
            .into_iter()
            .map(|o| (o, w.pos(o)))
            .filter(|&(_, p)| cheb(p, home) <= self.give_up && cheb(p, me) <= self.give_up)
            .min_by_key(|&(o, p)| (path::manhattan(unpack(p), unpack(me)), o))
            .map(|(o, _)| o);
        life.target = t.unwrap_or(NO_PLAYER);
        t
    }

    /// The A* way from NPC `npc` to next to `goal`, over open cells of its own zone.
    fn npc_path(&self, npc: u32, goal: (u16, u16)) -> Path {
        let w = &self.world;
        path::find_path(unpack(w.pos(npc)), goal, w.size, path::CHASE, |x, y| {
            let p = pack(x, y);
            w.open(p) && self.in_my_zone(p)
        })
    }

    /// One step in a random direction (none into an obstacle, or out of its zone).
    fn npc_wander(&self, srv: &H, npc: u32) {
        let w = &self.world;
        let dir = Direction::ALL[(self.rng.next_u64() % 4) as usize];
        let from = w.pos(npc);
        let mut to = w.step(from, dir.delta());
        if !self.in_my_zone(to) {
            // NPCs stay in the zone they belong to: its border stops them as the board's
            // edge does (ARCHITECTURE.md, "Cluster").
            to = from;
        }
        self.npc_move(srv, npc, to);
    }

    /// Puts NPC `npc` at `to` and tells who sees it (its life lock held: that lock makes
    /// whoever holds it the NPC's one mover).
    fn npc_move(&self, srv: &H, npc: u32, to: u32) {
        let w = &self.world;
        let from = w.pos(npc);
        w.set_pos(npc, to);
        w.sector_move(npc, from, to);
        let name = w.objs[npc as usize].view.lock().name;
        let mine = self.mine(npc, to, name, Some(self.move_packet(npc, to, 0)));
        self.reconcile_all(srv, npc, to, &mine);
        self.publish_band(srv, npc, to, 0, Some(name));
        self.counters.npc_moves.fetch_add(1, Relaxed);
    }

    /// One A* step of NPC `npc` toward cell `(x, y)`, around obstacles and within its zone,
    /// stopping next to it (the cell is usually a player's). `false` if it did not move: it
    /// is dead, another zone's, next to the cell already, or finds no way within the search's
    /// bounds. Any thread may call it (the NPC's life lock makes the mover one at a time);
    /// not with that lock held.
    pub(crate) fn npc_step_toward(&self, srv: &H, npc: u32, x: u16, y: u16) -> bool {
        let w = &self.world;
        if !w.is_npc(npc) || npc as usize >= w.objs.len() || self.npc_elsewhere(npc).is_some() {
            return false;
        }
        let life = self.npc_life[(npc - w.max_users) as usize].lock();
        if !life.alive {
            return false;
        }
        let Path::Steps(steps) = self.npc_path(npc, (x, y)) else {
            return false;
        };
        self.npc_move(srv, npc, pack(steps[0].0, steps[0].1));
        drop(life);
        true
    }

    /// NPC `npc` hits player `target` for [`rules::NPC_HIT`] if both are on the board here and
    /// next to each other (or on one cell), and the NPC is alive: the player gets a system
    /// `SC_CHAT` and `SC_STAT_CHANGE`, and dies and respawns as from any hit
    /// (`after_hits`). `false` if no hit. Not with the NPC's life lock held (the player's
    /// login lock comes first).
    pub(crate) fn npc_attack(&self, npc: u32, target: u32) -> bool {
        let w = &self.world;
        if !w.is_npc(npc) || npc as usize >= w.objs.len() || w.is_npc(target) {
            return false;
        }
        let pl = &self.players[target as usize];
        let mut l = pl.login.lock();
        let Some(session) = l.session.clone() else {
            return false;
        };
        if l.phase != Phase::InGame || !l.placed {
            return false;
        }
        let life = self.npc_life[(npc - w.max_users) as usize].lock();
        if !life.alive || path::manhattan(unpack(w.pos(npc)), unpack(w.pos(target))) > 1 {
            return false;
        }
        drop(life);
        self.counters.npc_attacks.fetch_add(1, Relaxed);
        let before = {
            let mut s = pl.stats.lock();
            let before = *s;
            s.hp -= rules::NPC_HIT;
            before
        };
        self.system_chat(
            &session,
            target,
            format!("NPC {npc} hits you for {}", rules::NPC_HIT),
        );
        self.after_hits(&session, target, before, &mut l);
        true
    }

    /// Player `attacker` hit NPC `npc` and it survived: it fights back (chases and attacks
    /// the attacker) unless it chases someone already.
    pub(super) fn provoke(&self, srv: &H, npc: u32, attacker: u32) {
        let i = (npc - self.world.max_users) as usize;
        {
            let mut life = self.npc_life[i].lock();
            if !life.alive || life.target != NO_PLAYER {
                return;
            }
            life.target = attacker;
        }
        self.wake(srv, npc);
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
        life.target = NO_PLAYER;
        life.calm = 0;
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
