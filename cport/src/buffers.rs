//! Buffer pools: receives that take a buffer only when data is there — the zero-byte receive
//! of IOCP servers, built in ([`BufPool`], [`PooledBuf`], `Socket::recv_pooled`).
//!
//! A connection that waits for data holds no buffer: 10,000 idle connections cost the pool's
//! buffers once, not 10,000 buffers. On io_uring the pool is a provided-buffer ring (the
//! kernel picks a buffer when data arrives); on epoll the backend takes one from the pool
//! when the socket is readable; on Windows IOCP takes one when the receive is issued.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock, Weak};

use crate::sys::PoolMem;

/// The port side of a pool: submits a receive that waited for a buffer. Implemented by the
/// port, which the pool knows only through this trait (so this module needs nothing above
/// `sys`).
pub(crate) trait PoolWaker: Send + Sync {
    /// Submits the waiting receive `token` of `pool` again (a buffer came back).
    fn resubmit(&self, pool: &PoolMem, token: u64);
}

pub(crate) struct PoolShared {
    pub(crate) mem: PoolMem,
    /// The port whose backend fills it (a receive on another port's socket is refused).
    pub(crate) port_id: usize,
    pub(crate) waker: OnceLock<Weak<dyn PoolWaker>>,
}

/// A pool of receive buffers of one size, shared by every socket of a port that receives
/// with [`Socket::recv_pooled`](crate::Socket::recv_pooled). Made by
/// [`Port::buf_pool`](crate::Port::buf_pool); cheap to clone (one pool, many handles).
///
/// Running out is a normal state, not an error: a receive that finds no free buffer waits
/// until one comes back (a [`PooledBuf`] is dropped), oldest first, while its data stays in
/// the socket's kernel buffer — so a program that holds on to buffers slows its peers down
/// (TCP flow control) and loses nothing. [`BufPool::stats`] shows how often that happens;
/// size the pool for the receives in progress at once (completions being handled, not
/// connections).
///
/// ```
/// use cport::{Op, Port};
/// use std::io::Write;
/// use std::time::Duration;
///
/// let port = Port::new(1)?;
/// let pool = port.buf_pool(64, 4096)?; // 64 buffers of 4 KiB for every connection
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
/// let (server, _) = listener.accept()?;
/// let server = port.associate(server, 1)?;
/// server.recv_pooled(&pool, 0); // holds no buffer while it waits
/// client.write_all(b"hello")?;
/// let c = port.get(Some(Duration::from_secs(10))).unwrap().expect("the receive");
/// let Op::RecvPooled(Some(buf)) = c.op else { panic!("data") };
/// assert_eq!((c.result?, &buf[..]), (5, &b"hello"[..]));
/// drop(buf); // back to the pool
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct BufPool {
    pub(crate) shared: Arc<PoolShared>,
}

impl BufPool {
    pub(crate) fn new(mem: PoolMem, port_id: usize) -> BufPool {
        BufPool {
            shared: Arc::new(PoolShared {
                mem,
                port_id,
                waker: OnceLock::new(),
            }),
        }
    }

    /// Bytes per buffer (the most one receive delivers).
    pub fn buffer_size(&self) -> usize {
        self.shared.mem.size()
    }

    /// Buffers in the pool.
    pub fn buffers(&self) -> usize {
        self.shared.mem.count()
    }

    /// What the pool is doing now.
    pub fn stats(&self) -> PoolStats {
        let (free_listed, waiting, waits) = self.shared.mem.stats();
        PoolStats {
            free_listed,
            waiting,
            waits,
        }
    }

    pub(crate) fn mem(&self) -> &PoolMem {
        &self.shared.mem
    }

    /// A filled buffer handed to the program.
    pub(crate) fn filled(&self, bid: u16, len: usize) -> PooledBuf {
        PooledBuf {
            pool: self.shared.clone(),
            bid,
            len,
        }
    }

    /// Gives `bid` back and submits the receive that waited longest for one, if any.
    pub(crate) fn give_back(shared: &PoolShared, bid: u16) {
        if let Some(token) = shared.mem.give(bid) {
            if let Some(port) = shared.waker.get().and_then(Weak::upgrade) {
                port.resubmit(&shared.mem, token);
            }
        }
    }
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("buffers", &self.buffers())
            .field("buffer_size", &self.buffer_size())
            .finish()
    }
}

/// A snapshot of a [`BufPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Free buffers kept by the pool (epoll, IOCP). On io_uring the free buffers are lent to
    /// the kernel and this is 0.
    pub free_listed: usize,
    /// Receives waiting for a buffer now.
    pub waiting: usize,
    /// Receives that had to wait for a buffer, in all.
    pub waits: u64,
}

/// A buffer of a [`BufPool`] filled by a receive: derefs to the bytes received. Dropping it
/// gives the buffer back to the pool (and starts a receive that waited for one).
pub struct PooledBuf {
    pool: Arc<PoolShared>,
    bid: u16,
    len: usize,
}

impl PooledBuf {
    /// The bytes received (also through `Deref`).
    pub fn as_slice(&self) -> &[u8] {
        self
    }
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: this PooledBuf is the buffer's only owner until it is dropped (the kernel
        // or backend that filled it is done with it), and the receive wrote `len` bytes.
        unsafe { std::slice::from_raw_parts(self.pool.mem.ptr(self.bid), self.len) }
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBuf")
            .field("buffer", &self.bid)
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        BufPool::give_back(&self.pool, self.bid);
    }
}
