//! Allocations from a signal handler that interrupts the allocator.
//!
//! `MemcgAlloc`'s per-thread state is plain thread-local memory updated
//! without atomics, so a handler that allocates while the interrupted code
//! is half-way through a charge would corrupt it, unless the re-entrancy
//! flag sends the handler's allocation elsewhere (`runtime/thread.rs`: the
//! `BUSY` bit; nested calls charge root lock-free). This binary makes that
//! happen thousands of times: a profiling timer fires while the main thread
//! allocates and frees in a loop, and the handler allocates, frees, and
//! keeps one block alive across invocations. At the end every counter must
//! balance exactly. (With the fast path's `BUSY` store removed, this test
//! fails: conservation, object and reference-count violations.)
//!
//! glibc's `malloc` is not async-signal-safe, so the inner allocator here
//! is a lock-free bump arena that never frees (signal-safe by
//! construction); the test is about memcg's layer, not the inner one.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use memcg::MemcgAlloc;

mod common;
use common::assert_invariants_settle;

/// Bytes of the arena (zero pages until touched).
const ARENA_BYTES: usize = 256 << 20;

/// A lock-free bump allocator over a static arena; `dealloc` does nothing.
struct Bump {
    next: AtomicUsize,
    arena: UnsafeCell<[u8; ARENA_BYTES]>,
}

// SAFETY: the arena is only handed out in disjoint blocks, reserved by an
// atomic bump of `next`.
unsafe impl Sync for Bump {}

// SAFETY: blocks are disjoint (each reserved by one successful CAS on
// `next`), inside the arena, aligned as asked; null when the arena is full.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.arena.get() as *mut u8;
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let start = (base as usize + cur).next_multiple_of(layout.align()) - base as usize;
            let end = start + layout.size();
            if end > ARENA_BYTES {
                return std::ptr::null_mut();
            }
            match self
                .next
                .compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                // SAFETY: `start..end` is inside the arena.
                Ok(_) => return unsafe { base.add(start) },
                Err(now) => cur = now,
            }
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOC: MemcgAlloc<Bump> = MemcgAlloc::new(Bump {
    next: AtomicUsize::new(0),
    arena: UnsafeCell::new([0; ARENA_BYTES]),
});

/// Handler invocations.
static SIGNALS: AtomicU64 = AtomicU64::new(0);
/// A block the handler keeps alive between invocations (freed by the
/// next), of a size that changes every time, so that each invocation
/// leaves a net charge or uncharge: a lost update of the interrupted
/// code's thread-local state would then show in the totals.
static KEPT: AtomicPtr<Vec<u8>> = AtomicPtr::new(std::ptr::null_mut());

/// Handler runs under way (see [`stop_handlers`]).
static IN_HANDLER: AtomicU64 = AtomicU64::new(0);
/// Set once the timer is gone: a late signal's handler does nothing.
static STOPPED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigprof(_: libc::c_int) {
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    if !STOPPED.load(Ordering::SeqCst) {
        handler_work();
    }
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
}

/// After the timer is deleted: no handler does anything any more, and none
/// is half-way through. A signal generated before the timer went can still
/// be delivered later, under load long after: its handler freeing the kept
/// block while the test reads the group's figures made one run in CI see
/// the group hold 32 bytes (the kept block's `Box`, freed after its
/// buffer) more than the main thread. With SeqCst on both sides, either
/// the handler sees the flag or this sees the handler's count.
fn stop_handlers() {
    STOPPED.store(true, Ordering::SeqCst);
    while IN_HANDLER.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
}

fn handler_work() {
    let n = SIGNALS.fetch_add(1, Ordering::Relaxed) as usize;
    if IN_CALL.load(Ordering::Relaxed) {
        SIGNALS_IN_CALL.fetch_add(1, Ordering::Relaxed);
    }
    // Allocate and free inside the handler...
    let scratch = black_box(vec![7u8; 100]);
    drop(scratch);
    // ...and keep one block alive until the next invocation frees it.
    let fresh = Box::into_raw(Box::new(vec![1u8; 16 + (n % 7) * 40]));
    let old = KEPT.swap(fresh, Ordering::Relaxed);
    if !old.is_null() {
        // SAFETY: made by `Box::into_raw` in an earlier invocation and
        // swapped out exactly once.
        drop(unsafe { Box::from_raw(old) });
    }
}

/// A `CLOCK_MONOTONIC` timer (high resolution) that sends `SIGPROF` to
/// the calling thread every `micros` µs. To this thread only
/// (`SIGEV_THREAD_ID`): a signal sent to the process can run the handler
/// on any thread, whose free of a block charged to the test's group then
/// sits in that thread's unflushed statistics, and the group's figures
/// read by the test are off by it (seen as 17–31 KiB in a CI run).
struct Timer(libc::timer_t);

