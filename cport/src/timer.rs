//! Timers: `post_after` completions kept in a deadline heap and fired by the poller.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use crate::op::{Completion, Op, TimerId};

#[derive(Debug, Default)]
pub(crate) struct Timers {
    /// (deadline, id): ids grow, so equal deadlines fire in the order they were set.
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Live timers: id → (key, user). A cancelled timer is removed here and skipped in the heap.
    live: HashMap<u64, (u64, u64)>,
    next_id: u64,
}

impl Timers {
    /// Adds a timer; returns its id and whether it is now the earliest.
    pub(crate) fn add(&mut self, deadline: Instant, key: u64, user: u64) -> (TimerId, bool) {
        let id = self.next_id;
        self.next_id += 1;
        let earliest = self.next_deadline().is_none_or(|d| deadline < d);
        self.heap.push(Reverse((deadline, id)));
        self.live.insert(id, (key, user));
        (TimerId(id), earliest)
    }

    /// Cancels a timer; true if it had not fired yet (it never will).
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        let was_live = self.live.remove(&id.0).is_some();
        self.prune();
        was_live
    }

    /// Drops cancelled timers from the top of the heap so `next_deadline` is exact.
    fn prune(&mut self) {
        while let Some(Reverse((_, id))) = self.heap.peek() {
            if self.live.contains_key(id) {
                break;
            }
            self.heap.pop();
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((d, _))| *d)
    }

    /// Moves every timer due at `now` into `out`, in deadline order.
    pub(crate) fn fire(&mut self, now: Instant, out: &mut Vec<Completion>) {
        while let Some(Reverse((d, id))) = self.heap.peek().copied() {
            if d > now {
                break;
            }
            self.heap.pop();
            if let Some((key, user)) = self.live.remove(&id) {
                out.push(Completion {
                    key,
                    user,
                    result: Ok(0),
                    op: Op::Timer(TimerId(id)),
                });
            }
        }
        self.prune();
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }
}
