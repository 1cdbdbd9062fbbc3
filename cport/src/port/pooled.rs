//! Receives into a buffer pool: [`Port::buf_pool`] and [`Socket::recv_pooled`] (the pool
//! itself is `crate::buffers`; its memory and the kernel's ring, `sys::bufring`).

use std::io;
use std::sync::{Arc, Weak};

use super::inner::PortInner;
use super::socket::Socket;
use super::table::fail;
use super::Port;
use crate::buffers::{BufPool, PoolWaker};
#[cfg(doc)]
use crate::op::Op;
use crate::op::OpData;
use crate::sys::PoolMem;

impl Port {
    /// Makes a pool of `buffers` receive buffers of `size` bytes each, for
    /// [`Socket::recv_pooled`] on this port's sockets. The memory is allocated once, here, and
    /// kept for the port's life; pages no receive has written into cost nothing.
    ///
    /// On io_uring the buffers are lent to the kernel through a provided-buffer ring (Linux
    /// 5.19; an older kernel makes this fail, and the caller can fall back to
    /// [`Socket::recv`]). On epoll and IOCP the pool keeps them on a free list.
    ///
    /// `buffers` is at most [`MAX_POOL_BUFFERS`](crate::MAX_POOL_BUFFERS).
    pub fn buf_pool(&self, buffers: usize, size: usize) -> io::Result<BufPool> {
        let inner = &self.inner;
        let mut pools = inner.pools.lock();
        let group = u16::try_from(pools.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many buffer pools on one port",
            )
        })?;
        let mem = PoolMem::new(
            buffers,
            size,
            group,
            inner.driver.pool_ring(),
            inner.pool_kick.clone(),
        )?;
        inner.driver.register_pool(&mem)?;
        let pool = BufPool::new(mem, inner.id);
        let waker: Weak<dyn PoolWaker> = Arc::downgrade(&(inner.clone() as Arc<dyn PoolWaker>));
        let _ = pool.shared.waker.set(waker);
        pools.push(pool.clone());
        Ok(pool)
    }
}

impl Socket {
    /// Receives into a buffer of `pool`, taken only when data is there — IOCP's zero-byte
    /// receive, built in: while the connection is idle it holds no buffer. Completes with
    /// [`Op::RecvPooled`]: `Some(buffer)` and its length as the result, or `None` with `Ok(0)`
    /// (end of stream), an error, or aborted. Dropping the buffer gives it back to the pool.
    ///
    /// When the pool has no free buffer, the receive waits for one (oldest first) instead of
    /// failing; its data stays in the socket. On Windows (IOCP) the buffer is taken when the
    /// receive is issued, so there a waiting receive does hold one: a pool needs a buffer
    /// per receive waiting at once (the zero-byte receive that would avoid it is not done). Pooled receives share the socket's receive
    /// lane with [`Socket::recv`]: one in flight at a time, completed in start order. A pool
    /// of another port completes at once with `InvalidInput`.
    #[doc(alias = "WSARecv")]
    pub fn recv_pooled(&self, pool: &BufPool, user: u64) {
        if pool.shared.port_id != self.port.inner.id {
            let e = io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv_pooled: the pool belongs to another port",
            );
            let c = fail(self.key, user, OpData::RecvPool(pool.clone()), e);
            self.port.inner.settle(vec![c]);
            return;
        }
        self.start(OpData::RecvPool(pool.clone()), user);
    }
}

impl PoolWaker for PortInner {
    fn resubmit(&self, pool: &PoolMem, token: u64) {
        self.table.lock().resubmit_parked(&self.driver, pool, token);
        self.issue();
    }
}
