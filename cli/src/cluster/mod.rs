//! `cport cluster`: one machine's cluster — `nats-server` (unless `--nats` names one), the
//! zones and the gateways, each a process of this binary (`cport zone`, `cport gateway`),
//! supervised by `cport_cluster::supervisor`. The processes themselves are `zone.rs` and
//! `gateway.rs`.

use std::ffi::OsString;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use cport_cluster::supervisor::{self, Plan, Supervisor};
use cport_mmo::args::GameArgs;

pub mod gateway;
pub mod zone;

/// Options of `cport cluster`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Zones: the board is cut into this many rectangles, each owned by one process.
    #[arg(long, default_value_t = 4)]
    pub zones: usize,
    /// Gateways: processes that hold the clients; the first listens on --addr, the others
    /// on the ports after it (all on free ports with port 0).
    #[arg(long, default_value_t = 1)]
    pub gateways: usize,
    /// A NATS server already running (nats://HOST:PORT); by default `nats-server` is started
    /// from PATH on a free loopback port.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// The cluster's name, the first token of its subjects [default: cport-<pid>].
    #[arg(long)]
    pub cluster: Option<String>,
    /// The game's flags: the gateways take --addr, --threads, --header, --max-users,
    /// --world-size and --max-send-queue; the zones take the rest (and those of them that
    /// apply).
    #[command(flatten)]
    pub game: GameArgs,
    /// Backend of every process: auto, uring, epoll [default: $CPORT_BACKEND, else auto].
    #[arg(long)]
    pub backend: Option<cport::Backend>,
    /// Every process sends at most one bus message per destination per this many
    /// microseconds (batching under load; an entry after a quiet tick leaves at once).
    #[arg(long, default_value_t = 1000)]
    pub bus_tick_us: u64,
    /// Where the supervisor serves its /healthz and /metrics (port 0 picks a free port; the
    /// line `http on ADDR` says which), or `none`. Each zone and gateway serves its own on a
    /// free loopback port.
    #[arg(long, value_name = "ADDR|none", default_value = "127.0.0.1:0")]
    pub http: cport_cluster::ops::HttpAddr,
    /// A zone or gateway whose /healthz has not answered 200 for this long is killed and
    /// started again (ms).
    #[arg(long, default_value_t = 2000)]
    pub hung_after_ms: u64,
}

/// The flags a zone gets from `cport cluster`'s game flags (everything but the address).
pub fn zone_flags(g: &GameArgs, backend: Option<cport::Backend>) -> Vec<OsString> {
    let mut v: Vec<String> = vec![
        format!("--threads={}", g.threads),
        format!("--header={}", g.header.name()),
        format!("--view-range={}", g.view_range),
        format!("--max-users={}", g.max_users),
        format!("--npcs={}", g.npcs),
        format!("--seed={}", g.seed),
        format!("--max-send-queue={}", g.max_send_queue),
        format!("--save-interval-ms={}", g.save_interval_ms),
        format!("--db-threads={}", g.db_threads),
        format!("--world-size={}", g.world_size),
        format!("--npc-respawn-ms={}", g.npc_respawn_ms),
        format!("--regen-ms={}", g.regen_ms),
        format!("--recv-pool={}", g.recv_pool),
        format!("--aggressive-npcs={}", g.aggressive_npcs),
        format!("--npc-give-up={}", g.npc_give_up),
    ];
    if let Some(db) = &g.db {
        v.push(format!("--db={db}"));
    }
    if let Some(map) = &g.map {
        v.push(format!("--map={}", map.display()));
    }
    if let Some(script) = &g.npc_script {
        v.push(format!("--npc-script={script}"));
    }
    if let Some(b) = backend {
        v.push(format!("--backend={}", backend_name(b)));
    }
    v.into_iter().map(OsString::from).collect()
}

/// The flags a gateway gets from `cport cluster`'s game flags (its address comes from the
/// supervisor).
pub fn gateway_flags(g: &GameArgs, backend: Option<cport::Backend>) -> Vec<OsString> {
    let mut v: Vec<String> = vec![
        format!("--threads={}", g.threads),
        format!("--header={}", g.header.name()),
        format!("--max-users={}", g.max_users),
        format!("--world-size={}", g.world_size),
        format!("--max-send-queue={}", g.max_send_queue),
    ];
    if let Some(b) = backend {
        v.push(format!("--backend={}", backend_name(b)));
    }
    v.into_iter().map(OsString::from).collect()
}

/// A backend as its flag value.
fn backend_name(b: cport::Backend) -> String {
    b.to_string()
}

/// How long the processes get to stop (players saved) before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// The plan `cport cluster` starts from its flags.
pub fn plan(args: &Args) -> io::Result<Plan> {
    let cluster = args
        .cluster
        .clone()
        .unwrap_or_else(|| format!("cport-{}", std::process::id()));
    let addrs = supervisor::gateway_addrs(args.game.addr, args.gateways)?;
    let mut plan = Plan::new(std::env::current_exe()?, &cluster, args.zones, addrs);
    plan.nats = args.nats.clone();
    plan.zone_args = zone_flags(&args.game, args.backend);
    plan.gateway_args = gateway_flags(&args.game, args.backend);
    let tick = format!("--bus-tick-us={}", args.bus_tick_us);
    plan.zone_args.push(tick.clone().into());
    plan.gateway_args.push(tick.into());
    // `cport cluster` keeps its processes running: what exits or hangs is started again.
    plan.restart = true;
    plan.hung_after = Duration::from_millis(args.hung_after_ms);
    plan.http = args.http.0;
    Ok(plan)
}

