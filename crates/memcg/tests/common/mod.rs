//! Helpers shared by the allocator test binaries.

// Each binary uses some of them.
#![allow(dead_code)]

/// Runs the test `test` of this binary alone in a child process, with
/// `env` set and `removed` unset, and checks that it passed and printed
/// `CHILD OK` (the child tests return early, printing nothing, unless
/// their variable is in `env`): for tests whose process-wide state (the
/// engine's counters, mimalloc's options read at start) must be their own.
pub(crate) fn run_test_in_child(test: &str, env: &[(&str, &str)], removed: &[&str]) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"]);
    for k in removed {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD OK"),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The invariants of the process-wide controller, which are exact only
/// while no thread charges: the test harness's own thread may allocate
/// (charging root) while a test checks, so a violation counts only if it
/// is still there after a few tries.
pub(crate) fn assert_invariants_settle() {
    let mut last = None;
    for _ in 0..5 {
        match memcg::check_invariants() {
            Ok(()) => return,
            Err(v) => last = Some(v),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if let Some(v) = last {
        panic!("{v}");
    }
}
