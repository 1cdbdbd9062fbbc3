//! The live view of a stress run in the browser (`cport stress --web ADDR`, `cport demo`): a
//! page with the board (the dummies and the awake NPCs they see), the clients and the delay
//! over time, the current figures and, at the end, the report; served by the binary itself
//! (no CDN), updated once a second with server-sent events.
//!
//! What it costs the stress client, and why a browser can never hold it back:
//!
//! * The per-second figures: the thread that drives the ramp hands each [`Second`] over once a
//!   second ([`Live::on_second`]): one small JSON string pushed under a short lock, and a
//!   counter bumped in a `watch` channel, which never blocks.
//! * The map: a sampling thread of its own takes [`Probe::map`] (the same source as the
//!   end-of-run `demo-map.svg`) once a second, when told by `on_second` through a channel of
//!   one (`try_send`: a sample still running makes it skip a second, never wait), and
//!   publishes it as one shared buffer.
//! * Each browser connection reads the latest state when it is ready to send: a slow reader
//!   misses intermediate maps (drop, don't queue) and gets the seconds it has not had yet
//!   from the shared series when it catches up; nothing is queued per connection. At most
//!   [`MAX_STREAMS`] live pages at once; more are told so (503).
//!
//! The HTTP side is axum on a single-threaded tokio runtime in its own thread.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cport_mmo_client::{Errors, MapSnapshot, Probe, Report, Second};
use tokio::sync::{oneshot, watch};

/// Live pages served at once; one more gets 503 (each costs the web thread a little).
pub const MAX_STREAMS: usize = 32;
/// How long the end waits for open pages to receive the final report.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

