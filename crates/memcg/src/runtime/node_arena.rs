//! Node-bound memory for `MemcgMimalloc`: one exclusive mimalloc arena per
//! NUMA node, whose address range carries the memory policy "preferred:
//! this node", and the heaps of that node's objcgs made in it.
//!
//! Without it, a (group, node) objcg's heap takes its pages from mimalloc's
//! shared arenas, where first-touch placement decides the node: a page
//! touched (or reused after a free) by a thread of the other node stays
//! there. Measured in the two-node VM (`scripts/vm/run.sh`): 94% of the
//! pages of objects charged to a node were on it, and 77% when the memory
//! was reused after frees.
//!
//! With it:
//! - the first heap of node N reserves the node's arena: an anonymous
//!   mapping of [`NODE_ARENA_BYTES`] (address space only: `MAP_NORESERVE`,
//!   nothing touched), `mbind(MPOL_PREFERRED, N)` on all of it, handed to
//!   mimalloc as an exclusive arena (`mi_manage_memory`) with our commit
//!   function; heaps of node N are `mi_heap_new_in_arena(arena N)`, so every
//!   page they use comes from that range, whichever thread touches it,
//!   frees it, or reuses it;
//! - **fallbacks are counted**: when mimalloc commits a range of the arena,
//!   the commit function faults in its first page (`MADV_POPULATE_WRITE`)
//!   and asks the kernel where it went (`move_pages`, no target): a range
//!   whose first page the kernel had to put on another node (node N full:
//!   the policy is *preferred*, so the kernel falls back instead of
//!   failing) is added to [`node_fallback_bytes`]; allocations that the node's arena cannot
//!   hold (more than [`NODE_ARENA_BYTES`] live on one node) are made in the
//!   shared fallback heap, charged as usual, and counted by
//!   [`node_fallback_allocations`] (so are `realloc`s moved there);
//! - decommitted ranges are given back with `MADV_DONTNEED` (the policy
//!   stays on the range).
//!
//! Binding is on when the process's topology is the real one with two or
//! more nodes with CPUs (not a virtual `MEMCG_TOPOLOGY`), unless
//! `MEMCG_NODE_HEAPS=0`; `MEMCG_NODE_HEAPS=1` forces it (a one-node machine
//! then binds its node 0, for tests). If the kernel refuses `mbind` (a
//! seccomp profile) or mimalloc refuses the range, that node's heaps are
//! made unbound, as before.
//!
//! Everything here runs on the cold path of a heap's creation or of
//! mimalloc's commits, inside the global allocator: system calls and stack
//! buffers only, no allocation, no panic.

use std::ffi::c_void;

use crate::runtime::cpu::env_value;
use crate::sync::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// Node ids below this can be bound (a 64-bit node mask).
pub(crate) const MAX_BOUND_NODES: usize = 64;

/// Address space reserved per node (nothing is touched until used): the
/// most a node's heaps hold at once before their allocations fall back.
/// `MEMCG_NODE_ARENA_BYTES` (bytes, or with a `K`/`M`/`G` suffix) sets
/// another size, from 64 MiB to 16 GiB (mimalloc's largest arena).
pub const NODE_ARENA_BYTES: usize = 8 << 30;

/// The smallest and largest arena `MEMCG_NODE_ARENA_BYTES` may ask for.
const MIN_ARENA_BYTES: usize = 64 << 20;
const MAX_ARENA_BYTES: usize = 16 << 30;

