//! The platform's socket types and C structures, under one name on every OS: what an
//! operation's memory and a backend's system calls are made of.

use std::time::Instant;

#[cfg(unix)]
pub(crate) use std::os::fd::{OwnedFd as OwnedSock, RawFd as RawSock};
#[cfg(windows)]
pub(crate) use std::os::windows::io::{OwnedSocket as OwnedSock, RawSocket as RawSock};

/// The OS handle of an owned socket (a file descriptor on Linux, a `SOCKET` on Windows).
pub(crate) fn raw_of(s: &OwnedSock) -> RawSock {
    #[cfg(unix)]
    {
        std::os::fd::AsRawFd::as_raw_fd(s)
    }
    #[cfg(windows)]
    {
        std::os::windows::io::AsRawSocket::as_raw_socket(s)
    }
}

/// The OS error code of an aborted operation: `ECANCELED` on Linux, `ERROR_OPERATION_ABORTED`
/// (995, `WSA_OPERATION_ABORTED`) on Windows. A `Raw.res` of `-ABORTED` is an aborted
/// operation on every backend.
#[cfg(unix)]
pub(crate) const ABORTED: i32 = libc::ECANCELED;
/// The OS error code of an aborted operation (see the Linux definition).
#[cfg(windows)]
pub(crate) const ABORTED: i32 = windows_sys::Win32::Foundation::ERROR_OPERATION_ABORTED as i32;

/// The C socket address types of the platform.
#[cfg(unix)]
pub(crate) type CSockAddr = libc::sockaddr;
#[cfg(unix)]
pub(crate) type CSockAddrStorage = libc::sockaddr_storage;
#[cfg(windows)]
pub(crate) type CSockAddr = windows_sys::Win32::Networking::WinSock::SOCKADDR;
#[cfg(windows)]
pub(crate) type CSockAddrStorage = windows_sys::Win32::Networking::WinSock::SOCKADDR_STORAGE;
pub(crate) use socket2::socklen_t as SockLen;

/// One buffer of a gathering or scattering operation: `iovec` on Linux, `WSABUF` on Windows.
#[cfg(unix)]
pub(crate) type IoVec = libc::iovec;
/// One buffer of a gathering or scattering operation: `iovec` on Linux, `WSABUF` on Windows.
#[cfg(windows)]
pub(crate) type IoVec = windows_sys::Win32::Networking::WinSock::WSABUF;

/// An `IoVec` for `len` bytes at `ptr` (on Windows at most `i32::MAX`, so that the byte count
/// fits a `Raw.res`; a stream send is continued by the port, and a receive gets less).
pub(crate) fn iovec(ptr: *const u8, len: usize) -> IoVec {
    #[cfg(unix)]
    {
        libc::iovec {
            iov_base: ptr as *mut libc::c_void,
            iov_len: len,
        }
    }
    #[cfg(windows)]
    {
        windows_sys::Win32::Networking::WinSock::WSABUF {
            len: len.min(i32::MAX as usize) as u32,
            buf: ptr as *mut u8,
        }
    }
}

/// A message operation's header: `msghdr` on Linux; on Windows the arguments of
/// `WSASendTo`/`WSARecvFrom` (or of a gathering `WSASend` when `name` is null).
#[cfg(unix)]
pub(crate) type MsgHdr = libc::msghdr;

/// A message operation's header: the arguments of `WSASendTo`/`WSARecvFrom` (or of a
/// gathering `WSASend` when `name` is null).
#[cfg(windows)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct MsgHdr {
    pub(crate) name: *mut CSockAddr,
    /// In: the room at `name`; out (a receive): the sender address's length.
    pub(crate) namelen: i32,
    pub(crate) bufs: *mut IoVec,
    pub(crate) nbufs: u32,
}

pub(crate) fn msg_new() -> MsgHdr {
    #[cfg(unix)]
    {
        // SAFETY: msghdr is a plain C struct for which all-zero (null pointers, zero
        // lengths) is a valid value.
        unsafe { std::mem::zeroed() }
    }
    #[cfg(windows)]
    {
        MsgHdr {
            name: std::ptr::null_mut(),
            namelen: 0,
            bufs: std::ptr::null_mut(),
            nbufs: 0,
        }
    }
}

/// Points the header at `iov`'s buffers.
pub(crate) fn msg_set_iov(h: &mut MsgHdr, iov: &mut [IoVec]) {
    #[cfg(unix)]
    {
        h.msg_iov = iov.as_mut_ptr();
        h.msg_iovlen = iov.len() as _;
    }
    #[cfg(windows)]
    {
        h.bufs = iov.as_mut_ptr();
        h.nbufs = iov.len() as u32;
    }
}

/// Points the header at an address of `len` bytes.
pub(crate) fn msg_set_name(h: &mut MsgHdr, name: *mut CSockAddr, len: SockLen) {
    #[cfg(unix)]
    {
        h.msg_name = name.cast();
        h.msg_namelen = len;
    }
    #[cfg(windows)]
    {
        h.name = name;
        h.namelen = len;
    }
}

/// The address length the kernel wrote into the header (a receive).
pub(crate) fn msg_namelen(h: &MsgHdr) -> SockLen {
    #[cfg(unix)]
    {
        h.msg_namelen
    }
    #[cfg(windows)]
    {
        h.namelen
    }
}

/// Milliseconds until `deadline` for epoll_wait-style timeouts (rounded up; -1 = forever).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn timeout_ms(deadline: Option<Instant>) -> i32 {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            let ms = left.as_micros().div_ceil(1000);
            ms.min(i32::MAX as u128) as i32
        }
    }
}
