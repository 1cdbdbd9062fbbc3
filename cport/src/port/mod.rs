//! The completion port. Its files, each using only those listed before it:
//!
//! * [`table`] — the operation table: every operation from start to completion, per-socket
//!   lanes, short-send continuation, cancel;
//! * [`local`] — per-thread state: slots held, deferred submissions (it knows the port only
//!   through the [`local::PortOfThread`] trait, for a thread's exit);
//! * [`inner`] — [`PortInner`], the state all handles share, and the glue
//!   between the scheduler, the operation table, the timers and the backend (submitting,
//!   reaping, the hand-off);
//! * `mod.rs` — the public [`Port`]: building it, `get`, posts and timers, shutdown;
//! * [`pass`] — a thread's handler pass: `blocking`, deferred submissions, a pool worker's
//!   enlistment;
//! * [`socket`] — the public [`Socket`](socket::Socket): [`Port::associate`] and the start
//!   of each operation.

mod inner;
mod local;
mod pass;
mod pooled;
pub(crate) mod socket;
mod table;
#[cfg(all(test, not(loom), unix))]
mod tests;

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::op::{Completion, Op, TimerId};
use crate::sched::{Outcome, Sched, Sink};
use crate::sync::{AtomicUsize as SyncUsize, Ordering::SeqCst};
use crate::sys::{AnyDriver, Backend};
use crate::timer::Timers;

use inner::{PortInner, SubmitHook, TimerQueue, GET_IN_POOL_HANDLER};
use local::{LOCAL, MAX_DEFERRED_PASSES, REAP_CHECK_PASSES, REAP_INTERVAL, SHUTDOWN_REAP};
use table::Table;

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
///
/// ```
/// use cport::{Backend, Port};
///
/// let port = Port::builder()
///     .concurrency(2) // at most two threads run handlers at once
///     .backend(Backend::Auto) // CPORT_BACKEND, when set, overrides this
///     .entries(256)
///     .build()?;
/// assert_eq!(port.concurrency(), 2);
/// println!("running on {}", port.backend());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct PortBuilder {
    concurrency: usize,
    backend: Backend,
    entries: u32,
    env: bool,
    before_submit: Option<SubmitHook>,
}

impl std::fmt::Debug for PortBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortBuilder")
            .field("concurrency", &self.concurrency)
            .field("backend", &self.backend)
            .field("entries", &self.entries)
            .field("env", &self.env)
            .field("before_submit", &self.before_submit.is_some())
            .finish()
    }
}

impl Default for PortBuilder {
    fn default() -> Self {
        PortBuilder {
            concurrency: 0,
            backend: Backend::Auto,
            entries: 1024,
            env: true,
            before_submit: None,
        }
    }
}

impl PortBuilder {
    /// The concurrency value: at most this many threads run handlers at once
    /// (between a `get` that returned and their next `get`). `0` = available parallelism.
    ///
    /// It bounds the threads that *run*, not the threads that serve the port: as with IOCP,
    /// start more threads than this (a [`Pool`](crate::Pool) of `0` threads starts twice as
    /// many), so that a handler that blocks inside [`Port::blocking`] lends its slot to a
    /// spare thread instead of leaving it unused. The spare threads park while every slot is
    /// taken, so they cost no CPU.
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

    /// Runs `hook` on a deferring worker thread (a [`Pool`](crate::Pool) worker, or a thread
    /// that called [`Port::defer_submissions`]), still inside its handler pass, right before
    /// that thread submits the operations its handlers started: when its `get` finds nothing
    /// ready at once (it is about to go to the kernel or park), every 16 handler passes when
    /// it keeps finding completions ready, in [`Port::submit`] and on entering
    /// [`Port::blocking`]. Operations `hook` starts are submitted with the others.
    ///
    /// A layer above uses it to start as late as possible what it gathered over several
    /// handler passes: the server layer queues a session's packets during the passes and
    /// sends everything one session got in one operation here (write coalescing). `hook`
    /// must not block or call `get`; a panic in it is logged and ignored.
    pub fn before_submit(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.before_submit = Some(Arc::new(hook));
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
        let driver = crate::sys::open(backend, self.entries, concurrency)?;
        let mut port = Port::with_driver(driver, concurrency);
        if let Some(hook) = self.before_submit {
            Arc::get_mut(&mut port.inner)
                .expect("a port just built has one handle")
                .before_submit = Some(hook);
        }
        Ok(port)
    }
}

