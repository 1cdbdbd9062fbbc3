//! One submitter at a time, without making the others wait: the flush protocol of the
//! io_uring backend, kept apart so that loom can check it.
//!
//! Any thread may have pushed entries (SQEs) that must reach the kernel. The kernel serialises
//! submitters on the ring's mutex and issues sends inline under it, so a second thread that
//! enters to submit only spins there. Instead, a thread that finds another submitting returns
//! at once and leaves its entries to that one, which looks again before it leaves.
//!
//! Why nothing is left behind: a pusher sets `pending`, then tries `submitting`; the
//! submitter clears `submitting`, then reads `pending` (all `SeqCst`). In the single order of
//! those four steps either the pusher's try comes after the clear (it submits itself), or it
//! comes before, and then the submitter's read comes after the pusher's set (it goes round
//! again).

#[cfg(loom)]
use crate::sync::fence;
use crate::sync::{AtomicBool, AtomicUsize, Ordering::SeqCst};

/// Who submits what a thread outside any handler pass pushed (see [`Combiner::hand_off`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandOff {
    /// A worker waits in the kernel: wake one; it submits when it comes back.
    WakeAWaiter,
    /// No waiter, but a worker will submit when it leaves its handler pass.
    Returning,
    /// Nobody will: submit now.
    FlushYourself,
}

#[derive(Debug)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) struct Combiner {
    /// Entries were pushed since the last submission began.
    pending: AtomicBool,
    /// A thread is in `flush`'s submitting loop.
    submitting: AtomicBool,
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
impl Combiner {
    pub(crate) fn new() -> Self {
        Combiner {
            pending: AtomicBool::new(false),
            submitting: AtomicBool::new(false),
        }
    }

    /// Records that entries were pushed (call after pushing them). A swap for the same reason
    /// as in `flush`.
    pub(crate) fn pushed(&self) {
        self.pending.swap(true, SeqCst);
    }

    /// Runs `submit` until nothing is pending, unless another thread is at it (then returns
    /// at once: that thread submits this one's entries too). `submit` hands everything pushed
    /// so far to the kernel; it returns false if the kernel refused for now, which ends the
    /// loop (the caller's poller submits what is left when it next waits).
    pub(crate) fn flush(&self, mut submit: impl FnMut() -> bool) {
        loop {
            if !self.pending.load(SeqCst) || self.submitting.swap(true, SeqCst) {
                return;
            }
            while self.pending.swap(false, SeqCst) {
                if !submit() {
                    break;
                }
            }
            // A swap rather than a store: the same `xchg` on x86, and loom 0.7 orders plain
            // stores against read-modify-writes of the same location wrongly (it let a swap
            // after this store read the value from before it), so the model needs RMWs here.
            self.submitting.swap(false, SeqCst);
        }
    }

    /// Entries were pushed that no submission has begun to take. The read of a worker that
    /// just stopped counting for the hand-off (see [`Combiner::hand_off`]), after a fence.
    pub(crate) fn pending(&self) -> bool {
        // See `hand_off` for why this fence exists only for loom.
        #[cfg(loom)]
        fence(SeqCst);
        self.pending.load(SeqCst)
    }

    /// The hand-off of a thread outside any handler pass, after it pushed (and called
    /// [`Combiner::pushed`]): true if some worker will submit for it — `pollers` workers wait
    /// in the kernel (the caller then wakes one) or `returning` workers are in a handler pass
    /// they will leave through `get` — so the caller need not enter the kernel itself; false:
    /// it must flush.
    ///
    /// Why nothing is left behind: a worker that stops counting (a waiter back from the
    /// kernel decrements `pollers`; a worker leaving its pass decrements `returning`) then
    /// reads `pending` ([`Combiner::pending`]) and flushes if set. The caller sets `pending`,
    /// then reads the counts. Every one of these accesses is `SeqCst`, so they fall in one
    /// total order that keeps each thread's program order: either the caller's read comes
    /// after the worker's decrement (it sees the count without that worker), or the worker's
    /// read of `pending` comes after the caller's set (it submits the entry) — the
    /// store-buffering litmus test, which `SeqCst` forbids. loom does not order a `SeqCst`
    /// load after an earlier `SeqCst` store of another location by itself (its model found the
    /// lost entry without them), so under loom each side also fences between its write and
    /// its read; the real build needs no `mfence` (on x86 the writes are `xchg`/`lock`
    /// instructions, full barriers already).
    pub(crate) fn hand_off(pollers: &AtomicUsize, returning: &AtomicUsize) -> HandOff {
        #[cfg(loom)]
        fence(SeqCst);
        if pollers.load(SeqCst) > 0 {
            HandOff::WakeAWaiter
        } else if returning.load(SeqCst) > 0 {
            HandOff::Returning
        } else {
            HandOff::FlushYourself
        }
    }
}

