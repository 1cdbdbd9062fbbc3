//! Sessions: ordered sends from many threads, broadcast, generational ids and slot reuse,
//! handler panics, and the handler's posted events and timers. Every test runs on both
//! backends.

mod common;

use cport_testkit::per_backend;

use std::io::{BufReader, Read};
use std::net::TcpStream;
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use common::{config, connect, probe, read_packet, write, TIMEOUT};
use cport_server::cport::Backend;
use cport_server::{
    Bytes, CloseReason, Codec, Config, FrameError, Handler, LengthPrefixed, PostError, RawStream,
    Server, ServerHandle, Session, SizeField, MAX_USER_KEY,
};

per_backend!(
    sends_from_8_threads_on_one_session_keep_each_threads_order,
    broadcast_reaches_each_of_50_sessions_exactly_once,
    closed_session_id_never_reaches_the_session_that_reused_its_slot,
    posted_events_reach_on_posted_with_their_key_and_value,
    timers_reach_on_timer_with_their_key_and_value,
    cancelled_timer_never_reaches_on_timer,
    slot_is_reused_only_after_on_close_returned,
    panic_in_on_connect_closes_that_session_and_frees_its_slot,
    panic_in_on_close_still_frees_the_slot,
    on_start_hands_the_handler_its_server_handle,
    broadcast_except_skips_the_sender,
    a_codecs_own_invalid_error_closes_the_session_with_its_reason,
    packets_sent_in_one_handler_pass_leave_in_one_send,
    a_graceful_close_in_the_pass_that_sent_still_delivers_everything_first,
);

const THREADS: usize = 8;
const PER_THREAD: u32 = 2_000;

/// The body of packet `seq` of thread `tid`: the sequence number, then a filler whose
/// length and bytes depend on both, so a torn or mixed packet cannot pass for a good one.
fn numbered(codec: &LengthPrefixed, tid: u8, seq: u32) -> Bytes {
    let filler = (seq as usize * 7 + tid as usize) % 40;
    let mut body = seq.to_le_bytes().to_vec();
    body.extend((0..filler).map(|i| tid.wrapping_mul(31) ^ (seq as u8) ^ i as u8));
    codec.encode(tid, &body)
}

/// Eight threads call `send` on one session at once, each with numbered packets: the client
/// receives every packet whole, and each thread's packets in the order it sent them.
fn sends_from_8_threads_on_one_session_keep_each_threads_order(b: Backend) {
    let codec = LengthPrefixed::new(SizeField::U8);
    let (handler, events) = probe(|_, _| {});
    let cfg = Config {
        max_send_queue: 64 << 20, // this test is about order, not about slow consumers
        ..config(b)
    };
    let server = Server::start(cfg, codec, handler).unwrap();
    let client = connect(server.local_addr());
    let session = events.connected();

    let start = Arc::new(Barrier::new(THREADS));
    let senders: Vec<_> = (0..THREADS as u8)
        .map(|tid| {
            let (session, start) = (session.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                (0..PER_THREAD).all(|seq| session.send(numbered(&codec, tid, seq)))
            })
        })
        .collect();

    let mut reader = BufReader::new(client);
    let mut next = [0u32; THREADS];
    for _ in 0..THREADS as u32 * PER_THREAD {
        let p = read_packet(&mut reader, SizeField::U8);
        let tid = p[1];
        assert!((tid as usize) < THREADS, "packet of unknown thread {tid}");
        let seq = u32::from_le_bytes(p[2..6].try_into().unwrap());
        assert_eq!(
            seq, next[tid as usize],
            "thread {tid}: packet {seq} arrived when {} was due",
            next[tid as usize]
        );
        assert_eq!(
            p,
            &numbered(&codec, tid, seq)[..],
            "thread {tid} packet {seq} torn"
        );
        next[tid as usize] += 1;
    }
    for s in senders {
        assert!(s.join().unwrap(), "a send was refused");
    }
    assert_eq!(next, [PER_THREAD; THREADS]);
    drop(reader);
    server.shutdown(TIMEOUT);
}

