//! An engine that cannot start says why: a shard whose executor glommio
//! could not build (here: too little locked memory for io_uring) reports
//! glommio's reason, not only that it exited.
//!
//! Its own test binary: it lowers this process's `RLIMIT_MEMLOCK`, which
//! would break any other test running beside it.

mod common;

#[test]
fn too_little_locked_memory_is_named_in_the_start_error() {
    let lim = libc::rlimit {
        rlim_cur: 64 << 10,
        rlim_max: 64 << 10,
    };
    // SAFETY: a valid rlimit for this process, whose only test this is.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) }, 0);
    let dir = tempfile::tempdir().unwrap();
    let err = rookery_engine::Engine::start(common::small_config(dir.path(), 2))
        .err()
        .expect("no shard can start");
    let text = err.to_string();
    assert!(
        text.contains("MemLockLimit(65536/"),
        "glommio's reason: {text}"
    );
}
