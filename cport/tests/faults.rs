//! Faults injected into the port's system calls (the `fault-injection` test hooks, which
//! make a call fail exactly as the kernel would, having done nothing) and real faults from
//! the network (a peer that resets with sends in flight). Each test asserts what the user is
//! promised: every started operation completes exactly once, buffers come back, failures are
//! counted in `stats()` and retried, nothing leaks.
//!
//! The tests count this process's descriptors, so they run one at a time (`ONE_AT_A_TIME`).
//!
//! Linux only: the hooks sit in the io_uring and epoll backends (the IOCP backend has none
//! yet), and the descriptor and CPU-time checks read Linux's `/proc` and `getrusage`.
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use common::{next, open_fds, port, tcp_pair};
use cport::fault::{FaultPoint, Faults};
use cport::{Backend, Op, Port};
use cport_testkit::per_backend;

static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

per_backend!(
    refused_submissions_and_failed_waits_lose_no_completion,
    threads_starting_at_once_on_a_tiny_ring_lose_nothing,
    a_kernel_wait_that_keeps_failing_shuts_the_port_down,
    a_peer_that_resets_with_sends_in_flight_gets_each_send_completed_once,
);

fn faults(port: &Port) -> &Faults {
    port.faults().expect("this backend has fault hooks")
}

/// Tests for io_uring alone (`uring_only::`: `scripts/sanitize` skips them under valgrind, which
/// cannot see the kernel's writes through the ring).
mod uring_only {
    use super::*;

