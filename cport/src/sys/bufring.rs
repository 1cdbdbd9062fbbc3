//! A buffer pool's memory and bookkeeping, below the backends: `count` buffers of `size`
//! bytes in one allocation, and who holds the free ones.
//!
//! * **io_uring** lends every free buffer to the kernel through a provided-buffer ring
//!   (`IORING_REGISTER_PBUF_RING`, Linux 5.19): a receive names the ring's group instead of a
//!   buffer, and the kernel picks one only when data is there. A buffer comes back to the
//!   ring when its `PooledBuf` is dropped.
//! * **epoll and IOCP** keep a free list: the backend takes a buffer when it is about to
//!   receive (epoll: the socket is readable, or worth a speculative try; IOCP: at issue) and
//!   gives it back at once if nothing arrived.
//!
//! When no buffer is free the receive does not fail: it waits here (`park`) until one comes
//! back (`give`), in arrival order — back-pressure, never an error and never lost data (the
//! bytes stay in the socket's kernel buffer, and TCP's window slows the sender).

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// The OS error a receive completes with when its pool had no buffer (`ENOBUFS`; on Windows
/// `WSAENOBUFS`). The port never delivers it: such a receive waits for a buffer.
#[cfg(unix)]
pub(crate) const NO_BUFFER: i32 = libc::ENOBUFS;
#[cfg(windows)]
pub(crate) const NO_BUFFER: i32 = windows_sys::Win32::Networking::WinSock::WSAENOBUFS;

/// Most buffers in one pool: buffer ids are `u16`, and a provided-buffer ring holds at most
/// 2^15 entries.
pub const MAX_POOL_BUFFERS: usize = 1 << 15;

/// What changes as buffers go out and come back (under one lock).
#[derive(Default)]
struct State {
    /// Free buffers (free-list pools only; a ring pool's free buffers are in the ring).
    free: Vec<u16>,
    /// Receives (operation tokens) waiting for a buffer, oldest first.
    waiters: VecDeque<u64>,
    /// Receives that had to wait for a buffer (`PoolStats::waits`).
    waits: u64,
}

/// A pool's memory and its free buffers.
pub(crate) struct PoolMem {
    base: NonNull<u8>,
    layout: Layout,
    size: usize,
    count: u16,
    group: u16,
    #[cfg(target_os = "linux")]
    ring: Option<BufRing>,
    state: Mutex<State>,
    /// Buffers given back so far (a receive that found none asks whether one came back
    /// since it was submitted). Raised under `state`'s lock, so `park` reads it exactly;
    /// read without the lock when a receive is submitted (a hot path).
    returns: AtomicU64,
    /// The port's flag: a buffer came back where nobody could wake a waiter (inside a
    /// backend); the port looks at its pools' waiters after the backend call (`take_kick`).
    /// One flag for all of a port's pools, so that the port's look costs one atomic load
    /// when nothing came back.
    kick: Arc<AtomicBool>,
}

// SAFETY: `base` is a heap allocation owned by the pool; the bytes of a buffer are written
// only by the kernel or backend that took it (one at a time: a buffer is either free, lent to
// the kernel, or owned by one `PooledBuf`), and everything else is behind `state`'s lock.
unsafe impl Send for PoolMem {}
// SAFETY: as for Send: shared access goes through the lock or through a buffer's single
// owner.
unsafe impl Sync for PoolMem {}

