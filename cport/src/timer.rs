//! Timers: `post_after` completions kept in a hierarchical timing wheel and fired by the
//! poller.
//!
//! Time is counted in 1 ms ticks from `base`; a deadline's tick is rounded down, so waking
//! at the start of the earliest tick set is never late. The wheel has [`LEVELS`] levels of
//! 64 slots: a level-`l` slot spans `64^l` ticks. A timer due at tick `w` sits at the level of the
//! highest 6-bit digit in which `w` differs from `elapsed` (the last tick processed), in the
//! slot of `w`'s digit there; so every occupied slot starts after `elapsed`, and a lower
//! level's slots all start before a higher one's. Reaching a slot's start moves its timers
//! down a level, or into `ready` once their tick has come. `ready` is a small heap ordered by
//! exact deadline and id: it holds only timers whose tick has been reached (at most about a
//! millisecond of them, plus any set in the past), so `fire` never fires early and keeps
//! deadline order.
//!
//! Timers live in `table`, indexed by the low bits of their id: `add` skips ids whose entry
//! is taken, so finding a timer by id needs no hash map. A cancelled timer leaves its wheel
//! slot at once (its slot and place are kept in the entry), so nothing dead piles up in
//! far-future slots; in `ready` it is skipped when popped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::op::{Completion, Op, TimerId};

/// Wheel levels; 6 bits each, 42 bits of 1 ms ticks: 139 years from `base`.
const LEVELS: usize = 7;
/// Ticks past this (and deadlines past it) all count as this tick: they wait in `ready`.
const MAX_TICK: u64 = (1 << (6 * LEVELS)) - 1;
/// `Entry::pos` of a timer in `ready`.
const IN_READY: u32 = u32::MAX;

/// 1 ms ticks from `base` to `t`, rounded down, at most [`MAX_TICK`].
fn ticks(base: Instant, t: Instant) -> u64 {
    let ms = t.saturating_duration_since(base).as_millis();
    ms.min(MAX_TICK as u128) as u64
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    deadline: Instant,
    key: u64,
    user: u64,
    /// Index of the wheel slot holding the timer (`level * 64 + digit`), unless in `ready`.
    slot: u16,
    /// Place in that slot's list, or [`IN_READY`].
    pos: u32,
}

#[derive(Debug)]
pub(crate) struct Timers {
    /// Tick 0 starts here.
    base: Instant,
    /// Every tick up to this one has been processed: wheel timers are due after it.
    elapsed: u64,
    /// `LEVELS * 64` lists of timer ids.
    slots: Vec<Vec<u64>>,
    /// Per level, bit `d` set iff slot `d` of the level is not empty.
    occupied: [u64; LEVELS],
    /// Per slot, the earliest tick put in it since it was last empty (a cancel may leave it
    /// earlier than any timer there): what `next_deadline` waits for, not the slot's start.
    first: Vec<u64>,
    /// (deadline, id) of timers whose tick has been reached, and of some cancelled ones.
    ready: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Live timers at `id & (len - 1)`; the length is a power of two, at least twice `live`.
    table: Vec<Option<Entry>>,
    live: usize,
    next_id: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers::starting_at(Instant::now())
    }
}

impl Timers {
    fn starting_at(base: Instant) -> Self {
        Timers {
            base,
            elapsed: 0,
            slots: vec![Vec::new(); LEVELS * 64],
            occupied: [0; LEVELS],
            first: vec![0; LEVELS * 64],
            ready: BinaryHeap::new(),
            table: Vec::new(),
            live: 0,
            next_id: 0,
        }
    }

    /// Adds a timer; returns its id and whether it is now the earliest, that is earlier than
    /// `next_deadline` was (a poller waiting for that wakes in time for a timer set later).
    pub(crate) fn add(&mut self, deadline: Instant, key: u64, user: u64) -> (TimerId, bool) {
        let earliest = self.next_deadline().is_none_or(|d| deadline < d);
        if (self.live + 1) * 2 > self.table.len() {
            self.grow();
        }
        let mask = self.table.len() as u64 - 1;
        let mut id = self.next_id;
        while self.table[(id & mask) as usize].is_some() {
            id += 1;
        }
        self.next_id = id + 1;
        self.table[(id & mask) as usize] = Some(Entry {
            id,
            deadline,
            key,
            user,
            slot: 0,
            pos: IN_READY,
        });
        self.live += 1;
        let tick = self.tick(deadline);
        if tick <= self.elapsed {
            self.ready.push(Reverse((deadline, id)));
        } else {
            self.place(id, tick);
        }
        (TimerId(id), earliest)
    }

