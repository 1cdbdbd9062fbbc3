//! A blocking course client for tests: one socket, one packet at a time, and the client's
//! [`View`] of the board, which it fails on every packet that contradicts (the game's tests,
//! the tokio game's tests and the stress tests all use it). It panics on what a test should
//! not meet (a closed connection, a bad packet, nothing within [`TIMEOUT`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use cport_mmo_proto::{frame_len, name, ClientPacket, Direction, ServerPacket, SizeField};

use crate::view::View;

/// How long the client waits for a packet (or to write one) before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A course client over a blocking socket. Its [`View`] is what the server told it: every
/// object it was sent an ADD for and no REMOVE since, where the last ADD/MOVE put it. The
/// view's fields read as the client's own (`c.id`, `c.pos`, `c.picture`: the client derefs to
/// its view), as the tests have always written them.
pub struct Client {
    /// The socket.
    pub s: TcpStream,
    /// The header width.
    pub h: SizeField,
    /// What it sees.
    pub view: View,
    buf: Vec<u8>,
}

impl Deref for Client {
    type Target = View;

    fn deref(&self) -> &View {
        &self.view
    }
}

impl DerefMut for Client {
    fn deref_mut(&mut self) -> &mut View {
        &mut self.view
    }
}

impl Client {
    /// Connects (no login yet).
    pub fn connect(addr: SocketAddr, h: SizeField) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_write_timeout(Some(TIMEOUT)).unwrap();
        Client {
            s,
            h,
            view: View::new(),
            buf: Vec::new(),
        }
    }

    /// Connects and logs in; returns the client after its `SC_LOGIN_INFO` (the ADDs that
    /// follow are left to read).
    pub fn login(addr: SocketAddr, h: SizeField, who: &str) -> Client {
        let mut c = Client::connect(addr, h);
        c.send(&ClientPacket::Login { name: name(who) });
        match c.recv() {
            p @ ServerPacket::LoginInfo { .. } => c.apply(&p),
            other => panic!("expected SC_LOGIN_INFO, got {other:?}"),
        }
        c
    }

    /// Sends one packet.
    pub fn send(&mut self, p: &ClientPacket) {
        self.raw(&p.encode(self.h));
    }

    /// Sends raw bytes.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    /// Sends `CS_MOVE`.
    pub fn move_(&mut self, direction: Direction, move_time: u32) {
        self.send(&ClientPacket::Move {
            direction,
            move_time,
        });
    }

    /// The next packet, decoded (not applied to the picture); fails after [`TIMEOUT`].
    pub fn recv(&mut self) -> ServerPacket {
        self.try_recv(TIMEOUT)
            .unwrap_or_else(|| panic!("client {}: no packet within {TIMEOUT:?}", self.id))
    }

    /// The next packet if one arrives within `wait`.
    pub fn try_recv(&mut self, wait: Duration) -> Option<ServerPacket> {
        let until = Instant::now() + wait;
        loop {
            if let Some(len) = frame_len(&self.buf, self.h) {
                let p = ServerPacket::decode(&self.buf[..len], self.h).unwrap_or_else(|e| {
                    panic!("client {}: bad packet from the server: {e}", self.id)
                });
                self.buf.drain(..len);
                return Some(p);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => panic!("client {}: the server closed the connection", self.id),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("client {}: read failed: {e}", self.id),
            }
        }
    }

    /// Applies a packet to the view ([`View::apply`]), failing on one that contradicts it.
    pub fn apply(&mut self, p: &ServerPacket) {
        if let Err(m) = self.view.apply(p) {
            panic!("client {}: {m}", self.id);
        }
    }

    /// The next packet, applied to the picture.
    pub fn recv_apply(&mut self) -> ServerPacket {
        let p = self.recv();
        self.apply(&p);
        p
    }

    /// Reads and applies packets until its own `SC_MOVE_OBJECT` with `move_time`; returns
    /// that packet's position.
    pub fn pump_until_own_move(&mut self, move_time: u32) -> (u16, u16) {
        let until = Instant::now() + TIMEOUT;
        loop {
            assert!(Instant::now() < until, "client {}: no own MOVE", self.id);
            let p = self.recv_apply();
            if let ServerPacket::MoveObject {
                id,
                x,
                y,
                move_time: t,
            } = p
            {
                if id as u32 == self.id && t == move_time {
                    return (x as u16, y as u16);
                }
            }
        }
    }

    /// Nothing more arrives within `wait`.
    pub fn assert_quiet(&mut self, wait: Duration) {
        if let Some(p) = self.try_recv(wait) {
            panic!("client {}: unexpected packet {p:?}", self.id);
        }
    }

    /// Reads (and discards) until the server closes the connection; fails after [`TIMEOUT`].
    pub fn expect_closed(mut self) {
        let until = Instant::now() + TIMEOUT;
        self.s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut chunk = [0u8; 4096];
        loop {
            assert!(
                Instant::now() < until,
                "the server did not close the connection"
            );
            match self.s.read(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("the server did not close the connection: {e}"),
            }
        }
    }
}
