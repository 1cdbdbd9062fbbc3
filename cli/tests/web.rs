//! The live view's promises that need no browser: a `--web` port in use is an error before
//! the run starts; `cport demo` prints the view's URL first and gives way to a free port when
//! its default one is taken; and pages that never read, that vanish, or that are too many
//! neither slow nor stop the run, nor the view for the other pages.

mod common;

use common::Proc;
use cport_bench::proc::stderr_lines;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn cport() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cport"))
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cport-web-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn live_view_addr(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("stress: live view at http://")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// One request on a fresh connection; the status and the body (read to the end).
fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let head_end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&all[..head_end]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = all[head_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

/// The head of a streaming response (status line and headers), without waiting for the body.
fn open_events(addr: SocketAddr) -> (TcpStream, u16) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("the response head");
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (s, status)
}

#[test]
fn a_web_port_in_use_is_an_error_before_the_run_starts() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let t0 = Instant::now();
    let out = cport()
        .args(["stress", "--spawn", "--duration-s", "30", "--web"])
        .arg(addr.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "it failed at once, not after the run"
    );
    assert!(
        stderr.contains(&format!("--web {addr}: cannot listen")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(
        !stderr.contains("started server"),
        "nothing started before the error: {stderr}"
    );
    assert!(out.stdout.is_empty(), "no report: {:?}", out.stdout);
}

#[test]
fn demo_prints_the_view_first_and_takes_a_free_port_when_its_own_is_taken() {
    // Hold the demo's default port (if someone else holds it, it is taken all the same).
    let held = TcpListener::bind("127.0.0.1:8040");
    let dir = tmp("demo");
    let mut demo = Proc(
        cport()
            .args([
                "demo",
                "--duration-s",
                "3",
                "--npcs",
                "1000",
                "--max-users",
                "200",
            ])
            .args(["--threads", "1", "--out-dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let rx = stderr_lines(&mut demo.0);
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        lines.push(l);
    }
    let status = demo.0.wait().unwrap();
    let all = lines.join("\n");
    assert!(status.success(), "{all}");
    let addr = lines
        .iter()
        .take(2)
        .find_map(|l| live_view_addr(l))
        .unwrap_or_else(|| panic!("the URL is among the first lines:\n{all}"));
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_ne!(addr.port(), 8040, "8040 is taken: {all}");
    if held.is_ok() {
        assert!(
            lines[0].starts_with("stress: 127.0.0.1:8040 is in use; the live view takes"),
            "{all}"
        );
    }
    assert!(
        all.contains("stress: live view: "),
        "its cost is said: {all}"
    );
    assert!(dir.join("demo-report.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pages_that_never_read_vanish_or_are_too_many_do_not_slow_the_run() {
    let dir = tmp("slow");
    let json = dir.join("r.json");
    let duration_s = 8u64;
    let mut stress = Proc(
        cport()
            .args(["stress", "--spawn", "--web", "127.0.0.1:0"])
            .args(["--duration-s", &duration_s.to_string()])
            .args(["--max-clients", "300", "--ramp-interval-ms", "5"])
            .args(["--npcs", "20000", "--threads", "1", "--json"])
            .arg(&json)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    let rx = stderr_lines(&mut stress.0);
    let mut lines = Vec::new();
    let addr = loop {
        let l = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no live view line:\n{}", lines.join("\n")));
        let a = live_view_addr(&l);
        lines.push(l);
        if let Some(a) = a {
            break a;
        }
    };
    // The state answers (the server is serving once the run has started).
    let state = loop {
        let (code, body) = get(addr, "/api/state");
        if code == 200 {
            break body;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{code}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _: Value = serde_json::from_slice(&state).expect("the state is JSON");

    // Vanishing pages: open the stream and go.
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = write!(s, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    // They are let go (at the next write that fails, within a few seconds).
    let t = Instant::now();
    loop {
        let (_, body) = get(addr, "/api/state");
        let st: Value = serde_json::from_slice(&body).unwrap();
        if st["pages"] == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "vanished pages still held: {}",
            st["pages"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Readers that never read: every live stream the view allows, and connections that ask
    // for the map again and again in one write (pipelined) and never read an answer.
    let mut never_read = Vec::new();
    for _ in 0..32 {
        let (s, code) = open_events(addr);
        assert_eq!(code, 200);
        never_read.push(s);
    }
    let (_, code) = open_events(addr);
    assert_eq!(code, 503, "a page past the limit is told so");
    let many_maps = "GET /map.bin HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3000);
    for _ in 0..8 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(many_maps.as_bytes()).unwrap();
        never_read.push(s);
    }

    // The view still answers others while they sit there, and the run goes on second by second.
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let (code, body) = get(addr, "/api/state");
    assert_eq!(code, 200);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let st: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        st["series"].as_array().unwrap().len() >= 2,
        "seconds go on: {st}"
    );
    assert!(
        st["map"]["seq"].as_u64() > Some(0),
        "maps are sampled: {st}"
    );
    let (code, map) = get(addr, "/map.bin");
    assert_eq!(code, 200);
    let players = u32::from_le_bytes(map[8..12].try_into().unwrap());
    let npcs = u32::from_le_bytes(map[12..16].try_into().unwrap());
    assert_eq!(map.len(), 16 + 4 * (players + npcs) as usize);
    assert!(players > 0);

    // The end comes on time: the run's length, the report, at most two seconds for the pages.
    let deadline = Instant::now() + Duration::from_secs(duration_s + 30);
    let status = loop {
        if let Some(st) = stress.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "cport stress did not end:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = t0.elapsed();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        lines.push(l);
    }
    let all = lines.join("\n");
    assert!(status.success(), "{all}");
    drop(never_read);
    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["stopped_early"], Value::Null);
    assert!(
        r["elapsed_s"].as_f64().unwrap() < duration_s as f64 + 0.5,
        "the run kept its length: {}",
        r["elapsed_s"]
    );
    // One second after another, none late: the thread that drives the ramp never waited.
    let series = r["series"].as_array().unwrap();
    assert!(series.len() as u64 >= duration_s - 1, "{}", series.len());
    let ts: Vec<f64> = series.iter().map(|s| s["t"].as_f64().unwrap()).collect();
    for w in ts.windows(2) {
        assert!(w[1] - w[0] < 1.5, "a late second: {ts:?}");
    }
    assert!(r["max_clients_under_limit"].as_u64() > Some(0));
    // Spawning the server and stopping it take a few seconds at most; the rest is the run.
    assert!(
        elapsed < Duration::from_secs(duration_s + 15),
        "{elapsed:?}\n{all}"
    );
    assert!(all.contains("stress: live view: "), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}
