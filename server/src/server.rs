//! The top of the server layer: the handler trait, the accept loop, dispatch of completions
//! on the port's worker threads, timers and graceful shutdown. It builds on `handle` (the
//! server's handle), `session` (a connection's whole life) and `core` (settings, shared
//! state, keys); none of those knows this module.

use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cport::{Aborted, Completion, Op, Pool, Port};
use socket2::{Domain, Protocol, Type};

use crate::codec::Codec;
use crate::core::{
    sweep_interval, Config, Core, ACCEPT_RETRY, LISTENER, MAX_USER_KEY, NOT_SESSION, REPEAT, STATS,
    SWEEP, USER_MESSAGE, USER_POST, USER_TIMER,
};
use crate::handle::ServerHandle;
use crate::metrics::CloseReason;
use crate::session::{Session, SessionId};
use crate::table::Slots;

/// What the server calls, on the port's worker threads. Several calls may run at once
/// (for different sessions; the calls for one session's received packets never overlap).
///
/// Only [`on_packet`](Handler::on_packet) must be written; the other calls do nothing by
/// default. A panic in `on_connect` or `on_packet` closes that session only
/// ([`CloseReason::Local`], logged at error level); the server keeps serving.
///
/// The handler is one value shared by every session. What belongs to one session (a
/// player, a name, a parser's state) goes on the session itself:
/// [`Session::set_state`] in `on_connect`, [`Session::with_state`] in `on_packet`; each
/// session's value has its own lock and is dropped after `on_close`.
///
/// A handler for the course's `[size][type][body]` packets: it greets each session, answers
/// type 1 with type 2 and the body reversed, refuses any other type with a reason, and counts
/// the sessions that closed.
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::TcpStream;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use cport_server::{CloseReason, Config, Handler, LengthPrefixed, Server, Session, SizeField};
///
/// struct Reverse {
///     codec: LengthPrefixed,
///     closed: Arc<AtomicUsize>,
/// }
///
/// impl Handler for Reverse {
///     fn on_connect(&self, session: &Session) {
///         let _ = session.send(self.codec.encode(0, b"hi"));
///     }
///     fn on_packet(&self, session: &Session, packet: &[u8]) {
///         let (kind, body) = (packet[1], &packet[self.codec.header_len()..]);
///         if kind != 1 {
///             session.close(CloseReason::Rejected(format!("unknown type {kind}")));
///             return;
///         }
///         let reversed: Vec<u8> = body.iter().rev().copied().collect();
///         let _ = session.send(self.codec.encode(2, &reversed));
///     }
///     fn on_close(&self, _session: &Session, _reason: &CloseReason) {
///         self.closed.fetch_add(1, Ordering::SeqCst);
///     }
/// }
///
/// let codec = LengthPrefixed::new(SizeField::U8);
/// let closed = Arc::new(AtomicUsize::new(0));
/// let handler = Reverse { codec, closed: closed.clone() };
/// let server = Server::start(Config::default(), codec, handler)?;
///
/// let mut client = TcpStream::connect(server.local_addr())?;
/// client.set_read_timeout(Some(Duration::from_secs(10)))?;
/// let mut greeting = [0u8; 4];
/// client.read_exact(&mut greeting)?;
/// assert_eq!(&greeting, &[4, 0, b'h', b'i']);
///
/// client.write_all(&codec.encode(1, b"abc"))?;
/// let mut reply = [0u8; 5];
/// client.read_exact(&mut reply)?;
/// assert_eq!(&reply, &[5, 2, b'c', b'b', b'a']);
///
/// // Type 9 is refused: the server closes the connection.
/// client.write_all(&codec.encode(9, b""))?;
/// assert_eq!(client.read(&mut [0u8; 1])?, 0, "end of stream");
///
/// let report = server.shutdown(Duration::from_secs(1));
/// assert_eq!(closed.load(Ordering::SeqCst), 1);
/// assert_eq!(report.forced, 0);
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The server listens and its workers run: called once, on the thread that called
    /// [`Server::start`], before `start` returns — the place to set the first timers
    /// ([`ServerHandle::post_after`]) or keep the handle.
    fn on_start(&self, server: &ServerHandle) {
        let _ = server;
    }
    /// A session opened; its first packet is delivered only after this returns.
    fn on_connect(&self, session: &Session) {
        let _ = session;
    }
    /// One packet (as framed by the codec, header included).
    fn on_packet(&self, session: &Session, packet: &[u8]);
    /// The session closed; called exactly once per session, after its last `on_packet`.
    /// Its slot goes to a new session only after this returns.
    fn on_close(&self, session: &Session, reason: &CloseReason) {
        let _ = (session, reason);
    }
    /// An event from [`ServerHandle::post`].
    fn on_posted(&self, server: &ServerHandle, key: u64, value: u64) {
        let _ = (server, key, value);
    }
    /// A timer from [`ServerHandle::post_after`] fired, or a tick of one from
    /// [`ServerHandle::post_every`].
    fn on_timer(&self, server: &ServerHandle, key: u64, value: u64) {
        let _ = (server, key, value);
    }
    /// A value from [`ServerHandle::post_message`]: take it back by type with
    /// [`Message::downcast`](cport::Message::downcast). The default drops it.
    fn on_message(&self, server: &ServerHandle, key: u64, message: cport::Message) {
        let _ = (server, key, message);
    }
}

