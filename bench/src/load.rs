//! An echo load client on the port itself: N connections, messages of `size` bytes; a
//! message is done when `size` bytes came back.
//!
//! * **Closed loop** (default): each connection keeps `depth` messages outstanding and sends
//!   the next when one comes back. The round-trip time of every message completed inside the
//!   measured window goes into the latency histogram.
//! * **Open loop** (`rate`): R messages/s in total, on a fixed schedule: message j goes to
//!   connection j mod N at `start + j/R`, whether or not earlier ones came back. Latency runs
//!   from the *scheduled* send time (so a stalled server, or a late client, cannot hide the
//!   stall by delaying the sends: no coordinated omission). Messages scheduled inside the
//!   window are measured; after it the client waits up to 2 s for them to come back.
//! * **Skew** (`slow_pct`): that share of the messages start with
//!   [`crate::peer::SLOW_MARKER`], which makes a server started with `--skew-spin-ms` spin
//!   in its handler before echoing (see [`crate::peer`]). The latencies of the other
//!   messages are also kept apart ([`Report::latency_fast_us`]).

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cport::{Aborted, Backend, Op, Pool, Port, Socket};
use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// What load to offer.
#[derive(Debug, Clone)]
pub struct Load {
    /// The echo server.
    pub addr: SocketAddr,
    /// Connections.
    pub conns: usize,
    /// Message size in bytes.
    pub size: usize,
    /// Messages outstanding per connection (1 = ping-pong).
    pub depth: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it (connections warm up).
    pub warmup: Duration,
    /// Client worker threads.
    pub threads: usize,
    /// The client's own port backend (`None`: default).
    pub backend: Option<Backend>,
    /// Open loop: messages per second in total across the connections (`None`: closed loop).
    pub rate: Option<f64>,
    /// Percentage (0–100) of messages marked slow.
    pub slow_pct: f64,
}

/// What the load measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Messages completed in the measured window.
    pub msgs: u64,
    /// The window's length.
    pub elapsed: Duration,
    /// Round-trip times, microseconds.
    pub latency_us: Histogram<u64>,
    /// Round-trip times of the messages not marked slow, microseconds.
    pub latency_fast_us: Histogram<u64>,
    /// Messages marked slow among `msgs`.
    pub slow_msgs: u64,
    /// Open loop: messages scheduled in the window that had not come back 2 s after it.
    pub unfinished: u64,
    /// Open loop: the longest the client sent a message after its scheduled time.
    pub max_send_lag: Duration,
    /// Connections that failed to connect.
    pub connect_errors: u64,
    /// Connections that broke during the run (reset, end of stream, send error).
    pub broken: u64,
    /// Echoed bytes that did not match what was sent.
    pub corrupt: u64,
    /// The client's own CPU time during the run.
    pub client_cpu: Duration,
}

