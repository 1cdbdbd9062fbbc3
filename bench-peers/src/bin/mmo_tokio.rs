//! `mmo-tokio`: the course's game server — the very same game as `cport mmo` (the
//! `cport_mmo::Engine`: world, view lists, rules, NPCs, login, persistence) — networked the
//! way a Rust user would write it on tokio, as the peer of `cport bench mmo`.
//!
//! - The multi-thread runtime with `--threads` workers (the same count as the cport build's).
//! - One accept loop; per connection a reader task (reads into a buffer, frames the packets
//!   with the same codec, hands each to the game) and a writer task.
//! - Sends are never awaited by the game (it sends with its view locks held): a send appends
//!   the packet to the connection's output buffer under a short mutex and wakes the writer
//!   if the buffer was empty; the writer swaps the buffer for its spare one and writes
//!   everything queued with one `write_all` (write coalescing, two buffers per connection
//!   reused for its whole life: no allocation per packet on the send path). `TCP_NODELAY` is
//!   on, as in the cport build. More than `--max-send-queue` bytes queued closes the
//!   connection as a slow consumer, as the server layer does.
//! - Timers (NPC moves, respawns, regeneration, the save tick) are `tokio::time::sleep`s in
//!   spawned tasks; DB results come back as spawned tasks too.
//!
//! The game's flags are `cport mmo`'s (declared once: `cport_mmo::args::GameArgs`; not its
//! `--backend` and `--stats-file`), and the same startup line
//! (`listening on ADDR (backend: tokio, ...)`). SIGINT/SIGTERM: every connection is closed,
//! then every unsaved player row is written, then it exits.

use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use cport_mmo::args::GameArgs;
use cport_mmo::{Config, DbResult, Engine};
use cport_server::{Codec, LengthPrefixed};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The course's game server on tokio (the peer of `cport mmo`).
#[derive(Parser, Debug)]
#[command(name = "mmo-tokio")]
struct Args {
    /// The game's flags, declared once with `cport mmo`'s (`cport_mmo::args`).
    #[command(flatten)]
    game: GameArgs,
}

/// The game (one per process: the timers and the DB results find it here).
static ENGINE: OnceLock<Engine<Host>> = OnceLock::new();

fn engine() -> &'static Engine<Host> {
    ENGINE
        .get()
        .expect("the engine is set before anything runs")
}

/// A connection's id: its slot and a generation (never reused in the process's life).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnId {
    slot: u32,
    gen: u32,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.slot, self.gen)
    }
}

/// The server: the runtime's handle, the open connections by slot, the free slots.
#[derive(Clone)]
struct Host(Arc<HostInner>);

struct HostInner {
    rt: tokio::runtime::Handle,
    conns: Box<[Mutex<Option<Conn>>]>,
    free_slots: Mutex<Vec<u32>>,
    next_gen: AtomicU32,
    open: AtomicUsize,
    stopping: AtomicBool,
    max_send_queue: usize,
}

impl cport_mmo::Host for Host {
    type Conn = Conn;
    type ConnId = ConnId;

    fn post_after(&self, delay: Duration, key: u64, value: u64) -> bool {
        if self.0.stopping.load(Relaxed) {
            return false;
        }
        let host = self.clone();
        self.0.rt.spawn(async move {
            tokio::time::sleep(delay).await;
            engine().on_timer(&host, key, value);
        });
        true
    }

    fn post_db(&self, result: DbResult<ConnId>) -> bool {
        let host = self.clone();
        self.0
            .rt
            .spawn(async move { engine().on_db(&host, result) });
        true
    }

    fn conn(&self, id: ConnId) -> Option<Conn> {
        let c = self.0.conns.get(id.slot as usize)?.lock();
        c.as_ref().filter(|c| c.0.id == id).cloned()
    }
}

/// One client's connection, shared by its reader and writer tasks and the game.
#[derive(Clone)]
struct Conn(Arc<ConnInner>);

