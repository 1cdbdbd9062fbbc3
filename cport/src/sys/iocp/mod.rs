//! The Windows backend: the kernel's own I/O completion port.
//!
//! * The port is `CreateIoCompletionPort(INVALID_HANDLE_VALUE, 0, 0, n)` with `n` = the port's
//!   concurrency value, so the kernel enforces the same bound at dequeue that the scheduler
//!   enforces in user space. Every socket is associated once (`register`) under [`IO_KEY`],
//!   with `FILE_SKIP_SET_EVENT_ON_HANDLE`. Completions are *not* skipped on synchronous
//!   success (`FILE_SKIP_COMPLETION_PORT_ON_SUCCESS` is not set): every operation that was
//!   started completes through the port exactly once, and one path handles every result.
//! * `push` queues the operation; `flush` (and a waiter, before it waits) issues what is
//!   queued (`WSARecv`, `WSASend`, `AcceptEx`, `ConnectEx`, `WSARecvFrom`, `WSASendTo`: none
//!   of them waits), so a deferring thread's operations go out at its next `get`, as on the
//!   other backends. Cancelling a queued operation completes it aborted without issuing it.
//!   Each issued operation gets a heap [`Block`] holding its
//!   `OVERLAPPED` (first, so the kernel's pointer is the block's), the token and whatever the
//!   call needs to stay put (the `WSABUF`, the flags, `AcceptEx`'s address buffer). The block
//!   is recorded under its token in the socket's state (for `CancelIoEx`) *before* the call,
//!   and freed when its packet is dequeued. An operation that fails at once queues no packet:
//!   its result waits in `failed` for the next `flush`, `wait` or `try_reap`.
//! * `cancel` = `CancelIoEx(socket, overlapped)` of the token's block; the operation then
//!   completes with `WSA_OPERATION_ABORTED` (the port's aborted result) or its real result.
//! * Results: `WSAGetOverlappedResult` turns the packet's NTSTATUS into the WSA error the
//!   synchronous call would have set (`WSAECONNRESET`, `WSAECONNREFUSED`, ...), reported as
//!   `-error` in [`Raw::res`], which `io::Error::from_raw_os_error` decodes on Windows.
//! * Waiting: every idle thread waits in `GetQueuedCompletionStatusEx` on the one port (IOCP's
//!   own model; the kernel wakes the most recent waiter). `wake` posts a packet under
//!   [`WAKE_KEY`]; the alarm is a small thread that sleeps until the armed instant and then
//!   posts one packet under [`ALARM_KEY`] — it wakes one waiter, never before the instant.
//!
//! Files by job: this one is the driver (the kernel port, issuing, dequeuing, the alarm);
//! `block` is one operation in flight and what its completion still owes; `winsock` holds
//! the WinSock helpers.

mod block;
mod winsock;

use std::collections::HashMap;
use std::io;
use std::mem;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use windows_sys::Win32::Foundation::{CloseHandle, ERROR_NOT_FOUND, HANDLE, WAIT_TIMEOUT};
use windows_sys::Win32::Networking::WinSock as ws;
use windows_sys::Win32::Storage::FileSystem::SetFileCompletionNotificationModes;
use windows_sys::Win32::System::WindowsProgramming::FILE_SKIP_SET_EVENT_ON_HANDLE;
use windows_sys::Win32::System::IO::{
    CancelIoEx, CreateIoCompletionPort, GetQueuedCompletionStatusEx, PostQueuedCompletionStatus,
    OVERLAPPED, OVERLAPPED_ENTRY,
};

use super::driver::{Backend, Desc, Driver, OpDesc, Raw};
use super::os::{iovec, timeout_ms, RawSock, ABORTED};
use block::{finish, Block, Extra, SockState, ACCEPT_ADDR_LEN};
use winsock::{accept_socket, bind_if_unbound, connect_ex, within_i32, wsa_error};

/// The completion key of every associated socket (the block says which operation it was).
const IO_KEY: usize = 1;
/// The completion key of a [`Driver::wake`] packet.
const WAKE_KEY: usize = 2;
/// The completion key of the alarm's packet.
const ALARM_KEY: usize = 3;

/// Packets taken per `GetQueuedCompletionStatusEx` when a thread waits alone.
const BATCH: usize = 64;

