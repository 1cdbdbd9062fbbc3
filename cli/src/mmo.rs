//! `cport mmo`: the course's game server (`shared/course-protocol.md`) on the server layer.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

use cport::Backend;
use cport_server::SizeField;

/// Width of the packets' size field.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// One byte (the course's default).
    U8,
    /// Two bytes, little-endian.
    U16,
}

/// Options of `cport mmo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the startup line shows it).
    #[arg(long, default_value = "0.0.0.0:4000")]
    pub addr: SocketAddr,
    /// Worker threads (0 = available parallelism).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Backend: auto, uring or epoll [default: $CPORT_BACKEND, else auto].
    #[arg(long)]
    pub backend: Option<Backend>,
    /// Width of the size field of every packet.
    #[arg(long, value_enum, default_value = "u8")]
    pub header: Header,
    /// VIEW_RANGE: a player sees what is within this many cells on both axes.
    #[arg(long, default_value_t = cport_mmo::protocol::VIEW_RANGE)]
    pub view_range: u16,
    /// MAX_USER: player slots; logins beyond get SC_LOGIN_FAIL.
    #[arg(long, default_value_t = cport_mmo::protocol::MAX_USER)]
    pub max_users: usize,
    /// NPCs (ids from max-users up), placed from --seed.
    #[arg(long, default_value_t = cport_mmo::protocol::MAX_NPC)]
    pub npcs: usize,
    /// Seed of NPC placement, login positions, teleports and NPC moves.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Most bytes queued for sending per session before it is closed as a slow consumer.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_send_queue: usize,
}

pub fn run(args: Args) -> io::Result<()> {
    crate::util::raise_fd_limit();
    let signals = crate::util::signals()?;
    let threads = crate::util::threads_or_cores(args.threads);
    let cfg = cport_mmo::Config {
        addr: args.addr,
        threads,
        backend: args.backend,
        header: match args.header {
            Header::U8 => SizeField::U8,
            Header::U16 => SizeField::U16,
        },
        view_range: args.view_range,
        max_users: args.max_users,
        npcs: args.npcs,
        seed: args.seed,
        max_send_queue: args.max_send_queue,
        ..cport_mmo::Config::default()
    };
    let server = cport_mmo::start(cfg)?;
    let h = server.handle();
    println!(
        "listening on {} (backend: {}, threads: {}, npcs: {}, max users: {}, view range: {}, header: {})",
        h.local_addr(),
        h.backend(),
        threads,
        args.npcs,
        args.max_users,
        args.view_range,
        match args.header {
            Header::U8 => "u8",
            Header::U16 => "u16",
        }
    );
    io::stdout().flush()?;
    let _ = signals.recv();
    let stats = server.stats();
    let report = server.shutdown(Duration::from_secs(5));
    println!("{report}");
    println!(
        "game: {} logins, {} login fails, {} rejected, {} player moves, {} NPC moves",
        stats.logins, stats.login_fails, stats.rejected, stats.moves, stats.npc_moves
    );
    println!("{}", h.metrics());
    Ok(())
}
