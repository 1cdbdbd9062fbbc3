//! One connection to the database: SQLite (embedded, bundled, WAL, `synchronous=NORMAL`) or
//! PostgreSQL (the sync `postgres` client; a connection that fails is dropped and made again
//! for the next job); the schema and its migrations; a player's load and a batch's save.
//! Queries are parameterized only.

use std::time::Duration;

use super::config::{DbConfig, PlayerRow};

/// The schema, one step per version (applied in order, each in the startup transaction).
pub const MIGRATIONS: &[(u32, &str)] = &[
    (
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
    ),
    // A cluster's zones: which run (incarnation) of each zone may write. A zone takes its
    // row at start; a save checks it in its transaction, so a replaced run that wakes up
    // (stopped, partitioned) writes nothing.
    (
        2,
        "CREATE TABLE cport_zone_lease (
        zone INTEGER PRIMARY KEY,
        incarnation BIGINT NOT NULL
    )",
    ),
];

/// Which run of which zone a store writes for: its saves commit only while the zone's lease
/// is still this run's (the zone takes its lease at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The zone.
    pub zone: u16,
    /// The run (the bus incarnation: start time in µs).
    pub incarnation: u64,
}

/// The start of the error of a save refused by the fence.
pub(crate) const FENCED: &str = "fenced:";

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

    /// Zone `f.zone`'s lease becomes run `f.incarnation`'s, unless a newer run holds it
    /// (an error: this run was replaced before it started).
    pub fn take_lease(&mut self, f: Fence) -> Result<(), String> {
        let (zone, inc) = (i64::from(f.zone), f.incarnation as i64);
        let newer = |held: i64| {
            format!(
                "zone {}'s lease is held by a newer run (incarnation {held} > {inc})",
                f.zone
            )
        };
        let r = match self {
            Store::Sqlite(c) => (|| {
                use rusqlite::OptionalExtension;
                let tx = c
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(sql_err)?;
                let held: Option<i64> = tx
                    .query_row(
                        "SELECT incarnation FROM cport_zone_lease WHERE zone = ?1",
                        [zone],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sql_err)?;
                if let Some(h) = held.filter(|&h| h > inc) {
                    return Err(newer(h));
                }
                tx.execute(
                    "INSERT INTO cport_zone_lease (zone, incarnation) VALUES (?1, ?2)
                     ON CONFLICT (zone) DO UPDATE SET incarnation = excluded.incarnation",
                    [zone, inc],
                )
                .map_err(sql_err)?;
                tx.commit().map_err(sql_err)
            })(),
            Store::Postgres { .. } => self.pg().and_then(|c| {
                let mut tx = c.transaction().map_err(pg_err)?;
                let zone = zone as i32;
                let held = tx
                    .query_opt(
                        "SELECT incarnation FROM cport_zone_lease WHERE zone = $1 FOR UPDATE",
                        &[&zone],
                    )
                    .map_err(pg_err)?
                    .map(|r| r.get::<_, i64>(0));
                if let Some(h) = held.filter(|&h| h > inc) {
                    return Err(newer(h));
                }
                tx.execute(
                    "INSERT INTO cport_zone_lease (zone, incarnation) VALUES ($1, $2)
                     ON CONFLICT (zone) DO UPDATE SET incarnation = excluded.incarnation",
                    &[&zone, &inc],
                )
                .map_err(pg_err)?;
                tx.commit().map_err(pg_err)
            }),
        };
        if r.is_err() {
            self.reset();
        }
        r
    }

    /// Writes `rows` (insert or update by name) in one transaction; with a fence, only while
    /// the zone's lease is still that run's (else an error starting with `fenced:`).
    pub fn save(&mut self, rows: &[PlayerRow], fence: Option<Fence>) -> Result<(), String> {
        let lost = |f: Fence, held: Option<i64>| {
            format!(
                "{FENCED} zone {}'s lease has moved on (held by {held:?}, this run is {})",
                f.zone, f.incarnation
            )
        };
        let r = match self {
            Store::Sqlite(c) => (|| {
                let tx = c
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(sql_err)?;
                if let Some(f) = fence {
                    use rusqlite::OptionalExtension;
                    let held: Option<i64> = tx
                        .query_row(
                            "SELECT incarnation FROM cport_zone_lease WHERE zone = ?1",
                            [i64::from(f.zone)],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(sql_err)?;
                    if held != Some(f.incarnation as i64) {
                        return Err(lost(f, held));
                    }
                }
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
                if let Some(f) = fence {
                    // FOR SHARE: a new run's `take_lease` (FOR UPDATE) waits for this save
                    // to commit, and this save for it: no write slips in after the take.
                    let held = tx
                        .query_opt(
                            "SELECT incarnation FROM cport_zone_lease WHERE zone = $1 FOR SHARE",
                            &[&i32::from(f.zone)],
                        )
                        .map_err(pg_err)?
                        .map(|r| r.get::<_, i64>(0));
                    if held != Some(f.incarnation as i64) {
                        return Err(lost(f, held));
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, x: u16) -> PlayerRow {
        PlayerRow {
            name: name.into(),
            x,
            y: 1,
            hp: 10,
            max_hp: 10,
            exp: 0,
            level: 1,
        }
    }

    /// The lease of a zone: a newer run takes it; the older run's saves are refused from
    /// then on (and write nothing); an older run cannot take it back.
    fn lease_fences_the_replaced_run(cfg: DbConfig) {
        let mut s = Store::open(&cfg).unwrap();
        s.migrate().unwrap();
        let old = Fence {
            zone: 2,
            incarnation: 1_000,
        };
        let new = Fence {
            zone: 2,
            incarnation: 2_000,
        };
        s.take_lease(old).unwrap();
        s.save(&[row("p", 5)], Some(old)).unwrap();
        // Another zone's lease is its own.
        s.take_lease(Fence {
            zone: 3,
            incarnation: 500,
        })
        .unwrap();
        // The new run of zone 2 starts (on another connection, as another process would).
        let mut other = Store::open(&cfg).unwrap();
        other.take_lease(new).unwrap();
        let refused = s.save(&[row("p", 99)], Some(old)).unwrap_err();
        assert!(refused.starts_with(FENCED), "{refused}");
        assert_eq!(s.load("p").unwrap().unwrap().x, 5, "nothing written");
        other.save(&[row("p", 6)], Some(new)).unwrap();
        assert_eq!(s.load("p").unwrap().unwrap().x, 6);
        let back = s.take_lease(old).unwrap_err();
        assert!(back.contains("newer run"), "{back}");
        // Without a fence (a single server) nothing is checked.
        s.save(&[row("q", 1)], None).unwrap();
    }

    #[test]
    fn a_zone_lease_fences_the_replaced_run_sqlite() {
        let dir = std::env::temp_dir().join(format!(
            "cport-lease-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        lease_fences_the_replaced_run(DbConfig::Sqlite(dir.join("lease.db")));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_zone_lease_fences_the_replaced_run_postgres() {
        let Some(url) = cport_testkit::service("PostgreSQL", "CPORT_TEST_POSTGRES") else {
            return;
        };
        let name = format!("lease_{}", std::process::id());
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let base = url.rsplit_once('/').unwrap().0;
        lease_fences_the_replaced_run(DbConfig::Postgres(format!("{base}/{name}")));
    }
}
