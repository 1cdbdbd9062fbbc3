//! `cport bench mmo`: the game server builds — cport on io_uring, cport on epoll (`cport
//! mmo`), and the same game on tokio (`mmo-tokio`) — each as its own server process under the
//! same stress client, itself its own process (`cport stress --addr`), alternated build by
//! build within each round.
//!
//! Two measures, each run per build per round:
//! - **ramp**: the course's ramp for `--duration-s` (`--ramp-interval-ms` between adds): the
//!   most clients held with the tracked delay under the limit, the delay percentiles over the
//!   run, and the server's CPU and context switches over the run;
//! - **fixed load** (`--fixed-clients N --hold-s S`): clients added at the ramp's pace up to
//!   N whatever the delay (the stress client's limit set out of reach: it never slows or
//!   sheds), then held; the last S seconds of the run are the hold: the server's CPU % and context
//!   switches over exactly that window (sampled from /proc every 100 ms, on the stress
//!   client's clock), the delay percentiles of its seconds, the highest tracked delay.
//!
//! The table shows medians over the rounds and ratios against tokio.

use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use cport_bench::proc::{self, ServerProc};
use cport_bench::stats::{median, range};
use serde_json::{json, Value};

/// Options of `cport bench mmo`.
#[derive(clap::Args, Debug)]
pub struct MmoArgs {
    /// Builds, comma-separated: cport-uring, cport-epoll (`cport mmo`; `cport-NAME@PATH` runs
    /// the `cport` binary at PATH, a build of another commit), tokio (`mmo-tokio`:
    /// `cargo build --release -p cport-bench-peers`).
    #[arg(long, default_value = "cport-uring,cport-epoll,tokio")]
    pub builds: String,
    /// Rounds; each runs every build once (per measure), in turn.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Length of each ramp run.
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
    /// Time between added clients (the same for the ramp and the fixed load's climb).
    #[arg(long, default_value_t = 5)]
    pub ramp_interval_ms: u64,
    /// The delay limit of the ramp.
    #[arg(long, default_value_t = 100)]
    pub delay_limit_ms: u64,
    /// Most clients of the ramp (capped at --max-users).
    #[arg(long, default_value_t = 20_000)]
    pub max_clients: usize,
    /// Fixed load: clients to climb to and hold (no fixed-load runs without it).
    #[arg(long)]
    pub fixed_clients: Option<usize>,
    /// Fixed load: seconds held at --fixed-clients (the measured window).
    #[arg(long, default_value_t = 60)]
    pub hold_s: u64,
    /// Only the fixed load (no ramp runs).
    #[arg(long, requires = "fixed_clients")]
    pub no_ramp: bool,
    /// Server worker threads (every build).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Stress client worker threads.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// The servers' NPCs.
    #[arg(long, default_value_t = cport_mmo_proto::MAX_NPC)]
    pub npcs: usize,
    /// The servers' MAX_USER.
    #[arg(long, default_value_t = cport_mmo_proto::MAX_USER)]
    pub max_users: usize,
    /// The servers' VIEW_RANGE.
    #[arg(long, default_value_t = cport_mmo_proto::VIEW_RANGE)]
    pub view_range: u16,
    /// Also write the medians and every round's figures as JSON here (an object keyed by
    /// build name).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

struct Build {
    name: String,
    program: PathBuf,
    args: Vec<String>,
}

fn build(full: &str, a: &MmoArgs) -> io::Result<Build> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let mut game = vec![
        "--addr".to_string(),
        "127.0.0.1:0".into(),
        "--threads".into(),
        a.threads.to_string(),
        "--npcs".into(),
        a.npcs.to_string(),
        "--max-users".into(),
        a.max_users.to_string(),
        "--view-range".into(),
        a.view_range.to_string(),
        "--header".into(),
        "u8".into(),
        "--db".into(),
        "none".into(),
    ];
    let (name, path) = match full.split_once('@') {
        Some((n, p)) => (n, Some(PathBuf::from(p))),
        None => (full, None),
    };
    let (program, args) = match name {
        "cport-uring" | "cport-epoll" => {
            let program = path.unwrap_or(exe);
            if !program.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{full}: no binary at {}", program.display()),
                ));
            }
            let mut args = vec!["mmo".to_string()];
            args.append(&mut game);
            args.extend(["--backend".to_string(), name[6..].to_string()]);
            (program, args)
        }
        "tokio" if path.is_none() => {
            let p = dir.join("mmo-tokio");
            if !p.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{} not built: run `cargo build --release -p cport-bench-peers` first",
                        p.display()
                    ),
                ));
            }
            (p, game)
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown build {other:?} (known: cport-uring, cport-epoll, tokio)"),
            ))
        }
    };
    Ok(Build {
        name: full.to_string(),
        program,
        args,
    })
}

