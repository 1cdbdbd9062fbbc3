//! The board: objects (players then NPCs, one array indexed by id), their view lists, and
//! the sectors that say which objects are near a cell.
//!
//! # Locks, and the order they are taken in
//!
//! There is no game thread and no world lock. Three kinds of lock, all short, none held
//! across anything that blocks:
//!
//! 1. **An object's view lock** (`Obj::view`): its view set (for a player, the objects its
//!    client has been told about; for an NPC, the players that see it), its session and
//!    state. A thread holds **at most two**, and takes the **lower id first** (players'
//!    ids are below NPCs'), so two threads reconciling the same pair can never deadlock.
//! 2. **A sector lock** (`World::sectors`): the ids of the objects in one sector. A leaf:
//!    held only to push, remove or copy ids out, never together with another sector lock or
//!    while taking a view lock, and never taken while a view lock is held.
//! 3. **A session's send lock** (inside `cport-server`, or the host's own for another
//!    [`Host`](crate::net::Host)): taken by [`Conn::send`](crate::net::Conn::send), which
//!    only queues bytes and never blocks or calls back into the game; a leaf, taken while
//!    view locks are held.
//!
//! Positions are atomics (`Obj::pos`), written only by the object's own mover (a player's
//! packets are never handled on two threads at once; an NPC has at most one timer pending),
//! read by anyone.
//!
//! # Why view lists stay right without a world lock
//!
//! Every change to "A sees B" happens in `Game::reconcile` (`game/view.rs`) with both view
//! locks held, reading both current positions there, changing both sets together (the
//! relation is symmetric), and sending the ADD/REMOVE/MOVE packets *before releasing the
//! locks*. So the packets a client receives about an object are in the order its view set
//! changed, and a client's picture is always its view set.
//!
//! A mover stores its new position and sector first, then reconciles every candidate: the
//! objects of the sectors around its new cell and everything in its view set. Of two objects
//! moving at once, at least one finds the other in a sector (each inserts itself before it
//! reads the sectors, and sector locks order those steps), and the later of their
//! reconciliations of the pair reads both new positions. So once moves stop, every view set
//! is exactly the set of objects in range.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::Arc;

use parking_lot::Mutex;

use cport_mmo_proto::{self as protocol, Name};

use crate::map::Map;

/// A set of object ids with a cheap hash (ids are small, dense integers).
pub(crate) type IdSet = std::collections::HashSet<u32, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of a `u32` id.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Where a player slot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Never used.
    Fresh,
    /// On the board (NPCs are always here).
    InGame,
    /// Logged out or disconnected (what its session still sends is ignored); the id goes
    /// back to the free ids once the session has closed.
    Left,
}

/// What an object's view lock guards.
pub(crate) struct View<C> {
    /// Player: the objects its client was told about. NPC: the players that see it.
    pub set: IdSet,
    /// A player's session while it is on the board.
    pub session: Option<C>,
    pub state: State,
    pub name: Name,
}

/// One object: a player slot or an NPC.
pub(crate) struct Obj<C> {
    /// `x << 16 | y`.
    pub pos: AtomicU32,
    pub view: Mutex<View<C>>,
}

/// Packs a position.
pub(crate) fn pack(x: u16, y: u16) -> u32 {
    (u32::from(x) << 16) | u32::from(y)
}

/// Unpacks a position.
pub(crate) fn unpack(p: u32) -> (u16, u16) {
    ((p >> 16) as u16, p as u16)
}

#[derive(Default)]
pub(crate) struct Sector {
    players: Vec<u32>,
    npcs: Vec<u32>,
}

/// The board.
pub(crate) struct World<C> {
    pub size: u16,
    pub range: u16,
    pub max_users: u32,
    pub objs: Box<[Obj<C>]>,
    /// NPC `i` (id `max_users + i`) has a move timer pending.
    pub awake: Box<[AtomicBool]>,
    /// The obstacles (`None`: an open board).
    pub map: Option<Arc<Map>>,
    sector_size: u16,
    sectors_per_side: usize,
    sectors: Box<[Mutex<Sector>]>,
}

