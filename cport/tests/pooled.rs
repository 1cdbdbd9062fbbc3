//! Receives into a buffer pool (`Socket::recv_pooled`): every byte arrives, in order; a pool
//! that runs out makes receives wait (nothing lost, no error); a waiting receive can be
//! cancelled; end of stream and half-close; a pool of one buffer. Every test runs on every
//! backend.

mod common;

use cport_testkit::per_backend;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use common::{next, port, tcp_pair};
use cport::{Aborted, Backend, Op, PooledBuf};
use rand::{Rng, SeedableRng};

per_backend!(
    pooled_receives_deliver_every_byte_in_order,
    a_receive_that_finds_no_buffer_waits_for_one_and_loses_nothing,
    a_pool_of_one_buffer_serves_many_connections_in_turn,
    a_receive_waiting_for_a_buffer_can_be_cancelled,
    end_of_stream_after_a_half_close_completes_with_no_buffer,
    a_fast_sender_is_slowed_not_lost_when_buffers_return_slowly,
    a_pool_of_another_port_is_refused,
    waiting_receives_hold_no_buffer,
);

fn pooled(c: cport::Completion) -> (std::io::Result<usize>, Option<PooledBuf>) {
    match c.op {
        Op::RecvPooled(b) => (c.result, b),
        other => panic!("expected a pooled receive, got {other:?}"),
    }
}

fn pooled_receives_deliver_every_byte_in_order(backend: Backend) {
    let port = port(backend, 1);
    let pool = port.buf_pool(4, 61).unwrap();
    let (mut client, server) = tcp_pair();
    let server = port.associate(server, 1).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let data: Vec<u8> = (0..200_000).map(|_| rng.random()).collect();
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || client.write_all(&data).map(|_| client))
    };
    let mut got = Vec::with_capacity(data.len());
    while got.len() < data.len() {
        server.recv_pooled(&pool, 0);
        let (res, buf) = pooled(next(&port));
        let n = res.unwrap();
        let buf = buf.expect("data comes in a buffer");
        assert_eq!(n, buf.len());
        assert!(
            n > 0 && n <= 61,
            "a receive delivers at most one buffer: {n}"
        );
        got.extend_from_slice(&buf);
    }
    assert_eq!(got, data);
    drop(writer.join().unwrap().unwrap());
    server.recv_pooled(&pool, 0);
    let (res, buf) = pooled(next(&port));
    assert_eq!((res.unwrap(), buf.is_none()), (0, true), "end of stream");
}

fn a_receive_that_finds_no_buffer_waits_for_one_and_loses_nothing(backend: Backend) {
    let port = port(backend, 1);
    let pool = port.buf_pool(2, 64).unwrap();
    let mut held = Vec::new();
    let mut keep = Vec::new();
    for i in 0..2u8 {
        let (mut c, s) = tcp_pair();
        let s = port.associate(s, 1).unwrap();
        c.write_all(&[i; 10]).unwrap();
        s.recv_pooled(&pool, 0);
        let (res, buf) = pooled(next(&port));
        assert_eq!(res.unwrap(), 10);
        held.push(buf.unwrap());
        keep.push((c, s));
    }
    // Both buffers are held: a third receive with data waiting must wait, not fail.
    let (mut c, s) = tcp_pair();
    let s = port.associate(s, 3).unwrap();
    c.write_all(b"waiting for a buffer").unwrap();
    s.recv_pooled(&pool, 0);
    let nothing = port.get(Some(Duration::from_millis(300))).unwrap();
    assert!(nothing.is_none(), "completed without a buffer: {nothing:?}");
    assert_eq!(pool.stats().waiting, 1);
    drop(held.pop());
    let c3 = next(&port);
    assert_eq!(c3.key, 3);
    let (res, buf) = pooled(c3);
    assert_eq!(res.unwrap(), 20);
    assert_eq!(&buf.unwrap()[..], b"waiting for a buffer");
    assert!(pool.stats().waits >= 1);
    assert_eq!(pool.stats().waiting, 0);
}