/// The server's CPU time and context switches, sampled every 100 ms on a thread.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, Duration, u64)>>,
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
                let (Ok(cpu), Ok(cs)) = (proc::cpu_time(pid), proc::ctx_switches(pid)) else {
                    break;
                };
                v.push((t, cpu, cs));
                std::thread::sleep(Duration::from_millis(100));
            }
            v
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Vec<(Instant, Duration, u64)> {
        self.stop.store(true, Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// (CPU seconds, context switches) at `t`, interpolated between the samples around it.
fn at(samples: &[(Instant, Duration, u64)], t: Instant) -> Option<(f64, f64)> {
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
struct RunResult {
    max_clients_under_limit: f64,
    peak_clients: f64,
    clients_shed: f64,
    server_cpu_pct: f64,
    delay_p50_ms: f64,
    delay_p99_ms: f64,
    tracked_max_ms: f64,
    cs_per_s: f64,
    /// Fixed load: the fewest clients in game during the hold.
    min_clients: f64,
    errors: f64,
    client_cpu_pct: f64,
}

/// Runs the stress client (its own process) against `addr`; returns its JSON report and
/// when its clock started.
fn stress(
    a: &MmoArgs,
    addr: std::net::SocketAddr,
    clients: usize,
    duration_s: u64,
    delay_limit_ms: u64,
    dir: &Path,
) -> io::Result<(Value, Instant)> {
    let exe = std::env::current_exe()?;
    let json_path = dir.join("stress.json");
    let _ = std::fs::remove_file(&json_path);
    let mut child = Command::new(&exe)
        .args([
            "stress",
            "--addr",
            &addr.to_string(),
            "--max-clients",
            &clients.to_string(),
            "--max-users",
            &a.max_users.to_string(),
            "--duration-s",
            &duration_s.to_string(),
            "--ramp-interval-ms",
            &a.ramp_interval_ms.to_string(),
            "--delay-limit-ms",
            &delay_limit_ms.to_string(),
            "--client-threads",
            &a.client_threads.to_string(),
            "--header",
            "u8",
            "--json",
        ])
        .arg(&json_path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // `stress: ADDR, up to N clients, …` comes right before its clock starts.
            if !sent && line.starts_with("stress: ") && line.contains(", up to ") {
                let _ = tx.send(Instant::now());
                sent = true;
            } else if line.contains("WARN") || line.contains("ERROR") || line.contains("error") {
                eprintln!("    (stress) {line}");
            }
        }
    });
    let started = rx.recv_timeout(Duration::from_secs(30)).ok();
    let status = child.wait()?;
    let _ = reader.join();
    let Some(started) = started else {
        return Err(io::Error::other("the stress client never started"));
    };
    let text = std::fs::read_to_string(&json_path).map_err(|e| {
        io::Error::other(format!(
            "the stress client ({status}) wrote no report {}: {e}",
            json_path.display()
        ))
    })?;
    let v: Value = serde_json::from_str(&text).map_err(io::Error::other)?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "the stress client exited with {status}: {}",
            v["stopped_early"]
        )));
    }
    Ok((v, started))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// One ramp run of `b`.
