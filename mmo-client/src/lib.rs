//! # cport-mmo-client — the course's stress tester, on the port (`cport stress`, `cport demo`)
//!
//! Dummies connect one at a time, each logging in (`CS_LOGIN`, name `dummyN`) and teleporting
//! (`CS_TELEPORT`), then sending `CS_MOVE` in a random direction about once a second with
//! `move_time` = the client's clock in ms. When a dummy receives `SC_MOVE_OBJECT` for its own
//! id (learned from `SC_LOGIN_INFO`), `delay = now − move_time` feeds the course's slow
//! [`DelayTracker`] (1 ms toward each sample) and a per-second latency histogram (p50, p95,
//! p99). The course's [`Ramp`] adds and sheds clients from the tracked delay; the result is
//! the highest number of clients held while the tracked delay stayed under the limit.
//!
//! Every server packet is framed and decoded; each dummy keeps the picture its packets paint
//! (objects in view, where they are), from which [`MapSnapshot`] draws the board.
//!
//! The client is one [`Port`] with a few workers ([`Pool`]): sockets are associated with the
//! key `generation << 32 | slot`, connects, receives and sends are port operations, and each
//! dummy's move schedule is a port timer ([`Port::post_after`]). One controller thread (the
//! caller's) runs the ramp and the per-second series.

#![warn(missing_docs)]

pub mod multi;
mod ramp;

pub use multi::ChildSummary;
pub use ramp::{Action, DelayTracker, Ramp};

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cport_server::cport::{Aborted, Backend, Completion, Op, Pool, Port, Socket, TimerId};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use cport_mmo_proto::splitmix64;
use cport_mmo_proto::{frame_len, name, ClientPacket, Direction, ServerPacket, SizeField};

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The game server.
    pub addr: SocketAddr,
    /// Its header width.
    pub header: SizeField,
    /// Most clients at once.
    pub max_clients: usize,
    /// The delay limit (ms): 100 in the course; shedding starts above 1.5 × this.
    pub delay_limit_ms: u64,
    /// How long the whole run lasts (every loop is bounded by it).
    pub duration: Duration,
    /// Time between adds under the limit (the course: 50 ms).
    pub ramp_interval: Duration,
    /// Time between sheds above 1.5 × the limit (the course: 500 ms).
    pub shed_interval: Duration,
    /// How often each dummy moves (jittered ±5%; the course: once a second).
    pub move_interval: Duration,
    /// Client worker threads.
    pub threads: usize,
    /// The client's own port backend (`None`: default).
    pub backend: Option<Backend>,
    /// Object ids from this up are NPCs (the server's `max_users`).
    pub npc_ids_from: u32,
    /// Keep each dummy's picture of the objects it sees (for the map).
    pub keep_picture: bool,
    /// With several client processes: have them send their maps once a second (for a live
    /// view's [`Probe`]; the map at the end is always sent).
    pub live_map: bool,
}

impl Settings {
    /// The course's settings against `addr`, for `duration`.
    pub fn new(addr: SocketAddr, duration: Duration) -> Settings {
        Settings {
            addr,
            header: SizeField::U8,
            max_clients: 20_000,
            delay_limit_ms: 100,
            duration,
            ramp_interval: Duration::from_millis(50),
            shed_interval: Duration::from_millis(500),
            move_interval: Duration::from_secs(1),
            threads: 2,
            backend: None,
            npc_ids_from: cport_mmo_proto::MAX_USER as u32,
            keep_picture: true,
            live_map: false,
        }
    }
}

/// The settings as the report shows them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingsReport {
    /// The game server.
    pub addr: String,
    /// `u8` or `u16`.
    pub header: String,
    /// Most clients at once (after the open-files limit).
    pub max_clients: usize,
    /// The delay limit.
    pub delay_limit_ms: u64,
    /// The run's length.
    pub duration_s: f64,
    /// Time between adds under the limit.
    pub ramp_interval_ms: f64,
    /// Time between sheds.
    pub shed_interval_ms: f64,
    /// Time between a dummy's moves.
    pub move_interval_ms: f64,
    /// Client worker threads.
    pub client_threads: usize,
    /// The client port's backend.
    pub client_backend: String,
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the start (end of this second).
    pub t: f64,
    /// Clients logged in.
    pub clients: usize,
    /// Clients started and not closed (connecting, logging in, in game).
    pub live: usize,
    /// The course's tracked delay at the end of this second.
    pub tracked_delay_ms: u64,
    /// The highest tracked delay the ramp saw during this second.
    pub tracked_max_ms: u64,
    /// Delay samples in this second.
    pub samples: u64,
    /// Median delay in this second (0 without samples).
    pub p50_ms: u64,
    /// 95th percentile.
    pub p95_ms: u64,
    /// 99th percentile.
    pub p99_ms: u64,
    /// Largest.
    pub max_ms: u64,
    /// Server packets received per second.
    pub packets_in_per_s: u64,
    /// Client packets sent per second.
    pub packets_out_per_s: u64,
    /// Errors so far (all kinds).
    pub errors: u64,
    /// The highest number of clients logged in while the tracked delay was under the limit,
    /// so far (the report's `max_clients_under_limit` at this point of the run).
    pub max_under_limit: usize,
}

