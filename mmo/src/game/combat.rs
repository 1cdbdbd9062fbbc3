//! Combat (the numbers are [`crate::rules`]): an attack on the four neighbour cells, damage,
//! experience and levels, a player's death, and regeneration on timers.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use cport_mmo_proto::{Direction, ServerPacket};

use super::{Game, Login, PStats, REGEN};
use crate::cluster::wire::Msg;
use crate::net::{Conn, Host};
use crate::rules;

impl<H: Host> Game<H> {
    /// `CS_ATTACK`: one hit on every live NPC on the four cells next to the player (its login
    /// lock held). In a cluster, an NPC another zone owns is hit there ([`Msg::Attack`]); its
    /// result comes back as `attack_result`.
    pub(super) fn attack(&self, session: &H::Conn, id: u32, l: &mut Login<H::Conn>) {
        let w = &self.world;
        let srv = session.server();
        self.counters.attacks.fetch_add(1, Relaxed);
        let pos = w.pos(id);
        let mut cells: Vec<u32> = Direction::ALL
            .iter()
            .map(|d| w.step(pos, d.delta()))
            .filter(|&c| c != pos)
            .collect();
        cells.sort_unstable();
        cells.dedup();
        let mut targets = Vec::new();
        w.npcs_on(&cells, &mut targets);
        let pl = &self.players[id as usize];
        let before = *pl.stats.lock();
        for npc in targets {
            let level = pl.stats.lock().level;
            if let Some(owner) = self.npc_elsewhere(npc) {
                srv.to_zone(
                    owner,
                    &Msg::Attack {
                        attacker: id,
                        level,
                        npc,
                    },
                );
                continue;
            }
            let Some((dmg, left)) = self.hit_npc(&srv, npc, level) else {
                continue;
            };
            self.credit_hit(session, id, npc, dmg, left);
            if left > 0 {
                self.provoke(&srv, npc, id);
            }
        }
        self.after_hits(session, id, before, l);
    }

    /// One hit of a player of `level` on an NPC this game owns: `(damage, hp left)`, or
    /// `None` if it is dead already. At 0 hit points it dies (off the board until respawn).
    pub(super) fn hit_npc(&self, srv: &H, npc: u32, level: i32) -> Option<(i32, i32)> {
        let i = (npc - self.world.max_users) as usize;
        let mut life = self.npc_life[i].lock();
        if !life.alive {
            return None;
        }
        let dmg = rules::damage(level);
        life.hp -= dmg;
        if life.hp <= 0 {
            life.alive = false;
            self.kill_npc(srv, npc);
        }
        Some((dmg, life.hp))
    }

    /// The attacker's side of one hit: experience and levels for a kill, the NPC's hit back
    /// otherwise, and the system message.
    pub(super) fn credit_hit(&self, session: &H::Conn, id: u32, npc: u32, dmg: i32, left: i32) {
        let pl = &self.players[id as usize];
        if left <= 0 {
            let mut s = pl.stats.lock();
            s.exp += rules::NPC_EXP;
            while s.exp >= rules::exp_to_next(s.level) {
                s.exp -= rules::exp_to_next(s.level);
                s.level += 1;
                s.max_hp = rules::max_hp(s.level);
                s.hp = s.max_hp;
                self.counters.level_ups.fetch_add(1, Relaxed);
            }
            let s = *s;
            self.system_chat(
                session,
                id,
                format!(
                    "You killed NPC {npc} (+{} exp, level {}, exp {})",
                    rules::NPC_EXP,
                    s.level,
                    s.exp
                ),
            );
        } else {
            pl.stats.lock().hp -= rules::NPC_HIT;
            self.system_chat(
                session,
                id,
                format!(
                    "You hit NPC {npc} for {dmg} ({left} hp left); it hits back for {}",
                    rules::NPC_HIT
                ),
            );
        }
    }

    /// After the hits of one attack (or one remote hit's result): death and respawn
    /// elsewhere, `SC_STAT_CHANGE` if the stats changed since `before`, regeneration.
    pub(super) fn after_hits(
        &self,
        session: &H::Conn,
        id: u32,
        before: PStats,
        l: &mut Login<H::Conn>,
    ) {
        let pl = &self.players[id as usize];
        let mut s = pl.stats.lock();
        let died = s.hp <= 0;
        if died {
            // Back to full health somewhere else, with half the experience.
            self.counters.player_deaths.fetch_add(1, Relaxed);
            s.hp = s.max_hp;
            s.exp /= 2;
        }
        let now = *s;
        drop(s);
        if now != before {
            pl.dirty.store(true, Relaxed);
            self.stat_change(session, now);
        }
        if died {
            self.system_chat(session, id, "You died: respawned with half your exp".into());
            let to = self.random_cell();
            let t = self.last_move_time[id as usize].load(Relaxed);
            self.relocate(session, id, to, t);
            self.zone_moved(session, id, to, t, true, l);
        }
        if now.hp < now.max_hp {
            self.start_regen(&session.server(), id, l.gen);
        }
    }

    /// A regeneration timer for a hurt player (login `gen`), unless one is pending.
    pub(super) fn start_regen(&self, srv: &H, id: u32, gen: u64) {
        let pl = &self.players[id as usize];
        if !pl.regen.swap(true, SeqCst)
            && !srv.post_after(self.regen_interval, REGEN | u64::from(id), gen)
        {
            pl.regen.store(false, SeqCst);
        }
    }

    /// A regeneration tick: heal, tell the player, and again while still hurt.
    pub(super) fn regen_tick(&self, srv: &H, id: u32, gen: u64) {
        let pl = &self.players[id as usize];
        let l = pl.login.lock();
        if l.gen != gen || !l.placed {
            return; // that login ended (its end cleared `regen`)
        }
        let mut s = pl.stats.lock();
        let before = *s;
        s.hp = (s.hp + rules::regen(s.max_hp)).min(s.max_hp);
        let now = *s;
        drop(s);
        if now != before {
            pl.dirty.store(true, Relaxed);
            if let Some(session) = &l.session {
                self.stat_change(session, now);
            }
        }
        if now.hp < now.max_hp {
            if !srv.post_after(self.regen_interval, REGEN | u64::from(id), gen) {
                pl.regen.store(false, SeqCst);
            }
        } else {
            pl.regen.store(false, SeqCst);
        }
    }

    pub(super) fn stat_change(&self, session: &H::Conn, s: PStats) {
        self.counters.stat_changes.fetch_add(1, Relaxed);
        session.send(self.encode(ServerPacket::StatChange {
            hp: s.hp,
            max_hp: s.max_hp,
            exp: s.exp,
            level: s.level,
        }));
    }
}