impl Report {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.msgs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct Conn {
    sock: Socket,
    st: Mutex<ConnState>,
}

struct ConnState {
    /// Send (or scheduled) times of the messages outstanding, oldest first, and whether each
    /// is marked slow.
    sent: VecDeque<(Instant, bool)>,
    /// Messages this connection started (drives the slow choice).
    seq: u64,
    /// Bytes of the oldest outstanding message received so far.
    got: usize,
    alive: bool,
}

struct LoadState {
    conns: Vec<Conn>,
    payload: Bytes,
    slow_payload: Bytes,
    /// Slow when `hash % 1_000_000 < slow_ppm`.
    slow_ppm: u64,
    open_loop: bool,
    /// Messages sent and not yet back.
    outstanding: AtomicI64,
    slow_msgs: AtomicU64,
    hists_fast: Vec<Mutex<Histogram<u64>>>,
    size: usize,
    measure_from: Instant,
    measure_to: Instant,
    stop: AtomicBool,
    msgs: AtomicU64,
    broken: AtomicU64,
    corrupt: AtomicU64,
    hists: Vec<Mutex<Histogram<u64>>>,
}

const RECV_BUF: usize = 64 * 1024;

/// Runs the load and reports. Blocks for about `warmup + duration`.
pub fn run(load: &Load) -> io::Result<Report> {
    let cpu0 = crate::proc::cpu_time(std::process::id()).unwrap_or_default();
    let mut b = Port::builder().concurrency(load.threads);
    if let Some(backend) = load.backend {
        b = b.backend(backend).ignore_env();
    }
    let port = b.build()?;
    let mut conns = Vec::with_capacity(load.conns);
    let mut connect_errors = 0;
    for i in 0..load.conns {
        match TcpStream::connect(load.addr) {
            Ok(s) => {
                s.set_nodelay(true)?;
                let sock = port.associate(s, i as u64)?;
                conns.push(Conn {
                    sock,
                    st: Mutex::new(ConnState {
                        sent: VecDeque::with_capacity(load.depth),
                        seq: 0,
                        got: 0,
                        alive: true,
                    }),
                });
            }
            Err(e) => {
                if connect_errors == 0 {
                    tracing::warn!("connect {}: {e}", load.addr);
                }
                connect_errors += 1;
            }
        }
    }
    // A pattern that changes with the position, so a misordered echo shows.
    let payload: Bytes = (0..load.size)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let mut slow_payload = payload.to_vec();
    if let Some(b) = slow_payload.first_mut() {
        *b = crate::peer::SLOW_MARKER;
    }
    let new_hist = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let start = Instant::now();
    let shared = Arc::new(LoadState {
        payload,
        slow_payload: slow_payload.into(),
        slow_ppm: (load.slow_pct.clamp(0.0, 100.0) * 10_000.0).round() as u64,
        open_loop: load.rate.is_some(),
        outstanding: AtomicI64::new(0),
        slow_msgs: AtomicU64::new(0),
        hists_fast: (0..16).map(|_| Mutex::new(new_hist())).collect(),
        size: load.size.max(1),
        measure_from: start + load.warmup,
        measure_to: start + load.warmup + load.duration,
        stop: AtomicBool::new(false),
        msgs: AtomicU64::new(0),
        broken: AtomicU64::new(0),
        corrupt: AtomicU64::new(0),
        hists: (0..16).map(|_| Mutex::new(new_hist())).collect(),
        conns,
    });
    let s2 = shared.clone();
    let pool = Pool::spawn(&port, load.threads.max(1), move |_, c| {
        on_completion(&s2, c)
    })?;
    for c in &shared.conns {
        let mut st = c.st.lock();
        if load.rate.is_none() {
            for _ in 0..load.depth.max(1) {
                send_one(&shared, c, &mut st, Instant::now());
            }
        }
        c.sock.recv(Vec::with_capacity(RECV_BUF), 0);
    }
    port.submit();
    let mut max_send_lag = Duration::ZERO;
    let mut unfinished = 0;
    if let Some(rate) = load.rate {
        max_send_lag = open_loop_sends(&shared, &port, rate.max(1e-3), start);
        // Wait (bounded) for what was scheduled in the window to come back.
        let give_up = Instant::now() + Duration::from_secs(2);
        while shared.outstanding.load(Relaxed) > 0 && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(1));
        }
        unfinished = shared.outstanding.load(Relaxed).max(0) as u64;
        shared.stop.store(true, Relaxed);
    } else {
        std::thread::sleep(shared.measure_to.saturating_duration_since(Instant::now()));
        shared.stop.store(true, Relaxed);
        // Let the last round trips drain (they are not counted), then stop.
        std::thread::sleep(Duration::from_millis(50));
    }
    pool.shutdown();
    let merge = |hs: &[Mutex<Histogram<u64>>]| {
        let mut all = new_hist();
        for h in hs {
            all.add(&*h.lock()).expect("same bounds");
        }
        all
    };
    let cpu1 = crate::proc::cpu_time(std::process::id()).unwrap_or_default();
    Ok(Report {
        msgs: shared.msgs.load(Relaxed),
        elapsed: load.duration,
        latency_us: merge(&shared.hists),
        latency_fast_us: merge(&shared.hists_fast),
        slow_msgs: shared.slow_msgs.load(Relaxed),
        unfinished,
        max_send_lag,
        connect_errors,
        broken: shared.broken.load(Relaxed),
        corrupt: shared.corrupt.load(Relaxed),
        client_cpu: cpu1.saturating_sub(cpu0),
    })
}

