//! Sessions: a connection's identity, its ordered send queue, its receive path (framing,
//! rate limit, draining) and its close — the whole life of a connection after `accept`. A
//! session's state is private to this module; the server (`server.rs`) hands it completions
//! and runs the handler's callbacks that it asks for.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use cport::{Aborted, SendBuf, Socket};
use parking_lot::Mutex;

use crate::codec::Codec;
use crate::core::{Core, RECV, SEND};
use crate::metrics::CloseReason;
use crate::table::Slots;

/// Identifies a session: its slot in the session table and the slot's generation. An id
/// outlives its session harmlessly: once the session closed, the id never reaches the
/// session that reuses the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub(crate) u64);

impl SessionId {
    /// The slot, `0..max_sessions`; reused after the session closes (a game can use it as
    /// a player index).
    pub fn slot(self) -> usize {
        (self.0 & 0xFFFF_FFFF) as usize
    }

    /// The generation of the slot when the session opened.
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The id as a number (the completion key of the session's socket).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.slot(), self.generation())
    }
}

/// Most buffers gathered into one send (one `sendmsg` iovec array).
const MAX_GATHER: usize = 256;

struct SendState {
    /// `None` once the session is closing: nothing more is sent or received.
    socket: Option<Socket>,
    reason: Option<CloseReason>,
    queue: VecDeque<Bytes>,
    /// Bytes queued or in flight.
    queued: usize,
    sending: bool,
    /// Its send waits in a worker's list for the end of the worker's handler passes
    /// (`flush_sends`); `sending` is false meanwhile.
    scheduled: bool,
    /// Graceful close: once the queue drains, half-close and wait for the peer's end.
    flush_then_close: bool,
    /// The reason a graceful close will be reported with.
    flush_reason: Option<CloseReason>,
    /// The write half is shut; received bytes are discarded until the peer closes.
    draining: bool,
}

struct SessionInner {
    id: SessionId,
    peer: Option<SocketAddr>,
    core: Arc<Core>,
    /// The table the session is in (so that a handler holding only the session reaches the
    /// others, through `Session::server`).
    table: Arc<Slots<Session>>,
    st: Mutex<SendState>,
    /// Milliseconds since the server started, of the last byte received.
    last_rx: AtomicU64,
    /// Packet-rate window (touched only by the thread handling the session's receive).
    rate_window: AtomicU64,
    rate_count: AtomicU32,
    /// The start of a packet split across pooled receives, kept until the rest arrives
    /// (empty, with no allocation, between whole packets). Touched only by the thread
    /// handling the session's receive.
    carry: Mutex<Vec<u8>>,
    /// The program's per-session value (`Session::set_state`), behind the session's own
    /// lock: sessions never contend for it.
    state: Mutex<StateSlot>,
}

/// The per-session value and whether the session has finished closing (after which a value
/// set is dropped at once rather than kept by a stray handle). Its methods are in `state`.
#[derive(Default)]
pub(crate) struct StateSlot {
    pub(crate) value: Option<Box<dyn Any + Send>>,
    pub(crate) closed: bool,
}

/// A handle to a session. Cheap to clone, `Send + Sync`: handlers keep it and send on it from
/// any thread. Once the session is closed, sends are refused and the handle only identifies.
///
/// A handler that hands each new session to the program's own thread, which sends on it and
/// closes it gracefully:
///
/// ```
/// use std::io::Read;
/// use std::net::TcpStream;
/// use std::sync::{mpsc, Mutex};
/// use std::time::Duration;
///
/// use cport_server::{Config, Handler, RawStream, Server, Session};
///
/// struct Register(Mutex<mpsc::Sender<Session>>);
///
/// impl Handler for Register {
///     fn on_connect(&self, session: &Session) {
///         let _ = self.0.lock().unwrap().send(session.clone());
///     }
///     fn on_packet(&self, _: &Session, _: &[u8]) {}
/// }
///
/// let (tx, rx) = mpsc::channel();
/// let server = Server::start(Config::default(), RawStream, Register(Mutex::new(tx)))?;
/// let mut client = TcpStream::connect(server.local_addr())?;
/// client.set_read_timeout(Some(Duration::from_secs(10)))?;
///
/// let session = rx.recv_timeout(Duration::from_secs(10)).expect("a session");
/// assert_eq!(session.peer_addr(), Some(client.local_addr()?));
/// // Bytes leave in the order they were queued, whatever thread queues them.
/// assert!(session.send("one "));
/// assert!(session.send(b"two".to_vec()));
/// // Send what is queued, then half-close: the client reads to the end of the stream.
/// session.close_after_flush();
/// assert!(!session.is_open());
/// let mut got = String::new();
/// client.read_to_string(&mut got)?;
/// assert_eq!(got, "one two");
/// drop(client);
/// server.shutdown(Duration::from_secs(1));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("peer", &self.inner.peer)
            .finish()
    }
}

