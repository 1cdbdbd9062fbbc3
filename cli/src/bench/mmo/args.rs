//! The options of `cport bench mmo` and the builds it runs.

use std::io;
use std::path::PathBuf;

/// Options of `cport bench mmo`.
#[derive(clap::Args, Debug)]
pub struct MmoArgs {
    /// Builds, comma-separated: cport-uring, cport-epoll (`cport mmo`; `cport-NAME@PATH` runs
    /// the `cport` binary at PATH, a build of another commit; `BUILD+FLAG=VALUE` adds
    /// `--FLAG VALUE`, e.g. `cport-uring+recv-pool=0`), tokio (`mmo-tokio`:
    /// `cargo build --release -p cport-bench-peers`), cluster (`cport cluster --zones 4
    /// --gateways 1`; `cluster-N` for N zones, `cluster-N:T` with a bus tick of T µs: the
    /// clients on one gateway, NATS between it and the zones; CPU is the whole process
    /// tree's).
    #[arg(long, default_value = "cport-uring,cport-epoll,tokio")]
    pub builds: String,
    /// Rounds; each runs every build once (per measure), in turn.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Length of each ramp run.
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
    /// Time between added clients (the same for the ramp and the fixed load's climb).
    #[arg(long, default_value_t = 5)]
    pub ramp_interval_ms: u64,
    /// The delay limit of the ramp.
    #[arg(long, default_value_t = 100)]
    pub delay_limit_ms: u64,
    /// Most clients of the ramp (capped at --max-users).
    #[arg(long, default_value_t = 20_000)]
    pub max_clients: usize,
    /// Fixed load: clients to climb to and hold (no fixed-load runs without it).
    #[arg(long)]
    pub fixed_clients: Option<usize>,
    /// Fixed load: seconds held at --fixed-clients (the measured window).
    #[arg(long, default_value_t = 60)]
    pub hold_s: u64,
    /// Only the fixed load (no ramp runs).
    #[arg(long, requires = "fixed_clients")]
    pub no_ramp: bool,
    /// Server worker threads (every build).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Stress client worker threads.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// The servers' NPCs.
    #[arg(long, default_value_t = cport_mmo_proto::MAX_NPC)]
    pub npcs: usize,
    /// The servers' MAX_USER.
    #[arg(long, default_value_t = cport_mmo_proto::MAX_USER)]
    pub max_users: usize,
    /// The servers' VIEW_RANGE.
    #[arg(long, default_value_t = cport_mmo_proto::VIEW_RANGE)]
    pub view_range: u16,
    /// Also write the medians and every round's figures as JSON here (an object keyed by
    /// build name).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A build of the game server: how to start it.
pub(crate) struct Build {
    pub(crate) name: String,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
}

/// The build `full` (`cport-uring`, `cport-epoll`, `cport-NAME@PATH`, `tokio`) with the game
/// flags of `a`.
pub(crate) fn build(full: &str, a: &MmoArgs) -> io::Result<Build> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let mut game = vec![
        "--addr".to_string(),
        "127.0.0.1:0".into(),
        "--threads".into(),
        a.threads.to_string(),
        "--npcs".into(),
        a.npcs.to_string(),
        "--max-users".into(),
        a.max_users.to_string(),
        "--view-range".into(),
        a.view_range.to_string(),
        "--header".into(),
        "u8".into(),
        "--db".into(),
        "none".into(),
    ];
    // `BUILD+FLAG=VALUE…`: extra flags for a cport build (`cport-uring+npc-script=course`,
    // `cport-epoll+recv-pool=0`), so that two settings of one build run side by side.
    let mut parts = full.split('+');
    let base = parts.next().unwrap_or(full);
    let extra: Vec<String> = parts
        .flat_map(|f| match f.split_once('=') {
            Some((k, v)) => vec![format!("--{k}"), v.to_string()],
            None => vec![format!("--{f}")],
        })
        .collect();
    if !extra.is_empty() && !base.starts_with("cport-") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("build {full}: +FLAG=VALUE is for the cport builds"),
        ));
    }
    game.extend(extra);
    let (name, path) = match base.split_once('@') {
        Some((n, p)) => (n, Some(PathBuf::from(p))),
        None => (base, None),
    };
    let (program, args) = match name {
        "cport-uring" | "cport-epoll" => {
            let program = path.unwrap_or(exe);
            if !program.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{full}: no binary at {}", program.display()),
                ));
            }
            let mut args = vec!["mmo".to_string()];
            args.append(&mut game);
            args.extend(["--backend".to_string(), name[6..].to_string()]);
            (program, args)
        }
        cluster if cluster.starts_with("cluster") && path.is_none() => {
            // `cluster-N:T`: a bus tick of T µs.
            let (cluster, tick) = match cluster.split_once(':') {
                Some((c, t)) => (
                    c,
                    Some(t.parse::<u64>().map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("build {full}: cluster-N:TICK_US"),
                        )
                    })?),
                ),
                None => (cluster, None),
            };
            let zones: usize = match cluster.strip_prefix("cluster-") {
                None if cluster == "cluster" => 4,
                Some(n) => n.parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("build {full}: cluster-N"))
                })?,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("unknown build {full:?}"),
                    ))
                }
            };
            let mut args = vec![
                "cluster".to_string(),
                "--zones".into(),
                zones.to_string(),
                "--gateways".into(),
                "1".into(),
            ];
            args.append(&mut game);
            if let Some(t) = tick {
                args.push(format!("--bus-tick-us={t}"));
            }
            (exe, args)
        }
        "tokio" if path.is_none() => {
            let p = dir.join("mmo-tokio");
            if !p.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{} not built: run `cargo build --release -p cport-bench-peers` first",
                        p.display()
                    ),
                ));
            }
            (p, game)
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown build {other:?} (known: cport-uring, cport-epoll, tokio, cluster, cluster-N)"),
            ))
        }
    };
    Ok(Build {
        name: full.to_string(),
        program,
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_builds_are_refused() {
        let a = MmoArgs {
            builds: "x".into(),
            rounds: 1,
            duration_s: 1,
            ramp_interval_ms: 5,
            delay_limit_ms: 100,
            max_clients: 1,
            fixed_clients: None,
            hold_s: 1,
            no_ramp: false,
            threads: 1,
            client_threads: 1,
            npcs: 0,
            max_users: 1,
            view_range: 7,
            json: None,
        };
        assert!(build("nginx", &a).is_err());
        assert!(build("cport-uring@/no/such/binary", &a).is_err());
    }
}
