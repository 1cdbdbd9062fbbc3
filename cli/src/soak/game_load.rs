//! The load on `cport mmo`: players walking among sleeping NPCs, short logins that churn,
//! hostile senders and flooders. The players keep their own protocol code here.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use cport_mmo_proto::splitmix64;
use cport_mmo_proto::{self as protocol, ClientPacket, Direction, ServerPacket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::counts::{add, connect, connect_small_recv_buffer, reset, ClientCounts, Rand};
use super::echo_load::Pattern;
use super::options::{H, HOSTILE_CLOSE, MAX_USERS, SLOW_CLOSE, STALL};
/// Reads whole server packets; `None` on a packet that does not decode.
pub(crate) struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    fn new() -> Frames {
        Frames { buf: Vec::new() }
    }
    /// Reads once (up to `limit`); `Ok(false)` on timeout, `Err` on end of stream or error.
    async fn read(
        &mut self,
        s: &mut TcpStream,
        until: tokio::time::Instant,
    ) -> Result<bool, &'static str> {
        let mut chunk = [0u8; 16 << 10];
        match tokio::time::timeout_at(until, s.read(&mut chunk)).await {
            Err(_) => Ok(false),
            Ok(Ok(0)) => Err("end of stream"),
            Ok(Err(_)) => Err("error"),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
        }
    }
    fn next(&mut self) -> Option<Result<ServerPacket, ()>> {
        let n = protocol::frame_len(&self.buf, H)?;
        let p = ServerPacket::decode(&self.buf[..n], H).map_err(|_| ());
        self.buf.drain(..n);
        Some(p)
    }
}

/// Logs in; returns the player's id and cell, or `None` (counted) when the server refused or
/// stalled.
pub(crate) async fn login(
    s: &mut TcpStream,
    name: &str,
    f: &mut Frames,
    t: &ClientCounts,
) -> Option<(i32, i16, i16)> {
    let p = ClientPacket::Login {
        name: protocol::name(name),
    };
    if s.write_all(&p.encode(H)).await.is_err() {
        add(&t.login_fails, 1);
        return None;
    }
    let until = tokio::time::Instant::now() + STALL;
    loop {
        while let Some(p) = f.next() {
            match p {
                Ok(ServerPacket::LoginInfo { id, x, y, .. }) => {
                    add(&t.logins, 1);
                    return Some((id, x, y));
                }
                Ok(ServerPacket::LoginFail) => {
                    add(&t.login_fails, 1);
                    return None;
                }
                Ok(_) => {}
                Err(()) => {
                    add(&t.bad_server_packets, 1);
                    return None;
                }
            }
        }
        if f.read(s, until).await != Ok(true) {
            add(&t.login_fails, 1);
            return None;
        }
    }
}

/// A short game session: connect and close, or log in then log out, close or reset
/// halfway through a packet.
pub(crate) async fn churn_mmo(addr: SocketAddr, name: &str, r: &mut Rand, t: &ClientCounts) {
    let Some(mut s) = connect(addr, t).await else {
        return;
    };
    add(&t.churn_mmo, 1);
    if r.below(4) == 0 {
        return;
    }
    let mut f = Frames::new();
    if login(&mut s, name, &mut f, t).await.is_none() {
        return;
    }
    match r.below(3) {
        0 => {
            let _ = s.write_all(&ClientPacket::Logout.encode(H)).await;
            // The server closes after flushing; read to the end (bounded).
            let until = tokio::time::Instant::now() + STALL;
            while let Ok(true) = f.read(&mut s, until).await {
                f.buf.clear();
            }
        }
        1 => {}
        _ => {
            let mv = ClientPacket::Move {
                direction: Direction::Up,
                move_time: 1,
            }
            .encode(H);
            let cut = r.range(1, mv.len() as u64 - 1) as usize;
            let _ = s.write_all(&mv[..cut]).await;
            add(&t.resets_mmo, 1);
            reset(s);
        }
    }
}

