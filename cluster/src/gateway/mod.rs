//! The gateway: holds the clients' TCP connections, speaks the course protocol to them byte
//! for byte as `cport mmo` does, owns no game state, and routes each player's packets to the
//! zone that owns the player, over the bus. Zones send back course packets already encoded;
//! the gateway writes them as they are.
//!
//! The rules are in [`Routes`], a state machine with no sockets and no bus. This module is
//! the glue around it: a `cport_server` [`Server`] whose handler feeds it client packets,
//! closes and timers; the bus's subscription, whose batches are queued per zone in an
//! [`Inbox`](bus::Inbox) (so one zone's entries are handled in the order it sent them) and
//! drained on the workers; and an [`Outbox`](bus::Outbox) that batches what goes to each zone.
//!
//! One lock guards the routing state, and everything a decision sends (to a zone's outbox,
//! to a client) is queued while it is held: two decisions about one player (a packet routed,
//! then `Held` for a hand-off) reach the zone in the order they were made. The lock is held
//! for a few map look-ups and queue pushes, never for I/O.

mod effects;
#[cfg(test)]
mod glue_tests;
mod ids;
mod routes;
#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cport_mmo::cluster::wire::{read_header, Msg, Source};
use cport_mmo::cluster::Layout;
use cport_mmo_proto::SizeField;
use cport_server::cport::{Backend, Message};
use cport_server::{
    CloseReason, Handler, LengthPrefixed, Server, ServerHandle, Session, ShutdownReport,
};
use parking_lot::Mutex;

use crate::bus;

pub use crate::bus::BusCounters;
pub use effects::{Closing, Effects, Timer, TimerKind};
pub use ids::{Ids, QUARANTINE};
pub use routes::{Counters, Routes, Settings, MAX_HELD};

/// `cport gateway`'s settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Worker threads (0: available parallelism).
    pub threads: usize,
    /// The port's backend (`None`: the default).
    pub backend: Option<Backend>,
    /// This gateway's number, `0..gateways`.
    pub me: u16,
    /// Gateways in the cluster (they split the player ids).
    pub gateways: u16,
    /// Zones in the cluster.
    pub zones: usize,
    /// The board's width and height.
    pub world_size: u16,
    /// Players in the whole cluster (this gateway takes its share of the ids).
    pub max_users: usize,
    /// The course header's size field.
    pub header: SizeField,
    /// Most bytes queued for one client; beyond, it is closed as a slow consumer.
    pub max_send_queue: usize,
    /// The NATS server.
    pub nats: String,
    /// The cluster's name (the bus's subject prefix).
    pub cluster: String,
    /// How long a login waits for a zone's answer.
    pub login_timeout: Duration,
    /// How long a hand-off may take before the client is closed.
    pub handoff_timeout: Duration,
    /// At most one NATS message per zone per tick (`Outbox::with_tick`).
    pub bus_tick: Duration,
    /// When a zone says this run has been replaced (`Fenced`: it was silent longer than the
    /// zones wait, and its players left the game): `true` ends the process (`cport gateway`:
    /// exit status 3); `false` (tests) stops handling the bus.
    pub exit_when_fenced: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            threads: 0,
            backend: None,
            me: 0,
            gateways: 1,
            zones: 1,
            world_size: cport_mmo_proto::W_WIDTH,
            max_users: cport_mmo_proto::MAX_USER,
            header: SizeField::U8,
            max_send_queue: 1 << 20,
            nats: "nats://127.0.0.1:4222".into(),
            cluster: "cport".into(),
            login_timeout: Duration::from_secs(5),
            handoff_timeout: Duration::from_secs(3),
            bus_tick: bus::DEFAULT_TICK,
            exit_when_fenced: false,
        }
    }
}

/// What a gateway did so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct GatewayStats {
    /// The routing state's counters (sessions, logins, routed packets, held now, hand-offs,
    /// revokes, stale and misdirected entries).
    pub routes: Counters,
    /// Bus messages that are not a batch this build reads (dropped).
    pub malformed_batches: u64,
    /// Entries that did not parse (the rest of their batch was dropped).
    pub malformed_entries: u64,
    /// Entries of a kind this build does not know (skipped).
    pub unknown_entries: u64,
    /// Batches from a sender that is not a zone of this cluster (dropped).
    pub foreign_batches: u64,
    /// Batches that a zone sent and that never arrived (gaps in its sequence; core NATS is
    /// at most once).
    pub lost_batches: u64,
    /// The bus's own counters.
    pub bus: BusCounters,
}

