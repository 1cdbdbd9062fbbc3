//! The state every handle of a port shares ([`PortInner`]): the scheduler, the operation
//! table, the timers and the backend, and the glue between them (the scheduler's `Poller`).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::local::{PortEntry, PortOfThread, LOCAL, SHUTDOWN_REAP};
use super::table::Table;
use crate::buffers::BufPool;
use crate::combine::{Combiner, HandOff};
use crate::op::Completion;
use crate::sched::{Poller, Sched};
use crate::sync::{AtomicUsize as SyncUsize, Ordering::SeqCst};
use crate::sys::{AnyDriver, Raw};
use crate::timer::Timers;

/// See `PortBuilder::before_submit`.
pub(super) type SubmitHook = Arc<dyn Fn() + Send + Sync>;

/// What every handle of one port shares (a [`Port`](crate::Port) is an `Arc` of it).
pub(crate) struct PortInner {
    pub(super) id: usize,
    pub(super) sched: Sched<Completion>,
    pub(super) table: Mutex<Table>,
    pub(super) timers: Mutex<TimerQueue>,
    pub(super) driver: AnyDriver,
    /// Threads outside any handler pass leave their submissions to the workers when one will
    /// submit them (`PortInner::issue`): io_uring.
    pub(super) hand_off: bool,
    /// Deferring workers (`Port::defer_submissions`) inside a handler pass that they will
    /// leave through `get`, where they submit what is pending (`PortEntry::returning`).
    pub(super) returning: SyncUsize,
    /// Kernel waits that failed in a row (see `wait_failed`).
    pub(super) wait_failures: AtomicU32,
    /// Kernel waits that failed, in all (`PortStats::wait_errors`).
    pub(super) wait_errors: AtomicU64,
    /// `PortBuilder::before_submit`.
    pub(super) before_submit: Option<SubmitHook>,
    /// Threads that serve the port: a `Pool`'s workers from `Pool::spawn` on, any other
    /// thread from its first `get`, until they exit (`PortEntry::serving`).
    pub(super) serving: AtomicUsize,
    /// Threads inside `Port::blocking` that lent their slot, until they ask for one back.
    pub(super) blocked: AtomicUsize,
    /// `Port::blocking` calls that found no thread to take the slot they lent
    /// (`PortStats::blocking_unlent`).
    pub(super) blocking_unlent: AtomicU64,
    /// The first of those was logged (one warning per port).
    pub(super) warned_unlent: AtomicBool,
    /// A `get` inside a handler of a pool of this port was logged (release builds; one
    /// warning per port).
    pub(super) warned_get_in_pool: AtomicBool,
    /// The port's buffer pools (`Port::buf_pool`), kept for the port's life. Declared after
    /// `driver` so that the backend (io_uring, which has their rings registered) is dropped
    /// before their memory.
    pub(super) pools: Mutex<Vec<BufPool>>,
    /// Raised when a buffer came back to one of `pools` inside the backend while receives
    /// waited for one (`kick_pools`).
    pub(super) pool_kick: Arc<AtomicBool>,
}

/// What `get` inside a handler of a [`Pool`](crate::Pool) of the same port says (a panic in
/// debug builds, a warning once per port in release builds).
pub(super) const GET_IN_POOL_HANDLER: &str =
    "Port::get (or get_many) called inside a handler of a Pool of the same port: the \
     completion it takes never reaches the pool's handler, and the thread's handler pass \
     ends there. Return from the handler instead, and let the pool deliver the next \
     completion (use Port::blocking to wait for something)";

/// Failed kernel waits in a row after which the port shuts down (`PortInner::wait_failed`).
pub(super) const WAIT_FAILURE_LIMIT: u32 = 50;

/// The port's timers, and when the backend's alarm is set to go off.
pub(super) struct TimerQueue {
    pub(super) wheel: Timers,
    /// The alarm is set for this instant (it may have gone off since); `None`: not set.
    pub(super) alarm: Option<Instant>,
}

