//! The dummies: one [`Port`] with a few workers ([`Pool`]) and a slot per client. Sockets are
//! associated with the key `generation << 32 | slot`; connects, receives and sends are port
//! operations, and each dummy's move schedule is a port timer ([`Port::post_after`]). The
//! workers' completions drive each dummy through connect → login → game; whoever holds the
//! [`Clients`] (this process's ramp, or a parent process's commands) says when to add and
//! shed.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cport_mmo_proto::splitmix64;
use cport_mmo_proto::{frame_len, name, ClientPacket, Direction, ServerPacket, SizeField};
use cport_server::cport::{Aborted, Completion, Op, Pool, Port, Socket, TimerId};
use cport_server::os::fd_soft_limit;
use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::group::{new_hist, self_cpu_time, MAX_DELAY_MS};
use crate::map::{IdMap, IdSet, MapSnapshot, MapSource, Probe};
use crate::ramp::DelayTracker;
use crate::report::Errors;
use crate::settings::Settings;
use crate::view::View;

const RECV_BUF: usize = 4096;
const U_CONNECT: u64 = 1;
const U_SEND: u64 = 2;
const U_RECV: u64 = 3;
const U_MOVE: u64 = 4;
const HIST_SHARDS: usize = 32;

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
    /// Itself and what it sees (only itself unless the run keeps pictures).
    view: View,
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

/// What the workers and the controller share: the slots, the counters, the tracker.
pub(crate) struct Dummies {
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

fn key(slot: u32, gen: u32) -> u64 {
    (gen as u64) << 32 | slot as u64
}

impl Dummies {
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
        d.view = self.new_view();
        self.free.lock().push(slot);
    }

