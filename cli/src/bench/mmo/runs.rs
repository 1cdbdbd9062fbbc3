//! One run of one build: the server process and the stress client process, the server's CPU
//! and context switches sampled beside them, and what the run measured (read from the stress
//! client's typed report).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cport_bench::proc::{self, ServerProc};
use cport_bench::stats::median;
use cport_mmo_client::{Report, Second};

use super::args::{Build, MmoArgs};
use crate::bench::stress_run::{self, StressRun};

/// The server's samples: (when, CPU time so far, context switches so far).
type Samples = Vec<(Instant, Duration, u64)>;

/// The server's CPU time and context switches, sampled every 100 ms on a thread.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Samples>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut v = Vec::new();
            // Bounded: the run's own length, and at most a day of samples.
            while !s.load(Relaxed) && v.len() < 864_000 {
                let t = Instant::now();
                // The whole process tree: a cluster build is several processes.
                let Ok((cpu, cs)) = proc::tree_usage(pid) else {
                    break;
                };
                v.push((t, cpu, cs));
                std::thread::sleep(Duration::from_millis(100));
            }
            v
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Samples {
        self.stop.store(true, Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// (CPU seconds, context switches) at `t`, interpolated between the samples around it.
fn at(samples: &Samples, t: Instant) -> Option<(f64, f64)> {
    let i = samples.iter().position(|s| s.0 >= t)?;
    if i == 0 {
        return Some((samples[0].1.as_secs_f64(), samples[0].2 as f64));
    }
    let (a, b) = (&samples[i - 1], &samples[i]);
    let span = b.0.duration_since(a.0).as_secs_f64().max(1e-9);
    let f = t.duration_since(a.0).as_secs_f64() / span;
    let lerp = |x: f64, y: f64| x + (y - x) * f;
    Some((
        lerp(a.1.as_secs_f64(), b.1.as_secs_f64()),
        lerp(a.2 as f64, b.2 as f64),
    ))
}

/// What one run of one build measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunResult {
    pub(crate) max_clients_under_limit: f64,
    pub(crate) peak_clients: f64,
    pub(crate) clients_shed: f64,
    pub(crate) server_cpu_pct: f64,
    pub(crate) delay_p50_ms: f64,
    pub(crate) delay_p99_ms: f64,
    pub(crate) tracked_max_ms: f64,
    pub(crate) cs_per_s: f64,
    /// Fixed load: the fewest clients in game during the hold.
    pub(crate) min_clients: f64,
    pub(crate) errors: f64,
    pub(crate) client_cpu_pct: f64,
    /// The server's resident memory at the end of the run, MB (0 where not measured).
    pub(crate) rss_mb: f64,
}

/// Runs the stress client (its own process) against `addr`; returns its report and when its
/// clock started.
fn stress(
    a: &MmoArgs,
    addr: std::net::SocketAddr,
    clients: usize,
    duration_s: u64,
    delay_limit_ms: u64,
    dir: &Path,
) -> io::Result<(Report, Instant)> {
    let (report, started, status) = stress_run::run(&StressRun {
        addr,
        clients,
        max_users: a.max_users,
        duration_s,
        ramp_interval_ms: a.ramp_interval_ms,
        delay_limit_ms,
        client_threads: a.client_threads,
        dir,
    })?;
    if !status.success() {
        // As JSON has it: the reason in quotes, or null.
        let why = serde_json::to_string(&report.stopped_early).map_err(io::Error::other)?;
        return Err(io::Error::other(format!(
            "the stress client exited with {status}: {why}"
        )));
    }
    Ok((report, started))
}

/// The server's CPU seconds and context switches from `t0` to `t1`: interpolated between the
/// samples around each, the last sample when `t1` is past them.
fn server_use(samples: &Samples, t0: Instant, t1: Instant) -> (f64, f64) {
    let (c0, s0) = at(samples, t0).unwrap_or_default();
    let (c1, s1) = at(samples, t1)
        .or_else(|| samples.last().map(|l| (l.1.as_secs_f64(), l.2 as f64)))
        .unwrap_or_default();
    (c1 - c0, s1 - s0)
}

/// Starts `b`, samples it while `measure` runs the stress client against it, stops it; the
/// stress client's report, when its clock started, and the server's samples.
fn with_server(
    b: &Build,
    measure: impl FnOnce(std::net::SocketAddr) -> io::Result<(Report, Instant)>,
) -> io::Result<(Report, Instant, Samples, f64)> {
    let server = ServerProc::spawn(&b.program, &b.args, &[("RUST_LOG".into(), "warn".into())])?;
    let sampler = Sampler::start(server.pid());
    let r = measure(server.addr);
    let samples = sampler.finish();
    // The whole tree's would count a cluster's NATS too: the server process itself.
    let rss_mb = cport_bench::proc::rss(server.pid()).map_or(0.0, |b| b as f64 / 1e6);
    server.stop()?;
    let (report, t0) = r?;
    Ok((report, t0, samples, rss_mb))
}

/// One ramp run of `b`.
pub(crate) fn ramp_run(a: &MmoArgs, b: &Build, dir: &Path) -> io::Result<RunResult> {
    let clients = a.max_clients.min(a.max_users);
    let (v, t0, samples, rss_mb) = with_server(b, |addr| {
        stress(a, addr, clients, a.duration_s, a.delay_limit_ms, dir)
    })?;
    let elapsed = v.elapsed_s;
    let t1 = t0 + Duration::from_secs_f64(elapsed);
    let (cpu, cs) = server_use(&samples, t0, t1);
    let tracked_max = v
        .series
        .iter()
        .map(|x| x.tracked_max_ms as f64)
        .fold(0.0, f64::max);
    Ok(RunResult {
        server_cpu_pct: 100.0 * cpu / elapsed.max(1e-3),
        delay_p50_ms: v.p50_ms as f64,
        delay_p99_ms: v.p99_ms as f64,
        tracked_max_ms: tracked_max,
        cs_per_s: cs / elapsed.max(1e-3),
        min_clients: 0.0,
        rss_mb,
        ..RunResult::of_report(&v)
    })
}

/// The stress client's delay limit in a fixed-load run (an hour: never reached).
const FIXED_LIMIT_MS: u64 = 3_600_000;

/// One fixed-load run of `b`: climb to `n` clients, hold; the last `hold_s` are measured.
pub(crate) fn fixed_run(a: &MmoArgs, b: &Build, n: usize, dir: &Path) -> io::Result<RunResult> {
    // The climb at the ramp's pace, with room for logins and a slower pace near the limit.
    let climb_s = (n as u64 * a.ramp_interval_ms * 5 / 4).div_ceil(1000) + 2;
    // A fixed load: the ramp's delay limit out of reach, so that it neither slows nor sheds
    // (the delay is measured all the same).
    let (v, t0, samples, rss_mb) = with_server(b, |addr| {
        stress(a, addr, n, climb_s + a.hold_s, FIXED_LIMIT_MS, dir)
    })?;
    let end_t = v.series.last().map_or(0.0, |s| s.t);
    let from_t = end_t - a.hold_s as f64;
    // The seconds of the hold (each entry is the second that ends at `t`).
    let hold: Vec<&Second> = v.series.iter().filter(|s| s.t > from_t + 0.5).collect();
    let ta = t0 + Duration::from_secs_f64(from_t.max(0.0));
    let tb = t0 + Duration::from_secs_f64(end_t);
    let (cpu, cs) = server_use(&samples, ta, tb);
    let secs = (end_t - from_t).max(1e-3);
    let pick = |k: fn(&Second) -> f64| hold.iter().map(|s| k(s)).collect::<Vec<f64>>();
    let min_clients = pick(|s| s.clients as f64)
        .into_iter()
        .fold(f64::MAX, f64::min);
    Ok(RunResult {
        server_cpu_pct: 100.0 * cpu / secs,
        delay_p50_ms: median(&pick(|s| s.p50_ms as f64)),
        delay_p99_ms: median(&pick(|s| s.p99_ms as f64)),
        tracked_max_ms: pick(|s| s.tracked_max_ms as f64)
            .into_iter()
            .fold(0.0, f64::max),
        cs_per_s: cs / secs,
        min_clients: if hold.is_empty() { 0.0 } else { min_clients },
        rss_mb,
        ..RunResult::of_report(&v)
    })
}

impl RunResult {
    /// The figures read straight from the stress client's report (the server's are 0).
    fn of_report(v: &Report) -> RunResult {
        RunResult {
            max_clients_under_limit: v.max_clients_under_limit as f64,
            peak_clients: v.peak_clients as f64,
            clients_shed: v.clients_shed as f64,
            errors: v.errors.total() as f64,
            client_cpu_pct: v.client_cpu_pct,
            ..RunResult::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_samples_between_their_times() {
        let t0 = Instant::now();
        let s = vec![
            (t0, Duration::from_secs(1), 100),
            (t0 + Duration::from_secs(1), Duration::from_secs(2), 300),
        ];
        let (cpu, cs) = at(&s, t0 + Duration::from_millis(500)).unwrap();
        assert!((cpu - 1.5).abs() < 1e-6 && (cs - 200.0).abs() < 1e-6);
        assert_eq!(at(&s, t0 + Duration::from_secs(2)), None);
    }
}
