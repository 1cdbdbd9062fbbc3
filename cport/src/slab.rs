//! A generational slab: the token of an entry is its index tagged with a generation that
//! changes every time the slot is freed, so a token that outlived its entry never reaches the
//! entry that reused the slot (the ABA of reused socket slots and fd numbers).

/// Tokens at or above this value are never handed out; backends use them for their own
/// internal submissions (wake-ups, cancels).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) const RESERVED_TOKENS: u64 = u64::MAX - 15;
const MAX_GEN: u32 = u32::MAX - 1;

#[derive(Debug)]
struct Slot<T> {
    gen: u32,
    val: Option<T>,
}

#[derive(Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

fn split(token: u64) -> (usize, u32) {
    ((token & 0xFFFF_FFFF) as usize, (token >> 32) as u32)
}

impl<T> Slab<T> {
    pub(crate) fn insert(&mut self, val: T) -> u64 {
        self.len += 1;
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len()).expect("slab full");
                self.slots.push(Slot { gen: 0, val: None });
                i
            }
        };
        let slot = &mut self.slots[idx as usize];
        debug_assert!(slot.val.is_none());
        slot.val = Some(val);
        (u64::from(slot.gen) << 32) | u64::from(idx)
    }

    pub(crate) fn get(&self, token: u64) -> Option<&T> {
        let (idx, gen) = split(token);
        let slot = self.slots.get(idx)?;
        if slot.gen == gen {
            slot.val.as_ref()
        } else {
            None
        }
    }

    pub(crate) fn get_mut(&mut self, token: u64) -> Option<&mut T> {
        let (idx, gen) = split(token);
        let slot = self.slots.get_mut(idx)?;
        if slot.gen == gen {
            slot.val.as_mut()
        } else {
            None
        }
    }

    pub(crate) fn remove(&mut self, token: u64) -> Option<T> {
        let (idx, gen) = split(token);
        let slot = self.slots.get_mut(idx)?;
        if slot.gen != gen {
            return None;
        }
        let val = slot.val.take()?;
        slot.gen = if slot.gen >= MAX_GEN { 0 } else { slot.gen + 1 };
        self.free.push(idx as u32);
        self.len -= 1;
        Some(val)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Tokens of every live entry.
    pub(crate) fn tokens(&self) -> Vec<u64> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.val.is_some())
            .map(|(i, s)| (u64::from(s.gen) << 32) | i as u64)
            .collect()
    }

    /// Takes every entry out (used only on teardown).
    pub(crate) fn drain(&mut self) -> Vec<T> {
        self.len = 0;
        self.free.clear();
        let out = self.slots.iter_mut().filter_map(|s| s.val.take()).collect();
        self.slots.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_token_never_reaches_reused_slot() {
        let mut s = Slab::default();
        let a = s.insert("a");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_eq!(a & 0xFFFF_FFFF, b & 0xFFFF_FFFF, "slot reused");
        assert_ne!(a, b);
        assert!(s.get(a).is_none());
        assert!(s.remove(a).is_none());
        assert_eq!(s.get(b), Some(&"b"));
    }

    #[test]
    fn tokens_stay_below_reserved() {
        let mut s = Slab::default();
        for _ in 0..1000 {
            let t = s.insert(());
            assert!(t < RESERVED_TOKENS);
            s.remove(t);
        }
    }
}
