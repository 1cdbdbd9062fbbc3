//! One operation in flight ([`Block`]: its `OVERLAPPED` and what must stay put until the
//! kernel is done), each socket's record of its blocks ([`SockState`]), and what a finished
//! operation still owes when its packet is dequeued ([`finish`]: the result, the accept and
//! connect contexts).

use std::collections::HashMap;
use std::mem;
use std::ptr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use parking_lot::Mutex;
use windows_sys::Win32::Networking::WinSock as ws;
use windows_sys::Win32::System::IO::OVERLAPPED;

use super::winsock::wsa_error;
use crate::sys::driver::Raw;
use crate::sys::os::{CSockAddrStorage, RawSock, SockLen};

/// Room for one address in `AcceptEx`'s output buffer (the documented "16 more bytes than
/// the largest address").
pub(super) const ACCEPT_ADDR_LEN: u32 = (mem::size_of::<ws::SOCKADDR_STORAGE>() + 16) as u32;

/// The backend's state for one socket (`<Iocp as Driver>::Sock`): its handle and the blocks of its operations in flight
/// (token → block address), so that `cancel` finds the `OVERLAPPED` to give `CancelIoEx`.
pub(crate) struct SockState {
    pub(super) stream: bool,
    pub(super) handle: AtomicUsize,
    pub(super) pending: Mutex<HashMap<u64, usize>>,
}

/// What a finished operation still has to do when its packet is dequeued.
// The accept's address buffer is inline: the whole block is one heap allocation already.
#[allow(clippy::large_enum_variant)]
pub(super) enum Extra {
    None,
    /// A pooled receive's buffer (taken from the pool at issue): handed to the port with the
    /// result, which gives it back if nothing arrived.
    Pooled(u16),
    /// Update the connect context (so that `getpeername` and `shutdown` work).
    Connect,
    /// The socket made for `AcceptEx`: update its accept context, parse the addresses, hand it
    /// to the operation's slot — or close it if the accept failed.
    Accept {
        listener: ws::SOCKET,
        accepted: ws::SOCKET,
        addr: *mut CSockAddrStorage,
        len: *mut SockLen,
        out: *mut RawSock,
        buf: [u8; 2 * ACCEPT_ADDR_LEN as usize],
    },
}

/// One operation in flight. `#[repr(C)]` with the `OVERLAPPED` first: the pointer the kernel
/// hands back in the packet is the block's.
#[repr(C)]
pub(super) struct Block {
    pub(super) ov: OVERLAPPED,
    pub(super) token: u64,
    pub(super) handle: ws::SOCKET,
    pub(super) sock: Arc<SockState>,
    /// `WSARecv`'s in/out flags; must stay put until the completion.
    pub(super) flags: u32,
    /// The one buffer of a plain receive or send.
    pub(super) buf: ws::WSABUF,
    pub(super) extra: Extra,
}

/// A finished operation's result; frees the block and runs what the operation still owes
/// (the accept and connect contexts).
pub(super) fn finish(block: Box<Block>) -> Raw {
    block.sock.pending.lock().remove(&block.token);
    let mut bytes = 0u32;
    let mut flags = 0u32;
    // SAFETY: the block's OVERLAPPED belongs to an operation on `handle` that has completed
    // (its packet was dequeued), so the call does not wait (fWait = FALSE).
    let ok =
        unsafe { ws::WSAGetOverlappedResult(block.handle, &block.ov, &mut bytes, 0, &mut flags) };
    let mut res = if ok != 0 {
        bytes.min(i32::MAX as u32) as i32
    } else {
        -wsa_error()
    };
    let mut buf = None;
    match block.extra {
        Extra::None => {}
        Extra::Pooled(bid) => buf = Some(bid),
        Extra::Connect => {
            if res >= 0 {
                // SAFETY: SO_UPDATE_CONNECT_CONTEXT takes no value.
                let r = unsafe {
                    ws::setsockopt(
                        block.handle,
                        ws::SOL_SOCKET,
                        ws::SO_UPDATE_CONNECT_CONTEXT,
                        ptr::null(),
                        0,
                    )
                };
                res = if r == 0 { 0 } else { -wsa_error() };
            }
        }
        Extra::Accept {
            listener,
            accepted,
            addr,
            len,
            out,
            ref buf,
        } => {
            if res >= 0 {
                // SAFETY: SO_UPDATE_ACCEPT_CONTEXT reads the listening socket's handle from a
                // live local of the size given.
                let r = unsafe {
                    ws::setsockopt(
                        accepted,
                        ws::SOL_SOCKET,
                        ws::SO_UPDATE_ACCEPT_CONTEXT,
                        (&listener as *const ws::SOCKET).cast(),
                        mem::size_of::<ws::SOCKET>() as i32,
                    )
                };
                if r != 0 {
                    res = -wsa_error();
                }
            }
            if res >= 0 {
                let (mut local, mut local_len) = (ptr::null_mut(), 0i32);
                let (mut remote, mut remote_len) = (ptr::null_mut(), 0i32);
                // SAFETY: `buf` is the output buffer the completed AcceptEx filled, with the
                // same lengths; the function only sets the four out-pointers into it.
                unsafe {
                    ws::GetAcceptExSockaddrs(
                        buf.as_ptr().cast(),
                        0,
                        ACCEPT_ADDR_LEN,
                        ACCEPT_ADDR_LEN,
                        &mut local,
                        &mut local_len,
                        &mut remote,
                        &mut remote_len,
                    )
                };
                let room = mem::size_of::<CSockAddrStorage>();
                let n = if remote.is_null() {
                    0
                } else {
                    (remote_len.max(0) as usize).min(room)
                };
                // SAFETY: `addr`, `len` and `out` point into the operation's AcceptState,
                // which the port keeps until it has seen this result; `remote` points to
                // `remote_len` bytes inside `buf`, and at most `room` of them are copied.
                unsafe {
                    if n > 0 {
                        ptr::copy_nonoverlapping(remote.cast::<u8>(), addr.cast::<u8>(), n);
                    }
                    *len = n as SockLen;
                    *out = accepted as RawSock;
                }
                res = 0;
            } else {
                // SAFETY: the socket was made for this accept and nothing else holds it.
                unsafe { ws::closesocket(accepted) };
            }
        }
    }
    Raw {
        token: block.token,
        res,
        buf,
    }
}
