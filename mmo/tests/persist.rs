//! Players that persist: each promise against SQLite (a file of its own per test) and against
//! PostgreSQL (a database of its own per test on the server `CPORT_TEST_POSTGRES` names —
//! `scripts/test` starts one; without it the PostgreSQL tests say they are skipped and pass,
//! except under `scripts/test`, where they fail: `cport_testkit::service`).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Client, TIMEOUT};
use cport_mmo::{Config, DbConfig, MmoServer, PlayerRow};
use cport_mmo_proto::{ClientPacket, Direction, Name, ServerPacket, SizeField::U8};

/// Shutdown deadline: clients still connected are closed after this (their rows are saved
/// either way).
const QUICK: Duration = Duration::from_millis(300);

/// A database of its own for one test.
struct TestDb {
    cfg: DbConfig,
    /// SQLite: the directory to remove. PostgreSQL: (admin URL, database name) to drop.
    dir: Option<PathBuf>,
    pg: Option<(String, String)>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
        if let Some((url, name)) = &self.pg {
            if let Ok(mut c) = ::postgres::Client::connect(url, ::postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

fn unique(test: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{test}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Relaxed)
    )
}

fn sqlite_db(test: &str) -> TestDb {
    let dir = std::env::temp_dir().join(format!("cport-mmo-{}", unique(test)));
    std::fs::create_dir_all(&dir).unwrap();
    TestDb {
        cfg: DbConfig::Sqlite(dir.join("mmo.db")),
        dir: Some(dir),
        pg: None,
    }
}

/// The PostgreSQL server of `scripts/test`; `None` (the test is skipped) without one, a
/// failure when it is set but cannot be reached.
pub fn postgres_url() -> Option<String> {
    let url = cport_testkit::service("PostgreSQL", "CPORT_TEST_POSTGRES")?;
    if let Err(e) = ::postgres::Client::connect(&url, ::postgres::NoTls) {
        panic!(
            "CPORT_TEST_POSTGRES={url} cannot be reached ({e}). Run the tests with scripts/test \
             (it starts a throwaway PostgreSQL)"
        );
    }
    Some(url)
}

fn pg_db(test: &str) -> Option<TestDb> {
    let url = postgres_url()?;
    let name = unique(test).to_lowercase();
    let mut c = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    // The same server, the new database.
    let base = url.rsplit_once('/').unwrap().0;
    Some(TestDb {
        cfg: DbConfig::Postgres(format!("{base}/{name}")),
        dir: None,
        pg: Some((url, name)),
    })
}

/// A game with `db`, a 50×50 board (view range 7), no NPCs, saves every `save` ms.
fn game(db: &TestDb, save_ms: u64) -> MmoServer {
    common::start(Config {
        threads: 2,
        world_size: 50,
        db: db.cfg.clone(),
        save_interval: Duration::from_millis(save_ms),
        ..Config::default()
    })
}

/// The row stored for `name`, read straight from the database.
fn stored(db: &TestDb, name: &str) -> Option<PlayerRow> {
    match &db.cfg {
        DbConfig::Sqlite(path) => {
            let c = rusqlite::Connection::open(path).unwrap();
            let mut st = c
                .prepare("SELECT x, y, hp, max_hp, exp, level FROM players WHERE name = ?1")
                .unwrap();
            let mut rows = st
                .query_map([name], |r| {
                    Ok(PlayerRow {
                        name: name.into(),
                        x: r.get(0)?,
                        y: r.get(1)?,
                        hp: r.get(2)?,
                        max_hp: r.get(3)?,
                        exp: r.get(4)?,
                        level: r.get(5)?,
                    })
                })
                .unwrap();
            rows.next().map(|r| r.unwrap())
        }
        DbConfig::Postgres(url) => {
            let mut c = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
            c.query_opt(
                "SELECT x, y, hp, max_hp, exp, level FROM players WHERE name = $1",
                &[&name],
            )
            .unwrap()
            .map(|r| PlayerRow {
                name: name.into(),
                x: r.get::<_, i32>(0) as u16,
                y: r.get::<_, i32>(1) as u16,
                hp: r.get(2),
                max_hp: r.get(3),
                exp: r.get(4),
                level: r.get(5),
            })
        }
        DbConfig::None => None,
    }
}

/// Runs SQL straight on the test's database.
fn exec(db: &TestDb, sql: &str) {
    match &db.cfg {
        DbConfig::Sqlite(path) => rusqlite::Connection::open(path)
            .unwrap()
            .execute_batch(sql)
            .unwrap(),
        DbConfig::Postgres(url) => ::postgres::Client::connect(url, ::postgres::NoTls)
            .unwrap()
            .batch_execute(sql)
            .unwrap(),
        DbConfig::None => {}
    }
}

/// Steps right (or left at the edge) `n` times; returns where the client ends.
fn walk(c: &mut Client, n: u32) -> (u16, u16) {
    for t in 1..=n {
        let d = if c.pos.0 < 40 {
            Direction::Right
        } else {
            Direction::Down
        };
        c.move_(d, t);
        c.pump_until_own_move(t);
    }
    c.pos
}

/// Connects, sends CS_LOGIN with these 20 raw bytes, returns the first reply.
fn login_raw(srv: &MmoServer, raw: Name) -> (Client, ServerPacket) {
    let mut c = Client::connect(srv.local_addr(), U8);
    c.send(&ClientPacket::Login { name: raw });
    let p = c.recv();
    (c, p)
}

fn info_of(p: &ServerPacket) -> (u16, u16, (i32, i32, i32, i32)) {
    match *p {
        ServerPacket::LoginInfo {
            x,
            y,
            hp,
            max_hp,
            exp,
            level,
            ..
        } => (x as u16, y as u16, (hp, max_hp, exp, level)),
        ref other => panic!("expected SC_LOGIN_INFO, got {other:?}"),
    }
}

// ---- the promises, each run on SQLite and on PostgreSQL ----

/// A player logs out, the server restarts, and the player logs in where it left, with its
/// stats; a new name starts at level 1 with full hit points.
fn a_player_comes_back_where_it_logged_out(db: TestDb) {
    let srv = game(&db, 1000);
    let mut c = Client::login(srv.local_addr(), U8, "alice");
    let end = walk(&mut c, 5);
    c.send(&ClientPacket::Logout);
    c.expect_closed();
    common::wait_until("alice's row is saved at logout", || {
        stored(&db, "alice").is_some_and(|r| (r.x, r.y) == end)
    });
    srv.shutdown(QUICK);
    let srv = game(&db, 1000);
    let (_c, p) = login_raw(&srv, cport_mmo_proto::name("alice"));
    let (x, y, stats) = info_of(&p);
    assert_eq!((x, y), end, "alice is not where she logged out");
    assert_eq!(stats, (100, 100, 0, 1));
    srv.shutdown(QUICK);
}

/// A change is in the database within the save interval, without logging out; many players'
/// changes go in batches.
fn changes_are_written_behind_within_the_save_interval(db: TestDb) {
    let srv = game(&db, 100);
    let mut clients: Vec<Client> = (0..5)
        .map(|i| Client::login(srv.local_addr(), U8, &format!("w{i}")))
        .collect();
    for c in &mut clients {
        walk(c, 2);
    }
    for c in &mut clients {
        // Drain what the others' moves caused (not needed for the check).
        while c.try_recv(Duration::from_millis(1)).is_some() {}
    }
    common::wait_until("every player's position is in the database", || {
        clients
            .iter()
            .enumerate()
            .all(|(i, c)| stored(&db, &format!("w{i}")).is_some_and(|r| (r.x, r.y) == c.pos))
    });
    let s = srv.db_stats();
    assert!(s.batches >= 1 && s.rows_saved >= 5, "{s}");
    assert!(
        s.max_batch >= 2,
        "changes within one interval should share a batch: {s}"
    );
    drop(clients);
    srv.shutdown(QUICK);
}

/// Graceful shutdown writes what changed, even with a save interval far longer than the run.
fn shutdown_writes_every_unsaved_change(db: TestDb) {
    let srv = game(&db, 3_600_000);
    let mut c = Client::login(srv.local_addr(), U8, "bob");
    let end = walk(&mut c, 3);
    assert!(stored(&db, "bob").is_none(), "saved before the interval");
    let (report, stats) = srv.shutdown_with_db(QUICK);
    assert_eq!(report.sessions, 1);
    assert_eq!(stats.pending_rows, 0, "{stats}");
    let row = stored(&db, "bob").expect("bob saved at shutdown");
    assert_eq!((row.x, row.y), end);
}

/// A name logged in (or logging in) is refused; once that player has gone, it logs in again.
fn a_name_already_logged_in_gets_login_fail(db: TestDb) {
    let srv = game(&db, 1000);
    let mut first = Client::login(srv.local_addr(), U8, "carol");
    let end = walk(&mut first, 2);
    let (second, p) = login_raw(&srv, cport_mmo_proto::name("carol"));
    assert_eq!(p, ServerPacket::LoginFail);
    second.expect_closed();
    first.send(&ClientPacket::Logout);
    first.expect_closed();
    let mut again = None;
    common::wait_until("carol can log in again", || {
        let (c, p) = login_raw(&srv, cport_mmo_proto::name("carol"));
        match p {
            ServerPacket::LoginInfo { .. } => {
                again = Some(info_of(&p));
                drop(c);
                true
            }
            _ => false,
        }
    });
    assert_eq!(
        (again.unwrap().0, again.unwrap().1),
        end,
        "not loaded where she left"
    );
    assert!(srv.stats().login_fails >= 1);
    srv.shutdown(QUICK);
}

/// Names with quotes, SQL, a NUL in the middle, non-UTF-8, control characters or nothing:
/// each is stored (and loaded back) or refused with SC_LOGIN_FAIL, never a query error.
fn hostile_names_are_stored_or_refused_cleanly(db: TestDb) {
    let srv = game(&db, 50);
    let raw = |b: &[u8]| {
        let mut n = [0u8; 20];
        n[..b.len()].copy_from_slice(b);
        n
    };
    let stored_names: [(&[u8], &str); 5] = [
        (b"o'brien", "o'brien"),
        (b"x'); DROP TABLE p;--", "x'); DROP TABLE p;--"),
        (b"\"quoted\" \\ %_", "\"quoted\" \\ %_"),
        (b"ab\0cd\0\0ef", "ab"),
        ("játékos ☃".as_bytes(), "játékos ☃"),
    ];
    let mut ends = Vec::new();
    for (bytes, name) in stored_names {
        let (mut c, p) = login_raw(&srv, raw(bytes));
        let (x, y, _) = info_of(&p);
        c.id = match p {
            ServerPacket::LoginInfo { id, .. } => id as u32,
            _ => unreachable!(),
        };
        c.pos = (x, y);
        let end = walk(&mut c, 1);
        c.send(&ClientPacket::Logout);
        c.expect_closed();
        ends.push((name, end));
    }
    let refused: [(&str, Name); 4] = [
        ("empty", [0; 20]),
        ("20 bytes of non-UTF-8", [0xFF; 20]),
        ("a control character", raw(b"a\x07b")),
        ("a lone continuation byte", raw(b"ok\x80")),
    ];
    for (what, n) in refused {
        let (c, p) = login_raw(&srv, n);
        assert_eq!(p, ServerPacket::LoginFail, "{what}");
        c.expect_closed();
    }
    for &(name, end) in &ends {
        common::wait_until(&format!("{name:?} stored"), || {
            stored(&db, name).is_some_and(|r| (r.x, r.y) == end)
        });
    }
    // The table is still there and whole: every name loads back where it left.
    let s = srv.db_stats();
    assert_eq!(s.load_errors, 0, "{s}");
    assert_eq!(s.save_errors, 0, "{s}");
    srv.shutdown(QUICK);
    let srv = game(&db, 50);
    for (bytes, name) in stored_names {
        let (_c, p) = login_raw(&srv, raw(bytes));
        let (x, y, _) = info_of(&p);
        let end = ends.iter().find(|e| e.0 == name).unwrap().1;
        assert_eq!((x, y), end, "{name:?} not loaded back");
    }
    srv.shutdown(QUICK);
}

/// The database failing at runtime (here: its table dropped under the server): logins get
/// SC_LOGIN_FAIL, the game keeps running, saves fail and are retried, and once the database
/// works again every pending row is written — none dropped.
fn a_failing_database_fails_logins_and_keeps_saves_until_it_is_back(db: TestDb) {
    let srv = game(&db, 50);
    let mut a = Client::login(srv.local_addr(), U8, "dora");
    walk(&mut a, 1);
    common::wait_until("dora saved", || stored(&db, "dora").is_some());
    exec(&db, "ALTER TABLE players RENAME TO players_away");
    // A login needs the database: refused, with a reason in the log.
    let (c, p) = login_raw(&srv, cport_mmo_proto::name("eve"));
    assert_eq!(p, ServerPacket::LoginFail);
    c.expect_closed();
    // The game goes on, and the changes are kept while saves fail.
    let end = walk(&mut a, 3);
    common::wait_until("a save failed", || srv.db_stats().save_errors >= 1);
    assert!(srv.db_stats().pending_rows >= 1);
    exec(&db, "ALTER TABLE players_away RENAME TO players");
    common::wait_until(
        "the pending row is written once the database is back",
        || {
            srv.db_stats().pending_rows == 0
                && stored(&db, "dora").is_some_and(|r| (r.x, r.y) == end)
        },
    );
    let (_c, p) = login_raw(&srv, cport_mmo_proto::name("eve"));
    info_of(&p);
    srv.shutdown(QUICK);
}

macro_rules! per_db {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(super::sqlite_db(stringify!($name))) } )*
        }
        mod postgres {
            $( #[test] fn $name() {
                if let Some(db) = super::pg_db(stringify!($name)) {
                    super::$name(db)
                }
            } )*
        }
    };
}

