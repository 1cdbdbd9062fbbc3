//! One machine's cluster as child processes: `nats-server` (unless a URL is given), N zone
//! processes and G gateway processes of the `cport` binary, each its own OS process whose
//! command line says `zone` or `gateway`, so that one can be killed alone (a test, or an
//! operator, kills zone 2 with `kill(Role::Zone, 2)` or `kill -9 PID`).
//!
//! [`Supervisor::start`] starts them in dependency order (NATS, the zones, then the
//! gateways: a gateway that accepts a login must find the name's home zone on the bus) and
//! waits for each one's readiness line; [`Supervisor::stop`] ends them in the reverse order
//! (gateways first, so that their clients' players are saved by zones still running, then
//! the zones, then NATS), each with SIGTERM and, after a grace period, SIGKILL.
//!
//! Every child's stderr is forwarded to this process's stderr with a `[zone 2]` prefix, and
//! its last lines are kept: a child that does not become ready in time, or exits, is reported
//! with what it said.
//!
//! With [`Plan::restart`] (what `cport cluster` runs), a monitor thread keeps the cluster
//! running: a child that exits is started again with the same arguments (NATS on the same
//! port, a gateway on the address it printed), at once and then with a growing pause if it
//! keeps dying, and a child whose `/healthz` has not answered 200 for [`Plan::hung_after`]
//! is killed and so restarted (the rules are in `monitor.rs`). With [`Plan::http`] the
//! supervisor serves its own `/healthz`, `/readyz` and `/metrics` ([`crate::ops`]).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The kinds of process a cluster is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The `nats-server` the supervisor started (there is one, number 0).
    Nats,
    /// A `cport zone` process.
    Zone,
    /// A `cport gateway` process.
    Gateway,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Nats => "nats",
            Role::Zone => "zone",
            Role::Gateway => "gateway",
        })
    }
}

/// How long a child may go without answering `/healthz` before the supervisor kills it.
pub const DEFAULT_HUNG_AFTER: Duration = Duration::from_secs(2);

/// What to start.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The `cport` binary whose `zone` and `gateway` subcommands are run (the CLI passes
    /// `std::env::current_exe()`).
    pub program: PathBuf,
    /// A NATS server already running; `None` starts `nats-server` from `PATH` on a free
    /// loopback port.
    pub nats: Option<String>,
    /// The cluster's name: the first token of every subject, so that clusters can share a
    /// NATS server.
    pub cluster: String,
    /// How many zones.
    pub zones: usize,
    /// Each gateway's listening address (one gateway per address).
    pub gateways: Vec<SocketAddr>,
    /// Arguments given to every zone after `--zone N --zones Z --gateways G --nats URL
    /// --cluster NAME` (the game's options).
    pub zone_args: Vec<OsString>,
    /// Arguments given to every gateway after `--gateway N --gateways G --zones Z --nats URL
    /// --cluster NAME --addr A` (the game's options that apply to a gateway).
    pub gateway_args: Vec<OsString>,
    /// How long each process may take to say it is ready.
    pub ready_within: Duration,
    /// How long [`Supervisor::stop`] lets each process end after SIGTERM before SIGKILL.
    pub grace: Duration,
    /// Forward the children's stderr lines to this process's stderr (else only keep the last
    /// ones for error messages).
    pub echo_stderr: bool,
    /// Environment variables added for the zones and gateways (e.g. `RUST_LOG`).
    pub env: Vec<(OsString, OsString)>,
    /// Start a zone, gateway or NATS server that exits (not during [`Supervisor::stop`])
    /// again with the same arguments, and kill and restart a child whose `/healthz` has not
    /// answered 200 for [`Plan::hung_after`]. Off by default here (a test that kills a
    /// process sees it stay dead); `cport cluster` turns it on.
    pub restart: bool,
    /// With [`Plan::restart`]: how long a child may go without a 200 from its `/healthz`
    /// before it is killed and restarted.
    pub hung_after: Duration,
    /// With [`Plan::restart`]: how often each child's `/healthz` is asked.
    pub health_every: Duration,
    /// Where the supervisor serves its own `/healthz` and `/metrics` (`None`: nowhere).
    pub http: Option<SocketAddr>,
}

