//! How the board is cut into zones: a grid of rectangles, which zone owns a cell, how far a
//! cell is from a zone (for ghosts and hand-off), and which zone a name logs in through.

use cport_mmo_proto::splitmix64;

/// One zone's rectangle: cells `x0..x1` × `y0..y1` (half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// First column.
    pub x0: u16,
    /// First row.
    pub y0: u16,
    /// One past the last column.
    pub x1: u16,
    /// One past the last row.
    pub y1: u16,
}

impl Rect {
    /// Whether `(x, y)` is inside.
    pub fn contains(&self, x: u16, y: u16) -> bool {
        x >= self.x0 && x < self.x1 && y >= self.y0 && y < self.y1
    }

    /// Chebyshev distance from `(x, y)` to the nearest cell of the rectangle (0 inside): the
    /// view rule's distance, so an object at distance `d` is seen from inside when `d ≤ R`.
    pub fn distance(&self, x: u16, y: u16) -> u16 {
        let dx = if x < self.x0 {
            self.x0 - x
        } else if x >= self.x1 {
            x - (self.x1 - 1)
        } else {
            0
        };
        let dy = if y < self.y0 {
            self.y0 - y
        } else if y >= self.y1 {
            y - (self.y1 - 1)
        } else {
            0
        };
        dx.max(dy)
    }
}

/// The board cut into `zones` rectangles: `cols × rows = zones`, as square as the count
/// allows (1 → 1×1, 2 → 2×1, 4 → 2×2, 6 → 3×2, 9 → 3×3; a prime count is a row of strips).
/// Every process of a cluster computes the same layout from `(size, zones)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Board width and height.
    pub size: u16,
    /// Zones across.
    pub cols: u16,
    /// Zones down.
    pub rows: u16,
}

/// Most zones in a cluster (a zone set is a `u64` bit mask).
pub const MAX_ZONES: usize = 64;

impl Layout {
    /// The layout of `zones` zones on a `size`-wide board. `None` if `zones` is 0, more than
    /// [`MAX_ZONES`], or more than the board has columns.
    pub fn new(size: u16, zones: usize) -> Option<Layout> {
        if zones == 0 || zones > MAX_ZONES || zones > usize::from(size) {
            return None;
        }
        let mut rows = 1;
        for r in 1..=zones {
            if r * r > zones {
                break;
            }
            if zones % r == 0 {
                rows = r;
            }
        }
        Some(Layout {
            size,
            cols: (zones / rows) as u16,
            rows: rows as u16,
        })
    }

    /// How many zones.
    pub fn zones(&self) -> usize {
        usize::from(self.cols) * usize::from(self.rows)
    }

    fn cut(size: u16, parts: u16, i: u16) -> u16 {
        (u32::from(size) * u32::from(i) / u32::from(parts)) as u16
    }

    /// Zone `z`'s rectangle (zones are numbered row by row).
    pub fn rect(&self, z: usize) -> Rect {
        let (cx, cy) = (
            (z % usize::from(self.cols)) as u16,
            (z / usize::from(self.cols)) as u16,
        );
        Rect {
            x0: Self::cut(self.size, self.cols, cx),
            x1: Self::cut(self.size, self.cols, cx + 1),
            y0: Self::cut(self.size, self.rows, cy),
            y1: Self::cut(self.size, self.rows, cy + 1),
        }
    }

    /// The zone that owns cell `(x, y)` (a cell off the board belongs to the nearest zone).
    pub fn zone_of(&self, x: u16, y: u16) -> usize {
        let col = |v: u16, parts: u16| {
            let mut i =
                (u32::from(v.min(self.size - 1)) * u32::from(parts) / u32::from(self.size)) as u16;
            // Integer cuts: step to the part whose half-open range holds `v`.
            while i + 1 < parts && v >= Self::cut(self.size, parts, i + 1) {
                i += 1;
            }
            while i > 0 && v < Self::cut(self.size, parts, i) {
                i -= 1;
            }
            i
        };
        usize::from(col(y, self.rows)) * usize::from(self.cols) + usize::from(col(x, self.cols))
    }

    /// The zone a login of `name` goes through first: it holds the name's "logged in" mark
    /// for the whole cluster (so a second login of the name through any gateway is refused)
    /// and loads its row.
    pub fn home_of(&self, name: &str) -> usize {
        let mut h = 0x5157_0F0Fu64;
        for &b in name.as_bytes() {
            h = splitmix64(h ^ u64::from(b));
        }
        (h % self.zones() as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_tile_the_board_exactly() {
        for (size, zones) in [
            (2000u16, 1usize),
            (2000, 2),
            (2000, 4),
            (2000, 6),
            (101, 9),
            (7, 7),
            (50, 5),
        ] {
            let l = Layout::new(size, zones).unwrap();
            assert_eq!(l.zones(), zones);
            for x in 0..size {
                for y in (0..size).step_by(if size > 200 { 97 } else { 1 }) {
                    let owners: Vec<usize> =
                        (0..zones).filter(|&z| l.rect(z).contains(x, y)).collect();
                    assert_eq!(owners, vec![l.zone_of(x, y)], "{size}/{zones} at ({x},{y})");
                    assert_eq!(l.rect(l.zone_of(x, y)).distance(x, y), 0);
                }
            }
        }
        assert_eq!(
            Layout::new(2000, 4).unwrap().rect(3),
            Rect {
                x0: 1000,
                y0: 1000,
                x1: 2000,
                y1: 2000
            }
        );
        assert!(Layout::new(2000, 0).is_none() && Layout::new(2000, 65).is_none());
    }

    #[test]
    fn distance_is_the_view_rule() {
        let r = Rect {
            x0: 10,
            y0: 10,
            x1: 20,
            y1: 20,
        };
        assert_eq!(r.distance(15, 15), 0);
        assert_eq!(r.distance(9, 15), 1);
        assert_eq!(r.distance(20, 15), 1);
        assert_eq!(r.distance(22, 5), 5);
        assert_eq!(r.distance(0, 0), 10);
    }

    #[test]
    fn home_is_stable_and_spread() {
        let l = Layout::new(2000, 4).unwrap();
        let mut count = [0; 4];
        for i in 0..4000 {
            let name = format!("dummy{i}");
            assert_eq!(l.home_of(&name), l.home_of(&name));
            count[l.home_of(&name)] += 1;
        }
        assert!(count.iter().all(|&c| c > 800), "{count:?}");
    }
}
