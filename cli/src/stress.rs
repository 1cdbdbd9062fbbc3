//! `cport stress`: the course's stress tester (`cport_mmo_client`) against a game server at
//! `--addr`, or against `cport mmo` started as a child process (`--spawn`); a progress line
//! once a second, the final report, and optionally a JSON report, a chart and a map (SVG).

use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use cport::Backend;
use cport_bench::proc::ServerProc;
use cport_mmo_client::{Errors, MapSnapshot, Report, Second, Settings};
use cport_mmo_proto::SizeField;
use plotters::prelude::*;

use crate::mmo::Header;

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

/// The run over `procs` client processes (this binary in its hidden `stress-child` mode),
/// each with its share of the clients; the ramp runs here.
fn run_children(
    settings: &Settings,
    procs: usize,
    stop: &AtomicBool,
    on_second: impl FnMut(&Second, &Errors, &cport_mmo_client::Probe),
) -> io::Result<(Report, MapSnapshot)> {
    use cport_mmo_client::multi::{run_multi, shares, ChildSettings, Link};
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()?;
    let mut kids = Vec::new();
    let mut links = Vec::new();
    for (i, share) in shares(settings.max_clients, procs).into_iter().enumerate() {
        let cs = serde_json::to_string(&ChildSettings::new(settings, i, share))
            .map_err(io::Error::other)?;
        let mut cmd = Command::new(&exe);
        cmd.args(["stress-child", &cs])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = cmd.spawn()?;
        let to = child.stdin.take().expect("piped stdin");
        let from = child.stdout.take().expect("piped stdout");
        links.push(Link {
            to: Box::new(to),
            from: Box::new(io::BufReader::new(from)),
        });
        kids.push(child);
    }
    let result = run_multi(settings, links, stop, on_second);
    // Each child was told to stop (and its input closed): it exits at once.
    for (i, mut k) in kids.into_iter().enumerate() {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match k.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        eprintln!("stress: client process {i} exited with {status}");
                    }
                    break;
                }
                Ok(None) if std::time::Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    eprintln!("stress: client process {i} did not exit: killed");
                    let _ = k.kill();
                    let _ = k.wait();
                    break;
                }
            }
        }
    }
    result
}

/// `cport stress-child SETTINGS` (hidden): one client process of a multi-process run, driven
/// over stdin/stdout by its parent `cport stress`.
#[derive(clap::Args, Debug)]
pub struct ChildArgs {
    /// Its settings (JSON, from the parent).
    pub settings: String,
}

pub fn run_child(args: ChildArgs) -> io::Result<()> {
    let cs: cport_mmo_client::multi::ChildSettings = serde_json::from_str(&args.settings)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    crate::util::raise_fd_limit();
    // Ctrl-C reaches the whole process group: the parent decides when children stop (it
    // tells them, or closes their input by exiting).
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGINT,
        Arc::new(AtomicBool::new(false)),
    );
    cport_mmo_client::multi::run_child(
        &cs,
        io::BufReader::new(io::stdin()),
        io::BufWriter::new(io::stdout().lock()),
    )
}

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

/// The live progress line: redrawn in place (indicatif) on a terminal, else a plain line a second.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last: std::sync::Mutex<String>,
}

impl Progress {
    fn new() -> Progress {
        let bar = io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(indicatif::ProgressStyle::with_template("{msg}").expect("template"));
            b
        });
        Progress {
            bar,
            last: Default::default(),
        }
    }

    fn show(&self, s: &Second, e: &Errors) {
        let line = format!(
            "{:>3.0}s clients {:>5} delay {:>3}ms p99 {:>4}ms in {:>6}/s out {:>5}/s err {}",
            s.t,
            s.clients,
            s.tracked_delay_ms,
            s.p99_ms,
            s.packets_in_per_s,
            s.packets_out_per_s,
            e.total()
        );
        match &self.bar {
            Some(b) => {
                *self.last.lock().expect("progress line") = line.clone();
                b.set_message(line);
            }
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            // Leave the last line as a plain line, so the report starts on a fresh one.
            b.finish_and_clear();
            eprintln!("{}", self.last.lock().expect("progress line"));
        }
    }
}

/// Prints the final report.
pub fn print_report(r: &Report, map: &MapSnapshot) {
    let st = &r.settings;
    println!(
        "max clients under {} ms: {}",
        st.delay_limit_ms, r.max_clients_under_limit
    );
    println!(
        "peak clients: {}   ramp maximum recorded (above {} ms): {}   final: {} clients, tracked delay {} ms",
        r.peak_clients,
        st.delay_limit_ms + st.delay_limit_ms / 2,
        r.ramp_max_recorded
            .map_or("none (never above)".to_string(), |m| m.to_string()),
        r.final_clients,
        r.final_tracked_delay_ms
    );
    println!(
        "delay samples: {}   p50 {} ms   p99 {} ms   max {} ms   (whole run)",
        r.delay_samples, r.p50_ms, r.p99_ms, r.max_ms
    );
    println!(
        "clients started: {}   shed: {}   packets in: {}   out: {}",
        r.clients_started, r.clients_shed, r.packets_in, r.packets_out
    );
    println!("errors: {}", r.errors);
    if let Some(id) = r.max_player_id {
        println!("highest player id given: {id}");
    }
    if r.procs > 1 {
        for c in &r.children {
            println!(
                "client process {}: cap {}, started {}, shed {}, final {}, samples {}, errors {}, CPU {:.1} s",
                c.index,
                c.cap,
                c.clients_started,
                c.clients_shed,
                c.final_clients,
                c.delay_samples,
                c.errors.total(),
                c.client_cpu_s
            );
        }
    }
    if let Some(n) = r.fd_limited_to {
        println!("note: the open-files limit capped the clients at {n}");
    }
    if let Some(why) = &r.stopped_early {
        println!("note: stopped early ({why}) after {:.1} s", r.elapsed_s);
    }
    println!(
        "client CPU: {:.1} s ({:.0}% of one core; {} process{}, {} threads each, backend {})",
        r.client_cpu_s,
        r.client_cpu_pct,
        r.procs,
        if r.procs == 1 { "" } else { "es" },
        st.client_threads,
        st.client_backend
    );
    if let Some(s) = r.server_cpu_s {
        println!(
            "server CPU: {:.1} s ({:.0}% of one core)",
            s,
            100.0 * s / r.elapsed_s.max(1e-3)
        );
    }
    println!(
        "map at the end: {} players, {} awake NPCs seen",
        map.players.len(),
        map.npcs.len()
    );
}

