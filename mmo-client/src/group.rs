//! The course's ramp over a group of clients: one loop, whatever holds the sockets.
//!
//! [`drive`] runs the ramp on the tracked delay, keeps the per-second series, adds and sheds
//! on the ramp's word and writes the end [`Report`]. What it drives is a [`Group`]: the
//! dummies of this process ([`crate::dummies`]), or the client processes of a multi-process
//! run ([`crate::multi`]), whose parent holds the global tracker.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::map::{MapSnapshot, Probe};
use crate::ramp::{Action, Ramp};
use crate::report::{ChildSummary, Errors, Report, Second, SettingsReport};
use crate::settings::Settings;

/// Delay samples above this (ms) are bogus (a clock that wrapped, a stale `move_time`).
pub(crate) const MAX_DELAY_MS: u64 = 3_600_000;

/// A histogram of delays (ms, 3 significant digits).
pub(crate) fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_DELAY_MS, 3).expect("histogram bounds")
}

/// User + system CPU time of this process (all threads).
pub fn self_cpu_time() -> Duration {
    cport_server::os::process_cpu_time()
}

/// What an add did.
pub(crate) enum Added {
    /// A client was started.
    Started,
    /// None this time (a transient failure, counted in the errors).
    NotNow,
    /// None, and none will fit: the open-files limits cap the group at its live count.
    AtCap,
}

/// The figures of the second just ended.
pub(crate) struct SecondFigures {
    /// The delays sampled during it (taken: the next second starts empty).
    pub hist: Histogram<u64>,
    /// Server packets received so far.
    pub packets_in: u64,
    /// Client packets sent so far.
    pub packets_out: u64,
    /// Errors so far.
    pub errors: Errors,
}

/// What a group did, once it has stopped.
pub(crate) struct Finish {
    /// Clients logged in at the end.
    pub final_clients: usize,
    pub clients_started: u64,
    pub clients_shed: u64,
    /// Delay samples fed to the tracker.
    pub delay_samples: u64,
    /// The delays sampled since the last [`Group::second`].
    pub rest: Histogram<u64>,
    pub packets_in: u64,
    pub packets_out: u64,
    pub errors: Errors,
    pub max_player_id: Option<u32>,
    /// Client processes (1: this one).
    pub procs: usize,
    pub children: Vec<ChildSummary>,
    /// CPU time of every process of the group.
    pub cpu_s: f64,
    pub client_backend: String,
    /// The map at the end.
    pub map: MapSnapshot,
}

/// A group of clients the ramp drives.
pub(crate) trait Group {
    /// Most clients the group can hold (the ramp's cap).
    fn cap(&self) -> usize;
    /// Takes in what the group's members reported since the last call; an error ends the
    /// run early, with this reason.
    fn take_in(&mut self) -> Result<(), String>;
    /// The course's tracked delay, now.
    fn tracked(&self) -> u64;
    /// The highest tracked delay since the last call, as the samples moved it (0 when the
    /// group's tracker is sampled only through [`Group::tracked`]).
    fn take_tracked_max(&mut self) -> u64 {
        0
    }
    /// Clients started and not closed (connecting, logging in, in game).
    fn live(&self) -> usize;
    /// Clients logged in.
    fn active(&self) -> usize;
    /// Starts one more client (`live` now: the cap when none fits).
    fn add(&mut self, live: usize) -> Added;
    /// Closes the oldest client.
    fn shed(&mut self);
    /// The second just ended.
    fn second(&mut self) -> SecondFigures;
    /// A probe for a live view.
    fn probe(&self) -> Probe;
    /// Stops every client and says what they did; a reason to add to the report's
    /// `stopped_early` when there is none yet.
    fn finish(self, stopped_early: &mut Option<String>) -> Finish;
    /// The open-files limit, when it capped the group.
    fn fd_limited_to(&self) -> Option<usize>;
}

