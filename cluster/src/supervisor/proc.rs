//! The supervisor's children as OS processes: starting one with its stdout and stderr read
//! on threads (the last lines kept for error messages, optionally echoed with a `[zone 2]`
//! prefix), waiting for its readiness line, asking it to end, and starting `nats-server`.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::plan::{Plan, Role};

/// How many of a child's last stderr lines are kept for its error messages.
pub(super) const TAIL_LINES: usize = 30;

/// One child process and what it said.
#[derive(Debug)]
pub(super) struct Proc {
    pub(super) role: Role,
    pub(super) n: usize,
    pub(super) child: Child,
    pub(super) tail: Arc<Mutex<VecDeque<String>>>,
    /// The last lines it printed on stdout, and the thread that reads them (joined once the
    /// process has exited, so that its last words are in).
    pub(super) out: Arc<Mutex<VecDeque<String>>>,
    pub(super) reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Proc {
    /// A child is never left running behind the supervisor: what still runs is killed.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Proc {
    /// Its last stdout lines, once it has exited (the reader has seen the pipe close).
    pub(super) fn last_words(&mut self) -> Vec<String> {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.iter().cloned().collect()
    }

    pub(super) fn tail(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.is_empty() {
            "(it printed nothing on stderr)".into()
        } else {
            let lines: Vec<&str> = t.iter().map(String::as_str).collect();
            format!("its last stderr lines:\n  {}", lines.join("\n  "))
        }
    }
}

/// Asks a child to end (SIGTERM on Unix; a kill elsewhere, which has no SIGTERM).
pub(super) fn sigterm(child: &Child) {
    #[cfg(unix)]
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    #[cfg(not(unix))]
    {
        let _ = child;
    }
}

/// Puts the child in a process group of its own: Ctrl-C in a terminal signals the whole
/// foreground group, and the children must hear it from the supervisor instead, in order
/// (gateways first), not all at once.
pub(super) fn own_group(cmd: &mut Command) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    #[cfg(not(unix))]
    let _ = cmd;
}

/// Starts `cmd` with stdout read into a channel of lines and stderr kept (and forwarded).
pub(super) fn spawn(
    mut cmd: Command,
    role: Role,
    n: usize,
    echo: bool,
) -> io::Result<(Proc, mpsc::Receiver<String>)> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    own_group(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{role} {n}: {program}: {e}")))?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let stderr = child.stderr.take().expect("piped stderr");
    let kept = tail.clone();
    let prefix = format!("[{role} {n}] ");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if echo {
                let _ = writeln!(io::stderr(), "{prefix}{line}");
            }
            let mut t = kept.lock().unwrap_or_else(|e| e.into_inner());
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    });
    let out = Arc::new(Mutex::new(VecDeque::new()));
    let (lines, reader) = read_lines(
        child.stdout.take().expect("piped stdout"),
        role,
        n,
        echo,
        out.clone(),
    );
    Ok((
        Proc {
            role,
            n,
            child,
            tail,
            out,
            reader: Some(reader),
        },
        lines,
    ))
}

/// The child's stdout as a channel of lines, read on a thread for the child's whole life (so
/// that it never blocks on a full pipe); each line is also forwarded to stderr.
pub(super) fn read_lines(
    out: ChildStdout,
    role: Role,
    n: usize,
    echo: bool,
    kept: Arc<Mutex<VecDeque<String>>>,
) -> (mpsc::Receiver<String>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if echo {
                let _ = writeln!(io::stderr(), "[{role} {n}] {line}");
            }
            {
                let mut t = kept.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line.clone());
            }
            // The receiver is gone once the process is ready: keep draining.
            let _ = tx.send(line);
        }
    });
    (rx, reader)
}

/// Waits until a line of `lines` satisfies `ready`; an error (with the child's stderr) if it
/// exits first or takes longer than `within`.
pub(super) fn wait_ready<T>(
    p: &mut Proc,
    lines: &mpsc::Receiver<String>,
    within: Duration,
    mut ready: impl FnMut(&str) -> Option<T>,
) -> io::Result<T> {
    let give_up = Instant::now() + within;
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(line) => {
                if let Some(t) = ready(&line) {
                    return Ok(t);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {
                if let Some(s) = p.child.try_wait()? {
                    // Let the stderr reader catch up with the last lines.
                    std::thread::sleep(Duration::from_millis(50));
                    return Err(io::Error::other(format!(
                        "{} {} exited ({s}) before it was ready; {}",
                        p.role,
                        p.n,
                        p.tail()
                    )));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = p.child.kill();
                let _ = p.child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} {} was not ready within {within:?}; {}",
                        p.role,
                        p.n,
                        p.tail()
                    ),
                ));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = p.child.wait()?;
                std::thread::sleep(Duration::from_millis(50));
                return Err(io::Error::other(format!(
                    "{} {} exited ({status}) before it was ready; {}",
                    p.role,
                    p.n,
                    p.tail()
                )));
            }
        }
    }
}

/// `nats-server` on `PATH`, else in `/usr/sbin` (where Debian's package puts it, and which
/// is not on every user's `PATH`) or `/usr/local/sbin`.
pub(super) fn nats_program() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nats-server").is_file()));
    if !on_path {
        for dir in ["/usr/sbin", "/usr/local/sbin"] {
            let p = PathBuf::from(dir).join("nats-server");
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("nats-server")
}

/// Starts `nats-server` from `PATH` on loopback, on `port` or (`None`) a free port (`-p -1`:
/// the server picks it and logs it), and waits for it to be ready; returns it, its URL and
/// its port.
pub(super) fn start_nats(plan: &Plan, port: Option<u16>) -> io::Result<(Proc, String, u16)> {
    let mut cmd = Command::new(nats_program());
    let p = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
    cmd.args(["-a", "127.0.0.1", "-p", &p]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    own_group(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(
                e.kind(),
                "nats-server is not installed (not on PATH): install it (Debian: apt-get install \
                 nats-server; scripts/deps/nats.sh), or give --nats URL of a running one",
            )
        } else {
            io::Error::new(e.kind(), format!("nats-server: {e}"))
        }
    })?;
    // nats-server logs on stderr: read its port from "Listening for client connections on
    // HOST:PORT", and wait for "Server is ready".
    let (tx, rx) = mpsc::channel();
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let kept = tail.clone();
    let stderr = child.stderr.take().expect("piped stderr");
    let echo = plan.echo_stderr;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if echo {
                let _ = writeln!(io::stderr(), "[nats 0] {line}");
            }
            {
                let mut t = kept.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line.clone());
            }
            let _ = tx.send(line);
        }
    });
    let mut p = Proc {
        role: Role::Nats,
        n: 0,
        child,
        tail,
        out: Arc::new(Mutex::new(VecDeque::new())),
        reader: None,
    };
    let mut port = None;
    let url = wait_ready(&mut p, &rx, plan.ready_within, |line| {
        if let Some((_, rest)) = line.split_once("Listening for client connections on ") {
            let addr = rest.split_whitespace().next()?;
            port = addr.rsplit_once(':').map(|(_, p)| p.to_string());
            return None;
        }
        if line.contains("Server is ready") {
            return port.clone();
        }
        None
    })
    .and_then(|port| {
        let n: u16 = port.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("nats-server port {port:?}"),
            )
        })?;
        Ok((format!("nats://127.0.0.1:{port}"), n))
    });
    url.map(|(u, n)| (p, u, n))
}

/// `listening on 127.0.0.1:7000 (…)` → the address (the startup line every server of the
/// workspace prints, the gateway's too).
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("listening on ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
