//! The worker pool: N threads each looping on [`Port::get`] and calling one handler — the
//! worker thread every IOCP server writes, written once.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::op::Completion;
use crate::port::Port;

/// Threads per concurrency slot of a pool of `0` threads: one that runs, one spare for a
/// handler inside `Port::blocking` (the "twice the processors" of IOCP servers). The spare
/// threads park while every slot is taken.
const DEFAULT_THREADS_PER_SLOT: usize = 2;

/// A pool of worker threads serving one port.
///
/// Each worker calls `handler(&port, completion)` for every completion it dequeues, until
/// the port is shut down. Workers defer the operations their handlers start to their next
/// `get` ([`Port::defer_submissions`]). A handler that panics is logged and the worker goes on: one bad
/// completion never takes a worker away.
///
/// The pool's workers are the ones that call [`Port::get`]: a handler must not call `get`
/// (or `get_many`) on the same port, since the completion it took would never reach the
/// handler. Debug builds panic on it before anything is taken; release builds warn once.
/// A handler that must wait calls [`Port::blocking`] instead.
///
/// Dropping a `Pool` neither stops nor joins its workers: they go on serving the port until
/// it is shut down. Call [`Pool::shutdown`] (or shut the port down and [`Pool::join`]) to
/// stop them and wait for them.
///
/// ```
/// use cport::{Op, Pool, Port};
/// use std::sync::mpsc;
/// use std::sync::Mutex;
///
/// let port = Port::new(2)?;
/// let (tx, rx) = mpsc::channel();
/// let tx = Mutex::new(tx);
/// let pool = Pool::spawn(&port, 2, move |_port, c| {
///     if let Op::Post = c.op {
///         tx.lock().unwrap().send(c.user * 2).unwrap();
///     }
/// })?;
/// for n in 1..=3 {
///     port.post(0, 0, n)?;
/// }
/// let mut doubled: Vec<u64> = rx.iter().take(3).collect();
/// doubled.sort();
/// assert_eq!(doubled, [2, 4, 6]);
/// pool.shutdown(); // shuts the port down and joins the workers
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Pool {
    port: Port,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `threads` workers on `port`; `0` starts twice the port's concurrency value.
    ///
    /// More threads than the concurrency value is how IOCP servers are built: the extra
    /// threads park while every slot is taken (they cost no CPU then), and take the slot of a
    /// handler that blocks inside [`Port::blocking`], so that the others keep being served
    /// (see there). A pool of exactly the concurrency value has no spare thread:
    /// `blocking` then has nobody to lend its slot to ([`PortStats::blocking_unlent`]
    /// counts such calls).
    ///
    /// [`PortStats::blocking_unlent`]: crate::PortStats::blocking_unlent
    pub fn spawn<H>(port: &Port, threads: usize, handler: H) -> io::Result<Pool>
    where
        H: Fn(&Port, Completion) + Send + Sync + 'static,
    {
        let n = match threads {
            0 => port.concurrency().saturating_mul(DEFAULT_THREADS_PER_SLOT),
            n => n,
        };
        let handler = Arc::new(handler);
        let mut pool = Pool {
            port: port.clone(),
            threads: Vec::with_capacity(n),
        };
        port.expect_workers(n as isize);
        for i in 0..n {
            let port = port.clone();
            let handler = handler.clone();
            let t = std::thread::Builder::new()
                .name(format!("cport-worker-{i}"))
                .spawn(move || worker(&port, &*handler));
            match t {
                Ok(t) => pool.threads.push(t),
                Err(e) => {
                    pool.port.expect_workers(-((n - i) as isize));
                    pool.port.shutdown();
                    pool.join();
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// The port the workers serve.
    pub fn port(&self) -> &Port {
        &self.port
    }

    /// Waits until every worker has exited (which they do once the port is shut down).
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Shuts the port down and waits for the workers.
    pub fn shutdown(self) {
        self.port.shutdown();
        self.join();
    }
}

fn worker(port: &Port, handler: &(dyn Fn(&Port, Completion) + Send + Sync)) {
    // A worker always comes back to `get`: its handlers' operations go out together there,
    // and from now on it counts as a thread that will submit what others hand over.
    port.enlist_worker();
    loop {
        match port.get_for_pool() {
            Ok(Some(c)) => {
                let (key, user) = (c.key, c.user);
                if catch_unwind(AssertUnwindSafe(|| handler(port, c))).is_err() {
                    tracing::error!(key, user, "completion handler panicked; worker continues");
                }
            }
            Ok(None) => {}
            Err(_closed) => return,
        }
    }
}
