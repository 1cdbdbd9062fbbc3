//! Tests that watch this process's file descriptors (fd numbers, fd counts): they run one
//! at a time, each backend in turn, so no other test opens or closes fds meanwhile.

mod common;

use cport_testkit::per_backend;

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use common::{next, open_fds, port, raw, tcp_pair};
use cport::{Backend, Op};

static FDS: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

per_backend!(
    reused_fd_number_never_gets_a_stale_completion,
    port_dropped_with_operations_in_flight_closes_everything,
);

/// Close a socket with a receive pending, then make new sockets until one gets the same fd
/// number: only the new socket's completions arrive, under its own key.
fn reused_fd_number_never_gets_a_stale_completion(b: Backend) {
    let _one_at_a_time = FDS.lock();
    let port = port(b, 1);
    let (_c1, s1) = tcp_pair();
    let old_fd = raw(&s1);
    let old = port.associate(s1, 100).unwrap();
    old.recv(Vec::with_capacity(16), 1);
    drop(old);
    let c = next(&port);
    assert_eq!((c.key, c.is_aborted()), (100, true));
    let mut keep = Vec::new();
    let (mut client, server) = loop {
        let (c, s) = tcp_pair();
        if raw(&s) == old_fd {
            break (c, s);
        }
        if raw(&c) == old_fd {
            break (s, c);
        }
        assert!(keep.len() < 100, "fd number {old_fd} never reused");
        keep.push((c, s));
    };
    let new = port.associate(server, 200).unwrap();
    new.recv(Vec::with_capacity(16), 2);
    client.write_all(b"fresh").unwrap();
    let c = next(&port);
    assert_eq!((c.key, c.user), (200, 2));
    assert!(matches!(c.op, Op::Recv(ref v) if v == b"fresh"));
    assert!(port
        .get(Some(Duration::from_millis(100)))
        .unwrap()
        .is_none());
}

/// Drop every handle while receives, a blocked send and an accept are in flight: nothing
/// crashes and every descriptor the port owned is closed.
fn port_dropped_with_operations_in_flight_closes_everything(b: Backend) {
    let _one_at_a_time = FDS.lock();
    let before = open_fds();
    {
        let port = port(b, 2);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let listener = port.associate(l, 1).unwrap();
        listener.accept(0);
        let mut peers = Vec::new();
        let mut socks = Vec::new();
        for i in 0..10 {
            let (c, s) = tcp_pair();
            let s = port.associate(s, 10 + i).unwrap();
            s.recv(Vec::with_capacity(1024), 0);
            s.send(vec![0u8; 8 << 20], 0);
            peers.push(c);
            socks.push(s);
        }
        port.post(0, 0, 0).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(socks);
        drop(listener);
        drop(port);
        drop(peers);
    }
    assert_eq!(open_fds(), before, "descriptors leaked");
}
