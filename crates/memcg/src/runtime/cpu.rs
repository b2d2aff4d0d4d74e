//! Temporary: current CPU via sched_getcpu (replaced by the rseq layer).
#[inline(always)]
pub(crate) fn current_cpu() -> usize {
    // SAFETY: no arguments, no memory.
    let c = unsafe { libc::sched_getcpu() };
    if c < 0 {
        0
    } else {
        c as usize
    }
}
