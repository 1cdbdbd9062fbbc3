//! The I/O half of the port contract: owned-buffer operations over loopback TCP and UDP,
//! ordering, short sends, cancel and close, fd reuse, teardown. Every test runs on both
//! backends.

mod common;

use cport_testkit::per_backend;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{next, port, tcp_pair};
use cport::{Backend, Bytes, Op, Pool, Port, SendBuf, Socket};
use rand::{Rng, SeedableRng};

per_backend!(
    echo_200_connections_random_sizes_every_byte_back_in_order,
    send_of_16_mib_completes_whole,
    sends_from_8_threads_keep_each_threads_order,
    vectored_send_sends_every_part_in_order,
    receives_complete_in_start_order,
    close_aborts_every_pending_op_once_and_returns_buffers,
    cancel_aborts_pending_ops_and_socket_stays_usable,
    accept_and_connect_complete_through_the_port,
    udp_recv_from_and_send_to,
    recv_into_full_buffer_is_refused,
    submit_starts_a_handlers_operations_before_it_returns,
    a_tiny_ring_loses_no_submission_and_no_completion,
    an_io_completion_is_not_starved_by_an_endless_stream_of_posts,
    concurrent_flushers_never_strand_a_submission,
    a_short_receive_then_end_of_stream_completes_both,
    a_short_receive_then_more_data_completes_the_next,
    queued_datagrams_each_complete_a_receive,
    shutdown_inside_a_handler_pass_answers_closed_at_once,
    after_shutdown_nothing_is_in_flight_and_nothing_new_reaches_the_kernel,
    a_thread_that_called_get_sends_at_once,
    a_thread_that_opted_in_defers_until_its_next_get,
    send_takes_strings_and_byte_literals,
    an_operation_started_inside_blocking_goes_out_at_once,
    urgent_data_does_not_stall_the_next_receive,
    a_threads_own_timed_blocking_call_is_not_interrupted_while_workers_wait,
    a_threads_own_timed_blocking_call_is_not_interrupted_while_workers_are_busy,
);

/// An echo server on a worker pool: every receive is sent back as it came and a new receive
/// is started at once, so several sends may be queued on one socket.
fn echo_server(port: &Port) -> (SocketAddr, Pool, Arc<Socket>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let listener = Arc::new(port.associate(l, u64::MAX).unwrap());
    for _ in 0..4 {
        listener.accept(0);
    }
    let conns: Arc<Mutex<HashMap<u64, Socket>>> = Arc::default();
    let next_key = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let l2 = listener.clone();
    let pool = Pool::spawn(port, 2, move |port, c| match c.op {
        Op::Accept(Some(a)) => {
            let key = next_key.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let s = port.associate(a.fd, key).unwrap();
            // Into the table before the first receive: its completion may reach another
            // worker at once.
            let mut conns = conns.lock().unwrap();
            conns
                .entry(key)
                .or_insert(s)
                .recv(Vec::with_capacity(16 * 1024), 0);
            l2.accept(0);
        }
        Op::Accept(None) => {}
        Op::Recv(buf) => {
            let mut conns = conns.lock().unwrap();
            match c.result {
                Ok(n) if n > 0 => {
                    let s = &conns[&c.key];
                    s.send(buf, 0);
                    s.recv(Vec::with_capacity(16 * 1024), 0);
                }
                // End of stream or error: close our side.
                _ => drop(conns.remove(&c.key)),
            }
        }
        Op::Send(_) => {
            if let Err(e) = &c.result {
                if !c.is_aborted() {
                    eprintln!("echo send failed: {e}");
                }
            }
        }
        _ => {}
    })
    .unwrap();
    (addr, pool, listener)
}

