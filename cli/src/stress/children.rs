//! `cport stress --procs K`: the client processes (this binary in its hidden `stress-child`
//! mode), spawned and reaped here; the ramp over them is `cport_mmo_client::multi`.

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use cport_mmo_client::{Errors, MapSnapshot, Probe, Report, Second, Settings};

/// The run over `procs` client processes (this binary in its hidden `stress-child` mode),
/// each with its share of the clients; the ramp runs here.
pub fn run_children(
    settings: &Settings,
    procs: usize,
    stop: &AtomicBool,
    on_second: impl FnMut(&Second, &Errors, &Probe),
) -> io::Result<(Report, MapSnapshot)> {
    use cport_mmo_client::multi::{run_multi, shares, ChildSettings, Link};
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()?;
    let mut kids = Vec::new();
    let mut links = Vec::new();
    for (i, share) in shares(settings.max_clients, procs).into_iter().enumerate() {
        let cs = serde_json::to_string(&ChildSettings::new(settings, i, share))
            .map_err(io::Error::other)?;
        let mut cmd = Command::new(&exe);
        cmd.args(["stress-child", &cs])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = cmd.spawn()?;
        let to = child.stdin.take().expect("piped stdin");
        let from = child.stdout.take().expect("piped stdout");
        links.push(Link {
            to: Box::new(to),
            from: Box::new(io::BufReader::new(from)),
        });
        kids.push(child);
    }
    let result = run_multi(settings, links, stop, on_second);
    // Each child was told to stop (and its input closed): it exits at once.
    for (i, mut k) in kids.into_iter().enumerate() {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match k.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        eprintln!("stress: client process {i} exited with {status}");
                    }
                    break;
                }
                Ok(None) if std::time::Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    eprintln!("stress: client process {i} did not exit: killed");
                    let _ = k.kill();
                    let _ = k.wait();
                    break;
                }
            }
        }
    }
    result
}

/// `cport stress-child SETTINGS` (hidden): one client process of a multi-process run, driven
/// over stdin/stdout by its parent `cport stress`.
#[derive(clap::Args, Debug)]
pub struct ChildArgs {
    /// Its settings (JSON, from the parent).
    pub settings: String,
}

pub fn run_child(args: ChildArgs) -> io::Result<()> {
    let cs: cport_mmo_client::multi::ChildSettings = serde_json::from_str(&args.settings)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    crate::util::raise_fd_limit();
    // Ctrl-C reaches the whole process group: the parent decides when children stop (it
    // tells them, or closes their input by exiting).
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGINT,
        Arc::new(AtomicBool::new(false)),
    );
    cport_mmo_client::multi::run_child(
        &cs,
        io::BufReader::new(io::stdin()),
        io::BufWriter::new(io::stdout().lock()),
    )
}
