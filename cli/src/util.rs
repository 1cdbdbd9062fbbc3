//! What every subcommand needs: logging, the open-files limit, signals.

use std::io::{self, IsTerminal};
use std::sync::mpsc;

use signal_hook::consts::{SIGINT, SIGTERM};

/// Logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
}

/// A thread count option: `0` means one per available core.
pub fn threads_or_cores(n: usize) -> usize {
    match n {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Windows has no per-process limit on sockets (they are bounded by memory): unlimited.
#[cfg(windows)]
pub fn raise_fd_limit() -> u64 {
    u64::MAX
}

/// Raises the soft open-files limit to the hard one and says what it got.
#[cfg(unix)]
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            tracing::debug!("open-files limit: {n}");
            n
        }
        Err(e) => {
            tracing::warn!("could not raise the open-files limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
        }
    }
}

/// A receiver that gets one message per SIGINT/SIGTERM (Windows: Ctrl-C / Ctrl-Break as the
/// C runtime's SIGINT, and SIGTERM; signals that come within 50 ms count once).
#[cfg(windows)]
pub fn signals() -> io::Result<mpsc::Receiver<i32>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let flags = [SIGINT, SIGTERM].map(|s| (s, Arc::new(AtomicBool::new(false))));
    for (sig, flag) in &flags {
        signal_hook::flag::register(*sig, flag.clone())?;
    }
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            for (sig, flag) in &flags {
                if flag.swap(false, Ordering::Relaxed) && tx.send(*sig).is_err() {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        })?;
    Ok(rx)
}

/// A receiver that gets one message per SIGINT/SIGTERM.
#[cfg(unix)]
pub fn signals() -> io::Result<mpsc::Receiver<i32>> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    return;
                }
            }
        })?;
    Ok(rx)
}