per_db!(
    a_player_comes_back_where_it_logged_out,
    changes_are_written_behind_within_the_save_interval,
    shutdown_writes_every_unsaved_change,
    a_name_already_logged_in_gets_login_fail,
    hostile_names_are_stored_or_refused_cleanly,
    a_failing_database_fails_logins_and_keeps_saves_until_it_is_back,
);

// ---- startup errors (SQLite) ----

/// A file that is not a database: `start` fails with an error that names it.
#[test]
fn a_corrupt_database_file_is_a_clear_error_at_start() {
    let db = sqlite_db("corrupt");
    let DbConfig::Sqlite(path) = &db.cfg else {
        unreachable!()
    };
    std::fs::write(path, vec![0x5Au8; 64 * 1024]).unwrap();
    let e = cport_mmo::start(Config {
        db: db.cfg.clone(),
        ..Config::default()
    })
    .expect_err("started on a corrupt file");
    let msg = e.to_string();
    assert!(msg.contains("mmo.db"), "{msg}");
    assert!(msg.contains("not a database"), "{msg}");
}

/// A database another process holds locked: `start` fails (after its busy timeout) rather
/// than hanging.
#[test]
fn a_locked_database_is_a_clear_error_at_start() {
    let db = sqlite_db("locked");
    let DbConfig::Sqlite(path) = &db.cfg else {
        unreachable!()
    };
    let holder = rusqlite::Connection::open(path).unwrap();
    holder
        .execute_batch("PRAGMA journal_mode = WAL; BEGIN EXCLUSIVE; CREATE TABLE t (x);")
        .unwrap();
    let t0 = std::time::Instant::now();
    let e = cport_mmo::start(Config {
        db: db.cfg.clone(),
        ..Config::default()
    })
    .expect_err("started on a locked database");
    assert!(t0.elapsed() < TIMEOUT);
    let msg = e.to_string();
    assert!(msg.contains("locked"), "{msg}");
    drop(holder);
}

