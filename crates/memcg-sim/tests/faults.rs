//! Each engine fault injected through the engine's test hook
//! (`fault-injection` feature) is caught by the simulator's checks, with
//! the step it happened at.

use memcg::engine::Fault;
use memcg_sim::machine::Machine;
use memcg_sim::sim::{run_ops, RunOptions};

fn scenario() -> memcg_sim::scenario::Scenario {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/ping-pong.toml");
    let text = std::fs::read_to_string(path).expect("scenario");
    let mut s = memcg_sim::scenario::parse(path, &text).expect("valid");
    s.run.steps = 400;
    s
}

fn run_with_fault(fault: Option<Fault>, at: usize, every: u64) -> Option<memcg_sim::sim::Failure> {
    let s = scenario();
    let ops = memcg_sim::workload::generate(&s).expect("ops");
    let hook = move |step: usize, m: &Machine| {
        if step == at {
            if let (Some(f), Some(g)) = (fault, m.group("app")) {
                m.controller().inject_fault(f, &g);
            }
        }
    };
    let r = run_ops(
        &s,
        &ops,
        RunOptions {
            invariants_every: every,
            hook: Some(Box::new(hook)),
            progress: false,
        },
    )
    .expect("machine");
    r.failure
}

#[test]
fn no_fault_runs_clean() {
    assert_eq!(run_with_fault(None, 100, 1), None);
}

#[test]
fn leaked_byte_is_caught_by_engine_check_at_its_step() {
    let f = run_with_fault(Some(Fault::LeakByte), 100, 1).expect("caught");
    assert_eq!((f.check(), f.step), ("engine", Some(100)));
    assert!(
        f.violation.details.contains("conservation broken"),
        "{}",
        f.violation
    );
}

#[test]
fn dropped_reference_is_caught_by_engine_check() {
    let f = run_with_fault(Some(Fault::DropReference), 100, 1).expect("caught");
    assert_eq!((f.check(), f.step), ("engine", Some(100)));
    assert!(
        f.violation.details.contains("reference count"),
        "{}",
        f.violation
    );
}

#[test]
fn stray_page_is_caught_by_engine_check() {
    let f = run_with_fault(Some(Fault::StrayPage), 100, 1).expect("caught");
    assert_eq!((f.check(), f.step), ("engine", Some(100)));
    assert!(f.violation.details.contains("usage"), "{}", f.violation);
}

#[test]
fn hook_faults_are_checked_even_when_invariants_are_sampled() {
    // With check_invariants every 1000 steps, the step's own recheck after
    // the hook still catches the fault where it happened.
    let f = run_with_fault(Some(Fault::LeakByte), 123, 1000).expect("caught");
    assert_eq!(f.step, Some(123));
}

#[test]
fn shrink_keeps_the_failing_check() {
    let s = scenario();
    let mut ops = memcg_sim::workload::generate(&s).expect("ops");
    memcg_sim::inject(
        &mut ops,
        Some(&memcg_sim::parse_inject("leak-charge@200").expect("valid")),
    );
    let r = run_ops(&s, &ops, RunOptions::default()).expect("machine");
    let failure = r.failure.expect("leak caught");
    assert_eq!(failure.check(), "end-usage");
    let (small, f) = memcg_sim::fuzz::shrink(&s, ops, failure, 2000);
    assert_eq!(f.check(), "end-usage");
    assert!(small.len() <= 2, "{small:?}");
}
