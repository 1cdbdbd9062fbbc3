//! The game's handler against a live world: a fuzzed byte stream, cut into fuzzed chunk
//! sizes, sent by one session of a running game server (players, NPCs that move, die and
//! respawn on timers, three other logged-in sessions that read everything), both header
//! widths, both backends. Never a panic; the session ends with a reason the server layer
//! counts (and one that fits what was sent); every byte the server sent it is a well-formed
//! server packet; the other sessions stay open and each one's picture, built only from the
//! ADD/MOVE/REMOVE packets it received, equals its view set; and the world's invariants
//! hold (`MmoServer::check_world`: sectors, view sets exactly the objects in range,
//! counters).
//!
//! One game server per (header, backend), started lazily, lives for the whole process; each
//! input is one real loopback connection (the handler is reached through the server layer's
//! receive loop and framing, as a client reaches it).
//!
//! Input: byte 0 = flags (bit 0: `u16` header; bit 1: epoll, else io_uring; bit 2: the rest
//! is a script of packets, else raw bytes; bit 3, raw only: a valid `CS_LOGIN` first);
//! byte 1 = how many chunk-size bytes follow (1..=256 bytes each, cycled); then the body.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cport_mmo::{Config, MmoServer};
use cport_mmo_client::View;
use cport_mmo_proto::{frame_len, name, ClientPacket, Direction, ServerPacket, SizeField};
use cport_server::cport::Backend;
use cport_server::{Codec, LengthPrefixed};
use libfuzzer_sys::fuzz_target;

const BACKGROUND: usize = 3;
/// How long the server may take to close the session after our FIN, and the world to
/// settle: far beyond what it needs, so only a real stall or inconsistency fails.
const PATIENCE: Duration = Duration::from_secs(5);
/// Close reasons (indexes into `cport_server::REASONS`).
const PEER_CLOSED: usize = 0;
const PROTOCOL: usize = 3;

/// What a background client was told: its id and position, and the objects in its view
/// (the load client's `View`), and the first packet that contradicted it.
#[derive(Default)]
struct Picture {
    view: View,
    /// A packet that contradicts the picture, a bad packet or a closed connection.
    error: Option<String>,
}

struct Env {
    srv: MmoServer,
    addr: SocketAddr,
    bg: Vec<Arc<Mutex<Picture>>>,
    /// The writing halves of the background connections (kept open).
    _bg_streams: Vec<TcpStream>,
}

fn env(h: SizeField, backend: Backend) -> &'static Env {
    static ENVS: [OnceLock<Env>; 4] = [const { OnceLock::new() }; 4];
    let i = usize::from(h == SizeField::U16) * 2 + usize::from(backend == Backend::Epoll);
    ENVS[i].get_or_init(|| Env::start(h, backend))
}

