//! The game server started in process, for the tests of the game (`cport-mmo`) and of its
//! load client (`cport-mmo-client`); the blocking course client they drive it with is
//! `cport_mmo_client::blocking::Client`. Behind the `game` feature.

use cport::Backend;
use cport_mmo::{Config, MmoServer};

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

/// Starts a game server (logging as [`init_logging`] says).
pub fn start(cfg: Config) -> MmoServer {
    init_logging();
    cport_mmo::start(cfg).expect("start the game server")
}