/// Logs in and sends moves as fast as it can without reading: the server must close it
/// (its send queue passes the cap).
pub(crate) async fn flooder(addr: SocketAddr, t: &ClientCounts) {
    let kind = 7;
    let Some(mut s) = connect_small_recv_buffer(addr, t).await else {
        return;
    };
    add(&t.hostile[kind], 1);
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!("flood{}", N.fetch_add(1, Relaxed));
    let mut f = Frames::new();
    if login(&mut s, &name, &mut f, t).await.is_none() {
        return;
    }
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        ClientPacket::Move {
            direction: Direction::ALL[(i % 4) as usize],
            move_time: i + 1,
        }
        .encode_into(H, &mut burst);
    }
    let until = tokio::time::Instant::now() + SLOW_CLOSE;
    let closed = loop {
        match tokio::time::timeout_at(until, s.write_all(&burst)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    if closed {
        add(&t.hostile_closed[kind], 1);
    }
}

/// The bytes of a hostile connection of `kind` (not the flood): each is refused by the
/// protocol's own decoder, so the server must close the connection.
pub(crate) fn hostile_bytes(kind: usize, r: &mut Rand) -> Vec<u8> {
    let mv = ClientPacket::Move {
        direction: Direction::Left,
        move_time: 7,
    }
    .encode(H);
    match kind {
        0 => vec![0],
        1 => vec![1, 0, 0, 0],
        2 => {
            let mut v = vec![r.range(103, 255) as u8, protocol::cs::CHAT];
            v.resize(255, b'x');
            v
        }
        3 => vec![3, r.range(6, 255) as u8, 0],
        4 => {
            let mut v = mv.clone();
            v.push(0);
            v[0] += 1;
            v
        }
        5 => mv,
        _ => loop {
            // Garbage whose first packet is whole and does not decode, or is not a login.
            let mut v = vec![0u8; 300];
            Pattern::new(r.next()).fill(&mut v);
            let Some(n) = protocol::frame_len(&v, H) else {
                continue;
            };
            if !matches!(
                ClientPacket::decode(&v[..n], H),
                Ok(ClientPacket::Login { .. })
            ) {
                break v;
            }
        },
    }
}

/// A hostile connection: sends bytes the game refuses, then must see the server close it.
pub(crate) async fn hostile(addr: SocketAddr, kind: usize, seed: u64, t: &ClientCounts) {
    let Some(mut s) = connect(addr, t).await else {
        return;
    };
    add(&t.hostile[kind], 1);
    let bytes = hostile_bytes(kind, &mut Rand(seed));
    let _ = s.write_all(&bytes).await;
    let until = tokio::time::Instant::now() + HOSTILE_CLOSE;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                add(&t.hostile_closed[kind], 1);
                return;
            }
            Ok(Ok(_)) => {}
            Err(_) => return,
        }
    }
}

