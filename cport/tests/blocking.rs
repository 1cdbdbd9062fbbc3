//! `Port::blocking` and the threads it needs: a pool of `0` threads has a spare thread per
//! slot, and a `blocking` call that finds no thread to take its slot is counted and said
//! once. Every test runs on both backends.

mod common;

use std::io::Write;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{next, port};
use cport::{Backend, Pool};
use cport_testkit::per_backend;
use parking_lot::Mutex;

per_backend!(
    a_pool_of_0_threads_starts_twice_the_concurrency,
    blocking_with_no_thread_waiting_is_counted_and_said_once,
    blocking_outside_a_handler_pass_is_not_counted,
    blocking_with_a_thread_waiting_lends_its_slot_and_is_not_counted,
);

/// What a `tracing` subscriber writes, kept for the test to read.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Runs `f` on this thread with a subscriber that writes here.
    fn capture<R>(&self, f: impl FnOnce() -> R) -> R {
        let me = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || me.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f)
    }

    /// Lines at level WARN that contain `needle`.
    fn warnings_with(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock())
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(needle))
            .count()
    }
}

fn a_pool_of_0_threads_starts_twice_the_concurrency(b: Backend) {
    for concurrency in [1, 3] {
        let port = port(b, concurrency);
        let pool = Pool::spawn(&port, 0, |_, _| {}).unwrap();
        assert_eq!(pool.threads(), 2 * concurrency);
        pool.shutdown();
    }
}

/// The only thread of a port blocks inside a handler pass: nobody can take its slot. Each
/// such call is counted; only the first is logged.
fn blocking_with_no_thread_waiting_is_counted_and_said_once(b: Backend) {
    let port = port(b, 1);
    let logs = Logs::default();
    logs.capture(|| {
        for i in 0..3 {
            port.post(0, 0, i).unwrap();
            assert_eq!(next(&port).user, i);
            assert_eq!(port.blocking(|| i * 10), i * 10);
        }
    });
    //T1
    assert_eq!(
        logs.warnings_with("Port::blocking"),
        1,
        "one warning per port"
    );

    // The warning is per port: a second port says it again.
    let other = common::port(b, 1);
    logs.capture(|| {
        other.post(0, 0, 0).unwrap();
        next(&other);
        other.blocking(|| ());
    });
    //T2
    assert_eq!(logs.warnings_with("Port::blocking"), 2);
}

/// Outside a handler pass there is no slot to lend: `blocking` just runs `f`.
fn blocking_outside_a_handler_pass_is_not_counted(b: Backend) {
    let port = port(b, 1);
    assert_eq!(port.blocking(|| 7), 7);
    // A pass ended by `get` (a timeout here) holds no slot either.
    port.post(0, 0, 0).unwrap();
    next(&port);
    assert!(port.get(Some(Duration::ZERO)).unwrap().is_none());
    port.blocking(|| ());
    //T3
}

/// Concurrency 1, a second thread waiting in `get`: the slot goes to it, which handles a
/// completion while the first thread blocks, and nothing is counted.
fn blocking_with_a_thread_waiting_lends_its_slot_and_is_not_counted(b: Backend) {
    let port = port(b, 1);
    port.post(0, 0, 1).unwrap();
    assert_eq!(next(&port).user, 1);
    let (tx, rx) = mpsc::channel();
    let spare = {
        let port = port.clone();
        std::thread::spawn(move || {
            let c = port.get(Some(Duration::from_secs(10))).unwrap();
            tx.send(c.map(|c| c.user)).unwrap();
        })
    };
    let give_up = Instant::now() + Duration::from_secs(10);
    while port.stats().waiting == 0 {
        assert!(Instant::now() < give_up, "the spare thread never waited");
        std::thread::sleep(Duration::from_millis(1));
    }
    let got = port.blocking(|| {
        port.post(0, 0, 2).unwrap();
        rx.recv_timeout(Duration::from_secs(10))
    });
    assert_eq!(got, Ok(Some(2)), "the spare thread took the lent slot");
    spare.join().unwrap();
    //T3
}
