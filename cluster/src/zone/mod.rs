//! `cport zone`: one zone of the board as its own process — the game
//! ([`cport_mmo::Engine::new_zone`]) on a cport port, its clients' packets arriving from the
//! gateways and its packets leaving for them in batches over the bus.
//!
//! What runs where: the bus thread (async-nats) only reads each batch's header and queues the
//! batch per sender ([`Inbox`]); a worker drains each sender's queue in order and hands every
//! entry to the game; what the game sends (client packets, ghosts, hand-offs) goes into one
//! open batch per destination ([`Outbox`]), published when a worker gets to the posted flush —
//! so under load many entries share one NATS message, and when idle none waits for a tick.

use std::collections::HashMap;
mod config;

pub use config::ZoneConfig;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cport_mmo::cluster::wire::{read_header, Msg, Source};
use cport_mmo::cluster::{Layout, ZoneSetup, ZoneStats};
use cport_mmo::{Conn, DbResult, Engine, Host};
use cport_server::cport::{Backend, Message};
use cport_server::{CloseReason, Handler, Server, ServerHandle, Session};
use parking_lot::Mutex;

use crate::bus::{Bus, BusConfig, Inbox, Outbox};

/// Posted: a batch queue to drain (value: the source, [`source_code`]).
const BUS_KEY: u64 = 1;
/// Posted (or a timer, when the destination's tick is not over): an outbox destination to
/// flush (value: its index). Above every key the game's timers use.
const FLUSH_KEY: u64 = 1 << 50;
/// Message: a database result.
const DB_KEY: u64 = 3;
/// Timer: say `Alive`, check the gateways' silence and the database's fence.
const ALIVE_KEY: u64 = 4;
/// How often a zone says `Alive` to every other process.
pub const ALIVE_EVERY: Duration = Duration::from_millis(500);
/// At most one `Fenced` answer per stale sender per this long.
const FENCED_REPLY_EVERY: Duration = Duration::from_secs(1);

/// A source as one posted `u64`.
fn source_code(s: Source) -> u64 {
    match s {
        Source::Gateway(n) => (1 << 16) | u64::from(n),
        Source::Zone(n) => (2 << 16) | u64::from(n),
    }
}

fn source_of(v: u64) -> Option<Source> {
    let n = v as u16;
    match v >> 16 {
        1 => Some(Source::Gateway(n)),
        2 => Some(Source::Zone(n)),
        _ => None,
    }
}

/// A player's connection as a zone sees it: a session on some gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteId {
    /// The gateway.
    pub gateway: u16,
    /// The session there.
    pub session: u64,
    /// The player.
    pub player: u32,
}

impl fmt::Display for RemoteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gw{}/{:#x}/p{}", self.gateway, self.session, self.player)
    }
}

/// The zone's side of the network, for the game: timers and results through the port,
/// messages through the outbox.
#[derive(Clone)]
pub struct ZoneHost(Arc<HostInner>);

struct HostInner {
    srv: ServerHandle,
    outbox: Outbox,
    bus: Bus,
}

impl fmt::Debug for ZoneHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZoneHost").finish_non_exhaustive()
    }
}

impl Host for ZoneHost {
    type Conn = RemoteConn;
    type ConnId = RemoteId;

    fn post_after(&self, delay: Duration, key: u64, value: u64) -> bool {
        self.0.srv.post_after(delay, key, value).is_ok()
    }

    fn post_db(&self, result: DbResult<RemoteId>) -> bool {
        self.0.srv.post_message(DB_KEY, result).is_ok()
    }

    fn conn(&self, id: RemoteId) -> Option<RemoteConn> {
        Some(RemoteConn {
            host: self.clone(),
            id,
        })
    }

    fn to_zone(&self, zone: u16, msg: &Msg) {
        self.0.outbox.push(Source::Zone(zone), msg);
    }

    fn to_gateway(&self, gateway: u16, msg: &Msg) {
        self.0.outbox.push(Source::Gateway(gateway), msg);
    }

    fn remote(&self, gateway: u16, session: u64, player: u32) -> Option<RemoteConn> {
        self.conn(RemoteId {
            gateway,
            session,
            player,
        })
    }
}

