//! Explicit, fallible reservations (`try_charge` → RAII guard).

use std::ptr::NonNull;
use std::sync::Arc;

use crate::engine::core::{ChargeCtx, Core};
use crate::engine::memcg::ChargeKind;
use crate::engine::obj_cgroup::ObjCgroup;
use crate::engine::task::{invalid_size, MAX_CHARGE_BYTES};
use crate::error::Result;

/// Bytes reserved for a group: charged when made, uncharged when dropped.
///
/// A reservation charges its group's page counters directly (no per-CPU
/// stock), in whole pages, and counts its exact bytes in the group's
/// `reservation` statistic. It holds a reference on its objcg, so it
/// survives the group's removal: its bytes then count against the parent.
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
    core: Arc<Core>,
    objcg: NonNull<ObjCgroup>,
    bytes: u64,
}

// SAFETY: the objcg lives in the controller's type-stable table, kept
// alive by `core`; the reservation owns one reference on it, and every
// operation on it goes through atomics.
unsafe impl Send for Reservation {}
// SAFETY: `&Reservation` only reads `bytes`.
unsafe impl Sync for Reservation {}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("bytes", &self.bytes)
            .field("group", &self.objcg().memcg().path)
            .finish()
    }
}

impl Reservation {
    /// Charges `bytes` to `objcg` (the caller holds a reference on it).
    pub(crate) fn new(
        core: Arc<Core>,
        objcg: &ObjCgroup,
        bytes: u64,
        ctx: ChargeCtx<'_>,
    ) -> Result<Reservation> {
        if bytes > MAX_CHARGE_BYTES {
            return Err(invalid_size(bytes));
        }
        charge(&core, objcg, bytes, ctx)?;
        objcg.get(1);
        core.account(None, objcg, ChargeKind::Reservation, 0, 1);
        Ok(Reservation {
            objcg: NonNull::from(objcg),
            core,
            bytes,
        })
    }

    fn objcg(&self) -> &ObjCgroup {
        // SAFETY: points into `core`'s type-stable table; this reservation
        // holds a reference on it.
        unsafe { self.objcg.as_ref() }
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Path of the group charged now (an ancestor once the original group
    /// was removed).
    pub fn group_path(&self) -> String {
        self.objcg().memcg().path.to_string()
    }

    /// Reserves `bytes` more.
    ///
    /// # Errors
    /// [`crate::Error::Charge`] when a limit refuses after reclaim (the
    /// reservation is unchanged), [`crate::Error::InvalidSize`] past 2^48 bytes.
    pub fn grow(&mut self, bytes: u64) -> Result<()> {
        let total = self
            .bytes
            .checked_add(bytes)
            .filter(|&t| t <= MAX_CHARGE_BYTES);
        let Some(total) = total else {
            return Err(invalid_size(self.bytes.saturating_add(bytes)));
        };
        let ctx = ChargeCtx::direct(None);
        charge(&self.core, self.objcg(), bytes, ctx)?;
        self.bytes = total;
        Ok(())
    }

    /// Releases `bytes` of the reservation (at most all of it).
    pub fn shrink(&mut self, bytes: u64) {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        uncharge(&self.core, self.objcg(), bytes);
    }
}

fn charge(core: &Core, objcg: &ObjCgroup, bytes: u64, ctx: ChargeCtx<'_>) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    let remainder = core.charge_pages_for_bytes(ctx, objcg, bytes)?;
    core.account(None, objcg, ChargeKind::Reservation, bytes as i64, 0);
    core.uncharge_to_pool(objcg, remainder);
    Ok(())
}

fn uncharge(core: &Core, objcg: &ObjCgroup, bytes: u64) {
    if bytes == 0 {
        return;
    }
    core.account(None, objcg, ChargeKind::Reservation, -(bytes as i64), 0);
    core.uncharge_to_pool(objcg, bytes);
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let objcg = self.objcg();
        uncharge(&self.core, objcg, self.bytes);
        self.core
            .account(None, objcg, ChargeKind::Reservation, 0, -1);
        self.core.objcg_put(objcg, 1);
    }
}