/// The size of a node arena: `MEMCG_NODE_ARENA_BYTES` if set and valid
/// (clamped, rounded up to [`ARENA_ALIGN_BYTES`]), else
/// [`NODE_ARENA_BYTES`]. Allocation-free.
fn arena_bytes() -> usize {
    let mut buffer = [0u8; 32];
    let Some(value) = env_value(c"MEMCG_NODE_ARENA_BYTES", &mut buffer) else {
        return NODE_ARENA_BYTES;
    };
    let value = value.trim_ascii();
    let (digits, shift) = match value.last() {
        Some(b'k' | b'K') => (&value[..value.len() - 1], 10),
        Some(b'm' | b'M') => (&value[..value.len() - 1], 20),
        Some(b'g' | b'G') => (&value[..value.len() - 1], 30),
        _ => (value, 0),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return NODE_ARENA_BYTES;
    }
    let number = digits.iter().fold(0usize, |n, &d| {
        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    });
    number
        .checked_shl(shift)
        .filter(|&bytes| bytes >> shift == number)
        .unwrap_or(MAX_ARENA_BYTES)
        .clamp(MIN_ARENA_BYTES, MAX_ARENA_BYTES)
        .next_multiple_of(ARENA_ALIGN_BYTES)
}

/// Alignment of a node arena: a huge page, so that the kernel's huge pages
/// line up with the range.
const ARENA_ALIGN_BYTES: usize = 2 << 20;

/// Bytes of a base page.
const PAGE_BYTES: usize = 4096;

/// `MADV_POPULATE_WRITE` (Linux 5.14): fault a range in, writable.
const MADV_POPULATE_WRITE: libc::c_int = 23;

type CommitFun = unsafe extern "C" fn(
    commit: bool,
    start: *mut c_void,
    size: usize,
    is_zero: *mut bool,
    arg: *mut c_void,
) -> bool;

extern "C" {
    fn mi_manage_memory(
        start: *mut c_void,
        size: usize,
        is_committed: bool,
        is_pinned: bool,
        is_zero: bool,
        numa_node: libc::c_int,
        exclusive: bool,
        commit_fun: Option<CommitFun>,
        commit_fun_arg: *mut c_void,
        arena_id: *mut *mut c_void,
    ) -> bool;
    fn mi_heap_new_in_arena(arena_id: *mut c_void) -> *mut c_void;
}

/// [`MODE`]: not decided yet.
const UNDECIDED: u8 = 0;
/// [`MODE`]: objcg heaps are bound to their node.
const BOUND: u8 = 1;
/// [`MODE`]: objcg heaps are unbound (`mi_heap_new`).
const UNBOUND: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// [`ARENAS`] entry: no arena yet.
const NO_ARENA: usize = 0;
/// [`ARENAS`] entry: the arena could not be made; do not retry.
const ARENA_FAILED: usize = 1;
/// [`ARENAS`] entry: a thread is making it.
const ARENA_MAKING: usize = 2;

/// Each node's arena id (or one of the markers above).
static ARENAS: [AtomicUsize; MAX_BOUND_NODES] =
    [const { AtomicUsize::new(NO_ARENA) }; MAX_BOUND_NODES];

static NODE_FALLBACK_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static NODE_FALLBACK_BYTES: AtomicU64 = AtomicU64::new(0);
static NODE_ARENAS_MADE: AtomicUsize = AtomicUsize::new(0);

/// Whether objcg heaps are node-bound (decided on first use).
#[inline]
pub(crate) fn is_bound() -> bool {
    // Relaxed: a one-way decision; a thread that reads it stale takes the
    // unbound path, which is correct, only less placed.
    MODE.load(Ordering::Relaxed) == BOUND
}

#[cold]
fn decide() -> u8 {
    let mut buffer = [0u8; 64];
    let forced = env_value(c"MEMCG_NODE_HEAPS", &mut buffer).map(|v| v.trim_ascii() == b"1");
    let mode = match forced {
        Some(true) => BOUND,
        Some(false) => UNBOUND,
        None => {
            let mut topo_env = [0u8; 8];
            let virtual_topology = env_value(c"MEMCG_TOPOLOGY", &mut topo_env)
                .is_some_and(|v| !v.trim_ascii().is_empty());
            let nodes_with_cpus = crate::runtime::global::try_controller()
                .map_or(1, |c| c.topology().nodes().count());
            if !virtual_topology && nodes_with_cpus >= 2 {
                BOUND
            } else {
                UNBOUND
            }
        }
    };
    // Relaxed: every thread decides the same from the same inputs.
    MODE.store(mode, Ordering::Relaxed);
    mode
}

