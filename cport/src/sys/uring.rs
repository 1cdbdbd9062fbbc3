//! The io_uring backend: one ring shared by every thread of the port.
//!
//! * Submission: any thread pushes SQEs under a short lock (`sq`); an SQE that does not fit
//!   waits in a backlog, so a push never fails and never blocks. `flush` hands pushed SQEs to
//!   the kernel with `io_uring_enter`, one flusher at a time (`crate::combine`, model-checked
//!   with loom): the kernel serialises submitters on the ring's mutex and issues each send
//!   inline under it, so a second submitter would only spin there (see ARCHITECTURE.md for
//!   the measurement). A flusher that finds another at it leaves its
//!   SQEs to that one, which looks again before it leaves, and goes back to its handlers.
//! * Completion: the CQ is read under the `cq` lock — by a waiter after its wait (and before
//!   it, in case its own submission completed at once), and by a busy worker's look
//!   (`try_reap`, with `try_lock`). Idle threads wait in the wait set, all at once, on the
//!   ring's registered eventfd.
//! * Overflow: the ring is set up with a CQ four times the SQ, and `IORING_FEAT_NODROP` is
//!   required, so a full CQ makes the kernel keep completions on its overflow list instead of
//!   dropping them; a reaper flushes that list (`GETEVENTS`) whenever the ring reports
//!   `IORING_SQ_CQ_OVERFLOW`.
//! * Features are probed (`IORING_REGISTER_PROBE`), not assumed; ring setup errors (`EPERM`
//!   from seccomp or `kernel.io_uring_disabled`, `ENOMEM` from the memlock limit, `ENOSYS`)
//!   come back as errors that say what failed, and `Backend::Auto` falls back to epoll.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering::SeqCst};
use std::time::Instant;

use io_uring::types::Fd;
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};
use parking_lot::Mutex;

use super::bufring::PoolMem;
use super::driver::{Backend, Desc, Driver, OpDesc, Raw};
use super::os::timeout_ms;
use super::wait::{WaitSet, ALARM, BACKEND};
use crate::combine::Combiner;
use crate::slab::RESERVED_TOKENS;

/// How long the first wait after the notifications-off window lasts before the waiter looks
/// at the CQ once more (see `Uring::wait`).
const WINDOW_RECHECK: std::time::Duration = std::time::Duration::from_millis(10);

/// `IORING_RECVSEND_POLL_FIRST` (Linux 5.19, like provided-buffer rings).
const RECVSEND_POLL_FIRST: u16 = 1;

/// Token of cancel requests (their own completions carry nothing the port needs).
const CANCEL: u64 = RESERVED_TOKENS + 1;

pub(crate) struct Uring {
    ring: IoUring,
    /// The submission-side lock; holds SQEs that did not fit in the ring.
    sq: Mutex<VecDeque<squeue::Entry>>,
    /// The completion-side lock: whoever reads the CQ holds it (waiters, a busy worker's look).
    cq: Mutex<()>,
    /// One flusher in the kernel at a time; also knows whether anything was pushed since
    /// the last submission (so a flush with nothing to submit costs no system call).
    combine: Combiner,
    /// Where every idle thread waits at once (`wait`).
    ws: WaitSet,
    /// The eventfd the ring signals for every batch of completions it posts, registered in
    /// `ws` (kept open for the ring's life).
    _cq_eventfd: OwnedFd,
    /// The errno of a submission the kernel refused (0: none): its SQEs are still in the
    /// ring (or the backlog). The next `wait` submits them again and, if the kernel refuses
    /// again, reports it as a kernel failure, which the port counts, logs and retries after a
    /// pause (`PortInner::wait_failed`).
    refused: AtomicI32,
}