/// A running gateway.
pub struct Gateway {
    server: Option<Server>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

/// Posted-event key: flush the outbox of the destination given as the value.
const KEY_FLUSH: u64 = 1;
/// Posted-message key: drain the inbox of the zone given as the message.
const KEY_DRAIN: u64 = 2;
/// Timer key: say `Alive` to every zone.
const KEY_ALIVE: u64 = 3;
/// How often a gateway says `Alive` to every zone.
pub const ALIVE_EVERY: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Junk {
    batches: AtomicU64,
    entries: AtomicU64,
    unknown: AtomicU64,
    foreign: AtomicU64,
    lost: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

impl Junk {
    /// Logs at most one line a second about junk on the bus.
    fn log(&self, what: std::fmt::Arguments<'_>) {
        let mut last = self.last_log.lock();
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            *last = Some(now);
            tracing::warn!("bus: {what} (dropped; logged at most once a second)");
        }
    }
}

struct Shared {
    routes: Mutex<Routes<Session>>,
    outbox: bus::Outbox,
    bus: bus::Bus,
    intake: Arc<Intake>,
    /// Each zone's last (incarnation, seq), to count lost batches.
    seqs: Mutex<Vec<Option<(u64, u64)>>>,
    /// When each stale zone run was last told `Fenced`.
    told: Mutex<Vec<Option<Instant>>>,
    /// This gateway's run (a `Fenced` for an older one is not for it).
    incarnation: u64,
    /// See [`GatewayConfig::exit_when_fenced`].
    exit_when_fenced: bool,
    /// This run was replaced (a zone answered `Fenced`): nothing more is handled.
    fenced: std::sync::atomic::AtomicBool,
}

/// What the bus's subscription needs: it lives on the bus's runtime, so it holds no `Bus`
/// (a clone there would keep the bus from ever being dropped).
struct Intake {
    inbox: bus::Inbox<Bytes>,
    /// The server, once a handler call has seen it (the outbox's schedule and the intake post
    /// to it).
    server: Arc<OnceLock<ServerHandle>>,
    zones: u16,
    junk: Junk,
}

/// Runs the routing state machine's effects on the real world: the outbox, the sessions, the
/// port's timers.
struct Fx<'a> {
    outbox: &'a bus::Outbox,
    server: &'a ServerHandle,
    /// This run is over (fenced, or a test's crash): the zones hear nothing more from it.
    dead: bool,
}

impl Effects<Session> for Fx<'_> {
    fn zone(&mut self, zone: u16, m: cport_mmo::cluster::wire::Msg) {
        if !self.dead {
            self.outbox.push(Source::Zone(zone), &m);
        }
    }

    fn send(&mut self, conn: &Session, bytes: Bytes) {
        // `false`: the session is closing (or was closed as a slow consumer); its close
        // tells the owner, which is all there is to do.
        let _ = conn.send(bytes);
    }

    fn close(&mut self, conn: &Session, how: Closing) {
        match how {
            Closing::AfterFlush => conn.close_after_flush(),
            Closing::Reject(why) => conn.close(CloseReason::Rejected(why)),
            Closing::Abort(why) => {
                tracing::warn!(session = %conn.id(), peer = ?conn.peer_addr(), "closing: {why}");
                conn.close(CloseReason::Local);
            }
        }
    }

    fn timer(&mut self, after: Duration, t: Timer) {
        if let Err(e) = self.server.post_after(after, t.key(), t.value()) {
            tracing::debug!("timer not set: {e}");
        }
    }
}

impl Shared {
    fn fx<'a>(&'a self, server: &'a ServerHandle) -> Fx<'a> {
        Fx {
            outbox: &self.outbox,
            server,
            dead: self.fenced.load(Relaxed),
        }
    }

