//! The process's controller, made on first use by an atomic state machine
//! (no `Once`, no lazy static: initialisation may run inside the global
//! allocator, and a re-entrant `call_once` would deadlock).

use crate::engine::{Config, Controller, TaskCacheMode};
use crate::runtime::topology::CpuMap;
use crate::sync::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

const UNINIT: u32 = 0;
/// The low bits of a word `pid << 2 | INITIALIZING`: the process `pid` is
/// making the controller.
const INITIALIZING: u32 = 1;
const READY: u32 = 2;
const STATE_BITS: u32 = 0b11;

/// The state word of a process `pid` that starts making the controller
/// (Linux pids are below 2^22, so `pid << 2` fits).
fn initializing_word(pid: u32) -> u32 {
    (pid << 2) | INITIALIZING
}

/// Whether `word` says that a controller is being made by a process other
/// than `my_pid`: the copy of a fork made after the state left `UNINIT`
/// but before the fork handlers were registered, in which no thread will
/// ever finish it (the child then makes its own).
fn initialization_is_stale(word: u32, my_pid: u32) -> bool {
    word & STATE_BITS == INITIALIZING && word >> 2 != my_pid
}

/// This process's id.
fn pid() -> u32 {
    // SAFETY: `getpid` has no preconditions and cannot fail.
    unsafe { libc::getpid() as u32 }
}

static STATE: AtomicU32 = AtomicU32::new(UNINIT);
static CONTROLLER: AtomicPtr<Controller> = AtomicPtr::new(std::ptr::null_mut());
/// Real CPU id → CPU id of the controller's topology (virtual or real).
static CPU_MAP: AtomicPtr<CpuMap> = AtomicPtr::new(std::ptr::null_mut());

/// Set at init when every CPU of the controller's topology is on one node,
/// or every thread task uses the single cache: the fast-path key then
/// needs no CPU read.
static ONE_KEY: AtomicBool = AtomicBool::new(false);

/// The controller if it is ready; never initialises (safe to call from
/// anywhere, including re-entrant allocator calls).
#[inline(always)]
pub(crate) fn try_controller() -> Option<&'static Controller> {
    if STATE.load(Ordering::Acquire) != READY {
        return None;
    }
    let p = CONTROLLER.load(Ordering::Acquire);
    // SAFETY: a non-null pointer was made by `Box::into_raw` in `init` and
    // is never freed (the controller lives for the whole process).
    unsafe { p.as_ref() }
}

/// The CPU id of the controller's topology where this thread runs now.
#[inline(always)]
pub(crate) fn current_cpu() -> usize {
    to_topology(crate::runtime::cpu::current_cpu())
}

/// The controller's topology CPU id of the real CPU `real`.
#[inline(always)]
fn to_topology(real: usize) -> usize {
    let map = CPU_MAP.load(Ordering::Acquire);
    // SAFETY: set once in `init` from `Box::into_raw`, never freed.
    match unsafe { map.as_ref() } {
        Some(m) => m.to_topology(real),
        None => real,
    }
}

/// The key of the task cache's fast path ([`crate::engine::Task`]'s
/// `charge_fast`) for where this thread runs now: 1 when the key needs no
/// CPU (one node, or the single cache), else the real CPU id plus 2. A key
/// names CPUs of one node, so equal keys charge the same node's objcg.
#[inline(always)]
pub(crate) fn fast_key() -> u64 {
    if one_key() {
        1
    } else {
        fast_key_of_cpu()
    }
}

/// [`fast_key`] when the key needs the CPU (`one_key()` is false).
#[inline(always)]
pub(crate) fn fast_key_of_cpu() -> u64 {
    key_of_cpu(crate::runtime::cpu::current_cpu())
}

/// [`fast_key_of_cpu`] when the CPU can be read without a call
/// ([`crate::runtime::cpu::current_cpu_inline`]); otherwise a key that is
/// never armed, so the hit path misses and the caller's slow path reads
/// the CPU.
#[inline(always)]
pub(crate) fn fast_key_of_cpu_inline() -> u64 {
    match crate::runtime::cpu::current_cpu_inline() {
        Some(real) => key_of_cpu(real),
        None => u64::MAX,
    }
}

/// The per-CPU key of the real CPU `real`.
#[inline(always)]
fn key_of_cpu(real: usize) -> u64 {
    real as u64 + 2
}

/// Whether the fast-path key is 1 for every CPU (see [`fast_key`]); final
/// once the controller is ready.
#[inline(always)]
pub(crate) fn one_key() -> bool {
    // Relaxed: set once before READY; a thread that reads `false` early
    // only uses the per-CPU keys, which are also correct.
    ONE_KEY.load(Ordering::Relaxed)
}

/// [`current_cpu`] and [`fast_key`] from one CPU read, so that the key
/// names the node of the CPU charged.
pub(crate) fn current_cpu_and_key() -> (usize, u64) {
    let real = crate::runtime::cpu::current_cpu();
    let key = if one_key() { 1 } else { key_of_cpu(real) };
    (to_topology(real), key)
}

/// The controller, initialising it if needed. Returns `None` only while
/// another thread (or this one, re-entrantly) is initialising it.
pub(crate) fn controller_or_init() -> Option<&'static Controller> {
    let word = STATE.load(Ordering::Acquire);
    match word & STATE_BITS {
        READY => try_controller(),
        INITIALIZING => {
            if initialization_is_stale(word, pid()) {
                // One thread of the child takes the copied word back; it or
                // another then makes the child's controller.
                let _ = STATE.compare_exchange(word, UNINIT, Ordering::Relaxed, Ordering::Relaxed);
            }
            None
        }
        _ => init(),
    }
}

