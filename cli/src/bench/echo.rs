//! `cport bench echo`: every server under the same load, each as its own process, alternated
//! round by round, medians and ranges printed side by side.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use cport_bench::load::{self, Load};
use cport_bench::proc::ServerProc;
use cport_bench::results::{self, serde_json::Value, EchoBench, RoundResult, ServerSummary};
use cport_bench::stats::{median, range};
use hdrhistogram::Histogram;

use crate::util::not_built;

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
    /// Messages outstanding per connection (1 = ping-pong; more = pipelined). Closed loop only.
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Rounds; each runs every server once, in turn.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Servers, comma-separated: cport-uring, cport-epoll (`cport echo`, the server layer),
    /// port-uring, port-epoll (the port-only echo example); a cport name followed by `@PATH`
    /// runs the `cport` binary at PATH (a build of another commit, for before/after runs);
    /// tokio, compio, raw (the peers: `cargo build --release -p cport-bench-peers`).
    #[arg(
        long,
        default_value = "cport-uring,cport-epoll,port-uring,tokio,compio,raw"
    )]
    pub servers: String,
    /// Open loop: offer R messages/s in total across the connections, on a fixed schedule;
    /// latency counts from the scheduled send time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// P:MS — P% of the messages make the server spin MS ms of CPU in its handler before
    /// echoing (the same spin in every server). Needs depth 1; port-* servers are left out.
    #[arg(long)]
    pub skew: Option<String>,
    /// Also write every round's figures and the medians as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A server under test: how to start it.
pub(super) struct Contender {
    pub(super) name: String,
    pub(super) program: PathBuf,
    pub(super) args: Vec<String>,
}

/// The server `name`, found next to the current executable.
pub(super) fn contender(
    full_name: &str,
    threads: usize,
    skew_ms: Option<f64>,
) -> io::Result<Contender> {
    // `cport-NAME@PATH`: the `cport` binary at PATH (a build of another commit), for
    // before/after runs of a change in one run.
    let mut exe = std::env::current_exe()?;
    let name = match full_name.split_once('@') {
        Some((n, path)) if n.starts_with("cport-") && path.contains('/') => {
            exe = PathBuf::from(path);
            if !exe.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{full_name}: no binary at {path}"),
                ));
            }
            n
        }
        _ => full_name,
    };
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let mut common = vec![
        "--addr".to_string(),
        "127.0.0.1:0".into(),
        "--threads".into(),
        threads.to_string(),
    ];
    if let Some(ms) = skew_ms {
        common.extend(["--skew-spin-ms".to_string(), ms.to_string()]);
    }
    let with_backend = |backend: &str| {
        let mut a = common.clone();
        a.extend(["--backend".to_string(), backend.to_string()]);
        a
    };
    let peer = |bin: &str| -> io::Result<PathBuf> {
        let p = dir.join(bin);
        if p.exists() {
            Ok(p)
        } else {
            Err(not_built(&p, "cargo build --release -p cport-bench-peers"))
        }
    };
    let (program, args) = match name {
        // `cport echo` has no spin: under --skew the same server layer echo with the spin
        // (bench-peers/src/bin/cport_echo_bench.rs) stands in for it.
        "cport-uring" | "cport-epoll" if skew_ms.is_some() => {
            (peer("cport_echo_bench")?, with_backend(&name[6..]))
        }
        "cport-uring" | "cport-epoll" => {
            let mut a = vec!["echo".to_string()];
            a.extend(with_backend(&name[6..]));
            (exe.clone(), a)
        }
        // The server layer with a receive buffer per session (no pool), for before/after.
        "cport-uring-own" | "cport-epoll-own" => {
            let mut a = vec!["echo".to_string(), "--recv-pool".into(), "0".into()];
            a.extend(with_backend(&name[6..name.len() - 4]));
            (exe.clone(), a)
        }
        "port-uring" | "port-epoll" => {
            let example = dir.join("examples").join("echo");
            if !example.exists() {
                return Err(not_built(&example, "cargo build --release -p cport --examples"));
            }
            (example, with_backend(&name[5..]))
        }
        "tokio" | "compio" | "raw" => (peer(&format!("peer_{name}"))?, common.clone()),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown server {other:?} (known: cport-uring, cport-epoll, cport-uring-own, cport-epoll-own, port-uring, port-epoll, tokio, compio, raw)"),
            ))
        }
    };
    Ok(Contender {
        name: full_name.to_string(),
        program,
        args,
    })
}