struct ConnInner {
    id: ConnId,
    peer: SocketAddr,
    host: Host,
    out: Mutex<Out>,
    /// Wakes the writer (something queued, or closing).
    wake: Notify,
    /// Tells the reader to stop.
    stop: Notify,
}

/// What the writer has to do.
struct Out {
    buf: Vec<u8>,
    closing: Closing,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// Send what is queued, then close.
    AfterFlush,
    /// Close now, dropping what is queued.
    Now,
}

impl Conn {
    fn close(&self, how: Closing) {
        {
            let mut o = self.0.out.lock();
            if o.closing == Closing::Now || (o.closing == how) {
                return;
            }
            o.closing = how;
            if how == Closing::Now {
                o.buf.clear();
            }
        }
        self.0.wake.notify_one();
        self.0.stop.notify_one();
    }
}

impl cport_mmo::Conn for Conn {
    type Host = Host;

    fn send(&self, packet: Bytes) {
        let mut o = self.0.out.lock();
        if o.closing != Closing::Open {
            return;
        }
        if o.buf.len() + packet.len() > self.0.host.0.max_send_queue {
            drop(o);
            tracing::info!(conn = %self.0.id, "closed: slow consumer");
            return self.close(Closing::Now);
        }
        let was_empty = o.buf.is_empty();
        o.buf.extend_from_slice(&packet);
        drop(o);
        if was_empty {
            self.0.wake.notify_one();
        }
    }

    fn reject(&self, why: String) {
        tracing::info!(conn = %self.0.id, peer = %self.0.peer, "rejected: {why}");
        self.close(Closing::Now);
    }

    fn close_after_flush(&self) {
        self.close(Closing::AfterFlush);
    }

    fn id(&self) -> ConnId {
        self.0.id
    }

    fn slot(&self) -> usize {
        self.0.id.slot as usize
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        Some(self.0.peer)
    }

    fn server(&self) -> Host {
        self.0.host.clone()
    }
}

/// Reads, frames and hands the packets to the game until EOF, an error, a bad frame or a
/// close; then the game's `on_close`, and the slot is free.
async fn reader(conn: Conn, mut rd: OwnedReadHalf, codec: LengthPrefixed) {
    use cport_mmo::Conn as _;
    let e = engine();
    e.on_connect(&conn);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    'read: loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let n = tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break 'read,
                Ok(n) => n,
            },
            _ = conn.0.stop.notified() => break 'read,
        };
        debug_assert!(n > 0);
        let mut at = 0;
        while at < buf.len() {
            match codec.frame(&buf[at..]) {
                Ok(Some(len)) => {
                    e.on_packet(&conn, &buf[at..at + len]);
                    at += len;
                    if conn.0.out.lock().closing != Closing::Open {
                        break 'read; // what arrives now is ignored
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    conn.reject(err.to_string());
                    break 'read;
                }
            }
        }
        buf.drain(..at);
    }
    // A peer that closed or failed: the writer stops too (nothing more is sent to it).
    {
        let mut o = conn.0.out.lock();
        if o.closing == Closing::Open {
            o.closing = Closing::Now;
            o.buf.clear();
        }
    }
    conn.0.wake.notify_one();
    e.on_close(&conn);
    let h = &conn.0.host.0;
    *h.conns[conn.0.id.slot as usize].lock() = None;
    h.free_slots.lock().push(conn.0.id.slot);
    h.open.fetch_sub(1, Relaxed);
}

/// Writes what the game queued, a whole buffer per `write_all`, until the connection closes.
async fn writer(conn: Conn, mut wr: OwnedWriteHalf) {
    let mut spare: Vec<u8> = Vec::with_capacity(4096);
    loop {
        conn.0.wake.notified().await;
        loop {
            let closing = {
                let mut o = conn.0.out.lock();
                if o.closing == Closing::Now {
                    return;
                }
                if !o.buf.is_empty() {
                    std::mem::swap(&mut o.buf, &mut spare);
                }
                o.closing
            };
            if spare.is_empty() {
                if closing == Closing::AfterFlush {
                    let _ = wr.shutdown().await;
                    conn.0.stop.notify_one();
                    return;
                }
                break;
            }
            if wr.write_all(&spare).await.is_err() {
                conn.0.out.lock().closing = Closing::Now;
                conn.0.stop.notify_one();
                return;
            }
            spare.clear();
        }
    }
}

