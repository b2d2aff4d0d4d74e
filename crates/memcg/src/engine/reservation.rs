//! Explicit, fallible reservations (`try_charge` → RAII guard), and
//! spending them: allocations paid from a reservation's bytes instead of
//! being charged a second time.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::engine::sys_alloc::SysArc;

use crate::engine::core::{check_size_or_zero, ChargeCtx, Core};
use crate::engine::memcg::ChargeKind;
use crate::engine::obj_cgroup::ObjCgroup;
use crate::error::Result;
use crate::sync::{AtomicU64, Ordering};

/// Bytes reserved for a group: charged when made, uncharged when dropped.
///
/// A reservation charges its group's page counters directly (no per-CPU
/// stock), in whole pages, and counts its exact bytes in the group's
/// `reservation` statistic. It holds a reference on its objcg, so it
/// survives the group's removal: its bytes then count against the parent.
///
/// # Spending
/// A reservation made for a buffer can pay for the buffer: while a spend
/// guard is active on a thread (`Reservation::spend` with the global
/// allocator, [`crate::engine::Task::spend`] in the engine), that thread's
/// allocations take their bytes from the reservation instead of being
/// charged again, and `memory.stat` moves those bytes from `reservation`
/// to `alloc`. The objects are then ordinary allocations of the
/// reservation's group and node: their frees uncharge as usual. An
/// allocation larger than what is left takes the rest and charges only
/// the difference (to the same group and node); once the reservation is
/// spent out, allocations charge normally. "Reserve, then build" counts
/// the memory once (an allocator's per-block overhead, such as
/// `MemcgAlloc`'s 8-byte trailer, is charged on top).
///
/// # Examples
/// ```
/// use memcg::{Controller, Limit, Topology};
/// let ctrl = Controller::new(Topology::single_node(1)?);
/// let g = ctrl.create("tenant")?;
/// g.set_max(Limit::Bytes(64 << 10))?;
/// let mut r = g.try_charge(16 << 10)?;
/// r.grow(16 << 10)?;
/// assert!(r.grow(1 << 20).is_err()); // over max: typed error, nothing changed
/// assert_eq!(r.bytes(), 32 << 10);
/// drop(r);
/// assert_eq!(g.current_bytes(), 0);
/// # Ok::<(), memcg::Error>(())
/// ```
#[must_use = "the reservation is released as soon as it is dropped"]
pub struct Reservation {
    /// Made by the system allocator, never charged: making a reservation
    /// allocates nothing that could meet the group's limit (or kill it).
    pub(crate) inner: SysArc<Reserved>,
}

/// The state of a reservation, shared with the task spending it (so that a
/// forgotten spend guard leaves a live reservation behind, never a
/// dangling one).
pub(crate) struct Reserved {
    core: Arc<Core>,
    objcg: NonNull<ObjCgroup>,
    /// Bytes still reserved (written by the owner and, while spent, by the
    /// spending task; the guard's `&mut` borrow keeps them apart).
    bytes: AtomicU64,
}

// SAFETY: the objcg lives in the controller's type-stable table, kept
// alive by `core`; the reservation owns one reference on it, and every
// operation on it goes through atomics.
unsafe impl Send for Reserved {}
// SAFETY: as above; shared access only reads or updates atomics.
unsafe impl Sync for Reserved {}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("bytes", &self.bytes())
            .field("group", &self.inner.objcg().memcg().path)
            .finish()
    }
}

