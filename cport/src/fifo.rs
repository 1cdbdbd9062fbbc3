//! [`Fifo`]: a queue that keeps its front element inline. A socket's lanes (the port's
//! receive and send lanes, epoll's read and write sides) hold at most one operation almost
//! always; a `VecDeque` would keep a heap allocation per lane for the socket's whole life
//! once it had held one, which is most of what an idle connection costs. This one allocates
//! only while two or more are queued, and gives the allocation back when that ends.

use std::collections::VecDeque;

/// A FIFO queue with its front element inline (see the module documentation). Invariant:
/// `rest` is empty whenever `head` is `None`.
#[derive(Debug)]
pub(crate) struct Fifo<T> {
    head: Option<T>,
    rest: VecDeque<T>,
}

impl<T> Default for Fifo<T> {
    fn default() -> Self {
        Fifo {
            head: None,
            rest: VecDeque::new(),
        }
    }
}

impl<T> Fifo<T> {
    pub(crate) fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.len()
    }

    // Used by the epoll backend (Linux).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    pub(crate) fn push_back(&mut self, v: T) {
        if self.head.is_none() {
            self.head = Some(v);
        } else {
            self.rest.push_back(v);
        }
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.head.as_ref()
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn front_mut(&mut self) -> Option<&mut T> {
        self.head.as_mut()
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let front = self.head.take();
        self.head = self.rest.pop_front();
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
        front
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.head.iter().chain(self.rest.iter())
    }

    /// Removes and returns the element at `i` (0 is the front).
    pub(crate) fn remove(&mut self, i: usize) -> Option<T> {
        if i == 0 {
            return self.pop_front();
        }
        let v = self.rest.remove(i - 1);
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
        v
    }

    /// Removes every element from index `keep` on (`keep` is 0 or 1: everything, or all but
    /// the front), in order.
    pub(crate) fn split_off(&mut self, keep: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(self.len().saturating_sub(keep));
        if keep == 0 {
            out.extend(self.head.take());
        }
        out.extend(std::mem::take(&mut self.rest));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Fifo;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    proptest! {
        /// Every operation gives what a VecDeque gives, and an emptied queue holds no
        /// allocation.
        #[test]
        fn behaves_as_a_vecdeque(ops in prop::collection::vec((0u8..5, any::<u16>()), 0..200)) {
            let mut f = Fifo::default();
            let mut v = VecDeque::new();
            for (op, x) in ops {
                match op {
                    0 | 1 => { f.push_back(x); v.push_back(x); }
                    2 => prop_assert_eq!(f.pop_front(), v.pop_front()),
                    3 if !v.is_empty() => {
                        let i = x as usize % v.len();
                        prop_assert_eq!(f.remove(i), v.remove(i));
                    }
                    _ => {
                        let keep = (x % 2) as usize;
                        let want: Vec<u16> = v.drain(keep.min(v.len())..).collect();
                        prop_assert_eq!(f.split_off(keep), want);
                    }
                }
                prop_assert_eq!(f.len(), v.len());
                prop_assert_eq!(f.front(), v.front());
                prop_assert!(f.iter().eq(v.iter()));
                if v.len() <= 1 {
                    prop_assert_eq!(f.rest.capacity(), 0);
                }
            }
        }
    }
}