/// A database file that cannot be written (immutable as root, read-only otherwise): `start`
/// fails with an error that names it.
#[test]
fn a_read_only_database_file_is_a_clear_error_at_start() {
    let db = sqlite_db("readonly");
    let DbConfig::Sqlite(path) = &db.cfg else {
        unreachable!()
    };
    // A good database first.
    cport_mmo::start(Config {
        db: db.cfg.clone(),
        ..Config::default()
    })
    .unwrap()
    .shutdown(QUICK);
    let root = rustix::process::geteuid().is_root();
    if root {
        // Root writes through permission bits: make the file immutable instead.
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .expect("run chattr");
        assert!(ok.success(), "chattr +i {}", path.display());
    } else {
        let mut perm = std::fs::metadata(path).unwrap().permissions();
        perm.set_readonly(true);
        std::fs::set_permissions(path, perm).unwrap();
    }
    let r = cport_mmo::start(Config {
        db: db.cfg.clone(),
        ..Config::default()
    });
    if root {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(path)
            .status();
    }
    let msg = r.expect_err("started on a read-only database").to_string();
    assert!(msg.contains("mmo.db"), "{msg}");
    assert!(
        msg.contains("readonly") || msg.contains("read-only") || msg.contains("WAL"),
        "{msg}"
    );
}