/// Starts a cluster and prints where to connect: `gateway g listening on ADDR` per gateway,
/// then `cluster ready: connect to ADDR[, ADDR…]`.
pub fn start(args: &Args) -> io::Result<Supervisor> {
    start_with(args, Vec::new())
}

/// [`start`], with `env` added to the processes' environment.
pub fn start_with(args: &Args, env: Vec<(OsString, OsString)>) -> io::Result<Supervisor> {
    if args.zones == 0 || args.gateways == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--zones and --gateways must be at least 1",
        ));
    }
    // Every process checks its own flags, but a flag that cannot work is better refused here
    // than by N processes.
    args.game.config()?;
    if cport_mmo::cluster::Layout::new(args.game.world_size, args.zones).is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} zones do not fit a {}-cell board (at most {} zones, one column each)",
                args.zones,
                args.game.world_size,
                cport_mmo::cluster::MAX_ZONES
            ),
        ));
    }
    let mut plan = plan(args)?;
    plan.env = env;
    let cluster = plan.cluster.clone();
    let sup = Supervisor::start(plan)?;
    if let Some(a) = sup.http_addr() {
        println!("http on {a}");
    }
    let gws = sup.gateways();
    for (g, a) in gws.iter().enumerate() {
        // The single server's startup line, once per gateway (what `cport bench mmo` and
        // `cport_bench::parse_listening` read).
        println!(
            "listening on {a} (gateway {g} of {}, cluster {cluster})",
            gws.len()
        );
    }
    let list: Vec<String> = gws.iter().map(SocketAddr::to_string).collect();
    println!(
        "cluster ready: connect to {} (cluster {cluster}, {} zones, nats {})",
        list.join(", "),
        args.zones,
        sup.nats_url()
    );
    io::stdout().flush()?;
    Ok(sup)
}

/// Waits for SIGINT/SIGTERM, saying meanwhile when a process exits by itself (the
/// supervisor's monitor says it and restarts it when the plan restarts); then stops the
/// cluster in order and says how each process ended.
pub fn supervise(mut sup: Supervisor, signals: &mpsc::Receiver<i32>) -> io::Result<()> {
    let mut told = std::collections::HashSet::new();
    while let Err(mpsc::RecvTimeoutError::Timeout) =
        signals.recv_timeout(Duration::from_millis(500))
    {
        if sup.restarting() {
            continue;
        }
        for (role, n, status, tail) in sup.exited() {
            if told.insert((role, n)) {
                eprintln!("cport cluster: {role} {n} exited ({status}); {tail}");
            }
        }
    }
    let report = sup.stop(STOP_GRACE)?;
    println!("cluster stopped: {report}");
    io::stdout().flush()?;
    Ok(())
}

/// `cport cluster`.
pub fn run(args: Args) -> io::Result<()> {
    let signals = crate::util::signals()?;
    let sup = start(&args)?;
    supervise(sup, &signals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: Args,
    }

    #[test]
    fn the_flags_pass_down_to_the_processes() {
        let t = T::parse_from([
            "t",
            "--zones",
            "2",
            "--npcs",
            "5",
            "--db",
            "none",
            "--world-size",
            "60",
            "--addr",
            "127.0.0.1:0",
            "--backend",
            "epoll",
        ]);
        let p = plan(&t.a).unwrap();
        assert_eq!(p.zones, 2);
        assert_eq!(p.gateways, vec!["127.0.0.1:0".parse().unwrap()]);
        assert!(p.cluster.starts_with("cport-"));
        let z: Vec<String> = p
            .zone_args
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        for want in [
            "--npcs=5",
            "--db=none",
            "--world-size=60",
            "--backend=epoll",
        ] {
            assert!(z.iter().any(|a| a == want), "{want} not in {z:?}");
        }
        assert!(!z.iter().any(|a| a.starts_with("--addr")));
        let g: Vec<String> = p
            .gateway_args
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert!(g.iter().any(|a| a == "--world-size=60"));
        assert!(!g
            .iter()
            .any(|a| a.starts_with("--npcs") || a.starts_with("--db")));
        // The zones parse what they are given.
        let mut argv = vec![
            "t".to_string(),
            "--zone=1".into(),
            "--zones=2".into(),
            "--gateways=1".into(),
            "--nats=nats://127.0.0.1:1".into(),
        ];
        argv.extend(z);
        let zone = zone::tests::parse(&argv);
        assert_eq!(
            (zone.zone, zone.game.npcs, zone.game.world_size),
            (1, 5, 60)
        );
        let mut argv = vec![
            "t".to_string(),
            "--gateway=0".into(),
            "--gateways=1".into(),
            "--zones=2".into(),
            "--nats=nats://127.0.0.1:1".into(),
            "--addr=127.0.0.1:0".into(),
        ];
        argv.extend(g);
        let gw = gateway::tests::parse(&argv);
        assert_eq!((gw.gateway, gw.world_size), (0, 60));
    }
}
