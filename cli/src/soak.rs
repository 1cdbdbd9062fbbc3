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

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use cport::Backend;
use cport_mmo_proto::splitmix64;
use cport_mmo_proto::{self as protocol, ClientPacket, Direction, ServerPacket};
use cport_server::SizeField;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::time::{sleep, sleep_until, timeout};

/// Options of `cport soak`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// How long the load runs, in minutes (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// How long the load runs, in seconds (instead of --minutes).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Backend of both servers: auto, uring or epoll [default: $CPORT_BACKEND, else auto].
    #[arg(long)]
    pub backend: Option<Backend>,
    /// Worker threads of each server.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Verified echo connections open at once (each reconnects after 64 KiB..8 MiB).
    #[arg(long, default_value_t = 32)]
    pub echo_conns: usize,
    /// Verified echo traffic offered over all those connections, MiB/s.
    #[arg(long, default_value_t = 16.0)]
    pub echo_mib_s: f64,
    /// Short connections per second, half to each server (connect, maybe a few bytes or a
    /// login, then close or reset).
    #[arg(long, default_value_t = 40.0)]
    pub churn_per_s: f64,
    /// Players walking the game's board (each moves every 100..300 ms and waits for its move).
    #[arg(long, default_value_t = 200)]
    pub players: usize,
    /// NPCs on the game's board (they sleep until a player sees them: timers).
    #[arg(long, default_value_t = 200_000)]
    pub npcs: usize,
    /// The game's board width and height (`cport mmo --world-size`).
    #[arg(long, default_value_t = protocol::W_WIDTH)]
    pub world_size: u16,
    /// Each player walks within this many cells of where it logged in (0: anywhere), so
    /// that the NPCs the run wakes are a fixed set that wake and sleep over and over: RSS
    /// then reaches a steady state, and growth after it is a leak, not new ground.
    #[arg(long, default_value_t = 20)]
    pub walk_range: u16,
    /// Hostile connections to the game per second (bad sizes, unknown types, garbage,
    /// packets before login, floods).
    #[arg(long, default_value_t = 4.0)]
    pub hostile_per_s: f64,
    /// Clients at once that write to the echo server and never read.
    #[arg(long, default_value_t = 2)]
    pub never_readers: usize,
    /// The echo server's per-session send-queue cap (`cport echo --max-send-queue`).
    #[arg(long, default_value_t = 1 << 20)]
    pub echo_send_queue: usize,
    /// Fail when the median RSS of the last minute exceeds the first minute's by more than
    /// this, percent (judged on runs of 3 minutes or more).
    #[arg(long, default_value_t = 25.0)]
    pub max_rss_growth_pct: f64,
    /// Fail when the median heap in use (glibc `mallinfo2`: bytes allocated and not freed)
    /// of the last minute exceeds the first minute's by more than this, percent, and by more
    /// than 1 MiB (judged on runs of 3 minutes or more). Unlike RSS it does not count what the
    /// allocator keeps.
    #[arg(long, default_value_t = 10.0)]
    pub max_heap_growth_pct: f64,
    /// Where the servers' output and stats files go [default: a new directory in the temp dir].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The `cport` binary that runs the servers [default: this one].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
}

/// A reply not seen after this long is a stall (echo bytes, a player's move, a login).
const STALL: Duration = Duration::from_secs(10);
/// A hostile connection must be closed by the server within this long.
const HOSTILE_CLOSE: Duration = Duration::from_secs(5);
/// A never-reading client or a flooder must be closed within this long.
const SLOW_CLOSE: Duration = Duration::from_secs(30);
/// Echo bytes written and not yet read back, per connection, at most.
const WINDOW: u64 = 512 * 1024;
/// RSS growth is judged on runs at least this long (shorter ones are mostly warm-up).
const RSS_JUDGED: Duration = Duration::from_secs(180);
/// The game's `MAX_USER` as `cport mmo` runs it: ids from here up are NPCs.
const MAX_USERS: i32 = protocol::MAX_USER as i32;
const H: SizeField = SizeField::U8;

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
    let tally = Rc::new(Tally::default());
    let start = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(
        &rt,
        load(&args, addrs, duration, tally.clone(), stop.clone()),
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

// ---------------------------------------------------------------------------------------------
// The server processes.

struct Srv {
    name: &'static str,
    child: Child,
    pid: u32,
    addr: SocketAddr,
    banner: String,
    stats_path: PathBuf,
}

impl Srv {
    fn spawn(bin: &Path, name: &'static str, args: &[String], dir: &Path) -> io::Result<Srv> {
        let stats_path = dir.join(format!("{name}.stats"));
        let _ = fs::remove_file(&stats_path);
        let mut child = Command::new(bin)
            .arg(name)
            .args(args)
            .arg("--stats-file")
            .arg(&stats_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(dir.join(format!("{name}.stderr")))?)
            .spawn()?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped");
        let out_path = dir.join(format!("{name}.stdout"));
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("soak-{name}-stdout"))
            .spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                let first = lines.next();
                let _ = tx.send(first);
                if let Ok(mut f) = File::create(out_path) {
                    for l in lines.map_while(Result::ok) {
                        let _ = writeln!(f, "{l}");
                    }
                }
            })?;
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(Ok(l))) => l,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!(
                    "cport {name} did not start ({other:?}); see {}",
                    dir.join(format!("{name}.stderr")).display()
                )));
            }
        };
        let parsed = line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_once(' '))
            .and_then(|(a, rest)| Some((a.parse().ok()?, rest)));
        let Some((addr, rest)) = parsed else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!(
                "cport {name}: unexpected first line {line:?}"
            )));
        };
        let banner = rest
            .trim_start_matches('(')
            .split(',')
            .next()
            .unwrap_or("")
            .to_string();
        Ok(Srv {
            name,
            child,
            pid,
            addr,
            banner,
            stats_path,
        })
    }
}

/// The servers; killed if the soak itself fails before stopping them.
struct Servers(Vec<Srv>);

/// How a server ended.
#[derive(Debug, Clone)]
enum Exit {
    /// Exited by itself during the run (a crash).
    Died(ExitStatus),
    /// Stopped by SIGTERM and exited with this status in time.
    Stopped(ExitStatus, Duration),
    /// Did not exit within 15 s of SIGTERM (killed).
    Hung,
}

