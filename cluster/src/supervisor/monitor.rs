//! The monitor thread: restarts what exits, kills what hangs.
//!
//! Every [`TICK`] it looks at each child under the one lock: one that exited (not during
//! `stop`) is started again with the same arguments, at once the first time and after a
//! growing pause when it keeps dying ([`backoff`]; the count starts over once a process has
//! been up for [`STEADY`]); one that is starting is watched for its readiness line (and its
//! `http on ADDR` line). Every [`Plan::health_every`] each ready child's `/healthz` is asked
//! on a thread of its own (one poll per child at a time), which reports back; a child whose
//! last 200 is [`Plan::hung_after`] old is killed (SIGKILL) and so restarted. A stopped
//! process (SIGSTOP) accepts the connection in its kernel and never answers: it is caught
//! the same way.

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::plan::{Plan, Role};
use super::proc::{parse_listening, spawn, start_nats, Proc};
use crate::ops::{parse_http_line, Probe, Series, Target};

/// How often the monitor looks at its children.
const TICK: Duration = Duration::from_millis(50);

/// A process up this long has recovered: its next exit is restarted at once again. Short:
/// a crash loop dies while starting or right after, while a zone that served for seconds and
/// was then killed (a fault, a chaos test killing every zone in turn) must come back at once
/// each time — its players wait for it.
pub(super) const STEADY: Duration = Duration::from_secs(5);

/// The pause before restarting a process that died `streak` times in a row without
/// staying up for [`STEADY`] (0 for the first death): none, then 0.5 s doubling to 8 s.
pub(super) fn backoff(streak: u32) -> Duration {
    match streak {
        0 => Duration::ZERO,
        k => Duration::from_millis(500u64 << (k - 1).min(4)),
    }
}

/// `zone N of Z ready`: a zone's readiness line.
pub(super) fn zone_ready_line(n: usize, zones: usize) -> String {
    format!("zone {n} of {zones} ready")
}

/// How to start a child again.
#[derive(Debug, Clone)]
pub(super) enum Spec {
    /// `nats-server` on this port.
    Nats { port: u16 },
    /// A zone or gateway: the program's arguments.
    Child {
        role: Role,
        n: usize,
        args: Vec<OsString>,
    },
}

