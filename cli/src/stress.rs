//! `cport stress`: the course's stress tester (`cport_mmo_client`) against a game server at
//! `--addr`, or against `cport mmo` started as a child process (`--spawn`); a progress line
//! once a second, the final report, and optionally a JSON report, a chart and a map (SVG).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use cport::Backend;
use cport_bench::proc::ServerProc;
use cport_mmo_client::{Errors, Report, Second, Settings};
use cport_mmo_proto::SizeField;

use crate::mmo::Header;

mod children;
mod output;
mod progress;

use children::run_children;
pub use children::{run_child, ChildArgs};
use output::write_json;
pub use output::{chart_svg, map_svg, print_report};
use progress::Progress;

/// Options of `cport stress`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The game server to test.
    #[arg(long, required_unless_present = "spawn", conflicts_with = "spawn")]
    pub addr: Option<SocketAddr>,
    /// Start `cport mmo` on a free loopback port as a child process, and stop it at the end.
    #[arg(long)]
    pub spawn: bool,
    /// Most clients at once (also bounded by the open-files limit, and with --spawn by
    /// --max-users: more would only be refused).
    #[arg(long, default_value_t = 20_000)]
    pub max_clients: usize,
    /// The delay limit: the ramp slows from here and sheds above 1.5 times this.
    #[arg(long, default_value_t = 100)]
    pub delay_limit_ms: u64,
    /// Length of the run (every loop is bounded by it).
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
    /// Time between added clients under the limit (the course's pace is 50; smaller finds
    /// the limit sooner).
    #[arg(long, default_value_t = 50)]
    pub ramp_interval_ms: u64,
    /// Time between shed clients above 1.5 times the limit (the course's: 500).
    #[arg(long, default_value_t = 500)]
    pub shed_interval_ms: u64,
    /// Client worker threads (per client process).
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// Client processes, each owning a share of the clients (one process may open only as
    /// many sockets as its open-files limit allows); the ramp runs in this one, on one
    /// global tracked delay. 0: as many as --max-clients needs under the open-files limit.
    #[arg(long, default_value_t = 0)]
    pub procs: usize,
    /// The client's own port backend: auto, uring, epoll (Linux) or iocp (Windows) [default: $CPORT_BACKEND, else auto].
    #[arg(long)]
    pub client_backend: Option<Backend>,
    /// Width of the size field of every packet (passed to the server with --spawn).
    #[arg(long, value_enum, default_value = "u8")]
    pub header: Header,
    /// --spawn: the server's worker threads (0 = available parallelism).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// --spawn: the server's backend.
    #[arg(long)]
    pub backend: Option<Backend>,
    /// --spawn: the server's NPCs.
    #[arg(long, default_value_t = cport_mmo_proto::MAX_NPC)]
    pub npcs: usize,
    /// The server's MAX_USER (passed with --spawn; ids from here up are NPCs on the map).
    #[arg(long, default_value_t = cport_mmo_proto::MAX_USER)]
    pub max_users: usize,
    /// Write the report (with the per-second series) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a chart of clients and delay over time (SVG) here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Write a map of the dummies and the awake NPCs they see at the end (SVG) here.
    #[arg(long)]
    pub map_svg: Option<PathBuf>,
    /// Serve a live view of the run at http://ADDR/ (the map with the dummies and the awake
    /// NPCs they see, clients and delay over time, the figures, the report at the end),
    /// updated once a second. Port 0 takes any free port; the URL is printed first.
    #[arg(long, value_name = "ADDR")]
    pub web: Option<SocketAddr>,
    /// With --web: keep serving the finished run's page this long after the end (Ctrl-C
    /// ends it sooner).
    #[arg(long, default_value_t = 0, requires = "web")]
    pub web_linger_s: u64,
    /// With --web: when the address is taken, take any free port on the same address instead
    /// of failing (what `cport demo` does with its default address).
    #[arg(skip)]
    pub web_fallback: bool,
    /// With --web: the zones' rectangles `[x0, y0, x1, y1]` (half-open) of a cluster, drawn
    /// on the live view's map (`cport demo --cluster`).
    #[arg(skip)]
    pub zones: Vec<[u16; 4]>,
}

