//! The DB threads and their bounded job queues: `loaders` threads run logins, one writer runs
//! the batches of saves in queue order (batches queued behind the one it takes join its
//! transaction); each result goes back through the callback given to [`DbPool::spawn`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cport_server::os::thread_cpu_ns;
use crossbeam_channel::{Receiver, Sender};

use super::config::PlayerRow;
use super::store::{Fence, Store, FENCED};

/// Rows per batch (one transaction) at most.
pub(crate) const MAX_BATCH: usize = 1000;

/// A login's load, asked by a worker.
#[derive(Debug)]
pub(crate) struct LoadJob<I> {
    pub session: I,
    /// The player id the login holds, and its login generation (a result for an older
    /// login of the same id is stale).
    pub id: u32,
    pub gen: u64,
    pub name: String,
}

/// Rows to write, each with the sequence number of its change.
#[derive(Debug)]
pub(crate) struct SaveJob {
    pub rows: Vec<(PlayerRow, u64)>,
}

/// What a DB thread posts back to the port.
#[derive(Debug)]
pub(crate) enum Done<I> {
    Load {
        job: LoadJob<I>,
        result: Result<Option<PlayerRow>, String>,
    },
    Save {
        /// (name, sequence number) of every row of the batch.
        rows: Vec<(String, u64)>,
        result: Result<(), String>,
    },
}

/// Counters of the DB threads.
#[derive(Default)]
pub(crate) struct DbCounters {
    pub loads: AtomicU64,
    pub load_errors: AtomicU64,
    pub batches: AtomicU64,
    pub rows_saved: AtomicU64,
    pub save_errors: AtomicU64,
    pub max_batch: AtomicU64,
    pub save_ns: AtomicU64,
    /// A save was refused by the zone's lease: a newer run of this zone writes now.
    pub fenced: std::sync::atomic::AtomicBool,
}

/// The job queues and the DB threads.
pub(crate) struct DbPool<I> {
    pub loads: Sender<LoadJob<I>>,
    pub saves: Sender<SaveJob>,
    pub counters: Arc<DbCounters>,
    /// CPU time of each DB thread so far (ns), the writer last.
    pub cpu_ns: Arc<[AtomicU64]>,
    /// Dropped to tell the threads to finish the queued jobs and exit.
    stop: parking_lot::Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    load_rx: Receiver<LoadJob<I>>,
    save_rx: Receiver<SaveJob>,
    threads: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    /// A cluster zone's run: every save checks its lease.
    pub fence: Option<Fence>,
}

/// Loads queued at most (beyond: `SC_LOGIN_FAIL`, the database is too slow).
pub(crate) const LOAD_QUEUE: usize = 4096;
/// Batches of saves queued at most (beyond: kept pending, retried at the next tick).
pub(crate) const SAVE_QUEUE: usize = 64;

