//! `fork()` without exec: the engine at rest in the copy, a usable child.
//!
//! Handlers registered with `pthread_atfork` when the process's controller
//! is made (before anything else of it, so that a fork while another
//! thread initialises it waits for the controller rather than copying it
//! half made):
//!
//! - **prepare** (the forking thread, before the copy):
//!   1. waits until the controller is made, if another thread is making it;
//!   2. closes the fork gate (`sync::fork_gate`): every engine lock and
//!      every slow path is entered through it, so once it is closed no
//!      other thread holds an engine lock or is half-way through a
//!      multi-step update, and new ones wait;
//!   3. stops the allocator's hit path, which does not enter the gate:
//!      clears every task's fast key (a charge then takes the slow path,
//!      which waits) and stops every task's frees and resizes (their
//!      `hit_addr`, read after they mark themselves busy), issues a
//!      process-wide memory barrier (`membarrier`) so that each thread
//!      either sees the key and the flag or shows its busy mark; then
//!      waits until no task's thread is busy. The parent handler resumes
//!      them; in the child only the forking thread's task
//!      remains, and it was never stopped.
//!
//!   4. takes the reclaimer's queue lock and holds it across the copy: the
//!      condvars wait with that lock, and a waiter woken during the fork
//!      re-takes it before it can see the closed gate.
//!
//!   The lock order is therefore: the gate first (it excludes every engine
//!   lock), then the task list (taken by the prepare handler itself to
//!   reach the tasks), then the reclaimer's queue.
//! - **parent**: opens the gate; waiting threads go on.
//! - **child** (one thread, the forking one): the tasks of the threads that
//!   did not survive are retired as their exit would have (byte caches and
//!   references returned, scopes ended, groups unpinned, removed from the
//!   task list); the reclaimer threads are forgotten, the groups they were
//!   serving unmarked, and they start again on the next library call made
//!   outside an allocation (or the next registration); then the gate opens.
//!
//! A fork made while the forking thread itself is inside the library (from
//! a reclaim callback, say) cannot wait for the gate and proceeds: the
//! child then may inherit a held lock, as with any allocator.

use crate::runtime::global;
use crate::sync::{fork_gate, AtomicBool, AtomicU8, Ordering};

/// `membarrier(2)` commands (`linux/membarrier.h`).
const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

/// How [`process_barrier`] makes every thread execute a full barrier.
const BARRIER_UNKNOWN: u8 = 0;
const BARRIER_PRIVATE_EXPEDITED: u8 = 1;
const BARRIER_GLOBAL: u8 = 2;
const BARRIER_MPROTECT: u8 = 3;

static BARRIER: AtomicU8 = AtomicU8::new(BARRIER_UNKNOWN);

/// The handlers are registered (once per process; a child inherits them).
static REGISTERED: AtomicBool = AtomicBool::new(false);

/// Set in a child whose parent had reclaimer threads running.
static RESTART_RECLAIMERS: AtomicBool = AtomicBool::new(false);

/// Registers the fork handlers and chooses the barrier. Called by the
/// controller's initialisation, first; may allocate (glibc's handler list),
/// which the caller's busy mark sends to the bypass.
pub(crate) fn register() {
    if REGISTERED.swap(true, Ordering::AcqRel) {
        return;
    }
    choose_barrier();
    // SAFETY: three `extern "C"` functions with no arguments, valid for
    // the whole process.
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if rc != 0 {
        // Out of memory in glibc: forks stay as unsafe as without memcg.
        REGISTERED.store(false, Ordering::Release);
    }
}

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: `membarrier(cmd, flags = 0, cpu_id = 0)` touches no memory
    // of ours; an unknown command fails with EINVAL.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) }
}

fn choose_barrier() {
    let supported = membarrier(MEMBARRIER_CMD_QUERY);
    let mode = if supported >= 0
        && supported & libc::c_long::from(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0
        && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    {
        BARRIER_PRIVATE_EXPEDITED
    } else if supported >= 0 && supported & libc::c_long::from(MEMBARRIER_CMD_GLOBAL) != 0 {
        BARRIER_GLOBAL
    } else {
        BARRIER_MPROTECT
    };
    BARRIER.store(mode, Ordering::Release);
}

/// The name of the barrier chosen (for tests and diagnostics).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn barrier_name() -> &'static str {
    match BARRIER.load(Ordering::Acquire) {
        BARRIER_PRIVATE_EXPEDITED => "membarrier-private-expedited",
        BARRIER_GLOBAL => "membarrier-global",
        BARRIER_MPROTECT => "mprotect",
        _ => "none",
    }
}

/// Makes every running thread of the process execute a full memory
/// barrier before it returns (the heavy side of an asymmetric fence: the
/// hit path's side is a compiler fence).
fn process_barrier() {
    let done = match BARRIER.load(Ordering::Acquire) {
        BARRIER_PRIVATE_EXPEDITED => membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0,
        BARRIER_GLOBAL => membarrier(MEMBARRIER_CMD_GLOBAL) == 0,
        _ => false,
    };
    if !done {
        mprotect_barrier();
    }
}