impl PoolMem {
    /// `count` buffers of `size` bytes; `ring`: lent to the kernel through a provided-buffer
    /// ring (io_uring) rather than kept on a free list.
    pub(crate) fn new(
        count: usize,
        size: usize,
        group: u16,
        ring: bool,
        kick: Arc<AtomicBool>,
    ) -> io::Result<PoolMem> {
        if count == 0 || count > MAX_POOL_BUFFERS || size == 0 || size > i32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a buffer pool needs 1..={MAX_POOL_BUFFERS} buffers of 1..=2^31-1 bytes \
                     (asked for {count} of {size})"
                ),
            ));
        }
        let bytes = count
            .checked_mul(size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pool too large"))?;
        let layout = Layout::from_size_align(bytes, 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        // Not zeroed: untouched pages cost nothing until a receive writes into them.
        // SAFETY: the layout has a non-zero size (count and size are at least 1).
        let base = NonNull::new(unsafe { alloc::alloc(layout) })
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let mut state = State::default();
        #[cfg(target_os = "linux")]
        let ring = if ring {
            let r = BufRing::new(count)?;
            for bid in 0..count as u16 {
                // SAFETY: bid < count, so the buffer lies inside the allocation.
                let addr = unsafe { base.as_ptr().add(bid as usize * size) };
                r.push(addr, size as u32, bid);
            }
            Some(r)
        } else {
            state.free = (0..count as u16).rev().collect();
            None
        };
        #[cfg(not(target_os = "linux"))]
        {
            let _ = ring;
            state.free = (0..count as u16).rev().collect();
        }
        Ok(PoolMem {
            base,
            layout,
            size,
            count: count as u16,
            group,
            #[cfg(target_os = "linux")]
            ring,
            state: Mutex::new(state),
            returns: AtomicU64::new(0),
            kick,
        })
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn count(&self) -> usize {
        self.count as usize
    }

    /// The provided-buffer group id (io_uring).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn group(&self) -> u16 {
        self.group
    }

    /// The ring to register with io_uring (`None`: a free-list pool).
    #[cfg(target_os = "linux")]
    pub(crate) fn ring(&self) -> Option<&BufRing> {
        self.ring.as_ref()
    }

    /// The start of buffer `bid`.
    pub(crate) fn ptr(&self, bid: u16) -> *mut u8 {
        debug_assert!(bid < self.count);
        // SAFETY: bid < count, so the offset lies inside the allocation.
        unsafe { self.base.as_ptr().add(bid as usize * self.size) }
    }

    /// Takes a free buffer (free-list pools), or `None` if none is free.
    pub(crate) fn take(&self) -> Option<u16> {
        self.state.lock().free.pop()
    }

    /// Gives buffer `bid` back: to the kernel's ring or the free list. Returns the oldest
    /// receive waiting for a buffer, which the caller must submit again.
    pub(crate) fn give(&self, bid: u16) -> Option<u64> {
        let mut st = self.state.lock();
        self.put(&mut st, bid);
        st.waiters.pop_front()
    }

    /// Gives `bid` back from inside a backend, which cannot submit anything: a waiting
    /// receive is left to the port (`take_kick`).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn give_quiet(&self, bid: u16) {
        let mut st = self.state.lock();
        self.put(&mut st, bid);
        if !st.waiters.is_empty() {
            self.kick.store(true, Ordering::Release);
        }
    }

    /// Under `state`'s lock (`st`).
    fn put(&self, st: &mut State, bid: u16) {
        #[cfg(target_os = "linux")]
        if let Some(r) = &self.ring {
            r.push(self.ptr(bid), self.size as u32, bid);
            self.returns.fetch_add(1, Ordering::AcqRel);
            return;
        }
        st.free.push(bid);
        self.returns.fetch_add(1, Ordering::AcqRel);
    }

    /// The oldest receive waiting for a buffer (the one `give` named was gone).
    pub(crate) fn pop_waiter(&self) -> Option<u64> {
        self.state.lock().waiters.pop_front()
    }

    /// Buffers given back so far.
    pub(crate) fn returns(&self) -> u64 {
        self.returns.load(Ordering::Acquire)
    }

    /// Receive `token` found no buffer; it was submitted when `returns()` was `seen`. Parks
    /// it and returns true, or returns false if a buffer came back since (submit it again
    /// now): checked under the same lock `give` takes, so no return is missed.
    pub(crate) fn park(&self, token: u64, seen: u64) -> bool {
        let mut st = self.state.lock();
        let back = if self.is_ring() {
            self.returns.load(Ordering::Acquire) != seen
        } else {
            !st.free.is_empty()
        };
        if back {
            return false;
        }
        st.waits += 1;
        st.waiters.push_back(token);
        true
    }

    /// After the port's flag was raised (a buffer came back inside a backend while
    /// receives waited): the oldest waiter, if a buffer is free for it (free-list pools).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn take_kick(&self) -> Option<u64> {
        let mut st = self.state.lock();
        if st.free.is_empty() {
            return None;
        }
        st.waiters.pop_front()
    }

    /// (free buffers on the free list, receives waiting, receives that ever waited).
    pub(crate) fn stats(&self) -> (usize, usize, u64) {
        let st = self.state.lock();
        (st.free.len(), st.waiters.len(), st.waits)
    }

    fn is_ring(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.ring.is_some()
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }
}

impl Drop for PoolMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout. The pool is dropped only when no
        // operation and no `PooledBuf` refers to it, and (io_uring) after the ring that had
        // it registered is gone (the port keeps its pools until its backend is dropped).
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// An io_uring provided-buffer ring: `entries` slots of 16 bytes shared with the kernel,
/// which consumes from the head while we publish at the tail.
#[cfg(target_os = "linux")]
pub(crate) struct BufRing {
    base: NonNull<io_uring::types::BufRingEntry>,
    layout: Layout,
    entries: u16,
    /// Our tail (the shared copy lives in the first entry's `resv` field).
    tail: Mutex<u16>,
}

#[cfg(target_os = "linux")]
impl BufRing {
    fn new(count: usize) -> io::Result<BufRing> {
        let entries = count.next_power_of_two();
        let layout = Layout::from_size_align(
            entries * std::mem::size_of::<io_uring::types::BufRingEntry>(),
            4096,
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        // SAFETY: a non-zero size; zeroed memory is a valid (empty) ring.
        let base = NonNull::new(unsafe { alloc::alloc_zeroed(layout) })
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(BufRing {
            base: base.cast(),
            layout,
            entries: entries as u16,
            tail: Mutex::new(0),
        })
    }

    /// The ring's address and size, for `IORING_REGISTER_PBUF_RING`.
    pub(crate) fn addr_entries(&self) -> (u64, u16) {
        (self.base.as_ptr() as u64, self.entries)
    }

    /// Publishes one buffer at the tail.
    fn push(&self, addr: *mut u8, len: u32, bid: u16) {
        let mut tail = self.tail.lock();
        let mask = self.entries - 1;
        // SAFETY: the slot index is below `entries`; the kernel reads only slots between its
        // head and the published tail, and this slot is beyond the tail until the store
        // below, so nobody else touches it.
        unsafe {
            let e = &mut *self.base.as_ptr().add((*tail & mask) as usize);
            e.set_addr(addr as u64);
            e.set_len(len);
            e.set_bid(bid);
        }
        *tail = tail.wrapping_add(1);
        // SAFETY: the tail field is a u16 inside the first entry, aligned for AtomicU16, and
        // shared with the kernel, which only reads it.
        let shared = unsafe {
            std::sync::atomic::AtomicU16::from_ptr(io_uring::types::BufRingEntry::tail(
                self.base.as_ptr(),
            ) as *mut u16)
        };
        shared.store(*tail, Ordering::Release);
    }
}

#[cfg(target_os = "linux")]
impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring is unregistered (or its
        // io_uring closed) before the pool holding it is dropped.
        unsafe { alloc::dealloc(self.base.as_ptr().cast(), self.layout) };
    }
}
