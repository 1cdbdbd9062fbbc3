//! Single-connection echo round trips per second through the port, against a blocking std
//! thread-per-connection echo server.
//!
//! ```text
//! cargo run --release -p cport --example bench_rtt -- [--rounds 5] [--secs 1] [--size 64]
//! ```
//!
//! * Client (the same for every contender): one blocking `std::net::TcpStream` over loopback
//!   with `TCP_NODELAY`, in its own thread: `write_all(size bytes)` then `read_exact(size)`,
//!   in a loop for `secs` after a short warm-up; every round trip is timed into an
//!   hdrhistogram.
//! * cport-uring / cport-epoll: a port with concurrency 1 and one worker thread looping on
//!   `Port::get`: `Recv(buf)` → `send(buf)` (the same buffer) → `Send(buf)` → `recv(buf)`, on
//!   the one accepted connection (accepted with std, `TCP_NODELAY`, then associated).
//! * std thread: one thread for the connection, blocking `read` → `write_all`.
//! * A fresh server and connection per contender and round; rounds alternate the contenders.
//!   The table gives the median over rounds of round trips/s, the min–max, the p50/p99 RTT of
//!   all rounds' round trips together, and the ratio of medians to the std thread server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use cport::{Backend, Op, Port, SendBuf};
use cport_bench::stats::median;
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
#[command(about = "single-connection echo round trips through cport vs a std thread server")]
struct Args {
    /// Measured rounds (each runs every contender once, in turn).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of round trips per contender per round.
    #[arg(long, default_value_t = 1.0)]
    secs: f64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Which port backend(s): uring, epoll or both.
    #[arg(long, default_value = "both")]
    backend: String,
}

/// Round trips before the measured ones (connection and caches warm up).
const WARMUP: usize = 2_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Port(Backend),
    StdThread,
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::Port(b) => format!("cport-{}", b.name()),
            Kind::StdThread => "std thread".into(),
        }
    }
}

/// The server side of one run, serving the one connection that `listener` accepts.
fn serve(kind: Kind, listener: TcpListener, size: usize) -> thread::JoinHandle<()> {
    match kind {
        Kind::Port(backend) => {
            let port = Port::builder()
                .backend(backend)
                .ignore_env()
                .concurrency(1)
                .build()
                .expect("port");
            assert_eq!(port.backend(), backend);
            thread::spawn(move || {
                let (stream, _) = listener.accept().expect("accept");
                stream.set_nodelay(true).unwrap();
                let sock = port.associate(stream, 1).expect("associate");
                sock.recv(Vec::with_capacity(size), 0);
                // This thread always comes back to `get`: batch its operations there.
                port.defer_submissions();
                while let Ok(Some(c)) = port.get(None) {
                    match c.op {
                        Op::Recv(buf) => match c.result {
                            Ok(n) if n > 0 => sock.send(buf, 0),
                            _ => break, // the client closed: done
                        },
                        Op::Send(buf) => {
                            if c.result.is_err() {
                                break;
                            }
                            // Only the receive's `Vec` is ever sent back here; a shared
                            // buffer would not be ours to reuse, so it gets a new one.
                            let buf = match buf {
                                SendBuf::Vec(mut v) => {
                                    v.clear();
                                    v
                                }
                                SendBuf::Bytes(_) | SendBuf::Vectored(_) => {
                                    Vec::with_capacity(size)
                                }
                            };
                            sock.recv(buf, 0);
                        }
                        _ => {}
                    }
                }
                drop(sock);
                port.shutdown();
            })
        }
        Kind::StdThread => thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream.set_nodelay(true).unwrap();
            let mut buf = vec![0u8; size];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        }),
    }
}

struct Sample {
    rtts_per_s: f64,
    hist: Histogram<u64>,
}

/// One run: a fresh server, one client connection for `secs`.
fn run_once(kind: Kind, secs: f64, size: usize) -> Sample {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let server = serve(kind, listener, size);
    let client = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        let msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut back = vec![0u8; size];
        for _ in 0..WARMUP {
            s.write_all(&msg).unwrap();
            s.read_exact(&mut back).unwrap();
        }
        assert_eq!(back, msg, "{}: echo differs", kind.name());
        let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
        let span = Duration::from_secs_f64(secs);
        let mut n = 0u64;
        let start = Instant::now();
        let mut t = start;
        loop {
            s.write_all(&msg).unwrap();
            s.read_exact(&mut back).unwrap();
            let now = Instant::now();
            hist.saturating_record((now - t).as_nanos() as u64);
            t = now;
            n += 1;
            if now - start >= span {
                break;
            }
        }
        let elapsed = t - start;
        drop(s); // the server sees end of stream and stops
        Sample {
            rtts_per_s: n as f64 / elapsed.as_secs_f64(),
            hist,
        }
    });
    let sample = client.join().expect("client");
    server.join().expect("server");
    sample
}

struct Row {
    kind: Kind,
    rates: Vec<f64>,
    hist: Histogram<u64>,
}

fn main() {
    let args = Args::parse();
    assert!(args.rounds >= 1 && args.size >= 1 && args.secs > 0.0);
    let backends: Vec<Backend> = match args.backend.as_str() {
        "both" | "all" => vec![Backend::Uring, Backend::Epoll],
        b => vec![b.parse().expect("--backend uring|epoll|both")],
    };
    let mut rows: Vec<Row> = backends
        .iter()
        .map(|&b| Kind::Port(b))
        .chain([Kind::StdThread])
        .map(|kind| Row {
            kind,
            rates: Vec::new(),
            hist: Histogram::new_with_bounds(1, 10_000_000_000, 3).unwrap(),
        })
        .collect();

    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "bench_rtt: 1 connection over loopback, {} B messages, {} s per contender per round, {} rounds, {} CPUs",
        args.size, args.secs, args.rounds, cpus
    );
    let t0 = Instant::now();
    for round in 0..args.rounds {
        for r in rows.iter_mut() {
            let s = run_once(r.kind, args.secs, args.size);
            r.rates.push(s.rtts_per_s);
            r.hist.add(&s.hist).unwrap();
        }
        eprintln!(
            "round {}/{} done ({:.1} s)",
            round + 1,
            args.rounds,
            t0.elapsed().as_secs_f64()
        );
    }

    let base = rows
        .iter()
        .find(|r| r.kind == Kind::StdThread)
        .map(|r| median(&r.rates))
        .unwrap();
    println!();
    println!(
        "{:<12} {:>12} {:>19} {:>9} {:>9} {:>12}",
        "contender", "RTT/s", "min–max", "p50 µs", "p99 µs", "vs std thread"
    );
    println!("{}", "-".repeat(78));
    for r in &rows {
        let m = median(&r.rates);
        let lo = r.rates.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = r.rates.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "{:<12} {:>12.0} {:>19} {:>9.1} {:>9.1} {:>12.2}×",
            r.kind.name(),
            m,
            format!("{lo:.0}–{hi:.0}"),
            r.hist.value_at_quantile(0.50) as f64 / 1e3,
            r.hist.value_at_quantile(0.99) as f64 / 1e3,
            m / base
        );
    }
    println!();
    println!(
        "RTT/s: median over {} rounds (contenders alternate within each round); p50/p99: all",
        args.rounds
    );
    println!(
        "measured round trips of all rounds together. Client: blocking std TcpStream, TCP_NODELAY,"
    );
    println!(
        "write_all + read_exact of {} B. cport: concurrency 1, one worker thread (recv → send the",
        args.size
    );
    println!("same buffer → recv); std thread: one blocking thread, read → write_all.");
}
