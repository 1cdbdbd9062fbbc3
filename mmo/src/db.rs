//! Persistence off the workers: the course's `EV_DB` pattern.
//!
//! The game's worker threads never wait on the database. A login or a batch of saves is a
//! job on a bounded queue ([`crossbeam_channel::bounded`]); blocking DB threads (separate
//! from the port's workers) run it and post the result back to the completion port with
//! [`Host::post_db`](crate::net::Host::post_db) (on cport:
//! [`ServerHandle::post_message`](cport_server::ServerHandle::post_message)); a worker picks
//! it up in `Handler::on_message` like any I/O completion. A full queue is refused at once (a login gets `SC_LOGIN_FAIL`, a batch of
//! saves stays pending and is retried at the next save tick), never waited on.
//!
//! Threads: `loaders` threads run logins (reads only, so SQLite's WAL lets them run beside
//! the writer), and one writer runs every batch of saves, one transaction per batch, in the
//! order they were queued (so a newer row of a player is never overwritten by an older);
//! batches queued behind the one it takes join its transaction (up to 1000 rows), so the
//! one-row batches of a wave of logouts are written together.
//!
//! Stores: SQLite (embedded, bundled, WAL, `synchronous=NORMAL`: a committed transaction
//! survives `kill -9` of the server) or PostgreSQL (the sync `postgres` client; a connection
//! that fails is dropped and made again for the next job). Queries are parameterized only.
//! The schema is versioned: `cport_schema` holds the version, [`MIGRATIONS`] the steps.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::net::DbResult;

/// Where players are kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DbConfig {
    /// Nowhere: players start fresh at every login (`--db none`).
    #[default]
    None,
    /// An SQLite database file (`sqlite:PATH`), created if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL server (`postgres://USER@HOST:PORT/DB`).
    Postgres(String),
}

impl FromStr for DbConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<DbConfig, String> {
        if s == "none" {
            Ok(DbConfig::None)
        } else if let Some(path) = s.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("sqlite: needs a path (sqlite:PATH)".into());
            }
            Ok(DbConfig::Sqlite(PathBuf::from(path)))
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            s.parse::<postgres::Config>()
                .map_err(|e| format!("bad PostgreSQL URL {s:?}: {e}"))?;
            Ok(DbConfig::Postgres(s.to_string()))
        } else {
            Err(format!(
                "unknown database {s:?}: use sqlite:PATH, postgres://USER@HOST:PORT/DB or none"
            ))
        }
    }
}

impl fmt::Display for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbConfig::None => f.write_str("none"),
            DbConfig::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            // The URL may hold a password: show the scheme only.
            DbConfig::Postgres(_) => f.write_str("postgres"),
        }
    }
}

/// One player as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayerRow {
    /// The login name (valid UTF-8, no NUL, 1..=20 bytes).
    pub name: String,
    /// Column.
    pub x: u16,
    /// Row.
    pub y: u16,
    /// Hit points.
    pub hp: i32,
    /// Most hit points.
    pub max_hp: i32,
    /// Experience.
    pub exp: i32,
    /// Level.
    pub level: i32,
}

/// The schema, one step per version (applied in order, each in the startup transaction).
pub const MIGRATIONS: &[(u32, &str)] = &[(
    1,
    "CREATE TABLE players (
        name TEXT PRIMARY KEY,
        x INTEGER NOT NULL,
        y INTEGER NOT NULL,
        hp INTEGER NOT NULL,
        max_hp INTEGER NOT NULL,
        exp INTEGER NOT NULL,
        level INTEGER NOT NULL
    )",
)];

const SELECT: &str = "SELECT x, y, hp, max_hp, exp, level FROM players WHERE name = $1";
const UPSERT: &str = "INSERT INTO players (name, x, y, hp, max_hp, exp, level)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (name) DO UPDATE SET x = excluded.x, y = excluded.y, hp = excluded.hp,
        max_hp = excluded.max_hp, exp = excluded.exp, level = excluded.level";

