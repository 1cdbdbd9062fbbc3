//! WinSock helpers of the IOCP backend: the last error, `ConnectEx` looked up, the binding
//! `ConnectEx` needs, the socket `AcceptEx` accepts into, and the part of a gathering send
//! whose byte count fits a result.

use std::mem;
use std::ptr;
use std::sync::OnceLock;

use windows_sys::Win32::Networking::WinSock as ws;

use crate::sys::os::RawSock;

/// The last WSA error.
pub(super) fn wsa_error() -> i32 {
    // SAFETY: reads the calling thread's last error; no arguments.
    unsafe { ws::WSAGetLastError() }
}

/// How many of the `n` buffers at `bufs` fit `i32::MAX` bytes together (at least one), so
/// that a gathering send's byte count fits `Raw.res`; the port sends the rest afterwards.
///
/// # Safety
/// `bufs` points to `n` initialised `WSABUF`s.
pub(super) unsafe fn within_i32(bufs: *const ws::WSABUF, n: u32) -> u32 {
    if n == 0 {
        return 0;
    }
    // SAFETY: the caller's promise.
    let bufs = unsafe { std::slice::from_raw_parts(bufs, n as usize) };
    let mut total = 0u64;
    for (i, b) in bufs.iter().enumerate() {
        total += u64::from(b.len);
        if total > i32::MAX as u64 {
            return (i as u32).max(1);
        }
    }
    n
}

/// `ConnectEx`, looked up once per process (it is an extension function of the provider).
pub(super) fn connect_ex(s: ws::SOCKET) -> Result<ws::LPFN_CONNECTEX, i32> {
    static CONNECT_EX: OnceLock<ws::LPFN_CONNECTEX> = OnceLock::new();
    if let Some(&f) = CONNECT_EX.get() {
        return Ok(f);
    }
    let guid = ws::WSAID_CONNECTEX;
    let mut f: ws::LPFN_CONNECTEX = None;
    let mut n = 0u32;
    // SAFETY: the in- and out-buffers are live locals of the sizes given; no overlapped.
    let r = unsafe {
        ws::WSAIoctl(
            s,
            ws::SIO_GET_EXTENSION_FUNCTION_POINTER,
            (&guid as *const windows_sys::core::GUID).cast(),
            mem::size_of::<windows_sys::core::GUID>() as u32,
            (&mut f as *mut ws::LPFN_CONNECTEX).cast(),
            mem::size_of::<ws::LPFN_CONNECTEX>() as u32,
            &mut n,
            ptr::null_mut(),
            None,
        )
    };
    if r != 0 {
        return Err(wsa_error());
    }
    match f {
        Some(_) => {
            let _ = CONNECT_EX.set(f);
            Ok(f)
        }
        None => Err(ws::WSAEOPNOTSUPP),
    }
}

/// Binds an unbound socket to the wildcard address of `family` (ConnectEx needs a bound
/// socket; `connect` binds implicitly, ConnectEx does not).
pub(super) fn bind_if_unbound(s: ws::SOCKET, family: u16) -> Result<(), i32> {
    // SAFETY: an all-zero SOCKADDR_STORAGE is a valid value.
    let mut name: ws::SOCKADDR_STORAGE = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<ws::SOCKADDR_STORAGE>() as i32;
    // SAFETY: `name` has room for `len` bytes.
    let r =
        unsafe { ws::getsockname(s, (&mut name as *mut ws::SOCKADDR_STORAGE).cast(), &mut len) };
    if r == 0 {
        return Ok(());
    }
    let err = wsa_error();
    if err != ws::WSAEINVAL {
        return Err(err);
    }
    let any = match family {
        ws::AF_INET6 => socket2::SockAddr::from(std::net::SocketAddr::from((
            std::net::Ipv6Addr::UNSPECIFIED,
            0,
        ))),
        _ => socket2::SockAddr::from(std::net::SocketAddr::from((
            std::net::Ipv4Addr::UNSPECIFIED,
            0,
        ))),
    };
    // SAFETY: `any` holds a valid address of `any.len()` bytes.
    if unsafe { ws::bind(s, any.as_ptr().cast(), any.len()) } != 0 {
        return Err(wsa_error());
    }
    Ok(())
}

/// A socket to accept into: the listener's family, a stream socket, overlapped and not
/// inheritable (what socket2 makes on Windows).
pub(super) fn accept_socket(listener: ws::SOCKET) -> Result<ws::SOCKET, i32> {
    // SAFETY: the listener is open for the duration of this call (the port's table owns it).
    let l = unsafe { std::os::windows::io::BorrowedSocket::borrow_raw(listener as RawSock) };
    let sref = socket2::SockRef::from(&l);
    let local = sref
        .local_addr()
        .map_err(|e| e.raw_os_error().unwrap_or(ws::WSAEINVAL))?;
    let s = socket2::Socket::new(local.domain(), socket2::Type::STREAM, None)
        .map_err(|e| e.raw_os_error().unwrap_or(ws::WSAEINVAL))?;
    Ok(std::os::windows::io::IntoRawSocket::into_raw_socket(s) as ws::SOCKET)
}
