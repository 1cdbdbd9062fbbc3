//! The operation table: every operation from its start to its completion, and every
//! associated socket with its lanes (the per-socket order of operations).

use std::io;

use crate::fifo::Fifo;
use crate::op::{aborted, Completion, OpData};
use crate::slab::Slab;
use crate::sys::{self, AnyDriver, OpKind, OwnedSock, PoolMem, Raw, SockIo};

pub(super) struct OpEntry {
    pub(super) sock: u64,
    pub(super) key: u64,
    pub(super) user: u64,
    pub(super) data: OpData,
    /// Bytes already sent by earlier submissions of a stream send; for a pooled receive, the
    /// pool's count of returned buffers when it was submitted (`PoolMem::park`).
    pub(super) done: usize,
    pub(super) state: OpState,
}

/// Where an operation is between its start and its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpState {
    /// Waiting in its socket's lane behind the operation in flight: the kernel has not seen
    /// it, so cancelling it completes it at once.
    Queued,
    /// Handed to the backend (a short stream send's continuation too): only the backend can
    /// complete it.
    InFlight,
    /// In flight, and the backend was asked to cancel it: it completes aborted, or with its
    /// result if it finished first; a short send is not continued.
    Cancelling,
    /// A pooled receive that found no free buffer: it waits in its pool's queue (not in the
    /// kernel) until a buffer comes back; cancelling it completes it at once.
    Parked,
}

pub(super) struct SockEntry {
    pub(super) fd: OwnedSock,
    /// The backend's state for this socket (`Driver::new_sock`).
    pub(super) io: SockIo,
    pub(super) key: u64,
    pub(super) stream: bool,
    /// Receives in start order; the front one is the one in flight.
    pub(super) recv_q: Fifo<u64>,
    /// Sends in start order; the front one is the one in flight.
    pub(super) send_q: Fifo<u64>,
    /// Accepts and connects, all in flight.
    pub(super) free: Vec<u64>,
    pub(super) closed: bool,
}

impl SockEntry {
    pub(super) fn pending(&self) -> usize {
        self.recv_q.len() + self.send_q.len() + self.free.len()
    }
}

#[derive(Default)]
pub(super) struct Table {
    pub(super) ops: Slab<OpEntry>,
    pub(super) socks: Slab<SockEntry>,
}

impl Table {
    /// Starts an operation on socket `sock`: submits it, or queues it behind the one in
    /// flight in its lane. Returns a completion instead if the socket is closed.
    pub(super) fn start(
        &mut self,
        d: &AnyDriver,
        sock: u64,
        data: OpData,
        user: u64,
    ) -> Option<Completion> {
        let Some(s) = self.socks.get_mut(sock) else {
            return Some(fail(0, user, data, closed_error()));
        };
        if s.closed {
            return Some(fail(s.key, user, data, closed_error()));
        }
        let kind = data.kind();
        let key = s.key;
        let token = self.ops.insert(OpEntry {
            sock,
            key,
            user,
            data,
            done: 0,
            state: OpState::Queued,
        });
        let s = self.socks.get_mut(sock).expect("socket checked above");
        // The lanes: receives, and sends, one in flight each in start order; accepts and
        // connects all at once.
        let submit_now = match kind {
            OpKind::Recv => {
                s.recv_q.push_back(token);
                s.recv_q.len() == 1
            }
            OpKind::Send => {
                s.send_q.push_back(token);
                s.send_q.len() == 1
            }
            OpKind::Accept | OpKind::Connect => {
                s.free.push(token);
                true
            }
        };
        if submit_now {
            self.submit(d, token);
        }
        None
    }

    /// Hands operation `token` to the backend.
    pub(super) fn submit(&mut self, d: &AnyDriver, token: u64) {
        let Some(op) = self.ops.get_mut(token) else {
            return;
        };
        let Some(s) = self.socks.get(op.sock) else {
            return;
        };
        let desc = op.data.desc(sys::raw_of(&s.fd), op.done);
        debug_assert_ne!(
            op.state,
            OpState::Cancelling,
            "a cancelled send is not continued"
        );
        op.state = OpState::InFlight;
        if let OpData::RecvPool(pool) = &op.data {
            op.done = pool.mem().returns() as usize;
        }
        d.push(&s.io, token, desc);
    }

    /// A buffer came back to `pool` and receive `token` waited for one: submits it again. A
    /// waiter that is gone (cancelled, closed) passes the turn to the next.
    pub(super) fn resubmit_parked(&mut self, d: &AnyDriver, pool: &PoolMem, mut token: u64) {
        loop {
            if self
                .ops
                .get(token)
                .is_some_and(|op| op.state == OpState::Parked)
            {
                self.submit(d, token);
                return;
            }
            match pool.pop_waiter() {
                Some(t) => token = t,
                None => return,
            }
        }
    }

