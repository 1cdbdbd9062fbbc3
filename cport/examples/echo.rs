//! A raw TCP echo server on a completion port: every byte that arrives is sent back as it
//! came, no framing.
//!
//! ```text
//! cargo run --release -p cport --example echo -- --addr 127.0.0.1:7000 --threads 2 \
//!     [--backend auto|uring|epoll] [--concurrency N]
//! ```
//!
//! Without `--backend`, the `CPORT_BACKEND` environment variable (`auto`, `uring`, `epoll`)
//! chooses the backend; `--backend` wins over it. Logs go to stderr (`RUST_LOG`, default
//! `info`). SIGINT or SIGTERM shuts the port down, the workers finish, and a one-line summary
//! is printed before exiting with status 0.
//!
//! The shape is the one of every IOCP server: a listener with several accepts outstanding, a
//! table of connections indexed by completion key, and a pool of workers that each take the
//! next completion, whatever connection it belongs to.

use std::cell::RefCell;
use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
#[cfg(unix)]
use std::os::fd::OwnedFd;
#[cfg(windows)]
use std::os::windows::io::OwnedSocket as OwnedFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use cport::{Backend, Completion, Op, Pool, Port, SendBuf, Socket};
use parking_lot::Mutex;
use socket2::{Domain, Protocol, SockRef, Type};
use tracing_subscriber::EnvFilter;

/// Completion key of the listener (and of its re-arm timers). Connection keys never are 0:
/// their generation starts at 1.
const LISTENER: u64 = 0;
/// Accepts kept outstanding on the listener.
const ACCEPTS: usize = 16;
/// Listen backlog.
const BACKLOG: i32 = 1024;
/// Size of a receive buffer.
const BUF: usize = 16 * 1024;
/// Sends a connection may have in flight before it stops receiving until one completes
/// (a client that writes without reading cannot make the server buffer without bound).
const MAX_SENDS: u32 = 8;
/// Receive buffers kept for reuse per worker thread.
const POOLED_BUFS: usize = 256;
/// How long to wait before re-arming an accept that failed for lack of resources.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

#[derive(Parser, Debug)]
#[command(about = "A TCP echo server on a cport completion port")]
struct Args {
    /// Address to listen on (port 0 picks a free port; the startup line shows it).
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = available_parallelism())]
    threads: usize,
    /// The port's concurrency value (0 = available parallelism).
    #[arg(long, default_value_t = 0)]
    concurrency: usize,
    /// Backend [default: auto, or $CPORT_BACKEND when set].
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Auto,
    Uring,
    Epoll,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Backend {
        match b {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Uring => Backend::Uring,
            BackendArg::Epoll => Backend::Epoll,
        }
    }
}

fn available_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    raise_nofile_limit();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> io::Result<()> {
    let mut builder = Port::builder().concurrency(args.concurrency);
    if let Some(b) = args.backend {
        // The flag wins over CPORT_BACKEND.
        builder = builder.backend(b.into()).ignore_env();
    }
    let port = builder
        .build()
        .map_err(|e| context(e, "creating the completion port"))?;

    let listener = socket2::Socket::new(
        Domain::for_address(args.addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    listener.set_reuse_address(true)?;
    listener
        .bind(&args.addr.into())
        .and_then(|()| listener.listen(BACKLOG))
        .map_err(|e| context(e, &format!("listening on {}", args.addr)))?;
    let listener = port.associate(OwnedFd::from(listener), LISTENER)?;
    let addr = listener.local_addr()?;

    let state = Arc::new(State {
        listener,
        conns: Conns::new(),
        accepted: AtomicU64::new(0),
        echoed: AtomicU64::new(0),
        last_accept_warning: Mutex::new(None),
    });
    for _ in 0..ACCEPTS {
        state.listener.accept(0);
    }

    // Register the signal handlers before announcing the address, so a signal sent as soon
    // as the startup line is seen is not lost.
    #[cfg(unix)]
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    #[cfg(windows)]
    let signals = {
        // Ctrl-C (SIGINT) and SIGTERM as Windows' C runtime delivers them.
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGINT, flag.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, flag.clone())?;
        flag
    };
    let handler_state = state.clone();
    let pool = Pool::spawn(&port, args.threads, move |port, c| {
        handler_state.handle(port, c)
    })?;
    {
        let port = port.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                #[cfg(unix)]
                {
                    let mut seen = false;
                    for sig in signals.forever() {
                        if seen {
                            eprintln!("second signal {sig}: exiting at once");
                            std::process::exit(1);
                        }
                        seen = true;
                        tracing::info!("signal {sig}: shutting down");
                        port.shutdown();
                    }
                }
                #[cfg(windows)]
                {
                    while !signals.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    tracing::info!("interrupted: shutting down");
                    port.shutdown();
                }
            })?;
    }

    let mut out = io::stdout().lock();
    writeln!(
        out,
        "listening on {addr} (backend: {}, threads: {}, concurrency: {})",
        port.backend(),
        pool.threads(),
        port.concurrency()
    )?;
    out.flush()?;
    drop(out);

    pool.join();
    let (accepted, echoed) = (
        state.accepted.load(Ordering::Relaxed),
        state.echoed.load(Ordering::Relaxed),
    );
    // Close what is left before the port goes away.
    drop(state.conns.drain());
    drop(state);
    println!("shut down: {accepted} connections accepted, {echoed} bytes echoed");
    io::stdout().flush()?;
    Ok(())
}

fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Nothing to raise on Windows: it has no per-process limit on sockets.
#[cfg(windows)]
fn raise_nofile_limit() {
    // Windows has no per-process limit on sockets.
}

/// Raises the soft limit on open files to the hard limit: every connection is a descriptor.
#[cfg(unix)]
fn raise_nofile_limit() {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) if now > before => tracing::debug!("open-file limit raised from {before} to {now}"),
        Ok(now) => tracing::debug!("open-file limit already at the hard limit ({now})"),
        Err(e) => tracing::warn!("could not raise the open-file limit ({before}): {e}"),
    }
}

struct State {
    listener: Socket,
    conns: Conns,
    accepted: AtomicU64,
    echoed: AtomicU64,
    /// When an accept failure was last logged, and how many were not logged since.
    last_accept_warning: Mutex<Option<(Instant, u64)>>,
}

/// What to do with a connection after its entry was updated (outside the table lock).
enum After {
    Nothing,
    Close,
}

impl State {
    fn handle(&self, port: &Port, c: Completion) {
        let aborted = c.is_aborted();
        match c.op {
            Op::Accept(Some(accepted)) => {
                if let Err(e) = SockRef::from(&accepted.fd).set_tcp_nodelay(true) {
                    tracing::debug!("TCP_NODELAY on an accepted socket: {e}");
                }
                match self.conns.open(port, accepted.fd, take_buf()) {
                    Ok(key) => {
                        self.accepted.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(key, peer = ?accepted.peer, "connection open");
                    }
                    Err(e) => tracing::warn!("associating an accepted socket: {e}"),
                }
                self.listener.accept(0);
            }
            Op::Accept(None) => {
                let Err(e) = c.result else { return };
                if aborted {
                    return; // the port is shutting down
                }
                #[cfg(unix)]
                let scarce = [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM];
                // WSAEMFILE, WSAENOBUFS, ERROR_NOT_ENOUGH_MEMORY
                #[cfg(windows)]
                let scarce = [10024, 10055, 8];
                match e.raw_os_error() {
                    Some(code) if scarce.contains(&code) => {
                        self.accept_warning(&e);
                        // Out of descriptors or memory: retrying at once would only spin.
                        // The timer completion re-arms this accept.
                        let _ = port.post_after(ACCEPT_RETRY, LISTENER, 0);
                    }
                    _ => {
                        // ECONNABORTED and the like concern one connection only.
                        tracing::debug!("accept failed: {e}");
                        self.listener.accept(0);
                    }
                }
            }
            Op::Timer(_) if c.key == LISTENER => self.listener.accept(0),
            Op::Recv(buf) => match c.result {
                Ok(n) if n > 0 => {
                    self.conns.with(c.key, |conn| {
                        conn.sock.send(buf, 0);
                        conn.sends += 1;
                        if conn.sends < MAX_SENDS {
                            conn.sock.recv(take_buf(), 0);
                        } else {
                            conn.paused = true; // resumed by the next send completion
                        }
                    });
                }
                Ok(_) => {
                    // End of stream: close once what is still being echoed has gone out.
                    let after = self.conns.with(c.key, |conn| {
                        conn.eof = true;
                        if conn.sends == 0 {
                            After::Close
                        } else {
                            After::Nothing
                        }
                    });
                    recycle(buf);
                    if let Some(After::Close) = after {
                        self.close(c.key);
                    }
                }
                Err(e) => {
                    if !aborted {
                        tracing::debug!(key = c.key, "receive failed: {e}");
                    }
                    recycle(buf);
                    self.close(c.key);
                }
            },
            Op::Send(buf) => {
                let ok = match &c.result {
                    Ok(n) => {
                        self.echoed.fetch_add(*n as u64, Ordering::Relaxed);
                        true
                    }
                    Err(e) => {
                        if !aborted {
                            tracing::debug!(key = c.key, "send failed: {e}");
                        }
                        false
                    }
                };
                let mut buf = match buf {
                    SendBuf::Vec(v) => Some(v),
                    _ => None,
                };
                let after = self.conns.with(c.key, |conn| {
                    conn.sends -= 1;
                    if !ok || (conn.eof && conn.sends == 0) {
                        After::Close
                    } else {
                        if conn.paused {
                            conn.paused = false;
                            let next = match buf.take() {
                                Some(mut v) => {
                                    v.clear();
                                    v
                                }
                                None => take_buf(),
                            };
                            conn.sock.recv(next, 0);
                        }
                        After::Nothing
                    }
                });
                if let Some(v) = buf {
                    recycle(v);
                }
                if let Some(After::Close) = after {
                    self.close(c.key);
                }
            }
            _ => {}
        }
    }

