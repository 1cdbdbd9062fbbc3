//! The bus: core NATS between the processes of one cluster.
//!
//! Every process has one inbox subject, `<cluster>.gw.<n>` or `<cluster>.zone.<n>`
//! ([`Bus::subject`]), and every NATS message is one batch of
//! [`cport_mmo::cluster::wire`]. The processes run cport ports (worker pools that must not
//! block), while the NATS client (`async-nats`) runs on tokio; so a [`Bus`] owns a small tokio
//! runtime on one thread of its own, the *bus thread*, and the two worlds meet in three places:
//!
//! - **Out**: [`Bus::publish`] puts a finished batch on one ordered channel, never blocking;
//!   one task on the bus thread hands the channel's batches to the client in order. What one
//!   thread publishes to one destination arrives in that order.
//! - **Batching out**: an [`Outbox`] keeps one open batch per destination, so that under load
//!   many entries share one NATS message while a lone entry still leaves as soon as a worker
//!   gets to it (the glue posts a completion when a batch opens; its handler flushes).
//! - **In**: [`Bus::subscribe`] calls a callback on the bus thread with each payload; the glue
//!   posts it into the port, and an [`Inbox`] keeps each sender's batches in order while the
//!   workers handle them (different senders in parallel).
//!
//! Core NATS is at-most-once: a batch can be lost (a NATS restart, a slow consumer), never
//! duplicated or reordered on one connection. The header's `seq` ([`Bus::header`]) lets a
//! reader tell such a gap from a restart of the sender (a new incarnation).

mod inbox;
mod outbox;

pub use inbox::Inbox;
/// The outboxes' default tick: at most one NATS message per destination per millisecond.
pub const DEFAULT_TICK: Duration = Duration::from_millis(1);

pub use outbox::{Outbox, BATCH_LIMIT};

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use cport_mmo::cluster::wire::{Header, Source};

/// A new incarnation for a process starting now: its start time in microseconds since the
/// Unix epoch (see [`Header::incarnation`]). A later start has a larger one as long as the
/// clocks of the machines that run one process number agree to better than its restart time.
pub fn new_incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

/// How long [`Bus::subscribe`] waits for the server to confirm the subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long dropping the last [`Bus`] waits for what was published to reach the server.
const DROP_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest pause between two reconnection attempts after the server went away: short,
/// because a cluster on one machine or one rack wants its bus back within a second of the
/// server's (async-nats's default grows to 4 s).
const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Where and who a process is on the bus.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The prefix of every subject, so that several clusters (tests running in parallel) share
    /// one server without seeing each other's messages. One or more subject tokens: no
    /// whitespace, no `*` or `>`, no empty token.
    pub cluster: String,
    /// This process.
    pub me: Source,
    /// This run of the process (a restarted process takes a new one).
    pub incarnation: u64,
}

/// What went over the bus so far (for the process's metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusCounters {
    /// Messages handed to the NATS client.
    pub msgs_out: u64,
    /// Their payload bytes.
    pub bytes_out: u64,
    /// Messages delivered to the [`Bus::subscribe`] callback.
    pub msgs_in: u64,
    /// Their payload bytes.
    pub bytes_in: u64,
    /// Publishes the client refused (a batch over the server's maximum payload, a closed
    /// connection), entries an [`Outbox`] could not batch, and panics of the
    /// [`Bus::subscribe`] callback.
    pub errors: u64,
}

/// The connection of one process to the bus. Cheap to clone (an `Arc` inside): every clone
/// is the same connection; the runtime and the connection end when the last clone is
/// dropped (after up to a second's flush of what was published).
///
/// Do not keep a clone inside the [`Bus::subscribe`] callback: the callback lives on the bus's
/// own runtime, so the bus would never be dropped.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: String,
    me: Source,
    incarnation: u64,
    url: String,
    name: String,
    client: Client,
    handle: tokio::runtime::Handle,
    /// Into the one publishing task (see [`Bus::publish`]).
    out: mpsc::UnboundedSender<Cmd>,
    /// The next `seq` per destination.
    seqs: Mutex<HashMap<Source, u64>>,
    stats: Arc<Stats>,
    subscribed: AtomicBool,
    bus_thread: ThreadId,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the publishing task does, in the order the commands were sent.
enum Cmd {
    Publish(String, Bytes),
    /// Answer once everything before it has been written to the server's socket.
    Flush(std_mpsc::Sender<io::Result<()>>),
}

#[derive(Default)]
struct Stats {
    msgs_out: AtomicU64,
    bytes_out: AtomicU64,
    msgs_in: AtomicU64,
    bytes_in: AtomicU64,
    errors: AtomicU64,
}