impl Env {
    fn start(h: SizeField, backend: Backend) -> Env {
        let srv = cport_mmo::start(Config {
            backend: Some(backend),
            threads: 2,
            header: h,
            world_size: 16,
            view_range: 3,
            max_users: 8,
            overflow_sessions: 2,
            npcs: 24,
            seed: 7,
            // Timers run while inputs are handled: NPC moves, deaths and respawns,
            // regeneration, all against the fuzzed session's player.
            npc_interval: Duration::from_millis(50),
            npc_respawn: Duration::from_millis(50),
            regen_interval: Duration::from_millis(50),
            max_send_queue: 256 * 1024,
            ..Config::default()
        })
        .unwrap_or_else(|e| panic!("start the game ({backend}, {h:?}): {e}"));
        let addr = srv.local_addr();
        let mut bg = Vec::new();
        let mut streams = Vec::new();
        for i in 0..BACKGROUND {
            let mut s = TcpStream::connect(addr).expect("connect a background client");
            s.set_nodelay(true).unwrap();
            s.write_all(
                &ClientPacket::Login {
                    name: name(&format!("bg{i}")),
                }
                .encode(h),
            )
            .unwrap();
            let pic = Arc::new(Mutex::new(Picture::default()));
            let (r, p) = (s.try_clone().unwrap(), pic.clone());
            std::thread::spawn(move || read_background(r, h, p));
            let until = Instant::now() + PATIENCE;
            while !pic.lock().unwrap().view.logged_in() && pic.lock().unwrap().error.is_none() {
                assert!(
                    Instant::now() < until,
                    "background client {i}: no SC_LOGIN_INFO"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            if let Some(e) = &pic.lock().unwrap().error {
                panic!("background client {i}: {e}");
            }
            bg.push(pic);
            streams.push(s);
        }
        Env {
            srv,
            addr,
            bg,
            _bg_streams: streams,
        }
    }
}

/// A background client's reader: applies every packet to its picture for the process's life.
fn read_background(mut s: TcpStream, h: SizeField, pic: Arc<Mutex<Picture>>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) => {
                pic.lock().unwrap().error = Some("the server closed the connection".into());
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                pic.lock().unwrap().error = Some(format!("read: {e}"));
                return;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut p = pic.lock().unwrap();
        while let Some(len) = frame_len(&buf, h) {
            let packet = ServerPacket::decode(&buf[..len], h);
            buf.drain(..len);
            let err = match packet {
                Ok(packet) => apply(&mut p, packet),
                Err(e) => Some(format!("bad packet from the server: {e}")),
            };
            if err.is_some() && p.error.is_none() {
                p.error = err;
            }
        }
    }
}

fn apply(p: &mut Picture, packet: ServerPacket) -> Option<String> {
    // A background client logs in once, before any of this runs: a login answer now is wrong.
    if matches!(packet, ServerPacket::LoginOk | ServerPacket::LoginFail) {
        return Some(format!("login packet after login: {packet:?}"));
    }
    p.view.apply(&packet).err().map(|m| m.to_string())
}

/// The script mode: packets built from the body (well-formed ones mostly, so the handler's
/// game logic is reached, with raw bytes mixed in).
fn script(h: SizeField, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut it = body.iter().copied();
    let mut next = move || it.next();
    while let Some(op) = next() {
        let p = match op % 8 {
            0 => {
                let len = usize::from(next().unwrap_or(0)) % 21;
                let mut n = [0u8; 20];
                for b in n.iter_mut().take(len) {
                    *b = next().unwrap_or(b'x');
                }
                ClientPacket::Login { name: n }
            }
            1 => ClientPacket::Move {
                direction: Direction::ALL[usize::from(next().unwrap_or(0)) % 4],
                move_time: u32::from(next().unwrap_or(0)),
            },
            2 => {
                let len = usize::from(next().unwrap_or(0)) % 101;
                ClientPacket::Chat {
                    mess: (0..len).map(|_| next().unwrap_or(b'.')).collect(),
                }
            }
            3 => ClientPacket::Attack,
            4 => ClientPacket::Teleport,
            5 => ClientPacket::Logout,
            6 => {
                let len = usize::from(next().unwrap_or(0)) % 16;
                out.extend((0..len).map(|_| next().unwrap_or(0)));
                continue;
            }
            _ => {
                let d = Direction::ALL[usize::from(next().unwrap_or(0)) % 4];
                for t in 0..u32::from(next().unwrap_or(0)) % 16 {
                    ClientPacket::Move {
                        direction: d,
                        move_time: t,
                    }
                    .encode_into(h, &mut out);
                }
                continue;
            }
        };
        p.encode_into(h, &mut out);
    }
    out
}

/// What the stream says, read as the server's codec and decoder read it: whether it holds a
/// framing error, and whether a `CS_LOGIN` or `CS_LOGOUT` comes before it (after which the
/// server may stop reading and close for that instead).
fn scan(h: SizeField, stream: &[u8]) -> (bool, bool) {
    let codec = LengthPrefixed::new(h)
        .max_packet(cport_mmo_proto::header_len(h) + cport_mmo_proto::CHAT_SIZE);
    let mut at = 0;
    let mut login_or_logout = false;
    loop {
        match codec.frame(&stream[at..]) {
            Ok(Some(n)) => {
                if let Ok(ClientPacket::Login { .. } | ClientPacket::Logout) =
                    ClientPacket::decode(&stream[at..at + n], h)
                {
                    login_or_logout = true;
                }
                at += n;
            }
            Ok(None) => return (false, login_or_logout),
            Err(_) => return (true, login_or_logout),
        }
    }
}

fn settle(what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let until = Instant::now() + PATIENCE;
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() >= until => panic!("{what} within {PATIENCE:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, n_chunks, rest @ ..] = data else {
        return;
    };
    let h = if flags & 1 != 0 {
        SizeField::U16
    } else {
        SizeField::U8
    };
    let backend = if flags & 2 != 0 {
        Backend::Epoll
    } else {
        Backend::Uring
    };
    let n_chunks = usize::from(*n_chunks).min(rest.len());
    let (chunk_sizes, body) = rest.split_at(n_chunks);
    let stream = if flags & 4 != 0 {
        script(h, body)
    } else if flags & 8 != 0 {
        let mut s = ClientPacket::Login { name: name("fuzz") }.encode(h);
        s.extend_from_slice(body);
        s
    } else {
        body.to_vec()
    };
    let env = env(h, backend);
    let before = env.srv.handle().metrics();

    // The session: the stream in its chunks, then our FIN; read everything until the server
    // closes.
    let mut s = TcpStream::connect(env.addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    let mut at = 0;
    let mut i = 0;
    while at < stream.len() {
        let step = chunk_sizes
            .get(i % chunk_sizes.len().max(1))
            .map_or(stream.len(), |&c| usize::from(c) + 1);
        i += 1;
        let end = (at + step).min(stream.len());
        match s.write_all(&stream[at..end]) {
            Ok(()) => at = end,
            // The server closed the session (what it sent says why, below).
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                break
            }
            Err(e) => panic!("write to the server: {e}"),
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let started = Instant::now();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "the server neither served nor closed the session after our FIN ({:?}): {e}",
                started.elapsed()
            ),
        }
    }
    drop(s);