/// One shared `Bytes` broadcast to 50 sessions: each client receives it exactly once (the
/// next thing each receives is a second broadcast).
fn broadcast_reaches_each_of_50_sessions_exactly_once(b: Backend) {
    let codec = LengthPrefixed::new(SizeField::U8);
    let (handler, _events) = probe(|_, _| {});
    let server = Server::start(config(b), codec, handler).unwrap();
    let handle = server.handle();
    let mut clients: Vec<_> = (0..50).map(|_| connect(server.local_addr())).collect();
    common::wait_until("50 sessions are open", || handle.sessions().len() == 50);

    let news = codec.encode(1, b"one packet for everybody");
    let end = codec.encode(2, b"end");
    assert_eq!(handle.broadcast(&handle.sessions(), &news), 50);
    assert_eq!(handle.broadcast(&handle.sessions(), &end), 50);
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(read_packet(c, SizeField::U8), &news[..], "client {i}");
        assert_eq!(read_packet(c, SizeField::U8), &end[..], "client {i}");
    }
    drop(clients);
    server.shutdown(TIMEOUT);
}

/// After a session closes, a new session takes its slot with another generation: the old
/// id no longer finds a session, and sending on the old handle is refused and reaches
/// nobody.
fn closed_session_id_never_reaches_the_session_that_reused_its_slot(b: Backend) {
    let (handler, events) = probe(|_, _| {});
    let cfg = Config {
        max_sessions: 1, // the only slot is reused
        ..config(b)
    };
    let server = Server::start(cfg, RawStream, handler).unwrap();
    let handle = server.handle();

    let first = connect(server.local_addr());
    let old = events.connected();
    drop(first);
    let (closed, _) = events.closed();
    assert_eq!(closed.id(), old.id());
    common::wait_closed(&handle, 1);

    let mut second = connect(server.local_addr());
    let new = events.connected();
    assert_eq!(new.id().slot(), old.id().slot());
    assert_ne!(new.id().generation(), old.id().generation());
    assert_ne!(new.id(), old.id());

    assert!(
        handle.session(old.id()).is_none(),
        "the old id found a session"
    );
    assert_eq!(handle.session(new.id()).map(|s| s.id()), Some(new.id()));
    assert!(
        !old.send(&b"stale"[..]),
        "a send on the closed session was taken"
    );
    assert!(new.send(&b"fresh"[..]));
    let mut got = [0u8; 5];
    second.read_exact(&mut got).unwrap();
    assert_eq!(
        &got, b"fresh",
        "the old session's bytes reached the new one"
    );
    drop(second);
    server.shutdown(TIMEOUT);
}

/// Reports `on_posted` and `on_timer` calls on channels.
struct Events {
    posted: mpsc::Sender<(u64, u64)>,
    timers: mpsc::Sender<(u64, u64)>,
}

impl Handler for Events {
    fn on_packet(&self, _: &Session, _: &[u8]) {}
    fn on_posted(&self, _: &ServerHandle, key: u64, value: u64) {
        let _ = self.posted.send((key, value));
    }
    fn on_timer(&self, _: &ServerHandle, key: u64, value: u64) {
        let _ = self.timers.send((key, value));
    }
}

/// What the handler's `on_posted` (or `on_timer`) calls reported: (key, value).
type Reported = mpsc::Receiver<(u64, u64)>;

fn events_server(b: Backend) -> (Server, Reported, Reported) {
    let (ptx, prx) = mpsc::channel();
    let (ttx, trx) = mpsc::channel();
    let h = Events {
        posted: ptx,
        timers: ttx,
    };
    (Server::start(config(b), RawStream, h).unwrap(), prx, trx)
}

/// Keys and values around the edges: zero, the largest key, every bit of the value.
const SAMPLES: [(u64, u64); 4] = [
    (0, 0),
    (1, 42),
    (MAX_USER_KEY, u64::MAX),
    (0x1234_5678_9abc, 1 << 63),
];

fn collect(rx: &mpsc::Receiver<(u64, u64)>, n: usize) -> Vec<(u64, u64)> {
    let mut got: Vec<_> = (0..n)
        .map(|i| {
            rx.recv_timeout(TIMEOUT)
                .unwrap_or_else(|_| panic!("event {i} of {n} missing"))
        })
        .collect();
    got.sort_unstable();
    assert!(
        rx.recv_timeout(Duration::from_millis(50)).is_err(),
        "an event arrived that was never posted"
    );
    got
}

