//! The epoll backend: readiness turned into completions.
//!
//! * Every registered socket has two *sides*, read (accept, recv, recvmsg) and write (connect,
//!   send, sendmsg), each a FIFO of pending operations behind one per-socket lock. That state
//!   lives in the port's socket entry (a `SockIo`, passed with `push` and `cancel`, so they
//!   take no lock of this backend's); sockets are registered edge-triggered with the socket's
//!   table token as the event data, and an event finds the state through a dispatch index
//!   (token slot → state; one lock per batch of events), the one structure this backend keeps
//!   per socket.
//! * `push` only records the operation and puts its side on the `todo` list (no system call:
//!   it runs under the port's table lock). `flush` then attempts the front operation of every
//!   listed side with its non-blocking system call, outside every global lock. What finishes
//!   is appended to the caller's `out`; what would block waits for readiness.
//! * Lost wake-ups: each side has a readiness sequence number that every epoll event for it
//!   bumps (under the socket lock). An attempt notes the number before the system call; if the
//!   call would block and the number has moved meanwhile, the attempt is made again, otherwise
//!   the side is marked blocked at that number, and the next event (which bumps it) retries.
//! * One attempt per side at a time: a side is `busy` while some thread is in the system call
//!   for its front operation; other threads leave it to that thread, which goes on with the
//!   next operation when the front one finishes.
//! * Cancel: an operation nobody is attempting is removed and completes with `-ECANCELED`
//!   from the `done` list (delivered by the next `flush` or `wait`); the operation being
//!   attempted is only marked, and completes with `-ECANCELED` if its attempt would block
//!   (or with its real result if it finished first).
//! * Connect: the first attempt calls `connect`; after `EINPROGRESS` later attempts read
//!   `SO_ERROR`, and, when it is 0, check with `getpeername` that the socket really is
//!   connected (an unconnected socket also reports itself writable).

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::wait::{errno, WaitSet, ALARM, WAKE};
use super::{Backend, Desc, Driver, OpDesc, Raw, SockIo};

/// Most events taken by one `epoll_wait` of the single poller.
const MAX_EVENTS: usize = 256;
/// Most events taken by one `epoll_wait` when every idle thread waits (`wait_shared`) and
/// no other thread waits with this one; with another waiter, one event is taken, and the
/// kernel hands the rest to the next waiter (it wakes another while events remain) instead
/// of this thread attempting every ready socket's system call before it runs a handler and
/// then waking a thread for the completions it cannot take.
const SHARED_EVENTS: usize = 64;

