//! The port against a reference model: a fuzzed sequence of operations through the public
//! `cport` API — `post`, `post_after` (0–3 ms) and `cancel_timer`, `post_message`, `recv` and
//! `send` (vector and shared buffers) on a Unix socketpair and a loopback TCP pair (every
//! side associated), `cancel`, close of a socket with operations in flight, `get` and
//! `get_many` with short timeouts — on either backend, with or without deferred
//! submissions, ended (after a few more `get`s, or at once) by closing every socket and
//! draining, or by shutting the port down with operations in flight. Checked on every completion and at the end:
//!
//! * every started operation completes exactly once, with its key and user value, and
//!   hands back its own buffer (same allocation; a receive's old bytes kept, the new ones
//!   appended; a send's buffer whole);
//! * posts and messages arrive exactly once with their key, byte count and value; a timer
//!   arrives exactly once unless `cancel_timer` said it stopped it, and then never;
//! * receives and sends that succeed complete in start order, per socket; a send completes
//!   with its whole length;
//! * an operation fails as aborted only if its socket was cancelled or closed after it
//!   started, and an aborted receive received nothing; end of stream or a reset only once
//!   the peer closed; a receive with no spare capacity fails at once;
//! * the bytes each side received are, in order, the bytes the other side's sends carried:
//!   every send that completed whole, in start order (an aborted one: a prefix, or none);
//! * at the end nothing is in flight, ready, timed or open (`stats()`), before and after
//!   `shutdown`, and the port answers `Closed`.
#![no_main]

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use cport::{Aborted, Backend, Bytes, Completion, Op, Port, SendBuf, Socket, TimerId};
use libfuzzer_sys::fuzz_target;

const SOCKETS: usize = 4;
/// Operations per input.
const MAX_OPS: usize = 96;
/// How long the final drain may wait for every completion: far more than the 3 ms timers
/// and the aborts need.
const DRAIN: Duration = Duration::from_secs(5);

fn key_of(s: usize) -> u64 {
    1000 + s as u64
}