fn setup_error(what: &str, e: io::Error) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) => {
            " (blocked by a seccomp filter, as container runtimes do, or by sysctl kernel.io_uring_disabled)"
        }
        Some(libc::ENOMEM) => {
            " (no memory for the ring: raise ulimit -l before Linux 5.12, the memory cgroup's limit after)"
        }
        Some(libc::ENOSYS) => " (kernel without io_uring)",
        _ => "",
    };
    io::Error::new(e.kind(), format!("io_uring {what}: {e}{hint}"))
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("io_uring on this kernel lacks {what}"),
    )
}

impl Uring {
    pub(crate) fn new(entries: u32) -> io::Result<Uring> {
        let ring = IoUring::builder()
            .setup_cqsize(entries.saturating_mul(4))
            .setup_clamp()
            .build(entries)
            .map_err(|e| setup_error("setup", e))?;
        let params = ring.params();
        if !params.is_feature_nodrop() {
            return Err(unsupported("IORING_FEAT_NODROP (Linux 5.5)"));
        }
        // Not used since the port stopped waiting in `io_uring_enter` (one poller at a
        // time), but still required: the kernels on which `Backend::Auto` picks io_uring
        // stay the same.
        if !params.is_feature_ext_arg() {
            return Err(unsupported("IORING_FEAT_EXT_ARG (Linux 5.11)"));
        }
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| setup_error("probe", e))?;
        let needed = [
            (opcode::Nop::CODE, "NOP"),
            (opcode::Accept::CODE, "ACCEPT (5.5)"),
            (opcode::Connect::CODE, "CONNECT (5.5)"),
            (opcode::Recv::CODE, "RECV (5.6)"),
            (opcode::Send::CODE, "SEND (5.6)"),
            (opcode::SendMsg::CODE, "SENDMSG (5.3)"),
            (opcode::RecvMsg::CODE, "RECVMSG (5.3)"),
            (opcode::AsyncCancel::CODE, "ASYNC_CANCEL (5.5)"),
        ];
        for (code, name) in needed {
            if !probe.is_supported(code) {
                return Err(unsupported(&format!("the {name} operation")));
            }
        }
        let ws = WaitSet::new()?;
        // SAFETY: eventfd takes no pointers.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: efd is a new descriptor that nothing else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter()
            .register_eventfd(efd.as_raw_fd())
            .map_err(|e| setup_error("eventfd registration", e))?;
        ws.add(efd.as_raw_fd(), BACKEND, libc::EPOLLIN as u32)?;
        Ok(Uring {
            ring,
            sq: Mutex::new(VecDeque::new()),
            cq: Mutex::new(()),
            combine: Combiner::new(),
            ws,
            _cq_eventfd: efd,
            refused: AtomicI32::new(0),
        })
    }

    /// Whether this kernel takes a provided-buffer ring (Linux 5.19): registers a one-entry
    /// ring under a group id pools never use, and unregisters it.
    pub(crate) fn check_pools(&self) -> io::Result<()> {
        let probe = PoolMem::new(1, 64, u16::MAX, true, Default::default())?;
        self.register_pool(&probe)?;
        self.ring
            .submitter()
            .unregister_buf_ring(u16::MAX)
            .map_err(|e| setup_error("provided-buffer ring removal", e))
    }

    /// Turns the ring's eventfd notifications (`IORING_CQ_EVENTFD_DISABLED`, Linux 5.8)
    /// on or off: an atomic or/and of the flag in the shared CQ flags word. The caller
    /// holds the `cq` lock.
    fn eventfd_notifications(&self, on: bool) {
        // SAFETY: the caller holds the `cq` lock: this is the only CompletionQueue; the
        // view is used only to flip the flag (its head is written back unchanged).
        let cq = unsafe { self.ring.completion_shared() };
        if on {
            cq.enable_eventfd();
        } else {
            cq.disable_eventfd();
        }
    }

    fn reap_locked(&self, out: &mut Vec<Raw>) -> usize {
        let _g = self.cq.lock();
        self.reap(out)
    }

    fn entry(op: OpDesc) -> squeue::Entry {
        let fd = Fd(op.fd);
        match op.desc {
            Desc::Accept { addr, len } => opcode::Accept::new(fd, addr.cast(), len)
                .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
                .build(),
            Desc::Connect { addr, len } => opcode::Connect::new(fd, addr, len).build(),
            Desc::Recv { ptr, len } => opcode::Recv::new(fd, ptr, clamp(len)).build(),
            Desc::RecvPool { pool } => {
                // SAFETY: the operation owns a handle on the pool, so it is alive here.
                let pool = unsafe { &*pool };
                // POLL_FIRST: the kernel waits for data before it picks a buffer, so an idle
                // socket's receive neither holds a buffer nor fails when the pool is empty;
                // only a receive with data waiting finds no buffer (and then waits in the
                // pool's queue, `PoolMem::park`).
                opcode::Recv::new(fd, std::ptr::null_mut(), clamp(pool.size()))
                    .buf_group(pool.group())
                    .ioprio(RECVSEND_POLL_FIRST)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
            }
            Desc::Send { ptr, len } => opcode::Send::new(fd, ptr, clamp(len))
                .flags(libc::MSG_NOSIGNAL)
                .build(),
            Desc::SendMsg { msg } => opcode::SendMsg::new(fd, msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build(),
            Desc::RecvMsg { msg } => opcode::RecvMsg::new(fd, msg).build(),
        }
    }

    fn push_entry(&self, entry: squeue::Entry) {
        self.push_sq(entry);
        self.combine.pushed();
    }

    /// Puts an SQE in the ring (taking the `sq` lock), or in the backlog if the ring is full.
    fn push_sq(&self, entry: squeue::Entry) {
        let mut backlog = self.sq.lock();
        if backlog.is_empty() {
            // SAFETY: the `sq` lock is held, so this is the only SubmissionQueue in existence.
            let mut sq = unsafe { self.ring.submission_shared() };
            // SAFETY: the entry's pointers target memory owned by the operation, which the
            // port frees only after this token's completion has been reaped (see OpDesc).
            if unsafe { sq.push(&entry) }.is_ok() {
                return;
            }
        }
        backlog.push_back(entry);
    }

    /// Moves backlogged SQEs into the ring as space allows. Returns true if some remain.
    fn drain_backlog(&self) -> bool {
        let mut backlog = self.sq.lock();
        if backlog.is_empty() {
            return false;
        }
        // SAFETY: the `sq` lock is held, so this is the only SubmissionQueue in existence.
        let mut sq = unsafe { self.ring.submission_shared() };
        while let Some(e) = backlog.front() {
            // SAFETY: as in push_entry: the entry's memory outlives its completion.
            if unsafe { sq.push(e) }.is_err() {
                break;
            }
            backlog.pop_front();
        }
        !backlog.is_empty()
    }

    /// Hands every pushed SQE to the kernel (no system call if nothing was pushed). One
    /// flusher at a time; one that finds another at it returns at once (see `Combiner`).
    /// Submits everything pushed so far (one flusher in the kernel at a time: `combine.rs`).
    pub(crate) fn submit_pending(&self) {
        self.combine.flush(|| self.submit_all());
    }

    /// Submits what is in the ring and the backlog. False if the kernel refused (`EAGAIN`:
    /// no memory for requests; `EBUSY`: completions to reap first; or any other error): the
    /// SQEs stay where they are, `refused` records it and a waiter is woken; its `wait`
    /// reaps, submits them again, and reports a refusal that persists as a kernel failure
    /// (counted, logged, retried after a growing pause).
    fn submit_all(&self) -> bool {
        loop {
            let more = self.drain_backlog();
            match self.enter_submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    self.refused.store(errno, SeqCst);
                    self.ws.wake();
                    return false;
                }
            }
            if !more {
                return true;
            }
        }
    }

    /// `io_uring_enter` submitting what is in the ring (or the fault a test armed).
    fn enter_submit(&self) -> io::Result<usize> {
        #[cfg(feature = "fault-injection")]
        if let Some(e) = self.ws.faults().take(crate::fault::FaultPoint::UringSubmit) {
            return Err(e);
        }
        self.ring.submit()
    }

    /// Reaps every CQE in the ring into `out`; returns how many were reaped (wake-ups and
    /// cancel acknowledgements included).
    fn reap(&self, out: &mut Vec<Raw>) -> usize {
        let mut n = 0;
        loop {
            {
                // SAFETY: the caller holds the `cq` lock: this is the only CompletionQueue.
                let cq = unsafe { self.ring.completion_shared() };
                for cqe in cq {
                    n += 1;
                    let token = cqe.user_data();
                    if token < RESERVED_TOKENS {
                        out.push(Raw {
                            token,
                            res: cqe.result(),
                            buf: cqueue::buffer_select(cqe.flags()),
                        });
                    }
                }
            }
            let overflow = {
                let guard = self.sq.lock();
                // SAFETY: the `sq` lock is held: this is the only SubmissionQueue.
                let sq = unsafe { self.ring.submission_shared() };
                let overflow = sq.cq_overflow();
                // The view writes its (cached) tail back when dropped: that must happen while
                // the lock is still held, or it would erase an SQE pushed meanwhile.
                drop(sq);
                drop(guard);
                overflow
            };
            if !overflow {
                return n;
            }
            // Completions wait on the kernel's overflow list: an enter with GETEVENTS (which
            // `submit` adds when the flag is up) moves them into the ring.
            let _ = self.ring.submit();
        }
    }
}

