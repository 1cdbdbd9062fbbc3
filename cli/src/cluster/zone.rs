//! `cport zone`: one zone of a cluster as its own process (`cport_cluster::zone`). Prints
//! `zone N of Z ready` once it serves, and on SIGINT/SIGTERM stops: every player it owns is
//! saved.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use cport_cluster::zone::{self, ZoneConfig};
use cport_mmo::args::GameArgs;

/// Options of `cport zone`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// This zone's number, 0..zones.
    #[arg(long)]
    pub zone: u16,
    /// Zones in the cluster (every process must be given the same number).
    #[arg(long)]
    pub zones: usize,
    /// Gateways in the cluster.
    #[arg(long, default_value_t = 1)]
    pub gateways: u16,
    /// The NATS server (nats://HOST:PORT).
    #[arg(long, value_name = "URL")]
    pub nats: String,
    /// The cluster's name, the first token of its subjects.
    #[arg(long, default_value = "cport")]
    pub cluster: String,
    /// The game's flags (--addr is not used: a zone takes no clients; --max-users is the
    /// cluster's).
    #[command(flatten)]
    pub game: GameArgs,
    /// Backend: auto, uring, epoll [default: $CPORT_BACKEND, else auto].
    #[arg(long)]
    pub backend: Option<cport::Backend>,
    /// Test hook: wait this long before taking a player handed over by another zone (the
    /// old owner gives up after 500 ms and keeps it).
    #[arg(long, hide = true, default_value_t = 0)]
    pub test_transfer_delay_ms: u64,
    /// At most one bus message per destination per this many microseconds (batching
    /// under load; an entry after a quiet tick leaves at once).
    #[arg(long, default_value_t = 1000)]
    pub bus_tick_us: u64,
    /// Where to serve /healthz, /readyz and /metrics (port 0 picks a free port; the line
    /// `http on ADDR` says which), or `none`.
    #[arg(long, value_name = "ADDR|none", default_value = "127.0.0.1:0")]
    pub http: cport_cluster::ops::HttpAddr,
}

/// `cport zone`.
pub fn run(args: Args) -> io::Result<()> {
    crate::util::raise_fd_limit();
    let signals = crate::util::signals()?;
    let game = cport_mmo::Config {
        threads: crate::util::threads_or_cores(args.game.threads),
        backend: args.backend,
        ..args.game.config()?
    };
    let db = game.db.clone();
    let mut cfg = ZoneConfig::new(
        game,
        args.zone,
        args.zones,
        args.gateways,
        &args.nats,
        &args.cluster,
    );
    cfg.transfer_delay = Duration::from_millis(args.test_transfer_delay_ms);
    cfg.bus_tick = Duration::from_micros(args.bus_tick_us);
    // A replaced run (stopped, then woken after its replacement started) ends at once.
    cfg.exit_when_fenced = true;
    let z = Arc::new(zone::start(cfg)?);
    let ops = match args.http.0 {
        Some(addr) => {
            let ops = cport_cluster::ops::serve(addr, z.clone())?;
            println!("http on {}", ops.local_addr());
            Some(ops)
        }
        None => None,
    };
    println!("zone {} of {} ready", args.zone, args.zones);
    io::stdout().flush()?;
    tracing::info!(
        zone = args.zone,
        zones = args.zones,
        cluster = %args.cluster,
        nats = %args.nats,
        db = %db,
        backend = ?z.backend(),
        "serving"
    );
    crate::util::wait_for_signal(&signals, None, String::new);
    let stats = z.stats();
    let zs = z.zone_stats();
    let bus = z.bus_stats();
    // The endpoints hold the other reference to the zone: they end first.
    drop(ops);
    match Arc::try_unwrap(z) {
        Ok(z) => z.shutdown(Duration::from_secs(10)),
        Err(_) => tracing::error!("the zone is still referenced: it stops when the process ends"),
    }
    println!("zone {}: game: {stats}", args.zone);
    println!("zone {}: {zs:?}", args.zone);
    println!("zone {}: bus: {bus:?}", args.zone);
    io::stdout().flush()?;
    Ok(())
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: Args,
    }

    /// `cport zone`'s flags from an argument list.
    pub fn parse(argv: &[String]) -> Args {
        T::parse_from(argv).a
    }

    #[test]
    fn the_transfer_delay_is_a_hidden_flag() {
        let a = parse(&[
            "t".into(),
            "--zone=0".into(),
            "--zones=4".into(),
            "--nats=nats://x:1".into(),
            "--test-transfer-delay-ms=1500".into(),
        ]);
        assert_eq!(
            (a.test_transfer_delay_ms, a.gateways, a.cluster.as_str()),
            (1500, 1, "cport")
        );
        use clap::CommandFactory;
        let help = T::command().render_help().to_string();
        assert!(!help.contains("transfer-delay"), "{help}");
        assert!(help.contains("--zones"));
    }
}
