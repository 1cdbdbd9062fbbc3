//! The completion port: the public [`Port`] and [`Socket`], the table that owns every
//! operation while it is in flight, and the glue between the scheduler and a backend.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use socket2::{SockAddr, SockRef};

use crate::combine::{Combiner, HandOff};
use crate::op::{aborted, Completion, Op, OpData, SendBuf, TimerId};
use crate::sched::{Outcome, Poller, Sched, Sink, Waiter};
use crate::slab::Slab;
use crate::sync::{AtomicUsize as SyncUsize, Ordering::SeqCst};
use crate::sys::{Backend, Driver, Raw};
use crate::timer::Timers;

/// The port was shut down: [`Port::get`] answers this, distinct from a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("completion port is shut down")
    }
}

impl std::error::Error for Closed {}

impl From<Closed> for io::Error {
    fn from(c: Closed) -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, c)
    }
}

/// Builds a [`Port`]: concurrency value, backend, ring size.
#[derive(Debug, Clone)]
pub struct PortBuilder {
    concurrency: usize,
    backend: Backend,
    entries: u32,
    env: bool,
}

impl Default for PortBuilder {
    fn default() -> Self {
        PortBuilder {
            concurrency: 0,
            backend: Backend::Auto,
            entries: 1024,
            env: true,
        }
    }
}

impl PortBuilder {
    /// The concurrency value: at most this many threads run handlers at once
    /// (between a `get` that returned and their next `get`). `0` = available parallelism.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// The backend (default [`Backend::Auto`]). The environment variable `CPORT_BACKEND`
    /// (`uring`, `epoll` or `auto`), when set, overrides this.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Ignore `CPORT_BACKEND` (for programs that take the backend from their own options).
    pub fn ignore_env(mut self) -> Self {
        self.env = false;
        self
    }

    /// Submission-queue size of the io_uring backend (default 1024; the completion queue is
    /// four times that, and neither bounds how many operations may be in flight).
    pub fn entries(mut self, n: u32) -> Self {
        self.entries = n.max(8);
        self
    }

    /// Creates the port — `CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, n)`.
    #[doc(alias = "CreateIoCompletionPort")]
    pub fn build(self) -> io::Result<Port> {
        let mut backend = self.backend;
        if self.env {
            if let Ok(v) = std::env::var("CPORT_BACKEND") {
                backend = v.parse()?;
            }
        }
        let concurrency = match self.concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let shared_wait = crate::sys::shared_wait_wanted();
        let driver = Driver::open(backend, self.entries, shared_wait)?;
        static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
        Ok(Port {
            shared: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                sched: Sched::new(concurrency, shared_wait),
                table: Mutex::new(Table::default()),
                timers: Mutex::new(TimerQueue {
                    wheel: Timers::default(),
                    alarm: None,
                }),
                hand_off: shared_wait && matches!(driver, Driver::Uring(_)),
                returning: SyncUsize::new(0),
                driver,
                shared_wait,
            }),
        })
    }
}

/// An I/O completion port. Cheap to clone; every clone is the same port, shared by all
/// threads. See the [crate documentation](crate) for the model.
#[derive(Clone)]
pub struct Port {
    shared: Arc<Shared>,
}

impl fmt::Debug for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Port")
            .field("backend", &self.backend())
            .field("concurrency", &self.concurrency())
            .finish()
    }
}

/// A snapshot of a port's state, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortStats {
    /// Threads between a `get` that returned and their next `get`.
    pub active: usize,
    /// Threads waiting in `get` (parked or polling the kernel).
    pub waiting: usize,
    /// Completions queued in user space, not yet taken.
    pub ready: usize,
    /// Operations started and not yet completed.
    pub in_flight: usize,
    /// Associated sockets not yet fully closed.
    pub sockets: usize,
    /// Timers set and not yet fired or cancelled.
    pub timers: usize,
}

impl Port {
    /// A port with concurrency `concurrency` (`0` = available parallelism) on the default
    /// backend (see [`PortBuilder`]).
    #[doc(alias = "CreateIoCompletionPort")]
    pub fn new(concurrency: usize) -> io::Result<Port> {
        Port::builder().concurrency(concurrency).build()
    }

    /// A builder for a port with non-default settings.
    pub fn builder() -> PortBuilder {
        PortBuilder::default()
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.shared.driver.backend()
    }

    /// The concurrency value.
    pub fn concurrency(&self) -> usize {
        self.shared.sched.concurrency()
    }

    /// Associates a socket (listener, stream, datagram socket, any pollable fd) with the port
    /// under a completion key, once. The port owns the descriptor from now on; it is closed
    /// when the returned [`Socket`] is dropped and its last operation has completed.
    /// `associate` puts the descriptor in non-blocking mode (its operations never block a
    /// thread; a blocking read of your own on it would fail with `WouldBlock`).
    #[doc(alias = "CreateIoCompletionPort")]
    pub fn associate(&self, fd: impl Into<OwnedFd>, key: u64) -> io::Result<Socket> {
        let fd: OwnedFd = fd.into();
        if self.shared.sched.is_closed() {
            return Err(Closed.into());
        }
        let sref = SockRef::from(&fd);
        sref.set_nonblocking(true)?;
        let stream = sref
            .r#type()
            .map(|t| t == socket2::Type::STREAM)
            .unwrap_or(false);
        let raw = fd.as_raw_fd();
        let token = self.shared.table.lock().socks.insert(SockEntry {
            fd,
            key,
            stream,
            recv_q: VecDeque::new(),
            send_q: VecDeque::new(),
            free: Vec::new(),
            closed: false,
        });
        if let Err(e) = self.shared.driver.register(token, raw, stream) {
            self.shared.table.lock().socks.remove(token);
            return Err(e);
        }
        Ok(Socket {
            port: self.clone(),
            token,
            key,
            fd: raw,
        })
    }

