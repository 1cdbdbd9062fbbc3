//! Servers under test run as their own processes: started, read for their startup line,
//! measured (CPU time from `/proc/PID/stat`, context switches from `/proc/PID/task/*/status`),
//! and stopped with SIGTERM.

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the process measurements need and Windows does not have (`/proc`).
#[cfg(not(target_os = "linux"))]
fn no_proc() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "measuring another process reads /proc: not on Windows",
    )
}

/// User + system CPU time of process `pid` (all its threads): not on Windows.
#[cfg(not(target_os = "linux"))]
pub fn cpu_time(_pid: u32) -> io::Result<Duration> {
    Err(no_proc())
}

/// Context switches of process `pid`: not on Windows.
#[cfg(not(target_os = "linux"))]
pub fn ctx_switches(_pid: u32) -> io::Result<u64> {
    Err(no_proc())
}

/// User + system CPU time of process `pid` (all its threads), from `/proc/PID/stat`.
#[cfg(target_os = "linux")]
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: fields are counted after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 is index 0, so utime (14) is index 11 and stime (15) index 12.
    let ticks: u64 = fields
        .get(11..13)
        .ok_or_else(|| io::Error::other("short /proc stat"))?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// Context switches, voluntary + involuntary, of process `pid`: the sum over its live
/// threads of `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` in
/// `/proc/PID/task/TID/status`.
///
/// The task directories are summed because `/proc/PID/status` counts only the main thread.
/// Threads that have already exited are not counted (the kernel keeps their switches only for
/// `getrusage` of the process itself), so a thread that ends inside a measured window takes
/// its switches with it. The servers under test run a fixed set of worker threads for their
/// whole life, so this loses little. (io_uring's `iou-wrk` helper threads do show up as tasks but may come
/// and go: what they did before exiting is lost.) A thread that exits while being read is
/// skipped.
#[cfg(target_os = "linux")]
pub fn ctx_switches(pid: u32) -> io::Result<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let status = match std::fs::read_to_string(entry.path().join("status")) {
            Ok(s) => s,
            // Exited between the listing and the read.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        total += parse_ctx_switches(&status);
    }
    Ok(total)
}

/// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` of one `status` file's text.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_ctx_switches(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            match key {
                "voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches" => {
                    value.trim().parse::<u64>().ok()
                }
                _ => None,
            }
        })
        .sum()
}

/// A server process under test.
#[derive(Debug)]
pub struct ServerProc {
    child: Child,
    /// The address from its startup line.
    pub addr: SocketAddr,
    /// Its startup line (`listening on ADDR (…)`).
    pub startup: String,
    /// Keeps the pipe open so the server never gets SIGPIPE for printing.
    _stdout: Option<mpsc::Receiver<String>>,
}

impl ServerProc {
    /// Starts `program args…` and waits (up to 20 s) for a line `listening on ADDR …`.
    pub fn spawn(
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> io::Result<ServerProc> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", program.display())))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = forward_lines(stdout);
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = parse_listening(&line) {
                        return Ok(ServerProc {
                            child,
                            addr,
                            startup: line,
                            _stdout: Some(lines),
                        });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(io::Error::other(format!(
                        "{} printed no 'listening on ADDR' line",
                        program.display()
                    )));
                }
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time used so far.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid()).unwrap_or_default()
    }

    /// Context switches (voluntary + involuntary) of its live threads so far; 0 if they
    /// cannot be read. See [`ctx_switches`].
    pub fn ctx_switches(&self) -> u64 {
        ctx_switches(self.pid()).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub fn stop(mut self) -> io::Result<ExitStatus> {
        // The child is not reaped yet, so its pid still names it.
        #[cfg(unix)]
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        // No SIGTERM on Windows: the wait below ends in a kill.
        #[cfg(windows)]
        let _ = self.child.kill();
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= give_up {
                self.child.kill()?;
                return self.child.wait();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Lines of the child's stdout, read on a thread (so a pipe that fills never blocks it).
fn forward_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    rx
}

/// `listening on 127.0.0.1:7000 (backend: …)` → the address.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("listening on ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_address_of_a_startup_line() {
        assert_eq!(
            parse_listening("listening on 127.0.0.1:4000 (backend: uring, threads: 2)"),
            Some("127.0.0.1:4000".parse().unwrap())
        );
        assert_eq!(parse_listening("hello"), None);
    }

    #[test]
    fn cpu_time_of_this_process_grows_with_work() {
        let pid = std::process::id();
        let before = cpu_time(pid).unwrap();
        let t0 = Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_time(pid).unwrap() > before);
    }

    #[test]
    fn parses_the_switch_lines_of_a_status_file() {
        let status =
            "Name:\tx\nThreads:\t1\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_ctx_switches(status), 15);
        assert_eq!(parse_ctx_switches("Name:\tx\n"), 0);
    }

    #[test]
    fn ctx_switches_of_a_process_grow_when_it_sleeps() {
        use std::io::{BufRead, BufReader, Write};
        use std::process::{Command, Stdio};
        // A process of its own: this test binary's other tests start and end threads, whose
        // switches would come and go from a count of this process. The shell waits for its
        // go line, then blocks 20 times waiting for a `sleep`, says so, and stays alive
        // (blocked on stdin) until measured.
        let mut child = Command::new("sh")
            .args([
                "-c",
                "read go; for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; \
                 do sleep 0.001; done; echo slept; read done",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let before = ctx_switches(child.id()).unwrap();
        writeln!(stdin, "go").unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "slept");
        let after = ctx_switches(child.id()).unwrap();
        drop(stdin);
        child.wait().unwrap();
        // Each wait for a `sleep` blocks once: at least 20 voluntary switches.
        assert!(after >= before + 20, "before {before}, after {after}");
    }
}
