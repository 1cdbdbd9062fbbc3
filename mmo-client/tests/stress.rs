//! The stress tester (`cport_mmo_client`) against the game server in process: a short,
//! bounded run completes, holds its clients under the limit and reports sanely; and a run
//! against nothing counts the refused connects and gives up early.

use cport_testkit::game::{config, start};
use cport_testkit::per_backend;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use cport_mmo_client::{self as stress, Settings};
use cport_server::cport::Backend;

fn short_run(backend: Backend) {
    let server = start(cport_mmo::Config {
        npcs: 2000,
        ..config(backend)
    });
    let max_clients = 200;
    let settings = Settings {
        max_clients,
        ramp_interval: Duration::from_millis(5),
        threads: 2,
        backend: Some(backend),
        ..Settings::new(server.local_addr(), Duration::from_secs(5))
    };
    let stop = AtomicBool::new(false);
    let mut seconds = 0;
    let (report, map) = stress::run(&settings, &stop, |_, _| seconds += 1).expect("stress run");
    assert!(report.max_clients_under_limit > 0, "{report:?}");
    assert!(report.max_clients_under_limit <= max_clients, "{report:?}");
    assert_eq!(report.peak_clients, max_clients, "the ramp reaches the cap");
    assert!(!report.series.is_empty());
    assert_eq!(report.series.len(), seconds);
    assert_eq!(
        report.errors,
        stress::Errors::default(),
        "{:?}",
        report.errors
    );
    assert!(report.delay_samples > 0, "the dummies measure their moves");
    assert!(report.packets_in > 0 && report.packets_out > 0);
    assert!(report.stopped_early.is_none());
    assert!(
        report.elapsed_s < 7.0,
        "bounded by the duration: {}",
        report.elapsed_s
    );
    // The map: every dummy on the board, where the server has it.
    assert_eq!(map.players.len(), report.final_clients);
    assert!(map
        .players
        .iter()
        .all(|&(x, y)| (0..2000).contains(&x) && (0..2000).contains(&y)));
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["max_clients_under_limit"].is_u64());
    assert!(json["series"][0]["tracked_delay_ms"].is_u64());
    assert!(json["series"][0]["p99_ms"].is_u64());
    let stats = server.stats();
    assert_eq!(
        stats.rejected, 0,
        "the server rejected nothing the dummies sent"
    );
    assert!(stats.moves > 0);
    server.shutdown(Duration::from_secs(2));
}

fn nothing_listening_is_counted_and_ends_the_run(backend: Backend) {
    // A port nobody listens on: bind, read the address, close.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let settings = Settings {
        max_clients: 10,
        ramp_interval: Duration::from_millis(10),
        backend: Some(backend),
        ..Settings::new(addr, Duration::from_secs(30))
    };
    let (report, _) = stress::run(&settings, &AtomicBool::new(false), |_, _| {}).unwrap();
    assert_eq!(report.max_clients_under_limit, 0);
    assert!(report.errors.connect_refused > 0, "{:?}", report.errors);
    // Refused for 3 s running with nobody in game: the run gives up early and says why.
    assert!(report.stopped_early.is_some());
    assert!(report.elapsed_s < 6.0, "{}", report.elapsed_s);
}

per_backend!(short_run, nothing_listening_is_counted_and_ends_the_run);