    /// Dequeues one completion, waiting up to `timeout` (`None` = forever).
    /// `Ok(None)` is a timeout; `Err(Closed)` means the port was shut down.
    ///
    /// Calling `get` ends the calling thread's previous handler pass (it gives back its
    /// concurrency slot); returning a completion starts a new one.
    #[doc(alias = "GetQueuedCompletionStatus")]
    pub fn get(&self, timeout: Option<Duration>) -> Result<Option<Completion>, Closed> {
        let mut out = None;
        self.get_into(&mut out, 1, timeout)?;
        Ok(out)
    }

    /// Dequeues up to `max` completions at once into `out` (appending), waiting up to
    /// `timeout` for the first. Returns how many were added (0 on timeout).
    #[doc(alias = "GetQueuedCompletionStatusEx")]
    pub fn get_many(
        &self,
        out: &mut Vec<Completion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, Closed> {
        self.get_into(out, max.max(1), timeout)
    }

    fn get_into(
        &self,
        out: &mut impl Sink<Completion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, Closed> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let shared = &*self.shared;
        let (had_slot, mut dirty, reap, waiter) = LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            let e = l.entry(&self.shared);
            let mut was = (std::mem::take(&mut e.held), std::mem::take(&mut e.dirty));
            if e.returning && shared.pending() {
                // Handed over by a thread outside any handler pass (`Shared::issue`): this
                // thread submits it as its own deferred work.
                was.1 = true;
            }
            // A thread that goes from one ready completion to the next never waits in the
            // kernel; now and then it takes what the kernel completed meanwhile, so I/O joins
            // the queue about when it finished, as with IOCP's single kernel queue, instead of
            // waiting for the queue of posts and timers to run dry.
            // Counted in passes so that the clock is read only every REAP_CHECK_PASSES, and
            // gated by time so that a fast stream of posts pays for one look per interval.
            let mut reap = None;
            if was.0 {
                e.passes_since_reap += 1;
                if e.passes_since_reap >= REAP_CHECK_PASSES {
                    e.passes_since_reap = 0;
                    let now = Instant::now();
                    if now.saturating_duration_since(e.last_reap) >= REAP_INTERVAL {
                        e.last_reap = now;
                        reap = Some(now);
                    }
                }
            }
            (was.0, was.1, reap, l.waiter.clone())
        });
        if let Some(now) = reap {
            shared.reap_now(now);
        }
        let before = out.count();
        let outcome = shared
            .sched
            .get(had_slot, &mut dirty, deadline, max, out, &waiter, shared);
        if dirty {
            // Taken at once, with operations still unsubmitted: batch them with the next
            // handler pass's, up to a bound.
            let flush = LOCAL.with(|l| {
                let mut l = l.borrow_mut();
                let e = l.entry(&self.shared);
                e.deferred_passes += 1;
                if e.deferred_passes >= MAX_DEFERRED_PASSES {
                    e.deferred_passes = 0;
                    true
                } else {
                    e.dirty = true;
                    false
                }
            });
            if flush {
                shared.flush();
            }
        } else {
            LOCAL.with(|l| l.borrow_mut().entry(&self.shared).deferred_passes = 0);
        }
        match outcome {
            Outcome::Got => {
                LOCAL.with(|l| {
                    let mut l = l.borrow_mut();
                    let e = l.entry(&self.shared);
                    e.held = true;
                    if shared.hand_off && e.defer && !e.returning {
                        e.returning = true;
                        shared.returning.fetch_add(1, SeqCst);
                    }
                });
                Ok(out.count() - before)
            }
            Outcome::Timeout => Ok(0),
            Outcome::Closed => Err(Closed),
        }
    }

    /// Queues a user completion `{ key, user, result: Ok(bytes), op: Op::Post }` on the port.
    #[doc(alias = "PostQueuedCompletionStatus")]
    pub fn post(&self, key: u64, bytes: usize, user: u64) -> Result<(), Closed> {
        if self.shared.sched.is_closed() {
            return Err(Closed);
        }
        let c = Completion {
            key,
            user,
            result: Ok(bytes),
            op: Op::Post,
        };
        self.shared.sched.push_all([c], &*self.shared);
        Ok(())
    }

    /// Queues a user completion `{ key, user, result: Ok(0), op: Op::Message(m) }` that owns
    /// `value` — how work done off the port hands its result back (the course's `EV_DB`
    /// pattern, without a pointer in the completion key): a database thread posts the loaded
    /// row, a worker takes it back with [`Message::downcast`](crate::Message::downcast).
    ///
    /// Delivered exactly once, like [`Port::post`]. A message still queued when the port shuts
    /// down is dropped with the queue, never leaked; after shutdown, `Err(Closed)` and `value`
    /// is dropped at once.
    #[doc(alias = "PostQueuedCompletionStatus")]
    pub fn post_message<T: std::any::Any + Send>(
        &self,
        key: u64,
        user: u64,
        value: T,
    ) -> Result<(), Closed> {
        if self.shared.sched.is_closed() {
            return Err(Closed);
        }
        let c = Completion {
            key,
            user,
            result: Ok(0),
            op: Op::Message(crate::op::Message::new(value)),
        };
        self.shared.sched.push_all([c], &*self.shared);
        Ok(())
    }

    /// Queues `{ key, user, result: Ok(0), op: Op::Timer(id) }` on the port once `delay` has
    /// passed (never before). Timers fire in deadline order; see [`Port::cancel_timer`].
    #[doc(alias = "CreateTimerQueueTimer")]
    pub fn post_after(&self, delay: Duration, key: u64, user: u64) -> Result<TimerId, Closed> {
        if self.shared.sched.is_closed() {
            return Err(Closed);
        }
        // A delay too large for `Instant` is as good as never (but still cancellable).
        let now = Instant::now();
        let deadline = now
            .checked_add(delay)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        let shared = &*self.shared;
        let mut t = shared.timers.lock();
        let (id, earliest) = t.wheel.add(deadline, key, user);
        if earliest {
            if shared.shared_wait {
                shared.set_alarm(&mut t);
            } else {
                drop(t);
                shared.sched.interrupt_poller(shared);
            }
        }
        Ok(id)
    }

    /// Cancels a timer. True if it had not fired: then it never will. False if it already
    /// fired (its completion is queued or delivered) or was cancelled before.
    #[doc(alias = "DeleteTimerQueueTimer")]
    pub fn cancel_timer(&self, id: TimerId) -> bool {
        self.shared.timers.lock().wheel.cancel(id)
    }

    /// Runs `f`, which may block, while the calling thread's concurrency slot is lent to
    /// another waiting thread; takes a slot back (waiting for one if needed) before
    /// returning. Outside a handler pass of this port it just runs `f`.
    ///
    /// On io_uring, a timed blocking call inside `f` (a read with `SO_RCVTIMEO`, a wait with
    /// a timeout) can fail once with `ErrorKind::Interrupted`: the kernel runs the follow-up
    /// work of operations this worker submitted earlier on this thread, and interrupts such
    /// calls to do it. Retry on `Interrupted` (`read_exact` and `write_all` do), or use the
    /// epoll backend. A thread outside any handler pass (`main`, a database thread) is not
    /// affected: on io_uring it leaves its submissions to the workers.
    pub fn blocking<R>(&self, f: impl FnOnce() -> R) -> R {
        let shared = &*self.shared;
        // Outside the handler pass while `f` runs: what `f` starts is submitted at once (it may
        // wait for it), not deferred to a `get` that comes only after `f`.
        let (held, dirty) = LOCAL.with(|l| match l.borrow_mut().find(shared.id) {
            // No longer bound to come back to `get` soon: what was handed over goes out now.
            Some(e) => (
                std::mem::take(&mut e.held),
                std::mem::take(&mut e.dirty) | shared.stop_returning(e),
            ),
            None => (false, false),
        });
        if dirty {
            shared.flush();
        }
        if !held {
            return f();
        }
        shared.sched.release_slot(shared);
        struct Resume<'a>(&'a Shared);
        impl Drop for Resume<'_> {
            fn drop(&mut self) {
                let waiter = LOCAL.with(|l| {
                    let mut l = l.borrow_mut();
                    if let Some(e) = l.find(self.0.id) {
                        e.held = true;
                    }
                    l.waiter.clone()
                });
                self.0.sched.leave_blocking(&waiter);
            }
        }
        let _resume = Resume(shared);
        f()
    }

    /// Lets the calling thread's operations wait for its next `get` to be submitted together.
    ///
    /// By default an operation is handed to the kernel when it is started, as IOCP's
    /// `WSASend` is issued at once. A thread that loops on `get` can opt in to deferral: an
    /// operation it starts inside a handler pass (between a `get` that returned and the next
    /// one) is then submitted when it comes back to `get`, together with everything else it
    /// started (and with the next passes' operations if completions are ready at once, up to
    /// 16 passes): one system call for many operations under load. [`Pool`](crate::Pool)
    /// workers opt in. The price: a handler that starts I/O and then computes for long should
    /// call [`Port::submit`] first. Outside a handler pass, and in [`Port::blocking`],
    /// operations are submitted at once either way.
    pub fn defer_submissions(&self) {
        LOCAL.with(|l| l.borrow_mut().entry(&self.shared).defer = true);
    }

    /// `Pool::spawn`, before it starts `n` workers: each counts at once as a thread that will
    /// come to `get` and submit what threads outside any handler pass hand over
    /// (`Shared::issue`), so that `main`, starting operations right after `Pool::spawn`, does
    /// not submit them itself while the workers are still starting. Each worker takes over
    /// its unit with [`Port::enlist_worker`]; `-n` gives back units of workers never started.
    pub(crate) fn expect_workers(&self, n: isize) {
        if self.shared.hand_off {
            if n >= 0 {
                self.shared.returning.fetch_add(n as usize, SeqCst);
            } else {
                self.shared.returning.fetch_sub(n.unsigned_abs(), SeqCst);
            }
        }
    }

    /// A `Pool` worker, about to loop on `get`: it defers its submissions and takes over the
    /// unit of `returning` that [`Port::expect_workers`] counted for it.
    pub(crate) fn enlist_worker(&self) {
        let shared = &*self.shared;
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            let e = l.entry(&self.shared);
            e.defer = true;
            if shared.hand_off {
                debug_assert!(!e.returning, "a thread is one Pool's worker at most once");
                e.returning = true;
            }
        });
    }

    /// Submits now the operations this thread started in its current handler pass (only a
    /// thread that called [`Port::defer_submissions`], such as a [`Pool`](crate::Pool)
    /// worker, has any waiting).
    pub fn submit(&self) {
        let dirty = LOCAL.with(|l| {
            l.borrow_mut()
                .find(self.shared.id)
                .is_some_and(|e| std::mem::take(&mut e.dirty))
        });
        if dirty {
            self.shared.flush();
        }
    }

    /// Shuts the port down, the same way on both backends:
    ///
    /// * every waiting and future `get` (from any thread, inside a handler pass or not)
    ///   answers `Err(Closed)`; posts and timers are refused with `Closed`;
    /// * queued completions are dropped (their buffers freed, accepted sockets closed);
    /// * every pending operation is cancelled, and `shutdown` waits up to 1 s for the kernel
    ///   to hand them back (their completions are dropped too), so [`Port::stats`] shows none
    ///   in flight when it returns. Memory the kernel still holds after that is freed only
    ///   once its completion is reaped, when the last handle to the port is dropped;
    /// * an operation started after `shutdown` never reaches the kernel: it is dropped with
    ///   its buffer, and nothing is delivered for it.
    pub fn shutdown(&self) {
        self.shared.shut_down(SHUTDOWN_REAP);
    }

    /// True once [`Port::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.shared.sched.is_closed()
    }

    /// A snapshot of the port's state.
    pub fn stats(&self) -> PortStats {
        let (active, waiting, ready) = self.shared.sched.stats();
        let (in_flight, sockets) = {
            let t = self.shared.table.lock();
            (t.ops.len(), t.socks.len())
        };
        PortStats {
            active,
            waiting,
            ready,
            in_flight,
            sockets,
            timers: self.shared.timers.lock().wheel.len(),
        }
    }
}

