//! Peer echo server (the bin `peer_raw` on Linux): the simplest io_uring echo loop we could write, our stand-in for the
//! limit. Per thread: its own ring and its own `SO_REUSEPORT` listener; no multishot, no
//! registered buffers: accept → recv → send (the rest again if short) → recv, with one
//! 16 KiB buffer per connection in a slab. One `submit_and_wait` per loop, then every ready
//! completion is reaped.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use cport_bench::peer::{self, PeerArgs};
use io_uring::{opcode, squeue, types, IoUring};

const ACCEPT: u64 = 0;
const RECV: u64 = 1;
const SEND: u64 = 2;

struct Conn {
    fd: RawFd,
    buf: Box<[u8]>,
    /// Bytes received and being echoed.
    len: usize,
    /// Bytes of them sent so far.
    sent: usize,
}

pub(crate) fn main() -> io::Result<()> {
    let a = PeerArgs::parse();
    let listeners = peer::reuseport_listeners(a.addr, a.threads)?;
    let addr = listeners[0].local_addr()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
    for (i, l) in listeners.into_iter().enumerate() {
        let ready = ready_tx.clone();
        let spin = a.spin;
        std::thread::Builder::new()
            .name(format!("raw-{i}"))
            .spawn(move || {
                if let Err(e) = serve(l, spin, &ready) {
                    eprintln!("raw thread {i}: {e}");
                    let _ = ready.send(Err(e));
                }
            })?;
    }
    drop(ready_tx);
    for _ in 0..a.threads {
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("a raw thread died"))??;
    }
    peer::print_listening(addr, "raw", a.threads)?;
    peer::exit_on_signal()
}

fn ud(kind: u64, idx: usize) -> u64 {
    ((idx as u64) << 2) | kind
}

struct Loop {
    ring: IoUring,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
}

impl Loop {
    fn push(&mut self, e: squeue::Entry) -> io::Result<()> {
        // SAFETY: every entry points into a buffer owned by `self.conns` (boxed, so it does
        // not move) that is neither freed nor reused until the operation's completion.
        while unsafe { self.ring.submission().push(&e) }.is_err() {
            self.ring.submit()?;
        }
        Ok(())
    }

    fn recv(&mut self, idx: usize) -> io::Result<()> {
        let c = self.conns[idx].as_mut().expect("live conn");
        let e = opcode::Recv::new(types::Fd(c.fd), c.buf.as_mut_ptr(), c.buf.len() as u32)
            .build()
            .user_data(ud(RECV, idx));
        self.push(e)
    }

    fn send(&mut self, idx: usize) -> io::Result<()> {
        let c = self.conns[idx].as_mut().expect("live conn");
        let rest = &c.buf[c.sent..c.len];
        let e = opcode::Send::new(types::Fd(c.fd), rest.as_ptr(), rest.len() as u32)
            .build()
            .user_data(ud(SEND, idx));
        self.push(e)
    }

    fn close(&mut self, idx: usize) {
        if let Some(c) = self.conns[idx].take() {
            // SAFETY: the fd is ours and no operation on it is in flight (one at a time).
            unsafe { libc::close(c.fd) };
            self.free.push(idx);
        }
    }
}

fn serve(
    l: TcpListener,
    spin: Duration,
    ready: &std::sync::mpsc::Sender<io::Result<()>>,
) -> io::Result<()> {
    let ring = IoUring::new(4096)?;
    let lfd = l.as_raw_fd();
    let mut lp = Loop {
        ring,
        conns: Vec::new(),
        free: Vec::new(),
    };
    let accept = opcode::Accept::new(types::Fd(lfd), std::ptr::null_mut(), std::ptr::null_mut())
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(ud(ACCEPT, 0));
    lp.push(accept.clone())?;
    let _ = ready.send(Ok(()));
    let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(4096);
    loop {
        match lp.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        cqes.clear();
        cqes.extend(lp.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(u, res) in &cqes {
            let kind = u & 3;
            let idx = (u >> 2) as usize;
            match kind {
                ACCEPT => {
                    if res >= 0 {
                        let fd = res;
                        let one: libc::c_int = 1;
                        // SAFETY: setsockopt on a socket we own, with a valid int option.
                        unsafe {
                            libc::setsockopt(
                                fd,
                                libc::IPPROTO_TCP,
                                libc::TCP_NODELAY,
                                &one as *const _ as *const libc::c_void,
                                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                            )
                        };
                        let conn = Conn {
                            fd,
                            buf: vec![0u8; peer::RECV_BUF].into_boxed_slice(),
                            len: 0,
                            sent: 0,
                        };
                        let i = match lp.free.pop() {
                            Some(i) => {
                                lp.conns[i] = Some(conn);
                                i
                            }
                            None => {
                                lp.conns.push(Some(conn));
                                lp.conns.len() - 1
                            }
                        };
                        lp.recv(i)?;
                    } else if res != -libc::EAGAIN && res != -libc::EINTR {
                        eprintln!("accept: {}", io::Error::from_raw_os_error(-res));
                    }
                    lp.push(accept.clone())?;
                }
                RECV => {
                    if res <= 0 {
                        lp.close(idx);
                        continue;
                    }
                    let c = lp.conns[idx].as_mut().expect("live conn");
                    c.len = res as usize;
                    c.sent = 0;
                    peer::maybe_spin(spin, &c.buf[..c.len]);
                    lp.send(idx)?;
                }
                SEND => {
                    if res < 0 {
                        lp.close(idx);
                        continue;
                    }
                    let c = lp.conns[idx].as_mut().expect("live conn");
                    c.sent += res as usize;
                    if c.sent < c.len {
                        lp.send(idx)?;
                    } else {
                        lp.recv(idx)?;
                    }
                }
                _ => unreachable!(),
            }
        }
    }
}
