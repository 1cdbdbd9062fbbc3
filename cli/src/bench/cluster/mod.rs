//! `cport bench cluster`: the scaling figure. For each layout (`--zones 1,4`) a cluster is
//! started with [`Supervisor`] (`nats-server`, one gateway, N zone processes, 200,000 NPCs
//! over the board), and every zone process is put in a cgroup v1 `cpu` group of its own with
//! the same CFS quota (`--zone-cpu 0.25`: a quarter of a CPU each); the gateway, NATS and the
//! load client stay outside the quota. Then the course's stress client (`cport stress`, its
//! own process; its dummies teleport to random places, so every zone gets players) is run in
//! steps of a fixed number of clients, and the most clients *held* is searched for:
//!
//! - a step climbs to N clients (`--climb-per-s`), settles (`--settle-s`) and holds
//!   (`--hold-s`); it is held when every client stays in game through the hold and the
//!   delay's 99th percentile is under `--delay-limit-ms` in every second of it;
//! - N doubles from `--start` while steps are held, then the gap between the most held and
//!   the fewest failed is halved until it is within `--resolution` of the most held (at most
//!   `--max-steps` steps, each bounded in time by its own length). A step that fails is run
//!   again (`--retries`) before it counts as failed: the machine is shared.
//!
//! Each step is a new stress client: the clients of the step before have logged out (a pause
//! of `--gap-s` between steps lets the cluster save and drop them).
//!
//! Printed per layout: clients held, the delay at that level, each zone's CPU against its
//! quota and its throttled periods (from the group's `cpu.stat`: the quota was in force), the
//! gateway's and NATS's CPU, and from the zones' and gateway's figures at shutdown the
//! hand-off p99 and the zone-to-zone (border) bus messages per player per second. The ratio
//! `scaling` is the most zones' clients held over the fewest zones'. By job: `step` (one step
//! and the sampler), `report` (the figures at shutdown, the table, `--json`).

mod args;
mod report;
mod step;

pub use args::ClusterArgs;

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use cport_bench::cgroup::{self, CpuGroup, CpuStat};
use cport_cluster::supervisor::{Plan, Role, Supervisor};

use report::{LayoutRun, Said};
use step::{Sampler, Step, Watch};

/// The prefix of this command's cgroup names: `cport-bench-PID-…`.
const GROUP_PREFIX: &str = "cport-bench";

