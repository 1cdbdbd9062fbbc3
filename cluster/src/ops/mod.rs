//! Operations: every process of a cluster (a zone, a gateway, the supervisor) serves
//! `/healthz`, `/readyz` and `/metrics` over HTTP, so that a supervisor, systemd or
//! Kubernetes can tell a live process from a hung one and Prometheus can scrape it.
//!
//! The HTTP server runs on a small tokio runtime of its own, on one thread ([`serve`]):
//! never on the port's workers, whose answer is exactly what `/healthz` measures. A probe
//! ([`Probe`]) is posted into the process's completion port and answered by whichever worker
//! takes it ([`answer`], called from the handler's `on_message` for [`PROBE_KEY`]); a process
//! whose workers are stalled, or that is stopped (SIGSTOP), does not answer within
//! [`PROBE_TIMEOUT`] and fails the check.
//!
//! The same probe runs once a second in the background: its pickup latency is the process's
//! "tick time" (`cport_tick_seconds`, a histogram), and each probe that times out is counted
//! (`cport_probe_failures_total`). Everything else in `/metrics` is read at scrape time from
//! the process's own counters ([`Target::collect`]); SCALE-OUT.md ("Operating it") lists them.

mod http;
mod series;
mod target;
mod targets;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

pub use http::{http_get, HttpAnswer};
pub use series::Series;
pub use target::{answer, probe, Probe, Target, PROBE_KEY, PROBE_TIMEOUT, TICK_EVERY};

/// The series `ops` itself keeps for a process: the background probe's figures.
#[derive(Clone)]
pub(crate) struct Ticks {
    /// The probe's pickup latency, seconds.
    pub tick: Histogram,
    /// Probes not answered within [`PROBE_TIMEOUT`].
    pub failures: Counter,
}

impl Ticks {
    fn new() -> Ticks {
        Ticks {
            // 10 µs to ~5 s.
            tick: Histogram::new(exponential_buckets(1e-5, 4.0, 10)),
            failures: Counter::default(),
        }
    }
}

/// The HTTP endpoints of one process, served on a thread of their own. Dropping it stops
/// them (the thread is joined, and with it every reference to the target).
pub struct OpsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for OpsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl OpsServer {
    /// Where the endpoints are served.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for OpsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `addr` and serves `/healthz`, `/readyz` and `/metrics` of `target` on a thread of
/// its own (a one-thread tokio runtime), with the background probe once a second. Returns
/// once bound: [`OpsServer::local_addr`] is where (port 0 picks a free one).
pub fn serve<T: Target>(addr: SocketAddr, target: Arc<T>) -> io::Result<OpsServer> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("--http {addr}: {e}")))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let ticks = Ticks::new();
    let mut registry = Registry::with_prefix_and_labels("cport", target.labels().into_iter());
    registry.register(
        "tick_seconds",
        "How long a probe posted into the process's port waited for a worker (measured once a second)",
        ticks.tick.clone(),
    );
    registry.register(
        "probe_failures",
        "Background probes no worker took within a second",
        ticks.failures.clone(),
    );
    registry.register_collector(Box::new(target::Scrape(target.clone())));
    let (stop_tx, stop_rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("ops-http".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!("ops http: {e}"),
                };
                let app = http::router(target.clone(), Arc::new(registry));
                let ticker = tokio::spawn(tick_loop(target, ticks));
                tokio::select! {
                    r = axum::serve(listener, app) => {
                        if let Err(e) = r {
                            tracing::error!("ops http on {local}: {e}");
                        }
                    }
                    _ = stop_rx => {}
                }
                ticker.abort();
            });
            // Dropping the runtime here ends every connection still open.
        })?;
    Ok(OpsServer {
        addr: local,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Once a second: a probe, its latency into the tick histogram (or a failure counted).
async fn tick_loop<T: Target>(target: Arc<T>, ticks: Ticks) {
    let mut every = tokio::time::interval(TICK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match probe(&*target, PROBE_TIMEOUT).await {
            Ok(waited) => ticks.tick.observe(waited.as_secs_f64()),
            Err(_) => {
                ticks.failures.inc();
            }
        }
    }
}

/// The `--http` option of `cport zone|gateway|cluster`: an address, or `none` (no
/// endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpAddr(pub Option<SocketAddr>);

impl std::str::FromStr for HttpAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<HttpAddr, String> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(HttpAddr(None));
        }
        s.parse()
            .map(|a| HttpAddr(Some(a)))
            .map_err(|e| format!("{s:?} is neither an address (HOST:PORT) nor `none`: {e}"))
    }
}

impl fmt::Display for HttpAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("none"),
        }
    }
}

/// `http on 127.0.0.1:9000` → the address (the line each process prints once its endpoints
/// are bound, before its readiness line).
pub fn parse_http_line(line: &str) -> Option<SocketAddr> {
    line.trim().strip_prefix("http on ")?.parse().ok()
}

#[cfg(test)]
mod tests;