impl Port {
    /// A port on `driver` (the backend `PortBuilder::build` opened, or a modelled one in
    /// tests).
    pub(crate) fn with_driver(driver: AnyDriver, concurrency: usize) -> Port {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
        Port {
            inner: Arc::new(PortInner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                sched: Sched::new(concurrency),
                table: Mutex::new(Table::default()),
                timers: Mutex::new(TimerQueue {
                    wheel: Timers::default(),
                    alarm: None,
                }),
                hand_off: driver.follow_up_on_submitter(),
                returning: SyncUsize::new(0),
                wait_failures: Default::default(),
                wait_errors: Default::default(),
                before_submit: None,
                serving: Default::default(),
                blocked: Default::default(),
                blocking_unlent: Default::default(),
                warned_unlent: Default::default(),
                warned_get_in_pool: Default::default(),
                driver,
                pools: Mutex::new(Vec::new()),
                pool_kick: Default::default(),
            }),
        }
    }
}

/// An I/O completion port. Cheap to clone; every clone is the same port, shared by all
/// threads. See the [crate documentation](crate) for the model and a complete worker loop.
///
/// ```
/// use cport::{Op, Port};
/// use std::time::Duration;
///
/// let port = Port::new(0)?; // concurrency: the available parallelism
/// let worker = {
///     let port = port.clone();
///     std::thread::spawn(move || {
///         let mut got = Vec::new();
///         // GetQueuedCompletionStatus, until both events came.
///         while got.len() < 2 {
///             let c = port.get(None).expect("port open").expect("no timeout");
///             match c.op {
///                 Op::Post => got.push(("posted", c.user)),
///                 Op::Timer(_) => got.push(("timer", c.user)),
///                 _ => {}
///             }
///         }
///         got
///     })
/// };
/// port.post_after(Duration::from_millis(10), 1, 2)?; // a timer, through the same queue
/// port.post(1, 0, 40)?; // PostQueuedCompletionStatus
/// assert_eq!(worker.join().unwrap(), [("posted", 40), ("timer", 2)]);
/// port.shutdown();
/// assert!(port.get(Some(Duration::ZERO)).is_err()); // Closed
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Port {
    inner: Arc<PortInner>,
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
    /// Kernel waits that failed (not counting timeouts and interruptions), and io_uring
    /// submissions the kernel refused again when a waiter retried them (`EAGAIN`, `EBUSY`),
    /// since the port was built. Each is logged and retried after a pause; a run of them
    /// shuts the port down (see [`Port::get`]).
    pub wait_errors: u64,
    /// [`Port::blocking`] calls, since the port was built, that gave up their thread's slot
    /// with no thread to take it: none waited in `get`, and every other thread serving the
    /// port (a [`Pool`](crate::Pool)'s workers, any thread that called `get`) held a slot or
    /// was blocking too. While such a call blocks nothing runs handlers in its place: the
    /// port has no spare thread. Anything above zero means it needs more threads than its
    /// concurrency value; the first such call also logs a warning.
    pub blocking_unlent: u64,
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
        self.inner.driver.backend()
    }

    /// The concurrency value.
    pub fn concurrency(&self) -> usize {
        self.inner.sched.concurrency()
    }

    /// Dequeues one completion, waiting up to `timeout` (`None` = forever).
    /// `Ok(None)` is a timeout; `Err(Closed)` means the port was shut down.
    ///
    /// Calling `get` ends the calling thread's previous handler pass (it gives back its
    /// concurrency slot); returning a completion starts a new one.
    ///
    /// # Not inside a [`Pool`](crate::Pool) handler
    ///
    /// A pool's workers call `get` themselves and hand each completion to the pool's
    /// handler. A handler that calls `get` (or [`Port::get_many`]) on the same port would
    /// take a completion the pool's handler never sees, and end its own pass early: debug
    /// builds panic there, before anything is taken (the pool logs the panic and the
    /// completion stays queued for the pool); release builds log a warning once per port and
    /// go on. Return from the handler instead; to wait for something inside it, use
    /// [`Port::blocking`]. A `get` on another port is fine.
    #[doc(alias = "GetQueuedCompletionStatus")]
    pub fn get(&self, timeout: Option<Duration>) -> Result<Option<Completion>, Closed> {
        let mut out = None;
        self.get_into(&mut out, 1, timeout, false)?;
        Ok(out)
    }

    /// [`Port::get`] for a [`Pool`](crate::Pool) worker: what it returns starts a pass of
    /// the pool's handler, inside which the thread's own `get` on this port is a mistake
    /// (see [`Port::get`]).
    pub(crate) fn get_for_pool(&self) -> Result<Option<Completion>, Closed> {
        let mut out = None;
        self.get_into(&mut out, 1, None, true)?;
        Ok(out)
    }

    /// Dequeues up to `max` completions at once into `out` (appending), waiting up to
    /// `timeout` for the first. Returns how many were added (0 on timeout).
    ///
    /// Like [`Port::get`], not to be called inside a handler of a [`Pool`](crate::Pool) of
    /// the same port.
    #[doc(alias = "GetQueuedCompletionStatusEx")]
    pub fn get_many(
        &self,
        out: &mut Vec<Completion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, Closed> {
        self.get_into(out, max.max(1), timeout, false)
    }

    /// `for_pool`: the caller is a [`Pool`](crate::Pool) worker's loop; otherwise a `get`
    /// of the program's, which must not come from inside a handler of a pool of this port.
    fn get_into(
        &self,
        out: &mut impl Sink<Completion>,
        max: usize,
        timeout: Option<Duration>,
        for_pool: bool,
    ) -> Result<usize, Closed> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let shared = &*self.inner;
        let taken = LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            let e = l.entry(&self.inner);
            let in_pool_handler = !for_pool && e.in_pool_handler;
            if in_pool_handler && cfg!(debug_assertions) {
                // Refused before anything changed: the thread keeps its slot and its pass.
                return None;
            }
            if for_pool {
                e.in_pool_handler = false;
            } else if !e.serving {
                // A thread of the program's own that comes to `get`: it serves the port
                // from now on (`Port::blocking` counts on it) until it exits.
                e.serving = true;
                shared.serving.fetch_add(1, SeqCst);
            }
            let mut was = (std::mem::take(&mut e.held), std::mem::take(&mut e.dirty));
            if e.returning && shared.pending() {
                // Handed over by a thread outside any handler pass (`PortInner::issue`): this
                // thread submits it as its own deferred work.
                was.1 = true;
            }
            // A thread that goes from one ready completion to the next never waits in the
            // kernel; now and then it takes what the kernel completed meanwhile, so I/O joins
            // the queue about when it finished, as with IOCP's single kernel queue, instead of
            // waiting for the queue of posts and timers to run dry.
            // Counted in passes so that the clock is read only every REAP_CHECK_PASSES, and
            // gated by time so that a fast stream of posts pays for one look per interval.
            let mut reap = false;
            if was.0 {
                e.passes_since_reap += 1;
                if e.passes_since_reap >= REAP_CHECK_PASSES {
                    e.passes_since_reap = 0;
                    let now = Instant::now();
                    if now.saturating_duration_since(e.last_reap) >= REAP_INTERVAL {
                        e.last_reap = now;
                        reap = true;
                    }
                }
            }
            Some((was.0, was.1, reap, l.waiter.clone(), in_pool_handler))
        });
        let Some((had_slot, mut dirty, reap, waiter, in_pool_handler)) = taken else {
            panic!("{GET_IN_POOL_HANDLER}");
        };
        if in_pool_handler {
            shared.got_inside_pool_handler();
        }
        if reap {
            shared.reap_now();
        }
        let before = out.count();
        let outcome = shared
            .sched
            .get(had_slot, &mut dirty, deadline, max, out, &waiter, shared);
        let mut flush = false;
        if dirty {
            // Taken at once, with operations still unsubmitted: batch them with the next
            // handler pass's, up to a bound.
            flush = LOCAL.with(|l| {
                let mut l = l.borrow_mut();
                let e = l.entry(&self.inner);
                e.deferred_passes += 1;
                if e.deferred_passes >= MAX_DEFERRED_PASSES {
                    e.deferred_passes = 0;
                    true
                } else {
                    e.dirty = true;
                    false
                }
            });
        } else {
            LOCAL.with(|l| l.borrow_mut().entry(&self.inner).deferred_passes = 0);
        }
        let result = match outcome {
            Outcome::Got => {
                let hook_due = LOCAL.with(|l| {
                    let mut l = l.borrow_mut();
                    let e = l.entry(&self.inner);
                    e.held = true;
                    if for_pool {
                        e.in_pool_handler = true;
                    }
                    if shared.hand_off && e.defer && !e.returning {
                        e.returning = true;
                        shared.returning.fetch_add(1, SeqCst);
                    }
                    // Straight from pass to pass: the hook still runs every
                    // MAX_DEFERRED_PASSES passes, whether or not operations were deferred.
                    if !had_slot {
                        e.passes_since_hook = 0;
                    }
                    e.passes_since_hook = e.passes_since_hook.saturating_add(1);
                    e.passes_since_hook >= MAX_DEFERRED_PASSES
                });
                if hook_due && shared.before_submit_in_pass() {
                    // What the hook started goes out now, with what was deferred.
                    LOCAL.with(|l| {
                        let mut l = l.borrow_mut();
                        let e = l.entry(&self.inner);
                        flush |= std::mem::take(&mut e.dirty);
                        if flush {
                            e.deferred_passes = 0;
                        }
                    });
                }
                Ok(out.count() - before)
            }
            Outcome::Timeout => Ok(0),
            Outcome::Closed => Err(Closed),
        };
        if flush {
            shared.flush();
        }
        result
    }

    /// Queues a user completion `{ key, user, result: Ok(bytes), op: Op::Post }` on the port.
    #[doc(alias = "PostQueuedCompletionStatus")]
    pub fn post(&self, key: u64, bytes: usize, user: u64) -> Result<(), Closed> {
        if self.inner.sched.is_closed() {
            return Err(Closed);
        }
        let c = Completion {
            key,
            user,
            result: Ok(bytes),
            op: Op::Post,
        };
        self.inner.sched.push_all([c], &*self.inner);
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
        if self.inner.sched.is_closed() {
            return Err(Closed);
        }
        let c = Completion {
            key,
            user,
            result: Ok(0),
            op: Op::Message(crate::op::Message::new(value)),
        };
        self.inner.sched.push_all([c], &*self.inner);
        Ok(())
    }

    /// Queues `{ key, user, result: Ok(0), op: Op::Timer(id) }` on the port once `delay` has
    /// passed (never before). Timers fire in deadline order; see [`Port::cancel_timer`].
    #[doc(alias = "CreateTimerQueueTimer")]
    pub fn post_after(&self, delay: Duration, key: u64, user: u64) -> Result<TimerId, Closed> {
        if self.inner.sched.is_closed() {
            return Err(Closed);
        }
        // A delay too large for `Instant` is as good as never (but still cancellable).
        let now = Instant::now();
        let deadline = now
            .checked_add(delay)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        let shared = &*self.inner;
        let mut t = shared.timers.lock();
        let (id, earliest) = t.wheel.add(deadline, key, user);
        if earliest {
            shared.set_alarm(&mut t);
        }
        Ok(id)
    }

    /// Cancels a timer. True if it had not fired: then it never will. False if it already
    /// fired (its completion is queued or delivered) or was cancelled before.
    #[doc(alias = "DeleteTimerQueueTimer")]
    pub fn cancel_timer(&self, id: TimerId) -> bool {
        self.inner.timers.lock().wheel.cancel(id)
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
        self.inner.shut_down(SHUTDOWN_REAP);
    }

    /// True once [`Port::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.sched.is_closed()
    }

    /// Test hook (feature `fault-injection`): the faults to arm on this port's system calls;
    /// `None` if its backend has no hooks (IOCP).
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn faults(&self) -> Option<&crate::fault::Faults> {
        self.inner.driver.faults()
    }

    /// A snapshot of the port's state.
    pub fn stats(&self) -> PortStats {
        let (active, waiting, ready) = self.inner.sched.stats();
        let (in_flight, sockets) = {
            let t = self.inner.table.lock();
            (t.ops.len(), t.socks.len())
        };
        PortStats {
            active,
            waiting,
            ready,
            in_flight,
            sockets,
            timers: self.inner.timers.lock().wheel.len(),
            wait_errors: self.inner.wait_errors.load(Ordering::Relaxed),
            blocking_unlent: self.inner.blocking_unlent.load(Ordering::Relaxed),
        }
    }
}
