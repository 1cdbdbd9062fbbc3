//! Per-thread state: the thread's waiter, and for each port the thread used whether it holds
//! a concurrency slot, defers its submissions, or has operations waiting to be submitted.
//!
//! It knows a port only as a [`PortOfThread`] (which `PortInner` implements), so that the
//! port's state can use this module without this module using it back.

use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::sched::Waiter;

/// A port as the per-thread state sees it.
pub(super) trait PortOfThread: Send + Sync {
    /// The port's id (unique in the process).
    fn id(&self) -> usize;
    /// The thread is exiting with this entry of the port: it submits what it started and
    /// gives its slot back (as IOCP does).
    fn thread_exits(&self, e: &mut PortEntry);
}

pub(super) struct Local {
    pub(super) waiter: std::sync::Arc<Waiter>,
    /// The ports this thread used: whether it holds a slot of each, and whether it started
    /// operations there that are not submitted yet. An entry is made once per (thread,
    /// port), so a `get` clones no `Arc`.
    pub(super) ports: Vec<PortEntry>,
}

pub(super) struct PortEntry {
    pub(super) id: usize,
    pub(super) port: Weak<dyn PortOfThread>,
    pub(super) held: bool,
    /// The thread opted in to deferred submission (`Port::defer_submissions`).
    pub(super) defer: bool,
    pub(super) dirty: bool,
    /// Handler passes whose operations are waiting to be submitted together.
    pub(super) deferred_passes: u32,
    /// Handler passes straight from one to the next since `PortBuilder::before_submit`'s
    /// hook last ran on this thread.
    pub(super) passes_since_hook: u32,
    /// Counted in `PortInner::returning`: a deferring thread inside a handler pass, which
    /// submits what is pending when it leaves it.
    pub(super) returning: bool,
    /// Handler passes since this thread last looked at the clock for `REAP_INTERVAL`.
    pub(super) passes_since_reap: u32,
    /// When this thread last took what the kernel completed while busy.
    pub(super) last_reap: Instant,
    /// The thread is a `Pool` worker of this port and runs the pool's handler (its last
    /// `get` was the pool's and returned a completion): its own `get` on this port would
    /// take a completion the pool never sees.
    pub(super) in_pool_handler: bool,
    /// Counted in `PortInner::serving` (a `Pool` worker, or a thread that called `get`);
    /// taken out of it when the thread exits.
    pub(super) serving: bool,
}

/// How long `Port::shutdown` waits for the kernel to hand back the operations it cancelled.
pub(super) const SHUTDOWN_REAP: Duration = Duration::from_secs(1);

/// Most handler passes whose operations wait to be submitted together, when a thread keeps
/// finding completions ready without going to the kernel.
pub(super) const MAX_DEFERRED_PASSES: u32 = 16;

/// A thread that keeps finding completions ready takes what the kernel completed meanwhile
/// (`PortInner::reap_now`) at most every `REAP_INTERVAL`, and looks at the clock for it every
/// `REAP_CHECK_PASSES` handler passes. So I/O waits at most about that long behind a queue of
/// posts and timers, and a fast stream of posts pays one look (an `epoll_wait` on epoll) per
/// interval, not per pass.
pub(super) const REAP_CHECK_PASSES: u32 = 32;
pub(super) const REAP_INTERVAL: std::time::Duration = std::time::Duration::from_micros(200);

impl Local {
    pub(super) fn entry<P: PortOfThread + 'static>(&mut self, port: &Arc<P>) -> &mut PortEntry {
        let id = port.id();
        if let Some(i) = self.ports.iter().position(|e| e.id == id) {
            return &mut self.ports[i];
        }
        // Forget ports that are gone before remembering a new one.
        self.ports.retain(|e| e.port.strong_count() > 0);
        let weak: Weak<P> = Arc::downgrade(port);
        self.ports.push(PortEntry {
            id,
            port: weak,
            held: false,
            defer: false,
            dirty: false,
            deferred_passes: 0,
            passes_since_hook: 0,
            returning: false,
            passes_since_reap: 0,
            last_reap: Instant::now(),
            in_pool_handler: false,
            serving: false,
        });
        self.ports.last_mut().expect("just pushed")
    }

    pub(super) fn find(&mut self, port: usize) -> Option<&mut PortEntry> {
        self.ports.iter_mut().find(|e| e.id == port)
    }
}

impl Drop for Local {
    /// A thread that exits inside a handler pass submits what it started and gives its slot
    /// back (as IOCP does).
    fn drop(&mut self) {
        for mut e in self.ports.drain(..) {
            if let Some(port) = e.port.upgrade() {
                port.thread_exits(&mut e);
            }
        }
    }
}

thread_local! {
    pub(super) static LOCAL: RefCell<Local> = RefCell::new(Local {
        waiter: Waiter::new(),
        ports: Vec::new(),
    });
}