/// Errors met, by kind (counted, never hidden).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    /// Connects refused (`ECONNREFUSED`: nothing listening, or the backlog full).
    pub connect_refused: u64,
    /// Connects that failed otherwise (timeouts, resets).
    pub connect_failed: u64,
    /// Sockets that could not be created (`EMFILE`/`ENFILE`: the open-files limit).
    pub fd_limit: u64,
    /// Connections the server closed or reset while the dummy was in use.
    pub server_closed: u64,
    /// `SC_LOGIN_FAIL`s.
    pub login_fail: u64,
    /// Server packets that did not decode.
    pub protocol: u64,
    /// Sends that failed.
    pub send_failed: u64,
}

impl Errors {
    /// All kinds together.
    pub fn total(&self) -> u64 {
        self.connect_refused
            + self.connect_failed
            + self.fd_limit
            + self.server_closed
            + self.login_fail
            + self.protocol
            + self.send_failed
    }
}

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (connect refused {}, connect failed {}, fd limit {}, server closed {}, login fail {}, protocol {}, send failed {})",
            self.total(),
            self.connect_refused,
            self.connect_failed,
            self.fd_limit,
            self.server_closed,
            self.login_fail,
            self.protocol,
            self.send_failed
        )
    }
}

/// What a run measured (written by `--json`, read back by `cport bench mmo`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The highest number of clients logged in while the tracked delay was under the limit.
    pub max_clients_under_limit: usize,
    /// The most clients logged in at once.
    pub peak_clients: usize,
    /// The maximum the ramp recorded at its last excursion above 1.5 × the limit.
    pub ramp_max_recorded: Option<usize>,
    /// The tracked delay at the end.
    pub final_tracked_delay_ms: u64,
    /// Clients logged in at the end.
    pub final_clients: usize,
    /// Dummies started (connects attempted).
    pub clients_started: u64,
    /// Dummies shed by the ramp.
    pub clients_shed: u64,
    /// Delay samples in all.
    pub delay_samples: u64,
    /// Delay percentiles over the whole run.
    pub p50_ms: u64,
    /// 99th percentile over the whole run.
    pub p99_ms: u64,
    /// Largest delay seen.
    pub max_ms: u64,
    /// Server packets received.
    pub packets_in: u64,
    /// Client packets sent.
    pub packets_out: u64,
    /// The per-second series.
    pub series: Vec<Second>,
    /// Errors met.
    pub errors: Errors,
    /// The open-files limit, when it capped `max_clients` (with several client processes:
    /// the sum of what theirs allow).
    pub fd_limited_to: Option<usize>,
    /// The highest player id the server gave a dummy (ids are dense from 0: with no client
    /// shed or lost, it is `clients_started − 1`).
    pub max_player_id: Option<u32>,
    /// Client processes (1: this one alone; more: `children` did the sockets).
    pub procs: usize,
    /// With several client processes, what each did (the counts above are their sums).
    pub children: Vec<ChildSummary>,
    /// The client's CPU time (user + system) during the run.
    pub client_cpu_s: f64,
    /// The client's CPU use as a share of one core.
    pub client_cpu_pct: f64,
    /// The server's, when it was spawned (filled in by the caller).
    pub server_cpu_s: Option<f64>,
    /// The server's startup line, when spawned (filled in by the caller).
    pub server: Option<String>,
    /// How long the run lasted.
    pub elapsed_s: f64,
    /// Why it ended early, if it did.
    pub stopped_early: Option<String>,
    /// The settings.
    pub settings: SettingsReport,
}

/// Where the dummies are and the NPCs they see (awake NPCs: an NPC is awake exactly when
/// some player sees it): at the end of the run ([`run`]), or now ([`Probe::map`]).
#[derive(Debug, Clone, Default)]
pub struct MapSnapshot {
    /// Board width and height.
    pub world_size: u16,
    /// The dummies' own positions.
    pub players: Vec<(i16, i16)>,
    /// NPCs some dummy sees (each once).
    pub npcs: Vec<(i16, i16)>,
}

