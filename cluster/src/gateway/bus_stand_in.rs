//! A stand-in for `crate::bus` (written on another branch at the same time), with the same
//! names and signatures the gateway uses, so that the gateway builds and its glue is tested
//! against a real `nats-server` before the bus lands. When it does, `gateway/mod.rs` imports
//! `crate::bus` instead and this file goes.
//!
//! Kept small: one 1-thread tokio runtime per `Bus`, one ordered channel into one publishing
//! task, one subscription task; an `Outbox` of one open batch per destination; an `Inbox` of
//! one queue per source with at most one drainer.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cport_mmo::cluster::wire::{BatchWriter, Header, Msg, Source};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Where and who a bus connection is.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The subject prefix (several clusters share one server).
    pub cluster: String,
    /// This process.
    pub me: Source,
    /// This process's start.
    pub incarnation: u32,
}

/// Messages and bytes through the bus.
#[derive(Debug, Clone, Copy, Default)]
pub struct BusCounters {
    /// Messages published.
    pub msgs_out: u64,
    /// Bytes published.
    pub bytes_out: u64,
    /// Messages received.
    pub msgs_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Publish errors.
    pub errors: u64,
}

#[derive(Default)]
struct Counts {
    msgs_out: AtomicU64,
    bytes_out: AtomicU64,
    msgs_in: AtomicU64,
    bytes_in: AtomicU64,
    errors: AtomicU64,
}

struct Inner {
    cfg: BusConfig,
    rt: tokio::runtime::Handle,
    /// Ends the bus thread when the last `Bus` is dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
    client: async_nats::Client,
    out: mpsc::UnboundedSender<Out>,
    seqs: Mutex<HashMap<Source, u64>>,
    counts: Arc<Counts>,
}

/// What the publishing task is asked to do, in order.
enum Out {
    Publish(String, Bytes),
    /// Answer once everything before has been handed to the server.
    Flush(std::sync::mpsc::Sender<()>),
}

/// A connection to core NATS.
#[derive(Clone)]
pub struct Bus(Arc<Inner>);

fn name(s: Source) -> String {
    match s {
        Source::Gateway(n) => format!("gw.{n}"),
        Source::Zone(n) => format!("zone.{n}"),
    }
}

impl Bus {
    /// Connects on its own 1-thread runtime, retrying until `timeout`.
    pub fn connect(cfg: BusConfig, timeout: Duration) -> io::Result<Bus> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("bus".into())
            .spawn(move || {
                let _ = rt.block_on(stopped);
            })?;
        let opts = async_nats::ConnectOptions::new()
            .name(format!(
                "{}-{}",
                cfg.cluster,
                name(cfg.me).replace('.', "-")
            ))
            .connection_timeout(timeout);
        let url = cfg.url.clone();
        let client = wait(&handle, timeout, async move { opts.connect(url).await })?
            .map_err(|e| io::Error::other(format!("NATS connect to {}: {e}", cfg.url)))?;
        let rt = handle;
        let (out, mut rx) = mpsc::unbounded_channel::<Out>();
        let counts = Arc::new(Counts::default());
        let (c2, k2) = (client.clone(), counts.clone());
        rt.spawn(async move {
            while let Some(job) = rx.recv().await {
                match job {
                    Out::Publish(subject, batch) => {
                        let n = batch.len() as u64;
                        if c2.publish(subject, batch).await.is_ok() {
                            k2.msgs_out.fetch_add(1, Relaxed);
                            k2.bytes_out.fetch_add(n, Relaxed);
                        } else {
                            k2.errors.fetch_add(1, Relaxed);
                        }
                    }
                    Out::Flush(done) => {
                        let _ = c2.flush().await;
                        let _ = done.send(());
                    }
                }
            }
        });
        Ok(Bus(Arc::new(Inner {
            cfg,
            rt,
            _stop: stop,
            client,
            out,
            seqs: Mutex::new(HashMap::new()),
            counts,
        })))
    }

    /// The subject of a process's inbox.
    pub fn subject(&self, of: Source) -> String {
        format!("{}.{}", self.0.cfg.cluster, name(of))
    }

    /// Subscribes to this process's inbox; `deliver` gets each payload in order on the bus
    /// thread.
    pub fn subscribe(&self, mut deliver: impl FnMut(Bytes) + Send + 'static) -> io::Result<()> {
        let subject = self.subject(self.0.cfg.me);
        let client = self.0.client.clone();
        let mut sub = wait(&self.0.rt, Duration::from_secs(10), async move {
            let sub = client.subscribe(subject).await?;
            client.flush().await?;
            Ok::<_, async_nats::Error>(sub)
        })?
        .map_err(|e| io::Error::other(format!("NATS subscribe: {e}")))?;
        let counts = self.0.counts.clone();
        self.0.rt.spawn(async move {
            while let Some(m) = sub.next().await {
                counts.msgs_in.fetch_add(1, Relaxed);
                counts.bytes_in.fetch_add(m.payload.len() as u64, Relaxed);
                deliver(m.payload);
            }
        });
        Ok(())
    }

    /// Publishes a batch to `to`'s inbox, in order with this thread's other publishes.
    pub fn publish(&self, to: Source, batch: Bytes) {
        if self
            .0
            .out
            .send(Out::Publish(self.subject(to), batch))
            .is_err()
        {
            self.0.counts.errors.fetch_add(1, Relaxed);
        }
    }

    /// Waits (at most `timeout`) until everything published so far was handed to the server.
    pub fn flush(&self, timeout: Duration) -> io::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let gone = || io::Error::other("the bus is closed");
        self.0.out.send(Out::Flush(tx)).map_err(|_| gone())?;
        rx.recv_timeout(timeout)
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the bus did not flush in time"))
    }

    /// The counters now.
    pub fn counters(&self) -> BusCounters {
        let c = &self.0.counts;
        BusCounters {
            msgs_out: c.msgs_out.load(Relaxed),
            bytes_out: c.bytes_out.load(Relaxed),
            msgs_in: c.msgs_in.load(Relaxed),
            bytes_in: c.bytes_in.load(Relaxed),
            errors: c.errors.load(Relaxed),
        }
    }

    /// The next header for a batch to `to`.
    pub fn header(&self, to: Source) -> Header {
        let mut seqs = self.0.seqs.lock();
        let seq = seqs.entry(to).or_insert(0);
        let h = Header {
            source: self.0.cfg.me,
            incarnation: self.0.cfg.incarnation,
            seq: *seq,
        };
        *seq += 1;
        h
    }
}