/// `ServerHandle::post(key, value)` calls `on_posted` once with that key and value.
fn posted_events_reach_on_posted_with_their_key_and_value(b: Backend) {
    let (server, posted, timers) = events_server(b);
    let handle = server.handle();
    for (k, v) in SAMPLES {
        handle.post(k, v).unwrap();
    }
    // A key above the limit is an error, not a panic, and nothing is delivered for it.
    let too_large = MAX_USER_KEY + 1;
    assert_eq!(
        handle.post(too_large, 1),
        Err(PostError::KeyTooLarge(too_large))
    );
    assert_eq!(
        handle
            .post_after(Duration::from_millis(1), u64::MAX, 1)
            .unwrap_err(),
        PostError::KeyTooLarge(u64::MAX)
    );
    let mut want = SAMPLES.to_vec();
    want.sort_unstable();
    assert_eq!(collect(&posted, SAMPLES.len()), want);
    assert!(timers.try_recv().is_err(), "a post reached on_timer");
    server.shutdown(TIMEOUT);
}

/// `ServerHandle::post_after(delay, key, value)` calls `on_timer` once with that key and value.
fn timers_reach_on_timer_with_their_key_and_value(b: Backend) {
    let (server, posted, timers) = events_server(b);
    let handle = server.handle();
    for (i, (k, v)) in SAMPLES.into_iter().enumerate() {
        handle
            .post_after(Duration::from_millis(5 * i as u64), k, v)
            .unwrap();
    }
    let mut want = SAMPLES.to_vec();
    want.sort_unstable();
    assert_eq!(collect(&timers, SAMPLES.len()), want);
    assert!(posted.try_recv().is_err(), "a timer reached on_posted");
    server.shutdown(TIMEOUT);
}

/// A cancelled timer never fires: a later timer fires, and the cancelled one (due earlier,
/// and timers fire in deadline order) has not.
fn cancelled_timer_never_reaches_on_timer(b: Backend) {
    let (server, _posted, timers) = events_server(b);
    let handle = server.handle();
    let doomed = handle.post_after(Duration::from_millis(20), 1, 1).unwrap();
    handle.post_after(Duration::from_millis(60), 2, 2).unwrap();
    assert!(handle.cancel_timer(doomed));
    assert_eq!(timers.recv_timeout(TIMEOUT).unwrap(), (2, 2));
    assert!(timers.try_recv().is_err(), "the cancelled timer fired");
    server.shutdown(TIMEOUT);
}

/// Logs connects and closes with their ids; `on_close` takes a while (as real cleanup may).
#[derive(Clone, Default)]
struct SlotLog(Arc<std::sync::Mutex<Vec<(&'static str, cport_server::SessionId)>>>);

impl Handler for SlotLog {
    fn on_connect(&self, session: &Session) {
        self.0.lock().unwrap().push(("connect", session.id()));
    }
    fn on_packet(&self, _: &Session, _: &[u8]) {}
    fn on_close(&self, session: &Session, _: &cport_server::CloseReason) {
        std::thread::sleep(Duration::from_millis(100));
        self.0.lock().unwrap().push(("close", session.id()));
    }
}

/// A slot is reused only after its session's `on_close` has returned: a game that keeps
/// players by slot never sees the new session's `on_connect` before the old one's `on_close`.
fn slot_is_reused_only_after_on_close_returned(b: Backend) {
    let log = SlotLog::default();
    let cfg = Config {
        max_sessions: 1,
        ..config(b)
    };
    let server = Server::start(cfg, RawStream, log.clone()).unwrap();
    let first = connect(server.local_addr());
    common::wait_until("the first session opened", || {
        log.0.lock().unwrap().len() == 1
    });
    drop(first);
    // Connect again at once, and again while refused, until a session takes the slot.
    let mut second = None;
    for _ in 0..2000 {
        let mut c = connect(server.local_addr());
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        match c.read(&mut [0u8; 1]) {
            // Refused: the slot was still taken.
            Ok(0) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                std::thread::sleep(Duration::from_millis(2))
            }
            _ => {
                second = Some(c);
                break;
            }
        }
    }
    let second = second.expect("no connection was ever accepted again");
    common::wait_until("both sessions opened and one closed", || {
        log.0.lock().unwrap().len() == 3
    });
    let log = log.0.lock().unwrap().clone();
    let kinds: Vec<_> = log.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, ["connect", "close", "connect"], "{log:?}");
    drop(second);
    server.shutdown(TIMEOUT);
}