fn echo_200_connections_random_sizes_every_byte_back_in_order(b: Backend) {
    let port = port(b, 2);
    let (addr, pool, listener) = echo_server(&port);
    let clients: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                let mut conns: Vec<TcpStream> =
                    (0..25).map(|_| TcpStream::connect(addr).unwrap()).collect();
                for c in &conns {
                    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                }
                let mut bytes = 0usize;
                for round in 0..6 {
                    for (i, c) in conns.iter_mut().enumerate() {
                        let n = rng.random_range(1..=40_000);
                        let msg: Vec<u8> = (0..n).map(|j| (j * 31 + i * 7 + round) as u8).collect();
                        c.write_all(&msg).unwrap();
                        let mut back = vec![0u8; n];
                        c.read_exact(&mut back).unwrap();
                        assert!(back == msg, "conn {i} round {round}: bytes differ");
                        bytes += n;
                    }
                }
                bytes
            })
        })
        .collect();
    let total: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(total > 0);
    drop(listener);
    pool.shutdown();
}

fn send_of_16_mib_completes_whole(b: Backend) {
    let port = port(b, 1);
    let (mut client, server) = tcp_pair();
    let sock = port.associate(server, 1).unwrap();
    let data: Vec<u8> = (0..16 << 20).map(|i: usize| (i % 251) as u8).collect();
    let expect = data.clone();
    sock.send(data, 42);
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; 16 << 20];
        client.read_exact(&mut got).unwrap();
        got
    });
    let c = next(&port);
    assert_eq!(c.user, 42);
    assert_eq!(c.result.unwrap(), 16 << 20);
    match c.op {
        Op::Send(SendBuf::Vec(v)) => assert_eq!(v.len(), 16 << 20, "buffer handed back"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(reader.join().unwrap() == expect);
}

/// 8 threads start numbered sends on one socket; the peer sees each thread's messages
/// whole, in order, none missing.
fn sends_from_8_threads_keep_each_threads_order(b: Backend) {
    const EACH: u32 = 2000;
    let port = port(b, 2);
    let (mut client, server) = tcp_pair();
    let sock = Arc::new(port.associate(server, 1).unwrap());
    let reader = std::thread::spawn(move || {
        let mut next_seq = [0u32; 8];
        let mut rec = [0u8; 64];
        for _ in 0..8 * EACH {
            client.read_exact(&mut rec[..4]).unwrap();
            let len = u32::from_le_bytes(rec[..4].try_into().unwrap()) as usize;
            client.read_exact(&mut rec[4..len]).unwrap();
            let t = rec[4] as usize;
            let seq = u32::from_le_bytes(rec[5..9].try_into().unwrap());
            assert_eq!(seq, next_seq[t], "thread {t} out of order");
            assert!(rec[9..len].iter().all(|&x| x == t as u8), "message torn");
            next_seq[t] += 1;
        }
        next_seq
    });
    let senders: Vec<_> = (0..8u8)
        .map(|t| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                for seq in 0..EACH {
                    let len = 9 + (seq as usize % 50);
                    let mut m = vec![t; len];
                    m[..4].copy_from_slice(&(len as u32).to_le_bytes());
                    m[4] = t;
                    m[5..9].copy_from_slice(&seq.to_le_bytes());
                    sock.send(m, 0);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let mut ok = 0;
    while ok < 8 * EACH {
        let c = next(&port);
        assert!(matches!(c.op, Op::Send(_)));
        c.result.unwrap();
        ok += 1;
    }
    assert_eq!(reader.join().unwrap(), [EACH; 8]);
}

fn vectored_send_sends_every_part_in_order(b: Backend) {
    let port = port(b, 1);
    let (mut client, server) = tcp_pair();
    let sock = port.associate(server, 1).unwrap();
    let parts: Vec<Bytes> = (0..64u8)
        .map(|i| Bytes::from(vec![i; 1 + i as usize * 997]))
        .collect();
    let expect: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    sock.send_vectored(parts, 0);
    let n = expect.len();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; n];
        client.read_exact(&mut got).unwrap();
        got
    });
    let c = next(&port);
    assert_eq!(c.result.unwrap(), n);
    assert!(matches!(c.op, Op::Send(SendBuf::Vectored(ref v)) if v.len() == 64));
    assert!(reader.join().unwrap() == expect);
}

