//! A throwaway `nats-server` per test, for the cluster's bus.
//!
//! Each test starts its own server on a free loopback port ([`nats_server`]), so tests run
//! in parallel without sharing one, and a test may kill and restart its server
//! ([`NatsServer::restart`]) to see what a NATS restart does to the cluster. The program is
//! `$CPORT_TEST_NATS_SERVER` (exported by `scripts/deps/nats.sh`), else `nats-server` on
//! `PATH` or in `/usr/sbin` (where Debian's package puts it); with none, the test is skipped
//! (or fails under `scripts/test`), as [`missing_service`](crate::missing_service) says.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::TIMEOUT;

/// The variable naming the program, set by `scripts/deps/nats.sh`.
pub const NATS_VAR: &str = "CPORT_TEST_NATS_SERVER";

/// Ports tried before giving up on finding a free one.
const PORT_TRIES: usize = 16;

/// A running `nats-server` on `127.0.0.1`, killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    /// Where clients connect: `nats://127.0.0.1:PORT`.
    pub url: String,
    port: u16,
    program: PathBuf,
    /// `None` between [`NatsServer::kill`] and [`NatsServer::restart`].
    child: Option<Child>,
}

/// Starts a `nats-server` on a free loopback port and waits until it accepts connections;
/// `None` (after [`missing_service`](crate::missing_service) said so) when there is no
/// `nats-server` to start. Panics, with the server's own words, when it does not start.
pub fn nats_server() -> Option<NatsServer> {
    let Some(program) = find_program() else {
        crate::missing_service("nats-server", NATS_VAR);
        return None;
    };
    let mut last = String::new();
    for _ in 0..PORT_TRIES {
        let port = free_port();
        match start(&program, port) {
            Ok(child) => {
                return Some(NatsServer {
                    url: format!("nats://127.0.0.1:{port}"),
                    port,
                    program,
                    child: Some(child),
                })
            }
            // Taken between the check and the start: another port.
            Err(Start::PortTaken(why)) => last = why,
            Err(Start::Failed(why)) => panic!("{}: {why}", program.display()),
        }
    }
    panic!(
        "{}: no free port in {PORT_TRIES} tries; the last said: {last}",
        program.display()
    );
}

impl NatsServer {
    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Whether the server is running (not killed, not exited by itself).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server (SIGKILL: a crash, nothing flushed) and reaps it. The port stays
    /// this server's: [`NatsServer::restart`] starts it there again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts a new one on the same port (the clients'
    /// URL stays valid) and waits until it accepts connections. Retries for up to
    /// [`TIMEOUT`] while something else holds the port; panics after that, or when the
    /// server fails for another reason.
    pub fn restart(&mut self) {
        self.kill();
        let give_up = Instant::now() + TIMEOUT;
        loop {
            match start(&self.program, self.port) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(Start::PortTaken(_)) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(Start::PortTaken(why) | Start::Failed(why)) => panic!(
                    "{}: no restart on port {}: {why}",
                    self.program.display(),
                    self.port
                ),
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why a start failed.
enum Start {
    /// The port was taken: try again (another port, or later).
    PortTaken(String),
    /// Anything else.
    Failed(String),
}

/// `$CPORT_TEST_NATS_SERVER`, else `nats-server` on `PATH`, else Debian's `/usr/sbin` (not on
/// every user's `PATH`).
fn find_program() -> Option<PathBuf> {
    if let Ok(p) = std::env::var(NATS_VAR) {
        if !p.is_empty() {
            return Some(PathBuf::from(p));
        }
    }
    let exe = format!("nats-server{}", std::env::consts::EXE_SUFFIX);
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(&exe))
        .find(|p| p.is_file())
}

/// Starts `program` on `port` and waits until it says it is ready and accepts a TCP
/// connection; kills it if it does not within [`TIMEOUT`].
fn start(program: &Path, port: u16) -> Result<Child, Start> {
    let mut child = Command::new(program)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Start::Failed(format!("cannot start it: {e}")))?;
    // Read on a thread so that its log never fills the pipe; the lines are kept for the
    // message of a failed start and dropped after a good one.
    let lines = cport_bench::proc::stderr_lines(&mut child);
    let give_up = Instant::now() + TIMEOUT;
    let mut said = Vec::new();
    // "Server is ready" first: a connection alone could reach whatever took the port
    // between the check and the start.
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let ready = line.contains("Server is ready");
                said.push(line);
                if ready {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().map_or("?".to_string(), |s| s.to_string());
                let log = said.join("\n");
                let why = format!("exited ({status}) on port {port}; it said:\n{log}");
                return Err(if log.contains("address already in use") {
                    Start::PortTaken(why)
                } else {
                    Start::Failed(why)
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Start::Failed(format!(
                    "not ready on port {port} within {TIMEOUT:?}; it said:\n{}",
                    said.join("\n")
                )));
            }
        }
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(child);
        }
        if Instant::now() >= give_up {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Start::Failed(format!(
                "said it is ready but accepts no connection on {addr}"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A loopback port nothing listens on, picked at random below the kernel's ephemeral range:
/// a port the kernel hands out for outgoing connections could be taken by one (the load
/// tests make thousands) between a [`NatsServer::kill`] and its restart.
fn free_port() -> u16 {
    let low = 10_000u32;
    let high = ephemeral_low().max(low + 1_000);
    let mut seed = RandomState::new().build_hasher();
    seed.write_u32(std::process::id());
    let mut x = seed.finish() | 1;
    for _ in 0..10_000 {
        // xorshift: a new candidate each round.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = (low + (x % u64::from(high - low)) as u32) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high} after 10,000 tries");
}

/// The first port of the kernel's ephemeral range (Linux; 32768 elsewhere).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
        .min(u32::from(u16::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_below_the_ephemeral_range_and_bindable() {
        let high = ephemeral_low().max(11_000);
        for _ in 0..20 {
            let p = free_port();
            assert!((10_000..high).contains(&u32::from(p)), "{p}");
        }
    }

    #[test]
    fn a_server_starts_restarts_on_its_port_and_dies_with_its_handle() {
        let Some(mut server) = nats_server() else {
            return;
        };
        let addr = server.addr();
        assert!(server.url.ends_with(&format!(":{}", server.port())));
        TcpStream::connect(addr).expect("accepts");
        server.kill();
        assert!(!server.is_running());
        assert!(TcpStream::connect(addr).is_err(), "killed, yet accepts");
        server.restart();
        assert!(server.is_running());
        TcpStream::connect(addr).expect("accepts again on the same port");
        server.restart();
        TcpStream::connect(addr).expect("a restart of a running server");
        drop(server);
        assert!(TcpStream::connect(addr).is_err(), "dropped, yet accepts");
    }
}
