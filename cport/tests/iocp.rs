//! Windows only: what the IOCP backend must do beyond the shared contract tests — the
//! contexts `AcceptEx` and `ConnectEx` leave to update, the family of the socket made for an
//! accept, the Windows error codes a completion carries, and UDP's ICMP resets.
#![cfg(windows)]

mod common;

use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::{next, port, tcp_pair};
use cport::{Backend, Op, Port, Socket};

/// Listens on `addr`, accepts one connection through the port; returns the listener's
/// socket, the client side and the accepted connection associated under key 2.
fn accept_one(port: &Port, addr: &str) -> (Socket, TcpStream, Socket) {
    let l = TcpListener::bind(addr).unwrap();
    let at = l.local_addr().unwrap();
    let listener = port.associate(l, 1).unwrap();
    listener.accept(0);
    let client = TcpStream::connect(at).unwrap();
    let c = next(port);
    let Op::Accept(Some(a)) = c.op else {
        panic!("accept failed: {:?}", c.result)
    };
    assert_eq!(a.peer, Some(client.local_addr().unwrap()));
    let sock = port.associate(a.fd, 2).unwrap();
    (listener, client, sock)
}

/// `SO_UPDATE_ACCEPT_CONTEXT`: without it `getpeername`, `getsockname` and `shutdown` fail
/// on a socket accepted by `AcceptEx` (`WSAENOTCONN`).
#[test]
fn an_accepted_socket_knows_its_addresses_and_shuts_down() {
    let port = port(Backend::Iocp, 1);
    let (_l, mut client, sock) = accept_one(&port, "127.0.0.1:0");
    assert_eq!(sock.peer_addr().unwrap(), client.local_addr().unwrap());
    assert_eq!(sock.local_addr().unwrap(), client.peer_addr().unwrap());
    sock.shutdown(Shutdown::Write).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0, "end of stream");
}

/// The socket made for `AcceptEx` has the listener's family.
#[test]
fn an_ipv6_listener_accepts_ipv6_connections() {
    let port = port(Backend::Iocp, 1);
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    }
    let (_l, client, sock) = accept_one(&port, "[::1]:0");
    let peer = sock.peer_addr().unwrap();
    assert!(matches!(peer, SocketAddr::V6(_)), "{peer}");
    assert_eq!(peer, client.local_addr().unwrap());
}

/// `SO_UPDATE_CONNECT_CONTEXT`: a socket connected by `ConnectEx` (bound first by the
/// backend, as `connect` would) knows its peer and shuts down.
#[test]
fn a_connected_socket_knows_its_peer_and_shuts_down() {
    let port = port(Backend::Iocp, 1);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = l.local_addr().unwrap();
    let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let conn = port.associate(raw, 1).unwrap();
    conn.connect(at, 0);
    let c = next(&port);
    assert!(matches!(c.op, Op::Connect));
    c.result.unwrap();
    let (mut server, _) = l.accept().unwrap();
    assert_eq!(conn.peer_addr().unwrap(), at);
    assert_eq!(conn.local_addr().unwrap(), server.peer_addr().unwrap());
    conn.shutdown(Shutdown::Write).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(server.read(&mut [0u8; 8]).unwrap(), 0, "end of stream");
}

/// A cancelled operation's error is Windows' own: `ERROR_OPERATION_ABORTED` (995).
#[test]
fn an_aborted_operation_fails_with_error_operation_aborted() {
    let port = port(Backend::Iocp, 1);
    let (_client, server) = tcp_pair();
    let sock = port.associate(server, 1).unwrap();
    sock.recv(Vec::with_capacity(16), 0);
    // Issued (the receive is pending in the kernel), then cancelled.
    std::thread::sleep(Duration::from_millis(20));
    sock.cancel();
    let c = next(&port);
    assert!(c.is_aborted());
    assert_eq!(c.result.unwrap_err().raw_os_error(), Some(995));
}

/// A reset connection fails a pending receive with `ConnectionReset` (`WSAECONNRESET`, from
/// the packet's NTSTATUS by `WSAGetOverlappedResult`).
#[test]
fn a_reset_fails_a_pending_receive_with_connection_reset() {
    let port = port(Backend::Iocp, 1);
    let (client, server) = tcp_pair();
    let sock = port.associate(server, 1).unwrap();
    sock.recv(Vec::with_capacity(16), 0);
    std::thread::sleep(Duration::from_millis(20));
    // Linger 0: closing sends a RST instead of a FIN.
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    let c = next(&port);
    assert!(matches!(c.op, Op::Recv(_)));
    assert_eq!(c.result.unwrap_err().kind(), ErrorKind::ConnectionReset);
}

/// Windows reports an ICMP "port unreachable" for an earlier `sendto` as `WSAECONNRESET` on
/// the next receive of a UDP socket; the backend turns that off (`SIO_UDP_CONNRESET`), as
/// Linux does not report it on an unconnected socket either.
#[test]
fn a_udp_receive_is_not_failed_by_an_earlier_send_to_a_closed_port() {
    let port = port(Backend::Iocp, 1);
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let closed_at = closed.local_addr().unwrap();
    drop(closed);
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = u.local_addr().unwrap();
    let sock = port.associate(u, 1).unwrap();
    sock.send_to(&b"nobody"[..], closed_at, 0);
    let c = next(&port);
    assert!(matches!(c.op, Op::SendTo(_)));
    c.result.unwrap();
    std::thread::sleep(Duration::from_millis(50));
    sock.recv_from(Vec::with_capacity(64), 0);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.send_to(b"hello", at).unwrap();
    let c = next(&port);
    let Op::RecvFrom(buf, from) = c.op else {
        panic!("unexpected {:?}", c.op)
    };
    assert_eq!(c.result.unwrap(), 5);
    assert_eq!(
        (&buf[..], from),
        (&b"hello"[..], Some(peer.local_addr().unwrap()))
    );
}

/// `Backend::Auto` is IOCP on Windows; the Linux backends are refused clearly.
#[test]
fn auto_is_iocp_and_the_linux_backends_are_unsupported() {
    let p = Port::builder()
        .backend(Backend::Auto)
        .ignore_env()
        .build()
        .unwrap();
    assert_eq!(p.backend(), Backend::Iocp);
    for b in [Backend::Uring, Backend::Epoll] {
        let e = Port::builder().backend(b).ignore_env().build().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{b}: {e}");
    }
}