fn accept(host: &Host, stream: TcpStream, peer: SocketAddr, codec: LengthPrefixed) {
    let h = &host.0;
    if h.stopping.load(Relaxed) {
        return;
    }
    let Some(slot) = h.free_slots.lock().pop() else {
        return; // beyond max-users + overflow: closed at once, as the server layer does
    };
    let _ = stream.set_nodelay(true);
    let id = ConnId {
        slot,
        gen: h.next_gen.fetch_add(1, Relaxed),
    };
    let conn = Conn(Arc::new(ConnInner {
        id,
        peer,
        host: host.clone(),
        out: Mutex::new(Out {
            buf: Vec::with_capacity(4096),
            closing: Closing::Open,
        }),
        wake: Notify::new(),
        stop: Notify::new(),
    }));
    *h.conns[slot as usize].lock() = Some(conn.clone());
    h.open.fetch_add(1, Relaxed);
    let (rd, wr) = stream.into_split();
    tokio::spawn(writer(conn.clone(), wr));
    tokio::spawn(reader(conn, rd, codec));
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .try_init();
    cport_bench::peer::raise_nofile();
    let args = args.game;
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    let cfg = Config {
        threads,
        ..args.config()?
    };
    let db = cfg.db.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let e = Engine::<Host>::new(&cfg)?;
    let codec = e.codec();
    let slots = e.max_sessions();
    let host = Host(Arc::new(HostInner {
        rt: rt.handle().clone(),
        conns: (0..slots).map(|_| Mutex::new(None)).collect(),
        free_slots: Mutex::new((0..slots as u32).rev().collect()),
        next_gen: AtomicU32::new(0),
        open: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        max_send_queue: cfg.max_send_queue,
    }));
    if ENGINE.set(e).is_err() {
        unreachable!("set once");
    }
    // The same listen backlog as the server layer's (1024).
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(cfg.addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&cfg.addr.into())?;
    sock.listen(1024)?;
    let std_listener: std::net::TcpListener = sock.into();
    let addr = std_listener.local_addr()?;
    let listener = {
        let _g = rt.enter();
        TcpListener::from_std(std_listener)?
    };
    engine().spawn_db(host.clone())?;
    engine().on_start(&host);
    let h2 = host.clone();
    rt.spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => accept(&h2, stream, peer, codec),
                Err(e) => {
                    // EMFILE and the like: back off a little, as a server must.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    });
    println!(
        "listening on {addr} (backend: tokio, threads: {threads}, npcs: {}, max users: {}, view range: {}, header: {}, db: {db}, save interval: {} ms)",
        args.npcs,
        args.max_users,
        args.view_range,
        args.header.name(),
        args.save_interval_ms
    );
    io::stdout().flush()?;
    wait_for_signal()?;
    // Shutdown: no more timers or connections; every connection flushed and closed (each
    // player's row written behind), then every unsaved row written.
    host.0.stopping.store(true, Relaxed);
    for c in host.0.conns.iter() {
        if let Some(c) = c.lock().clone() {
            c.close(Closing::AfterFlush);
        }
    }
    let until = Instant::now() + Duration::from_secs(5);
    while host.0.open.load(Relaxed) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let open = host.0.open.load(Relaxed);
    let stats = engine().stats();
    let rows = engine().flush_all();
    println!(
        "shutdown: {open} connections still open after 5 s; {rows} player rows written at shutdown"
    );
    println!("game: {stats}");
    eprintln!("mmo db ({db}): {}", engine().db_stats());
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

fn wait_for_signal() -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut s = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let _ = s.forever().next();
    Ok(())
}
