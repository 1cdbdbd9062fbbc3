//! Obstacles: a [`Map`] of blocked cells (one bit per cell, so the course's 2000×2000 board
//! takes 500 KB), loaded from a file with `--map FILE` or made by [`Map::generate`]
//! (`cport map gen`). Without a map the board is open, as it has always been.
//!
//! # The file format
//!
//! No public map format of the course is known, so the game reads a simple text one. Two
//! forms, told apart by the first line:
//!
//! - **Dense**: a header `cport-map <width> <height>`, then one line per row (`y` = 0 first),
//!   each exactly `width` characters, `.` for an open cell and `#` for a blocked one.
//! - **Sparse**: a header `cport-map-rects <width> <height>`, then one blocked area per line:
//!   `x y` (one cell) or `x0 y0 x1 y1` (the rectangle between the two corners, both
//!   included).
//!
//! In both, blank lines and lines starting with `;` are comments. A malformed line is an
//! error that names the file and the line. The game takes a map only if its width and height
//! both equal the board's (`--world-size`).

use std::fmt;
use std::io;
use std::path::Path;

use cport_mmo_proto::splitmix64;

/// The dense form's first word.
pub const DENSE_HEADER: &str = "cport-map";
/// The sparse form's first word.
pub const RECTS_HEADER: &str = "cport-map-rects";

/// Which cells of a board are blocked: a bitset, row after row.
#[derive(Clone, PartialEq, Eq)]
pub struct Map {
    width: u16,
    height: u16,
    bits: Box<[u64]>,
}

impl fmt::Debug for Map {
    // The bits themselves would print half a megabyte.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Map")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("blocked", &self.blocked_count())
            .finish()
    }
}

impl Map {
    /// A `width` × `height` map with every cell open.
    pub fn open(width: u16, height: u16) -> Map {
        let cells = usize::from(width) * usize::from(height);
        Map {
            width,
            height,
            bits: vec![0; cells.div_ceil(64)].into_boxed_slice(),
        }
    }

    /// Width in cells.
    pub fn width(&self) -> u16 {
        self.width
    }

    /// Height in cells.
    pub fn height(&self) -> u16 {
        self.height
    }

    fn index(&self, x: u16, y: u16) -> usize {
        usize::from(y) * usize::from(self.width) + usize::from(x)
    }

    /// Whether cell `(x, y)` is blocked; a cell off the map counts as blocked.
    pub fn blocked(&self, x: u16, y: u16) -> bool {
        if x >= self.width || y >= self.height {
            return true;
        }
        let i = self.index(x, y);
        self.bits[i / 64] >> (i % 64) & 1 == 1
    }