fn receives_complete_in_start_order(b: Backend) {
    let port = port(b, 1);
    let (mut client, server) = tcp_pair();
    let sock = port.associate(server, 1).unwrap();
    for i in 0..10 {
        sock.recv(Vec::with_capacity(3), i);
    }
    client.write_all(b"aaabbbcccdddeeefffggghhhiiijjj").unwrap();
    let mut all = Vec::new();
    for i in 0..10 {
        let c = next(&port);
        assert_eq!(c.user, i, "receives completed out of start order");
        let Op::Recv(buf) = c.op else { panic!() };
        all.extend_from_slice(&buf);
    }
    assert_eq!(all, b"aaabbbcccdddeeefffggghhhiiijjj");
}

/// A socket with an in-flight receive, an in-flight send that cannot finish (the peer does
/// not read), and one more of each queued behind them: closing it completes each exactly
/// once, aborted, with its buffer.
fn close_aborts_every_pending_op_once_and_returns_buffers(b: Backend) {
    let port = port(b, 1);
    let (client, server) = tcp_pair();
    let sock = port.associate(server, 9).unwrap();
    sock.recv(Vec::with_capacity(100), 1);
    sock.recv(Vec::with_capacity(200), 2);
    sock.send(vec![7u8; 64 << 20], 3); // more than the socket buffers hold
    sock.send(vec![8u8; 10], 4);
    std::thread::sleep(Duration::from_millis(50));
    drop(sock);
    let mut got = HashMap::new();
    for _ in 0..4 {
        let c = next(&port);
        assert_eq!(c.key, 9);
        assert!(
            c.is_aborted(),
            "op {} completed with {:?}",
            c.user,
            c.result
        );
        let len = match &c.op {
            Op::Recv(buf) => buf.capacity(),
            Op::Send(buf) => buf.len(),
            other => panic!("unexpected {other:?}"),
        };
        assert!(
            got.insert(c.user, len).is_none(),
            "op {} completed twice",
            c.user
        );
    }
    assert_eq!(
        got,
        HashMap::from([(1, 100), (2, 200), (3, 64 << 20), (4, 10)])
    );
    assert!(port
        .get(Some(Duration::from_millis(100)))
        .unwrap()
        .is_none());
    assert_eq!(
        port.stats().sockets,
        0,
        "descriptor closed after the last completion"
    );
    drop(client);
}

fn cancel_aborts_pending_ops_and_socket_stays_usable(b: Backend) {
    let port = port(b, 1);
    let (mut client, server) = tcp_pair();
    let sock = port.associate(server, 2).unwrap();
    sock.recv(Vec::with_capacity(10), 1);
    sock.recv(Vec::with_capacity(10), 2);
    std::thread::sleep(Duration::from_millis(20));
    sock.cancel();
    let mut users = vec![];
    for _ in 0..2 {
        let c = next(&port);
        assert!(c.is_aborted());
        users.push(c.user);
    }
    users.sort();
    assert_eq!(users, [1, 2]);
    sock.recv(Vec::with_capacity(10), 3);
    client.write_all(b"after").unwrap();
    let c = next(&port);
    assert_eq!(c.user, 3);
    assert!(matches!(c.op, Op::Recv(ref v) if v == b"after"));
}