fn ramp_run(a: &MmoArgs, b: &Build, dir: &Path) -> io::Result<RunResult> {
    let server = ServerProc::spawn(&b.program, &b.args, &[("RUST_LOG".into(), "warn".into())])?;
    let sampler = Sampler::start(server.pid());
    let clients = a.max_clients.min(a.max_users);
    let r = stress(a, server.addr, clients, a.duration_s, a.delay_limit_ms, dir);
    let samples = sampler.finish();
    server.stop()?;
    let (v, t0) = r?;
    let elapsed = f(&v["elapsed_s"]);
    let t1 = t0 + Duration::from_secs_f64(elapsed);
    let (c0, s0) = at(&samples, t0).unwrap_or_default();
    let (c1, s1) = at(&samples, t1)
        .or_else(|| samples.last().map(|l| (l.1.as_secs_f64(), l.2 as f64)))
        .unwrap_or_default();
    let tracked_max = v["series"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|x| f(&x["tracked_max_ms"]))
                .fold(0.0, f64::max)
        })
        .unwrap_or(0.0);
    Ok(RunResult {
        max_clients_under_limit: f(&v["max_clients_under_limit"]),
        peak_clients: f(&v["peak_clients"]),
        clients_shed: f(&v["clients_shed"]),
        server_cpu_pct: 100.0 * (c1 - c0) / elapsed.max(1e-3),
        delay_p50_ms: f(&v["p50_ms"]),
        delay_p99_ms: f(&v["p99_ms"]),
        tracked_max_ms: tracked_max,
        cs_per_s: (s1 - s0) / elapsed.max(1e-3),
        min_clients: 0.0,
        errors: v["errors"]
            .as_object()
            .map_or(0.0, |e| e.values().map(f).sum()),
        client_cpu_pct: f(&v["client_cpu_pct"]),
    })
}

/// The stress client's delay limit in a fixed-load run (an hour: never reached).
const FIXED_LIMIT_MS: u64 = 3_600_000;

/// One fixed-load run of `b`: climb to `n` clients, hold; the last `hold_s` are measured.
fn fixed_run(a: &MmoArgs, b: &Build, n: usize, dir: &Path) -> io::Result<RunResult> {
    // The climb at the ramp's pace, with room for logins and a slower pace near the limit.
    let climb_s = (n as u64 * a.ramp_interval_ms * 5 / 4).div_ceil(1000) + 2;
    let server = ServerProc::spawn(&b.program, &b.args, &[("RUST_LOG".into(), "warn".into())])?;
    let sampler = Sampler::start(server.pid());
    // A fixed load: the ramp's delay limit out of reach, so that it neither slows nor sheds
    // (the delay is measured all the same).
    let r = stress(a, server.addr, n, climb_s + a.hold_s, FIXED_LIMIT_MS, dir);
    let samples = sampler.finish();
    server.stop()?;
    let (v, t0) = r?;
    let series = v["series"].as_array().cloned().unwrap_or_default();
    let end_t = series.last().map_or(0.0, |s| f(&s["t"]));
    let from_t = end_t - a.hold_s as f64;
    // The seconds of the hold (each entry is the second that ends at `t`).
    let hold: Vec<&Value> = series
        .iter()
        .filter(|s| f(&s["t"]) > from_t + 0.5)
        .collect();
    let ta = t0 + Duration::from_secs_f64(from_t.max(0.0));
    let tb = t0 + Duration::from_secs_f64(end_t);
    let (c0, s0) = at(&samples, ta).unwrap_or_default();
    let (c1, s1) = at(&samples, tb)
        .or_else(|| samples.last().map(|l| (l.1.as_secs_f64(), l.2 as f64)))
        .unwrap_or_default();
    let secs = (end_t - from_t).max(1e-3);
    let pick = |k: &str| hold.iter().map(|s| f(&s[k])).collect::<Vec<f64>>();
    let min_clients = pick("clients").into_iter().fold(f64::MAX, f64::min);
    Ok(RunResult {
        max_clients_under_limit: f(&v["max_clients_under_limit"]),
        peak_clients: f(&v["peak_clients"]),
        clients_shed: f(&v["clients_shed"]),
        server_cpu_pct: 100.0 * (c1 - c0) / secs,
        delay_p50_ms: median(&pick("p50_ms")),
        delay_p99_ms: median(&pick("p99_ms")),
        tracked_max_ms: pick("tracked_max_ms").into_iter().fold(0.0, f64::max),
        cs_per_s: (s1 - s0) / secs,
        min_clients: if hold.is_empty() { 0.0 } else { min_clients },
        errors: v["errors"]
            .as_object()
            .map_or(0.0, |e| e.values().map(f).sum()),
        client_cpu_pct: f(&v["client_cpu_pct"]),
    })
}