    /// Doubles the table. Live ids differ in their low bits, so they still do in more bits.
    fn grow(&mut self) {
        let len = (self.table.len() * 2).max(64);
        let mut table = vec![None; len];
        for e in self.table.drain(..).flatten() {
            table[(e.id & (len as u64 - 1)) as usize] = Some(e);
        }
        self.table = table;
    }

    /// The live timer with this id.
    fn entry(&mut self, id: u64) -> Option<&mut Entry> {
        let mask = (self.table.len() as u64).wrapping_sub(1);
        let e = self.table.get_mut((id & mask) as usize)?.as_mut()?;
        (e.id == id).then_some(e)
    }

    fn tick(&self, t: Instant) -> u64 {
        ticks(self.base, t)
    }

    /// Puts a timer due at tick `tick` (after `elapsed`) in its wheel slot.
    fn place(&mut self, id: u64, tick: u64) {
        debug_assert!(tick > self.elapsed);
        let level = ((63 - (tick ^ self.elapsed).leading_zeros()) / 6) as usize;
        let digit = (tick >> (6 * level)) & 63;
        let slot = level * 64 + digit as usize;
        let list = &mut self.slots[slot];
        let pos = list.len() as u32;
        list.push(id);
        if pos == 0 || tick < self.first[slot] {
            self.first[slot] = tick;
        }
        self.occupied[level] |= 1 << digit;
        let e = self.entry(id).expect("placed timer is live");
        e.slot = slot as u16;
        e.pos = pos;
    }

    /// The first occupied slot: (level, digit, the tick it starts at).
    fn next_slot(&self) -> Option<(usize, u64, u64)> {
        let level = self.occupied.iter().position(|&o| o != 0)?;
        let digit = self.occupied[level].trailing_zeros() as u64;
        let span = 6 * (level as u32 + 1);
        let start = (self.elapsed >> span << span) + (digit << (6 * level));
        Some((level, digit, start))
    }

