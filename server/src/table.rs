//! The session table: a fixed number of slots, each with a generation, each behind its own
//! lock, so that looking up one session never contends with another's. An id is the slot and
//! the slot's generation when the entry went in; once the entry is released the generation
//! moves on, so an old id never reaches the entry that reuses the slot (the ABA of reused
//! slots, as the port's tokens prevent it for sockets).

use parking_lot::Mutex;

/// Generations stay in `1..=MAX_GEN` so that an id never has bit 63 set (the server keeps
/// the keys with bit 63 for its own completions).
const MAX_GEN: u32 = 0x7FFF_FFFF;

struct Slot<T> {
    gen: u32,
    entry: Option<T>,
}

pub(crate) struct Slots<T> {
    slots: Box<[Mutex<Slot<T>>]>,
    /// Free slots, the most recently freed last.
    free: Mutex<Vec<u32>>,
}

/// `slot | generation << 32`.
pub(crate) fn id_of(slot: u32, gen: u32) -> u64 {
    (u64::from(gen) << 32) | u64::from(slot)
}

fn split(id: u64) -> (usize, u32) {
    ((id & 0xFFFF_FFFF) as usize, (id >> 32) as u32)
}

impl<T: Clone> Slots<T> {
    /// `n` slots (at least 1, at most 2^31), all free; slot 0 is handed out first.
    pub(crate) fn new(n: usize) -> Slots<T> {
        let n = n.clamp(1, 1 << 31);
        Slots {
            slots: (0..n)
                .map(|_| {
                    Mutex::new(Slot {
                        gen: 1,
                        entry: None,
                    })
                })
                .collect(),
            free: Mutex::new((0..n as u32).rev().collect()),
        }
    }

    /// Reserves a free slot and returns the id an entry put there will have; `None` if every
    /// slot is taken. The slot stays empty (lookups find nothing) until [`Slots::fill`].
    pub(crate) fn reserve(&self) -> Option<u64> {
        let slot = self.free.lock().pop()?;
        let gen = self.slots[slot as usize].lock().gen;
        Some(id_of(slot, gen))
    }

    /// Gives back a reserved slot that was never filled.
    pub(crate) fn unreserve(&self, id: u64) {
        self.free.lock().push(split(id).0 as u32);
    }

    /// Puts the entry into the slot reserved for `id`.
    pub(crate) fn fill(&self, id: u64, entry: T) {
        let (slot, gen) = split(id);
        let mut s = self.slots[slot].lock();
        debug_assert!(s.gen == gen && s.entry.is_none());
        s.entry = Some(entry);
    }

    /// The entry with this id, if it is still there.
    pub(crate) fn get(&self, id: u64) -> Option<T> {
        let (slot, gen) = split(id);
        let s = self.slots.get(slot)?.lock();
        if s.gen == gen {
            s.entry.clone()
        } else {
            None
        }
    }

    /// Removes the entry with this id; the id goes stale and the slot is free again.
    pub(crate) fn release(&self, id: u64) {
        let (slot, gen) = split(id);
        let Some(lock) = self.slots.get(slot) else {
            return;
        };
        let mut s = lock.lock();
        if s.gen == gen && s.entry.take().is_some() {
            s.gen = if s.gen >= MAX_GEN { 1 } else { s.gen + 1 };
            drop(s);
            self.free.lock().push(slot as u32);
        }
    }

    /// Calls `f` with each entry in turn, cloned out of its slot's lock (so `f` may take
    /// other locks, or look the table up again).
    pub(crate) fn for_each(&self, mut f: impl FnMut(T)) {
        for s in self.slots.iter() {
            let entry = s.lock().entry.clone();
            if let Some(e) = entry {
                f(e);
            }
        }
    }

    /// Every entry, cloned.
    pub(crate) fn all(&self) -> Vec<T> {
        let mut v = Vec::new();
        self.for_each(|e| v.push(e));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_id_never_reaches_the_entry_that_reuses_its_slot() {
        let t: Slots<&str> = Slots::new(1);
        let a = t.reserve().unwrap();
        assert!(t.reserve().is_none(), "one slot only");
        assert_eq!(t.get(a), None, "reserved, not filled");
        t.fill(a, "a");
        assert_eq!(t.get(a), Some("a"));
        t.release(a);
        assert_eq!(t.get(a), None);
        let b = t.reserve().unwrap();
        t.fill(b, "b");
        assert_eq!(split(a).0, split(b).0, "the slot is reused");
        assert_ne!(a, b);
        assert_eq!(t.get(a), None, "the old id finds nothing");
        assert_eq!(t.get(b), Some("b"));
        t.release(a); // stale: no effect
        assert_eq!(t.get(b), Some("b"));
        assert_eq!(t.all(), ["b"]);
    }

    #[test]
    fn ids_never_have_bit_63_set_and_generations_wrap() {
        let t: Slots<u8> = Slots::new(2);
        t.slots[1].lock().gen = MAX_GEN;
        let _slot0 = t.reserve().unwrap();
        let id = t.reserve().unwrap();
        assert_eq!(split(id), (1, MAX_GEN));
        t.fill(id, 1);
        t.release(id);
        let id = t.reserve().unwrap();
        assert_eq!(split(id), (1, 1), "wrapped to 1");
        assert_eq!(id & (1 << 63), 0);
        t.unreserve(id);
        assert_eq!(t.reserve(), Some(id));
    }
}
