//! # cport-mmo-client — the course's stress tester, on the port (`cport stress`, `cport demo`)
//!
//! Dummies connect one at a time, each logging in (`CS_LOGIN`, name `dummyN`) and teleporting
//! (`CS_TELEPORT`), then sending `CS_MOVE` in a random direction about once a second with
//! `move_time` = the client's clock in ms. When a dummy receives `SC_MOVE_OBJECT` for its own
//! id (learned from `SC_LOGIN_INFO`), `delay = now − move_time` feeds the course's slow
//! [`DelayTracker`] (1 ms toward each sample) and a per-second latency histogram (p50, p95,
//! p99). The course's [`Ramp`] adds and sheds clients from the tracked delay; the result is
//! the highest number of clients held while the tracked delay stayed under the limit.
//!
//! Every server packet is framed and decoded; each dummy keeps the picture its packets paint
//! (objects in view, where they are), from which [`MapSnapshot`] draws the board.
//!
//! The client is one port with a few workers (`dummies`): sockets are associated with the
//! key `generation << 32 | slot`, connects, receives and sends are port operations, and each
//! dummy's move schedule is a port timer. One controller thread (the caller's) runs the ramp
//! and the per-second series (`group`), over the dummies of this process or over several
//! client processes ([`multi`]): the same loop either way.
//!
//! The modules, each one job; a module uses only those above it in this list, and none uses
//! this root, which only declares and re-exports:
//!
//! * `settings`, `report`: what a run is told and what it measured ([`Report`], serde);
//! * `ramp`: the course's delay tracker and ramp;
//! * `view`: one client's picture of the board ([`View`]); `map`: the board of all dummies
//!   ([`MapSnapshot`], [`Probe`]);
//! * `group`: the ramp loop over a group of clients, and the report it writes;
//! * `dummies`: the sockets, their completions and pictures; `local`: them as the ramp's
//!   group; [`multi`]: several client processes under one ramp;
//! * [`blocking`]: a blocking course client for tests, with the same [`View`].

#![warn(missing_docs)]

pub mod blocking;
mod dummies;
mod group;
mod local;
mod map;
pub mod multi;
mod ramp;
mod report;
mod settings;
mod view;

pub use group::self_cpu_time;
pub use map::{MapSnapshot, Probe};
pub use ramp::{Action, DelayTracker, Ramp};
pub use report::{ChildSummary, Errors, Report, Second, SettingsReport};
pub use settings::Settings;
pub use view::{Mismatch, View};

use std::io;
use std::sync::atomic::AtomicBool;

/// Runs the stress test until `settings.duration` has passed or `stop` is set, calling
/// `on_second` once a second (for a progress line). Returns the report and the map at the
/// end.
pub fn run(
    settings: &Settings,
    stop: &AtomicBool,
    mut on_second: impl FnMut(&Second, &Errors),
) -> io::Result<(Report, MapSnapshot)> {
    run_with_probe(settings, stop, |s, e, _| on_second(s, e))
}

/// [`run`], with a [`Probe`] handed to `on_second` as well, for a live view that samples the
/// map (clone it to another thread; the callback runs on the thread that drives the ramp, so
/// it should return quickly).
pub fn run_with_probe(
    settings: &Settings,
    stop: &AtomicBool,
    on_second: impl FnMut(&Second, &Errors, &Probe),
) -> io::Result<(Report, MapSnapshot)> {
    let clients = dummies::Clients::start(settings, "dummy".into(), false)?;
    Ok(group::drive(
        settings,
        local::InProcess::new(clients),
        stop,
        on_second,
    ))
}

#[cfg(test)]
mod tests {
    use super::{run_with_probe, Settings};
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[test]
    fn the_probe_maps_the_dummies_in_game_during_the_run_and_nothing_after() {
        let server = cport_mmo::start(cport_mmo::Config {
            npcs: 20_000,
            threads: 1,
            ..cport_mmo::Config::default()
        })
        .expect("start the game");
        let settings = Settings {
            max_clients: 50,
            ramp_interval: Duration::from_millis(5),
            threads: 1,
            ..Settings::new(server.local_addr(), Duration::from_secs(3))
        };
        let (mut maps, mut kept) = (Vec::new(), None);
        let (report, end) = run_with_probe(&settings, &AtomicBool::new(false), |s, _, probe| {
            maps.push((s.clients, probe.map().expect("the run is on")));
            kept = Some(probe.clone());
        })
        .expect("stress run");
        assert_eq!(maps.len(), report.series.len());
        for (clients, m) in &maps {
            // Sampled just after the second's count: logins may have completed in between.
            assert!(
                m.players.len() >= *clients,
                "{} < {clients}",
                m.players.len()
            );
            assert!(m.players.len() <= 50);
            assert!(m
                .players
                .iter()
                .chain(&m.npcs)
                .all(|&(x, y)| (0..2000).contains(&x) && (0..2000).contains(&y)));
        }
        let (_, last) = maps.last().unwrap();
        assert_eq!(last.players.len(), 50, "every dummy is in game by the end");
        assert!(
            !last.npcs.is_empty(),
            "50 dummies among 20,000 NPCs see some"
        );
        assert_eq!(end.players.len(), report.final_clients);
        assert!(
            kept.unwrap().map().is_none(),
            "nothing once the run is over"
        );
        server.shutdown(Duration::from_secs(2));
    }
}