/// The kernel port's handle, which threads share (the kernel object is thread-safe).
#[derive(Clone, Copy)]
struct PortHandle(HANDLE);

// SAFETY: a completion port handle may be used from any thread; it is closed only in `Drop`
// after the alarm thread (the only other holder) has been joined.
unsafe impl Send for PortHandle {}
// SAFETY: as above; every call on it is thread-safe in the kernel.
unsafe impl Sync for PortHandle {}

/// The alarm: the instant it is set for, and a thread that posts [`ALARM_KEY`] at it.
#[derive(Default)]
struct Alarm {
    state: Mutex<AlarmState>,
    cv: Condvar,
}

#[derive(Default)]
struct AlarmState {
    at: Option<Instant>,
    stop: bool,
}

pub(crate) struct Iocp {
    port: PortHandle,
    /// Operations pushed and not issued yet (a deferring thread's, until its next `get`).
    queued: Mutex<Vec<(Arc<SockState>, u64, OpDesc)>>,
    /// Results of operations that failed when issued (no packet will come for them), and of
    /// operations cancelled before they were issued.
    failed: Mutex<Vec<Raw>>,
    alarm: Arc<Alarm>,
    alarm_thread: Mutex<Option<JoinHandle<()>>>,
}

impl Iocp {
    /// A completion port whose kernel concurrency value is `concurrency`.
    pub(crate) fn new(concurrency: usize) -> io::Result<Iocp> {
        // SAFETY: creating a new port takes no pointers (INVALID_HANDLE_VALUE, no existing port).
        let port = unsafe {
            CreateIoCompletionPort(
                windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE,
                ptr::null_mut(),
                0,
                concurrency.min(u32::MAX as usize) as u32,
            )
        };
        if port.is_null() {
            return Err(io::Error::last_os_error());
        }
        let port = PortHandle(port);
        let alarm = Arc::new(Alarm::default());
        let thread = {
            let alarm = alarm.clone();
            std::thread::Builder::new()
                .name("cport-iocp-alarm".into())
                .spawn(move || alarm_thread(&alarm, port))
        };
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                // SAFETY: the port was made above and nothing else holds it.
                unsafe { CloseHandle(port.0) };
                return Err(e);
            }
        };
        Ok(Iocp {
            port,
            queued: Mutex::new(Vec::new()),
            failed: Mutex::new(Vec::new()),
            alarm,
            alarm_thread: Mutex::new(Some(thread)),
        })
    }

    fn post(&self, key: usize) {
        // SAFETY: a packet with no OVERLAPPED (null) on a live port.
        if unsafe { PostQueuedCompletionStatus(self.port.0, 0, key, ptr::null()) } == 0 {
            tracing::error!(
                "PostQueuedCompletionStatus failed: {}",
                io::Error::last_os_error()
            );
        }
    }

    /// Issues what was pushed, then dequeues up to `max` packets, waiting up to `deadline`.
    /// Returns whether the alarm's packet was among them. With `repost_wakes` (a busy
    /// thread's look, which submits nothing), a wake-up packet taken is posted again: it was
    /// meant for a waiter.
    fn dequeue(
        &self,
        deadline: Option<Instant>,
        max: usize,
        repost_wakes: bool,
        out: &mut Vec<Raw>,
    ) -> io::Result<bool> {
        if !repost_wakes {
            // A waiter submits what was pushed first (a busy thread's look does not).
            self.issue_queued();
        }
        out.append(&mut self.failed.lock());
        let timeout = if !out.is_empty() {
            0
        } else {
            match timeout_ms(deadline) {
                -1 => windows_sys::Win32::System::Threading::INFINITE,
                ms => ms as u32,
            }
        };
        let mut entries = [OVERLAPPED_ENTRY::default(); BATCH];
        let mut n = 0u32;
        // SAFETY: `entries` has room for `max` (<= BATCH) entries and `n` is a live local.
        let ok = unsafe {
            GetQueuedCompletionStatusEx(
                self.port.0,
                entries.as_mut_ptr(),
                max.clamp(1, BATCH) as u32,
                &mut n,
                timeout,
                0,
            )
        };
        if ok == 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(WAIT_TIMEOUT as i32) {
                Ok(false)
            } else {
                Err(io::Error::new(
                    e.kind(),
                    format!("GetQueuedCompletionStatusEx: {e}"),
                ))
            };
        }
        let mut alarm = false;
        for e in &entries[..n as usize] {
            match e.lpCompletionKey {
                WAKE_KEY => {
                    if repost_wakes {
                        self.post(WAKE_KEY);
                    }
                }
                ALARM_KEY => alarm = true,
                _ if e.lpOverlapped.is_null() => {}
                // SAFETY: every packet under IO_KEY with an OVERLAPPED is one of our blocks,
                // made by `push` with Box::into_raw; the kernel hands each back once.
                _ => out.push(unsafe { finish(Box::from_raw(e.lpOverlapped.cast::<Block>())) }),
            }
        }
        Ok(alarm)
    }

    /// Records an operation that failed when issued: it completes at the next look.
    fn fail_now(&self, token: u64, err: i32) {
        self.failed.lock().push(Raw::new(token, -err));
    }
}

