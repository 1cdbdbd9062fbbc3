//! Limits and hostile peers: each closes only the offending session, with its reason, while
//! well-behaved clients are served. Every test runs on both backends.

mod common;

use cport_testkit::per_backend;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{
    config, connect, connect_small_rcvbuf, echo, expect_closed, probe, read_packet, reset,
    wait_closed, write, TIMEOUT,
};
use cport_server::cport::Backend;
use cport_server::{
    Bytes, CloseReason, Config, FrameError, LengthPrefixed, RawStream, Server, SizeField,
};

per_backend!(
    slow_consumer_is_closed_and_its_queue_never_exceeds_the_cap,
    size_below_the_header_closes_only_that_session,
    size_zero_closes_only_that_session,
    size_over_the_max_closes_only_that_session,
    unknown_type_rejected_by_the_handler_closes_only_that_session,
    garbage_bytes_close_only_that_session,
    reset_in_the_middle_of_a_packet_closes_only_that_session,
    handler_panic_on_a_packet_closes_only_that_session,
    silent_session_is_closed_at_the_idle_timeout_and_active_one_is_not,
    connection_over_max_sessions_is_refused_until_a_slot_frees,
    packet_flood_is_closed_for_rate_and_steady_sender_is_not,
    codec_framing_a_wrong_length_closes_only_that_session,
    handlers_graceful_close_is_reported_as_local,
);

const CHUNK: usize = 64 * 1024;
const CAP: usize = 1 << 20;

/// A client that never reads, and a handler that sends 64 KiB packets until `send` refuses:
/// the session closes as a slow consumer, and the bytes queued for it never exceed the cap.
fn slow_consumer_is_closed_and_its_queue_never_exceeds_the_cap(b: Backend) {
    let max_session = Arc::new(AtomicUsize::new(0));
    let max_total = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    let done_tx = std::sync::Mutex::new(done_tx);
    let (ms, mt) = (max_session.clone(), max_total.clone());
    let (handler, events) = probe(move |session, _| {
        let chunk = Bytes::from(vec![0xAB; CHUNK]);
        let mut refused = false;
        for _ in 0..100_000 {
            let ok = session.send(chunk.clone());
            ms.fetch_max(session.queued_bytes(), Relaxed);
            mt.fetch_max(session.server().metrics().queued_bytes as usize, Relaxed);
            if !ok {
                refused = true;
                break;
            }
        }
        let _ = done_tx.lock().unwrap().send(refused);
    });
    let cfg = Config {
        max_send_queue: CAP,
        ..config(b)
    };
    let server = Server::start(cfg, RawStream, handler).unwrap();
    let mut client = connect_small_rcvbuf(server.local_addr(), 16 * 1024);
    write(&mut client, b"go"); // and never read

    let refused = done_rx
        .recv_timeout(TIMEOUT)
        .expect("the handler never returned");
    assert!(refused, "send never refused a packet");
    let (_, reason) = events.closed();
    assert!(
        matches!(reason, CloseReason::SlowConsumer { queued } if queued > CAP),
        "closed for {reason:?}"
    );
    wait_closed(&server.handle(), 1);
    assert_eq!(server.handle().metrics().closed_for("slow_consumer"), 1);
    let (ms, mt) = (max_session.load(Relaxed), max_total.load(Relaxed));
    assert!(ms <= CAP, "session queue reached {ms} bytes (cap {CAP})");
    assert!(mt <= CAP, "metrics().queued_bytes reached {mt} (cap {CAP})");
    drop(client);
    server.shutdown(TIMEOUT);
}

/// The codec of the hostile-input tests.
fn small_codec() -> LengthPrefixed {
    LengthPrefixed::new(SizeField::U8).max_packet(50)
}

/// Echo, except type 99, which the handler rejects, and type 98, on which it panics (a
/// handler bug).
fn echo_or_reject(session: &cport_server::Session, packet: &[u8]) {
    match packet[1] {
        99 => session.close(CloseReason::Rejected("unknown type 99".into())),
        98 => panic!("handler bug on a packet of type 98 (expected by the test)"),
        _ => echo(session, packet),
    }
}

const GOOD_PACKETS: usize = 200;