const RECV_BUF: usize = 4096;
const U_CONNECT: u64 = 1;
const U_SEND: u64 = 2;
const U_RECV: u64 = 3;
const U_MOVE: u64 = 4;
const HIST_SHARDS: usize = 32;
/// Delay samples above this (ms) are bogus (a clock that wrapped, a stale `move_time`).
const MAX_DELAY_MS: u64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Free,
    Connecting,
    LoggingIn,
    InGame,
}

struct Dummy {
    gen: u32,
    phase: Phase,
    sock: Option<Socket>,
    id: i32,
    pos: (i16, i16),
    picture: HashMap<i32, (i16, i16)>,
    timer: Option<TimerId>,
    rng: u64,
}

#[derive(Default)]
struct ErrCounters {
    connect_refused: AtomicU64,
    connect_failed: AtomicU64,
    fd_limit: AtomicU64,
    server_closed: AtomicU64,
    login_fail: AtomicU64,
    protocol: AtomicU64,
    send_failed: AtomicU64,
}

impl ErrCounters {
    fn get(&self) -> Errors {
        Errors {
            connect_refused: self.connect_refused.load(Relaxed),
            connect_failed: self.connect_failed.load(Relaxed),
            fd_limit: self.fd_limit.load(Relaxed),
            server_closed: self.server_closed.load(Relaxed),
            login_fail: self.login_fail.load(Relaxed),
            protocol: self.protocol.load(Relaxed),
            send_failed: self.send_failed.load(Relaxed),
        }
    }
}

struct Shared {
    addr: SocketAddr,
    header: SizeField,
    move_interval: Duration,
    npc_ids_from: u32,
    keep_picture: bool,
    port: Port,
    slots: Vec<Mutex<Dummy>>,
    free: Mutex<Vec<u32>>,
    /// Started dummies, oldest first (`(slot, generation)`; stale entries are skipped).
    order: Mutex<VecDeque<(u32, u32)>>,
    clock0: Instant,
    tracker: DelayTracker,
    hists: Vec<Mutex<Histogram<u64>>>,
    live: AtomicUsize,
    active: AtomicUsize,
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    samples: AtomicU64,
    errors: ErrCounters,
    stop: AtomicBool,
    /// Login names are `{name_prefix}{slot}_{generation}` (unique across the processes of a
    /// multi-process run).
    name_prefix: String,
    /// A child of a multi-process run: every delay sample is also kept here for the parent,
    /// whose tracker is the global one.
    forward: Option<Mutex<Vec<u32>>>,
    /// The highest player id a `SC_LOGIN_INFO` gave (−1: none yet).
    max_id: AtomicI64,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_DELAY_MS, 3).expect("histogram bounds")
}

fn key(slot: u32, gen: u32) -> u64 {
    (gen as u64) << 32 | slot as u64
}

impl Shared {
    /// The client's clock in ms (`move_time`): never 0 in the first 49 days, so that a
    /// `move_time` of 0 (a teleport before any move, an NPC) is never taken for a sample.
    fn now_ms(&self) -> u32 {
        (self.clock0.elapsed().as_millis() as u32).wrapping_add(1)
    }

    fn send(&self, d: &Dummy, bytes: Vec<u8>, packets: u64) {
        if let Some(s) = &d.sock {
            s.send(bytes, U_SEND);
            self.packets_out.fetch_add(packets, Relaxed);
        }
    }

    /// Closes a dummy and frees its slot. Completions of its operations still to come carry
    /// the old generation and are ignored.
    fn close(&self, slot: u32, d: &mut Dummy) {
        if d.phase == Phase::Free {
            return;
        }
        if let Some(t) = d.timer.take() {
            self.port.cancel_timer(t);
        }
        d.sock = None;
        if d.phase == Phase::InGame {
            self.active.fetch_sub(1, Relaxed);
        }
        self.live.fetch_sub(1, Relaxed);
        d.phase = Phase::Free;
        d.gen = d.gen.wrapping_add(1);
        d.picture = HashMap::new();
        self.free.lock().push(slot);
    }

    fn schedule_move(&self, slot: u32, d: &mut Dummy, first: bool) {
        d.rng = splitmix64(d.rng);
        let ms = self.move_interval.as_millis().max(1) as u64;
        let delay = if first {
            // Spread the first moves over one interval.
            d.rng % ms
        } else {
            // ±5% jitter.
            let j = (ms / 10).max(1);
            ms - ms / 20 + d.rng % j
        };
        d.timer = self
            .port
            .post_after(Duration::from_millis(delay), key(slot, d.gen), U_MOVE)
            .ok();
    }
}

#[derive(Debug)]
enum AddError {
    Full,
    FdLimit(io::Error),
    Other(io::Error),
}