/// The alarm thread: posts one [`ALARM_KEY`] packet when the armed instant has come (never
/// before), and waits for the next `arm`.
fn alarm_thread(alarm: &Alarm, port: PortHandle) {
    let mut st = alarm.state.lock();
    loop {
        if st.stop {
            return;
        }
        match st.at {
            None => alarm.cv.wait(&mut st),
            Some(at) => {
                if Instant::now() >= at {
                    st.at = None;
                    // SAFETY: a packet with no OVERLAPPED on the port, which is closed only
                    // after this thread has been joined.
                    unsafe { PostQueuedCompletionStatus(port.0, 0, ALARM_KEY, ptr::null()) };
                } else {
                    alarm.cv.wait_until(&mut st, at);
                }
            }
        }
    }
}

impl Driver for Iocp {
    fn backend(&self) -> Backend {
        Backend::Iocp
    }

    type Sock = Arc<SockState>;

    fn new_sock(&self, stream: bool) -> Arc<SockState> {
        Arc::new(SockState {
            stream,
            handle: AtomicUsize::new(ws::INVALID_SOCKET),
            pending: Mutex::new(HashMap::new()),
        })
    }

    fn register(&self, st: &Arc<SockState>, _sock: u64, fd: RawSock) -> io::Result<()> {
        let s = fd as ws::SOCKET;
        // SAFETY: `s` is a live socket handle owned by the port's table; the port is live.
        let r = unsafe { CreateIoCompletionPort(s as HANDLE, self.port.0, IO_KEY, 0) };
        if r.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above; the flags only change how the handle's completions are signalled.
        if unsafe {
            SetFileCompletionNotificationModes(s as HANDLE, FILE_SKIP_SET_EVENT_ON_HANDLE as u8)
        } == 0
        {
            tracing::debug!(
                "SetFileCompletionNotificationModes: {}",
                io::Error::last_os_error()
            );
        }
        st.handle.store(s, Ordering::Relaxed);
        if !st.stream {
            // A datagram socket: no WSAECONNRESET on the next receive because an earlier
            // send drew an ICMP "port unreachable" (Windows' default; Linux reports no
            // such error on an unconnected UDP socket).
            let off: u32 = 0;
            let mut n = 0u32;
            // SAFETY: the in-buffer is a live local of the size given; no out-buffer,
            // no overlapped.
            let r = unsafe {
                ws::WSAIoctl(
                    s,
                    ws::SIO_UDP_CONNRESET,
                    (&off as *const u32).cast(),
                    mem::size_of::<u32>() as u32,
                    ptr::null_mut(),
                    0,
                    &mut n,
                    ptr::null_mut(),
                    None,
                )
            };
            if r != 0 {
                tracing::debug!("SIO_UDP_CONNRESET: WSA error {}", wsa_error());
            }
        }
        Ok(())
    }

    fn deregister(&self, _st: &Arc<SockState>, _sock: u64, _fd: RawSock) {
        // Closing the socket (the port's table does, next) ends its association.
    }

    fn push(&self, st: &Arc<SockState>, token: u64, op: OpDesc) {
        self.queued.lock().push((st.clone(), token, op));
    }

