//! Run-time switches for `scripts/loom-mutations.py`, which checks that the
//! loom models have teeth: every ordering they need, weakened, fails some
//! model.
//!
//! The script rewrites each `Ordering::{Release, Acquire, AcqRel, SeqCst}`
//! of `engine/` and `heap_table.rs` (temporarily; it restores the files) into
//! a call of [`ordering`] with a mutant number per weakening, and each
//! `fence(..)` into [`fence`], builds the loom models once, and then runs
//! them once per mutant with `MEMCG_LOOM_MUTANT=<n>`: only that mutant's
//! ordering is weakened, everything else keeps its own. (loom takes the
//! ordering as a run-time argument, so one build serves every mutant.)
//! With `MEMCG_LOOM_COVERAGE=<file>` the first use of each site is
//! appended to the file, so that the script runs a mutant only against the
//! models that reach it.
//!
//! Nothing here is used by the checked-in sources: only instrumented
//! builds call it.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::Write;

use crate::sync::Ordering;

/// The mutant of this process (`MEMCG_LOOM_MUTANT`) and the coverage file.
struct Switches {
    active: Option<u32>,
    /// Sites seen so far and the file they are appended to (a std mutex:
    /// outside the model, never explored).
    coverage: Option<std::sync::Mutex<(HashSet<u32>, std::fs::File)>>,
}

fn switches() -> &'static Switches {
    static SWITCHES: std::sync::OnceLock<Switches> = std::sync::OnceLock::new();
    SWITCHES.get_or_init(|| Switches {
        active: std::env::var("MEMCG_LOOM_MUTANT")
            .ok()
            .and_then(|v| v.parse().ok()),
        coverage: std::env::var_os("MEMCG_LOOM_COVERAGE").map(|path| {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("MEMCG_LOOM_COVERAGE names a writable file");
            std::sync::Mutex::new((HashSet::new(), file))
        }),
    })
}

/// Notes that site `first` (its first mutant number) was reached.
fn cover(first: u32) {
    if let Some(cov) = &switches().coverage {
        let mut cov = cov
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cov.0.insert(first) {
            let _ = writeln!(cov.1, "{first}");
        }
    }
}

/// The ordering of a site whose mutants are numbered `first..`: the
/// `weaker[k]` of mutant `first + k` when that mutant is active, else
/// `original`.
#[inline(never)]
pub(crate) fn ordering(first: u32, original: Ordering, weaker: &[Ordering]) -> Ordering {
    cover(first);
    match switches().active {
        Some(m) if m >= first && ((m - first) as usize) < weaker.len() => {
            weaker[(m - first) as usize]
        }
        _ => original,
    }
}

/// A fence site: mutant `first` removes the fence, `first + k` (k ≥ 1)
/// replaces its ordering by `weaker[k - 1]`.
#[inline(never)]
pub(crate) fn fence(first: u32, original: Ordering, weaker: &[Ordering]) {
    cover(first);
    let order = match switches().active {
        Some(m) if m == first => return,
        Some(m) if m > first && ((m - first - 1) as usize) < weaker.len() => {
            weaker[(m - first - 1) as usize]
        }
        _ => original,
    };
    crate::sync::fence(order);
}