    /// Cancels a timer; true if it had not fired yet (it never will).
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        let Some(e) = self.entry(id.0).copied() else {
            return false;
        };
        let mask = self.table.len() as u64 - 1;
        self.table[(id.0 & mask) as usize] = None;
        self.live -= 1;
        if e.pos == IN_READY {
            self.prune();
        } else {
            let list = &mut self.slots[e.slot as usize];
            list.swap_remove(e.pos as usize);
            if let Some(&moved) = list.get(e.pos as usize) {
                self.entry(moved).expect("wheel timer is live").pos = e.pos;
            } else if list.is_empty() {
                let (level, digit) = (e.slot as usize / 64, e.slot % 64);
                self.occupied[level] &= !(1 << digit);
            }
        }
        true
    }

    /// Drops cancelled timers from the top of `ready` so `next_deadline` is exact there.
    fn prune(&mut self) {
        while let Some(&Reverse((_, id))) = self.ready.peek() {
            if self.entry(id).is_some() {
                break;
            }
            self.ready.pop();
        }
    }

    /// When to fire next: never after the earliest live timer's deadline, and less than a
    /// tick before it (unless that timer was cancelled). After `fire(now)` it is later than
    /// `now`.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let wheel = self.next_slot().map(|(level, digit, _)| {
            let first = self.first[level * 64 + digit as usize];
            self.base + Duration::from_millis(first)
        });
        let ready = self.ready.peek().map(|Reverse((d, _))| *d);
        match (wheel, ready) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `deadline` rounded up to the next tick boundary (itself if it is on one): when an
    /// alarm for it goes off, everything due in its tick is due too, so a busy stream of
    /// timers costs at most one alarm per tick instead of one per deadline.
    pub(crate) fn round_up(&self, deadline: Instant) -> Instant {
        let since = deadline.saturating_duration_since(self.base);
        let ms = since.as_millis();
        if since == Duration::from_millis(ms as u64) {
            return deadline;
        }
        self.base + Duration::from_millis(ms as u64 + 1)
    }

    /// Moves every timer due at `now` into `out`, in deadline order (then in the order set).
    pub(crate) fn fire(&mut self, now: Instant, out: &mut Vec<Completion>) {
        let now_tick = self.tick(now);
        if now_tick > self.elapsed {
            let base = self.base;
            while let Some((level, digit, start)) = self.next_slot() {
                if start > now_tick {
                    break;
                }
                // Timers go down a level from here, so never back into this slot.
                self.elapsed = start;
                let slot = level * 64 + digit as usize;
                let mut ids = std::mem::take(&mut self.slots[slot]);
                self.occupied[level] &= !(1 << digit);
                for &id in &ids {
                    let e = self.entry(id).expect("wheel timer is live");
                    let (deadline, tick) = (e.deadline, ticks(base, e.deadline));
                    if tick <= now_tick {
                        e.pos = IN_READY;
                        self.ready.push(Reverse((deadline, id)));
                    } else {
                        self.place(id, tick);
                    }
                }
                ids.clear();
                self.slots[slot] = ids;
            }
            self.elapsed = now_tick;
        }
        while let Some(&Reverse((deadline, id))) = self.ready.peek() {
            if deadline > now {
                break;
            }
            self.ready.pop();
            let mask = (self.table.len() as u64).wrapping_sub(1);
            let Some(e) = self.entry(id).copied() else {
                continue;
            };
            self.table[(id & mask) as usize] = None;
            self.live -= 1;
            out.push(Completion {
                key: e.key,
                user: e.user,
                result: Ok(0),
                op: Op::Timer(TimerId(id)),
            });
        }
        self.prune();
    }

    pub(crate) fn len(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const MS: Duration = Duration::from_millis(1);
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    impl Timers {
        /// Checks the wheel's bookkeeping against the table.
        fn check(&self) {
            let mut in_wheel = 0;
            for (slot, list) in self.slots.iter().enumerate() {
                let (level, digit) = (slot / 64, slot as u64 % 64);
                assert_eq!(
                    self.occupied[level] >> digit & 1 == 1,
                    !list.is_empty(),
                    "occupied bit of slot {slot}"
                );
                for (pos, &id) in list.iter().enumerate() {
                    let mask = self.table.len() as u64 - 1;
                    let e = self.table[(id & mask) as usize].expect("wheel timer is live");
                    assert_eq!((e.id, e.slot as usize, e.pos as usize), (id, slot, pos));
                    let tick = self.tick(e.deadline);
                    assert!(self.first[slot] <= tick, "slot {slot} waits too late");
                    assert!(
                        tick > self.elapsed,
                        "wheel timer due at {tick} <= {}",
                        self.elapsed
                    );
                    let level_now = ((63 - (tick ^ self.elapsed).leading_zeros()) / 6) as usize;
                    assert_eq!((level_now, tick >> (6 * level) & 63), (level, digit));
                    in_wheel += 1;
                }
            }
            let in_ready = self
                .table
                .iter()
                .flatten()
                .filter(|e| e.pos == IN_READY)
                .count();
            assert_eq!(in_wheel + in_ready, self.live);
            assert_eq!(self.table.iter().flatten().count(), self.live);
            assert!(self.ready.len() >= in_ready);
        }
    }

    /// Live timers as a plain list: (deadline, id, key, user).
    #[derive(Default)]
    struct Model(Vec<(Instant, u64, u64, u64)>);

    impl Model {
        fn earliest(&self) -> Option<Instant> {
            self.0.iter().map(|t| t.0).min()
        }

        fn fire(&mut self, now: Instant) -> Vec<(u64, u64, u64)> {
            let mut due: Vec<_> = self.0.iter().copied().filter(|t| t.0 <= now).collect();
            self.0.retain(|t| t.0 > now);
            due.sort_by_key(|t| (t.0, t.1));
            due.into_iter().map(|(_, id, k, u)| (k, u, id)).collect()
        }
    }

    fn fired(out: &[Completion]) -> Vec<(u64, u64, u64)> {
        out.iter()
            .map(|c| match c.op {
                Op::Timer(TimerId(id)) => {
                    assert!(matches!(c.result, Ok(0)));
                    (c.key, c.user, id)
                }
                _ => panic!("not a timer"),
            })
            .collect()
    }

    /// Checks what holds after any operation.
    fn agree(t: &Timers, m: &Model) {
        t.check();
        assert_eq!(t.len(), m.0.len());
        let next = t.next_deadline();
        assert_eq!(next.is_some(), !m.0.is_empty());
        if let (Some(n), Some(e)) = (next, m.earliest()) {
            assert!(n <= e, "next_deadline {n:?} after the earliest timer {e:?}");
        }
    }

    /// Random adds, cancels and fires against the model, over many seeds.
    #[test]
    fn matches_a_sorted_list() {
        for seed in 0..400 {
            let mut rng = StdRng::seed_from_u64(seed);
            // The test's clock starts somewhere inside a tick, or on its edge.
            let start = Instant::now();
            let phase = if seed % 4 == 0 {
                0
            } else {
                rng.random_range(0..1_000_000)
            };
            let mut t = Timers::starting_at(start);
            let mut now = start + Duration::from_nanos(phase);
            let mut m = Model::default();
            let mut ids: Vec<u64> = Vec::new();
            for _ in 0..600 {
                match rng.random_range(0..100) {
                    0..50 => {
                        let deadline = match rng.random_range(0..20) {
                            // A tie with a live timer.
                            0 if !m.0.is_empty() => m.0[rng.random_range(0..m.0.len())].0,
                            // On a tick's edge.
                            1 => {
                                let ms = t.tick(now) + rng.random_range(0..3000);
                                start + Duration::from_millis(ms)
                            }
                            2 => now,
                            3 => now + rng.random_range(Duration::ZERO..100 * YEAR),
                            4 => now + 100 * YEAR,
                            _ => {
                                let ns = rng.random_range(-5_000_000i64..5_000_000_000);
                                if ns < 0 {
                                    now - Duration::from_nanos(ns.unsigned_abs())
                                } else {
                                    now + Duration::from_nanos(ns as u64)
                                }
                            }
                        };
                        let (key, user) = (rng.random(), rng.random());
                        let before = t.next_deadline();
                        let (id, earliest) = t.add(deadline, key, user);
                        assert!(ids.last().is_none_or(|&last| id.0 > last), "ids grow");
                        if before.is_none_or(|b| deadline < b) {
                            assert!(earliest, "an earlier timer not reported earliest");
                        }
                        ids.push(id.0);
                        m.0.push((deadline, id.0, key, user));
                    }
                    50..70 if !ids.is_empty() => {
                        let id = ids[rng.random_range(0..ids.len())];
                        let live = m.0.iter().position(|t| t.1 == id);
                        if let Some(i) = live {
                            m.0.swap_remove(i);
                        }
                        assert_eq!(t.cancel(TimerId(id)), live.is_some(), "cancel {id}");
                    }
                    _ => {
                        now += match rng.random_range(0..200) {
                            0..10 => Duration::ZERO,
                            // Exactly to the next deadline, or just before it.
                            10..30 => match m.earliest() {
                                Some(e) if e > now => {
                                    (e - now).saturating_sub(MS / 2 * rng.random_range(0..2))
                                }
                                _ => MS,
                            },
                            30..33 => {
                                rng.random_range(Duration::ZERO..Duration::from_secs(100_000))
                            }
                            33..35 => rng.random_range(Duration::ZERO..YEAR),
                            35 => rng.random_range(Duration::ZERO..101 * YEAR),
                            _ => rng.random_range(Duration::ZERO..300 * MS),
                        };
                        let mut out = Vec::new();
                        t.fire(now, &mut out);
                        assert_eq!(fired(&out), m.fire(now), "seed {seed}");
                        if let Some(n) = t.next_deadline() {
                            assert!(n > now, "nothing due, yet next_deadline {n:?} <= {now:?}");
                        }
                    }
                }
                agree(&t, &m);
            }
            // Everything left fires, in order.
            now += 200 * YEAR;
            let mut out = Vec::new();
            t.fire(now, &mut out);
            assert_eq!(fired(&out), m.fire(now));
            assert_eq!((t.len(), t.next_deadline()), (0, None));
        }
    }

    /// The game-server load: every timer set again a second after it fires. Cancelling and
    /// setting again far ahead leaves nothing behind.
    #[test]
    fn rearmed_timers_stay_in_order_and_bounded() {
        let start = Instant::now();
        let mut t = Timers::starting_at(start);
        let n = 5000u64;
        for i in 0..n {
            t.add(start + Duration::from_micros(1_000_000 + i * 200), i, 0);
        }
        let mut now = start;
        let mut out = Vec::new();
        let mut total = 0;
        for _ in 0..5000 {
            now += Duration::from_micros(1370);
            out.clear();
            t.fire(now, &mut out);
            let mut last = None;
            for c in &out {
                let Op::Timer(id) = c.op else { unreachable!() };
                assert!(last < Some(id));
                last = Some(id);
                t.add(now + Duration::from_secs(1), c.key, 0);
            }
            total += out.len();
            let next = t.next_deadline().expect("timers left");
            let earliest = t.table.iter().flatten().map(|e| e.deadline).min().unwrap();
            assert!(now < next && next <= earliest && earliest - next < MS);
        }
        assert!(total > 4 * n as usize, "{total}");
        assert_eq!(t.len(), n as usize);
        t.check();
        // Set far ahead, cancelled and set again: the wheel keeps only the live ones.
        let mut ids: Vec<TimerId> = (0..1000)
            .map(|i| t.add(now + 3600 * YEAR / 100, i, 0).0)
            .collect();
        for _ in 0..100 {
            for id in &mut ids {
                assert!(t.cancel(*id));
                *id = t.add(now + 3600 * YEAR / 100, 0, 0).0;
            }
        }
        t.check();
        let held: usize = t.slots.iter().map(Vec::len).sum::<usize>() + t.ready.len();
        assert_eq!(held, n as usize + ids.len());
        assert!(t.table.len() <= 4 * (n as usize + ids.len()));
    }

    /// A lone timer, however far, is waited for to within a tick of its deadline.
    #[test]
    fn next_deadline_is_within_a_tick() {
        let start = Instant::now();
        let mut t = Timers::starting_at(start);
        let mut now = start + Duration::from_micros(300);
        for ahead in [
            MS / 3,
            70 * MS,
            5 * 1000 * MS,
            3 * 3600 * 1000 * MS,
            50 * YEAR,
        ] {
            let deadline = now + ahead + Duration::from_nanos(123_456);
            let (id, earliest) = t.add(deadline, 7, 8);
            assert!(earliest);
            let mut out = Vec::new();
            // Woken early at most once, then exactly: nothing fires before the deadline.
            let mut wakes = 0;
            while out.is_empty() {
                let next = t.next_deadline().unwrap();
                assert!(next > now && next <= deadline && deadline - next < MS);
                now = next;
                t.fire(now, &mut out);
                wakes += 1;
            }
            assert!(
                wakes <= 2 && now == deadline,
                "{wakes} wakes, fired at {now:?}"
            );
            assert_eq!(fired(&out), [(7, 8, id.0)]);
        }
    }

    /// The alarm's rounding: never before the deadline, less than a tick after it, and
    /// every deadline of one tick rounds to the same instant (one alarm per tick).
    #[test]
    fn round_up_goes_to_the_end_of_the_tick_never_earlier() {
        let w = Timers::default();
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..10_000 {
            let d = w.base + Duration::from_micros(rng.random_range(0..5_000_000));
            let r = w.round_up(d);
            assert!(r >= d, "{r:?} before {d:?}");
            assert!(r - d < MS, "{:?} late", r - d);
            assert_eq!(r.duration_since(w.base).subsec_nanos() % 1_000_000, 0);
            assert_eq!(w.round_up(r), r, "a tick boundary stays put");
            assert_eq!(w.tick(d) + u64::from(r != d), w.tick(r));
        }
    }
}
