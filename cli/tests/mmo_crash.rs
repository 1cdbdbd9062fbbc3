//! Crash safety of `cport mmo --db …`, end to end with the real binary: `kill -9` of the
//! server loses at most the last save interval of changes, and after a restart every player
//! logs in where it was last saved; SIGTERM loses nothing. On SQLite and on PostgreSQL (the
//! server `CPORT_TEST_POSTGRES` names: `scripts/test` starts one; without it the PostgreSQL
//! test says it is skipped and passes, except under `scripts/test`, where it fails:
//! `cport_testkit::service`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cport_bench::proc::ServerProc;
use cport_mmo_proto::{frame_len, name, ClientPacket, Direction, ServerPacket, SizeField};

const H: SizeField = SizeField::U8;
const TIMEOUT: Duration = Duration::from_secs(10);
const SAVE_MS: u64 = 200;

struct Player {
    s: TcpStream,
    buf: Vec<u8>,
    id: i32,
    pos: (u16, u16),
}

impl Player {
    fn login(addr: SocketAddr, who: &str) -> Player {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut p = Player {
            s,
            buf: Vec::new(),
            id: -1,
            pos: (0, 0),
        };
        p.send(&ClientPacket::Login { name: name(who) });
        match p.recv() {
            ServerPacket::LoginInfo { id, x, y, .. } => {
                p.id = id;
                p.pos = (x as u16, y as u16);
            }
            other => panic!("{who}: expected SC_LOGIN_INFO, got {other:?}"),
        }
        p
    }

    fn send(&mut self, p: &ClientPacket) {
        self.s.write_all(&p.encode(H)).unwrap();
    }

    fn recv(&mut self) -> ServerPacket {
        let until = Instant::now() + TIMEOUT;
        loop {
            if let Some(len) = frame_len(&self.buf, H) {
                let p = ServerPacket::decode(&self.buf[..len], H).unwrap();
                self.buf.drain(..len);
                return p;
            }
            assert!(Instant::now() < until, "no packet from the server");
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("read");
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One step (right, or down at the right edge); returns the new position.
    fn step(&mut self, t: u32) -> (u16, u16) {
        let d = if self.pos.0 < 90 {
            Direction::Right
        } else {
            Direction::Down
        };
        self.send(&ClientPacket::Move {
            direction: d,
            move_time: t,
        });
        loop {
            if let ServerPacket::MoveObject {
                id,
                x,
                y,
                move_time,
            } = self.recv()
            {
                if id == self.id && move_time == t {
                    self.pos = (x as u16, y as u16);
                    return self.pos;
                }
            }
        }
    }
}

fn server(db: &str) -> ServerProc {
    let args: Vec<String> = [
        "mmo",
        "--addr",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--npcs",
        "0",
        "--world-size",
        "100",
        "--max-users",
        "100",
        "--save-interval-ms",
        &SAVE_MS.to_string(),
        "--db",
        db,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ServerProc::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_cport")),
        &args,
        &[("RUST_LOG".into(), "warn".into())],
    )
    .expect("start cport mmo")
}

/// Three players walk; the server is killed with SIGKILL twice — once long after the last
/// change (nothing may be lost), once right after more steps (only the steps of the last
/// save interval may be lost: each player is somewhere on the trail walked since its last
/// saved position); then SIGTERM right after steps loses nothing.
fn kill_9_loses_at_most_the_last_save_interval(db: &str) {
    let names = ["p0", "p1", "p2"];
    let mut t = 0;

    // 1. Walk, wait three save intervals, kill -9: everything is there.
    let srv = server(db);
    let mut ps: Vec<Player> = names.iter().map(|n| Player::login(srv.addr, n)).collect();
    for p in &mut ps {
        for _ in 0..5 {
            t += 1;
            p.step(t);
        }
    }
    std::thread::sleep(Duration::from_millis(3 * SAVE_MS + 300));
    let saved: Vec<(u16, u16)> = ps.iter().map(|p| p.pos).collect();
    drop(srv); // SIGKILL
    drop(ps);
    let srv = server(db);
    let mut ps: Vec<Player> = names.iter().map(|n| Player::login(srv.addr, n)).collect();
    for (p, want) in ps.iter().zip(&saved) {
        assert_eq!(p.pos, *want, "lost changes older than the save interval");
    }

    // 2. Walk, wait, walk more, kill -9 at once: the last steps may be lost, no more.
    let mut trails: Vec<Vec<(u16, u16)>> = Vec::new();
    for p in &mut ps {
        for _ in 0..3 {
            t += 1;
            p.step(t);
        }
    }
    std::thread::sleep(Duration::from_millis(3 * SAVE_MS + 300));
    for p in &mut ps {
        let mut trail = vec![p.pos];
        for _ in 0..3 {
            t += 1;
            trail.push(p.step(t));
        }
        trails.push(trail);
    }
    drop(srv); // SIGKILL within the save interval of the last steps
    drop(ps);
    let srv = server(db);
    let mut ps: Vec<Player> = names.iter().map(|n| Player::login(srv.addr, n)).collect();
    for ((p, trail), n) in ps.iter().zip(&trails).zip(names) {
        assert!(
            trail.contains(&p.pos),
            "{n} came back at {:?}, not on its trail since the last save {trail:?}",
            p.pos
        );
    }

    // 3. Walk, SIGTERM at once: graceful shutdown writes everything.
    for p in &mut ps {
        t += 1;
        p.step(t);
    }
    let last: Vec<(u16, u16)> = ps.iter().map(|p| p.pos).collect();
    let status = srv.stop().unwrap();
    assert!(status.success(), "cport mmo exited with {status}");
    drop(ps);
    let srv = server(db);
    for (n, want) in names.iter().zip(&last) {
        let p = Player::login(srv.addr, n);
        assert_eq!(p.pos, *want, "{n}: SIGTERM lost a change");
    }
    srv.stop().unwrap();
}

#[test]
fn sqlite_kill_9_loses_at_most_the_last_save_interval() {
    let dir: PathBuf = std::env::temp_dir().join(format!("cport-mmo-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite:{}", dir.join("mmo.db").display());
    kill_9_loses_at_most_the_last_save_interval(&db);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn postgres_kill_9_loses_at_most_the_last_save_interval() {
    let Some(url) = cport_testkit::service("PostgreSQL", "CPORT_TEST_POSTGRES") else {
        return;
    };
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap_or_else(|e| {
        panic!("CPORT_TEST_POSTGRES={url} cannot be reached ({e}); run the tests with scripts/test")
    });
    let db = format!("cport_crash_{}", std::process::id());
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
    let base = url.rsplit_once('/').unwrap().0;
    kill_9_loses_at_most_the_last_save_interval(&format!("{base}/{db}"));
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
}

/// A database file that cannot be used: `cport mmo` says why and exits non-zero.
#[test]
fn a_corrupt_database_file_exits_non_zero_with_a_clear_error() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("cport-mmo-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.db");
    std::fs::write(&file, vec![0x5Au8; 8192]).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cport"))
        .args(["mmo", "--addr", "127.0.0.1:0", "--npcs", "0", "--db"])
        .arg(format!("sqlite:{}", file.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exited 0 on a corrupt database");
    assert!(
        stderr.contains("bad.db") && stderr.contains("not a database"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