#[cold]
#[inline(never)]
fn init() -> Option<&'static Controller> {
    // Acquire/Release: pairs with the Release store of READY below.
    if STATE
        .compare_exchange(
            UNINIT,
            initializing_word(pid()),
            Ordering::Acquire,
            Ordering::Acquire,
        )
        .is_err()
    {
        return try_controller();
    }
    // First: a fork from now on waits for the controller (see
    // `runtime::fork`) instead of copying it half made.
    crate::runtime::fork::register();
    crate::sync::set_runtime_hooks(crate::sync::RuntimeHooks {
        enter_busy: crate::runtime::thread::enter_busy_hook,
        leave_busy: crate::runtime::thread::leave_busy_hook,
        after_callbacks: crate::runtime::thread::flush_current_if_active,
    });
    let topology = crate::runtime::topology::detect();
    let mode = task_cache_mode_from_env();
    let map = Box::into_raw(Box::new(CpuMap::new(&topology)));
    ONE_KEY.store(
        topology.nodes().count() == 1 || mode == TaskCacheMode::Single,
        Ordering::Relaxed,
    );
    let controller = Controller::with_config(topology, Config::default().task_cache(mode));
    let p = Box::into_raw(Box::new(controller));
    CPU_MAP.store(map, Ordering::Release);
    CONTROLLER.store(p, Ordering::Release);
    STATE.store(READY, Ordering::Release);
    // SAFETY: just made from `Box::into_raw`; never freed.
    Some(unsafe { &*p })
}

/// Waits while another thread makes the controller (the fork handler: a
/// child must not inherit a controller half made).
pub(crate) fn wait_while_initializing() {
    loop {
        let word = STATE.load(Ordering::Acquire);
        if word & STATE_BITS != INITIALIZING || initialization_is_stale(word, pid()) {
            return;
        }
        std::thread::yield_now();
    }
}

/// `MEMCG_TASK_CACHE=single` selects the pre-seed cache for every thread.
fn task_cache_mode_from_env() -> TaskCacheMode {
    // SAFETY: `getenv` with a NUL-terminated name; the result is read at
    // once, before any `setenv` could run on this thread.
    let v = unsafe { libc::getenv(c"MEMCG_TASK_CACHE".as_ptr()) };
    if v.is_null() {
        return TaskCacheMode::PerNode;
    }
    // SAFETY: `getenv` returns a NUL-terminated string.
    let bytes = unsafe { std::ffi::CStr::from_ptr(v) }.to_bytes();
    if bytes == b"single" {
        TaskCacheMode::Single
    } else {
        TaskCacheMode::PerNode
    }
}

/// The process's controller (made on first use): its topology comes from
/// sysfs, or from `MEMCG_TOPOLOGY` (e.g. `2x1`) when set; its task cache
/// is the per-node cache, or the pre-seed single cache with
/// `MEMCG_TASK_CACHE=single`.
///
/// # Examples
/// ```
/// let ctrl = memcg::controller();
/// assert!(ctrl.topology().nr_cpus() >= 1);
/// assert!(ctrl.root().is_root());
/// ```
pub fn controller() -> &'static Controller {
    loop {
        if let Some(c) = controller_or_init() {
            return c;
        }
        // Another thread is initialising: it finishes without waiting on us.
        std::thread::yield_now();
    }
}

/// How the runtime learns the current CPU: `"rseq"` (glibc's restartable
/// sequences area), `"rdpid"` or `"getcpu"` (`sched_getcpu`); chosen once.
/// `MEMCG_CPU_MODE=rseq|rdpid|getcpu` forces one (for testing).
pub fn cpu_id_source() -> &'static str {
    crate::runtime::cpu::mode().name()
}

/// The CPU id this thread charges on now: the id its CPU source
/// ([`cpu_id_source`]) reads, mapped into the controller's topology (the
/// same id on the real topology; see `MEMCG_TOPOLOGY` for a virtual one).
/// Charges made now go to the objcg of [`current_node_id`]. Makes the
/// controller on first use. For diagnostics and checks: a thread may move
/// to another CPU right after.
///
/// ```
/// let cpu = memcg::current_cpu_id();
/// assert!(memcg::controller().topology().node_of(cpu).is_ok());
/// ```
pub fn current_cpu_id() -> usize {
    let _ = controller();
    current_cpu()
}

/// The node of [`current_cpu_id`] in the controller's topology: the node
/// whose objcg this thread's allocations are charged to now.
pub fn current_node_id() -> usize {
    controller()
        .topology()
        .node_of(current_cpu_id())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_initialization_copied_from_another_process_is_stale() {
        let parent = 4_194_303; // the largest pid Linux gives
        let word = initializing_word(parent);
        assert_eq!(word & STATE_BITS, INITIALIZING);
        assert!(!initialization_is_stale(word, parent), "the maker's own");
        assert!(initialization_is_stale(word, 77), "a forked child's copy");
        assert!(!initialization_is_stale(UNINIT, 77));
        assert!(!initialization_is_stale(READY, 77));
        assert_ne!(word, READY);
    }
}