impl Session {
    pub(crate) fn new(
        id: SessionId,
        peer: Option<SocketAddr>,
        socket: Socket,
        core: Arc<Core>,
        table: Arc<Slots<Session>>,
    ) -> Session {
        let now = core.now_ms();
        Session {
            inner: Arc::new(SessionInner {
                id,
                peer,
                core,
                table,
                st: Mutex::new(SendState {
                    socket: Some(socket),
                    reason: None,
                    queue: VecDeque::new(),
                    queued: 0,
                    sending: false,
                    scheduled: false,
                    flush_then_close: false,
                    flush_reason: None,
                    draining: false,
                }),
                last_rx: AtomicU64::new(now),
                rate_window: AtomicU64::new(now),
                rate_count: AtomicU32::new(0),
                carry: Mutex::new(Vec::new()),
                state: Mutex::new(StateSlot::default()),
            }),
        }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.inner.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.inner.peer
    }

    /// The program's per-session value (for the methods in `state.rs`).
    pub(crate) fn state_slot(&self) -> &Mutex<StateSlot> {
        &self.inner.state
    }

    /// The server's shared state and session table (for `Session::server`, in `server.rs`).
    pub(crate) fn parts(&self) -> (&Arc<Core>, &Arc<Slots<Session>>) {
        (&self.inner.core, &self.inner.table)
    }

    /// True until the session starts closing.
    pub fn is_open(&self) -> bool {
        let st = self.inner.st.lock();
        st.socket.is_some() && !st.flush_then_close
    }

    /// Bytes queued for this session and not yet sent.
    pub fn queued_bytes(&self) -> usize {
        self.inner.st.lock().queued
    }

