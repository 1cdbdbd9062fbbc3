//! The stress tester over several client processes, for more clients than one process may
//! open files (`cport stress --procs K`).
//!
//! The parent runs the course's ramp on **one global tracked delay**, exactly as one process
//! would: each child forwards every delay sample it measures (batched every
//! [`TICK`](self) = 10 ms) with its counters, and the parent feeds them to its
//! [`DelayTracker`] and its histograms. The children own the sockets and do only what they
//! are told, one line per command on their input:
//!
//! * `a`: start one dummy (the parent gives each add to the child with the fewest live
//!   clients, below its open-files cap);
//! * `s`: shed this child's oldest dummy (the parent keeps the global order of adds, so the
//!   globally oldest is shed, as one process does);
//! * `m`: send the map now (for a live view); `q`: stop, send the final counts and the map,
//!   and exit. End of input is `q` (the parent is gone).
//!
//! Children answer with JSON lines ([`run_child`]): a hello with their cap, then a tick every
//! 10 ms, maps when asked, and the end. The parent ([`run_multi`]) merges them into the same
//! [`Report`] and [`MapSnapshot`] as one process gives, with each child's share in
//! [`Report::children`]. The transport is any pair of byte streams (pipes to child processes
//! in `cport stress`, socket pairs to threads in the tests).

use std::collections::VecDeque;
use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{
    add, new_hist, self_cpu_time, shed, snapshot_ids, AddError, DelayTracker, Engine, Errors,
    IdMap, MapSnapshot, Probe, ProbeOf, Ramp, Report, Second, Settings, SettingsReport,
    MAX_DELAY_MS,
};
use cport_mmo_proto::SizeField;

/// How often a child sends its samples and counters.
const TICK: Duration = Duration::from_millis(10);
/// How long the parent waits for every child's hello, and for their ends.
const HELLO_WAIT: Duration = Duration::from_secs(30);
const END_WAIT: Duration = Duration::from_secs(15);

/// What a child process is told at start (`cport stress` passes it as one JSON argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildSettings {
    /// Its number (0..K): login names are `dummy{index}.{slot}_{generation}`.
    pub index: usize,
    /// The game server.
    pub addr: String,
    /// `u8` or `u16`.
    pub header: String,
    /// Its share of the clients (fewer if its open-files limit says so).
    pub max_clients: usize,
    /// Time between a dummy's moves (ms).
    pub move_interval_ms: u64,
    /// Its worker threads.
    pub threads: usize,
    /// Its port's backend (`None`: default).
    pub backend: Option<String>,
    /// Object ids from this up are NPCs.
    pub npc_ids_from: u32,
    /// Keep the dummies' pictures (for maps).
    pub keep_picture: bool,
}

impl ChildSettings {
    /// Child `index` of a run with `settings`, owning at most `share` clients.
    pub fn new(settings: &Settings, index: usize, share: usize) -> ChildSettings {
        ChildSettings {
            index,
            addr: settings.addr.to_string(),
            header: match settings.header {
                SizeField::U8 => "u8",
                SizeField::U16 => "u16",
            }
            .into(),
            max_clients: share,
            move_interval_ms: settings.move_interval.as_millis() as u64,
            threads: settings.threads,
            backend: settings.backend.map(|b| b.to_string()),
            npc_ids_from: settings.npc_ids_from,
            keep_picture: settings.keep_picture,
        }
    }

    fn settings(&self) -> io::Result<Settings> {
        let bad = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let addr = self
            .addr
            .parse()
            .map_err(|e| bad(format!("child address {}: {e}", self.addr)))?;
        let backend = match &self.backend {
            Some(b) => Some(b.parse().map_err(|e| bad(format!("backend {b}: {e}")))?),
            None => None,
        };
        Ok(Settings {
            header: match self.header.as_str() {
                "u8" => SizeField::U8,
                "u16" => SizeField::U16,
                h => return Err(bad(format!("header {h}"))),
            },
            max_clients: self.max_clients,
            move_interval: Duration::from_millis(self.move_interval_ms.max(1)),
            threads: self.threads.max(1),
            backend,
            npc_ids_from: self.npc_ids_from,
            keep_picture: self.keep_picture,
            ..Settings::new(addr, Duration::ZERO)
        })
    }
}

