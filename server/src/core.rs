//! The bottom of the server layer: its settings, the state every part shares (the port, the
//! counters, the listener, the clock), and the completion keys and per-operation values it
//! uses. It knows nothing of sessions; `session` builds on it and `server` on both.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use cport::{Backend, BufPool, Port, Socket, TimerId};
use parking_lot::Mutex;

use crate::metrics::Counters;

/// Completion keys: a session's key is its id (bit 63 clear); the rest are the server's own.
pub(crate) const NOT_SESSION: u64 = 1 << 63;
pub(crate) const LISTENER: u64 = NOT_SESSION | 1;
pub(crate) const SWEEP: u64 = NOT_SESSION | 2;
pub(crate) const STATS: u64 = NOT_SESSION | 3;
pub(crate) const ACCEPT_RETRY: u64 = NOT_SESSION | 4;
/// Completions of `ServerHandle::post_message` (the user's key is in `user`).
pub(crate) const USER_MESSAGE: u64 = NOT_SESSION | 5;
/// A repeating timer's tick (`ServerHandle::post_every`; its id is in `user`).
pub(crate) const REPEAT: u64 = NOT_SESSION | 6;
pub(crate) const USER_POST: u64 = NOT_SESSION | (1 << 62);
pub(crate) const USER_TIMER: u64 = NOT_SESSION | (1 << 61);
/// The largest key of a post or timer of the server (`ServerHandle::post`,
/// `ServerHandle::post_after`); a larger one is refused with `PostError::KeyTooLarge`.
pub const MAX_USER_KEY: u64 = (1 << 61) - 1;

/// Per-operation values of a session's operations.
pub(crate) const RECV: u64 = 0;
pub(crate) const SEND: u64 = 1;

/// Server settings. `Config::default()` then change what you need.
///
/// A server on two workers, for at most 100 sessions, that closes a session once it has
/// received nothing for 100 ms:
///
/// ```
/// use std::io::Read;
/// use std::net::TcpStream;
/// use std::time::Duration;
///
/// use cport_server::{Config, Handler, RawStream, Server, Session};
///
/// struct Quiet;
///
/// impl Handler for Quiet {
///     fn on_packet(&self, _: &Session, _: &[u8]) {}
/// }
///
/// let cfg = Config {
///     addr: "127.0.0.1:0".parse().unwrap(),
///     threads: 2,
///     max_sessions: 100,
///     idle_timeout: Some(Duration::from_millis(100)),
///     ..Config::default()
/// };
/// let server = Server::start(cfg, RawStream, Quiet)?;
/// let handle = server.handle();
/// let mut client = TcpStream::connect(server.local_addr())?;
/// client.set_read_timeout(Some(Duration::from_secs(10)))?;
/// // The client sends nothing: the server closes the session.
/// assert_eq!(client.read(&mut [0u8; 1])?, 0, "end of stream");
/// server.shutdown(Duration::from_secs(1));
/// assert_eq!(handle.metrics().closed_for("idle_timeout"), 1);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (default `127.0.0.1:0`: loopback, a free port). One per
    /// server: for several, start a server per address (the crate docs, "Several
    /// listeners").
    pub addr: SocketAddr,
    /// Worker threads (default `0` = twice the concurrency value).
    ///
    /// More threads than `concurrency` is what lets a handler block: a handler that calls a
    /// blocking function inside [`Port::blocking`](cport::Port::blocking) (reached as
    /// `session.server().port()`) lends its slot to a spare thread, which goes on serving
    /// the other sessions; up to `threads - concurrency` handlers can block at once. The
    /// spare threads park while every slot is busy, so they cost no CPU. With `threads`
    /// equal to `concurrency`, a blocking handler has nobody to lend its slot to: once every
    /// worker blocks, no session is served until one comes back (the port counts such calls
    /// in [`PortStats::blocking_unlent`](cport::PortStats::blocking_unlent) and warns once).
    /// A handler that blocks *without* `Port::blocking` keeps its slot whatever `threads`
    /// says.
    pub threads: usize,
    /// The port's concurrency value: at most this many workers run handlers at once
    /// (default `0` = available parallelism).
    pub concurrency: usize,
    /// Backend (default `None` = the port's default: `CPORT_BACKEND`, else auto).
    pub backend: Option<Backend>,
    /// Listen backlog (default 1024).
    pub backlog: i32,
    /// Accepts kept outstanding (default 16).
    pub accepts: usize,
    /// `TCP_NODELAY` on accepted connections (default `true`).
    pub nodelay: bool,
    /// Most sessions open at once; connections beyond are refused (closed at once)
    /// (default 10,000).
    pub max_sessions: usize,
    /// Most bytes queued for sending per session; beyond, the session is closed as a slow
    /// consumer (so memory stays bounded) (default 1 MiB).
    pub max_send_queue: usize,
    /// Size of a receive buffer (default 8 KiB): of each pool buffer, or (with
    /// `recv_pool` 0) of each session's own buffer, which grows to hold one whole packet if
    /// needed.
    pub recv_buffer: usize,
    /// Receive buffers shared by all sessions (default 512): a session takes one only when
    /// data has arrived (`cport::Socket::recv_pooled`), so an idle session holds no receive
    /// buffer. A packet split across receives waits in a buffer of the session's own, freed
    /// once the packet is whole. When every pool buffer is in use, receives wait for one
    /// (their data stays in the socket). `0`: every session keeps a buffer of its own, as
    /// before; also the fallback if the backend cannot make the pool (io_uring before Linux
    /// 5.19), with a warning, and on Windows (IOCP takes the buffer when a receive is issued,
    /// so a waiting session would hold one anyway).
    pub recv_pool: usize,
    /// Close sessions that received nothing for this long (default `None`: never).
    pub idle_timeout: Option<Duration>,
    /// Close sessions that send more packets than this in one second (default `None`: no
    /// limit).
    pub max_packets_per_sec: Option<u32>,
    /// Log one line of metrics at info level this often (default `None`: never).
    pub stats_interval: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            threads: 0,
            concurrency: 0,
            backend: None,
            backlog: 1024,
            accepts: 16,
            nodelay: true,
            max_sessions: 10_000,
            max_send_queue: 1 << 20,
            recv_buffer: 8 * 1024,
            recv_pool: 512,
            idle_timeout: None,
            max_packets_per_sec: None,
            stats_interval: None,
        }
    }
}