impl Spec {
    /// Zone `z`'s arguments.
    pub(super) fn zone(plan: &Plan, nats: &str, z: usize) -> Spec {
        let mut args: Vec<OsString> = [
            "zone",
            "--zone",
            &z.to_string(),
            "--zones",
            &plan.zones.to_string(),
            "--gateways",
            &plan.gateways.len().to_string(),
            "--nats",
            nats,
            "--cluster",
            &plan.cluster,
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.extend(plan.zone_args.iter().cloned());
        Spec::Child {
            role: Role::Zone,
            n: z,
            args,
        }
    }

    /// Gateway `g`'s arguments, listening on `addr`.
    pub(super) fn gateway(plan: &Plan, nats: &str, g: usize, addr: SocketAddr) -> Spec {
        let mut args: Vec<OsString> = [
            "gateway",
            "--gateway",
            &g.to_string(),
            "--gateways",
            &plan.gateways.len().to_string(),
            "--zones",
            &plan.zones.to_string(),
            "--nats",
            nats,
            "--cluster",
            &plan.cluster,
            "--addr",
            &addr.to_string(),
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.extend(plan.gateway_args.iter().cloned());
        Spec::Child {
            role: Role::Gateway,
            n: g,
            args,
        }
    }

    /// The command of a zone or gateway (not for NATS, which `start_nats` starts).
    pub(super) fn command(&self, plan: &Plan) -> Command {
        let mut cmd = Command::new(&plan.program);
        if let Spec::Child { args, .. } = self {
            cmd.args(args);
        }
        cmd.envs(plan.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// Where a child is in its life.
#[derive(Debug)]
enum Phase {
    /// Started; its readiness line is awaited until then.
    Starting { until: Instant },
    /// Ready.
    Up,
    /// Exited; started again at `due`.
    Down { due: Instant },
}

/// One child and what the monitor knows of it.
#[derive(Debug)]
pub(super) struct Slot {
    pub proc: Proc,
    pub spec: Spec,
    /// Its stdout lines (drained, so that they do not pile up).
    lines: Option<mpsc::Receiver<String>>,
    phase: Phase,
    /// Where it serves `/healthz`.
    pub http: Option<SocketAddr>,
    /// When this run of it was started.
    started: Instant,
    /// Deaths in a row without staying up for [`STEADY`].
    streak: u32,
    /// Times it was started again.
    pub restarts: u64,
    /// The last 200 from its `/healthz` (or when it became ready).
    last_ok: Instant,
    next_poll: Instant,
    /// A poll of its `/healthz` is on its way.
    polling: bool,
    /// What its last failed poll said.
    last_err: Option<String>,
    /// Why the monitor killed it, said when its exit is logged.
    killed_for: Option<String>,
}

impl Slot {
    /// A child just started (by [`super::Supervisor::start`], which waits for it).
    pub(super) fn new(proc: Proc, spec: Spec) -> Slot {
        let now = Instant::now();
        Slot {
            proc,
            spec,
            lines: None,
            phase: Phase::Up,
            http: None,
            started: now,
            streak: 0,
            restarts: 0,
            last_ok: now,
            next_poll: now,
            polling: false,
            last_err: None,
            killed_for: None,
        }
    }

    /// It said it is ready; `http` is where it serves `/healthz` if it said so.
    pub(super) fn up(&mut self, lines: mpsc::Receiver<String>, http: Option<SocketAddr>) {
        self.lines = Some(lines);
        self.http = http;
        self.phase = Phase::Up;
        self.last_ok = Instant::now();
        self.next_poll = self.last_ok;
    }

    pub(super) fn is_up(&self) -> bool {
        matches!(self.phase, Phase::Up)
    }

    fn name(&self) -> String {
        format!("{} {}", self.proc.role, self.proc.n)
    }
}

/// Every child, gateways first (so that dropping it kills them first, as `stop` ends them).
#[derive(Debug, Default)]
pub(super) struct Procs {
    pub gws: Vec<Slot>,
    pub zones: Vec<Slot>,
    pub nats: Option<Slot>,
}

impl Procs {
    fn slot_mut(&mut self, role: Role, n: usize) -> Option<&mut Slot> {
        match role {
            Role::Nats => self.nats.as_mut().filter(|_| n == 0),
            Role::Zone => self.zones.get_mut(n),
            Role::Gateway => self.gws.get_mut(n),
        }
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.nats
            .iter_mut()
            .chain(&mut self.zones)
            .chain(&mut self.gws)
    }
}

/// A `/healthz` to ask: the child's role, number and pid (a poll of a child restarted
/// meanwhile is ignored), and its address.
type Poll = (Role, usize, u32, SocketAddr);

/// What the supervisor, its monitor and its endpoints share.
pub(super) struct Shared {
    plan: Plan,
    procs: Mutex<Procs>,
    pub stopping: AtomicBool,
    /// Restarts per role: NATS, zones, gateways.
    restarts: [AtomicU64; 3],
    /// The supervisor's own liveness probes, answered by the monitor thread.
    probes: Mutex<Vec<Probe>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

fn role_index(r: Role) -> usize {
    match r {
        Role::Nats => 0,
        Role::Zone => 1,
        Role::Gateway => 2,
    }
}

/// `signal 9`, `status 3`: how a process ended, for the log.
fn how(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("signal {sig}");
        }
    }
    match status.code() {
        Some(c) => format!("status {c}"),
        None => status.to_string(),
    }
}

impl Shared {
    pub(super) fn new(plan: Plan, procs: Procs) -> Shared {
        Shared {
            plan,
            procs: Mutex::new(procs),
            stopping: AtomicBool::new(false),
            restarts: Default::default(),
            probes: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Procs> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every child, taken out (for `stop` and drop).
    pub(super) fn take(&self) -> Procs {
        std::mem::take(&mut *self.lock())
    }

    /// `f` of `role` number `n`'s slot, if there is one.
    pub(super) fn with<T>(
        &self,
        role: Role,
        n: usize,
        f: impl FnOnce(&mut Slot) -> T,
    ) -> Option<T> {
        self.lock().slot_mut(role, n).map(f)
    }

    /// [`Shared::with`], an error when there is no such process.
    pub(super) fn with_mut<T>(
        &self,
        role: Role,
        n: usize,
        f: impl FnOnce(&mut Slot) -> T,
    ) -> io::Result<T> {
        self.with(role, n, f).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no {role} {n} in this cluster"),
            )
        })
    }

    pub(super) fn restarts(&self, role: Role) -> u64 {
        self.restarts[role_index(role)].load(Ordering::Relaxed)
    }

    pub(super) fn exited(&self) -> Vec<(Role, usize, ExitStatus, String)> {
        let mut out = Vec::new();
        for s in self.lock().all_mut() {
            if let Ok(Some(st)) = s.proc.child.try_wait() {
                out.push((s.proc.role, s.proc.n, st, s.proc.tail()));
            }
        }
        out
    }

    pub(super) fn restart_nats(&self) -> io::Result<()> {
        let mut procs = self.lock();
        let slot = procs.nats.as_mut().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "the NATS server was not started by this supervisor",
            )
        })?;
        let _ = slot.proc.child.kill();
        let _ = slot.proc.child.wait();
        tracing::warn!("nats 0: restarting on the same port (asked)");
        self.respawn(slot)
    }

