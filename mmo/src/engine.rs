//! [`Engine`]: the game on any network that implements [`Host`] — built from a [`Config`]
//! (the NPCs placed, the database opened), its entry points, and what it tells about itself.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use cport_mmo_proto as protocol;
use cport_mmo_proto::splitmix64;
use cport_server::LengthPrefixed;
use parking_lot::Mutex;

use crate::cluster::state::{ZoneSetup, ZoneState, ZoneStats};
use crate::cluster::wire::{Msg, Source};
use crate::config::{Config, MAX_IDS};
use crate::db::{DbConfig, DbPool, Persist, PlayerRow, Store};
use crate::game::npc::npc_spawn;
use crate::game::{self, Counters, Game, NpcLife, Player, Rng};
use crate::net::{DbResult, Host};
use crate::script::Scripts;
use crate::stats::{DbStats, Placed, Snapshot, Stats};
use crate::world::{self, unpack, State, World};

/// The game itself, on any network that implements [`Host`] and [`Conn`](crate::Conn): the world, the
/// rules, the NPCs, login and persistence. [`start`](crate::start) runs it on the server layer; a
/// benchmark peer runs it on another runtime by calling the `on_*` entry points the way the
/// server layer's handler does (each may be called on any thread, concurrently, except that
/// one connection's packets are handed over one at a time and in order, and its
/// [`Engine::on_close`] comes once, after its last packet).
pub struct Engine<H: Host> {
    pub(crate) game: Arc<Game<H>>,
    /// The DB threads' connections, until [`Engine::spawn_db`].
    stores: Mutex<Vec<Store>>,
    max_sessions: usize,
    max_packet: usize,
}

impl<H: Host> std::fmt::Debug for Engine<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("max_sessions", &self.max_sessions)
            .finish_non_exhaustive()
    }
}

impl<H: Host> Engine<H> {
    /// Places the NPCs and opens the database (a file that is locked, read-only or corrupt,
    /// or a server that cannot be reached, is an error here). Nothing runs yet.
    pub fn new(cfg: &Config) -> io::Result<Engine<H>> {
        Self::build(cfg, None)
    }