impl Stats {
    fn error(&self, what: fmt::Arguments<'_>) {
        let n = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        // The first error and then every power of two: a storm of them is seen without
        // flooding the log.
        if n.is_power_of_two() {
            tracing::warn!(errors = n, "bus: {what}");
        }
    }
}

impl Bus {
    /// Connects to `cfg.url` on a new 1-thread tokio runtime, retrying until `timeout` (a
    /// server starting at the same time as the process), and names the connection
    /// `<cluster>-gw-N` or `<cluster>-zone-N` (as the server's monitoring shows it). After the
    /// first connection the client reconnects by itself whenever the server goes away, and
    /// subscribes again; what is published meanwhile waits (or is lost with the old
    /// connection: core NATS is at-most-once).
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] at once for a malformed URL or cluster name,
    /// and with [`io::ErrorKind::TimedOut`] (naming the URL and the last attempt's error) when
    /// no server answered within `timeout`.
    pub fn connect(cfg: BusConfig, timeout: Duration) -> io::Result<Bus> {
        check_cluster(&cfg.cluster)?;
        let name = format!("{}-{}", cfg.cluster, source_name(cfg.me, '-'));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let stats = Arc::new(Stats::default());
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let url = cfg.url.clone();
        let conn_name = name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("bus {name}"))
            .spawn(move || {
                let client = runtime.block_on(connect_until(&url, &conn_name, timeout));
                let ok = client.is_ok();
                if ready_tx.send(client).is_err() || !ok {
                    return;
                }
                // Everything else happens in tasks spawned onto this runtime: run them
                // until the last `Bus` is dropped.
                runtime.block_on(async {
                    let _ = stop_rx.await;
                });
            })?;
        let bus_thread = thread.thread().id();
        let client = match ready_rx.recv() {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(io::Error::other("the bus thread ended while connecting"));
            }
        };
        let (out, rx) = mpsc::unbounded_channel();
        handle.spawn(publisher(client.clone(), rx, stats.clone()));
        tracing::info!(url = %cfg.url, name = %name, "bus: connected");
        Ok(Bus {
            inner: Arc::new(Inner {
                cluster: cfg.cluster,
                me: cfg.me,
                incarnation: cfg.incarnation,
                url: cfg.url,
                name,
                client,
                handle,
                out,
                seqs: Mutex::new(HashMap::new()),
                stats,
                subscribed: AtomicBool::new(false),
                bus_thread,
                stop: Mutex::new(Some(stop_tx)),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The subject of `of`'s inbox: `<cluster>.zone.<n>` or `<cluster>.gw.<n>`.
    pub fn subject(&self, of: Source) -> String {
        format!("{}.{}", self.inner.cluster, source_name(of, '.'))
    }

    /// This process.
    pub fn me(&self) -> Source {
        self.inner.me
    }

    /// Whether the client is connected to the server now (false while it reconnects, e.g.
    /// during a NATS restart): a process's readiness.
    pub fn connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The NATS server's URL.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// This process's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// The connection's name at the server (`<cluster>-zone-N`, `<cluster>-gw-N`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Subscribes to this process's own inbox ([`Bus::subject`] of [`BusConfig::me`]).
    /// `deliver` is called on the bus thread with each message's payload, in the order they
    /// arrive; whatever was published there, a batch or not (the caller decodes and counts
    /// junk). It must not block: it holds up everything else the bus does (the glue posts
    /// the payload into the port and returns).
    ///
    /// Returns once the server has the subscription (after a round trip to it), so that the
    /// caller can announce itself and be sure to hear the answers. One subscription per bus:
    /// a second call fails with [`io::ErrorKind::AlreadyExists`]. Must not be called on the
    /// bus thread (from inside `deliver`): it would wait for itself
    /// ([`io::ErrorKind::WouldBlock`]).
    pub fn subscribe(&self, mut deliver: impl FnMut(Bytes) + Send + 'static) -> io::Result<()> {
        self.not_on_bus_thread("subscribe")?;
        if self.inner.subscribed.swap(true, Ordering::AcqRel) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("bus {}: already subscribed to its inbox", self.inner.name),
            ));
        }
        let subject = self.subject(self.inner.me);
        let client = self.inner.client.clone();
        let stats = self.inner.stats.clone();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let what = subject.clone();
        let task = self.inner.handle.spawn(async move {
            let mut sub = match client.subscribe(subject).await {
                Ok(sub) => sub,
                Err(e) => {
                    let _ = ready_tx.send(Err(io::Error::other(e)));
                    return;
                }
            };
            // The server handles one connection's commands in order: once a message this
            // connection publishes on a probe subject of its own comes back, the SUB before it
            // is in place. (Not a request expecting "no responders": any other subscriber
            // matching the probe — an operator's `nats sub '>'` — would swallow the answer.)
            let probe = client.new_inbox();
            let round_trip = async {
                let mut echo = client
                    .subscribe(probe.clone())
                    .await
                    .map_err(io::Error::other)?;
                client
                    .publish(probe, Bytes::new())
                    .await
                    .map_err(io::Error::other)?;
                echo.next()
                    .await
                    .map(|_| ())
                    .ok_or_else(|| io::Error::other("the probe subscription ended"))
            };
            if let Err(e) = round_trip.await {
                let _ = ready_tx.send(Err(io::Error::other(format!(
                    "no round trip to the server after subscribing: {e}"
                ))));
                return;
            }
            if ready_tx.send(Ok(())).is_err() {
                return; // the caller gave up; dropping `sub` unsubscribes
            }
            while let Some(m) = sub.next().await {
                stats.msgs_in.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes_in
                    .fetch_add(m.payload.len() as u64, Ordering::Relaxed);
                // A panicking callback (a bug of the glue's, said by the panic hook) must not
                // end the subscription: every later message would be lost without a word.
                let delivered =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| deliver(m.payload)));
                if delivered.is_err() {
                    stats.error(format_args!("the deliver callback panicked; going on"));
                }
            }
        });
        let result = match ready_rx.recv_timeout(SUBSCRIBE_TIMEOUT) {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "subscribing to {what} at {}: no answer from the server within {SUBSCRIBE_TIMEOUT:?}",
                    self.inner.url
                ),
            )),
        };
        if let Err(e) = result {
            task.abort();
            self.inner.subscribed.store(false, Ordering::Release);
            return Err(io::Error::new(
                e.kind(),
                format!("bus {}: subscribing to {what}: {e}", self.inner.name),
            ));
        }
        Ok(())
    }

    /// Publishes a finished batch to `to`'s inbox. Never blocks (the batch goes on an
    /// unbounded channel), callable from any thread. Batches published by one thread reach
    /// the destination in the order they were published: one ordered channel feeds one
    /// publishing task, which hands them to the client one after the other. A batch the
    /// client refuses (over the server's maximum payload, 1 MiB by default) is counted in
    /// [`BusCounters::errors`] and logged.
    pub fn publish(&self, to: Source, batch: Bytes) {
        if self
            .inner
            .out
            .send(Cmd::Publish(self.subject(to), batch))
            .is_err()
        {
            self.inner
                .stats
                .error(format_args!("publish after the bus thread ended"));
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> BusCounters {
        let s = &self.inner.stats;
        BusCounters {
            msgs_out: s.msgs_out.load(Ordering::Relaxed),
            bytes_out: s.bytes_out.load(Ordering::Relaxed),
            msgs_in: s.msgs_in.load(Ordering::Relaxed),
            bytes_in: s.bytes_in.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
        }
    }

    /// Waits (at most `timeout`) until everything published so far has been written to the
    /// server's socket. Fails with [`io::ErrorKind::TimedOut`] (e.g. while the server is
    /// away) and, on the bus thread, with [`io::ErrorKind::WouldBlock`].
    pub fn flush(&self, timeout: Duration) -> io::Result<()> {
        self.not_on_bus_thread("flush")?;
        self.inner.flush(timeout)
    }

    /// The header of the next batch to `to`: this process, its incarnation, and `to`'s next
    /// `seq` (0 for the first batch to each destination, then +1 each call). A batch must be
    /// published in the order of its header's `seq` for the reader to see no gap: an
    /// [`Outbox`] takes the header and publishes under one lock.
    pub fn header(&self, to: Source) -> Header {
        let mut seqs = self.inner.seqs.lock();
        let next = seqs.entry(to).or_insert(0);
        let seq = *next;
        *next += 1;
        Header {
            source: self.inner.me,
            incarnation: self.inner.incarnation,
            seq,
        }
    }

    fn not_on_bus_thread(&self, what: &str) -> io::Result<()> {
        if std::thread::current().id() == self.inner.bus_thread {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "bus {}: {what} called on the bus thread (it would wait for itself)",
                    self.inner.name
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("name", &self.inner.name)
            .field("url", &self.inner.url)
            .field("incarnation", &self.inner.incarnation)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn flush(&self, timeout: Duration) -> io::Result<()> {
        let (tx, rx) = std_mpsc::channel();
        if self.out.send(Cmd::Flush(tx)).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("bus {}: the bus thread has ended", self.name),
            ));
        }
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "bus {}: what was published did not reach the server at {} within {timeout:?}",
                    self.name, self.url
                ),
            )),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("bus {}: the bus thread has ended", self.name),
            )),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let on_bus_thread = std::thread::current().id() == self.bus_thread;
        if !on_bus_thread {
            if let Err(e) = self.flush(DROP_FLUSH_TIMEOUT) {
                tracing::warn!("bus {}: closing without a flush: {e}", self.name);
            }
        }
        if let Some(stop) = self.stop.get_mut().take() {
            let _ = stop.send(());
        }
        // On the bus thread itself (a callback dropped the last clone) the thread ends by
        // itself once this task returns.
        if !on_bus_thread {
            if let Some(thread) = self.thread.get_mut().take() {
                let _ = thread.join();
            }
        }
    }
}

