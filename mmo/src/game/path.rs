//! A* on the board's 4-neighbour grid, bounded so that one search costs at most a few
//! hundred microseconds whatever the map: it looks only at cells within [`Bounds::radius`]
//! of the start and expands at most [`Bounds::max_nodes`] of them. A leaf: it knows cells
//! and a `passable` test, nothing of the game.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// How far one search may go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Most cells taken off the open list.
    pub max_nodes: usize,
    /// Only cells within this many cells of the start on both axes are looked at.
    pub radius: u16,
}

/// What an NPC's chase searches with: the window (49×49 cells) holds every detour around
/// the give-up distance's worth of board; 4096 nodes is more than the window, so the radius
/// is what bounds it in practice. Measured in a release build: about 90 µs when the whole
/// window is searched (the goal walled off), 16 µs round a 60-cell wall, 3 µs on open
/// ground.
pub(crate) const CHASE: Bounds = Bounds {
    max_nodes: 4096,
    radius: 24,
};

/// The answer of [`find_path`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Path {
    /// The start is next to (or on) the goal already.
    Here,
    /// The cells to walk, in order, the last one next to the goal (the first is the next
    /// step).
    Steps(Vec<(u16, u16)>),
    /// Every cell reachable within the radius was searched: no way there.
    Unreachable,
    /// The node budget ran out before a way was found.
    Bound,
}

/// Manhattan distance.
pub(crate) fn manhattan(a: (u16, u16), b: (u16, u16)) -> u32 {
    u32::from(a.0.abs_diff(b.0)) + u32::from(a.1.abs_diff(b.1))
}

