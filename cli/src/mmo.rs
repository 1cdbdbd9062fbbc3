//! `cport mmo`: the course's game server on the server layer.

use std::io::{self, Write};
use std::time::Duration;

use cport::Backend;

use cport_mmo::args::GameArgs;
pub use cport_mmo::args::Header;

/// Options of `cport mmo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The game's own flags (declared once, shared with `mmo-tokio`).
    #[command(flatten)]
    pub game: GameArgs,
    /// Backend: auto, uring, epoll (Linux) or iocp (Windows) [default: $CPORT_BACKEND, else auto].
    #[arg(long)]
    pub backend: Option<Backend>,
    /// Every second, replace this file with one line of counters (`key=value`: the server
    /// layer's sessions, bytes, queued bytes and heap as `cport echo --stats-file` has them, then
    /// players, awake NPCs, pending NPC timers, NPC and player moves, rejected sessions).
    #[arg(long)]
    pub stats_file: Option<std::path::PathBuf>,
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
    let game = &args.game;
    let threads = crate::util::threads_or_cores(game.threads);
    let cfg = game.config()?;
    let db = cfg.db.clone();
    // Each session is an open file: past the open-files limit the server cannot hold a
    // client, whatever --max-users says. Sessions are capped below it, so that a connection
    // beyond is accepted and closed at once (the client sees it) instead of waiting in the
    // backlog while accepts fail with EMFILE.
    let room = (fd_limit as usize).saturating_sub(SERVER_FD_RESERVE);
    let wanted = game.max_users + OVERFLOW_SESSIONS;
    let max_sessions = wanted.min(room).max(1);
    if wanted > room {
        eprintln!(
            "cport mmo: the open-files limit ({fd_limit}) caps this server at {max_sessions} sessions: at most {} players at once, whatever --max-users ({}) says; connections beyond are closed at once",
            max_sessions.min(game.max_users),
            game.max_users
        );
    }
    let cfg = cport_mmo::Config {
        max_sessions: Some(max_sessions),
        overflow_sessions: OVERFLOW_SESSIONS,
        threads,
        backend: args.backend,
        ..cfg
    };
    let server = cport_mmo::start(cfg)?;
    let h = server.handle();
    println!(
        "listening on {} (backend: {}, threads: {}, npcs: {}, max users: {}, max sessions: {max_sessions}, view range: {}, header: {}, db: {}, save interval: {} ms, map: {}, npc script: {})",
        h.local_addr(),
        h.backend(),
        threads,
        game.npcs,
        game.max_users,
        game.view_range,
        game.header.name(),
        db,
        game.save_interval_ms,
        game.map.as_ref().map_or("none".into(), |m| m.display().to_string()),
        game.npc_script.as_deref().unwrap_or("none"),
    );
    io::stdout().flush()?;
    // SIGHUP reloads the NPC script (when there is one): a script that does not compile
    // leaves the running one in place, and says why.
    #[cfg(unix)]
    let reload = match game.npc_script {
        Some(_) => Some(signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGHUP,
        ])?),
        None => None,
    };
    #[cfg(unix)]
    let reload_handle = reload.as_ref().map(|s| s.handle());
    #[cfg_attr(not(unix), allow(unused_variables))]
    std::thread::scope(|scope| {
        #[cfg(unix)]
        if let Some(mut hup) = reload {
            let server = &server;
            scope.spawn(move || {
                for _ in hup.forever() {
                    match server.reload_scripts() {
                        Ok(()) => tracing::info!("SIGHUP: npc script reloaded"),
                        Err(e) => tracing::warn!("SIGHUP: npc script kept, the new one fails: {e}"),
                    }
                }
            });
        }
        wait(&server, &h, &signals, args.stats_file.as_deref());
        #[cfg(unix)]
        if let Some(h) = &reload_handle {
            h.close();
        }
    });
    let stats = server.stats();
    let report = server.shutdown_with_db(Duration::from_secs(5));
    println!("{}", report.0);
    println!("game: {stats}");
    // Also on stderr: `cport stress --spawn` shows the server's stderr, not its stdout.
    println!("db ({db}): {}", report.1);
    eprintln!("mmo db ({db}): {}", report.1);
    println!("{}", h.metrics());
    Ok(())
}

/// Waits for SIGINT/SIGTERM, writing the stats file meanwhile if asked.
fn wait(
    server: &cport_mmo::MmoServer,
    h: &cport_server::ServerHandle,
    signals: &std::sync::mpsc::Receiver<i32>,
    stats_file: Option<&std::path::Path>,
) {
    crate::util::wait_for_signal(signals, stats_file, || {
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
}
