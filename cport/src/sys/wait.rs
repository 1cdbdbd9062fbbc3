//! The wait set: one epoll instance that the port's idle threads wait on, all at once.
//!
//! epoll is the one Linux wait queue with IOCP's wake rule: threads blocked in `epoll_wait`
//! on one epoll fd are queued exclusively at the head, and an event wakes one of them, the
//! most recently parked (LIFO). Every event source registered here is edge-triggered, so an
//! event is handed to one waiter and never re-queued to cascade through the others:
//!
//! * a wake-up eventfd ([`WaitSet::wake`]): each write is one event, so a posted completion
//!   wakes one idle thread. It is never read (a counter of 2^64 - 2 writes does not fill);
//! * an alarm timerfd ([`WaitSet::arm`]) set to the port's earliest timer: one waiter is
//!   woken when it goes off, not every waiter at the earliest deadline;
//! * the backend's own sources: every socket (epoll backend) or the ring's eventfd (io_uring
//!   backend), registered with [`WaitSet::add`].

use std::io;
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::time::{Duration, Instant};

use crate::slab::RESERVED_TOKENS;

/// Event data of the wake-up eventfd (never a socket token).
pub(crate) const WAKE: u64 = RESERVED_TOKENS;
/// Event data of the alarm timerfd.
pub(crate) const ALARM: u64 = RESERVED_TOKENS + 1;
/// Event data of a backend's own notification fd (the io_uring eventfd).
pub(crate) const BACKEND: u64 = RESERVED_TOKENS + 2;

pub(crate) fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn new_fd(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by a call that creates a descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) struct WaitSet {
    /// Closed on drop.
    epfd: OwnedFd,
    /// Closed on drop.
    wake_fd: OwnedFd,
    /// Closed on drop.
    alarm_fd: OwnedFd,
    /// Faults a test armed on this wait set's calls (and, for io_uring, its submissions).
    #[cfg(feature = "fault-injection")]
    faults: crate::fault::Faults,
}

impl WaitSet {
    pub(crate) fn new() -> io::Result<WaitSet> {
        // SAFETY: epoll_create1 takes no pointers.
        let epfd = new_fd(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: eventfd takes no pointers.
        let wake_fd = new_fd(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        let flags = libc::TFD_CLOEXEC | libc::TFD_NONBLOCK;
        // SAFETY: timerfd_create takes no pointers.
        let alarm_fd = new_fd(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) })?;
        let ws = WaitSet {
            epfd,
            wake_fd,
            alarm_fd,
            #[cfg(feature = "fault-injection")]
            faults: Default::default(),
        };
        ws.add(ws.wake_fd.as_raw_fd(), WAKE, libc::EPOLLIN as u32)?;
        ws.add(ws.alarm_fd.as_raw_fd(), ALARM, libc::EPOLLIN as u32)?;
        Ok(ws)
    }

    /// The faults a test armed on this wait set (feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn faults(&self) -> &crate::fault::Faults {
        &self.faults
    }

    /// Watches `fd` for `events` (edge-triggered) under `data`.
    pub(crate) fn add(&self, fd: RawFd, data: u64, events: u32) -> io::Result<()> {
        #[cfg(feature = "fault-injection")]
        if let Some(e) = self.faults.take(crate::fault::FaultPoint::EpollAdd) {
            return Err(e);
        }
        let mut ev = libc::epoll_event {
            events: events | libc::EPOLLET as u32,
            u64: data,
        };
        // SAFETY: `ev` is a live local that epoll_ctl only reads.
        let r = unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd`; an fd that was not watched is not an error.
    pub(crate) fn remove(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: EPOLL_CTL_DEL ignores the event pointer, which may be null (Linux 2.6.9+).
        let r = unsafe {
            libc::epoll_ctl(
                self.epfd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                ptr::null_mut(),
            )
        };
        if r < 0 && errno() != libc::ENOENT {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `epoll_wait` into `events` (timeout in ms, -1 = forever); returns the events filled
    /// (none on a timeout, an interruption or an error, which is logged).
    pub(crate) fn wait<'a>(
        &self,
        events: &'a mut [MaybeUninit<libc::epoll_event>],
        timeout: i32,
    ) -> io::Result<&'a [libc::epoll_event]> {
        #[cfg(feature = "fault-injection")]
        if let Some(e) = self.faults.take(crate::fault::FaultPoint::EpollWait) {
            return Err(io::Error::new(e.kind(), format!("epoll_wait: {e}")));
        }
        // SAFETY: `events` has room for `len` events, and epoll_wait writes at most that many.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                events.as_mut_ptr().cast(),
                events.len().min(i32::MAX as usize) as i32,
                timeout,
            )
        };
        if n < 0 {
            return match errno() {
                // Interrupted (a signal, or io_uring task work run on this thread): no events.
                libc::EINTR => Ok(&[]),
                e => Err(io::Error::new(
                    io::Error::from_raw_os_error(e).kind(),
                    format!("epoll_wait: {}", io::Error::from_raw_os_error(e)),
                )),
            };
        }
        // SAFETY: the kernel initialised the first `n` (<= len) events.
        Ok(unsafe { std::slice::from_raw_parts(events.as_ptr().cast(), n as usize) })
    }

    /// Wakes one waiter (or makes the next wait return at once).
    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of a live local.
        let r = unsafe {
            libc::write(
                self.wake_fd.as_raw_fd(),
                (&one as *const u64).cast(),
                mem::size_of::<u64>(),
            )
        };
        // EAGAIN: the counter is saturated (after 2^64 - 2 wake-ups), so an event is pending.
        if r < 0 && errno() != libc::EAGAIN {
            tracing::error!("eventfd write failed: {}", io::Error::last_os_error());
        }
    }

    /// Sets the alarm to go off at `deadline` (never before it), replacing the previous one.
    pub(crate) fn arm(&self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        // A zero it_value would disarm the timer: go off in a nanosecond instead.
        let left = left.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a live local that timerfd_settime only reads; the old value is
        // not asked for (null).
        let r =
            unsafe { libc::timerfd_settime(self.alarm_fd.as_raw_fd(), 0, &spec, ptr::null_mut()) };
        if r < 0 {
            tracing::error!("timerfd_settime failed: {}", io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> [MaybeUninit<libc::epoll_event>; 4] {
        [MaybeUninit::uninit(); 4]
    }

    #[test]
    fn each_wake_is_one_event_for_one_waiter() {
        let ws = WaitSet::new().unwrap();
        ws.wake();
        let mut buf = events();
        let got: Vec<u64> = ws
            .wait(&mut buf, 0)
            .unwrap()
            .iter()
            .map(|e| e.u64)
            .collect();
        assert_eq!(got, vec![WAKE]);
        // Edge-triggered: harvested once, not again.
        assert!(ws.wait(&mut buf, 0).unwrap().is_empty());
        ws.wake();
        assert_eq!(ws.wait(&mut buf, 0).unwrap().len(), 1);
    }

    #[test]
    fn the_alarm_goes_off_once_and_not_early() {
        let ws = WaitSet::new().unwrap();
        let t = Instant::now();
        let deadline = t + Duration::from_millis(30);
        ws.arm(deadline);
        let mut buf = events();
        assert!(ws.wait(&mut buf, 0).unwrap().is_empty());
        let got: Vec<u64> = ws
            .wait(&mut buf, 2000)
            .unwrap()
            .iter()
            .map(|e| e.u64)
            .collect();
        assert_eq!(got, vec![ALARM]);
        assert!(Instant::now() >= deadline);
        assert!(ws.wait(&mut buf, 50).unwrap().is_empty());
    }
}
