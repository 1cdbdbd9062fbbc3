//! Past the course's 10,000 players, end to end with the binary: `cport mmo --max-users
//! 20000` gives dense ids past 10,000 with NPC ids after 20,000; `cport stress --procs 2`
//! splits the clients over two client processes and reports their sum; an id space the
//! protocol cannot carry is refused.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use cport_bench::proc::ServerProc;
use cport_mmo_proto::{frame_len, name, ClientPacket, ServerPacket, SizeField};

const H: SizeField = SizeField::U8;

/// Reads one packet (blocking, bounded by the socket's timeout).
fn recv(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<ServerPacket> {
    loop {
        if let Some(len) = frame_len(buf, H) {
            let p = ServerPacket::decode(&buf[..len], H).expect("a packet the course defines");
            buf.drain(..len);
            return Some(p);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// 10,050 players on one server process (its own open-files limit): the ids are exactly
/// 0..10,050 in login order, and every NPC shown has an id from 20,000 up.
#[test]
fn ids_past_ten_thousand_are_dense_and_npcs_come_after_max_users() {
    const N: usize = 10_050;
    let limit = rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-files limit");
    assert!(
        limit as usize > N + 100,
        "this test holds {N} sockets: the open-files limit is {limit}"
    );
    let args: Vec<String> = [
        "mmo",
        "--addr",
        "127.0.0.1:0",
        "--max-users",
        "20000",
        "--npcs",
        "20000",
        "--db",
        "none",
        "--threads",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let env = [("RUST_LOG".to_string(), "warn".to_string())];
    let srv = ServerProc::spawn(env!("CARGO_BIN_EXE_cport").as_ref(), &args, &env)
        .expect("start cport mmo");
    assert!(srv.startup.contains("max users: 20000"), "{}", srv.startup);
    let t0 = Instant::now();
    let mut clients = Vec::with_capacity(N);
    let (mut npcs_seen, mut bufs) = (0usize, Vec::with_capacity(N));
    for i in 0..N {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let login = ClientPacket::Login {
            name: name(&format!("c{i}")),
        }
        .encode(H);
        s.write_all(&login).unwrap();
        let mut buf = Vec::new();
        match recv(&mut s, &mut buf) {
            Some(ServerPacket::LoginInfo { id, .. }) => {
                assert_eq!(id as usize, i, "player ids are dense from 0")
            }
            other => panic!("login {i}: {other:?}"),
        }
        clients.push(s);
        bufs.push(buf);
    }
    // What the last hundred were shown: players below N, NPCs from 20,000 up.
    for (s, buf) in clients.iter_mut().zip(&mut bufs).skip(N - 100) {
        s.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
        while let Some(p) = recv(s, buf) {
            if let ServerPacket::AddObject { id, .. } = p {
                let id = id as usize;
                assert!(id < N || (20_000..40_000).contains(&id), "id {id}");
                npcs_seen += usize::from(id >= 20_000);
            }
        }
    }
    assert!(npcs_seen > 0, "100 players among 20,000 NPCs see some");
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "{N} logins took {:?}",
        t0.elapsed()
    );
    drop(clients);
    let status = srv.stop().expect("stop the server");
    assert!(status.success(), "{status}");
}

/// `cport stress --procs 2`: two client processes, one report; its counts are the sum of
/// the processes' own, every delay sample they measured reached the parent's tracker, and
/// no client is lost.
#[test]
fn a_two_process_stress_run_reports_the_sum_of_its_processes() {
    let dir = std::env::temp_dir().join(format!("cport-multi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("r.json");
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_cport"))
        .current_dir(&dir)
        .args(["stress", "--spawn", "--procs", "2", "--max-clients", "400"])
        .args([
            "--duration-s",
            "6",
            "--ramp-interval-ms",
            "2",
            "--npcs",
            "2000",
        ])
        .args(["--threads", "2", "--client-threads", "1"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run cport stress");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(40), "bounded");
    assert!(stderr.contains("over 2 client processes"), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["procs"], 2);
    let kids = r["children"].as_array().unwrap();
    assert_eq!(kids.len(), 2);
    for field in [
        "clients_started",
        "clients_shed",
        "final_clients",
        "delay_samples",
        "packets_in",
        "packets_out",
    ] {
        let sum: u64 = kids.iter().map(|k| k[field].as_u64().unwrap()).sum();
        assert_eq!(r[field].as_u64().unwrap(), sum, "{field}: {r}");
    }
    assert_eq!(r["clients_started"], 400);
    assert_eq!(r["final_clients"], 400, "no client lost");
    assert_eq!(r["clients_shed"], 0);
    for k in kids {
        assert_eq!(k["clients_started"], 200);
        assert_eq!(k["errors"]["server_closed"], 0);
    }
    for kind in ["server_closed", "login_fail", "protocol", "connect_refused"] {
        assert_eq!(r["errors"][kind], 0, "{kind}");
    }
    assert_eq!(r["max_player_id"], 399, "ids are dense from 0");
    assert!(r["delay_samples"].as_u64().unwrap() > 0);
    assert!(!r["series"].as_array().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cport mmo` refuses more ids than the protocol's `int` carries, with a clear message.
#[test]
fn cport_mmo_refuses_an_id_space_past_i32() {
    let out = Command::new(env!("CARGO_BIN_EXE_cport"))
        .args(["mmo", "--addr", "127.0.0.1:0", "--db", "none"])
        .args(["--max-users", "2147483000", "--npcs", "1000"])
        .output()
        .expect("run cport mmo");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("i32 ids"), "{stderr}");
}