    /// Blocks (or opens) cell `(x, y)`; a cell off the map is ignored.
    pub fn set(&mut self, x: u16, y: u16, blocked: bool) {
        if x >= self.width || y >= self.height {
            return;
        }
        let i = self.index(x, y);
        if blocked {
            self.bits[i / 64] |= 1 << (i % 64);
        } else {
            self.bits[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Blocks every cell of the rectangle between `(x0, y0)` and `(x1, y1)`, both included
    /// (clipped to the map).
    pub fn block_rect(&mut self, (x0, y0): (u16, u16), (x1, y1): (u16, u16)) {
        let (xa, xb) = (x0.min(x1), x0.max(x1).min(self.width.saturating_sub(1)));
        let (ya, yb) = (y0.min(y1), y0.max(y1).min(self.height.saturating_sub(1)));
        for y in ya..=yb {
            for x in xa..=xb {
                self.set(x, y, true);
            }
        }
    }

    /// How many cells are blocked.
    pub fn blocked_count(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The first open cell at or after `(x, y)` in row order, wrapping around at the end;
    /// `None` when every cell is blocked.
    pub fn next_open(&self, x: u16, y: u16) -> Option<(u16, u16)> {
        let cells = usize::from(self.width) * usize::from(self.height);
        if cells == 0 {
            return None;
        }
        let start = self.index(x.min(self.width - 1), y.min(self.height - 1));
        (0..cells).map(|k| (start + k) % cells).find_map(|i| {
            let (cx, cy) = (
                (i % usize::from(self.width)) as u16,
                (i / usize::from(self.width)) as u16,
            );
            (!self.blocked(cx, cy)).then_some((cx, cy))
        })
    }

    /// An open cell drawn with `draw` (which gives 64 random bits a call): up to 64 draws,
    /// then the next open cell after the last one drawn. Deterministic for a deterministic
    /// `draw`. `None` only when every cell is blocked.
    pub fn open_cell(&self, mut draw: impl FnMut() -> u64) -> Option<(u16, u16)> {
        let (w, h) = (u64::from(self.width.max(1)), u64::from(self.height.max(1)));
        let mut cell = (0, 0);
        for _ in 0..64 {
            let r = draw();
            cell = ((r % w) as u16, ((r >> 32) % h) as u16);
            if !self.blocked(cell.0, cell.1) {
                return Some(cell);
            }
        }
        self.next_open(cell.0, cell.1)
    }

    /// Reads a map in either form (see the module's docs); `source` names the text in errors
    /// (a file name).
    pub fn parse(text: &str, source: &str) -> io::Result<Map> {
        let bad = |line: usize, why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{source}:{line}: {why}"),
            )
        };
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
            .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with(';'));
        let Some((hl, header)) = lines.next() else {
            return Err(bad(
                1,
                format!("empty map: expected `{DENSE_HEADER} <width> <height>`"),
            ));
        };
        let words: Vec<&str> = header.split_whitespace().collect();
        let dims = |w: &str, h: &str| -> Option<(u16, u16)> {
            let (w, h) = (w.parse::<u16>().ok()?, h.parse::<u16>().ok()?);
            (w > 0 && h > 0).then_some((w, h))
        };
        let (dense, width, height) = match words.as_slice() {
            [kind, w, h] if *kind == DENSE_HEADER || *kind == RECTS_HEADER => {
                let Some((w, h)) = dims(w, h) else {
                    return Err(bad(hl, format!("bad size `{w} {h}`: two numbers 1..=65535")));
                };
                (*kind == DENSE_HEADER, w, h)
            }
            _ => {
                return Err(bad(
                    hl,
                    format!(
                        "expected `{DENSE_HEADER} <width> <height>` or `{RECTS_HEADER} <width> <height>`, got `{header}`"
                    ),
                ))
            }
        };
        let mut map = Map::open(width, height);
        if dense {
            let mut y: u16 = 0;
            for (n, line) in lines {
                if y == height {
                    return Err(bad(
                        n,
                        format!("more than the {height} rows the header says"),
                    ));
                }
                let row = line.as_bytes();
                if row.len() != usize::from(width) {
                    return Err(bad(
                        n,
                        format!("row {y} has {} cells, the header says {width}", row.len()),
                    ));
                }
                for (x, &c) in row.iter().enumerate() {
                    match c {
                        b'.' => {}
                        b'#' => map.set(x as u16, y, true),
                        _ => {
                            return Err(bad(
                                n,
                                format!(
                                    "column {}: `{}` is neither `.` (open) nor `#` (blocked)",
                                    x + 1,
                                    c as char
                                ),
                            ))
                        }
                    }
                }
                y += 1;
            }
            if y != height {
                return Err(bad(
                    text.lines().count().max(1),
                    format!("{y} rows, the header says {height}"),
                ));
            }
        } else {
            for (n, line) in lines {
                let nums: Result<Vec<u16>, _> =
                    line.split_whitespace().map(str::parse::<u16>).collect();
                let inside = |x: u16, y: u16| x < width && y < height;
                match nums.as_deref() {
                    Ok(&[x, y]) if inside(x, y) => map.set(x, y, true),
                    Ok(&[x0, y0, x1, y1]) if inside(x0, y0) && inside(x1, y1) => {
                        map.block_rect((x0, y0), (x1, y1))
                    }
                    Ok(&[_, _]) | Ok(&[_, _, _, _]) => {
                        return Err(bad(n, format!("`{line}` is off the {width}x{height} map")))
                    }
                    _ => {
                        return Err(bad(
                            n,
                            format!("expected `x y` or `x0 y0 x1 y1`, got `{line}`"),
                        ))
                    }
                }
            }
        }
        Ok(map)
    }

    /// Reads a map file (errors name the file and, for its content, the line).
    pub fn load(path: &Path) -> io::Result<Map> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| io::Error::new(e.kind(), format!("map {}: {e}", path.display())))?;
        Map::parse(&text, &path.display().to_string())
    }

    /// The map in the dense form ([`Map::parse`] reads it back).
    pub fn to_text(&self) -> String {
        let mut s =
            String::with_capacity((usize::from(self.width) + 1) * usize::from(self.height) + 32);
        s.push_str(&format!("{DENSE_HEADER} {} {}\n", self.width, self.height));
        for y in 0..self.height {
            for x in 0..self.width {
                s.push(if self.blocked(x, y) { '#' } else { '.' });
            }
            s.push('\n');
        }
        s
    }

    /// A `size` × `size` map of wall segments and rooms from `seed`, with about `density`
    /// (clamped to 0..=0.4) of its cells blocked. Rooms are outlines with a door in each
    /// side, and walls are straight segments, so the open cells stay connected in practice
    /// and at least 60% of the board is open for spawns, logins and teleports (which only
    /// ever land on open cells). The same arguments give the same map.
    pub fn generate(size: u16, seed: u64, density: f64) -> Map {
        let mut map = Map::open(size, size);
        let cells = usize::from(size) * usize::from(size);
        let want = (cells as f64 * density.clamp(0.0, 0.4)) as usize;
        if size < 4 || want == 0 {
            return map;
        }
        let mut state = seed ^ 0x6D61_705F_6765_6E00;
        let mut draw = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            splitmix64(state)
        };
        let longest = u64::from((size / 8).clamp(3, 40));
        let mut blocked = 0;
        // Bounded: each round blocks at most a few dozen cells, most rounds some.
        for _ in 0..cells {
            if blocked >= want {
                break;
            }
            let r = draw();
            let (x, y) = (
                (r % u64::from(size)) as u16,
                ((r >> 16) % u64::from(size)) as u16,
            );
            let len = (3 + (r >> 32) % longest) as u16;
            // Cells newly blocked (or opened again, for a door) by this round.
            let mut put = |map: &mut Map, x: u16, y: u16, b: bool| {
                if map.blocked(x, y) != b {
                    map.set(x, y, b);
                    if b {
                        blocked += 1;
                    } else {
                        blocked -= 1;
                    }
                }
            };
            if (r >> 48) % 4 == 0 {
                // A room: an outline with a door in the middle of each side.
                let (x1, y1) = (
                    x.saturating_add(len).min(size - 1),
                    y.saturating_add(len).min(size - 1),
                );
                if x1 < x + 3 || y1 < y + 3 {
                    continue;
                }
                for cx in x..=x1 {
                    put(&mut map, cx, y, true);
                    put(&mut map, cx, y1, true);
                }
                for cy in y..=y1 {
                    put(&mut map, x, cy, true);
                    put(&mut map, x1, cy, true);
                }
                let (mx, my) = (x + (x1 - x) / 2, y + (y1 - y) / 2);
                for (dx, dy) in [(mx, y), (mx, y1), (x, my), (x1, my)] {
                    put(&mut map, dx, dy, false);
                }
            } else {
                let horizontal = (r >> 48) % 2 == 0;
                for k in 0..len {
                    let (cx, cy) = if horizontal {
                        (x.saturating_add(k), y)
                    } else {
                        (x, y.saturating_add(k))
                    };
                    if cx < size && cy < size {
                        put(&mut map, cx, cy, true);
                    }
                }
            }
        }
        debug_assert_eq!(blocked, map.blocked_count());
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_round_trip_and_lookups() {
        let text = "cport-map 4 3\n.#..\n....\n; a comment\n###.\n";
        let m = Map::parse(text, "t.map").unwrap();
        assert_eq!((m.width(), m.height(), m.blocked_count()), (4, 3, 4));
        assert!(m.blocked(1, 0) && !m.blocked(0, 0) && m.blocked(2, 2) && !m.blocked(3, 2));
        assert!(m.blocked(4, 0) && m.blocked(0, 3), "off the map is blocked");
        assert_eq!(Map::parse(&m.to_text(), "again").unwrap(), m);
        assert_eq!(m.next_open(1, 0), Some((2, 0)));
        assert_eq!(m.next_open(0, 2), Some((3, 2)));
    }

    #[test]
    fn sparse_form() {
        let m = Map::parse("cport-map-rects 5 5\n0 0\n1 2 3 2\n\n4 4 4 3\n", "r").unwrap();
        let blocked: Vec<(u16, u16)> = (0..5)
            .flat_map(|y| (0..5).map(move |x| (x, y)))
            .filter(|&(x, y)| m.blocked(x, y))
            .collect();
        assert_eq!(blocked, [(0, 0), (1, 2), (2, 2), (3, 2), (4, 3), (4, 4)]);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        for (text, want) in [
            ("", "f.map:1: empty map"),
            ("cport-map 3\n", "f.map:1: expected"),
            ("cport-map 0 2\n", "f.map:1: bad size"),
            ("cport-map 3 2\n...\n..\n", "f.map:3: row 1 has 2 cells"),
            ("cport-map 3 2\n...\n.x.\n", "f.map:3: column 2: `x`"),
            ("cport-map 3 1\n...\n...\n", "f.map:3: more than the 1 rows"),
            (
                "cport-map 3 3\n...\n...\n",
                "f.map:3: 2 rows, the header says 3",
            ),
            (
                "cport-map-rects 3 3\n1 1\n1 two\n",
                "f.map:3: expected `x y`",
            ),
            (
                "cport-map-rects 3 3\n0 0 3 1\n",
                "f.map:2: `0 0 3 1` is off",
            ),
        ] {
            let e = Map::parse(text, "f.map").unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn generated_maps_are_deterministic_and_mostly_open() {
        let a = Map::generate(200, 9, 0.15);
        assert_eq!(a, Map::generate(200, 9, 0.15));
        assert_ne!(a, Map::generate(200, 10, 0.15));
        let blocked = a.blocked_count() as f64 / 40_000.0;
        assert!((0.14..0.2).contains(&blocked), "{blocked}");
        let greedy = Map::generate(100, 1, 0.9);
        assert!(
            greedy.blocked_count() <= 4_000 + 100,
            "density is capped at 0.4"
        );
        assert_eq!(Map::generate(100, 1, 0.0).blocked_count(), 0);
        let mut n = 0u64;
        let (x, y) = a
            .open_cell(|| {
                n += 1;
                splitmix64(n)
            })
            .unwrap();
        assert!(!a.blocked(x, y));
    }

    #[test]
    fn a_full_map_has_no_open_cell() {
        let mut m = Map::open(3, 3);
        m.block_rect((0, 0), (2, 2));
        assert_eq!(m.open_cell(|| 5), None);
        m.set(1, 2, false);
        assert_eq!(m.open_cell(|| 0), Some((1, 2)));
    }
}
