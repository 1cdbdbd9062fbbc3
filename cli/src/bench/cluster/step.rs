//! One step of the search: the stress client (its own process, `cport stress`) climbs to a
//! number of clients with its delay limit out of reach (so that it neither slows nor sheds),
//! settles, holds; the cluster's processes and the zones' groups are sampled beside it, and
//! the hold's figures decide whether the step was held.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cport_bench::cgroup::CpuStat;
use cport_bench::proc;
use cport_bench::stats::median;
use cport_mmo_client::{Report, Second};

use super::args::ClusterArgs;
use crate::bench::stress_run::{self, StressRun};

/// The processes a layout's sampler reads: each zone, the gateway, NATS (when started
/// here), and the zones' `cpu.stat` files.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    pub(crate) zones: Vec<u32>,
    pub(crate) gateway: u32,
    pub(crate) nats: Option<u32>,
    pub(crate) stat_files: Vec<PathBuf>,
}

/// One reading: when, each zone's CPU seconds, the gateway's, NATS's, each zone group's
/// `cpu.stat`.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    t: Instant,
    zone_cpu: Vec<f64>,
    gateway_cpu: f64,
    nats_cpu: f64,
    stats: Vec<CpuStat>,
}

/// Samples a [`Watch`] every 100 ms on a thread until stopped.
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// At most a day of samples at 10 a second: the layout's run is far shorter.
const MAX_SAMPLES: usize = 864_000;

fn read(w: &Watch) -> Sample {
    let cpu = |pid: u32| proc::cpu_time(pid).map_or(0.0, |d| d.as_secs_f64());
    Sample {
        t: Instant::now(),
        zone_cpu: w.zones.iter().map(|&p| cpu(p)).collect(),
        gateway_cpu: cpu(w.gateway),
        nats_cpu: w.nats.map_or(0.0, cpu),
        stats: w
            .stat_files
            .iter()
            .map(|f| {
                std::fs::read_to_string(f)
                    .map_or_else(|_| CpuStat::default(), |t| CpuStat::parse(&t))
            })
            .collect(),
    }
}