impl Poller<Completion> for PortInner {
    fn poll(&self, deadline: Option<Instant>, out: &mut Vec<Completion>) {
        let mut raw = Vec::new();
        let alone = self.sched.pollers() <= 1;
        match self.driver.wait(deadline, alone, &mut raw) {
            Ok(alarm) => {
                self.wait_succeeded();
                if alarm {
                    self.fire_timers(Instant::now(), out);
                }
            }
            Err(e) => self.wait_failed(e),
        }
        self.process(&mut raw, out);
    }

    fn wake(&self) {
        self.driver.wake();
    }

    fn flush(&self) {
        PortInner::flush(self);
    }

    fn end_pass(&self) -> bool {
        if self.before_submit.is_none() {
            return false;
        }
        // `get_into` took `held` already; the thread holds its slot until `Sched::get`
        // releases it after this, so what the hook starts is deferred as inside the pass.
        LOCAL.with(|l| {
            if let Some(e) = l.borrow_mut().find(self.id) {
                e.held = true;
            }
        });
        self.before_submit_in_pass();
        LOCAL.with(|l| {
            l.borrow_mut().find(self.id).is_some_and(|e| {
                e.held = false;
                std::mem::take(&mut e.dirty)
            })
        })
    }

    fn left_pass(&self) -> bool {
        if !self.hand_off {
            return false;
        }
        LOCAL.with(|l| match l.borrow_mut().find(self.id) {
            Some(e) => self.stop_returning(e),
            None => false,
        })
    }

    fn left_kernel(&self) {
        if self.hand_off && self.pending() {
            // Whatever was handed to the waiters while this one was on its way back.
            self.flush();
        }
    }
}

impl PortInner {
    /// `Port::blocking` gave up this thread's slot (`taken`: a thread was there to use it at
    /// once, see `Sched::release_slot`) and counts itself in `blocked`. If no thread took the
    /// slot and the port has no spare thread either (every thread that serves it holds a slot
    /// or blocks: none is on its way to `get`, as a worker still starting is), nothing runs
    /// handlers in this thread's place while it blocks: counted, and said once per port.
    ///
    /// Both conditions must hold, so that neither a worker still starting nor one between
    /// its handler pass and its wait makes a well-built pool look short of threads.
    pub(super) fn lent_slot(&self, taken: bool) {
        let blocked = self.blocked.fetch_add(1, SeqCst) + 1;
        if taken {
            return;
        }
        let (active, _, _) = self.sched.stats();
        if self.serving.load(SeqCst) > active + blocked {
            return;
        }
        self.blocking_unlent.fetch_add(1, Relaxed);
        if !self.warned_unlent.swap(true, Relaxed) {
            tracing::warn!(
                concurrency = self.sched.concurrency(),
                "Port::blocking: no spare thread serves this port to take the blocked \
                 thread's concurrency slot, so completions wait until a worker comes back; \
                 run more worker threads than the concurrency value (Pool::spawn with 0 \
                 threads starts twice as many; cport-server's default Config does too). \
                 Said once per port; PortStats::blocking_unlent counts every such call"
            );
        }
    }

    /// A release build's `get` inside a handler of a pool of this port (a debug build
    /// panics instead): said once per port, then the `get` goes on.
    pub(super) fn got_inside_pool_handler(&self) {
        if !self.warned_get_in_pool.swap(true, Relaxed) {
            tracing::warn!("{}", GET_IN_POOL_HANDLER);
        }
    }