/// A player's session on a gateway: what the game sends it goes into that gateway's batch.
#[derive(Clone)]
pub struct RemoteConn {
    host: ZoneHost,
    id: RemoteId,
}

impl fmt::Debug for RemoteConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteConn({})", self.id)
    }
}

impl Conn for RemoteConn {
    type Host = ZoneHost;

    fn send(&self, packet: Bytes) {
        self.host
            .0
            .outbox
            .push_send(self.id.gateway, self.id.session, &packet);
    }

    fn reject(&self, why: String) {
        self.host.to_gateway(
            self.id.gateway,
            &Msg::Close {
                session: self.id.session,
                reason: Some(why),
            },
        );
    }

    fn close_after_flush(&self) {
        self.host.to_gateway(
            self.id.gateway,
            &Msg::Close {
                session: self.id.session,
                reason: None,
            },
        );
    }

    fn id(&self) -> RemoteId {
        self.id
    }

    fn slot(&self) -> usize {
        self.id.player as usize
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        None
    }

    fn server(&self) -> ZoneHost {
        self.host.clone()
    }

    fn route(&self) -> Option<(u16, u64)> {
        Some((self.id.gateway, self.id.session))
    }
}

/// What the bus brought that the game never saw.
#[derive(Debug, Default)]
struct BusErrors {
    /// NATS messages that were not batches (no header).
    junk: AtomicU64,
    /// Batches cut short by an entry that does not parse.
    malformed: AtomicU64,
    /// Batches that came after a gap in their sender's sequence (lost on the way).
    gaps: AtomicU64,
}

struct Shared {
    engine: Engine<ZoneHost>,
    host: OnceLock<ZoneHost>,
    inbox: Inbox<Bytes>,
    errors: BusErrors,
    /// Per source: the incarnation and the last sequence number seen.
    seqs: Mutex<std::collections::HashMap<Source, (u64, u64)>>,
    /// Liveness: see [`ZoneConfig::gateway_silence`] and [`ZoneConfig::exit_when_fenced`].
    life: Life,
}

/// What a zone knows of the other processes' lives, and of its own.
struct Life {
    me: u16,
    incarnation: u64,
    gateways: u16,
    silence: Duration,
    exit_when_fenced: bool,
    /// This run was replaced: nothing more is handled or written.
    fenced: AtomicBool,
    /// When each gateway was last heard from (`None`: not yet, or gone).
    heard: Mutex<Vec<Option<Instant>>>,
    /// Since when the bus has been up without a break (checked at each `Alive` tick).
    up_since: Mutex<Option<Instant>>,
    /// When each stale sender was last told `Fenced`.
    told: Mutex<HashMap<Source, Instant>>,
    /// Batches dropped as coming from a replaced run.
    stale_batches: AtomicU64,
}

impl Life {
    /// This run has been replaced: stop (see [`ZoneConfig::exit_when_fenced`]).
    fn fence_me(&self, why: &str) {
        if self.fenced.swap(true, Relaxed) {
            return;
        }
        tracing::error!(
            zone = self.me,
            "this run of zone {} was replaced ({why}): stopping without writing",
            self.me
        );
        if self.exit_when_fenced {
            std::process::exit(3);
        }
    }
}

struct ZoneHandler(Arc<Shared>);