impl Sampler {
    pub(crate) fn start(w: Watch) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Relaxed) {
                let x = read(&w);
                {
                    let mut v = v.lock().unwrap_or_else(|e| e.into_inner());
                    if v.len() >= MAX_SAMPLES {
                        return;
                    }
                    v.push(x);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// The samples from `t0` to `t1`: the first at or after `t0` and the last at or before
    /// `t1`.
    fn window(&self, t0: Instant, t1: Instant) -> Option<(Sample, Sample)> {
        let v = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let a = v.iter().find(|s| s.t >= t0)?;
        let b = v.iter().rev().find(|s| s.t <= t1)?;
        (b.t > a.t).then(|| (a.clone(), b.clone()))
    }

    /// Every group's `cpu.stat` over the whole run so far (last sample less the first).
    pub(crate) fn throttled_total(&self) -> Vec<CpuStat> {
        let v = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        match (v.first(), v.last()) {
            (Some(a), Some(b)) => b
                .stats
                .iter()
                .zip(&a.stats)
                .map(|(b, a)| b.since(a))
                .collect(),
            _ => Vec::new(),
        }
    }

    pub(crate) fn finish(mut self) -> Self {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one step measured over its hold.
#[derive(Debug, Clone, Default)]
pub(crate) struct Step {
    /// The clients asked for.
    pub(crate) clients: usize,
    /// Whether the step was held (see [`judge`]), and why not.
    pub(crate) held: bool,
    pub(crate) why_not: Option<String>,
    /// The fewest clients in game in any second of the hold.
    pub(crate) fewest: usize,
    /// The median of the hold's per-second medians.
    pub(crate) p50_ms: f64,
    /// The highest per-second 99th percentile of the hold.
    pub(crate) p99_ms: f64,
    /// The hold's length as measured (seconds with their figures).
    pub(crate) hold_s: f64,
    /// Each zone's CPU use over the hold, % of one CPU.
    pub(crate) zone_cpu_pct: Vec<f64>,
    /// Each zone group's `cpu.stat` over the hold.
    pub(crate) zone_stat: Vec<CpuStat>,
    pub(crate) gateway_cpu_pct: f64,
    pub(crate) nats_cpu_pct: f64,
    /// The stress client's, over its whole run.
    pub(crate) client_cpu_pct: f64,
    /// The stress client's errors (connects, logins, closes) over its whole run.
    pub(crate) errors: u64,
    /// Σ clients in game over the run's seconds (for the per-player bus figures).
    pub(crate) player_seconds: f64,
}

/// The stress client's delay limit: an hour, never reached, so that it neither slows nor
/// sheds; the delay is measured all the same.
const OUT_OF_REACH_MS: u64 = 3_600_000;

/// Runs one step of `clients` against the gateway at `addr`.
pub(crate) fn run_step(
    a: &ClusterArgs,
    addr: SocketAddr,
    clients: usize,
    sampler: &Sampler,
    dir: &Path,
) -> io::Result<Step> {
    // The climb at `--climb-per-s`, with room (a quarter more and a second) for logins that
    // lag behind the adds.
    let interval_ms = (1000 / a.climb_per_s.max(1)).max(1);
    let climb_s = (clients as u64 * interval_ms * 5 / 4).div_ceil(1000) + 1;
    let duration_s = climb_s + a.settle_s + a.hold_s;
    let (report, t0) = stress(a, addr, clients, interval_ms, duration_s, dir)?;
    let end_t = report.series.last().map_or(0.0, |s| s.t);
    let from_t = end_t - a.hold_s as f64;
    // Each entry is the second that ends at `t`.
    let hold: Vec<&Second> = report
        .series
        .iter()
        .filter(|s| s.t > from_t + 0.5)
        .collect();
    let mut step = Step {
        clients,
        fewest: hold.iter().map(|s| s.clients).min().unwrap_or(0),
        p50_ms: median(&hold.iter().map(|s| s.p50_ms as f64).collect::<Vec<_>>()),
        p99_ms: hold.iter().map(|s| s.p99_ms as f64).fold(0.0, f64::max),
        hold_s: hold.len() as f64,
        client_cpu_pct: report.client_cpu_pct,
        errors: report.errors.total(),
        player_seconds: report.series.iter().map(|s| s.clients as f64).sum(),
        ..Step::default()
    };
    let ta = t0 + Duration::from_secs_f64(from_t.max(0.0));
    let tb = t0 + Duration::from_secs_f64(end_t.max(0.0));
    if let Some((s0, s1)) = sampler.window(ta, tb) {
        let secs = s1.t.duration_since(s0.t).as_secs_f64().max(1e-3);
        let pct = |x0: f64, x1: f64| 100.0 * (x1 - x0) / secs;
        step.zone_cpu_pct = s0
            .zone_cpu
            .iter()
            .zip(&s1.zone_cpu)
            .map(|(x0, x1)| pct(*x0, *x1))
            .collect();
        step.zone_stat = s1
            .stats
            .iter()
            .zip(&s0.stats)
            .map(|(b, a)| b.since(a))
            .collect();
        step.gateway_cpu_pct = pct(s0.gateway_cpu, s1.gateway_cpu);
        step.nats_cpu_pct = pct(s0.nats_cpu, s1.nats_cpu);
    }
    judge(&mut step, a, report.stopped_early.as_deref());
    Ok(step)
}

/// Whether a step was held: the whole hold measured (at least all but one of its seconds),
/// every client in game through it (the fewest in any second at least 99% of those asked
/// for), and the delay's 99th percentile under the limit in every second of it.
pub(crate) fn judge(step: &mut Step, a: &ClusterArgs, stopped_early: Option<&str>) {
    let want_in = step.clients - step.clients / 100;
    step.why_not = if let Some(why) = stopped_early {
        Some(format!("the stress client stopped early: {why}"))
    } else if step.hold_s + 1.0 < a.hold_s as f64 {
        Some(format!(
            "only {} s of the {} s hold were measured",
            step.hold_s, a.hold_s
        ))
    } else if step.fewest < want_in {
        Some(format!(
            "{} of {} clients in game at the fewest",
            step.fewest, step.clients
        ))
    } else if step.p99_ms >= a.delay_limit_ms as f64 {
        Some(format!(
            "delay p99 {} ms ≥ {} ms in a second of the hold",
            step.p99_ms, a.delay_limit_ms
        ))
    } else {
        None
    };
    step.held = step.why_not.is_none();
}

/// Runs the stress client (its own process) against `addr` with its limit out of reach;
/// returns its report and when its clock started.
fn stress(
    a: &ClusterArgs,
    addr: SocketAddr,
    clients: usize,
    interval_ms: u64,
    duration_s: u64,
    dir: &Path,
) -> io::Result<(Report, Instant)> {
    // (The exit status says whether the client's own delay limit stopped it: out of reach
    // here; the steps are judged from the report.)
    let (report, started, _) = stress_run::run(&StressRun {
        addr,
        clients,
        max_users: a.max_users,
        duration_s,
        ramp_interval_ms: interval_ms,
        delay_limit_ms: OUT_OF_REACH_MS,
        client_threads: a.client_threads,
        dir,
    })?;
    Ok((report, started))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ClusterArgs,
    }

    fn step(clients: usize, fewest: usize, p99: f64, hold: f64) -> Step {
        Step {
            clients,
            fewest,
            p99_ms: p99,
            hold_s: hold,
            ..Step::default()
        }
    }

    #[test]
    fn a_step_is_held_only_with_every_client_in_and_p99_under_the_limit() {
        let a = T::parse_from(["t", "--hold-s", "10"]).a;
        let mut s = step(1000, 995, 99.0, 10.0);
        judge(&mut s, &a, None);
        assert!(s.held, "{:?}", s.why_not);
        let mut s = step(1000, 989, 20.0, 10.0);
        judge(&mut s, &a, None);
        assert!(!s.held);
        let mut s = step(1000, 1000, 100.0, 10.0);
        judge(&mut s, &a, None);
        assert!(!s.held, "p99 at the limit is not under it");
        let mut s = step(1000, 1000, 5.0, 8.0);
        judge(&mut s, &a, None);
        assert!(!s.held, "a hold cut short");
        let mut s = step(1000, 1000, 5.0, 10.0);
        judge(&mut s, &a, Some("interrupted"));
        assert!(!s.held);
    }
}