/// A new heap for objcgs of `node`: in the node's arena when binding is on
/// (`Some(heap)`, null if mimalloc refused), `None` when the heap should be
/// an ordinary one (binding off, or no arena for this node).
#[cold]
pub(crate) fn new_heap_for_node(node: usize) -> Option<*mut c_void> {
    // Relaxed: see `is_bound`.
    let mode = match MODE.load(Ordering::Relaxed) {
        UNDECIDED => decide(),
        mode => mode,
    };
    if mode != BOUND {
        return None;
    }
    let arena = arena_of(node)?;
    // SAFETY: plain FFI call with an arena id mimalloc returned.
    Some(unsafe { mi_heap_new_in_arena(arena as *mut c_void) })
}

/// How many times a thread waits (yielding) for another thread making the
/// arena it needs before it makes an unbound heap instead: bounded, so a
/// signal handler that allocates while its own thread makes the arena
/// cannot wait for itself forever.
const MAX_ARENA_WAITS: u32 = 10_000;

/// The arena of `node`, made on first use; `None` if it cannot be had.
fn arena_of(node: usize) -> Option<usize> {
    let slot = ARENAS.get(node)?;
    for _ in 0..MAX_ARENA_WAITS {
        // Acquire: pairs with the Release store of a made arena below.
        match slot.load(Ordering::Acquire) {
            NO_ARENA => {
                if slot
                    .compare_exchange(NO_ARENA, ARENA_MAKING, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    let made = make_arena(node);
                    // Release: publishes mimalloc's arena before its id.
                    slot.store(made.unwrap_or(ARENA_FAILED), Ordering::Release);
                    return made;
                }
            }
            ARENA_FAILED => return None,
            // Another thread is making it (a few system calls).
            ARENA_MAKING => std::thread::yield_now(),
            arena => return Some(arena),
        }
    }
    None
}

/// Reserves, binds and hands to mimalloc the arena of `node`.
fn make_arena(node: usize) -> Option<usize> {
    let arena_bytes = arena_bytes();
    let map_bytes = arena_bytes + ARENA_ALIGN_BYTES;
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choice; nothing is touched.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let base = raw as usize;
    let start = base.next_multiple_of(ARENA_ALIGN_BYTES);
    let end = start + arena_bytes;
    // SAFETY: the head and tail cut off lie inside the mapping made above
    // and are page-aligned (`base` is, and both bounds are multiples of
    // the alignment or the mapping's end); nothing uses them.
    unsafe {
        if start > base {
            libc::munmap(raw, start - base);
        }
        if base + map_bytes > end {
            libc::munmap(end as *mut c_void, base + map_bytes - end);
        }
    }
    let mask: u64 = 1 << node;
    // SAFETY: `mbind` on the range mapped above with a one-word node mask
    // that lives across the call; `maxnode` counts its bits plus one, as
    // the kernel expects.
    let bound = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            start,
            arena_bytes,
            libc::MPOL_PREFERRED,
            &mask as *const u64,
            MAX_BOUND_NODES + 1,
            0,
        )
    } == 0;
    // mimalloc keeps the arena's metadata (about 1.3 MiB of bitmaps for
    // 8 GiB, mostly never written) at its start: without huge pages
    // there, only the pages it writes become resident, not a whole 2 MiB
    // huge page per node. Advice only: a refusal changes nothing else.
    // SAFETY: the first extent of the range mapped above.
    unsafe {
        libc::madvise(
            start as *mut c_void,
            ARENA_ALIGN_BYTES,
            libc::MADV_NOHUGEPAGE,
        )
    };
    let mut arena: *mut c_void = std::ptr::null_mut();
    // SAFETY: the range is ours, readable and writable, zero (never
    // touched), and stays mapped for the process's lifetime; the commit
    // function's argument is the node id, not a pointer.
    let managed = bound
        && unsafe {
            mi_manage_memory(
                start as *mut c_void,
                arena_bytes,
                false,
                false,
                true,
                node as libc::c_int,
                true,
                Some(commit),
                node as *mut c_void,
                &mut arena,
            )
        };
    if !managed || (arena as usize) <= ARENA_MAKING {
        // SAFETY: the range is ours and mimalloc did not take it.
        unsafe { libc::munmap(start as *mut c_void, arena_bytes) };
        return None;
    }
    // Relaxed: a statistic.
    NODE_ARENAS_MADE.fetch_add(1, Ordering::Relaxed);
    Some(arena as usize)
}