fn a_pool_of_one_buffer_serves_many_connections_in_turn(backend: Backend) {
    let port = port(backend, 1);
    let pool = port.buf_pool(1, 16).unwrap();
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for i in 0..20u64 {
        let (c, s) = tcp_pair();
        let s = port.associate(s, i).unwrap();
        s.recv_pooled(&pool, 0);
        clients.push(c);
        servers.push(s);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("message {i:02} .. tail").as_bytes())
            .unwrap();
    }
    // Each connection's 18 bytes arrive as a 16-byte and a 2-byte piece, through the one
    // buffer, one receive at a time.
    let mut got = vec![Vec::new(); 20];
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.iter().any(|g| g.len() < 18) {
        assert!(Instant::now() < deadline, "stalled: {got:?}");
        let Some(c) = port.get(Some(Duration::from_secs(5))).unwrap() else {
            panic!(
                "stalled: {:?} {:?}",
                pool.stats(),
                got.iter().map(|g| g.len()).collect::<Vec<_>>()
            );
        };
        let key = c.key as usize;
        let (res, buf) = pooled(c);
        let buf = buf.expect("data");
        assert_eq!(res.unwrap(), buf.len());
        got[key].extend_from_slice(&buf);
        drop(buf); // the buffer goes back before the next receive of this socket starts
        if got[key].len() < 18 {
            servers[key].recv_pooled(&pool, 0);
        }
    }
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g, format!("message {i:02} .. tail").as_bytes());
    }
    assert!(
        pool.stats().waits > 0,
        "one buffer for 20 sockets must wait"
    );
}

fn a_receive_waiting_for_a_buffer_can_be_cancelled(backend: Backend) {
    let port = port(backend, 1);
    let pool = port.buf_pool(1, 32).unwrap();
    let (mut c1, s1) = tcp_pair();
    let s1 = port.associate(s1, 1).unwrap();
    c1.write_all(b"first").unwrap();
    s1.recv_pooled(&pool, 0);
    let (_, held) = pooled(next(&port));
    let held = held.unwrap();
    let (mut c2, s2) = tcp_pair();
    let s2 = port.associate(s2, 2).unwrap();
    c2.write_all(b"second").unwrap();
    s2.recv_pooled(&pool, 9);
    assert!(port
        .get(Some(Duration::from_millis(200)))
        .unwrap()
        .is_none());
    s2.cancel();
    let c = next(&port);
    assert_eq!((c.key, c.user), (2, 9));
    assert!(c.result.is_aborted(), "{:?}", c.result);
    assert!(matches!(c.op, Op::RecvPooled(None)));
    // The buffer coming back now wakes nobody stale; the socket still receives.
    drop(held);
    s2.recv_pooled(&pool, 0);
    let (res, buf) = pooled(next(&port));
    assert_eq!(res.unwrap(), 6);
    assert_eq!(&buf.unwrap()[..], b"second");
}

fn end_of_stream_after_a_half_close_completes_with_no_buffer(backend: Backend) {
    let port = port(backend, 1);
    let pool = port.buf_pool(4, 128).unwrap();
    let (mut client, server) = tcp_pair();
    let server = port.associate(server, 1).unwrap();
    client.write_all(b"last words").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    server.recv_pooled(&pool, 0);
    let (res, buf) = pooled(next(&port));
    assert_eq!(res.unwrap(), 10);
    assert_eq!(&buf.unwrap()[..], b"last words");
    server.recv_pooled(&pool, 0);
    let (res, buf) = pooled(next(&port));
    assert_eq!(res.unwrap(), 0);
    assert!(buf.is_none());
    // Half-closed: the other direction still works.
    server.send(&b"reply"[..], 0);
    let c = next(&port);
    assert_eq!(c.result.unwrap(), 5);
    let mut reply = [0u8; 5];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"reply");
    assert_eq!(pool.stats().waiting, 0);
}