/// What graceful shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Sessions open when shutdown began.
    pub sessions: u64,
    /// Sessions that flushed and closed before the deadline.
    pub flushed: u64,
    /// Sessions closed at the deadline.
    pub forced: u64,
    /// Bytes still queued in the sessions closed at the deadline (not sent).
    pub unsent_bytes: u64,
    /// How long shutdown took.
    pub elapsed: Duration,
}

impl std::fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "shutdown in {:.1?}: {} sessions, {} flushed and closed, {} closed at the deadline ({} bytes unsent)",
            self.elapsed, self.sessions, self.flushed, self.forced, self.unsent_bytes
        )
    }
}

/// A running server: a listener, a session table and a pool of workers on one port.
///
/// Dropping a `Server` stops it at once: it stops accepting, closes every session without
/// waiting for queued bytes to leave, and joins its workers. [`Server::shutdown`] is the
/// graceful way (flush, half-close, wait for peers until a deadline). So keep the `Server`
/// for as long as it is to serve (`#[must_use]`): a `Server::start(…)?;` whose result is not
/// kept stops the server on the same line, and clients get "connection refused".
///
/// ```
/// # #![deny(unused_must_use)]
/// # use cport_server::{Config, Handler, RawStream, Server, Session};
/// # struct Echo;
/// # impl Handler for Echo {
/// #     fn on_packet(&self, s: &Session, p: &[u8]) { let _ = s.send(p.to_vec()); }
/// # }
/// let server = Server::start(Config::default(), RawStream, Echo)?;
/// // ... serve, then:
/// server.shutdown(std::time::Duration::from_secs(1));
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// The same with the server dropped at once does not compile where `unused_must_use` is
/// denied (it is a warning by default):
///
/// ```compile_fail
/// # #![deny(unused_must_use)]
/// # use cport_server::{Config, Handler, RawStream, Server, Session};
/// # struct Echo;
/// # impl Handler for Echo {
/// #     fn on_packet(&self, s: &Session, p: &[u8]) { let _ = s.send(p.to_vec()); }
/// # }
/// Server::start(Config::default(), RawStream, Echo)?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// Every close is logged with its reason via `tracing` (at info level when the peer was at
/// fault — bad input, slow consumer, idle, too many packets — else at debug), refusals and
/// accept errors at warn: nothing is printed unless the program installs a subscriber (for
/// example `tracing_subscriber::fmt().init()`).
///
/// An echo server on two workers, served and then shut down gracefully: the session is
/// half-closed, its client reads to the end of the stream and closes, and the session counts
/// as flushed.
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::TcpStream;
/// use std::time::Duration;
///
/// use cport_server::{Config, Handler, RawStream, Server, Session};
///
/// struct Echo;
///
/// impl Handler for Echo {
///     fn on_packet(&self, session: &Session, bytes: &[u8]) {
///         let _ = session.send(bytes.to_vec());
///     }
/// }
///
/// let cfg = Config { threads: 2, ..Config::default() };
/// let server = Server::start(cfg, RawStream, Echo)?;
///
/// let mut client = TcpStream::connect(server.local_addr())?;
/// client.set_read_timeout(Some(Duration::from_secs(10)))?;
/// client.write_all(b"ping")?;
/// let mut back = [0u8; 4];
/// client.read_exact(&mut back)?;
/// assert_eq!(&back, b"ping");
/// assert_eq!(server.handle().metrics().open, 1);
///
/// // The client reads until the server half-closes, then closes its side.
/// let reader = std::thread::spawn(move || {
///     let mut rest = Vec::new();
///     client.read_to_end(&mut rest).map(|_| rest)
/// });
/// let report = server.shutdown(Duration::from_secs(5));
/// assert_eq!(reader.join().unwrap()?, b"");
/// assert_eq!((report.sessions, report.flushed, report.forced), (1, 1, 0));
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "dropping the Server stops it at once: keep it while it serves, and end it with \
              `shutdown`"]
