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

use std::io;
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

mod monitor;
mod plan;
mod proc;

pub use plan::{gateway_addrs, Plan, Role, DEFAULT_HUNG_AFTER};
pub use proc::parse_listening;

use proc::{sigterm, spawn, start_nats, wait_ready, Proc};

#[cfg(test)]
mod tests;
