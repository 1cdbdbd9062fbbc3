//! The waiter / concurrency logic of the port: who may take a completion, who waits in the
//! kernel, who parks, and who is woken.
//!
//! This is the part of IOCP that the Windows kernel does for `GetQueuedCompletionStatus`:
//!
//! * a thread holds a *slot* from the moment its `get` returns a completion until it calls
//!   `get` again (or enters [`Sched::enter_blocking`], or exits); at most `concurrency`
//!   threads hold a slot at any time;
//! * idle threads park on a LIFO stack, and the most recently parked one is woken first;
//! * one idle thread at a time — the *poller* — waits in the kernel for I/O completions
//!   (leader/follower, as Boost.Asio's scheduler does); what it reaps goes to the user-space
//!   `ready` queue that every thread takes from;
//! * whenever a slot is free and a completion is ready, some idle thread is woken for it, so a
//!   completion never waits behind a busy thread while another thread is idle.
//!
//! Everything here is under one mutex; it is small and is never held across a system call.
//! It is generic over the item type and the [`Poller`] so that it can be model-checked with
//! loom (see `tests/loom_sched.rs`).

use std::collections::VecDeque;
use std::time::Instant;

use crate::sync::{Arc, AtomicBool, Condvar, Mutex, MutexGuard, Ordering};

/// What waits in the kernel on behalf of the port. Exactly one thread calls [`Poller::poll`]
/// at a time, without the scheduler lock.
pub(crate) trait Poller<T> {
    /// Waits for kernel events until `deadline` (forever with `None`) or until
    /// [`Poller::wake`]; appends whatever completed to `out`. May return with nothing.
    fn poll(&self, deadline: Option<Instant>, out: &mut Vec<T>);
    /// Makes a concurrent or the next [`Poller::poll`] return promptly.
    fn wake(&self);
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

#[derive(Debug)]
struct State<T> {
    ready: VecDeque<T>,
    /// Threads holding a slot.
    active: usize,
    /// Parked `get` callers, most recent last (LIFO).
    idle: Vec<Arc<Waiter>>,
    /// Waiters popped from `idle` and notified that have not run yet.
    woken: usize,
    /// Threads back from `blocking` that wait for a slot, oldest first. They go before `idle`.
    resuming: VecDeque<Arc<Waiter>>,
    /// A thread is inside `Poller::poll`.
    polling: bool,
    /// `Poller::wake` was already called for the current poll.
    poll_kicked: bool,
    closed: bool,
}

/// The scheduler shared by every thread of a port.
#[derive(Debug)]
pub(crate) struct Sched<T> {
    state: Mutex<State<T>>,
    concurrency: usize,
}

impl<T> Sched<T> {
    pub(crate) fn new(concurrency: usize) -> Self {
        assert!(concurrency > 0);
        Sched {
            state: Mutex::new(State {
                ready: VecDeque::new(),
                active: 0,
                idle: Vec::new(),
                woken: 0,
                resuming: VecDeque::new(),
                polling: false,
                poll_kicked: false,
                closed: false,
            }),
            concurrency,
        }
    }

    pub(crate) fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Takes up to `max` (≥ 1) ready items into `out`, waiting until `deadline`.
    /// `had_slot` says whether the caller held a slot, which calling `get` releases.
    pub(crate) fn get(
        &self,
        had_slot: bool,
        deadline: Option<Instant>,
        max: usize,
        out: &mut Vec<T>,
        me: &Arc<Waiter>,
        poller: &dyn Poller<T>,
    ) -> Outcome {
        debug_assert!(max >= 1);
        let mut st = self.state.lock();
        if had_slot {
            self.release(&mut st);
        }
        let mut batch = Vec::new();
        loop {
            if st.closed {
                return Outcome::Closed;
            }
            if st.active < self.concurrency && !st.ready.is_empty() {
                let n = max.min(st.ready.len());
                out.extend(st.ready.drain(..n));
                st.active += 1;
                let kick = self.kick(&mut st);
                drop(st);
                if kick {
                    poller.wake();
                }
                return Outcome::Got;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // Hand the poller's duty on if we were the one who might have taken it.
                let kick = self.kick(&mut st);
                drop(st);
                if kick {
                    poller.wake();
                }
                return Outcome::Timeout;
            }
            if !st.polling && st.active < self.concurrency {
                st.polling = true;
                st.poll_kicked = false;
                drop(st);
                poller.poll(deadline, &mut batch);
                st = self.state.lock();
                st.polling = false;
                st.ready.extend(batch.drain(..));
                // Loop: take one ourselves; `kick` wakes others for the rest and a new poller.
                continue;
            }
            st = self.park(st, me, deadline, false);
        }
    }

