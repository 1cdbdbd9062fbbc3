//! Every peer echo server echoes every byte back in order (pipelined, split, larger than its
//! receive buffer, several connections at once, both of its threads' listeners), prints its
//! startup line, and exits 0 on SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use cport_bench::proc::ServerProc;

fn check(program: &str, extra: &[&str]) {
    let mut args: Vec<String> = ["--addr", "127.0.0.1:0", "--threads", "2"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    args.extend(["--skew-spin-ms".to_string(), "0.05".to_string()]);
    let server = ServerProc::spawn(Path::new(program), &args, &[]).expect("starts");
    assert!(server.startup.contains("threads: 2"), "{}", server.startup);
    let addr = server.addr;
    let clients: Vec<_> = (0..8u64)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut r = s.try_clone().unwrap();
                // 300 KiB of a pseudo-random stream (0xFF included: slow markers spin),
                // written in uneven pieces while another thread reads it back.
                let mut x = c.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let data: Vec<u8> = (0..300 * 1024)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let expect = data.clone();
                let reader = std::thread::spawn(move || {
                    let mut got = vec![0u8; expect.len()];
                    r.read_exact(&mut got).unwrap();
                    assert!(got == expect, "echo differs");
                });
                let mut off = 0;
                let mut piece = 1usize;
                while off < data.len() {
                    let n = piece.min(data.len() - off);
                    s.write_all(&data[off..off + n]).unwrap();
                    off += n;
                    piece = (piece * 7 + 13) % 40_000 + 1;
                }
                reader.join().unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    let status = server.stop().expect("stops");
    assert!(status.success(), "{program}: {status}");
}

#[test]
fn tokio_peer_echoes() {
    check(env!("CARGO_BIN_EXE_peer_tokio"), &[]);
}

/// compio (with its io_uring driver) and the raw loop need io_uring; where a sandbox blocks
/// it they are not run.
fn uring_available() -> bool {
    match io_uring::IoUring::new(8) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("io_uring unavailable ({e}): skipped");
            false
        }
    }
}

#[test]
fn compio_peer_echoes() {
    if uring_available() {
        check(env!("CARGO_BIN_EXE_peer_compio"), &[]);
    }
}

#[test]
fn raw_peer_echoes() {
    if uring_available() {
        check(env!("CARGO_BIN_EXE_peer_raw"), &[]);
    }
}

#[test]
fn cport_echo_bench_echoes_on_both_backends() {
    check(
        env!("CARGO_BIN_EXE_cport_echo_bench"),
        &["--backend", "uring"],
    );
    check(
        env!("CARGO_BIN_EXE_cport_echo_bench"),
        &["--backend", "epoll"],
    );
}
