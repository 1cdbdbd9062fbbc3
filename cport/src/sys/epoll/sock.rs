//! Each socket's state: two *sides*, read (accept, recv, recvmsg) and write (connect, send,
//! sendmsg), each a FIFO of pending operations with its readiness; the driving of a side
//! (attempt the front operation until one would block); and the dispatch index that finds a
//! socket's state from the token an event carries.

use std::sync::Arc;

use parking_lot::Mutex;

use super::attempt::{attempt, Attempt};
use crate::fifo::Fifo;
use crate::sys::driver::{Desc, OpDesc, Raw};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    Read,
    Write,
}

pub(super) fn dir_of(desc: &Desc) -> Dir {
    if desc.kind().reads() {
        Dir::Read
    } else {
        Dir::Write
    }
}

/// One started, not yet completed operation.
pub(super) struct Pending {
    pub(super) token: u64,
    pub(super) op: OpDesc,
    /// A connect whose `connect` call returned `EINPROGRESS`.
    pub(super) connecting: bool,
    /// Cancelled while a thread was attempting it.
    pub(super) cancelled: bool,
}

#[derive(Default)]
pub(super) struct Side {
    /// Pending operations, attempted front first.
    pub(super) ops: Fifo<Pending>,
    /// Bumped by every epoll event for this side.
    pub(super) seq: u64,
    /// The `seq` at which the front operation last would have blocked.
    pub(super) blocked_at: Option<u64>,
    /// A thread is in the system call for the front operation.
    pub(super) busy: bool,
}

#[derive(Default)]
pub(super) struct Sides {
    pub(super) read: Side,
    pub(super) write: Side,
    /// An event reported the peer's end of stream, a hang-up, an error or urgent data
    /// (`HUP_EVENTS`): a short receive no longer proves the receive queue empty.
    pub(super) hup: bool,
}

impl Sides {
    pub(super) fn get(&mut self, dir: Dir) -> &mut Side {
        match dir {
            Dir::Read => &mut self.read,
            Dir::Write => &mut self.write,
        }
    }
}

/// The state of one registered socket (`<Epoll as Driver>::Sock`), owned by the port's
/// socket entry; the dispatch index holds a second reference for events.
#[derive(Default)]
pub(crate) struct SockState {
    pub(super) sides: Mutex<Sides>,
    /// A stream socket: a receive that returned less than it asked for took everything
    /// there was (see `drive`).
    pub(super) stream: bool,
}

/// Event dispatch: the registered sockets' states by table token, at the token's slot index
/// (the port's tokens are generation-tagged slab indices: `generation << 32 | index`), so a
/// look-up is an index and a compare, not a hash; a token of another generation finds
/// nothing (a socket deregistered meanwhile).
#[derive(Default)]
pub(super) struct Index(Vec<Option<(u64, Arc<SockState>)>>);

impl Index {
    fn slot(token: u64) -> usize {
        (token & 0xFFFF_FFFF) as usize
    }

    pub(super) fn get(&self, token: u64) -> Option<&Arc<SockState>> {
        match self.0.get(Self::slot(token)) {
            Some(Some((t, s))) if *t == token => Some(s),
            _ => None,
        }
    }

    pub(super) fn insert(&mut self, token: u64, s: Arc<SockState>) {
        let i = Self::slot(token);
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        if self.0[i].replace((token, s)).is_some() {
            tracing::warn!(
                token,
                "epoll: a slot registered twice; the old entry is dropped"
            );
        }
    }

    pub(super) fn remove(&mut self, token: u64) {
        if let Some(slot) = self.0.get_mut(Self::slot(token)) {
            if matches!(slot, Some((t, _)) if *t == token) {
                *slot = None;
            }
        }
    }
}

impl SockState {
    /// Attempts the operations of one side, front first, until one would block.
    pub(super) fn drive(&self, dir: Dir, out: &mut Vec<Raw>) {
        let mut sides = self.sides.lock();
        loop {
            let hup = sides.hup;
            let side = sides.get(dir);
            if side.busy || side.blocked_at == Some(side.seq) {
                // Another thread is at it (and will see new readiness and new operations),
                // or nothing changed since the front operation would have blocked.
                return;
            }
            let Some(front) = side.ops.front() else {
                return;
            };
            let (token, op, connecting) = (front.token, front.op, front.connecting);
            let seq = side.seq;
            side.busy = true;
            drop(sides);

            let result = attempt(op, connecting);

            sides = self.sides.lock();
            let side = sides.get(dir);
            side.busy = false;
            let Some(front) = side.ops.front_mut().filter(|p| p.token == token) else {
                // Cannot happen: a busy front operation is only ever marked, never removed.
                tracing::error!(token, "epoll: operation vanished during its attempt");
                continue;
            };
            match result.finished() {
                Some((res, buf)) => {
                    side.ops.pop_front();
                    // A stream receive that got less than it asked for emptied the socket's
                    // receive queue: the next receive waits for the next edge instead of
                    // trying a system call that would only say EAGAIN (tokio does the same).
                    // Not after an end-of-stream or error event, which has no later edge;
                    // not if an event came during the attempt.
                    let len = match op.desc {
                        Desc::Recv { len, .. } => Some(len),
                        // SAFETY: the operation (still in the port's table) holds the pool.
                        Desc::RecvPool { pool } => Some(unsafe { &*pool }.size()),
                        _ => None,
                    };
                    let drained = len
                        .is_some_and(|len| self.stream && res > 0 && (res as usize) < len && !hup);
                    side.blocked_at = (drained && side.seq == seq).then_some(seq);
                    out.push(Raw { token, res, buf });
                }
                None => {
                    if result == Attempt::Started {
                        front.connecting = true;
                    }
                    if front.cancelled {
                        side.ops.pop_front();
                        side.blocked_at = None;
                        out.push(Raw::new(token, -libc::ECANCELED));
                    } else if side.seq == seq {
                        side.blocked_at = Some(seq);
                        return;
                    }
                    // Else readiness arrived during the attempt: try again.
                }
            }
        }
    }
}