/// A child's counters since its start (each line carries them all).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Counts {
    /// Dummies started.
    started: u64,
    /// Dummies shed.
    shed: u64,
    /// `a` and `s` commands handled.
    adds: u64,
    sheds: u64,
    active: usize,
    live: usize,
    samples: u64,
    packets_in: u64,
    packets_out: u64,
    errors: Errors,
    max_id: i64,
    /// It cannot start more (its cap, or its open-files limit).
    full: bool,
}

/// One line from a child.
#[derive(Debug, Serialize, Deserialize)]
enum Up {
    Hello {
        cap: usize,
        fd_limited_to: Option<usize>,
        backend: String,
    },
    Tick {
        d: Vec<u32>,
        c: Counts,
    },
    Map {
        players: Vec<(i16, i16)>,
        npcs: Vec<(u32, (i16, i16))>,
    },
    End {
        c: Counts,
        cpu_s: f64,
        players: Vec<(i16, i16)>,
        npcs: Vec<(u32, (i16, i16))>,
    },
}

/// What one client process did (in [`Report::children`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChildSummary {
    /// Its number.
    pub index: usize,
    /// Most clients it could hold (its share, or its open-files limit).
    pub cap: usize,
    /// Dummies it started.
    pub clients_started: u64,
    /// Dummies it shed.
    pub clients_shed: u64,
    /// Its dummies logged in at the end.
    pub final_clients: usize,
    /// Delay samples it measured (each was forwarded to the parent's tracker).
    pub delay_samples: u64,
    /// Server packets it received.
    pub packets_in: u64,
    /// Client packets it sent.
    pub packets_out: u64,
    /// Errors it met.
    pub errors: Errors,
    /// Its CPU time.
    pub client_cpu_s: f64,
    /// The highest player id its dummies got.
    pub max_player_id: Option<u32>,
}

/// The two ends of the pipe to a child: commands down, JSON lines up.
pub struct Link {
    /// The child's input.
    pub to: Box<dyn Write + Send>,
    /// The child's output.
    pub from: Box<dyn BufRead + Send>,
}