    /// One batch of zone `zone`, on a worker, in the order the zone sent it.
    fn on_batch(&self, server: &ServerHandle, zone: u16, batch: Bytes) {
        let (h, mut r) = match read_header(batch) {
            Ok(x) => x,
            Err(e) => {
                // Checked on the bus thread already; kept for safety.
                self.intake.junk.batches.fetch_add(1, Relaxed);
                return self.intake.junk.log(format_args!("{e}"));
            }
        };
        if self.fenced.load(Relaxed) {
            return;
        }
        let mut fx = self.fx(server);
        let mut routes = self.routes.lock();
        if !routes.zone_run(zone, h.incarnation, &mut fx) {
            let newer = routes.zone_run_of(zone);
            drop(routes);
            let mut told = self.told.lock();
            let t = &mut told[usize::from(zone)];
            if t.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                *t = Some(Instant::now());
                tracing::warn!(
                    zone,
                    run = h.incarnation,
                    "a batch from a replaced run of the zone: dropped, told Fenced"
                );
                self.outbox.push(Source::Zone(zone), &Msg::Fenced { newer });
            }
            return;
        }
        drop(routes);
        {
            let mut seqs = self.seqs.lock();
            let last = &mut seqs[usize::from(zone)];
            if let Some((inc, seq)) = *last {
                // (Saturating: the numbers come from the wire.)
                let gap = h.seq.saturating_sub(seq.saturating_add(1));
                if inc == h.incarnation && gap > 0 {
                    self.intake.junk.lost.fetch_add(gap, Relaxed);
                }
            }
            *last = Some((h.incarnation, h.seq));
        }
        let now = Instant::now();
        let mut routes = self.routes.lock();
        while let Some(m) = r.next() {
            match m {
                Ok(Msg::Fenced { newer }) if newer > self.incarnation => {
                    drop(routes);
                    return self.fence_me(zone);
                }
                Ok(m) => routes.on_bus(zone, m, now, &mut fx),
                Err(e) => {
                    self.intake.junk.entries.fetch_add(1, Relaxed);
                    self.intake.junk.log(format_args!("zone {zone}: {e}"));
                }
            }
        }
        drop(routes);
        if r.unknown > 0 {
            self.intake
                .junk
                .unknown
                .fetch_add(r.unknown as u64, Relaxed);
        }
    }
}

impl Shared {
    /// A zone says this run of the gateway was replaced (it was silent too long and its
    /// players left the game): stop.
    fn fence_me(&self, zone: u16) {
        if self.fenced.swap(true, Relaxed) {
            return;
        }
        tracing::error!(
            zone,
            "zone {zone} says this gateway's run was replaced: stopping"
        );
        if self.exit_when_fenced {
            std::process::exit(3);
        }
    }

    /// `Alive` to every zone, again in [`ALIVE_EVERY`].
    fn alive(&self, server: &ServerHandle) {
        if self.fenced.load(Relaxed) {
            return;
        }
        for d in self.outbox.dests().collect::<Vec<_>>() {
            self.outbox.push(d, &Msg::Alive);
        }
        let _ = server.post_after(ALIVE_EVERY, KEY_ALIVE, 0);
    }
}

impl Intake {
    /// A bus message, on the bus thread: checked, queued for its zone, and a drain posted
    /// when the zone's queue was idle.
    fn deliver(&self, payload: Bytes) {
        let source = match read_header(payload.clone()) {
            Ok((h, _)) => h.source,
            Err(e) => {
                self.junk.batches.fetch_add(1, Relaxed);
                return self.junk.log(format_args!("{e}"));
            }
        };
        let zone = match source {
            Source::Zone(z) if z < self.zones => z,
            other => {
                self.junk.foreign.fetch_add(1, Relaxed);
                return self.junk.log(format_args!(
                    "a batch from {other:?}, not a zone of this cluster"
                ));
            }
        };
        if self.inbox.push(source, payload) {
            // The bus is subscribed after the server started: the cell is set.
            if let Some(Err(e)) = self.server.get().map(|s| s.post_message(KEY_DRAIN, zone)) {
                tracing::debug!("drain not posted (shutting down): {e}");
            }
        }
    }
}

struct GatewayHandler(Arc<Shared>);

impl Handler for GatewayHandler {
    fn on_start(&self, server: &ServerHandle) {
        self.0.intake.server.get_or_init(|| server.clone());
        self.0.alive(server);
    }

    fn on_connect(&self, session: &Session) {
        // Before any zone entry or flush can be needed (both follow a client's packet).
        self.0.intake.server.get_or_init(|| session.server());
        self.0
            .routes
            .lock()
            .on_connect(session.id().as_u64(), session.clone());
    }

