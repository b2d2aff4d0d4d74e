//! A fork while another thread makes the process's controller leaves a
//! usable child.
//!
//! The controller is made on first use; a fork in the middle used to copy
//! a half-made controller that no thread of the child would finish, and
//! the child spun forever in `memcg::controller()`. Now the fork handlers,
//! registered before anything else of the controller is made, wait for it
//! to be finished; and a fork that lands before they are registered leaves
//! a state the child recognises as another process's and starts over.
//!
//! No harness (one process, no test threads) and the system allocator, so
//! that nothing makes the controller before a trial does: each trial is a
//! fresh fork of this process in which one thread makes the controller
//! while the main thread forks after a delay that differs per trial; the
//! grandchild must then make a group, charge it, check the invariants and
//! exit, under a watchdog.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The trial's maker thread has its controller.
static MADE: AtomicBool = AtomicBool::new(false);

/// Trial exit status: the grandchild is fine and the fork was made before
/// the maker thread had its controller.
const OK_EARLY: i32 = 1;

/// Trials (`MEMCG_FORK_INIT_TRIALS` to change).
const DEFAULT_TRIALS: u32 = 200;
/// A process that has not exited after this long hangs.
const WATCHDOG: Duration = Duration::from_secs(20);

/// Waits for `pid` at most [`WATCHDOG`]; its exit status, or `None` if it
/// hung (then killed) or died of a signal.
fn wait(pid: libc::pid_t) -> Option<i32> {
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: `pid` is a child of this process; `status` is valid.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        }
        if r < 0 || start.elapsed() > WATCHDOG {
            // SAFETY: our child, not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The grandchild: the library works.
fn grandchild() -> i32 {
    let ctrl = memcg::controller();
    let Ok(g) = ctrl.create("after-fork") else {
        return 10;
    };
    let Ok(r) = g.try_charge(10_000) else {
        return 11;
    };
    if g.stats().stat.reservation_bytes != 10_000 {
        return 12;
    }
    drop(r);
    if g.remove().is_err() {
        return 13;
    }
    if ctrl.check_invariants().is_err() {
        return 14;
    }
    0
}

/// A trial: one thread makes the controller, this one forks after
/// `delay_spins` spins.
fn trial(delay_spins: u32) -> i32 {
    let maker = std::thread::spawn(|| {
        memcg::controller();
        MADE.store(true, Ordering::SeqCst);
    });
    for _ in 0..delay_spins {
        std::hint::spin_loop();
    }
    let early = !MADE.load(Ordering::SeqCst);
    // SAFETY: the child runs `grandchild` (library calls on its one
    // thread) and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = grandchild();
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) };
    }
    let code = if pid < 0 { Some(20) } else { wait(pid) };
    if maker.join().is_err() {
        return 21;
    }
    match code {
        Some(0) if early => OK_EARLY,
        Some(c) => c,
        None => 22,
    }
}

fn main() {
    let trials = std::env::var("MEMCG_FORK_INIT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_TRIALS);
    let mut failures = Vec::new();
    let mut early = 0;
    for n in 0..trials {
        // Delays from none to well past the controller's making.
        let delay_spins = (n * 9_973) % 2_000_000;
        // SAFETY: this process has one thread (no harness); the child runs
        // `trial` and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = trial(delay_spins);
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(code) };
        }
        match wait(pid) {
            Some(0) => {}
            Some(OK_EARLY) => early += 1,
            Some(22) => failures.push(format!("trial {n}: the grandchild hung or died")),
            Some(code) => failures.push(format!("trial {n}: exit status {code}")),
            None => failures.push(format!("trial {n}: the trial process hung")),
        }
    }
    if !failures.is_empty() {
        eprintln!("{} of {trials} trials failed:", failures.len());
        for f in &failures {
            eprintln!("  {f}");
        }
        std::process::exit(1);
    }
    println!(
        "fork_during_init: {trials} trials, every child usable ({early} forked before the controller was made)"
    );
}
