//! A thin, safe wrapper over Linux epoll with a nanosecond timeout
//! (`epoll_pwait2`), for the load generator's event loop.
//!
//! Written here rather than taken from mio: mio rounds timeouts up to whole
//! milliseconds, and the generator sends on an open-loop schedule where a
//! millisecond of slack is a millisecond of measured latency. Level
//! triggered; a registration carries a `u64` token.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// What a registration waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
}

impl Interest {
    pub const READ: Interest = Interest {
        read: true,
        write: false,
    };
    pub const READ_WRITE: Interest = Interest {
        read: true,
        write: true,
    };

    fn bits(self) -> u32 {
        let mut b = (libc::EPOLLRDHUP) as u32;
        if self.read {
            b |= libc::EPOLLIN as u32;
        }
        if self.write {
            b |= libc::EPOLLOUT as u32;
        }
        b
    }
}

/// One readiness report.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
    /// Error or hang-up: the next read or write tells which.
    pub closed: bool,
}

/// An epoll instance and the buffer its reports land in.
pub struct Poller {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Poller {
    /// A poller reporting up to `batch` descriptors per wait.
    pub fn new(batch: usize) -> io::Result<Poller> {
        // SAFETY: epoll_create1 has no memory preconditions.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Poller {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; batch.max(1)],
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.bits(),
            u64: token,
        };
        // SAFETY: `ev` outlives the call; epoll_ctl copies it.
        check(unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) })?;
        Ok(())
    }

    pub fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, interest)
    }

    pub fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    /// Waits up to `timeout` (`None`: forever) and returns what is ready.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<&[libc::epoll_event]> {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `events` has room for `len` entries and `ts` outlives the
        // call; a null sigmask leaves the mask unchanged.
        let n = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                self.fd,
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                ts_ptr,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(&[]);
            }
            return Err(e);
        }
        Ok(&self.events[..n as usize])
    }
}

/// A report, decoded.
pub fn ready(ev: &libc::epoll_event) -> Ready {
    let bits = ev.events;
    Ready {
        token: ev.u64,
        readable: bits & (libc::EPOLLIN as u32) != 0,
        writable: bits & (libc::EPOLLOUT as u32) != 0,
        closed: bits & ((libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLRDHUP) as u32) != 0,
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn reports_readable_sockets_and_times_out_precisely() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        let mut p = Poller::new(8).unwrap();
        p.add(b.as_raw_fd(), 7, Interest::READ).unwrap();
        let t = std::time::Instant::now();
        assert!(p
            .wait(Some(Duration::from_micros(1500)))
            .unwrap()
            .is_empty());
        let waited = t.elapsed();
        assert!(waited >= Duration::from_micros(1500), "{waited:?}");
        assert!(waited < Duration::from_millis(200), "{waited:?}");
        a.write_all(b"x").unwrap();
        let got: Vec<Ready> = p.wait(None).unwrap().iter().map(ready).collect();
        assert_eq!(got.len(), 1);
        assert!(got[0].token == 7 && got[0].readable && !got[0].writable);
        p.modify(b.as_raw_fd(), 8, Interest::READ_WRITE).unwrap();
        let got: Vec<Ready> = p.wait(None).unwrap().iter().map(ready).collect();
        assert!(got[0].token == 8 && got[0].writable);
        drop(a);
        p.modify(b.as_raw_fd(), 8, Interest::READ).unwrap();
        let got: Vec<Ready> = p.wait(None).unwrap().iter().map(ready).collect();
        assert!(got[0].closed);
    }
}
