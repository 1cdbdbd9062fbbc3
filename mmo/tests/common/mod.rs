//! Shared by the game server tests: starting a game server (`cport_testkit::game`), waiting for
//! a condition, and the blocking course client of `cport_mmo_client` that keeps the picture its
//! packets paint
//! (every networked test runs on both backends: `cport_testkit::per_backend!`).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use cport_mmo_proto::Direction;

pub use cport_mmo_client::blocking::Client;
// Each test file uses some of these.
#[allow(unused_imports)]
pub use cport_testkit::game::{config, start};
pub use cport_testkit::TIMEOUT;

/// Waits until `f()` holds, polling every millisecond; fails after [`TIMEOUT`].
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The direction of one step from `from` toward `to`, x first; `None` when there already.
pub fn toward(from: (u16, u16), to: (u16, u16)) -> Option<Direction> {
    if from.0 < to.0 {
        Some(Direction::Right)
    } else if from.0 > to.0 {
        Some(Direction::Left)
    } else if from.1 < to.1 {
        Some(Direction::Down)
    } else if from.1 > to.1 {
        Some(Direction::Up)
    } else {
        None
    }
}
