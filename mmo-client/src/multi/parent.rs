//! The parent's side of a multi-process run: the children as the ramp's [`Group`], fed by
//! their lines; the ramp itself is [`crate::group::drive`], as for one process.

use std::collections::VecDeque;
use std::io::{self, BufRead, Write};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Weak};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use super::wire::{Counts, Link, Up};
use crate::group::{
    self, new_hist, self_cpu_time, Added, Finish, Group, SecondFigures, MAX_DELAY_MS,
};
use crate::map::{merge_maps, IdMap, MapSnapshot, MapSource, Probe};
use crate::ramp::DelayTracker;
use crate::report::{ChildSummary, Errors, Report, Second};
use crate::settings::Settings;

/// How long the parent waits for every child's hello, and for their ends.
const HELLO_WAIT: Duration = Duration::from_secs(30);
const END_WAIT: Duration = Duration::from_secs(15);

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

/// The map the children last sent, for a live view's [`Probe`].
struct LastMap(Mutex<Option<MapSnapshot>>);

impl MapSource for LastMap {
    fn map_now(&self) -> Option<MapSnapshot> {
        self.0.lock().clone()
    }
}

/// The child processes as one group: the global tracker fed with every sample they forward,
/// adds to the child with the fewest live clients, sheds to the child of the oldest add.
struct Children {
    kids: Vec<Kid>,
    rx: mpsc::Receiver<(usize, Msg)>,
    tracker: DelayTracker,
    /// The highest the tracker went since the ramp last asked (the samples come in batches).
    tracked_max: u64,
    /// The delays of the second under way.
    hist: Histogram<u64>,
    /// Which child got each add, oldest first: a shed goes to the child of the oldest.
    order: VecDeque<usize>,
    /// Samples counted by the parent (those it fed its tracker), apart from the children's
    /// own counts (`Counts::samples`), which the merged report checks against.
    fed: u64,
    cap: usize,
    fd_limited_to: Option<usize>,
    backend: String,
    live_map: Arc<LastMap>,
    /// Ask the children for their maps once a second.
    ask_maps: bool,
    cpu0: Duration,
}

impl Children {
    /// Feeds one child's line into the global state; a line that ends the run says why.
    fn take(&mut self, i: usize, msg: Msg) -> Option<String> {
        match msg {
            Msg::Up(Up::Tick { d, c }) => {
                self.fed += d.len() as u64;
                for delay in d {
                    let delay = u64::from(delay);
                    self.tracker.sample(delay);
                    self.tracked_max = self.tracked_max.max(self.tracker.get());
                    if delay < MAX_DELAY_MS {
                        let _ = self.hist.record(delay);
                    }
                }
                self.kids[i].c = c;
            }
            Msg::Up(Up::Map { players, npcs }) => {
                self.kids[i].map = Some((players, npcs));
                *self.live_map.0.lock() =
                    Some(merge_maps(self.kids.iter().filter_map(|k| k.map.as_ref())));
            }
            Msg::Up(Up::End {
                c,
                cpu_s,
                players,
                npcs,
            }) => {
                self.kids[i].end = Some((c, cpu_s));
                self.kids[i].map = Some((players, npcs));
            }
            Msg::Up(Up::Hello { .. }) => {
                return Some(format!("client process {i}: a second hello"));
            }
            Msg::Bad(e) => return Some(format!("client process {i}: {e}")),
            Msg::Gone => {
                self.kids[i].gone = true;
                if self.kids[i].end.is_none() {
                    return Some(format!("client process {i} ended during the run"));
                }
            }
        }
        None
    }

    fn sum(&self, f: fn(&Counts) -> u64) -> u64 {
        self.kids.iter().map(|k| f(&k.c)).sum()
    }

    fn errors(&self) -> Errors {
        let mut e = Errors::default();
        for k in &self.kids {
            e.add(&k.c.errors);
        }
        e
    }
}

impl Group for Children {
    fn cap(&self) -> usize {
        self.cap
    }

    fn take_in(&mut self) -> Result<(), String> {
        let mut problem = None;
        while let Ok((i, msg)) = self.rx.try_recv() {
            if let Some(why) = self.take(i, msg) {
                problem = Some(why);
            }
        }
        problem.map_or(Ok(()), Err)
    }

    fn tracked(&self) -> u64 {
        self.tracker.get()
    }

    fn take_tracked_max(&mut self) -> u64 {
        std::mem::take(&mut self.tracked_max)
    }

    fn live(&self) -> usize {
        self.kids.iter().map(Kid::live).sum()
    }

    fn active(&self) -> usize {
        self.kids.iter().map(|k| k.c.active).sum()
    }

