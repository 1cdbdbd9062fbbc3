//! The waiter / concurrency logic of the port: who may take a completion, who waits in the
//! kernel, who parks, and who is woken.
//!
//! This is the part of IOCP that the Windows kernel does for `GetQueuedCompletionStatus`:
//!
//! * a thread holds a *slot* from the moment its `get` returns a completion until it calls
//!   `get` again (or enters `blocking`, or exits); at most `concurrency`
//!   threads hold a slot at any time;
//! * idle threads wait in the kernel — every idle thread with a free slot at once, in one
//!   wait set where the kernel wakes one waiter per event, most recently parked first (IOCP's
//!   LIFO release) — and threads beyond those park on a LIFO stack;
//! * what a waiter reaps goes to the user-space `ready` queue that every thread takes from;
//! * whenever a slot is free and a completion is ready, some idle thread is woken for it, so a
//!   completion never waits behind a busy thread while another thread is idle.
//!
//! The lock is small and is never held across a system call. The scheduler is generic over
//! the item type and the [`Poller`] so that it can be model-checked with loom (the
//! `loom_model` module below).

use std::collections::VecDeque;
use std::time::Instant;

use crate::sync::{fence, Arc, AtomicBool, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering};

use Ordering::{Acquire, Relaxed, SeqCst};

/// What waits in the kernel on behalf of the port, always without the scheduler lock.
///
/// Every idle thread with a free slot polls at once, so the poller must behave as a kernel
/// wait queue with wake-one semantics: an event (an I/O readiness, a due timer, a
/// [`Poller::wake`]) makes at least one polling thread return, not necessarily all of them
/// (epoll's exclusive, LIFO wake-up).
pub(crate) trait Poller<T> {
    /// Waits for kernel events until `deadline` (forever with `None`) or until
    /// [`Poller::wake`]; appends whatever completed to `out`. May return with nothing.
    fn poll(&self, deadline: Option<Instant>, out: &mut Vec<T>);
    /// Makes a concurrent or the next [`Poller::poll`] return promptly (one of them, if
    /// several poll).
    fn wake(&self);
    /// Submits operations started by the calling thread's handler (a poll submits them too).
    fn flush(&self) {}
    /// The calling thread held a slot, is in `get`, and found no completion it may take at
    /// once: its handler pass ends (the slot is released right after). Runs what must run
    /// inside the pass before its operations are submitted (`PortBuilder::before_submit`);
    /// true if that started operations that are not submitted yet.
    fn end_pass(&self) -> bool {
        false
    }
    /// The calling thread is in `get` and found no completion ready at once (it left its
    /// handler pass, or had none): it goes on to poll or park. True if there is unsubmitted work it must submit first (then
    /// it never sleeps on it). See `PortInner::issue`'s hand-off.
    fn left_pass(&self) -> bool {
        false
    }
    /// The calling thread came back from [`Poller::poll`] and no longer counts as a poller
    /// (`Sched::pollers` is decremented): it submits what was handed to the waiters meanwhile.
    fn left_kernel(&self) {}
}

/// Where `get` puts what it takes: a batch (`Vec`) or a single item (`Option`, no
/// allocation).
pub(crate) trait Sink<T> {
    fn put(&mut self, x: T);
    fn count(&self) -> usize;
}

impl<T> Sink<T> for Vec<T> {
    fn put(&mut self, x: T) {
        self.push(x);
    }
    fn count(&self) -> usize {
        self.len()
    }
}

impl<T> Sink<T> for Option<T> {
    fn put(&mut self, x: T) {
        debug_assert!(self.is_none());
        *self = Some(x);
    }
    fn count(&self) -> usize {
        self.is_some() as usize
    }
}

/// One parked thread. Each thread keeps one and reuses it.
#[derive(Debug)]
pub(crate) struct Waiter {
    cv: Condvar,
    /// Set (under the scheduler lock) by whoever pops this waiter off a stack to wake it.
    notified: AtomicBool,
}