/// The one publishing task: hands the batches to the client in channel order.
async fn publisher(client: Client, mut rx: mpsc::UnboundedReceiver<Cmd>, stats: Arc<Stats>) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Publish(subject, payload) => {
                let len = payload.len() as u64;
                match client.publish(subject, payload).await {
                    Ok(()) => {
                        stats.msgs_out.fetch_add(1, Ordering::Relaxed);
                        stats.bytes_out.fetch_add(len, Ordering::Relaxed);
                    }
                    Err(e) => stats.error(format_args!("publish of {len} bytes refused: {e}")),
                }
            }
            Cmd::Flush(done) => {
                let r = client.flush().await.map_err(io::Error::other);
                let _ = done.send(r);
            }
        }
    }
}

/// Tries to connect until `timeout` has passed.
async fn connect_until(url: &str, name: &str, timeout: Duration) -> io::Result<Client> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let options = ConnectOptions::new()
            .name(name)
            .connection_timeout(left.max(Duration::from_millis(10)))
            .reconnect_delay_callback(reconnect_delay)
            .event_callback({
                let name = name.to_string();
                move |event| {
                    log_event(name.clone(), event);
                    async {}
                }
            });
        let last = match tokio::time::timeout(left, options.connect(url)).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) if e.kind() == ConnectErrorKind::ServerParse => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NATS url {url:?}: {e}"),
                ));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no NATS server at {url} within {timeout:?} ({attempts} attempts; the last: {last})"
                ),
            ));
        }
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
}