    fn new_view(&self) -> View {
        if self.keep_picture {
            View::new()
        } else {
            View::of_itself()
        }
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

/// Why no dummy was started.
#[derive(Debug)]
pub(crate) enum AddError {
    /// Every slot is taken.
    Full,
    /// The open-files limit (counted in the errors).
    FdLimit(io::Error),
    /// Anything else (counted as a failed connect).
    Other(io::Error),
}

/// Starts one dummy: a socket, associated, connecting.
fn add(sh: &Dummies, n: u64) -> Result<(), AddError> {
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
    d.view = sh.new_view();
    d.rng = splitmix64(n ^ 0x5EED);
    sock.connect(sh.addr, U_CONNECT);
    d.sock = Some(sock);
    sh.live.fetch_add(1, Relaxed);
    drop(d);
    sh.order.lock().push_back((slot, gen));
    Ok(())
}

/// Disconnects the oldest dummy still open; false if none.
fn shed(sh: &Dummies) -> bool {
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

fn on_completion(sh: &Dummies, c: Completion) {
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
fn on_bytes(sh: &Dummies, slot: u32, d: &mut Dummy, buf: &mut Vec<u8>) -> bool {
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
            ServerPacket::LoginInfo { id, .. } => {
                if d.phase == Phase::LoggingIn {
                    let _ = d.view.apply(&p);
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
            ServerPacket::MoveObject { id, move_time, .. }
                if id as u32 == d.view.id && move_time != 0 =>
            {
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
                let _ = d.view.apply(&p);
            }
            // The picture takes what the server says as it comes (a contradiction is the
            // game's tests' business, not the load's).
            _ => {
                let _ = d.view.apply(&p);
            }
        }
    }
    sh.packets_in.fetch_add(packets, Relaxed);
    buf.drain(..off);
    close
}

/// Descriptors kept free for everything else of the process (the port, stdio, files).
const FD_RESERVE: u64 = 64;

/// The sockets' side of a run: the port, its workers and the dummies, without the ramp (the
/// caller says when to add and shed: this process's ramp, or a parent's).
pub(crate) struct Clients {
    sh: Arc<Dummies>,
    /// The workers, until [`Clients::stop`].
    pool: Option<Pool>,
    max_clients: usize,
    fd_limited_to: Option<usize>,
    client_backend: String,
    cpu0: Duration,
}

impl Clients {
    /// At most `settings.max_clients`, fewer if the open-files limit says so.
    /// `name_prefix` starts the login names; `forward` keeps every delay sample for
    /// [`Clients::take_forwarded`] (a child of a multi-process run).
    pub(crate) fn start(
        settings: &Settings,
        name_prefix: String,
        forward: bool,
    ) -> io::Result<Clients> {
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
        let sh = Arc::new(Dummies {
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
                        view: View::of_itself(),
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
        Ok(Clients {
            sh,
            pool: Some(pool),
            max_clients,
            fd_limited_to,
            client_backend,
            cpu0,
        })
    }

    /// Stops the workers and closes every socket (nothing more is delivered).
    pub(crate) fn stop(&mut self) -> Duration {
        self.sh.stop.store(true, Relaxed);
        if let Some(pool) = self.pool.take() {
            pool.shutdown();
        }
        for s in &self.sh.slots {
            s.lock().sock = None;
        }
        self_cpu_time().saturating_sub(self.cpu0)
    }

    pub(crate) fn max_player_id(&self) -> Option<u32> {
        u32::try_from(self.max_id()).ok()
    }

    /// The highest player id a `SC_LOGIN_INFO` gave (−1: none yet).
    pub(crate) fn max_id(&self) -> i64 {
        self.sh.max_id.load(Relaxed)
    }

    /// Most dummies at once (`settings.max_clients`, or what the open-files limit allows).
    pub(crate) fn cap(&self) -> usize {
        self.max_clients
    }

    /// What the open-files limit allowed, when it capped [`Clients::cap`].
    pub(crate) fn fd_limited_to(&self) -> Option<usize> {
        self.fd_limited_to
    }

    /// The port's backend.
    pub(crate) fn backend(&self) -> &str {
        &self.client_backend
    }

    /// Starts one dummy (`n` seeds its moves).
    pub(crate) fn add(&self, n: u64) -> Result<(), AddError> {
        add(&self.sh, n).inspect_err(|e| {
            if let AddError::Other(e) = e {
                self.sh.errors.connect_failed.fetch_add(1, Relaxed);
                tracing::debug!("stress: could not start a client: {e}");
            }
        })
    }

    /// Closes the oldest dummy still open; false if none.
    pub(crate) fn shed(&self) -> bool {
        shed(&self.sh)
    }

    /// Dummies started and not closed.
    pub(crate) fn live(&self) -> usize {
        self.sh.live.load(Relaxed)
    }

    /// Dummies logged in.
    pub(crate) fn active(&self) -> usize {
        self.sh.active.load(Relaxed)
    }

    /// The tracked delay of this process's samples.
    pub(crate) fn tracked(&self) -> u64 {
        self.sh.tracker.get()
    }

    /// Delay samples so far.
    pub(crate) fn samples(&self) -> u64 {
        self.sh.samples.load(Relaxed)
    }

    /// Server packets received and client packets sent so far.
    pub(crate) fn packets(&self) -> (u64, u64) {
        (
            self.sh.packets_in.load(Relaxed),
            self.sh.packets_out.load(Relaxed),
        )
    }

    /// Errors so far.
    pub(crate) fn errors(&self) -> Errors {
        self.sh.errors.get()
    }

    /// The delays sampled since the last call (`reset`) or so far (not `reset`: at the end).
    pub(crate) fn delays(&self, reset: bool) -> Histogram<u64> {
        let mut h = new_hist();
        for s in &self.sh.hists {
            let mut s = s.lock();
            h.add(&*s).expect("same bounds");
            if reset {
                s.reset();
            }
        }
        h
    }

    /// The delays sampled since the last call, in order (with `forward` at the start).
    pub(crate) fn take_forwarded(&self) -> Vec<u32> {
        std::mem::take(&mut *self.sh.forward.as_ref().expect("forwarding").lock())
    }

    /// The map now, with the NPCs' ids.
    pub(crate) fn map_ids(&self) -> IdMap {
        snapshot_ids(&self.sh)
    }

    /// The map now.
    pub(crate) fn map(&self) -> MapSnapshot {
        snapshot(&self.sh)
    }

    /// A probe on the dummies (a map until [`Clients::stop`]).
    pub(crate) fn probe(&self) -> Probe {
        let weak: Weak<dyn MapSource> = Arc::downgrade(&self.sh) as Weak<dyn MapSource>;
        Probe::on(weak)
    }
}

impl MapSource for Dummies {
    fn map_now(&self) -> Option<MapSnapshot> {
        if self.stop.load(Relaxed) {
            return None;
        }
        Some(snapshot(self))
    }
}

/// The dummies' own positions and the NPCs they see (each NPC once, where the first dummy
/// that sees it has it). Each dummy is locked in turn, only while it is copied.
fn snapshot(sh: &Dummies) -> MapSnapshot {
    let (players, npcs) = snapshot_ids(sh);
    MapSnapshot {
        world_size: cport_mmo_proto::W_WIDTH,
        players,
        npcs: npcs.into_iter().map(|(_, p)| p).collect(),
    }
}

/// [`snapshot`] with the NPCs' ids (so that maps of several processes can be merged).
fn snapshot_ids(sh: &Dummies) -> IdMap {
    let mut players = Vec::with_capacity(sh.active.load(Relaxed));
    let mut npcs = Vec::new();
    let mut seen = IdSet::default();
    for s in &sh.slots {
        let d = s.lock();
        if d.phase != Phase::InGame {
            continue;
        }
        let (x, y) = d.view.pos;
        players.push((x as i16, y as i16));
        for (&id, &(x, y)) in &d.view.picture {
            if id <= i32::MAX as u32 && id >= sh.npc_ids_from && seen.insert(id - sh.npc_ids_from) {
                npcs.push((id, (x as i16, y as i16)));
            }
        }
    }
    (players, npcs)
}