/// The shortest 4-neighbour walk from `from` to a cell next to `goal` (Manhattan distance
/// 1), over cells of a `size`-wide board for which `passable` holds (`from` itself need not),
/// within `bounds`. Deterministic: ties are broken by the order of the search.
pub(crate) fn find_path(
    from: (u16, u16),
    goal: (u16, u16),
    size: u16,
    bounds: Bounds,
    passable: impl Fn(u16, u16) -> bool,
) -> Path {
    if manhattan(from, goal) <= 1 {
        return Path::Here;
    }
    let r = bounds.radius;
    let x0 = from.0.saturating_sub(r);
    let y0 = from.1.saturating_sub(r);
    let x1 = from.0.saturating_add(r).min(size.saturating_sub(1));
    let y1 = from.1.saturating_add(r).min(size.saturating_sub(1));
    let w = usize::from(x1 - x0) + 1;
    let h = usize::from(y1 - y0) + 1;
    let idx = |(x, y): (u16, u16)| usize::from(y - y0) * w + usize::from(x - x0);
    let cell = |i: usize| ((i % w) as u16 + x0, (i / w) as u16 + y0);
    // The heuristic: Manhattan distance to a cell next to the goal (admissible).
    let heur = |c: (u16, u16)| manhattan(c, goal).saturating_sub(1);
    let mut g = vec![u32::MAX; w * h];
    let mut parent = vec![u32::MAX; w * h];
    let mut open = BinaryHeap::new();
    let start = idx(from);
    g[start] = 0;
    open.push(Reverse((heur(from), 0u32, start)));
    let mut expanded = 0;
    while let Some(Reverse((_, gc, i))) = open.pop() {
        if gc > g[i] {
            continue; // a stale entry: a shorter way to `i` was found after it was pushed
        }
        let c = cell(i);
        if manhattan(c, goal) <= 1 {
            let mut steps = Vec::new();
            let mut at = i;
            while at != start {
                steps.push(cell(at));
                at = parent[at] as usize;
            }
            steps.reverse();
            return Path::Steps(steps);
        }
        expanded += 1;
        if expanded > bounds.max_nodes {
            return Path::Bound;
        }
        let (x, y) = c;
        let next = [
            (x.checked_sub(1), Some(y)),
            (x.checked_add(1).filter(|&v| v <= x1), Some(y)),
            (Some(x), y.checked_sub(1)),
            (Some(x), y.checked_add(1).filter(|&v| v <= y1)),
        ];
        for (nx, ny) in next {
            let (Some(nx), Some(ny)) = (nx, ny) else {
                continue;
            };
            if nx < x0 || ny < y0 || !passable(nx, ny) {
                continue;
            }
            let j = idx((nx, ny));
            let ng = gc + 1;
            if ng < g[j] {
                g[j] = ng;
                parent[j] = i as u32;
                open.push(Reverse((ng + heur((nx, ny)), ng, j)));
            }
        }
    }
    Path::Unreachable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::Map;

    const WIDE: Bounds = Bounds {
        max_nodes: 100_000,
        radius: 100,
    };

    fn on(map: &Map) -> impl Fn(u16, u16) -> bool + '_ {
        |x, y| !map.blocked(x, y)
    }

    /// Every step is one cell from the last and open; the walk ends next to the goal.
    fn check_walk(map: &Map, from: (u16, u16), goal: (u16, u16), steps: &[(u16, u16)]) {
        let mut at = from;
        for &s in steps {
            assert_eq!(manhattan(at, s), 1, "{at:?} -> {s:?}");
            assert!(!map.blocked(s.0, s.1), "{s:?} is blocked");
            at = s;
        }
        assert_eq!(manhattan(at, goal), 1);
    }

    #[test]
    fn around_a_wall() {
        // A wall at x = 5 from y = 0 to y = 8 on a 12×12 board: the straight line from
        // (2, 4) to (8, 4) is blocked; the way round goes below y = 8.
        let mut map = Map::open(12, 12);
        map.block_rect((5, 0), (5, 8));
        let (from, goal) = ((2, 4), (8, 4));
        let Path::Steps(steps) = find_path(from, goal, 12, WIDE, on(&map)) else {
            panic!("no path around the wall");
        };
        check_walk(&map, from, goal, &steps);
        assert!(steps.iter().any(|&(x, y)| x == 5 && y == 9), "{steps:?}");
        // Shortest: 3 across to x = 5, down 5 to y = 9, 2 across to x = 7, up 5 to y = 4.
        assert_eq!(steps.len(), 3 + 5 + 2 + 5);
        // Open board: straight there.
        let open = Map::open(12, 12);
        let Path::Steps(direct) = find_path(from, goal, 12, WIDE, on(&open)) else {
            panic!()
        };
        assert_eq!(direct.len(), 5);
    }

    #[test]
    fn next_to_the_goal_is_here() {
        let map = Map::open(5, 5);
        assert_eq!(find_path((2, 2), (2, 3), 5, WIDE, on(&map)), Path::Here);
        assert_eq!(find_path((2, 2), (2, 2), 5, WIDE, on(&map)), Path::Here);
    }

    #[test]
    fn no_path_into_a_closed_room() {
        let mut map = Map::open(20, 20);
        // A closed ring of walls around (10, 10).
        for i in 7..=13 {
            map.set(i, 7, true);
            map.set(i, 13, true);
            map.set(7, i, true);
            map.set(13, i, true);
        }
        assert_eq!(
            find_path((1, 1), (10, 10), 20, WIDE, on(&map)),
            Path::Unreachable
        );
        // A door in the ring opens it.
        map.set(10, 7, false);
        let Path::Steps(steps) = find_path((1, 1), (10, 10), 20, WIDE, on(&map)) else {
            panic!("the door is open");
        };
        check_walk(&map, (1, 1), (10, 10), &steps);
    }

    #[test]
    fn the_bounds_stop_the_search() {
        let mut map = Map::open(200, 200);
        map.block_rect((100, 0), (100, 198));
        // The way round is far longer than 50 nodes allow.
        let tight = Bounds {
            max_nodes: 50,
            radius: 199,
        };
        assert_eq!(
            find_path((95, 5), (105, 5), 200, tight, on(&map)),
            Path::Bound
        );
        // A goal beyond the radius is not reached either: nothing outside the window is
        // looked at.
        let near = Bounds {
            max_nodes: 100_000,
            radius: 10,
        };
        assert_eq!(
            find_path((5, 5), (50, 5), 200, near, on(&Map::open(200, 200))),
            Path::Unreachable
        );
        // The chase's bounds, worst case (the goal walled off, the whole window searched),
        // stay well under a millisecond even in a debug build.
        let t = std::time::Instant::now();
        let r = find_path((95, 5), (105, 5), 200, CHASE, on(&map));
        assert_eq!(r, Path::Unreachable);
        assert!(
            t.elapsed() < std::time::Duration::from_millis(50),
            "{:?}",
            t.elapsed()
        );
    }
}