    fn cancel(&self, st: &Arc<SockState>, token: u64) {
        // Not issued yet: it never reaches the kernel. (A flush holds this lock while it
        // issues, so an operation is either still here or recorded in `pending`.)
        let mut queued = self.queued.lock();
        if let Some(i) = queued.iter().position(|q| q.1 == token) {
            queued.remove(i);
            drop(queued);
            return self.fail_now(token, ABORTED);
        }
        let pending = st.pending.lock();
        drop(queued);
        let Some(&block) = pending.get(&token) else {
            // Completed already (its packet is queued or was taken): nothing to cancel.
            return;
        };
        let handle = st.handle.load(Ordering::Relaxed);
        // SAFETY: the block is live while it is in `pending` (the lock is held, and `finish`
        // removes it under the same lock before freeing it); the handle is the socket's.
        let ok = unsafe { CancelIoEx(handle as HANDLE, block as *const OVERLAPPED) };
        if ok == 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(ERROR_NOT_FOUND as i32) {
                tracing::warn!("CancelIoEx: {e}");
            }
        }
    }

    fn flush(&self, out: &mut Vec<Raw>) {
        self.issue_queued();
        out.append(&mut self.failed.lock());
    }

    fn wait(&self, deadline: Option<Instant>, alone: bool, out: &mut Vec<Raw>) -> io::Result<bool> {
        self.dequeue(deadline, if alone { BATCH } else { 1 }, false, out)
    }

    fn try_reap(&self, out: &mut Vec<Raw>) {
        // A busy thread's look: a wake-up it takes was meant for a waiter, so it is posted
        // again; the alarm's packet is dropped (the caller reads the clock after this and
        // fires what is due).
        if let Err(e) = self.dequeue(Some(Instant::now()), BATCH, true, out) {
            tracing::warn!("{e}");
        }
    }

    fn wake(&self) {
        self.post(WAKE_KEY);
    }

    fn arm(&self, deadline: Instant) {
        self.alarm.state.lock().at = Some(deadline);
        self.alarm.cv.notify_one();
    }

    fn follow_up_on_submitter(&self) -> bool {
        false
    }

    fn combiner(&self) -> Option<&crate::combine::Combiner> {
        None
    }
}

impl Iocp {
    /// Issues every pushed operation, holding `queued` so that a cancel finds each either
    /// still queued or recorded in its socket's `pending`.
    fn issue_queued(&self) {
        let mut queued = self.queued.lock();
        for (st, token, op) in queued.drain(..) {
            self.issue(st, token, op);
        }
    }

