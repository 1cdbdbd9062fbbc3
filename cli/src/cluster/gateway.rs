//! `cport gateway`: one gateway of a cluster as its own process (`cport_cluster::gateway`):
//! it holds the course clients and routes their packets to the zones over NATS. Prints the
//! startup line every server of the workspace prints (`listening on ADDR (…)`), and on
//! SIGINT/SIGTERM stops (its players are disconnected and saved by their zones).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cport_cluster::gateway::{self, GatewayConfig};
use cport_mmo::args::Header;

/// Options of `cport gateway`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// This gateway's number, 0..gateways.
    #[arg(long)]
    pub gateway: u16,
    /// Gateways in the cluster (each gives player ids from its own range).
    #[arg(long, default_value_t = 1)]
    pub gateways: u16,
    /// Zones in the cluster.
    #[arg(long)]
    pub zones: usize,
    /// The NATS server (nats://HOST:PORT).
    #[arg(long, value_name = "URL")]
    pub nats: String,
    /// The cluster's name, the first token of its subjects.
    #[arg(long, default_value = "cport")]
    pub cluster: String,
    /// Address to listen on for course clients (port 0 picks a free port; the startup line
    /// shows it).
    #[arg(long, default_value = "0.0.0.0:4000")]
    pub addr: SocketAddr,
    /// Worker threads (0 = available parallelism).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Width of the size field of every packet.
    #[arg(long, value_enum, default_value = "u8")]
    pub header: Header,
    /// MAX_USER of the whole cluster: player ids are 0..max-users, split between gateways.
    #[arg(long, default_value_t = cport_mmo_proto::MAX_USER)]
    pub max_users: usize,
    /// Board width and height (every process of a cluster must be given the same).
    #[arg(long, default_value_t = cport_mmo_proto::W_WIDTH)]
    pub world_size: u16,
    /// Most bytes queued for sending per session before it is closed as a slow consumer.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_send_queue: usize,
    /// How long a login may wait for its zone before the client gets SC_LOGIN_FAIL (ms).
    #[arg(long, default_value_t = 5_000)]
    pub login_timeout_ms: u64,
    /// How long a hand-off may hold a client's packets before the gateway gives the player
    /// back to its old owner (ms; the zones give up on a hand-off after 500 ms and keep the
    /// player, so this is the last resort when both zones' answers were lost).
    #[arg(long, default_value_t = 3_000)]
    pub handoff_timeout_ms: u64,
    /// At most one bus message per zone per this many microseconds (batching under load;
    /// an entry after a quiet tick leaves at once).
    #[arg(long, default_value_t = 1000)]
    pub bus_tick_us: u64,
    /// Backend: auto, uring, epoll [default: $CPORT_BACKEND, else auto].
    #[arg(long)]
    pub backend: Option<cport::Backend>,
    /// Where to serve /healthz, /readyz and /metrics (port 0 picks a free port; the line
    /// `http on ADDR` says which), or `none`.
    #[arg(long, value_name = "ADDR|none", default_value = "127.0.0.1:0")]
    pub http: cport_cluster::ops::HttpAddr,
}

/// `cport gateway`.
pub fn run(args: Args) -> io::Result<()> {
    crate::util::raise_fd_limit();
    let signals = crate::util::signals()?;
    let threads = crate::util::threads_or_cores(args.threads);
    let cfg = GatewayConfig {
        addr: args.addr,
        threads,
        backend: args.backend,
        me: args.gateway,
        gateways: args.gateways,
        zones: args.zones,
        world_size: args.world_size,
        max_users: args.max_users,
        header: args.header.into(),
        max_send_queue: args.max_send_queue,
        nats: args.nats.clone(),
        cluster: args.cluster.clone(),
        login_timeout: Duration::from_millis(args.login_timeout_ms),
        handoff_timeout: Duration::from_millis(args.handoff_timeout_ms),
        bus_tick: Duration::from_micros(args.bus_tick_us),
        // A replaced run ends at once: its clients reconnect, as after any crash.
        exit_when_fenced: true,
    };
    let gw = Arc::new(gateway::start(cfg)?);
    let ops = match args.http.0 {
        Some(addr) => {
            let ops = cport_cluster::ops::serve(addr, gw.clone())?;
            println!("http on {}", ops.local_addr());
            Some(ops)
        }
        None => None,
    };
    println!(
        "listening on {} (gateway {} of {}, zones: {}, cluster: {}, nats: {}, threads: {threads}, max users: {}, header: {})",
        gw.local_addr(),
        args.gateway,
        args.gateways,
        args.zones,
        args.cluster,
        args.nats,
        args.max_users,
        args.header.name()
    );
    io::stdout().flush()?;
    crate::util::wait_for_signal(&signals, None, String::new);
    let stats = gw.stats();
    // The endpoints hold the other reference to the gateway: they end first.
    drop(ops);
    match Arc::try_unwrap(gw) {
        Ok(gw) => {
            gw.shutdown(Duration::from_secs(10));
        }
        Err(_) => {
            tracing::error!("the gateway is still referenced: it stops when the process ends")
        }
    }
    println!("gateway {}: {stats:?}", args.gateway);
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

    /// `cport gateway`'s flags from an argument list.
    pub fn parse(argv: &[String]) -> Args {
        T::parse_from(argv).a
    }
}
