//! Shared by the game server tests: starting a game server, waiting for a condition, and the
//! blocking course client of `cport_mmo_client` that keeps the picture its packets paint
//! (every networked test runs on both backends: `cport_testkit::per_backend!`).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use cport_mmo::{Config, MmoServer};
use cport_server::cport::Backend;

pub use cport_mmo_client::blocking::Client;
pub use cport_testkit::TIMEOUT;

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A small game for tests: the given backend, two workers, loopback, no NPCs.
pub fn config(backend: Backend) -> Config {
    Config {
        backend: Some(backend),
        threads: 2,
        npcs: 0,
        ..Config::default()
    }
}

/// Starts a game server.
pub fn start(cfg: Config) -> MmoServer {
    init_logging();
    cport_mmo::start(cfg).expect("start the game server")
}

/// Waits until `f()` holds, polling every millisecond; fails after [`TIMEOUT`].
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}
