//! A handler that blocks inside `Port::blocking` does not stall a server built with the
//! default `Config`: the default starts more worker threads than the port's concurrency
//! value, so a thread that blocks lends its slot to a spare one and the other sessions go on
//! being served. Once per backend.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::connect;
use cport_server::cport::Backend;
use cport_server::{Config, Handler, RawStream, Server, Session};
use cport_testkit::per_backend;

per_backend!(
    a_ping_is_answered_while_handlers_block_inside_blocking_with_the_default_config,
    with_threads_equal_to_concurrency_a_blocking_call_without_a_spare_is_counted,
);

/// How long each blocking handler blocks.
const BLOCK: Duration = Duration::from_secs(2);

/// The bound on the third client's answer: well under `BLOCK`, so that a server whose every
/// worker is blocked fails it; well over a loaded machine's scheduling delay.
const BOUND: Duration = Duration::from_secs(1);

/// `B` blocks the handler for `BLOCK` inside `Port::blocking` (then answers `b`); `P` is a
/// ping, answered `p` at once.
struct Blocker {
    /// Handlers inside `blocking` now.
    blocked: Arc<AtomicUsize>,
}

impl Handler for Blocker {
    fn on_packet(&self, session: &Session, packet: &[u8]) {
        for &byte in packet {
            match byte {
                b'B' => {
                    session.server().port().blocking(|| {
                        self.blocked.fetch_add(1, SeqCst);
                        std::thread::sleep(BLOCK);
                        self.blocked.fetch_sub(1, SeqCst);
                    });
                    let _ = session.send(&b"b"[..]);
                }
                b'P' => {
                    let _ = session.send(&b"p"[..]);
                }
                _ => {}
            }
        }
    }
}

/// Starts `n` clients whose handlers block, and waits until all of them are inside
/// `blocking`.
fn block_n(addr: std::net::SocketAddr, n: usize, blocked: &AtomicUsize) -> Vec<TcpStream> {
    let mut blockers: Vec<_> = (0..n).map(|_| connect(addr)).collect();
    for c in &mut blockers {
        c.write_all(b"B").unwrap();
    }
    let t0 = Instant::now();
    while blocked.load(SeqCst) < n {
        assert!(
            t0.elapsed() < BLOCK / 2,
            "only {} of {n} handlers entered `blocking` in {:?}",
            blocked.load(SeqCst),
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    blockers
}

fn a_ping_is_answered_while_handlers_block_inside_blocking_with_the_default_config(b: Backend) {
    let blocked = Arc::new(AtomicUsize::new(0));
    // The default configuration: only the address (already the default) and, so that the
    // test runs on each backend, the backend. Threads and concurrency are the defaults.
    let cfg = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        backend: Some(b),
        ..Config::default()
    };
    let server = Server::start(
        cfg,
        RawStream,
        Blocker {
            blocked: blocked.clone(),
        },
    )
    .expect("start");
    let addr = server.local_addr();
    // As many blocked handlers as the port has slots: before the default changed (threads ==
    // concurrency) that is every worker, on any number of cores (two on a 2-core machine).
    let n = server.handle().port().concurrency();
    let mut blockers = block_n(addr, n, &blocked);

    let mut pinger = connect(addr);
    let sent = Instant::now();
    pinger.write_all(b"P").unwrap();
    let mut answer = [0u8; 1];
    pinger.read_exact(&mut answer).unwrap();
    let waited = sent.elapsed();
    assert_eq!(&answer, b"p");
    let still_blocked = blocked.load(SeqCst);
    assert!(
        waited < BOUND,
        "the ping waited {waited:?} while {n} handlers blocked inside `blocking` \
         (threads default, concurrency {n})"
    );
    assert_eq!(
        still_blocked, n,
        "the ping was answered only after a blocking handler came back ({waited:?})"
    );
    // The spare threads took over: no `blocking` call found its slot with nobody to take it.
    assert_eq!(server.handle().port().stats().blocking_unlent, 0);

    for c in &mut blockers {
        c.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"b");
    }
    server.shutdown(Duration::from_secs(1));
}

/// The old default spelled out: as many workers as slots. Both workers block inside
/// `blocking` with nobody to take their slots; the port counts it.
fn with_threads_equal_to_concurrency_a_blocking_call_without_a_spare_is_counted(b: Backend) {
    let blocked = Arc::new(AtomicUsize::new(0));
    let cfg = Config {
        backend: Some(b),
        threads: 2,
        concurrency: 2,
        ..Config::default()
    };
    let server = Server::start(
        cfg,
        RawStream,
        Blocker {
            blocked: blocked.clone(),
        },
    )
    .expect("start");
    let mut blockers = block_n(server.local_addr(), 2, &blocked);
    // The second one at least: both workers block then, and no other thread serves the port.
    let unlent = server.handle().port().stats().blocking_unlent;
    assert!(
        (1..=2).contains(&unlent),
        "blocking_unlent = {unlent} with two workers both blocked"
    );
    let mut answer = [0u8; 1];
    for c in &mut blockers {
        c.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"b");
    }
    server.shutdown(Duration::from_secs(1));
}
