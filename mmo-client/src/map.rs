//! The board as the dummies see it: [`MapSnapshot`] (their positions and the NPCs they see),
//! merged across client processes, and [`Probe`], a live handle another thread samples.

use std::sync::Weak;

/// Where the dummies are and the NPCs they see (awake NPCs: an NPC is awake exactly when
/// some player sees it): at the end of the run ([`run`](crate::run)), or now ([`Probe::map`]).
#[derive(Debug, Clone, Default)]
pub struct MapSnapshot {
    /// Board width and height.
    pub world_size: u16,
    /// The dummies' own positions.
    pub players: Vec<(i16, i16)>,
    /// NPCs some dummy sees (each once).
    pub npcs: Vec<(i16, i16)>,
}

/// The players' positions and the NPCs seen, each with its id.
pub(crate) type IdMap = (Vec<(i16, i16)>, Vec<(u32, (i16, i16))>);

/// Merges maps with the NPCs' ids (of several client processes: an NPC several see is
/// drawn once, where the first map has it).
pub(crate) fn merge_maps<'a>(maps: impl Iterator<Item = &'a IdMap>) -> MapSnapshot {
    let mut m = MapSnapshot {
        world_size: cport_mmo_proto::W_WIDTH,
        ..MapSnapshot::default()
    };
    let mut seen = IdSet::default();
    for (players, npcs) in maps {
        m.players.extend_from_slice(players);
        for &(id, p) in npcs {
            if seen.insert(id) {
                m.npcs.push(p);
            }
        }
    }
    m
}

/// A set of NPC numbers (id − the first NPC id): a bitmap for the first 4 M (the course's
/// 200,000 NPCs take 25 KB), a hash set for any number past that a server might send.
#[derive(Default)]
pub(crate) struct IdSet {
    bits: Vec<u64>,
    rest: std::collections::HashSet<u32>,
}

impl IdSet {
    const BITMAP: u32 = 1 << 22;

    /// True when `n` was not in the set.
    pub(crate) fn insert(&mut self, n: u32) -> bool {
        if n >= Self::BITMAP {
            return self.rest.insert(n);
        }
        let (w, b) = ((n / 64) as usize, n % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        let fresh = self.bits[w] & (1 << b) == 0;
        self.bits[w] |= 1 << b;
        fresh
    }
}

/// What a [`Probe`] samples: the dummies of this process, or the maps the client processes
/// last sent.
pub(crate) trait MapSource: Send + Sync {
    /// The map now; `None` once the run is over.
    fn map_now(&self) -> Option<MapSnapshot>;
}

/// A handle on a running test that another thread can sample: [`Probe::map`] draws the board
/// as the dummies see it now, from the same pictures as the map [`run`](crate::run) returns
/// at the end.
///
/// It holds the run weakly: once the run has returned, `map` gives `None`. Sampling locks each
/// dummy in turn for as long as it takes to copy its position and the NPCs it sees, as the
/// end-of-run map does; nothing is kept or computed for it between samples.
///
/// With several client processes ([`multi`](crate::multi)) the map is the one the children
/// last sent (once a second when [`Settings::live_map`](crate::Settings::live_map) is set;
/// none otherwise).
#[derive(Clone)]
pub struct Probe(Weak<dyn MapSource>);

impl Probe {
    /// A probe on `source`, held weakly.
    pub(crate) fn on(source: Weak<dyn MapSource>) -> Probe {
        Probe(source)
    }

    /// The dummies' positions and the awake NPCs they see, now; `None` once the run is over.
    pub fn map(&self) -> Option<MapSnapshot> {
        self.0.upgrade()?.map_now()
    }
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("running", &(self.0.strong_count() > 0))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::IdSet;

    #[test]
    fn id_set_keeps_each_number_once_in_the_bitmap_and_past_it() {
        let mut s = IdSet::default();
        for n in [
            0,
            63,
            64,
            199_999,
            IdSet::BITMAP - 1,
            IdSet::BITMAP,
            u32::MAX,
        ] {
            assert!(s.insert(n), "{n} is new");
            assert!(!s.insert(n), "{n} is there");
        }
        assert!(s.insert(1));
        assert!(s.bits.len() <= (IdSet::BITMAP / 64) as usize);
        assert_eq!(s.rest.len(), 2);
    }
}