/// The pause before reconnection attempt `attempts` (1 for the first): none, then doubling
/// from 2 ms up to [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(20);
    Duration::from_millis(1u64 << exp).min(MAX_RECONNECT_DELAY)
}

fn log_event(name: String, event: Event) {
    match event {
        Event::Connected => tracing::info!("bus {name}: connected to the server"),
        Event::Disconnected => tracing::warn!("bus {name}: lost the server; reconnecting"),
        Event::SlowConsumer(sid) => {
            tracing::warn!("bus {name}: slow consumer (subscription {sid}): messages dropped")
        }
        other => tracing::warn!("bus {name}: {other}"),
    }
}

/// `gw<sep>N` or `zone<sep>N`.
fn source_name(s: Source, sep: char) -> String {
    match s {
        Source::Gateway(n) => format!("gw{sep}{n}"),
        Source::Zone(n) => format!("zone{sep}{n}"),
    }
}

fn check_cluster(cluster: &str) -> io::Result<()> {
    let bad = cluster.is_empty()
        || cluster.split('.').any(|token| {
            token.is_empty()
                || token
                    .chars()
                    .any(|c| c.is_whitespace() || c == '*' || c == '>')
        });
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cluster name {cluster:?} is not a subject prefix (tokens separated by dots; \
                 no empty token, whitespace, '*' or '>')"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_connection_names_name_the_kind_and_number() {
        assert_eq!(source_name(Source::Zone(3), '.'), "zone.3");
        assert_eq!(source_name(Source::Gateway(12), '-'), "gw-12");
    }

    #[test]
    fn a_cluster_name_must_be_a_subject_prefix() {
        for good in ["c", "test-7", "a.b", "cport_1"] {
            assert!(check_cluster(good).is_ok(), "{good:?}");
        }
        for bad in ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "x\t"] {
            let e = check_cluster(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn reconnect_delays_start_at_once_and_stay_short() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(2));
        assert_eq!(reconnect_delay(3), Duration::from_millis(4));
        assert_eq!(reconnect_delay(1_000_000), MAX_RECONNECT_DELAY);
        let mut last = Duration::ZERO;
        for a in 1..100 {
            let d = reconnect_delay(a);
            assert!(d >= last && d <= MAX_RECONNECT_DELAY);
            last = d;
        }
    }
}