/// The listening socket of the view, bound before the run starts (so that a port in use is
/// an error before anything else happens).
pub struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Bound {
    /// Binds `addr`; the error names it.
    pub fn bind(addr: SocketAddr) -> io::Result<Bound> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::AddrInUse {
                " (another program listens there: choose another port, or port 0 for any free one)"
            } else {
                ""
            };
            io::Error::new(e.kind(), format!("--web {addr}: cannot listen: {e}{hint}"))
        })?;
        let addr = listener.local_addr()?;
        Ok(Bound { listener, addr })
    }

    /// The address bound (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's address, for people: an unspecified address (0.0.0.0, ::) is shown as the
    /// loopback one.
    pub fn url(&self) -> String {
        let mut a = self.addr;
        if a.ip().is_unspecified() {
            a.set_ip(match a {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{a}/")
    }

    /// Starts serving; `hello` (JSON) tells every page what the run is (its settings).
    pub fn serve(self, hello: serde_json::Value) -> io::Result<Live> {
        let url = self.url();
        let (seq, _) = watch::channel(0u64);
        let shared = Arc::new(ViewState {
            hello: hello.to_string(),
            inner: Mutex::new(Inner::new()),
            seq,
            streams: AtomicUsize::new(0),
            finals_sent: AtomicUsize::new(0),
            final_maps_served: AtomicUsize::new(0),
            costs: Costs::default(),
        });
        self.listener.set_nonblocking(true)?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let listener = {
            let _guard = rt.enter();
            tokio::net::TcpListener::from_std(self.listener)?
        };
        let app = router(shared.clone());
        let sh = shared.clone();
        let server = std::thread::Builder::new()
            .name("web".into())
            .spawn(move || {
                rt.block_on(async move {
                    let serve = axum::serve(listener, app);
                    tokio::select! {
                        r = serve => if let Err(e) = r {
                            tracing::warn!("web: the server stopped: {e}");
                        },
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime here drops every connection still open.
                drop(rt);
                sh.costs.web_cpu_ns.store(thread_cpu_ns(), Relaxed);
            })?;
        let (tx, rx) = mpsc::sync_channel::<Probe>(1);
        let sampler = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("web-map".into())
                .spawn(move || sample_maps(&shared, rx))?
        };
        Ok(Live {
            shared,
            url,
            sampler: Some((tx, sampler)),
            server: Some((stop_tx, server)),
        })
    }
}

/// The view being served during a run.
pub struct Live {
    shared: Arc<ViewState>,
    url: String,
    sampler: Option<(SyncSender<Probe>, JoinHandle<()>)>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Live {
    /// The page's address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One second of the run (called on the thread that drives the ramp: returns at once).
    pub fn on_second(&self, s: &Second, e: &Errors, probe: &Probe) {
        {
            let mut i = self.shared.lock();
            i.series.push(json(s));
            i.errors = json(e);
        }
        self.shared.notify();
        if let Some((tx, _)) = &self.sampler {
            // Full: the last sample is still being taken; this second goes without one.
            let _ = tx.try_send(probe.clone());
        }
    }

    /// The end: publishes the report and the final map, gives open pages up to two seconds to
    /// receive them (every stream has sent its last state, and as many final maps have been
    /// fetched), keeps serving for `linger` (unless `stop` is set), then stops.
    pub fn finish(
        mut self,
        report: &Report,
        map: &MapSnapshot,
        linger: Duration,
        stop: &AtomicBool,
    ) -> CostSummary {
        self.stop_sampler();
        {
            let mut i = self.shared.lock();
            let seq = i.map_seq + 1;
            i.set_map(seq, map, 0.0);
            i.final_map = true;
            i.errors = json(&report.errors);
            i.report = Some(json(report));
        }
        self.shared.notify();
        let t0 = Instant::now();
        loop {
            let sh = &self.shared;
            let flushed = (sh.streams.load(Relaxed) == 0
                && sh.final_maps_served.load(Relaxed) >= sh.finals_sent.load(Relaxed))
                || t0.elapsed() >= FLUSH_WAIT;
            let lingered = t0.elapsed() >= linger || stop.load(Relaxed);
            if flushed && lingered {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop_server();
        self.shared.costs.summary()
    }

    fn stop_sampler(&mut self) {
        if let Some((tx, h)) = self.sampler.take() {
            drop(tx);
            let _ = h.join();
        }
    }

    fn stop_server(&mut self) {
        if let Some((tx, h)) = self.server.take() {
            let _ = tx.send(());
            let _ = h.join();
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.stop_sampler();
        self.stop_server();
    }
}

/// What the live view serves, shared by the thread that drives the ramp (the figures), the
/// sampler (the maps) and the HTTP streams (which read it when they are ready to send).
struct ViewState {
    /// The run's settings (JSON), sent first on every stream.
    hello: String,
    inner: Mutex<Inner>,
    /// Bumped at every change; each stream waits on it and then reads `inner`.
    seq: watch::Sender<u64>,
    /// Live streams open now.
    streams: AtomicUsize,
    /// Streams that have sent the last state (the report) ...
    finals_sent: AtomicUsize,
    /// ... and the final maps fetched since.
    final_maps_served: AtomicUsize,
    costs: Costs,
}

/// What the view costs: its threads' CPU time, and how much it served.
#[derive(Debug, Default)]
pub struct Costs {
    /// Maps sampled during the run.
    pub maps: AtomicU64,
    /// The sampler thread's CPU time (ns), all of it: sampling and encoding.
    pub sample_cpu_ns: AtomicU64,
    /// The most CPU one map took (ns).
    pub sample_cpu_max_ns: AtomicU64,
    /// Wall time spent sampling (ns).
    pub sample_wall_ns: AtomicU64,
    /// The HTTP thread's CPU time (ns), known once it has stopped.
    pub web_cpu_ns: AtomicU64,
    /// Live pages opened (streams), in all.
    pub pages: AtomicU64,
    /// Maps sent (`/map.bin` responses).
    pub maps_sent: AtomicU64,
}

/// [`Costs`] read at the end.
#[derive(Debug, Clone, Copy)]
pub struct CostSummary {
    /// Maps sampled.
    pub maps: u64,
    /// Sampler CPU per map (ms).
    pub sample_cpu_ms: f64,
    /// The most CPU one map took (ms).
    pub sample_cpu_max_ms: f64,
    /// Sampler wall time per map (ms).
    pub sample_wall_ms: f64,
    /// The HTTP thread's CPU time (s).
    pub web_cpu_s: f64,
    /// Pages opened.
    pub pages: u64,
    /// Maps sent.
    pub maps_sent: u64,
}

impl Costs {
    fn summary(&self) -> CostSummary {
        let maps = self.maps.load(Relaxed);
        let per = |ns: &AtomicU64| ns.load(Relaxed) as f64 / 1e6 / maps.max(1) as f64;
        CostSummary {
            maps,
            sample_cpu_ms: per(&self.sample_cpu_ns),
            sample_cpu_max_ms: self.sample_cpu_max_ns.load(Relaxed) as f64 / 1e6,
            sample_wall_ms: per(&self.sample_wall_ns),
            web_cpu_s: self.web_cpu_ns.load(Relaxed) as f64 / 1e9,
            pages: self.pages.load(Relaxed),
            maps_sent: self.maps_sent.load(Relaxed),
        }
    }
}

impl std::fmt::Display for CostSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} maps sampled ({:.1} ms CPU each, at most {:.1}; {:.1} ms wall each); HTTP thread {:.2} s CPU; {} pages opened, {} maps sent",
            self.maps,
            self.sample_cpu_ms,
            self.sample_cpu_max_ms,
            self.sample_wall_ms,
            self.web_cpu_s,
            self.pages,
            self.maps_sent
        )
    }
}

/// This thread's CPU time (ns).
fn thread_cpu_ns() -> u64 {
    cport_server::os::thread_cpu_ns()
}

struct Inner {
    /// Each second of the run so far, as JSON.
    series: Vec<String>,
    /// The errors so far, by kind (JSON).
    errors: String,
    /// The latest map (see [`encode_map`]).
    map: Bytes,
    map_seq: u64,
    map_players: usize,
    map_npcs: usize,
    map_sample_ms: f64,
    /// The final report (JSON), once the run is over.
    report: Option<String>,
    /// `map` is the end-of-run map.
    final_map: bool,
}

impl Inner {
    /// Before the first second: nothing yet, an empty map.
    fn new() -> Inner {
        Inner {
            series: Vec::new(),
            errors: json(&Errors::default()),
            map: encode_map(0, &MapSnapshot::default()),
            map_seq: 0,
            map_players: 0,
            map_npcs: 0,
            map_sample_ms: 0.0,
            report: None,
            final_map: false,
        }
    }
}

impl ViewState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding it leaves plain data behind: keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.seq.send_modify(|n| *n += 1);
    }

    /// The state from second `from` on (JSON); returns it, the next `from` and whether the
    /// run is over (the report is in it).
    fn state_json(&self, from: usize) -> (String, usize, bool) {
        let i = self.lock();
        let from = from.min(i.series.len());
        let mut out = String::with_capacity(256 + 300 * (i.series.len() - from));
        let _ = write!(out, r#"{{"from":{from},"series":["#);
        for (k, s) in i.series[from..].iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            out.push_str(s);
        }
        let _ = write!(
            out,
            r#"],"errors":{},"map":{{"seq":{},"players":{},"npcs":{},"sample_ms":{:.2}}},"pages":{},"report":{}}}"#,
            i.errors,
            i.map_seq,
            i.map_players,
            i.map_npcs,
            i.map_sample_ms,
            self.streams.load(Relaxed),
            i.report.as_deref().unwrap_or("null")
        );
        (out, i.series.len(), i.report.is_some())
    }
}

impl Inner {
    fn set_map(&mut self, seq: u64, map: &MapSnapshot, sample_ms: f64) {
        self.map = encode_map(seq, map);
        self.map_seq = seq;
        self.map_players = map.players.len();
        self.map_npcs = map.npcs.len();
        self.map_sample_ms = sample_ms;
    }
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

/// The map as the page reads it: little-endian u32 `seq`, `world_size`, `players`, `npcs`,
/// then one (u16 x, u16 y) per player, then per NPC.
pub fn encode_map(seq: u64, map: &MapSnapshot) -> Bytes {
    let mut b = Vec::with_capacity(16 + 4 * (map.players.len() + map.npcs.len()));
    for v in [
        seq as u32,
        map.world_size as u32,
        map.players.len() as u32,
        map.npcs.len() as u32,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for &(x, y) in map.players.iter().chain(&map.npcs) {
        b.extend_from_slice(&(x as u16).to_le_bytes());
        b.extend_from_slice(&(y as u16).to_le_bytes());
    }
    Bytes::from(b)
}

/// The map sampler: one sample per probe received, until the channel closes.
fn sample_maps(sh: &ViewState, rx: Receiver<Probe>) {
    for probe in rx {
        let (t0, cpu0) = (Instant::now(), thread_cpu_ns());
        let Some(map) = probe.map() else {
            continue;
        };
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        // Encoded outside the lock; only the swap is under it.
        let seq = sh.lock().map_seq + 1;
        let bytes = encode_map(seq, &map);
        {
            let mut i = sh.lock();
            i.map = bytes;
            i.map_seq = seq;
            i.map_players = map.players.len();
            i.map_npcs = map.npcs.len();
            i.map_sample_ms = ms;
        }
        sh.notify();
        let c = &sh.costs;
        c.maps.fetch_add(1, Relaxed);
        let cpu = thread_cpu_ns().saturating_sub(cpu0);
        c.sample_cpu_ns.fetch_add(cpu, Relaxed);
        c.sample_cpu_max_ns.fetch_max(cpu, Relaxed);
        c.sample_wall_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
    }
}

fn router(sh: Arc<ViewState>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { page(STYLE_CSS, "text/css; charset=utf-8") }),
        )
        .route("/events", get(events))
        .route("/map.bin", get(map_bin))
        .route("/api/state", get(state))
        .route("/api/report", get(report))
        .with_state(sh)
}

fn page(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

const NO_STORE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-store");

async fn map_bin(State(sh): State<Arc<ViewState>>) -> Response {
    let (map, last) = {
        let i = sh.lock();
        (i.map.clone(), i.final_map)
    };
    if last {
        sh.final_maps_served.fetch_add(1, Relaxed);
    }
    sh.costs.maps_sent.fetch_add(1, Relaxed);
    (
        [(header::CONTENT_TYPE, "application/octet-stream"), NO_STORE],
        map,
    )
        .into_response()
}

async fn state(State(sh): State<Arc<ViewState>>) -> Response {
    let (body, _, _) = sh.state_json(0);
    ([(header::CONTENT_TYPE, "application/json"), NO_STORE], body).into_response()
}

async fn report(State(sh): State<Arc<ViewState>>) -> Response {
    match sh.lock().report.clone() {
        Some(r) => ([(header::CONTENT_TYPE, "application/json"), NO_STORE], r).into_response(),
        None => (StatusCode::NOT_FOUND, "the run is not over yet\n").into_response(),
    }
}

/// Counts a live stream while it exists.
struct StreamGuard(Arc<ViewState>);

impl StreamGuard {
    fn new(sh: &Arc<ViewState>) -> Option<StreamGuard> {
        sh.streams
            .fetch_update(Relaxed, Relaxed, |n| (n < MAX_STREAMS).then_some(n + 1))
            .ok()?;
        sh.costs.pages.fetch_add(1, Relaxed);
        Some(StreamGuard(sh.clone()))
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Relaxed);
    }
}

/// One page's stream: `hello` (the settings), then `state` at each change (the seconds it
/// has not had yet, the errors, the map's number), the last one with the report.
struct Conn {
    guard: StreamGuard,
    rx: watch::Receiver<u64>,
    step: Step,
    from: usize,
}

enum Step {
    Hello,
    First,
    Next,
    Over,
}

async fn events(State(sh): State<Arc<ViewState>>) -> Response {
    let Some(guard) = StreamGuard::new(&sh) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} live views are open already: close one\n"),
        )
            .into_response();
    };
    let conn = Conn {
        rx: sh.seq.subscribe(),
        guard,
        step: Step::Hello,
        from: 0,
    };
    let stream = futures_util::stream::unfold(conn, |mut c| async move {
        let sh = c.guard.0.clone();
        match c.step {
            Step::Over => return None,
            Step::Hello => {
                c.step = Step::First;
                let ev = Event::default().event("hello").data(&sh.hello);
                return Some((Ok::<_, Infallible>(ev), c));
            }
            Step::First => c.step = Step::Next,
            Step::Next => {
                // Only the latest value counts: a reader that fell behind skips to it.
                if c.rx.changed().await.is_err() {
                    return None;
                }
            }
        }
        let (body, from, over) = sh.state_json(c.from);
        c.from = from;
        if over {
            c.step = Step::Over;
            sh.finals_sent.fetch_add(1, Relaxed);
        }
        Some((Ok(Event::default().event("state").data(body)), c))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_encodes_counts_then_players_then_npcs() {
        let map = MapSnapshot {
            world_size: 2000,
            players: vec![(1, 2), (1999, 0)],
            npcs: vec![(300, 1999)],
        };
        let b = encode_map(7, &map);
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap());
        assert_eq!(b.len(), 16 + 3 * 4);
        assert_eq!(
            (u32_at(0), u32_at(4), u32_at(8), u32_at(12)),
            (7, 2000, 2, 1)
        );
        let pts: Vec<(u16, u16)> = (0..3)
            .map(|k| (u16_at(16 + 4 * k), u16_at(18 + 4 * k)))
            .collect();
        assert_eq!(pts, [(1, 2), (1999, 0), (300, 1999)]);
    }

    #[test]
    fn a_port_in_use_is_an_error_that_names_it() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = Bound::bind(addr).err().expect("the port is taken");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let msg = e.to_string();
        assert!(msg.contains(&format!("--web {addr}")), "{msg}");
        assert!(msg.contains("port 0"), "{msg}");
    }

    #[test]
    fn an_unspecified_address_is_shown_as_loopback() {
        let b = Bound::bind("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = b.local_addr().port();
        assert_eq!(b.url(), format!("http://127.0.0.1:{port}/"));
    }

    #[test]
    fn state_sends_each_second_once_and_the_report_last() {
        let (seq, _) = watch::channel(0);
        let sh = ViewState {
            hello: "{}".into(),
            inner: Mutex::new(Inner {
                series: vec![json(&Second::default()); 3],
                ..Inner::new()
            }),
            seq,
            streams: AtomicUsize::new(0),
            finals_sent: AtomicUsize::new(0),
            final_maps_served: AtomicUsize::new(0),
            costs: Costs::default(),
        };
        let (a, from, over) = sh.state_json(0);
        let a: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(
            (a["series"].as_array().unwrap().len(), from, over),
            (3, 3, false)
        );
        assert!(a["report"].is_null());
        sh.lock().series.push(json(&Second {
            clients: 5,
            ..Default::default()
        }));
        let (b, from, _) = sh.state_json(from);
        let b: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(b["from"], 3);
        assert_eq!(b["series"].as_array().unwrap().len(), 1);
        assert_eq!(b["series"][0]["clients"], 5);
        sh.lock().report = Some(r#"{"max_clients_under_limit":5}"#.into());
        let (c, _, over) = sh.state_json(from);
        let c: serde_json::Value = serde_json::from_str(&c).unwrap();
        assert!(over);
        assert!(c["series"].as_array().unwrap().is_empty());
        assert_eq!(c["report"]["max_clients_under_limit"], 5);
    }
}