/// `P:MS` → (percent, milliseconds).
fn parse_skew(s: &str) -> io::Result<(f64, f64)> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--skew {s:?}: expected P:MS, e.g. 1:2 (1% of messages spin 2 ms)"),
        )
    };
    let (p, ms) = s.split_once(':').ok_or_else(bad)?;
    let p: f64 = p.trim().trim_end_matches('%').parse().map_err(|_| bad())?;
    let ms: f64 = ms
        .trim()
        .trim_end_matches("ms")
        .parse()
        .map_err(|_| bad())?;
    if !(0.0..=100.0).contains(&p) || !(0.0..=10_000.0).contains(&ms) {
        return Err(bad());
    }
    Ok((p, ms))
}

/// One server's figures over the rounds (medians and ranges are taken over these), its
/// latencies merged over every round's messages, and its faults summed.
#[derive(Default)]
struct ServerRounds {
    rates: Vec<f64>,
    cpu_pct: Vec<f64>,
    cpu_us_per_msg: Vec<f64>,
    cs_per_msg: Vec<f64>,
    cs_per_s: Vec<f64>,
    hist: Option<Histogram<u64>>,
    fast: Option<Histogram<u64>>,
    broken: u64,
    corrupt: u64,
    connect_errors: u64,
    unfinished: u64,
    max_send_lag: Duration,
}

fn merge(into: &mut Option<Histogram<u64>>, h: &Histogram<u64>) {
    match into {
        Some(all) => all.add(h).expect("same bounds"),
        None => *into = Some(h.clone()),
    }
}

/// What one run of one server measured: the load client's report and the server's CPU and
/// context switches, scaled to the measured part.
struct Measured {
    r: load::Report,
    startup: String,
    cpu_pct: f64,
    cpu_us_per_msg: f64,
    cs_per_msg: f64,
    cs_per_s: f64,
    client_cpu_pct: f64,
}

/// Runs `cport bench echo`: the servers round by round, then the table (and the JSON file).
pub fn run(a: EchoArgs) -> io::Result<()> {
    crate::util::raise_fd_limit();
    let skew = a.skew.as_deref().map(parse_skew).transpose()?;
    check_modes(&a, skew)?;
    let contenders = contenders_of(&a, skew)?;
    print_settings(&a, skew);
    let mut tallies: Vec<ServerRounds> =
        contenders.iter().map(|_| ServerRounds::default()).collect();
    let mut rounds_out: Vec<RoundResult> = Vec::new();
    for round in 1..=a.rounds {
        for (c, t) in contenders.iter().zip(&mut tallies) {
            let m = measure(&a, c, skew)?;
            t.add(&m);
            print_round_line(&a, skew, round, c, &m);
            rounds_out.push(round_result(&a, round, c, m));
        }
    }
    // Ratios against tokio when it ran, else against the first server.
    let ref_idx = contenders
        .iter()
        .position(|c| c.name == "tokio")
        .unwrap_or(0);
    let summary = print_table(&a, skew, &contenders, &tallies, ref_idx);
    let ref_name = &contenders[ref_idx].name;
    print_notes(&a, skew, &tallies, ref_name);
    if let Some(path) = &a.json {
        write_json(path, &a, ref_name, rounds_out, summary)?;
        println!("(wrote {})", path.display());
    }
    Ok(())
}

/// The options that do not go together.
fn check_modes(a: &EchoArgs, skew: Option<(f64, f64)>) -> io::Result<()> {
    if skew.is_some() && a.depth != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--skew needs --depth 1 (a slow message is recognised by starting a receive)",
        ));
    }
    if a.rate.is_some() && a.depth != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--rate is open loop: --depth does not apply",
        ));
    }
    Ok(())
}

