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

use crate::sync::{AtomicBool, Ordering::SeqCst};

#[derive(Debug)]
pub(crate) struct Combiner {
    /// Entries were pushed since the last submission began.
    pending: AtomicBool,
    /// A thread is in `flush`'s submitting loop.
    submitting: AtomicBool,
}

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

    /// A thread is submitting now (the poller then waits without submitting, rather than
    /// queue behind it on the ring's mutex; that thread submits what is pending).
    pub(crate) fn busy(&self) -> bool {
        self.submitting.load(SeqCst)
    }

    /// The caller is about to submit everything pushed so far itself (the poller's combined
    /// submit-and-wait).
    pub(crate) fn take_pending(&self) {
        self.pending.swap(false, SeqCst);
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
        fn push_and_flush(&self, x: u32) {
            self.sq.lock().push(x);
            self.c.pushed();
            self.c.flush(|| {
                let mut sq = self.sq.lock();
                self.submitted.lock().append(&mut sq);
                true
            });
        }
    }

    #[test]
    fn loom_no_entry_is_left_unsubmitted() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let ring = Arc::new(Ring {
                sq: Mutex::new(Vec::new()),
                submitted: Mutex::new(Vec::new()),
                c: Combiner::new(),
            });
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
}
