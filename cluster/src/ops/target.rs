//! What a process gives the endpoints ([`Target`]), and the probe through its completion
//! port that `/healthz` and the tick time are made of.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cport_server::cport::Message;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use tokio::sync::oneshot;

use super::series::Series;

/// The posted-message key of a [`Probe`] in a zone's and a gateway's port. Distinct from
/// every message key their handlers use (a zone's database results, a gateway's drains).
pub const PROBE_KEY: u64 = 0x0070_726f_6265; // "probe"

/// How long `/healthz` waits for a worker to take its probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the background probe measures the tick time.
pub const TICK_EVERY: Duration = Duration::from_secs(1);

/// A liveness probe: posted into a port, answered by the worker that takes it with the time
/// it waited in the queue.
#[derive(Debug)]
pub struct Probe {
    posted: Instant,
    tx: oneshot::Sender<Duration>,
}

impl Probe {
    /// A probe posted now, and where its answer arrives.
    pub fn new() -> (Probe, oneshot::Receiver<Duration>) {
        let (tx, rx) = oneshot::channel();
        (
            Probe {
                posted: Instant::now(),
                tx,
            },
            rx,
        )
    }

    /// Answers: a worker has taken the probe now.
    pub fn answer(self) {
        let _ = self.tx.send(self.posted.elapsed());
    }
}

/// For a handler's `on_message` with [`PROBE_KEY`]: answers the probe the message carries
/// (a message of another type on that key is a bug, logged).
pub fn answer(message: Message) {
    match message.downcast::<Probe>() {
        Ok(p) => p.answer(),
        Err(_) => tracing::error!("a message of an unknown type on the probe key"),
    }
}

/// What a process gives its HTTP endpoints.
pub trait Target: Send + Sync + 'static {
    /// The labels of every series of this process, e.g. `zone="2"`.
    fn labels(&self) -> Vec<(Cow<'static, str>, Cow<'static, str>)>;

    /// Posts `probe` where a worker of the process will answer it ([`Probe::answer`]); an
    /// error (the reason) when it cannot be posted (the port is shutting down).
    fn post_probe(&self, probe: Probe) -> Result<(), String>;

    /// `Ok` when the process serves (connected to NATS, …); else why not.
    fn ready(&self) -> Result<(), String>;

    /// Writes the process's series, read from its counters now.
    fn collect(&self, out: &mut Series<'_, '_>) -> fmt::Result;
}

/// Posts a probe and waits (at most `timeout`) for a worker to take it: how long that took.
pub async fn probe<T: Target + ?Sized>(target: &T, timeout: Duration) -> Result<Duration, String> {
    let (p, rx) = Probe::new();
    target.post_probe(p)?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(waited)) => Ok(waited),
        Ok(Err(_)) => Err("the probe was dropped unanswered (shutting down)".into()),
        Err(_) => Err(format!("no worker took the probe within {timeout:?}")),
    }
}

/// A target as a prometheus-client collector: asked on every scrape.
pub(super) struct Scrape<T>(pub Arc<T>);

impl<T> fmt::Debug for Scrape<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

impl<T: Target> Collector for Scrape<T> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        self.0.collect(&mut Series::new(&mut encoder))
    }
}
