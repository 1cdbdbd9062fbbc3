//! What the peer echo servers (`peer_tokio`, `peer_compio`, `peer_raw`, `cport_echo_bench`,
//! the binaries of `cport-bench-peers`) share: their command line, `SO_REUSEPORT` listeners on one
//! port, the startup line, the skew spin, and waiting for SIGINT/SIGTERM.
//!
//! **Skew marker.** Under `cport bench echo --skew P:MS` the load client sends messages whose
//! first byte is [`SLOW_MARKER`] (0xFF) for the slow ones; the echo pattern otherwise only
//! holds bytes 0..=250, so 0xFF can start no other chunk. A server started with
//! `--skew-spin-ms MS` busy-spins MS ms in its handler before echoing every received chunk
//! that starts with the marker. With depth 1 (ping-pong) every message starts a receive
//! (nothing else is in flight on the connection when it arrives), so each slow message spins
//! exactly once; `cport bench echo` therefore refuses `--skew` with `--depth` > 1.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// First byte of a slow message.
pub const SLOW_MARKER: u8 = 0xFF;

/// Receive buffer size of every peer (the same as `cport echo`'s).
pub const RECV_BUF: usize = 16 * 1024;

/// Listen backlog of every peer.
pub const BACKLOG: i32 = 4096;

/// The command line every peer takes.
#[derive(Debug, Clone)]
pub struct PeerArgs {
    /// `--addr` (default 127.0.0.1:0).
    pub addr: SocketAddr,
    /// `--threads` (default 2).
    pub threads: usize,
    /// `--skew-spin-ms` (default 0: no marker check at all).
    pub spin: Duration,
    /// `--backend` (only `cport_echo_bench` uses it).
    pub backend: Option<String>,
}

impl PeerArgs {
    /// Parses `std::env::args()`; prints usage and exits 2 on a bad one.
    pub fn parse() -> PeerArgs {
        raise_nofile();
        match Self::parse_from(std::env::args().skip(1)) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{e}\nusage: --addr 127.0.0.1:0 --threads N [--skew-spin-ms MS] [--backend auto|uring|epoll]");
                std::process::exit(2);
            }
        }
    }

    /// Parses the given arguments.
    pub fn parse_from(args: impl IntoIterator<Item = String>) -> Result<PeerArgs, String> {
        let mut a = PeerArgs {
            addr: "127.0.0.1:0".parse().expect("literal"),
            threads: 2,
            spin: Duration::ZERO,
            backend: None,
        };
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--addr" => a.addr = value()?.parse().map_err(|e| format!("--addr: {e}"))?,
                "--threads" => {
                    a.threads = value()?
                        .parse::<usize>()
                        .map_err(|e| format!("--threads: {e}"))?
                        .max(1)
                }
                "--skew-spin-ms" => {
                    let ms: f64 = value()?
                        .parse()
                        .map_err(|e| format!("--skew-spin-ms: {e}"))?;
                    a.spin = Duration::from_secs_f64(ms.max(0.0) / 1e3);
                }
                "--backend" => a.backend = Some(value()?),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(a)
    }
}

/// `n` listeners (blocking) on one address with `SO_REUSEPORT`; with port 0 the first picks
/// the port and the others bind to it. (Windows has no `SO_REUSEPORT`: one listener, cloned
/// `n` times, so every thread accepts from the same queue.)
pub fn reuseport_listeners(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpListener>> {
    let mut out: Vec<TcpListener> = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n.max(1) {
        #[cfg(windows)]
        if let Some(first) = out.first() {
            let l = first.try_clone()?;
            out.push(l);
            continue;
        }
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        #[cfg(unix)]
        s.set_reuse_port(true)?;
        s.bind(&addr.into())?;
        s.listen(BACKLOG)?;
        let l: TcpListener = s.into();
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Prints the one startup line the harness waits for, and flushes it.
pub fn print_listening(addr: SocketAddr, backend: &str, threads: usize) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "listening on {addr} (backend: {backend}, threads: {threads})"
    )?;
    out.flush()
}

/// Whether a received chunk starts a slow message (and spin is on).
#[inline]
pub fn is_slow(spin: Duration, chunk: &[u8]) -> bool {
    !spin.is_zero() && chunk.first() == Some(&SLOW_MARKER)
}

/// Burns CPU for `d` (busy loop on the clock: the same in every server).
pub fn spin(d: Duration) {
    let t0 = Instant::now();
    let mut x = 0u64;
    while t0.elapsed() < d {
        for _ in 0..64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
    }
}

/// Spins if the chunk starts a slow message.
#[inline]
pub fn maybe_spin(spin_for: Duration, chunk: &[u8]) {
    if is_slow(spin_for, chunk) {
        spin(spin_for);
    }
}

/// Nothing to raise on Windows (no per-process limit on sockets).
#[cfg(windows)]
pub fn raise_nofile() {}

/// Raises the soft open-files limit to the hard one (1000 connections need more than 1024
/// descriptors with the listeners and rings).
#[cfg(unix)]
pub fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Blocks until SIGINT or SIGTERM, then exits the process with status 0.
#[cfg(windows)]
pub fn exit_on_signal() -> ! {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, flag.clone()) {
            eprintln!("signals: {e}");
            std::process::exit(1)
        }
    }
    while !flag.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::process::exit(0)
}

/// Blocks until SIGINT or SIGTERM, then exits the process with status 0.
#[cfg(unix)]
pub fn exit_on_signal() -> ! {
    use signal_hook::consts::{SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(mut s) => {
            let _ = s.forever().next();
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("signals: {e}");
            std::process::exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_peer_command_line() {
        let a = PeerArgs::parse_from(
            [
                "--addr",
                "127.0.0.1:9",
                "--threads",
                "3",
                "--skew-spin-ms",
                "2",
            ]
            .map(String::from),
        )
        .unwrap();
        assert_eq!(a.addr.port(), 9);
        assert_eq!(a.threads, 3);
        assert_eq!(a.spin, Duration::from_millis(2));
        assert!(PeerArgs::parse_from(["--bogus".to_string()]).is_err());
    }

    #[test]
    fn reuseport_listeners_share_the_port() {
        let ls = reuseport_listeners("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
    }

    #[test]
    fn only_a_marked_chunk_is_slow() {
        let ms = Duration::from_millis(1);
        assert!(is_slow(ms, &[SLOW_MARKER, 1, 2]));
        assert!(!is_slow(ms, &[0, 1, 2]));
        assert!(!is_slow(Duration::ZERO, &[SLOW_MARKER]));
    }
}