/// A socket associated with a port — the `SOCKET` of IOCP after
/// `CreateIoCompletionPort(socket, port, key, 0)`.
///
/// Operations never fail synchronously: each one started completes exactly once through the
/// port (a failure is a completion with an error), unless the port has been shut down, in
/// which case nothing more is delivered. Dropping the socket closes it: pending operations
/// complete with an aborted error, and the descriptor is closed once the last has completed.
pub struct Socket {
    port: Port,
    token: u64,
    key: u64,
    fd: RawFd,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("fd", &self.fd)
            .field("key", &self.key)
            .finish()
    }
}

impl Socket {
    /// The completion key this socket was associated with.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The port this socket belongs to.
    pub fn port(&self) -> &Port {
        &self.port
    }

    /// Accepts one connection (on a listening socket); completes with [`Op::Accept`]:
    /// `result` is `Ok(0)` and the op holds the new connection ([`Accepted`](crate::Accepted):
    /// its fd, not yet associated, and the peer's address), or `result` is the error and the
    /// op holds `None`. Several accepts may be outstanding at once.
    #[doc(alias = "AcceptEx")]
    pub fn accept(&self, user: u64) {
        self.start(OpData::accept(), user);
    }

    /// Connects to `addr`; completes with [`Op::Connect`] and `result` `Ok(0)` once connected
    /// (or the error, e.g. `ConnectionRefused`). The socket is one you made and associated
    /// first, unconnected — for example `socket2::Socket::new(Domain::IPV4, Type::STREAM,
    /// None)`, then [`Port::associate`] (which makes it non-blocking) and `connect`.
    #[doc(alias = "ConnectEx")]
    pub fn connect(&self, addr: SocketAddr, user: u64) {
        self.start(OpData::Connect(Box::new(SockAddr::from(addr))), user);
    }