    /// Parks `me` until it is notified, the deadline passes, or (spuriously) otherwise.
    fn park<'a>(
        &self,
        mut st: MutexGuard<'a, State<T>>,
        me: &Arc<Waiter>,
        deadline: Option<Instant>,
        resuming: bool,
    ) -> MutexGuard<'a, State<T>> {
        me.notified.store(false, Ordering::Relaxed);
        if resuming {
            st.resuming.push_back(me.clone());
        } else {
            st.idle.push(me.clone());
        }
        loop {
            st = me.cv.wait(st, deadline);
            if me.notified.load(Ordering::Relaxed) {
                if !resuming {
                    st.woken -= 1;
                }
                return st;
            }
            let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
            if timed_out || st.closed {
                let list_pos = if resuming {
                    st.resuming.iter().position(|w| Arc::ptr_eq(w, me))
                } else {
                    st.idle.iter().rposition(|w| Arc::ptr_eq(w, me))
                };
                if let Some(i) = list_pos {
                    if resuming {
                        st.resuming.remove(i);
                    } else {
                        st.idle.remove(i);
                    }
                }
                return st;
            }
        }
    }

    /// Gives up a slot: a thread back from `blocking` gets it first, then idle threads are
    /// woken if there is work for them.
    fn release(&self, st: &mut State<T>) {
        debug_assert!(st.active > 0);
        st.active -= 1;
        if let Some(w) = st.resuming.pop_front() {
            st.active += 1;
            w.notified.store(true, Ordering::Relaxed);
            w.cv.notify_one();
        }
    }

    /// Wakes as many idle threads as there is work and free slots for (most recent first),
    /// plus one to poll the kernel if nobody does. Returns true if the poller must be
    /// interrupted because ready items would otherwise wait for it.
    fn kick(&self, st: &mut State<T>) -> bool {
        if st.closed {
            return false;
        }
        let free = self.concurrency.saturating_sub(st.active);
        let mut want = st.ready.len().min(free);
        if !st.polling && free > want {
            want += 1;
        }
        while st.woken < want {
            match st.idle.pop() {
                Some(w) => {
                    w.notified.store(true, Ordering::Relaxed);
                    st.woken += 1;
                    w.cv.notify_one();
                }
                None => break,
            }
        }
        let unserved = st.ready.len() > st.woken;
        if unserved && free > 0 && st.polling && !st.poll_kicked {
            st.poll_kicked = true;
            return true;
        }
        false
    }

    /// Adds items to the ready queue (posted completions, completions produced outside the
    /// poller) and wakes whoever should take them.
    pub(crate) fn push_all(&self, items: impl IntoIterator<Item = T>, poller: &dyn Poller<T>) {
        let mut st = self.state.lock();
        st.ready.extend(items);
        let kick = self.kick(&mut st);
        drop(st);
        if kick {
            poller.wake();
        }
    }

    /// Makes the poller come back to re-evaluate its deadline (a new, earlier timer).
    pub(crate) fn interrupt_poller(&self, poller: &dyn Poller<T>) {
        let mut st = self.state.lock();
        if st.polling && !st.poll_kicked {
            st.poll_kicked = true;
            drop(st);
            poller.wake();
        }
    }

    /// The calling thread, which holds a slot, is about to block: its slot goes to someone
    /// else meanwhile.
    pub(crate) fn enter_blocking(&self, poller: &dyn Poller<T>) {
        self.release_slot(poller);
    }

    /// The calling thread is back from blocking: it waits for a free slot (ahead of idle
    /// `get` callers), so that the concurrency value holds at every moment.
    pub(crate) fn leave_blocking(&self, me: &Arc<Waiter>) {
        let mut st = self.state.lock();
        if st.active < self.concurrency && st.resuming.is_empty() || st.closed {
            st.active += 1;
            return;
        }
        loop {
            st = self.park(st, me, None, true);
            if me.notified.load(Ordering::Relaxed) {
                return; // `release` counted our slot
            }
            if st.closed {
                st.active += 1;
                return;
            }
            // Spurious wake-up: we were removed from `resuming` only on close, so re-queue.
        }
    }

    /// Gives up a slot outside of `get` (thread exit, `blocking`).
    pub(crate) fn release_slot(&self, poller: &dyn Poller<T>) {
        let mut st = self.state.lock();
        self.release(&mut st);
        let kick = self.kick(&mut st);
        drop(st);
        if kick {
            poller.wake();
        }
    }

    /// Shuts the scheduler: every waiter, present and future, gets `Closed`.
    /// Returns the items nobody took.
    pub(crate) fn close(&self, poller: &dyn Poller<T>) -> Vec<T> {
        let mut st = self.state.lock();
        st.closed = true;
        for w in st.idle.drain(..) {
            w.cv.notify_one();
        }
        for w in st.resuming.drain(..) {
            w.cv.notify_one();
        }
        let left = st.ready.drain(..).collect();
        let polling = st.polling;
        drop(st);
        if polling {
            poller.wake();
        }
        left
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// A snapshot for tests and metrics: (threads holding a slot, parked threads, ready items).
    pub(crate) fn stats(&self) -> (usize, usize, usize) {
        let st = self.state.lock();
        (
            st.active,
            st.idle.len() + st.polling as usize,
            st.ready.len(),
        )
    }
}

