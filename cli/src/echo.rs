//! `cport echo`: a raw byte-stream echo server on the server layer.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

use cport::Backend;
use cport_server::{Bytes, Config, Handler, RawStream, Server, Session};

/// Options of `cport echo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the startup line shows it).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: SocketAddr,
    /// Worker threads (0 = available parallelism).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Backend: auto, uring, epoll (Linux) or iocp (Windows) [default: $CPORT_BACKEND, else auto].
    #[arg(long)]
    pub backend: Option<Backend>,
    /// Most sessions open at once; more connections are refused.
    #[arg(long, default_value_t = 10_000)]
    pub max_sessions: usize,
    /// Close sessions that sent nothing for this many seconds.
    #[arg(long)]
    pub idle_timeout_s: Option<f64>,
    /// Receive buffers shared by all sessions (a session takes one only when data arrives);
    /// 0 gives every session a buffer of its own.
    #[arg(long, default_value_t = Config::default().recv_pool)]
    pub recv_pool: usize,
    /// Most bytes queued for sending per session before it is closed as a slow consumer.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_send_queue: usize,
    /// Log a line of metrics every this many seconds (0 = never).
    #[arg(long, default_value_t = 0.0)]
    pub stats_interval_s: f64,
    /// Every second, replace this file with one line of counters (`key=value`: sessions
    /// open, accepted, refused, closed by reason, bytes in/out, bytes queued for sending;
    /// with glibc, the heap's bytes in use and held free).
    #[arg(long)]
    pub stats_file: Option<std::path::PathBuf>,
}

struct Echo;

impl Handler for Echo {
    fn on_packet(&self, session: &Session, packet: &[u8]) {
        // Refused only when the session is closing: nothing to echo to.
        let _ = session.send(Bytes::copy_from_slice(packet));
    }
}

fn secs(s: f64) -> Option<Duration> {
    (s > 0.0).then(|| Duration::from_secs_f64(s))
}

pub fn run(args: Args) -> io::Result<()> {
    crate::util::raise_fd_limit();
    let signals = crate::util::signals()?;
    let threads = crate::util::threads_or_cores(args.threads);
    let cfg = Config {
        addr: args.addr,
        threads,
        backend: args.backend,
        max_sessions: args.max_sessions,
        idle_timeout: args.idle_timeout_s.and_then(secs),
        max_send_queue: args.max_send_queue,
        stats_interval: secs(args.stats_interval_s),
        recv_buffer: 16 * 1024,
        recv_pool: args.recv_pool,
        ..Config::default()
    };
    let server = Server::start(cfg, RawStream, Echo)?;
    let h = server.handle();
    println!(
        "listening on {} (backend: {}, threads: {}, concurrency: {})",
        h.local_addr(),
        h.backend(),
        threads,
        h.port().concurrency()
    );
    io::stdout().flush()?;
    crate::util::wait_for_signal(&signals, args.stats_file.as_deref(), || {
        crate::util::metrics_kv(&h.metrics()) + &crate::util::heap_kv()
    });
    let report = server.shutdown(Duration::from_secs(5));
    let m = h.metrics();
    println!("{report}");
    println!("{m}");
    Ok(())
}