impl Timer {
    fn start(micros: i64) -> Timer {
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: a zeroed `sigevent` is valid; we fill notify and signo.
        let rc = unsafe {
            let mut sev: libc::sigevent = std::mem::zeroed();
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = libc::SIGPROF;
            sev.sigev_notify_thread_id = libc::gettid();
            libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id)
        };
        assert_eq!(rc, 0, "timer_create");
        let t = libc::timespec {
            tv_sec: 0,
            tv_nsec: micros * 1000,
        };
        let spec = libc::itimerspec {
            it_interval: t,
            it_value: t,
        };
        // SAFETY: `id` is the timer just made; the old value is not wanted.
        let rc = unsafe { libc::timer_settime(id, 0, &spec, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "timer_settime");
        Timer(id)
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        // SAFETY: the timer made in `start`, deleted once.
        unsafe { libc::timer_delete(self.0) };
    }
}

fn install_handler() {
    // SAFETY: a zeroed `sigaction` is valid; the handler is an
    // `extern "C" fn(c_int)` and `SA_RESTART` keeps syscalls going.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigprof as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut()), 0);
    }
}

/// Bytes a block of `size` bytes is charged: its size plus the trailer.
fn charged(size: usize) -> u64 {
    (size + memcg::TRAILER_BYTES) as u64
}

/// After the handlers stopped: `g` (the group the test thread is attached
/// to) holds exactly `held` bytes, plus the handler's last kept block if
/// that was charged here (the handler interrupted the thread outside the
/// library and its charges) rather than to root; then frees that block.
///
/// The group's statistics may lag (another thread's batched statistics of
/// a free reach the group when that thread flushes; seen in release builds
/// after library calls, with the invariants exact meanwhile): the figure
/// is read again, after a pause, until it matches or a second has passed.
fn assert_group_holds(ctrl: &memcg::Controller, g: &memcg::Group, held: u64) {
    let kept = KEPT.swap(std::ptr::null_mut(), Ordering::Relaxed);
    let kept_bytes = if kept.is_null() {
        0
    } else {
        // SAFETY: made by `Box::into_raw` in the handler; read only.
        charged(std::mem::size_of::<Vec<u8>>()) + charged(unsafe { &*kept }.capacity())
    };
    let settled = |live: u64| live == held || live == held + kept_bytes;
    let mut live = u64::MAX;
    for _ in 0..100 {
        memcg::flush_current();
        ctrl.drain_stocks();
        live = g.stats().stat.alloc_bytes;
        if settled(live) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        settled(live),
        "group live bytes {live}, the test thread holds {held} (+{kept_bytes} if the handler's block is here); {:?}",
        g.stats().stat,
    );
    if !kept.is_null() {
        // SAFETY: made by `Box::into_raw` in the handler, swapped out once.
        drop(unsafe { Box::from_raw(kept) });
    }
}

/// The tests of this binary share the handler, the timer's signal and
/// [`KEPT`]: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Starts a test: one at a time, handlers enabled.
fn begin() -> std::sync::MutexGuard<'static, ()> {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    STOPPED.store(false, Ordering::SeqCst);
    install_handler();
    serial
}

#[test]
fn signal_handler_allocations_interrupting_charges_keep_every_counter_balanced() {
    let _serial = begin();
    let ctrl = memcg::controller();
    let g = ctrl.create("signals").expect("group");
    g.attach_current().expect("attach");
    let timer = Timer::start(20);

    // The main thread's own live set: a ring of blocks of varied sizes.
    let mut ring: Vec<Option<Vec<u8>>> = vec![None; 64];
    let mut rounds = 0u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    // Stop at a third of the arena (it never reuses memory; the other test
    // of the binary takes at most another third) or after the deadline.
    let arena_start = ALLOC.inner().next.load(Ordering::Relaxed);
    while ALLOC.inner().next.load(Ordering::Relaxed) - arena_start < ARENA_BYTES / 3
        && std::time::Instant::now() < deadline
    {
        for i in 0..10_000usize {
            let size = 8 + (i * 37) % 300;
            ring[i % 64] = Some(black_box(vec![0u8; size]));
            drop(black_box(Box::new([0u64; 4])));
        }
        rounds += 1;
    }
    drop(timer);
    stop_handlers();
    let signals = SIGNALS.load(Ordering::Relaxed);
    assert!(
        signals > 100,
        "only {signals} signals in {rounds} rounds: the test did not interrupt the allocator"
    );

    // What the main thread still holds.
    let held: u64 = charged(ring.capacity() * std::mem::size_of::<Option<Vec<u8>>>())
        + ring
            .iter()
            .flatten()
            .map(|v| charged(v.capacity()))
            .sum::<u64>();
    assert_group_holds(ctrl, &g, held);
    drop(ring);
    memcg::flush_current();
    ctrl.drain_stocks();
    assert_eq!(g.stats().stat.alloc_bytes, 0, "everything freed");
    ctrl.root().attach_current().expect("attach root");
    assert_invariants_settle();
    eprintln!("{signals} signals over {rounds} rounds of 10 000 allocations");
}