/// The barrier without `membarrier`: write-protecting a page the calling
/// thread has dirtied makes the kernel shoot down its translation on every
/// CPU that runs a thread of the process, an interrupt that serialises
/// each of them (the technique runtimes without `membarrier` use).
fn mprotect_barrier() {
    let page = crate::limit::PAGE_SIZE as usize;
    // SAFETY: an anonymous private mapping of one page, written, protected
    // and unmapped here; nothing else sees it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return;
        }
        std::ptr::write_volatile(p.cast::<u8>(), 1);
        libc::mprotect(p, page, libc::PROT_READ);
        libc::munmap(p, page);
    }
}

/// The address of the calling thread's task (0 if it has none).
fn my_task() -> usize {
    crate::runtime::thread::current_task_addr()
}

/// Held from a fork's prepare handler to its parent and child handlers:
/// forks from two threads at once take turns (one fork's parent handler
/// must not open the gate while the other's copy is being made).
static FORKING: AtomicBool = AtomicBool::new(false);

extern "C" fn prepare() {
    global::wait_while_initializing();
    if fork_gate::depth() > 0 || crate::runtime::thread::is_busy_now() {
        // Forking from inside the library (a callback): cannot wait for
        // itself. Nothing is closed; `parent`/`child` see that.
        SKIPPED.with(|s| s.set(true));
        return;
    }
    while FORKING
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::thread::yield_now();
    }
    fork_gate::close();
    let Some(ctrl) = global::try_controller() else {
        return;
    };
    let me = my_task();
    ctrl.for_each_other_owned_task(me, |t| {
        t.cache.fast_key.store(0, Ordering::Relaxed);
        t.cache.stop_hits();
    });
    process_barrier();
    ctrl.for_each_other_owned_task(me, |t| {
        let state = t.owner_state.load(Ordering::Acquire);
        if state == 0 {
            return;
        }
        // SAFETY: a registered state address is the owning thread's
        // runtime state (a thread-local); the thread is alive (its task is
        // still on the list, which its exit leaves under the lock held
        // here).
        while unsafe { crate::runtime::thread::busy_at(state) } {
            std::thread::yield_now();
        }
    });
    // The lock the reclaimer's condvars wait with: a waiter woken now takes
    // it back before it sees the closed gate (and then lets it go), so it
    // is held here across the copy instead (lock order: the gate, the task
    // list, the reclaimer's queue).
    ctrl.hold_reclaimer_for_fork();
    HELD.store(true, Ordering::Relaxed);
    // The hit paths that ended above made their last stores before their
    // busy mark went; make them visible before the copy.
    process_barrier();
}

/// The prepare handler holds the reclaimer's queue lock (only the thread
/// holding `FORKING` reads or writes it).
static HELD: AtomicBool = AtomicBool::new(false);

/// Lets the reclaimer's queue lock go, if the prepare handler took it.
fn release_held() {
    if HELD.swap(false, Ordering::Relaxed) {
        crate::Controller::release_reclaimer_after_fork();
    }
}

