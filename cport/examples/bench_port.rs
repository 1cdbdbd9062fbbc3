//! post → get hand-off throughput: one producer thread, C consumer threads, against
//! `crossbeam-channel` and `std::sync::mpsc` with the same structure and the same payload.
//!
//! ```text
//! cargo run --release -p cport --example bench_port -- \
//!     [--rounds 7] [--items 1000000] [--backend uring|epoll|both] [--batch] [--json FILE]
//!     [--only NAME] [--stall-ms 1000]
//! ```
//!
//! * One producer posts `items` user completions (`Port::post(key, bytes, user)`); C consumer
//!   threads (C = 1 and C = 2) take them (`Port::get(None)`, or `get_many(out, 64, None)` for
//!   the `--batch` rows) and count them with one shared atomic. The consumer that takes the
//!   last item stamps the end time and stops the others (port shutdown); the producer stamps
//!   the start time once every thread is at the start line.
//! * The channel contenders move the very same value, a `cport::Completion` built exactly as
//!   `Port::post` builds it (`{ key, user, result: Ok(bytes), op: Op::Post }`), through an
//!   unbounded channel; the producer drops its sender at the end so the consumers stop on
//!   disconnect. `std::sync::mpsc` has a single receiver: with 2 consumers it is shared
//!   behind a `Mutex` (the consumer holding the lock blocks in `recv`).
//! * A port has concurrency = number of consumers; a fresh port (and fresh threads) per run.
//! * Rounds alternate the contenders (A B C … A B C …); the table gives the median over
//!   rounds, the min–max and the ratio of medians to crossbeam with the same consumer count.
//! * A watchdog guards every port run: if no item is taken for `--stall-ms` while items are
//!   queued and no consumer is in a handler, the port lost a wake-up. The run is reported
//!   (with the port's state), ended with `Port::shutdown`, and counted as stalled: it gives no
//!   throughput sample, and the table says how many runs stalled.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use cport::{Backend, Completion, Op, Port};
use cport_bench::stats::{median, range};

#[derive(Parser, Debug)]
#[command(about = "post→get hand-off throughput of cport against crossbeam and std mpsc")]
struct Args {
    /// Measured rounds (each runs every contender once, in turn).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Items handed off per run.
    #[arg(long, default_value_t = 1_000_000)]
    items: usize,
    /// Which port backend(s): uring, epoll or both.
    #[arg(long, default_value = "both")]
    backend: String,
    /// Also measure cport consumers that take batches with `get_many(out, 64, None)`.
    #[arg(long)]
    batch: bool,
    /// A port run with items queued and none taken for this long is a lost wake-up.
    #[arg(long, default_value_t = 1000)]
    stall_ms: u64,
    /// Run only the contenders whose name contains this (e.g. `cport-uring`, for profiling).
    #[arg(long)]
    only: Option<String>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<String>,
}

/// Batch size of the `get_many` rows.
const BATCH: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Port { backend: Backend, batch: bool },
    Crossbeam,
    Mpsc,
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::Port { backend, batch } => {
                format!(
                    "cport-{}{}",
                    backend.name(),
                    if batch { " get_many" } else { "" }
                )
            }
            Kind::Crossbeam => "crossbeam".into(),
            Kind::Mpsc => "std mpsc".into(),
        }
    }
}

/// What every run shares: the start line, the count, the start and end stamps.
struct Run {
    items: usize,
    start_line: Barrier,
    taken: AtomicUsize,
    start: OnceLock<Instant>,
    end: OnceLock<Instant>,
    /// Every consumer has returned (the watchdog stops).
    finished: AtomicBool,
    /// The watchdog found the port stalled and shut it down.
    stalled: AtomicBool,
}

impl Run {
    fn new(items: usize, consumers: usize) -> Arc<Run> {
        Arc::new(Run {
            items,
            start_line: Barrier::new(consumers + 1),
            taken: AtomicUsize::new(0),
            start: OnceLock::new(),
            end: OnceLock::new(),
            finished: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
        })
    }

    /// Counts `n` taken items; true for the consumer that took the last one.
    fn took(&self, n: usize) -> bool {
        let now = self.taken.fetch_add(n, Ordering::AcqRel) + n;
        if now >= self.items {
            let _ = self.end.set(Instant::now());
            return true;
        }
        false
    }

