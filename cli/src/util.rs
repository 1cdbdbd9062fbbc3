//! What every subcommand needs: logging, the open-files limit, signals.

use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use cport_server::{Metrics, REASONS};

use signal_hook::consts::{SIGINT, SIGTERM};

/// Logs to stderr; `RUST_LOG` filters (default `info`). With `who` (`zone=2`,
/// `gateway=0`), every line starts with it: the subscriber is the process's global one, so
/// a line logged by a worker, the bus thread or the database threads says which process of
/// a cluster wrote it as much as one logged on main (journald and `kubectl logs` mix them).
pub fn init_logging(who: Option<String>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal());
    match who {
        Some(tag) => builder
            .event_format(Tagged {
                tag,
                inner: tracing_subscriber::fmt::format(),
            })
            .init(),
        None => builder.init(),
    }
}

/// An event format that writes `tag` and a space before each line of `inner`.
pub struct Tagged<F> {
    /// What every line starts with.
    pub tag: String,
    /// The format of the rest of the line.
    pub inner: F,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Tagged<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "{} ", self.tag)?;
        self.inner.format_event(ctx, writer, event)
    }
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

/// Waits for SIGINT/SIGTERM. With a stats file, meanwhile replaces it once a second with one
/// line of `key=value` counters (`line()`), written to `PATH.tmp` and renamed over `PATH`, so a
/// reader never sees half a line. This runs on the main thread, which otherwise only waits:
/// the workers never touch the file.
pub fn wait_for_signal(
    signals: &mpsc::Receiver<i32>,
    stats_file: Option<&Path>,
    line: impl Fn() -> String,
) {
    let Some(path) = stats_file else {
        let _ = signals.recv();
        return;
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut warned = false;
    loop {
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| writeln!(f, "{}", line()))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            if !warned {
                tracing::warn!("could not write the stats file {}: {e}", path.display());
                warned = true;
            }
        }
        match signals.recv_timeout(Duration::from_secs(1)) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// The server layer's counters as `key=value` pairs: `open accepted refused closed bytes_in
/// bytes_out packets_in packets_out sends queued_bytes`, then `closed_<reason>` for every reason.
pub fn metrics_kv(m: &Metrics) -> String {
    let mut s = format!(
        "open={} accepted={} refused={} closed={} bytes_in={} bytes_out={} packets_in={} packets_out={} sends={} queued_bytes={}",
        m.open,
        m.accepted,
        m.refused,
        m.closed_total(),
        m.bytes_in,
        m.bytes_out,
        m.packets_in,
        m.packets_out,
        m.sends,
        m.queued_bytes
    );
    for (r, n) in REASONS.iter().zip(m.closed) {
        s.push_str(&format!(" closed_{r}={n}"));
    }
    s
}

/// The heap as the C allocator sees it: ` heap_used=N heap_free=N` (bytes allocated and not
/// freed, bytes the allocator holds free), from glibc's `mallinfo2` (it walks every arena:
/// called once a second, from the stats writer only). Empty elsewhere. Beside RSS, it tells
/// a leak (used grows) from memory the allocator keeps after it was freed (free grows).
pub fn heap_kv() -> String {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value; glibc
        // locks each arena while it reads it.
        let m = unsafe { libc::mallinfo2() };
        format!(
            " heap_used={} heap_free={}",
            m.uordblks + m.hblkhd,
            m.fordblks
        )
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    String::new()
}

/// A program a benchmark needs is not built: says which command builds it.
pub fn not_built(path: &std::path::Path, how: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not built: run `{how}` first", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Every line carries the process's tag, whichever thread logs it and whatever span it
    /// is in (none here, on a thread of its own).
    #[test]
    fn every_line_says_which_process() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .event_format(Tagged {
                tag: "zone=2".to_string(),
                inner: tracing_subscriber::fmt::format(),
            })
            .finish();
        let sub = Arc::new(sub);
        let d = tracing::Dispatch::from(sub.clone());
        tracing::dispatcher::with_default(&d, || tracing::info!(player = 7, "from main"));
        let d2 = d.clone();
        std::thread::spawn(move || {
            tracing::dispatcher::with_default(&d2, || tracing::warn!("from a worker"))
        })
        .join()
        .unwrap();
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines.iter().all(|l| l.starts_with("zone=2 ")), "{out}");
        assert!(
            lines[0].contains("from main") && lines[0].contains("player=7"),
            "{out}"
        );
        assert!(
            lines[1].contains("WARN") && lines[1].contains("from a worker"),
            "{out}"
        );
    }
}
