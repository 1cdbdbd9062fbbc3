//! What a cluster is made of and how to start it: the kinds of process ([`Role`]) and the
//! plan ([`Plan`]) the supervisor follows.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The kinds of process a cluster is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The `nats-server` the supervisor started (there is one, number 0).
    Nats,
    /// A `cport zone` process.
    Zone,
    /// A `cport gateway` process.
    Gateway,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Nats => "nats",
            Role::Zone => "zone",
            Role::Gateway => "gateway",
        })
    }
}

/// How long a child may go without answering `/healthz` before the supervisor kills it.
pub const DEFAULT_HUNG_AFTER: Duration = Duration::from_secs(2);

/// What to start.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The `cport` binary whose `zone` and `gateway` subcommands are run (the CLI passes
    /// `std::env::current_exe()`).
    pub program: PathBuf,
    /// A NATS server already running; `None` starts `nats-server` from `PATH` on a free
    /// loopback port.
    pub nats: Option<String>,
    /// The cluster's name: the first token of every subject, so that clusters can share a
    /// NATS server.
    pub cluster: String,
    /// How many zones.
    pub zones: usize,
    /// Each gateway's listening address (one gateway per address).
    pub gateways: Vec<SocketAddr>,
    /// Arguments given to every zone after `--zone N --zones Z --gateways G --nats URL
    /// --cluster NAME` (the game's options).
    pub zone_args: Vec<OsString>,
    /// Arguments given to every gateway after `--gateway N --gateways G --zones Z --nats URL
    /// --cluster NAME --addr A` (the game's options that apply to a gateway).
    pub gateway_args: Vec<OsString>,
    /// How long each process may take to say it is ready.
    pub ready_within: Duration,
    /// How long [`Supervisor::stop`](super::Supervisor::stop) lets each process end after SIGTERM before SIGKILL.
    pub grace: Duration,
    /// Forward the children's stderr lines to this process's stderr (else only keep the last
    /// ones for error messages).
    pub echo_stderr: bool,
    /// Environment variables added for the zones and gateways (e.g. `RUST_LOG`).
    pub env: Vec<(OsString, OsString)>,
    /// Start a zone, gateway or NATS server that exits (not during [`Supervisor::stop`](super::Supervisor::stop))
    /// again with the same arguments, and kill and restart a child whose `/healthz` has not
    /// answered 200 for [`Plan::hung_after`]. Off by default here (a test that kills a
    /// process sees it stay dead); `cport cluster` turns it on.
    pub restart: bool,
    /// With [`Plan::restart`]: how long a child may go without a 200 from its `/healthz`
    /// before it is killed and restarted.
    pub hung_after: Duration,
    /// With [`Plan::restart`]: how often each child's `/healthz` is asked.
    pub health_every: Duration,
    /// Where the supervisor serves its own `/healthz` and `/metrics` (`None`: nowhere).
    pub http: Option<SocketAddr>,
}

impl Plan {
    /// A plan with `zones` zones and one gateway per address, the defaults for the rest: NATS
    /// started here, 20 s to be ready, 10 s to stop, stderr forwarded.
    pub fn new(program: PathBuf, cluster: &str, zones: usize, gateways: Vec<SocketAddr>) -> Plan {
        Plan {
            program,
            nats: None,
            cluster: cluster.to_string(),
            zones,
            gateways,
            zone_args: Vec::new(),
            gateway_args: Vec::new(),
            ready_within: Duration::from_secs(20),
            grace: Duration::from_secs(10),
            echo_stderr: true,
            env: Vec::new(),
            restart: false,
            hung_after: DEFAULT_HUNG_AFTER,
            health_every: Duration::from_millis(250),
            http: None,
        }
    }
}

/// The gateways' addresses for `count` gateways when the first listens on `first`: the next
/// ports after it (port 0 stays 0: each gateway picks a free port).
pub fn gateway_addrs(first: SocketAddr, count: usize) -> io::Result<Vec<SocketAddr>> {
    (0..count)
        .map(|g| {
            let mut a = first;
            if first.port() != 0 {
                let port = usize::from(first.port()) + g;
                let port = u16::try_from(port).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{count} gateways from port {} run past port 65535",
                            first.port()
                        ),
                    )
                })?;
                a.set_port(port);
            }
            Ok(a)
        })
        .collect()
}