    fn add(&mut self, live: usize) -> Added {
        let pick = self
            .kids
            .iter()
            .enumerate()
            .filter(|(_, k)| !k.gone && !k.c.full && k.live() < k.cap)
            .min_by_key(|(_, k)| k.live())
            .map(|(i, _)| i);
        match pick {
            Some(i) => {
                if self.kids[i].command(b'a') {
                    self.kids[i].sent_adds += 1;
                    self.order.push_back(i);
                    Added::Started
                } else {
                    Added::NotNow
                }
            }
            None => {
                // Every child is at its cap: the open-files limits are the cap now.
                if self.kids.iter().any(|k| k.c.full) && self.fd_limited_to.is_none() {
                    self.fd_limited_to = Some(live);
                    tracing::warn!(
                        "stress: the client processes' open-files limits stop the ramp at {live} clients"
                    );
                }
                Added::AtCap
            }
        }
    }

    fn shed(&mut self) {
        while let Some(i) = self.order.pop_front() {
            if self.kids[i].command(b's') {
                self.kids[i].sent_sheds += 1;
                break;
            }
        }
    }

    fn second(&mut self) -> SecondFigures {
        let hist = std::mem::replace(&mut self.hist, new_hist());
        if self.ask_maps {
            for k in self.kids.iter_mut() {
                k.command(b'm');
            }
        }
        SecondFigures {
            hist,
            packets_in: self.sum(|c| c.packets_in),
            packets_out: self.sum(|c| c.packets_out),
            errors: self.errors(),
        }
    }

    fn probe(&self) -> Probe {
        let weak: Weak<dyn MapSource> = Arc::downgrade(&self.live_map) as Weak<dyn MapSource>;
        Probe::on(weak)
    }

    fn fd_limited_to(&self) -> Option<usize> {
        self.fd_limited_to
    }

    fn finish(mut self, stopped_early: &mut Option<String>) -> Finish {
        // Stop every child and take in all it still sends: the last samples, its end.
        quit_all(&mut self.kids);
        let until = Instant::now() + END_WAIT;
        while self.kids.iter().any(|k| k.end.is_none() && !k.gone) {
            let Ok((i, msg)) = self
                .rx
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            else {
                break;
            };
            let ignored = self.take(i, msg);
            if stopped_early.is_none() {
                *stopped_early = ignored.filter(|_| self.kids[i].end.is_none());
            }
        }
        let procs = self.kids.len();
        let missing: Vec<usize> = (0..procs).filter(|&i| self.kids[i].end.is_none()).collect();
        if !missing.is_empty() && stopped_early.is_none() {
            *stopped_early = Some(format!(
                "client processes {missing:?} sent no end within {END_WAIT:?}"
            ));
        }
        let children: Vec<ChildSummary> = self
            .kids
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
        for (i, k) in self.kids.iter_mut().enumerate() {
            if let Some((c, _)) = &k.end {
                k.c = c.clone();
            } else {
                tracing::warn!("stress: client process {i} sent no end; its last counts are used");
            }
        }
        let map = merge_maps(self.kids.iter().filter_map(|k| k.map.as_ref()));
        let parent_cpu = self_cpu_time().saturating_sub(self.cpu0).as_secs_f64();
        let cpu_s = parent_cpu + children.iter().map(|c| c.client_cpu_s).sum::<f64>();
        Finish {
            final_clients: children.iter().map(|c| c.final_clients).sum(),
            clients_started: children.iter().map(|c| c.clients_started).sum(),
            clients_shed: children.iter().map(|c| c.clients_shed).sum(),
            // What the parent fed its tracker: equal to the children's counts when no line
            // was lost (each child's is in `children`).
            delay_samples: self.fed,
            rest: std::mem::replace(&mut self.hist, new_hist()),
            packets_in: children.iter().map(|c| c.packets_in).sum(),
            packets_out: children.iter().map(|c| c.packets_out).sum(),
            errors: self.errors(),
            max_player_id: children.iter().filter_map(|c| c.max_player_id).max(),
            procs,
            children,
            cpu_s,
            client_backend: std::mem::take(&mut self.backend),
            map,
        }
    }
}

fn quit_all(kids: &mut [Kid]) {
    for k in kids.iter_mut() {
        k.command(b'q');
    }
}

/// The parent's side: the course's ramp on the global tracked delay, over the children at
/// the ends of `links` (each started with [`ChildSettings`](super::ChildSettings) and running
/// [`run_child`](super::run_child)), for `settings.duration` or until `stop`; `on_second` as
/// for [`crate::run_with_probe`]. Returns the merged report and map. The children are told
/// to stop (`q`) before it returns; the caller waits for their processes.
pub fn run_multi(
    settings: &Settings,
    links: Vec<Link>,
    stop: &AtomicBool,
    on_second: impl FnMut(&Second, &Errors, &Probe),
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
    let fd_limited_to = (fd_limited && total_cap < settings.max_clients).then_some(total_cap);
    let children = Children {
        kids,
        rx,
        tracker: DelayTracker::new(),
        tracked_max: 0,
        hist: new_hist(),
        order: VecDeque::new(),
        fed: 0,
        cap: total_cap,
        fd_limited_to,
        backend,
        live_map: Arc::new(LastMap(Mutex::new(None))),
        ask_maps: settings.live_map,
        cpu0,
    };
    Ok(group::drive(settings, children, stop, on_second))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multi::child::run_child;
    use crate::multi::wire::{shares, ChildSettings};
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
}