/// Starts one dummy: a socket, associated, connecting.
fn add(sh: &Shared, n: u64) -> Result<(), AddError> {
    let Some(slot) = sh.free.lock().pop() else {
        return Err(AddError::Full);
    };
    let give_back = |e| {
        sh.free.lock().push(slot);
        e
    };
    let domain = socket2::Domain::for_address(sh.addr);
    let s = match socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
    {
        Ok(s) => s,
        Err(e) if cport_server::os::out_of_descriptors(&e) => {
            sh.errors.fd_limit.fetch_add(1, Relaxed);
            return Err(give_back(AddError::FdLimit(e)));
        }
        Err(e) => return Err(give_back(AddError::Other(e))),
    };
    if let Err(e) = s.set_tcp_nodelay(true) {
        return Err(give_back(AddError::Other(e)));
    }
    let mut d = sh.slots[slot as usize].lock();
    let gen = d.gen;
    let sock = match sh.port.associate(s, key(slot, gen)) {
        Ok(s) => s,
        Err(e) => {
            drop(d);
            return Err(give_back(AddError::Other(e)));
        }
    };
    d.phase = Phase::Connecting;
    d.id = -1;
    d.rng = splitmix64(n ^ 0x5EED);
    sock.connect(sh.addr, U_CONNECT);
    d.sock = Some(sock);
    sh.live.fetch_add(1, Relaxed);
    drop(d);
    sh.order.lock().push_back((slot, gen));
    Ok(())
}

/// Disconnects the oldest dummy still open; false if none.
fn shed(sh: &Shared) -> bool {
    loop {
        let Some((slot, gen)) = sh.order.lock().pop_front() else {
            return false;
        };
        let mut d = sh.slots[slot as usize].lock();
        if d.gen == gen && d.phase != Phase::Free {
            sh.close(slot, &mut d);
            return true;
        }
    }
}

fn on_completion(sh: &Shared, c: Completion) {
    let slot = (c.key & 0xffff_ffff) as u32;
    let gen = (c.key >> 32) as u32;
    let Some(cell) = sh.slots.get(slot as usize) else {
        return;
    };
    let mut d = cell.lock();
    if d.gen != gen || d.phase == Phase::Free {
        return;
    }
    let stopping = sh.stop.load(Relaxed);
    match c.op {
        Op::Connect => match c.result {
            Ok(_) => {
                let mut out = Vec::with_capacity(32);
                ClientPacket::Login {
                    name: name(&format!("{}{slot}_{gen}", sh.name_prefix)),
                }
                .encode_into(sh.header, &mut out);
                ClientPacket::Teleport.encode_into(sh.header, &mut out);
                sh.send(&d, out, 2);
                d.phase = Phase::LoggingIn;
                if let Some(s) = &d.sock {
                    s.recv(Vec::with_capacity(RECV_BUF), U_RECV);
                }
            }
            Err(e) => {
                if e.is_aborted() || stopping {
                    return;
                }
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    sh.errors.connect_refused.fetch_add(1, Relaxed);
                } else {
                    sh.errors.connect_failed.fetch_add(1, Relaxed);
                }
                tracing::debug!("stress connect: {e}");
                sh.close(slot, &mut d);
            }
        },
        Op::Recv(mut buf) => match c.result {
            Ok(n) if n > 0 => {
                if on_bytes(sh, slot, &mut d, &mut buf) {
                    sh.close(slot, &mut d);
                    return;
                }
                if buf.capacity() - buf.len() < 256 {
                    buf.reserve(RECV_BUF);
                }
                if let Some(s) = &d.sock {
                    s.recv(buf, U_RECV);
                }
            }
            other => {
                if matches!(&other, Err(e) if e.is_aborted()) || stopping {
                    return;
                }
                sh.errors.server_closed.fetch_add(1, Relaxed);
                sh.close(slot, &mut d);
            }
        },
        Op::Send(_) => {
            if let Err(e) = &c.result {
                if !e.is_aborted() && !stopping {
                    tracing::debug!("stress send: {e}");
                    sh.errors.send_failed.fetch_add(1, Relaxed);
                    sh.close(slot, &mut d);
                }
            }
        }
        Op::Timer(_) => {
            d.timer = None;
            if d.phase == Phase::InGame && !stopping {
                d.rng = splitmix64(d.rng);
                let direction = Direction::ALL[(d.rng >> 32) as usize % 4];
                let mut out = Vec::with_capacity(8);
                ClientPacket::Move {
                    direction,
                    move_time: sh.now_ms(),
                }
                .encode_into(sh.header, &mut out);
                sh.send(&d, out, 1);
                sh.schedule_move(slot, &mut d, false);
            }
        }
        _ => {}
    }
}

