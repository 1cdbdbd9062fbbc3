//! `cport bench idle`: memory per idle connection. Each server (its own process) gets N
//! connections; each sends one small message, reads its echo, and then waits. The figure is
//! the server's resident memory growth (`VmRSS` after minus before) divided by N, as the
//! median of the rounds; every server runs once per round, in turn.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use cport_bench::proc::{rss, ServerProc};
use cport_bench::stats::{median, range};

use super::echo::contender;

/// Options of `cport bench idle`.
#[derive(clap::Args, Debug)]
pub struct IdleArgs {
    /// Connections held open (this process and each server need as many descriptors: the
    /// soft limit is raised to the hard one, and the run stops with a clear error if that is
    /// not enough).
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Bytes each connection sends once (echoed back before it goes idle).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Server worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Rounds; each runs every server once, in turn.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds the connections stay idle before the second reading.
    #[arg(long, default_value_t = 1.0)]
    pub settle_s: f64,
    /// Servers, comma-separated (names as for `cport bench echo`; `cport-uring-own` and
    /// `cport-epoll-own` are the server layer with a receive buffer per session).
    #[arg(
        long,
        default_value = "cport-uring,cport-epoll,cport-uring-own,cport-epoll-own,tokio,compio"
    )]
    pub servers: String,
}

pub fn run(a: IdleArgs) -> io::Result<()> {
    let limit = crate::util::raise_fd_limit();
    // This process holds every client socket, plus a few of its own.
    if (limit as usize) < a.conns + 64 {
        return Err(io::Error::other(format!(
            "{} connections need {} open files in this process; the limit is {limit} \
             (raise the hard limit, or ask for fewer with --conns)",
            a.conns,
            a.conns + 64
        )));
    }
    let names: Vec<&str> = a.servers.split(',').map(str::trim).collect();
    let mut per_conn: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 1..=a.rounds {
        for (i, name) in names.iter().enumerate() {
            let bytes = one(name, &a)?;
            println!(
                "round {round}/{}: {name:<16} {bytes:>8.0} B per idle connection",
                a.rounds
            );
            per_conn[i].push(bytes);
        }
    }
    println!();
    println!(
        "memory per idle connection ({} connections, {} B each once, {} server threads, {} rounds; RSS growth / connections)",
        a.conns, a.size, a.threads, a.rounds
    );
    println!("{:<16} {:>10} {:>20}", "server", "median B", "range B");
    for (i, name) in names.iter().enumerate() {
        let (lo, hi) = range(&per_conn[i]);
        println!(
            "{name:<16} {:>10.0} {:>20}",
            median(&per_conn[i]),
            format!("{lo:.0}–{hi:.0}")
        );
    }
    Ok(())
}

/// One server: its RSS growth per connection.
fn one(name: &str, a: &IdleArgs) -> io::Result<f64> {
    let mut c = contender(name, a.threads, None)?;
    if name.starts_with("cport-") {
        // The default (10,000) would refuse the last connections.
        c.args
            .extend(["--max-sessions".to_string(), (a.conns + 16).to_string()]);
    }
    let server = ServerProc::spawn(&c.program, &c.args, &[])?;
    std::thread::sleep(Duration::from_millis(300));
    let before = rss(server.pid())?;
    let conns = open(server.addr, a)?;
    std::thread::sleep(Duration::from_secs_f64(a.settle_s));
    let after = rss(server.pid())?;
    drop(conns);
    server.stop()?;
    Ok(after.saturating_sub(before) as f64 / a.conns as f64)
}

/// Opens `a.conns` connections; each sends `a.size` bytes and reads them back.
fn open(addr: SocketAddr, a: &IdleArgs) -> io::Result<Vec<TcpStream>> {
    let msg = vec![0x5au8; a.size];
    let mut conns = Vec::with_capacity(a.conns);
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..a.conns {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "only {i} of {} connections in 120 s",
                a.conns
            )));
        }
        let mut s = TcpStream::connect(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("connection {i} of {}: {e}", a.conns)))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&msg)?;
        conns.push(s);
        // Read the echoes in batches, so the server has many connections in flight.
        if conns.len() % 256 == 0 || i + 1 == a.conns {
            let from = (conns.len() - 1) / 256 * 256;
            for s in &mut conns[from..] {
                let mut back = vec![0u8; a.size];
                s.read_exact(&mut back)
                    .map_err(|e| io::Error::new(e.kind(), format!("echo of connection: {e}")))?;
            }
        }
    }
    Ok(conns)
}
