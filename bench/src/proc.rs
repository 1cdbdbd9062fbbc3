//! Servers under test run as their own processes: started, read for their startup line,
//! measured (CPU time from `/proc/PID/stat`, context switches from `/proc/PID/task/*/status`),
//! and stopped with SIGTERM. [`ServerProc`] is the one spawner of the workspace (the
//! benchmarks, `cport soak`, the tests) and [`parse_listening`] the one reader of the startup line.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

/// Resident memory of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
#[cfg(target_os = "linux")]
pub fn rss(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/PID/status"))
}

/// Resident memory of process `pid`: not measured on this system.
#[cfg(not(target_os = "linux"))]
pub fn rss(_pid: u32) -> io::Result<u64> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "resident memory is read from /proc (Linux)",
    ))
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

/// Process `pid` and every process below it (children, their children…), from the parent
/// pids in `/proc/*/stat`: a server made of several processes (`cport cluster`: NATS, zones,
/// gateways) measured as one.
#[cfg(target_os = "linux")]
pub fn tree(pid: u32) -> io::Result<Vec<u32>> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(p) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue; // exited meanwhile
        };
        // After the ')' of the command name: state, then the parent pid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|f| f.parse::<u32>().ok());
        if let Some(pp) = ppid {
            parent_of.push((p, pp));
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            parent_of
                .iter()
                .filter(|&&(_, pp)| pp == parent)
                .map(|&(p, _)| p),
        );
        i += 1;
    }
    Ok(out)
}

/// [`cpu_time`] and [`ctx_switches`] summed over [`tree`]`(pid)` (a process that exits
/// between the listing and the read counts as nothing).
#[cfg(target_os = "linux")]
pub fn tree_usage(pid: u32) -> io::Result<(Duration, u64)> {
    let mut cpu = cpu_time(pid)?;
    let mut cs = ctx_switches(pid)?;
    for p in tree(pid)?.into_iter().skip(1) {
        if let (Ok(c), Ok(s)) = (cpu_time(p), ctx_switches(p)) {
            cpu += c;
            cs += s;
        }
    }
    Ok((cpu, cs))
}

/// Not on Windows.
#[cfg(not(target_os = "linux"))]
pub fn tree_usage(_pid: u32) -> io::Result<(Duration, u64)> {
    Err(no_proc())
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

/// How [`ServerProc::start`] waits for a server and where its standard output goes.
#[derive(Debug, Clone)]
pub struct Startup {
    /// How long the server may take to print its startup line.
    pub within: Duration,
    /// Where the lines after the startup line go: this file (created), or, when `None`, kept
    /// in memory (read them with [`ServerProc::stdout_lines`]).
    pub rest_to: Option<PathBuf>,
    /// The startup line must be the first line of its standard output (the workspace's own
    /// servers print it first; a test or soak run holds them to it). When `false`, lines
    /// before it are skipped (a peer server may print something first).
    pub first_line: bool,
}

impl Default for Startup {
    fn default() -> Startup {
        Startup {
            within: Duration::from_secs(20),
            rest_to: None,
            first_line: false,
        }
    }
}

impl Startup {
    /// The default, with the startup line required to come first.
    pub fn first_line() -> Startup {
        Startup {
            first_line: true,
            ..Startup::default()
        }
    }
}

/// How a server ended under [`ServerProc::terminate`].
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    /// It had already exited by itself before it was asked to (a crash, during a run).
    Exited(ExitStatus),
    /// SIGTERM ended it within the grace period, after this long.
    Stopped(ExitStatus, Duration),
    /// It was still running after the grace period: killed (SIGKILL).
    Killed(ExitStatus),
}

impl Ending {
    /// The exit status, however it ended.
    pub fn status(&self) -> ExitStatus {
        match *self {
            Ending::Exited(s) | Ending::Stopped(s, _) | Ending::Killed(s) => s,
        }
    }
}

/// A server process under test: the one way the workspace starts a server as a child
/// process and waits for it to be ready (its `listening on ADDR (…)` line on stdout). Killed
/// and reaped when dropped; [`ServerProc::stop`] and [`ServerProc::terminate`] end it with
/// SIGTERM first.
#[derive(Debug)]
pub struct ServerProc {
    child: Child,
    /// The address from its startup line.
    pub addr: SocketAddr,
    /// Its startup line (`listening on ADDR (…)`).
    pub startup: String,
    /// The lines of its stdout after the startup line (when not written to a file); keeps the
    /// pipe read so the server never blocks or gets SIGPIPE for printing.
    stdout: mpsc::Receiver<String>,
}

