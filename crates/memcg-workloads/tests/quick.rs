//! Runs the memcg child in `--quick` mode and asserts that its
//! correctness checks pass (no timing is asserted).

use std::process::Command;

use memcg_workloads::child::ChildReport;

#[test]
fn memcg_child_quick_checks_pass() {
    quick_checks_pass(env!("CARGO_BIN_EXE_workloads-memcg"));
}

#[test]
fn memcg_heaps_child_quick_checks_pass() {
    quick_checks_pass(env!("CARGO_BIN_EXE_workloads-memcg-heaps"));
}

fn quick_checks_pass(bin: &str) {
    let out = Command::new(bin)
        .args(["--quick", "--sample"])
        .output()
        .expect("the memcg child starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "workloads-memcg --quick failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let reports: Vec<ChildReport> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a report"))
        .collect();
    let names: Vec<&str> = reports.iter().map(|r| r.workload.as_str()).collect();
    assert_eq!(names, ["json", "regex", "maps", "rayon"]);
    for r in &reports {
        let m = r
            .memcg
            .as_ref()
            .expect("the memcg child reports memcg data");
        assert!(m.charges > 0, "{}: slow entries counted", r.workload);
        assert!(m.checks.len() >= 6, "{}: every check ran", r.workload);
        for c in &m.checks {
            assert!(
                c.pass,
                "{}: check {} failed: {}",
                r.workload, c.name, c.detail
            );
        }
        assert!(
            m.accuracy.is_some(),
            "{}: --sample reports accuracy",
            r.workload
        );
    }
}

#[test]
fn mimalloc_child_quick_runs() {
    let out = Command::new(env!("CARGO_BIN_EXE_workloads-mimalloc"))
        .args(["--quick", "--workload", "json,rayon"])
        .output()
        .expect("the mimalloc child starts");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reports: Vec<ChildReport> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a report"))
        .collect();
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.memcg.is_none() && r.wall_ns > 0));
    // The CPU time of the span is measured (its split between user and
    // system is the kernel's estimate; their sum is not 0).
    assert!(reports.iter().all(|r| r.user_ns + r.sys_ns > 0));
}
