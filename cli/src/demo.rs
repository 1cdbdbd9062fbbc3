//! `cport demo` (what `cargo run --release -- demo` runs): the stress tester against the
//! game server started as a child process with its default settings (200,000 NPCs), for 60 s,
//! with a ramp fast enough to find the server's limit on this 2-core machine in that time;
//! writes `demo-report.json`, `demo-report.svg` and `demo-map.svg`.
//!
//! The ramp: one client every 2 ms under the limit (25 times the course's 50 ms). At the
//! course's pace, 10,000 clients take 500 s; at 2 ms they take 20 s, which leaves the rest
//! of the minute for the delay to cross the limit, the shedding and the regrowth to 95%.
//! Faster than that the delay would lag the load: the tracker moves 1 ms per sample, and a
//! client only starts sampling (one move a second) once it is in game.
//!
//! The stress client runs its port on epoll here (the server keeps its own backend): the
//! client mostly receives small packets, and on io_uring each receive's task work interrupts
//! the thread that submitted it. Measured at 10,000 clients against the same server, 60 s:
//! client CPU 59–61% of one core on epoll, 65–69% on io_uring (four runs each), which leaves
//! that much more of the shared two cores to the server under test.
//!
//! The run can be watched live in a browser: the demo serves the view of `cport stress --web`
//! at http://127.0.0.1:8040/ (any free port when that one is taken; `--web ADDR` to choose,
//! `--no-web` for none) and prints the URL on its first lines.
//!
//! `--cluster` runs the same load against a local cluster instead of one process: what
//! `cport cluster` starts (nats-server, `--zones` zone processes, `--gateways` gateways, the
//! clients on the first gateway), stopped in order at the end.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::mmo::Header;
use crate::stress;

/// Options of `cport demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Length of the run.
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
    /// Time between added clients under the limit: 2 ms brings 10,000 clients in 20 s, so a
    /// minute finds the limit (the course's 50 ms would take 500 s).
    #[arg(long, default_value_t = 2)]
    pub ramp_interval_ms: u64,
    /// Where to write demo-report.json, demo-report.svg and demo-map.svg.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// The server's NPCs.
    #[arg(long, default_value_t = cport_mmo_proto::MAX_NPC)]
    pub npcs: usize,
    /// The server's worker threads (0 = available parallelism).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// The server's backend.
    #[arg(long)]
    pub backend: Option<cport::Backend>,
    /// The server's MAX_USER, which also caps the clients (the course's 10,000; raise it to
    /// look past 10,000 — the open-files limit still caps both processes).
    #[arg(long, default_value_t = cport_mmo_proto::MAX_USER)]
    pub max_users: usize,
    /// Serve the live view here (a port in use is an error); by default 127.0.0.1:8040, or
    /// any free loopback port when that one is taken.
    #[arg(long, value_name = "ADDR", conflicts_with = "no_web")]
    pub web: Option<SocketAddr>,
    /// No live view.
    #[arg(long)]
    pub no_web: bool,
    /// Keep serving the finished run's page this long after the end (Ctrl-C ends it sooner).
    #[arg(long, default_value_t = 0)]
    pub web_linger_s: u64,
    /// Run the game as a local cluster (nats-server, zones and gateways as processes, as
    /// `cport cluster` starts them) instead of one `cport mmo` process.
    #[arg(long)]
    pub cluster: bool,
    /// With --cluster: zones.
    #[arg(long, default_value_t = 4, requires = "cluster")]
    pub zones: usize,
    /// With --cluster: gateways (the clients connect to the first).
    #[arg(long, default_value_t = 1, requires = "cluster")]
    pub gateways: usize,
    /// With --cluster: a NATS server already running (by default one is started).
    #[arg(long, value_name = "URL", requires = "cluster")]
    pub nats: Option<String>,
}

/// The live view's address when none is given.
pub const DEFAULT_WEB: &str = "127.0.0.1:8040";

