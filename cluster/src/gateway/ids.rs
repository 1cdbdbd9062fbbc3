//! A gateway's player ids: its share of the cluster's id space, handed out at `CS_LOGIN` and
//! taken back when the session closes, first in first out and only after a quarantine, because
//! a zone may still hold a ghost (or a late message) of the old player for a moment.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

/// How long a freed id waits before it is handed out again.
pub const QUARANTINE: Duration = Duration::from_secs(10);

/// The free ids of one gateway, oldest freed first.
#[derive(Debug)]
pub struct Ids {
    /// Each free id with the moment it was freed (`None`: never used, free at once).
    free: VecDeque<(u32, Option<Instant>)>,
    range: Range<u32>,
    quarantine: Duration,
}

impl Ids {
    /// Gateway `me` of `gateways`: ids `[me*max_users/gateways, (me+1)*max_users/gateways)`.
    pub fn new(me: u16, gateways: u16, max_users: usize) -> Ids {
        Ids::with_quarantine(me, gateways, max_users, QUARANTINE)
    }

    /// [`Ids::new`] with another quarantine (tests).
    pub fn with_quarantine(me: u16, gateways: u16, max_users: usize, q: Duration) -> Ids {
        let range = Ids::share(me, gateways, max_users);
        Ids {
            free: range.clone().map(|id| (id, None)).collect(),
            range,
            quarantine: q,
        }
    }

    /// The ids gateway `me` of `gateways` owns.
    pub fn share(me: u16, gateways: u16, max_users: usize) -> Range<u32> {
        let (me, g, n) = (me as u64, gateways.max(1) as u64, max_users as u64);
        (me * n / g) as u32..((me + 1) * n / g) as u32
    }

    /// The ids this gateway owns.
    pub fn range(&self) -> Range<u32> {
        self.range.clone()
    }

    /// Takes the oldest free id whose quarantine is over.
    pub fn take(&mut self, now: Instant) -> Option<u32> {
        let &(id, freed) = self.free.front()?;
        if let Some(t) = freed {
            // Freed ids are appended in time order: if the oldest still waits, all do.
            if now.saturating_duration_since(t) < self.quarantine {
                return None;
            }
        }
        self.free.pop_front();
        Some(id)
    }

    /// Gives `id` back (to the end of the line).
    pub fn free(&mut self, id: u32, now: Instant) {
        debug_assert!(self.range.contains(&id));
        self.free.push_back((id, Some(now)));
    }

    /// Ids free or in quarantine.
    pub fn available(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_split_the_id_space_without_overlap() {
        let shares: Vec<Range<u32>> = (0..3).map(|g| Ids::share(g, 3, 10_000)).collect();
        assert_eq!(shares[0], 0..3333);
        assert_eq!(shares[1], 3333..6666);
        assert_eq!(shares[2], 6666..10_000);
        assert_eq!(Ids::share(0, 1, 10), 0..10);
    }

    #[test]
    fn a_freed_id_waits_out_its_quarantine_at_the_back_of_the_line() {
        let t0 = Instant::now();
        let mut ids = Ids::new(1, 2, 8); // ids 4..8
        assert_eq!(ids.take(t0), Some(4));
        assert_eq!(ids.take(t0), Some(5));
        ids.free(4, t0);
        assert_eq!(ids.take(t0), Some(6), "never-used ids first");
        assert_eq!(ids.take(t0), Some(7));
        ids.free(5, t0 + Duration::from_secs(1));
        assert_eq!(ids.take(t0 + Duration::from_millis(9_999)), None);
        assert_eq!(ids.take(t0 + QUARANTINE), Some(4), "oldest freed first");
        assert_eq!(ids.take(t0 + QUARANTINE), None, "5 still waits");
        assert_eq!(ids.take(t0 + Duration::from_secs(11)), Some(5));
        assert_eq!(ids.take(t0 + Duration::from_secs(60)), None);
        assert_eq!(ids.available(), 0);
    }
}
