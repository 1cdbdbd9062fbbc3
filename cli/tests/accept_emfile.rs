//! The open-files limit reached during accept, end to end: `cport echo` runs with its
//! open-files limit (soft and hard, so it cannot raise it) lowered to 64, and clients connect
//! until its accepts fail with `EMFILE` (the kernel still completes their handshakes: they
//! wait in the listen backlog). The server must keep running and serving the clients it has,
//! log why it cannot accept, not spin on the error (its CPU time over two seconds stays
//! small), and accept the waiting clients once descriptors are free again.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cport_bench::proc::{ServerProc, Startup};

/// The server's open-files limit.
const LIMIT: u64 = 64;
/// Clients connected: more than the limit allows.
const CLIENTS: usize = 80;

#[test]
fn uring_echo_keeps_serving_and_accepts_again_after_emfile() {
    echo_keeps_serving_and_accepts_again_after_emfile("uring");
}

#[test]
fn epoll_echo_keeps_serving_and_accepts_again_after_emfile() {
    echo_keeps_serving_and_accepts_again_after_emfile("epoll");
}

fn echo_keeps_serving_and_accepts_again_after_emfile(backend: &str) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cport"));
    cmd.args(["echo", "--addr", "127.0.0.1:0", "--threads", "1"])
        .args(["--backend", backend])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped());
    // SAFETY: runs in the forked child before exec; one prlimit64 system call on values
    // made before the fork: no allocation, no locks, async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let lim = rustix::process::Rlimit {
                current: Some(LIMIT),
                maximum: Some(LIMIT),
            };
            rustix::process::setrlimit(rustix::process::Resource::Nofile, lim)
                .map_err(io::Error::from)
        });
    }
    let mut server = ServerProc::start(cmd, Startup::first_line()).expect("start cport echo");
    let pid = server.pid();
    let log = server.stderr_lines();
    let addr = server.addr;
    let base_fds = fds_of(pid);
    println!("{backend}: server pid {pid} on {addr}, {base_fds} descriptors open at start");

    // Connect and write to every client; those the server accepted echo.
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|i| {
            let mut c = TcpStream::connect(addr).expect("connect (the backlog holds it)");
            c.write_all(&ping(i)).unwrap();
            c
        })
        .collect();
    let mut served = vec![false; CLIENTS];
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        poll_echoes(&mut clients, &mut served);
        let n = served.iter().filter(|&&s| s).count();
        if fds_of(pid) >= LIMIT as usize && n + base_fds >= LIMIT as usize {
            break;
        }
        assert!(
            Instant::now() < until,
            "the server filled its descriptors ({}/{LIMIT}) and served {n}",
            fds_of(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let waiting: Vec<usize> = (0..CLIENTS).filter(|&i| !served[i]).collect();
    println!(
        "{backend}: {} clients served, {} waiting in the backlog, server at {} descriptors",
        CLIENTS - waiting.len(),
        waiting.len(),
        fds_of(pid)
    );
    assert!(!waiting.is_empty(), "the limit must have been reached");

    // At the limit: it does not spin, and it still serves the clients it has.
    let cpu0 = cpu_ticks(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_ticks(pid) - cpu0;
    let took = t0.elapsed();
    println!("{backend}: {cpu} ticks (1/100 s) of CPU in {took:?} at the limit");
    assert!(
        cpu <= 20,
        "the server must not spin on EMFILE: {cpu} ticks of CPU in {took:?}"
    );
    for i in (0..CLIENTS).filter(|&i| served[i]).take(5) {
        echo_now(&mut clients[i], i);
    }
    assert!(
        waiting.iter().all(|&i| !answered(&mut clients[i])),
        "nothing reaches the clients that were not accepted"
    );
    let mut logged = Vec::new();
    while let Ok(line) = log.recv_timeout(Duration::from_millis(100)) {
        logged.push(line);
    }
    assert!(
        logged.iter().any(|l| l.contains("WARN")
            && l.contains("accept failed")
            && l.contains("os error 24")),
        "the reason is logged:\n{}",
        logged.join("\n")
    );
    let warnings = logged
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    println!("{backend}: {warnings} accept warnings logged (at most one a second)");
    assert!(warnings <= 6, "the warning is rate-limited: {warnings}");

    // Free descriptors: close two more served clients than wait; every waiting one is then
    // accepted and served, and so is a client that connects after that.
    let freed: Vec<usize> = (0..CLIENTS)
        .filter(|&i| served[i])
        .take(waiting.len() + 2)
        .collect();
    for &i in &freed {
        clients[i].shutdown(std::net::Shutdown::Both).unwrap();
    }
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        for i in 0..CLIENTS {
            if !served[i] && answered(&mut clients[i]) {
                served[i] = true;
            }
        }
        if waiting.iter().all(|&i| served[i]) {
            break;
        }
        assert!(
            Instant::now() < until,
            "clients still waiting after descriptors were freed: {:?}",
            waiting.iter().filter(|&&i| !served[i]).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "{backend}: after closing {} clients, the {} waiting ones were accepted and served",
        freed.len(),
        waiting.len()
    );
    let mut late = TcpStream::connect(addr).unwrap();
    echo_now(&mut late, 999);
    assert!(
        server.try_wait().unwrap().is_none(),
        "the server is still running"
    );
}

fn ping(i: usize) -> Vec<u8> {
    format!("ping {i:03}\n").into_bytes()
}

/// Reads, without waiting, the echo of every client not yet served.
fn poll_echoes(clients: &mut [TcpStream], served: &mut [bool]) {
    for (i, c) in clients.iter_mut().enumerate() {
        if !served[i] && answered(c) {
            served[i] = true;
        }
    }
}

/// Whether the client's echo (one ping, 9 bytes) has arrived; reads it if so.
fn answered(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 9];
    c.set_nonblocking(true).unwrap();
    let r = c.peek(&mut buf);
    c.set_nonblocking(false).unwrap();
    match r {
        Ok(9) => {
            c.read_exact(&mut buf).unwrap();
            assert!(buf.starts_with(b"ping "), "{buf:?}");
            true
        }
        Ok(0) => panic!("the server closed a client"),
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("client: {e}"),
    }
}

/// A round trip that must complete at once (within 5 s).
fn echo_now(c: &mut TcpStream, i: usize) {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&ping(i)).unwrap();
    let mut back = [0u8; 9];
    c.read_exact(&mut back)
        .expect("a served client is still served");
    assert_eq!(back.to_vec(), ping(i));
}

fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// User + system CPU time of the process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): state is field 3; utime and
    // stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}
