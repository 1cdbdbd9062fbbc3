//! Repeating timers (`ServerHandle::post_every`, `cancel_repeat`), on both backends: ticks
//! come with their key and value, never before their time, until cancelled; a cancel stops
//! them for good and says whether the timer was running; keys above the limit are refused.

mod common;

use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use common::{config, TIMEOUT};
use cport_server::cport::Backend;
use cport_server::{Handler, PostError, RawStream, Server, ServerHandle, Session, MAX_USER_KEY};
use cport_testkit::per_backend;

per_backend!(
    ticks_come_every_interval_never_early_with_key_and_value,
    no_tick_starts_after_cancel_returns,
    two_repeating_timers_tick_independently,
    a_key_above_the_limit_is_refused,
);

/// Reports every tick: (key, value, when).
struct Ticks(Mutex<mpsc::Sender<(u64, u64, Instant)>>);

impl Handler for Ticks {
    fn on_packet(&self, _: &Session, _: &[u8]) {}
    fn on_timer(&self, _: &ServerHandle, key: u64, value: u64) {
        let _ = self.0.lock().unwrap().send((key, value, Instant::now()));
    }
}

fn start(backend: Backend) -> (Server, mpsc::Receiver<(u64, u64, Instant)>) {
    let (tx, rx) = mpsc::channel();
    let server = Server::start(config(backend), RawStream, Ticks(Mutex::new(tx))).unwrap();
    (server, rx)
}

fn ticks_come_every_interval_never_early_with_key_and_value(backend: Backend) {
    let (server, ticks) = start(backend);
    let every = Duration::from_millis(20);
    let t0 = Instant::now();
    let id = server.handle().post_every(every, 7, 99).unwrap();
    for n in 1..=5u32 {
        let (key, value, at) = ticks.recv_timeout(TIMEOUT).expect("a tick");
        assert_eq!((key, value), (7, 99));
        assert!(
            at >= t0 + every * n,
            "tick {n} came {:?} after the start, before {:?}",
            at - t0,
            every * n
        );
    }
    assert!(server.handle().cancel_repeat(id));
    let _ = server.shutdown(TIMEOUT);
}

fn no_tick_starts_after_cancel_returns(backend: Backend) {
    let (server, ticks) = start(backend);
    let handle = server.handle();
    let id = handle.post_every(Duration::from_millis(5), 1, 0).unwrap();
    for _ in 0..3 {
        ticks.recv_timeout(TIMEOUT).expect("a tick");
    }
    assert!(handle.cancel_repeat(id), "it was running");
    // A tick already past its lookup when the cancel came may still report; no other does,
    // over 30 intervals.
    std::thread::sleep(Duration::from_millis(150));
    let late = ticks.try_iter().count();
    assert!(late <= 1, "{late} ticks after the cancel");
    assert!(!handle.cancel_repeat(id), "cancelled before");
    let _ = server.shutdown(TIMEOUT);
}

fn two_repeating_timers_tick_independently(backend: Backend) {
    let (server, ticks) = start(backend);
    let handle = server.handle();
    let fast = handle.post_every(Duration::from_millis(5), 1, 10).unwrap();
    let slow = handle.post_every(Duration::from_millis(40), 2, 20).unwrap();
    assert_ne!(fast, slow);
    let until = Instant::now() + TIMEOUT;
    let (mut n_fast, mut n_slow) = (0, 0);
    while n_slow < 2 {
        assert!(Instant::now() < until, "the slow timer did not tick twice");
        match ticks.recv_timeout(TIMEOUT).expect("a tick") {
            (1, 10, _) => n_fast += 1,
            (2, 20, _) => n_slow += 1,
            other => panic!("unexpected tick {other:?}"),
        }
    }
    assert!(n_fast > n_slow, "fast {n_fast}, slow {n_slow}");
    // Cancelling one leaves the other running.
    assert!(handle.cancel_repeat(fast));
    let _ = ticks.try_iter().count();
    // At most one fast tick that was already under way, then slow ones only.
    let mut stragglers = 0;
    for _ in 0..3 {
        match ticks.recv_timeout(TIMEOUT).expect("a slow tick") {
            (2, 20, _) => {}
            (1, 10, _) => stragglers += 1,
            other => panic!("unexpected tick {other:?}"),
        }
    }
    assert!(stragglers <= 1, "{stragglers} fast ticks after the cancel");
    assert!(handle.cancel_repeat(slow));
    let _ = server.shutdown(TIMEOUT);
}

fn a_key_above_the_limit_is_refused(backend: Backend) {
    let (server, _ticks) = start(backend);
    assert_eq!(
        server
            .handle()
            .post_every(Duration::from_millis(5), MAX_USER_KEY + 1, 0),
        Err(PostError::KeyTooLarge(MAX_USER_KEY + 1))
    );
    let _ = server.shutdown(TIMEOUT);
}