pub fn run(args: Args) -> io::Result<()> {
    let report = run_report(args)?;
    match report.stopped_early {
        Some(why) if why != "interrupted" => {
            Err(io::Error::other(format!("the run stopped early: {why}")))
        }
        _ => Ok(()),
    }
}

/// Runs the stress test as `args` say; returns the report.
pub fn run_report(args: Args) -> io::Result<Report> {
    // The view's port first: a port in use is an error before anything starts.
    let web = args
        .web
        .map(|a| bind_web(a, args.web_fallback))
        .transpose()?;
    if let Some(w) = &web {
        eprintln!("stress: live view at {} (open it in a browser)", w.url());
    }
    let fd_limit = crate::util::raise_fd_limit();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let signals = crate::util::signals()?;
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("stress-signals".into())
            .spawn(move || {
                if signals.recv().is_ok() {
                    stop.store(true, Relaxed);
                }
            })?;
    }
    let header = match args.header {
        Header::U8 => SizeField::U8,
        Header::U16 => SizeField::U16,
    };
    let mut max_clients = args.max_clients;
    let server = if args.spawn {
        let exe = std::env::current_exe()?;
        let mut sargs: Vec<String> = [
            "mmo",
            "--addr",
            "127.0.0.1:0",
            "--threads",
            &args.threads.to_string(),
            "--npcs",
            &args.npcs.to_string(),
            "--max-users",
            &args.max_users.to_string(),
            "--header",
            match args.header {
                Header::U8 => "u8",
                Header::U16 => "u16",
            },
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(b) = args.backend {
            sargs.extend(["--backend".to_string(), b.to_string()]);
        }
        // The server's info lines would break the progress line: warnings only, unless asked.
        let env: Vec<(String, String)> = match std::env::var_os("RUST_LOG") {
            Some(_) => Vec::new(),
            None => vec![("RUST_LOG".into(), "warn".into())],
        };
        let p = ServerProc::spawn(&exe, &sargs, &env)?;
        eprintln!("stress: started server: {}", p.startup);
        if max_clients > args.max_users {
            eprintln!(
                "stress: clients capped at the server's --max-users {} (more would get SC_LOGIN_FAIL)",
                args.max_users
            );
            max_clients = args.max_users;
        }
        // The server's own open-files limit caps its sessions (its startup line says how
        // many): a client beyond would be closed at once.
        if let Some(n) = max_sessions_of(&p.startup).filter(|&n| n < max_clients) {
            eprintln!(
                "stress: clients capped at the server's {n} sessions (its open-files limit: the server's ceiling on this machine)"
            );
            max_clients = n;
        }
        Some(p)
    } else {
        None
    };
    let addr = match (&server, args.addr) {
        (Some(p), _) => p.addr,
        (None, Some(a)) => a,
        (None, None) => unreachable!("clap requires --addr or --spawn"),
    };
    // One process holds at most its open-files limit less a few: more clients take more
    // processes (each raises its own soft limit to the hard one).
    let room = (fd_limit as usize).saturating_sub(FD_RESERVE).max(1);
    let procs = match args.procs {
        0 => max_clients.div_ceil(room).max(1),
        n => n,
    };
    let per_proc = max_clients.div_ceil(procs);
    if per_proc > room {
        eprintln!(
            "stress: the open-files limit ({fd_limit}) caps each client process at {room} clients: {} in all with --procs {procs}",
            room * procs
        );
    }
    let settings = Settings {
        addr,
        header,
        max_clients,
        delay_limit_ms: args.delay_limit_ms,
        duration: Duration::from_secs(args.duration_s),
        ramp_interval: Duration::from_millis(args.ramp_interval_ms.max(1)),
        shed_interval: Duration::from_millis(args.shed_interval_ms.max(1)),
        threads: args.client_threads.max(1),
        backend: args.client_backend,
        npc_ids_from: args.max_users as u32,
        live_map: args.web.is_some(),
        ..Settings::new(addr, Duration::from_secs(args.duration_s))
    };
    eprintln!(
        "stress: {addr}, up to {} clients{}, limit {} ms, ramp {} ms, {} s",
        settings.max_clients,
        if procs > 1 {
            format!(" over {procs} client processes")
        } else {
            String::new()
        },
        settings.delay_limit_ms,
        args.ramp_interval_ms,
        args.duration_s
    );
    let live = match web {
        Some(w) => {
            let hello = serde_json::json!({
                "addr": addr.to_string(),
                "server": server.as_ref().map(|p| p.startup.clone()),
                "max_clients": settings.max_clients,
                "delay_limit_ms": settings.delay_limit_ms,
                "duration_s": args.duration_s,
                "ramp_interval_ms": args.ramp_interval_ms,
                "shed_interval_ms": args.shed_interval_ms,
                "client_threads": settings.threads,
                "client_procs": procs,
                "npc_ids_from": settings.npc_ids_from,
                "world_size": cport_mmo_proto::W_WIDTH,
                "zones": args.zones,
            });
            Some(w.serve(hello)?)
        }
        None => None,
    };
    let server_cpu0 = server.as_ref().map(|p| p.cpu_time());
    let progress = Progress::new();
    let on_second = |s: &Second, e: &Errors, probe: &cport_mmo_client::Probe| {
        progress.show(s, e);
        if let Some(l) = &live {
            l.on_second(s, e, probe);
        }
    };
    let result = if procs > 1 {
        run_children(&settings, procs, &stop, on_second)
    } else {
        cport_mmo_client::run_with_probe(&settings, &stop, on_second)
    };
    progress.finish();
    let server_cpu = server.as_ref().map(|p| p.cpu_time());
    let startup = server.as_ref().map(|p| p.startup.clone());
    if let Some(p) = server {
        match p.stop() {
            Ok(status) if !status.success() => {
                eprintln!("stress: the server exited with {status}")
            }
            Ok(_) => {}
            Err(e) => eprintln!("stress: stopping the server: {e}"),
        }
    }
    let (mut report, map) = result?;
    if let (Some(a), Some(b)) = (server_cpu0, server_cpu) {
        report.server_cpu_s = Some(b.saturating_sub(a).as_secs_f64());
    }
    report.server = startup;
    print_report(&report, &map);
    if let Some(path) = &args.json {
        write_json(path, &report)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        chart_svg(path, &report)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.map_svg {
        map_svg(path, &map)?;
        println!("wrote {}", path.display());
    }
    if let Some(l) = live {
        if args.web_linger_s > 0 {
            eprintln!(
                "stress: the live view stays at {} for {} s (Ctrl-C ends it)",
                l.url(),
                args.web_linger_s
            );
        }
        let costs = l.finish(&report, &map, Duration::from_secs(args.web_linger_s), &stop);
        eprintln!("stress: live view: {costs}");
    }
    Ok(report)
}

/// `max sessions: N` in a `cport mmo` startup line.
fn max_sessions_of(startup: &str) -> Option<usize> {
    let rest = startup.split("max sessions: ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Open files a client process keeps for itself (its port, stdio, pipes).
const FD_RESERVE: usize = 64;

/// Binds the live view's address; with `fallback`, a taken port gives way to any free one.
fn bind_web(addr: SocketAddr, fallback: bool) -> io::Result<crate::web::Bound> {
    match crate::web::Bound::bind(addr) {
        Err(e) if fallback && e.kind() == io::ErrorKind::AddrInUse => {
            let any = SocketAddr::new(addr.ip(), 0);
            let b = crate::web::Bound::bind(any)?;
            eprintln!(
                "stress: {addr} is in use; the live view takes {} instead",
                b.local_addr()
            );
            Ok(b)
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::max_sessions_of;

    #[test]
    fn max_sessions_is_read_from_the_startup_line() {
        let line = "listening on 127.0.0.1:4000 (backend: uring, threads: 2, npcs: 200000, max users: 20000, max sessions: 19900, view range: 7)";
        assert_eq!(max_sessions_of(line), Some(19_900));
        assert_eq!(
            max_sessions_of("listening on 127.0.0.1:1 (backend: uring)"),
            None
        );
    }
}
