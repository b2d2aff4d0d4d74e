//! Memory for task caches, taken from the system allocator.
//!
//! The seed allocates the per-node objcg array at fork so that the refresh
//! never allocates from inside an allocation path. Here the array and the
//! task's shared block come from [`std::alloc::System`] directly, never
//! through the global allocator, which may be memcg's own accounting
//! adapter: creating a task from inside `GlobalAlloc::alloc` must not
//! recurse into accounting.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;

use crate::sync::{AtomicUsize, Ordering};

/// A reference-counted `T` in system-allocator memory (an `Arc` that never
/// touches the global allocator).
///
/// # Invariants
/// `ptr` points to a live `Inner<T>` allocated by `System` with
/// `Layout::new::<Inner<T>>()`, whose `refs` counts the `SysArc`s pointing
/// to it.
pub(crate) struct SysArc<T> {
    ptr: NonNull<Inner<T>>,
}

struct Inner<T> {
    refs: AtomicUsize,
    value: T,
}

// SAFETY: a `SysArc<T>` gives shared access to `T` from several threads and
// drops `T` on whichever thread releases the last reference, exactly like
// `Arc<T>`, so it needs the same bounds.
unsafe impl<T: Send + Sync> Send for SysArc<T> {}
// SAFETY: as above: `&SysArc<T>` only hands out `&T`.
unsafe impl<T: Send + Sync> Sync for SysArc<T> {}

impl<T> SysArc<T> {
    /// Moves `value` into system memory; `None` when the system allocator
    /// is out of memory (the caller falls back, as the seed does when
    /// `kcalloc` fails at fork).
    pub(crate) fn try_new(value: T) -> Option<Self> {
        let layout = Layout::new::<Inner<T>>();
        // SAFETY: `Inner<T>` contains an `AtomicUsize`, so its size is non-zero.
        let raw = unsafe { System.alloc(layout) } as *mut Inner<T>;
        let ptr = NonNull::new(raw)?;
        // SAFETY: `raw` is a fresh allocation of the right layout.
        unsafe {
            raw.write(Inner {
                refs: AtomicUsize::new(1),
                value,
            })
        };
        Some(SysArc { ptr })
    }

    /// Whether two handles share one allocation.
    pub(crate) fn ptr_eq(a: &Self, b: &Self) -> bool {
        a.ptr == b.ptr
    }
}

impl<T> std::ops::Deref for SysArc<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: by the type invariant the allocation lives while `self` does.
        unsafe { &self.ptr.as_ref().value }
    }
}

impl<T> Clone for SysArc<T> {
    fn clone(&self) -> Self {
        // SAFETY: the allocation is live (type invariant).
        let inner = unsafe { self.ptr.as_ref() };
        // Relaxed: a new reference is made from an existing one, which keeps
        // the allocation alive; as in `Arc::clone`.
        inner.refs.fetch_add(1, Ordering::Relaxed);
        SysArc { ptr: self.ptr }
    }
}

impl<T> Drop for SysArc<T> {
    fn drop(&mut self) {
        // SAFETY: the allocation is live until the last reference goes.
        let inner = unsafe { self.ptr.as_ref() };
        // AcqRel: the Release publishes this thread's uses of `T` to the
        // thread that frees; the Acquire on the last decrement sees them all.
        // (No loom model fails without it: loom does not see the plain
        // memory it orders, nor the free.)
        if inner.refs.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let raw = self.ptr.as_ptr();
        // SAFETY:
        // - this was the last reference, so nobody else can reach `raw`;
        // - `raw` was allocated by `System` with this layout (type invariant).
        unsafe {
            std::ptr::drop_in_place(raw);
            System.dealloc(raw as *mut u8, Layout::new::<Inner<T>>());
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for SysArc<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// A fixed-length array of `T` in system-allocator memory, handled through
/// a raw pointer so it can live in a tagged atomic word (the seed's
/// `task->objcgs`).
pub(crate) struct SysSlice;

impl SysSlice {
    /// Allocates `len` elements made by `make`; `None` on out of memory or
    /// `len == 0`.
    pub(crate) fn try_alloc<T>(len: usize, mut make: impl FnMut() -> T) -> Option<NonNull<T>> {
        let layout = Layout::array::<T>(len).ok()?;
        if layout.size() == 0 {
            return None;
        }
        // SAFETY: the size is non-zero (checked above).
        let raw = unsafe { System.alloc(layout) } as *mut T;
        let ptr = NonNull::new(raw)?;
        for i in 0..len {
            // SAFETY: `i < len`, inside the allocation just made.
            unsafe { raw.add(i).write(make()) };
        }
        Some(ptr)
    }

    /// Drops and frees an array made by [`SysSlice::try_alloc`].
    ///
    /// # Safety
    /// `ptr` and `len` come from one `try_alloc::<T>(len, ..)` call, the
    /// array is not used afterwards, and it is freed once.
    pub(crate) unsafe fn free<T>(ptr: NonNull<T>, len: usize) {
        let raw = ptr.as_ptr();
        // SAFETY: the caller guarantees `ptr` holds `len` initialised `T`s
        // that nobody else uses.
        unsafe { std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(raw, len)) };
        if let Ok(layout) = Layout::array::<T>(len) {
            // SAFETY: allocated by `System` with exactly this layout.
            unsafe { System.dealloc(raw as *mut u8, layout) };
        }
    }

    /// Borrows the array.
    ///
    /// # Safety
    /// `ptr` and `len` come from one live `try_alloc::<T>(len, ..)` array
    /// that stays allocated for `'a`.
    pub(crate) unsafe fn as_slice<'a, T>(ptr: NonNull<T>, len: usize) -> &'a [T] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(ptr.as_ptr(), len) }
    }
}
