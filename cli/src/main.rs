//! `cport`: one binary, one subcommand per job.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod cluster;
mod demo;
mod echo;
mod map;
mod mmo;
// The soak reads the servers' RSS and descriptors from Linux's /proc.
#[cfg(target_os = "linux")]
mod soak;
mod stress;
mod util;
mod web;

#[derive(Parser, Debug)]
#[command(
    name = "cport",
    version,
    about = "I/O completion ports for Linux: servers and tools"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// A raw byte-stream TCP echo server on the server layer.
    Echo(echo::Args),
    /// The IOCP course's game server (2000x2000 board, view lists, NPCs).
    Mmo(mmo::Args),
    /// The course's stress tester: how many clients stay under 100 ms of delay.
    Stress(stress::Args),
    /// The stress tester against the game server for a minute: report, chart and map.
    Demo(demo::Args),
    /// One machine's cluster: nats-server, the zones and the gateways as processes; prints
    /// where to connect.
    Cluster(cluster::Args),
    /// One zone of a cluster: owns a rectangle of the board (players, NPCs, saves).
    Zone(cluster::zone::Args),
    /// One gateway of a cluster: holds course clients and routes them to the zones.
    Gateway(cluster::gateway::Args),
    /// One client process of a multi-process `cport stress` (started by it).
    #[command(hide = true)]
    StressChild(stress::ChildArgs),
    /// A bounded soak of `cport echo` and `cport mmo` (separate processes) under mixed load,
    /// sampling RSS, fds and sessions; ends with a table and a verdict (exit 1 on failure).
    #[cfg(target_os = "linux")]
    Soak(soak::Args),
    /// Side-by-side benchmarks.
    #[command(subcommand)]
    Bench(bench::Cmd),
    /// Maps of obstacles for `cport mmo --map`: generate one, check one.
    #[command(subcommand)]
    Map(map::Cmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A process of a cluster says which one on every log line.
    util::init_logging(match &cli.cmd {
        Cmd::Zone(a) => Some(format!("zone={}", a.zone)),
        Cmd::Gateway(a) => Some(format!("gateway={}", a.gateway)),
        Cmd::Cluster(_) => Some("supervisor".to_string()),
        _ => None,
    });
    let result = match cli.cmd {
        Cmd::Echo(args) => echo::run(args),
        Cmd::Mmo(args) => mmo::run(args),
        Cmd::Stress(args) => stress::run(args),
        Cmd::StressChild(args) => stress::run_child(args),
        Cmd::Demo(args) => demo::run(args),
        Cmd::Cluster(args) => cluster::run(args),
        Cmd::Zone(args) => cluster::zone::run(args),
        Cmd::Gateway(args) => cluster::gateway::run(args),
        #[cfg(target_os = "linux")]
        Cmd::Soak(args) => soak::run(args),
        Cmd::Bench(cmd) => bench::run(cmd),
        Cmd::Map(cmd) => map::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cport: {e}");
            ExitCode::FAILURE
        }
    }
}
