//! Exit codes of `memcg-sim` (STYLE R8).

/// Everything ran and every check held.
pub const OK: u8 = 0;
/// The simulation observed an invariant violation, or an OOM in a scenario
/// whose `run.on_oom` is `"fail"`.
pub const VIOLATION: u8 = 1;
/// Bad command line or bad scenario file; nothing (or nothing more) ran.
pub const USAGE: u8 = 2;
