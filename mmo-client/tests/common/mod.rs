//! Starting the game server the stress tests run against (in process). The game's own tests
//! have the same two helpers in `mmo/tests/common`; the blocking course client both use is
//! `cport_mmo_client::blocking`.

use cport_mmo::{Config, MmoServer};
use cport_server::cport::Backend;

/// A small game for tests: the given backend, two workers, loopback, no NPCs.
pub fn config(backend: Backend) -> Config {
    Config {
        backend: Some(backend),
        threads: 2,
        npcs: 0,
        ..Config::default()
    }
}

/// Starts a game server (logging to the test's output when `RUST_LOG` is set).
pub fn start(cfg: Config) -> MmoServer {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    cport_mmo::start(cfg).expect("start the game server")
}