impl std::fmt::Debug for Reserved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reserved")
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Reserved {
    pub(crate) fn objcg(&self) -> &ObjCgroup {
        // SAFETY: points into `core`'s type-stable table; this reservation
        // holds a reference on it.
        unsafe { self.objcg.as_ref() }
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Takes up to `bytes` of the reservation for allocations (of
    /// [`ChargeKind::Alloc`]) charged to its objcg: the bytes taken move
    /// from the `reservation` statistic to `alloc`. Returns how many were
    /// taken (0 when it is spent out).
    pub(crate) fn take_up_to(&self, bytes: u64) -> u64 {
        let taken = take_at_most(&self.bytes, bytes);
        if taken > 0 {
            self.move_bytes(ChargeKind::Reservation, ChargeKind::Alloc, taken);
        }
        taken
    }

    /// Undoes `take_up_to` of `bytes` (the rest of the object could not be
    /// charged).
    pub(crate) fn give_back(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.move_bytes(ChargeKind::Alloc, ChargeKind::Reservation, bytes);
    }

    fn move_bytes(&self, from: ChargeKind, to: ChargeKind, bytes: u64) {
        let objcg = self.objcg();
        self.core.account(None, objcg, from, -(bytes as i64));
        self.core.account(None, objcg, to, bytes as i64);
    }
}

impl Reservation {
    /// Charges `bytes` to `objcg` (the caller holds a reference on it).
    pub(crate) fn new(
        core: Arc<Core>,
        objcg: &ObjCgroup,
        bytes: u64,
        ctx: ChargeCtx,
    ) -> Result<Reservation> {
        check_size_or_zero(bytes)?;
        let _gate = crate::sync::fork_gate_enter();
        // The reservation's own reference (and its count, for the
        // invariants), taken first so that dropping `inner` on a refused
        // charge undoes them exactly.
        objcg.get(1);
        count_reservation(objcg, 1);
        let made = SysArc::try_new(Reserved {
            objcg: NonNull::from(objcg),
            core: Arc::clone(&core),
            bytes: AtomicU64::new(0),
        });
        let Some(inner) = made else {
            count_reservation(objcg, -1);
            core.objcg_put(objcg, 1);
            return Err(crate::error::Error::OutOfMemory {
                what: "a reservation",
            });
        };
        charge(&core, objcg, bytes, ctx)?;
        inner.bytes.store(bytes, Ordering::Relaxed);
        Ok(Reservation { inner })
    }

    /// Bytes reserved (what spending left, if it was spent).
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// Path of the group charged now (an ancestor once the original group
    /// was removed).
    pub fn group_path(&self) -> String {
        self.inner.objcg().memcg().path.to_string()
    }

    /// Reserves `bytes` more.
    ///
    /// # Errors
    /// [`crate::Error::Charge`] when a limit refuses after reclaim (the
    /// reservation is unchanged), [`crate::Error::InvalidSize`] past 2^48 bytes.
    pub fn grow(&mut self, bytes: u64) -> Result<()> {
        let total = self.bytes().saturating_add(bytes);
        check_size_or_zero(total)?;
        let ctx = ChargeCtx::direct(None);
        let _gate = crate::sync::fork_gate_enter();
        charge(&self.inner.core, self.inner.objcg(), bytes, ctx)?;
        self.inner.bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Releases `bytes` of the reservation (at most all of it).
    pub fn shrink(&mut self, bytes: u64) {
        let inner = &*self.inner;
        let _gate = crate::sync::fork_gate_enter();
        let taken = take_at_most(&inner.bytes, bytes);
        uncharge(&inner.core, inner.objcg(), taken);
    }
}

/// Subtracts up to `n` from `bytes` (never below 0); returns how much.
fn take_at_most(bytes: &AtomicU64, n: u64) -> u64 {
    let mut cur = bytes.load(Ordering::Relaxed);
    loop {
        let take = n.min(cur);
        if take == 0 {
            return 0;
        }
        match bytes.compare_exchange_weak(cur, cur - take, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return take,
            Err(actual) => cur = actual,
        }
    }
}

/// Adds `delta` to `objcg`'s count of live reservations.
fn count_reservation(objcg: &ObjCgroup, delta: i64) {
    // Relaxed: a statistic for the invariants, which read it exactly only
    // when nothing runs concurrently.
    objcg.live_reservations.fetch_add(delta, Ordering::Relaxed);
}

/// Charges `bytes` (with their references) to the reservation; the pages'
/// remainder goes back (to the pool, under a page), its references put.
fn charge(core: &Core, objcg: &ObjCgroup, bytes: u64, ctx: ChargeCtx) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    let remainder = core.charge_pages_for_bytes(ctx, objcg, bytes)?;
    core.account(None, objcg, ChargeKind::Reservation, bytes as i64);
    core.uncharge_bytes(objcg, remainder);
    Ok(())
}

/// Returns `bytes` of the reservation (whole pages to the counters, the
/// rest to the pool), their references put.
fn uncharge(core: &Core, objcg: &ObjCgroup, bytes: u64) {
    if bytes == 0 {
        return;
    }
    core.account(None, objcg, ChargeKind::Reservation, -(bytes as i64));
    core.uncharge_bytes(objcg, bytes);
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let _gate = crate::sync::fork_gate_enter();
        // Relaxed: the last drop of the shared state (`SysArc`'s AcqRel
        // count) orders every holder's update of `bytes` before this.
        let bytes = self.bytes.load(Ordering::Relaxed);
        let objcg = self.objcg();
        uncharge(&self.core, objcg, bytes);
        count_reservation(objcg, -1);
        self.core.objcg_put(objcg, 1);
    }
}