impl Shared {
    fn drain(&self, source: Source) {
        let Some(host) = self.host.get() else { return };
        self.inbox.drain(source, |batch| {
            if self.life.fenced.load(Relaxed) {
                return;
            }
            let (h, mut entries) = match read_header(batch) {
                Ok(x) => x,
                Err(_) => return, // checked on the bus thread
            };
            if let Source::Gateway(g) = h.source {
                if let Some(t) = self.life.heard.lock().get_mut(usize::from(g)) {
                    *t = Some(Instant::now());
                }
            }
            let live = self.engine.source_run(host, h.source, h.incarnation);
            if !live {
                self.life.stale_batches.fetch_add(1, Relaxed);
                let mut told = self.life.told.lock();
                let due = told
                    .get(&h.source)
                    .is_none_or(|t| t.elapsed() >= FENCED_REPLY_EVERY);
                if due {
                    told.insert(h.source, Instant::now());
                    drop(told);
                    tracing::warn!(source = ?h.source, run = h.incarnation, "a batch from a replaced run: dropped, sender told Fenced");
                    let newer = self.engine.newest_run(h.source);
                    host.0.outbox.push(h.source, &Msg::Fenced { newer });
                }
            }
            let gap = live && {
                let mut seqs = self.seqs.lock();
                let last = seqs.insert(h.source, (h.incarnation, h.seq));
                last.is_some_and(|(inc, seq)| {
                    inc == h.incarnation && h.seq != seq.wrapping_add(1)
                })
            };
            if gap {
                self.errors.gaps.fetch_add(1, Relaxed);
                if let Source::Zone(o) = h.source {
                    self.engine.zone_gap(host, o);
                }
            }
            while let Some(entry) = entries.next() {
                match entry {
                    // A replaced run's entries are read (to count a malformed one) and
                    // dropped.
                    Ok(_) if !live => {}
                    Ok(Msg::Fenced { newer }) if newer > self.life.incarnation => {
                        return self.life.fence_me(&format!("{:?} answered Fenced", h.source));
                    }
                    Ok(Msg::Fenced { .. }) => {} // for an older run of this zone
                    Ok(msg) => self.engine.on_cluster(host, h.source, h.incarnation, msg),
                    Err(e) => {
                        self.errors.malformed.fetch_add(1, Relaxed);
                        tracing::warn!(source = ?h.source, "batch cut short: {e}");
                    }
                }
            }
        });
    }
}

impl Shared {
    /// Every [`ALIVE_EVERY`]: `Alive` to every other process; a gateway silent for too long
    /// (while the bus was up) is gone; a save refused by the lease means this run is over.
    fn alive_tick(&self, host: &ZoneHost) {
        let life = &self.life;
        if life.fenced.load(Relaxed) {
            return;
        }
        if self.engine.fenced() {
            return life.fence_me("the database's lease refused a save");
        }
        let now = Instant::now();
        let up_for = {
            let mut up = life.up_since.lock();
            if host.0.bus.connected() {
                now.duration_since(*up.get_or_insert(now))
            } else {
                *up = None;
                Duration::ZERO
            }
        };
        for d in host.0.outbox.dests().collect::<Vec<_>>() {
            host.0.outbox.push(d, &Msg::Alive);
        }
        if up_for >= life.silence {
            let silent: Vec<u16> = {
                let mut heard = life.heard.lock();
                (0..life.gateways)
                    .filter(|&g| {
                        let t = &mut heard[usize::from(g)];
                        let gone = t.is_some_and(|t| now.duration_since(t) >= life.silence);
                        if gone {
                            *t = None;
                        }
                        gone
                    })
                    .collect()
            };
            for g in silent {
                self.engine.gateway_silent(host, g);
            }
        }
        let _ = host.0.srv.post_after(ALIVE_EVERY, ALIVE_KEY, 0);
    }
}

impl Handler for ZoneHandler {
    fn on_connect(&self, session: &Session) {
        session.close(CloseReason::Rejected("a zone takes no clients".into()));
    }

    fn on_packet(&self, _session: &Session, _packet: &[u8]) {}

    fn on_posted(&self, _server: &ServerHandle, key: u64, value: u64) {
        match key {
            BUS_KEY => {
                if let Some(source) = source_of(value) {
                    self.0.drain(source);
                    // What the batches produced leaves now from this thread where its tick
                    // allows: no other worker is woken to flush it (the flush it scheduled
                    // then finds nothing).
                    if let Some(host) = self.0.host.get() {
                        host.0.outbox.flush_due();
                    }
                }
            }
            FLUSH_KEY => {
                if let Some(host) = self.0.host.get() {
                    host.0.outbox.flush(value as usize);
                }
            }
            _ => {}
        }
    }

