//! What the soak's clients saw (counted on the load's one thread), and the small tools every
//! kind of client shares: a random generator, connect with a deadline, close with a reset.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::time::Duration;

use cport_mmo_proto::splitmix64;
use hdrhistogram::Histogram;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use super::options::STALL;
/// Hostile connections to the game, by kind.
pub(crate) const HOSTILE: [&str; 8] = [
    "size 0",
    "size 1",
    "size over the max",
    "unknown type",
    "wrong length for its type",
    "move before login",
    "garbage",
    "flood without reading",
];

/// What the clients saw (one thread: plain cells).
#[derive(Default)]
pub(crate) struct ClientCounts {
    pub(crate) echo_conns: Cell<u64>,
    pub(crate) echo_sent: Cell<u64>,
    pub(crate) echo_verified: Cell<u64>,
    pub(crate) echo_corrupt: Cell<u64>,
    pub(crate) echo_lost: Cell<u64>,
    pub(crate) echo_stalls: Cell<u64>,
    pub(crate) echo_dropped: Cell<u64>,
    pub(crate) churn_echo: Cell<u64>,
    pub(crate) churn_mmo: Cell<u64>,
    pub(crate) resets_echo: Cell<u64>,
    pub(crate) resets_mmo: Cell<u64>,
    pub(crate) connect_errors: Cell<u64>,
    pub(crate) never_readers: Cell<u64>,
    pub(crate) never_readers_closed: Cell<u64>,
    pub(crate) never_reader_bytes: Cell<u64>,
    pub(crate) hostile: [Cell<u64>; HOSTILE.len()],
    pub(crate) hostile_closed: [Cell<u64>; HOSTILE.len()],
    pub(crate) logins: Cell<u64>,
    pub(crate) login_fails: Cell<u64>,
    pub(crate) moves_sent: Cell<u64>,
    pub(crate) moves_answered: Cell<u64>,
    pub(crate) moves_unanswered: Cell<u64>,
    pub(crate) npc_moves_seen: Cell<u64>,
    pub(crate) players_dropped: Cell<u64>,
    pub(crate) bad_server_packets: Cell<u64>,
    pub(crate) answer_us: RefCell<Option<Histogram<u64>>>,
}

pub(crate) fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

/// A small per-task random generator.
pub(crate) struct Rand(pub(crate) u64);

impl Rand {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix64(self.0)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

pub(crate) async fn connect(addr: SocketAddr, t: &ClientCounts) -> Option<TcpStream> {
    match timeout(STALL, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Some(s),
        _ => {
            add(&t.connect_errors, 1);
            None
        }
    }
}

/// Connects with a 4 KiB receive buffer (a client that will not read: the server's queue
/// for it fills sooner), counting a failed connect as [`connect`] does.
pub(crate) async fn connect_small_recv_buffer(
    addr: SocketAddr,
    t: &ClientCounts,
) -> Option<TcpStream> {
    let sock = TcpSocket::new_v4().ok()?;
    let _ = sock.set_recv_buffer_size(4096);
    match timeout(STALL, sock.connect(addr)).await {
        Ok(Ok(s)) => Some(s),
        _ => {
            add(&t.connect_errors, 1);
            None
        }
    }
}

/// Closes with `SO_LINGER` 0: the peer gets a reset, not an end of stream.
pub(crate) fn reset(s: TcpStream) {
    if let Ok(s) = s.into_std() {
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    }
}