    /// Runs `PortBuilder::before_submit`'s hook if there is one and the calling thread is a
    /// deferring one inside a handler pass of this port (`held`), and starts its count of
    /// passes to the next run again. True if the hook ran. What it starts is deferred: the
    /// caller submits it.
    pub(super) fn before_submit_in_pass(&self) -> bool {
        let Some(hook) = &self.before_submit else {
            return false;
        };
        let in_pass = LOCAL.with(|l| {
            l.borrow_mut().find(self.id).is_some_and(|e| {
                let in_pass = e.held && e.defer;
                if in_pass {
                    e.passes_since_hook = 0;
                }
                in_pass
            })
        });
        if in_pass && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook())).is_err() {
            tracing::error!("the port's before_submit hook panicked");
        }
        in_pass
    }

    /// Turns raw kernel completions into port completions, running whatever they make the
    /// backend do next (continued short sends, the next queued operation of a socket).
    pub(super) fn process(&self, raw: &mut Vec<Raw>, out: &mut Vec<Completion>) {
        self.kick_pools(raw);
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
            self.kick_pools(raw);
        }
    }

    /// Submits what was pushed, and queues any completion that produced.
    pub(super) fn flush(&self) {
        let mut raw = Vec::new();
        self.driver.flush(&mut raw);
        self.kick_pools(&mut raw);
        if !raw.is_empty() {
            let mut out = Vec::new();
            self.process(&mut raw, &mut out);
            // After shutdown nothing more is delivered: drop them (buffers freed) here.
            if !out.is_empty() && !self.sched.is_closed() {
                self.sched.push_all(out, self);
            }
        }
    }

    /// Queues what the kernel completed and the timers due, without waiting; nothing if a
    /// thread waits in the kernel (the kernel wakes it for both).
    pub(super) fn reap_now(&self) {
        let mut raw = Vec::new();
        let mut out = Vec::new();
        if self.sched.pollers() > 0 {
            // An idle thread waits in the kernel: the kernel wakes it for I/O and timers.
            return;
        }
        self.driver.try_reap(&mut raw);
        if !raw.is_empty() {
            self.process(&mut raw, &mut out);
        }
        // That look may have taken the alarm's event, which went off after the caller read
        // its clock: read it again, so that `fire_timers` sees the alarm gone off and sets it
        // for the next timer (else it would stay expired, and a pending timer would wait for
        // the next look or a new timer).
        self.fire_timers(Instant::now(), &mut out);
        if !out.is_empty() && !self.sched.is_closed() {
            self.sched.push_all(out, self);
        }
    }

    /// Queues the timers due at `now` into `out`, and sets the alarm for the next one.
    pub(super) fn fire_timers(&self, now: Instant, out: &mut Vec<Completion>) {
        let mut t = self.timers.lock();
        t.wheel.fire(now, out);
        if t.alarm.is_some_and(|a| a <= now) {
            t.alarm = None;
        }
        self.set_alarm(&mut t);
    }

    /// Sets the backend's alarm for the earliest timer, unless it is set for that or earlier.
    /// The alarm goes off at the end of the timer's 1 ms tick, not at its exact deadline:
    /// a game's tens of thousands of timers a second then cost one alarm (one
    /// `timerfd_settime`, one wake-up) per tick, not one per deadline; a timer fires up to
    /// a tick late, never early.
    pub(super) fn set_alarm(&self, t: &mut TimerQueue) {
        let Some(next) = t.wheel.next_deadline() else {
            return;
        };
        let next = t.wheel.round_up(next);
        if t.alarm.is_some_and(|a| a <= next) {
            return;
        }
        self.driver.arm(next);
        t.alarm = Some(next);
    }

    /// Queues completions made without the kernel, then flushes the backend.
    pub(super) fn settle(&self, done: Vec<Completion>) {
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
    pub(super) fn issue(&self) {
        let in_pass =
            self.hand_off && LOCAL.with(|l| l.borrow_mut().find(self.id).is_some_and(|e| e.held));
        self.issue_from(in_pass);
    }

    /// [`PortInner::issue`] for a caller that already knows whether it is in a handler pass.
    pub(super) fn issue_from(&self, in_pass: bool) {
        if self.hand_off && !in_pass {
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
    pub(super) fn stop_returning(&self, e: &mut PortEntry) -> bool {
        if std::mem::take(&mut e.returning) {
            self.returning.fetch_sub(1, SeqCst);
            self.pending()
        } else {
            // Never counted: no thread left anything to it.
            false
        }
    }

    /// Entries were pushed that no submission has taken yet (a backend with the hand-off).
    pub(super) fn pending(&self) -> bool {
        self.driver.combiner().is_some_and(Combiner::pending)
    }

    /// The kernel's wait came back normally: the run of failures, if any, is over.
    fn wait_succeeded(&self) {
        if self.wait_failures.load(Relaxed) != 0 {
            self.wait_failures.store(0, Relaxed);
        }
    }

    /// The kernel's wait failed in a way that is not part of normal operation (not a timeout
    /// or an interruption), or io_uring refused a submission again when a waiter retried it. Logged (the first failure of a run, then at powers of two) and
    /// retried after a pause that grows by 1 ms per failure up to 100 ms, so a persistent
    /// error neither spins nor floods the log. After `WAIT_FAILURE_LIMIT` failures in a row
    /// (about 1.3 s) the port is shut down — every `get` answers `Closed` — with the reason
    /// logged at error level: a port whose kernel wait keeps failing cannot deliver
    /// completions, and a server should stop rather than hang. Counted in
    /// `PortStats::wait_errors`.
    fn wait_failed(&self, e: io::Error) {
        self.wait_errors.fetch_add(1, Relaxed);
        let n = self.wait_failures.fetch_add(1, Relaxed) + 1;
        if n >= WAIT_FAILURE_LIMIT {
            if !self.sched.is_closed() {
                tracing::error!(
                    failures = n,
                    "the kernel's wait or submission failed {n} times in a row (last: {e}); shutting the port down"
                );
                self.shut_down(SHUTDOWN_REAP);
            }
            return;
        }
        if n == 1 || n.is_power_of_two() {
            tracing::error!(
                failures = n,
                "the kernel's wait or submission failed: {e}; retrying"
            );
        }
        std::thread::sleep(Duration::from_millis(u64::from(n).min(100)));
    }

    /// Closes the scheduler (every `get` answers `Closed`, queued completions are dropped),
    /// cancels every operation, and reaps for up to `reap_for` (see `reap_until_idle`).
    pub(super) fn shut_down(&self, reap_for: Duration) {
        drop(self.sched.close(self));
        self.cancel_everything();
        self.reap_until_idle(Instant::now() + reap_for);
    }

    /// After shutdown: reaps what the kernel completes (every operation was cancelled) until
    /// the table holds no operation or `give_up`; the completions are dropped, which frees
    /// their buffers and closes accepted sockets.
    pub(super) fn reap_until_idle(&self, give_up: Instant) {
        let mut raw = Vec::new();
        let mut out = Vec::new();
        while self.table.lock().ops.len() > 0 && Instant::now() < give_up {
            let until = Instant::now() + Duration::from_millis(10);
            if self.driver.wait(Some(until), true, &mut raw).is_err() {
                // Logged by the waiters; do not spin on it until `give_up`.
                std::thread::sleep(Duration::from_millis(10));
            }
            self.process(&mut raw, &mut out);
            out.clear();
            // That wait may have taken the wake-up that shutdown sent to the threads waiting
            // in the kernel: send another, so every one of them sees `Closed`.
            self.driver.wake();
        }
    }

    pub(super) fn cancel_everything(&self) {
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

impl Drop for PortInner {
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

impl PortOfThread for PortInner {
    fn id(&self) -> usize {
        self.id
    }

    fn thread_exits(&self, e: &mut PortEntry) {
        if e.serving {
            self.serving.fetch_sub(1, SeqCst);
        }
        if e.dirty | self.stop_returning(e) {
            self.flush();
        }
        if e.held {
            self.sched.release_slot(self);
        }
    }
}

impl PortInner {
    /// Buffers that came back inside the backend (epoll gives back the buffer of a receive
    /// that found nothing) while receives waited for one: submits those receives again, and
    /// attempts them (what that completes goes to `raw`).
    fn kick_pools(&self, raw: &mut Vec<Raw>) {
        // One atomic load when nothing came back (io_uring's buffers come back only through
        // `PooledBuf::drop`, which submits: it never raises the flag).
        if !self.pool_kick.load(Relaxed) || !self.pool_kick.swap(false, SeqCst) {
            return;
        }
        let pools = self.pools.lock();
        let mut kicked = false;
        for pool in pools.iter() {
            while let Some(token) = pool.mem().take_kick() {
                self.table
                    .lock()
                    .resubmit_parked(&self.driver, pool.mem(), token);
                kicked = true;
            }
        }
        drop(pools);
        if kicked {
            self.driver.flush(raw);
        }
    }
}
