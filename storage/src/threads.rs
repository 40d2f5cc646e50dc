//! Placement of the store's own threads (the index thread of each shard,
//! a compaction's rewrite). A thread created on a pinned glommio executor
//! inherits its single-core affinity; these threads are background work
//! and must not queue behind the reactor that spawned them.
//!
//! The engine places its own background threads (the search indexer)
//! with the same calls.
//!
//! Best effort: a refused call leaves the thread as it was.

/// Lets the calling thread run on any core.
pub fn float() {
    // SAFETY: `set` is a zeroed cpu_set_t filled with CPU_SET for indexes
    // below CPU_SETSIZE; sched_setaffinity(0, ..) applies to this thread.
    unsafe {
        let cpus = libc::sysconf(libc::_SC_NPROCESSORS_CONF).max(1) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..cpus.min(libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// [`float`], plus nice 10 and the default I/O class (undoing a
/// [`background`]): for work that keeps up with the shards but need not
/// be done before the next delivery (a shard's index thread). Under
/// saturation the shards' reactors, whose latency clients see, run first;
/// what this work owes is bounded where it is queued.
pub fn below_shards() {
    float();
    // SAFETY: plain syscalls on the calling thread with valid arguments.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
        // ioprio_set(IOPRIO_WHO_PROCESS, this thread, IOPRIO_CLASS_NONE).
        libc::syscall(
            libc::SYS_ioprio_set,
            1 as libc::c_long,
            0,
            0 as libc::c_long,
        );
    }
}

/// [`below_shards`], plus the idle I/O class (where the I/O scheduler
/// has classes): for work that may take seconds and can wait.
pub fn background() {
    below_shards();
    // SAFETY: a plain syscall on the calling thread with valid arguments.
    unsafe {
        // ioprio_set(IOPRIO_WHO_PROCESS, this thread, IOPRIO_CLASS_IDLE).
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const IOPRIO_CLASS_IDLE: libc::c_long = 3;
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            IOPRIO_CLASS_IDLE << 13,
        );
    }
}