    // What the server sent this session: well-formed server packets, a login answer first.
    let mut packets = Vec::new();
    let mut off = 0;
    while let Some(len) = frame_len(&got[off..], h) {
        let p = ServerPacket::decode(&got[off..off + len], h)
            .unwrap_or_else(|e| panic!("bad packet from the server at byte {off}: {e}"));
        packets.push(p);
        off += len;
    }
    match packets.first() {
        None | Some(ServerPacket::LoginInfo { .. }) => {}
        Some(ServerPacket::LoginFail) => assert_eq!(packets.len(), 1, "{packets:?}"),
        Some(p) => panic!("first packet to a session is not a login answer: {p:?}"),
    }

    // Closed, once, with a reason that fits the stream; nobody else closed.
    let mut after = env.srv.handle().metrics();
    settle("the session is closed and counted", || {
        after = env.srv.handle().metrics();
        if after.closed_total() == before.closed_total() + 1 && after.open == BACKGROUND as u64 {
            Ok(())
        } else {
            Err(format!(
                "closed {} → {}, open {}",
                before.closed_total(),
                after.closed_total(),
                after.open
            ))
        }
    });
    let reason = (0..before.closed.len())
        .find(|&r| after.closed[r] > before.closed[r])
        .expect("one reason counted");
    let name = cport_server::REASONS[reason];
    assert!(
        matches!(
            name,
            "peer_closed" | "reset" | "protocol" | "rejected" | "slow_consumer" | "local"
        ),
        "closed for {name}"
    );
    if std::env::var_os("MMO_SESSION_STATS").is_some() {
        let first = packets.first().map(|p| format!("{p:?}"));
        let first = first
            .as_deref()
            .unwrap_or("-")
            .split([' ', '{'])
            .next()
            .unwrap_or("-");
        eprintln!(
            "mmo_session: closed {name}, {} packets back, first {first}",
            packets.len()
        );
    }
    let (frame_error, login_or_logout) = scan(h, &stream);
    if !frame_error {
        assert_ne!(
            reason, PROTOCOL,
            "closed for a framing error the stream does not have"
        );
    } else if !login_or_logout && at == stream.len() {
        assert_ne!(
            reason, PEER_CLOSED,
            "a stream with a framing error ended as a clean close"
        );
    }

    // The world at rest: invariants, and every background client's picture is its view set.
    settle("the world is consistent", || {
        env.srv.check_world()?;
        let players = env.srv.stats().players;
        if players != BACKGROUND {
            return Err(format!(
                "{players} players on the board, {BACKGROUND} expected"
            ));
        }
        for pic in &env.bg {
            let p = pic.lock().unwrap();
            if let Some(e) = &p.error {
                panic!(
                    "background client {:?}: {e}",
                    p.view.logged_in().then_some(p.view.id)
                );
            }
            assert!(p.view.logged_in(), "logged in");
            let id = p.view.id;
            if env.srv.position(id) != Some(p.view.pos) {
                return Err(format!("client {id} thinks it is at {:?}", p.view.pos));
            }
            let view = env.srv.view_set(id).unwrap_or_default();
            let seen: Vec<u32> = p.view.picture.keys().copied().collect();
            if view != seen {
                return Err(format!("client {id} sees {seen:?}, view set {view:?}"));
            }
            for (&o, &at) in &p.view.picture {
                if env.srv.position(o) != Some(at) {
                    return Err(format!("client {id} sees {o} at {at:?}"));
                }
            }
        }
        Ok(())
    });
});
