//! Shared by the server tests: every networked test runs once per backend, over loopback,
//! with generous timeouts that fail a test instead of hanging it.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use cport_server::cport::Backend;
use cport_server::{CloseReason, Config, Handler, ServerHandle, Session, SizeField};

pub use cport_testkit::TIMEOUT;

/// The configuration every test starts from: the given backend, two workers, loopback.
pub fn config(backend: Backend) -> Config {
    Config {
        backend: Some(backend),
        threads: 2,
        ..Default::default()
    }
}

/// A client connection with `TCP_NODELAY` and read/write timeouts of [`TIMEOUT`].
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// Like [`connect`], with the receive buffer fixed small before the handshake (no
/// autotuning): a client that does not read then stops the server's sends quickly.
pub fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.set_recv_buffer_size(rcvbuf).unwrap();
    s.connect(&addr.into()).expect("connect");
    let s = TcpStream::from(s);
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// Closes with `SO_LINGER 0`: the peer gets a reset, and no `TIME_WAIT` is left behind.
pub fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Reads one length-prefixed packet (header included).
pub fn read_packet(s: &mut impl Read, size: SizeField) -> Vec<u8> {
    let w = size.width();
    let mut p = vec![0u8; w];
    s.read_exact(&mut p).expect("read a packet's size field");
    let total = match size {
        SizeField::U8 => p[0] as usize,
        SizeField::U16 => u16::from_le_bytes([p[0], p[1]]) as usize,
    };
    assert!(total > w, "packet size {total} too small");
    p.resize(total, 0);
    s.read_exact(&mut p[w..]).expect("read a packet's rest");
    p
}

/// How a connection ended, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// End of stream (the server closed normally).
    Eof,
    /// The server reset the connection.
    Reset,
}

/// Reads (and discards) until the server closes the connection; fails after [`TIMEOUT`] or
/// if more than 256 MiB arrive.
pub fn expect_closed(s: &mut TcpStream) -> End {
    let until = Instant::now() + TIMEOUT;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        assert!(
            Instant::now() < until,
            "the server did not close the connection"
        );
        match s.read(&mut buf) {
            Ok(0) => return End::Eof,
            Ok(n) => {
                total += n;
                assert!(total < 256 << 20, "the server kept sending");
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return End::Reset,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

/// Waits until `f()` holds, polling every millisecond; fails after [`TIMEOUT`].
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Writes `bytes` and flushes.
pub fn write(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).expect("write");
    s.flush().unwrap();
}

/// A handler that reports connects and closes on channels and runs `F` for each packet.
pub struct Probe<F> {
    connects: Sender<Session>,
    closes: Sender<(Session, CloseReason)>,
    on_packet: F,
}

/// The receiving ends of a [`Probe`].
pub struct Events {
    connects: Receiver<Session>,
    closes: Receiver<(Session, CloseReason)>,
}

/// A [`Probe`] running `on_packet`, and its [`Events`].
pub fn probe<F>(on_packet: F) -> (Probe<F>, Events)
where
    F: Fn(&Session, &[u8]) + Send + Sync + 'static,
{
    let (ctx, crx) = mpsc::channel();
    let (xtx, xrx) = mpsc::channel();
    (
        Probe {
            connects: ctx,
            closes: xtx,
            on_packet,
        },
        Events {
            connects: crx,
            closes: xrx,
        },
    )
}

impl<F> Handler for Probe<F>
where
    F: Fn(&Session, &[u8]) + Send + Sync + 'static,
{
    fn on_connect(&self, session: &Session) {
        let _ = self.connects.send(session.clone());
    }
    fn on_packet(&self, session: &Session, packet: &[u8]) {
        (self.on_packet)(session, packet)
    }
    fn on_close(&self, session: &Session, reason: &CloseReason) {
        let _ = self.closes.send((session.clone(), reason.clone()));
    }
}

impl Events {
    /// The next session that opened; fails after [`TIMEOUT`].
    pub fn connected(&self) -> Session {
        self.connects
            .recv_timeout(TIMEOUT)
            .expect("no session opened")
    }

    /// The next session that closed, with its reason; fails after [`TIMEOUT`].
    pub fn closed(&self) -> (Session, CloseReason) {
        self.closes
            .recv_timeout(TIMEOUT)
            .expect("no session closed")
    }

    /// Closes reported so far, without waiting.
    pub fn closed_so_far(&self) -> Vec<(Session, CloseReason)> {
        let mut v = Vec::new();
        loop {
            match self.closes.recv_timeout(Duration::ZERO) {
                Ok(c) => v.push(c),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return v,
            }
        }
    }
}

/// An `on_packet` that sends every packet back.
pub fn echo(session: &Session, packet: &[u8]) {
    let _ = session.send(packet.to_vec());
}

/// Waits until `n` sessions have closed completely (their `on_close` returned, their slots
/// are free and the counters say so); fails after [`TIMEOUT`].
pub fn wait_closed(handle: &ServerHandle, n: u64) {
    wait_until(&format!("{n} sessions have closed"), || {
        handle.metrics().closed_total() >= n
    });
}
