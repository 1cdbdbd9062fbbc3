//! Close reasons and the server's counters.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::codec::FrameError;

/// Why a session was closed. Every close is logged with its reason (through `tracing`: see
/// [`Server`](crate::Server) for the levels and the subscriber it needs) and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed its side (end of stream).
    PeerClosed,
    /// The peer reset the connection (`ECONNRESET`, `EPIPE`; Windows: `WSAECONNRESET`).
    Reset,
    /// Another I/O error, with its errno where there is one.
    Io(io::ErrorKind, Option<i32>),
    /// The byte stream could not be framed (bad size field, packet too large).
    Protocol(FrameError),
    /// The handler refused what the peer sent (unknown type, bad field…).
    Rejected(String),
    /// More than the per-session cap of bytes queued for sending: the peer does not read.
    SlowConsumer {
        /// Bytes queued when the cap was passed.
        queued: usize,
    },
    /// No byte received for longer than the idle timeout.
    IdleTimeout,
    /// More packets per second than the per-session cap.
    RateLimited,
    /// Closed by the program ([`Session::close`](crate::Session::close)).
    Local,
    /// Closed by server shutdown (after its queued bytes were sent, or at the deadline).
    Shutdown,
}

impl CloseReason {
    pub(crate) fn from_io(e: &io::Error) -> CloseReason {
        // By kind, not errno: Linux's ECONNRESET/EPIPE and Windows' WSAECONNRESET (10054)
        // are the same reset to the user.
        match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => CloseReason::Reset,
            kind => CloseReason::Io(kind, e.raw_os_error()),
        }
    }

    /// A short stable name, as used in metrics.
    pub fn name(&self) -> &'static str {
        REASONS[self.index()]
    }

    fn index(&self) -> usize {
        match self {
            CloseReason::PeerClosed => 0,
            CloseReason::Reset => 1,
            CloseReason::Io(..) => 2,
            CloseReason::Protocol(_) => 3,
            CloseReason::Rejected(_) => 4,
            CloseReason::SlowConsumer { .. } => 5,
            CloseReason::IdleTimeout => 6,
            CloseReason::RateLimited => 7,
            CloseReason::Local => 8,
            CloseReason::Shutdown => 9,
        }
    }

    /// Whether the peer is to blame (logged at info rather than debug).
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            CloseReason::Protocol(_)
                | CloseReason::Rejected(_)
                | CloseReason::SlowConsumer { .. }
                | CloseReason::IdleTimeout
                | CloseReason::RateLimited
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("peer closed the connection"),
            CloseReason::Reset => f.write_str("connection reset by peer"),
            CloseReason::Io(kind, Some(errno)) => write!(f, "I/O error: {kind} (errno {errno})"),
            CloseReason::Io(kind, None) => write!(f, "I/O error: {kind}"),
            CloseReason::Protocol(e) => write!(f, "protocol error: {e}"),
            CloseReason::Rejected(why) => write!(f, "rejected: {why}"),
            CloseReason::SlowConsumer { queued } => {
                write!(f, "slow consumer: {queued} bytes queued for sending")
            }
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::RateLimited => f.write_str("packet rate over the cap"),
            CloseReason::Local => f.write_str("closed by the server"),
            CloseReason::Shutdown => f.write_str("server shutdown"),
        }
    }
}

/// Metric names of the close reasons, in counter order.
pub const REASONS: [&str; 10] = [
    "peer_closed",
    "reset",
    "io_error",
    "protocol",
    "rejected",
    "slow_consumer",
    "idle_timeout",
    "rate_limited",
    "local",
    "shutdown",
];

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) open: AtomicU64,
    pub(crate) closed: [AtomicU64; REASONS.len()],
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) packets_in: AtomicU64,
    pub(crate) packets_out: AtomicU64,
    pub(crate) sends: AtomicU64,
    pub(crate) queued_bytes: AtomicU64,
}

impl Counters {
    pub(crate) fn closed(&self, reason: &CloseReason) {
        self.closed[reason.index()].fetch_add(1, Relaxed);
        self.open.fetch_sub(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        Metrics {
            accepted: self.accepted.load(Relaxed),
            refused: self.refused.load(Relaxed),
            open: self.open.load(Relaxed),
            closed: std::array::from_fn(|i| self.closed[i].load(Relaxed)),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            packets_in: self.packets_in.load(Relaxed),
            packets_out: self.packets_out.load(Relaxed),
            sends: self.sends.load(Relaxed),
            queued_bytes: self.queued_bytes.load(Relaxed),
        }
    }
}

/// A snapshot of the server's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Metrics {
    /// Connections accepted as sessions.
    pub accepted: u64,
    /// Connections refused because the session limit was reached.
    pub refused: u64,
    /// Sessions open now.
    pub open: u64,
    /// Sessions closed, by reason (indexed like [`REASONS`]).
    pub closed: [u64; REASONS.len()],
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent (completed sends).
    pub bytes_out: u64,
    /// Packets received (framed).
    pub packets_in: u64,
    /// Packets queued for sending.
    pub packets_out: u64,
    /// Send operations started (each carries every packet its session had queued, up to
    /// 256 buffers: `packets_out / sends` is the coalescing).
    pub sends: u64,
    /// Bytes queued for sending and not yet sent, over all sessions.
    pub queued_bytes: u64,
}

impl Metrics {
    /// Sessions closed for `reason` (by its [`CloseReason::name`]).
    pub fn closed_for(&self, name: &str) -> u64 {
        REASONS
            .iter()
            .position(|r| *r == name)
            .map_or(0, |i| self.closed[i])
    }

    /// Sessions closed, all reasons.
    pub fn closed_total(&self) -> u64 {
        self.closed.iter().sum()
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sessions open={} accepted={} refused={} closed={} | in {} B / {} pkts, out {} B / {} pkts / {} sends, queued {} B",
            self.open,
            self.accepted,
            self.refused,
            self.closed_total(),
            self.bytes_in,
            self.packets_in,
            self.bytes_out,
            self.packets_out,
            self.sends,
            self.queued_bytes
        )?;
        let reasons: Vec<String> = REASONS
            .iter()
            .zip(self.closed)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        if !reasons.is_empty() {
            write!(f, " | closed by {}", reasons.join(" "))?;
        }
        Ok(())
    }
}
