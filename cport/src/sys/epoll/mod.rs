//! The epoll backend: readiness turned into completions.
//!
//! * Every registered socket has two *sides*, read (accept, recv, recvmsg) and write (connect,
//!   send, sendmsg), each a FIFO of pending operations behind one per-socket lock. That state
//!   lives in the port's socket entry (`SockState`, passed with `push` and `cancel`, so they
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
//!
//! Files by job: this one is the driver (registration, the wait, event dispatch); `sock`
//! holds each socket's sides and drives them; `attempt` makes the system calls.

mod attempt;
mod sock;
#[cfg(test)]
mod tests;

use std::io;
use std::mem;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::sys::driver::{Backend, Driver, OpDesc, Raw};
use crate::sys::os::timeout_ms;
use crate::sys::wait::{WaitSet, ALARM, WAKE};
use sock::{dir_of, Dir, Index, Pending, SockState};

/// Most events taken by one `epoll_wait` when no other thread waits with this one; with
/// another waiter, one event is taken, and the
/// kernel hands the rest to the next waiter (it wakes another while events remain) instead
/// of this thread attempting every ready socket's system call before it runs a handler and
/// then waking a thread for the completions it cannot take.
const MAX_EVENTS: usize = 64;

const READ_EVENTS: u32 =
    (libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
const WRITE_EVENTS: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;
/// Events after which a short stream receive does not prove the receive queue empty: the end
/// of the stream, a hang-up or an error (no later edge), or urgent data (a receive stops short
/// at the urgent mark with data behind it).
const HUP_EVENTS: u32 =
    (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLPRI) as u32;

pub(crate) struct Epoll {
    /// The epoll instance every socket is registered with, and its wake-up and alarm.
    ws: WaitSet,
    /// Event dispatch (see [`Index`]).
    index: Mutex<Index>,
    /// Sides with an operation to attempt at the next `flush`.
    todo: Mutex<Vec<(Arc<SockState>, Dir)>>,
    /// Completions decided without a system call (cancels), for the next `flush` or `wait`.
    done: Mutex<Vec<Raw>>,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        Ok(Epoll {
            ws: WaitSet::new()?,
            index: Mutex::new(Index::default()),
            todo: Mutex::new(Vec::new()),
            done: Mutex::new(Vec::new()),
        })
    }

    /// Watches a (non-blocking) socket under `sock`, its table token. In the dispatch index
    /// before `epoll_ctl`, so that no event finds it missing.
    fn register_sock(&self, s: &Arc<SockState>, sock: u64, fd: RawFd) -> io::Result<()> {
        self.index.lock().insert(sock, s.clone());
        let events = (libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLOUT | libc::EPOLLRDHUP) as u32;
        if let Err(e) = self.ws.add(fd, sock, events) {
            self.index.lock().remove(sock);
            return Err(e);
        }
        Ok(())
    }

    /// Stops watching a socket that is about to be closed.
    fn deregister_sock(&self, s: &SockState, sock: u64, fd: RawFd) {
        if let Err(e) = self.ws.remove(fd) {
            tracing::warn!(sock, fd, "epoll: EPOLL_CTL_DEL failed: {e}");
        }
        self.index.lock().remove(sock);
        // The port completes every operation before closing, so nothing should be left; if
        // something is, complete it rather than lose it.
        let mut guard = s.sides.lock();
        let sides = &mut *guard;
        for side in [&mut sides.read, &mut sides.write] {
            let keep = usize::from(side.busy);
            if side.ops.len() > keep {
                tracing::warn!(sock, "epoll: socket deregistered with operations pending");
            }
            if let Some(front) = side.ops.front_mut().filter(|_| side.busy) {
                // The attempting thread completes it, with -ECANCELED if it would block.
                front.cancelled = true;
            }
            let mut done = self.done.lock();
            for p in side.ops.split_off(keep) {
                done.push(Raw::new(p.token, -libc::ECANCELED));
            }
        }
    }

    /// Starts an operation: records it; `flush` makes the first attempt. No system call here.
    fn push_op(&self, s: &Arc<SockState>, token: u64, op: OpDesc) {
        let dir = dir_of(&op.desc);
        s.sides.lock().get(dir).ops.push_back(Pending {
            token,
            op,
            connecting: false,
            cancelled: false,
        });
        self.todo.lock().push((s.clone(), dir));
    }

    /// Makes a pending operation complete promptly with `-ECANCELED`. No system call here.
    fn cancel_op(&self, s: &Arc<SockState>, token: u64) {
        let mut sides = s.sides.lock();
        for dir in [Dir::Read, Dir::Write] {
            let side = sides.get(dir);
            let Some(i) = side.ops.iter().position(|p| p.token == token) else {
                continue;
            };
            if i == 0 && side.busy {
                // The attempting thread completes it.
                if let Some(front) = side.ops.front_mut() {
                    front.cancelled = true;
                }
                return;
            }
            side.ops.remove(i);
            self.done.lock().push(Raw::new(token, -libc::ECANCELED));
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
            s.drive(dir, out);
        }
        out.append(&mut self.done.lock());
    }

    /// Attempts what the events made ready. Returns (a wake-up was seen, the alarm went off).
    fn harvest(&self, events: &[libc::epoll_event], out: &mut Vec<Raw>) -> (bool, bool) {
        let (mut woken, mut alarm) = (false, false);
        // In chunks, on the stack: no allocation per wait.
        const CHUNK: usize = 64;
        let mut tokens = [0u64; CHUNK];
        let mut flags_of = [0u32; CHUNK];
        let mut found: [Option<Arc<SockState>>; CHUNK] = std::array::from_fn(|_| None);
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
    fn on_event(&self, s: &SockState, flags: u32, out: &mut Vec<Raw>) {
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
            s.drive(Dir::Read, out);
        }
        if write {
            s.drive(Dir::Write, out);
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
            timeout_ms(deadline)
        };
        let mut events = [mem::MaybeUninit::<libc::epoll_event>::uninit(); MAX_EVENTS];
        let take = if alone { MAX_EVENTS } else { 1 };
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
    type Sock = Arc<SockState>;

    fn new_sock(&self, stream: bool) -> Arc<SockState> {
        Arc::new(SockState {
            sides: Mutex::default(),
            stream,
        })
    }

    fn register(&self, io: &Arc<SockState>, sock: u64, fd: RawFd) -> io::Result<()> {
        self.register_sock(io, sock, fd)
    }

    fn deregister(&self, io: &Arc<SockState>, sock: u64, fd: RawFd) {
        self.deregister_sock(io, sock, fd)
    }

    fn push(&self, io: &Arc<SockState>, token: u64, op: OpDesc) {
        self.push_op(io, token, op)
    }

    fn cancel(&self, io: &Arc<SockState>, token: u64) {
        self.cancel_op(io, token)
    }

    /// Attempts what was pushed (and what cancels completed), outside every global lock.
    fn flush(&self, out: &mut Vec<Raw>) {
        self.attempt_pending(out);
    }

    /// Attempts what was started (epoll's wait would not), then waits for readiness with any
    /// number of threads at once (see `wait_any`) and attempts what became ready.
    fn wait(&self, deadline: Option<Instant>, alone: bool, out: &mut Vec<Raw>) -> io::Result<bool> {
        self.wait_any(deadline, false, alone, out)
    }

    /// Takes the readiness that is there now, without waiting (a worker that keeps finding
    /// completions ready calls this now and then, so that I/O is not left waiting behind a
    /// long queue of posts and timers). A failure here is left to the waiters to report.
    fn try_reap(&self, out: &mut Vec<Raw>) {
        let _ = self.wait_any(None, true, true, out);
    }

    /// Makes one waiter's `wait` return promptly (or the next one at once).
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
