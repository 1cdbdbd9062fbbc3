//! A player changing zones: the old owner's side (held, sent, answered or timed out), the
//! new owner's (arrived, confirmed), and the gateway's verdicts (`Confirm`, `Revoke`,
//! `Disconnect`).

use std::sync::atomic::{Ordering::Relaxed, Ordering::SeqCst};

use cport_mmo_proto::Name;

use crate::cluster::state::{bump, Handoff, CLAIM_RETRY_EVERY};
use crate::cluster::wire::{Msg, Transfer};
use crate::db::PlayerRow;
use crate::game::{Game, Login, PStats, Phase, CLAIM_RETRY, HANDOFF_TIMEOUT};
use crate::net::{Conn, Host};
use crate::world::{pack, unpack, State};

impl<H: Host> Game<H> {
    /// `Held`: the gateway holds the player's packets. Still past the border: the state goes
    /// to the new zone; walked back: the hand-off is called off.
    pub(crate) fn on_held(&self, srv: &H, player: u32, epoch: u32) {
        let z = self.zone.as_ref().expect("a zone");
        let w = &self.world;
        let pl = &self.players[player as usize];
        let mut l = pl.login.lock();
        let Handoff::Asked { since, next } = l.handoff else {
            bump(&z.counters.stale);
            return;
        };
        if l.epoch != epoch || l.phase != Phase::InGame {
            bump(&z.counters.stale);
            return;
        }
        let Some((gateway, session)) = l.session.as_ref().and_then(|s| s.route()) else {
            return;
        };
        let (x, y) = unpack(w.pos(player));
        if z.rect.contains(x, y) {
            l.handoff = Handoff::None;
            bump(&z.counters.handoff_cancels);
            srv.to_gateway(
                gateway,
                &Msg::HandoffCancel {
                    session,
                    player,
                    epoch,
                },
            );
            return;
        }
        let to = z.layout.zone_of(x, y) as u16;
        // From here the client hears nothing from this zone: its picture is `view`.
        let view: Vec<(u32, u16, u16)> = {
            let mut v = w.objs[player as usize].view.lock();
            v.session = None;
            let mut view: Vec<(u32, u16, u16)> = v
                .set
                .iter()
                .map(|&o| {
                    let (ox, oy) = unpack(w.pos(o));
                    (o, ox, oy)
                })
                .collect();
            view.sort_unstable();
            view
        };
        let s = *pl.stats.lock();
        let new_epoch = next;
        let t = Transfer {
            player,
            epoch: new_epoch,
            gateway,
            session,
            login: false,
            resume: false,
            gw_inc: l.gw_inc,
            name: l.name.clone(),
            x,
            y,
            hp: s.hp,
            max_hp: s.max_hp,
            exp: s.exp,
            level: s.level,
            last_move_time: self.last_move_time[player as usize].load(Relaxed),
            ghosts: z.ghosts[player as usize].load(Relaxed) | (1 << z.me),
            view: view.clone(),
        };
        l.phase = Phase::Moving;
        l.handoff = Handoff::Sent {
            epoch: new_epoch,
            since,
            view,
        };
        srv.to_zone(to, &Msg::Transfer(Box::new(t)));
        let _ = srv.post_after(
            z.handoff_timeout,
            HANDOFF_TIMEOUT | u64::from(player),
            u64::from(new_epoch),
        );
    }

    /// `TransferAck`: the new zone took the player; this zone keeps a ghost of it.
    pub(crate) fn on_transfer_ack(&self, player: u32, epoch: u32) {
        let z = self.zone.as_ref().expect("a zone");
        let pl = &self.players[player as usize];
        let mut l = pl.login.lock();
        let Handoff::Sent {
            epoch: e, since, ..
        } = l.handoff
        else {
            bump(&z.counters.stale);
            return;
        };
        if e != epoch || l.phase != Phase::Moving {
            bump(&z.counters.stale);
            return;
        }
        let _ = z
            .handoff_us
            .lock()
            .record((since.elapsed().as_micros() as u64).max(1));
        bump(&z.counters.handoffs_out);
        self.let_go(player, &mut l);
        z.counters.ghosts.fetch_add(1, Relaxed);
    }