const READ_EVENTS: u32 =
    (libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
const WRITE_EVENTS: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;
/// Events after which a short stream receive does not prove the receive queue empty: the end
/// of the stream, a hang-up or an error (no later edge), or urgent data (a receive stops short
/// at the urgent mark with data behind it).
const HUP_EVENTS: u32 =
    (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLPRI) as u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

fn dir_of(desc: &Desc) -> Dir {
    if desc.kind().reads() {
        Dir::Read
    } else {
        Dir::Write
    }
}

/// One started, not yet completed operation.
struct Pending {
    token: u64,
    op: OpDesc,
    /// A connect whose `connect` call returned `EINPROGRESS`.
    connecting: bool,
    /// Cancelled while a thread was attempting it.
    cancelled: bool,
}

#[derive(Default)]
struct Side {
    /// Pending operations, attempted front first.
    ops: VecDeque<Pending>,
    /// Bumped by every epoll event for this side.
    seq: u64,
    /// The `seq` at which the front operation last would have blocked.
    blocked_at: Option<u64>,
    /// A thread is in the system call for the front operation.
    busy: bool,
}

#[derive(Default)]
struct Sides {
    read: Side,
    write: Side,
    /// An event reported the peer's end of stream, a hang-up, an error or urgent data
    /// (`HUP_EVENTS`): a short receive no longer proves the receive queue empty.
    hup: bool,
}

impl Sides {
    fn get(&mut self, dir: Dir) -> &mut Side {
        match dir {
            Dir::Read => &mut self.read,
            Dir::Write => &mut self.write,
        }
    }
}

/// The state of one registered socket, owned by the port's socket entry (as a [`SockIo`]);
/// the dispatch index holds a second reference for events.
#[derive(Default)]
pub(crate) struct Sock {
    sides: Mutex<Sides>,
    /// A stream socket: a receive that returned less than it asked for took everything
    /// there was (see `drive`).
    stream: bool,
}

/// Event dispatch: the registered sockets' states by table token, at the token's slot index
/// (the port's tokens are generation-tagged slab indices: `generation << 32 | index`), so a
/// look-up is an index and a compare, not a hash; a token of another generation finds
/// nothing (a socket deregistered meanwhile).
#[derive(Default)]
struct Index(Vec<Option<(u64, Arc<Sock>)>>);

impl Index {
    fn slot(token: u64) -> usize {
        (token & 0xFFFF_FFFF) as usize
    }

    fn get(&self, token: u64) -> Option<&Arc<Sock>> {
        match self.0.get(Self::slot(token)) {
            Some(Some((t, s))) if *t == token => Some(s),
            _ => None,
        }
    }

    fn insert(&mut self, token: u64, s: Arc<Sock>) {
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

    fn remove(&mut self, token: u64) {
        if let Some(slot) = self.0.get_mut(Self::slot(token)) {
            if matches!(slot, Some((t, _)) if *t == token) {
                *slot = None;
            }
        }
    }
}

/// The poller's buffers, kept between calls.
struct PollBuf {
    events: Box<[mem::MaybeUninit<libc::epoll_event>]>,
}

pub(crate) struct Epoll {
    /// The epoll instance every socket is registered with, and its wake-up and alarm.
    ws: WaitSet,
    /// Event dispatch (see [`Index`]).
    index: Mutex<Index>,
    /// Sides with an operation to attempt at the next `flush`.
    todo: Mutex<Vec<(Arc<Sock>, Dir)>>,
    /// Completions decided without a system call (cancels), for the next `flush` or `wait`.
    done: Mutex<Vec<Raw>>,
    /// The event buffer of `wait` (one poller at a time takes this lock; `wait_shared`
    /// waiters use buffers of their own).
    poll: Mutex<PollBuf>,
}

/// What one attempt of an operation came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Finished with this result (bytes, new fd, 0, or -errno).
    Done(i32),
    /// Would block: wait for readiness.
    WouldBlock,
    /// A connect is now in progress: wait for writability.
    Started,
}

/// Lengths above what the result (an i32) can report are cut.
fn clamp(len: usize) -> usize {
    len.min(i32::MAX as usize)
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        Ok(Epoll {
            ws: WaitSet::new()?,
            index: Mutex::new(Index::default()),
            todo: Mutex::new(Vec::new()),
            done: Mutex::new(Vec::new()),
            poll: Mutex::new(PollBuf {
                events: vec![mem::MaybeUninit::uninit(); MAX_EVENTS].into_boxed_slice(),
            }),
        })
    }

    /// The socket's state, which the port keeps in its socket entry.
    fn state(io: &SockIo) -> Option<Arc<Sock>> {
        let s = io.get::<Sock>();
        if s.is_none() {
            tracing::error!("epoll: a socket without epoll state");
        }
        s
    }

    /// Watches a (non-blocking) socket under `sock`, its table token. In the dispatch index
    /// before `epoll_ctl`, so that no event finds it missing.
    pub(crate) fn register(&self, io: &SockIo, sock: u64, fd: RawFd) -> io::Result<()> {
        let Some(s) = Self::state(io) else {
            return Err(io::Error::other("epoll: a socket without epoll state"));
        };
        self.index.lock().insert(sock, s);
        let events = (libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLOUT | libc::EPOLLRDHUP) as u32;
        if let Err(e) = self.ws.add(fd, sock, events) {
            self.index.lock().remove(sock);
            return Err(e);
        }
        Ok(())
    }

    /// Stops watching a socket that is about to be closed.
    pub(crate) fn deregister(&self, io: &SockIo, sock: u64, fd: RawFd) {
        if let Err(e) = self.ws.remove(fd) {
            tracing::warn!(sock, fd, "epoll: EPOLL_CTL_DEL failed: {e}");
        }
        self.index.lock().remove(sock);
        let Some(s) = Self::state(io) else {
            return;
        };
        // The port completes every operation before closing, so nothing should be left; if
        // something is, complete it rather than lose it.
        let mut guard = s.sides.lock();
        let sides = &mut *guard;
        for side in [&mut sides.read, &mut sides.write] {
            let keep = usize::from(side.busy);
            if side.ops.len() > keep {
                tracing::warn!(sock, "epoll: socket deregistered with operations pending");
            }
            if side.busy {
                // The attempting thread completes it, with -ECANCELED if it would block.
                side.ops[0].cancelled = true;
            }
            let mut done = self.done.lock();
            for p in side.ops.drain(keep..) {
                done.push(Raw {
                    token: p.token,
                    res: -libc::ECANCELED,
                });
            }
        }
    }

    /// Starts an operation: records it; `flush` makes the first attempt. No system call here.
    pub(crate) fn push(&self, io: &SockIo, token: u64, op: OpDesc) {
        let Some(s) = Self::state(io) else {
            self.done.lock().push(Raw {
                token,
                res: -libc::EBADF,
            });
            return;
        };
        let dir = dir_of(&op.desc);
        s.sides.lock().get(dir).ops.push_back(Pending {
            token,
            op,
            connecting: false,
            cancelled: false,
        });
        self.todo.lock().push((s, dir));
    }

    /// Makes a pending operation complete promptly with `-ECANCELED`. No system call here.
    pub(crate) fn cancel(&self, io: &SockIo, token: u64) {
        let Some(s) = Self::state(io) else {
            return;
        };
        let mut sides = s.sides.lock();
        for dir in [Dir::Read, Dir::Write] {
            let side = sides.get(dir);
            let Some(i) = side.ops.iter().position(|p| p.token == token) else {
                continue;
            };
            if i == 0 && side.busy {
                // The attempting thread completes it.
                side.ops[0].cancelled = true;
                return;
            }
            side.ops.remove(i);
            self.done.lock().push(Raw {
                token,
                res: -libc::ECANCELED,
            });
            if i == 0 {
                // A new front operation: give it its own first attempt.
                side.blocked_at = None;
                if !side.ops.is_empty() {
                    self.todo.lock().push((s.clone(), dir));
                }
            }
            return;
        }
    }

    /// Makes the attempts that `push` and `cancel` scheduled and delivers what is done.
    fn attempt_pending(&self, out: &mut Vec<Raw>) {
        let todo = mem::take(&mut *self.todo.lock());
        for (s, dir) in todo {
            self.drive(&s, dir, out);
        }
        out.append(&mut self.done.lock());
    }

    /// Attempts the operations of one side, front first, until one would block.
    fn drive(&self, s: &Sock, dir: Dir, out: &mut Vec<Raw>) {
        let mut sides = s.sides.lock();
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

            sides = s.sides.lock();
            let side = sides.get(dir);
            side.busy = false;
            let Some(front) = side.ops.front_mut().filter(|p| p.token == token) else {
                // Cannot happen: a busy front operation is only ever marked, never removed.
                tracing::error!(token, "epoll: operation vanished during its attempt");
                continue;
            };
            match result {
                Attempt::Done(res) => {
                    side.ops.pop_front();
                    // A stream receive that got less than it asked for emptied the socket's
                    // receive queue: the next receive waits for the next edge instead of
                    // trying a system call that would only say EAGAIN (tokio does the same).
                    // Not after an end-of-stream or error event, which has no later edge;
                    // not if an event came during the attempt.
                    let drained = match op.desc {
                        Desc::Recv { len, .. } => {
                            s.stream && res > 0 && (res as usize) < len && !hup
                        }
                        _ => false,
                    };
                    side.blocked_at = (drained && side.seq == seq).then_some(seq);
                    out.push(Raw { token, res });
                }
                Attempt::WouldBlock | Attempt::Started => {
                    if result == Attempt::Started {
                        front.connecting = true;
                    }
                    if front.cancelled {
                        side.ops.pop_front();
                        side.blocked_at = None;
                        out.push(Raw {
                            token,
                            res: -libc::ECANCELED,
                        });
                    } else if side.seq == seq {
                        side.blocked_at = Some(seq);
                        return;
                    }
                    // Else readiness arrived during the attempt: try again.
                }
            }
        }
    }

    fn wait_locked(&self, buf: &mut PollBuf, timeout: i32, out: &mut Vec<Raw>) -> io::Result<()> {
        let events = self.ws.wait(&mut buf.events, timeout)?;
        self.harvest(events, out);
        Ok(())
    }

    /// Attempts what the events made ready. Returns (a wake-up was seen, the alarm went off).
    fn harvest(&self, events: &[libc::epoll_event], out: &mut Vec<Raw>) -> (bool, bool) {
        let (mut woken, mut alarm) = (false, false);
        // In chunks, on the stack: no allocation per wait.
        const CHUNK: usize = 64;
        let mut tokens = [0u64; CHUNK];
        let mut flags_of = [0u32; CHUNK];
        let mut found: [Option<Arc<Sock>>; CHUNK] = std::array::from_fn(|_| None);
        for chunk in events.chunks(CHUNK) {
            let mut n = 0;
            for ev in chunk {
                match ev.u64 {
                    WAKE => woken = true,
                    ALARM => alarm = true,
                    token => {
                        tokens[n] = token;
                        flags_of[n] = ev.events;
                        n += 1;
                    }
                }
            }
            if n == 0 {
                continue;
            }
            // The sockets' states, under one lock of the index; a socket deregistered
            // meanwhile finds nothing (all its operations had completed).
            {
                let index = self.index.lock();
                for (t, f) in tokens[..n].iter().zip(&mut found[..n]) {
                    *f = index.get(*t).cloned();
                }
            }
            for i in 0..n {
                if let Some(s) = found[i].take() {
                    self.on_event(&s, flags_of[i], out);
                }
            }
        }
        (woken, alarm)
    }

    /// One readiness event of a socket: bump the sides' sequence numbers, then attempt what
    /// became ready.
    fn on_event(&self, s: &Sock, flags: u32, out: &mut Vec<Raw>) {
        let (read, write) = (flags & READ_EVENTS != 0, flags & WRITE_EVENTS != 0);
        {
            let mut sides = s.sides.lock();
            if flags & HUP_EVENTS != 0 {
                sides.hup = true;
            }
            if read {
                sides.read.seq = sides.read.seq.wrapping_add(1);
            }
            if write {
                sides.write.seq = sides.write.seq.wrapping_add(1);
            }
        }
        if read {
            self.drive(s, Dir::Read, out);
        }
        if write {
            self.drive(s, Dir::Write, out);
        }
    }

    /// Waits for readiness until `deadline` or a wake-up, with any number of threads in it at
    /// once: the kernel wakes one waiter per event, the most recently parked first, as IOCP
    /// releases threads. Attempts what became ready. Returns true if the alarm went off.
    /// With `reaping` (a busy thread's look, timeout 0), a wake-up meant for an idle waiter
    /// is passed on rather than swallowed.
    fn wait_any(
        &self,
        deadline: Option<Instant>,
        reaping: bool,
        alone: bool,
        out: &mut Vec<Raw>,
    ) -> io::Result<bool> {
        // epoll's wait does not attempt what was started: do it first; if that completed
        // something, deliver it without waiting (what became ready meanwhile wakes another
        // waiter, or this one when it comes back).
        let before = out.len();
        self.attempt_pending(out);
        if out.len() > before && !reaping {
            return Ok(false);
        }
        let timeout = if reaping || !self.todo.lock().is_empty() {
            0
        } else {
            super::timeout_ms(deadline)
        };
        let mut events = [mem::MaybeUninit::<libc::epoll_event>::uninit(); SHARED_EVENTS];
        let take = if alone { SHARED_EVENTS } else { 1 };
        let events = self.ws.wait(&mut events[..take], timeout)?;
        let (woken, alarm) = self.harvest(events, out);
        if woken && reaping {
            self.ws.wake();
        }
        self.attempt_pending(out);
        Ok(alarm)
    }
}