/// The servers `--servers` names (under `--skew`, without the port-only ones: they have no
/// spin).
fn contenders_of(a: &EchoArgs, skew: Option<(f64, f64)>) -> io::Result<Vec<Contender>> {
    let mut contenders = Vec::new();
    for s in a
        .servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if skew.is_some() && s.starts_with("port-") {
            println!("(--skew: {s} left out: the port-only example has no spin)");
            continue;
        }
        contenders.push(contender(s, a.threads, skew.map(|(_, ms)| ms))?);
    }
    if contenders.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no servers to run",
        ));
    }
    Ok(contenders)
}

/// The first line: what is run.
fn print_settings(a: &EchoArgs, skew: Option<(f64, f64)>) {
    let mode = match (a.rate, skew) {
        (Some(r), _) => format!("open loop {r:.0} msgs/s in total"),
        (None, _) => format!("closed loop, depth {}", a.depth),
    };
    let skew_text = skew.map_or(String::new(), |(p, ms)| {
        format!(", skew {p}% of messages spin {ms} ms")
    });
    println!(
        "bench echo: {} connections x {} B, {mode}{skew_text}, {} s measured (+{} s warm-up) per server per round, {} rounds, server threads {}, client threads {}",
        a.conns, a.size, a.duration_s, a.warmup_s, a.rounds, a.threads, a.client_threads
    );
}

/// Starts `c`, runs the load against it, stops it.
fn measure(a: &EchoArgs, c: &Contender, skew: Option<(f64, f64)>) -> io::Result<Measured> {
    let server = ServerProc::spawn(&c.program, &c.args, &[])?;
    let cpu0 = server.cpu_time();
    let cs0 = server.ctx_switches();
    let load = Load {
        addr: server.addr,
        conns: a.conns,
        size: a.size,
        depth: a.depth,
        duration: Duration::from_secs_f64(a.duration_s),
        warmup: Duration::from_secs_f64(a.warmup_s),
        threads: a.client_threads,
        backend: None,
        rate: a.rate,
        slow_pct: skew.map_or(0.0, |(p, _)| p),
    };
    let r = load::run(&load)?;
    // The server's CPU and context switches over warm-up + measurement (+ the
    // drain), scaled to the measured part.
    let cpu = server.cpu_time().saturating_sub(cpu0);
    let cs = server.ctx_switches().saturating_sub(cs0);
    let startup = server.startup.clone();
    server.stop()?;
    let wall = a.duration_s + a.warmup_s;
    let cpu_s = cpu.as_secs_f64() * a.duration_s / wall;
    let cpu_pct = 100.0 * cpu_s / a.duration_s;
    let cpu_us_per_msg = 1e6 * cpu_s / (r.msgs.max(1) as f64);
    let cs_measured = cs as f64 * a.duration_s / wall;
    let cs_per_msg = cs_measured / (r.msgs.max(1) as f64);
    let cs_per_s = cs_measured / a.duration_s;
    Ok(Measured {
        client_cpu_pct: 100.0 * r.client_cpu.as_secs_f64() / wall,
        r,
        startup,
        cpu_pct,
        cpu_us_per_msg,
        cs_per_msg,
        cs_per_s,
    })
}

impl ServerRounds {
    /// Adds one round's figures.
    fn add(&mut self, m: &Measured) {
        let (t, r) = (self, &m.r);
        t.rates.push(r.rate());
        t.cpu_pct.push(m.cpu_pct);
        t.cpu_us_per_msg.push(m.cpu_us_per_msg);
        t.cs_per_msg.push(m.cs_per_msg);
        t.cs_per_s.push(m.cs_per_s);
        t.broken += r.broken;
        t.corrupt += r.corrupt;
        t.connect_errors += r.connect_errors;
        t.unfinished += r.unfinished;
        t.max_send_lag = t.max_send_lag.max(r.max_send_lag);
        merge(&mut t.hist, &r.latency_us);
        merge(&mut t.fast, &r.latency_fast_us);
    }
}

