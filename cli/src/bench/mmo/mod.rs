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
//!
//! By job: `args` (the options and the builds), `runs` (one run of one build: the two
//! processes, the server's samples, the stress client's typed report), `table` (the tables
//! and `--json`). This file runs them in order.

mod args;
mod runs;
mod table;

use std::io;
use std::path::Path;

use args::Build;
use runs::{fixed_run, ramp_run};
use table::BuildRuns;

pub use args::MmoArgs;

/// Runs `cport bench mmo`: every build, every round, then the tables (and the JSON file).
pub fn run(a: MmoArgs) -> io::Result<()> {
    crate::util::raise_fd_limit();
    let builds = builds_of(&a)?;
    let dir = std::env::temp_dir().join(format!("cport-bench-mmo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    print_settings(&a);
    let tallies = run_rounds(&a, &builds, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    // Ratios against tokio when it ran, else against the first build.
    let ref_idx = builds.iter().position(|b| b.name == "tokio").unwrap_or(0);
    println!();
    if !a.no_ramp {
        table::print_ramp_table(&a, &builds, &tallies, ref_idx);
    }
    if let Some(n) = a.fixed_clients {
        table::print_fixed_table(&a, n, &builds, &tallies, ref_idx);
    }
    for (b, t) in builds.iter().zip(&tallies) {
        for f in &t.failures {
            println!("  ! {}: {f}", b.name);
        }
    }
    if let Some(path) = &a.json {
        table::write_json(path, &a, &builds, &tallies)?;
        println!("(wrote {})", path.display());
    }
    Ok(())
}

/// The builds `--builds` names, after checking the options.
fn builds_of(a: &MmoArgs) -> io::Result<Vec<Build>> {
    let builds: Vec<Build> = a
        .builds
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| args::build(s, a))
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
    Ok(builds)
}

/// The first line: what is run.
fn print_settings(a: &MmoArgs) {
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
}

/// Every round: each build's ramp run, then each build's fixed-load run, each line printed as
/// it ends.
fn run_rounds(a: &MmoArgs, builds: &[Build], dir: &Path) -> Vec<BuildRuns> {
    let mut tallies: Vec<BuildRuns> = builds.iter().map(|_| BuildRuns::default()).collect();
    for round in 1..=a.rounds {
        if !a.no_ramp {
            for (b, t) in builds.iter().zip(&mut tallies) {
                match ramp_run(a, b, dir) {
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
                match fixed_run(a, b, n, dir) {
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
    tallies
}
