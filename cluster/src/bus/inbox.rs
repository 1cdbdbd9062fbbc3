//! Each sender's batches in order, on a pool of workers.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use cport_mmo::cluster::wire::Source;

/// Keeps each source's items in order while a worker pool handles them.
///
/// The bus thread [`push`](Inbox::push)es what arrives from a source; when `push` returns
/// `true` the caller posts one "drain this source" completion to the port, and the worker
/// that gets it calls [`drain`](Inbox::drain), which hands the source's items to `f` in
/// order until its queue is empty. At most one worker drains a source at a time; different
/// sources drain in parallel on different workers.
///
/// No item is stranded: an item pushed while a drain is finishing is either handled by that
/// drain or makes its `push` return `true` (both look at the source's queue under its lock).
/// A `drain` of a source that another thread is draining returns at once (that drain takes
/// the items), so a stray drain completion is harmless.
pub struct Inbox<T> {
    sources: RwLock<HashMap<Source, Arc<Mutex<Queue<T>>>>>,
    queued: AtomicUsize,
}

struct Queue<T> {
    items: VecDeque<T>,
    /// A drain was asked for (by a `push` that returned `true`) and has not emptied the
    /// queue yet.
    scheduled: bool,
    /// Some thread is inside `drain` for this source.
    draining: bool,
}

impl<T: Send> Inbox<T> {
    /// An empty inbox.
    pub fn new() -> Inbox<T> {
        Inbox {
            sources: RwLock::new(HashMap::new()),
            queued: AtomicUsize::new(0),
        }
    }

    /// Queues `item` from `source`. `true`: the caller must get a [`drain`](Inbox::drain) of
    /// `source` going (post one completion); `false`: one is already asked for or running, and
    /// will handle `item`.
    pub fn push(&self, source: Source, item: T) -> bool {
        let queue = self.queue(source);
        let mut q = queue.lock();
        q.items.push_back(item);
        self.queued.fetch_add(1, Ordering::Relaxed);
        !std::mem::replace(&mut q.scheduled, true)
    }

    /// Runs `f` on `source`'s items in order until its queue is empty. Returns at once when
    /// another thread is draining `source` (or when called from inside `f` for the same
    /// source). If `f` panics, the items not handled yet stay queued for the next drain,
    /// which the next `push` asks for.
    pub fn drain(&self, source: Source, mut f: impl FnMut(T)) {
        let Some(queue) = self.sources.read().get(&source).cloned() else {
            return;
        };
        {
            let mut q = queue.lock();
            if q.draining {
                return;
            }
            q.draining = true;
        }
        let mut guard = Draining {
            queue: &queue,
            batch: VecDeque::new(),
            done: false,
        };
        loop {
            {
                let mut q = queue.lock();
                if q.items.is_empty() {
                    q.draining = false;
                    q.scheduled = false;
                    guard.done = true;
                    return;
                }
                // Swap the queue for the (empty) batch buffer: the items are handled outside
                // the lock, and the two buffers keep their capacity from round to round.
                std::mem::swap(&mut q.items, &mut guard.batch);
            }
            while let Some(item) = guard.batch.pop_front() {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                f(item);
            }
        }
    }

    /// Items waiting in every source's queue, not handed to a drain's `f` yet (a metric).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn queue(&self, source: Source) -> Arc<Mutex<Queue<T>>> {
        if let Some(q) = self.sources.read().get(&source) {
            return q.clone();
        }
        self.sources
            .write()
            .entry(source)
            .or_insert_with(|| {
                Arc::new(Mutex::new(Queue {
                    items: VecDeque::new(),
                    scheduled: false,
                    draining: false,
                }))
            })
            .clone()
    }
}

/// Puts back what a panicking `f` left, so that the source is not stuck as "draining".
struct Draining<'a, T> {
    queue: &'a Mutex<Queue<T>>,
    batch: VecDeque<T>,
    done: bool,
}

impl<T> Drop for Draining<'_, T> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut q = self.queue.lock();
        // The unhandled rest of the batch came before anything queued since.
        while let Some(item) = self.batch.pop_back() {
            q.items.push_front(item);
        }
        q.draining = false;
        // Nobody will drain these until asked: let the next push ask.
        q.scheduled = false;
    }
}

impl<T: Send> Default for Inbox<T> {
    fn default() -> Inbox<T> {
        Inbox::new()
    }
}

impl<T> fmt::Debug for Inbox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("sources", &self.sources.read().len())
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Source = Source::Zone(1);
    const B: Source = Source::Gateway(1);

    #[test]
    fn the_first_push_asks_for_a_drain_and_the_next_ones_wait_for_it() {
        let inbox = Inbox::new();
        assert!(inbox.push(A, 1));
        assert!(!inbox.push(A, 2));
        assert!(inbox.push(B, 10), "another source asks for its own drain");
        assert!(!inbox.push(A, 3));
        assert_eq!(inbox.queued(), 4);
        let mut got = Vec::new();
        inbox.drain(A, |i| got.push(i));
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(inbox.queued(), 1);
        assert!(
            inbox.push(A, 4),
            "after a drain emptied the queue, a push asks again"
        );
        assert!(!inbox.push(B, 11), "B's drain has not run yet");
    }

    #[test]
    fn a_drain_takes_what_is_pushed_while_it_runs() {
        let inbox = Inbox::new();
        assert!(inbox.push(A, 0));
        let mut got = Vec::new();
        inbox.drain(A, |i| {
            got.push(i);
            if i < 5 {
                assert!(!inbox.push(A, i + 1), "the running drain will take it");
            }
        });
        assert_eq!(got, [0, 1, 2, 3, 4, 5]);
        assert_eq!(inbox.queued(), 0);
    }

    #[test]
    fn a_second_drain_of_a_source_returns_at_once() {
        let inbox = Inbox::new();
        assert!(inbox.push(A, 0));
        assert!(!inbox.push(A, 1));
        let mut got = Vec::new();
        inbox.drain(A, |i| {
            let mut inner = Vec::new();
            inbox.drain(A, |j| inner.push(j));
            assert!(
                inner.is_empty(),
                "a nested drain of the same source handled {inner:?}"
            );
            got.push(i);
        });
        assert_eq!(got, [0, 1]);
    }

    #[test]
    fn a_drain_of_an_unknown_or_empty_source_does_nothing() {
        let inbox: Inbox<u32> = Inbox::new();
        inbox.drain(A, |_| panic!("nothing queued"));
        assert!(inbox.push(A, 1));
        inbox.drain(A, |_| {});
        inbox.drain(A, |_| panic!("nothing left"));
        assert!(inbox.push(A, 2));
    }

    #[test]
    fn a_panic_in_f_leaves_the_rest_queued_for_the_next_drain() {
        let inbox = Inbox::new();
        for i in 0..4 {
            inbox.push(A, i);
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inbox.drain(A, |i| assert_ne!(i, 1, "f fails on 1"));
        }));
        assert!(r.is_err());
        assert_eq!(inbox.queued(), 2);
        assert!(inbox.push(A, 4), "the next push asks for a drain again");
        let mut got = Vec::new();
        inbox.drain(A, |i| got.push(i));
        assert_eq!(got, [2, 3, 4]);
    }
}