/// The value at quantile `p` of a latency histogram.
fn q(h: &Histogram<u64>, p: f64) -> u64 {
    h.value_at_quantile(p)
}

/// One round's line for one server.
fn print_round_line(
    a: &EchoArgs,
    skew: Option<(f64, f64)>,
    round: usize,
    c: &Contender,
    m: &Measured,
) {
    let r = &m.r;
    let (cpu_pct, cpu_us_per_msg, cs_per_msg) = (m.cpu_pct, m.cpu_us_per_msg, m.cs_per_msg);
    println!(
        "  round {round}: {:<12} {:>9.0} msgs/s  p50 {:>6} µs  p99 {:>6} µs{}  server CPU {:>5.1}% ({:.1} µs/msg, {:.3} cs/msg){}{}",
        c.name,
        r.rate(),
        q(&r.latency_us, 0.5),
        q(&r.latency_us, 0.99),
        if skew.is_some() {
            format!("  p99 others {:>6} µs", q(&r.latency_fast_us, 0.99))
        } else {
            String::new()
        },
        cpu_pct,
        cpu_us_per_msg,
        cs_per_msg,
        if a.rate.is_some() {
            format!("  client lag ≤ {} µs", r.max_send_lag.as_micros())
        } else {
            String::new()
        },
        if r.broken + r.corrupt + r.connect_errors + r.unfinished > 0 {
            format!(
                "  ! broken {} corrupt {} connect errors {} unfinished {}",
                r.broken, r.corrupt, r.connect_errors, r.unfinished
            )
        } else {
            String::new()
        }
    );
}

/// One round's figures for one server, as the JSON file has them.
fn round_result(a: &EchoArgs, round: usize, c: &Contender, m: Measured) -> RoundResult {
    let r = &m.r;
    RoundResult {
        round,
        server: c.name.clone(),
        startup: m.startup.clone(),
        msgs_per_s: r.rate(),
        mb_per_s: r.rate() * a.size as f64 / 1e6,
        p50_us: q(&r.latency_us, 0.5),
        p99_us: q(&r.latency_us, 0.99),
        p999_us: q(&r.latency_us, 0.999),
        p99_fast_us: q(&r.latency_fast_us, 0.99),
        server_cpu_pct: m.cpu_pct,
        server_cpu_us_per_msg: m.cpu_us_per_msg,
        server_cs_per_msg: m.cs_per_msg,
        server_cs_per_s: m.cs_per_s,
        client_cpu_pct: m.client_cpu_pct,
        slow_msgs: r.slow_msgs,
        unfinished: r.unfinished,
        max_send_lag_us: r.max_send_lag.as_micros() as u64,
        broken: r.broken,
        corrupt: r.corrupt,
        connect_errors: r.connect_errors,
    }
}