impl Waiter {
    pub(crate) fn new() -> Arc<Waiter> {
        Arc::new(Waiter {
            cv: Condvar::new(),
            notified: AtomicBool::new(false),
        })
    }
}

/// What a `get` came back with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// At least one item was appended to `out`; the calling thread now holds a slot.
    Got,
    /// The deadline passed with nothing to take.
    Timeout,
    /// The port was shut down.
    Closed,
}

#[cfg(not(loom))]
type Padded<T> = crossbeam_utils::CachePadded<T>;
#[cfg(loom)]
type Padded<T> = std::boxed::Box<T>;

/// The ready queue: lock-free (crossbeam's segmented MPMC queue). Under loom, a mutex-backed
/// queue stands in (linearizable too, so the model checks the same protocol).
#[cfg(not(loom))]
type Queue<T> = crossbeam_queue::SegQueue<T>;

#[cfg(loom)]
struct Queue<T>(Mutex<VecDeque<T>>);

#[cfg(loom)]
impl<T> Queue<T> {
    fn new() -> Self {
        Queue(Mutex::new(VecDeque::new()))
    }
    fn push(&self, x: T) {
        self.0.lock().push_back(x);
    }
    fn pop(&self) -> Option<T> {
        self.0.lock().pop_front()
    }
    fn len(&self) -> usize {
        self.0.lock().len()
    }
    fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }
}

/// The part that needs the lock: who sleeps where.
#[derive(Debug)]
struct State {
    /// Parked `get` callers, most recent last (LIFO).
    idle: Vec<Arc<Waiter>>,
    /// Waiters popped from `idle` and notified that have not run yet.
    woken: usize,
    /// Threads back from `blocking` that wait for a slot, oldest first. They go before `idle`.
    resuming: VecDeque<Arc<Waiter>>,
    /// Threads inside `Poller::poll`.
    pollers: usize,
    /// `Poller::wake` was called and no poller has come back since: a wake-up is on its way.
    wake_pending: bool,
}

/// The scheduler shared by every thread of a port.
///
/// Taking a completion and posting one are lock-free when nobody sleeps: the ready queue is
/// a lock-free queue and the slots are an atomic count. The lock is taken only to go to
/// sleep (park or poll) and to wake sleepers. A thread that registers as a sleeper
/// (`sleepers += 1`, then re-checks the queue) and a poster (push, then reads `sleepers`)
/// order those steps with `SeqCst`, so at least one of them sees the other: an item is never
/// left in the queue while every thread sleeps.
pub(crate) struct Sched<T> {
    queue: Queue<T>,
    /// Threads holding a slot. On its own cache line: consumers write it twice per item,
    /// posters never touch it.
    active: Padded<AtomicUsize>,
    /// Threads between registering to sleep and running again (parked, polling, or woken
    /// and not yet back).
    sleepers: AtomicUsize,
    /// Threads in `resuming`.
    resumers: AtomicUsize,
    /// Threads that freed their slot at the end of a handler pass (`release_to_self`) and
    /// have not yet looked at the queue again with it free (taken a slot back, or registered
    /// as sleepers): each will take, poll or park next, so a free slot it will serve needs no
    /// parked thread woken for it (`kick_locked`). Without it the game server on 4 threads
    /// and 2 slots (`cport bench mmo`, 1000 clients) spent 25.4% CPU against 21.6% on 2
    /// threads: parked threads woken for slots their releasers took back; with it, 21.6%
    /// against 22.1%.
    transit: AtomicUsize,
    closed: AtomicBool,
    /// `State::pollers`, readable without the lock: a hint for the busy worker's look, and
    /// one side of the hand-off's handshake (`Combiner::hand_off`; stored `SeqCst`).
    pollers: AtomicUsize,
    state: Mutex<State>,
    concurrency: usize,
}

