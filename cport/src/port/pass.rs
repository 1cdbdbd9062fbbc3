//! A thread's handler pass: lending its slot while it blocks ([`Port::blocking`]),
//! deferring its submissions to its next `get` ([`Port::defer_submissions`],
//! [`Port::submit`]), and a [`Pool`](crate::Pool) worker's enlistment.

use crate::sync::Ordering::SeqCst;

use super::inner::PortInner;
use super::local::LOCAL;
use super::Port;

impl Port {
    /// Runs `f`, which may block, while the calling thread's concurrency slot is lent to
    /// another waiting thread; takes a slot back (waiting for one if needed) before
    /// returning. Outside a handler pass of this port it just runs `f`.
    ///
    /// # Who takes the slot
    ///
    /// The Windows kernel sees a worker block and lets another thread waiting on the port
    /// run in its place. User space cannot see blocking, so a handler says it with
    /// `blocking`, and the slot goes to a thread that is *waiting in `get`* on this port. So
    /// `blocking` helps only if the port has more threads than its concurrency value, which
    /// is why IOCP programs start more (twice the processors is the usual advice): with `t`
    /// threads and concurrency `c`, up to `t - c` handlers can block at once while `c` others
    /// keep running. [`Pool::spawn`](crate::Pool::spawn) with `0` threads starts `2 × c`
    /// (and so does `cport-server`'s default `Config`). With `t == c`, a blocking handler's
    /// slot stays unused until a busy worker comes back to `get`, and once every worker
    /// blocks nothing runs until one of them returns.
    ///
    /// A call that finds no thread to take its slot (none waits in `get`, and no other
    /// thread serving the port is on its way there) is counted in
    /// [`PortStats::blocking_unlent`](crate::PortStats::blocking_unlent), and the first one
    /// on a port logs a warning (with `tracing`). A handler that blocks *without* `blocking`
    /// keeps its slot: with every slot held that way nothing runs, however many threads wait.
    ///
    /// ```
    /// use cport::{Op, Pool, Port};
    /// use std::sync::{mpsc, Mutex};
    /// use std::time::Duration;
    ///
    /// // One slot, and a pool of 0 threads: two threads, one of them spare.
    /// let port = Port::new(1)?;
    /// let (go, wait) = mpsc::channel::<()>();
    /// let (go, wait) = (Mutex::new(go), Mutex::new(wait));
    /// let (done, finished) = mpsc::channel();
    /// let done = Mutex::new(done);
    /// let pool = Pool::spawn(&port, 0, move |port, c| match (c.op, c.user) {
    ///     // Waits for the other post's handler, which can run only on the lent slot.
    ///     (Op::Post, 1) => {
    ///         let got = port.blocking(|| wait.lock().unwrap().recv_timeout(Duration::from_secs(10)));
    ///         done.lock().unwrap().send(got.is_ok()).unwrap();
    ///     }
    ///     (Op::Post, 2) => go.lock().unwrap().send(()).unwrap(),
    ///     _ => {}
    /// })?;
    /// assert_eq!(pool.threads(), 2);
    /// port.post(0, 0, 1)?;
    /// port.post(0, 0, 2)?;
    /// assert!(finished.recv()?, "the second handler ran while the first blocked");
    /// pool.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Timed calls on io_uring
    ///
    /// On io_uring, a timed blocking call inside `f` (a read with `SO_RCVTIMEO`, a wait with
    /// a timeout) can fail once with `ErrorKind::Interrupted`: the kernel runs the follow-up
    /// work of operations this worker submitted earlier on this thread, and interrupts such
    /// calls to do it. Retry on `Interrupted` (`read_exact` and `write_all` do), or use the
    /// epoll backend. A thread outside any handler pass (`main`, a database thread) is not
    /// affected: on io_uring it leaves its submissions to the workers.
    pub fn blocking<R>(&self, f: impl FnOnce() -> R) -> R {
        let shared = &*self.inner;
        shared.before_submit_in_pass();
        // Outside the handler pass while `f` runs: what `f` starts is submitted at once (it may
        // wait for it), not deferred to a `get` that comes only after `f`.
        let (held, dirty) = LOCAL.with(|l| match l.borrow_mut().find(shared.id) {
            // No longer bound to come back to `get` soon: what was handed over goes out now.
            Some(e) => (
                std::mem::take(&mut e.held),
                std::mem::take(&mut e.dirty) | shared.stop_returning(e),
            ),
            None => (false, false),
        });
        if dirty {
            shared.flush();
        }
        if !held {
            return f();
        }
        shared.lent_slot(shared.sched.release_slot(shared));
        struct Resume<'a>(&'a PortInner);
        impl Drop for Resume<'_> {
            fn drop(&mut self) {
                // From here on it is one more thread that will take a slot as soon as one is
                // free (ahead of the others), not a blocked one.
                self.0.blocked.fetch_sub(1, SeqCst);
                let waiter = LOCAL.with(|l| {
                    let mut l = l.borrow_mut();
                    if let Some(e) = l.find(self.0.id) {
                        e.held = true;
                    }
                    l.waiter.clone()
                });
                self.0.sched.leave_blocking(&waiter);
            }
        }
        let _resume = Resume(shared);
        f()
    }

    /// Lets the calling thread's operations wait for its next `get` to be submitted together.
    ///
    /// By default an operation is handed to the kernel when it is started, as IOCP's
    /// `WSASend` is issued at once. A thread that loops on `get` can opt in to deferral: an
    /// operation it starts inside a handler pass (between a `get` that returned and the next
    /// one) is then submitted when it comes back to `get`, together with everything else it
    /// started (and with the next passes' operations if completions are ready at once, up to
    /// 16 passes): one system call for many operations under load. [`Pool`](crate::Pool)
    /// workers opt in. The price: a handler that starts I/O and then computes for long should
    /// call [`Port::submit`] first. Outside a handler pass, and in [`Port::blocking`],
    /// operations are submitted at once either way.
    pub fn defer_submissions(&self) {
        LOCAL.with(|l| l.borrow_mut().entry(&self.inner).defer = true);
    }

    /// `Pool::spawn`, before it starts `n` workers: each counts at once as a thread that will
    /// come to `get` and submit what threads outside any handler pass hand over
    /// (`PortInner::issue`), so that `main`, starting operations right after `Pool::spawn`, does
    /// not submit them itself while the workers are still starting. Each worker takes over
    /// its unit with [`Port::enlist_worker`]; `-n` gives back units of workers never started.
    /// They count as threads that serve the port (`PortInner::serving`) at once too, so that
    /// a handler's `blocking` does not take workers still starting for missing ones.
    pub(crate) fn expect_workers(&self, n: isize) {
        // They serve the port from now on (`PortInner::lent_slot`), even before they start.
        if n >= 0 {
            self.inner.serving.fetch_add(n as usize, SeqCst);
        } else {
            self.inner.serving.fetch_sub(n.unsigned_abs(), SeqCst);
        }
        if self.inner.hand_off {
            if n >= 0 {
                self.inner.returning.fetch_add(n as usize, SeqCst);
            } else {
                self.inner.returning.fetch_sub(n.unsigned_abs(), SeqCst);
            }
        }
    }

    /// A `Pool` worker, about to loop on `get`: it defers its submissions and takes over the
    /// unit of `returning` that [`Port::expect_workers`] counted for it.
    pub(crate) fn enlist_worker(&self) {
        let shared = &*self.inner;
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            let e = l.entry(&self.inner);
            e.defer = true;
            // Counted in `serving` by `Pool::spawn` already.
            e.serving = true;
            if shared.hand_off {
                debug_assert!(!e.returning, "a thread is one Pool's worker at most once");
                e.returning = true;
            }
        });
    }

    /// Submits now the operations this thread started in its current handler pass (only a
    /// thread that called [`Port::defer_submissions`], such as a [`Pool`](crate::Pool)
    /// worker, has any waiting).
    pub fn submit(&self) {
        self.inner.before_submit_in_pass();
        let dirty = LOCAL.with(|l| {
            l.borrow_mut()
                .find(self.inner.id)
                .is_some_and(|e| std::mem::take(&mut e.dirty))
        });
        if dirty {
            self.inner.flush();
        }
    }
}
