//! One run of the course stress client as its own process (`cport stress … --json`), for the
//! benchmarks that drive a server with it (`bench mmo`, `bench cluster`): its report, and when
//! its clock started (the line it prints right before), read from its stderr.

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cport_mmo_client::Report;

/// What to run.
pub(crate) struct StressRun<'a> {
    pub addr: SocketAddr,
    pub clients: usize,
    pub max_users: usize,
    pub duration_s: u64,
    pub ramp_interval_ms: u64,
    pub delay_limit_ms: u64,
    pub client_threads: usize,
    /// Where its report is written (`stress.json` there).
    pub dir: &'a Path,
}

/// Runs it to the end: its report, when its clock started, and how it exited. Its warnings
/// and errors are echoed on stderr.
pub(crate) fn run(r: &StressRun<'_>) -> io::Result<(Report, Instant, ExitStatus)> {
    let exe = std::env::current_exe()?;
    let json_path = r.dir.join("stress.json");
    let _ = std::fs::remove_file(&json_path);
    let mut child = Command::new(&exe)
        .args(["stress", "--addr", &r.addr.to_string()])
        .args(["--max-clients", &r.clients.to_string()])
        .args(["--max-users", &r.max_users.to_string()])
        .args(["--duration-s", &r.duration_s.to_string()])
        .args(["--ramp-interval-ms", &r.ramp_interval_ms.to_string()])
        .args(["--delay-limit-ms", &r.delay_limit_ms.to_string()])
        .args(["--client-threads", &r.client_threads.to_string()])
        .args(["--header", "u8", "--json"])
        .arg(&json_path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // `stress: ADDR, up to N clients, …` comes right before its clock starts.
            if !sent && line.starts_with("stress: ") && line.contains(", up to ") {
                let _ = tx.send(Instant::now());
                sent = true;
            } else if line.contains("WARN") || line.contains("ERROR") || line.contains("error") {
                eprintln!("    (stress) {line}");
            }
        }
    });
    let started = rx.recv_timeout(Duration::from_secs(30)).ok();
    let status = child.wait()?;
    let _ = reader.join();
    let Some(started) = started else {
        return Err(io::Error::other("the stress client never started"));
    };
    let text = std::fs::read_to_string(&json_path).map_err(|e| {
        io::Error::other(format!(
            "the stress client ({status}) wrote no report {}: {e}",
            json_path.display()
        ))
    })?;
    let report: Report = serde_json::from_str(&text).map_err(io::Error::other)?;
    Ok((report, started, status))
}