fn accept_and_connect_complete_through_the_port(b: Backend) {
    let port = port(b, 1);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let listener = port.associate(l, 1).unwrap();
    listener.accept(10);
    let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let conn = port.associate(raw, 2).unwrap();
    conn.connect(addr, 20);
    let mut accepted = None;
    for _ in 0..2 {
        let c = next(&port);
        match c.op {
            Op::Accept(a) => {
                assert_eq!((c.key, c.user), (1, 10));
                c.result.unwrap();
                accepted = a;
            }
            Op::Connect => {
                assert_eq!((c.key, c.user), (2, 20));
                c.result.unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let a = accepted.expect("accepted socket");
    assert_eq!(a.peer, Some(conn.local_addr().unwrap()));
    let mut server_side = a.into_tcp_stream();
    conn.send(&b"through the port"[..], 0);
    c_ok(next(&port));
    let mut got = [0u8; 16];
    server_side.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"through the port");
    // A refused connect completes with the error.
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let refused = port.associate(raw, 3).unwrap();
    refused.connect(free, 30);
    let c = next(&port);
    assert_eq!(
        c.result.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
}

fn c_ok(c: cport::Completion) {
    c.result.expect("completion failed");
}

fn udp_recv_from_and_send_to(b: Backend) {
    let port = port(b, 1);
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b_sock.local_addr().unwrap());
    let a = port.associate(a, 1).unwrap();
    let bp = port.associate(b_sock, 2).unwrap();
    bp.recv_from(Vec::with_capacity(1500), 7);
    a.send_to(vec![1, 2, 3, 4, 5], b_addr, 8);
    let mut seen = 0;
    for _ in 0..2 {
        let c = next(&port);
        match c.op {
            Op::SendTo(_) => {
                assert_eq!(c.result.unwrap(), 5);
                seen |= 1;
            }
            Op::RecvFrom(buf, from) => {
                assert_eq!(c.result.unwrap(), 5);
                assert_eq!(buf, [1, 2, 3, 4, 5]);
                assert_eq!(from, Some(a_addr));
                seen |= 2;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, 3);
}

fn recv_into_full_buffer_is_refused(b: Backend) {
    let port = port(b, 1);
    let (_client, server) = tcp_pair();
    let sock = port.associate(server, 1).unwrap();
    sock.recv(Vec::new(), 5);
    let c = next(&port);
    assert_eq!(c.user, 5);
    assert_eq!(
        c.result.unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
}

/// A handler starts a send, calls `Port::submit`, and waits (inside the handler) for the
/// peer to receive the bytes: they arrive although the handler has not returned to `get`.
fn submit_starts_a_handlers_operations_before_it_returns(b: Backend) {
    let port = port(b, 1);
    let (mut client, server) = tcp_pair();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let sock = port.associate(server, 1).unwrap();
    port.defer_submissions(); // as a Pool worker: operations wait for the next `get`
    port.post(0, 0, 0).unwrap();
    let c = next(&port); // now inside a handler pass
    assert!(matches!(c.op, Op::Post));
    sock.send(&b"early"[..], 0);
    port.submit();
    let mut got = [0u8; 5];
    client
        .read_exact(&mut got)
        .expect("the send was not submitted");
    assert_eq!(&got, b"early");
    c_ok(next(&port));
}

/// A ring of 8 submission entries (32 completion entries): 300 receives pushed at once
/// overflow the SQ (the backlog holds them) and 300 datagrams arriving while nobody reaps overflow the CQ (the
/// kernel's overflow list holds them). Every completion is delivered, once.
fn a_tiny_ring_loses_no_submission_and_no_completion(b: Backend) {
    const N: usize = 300;
    let port = cport::Port::builder()
        .backend(b)
        .ignore_env()
        .concurrency(1)
        .entries(8)
        .build()
        .unwrap();
    let mut socks = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..N {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        addrs.push(u.local_addr().unwrap());
        socks.push(port.associate(u, i as u64).unwrap());
    }
    // Started inside a handler pass, the receives are pushed without being submitted: the
    // 8-entry submission queue fills and the rest waits in the backlog until `submit`.
    port.post(u64::MAX, 0, 0).unwrap();
    assert!(matches!(next(&port).op, Op::Post));
    for (i, s) in socks.iter().enumerate() {
        s.recv_from(Vec::with_capacity(64), i as u64);
    }
    port.submit();
    // Let every receive reach the kernel before the datagrams come.
    std::thread::sleep(Duration::from_millis(100));
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (i, a) in addrs.iter().enumerate() {
        sender.send_to(&(i as u32).to_le_bytes(), a).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut seen = vec![false; N];
    for _ in 0..N {
        let c = next(&port);
        let Op::RecvFrom(buf, from) = c.op else {
            panic!("unexpected {:?}", c.op)
        };
        assert_eq!(from, Some(sender.local_addr().unwrap()));
        assert_eq!(buf, (c.key as u32).to_le_bytes());
        assert!(!seen[c.key as usize], "completion {} twice", c.key);
        seen[c.key as usize] = true;
    }
    assert!(seen.iter().all(|&x| x));
    assert!(port.get(Some(Duration::from_millis(50))).unwrap().is_none());
}

/// IOCP has one kernel queue: an I/O completion takes its place among the posts as it
/// happens. Here one worker (concurrency 1) always finds a post ready (each one it handles
/// posts the next), so it never has to wait in the kernel; the receive that completed and
/// the timer that fell due meanwhile must still reach it. (The port looks at the kernel at
/// least every 200 µs of such a run; the bound here is generous for a loaded machine. Without
/// that look neither would ever arrive.)
fn an_io_completion_is_not_starved_by_an_endless_stream_of_posts(backend: Backend) {
    let port = port(backend, 1);
    let (mut client, server) = tcp_pair();
    let s = port.associate(server, 7).unwrap();
    s.recv(Vec::with_capacity(64), 0);
    port.post_after(Duration::from_millis(1), 8, 0).unwrap();
    port.post(1, 0, 0).unwrap();
    client.write_all(b"ping").unwrap();
    // Let the kernel finish the receive and the timer fall due before the worker starts its
    // chain of posts.
    std::thread::sleep(Duration::from_millis(50));
    let bound = Duration::from_secs(2);
    let start = std::time::Instant::now();
    let (mut recv_at, mut timer_at) = (None, None);
    let mut passes = 0u64;
    while start.elapsed() < bound {
        let c = next(&port);
        passes += 1;
        match c.op {
            Op::Post => port.post(1, 0, 0).unwrap(),
            Op::Recv(buf) => {
                assert_eq!(c.key, 7);
                assert_eq!(&buf[..], b"ping");
                recv_at = Some(passes);
            }
            Op::Timer(_) => timer_at = Some(passes),
            other => panic!("unexpected completion {other:?}"),
        }
        if recv_at.is_some() && timer_at.is_some() {
            break;
        }
    }
    assert!(
        recv_at.is_some() && timer_at.is_some(),
        "within {bound:?} of posts ({passes} passes): receive at {recv_at:?}, timer at {timer_at:?}"
    );
}

/// Many threads start sends outside handler passes, so each send is flushed at once, while
/// one thread waits in the kernel as the poller. On io_uring only one flusher enters the
/// kernel at a time and the others leave their entries to it; an entry left behind would
/// never complete (the poller sleeps), and `next` would fail after 10 s. Bursts released by
/// a barrier, many times over, to make the flushers meet.
fn concurrent_flushers_never_strand_a_submission(b: Backend) {
    const THREADS: usize = 4;
    const SOCKETS: usize = 8;
    const BURSTS: usize = 300;
    const SIZE: usize = 32;
    let port = port(b, 2);
    let mut clients = Vec::new();
    let mut socks = Vec::new();
    for i in 0..THREADS * SOCKETS {
        let (c, s) = tcp_pair();
        clients.push(c);
        socks.push(port.associate(s, i as u64).unwrap());
    }
    let socks = Arc::new(socks);
    let per_burst = THREADS * SOCKETS;
    let go = Arc::new(std::sync::Barrier::new(THREADS + 1));
    let done = Arc::new(std::sync::Barrier::new(THREADS + 1));
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let (socks, go, done) = (socks.clone(), go.clone(), done.clone());
            std::thread::spawn(move || {
                for burst in 0..BURSTS {
                    go.wait();
                    for sock in &socks[t * SOCKETS..(t + 1) * SOCKETS] {
                        sock.send(vec![(burst % 251) as u8; SIZE], 0);
                    }
                    done.wait();
                }
            })
        })
        .collect();
    // This thread is the poller: it waits in the kernel while the bursts are flushed.
    for _ in 0..BURSTS {
        go.wait();
        for _ in 0..per_burst {
            let c = next(&port);
            assert!(matches!(c.op, Op::Send(_)), "unexpected {:?}", c.op);
            assert_eq!(c.result.unwrap(), SIZE);
        }
        done.wait();
    }
    for s in senders {
        s.join().unwrap();
    }
    for c in &mut clients {
        let mut got = vec![0u8; BURSTS * SIZE];
        c.read_exact(&mut got).unwrap();
        for (burst, chunk) in got.chunks(SIZE).enumerate() {
            assert!(chunk.iter().all(|&x| x == (burst % 251) as u8));
        }
    }
}

/// Data and the end of the stream arrive together: the first receive gets the data (less than
/// it asked for), and the next one still completes, with 0 — the epoll backend's shortcut
/// ("a short stream receive emptied the socket: wait for the next edge") must not wait for an
/// edge that the end of stream already gave.
fn a_short_receive_then_end_of_stream_completes_both(b: Backend) {
    // The first receive made after both arrived, or pending before they arrive (then one
    // event reports both, and the receive is attempted after it).
    for pending_first in [false, true] {
        let port = port(b, 1);
        let (mut client, server) = tcp_pair();
        let sock = port.associate(server, 1).unwrap();
        if pending_first {
            sock.recv(Vec::with_capacity(64), 1);
        }
        client.write_all(b"abc").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        if !pending_first {
            sock.recv(Vec::with_capacity(64), 1);
        }
        let c = next(&port);
        assert_eq!(c.result.unwrap(), 3);
        sock.recv(Vec::with_capacity(64), 2);
        let c = next(&port);
        assert_eq!(
            (c.user, c.result.unwrap()),
            (2, 0),
            "end of stream not delivered (receive pending first: {pending_first})"
        );
    }
}

/// A receive gets less than it asked for; more data comes later, one piece at a time: each
/// following receive completes (the next edge is waited for, never missed).
fn a_short_receive_then_more_data_completes_the_next(b: Backend) {
    let port = port(b, 1);
    let (mut client, server) = tcp_pair();
    let sock = port.associate(server, 1).unwrap();
    let mut got = Vec::new();
    for i in 0..50u8 {
        client.write_all(&[i; 7]).unwrap();
        sock.recv(Vec::with_capacity(1024), u64::from(i));
        let c = next(&port);
        let Op::Recv(buf) = c.op else { panic!() };
        got.extend_from_slice(&buf);
        // The next piece is written while no receive is pending, or while one is.
        if i % 2 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let want: Vec<u8> = (0..50u8).flat_map(|i| [i; 7]).collect();
    assert_eq!(got, want);
}

/// Several datagrams queued before the receives are started: each receive gets one (a
/// datagram shorter than the buffer does not mean the socket is empty).
fn queued_datagrams_each_complete_a_receive(b: Backend) {
    let port = port(b, 1);
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    a.connect(to).unwrap();
    rx.connect(a.local_addr().unwrap()).unwrap();
    for i in 0..5u8 {
        a.send(&[i; 3]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    let rx = port.associate(rx, 1).unwrap();
    for i in 0..5u8 {
        rx.recv(Vec::with_capacity(1500), u64::from(i));
        let c = next(&port);
        let Op::Recv(buf) = c.op else { panic!() };
        assert_eq!(buf, [i; 3]);
    }
}

/// A thread inside a handler pass (its `get` returned) shuts the port down while completions
/// are still queued: its next `get` answers `Closed`, not one more completion.
fn shutdown_inside_a_handler_pass_answers_closed_at_once(b: Backend) {
    let port = port(b, 1);
    // A pending receive: shutdown cancels it, and its completion must not be delivered.
    let (_client, server) = tcp_pair();
    let sock = port.associate(server, 1).unwrap();
    sock.recv(Vec::with_capacity(64), 1);
    for i in 0..3 {
        port.post(0, 0, i).unwrap();
    }
    assert_eq!(next(&port).user, 0);
    port.shutdown();
    assert!(port.get(Some(Duration::from_millis(10))).is_err());
    assert!(port.get(Some(Duration::from_millis(10))).is_err());
    assert_eq!(port.post(0, 0, 9), Err(cport::Closed));
}

/// Operations in flight at shutdown (a receive with no data, a send the peer does not read)
/// are handed back before `shutdown` returns; one started afterwards never reaches the
/// kernel: the peer receives nothing.
fn after_shutdown_nothing_is_in_flight_and_nothing_new_reaches_the_kernel(b: Backend) {
    let port = port(b, 1);
    let (mut client, server) = tcp_pair();
    let sock = port.associate(server, 1).unwrap();
    sock.recv(Vec::with_capacity(64), 1);
    // More than the socket buffers hold: the send stays in flight.
    sock.send(vec![7u8; 32 << 20], 2);
    std::thread::sleep(Duration::from_millis(50));
    assert!(port.stats().in_flight >= 2);
    port.shutdown();
    assert_eq!(
        port.stats().in_flight,
        0,
        "operations left in flight after shutdown"
    );
    // Drain what the cancelled send had already put on the wire.
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut sink = vec![0u8; 1 << 20];
    while let Ok(n) = client.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    sock.send(b"after shutdown".to_vec(), 3);
    assert_eq!(port.stats().in_flight, 0);
    let mut buf = [0u8; 64];
    match client.read(&mut buf) {
        Ok(n) => assert_eq!(
            n,
            0,
            "an operation started after shutdown reached the peer: {:?}",
            &buf[..n]
        ),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
    assert!(port.get(Some(Duration::from_millis(10))).is_err());
}

/// IOCP's `WSASend` is issued at once: a thread whose last `get` returned (it holds a slot)
/// and that did not opt in to deferral sends without calling anything else.
fn a_thread_that_called_get_sends_at_once(b: Backend) {
    let port = port(b, 1);
    let (mut client, server) = tcp_pair();
    let sock = port.associate(server, 1).unwrap();
    port.post(0, 0, 0).unwrap();
    next(&port); // this thread is now inside a handler pass
    sock.send(b"at once".to_vec(), 1);
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 7];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"at once");
}

/// A thread that opted in (as `Pool` workers do) keeps its handler's operations until its
/// next `get` (or `submit`), and they then go out.
fn a_thread_that_opted_in_defers_until_its_next_get(b: Backend) {
    let port = port(b, 1);
    port.defer_submissions();
    let (mut client, server) = tcp_pair();
    let sock = port.associate(server, 1).unwrap();
    port.post(0, 0, 0).unwrap();
    next(&port);
    sock.send(b"deferred".to_vec(), 1);
    client
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 8];
    assert!(
        client.read_exact(&mut buf).is_err(),
        "sent before the thread came back to get"
    );
    let c = next(&port);
    assert!(matches!(c.op, Op::Send(_)));
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"deferred");
}

/// `send` takes what a new user writes first: a `&'static str`, a byte-string literal, a
/// `String`; `c.result.is_aborted()` works after `c.op` was moved out.
fn send_takes_strings_and_byte_literals(b: Backend) {
    use cport::Aborted;
    let port = port(b, 1);
    let (mut client, server) = tcp_pair();
    let sock = port.associate(server, 1).unwrap();
    sock.send("text,", 1);
    sock.send(b"bytes,", 2);
    sock.send(Vec::new(), 3); // no annotation needed: an empty send completes with 0
    sock.send(format!("{}", 42), 4);
    for user in 1..=4 {
        let c = next(&port);
        assert_eq!(c.user, user);
        let Op::Send(buf) = c.op else { panic!() };
        assert!(!c.result.is_aborted());
        assert_eq!(c.result.unwrap(), buf.len());
    }
    let mut got = [0u8; 13];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"text,bytes,42");
    sock.recv(Vec::with_capacity(8), 5);
    sock.cancel();
    let c = next(&port);
    let Op::Recv(buf) = c.op else { panic!() };
    assert!(buf.is_empty());
    assert!(c.result.is_aborted());
}

/// A worker (deferring, inside a handler pass) starts a send inside `Port::blocking` and waits
/// there for the peer to receive it: the send must go out at once, not at the next `get`.
fn an_operation_started_inside_blocking_goes_out_at_once(b: Backend) {
    let port = port(b, 1);
    let (mut client, server) = tcp_pair();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let sock = port.associate(server, 1).unwrap();
    port.defer_submissions();
    port.post(0, 0, 0).unwrap();
    next(&port);
    let got = port.blocking(|| {
        sock.send(&b"inside"[..], 0);
        let mut got = [0u8; 6];
        client.read_exact(&mut got).map(|_| got)
    });
    assert_eq!(&got.expect("the send waited for the next get"), b"inside");
    c_ok(next(&port));
}

/// A peer sends data, one urgent (out-of-band) byte, and more data, then nothing: a receive
/// stops short at the urgent mark, and the next one must still get the data behind it (the
/// epoll backend's "a short receive emptied the socket" shortcut must not apply).
fn urgent_data_does_not_stall_the_next_receive(b: Backend) {
    let port = port(b, 1);
    let (client, server) = tcp_pair();
    client.set_nodelay(true).unwrap();
    let sock = port.associate(server, 1).unwrap();
    let client = socket2::SockRef::from(&client);
    let send = |bytes: &[u8], urgent: bool| {
        let n = if urgent {
            client.send_out_of_band(bytes).unwrap()
        } else {
            client.send(bytes).unwrap()
        };
        assert_eq!(n, bytes.len());
    };
    // The first receive is pending before anything arrives: one event then reports it all,
    // and the receive is attempted after that event.
    sock.recv(Vec::with_capacity(64), 0);
    std::thread::sleep(Duration::from_millis(20));
    send(b"abc", false);
    send(b"x", true);
    send(b"def", false);
    std::thread::sleep(Duration::from_millis(50));
    let mut got = Vec::new();
    while got.len() < 6 {
        if !got.is_empty() {
            sock.recv(Vec::with_capacity(64), 0);
        }
        let c = next(&port);
        let Op::Recv(buf) = c.op else { panic!() };
        assert!(c.result.unwrap() > 0, "end of stream before the data");
        got.extend_from_slice(&buf);
    }
    assert_eq!(got, b"abcdef");
}

/// The main thread starts receives on a port that a `Pool` serves and, between them, makes
/// its own timed blocking reads (`SO_RCVTIMEO`) on an unrelated socket: the port must never
/// make those fail with `Interrupted`. (io_uring runs an operation's follow-up work on the
/// thread that submitted it and interrupts that thread's timed blocking calls to do so; epoll
/// has no such work.)
fn timed_blocking_calls_are_not_interrupted(b: Backend, busy_workers: bool) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const ROUNDS: usize = 40;
    let port = port(b, 2);
    let received = Arc::new(AtomicUsize::new(0));
    let pool = {
        let received = received.clone();
        Pool::spawn(&port, 2, move |_, c| match c.op {
            Op::Recv(buf) if c.result.is_ok() => {
                assert_eq!(buf, b"x");
                received.fetch_add(1, Ordering::SeqCst);
            }
            // A stand-in for handlers that compute for a while: the workers are inside
            // handler passes, none waits in the kernel.
            Op::Post => std::thread::sleep(Duration::from_millis(3)),
            _ => {}
        })
        .unwrap()
    };
    let (_quiet_peer, quiet) = tcp_pair();
    quiet
        .set_read_timeout(Some(Duration::from_millis(15)))
        .unwrap();
    let mut socks = Vec::new();
    for round in 0..ROUNDS {
        if busy_workers {
            for _ in 0..8 {
                port.post(0, 0, 0).unwrap();
            }
        }
        let (mut client, server) = tcp_pair();
        let sock = port.associate(server, round as u64 + 1).unwrap();
        // Nothing to receive yet: the kernel keeps the receive armed until the write below.
        sock.recv(Vec::with_capacity(16), 0);
        socks.push(sock);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(3));
            client.write_all(b"x").unwrap();
            client
        });
        for _ in 0..3 {
            match (&quiet).read(&mut [0u8; 1]) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    panic!("round {round}: the thread's own blocking read was interrupted: {e}")
                }
                other => panic!("round {round}: unexpected {other:?}"),
            }
        }
        let _client = writer.join().unwrap();
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        while received.load(Ordering::SeqCst) <= round {
            assert!(
                std::time::Instant::now() < give_up,
                "round {round}: receive never completed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    pool.shutdown();
}

fn a_threads_own_timed_blocking_call_is_not_interrupted_while_workers_wait(b: Backend) {
    timed_blocking_calls_are_not_interrupted(b, false);
}

fn a_threads_own_timed_blocking_call_is_not_interrupted_while_workers_are_busy(b: Backend) {
    timed_blocking_calls_are_not_interrupted(b, true);
}