/// What every part of a server shares.
pub(crate) struct Core {
    pub(crate) port: Port,
    /// The sessions' receive buffers (`Config::recv_pool`); `None`: each session has its own.
    pub(crate) pool: Option<BufPool>,
    pub(crate) cfg: Config,
    pub(crate) counters: Counters,
    pub(crate) listener: Mutex<Option<Socket>>,
    pub(crate) local_addr: SocketAddr,
    /// Shutdown began: no new sessions.
    pub(crate) stopping: AtomicBool,
    epoch: Instant,
    last_refusal_log: AtomicU64,
    /// The repeating timers (`ServerHandle::post_every`), by id. Touched once per tick and
    /// per start or cancel, never on a session's path.
    pub(crate) repeats: Mutex<Repeats>,
}

/// The repeating timers of a server.
#[derive(Default)]
pub(crate) struct Repeats {
    pub(crate) next_id: u64,
    pub(crate) map: HashMap<u64, Repeat>,
}

/// One repeating timer: what it delivers, when it is next due, and the port timer that will
/// deliver it.
pub(crate) struct Repeat {
    pub(crate) interval: Duration,
    pub(crate) key: u64,
    pub(crate) value: u64,
    pub(crate) due: Instant,
    pub(crate) timer: TimerId,
}

impl Core {
    pub(crate) fn new(port: Port, cfg: Config, local_addr: SocketAddr) -> Core {
        let pool = match cfg.recv_pool {
            0 => None,
            // IOCP takes a pool buffer when the receive is issued (no zero-byte receive yet):
            // every waiting session would hold one, and a pool smaller than the sessions
            // would starve the rest. Sessions keep their own buffers there.
            _ if port.backend() == Backend::Iocp => None,
            n => match port.buf_pool(n.min(cport::MAX_POOL_BUFFERS), cfg.recv_buffer.max(1)) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(
                        "no receive buffer pool ({e}): every session gets a buffer of its own"
                    );
                    None
                }
            },
        };
        Core {
            port,
            pool,
            cfg,
            counters: Counters::default(),
            listener: Mutex::new(None),
            local_addr,
            stopping: AtomicBool::new(false),
            epoch: Instant::now(),
            last_refusal_log: AtomicU64::new(0),
            repeats: Mutex::new(Repeats::default()),
        }
    }

    /// Milliseconds since the server started.
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    /// Starts one more accept on the listener (unless it was closed).
    pub(crate) fn arm_accept(&self) {
        if let Some(l) = &*self.listener.lock() {
            l.accept(0);
        }
    }

    /// Logs at warn level at most once a second (refusals and accept errors come in floods).
    pub(crate) fn rate_limited_warn(&self, msg: &str) {
        let now = self.now_ms();
        let last = self.last_refusal_log.load(Relaxed);
        if now >= last + 1000
            && self
                .last_refusal_log
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            tracing::warn!("{msg}");
        }
    }
}

/// How often the idle sweep runs for an idle timeout.
pub(crate) fn sweep_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

impl Core {
    /// A repeating timer's tick arrived: arm its next one and return what to deliver, or
    /// `None` if it was cancelled. The next tick is due one interval after this one was (the
    /// ticks do not drift with the time a tick takes to deliver); ticks missed while the
    /// workers were busy are skipped, not delivered in a burst. If the port is shut down the
    /// timer ends after this tick.
    pub(crate) fn repeat_tick(&self, id: u64) -> Option<(u64, u64)> {
        let mut repeats = self.repeats.lock();
        let r = repeats.map.get_mut(&id)?;
        let (key, value) = (r.key, r.value);
        let now = Instant::now();
        r.due += r.interval;
        if r.due <= now {
            let late = now.duration_since(r.due).as_nanos();
            let into = late % r.interval.as_nanos();
            r.due = now + (r.interval - Duration::from_nanos(into as u64));
        }
        match self.port.post_after(r.due - now, REPEAT, id) {
            Ok(t) => r.timer = t,
            Err(_) => {
                repeats.map.remove(&id);
            }
        }
        Some((key, value))
    }
}