/// A packet sent, and the packet that came back.
type Echoed = (Vec<u8>, Vec<u8>);

/// A well-behaved client echoing packets one after another: it reports when `GOOD_PACKETS / 2`
/// are back and keeps going until told to stop (and at least `GOOD_PACKETS` are done);
/// returns its connection (still open) and every echo.
fn good_client(
    addr: std::net::SocketAddr,
    half: mpsc::Sender<()>,
    stop: mpsc::Receiver<()>,
) -> std::thread::JoinHandle<(TcpStream, Vec<Echoed>)> {
    std::thread::spawn(move || {
        let codec = small_codec();
        let mut c = connect(addr);
        let mut pairs = Vec::new();
        let mut stopping = false;
        for i in 0..1_000_000 {
            if i == GOOD_PACKETS / 2 {
                half.send(()).unwrap();
            }
            stopping = stopping || stop.try_recv().is_ok();
            if stopping && i >= GOOD_PACKETS {
                return (c, pairs);
            }
            let body: Vec<u8> = (0..i % 49).map(|j| (i + j) as u8).collect();
            let p = codec.encode(1 + (i % 90) as u8, &body);
            write(&mut c, &p);
            pairs.push((p.to_vec(), read_packet(&mut c, SizeField::U8)));
        }
        panic!("never told to stop");
    })
}