impl Driver for Epoll {
    fn backend(&self) -> Backend {
        Backend::Epoll
    }

    #[cfg(feature = "fault-injection")]
    fn faults(&self) -> Option<&crate::fault::Faults> {
        Some(self.ws.faults())
    }

    /// Two sides (read, write), each a FIFO of pending operations with its readiness.
    fn new_sock(&self, stream: bool) -> SockIo {
        SockIo::new(Sock {
            sides: Mutex::default(),
            stream,
        })
    }

    fn register(&self, io: &SockIo, sock: u64, fd: RawFd) -> io::Result<()> {
        Epoll::register(self, io, sock, fd)
    }

    fn deregister(&self, io: &SockIo, sock: u64, fd: RawFd) {
        Epoll::deregister(self, io, sock, fd)
    }

    fn push(&self, io: &SockIo, token: u64, op: OpDesc) {
        Epoll::push(self, io, token, op)
    }

    fn cancel(&self, io: &SockIo, token: u64) {
        Epoll::cancel(self, io, token)
    }

    /// Attempts what was pushed (and what cancels completed), outside every global lock.
    fn flush(&self, out: &mut Vec<Raw>) {
        self.attempt_pending(out);
    }

    /// Attempts what was started (epoll's wait would not), then waits for readiness until
    /// `deadline` or `wake` and attempts what became ready (poller only). Does not block if
    /// something completed or waits for delivery already.
    fn wait(&self, deadline: Option<Instant>, out: &mut Vec<Raw>) -> io::Result<()> {
        let before = out.len();
        self.attempt_pending(out);
        let mut guard = self.poll.lock();
        let ready_now =
            out.len() > before || !self.done.lock().is_empty() || !self.todo.lock().is_empty();
        let timeout = if ready_now {
            0
        } else {
            super::timeout_ms(deadline)
        };
        let res = self.wait_locked(&mut guard, timeout, out);
        drop(guard);
        self.attempt_pending(out);
        res
    }

