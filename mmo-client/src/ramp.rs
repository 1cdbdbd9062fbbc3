//! The course stress tester's two rules, apart from the sockets so that they can be tested
//! with synthetic delays: the 1-ms-step delay tracker and the ramp.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The course's global delay figure: each new sample moves it **1 ms** toward the sample
/// (`sample > tracked` → `tracked + 1`, `sample < tracked` → `tracked − 1`). A slow tracker,
/// not an average: it takes at least `d` samples to climb to a delay of `d` ms, and a
/// single outlier moves it by one.
#[derive(Debug, Default)]
pub struct DelayTracker(AtomicU64);

impl DelayTracker {
    /// A tracker at 0 ms.
    pub fn new() -> DelayTracker {
        DelayTracker::default()
    }

    /// Moves the figure one step toward `delay_ms`.
    pub fn sample(&self, delay_ms: u64) {
        let _ = self
            .0
            .fetch_update(Relaxed, Relaxed, |t| match delay_ms.cmp(&t) {
                std::cmp::Ordering::Greater => Some(t + 1),
                std::cmp::Ordering::Less => Some(t - 1),
                std::cmp::Ordering::Equal => None,
            });
    }

    /// The figure now, in ms.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// What the ramp says to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Connect one more client.
    Add,
    /// Disconnect one client (the oldest).
    Shed,
    /// Nothing this time.
    Wait,
}

/// The course's ramp, asked at every tick with the time, the tracked delay and the number of
/// clients:
///
/// * tracked delay below `limit` (100 ms): add a client every `interval` (50 ms);
/// * from `limit` up to `high` (150 ms): add one every `10 × interval`;
/// * above `high`: record the current count as the maximum (once per excursion: the first
///   tick above `high` after an add), and shed one client every `shed_interval` (500 ms);
/// * once a maximum is recorded, add only while the count is below 95% of it
///   (`max − max/20`).
///
/// Never more than `cap` clients.
#[derive(Debug, Clone)]
pub struct Ramp {
    /// Time between adds under the limit.
    pub interval: Duration,
    /// The delay limit (ms).
    pub limit_ms: u64,
    /// The shedding threshold (ms): 1.5 × the limit.
    pub high_ms: u64,
    /// Time between sheds above `high_ms`.
    pub shed_interval: Duration,
    /// Most clients.
    pub cap: usize,
    last: Option<Duration>,
    max: Option<usize>,
    increasing: bool,
}

impl Ramp {
    /// The course's ramp: `high` = 1.5 × `limit_ms`, a shed every 500 ms.
    pub fn new(interval: Duration, limit_ms: u64, cap: usize) -> Ramp {
        Ramp {
            interval,
            limit_ms,
            high_ms: limit_ms + limit_ms / 2,
            shed_interval: Duration::from_millis(500),
            cap,
            last: None,
            max: None,
            increasing: true,
        }
    }

    /// The maximum recorded at the last excursion above `high_ms`, if any.
    pub fn max_recorded(&self) -> Option<usize> {
        self.max
    }

    /// The decision at time `now` (since the start), with the tracked delay and the number
    /// of clients now. An `Add` or a `Shed` returned is taken to be carried out.
    pub fn step(&mut self, now: Duration, tracked_ms: u64, clients: usize) -> Action {
        let since = self.last.map(|l| now.saturating_sub(l));
        let due = |pace: Duration| since.is_none_or(|s| s >= pace);
        if tracked_ms > self.high_ms {
            if self.increasing {
                self.max = Some(clients);
                self.increasing = false;
            }
            if clients == 0 || !due(self.shed_interval) {
                return Action::Wait;
            }
            self.last = Some(now);
            return Action::Shed;
        }
        if clients >= self.cap {
            return Action::Wait;
        }
        if let Some(m) = self.max {
            if clients >= m - m / 20 {
                return Action::Wait;
            }
        }
        let pace = if tracked_ms >= self.limit_ms {
            self.interval * 10
        } else {
            self.interval
        };
        if !due(pace) {
            return Action::Wait;
        }
        self.increasing = true;
        self.last = Some(now);
        Action::Add
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_moves_one_ms_per_sample() {
        let t = DelayTracker::new();
        t.sample(1000);
        assert_eq!(t.get(), 1);
        for _ in 0..9 {
            t.sample(1000);
        }
        assert_eq!(t.get(), 10);
        t.sample(0);
        assert_eq!(t.get(), 9);
        t.sample(9);
        assert_eq!(t.get(), 9);
        for _ in 0..100 {
            t.sample(3);
        }
        assert_eq!(t.get(), 3);
    }

    /// Runs the ramp for `ms` milliseconds at a fixed delay, ticking every millisecond and
    /// carrying out what it says; returns the clients at the end and the adds and sheds.
    fn drive(r: &mut Ramp, t: &mut u64, ms: u64, delay: u64, clients: &mut usize) -> (u32, u32) {
        let (mut adds, mut sheds) = (0, 0);
        for _ in 0..ms {
            *t += 1;
            match r.step(Duration::from_millis(*t), delay, *clients) {
                Action::Add => {
                    *clients += 1;
                    adds += 1;
                }
                Action::Shed => {
                    *clients -= 1;
                    sheds += 1;
                }
                Action::Wait => {}
            }
        }
        (adds, sheds)
    }

    #[test]
    fn ramp_adds_slows_sheds_and_regrows_to_95_percent() {
        let mut r = Ramp::new(Duration::from_millis(50), 100, 100_000);
        let (mut t, mut n) = (0u64, 0usize);
        // Under the limit: one add every 50 ms (the first at once).
        let (adds, sheds) = drive(&mut r, &mut t, 10_000, 20, &mut n);
        assert_eq!((adds, sheds), (200, 0));
        assert_eq!(n, 200);
        // From 100 to 150 ms: ten times slower.
        let (adds, sheds) = drive(&mut r, &mut t, 10_000, 120, &mut n);
        assert_eq!((adds, sheds), (20, 0));
        let (adds, _) = drive(&mut r, &mut t, 10_000, 150, &mut n);
        assert_eq!(adds, 20);
        assert_eq!(n, 240);
        assert_eq!(r.max_recorded(), None);
        // Above 150 ms: the maximum is recorded and one client goes every 500 ms.
        let (adds, sheds) = drive(&mut r, &mut t, 5_000, 151, &mut n);
        assert_eq!(adds, 0);
        assert_eq!(sheds, 10);
        assert_eq!(r.max_recorded(), Some(240));
        assert_eq!(n, 230);
        // Back under the limit: regrowth stops at 95% of the maximum (240 - 12 = 228)...
        drive(&mut r, &mut t, 10_000, 20, &mut n);
        assert_eq!(n, 230);
        let (_, sheds) = drive(&mut r, &mut t, 2_000, 200, &mut n);
        assert_eq!(sheds, 4);
        assert_eq!(n, 226);
        // ...the maximum stays what it was at the start of the excursion...
        assert_eq!(r.max_recorded(), Some(240));
        let (adds, _) = drive(&mut r, &mut t, 10_000, 20, &mut n);
        assert_eq!(adds, 2);
        assert_eq!(n, 228);
        // ...and a new excursion after regrowth records the count then.
        drive(&mut r, &mut t, 1, 500, &mut n);
        assert_eq!(r.max_recorded(), Some(228));
    }

    #[test]
    fn ramp_respects_the_cap() {
        let mut r = Ramp::new(Duration::from_millis(1), 100, 5);
        let (mut t, mut n) = (0u64, 0usize);
        drive(&mut r, &mut t, 100, 0, &mut n);
        assert_eq!(n, 5);
    }
}