fn send_up(out: &mut impl Write, up: &Up) -> io::Result<()> {
    serde_json::to_writer(&mut *out, up).map_err(io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// A child's side: opens the sockets of `cs`, does what the lines of `input` say, reports
/// on `out` (see the module's docs) and returns after `q` or the end of `input`. An error
/// writing `out` (the parent is gone) ends it too.
pub fn run_child(
    cs: &ChildSettings,
    input: impl BufRead + Send + 'static,
    mut out: impl Write,
) -> io::Result<()> {
    let settings = cs.settings()?;
    let engine = Engine::start(&settings, format!("dummy{}.", cs.index), true)?;
    let sh = engine.sh.clone();
    send_up(
        &mut out,
        &Up::Hello {
            cap: engine.max_clients,
            fd_limited_to: engine.fd_limited_to,
            backend: engine.client_backend.clone(),
        },
    )?;
    let (tx, rx) = mpsc::channel::<u8>();
    std::thread::Builder::new()
        .name(format!("stress-child-{}-in", cs.index))
        .spawn(move || {
            for line in input.lines() {
                let Ok(line) = line else { break };
                let Some(&c) = line.as_bytes().first() else {
                    continue;
                };
                if tx.send(c).is_err() || c == b'q' {
                    return;
                }
            }
            let _ = tx.send(b'q');
        })?;
    let mut c = Counts {
        max_id: -1,
        ..Counts::default()
    };
    let seed = (cs.index as u64) << 48;
    let counts = |c: &mut Counts| {
        c.active = sh.active.load(Relaxed);
        c.live = sh.live.load(Relaxed);
        c.samples = sh.samples.load(Relaxed);
        c.packets_in = sh.packets_in.load(Relaxed);
        c.packets_out = sh.packets_out.load(Relaxed);
        c.errors = sh.errors.get();
        c.max_id = sh.max_id.load(Relaxed);
    };
    let take_samples = || std::mem::take(&mut *sh.forward.as_ref().expect("forwarding").lock());
    let mut next_tick = Instant::now() + TICK;
    let mut fd_warned = false;
    let result = loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(b'a') => {
                c.adds += 1;
                match add(&sh, seed | c.adds) {
                    Ok(()) => c.started += 1,
                    Err(AddError::Full) => c.full = true,
                    Err(AddError::FdLimit(e)) => {
                        c.full = true;
                        if !fd_warned {
                            fd_warned = true;
                            tracing::warn!(
                                "stress child {}: the open-files limit stops it at {} clients ({e})",
                                cs.index,
                                sh.live.load(Relaxed)
                            );
                        }
                    }
                    Err(AddError::Other(e)) => {
                        sh.errors.connect_failed.fetch_add(1, Relaxed);
                        tracing::debug!("stress: could not start a client: {e}");
                    }
                }
            }
            Ok(b's') => {
                c.sheds += 1;
                if shed(&sh) {
                    c.shed += 1;
                }
            }
            Ok(b'm') => {
                let (players, npcs) = snapshot_ids(&sh);
                if let Err(e) = send_up(&mut out, &Up::Map { players, npcs }) {
                    break Err(e);
                }
            }
            Ok(b'q') | Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= next_tick {
            next_tick += TICK;
            counts(&mut c);
            let d = take_samples();
            if let Err(e) = send_up(&mut out, &Up::Tick { d, c: c.clone() }) {
                break Err(e);
            }
        }
    };
    let (players, npcs) = snapshot_ids(&sh);
    let active = sh.active.load(Relaxed);
    let cpu = engine.stop();
    // The samples that came in since the last tick, then the end: the parent has every one.
    counts(&mut c);
    c.active = active;
    result?;
    send_up(
        &mut out,
        &Up::Tick {
            d: take_samples(),
            c: c.clone(),
        },
    )?;
    send_up(
        &mut out,
        &Up::End {
            c,
            cpu_s: cpu.as_secs_f64(),
            players,
            npcs,
        },
    )
}

/// What the parent knows of a child.
struct Kid {
    to: Box<dyn Write + Send>,
    cap: usize,
    c: Counts,
    sent_adds: u64,
    sent_sheds: u64,
    map: Option<IdMap>,
    end: Option<(Counts, f64)>,
    gone: bool,
}

impl Kid {
    /// Live clients, counting the commands it has not handled yet.
    fn live(&self) -> usize {
        let pending_adds = self.sent_adds.saturating_sub(self.c.adds) as usize;
        let pending_sheds = self.sent_sheds.saturating_sub(self.c.sheds) as usize;
        (self.c.live + pending_adds).saturating_sub(pending_sheds)
    }

    fn command(&mut self, c: u8) -> bool {
        if self.gone {
            return false;
        }
        let ok = self.to.write_all(&[c, b'\n']).is_ok() && self.to.flush().is_ok();
        if !ok {
            self.gone = true;
        }
        ok
    }
}

enum Msg {
    Up(Up),
    Bad(String),
    Gone,
}

/// Merges the maps of the children (an NPC several see is drawn once).
fn merge_maps<'a>(maps: impl Iterator<Item = &'a IdMap>) -> MapSnapshot {
    let mut m = MapSnapshot {
        world_size: cport_mmo_proto::W_WIDTH,
        ..MapSnapshot::default()
    };
    let mut seen = super::IdSet::default();
    for (players, npcs) in maps {
        m.players.extend_from_slice(players);
        for &(id, p) in npcs {
            if seen.insert(id) {
                m.npcs.push(p);
            }
        }
    }
    m
}