    /// Receives into the spare capacity of `buf` (`buf.capacity() - buf.len()` bytes at
    /// most); completes with [`Op::Recv`] and the buffer grown by what arrived. `Ok(0)` is
    /// the end of the stream. A buffer with no spare capacity (`Vec::new()`, or a full one)
    /// completes at once with an `InvalidInput` error and nothing is received. Receives on
    /// one socket complete in the order they were started, and fill their buffers in that
    /// order.
    #[doc(alias = "WSARecv")]
    pub fn recv(&self, buf: Vec<u8>, user: u64) {
        self.start(OpData::Recv(buf), user);
    }

    /// Sends the whole buffer; completes with [`Op::Send`] and the byte count once every
    /// byte was handed to the kernel (short sends are continued internally). Sends on one
    /// socket go out in the order they were started, whatever thread started them.
    #[doc(alias = "WSASend")]
    pub fn send(&self, buf: impl Into<SendBuf>, user: u64) {
        self.start(OpData::send(buf.into()), user);
    }

    /// Sends several buffers in order as one operation (one gathering `sendmsg`, continued
    /// internally if short) — `WSASend` with several `WSABUF`s; completes once with
    /// [`Op::Send`]`(`[`SendBuf::Vectored`]`(parts))` and the total byte count. Shared
    /// [`Bytes`] parts let one packet go to many sockets without a copy.
    #[doc(alias = "WSASend")]
    pub fn send_vectored(&self, parts: Vec<Bytes>, user: u64) {
        self.start(OpData::send(SendBuf::Vectored(parts)), user);
    }

    /// Receives one datagram into the spare capacity of `buf`; completes with
    /// [`Op::RecvFrom`] and the sender's address.
    #[doc(alias = "WSARecvFrom")]
    pub fn recv_from(&self, buf: Vec<u8>, user: u64) {
        self.start(OpData::recv_from(buf), user);
    }