impl Driver for Uring {
    fn backend(&self) -> Backend {
        Backend::Uring
    }

    /// No per-socket state: io_uring addresses each operation by descriptor.
    type Sock = ();

    fn new_sock(&self, _stream: bool) {}

    fn register(&self, _io: &(), _sock: u64, _fd: RawFd) -> io::Result<()> {
        Ok(())
    }

    fn deregister(&self, _io: &(), _sock: u64, _fd: RawFd) {}

    fn push(&self, _io: &(), token: u64, op: OpDesc) {
        self.push_entry(Self::entry(op).user_data(token));
    }

    fn cancel(&self, _io: &(), token: u64) {
        self.push_entry(opcode::AsyncCancel::new(token).build().user_data(CANCEL));
    }

    /// Submits what was pushed; returns what completed at once, or else waits in the wait
    /// set (any number of threads at once; the kernel wakes one per event) until `deadline`,
    /// a wake-up, the alarm or a batch of completions, and returns what completed. True if
    /// the alarm went off.
    ///
    /// A completion whose task work runs in a thread waiting here interrupts that thread's
    /// wait (`EINTR`), and the thread reaps it itself; one posted while every thread is busy
    /// signals the ring's eventfd, so an idle thread that comes to wait finds it at once.
    fn wait(
        &self,
        deadline: Option<Instant>,
        _alone: bool,
        out: &mut Vec<Raw>,
    ) -> io::Result<bool> {
        if self.refused.swap(0, SeqCst) != 0 {
            // The kernel refused a submission: its SQEs are still in the ring; submit again.
            self.combine.pushed();
        }
        // This thread reaps what its own submission completes (a send over loopback
        // completes inside the system call): the ring's eventfd need not wake another
        // waiter for that, only for it to find the CQ already reaped. So notifications are
        // off from before the submission to after the first reap, and a second reap once
        // they are back on takes whatever else completed in between, unannounced: nothing
        // is left in the CQ without a signal. (Another thread's window may overlap this
        // one; every thread turns them back on after its own, so they end on.)
        {
            let _g = self.cq.lock();
            self.eventfd_notifications(false);
        }
        self.submit_pending();
        let refused = self.refused.load(SeqCst);
        let n = {
            let _g = self.cq.lock();
            let n = self.reap(out);
            self.eventfd_notifications(true);
            n + self.reap(out)
        };
        if refused != 0 {
            // Refused again: what completed is reaped (that may be what the kernel waits
            // for); the port logs, counts and retries after a pause.
            let e = io::Error::from_raw_os_error(refused);
            return Err(io::Error::new(
                e.kind(),
                format!("io_uring refused a submission: {e}"),
            ));
        }
        if n > 0 {
            return Ok(false);
        }
        let mut events = [MaybeUninit::<libc::epoll_event>::uninit(); 1];
        // The window's safety net. Nothing is lost only if the kernel, after publishing a
        // CQE, reads the flag with a full barrier between (it does on the kernels we
        // read: `io_cqring_wake`'s `smp_mb` comes first), since this thread turns the flag
        // on and then reads the tail: a store-buffer pair. Should a kernel lack that
        // barrier, both sides could miss each other and a CQE would sit unannounced while
        // every thread sleeps. So the first wait after a window is at most WINDOW_RECHECK
        // long and reaps once more: any such CQE is seen within that bound (an idle
        // thread pays one extra wake-up when it falls idle, none while it stays idle).
        let net = Instant::now() + WINDOW_RECHECK;
        let first = match deadline {
            Some(d) if d <= net => Some(d),
            _ => Some(net),
        };
        let woke = self
            .ws
            .wait(&mut events, timeout_ms(first))
            .map(|ev| (ev.iter().any(|e| e.u64 == ALARM), !ev.is_empty()));
        let n = self.reap_locked(out);
        match woke? {
            (alarm, true) => return Ok(alarm),
            _ if n > 0 || first == deadline => return Ok(false),
            _ => {}
        }
        // The net's timeout (or an interruption) with nothing found: wait for real now.
        let alarm = self
            .ws
            .wait(&mut events, timeout_ms(deadline))
            .map(|ev| ev.iter().any(|e| e.u64 == ALARM));
        self.reap_locked(out);
        alarm
    }