/// A player walking the board: a move at a time, each waited for (its own `SC_MOVE_OBJECT`
/// with its `move_time`), 100..300 ms apart, in straight runs so that it keeps meeting NPCs
/// that were asleep.
pub(crate) async fn player(
    addr: SocketAddr,
    i: usize,
    walk_range: u16,
    t: &ClientCounts,
    live: &impl Fn() -> bool,
) {
    let Some(mut s) = connect(addr, t).await else {
        return;
    };
    let mut f = Frames::new();
    let Some((me, x0, y0)) = login(&mut s, &format!("soak{i}"), &mut f, t).await else {
        return;
    };
    let (mut x, mut y) = (i32::from(x0), i32::from(y0));
    let (x0, y0, range) = (x, y, i32::from(walk_range));
    let mut r = Rand(splitmix64(0x9A7 + i as u64));
    let mut dir = Direction::ALL[r.below(4) as usize];
    let mut run = 0;
    let mut move_time = 0u32;
    let mut pending: Option<(u32, Instant)> = None;
    let mut next = tokio::time::Instant::now();
    while live() {
        if pending.is_none() && tokio::time::Instant::now() >= next {
            let (dx, dy) = dir.delta();
            let outside = range > 0 && ((x + dx - x0).abs() > range || (y + dy - y0).abs() > range);
            if run == 0 || outside {
                dir = Direction::ALL[r.below(4) as usize];
                run = r.range(5, 60);
                // Back towards the box when the step would leave it.
                let (dx, dy) = dir.delta();
                if range > 0 && ((x + dx - x0).abs() > range || (y + dy - y0).abs() > range) {
                    dir = match dir {
                        Direction::Up => Direction::Down,
                        Direction::Down => Direction::Up,
                        Direction::Left => Direction::Right,
                        Direction::Right => Direction::Left,
                    };
                }
            }
            run -= 1;
            move_time += 1;
            let p = ClientPacket::Move {
                direction: dir,
                move_time,
            };
            if s.write_all(&p.encode(H)).await.is_err() {
                add(&t.players_dropped, 1);
                return;
            }
            add(&t.moves_sent, 1);
            pending = Some((move_time, Instant::now()));
        }
        let until = match pending {
            Some((_, at)) => tokio::time::Instant::from_std(at + STALL),
            None => next,
        }
        .min(tokio::time::Instant::now() + Duration::from_millis(250));
        match f.read(&mut s, until).await {
            Err(_) => {
                add(&t.players_dropped, 1);
                return;
            }
            Ok(false) => {
                if let Some((_, at)) = pending {
                    if at.elapsed() >= STALL {
                        add(&t.moves_unanswered, 1);
                        pending = None;
                    }
                }
            }
            Ok(true) => {}
        }
        while let Some(p) = f.next() {
            match p {
                Ok(ServerPacket::MoveObject {
                    id,
                    move_time,
                    x: nx,
                    y: ny,
                }) => {
                    if id == me {
                        (x, y) = (i32::from(nx), i32::from(ny));
                    }
                    if id >= MAX_USERS {
                        add(&t.npc_moves_seen, 1);
                    } else if id == me {
                        if let Some((mt, at)) = pending {
                            if mt == move_time {
                                add(&t.moves_answered, 1);
                                let us = at.elapsed().as_micros() as u64;
                                if let Some(h) = t.answer_us.borrow_mut().as_mut() {
                                    let _ = h.record(us.max(1));
                                }
                                pending = None;
                                next = tokio::time::Instant::now()
                                    + Duration::from_millis(r.range(100, 300));
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(()) => {
                    add(&t.bad_server_packets, 1);
                    return;
                }
            }
        }
    }
    if let Some((_, at)) = pending {
        // The run ended with a move in flight: give it the same time as any other.
        let until = tokio::time::Instant::from_std(at + STALL);
        loop {
            match f.read(&mut s, until).await {
                Ok(true) => {
                    let mut answered = false;
                    while let Some(p) = f.next() {
                        if let Ok(ServerPacket::MoveObject { id, move_time, .. }) = p {
                            answered |= id == me && move_time == pending.map_or(0, |p| p.0);
                        }
                    }
                    if answered {
                        add(&t.moves_answered, 1);
                        break;
                    }
                }
                _ => {
                    add(&t.moves_unanswered, 1);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::counts::HOSTILE;

    #[test]
    fn every_hostile_packet_is_refused_by_the_decoder() {
        let mut r = Rand(7);
        for kind in 0..HOSTILE.len() - 1 {
            for _ in 0..50 {
                let b = hostile_bytes(kind, &mut r);
                // The size field alone is out of range (the codec refuses it at once), or
                // the packet is whole and is not a login (refused before login).
                let size = b[0] as usize;
                let out_of_range = size < protocol::header_len(H)
                    || size > protocol::header_len(H) + protocol::CHAT_SIZE;
                let refused = protocol::frame_len(&b, H).is_some_and(|n| {
                    !matches!(
                        ClientPacket::decode(&b[..n], H),
                        Ok(ClientPacket::Login { .. })
                    )
                });
                assert!(out_of_range || refused, "kind {kind}: {b:?}");
            }
        }
    }
}