fn a_fast_sender_is_slowed_not_lost_when_buffers_return_slowly(backend: Backend) {
    let port = port(backend, 2);
    let pool = port.buf_pool(2, 512).unwrap();
    let mut socks = Vec::new();
    let mut writers = Vec::new();
    let mut expect = Vec::new();
    for i in 0..3u64 {
        let (mut c, s) = tcp_pair();
        socks.push(port.associate(s, i).unwrap());
        let data: Vec<u8> = (0..300_000u32)
            .map(|j| (j as u64 * 31 + i * 7) as u8)
            .collect();
        expect.push(data.clone());
        writers.push(std::thread::spawn(move || {
            c.write_all(&data).unwrap();
            c
        }));
    }
    for s in &socks {
        s.recv_pooled(&pool, 0);
    }
    let mut got = vec![Vec::new(); 3];
    let mut held: Vec<PooledBuf> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.iter().zip(&expect).any(|(g, e)| g.len() < e.len()) {
        assert!(Instant::now() < deadline, "stalled");
        let c = match port.get(Some(Duration::from_millis(50))).unwrap() {
            Some(c) => c,
            None => {
                // Every buffer held: give one back (a slow program's pace).
                held.remove(0);
                continue;
            }
        };
        let key = c.key as usize;
        let (res, buf) = pooled(c);
        let buf = buf.expect("data");
        assert_eq!(res.unwrap(), buf.len());
        got[key].extend_from_slice(&buf);
        // Hold every other buffer for a while: the pool runs dry again and again.
        if got[key].len() % 2 == 0 {
            held.push(buf);
        }
        if held.len() > 1 {
            held.remove(0);
        }
        if got[key].len() < expect[key].len() {
            socks[key].recv_pooled(&pool, 0);
        }
    }
    assert_eq!(got, expect);
    for w in writers {
        drop(w.join().unwrap());
    }
}

fn a_pool_of_another_port_is_refused(backend: Backend) {
    let port_a = port(backend, 1);
    let port_b = port(backend, 1);
    let pool_b = port_b.buf_pool(2, 64).unwrap();
    let (_c, s) = tcp_pair();
    let s = port_a.associate(s, 1).unwrap();
    s.recv_pooled(&pool_b, 5);
    let c = next(&port_a);
    assert_eq!(c.user, 5);
    assert_eq!(
        c.result.unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
}

fn waiting_receives_hold_no_buffer(backend: Backend) {
    let port = port(backend, 1);
    let pool = port.buf_pool(2, 64).unwrap();
    let mut pairs = Vec::new();
    for i in 0..50u64 {
        let (c, s) = tcp_pair();
        let s = port.associate(s, i).unwrap();
        s.recv_pooled(&pool, 0);
        pairs.push((c, s));
    }
    assert!(port
        .get(Some(Duration::from_millis(200)))
        .unwrap()
        .is_none());
    if backend == Backend::Iocp {
        // IOCP takes the buffer when the receive is issued (documented on `recv_pooled`):
        // the first two hold the buffers, the other 48 wait for one, and data for a
        // receive that holds one completes.
        assert_eq!(pool.stats().waiting, 48);
        pairs[0].0.write_all(b"ping").unwrap();
        let c = next(&port);
        assert_eq!(c.key, 0);
        let (res, buf) = pooled(c);
        assert_eq!((res.unwrap(), &buf.unwrap()[..]), (4, &b"ping"[..]));
        return;
    }
    // 50 receives wait with 2 buffers and none of them waits for a buffer: they wait for
    // data, holding nothing.
    let st = pool.stats();
    assert_eq!((st.waiting, st.waits), (0, 0), "{st:?}");
    if backend == Backend::Epoll {
        assert_eq!(st.free_listed, 2, "{st:?}");
    }
    // And the two buffers still serve any of them.
    for key in [17usize, 33, 4] {
        pairs[key].0.write_all(b"ping").unwrap();
        let c = next(&port);
        assert_eq!(c.key, key as u64);
        let (res, buf) = pooled(c);
        assert_eq!((res.unwrap(), &buf.unwrap()[..]), (4, &b"ping"[..]));
    }
}
