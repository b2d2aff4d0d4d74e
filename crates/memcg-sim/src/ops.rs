//! The operations a simulated step performs. A run is a list of them; the
//! workload generator produces the list from a scenario and a seed, the
//! fuzzer shrinks it, and scenario files may spell it out (`[[step]]`).
//!
//! Every operation names what it touches (task index, object id, group
//! path), and one whose target no longer exists (an object already freed
//! or reclaimed, a group already removed) is skipped rather than an error:
//! removing steps while shrinking must leave a runnable list.

use serde::{Deserialize, Serialize};

/// One step of a simulation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Op {
    /// Task `task` allocates object `obj` of `bytes` on its CPU; a `cache`
    /// object may be freed by its group's reclaim callback. A `fallible`
    /// allocation is made in a fallible region (`Task::enter_fallible`);
    /// with `spend`, the task spends that reservation meanwhile
    /// (`Task::spend`), which pays for the object if it has the bytes.
    Alloc {
        /// Task index.
        task: usize,
        /// Size of the object.
        bytes: u64,
        /// Object id (unique in the run).
        obj: u64,
        /// Whether the group's reclaimer may free it.
        #[serde(default)]
        cache: bool,
        /// Whether it is made in a fallible region.
        #[serde(default, skip_serializing_if = "is_false")]
        fallible: bool,
        /// The reservation spent meanwhile, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spend: Option<u64>,
    },
    /// Task `task` frees object `obj` on its CPU (possibly another task's).
    Free {
        /// Task index.
        task: usize,
        /// Object id.
        obj: u64,
    },
    /// The scheduler moves task `task` to CPU `cpu`.
    Migrate {
        /// Task index.
        task: usize,
        /// Destination CPU.
        cpu: usize,
    },
    /// A controller attaches task `task` to `group`.
    Attach {
        /// Task index.
        task: usize,
        /// Group path.
        group: String,
    },
    /// Creates the group at `path`.
    CreateGroup {
        /// Group path.
        path: String,
    },
    /// Removes the group at `path`; its live objects are reparented.
    RemoveGroup {
        /// Group path.
        path: String,
    },
    /// Reserves `bytes` for `group` as reservation `res`.
    Reserve {
        /// Group path.
        group: String,
        /// Bytes to reserve.
        bytes: u64,
        /// Reservation id (unique in the run).
        res: u64,
    },
    /// Grows or shrinks reservation `res` to `bytes`.
    ResizeReservation {
        /// Reservation id.
        res: u64,
        /// New size.
        bytes: u64,
    },
    /// Drops reservation `res`.
    Release {
        /// Reservation id.
        res: u64,
    },
    /// Task `task` flushes its byte cache to its CPU's stock.
    Flush {
        /// Task index.
        task: usize,
    },
    /// Sets `memory.max` of `group` (`None`: unlimited).
    SetMax {
        /// Group path.
        group: String,
        /// The limit in bytes.
        max_bytes: Option<u64>,
    },
    /// A deliberate bug in the simulator's use of the engine (hidden
    /// `--inject`), to show the checks catch it.
    Fault {
        /// Which bug.
        kind: SimFault,
        /// The group it concerns (for `force-over-max`).
        #[serde(default)]
        group: Option<String>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Bugs the simulator can inject through the public API (the engine's own
/// test hooks need the `fault-injection` feature; see [`crate::machine::Hook`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum SimFault {
    /// Shrinks the largest live object's charge to 1 byte while the model
    /// keeps its size: usage falls below the live bytes (usage floor check).
    LoseCharge,
    /// Forgets the oldest live object without uncharging it: its bytes are
    /// never freed (end-of-run usage and leak checks).
    LeakCharge,
    /// Lets `group` charge past `memory.max` (limit check).
    ForceOverMax,
}

impl SimFault {
    /// Parses `lose-charge`, `leak-charge`, `force-over-max`.
    pub fn parse(s: &str) -> Option<SimFault> {
        Some(match s {
            "lose-charge" => SimFault::LoseCharge,
            "leak-charge" => SimFault::LeakCharge,
            "force-over-max" => SimFault::ForceOverMax,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Alloc {
                task,
                bytes,
                obj,
                cache,
                fallible,
                spend,
            } => {
                write!(f, "alloc task={task} bytes={bytes} obj={obj}")?;
                if let Some(res) = spend {
                    write!(f, " spend={res}")?;
                }
                if *fallible {
                    f.write_str(" (fallible)")?;
                }
                if *cache {
                    f.write_str(" (cache)")?;
                }
                Ok(())
            }
            Op::Free { task, obj } => write!(f, "free task={task} obj={obj}"),
            Op::Migrate { task, cpu } => write!(f, "migrate task={task} cpu={cpu}"),
            Op::Attach { task, group } => write!(f, "attach task={task} group={group:?}"),
            Op::CreateGroup { path } => write!(f, "create-group path={path:?}"),
            Op::RemoveGroup { path } => write!(f, "remove-group path={path:?}"),
            Op::Reserve { group, bytes, res } => {
                write!(f, "reserve group={group:?} bytes={bytes} res={res}")
            }
            Op::ResizeReservation { res, bytes } => {
                write!(f, "resize-reservation res={res} bytes={bytes}")
            }
            Op::Release { res } => write!(f, "release res={res}"),
            Op::Flush { task } => write!(f, "flush task={task}"),
            Op::SetMax { group, max_bytes } => match max_bytes {
                Some(b) => write!(f, "set-max group={group:?} max_bytes={b}"),
                None => write!(f, "set-max group={group:?} max"),
            },
            Op::Fault { kind, group } => {
                write!(f, "fault kind={kind:?}")?;
                if let Some(g) = group {
                    write!(f, " group={g:?}")?;
                }
                Ok(())
            }
        }
    }
}