    /// This zone no longer owns the player (its object stays on the board as a ghost, or is
    /// taken off by the caller): no row is written from here.
    pub(crate) fn let_go(&self, player: u32, l: &mut Login<H::Conn>) {
        let z = self.zone.as_ref().expect("a zone");
        let pl = &self.players[player as usize];
        l.phase = Phase::Idle;
        l.handoff = Handoff::None;
        l.placed = false;
        l.epoch = 0;
        l.confirmed = false;
        l.session = None;
        l.gen += 1;
        l.pending.clear();
        pl.dirty.store(false, Relaxed);
        pl.regen.store(false, SeqCst);
        self.world.objs[player as usize].view.lock().session = None;
        z.ghosts[player as usize].store(0, Relaxed);
        self.counters.players.fetch_sub(1, Relaxed);
    }

    /// The hand-off's answer is overdue: this zone keeps the player (the client's picture
    /// brought up to date) and the gateway releases the held packets back here.
    pub(crate) fn handoff_timeout(&self, srv: &H, player: u32, epoch: u32) {
        let Some(z) = &self.zone else { return };
        let mut l = self.players[player as usize].login.lock();
        let Handoff::Sent { epoch: e, .. } = l.handoff else {
            return;
        };
        if e != epoch || l.phase != Phase::Moving {
            return;
        }
        let Handoff::Sent { view, .. } = std::mem::take(&mut l.handoff) else {
            unreachable!("matched above")
        };
        let Some(session) = l.session.clone() else {
            return;
        };
        bump(&z.counters.handoff_timeouts);
        tracing::warn!(
            player,
            epoch,
            "hand-off not answered in {:?}: the player stays",
            z.handoff_timeout
        );
        l.phase = Phase::InGame;
        l.ghost_if_revoked = true;
        l.confirmed = false;
        // The client hears from this zone again once the gateway confirms the claim.
        l.handoff = Handoff::Unconfirmed { view, kept: true };
        let _ = srv.post_after(
            CLAIM_RETRY_EVERY,
            CLAIM_RETRY | u64::from(player),
            u64::from(l.epoch),
        );
        if let Some((gateway, s)) = session.route() {
            srv.to_gateway(
                gateway,
                &Msg::HandoffCancel {
                    session: s,
                    player,
                    epoch: l.epoch,
                },
            );
        }
    }

    /// The transfers the test hook held back are due.
    pub(crate) fn delayed_transfers(&self, srv: &H) {
        let Some(z) = &self.zone else { return };
        let due = std::mem::take(&mut *z.delayed.lock());
        for (from, t) in due {
            self.arrive(srv, from, *t);
        }
    }

    /// A player's state arrived (a login placed here, or a hand-off): this zone owns it at
    /// `t.epoch`, tells the gateway (`Owned`) and the old owner (`TransferAck`).
    pub(crate) fn arrive(&self, srv: &H, from: u16, t: Transfer) {
        let z = self.zone.as_ref().expect("a zone");
        let id = t.player;
        if self.gateway_gone(t.gateway, t.gw_inc) {
            // The session's gateway was replaced while the player was on its way: it left
            // the game (its row is written here, its name freed at home).
            bump(&z.counters.gateway_logouts);
            return self.gone_in_transit(srv, &t);
        }
        let Some(session) = srv.remote(t.gateway, t.session, id) else {
            return;
        };
        let pl = &self.players[id as usize];
        let mut l = pl.login.lock();
        if l.epoch != 0 {
            // This zone holds a claim on the player already: a duplicate, or a retried
            // hand-off while an earlier, late claim of ours waits for the gateway — which may
            // still accept that one (it cannot tell attempts apart), so it must stand alone:
            // the retry times out at the old owner, and the gateway settles which claim wins.
            bump(&z.counters.stale);
            return;
        }
        let row = self.sanitize(PlayerRow {
            name: t.name.clone(),
            x: t.x,
            y: t.y,
            hp: t.hp,
            max_hp: t.max_hp,
            exp: t.exp,
            level: t.level,
        });
        l.phase = Phase::InGame;
        l.gen += 1;
        l.name = t.name.clone();
        l.session = Some(session.clone());
        l.placed = true;
        l.epoch = t.epoch;
        l.confirmed = false;
        l.handoff = Handoff::None;
        l.pending.clear();
        l.ghost_if_revoked = t.ghosts & (1 << z.me) != 0;
        l.gw_inc = t.gw_inc;
        // Written by this owner at its next save tick (a new player's row is created then).
        pl.dirty.store(true, Relaxed);
        self.last_move_time[id as usize].store(t.last_move_time, Relaxed);
        z.ghosts[id as usize].store(t.ghosts & !(1 << z.me), Relaxed);
        let pos = pack(row.x, row.y);
        if t.login {
            if self.take_off(srv, id) {
                z.counters.ghosts.fetch_sub(1, Relaxed);
            }
            self.place(&session, id, &row);
            self.publish_band(srv, id, pos, 0, None);
        } else {
            *pl.stats.lock() = PStats {
                hp: row.hp,
                max_hp: row.max_hp,
                exp: row.exp,
                level: row.level,
            };
            let name = cport_mmo_proto::name(&row.name);
            let was_ghost = self.make_real(id, pos, name);
            if was_ghost {
                z.counters.ghosts.fetch_sub(1, Relaxed);
            }
            // The client hears from this zone once the gateway confirms the claim.
            l.handoff = Handoff::Unconfirmed {
                view: t.view.clone(),
                kept: false,
            };
            let _ = srv.post_after(
                CLAIM_RETRY_EVERY,
                CLAIM_RETRY | u64::from(id),
                u64::from(t.epoch),
            );
            self.counters.players.fetch_add(1, Relaxed);
            if t.resume {
                bump(&z.counters.resumed);
            } else {
                bump(&z.counters.handoffs_in);
            }
        }
        srv.to_gateway(
            t.gateway,
            &Msg::Owned {
                session: t.session,
                player: id,
                epoch: t.epoch,
            },
        );
        if !t.login && !t.resume {
            srv.to_zone(
                from,
                &Msg::TransferAck {
                    player: id,
                    epoch: t.epoch,
                },
            );
        }
        if row.hp < row.max_hp {
            self.start_regen(srv, id, l.gen);
        }
    }

