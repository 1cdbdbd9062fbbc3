//! A `Pool` handler that calls `get` on its own port would take a completion the pool never
//! sees: debug builds refuse it (a panic, before anything is taken). `get` on another port
//! stays fine. Every test runs on both backends.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use common::port;
use cport::{Backend, Op, Pool};
use cport_testkit::per_backend;
use parking_lot::Mutex;

per_backend!(
    #[cfg_attr(
        not(debug_assertions),
        ignore = "release builds warn once and let the get through"
    )]
    get_inside_a_pool_handler_of_the_same_port_panics_and_takes_nothing,
    get_on_another_port_inside_a_pool_handler_works,
);

#[derive(Debug, PartialEq)]
enum Seen {
    /// The handler's own `get`/`get_many`: panicked with the port's message, or not.
    Refused { get: bool, get_many: bool },
    /// The pool delivered this post to the handler.
    Handled(u64),
}

fn panicked_with_message(r: std::thread::Result<impl Sized>) -> bool {
    match r {
        Ok(_) => false,
        Err(payload) => {
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            text.contains("inside a handler of a Pool of the same port")
        }
    }
}

/// One worker; posts 1 and 2 are queued. The handler of 1 calls `get` and `get_many`: both
/// are refused, post 2 is still delivered to the pool, and the worker's slot is intact
/// (with concurrency 1 a leaked slot would stop the pool).
fn get_inside_a_pool_handler_of_the_same_port_panics_and_takes_nothing(b: Backend) {
    let port = port(b, 1);
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let pool = Pool::spawn(&port, 1, move |port, c| {
        let seen = if c.user == 1 {
            let get = catch_unwind(AssertUnwindSafe(|| port.get(Some(Duration::ZERO))));
            let get_many = catch_unwind(AssertUnwindSafe(|| {
                port.get_many(&mut Vec::new(), 8, Some(Duration::ZERO))
            }));
            Seen::Refused {
                get: panicked_with_message(get),
                get_many: panicked_with_message(get_many),
            }
        } else {
            Seen::Handled(c.user)
        };
        tx.lock().send(seen).unwrap();
    })
    .unwrap();
    port.post(0, 0, 1).unwrap();
    port.post(0, 0, 2).unwrap();
    let wait = Duration::from_secs(10);
    assert_eq!(
        rx.recv_timeout(wait),
        Ok(Seen::Refused {
            get: true,
            get_many: true
        })
    );
    assert_eq!(rx.recv_timeout(wait), Ok(Seen::Handled(2)));
    // And the pool goes on.
    port.post(0, 0, 3).unwrap();
    assert_eq!(rx.recv_timeout(wait), Ok(Seen::Handled(3)));
    pool.shutdown();
}

/// A handler may wait on another port: only its own port's completions belong to the pool.
fn get_on_another_port_inside_a_pool_handler_works(b: Backend) {
    let port = port(b, 1);
    let other = common::port(b, 1);
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let o = other.clone();
    let pool = Pool::spawn(&port, 1, move |_, c| {
        if let Op::Post = c.op {
            let got = o
                .get(Some(Duration::from_secs(10)))
                .map(|c| c.map(|c| c.user));
            tx.lock().send(got).unwrap();
        }
    })
    .unwrap();
    other.post(0, 0, 42).unwrap();
    port.post(0, 0, 1).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Ok(Some(42))));
    pool.shutdown();
}