impl<C> World<C> {
    /// A board `size` cells wide and high, `max_users` player slots, and NPCs at
    /// `npc_positions`.
    pub fn new(size: u16, range: u16, max_users: usize, npc_positions: &[(u16, u16)]) -> World<C> {
        // Sectors at least as wide as the view range: everything within range of a cell is
        // in its sector or the 8 around it.
        let sector_size = range.max(8);
        let per_side = (size as usize).div_ceil(sector_size as usize).max(1);
        let mut objs = Vec::with_capacity(max_users + npc_positions.len());
        for _ in 0..max_users {
            objs.push(Obj {
                pos: AtomicU32::new(0),
                view: Mutex::new(View {
                    set: IdSet::default(),
                    session: None,
                    state: State::Fresh,
                    name: [0; protocol::NAME_SIZE],
                }),
            });
        }
        for (i, &(x, y)) in npc_positions.iter().enumerate() {
            objs.push(Obj {
                pos: AtomicU32::new(pack(x, y)),
                view: Mutex::new(View {
                    set: IdSet::default(),
                    session: None,
                    state: State::InGame,
                    name: protocol::name(&format!("NPC{}", max_users + i)),
                }),
            });
        }
        let world = World {
            size,
            range,
            max_users: max_users as u32,
            objs: objs.into_boxed_slice(),
            awake: (0..npc_positions.len())
                .map(|_| AtomicBool::new(false))
                .collect(),
            map: None,
            sector_size,
            sectors_per_side: per_side,
            sectors: (0..per_side * per_side)
                .map(|_| Mutex::new(Sector::default()))
                .collect(),
        };
        for (i, &(x, y)) in npc_positions.iter().enumerate() {
            world.sector_insert(max_users as u32 + i as u32, pack(x, y));
        }
        world
    }

    /// The same board with obstacles (its size is the board's: `Engine` checks it).
    pub fn with_map(mut self, map: Option<Arc<Map>>) -> World<C> {
        self.map = map;
        self
    }

    /// Whether cell `p` is not an obstacle (every cell is, without a map).
    pub fn open(&self, p: u32) -> bool {
        let (x, y) = unpack(p);
        self.map.as_ref().is_none_or(|m| !m.blocked(x, y))
    }

    pub fn is_npc(&self, id: u32) -> bool {
        id >= self.max_users
    }

    pub fn npc_count(&self) -> usize {
        self.awake.len()
    }

    pub fn pos(&self, id: u32) -> u32 {
        self.objs[id as usize].pos.load(SeqCst)
    }

    pub fn set_pos(&self, id: u32, p: u32) {
        self.objs[id as usize].pos.store(p, SeqCst);
    }

    /// Both within the view range of each other.
    pub fn in_range(&self, a: u32, b: u32) -> bool {
        let ((ax, ay), (bx, by)) = (unpack(a), unpack(b));
        ax.abs_diff(bx) <= self.range && ay.abs_diff(by) <= self.range
    }

    /// One step from `p`, clamped to the board; a step into an obstacle stays at `p` (as one
    /// off the board's edge does: the mover's refused move).
    pub fn step(&self, p: u32, (dx, dy): (i32, i32)) -> u32 {
        let (x, y) = unpack(p);
        let max = i32::from(self.size) - 1;
        let nx = (i32::from(x) + dx).clamp(0, max) as u16;
        let ny = (i32::from(y) + dy).clamp(0, max) as u16;
        let to = pack(nx, ny);
        if self.open(to) {
            to
        } else {
            p
        }
    }

    fn sector_xy(&self, p: u32) -> (usize, usize) {
        let (x, y) = unpack(p);
        let s = self.sector_size as usize;
        (
            (x as usize / s).min(self.sectors_per_side - 1),
            (y as usize / s).min(self.sectors_per_side - 1),
        )
    }

    fn sector(&self, p: u32) -> &Mutex<Sector> {
        let (sx, sy) = self.sector_xy(p);
        &self.sectors[sy * self.sectors_per_side + sx]
    }