    /// Puts player `id` on this zone's board at `pos` (from its ghost if it has one: `true`),
    /// still without a session: nothing goes to its client until the claim is confirmed.
    pub(crate) fn make_real(&self, id: u32, pos: u32, name: Name) -> bool {
        let w = &self.world;
        let (was_in, from) = {
            let mut v = w.objs[id as usize].view.lock();
            let was_in = v.state == State::InGame;
            v.state = State::InGame;
            v.session = None;
            v.name = name;
            let from = w.pos(id);
            w.set_pos(id, pos);
            (was_in, from)
        };
        if was_in {
            w.sector_move(id, from, pos);
        } else {
            w.sector_insert(id, pos);
        }
        was_in
    }

    /// `Confirm`: the gateway routes the player here at `epoch`. A claim that waited for it
    /// (an arrival, a hand-off that timed out) now brings the client's picture up to date.
    pub(crate) fn on_confirm(&self, srv: &H, player: u32, epoch: u32) {
        let z = self.zone.as_ref().expect("a zone");
        let w = &self.world;
        let mut l = self.players[player as usize].login.lock();
        if l.epoch != epoch || epoch == 0 {
            bump(&z.counters.stale);
            return;
        }
        l.confirmed = true;
        if let Handoff::Unconfirmed { view, .. } = std::mem::take(&mut l.handoff) {
            if let Some(session) = l.session.clone() {
                let pos = w.pos(player);
                let name = w.objs[player as usize].view.lock().name;
                self.promote(srv, &session, player, pos, name, &view);
                // A resume: the picture has the player itself where the client believes it
                // is; the last save may differ (position and stats).
                if let Some(&(_, x, y)) = view.iter().find(|v| v.0 == player) {
                    if pack(x, y) != pos {
                        let t = self.last_move_time[player as usize].load(Relaxed);
                        session.send(self.move_packet(player, pos, t));
                    }
                    let s = *self.players[player as usize].stats.lock();
                    self.stat_change(&session, s);
                }
                // A hand-off that timed out: the player is still outside; try again.
                let t = self.last_move_time[player as usize].load(Relaxed);
                self.zone_moved(&session, player, pos, t, true, &mut l);
            }
        }
    }