/// How long each cluster process may take to be ready (a zone places its NPCs first).
const READY_WITHIN: Duration = Duration::from_secs(180);
/// How long the processes get to stop before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// Runs `cport bench cluster`.
pub fn run(a: ClusterArgs) -> io::Result<()> {
    crate::util::raise_fd_limit();
    let layouts = check(&a)?;
    let root = cgroup::cpu_v1_root().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cport bench cluster holds each zone to a CPU share with a cgroup: {e}"),
        )
    })?;
    let swept = cgroup::sweep_stale(&root, GROUP_PREFIX);
    if swept > 0 {
        eprintln!("bench cluster: removed {swept} cgroups left by an earlier run");
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let signals = crate::util::signals()?;
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("bench-signals".into())
            .spawn(move || {
                if signals.recv().is_ok() {
                    stop.store(true, Relaxed);
                }
            })?;
    }
    let quota_us = (a.zone_cpu * a.cfs_period_us as f64).round() as u64;
    println!(
        "bench cluster: layouts {} zones, {} NPCs, each zone held to {} CPU ({}: {} µs per {} µs period, groups under {}); gateway, NATS and the load client outside the quota; steps: climb at {}/s, settle {} s, hold {} s; held = every client in game and delay p99 < {} ms in every second of the hold; {} round(s)",
        a.zones, a.npcs, a.zone_cpu, cgroup::MECHANISM, quota_us, a.cfs_period_us,
        root.display(), a.climb_per_s, a.settle_s, a.hold_s, a.delay_limit_ms, a.rounds
    );
    let dir = std::env::temp_dir().join(format!("cport-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut runs: Vec<Vec<LayoutRun>> = layouts.iter().map(|_| Vec::new()).collect();
    let mut failures = Vec::new();
    'rounds: for round in 1..=a.rounds {
        for (i, &zones) in layouts.iter().enumerate() {
            if stop.load(Relaxed) {
                break 'rounds;
            }
            println!("round {round}: {zones} zone(s)");
            match run_layout(&a, zones, round, &root, &dir, &stop) {
                Ok(r) => {
                    report::print_layout_line(round, &r, &a);
                    runs[i].push(r);
                }
                Err(e) => {
                    println!("  ! {zones} zone(s), round {round}: {e}");
                    failures.push(format!("{zones} zones, round {round}: {e}"));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let summary = report::Summary::new(&a, &layouts, runs, failures, &root);
    println!();
    summary.print_table();
    if let Some(path) = &a.json {
        summary.write_json(path)?;
        println!("(wrote {})", path.display());
    }
    if stop.load(Relaxed) {
        return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
    }
    if summary.layouts.iter().any(|l| l.runs.is_empty()) {
        return Err(io::Error::other("a layout has no finished run (see above)"));
    }
    Ok(())
}

/// The layouts `--zones` names, after checking the options.
fn check(a: &ClusterArgs) -> io::Result<Vec<usize>> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    let layouts: Vec<usize> = a
        .zones
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| bad(format!("--zones: {s:?} is not a zone count")))
        })
        .collect::<io::Result<_>>()?;
    if layouts.len() < 2 {
        return Err(bad("--zones needs two layouts or more (e.g. 1,4)".into()));
    }
    for &z in &layouts {
        if cport_mmo::cluster::Layout::new(cport_mmo_proto::W_WIDTH, z).is_none() {
            return Err(bad(format!("{z} zones do not fit the board")));
        }
    }
    if a.rounds == 0 || a.max_steps == 0 || a.start == 0 || a.hold_s == 0 {
        return Err(bad(
            "--rounds, --max-steps, --start and --hold-s must be at least 1".into(),
        ));
    }
    if !a.zone_cpu.is_finite() || a.zone_cpu <= 0.0 {
        return Err(bad(format!("--zone-cpu {} is not a share", a.zone_cpu)));
    }
    if !a.resolution.is_finite() || a.resolution <= 0.0 {
        return Err(bad("--resolution must be above 0".into()));
    }
    Ok(layouts)
}

/// The plan of one layout: `zones` zones and one gateway on a free loopback port.
fn plan(a: &ClusterArgs, zones: usize, round: usize) -> io::Result<Plan> {
    let name = format!("bench-{}-r{round}-z{zones}", std::process::id());
    let gw: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    let mut p = Plan::new(std::env::current_exe()?, &name, zones, vec![gw]);
    p.nats = a.nats.clone();
    p.ready_within = READY_WITHIN;
    p.grace = STOP_GRACE;
    p.echo_stderr = false;
    p.env = vec![("RUST_LOG".into(), "warn".into())];
    let s = |v: String| OsString::from(v);
    p.zone_args = vec![
        s(format!("--threads={}", a.threads)),
        s("--header=u8".into()),
        s(format!("--view-range={}", a.view_range)),
        s(format!("--max-users={}", a.max_users)),
        s(format!("--npcs={}", a.npcs)),
        s("--db=none".into()),
        s(format!("--bus-tick-us={}", a.bus_tick_us)),
    ];
    p.gateway_args = vec![
        s(format!("--threads={}", a.threads)),
        s("--header=u8".into()),
        s(format!("--max-users={}", a.max_users)),
        s(format!("--bus-tick-us={}", a.bus_tick_us)),
    ];
    Ok(p)
}