    fn on_packet(&self, session: &Session, packet: &[u8]) {
        let server = self.0.intake.server.get_or_init(|| session.server());
        let mut fx = self.0.fx(server);
        self.0
            .routes
            .lock()
            .on_packet(session.id().as_u64(), packet, Instant::now(), &mut fx);
    }

    fn on_close(&self, session: &Session, _reason: &CloseReason) {
        let server = self.0.intake.server.get_or_init(|| session.server());
        let mut fx = self.0.fx(server);
        self.0
            .routes
            .lock()
            .on_close(session.id().as_u64(), Instant::now(), &mut fx);
    }

    fn on_timer(&self, server: &ServerHandle, key: u64, value: u64) {
        if key == KEY_FLUSH {
            return self.0.outbox.flush(value as usize);
        }
        if key == KEY_ALIVE {
            return self.0.alive(server);
        }
        if let Some(t) = Timer::from_key(key, value) {
            let mut fx = self.0.fx(server);
            self.0.routes.lock().on_timer(t, Instant::now(), &mut fx);
        }
    }

    fn on_posted(&self, _server: &ServerHandle, key: u64, value: u64) {
        if key == KEY_FLUSH {
            self.0.outbox.flush(value as usize);
        }
    }

    fn on_message(&self, server: &ServerHandle, key: u64, message: Message) {
        if key == crate::ops::PROBE_KEY {
            return crate::ops::answer(message);
        }
        if key != KEY_DRAIN {
            return;
        }
        if let Ok(zone) = message.downcast::<u16>() {
            self.0.intake.inbox.drain(Source::Zone(zone), |batch| {
                self.0.on_batch(server, zone, batch)
            });
        }
    }
}

/// Connects to the bus, listens for clients and starts the workers.
///
/// Refused (`InvalidInput`): a zone count the board cannot be cut into, `me` not below
/// `gateways`, or fewer player ids than gateways. A bus that cannot be reached within the
/// login timeout is an error too.
pub fn start(cfg: GatewayConfig) -> io::Result<Gateway> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let layout = Layout::new(cfg.world_size, cfg.zones).ok_or_else(|| {
        invalid(format!(
            "a {0}×{0} board cannot be cut into {1} zones",
            cfg.world_size, cfg.zones
        ))
    })?;
    if cfg.gateways == 0 || cfg.me >= cfg.gateways {
        return Err(invalid(format!(
            "gateway {} of {} does not exist",
            cfg.me, cfg.gateways
        )));
    }
    let ids = Ids::new(cfg.me, cfg.gateways, cfg.max_users);
    if ids.range().is_empty() {
        return Err(invalid(format!(
            "{} players cannot be shared by {} gateways",
            cfg.max_users, cfg.gateways
        )));
    }
    let share = ids.range().len();
    let incarnation = bus::new_incarnation();
    let bus = bus::Bus::connect(
        bus::BusConfig {
            url: cfg.nats.clone(),
            cluster: cfg.cluster.clone(),
            me: Source::Gateway(cfg.me),
            incarnation,
        },
        cfg.login_timeout,
    )?;
    let server_cell: Arc<OnceLock<ServerHandle>> = Arc::new(OnceLock::new());
    let cell = server_cell.clone();
    let dests = (0..cfg.zones as u16).map(Source::Zone).collect();
    let outbox = bus::Outbox::with_tick(bus.clone(), dests, cfg.bus_tick, move |i, delay| {
        // A push happens only in a handler call, which has set the cell.
        if let Some(s) = cell.get() {
            let _ = if delay.is_zero() {
                s.post(KEY_FLUSH, i as u64)
            } else {
                s.post_after(delay, KEY_FLUSH, i as u64).map(|_| ())
            };
        }
    });
    let settings = Settings {
        layout,
        header: cfg.header,
        login_timeout: cfg.login_timeout,
        handoff_timeout: cfg.handoff_timeout,
    };
    let shared = Arc::new(Shared {
        routes: Mutex::new(Routes::new(settings, ids)),
        outbox,
        bus: bus.clone(),
        intake: Arc::new(Intake {
            inbox: bus::Inbox::new(),
            server: server_cell,
            zones: cfg.zones as u16,
            junk: Junk::default(),
        }),
        seqs: Mutex::new(vec![None; cfg.zones]),
        told: Mutex::new(vec![None; cfg.zones]),
        incarnation,
        exit_when_fenced: cfg.exit_when_fenced,
        fenced: std::sync::atomic::AtomicBool::new(false),
    });
    let scfg = cport_server::Config {
        addr: cfg.addr,
        threads: cfg.threads,
        backend: cfg.backend,
        // Like the single server: the share of players plus room to tell the rest
        // SC_LOGIN_FAIL.
        max_sessions: share + 64,
        max_send_queue: cfg.max_send_queue,
        ..Default::default()
    };
    // The largest client packet is a chat of 100 bytes (as `cport mmo` frames).
    let codec = LengthPrefixed::new(cfg.header)
        .max_packet(cport_mmo_proto::header_len(cfg.header) + cport_mmo_proto::CHAT_SIZE);
    let server = Server::start(scfg, codec, GatewayHandler(shared.clone()))?;
    shared.intake.server.get_or_init(|| server.handle());
    let intake = shared.intake.clone();
    bus.subscribe(move |payload| intake.deliver(payload))?;
    tracing::info!(
        "gateway {} of {}: {} zones, player ids {:?}, bus {} ({})",
        cfg.me,
        cfg.gateways,
        cfg.zones,
        Ids::share(cfg.me, cfg.gateways, cfg.max_users),
        cfg.nats,
        cfg.cluster
    );
    Ok(Gateway {
        server: Some(server),
        shared,
    })
}

