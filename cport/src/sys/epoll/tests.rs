//! The epoll backend on its own: readiness, cancel, connect and the wake-up.

use super::*;
use crate::sys::driver::Desc;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Registers a stream socket as the port would: its state made, then registered.
fn add(ep: &Epoll, sock: u64, fd: RawFd) -> Arc<SockState> {
    let io = ep.new_sock(true);
    ep.register(&io, sock, fd).unwrap();
    io
}

/// A connected loopback pair: the accepted side non-blocking (for the backend) and the
/// client side blocking (for the test to write with).
fn pair() -> (OwnedFd, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    (OwnedFd::from(server), client)
}

/// Waits (up to 5 s) until `token` completes; returns its result and everything seen.
fn wait_for(ep: &Epoll, token: u64, out: &mut Vec<Raw>) -> i32 {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = out.iter().find(|r| r.token == token) {
            return r.res;
        }
        assert!(Instant::now() < end, "token {token} did not complete");
        ep.wait(Some(Instant::now() + Duration::from_millis(100)), true, out)
            .unwrap();
    }
}

fn recv_op(fd: &OwnedFd, buf: &mut [u8]) -> OpDesc {
    OpDesc {
        fd: fd.as_raw_fd(),
        desc: Desc::Recv {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        },
    }
}

/// A non-blocking client socket registered as socket 2, with a connect to `addr` pushed as
/// operation 20; the address is returned with it (the pushed operation points into it).
fn start_connect(
    ep: &Epoll,
    addr: std::net::SocketAddr,
) -> (OwnedFd, Arc<SockState>, Box<socket2::SockAddr>) {
    let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    client.set_nonblocking(true).unwrap();
    let client = OwnedFd::from(client);
    let io = add(ep, 2, client.as_raw_fd());
    let target = Box::new(socket2::SockAddr::from(addr));
    let connect = OpDesc {
        fd: client.as_raw_fd(),
        desc: Desc::Connect {
            addr: target.as_ptr().cast(),
            len: target.len(),
        },
    };
    ep.push(&io, 20, connect);
    (client, io, target)
}

#[test]
fn recv_waits_for_data() {
    let ep = Epoll::new().unwrap();
    let (server, mut client) = pair();
    let io1 = add(&ep, 1, server.as_raw_fd());
    let mut buf = vec![0u8; 64];
    ep.push(&io1, 10, recv_op(&server, &mut buf));
    let mut out = Vec::new();
    ep.flush(&mut out);
    assert!(out.is_empty(), "nothing to read yet: {out:?}");
    ep.wait(
        Some(Instant::now() + Duration::from_millis(20)),
        true,
        &mut out,
    )
    .unwrap();
    assert!(out.is_empty(), "still nothing to read: {out:?}");

    client.write_all(b"hello").unwrap();
    assert_eq!(wait_for(&ep, 10, &mut out), 5);
    assert_eq!(out.len(), 1);
    assert_eq!(&buf[..5], b"hello");
    ep.deregister(&io1, 1, server.as_raw_fd());
}

#[test]
fn cancelled_recv_completes_once() {
    let ep = Epoll::new().unwrap();
    let (server, mut client) = pair();
    let io1 = add(&ep, 1, server.as_raw_fd());
    let mut buf = vec![0u8; 64];
    ep.push(&io1, 10, recv_op(&server, &mut buf));
    let mut out = Vec::new();
    ep.flush(&mut out);
    assert!(out.is_empty());

    ep.cancel(&io1, 10);
    ep.flush(&mut out);
    assert_eq!(out, vec![Raw::new(10, -libc::ECANCELED)]);
    // Unknown now: a second cancel does nothing.
    ep.cancel(&io1, 10);
    client.write_all(b"late").unwrap();
    ep.wait(
        Some(Instant::now() + Duration::from_millis(50)),
        true,
        &mut out,
    )
    .unwrap();
    ep.flush(&mut out);
    assert_eq!(out.len(), 1, "completed more than once: {out:?}");
    ep.deregister(&io1, 1, server.as_raw_fd());
}

#[test]
fn wake_interrupts_wait() {
    let ep = Epoll::new().unwrap();
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            ep.wake();
        });
        let mut out = Vec::new();
        ep.wait(None, true, &mut out).unwrap();
        assert!(out.is_empty());
    });
    assert!(start.elapsed() < Duration::from_secs(5));
    // The wake-up was consumed: the next wait times out.
    let mut out = Vec::new();
    let t = Instant::now();
    ep.wait(Some(t + Duration::from_millis(30)), true, &mut out)
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(25));
}

#[test]
fn accept_and_connect() {
    let ep = Epoll::new().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = OwnedFd::from(listener);
    let io1 = add(&ep, 1, listener.as_raw_fd());
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut storage_len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let accept = OpDesc {
        fd: listener.as_raw_fd(),
        desc: Desc::Accept {
            addr: &mut storage,
            len: &mut storage_len,
        },
    };
    ep.push(&io1, 10, accept);
    let mut out = Vec::new();
    ep.flush(&mut out);
    assert!(out.is_empty(), "no connection yet: {out:?}");

    let (client, io2, _target) = start_connect(&ep, addr);
    ep.flush(&mut out);
    assert_eq!(wait_for(&ep, 20, &mut out), 0);
    let fd = wait_for(&ep, 10, &mut out);
    assert!(fd >= 0, "accept failed: {fd}");
    // SAFETY: the accept returned a new descriptor that nothing else owns.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    assert_eq!(storage.ss_family, libc::AF_INET as libc::sa_family_t);
    ep.deregister(&io2, 2, client.as_raw_fd());
    ep.deregister(&io1, 1, listener.as_raw_fd());
}

#[test]
fn connect_refused() {
    let ep = Epoll::new().unwrap();
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // The listener is closed: nothing listens on `addr` any more.
    let (client, io2, _target) = start_connect(&ep, addr);
    let mut out = Vec::new();
    ep.flush(&mut out);
    assert_eq!(wait_for(&ep, 20, &mut out), -libc::ECONNREFUSED);
    ep.deregister(&io2, 2, client.as_raw_fd());
}