/// mimalloc's commit function for a node arena (`arg` is the node id).
/// Commit: fault the range in under the node policy and count the sampled
/// pages the kernel put elsewhere. Decommit: `MADV_DONTNEED`.
///
/// # Safety
/// Called by mimalloc with a range inside the node arena it manages.
unsafe extern "C" fn commit(
    commit: bool,
    start: *mut c_void,
    size: usize,
    is_zero: *mut bool,
    arg: *mut c_void,
) -> bool {
    if !commit {
        // SAFETY: the range is inside our arena; its contents are given up
        // (mimalloc decommits it) and the policy stays on the range.
        return unsafe { libc::madvise(start, size, libc::MADV_DONTNEED) } == 0;
    }
    if !is_zero.is_null() {
        // Not promised: the range may have been reset by mimalloc itself.
        // SAFETY: mimalloc passes a valid pointer when not null.
        unsafe { *is_zero = false };
    }
    count_misplaced(arg as usize, start as usize, size);
    true
}

/// Faults in the first page of the `size` bytes at `start` and, if the
/// kernel put it on a node other than `node`, adds `size` to
/// [`NODE_FALLBACK_BYTES`]: one page stands for the range (mimalloc commits
/// ranges of 64 KiB or more), so the rest is placed at its first touch, as
/// usual, and the kernel's count of the process's memory grows only by
/// what is used. (Faulting in whole ranges was measured to hold 18 MiB
/// more than the live objects of a 32 MiB heap.)
fn count_misplaced(node: usize, start: usize, size: usize) {
    if size < PAGE_BYTES {
        return;
    }
    // SAFETY: the page is inside our arena and mapped readable/writable;
    // populating does not change its contents.
    if unsafe { libc::madvise(start as *mut c_void, PAGE_BYTES, MADV_POPULATE_WRITE) } != 0 {
        return; // an older kernel: placement is still by the policy, unverified
    }
    let address = start as *mut c_void;
    let mut status: libc::c_int = -1;
    // SAFETY: one address and one status, both live across the call; null
    // target nodes make it a query; pid 0 is this process.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            1 as libc::c_ulong,
            &address as *const *mut c_void,
            std::ptr::null::<libc::c_int>(),
            &mut status as *mut libc::c_int,
            0,
        )
    };
    if ret == 0 && status >= 0 && status as usize != node {
        // Relaxed: a statistic.
        NODE_FALLBACK_BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

/// Counts an allocation of a node-bound objcg made outside its node's
/// arena (the arena was full).
pub(crate) fn note_fallback_allocation() {
    // Relaxed: a statistic.
    NODE_FALLBACK_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
}

/// See [`crate::MemcgMimalloc::node_fallback_allocations`].
pub(crate) fn node_fallback_allocations() -> u64 {
    NODE_FALLBACK_ALLOCATIONS.load(Ordering::Relaxed)
}

/// See [`crate::MemcgMimalloc::node_fallback_bytes`].
pub(crate) fn node_fallback_bytes() -> u64 {
    NODE_FALLBACK_BYTES.load(Ordering::Relaxed)
}

/// See [`crate::MemcgMimalloc::node_arenas`].
pub(crate) fn node_arenas() -> usize {
    NODE_ARENAS_MADE.load(Ordering::Relaxed)
}