#[derive(Debug)]
enum Expect {
    Post {
        key: u64,
        bytes: usize,
    },
    Timer {
        key: u64,
        id: TimerId,
    },
    Message {
        key: u64,
        value: u64,
    },
    Recv {
        sock: usize,
        seq: u64,
        ptr: usize,
        cap: usize,
        old: usize,
        epoch: u64,
    },
    Send {
        sock: usize,
        seq: u64,
        index: usize,
        ptr: usize,
        len: usize,
        epoch: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sent {
    Pending,
    Whole,
    /// Aborted or failed: any prefix of it may have gone out.
    Cut,
}

#[derive(Default)]
struct Side {
    /// Bumped by `cancel` and close: an operation started before may be aborted.
    epoch: u64,
    closed: bool,
    /// Start order of this side's operations.
    next_seq: u64,
    last_recv: u64,
    last_send: u64,
    /// Each send's length and fate, in start order; send `i` carries bytes all equal to `i + 1`.
    sends: Vec<(usize, Sent)>,
    /// What successful receives brought, in completion order.
    received: Vec<u8>,
}

struct Model {
    port: Port,
    socks: Vec<Option<Socket>>,
    sides: Vec<Side>,
    /// Kept open so the TCP pair's accept has a listener for its life (dropped at the end).
    _listener: TcpListener,
    expect: HashMap<u64, Expect>,
    next_user: u64,
    timers: Vec<(TimerId, u64)>,
}

impl Model {
    fn new(backend: Backend) -> Model {
        let port = Port::builder()
            .backend(backend)
            .ignore_env()
            .concurrency(1)
            .build()
            .unwrap_or_else(|e| panic!("port on {backend}: {e}"));
        let (a, b) = UnixStream::pair().expect("socketpair");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
        let (d, _) = listener.accept().expect("accept");
        let socks = vec![
            Some(port.associate(a, key_of(0)).expect("associate")),
            Some(port.associate(b, key_of(1)).expect("associate")),
            Some(port.associate(c, key_of(2)).expect("associate")),
            Some(port.associate(d, key_of(3)).expect("associate")),
        ];
        Model {
            port,
            socks,
            sides: (0..SOCKETS).map(|_| Side::default()).collect(),
            _listener: listener,
            expect: HashMap::new(),
            next_user: 1,
            timers: Vec::new(),
        }
    }

    fn user(&mut self) -> u64 {
        self.next_user += 1;
        self.next_user
    }

    fn seq(&mut self, s: usize) -> u64 {
        self.sides[s].next_seq += 1;
        self.sides[s].next_seq
    }

    fn recv(&mut self, s: usize, cap: usize, old: usize) {
        if self.socks[s].is_none() {
            return;
        }
        let mut buf = Vec::with_capacity(cap);
        buf.resize(old.min(cap), 0xEE);
        let user = self.user();
        let seq = self.seq(s);
        let e = Expect::Recv {
            sock: s,
            seq,
            ptr: buf.as_ptr() as usize,
            cap: buf.capacity(),
            old: buf.len(),
            epoch: self.sides[s].epoch,
        };
        self.expect.insert(user, e);
        self.socks[s].as_ref().unwrap().recv(buf, user);
    }

    fn send(&mut self, s: usize, len: usize, shared: bool) {
        if self.socks[s].is_none() || self.sides[s].sends.len() >= 255 {
            return;
        }
        let index = self.sides[s].sends.len();
        self.sides[s].sends.push((len, Sent::Pending));
        let bytes = vec![index as u8 + 1; len];
        let ptr = bytes.as_ptr() as usize;
        let buf: SendBuf = if shared {
            Bytes::from(bytes).into()
        } else {
            bytes.into()
        };
        let user = self.user();
        let seq = self.seq(s);
        let e = Expect::Send {
            sock: s,
            seq,
            index,
            ptr,
            len,
            epoch: self.sides[s].epoch,
        };
        self.expect.insert(user, e);
        self.socks[s].as_ref().unwrap().send(buf, user);
    }

    fn get(&mut self, max: usize, timeout: Duration) {
        let mut got = Vec::new();
        if max <= 1 {
            if let Some(c) = self.port.get(Some(timeout)).expect("port open") {
                got.push(c);
            }
        } else {
            let n = self
                .port
                .get_many(&mut got, max, Some(timeout))
                .expect("port open");
            assert_eq!(n, got.len(), "get_many's count");
            assert!(n <= max, "get_many returned {n} > {max}");
        }
        for c in got {
            self.check(c);
        }
    }

    fn check(&mut self, c: Completion) {
        let Some(e) = self.expect.remove(&c.user) else {
            panic!("a completion for no operation outstanding (twice, or never started): {c:?}");
        };
        match e {
            Expect::Post { key, bytes } => {
                assert!(matches!(c.op, Op::Post), "{c:?} for a post");
                assert_eq!(
                    (c.key, c.result.as_ref().ok()),
                    (key, Some(&bytes)),
                    "{c:?}"
                );
            }
            Expect::Timer { key, id } => {
                assert!(
                    matches!(c.op, Op::Timer(t) if t == id),
                    "{c:?} for timer {id:?}"
                );
                assert_eq!(c.key, key);
                assert!(c.result.is_ok(), "{c:?}");
            }
            Expect::Message { key, value } => {
                assert_eq!(c.key, key);
                assert!(matches!(c.result, Ok(0)), "{c:?}");
                let Op::Message(m) = c.op else {
                    panic!("{c:?} for a message")
                };
                assert_eq!(m.downcast::<u64>().ok(), Some(value), "the message's value");
            }
            Expect::Recv {
                sock,
                seq,
                ptr,
                cap,
                old,
                epoch,
            } => {
                assert_eq!(c.key, key_of(sock));
                let Op::Recv(buf) = c.op else {
                    panic!("{:?} for a receive", c.op)
                };
                assert_eq!(
                    (buf.as_ptr() as usize, buf.capacity()),
                    (ptr, cap),
                    "a receive's own buffer back"
                );
                assert!(buf.len() >= old && buf[..old].iter().all(|&b| b == 0xEE));
                let side = &self.sides[sock];
                let peer_closed = self.sides[sock ^ 1].closed;
                match c.result {
                    Ok(n) => {
                        assert_eq!(buf.len(), old + n, "bytes appended = result");
                        assert!(old < cap, "a receive with no spare capacity succeeded");
                        assert!(
                            n > 0 || peer_closed,
                            "end of stream on socket {sock}, whose peer is open"
                        );
                        assert!(
                            seq > side.last_recv,
                            "receive #{seq} on socket {sock} completed after #{}",
                            side.last_recv
                        );
                        let side = &mut self.sides[sock];
                        side.last_recv = seq;
                        side.received.extend_from_slice(&buf[old..]);
                    }
                    Err(e) => {
                        assert_eq!(buf.len(), old, "a failed receive received something");
                        if e.is_aborted() {
                            assert!(
                                side.epoch > epoch,
                                "receive aborted on socket {sock}, never cancelled nor closed"
                            );
                        } else if e.kind() == ErrorKind::InvalidInput {
                            assert_eq!(old, cap, "InvalidInput with spare capacity");
                        } else {
                            // A peer that closed with bytes unread resets the connection
                            // (TCP and Unix stream sockets alike).
                            assert!(
                                peer_closed && e.kind() == ErrorKind::ConnectionReset,
                                "receive on socket {sock} failed: {e}"
                            );
                        }
                    }
                }
            }
            Expect::Send {
                sock,
                seq,
                index,
                ptr,
                len,
                epoch,
            } => {
                assert_eq!(c.key, key_of(sock));
                let Op::Send(buf) = c.op else {
                    panic!("{:?} for a send", c.op)
                };
                let back = match &buf {
                    SendBuf::Vec(v) => v.as_ptr() as usize,
                    SendBuf::Bytes(b) => b.as_ptr() as usize,
                    SendBuf::Vectored(_) => panic!("a vectored buffer back for a single one"),
                };
                assert_eq!((back, buf.len()), (ptr, len), "a send's own buffer back");
                let peer_closed = self.sides[sock ^ 1].closed;
                let side = &mut self.sides[sock];
                match c.result {
                    Ok(n) => {
                        assert_eq!(n, len, "a send completed with part of its buffer");
                        assert!(
                            seq > side.last_send,
                            "send #{seq} on socket {sock} completed after #{}",
                            side.last_send
                        );
                        side.last_send = seq;
                        side.sends[index].1 = Sent::Whole;
                    }
                    Err(e) => {
                        if e.is_aborted() {
                            assert!(
                                side.epoch > epoch,
                                "send aborted on socket {sock}, never cancelled nor closed"
                            );
                        } else {
                            assert!(
                                peer_closed
                                    && matches!(
                                        e.kind(),
                                        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
                                    ),
                                "send on socket {sock} failed: {e}"
                            );
                        }
                        side.sends[index].1 = Sent::Cut;
                    }
                }
            }
        }
    }

    /// The bytes socket `r` received are its peer's sends, in start order: every send that
    /// completed whole, whole; a cut or unfinished one, a prefix of it or nothing.
    fn check_stream(&self, r: usize) {
        let got = &self.sides[r].received;
        let sends = &self.sides[r ^ 1].sends;
        let mut i = 0;
        let mut next = 0; // the first send not yet matched
        while i < got.len() {
            let k = got[i] as usize;
            assert!(
                k > next && k <= sends.len(),
                "socket {r} received byte {k} at {i}: not the next send's (next is {})",
                next + 1
            );
            for (j, &(len, fate)) in sends.iter().enumerate().take(k - 1).skip(next) {
                assert!(
                    len == 0 || fate != Sent::Whole,
                    "socket {r}: send {} ({len} bytes, sent whole) is missing before send {k}",
                    j + 1
                );
            }
            let run = got[i..].iter().take_while(|&&b| b as usize == k).count();
            let (len, fate) = sends[k - 1];
            assert!(
                run <= len,
                "socket {r}: {run} bytes of send {k}, which had {len}"
            );
            i += run;
            if i < got.len() {
                assert!(
                    run == len || fate != Sent::Whole,
                    "socket {r}: {run} of the {len} bytes of send {k} (sent whole), then more"
                );
            }
            next = k;
        }
    }

    fn close(&mut self, s: usize) {
        if let Some(sock) = self.socks[s].take() {
            self.sides[s].epoch += 1;
            self.sides[s].closed = true;
            sock.close();
        }
    }

    fn finish(mut self, shut_down_busy: bool, pump: bool) {
        if pump {
            // Let what is under way complete before the sockets close (the receives get the
            // bytes sent), as a server that keeps calling `get` would.
            for _ in 0..4 {
                self.get(16, Duration::from_millis(1));
            }
        }
        if shut_down_busy {
            // Shutdown with operations in flight: none is left in flight after it, and
            // nothing more is delivered.
            self.port.shutdown();
            let st = self.port.stats();
            assert_eq!(st.in_flight, 0, "in flight after shutdown: {st:?}");
            assert!(
                self.port.get(Some(Duration::ZERO)).is_err(),
                "get after shutdown"
            );
            assert!(self.port.post(1, 0, 0).is_err(), "post after shutdown");
            for s in 0..SOCKETS {
                self.close(s);
            }
            let st = self.port.stats();
            assert_eq!(st.in_flight, 0, "in flight after closing: {st:?}");
            return;
        }
        for s in 0..SOCKETS {
            self.close(s);
        }
        let until = Instant::now() + DRAIN;
        while !self.expect.is_empty() {
            assert!(
                Instant::now() < until,
                "after {DRAIN:?}, {} operations never completed: {:?}",
                self.expect.len(),
                self.expect.values().take(8).collect::<Vec<_>>()
            );
            self.get(16, Duration::from_millis(5));
        }
        if let Some(c) = self.port.get(Some(Duration::ZERO)).expect("port open") {
            panic!("a completion after every operation completed: {c:?}");
        }
        for r in 0..SOCKETS {
            self.check_stream(r);
        }
        if std::env::var_os("PORT_MODEL_STATS").is_some() {
            let count = |f: Sent| -> usize {
                let s = self.sides.iter();
                s.map(|s| s.sends.iter().filter(|x| x.1 == f).count()).sum()
            };
            let got: usize = self.sides.iter().map(|s| s.received.len()).sum();
            eprintln!(
                "port_model: {got} bytes received, {} sends whole, {} cut",
                count(Sent::Whole),
                count(Sent::Cut)
            );
        }
        let st = self.port.stats();
        assert_eq!(
            (st.in_flight, st.ready, st.timers),
            (0, 0, 0),
            "after the drain: {st:?}"
        );
        self.port.shutdown();
        let st = self.port.stats();
        assert_eq!((st.in_flight, st.sockets), (0, 0), "after shutdown: {st:?}");
        assert!(
            self.port.get(Some(Duration::ZERO)).is_err(),
            "get after shutdown"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // Byte 0: bit 0 epoll (else io_uring), bit 1 deferred submissions, bit 2 end by shutdown
    // with operations in flight, bit 3 a few `get`s before the end. Then the operations.
    let [flags, ops @ ..] = data else {
        return;
    };
    let backend = if flags & 1 != 0 {
        Backend::Epoll
    } else {
        Backend::Uring
    };
    let mut m = Model::new(backend);
    if flags & 2 != 0 {
        m.port.defer_submissions();
    }
    let mut at = 0;
    let mut next = || {
        at += 1;
        ops.get(at - 1).copied().unwrap_or(0)
    };
    for _ in 0..MAX_OPS.min(ops.len()) {
        let op = next();
        match op % 11 {
            0 => {
                let (key, bytes) = (u64::from(next()), usize::from(next()));
                let user = m.user();
                m.expect.insert(user, Expect::Post { key, bytes });
                m.port.post(key, bytes, user).expect("post");
            }
            1 => {
                let delay = Duration::from_millis(u64::from(next() % 4));
                let key = u64::from(next());
                let user = m.user();
                let id = m.port.post_after(delay, key, user).expect("post_after");
                m.expect.insert(user, Expect::Timer { key, id });
                m.timers.push((id, user));
            }
            2 => {
                if !m.timers.is_empty() {
                    let (id, user) = m.timers[usize::from(next()) % m.timers.len()];
                    // Stopped: never delivered now (a later completion for it has no
                    // expectation and fails). Not stopped: it fired, and is expected.
                    if m.port.cancel_timer(id) {
                        assert!(
                            m.expect.remove(&user).is_some(),
                            "cancel_timer stopped {id:?}, already delivered or stopped"
                        );
                    }
                }
            }
            3 => {
                let (key, value) = (u64::from(next()), u64::from(next()) * 0x0101_0101);
                let user = m.user();
                m.expect.insert(user, Expect::Message { key, value });
                m.port.post_message(key, user, value).expect("post_message");
            }
            4 => {
                let s = usize::from(next()) % SOCKETS;
                let cap = usize::from(next()) % 65;
                let old = usize::from(next()) % 4;
                m.recv(s, cap, old);
            }
            5 | 6 => {
                let s = usize::from(next()) % SOCKETS;
                let len = usize::from(next()) % 65;
                m.send(s, len, op % 11 == 6);
            }
            7 => {
                let s = usize::from(next()) % SOCKETS;
                if let Some(sock) = &m.socks[s] {
                    m.sides[s].epoch += 1;
                    sock.cancel();
                }
            }
            8 => {
                let s = usize::from(next()) % SOCKETS;
                m.close(s);
            }
            _ => {
                let max = usize::from(next()) % 8 + 1;
                let timeout = Duration::from_millis(u64::from(next() % 3));
                m.get(max, timeout);
            }
        }
    }
    m.finish(flags & 4 != 0, flags & 8 != 0);
});
