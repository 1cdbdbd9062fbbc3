//! Shared by the contract tests: every test runs once per backend.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use cport::{Backend, Completion, Port};

pub fn port(backend: Backend, concurrency: usize) -> Port {
    let p = Port::builder()
        .backend(backend)
        .ignore_env()
        .concurrency(concurrency)
        .build()
        .expect("port");
    assert_eq!(p.backend(), backend);
    p
}

/// A connected TCP pair over loopback: (client, server side).
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

/// The next completion, failing the test after 10 s.
pub fn next(port: &Port) -> Completion {
    port.get(Some(Duration::from_secs(10)))
        .expect("port closed")
        .expect("no completion within 10 s")
}

/// Open file descriptors of this process (Windows: open handles).
#[cfg(unix)]
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Open file descriptors of this process (Windows: open handles).
#[cfg(windows)]
pub fn open_fds() -> usize {
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetProcessHandleCount};
    let mut n = 0u32;
    // SAFETY: the pseudo-handle of this process and a live local to write the count to.
    let ok = unsafe { GetProcessHandleCount(GetCurrentProcess(), &mut n) };
    assert_ne!(
        ok,
        0,
        "GetProcessHandleCount: {}",
        std::io::Error::last_os_error()
    );
    n as usize
}

/// The OS handle number of a socket (fd on Linux, SOCKET on Windows).
pub fn raw(s: &TcpStream) -> u64 {
    #[cfg(unix)]
    {
        std::os::fd::AsRawFd::as_raw_fd(s) as u64
    }
    #[cfg(windows)]
    {
        std::os::windows::io::AsRawSocket::as_raw_socket(s)
    }
}
