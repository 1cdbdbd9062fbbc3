//! Model checks of the waiter logic: `RUSTFLAGS="--cfg loom" cargo test -p cport --lib --release loom`.
//! The kernel is modelled by a queue the "poller" waits on.

use super::*;
use loom::sync::atomic::AtomicUsize;
use loom::thread;

/// A kernel with a completion queue: `poll` blocks until something completed or `wake`.
///
/// Any number of threads may wait in `poll` at once, and each event wakes one of them
/// (`notify_one`), as epoll does; a wake-up is edge-triggered and coalesces with one not
/// taken yet (a flag, not a count), so a thread woken for it may find it taken and sleep
/// again. `Kernel::epoll` takes one event per wait, as `epoll_wait` with maxevents 1 (a
/// waiter with company); `Kernel::batching` takes all (a waiter alone takes a batch).
struct Kernel {
    q: Mutex<(Vec<u32>, bool)>,
    cv: Condvar,
    one_per_wait: bool,
}

impl Kernel {
    fn batching() -> Arc<Kernel> {
        Arc::new(Kernel {
            q: Mutex::new((Vec::new(), false)),
            cv: Condvar::new(),
            one_per_wait: false,
        })
    }
    fn epoll() -> Arc<Kernel> {
        Arc::new(Kernel {
            q: Mutex::new((Vec::new(), false)),
            cv: Condvar::new(),
            one_per_wait: true,
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
        if !self.one_per_wait {
            out.append(&mut g.0);
        } else if !g.0.is_empty() {
            out.push(g.0.remove(0));
        }
    }
    fn wake(&self) {
        self.q.lock().1 = true;
        self.cv.notify_one();
    }
}

/// Two workers, concurrency 1; one posted item and one kernel completion, which a waiter
/// takes in one batch: both are delivered exactly once, never two workers in a handler at
/// once, and nobody is left blocked (loom reports a deadlock otherwise).
#[test]
fn every_item_delivered_once_within_the_concurrency_value() {
    check_shared(|| run_model(Sched::new(1), Kernel::batching(), 2, &[&[1]], &[2]));
}

/// A worker lends its slot with `release_slot` (as `blocking` does); another worker takes the next item
/// meanwhile; the first gets a slot back without exceeding the concurrency value.
#[test]
fn blocking_lends_the_slot() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(|| {
        let sched = Arc::new(Sched::<u32>::new(1));
        let kernel = Kernel::batching();
        sched.push_all([1, 2], &*kernel);
        let me = Waiter::new();
        let mut out = Vec::new();
        assert_eq!(
            sched.get(false, &mut false, None, 1, &mut out, &me, &*kernel),
            Outcome::Got
        );
        sched.release_slot(&*kernel);
        let (s2, k2) = (sched.clone(), kernel.clone());
        let other = thread::spawn(move || {
            let me = Waiter::new();
            let mut out = Vec::new();
            let r = s2.get(false, &mut false, None, 1, &mut out, &me, &*k2);
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
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(|| {
        let sched = Arc::new(Sched::<u32>::new(2));
        let kernel = Kernel::batching();
        let ts: Vec<_> = (0..2)
            .map(|_| {
                let (s, k) = (sched.clone(), kernel.clone());
                thread::spawn(move || {
                    let me = Waiter::new();
                    let mut out = Vec::new();
                    s.get(false, &mut false, None, 1, &mut out, &me, &*k)
                })
            })
            .collect();
        sched.close(&*kernel);
        for t in ts {
            assert_eq!(t.join().unwrap(), Outcome::Closed);
        }
    });
}

/// Runs `n` workers on a shared scheduler of concurrency `c` until `items` items were
/// taken: checks that each is taken once, never more than `c` at once, and that close
/// reaches every waiter (loom reports a deadlock if a thread is left asleep).
fn shared_model(c: usize, n: usize, posted: &[u32], completed: &[u32]) {
    shared_model_in_steps(c, n, &[posted], completed)
}

/// As `shared_model`, posting each step's items only after everything before was taken
/// (so a later post needs a wake-up of its own).
fn shared_model_in_steps(c: usize, n: usize, steps: &[&[u32]], completed: &[u32]) {
    run_model(Sched::new(c), Kernel::epoll(), n, steps, completed)
}

/// Runs `n` workers on `sched` until every item (the kernel's completions, then each
/// step's posts once everything before was taken) was taken: checks that each is taken
/// once and never more than the concurrency value at once, then closes the scheduler and
/// joins every worker (loom reports a deadlock if one is left asleep).
fn run_model(
    sched: Sched<u32>,
    kernel: Arc<Kernel>,
    n: usize,
    steps: &[&[u32]],
    completed: &[u32],
) {
    let c = sched.concurrency();
    let sched = Arc::new(sched);
    let inside = Arc::new(AtomicUsize::new(0));
    let got = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..n)
        .map(|_| {
            let (sched, kernel, inside, got) =
                (sched.clone(), kernel.clone(), inside.clone(), got.clone());
            thread::spawn(move || {
                let me = Waiter::new();
                let mut out = Vec::new();
                let mut had = false;
                loop {
                    match sched.get(had, &mut false, None, 1, &mut out, &me, &*kernel) {
                        Outcome::Got => {
                            had = true;
                            assert!(inside.fetch_add(1, Ordering::SeqCst) < c);
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
    for &x in completed {
        kernel.complete(x);
    }
    let mut items = completed.len();
    for posted in steps {
        sched.push_all(posted.iter().copied(), &*kernel);
        items += posted.len();
        while got.load(Ordering::SeqCst) < items {
            thread::yield_now();
        }
    }
    sched.close(&*kernel);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(got.load(Ordering::SeqCst), items);
}

/// Explores `f` with a preemption bound of 2 (with every idle thread in the kernel, a bound
/// of 3 runs for many minutes).
fn check_shared(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b.check(f);
}

/// Every idle thread waits in the kernel: a posted item (a wake-up through the kernel)
/// and a kernel completion are each taken once, and shutdown reaches both waiters
/// although the kernel wakes one per wake-up.
#[test]
fn shared_waiters_take_every_item_once() {
    check_shared(|| shared_model(2, 2, &[1], &[2]));
}

/// Two posts with both threads in the kernel: one wake-up may be coalesced with the
/// other, so the thread that takes the first must pass the second on.
#[test]
fn shared_waiters_pass_coalesced_wakeups_on() {
    check_shared(|| shared_model(2, 2, &[1, 2], &[]));
}

/// More threads than the concurrency value: the extra one parks in user space, and the
/// value holds while the others take items from the kernel.
#[test]
fn shared_waiters_keep_the_concurrency_value() {
    check_shared(|| shared_model(1, 2, &[1], &[2]));
}

/// A post after the first one was taken needs a wake-up of its own: the flag that
/// coalesces wake-ups must be cleared by the thread the first one reached.
#[test]
fn shared_waiters_are_woken_again_for_a_later_post() {
    check_shared(|| shared_model_in_steps(2, 2, &[&[1], &[2]], &[]));
}