    fn elapsed(&self) -> Duration {
        let (s, e) = (self.start.get().unwrap(), self.end.get().unwrap());
        e.saturating_duration_since(*s)
    }
}

/// The item every contender moves (the same value `Port::post` queues).
fn item(i: usize) -> Completion {
    Completion {
        key: 1,
        user: i as u64,
        result: Ok(i),
        op: Op::Post,
    }
}

/// What a consumer does with an item: read it, so nothing is optimised away.
fn consume(c: &Completion) -> u64 {
    black_box(c);
    c.user
}

/// One run; returns items per second, or `None` if the port stalled.
fn run_once(kind: Kind, consumers: usize, items: usize, stall: Duration) -> Option<f64> {
    let run = Run::new(items, consumers);
    let sums: Vec<u64> = match kind {
        Kind::Port { backend, batch } => run_port(&run, kind, backend, batch, consumers, stall),
        Kind::Crossbeam => run_crossbeam(&run, consumers),
        Kind::Mpsc => run_mpsc(&run, consumers),
    };
    if run.stalled.load(Ordering::Acquire) {
        return None;
    }
    let total: u64 = sums.iter().sum();
    let expect = (items as u64) * (items as u64 - 1) / 2;
    assert_eq!(total, expect, "{}: lost or duplicated items", kind.name());
    assert_eq!(run.taken.load(Ordering::Relaxed), items);
    Some(items as f64 / run.elapsed().as_secs_f64())
}

/// The producer: waits at the start line, stamps the start, sends every item (stops early
/// if `send` says the receiving side is gone).
fn produce(run: &Run, mut send: impl FnMut(usize) -> bool) {
    run.start_line.wait();
    let _ = run.start.set(Instant::now());
    for i in 0..run.items {
        if !send(i) {
            return;
        }
    }
}

fn run_port(
    run: &Arc<Run>,
    kind: Kind,
    backend: Backend,
    batch: bool,
    consumers: usize,
    stall: Duration,
) -> Vec<u64> {
    let port = Port::builder()
        .backend(backend)
        .ignore_env()
        .concurrency(consumers)
        .build()
        .expect("port");
    assert_eq!(port.backend(), backend);
    thread::scope(|s| {
        let watchdog = {
            let (port, run) = (port.clone(), run.clone());
            s.spawn(move || watch(&run, &port, kind, consumers, stall))
        };
        let handles: Vec<_> = (0..consumers)
            .map(|_| {
                let (port, run) = (port.clone(), run.clone());
                s.spawn(move || {
                    let mut sum = 0u64;
                    run.start_line.wait();
                    if batch {
                        let mut out = Vec::with_capacity(BATCH);
                        while let Ok(n) = port.get_many(&mut out, BATCH, None) {
                            for c in out.drain(..) {
                                sum += consume(&c);
                            }
                            if n > 0 && run.took(n) {
                                port.shutdown();
                            }
                        }
                    } else {
                        while let Ok(c) = port.get(None) {
                            if let Some(c) = c {
                                sum += consume(&c);
                                if run.took(1) {
                                    port.shutdown();
                                }
                            }
                        }
                    }
                    sum
                })
            })
            .collect();
        // Queues item(i): `{ key: 1, user: i, result: Ok(i), op: Op::Post }`.
        produce(run, |i| port.post(1, i, i as u64).is_ok());
        let sums = handles.into_iter().map(|h| h.join().unwrap()).collect();
        run.finished.store(true, Ordering::Release);
        watchdog.thread().unpark();
        watchdog.join().unwrap();
        sums
    })
}

/// The watchdog of a port run. Items queued, no consumer in a handler, and none taken for
/// `stall`: the port lost a wake-up (its poller sleeps in the kernel with work queued).
/// Reports it with the port's state and ends the run with a shutdown, which does wake the
/// poller, so that the benchmark goes on.
fn watch(run: &Run, port: &Port, kind: Kind, consumers: usize, stall: Duration) {
    let mut last = usize::MAX;
    let mut since = Instant::now();
    while !run.finished.load(Ordering::Acquire) {
        thread::park_timeout(Duration::from_millis(20));
        let taken = run.taken.load(Ordering::Relaxed);
        if taken != last || run.start.get().is_none() {
            (last, since) = (taken, Instant::now());
            continue;
        }
        let st = port.stats();
        if since.elapsed() >= stall && st.ready > 0 && st.active == 0 && !port.is_shut_down() {
            eprintln!(
                "STALL: {} with {} consumer(s): {} of {} items taken, none for {:?}; {:?}",
                kind.name(),
                consumers,
                taken,
                run.items,
                since.elapsed(),
                st
            );
            run.stalled.store(true, Ordering::Release);
            port.shutdown();
            return;
        }
    }
}