pub struct Server {
    handle: ServerHandle,
    pool: Option<Pool>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.handle.core.local_addr)
            .finish()
    }
}

impl Server {
    /// Binds, listens and starts the workers.
    pub fn start<C: Codec, H: Handler>(cfg: Config, codec: C, handler: H) -> io::Result<Server> {
        // A session's packets queued during a worker's handler passes leave in one send at
        // their end (write coalescing: `session::flush_sends`).
        let mut b = Port::builder()
            .concurrency(cfg.concurrency)
            .before_submit(crate::session::flush_sends);
        if let Some(backend) = cfg.backend {
            b = b.backend(backend).ignore_env();
        }
        let port = b.build()?;
        let sock = socket2::Socket::new(
            Domain::for_address(cfg.addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        sock.set_reuse_address(true)?;
        sock.bind(&cfg.addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", cfg.addr)))?;
        sock.listen(cfg.backlog)?;
        let local_addr = sock
            .local_addr()?
            .as_socket()
            .expect("an IP listener has an IP address");
        let sessions = Arc::new(Slots::new(cfg.max_sessions));
        let core = Arc::new(Core::new(port.clone(), cfg, local_addr));
        let listener = port.associate(sock, LISTENER)?;
        for _ in 0..core.cfg.accepts.max(1) {
            listener.accept(0);
        }
        *core.listener.lock() = Some(listener);
        if let Some(idle) = core.cfg.idle_timeout {
            let _ = port.post_after(sweep_interval(idle), SWEEP, 0);
        }
        if let Some(every) = core.cfg.stats_interval {
            let _ = port.post_after(every, STATS, 0);
        }
        let handle = ServerHandle { core, sessions };
        let h2 = handle.clone();
        let (codec, handler) = (Arc::new(codec), Arc::new(handler));
        let h3 = handler.clone();
        let pool = Pool::spawn(&port, handle.core.cfg.threads, move |_, c| {
            crate::session::in_dispatch(|| dispatch(&h2, &*codec, &*handler, c))
        })?;
        h3.on_start(&handle);
        Ok(Server {
            handle,
            pool: Some(pool),
        })
    }

    /// A handle for handlers and other threads.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// Graceful shutdown: stop accepting; let every session send what it has queued,
    /// half-close and wait for its peer to close, until `deadline`; then close what is left,
    /// stop the workers and report.
    pub fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        self.stop(deadline)
    }

    fn stop(&mut self, deadline: Duration) -> ShutdownReport {
        let t0 = Instant::now();
        let core = &self.handle.core;
        core.stopping.store(true, Relaxed);
        drop(core.listener.lock().take());
        let sessions = self.handle.sessions.all();
        let total = sessions.len() as u64;
        for s in &sessions {
            s.close_after_flush_for(CloseReason::Shutdown);
        }
        let until = t0 + deadline;
        while core.counters.open.load(Relaxed) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut forced = 0;
        let mut unsent = 0;
        for s in self.handle.sessions.all() {
            forced += 1;
            unsent += s.queued_bytes() as u64;
            s.close(CloseReason::Shutdown);
        }
        let settle = Instant::now() + Duration::from_secs(5);
        while core.counters.open.load(Relaxed) > 0 && Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(pool) = self.pool.take() {
            pool.shutdown();
        }
        let report = ShutdownReport {
            sessions: total,
            flushed: total.saturating_sub(forced),
            forced,
            unsent_bytes: unsent,
            elapsed: t0.elapsed(),
        };
        tracing::info!("{report}");
        report
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.pool.is_some() {
            self.stop(Duration::ZERO);
        }
    }
}

/// Runs on a worker thread for every completion of the server's port.
fn dispatch<C: Codec, H: Handler>(srv: &ServerHandle, codec: &C, handler: &H, c: Completion) {
    let core = &srv.core;
    if c.key & NOT_SESSION == 0 {
        let Some(session) = srv.sessions.get(c.key) else {
            return; // a completion of a session that has closed: its slot may be reused
        };
        match c.op {
            Op::Recv(buf) => {
                let on_packet = |s: &Session, p: &[u8]| handler.on_packet(s, p);
                if let Some(reason) = session.received(codec, c.result, buf, &on_packet) {
                    closed(srv, handler, &session, reason);
                }
            }
            Op::RecvPooled(buf) => {
                let on_packet = |s: &Session, p: &[u8]| handler.on_packet(s, p);
                if let Some(reason) = session.received_pooled(codec, c.result, buf, &on_packet) {
                    closed(srv, handler, &session, reason);
                }
            }
            Op::Send(_) if !c.is_aborted() => session.on_sent(c.result),
            _ => {}
        }
        return;
    }
    match c.key {
        LISTENER => on_accept(srv, handler, c),
        ACCEPT_RETRY => core.arm_accept(),
        USER_MESSAGE => {
            if let Op::Message(m) = c.op {
                handler.on_message(srv, c.user, m);
            }
        }
        SWEEP => {
            if let Some(idle) = core.cfg.idle_timeout {
                let now = core.now_ms();
                let limit = idle.as_millis() as u64;
                srv.sessions.for_each(|s| {
                    if s.idle_longer_than(now, limit) {
                        s.close(CloseReason::IdleTimeout);
                    }
                });
                let _ = core.port.post_after(sweep_interval(idle), SWEEP, 0);
            }
        }
        STATS => {
            tracing::info!("{}", core.counters.snapshot());
            if let Some(every) = core.cfg.stats_interval {
                let _ = core.port.post_after(every, STATS, 0);
            }
        }
        k if k & USER_POST == USER_POST => {
            let key = c.result.map_or(0, |n| n as u64);
            handler.on_posted(srv, key, c.user);
        }
        k if k & USER_TIMER == USER_TIMER => handler.on_timer(srv, k & MAX_USER_KEY, c.user),
        REPEAT => {
            if let Some((key, value)) = core.repeat_tick(c.user) {
                handler.on_timer(srv, key, value);
            }
        }
        _ => {}
    }
}

fn on_accept<H: Handler>(srv: &ServerHandle, handler: &H, c: Completion) {
    let core = &srv.core;
    let accepted = match (c.op, c.result) {
        (Op::Accept(Some(a)), Ok(_)) => a,
        (_, Err(e)) if e.is_aborted() || core.stopping() => return,
        (_, Err(e)) => {
            // Out of descriptors or memory: wait a little rather than spin on the error.
            let fd_or_mem = matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
            );
            if fd_or_mem {
                core.rate_limited_warn(&format!("accept failed: {e}; retrying in 100 ms"));
                let _ = core
                    .port
                    .post_after(Duration::from_millis(100), ACCEPT_RETRY, 0);
            } else {
                tracing::warn!("accept failed: {e}");
                core.arm_accept();
            }
            return;
        }
        _ => return,
    };
    if core.stopping() {
        return;
    }
    core.arm_accept();
    let Some(id) = srv.sessions.reserve() else {
        core.counters.refused.fetch_add(1, Relaxed);
        core.rate_limited_warn(&format!(
            "session limit ({}) reached: refusing {:?}",
            core.cfg.max_sessions, accepted.peer
        ));
        return; // dropping the accepted fd closes the connection
    };
    let id = SessionId(id);
    let peer = accepted.peer;
    if core.cfg.nodelay {
        let _ = socket2::SockRef::from(&accepted.fd).set_tcp_nodelay(true);
    }
    let socket = match core.port.associate(accepted.fd, id.0) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("could not associate an accepted connection: {e}");
            srv.sessions.unreserve(id.0);
            return;
        }
    };
    let session = Session::new(id, peer, socket, core.clone(), srv.sessions.clone());
    srv.sessions.fill(id.0, session.clone());
    core.counters.accepted.fetch_add(1, Relaxed);
    core.counters.open.fetch_add(1, Relaxed);
    tracing::debug!(session = %id, ?peer, "session opened");
    if catch_unwind(AssertUnwindSafe(|| handler.on_connect(&session))).is_err() {
        session.handler_panicked("on_connect");
    }
    // Shutdown may have listed the sessions to flush before this one was in the table.
    if core.stopping() {
        session.close_after_flush_for(CloseReason::Shutdown);
    }
    if let Some(reason) = session.receive(None) {
        closed(srv, handler, &session, reason);
    }
}

/// The session finished closing (`Session::received`): the handler hears of it, then the
/// slot is freed. The slot (a game's player index) goes to a new session only once
/// `on_close` has returned (or panicked), so a new session's `on_connect` never precedes it;
/// the session counts as open until then (so `open == 0` means the table is empty). The
/// session's state (`Session::set_state`) is dropped then too, whoever still holds the
/// session.
fn closed<H: Handler>(srv: &ServerHandle, handler: &H, s: &Session, reason: CloseReason) {
    struct Release<'a>(&'a ServerHandle, &'a Session, &'a CloseReason);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.1.drop_state();
            self.0.sessions.release(self.1.id().0);
            self.0.core.counters.closed(self.2);
        }
    }
    let _release = Release(srv, s, &reason);
    handler.on_close(s, &reason);
}