    /// io_uring: `io_uring_enter` refuses a submission (`EAGAIN`, then `EBUSY`) while a receive
    /// and a send wait in the ring. The refused SQEs stay in the ring; the waiter submits them
    /// again after a pause, counts the refusal in `stats().wait_errors`, and both operations
    /// complete once with their real results.
    #[test]
    fn a_refused_submission_is_submitted_again() {
        let _serial = ONE_AT_A_TIME.lock();
        for errno in [libc::EAGAIN, libc::EBUSY] {
            let port = port(Backend::Uring, 1);
            let (mut client, server) = tcp_pair();
            let sock = port.associate(server, 7).unwrap();
            // Three refusals: the starting thread's own flush of the receive, its flush of the
            // send, and the waiter's first retry.
            faults(&port).fail(FaultPoint::UringSubmit, errno, 3);
            sock.recv(Vec::with_capacity(64), 1);
            sock.send(&b"pong"[..], 2);
            assert_eq!(
                faults(&port).injected(FaultPoint::UringSubmit),
                2,
                "each start flushed and was refused"
            );
            client.write_all(b"ping").unwrap();
            let mut seen = HashMap::new();
            for _ in 0..2 {
                let c = next(&port);
                *seen.entry(c.user).or_insert(0) += 1;
                match c.op {
                    Op::Recv(buf) => assert_eq!(&buf[..], b"ping"),
                    Op::Send(buf) => {
                        assert_eq!(c.result.unwrap(), 4);
                        assert_eq!(buf.len(), 4, "the send buffer comes back");
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(seen, HashMap::from([(1, 1), (2, 1)]));
            let mut back = [0u8; 4];
            client.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"pong");
            let f = faults(&port);
            assert_eq!(
                (
                    f.armed(FaultPoint::UringSubmit),
                    f.injected(FaultPoint::UringSubmit)
                ),
                (0, 3)
            );
            let stats = port.stats();
            assert!(
                stats.wait_errors >= 1,
                "the refusal the waiter met is counted: {stats:?}"
            );
            assert_eq!(stats.in_flight, 0);
            assert!(port.get(Some(Duration::from_millis(50))).unwrap().is_none());
        }
    }
}

/// Many operations started at once on a ring of 8 entries (the backlog holds what does not
/// fit) while the kernel refuses submissions (io_uring) and the shared wait fails (both
/// backends): 64 connections each receive and send 4 KiB; every operation completes exactly
/// once with its bytes, the failures are counted, and nothing is left in flight.
fn refused_submissions_and_failed_waits_lose_no_completion(b: Backend) {
    let _serial = ONE_AT_A_TIME.lock();
    const N: usize = 64;
    const LEN: usize = 4096;
    let before = open_fds();
    {
        let port = Port::builder()
            .backend(b)
            .ignore_env()
            .concurrency(1)
            .entries(8)
            .build()
            .unwrap();
        let f = faults(&port);
        if b == Backend::Uring {
            // Met by the first 20 starts (each start's flush is refused; a later start's
            // flush submits the ring with what was left in it).
            f.fail(FaultPoint::UringSubmit, libc::EAGAIN, 20);
        }
        let mut clients = Vec::new();
        let mut socks = Vec::new();
        for i in 0..N {
            if i == N - 1 && b == Backend::Uring {
                // The last two starts are refused and nothing is pushed after them: the
                // waiter must submit them again, and is refused three more times.
                assert_eq!(f.armed(FaultPoint::UringSubmit), 0);
                f.fail(FaultPoint::UringSubmit, libc::EAGAIN, 5);
            }
            let (c, s) = tcp_pair();
            let s = port.associate(s, i as u64).unwrap();
            s.recv(Vec::with_capacity(LEN), 0);
            s.send(vec![i as u8; LEN], 1);
            clients.push(c);
            socks.push(s);
        }
        // The waits for the clients' bytes fail first.
        f.fail(FaultPoint::EpollWait, libc::EINVAL, 4);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            for (i, c) in clients.iter_mut().enumerate() {
                c.write_all(&[!(i as u8); LEN]).unwrap();
            }
            clients
        });
        // (key, user) → how many times it completed; a receive may come back short, and is
        // then started again for the rest.
        let mut sends = vec![0; N];
        let mut received = vec![0usize; N];
        let deadline = Instant::now() + Duration::from_secs(30);
        while sends.contains(&0) || received.iter().any(|&n| n < LEN) {
            assert!(Instant::now() < deadline, "operations lost");
            let c = next(&port);
            let k = c.key as usize;
            match c.op {
                Op::Send(buf) => {
                    assert_eq!(c.result.unwrap(), LEN);
                    assert_eq!(buf.len(), LEN);
                    sends[k] += 1;
                }
                Op::Recv(buf) => {
                    let n = c.result.unwrap();
                    assert!(n > 0, "end of stream on {k}");
                    assert!(buf.iter().all(|&x| x == !(k as u8)), "bytes of {k}");
                    received[k] += n;
                    if received[k] < LEN {
                        socks[k].recv(Vec::with_capacity(LEN), 0);
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(sends.iter().all(|&n| n == 1), "a send completed twice");
        assert!(received.iter().all(|&n| n == LEN), "a byte received twice");
        let mut clients = writer.join().unwrap();
        for (i, c) in clients.iter_mut().enumerate() {
            let mut back = vec![0u8; LEN];
            c.read_exact(&mut back).unwrap();
            assert!(back.iter().all(|&x| x == i as u8));
        }
        let f = faults(&port);
        assert_eq!(f.armed(FaultPoint::UringSubmit), 0, "every refusal was met");
        assert_eq!(
            f.armed(FaultPoint::EpollWait),
            0,
            "every failed wait was met"
        );
        let stats = port.stats();
        println!(
            "{b}: injected {} refused submissions, {} failed waits; wait_errors {}",
            f.injected(FaultPoint::UringSubmit),
            f.injected(FaultPoint::EpollWait),
            stats.wait_errors
        );
        // Each failed wait the waiter met, and (io_uring) each refusal it met again.
        assert!(stats.wait_errors >= 1, "{stats:?}");
        assert_eq!(stats.in_flight, 0, "{stats:?}");
        assert!(port.get(Some(Duration::from_millis(50))).unwrap().is_none());
        drop(socks);
        drop(port);
    }
    assert_eq!(open_fds(), before, "descriptors leaked");
}

/// Four threads outside the pool start 800 sends at once on a ring of 8 entries while two
/// pool workers take the completions (and, on io_uring, 30 submissions are refused): every
/// send completes exactly once, whole, and each connection's bytes arrive complete and in
/// the order the sends were started.
fn threads_starting_at_once_on_a_tiny_ring_lose_nothing(b: Backend) {
    let _serial = ONE_AT_A_TIME.lock();
    const THREADS: usize = 4;
    const PAIRS: usize = 4;
    const SENDS: usize = 50;
    const LEN: usize = 1024;
    let port = Port::builder()
        .backend(b)
        .ignore_env()
        .concurrency(2)
        .entries(8)
        .build()
        .unwrap();
    if b == Backend::Uring {
        faults(&port).fail(FaultPoint::UringSubmit, libc::EAGAIN, 30);
    }
    let done = std::sync::Arc::new(parking_lot::Mutex::new(HashMap::<(u64, u64), u32>::new()));
    let d2 = done.clone();
    let pool = cport::Pool::spawn(&port, 2, move |_, c| {
        let Op::Send(buf) = c.op else {
            panic!("unexpected {:?}", c.op)
        };
        assert_eq!(c.result.unwrap(), LEN);
        assert_eq!(buf.len(), LEN);
        *d2.lock().entry((c.key, c.user)).or_insert(0) += 1;
    })
    .unwrap();
    let mut readers = Vec::new();
    let mut starters = Vec::new();
    for t in 0..THREADS {
        let mut socks = Vec::new();
        for p in 0..PAIRS {
            let key = (t * PAIRS + p) as u64;
            let (mut client, server) = tcp_pair();
            socks.push((key, port.associate(server, key).unwrap()));
            readers.push(std::thread::spawn(move || {
                client
                    .set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                let mut all = vec![0u8; SENDS * LEN];
                client.read_exact(&mut all).expect("every byte arrives");
                for (i, chunk) in all.chunks(LEN).enumerate() {
                    let want = (key as usize * SENDS + i) as u32;
                    assert!(
                        chunk.chunks(4).all(|w| w == want.to_le_bytes()),
                        "connection {key}: send {i} out of order or damaged"
                    );
                }
            }));
        }
        starters.push(std::thread::spawn(move || {
            for i in 0..SENDS {
                for (key, s) in &socks {
                    let word = (*key as usize * SENDS + i) as u32;
                    let buf: Vec<u8> = word.to_le_bytes().repeat(LEN / 4);
                    s.send(buf, i as u64);
                }
            }
            socks
        }));
    }
    let socks: Vec<_> = starters.into_iter().map(|h| h.join().unwrap()).collect();
    for r in readers {
        r.join().unwrap();
    }
    let until = Instant::now() + Duration::from_secs(20);
    while done.lock().len() < THREADS * PAIRS * SENDS {
        assert!(
            Instant::now() < until,
            "completions lost: {}",
            done.lock().len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        done.lock().values().all(|&n| n == 1),
        "a send completed twice"
    );
    let stats = port.stats();
    assert_eq!(stats.in_flight, 0, "{stats:?}");
    if b == Backend::Uring {
        assert_eq!(faults(&port).armed(FaultPoint::UringSubmit), 0);
    }
    println!("{b}: {} sends, each once; {stats:?}", done.lock().len());
    drop(socks);
    pool.shutdown();
}

/// The wait keeps failing (every `epoll_wait` of the wait set, on both backends; on io_uring,
/// every submission too): the port logs, retries with a growing pause — it does not spin —
/// and shuts itself down after 50 failures in a row, so `get` answers `Closed` instead of
/// hanging; the receive in flight is cancelled and reaped by the shutdown.
fn a_kernel_wait_that_keeps_failing_shuts_the_port_down(b: Backend) {
    let _serial = ONE_AT_A_TIME.lock();
    let port = port(b, 1);
    let (_client, server) = tcp_pair();
    let sock = port.associate(server, 1).unwrap();
    let f = faults(&port);
    f.fail(FaultPoint::EpollWait, libc::EINVAL, u32::MAX);
    if b == Backend::Uring {
        f.fail(FaultPoint::UringSubmit, libc::EAGAIN, u32::MAX);
    }
    sock.recv(Vec::with_capacity(16), 0);
    let t0 = Instant::now();
    let cpu0 = cpu_time();
    let r = port.get(Some(Duration::from_secs(20)));
    let (took, cpu) = (t0.elapsed(), cpu_time() - cpu0);
    assert!(r.is_err(), "the port should shut down, got {r:?}");
    assert!(port.is_shut_down());
    let stats = port.stats();
    println!("{b}: shut down after {took:?} ({cpu:?} of CPU), {stats:?}");
    assert!(stats.wait_errors >= 50, "{stats:?}");
    assert!(
        took >= Duration::from_millis(500),
        "the retries pause ({took:?})"
    );
    assert!(
        cpu < took / 2,
        "the retries must not spin: {cpu:?} of CPU in {took:?}"
    );
    drop(sock);
}

/// The process's CPU time (user + system), all threads.
fn cpu_time() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the zeroed local it points to.
    let r = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    assert_eq!(r, 0);
    // SAFETY: initialised by the successful call (and zeroed before it).
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// epoll: `epoll_ctl(EPOLL_CTL_ADD)` fails (`ENOSPC`: past `max_user_watches`) while a
/// socket is associated. `associate` returns that error, the port does not keep the socket
/// (its descriptor is closed, `stats().sockets` unchanged), and the next association works
/// and serves. (io_uring registers nothing per socket: the fault does not exist there.)
#[test]
fn epoll_a_failed_registration_is_an_error_of_associate_and_leaks_nothing() {
    let _serial = ONE_AT_A_TIME.lock();
    let port = port(Backend::Epoll, 1);
    let (_c1, s1) = tcp_pair();
    let before = open_fds();
    faults(&port).fail(FaultPoint::EpollAdd, libc::ENOSPC, 1);
    let e = port.associate(s1, 1).expect_err("the registration failed");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert_eq!(
        open_fds(),
        before - 1,
        "the port closed the descriptor it was given"
    );
    assert_eq!(port.stats().sockets, 0);
    let (mut c2, s2) = tcp_pair();
    let sock = port.associate(s2, 2).unwrap();
    sock.recv(Vec::with_capacity(16), 0);
    c2.write_all(b"still serving").unwrap();
    let c = next(&port);
    assert_eq!(c.key, 2);
    assert!(matches!(c.op, Op::Recv(ref v) if v == b"still serving"));
    assert_eq!(port.stats().sockets, 1);
}

/// A client resets its connection (`SO_LINGER` 0, then close) while the port has 32 sends of
/// 1 MiB queued and in flight to it and a receive pending: every one of those operations
/// completes exactly once — a send with all its bytes or an error, never a short count —
/// with its buffer; another client on the same port is served meanwhile; once the socket is
/// dropped nothing is in flight and no descriptor is left.
fn a_peer_that_resets_with_sends_in_flight_gets_each_send_completed_once(b: Backend) {
    let _serial = ONE_AT_A_TIME.lock();
    const SENDS: u64 = 32;
    const LEN: usize = 1 << 20;
    let before = open_fds();
    {
        let port = port(b, 1);
        let (victim, server) = tcp_pair();
        let sock = port.associate(server, 1).unwrap();
        let (mut other, other_server) = tcp_pair();
        let other_sock = port.associate(other_server, 2).unwrap();
        sock.recv(Vec::with_capacity(64), 100);
        for i in 0..SENDS {
            sock.send(vec![i as u8; LEN], i);
        }
        // Let the first send fill the socket buffers, then reset.
        std::thread::sleep(Duration::from_millis(100));
        socket2::SockRef::from(&victim)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(victim);
        let mut done = HashMap::new();
        let mut errors = 0;
        other_sock.recv(Vec::with_capacity(64), 200);
        other.write_all(b"unaffected").unwrap();
        let mut other_served = false;
        while done.len() < SENDS as usize + 1 || !other_served {
            let c = next(&port);
            if c.key == 2 {
                assert!(matches!(c.op, Op::Recv(ref v) if v == b"unaffected"));
                other_served = true;
                continue;
            }
            assert_eq!(c.key, 1);
            assert!(
                done.insert(c.user, ()).is_none(),
                "{} completed twice",
                c.user
            );
            match c.op {
                Op::Send(buf) => {
                    assert_eq!(buf.len(), LEN, "the buffer comes back whole");
                    match c.result {
                        Ok(n) => assert_eq!(n, LEN, "a send completes whole or fails"),
                        Err(e) => {
                            assert!(
                                matches!(
                                    e.kind(),
                                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                                ),
                                "send {}: {e}",
                                c.user
                            );
                            errors += 1;
                        }
                    }
                }
                Op::Recv(buf) => {
                    assert_eq!(c.user, 100);
                    match c.result {
                        Ok(n) => assert_eq!((n, buf.len()), (0, 0), "end of stream"),
                        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        println!("{b}: {errors} of {SENDS} sends failed after the reset");
        assert!(errors >= 1, "the reset must fail the sends still queued");
        assert_eq!(port.stats().in_flight, 0);
        drop(sock);
        // The other connection still works both ways.
        other_sock.send(&b"still here"[..], 201);
        let c = next(&port);
        assert_eq!((c.key, c.result.unwrap()), (2, 10));
        let mut back = [0u8; 10];
        other.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"still here");
        assert_eq!(port.stats().sockets, 1, "the reset socket was closed");
        drop(other_sock);
        let stats = port.stats();
        assert_eq!((stats.in_flight, stats.sockets), (0, 0), "{stats:?}");
        drop(port);
        drop(other);
    }
    assert_eq!(open_fds(), before, "descriptors leaked");
}