    pub fn sector_insert(&self, id: u32, p: u32) {
        let mut s = self.sector(p).lock();
        if self.is_npc(id) {
            s.npcs.push(id);
        } else {
            s.players.push(id);
        }
    }

    pub fn sector_remove(&self, id: u32, p: u32) {
        let mut s = self.sector(p).lock();
        let list = if self.is_npc(id) {
            &mut s.npcs
        } else {
            &mut s.players
        };
        if let Some(i) = list.iter().position(|&o| o == id) {
            list.swap_remove(i);
        }
    }

    /// Moves `id` from the sector of `from` to the sector of `to` (one sector lock at a
    /// time: insert first, so a concurrent reader may see it twice but never miss it).
    pub fn sector_move(&self, id: u32, from: u32, to: u32) {
        if self.sector_xy(from) != self.sector_xy(to) {
            self.sector_insert(id, to);
            self.sector_remove(id, from);
        }
    }

    /// The sector that holds position `p` (for [`World::sector_members`]).
    pub(crate) fn sector_index(&self, p: u32) -> usize {
        let (sx, sy) = self.sector_xy(p);
        sy * self.sectors_per_side + sx
    }

    /// Every `(sector, id)` in the sectors, one sector lock at a time (the consistency check
    /// of `MmoServer::check_world`; not used by the game).
    pub(crate) fn sector_members(&self) -> Vec<(usize, u32)> {
        let mut out = Vec::new();
        for (i, s) in self.sectors.iter().enumerate() {
            let s = s.lock();
            out.extend(s.players.iter().chain(&s.npcs).map(|&id| (i, id)));
        }
        out
    }

    /// Appends the NPCs standing on any of `cells` now (each once).
    pub fn npcs_on(&self, cells: &[u32], out: &mut Vec<u32>) {
        for &c in cells {
            let s = self.sector(c).lock();
            out.extend(s.npcs.iter().filter(|&&o| self.pos(o) == c));
        }
        out.sort_unstable();
        out.dedup();
    }

    /// Whether any object stands on `cell` now.
    pub fn occupied(&self, cell: u32) -> bool {
        let s = self.sector(cell).lock();
        s.players
            .iter()
            .chain(&s.npcs)
            .any(|&o| self.pos(o) == cell)
    }