    /// The game as zone `zone.me` of a cluster (the `cport zone` process): it owns the
    /// players and NPCs of its rectangle, holds ghosts of its neighbours', and takes the
    /// bus's messages through [`Engine::on_cluster`]. `cfg.max_users` is the cluster's.
    pub fn new_zone(cfg: &Config, zone: ZoneSetup) -> io::Result<Engine<H>> {
        if zone.layout.size != cfg.world_size || usize::from(zone.me) >= zone.layout.zones() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "zone {} of a {}-zone layout of a {}-cell board, for a {}-cell game",
                    zone.me,
                    zone.layout.zones(),
                    zone.layout.size,
                    cfg.world_size
                ),
            ));
        }
        Self::build(cfg, Some(zone))
    }

    fn build(cfg: &Config, zone: Option<ZoneSetup>) -> io::Result<Engine<H>> {
        let size = cfg.world_size.clamp(1, i16::MAX as u16);
        // Ids go on the wire as the protocol's `int`: players `0..max_users`, NPCs after them.
        // Checked before anything is allocated for them.
        if cfg
            .max_users
            .checked_add(cfg.npcs)
            .is_none_or(|n| n > MAX_IDS)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "max_users {} + npcs {} is more ids than the protocol's i32 ids can carry (at most {MAX_IDS})",
                    cfg.max_users, cfg.npcs
                ),
            ));
        }
        if let Some(m) = &cfg.map {
            if (m.width(), m.height()) != (size, size) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the map is {}x{}, the board {size}x{size} (--world-size)",
                        m.width(),
                        m.height()
                    ),
                ));
            }
            if m.next_open(0, 0).is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the map has no open cell",
                ));
            }
        }
        let npcs: Vec<(u16, u16)> = (0..cfg.npcs)
            .map(|i| npc_spawn(cfg.seed, i, size, cfg.map.as_deref()))
            .collect();
        let max_sessions = cfg
            .max_sessions
            .unwrap_or(cfg.max_users + cfg.overflow_sessions)
            .max(1);
        let (persist, stores) = match &cfg.db {
            DbConfig::None => (None, Vec::new()),
            db => {
                let fail = |e: String| io::Error::other(format!("database {db}: {e}"));
                let mut first = Store::open(db).map_err(fail)?;
                first.migrate().map_err(fail)?;
                // The first store did the migrations and is not kept (each DB thread has its
                // own connection).
                let mut stores = Vec::new();
                for _ in 0..cfg.db_threads.max(1) {
                    stores.push(Store::open(db).map_err(fail)?);
                }
                let mut pool = DbPool::new(cfg.db_threads.max(1));
                if let Some((me, inc)) = zone.as_ref().and_then(|z| Some((z.me, z.lease?))) {
                    let fence = crate::db::Fence {
                        zone: me,
                        incarnation: inc,
                    };
                    first.take_lease(fence).map_err(fail)?;
                    pool.fence = Some(fence);
                }
                (
                    Some(Persist::new(db.clone(), pool, cfg.save_interval)),
                    stores,
                )
            }
        };
        let scripts = match &cfg.npc_script {
            Some(src) => {
                // Two shards a worker: a worker whose shard is busy rarely finds the next busy.
                let threads = match cfg.threads {
                    0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
                    n => n,
                };
                let scripts = Scripts::load(
                    src,
                    2 * threads,
                    cfg.max_users as u32,
                    cfg.npcs,
                    cfg.script_limits,
                    game::script_api::register::<H>,
                )?;
                // Scripts run on all workers but one: however slow a script is, the network
                // and the game's timers keep a worker (`script::Gate`).
                scripts.gate.limit(threads.saturating_sub(1));
                Some(scripts)
            }
            None => None,
        };
        let game = Arc::new(Game {
            world: World::new(size, cfg.view_range, cfg.max_users, &npcs).with_map(cfg.map.clone()),
            free_ids: Mutex::new((0..cfg.max_users as u32).rev().collect()),
            player_of: (0..max_sessions)
                .map(|_| AtomicU32::new(game::NO_PLAYER))
                .collect(),
            last_move_time: (0..cfg.max_users).map(|_| AtomicU32::new(0)).collect(),
            header: cfg.header,
            npc_interval: cfg.npc_interval,
            rng: Rng::new(splitmix64(cfg.seed)),
            counters: Counters::default(),
            players: (0..cfg.max_users).map(|_| Player::new()).collect(),
            online: Mutex::new(Default::default()),
            npc_life: (0..cfg.npcs).map(|_| Mutex::new(NpcLife::new())).collect(),
            npc_spawn: npcs.iter().map(|&(x, y)| world::pack(x, y)).collect(),
            aggressive_pct: cfg.aggressive_npcs.min(100),
            seed: cfg.seed,
            give_up: cfg.npc_give_up,
            npc_respawn: cfg.npc_respawn,
            regen_interval: cfg.regen_interval,
            persist,
            login_us: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2)
                    .expect("valid histogram bounds"),
            ),
            zone: zone
                .as_ref()
                .map(|z| ZoneState::new(z, cfg.max_users + cfg.npcs)),
            scripts,
        });
        if let Some(s) = &game.scripts {
            // What the API functions reach the game through (weak: the game owns the scripts).
            s.attach(Arc::downgrade(&game));
        }
        // A zone's board holds only its own NPCs; the others' appear as ghosts.
        let first_npc = cfg.max_users as u32;
        for npc in first_npc..first_npc + cfg.npcs as u32 {
            if game.npc_elsewhere(npc).is_some() {
                game.world.objs[npc as usize].view.lock().state = State::Left;
                game.world.sector_remove(npc, game.world.pos(npc));
            }
        }
        Ok(Engine {
            game,
            stores: Mutex::new(stores),
            max_sessions,
            // The largest client packet is a chat of 100 bytes; a size field above that is a
            // lie.
            max_packet: protocol::header_len(cfg.header) + protocol::CHAT_SIZE,
        })
    }

    /// Most connections at once: `max_users` plus the overflow that is told
    /// `SC_LOGIN_FAIL`; [`Conn::slot`](crate::Conn::slot) must be below it. Beyond, close new connections at
    /// once.
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// The framing of client packets (a size field as the config says, at most a chat's
    /// length): a packet it refuses closes the connection.
    pub fn codec(&self) -> LengthPrefixed {
        LengthPrefixed::new(self.game.header).max_packet(self.max_packet)
    }

    /// Starts the DB threads, which post their results to `host` (nothing with `--db
    /// none`), and the save tick. Once, when `host` can take posts.
    pub fn spawn_db(&self, host: H) -> io::Result<()> {
        if let Some(p) = &self.game.persist {
            // Jobs queued before this wait in the queues.
            let stores = std::mem::take(&mut *self.stores.lock());
            p.pool
                .spawn(stores, move |done| host.post_db(DbResult(done)))?;
        }
        Ok(())
    }

    /// The server is up: starts the save tick (the server layer calls this from its
    /// `on_start`).
    pub fn on_start(&self, host: &H) {
        self.game.on_start(host);
    }

    /// A connection was accepted (before its first packet).
    #[inline]
    pub fn on_connect(&self, conn: &H::Conn) {
        self.game.on_connect(conn);
    }

    /// One whole packet of `conn` (framed by [`Engine::codec`]).
    #[inline]
    pub fn on_packet(&self, conn: &H::Conn, packet: &[u8]) {
        self.game.on_packet(conn, packet);
    }

    /// `conn` closed (once, after its last `on_packet`): its player leaves, its slot and id
    /// are free again.
    pub fn on_close(&self, conn: &H::Conn) {
        self.game.on_close(conn);
    }

    /// A timer posted with [`Host::post_after`] fired.
    #[inline]
    pub fn on_timer(&self, host: &H, key: u64, value: u64) {
        self.game.on_timer(host, key, value);
    }

    /// A result posted with [`Host::post_db`].
    pub fn on_db(&self, host: &H, result: DbResult<H::ConnId>) {
        self.game.on_db(host, result);
    }

    /// Cluster: this zone is serving (its inbox subscribed): the other zones get its ghosts
    /// and are asked for theirs.
    pub fn zone_started(&self, host: &H) {
        self.game.zone_started(host);
    }

    /// Cluster: one entry of a batch from the bus, from `from` (a zone's host calls this for
    /// each entry, each source's batches in the order they were sent).
    pub fn on_cluster(&self, host: &H, from: Source, incarnation: u64, msg: Msg) {
        self.game.on_cluster(host, from, incarnation, msg);
    }

    /// Cluster: a batch from run `incarnation` of `from` is about to be handled. `false`: that
    /// run has been replaced by a newer one — drop the batch (and tell the sender it is
    /// fenced). A newer run than the last seen means the old one is gone: a gateway's
    /// players leave the game, a zone's ghosts are dropped.
    pub fn source_run(&self, host: &H, from: Source, incarnation: u64) -> bool {
        self.game.source_run(host, from, incarnation)
    }

    /// Cluster: the newest run (incarnation) seen of `from` (0: none yet).
    pub fn newest_run(&self, from: Source) -> u64 {
        self.game.newest_run(from)
    }

    /// Cluster: batches of zone `zone` were lost (a gap in its sequence): its ghosts here are
    /// dropped and asked for again.
    pub fn zone_gap(&self, host: &H, zone: u16) {
        self.game.zone_gap(host, zone);
    }

    /// Cluster: gateway `gateway` has not been heard from for too long while this zone's bus
    /// was up: its run counts as replaced (its players leave the game).
    pub fn gateway_silent(&self, host: &H, gateway: u16) {
        self.game.gateway_silent(host, gateway);
    }

    /// From now on nothing is written to the database (a run that was replaced, or a test's
    /// crash of a zone).
    pub fn stop_writing(&self) {
        if let Some(p) = &self.game.persist {
            p.pool.counters.fenced.store(true, Relaxed);
        }
    }

    /// Cluster: a newer run of this zone writes to the database now (a save was refused by
    /// the zone's lease): this run must stop.
    pub fn fenced(&self) -> bool {
        self.game
            .persist
            .as_ref()
            .is_some_and(|p| p.pool.counters.fenced.load(Relaxed))
    }

    /// Cluster: what this zone did so far (`None` for a single server).
    pub fn zone_stats(&self) -> Option<ZoneStats> {
        self.game.zone.as_ref().map(|z| z.stats())
    }

    /// The game's counters now.
    pub fn stats(&self) -> Stats {
        let c = &self.game.counters;
        let g_scripts = self.game.scripts.as_ref();
        Stats {
            players: c.players.load(Relaxed),
            awake_npcs: c.awake_npcs.load(Relaxed),
            npc_timers: c.npc_timers.load(Relaxed),
            npc_moves: c.npc_moves.load(Relaxed),
            logins: c.logins.load(Relaxed),
            login_fails: c.login_fails.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            moves: c.moves.load(Relaxed),
            attacks: c.attacks.load(Relaxed),
            npc_kills: c.npc_kills.load(Relaxed),
            npc_respawns: c.npc_respawns.load(Relaxed),
            level_ups: c.level_ups.load(Relaxed),
            player_deaths: c.player_deaths.load(Relaxed),
            stat_changes: c.stat_changes.load(Relaxed),
            npc_attacks: c.npc_attacks.load(Relaxed),
            script_calls: g_scripts.map_or(0, |s| s.calls.load(Relaxed)),
            script_errors: g_scripts.map_or(0, |s| s.errors.load(Relaxed)),
            script_kills: g_scripts.map_or(0, |s| s.kills.load(Relaxed)),
            script_dropped: g_scripts.map_or(0, |s| s.gate.dropped.load(Relaxed)),
        }
    }

    /// Lua memory of the NPC scripts now, in bytes (0 without scripts).
    pub fn script_memory(&self) -> usize {
        self.game.scripts.as_ref().map_or(0, |s| s.memory())
    }

    /// Makes every NPC's script environment now and calls its `set_uid` (otherwise done at
    /// each NPC's first event): what all NPCs scripted cost in memory, for measuring it
    /// ([`Engine::script_memory`]). An error if a script's top-level code or `set_uid` fails.
    pub fn prepare_scripts(&self, host: &H) -> io::Result<()> {
        match &self.game.scripts {
            Some(s) => s.prepare_all(host.clone()).map_err(io::Error::other),
            None => Ok(()),
        }
    }

    /// Reads and compiles the NPC script again and, if it loads, swaps it in: every NPC's
    /// environment is made anew at its next event (`set_uid` runs again) and NPCs the budget
    /// disabled run again. A script that does not load changes nothing (the error says
    /// why, as at start). Without scripts, nothing to do.
    pub fn reload_scripts(&self) -> io::Result<()> {
        match &self.game.scripts {
            Some(s) => s.reload(),
            None => Ok(()),
        }
    }

    /// What persistence did so far.
    pub fn db_stats(&self) -> DbStats {
        let g = &self.game;
        let h = g.login_us.lock();
        let mut s = DbStats {
            login_p50_us: h.value_at_quantile(0.5),
            login_p99_us: h.value_at_quantile(0.99),
            login_max_us: h.max(),
            login_count: h.len(),
            ..DbStats::default()
        };
        drop(h);
        if let Some(p) = &g.persist {
            let c = &p.pool.counters;
            s.loads = c.loads.load(Relaxed);
            s.load_errors = c.load_errors.load(Relaxed);
            s.batches = c.batches.load(Relaxed);
            s.rows_saved = c.rows_saved.load(Relaxed);
            s.max_batch = c.max_batch.load(Relaxed);
            s.save_errors = c.save_errors.load(Relaxed);
            s.deferred = p.deferred.load(Relaxed);
            s.pending_rows = p.pending();
            s.save_time = Duration::from_nanos(c.save_ns.load(Relaxed));
            s.cpu = p.pool.cpu();
        }
        s
    }

    /// The stats (hp, max_hp, exp, level) of the player with this id, if on the board.
    pub fn player_stats(&self, id: u32) -> Option<(i32, i32, i32, i32)> {
        let p = self.game.players.get(id as usize)?;
        if !p.login.lock().placed {
            return None;
        }
        let s = *p.stats.lock();
        Some((s.hp, s.max_hp, s.exp, s.level))
    }

    /// Whether NPC `id` is alive now (`None` if `id` is not an NPC).
    pub fn npc_alive(&self, id: u32) -> Option<bool> {
        let w = &self.game.world;
        let i = id.checked_sub(w.max_users)? as usize;
        Some(self.game.npc_life.get(i)?.lock().alive)
    }

    /// The player NPC `id` chases now: `Some(None)` when it chases nobody (`None` if `id`
    /// is not an NPC).
    pub fn npc_target(&self, id: u32) -> Option<Option<u32>> {
        let w = &self.game.world;
        let i = id.checked_sub(w.max_users)? as usize;
        let t = self.game.npc_life.get(i)?.lock().target;
        Some((t != game::NO_PLAYER).then_some(t))
    }

    /// NPC moves for scripts (and tests): one A* step of NPC `npc` toward cell `(x, y)`
    /// around obstacles, stopping next to it; `false` if it did not move (dead, not this
    /// zone's, next to the cell already, or no way within the search's bounds). Any thread.
    pub fn npc_step_toward(&self, host: &H, npc: u32, x: u16, y: u16) -> bool {
        self.game.npc_step_toward(host, npc, x, y)
    }

    /// NPC `npc` hits player `target` (the rules' `NPC_HIT`: a system `SC_CHAT` and
    /// `SC_STAT_CHANGE` to the player) if both are on the board and next to each other;
    /// `false` if not. Any thread.
    pub fn npc_attack(&self, npc: u32, target: u32) -> bool {
        self.game.npc_attack(npc, target)
    }

    /// Where the players and the awake NPCs are now.
    pub fn snapshot(&self) -> Snapshot {
        let w = &self.game.world;
        let placed = |id: u32| {
            let (x, y) = unpack(w.pos(id));
            Placed { id, x, y }
        };
        let players = (0..w.max_users)
            .filter(|&id| w.objs[id as usize].view.lock().state == State::InGame)
            .map(placed)
            .collect();
        let awake_npcs = (0..w.npc_count())
            .filter(|&i| w.awake[i].load(Relaxed))
            .map(|i| placed(w.max_users + i as u32))
            .collect();
        Snapshot {
            world_size: w.size,
            players,
            awake_npcs,
        }
    }

    /// Where object `id` (player or NPC) is now.
    pub fn position(&self, id: u32) -> Option<(u16, u16)> {
        let w = &self.game.world;
        ((id as usize) < w.objs.len()).then(|| unpack(w.pos(id)))
    }

    /// Test hook (the `mmo_session` fuzz target; not part of the API): checks the world's
    /// invariants once and describes the first one broken. Every object on the board (and
    /// only those) is in exactly the sector of its position, inside the board; every view set
    /// is exactly the objects in range that are on the board (players see players and NPCs,
    /// NPCs see players); an object off the board sees nothing and is seen by none; a
    /// player has a session exactly while on the board; the player and awake-NPC counters
    /// match. Each lock is taken alone, so an object moving meanwhile can make it fail
    /// once: it is meant for a world at rest, and callers retry.
    #[doc(hidden)]
    pub fn check_world(&self) -> Result<(), String> {
        let g = &self.game;
        let w = &g.world;
        let n = w.objs.len();
        let mut on = vec![false; n];
        let mut sets: Vec<Vec<u32>> = Vec::with_capacity(n);
        let mut pos = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let life = w
                .is_npc(id)
                .then(|| g.npc_life[(id - w.max_users) as usize].lock().alive);
            let v = w.objs[id as usize].view.lock();
            let p = w.pos(id);
            let in_game = v.state == State::InGame;
            if let Some(alive) = life {
                if alive != in_game {
                    return Err(format!("NPC {id}: alive {alive}, state {:?}", v.state));
                }
            } else if v.session.is_some() != in_game {
                return Err(format!(
                    "player {id}: state {:?} but session {}",
                    v.state,
                    if v.session.is_some() { "set" } else { "none" }
                ));
            }
            let (x, y) = unpack(p);
            if x >= w.size || y >= w.size {
                return Err(format!("object {id} at ({x}, {y}), off a {} board", w.size));
            }
            let mut set: Vec<u32> = v.set.iter().copied().collect();
            set.sort_unstable();
            on[id as usize] = in_game;
            sets.push(set);
            pos.push(p);
        }
        for a in 0..n as u32 {
            let expected: Vec<u32> = if on[a as usize] {
                (0..n as u32)
                    .filter(|&b| {
                        b != a
                            && on[b as usize]
                            && !(w.is_npc(a) && w.is_npc(b))
                            && w.in_range(pos[a as usize], pos[b as usize])
                    })
                    .collect()
            } else {
                Vec::new()
            };
            if sets[a as usize] != expected {
                return Err(format!(
                    "view set of {a} at {:?} ({}): {:?}, objects in range: {expected:?}",
                    unpack(pos[a as usize]),
                    if on[a as usize] {
                        "on the board"
                    } else {
                        "off the board"
                    },
                    sets[a as usize]
                ));
            }
        }
        let mut seen = vec![0u32; n];
        for (sector, id) in w.sector_members() {
            let Some(count) = seen.get_mut(id as usize) else {
                return Err(format!("unknown id {id} in sector {sector}"));
            };
            *count += 1;
            let want = w.sector_index(pos[id as usize]);
            if sector != want {
                return Err(format!(
                    "object {id} at {:?} is in sector {sector}, not {want}",
                    unpack(pos[id as usize])
                ));
            }
        }
        for id in 0..n {
            if seen[id] != u32::from(on[id]) {
                return Err(format!(
                    "object {id} ({}) is in {} sectors",
                    if on[id] {
                        "on the board"
                    } else {
                        "off the board"
                    },
                    seen[id]
                ));
            }
        }
        let players = on[..w.max_users as usize].iter().filter(|&&b| b).count();
        let counted = g.counters.players.load(Relaxed);
        if counted != players {
            return Err(format!(
                "{players} players on the board, counter says {counted}"
            ));
        }
        let awake = w.awake.iter().filter(|a| a.load(Relaxed)).count();
        let counted = g.counters.awake_npcs.load(Relaxed);
        if counted != awake {
            return Err(format!("{awake} NPCs awake, counter says {counted}"));
        }
        Ok(())
    }

    /// Test hook (the `mmo_session` fuzz target; not part of the API): the ids in the view
    /// set of object `id`, sorted (what its client must have been told about).
    #[doc(hidden)]
    pub fn view_set(&self, id: u32) -> Option<Vec<u32>> {
        let obj = self.game.world.objs.get(id as usize)?;
        let mut set: Vec<u32> = obj.view.lock().set.iter().copied().collect();
        set.sort_unstable();
        Some(set)
    }

    /// Writes every row not known to be saved; returns how many.
    pub fn flush_all(&self) -> usize {
        let g = &self.game;
        let Some(p) = &g.persist else { return 0 };
        // No worker runs now: a player still on the board (a session not closed by the
        // deadline) is written too.
        for (id, pl) in g.players.iter().enumerate() {
            let l = pl.login.lock();
            if l.placed {
                let (x, y) = unpack(g.world.pos(id as u32));
                let s = *pl.stats.lock();
                p.put(PlayerRow {
                    name: l.name.clone(),
                    x,
                    y,
                    hp: s.hp,
                    max_hp: s.max_hp,
                    exp: s.exp,
                    level: s.level,
                });
            }
        }
        match p.final_flush(Duration::from_secs(10)) {
            Ok(n) => {
                tracing::info!("shutdown: {n} player rows written");
                n
            }
            Err(e) => {
                tracing::error!("shutdown: {e}");
                0
            }
        }
    }
}