    /// Issues one operation (`WSARecv`, `WSASend`, `AcceptEx`, ...); none of them waits.
    fn issue(&self, st: Arc<SockState>, token: u64, op: OpDesc) {
        let s = op.fd as ws::SOCKET;
        let mut block = Box::new(Block {
            ov: OVERLAPPED::default(),
            token,
            handle: s,
            sock: st.clone(),
            flags: 0,
            buf: ws::WSABUF {
                len: 0,
                buf: ptr::null_mut(),
            },
            extra: Extra::None,
        });
        // What the operation needs made before it can be issued.
        match op.desc {
            Desc::Accept { addr, len, sock } => match accept_socket(s) {
                Ok(accepted) => {
                    block.extra = Extra::Accept {
                        listener: s,
                        accepted,
                        addr,
                        len,
                        out: sock,
                        buf: [0; 2 * ACCEPT_ADDR_LEN as usize],
                    }
                }
                Err(e) => return self.fail_now(token, e),
            },
            Desc::RecvPool { pool } => {
                // SAFETY: the operation holds a handle on the pool while it is in flight.
                let pool = unsafe { &*pool };
                let Some(bid) = pool.take() else {
                    return self.fail_now(token, crate::sys::NO_BUFFER);
                };
                block.buf = iovec(pool.ptr(bid), pool.size());
                block.extra = Extra::Pooled(bid);
            }
            Desc::Connect { addr, .. } => {
                // SAFETY: `addr` points to the operation's SockAddr, valid while it is in flight.
                let family = unsafe { (*addr).sa_family };
                if let Err(e) = bind_if_unbound(s, family) {
                    return self.fail_now(token, e);
                }
                block.extra = Extra::Connect;
            }
            _ => {}
        }
        let connect = match op.desc {
            Desc::Connect { .. } => match connect_ex(s) {
                Ok(f) => f,
                Err(e) => return self.fail_now(token, e),
            },
            _ => None,
        };
        let raw = Box::into_raw(block);
        // Recorded before the call: its packet may be dequeued by another thread at once.
        st.pending.lock().insert(token, raw as usize);
        // SAFETY: `raw` is the block just made; its OVERLAPPED, flags, WSABUF and buffers stay
        // put until its packet is dequeued (or, if the call fails, until it is freed below, as
        // no packet will come). Every pointer of the description targets the operation's
        // OpData, which the port keeps until this token's result is reaped.
        let err = unsafe {
            let b = &mut *raw;
            let ov = &mut b.ov as *mut OVERLAPPED;
            let r = match op.desc {
                Desc::Recv { ptr, len } => {
                    b.buf = iovec(ptr, len);
                    ws::WSARecv(s, &b.buf, 1, ptr::null_mut(), &mut b.flags, ov, None)
                }
                // The buffer was taken and set above.
                Desc::RecvPool { .. } => {
                    ws::WSARecv(s, &b.buf, 1, ptr::null_mut(), &mut b.flags, ov, None)
                }
                Desc::Send { ptr, len } => {
                    b.buf = iovec(ptr, len);
                    ws::WSASend(s, &b.buf, 1, ptr::null_mut(), 0, ov, None)
                }
                Desc::SendMsg { msg } => {
                    let m = &*msg;
                    if m.name.is_null() {
                        let n = within_i32(m.bufs, m.nbufs);
                        ws::WSASend(s, m.bufs, n, ptr::null_mut(), 0, ov, None)
                    } else {
                        ws::WSASendTo(
                            s,
                            m.bufs,
                            m.nbufs,
                            ptr::null_mut(),
                            0,
                            m.name,
                            m.namelen,
                            ov,
                            None,
                        )
                    }
                }
                Desc::RecvMsg { msg } => {
                    let m = &mut *msg;
                    ws::WSARecvFrom(
                        s,
                        m.bufs,
                        m.nbufs,
                        ptr::null_mut(),
                        &mut b.flags,
                        m.name,
                        &mut m.namelen,
                        ov,
                        None,
                    )
                }
                Desc::Accept { .. } => {
                    let Extra::Accept {
                        accepted,
                        ref mut buf,
                        ..
                    } = b.extra
                    else {
                        unreachable!("an accept's block holds its socket")
                    };
                    let mut n = 0u32;
                    if ws::AcceptEx(
                        s,
                        accepted,
                        buf.as_mut_ptr().cast(),
                        0,
                        ACCEPT_ADDR_LEN,
                        ACCEPT_ADDR_LEN,
                        &mut n,
                        ov,
                    ) != 0
                    {
                        0
                    } else {
                        ws::SOCKET_ERROR
                    }
                }
                Desc::Connect { addr, len } => {
                    let f = connect.expect("looked up above");
                    if f(s, addr, len, ptr::null(), 0, ptr::null_mut(), ov) != 0 {
                        0
                    } else {
                        ws::SOCKET_ERROR
                    }
                }
            };
            match r {
                0 => None,
                _ => match wsa_error() {
                    ws::WSA_IO_PENDING => None,
                    e => Some(e),
                },
            }
        };
        if let Some(e) = err {
            // Failed at once: no packet will come.
            st.pending.lock().remove(&token);
            // SAFETY: the block is ours again (the kernel never took it).
            let b = unsafe { Box::from_raw(raw) };
            if let Extra::Accept { accepted, .. } = b.extra {
                // SAFETY: the socket was made for this accept and nothing else holds it.
                unsafe { ws::closesocket(accepted) };
            }
            if let Extra::Pooled(bid) = b.extra {
                // The port gives the unused buffer back with the result.
                self.failed.lock().push(Raw {
                    token,
                    res: -e,
                    buf: Some(bid),
                });
                return;
            }
            self.fail_now(token, e);
        }
    }
}

impl Drop for Iocp {
    fn drop(&mut self) {
        self.alarm.state.lock().stop = true;
        self.alarm.cv.notify_one();
        if let Some(t) = self.alarm_thread.lock().take() {
            let _ = t.join();
        }
        // Blocks still in flight here (the port gave up reaping them) are leaked on purpose:
        // the kernel may still write through them.
        // SAFETY: the port handle is ours and no other thread uses it any more.
        unsafe { CloseHandle(self.port.0) };
    }
}