    /// Makes player `id` real here with `session`, its client having been told `told` (ids
    /// and positions): the client's picture becomes its view set, and every pair is brought
    /// in line with the world (only what changed is sent: ADD, REMOVE, or a MOVE of an object
    /// that moved since).
    pub(crate) fn promote(
        &self,
        srv: &H,
        session: &H::Conn,
        id: u32,
        pos: u32,
        name: Name,
        told: &[(u32, u16, u16)],
    ) {
        let w = &self.world;
        let (old, was_in, from) = {
            let mut v = w.objs[id as usize].view.lock();
            let was_in = v.state == State::InGame;
            let old: Vec<u32> = v.set.iter().copied().collect();
            v.set = told.iter().map(|t| t.0).filter(|&o| o != id).collect();
            v.session = Some(session.clone());
            v.state = State::InGame;
            v.name = name;
            let from = w.pos(id);
            w.set_pos(id, pos);
            (old, was_in, from)
        };
        if was_in {
            w.sector_move(id, from, pos);
        } else {
            w.sector_insert(id, pos);
        }
        let mut mine = self.mine(id, pos, name, None);
        mine.told = told.iter().map(|&(o, x, y)| (o, pack(x, y))).collect();
        mine.told.sort_unstable();
        let mut cands = old;
        cands.extend(
            told.iter()
                .map(|t| t.0)
                .filter(|&o| (o as usize) < w.objs.len()),
        );
        w.near(pos, true, &mut cands);
        cands.sort_unstable();
        cands.dedup();
        for c in cands {
            self.reconcile(srv, id, c, &mine);
        }
    }

    /// A claim still unanswered after [`CLAIM_RETRY_EVERY`]: said again (`Owned` for an
    /// arrival, `HandoffCancel` for a kept player), and again later until answered.
    pub(crate) fn claim_retry(&self, srv: &H, player: u32, epoch: u32) {
        let l = self.players[player as usize].login.lock();
        let Handoff::Unconfirmed { kept, .. } = l.handoff else {
            return;
        };
        if l.epoch != epoch || epoch == 0 {
            return;
        }
        let Some((gateway, session)) = l.session.as_ref().and_then(|c| c.route()) else {
            return;
        };
        tracing::info!(player, epoch, kept, "claim unanswered: said again");
        let m = if kept {
            Msg::HandoffCancel {
                session,
                player,
                epoch,
            }
        } else {
            Msg::Owned {
                session,
                player,
                epoch,
            }
        };
        srv.to_gateway(gateway, &m);
        let _ = srv.post_after(
            CLAIM_RETRY_EVERY,
            CLAIM_RETRY | u64::from(player),
            u64::from(epoch),
        );
    }

    /// `Revoke`: the gateway gave the player to another zone; this zone's claim at `epoch`
    /// ends without a write.
    pub(crate) fn on_revoke(&self, srv: &H, player: u32, epoch: u32) {
        let z = self.zone.as_ref().expect("a zone");
        let mut l = self.players[player as usize].login.lock();
        if l.epoch != epoch || epoch == 0 {
            bump(&z.counters.stale);
            return;
        }
        bump(&z.counters.revokes);
        tracing::info!(
            player,
            epoch,
            "claim revoked by the gateway: another zone owns the player"
        );
        let keep = l.ghost_if_revoked;
        self.let_go(player, &mut l);
        if keep {
            z.counters.ghosts.fetch_add(1, Relaxed);
        } else {
            self.take_off(srv, player);
        }
    }

    /// `Disconnect`: the client is gone; the owner writes the row and takes it off.
    pub(crate) fn on_disconnect(&self, srv: &H, player: u32, epoch: u32) {
        let z = self.zone.as_ref().expect("a zone");
        let pl = &self.players[player as usize];
        let mut l = pl.login.lock();
        if epoch == 0 {
            // The gateway gave up on a login before any zone took it: free the name.
            z.names.lock().retain(|_, p| *p != player);
            return;
        }
        if l.epoch != epoch {
            bump(&z.counters.stale);
            return;
        }
        self.leave_game(srv, player, &mut l);
    }

    /// Player `player`, owned here, leaves the game: its row written, its object off the
    /// board, its name freed at home (`depart`), and its slot here idle. (A hand-off under
    /// way ends with it.)
    pub(crate) fn leave_game(&self, srv: &H, player: u32, l: &mut Login<H::Conn>) {
        l.handoff = Handoff::None;
        self.depart(srv, player, l);
        l.phase = Phase::Idle;
        l.epoch = 0;
        l.confirmed = false;
        l.gen += 1;
        l.pending.clear();
        l.session = None;
        l.name.clear();
        self.players[player as usize].regen.store(false, SeqCst);
    }
}
