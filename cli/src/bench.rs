//! `cport bench echo`: every server under the same load, each as its own process, alternated
//! round by round, medians and ranges printed side by side ([`echo`]). `cport bench port`:
//! the post→get hand-off comparison (`cport/examples/bench_port.rs`). `cport bench mmo`: the
//! game server builds under the same stress client ([`mmo`]). `cport bench cluster`: 1 zone
//! against 4 zones, each held to the same CPU share ([`cluster`]).

#[cfg(target_os = "linux")]
mod cluster;
mod echo;
#[cfg(target_os = "linux")]
mod idle;
mod mmo;
mod stress_run;

use std::io;
use std::path::PathBuf;
use std::process::Command;

use crate::util::not_built;

/// `cport bench …`
#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Echo servers under the same load (closed loop, `--rate` open loop, `--skew`).
    Echo(echo::EchoArgs),
    /// Memory per idle connection: each server's RSS growth for N connections that each sent
    /// one small message and then wait.
    #[cfg(target_os = "linux")]
    Idle(idle::IdleArgs),
    /// Post→get hand-off throughput: cport against crossbeam-channel and std mpsc (runs the
    /// `bench_port` example; arguments are passed to it, e.g. `--batch --rounds 5`).
    Port(PortArgs),
    /// The game server builds (cport on io_uring, cport on epoll, the same game on tokio)
    /// under the same stress client: the ramp's maximum and a fixed load, round by round.
    Mmo(mmo::MmoArgs),
    /// The scaling figure: clusters of 1 and 4 zones (`--zones 1,4`), each zone process in a
    /// cgroup v1 cpu group with the same quota (`--zone-cpu 0.25`), and the most clients
    /// each holds with the delay p99 under 100 ms; `scaling` = the ratio.
    #[cfg(target_os = "linux")]
    Cluster(cluster::ClusterArgs),
}

/// Options of `cport bench port`.
#[derive(clap::Args, Debug)]
pub struct PortArgs {
    /// Arguments for `bench_port` (`--batch`, `--rounds N`, …).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(cmd: Cmd) -> io::Result<()> {
    match cmd {
        Cmd::Echo(a) => echo::run(a),
        #[cfg(target_os = "linux")]
        Cmd::Idle(a) => idle::run(a),
        Cmd::Port(a) => port(a),
        Cmd::Mmo(a) => mmo::run(a),
        #[cfg(target_os = "linux")]
        Cmd::Cluster(a) => cluster::run(a),
    }
}

fn port(a: PortArgs) -> io::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let example = dir.join("examples").join("bench_port");
    if !example.exists() {
        return Err(not_built(
            &example,
            "cargo build --release -p cport --examples",
        ));
    }
    let status = Command::new(&example).args(&a.args).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} exited with {status}",
            example.display()
        )))
    }
}
