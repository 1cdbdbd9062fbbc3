//! `cport bench echo`: every server under the same load, each as its own process, alternated
//! round by round, medians and ranges printed side by side.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use cport_bench::load::{self, Load};
use cport_bench::proc::ServerProc;
use cport_bench::stats::{median, range};
use hdrhistogram::Histogram;

/// `cport bench …`
#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Echo servers under the same closed-loop load.
    Echo(EchoArgs),
}

/// Options of `cport bench echo`.
#[derive(clap::Args, Debug)]
pub struct EchoArgs {
    /// Connections.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Measured seconds per server per round.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Unmeasured warm-up seconds before each measurement.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_s: f64,
    /// Server worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Load-client worker threads.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Messages outstanding per connection (1 = ping-pong; more = pipelined).
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Rounds; each runs every server once, in turn.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Servers, comma-separated: cport-uring, cport-epoll (the server layer), port-uring,
    /// port-epoll (the port-only echo example).
    #[arg(long, default_value = "cport-uring,cport-epoll,port-uring,port-epoll")]
    pub servers: String,
}

struct Contender {
    name: String,
    program: PathBuf,
    args: Vec<String>,
}

fn contender(name: &str, threads: usize) -> io::Result<Contender> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let common = |backend: &str| {
        vec![
            "--addr".into(),
            "127.0.0.1:0".into(),
            "--threads".into(),
            threads.to_string(),
            "--backend".into(),
            backend.into(),
        ]
    };
    let (program, args) = match name {
        "cport-uring" | "cport-epoll" => {
            let mut a = vec!["echo".to_string()];
            a.extend(common(&name[6..]));
            (exe.clone(), a)
        }
        "port-uring" | "port-epoll" => {
            let example = dir.join("examples").join("echo");
            if !example.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{} not built: run `cargo build --release -p cport --examples` first",
                        example.display()
                    ),
                ));
            }
            (example, common(&name[5..]))
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown server {other:?}"),
            ))
        }
    };
    Ok(Contender {
        name: name.to_string(),
        program,
        args,
    })
}

#[derive(Default)]
struct Tally {
    rates: Vec<f64>,
    cpu_pct: Vec<f64>,
    cpu_us_per_msg: Vec<f64>,
    hist: Option<Histogram<u64>>,
    broken: u64,
    corrupt: u64,
    connect_errors: u64,
}

pub fn run(cmd: Cmd) -> io::Result<()> {
    let Cmd::Echo(a) = cmd;
    crate::util::raise_fd_limit();
    let contenders: Vec<Contender> = a
        .servers
        .split(',')
        .map(|s| contender(s.trim(), a.threads))
        .collect::<io::Result<_>>()?;
    let mut tallies: Vec<Tally> = contenders.iter().map(|_| Tally::default()).collect();
    println!(
        "bench echo: {} connections x {} B, depth {}, {} s measured (+{} s warm-up) per server per round, {} rounds, server threads {}, client threads {}",
        a.conns, a.size, a.depth, a.duration_s, a.warmup_s, a.rounds, a.threads, a.client_threads
    );
    for round in 1..=a.rounds {
        for (c, t) in contenders.iter().zip(&mut tallies) {
            let server = ServerProc::spawn(&c.program, &c.args, &[])?;
            let cpu0 = server.cpu_time();
            let load = Load {
                addr: server.addr,
                conns: a.conns,
                size: a.size,
                depth: a.depth,
                duration: Duration::from_secs_f64(a.duration_s),
                warmup: Duration::from_secs_f64(a.warmup_s),
                threads: a.client_threads,
                backend: None,
            };
            // The server's CPU over warm-up + measurement, scaled to the measured part.
            let r = load::run(&load)?;
            let cpu = server.cpu_time().saturating_sub(cpu0);
            server.stop()?;
            let wall = a.duration_s + a.warmup_s;
            let cpu_s = cpu.as_secs_f64() * a.duration_s / wall;
            t.rates.push(r.rate());
            t.cpu_pct.push(100.0 * cpu_s / a.duration_s);
            t.cpu_us_per_msg.push(1e6 * cpu_s / (r.msgs.max(1) as f64));
            t.broken += r.broken;
            t.corrupt += r.corrupt;
            t.connect_errors += r.connect_errors;
            match &mut t.hist {
                Some(h) => h.add(&r.latency_us).expect("same bounds"),
                None => t.hist = Some(r.latency_us.clone()),
            }
            println!(
                "  round {round}: {:<12} {:>9.0} msgs/s  p99 {:>6} µs  server CPU {:>5.1}%",
                c.name,
                r.rate(),
                r.latency_us.value_at_quantile(0.99),
                100.0 * cpu_s / a.duration_s
            );
        }
    }
    let reference = median(&tallies[0].rates).max(1e-9);
    println!();
    println!(
        "{:<12} {:>10} {:>19} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}",
        "server",
        "msgs/s",
        "min–max",
        "MB/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "CPU %",
        "CPU µs/msg",
        "ratio"
    );
    for (c, t) in contenders.iter().zip(&tallies) {
        let m = median(&t.rates);
        let (lo, hi) = range(&t.rates);
        let h = t.hist.as_ref().expect("at least one round");
        println!(
            "{:<12} {:>10.0} {:>9.0}–{:<9.0} {:>8.1} {:>8} {:>8} {:>8} {:>8.1} {:>9.1} {:>7.2}",
            c.name,
            m,
            lo,
            hi,
            m * a.size as f64 / 1e6,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            median(&t.cpu_pct),
            median(&t.cpu_us_per_msg),
            m / reference
        );
        if t.broken + t.corrupt + t.connect_errors > 0 {
            println!(
                "  ! {}: {} broken connections, {} corrupt echoes, {} failed connects",
                c.name, t.broken, t.corrupt, t.connect_errors
            );
        }
    }
    println!("(ratio: median msgs/s over {}'s)", contenders[0].name);
    Ok(())
}