    fn on_timer(&self, _server: &ServerHandle, key: u64, value: u64) {
        if let Some(host) = self.0.host.get() {
            if key == ALIVE_KEY {
                self.0.alive_tick(host);
            } else if key == FLUSH_KEY {
                host.0.outbox.flush(value as usize);
            } else {
                self.0.engine.on_timer(host, key, value);
            }
        }
    }

    fn on_message(&self, _server: &ServerHandle, key: u64, message: Message) {
        if key == crate::ops::PROBE_KEY {
            return crate::ops::answer(message);
        }
        let Some(host) = self.0.host.get() else {
            return;
        };
        if key == DB_KEY {
            match message.downcast::<DbResult<RemoteId>>() {
                Ok(result) => self.0.engine.on_db(host, result),
                Err(_) => tracing::error!("a message of an unknown type on the DB key"),
            }
        }
    }
}

/// A running zone.
pub struct Zone {
    server: Option<Server>,
    shared: Arc<Shared>,
    bus: Bus,
    me: u16,
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Zone")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

/// Starts zone `cfg.me`: the game (its NPCs, its database), the bus, and the announcement
/// to the other zones. Returns once its inbox is subscribed.
pub fn start(cfg: ZoneConfig) -> io::Result<Zone> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    let layout = Layout::new(cfg.game.world_size, cfg.zones).ok_or_else(|| {
        invalid(format!(
            "{} zones on a {}-cell board",
            cfg.zones, cfg.game.world_size
        ))
    })?;
    if usize::from(cfg.me) >= cfg.zones {
        return Err(invalid(format!("zone {} of {}", cfg.me, cfg.zones)));
    }
    let incarnation = crate::bus::new_incarnation();
    let mut setup = ZoneSetup::new(layout, cfg.me);
    setup.handoff_timeout = cfg.handoff_timeout;
    setup.transfer_delay = cfg.transfer_delay;
    setup.gateways = cfg.gateways;
    setup.lease = Some(incarnation);
    let engine = Engine::<ZoneHost>::new_zone(&cfg.game, setup)?;
    let bus = Bus::connect(
        BusConfig {
            url: cfg.nats.clone(),
            cluster: cfg.cluster.clone(),
            me: Source::Zone(cfg.me),
            incarnation,
        },
        cfg.connect_timeout,
    )?;
    let shared = Arc::new(Shared {
        engine,
        host: OnceLock::new(),
        inbox: Inbox::new(),
        errors: BusErrors::default(),
        seqs: Mutex::new(Default::default()),
        life: Life {
            me: cfg.me,
            incarnation,
            gateways: cfg.gateways,
            silence: cfg.gateway_silence,
            exit_when_fenced: cfg.exit_when_fenced,
            fenced: AtomicBool::new(false),
            heard: Mutex::new(vec![None; usize::from(cfg.gateways)]),
            up_since: Mutex::new(None),
            told: Mutex::new(HashMap::new()),
            stale_batches: AtomicU64::new(0),
        },
    });
    let scfg = cport_server::Config {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        threads: cfg.game.threads,
        backend: cfg.game.backend,
        max_sessions: 1,
        ..Default::default()
    };
    let server = Server::start(scfg, shared.engine.codec(), ZoneHandler(shared.clone()))?;
    let handle = server.handle();
    let dests: Vec<Source> = (0..cfg.zones as u16)
        .filter(|&z| z != cfg.me)
        .map(Source::Zone)
        .chain((0..cfg.gateways).map(Source::Gateway))
        .collect();
    let flusher = handle.clone();
    let outbox = Outbox::with_tick(bus.clone(), dests, cfg.bus_tick, move |i, delay| {
        let _ = if delay.is_zero() {
            flusher.post(FLUSH_KEY, i as u64)
        } else {
            flusher.post_after(delay, FLUSH_KEY, i as u64).map(|_| ())
        };
    });
    let host = ZoneHost(Arc::new(HostInner {
        srv: handle.clone(),
        outbox,
        bus: bus.clone(),
    }));
    let _ = shared.host.set(host.clone());
    shared.engine.spawn_db(host.clone())?;
    shared.engine.on_start(&host);
    let deliver = {
        let shared = shared.clone();
        let handle = handle.clone();
        move |payload: Bytes| match read_header(payload.clone()) {
            Ok((h, _)) => {
                if shared.inbox.push(h.source, payload) {
                    let _ = handle.post(BUS_KEY, source_code(h.source));
                }
            }
            Err(e) => {
                let n = shared.errors.junk.fetch_add(1, Relaxed);
                if n < 10 || n.is_power_of_two() {
                    tracing::warn!(
                        "not a cluster batch on the zone's subject ({} so far): {e}",
                        n + 1
                    );
                }
            }
        }
    };
    bus.subscribe(deliver)?;
    shared.engine.zone_started(&host);
    shared.alive_tick(&host);
    tracing::info!(zone = cfg.me, zones = cfg.zones, backend = ?handle.backend(), "zone serving");
    Ok(Zone {
        server: Some(server),
        shared,
        bus,
        me: cfg.me,
    })
}