/// Runs the course's ramp over `group` until `settings.duration` has passed or `stop` is set
/// (or the group fails, or the server refuses every connect for 3 s), calling `on_second`
/// once a second. Returns the report and the map at the end.
pub(crate) fn drive(
    settings: &Settings,
    mut group: impl Group,
    stop: &AtomicBool,
    mut on_second: impl FnMut(&Second, &Errors, &Probe),
) -> (Report, MapSnapshot) {
    let probe = group.probe();
    let max_clients = group.cap();
    let start = Instant::now();
    let end = start + settings.duration;
    let mut ramp = Ramp::new(settings.ramp_interval, settings.delay_limit_ms, max_clients);
    ramp.shed_interval = settings.shed_interval;
    // Ticks well below the ramp's pace, so that adds come close to on time.
    let tick =
        (settings.ramp_interval / 4).clamp(Duration::from_micros(200), Duration::from_millis(5));
    let mut series = Vec::new();
    let mut whole = new_hist();
    let mut next_second = start + Duration::from_secs(1);
    let (mut last_in, mut last_out) = (0u64, 0u64);
    let mut last_t = start;
    let (mut max_under, mut peak) = (0usize, 0usize);
    let mut stopped_early = None;
    let mut tracked_max = 0;
    let (mut refusing, mut last_refused) = (0u32, 0u64);
    loop {
        let taken = group.take_in();
        tracked_max = tracked_max.max(group.take_tracked_max());
        if let Err(why) = taken {
            stopped_early = Some(why);
            break;
        }
        let now = Instant::now();
        if now >= end {
            break;
        }
        if stop.load(Relaxed) {
            stopped_early = Some("interrupted".to_string());
            break;
        }
        let tracked = group.tracked();
        let live = group.live();
        let active = group.active();
        peak = peak.max(active);
        tracked_max = tracked_max.max(tracked);
        if tracked < settings.delay_limit_ms {
            max_under = max_under.max(active);
        }
        match ramp.step(now - start, tracked, live) {
            Action::Add => match group.add(live) {
                Added::Started | Added::NotNow => {}
                // Hold here: the open-files limit is the cap from now on.
                Added::AtCap => ramp.cap = live,
            },
            Action::Shed => group.shed(),
            Action::Wait => {}
        }
        if now >= next_second {
            let SecondFigures {
                hist: h,
                packets_in: pin,
                packets_out: pout,
                errors,
            } = group.second();
            whole.add(&h).expect("same bounds");
            let dt = now.duration_since(last_t).as_secs_f64().max(1e-3);
            let sec = Second {
                t: (now - start).as_secs_f64(),
                clients: active,
                live,
                tracked_delay_ms: tracked,
                tracked_max_ms: std::mem::take(&mut tracked_max),
                samples: h.len(),
                p50_ms: h.value_at_quantile(0.5),
                p95_ms: h.value_at_quantile(0.95),
                p99_ms: h.value_at_quantile(0.99),
                max_ms: h.max(),
                packets_in_per_s: (pin.saturating_sub(last_in) as f64 / dt).round() as u64,
                packets_out_per_s: (pout.saturating_sub(last_out) as f64 / dt).round() as u64,
                errors: errors.total(),
                max_under_limit: max_under,
            };
            (last_in, last_out, last_t) = (pin, pout, now);
            // Server gone: connects refused for 3 seconds running and nobody in game.
            let refused = errors.connect_refused + errors.connect_failed;
            refusing = if refused > last_refused && active == 0 {
                refusing + 1
            } else {
                0
            };
            last_refused = refused;
            on_second(&sec, &errors, &probe);
            series.push(sec);
            next_second += Duration::from_secs(1);
            if refusing >= 3 {
                stopped_early = Some(format!(
                    "the server refused every connect for {refusing} s: gone?"
                ));
                break;
            }
        }
        std::thread::sleep(tick);
    }
    let elapsed = start.elapsed();
    let final_tracked = group.tracked();
    let fd_limited_to = group.fd_limited_to();
    let f = group.finish(&mut stopped_early);
    whole.add(&f.rest).expect("same bounds");
    let report = Report {
        max_clients_under_limit: max_under,
        peak_clients: peak,
        ramp_max_recorded: ramp.max_recorded(),
        final_tracked_delay_ms: final_tracked,
        final_clients: f.final_clients,
        clients_started: f.clients_started,
        clients_shed: f.clients_shed,
        delay_samples: f.delay_samples,
        p50_ms: whole.value_at_quantile(0.5),
        p99_ms: whole.value_at_quantile(0.99),
        max_ms: whole.max(),
        packets_in: f.packets_in,
        packets_out: f.packets_out,
        series,
        errors: f.errors,
        fd_limited_to,
        max_player_id: f.max_player_id,
        procs: f.procs,
        children: f.children,
        client_cpu_s: f.cpu_s,
        client_cpu_pct: 100.0 * f.cpu_s / elapsed.as_secs_f64().max(1e-3),
        server_cpu_s: None,
        server: None,
        elapsed_s: elapsed.as_secs_f64(),
        stopped_early,
        settings: SettingsReport::of(settings, max_clients, f.client_backend),
    };
    (report, f.map)
}