/// The table of medians over the rounds, ratios against the server at `ref_idx`; the same
/// figures for the JSON file.
fn print_table(
    a: &EchoArgs,
    skew: Option<(f64, f64)>,
    contenders: &[Contender],
    tallies: &[ServerRounds],
    ref_idx: usize,
) -> Vec<ServerSummary> {
    let reference = median(&tallies[ref_idx].rates).max(1e-9);
    let ref_cpu = median(&tallies[ref_idx].cpu_us_per_msg).max(1e-9);
    let open_loop = a.rate.is_some();
    println!();
    println!(
        "{:<12} {:>10} {:>19} {:>8} {:>8} {:>8} {:>8}{} {:>7} {:>10} {:>7} {:>7}",
        "server",
        "msgs/s",
        "min–max",
        "MB/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        if skew.is_some() { " p99 others" } else { "" },
        "CPU %",
        "CPU µs/msg",
        "cs/msg",
        if open_loop { "CPU ×" } else { "ratio" }
    );
    let mut summary = Vec::new();
    for (c, t) in contenders.iter().zip(tallies) {
        let m = median(&t.rates);
        let (lo, hi) = range(&t.rates);
        let h = t.hist.as_ref().expect("at least one round");
        let f = t.fast.as_ref().expect("at least one round");
        let cpu_msg = median(&t.cpu_us_per_msg);
        let ratio = if open_loop {
            cpu_msg / ref_cpu
        } else {
            m / reference
        };
        println!(
            "{:<12} {:>10.0} {:>9.0}–{:<9.0} {:>8.1} {:>8} {:>8} {:>8}{} {:>7.1} {:>10.1} {:>7.3} {:>7.2}",
            c.name,
            m,
            lo,
            hi,
            m * a.size as f64 / 1e6,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            if skew.is_some() {
                format!(" {:>10}", f.value_at_quantile(0.99))
            } else {
                String::new()
            },
            median(&t.cpu_pct),
            cpu_msg,
            median(&t.cs_per_msg),
            ratio
        );
        if t.broken + t.corrupt + t.connect_errors + t.unfinished > 0 {
            println!(
                "  ! {}: {} broken connections, {} corrupt echoes, {} failed connects, {} messages not back",
                c.name, t.broken, t.corrupt, t.connect_errors, t.unfinished
            );
        }
        summary.push(ServerSummary {
            server: c.name.clone(),
            msgs_per_s: m,
            msgs_per_s_min: lo,
            msgs_per_s_max: hi,
            mb_per_s: m * a.size as f64 / 1e6,
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p99_fast_us: f.value_at_quantile(0.99),
            server_cpu_pct: median(&t.cpu_pct),
            server_cpu_us_per_msg: cpu_msg,
            server_cs_per_msg: median(&t.cs_per_msg),
            server_cs_per_s: median(&t.cs_per_s),
            ratio,
            broken: t.broken,
            corrupt: t.corrupt,
            connect_errors: t.connect_errors,
            unfinished: t.unfinished,
        });
    }
    summary
}

/// What the table's columns mean.
fn print_notes(a: &EchoArgs, skew: Option<(f64, f64)>, tallies: &[ServerRounds], ref_name: &str) {
    let open_loop = a.rate.is_some();
    if open_loop {
        println!(
            "(CPU ×: median server CPU µs per message over {ref_name}'s; latency from the scheduled send time; the client lagged its schedule by up to {} µs)",
            tallies.iter().map(|t| t.max_send_lag).max().unwrap_or_default().as_micros()
        );
    } else {
        println!("(ratio: median msgs/s over {ref_name}'s)");
    }
    println!("(cs/msg: median server context switches, voluntary + involuntary over its threads, per message)");
    if skew.is_some() {
        println!("(p99 others: p99 of the messages not marked slow; percentiles over all rounds' messages)");
    }
}

/// The `--json` file: the settings, every round, the medians.
fn write_json(
    path: &std::path::Path,
    a: &EchoArgs,
    ref_name: &str,
    rounds: Vec<RoundResult>,
    summary: Vec<ServerSummary>,
) -> io::Result<()> {
    let config = results::object([
        ("conns", Value::from(a.conns)),
        ("size", Value::from(a.size)),
        ("depth", Value::from(a.depth)),
        ("duration_s", Value::from(a.duration_s)),
        ("warmup_s", Value::from(a.warmup_s)),
        ("threads", Value::from(a.threads)),
        ("client_threads", Value::from(a.client_threads)),
        ("rounds", Value::from(a.rounds)),
        ("servers", Value::from(a.servers.clone())),
        ("rate", a.rate.map_or(Value::Null, Value::from)),
        ("skew", a.skew.clone().map_or(Value::Null, Value::from)),
    ]);
    results::write_json(
        path,
        &EchoBench {
            config,
            reference: ref_name.to_string(),
            rounds,
            summary,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_skew() {
        assert_eq!(parse_skew("1:2").unwrap(), (1.0, 2.0));
        assert_eq!(parse_skew("0.5%:10ms").unwrap(), (0.5, 10.0));
        assert!(parse_skew("1").is_err());
        assert!(parse_skew("200:1").is_err());
    }
}