pub fn run(args: Args) -> io::Result<()> {
    std::fs::create_dir_all(&args.out_dir)?;
    let out = |name: &str| args.out_dir.join(name);
    let cluster = match args.cluster {
        true => Some(start_cluster(&args)?),
        false => None,
    };
    let s = stress::Args {
        addr: cluster.as_ref().map(|c| c.gateways()[0]),
        spawn: cluster.is_none(),
        // The single server's spawn caps the clients at its --max-users; a cluster's gateway
        // refuses logins beyond it too.
        max_clients: match args.cluster {
            true => args.max_users.min(20_000),
            false => 20_000,
        },
        delay_limit_ms: 100,
        duration_s: args.duration_s,
        ramp_interval_ms: args.ramp_interval_ms,
        shed_interval_ms: 500,
        client_threads: 2,
        procs: 0,
        client_backend: Some(cport::Backend::Epoll),
        header: Header::U8,
        threads: args.threads,
        backend: args.backend,
        npcs: args.npcs,
        max_users: args.max_users,
        json: Some(out("demo-report.json")),
        svg: Some(out("demo-report.svg")),
        map_svg: Some(out("demo-map.svg")),
        web: match (args.no_web, args.web) {
            (true, _) => None,
            (false, Some(a)) => Some(a),
            (false, None) => Some(DEFAULT_WEB.parse().expect("a socket address")),
        },
        web_linger_s: args.web_linger_s,
        // Only the default address gives way to a free port; one asked for is kept or fails.
        web_fallback: args.web.is_none(),
        zones: match args.cluster {
            true => zone_rects(cport_mmo_proto::W_WIDTH, args.zones),
            false => Vec::new(),
        },
    };
    let result = stress::run(s);
    if let Some(c) = cluster {
        let report = c.stop(std::time::Duration::from_secs(15))?;
        eprintln!("demo: cluster stopped: {report}");
    }
    result
}

/// The zones' rectangles `[x0, y0, x1, y1]` on a `size`-cell board cut into `zones`, as
/// every process of the cluster cuts it (none for a count the board cannot take: the cluster
/// refuses it).
fn zone_rects(size: u16, zones: usize) -> Vec<[u16; 4]> {
    let Some(l) = cport_mmo::cluster::Layout::new(size, zones) else {
        return Vec::new();
    };
    (0..zones)
        .map(|z| {
            let r = l.rect(z);
            [r.x0, r.y0, r.x1, r.y1]
        })
        .collect()
}

/// Starts the demo's cluster on loopback (the game's defaults, the demo's NPCs, users,
/// threads and backend), the clients' gateway on a free port.
fn start_cluster(args: &Args) -> io::Result<cport_cluster::supervisor::Supervisor> {
    use clap::Parser;
    #[derive(Parser)]
    struct Game {
        #[command(flatten)]
        game: cport_mmo::args::GameArgs,
    }
    let Game { game } = Game::parse_from([
        "demo".to_string(),
        "--addr=127.0.0.1:0".into(),
        format!("--npcs={}", args.npcs),
        format!("--max-users={}", args.max_users),
        format!("--threads={}", args.threads),
    ]);
    let c = crate::cluster::Args {
        zones: args.zones,
        gateways: args.gateways,
        nats: args.nats.clone(),
        cluster: None,
        game,
        backend: args.backend,
        bus_tick_us: 1000,
        http: cport_cluster::ops::HttpAddr(None),
        hung_after_ms: cport_cluster::supervisor::DEFAULT_HUNG_AFTER.as_millis() as u64,
    };
    // The processes' info lines would break the progress line: warnings only, unless asked.
    let env = match std::env::var_os("RUST_LOG") {
        Some(_) => Vec::new(),
        None => vec![("RUST_LOG".into(), "warn".into())],
    };
    crate::cluster::start_with(&c, env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_view_gets_the_zones_the_cluster_uses() {
        assert_eq!(
            zone_rects(2000, 4),
            vec![
                [0, 0, 1000, 1000],
                [1000, 0, 2000, 1000],
                [0, 1000, 1000, 2000],
                [1000, 1000, 2000, 2000]
            ]
        );
        assert_eq!(zone_rects(2000, 6).len(), 6);
        assert!(zone_rects(2000, 0).is_empty());
    }
}
