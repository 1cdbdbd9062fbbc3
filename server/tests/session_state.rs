//! Per-session state (`Session::set_state`, `with_state`, `take_state`), on both backends:
//! each session sees only its own value, `on_close` still sees it, and it is dropped once the
//! session has closed even while the program keeps a handle to the session.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};

use common::{config, connect, read_packet, wait_until, write, TIMEOUT};
use cport_server::cport::Backend;
use cport_server::{CloseReason, Handler, LengthPrefixed, Server, Session, SessionId, SizeField};
use cport_testkit::per_backend;

per_backend!(
    each_session_sees_only_its_own_state,
    state_is_dropped_after_on_close_even_with_handles_kept,
);

/// Closes as the handler saw them: the session and its count in `on_close`.
type Closes = mpsc::Receiver<(SessionId, Option<u8>)>;

/// A session's count of packets; counts its drops.
struct Count {
    n: u8,
    drops: Arc<AtomicUsize>,
}

impl Drop for Count {
    fn drop(&mut self) {
        self.drops.fetch_add(1, SeqCst);
    }
}

/// Answers every packet with the session's own packet count so far; reports each close with
/// the count `on_close` saw, and keeps every session's handle.
struct Counter {
    codec: LengthPrefixed,
    drops: Arc<AtomicUsize>,
    closes: Mutex<mpsc::Sender<(SessionId, Option<u8>)>>,
    kept: Mutex<Vec<Session>>,
}

impl Handler for Counter {
    fn on_connect(&self, session: &Session) {
        session.set_state(Count {
            n: 0,
            drops: self.drops.clone(),
        });
        self.kept.lock().unwrap().push(session.clone());
    }
    fn on_packet(&self, session: &Session, _: &[u8]) {
        let n = session
            .with_state(|c: &mut Count| {
                c.n += 1;
                c.n
            })
            .expect("set in on_connect");
        // The wrong type finds nothing, and leaves the value alone.
        assert!(session.with_state(|_: &mut String| ()).is_none());
        assert!(session.take_state::<String>().is_none());
        let _ = session.send(self.codec.encode(1, &[n]));
    }
    fn on_close(&self, session: &Session, _: &CloseReason) {
        let n = session.with_state(|c: &mut Count| c.n);
        let _ = self.closes.lock().unwrap().send((session.id(), n));
    }
}

fn start(backend: Backend) -> (Server, Arc<AtomicUsize>, Closes) {
    let codec = LengthPrefixed::new(SizeField::U8);
    let drops = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let handler = Counter {
        codec,
        drops: drops.clone(),
        closes: Mutex::new(tx),
        kept: Mutex::new(Vec::new()),
    };
    let server = Server::start(config(backend), codec, handler).unwrap();
    (server, drops, rx)
}

/// Sends one packet and returns the count the server answered with.
fn ping(c: &mut std::net::TcpStream) -> u8 {
    write(c, &LengthPrefixed::new(SizeField::U8).encode(1, b""));
    read_packet(c, SizeField::U8)[2]
}

fn each_session_sees_only_its_own_state(backend: Backend) {
    let (server, _drops, _closes) = start(backend);
    let mut a = connect(server.local_addr());
    let mut b = connect(server.local_addr());
    assert_eq!([ping(&mut a), ping(&mut a), ping(&mut a)], [1, 2, 3]);
    assert_eq!(ping(&mut b), 1, "b's count is its own");
    assert_eq!(ping(&mut a), 4);
    assert_eq!(ping(&mut b), 2);
    drop((a, b));
    let _ = server.shutdown(TIMEOUT);
}

fn state_is_dropped_after_on_close_even_with_handles_kept(backend: Backend) {
    let (server, drops, closes) = start(backend);
    let handle = server.handle();
    let mut a = connect(server.local_addr());
    let mut b = connect(server.local_addr());
    assert_eq!(ping(&mut a), 1);
    assert_eq!((ping(&mut b), ping(&mut b)), (1, 2));
    let a_addr = a.local_addr().unwrap();
    let a_id = handle
        .sessions()
        .iter()
        .find(|s| s.peer_addr() == Some(a_addr))
        .map(Session::id)
        .expect("a's session");

    drop(a);
    let (id, seen) = closes.recv_timeout(TIMEOUT).expect("a closed");
    assert_eq!((id, seen), (a_id, Some(1)), "on_close sees the value");
    // The handler still holds a's handle: the value goes all the same.
    wait_until("a's value is dropped", || drops.load(SeqCst) == 1);
    assert_eq!(ping(&mut b), 3, "b's value is untouched");

    // A handle kept past the close holds no value: one set now is dropped at once.
    let kept = handle.sessions();
    assert_eq!(kept.len(), 1);
    drop(b);
    let (_, seen) = closes.recv_timeout(TIMEOUT).expect("b closed");
    assert_eq!(seen, Some(3));
    wait_until("b's value is dropped", || drops.load(SeqCst) == 2);
    kept[0].set_state(Count {
        n: 0,
        drops: drops.clone(),
    });
    assert_eq!(
        drops.load(SeqCst),
        3,
        "set after the close: dropped at once"
    );
    assert!(kept[0].with_state(|c: &mut Count| c.n).is_none());
    let _ = server.shutdown(TIMEOUT);
}