/// Panics in `on_connect` (or `on_close`) of the first session it sees, as a buggy handler
/// would; echoes; reports closes.
struct Buggy {
    panic_in_on_connect: bool,
    seen: std::sync::atomic::AtomicBool,
    closes: mpsc::Sender<cport_server::CloseReason>,
}

impl Buggy {
    fn first(&self) -> bool {
        !self.seen.swap(true, std::sync::atomic::Ordering::SeqCst)
    }
}

impl Handler for Buggy {
    fn on_connect(&self, _: &Session) {
        if self.panic_in_on_connect && self.first() {
            panic!("handler bug in on_connect (expected by the test)");
        }
    }
    fn on_packet(&self, session: &Session, packet: &[u8]) {
        let _ = session.send(packet.to_vec());
    }
    fn on_close(&self, _: &Session, reason: &cport_server::CloseReason) {
        let _ = self.closes.send(reason.clone());
        if !self.panic_in_on_connect && self.first() {
            panic!("handler bug in on_close (expected by the test)");
        }
    }
}

/// With one slot and a handler that panics in `on_connect` (or `on_close`) of the first
/// session: that session still closes and its slot is freed; the next client is served.
fn buggy_handler_panicking(b: Backend, panic_in_on_connect: bool) {
    let (tx, closes) = mpsc::channel();
    let handler = Buggy {
        panic_in_on_connect,
        seen: Default::default(),
        closes: tx,
    };
    let cfg = Config {
        max_sessions: 1,
        ..config(b)
    };
    let server = Server::start(cfg, RawStream, handler).unwrap();
    let handle = server.handle();
    let mut first = connect(server.local_addr());
    if panic_in_on_connect {
        assert_eq!(common::expect_closed(&mut first), common::End::Eof);
        assert_eq!(
            closes.recv_timeout(TIMEOUT).unwrap(),
            cport_server::CloseReason::Local
        );
    } else {
        drop(first);
        closes.recv_timeout(TIMEOUT).unwrap();
    }
    common::wait_closed(&handle, 1);
    let mut second = connect(server.local_addr());
    write(&mut second, b"ping");
    let mut back = [0u8; 4];
    second.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    assert_eq!((handle.metrics().open, handle.metrics().refused), (1, 0));
    drop(second);
    server.shutdown(TIMEOUT);
}

/// A panic in `on_connect` closes that session (`Local`) and frees its slot.
fn panic_in_on_connect_closes_that_session_and_frees_its_slot(b: Backend) {
    buggy_handler_panicking(b, true);
}

/// A panic in `on_close` still frees the session's slot.
fn panic_in_on_close_still_frees_the_slot(b: Backend) {
    buggy_handler_panicking(b, false);
}

/// `on_start` runs once before `start` returns, with a handle that can set the first timer.
fn on_start_hands_the_handler_its_server_handle(b: Backend) {
    struct Starter(mpsc::Sender<&'static str>);
    impl Handler for Starter {
        fn on_start(&self, srv: &ServerHandle) {
            let _ = self.0.send("start");
            srv.post_after(Duration::from_millis(1), 7, 0).unwrap();
        }
        fn on_packet(&self, _: &Session, _: &[u8]) {}
        fn on_timer(&self, _: &ServerHandle, key: u64, _: u64) {
            assert_eq!(key, 7);
            let _ = self.0.send("timer");
        }
    }
    let (tx, rx) = mpsc::channel();
    let server = Server::start(config(b), RawStream, Starter(tx)).unwrap();
    assert_eq!(
        rx.try_recv(),
        Ok("start"),
        "on_start had not run when start returned"
    );
    assert_eq!(rx.recv_timeout(TIMEOUT), Ok("timer"));
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    server.shutdown(TIMEOUT);
}

/// `broadcast_except` reaches every session but the one named.
fn broadcast_except_skips_the_sender(b: Backend) {
    let (handler, events) = probe(|_, _| {});
    let server = Server::start(config(b), RawStream, handler).unwrap();
    let mut clients: Vec<_> = (0..3).map(|_| connect(server.local_addr())).collect();
    let sessions: Vec<Session> = (0..3).map(|_| events.connected()).collect();
    let sender = sessions[1].id();
    let handle = server.handle();
    let sent = handle.broadcast_except(&sessions, sender, &Bytes::from_static(b"hi"));
    assert_eq!(sent, 2);
    // Sessions may open in another order than the clients connected: the client that gets
    // nothing is the sender's.
    let mut got = 0;
    let mut skipped = None;
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 2];
        if c.read_exact(&mut buf).is_ok() {
            assert_eq!(&buf, b"hi");
            got += 1;
        } else {
            skipped = Some(i);
        }
    }
    assert_eq!(
        got, 2,
        "the sender got its own broadcast, or another missed it"
    );
    // The same over the whole table, without a list.
    assert_eq!(
        handle.broadcast_all(&Bytes::from_static(b"yo"), Some(sender)),
        2
    );
    assert_eq!(handle.broadcast_all(&Bytes::from_static(b"!!"), None), 3);
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        let want: &[u8] = if Some(i) == skipped { b"!!" } else { b"yo!!" };
        let mut buf = vec![0u8; want.len()];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, want, "client {i}");
    }
    server.shutdown(TIMEOUT);
}

