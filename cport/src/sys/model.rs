//! A modelled backend for unit tests of the port above the [`Driver`] interface: it records
//! what the port pushes and cancels, and completes operations when the test says so, so that
//! lane order, short-send continuation, cancel and the response to kernel failures are tested
//! without a kernel deciding the interleaving.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::driver::{Backend, Desc, Driver, OpDesc, Raw};

/// What the port handed to the modelled kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// An operation: its token, socket, kind and (for sends and receives) length.
    Push {
        token: u64,
        sock: u64,
        kind: Kind,
        len: usize,
    },
    Cancel {
        token: u64,
    },
    Register {
        sock: u64,
    },
    Deregister {
        sock: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Accept,
    Connect,
    Recv,
    Send,
    SendMsg,
    RecvMsg,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    /// Completions the test released, delivered by the next wait.
    ready: VecDeque<Raw>,
    /// Waits still to fail, and with what.
    failures: VecDeque<io::ErrorKind>,
    woken: bool,
}

#[derive(Default)]
pub(crate) struct Model {
    state: Mutex<State>,
    cv: Condvar,
}

impl Model {
    /// Everything the port called so far, in order (and forgets it).
    pub(crate) fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state.lock().calls)
    }

    /// The kernel finishes operation `token` with `res` (bytes, or `-errno`).
    pub(crate) fn complete(&self, token: u64, res: i32) {
        self.state.lock().ready.push_back(Raw::new(token, res));
        self.cv.notify_all();
    }

    /// The next `n` waits fail with `kind`.
    pub(crate) fn fail_waits(&self, n: usize, kind: io::ErrorKind) {
        let mut st = self.state.lock();
        st.failures.extend(std::iter::repeat_n(kind, n));
        drop(st);
        self.cv.notify_all();
    }

    fn wait_until(&self, deadline: Option<Instant>, out: &mut Vec<Raw>) -> io::Result<()> {
        let mut st = self.state.lock();
        loop {
            if let Some(kind) = st.failures.pop_front() {
                return Err(io::Error::new(kind, "modelled kernel failure"));
            }
            if !st.ready.is_empty() || std::mem::take(&mut st.woken) {
                out.extend(st.ready.drain(..));
                return Ok(());
            }
            match deadline {
                Some(d) => {
                    if Instant::now() >= d || self.cv.wait_until(&mut st, d).timed_out() {
                        out.extend(st.ready.drain(..));
                        return Ok(());
                    }
                }
                None => self.cv.wait(&mut st),
            }
        }
    }
}

fn kind_of(desc: &Desc) -> (Kind, usize) {
    match *desc {
        Desc::Accept { .. } => (Kind::Accept, 0),
        Desc::Connect { .. } => (Kind::Connect, 0),
        Desc::Recv { len, .. } => (Kind::Recv, len),
        // The model completes it like a receive (a test gives the result, no buffer).
        Desc::RecvPool { .. } => (Kind::Recv, 0),
        Desc::Send { len, .. } => (Kind::Send, len),
        Desc::SendMsg { .. } => (Kind::SendMsg, 0),
        Desc::RecvMsg { .. } => (Kind::RecvMsg, 0),
    }
}

impl Driver for Model {
    fn backend(&self) -> Backend {
        Backend::Epoll
    }

    /// The socket's table token (set by `register`), so that a push can say which socket it
    /// is for.
    type Sock = Arc<AtomicU64>;

    fn new_sock(&self, _stream: bool) -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(u64::MAX))
    }

    fn register(&self, io: &Arc<AtomicU64>, sock: u64, _fd: RawFd) -> io::Result<()> {
        io.store(sock, Relaxed);
        self.state.lock().calls.push(Call::Register { sock });
        Ok(())
    }

    fn deregister(&self, _io: &Arc<AtomicU64>, sock: u64, _fd: RawFd) {
        self.state.lock().calls.push(Call::Deregister { sock });
    }

    fn push(&self, io: &Arc<AtomicU64>, token: u64, op: OpDesc) {
        let sock = io.load(Relaxed);
        let (kind, len) = kind_of(&op.desc);
        self.state.lock().calls.push(Call::Push {
            token,
            sock,
            kind,
            len,
        });
    }

    fn cancel(&self, _io: &Arc<AtomicU64>, token: u64) {
        self.state.lock().calls.push(Call::Cancel { token });
    }

    fn flush(&self, _out: &mut Vec<Raw>) {}

    fn wait(
        &self,
        deadline: Option<Instant>,
        _alone: bool,
        out: &mut Vec<Raw>,
    ) -> io::Result<bool> {
        self.wait_until(deadline, out).map(|()| false)
    }

    fn try_reap(&self, out: &mut Vec<Raw>) {
        out.extend(self.state.lock().ready.drain(..));
    }

    fn wake(&self) {
        self.state.lock().woken = true;
        self.cv.notify_all();
    }

    fn arm(&self, _deadline: Instant) {}

    fn follow_up_on_submitter(&self) -> bool {
        false
    }

    fn combiner(&self) -> Option<&crate::combine::Combiner> {
        None
    }
}