    /// Sends one datagram to `addr`; completes with [`Op::SendTo`].
    #[doc(alias = "WSASendTo")]
    pub fn send_to(&self, buf: impl Into<SendBuf>, addr: SocketAddr, user: u64) {
        self.start(OpData::send_to(buf.into(), SockAddr::from(addr)), user);
    }

    /// Aborts every pending operation of this socket: each completes exactly once, with an
    /// aborted error (or with its real result if it finished first), and hands back its
    /// buffer. The socket stays open and usable.
    #[doc(alias = "CancelIoEx")]
    pub fn cancel(&self) {
        let shared = &*self.port.shared;
        let done = shared
            .table
            .lock()
            .cancel(&shared.driver, self.token, false);
        shared.settle(done);
    }

    /// Shuts down the read, write or both halves of the connection (`shutdown(2)`).
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        SockRef::from(self).shutdown(how)
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        sock_addr(SockRef::from(self).local_addr()?)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        sock_addr(SockRef::from(self).peer_addr()?)
    }

    /// Closes the socket (the same as dropping it) — `closesocket` with pending I/O: every
    /// pending operation completes exactly once with an aborted error.
    #[doc(alias = "closesocket")]
    pub fn close(self) {}

    fn start(&self, data: OpData, user: u64) {
        let shared = &*self.port.shared;
        let immediate = match data.check() {
            Err(e) => Some(fail(self.key, user, data, e)),
            Ok(()) => {
                let mut table = shared.table.lock();
                // Checked under the table lock: `shutdown` closes the scheduler and then
                // cancels everything in the table under this lock, so an operation either
                // is in the table by then (and is cancelled) or sees the port closed here.
                if shared.sched.is_closed() {
                    // Never reaches the kernel; the completion (with its buffer) is dropped
                    // below, as every completion queued at shutdown is.
                    Some(fail(self.key, user, data, Closed.into()))
                } else {
                    table.start(&shared.driver, self.token, data, user)
                }
            }
        };
        match immediate {
            Some(c) => shared.settle(vec![c]),
            None => {
                // Inside a handler pass of this port, on a thread that opted in: submitted at
                // the thread's next `get`.
                let deferred = LOCAL.with(|l| match l.borrow_mut().find(shared.id) {
                    Some(e) if e.held && e.defer => {
                        e.dirty = true;
                        true
                    }
                    _ => false,
                });
                if !deferred {
                    shared.issue();
                }
            }
        }
    }
}

fn sock_addr(a: SockAddr) -> io::Result<SocketAddr> {
    a.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "not an IP socket address"))
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by the port's table and closed only after this
        // Socket is dropped (and its operations completed), so it is open for `'_`.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let shared = &*self.port.shared;
        let done = shared.table.lock().cancel(&shared.driver, self.token, true);
        shared.settle(done);
    }
}

/// A completion for an operation that could not be started (the kernel never saw it).
fn fail(key: u64, user: u64, data: OpData, e: io::Error) -> Completion {
    let (_, op) = data.finish(-libc::ECANCELED, 0);
    Completion {
        key,
        user,
        result: Err(e),
        op,
    }
}

// ---------------------------------------------------------------------------------------------
// The shared state and the operation table.

pub(crate) struct Shared {
    id: usize,
    sched: Sched<Completion>,
    table: Mutex<Table>,
    timers: Mutex<TimerQueue>,
    driver: Driver,
    /// Every idle thread waits in the kernel at once (epoll); timers then go off through the
    /// backend's alarm instead of bounding one poller's wait. See `Sched`.
    shared_wait: bool,
    /// Threads outside any handler pass leave their submissions to the workers when one will
    /// submit them (`Shared::issue`): io_uring with shared waiting.
    hand_off: bool,
    /// Deferring workers (`Port::defer_submissions`) inside a handler pass that they will
    /// leave through `get`, where they submit what is pending (`PortEntry::returning`).
    returning: SyncUsize,
}

/// The port's timers and, when every idle thread waits in the kernel, when the backend's
/// alarm is set to go off.
struct TimerQueue {
    wheel: Timers,
    /// The alarm is set for this instant (it may have gone off since); `None`: not set.
    alarm: Option<Instant>,
}

impl Poller<Completion> for Shared {
    fn poll(&self, deadline: Option<Instant>, out: &mut Vec<Completion>) {
        if self.shared_wait {
            let mut raw = Vec::new();
            let alone = self.sched.pollers() <= 1;
            if self.driver.wait_shared(deadline, alone, &mut raw) {
                self.fire_timers(Instant::now(), out);
            }
            self.process(&mut raw, out);
            return;
        }
        let next_timer = self.timers.lock().wheel.next_deadline();
        let until = match (deadline, next_timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut raw = Vec::new();
        let mut until = until;
        if let Driver::Epoll(_) = self.driver {
            // epoll's wait does not attempt what was started: do it first, and do not sleep
            // if that completed something.
            self.driver.flush(&mut raw);
            if !raw.is_empty() {
                until = Some(Instant::now());
            }
        }
        self.driver.wait(until, &mut raw);
        self.process(&mut raw, out);
        if next_timer.is_some() {
            self.fire_timers(Instant::now(), out);
        }
    }

    fn wake(&self) {
        self.driver.wake();
    }

    fn flush(&self) {
        Shared::flush(self);
    }

    fn left_pass(&self) -> bool {
        if !self.hand_off {
            return false;
        }
        LOCAL.with(|l| match l.borrow_mut().find(self.id) {
            Some(e) => self.stop_returning(e),
            None => self.pending(),
        })
    }

    fn left_kernel(&self) {
        if self.hand_off && self.pending() {
            // Whatever was handed to the waiters while this one was on its way back.
            self.flush();
        }
    }
}

impl Shared {
    /// Turns raw kernel completions into port completions, running whatever they make the
    /// backend do next (continued short sends, the next queued operation of a socket).
    fn process(&self, raw: &mut Vec<Raw>, out: &mut Vec<Completion>) {
        while !raw.is_empty() {
            {
                let mut t = self.table.lock();
                for r in raw.drain(..) {
                    if let Some(c) = t.finish(&self.driver, r) {
                        out.push(c);
                    }
                }
            }
            self.driver.flush(raw);
        }
    }

