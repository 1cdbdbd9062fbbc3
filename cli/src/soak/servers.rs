//! The server processes of a soak (`cport echo` and `cport mmo`, started by the one spawner,
//! `cport_bench::proc::ServerProc`) and what is read of them: their stats files, open
//! descriptors and RSS.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use cport_bench::proc::{Ending, ServerProc, Startup};
/// A server of the soak.
pub(crate) struct Srv {
    pub(crate) name: &'static str,
    process: ServerProc,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    /// The first field of its startup line after the address (`backend: uring`).
    pub(crate) banner: String,
    pub(crate) stats_path: PathBuf,
}

impl Srv {
    /// Starts `bin name args… --stats-file DIR/NAME.stats` with `RUST_LOG=warn`; its stderr
    /// goes to `DIR/NAME.stderr`, its stdout after the startup line to `DIR/NAME.stdout`.
    pub(crate) fn spawn(
        bin: &Path,
        name: &'static str,
        args: &[String],
        dir: &Path,
    ) -> io::Result<Srv> {
        let stats_path = dir.join(format!("{name}.stats"));
        let _ = fs::remove_file(&stats_path);
        let stderr_path = dir.join(format!("{name}.stderr"));
        let mut cmd = Command::new(bin);
        cmd.arg(name)
            .args(args)
            .arg("--stats-file")
            .arg(&stats_path)
            .env("RUST_LOG", "warn")
            .stderr(File::create(&stderr_path)?);
        let startup = Startup {
            within: Duration::from_secs(60),
            rest_to: Some(dir.join(format!("{name}.stdout"))),
            first_line: true,
        };
        let process = ServerProc::start(cmd, startup).map_err(|e| {
            io::Error::other(format!(
                "cport {name} did not start ({e}); see {}",
                stderr_path.display()
            ))
        })?;
        let banner = process.banner().split(',').next().unwrap_or("").to_string();
        Ok(Srv {
            name,
            pid: process.pid(),
            addr: process.addr,
            banner,
            stats_path,
            process,
        })
    }
}

/// The servers; killed if the soak itself fails before stopping them (each [`ServerProc`] is
/// killed and reaped when dropped).
pub(crate) struct Servers(pub(crate) Vec<Srv>);

/// How a server ended.
#[derive(Debug, Clone)]
pub(crate) enum Exit {
    /// Exited by itself during the run (a crash).
    Died(ExitStatus),
    /// Stopped by SIGTERM and exited with this status in time.
    Stopped(ExitStatus, Duration),
    /// Did not exit within 15 s of SIGTERM (killed).
    Hung,
}

impl Servers {
    /// SIGTERM to each, and how each ended (15 s each to exit).
    pub(crate) fn stop(mut self) -> Vec<(&'static str, Exit)> {
        let mut out = Vec::new();
        for s in &mut self.0 {
            let exit = match s.process.terminate(Duration::from_secs(15)) {
                Ok(Ending::Exited(st)) => Exit::Died(st),
                Ok(Ending::Stopped(st, took)) => Exit::Stopped(st, took),
                Ok(Ending::Killed(_)) | Err(_) => Exit::Hung,
            };
            out.push((s.name, exit));
        }
        out
    }
}

pub(crate) fn read_stats(path: &Path) -> Option<HashMap<String, u64>> {
    let text = fs::read_to_string(path).ok()?;
    let kv: HashMap<String, u64> = text
        .split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    (!kv.is_empty()).then_some(kv)
}

/// Polls a stats file until `done` holds or `limit` passes; returns the last counters read.
pub(crate) fn wait_stats(
    path: &Path,
    limit: Duration,
    done: impl Fn(&HashMap<String, u64>) -> bool,
) -> HashMap<String, u64> {
    let t = Instant::now();
    loop {
        let kv = read_stats(path).unwrap_or_default();
        if (!kv.is_empty() && done(&kv)) || t.elapsed() >= limit {
            return kv;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn fd_count(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// VmRSS in KiB, and whether the process is still running (not gone, not a zombie).
pub(crate) fn rss_kib(pid: u32) -> (u64, bool) {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (0, false);
    };
    let mut rss = 0;
    let mut alive = true;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            rss = v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("State:") {
            alive = !v.trim_start().starts_with(['Z', 'X']);
        }
    }
    (rss, alive)
}

/// The last `n` lines of a file.
pub(crate) fn tail_of(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