    /// What a pooled receive's result means before it completes: a buffer that holds
    /// nothing goes back to the pool, and a receive that found no buffer waits for one
    /// (`true`: it does not complete now).
    fn pooled(&mut self, d: &AnyDriver, raw: &mut Raw) -> bool {
        let Some(op) = self.ops.get_mut(raw.token) else {
            return false;
        };
        let OpData::RecvPool(pool) = &op.data else {
            return false;
        };
        // Most results are bytes in a buffer: nothing to do here (and no handle taken).
        let empty_buffer = raw.buf.is_some() && raw.res <= 0;
        if !empty_buffer && raw.res != -sys::NO_BUFFER {
            return false;
        }
        let pool = pool.clone();
        let mem = pool.mem();
        if let Some(bid) = raw.buf.filter(|_| raw.res <= 0) {
            raw.buf = None;
            if let Some(w) = mem.give(bid) {
                self.resubmit_parked(d, mem, w);
            }
        }
        let Some(op) = self.ops.get_mut(raw.token) else {
            return false;
        };
        if raw.res != -sys::NO_BUFFER {
            return false;
        }
        if op.state == OpState::Cancelling {
            raw.res = -sys::ABORTED;
            return false;
        }
        if mem.park(raw.token, op.done as u64) {
            op.state = OpState::Parked;
        } else {
            self.submit(d, raw.token);
        }
        true
    }

    /// Applies one raw completion. Returns the port completion, or `None` if the token is
    /// stale or the operation continues (a short stream send).
    pub(super) fn finish(&mut self, d: &AnyDriver, mut raw: Raw) -> Option<Completion> {
        if self.pooled(d, &mut raw) {
            return None;
        }
        let op = self.ops.get_mut(raw.token)?;
        let stream = self.socks.get(op.sock).is_some_and(|s| s.stream);
        let is_send = matches!(op.data, OpData::Send(..) | OpData::SendTo(..));
        if is_send && raw.res >= 0 {
            op.done += raw.res as usize;
            if stream
                && raw.res > 0
                && op.done < op.data.send_len()
                && op.state != OpState::Cancelling
            {
                self.submit(d, raw.token);
                return None;
            }
        }
        let op = self.ops.remove(raw.token)?;
        let total = op.done;
        // A stream send stopped short only because it was cancelled: it did not complete.
        let res = if is_send && stream && raw.res >= 0 && total < op.data.send_len() {
            -sys::ABORTED
        } else {
            raw.res
        };
        let sock = op.sock;
        if let Some(s) = self.socks.get_mut(sock) {
            let next = match op.data.kind() {
                OpKind::Recv => {
                    remove_token(&mut s.recv_q, raw.token);
                    s.recv_q.front().copied()
                }
                OpKind::Send => {
                    remove_token(&mut s.send_q, raw.token);
                    s.send_q.front().copied()
                }
                OpKind::Accept | OpKind::Connect => {
                    s.free.retain(|t| *t != raw.token);
                    None
                }
            };
            if let Some(next) = next {
                self.submit(d, next);
            }
            self.reap_socket(d, sock);
        }
        let (result, kind) = op.data.finish(res, total, raw.buf);
        Some(Completion {
            key: op.key,
            user: op.user,
            result,
            op: kind,
        })
    }

    /// Cancels every pending operation of `sock` (and closes it if `close`). Operations not
    /// yet submitted complete here; those in flight are cancelled in the backend.
    pub(super) fn cancel(&mut self, d: &AnyDriver, sock: u64, close: bool) -> Vec<Completion> {
        let mut done = Vec::new();
        let Some(s) = self.socks.get_mut(sock) else {
            return done;
        };
        if close {
            s.closed = true;
        }
        let mut tokens: Vec<u64> = s.free.clone();
        for q in [&mut s.recv_q, &mut s.send_q] {
            // Keep the submitted front; the rest never reached the kernel.
            tokens.extend(q.front().copied());
            for t in q.split_off(1) {
                if let Some(op) = self.ops.remove(t) {
                    done.push(fail(op.key, op.user, op.data, aborted()));
                }
            }
        }
        for t in tokens {
            if let Some(op) = self.ops.get_mut(t) {
                if op.state == OpState::Parked {
                    // Not in the kernel: done now (its pool skips the stale token).
                    let op = self.ops.remove(t).expect("looked up above");
                    let s = self.socks.get_mut(sock).expect("socket checked above");
                    remove_token(&mut s.recv_q, t);
                    done.push(fail(op.key, op.user, op.data, aborted()));
                    continue;
                }
                if op.state == OpState::InFlight {
                    op.state = OpState::Cancelling;
                    let io = &self.socks.get(sock).expect("socket checked above").io;
                    d.cancel(io, t);
                }
            }
        }
        self.reap_socket(d, sock);
        done
    }

    /// Removes a closed socket with nothing pending; its descriptor closes here.
    pub(super) fn reap_socket(&mut self, d: &AnyDriver, sock: u64) {
        let Some(s) = self.socks.get(sock) else {
            return;
        };
        if s.closed && s.pending() == 0 {
            d.deregister(&s.io, sock, sys::raw_of(&s.fd));
            self.socks.remove(sock);
        }
    }
}

pub(super) fn remove_token(q: &mut Fifo<u64>, token: u64) {
    let at = q.iter().position(|t| *t == token);
    if let Some(i) = at {
        q.remove(i);
    }
}

pub(super) fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket is closed")
}

/// A completion for an operation that could not be started (the kernel never saw it).
pub(super) fn fail(key: u64, user: u64, data: OpData, e: io::Error) -> Completion {
    let (_, op) = data.finish(-crate::sys::ABORTED, 0, None);
    Completion {
        key,
        user,
        result: Err(e),
        op,
    }
}