    /// Appends the ids in the sectors around `p` that are in range of `p` now (players, and
    /// NPCs too if `npcs`).
    pub fn near(&self, p: u32, npcs: bool, out: &mut Vec<u32>) {
        let (sx, sy) = self.sector_xy(p);
        let n = self.sectors_per_side;
        for y in sy.saturating_sub(1)..=(sy + 1).min(n - 1) {
            for x in sx.saturating_sub(1)..=(sx + 1).min(n - 1) {
                let s = self.sectors[y * n + x].lock();
                out.extend(s.players.iter().filter(|&&o| self.in_range(p, self.pos(o))));
                if npcs {
                    out.extend(s.npcs.iter().filter(|&&o| self.in_range(p, self.pos(o))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::game::Rng;

    /// `near` finds exactly the objects in range, whatever the range and wherever the cell
    /// (edges and corners included), after objects moved between sectors.
    #[test]
    fn near_equals_brute_force() {
        for (size, range, seed) in [
            (50u16, 3u16, 1u64),
            (100, 7, 2),
            (64, 8, 3),
            (30, 12, 4),
            (9, 0, 5),
        ] {
            let rng = Rng::new(seed);
            let cell = |r: u64| {
                pack(
                    (r % u64::from(size)) as u16,
                    ((r >> 32) % u64::from(size)) as u16,
                )
            };
            let npcs: Vec<(u16, u16)> = (0..300).map(|_| unpack(cell(rng.next_u64()))).collect();
            let players = 40;
            let w = World::<()>::new(size, range, players, &npcs);
            for id in 0..players as u32 {
                let p = cell(rng.next_u64());
                w.set_pos(id, p);
                w.sector_insert(id, p);
            }
            // Move everyone a few times (NPCs and players), keeping sectors in step.
            for _ in 0..5 {
                for id in 0..w.objs.len() as u32 {
                    let from = w.pos(id);
                    let to = cell(rng.next_u64());
                    w.set_pos(id, to);
                    w.sector_move(id, from, to);
                }
            }
            for _ in 0..200 {
                let q = cell(rng.next_u64());
                for npcs_too in [true, false] {
                    let mut got = Vec::new();
                    w.near(q, npcs_too, &mut got);
                    got.sort_unstable();
                    let want: Vec<u32> = (0..w.objs.len() as u32)
                        .filter(|&id| (npcs_too || !w.is_npc(id)) && w.in_range(q, w.pos(id)))
                        .collect();
                    assert_eq!(got, want, "size {size} range {range} at {:?}", unpack(q));
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 128,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// On a small world of any size and view range, with objects placed and then moved
        /// anywhere (across sectors, onto edges and corners), the ids `near` finds for any
        /// cell are exactly a brute-force scan of every object within the view range.
        #[test]
        fn near_equals_brute_force_for_any_world(
            size in 1u16..60,
            range in 0u16..20,
            players in 0usize..12,
            npcs in proptest::collection::vec(proptest::prelude::any::<(u16, u16)>(), 0..40),
            placed in proptest::collection::vec(proptest::prelude::any::<(u16, u16)>(), 12),
            moves in proptest::collection::vec(
                (proptest::prelude::any::<u16>(), proptest::prelude::any::<(u16, u16)>()),
                0..60,
            ),
            queries in proptest::collection::vec(proptest::prelude::any::<(u16, u16)>(), 1..20),
        ) {
            let cell = |(x, y): (u16, u16)| pack(x % size, y % size);
            let npcs: Vec<(u16, u16)> = npcs.into_iter().map(|c| unpack(cell(c))).collect();
            let w = World::<()>::new(size, range, players, &npcs);
            for id in 0..players as u32 {
                let p = cell(placed[id as usize]);
                w.set_pos(id, p);
                w.sector_insert(id, p);
            }
            let n = w.objs.len() as u32;
            if n > 0 {
                for (who, to) in moves {
                    let id = u32::from(who) % n;
                    let (from, to) = (w.pos(id), cell(to));
                    w.set_pos(id, to);
                    w.sector_move(id, from, to);
                }
            }
            for q in queries {
                let q = cell(q);
                for npcs_too in [true, false] {
                    let mut got = Vec::new();
                    w.near(q, npcs_too, &mut got);
                    got.sort_unstable();
                    let want: Vec<u32> = (0..n)
                        .filter(|&id| (npcs_too || !w.is_npc(id)) && w.in_range(q, w.pos(id)))
                        .collect();
                    proptest::prop_assert_eq!(got, want);
                }
            }
        }
    }

    #[test]
    fn steps_are_clamped_to_the_board() {
        let w = World::<()>::new(10, 3, 1, &[]);
        assert_eq!(w.step(pack(0, 0), (-1, 0)), pack(0, 0));
        assert_eq!(w.step(pack(0, 0), (0, -1)), pack(0, 0));
        assert_eq!(w.step(pack(9, 9), (1, 0)), pack(9, 9));
        assert_eq!(w.step(pack(9, 9), (0, 1)), pack(9, 9));
        assert_eq!(w.step(pack(4, 5), (1, 0)), pack(5, 5));
        assert_eq!(w.step(pack(4, 5), (0, -1)), pack(4, 4));
    }

    #[test]
    fn steps_into_obstacles_stay_put() {
        let mut map = Map::open(10, 10);
        map.set(5, 5, true);
        let w = World::<()>::new(10, 3, 1, &[]).with_map(Some(Arc::new(map)));
        assert_eq!(w.step(pack(4, 5), (1, 0)), pack(4, 5));
        assert_eq!(w.step(pack(5, 4), (0, 1)), pack(5, 4));
        assert_eq!(w.step(pack(4, 5), (0, 1)), pack(4, 6));
        assert!(!w.open(pack(5, 5)) && w.open(pack(4, 5)));
    }
}