    /// Queues one encoded packet. Bytes leave in the order `send` was called, whatever
    /// thread calls it; everything queued while a send is in flight goes out in the next
    /// (gathering) send. Called from a handler (on a worker), the send starts when the
    /// worker's handler passes end (when it goes back to the port to wait, or at most 16
    /// passes later): everything the session was sent meanwhile, by any handler of that
    /// worker, leaves in one send. From any other thread it starts at once. A shared
    /// [`Bytes`] is sent without a copy, so one packet can go to many sessions (broadcast).
    ///
    /// Returns false if the packet was not queued and will never be sent: the session is
    /// closing, or this packet would take the session's queue over its cap (the session is
    /// then closed as a slow consumer). The result must be looked at (`#[must_use]`): a
    /// program that keeps its own record of what a peer was sent (a game's view list, a
    /// chat's history) is wrong after a `false` it did not see. Where nothing is to be done
    /// (an echo, a broadcast to whoever is still there), say so with `let _ =`:
    ///
    /// ```
    /// # #![deny(unused_must_use)]
    /// use cport_server::Session;
    ///
    /// fn greet(session: &Session, seen: &mut Vec<String>) {
    ///     if session.send("hello\n") {
    ///         seen.push("hello".into());
    ///     }
    /// }
    ///
    /// fn echo(session: &Session, packet: &[u8]) {
    ///     // The session is closing: nothing to do.
    ///     let _ = session.send(packet.to_vec());
    /// }
    /// ```
    ///
    /// The same with the result dropped does not compile where `unused_must_use` is denied
    /// (it is a warning by default):
    ///
    /// ```compile_fail
    /// #![deny(unused_must_use)]
    /// use cport_server::Session;
    ///
    /// fn echo(session: &Session, packet: &[u8]) {
    ///     session.send(packet.to_vec());
    /// }
    /// ```
    #[must_use = "false means the packet was not queued and will never be sent (the session is \
                  closing, or was closed as a slow consumer); `let _ =` if nothing is to be done"]
    pub fn send(&self, packet: impl Into<Bytes>) -> bool {
        let packet = packet.into();
        let len = packet.len();
        if len == 0 {
            return self.is_open();
        }
        let core = &self.inner.core;
        let mut st = self.inner.st.lock();
        if st.socket.is_none() || st.flush_then_close {
            return false;
        }
        if st.queued + len > core.cfg.max_send_queue {
            let queued = st.queued + len;
            drop(st);
            self.close(CloseReason::SlowConsumer { queued });
            return false;
        }
        st.queue.push_back(packet);
        st.queued += len;
        core.counters.queued_bytes.fetch_add(len as u64, Relaxed);
        core.counters.packets_out.fetch_add(1, Relaxed);
        self.want_send(&mut st);
        true
    }

    /// The queue is not empty and no send is in flight: start one now, or, on a worker inside
    /// the server's dispatch, put the session on the worker's list to send at the end of its
    /// handler passes (the port's `before_submit` hook runs `flush_sends`).
    fn want_send(&self, st: &mut SendState) {
        if st.sending || st.scheduled {
            return;
        }
        if IN_DISPATCH.get() {
            st.scheduled = true;
            SCHEDULED.with(|l| l.borrow_mut().push(self.clone()));
        } else {
            start_send(&self.inner.core, st);
        }
    }

    /// Starts the send `want_send` scheduled (from `flush_sends`).
    fn send_scheduled(&self) {
        let mut st = self.inner.st.lock();
        st.scheduled = false;
        if st.socket.is_none() || st.sending {
            return;
        }
        if !st.queue.is_empty() {
            start_send(&self.inner.core, &mut st);
        } else if st.flush_then_close {
            half_close(&mut st);
        }
    }

    /// Closes the session: pending operations are cancelled, queued bytes dropped, and the
    /// handler's `on_close` runs once with `reason` (the first reason given wins). To send a
    /// last message first (an error line, a goodbye), use
    /// [`close_after_flush_for`](Session::close_after_flush_for) instead.
    pub fn close(&self, reason: CloseReason) {
        let socket = {
            let mut st = self.inner.st.lock();
            if st.reason.is_none() {
                st.reason = Some(reason);
            }
            st.socket.take()
        };
        // Dropping the socket cancels its receive; that completion finishes the close.
        drop(socket);
    }

    /// Graceful close: stop taking new packets to send, send what is queued, half-close,
    /// and close when the peer has closed too (or when `close` is called, e.g. at a
    /// deadline). Reported with [`CloseReason::Local`]; see
    /// [`close_after_flush_for`](Session::close_after_flush_for) for the details and a
    /// reason of your own.
    pub fn close_after_flush(&self) {
        self.close_after_flush_for(CloseReason::Local);
    }

    /// Sends what is queued, then closes, and reports `reason` to
    /// [`Handler::on_close`](crate::Handler::on_close): the way to send a last line before a
    /// protocol close. [`send`](Session::send) the line, then call this; sends after it are
    /// refused. Once the queue has drained the session half-closes (the peer reads the last
    /// bytes, then the end of the stream) and closes when the peer closes its side, with
    /// `reason` (a reset by the peer is reported as [`CloseReason::Reset`]). What the peer
    /// sends meanwhile is discarded. A peer that never closes holds the session until
    /// [`close`](Session::close), the idle timeout ([`Config::idle_timeout`](crate::Config))
    /// or shutdown.
    ///
    /// An error line, then the close, for a command the server does not know:
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::net::TcpStream;
    ///
    /// use cport_server::{CloseReason, Config, Delimited, Handler, Server, Session};
    ///
    /// struct Strict;
    ///
    /// impl Handler for Strict {
    ///     fn on_packet(&self, session: &Session, line: &[u8]) {
    ///         if line != b"PING" {
    ///             let _ = session.send("ERR unknown command\n");
    ///             session.close_after_flush_for(CloseReason::Rejected("unknown command".into()));
    ///             return;
    ///         }
    ///         let _ = session.send("PONG\n");
    ///     }
    /// }
    ///
    /// let server = Server::start(Config::default(), Delimited::lines(64), Strict)?;
    /// let mut client = TcpStream::connect(server.local_addr())?;
    /// client.write_all(b"PING\nJUMP\n")?;
    /// let mut got = String::new();
    /// client.read_to_string(&mut got)?; // up to the end of the stream
    /// assert_eq!(got, "PONG\nERR unknown command\n");
    /// # drop(client);
    /// # server.shutdown(std::time::Duration::from_secs(1));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn close_after_flush_for(&self, reason: CloseReason) {
        let mut st = self.inner.st.lock();
        if st.socket.is_none() || st.flush_then_close {
            return;
        }
        st.flush_then_close = true;
        st.flush_reason = Some(reason);
        if !st.sending && !st.scheduled {
            half_close(&mut st);
        }
    }

    /// Nothing received for more than `limit_ms` at `now_ms` (the idle sweep).
    pub(crate) fn idle_longer_than(&self, now_ms: u64, limit_ms: u64) -> bool {
        now_ms.saturating_sub(self.inner.last_rx.load(Relaxed)) > limit_ms
    }

    /// A handler call for this session panicked: close the session (its receive would never
    /// be restarted, so it would otherwise stay open for ever, holding its slot).
    pub(crate) fn handler_panicked(&self, what: &str) {
        let (id, peer) = (self.id(), self.peer_addr());
        tracing::error!(session = %id, ?peer, "{what} panicked: closing the session");
        self.close(CloseReason::Local);
    }

    /// The session's receive completed. Frames what arrived with `codec` and hands each
    /// packet to `on_packet` (the handler's, run under `catch_unwind` here), then starts the
    /// next receive — or, if the session is closing, finishes the close and returns why: the
    /// server then runs the handler's `on_close` and frees the slot. Only the thread handling
    /// the session's receive runs this, so a session's packets are handled one at a time, in
    /// order, and its close is finished exactly once.
    pub(crate) fn received<C: Codec>(
        &self,
        codec: &C,
        result: io::Result<usize>,
        mut buf: Vec<u8>,
        on_packet: &dyn Fn(&Session, &[u8]),
    ) -> Option<CloseReason> {
        let core = &self.inner.core;
        if let Err(reason) = self.arrived(&result) {
            return Some(reason);
        }
        if self.inner.st.lock().draining {
            buf.clear(); // closing: what the peer still sends is discarded
            return self.receive(Some(buf));
        }
        let pos = self.frame(codec, &buf, on_packet);
        buf.drain(..pos);
        if buf.capacity() - buf.len() < core.cfg.recv_buffer / 2 {
            buf.reserve(core.cfg.recv_buffer);
        }
        self.receive(Some(buf))
    }

    /// [`Session::received`] from the server's pool: frames straight from the pool buffer
    /// and keeps only a split packet's start (`carry`); the buffer goes back at once.
    pub(crate) fn received_pooled<C: Codec>(
        &self,
        codec: &C,
        result: io::Result<usize>,
        buf: Option<cport::PooledBuf>,
        on_packet: &dyn Fn(&Session, &[u8]),
    ) -> Option<CloseReason> {
        if let Err(reason) = self.arrived(&result) {
            return Some(reason);
        }
        // Data always comes in a buffer; closing (draining): what arrives is discarded.
        let Some(buf) = buf.filter(|_| !self.inner.st.lock().draining) else {
            return self.receive(None);
        };
        let mut carry = self.inner.carry.lock();
        if carry.is_empty() {
            let pos = self.frame(codec, &buf, on_packet);
            if pos < buf.len() {
                carry.extend_from_slice(&buf[pos..]);
            }
        } else {
            carry.extend_from_slice(&buf);
            drop(buf);
            let pos = self.frame(codec, &carry, on_packet);
            carry.drain(..pos);
            if carry.is_empty() {
                // The split packet is whole: an idle session keeps no buffer.
                *carry = Vec::new();
            }
        }
        drop(carry);
        self.receive(None)
    }

    /// A receive's completion: end of stream, error or abort finish the close (`Err`: why).
    fn arrived(&self, result: &io::Result<usize>) -> Result<usize, CloseReason> {
        let core = &self.inner.core;
        let n = match *result {
            Ok(0) => {
                // A graceful close ends when the peer closes too: report it as asked for.
                let graceful = self.inner.st.lock().flush_reason.clone();
                self.close(graceful.unwrap_or(CloseReason::PeerClosed));
                return Err(self.finish_close());
            }
            Ok(n) => n,
            Err(ref e) if e.is_aborted() => return Err(self.finish_close()),
            Err(ref e) => {
                self.close(CloseReason::from_io(e));
                return Err(self.finish_close());
            }
        };
        core.counters.bytes_in.fetch_add(n as u64, Relaxed);
        self.inner.last_rx.store(core.now_ms(), Relaxed);
        Ok(n)
    }

    /// Frames what arrived with `codec` and hands each whole packet to `on_packet` (under
    /// `catch_unwind`); stops early if the session closes. Returns the bytes consumed.
    fn frame<C: Codec>(&self, codec: &C, buf: &[u8], on_packet: &dyn Fn(&Session, &[u8])) -> usize {
        let core = &self.inner.core;
        let now = core.now_ms();
        let mut pos = 0;
        let mut packets = 0u64;
        while pos < buf.len() {
            match codec.frame(&buf[pos..]) {
                Ok(Some(len)) if len == 0 || len > buf.len() - pos => {
                    // A codec bug, not the peer's: still close only this session, with a
                    // reason.
                    self.close(CloseReason::Rejected(format!(
                        "codec framed {len} bytes out of {} available",
                        buf.len() - pos
                    )));
                    break;
                }
                Ok(Some(len)) => {
                    if let Some(cap) = core.cfg.max_packets_per_sec {
                        if self.over_rate(now, cap) {
                            self.close(CloseReason::RateLimited);
                            break;
                        }
                    }
                    let packet = codec.packet(&buf[pos..pos + len]);
                    if catch_unwind(AssertUnwindSafe(|| on_packet(self, packet))).is_err() {
                        self.handler_panicked("on_packet");
                        break;
                    }
                    pos += len;
                    packets += 1;
                    if self.inner.st.lock().socket.is_none() {
                        break; // the handler (or a sender) closed the session
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.close(CloseReason::Protocol(e));
                    break;
                }
            }
        }
        core.counters.packets_in.fetch_add(packets, Relaxed);
        pos
    }

    /// Starts the session's next receive — the first one after `on_connect` too — or, if it
    /// is closing, finishes the close and returns why (see [`Session::received`]). Into the
    /// server's pool if it has one (`buf`, the session's own buffer, is then not needed).
    pub(crate) fn receive(&self, buf: Option<Vec<u8>>) -> Option<CloseReason> {
        {
            let st = self.inner.st.lock();
            if let Some(socket) = &st.socket {
                let core = &self.inner.core;
                match &core.pool {
                    Some(pool) => socket.recv_pooled(pool, RECV),
                    None => socket.recv(
                        buf.unwrap_or_else(|| Vec::with_capacity(core.cfg.recv_buffer)),
                        RECV,
                    ),
                }
                return None;
            }
        }
        Some(self.finish_close())
    }

    /// The last step of a close, run once by the thread that held the session's receive:
    /// drops the socket, accounts for what was never sent, logs the reason.
    fn finish_close(&self) -> CloseReason {
        let core = &self.inner.core;
        let (reason, unsent) = {
            let mut st = self.inner.st.lock();
            drop(st.socket.take());
            let unsent = st.queued;
            st.queued = 0;
            (st.reason.clone().unwrap_or(CloseReason::Local), unsent)
        };
        core.counters.queued_bytes.fetch_sub(unsent as u64, Relaxed);
        let (id, peer) = (self.id(), self.peer_addr());
        if reason.is_peer_fault() {
            tracing::info!(session = %id, ?peer, "session closed: {reason}");
        } else {
            tracing::debug!(session = %id, ?peer, "session closed: {reason}");
        }
        reason
    }

    fn over_rate(&self, now: u64, cap: u32) -> bool {
        let start = self.inner.rate_window.load(Relaxed);
        if now >= start + 1000 {
            self.inner.rate_window.store(now, Relaxed);
            self.inner.rate_count.store(1, Relaxed);
            return false;
        }
        self.inner.rate_count.fetch_add(1, Relaxed) + 1 > cap
    }

    /// A send finished (the completion of the one in flight).
    pub(crate) fn on_sent(&self, result: io::Result<usize>) {
        let core = &self.inner.core;
        let mut st = self.inner.st.lock();
        st.sending = false;
        if st.socket.is_none() {
            return; // closing: the close accounts for what was queued
        }
        match result {
            Ok(n) => {
                st.queued -= n;
                core.counters.queued_bytes.fetch_sub(n as u64, Relaxed);
                core.counters.bytes_out.fetch_add(n as u64, Relaxed);
                if !st.queue.is_empty() {
                    self.want_send(&mut st);
                } else {
                    // Drained: give the queue's memory back (even one packet leaves 128
                    // bytes; a burst, 32 per packet): one small allocation per burst,
                    // against a few hundred bytes per idle session (BENCHMARKS.md).
                    if st.queue.capacity() > 0 {
                        st.queue = VecDeque::new();
                    }
                    if st.flush_then_close {
                        half_close(&mut st);
                    }
                }
            }
            Err(e) => {
                drop(st);
                self.close(CloseReason::from_io(&e));
            }
        }
    }
}