/// What a zone's bus did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZoneBusStats {
    /// The NATS client's counters.
    pub bus: crate::bus::BusCounters,
    /// Messages on the zone's subject that were not batches.
    pub junk: u64,
    /// Batches cut short by an entry that does not parse.
    pub malformed: u64,
    /// Batches after a gap in their sender's sequence.
    pub gaps: u64,
    /// Batches waiting for a worker now.
    pub queued: usize,
}

impl Zone {
    /// This zone's number.
    pub fn me(&self) -> u16 {
        self.me
    }

    /// The game.
    pub fn engine(&self) -> &Engine<ZoneHost> {
        &self.shared.engine
    }

    /// The game's counters (players here are the players this zone owns).
    pub fn stats(&self) -> cport_mmo::Stats {
        self.shared.engine.stats()
    }

    /// The zone's own counters: ghosts, hand-offs, home logins.
    pub fn zone_stats(&self) -> ZoneStats {
        self.shared.engine.zone_stats().expect("a zone")
    }

    /// What the bus did.
    pub fn bus_stats(&self) -> ZoneBusStats {
        let e = &self.shared.errors;
        ZoneBusStats {
            bus: self.bus.counters(),
            junk: e.junk.load(Relaxed),
            malformed: e.malformed.load(Relaxed),
            gaps: e.gaps.load(Relaxed),
            queued: self.shared.inbox.queued(),
        }
    }

    /// The zone's port (ops: its liveness probe is posted there).
    pub fn handle(&self) -> ServerHandle {
        self.server.as_ref().expect("running").handle()
    }

    /// The zone's connection to the bus (ops: readiness, incarnation).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Entries in open batches not yet published (a metric).
    pub fn outbox_pending(&self) -> usize {
        self.shared.host.get().map_or(0, |h| h.0.outbox.pending())
    }

    /// The backend the zone's port runs on.
    pub fn backend(&self) -> Backend {
        self.server.as_ref().expect("running").handle().backend()
    }

    /// Stops: the workers end (what is queued is dropped), then every owned player's row is
    /// written and what the outbox holds is sent.
    pub fn shutdown(mut self, deadline: Duration) {
        self.stop(deadline);
    }

    /// Whether this run learnt that a newer run of its zone replaced it (see
    /// [`ZoneConfig::exit_when_fenced`]); it handles and writes nothing since.
    pub fn fenced(&self) -> bool {
        self.shared.life.fenced.load(Relaxed)
    }

    /// Batches dropped because they came from a run that was replaced.
    pub fn stale_batches(&self) -> u64 {
        self.shared.life.stale_batches.load(Relaxed)
    }

    /// Test hook: ends this run as `kill -9` would — nothing more is handled, sent or
    /// written, nothing is saved.
    #[doc(hidden)]
    pub fn crash(mut self) {
        self.shared.life.fenced.store(true, Relaxed);
        self.shared.engine.stop_writing();
        drop(self.server.take());
    }

    fn stop(&mut self, deadline: Duration) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown(deadline);
            let _ = self.shared.engine.flush_all();
            if let Some(host) = self.shared.host.get() {
                host.0.outbox.flush_all();
            }
            let _ = self.bus.flush(deadline);
        }
    }
}

impl Drop for Zone {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(1));
    }
}