std::thread_local! {
    /// The prepare handler of this thread's fork did not close the gate
    /// (see the module docs). Per thread: two threads may fork at once.
    static SKIPPED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

extern "C" fn parent() {
    if SKIPPED.with(|s| s.replace(false)) {
        return;
    }
    release_held();
    if let Some(ctrl) = global::try_controller() {
        ctrl.for_each_other_owned_task(my_task(), |t| {
            t.cache.resume_hits();
        });
    }
    fork_gate::open();
    FORKING.store(false, Ordering::Release);
}

extern "C" fn child() {
    if SKIPPED.with(|s| s.replace(false)) {
        return;
    }
    fork_gate::reset_in_child();
    // Before the reclaimer's reset, which takes that lock.
    release_held();
    if let Some(ctrl) = global::try_controller() {
        let me = my_task();
        // SAFETY: this is the child right after `fork`, on its only thread;
        // the other registered tasks belong to threads of the parent.
        let retired = unsafe { ctrl.retire_orphans_in_child(me) };
        RETIRED.store(retired as u64, Ordering::Relaxed);
        if ctrl.reset_reclaimers_in_child() {
            RESTART_RECLAIMERS.store(true, Ordering::Release);
        }
    }
    fork_gate::open();
    FORKING.store(false, Ordering::Release);
}

/// Tasks retired by the last fork's child handler (in the child).
#[allow(clippy::disallowed_types)]
static RETIRED: crate::sync::AtomicU64 = crate::sync::AtomicU64::new(0);

/// In a forked child, how many tasks of the parent's other threads the
/// child handler retired (0 in a process that was not forked, or whose
/// parent had no other threads with tasks).
pub fn tasks_retired_after_fork() -> u64 {
    RETIRED.load(Ordering::Relaxed)
}

/// In a child whose parent ran reclaimer threads: starts them again, once.
/// Called by library calls made outside an allocation.
#[inline]
pub(crate) fn restart_reclaimers_if_needed() {
    if RESTART_RECLAIMERS.load(Ordering::Relaxed)
        && RESTART_RECLAIMERS.swap(false, Ordering::AcqRel)
    {
        if let Some(ctrl) = global::try_controller() {
            ctrl.restart_reclaimers();
        }
    }
}

/// A thread's exit span: from its exit guard (`runtime::thread`), which
/// runs among the thread's TLS destructors, to the end of its pthread key
/// destructors, the thread stays inside the fork gate, so a fork waits for
/// the whole span. The inner allocator's own thread teardown runs in that
/// span, from a pthread key destructor (mimalloc's `mi_thread_done` frees
/// the thread's heaps under the heaps' locks): a fork copied mid-way
/// through it would leave those locks held in the child, whose next
/// thread then hangs in the allocator's thread initialisation (seen: 1
/// child in about 24,000 forked while threads exited).
///
/// glibc runs TLS destructors first, then the key destructors in rounds
/// (at most [`DESTRUCTOR_ROUNDS`]), each round in key order. The span's
/// key is made at the first thread exit, after the inner allocator made
/// its key (it allocated before any thread could exit), so its destructor
/// runs after the allocator's in every round; it sets its value again
/// until the last round, in case a destructor allocates again and so
/// brings the allocator's back. While inside the span the thread's own
/// gate entries are nested: its allocations and frees never wait for a
/// fork that waits for them.
///
/// If the key cannot be made (the process's keys are all taken) the span
/// ends with the exit guard, as before: the allocator's teardown is then
/// as fork-unsafe as the allocator itself.
const DESTRUCTOR_ROUNDS: u8 = 4;

/// The span's key: [`KEY_NONE`], [`KEY_MAKING`], [`KEY_FAILED`], or
/// [`KEY_READY`] ORed with the key.
#[allow(clippy::disallowed_types)]
static EXIT_KEY: crate::sync::AtomicU64 = crate::sync::AtomicU64::new(KEY_NONE);
const KEY_NONE: u64 = 0;
const KEY_MAKING: u64 = 1;
const KEY_FAILED: u64 = 2;
const KEY_READY: u64 = 1 << 32;

std::thread_local! {
    /// How many times this thread's span destructor ran (no destructor of
    /// its own: readable during teardown).
    static SPAN_ROUNDS: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// The span's key, made on first use; `None` if it cannot be made.
fn exit_key() -> Option<libc::pthread_key_t> {
    loop {
        let k = EXIT_KEY.load(Ordering::Acquire);
        if k & KEY_READY != 0 {
            return Some(k as libc::pthread_key_t);
        }
        match k {
            KEY_FAILED => return None,
            KEY_MAKING => std::thread::yield_now(),
            _ => {
                if EXIT_KEY
                    .compare_exchange(KEY_NONE, KEY_MAKING, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    continue;
                }
                let mut key: libc::pthread_key_t = 0;
                // SAFETY: writes a new key to a local; the destructor is an
                // `extern "C"` function valid for the whole process.
                let rc = unsafe { libc::pthread_key_create(&mut key, Some(end_exit_span)) };
                let v = if rc == 0 {
                    KEY_READY | u64::from(key)
                } else {
                    KEY_FAILED
                };
                EXIT_KEY.store(v, Ordering::Release);
            }
        }
    }
}

/// Sets the span key's value for this thread (so that its destructor
/// runs); whether it could.
fn arm_exit_key(key: libc::pthread_key_t) -> bool {
    // SAFETY: a key made by `exit_key`; the value is a non-null marker,
    // never dereferenced.
    unsafe { libc::pthread_setspecific(key, std::ptr::dangling::<libc::c_void>()) == 0 }
}

/// Called by the exit guard with its gate entry: keeps the thread inside
/// the gate until [`end_exit_span`], or lets the entry go (dropping it)
/// when the key cannot be armed.
pub(crate) fn begin_exit_span(entry: fork_gate::Entered) {
    let Some(key) = exit_key() else {
        return;
    };
    if SPAN_ROUNDS.with(|r| r.get()) != 0 || !arm_exit_key(key) {
        // Armed already (a second exit guard cannot run), or no memory
        // for the value: the entry ends here.
        return;
    }
    SPAN_ROUNDS.with(|r| r.set(1));
    entry.keep();
}

/// The span key's destructor: sets the value again until the last round,
/// then leaves the gate.
extern "C" fn end_exit_span(_value: *mut libc::c_void) {
    let round = SPAN_ROUNDS.with(|r| r.get());
    if round == 0 {
        return;
    }
    if round < DESTRUCTOR_ROUNDS {
        if let Some(key) = exit_key() {
            if arm_exit_key(key) {
                SPAN_ROUNDS.with(|r| r.set(round + 1));
                return;
            }
        }
    }
    SPAN_ROUNDS.with(|r| r.set(0));
    fork_gate::leave_kept();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_registers_the_handlers_and_a_barrier() {
        let _ = crate::controller();
        assert!(REGISTERED.load(Ordering::Acquire));
        assert_ne!(barrier_name(), "none");
        // Each barrier works when called directly.
        process_barrier();
        mprotect_barrier();
    }
}