impl Plan {
    /// A plan with `zones` zones and one gateway per address, the defaults for the rest: NATS
    /// started here, 20 s to be ready, 10 s to stop, stderr forwarded.
    pub fn new(program: PathBuf, cluster: &str, zones: usize, gateways: Vec<SocketAddr>) -> Plan {
        Plan {
            program,
            nats: None,
            cluster: cluster.to_string(),
            zones,
            gateways,
            zone_args: Vec::new(),
            gateway_args: Vec::new(),
            ready_within: Duration::from_secs(20),
            grace: Duration::from_secs(10),
            echo_stderr: true,
            env: Vec::new(),
            restart: false,
            hung_after: DEFAULT_HUNG_AFTER,
            health_every: Duration::from_millis(250),
            http: None,
        }
    }
}

/// The gateways' addresses for `count` gateways when the first listens on `first`: the next
/// ports after it (port 0 stays 0: each gateway picks a free port).
pub fn gateway_addrs(first: SocketAddr, count: usize) -> io::Result<Vec<SocketAddr>> {
    (0..count)
        .map(|g| {
            let mut a = first;
            if first.port() != 0 {
                let port = usize::from(first.port()) + g;
                let port = u16::try_from(port).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{count} gateways from port {} run past port 65535",
                            first.port()
                        ),
                    )
                })?;
                a.set_port(port);
            }
            Ok(a)
        })
        .collect()
}

/// How many of a child's last stderr lines are kept for its error messages.
const TAIL_LINES: usize = 30;

/// One child process and what it said.
#[derive(Debug)]
struct Proc {
    role: Role,
    n: usize,
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// The last lines it printed on stdout, and the thread that reads them (joined once the
    /// process has exited, so that its last words are in).
    out: Arc<Mutex<VecDeque<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
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
    fn last_words(&mut self) -> Vec<String> {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.iter().cloned().collect()
    }

    fn tail(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.is_empty() {
            "(it printed nothing on stderr)".into()
        } else {
            let lines: Vec<&str> = t.iter().map(String::as_str).collect();
            format!("its last stderr lines:\n  {}", lines.join("\n  "))
        }
    }
}

/// A running cluster: its processes, started by [`Supervisor::start`], and (with
/// [`Plan::restart`]) the monitor thread that restarts them. Dropping it kills whatever is
/// still running (SIGKILL); [`Supervisor::stop`] ends it in order.
#[derive(Debug)]
pub struct Supervisor {
    nats_url: String,
    gateways: Vec<SocketAddr>,
    shared: Arc<monitor::Shared>,
    monitor: Option<std::thread::JoinHandle<()>>,
    http: Option<crate::ops::OpsServer>,
}

/// How each process of a cluster ended under [`Supervisor::stop`].
#[derive(Debug)]
pub struct StopReport {
    /// `(role, number, status, whether it needed SIGKILL)`, in the order they were stopped.
    pub ended: Vec<(Role, usize, ExitStatus, bool)>,
    /// `(role, number, its last lines on stdout)` (a zone's and a gateway's figures at
    /// shutdown), in the same order.
    pub said: Vec<(Role, usize, Vec<String>)>,
}

impl StopReport {
    /// The last stdout lines of `role` number `n`.
    pub fn said(&self, role: Role, n: usize) -> &[String] {
        self.said
            .iter()
            .find(|(r, k, _)| (*r, *k) == (role, n))
            .map_or(&[], |(_, _, l)| l.as_slice())
    }
}

impl StopReport {
    /// Whether every process ended by itself after SIGTERM: the zones and gateways with
    /// success, NATS at all (`nats-server` exits with status 1 on SIGTERM by design). A
    /// process killed before (by [`Supervisor::kill`]) or at the end of the grace period is
    /// not clean.
    pub fn clean(&self) -> bool {
        self.ended
            .iter()
            .all(|(r, _, s, killed)| !killed && (s.success() || *r == Role::Nats))
    }
}

impl std::fmt::Display for StopReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .ended
            .iter()
            .map(|(r, n, s, killed)| {
                format!("{r} {n}: {s}{}", if *killed { " (killed)" } else { "" })
            })
            .collect();
        f.write_str(&parts.join(", "))
    }
}

