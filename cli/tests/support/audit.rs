//! The auditor: a raw NATS subscriber that reads every batch a cluster sends on the bus and
//! checks player ownership from the real messages, not from what the processes say of
//! themselves.
//!
//! It speaks the NATS text protocol over a plain `TcpStream` ([`Nats`]: `CONNECT`, `SUB`,
//! `PUB`, `PING`/`PONG`, `MSG`), so that it shares no code with the bus it audits, and decodes
//! each payload with `cport_mmo::cluster::wire`. The rules ([`Checker`]):
//!
//! - a zone owns player P from the gateway's `Confirm{P, e}` to it until that zone sends a
//!   `Transfer` of P (hand-off), P departs (the gateway's `Disconnect` to it, or the zone's
//!   `Close` of P's session), or a later `Confirm` moves it;
//! - never two owners at once: a `Confirm` to zone B while zone A still owns P is a violation;
//! - epochs only grow: each `Confirm` of P has a larger epoch than the last, except the
//!   fall-back `Confirm` to the same zone at the same epoch after its `HandoffCancel`;
//! - every `Owned` and every `HandoffCancel` is answered by exactly one of
//!   `Confirm`/`Revoke`/`Disconnect` (and a `Confirm` or `Revoke` answers one of them);
//! - a zone hands off (`Transfer`, not a login) only a player it owns.
//!
//! Faults (issue 26): a batch from a newer run (incarnation) of a zone ends that zone's
//! ownerships (the old run is gone; its players come back through `Resume`); a batch from an
//! older run than the newest seen is a replaced run's and is ignored (the receivers drop it
//! too: counted in `stale_batches`); an `Offline` ends its player's ownership (a zone logged
//! it out, e.g. its gateway died); a `Confirm` that restates the last one (the gateway's
//! fall-back after a hand-off whose answers were lost) is allowed, as is the `Revoke` of
//! an epoch above the last `Confirm` that the same fall-back sends before any claim. The auditor's own NATS
//! connection may break (a NATS restart): it reconnects, counts the break, and forgets every
//! ownership and open claim then (what it missed cannot be judged), checking again from
//! the next `Confirm`s.
//!
//! A violation is reported with the player's message trail. NATS delivers to one subscriber
//! in the order the server received the messages, and each message of a hand-off is caused
//! by the one before it, so the auditor sees them in causal order.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cport_mmo::cluster::wire::{self, Msg, Source};

// --- the NATS text protocol -------------------------------------------------------------