thread_local! {
    /// This thread runs the server's dispatch now: sends wait for the end of its passes.
    static IN_DISPATCH: Cell<bool> = const { Cell::new(false) };
    /// Sessions whose send waits for the end of this worker's handler passes.
    static SCHEDULED: RefCell<Vec<Session>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` as the server's dispatch of one completion: sends its handlers make wait for
/// [`flush_sends`].
pub(crate) fn in_dispatch<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_DISPATCH.set(self.0);
        }
    }
    let _reset = Reset(IN_DISPATCH.replace(true));
    f()
}

/// Starts the sends that this thread's dispatches scheduled: one per session, carrying
/// everything queued for it. Run by the port (`PortBuilder::before_submit`) on the worker,
/// still inside its handler pass, just before it submits its operations.
pub(crate) fn flush_sends() {
    let mut list = SCHEDULED.with(|l| std::mem::take(&mut *l.borrow_mut()));
    for s in list.drain(..) {
        s.send_scheduled();
    }
    // Keep the list's memory for the next passes (none of the sends above scheduled more).
    SCHEDULED.with(|l| {
        let mut l = l.borrow_mut();
        if l.is_empty() {
            *l = list;
        }
    });
}

/// Sends everything queued (up to `MAX_GATHER` buffers) as one operation.
fn start_send(core: &Core, st: &mut SendState) {
    let Some(socket) = &st.socket else {
        return;
    };
    let n = st.queue.len().min(MAX_GATHER);
    let buf = if n == 1 {
        SendBuf::Bytes(st.queue.pop_front().expect("queue not empty"))
    } else {
        SendBuf::Vectored(st.queue.drain(..n).collect())
    };
    st.sending = true;
    core.counters.sends.fetch_add(1, Relaxed);
    socket.send(buf, SEND);
}

fn half_close(st: &mut SendState) {
    if let Some(socket) = &st.socket {
        st.draining = true;
        if let Err(e) = socket.shutdown(std::net::Shutdown::Write) {
            tracing::debug!("half-close failed: {e}");
        }
    }
}
