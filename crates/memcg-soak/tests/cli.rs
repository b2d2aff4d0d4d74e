//! Runs both soak binaries briefly: a normal run passes, and each injected
//! fault makes the run fail with the check it targets. `MEMCG_TOPOLOGY`
//! is set so the runs do not depend on the machine (one node: the exact
//! `memory.current` check; two: the bounded one).

use std::process::{Command, Output};

const ALLOC: &str = env!("CARGO_BIN_EXE_memcg-soak");
const HEAPS: &str = env!("CARGO_BIN_EXE_memcg-soak-heaps");

fn soak(bin: &str, topology: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .env("MEMCG_TOPOLOGY", topology)
        .args(["--seed", "7", "--threads", "3", "--progress-secs", "0"])
        .args(args)
        .output()
        .expect("the soak binary starts")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_passes(out: &Output, mode: &str) {
    let t = text(out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("memcg-soak: ok: "), "{t}");
    assert!(t.contains(mode), "{t}");
    assert!(!t.contains(" 0 quiescent points"), "{t}");
}

fn assert_fails_with(out: &Output, check: &str) {
    let t = text(out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!("FAILED check {check} ")),
        "expected check {check} to fail:\n{t}"
    );
}

#[test]
fn alloc_short_run_passes() {
    // Forks from running workers and at quiescent points; a child whose
    // invariants fail fails the run.
    let out = soak(
        ALLOC,
        "1x2",
        &["--ops", "6000", "--check-every", "500", "--strict-fork"],
    );
    assert_passes(&out, "memory.current exact");
}

#[test]
fn heaps_short_run_passes() {
    let out = soak(
        HEAPS,
        "1x2",
        &["--ops", "3000", "--check-every", "500", "--strict-fork"],
    );
    assert_passes(&out, "memory.current exact");
}

#[test]
fn two_node_run_passes_within_the_bound() {
    let out = soak(
        ALLOC,
        "2x1",
        &["--ops", "3000", "--check-every", "500", "--no-fork"],
    );
    assert_passes(&out, "memory.current bounded");
}

#[test]
fn each_injected_fault_fails_its_check() {
    for (fault, check) in [
        ("mistrack", "exact-usage"),
        ("double-count", "exact-usage"),
        ("leak-byte", "invariants"),
        ("stray-page", "current-bound"),
    ] {
        let out = soak(
            ALLOC,
            "1x2",
            &[
                "--ops",
                "600",
                "--check-every",
                "200",
                "--inject-fault",
                fault,
            ],
        );
        assert_fails_with(&out, check);
    }
}

#[test]
fn refusals_and_kills_without_a_limit_fail() {
    let out = soak(
        ALLOC,
        "1x2",
        &[
            "--ops",
            "30000",
            "--no-fork",
            "--inject-fault",
            "forget-limits",
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("FAILED check refusal ") || t.contains("FAILED check kill "),
        "{t}"
    );
}

#[test]
fn a_hung_fork_child_is_killed_and_reported() {
    let out = soak(
        HEAPS,
        "1x2",
        &[
            "--ops",
            "3000",
            "--check-every",
            "500",
            "--fork-every",
            "20",
            "--fork-timeout-secs",
            "0.5",
            "--inject-fault",
            "fork-hang",
        ],
    );
    assert_fails_with(&out, "fork");
    assert!(text(&out).contains("hung"), "{}", text(&out));
}

#[test]
fn the_allocator_flag_must_name_this_binary() {
    let out = soak(ALLOC, "1x2", &["--allocator", "heaps"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = soak(HEAPS, "1x2", &["--allocator", "alloc", "--ops", "10"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
