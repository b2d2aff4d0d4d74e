//! Helpers shared by the allocator test binaries.

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