    fn wait_shared(
        &self,
        deadline: Option<Instant>,
        alone: bool,
        out: &mut Vec<Raw>,
    ) -> io::Result<bool> {
        self.wait_any(deadline, false, alone, out)
    }

    /// Takes the readiness that is there now, without waiting (a worker that keeps finding
    /// completions ready calls this now and then, so that I/O is not left waiting behind a
    /// long queue of posts and timers). A failure here is left to the waiters to report.
    fn try_reap(&self, out: &mut Vec<Raw>) {
        let _ = self.wait_any(None, true, true, out);
    }

    /// Makes a waiter's `wait` return promptly (or the next one at once).
    fn wake(&self) {
        self.ws.wake();
    }

    /// Sets the alarm to go off at `deadline` (never before it).
    fn arm(&self, deadline: Instant) {
        self.ws.arm(deadline);
    }

    /// Every attempt is a system call made by the thread that makes it: no follow-up work
    /// lands on another thread.
    fn follow_up_on_submitter(&self) -> bool {
        false
    }

    fn combiner(&self) -> Option<&crate::combine::Combiner> {
        None
    }
}

/// One non-blocking attempt of an operation (retried on EINTR).
///
/// The pointers in `op` target memory owned by the operation, which the port frees only after
/// this backend has reported the token complete; an operation is attempted only while its
/// token is still pending here, so that memory is alive for the whole call.
fn attempt(op: OpDesc, connecting: bool) -> Attempt {
    let fd = op.fd;
    loop {
        let res: isize = match op.desc {
            Desc::Accept { addr, len } => {
                // SAFETY: the token is pending, so `addr` (a sockaddr_storage) and `len` (its
                // size) are the operation's live address buffer.
                let fd = unsafe {
                    libc::accept4(
                        fd,
                        addr.cast(),
                        len,
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                };
                fd as isize
            }
            Desc::Recv { ptr, len } => {
                // SAFETY: the token is pending, so `ptr` is the operation's live buffer,
                // writable for `len` bytes.
                unsafe { libc::recv(fd, ptr.cast(), clamp(len), 0) }
            }
            Desc::RecvMsg { msg } => {
                // SAFETY: the token is pending, so `msg` and the iovecs and address buffer it
                // names are the operation's live memory.
                unsafe { libc::recvmsg(fd, msg, 0) }
            }
            Desc::Send { ptr, len } => {
                // SAFETY: the token is pending, so `ptr` is the operation's live buffer,
                // readable for `len` bytes.
                unsafe { libc::send(fd, ptr.cast(), clamp(len), libc::MSG_NOSIGNAL) }
            }
            Desc::SendMsg { msg } => {
                // SAFETY: the token is pending, so `msg` and the iovecs and address it names
                // are the operation's live memory.
                unsafe { libc::sendmsg(fd, msg, libc::MSG_NOSIGNAL) }
            }
            Desc::Connect { addr, len } => {
                return if connecting {
                    connect_result(fd)
                } else {
                    start_connect(fd, addr, len)
                };
            }
        };
        if res >= 0 {
            return Attempt::Done(res.min(i32::MAX as isize) as i32);
        }
        match errno() {
            libc::EINTR => continue,
            e if e == libc::EAGAIN || e == libc::EWOULDBLOCK => return Attempt::WouldBlock,
            e => return Attempt::Done(-e),
        }
    }
}

fn start_connect(fd: RawFd, addr: *const libc::sockaddr, len: libc::socklen_t) -> Attempt {
    // SAFETY: the token is pending, so `addr` targets `len` live bytes of the operation's
    // address (see `attempt`).
    if unsafe { libc::connect(fd, addr, len) } == 0 {
        return Attempt::Done(0);
    }
    match errno() {
        // An interrupted connect goes on in the background, as EINPROGRESS does.
        libc::EINPROGRESS | libc::EINTR => Attempt::Started,
        e => Attempt::Done(-e),
    }
}

/// The outcome of a connect in progress, once the socket reported writable.
fn connect_result(fd: RawFd) -> Attempt {
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are live locals, `len` holding the size of `err`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Attempt::Done(-errno());
    }
    if err != 0 {
        return Attempt::Done(-err);
    }
    // SO_ERROR is 0 also while the connect is still in progress (an unconnected socket is
    // reported writable): only a connected socket has a peer.
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut peer: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut peer_len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `peer` and `peer_len` are live locals, `peer_len` holding the size of `peer`.
    let r = unsafe {
        libc::getpeername(
            fd,
            (&mut peer as *mut libc::sockaddr_storage).cast(),
            &mut peer_len,
        )
    };
    if r == 0 {
        return Attempt::Done(0);
    }
    match errno() {
        libc::ENOTCONN => Attempt::WouldBlock,
        e => Attempt::Done(-e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Duration;

    /// Registers a stream socket as the port would: its state made, then registered.
    fn add(ep: &Epoll, sock: u64, fd: RawFd) -> SockIo {
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
            ep.wait(Some(Instant::now() + Duration::from_millis(100)), out)
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
        ep.wait(Some(Instant::now() + Duration::from_millis(20)), &mut out)
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
        assert_eq!(
            out,
            vec![Raw {
                token: 10,
                res: -libc::ECANCELED
            }]
        );
        // Unknown now: a second cancel does nothing.
        ep.cancel(&io1, 10);
        client.write_all(b"late").unwrap();
        ep.wait(Some(Instant::now() + Duration::from_millis(50)), &mut out)
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
            ep.wait(None, &mut out).unwrap();
            assert!(out.is_empty());
        });
        assert!(start.elapsed() < Duration::from_secs(5));
        // The wake-up was consumed: the next wait times out.
        let mut out = Vec::new();
        let t = Instant::now();
        ep.wait(Some(t + Duration::from_millis(30)), &mut out)
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

        let client =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        client.set_nonblocking(true).unwrap();
        let client = OwnedFd::from(client);
        let io2 = add(&ep, 2, client.as_raw_fd());
        let target = socket2::SockAddr::from(addr);
        let connect = OpDesc {
            fd: client.as_raw_fd(),
            desc: Desc::Connect {
                addr: target.as_ptr().cast(),
                len: target.len(),
            },
        };
        ep.push(&io2, 20, connect);
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
        let client =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        client.set_nonblocking(true).unwrap();
        let client = OwnedFd::from(client);
        let io2 = add(&ep, 2, client.as_raw_fd());
        let target = socket2::SockAddr::from(addr);
        let connect = OpDesc {
            fd: client.as_raw_fd(),
            desc: Desc::Connect {
                addr: target.as_ptr().cast(),
                len: target.len(),
            },
        };
        ep.push(&io2, 20, connect);
        let mut out = Vec::new();
        ep.flush(&mut out);
        assert_eq!(wait_for(&ep, 20, &mut out), -libc::ECONNREFUSED);
        ep.deregister(&io2, 2, client.as_raw_fd());
    }
}
