//! Sampling each server once a second on its own thread, and the samples' CSV file.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::servers::{fd_count, read_stats, rss_kib, Servers};

#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    pub(crate) t: f64,
    pub(crate) rss_kib: u64,
    pub(crate) fds: u64,
    pub(crate) open: u64,
    pub(crate) queued: u64,
    pub(crate) extra: u64,
    pub(crate) heap_used: u64,
    pub(crate) heap_free: u64,
}

pub(crate) struct Sampler {
    thread: std::thread::JoinHandle<()>,
    out: Arc<Mutex<Vec<Vec<Sample>>>>,
}

impl Sampler {
    pub(crate) fn start(servers: &Servers, stop: Arc<AtomicBool>) -> Sampler {
        let procs: Vec<(u32, PathBuf, &'static str)> = servers
            .0
            .iter()
            .map(|s| (s.pid, s.stats_path.clone(), s.name))
            .collect();
        let out = Arc::new(Mutex::new(vec![Vec::new(); procs.len()]));
        let o = out.clone();
        let thread = std::thread::Builder::new()
            .name("soak-sampler".into())
            .spawn(move || {
                let t0 = Instant::now();
                let mut next = t0;
                let mut said = 0.0;
                while !stop.load(Relaxed) {
                    let t = t0.elapsed().as_secs_f64();
                    let mut line = format!("soak: {t:>5.0} s");
                    for (i, (pid, path, name)) in procs.iter().enumerate() {
                        let (rss, alive) = rss_kib(*pid);
                        if !alive {
                            eprintln!("soak: cport {name} (pid {pid}) is gone: stopping the load");
                            stop.store(true, Relaxed);
                            break;
                        }
                        let kv = read_stats(path).unwrap_or_default();
                        let get = |k: &str| kv.get(k).copied().unwrap_or(0);
                        let s = Sample {
                            t,
                            rss_kib: rss,
                            fds: fd_count(*pid),
                            open: get("open"),
                            queued: get("queued_bytes"),
                            extra: get("awake_npcs"),
                            heap_used: get("heap_used"),
                            heap_free: get("heap_free"),
                        };
                        let _ = write!(
                            line,
                            " | {name}: rss {} MiB, fds {}, sessions {}, queued {} KiB",
                            s.rss_kib / 1024,
                            s.fds,
                            s.open,
                            s.queued / 1024
                        );
                        if kv.contains_key("awake_npcs") {
                            let _ = write!(line, ", awake NPCs {}", s.extra);
                        }
                        o.lock().expect("sampler lock")[i].push(s);
                    }
                    if t - said >= 30.0 {
                        eprintln!("{line}");
                        said = t;
                    }
                    next += Duration::from_secs(1);
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                }
            })
            .expect("spawn the sampler");
        Sampler { thread, out }
    }

    pub(crate) fn finish(self) -> Vec<Vec<Sample>> {
        let _ = self.thread.join();
        std::mem::take(&mut *self.out.lock().expect("sampler lock"))
    }
}

/// The per-second samples, one row per second and server: `server,t_s,rss_kib,fds,sessions,
/// queued_bytes,awake_npcs,heap_used,heap_free`.
pub(crate) fn write_samples(
    path: &Path,
    servers: &Servers,
    samples: &[Vec<Sample>],
) -> io::Result<()> {
    let mut out = String::from(
        "server,t_s,rss_kib,fds,sessions,queued_bytes,awake_npcs,heap_used,heap_free\n",
    );
    for (srv, rows) in servers.0.iter().zip(samples) {
        for x in rows {
            let _ = writeln!(
                out,
                "{},{:.1},{},{},{},{},{},{},{}",
                srv.name,
                x.t,
                x.rss_kib,
                x.fds,
                x.open,
                x.queued,
                x.extra,
                x.heap_used,
                x.heap_free
            );
        }
    }
    fs::write(path, out)
}
