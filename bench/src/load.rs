//! A closed-loop echo load client on the port itself: N connections, each keeping `depth`
//! messages of `size` bytes outstanding; a message is done when `size` bytes came back. The
//! round-trip time of every message completed inside the measured window goes into a
//! latency histogram.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cport::{Backend, Op, Pool, Port, Socket};
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
    /// Send times of the messages outstanding, oldest first.
    sent: VecDeque<Instant>,
    /// Bytes of the oldest outstanding message received so far.
    got: usize,
    alive: bool,
}

struct Shared {
    conns: Vec<Conn>,
    payload: Bytes,
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
    let start = Instant::now();
    let shared = Arc::new(Shared {
        payload,
        size: load.size.max(1),
        measure_from: start + load.warmup,
        measure_to: start + load.warmup + load.duration,
        stop: AtomicBool::new(false),
        msgs: AtomicU64::new(0),
        broken: AtomicU64::new(0),
        corrupt: AtomicU64::new(0),
        hists: (0..16)
            .map(|_| Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")))
            .collect(),
        conns,
    });
    let s2 = shared.clone();
    let pool = Pool::spawn(&port, load.threads.max(1), move |_, c| {
        on_completion(&s2, c)
    })?;
    for c in &shared.conns {
        let mut st = c.st.lock();
        for _ in 0..load.depth.max(1) {
            st.sent.push_back(Instant::now());
            c.sock.send(shared.payload.clone(), 0);
        }
        c.sock.recv(Vec::with_capacity(RECV_BUF), 0);
    }
    std::thread::sleep(shared.measure_to.saturating_duration_since(Instant::now()));
    shared.stop.store(true, Relaxed);
    // Let the last round trips drain (they are not counted), then stop.
    std::thread::sleep(Duration::from_millis(50));
    pool.shutdown();
    let mut latency = Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    for h in &shared.hists {
        latency.add(&*h.lock()).expect("same bounds");
    }
    let cpu1 = crate::proc::cpu_time(std::process::id()).unwrap_or_default();
    Ok(Report {
        msgs: shared.msgs.load(Relaxed),
        elapsed: load.duration,
        latency_us: latency,
        connect_errors,
        broken: shared.broken.load(Relaxed),
        corrupt: shared.corrupt.load(Relaxed),
        client_cpu: cpu1.saturating_sub(cpu0),
    })
}

fn on_completion(sh: &Shared, c: cport::Completion) {
    let Some(conn) = sh.conns.get(c.key as usize) else {
        return;
    };
    match c.op {
        Op::Recv(mut buf) => {
            let n = match c.result {
                Ok(n) if n > 0 => n,
                Ok(_) | Err(_) => {
                    if !c_aborted(&c.result) && !sh.stop.load(Relaxed) {
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
            let first = sh.payload[st.got % sh.size];
            let last = sh.payload[(st.got + n - 1) % sh.size];
            if buf[0] != first || buf[n - 1] != last {
                sh.corrupt.fetch_add(1, Relaxed);
            }
            st.got += n;
            let mut done = 0;
            while st.got >= sh.size {
                st.got -= sh.size;
                let Some(t) = st.sent.pop_front() else {
                    sh.corrupt.fetch_add(1, Relaxed);
                    break;
                };
                if measuring {
                    let us = now.duration_since(t).as_micros().max(1) as u64;
                    let _ = sh.hists[c.key as usize % sh.hists.len()]
                        .lock()
                        .record(us.min(60_000_000));
                    done += 1;
                }
                if !sh.stop.load(Relaxed) && now < sh.measure_to {
                    st.sent.push_back(now);
                    conn.sock.send(sh.payload.clone(), 0);
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

fn c_aborted(r: &io::Result<usize>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::ECANCELED))
}