/// Model checks of the waiter logic: `RUSTFLAGS="--cfg loom" cargo test -p cport --lib --release loom`.
/// The kernel is modelled by a queue the "poller" waits on.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::thread;

    /// A kernel with a completion queue: `poll` blocks until something completed or `wake`.
    struct Kernel {
        q: Mutex<(Vec<u32>, bool)>,
        cv: Condvar,
    }

    impl Kernel {
        fn new() -> Arc<Kernel> {
            Arc::new(Kernel {
                q: Mutex::new((Vec::new(), false)),
                cv: Condvar::new(),
            })
        }
        fn complete(&self, x: u32) {
            self.q.lock().0.push(x);
            self.cv.notify_one();
        }
    }

    impl Poller<u32> for Kernel {
        fn poll(&self, _deadline: Option<Instant>, out: &mut Vec<u32>) {
            let mut g = self.q.lock();
            while g.0.is_empty() && !g.1 {
                g = self.cv.wait(g, None);
            }
            g.1 = false;
            out.append(&mut g.0);
        }
        fn wake(&self) {
            self.q.lock().1 = true;
            self.cv.notify_one();
        }
    }

    /// Two workers, concurrency 1; one posted item and one kernel completion: both are
    /// delivered exactly once, never two workers in a handler at once, and nobody is left
    /// blocked (loom reports a deadlock otherwise).
    #[test]
    fn every_item_delivered_once_within_the_concurrency_value() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let sched = Arc::new(Sched::<u32>::new(1));
            let kernel = Kernel::new();
            let inside = Arc::new(AtomicUsize::new(0));
            let got = Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let (sched, kernel, inside, got) =
                        (sched.clone(), kernel.clone(), inside.clone(), got.clone());
                    thread::spawn(move || {
                        let me = Waiter::new();
                        let mut out = Vec::new();
                        let mut had = false;
                        loop {
                            match sched.get(had, None, 1, &mut out, &me, &*kernel) {
                                Outcome::Got => {
                                    had = true;
                                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                                    got.fetch_add(out.len(), Ordering::SeqCst);
                                    out.clear();
                                    inside.fetch_sub(1, Ordering::SeqCst);
                                }
                                Outcome::Closed => return,
                                Outcome::Timeout => unreachable!(),
                            }
                        }
                    })
                })
                .collect();
            sched.push_all([1], &*kernel);
            kernel.complete(2);
            // Wait until both were taken, then close.
            while got.load(Ordering::SeqCst) < 2 {
                thread::yield_now();
            }
            sched.close(&*kernel);
            for w in workers {
                w.join().unwrap();
            }
            assert_eq!(got.load(Ordering::SeqCst), 2);
        });
    }

    /// A worker lends its slot with `enter_blocking`; another worker takes the next item
    /// meanwhile; the first gets a slot back without exceeding the concurrency value.
    #[test]
    fn blocking_lends_the_slot() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let sched = Arc::new(Sched::<u32>::new(1));
            let kernel = Kernel::new();
            sched.push_all([1, 2], &*kernel);
            let me = Waiter::new();
            let mut out = Vec::new();
            assert_eq!(
                sched.get(false, None, 1, &mut out, &me, &*kernel),
                Outcome::Got
            );
            sched.enter_blocking(&*kernel);
            let (s2, k2) = (sched.clone(), kernel.clone());
            let other = thread::spawn(move || {
                let me = Waiter::new();
                let mut out = Vec::new();
                let r = s2.get(false, None, 1, &mut out, &me, &*k2);
                s2.release_slot(&*k2);
                (r, out)
            });
            let (r, got) = other.join().unwrap();
            assert_eq!((r, got), (Outcome::Got, vec![2]));
            sched.leave_blocking(&me);
            assert_eq!(sched.stats().0, 1);
        });
    }

    /// Shutdown wakes a parked waiter and the poller.
    #[test]
    fn close_wakes_every_waiter() {
        loom::model(|| {
            let sched = Arc::new(Sched::<u32>::new(2));
            let kernel = Kernel::new();
            let ts: Vec<_> = (0..2)
                .map(|_| {
                    let (s, k) = (sched.clone(), kernel.clone());
                    thread::spawn(move || {
                        let me = Waiter::new();
                        let mut out = Vec::new();
                        s.get(false, None, 1, &mut out, &me, &*k)
                    })
                })
                .collect();
            sched.close(&*kernel);
            for t in ts {
                assert_eq!(t.join().unwrap(), Outcome::Closed);
            }
        });
    }
}