/// The parent's side: the course's ramp on the global tracked delay, over the children at
/// the ends of `links` (each started with [`ChildSettings`] and running [`run_child`]), for
/// `settings.duration` or until `stop`; `on_second` as for [`super::run_with_probe`].
/// Returns the merged report and map. The children are told to stop (`q`) before it
/// returns; the caller waits for their processes.
pub fn run_multi(
    settings: &Settings,
    links: Vec<Link>,
    stop: &AtomicBool,
    mut on_second: impl FnMut(&Second, &Errors, &Probe),
) -> io::Result<(Report, MapSnapshot)> {
    let cpu0 = self_cpu_time();
    let procs = links.len();
    let (tx, rx) = mpsc::channel::<(usize, Msg)>();
    let mut kids = Vec::with_capacity(procs);
    for (i, link) in links.into_iter().enumerate() {
        let tx = tx.clone();
        let from = link.from;
        std::thread::Builder::new()
            .name(format!("stress-parent-{i}"))
            .spawn(move || {
                for line in from.lines() {
                    let msg = match line {
                        Ok(l) => match serde_json::from_str::<Up>(&l) {
                            Ok(up) => Msg::Up(up),
                            Err(e) => Msg::Bad(format!("{e}: {l:.80}")),
                        },
                        Err(e) => Msg::Bad(e.to_string()),
                    };
                    if tx.send((i, msg)).is_err() {
                        return;
                    }
                }
                let _ = tx.send((i, Msg::Gone));
            })?;
        kids.push(Kid {
            to: link.to,
            cap: 0,
            c: Counts {
                max_id: -1,
                ..Counts::default()
            },
            sent_adds: 0,
            sent_sheds: 0,
            map: None,
            end: None,
            gone: false,
        });
    }
    drop(tx);
    let quit_all = |kids: &mut Vec<Kid>| {
        for k in kids.iter_mut() {
            k.command(b'q');
        }
    };
    // Every child's hello first: its cap and backend.
    let (mut fd_limited, mut backend, mut hellos) = (false, String::new(), 0);
    let until = Instant::now() + HELLO_WAIT;
    while hellos < procs {
        let wait = until.saturating_duration_since(Instant::now());
        let failed = match rx.recv_timeout(wait) {
            Ok((
                i,
                Msg::Up(Up::Hello {
                    cap,
                    fd_limited_to,
                    backend: b,
                }),
            )) => {
                kids[i].cap = cap;
                fd_limited |= fd_limited_to.is_some();
                backend = b;
                hellos += 1;
                None
            }
            Ok((i, Msg::Gone)) => Some(format!("client process {i} ended before its hello")),
            Ok((i, Msg::Bad(e))) => Some(format!("client process {i}: {e}")),
            // Ticks of a child that said hello already, while another is still starting:
            // its counts come again in every tick, and it has no samples before an add.
            Ok((i, Msg::Up(Up::Tick { .. }))) if kids[i].cap > 0 => None,
            Ok((i, Msg::Up(_))) => Some(format!("client process {i}: no hello first")),
            Err(_) => Some(format!(
                "only {hellos} of {procs} client processes said hello within {HELLO_WAIT:?}"
            )),
        };
        if let Some(why) = failed {
            quit_all(&mut kids);
            return Err(io::Error::other(why));
        }
    }
    let total_cap = kids
        .iter()
        .map(|k| k.cap)
        .sum::<usize>()
        .min(settings.max_clients.max(1));
    let mut fd_limited_to = (fd_limited && total_cap < settings.max_clients).then_some(total_cap);

    let live_map = Arc::new(Mutex::new(None::<MapSnapshot>));
    let probe = Probe(ProbeOf::Remote(Arc::downgrade(&live_map)));
    let tracker = DelayTracker::new();
    let mut hist = new_hist();
    let mut whole = new_hist();
    // Which child got each add, oldest first: a shed goes to the child of the oldest.
    let mut order: VecDeque<usize> = VecDeque::new();
    let mut problem: Option<String> = None;
    // Feeds one child's line into the global state; returns the samples it fed the tracker.
    let take = |i: usize,
                msg: Msg,
                kids: &mut Vec<Kid>,
                tracked_max: &mut u64,
                hist: &mut hdrhistogram::Histogram<u64>,
                problem: &mut Option<String>|
     -> u64 {
        match msg {
            Msg::Up(Up::Tick { d, c }) => {
                let n = d.len() as u64;
                for delay in d {
                    let delay = u64::from(delay);
                    tracker.sample(delay);
                    *tracked_max = (*tracked_max).max(tracker.get());
                    if delay < MAX_DELAY_MS {
                        let _ = hist.record(delay);
                    }
                }
                kids[i].c = c;
                return n;
            }
            Msg::Up(Up::Map { players, npcs }) => {
                kids[i].map = Some((players, npcs));
                *live_map.lock() = Some(merge_maps(kids.iter().filter_map(|k| k.map.as_ref())));
            }
            Msg::Up(Up::End {
                c,
                cpu_s,
                players,
                npcs,
            }) => {
                kids[i].end = Some((c, cpu_s));
                kids[i].map = Some((players, npcs));
            }
            Msg::Up(Up::Hello { .. }) => {
                *problem = Some(format!("client process {i}: a second hello"))
            }
            Msg::Bad(e) => *problem = Some(format!("client process {i}: {e}")),
            Msg::Gone => {
                kids[i].gone = true;
                if kids[i].end.is_none() {
                    *problem = Some(format!("client process {i} ended during the run"));
                }
            }
        }
        0
    };
    // Samples counted by the parent (those it fed its tracker), apart from the children's
    // own counts (`Counts::samples`), which the merged report checks against.
    let mut fed = 0u64;
    let start = Instant::now();
    let end = start + settings.duration;
    let mut ramp = Ramp::new(settings.ramp_interval, settings.delay_limit_ms, total_cap);
    ramp.shed_interval = settings.shed_interval;
    let tick =
        (settings.ramp_interval / 4).clamp(Duration::from_micros(200), Duration::from_millis(5));
    let mut series = Vec::new();
    let mut next_second = start + Duration::from_secs(1);
    let (mut last_in, mut last_out) = (0u64, 0u64);
    let mut last_t = start;
    let (mut max_under, mut peak) = (0usize, 0usize);
    let mut stopped_early = None;
    let mut tracked_max = 0;
    let (mut refusing, mut last_refused) = (0u32, 0u64);
    let sum = |kids: &[Kid], f: fn(&Counts) -> u64| kids.iter().map(|k| f(&k.c)).sum::<u64>();
    let errors_of = |kids: &[Kid]| {
        let mut e = Errors::default();
        for k in kids {
            let c = &k.c.errors;
            e.connect_refused += c.connect_refused;
            e.connect_failed += c.connect_failed;
            e.fd_limit += c.fd_limit;
            e.server_closed += c.server_closed;
            e.login_fail += c.login_fail;
            e.protocol += c.protocol;
            e.send_failed += c.send_failed;
        }
        e
    };
    loop {
        while let Ok((i, msg)) = rx.try_recv() {
            fed += take(i, msg, &mut kids, &mut tracked_max, &mut hist, &mut problem);
        }
        if let Some(why) = problem.take() {
            stopped_early = Some(why);
            break;
        }
        let now = Instant::now();
        if now >= end {
            break;
        }
        if stop.load(Relaxed) {
            stopped_early = Some("interrupted".to_string());
            break;
        }
        let tracked = tracker.get();
        let live: usize = kids.iter().map(Kid::live).sum();
        let active: usize = kids.iter().map(|k| k.c.active).sum();
        peak = peak.max(active);
        tracked_max = tracked_max.max(tracked);
        if tracked < settings.delay_limit_ms {
            max_under = max_under.max(active);
        }
        match ramp.step(now - start, tracked, live) {
            super::Action::Add => {
                let pick = kids
                    .iter()
                    .enumerate()
                    .filter(|(_, k)| !k.gone && !k.c.full && k.live() < k.cap)
                    .min_by_key(|(_, k)| k.live())
                    .map(|(i, _)| i);
                match pick {
                    Some(i) => {
                        if kids[i].command(b'a') {
                            kids[i].sent_adds += 1;
                            order.push_back(i);
                        }
                    }
                    None => {
                        // Every child is at its cap: the open-files limits are the cap now.
                        ramp.cap = live;
                        if kids.iter().any(|k| k.c.full) && fd_limited_to.is_none() {
                            fd_limited_to = Some(live);
                            tracing::warn!(
                                "stress: the client processes' open-files limits stop the ramp at {live} clients"
                            );
                        }
                    }
                }
            }
            super::Action::Shed => {
                while let Some(i) = order.pop_front() {
                    if kids[i].command(b's') {
                        kids[i].sent_sheds += 1;
                        break;
                    }
                }
            }
            super::Action::Wait => {}
        }
        if now >= next_second {
            whole.add(&hist).expect("same bounds");
            let (pin, pout) = (sum(&kids, |c| c.packets_in), sum(&kids, |c| c.packets_out));
            let dt = now.duration_since(last_t).as_secs_f64().max(1e-3);
            let errors = errors_of(&kids);
            let sec = Second {
                t: (now - start).as_secs_f64(),
                clients: active,
                live,
                tracked_delay_ms: tracked,
                tracked_max_ms: std::mem::take(&mut tracked_max),
                samples: hist.len(),
                p50_ms: hist.value_at_quantile(0.5),
                p95_ms: hist.value_at_quantile(0.95),
                p99_ms: hist.value_at_quantile(0.99),
                max_ms: hist.max(),
                packets_in_per_s: ((pin.saturating_sub(last_in)) as f64 / dt).round() as u64,
                packets_out_per_s: ((pout.saturating_sub(last_out)) as f64 / dt).round() as u64,
                errors: errors.total(),
                max_under_limit: max_under,
            };
            hist.reset();
            (last_in, last_out, last_t) = (pin, pout, now);
            let refused = errors.connect_refused + errors.connect_failed;
            refusing = if refused > last_refused && active == 0 {
                refusing + 1
            } else {
                0
            };
            last_refused = refused;
            if settings.live_map {
                for k in kids.iter_mut() {
                    k.command(b'm');
                }
            }
            on_second(&sec, &errors, &probe);
            series.push(sec);
            next_second += Duration::from_secs(1);
            if refusing >= 3 {
                stopped_early = Some(format!(
                    "the server refused every connect for {refusing} s: gone?"
                ));
                break;
            }
        }
        std::thread::sleep(tick);
    }
    let elapsed = start.elapsed();
    let final_tracked = tracker.get();
    // Stop every child and take in all it still sends: the last samples, its end.
    quit_all(&mut kids);
    let until = Instant::now() + END_WAIT;
    while kids.iter().any(|k| k.end.is_none() && !k.gone) {
        let Ok((i, msg)) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) else {
            break;
        };
        let mut ignored = None;
        fed += take(i, msg, &mut kids, &mut tracked_max, &mut hist, &mut ignored);
        if stopped_early.is_none() {
            stopped_early = ignored.filter(|_| kids[i].end.is_none());
        }
    }
    whole.add(&hist).expect("same bounds");
    let missing: Vec<usize> = (0..procs).filter(|&i| kids[i].end.is_none()).collect();
    if !missing.is_empty() && stopped_early.is_none() {
        stopped_early = Some(format!(
            "client processes {missing:?} sent no end within {END_WAIT:?}"
        ));
    }
    let children: Vec<ChildSummary> = kids
        .iter()
        .enumerate()
        .map(|(index, k)| {
            let (c, cpu) = k.end.clone().unwrap_or_else(|| (k.c.clone(), 0.0));
            ChildSummary {
                index,
                cap: k.cap,
                clients_started: c.started,
                clients_shed: c.shed,
                final_clients: c.active,
                delay_samples: c.samples,
                packets_in: c.packets_in,
                packets_out: c.packets_out,
                errors: c.errors,
                client_cpu_s: cpu,
                max_player_id: u32::try_from(c.max_id).ok(),
            }
        })
        .collect();
    for (i, k) in kids.iter_mut().enumerate() {
        if let Some((c, _)) = &k.end {
            k.c = c.clone();
        } else {
            tracing::warn!("stress: client process {i} sent no end; its last counts are used");
        }
    }
    let map = merge_maps(kids.iter().filter_map(|k| k.map.as_ref()));
    let errors = errors_of(&kids);
    let parent_cpu = self_cpu_time().saturating_sub(cpu0).as_secs_f64();
    let cpu = parent_cpu + children.iter().map(|c| c.client_cpu_s).sum::<f64>();
    let report = Report {
        max_clients_under_limit: max_under,
        peak_clients: peak,
        ramp_max_recorded: ramp.max_recorded(),
        final_tracked_delay_ms: final_tracked,
        final_clients: children.iter().map(|c| c.final_clients).sum(),
        clients_started: children.iter().map(|c| c.clients_started).sum(),
        clients_shed: children.iter().map(|c| c.clients_shed).sum(),
        // What the parent fed its tracker: equal to the children's counts when no line was
        // lost (each child's is in `children`).
        delay_samples: fed,
        p50_ms: whole.value_at_quantile(0.5),
        p99_ms: whole.value_at_quantile(0.99),
        max_ms: whole.max(),
        packets_in: children.iter().map(|c| c.packets_in).sum(),
        packets_out: children.iter().map(|c| c.packets_out).sum(),
        series,
        errors,
        fd_limited_to,
        max_player_id: children.iter().filter_map(|c| c.max_player_id).max(),
        procs,
        children,
        client_cpu_s: cpu,
        client_cpu_pct: 100.0 * cpu / elapsed.as_secs_f64().max(1e-3),
        server_cpu_s: None,
        server: None,
        elapsed_s: elapsed.as_secs_f64(),
        stopped_early,
        settings: SettingsReport {
            addr: settings.addr.to_string(),
            header: match settings.header {
                SizeField::U8 => "u8",
                SizeField::U16 => "u16",
            }
            .to_string(),
            max_clients: total_cap,
            delay_limit_ms: settings.delay_limit_ms,
            duration_s: settings.duration.as_secs_f64(),
            ramp_interval_ms: settings.ramp_interval.as_secs_f64() * 1e3,
            shed_interval_ms: settings.shed_interval.as_secs_f64() * 1e3,
            move_interval_ms: settings.move_interval.as_secs_f64() * 1e3,
            client_threads: settings.threads.max(1),
            client_backend: backend,
        },
    };
    drop(live_map);
    Ok((report, map))
}

