//! A zone process's settings.

use std::time::Duration;

/// A zone process's settings.
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    /// The game's settings (`max_users` is the cluster's; `addr` is not used: a zone takes no
    /// clients).
    pub game: cport_mmo::Config,
    /// This zone's number, `0..zones`.
    pub me: u16,
    /// Zones in the cluster.
    pub zones: usize,
    /// Gateways in the cluster.
    pub gateways: u16,
    /// The NATS server (`nats://host:port`).
    pub nats: String,
    /// The cluster's name: the prefix of its subjects (several clusters can share a server).
    pub cluster: String,
    /// How long the bus may take to connect at start.
    pub connect_timeout: Duration,
    /// See [`ZoneSetup::handoff_timeout`](cport_mmo::cluster::ZoneSetup::handoff_timeout).
    pub handoff_timeout: Duration,
    /// Test hook: see [`ZoneSetup::transfer_delay`](cport_mmo::cluster::ZoneSetup::transfer_delay).
    pub transfer_delay: Duration,
    /// At most one NATS message per destination per tick ([`Outbox::with_tick`](crate::bus::Outbox::with_tick)).
    pub bus_tick: Duration,
    /// A gateway not heard from for this long, while this zone's bus has been up at least
    /// as long, is gone: its players leave the game (default 3 s; gateways say `Alive`
    /// every 500 ms).
    pub gateway_silence: Duration,
    /// When this run learns that a newer run of its zone has replaced it (a gateway or a
    /// zone answers `Fenced`, or the database's lease refuses a save): `true` ends the
    /// process at once (`cport zone`: exit status 3, nothing written); `false` (tests, in
    /// one process) stops handling the bus and writing.
    pub exit_when_fenced: bool,
}

impl ZoneConfig {
    /// Zone `me` of `zones`, for `gateways` gateways, on the NATS server at `nats`, with the
    /// defaults for the rest.
    pub fn new(
        game: cport_mmo::Config,
        me: u16,
        zones: usize,
        gateways: u16,
        nats: &str,
        cluster: &str,
    ) -> ZoneConfig {
        ZoneConfig {
            game,
            me,
            zones,
            gateways,
            nats: nats.to_string(),
            cluster: cluster.to_string(),
            connect_timeout: Duration::from_secs(10),
            handoff_timeout: Duration::from_millis(500),
            transfer_delay: Duration::ZERO,
            bus_tick: crate::bus::DEFAULT_TICK,
            gateway_silence: Duration::from_secs(3),
            exit_when_fenced: false,
        }
    }
}