/// Frames and handles what arrived in `buf`, leaving a partial packet at its front. True
/// when the dummy must close (login refused).
fn on_bytes(sh: &Shared, slot: u32, d: &mut Dummy, buf: &mut Vec<u8>) -> bool {
    let h = sh.header;
    let mut off = 0;
    let mut packets = 0;
    let mut close = false;
    let mut now_ms = None;
    while let Some(len) = frame_len(&buf[off..], h) {
        let pkt = &buf[off..off + len];
        off += len;
        packets += 1;
        let p = match ServerPacket::decode(pkt, h) {
            Ok(p) => p,
            Err(e) => {
                if sh.errors.protocol.fetch_add(1, Relaxed) == 0 {
                    tracing::warn!("stress: undecodable server packet: {e}");
                }
                continue;
            }
        };
        match p {
            ServerPacket::LoginInfo { id, x, y, .. } => {
                if d.phase == Phase::LoggingIn {
                    d.id = id;
                    d.pos = (x, y);
                    d.phase = Phase::InGame;
                    sh.max_id.fetch_max(i64::from(id), Relaxed);
                    sh.active.fetch_add(1, Relaxed);
                    sh.schedule_move(slot, d, true);
                }
            }
            ServerPacket::LoginFail => {
                sh.errors.login_fail.fetch_add(1, Relaxed);
                close = true;
                break;
            }
            ServerPacket::AddObject { id, x, y, .. } => {
                if id == d.id {
                    d.pos = (x, y);
                } else if sh.keep_picture {
                    d.picture.insert(id, (x, y));
                }
            }
            ServerPacket::MoveObject {
                id,
                x,
                y,
                move_time,
            } => {
                if id == d.id {
                    d.pos = (x, y);
                    if move_time != 0 {
                        let now = *now_ms.get_or_insert_with(|| sh.now_ms());
                        let delay = now.wrapping_sub(move_time) as u64;
                        if delay < MAX_DELAY_MS {
                            sh.tracker.sample(delay);
                            sh.samples.fetch_add(1, Relaxed);
                            if let Some(f) = &sh.forward {
                                f.lock().push(delay as u32);
                            }
                            let _ = sh.hists[slot as usize % HIST_SHARDS].lock().record(delay);
                        }
                    }
                } else if sh.keep_picture {
                    d.picture.insert(id, (x, y));
                }
            }
            ServerPacket::RemoveObject { id } => {
                d.picture.remove(&id);
            }
            ServerPacket::Chat { .. } | ServerPacket::LoginOk | ServerPacket::StatChange { .. } => {
            }
        }
    }
    sh.packets_in.fetch_add(packets, Relaxed);
    buf.drain(..off);
    close
}

/// User + system CPU time of this process (all threads).
pub fn self_cpu_time() -> Duration {
    cport_server::os::process_cpu_time()
}

use cport_server::os::fd_soft_limit;

/// Descriptors kept free for everything else of the process (the port, stdio, files).
const FD_RESERVE: u64 = 64;

/// A handle on a running test that another thread can sample: [`Probe::map`] draws the board
/// as the dummies see it now, from the same pictures as the map [`run`] returns at the end.
///
/// It holds the run weakly: once the run has returned, `map` gives `None`. Sampling locks each
/// dummy in turn for as long as it takes to copy its position and the NPCs it sees, as the
/// end-of-run map does; nothing is kept or computed for it between samples.
///
/// With several client processes ([`multi`]) the map is the one the children last sent
/// (once a second when [`Settings::live_map`] is set; none otherwise).
#[derive(Clone)]
pub struct Probe(ProbeOf);

#[derive(Clone)]
enum ProbeOf {
    Local(std::sync::Weak<Shared>),
    Remote(std::sync::Weak<Mutex<Option<MapSnapshot>>>),
}

impl Probe {
    /// The dummies' positions and the awake NPCs they see, now; `None` once the run is over.
    pub fn map(&self) -> Option<MapSnapshot> {
        match &self.0 {
            ProbeOf::Local(sh) => {
                let sh = sh.upgrade()?;
                if sh.stop.load(Relaxed) {
                    return None;
                }
                Some(snapshot(&sh))
            }
            ProbeOf::Remote(m) => m.upgrade()?.lock().clone(),
        }
    }
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let running = match &self.0 {
            ProbeOf::Local(sh) => sh.strong_count() > 0,
            ProbeOf::Remote(m) => m.strong_count() > 0,
        };
        f.debug_struct("Probe").field("running", &running).finish()
    }
}

/// The sockets' side of a run: the port, its workers and the dummies, without the ramp (the
/// caller says when to add and shed: this process's ramp, or a parent's).
struct Engine {
    sh: Arc<Shared>,
    pool: Pool,
    max_clients: usize,
    fd_limited_to: Option<usize>,
    client_backend: String,
    cpu0: Duration,
}

