//! `cport soak`: a bounded soak of `cport echo` and `cport mmo` at once, each its own process,
//! under every kind of load a server meets: verified echo traffic (every byte checked),
//! connect/disconnect churn, clients that never read, hostile senders, resets mid-packet, and
//! players moving among sleeping NPCs (the game's timers). Every second it samples each
//! server's RSS and open descriptors (`/proc`) and its sessions and queued bytes (the servers'
//! `--stats-file`; all samples are kept in `samples.csv` in `--dir`); at the end, with every
//! client gone, it checks that the sessions are back to 0 and the descriptors to where they
//! started, stops the servers with SIGTERM, and prints a table and a verdict (non-zero exit on
//! failure).
//!
//! The load runs on one thread (a current-thread tokio runtime): the servers get the cores.
//!
//! By job: `options` (the flags and the limits), `servers` (the two server processes and what
//! is read of them), `sampler` (once a second), `load` (the schedule of every kind of client)
//! with `echo_load` and `game_load` (the clients themselves) and `counts` (what they saw, and
//! what they share), `report` (the table and the verdict). This file runs them in order.

mod counts;
mod echo_load;
mod game_load;
mod load;
mod options;
mod report;
mod sampler;
mod servers;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use counts::ClientCounts;
use report::Report;
use sampler::{write_samples, Sampler};
use servers::{fd_count, read_stats, tail_of, wait_stats, Servers, Srv};

pub use options::Args;

/// Runs the soak: starts the servers, runs the load, samples, judges; an error when it fails.
pub fn run(args: Args) -> io::Result<()> {
    let secs = args.seconds.unwrap_or(args.minutes * 60.0);
    if !(secs.is_finite() && secs > 0.0 && secs <= 24.0 * 3600.0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the run must last more than 0 s and at most 24 h",
        ));
    }
    let duration = Duration::from_secs_f64(secs);
    crate::util::raise_fd_limit();
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("cport-soak-{}", std::process::id())),
    };
    fs::create_dir_all(&dir)?;
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let backend: Vec<String> = args
        .backend
        .map(|b| vec!["--backend".into(), b.to_string()])
        .unwrap_or_default();
    let threads = args.threads.to_string();
    let mut echo_args: Vec<String> = vec![
        "--addr".into(),
        "127.0.0.1:0".into(),
        "--threads".into(),
        threads.clone(),
        "--max-send-queue".into(),
        args.echo_send_queue.to_string(),
    ];
    echo_args.extend(backend.iter().cloned());
    let mut mmo_args: Vec<String> = vec![
        "--addr".into(),
        "127.0.0.1:0".into(),
        "--threads".into(),
        threads,
        "--db".into(),
        "none".into(),
        "--npcs".into(),
        args.npcs.to_string(),
        "--world-size".into(),
        args.world_size.to_string(),
    ];
    mmo_args.extend(backend.iter().cloned());
    let mut servers = Servers(Vec::new());
    servers.0.push(Srv::spawn(&bin, "echo", &echo_args, &dir)?);
    servers.0.push(Srv::spawn(&bin, "mmo", &mmo_args, &dir)?);
    eprintln!(
        "soak: {:.0} s against cport echo (pid {}, {}, {}) and cport mmo (pid {}, {}, {}); output in {}",
        secs,
        servers.0[0].pid,
        servers.0[0].addr,
        servers.0[0].banner,
        servers.0[1].pid,
        servers.0[1].addr,
        servers.0[1].banner,
        dir.display()
    );
    // The servers' first stats lines, and where their descriptors stand before any client.
    let idle_start: Vec<u64> = servers
        .0
        .iter()
        .map(|s| {
            wait_stats(&s.stats_path, Duration::from_secs(10), |_| true);
            fd_count(s.pid)
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = Sampler::start(&servers, stop.clone());
    let addrs = (servers.0[0].addr, servers.0[1].addr);
    let tally = Rc::new(ClientCounts::default());
    let start = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(
        &rt,
        load::load(&args, addrs, duration, tally.clone(), stop.clone()),
    );
    drop(local);
    drop(rt);
    let load_time = start.elapsed();

    // Every client has closed: the sessions must drain to 0 and the fds to where they were.
    let mut leaked = Vec::new();
    let mut idle_end = Vec::new();
    for s in &servers.0 {
        let kv = wait_stats(&s.stats_path, Duration::from_secs(15), |kv| {
            kv.get("open") == Some(&0) && kv.get("players").is_none_or(|p| *p == 0)
        });
        leaked.push((
            kv.get("open").copied().unwrap_or(u64::MAX),
            kv.get("players").copied(),
        ));
        idle_end.push(fd_count(s.pid));
    }
    stop.store(true, Relaxed);
    let samples = sampler.finish();
    write_samples(&dir.join("samples.csv"), &servers, &samples)?;
    let last_stats: Vec<HashMap<String, u64>> = servers
        .0
        .iter()
        .map(|s| read_stats(&s.stats_path).unwrap_or_default())
        .collect();
    let exits = servers.stop();
    let report = Report {
        duration: load_time,
        tally: &tally,
        samples: &samples,
        idle_start: &idle_start,
        idle_end: &idle_end,
        leaked: &leaked,
        last_stats: &last_stats,
        exits: &exits,
        max_rss_growth_pct: args.max_rss_growth_pct,
        max_heap_growth_pct: args.max_heap_growth_pct,
    };
    let (table, failures) = report.render();
    println!("{table}");
    if failures.is_empty() {
        println!("verdict: PASS");
        Ok(())
    } else {
        for (name, path) in [("echo", "echo.stderr"), ("mmo", "mmo.stderr")] {
            let tail = tail_of(&dir.join(path), 20);
            if !tail.is_empty() {
                println!("--- last lines of cport {name}'s stderr ---\n{tail}");
            }
        }
        println!("verdict: FAIL ({})", failures.join("; "));
        Err(io::Error::other("soak failed"))
    }
}