    /// Starts `slot`'s process again: NATS synchronously (it is ready in milliseconds), a
    /// zone or gateway in the background (its readiness line is watched for).
    fn respawn(&self, slot: &mut Slot) -> io::Result<()> {
        let now = Instant::now();
        slot.killed_for = None;
        slot.polling = false;
        slot.last_err = None;
        match &slot.spec {
            Spec::Nats { port } => {
                let (p, _, _) = start_nats(&self.plan, Some(*port))?;
                slot.proc = p;
                slot.phase = Phase::Up;
                slot.lines = None;
            }
            spec @ Spec::Child { role, n, .. } => {
                let (p, lines) = spawn(spec.command(&self.plan), *role, *n, self.plan.echo_stderr)?;
                slot.proc = p;
                slot.lines = Some(lines);
                slot.http = None;
                slot.phase = Phase::Starting {
                    until: now + self.plan.ready_within,
                };
            }
        }
        slot.started = now;
        slot.restarts += 1;
        self.restarts[role_index(slot.proc.role)].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One look at every child under the lock; returns the `/healthz` polls due now.
    fn step(&self, now: Instant) -> Vec<Poll> {
        let mut polls = Vec::new();
        let mut procs = self.lock();
        let zones = self.plan.zones;
        for slot in procs.all_mut() {
            let exited = match slot.proc.child.try_wait() {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("{}: cannot tell whether it runs: {e}", slot.name());
                    None
                }
            };
            match (&slot.phase, exited) {
                (Phase::Down { due }, _) => {
                    if now >= *due {
                        let k = slot.restarts + 1;
                        if let Err(e) = self.respawn(slot) {
                            let delay = backoff(slot.streak.max(1));
                            slot.streak += 1;
                            tracing::error!(
                                "{}: restart {k} failed: {e}; trying again in {delay:?}",
                                slot.name()
                            );
                            slot.phase = Phase::Down { due: now + delay };
                        }
                    }
                }
                (_, Some(status)) => {
                    if slot.started.elapsed() >= STEADY {
                        slot.streak = 0;
                    }
                    let delay = backoff(slot.streak);
                    slot.streak += 1;
                    let why = slot
                        .killed_for
                        .take()
                        .map(|w| format!(" ({w})"))
                        .unwrap_or_default();
                    let wait = if delay.is_zero() {
                        String::new()
                    } else {
                        format!(" in {delay:?}")
                    };
                    tracing::warn!(
                        "{} exited ({}){why}: restarting{wait} (restart {}); {}",
                        slot.name(),
                        how(status),
                        slot.restarts + 1,
                        slot.proc.tail()
                    );
                    slot.phase = Phase::Down { due: now + delay };
                }
                (Phase::Starting { until }, None) => {
                    let until = *until;
                    let role = slot.proc.role;
                    let n = slot.proc.n;
                    let mut ready = false;
                    if let Some(lines) = &slot.lines {
                        while let Ok(l) = lines.try_recv() {
                            if let Some(a) = parse_http_line(&l) {
                                slot.http = Some(a);
                            }
                            ready |= match role {
                                Role::Zone => l.trim() == zone_ready_line(n, zones),
                                _ => parse_listening(&l).is_some(),
                            };
                        }
                    }
                    if ready {
                        tracing::info!(
                            "{} is back (pid {}, ready in {:?})",
                            slot.name(),
                            slot.proc.child.id(),
                            slot.started.elapsed()
                        );
                        slot.phase = Phase::Up;
                        slot.last_ok = now;
                        slot.next_poll = now;
                    } else if now >= until {
                        slot.killed_for =
                            Some(format!("not ready within {:?}", self.plan.ready_within));
                        let _ = slot.proc.child.kill();
                    }
                }
                (Phase::Up, None) => {
                    if let Some(lines) = &slot.lines {
                        while lines.try_recv().is_ok() {}
                    }
                    if let Some(addr) = slot.http {
                        let silent = now.duration_since(slot.last_ok);
                        if silent >= self.plan.hung_after {
                            if slot.killed_for.is_none() {
                                let last = slot.last_err.as_deref().unwrap_or("no answer yet");
                                tracing::warn!(
                                    "{} hung: no 200 from /healthz for {silent:.1?} (last: {last}): killing it",
                                    slot.name()
                                );
                                slot.killed_for = Some(format!("hung for {silent:.1?}: {last}"));
                                let _ = slot.proc.child.kill();
                            }
                        } else if !slot.polling && now >= slot.next_poll {
                            slot.polling = true;
                            slot.next_poll = now + self.plan.health_every;
                            polls.push((slot.proc.role, slot.proc.n, slot.proc.child.id(), addr));
                        }
                    }
                }
            }
        }
        polls
    }