fn on_completion(sh: &LoadState, c: cport::Completion) {
    let Some(conn) = sh.conns.get(c.key as usize) else {
        return;
    };
    match c.op {
        Op::Recv(mut buf) => {
            let n = match c.result {
                Ok(n) if n > 0 => n,
                Ok(_) | Err(_) => {
                    if !c.result.is_aborted() && !sh.stop.load(Relaxed) {
                        sh.broken.fetch_add(1, Relaxed);
                    }
                    conn.st.lock().alive = false;
                    return;
                }
            };
            let now = Instant::now();
            let measuring = now >= sh.measure_from && now < sh.measure_to;
            let mut st = conn.st.lock();
            // Spot-check the echoed bytes (first and last of this chunk) against the pattern
            // at their offset in the message: a reordered or torn echo shows.
            if buf[0] != expected(sh, &st, st.got)
                || buf[n - 1] != expected(sh, &st, st.got + n - 1)
            {
                sh.corrupt.fetch_add(1, Relaxed);
            }
            st.got += n;
            let mut done = 0;
            while st.got >= sh.size {
                st.got -= sh.size;
                let Some((t, slow)) = st.sent.pop_front() else {
                    sh.corrupt.fetch_add(1, Relaxed);
                    break;
                };
                sh.outstanding.fetch_sub(1, Relaxed);
                let measured = if sh.open_loop {
                    t >= sh.measure_from && t < sh.measure_to
                } else {
                    measuring
                };
                if measured {
                    let us = now.saturating_duration_since(t).as_micros().max(1) as u64;
                    let us = us.min(60_000_000);
                    let i = c.key as usize % sh.hists.len();
                    let _ = sh.hists[i].lock().record(us);
                    if slow {
                        sh.slow_msgs.fetch_add(1, Relaxed);
                    } else {
                        let _ = sh.hists_fast[i].lock().record(us);
                    }
                    done += 1;
                }
                if !sh.open_loop && !sh.stop.load(Relaxed) && now < sh.measure_to {
                    send_one(sh, conn, &mut st, now);
                }
            }
            if done > 0 {
                sh.msgs.fetch_add(done, Relaxed);
            }
            if st.alive {
                buf.clear();
                conn.sock.recv(buf, 0);
            }
        }
        Op::Send(_) => {
            if let Err(e) = &c.result {
                if !c.is_aborted() && !sh.stop.load(Relaxed) {
                    tracing::debug!("load send failed: {e}");
                    sh.broken.fetch_add(1, Relaxed);
                }
            }
        }
        _ => {}
    }
}

/// Starts one message on `conn`, timed from `t` (now, or its scheduled time).
fn send_one(sh: &LoadState, conn: &Conn, st: &mut ConnState, t: Instant) {
    st.seq += 1;
    let slow = sh.slow_ppm > 0 && mix(conn.sock.key(), st.seq) % 1_000_000 < sh.slow_ppm;
    st.sent.push_back((t, slow));
    sh.outstanding.fetch_add(1, Relaxed);
    let p = if slow { &sh.slow_payload } else { &sh.payload };
    conn.sock.send(p.clone(), 0);
}

/// The byte expected at `off` bytes past the start of the oldest outstanding message.
fn expected(sh: &LoadState, st: &ConnState, off: usize) -> u8 {
    let (m, o) = (off / sh.size, off % sh.size);
    if o == 0 && st.sent.get(m).is_some_and(|&(_, slow)| slow) {
        crate::peer::SLOW_MARKER
    } else {
        sh.payload[o]
    }
}

/// A well-spread hash of (connection, sequence number): splitmix64.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_add(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Open loop: sends message j to connection j mod N at `start + j/rate` until the window
/// ends; returns the longest lag behind the schedule.
fn open_loop_sends(sh: &LoadState, port: &Port, rate: f64, start: Instant) -> Duration {
    let n = sh.conns.len().max(1);
    let mut j: u64 = 0;
    let mut max_lag = Duration::ZERO;
    let at = |j: u64| start + Duration::from_secs_f64(j as f64 / rate);
    loop {
        let now = Instant::now();
        if now >= sh.measure_to || sh.conns.is_empty() {
            return max_lag;
        }
        let mut sent_any = false;
        loop {
            let due = at(j);
            if due > now || due >= sh.measure_to {
                break;
            }
            max_lag = max_lag.max(now - due);
            let conn = &sh.conns[(j % n as u64) as usize];
            let mut st = conn.st.lock();
            if st.alive {
                send_one(sh, conn, &mut st, due);
                sent_any = true;
            }
            j += 1;
        }
        if sent_any {
            port.submit();
        }
        let next = at(j).min(sh.measure_to);
        let wait = next.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}
