//! Sessions: a connection's identity, its ordered send queue, and how it closes.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use cport::{SendBuf, Socket};
use parking_lot::Mutex;

use crate::metrics::CloseReason;
use crate::server::{Core, ServerHandle, SEND};

/// Identifies a session: its slot in the session table and the slot's generation. An id
/// outlives its session harmlessly: once the session closed, the id never reaches the
/// session that reuses the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub(crate) u64);

impl SessionId {
    /// The slot, `0..max_sessions`; reused after the session closes (a game can use it as
    /// a player index).
    pub fn slot(self) -> usize {
        (self.0 & 0xFFFF_FFFF) as usize
    }

    /// The generation of the slot when the session opened.
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The id as a number (the completion key of the session's socket).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.slot(), self.generation())
    }
}

/// Most buffers gathered into one send (one `sendmsg` iovec array).
const MAX_GATHER: usize = 256;

pub(crate) struct SendState {
    /// `None` once the session is closing: nothing more is sent or received.
    pub(crate) socket: Option<Socket>,
    pub(crate) reason: Option<CloseReason>,
    queue: VecDeque<Bytes>,
    /// Bytes queued or in flight.
    pub(crate) queued: usize,
    sending: bool,
    /// Graceful close: once the queue drains, half-close and wait for the peer's end.
    flush_then_close: bool,
    /// The reason a graceful close will be reported with.
    pub(crate) flush_reason: Option<CloseReason>,
    /// The write half is shut; received bytes are discarded until the peer closes.
    pub(crate) draining: bool,
}

pub(crate) struct SessionInner {
    pub(crate) id: SessionId,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) core: Arc<Core>,
    pub(crate) st: Mutex<SendState>,
    /// Milliseconds since the server started, of the last byte received.
    pub(crate) last_rx: AtomicU64,
    /// Packet-rate window (touched only by the thread handling the session's receive).
    pub(crate) rate_window: AtomicU64,
    pub(crate) rate_count: AtomicU32,
}

/// A handle to a session. Cheap to clone, `Send + Sync`: handlers keep it and send on it from
/// any thread. Once the session is closed, sends are refused and the handle only identifies.
#[derive(Clone)]
pub struct Session {
    pub(crate) inner: Arc<SessionInner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("peer", &self.inner.peer)
            .finish()
    }
}

impl Session {
    pub(crate) fn new(
        id: SessionId,
        peer: Option<SocketAddr>,
        socket: Socket,
        core: Arc<Core>,
    ) -> Session {
        let now = core.now_ms();
        Session {
            inner: Arc::new(SessionInner {
                id,
                peer,
                core,
                st: Mutex::new(SendState {
                    socket: Some(socket),
                    reason: None,
                    queue: VecDeque::new(),
                    queued: 0,
                    sending: false,
                    flush_then_close: false,
                    flush_reason: None,
                    draining: false,
                }),
                last_rx: AtomicU64::new(now),
                rate_window: AtomicU64::new(now),
                rate_count: AtomicU32::new(0),
            }),
        }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.inner.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.inner.peer
    }

    /// The server this session belongs to.
    pub fn server(&self) -> ServerHandle {
        ServerHandle {
            core: self.inner.core.clone(),
        }
    }

    /// True until the session starts closing.
    pub fn is_open(&self) -> bool {
        let st = self.inner.st.lock();
        st.socket.is_some() && !st.flush_then_close
    }

    /// Bytes queued for this session and not yet sent.
    pub fn queued_bytes(&self) -> usize {
        self.inner.st.lock().queued
    }

    /// Queues one encoded packet. Bytes leave in the order `send` was called, whatever
    /// thread calls it; everything queued while a send is in flight goes out in the next
    /// (gathering) send. A shared [`Bytes`] is sent without a copy, so one packet can go to
    /// many sessions (broadcast).
    ///
    /// Returns false if the session is closing (nothing is queued), or if this packet would
    /// take the session's queue over its cap: the session is then closed as a slow consumer.
    pub fn send(&self, packet: impl Into<Bytes>) -> bool {
        let packet = packet.into();
        let len = packet.len();
        if len == 0 {
            return self.is_open();
        }
        let core = &self.inner.core;
        let mut st = self.inner.st.lock();
        if st.socket.is_none() || st.flush_then_close {
            return false;
        }
        if st.queued + len > core.cfg.max_send_queue {
            let queued = st.queued + len;
            drop(st);
            self.close(CloseReason::SlowConsumer { queued });
            return false;
        }
        st.queue.push_back(packet);
        st.queued += len;
        core.counters.queued_bytes.fetch_add(len as u64, Relaxed);
        core.counters.packets_out.fetch_add(1, Relaxed);
        if !st.sending {
            start_send(&mut st);
        }
        true
    }

    /// Closes the session: pending operations are cancelled, queued bytes dropped, and the
    /// handler's `on_close` runs once with `reason` (the first reason given wins).
    pub fn close(&self, reason: CloseReason) {
        let socket = {
            let mut st = self.inner.st.lock();
            if st.reason.is_none() {
                st.reason = Some(reason);
            }
            st.socket.take()
        };
        // Dropping the socket cancels its receive; that completion finishes the close.
        drop(socket);
    }

    /// Graceful close: stop taking new packets to send, send what is queued, half-close,
    /// and close when the peer has closed too (or when `close` is called, e.g. at a
    /// deadline). Reported with [`CloseReason::Local`].
    pub fn close_after_flush(&self) {
        self.close_after_flush_for(CloseReason::Local);
    }

    pub(crate) fn close_after_flush_for(&self, reason: CloseReason) {
        let mut st = self.inner.st.lock();
        if st.socket.is_none() || st.flush_then_close {
            return;
        }
        st.flush_then_close = true;
        st.flush_reason = Some(reason);
        if !st.sending {
            half_close(&mut st);
        }
    }

    /// A send finished (the completion of the one in flight).
    pub(crate) fn on_sent(&self, result: std::io::Result<usize>) {
        let core = &self.inner.core;
        let mut st = self.inner.st.lock();
        st.sending = false;
        if st.socket.is_none() {
            return; // closing: the close accounts for what was queued
        }
        match result {
            Ok(n) => {
                st.queued -= n;
                core.counters.queued_bytes.fetch_sub(n as u64, Relaxed);
                core.counters.bytes_out.fetch_add(n as u64, Relaxed);
                if !st.queue.is_empty() {
                    start_send(&mut st);
                } else if st.flush_then_close {
                    half_close(&mut st);
                }
            }
            Err(e) => {
                drop(st);
                self.close(CloseReason::from_io(&e));
            }
        }
    }
}

/// Sends everything queued (up to `MAX_GATHER` buffers) as one operation.
fn start_send(st: &mut SendState) {
    let Some(socket) = &st.socket else {
        return;
    };
    let n = st.queue.len().min(MAX_GATHER);
    let buf = if n == 1 {
        SendBuf::Bytes(st.queue.pop_front().expect("queue not empty"))
    } else {
        SendBuf::Vectored(st.queue.drain(..n).collect())
    };
    st.sending = true;
    socket.send(buf, SEND);
}

fn half_close(st: &mut SendState) {
    if let Some(socket) = &st.socket {
        st.draining = true;
        if let Err(e) = socket.shutdown(std::net::Shutdown::Write) {
            tracing::debug!("half-close failed: {e}");
        }
    }
}