/// One connection to the database (each DB thread has its own).
pub(crate) enum Store {
    Sqlite(rusqlite::Connection),
    Postgres {
        cfg: Box<postgres::Config>,
        client: Option<postgres::Client>,
    },
}

fn sql_err(e: rusqlite::Error) -> String {
    e.to_string()
}

fn pg_err(e: postgres::Error) -> String {
    // The server's message is in the source of a `DbError`; `Display` alone says "db error".
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

impl Store {
    /// Opens a connection (`cfg` must not be `None`).
    pub fn open(cfg: &DbConfig) -> Result<Store, String> {
        match cfg {
            DbConfig::None => Err("no database configured".into()),
            DbConfig::Sqlite(path) => {
                use rusqlite::OpenFlags;
                let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let c = rusqlite::Connection::open_with_flags(path, flags)
                    .map_err(|e| format!("open {}: {e}", path.display()))?;
                c.busy_timeout(Duration::from_secs(5)).map_err(sql_err)?;
                let mode: String = c
                    .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if !mode.eq_ignore_ascii_case("wal") {
                    return Err(format!(
                        "{}: could not switch to WAL mode (journal_mode is {mode})",
                        path.display()
                    ));
                }
                c.pragma_update(None, "synchronous", "NORMAL")
                    .map_err(sql_err)?;
                Ok(Store::Sqlite(c))
            }
            DbConfig::Postgres(url) => {
                let mut pc: postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
                // A server that stops answering fails the job in seconds rather than holding
                // a DB thread (and the logins queued behind it) forever.
                pc.connect_timeout(Duration::from_secs(3))
                    .tcp_user_timeout(Duration::from_secs(10))
                    .keepalives_idle(Duration::from_secs(30));
                if pc.get_options().is_none() {
                    pc.options("-c statement_timeout=10000");
                }
                let mut s = Store::Postgres {
                    cfg: Box::new(pc),
                    client: None,
                };
                s.pg()?;
                Ok(s)
            }
        }
    }

    /// The PostgreSQL client, connecting again if the last one failed.
    fn pg(&mut self) -> Result<&mut postgres::Client, String> {
        let Store::Postgres { cfg, client } = self else {
            unreachable!("pg() on SQLite")
        };
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            *client = Some(
                cfg.connect(postgres::NoTls)
                    .map_err(|e| format!("connect to PostgreSQL: {}", pg_err(e)))?,
            );
        }
        Ok(client.as_mut().expect("connected above"))
    }

    /// After an error, a PostgreSQL connection is dropped (the next job connects again).
    fn reset(&mut self) {
        if let Store::Postgres { client, .. } = self {
            *client = None;
        }
    }

    /// Checks the database and brings the schema to the newest version; returns it.
    pub fn migrate(&mut self) -> Result<u32, String> {
        let newest = MIGRATIONS.last().map_or(0, |m| m.0);
        let too_new = |v: u32| {
            format!("the database's schema version {v} is newer than this server's ({newest})")
        };
        match self {
            Store::Sqlite(c) => {
                // At startup a lock held elsewhere is an error soon, not a long wait.
                c.busy_timeout(Duration::from_secs(2)).map_err(sql_err)?;
                // SQLite opens a file it cannot write read-only without a word: say so now,
                // not at the first save.
                if c.is_readonly(rusqlite::MAIN_DB).map_err(sql_err)? {
                    return Err("the database file is read-only".into());
                }
                let check: String = c
                    .query_row("PRAGMA quick_check", [], |r| r.get(0))
                    .map_err(sql_err)?;
                if check != "ok" {
                    return Err(format!("integrity check failed: {check}"));
                }
                let tx = c
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(sql_err)?;
                tx.execute_batch(
                    "CREATE TABLE IF NOT EXISTS cport_schema (version INTEGER NOT NULL)",
                )
                .map_err(sql_err)?;
                let v: i64 = tx
                    .query_row(
                        "SELECT COALESCE(MAX(version), 0) FROM cport_schema",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(sql_err)?;
                let v = v as u32;
                if v > newest {
                    return Err(too_new(v));
                }
                for &(n, sql) in MIGRATIONS.iter().filter(|m| m.0 > v) {
                    tx.execute_batch(sql)
                        .map_err(|e| format!("migration {n}: {e}"))?;
                    tx.execute("INSERT INTO cport_schema (version) VALUES (?1)", [n])
                        .map_err(sql_err)?;
                }
                tx.commit().map_err(sql_err)?;
                c.busy_timeout(Duration::from_secs(5)).map_err(sql_err)?;
                Ok(newest)
            }
            Store::Postgres { .. } => {
                let r = (|| {
                    let c = self.pg()?;
                    let mut tx = c.transaction().map_err(pg_err)?;
                    // Two servers starting at once on one database migrate one after the other.
                    tx.execute("SELECT pg_advisory_xact_lock(7231013)", &[])
                        .map_err(pg_err)?;
                    tx.batch_execute(
                        "CREATE TABLE IF NOT EXISTS cport_schema (version INTEGER NOT NULL)",
                    )
                    .map_err(pg_err)?;
                    let v: i32 = tx
                        .query_one("SELECT COALESCE(MAX(version), 0) FROM cport_schema", &[])
                        .map_err(pg_err)?
                        .get(0);
                    let v = v as u32;
                    if v > newest {
                        return Err(too_new(v));
                    }
                    for &(n, sql) in MIGRATIONS.iter().filter(|m| m.0 > v) {
                        tx.batch_execute(sql)
                            .map_err(|e| format!("migration {n}: {}", pg_err(e)))?;
                        tx.execute(
                            "INSERT INTO cport_schema (version) VALUES ($1)",
                            &[&(n as i32)],
                        )
                        .map_err(pg_err)?;
                    }
                    tx.commit().map_err(pg_err)?;
                    Ok(newest)
                })();
                if r.is_err() {
                    self.reset();
                }
                r
            }
        }
    }

    /// The player named `name`, if stored.
    pub fn load(&mut self, name: &str) -> Result<Option<PlayerRow>, String> {
        let row = |x: i64, y: i64, hp: i64, max_hp: i64, exp: i64, level: i64| PlayerRow {
            name: name.to_string(),
            x: x.clamp(0, i64::from(u16::MAX)) as u16,
            y: y.clamp(0, i64::from(u16::MAX)) as u16,
            hp: hp as i32,
            max_hp: max_hp as i32,
            exp: exp as i32,
            level: level as i32,
        };
        let r = match self {
            Store::Sqlite(c) => {
                use rusqlite::OptionalExtension;
                let mut st = c.prepare_cached(SELECT).map_err(sql_err)?;
                st.query_row([name], |r| {
                    Ok(row(
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .optional()
                .map_err(sql_err)
            }
            Store::Postgres { .. } => self.pg().and_then(|c| {
                let r = c.query_opt(SELECT, &[&name]).map_err(pg_err)?;
                Ok(r.map(|r| {
                    let g = |i: usize| i64::from(r.get::<_, i32>(i));
                    row(g(0), g(1), g(2), g(3), g(4), g(5))
                }))
            }),
        };
        if r.is_err() {
            self.reset();
        }
        r
    }

    /// Writes `rows` (insert or update by name) in one transaction.
    pub fn save(&mut self, rows: &[PlayerRow]) -> Result<(), String> {
        let r = match self {
            Store::Sqlite(c) => (|| {
                let tx = c
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(sql_err)?;
                {
                    let mut st = tx.prepare_cached(UPSERT).map_err(sql_err)?;
                    for p in rows {
                        st.execute(rusqlite::params![
                            p.name, p.x, p.y, p.hp, p.max_hp, p.exp, p.level
                        ])
                        .map_err(sql_err)?;
                    }
                }
                tx.commit().map_err(sql_err)
            })(),
            Store::Postgres { .. } => self.pg().and_then(|c| {
                let mut tx = c.transaction().map_err(pg_err)?;
                let st = tx.prepare(UPSERT).map_err(pg_err)?;
                for p in rows {
                    let (x, y) = (i32::from(p.x), i32::from(p.y));
                    tx.execute(&st, &[&p.name, &x, &y, &p.hp, &p.max_hp, &p.exp, &p.level])
                        .map_err(pg_err)?;
                }
                tx.commit().map_err(pg_err)
            }),
        };
        if r.is_err() {
            self.reset();
        }
        r
    }
}

/// A login's load, asked by a worker.
#[derive(Debug)]
pub(crate) struct LoadJob<I> {
    pub session: I,
    /// The player id the login holds, and its login generation (a result for an older
    /// login of the same id is stale).
    pub id: u32,
    pub gen: u64,
    pub name: String,
}

/// Rows to write, each with the sequence number of its change.
#[derive(Debug)]
pub(crate) struct SaveJob {
    pub rows: Vec<(PlayerRow, u64)>,
}

/// What a DB thread posts back to the port.
#[derive(Debug)]
pub(crate) enum Done<I> {
    Load {
        job: LoadJob<I>,
        result: Result<Option<PlayerRow>, String>,
    },
    Save {
        /// (name, sequence number) of every row of the batch.
        rows: Vec<(String, u64)>,
        result: Result<(), String>,
    },
}

/// The completion key of a DB result (the game's only message).
pub(crate) const DB_KEY: u64 = 1;

/// Counters of the DB threads.
#[derive(Default)]
pub(crate) struct DbCounters {
    pub loads: AtomicU64,
    pub load_errors: AtomicU64,
    pub batches: AtomicU64,
    pub rows_saved: AtomicU64,
    pub save_errors: AtomicU64,
    pub max_batch: AtomicU64,
    pub save_ns: AtomicU64,
}

/// The job queues and the DB threads.
pub(crate) struct DbPool<I> {
    pub loads: Sender<LoadJob<I>>,
    pub saves: Sender<SaveJob>,
    pub counters: Arc<DbCounters>,
    /// CPU time of each DB thread so far (ns), the writer last.
    pub cpu_ns: Arc<[AtomicU64]>,
    /// Dropped to tell the threads to finish the queued jobs and exit.
    stop: parking_lot::Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    load_rx: Receiver<LoadJob<I>>,
    save_rx: Receiver<SaveJob>,
    threads: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

/// Loads queued at most (beyond: `SC_LOGIN_FAIL`, the database is too slow).
pub(crate) const LOAD_QUEUE: usize = 4096;
/// Batches of saves queued at most (beyond: kept pending, retried at the next tick).
pub(crate) const SAVE_QUEUE: usize = 64;

use cport_server::os::thread_cpu_ns;

impl<I: Send + 'static> DbPool<I> {
    /// The queues (jobs wait there until [`DbPool::spawn`]).
    pub fn new(loaders: usize) -> DbPool<I> {
        let (loads, load_rx) = crossbeam_channel::bounded(LOAD_QUEUE);
        let (saves, save_rx) = crossbeam_channel::bounded(SAVE_QUEUE);
        let (stop, stop_rx) = crossbeam_channel::bounded(0);
        DbPool {
            loads,
            saves,
            counters: Arc::default(),
            cpu_ns: (0..=loaders.max(1)).map(|_| AtomicU64::new(0)).collect(),
            stop: parking_lot::Mutex::new(Some(stop)),
            stop_rx,
            load_rx,
            save_rx,
            threads: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// Starts the threads, one store each (`stores.len()` = loaders + 1, the writer's last).
    pub fn spawn<H: crate::net::Host<ConnId = I>>(
        &self,
        mut stores: Vec<Store>,
        srv: H,
    ) -> std::io::Result<()> {
        let writer_store = stores.pop().expect("a store for the writer");
        let mut threads = self.threads.lock();
        for (i, mut store) in stores.into_iter().enumerate() {
            let (rx, stop, srv) = (self.load_rx.clone(), self.stop_rx.clone(), srv.clone());
            let (c, cpu) = (self.counters.clone(), self.cpu_ns.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("cport-db-load{i}"))
                    .spawn(move || {
                        let run = |job: LoadJob<I>, store: &mut Store| {
                            let result = store.load(&job.name);
                            c.loads.fetch_add(1, Relaxed);
                            if let Err(e) = &result {
                                c.load_errors.fetch_add(1, Relaxed);
                                tracing::warn!(name = ?job.name, "loading a player failed: {e}");
                            }
                            cpu[i].store(thread_cpu_ns(), Relaxed);
                            // Refused only at shutdown: the login is gone with the sessions.
                            let _ = srv.post_db(DbResult(Done::Load { job, result }));
                        };
                        worker_loop(&rx, &stop, |job| run(job, &mut store));
                    })?,
            );
        }
        let (rx, stop) = (self.save_rx.clone(), self.stop_rx.clone());
        let more = self.save_rx.clone();
        let (c, cpu) = (self.counters.clone(), self.cpu_ns.clone());
        let mut store = writer_store;
        threads.push(
            std::thread::Builder::new()
                .name("cport-db-save".into())
                .spawn(move || {
                    worker_loop(&rx, &stop, |job: SaveJob| {
                        // Jobs queued behind this one (rows of logouts, one each) join its
                        // transaction, in queue order (a later row of a name wins).
                        let mut job = job;
                        while job.rows.len() < crate::persist::MAX_BATCH {
                            match more.try_recv() {
                                Ok(next) => job.rows.extend(next.rows),
                                Err(_) => break,
                            }
                        }
                        let t0 = Instant::now();
                        let rows: Vec<PlayerRow> = job.rows.iter().map(|r| r.0.clone()).collect();
                        let result = store.save(&rows);
                        c.save_ns.fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
                        match &result {
                            Ok(()) => {
                                c.batches.fetch_add(1, Relaxed);
                                c.rows_saved.fetch_add(rows.len() as u64, Relaxed);
                                c.max_batch.fetch_max(rows.len() as u64, Relaxed);
                            }
                            Err(e) => {
                                c.save_errors.fetch_add(1, Relaxed);
                                tracing::warn!(
                                    rows = rows.len(),
                                    "saving a batch failed (kept, retried): {e}"
                                );
                            }
                        }
                        cpu[cpu.len() - 1].store(thread_cpu_ns(), Relaxed);
                        let rows = job.rows.into_iter().map(|(r, seq)| (r.name, seq)).collect();
                        // Refused only at shutdown; the final flush writes every row again.
                        let _ = srv.post_db(DbResult(Done::Save { rows, result }));
                    });
                })?,
        );
        Ok(())
    }
}

impl<I> DbPool<I> {
    /// Lets the threads finish the jobs queued and joins them.
    pub fn stop(&self) {
        drop(self.stop.lock().take());
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }

    /// Total CPU time of the DB threads so far.
    pub fn cpu(&self) -> Duration {
        Duration::from_nanos(self.cpu_ns.iter().map(|c| c.load(Relaxed)).sum())
    }
}

/// Runs jobs until `stop` is disconnected, then the jobs still queued, then returns.
fn worker_loop<J>(rx: &Receiver<J>, stop: &Receiver<()>, mut run: impl FnMut(J)) {
    loop {
        crossbeam_channel::select! {
            recv(rx) -> job => match job {
                Ok(job) => run(job),
                Err(_) => return,
            },
            recv(stop) -> _ => {
                while let Ok(job) = rx.try_recv() {
                    run(job);
                }
                return;
            }
        }
    }
}

impl<I> Drop for DbPool<I> {
    fn drop(&mut self) {
        self.stop();
    }
}