/// One protocol message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `INFO {json}`.
    Info(String),
    /// `MSG subject sid [reply] len` and its payload.
    Msg {
        /// The subject.
        subject: String,
        /// The subscription id.
        sid: String,
        /// The reply subject, if any.
        reply: Option<String>,
        /// The payload.
        payload: Bytes,
    },
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK`.
    Ok,
    /// `-ERR 'why'`.
    Err(String),
}

/// Reads one frame from the front of `buf`: `Ok(Some((frame, used)))`, `Ok(None)` when more
/// bytes are needed, `Err` for what is not the protocol.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err("a protocol line longer than 64 KiB".into());
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..eol]).map_err(|_| "a line that is not UTF-8")?;
    let after = eol + 2;
    let (op, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
    let frame = match op.to_ascii_uppercase().as_str() {
        "INFO" => Frame::Info(rest.trim().to_string()),
        "PING" => Frame::Ping,
        "PONG" => Frame::Pong,
        "+OK" => Frame::Ok,
        "-ERR" => Frame::Err(rest.trim().trim_matches('\'').to_string()),
        "MSG" => {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (subject, sid, reply, len) = match f.as_slice() {
                [s, id, n] => (s, id, None, n),
                [s, id, r, n] => (s, id, Some(r.to_string()), n),
                _ => return Err(format!("a MSG line with {} fields: {line:?}", f.len())),
            };
            let len: usize = len
                .parse()
                .map_err(|_| format!("a MSG length that is not a number: {line:?}"))?;
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            if &buf[after + len..after + len + 2] != b"\r\n" {
                return Err(format!("a MSG payload not followed by CRLF: {line:?}"));
            }
            let payload = Bytes::copy_from_slice(&buf[after..after + len]);
            return Ok(Some((
                Frame::Msg {
                    subject: subject.to_string(),
                    sid: sid.to_string(),
                    reply,
                    payload,
                },
                after + len + 2,
            )));
        }
        _ => return Err(format!("an unknown protocol line: {line:?}")),
    };
    Ok(Some((frame, after)))
}

/// A NATS connection speaking the text protocol over a blocking socket.
pub struct Nats {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Nats {
    /// Connects to `url` (`nats://host:port` or `host:port`) and says `CONNECT`.
    pub fn connect(url: &str) -> io::Result<Nats> {
        let addr = url.trim_start_matches("nats://");
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut n = Nats { s, buf: Vec::new() };
        match n.read_frame(Duration::from_secs(5))? {
            Some(Frame::Info(_)) => {}
            other => return Err(io::Error::other(format!("expected INFO, got {other:?}"))),
        }
        n.s.write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"cport-auditor\",\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1,\"headers\":false}\r\n",
        )?;
        Ok(n)
    }

    /// Subscribes `sid` to `subject`.
    pub fn sub(&mut self, subject: &str, sid: u32) -> io::Result<()> {
        write!(self.s, "SUB {subject} {sid}\r\n")
    }

    /// Publishes `payload` on `subject`.
    pub fn publish(&mut self, subject: &str, payload: &[u8]) -> io::Result<()> {
        let mut m = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        m.extend_from_slice(payload);
        m.extend_from_slice(b"\r\n");
        self.s.write_all(&m)
    }

    /// A round trip: once the server's `PONG` comes, it has processed everything sent
    /// before (subscriptions are in place, publications routed). Messages that arrive
    /// meanwhile are handed to `on_msg`.
    pub fn flush(&mut self, mut on_msg: impl FnMut(Frame)) -> io::Result<()> {
        self.s.write_all(b"PING\r\n")?;
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no PONG"));
            }
            match self.read_frame(left)? {
                Some(Frame::Pong) => return Ok(()),
                Some(f) => on_msg(f),
                None => {}
            }
        }
    }

    /// The next frame within `wait` (`None` if none came); answers `PING` itself (and
    /// returns it, so the caller sees the connection is alive).
    pub fn read_frame(&mut self, wait: Duration) -> io::Result<Option<Frame>> {
        let until = Instant::now() + wait;
        loop {
            match parse_frame(&self.buf) {
                Ok(Some((f, used))) => {
                    self.buf.drain(..used);
                    if f == Frame::Ping {
                        self.s.write_all(b"PONG\r\n")?;
                    }
                    return Ok(Some(f));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.s.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 64 * 1024];
            match self.s.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

// --- the ownership checker ----------------------------------------------------------------

/// Where a batch went, from its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// `<cluster>.zone.<n>`.
    Zone(u16),
    /// `<cluster>.gw.<n>`.
    Gateway(u16),
    /// Any other subject (a reply inbox).
    Other,
}

/// `<cluster>.zone.3` → `Zone(3)`.
pub fn dest_of(cluster: &str, subject: &str) -> Dest {
    let Some(rest) = subject
        .strip_prefix(cluster)
        .and_then(|r| r.strip_prefix('.'))
    else {
        return Dest::Other;
    };
    let num = |s: &str| s.parse::<u16>().ok();
    match rest.split_once('.') {
        Some(("zone", n)) => num(n).map_or(Dest::Other, Dest::Zone),
        Some(("gw", n)) => num(n).map_or(Dest::Other, Dest::Gateway),
        _ => Dest::Other,
    }
}

/// How many of a player's last messages a violation shows.
const TRAIL: usize = 40;

#[derive(Debug, Default)]
struct Player {
    /// The zone that owns it now, and at which epoch.
    owner: Option<(u16, u32)>,
    /// The last `Confirm`: zone and epoch.
    last_confirm: Option<(u16, u32)>,
    /// `Owned` claims not yet answered: (zone, epoch, gateway).
    pending_owned: Vec<(u16, u32, u16)>,
    /// `HandoffCancel`s not yet answered by the fall-back `Confirm`: (zone, epoch).
    pending_cancel: Vec<(u16, u32)>,
    /// Its session: (gateway, session).
    session: Option<(u16, u64)>,
    /// Its name (from its `Login`).
    name: String,
    /// The auditor missed messages (a reset) and has not seen a `Confirm` since: who owns it
    /// is unknown, so nothing is judged until the next `Confirm`.
    unknown: bool,
    trail: VecDeque<String>,
}

/// What the auditor counted and found.
#[derive(Debug, Default)]
pub struct Checker {
    cluster: String,
    players: HashMap<u32, Player>,
    /// (gateway, session) → player, for `Close`.
    sessions: HashMap<(u16, u64), u32>,
    /// Every rule broken, each with the player's trail.
    pub violations: Vec<String>,
    /// Batches read.
    pub batches: u64,
    /// Entries read.
    pub entries: u64,
    /// Payloads on the cluster's subjects that are not batches, or stop in a bad entry:
    /// `(subject, error)` (junk a test published, or a bug).
    pub junk: Vec<(String, String)>,
    /// `Transfer`s of a hand-off (not a login).
    pub handoffs: u64,
    /// `Confirm`s.
    pub confirms: u64,
    /// `Revoke`s.
    pub revokes: u64,
    /// `HandoffCancel`s.
    pub cancels: u64,
    /// `Login`s.
    pub logins: u64,
    /// The newest run seen of each process.
    runs: HashMap<Source, u64>,
    /// name → player, for `Offline`.
    names: HashMap<String, u32>,
    /// Zone restarts seen (a newer run of a zone spoke).
    pub zone_restarts: u64,
    /// Batches of a replaced run (ignored).
    pub stale_batches: u64,
    /// `Resume`s sent by gateways.
    pub resumes: u64,
    /// Times the auditor's connection broke and it forgot what it knew.
    pub resets: u64,
}

impl Checker {
    /// A checker for the cluster named `cluster` (its subjects' first token).
    pub fn new(cluster: &str) -> Checker {
        Checker {
            cluster: cluster.to_string(),
            ..Checker::default()
        }
    }

    /// Reads one NATS message.
    pub fn feed(&mut self, subject: &str, payload: Bytes) {
        let dest = dest_of(&self.cluster, subject);
        let (h, mut r) = match wire::read_header(payload) {
            Ok(x) => x,
            Err(e) => {
                self.junk.push((subject.to_string(), e.to_string()));
                return;
            }
        };
        self.batches += 1;
        let known = self.runs.get(&h.source).copied().unwrap_or(0);
        if h.incarnation < known {
            self.stale_batches += 1;
            while let Some(m) = r.next() {
                if let Err(e) = m {
                    self.junk.push((subject.to_string(), e.to_string()));
                }
            }
            return;
        }
        if h.incarnation > known {
            self.runs.insert(h.source, h.incarnation);
            if let (Source::Zone(z), true) = (h.source, known != 0) {
                self.zone_restarts += 1;
                self.zone_gone(z);
            }
        }
        while let Some(m) = r.next() {
            match m {
                Ok(m) => {
                    self.entries += 1;
                    self.message(h.source, dest, m);
                }
                Err(e) => self.junk.push((subject.to_string(), e.to_string())),
            }
        }
    }

    /// The old run of zone `z` is gone: nothing it owned or claimed stands.
    fn zone_gone(&mut self, z: u16) {
        for p in self.players.values_mut() {
            if p.owner.is_some_and(|(oz, _)| oz == z) {
                p.owner = None;
                p.trail.push_back(format!("zone {z} restarted: owner gone"));
            }
            p.pending_owned.retain(|&(pz, _, _)| pz != z);
            p.pending_cancel.retain(|&(pz, _)| pz != z);
        }
    }

    /// The auditor missed messages (its connection broke): it forgets every ownership and
    /// open claim, and judges again from the next ones.
    pub fn reset(&mut self) {
        self.resets += 1;
        for p in self.players.values_mut() {
            p.owner = None;
            p.last_confirm = None;
            p.pending_owned.clear();
            p.pending_cancel.clear();
            p.unknown = true;
            p.trail
                .push_back("(the auditor missed messages here)".into());
        }
    }

    fn violation(&mut self, player: u32, what: String) {
        let trail = self
            .players
            .get(&player)
            .map(|p| p.trail.iter().cloned().collect::<Vec<_>>().join("\n    "))
            .unwrap_or_default();
        self.violations
            .push(format!("player {player}: {what}; its trail:\n    {trail}"));
    }

    fn note(&mut self, player: u32, line: String) -> &mut Player {
        let p = self.players.entry(player).or_default();
        if p.trail.len() == TRAIL {
            p.trail.pop_front();
        }
        p.trail.push_back(line);
        p
    }

    /// One entry of a batch from `src` to `dest`.
    pub fn message(&mut self, src: Source, dest: Dest, m: Msg) {
        let from = match src {
            Source::Gateway(g) => format!("gw {g}"),
            Source::Zone(z) => format!("zone {z}"),
        };
        let to = match dest {
            Dest::Zone(z) => format!("zone {z}"),
            Dest::Gateway(g) => format!("gw {g}"),
            Dest::Other => "inbox".to_string(),
        };
        let at = |what: &str| format!("{from} → {to}: {what}");
        match m {
            Msg::Login {
                session,
                player,
                name,
            } => {
                self.logins += 1;
                let Source::Gateway(g) = src else { return };
                self.sessions.insert((g, session), player);
                self.names.insert(name.clone(), player);
                let p = self.note(player, at(&format!("Login {name:?} session {session}")));
                p.session = Some((g, session));
                p.name = name.clone();
                if let Some((z, e)) = p.owner {
                    self.violation(
                        player,
                        format!("logs in again while zone {z} owns it at epoch {e}"),
                    );
                }
            }
            Msg::Owned {
                session,
                player,
                epoch,
            } => {
                let (Source::Zone(z), Dest::Gateway(g)) = (src, dest) else {
                    self.note(player, at(&format!("Owned epoch {epoch} (misrouted)")));
                    return;
                };
                let p = self.note(
                    player,
                    at(&format!("Owned session {session} epoch {epoch}")),
                );
                p.pending_owned.push((z, epoch, g));
            }
            Msg::Confirm { player, epoch } => {
                self.confirms += 1;
                let Dest::Zone(z) = dest else { return };
                let p = self.note(player, at(&format!("Confirm epoch {epoch}")));
                let answered = take(&mut p.pending_owned, |&(pz, pe, _)| (pz, pe) == (z, epoch));
                let fallback = take(&mut p.pending_cancel, |&c| c == (z, epoch));
                let (owner, last) = (p.owner, p.last_confirm);
                p.owner = Some((z, epoch));
                p.last_confirm = Some((z, epoch));
                // The gateway's fall-back after a hand-off whose answers were lost restates
                // the last Confirm.
                let restated = last == Some((z, epoch));
                let fallback = fallback || restated;
                // After missed messages, this Confirm may answer an Owned never seen.
                let unknown = std::mem::take(&mut p.unknown);
                if !answered && !fallback && !unknown {
                    self.violation(
                        player,
                        format!("Confirm to zone {z} at epoch {epoch} answers no Owned and no HandoffCancel"),
                    );
                }
                if let Some((oz, oe)) = owner {
                    if oz != z {
                        self.violation(
                            player,
                            format!("two owners: zone {z} confirmed at epoch {epoch} while zone {oz} owns it at epoch {oe}"),
                        );
                    }
                }
                if let Some((lz, le)) = last {
                    let ok = epoch > le || (epoch == le && lz == z && fallback);
                    if !ok {
                        self.violation(
                            player,
                            format!("epoch went back: Confirm to zone {z} at {epoch} after zone {lz} at {le}"),
                        );
                    }
                }
            }
            Msg::Revoke { player, epoch } => {
                self.revokes += 1;
                let Dest::Zone(z) = dest else { return };
                let p = self.note(player, at(&format!("Revoke epoch {epoch}")));
                let answered = take(&mut p.pending_owned, |&(pz, pe, _)| (pz, pe) == (z, epoch))
                    || take(&mut p.pending_cancel, |&c| c == (z, epoch));
                let owner = p.owner;
                // The gateway's fall-back after a hand-off whose answers were lost refuses
                // the offered epoch before any claim at it arrived: above the last Confirm.
                let refusal = p.last_confirm.is_some_and(|(_, le)| epoch > le);
                if !answered && !refusal && !p.unknown {
                    self.violation(
                        player,
                        format!("Revoke to zone {z} at epoch {epoch} answers no Owned and no HandoffCancel"),
                    );
                }
                if owner == Some((z, epoch)) {
                    self.violation(
                        player,
                        format!("Revoke of zone {z}'s confirmed ownership at epoch {epoch}"),
                    );
                }
            }
            Msg::Disconnect { player, epoch } => {
                let Dest::Zone(z) = dest else { return };
                let p = self.note(player, at(&format!("Disconnect epoch {epoch}")));
                take(&mut p.pending_owned, |&(pz, pe, _)| (pz, pe) == (z, epoch));
                take(&mut p.pending_cancel, |&c| c == (z, epoch));
                if p.owner.is_some_and(|(oz, _)| oz == z) {
                    p.owner = None;
                }
            }
            Msg::Transfer(t) => {
                let Source::Zone(a) = src else { return };
                let kind = if t.login {
                    "login"
                } else if t.resume {
                    "resume"
                } else {
                    "hand-off"
                };
                let p = self.note(
                    t.player,
                    at(&format!(
                        "Transfer ({kind}) epoch {} at ({}, {})",
                        t.epoch, t.x, t.y
                    )),
                );
                if t.login || t.resume || p.unknown {
                    return;
                }
                let owner = p.owner;
                if matches!(owner, Some((oz, _)) if oz == a) {
                    p.owner = None;
                }
                self.handoffs += 1;
                match owner {
                    Some((oz, oe)) if oz == a => {
                        if t.epoch <= oe {
                            self.violation(
                                t.player,
                                format!(
                                    "hand-off from zone {a} at epoch {} not above its own {oe}",
                                    t.epoch
                                ),
                            );
                        }
                    }
                    _ => self.violation(
                        t.player,
                        format!("zone {a} hands it off but does not own it (owner: {owner:?})"),
                    ),
                }
            }
            Msg::HandoffBegin {
                player,
                epoch,
                to: nz,
                ..
            } => {
                self.note(
                    player,
                    at(&format!("HandoffBegin epoch {epoch} to zone {nz}")),
                );
            }
            Msg::Held { player, epoch } => {
                self.note(player, at(&format!("Held epoch {epoch}")));
            }
            Msg::HandoffCancel { player, epoch, .. } => {
                self.cancels += 1;
                let Source::Zone(z) = src else { return };
                let p = self.note(player, at(&format!("HandoffCancel epoch {epoch}")));
                p.pending_cancel.push((z, epoch));
            }
            Msg::Resume { player, epoch, .. } => {
                self.resumes += 1;
                self.note(player, at(&format!("Resume at epoch {epoch}")));
            }
            Msg::Offline { name, .. } => {
                let Some(&player) = self.names.get(&name) else {
                    return;
                };
                let Source::Zone(z) = src else { return };
                let p = self.note(player, at(&format!("Offline {name:?}")));
                if p.owner.is_some_and(|(oz, _)| oz == z) {
                    p.owner = None;
                }
            }
            Msg::Close { session, reason } => {
                let (Source::Zone(z), Dest::Gateway(g)) = (src, dest) else {
                    return;
                };
                let Some(&player) = self.sessions.get(&(g, session)) else {
                    return;
                };
                let p = self.note(player, at(&format!("Close ({reason:?})")));
                if p.owner.is_some_and(|(oz, _)| oz == z) {
                    p.owner = None;
                }
            }
            _ => {}
        }
    }

    /// At the end of a run, with the cluster quiet: the `Owned` claims never answered.
    pub fn finish(&mut self) {
        let mut open = Vec::new();
        for (&id, p) in &self.players {
            for &(z, e, g) in &p.pending_owned {
                open.push((id, z, e, g));
            }
        }
        for (id, z, e, g) in open {
            self.violation(
                id,
                format!("zone {z}'s Owned at epoch {e} was never answered by gateway {g}"),
            );
        }
        let cancels: Vec<(u32, u16, u32)> = self
            .players
            .iter()
            .flat_map(|(&id, p)| p.pending_cancel.iter().map(move |&(z, e)| (id, z, e)))
            .collect();
        for (id, z, e) in cancels {
            self.violation(
                id,
                format!("zone {z}'s HandoffCancel at epoch {e} was never answered"),
            );
        }
    }

    /// The players some zone owns now.
    pub fn owned(&self) -> usize {
        self.players.values().filter(|p| p.owner.is_some()).count()
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "{} batches, {} entries, {} logins, {} confirms, {} hand-offs, {} cancels, {} revokes, {} zone restarts, {} resumes, {} stale batches, {} auditor resets, {} junk, {} violations",
            self.batches,
            self.entries,
            self.logins,
            self.confirms,
            self.handoffs,
            self.cancels,
            self.revokes,
            self.zone_restarts,
            self.resumes,
            self.stale_batches,
            self.resets,
            self.junk.len(),
            self.violations.len()
        )
    }
}

/// Removes the first item of `v` that `f` accepts; whether there was one.
fn take<T>(v: &mut Vec<T>, f: impl Fn(&T) -> bool) -> bool {
    match v.iter().position(f) {
        Some(i) => {
            v.remove(i);
            true
        }
        None => false,
    }
}

// --- the auditor: a subscriber on a thread feeding a checker --------------------------------

/// Subscribes to the cluster's subjects (`<cluster>.>`) and checks what they carry on a
/// thread until [`Auditor::finish`].
pub struct Auditor {
    checker: Arc<Mutex<Checker>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Auditor {
    /// Connects to `url` and audits the cluster named `cluster`; returns once the
    /// subscription is in place (what is published after this is seen).
    pub fn start(url: &str, cluster: &str) -> io::Result<Auditor> {
        let mut nats = Nats::connect(url)?;
        // Not `>`: the bus's start-up round trip is a request to a fresh inbox that must find
        // no responder, and a subscriber to everything would be one.
        nats.sub(&format!("{cluster}.>"), 1)?;
        let checker = Arc::new(Mutex::new(Checker::new(cluster)));
        {
            let c = checker.clone();
            nats.flush(move |f| {
                if let Frame::Msg {
                    subject, payload, ..
                } = f
                {
                    c.lock().unwrap().feed(&subject, payload);
                }
            })?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st) = (checker.clone(), stop.clone());
        let (url, subject) = (url.to_string(), format!("{cluster}.>"));
        let thread = std::thread::spawn(move || -> io::Result<()> {
            let mut nats = nats;
            while !st.load(Ordering::Relaxed) {
                let frame = match nats.read_frame(Duration::from_millis(100)) {
                    Ok(f) => f,
                    // The server went away (a NATS restart): connect again, and forget what
                    // was known (messages were missed).
                    Err(e) => {
                        nats = reconnect(&url, &subject, &st)
                            .map_err(|r| io::Error::other(format!("{e}; then: {r}")))?;
                        c.lock().unwrap().reset();
                        continue;
                    }
                };
                match frame {
                    Some(Frame::Msg {
                        subject, payload, ..
                    }) => c.lock().unwrap().feed(&subject, payload),
                    Some(Frame::Err(e)) => {
                        return Err(io::Error::other(format!("NATS said -ERR {e}")))
                    }
                    _ => {}
                }
            }
            Ok(())
        });
        Ok(Auditor {
            checker,
            stop,
            thread: Some(thread),
        })
    }

    /// Looks at the checker as it is now.
    pub fn with<T>(&self, f: impl FnOnce(&Checker) -> T) -> T {
        f(&self.checker.lock().unwrap())
    }

    /// Stops reading and returns the checker, with unanswered claims counted
    /// ([`Checker::finish`]). An error if the connection failed during the run (the audit
    /// would be incomplete).
    pub fn finish(mut self) -> io::Result<Checker> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the auditor's thread panicked")?;
        }
        let mut c = std::mem::take(&mut *self.checker.lock().unwrap());
        c.finish();
        Ok(c)
    }
}

