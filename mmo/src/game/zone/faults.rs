//! Other processes of the cluster dying or restarting, as this zone sees them: every batch's
//! header names its sender's run (incarnation, its start time), so a newer run of a gateway
//! or a zone means the older one is gone.
//!
//! - A **gateway** replaced (or silent for too long, `gateway_silent`): its sessions are gone
//!   with it, so every player this zone owns through that run leaves the game the normal way
//!   (row written, name freed at home). A player on its way here for such a session is
//!   written and freed on arrival instead.
//! - A **zone** replaced: the ghosts it had published here are dropped (its new run
//!   publishes what it owns now); its players come back through their gateways (`Resume`).
//! - A batch from a run older than the newest seen from its source comes from a process
//!   that was replaced (stopped, then woken): it is dropped, and the glue answers `Fenced`.

use std::sync::atomic::Ordering::Relaxed;

use crate::cluster::state::{bump, NO_ZONE};
use crate::cluster::wire::{Source, Transfer};
use crate::db::PlayerRow;
use crate::game::Game;
use crate::net::{Conn, Host};

impl<H: Host> Game<H> {
    /// A batch from `from`'s run `inc`: `false` if that run has been replaced (drop the
    /// batch). A newer run than the last seen takes over: the older run's sessions or ghosts
    /// go (see the module's doc).
    pub(crate) fn source_run(&self, srv: &H, from: Source, inc: u64) -> bool {
        let Some(z) = &self.zone else { return true };
        let cell = match from {
            Source::Gateway(g) => z.gw_newest.get(usize::from(g)),
            Source::Zone(o) => z.zone_newest.get(usize::from(o)),
        };
        let Some(cell) = cell else { return false };
        let known = cell.load(Relaxed);
        if inc == known {
            return true;
        }
        if inc < known {
            return false;
        }
        // Two workers may see the new run at once (different batches of one source are
        // drained in order, but an `Alive` and a batch share that order): one takes over.
        if cell.compare_exchange(known, inc, Relaxed, Relaxed).is_err() {
            return cell.load(Relaxed) <= inc;
        }
        if known != 0 {
            match from {
                Source::Gateway(g) => {
                    tracing::warn!(
                        gateway = g,
                        old = known,
                        new = inc,
                        "gateway restarted: its players leave"
                    );
                    self.gateway_gone_out(srv, g, inc);
                }
                Source::Zone(o) => {
                    tracing::warn!(
                        zone = o,
                        old = known,
                        new = inc,
                        "zone restarted: dropping its ghosts"
                    );
                    self.zone_replaced(srv, o);
                }
            }
        }
        true
    }

    /// The newest run seen of `from` (0: none yet).
    pub(crate) fn newest_run(&self, from: Source) -> u64 {
        let Some(z) = &self.zone else { return 0 };
        let cell = match from {
            Source::Gateway(g) => z.gw_newest.get(usize::from(g)),
            Source::Zone(o) => z.zone_newest.get(usize::from(o)),
        };
        cell.map_or(0, |c| c.load(Relaxed))
    }

    /// Gateway `g` has not been heard from for too long (while this zone's bus was up): its
    /// run is treated as replaced — its players leave, and a later batch of that run is
    /// refused.
    pub(crate) fn gateway_silent(&self, srv: &H, g: u16) {
        let Some(z) = &self.zone else { return };
        let Some(cell) = z.gw_newest.get(usize::from(g)) else {
            return;
        };
        let known = cell.load(Relaxed);
        if known == 0 || known == u64::MAX {
            return;
        }
        let fence = known + 1;
        if cell
            .compare_exchange(known, fence, Relaxed, Relaxed)
            .is_ok()
        {
            tracing::warn!(
                gateway = g,
                run = known,
                "gateway silent: its players leave"
            );
            self.gateway_gone_out(srv, g, fence);
        }
    }

    /// Whether gateway `g`'s run `inc` has been replaced.
    pub(crate) fn gateway_gone(&self, g: u16, inc: u64) -> bool {
        let Some(z) = &self.zone else { return false };
        z.gw_newest
            .get(usize::from(g))
            .is_some_and(|c| inc < c.load(Relaxed))
    }

    /// Every player owned here through a run of gateway `g` older than `inc` leaves the game.
    fn gateway_gone_out(&self, srv: &H, g: u16, inc: u64) {
        let z = self.zone.as_ref().expect("a zone");
        for (id, pl) in self.players.iter().enumerate() {
            let mut l = pl.login.lock();
            if l.epoch == 0 || l.gw_inc >= inc {
                continue;
            }
            let ours = l
                .session
                .as_ref()
                .and_then(|c| c.route())
                .is_some_and(|(gw, _)| gw == g);
            if !ours {
                continue;
            }
            bump(&z.counters.gateway_logouts);
            self.leave_game(srv, id as u32, &mut l);
        }
    }

    /// A player arrived for a session of a gateway run that is gone: its row is written here
    /// and its name freed at home, as a logout would.
    pub(crate) fn gone_in_transit(&self, srv: &H, t: &Transfer) {
        let row = PlayerRow {
            name: t.name.clone(),
            x: t.x,
            y: t.y,
            hp: t.hp,
            max_hp: t.max_hp,
            exp: t.exp,
            level: t.level,
        };
        if let Some(p) = &self.persist {
            p.put(row.clone());
            p.flush(Some(&t.name));
        }
        self.departed(srv, &t.name, row);
    }

    /// Batches of zone `o` were lost on the way (a gap in its sequence: NATS restarted, or
    /// this zone was a slow consumer): its ghosts here may be stale (a leave or a move
    /// lost), so they are dropped and `o` is asked for what it owns near here again.
    pub(crate) fn zone_gap(&self, srv: &H, o: u16) {
        let Some(z) = &self.zone else { return };
        if o == z.me || usize::from(o) >= z.layout.zones() {
            return;
        }
        tracing::warn!(
            zone = o,
            "batches of zone {o} lost: its ghosts here are asked for again"
        );
        self.zone_replaced(srv, o);
        srv.to_zone(o, &crate::cluster::wire::Msg::SnapshotRequest);
    }

    /// Zone `o` was replaced: the ghosts it published here go (its viewers here are told);
    /// the new run publishes what it owns now.
    fn zone_replaced(&self, srv: &H, o: u16) {
        let z = self.zone.as_ref().expect("a zone");
        for id in 0..z.ghost_src.len() as u32 {
            if z.ghost_src[id as usize].load(Relaxed) == o {
                z.ghost_src[id as usize].store(NO_ZONE, Relaxed);
                bump(&z.counters.ghosts_dropped);
                self.ghost_leave(srv, id);
            }
        }
    }
}
