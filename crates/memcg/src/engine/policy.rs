//! What a group asks for at its limits: its OOM policy, and the requests
//! its reclaim callbacks receive. Plain types, below the group tree and the
//! reclaimer thread that use them.

use std::sync::Arc;

/// What happens when a charge would take a group over `memory.max` and
/// reclaim (stock drains, then the reclaim callbacks on the reclaimer
/// thread) could not make room: the group's out-of-memory outcome.
///
/// Set per group with [`crate::Group::set_oom_policy`]; a new group starts
/// with its parent's policy. Explicit charges ([`crate::Group::try_charge`],
/// [`crate::Reservation::grow`]) and allocations in a fallible region
/// (`memcg::fallible`) are not allocations that must succeed: at `max`,
/// after reclaim, they fail with a typed error whatever the policy (and
/// count `oom`, never `oom_kill`). The policy decides the fate of the
/// allocations that cannot fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum OomPolicy {
    /// The allocation succeeds (the charge is forced past `max`) and the
    /// group that hit its `max` is marked killed: `oom` and `oom_kill` are
    /// counted, its kill callbacks run on the reclaimer thread, and
    /// [`crate::Group::is_killed`] turns true for it and its descendants.
    /// Later allocations of a killed subtree are forced without waiting for
    /// reclaim (as the kernel forces a dying task's charges) until the
    /// group is revived ([`crate::Group::revive`]) or removed. The
    /// application is expected to stop the tenant's work. One tenant fails;
    /// the process lives.
    #[default]
    Kill,
    /// The allocation fails: the allocator returns null, so an infallible
    /// allocation (`Vec::push`, `format!`, ...) aborts the whole process in
    /// `handle_alloc_error`. Only for groups whose every allocation is
    /// fallible (`try_reserve` and friends).
    Fail,
    /// Never fail an allocation: charges past `max` are forced and counted
    /// as `max` events only (the limit becomes a reporting threshold for
    /// allocations; explicit charges and fallible regions still meet it).
    Force,
}

impl OomPolicy {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            OomPolicy::Kill => 0,
            OomPolicy::Fail => 1,
            OomPolicy::Force => 2,
        }
    }

    pub(crate) fn from_u8(v: u8) -> OomPolicy {
        match v {
            1 => OomPolicy::Fail,
            2 => OomPolicy::Force,
            _ => OomPolicy::Kill,
        }
    }

    /// The name used in text formats and the simulator (`kill`, `fail`,
    /// `force`).
    pub fn name(self) -> &'static str {
        match self {
            OomPolicy::Kill => "kill",
            OomPolicy::Fail => "fail",
            OomPolicy::Force => "force",
        }
    }
}

impl std::str::FromStr for OomPolicy {
    type Err = crate::Error;

    /// Parses `kill`, `fail` or `force`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "kill" => Ok(OomPolicy::Kill),
            "fail" => Ok(OomPolicy::Fail),
            "force" => Ok(OomPolicy::Force),
            _ => Err(crate::Error::InvalidPolicy {
                value: s.to_string(),
            }),
        }
    }
}

/// What a reclaim callback is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReclaimRequest {
    /// Bytes the engine would like freed.
    pub wanted_bytes: u64,
    /// Why reclaim runs.
    pub reason: ReclaimReason,
}

/// Why a reclaim runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ReclaimReason {
    /// Usage exceeds `memory.high`.
    High,
    /// `memory.max` or `memory.high` was set below usage.
    LimitLowered,
    /// A charge would exceed `memory.max`.
    Max,
}

impl ReclaimReason {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            ReclaimReason::High => 1,
            ReclaimReason::LimitLowered => 2,
            ReclaimReason::Max => 3,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Option<ReclaimReason> {
        match v {
            1 => Some(ReclaimReason::High),
            2 => Some(ReclaimReason::LimitLowered),
            3 => Some(ReclaimReason::Max),
            _ => None,
        }
    }
}

/// A reclaim callback: frees memory, returns the bytes it freed.
pub(crate) type ReclaimFn = dyn Fn(&ReclaimRequest) -> u64 + Send + Sync;

/// A registered reclaim callback.
pub(crate) struct ReclaimerEntry {
    pub(crate) callback: Box<ReclaimFn>,
    /// Running on a reclaimer thread now (a callback never runs on two
    /// threads at once: a pass that finds it running skips it).
    pub(crate) running: crate::sync::AtomicBool,
}

/// A registered reclaim callback, shared by its group's list and handle.
pub(crate) type Reclaimer = Arc<ReclaimerEntry>;
/// A kill callback: told the group's path when it is killed.
pub(crate) type KillFn = dyn Fn(&OomKilled) + Send + Sync;
/// A registered kill callback.
pub(crate) type KillCallback = Arc<KillFn>;

/// A group was killed by its OOM policy ([`OomPolicy::Kill`]): what a kill
/// callback receives and what a killable future
/// ([`crate::InGroup::killable`]) returns instead of its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomKilled {
    /// Path of the killed group (the one that hit its `max`, which may be
    /// an ancestor of the group a future runs in).
    pub path: String,
    /// Its `memory.max` when it was killed, in bytes.
    pub limit_bytes: u64,
}

impl std::fmt::Display for OomKilled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "root"
        } else {
            &self.path
        };
        write!(
            f,
            "group `{path}` was killed at its memory.max of {} bytes \
             (stop its work, then remove or revive the group)",
            self.limit_bytes
        )
    }
}

impl std::error::Error for OomKilled {}
