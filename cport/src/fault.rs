//! Fault injection for tests (cargo feature `fault-injection`, off by default; `cport`'s own
//! tests turn it on through a dev-dependency on itself). Without the feature this module and
//! every hook that consults it are compiled out: nothing is checked on any system call.
//!
//! A port's backend answers the next `n` calls at a [`FaultPoint`] with an error of the
//! test's choosing instead of making the system call, exactly as the kernel would have
//! refused it (nothing was done: no SQE consumed, no descriptor watched). Faults are per
//! port, so tests running in parallel in one process do not disturb each other.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::Relaxed};

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// io_uring: `io_uring_enter` submitting SQEs (the kernel's `EAGAIN`: no memory for
    /// requests; `EBUSY`: completions to reap first).
    UringSubmit,
    /// `epoll_ctl(EPOLL_CTL_ADD)` of the wait set: the epoll backend registering an
    /// associated socket (`ENOMEM`, `ENOSPC` past `max_user_watches`).
    EpollAdd,
    /// `epoll_wait` on the wait set, where every idle thread waits (both backends).
    EpollWait,
}

const POINTS: usize = 3;

impl FaultPoint {
    fn index(self) -> usize {
        match self {
            FaultPoint::UringSubmit => 0,
            FaultPoint::EpollAdd => 1,
            FaultPoint::EpollWait => 2,
        }
    }
}

/// The faults armed on one port's backend ([`crate::Port::faults`]).
#[derive(Debug, Default)]
pub struct Faults {
    /// Calls still to fail, per point.
    left: [AtomicU32; POINTS],
    /// The errno they fail with, per point.
    errno: [AtomicI32; POINTS],
    /// Calls failed so far, per point.
    injected: [AtomicU64; POINTS],
}

impl Faults {
    /// The next `times` calls at `point` fail with `errno` (replacing what was armed there).
    pub fn fail(&self, point: FaultPoint, errno: i32, times: u32) {
        let i = point.index();
        self.errno[i].store(errno, Relaxed);
        self.left[i].store(times, Relaxed);
    }

    /// How many calls at `point` were failed so far.
    pub fn injected(&self, point: FaultPoint) -> u64 {
        self.injected[point.index()].load(Relaxed)
    }

    /// Calls at `point` still armed to fail.
    pub fn armed(&self, point: FaultPoint) -> u32 {
        self.left[point.index()].load(Relaxed)
    }

    /// The hook: the error the call at `point` must fail with, if one is armed (called by the
    /// Linux backends; the IOCP backend has no hooks yet).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn take(&self, point: FaultPoint) -> Option<io::Error> {
        let i = point.index();
        self.left[i]
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .ok()?;
        self.injected[i].fetch_add(1, Relaxed);
        Some(io::Error::from_raw_os_error(self.errno[i].load(Relaxed)))
    }
}
