//! The few OS facts a server and its load clients measure, on Linux and on Windows: thread and
//! process CPU time, the open-files limit, and whether an error means no descriptor was left.

use std::time::Duration;

/// CPU time of the calling thread, in nanoseconds.
#[cfg(unix)]
pub fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// CPU time of the calling thread, in nanoseconds (user + kernel, `GetThreadTimes`).
#[cfg(windows)]
pub fn thread_cpu_ns() -> u64 {
    use windows_sys::Win32::System::Threading::{GetCurrentThread, GetThreadTimes};
    let mut t = [windows_sys::Win32::Foundation::FILETIME::default(); 4];
    let [c, e, k, u] = &mut t;
    // SAFETY: the pseudo-handle of the calling thread and four live locals to write to.
    if unsafe { GetThreadTimes(GetCurrentThread(), c, e, k, u) } == 0 {
        return 0;
    }
    (filetime_100ns(&t[2]) + filetime_100ns(&t[3])) * 100
}

/// User + system CPU time of this process (all threads).
#[cfg(unix)]
pub fn process_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// User + system CPU time of this process (all threads; `GetProcessTimes`).
#[cfg(windows)]
pub fn process_cpu_time() -> Duration {
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetProcessTimes};
    let mut t = [windows_sys::Win32::Foundation::FILETIME::default(); 4];
    let [c, e, k, u] = &mut t;
    // SAFETY: the pseudo-handle of this process and four live locals to write to.
    if unsafe { GetProcessTimes(GetCurrentProcess(), c, e, k, u) } == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos((filetime_100ns(&t[2]) + filetime_100ns(&t[3])) * 100)
}

#[cfg(windows)]
fn filetime_100ns(t: &windows_sys::Win32::Foundation::FILETIME) -> u64 {
    (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime)
}

/// The soft open-files limit now (`None`: unlimited).
#[cfg(unix)]
pub fn fd_soft_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Windows has no per-process limit on sockets (they are bounded by memory): `None`.
#[cfg(windows)]
pub fn fd_soft_limit() -> Option<u64> {
    None
}

/// The error of a socket call refused because the process (or system) has no descriptor left:
/// `EMFILE`/`ENFILE` on Linux, `WSAEMFILE`/`WSAENOBUFS` on Windows.
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    let codes = [libc::EMFILE, libc::ENFILE];
    #[cfg(windows)]
    let codes = [
        windows_sys::Win32::Networking::WinSock::WSAEMFILE,
        windows_sys::Win32::Networking::WinSock::WSAENOBUFS,
    ];
    e.raw_os_error().is_some_and(|c| codes.contains(&c))
}
