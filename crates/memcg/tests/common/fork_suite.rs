// The fork suite, included by `alloc_fork.rs` (MemcgAlloc) and
// `alloc_heaps_fork.rs` (MemcgMimalloc).
//
// The parent forks in a loop while other threads start and exit, attach to
// groups, enter scopes, reserve and allocate. Every child, on its one
// thread, creates a group, allocates in a new thread attached to it, frees,
// and checks the invariants (exact: nothing else runs in the child), then
// exits with a status the parent checks, under a watchdog: a child that has
// not exited after `CHILD_TIMEOUT` is killed and the test fails ("hung").
// Before the fork handlers (runtime/fork.rs) a child hung on the task list
// or the tree lock, or failed its invariants on a dead thread's half-made
// update or pinned groups.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a child may take before it counts as hung.
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

/// Child exit statuses.
const CHILD_OK: i32 = 0;
const CHILD_INVARIANTS: i32 = 3;
const CHILD_GROUP: i32 = 4;
const CHILD_THREAD: i32 = 5;
const CHILD_USAGE: i32 = 6;
const CHILD_ORPHANS: i32 = 7;

/// Runs `f` on a new POSIX thread and joins it; `None` if the thread could
/// not be made. Not `std::thread::spawn`: std keeps a process-wide lock
/// for its stack-overflow handler that every std thread takes as it starts
/// and exits, and a fork while another thread holds it leaves it locked in
/// the child (std's own fork hazard, seen here as a child hung in
/// `stack_overflow::thread_info::set_current_info`, with memcg or
/// without). A raw thread is still a new thread to memcg.
fn run_on_raw_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    type Job = Box<dyn FnOnce() + Send>;
    let (tx, rx) = std::sync::mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    extern "C" fn start(arg: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `arg` is the `Box<Job>` leaked below, taken back once.
        let job = unsafe { Box::from_raw(arg.cast::<Job>()) };
        job();
        std::ptr::null_mut()
    }
    let arg = Box::into_raw(Box::new(job));
    let mut tid: libc::pthread_t = 0;
    // SAFETY: `start` takes ownership of `arg`; default attributes.
    let rc = unsafe { libc::pthread_create(&mut tid, std::ptr::null(), start, arg.cast()) };
    if rc != 0 {
        // SAFETY: the thread was not made, so `arg` is still ours.
        drop(unsafe { Box::from_raw(arg) });
        return None;
    }
    // SAFETY: joins the thread made above, once.
    unsafe { libc::pthread_join(tid, std::ptr::null_mut()) };
    rx.recv().ok()
}