impl ServerProc {
    /// Starts `program args…` with `env` added, its stderr inherited, and waits (up to 20 s)
    /// for a line `listening on ADDR …`.
    pub fn spawn(
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> io::Result<ServerProc> {
        let mut cmd = Command::new(program);
        cmd.args(args).stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        ServerProc::start(cmd, Startup::default())
    }

    /// Starts `cmd` (its program, arguments, environment, stderr and anything else as the
    /// caller set them; stdin is null and stdout is read here) and waits for its startup line
    /// as `startup` says. Lines before the startup line are skipped. The process is killed
    /// if the line does not come in time.
    pub fn start(mut cmd: Command, startup: Startup) -> io::Result<ServerProc> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{program}: {e}")))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let rest_to = match &startup.rest_to {
            Some(path) => match File::create(path) {
                Ok(f) => Some(f),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
                }
            },
            None => None,
        };
        let lines = read_stdout(stdout, rest_to);
        let give_up = Instant::now() + startup.within;
        let mut before = Vec::new();
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = parse_listening(&line) {
                        return Ok(ServerProc {
                            child,
                            addr,
                            startup: line,
                            stdout: lines,
                        });
                    }
                    if startup.first_line {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(io::Error::other(format!(
                            "{program}: the first line it printed is {line:?}, not 'listening on ADDR (…)'"
                        )));
                    }
                    before.push(line);
                }
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait();
                    let why = match e {
                        mpsc::RecvTimeoutError::Timeout => {
                            format!("within {:?}", startup.within)
                        }
                        mpsc::RecvTimeoutError::Disconnected => match status {
                            Ok(status) => format!("before it exited ({status})"),
                            Err(_) => "before it closed its stdout".to_string(),
                        },
                    };
                    let printed = if before.is_empty() {
                        String::new()
                    } else {
                        format!("; it printed {before:?}")
                    };
                    return Err(io::Error::other(format!(
                        "{program} printed no 'listening on ADDR' line {why}{printed}"
                    )));
                }
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The text of the startup line after the address: `backend: uring, threads: 2, …`.
    pub fn banner(&self) -> &str {
        self.startup
            .strip_prefix("listening on ")
            .and_then(|r| r.split_once(' '))
            .map_or("", |(_, rest)| {
                rest.trim().trim_start_matches('(').trim_end_matches(')')
            })
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

    /// Its exit status if it has exited (it is reaped then), without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// The lines it printed on stdout after its startup line (when [`Startup::rest_to`] was
    /// `None`), as they come.
    pub fn stdout_lines(&self) -> &mpsc::Receiver<String> {
        &self.stdout
    }

    /// Its stderr, line by line, read on a thread. Panics unless the command was started with
    /// `stderr(Stdio::piped())`, or when called twice.
    pub fn stderr_lines(&mut self) -> mpsc::Receiver<String> {
        stderr_lines(&mut self.child)
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub fn stop(mut self) -> io::Result<ExitStatus> {
        self.terminate(Duration::from_secs(10))
            .map(|ending| ending.status())
    }

    /// Ends it: nothing to do if it has already exited; else SIGTERM, and SIGKILL if it has
    /// not exited within `grace`. Says which.
    pub fn terminate(&mut self, grace: Duration) -> io::Result<Ending> {
        terminate(&mut self.child, grace)
    }
}

/// `child`'s stderr, line by line, read on a thread. Panics unless it was started with
/// `stderr(Stdio::piped())`, or when called twice.
pub fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr piped, taken once");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Ends `child`: nothing to do if it has already exited; else SIGTERM (so that it can stop
/// what it started, as `cport stress --spawn` stops its server), and SIGKILL if it has not
/// exited within `grace`. Says which. [`ServerProc`] ends its server with it; a test that
/// starts another kind of process (one that prints no startup line) can too.
pub fn terminate(child: &mut Child, grace: Duration) -> io::Result<Ending> {
    if let Some(status) = child.try_wait()? {
        return Ok(Ending::Exited(status));
    }
    let asked = Instant::now();
    // The child is not reaped yet, so its pid still names it.
    #[cfg(unix)]
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    // No SIGTERM on Windows: the wait below ends in a kill.
    #[cfg(windows)]
    let _ = child.kill();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Ending::Stopped(status, asked.elapsed()));
        }
        if asked.elapsed() >= grace {
            child.kill()?;
            return child.wait().map(Ending::Killed);
        }
        std::thread::sleep(Duration::from_millis(5));
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

/// Reads the child's stdout on a thread (so a pipe that fills never blocks it): every line up
/// to and including the startup line goes to the returned channel; the lines after it go to
/// `rest_to` when given, else to the channel too.
fn read_stdout(stdout: ChildStdout, mut rest_to: Option<File>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut started = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            match &mut rest_to {
                Some(file) if started => {
                    let _ = writeln!(file, "{line}");
                }
                _ => {
                    started = started || parse_listening(&line).is_some();
                    // The receiver may be gone (a server dropped): keep draining the pipe.
                    let _ = tx.send(line);
                }
            }
        }
    });
    rx
}

/// `listening on 127.0.0.1:7000 (backend: …)` → the address: the one reader of the startup
/// line every server of the workspace prints.
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

    #[cfg(unix)]
    #[test]
    fn starts_a_server_reads_its_banner_and_keeps_the_rest_of_its_output() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo warming up; echo 'listening on 127.0.0.1:9 (backend: none, threads: 1)'; \
             echo later; exec sleep 30",
        ]);
        let mut p = ServerProc::start(cmd, Startup::default()).unwrap();
        assert_eq!(p.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!(p.banner(), "backend: none, threads: 1");
        let later = p.stdout_lines().recv_timeout(Duration::from_secs(10));
        assert_eq!(later.as_deref(), Ok("later"));
        assert!(matches!(
            p.terminate(Duration::from_secs(10)).unwrap(),
            Ending::Stopped(..)
        ));
        assert!(matches!(
            p.terminate(Duration::from_secs(10)).unwrap(),
            Ending::Exited(..)
        ));
    }

    #[cfg(unix)]
    #[test]
    fn a_server_that_exits_without_a_startup_line_is_an_error_at_once() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo oops; exit 3"]);
        let t = Instant::now();
        let e = ServerProc::start(cmd, Startup::default()).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let e = e.to_string();
        assert!(
            e.contains("no 'listening on ADDR' line") && e.contains("oops"),
            "{e}"
        );
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