/// One layout, one round: the cluster, its zones' groups, the search, the figures at
/// shutdown. The cluster and the groups are ended on every path (the supervisor and the
/// groups end what is left when dropped).
fn run_layout(
    a: &ClusterArgs,
    zones: usize,
    round: usize,
    root: &Path,
    dir: &Path,
    stop: &AtomicBool,
) -> io::Result<LayoutRun> {
    let sup = Supervisor::start(plan(a, zones, round)?)?;
    let gw = sup.gateways()[0];
    let mut groups = Vec::with_capacity(zones);
    for z in 0..zones {
        let pid = sup
            .pid(Role::Zone, z)
            .ok_or_else(|| io::Error::other(format!("zone {z} has no process")))?;
        let name = format!(
            "{GROUP_PREFIX}-{}-r{round}-z{zones}-{z}",
            std::process::id()
        );
        let g = CpuGroup::create(root, &name, a.zone_cpu, a.cfs_period_us)?;
        g.add(pid)?;
        groups.push(g);
    }
    let watch = Watch {
        zones: (0..zones).filter_map(|z| sup.pid(Role::Zone, z)).collect(),
        gateway: sup
            .pid(Role::Gateway, 0)
            .ok_or_else(|| io::Error::other("no gateway process"))?,
        nats: sup.pid(Role::Nats, 0),
        stat_files: groups.iter().map(|g| g.path().join("cpu.stat")).collect(),
    };
    let sampler = Sampler::start(watch);
    let mut sup = sup;
    let steps = search(a, gw, &sampler, dir, stop, &mut sup);
    let sampler = sampler.finish();
    let throttled_total: Vec<CpuStat> = sampler.throttled_total();
    let stopped = sup.stop(STOP_GRACE)?;
    let said = Said::read(&stopped, zones);
    for g in groups {
        g.remove()?;
    }
    let steps = steps?;
    Ok(LayoutRun::new(zones, steps, said, throttled_total))
}

/// The search of one layout: N doubles from `--start` while held, then the gap is halved.
fn search(
    a: &ClusterArgs,
    gw: SocketAddr,
    sampler: &Sampler,
    dir: &Path,
    stop: &AtomicBool,
    sup: &mut Supervisor,
) -> io::Result<Vec<Step>> {
    let cap = a.max_clients.min(a.max_users).max(1);
    let mut steps: Vec<Step> = Vec::new();
    let (mut held, mut failed): (usize, Option<usize>) = (0, None);
    let mut n = a.start.min(cap);
    let mut tries = 0;
    while steps.len() < a.max_steps && !stop.load(Relaxed) {
        if let Some((role, k, status, tail)) = sup.exited().into_iter().next() {
            return Err(io::Error::other(format!(
                "{role} {k} exited ({status}) during the run; {tail}"
            )));
        }
        let s = step::run_step(a, gw, n, sampler, dir)?;
        println!(
            "    {:>6} clients: {}  in game ≥ {:>6}  p50 {:>4.0} ms  p99 {:>5.0} ms  zones CPU {}  throttled {}  gateway {:>5.1}%  NATS {:>5.1}%  client {:>5.1}%{}",
            n,
            if s.held { "held  " } else { "failed" },
            s.fewest,
            s.p50_ms,
            s.p99_ms,
            report::pcts(&s.zone_cpu_pct),
            report::throttles(&s.zone_stat),
            s.gateway_cpu_pct,
            s.nats_cpu_pct,
            s.client_cpu_pct,
            s.why_not.as_ref().map_or(String::new(), |w| format!("  ({w})"))
        );
        let ok = s.held;
        steps.push(s);
        if !ok && tries < a.retries {
            tries += 1;
            std::thread::sleep(Duration::from_secs(a.gap_s));
            continue;
        }
        tries = 0;
        if ok {
            held = held.max(n);
        } else {
            failed = Some(failed.map_or(n, |f| f.min(n)));
        }
        n = match failed {
            None if held >= cap => break,
            None => (n * 2).min(cap),
            Some(f) => {
                let gap = f.saturating_sub(held);
                if gap as f64 <= a.resolution * held as f64 || gap <= 1 {
                    break;
                }
                held + gap / 2
            }
        };
        std::thread::sleep(Duration::from_secs(a.gap_s));
    }
    Ok(steps)
}