    /// A poll's answer: a 200 is noted; what else it said is kept for the log line of a
    /// kill ([`Shared::step`] kills a child whose last 200 is `hung_after` old).
    fn health(&self, (role, n, pid, _): Poll, answer: Result<(), String>) {
        let mut procs = self.lock();
        let Some(slot) = procs.slot_mut(role, n) else {
            return;
        };
        if slot.proc.child.id() != pid {
            return; // restarted meanwhile
        }
        slot.polling = false;
        match answer {
            Ok(()) => {
                slot.last_ok = Instant::now();
                slot.last_err = None;
            }
            Err(why) => slot.last_err = Some(why),
        }
    }
}

/// The monitor thread's loop, until `stopping`.
pub(super) fn run(shared: &Shared) {
    // A poll waits for the child's own probe (up to a second) and a little more. Polls run
    // on threads of their own and report here: a stopped child's unanswered poll holds up
    // nothing else (the restart of another child, the supervisor's own probe).
    let timeout = crate::ops::PROBE_TIMEOUT + Duration::from_millis(250);
    let (tx, rx) = mpsc::channel();
    while !shared.stopping.load(Ordering::Acquire) {
        for p in std::mem::take(&mut *shared.probes.lock().unwrap_or_else(|e| e.into_inner())) {
            p.answer();
        }
        for (poll, answer) in rx.try_iter() {
            shared.health(poll, answer);
        }
        for poll in shared.step(Instant::now()) {
            let tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name("healthz-poll".into())
                .spawn(move || {
                    let answer = match crate::ops::http_get(poll.3, "/healthz", timeout) {
                        Ok(a) if a.status == 200 => Ok(()),
                        Ok(a) => Err(format!("{} {}", a.status, a.body.trim())),
                        Err(e) => Err(e.to_string()),
                    };
                    let _ = tx.send((poll, answer));
                });
            if let Err(e) = spawned {
                shared.health(poll, Err(format!("no thread for the poll: {e}")));
            }
        }
        std::thread::sleep(TICK);
    }
}

/// The supervisor's own endpoints: `/healthz` is answered by the monitor thread (so a
/// stuck monitor fails it), `/readyz` says whether every child is up, `/metrics` counts
/// restarts and children up per role.
pub(super) struct SupervisorOps(pub std::sync::Arc<Shared>);

impl Target for SupervisorOps {
    fn labels(&self) -> Vec<(Cow<'static, str>, Cow<'static, str>)> {
        vec![("cluster".into(), self.0.plan.cluster.clone().into())]
    }

    fn post_probe(&self, probe: Probe) -> Result<(), String> {
        if self.0.stopping.load(Ordering::Acquire) {
            return Err("stopping".into());
        }
        if !self.0.plan.restart {
            // No monitor thread: nothing else to ask.
            probe.answer();
            return Ok(());
        }
        self.0
            .probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(probe);
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        let mut procs = self.0.lock();
        let down: Vec<String> = procs
            .all_mut()
            .filter_map(|s| {
                let running = matches!(s.proc.child.try_wait(), Ok(None));
                (!s.is_up() || !running).then(|| s.name())
            })
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!("not up: {}", down.join(", ")))
        }
    }

    fn collect(&self, out: &mut Series<'_, '_>) -> fmt::Result {
        let roles = [Role::Nats, Role::Zone, Role::Gateway];
        let names = ["nats", "zone", "gateway"];
        let restarts: Vec<(&str, u64)> = roles
            .iter()
            .zip(names)
            .map(|(r, n)| (n, self.0.restarts(*r)))
            .collect();
        let (mut up, mut all) = ([0.0f64; 3], [0.0f64; 3]);
        {
            let mut procs = self.0.lock();
            for s in procs.all_mut() {
                let i = role_index(s.proc.role);
                all[i] += 1.0;
                if s.is_up() && matches!(s.proc.child.try_wait(), Ok(None)) {
                    up[i] += 1.0;
                }
            }
        }
        out.counters(
            "supervisor_restarts",
            "Children started again (after an exit, a hang, or a NATS restart asked for)",
            "role",
            &restarts,
        )?;
        let per = |v: [f64; 3]| -> Vec<(&str, f64)> { names.iter().copied().zip(v).collect() };
        out.gauges(
            "supervisor_children_up",
            "Children running and ready now",
            "role",
            &per(up),
        )?;
        out.gauges(
            "supervisor_children",
            "Children the supervisor keeps",
            "role",
            &per(all),
        )
    }
}
