// The thread-exit tests shared by `alloc_thread_exit.rs` (`MemcgAlloc`)
// and `alloc_heaps_thread_exit.rs` (`MemcgMimalloc`), included by both with
// `include!`. The including binary sets the global allocator, declares
// `mod common;` and defines `charged(size) -> u64`.

use std::cell::RefCell;

use common::assert_invariants_settle;

struct LateAllocator(Vec<u8>);

impl Drop for LateAllocator {
    fn drop(&mut self) {
        // Runs during thread teardown, possibly after memcg's guard.
        let extra = vec![1u8; 10_000];
        self.0.extend_from_slice(&extra);
        drop(extra);
    }
}

/// The tests of this binary check the invariants of the process-wide
/// controller, which is exact only while no other test charges.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

thread_local! {
    static LATE: RefCell<Option<LateAllocator>> = const { RefCell::new(None) };
}

#[test]
fn allocations_in_late_tls_destructors_are_balanced() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = memcg::controller();
    let g = ctrl.create("exit").unwrap();
    let g2 = g.clone();
    std::thread::spawn(move || {
        // Touch the late TLS before the first allocation of memcg's own
        // state would register its guard... and after, in a second thread.
        LATE.with(|l| *l.borrow_mut() = Some(LateAllocator(Vec::with_capacity(16))));
        g2.attach_current().unwrap();
        let keep = vec![0u8; 5000];
        // `black_box`: the optimizer may remove an allocation nothing reads.
        std::mem::forget(std::hint::black_box(keep.clone()));
        drop(keep);
    })
    .join()
    .unwrap();
    let g3 = g.clone();
    std::thread::spawn(move || {
        g3.attach_current().unwrap();
        let v = vec![0u8; 3000];
        LATE.with(|l| *l.borrow_mut() = Some(LateAllocator(v)));
    })
    .join()
    .unwrap();
    ctrl.drain_stocks();
    // Only the forgotten block is still alive in the group.
    assert_eq!(g.stats().stat.alloc_bytes, charged(5000));
    assert_invariants_settle();
}

extern "C" fn raw_thread(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `arg` points to the `Group` the spawner keeps alive until join.
    let g: &memcg::Group = unsafe { &*(arg as *const memcg::Group) };
    // Register the late destructor before memcg's guard exists, so the
    // guard runs first at exit and the late destructor sees a torn-down
    // thread.
    LATE.with(|l| drop(l.borrow_mut().take()));
    g.attach_current().unwrap();
    let v = vec![0u8; 3000];
    LATE.with(|l| *l.borrow_mut() = Some(LateAllocator(v)));
    std::ptr::null_mut()
}

#[test]
fn raw_pthread_late_destructor_after_guard_is_balanced() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = memcg::controller();
    let g = ctrl.create("exit-raw").unwrap();
    let mut tid: libc::pthread_t = 0;
    // SAFETY: `raw_thread` has the pthread signature; `g` outlives the
    // thread because we join it before returning.
    let rc = unsafe {
        libc::pthread_create(
            &mut tid,
            std::ptr::null(),
            raw_thread,
            &g as *const memcg::Group as *mut libc::c_void,
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: `tid` is a joinable thread made above.
    assert_eq!(unsafe { libc::pthread_join(tid, std::ptr::null_mut()) }, 0);
    ctrl.drain_stocks();
    assert_eq!(g.stats().stat.alloc_bytes, 0);
    assert_eq!(g.current_bytes(), 0);
    assert_invariants_settle();
}
