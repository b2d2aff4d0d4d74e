//! A fork waits for a thread's whole exit: its TLS destructors and then
//! its pthread key destructors, where the inner allocator tears down the
//! thread's part of its heaps under the heaps' locks (mimalloc's
//! `mi_thread_done`). A fork copied in the middle of that teardown left
//! those locks held in the child, whose next thread then hung in the
//! allocator's thread initialisation (`runtime::fork`'s exit span).
//!
//! The allocator's teardown is played by a pthread key made before any
//! thread exits (as an allocator's is, before memcg's span key): its
//! destructor marks its start, sleeps, and marks its end. The main thread
//! forks as soon as it sees the start; the child reports whether the copy
//! was made after the end. Without the exit span the fork lands in the
//! sleep and the child sees no end.
//!
//! No harness: the key must be the process's first, made before any
//! thread (the harness's among them) exits.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: memcg::MemcgAlloc<std::alloc::System> = memcg::MemcgAlloc::new(std::alloc::System);

/// The teardown's progress: 0 not started, 1 started, 2 ended.
static TEARDOWN: AtomicU32 = AtomicU32::new(0);

/// How long the played teardown lasts.
const TEARDOWN_TIME: Duration = Duration::from_millis(300);

extern "C" fn teardown(_value: *mut libc::c_void) {
    TEARDOWN.store(1, Ordering::SeqCst);
    // The allocator's teardown allocates and frees too.
    let v: Vec<u8> = vec![1; 4096];
    std::hint::black_box(&v);
    std::thread::sleep(TEARDOWN_TIME);
    drop(v);
    TEARDOWN.store(2, Ordering::SeqCst);
}

/// Forks while a thread is in its key destructors; the child's exit
/// status is 0 when the copy was made after the teardown ended.
fn trial(key: libc::pthread_key_t) -> Result<(), String> {
    TEARDOWN.store(0, Ordering::SeqCst);
    let t = std::thread::spawn(move || {
        // A task and its exit guard, as every allocating thread has.
        let v: Vec<u64> = (0..1000).collect();
        std::hint::black_box(&v);
        // SAFETY: a key made by `main`; the value is a non-null marker.
        unsafe { libc::pthread_setspecific(key, std::ptr::dangling::<libc::c_void>()) };
    });
    let start = Instant::now();
    while TEARDOWN.load(Ordering::SeqCst) == 0 {
        if start.elapsed() > Duration::from_secs(10) {
            return Err("the key destructor never ran".into());
        }
        std::hint::spin_loop();
    }
    // SAFETY: the child only reads an atomic and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let ended = TEARDOWN.load(Ordering::SeqCst) == 2;
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(if ended { 0 } else { 1 }) };
    }
    if pid < 0 {
        return Err("fork failed".into());
    }
    let mut status = 0;
    // SAFETY: our child; `status` is valid.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    t.join().map_err(|_| "the thread panicked".to_string())?;
    match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
        (true, 0) => Ok(()),
        (true, 1) => {
            Err("the fork copied the process in the middle of a thread's key destructors".into())
        }
        _ => Err(format!("the child ended with status {status:#x}")),
    }
}

fn main() {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: writes a new key to a local; the destructor is valid for the
    // whole process.
    let rc = unsafe { libc::pthread_key_create(&mut key, Some(teardown)) };
    assert_eq!(rc, 0, "pthread_key_create");
    let _ = memcg::controller();
    for i in 0..3 {
        if let Err(e) = trial(key) {
            eprintln!("trial {i}: {e}");
            std::process::exit(1);
        }
    }
    memcg::check_invariants().expect("invariants");
    println!("test fork_waits_for_a_thread_s_key_destructors ... ok");
}