/// Runs `f` on the bus thread and waits for it, at most `timeout`.
fn wait<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    timeout: Duration,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(tokio::time::timeout(timeout, f).await);
    });
    match rx.recv_timeout(timeout + Duration::from_secs(1)) {
        Ok(Ok(v)) => Ok(v),
        _ => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the NATS bus did not answer in time",
        )),
    }
}

/// A batch over this size is published by the thread that pushed into it.
const BIG: usize = 60 * 1024;

/// One open batch per destination; the first push into an empty one calls `schedule`.
pub struct Outbox {
    bus: Bus,
    dests: Vec<Source>,
    open: Vec<Mutex<Option<BatchWriter>>>,
    schedule: Box<dyn Fn(usize) + Send + Sync>,
}

impl Outbox {
    /// An outbox to `dests`.
    pub fn new(
        bus: Bus,
        dests: Vec<Source>,
        schedule: impl Fn(usize) + Send + Sync + 'static,
    ) -> Outbox {
        Outbox {
            open: dests.iter().map(|_| Mutex::new(None)).collect(),
            bus,
            dests,
            schedule: Box::new(schedule),
        }
    }

    /// The index of a destination.
    pub fn index(&self, dest: Source) -> Option<usize> {
        self.dests.iter().position(|&d| d == dest)
    }

    /// Adds an entry to `to`'s open batch.
    pub fn push(&self, to: Source, m: &Msg) {
        let Some(i) = self.index(to) else {
            return;
        };
        let mut open = self.open[i].lock();
        let first = open.is_none();
        let w = open.get_or_insert_with(|| BatchWriter::new(self.bus.header(to)));
        w.push(m);
        if w.len() > BIG {
            let batch = open.take().expect("open").finish();
            self.bus.publish(to, batch);
        } else if first {
            (self.schedule)(i);
        }
    }

    /// Publishes destination `i`'s open batch, if any.
    pub fn flush(&self, i: usize) {
        let mut open = self.open[i].lock();
        if let Some(w) = open.take() {
            self.bus.publish(self.dests[i], w.finish());
        }
    }
}

struct Queue<T> {
    items: VecDeque<T>,
    draining: bool,
}

/// Each source's items in order, drained by one worker at a time.
pub struct Inbox<T> {
    queues: Mutex<HashMap<Source, Arc<Mutex<Queue<T>>>>>,
}

impl<T: Send> Inbox<T> {
    /// An empty inbox.
    pub fn new() -> Inbox<T> {
        Inbox {
            queues: Mutex::new(HashMap::new()),
        }
    }

    fn queue(&self, source: Source) -> Arc<Mutex<Queue<T>>> {
        self.queues
            .lock()
            .entry(source)
            .or_insert_with(|| {
                Arc::new(Mutex::new(Queue {
                    items: VecDeque::new(),
                    draining: false,
                }))
            })
            .clone()
    }

    /// Queues an item; true: post a drain of `source`.
    pub fn push(&self, source: Source, item: T) -> bool {
        let q = self.queue(source);
        let mut q = q.lock();
        q.items.push_back(item);
        if q.draining {
            false
        } else {
            q.draining = true;
            true
        }
    }

    /// Runs `f` on `source`'s items in order until its queue is empty.
    pub fn drain(&self, source: Source, mut f: impl FnMut(T)) {
        let q = self.queue(source);
        loop {
            let item = {
                let mut q = q.lock();
                match q.items.pop_front() {
                    Some(item) => item,
                    None => {
                        q.draining = false;
                        return;
                    }
                }
            };
            f(item);
        }
    }
}