impl Supervisor {
    /// Starts NATS (unless the plan names one), the zones, then the gateways, and waits for
    /// each to be ready; then, with [`Plan::restart`], the monitor thread, and with
    /// [`Plan::http`], the supervisor's own endpoints. On an error, what was started is
    /// killed and the error says which process failed and what it printed on stderr.
    pub fn start(plan: Plan) -> io::Result<Supervisor> {
        if plan.zones == 0 || plan.gateways.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a cluster needs at least one zone and one gateway",
            ));
        }
        // On an early return `procs` is dropped, which kills what was started.
        let mut procs = monitor::Procs::default();
        let nats_url = match &plan.nats {
            Some(url) => url.clone(),
            None => {
                let (p, url, port) = start_nats(&plan, None)?;
                procs.nats = Some(monitor::Slot::new(p, monitor::Spec::Nats { port }));
                url
            }
        };
        // The zones start together and are waited for together: each one's start-up (NPC
        // placement, the database) takes a while, and they do not depend on each other.
        let mut waiting = Vec::new();
        for z in 0..plan.zones {
            let spec = monitor::Spec::zone(&plan, &nats_url, z);
            let (p, lines) = spawn(spec.command(&plan), Role::Zone, z, plan.echo_stderr)?;
            procs.zones.push(monitor::Slot::new(p, spec));
            waiting.push(lines);
        }
        for (z, lines) in waiting.into_iter().enumerate() {
            let want = monitor::zone_ready_line(z, plan.zones);
            let slot = &mut procs.zones[z];
            let mut http = None;
            wait_ready(&mut slot.proc, &lines, plan.ready_within, |l| {
                if let Some(a) = crate::ops::parse_http_line(l) {
                    http = Some(a);
                }
                (l.trim() == want).then_some(())
            })?;
            slot.up(lines, http);
        }
        let mut gateways = Vec::new();
        for (g, addr) in plan.gateways.iter().enumerate() {
            let spec = monitor::Spec::gateway(&plan, &nats_url, g, *addr);
            let (p, lines) = spawn(spec.command(&plan), Role::Gateway, g, plan.echo_stderr)?;
            procs.gws.push(monitor::Slot::new(p, spec));
            let slot = &mut procs.gws[g];
            let mut http = None;
            let at = wait_ready(&mut slot.proc, &lines, plan.ready_within, |l| {
                if let Some(a) = crate::ops::parse_http_line(l) {
                    http = Some(a);
                }
                parse_listening(l)
            })?;
            // A restart listens where the clients know to come back: the address it got.
            slot.spec = monitor::Spec::gateway(&plan, &nats_url, g, at);
            slot.up(lines, http);
            gateways.push(at);
        }
        let restart = plan.restart;
        let http_at = plan.http;
        let shared = Arc::new(monitor::Shared::new(plan, procs));
        let monitor = if restart {
            let s = shared.clone();
            Some(
                std::thread::Builder::new()
                    .name("supervisor".into())
                    .spawn(move || monitor::run(&s))?,
            )
        } else {
            None
        };
        let mut sup = Supervisor {
            nats_url,
            gateways,
            shared: shared.clone(),
            monitor,
            http: None,
        };
        if let Some(addr) = http_at {
            sup.http = Some(crate::ops::serve(
                addr,
                Arc::new(monitor::SupervisorOps(shared)),
            )?);
        }
        Ok(sup)
    }

    /// Whether a monitor thread restarts what exits ([`Plan::restart`]).
    pub fn restarting(&self) -> bool {
        self.monitor.is_some()
    }

    /// The NATS server's URL (the one started here, or the plan's).
    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    /// Where each gateway listens, in gateway order (the addresses they printed; a restarted
    /// gateway listens there again).
    pub fn gateways(&self) -> Vec<SocketAddr> {
        self.gateways.clone()
    }

    /// Where the supervisor's own `/healthz` and `/metrics` are served ([`Plan::http`]).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(crate::ops::OpsServer::local_addr)
    }

    /// The process id of `role` number `n`, if there is one (after an exit and before its
    /// restart: the dead one's).
    pub fn pid(&self, role: Role, n: usize) -> Option<u32> {
        self.shared.with(role, n, |s| s.proc.child.id())
    }

    /// Where `role` number `n` serves `/healthz` (the `http on ADDR` line it printed last).
    pub fn child_http(&self, role: Role, n: usize) -> Option<SocketAddr> {
        self.shared.with(role, n, |s| s.http).flatten()
    }

    /// Whether `role` number `n` is running and has said it is ready since its last start.
    pub fn is_up(&self, role: Role, n: usize) -> bool {
        self.shared
            .with(role, n, |s| {
                s.is_up() && matches!(s.proc.child.try_wait(), Ok(None))
            })
            .unwrap_or(false)
    }

    /// How many times processes of `role` were started again (after an exit, a hang, or
    /// [`Supervisor::restart_nats`]).
    pub fn restarts(&self, role: Role) -> u64 {
        self.shared.restarts(role)
    }

    /// How many times `role` number `n` was started again.
    pub fn restarts_of(&self, role: Role, n: usize) -> u64 {
        self.shared.with(role, n, |s| s.restarts).unwrap_or(0)
    }

    /// Kills `role` number `n` at once (SIGKILL, as `kill -9` does: no shutdown, nothing
    /// saved) and reaps it. An error if there is no such process. With [`Plan::restart`]
    /// the monitor starts it again.
    pub fn kill(&mut self, role: Role, n: usize) -> io::Result<ExitStatus> {
        self.shared.with_mut(role, n, |s| {
            if let Some(st) = s.proc.child.try_wait()? {
                return Ok(st);
            }
            s.proc.child.kill()?;
            s.proc.child.wait()
        })?
    }

    /// Stops `role` number `n` (SIGSTOP): it stays, answering nothing, until
    /// [`Supervisor::cont`] (or, with [`Plan::restart`], until the monitor finds it hung and
    /// kills it).
    #[cfg(unix)]
    pub fn stop_signal(&mut self, role: Role, n: usize) -> io::Result<()> {
        self.signal(role, n, rustix::process::Signal::STOP)
    }

    /// Continues `role` number `n` after [`Supervisor::stop_signal`] (SIGCONT).
    #[cfg(unix)]
    pub fn cont(&mut self, role: Role, n: usize) -> io::Result<()> {
        self.signal(role, n, rustix::process::Signal::CONT)
    }

    #[cfg(unix)]
    fn signal(&mut self, role: Role, n: usize, sig: rustix::process::Signal) -> io::Result<()> {
        self.shared.with_mut(role, n, |s| {
            let pid = rustix::process::Pid::from_raw(s.proc.child.id() as i32)
                .ok_or_else(|| io::Error::other("no pid"))?;
            rustix::process::kill_process(pid, sig).map_err(io::Error::from)
        })?
    }

    /// Kills the `nats-server` this supervisor started and starts it again on the same port
    /// (its clients reconnect by themselves); returns once it is ready. An error when the
    /// plan named a server of its own.
    pub fn restart_nats(&mut self) -> io::Result<()> {
        self.shared.restart_nats()
    }

    /// The processes that have exited (by themselves or killed) and are not started again
    /// yet, with their status and their last stderr lines, without waiting.
    pub fn exited(&mut self) -> Vec<(Role, usize, ExitStatus, String)> {
        self.shared.exited()
    }

    /// Ends the cluster: the monitor first (nothing is restarted from now on), then the
    /// gateways (their clients' players are saved by the zones), then the zones (they save
    /// what they own), then NATS; each with SIGTERM, and SIGKILL after the grace period. Says
    /// how each ended.
    pub fn stop(mut self, grace: Duration) -> io::Result<StopReport> {
        self.end_monitor();
        let procs = self.shared.take();
        let mut ended = Vec::new();
        let mut said = Vec::new();
        let gws: Vec<Proc> = procs.gws.into_iter().map(|s| s.proc).collect();
        let zones: Vec<Proc> = procs.zones.into_iter().map(|s| s.proc).collect();
        let nats: Vec<Proc> = procs.nats.into_iter().map(|s| s.proc).collect();
        // The gateways together, then the zones together: each group's shutdowns overlap.
        for mut group in [gws, zones, nats] {
            for p in &mut group {
                if p.child.try_wait()?.is_none() {
                    sigterm(&p.child);
                }
            }
            let asked = Instant::now();
            for p in &mut group {
                let (status, killed) = loop {
                    if let Some(s) = p.child.try_wait()? {
                        break (s, false);
                    }
                    if asked.elapsed() >= grace {
                        let _ = p.child.kill();
                        break (p.child.wait()?, true);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                };
                ended.push((p.role, p.n, status, killed));
                said.push((p.role, p.n, p.last_words()));
            }
        }
        Ok(StopReport { ended, said })
    }

    /// Ends the supervisor's endpoints and the monitor thread (joined).
    fn end_monitor(&mut self) {
        self.http = None;
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(m) = self.monitor.take() {
            let _ = m.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.end_monitor();
        // `Procs`' drop kills what still runs.
        drop(self.shared.take());
    }
}
/// Asks a child to end (SIGTERM on Unix; a kill elsewhere, which has no SIGTERM).
fn sigterm(child: &Child) {
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
fn own_group(cmd: &mut Command) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    #[cfg(not(unix))]
    let _ = cmd;
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

/// Starts `cmd` with stdout read into a channel of lines and stderr kept (and forwarded).
fn spawn(
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
fn read_lines(
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
fn wait_ready<T>(
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
fn nats_program() -> PathBuf {
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
fn start_nats(plan: &Plan, port: Option<u16>) -> io::Result<(Proc, String, u16)> {
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

mod monitor;

#[cfg(test)]
mod tests;