impl<T> Sched<T> {
    /// A scheduler for `concurrency` slots.
    pub(crate) fn new(concurrency: usize) -> Self {
        assert!(concurrency > 0);
        Sched {
            queue: Queue::new(),
            active: Padded::new(AtomicUsize::new(0)),
            sleepers: AtomicUsize::new(0),
            resumers: AtomicUsize::new(0),
            transit: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            pollers: AtomicUsize::new(0),
            state: Mutex::new(State {
                idle: Vec::new(),
                woken: 0,
                resuming: VecDeque::new(),
                pollers: 0,
                wake_pending: false,
            }),
            concurrency,
        }
    }

    pub(crate) fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Takes a slot if one is free.
    fn try_acquire(&self) -> bool {
        let mut a = self.active.load(Relaxed);
        while a < self.concurrency {
            match self
                .active
                .compare_exchange_weak(a, a + 1, Acquire, Relaxed)
            {
                Ok(_) => return true,
                Err(x) => a = x,
            }
        }
        false
    }

    /// Pops up to `max` items into `out`; false if there was none.
    fn take_ready(&self, max: usize, out: &mut impl Sink<T>) -> bool {
        let before = out.count();
        while out.count() - before < max {
            match self.queue.pop() {
                Some(x) => out.put(x),
                None => break,
            }
        }
        out.count() > before
    }

    /// The lock-free path: a slot and at least one item, or nothing. A thread in `transit`
    /// leaves it as soon as it holds a slot (before it wakes others for more work).
    fn try_take(
        &self,
        max: usize,
        out: &mut impl Sink<T>,
        poller: &dyn Poller<T>,
        transit: &mut bool,
    ) -> bool {
        if self.queue.is_empty() || !self.try_acquire() {
            return false;
        }
        self.leave_transit(transit);
        if !self.take_ready(max, out) {
            self.release(poller);
            return false;
        }
        // More work and someone asleep who could take it: wake them.
        if !self.queue.is_empty() && self.sleepers.load(SeqCst) > 0 {
            self.kick_and_wake(poller);
        }
        true
    }