    /// Closes a connection: its socket is dropped outside the table lock, which aborts
    /// whatever it still had pending (those completions find no entry and are dropped).
    fn close(&self, key: u64) {
        if let Some(conn) = self.conns.remove(key) {
            tracing::debug!(key, "connection closed");
            drop(conn);
        }
    }

    /// Logs an accept failure, at most once a second.
    fn accept_warning(&self, e: &io::Error) {
        let mut last = self.last_accept_warning.lock();
        let now = Instant::now();
        match &mut *last {
            Some((at, suppressed)) if now.duration_since(*at) < Duration::from_secs(1) => {
                *suppressed += 1;
            }
            _ => {
                let more = match last.map_or(0, |(_, n)| n) {
                    0 => String::new(),
                    n => format!(" ({n} more since the last warning)"),
                };
                tracing::warn!(
                    "accept failed: {e}{more}; retrying in {} ms",
                    ACCEPT_RETRY.as_millis()
                );
                *last = Some((now, 0));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Receive buffers, pooled per worker thread.

thread_local! {
    static BUFS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> Vec<u8> {
    BUFS.with(|b| b.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(BUF))
}

fn recycle(mut buf: Vec<u8>) {
    if buf.capacity() != BUF {
        return;
    }
    buf.clear();
    BUFS.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < POOLED_BUFS {
            b.push(buf);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The connection table: slots indexed by completion key, with a generation per slot, so that
// a late completion of a closed connection never reaches the connection that reused its slot.
// Sharded to keep workers of different connections off each other's lock.

const SHARDS: usize = 16;

struct Conn {
    sock: Socket,
    /// Sends in flight.
    sends: u32,
    /// No receive is outstanding because `sends` reached MAX_SENDS.
    paused: bool,
    /// The peer ended its stream; close when the last send completes.
    eof: bool,
}

struct Slot {
    gen: u32,
    conn: Option<Conn>,
}

#[derive(Default)]
struct Shard {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

struct Conns {
    shards: Box<[Mutex<Shard>]>,
    next: AtomicUsize,
}

/// key = (generation << 32) | slot, where slot = index in shard * SHARDS + shard: the same
/// layout as the port's tokens and the server layer's session ids (the slot in the low half,
/// its generation in the high half).
fn split(key: u64) -> (usize, usize, u32) {
    let slot = (key & 0xFFFF_FFFF) as usize;
    (slot % SHARDS, slot / SHARDS, (key >> 32) as u32)
}

impl Conns {
    fn new() -> Conns {
        Conns {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Associates an accepted socket under a fresh key, puts it in the table, then starts its
    /// first receive (whose completion may reach another worker at once: the entry is there).
    fn open(&self, port: &Port, fd: OwnedFd, first: Vec<u8>) -> io::Result<u64> {
        let s = self.next.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let mut shard = self.shards[s].lock();
        let index = match shard.free.pop() {
            Some(i) => i,
            None => {
                shard.slots.push(Slot { gen: 0, conn: None });
                shard.slots.len() - 1
            }
        };
        let global = index * SHARDS + s;
        if global > u32::MAX as usize {
            shard.free.push(index);
            return Err(io::Error::other("connection table full"));
        }
        let slot = &mut shard.slots[index];
        slot.gen = match slot.gen.wrapping_add(1) {
            0 => 1,
            g => g,
        };
        let key = (u64::from(slot.gen) << 32) | global as u64;
        match port.associate(fd, key) {
            Ok(sock) => {
                let conn = slot.conn.insert(Conn {
                    sock,
                    sends: 0,
                    paused: false,
                    eof: false,
                });
                conn.sock.recv(first, 0);
                Ok(key)
            }
            Err(e) => {
                shard.free.push(index);
                Err(e)
            }
        }
    }

    /// Runs `f` on the live connection with this key, under its shard's lock.
    fn with<R>(&self, key: u64, f: impl FnOnce(&mut Conn) -> R) -> Option<R> {
        let (s, index, gen) = split(key);
        let mut shard = self.shards.get(s)?.lock();
        match shard.slots.get_mut(index) {
            Some(Slot {
                gen: g,
                conn: Some(conn),
            }) if *g == gen => Some(f(conn)),
            _ => None,
        }
    }

    /// Takes the live connection with this key out of the table.
    fn remove(&self, key: u64) -> Option<Conn> {
        let (s, index, gen) = split(key);
        let mut shard = self.shards.get(s)?.lock();
        let slot = shard.slots.get_mut(index)?;
        if slot.gen != gen {
            return None;
        }
        let conn = slot.conn.take()?;
        shard.free.push(index);
        Some(conn)
    }

    /// Takes every connection out of the table.
    fn drain(&self) -> Vec<Conn> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let shard = &mut *shard;
            for (i, slot) in shard.slots.iter_mut().enumerate() {
                if let Some(conn) = slot.conn.take() {
                    shard.free.push(i);
                    all.push(conn);
                }
            }
        }
        all
    }
}
