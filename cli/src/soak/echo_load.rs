//! The load on `cport echo`: verified echo connections (every byte checked against a
//! pattern regenerated from a seed), short churning connections, and clients that never read.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use cport_mmo_proto::splitmix64;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::{sleep, sleep_until, timeout};

use super::counts::{add, connect, connect_small_recv_buffer, reset, ClientCounts, Rand};
use super::options::{SLOW_CLOSE, STALL, WINDOW};
/// The byte stream a verified echo connection sends: any chunking of it gives the same bytes,
/// so the reader regenerates what the writer sent from the seed alone.
pub(crate) struct Pattern {
    pub(crate) state: u64,
    pub(crate) word: [u8; 8],
    pub(crate) used: usize,
}

impl Pattern {
    pub(crate) fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed,
            word: [0; 8],
            used: 8,
        }
    }
    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == 8 {
                self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                self.word = splitmix64(self.state).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// Write sizes: single bytes, odd sizes, around a segment, pages, up to 256 KiB.
pub(crate) fn chunk_size(r: &mut Rand) -> u64 {
    const SIZES: [u64; 12] = [
        1, 2, 3, 17, 100, 1399, 1460, 4096, 8191, 16384, 65536, 262_144,
    ];
    if r.below(3) == 0 {
        r.range(1, 65536)
    } else {
        SIZES[r.below(SIZES.len() as u64) as usize]
    }
}

/// One verified echo connection: `total` bytes of the pattern in chunks of varied sizes at
/// `rate` bytes/s, at most `WINDOW` ahead of what came back; every byte read is compared.
pub(crate) async fn echo_verified(
    addr: SocketAddr,
    seed: u64,
    total: u64,
    rate: f64,
    t: &ClientCounts,
    live: &impl Fn() -> bool,
) {
    let Some(s) = connect(addr, t).await else {
        sleep(Duration::from_millis(100)).await;
        return;
    };
    add(&t.echo_conns, 1);
    let (mut rd, mut wr) = s.into_split();
    let sent = Cell::new(0u64);
    let got = Cell::new(0u64);
    let bad = Cell::new(0u64);
    let dead = Cell::new(false);
    let done = Cell::new(false);
    let room = Notify::new();
    let finished = Notify::new();
    let writer = async {
        let mut pat = Pattern::new(seed);
        let mut r = Rand(seed ^ 0x5EED);
        let mut buf = Vec::new();
        let began = tokio::time::Instant::now();
        while sent.get() < total && !dead.get() && live() {
            let n = chunk_size(&mut r).min(total - sent.get());
            while sent.get() - got.get() + n > WINDOW && !dead.get() {
                room.notified().await;
            }
            if dead.get() {
                break;
            }
            if rate > 0.0 {
                let due = began + Duration::from_secs_f64((sent.get() + n) as f64 / rate);
                sleep_until(due).await;
            }
            buf.resize(n as usize, 0);
            pat.fill(&mut buf);
            if wr.write_all(&buf).await.is_err() {
                break;
            }
            sent.set(sent.get() + n);
            add(&t.echo_sent, n);
        }
        done.set(true);
        finished.notify_one();
    };
    let reader = async {
        let mut pat = Pattern::new(seed);
        let mut buf = vec![0u8; 64 << 10];
        let mut want = vec![0u8; 64 << 10];
        loop {
            if done.get() && got.get() + bad.get() >= sent.get() {
                break;
            }
            let r = tokio::select! {
                r = timeout(STALL, rd.read(&mut buf)) => r,
                () = finished.notified() => continue,
            };
            let n = match r {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    add(&t.echo_dropped, 1);
                    break;
                }
                Err(_) => {
                    add(&t.echo_stalls, 1);
                    break;
                }
                Ok(Ok(n)) => n,
            };
            pat.fill(&mut want[..n]);
            let diff = buf[..n]
                .iter()
                .zip(&want[..n])
                .filter(|(a, b)| a != b)
                .count() as u64;
            got.set(got.get() + n as u64 - diff);
            add(&t.echo_verified, n as u64 - diff);
            if diff > 0 {
                bad.set(bad.get() + diff);
                add(&t.echo_corrupt, diff);
                break;
            }
            room.notify_one();
        }
        dead.set(true);
        room.notify_one();
    };
    tokio::join!(writer, reader);
    add(&t.echo_lost, sent.get() - got.get() - bad.get());
}

/// A short echo connection: closed at once, or a few bytes echoed and checked then closed, or a
/// chunk written then reset without reading.
pub(crate) async fn churn_echo(addr: SocketAddr, r: &mut Rand, t: &ClientCounts) {
    let Some(mut s) = connect(addr, t).await else {
        return;
    };
    add(&t.churn_echo, 1);
    match r.below(3) {
        0 => {}
        1 => {
            let mut data = vec![0u8; r.range(1, 2000) as usize];
            Pattern::new(r.next()).fill(&mut data);
            add(&t.echo_sent, data.len() as u64);
            let mut back = vec![0u8; data.len()];
            let ok = s.write_all(&data).await.is_ok();
            match timeout(STALL, s.read_exact(&mut back)).await {
                Ok(Ok(_)) if ok => {
                    let diff = data.iter().zip(&back).filter(|(a, b)| a != b).count() as u64;
                    add(&t.echo_verified, data.len() as u64 - diff);
                    add(&t.echo_corrupt, diff);
                }
                Err(_) => {
                    add(&t.echo_stalls, 1);
                    add(&t.echo_lost, data.len() as u64);
                }
                _ => {
                    add(&t.echo_dropped, 1);
                    add(&t.echo_lost, data.len() as u64);
                }
            }
        }
        _ => {
            let data = vec![0x5A; r.range(1, 100_000) as usize];
            let _ = s.write_all(&data).await;
            add(&t.resets_echo, 1);
            reset(s);
        }
    }
}

/// Writes to the echo server without ever reading, with a small receive buffer: the server
/// must close it as a slow consumer.
pub(crate) async fn never_reader(addr: SocketAddr, t: &ClientCounts) {
    let Some(mut s) = connect_small_recv_buffer(addr, t).await else {
        return;
    };
    add(&t.never_readers, 1);
    let data = vec![0xA5u8; 64 << 10];
    let until = tokio::time::Instant::now() + SLOW_CLOSE;
    let closed = loop {
        match tokio::time::timeout_at(until, s.write_all(&data)).await {
            Ok(Ok(())) => add(&t.never_reader_bytes, data.len() as u64),
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    if closed {
        add(&t.never_readers_closed, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_does_not_depend_on_chunking() {
        let mut whole = vec![0u8; 10_000];
        Pattern::new(42).fill(&mut whole);
        let mut p = Pattern::new(42);
        let mut r = Rand(1);
        let mut parts = Vec::new();
        while parts.len() < whole.len() {
            let n = (r.range(1, 300) as usize).min(whole.len() - parts.len());
            let mut c = vec![0u8; n];
            p.fill(&mut c);
            parts.extend_from_slice(&c);
        }
        assert_eq!(parts, whole);
        let mut other = vec![0u8; 10_000];
        Pattern::new(43).fill(&mut other);
        assert_ne!(other, whole);
    }
}
