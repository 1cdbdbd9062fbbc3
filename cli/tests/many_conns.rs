//! Nearly 20,000 connections opened at once, with this machine's open-files limit (20,000
//! per process) on both sides: `cport echo` receives every one of them through a pool of 8
//! receive buffers, and every connection gets its own bytes back, whole. The connections
//! beyond what the server's limit can hold wait in the backlog and are served once others
//! close (the limit itself is `accept_emfile.rs`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use cport_bench::proc::{ServerProc, Startup};

#[test]
fn uring_serves_nearly_20000_connections_through_8_pool_buffers() {
    many("uring");
}

#[test]
fn epoll_serves_nearly_20000_connections_through_8_pool_buffers() {
    many("epoll");
}

/// The two tests share this process's descriptors and the loopback's ephemeral ports: one
/// at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn many(backend: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024) as usize;
    // The server holds one descriptor per connection plus a few dozen of its own; this
    // process, one per connection plus its own.
    let conns = limit.saturating_sub(100).min(19_900);
    if conns < 1000 {
        eprintln!("skipped: the open-files limit is {limit}, too low for this test");
        return;
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cport"));
    cmd.args(["echo", "--addr", "127.0.0.1:0", "--threads", "2"])
        .args(["--backend", backend, "--recv-pool", "8"])
        .args(["--max-sessions", "20000"])
        .env("RUST_LOG", "warn");
    let server = ServerProc::start(cmd, Startup::first_line()).expect("start cport echo");
    let addr = server.addr;
    let started = Instant::now();
    let mut clients = Vec::with_capacity(conns);
    for i in 0..conns {
        let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {i}: {e}"));
        c.write_all(&ping(i)).unwrap();
        clients.push(c);
    }
    let opened = started.elapsed();
    // Every connection gets exactly its own 13 bytes back.
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut back = [0u8; 13];
        c.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("echo of connection {i}: {e}"));
        assert_eq!(&back[..], &ping(i)[..], "connection {i}");
    }
    println!(
        "{backend}: {conns} connections opened in {opened:?}, all echoed after {:?}",
        started.elapsed()
    );
    // And again, now that every connection has been idle with no buffer.
    for (i, c) in clients.iter_mut().enumerate().step_by(97) {
        c.write_all(&ping(i)).unwrap();
        let mut back = [0u8; 13];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back[..], &ping(i)[..]);
    }
    drop(clients);
    server.stop().unwrap();
}

fn ping(i: usize) -> Vec<u8> {
    format!("ping {i:07}\n").into_bytes()
}