    /// Submits what was pushed, and queues any completion that produced.
    fn flush(&self) {
        let mut raw = Vec::new();
        self.driver.flush(&mut raw);
        if !raw.is_empty() {
            let mut out = Vec::new();
            self.process(&mut raw, &mut out);
            // After shutdown nothing more is delivered: drop them (buffers freed) here.
            if !out.is_empty() && !self.sched.is_closed() {
                self.sched.push_all(out, self);
            }
        }
    }

    /// Queues what the kernel completed and the timers due at `now` (the caller's clock
    /// reading), without waiting; nothing if a thread waits in the kernel (shared waiting:
    /// the kernel wakes it for both). With one poller at a time on io_uring, the CQ is read
    /// only if the poller is not at it.
    fn reap_now(&self, now: Instant) {
        let mut raw = Vec::new();
        let mut out = Vec::new();
        if self.shared_wait && self.sched.pollers() > 0 {
            // An idle thread waits in the kernel: the kernel wakes it for I/O and timers.
            return;
        }
        self.driver.try_reap(&mut raw);
        if !raw.is_empty() {
            self.process(&mut raw, &mut out);
        }
        // With shared waiting that look may have taken the alarm's event, which went off
        // after the caller read its clock: read it again, so that `fire_timers` sees the
        // alarm gone off and sets it for the next timer (else it would stay expired, and a
        // pending timer would wait for the next look or a new timer).
        let now = if self.shared_wait {
            Instant::now()
        } else {
            now
        };
        self.fire_timers(now, &mut out);
        if !out.is_empty() && !self.sched.is_closed() {
            self.sched.push_all(out, self);
        }
    }

    /// Queues the timers due at `now` into `out`; with shared waiting, sets the alarm for
    /// the next one.
    fn fire_timers(&self, now: Instant, out: &mut Vec<Completion>) {
        let mut t = self.timers.lock();
        t.wheel.fire(now, out);
        if self.shared_wait {
            if t.alarm.is_some_and(|a| a <= now) {
                t.alarm = None;
            }
            self.set_alarm(&mut t);
        }
    }

    /// Sets the backend's alarm for the earliest timer, unless it is set for that or earlier.
    fn set_alarm(&self, t: &mut TimerQueue) {
        let Some(next) = t.wheel.next_deadline() else {
            return;
        };
        if t.alarm.is_some_and(|a| a <= next) {
            return;
        }
        self.driver.arm(next);
        t.alarm = Some(next);
    }

    /// Queues completions made without the kernel, then flushes the backend.
    fn settle(&self, done: Vec<Completion>) {
        if !done.is_empty() && !self.sched.is_closed() {
            self.sched.push_all(done, self);
        }
        self.issue();
    }

    /// Submits what the calling thread pushed, at once — or, on io_uring, from a thread
    /// outside any handler pass (`main`, a database thread), lets a worker submit it.
    ///
    /// Why: io_uring runs an operation's follow-up work (the retry of a receive once data
    /// arrived, say) on the thread that submitted it, and interrupts that thread's blocking
    /// system calls to do so: a timed one (`SO_RCVTIMEO`, `epoll_wait`, `sem_timedwait`)
    /// then fails with `EINTR`. Workers expect that; a user's own thread must not. So when a
    /// worker waits in the kernel it is woken to submit, and when a `Pool` worker is inside a
    /// handler pass the entry waits for it (it submits when it leaves the pass, at most
    /// `MAX_DEFERRED_PASSES` passes later). Only when neither is true does the caller submit
    /// itself. The handshake is `Combiner::hand_off`, model-checked.
    fn issue(&self) {
        if self.hand_off && !LOCAL.with(|l| l.borrow_mut().find(self.id).is_some_and(|e| e.held)) {
            match Combiner::hand_off(self.sched.poller_count(), &self.returning) {
                HandOff::WakeAWaiter => return self.driver.wake(),
                HandOff::Returning => return,
                HandOff::FlushYourself => {}
            }
        }
        self.flush();
    }

    /// The calling thread no longer counts in `returning` (it leaves its handler pass other
    /// than straight into the next one, blocks, or exits). Returns whether something is
    /// pending that it must now submit (the other side of `Combiner::hand_off`).
    fn stop_returning(&self, e: &mut PortEntry) -> bool {
        if std::mem::take(&mut e.returning) {
            self.returning.fetch_sub(1, SeqCst);
        }
        self.pending()
    }

    /// Entries were pushed that no submission has taken yet (io_uring).
    fn pending(&self) -> bool {
        match &self.driver {
            Driver::Uring(u) => u.combiner().pending(),
            Driver::Epoll(_) => false,
        }
    }