/// A round of library calls on a child of `calls`, each inside
/// [`in_call`].
fn library_calls(ctrl: &memcg::Controller, round: u64) {
    let name = format!("calls/c{}", round % 4);
    let child = in_call(|| ctrl.create(&name)).expect("create");
    in_call(|| child.set_max(memcg::Limit::Bytes(1 << 30))).expect("set_max");
    in_call(|| child.set_high(memcg::Limit::Bytes(1 << 29))).expect("set_high");
    {
        let _scope = in_call(|| child.enter()).expect("scope");
        drop(black_box(vec![3u8; 64 + (round as usize % 5) * 100]));
    }
    let reservation = in_call(|| child.try_charge(10_000)).expect("reservation");
    in_call(|| drop(reservation));
    black_box(in_call(|| child.stats()));
    in_call(|| ctrl.drain_stocks());
    in_call(|| child.remove()).expect("remove");
    if round.is_multiple_of(64) {
        // Its result is not checked here: handlers may charge while it
        // runs (it is exact only at rest).
        let _ = black_box(in_call(memcg::check_invariants));
    }
}

/// The main thread is inside a library call (set around each call).
static IN_CALL: AtomicBool = AtomicBool::new(false);
/// Handler runs that interrupted the main thread inside a library call.
static SIGNALS_IN_CALL: AtomicU64 = AtomicU64::new(0);

/// Runs `f` with [`IN_CALL`] set.
fn in_call<R>(f: impl FnOnce() -> R) -> R {
    IN_CALL.store(true, Ordering::SeqCst);
    let r = f();
    IN_CALL.store(false, Ordering::SeqCst);
    r
}

/// A handler that allocates while the interrupted thread is inside a
/// library call (`create`, `remove` and limit writes under the tree or a
/// group's lock, scopes and reservations that update the thread's task,
/// `check_invariants` under the task list, the stock drain) must neither
/// take a lock the call holds nor update the thread's task half-way
/// through the call's own update: a thread is marked busy for the whole
/// call (and while it holds any engine lock), and the handler's
/// allocations then charge root lock-free. At the end no group is left
/// behind, the group the calls ran in holds exactly what the main thread
/// holds, and every invariant holds. (With the busy mark of library calls
/// removed, `runtime/thread.rs`'s `busy_in_gate`, this test fails on its
/// first run: the handler's charge re-enters the task's objcg cache while
/// the interrupted call is updating it.)
#[test]
fn signal_handler_allocations_interrupting_library_calls_take_no_engine_lock() {
    let _serial = begin();
    let ctrl = memcg::controller();
    let g = ctrl.create("calls").expect("group");
    // One round from root first: what the calls make once for the whole
    // process (the reclaimer thread, lazily made statics) is charged to
    // whoever makes it (README, "What surprises users"), and would stay in
    // `calls` otherwise.
    library_calls(ctrl, 0);
    g.attach_current().expect("attach");
    let before = SIGNALS.load(Ordering::Relaxed);
    SIGNALS_IN_CALL.store(0, Ordering::Relaxed);
    let timer = Timer::start(20);
    let mut rounds = 0u64;
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(64);
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    let arena_start = ALLOC.inner().next.load(Ordering::Relaxed);
    while ALLOC.inner().next.load(Ordering::Relaxed) - arena_start < ARENA_BYTES / 3
        && std::time::Instant::now() < deadline
    {
        library_calls(ctrl, rounds);
        kept.push(vec![0u8; 8 + (rounds as usize * 13) % 200]);
        if kept.len() == 64 {
            kept.clear();
        }
        rounds += 1;
    }
    drop(timer);
    stop_handlers();
    let signals = SIGNALS.load(Ordering::Relaxed) - before;
    let in_calls = SIGNALS_IN_CALL.load(Ordering::Relaxed);
    assert!(
        in_calls > 10,
        "{signals} signals over {rounds} rounds, {in_calls} inside a library call: the test did not interrupt the library"
    );
    let held: u64 = charged(kept.capacity() * std::mem::size_of::<Vec<u8>>())
        + kept.iter().map(|v| charged(v.capacity())).sum::<u64>();
    assert_group_holds(ctrl, &g, held);
    drop(kept);
    ctrl.root().attach_current().expect("attach root");
    assert!(
        ctrl.stats().iter().all(|s| !s.path.starts_with("calls/")),
        "a child group of the test is left"
    );
    g.remove().expect("remove");
    assert_invariants_settle();
    eprintln!("{signals} signals over {rounds} rounds of library calls, {in_calls} inside a call");
}