/// Splits `total` clients over `procs` processes (the first ones get one more).
pub fn shares(total: usize, procs: usize) -> Vec<usize> {
    let procs = procs.max(1);
    (0..procs)
        .map(|i| total / procs + usize::from(i < total % procs))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// Two "processes" (threads at the ends of socket pairs, speaking the same lines as the
    /// child processes of `cport stress`) drive one game: the parent's report is the sum of
    /// theirs, every sample they measured reached the parent's tracker, and every client
    /// started is logged in at the end, with dense ids.
    #[test]
    fn two_children_share_the_clients_and_the_report_is_their_sum() {
        let server = cport_mmo::start(cport_mmo::Config {
            npcs: 2_000,
            threads: 1,
            ..cport_mmo::Config::default()
        })
        .expect("start the game");
        let settings = Settings {
            max_clients: 300,
            ramp_interval: Duration::from_millis(2),
            threads: 1,
            ..Settings::new(server.local_addr(), Duration::from_secs(4))
        };
        let mut links = Vec::new();
        let mut children = Vec::new();
        for (i, share) in shares(settings.max_clients, 2).into_iter().enumerate() {
            let (a, b) = UnixStream::pair().expect("socket pair");
            let cs = ChildSettings::new(&settings, i, share);
            let input = io::BufReader::new(b.try_clone().expect("clone"));
            children.push(std::thread::spawn(move || {
                // The second starts late: the first one's ticks come before its hello.
                std::thread::sleep(Duration::from_millis(50 * i as u64));
                run_child(&cs, input, b)
            }));
            links.push(Link {
                to: Box::new(a.try_clone().expect("clone")),
                from: Box::new(io::BufReader::new(a)),
            });
        }
        let mut seconds = 0;
        let (r, map) = run_multi(&settings, links, &AtomicBool::new(false), |_, _, p| {
            seconds += 1;
            assert!(p.map().is_none(), "no live map unless asked");
        })
        .expect("multi-process run");
        for c in children {
            c.join().expect("child thread").expect("child run");
        }
        assert_eq!(r.stopped_early, None);
        assert_eq!(r.procs, 2);
        assert_eq!(r.children.len(), 2);
        assert_eq!(seconds, r.series.len());
        let sum = |f: fn(&ChildSummary) -> u64| r.children.iter().map(f).sum::<u64>();
        assert_eq!(r.clients_started, sum(|c| c.clients_started));
        assert_eq!(r.clients_shed, sum(|c| c.clients_shed));
        assert_eq!(r.final_clients as u64, sum(|c| c.final_clients as u64));
        assert_eq!(r.packets_in, sum(|c| c.packets_in));
        assert_eq!(r.packets_out, sum(|c| c.packets_out));
        assert_eq!(r.delay_samples, sum(|c| c.delay_samples), "no sample lost");
        assert!(r.delay_samples > 0);
        // No client lost: all 300 started, each child its share, all in game at the end.
        assert_eq!(r.errors.total(), 0, "{}", r.errors);
        assert_eq!(r.clients_shed, 0);
        assert_eq!(r.clients_started, 300);
        assert_eq!(r.final_clients, 300);
        for c in &r.children {
            assert_eq!(c.clients_started, 150, "child {}", c.index);
            assert_eq!(c.final_clients, 150, "child {}", c.index);
        }
        assert_eq!(server.stats().logins, 300);
        assert_eq!(r.max_player_id, Some(299), "ids are dense from 0");
        assert_eq!(r.max_clients_under_limit, 300);
        assert_eq!(map.players.len(), 300);
        server.shutdown(Duration::from_secs(2));
    }

    #[test]
    fn shares_split_evenly_and_add_up() {
        assert_eq!(shares(10, 3), vec![4, 3, 3]);
        assert_eq!(shares(20_000, 2), vec![10_000, 10_000]);
        assert_eq!(shares(5, 0), vec![5]);
        assert_eq!(shares(7, 4).iter().sum::<usize>(), 7);
    }
}