    /// Closes the scheduler (every `get` answers `Closed`, queued completions are dropped),
    /// cancels every operation, and reaps for up to `reap_for` (see `reap_until_idle`).
    fn shut_down(&self, reap_for: Duration) {
        drop(self.sched.close(self));
        self.cancel_everything();
        self.reap_until_idle(Instant::now() + reap_for);
    }

    /// After shutdown: reaps what the kernel completes (every operation was cancelled) until
    /// the table holds no operation or `give_up`; the completions are dropped, which frees
    /// their buffers and closes accepted sockets.
    fn reap_until_idle(&self, give_up: Instant) {
        let mut raw = Vec::new();
        let mut out = Vec::new();
        while self.table.lock().ops.len() > 0 && Instant::now() < give_up {
            self.driver
                .wait(Some(Instant::now() + Duration::from_millis(10)), &mut raw);
            self.process(&mut raw, &mut out);
            out.clear();
            if self.shared_wait {
                // That wait may have taken the wake-up that shutdown sent to the threads
                // waiting in the kernel: send another, so every one of them sees `Closed`.
                self.driver.wake();
            }
        }
    }

    fn cancel_everything(&self) {
        let done: Vec<Completion> = {
            let mut t = self.table.lock();
            let socks = t.socks.tokens();
            socks
                .into_iter()
                .flat_map(|s| t.cancel(&self.driver, s, false))
                .collect()
        };
        drop(done);
        self.flush();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Reap every operation the kernel still has: only then may its buffers be freed.
        self.shut_down(Duration::from_secs(5));
        let mut t = self.table.lock();
        if t.ops.len() > 0 {
            tracing::error!(
                "{} operations still in the kernel after 5 s at port teardown; leaking their buffers",
                t.ops.len()
            );
            std::mem::forget(t.ops.drain());
        }
    }
}

struct OpEntry {
    sock: u64,
    key: u64,
    user: u64,
    data: OpData,
    /// Bytes already sent by earlier submissions of a stream send.
    done: usize,
    /// Submitted to the backend (else it waits in its socket's lane).
    in_flight: bool,
    /// A cancel was requested for the submission in flight.
    cancelling: bool,
}

struct SockEntry {
    fd: OwnedFd,
    key: u64,
    stream: bool,
    /// Receives in start order; the front one is the one in flight.
    recv_q: VecDeque<u64>,
    /// Sends in start order; the front one is the one in flight.
    send_q: VecDeque<u64>,
    /// Accepts and connects, all in flight.
    free: Vec<u64>,
    closed: bool,
}

impl SockEntry {
    fn pending(&self) -> usize {
        self.recv_q.len() + self.send_q.len() + self.free.len()
    }
}

#[derive(Default)]
struct Table {
    ops: Slab<OpEntry>,
    socks: Slab<SockEntry>,
}

impl Table {
    /// Starts an operation on socket `sock`: submits it, or queues it behind the one in
    /// flight in its lane. Returns a completion instead if the socket is closed.
    fn start(&mut self, d: &Driver, sock: u64, data: OpData, user: u64) -> Option<Completion> {
        let Some(s) = self.socks.get_mut(sock) else {
            return Some(fail(0, user, data, closed_error()));
        };
        if s.closed {
            return Some(fail(s.key, user, data, closed_error()));
        }
        let lane = data.lane();
        let key = s.key;
        let token = self.ops.insert(OpEntry {
            sock,
            key,
            user,
            data,
            done: 0,
            in_flight: false,
            cancelling: false,
        });
        let s = self.socks.get_mut(sock).expect("socket checked above");
        let submit_now = match lane {
            crate::op::Lane::Recv => {
                s.recv_q.push_back(token);
                s.recv_q.len() == 1
            }
            crate::op::Lane::Send => {
                s.send_q.push_back(token);
                s.send_q.len() == 1
            }
            crate::op::Lane::Free => {
                s.free.push(token);
                true
            }
        };
        if submit_now {
            self.submit(d, token);
        }
        None
    }

    /// Hands operation `token` to the backend.
    fn submit(&mut self, d: &Driver, token: u64) {
        let Some(op) = self.ops.get_mut(token) else {
            return;
        };
        let Some(s) = self.socks.get(op.sock) else {
            return;
        };
        let desc = op.data.desc(s.fd.as_raw_fd(), op.done);
        op.in_flight = true;
        d.push(token, op.sock, desc);
    }

    /// Applies one raw completion. Returns the port completion, or `None` if the token is
    /// stale or the operation continues (a short stream send).
    fn finish(&mut self, d: &Driver, raw: Raw) -> Option<Completion> {
        let op = self.ops.get_mut(raw.token)?;
        let stream = self.socks.get(op.sock).is_some_and(|s| s.stream);
        let is_send = matches!(op.data, OpData::Send(..) | OpData::SendTo(..));
        if is_send && raw.res >= 0 {
            op.done += raw.res as usize;
            if stream && raw.res > 0 && op.done < op.data.send_len() && !op.cancelling {
                self.submit(d, raw.token);
                return None;
            }
        }
        let op = self.ops.remove(raw.token)?;
        let total = op.done;
        // A stream send stopped short only because it was cancelled: it did not complete.
        let res = if is_send && stream && raw.res >= 0 && total < op.data.send_len() {
            -libc::ECANCELED
        } else {
            raw.res
        };
        let sock = op.sock;
        if let Some(s) = self.socks.get_mut(sock) {
            let next = match op.data.lane() {
                crate::op::Lane::Recv => {
                    remove_token(&mut s.recv_q, raw.token);
                    s.recv_q.front().copied()
                }
                crate::op::Lane::Send => {
                    remove_token(&mut s.send_q, raw.token);
                    s.send_q.front().copied()
                }
                crate::op::Lane::Free => {
                    s.free.retain(|t| *t != raw.token);
                    None
                }
            };
            if let Some(next) = next {
                self.submit(d, next);
            }
            self.reap_socket(d, sock);
        }
        let (result, kind) = op.data.finish(res, total);
        Some(Completion {
            key: op.key,
            user: op.user,
            result,
            op: kind,
        })
    }