/// `RUSTFLAGS="--cfg loom" cargo test -p cport --lib --release loom`: with the kernel's ring
/// modelled as a queue, whatever the interleaving of pushers and flushers, every entry is
/// submitted once every flush has returned.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use crate::sync::{Arc, Mutex};
    use loom::thread;

    struct Ring {
        sq: Mutex<Vec<u32>>,
        submitted: Mutex<Vec<u32>>,
        c: Combiner,
    }

    impl Ring {
        fn new() -> Arc<Ring> {
            Arc::new(Ring {
                sq: Mutex::new(Vec::new()),
                submitted: Mutex::new(Vec::new()),
                c: Combiner::new(),
            })
        }

        fn push(&self, x: u32) {
            self.sq.lock().push(x);
            self.c.pushed();
        }

        /// Submits what is pending, as the backend does: the ring's SQ moves to the kernel.
        fn flush(&self) {
            self.c.flush(|| {
                let mut sq = self.sq.lock();
                self.submitted.lock().append(&mut sq);
                true
            });
        }

        fn push_and_flush(&self, x: u32) {
            self.push(x);
            self.flush();
        }
    }

    #[test]
    fn loom_no_entry_is_left_unsubmitted() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let ring = Ring::new();
            let others: Vec<_> = (1..3)
                .map(|x| {
                    let ring = ring.clone();
                    thread::spawn(move || ring.push_and_flush(x))
                })
                .collect();
            ring.push_and_flush(0);
            for t in others {
                t.join().unwrap();
            }
            let mut got = ring.submitted.lock().clone();
            got.sort_unstable();
            assert_eq!(got, [0, 1, 2]);
            assert!(ring.sq.lock().is_empty());
        });
    }

    /// The hand-off: a thread outside any handler pass pushes and leaves its entry to the
    /// workers when one waits in the kernel or is in a handler pass; one worker comes back
    /// from the kernel (decrements `pollers`, then flushes what is pending) and one leaves its
    /// handler pass (decrements `returning`, then flushes). Whatever the interleaving, the
    /// entry is submitted once all three are done — the wake-up the hand-off sends is not
    /// needed for that (it only makes a waiter that stays in the kernel come back sooner).
    #[test]
    fn loom_a_handed_off_entry_is_always_submitted() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let ring = Ring::new();
            let pollers = Arc::new(AtomicUsize::new(1));
            let returning = Arc::new(AtomicUsize::new(1));
            let waiter = {
                let (ring, pollers) = (ring.clone(), pollers.clone());
                thread::spawn(move || {
                    pollers.fetch_sub(1, SeqCst);
                    if ring.c.pending() {
                        ring.flush();
                    }
                })
            };
            let worker = {
                let (ring, returning) = (ring.clone(), returning.clone());
                thread::spawn(move || {
                    returning.fetch_sub(1, SeqCst);
                    if ring.c.pending() {
                        ring.flush();
                    }
                })
            };
            ring.push(7);
            if Combiner::hand_off(&pollers, &returning) == HandOff::FlushYourself {
                ring.flush();
            }
            waiter.join().unwrap();
            worker.join().unwrap();
            assert_eq!(*ring.submitted.lock(), [7]);
        });
    }
}