fn summary(runs: &[RunResult]) -> Value {
    let m = |g: fn(&RunResult) -> f64| median(&runs.iter().map(g).collect::<Vec<_>>());
    json!({
        "max_clients_under_limit": m(|r| r.max_clients_under_limit),
        "peak_clients": m(|r| r.peak_clients),
        "clients_shed": m(|r| r.clients_shed),
        "server_cpu_pct": m(|r| r.server_cpu_pct),
        "delay_p50_ms": m(|r| r.delay_p50_ms),
        "delay_p99_ms": m(|r| r.delay_p99_ms),
        "tracked_max_ms": m(|r| r.tracked_max_ms),
        "cs_per_s": m(|r| r.cs_per_s),
        "min_clients_held": m(|r| r.min_clients),
        "errors": m(|r| r.errors),
        "client_cpu_pct": m(|r| r.client_cpu_pct),
        "rounds": runs.len(),
    })
}

fn round_json(r: &RunResult) -> Value {
    json!({
        "max_clients_under_limit": r.max_clients_under_limit,
        "peak_clients": r.peak_clients,
        "clients_shed": r.clients_shed,
        "server_cpu_pct": r.server_cpu_pct,
        "delay_p50_ms": r.delay_p50_ms,
        "delay_p99_ms": r.delay_p99_ms,
        "tracked_max_ms": r.tracked_max_ms,
        "cs_per_s": r.cs_per_s,
        "min_clients_held": r.min_clients,
        "errors": r.errors,
        "client_cpu_pct": r.client_cpu_pct,
    })
}

#[derive(Default)]
struct Tally {
    ramp: Vec<RunResult>,
    fixed: Vec<RunResult>,
    failures: Vec<String>,
}