impl Engine {
    /// At most `settings.max_clients`, fewer if the open-files limit says so.
    fn start(settings: &Settings, name_prefix: String, forward: bool) -> io::Result<Engine> {
        let cpu0 = self_cpu_time();
        let mut max_clients = settings.max_clients.max(1);
        let mut fd_limited_to = None;
        if let Some(soft) = fd_soft_limit() {
            let room = soft.saturating_sub(FD_RESERVE) as usize;
            if room < max_clients {
                fd_limited_to = Some(room);
                max_clients = room.max(1);
            }
        }
        let mut b = Port::builder().concurrency(settings.threads.max(1));
        if let Some(backend) = settings.backend {
            b = b.backend(backend).ignore_env();
        }
        let port = b.build()?;
        let client_backend = port.backend().to_string();
        let sh = Arc::new(Shared {
            addr: settings.addr,
            header: settings.header,
            move_interval: settings.move_interval,
            npc_ids_from: settings.npc_ids_from,
            keep_picture: settings.keep_picture,
            port: port.clone(),
            slots: (0..max_clients)
                .map(|_| {
                    Mutex::new(Dummy {
                        gen: 0,
                        phase: Phase::Free,
                        sock: None,
                        id: -1,
                        pos: (0, 0),
                        picture: HashMap::new(),
                        timer: None,
                        rng: 0,
                    })
                })
                .collect(),
            free: Mutex::new((0..max_clients as u32).rev().collect()),
            order: Mutex::new(VecDeque::with_capacity(max_clients)),
            clock0: Instant::now(),
            tracker: DelayTracker::new(),
            hists: (0..HIST_SHARDS).map(|_| Mutex::new(new_hist())).collect(),
            live: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            packets_in: AtomicU64::new(0),
            packets_out: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            errors: ErrCounters::default(),
            stop: AtomicBool::new(false),
            name_prefix,
            forward: forward.then(|| Mutex::new(Vec::new())),
            max_id: AtomicI64::new(-1),
        });
        let sh2 = sh.clone();
        let pool = Pool::spawn(&port, settings.threads.max(1), move |_, c| {
            on_completion(&sh2, c)
        })?;
        Ok(Engine {
            sh,
            pool,
            max_clients,
            fd_limited_to,
            client_backend,
            cpu0,
        })
    }

    /// Stops the workers and closes every socket (nothing more is delivered).
    fn stop(self) -> Duration {
        self.sh.stop.store(true, Relaxed);
        self.pool.shutdown();
        for s in &self.sh.slots {
            s.lock().sock = None;
        }
        self_cpu_time().saturating_sub(self.cpu0)
    }

    fn max_player_id(&self) -> Option<u32> {
        u32::try_from(self.sh.max_id.load(Relaxed)).ok()
    }
}

/// Runs the stress test until `settings.duration` has passed or `stop` is set, calling
/// `on_second` once a second (for a progress line). Returns the report and the map at the
/// end.
pub fn run(
    settings: &Settings,
    stop: &AtomicBool,
    mut on_second: impl FnMut(&Second, &Errors),
) -> io::Result<(Report, MapSnapshot)> {
    run_with_probe(settings, stop, |s, e, _| on_second(s, e))
}