    /// Takes up to `max` (≥ 1) ready items into `out`, waiting until `deadline`.
    /// `had_slot` says whether the caller held a slot, which calling `get` releases.
    /// `dirty` says the caller started operations that are not submitted yet. If this call
    /// goes to the kernel it submits them — in its wait (`Poller::poll` submits first), else
    /// with `Poller::flush` before it parks or times out — and clears `dirty`. If it takes an item at once it leaves them to the
    /// caller, which may batch them with the next handler pass's.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn get(
        &self,
        had_slot: bool,
        dirty: &mut bool,
        deadline: Option<Instant>,
        max: usize,
        out: &mut impl Sink<T>,
        me: &Arc<Waiter>,
        poller: &dyn Poller<T>,
    ) -> Outcome {
        debug_assert!(max >= 1);
        let mut in_transit = false;
        if had_slot {
            // Straight from one completion to the next: keep the slot (two read-modify-writes
            // of `active` saved), unless a thread back from `blocking` waits for one, or the
            // port was shut down (then every `get` answers `Closed`, this one too).
            if self.resumers.load(SeqCst) == 0
                && !self.closed.load(Acquire)
                && self.take_ready(max, out)
            {
                if !self.queue.is_empty() && self.sleepers.load(SeqCst) > 0 {
                    self.kick_and_wake(poller);
                }
                return Outcome::Got;
            }
            if poller.end_pass() {
                *dirty = true;
            }
            // No wake-up for the slot this thread frees: it goes on to take, poll or park
            // itself just below, as a thread woken for it would. Waking a parked thread here
            // (there are some whenever the port has more threads than slots) only for it to
            // park again cost two context switches per handler pass: `cport bench echo` with
            // 4 threads on 2 slots measured 0.10 context switches per message instead of
            // 0.065 with 2 threads, and 12-15% more CPU per message.
            self.release_to_self();
            self.transit.fetch_add(1, SeqCst);
            in_transit = true;
        }
        if poller.left_pass() {
            *dirty = true;
        }
        let mut batch = Vec::new();
        loop {
            if self.closed.load(Acquire) {
                self.leave_transit(&mut in_transit);
                return Outcome::Closed;
            }
            if self.try_take(max, out, poller, &mut in_transit) {
                return Outcome::Got;
            }
            // No spin before sleeping: every idle thread waits in the kernel, which hands
            // each event to a waiter, and a spin only burnt CPU (at 30,000 echoes/s,
            // 1.11-1.19x tokio's CPU per message with it, 0.94-1.08x without).
            // Register as a sleeper, then look again: a post that came before the
            // registration is seen here; one that comes after sees the registration.
            let mut st = self.state.lock();
            self.sleepers.fetch_add(1, SeqCst);
            // A sleeper from here on, not a thread in transit (it looks at the queue again
            // just below, with the lock held).
            self.leave_transit(&mut in_transit);
            fence(SeqCst);
            let runnable = self.active.load(SeqCst) < self.concurrency && !self.queue.is_empty();
            if runnable || self.closed.load(SeqCst) {
                self.sleepers.fetch_sub(1, SeqCst);
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.sleepers.fetch_sub(1, SeqCst);
                // Pass on what this thread might have taken (a free slot, ready items).
                let kick = self.kick_locked(&mut st);
                drop(st);
                if kick {
                    poller.wake();
                }
                if std::mem::take(dirty) {
                    poller.flush();
                }
                return Outcome::Timeout;
            }
            if self.may_poll(&st) {
                st.pollers += 1;
                self.pollers.store(st.pollers, SeqCst);
                drop(st);
                *dirty = false;
                poller.poll(deadline, &mut batch);
                if self.closed.load(SeqCst) {
                    // Nothing is delivered after shutdown: drop what came (buffers freed).
                    batch.clear();
                }
                for x in batch.drain(..) {
                    self.queue.push(x);
                }
                let mut st = self.state.lock();
                st.pollers -= 1;
                // SeqCst: one side of the hand-off's handshake (`Combiner::hand_off`); this
                // thread reads `pending` in `left_kernel` below.
                self.pollers.store(st.pollers, SeqCst);
                // Whatever wake-up was on its way has reached a poller (this one or another,
                // which comes back here too) or is still queued in the kernel for the next
                // one: a later kick may send a new one.
                st.wake_pending = false;
                self.sleepers.fetch_sub(1, SeqCst);
                if self.closed.load(SeqCst) && st.pollers > 0 {
                    // The kernel wakes one poller per wake-up: pass shutdown on to the next.
                    drop(st);
                    poller.wake();
                    continue;
                }
                // We take one ourselves (next turn, without a context switch); others are
                // woken for the rest.
                st.woken += 1;
                let kick = self.kick_locked(&mut st);
                st.woken -= 1;
                drop(st);
                if kick {
                    poller.wake();
                }
                poller.left_kernel();
                continue;
            }
            if std::mem::take(dirty) {
                // Never sleep on unsubmitted work: submit, then look again.
                self.sleepers.fetch_sub(1, SeqCst);
                drop(st);
                poller.flush();
                continue;
            }
            st = self.park(st, me, deadline, false);
            self.sleepers.fetch_sub(1, SeqCst);
            drop(st);
        }
    }

    /// Parks `me` until it is notified, the deadline passes, or the scheduler closes.
    fn park<'a>(
        &self,
        mut st: MutexGuard<'a, State>,
        me: &Arc<Waiter>,
        deadline: Option<Instant>,
        resuming: bool,
    ) -> MutexGuard<'a, State> {
        me.notified.store(false, Relaxed);
        if resuming {
            st.resuming.push_back(me.clone());
        } else {
            st.idle.push(me.clone());
        }
        loop {
            st = me.cv.wait(st, deadline);
            if me.notified.load(Relaxed) {
                if !resuming {
                    st.woken -= 1;
                }
                return st;
            }
            let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
            if timed_out || self.closed.load(SeqCst) {
                if resuming {
                    if let Some(i) = st.resuming.iter().position(|w| Arc::ptr_eq(w, me)) {
                        st.resuming.remove(i);
                        self.resumers.fetch_sub(1, SeqCst);
                    }
                } else if let Some(i) = st.idle.iter().rposition(|w| Arc::ptr_eq(w, me)) {
                    st.idle.remove(i);
                }
                return st;
            }
        }
    }

    /// Gives up a slot: a thread back from `blocking` gets it first; then sleepers are woken
    /// if there is work for them or nobody polls. True if some thread was there to use the
    /// slot: one back from `blocking` took it, or a thread sleeps in `get` (parked, polling,
    /// or woken and on its way) and will take it when work comes. False if no thread waits
    /// for a slot at all: the slot stays unused until a thread comes back to `get`.
    fn release(&self, poller: &dyn Poller<T>) -> bool {
        if self.resumers.load(SeqCst) > 0 {
            let mut st = self.state.lock();
            if let Some(w) = st.resuming.pop_front() {
                // The slot passes straight to it: `active` does not change.
                self.resumers.fetch_sub(1, SeqCst);
                w.notified.store(true, Relaxed);
                w.cv.notify_one();
                return true;
            }
            drop(st);
        }
        // SeqCst read-modify-write then SeqCst load: ordered against a sleeper's
        // registration (`sleepers += 1`, then it reads `active`).
        self.active.fetch_sub(1, SeqCst);
        if self.sleepers.load(SeqCst) > 0 {
            self.kick_and_wake(poller);
            return true;
        }
        false
    }

    /// Gives up the slot of a thread that goes on in `get` (it takes, polls or parks with
    /// the others next): a thread back from `blocking` gets it first, else it is just freed.
    /// Nobody else is woken for it. That loses no item: the thread looks at the queue again
    /// with the slot free before it sleeps, waits in the kernel itself if no other thread
    /// does for the free slots (`may_poll`), and a timed-out `get` passes what it might have
    /// taken on (`kick_locked`).
    fn release_to_self(&self) {
        if self.resumers.load(SeqCst) > 0 {
            let mut st = self.state.lock();
            if let Some(w) = st.resuming.pop_front() {
                self.resumers.fetch_sub(1, SeqCst);
                w.notified.store(true, Relaxed);
                w.cv.notify_one();
                return;
            }
            drop(st);
        }
        self.active.fetch_sub(1, SeqCst);
    }

    /// The calling thread no longer counts in `transit` (if it did).
    fn leave_transit(&self, in_transit: &mut bool) {
        if std::mem::take(in_transit) {
            self.transit.fetch_sub(1, SeqCst);
        }
    }

    /// Takes the state lock and kicks (`kick_locked`), then interrupts the poller if asked.
    fn kick_and_wake(&self, poller: &dyn Poller<T>) {
        let mut st = self.state.lock();
        let kick = self.kick_locked(&mut st);
        drop(st);
        if kick {
            poller.wake();
        }
    }

    /// With the state lock held (`st`): wakes parked threads (most recent first) for the free
    /// slots no thread waits on in the kernel. Returns true if a thread waiting in the kernel
    /// must be woken because ready items would otherwise wait for it.
    fn kick_locked(&self, st: &mut State) -> bool {
        if self.closed.load(SeqCst) {
            return false;
        }
        let free = self.concurrency.saturating_sub(self.active.load(SeqCst));
        let ready = self.queue.len();
        // Idle threads wait in the kernel, which wakes them one per event, most recent first:
        // parked threads are woken only to fill free slots nobody waits on, and that no
        // thread in transit is about to serve.
        let want = free.saturating_sub(st.pollers + self.transit.load(SeqCst));
        while st.woken < want {
            match st.idle.pop() {
                Some(w) => {
                    w.notified.store(true, Relaxed);
                    st.woken += 1;
                    w.cv.notify_one();
                }
                None => break,
            }
        }
        // Ready items that no woken thread will take: a poller in the kernel must come
        // back for them (the kernel wakes one poller per wake-up).
        let unserved = ready > st.woken;
        if unserved && free > st.woken && st.pollers > 0 && !st.wake_pending {
            st.wake_pending = true;
            return true;
        }
        false
    }

    /// Whether a thread about to sleep may wait in the kernel (else it parks).
    fn may_poll(&self, st: &State) -> bool {
        let free = self.concurrency.saturating_sub(self.active.load(SeqCst));
        st.pollers < free
    }

    /// The count behind [`Sched::pollers`], for the hand-off's handshake.
    pub(crate) fn poller_count(&self) -> &AtomicUsize {
        &self.pollers
    }

    /// Threads waiting in the kernel now (a hint: it may change at once).
    pub(crate) fn pollers(&self) -> usize {
        self.pollers.load(SeqCst)
    }

    /// Adds items to the ready queue (posted completions, completions produced outside the
    /// poller) and wakes whoever should take them.
    pub(crate) fn push_all(&self, items: impl IntoIterator<Item = T>, poller: &dyn Poller<T>) {
        for x in items {
            self.queue.push(x);
        }
        // No fence: a push ends with a read-modify-write of the slot's state (a full barrier
        // on x86, and ordered before this SeqCst load on ARMv8), the same reasoning as
        // crossbeam-channel's sender/`SyncWaker::notify`. The sleeper's side has the fence.
        if self.sleepers.load(SeqCst) > 0 {
            self.kick_and_wake(poller);
        }
    }

    /// The calling thread is back from blocking: it waits for a free slot (ahead of idle
    /// `get` callers), so that the concurrency value holds at every moment.
    pub(crate) fn leave_blocking(&self, me: &Arc<Waiter>) {
        if self.resumers.load(SeqCst) == 0 && self.try_acquire() {
            return;
        }
        let mut st = self.state.lock();
        self.resumers.fetch_add(1, SeqCst);
        fence(SeqCst);
        if self.closed.load(SeqCst) {
            // The port is going away: count the slot and go on.
            self.resumers.fetch_sub(1, SeqCst);
            self.active.fetch_add(1, SeqCst);
            return;
        }
        // A slot freed before we registered is not handed to us: look again.
        if st.resuming.is_empty() && self.try_acquire() {
            self.resumers.fetch_sub(1, SeqCst);
            return;
        }
        st = self.park(st, me, None, true);
        if !me.notified.load(Relaxed) {
            // Closed while waiting: count the slot anyway, the port is going away.
            self.active.fetch_add(1, SeqCst);
        }
        drop(st);
    }

    /// Gives up a slot outside of `get` (thread exit, `blocking`). True if a thread was
    /// there to use it (see `release`): `Port::blocking` counts the calls that found none.
    pub(crate) fn release_slot(&self, poller: &dyn Poller<T>) -> bool {
        self.release(poller)
    }

    /// Shuts the scheduler: every waiter, present and future, gets `Closed`.
    /// Returns the items nobody took.
    pub(crate) fn close(&self, poller: &dyn Poller<T>) -> Vec<T> {
        let st = self.state.lock();
        self.closed.store(true, SeqCst);
        for w in st.idle.iter().chain(st.resuming.iter()) {
            w.cv.notify_one();
        }
        let polling = st.pollers > 0;
        drop(st);
        if polling {
            // One poller is woken; each that comes back passes it on (see `get`).
            poller.wake();
        }
        let mut left = Vec::new();
        while let Some(x) = self.queue.pop() {
            left.push(x);
        }
        left
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Acquire)
    }

    /// A snapshot for tests and metrics: (threads holding a slot, threads asleep, ready items).
    pub(crate) fn stats(&self) -> (usize, usize, usize) {
        (
            self.active.load(SeqCst),
            self.sleepers.load(SeqCst),
            self.queue.len(),
        )
    }
}

/// Model checks of the waiter logic (`sched/loom_model.rs`).
#[cfg(all(test, loom))]
mod loom_model;
