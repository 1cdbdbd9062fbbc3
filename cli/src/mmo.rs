//! `cport mmo`: the course's game server on the server layer.

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
    /// Backend: auto, uring, epoll (Linux) or iocp (Windows) [default: $CPORT_BACKEND, else auto].
    #[arg(long)]
    pub backend: Option<Backend>,
    /// Width of the size field of every packet.
    #[arg(long, value_enum, default_value = "u8")]
    pub header: Header,
    /// VIEW_RANGE: a player sees what is within this many cells on both axes.
    #[arg(long, default_value_t = cport_mmo_proto::VIEW_RANGE)]
    pub view_range: u16,
    /// MAX_USER: player slots; logins beyond get SC_LOGIN_FAIL.
    #[arg(long, default_value_t = cport_mmo_proto::MAX_USER)]
    pub max_users: usize,
    /// NPCs (ids from max-users up), placed from --seed.
    #[arg(long, default_value_t = cport_mmo_proto::MAX_NPC)]
    pub npcs: usize,
    /// Seed of NPC placement, login positions, teleports and NPC moves.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Most bytes queued for sending per session before it is closed as a slow consumer.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_send_queue: usize,
    /// Where players are kept: sqlite:PATH (embedded), postgres://USER@HOST:PORT/DB, or none
    /// [default: $CPORT_MMO_DB, else sqlite:mmo.db].
    #[arg(long)]
    pub db: Option<String>,
    /// A changed player is written at most this long after the change (at once on logout).
    #[arg(long, default_value_t = 1000)]
    pub save_interval_ms: u64,
    /// DB threads that load players at login (one more writes the saves).
    #[arg(long, default_value_t = 2)]
    pub db_threads: usize,
    /// Board width and height (W_WIDTH; the course's is 2000).
    #[arg(long, default_value_t = cport_mmo_proto::W_WIDTH)]
    pub world_size: u16,
    /// How long a killed NPC stays dead (ms).
    #[arg(long, default_value_t = 30_000)]
    pub npc_respawn_ms: u64,
    /// How often a hurt player regains hit points (ms).
    #[arg(long, default_value_t = 5_000)]
    pub regen_ms: u64,
    /// Every second, replace this file with one line of counters (`key=value`: the server
    /// layer's sessions, bytes, queued bytes and heap as `cport echo --stats-file` has them, then
    /// players, awake NPCs, pending NPC timers, NPC and player moves, rejected sessions).
    #[arg(long)]
    pub stats_file: Option<std::path::PathBuf>,
}

/// `--db`, else `$CPORT_MMO_DB`, else `sqlite:mmo.db`.
fn db_config(arg: Option<&str>) -> io::Result<cport_mmo::DbConfig> {
    let s = match arg {
        Some(s) => s.to_string(),
        None => std::env::var("CPORT_MMO_DB").unwrap_or_else(|_| "sqlite:mmo.db".into()),
    };
    s.parse()
        .map_err(|e: String| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Open files the server keeps for itself beyond its sessions: stdio, the listener, the
/// port's own descriptors, the database's files, and the accepts in flight (each brings a
/// descriptor, also when the connection is to be refused).
const SERVER_FD_RESERVE: usize = 100;

/// Sessions beyond --max-users, so that a login on a full server gets SC_LOGIN_FAIL.
const OVERFLOW_SESSIONS: usize = 64;

pub fn run(args: Args) -> io::Result<()> {
    let fd_limit = crate::util::raise_fd_limit();
    let signals = crate::util::signals()?;
    let threads = crate::util::threads_or_cores(args.threads);
    let db = db_config(args.db.as_deref())?;
    if args.save_interval_ms == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--save-interval-ms must be at least 1",
        ));
    }
    // Each session is an open file: past the open-files limit the server cannot hold a
    // client, whatever --max-users says. Sessions are capped below it, so that a connection
    // beyond is accepted and closed at once (the client sees it) instead of waiting in the
    // backlog while accepts fail with EMFILE.
    let room = (fd_limit as usize).saturating_sub(SERVER_FD_RESERVE);
    let wanted = args.max_users + OVERFLOW_SESSIONS;
    let max_sessions = wanted.min(room).max(1);
    if wanted > room {
        eprintln!(
            "cport mmo: the open-files limit ({fd_limit}) caps this server at {max_sessions} sessions: at most {} players at once, whatever --max-users ({}) says; connections beyond are closed at once",
            max_sessions.min(args.max_users),
            args.max_users
        );
    }
    let cfg = cport_mmo::Config {
        max_sessions: Some(max_sessions),
        overflow_sessions: OVERFLOW_SESSIONS,
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
        db: db.clone(),
        db_threads: args.db_threads,
        save_interval: Duration::from_millis(args.save_interval_ms),
        world_size: args.world_size,
        npc_respawn: Duration::from_millis(args.npc_respawn_ms),
        regen_interval: Duration::from_millis(args.regen_ms.max(1)),
        ..cport_mmo::Config::default()
    };
    let server = cport_mmo::start(cfg)?;
    let h = server.handle();
    println!(
        "listening on {} (backend: {}, threads: {}, npcs: {}, max users: {}, max sessions: {max_sessions}, view range: {}, header: {}, db: {}, save interval: {} ms)",
        h.local_addr(),
        h.backend(),
        threads,
        args.npcs,
        args.max_users,
        args.view_range,
        match args.header {
            Header::U8 => "u8",
            Header::U16 => "u16",
        },
        db,
        args.save_interval_ms
    );
    io::stdout().flush()?;
    crate::util::wait_for_signal(&signals, args.stats_file.as_deref(), || {
        let g = server.stats();
        format!(
            "{}{} players={} awake_npcs={} npc_timers={} npc_moves={} moves={} logins={} login_fails={} rejected={}",
            crate::util::metrics_kv(&h.metrics()),
            crate::util::heap_kv(),
            g.players,
            g.awake_npcs,
            g.npc_timers,
            g.npc_moves,
            g.moves,
            g.logins,
            g.login_fails,
            g.rejected
        )
    });
    let stats = server.stats();
    let report = server.shutdown_with_db(Duration::from_secs(5));
    println!("{}", report.0);
    println!(
        "game: {} logins, {} login fails, {} rejected, {} player moves, {} NPC moves, {} attacks, {} NPC kills, {} level-ups",
        stats.logins,
        stats.login_fails,
        stats.rejected,
        stats.moves,
        stats.npc_moves,
        stats.attacks,
        stats.npc_kills,
        stats.level_ups
    );
    // Also on stderr: `cport stress --spawn` shows the server's stderr, not its stdout.
    println!("db ({db}): {}", report.1);
    eprintln!("mmo db ({db}): {}", report.1);
    println!("{}", h.metrics());
    Ok(())
}