/// [`run`], with a [`Probe`] handed to `on_second` as well, for a live view that samples the
/// map (clone it to another thread; the callback runs on the thread that drives the ramp, so
/// it should return quickly).
pub fn run_with_probe(
    settings: &Settings,
    stop: &AtomicBool,
    mut on_second: impl FnMut(&Second, &Errors, &Probe),
) -> io::Result<(Report, MapSnapshot)> {
    let engine = Engine::start(settings, "dummy".into(), false)?;
    let sh = engine.sh.clone();
    let max_clients = engine.max_clients;
    let mut fd_limited_to = engine.fd_limited_to;
    let probe = Probe(ProbeOf::Local(Arc::downgrade(&sh)));

    let start = Instant::now();
    let end = start + settings.duration;
    let mut ramp = Ramp::new(settings.ramp_interval, settings.delay_limit_ms, max_clients);
    ramp.shed_interval = settings.shed_interval;
    // Ticks well below the ramp's pace, so that adds come close to on time.
    let tick =
        (settings.ramp_interval / 4).clamp(Duration::from_micros(200), Duration::from_millis(5));
    let mut series = Vec::new();
    let mut whole = new_hist();
    let mut next_second = start + Duration::from_secs(1);
    let (mut last_in, mut last_out) = (0u64, 0u64);
    let mut last_t = start;
    let (mut started, mut shed_count) = (0u64, 0u64);
    let (mut max_under, mut peak) = (0usize, 0usize);
    let mut stopped_early = None;
    let mut fd_warned = false;
    let mut tracked_max = 0;
    let (mut refusing, mut last_refused) = (0u32, 0u64);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if stop.load(Relaxed) {
            stopped_early = Some("interrupted".to_string());
            break;
        }
        let tracked = sh.tracker.get();
        let live = sh.live.load(Relaxed);
        let active = sh.active.load(Relaxed);
        peak = peak.max(active);
        tracked_max = tracked_max.max(tracked);
        if tracked < settings.delay_limit_ms {
            max_under = max_under.max(active);
        }
        match ramp.step(now - start, tracked, live) {
            Action::Add => match add(&sh, started) {
                Ok(()) => started += 1,
                Err(AddError::Full) => {}
                Err(AddError::FdLimit(e)) => {
                    // Hold here: the open-files limit is the cap from now on.
                    ramp.cap = live;
                    if !fd_warned {
                        fd_warned = true;
                        fd_limited_to = Some(live);
                        tracing::warn!(
                            "stress: the open-files limit stops the ramp at {live} clients ({e})"
                        );
                    }
                }
                Err(AddError::Other(e)) => {
                    sh.errors.connect_failed.fetch_add(1, Relaxed);
                    tracing::debug!("stress: could not start a client: {e}");
                }
            },
            Action::Shed => {
                if shed(&sh) {
                    shed_count += 1;
                }
            }
            Action::Wait => {}
        }
        if now >= next_second {
            let mut h = new_hist();
            for s in &sh.hists {
                let mut s = s.lock();
                h.add(&*s).expect("same bounds");
                s.reset();
            }
            whole.add(&h).expect("same bounds");
            let (pin, pout) = (sh.packets_in.load(Relaxed), sh.packets_out.load(Relaxed));
            let dt = now.duration_since(last_t).as_secs_f64().max(1e-3);
            let errors = sh.errors.get();
            let sec = Second {
                t: (now - start).as_secs_f64(),
                clients: active,
                live,
                tracked_delay_ms: tracked,
                tracked_max_ms: std::mem::take(&mut tracked_max),
                samples: h.len(),
                p50_ms: h.value_at_quantile(0.5),
                p95_ms: h.value_at_quantile(0.95),
                p99_ms: h.value_at_quantile(0.99),
                max_ms: h.max(),
                packets_in_per_s: ((pin - last_in) as f64 / dt).round() as u64,
                packets_out_per_s: ((pout - last_out) as f64 / dt).round() as u64,
                errors: errors.total(),
                max_under_limit: max_under,
            };
            (last_in, last_out, last_t) = (pin, pout, now);
            // Server gone: connects refused for 3 seconds running and nobody in game.
            let refused = errors.connect_refused + errors.connect_failed;
            refusing = if refused > last_refused && active == 0 {
                refusing + 1
            } else {
                0
            };
            last_refused = refused;
            on_second(&sec, &errors, &probe);
            series.push(sec);
            next_second += Duration::from_secs(1);
            if refusing >= 3 {
                stopped_early = Some(format!(
                    "the server refused every connect for {refusing} s: gone?"
                ));
                break;
            }
        }
        std::thread::sleep(tick);
    }
    let elapsed = start.elapsed();
    let final_clients = sh.active.load(Relaxed);
    let final_tracked = sh.tracker.get();
    let map = snapshot(&sh);
    let max_player_id = engine.max_player_id();
    let client_backend = engine.client_backend.clone();
    let cpu = engine.stop();
    for s in &sh.hists {
        whole.add(&*s.lock()).expect("same bounds");
    }
    let report = Report {
        max_clients_under_limit: max_under,
        peak_clients: peak,
        ramp_max_recorded: ramp.max_recorded(),
        final_tracked_delay_ms: final_tracked,
        final_clients,
        clients_started: started,
        clients_shed: shed_count,
        delay_samples: sh.samples.load(Relaxed),
        p50_ms: whole.value_at_quantile(0.5),
        p99_ms: whole.value_at_quantile(0.99),
        max_ms: whole.max(),
        packets_in: sh.packets_in.load(Relaxed),
        packets_out: sh.packets_out.load(Relaxed),
        series,
        errors: sh.errors.get(),
        fd_limited_to,
        max_player_id,
        procs: 1,
        children: Vec::new(),
        client_cpu_s: cpu.as_secs_f64(),
        client_cpu_pct: 100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-3),
        server_cpu_s: None,
        server: None,
        elapsed_s: elapsed.as_secs_f64(),
        stopped_early,
        settings: SettingsReport {
            addr: settings.addr.to_string(),
            header: match settings.header {
                SizeField::U8 => "u8",
                SizeField::U16 => "u16",
            }
            .to_string(),
            max_clients,
            delay_limit_ms: settings.delay_limit_ms,
            duration_s: settings.duration.as_secs_f64(),
            ramp_interval_ms: settings.ramp_interval.as_secs_f64() * 1e3,
            shed_interval_ms: settings.shed_interval.as_secs_f64() * 1e3,
            move_interval_ms: settings.move_interval.as_secs_f64() * 1e3,
            client_threads: settings.threads.max(1),
            client_backend,
        },
    };
    Ok((report, map))
}