/// Connects to `url` again and subscribes to `subject`, trying for up to 20 s.
fn reconnect(url: &str, subject: &str, stop: &AtomicBool) -> io::Result<Nats> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let r = Nats::connect(url).and_then(|mut n| {
            n.sub(subject, 1)?;
            n.flush(|_| {})?;
            Ok(n)
        });
        match r {
            Ok(n) => return Ok(n),
            Err(e) if Instant::now() >= until || stop.load(Ordering::Relaxed) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

impl Drop for Auditor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cport_mmo::cluster::wire::{BatchWriter, Header, Transfer};

    #[test]
    fn parses_the_nats_protocol_in_pieces() {
        let stream = b"INFO {\"server_id\":\"x\"}\r\nPING\r\nMSG c.zone.1 1 5\r\nhe\r\nl\r\nMSG c.gw.0 1 _INBOX.a 0\r\n\r\n+OK\r\n-ERR 'Unknown Protocol Operation'\r\n";
        // Fed a byte at a time, then all at once: the same frames.
        for step in [1, stream.len()] {
            let mut buf = Vec::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(step) {
                buf.extend_from_slice(chunk);
                while let Some((f, used)) = parse_frame(&buf).unwrap() {
                    buf.drain(..used);
                    got.push(f);
                }
            }
            assert!(buf.is_empty());
            assert_eq!(
                got,
                vec![
                    Frame::Info("{\"server_id\":\"x\"}".into()),
                    Frame::Ping,
                    Frame::Msg {
                        subject: "c.zone.1".into(),
                        sid: "1".into(),
                        reply: None,
                        payload: Bytes::from_static(b"he\r\nl")
                    },
                    Frame::Msg {
                        subject: "c.gw.0".into(),
                        sid: "1".into(),
                        reply: Some("_INBOX.a".into()),
                        payload: Bytes::new()
                    },
                    Frame::Ok,
                    Frame::Err("Unknown Protocol Operation".into()),
                ]
            );
        }
        assert!(parse_frame(b"MSG a 1 x\r\n").is_err());
        assert!(parse_frame(b"MSG a 1 2\r\nabXY").is_err());
        assert!(parse_frame(b"HELLO\r\n").is_err());
    }

    #[test]
    fn subjects_name_their_destination() {
        assert_eq!(dest_of("c1", "c1.zone.3"), Dest::Zone(3));
        assert_eq!(dest_of("c1", "c1.gw.0"), Dest::Gateway(0));
        assert_eq!(dest_of("c1", "c2.gw.0"), Dest::Other);
        assert_eq!(dest_of("c1", "c1.zone.x"), Dest::Other);
        assert_eq!(dest_of("c1", "_INBOX.abc"), Dest::Other);
    }

    fn gw(c: &mut Checker, g: u16, z: u16, m: Msg) {
        c.message(Source::Gateway(g), Dest::Zone(z), m);
    }
    fn zone(c: &mut Checker, z: u16, d: Dest, m: Msg) {
        c.message(Source::Zone(z), d, m);
    }
    fn transfer(player: u32, epoch: u32, login: bool) -> Msg {
        Msg::Transfer(Box::new(Transfer {
            player,
            epoch,
            gateway: 0,
            session: 9,
            login,
            resume: false,
            gw_inc: 1,
            name: "a".into(),
            x: 1,
            y: 2,
            hp: 1,
            max_hp: 1,
            exp: 0,
            level: 1,
            last_move_time: 0,
            ghosts: 0,
            view: vec![],
        }))
    }
    fn owned(c: &mut Checker, z: u16, player: u32, epoch: u32) {
        zone(
            c,
            z,
            Dest::Gateway(0),
            Msg::Owned {
                session: 9,
                player,
                epoch,
            },
        );
    }

    /// Login through home zone 1 into zone 2, a hand-off to zone 3, a hand-off that falls
    /// back, a late claim revoked, and the departure: no violation.
    fn good_run(c: &mut Checker) {
        gw(
            c,
            0,
            1,
            Msg::Login {
                session: 9,
                player: 7,
                name: "a".into(),
            },
        );
        zone(c, 1, Dest::Zone(2), transfer(7, 1, true));
        owned(c, 2, 7, 1);
        gw(
            c,
            0,
            2,
            Msg::Confirm {
                player: 7,
                epoch: 1,
            },
        );
        zone(
            c,
            2,
            Dest::Gateway(0),
            Msg::HandoffBegin {
                session: 9,
                player: 7,
                epoch: 1,
                to: 3,
                next: 2,
            },
        );
        gw(
            c,
            0,
            2,
            Msg::Held {
                player: 7,
                epoch: 1,
            },
        );
        zone(c, 2, Dest::Zone(3), transfer(7, 2, false));
        owned(c, 3, 7, 2);
        gw(
            c,
            0,
            3,
            Msg::Confirm {
                player: 7,
                epoch: 2,
            },
        );
        // A hand-off 3 → 0 that times out: zone 3 keeps it at epoch 2.
        zone(c, 3, Dest::Zone(0), transfer(7, 3, false));
        zone(
            c,
            3,
            Dest::Gateway(0),
            Msg::HandoffCancel {
                session: 9,
                player: 7,
                epoch: 2,
            },
        );
        gw(
            c,
            0,
            3,
            Msg::Confirm {
                player: 7,
                epoch: 2,
            },
        );
        owned(c, 0, 7, 3);
        gw(
            c,
            0,
            0,
            Msg::Revoke {
                player: 7,
                epoch: 3,
            },
        );
        gw(
            c,
            0,
            3,
            Msg::Disconnect {
                player: 7,
                epoch: 2,
            },
        );
    }

    #[test]
    fn a_correct_history_passes() {
        let mut c = Checker::new("c");
        good_run(&mut c);
        c.finish();
        assert!(c.violations.is_empty(), "{:#?}", c.violations);
        assert_eq!((c.handoffs, c.confirms, c.revokes, c.cancels), (2, 3, 1, 1));
        assert_eq!(c.owned(), 0);
    }

    #[test]
    fn two_owners_are_caught_with_the_trail() {
        let mut c = Checker::new("c");
        owned(&mut c, 2, 7, 1);
        gw(
            &mut c,
            0,
            2,
            Msg::Confirm {
                player: 7,
                epoch: 1,
            },
        );
        // Zone 3 claims it without any hand-off from zone 2, and the gateway confirms.
        owned(&mut c, 3, 7, 2);
        gw(
            &mut c,
            0,
            3,
            Msg::Confirm {
                player: 7,
                epoch: 2,
            },
        );
        assert_eq!(c.violations.len(), 1, "{:#?}", c.violations);
        let v = &c.violations[0];
        assert!(v.contains("two owners") && v.contains("zone 2"), "{v}");
        assert!(v.contains("zone 3 → gw 0: Owned session 9 epoch 2"), "{v}");
    }

    #[test]
    fn epochs_that_go_back_are_caught() {
        let mut c = Checker::new("c");
        owned(&mut c, 2, 7, 5);
        gw(
            &mut c,
            0,
            2,
            Msg::Confirm {
                player: 7,
                epoch: 5,
            },
        );
        zone(&mut c, 2, Dest::Zone(3), transfer(7, 6, false));
        owned(&mut c, 3, 7, 4);
        gw(
            &mut c,
            0,
            3,
            Msg::Confirm {
                player: 7,
                epoch: 4,
            },
        );
        assert!(
            c.violations.iter().any(|v| v.contains("epoch went back")),
            "{:#?}",
            c.violations
        );
        // A hand-off whose epoch does not grow.
        let mut c = Checker::new("c");
        owned(&mut c, 2, 7, 5);
        gw(
            &mut c,
            0,
            2,
            Msg::Confirm {
                player: 7,
                epoch: 5,
            },
        );
        zone(&mut c, 2, Dest::Zone(3), transfer(7, 5, false));
        assert_eq!(c.violations.len(), 1, "{:#?}", c.violations);
    }

    #[test]
    fn unanswered_and_doubly_answered_claims_are_caught() {
        let mut c = Checker::new("c");
        owned(&mut c, 2, 7, 1);
        c.finish();
        assert_eq!(c.violations.len(), 1);
        assert!(c.violations[0].contains("never answered"));

        let mut c = Checker::new("c");
        owned(&mut c, 2, 7, 1);
        gw(
            &mut c,
            0,
            2,
            Msg::Confirm {
                player: 7,
                epoch: 1,
            },
        );
        gw(
            &mut c,
            0,
            2,
            Msg::Revoke {
                player: 7,
                epoch: 1,
            },
        );
        c.finish();
        // The Revoke answers nothing left, and revokes the confirmed owner.
        assert_eq!(c.violations.len(), 2, "{:#?}", c.violations);
    }

    /// One batch of `msgs` from run `inc` of `src` to `subject`, through `feed`.
    fn batch(c: &mut Checker, src: Source, inc: u64, subject: &str, msgs: &[Msg]) {
        let mut w = BatchWriter::new(Header {
            source: src,
            incarnation: inc,
            seq: 0,
        });
        for m in msgs {
            w.push(m);
        }
        c.feed(subject, w.finish());
    }

    #[test]
    fn a_zone_restart_ends_its_ownerships_and_a_replaced_run_is_ignored() {
        let mut c = Checker::new("c");
        let confirm = |e| Msg::Confirm {
            player: 7,
            epoch: e,
        };
        let owned = |e| Msg::Owned {
            session: 9,
            player: 7,
            epoch: e,
        };
        batch(&mut c, Source::Zone(1), 10, "c.gw.0", &[owned(1)]);
        batch(&mut c, Source::Gateway(0), 5, "c.zone.1", &[confirm(1)]);
        // Zone 1's new run speaks: its old run's player is owned by nobody now, so zone 2
        // may take it (from the resume) without two owners.
        batch(&mut c, Source::Zone(1), 20, "c.gw.0", &[Msg::Alive]);
        assert_eq!((c.zone_restarts, c.owned()), (1, 0));
        batch(&mut c, Source::Zone(2), 10, "c.gw.0", &[owned(2)]);
        batch(&mut c, Source::Gateway(0), 5, "c.zone.2", &[confirm(2)]);
        // The old run wakes up and claims again: ignored, counted.
        batch(&mut c, Source::Zone(1), 10, "c.gw.0", &[owned(3)]);
        assert_eq!(c.stale_batches, 1);
        c.finish();
        assert!(c.violations.is_empty(), "{:#?}", c.violations);
        // Without the restart the same story is two owners.
        let mut c = Checker::new("c");
        batch(&mut c, Source::Zone(1), 10, "c.gw.0", &[owned(1)]);
        batch(&mut c, Source::Gateway(0), 5, "c.zone.1", &[confirm(1)]);
        batch(&mut c, Source::Zone(2), 10, "c.gw.0", &[owned(2)]);
        batch(&mut c, Source::Gateway(0), 5, "c.zone.2", &[confirm(2)]);
        assert_eq!(c.violations.len(), 1, "{:#?}", c.violations);
    }

    #[test]
    fn after_missed_messages_nothing_is_judged_until_the_next_confirm() {
        let mut c = Checker::new("c");
        owned(&mut c, 2, 7, 1);
        gw(
            &mut c,
            0,
            2,
            Msg::Confirm {
                player: 7,
                epoch: 1,
            },
        );
        c.reset();
        // Zone 2 handed it to zone 3 while the auditor was away; zone 3 hands it on.
        zone(&mut c, 3, Dest::Zone(1), transfer(7, 3, false));
        gw(
            &mut c,
            0,
            1,
            Msg::Confirm {
                player: 7,
                epoch: 3,
            },
        );
        assert!(c.violations.is_empty(), "{:#?}", c.violations);
        // From that Confirm on, it is judged again: a hand-off by zone 2 is caught.
        zone(&mut c, 2, Dest::Zone(3), transfer(7, 4, false));
        assert_eq!(c.violations.len(), 1, "{:#?}", c.violations);
    }

    #[test]
    fn a_hand_off_by_a_non_owner_is_caught() {
        let mut c = Checker::new("c");
        owned(&mut c, 2, 7, 1);
        gw(
            &mut c,
            0,
            2,
            Msg::Confirm {
                player: 7,
                epoch: 1,
            },
        );
        zone(&mut c, 1, Dest::Zone(3), transfer(7, 2, false));
        assert_eq!(c.violations.len(), 1);
        assert!(c.violations[0].contains("does not own it"));
    }

    #[test]
    fn batches_are_decoded_and_junk_is_counted() {
        let mut c = Checker::new("c");
        let mut w = BatchWriter::new(Header {
            source: Source::Zone(2),
            incarnation: 1,
            seq: 0,
        });
        w.push(&Msg::Owned {
            session: 9,
            player: 7,
            epoch: 1,
        });
        c.feed("c.gw.0", w.finish());
        let mut w = BatchWriter::new(Header {
            source: Source::Gateway(0),
            incarnation: 1,
            seq: 0,
        });
        w.push(&Msg::Confirm {
            player: 7,
            epoch: 1,
        });
        c.feed("c.zone.2", w.finish());
        c.feed("c.zone.1", Bytes::from_static(b"junk"));
        c.finish();
        assert!(c.violations.is_empty(), "{:#?}", c.violations);
        assert_eq!((c.batches, c.entries, c.confirms, c.owned()), (2, 2, 1, 1));
        assert_eq!(c.junk.len(), 1);
        assert_eq!(c.junk[0].0, "c.zone.1");
    }

    /// Against a real nats-server: what is published after `start` reaches the checker,
    /// junk included; a batch on another cluster's subject has no destination.
    #[test]
    fn audits_what_a_real_nats_server_carries() {
        let Some(nats) = cport_testkit::nats::nats_server() else {
            return;
        };
        let a = Auditor::start(&nats.url, "c").unwrap();
        let mut p = Nats::connect(&nats.url).unwrap();
        let mut w = BatchWriter::new(Header {
            source: Source::Zone(2),
            incarnation: 1,
            seq: 0,
        });
        w.push(&Msg::Owned {
            session: 9,
            player: 7,
            epoch: 1,
        });
        p.publish("c.gw.0", &w.finish()).unwrap();
        p.publish("c.zone.1", b"junk\r\nMSG x 1 3\r\n").unwrap();
        p.flush(|_| {}).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while a.with(|c| c.batches + c.junk.len() as u64) < 2 {
            assert!(
                Instant::now() < until,
                "the auditor saw {}",
                a.with(Checker::summary)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let c = a.finish().unwrap();
        assert_eq!(c.junk.len(), 1);
        // The claim was never answered.
        assert_eq!(c.violations.len(), 1, "{:#?}", c.violations);
    }
}
