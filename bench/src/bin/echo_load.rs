//! The load client of `cport bench echo` alone, against a server that is already running
//! (for profiling one server: `perf stat -p PID` / `perf record -p PID` while this runs).
//!
//! `echo_load --addr 127.0.0.1:7000 [--conns 1000] [--size 1024] [--depth 1]
//! [--duration-s 5] [--warmup-s 1] [--rate R] [--slow-pct P] [--client-threads 1]`

use std::time::Duration;

use cport_bench::load::{self, Load};

fn main() {
    let mut load = Load {
        addr: "127.0.0.1:7000".parse().expect("literal"),
        conns: 1000,
        size: 1024,
        depth: 1,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        threads: 1,
        backend: None,
        rate: None,
        slow_pct: 0.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        let num = |v: &str| -> f64 {
            v.parse()
                .unwrap_or_else(|_| fail(&format!("{flag}: {v:?}")))
        };
        match flag.as_str() {
            "--addr" => load.addr = v.parse().unwrap_or_else(|_| fail("--addr")),
            "--conns" => load.conns = num(&v) as usize,
            "--size" => load.size = num(&v) as usize,
            "--depth" => load.depth = num(&v) as usize,
            "--duration-s" => load.duration = Duration::from_secs_f64(num(&v)),
            "--warmup-s" => load.warmup = Duration::from_secs_f64(num(&v)),
            "--rate" => load.rate = Some(num(&v)),
            "--slow-pct" => load.slow_pct = num(&v),
            "--client-threads" => load.threads = num(&v) as usize,
            other => fail(&format!("unknown argument {other:?}")),
        }
    }
    cport_bench::peer::raise_nofile();
    let r = load::run(&load).unwrap_or_else(|e| fail(&e.to_string()));
    let q = |p| r.latency_us.value_at_quantile(p);
    println!(
        "{:.0} msgs/s  p50 {} µs  p99 {} µs  p99.9 {} µs  p99 others {} µs  slow {}  client CPU {:.1}%  lag ≤ {} µs  broken {} corrupt {} connect errors {} unfinished {}",
        r.rate(),
        q(0.5),
        q(0.99),
        q(0.999),
        r.latency_fast_us.value_at_quantile(0.99),
        r.slow_msgs,
        100.0 * r.client_cpu.as_secs_f64() / (load.duration + load.warmup).as_secs_f64(),
        r.max_send_lag.as_micros(),
        r.broken,
        r.corrupt,
        r.connect_errors,
        r.unfinished
    );
}

fn fail(msg: &str) -> ! {
    eprintln!("echo_load: {msg}");
    std::process::exit(2)
}