impl<I: Send + 'static> DbPool<I> {
    /// The queues (jobs wait there until [`DbPool::spawn`]).
    pub fn new(loaders: usize) -> DbPool<I> {
        let (loads, load_rx) = crossbeam_channel::bounded(LOAD_QUEUE);
        let (saves, save_rx) = crossbeam_channel::bounded(SAVE_QUEUE);
        let (stop, stop_rx) = crossbeam_channel::bounded(0);
        DbPool {
            loads,
            saves,
            counters: Arc::default(),
            cpu_ns: (0..=loaders.max(1)).map(|_| AtomicU64::new(0)).collect(),
            stop: parking_lot::Mutex::new(Some(stop)),
            stop_rx,
            load_rx,
            save_rx,
            threads: parking_lot::Mutex::new(Vec::new()),
            fence: None,
        }
    }

    /// Starts the threads, one store each (`stores.len()` = loaders + 1, the writer's last).
    /// Each result goes to `post`, called on the DB thread (`false`: refused, the server is
    /// shutting down).
    pub fn spawn<P>(&self, mut stores: Vec<Store>, post: P) -> std::io::Result<()>
    where
        P: Fn(Done<I>) -> bool + Clone + Send + 'static,
    {
        let writer_store = stores.pop().expect("a store for the writer");
        let mut threads = self.threads.lock();
        for (i, mut store) in stores.into_iter().enumerate() {
            let (rx, stop, post) = (self.load_rx.clone(), self.stop_rx.clone(), post.clone());
            let (c, cpu) = (self.counters.clone(), self.cpu_ns.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("cport-db-load{i}"))
                    .spawn(move || {
                        let run = |job: LoadJob<I>, store: &mut Store| {
                            let result = store.load(&job.name);
                            c.loads.fetch_add(1, Relaxed);
                            if let Err(e) = &result {
                                c.load_errors.fetch_add(1, Relaxed);
                                tracing::warn!(name = ?job.name, "loading a player failed: {e}");
                            }
                            cpu[i].store(thread_cpu_ns(), Relaxed);
                            // Refused only at shutdown: the login is gone with the sessions.
                            let _ = post(Done::Load { job, result });
                        };
                        worker_loop(&rx, &stop, |job| run(job, &mut store));
                    })?,
            );
        }
        let (rx, stop) = (self.save_rx.clone(), self.stop_rx.clone());
        let more = self.save_rx.clone();
        let (c, cpu) = (self.counters.clone(), self.cpu_ns.clone());
        let mut store = writer_store;
        let fence = self.fence;
        threads.push(
            std::thread::Builder::new()
                .name("cport-db-save".into())
                .spawn(move || {
                    worker_loop(&rx, &stop, |job: SaveJob| {
                        // Jobs queued behind this one (rows of logouts, one each) join its
                        // transaction, in queue order (a later row of a name wins).
                        let mut job = job;
                        while job.rows.len() < MAX_BATCH {
                            match more.try_recv() {
                                Ok(next) => job.rows.extend(next.rows),
                                Err(_) => break,
                            }
                        }
                        let t0 = Instant::now();
                        let rows: Vec<PlayerRow> = job.rows.iter().map(|r| r.0.clone()).collect();
                        if c.fenced.load(Relaxed) {
                            return; // this run was replaced: it writes nothing more
                        }
                        let result = store.save(&rows, fence);
                        c.save_ns.fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
                        match &result {
                            Ok(()) => {
                                c.batches.fetch_add(1, Relaxed);
                                c.rows_saved.fetch_add(rows.len() as u64, Relaxed);
                                c.max_batch.fetch_max(rows.len() as u64, Relaxed);
                            }
                            Err(e) if e.starts_with(FENCED) => {
                                c.fenced.store(true, Relaxed);
                                tracing::error!("{e}: this run of the zone writes nothing more");
                            }
                            Err(e) => {
                                c.save_errors.fetch_add(1, Relaxed);
                                tracing::warn!(
                                    rows = rows.len(),
                                    "saving a batch failed (kept, retried): {e}"
                                );
                            }
                        }
                        cpu[cpu.len() - 1].store(thread_cpu_ns(), Relaxed);
                        let rows = job.rows.into_iter().map(|(r, seq)| (r.name, seq)).collect();
                        // Refused only at shutdown; the final flush writes every row again.
                        let _ = post(Done::Save { rows, result });
                    });
                })?,
        );
        Ok(())
    }
}

impl<I> DbPool<I> {
    /// Lets the threads finish the jobs queued and joins them.
    pub fn stop(&self) {
        drop(self.stop.lock().take());
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }

    /// Total CPU time of the DB threads so far.
    pub fn cpu(&self) -> Duration {
        Duration::from_nanos(self.cpu_ns.iter().map(|c| c.load(Relaxed)).sum())
    }
}

/// Runs jobs until `stop` is disconnected, then the jobs still queued, then returns.
fn worker_loop<J>(rx: &Receiver<J>, stop: &Receiver<()>, mut run: impl FnMut(J)) {
    loop {
        crossbeam_channel::select! {
            recv(rx) -> job => match job {
                Ok(job) => run(job),
                Err(_) => return,
            },
            recv(stop) -> _ => {
                while let Ok(job) = rx.try_recv() {
                    run(job);
                }
                return;
            }
        }
    }
}

impl<I> Drop for DbPool<I> {
    fn drop(&mut self) {
        self.stop();
    }
}
