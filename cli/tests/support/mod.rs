//! Shared by the cluster tests: a NATS server, a cluster of the real `cport` binary on it,
//! the auditor of its bus, and course clients that walk and check their own moves.
#![allow(dead_code)]

pub mod audit;

use std::time::{Duration, Instant};

use cport_cluster::supervisor::{Plan, Supervisor};
use cport_mmo_client::blocking::Client;
use cport_mmo_proto::{ClientPacket, Direction, ServerPacket, SizeField};

/// One cluster test at a time: each starts seven processes, and several at once on two cores
/// would measure the machine, not the cluster (a poisoned lock, a failed test, is taken all
/// the same).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The header every cluster test speaks.
pub const H: SizeField = SizeField::U8;

/// A throwaway `nats-server` per test (`cport_testkit::nats`): `None` when there is none
/// (the test is skipped, or fails under scripts/test).
pub use cport_testkit::nats::nats_server;

/// `PATH` for a `cport cluster` (or `cport demo --cluster`) that starts its own
/// `nats-server`: the directory of the one the tests use (`$CPORT_TEST_NATS_SERVER`, set by
/// scripts/deps/nats.sh) first, so that it finds the same program.
pub fn path_with_nats() -> std::ffi::OsString {
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os(cport_testkit::nats::NATS_VAR) {
        if let Some(d) = std::path::Path::new(&p).parent() {
            dirs.push(d.to_path_buf());
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    dirs.extend(std::env::split_paths(&path));
    std::env::join_paths(dirs).expect("PATH entries")
}

/// A cluster of this build's `cport` (zones and gateways) on the NATS server at `nats`, named
/// `cluster`, with the game's flags `game` for the zones (the gateways get `--world-size` and
/// `--max-users` from them too), and `zone_extra` for the zones only.
pub fn cluster(
    nats: &str,
    cluster: &str,
    zones: usize,
    gateways: usize,
    game: &[&str],
    zone_extra: &[&str],
) -> Supervisor {
    let plan = plan(nats, cluster, zones, gateways, game, zone_extra);
    Supervisor::start(plan).expect("the cluster starts")
}

/// The plan [`cluster`] starts (for a test that changes some of it first: restarts, the
/// liveness timeout).
pub fn plan(
    nats: &str,
    cluster: &str,
    zones: usize,
    gateways: usize,
    game: &[&str],
    zone_extra: &[&str],
) -> Plan {
    let addrs = vec!["127.0.0.1:0".parse().unwrap(); gateways];
    let mut plan = Plan::new(env!("CARGO_BIN_EXE_cport").into(), cluster, zones, addrs);
    plan.nats = Some(nats.to_string());
    plan.echo_stderr = std::env::var_os("CPORT_TEST_CLUSTER_LOG").is_some();
    plan.zone_args = game.iter().chain(zone_extra).map(Into::into).collect();
    plan.gateway_args = game
        .iter()
        .filter(|a| a.starts_with("--world-size") || a.starts_with("--max-users"))
        .map(Into::into)
        .collect();
    plan.grace = Duration::from_secs(10);
    // Two zones and a gateway start on two cores shared with other tests: give them time.
    plan.ready_within = Duration::from_secs(30);
    plan
}

/// A client's own moves: what it sent (each `CS_MOVE`'s `move_time` a per-client sequence
/// number 1, 2, 3…; a teleport echoes the last one) and what came back in its own
/// `SC_MOVE_OBJECT`s.
pub struct Walker {
    /// The course client (its view is checked on every packet).
    pub c: Client,
    /// Its name.
    pub name: String,
    seq: u32,
    /// The `move_time`s its own echoes must carry, in order.
    pub expected: Vec<u32>,
    /// The `move_time`s its own echoes carried, in order.
    pub got: Vec<u32>,
    /// Chats received: (sender, text).
    pub chats: Vec<(u32, Vec<u8>)>,
}

impl Walker {
    /// Logs in `name` through `addr`.
    pub fn login(addr: std::net::SocketAddr, name: &str) -> Walker {
        let c = Client::login(addr, H, name);
        c.s.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Walker {
            c,
            name: name.to_string(),
            seq: 0,
            expected: Vec::new(),
            got: Vec::new(),
            chats: Vec::new(),
        }
    }

    /// Sends one `CS_MOVE` with the next sequence number.
    pub fn step(&mut self, d: Direction) {
        self.seq += 1;
        self.expected.push(self.seq);
        self.c.move_(d, self.seq);
    }

    /// Sends `CS_TELEPORT` (its echo carries the last sequence number).
    pub fn teleport(&mut self) {
        self.expected.push(self.seq);
        self.c.send(&ClientPacket::Teleport);
    }

    /// Reads what arrives within `wait`, applying it to the client's view.
    pub fn pump(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Some(p) = self.c.try_recv(left) else {
                return;
            };
            self.take(p);
            if left.is_zero() {
                return;
            }
        }
    }

    fn take(&mut self, p: ServerPacket) {
        self.c.apply(&p);
        match p {
            ServerPacket::MoveObject { id, move_time, .. } if id as u32 == self.c.id => {
                self.got.push(move_time)
            }
            ServerPacket::Chat { id, mess } => self.chats.push((id as u32, mess)),
            _ => {}
        }
    }

    /// Reads until every action's echo came back (or `wait` passed).
    pub fn settle(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        while self.got.len() < self.expected.len() && Instant::now() < until {
            self.pump(Duration::from_millis(50));
        }
    }

    /// Reads until `f` holds for the client (or fails after `wait`, saying `what`).
    pub fn until(&mut self, wait: Duration, what: &str, f: impl Fn(&Walker) -> bool) {
        let until = Instant::now() + wait;
        while !f(self) {
            assert!(
                Instant::now() < until,
                "{}: {what} did not happen within {wait:?}; it sees {:?}",
                self.name,
                self.c.picture
            );
            self.pump(Duration::from_millis(20));
        }
    }

    /// Steps toward `(x, y)`, one echo at a time, until there.
    pub fn walk_to(&mut self, x: u16, y: u16) {
        let until = Instant::now() + Duration::from_secs(30);
        while self.c.pos != (x, y) {
            assert!(
                Instant::now() < until,
                "{}: could not walk to ({x}, {y})",
                self.name
            );
            let (px, py) = self.c.pos;
            let d = if px < x {
                Direction::Right
            } else if px > x {
                Direction::Left
            } else if py < y {
                Direction::Down
            } else {
                Direction::Up
            };
            self.step(d);
            let want = self.expected.len();
            self.until(Duration::from_secs(10), "its own move", |w| {
                w.got.len() >= want
            });
        }
    }

    /// The echoes came back complete, once and in order.
    pub fn check_echoes(&self) -> Result<(), String> {
        if self.got == self.expected {
            return Ok(());
        }
        let first = self
            .got
            .iter()
            .zip(&self.expected)
            .position(|(g, e)| g != e)
            .unwrap_or(self.got.len().min(self.expected.len()));
        let lo = first.saturating_sub(3);
        Err(format!(
            "{} (id {}): {} actions, {} echoes; first difference at #{first}: sent …{:?}, echoed …{:?}",
            self.name,
            self.c.id,
            self.expected.len(),
            self.got.len(),
            &self.expected[lo..(first + 4).min(self.expected.len())],
            &self.got[lo..(first + 4).min(self.got.len())],
        ))
    }
}

/// A small random generator for the walkers (xorshift; seeded per client, so a failing run
/// can be read again).
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A random direction.
    pub fn direction(&mut self) -> Direction {
        match self.next() % 4 {
            0 => Direction::Up,
            1 => Direction::Down,
            2 => Direction::Left,
            _ => Direction::Right,
        }
    }
}

/// Waits for the auditor to have seen everything the cluster sent (no new batch for
/// `quiet`, at most `within`).
pub fn quiesce(a: &audit::Auditor, quiet: Duration, within: Duration) {
    let until = Instant::now() + within;
    let mut last = a.with(|c| c.batches);
    let mut since = Instant::now();
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        let now = a.with(|c| c.batches);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}
