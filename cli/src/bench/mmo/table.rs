//! The tables and the `--json` file of `cport bench mmo`: medians over the rounds, ranges,
//! ratios against tokio (else the first build).

use std::io;
use std::path::Path;

use cport_bench::stats::{median, range};
use serde_json::{json, Value};

use super::args::{Build, MmoArgs};
use super::runs::RunResult;

/// What one build's runs measured over the rounds, and the runs that failed.
#[derive(Default)]
pub(crate) struct BuildRuns {
    pub(crate) ramp: Vec<RunResult>,
    pub(crate) fixed: Vec<RunResult>,
    pub(crate) failures: Vec<String>,
}

fn summary(runs: &[RunResult]) -> Value {
    let m = |g: fn(&RunResult) -> f64| median(&runs.iter().map(g).collect::<Vec<_>>());
    json!({
        "max_clients_under_limit": m(|r| r.max_clients_under_limit),
        "peak_clients": m(|r| r.peak_clients),
        "clients_shed": m(|r| r.clients_shed),
        "server_cpu_pct": m(|r| r.server_cpu_pct),
        "rss_mb": m(|r| r.rss_mb),
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
        "rss_mb": r.rss_mb,
        "delay_p50_ms": r.delay_p50_ms,
        "delay_p99_ms": r.delay_p99_ms,
        "tracked_max_ms": r.tracked_max_ms,
        "cs_per_s": r.cs_per_s,
        "min_clients_held": r.min_clients,
        "errors": r.errors,
        "client_cpu_pct": r.client_cpu_pct,
    })
}

/// The median of one figure over runs.
fn med(v: &[RunResult], g: fn(&RunResult) -> f64) -> f64 {
    median(&v.iter().map(g).collect::<Vec<_>>())
}

/// The ramp runs' table: medians over rounds, ratios against the build at `ref_idx`.
pub(crate) fn print_ramp_table(
    a: &MmoArgs,
    builds: &[Build],
    tallies: &[BuildRuns],
    ref_idx: usize,
) {
    let ref_name = &builds[ref_idx].name;
    let ref_max = med(&tallies[ref_idx].ramp, |r| r.max_clients_under_limit).max(1e-9);
    println!(
        "ramp ({} s, {} ms between adds; medians over rounds)",
        a.duration_s, a.ramp_interval_ms
    );
    println!(
        "{:<14} {:>10} {:>15} {:>7} {:>6} {:>8} {:>8} {:>11} {:>7} {:>9} {:>7} {:>7}",
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
        "RSS MB",
        "ratio"
    );
    for (b, t) in builds.iter().zip(tallies) {
        if t.ramp.is_empty() {
            println!("{:<14} (no run finished)", b.name);
            continue;
        }
        let maxes: Vec<f64> = t.ramp.iter().map(|r| r.max_clients_under_limit).collect();
        let (lo, hi) = range(&maxes);
        let m = median(&maxes);
        println!(
            "{:<14} {:>10.0} {:>7.0}–{:<7.0} {:>7.0} {:>6.0} {:>8.0} {:>8.0} {:>11.0} {:>7.1} {:>9.0} {:>7.0} {:>7.2}",
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
            med(&t.ramp, |r| r.rss_mb),
            m / ref_max
        );
    }
    println!("(ratio: median max clients under the limit over {ref_name}'s; p50/p99: the delay over the whole run; CPU %, cs/s: the server process over the run; RSS: the server process at the run's end)");
}

/// The fixed-load runs' table (`n` clients): medians over rounds, ratios against the build
/// at `ref_idx`.
pub(crate) fn print_fixed_table(
    a: &MmoArgs,
    n: usize,
    builds: &[Build],
    tallies: &[BuildRuns],
    ref_idx: usize,
) {
    let ref_name = &builds[ref_idx].name;
    let ref_cpu = med(&tallies[ref_idx].fixed, |r| r.server_cpu_pct).max(1e-9);
    println!();
    println!(
        "fixed load ({n} clients, {} NPCs, the last {} s held; medians over rounds)",
        a.npcs, a.hold_s
    );
    println!(
        "{:<14} {:>7} {:>15} {:>9} {:>8} {:>8} {:>11} {:>9} {:>7} {:>7}",
        "build",
        "CPU %",
        "min–max",
        "held ≥",
        "p50 ms",
        "p99 ms",
        "tracked max",
        "cs/s",
        "RSS MB",
        "CPU ×"
    );
    for (b, t) in builds.iter().zip(tallies) {
        if t.fixed.is_empty() {
            println!("{:<14} (no run finished)", b.name);
            continue;
        }
        let cpus: Vec<f64> = t.fixed.iter().map(|r| r.server_cpu_pct).collect();
        let (lo, hi) = range(&cpus);
        let m = median(&cpus);
        println!(
            "{:<14} {:>7.1} {:>7.1}–{:<7.1} {:>9.0} {:>8.0} {:>8.0} {:>11.0} {:>9.0} {:>7.0} {:>7.2}",
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
            med(&t.fixed, |r| r.rss_mb),
            m / ref_cpu
        );
    }
    println!("(CPU ×: median server CPU over {ref_name}'s; held ≥: the fewest clients in game in any second of any hold; p50/p99: medians of the per-second percentiles over the hold)");
}

/// The `--json` file: an object keyed by build name (its medians, every round's figures, its
/// failures, the settings, the program).
pub(crate) fn write_json(
    path: &Path,
    a: &MmoArgs,
    builds: &[Build],
    tallies: &[BuildRuns],
) -> io::Result<()> {
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
    for (b, t) in builds.iter().zip(tallies) {
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
    std::fs::write(path, text)
}
