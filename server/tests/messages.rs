//! Posted completions that own a value (`ServerHandle::post_message` → `Handler::on_message`),
//! on both backends: the EV_DB pattern of the course, a blocking thread's result handed back
//! to the port's workers.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use common::{config, TIMEOUT};
use cport_server::cport::{Backend, Message};
use cport_server::{Handler, PostError, RawStream, Server, ServerHandle, Session, MAX_USER_KEY};
use cport_testkit::per_backend;

per_backend!(
    every_message_reaches_on_message_once_with_its_key_and_value,
    a_message_with_a_key_above_the_limit_is_refused_and_dropped,
    messages_not_delivered_at_shutdown_are_dropped_once,
);

/// A value that counts its drops.
struct Tracked {
    n: u64,
    drops: Arc<AtomicUsize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, SeqCst);
    }
}

/// Reports every message it is given as (key, n); `Gate` messages wait on the barrier twice.
struct Sink {
    got: mpsc::Sender<(u64, u64)>,
    gate: Arc<Barrier>,
}

struct Gate;

impl Handler for Sink {
    fn on_packet(&self, _: &Session, _: &[u8]) {}
    fn on_message(&self, _: &ServerHandle, key: u64, m: Message) {
        let m = match m.downcast::<Tracked>() {
            Ok(t) => {
                let _ = self.got.send((key, t.n));
                return;
            }
            Err(m) => m,
        };
        if m.downcast::<Gate>().is_ok() {
            self.gate.wait();
            self.gate.wait();
        } else {
            let _ = self.got.send((key, u64::MAX));
        }
    }
    fn on_posted(&self, _: &ServerHandle, _: u64, _: u64) {
        panic!("a message reached on_posted");
    }
}

fn sink(b: Backend, threads: usize) -> (Server, mpsc::Receiver<(u64, u64)>, Arc<Barrier>) {
    let (tx, rx) = mpsc::channel();
    let gate = Arc::new(Barrier::new(2));
    let cfg = cport_server::Config {
        threads,
        ..config(b)
    };
    let h = Sink {
        got: tx,
        gate: gate.clone(),
    };
    (Server::start(cfg, RawStream, h).unwrap(), rx, gate)
}

/// 4 threads post 250 values each; every value arrives once, with its key, and is dropped
/// once after the handler took it.
fn every_message_reaches_on_message_once_with_its_key_and_value(b: Backend) {
    let (server, rx, _) = sink(b, 2);
    let drops = Arc::new(AtomicUsize::new(0));
    let posters: Vec<_> = (0..4u64)
        .map(|t| {
            let (h, drops) = (server.handle(), drops.clone());
            std::thread::spawn(move || {
                for i in 0..250u64 {
                    let n = t * 1000 + i;
                    let key = if i == 0 { MAX_USER_KEY } else { n };
                    h.post_message(
                        key,
                        Tracked {
                            n,
                            drops: drops.clone(),
                        },
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for p in posters {
        p.join().unwrap();
    }
    let mut got: Vec<(u64, u64)> = (0..1000)
        .map(|i| {
            rx.recv_timeout(TIMEOUT)
                .unwrap_or_else(|_| panic!("message {i} of 1000 missing"))
        })
        .collect();
    assert!(
        rx.recv_timeout(Duration::from_millis(50)).is_err(),
        "a message arrived twice"
    );
    got.sort_unstable_by_key(|&(_, n)| n);
    let want: Vec<(u64, u64)> = (0..4u64)
        .flat_map(|t| {
            (0..250u64).map(move |i| {
                let n = t * 1000 + i;
                (if i == 0 { MAX_USER_KEY } else { n }, n)
            })
        })
        .collect();
    assert_eq!(got, want);
    server.shutdown(TIMEOUT);
    assert_eq!(drops.load(SeqCst), 1000, "each value dropped exactly once");
}

/// A key above `MAX_USER_KEY` is an error (not a panic), the value is dropped at once, and
/// nothing is delivered; a value of another type reaches `on_message` too.
fn a_message_with_a_key_above_the_limit_is_refused_and_dropped(b: Backend) {
    let (server, rx, _) = sink(b, 2);
    let h = server.handle();
    let drops = Arc::new(AtomicUsize::new(0));
    let t = Tracked {
        n: 1,
        drops: drops.clone(),
    };
    assert_eq!(
        h.post_message(MAX_USER_KEY + 1, t),
        Err(PostError::KeyTooLarge(MAX_USER_KEY + 1))
    );
    assert_eq!(drops.load(SeqCst), 1);
    h.post_message(3, "not a Tracked").unwrap();
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), (3, u64::MAX));
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    server.shutdown(TIMEOUT);
    // After shutdown: refused as Closed, and the value is dropped.
    let t = Tracked {
        n: 2,
        drops: drops.clone(),
    };
    assert_eq!(h.post_message(0, t), Err(PostError::Closed));
    assert_eq!(drops.load(SeqCst), 2);
}

/// One worker is held in `on_message` while 100 values are queued behind it and shutdown
/// begins: every value is either delivered once or dropped with the queue, never both, never
/// leaked.
fn messages_not_delivered_at_shutdown_are_dropped_once(b: Backend) {
    let (server, rx, gate) = sink(b, 1);
    let h = server.handle();
    h.post_message(0, Gate).unwrap();
    gate.wait(); // the only worker is inside on_message now
    let drops = Arc::new(AtomicUsize::new(0));
    for n in 0..100 {
        h.post_message(
            1,
            Tracked {
                n,
                drops: drops.clone(),
            },
        )
        .unwrap();
    }
    let stopper = std::thread::spawn(move || server.shutdown(Duration::from_millis(100)));
    std::thread::sleep(Duration::from_millis(50));
    gate.wait(); // let the worker go
    stopper.join().unwrap();
    let delivered: Vec<u64> = rx.try_iter().map(|(_, n)| n).collect();
    let mut seen = delivered.clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), delivered.len(), "a message was delivered twice");
    assert_eq!(drops.load(SeqCst), 100, "every value dropped exactly once");
    assert_eq!(
        h.post_message(1, Gate),
        Err(PostError::Closed),
        "a post after shutdown was taken"
    );
}