impl Gateway {
    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle().local_addr()
    }

    /// The server layer's handle.
    pub fn handle(&self) -> ServerHandle {
        self.server.as_ref().expect("running").handle()
    }

    /// This gateway's number.
    pub fn me(&self) -> u16 {
        match self.shared.bus.me() {
            Source::Gateway(n) | Source::Zone(n) => n,
        }
    }

    /// The gateway's connection to the bus (ops: readiness, incarnation).
    pub fn bus(&self) -> &bus::Bus {
        &self.shared.bus
    }

    /// Zone batches received and waiting for a worker (a metric).
    pub fn inbox_queued(&self) -> usize {
        self.shared.intake.inbox.queued()
    }

    /// Entries in open batches to the zones not yet published (a metric).
    pub fn outbox_pending(&self) -> usize {
        self.shared.outbox.pending()
    }

    /// The counters now.
    pub fn stats(&self) -> GatewayStats {
        let s = &self.shared;
        GatewayStats {
            routes: s.routes.lock().counters(),
            malformed_batches: s.intake.junk.batches.load(Relaxed),
            malformed_entries: s.intake.junk.entries.load(Relaxed),
            unknown_entries: s.intake.junk.unknown.load(Relaxed),
            foreign_batches: s.intake.junk.foreign.load(Relaxed),
            lost_batches: s.intake.junk.lost.load(Relaxed),
            bus: s.bus.counters(),
        }
    }

    /// Test hook: ends this run as `kill -9` would — its clients' connections drop, and the
    /// zones hear nothing more from it (no `Disconnect`, no `Alive`).
    #[doc(hidden)]
    pub fn crash(mut self) {
        self.shared.fenced.store(true, Relaxed);
        drop(self.server.take());
    }

    /// Graceful shutdown: every client flushed and closed (each close tells its zone
    /// `Disconnect`), until `deadline`; then what the zones were told is handed to the bus
    /// server (waiting at least 100 ms for that, even past the deadline).
    pub fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        let t0 = Instant::now();
        let report = self.server.take().expect("running").shutdown(deadline);
        let left = deadline.saturating_sub(t0.elapsed());
        self.shared
            .flush_to_zones(left.max(Duration::from_millis(100)));
        report
    }
}

impl Drop for Gateway {
    /// Stops at once (see [`Server`]'s drop: every client closed without a flush), then hands
    /// what the zones were told (each close's `Disconnect`) to the bus, waiting at most
    /// 100 ms.
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            drop(server);
            self.shared.flush_to_zones(Duration::from_millis(100));
        }
    }
}

impl Shared {
    /// Publishes every zone's open batch and waits until the bus has handed them to the
    /// server (the workers have stopped: nobody else flushes now).
    fn flush_to_zones(&self, timeout: Duration) {
        for i in 0..usize::from(self.intake.zones) {
            self.outbox.flush(i);
        }
        if let Err(e) = self.bus.flush(timeout) {
            tracing::warn!("the last batches to the zones may be lost: {e}");
        }
    }
}
