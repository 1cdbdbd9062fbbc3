//! The gateway's part when a zone dies: every batch's header names its sender's run
//! (incarnation); a newer run of a zone means the older one is gone.
//!
//! - The new run's name marks are rebuilt: a `Relock` for each of this gateway's players
//!   whose name it is home to, then `RelockDone` (it takes no login before every gateway's).
//!   Said to every run this gateway meets first, so a fresh cluster's zones hear it too.
//! - Each session the old run owned is **resumed**: its packets are held, and the name's home
//!   zone gets `Resume` with the client's picture (tracked here from what the zones sent), so
//!   that the player comes back from its last save, the client connected throughout and told
//!   only what changed. A hand-off whose old owner died resumes if no zone claims the player
//!   before its timeout.
//! - A batch from a run older than the newest is refused (the caller answers `Fenced`).

use cport_mmo::cluster::wire::Msg;

use super::{Phase, Routes, ORPHAN_WAIT};
use crate::gateway::effects::{Effects, Timer, TimerKind};

impl<S: Clone> Routes<S> {
    /// A batch from run `inc` of zone `zone` is about to be fed: `false` if that run has
    /// been replaced (drop the batch). A first or a newer run is met here (relocks; a newer
    /// run's players are resumed).
    pub fn zone_run(&mut self, zone: u16, inc: u64, fx: &mut impl Effects<S>) -> bool {
        let Some(&known) = self.runs.get(usize::from(zone)) else {
            return false;
        };
        if inc == known {
            return true;
        }
        if inc < known {
            self.counters.stale_batches += 1;
            return false;
        }
        self.runs[usize::from(zone)] = inc;
        self.relock(zone, fx);
        if known != 0 {
            self.counters.zone_restarts += 1;
            tracing::warn!(
                zone,
                old = known,
                new = inc,
                "zone restarted: resuming its players"
            );
            self.zone_restarted(zone, fx);
        }
        true
    }

    /// The newest run seen of `zone` (0: none yet).
    pub fn zone_run_of(&self, zone: u16) -> u64 {
        self.runs.get(usize::from(zone)).copied().unwrap_or(0)
    }

    /// `Relock` for every player of this gateway whose name `zone` is home to, then
    /// `RelockDone`.
    fn relock(&self, zone: u16, fx: &mut impl Effects<S>) {
        for s in self.sessions.values() {
            // (A login under way is not restated: its `Login` marks the name, or, lost with
            // the old run, it times out.)
            let holds = matches!(
                s.phase,
                Phase::Routed | Phase::Handoff { .. } | Phase::Resume
            );
            if !holds || s.conn.is_none() || s.name.is_empty() {
                continue;
            }
            if self.set.layout.home_of(&s.name) != usize::from(zone) {
                continue;
            }
            if let Some(player) = s.player {
                fx.zone(
                    zone,
                    Msg::Relock {
                        player,
                        name: s.name.clone(),
                    },
                );
            }
        }
        fx.zone(zone, Msg::RelockDone);
    }

    /// The old run of `zone` is gone: its players are resumed (see the module's doc).
    fn zone_restarted(&mut self, zone: u16, fx: &mut impl Effects<S>) {
        let mut resume = Vec::new();
        for (&id, s) in self.sessions.iter_mut() {
            if s.conn.is_none() || s.closing || s.route != zone {
                continue;
            }
            match s.phase {
                Phase::Routed | Phase::Resume => {
                    s.resume_tries = 0;
                    resume.push(id)
                }
                Phase::Handoff { .. } => {
                    s.orphan = true;
                    self.serial = self.serial.wrapping_add(1);
                    s.serial = self.serial;
                    fx.timer(
                        ORPHAN_WAIT,
                        Timer {
                            kind: TimerKind::Handoff,
                            session: id,
                            serial: s.serial,
                        },
                    );
                }
                _ => {}
            }
        }
        resume.sort_unstable();
        for id in resume {
            self.resume(id, fx);
        }
    }

    /// Session `session`'s player comes back from its last save: `Resume` to its name's
    /// home zone, packets held meanwhile.
    pub(super) fn resume(&mut self, session: u64, fx: &mut impl Effects<S>) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let Some(player) = s.player else { return };
        // Above every epoch this session has seen offered (a hand-off under way offered
        // `next`): the resumed claim never shares an epoch with an older one.
        let floor = match s.phase {
            Phase::Handoff { next, .. } => next.max(s.epoch),
            _ => s.epoch,
        };
        s.resume_tries = if s.phase == Phase::Resume {
            s.resume_tries + 1
        } else {
            1
        };
        let home = self.set.layout.home_of(&s.name) as u16;
        self.serial = self.serial.wrapping_add(1);
        s.serial = self.serial;
        s.phase = Phase::Resume;
        // `s.epoch` stays: a claim of the orphaned hand-off's new zone (at its `next`) that
        // comes late is still taken, and then the resume's own claim is refused — the first
        // claim wins either way.
        s.route = home;
        s.orphan = false;
        if s.resume_tries == 1 {
            self.counters.resumes += 1;
        }
        let mut view: Vec<(u32, u16, u16)> =
            s.picture.iter().map(|(&id, &(x, y))| (id, x, y)).collect();
        view.sort_unstable();
        fx.zone(
            home,
            Msg::Resume {
                session,
                player,
                name: s.name.clone(),
                epoch: floor + 1,
                view,
            },
        );
        fx.timer(
            self.set.login_timeout,
            Timer {
                kind: TimerKind::Login,
                session,
                serial: s.serial,
            },
        );
    }
}