/// The dummies' own positions and the NPCs they see (each NPC once, where the first dummy
/// that sees it has it). Each dummy is locked in turn, only while it is copied.
fn snapshot(sh: &Shared) -> MapSnapshot {
    let (players, npcs) = snapshot_ids(sh);
    MapSnapshot {
        world_size: cport_mmo_proto::W_WIDTH,
        players,
        npcs: npcs.into_iter().map(|(_, p)| p).collect(),
    }
}

/// The players' positions and the NPCs seen, each with its id.
pub(crate) type IdMap = (Vec<(i16, i16)>, Vec<(u32, (i16, i16))>);

/// [`snapshot`] with the NPCs' ids (so that maps of several processes can be merged).
fn snapshot_ids(sh: &Shared) -> IdMap {
    let mut players = Vec::with_capacity(sh.active.load(Relaxed));
    let mut npcs = Vec::new();
    let mut seen = IdSet::default();
    for s in &sh.slots {
        let d = s.lock();
        if d.phase != Phase::InGame {
            continue;
        }
        players.push(d.pos);
        for (&id, &p) in &d.picture {
            if id >= 0 && id as u32 >= sh.npc_ids_from && seen.insert(id as u32 - sh.npc_ids_from) {
                npcs.push((id as u32, p));
            }
        }
    }
    (players, npcs)
}

/// A set of NPC numbers (id − the first NPC id): a bitmap for the first 4 M (the course's
/// 200,000 NPCs take 25 KB), a hash set for any number past that a server might send.
#[derive(Default)]
struct IdSet {
    bits: Vec<u64>,
    rest: std::collections::HashSet<u32>,
}

impl IdSet {
    const BITMAP: u32 = 1 << 22;

    /// True when `n` was not in the set.
    fn insert(&mut self, n: u32) -> bool {
        if n >= Self::BITMAP {
            return self.rest.insert(n);
        }
        let (w, b) = ((n / 64) as usize, n % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        let fresh = self.bits[w] & (1 << b) == 0;
        self.bits[w] |= 1 << b;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::{run_with_probe, IdSet, Settings};
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[test]
    fn the_probe_maps_the_dummies_in_game_during_the_run_and_nothing_after() {
        let server = cport_mmo::start(cport_mmo::Config {
            npcs: 20_000,
            threads: 1,
            ..cport_mmo::Config::default()
        })
        .expect("start the game");
        let settings = Settings {
            max_clients: 50,
            ramp_interval: Duration::from_millis(5),
            threads: 1,
            ..Settings::new(server.local_addr(), Duration::from_secs(3))
        };
        let (mut maps, mut kept) = (Vec::new(), None);
        let (report, end) = run_with_probe(&settings, &AtomicBool::new(false), |s, _, probe| {
            maps.push((s.clients, probe.map().expect("the run is on")));
            kept = Some(probe.clone());
        })
        .expect("stress run");
        assert_eq!(maps.len(), report.series.len());
        for (clients, m) in &maps {
            // Sampled just after the second's count: logins may have completed in between.
            assert!(
                m.players.len() >= *clients,
                "{} < {clients}",
                m.players.len()
            );
            assert!(m.players.len() <= 50);
            assert!(m
                .players
                .iter()
                .chain(&m.npcs)
                .all(|&(x, y)| (0..2000).contains(&x) && (0..2000).contains(&y)));
        }
        let (_, last) = maps.last().unwrap();
        assert_eq!(last.players.len(), 50, "every dummy is in game by the end");
        assert!(
            !last.npcs.is_empty(),
            "50 dummies among 20,000 NPCs see some"
        );
        assert_eq!(end.players.len(), report.final_clients);
        assert!(
            kept.unwrap().map().is_none(),
            "nothing once the run is over"
        );
        server.shutdown(Duration::from_secs(2));
    }

    #[test]
    fn id_set_keeps_each_number_once_in_the_bitmap_and_past_it() {
        let mut s = IdSet::default();
        for n in [
            0,
            63,
            64,
            199_999,
            IdSet::BITMAP - 1,
            IdSet::BITMAP,
            u32::MAX,
        ] {
            assert!(s.insert(n), "{n} is new");
            assert!(!s.insert(n), "{n} is there");
        }
        assert!(s.insert(1));
        assert!(s.bits.len() <= (IdSet::BITMAP / 64) as usize);
        assert_eq!(s.rest.len(), 2);
    }
}