/// A channel consumer's loop: takes items until `next` says the channel is closed, and
/// returns their checksum.
fn drain(run: &Run, mut next: impl FnMut() -> Option<Completion>) -> u64 {
    let mut sum = 0u64;
    while let Some(c) = next() {
        sum += consume(&c);
        run.took(1);
    }
    sum
}

fn run_crossbeam(run: &Arc<Run>, consumers: usize) -> Vec<u64> {
    let (tx, rx) = crossbeam_channel::unbounded::<Completion>();
    thread::scope(|s| {
        let handles: Vec<_> = (0..consumers)
            .map(|_| {
                let (rx, run) = (rx.clone(), run.clone());
                s.spawn(move || {
                    run.start_line.wait();
                    drain(&run, || rx.recv().ok())
                })
            })
            .collect();
        drop(rx);
        produce(run, |i| tx.send(item(i)).is_ok());
        drop(tx); // consumers stop on disconnect
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn run_mpsc(run: &Arc<Run>, consumers: usize) -> Vec<u64> {
    let (tx, rx) = mpsc::channel::<Completion>();
    let rx = Arc::new(Mutex::new(rx));
    thread::scope(|s| {
        let handles: Vec<_> = (0..consumers)
            .map(|_| {
                let (rx, run) = (rx.clone(), run.clone());
                s.spawn(move || {
                    run.start_line.wait();
                    if consumers == 1 {
                        // A single consumer: lock once, then a plain recv loop.
                        let rx = rx.lock().unwrap();
                        drain(&run, || rx.recv().ok())
                    } else {
                        drain(&run, || rx.lock().unwrap().recv().ok())
                    }
                })
            })
            .collect();
        produce(run, |i| tx.send(item(i)).is_ok());
        drop(tx);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

struct Row {
    kind: Kind,
    consumers: usize,
    /// Items per second of the runs that completed.
    rates: Vec<f64>,
    /// Runs ended by the watchdog.
    stalls: usize,
}

impl Row {
    /// The median over rounds; `None` before any round ran.
    fn median(&self) -> Option<f64> {
        (!self.rates.is_empty()).then(|| median(&self.rates))
    }
}

fn crossbeam_median(rows: &[Row], consumers: usize) -> Option<f64> {
    rows.iter()
        .find(|r| r.consumers == consumers && r.kind == Kind::Crossbeam)
        .and_then(Row::median)
}

fn main() {
    let args = Args::parse();
    let backends: Vec<Backend> = match args.backend.as_str() {
        "both" | "all" => vec![Backend::Uring, Backend::Epoll],
        b => vec![b.parse().expect("--backend uring|epoll|both")],
    };
    assert!(args.rounds >= 1 && args.items >= 1);
    let stall = Duration::from_millis(args.stall_ms.max(1));

    let mut kinds = Vec::new();
    for &b in &backends {
        kinds.push(Kind::Port {
            backend: b,
            batch: false,
        });
    }
    if args.batch {
        for &b in &backends {
            kinds.push(Kind::Port {
                backend: b,
                batch: true,
            });
        }
    }
    kinds.push(Kind::Crossbeam);
    kinds.push(Kind::Mpsc);
    if let Some(only) = &args.only {
        kinds.retain(|k| k.name().contains(only.as_str()));
        assert!(!kinds.is_empty(), "--only {only:?} matches no contender");
    }

    let mut rows: Vec<Row> = Vec::new();
    for consumers in [1, 2] {
        for &kind in &kinds {
            rows.push(Row {
                kind,
                consumers,
                rates: Vec::new(),
                stalls: 0,
            });
        }
    }

    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let payload = std::mem::size_of::<Completion>();
    println!(
        "bench_port: 1 producer, C consumers; {} items per run, {} rounds, {} CPUs; payload {} B (cport::Completion)",
        args.items, args.rounds, cpus, payload
    );

    // Warm-up (not counted): every contender once, with a tenth of the items.
    for r in &rows {
        run_once(r.kind, r.consumers, (args.items / 10).max(1), stall);
    }
    let t0 = Instant::now();
    for round in 0..args.rounds {
        for r in rows.iter_mut() {
            match run_once(r.kind, r.consumers, args.items, stall) {
                Some(rate) => r.rates.push(rate),
                None => r.stalls += 1,
            }
        }
        eprintln!(
            "round {}/{} done ({:.1} s)",
            round + 1,
            args.rounds,
            t0.elapsed().as_secs_f64()
        );
    }

    println!();
    println!(
        "{:<22} {:>9} {:>10} {:>17} {:>12} {:>8}",
        "contender", "consumers", "Mitems/s", "min–max", "vs crossbeam", "stalled"
    );
    println!("{}", "-".repeat(83));
    for consumers in [1, 2] {
        let base = crossbeam_median(&rows, consumers);
        for r in rows.iter().filter(|r| r.consumers == consumers) {
            let stalled = format!("{}/{}", r.stalls, args.rounds);
            match r.median() {
                Some(m) => {
                    let (lo, hi) = range(&r.rates);
                    let ratio = base.map_or("-".to_string(), |b| format!("{:.2}×", m / b));
                    println!(
                        "{:<22} {:>9} {:>10.2} {:>17} {:>12} {:>8}",
                        r.kind.name(),
                        consumers,
                        m / 1e6,
                        format!("{:.2}–{:.2}", lo / 1e6, hi / 1e6),
                        ratio,
                        stalled
                    );
                }
                None => println!(
                    "{:<22} {:>9} {:>10} {:>17} {:>12} {:>8}",
                    r.kind.name(),
                    consumers,
                    "-",
                    "-",
                    "-",
                    stalled
                ),
            }
        }
    }
    println!();
    println!(
        "Median over {} rounds; contenders alternate within each round. Every contender moves a",
        args.rounds
    );
    println!(
        "cport::Completion ({payload} B: key, user, result Ok(bytes), op Op::Post); cport via"
    );
    println!(
        "Port::post/get (get_many: batches of {BATCH}), concurrency = consumers; channels unbounded."
    );
    println!(
        "std mpsc with 2 consumers: the single Receiver is shared behind a Mutex (holder blocks in recv)."
    );
    let stalls: usize = rows.iter().map(|r| r.stalls).sum();
    if stalls > 0 {
        println!(
            "stalled: runs in which the port lost a wake-up (items queued, none taken for {:?});",
            stall
        );
        println!("they were ended by the watchdog and are excluded from the statistics.");
    }

    if let Some(path) = &args.json {
        std::fs::write(path, to_json(&args, cpus, &rows)).expect("write --json file");
        println!("results written to {path}");
    }
}

fn json_num(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "null".into(),
    }
}

fn to_json(args: &Args, cpus: usize, rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str("{\n");
    s.push_str("  \"bench\": \"bench_port\",\n");
    s.push_str(&format!(
        "  \"items\": {},\n  \"rounds\": {},\n  \"cpus\": {},\n  \"payload_bytes\": {},\n  \"batch\": {},\n",
        args.items,
        args.rounds,
        cpus,
        std::mem::size_of::<Completion>(),
        BATCH
    ));
    s.push_str("  \"results\": [\n");
    for (i, r) in rows.iter().enumerate() {
        let m = r.median();
        let ratio = m
            .zip(crossbeam_median(rows, r.consumers))
            .map(|(m, b)| m / b);
        let (lo, hi) = if r.rates.is_empty() {
            (None, None)
        } else {
            let (lo, hi) = range(&r.rates);
            (Some(lo), Some(hi))
        };
        let rates: Vec<String> = r.rates.iter().map(|x| format!("{x:.0}")).collect();
        s.push_str(&format!(
            "    {{\"contender\": \"{}\", \"consumers\": {}, \"median_items_per_s\": {}, \"min\": {}, \"max\": {}, \"ratio_to_crossbeam\": {}, \"stalled_runs\": {}, \"rounds\": [{}]}}{}\n",
            r.kind.name(),
            r.consumers,
            json_num(m, 0),
            json_num(lo, 0),
            json_num(hi, 0),
            json_num(ratio, 4),
            r.stalls,
            rates.join(", "),
            if i + 1 < rows.len() { "," } else { "" }
        ));
    }
    s.push_str("  ]\n}\n");
    s
}