/// The workers never wait on the database: while another process holds the SQLite write
/// lock for 3 s (the writer is stuck in its busy wait), a player's moves are answered as
/// usual; once the lock is gone, the rows are written.
#[test]
fn the_game_keeps_playing_while_the_database_is_locked() {
    let db = sqlite_db("stuck");
    let DbConfig::Sqlite(path) = &db.cfg else {
        unreachable!()
    };
    let srv = game(&db, 50);
    let mut a = Client::login(srv.local_addr(), U8, "hal");
    walk(&mut a, 1);
    common::wait_until("hal saved", || stored(&db, "hal").is_some());
    let holder = rusqlite::Connection::open(path).unwrap();
    holder
        .execute_batch("BEGIN IMMEDIATE; UPDATE players SET level = level WHERE name = 'nobody';")
        .unwrap();
    let locked_at = std::time::Instant::now();
    let saved_before = srv.db_stats().rows_saved;
    let mut slowest = Duration::ZERO;
    let mut end = a.pos;
    while locked_at.elapsed() < Duration::from_secs(3) {
        let t0 = std::time::Instant::now();
        end = walk(&mut a, 1);
        slowest = slowest.max(t0.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        srv.db_stats().rows_saved,
        saved_before,
        "the writer got through the lock: the test proves nothing"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a move waited {slowest:?} while the database was locked"
    );
    holder.execute_batch("ROLLBACK").unwrap();
    common::wait_until("the rows are written once the lock is gone", || {
        stored(&db, "hal").is_some_and(|r| (r.x, r.y) == end)
    });
    srv.shutdown(QUICK);
}

/// `--db` strings.
#[test]
fn db_config_parses_sqlite_postgres_and_none() {
    assert_eq!("none".parse::<DbConfig>(), Ok(DbConfig::None));
    assert_eq!(
        "sqlite:mmo.db".parse::<DbConfig>(),
        Ok(DbConfig::Sqlite("mmo.db".into()))
    );
    assert!(matches!(
        "postgres://u@127.0.0.1:5432/db".parse::<DbConfig>(),
        Ok(DbConfig::Postgres(_))
    ));
    assert!("sqlite:".parse::<DbConfig>().is_err());
    assert!("mysql://x".parse::<DbConfig>().is_err());
}

/// A PostgreSQL cluster of one test's own (so that it can be stopped under a running game
/// without disturbing the other tests), made with the binaries `CPORT_TEST_PG_BIN` names
/// (`None`, the test skipped, without them).
struct OwnCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl OwnCluster {
    fn cmd(&self, prog: &str) -> std::process::Command {
        // initdb and the server refuse to run as root: run them as `postgres` then.
        let mut c = if rustix::process::geteuid().is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(prog));
            c
        } else {
            std::process::Command::new(self.bin.join(prog))
        };
        c.stdout(std::process::Stdio::null());
        c
    }

    fn new() -> Option<OwnCluster> {
        let bin = PathBuf::from(cport_testkit::service(
            "PostgreSQL binaries",
            "CPORT_TEST_PG_BIN",
        )?);
        let dir = std::env::temp_dir().join(format!("cport-pg-{}", unique("own")));
        std::fs::create_dir_all(&dir).unwrap();
        if rustix::process::geteuid().is_root() {
            let ok = std::process::Command::new("chown")
                .arg("postgres")
                .arg(&dir)
                .status()
                .unwrap();
            assert!(ok.success(), "chown postgres {}", dir.display());
        }
        let port = port_below_ephemeral_range();
        let c = OwnCluster { bin, dir, port };
        let ok = c
            .cmd("initdb")
            .arg("-D")
            .arg(c.dir.join("data"))
            .args(["-U", "cport", "--auth=trust", "--no-sync"])
            .status()
            .unwrap();
        assert!(ok.success(), "initdb failed");
        c.start();
        Some(c)
    }

    fn start(&self) {
        let ok = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "30", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .arg("start")
            .status()
            .unwrap();
        assert!(ok.success(), "pg_ctl start failed");
    }

    fn stop(&self, mode: &str) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", mode, "-w", "stop"])
            .status();
    }

    fn url(&self) -> String {
        format!("postgres://cport@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.stop("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// PostgreSQL stopped under a running game: logins get SC_LOGIN_FAIL, the game keeps
/// running, saves fail and are kept; PostgreSQL started again: every pending row is written
/// and logins work.
#[test]
fn postgres_stopped_at_runtime_fails_logins_and_keeps_saves_until_it_is_back() {
    let Some(pg) = OwnCluster::new() else {
        return;
    };
    let db = TestDb {
        cfg: DbConfig::Postgres(pg.url()),
        dir: None,
        pg: None,
    };
    let srv = game(&db, 100);
    let mut a = Client::login(srv.local_addr(), U8, "fay");
    walk(&mut a, 1);
    common::wait_until("fay saved", || stored(&db, "fay").is_some());
    pg.stop("fast");
    let (c, p) = login_raw(&srv, cport_mmo_proto::name("gus"));
    assert_eq!(p, ServerPacket::LoginFail, "a login with PostgreSQL down");
    c.expect_closed();
    walk(&mut a, 3);
    common::wait_until("a save failed", || srv.db_stats().save_errors >= 1);
    // Still playing while saves fail.
    let end = walk(&mut a, 1);
    assert!(srv.db_stats().pending_rows >= 1);
    pg.start();
    common::wait_until("the pending row is written once PostgreSQL is back", || {
        srv.db_stats().pending_rows == 0 && stored(&db, "fay").is_some_and(|r| (r.x, r.y) == end)
    });
    let (_c, p) = login_raw(&srv, cport_mmo_proto::name("gus"));
    info_of(&p);
    srv.shutdown(QUICK);
}

/// A free loopback port below the kernel's ephemeral range: the cluster is stopped and started
/// again on it, and a port from the ephemeral range could meanwhile become the local port of
/// another test's outgoing connection (the start would then fail with "address in use").
fn port_below_ephemeral_range() -> u16 {
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let seed = std::process::id() ^ std::time::UNIX_EPOCH.elapsed().unwrap().subsec_nanos();
    (0..1000u32)
        .map(|i| 10_000 + seed.wrapping_add(i.wrapping_mul(7919)) % (low.max(10_001) - 10_000))
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p as u16)).is_ok())
        .expect("no free loopback port below the ephemeral range") as u16
}