/// Runs in the child: returns its exit status.
fn child_body(round: usize, parent_workers: usize) -> i32 {
    let root = memcg::controller().root();
    let Ok(g) = root.create_child(&format!("forked-{round}")) else {
        return CHILD_GROUP;
    };
    let g2 = g.clone();
    let worker = run_on_raw_thread(move || {
        if g2.attach_current().is_err() {
            return false;
        }
        let v: Vec<u8> = vec![7; 256 << 10];
        let boxes: Vec<Box<[u64; 8]>> = (0..1000).map(|i| Box::new([i; 8])).collect();
        memcg::flush_current();
        let used = g2.current_bytes();
        std::hint::black_box((&v, &boxes));
        used >= (256 << 10)
    });
    match worker {
        Some(true) => {}
        Some(false) => return CHILD_USAGE,
        None => return CHILD_THREAD,
    }
    // No task of the parent's threads is left pinning a group: the
    // parent's worker groups have no tasks here.
    if parent_workers > 0 {
        for c in root.children() {
            if c.name().starts_with("worker-") && c.nr_tasks() != 0 {
                return CHILD_ORPHANS;
            }
        }
    }
    if g.remove().is_err() {
        return CHILD_GROUP;
    }
    // Exact once the child's reclaimer threads (started again by the
    // library calls above when the parent had some) are idle.
    let mut last = None;
    for _ in 0..10 {
        match memcg::check_invariants() {
            Ok(()) => return CHILD_OK,
            Err(v) => last = Some(v),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(v) = last {
        eprintln!("child {round}: {v}");
    }
    CHILD_INVARIANTS
}

/// Waits for `pid` at most `timeout`; `None` if it had to be killed.
fn wait_child(pid: libc::pid_t, timeout: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child, writing its status to a local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return Some(libc::WEXITSTATUS(status));
            }
            return Some(-libc::WTERMSIG(status));
        }
        if start.elapsed() > timeout {
            if std::env::var_os("MEMCG_FORK_GDB").is_some() {
                let _ = std::process::Command::new("gdb")
                    .args(["-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt"])
                    .status();
            }
            // SAFETY: signals and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The parent's background load: threads that start and exit in groups,
/// attach, enter scopes, reserve and allocate until `stop`.
fn start_load(stop: &Arc<AtomicBool>, ops: &Arc<AtomicU64>) -> Vec<std::thread::JoinHandle<()>> {
    let root = memcg::controller().root();
    let groups: Vec<memcg::Group> = (0..3)
        .map(|i| root.child_or_create(&format!("worker-{i}")).expect("group"))
        .collect();
    let mut handles = Vec::new();
    // Threads that start, attach, allocate and exit.
    for t in 0..2 {
        let (stop, ops, groups) = (Arc::clone(stop), Arc::clone(ops), groups.clone());
        handles.push(std::thread::spawn(move || {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let g = groups[i % groups.len()].clone();
                let ops2 = Arc::clone(&ops);
                std::thread::spawn(move || {
                    let _ = g.attach_current();
                    let v: Vec<Vec<u8>> = (0..64).map(|n| vec![1u8; 64 + n * 8]).collect();
                    std::hint::black_box(&v);
                    ops2.fetch_add(1, Ordering::Relaxed);
                })
                .join()
                .expect("short thread");
                i += 1;
            }
        }));
    }
    // A thread that attaches back and forth, enters scopes, reserves and
    // allocates without pause (mostly on the allocator's hit path).
    {
        let (stop, ops, groups) = (Arc::clone(stop), Arc::clone(ops), groups.clone());
        handles.push(std::thread::spawn(move || {
            let mut keep: Vec<Box<[u8]>> = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let g = &groups[i % groups.len()];
                if i.is_multiple_of(64) {
                    let _ = g.attach_current();
                }
                if i.is_multiple_of(97) {
                    if let Ok(_scope) = groups[(i + 1) % groups.len()].enter() {
                        keep.push(vec![3u8; 512].into_boxed_slice());
                    }
                }
                if i.is_multiple_of(131) {
                    if let Ok(mut r) = g.try_charge(8192) {
                        r.shrink(4096);
                    }
                }
                keep.push(vec![2u8; 16 + i % 300].into_boxed_slice());
                if keep.len() > 256 {
                    keep.drain(..128);
                }
                i += 1;
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    handles
}

/// One test in the binary (the harness would run two at once, and the
/// other's threads starting and exiting would make the reclaimer restart
/// below meet std's fork hazard; see [`run_on_raw_thread`]).
#[test]
fn fork() {
    a_child_of_a_process_with_reclaimer_threads_gets_them_back();
    children_forked_while_threads_start_exit_attach_and_allocate_work_and_balance();
}

fn children_forked_while_threads_start_exit_attach_and_allocate_work_and_balance() {
    let rounds: usize = std::env::var("MEMCG_FORK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let handles = start_load(&stop, &ops);
    let workers = handles.len();
    let mut failures = Vec::new();
    for round in 0..rounds {
        // SAFETY: `fork` in a multithreaded process; the child runs only
        // this crate's code and the library's, then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let status = child_body(round, workers);
            // SAFETY: ends the child without running the parent's atexit
            // handlers or its test harness.
            unsafe { libc::_exit(status) };
        }
        match wait_child(pid, CHILD_TIMEOUT) {
            Some(CHILD_OK) => {}
            Some(s) => failures.push(format!("round {round}: child exited with {s}")),
            None => failures.push(format!("round {round}: child hung (killed after {CHILD_TIMEOUT:?})")),
        }
        if failures.len() >= 5 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("load thread");
    }
    assert!(failures.is_empty(), "{} failed children: {failures:#?}", failures.len());
    let ops = ops.load(Ordering::Relaxed);
    assert!(ops > 0, "the load ran");
    common::assert_invariants_settle();
    eprintln!("{rounds} forks while {workers} threads ran {ops} load operations: every child passed");
}

fn a_child_of_a_process_with_reclaimer_threads_gets_them_back() {
    let root = memcg::controller().root();
    let g = root.child_or_create("reclaimed").expect("group");
    let freed = Arc::new(AtomicU64::new(0));
    let f2 = Arc::clone(&freed);
    let _h = g.register_reclaimer(move |_req| {
        f2.fetch_add(1, Ordering::Relaxed);
        0
    });
    // SAFETY: as above.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // A library call outside an allocation starts the reclaimers again;
        // a charge over `high` then gets its pass served.
        let _ = memcg::current_group();
        let ok = (|| {
            g.set_high(memcg::Limit::Bytes(64 << 10)).ok()?;
            let before = freed.load(Ordering::Relaxed);
            let r = g.try_charge(1 << 20).ok()?;
            for _ in 0..2000 {
                if freed.load(Ordering::Relaxed) > before {
                    drop(r);
                    return Some(());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            None
        })();
        // SAFETY: as above.
        unsafe { libc::_exit(if ok.is_some() { CHILD_OK } else { 9 }) };
    }
    assert_eq!(wait_child(pid, CHILD_TIMEOUT), Some(CHILD_OK), "the child's reclaim pass was served");
}