    /// Cancels every pending operation of `sock` (and closes it if `close`). Operations not
    /// yet submitted complete here; those in flight are cancelled in the backend.
    fn cancel(&mut self, d: &Driver, sock: u64, close: bool) -> Vec<Completion> {
        let mut done = Vec::new();
        let Some(s) = self.socks.get_mut(sock) else {
            return done;
        };
        if close {
            s.closed = true;
        }
        let mut tokens: Vec<u64> = s.free.clone();
        for q in [&mut s.recv_q, &mut s.send_q] {
            // Keep the submitted front; the rest never reached the kernel.
            let keep = q.len().min(1);
            tokens.extend(q.iter().take(keep));
            for t in q.drain(keep..) {
                if let Some(op) = self.ops.remove(t) {
                    done.push(fail(op.key, op.user, op.data, aborted()));
                }
            }
        }
        for t in tokens {
            if let Some(op) = self.ops.get_mut(t) {
                if op.in_flight && !op.cancelling {
                    op.cancelling = true;
                    d.cancel(t, sock);
                }
            }
        }
        self.reap_socket(d, sock);
        done
    }

    /// Removes a closed socket with nothing pending; its descriptor closes here.
    fn reap_socket(&mut self, d: &Driver, sock: u64) {
        let Some(s) = self.socks.get(sock) else {
            return;
        };
        if s.closed && s.pending() == 0 {
            d.deregister(sock, s.fd.as_raw_fd());
            self.socks.remove(sock);
        }
    }
}

fn remove_token(q: &mut VecDeque<u64>, token: u64) {
    if q.front() == Some(&token) {
        q.pop_front();
    } else {
        q.retain(|t| *t != token);
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket is closed")
}

// ---------------------------------------------------------------------------------------------
// Per-thread state: the thread's waiter, and the ports on which it holds a concurrency slot.

struct Local {
    waiter: std::sync::Arc<Waiter>,
    /// The ports this thread used: whether it holds a slot of each, and whether it started
    /// operations there that are not submitted yet. An entry is made once per (thread,
    /// port), so a `get` clones no `Arc`.
    ports: Vec<PortEntry>,
}

struct PortEntry {
    id: usize,
    port: Weak<Shared>,
    held: bool,
    /// The thread opted in to deferred submission (`Port::defer_submissions`).
    defer: bool,
    dirty: bool,
    /// Handler passes whose operations are waiting to be submitted together.
    deferred_passes: u32,
    /// Counted in `Shared::returning`: a deferring thread inside a handler pass, which
    /// submits what is pending when it leaves it.
    returning: bool,
    /// Handler passes since this thread last looked at the clock for `REAP_INTERVAL`.
    passes_since_reap: u32,
    /// When this thread last took what the kernel completed while busy.
    last_reap: Instant,
}

/// How long `Port::shutdown` waits for the kernel to hand back the operations it cancelled.
const SHUTDOWN_REAP: Duration = Duration::from_secs(1);

/// Most handler passes whose operations wait to be submitted together, when a thread keeps
/// finding completions ready without going to the kernel.
const MAX_DEFERRED_PASSES: u32 = 16;

/// A thread that keeps finding completions ready takes what the kernel completed meanwhile
/// (`Shared::reap_now`) at most every `REAP_INTERVAL`, and looks at the clock for it every
/// `REAP_CHECK_PASSES` handler passes. So I/O waits at most about that long behind a queue of
/// posts and timers, and a fast stream of posts pays one look (an `epoll_wait` on epoll) per
/// interval, not per pass.
const REAP_CHECK_PASSES: u32 = 32;
const REAP_INTERVAL: std::time::Duration = std::time::Duration::from_micros(200);

impl Local {
    fn entry(&mut self, port: &Arc<Shared>) -> &mut PortEntry {
        if let Some(i) = self.ports.iter().position(|e| e.id == port.id) {
            return &mut self.ports[i];
        }
        // Forget ports that are gone before remembering a new one.
        self.ports.retain(|e| e.port.strong_count() > 0);
        self.ports.push(PortEntry {
            id: port.id,
            port: Arc::downgrade(port),
            held: false,
            defer: false,
            dirty: false,
            deferred_passes: 0,
            returning: false,
            passes_since_reap: 0,
            last_reap: Instant::now(),
        });
        self.ports.last_mut().expect("just pushed")
    }

    fn find(&mut self, port: usize) -> Option<&mut PortEntry> {
        self.ports.iter_mut().find(|e| e.id == port)
    }
}

impl Drop for Local {
    /// A thread that exits inside a handler pass submits what it started and gives its slot
    /// back (as IOCP does).
    fn drop(&mut self) {
        for mut e in self.ports.drain(..) {
            let Some(shared) = e.port.upgrade() else {
                continue;
            };
            if e.dirty | shared.stop_returning(&mut e) {
                shared.flush();
            }
            if e.held {
                shared.sched.release_slot(&*shared);
            }
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local {
        waiter: Waiter::new(),
        ports: Vec::new(),
    });
}