fn write_json(path: &Path, r: &Report) -> io::Result<()> {
    let mut f = io::BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer_pretty(&mut f, r).map_err(io::Error::other)?;
    writeln!(f)?;
    f.flush()
}

fn plot_err<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(format!("drawing the SVG: {e}"))
}

/// Clients (top) and delay (bottom: tracked, p50, p99, the limit) over time.
pub fn chart_svg(path: &Path, r: &Report) -> io::Result<()> {
    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(360);
    let t_max = r
        .series
        .last()
        .map_or(1.0, |s| s.t)
        .max(r.settings.duration_s)
        .max(1.0);
    let c_max = r.series.iter().map(|s| s.live).max().unwrap_or(0).max(10) as f64 * 1.1;
    let title = format!(
        "stress: {} clients under {} ms (peak {})",
        r.max_clients_under_limit, r.settings.delay_limit_ms, r.peak_clients
    );
    let mut chart = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..c_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("clients")
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(
            r.series.iter().map(|s| (s.t, s.clients as f64)),
            BLUE.stroke_width(2),
        ))
        .map_err(plot_err)?
        .label("clients logged in")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            [
                (0.0, r.max_clients_under_limit as f64),
                (t_max, r.max_clients_under_limit as f64),
            ],
            GREEN.stroke_width(1),
        ))
        .map_err(plot_err)?
        .label("max under the limit")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;

    let limit = r.settings.delay_limit_ms as f64;
    let d_max = r
        .series
        .iter()
        .map(|s| s.tracked_max_ms.max(s.p99_ms) as f64)
        .fold(limit * 1.6, f64::max)
        .min(limit * 20.0);
    let mut chart = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..d_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("delay (ms)")
        .draw()
        .map_err(plot_err)?;
    type Line = (&'static str, RGBColor, fn(&Second) -> u64);
    let lines: [Line; 4] = [
        ("tracked delay (course)", RED, |s| s.tracked_delay_ms),
        (
            "tracked, highest in the second",
            RGBColor(255, 160, 160),
            |s| s.tracked_max_ms,
        ),
        ("p99", MAGENTA, |s| s.p99_ms),
        ("p50", CYAN, |s| s.p50_ms),
    ];
    for (label, color, f) in lines {
        chart
            .draw_series(LineSeries::new(
                r.series.iter().map(|s| (s.t, (f(s) as f64).min(d_max))),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, limit), (t_max, limit)],
            BLACK.stroke_width(1),
        ))
        .map_err(plot_err)?
        .label("limit")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

/// The board as a point cloud: awake NPCs (green) and players (red), row 0 at the top; on
/// the 2000×2000 board one pixel covers 2×2 cells.
pub fn map_svg(path: &Path, map: &MapSnapshot) -> io::Result<()> {
    const PX: u32 = 1000;
    let size = map.world_size.max(1) as i32;
    let root = SVGBackend::new(path, (PX, PX + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} players (red), {} awake NPCs they see (green)",
                map.players.len(),
                map.npcs.len()
            ),
            ("sans-serif", 18),
        )
        .build_cartesian_2d(0..size, 0..size)
        .map_err(plot_err)?;
    // One point per output pixel: a dense region stays a readable file.
    let scale = (size as u32).div_ceil(PX).max(1) as i32;
    let dedup = |pts: &[(i16, i16)]| {
        let mut seen = std::collections::HashSet::new();
        pts.iter()
            .filter(|&&(x, y)| seen.insert((x as i32 / scale, y as i32 / scale)))
            // Row 0 at the top, as on the board (up is y − 1).
            .map(|&(x, y)| (x as i32, size - 1 - y as i32))
            .collect::<Vec<_>>()
    };
    let npcs = dedup(&map.npcs);
    let players = dedup(&map.players);
    let green = RGBColor(0, 150, 0);
    // Players first, NPCs on top: the NPCs a player wakes stand within a few pixels of it,
    // and drawn underneath they would disappear.
    chart
        .draw_series(
            players
                .iter()
                .map(|&p| Circle::new(p, 2, RED.mix(0.6).filled())),
        )
        .map_err(plot_err)?;
    chart
        .draw_series(npcs.iter().map(|&p| Pixel::new(p, green)))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
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