impl Servers {
    fn stop(mut self) -> Vec<(&'static str, Exit)> {
        let mut out = Vec::new();
        for s in &mut self.0 {
            if let Ok(Some(st)) = s.child.try_wait() {
                out.push((s.name, Exit::Died(st)));
                continue;
            }
            let t = Instant::now();
            if let Some(pid) = rustix::process::Pid::from_raw(s.pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let exit = loop {
                match s.child.try_wait() {
                    Ok(Some(st)) => break Exit::Stopped(st, t.elapsed()),
                    Ok(None) if t.elapsed() < Duration::from_secs(15) => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = s.child.kill();
                        let _ = s.child.wait();
                        break Exit::Hung;
                    }
                }
            };
            out.push((s.name, exit));
        }
        self.0.clear();
        out
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for s in &mut self.0 {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

fn read_stats(path: &Path) -> Option<HashMap<String, u64>> {
    let text = fs::read_to_string(path).ok()?;
    let kv: HashMap<String, u64> = text
        .split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    (!kv.is_empty()).then_some(kv)
}

/// Polls a stats file until `done` holds or `limit` passes; returns the last counters read.
fn wait_stats(
    path: &Path,
    limit: Duration,
    done: impl Fn(&HashMap<String, u64>) -> bool,
) -> HashMap<String, u64> {
    let t = Instant::now();
    loop {
        let kv = read_stats(path).unwrap_or_default();
        if (!kv.is_empty() && done(&kv)) || t.elapsed() >= limit {
            return kv;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn fd_count(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// VmRSS in KiB, and whether the process is still running (not gone, not a zombie).
fn rss_kib(pid: u32) -> (u64, bool) {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (0, false);
    };
    let mut rss = 0;
    let mut alive = true;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            rss = v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("State:") {
            alive = !v.trim_start().starts_with(['Z', 'X']);
        }
    }
    (rss, alive)
}

/// The per-second samples, one row per second and server: `server,t_s,rss_kib,fds,sessions,
/// queued_bytes,awake_npcs,heap_used,heap_free`.
fn write_samples(path: &Path, servers: &Servers, samples: &[Vec<Sample>]) -> io::Result<()> {
    let mut out = String::from(
        "server,t_s,rss_kib,fds,sessions,queued_bytes,awake_npcs,heap_used,heap_free\n",
    );
    for (srv, rows) in servers.0.iter().zip(samples) {
        for x in rows {
            let _ = writeln!(
                out,
                "{},{:.1},{},{},{},{},{},{},{}",
                srv.name,
                x.t,
                x.rss_kib,
                x.fds,
                x.open,
                x.queued,
                x.extra,
                x.heap_used,
                x.heap_free
            );
        }
    }
    fs::write(path, out)
}

fn tail_of(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Sampling, once a second, on its own thread.

#[derive(Debug, Clone, Default)]
struct Sample {
    t: f64,
    rss_kib: u64,
    fds: u64,
    open: u64,
    queued: u64,
    extra: u64,
    heap_used: u64,
    heap_free: u64,
}

struct Sampler {
    thread: std::thread::JoinHandle<()>,
    out: Arc<Mutex<Vec<Vec<Sample>>>>,
}

impl Sampler {
    fn start(servers: &Servers, stop: Arc<AtomicBool>) -> Sampler {
        let procs: Vec<(u32, PathBuf, &'static str)> = servers
            .0
            .iter()
            .map(|s| (s.pid, s.stats_path.clone(), s.name))
            .collect();
        let out = Arc::new(Mutex::new(vec![Vec::new(); procs.len()]));
        let o = out.clone();
        let thread = std::thread::Builder::new()
            .name("soak-sampler".into())
            .spawn(move || {
                let t0 = Instant::now();
                let mut next = t0;
                let mut said = 0.0;
                while !stop.load(Relaxed) {
                    let t = t0.elapsed().as_secs_f64();
                    let mut line = format!("soak: {t:>5.0} s");
                    for (i, (pid, path, name)) in procs.iter().enumerate() {
                        let (rss, alive) = rss_kib(*pid);
                        if !alive {
                            eprintln!("soak: cport {name} (pid {pid}) is gone: stopping the load");
                            stop.store(true, Relaxed);
                            break;
                        }
                        let kv = read_stats(path).unwrap_or_default();
                        let get = |k: &str| kv.get(k).copied().unwrap_or(0);
                        let s = Sample {
                            t,
                            rss_kib: rss,
                            fds: fd_count(*pid),
                            open: get("open"),
                            queued: get("queued_bytes"),
                            extra: get("awake_npcs"),
                            heap_used: get("heap_used"),
                            heap_free: get("heap_free"),
                        };
                        let _ = write!(
                            line,
                            " | {name}: rss {} MiB, fds {}, sessions {}, queued {} KiB",
                            s.rss_kib / 1024,
                            s.fds,
                            s.open,
                            s.queued / 1024
                        );
                        if kv.contains_key("awake_npcs") {
                            let _ = write!(line, ", awake NPCs {}", s.extra);
                        }
                        o.lock().expect("sampler lock")[i].push(s);
                    }
                    if t - said >= 30.0 {
                        eprintln!("{line}");
                        said = t;
                    }
                    next += Duration::from_secs(1);
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                }
            })
            .expect("spawn the sampler");
        Sampler { thread, out }
    }

    fn finish(self) -> Vec<Vec<Sample>> {
        let _ = self.thread.join();
        std::mem::take(&mut *self.out.lock().expect("sampler lock"))
    }
}

// ---------------------------------------------------------------------------------------------
// The load.

/// Hostile connections to the game, by kind.
const HOSTILE: [&str; 8] = [
    "size 0",
    "size 1",
    "size over the max",
    "unknown type",
    "wrong length for its type",
    "move before login",
    "garbage",
    "flood without reading",
];

/// What the clients saw (one thread: plain cells).
#[derive(Default)]
struct Tally {
    echo_conns: Cell<u64>,
    echo_sent: Cell<u64>,
    echo_verified: Cell<u64>,
    echo_corrupt: Cell<u64>,
    echo_lost: Cell<u64>,
    echo_stalls: Cell<u64>,
    echo_dropped: Cell<u64>,
    churn_echo: Cell<u64>,
    churn_mmo: Cell<u64>,
    resets_echo: Cell<u64>,
    resets_mmo: Cell<u64>,
    connect_errors: Cell<u64>,
    never_readers: Cell<u64>,
    never_readers_closed: Cell<u64>,
    never_reader_bytes: Cell<u64>,
    hostile: [Cell<u64>; HOSTILE.len()],
    hostile_closed: [Cell<u64>; HOSTILE.len()],
    logins: Cell<u64>,
    login_fails: Cell<u64>,
    moves_sent: Cell<u64>,
    moves_answered: Cell<u64>,
    moves_unanswered: Cell<u64>,
    npc_moves_seen: Cell<u64>,
    players_dropped: Cell<u64>,
    bad_server_packets: Cell<u64>,
    answer_us: RefCell<Option<Histogram<u64>>>,
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

/// A small per-task random generator.
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix64(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// The byte stream a verified echo connection sends: any chunking of it gives the same bytes,
/// so the reader regenerates what the writer sent from the seed alone.
struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed,
            word: [0; 8],
            used: 8,
        }
    }
    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == 8 {
                self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                self.word = splitmix64(self.state).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// Write sizes: single bytes, odd sizes, around a segment, pages, up to 256 KiB.
fn chunk_size(r: &mut Rand) -> u64 {
    const SIZES: [u64; 12] = [
        1, 2, 3, 17, 100, 1399, 1460, 4096, 8191, 16384, 65536, 262_144,
    ];
    if r.below(3) == 0 {
        r.range(1, 65536)
    } else {
        SIZES[r.below(SIZES.len() as u64) as usize]
    }
}

async fn connect(addr: SocketAddr, t: &Tally) -> Option<TcpStream> {
    match timeout(STALL, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Some(s),
        _ => {
            add(&t.connect_errors, 1);
            None
        }
    }
}

/// Closes with `SO_LINGER` 0: the peer gets a reset, not an end of stream.
fn reset(s: TcpStream) {
    if let Ok(s) = s.into_std() {
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    }
}

async fn load(
    args: &Args,
    (echo, mmo): (SocketAddr, SocketAddr),
    duration: Duration,
    t: Rc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let deadline = tokio::time::Instant::now() + duration;
    let live = {
        let stop = stop.clone();
        move || !stop.load(Relaxed) && tokio::time::Instant::now() < deadline
    };
    *t.answer_us.borrow_mut() = Histogram::new_with_bounds(1, 60_000_000, 3).ok();
    let mut tasks = Vec::new();
    let per_conn = args.echo_mib_s * 1024.0 * 1024.0 / args.echo_conns.max(1) as f64;
    for i in 0..args.echo_conns {
        let (t, live) = (t.clone(), live.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut r = Rand(splitmix64(0xEC40 + i as u64));
            while live() {
                let total = r.range(64 << 10, 8 << 20);
                echo_verified(echo, r.next(), total, per_conn, &t, &live).await;
            }
        }));
    }
    let churners = 4;
    let gap = Duration::from_secs_f64(churners as f64 / args.churn_per_s.max(0.01));
    for i in 0..churners {
        let (t, live) = (t.clone(), live.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut r = Rand(splitmix64(0xC4C4 + i as u64));
            let mut n = 0u64;
            while live() {
                let at = tokio::time::Instant::now() + gap;
                if r.below(2) == 0 {
                    churn_echo(echo, &mut r, &t).await;
                } else {
                    n += 1;
                    churn_mmo(mmo, &format!("c{i}-{n}"), &mut r, &t).await;
                }
                sleep_until(at.min(deadline)).await;
            }
        }));
    }
    for i in 0..args.never_readers {
        let (t, live) = (t.clone(), live.clone());
        tasks.push(tokio::task::spawn_local(async move {
            sleep(Duration::from_millis(500 * i as u64)).await;
            while live() {
                never_reader(echo, &t).await;
                sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    if args.hostile_per_s > 0.0 {
        let gap = Duration::from_secs_f64(1.0 / args.hostile_per_s);
        let (t, live) = (t.clone(), live.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut r = Rand(splitmix64(0xBAD));
            let mut k = 0;
            let mut flood: Option<tokio::task::JoinHandle<()>> = None;
            let mut open: Vec<tokio::task::JoinHandle<()>> = Vec::new();
            while live() {
                let at = tokio::time::Instant::now() + gap;
                let kind = k % HOSTILE.len();
                k += 1;
                if kind == 7 {
                    // One flooder at a time, on its own task.
                    if flood.as_ref().is_none_or(|f| f.is_finished()) {
                        let t = t.clone();
                        flood = Some(tokio::task::spawn_local(async move {
                            flooder(mmo, &t).await;
                        }));
                    }
                } else {
                    let t = t.clone();
                    let seed = r.next();
                    open.retain(|h| !h.is_finished());
                    open.push(tokio::task::spawn_local(async move {
                        hostile(mmo, kind, seed, &t).await;
                    }));
                }
                sleep_until(at.min(deadline)).await;
            }
            // Each ends within HOSTILE_CLOSE (SLOW_CLOSE for the flood).
            for h in open.into_iter().chain(flood) {
                let _ = h.await;
            }
        }));
    }
    let walk_range = args.walk_range;
    for i in 0..args.players {
        let (t, live) = (t.clone(), live.clone());
        tasks.push(tokio::task::spawn_local(async move {
            // Log in over the first second, not all at once.
            sleep(Duration::from_millis(i as u64 * 1000 / 200)).await;
            player(mmo, i, walk_range, &t, &live).await;
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// One verified echo connection: `total` bytes of the pattern in chunks of varied sizes at
/// `rate` bytes/s, at most `WINDOW` ahead of what came back; every byte read is compared.
async fn echo_verified(
    addr: SocketAddr,
    seed: u64,
    total: u64,
    rate: f64,
    t: &Tally,
    live: &impl Fn() -> bool,
) {
    let Some(s) = connect(addr, t).await else {
        sleep(Duration::from_millis(100)).await;
        return;
    };
    add(&t.echo_conns, 1);
    let (mut rd, mut wr) = s.into_split();
    let sent = Cell::new(0u64);
    let got = Cell::new(0u64);
    let bad = Cell::new(0u64);
    let dead = Cell::new(false);
    let done = Cell::new(false);
    let room = Notify::new();
    let finished = Notify::new();
    let writer = async {
        let mut pat = Pattern::new(seed);
        let mut r = Rand(seed ^ 0x5EED);
        let mut buf = Vec::new();
        let began = tokio::time::Instant::now();
        while sent.get() < total && !dead.get() && live() {
            let n = chunk_size(&mut r).min(total - sent.get());
            while sent.get() - got.get() + n > WINDOW && !dead.get() {
                room.notified().await;
            }
            if dead.get() {
                break;
            }
            if rate > 0.0 {
                let due = began + Duration::from_secs_f64((sent.get() + n) as f64 / rate);
                sleep_until(due).await;
            }
            buf.resize(n as usize, 0);
            pat.fill(&mut buf);
            if wr.write_all(&buf).await.is_err() {
                break;
            }
            sent.set(sent.get() + n);
            add(&t.echo_sent, n);
        }
        done.set(true);
        finished.notify_one();
    };
    let reader = async {
        let mut pat = Pattern::new(seed);
        let mut buf = vec![0u8; 64 << 10];
        let mut want = vec![0u8; 64 << 10];
        loop {
            if done.get() && got.get() + bad.get() >= sent.get() {
                break;
            }
            let r = tokio::select! {
                r = timeout(STALL, rd.read(&mut buf)) => r,
                () = finished.notified() => continue,
            };
            let n = match r {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    add(&t.echo_dropped, 1);
                    break;
                }
                Err(_) => {
                    add(&t.echo_stalls, 1);
                    break;
                }
                Ok(Ok(n)) => n,
            };
            pat.fill(&mut want[..n]);
            let diff = buf[..n]
                .iter()
                .zip(&want[..n])
                .filter(|(a, b)| a != b)
                .count() as u64;
            got.set(got.get() + n as u64 - diff);
            add(&t.echo_verified, n as u64 - diff);
            if diff > 0 {
                bad.set(bad.get() + diff);
                add(&t.echo_corrupt, diff);
                break;
            }
            room.notify_one();
        }
        dead.set(true);
        room.notify_one();
    };
    tokio::join!(writer, reader);
    add(&t.echo_lost, sent.get() - got.get() - bad.get());
}

/// A short echo connection: closed at once, or a few bytes echoed and checked then closed, or a
/// chunk written then reset without reading.
async fn churn_echo(addr: SocketAddr, r: &mut Rand, t: &Tally) {
    let Some(mut s) = connect(addr, t).await else {
        return;
    };
    add(&t.churn_echo, 1);
    match r.below(3) {
        0 => {}
        1 => {
            let mut data = vec![0u8; r.range(1, 2000) as usize];
            Pattern::new(r.next()).fill(&mut data);
            add(&t.echo_sent, data.len() as u64);
            let mut back = vec![0u8; data.len()];
            let ok = s.write_all(&data).await.is_ok();
            match timeout(STALL, s.read_exact(&mut back)).await {
                Ok(Ok(_)) if ok => {
                    let diff = data.iter().zip(&back).filter(|(a, b)| a != b).count() as u64;
                    add(&t.echo_verified, data.len() as u64 - diff);
                    add(&t.echo_corrupt, diff);
                }
                Err(_) => {
                    add(&t.echo_stalls, 1);
                    add(&t.echo_lost, data.len() as u64);
                }
                _ => {
                    add(&t.echo_dropped, 1);
                    add(&t.echo_lost, data.len() as u64);
                }
            }
        }
        _ => {
            let data = vec![0x5A; r.range(1, 100_000) as usize];
            let _ = s.write_all(&data).await;
            add(&t.resets_echo, 1);
            reset(s);
        }
    }
}

/// Reads whole server packets; `None` on a packet that does not decode.
struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    fn new() -> Frames {
        Frames { buf: Vec::new() }
    }
    /// Reads once (up to `limit`); `Ok(false)` on timeout, `Err` on end of stream or error.
    async fn read(
        &mut self,
        s: &mut TcpStream,
        until: tokio::time::Instant,
    ) -> Result<bool, &'static str> {
        let mut chunk = [0u8; 16 << 10];
        match tokio::time::timeout_at(until, s.read(&mut chunk)).await {
            Err(_) => Ok(false),
            Ok(Ok(0)) => Err("end of stream"),
            Ok(Err(_)) => Err("error"),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
        }
    }
    fn next(&mut self) -> Option<Result<ServerPacket, ()>> {
        let n = protocol::frame_len(&self.buf, H)?;
        let p = ServerPacket::decode(&self.buf[..n], H).map_err(|_| ());
        self.buf.drain(..n);
        Some(p)
    }
}

/// Logs in; returns the player's id and cell, or `None` (counted) when the server refused or
/// stalled.
async fn login(
    s: &mut TcpStream,
    name: &str,
    f: &mut Frames,
    t: &Tally,
) -> Option<(i32, i16, i16)> {
    let p = ClientPacket::Login {
        name: protocol::name(name),
    };
    if s.write_all(&p.encode(H)).await.is_err() {
        add(&t.login_fails, 1);
        return None;
    }
    let until = tokio::time::Instant::now() + STALL;
    loop {
        while let Some(p) = f.next() {
            match p {
                Ok(ServerPacket::LoginInfo { id, x, y, .. }) => {
                    add(&t.logins, 1);
                    return Some((id, x, y));
                }
                Ok(ServerPacket::LoginFail) => {
                    add(&t.login_fails, 1);
                    return None;
                }
                Ok(_) => {}
                Err(()) => {
                    add(&t.bad_server_packets, 1);
                    return None;
                }
            }
        }
        if f.read(s, until).await != Ok(true) {
            add(&t.login_fails, 1);
            return None;
        }
    }
}

/// A short game session: connect and close, or log in then log out, close or reset
/// halfway through a packet.
async fn churn_mmo(addr: SocketAddr, name: &str, r: &mut Rand, t: &Tally) {
    let Some(mut s) = connect(addr, t).await else {
        return;
    };
    add(&t.churn_mmo, 1);
    if r.below(4) == 0 {
        return;
    }
    let mut f = Frames::new();
    if login(&mut s, name, &mut f, t).await.is_none() {
        return;
    }
    match r.below(3) {
        0 => {
            let _ = s.write_all(&ClientPacket::Logout.encode(H)).await;
            // The server closes after flushing; read to the end (bounded).
            let until = tokio::time::Instant::now() + STALL;
            while let Ok(true) = f.read(&mut s, until).await {
                f.buf.clear();
            }
        }
        1 => {}
        _ => {
            let mv = ClientPacket::Move {
                direction: Direction::Up,
                move_time: 1,
            }
            .encode(H);
            let cut = r.range(1, mv.len() as u64 - 1) as usize;
            let _ = s.write_all(&mv[..cut]).await;
            add(&t.resets_mmo, 1);
            reset(s);
        }
    }
}

/// Writes to the echo server without ever reading, with a small receive buffer: the server
/// must close it as a slow consumer.
async fn never_reader(addr: SocketAddr, t: &Tally) {
    let sock = match TcpSocket::new_v4() {
        Ok(s) => s,
        Err(_) => return,
    };
    let _ = sock.set_recv_buffer_size(4096);
    let Ok(Ok(mut s)) = timeout(STALL, sock.connect(addr)).await else {
        add(&t.connect_errors, 1);
        return;
    };
    add(&t.never_readers, 1);
    let data = vec![0xA5u8; 64 << 10];
    let until = tokio::time::Instant::now() + SLOW_CLOSE;
    let closed = loop {
        match tokio::time::timeout_at(until, s.write_all(&data)).await {
            Ok(Ok(())) => add(&t.never_reader_bytes, data.len() as u64),
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    if closed {
        add(&t.never_readers_closed, 1);
    }
}

/// Logs in and sends moves as fast as it can without reading: the server must close it
/// (its send queue passes the cap).
async fn flooder(addr: SocketAddr, t: &Tally) {
    let kind = 7;
    let sock = match TcpSocket::new_v4() {
        Ok(s) => s,
        Err(_) => return,
    };
    let _ = sock.set_recv_buffer_size(4096);
    let Ok(Ok(mut s)) = timeout(STALL, sock.connect(addr)).await else {
        add(&t.connect_errors, 1);
        return;
    };
    add(&t.hostile[kind], 1);
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!("flood{}", N.fetch_add(1, Relaxed));
    let mut f = Frames::new();
    if login(&mut s, &name, &mut f, t).await.is_none() {
        return;
    }
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        ClientPacket::Move {
            direction: Direction::ALL[(i % 4) as usize],
            move_time: i + 1,
        }
        .encode_into(H, &mut burst);
    }
    let until = tokio::time::Instant::now() + SLOW_CLOSE;
    let closed = loop {
        match tokio::time::timeout_at(until, s.write_all(&burst)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    if closed {
        add(&t.hostile_closed[kind], 1);
    }
}

/// The bytes of a hostile connection of `kind` (not the flood): each is refused by the
/// protocol's own decoder, so the server must close the connection.
fn hostile_bytes(kind: usize, r: &mut Rand) -> Vec<u8> {
    let mv = ClientPacket::Move {
        direction: Direction::Left,
        move_time: 7,
    }
    .encode(H);
    match kind {
        0 => vec![0],
        1 => vec![1, 0, 0, 0],
        2 => {
            let mut v = vec![r.range(103, 255) as u8, protocol::cs::CHAT];
            v.resize(255, b'x');
            v
        }
        3 => vec![3, r.range(6, 255) as u8, 0],
        4 => {
            let mut v = mv.clone();
            v.push(0);
            v[0] += 1;
            v
        }
        5 => mv,
        _ => loop {
            // Garbage whose first packet is whole and does not decode, or is not a login.
            let mut v = vec![0u8; 300];
            Pattern::new(r.next()).fill(&mut v);
            let Some(n) = protocol::frame_len(&v, H) else {
                continue;
            };
            if !matches!(
                ClientPacket::decode(&v[..n], H),
                Ok(ClientPacket::Login { .. })
            ) {
                break v;
            }
        },
    }
}

/// A hostile connection: sends bytes the game refuses, then must see the server close it.
async fn hostile(addr: SocketAddr, kind: usize, seed: u64, t: &Tally) {
    let Some(mut s) = connect(addr, t).await else {
        return;
    };
    add(&t.hostile[kind], 1);
    let bytes = hostile_bytes(kind, &mut Rand(seed));
    let _ = s.write_all(&bytes).await;
    let until = tokio::time::Instant::now() + HOSTILE_CLOSE;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                add(&t.hostile_closed[kind], 1);
                return;
            }
            Ok(Ok(_)) => {}
            Err(_) => return,
        }
    }
}

/// A player walking the board: a move at a time, each waited for (its own `SC_MOVE_OBJECT`
/// with its `move_time`), 100..300 ms apart, in straight runs so that it keeps meeting NPCs
/// that were asleep.
async fn player(addr: SocketAddr, i: usize, walk_range: u16, t: &Tally, live: &impl Fn() -> bool) {
    let Some(mut s) = connect(addr, t).await else {
        return;
    };
    let mut f = Frames::new();
    let Some((me, x0, y0)) = login(&mut s, &format!("soak{i}"), &mut f, t).await else {
        return;
    };
    let (mut x, mut y) = (i32::from(x0), i32::from(y0));
    let (x0, y0, range) = (x, y, i32::from(walk_range));
    let mut r = Rand(splitmix64(0x9A7 + i as u64));
    let mut dir = Direction::ALL[r.below(4) as usize];
    let mut run = 0;
    let mut move_time = 0u32;
    let mut pending: Option<(u32, Instant)> = None;
    let mut next = tokio::time::Instant::now();
    while live() {
        if pending.is_none() && tokio::time::Instant::now() >= next {
            let (dx, dy) = dir.delta();
            let outside = range > 0 && ((x + dx - x0).abs() > range || (y + dy - y0).abs() > range);
            if run == 0 || outside {
                dir = Direction::ALL[r.below(4) as usize];
                run = r.range(5, 60);
                // Back towards the box when the step would leave it.
                let (dx, dy) = dir.delta();
                if range > 0 && ((x + dx - x0).abs() > range || (y + dy - y0).abs() > range) {
                    dir = match dir {
                        Direction::Up => Direction::Down,
                        Direction::Down => Direction::Up,
                        Direction::Left => Direction::Right,
                        Direction::Right => Direction::Left,
                    };
                }
            }
            run -= 1;
            move_time += 1;
            let p = ClientPacket::Move {
                direction: dir,
                move_time,
            };
            if s.write_all(&p.encode(H)).await.is_err() {
                add(&t.players_dropped, 1);
                return;
            }
            add(&t.moves_sent, 1);
            pending = Some((move_time, Instant::now()));
        }
        let until = match pending {
            Some((_, at)) => tokio::time::Instant::from_std(at + STALL),
            None => next,
        }
        .min(tokio::time::Instant::now() + Duration::from_millis(250));
        match f.read(&mut s, until).await {
            Err(_) => {
                add(&t.players_dropped, 1);
                return;
            }
            Ok(false) => {
                if let Some((_, at)) = pending {
                    if at.elapsed() >= STALL {
                        add(&t.moves_unanswered, 1);
                        pending = None;
                    }
                }
            }
            Ok(true) => {}
        }
        while let Some(p) = f.next() {
            match p {
                Ok(ServerPacket::MoveObject {
                    id,
                    move_time,
                    x: nx,
                    y: ny,
                }) => {
                    if id == me {
                        (x, y) = (i32::from(nx), i32::from(ny));
                    }
                    if id >= MAX_USERS {
                        add(&t.npc_moves_seen, 1);
                    } else if id == me {
                        if let Some((mt, at)) = pending {
                            if mt == move_time {
                                add(&t.moves_answered, 1);
                                let us = at.elapsed().as_micros() as u64;
                                if let Some(h) = t.answer_us.borrow_mut().as_mut() {
                                    let _ = h.record(us.max(1));
                                }
                                pending = None;
                                next = tokio::time::Instant::now()
                                    + Duration::from_millis(r.range(100, 300));
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(()) => {
                    add(&t.bad_server_packets, 1);
                    return;
                }
            }
        }
    }
    if let Some((_, at)) = pending {
        // The run ended with a move in flight: give it the same time as any other.
        let until = tokio::time::Instant::from_std(at + STALL);
        loop {
            match f.read(&mut s, until).await {
                Ok(true) => {
                    let mut answered = false;
                    while let Some(p) = f.next() {
                        if let Ok(ServerPacket::MoveObject { id, move_time, .. }) = p {
                            answered |= id == me && move_time == pending.map_or(0, |p| p.0);
                        }
                    }
                    if answered {
                        add(&t.moves_answered, 1);
                        break;
                    }
                }
                _ => {
                    add(&t.moves_unanswered, 1);
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The table and the verdict.

struct Report<'a> {
    duration: Duration,
    tally: &'a Tally,
    samples: &'a [Vec<Sample>],
    idle_start: &'a [u64],
    idle_end: &'a [u64],
    leaked: &'a [(u64, Option<u64>)],
    last_stats: &'a [HashMap<String, u64>],
    exits: &'a [(&'static str, Exit)],
    max_rss_growth_pct: f64,
    max_heap_growth_pct: f64,
}

fn median(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

/// The samples of the first and the last window (a minute, or a third of a shorter run).
fn windows(s: &[Sample]) -> (Vec<&Sample>, Vec<&Sample>) {
    let end = s.last().map_or(0.0, |l| l.t);
    let w = (end / 3.0).min(60.0);
    (
        s.iter().filter(|x| x.t <= w).collect(),
        s.iter().filter(|x| x.t >= end - w).collect(),
    )
}

/// Rows of (what, figure, threshold, ok).
type Row = (String, String, String, bool);

impl Report<'_> {
    fn rows(&self) -> Vec<Row> {
        let t = self.tally;
        let mut rows: Vec<Row> = Vec::new();
        let mut row = |what: &str, fig: String, thr: &str, ok: bool| {
            rows.push((what.to_string(), fig, thr.to_string(), ok));
        };
        row(
            "load ran",
            format!("{:.1} s", self.duration.as_secs_f64()),
            "",
            true,
        );
        row(
            "echo bytes sent / verified",
            format!("{} / {}", t.echo_sent.get(), t.echo_verified.get()),
            "verified > 0",
            t.echo_verified.get() > 0,
        );
        row(
            "echo bytes lost / corrupted",
            format!("{} / {}", t.echo_lost.get(), t.echo_corrupt.get()),
            "0 / 0",
            t.echo_lost.get() == 0 && t.echo_corrupt.get() == 0,
        );
        row(
            "verified connections: made / closed by the server / stalled",
            format!(
                "{} / {} / {}",
                t.echo_conns.get(),
                t.echo_dropped.get(),
                t.echo_stalls.get()
            ),
            "- / 0 / 0",
            t.echo_dropped.get() == 0 && t.echo_stalls.get() == 0,
        );
        row(
            "churn connections: echo / game (of which reset mid-packet)",
            format!(
                "{} / {} ({} / {})",
                t.churn_echo.get(),
                t.churn_mmo.get(),
                t.resets_echo.get(),
                t.resets_mmo.get()
            ),
            "> 0",
            t.churn_echo.get() + t.churn_mmo.get() > 0,
        );
        row(
            "connects failed",
            t.connect_errors.get().to_string(),
            "0",
            t.connect_errors.get() == 0,
        );
        row(
            "never-reading clients closed by echo / started",
            format!(
                "{} / {} ({} MiB written)",
                t.never_readers_closed.get(),
                t.never_readers.get(),
                t.never_reader_bytes.get() >> 20
            ),
            &format!("all, within {} s", SLOW_CLOSE.as_secs()),
            t.never_readers_closed.get() == t.never_readers.get(),
        );
        for (k, name) in HOSTILE.iter().enumerate() {
            let limit = if k == 7 { SLOW_CLOSE } else { HOSTILE_CLOSE };
            row(
                &format!("hostile ({name}): closed by mmo / sent"),
                format!("{} / {}", t.hostile_closed[k].get(), t.hostile[k].get()),
                &format!("all, within {} s", limit.as_secs()),
                t.hostile_closed[k].get() == t.hostile[k].get(),
            );
        }
        let (p50, p99, max) = t.answer_us.borrow().as_ref().map_or((0, 0, 0), |h| {
            (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
        });
        row(
            "game logins / refused or stalled",
            format!("{} / {}", t.logins.get(), t.login_fails.get()),
            "- / 0",
            t.login_fails.get() == 0,
        );
        row(
            "player moves answered / sent (unanswered)",
            format!(
                "{} / {} ({})",
                t.moves_answered.get(),
                t.moves_sent.get(),
                t.moves_unanswered.get()
            ),
            &format!("all, within {} s", STALL.as_secs()),
            t.moves_answered.get() > 0 && t.moves_unanswered.get() == 0,
        );
        row(
            "move answer time p50 / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                p50 as f64 / 1e3,
                p99 as f64 / 1e3,
                max as f64 / 1e3
            ),
            "",
            true,
        );
        let npc = self.last_stats.get(1);
        let awake: Vec<u64> = self
            .samples
            .get(1)
            .map_or(Vec::new(), |s| s.iter().map(|x| x.extra).collect());
        row(
            "NPC moves (server) / seen by players; awake NPCs median / max",
            format!(
                "{} / {}; {} / {}",
                npc.and_then(|k| k.get("npc_moves")).copied().unwrap_or(0),
                t.npc_moves_seen.get(),
                median(awake.clone()),
                awake.iter().max().copied().unwrap_or(0)
            ),
            "seen > 0",
            t.npc_moves_seen.get() > 0,
        );
        row(
            "players dropped / bad packets from the server",
            format!(
                "{} / {}",
                t.players_dropped.get(),
                t.bad_server_packets.get()
            ),
            "0 / 0",
            t.players_dropped.get() == 0 && t.bad_server_packets.get() == 0,
        );
        let judged = self.duration >= RSS_JUDGED;
        for (i, name) in ["echo", "mmo"].iter().enumerate() {
            let s = self.samples.get(i).map_or(&[][..], |v| &v[..]);
            let (first, last) = windows(s);
            let rss = |w: &[&Sample]| median(w.iter().map(|x| x.rss_kib).collect());
            let (r0, r1) = (rss(&first), rss(&last));
            let growth = if r0 > 0 {
                (r1 as f64 / r0 as f64 - 1.0) * 100.0
            } else {
                0.0
            };
            row(
                &format!("{name}: RSS median, first / last window"),
                format!(
                    "{:.1} / {:.1} MiB ({growth:+.1} %); max {:.1} MiB",
                    r0 as f64 / 1024.0,
                    r1 as f64 / 1024.0,
                    s.iter().map(|x| x.rss_kib).max().unwrap_or(0) as f64 / 1024.0
                ),
                &if judged {
                    format!("≤ +{} %", self.max_rss_growth_pct)
                } else {
                    format!(
                        "not judged: runs under {} s are warm-up",
                        RSS_JUDGED.as_secs()
                    )
                },
                !judged || (r0 > 0 && growth <= self.max_rss_growth_pct),
            );
            let heap = |w: &[&Sample]| median(w.iter().map(|x| x.heap_used).collect());
            let (h0, h1) = (heap(&first), heap(&last));
            let free = |w: &[&Sample]| median(w.iter().map(|x| x.heap_free).collect());
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            if h0 > 0 {
                let growth = (h1 as f64 / h0 as f64 - 1.0) * 100.0;
                row(
                    &format!("{name}: heap in use median, first / last window (held free)"),
                    format!(
                        "{:.1} / {:.1} MiB ({growth:+.1} %) ({:.1} / {:.1} MiB)",
                        mib(h0),
                        mib(h1),
                        mib(free(&first)),
                        mib(free(&last))
                    ),
                    &if judged {
                        format!("≤ +{} % or ≤ +1 MiB", self.max_heap_growth_pct)
                    } else {
                        format!(
                            "not judged: runs under {} s are warm-up",
                            RSS_JUDGED.as_secs()
                        )
                    },
                    !judged || growth <= self.max_heap_growth_pct || h1 <= h0 + (1 << 20),
                );
            }
            let fds = |w: &[&Sample]| w.iter().map(|x| x.fds).max().unwrap_or(0);
            let (i0, i1) = (self.idle_start[i], self.idle_end[i]);
            row(
                &format!("{name}: fds max first / last window; idle before / after"),
                format!("{} / {}; {i0} / {i1}", fds(&first), fds(&last)),
                "after ≤ before",
                i1 <= i0,
            );
            let open: Vec<u64> = s.iter().map(|x| x.open).collect();
            let queued = s.iter().map(|x| x.queued).max().unwrap_or(0);
            row(
                &format!("{name}: sessions median / max; queued bytes max"),
                format!(
                    "{} / {}; {} KiB",
                    median(open.clone()),
                    open.iter().max().copied().unwrap_or(0),
                    queued / 1024
                ),
                "",
                true,
            );
            let (open, players) = self.leaked[i];
            row(
                &format!("{name}: sessions leaked (open after all clients closed)"),
                match players {
                    Some(p) => format!("{open} (players {p})"),
                    None => open.to_string(),
                },
                "0",
                open == 0 && players.is_none_or(|p| p == 0),
            );
            if let Some(kv) = self.last_stats.get(i) {
                let mut closes: Vec<String> = kv
                    .iter()
                    .filter(|(k, v)| k.starts_with("closed_") && **v > 0)
                    .map(|(k, v)| format!("{}={v}", &k["closed_".len()..]))
                    .collect();
                closes.sort();
                row(
                    &format!("{name}: sessions accepted; closed by reason"),
                    format!(
                        "{}; {}",
                        kv.get("accepted").copied().unwrap_or(0),
                        closes.join(" ")
                    ),
                    "",
                    true,
                );
            }
            let exit = self.exits.iter().find(|(n, _)| n == name).map(|(_, e)| e);
            let (fig, ok) = match exit {
                Some(Exit::Stopped(st, took)) => (
                    format!(
                        "ran throughout; SIGTERM → {st} in {:.2} s",
                        took.as_secs_f64()
                    ),
                    st.success(),
                ),
                Some(Exit::Died(st)) => (format!("DIED during the run: {st}"), false),
                Some(Exit::Hung) => ("did not exit within 15 s of SIGTERM".into(), false),
                None => ("unknown".into(), false),
            };
            row(&format!("{name}: crashes"), fig, "none, exit 0", ok);
        }
        rows
    }

    /// The table (markdown) and the failed rows.
    fn render(&self) -> (String, Vec<String>) {
        let rows = self.rows();
        let mut out = String::from("| check | figure | pass when | |\n|---|---|---|---|\n");
        let mut failures = Vec::new();
        for (what, fig, thr, ok) in rows {
            let _ = writeln!(
                out,
                "| {what} | {fig} | {thr} | {} |",
                if ok { "ok" } else { "FAIL" }
            );
            if !ok {
                failures.push(what);
            }
        }
        (out, failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_does_not_depend_on_chunking() {
        let mut whole = vec![0u8; 10_000];
        Pattern::new(42).fill(&mut whole);
        let mut p = Pattern::new(42);
        let mut r = Rand(1);
        let mut parts = Vec::new();
        while parts.len() < whole.len() {
            let n = (r.range(1, 300) as usize).min(whole.len() - parts.len());
            let mut c = vec![0u8; n];
            p.fill(&mut c);
            parts.extend_from_slice(&c);
        }
        assert_eq!(parts, whole);
        let mut other = vec![0u8; 10_000];
        Pattern::new(43).fill(&mut other);
        assert_ne!(other, whole);
    }

    #[test]
    fn every_hostile_packet_is_refused_by_the_decoder() {
        let mut r = Rand(7);
        for kind in 0..HOSTILE.len() - 1 {
            for _ in 0..50 {
                let b = hostile_bytes(kind, &mut r);
                // The size field alone is out of range (the codec refuses it at once), or
                // the packet is whole and is not a login (refused before login).
                let size = b[0] as usize;
                let out_of_range = size < protocol::header_len(H)
                    || size > protocol::header_len(H) + protocol::CHAT_SIZE;
                let refused = protocol::frame_len(&b, H).is_some_and(|n| {
                    !matches!(
                        ClientPacket::decode(&b[..n], H),
                        Ok(ClientPacket::Login { .. })
                    )
                });
                assert!(out_of_range || refused, "kind {kind}: {b:?}");
            }
        }
    }

    struct Fixture {
        duration: Duration,
        t: Tally,
        samples: Vec<Vec<Sample>>,
        idle_end: [u64; 2],
        leaked: [(u64, Option<u64>); 2],
        exits: Vec<(&'static str, Exit)>,
    }

    /// The failed rows of a clean run's report after `fault` changed it.
    fn failures(fault: impl FnOnce(&mut Fixture)) -> Vec<String> {
        let t = Tally::default();
        t.echo_sent.set(1000);
        t.echo_verified.set(1000);
        t.churn_echo.set(3);
        t.moves_sent.set(5);
        t.moves_answered.set(5);
        t.npc_moves_seen.set(9);
        let sample = |t: f64| Sample {
            t,
            rss_kib: 10_000,
            fds: 20,
            heap_used: 5 << 20,
            ..Sample::default()
        };
        let ok = ExitStatus::default();
        let mut f = Fixture {
            duration: Duration::from_secs(270),
            t,
            samples: vec![(0..10).map(|i| sample(i as f64 * 30.0)).collect::<Vec<_>>(); 2],
            idle_end: [12, 12],
            leaked: [(0, None), (0, Some(0))],
            exits: vec![
                ("echo", Exit::Stopped(ok, Duration::ZERO)),
                ("mmo", Exit::Stopped(ok, Duration::ZERO)),
            ],
        };
        fault(&mut f);
        let report = Report {
            duration: f.duration,
            tally: &f.t,
            samples: &f.samples,
            idle_start: &[12, 12],
            idle_end: &f.idle_end,
            leaked: &f.leaked,
            last_stats: &[HashMap::new(), HashMap::new()],
            exits: &f.exits,
            max_rss_growth_pct: 25.0,
            max_heap_growth_pct: 10.0,
        };
        report.render().1
    }

    #[test]
    fn the_verdict_fails_on_each_kind_of_fault() {
        assert_eq!(failures(|_| {}), Vec::<String>::new());
        let lost = ["echo bytes lost / corrupted"];
        assert_eq!(failures(|f| f.t.echo_lost.set(1)), lost);
        assert_eq!(failures(|f| f.t.echo_corrupt.set(1)), lost);
        assert_eq!(
            failures(|f| f.idle_end[1] = 13),
            ["mmo: fds max first / last window; idle before / after"]
        );
        let rss = failures(|f| {
            for x in f.samples[0].iter_mut().skip(7) {
                x.rss_kib = 20_000;
            }
        });
        assert_eq!(rss, ["echo: RSS median, first / last window"]);
        let heap = failures(|f| {
            for x in f.samples[1].iter_mut().skip(7) {
                x.heap_used = 7 << 20;
            }
        });
        assert_eq!(
            heap,
            ["mmo: heap in use median, first / last window (held free)"]
        );
        let short = failures(|f| {
            f.duration = Duration::from_secs(60);
            for x in f.samples[0].iter_mut().skip(7) {
                x.rss_kib = 20_000;
            }
        });
        assert_eq!(
            short,
            Vec::<String>::new(),
            "a short run's RSS is not judged"
        );
        assert_eq!(
            failures(|f| f.leaked[0].0 = 1),
            ["echo: sessions leaked (open after all clients closed)"]
        );
        assert_eq!(
            failures(|f| f.leaked[1].1 = Some(1)),
            ["mmo: sessions leaked (open after all clients closed)"]
        );
        assert_eq!(failures(|f| f.exits[0].1 = Exit::Hung), ["echo: crashes"]);
        assert_eq!(
            failures(|f| f.exits[1].1 = Exit::Died(ExitStatus::default())),
            ["mmo: crashes"]
        );
        assert_eq!(
            failures(|f| f.t.hostile[2].set(1)),
            ["hostile (size over the max): closed by mmo / sent"]
        );
        assert_eq!(
            failures(|f| f.t.moves_unanswered.set(1)),
            ["player moves answered / sent (unanswered)"]
        );
        assert_eq!(
            failures(|f| f.t.never_readers.set(1)),
            ["never-reading clients closed by echo / started"]
        );
        assert_eq!(
            failures(|f| f.t.echo_verified.set(0)).len(),
            1,
            "a run that verified nothing fails"
        );
    }
}