/// While a good client is busy echoing, a hostile client does `attack`: the hostile session
/// closes with a reason `expected` accepts, the hostile client sees its connection end, and
/// the good session stays open and gets every echo back.
fn hostile(
    b: Backend,
    attack: impl FnOnce(TcpStream) -> Option<TcpStream>,
    expected: impl Fn(&CloseReason) -> bool,
) {
    let (handler, events) = probe(echo_or_reject);
    let server = Server::start(config(b), small_codec(), handler).unwrap();
    let handle = server.handle();
    let (half_tx, half_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel();
    let good = good_client(server.local_addr(), half_tx, stop_rx);
    half_rx
        .recv_timeout(TIMEOUT)
        .expect("the good client stalled");

    let bad = connect(server.local_addr());
    let bad_addr = bad.local_addr().unwrap();
    if let Some(mut bad) = attack(bad) {
        expect_closed(&mut bad);
    }
    let (session, reason) = events.closed();
    assert_eq!(
        session.peer_addr(),
        Some(bad_addr),
        "closed the wrong session"
    );
    assert!(expected(&reason), "hostile session closed for {reason:?}");

    stop_tx.send(()).unwrap();
    let (good_conn, pairs) = good.join().expect("the good client failed");
    assert!(pairs.len() >= GOOD_PACKETS);
    for (i, (sent, back)) in pairs.iter().enumerate() {
        assert_eq!(back, sent, "echo {i} differs");
    }
    wait_closed(&handle, 1);
    let m = handle.metrics();
    assert_eq!(
        (m.open, m.closed_total(), m.closed_for(reason.name())),
        (1, 1, 1),
        "{m}"
    );
    drop(good_conn);
    server.shutdown(TIMEOUT);
}

fn send_then_keep(bytes: &'static [u8]) -> impl FnOnce(TcpStream) -> Option<TcpStream> {
    move |mut c| {
        write(&mut c, bytes);
        Some(c)
    }
}

/// A size field smaller than the header (`[1, 0]`): `Protocol(SizeTooSmall)`.
fn size_below_the_header_closes_only_that_session(b: Backend) {
    hostile(b, send_then_keep(&[1, 0]), |r| {
        *r == CloseReason::Protocol(FrameError::SizeTooSmall { size: 1, min: 2 })
    });
}

/// A size field of zero: `Protocol(SizeTooSmall)`.
fn size_zero_closes_only_that_session(b: Backend) {
    hostile(b, send_then_keep(&[0, 1, 2, 3]), |r| {
        *r == CloseReason::Protocol(FrameError::SizeTooSmall { size: 0, min: 2 })
    });
}

/// A size field of 200 where the maximum is 50: `Protocol(TooLarge)`.
fn size_over_the_max_closes_only_that_session(b: Backend) {
    hostile(b, send_then_keep(&[200, 1, 2, 3]), |r| {
        *r == CloseReason::Protocol(FrameError::TooLarge { size: 200, max: 50 })
    });
}

/// A well-formed packet of a type the handler does not know: `Rejected`.
fn unknown_type_rejected_by_the_handler_closes_only_that_session(b: Backend) {
    hostile(
        b,
        send_then_keep(&[5, 99, 1, 2, 3]),
        |r| matches!(r, CloseReason::Rejected(why) if why.contains("99")),
    );
}

/// Bytes of another protocol entirely: a protocol error.
fn garbage_bytes_close_only_that_session(b: Backend) {
    hostile(
        b,
        send_then_keep(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        |r| matches!(r, CloseReason::Protocol(_)),
    );
}

/// Half a packet, then a reset: `Reset` (or `PeerClosed`).
fn reset_in_the_middle_of_a_packet_closes_only_that_session(b: Backend) {
    hostile(
        b,
        |mut c| {
            write(&mut c, &[20, 1, 2, 3, 4, 5]);
            std::thread::sleep(Duration::from_millis(20));
            reset(c);
            None
        },
        |r| matches!(r, CloseReason::Reset | CloseReason::PeerClosed),
    );
}

/// `on_packet` panics on a packet (a handler bug): that session is closed (`Local`) rather
/// than left open and deaf forever.
fn handler_panic_on_a_packet_closes_only_that_session(b: Backend) {
    hostile(b, send_then_keep(&[3, 98, 0]), |r| *r == CloseReason::Local);
}

/// With a 200 ms idle timeout, a client that sends nothing is closed for `IdleTimeout` (it
/// sees the end of the stream) while a client sending every 50 ms stays open.
fn silent_session_is_closed_at_the_idle_timeout_and_active_one_is_not(b: Backend) {
    let codec = LengthPrefixed::new(SizeField::U8);
    let (handler, events) = probe(echo);
    let cfg = Config {
        idle_timeout: Some(Duration::from_millis(200)),
        ..config(b)
    };
    let server = Server::start(cfg, codec, handler).unwrap();
    let addr = server.local_addr();
    let mut silent = connect(addr);
    let silent_addr = silent.local_addr().unwrap();
    let active = std::thread::spawn(move || {
        let mut c = connect(addr);
        for i in 0..20u8 {
            let p = codec.encode(1, &[i]);
            write(&mut c, &p);
            assert_eq!(read_packet(&mut c, SizeField::U8), &p[..]);
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    });
    assert_eq!(expect_closed(&mut silent), common::End::Eof);
    let (session, reason) = events.closed();
    assert_eq!(session.peer_addr(), Some(silent_addr));
    assert_eq!(reason, CloseReason::IdleTimeout);

    let active = active.join().expect("the active client failed");
    wait_closed(&server.handle(), 1);
    let m = server.handle().metrics();
    assert_eq!(
        (m.open, m.closed_for("idle_timeout"), m.closed_total()),
        (1, 1, 1),
        "{m}"
    );
    assert!(events.closed_so_far().is_empty());
    drop(active);
    server.shutdown(TIMEOUT);
}

fn echo_once(c: &mut TcpStream, codec: &LengthPrefixed, n: u8) {
    let p = codec.encode(1, &[n]);
    write(c, &p);
    assert_eq!(read_packet(c, SizeField::U8), &p[..]);
}

/// With `max_sessions: 3`, a fourth connection is refused (its client sees the connection
/// end) and counted; once one of the three closes, a new connection is served.
fn connection_over_max_sessions_is_refused_until_a_slot_frees(b: Backend) {
    let codec = LengthPrefixed::new(SizeField::U8);
    let (handler, events) = probe(echo);
    let cfg = Config {
        max_sessions: 3,
        ..config(b)
    };
    let server = Server::start(cfg, codec, handler).unwrap();
    let handle = server.handle();
    let mut three: Vec<_> = (0..3).map(|_| connect(server.local_addr())).collect();
    for (i, c) in three.iter_mut().enumerate() {
        echo_once(c, &codec, i as u8);
    }

    let mut fourth = connect(server.local_addr());
    let _ = fourth.write_all(&codec.encode(1, b"x"));
    expect_closed(&mut fourth);
    let m = handle.metrics();
    assert_eq!((m.refused, m.accepted, m.open), (1, 3, 3), "{m}");

    drop(three.pop());
    events.closed();
    wait_closed(&handle, 1);
    let mut fifth = connect(server.local_addr());
    echo_once(&mut fifth, &codec, 5);
    let m = handle.metrics();
    assert_eq!((m.refused, m.accepted, m.open), (1, 4, 3), "{m}");
    drop((three, fifth));
    server.shutdown(TIMEOUT);
}

/// With `max_packets_per_sec: 100`, a client writing 1000 packets at once is closed for
/// `RateLimited`; a client sending 10 a second meanwhile gets every echo and stays open.
fn packet_flood_is_closed_for_rate_and_steady_sender_is_not(b: Backend) {
    let codec = LengthPrefixed::new(SizeField::U8);
    let (handler, events) = probe(echo);
    let cfg = Config {
        max_packets_per_sec: Some(100),
        ..config(b)
    };
    let server = Server::start(cfg, codec, handler).unwrap();
    let addr = server.local_addr();
    let steady = std::thread::spawn(move || {
        let mut c = connect(addr);
        for i in 0..10u8 {
            echo_once(&mut c, &codec, i);
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    });
    let mut flood = connect(addr);
    let flood_addr = flood.local_addr().unwrap();
    let burst: Vec<u8> = (0..1000u32)
        .flat_map(|i| codec.encode(1, &i.to_le_bytes()).to_vec())
        .collect();
    let _ = flood.write_all(&burst); // the server may close before taking it all
    expect_closed(&mut flood);
    let (session, reason) = events.closed();
    assert_eq!(session.peer_addr(), Some(flood_addr));
    assert_eq!(reason, CloseReason::RateLimited);

    let steady = steady.join().expect("the steady client failed");
    wait_closed(&server.handle(), 1);
    let m = server.handle().metrics();
    assert_eq!(
        (m.open, m.closed_for("rate_limited"), m.closed_total()),
        (1, 1, 1),
        "{m}"
    );
    drop(steady);
    server.shutdown(TIMEOUT);
}

/// A faulty codec (framing 0 bytes, or more than arrived) closes the session with a reason
/// instead of spinning or panicking a worker.
fn codec_framing_a_wrong_length_closes_only_that_session(b: Backend) {
    struct Faulty;
    impl cport_server::Codec for Faulty {
        fn frame(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
            Ok(Some(match buf[0] {
                b'0' => 0,
                b'+' => buf.len() + 1,
                _ => buf.len(),
            }))
        }
    }
    let (handler, events) = probe(|session, packet| {
        let _ = session.send(packet.to_vec());
    });
    let server = Server::start(config(b), Faulty, handler).unwrap();
    let mut good = connect(server.local_addr());
    let _ = events.connected();
    for bad in [&b"0zero"[..], &b"+more"[..]] {
        let mut c = connect(server.local_addr());
        let _ = events.connected();
        write(&mut c, bad);
        let (_, reason) = events.closed();
        assert!(
            matches!(reason, CloseReason::Rejected(ref why) if why.contains("codec framed")),
            "{reason:?}"
        );
        expect_closed(&mut c);
    }
    write(&mut good, b"still here");
    let mut back = [0u8; 10];
    std::io::Read::read_exact(&mut good, &mut back).unwrap();
    assert_eq!(&back, b"still here");
}

/// `Session::close_after_flush` called by the program ends, once the peer closes too, with
/// `CloseReason::Local` (not `Shutdown`, which is the server's own).
fn handlers_graceful_close_is_reported_as_local(b: Backend) {
    let (handler, events) = probe(|session, _| {
        let _ = session.send(&b"bye"[..]);
        session.close_after_flush();
    });
    let server = Server::start(config(b), RawStream, handler).unwrap();
    let mut c = connect(server.local_addr());
    let _ = events.connected();
    write(&mut c, b"x");
    let mut got = [0u8; 3];
    std::io::Read::read_exact(&mut c, &mut got).unwrap();
    assert_eq!(&got, b"bye");
    assert_eq!(expect_closed(&mut c), common::End::Eof);
    drop(c);
    let (_, reason) = events.closed();
    assert_eq!(reason, CloseReason::Local);
}
