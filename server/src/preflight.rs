//! What the machine must allow before any shard starts: io_uring, and
//! enough locked memory for glommio's rings.
//!
//! Both fail deep inside glommio otherwise (a shard thread that exits with
//! an error only its join shows), and both have one cause an operator can
//! fix: a container's seccomp profile or `kernel.io_uring_disabled`, and
//! `RLIMIT_MEMLOCK`. Each check returns one line naming what to change.

/// Locked memory glommio's executors refuse to start below (glommio 0.9's
/// `MIN_MEMLOCK_LIMIT`), bytes.
pub const MEMLOCK_BYTES_MIN: u64 = 512 << 10;

/// Runs every check; the first failure as one line.
pub fn check() -> Result<(), String> {
    check_memlock(memlock_limit()?)?;
    check_io_uring(io_uring_setup_errno(), io_uring_disabled())
}

/// The soft `RLIMIT_MEMLOCK`, bytes (`u64::MAX` when unlimited).
fn memlock_limit() -> Result<u64, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("reading the locked-memory limit: {e}"));
    }
    Ok(lim.rlim_cur)
}

fn check_memlock(limit_bytes: u64) -> Result<(), String> {
    if limit_bytes >= MEMLOCK_BYTES_MIN {
        return Ok(());
    }
    Err(format!(
        "the locked-memory limit (RLIMIT_MEMLOCK) is {} KiB; io_uring needs at least {} KiB: \
         raise it (`ulimit -l 8192`, `LimitMEMLOCK=8M` in a systemd unit, \
         `docker run --ulimit memlock=8388608`)",
        limit_bytes >> 10,
        MEMLOCK_BYTES_MIN >> 10
    ))
}

/// Sets up (and closes) a one-entry io_uring: `None` when it works, else
/// the errno the kernel gave.
fn io_uring_setup_errno() -> Option<i32> {
    // `struct io_uring_params`, all zeros: no flags, the kernel's defaults.
    let mut params: [u8; 120] = [0; 120];
    // SAFETY: the kernel writes at most `sizeof(struct io_uring_params)`
    // (120 bytes) into `params`; the returned descriptor is ours to close.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Some(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: `fd` was just returned to us and is not used elsewhere.
    unsafe { libc::close(fd as libc::c_int) };
    None
}

/// `kernel.io_uring_disabled` (Linux 6.6+), when the kernel has it.
fn io_uring_disabled() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn check_io_uring(errno: Option<i32>, disabled: Option<u8>) -> Result<(), String> {
    let Some(errno) = errno else {
        return Ok(());
    };
    let why = std::io::Error::from_raw_os_error(errno);
    Err(match (errno, disabled) {
        (libc::ENOSYS, _) => format!(
            "io_uring is not available ({why}): Rookery needs Linux 5.8 or later \
             built with io_uring"
        ),
        (libc::EPERM | libc::EACCES, Some(d)) if d > 0 => format!(
            "io_uring is disabled on this machine (kernel.io_uring_disabled = {d}): \
             set `sysctl kernel.io_uring_disabled=0`"
        ),
        (libc::EPERM | libc::EACCES, _) => format!(
            "io_uring is not permitted ({why}): a container's seccomp profile blocks it \
             (Docker's default does); allow io_uring_setup, io_uring_enter and \
             io_uring_register in the profile, or run with \
             `--security-opt seccomp=unconfined`"
        ),
        (libc::ENOMEM, _) => format!(
            "io_uring could not be set up ({why}): raise the locked-memory limit \
             (`ulimit -l 8192`, `LimitMEMLOCK=8M`)"
        ),
        _ => format!("io_uring could not be set up: {why}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_below_glommios_floor_names_the_limit_and_the_fix() {
        assert!(check_memlock(MEMLOCK_BYTES_MIN).is_ok());
        assert!(check_memlock(u64::MAX).is_ok());
        let e = check_memlock(64 << 10).unwrap_err();
        assert!(
            e.contains("is 64 KiB") && e.contains("at least 512 KiB"),
            "{e}"
        );
        assert!(e.contains("LimitMEMLOCK") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn each_io_uring_refusal_says_what_to_change() {
        assert!(check_io_uring(None, Some(0)).is_ok());
        let seccomp = check_io_uring(Some(libc::EPERM), Some(0)).unwrap_err();
        assert!(seccomp.contains("seccomp"), "{seccomp}");
        let sysctl = check_io_uring(Some(libc::EPERM), Some(2)).unwrap_err();
        assert!(sysctl.contains("io_uring_disabled = 2"), "{sysctl}");
        let old = check_io_uring(Some(libc::ENOSYS), None).unwrap_err();
        assert!(old.contains("5.8"), "{old}");
        let mem = check_io_uring(Some(libc::ENOMEM), None).unwrap_err();
        assert!(mem.contains("ulimit -l"), "{mem}");
        for e in [seccomp, sysctl, old, mem] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn this_machine_passes() {
        // The test machine runs Rookery, so it must pass its own checks.
        check().unwrap();
    }
}