    /// Reaps what is in the completion queue now, without a system call, if no other thread
    /// is reading it.
    fn try_reap(&self, out: &mut Vec<Raw>) {
        if let Some(_g) = self.cq.try_lock() {
            self.reap(out);
        }
    }

    /// Wakes one waiting thread (or makes the next wait return at once).
    fn wake(&self) {
        self.ws.wake();
    }

    /// Sets the wait set's alarm.
    fn arm(&self, deadline: Instant) {
        self.ws.arm(deadline);
    }

    /// The combiner, for the hand-off of threads outside any handler pass (`PortInner::issue`).
    fn combiner(&self) -> Option<&Combiner> {
        Some(&self.combine)
    }

    /// The wait set's faults.
    #[cfg(feature = "fault-injection")]
    fn faults(&self) -> Option<&crate::fault::Faults> {
        Some(self.ws.faults())
    }

    /// Submits what was pushed; nothing completes at once here (completions come from the
    /// CQ, reaped by a waiter or a busy thread's look).
    fn flush(&self, _out: &mut Vec<Raw>) {
        self.submit_pending();
    }

    /// Registers the pool's provided-buffer ring (Linux 5.19) under its group id.
    fn register_pool(&self, pool: &PoolMem) -> io::Result<()> {
        let Some(ring) = pool.ring() else {
            return Ok(());
        };
        let (addr, entries) = ring.addr_entries();
        // SAFETY: the ring memory is owned by the pool, which the port keeps until this
        // backend (and so the io_uring that reads the ring) has been dropped.
        unsafe {
            self.ring
                .submitter()
                .register_buf_ring_with_flags(addr, entries, pool.group(), 0)
        }
        .map_err(|e| setup_error("provided-buffer ring registration (Linux 5.19)", e))
    }

    fn pool_ring(&self) -> bool {
        true
    }

    /// io_uring runs task work on the submitting thread.
    fn follow_up_on_submitter(&self) -> bool {
        true
    }
}

fn clamp(len: usize) -> u32 {
    len.min(u32::MAX as usize) as u32
}