/// A custom codec rejects bytes with `FrameError::Invalid`: the session closes with that
/// reason; the server goes on.
fn a_codecs_own_invalid_error_closes_the_session_with_its_reason(b: Backend) {
    struct NoZeros;
    impl Codec for NoZeros {
        fn frame(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
            match buf.first() {
                None => Ok(None),
                Some(0) => Err(FrameError::Invalid("a zero byte".into())),
                Some(_) => Ok(Some(1)),
            }
        }
    }
    let (handler, events) = probe(|_, _| {});
    let server = Server::start(config(b), NoZeros, handler).unwrap();
    let mut c = connect(server.local_addr());
    events.connected();
    write(&mut c, &[1, 2, 0, 3]);
    let (_, reason) = events.closed();
    assert_eq!(
        reason,
        CloseReason::Protocol(FrameError::Invalid("a zero byte".into()))
    );
    assert!(reason.to_string().contains("a zero byte"), "{reason}");
    server.shutdown(TIMEOUT);
}

/// Reads `count` packets of type `ty` whose bodies are `len` copies of 0, 1, 2…, in order.
fn expect_runs(client: &mut TcpStream, codec: &LengthPrefixed, ty: u8, count: u8, len: usize) {
    for i in 0..count {
        let want = codec.encode(ty, &vec![i; len]);
        assert_eq!(read_packet(client, SizeField::U8), &want[..], "packet {i}");
    }
}

/// Everything a handler sends one session during a handler pass leaves in one send
/// operation at the end of the pass (write coalescing), whole and in order.
fn packets_sent_in_one_handler_pass_leave_in_one_send(b: Backend) {
    let codec = LengthPrefixed::new(SizeField::U8);
    let (handler, events) = probe(move |s: &Session, p: &[u8]| {
        for i in 0..50u8 {
            let _ = s.send(codec.encode(p[1], &[i; 20]));
        }
    });
    let server = Server::start(config(b), codec, handler).unwrap();
    let handle = server.handle();
    let mut client = connect(server.local_addr());
    let _session = events.connected();
    write(&mut client, &codec.encode(9, b"go"));
    expect_runs(&mut client, &codec, 9, 50, 20);
    let m = handle.metrics();
    assert_eq!(m.packets_out, 50);
    assert_eq!(m.sends, 1, "50 packets of one pass took {} sends", m.sends);
    drop(client);
    server.shutdown(TIMEOUT);
}

/// A handler that sends and then closes gracefully in the same pass: the sends, which wait
/// for the end of the pass, still leave before the write half is shut.
fn a_graceful_close_in_the_pass_that_sent_still_delivers_everything_first(b: Backend) {
    let codec = LengthPrefixed::new(SizeField::U8);
    let (handler, events) = probe(move |s: &Session, _: &[u8]| {
        for i in 0..20u8 {
            let _ = s.send(codec.encode(1, &[i; 100]));
        }
        s.close_after_flush();
    });
    let server = Server::start(config(b), codec, handler).unwrap();
    let mut client = connect(server.local_addr());
    let _session = events.connected();
    write(&mut client, &codec.encode(1, b"bye"));
    expect_runs(&mut client, &codec, 1, 20, 100);
    assert_eq!(common::expect_closed(&mut client), common::End::Eof);
    drop(client);
    let (_, reason) = events.closed();
    assert_eq!(reason, CloseReason::Local);
    server.shutdown(TIMEOUT);
}