pub fn run(a: MmoArgs) -> io::Result<()> {
    crate::util::raise_fd_limit();
    let builds: Vec<Build> = a
        .builds
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| build(s, &a))
        .collect::<io::Result<_>>()?;
    if builds.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no builds"));
    }
    if a.rounds == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "--rounds 0"));
    }
    if let Some(n) = a.fixed_clients {
        if n == 0 || n > a.max_users {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--fixed-clients must be 1..={} (--max-users)", a.max_users),
            ));
        }
    }
    let dir = std::env::temp_dir().join(format!("cport-bench-mmo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "bench mmo: {} NPCs, max users {}, view range {}, server threads {}, client threads {}, ramp interval {} ms, delay limit {} ms, {} rounds{}{}",
        a.npcs,
        a.max_users,
        a.view_range,
        a.threads,
        a.client_threads,
        a.ramp_interval_ms,
        a.delay_limit_ms,
        a.rounds,
        if a.no_ramp {
            String::new()
        } else {
            format!(", ramp runs of {} s", a.duration_s)
        },
        a.fixed_clients.map_or(String::new(), |n| format!(
            ", fixed load {n} clients held {} s",
            a.hold_s
        )),
    );
    let mut tallies: Vec<Tally> = builds.iter().map(|_| Tally::default()).collect();
    for round in 1..=a.rounds {
        if !a.no_ramp {
            for (b, t) in builds.iter().zip(&mut tallies) {
                match ramp_run(&a, b, &dir) {
                    Ok(r) => {
                        println!(
                            "  round {round}: {:<12} ramp   max under limit {:>6.0}  peak {:>6.0}  shed {:>5.0}  delay p50 {:>4.0} ms p99 {:>5.0} ms  tracked max {:>4.0} ms  server CPU {:>5.1}%  {:>7.0} cs/s  client CPU {:>5.1}%{}",
                            b.name, r.max_clients_under_limit, r.peak_clients, r.clients_shed,
                            r.delay_p50_ms, r.delay_p99_ms, r.tracked_max_ms, r.server_cpu_pct,
                            r.cs_per_s, r.client_cpu_pct,
                            if r.errors > 0.0 { format!("  errors {:.0}", r.errors) } else { String::new() }
                        );
                        t.ramp.push(r);
                    }
                    Err(e) => {
                        println!("  round {round}: {:<12} ramp   ! failed: {e}", b.name);
                        t.failures.push(format!("round {round} ramp: {e}"));
                    }
                }
            }
        }
        if let Some(n) = a.fixed_clients {
            for (b, t) in builds.iter().zip(&mut tallies) {
                match fixed_run(&a, b, n, &dir) {
                    Ok(r) => {
                        println!(
                            "  round {round}: {:<12} fixed  {n} clients (fewest held {:>6.0})  delay p50 {:>4.0} ms p99 {:>5.0} ms  tracked max {:>4.0} ms  server CPU {:>5.1}%  {:>7.0} cs/s  client CPU {:>5.1}%{}",
                            b.name, r.min_clients, r.delay_p50_ms, r.delay_p99_ms, r.tracked_max_ms,
                            r.server_cpu_pct, r.cs_per_s, r.client_cpu_pct,
                            if r.errors > 0.0 { format!("  errors {:.0}", r.errors) } else { String::new() }
                        );
                        t.fixed.push(r);
                    }
                    Err(e) => {
                        println!("  round {round}: {:<12} fixed  ! failed: {e}", b.name);
                        t.failures.push(format!("round {round} fixed: {e}"));
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Ratios against tokio when it ran, else against the first build.
    let ref_idx = builds.iter().position(|b| b.name == "tokio").unwrap_or(0);
    let ref_name = builds[ref_idx].name.clone();
    let med =
        |v: &[RunResult], g: fn(&RunResult) -> f64| median(&v.iter().map(g).collect::<Vec<_>>());
    println!();
    if !a.no_ramp {
        let ref_max = med(&tallies[ref_idx].ramp, |r| r.max_clients_under_limit).max(1e-9);
        println!(
            "ramp ({} s, {} ms between adds; medians over rounds)",
            a.duration_s, a.ramp_interval_ms
        );
        println!(
            "{:<14} {:>10} {:>15} {:>7} {:>6} {:>8} {:>8} {:>11} {:>7} {:>9} {:>7}",
            "build",
            "max <limit",
            "min–max",
            "peak",
            "shed",
            "p50 ms",
            "p99 ms",
            "tracked max",
            "CPU %",
            "cs/s",
            "ratio"
        );
        for (b, t) in builds.iter().zip(&tallies) {
            if t.ramp.is_empty() {
                println!("{:<14} (no run finished)", b.name);
                continue;
            }
            let maxes: Vec<f64> = t.ramp.iter().map(|r| r.max_clients_under_limit).collect();
            let (lo, hi) = range(&maxes);
            let m = median(&maxes);
            println!(
                "{:<14} {:>10.0} {:>7.0}–{:<7.0} {:>7.0} {:>6.0} {:>8.0} {:>8.0} {:>11.0} {:>7.1} {:>9.0} {:>7.2}",
                b.name,
                m,
                lo,
                hi,
                med(&t.ramp, |r| r.peak_clients),
                med(&t.ramp, |r| r.clients_shed),
                med(&t.ramp, |r| r.delay_p50_ms),
                med(&t.ramp, |r| r.delay_p99_ms),
                med(&t.ramp, |r| r.tracked_max_ms),
                med(&t.ramp, |r| r.server_cpu_pct),
                med(&t.ramp, |r| r.cs_per_s),
                m / ref_max
            );
        }
        println!("(ratio: median max clients under the limit over {ref_name}'s; p50/p99: the delay over the whole run; CPU %, cs/s: the server process over the run)");
    }
    if let Some(n) = a.fixed_clients {
        let ref_cpu = med(&tallies[ref_idx].fixed, |r| r.server_cpu_pct).max(1e-9);
        println!();
        println!(
            "fixed load ({n} clients, {} NPCs, the last {} s held; medians over rounds)",
            a.npcs, a.hold_s
        );
        println!(
            "{:<14} {:>7} {:>15} {:>9} {:>8} {:>8} {:>11} {:>9} {:>7}",
            "build",
            "CPU %",
            "min–max",
            "held ≥",
            "p50 ms",
            "p99 ms",
            "tracked max",
            "cs/s",
            "CPU ×"
        );
        for (b, t) in builds.iter().zip(&tallies) {
            if t.fixed.is_empty() {
                println!("{:<14} (no run finished)", b.name);
                continue;
            }
            let cpus: Vec<f64> = t.fixed.iter().map(|r| r.server_cpu_pct).collect();
            let (lo, hi) = range(&cpus);
            let m = median(&cpus);
            println!(
                "{:<14} {:>7.1} {:>7.1}–{:<7.1} {:>9.0} {:>8.0} {:>8.0} {:>11.0} {:>9.0} {:>7.2}",
                b.name,
                m,
                lo,
                hi,
                t.fixed
                    .iter()
                    .map(|r| r.min_clients)
                    .fold(f64::MAX, f64::min),
                med(&t.fixed, |r| r.delay_p50_ms),
                med(&t.fixed, |r| r.delay_p99_ms),
                med(&t.fixed, |r| r.tracked_max_ms),
                med(&t.fixed, |r| r.cs_per_s),
                m / ref_cpu
            );
        }
        println!("(CPU ×: median server CPU over {ref_name}'s; held ≥: the fewest clients in game in any second of any hold; p50/p99: medians of the per-second percentiles over the hold)");
    }
    for (b, t) in builds.iter().zip(&tallies) {
        for f in &t.failures {
            println!("  ! {}: {f}", b.name);
        }
    }
    if let Some(path) = &a.json {
        let mut out = serde_json::Map::new();
        let settings = json!({
            "rounds": a.rounds,
            "duration_s": a.duration_s,
            "ramp_interval_ms": a.ramp_interval_ms,
            "delay_limit_ms": a.delay_limit_ms,
            "max_clients": a.max_clients,
            "fixed_clients": a.fixed_clients,
            "hold_s": a.hold_s,
            "threads": a.threads,
            "client_threads": a.client_threads,
            "npcs": a.npcs,
            "max_users": a.max_users,
            "view_range": a.view_range,
        });
        for (b, t) in builds.iter().zip(&tallies) {
            let mut o = if a.no_ramp || t.ramp.is_empty() {
                serde_json::Map::new()
            } else {
                match summary(&t.ramp) {
                    Value::Object(m) => m,
                    _ => unreachable!("an object"),
                }
            };
            o.insert(
                "ramp_rounds".into(),
                Value::from(t.ramp.iter().map(round_json).collect::<Vec<_>>()),
            );
            if a.fixed_clients.is_some() {
                o.insert("fixed".into(), summary(&t.fixed));
                o.insert(
                    "fixed_rounds".into(),
                    Value::from(t.fixed.iter().map(round_json).collect::<Vec<_>>()),
                );
            }
            o.insert("failures".into(), Value::from(t.failures.clone()));
            o.insert("settings".into(), settings.clone());
            o.insert(
                "program".into(),
                Value::from(b.program.display().to_string()),
            );
            out.insert(b.name.clone(), Value::Object(o));
        }
        let text = serde_json::to_string_pretty(&Value::Object(out)).map_err(io::Error::other)?;
        std::fs::write(path, text)?;
        println!("(wrote {})", path.display());
    }
    Ok(())
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

    #[test]
    fn unknown_builds_are_refused() {
        let a = MmoArgs {
            builds: "x".into(),
            rounds: 1,
            duration_s: 1,
            ramp_interval_ms: 5,
            delay_limit_ms: 100,
            max_clients: 1,
            fixed_clients: None,
            hold_s: 1,
            no_ramp: false,
            threads: 1,
            client_threads: 1,
            npcs: 0,
            max_users: 1,
            view_range: 7,
            json: None,
        };
        assert!(build("nginx", &a).is_err());
        assert!(build("cport-uring@/no/such/binary", &a).is_err());
    }
}
