//! The fork operation: a worker forks while the others run; the child
//! makes a group, allocates in it on a new thread, checks what the group
//! holds and the library's invariants, and `_exit`s with a status the
//! parent reads, under a watchdog.

use std::time::{Duration, Instant};

use crate::block::{Block, Flavor};

/// Child exit statuses (anything else is unexpected).
const CHILD_OK: i32 = 0;
const CHILD_CREATE: i32 = 10;
const CHILD_SPAWN: i32 = 11;
const CHILD_ATTACH: i32 = 12;
const CHILD_ALLOC: i32 = 13;
const CHILD_USAGE: i32 = 14;
const CHILD_FREED: i32 = 15;
const CHILD_INVARIANTS: i32 = 16;
const CHILD_REMOVE: i32 = 17;

fn describe(code: i32) -> &'static str {
    match code {
        CHILD_CREATE => "creating a group failed",
        CHILD_SPAWN => "spawning a thread failed",
        CHILD_ATTACH => "attaching the thread failed",
        CHILD_ALLOC => "the allocation was refused",
        CHILD_USAGE => "the group's alloc bytes were not the block's charge",
        CHILD_FREED => "the group's alloc bytes were not 0 after the free",
        CHILD_INVARIANTS => "the library's invariants were violated in the child",
        CHILD_REMOVE => "removing the group failed",
        _ => "unexpected status",
    }
}

/// What a child that exited found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkOutcome {
    /// Every check of the child passed.
    Ok,
    /// The child's own group was exact, but the library's invariant
    /// checker failed in the child (see the crate README: a fork while
    /// other threads are inside the allocator copies their half-done
    /// charges, which no thread will finish in the child).
    Invariants,
}

/// Forks; the child runs `child` and exits (or, with `hang`, sleeps
/// forever: the injected fault). The parent waits at most `timeout`.
///
/// # Errors
/// What went wrong: the child hung (killed after `timeout`), died of a
/// signal, failed a check of its own group, or `fork` failed.
pub fn run(flavor: Flavor, timeout: Duration, n: u64, hang: bool) -> Result<ForkOutcome, String> {
    // SAFETY: `fork` has no preconditions; the child runs only `child`
    // (the memcg API, one thread, its own allocations) and then `_exit`s,
    // never returning into the parent's code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork failed: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        if hang {
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let code = child(flavor, n);
        // SAFETY: `_exit` ends the child at once (no atexit handlers, no
        // destructors of the parent's state).
        unsafe { libc::_exit(code) };
    }
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if r < 0 {
            return Err(format!(
                "waitpid({pid}) failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        if start.elapsed() > timeout {
            backtrace_of(pid);
            // SAFETY: `pid` is our child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!(
                "fork child {pid} (fork #{n}) hung: no exit after {:.1} s, killed (a lock held by another thread at fork time?)",
                timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if libc::WIFSIGNALED(status) {
        return Err(format!(
            "fork child {pid} (fork #{n}) died of signal {}",
            libc::WTERMSIG(status)
        ));
    }
    match libc::WEXITSTATUS(status) {
        CHILD_OK => Ok(ForkOutcome::Ok),
        CHILD_INVARIANTS => Ok(ForkOutcome::Invariants),
        code => Err(format!(
            "fork child {pid} (fork #{n}) exited with status {code}: {}",
            describe(code)
        )),
    }
}

/// Prints where a hung child is stuck (stack of each of its threads), if
/// `gdb` is installed; best effort.
fn backtrace_of(pid: i32) {
    let out = std::process::Command::new("gdb")
        .args([
            "--batch",
            "-nx",
            "-p",
            &pid.to_string(),
            "-ex",
            "thread apply all bt 40",
        ])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            eprintln!("memcg-soak: hung fork child {pid}, its threads' stacks (gdb):");
            for line in text
                .lines()
                .filter(|l| l.starts_with('#') || l.starts_with("Thread"))
            {
                eprintln!("  {line}");
            }
        }
        Err(e) => eprintln!("memcg-soak: hung fork child {pid}: no backtrace (gdb: {e})"),
    }
}

/// Whether a child prints the violations it found (`MEMCG_SOAK_VERBOSE`).
fn verbose() -> bool {
    std::env::var_os("MEMCG_SOAK_VERBOSE").is_some()
}

/// The child's work; returns its exit status.
fn child(flavor: Flavor, n: u64) -> i32 {
    let ctrl = memcg::controller();
    let root = ctrl.root();
    if root.attach_current().is_err() {
        return CHILD_ATTACH;
    }
    let Ok(g) = ctrl.create(&format!("fork-{n}")) else {
        return CHILD_CREATE;
    };
    let size = 10_000;
    let g2 = g.clone();
    let t = std::thread::Builder::new().spawn(move || {
        if g2.attach_current().is_err() {
            return CHILD_ATTACH;
        }
        let b = Block::alloc(size, 8, false);
        if memcg::controller().root().attach_current().is_err() {
            return CHILD_ATTACH;
        }
        let Some(b) = b else {
            return CHILD_ALLOC;
        };
        memcg::flush_current();
        if g2.stats().stat.alloc_bytes != flavor.charged_bytes(size) {
            return CHILD_USAGE;
        }
        drop(b);
        memcg::flush_current();
        if g2.stats().stat.alloc_bytes != 0 {
            return CHILD_FREED;
        }
        CHILD_OK
    });
    let code = match t {
        Ok(t) => t.join().unwrap_or(CHILD_SPAWN),
        Err(_) => CHILD_SPAWN,
    };
    if code != CHILD_OK {
        return code;
    }
    if g.remove().is_err() {
        return CHILD_REMOVE;
    }
    // The checker is exact only while no other thread charges: the
    // child's reclaimer (restarted in the child, with the requests the
    // parent had queued) may still be running the parent's reclaim
    // callbacks, whose frees uncharge. A violation that persists over ten
    // checks 10 ms apart is real.
    let mut last = None;
    for _ in 0..10 {
        match memcg::check_invariants() {
            Ok(()) => return CHILD_OK,
            Err(v) => last = Some(v),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let (Some(v), true) = (last, verbose()) {
        eprintln!("memcg-soak: fork child (fork #{n}): {v}");
    }
    CHILD_INVARIANTS
}
