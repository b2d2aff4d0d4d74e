//! The allocator's hit path: a charge, free or resize served by the byte
//! cache under a per-task *fast key*, with plain loads and stores of the
//! task's own cache line and no atomic read-modify-write.
//!
//! [`Task::charge_keyed`] (the allocator's slow path) arms the key when the
//! byte cache holds the objcg the task charges for the key's node: its own
//! (with a clean tagged word) or, under an override, the override's;
//! everything that could change that objcg clears it: a refresh, a drain
//! or switch of the cache, entering or leaving an override, a spent
//! reservation, exemption, an attach from any thread (after it sets the
//! seed's update flag; see [`Task::arm_fast_key`]), and the removal of the
//! override's group (see [`Task::recheck_override_key`]).

use crate::engine::byte_cache::{CACHE_MAX_BYTES, FOREIGN_MAX_BYTES};
use crate::engine::core::Core;
use crate::engine::memcg::ChargeKind;
use crate::engine::obj_cgroup::ObjCgroup;
use crate::engine::task::{Charge, Task};
use crate::engine::task_shared::NO_HIT_COOKIE;
use crate::engine::task_shared::{get_u64, set_u64};
use crate::engine::task_shared::{
    TaskCache, TaskCacheMode, CURRENT_OBJCG_UPDATE_FLAG, HITS_STOPPED,
};
use crate::error::Result;
use crate::sync::Ordering;

/// The fast-path key of every CPU when the key needs no CPU (a topology
/// of one node, or the single cache); per-CPU keys are 2 and above.
pub(crate) const ONE_KEY: u64 = 1;

/// How an armed key is held in [`TaskCache::fast_key`]: the key shifted
/// up by a byte, the low byte holding its cookie bits ([`HEAP_KEY`],
/// [`NO_HEAP_KEY`]), so that a hit path that reads no cookie compares the
/// key alone with one compare of the word's bytes 1 to 4 (the one key:
/// [`key_is_one`]) and one that needs the heap compares the whole word
/// ([`heap_key_is_one`]): in a process using both allocators, neither misses on
/// the other's arming nor reads the CPU for it.
pub(crate) const KEY_SHIFT: u32 = 8;

/// Keys a caller may arm are below this (CPU ids plus 2 are below
/// 2^13): an armed word then fits 32 bits, so that its bytes 1 to 4 are
/// the whole key and the whole word is compared with a 32-bit immediate.
pub(crate) const KEY_LIMIT: u64 = 1 << 24;

/// The cookie bit [`Task::charge_keyed`] arms a key with when the cached
/// objcg's allocator cookie names a heap (`MemcgMimalloc`'s), after
/// copying the cookie into [`TaskCache::alloc_heap`]: a hit path that
/// allocates from that heap accepts only a key with it
/// ([`HEAP_KEY_HITS`]), and then reads the heap with no test of its own
/// (two instructions fewer per allocation).
pub(crate) const HEAP_KEY: u64 = 1;

/// The cookie bit [`Task::charge_keyed`] arms a key with instead of
/// [`HEAP_KEY`] when the cached objcg's cookie was set but names no heap
/// (`MemcgMimalloc`'s latch for an objcg past its heap limit, whose
/// blocks come from the fallback heap): that allocator's slow entry
/// accepts it ([`COOKIE_KEY_HITS`]), so such an objcg's charges still hit
/// there, while a key armed before the cookie was set (no bit) misses
/// until the slow path arms it again with the cookie.
pub(crate) const NO_HEAP_KEY: u64 = 2;

/// [`HEAP_KEY`] and [`NO_HEAP_KEY`]: the bits of an armed word that say
/// what the cached objcg's cookie was when the key was armed.
pub(crate) const COOKIE_KEY_BITS: u64 = HEAP_KEY | NO_HEAP_KEY;

/// The word [`TaskCache::fast_key`] holds for `key` armed with the cookie
/// bits `bits` (see [`KEY_SHIFT`]).
#[inline(always)]
pub(crate) const fn armed_word(key: u64, bits: u64) -> u64 {
    key << KEY_SHIFT | bits
}

/// [`TaskCache::charge_fast_here`]'s `KEYS`: any armed key hits (a caller
/// that reads no cookie: `MemcgAlloc`).
pub(crate) const ANY_KEY_HITS: u8 = 0;
/// [`TaskCache::charge_fast_here`]'s `KEYS`: only a key armed with
/// [`HEAP_KEY`] hits (`MemcgMimalloc`'s hit path, which then allocates
/// from [`TaskCache::alloc_heap`]).
pub(crate) const HEAP_KEY_HITS: u8 = 1;
/// [`TaskCache::charge_fast_here`]'s `KEYS`: a key armed with either
/// cookie bit hits (`MemcgMimalloc`'s slow entry, which finds the heap,
/// or the fallback, itself); one armed before the cookie was set misses,
/// so that the slow path arms it again.
pub(crate) const COOKIE_KEY_HITS: u8 = 2;

impl Task {
    /// The allocator's fast path: charges `bytes` of [`ChargeKind::Alloc`]
    /// from the byte cache when `key` is the cache's fast key, whatever
    /// its cookie bits ([`KEY_SHIFT`]; armed by
    /// [`Task::charge_keyed`], cleared by anything that could change the
    /// objcg charged, an attach included) and the cache holds enough;
    /// returns the charge as a raw word ([`Charge::into_raw`]). `None`
    /// means "take `charge_keyed`".
    ///
    /// A hit reads the key and writes the bytes: plain loads and stores of
    /// the task's own cache line and no atomic read-modify-write. The
    /// bytes carry their references on the objcg (`obj_cgroup.rs`), so the
    /// object has its references with no count of its own. No statistics
    /// are written: the bytes the hit path took since the slow
    /// path last wrote them are its statistics (`fold_hits`), folded in by
    /// the next slow call; they stay within `TASK_CACHE_BOUND_BYTES` of
    /// zero.
    #[inline(always)]
    pub(crate) fn charge_fast(&self, key: u64, bytes: u64) -> Option<usize> {
        let cache = &self.shared.cache;
        cache
            .charge_fast_when(bytes, |armed| armed != 0 && armed >> KEY_SHIFT == key)
            .then(|| cache.objcg_addr.load(Ordering::Relaxed))
    }

    /// [`Task::charge`] of `bytes` of [`ChargeKind::Alloc`] on `cpu`, which
    /// then arms the fast path for `key` when the byte cache holds the
    /// objcg the task charges for `cpu`'s node: its own (clean word) or the
    /// active override's ([`Task::charged_objcg_addr`]).
    ///
    /// `key` is any non-zero value below [`KEY_LIMIT`] the caller uses to
    /// name a set of CPUs of one node (the runtime uses the real CPU id
    /// plus 2, or 1 when the topology has a single node):
    /// [`Task::charge_fast`] with the same key then charges that node's
    /// objcg. When the objcg's allocator cookie is set, the key is armed
    /// with the cookie bit [`HEAP_KEY`] (the cookie, a heap, copied into
    /// [`TaskCache::alloc_heap`] first) or [`NO_HEAP_KEY`].
    ///
    /// # Errors
    /// As [`Task::charge`].
    pub(crate) fn charge_keyed(&self, key: u64, cpu: usize, bytes: u64) -> Result<Charge> {
        let charge = self.charge(cpu, bytes, ChargeKind::Alloc)?;
        // A key at or above `KEY_LIMIT` (no CPU id the runtime reads) is
        // never armed: its word would not fit the compares.
        if key != 0 && key < KEY_LIMIT && !self.spending.get() && !self.exited.get() {
            // Relaxed: only decides whether to arm; `arm_fast_key`'s CAS
            // checks that the word is still `tagged`.
            let tagged = self.shared.objcgs.load(Ordering::Relaxed);
            // `charge` succeeded, so `cpu` has a node.
            if let Some(nid) = self.core.topology.node_of_cpu(cpu) {
                let cached = self.shared.cache.objcg_addr.load(Ordering::Relaxed);
                if cached != 0 && self.charged_objcg_addr(tagged, nid) == cached {
                    // A cookie the allocator set since the cache took the
                    // objcg (its heap, made on the first allocation).
                    let cache = &self.shared.cache;
                    let armed = match cache.refresh_hit_cookie() {
                        0 => armed_word(key, 0),
                        heap if heap > NO_HIT_COOKIE => {
                            // Before the key: a key with `HEAP_KEY` means
                            // the word holds the cached objcg's heap. The
                            // owner's own word (no hit path runs while
                            // its slow path does), read by its hit path
                            // only, so Relaxed.
                            cache.alloc_heap.store(heap, Ordering::Relaxed);
                            armed_word(key, HEAP_KEY)
                        }
                        _ => armed_word(key, NO_HEAP_KEY),
                    };
                    self.arm_fast_key(armed, tagged);
                    if self.has_active.get() {
                        self.recheck_override_key(tagged, nid, cached);
                    }
                }
            }
        }
        Ok(charge)
    }

    /// The address of the objcg a charge of this task on node `nid` goes
    /// to now, as far as the fast key may stand for it (0 when it may not):
    /// the per-node array's entry, or, under an override ([`Task::enter`],
    /// the runtime's scopes), the override's objcg for `nid` when the byte
    /// cache holds it. Entering or leaving an override disarms the key, so
    /// a key armed under one stands for that override only. A key names
    /// a node only in the per-node mode or on a one-node topology (the
    /// single mode's one key covers every node, and an override's objcgs
    /// are per node), so no key is armed under an override otherwise.
    ///
    /// Without an override, none while the seed's update flag is set in
    /// `tagged` (the array is stale). Under one, the flag does not matter:
    /// the task's own array is not what it charges, and an attach clears
    /// the key after setting the flag anyway; a key armed after that
    /// clear, with the flag already set, stands for the override until
    /// leaving it disarms.
    ///
    /// Under the override of a removed group, whose slots are empty, the
    /// nearest ancestor's whose slot names one: the objcg the slow path
    /// charges then ([`Task::cached_objcg_of`]). A key armed before a
    /// removal that changes that objcg is disarmed by it
    /// ([`Task::recheck_override_key`] and `Group::remove`).
    fn charged_objcg_addr(&self, tagged: usize, nid: usize) -> usize {
        if !self.has_active.get() {
            if tagged & CURRENT_OBJCG_UPDATE_FLAG != 0 {
                return 0;
            }
            return self.entry(tagged, nid) as usize;
        }
        if self.shared.mode != TaskCacheMode::PerNode && self.core.topology.nr_node_ids() != 1 {
            return 0;
        }
        let active = self.active.borrow();
        let Some(memcg) = active.as_ref() else {
            return 0;
        };
        self.cached_objcg_of(memcg, nid)
            .map_or(0, |o| o as *const ObjCgroup as usize)
    }

    /// Arms the fast path with the word `armed` ([`armed_word`]) while the
    /// tagged word is still the clean `tagged`; an attach clears the key
    /// after setting the update flag, so the fast path need not read the
    /// word.
    ///
    /// The key is stored, then the word is compared-and-exchanged with
    /// itself. If that RMW comes first in the word's modification order,
    /// the attach's flag RMW reads from it (AcqRel both), so the key store
    /// happens before the attach's clear, which therefore wins. If the
    /// attach's RMW comes first, the exchange sees the flag and fails, and
    /// the key is cleared here. Either way no key armed without an override
    /// stays armed with the flag set (loom:
    /// `loom_task::arming_racing_attach_leaves_no_stale_key`). Under an
    /// override the flag may already be set when the key is armed (see
    /// [`Task::charged_objcg_addr`]); the key then stands for the override
    /// alone, and leaving the override clears it.
    #[cold]
    pub(crate) fn arm_fast_key(&self, armed: u64, tagged: usize) {
        let shared = &*self.shared;
        if shared.cache.fast_key.load(Ordering::Relaxed) == armed {
            return;
        }
        shared.cache.fast_key.store(armed, Ordering::Relaxed);
        if shared
            .objcgs
            // Release: the key store above happens before an attach whose
            // OR reads from this CAS (loom: `loom_task::arming_racing_
            // attach_leaves_no_stale_key` fails without it). Nothing is
            // acquired: the word is compared with itself, and a failure
            // only disarms.
            .compare_exchange(tagged, tagged, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            self.clear_fast_key();
        }
    }

    /// After arming a key under an override for the cached objcg
    /// `cached` on node `nid`: reads the override's slot again, after a
    /// SeqCst fence, and disarms if it no longer names `cached`. The other
    /// half of a handshake with `Group::remove`, which empties the group's
    /// slots, then fences, then disarms every task whose byte cache holds
    /// one of the group's objcgs (`Core::disarm_keys_caching`).
    ///
    /// The fences order the two sides (C++'s fence rules, which loom
    /// models). If this fence comes first, the removal's read of the
    /// cache's objcg sees what the cache held when the key was stored, or a
    /// later value (a drain or switch, which clears the key before it
    /// changes the objcg), and its disarming store comes after the key's in
    /// the key's modification order: the removal disarms. If the removal's
    /// fence comes first, the slot read here sees it emptied: this
    /// disarms. Either way no key stands for a removed group's objcg once
    /// both are done, so a scope of a removed group charges the nearest
    /// online ancestor's objcg from then on, as the kernel's
    /// `current_obj_cgroup` does (loom:
    /// `loom_task::arming_under_a_scope_racing_its_groups_removal_leaves_no_key`).
    #[cold]
    fn recheck_override_key(&self, tagged: usize, nid: usize, cached: usize) {
        crate::sync::fence(Ordering::SeqCst);
        if self.charged_objcg_addr(tagged, nid) != cached {
            self.clear_fast_key();
        }
    }

    /// Disarms the allocator's fast path (see [`TaskCache::fast_key`]).
    #[inline]
    pub(crate) fn clear_fast_key(&self) {
        self.shared.cache.fast_key.store(0, Ordering::Relaxed);
    }

    /// The allocator's fast path for a `realloc`: moves the difference
    /// between `old_bytes` and `new_bytes` of the charge named by `raw`
    /// between the charge and the byte cache when the cache holds that
    /// objcg and has the bytes (growing) or the room (shrinking), the
    /// bytes with their references. `false` means "take
    /// [`Task::resize`]"; plain loads and stores only, statistics as in
    /// [`Task::charge_fast`].
    ///
    /// # Safety
    /// `raw` comes from `Charge::into_raw` of a live charge of `old_bytes`
    /// bytes of `ChargeKind::Alloc` made by this task's controller; if this
    /// returns `true`, that charge is now of `new_bytes` bytes.
    #[inline(always)]
    pub(crate) unsafe fn resize_fast(&self, raw: usize, old_bytes: u64, new_bytes: u64) -> bool {
        let cache = &self.shared.cache;
        // As in `uncharge_fast`.
        if cache.hit_addr.load(Ordering::Relaxed) != raw {
            return false;
        }
        let have = get_u64(&cache.bytes);
        let left = if new_bytes >= old_bytes {
            // Growth while a reservation is spent is paid from it
            // (`Task::resize`).
            if self.spending.get() {
                return false;
            }
            match have.checked_sub(new_bytes - old_bytes) {
                Some(left) => left,
                None => return false,
            }
        } else {
            let left = have + (old_bytes - new_bytes);
            if left > CACHE_MAX_BYTES {
                return false;
            }
            left
        };
        // The difference is folded into the statistics by the next slow
        // call, as a hit's (`fold_hits`).
        set_u64(&cache.bytes, left);
        true
    }
    /// [`TaskCache::charge_fast_here`] of this task's cache.
    #[inline(always)]
    pub(crate) fn charge_fast_here<const KEYS: u8>(
        &self,
        bytes: u64,
        cpu_key: impl FnOnce() -> u64,
    ) -> Option<usize> {
        let cache = &self.shared.cache;
        cache
            .charge_fast_here::<KEYS>(bytes, cpu_key)
            .then(|| cache.objcg_addr.load(Ordering::Relaxed))
    }

    /// [`TaskCache::uncharge_fast`] of this task's cache.
    ///
    /// # Safety
    /// As [`TaskCache::uncharge_fast`].
    #[inline(always)]
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) unsafe fn uncharge_fast(&self, raw: usize, bytes: u64) -> bool {
        // SAFETY: forwarded contract.
        unsafe { self.shared.cache.uncharge_fast(raw, bytes) }
    }

    /// This task's cache, for the allocator's hit path, which reaches it
    /// through a thread-local pointer (`runtime::thread`).
    #[inline(always)]
    pub(crate) fn cache(&self) -> &TaskCache {
        &self.shared.cache
    }

    /// [`Task::cache`] as the allocator's thread-local pointer holds it:
    /// with the provenance of its [`CacheSlot`], whose hit mark the
    /// pointer names while a hit path runs.
    ///
    /// [`CacheSlot`]: crate::engine::task_shared::CacheSlot
    #[cfg(not(memcg_loom))]
    #[inline(always)]
    pub(crate) fn cache_ptr(&self) -> *mut TaskCache {
        self.shared.cache.cache_ptr()
    }
}

impl Core {
    /// Disarms the fast key of every task whose byte cache holds one of
    /// the objcgs named by `words` (slot words, as `Group::remove` swapped
    /// them out of a removed group's slots; 0 for none), under the task
    /// list's lock. `Group::remove`'s half of the handshake described at
    /// [`Task::recheck_override_key`]; allocates nothing. A task caching
    /// another incarnation of one of those table entries is disarmed too,
    /// which costs it one slow charge.
    pub(crate) fn disarm_keys_caching(&self, words: &[u64]) {
        let ids = words.iter().map(|&w| w as u32).filter(|&id| id != 0);
        for t in self.tasks.lock().iter() {
            // Relaxed: ordered by the fences of the handshake.
            let cached = t.cache.objcg.load(Ordering::Relaxed);
            if cached != 0 && ids.clone().any(|id| id == cached) {
                t.cache.fast_key.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// Takes `bytes` from `cache` (the owner's hit path), with their
/// references: `false`, with the bytes unchanged, when it holds fewer.
///
/// On x86-64 one subtraction from memory and a branch on its borrow (an
/// `asm!` with a label): the compiler cannot branch on the flags of a
/// read-modify-write of an atomic, so the same test in Rust is a load, a
/// compare and a store besides the subtraction (two instructions more per
/// allocation, measured with callgrind). Between the borrow and its
/// label's undo, the field holds the wrapped difference; only the owner
/// acts on it, and the hit path runs marked busy, so no signal handler of
/// the owner's sees it. Other threads' readers (the checkers) see a
/// transient value, as they may under any concurrent charge.
#[inline(always)]
fn take_bytes(cache: &TaskCache, bytes: u64) -> bool {
    #[cfg(all(target_arch = "x86_64", not(memcg_loom)))]
    {
        // SAFETY: `cache.bytes` is a live 8-byte aligned atomic at that
        // offset of `cache`. The subtraction is one unlocked
        // read-modify-write, which is what a Relaxed load and a Relaxed
        // store by its single writer, the owner's thread, compile to; other
        // threads only read it, and see either value. A borrow is set
        // exactly when the field was below `bytes` (both unsigned), and the
        // label adds back what was taken. No stack, and the flags are not
        // promised to be kept.
        unsafe {
            std::arch::asm!(
                "sub qword ptr [{cache} + {bytes_at}], {bytes}",
                "jb {no_bytes}",
                cache = in(reg) cache as *const TaskCache,
                bytes = in(reg) bytes,
                bytes_at = const std::mem::offset_of!(TaskCache, bytes),
                no_bytes = label {
                    set_u64(&cache.bytes, get_u64(&cache.bytes).wrapping_add(bytes));
                    return false;
                },
                options(nostack),
            );
        }
        true
    }
    #[cfg(not(all(target_arch = "x86_64", not(memcg_loom))))]
    {
        let have = get_u64(&cache.bytes);
        if have < bytes {
            return false;
        }
        set_u64(&cache.bytes, have - bytes);
        true
    }
}

/// Whether `cache`'s armed word is the one key armed with [`HEAP_KEY`]
/// (a Relaxed read).
///
/// On x86-64 one compare of memory with the constant (a 32-bit immediate,
/// sign-extended: the word fits 31 bits) and a branch (an `asm!` with a
/// label): the compiler loads an atomic into a register before comparing
/// it, one instruction more per allocation.
#[inline(always)]
fn heap_key_is_one(cache: &TaskCache) -> bool {
    const WORD: u64 = armed_word(ONE_KEY, HEAP_KEY);
    #[cfg(all(target_arch = "x86_64", not(memcg_loom)))]
    {
        // SAFETY: `cache.fast_key` is a live 8-byte aligned atomic at that
        // offset of `cache`; the compare reads it once (a Relaxed load: an
        // attach on another thread may store it at any time, and an
        // aligned 8-byte read sees either value). No stack, and the flags
        // are not promised to be kept.
        unsafe {
            std::arch::asm!(
                "cmp qword ptr [{cache} + {key_at}], {word}",
                "jne {other}",
                cache = in(reg) cache as *const TaskCache,
                key_at = const std::mem::offset_of!(TaskCache, fast_key),
                word = const WORD,
                other = label {
                    return false;
                },
                options(nostack, readonly),
            );
        }
        true
    }
    #[cfg(not(all(target_arch = "x86_64", not(memcg_loom))))]
    {
        cache.fast_key.load(Ordering::Relaxed) == WORD
    }
}

/// Whether `cache`'s fast key is armed (any key, any cookie bits; a
/// Relaxed read).
///
/// On x86-64 one compare of memory with 0 and a branch (an `asm!` with a
/// label): the compiler loads an atomic into a register and tests it, one
/// instruction more per growth. Not [`heap_key_is_one`]'s compare negated:
/// an `asm!` label is always reached by a jump, and here the jump is the
/// miss, so that the growth's hit path falls through.
#[inline(always)]
fn fast_key_is_armed(cache: &TaskCache) -> bool {
    #[cfg(all(target_arch = "x86_64", not(memcg_loom)))]
    {
        // SAFETY: `cache.fast_key` is a live 8-byte aligned atomic at that
        // offset of `cache`; the compare reads it once (a Relaxed load: an
        // attach on another thread may store it at any time, and an
        // aligned 8-byte read sees either value). No stack, and the flags
        // are not promised to be kept.
        unsafe {
            std::arch::asm!(
                "cmp qword ptr [{cache} + {key_at}], 0",
                "je {unarmed}",
                cache = in(reg) cache as *const TaskCache,
                key_at = const std::mem::offset_of!(TaskCache, fast_key),
                unarmed = label {
                    return false;
                },
                options(nostack, readonly),
            );
        }
        true
    }
    #[cfg(not(all(target_arch = "x86_64", not(memcg_loom))))]
    {
        cache.fast_key.load(Ordering::Relaxed) != 0
    }
}

/// Whether `cache`'s armed key is [`ONE_KEY`], whatever its cookie bits (a
/// Relaxed read).
///
/// On x86-64 one compare of the word's bytes 1 to 4 (its key: armed words
/// fit 32 bits, [`KEY_LIMIT`]) with the constant, and a branch (an `asm!`
/// with a label).
#[inline(always)]
fn key_is_one(cache: &TaskCache) -> bool {
    #[cfg(all(target_arch = "x86_64", not(memcg_loom)))]
    {
        // SAFETY: bytes 1 to 4 of `cache.fast_key`, a live 8-byte aligned
        // atomic at that offset of `cache`. The compare reads them once:
        // an attach or a group's removal on another thread may store the
        // word at any time, and a 4-byte read inside an aligned 8-byte
        // word is atomic on x86-64 (Intel SDM vol. 3 §9.1.1, AMD APM vol. 2
        // §7.3.2), so it sees the bytes of one value or the other, as a
        // Relaxed load would. Bytes
        // 5 to 7 of an armed word are 0 (`KEY_LIMIT`), so these are the
        // key. No stack, and the flags are not promised to be kept.
        unsafe {
            std::arch::asm!(
                "cmp dword ptr [{cache} + {key_at}], {one}",
                "jne {other}",
                cache = in(reg) cache as *const TaskCache,
                key_at = const std::mem::offset_of!(TaskCache, fast_key) + 1,
                one = const ONE_KEY,
                other = label {
                    return false;
                },
                options(nostack, readonly),
            );
        }
        true
    }
    #[cfg(not(all(target_arch = "x86_64", not(memcg_loom))))]
    {
        cache.fast_key.load(Ordering::Relaxed) >> KEY_SHIFT == ONE_KEY
    }
}

// `key_is_one` reads bytes 1 to 4 as the key: a byte of shift, and armed
// words within 32 bits.
const _: () = {
    assert!(KEY_SHIFT == 8);
    assert!(armed_word(KEY_LIMIT - 1, COOKIE_KEY_BITS) < 1 << 32);
};

/// Whether the word at byte offset `AT` of `cache` equals `value` (a
/// Relaxed read): `AT` is the offset of [`TaskCache::hit_addr`] or
/// [`TaskCache::hit_cookie`], the words a free's hit compares a block's
/// owner with.
///
/// On x86-64 one compare of memory with a register and a branch (an
/// `asm!` with a label): the compiler loads an atomic into a register
/// before comparing it, one instruction more per free.
#[inline(always)]
fn word_at_is<const AT: usize>(cache: &TaskCache, value: usize) -> bool {
    // The callers' offsets, checked when the function is instantiated.
    const {
        assert!(
            AT == std::mem::offset_of!(TaskCache, hit_addr)
                || AT == std::mem::offset_of!(TaskCache, hit_cookie)
        )
    };
    #[cfg(all(target_arch = "x86_64", not(memcg_loom)))]
    {
        // SAFETY: `AT` is the offset of an 8-byte aligned `AtomicUsize` of
        // `cache` (the assertion above), live for the borrow; the compare
        // reads it once and writes no memory (a Relaxed load: a fork's
        // handler may store it from another thread, and an aligned 8-byte
        // read sees either value). No stack, and the flags are not
        // promised to be kept.
        unsafe {
            std::arch::asm!(
                "cmp qword ptr [{cache} + {at}], {value}",
                "jne {other}",
                cache = in(reg) cache as *const TaskCache,
                value = in(reg) value,
                at = const AT,
                other = label {
                    return false;
                },
                options(nostack, readonly),
            );
        }
        true
    }
    #[cfg(not(all(target_arch = "x86_64", not(memcg_loom))))]
    {
        let word = if AT == std::mem::offset_of!(TaskCache, hit_addr) {
            &cache.hit_addr
        } else {
            &cache.hit_cookie
        };
        word.load(Ordering::Relaxed) == value
    }
}

/// [`word_at_is`] of [`TaskCache::hit_addr`].
pub(crate) const HIT_ADDR_AT: usize = std::mem::offset_of!(TaskCache, hit_addr);
/// [`word_at_is`] of [`TaskCache::hit_cookie`].
pub(crate) const HIT_COOKIE_AT: usize = std::mem::offset_of!(TaskCache, hit_cookie);

/// Returns `bytes` to `cache` (the owner's hit path) when it then holds at
/// most [`CACHE_MAX_BYTES`]: `false`, with the bytes unchanged, when it
/// would hold more.
///
/// On x86-64 an addition to memory, a compare of memory and a branch (an
/// `asm!` with a label), two instructions fewer than the same in Rust,
/// for the reason [`take_bytes`] gives.
#[inline(always)]
fn put_bytes(cache: &TaskCache, bytes: u64) -> bool {
    #[cfg(all(target_arch = "x86_64", not(memcg_loom)))]
    {
        // SAFETY: as in `take_bytes`: one unlocked
        // read-modify-write of the owner's `cache.bytes`, and a read. The
        // sum does not wrap: the cache holds less than
        // `TASK_CACHE_BOUND_BYTES` (a few pages; the checker verifies it)
        // and `bytes` is the charge of a live object, below 2^63. The
        // compare is unsigned, and the label takes back what was added.
        unsafe {
            std::arch::asm!(
                "add qword ptr [{cache} + {bytes_at}], {bytes}",
                "cmp qword ptr [{cache} + {bytes_at}], {max}",
                "ja {over}",
                cache = in(reg) cache as *const TaskCache,
                bytes = in(reg) bytes,
                bytes_at = const std::mem::offset_of!(TaskCache, bytes),
                max = const CACHE_MAX_BYTES,
                over = label {
                    set_u64(&cache.bytes, get_u64(&cache.bytes).wrapping_sub(bytes));
                    return false;
                },
                options(nostack),
            );
        }
        true
    }
    #[cfg(not(all(target_arch = "x86_64", not(memcg_loom))))]
    {
        let new_bytes = get_u64(&cache.bytes) + bytes;
        if new_bytes > CACHE_MAX_BYTES {
            return false;
        }
        set_u64(&cache.bytes, new_bytes);
        true
    }
}

impl TaskCache {
    /// [`Task::charge_fast`] for the thread that runs now, whose key is
    /// [`ONE_KEY`] when the key needs no CPU and `cpu_key()` otherwise:
    /// the armed key is compared with [`ONE_KEY`] first (one compare with
    /// a constant, and no CPU read, for a topology of one node or the
    /// single cache), then with `cpu_key()`. A task armed with
    /// [`ONE_KEY`] is one whose keys never need the CPU, so the first
    /// compare never lets a per-CPU key's task charge another node.
    ///
    /// `KEYS` says which armed keys hit: [`ANY_KEY_HITS`] (whatever its
    /// cookie bits: the caller reads no cookie),
    /// [`HEAP_KEY_HITS`] (only with [`HEAP_KEY`]: the caller then
    /// allocates from [`TaskCache::alloc_heap`], which such a key
    /// guarantees holds the cached objcg's heap) or [`COOKIE_KEY_HITS`]
    /// (with either cookie bit).
    #[inline(always)]
    pub(crate) fn charge_fast_here<const KEYS: u8>(
        &self,
        bytes: u64,
        cpu_key: impl FnOnce() -> u64,
    ) -> bool {
        // Relaxed: as in `charge_fast_when`. The key is read again for the
        // per-CPU compare, after the one-key compare of memory with a
        // constant (no register kept for the key); an attach (or a group's
        // removal) disarming it in between is seen by either read or by the
        // next charge, as in the seed. No CPU read when no key is armed.
        let armed = if KEYS == HEAP_KEY_HITS {
            heap_key_is_one(self) || {
                let armed = self.fast_key.load(Ordering::Relaxed);
                armed != 0 && armed == armed_word(cpu_key(), HEAP_KEY)
            }
        } else if KEYS == COOKIE_KEY_HITS {
            // A slow entry's: no `asm!` compare.
            let armed = self.fast_key.load(Ordering::Relaxed);
            let key = armed >> KEY_SHIFT;
            armed & COOKIE_KEY_BITS != 0 && (key == ONE_KEY || key == cpu_key())
        } else {
            key_is_one(self) || {
                let armed = self.fast_key.load(Ordering::Relaxed);
                armed != 0 && armed >> KEY_SHIFT == cpu_key()
            }
        };
        armed && take_bytes(self, bytes)
    }
    /// [`Task::charge_fast`] when `matches(armed key)`.
    #[inline(always)]
    fn charge_fast_when(&self, bytes: u64, matches: impl FnOnce(u64) -> bool) -> bool {
        let cache = self;
        // Relaxed: the key set means the cached objcg is still the entry
        // for the key's node (everything that could change it clears the
        // key, an attach or a removal of the override's group from any
        // thread included; see `arm_fast_key` and `recheck_override_key`);
        // one racing with this charge is seen by the next one, as in the
        // seed.
        if !matches(cache.fast_key.load(Ordering::Relaxed)) {
            return false;
        }
        // The bytes carry the object's references: another thread may free
        // it, and put them, before this task's next slow call.
        take_bytes(cache, bytes)
    }
    /// The allocator's fast path for a free: returns `bytes` of
    /// [`ChargeKind::Alloc`] named by the raw word `raw`
    /// ([`Charge::into_raw`] of a charge of this controller) to the byte
    /// cache when it caches that objcg and has room. `false` means "take
    /// [`Task::uncharge`]". Plain loads and stores only; the pending
    /// statistics are flushed by the next slow call (see
    /// [`Task::charge_fast`]). After [`Task::exit`] the cache holds no
    /// objcg, so this always returns `false`.
    ///
    /// # Safety
    /// `raw` comes from `Charge::into_raw` of a live charge of `bytes`
    /// bytes of `ChargeKind::Alloc` made by this task's controller, and is
    /// uncharged once (by this call if it returns `true`).
    #[inline(always)]
    pub(crate) unsafe fn uncharge_fast(&self, raw: usize, bytes: u64) -> bool {
        let cache = self;
        // Relaxed: the owner's own value, or `HITS_STOPPED` from a fork's
        // prepare handler, which stores it before a process-wide barrier
        // and then waits for this thread's busy mark (see `runtime::fork`).
        // One compare rejects a stopped cache, an empty one, another
        // objcg and an unaccounted block (`raw` 0).
        if !word_at_is::<HIT_ADDR_AT>(cache, raw) {
            return self.uncharge_foreign_fast(raw, bytes);
        }
        // The bytes go back with their references, if the cache has room.
        put_bytes(cache, bytes)
    }
    /// [`TaskCache::uncharge_fast`] for an allocator that knows a block's
    /// objcg by its allocator cookie (`MemcgMimalloc`: the block's heap is
    /// its objcg's): `cookie` is the block's, compared with the cached
    /// objcg's ([`TaskCache::hit_cookie`]). `false` when they differ (the
    /// cache holds no objcg or another one, its cookie was not seen yet, or
    /// a fork stopped the hit path), or as `uncharge_fast` otherwise; the
    /// foreign slot is not tried (the caller then finds the block's objcg
    /// and calls `uncharge_fast`).
    ///
    /// # Safety
    /// `cookie` is the allocator cookie of the objcg a live charge of
    /// `bytes` bytes of `ChargeKind::Alloc` of the block being freed
    /// belongs to (or a value no cookie has, such as 0), uncharged once:
    /// by this call if it returns `true`.
    #[inline(always)]
    #[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
    pub(crate) unsafe fn uncharge_fast_cookie(&self, bytes: u64, cookie: usize) -> bool {
        // Relaxed: as `hit_addr` in `uncharge_fast`.
        if !word_at_is::<HIT_COOKIE_AT>(self, cookie) {
            return false;
        }
        put_bytes(self, bytes)
    }
    /// The allocator's fast path for a block that grows by `bytes` of
    /// charge (`realloc`): takes them from the byte cache when `word` is
    /// the cached objcg's word at `AT` ([`TaskCache::hit_addr`] for the
    /// block's charge word, [`TaskCache::hit_cookie`] for its allocator
    /// cookie), a key is armed and the cache holds them. `false`, with
    /// nothing taken, means "take [`Task::resize`]".
    ///
    /// The growth is charged to the block's own objcg, as
    /// [`Task::resize_fast`] charges it. An armed key stands for "no
    /// reservation is spent" (`Task::swap_spend` clears the key and
    /// [`Task::charge_keyed`] arms none while one is), whose reservation
    /// would otherwise pay for the growth: one compare of this cache's
    /// word, no read of the task.
    ///
    /// # Safety
    /// `word` is the charge word (`AT` = `hit_addr`) or the allocator
    /// cookie (`AT` = `hit_cookie`) of the objcg of a live charge of
    /// `ChargeKind::Alloc` of this controller of the block being grown, or
    /// a value no objcg has, such as 0; if this returns `true`, that charge
    /// is now `bytes` bytes larger.
    #[inline(always)]
    pub(crate) unsafe fn grow_fast_at<const AT: usize>(&self, bytes: u64, word: usize) -> bool {
        // Relaxed: as `hit_addr` in `uncharge_fast` (a stopped hit path
        // matches no block's word or cookie).
        if !word_at_is::<AT>(self, word) {
            return false;
        }
        // Relaxed: the owner's own word; an attach or a removal clearing it
        // from another thread does not matter here (the growth is the block's
        // objcg's, not the task's current one).
        if !fast_key_is_armed(self) {
            return false;
        }
        // The bytes carry their references to the block, as a hit's.
        take_bytes(self, bytes)
    }
    /// [`Task::uncharge_fast`] of an object of the objcg the foreign slot
    /// holds (`byte_cache.rs`): gathered there while the slot has room.
    /// Plain loads and stores of the task's own fields, like a hit.
    #[inline(always)]
    fn uncharge_foreign_fast(&self, raw: usize, bytes: u64) -> bool {
        let cache = self;
        // Not while a fork is being prepared (see `uncharge_fast`); an
        // empty slot's address is 0, which an unaccounted block's word is
        // too.
        if raw == 0
            || cache.hit_addr.load(Ordering::Relaxed) == HITS_STOPPED
            || cache.foreign_addr.load(Ordering::Relaxed) != raw
        {
            return false;
        }
        let total = get_u64(&cache.foreign_bytes) + bytes;
        if total > FOREIGN_MAX_BYTES {
            return false;
        }
        set_u64(&cache.foreign_bytes, total);
        true
    }
}

#[cfg(all(test, not(memcg_loom)))]
mod fast_path_tests {
    //! The allocator's fast path: `charge_keyed` arms a key, `charge_fast`
    //! hits only under that key, and everything that could change the
    //! objcg the task charges disarms it.

    use super::*;
    use crate::engine::byte_cache::TASK_CACHE_BOUND_BYTES;
    use crate::engine::stock::MEMCG_CHARGE_BATCH;
    use crate::engine::task_shared::NO_HIT_COOKIE;
    use crate::engine::Group;
    use crate::limit::PAGE_SIZE;
    use crate::{Controller, Topology};

    fn setup(spec: &str) -> (Controller, Group, Task) {
        let ctrl = Controller::new(Topology::from_spec(spec).expect("topology"));
        let g = ctrl.create("g").expect("group");
        let task = ctrl.new_task(&g).expect("task");
        (ctrl, g, task)
    }

    /// Charges through the fast path if it hits, else `charge_keyed`.
    fn charge(ctrl: &Controller, task: &Task, key: u64, cpu: usize, bytes: u64) -> Charge {
        match task.charge_fast(key, bytes) {
            // SAFETY: a raw word of a charge of `bytes` Alloc bytes of
            // `ctrl`, rebuilt once.
            Some(raw) => unsafe { Charge::from_raw(raw, bytes, ChargeKind::Alloc, ctrl) },
            None => task.charge_keyed(key, cpu, bytes).expect("charge"),
        }
    }

    /// The armed key (0 for none), without its cookie bits.
    fn armed(task: &Task) -> u64 {
        task.shared.cache.fast_key.load(Ordering::Relaxed) >> KEY_SHIFT
    }

    /// The armed key's cookie bits.
    fn armed_bits(task: &Task) -> u64 {
        task.shared.cache.fast_key.load(Ordering::Relaxed) & COOKIE_KEY_BITS
    }

    fn alloc_bytes(task: &Task, g: &Group) -> u64 {
        task.flush(0).expect("flush");
        g.stats().stat.alloc_bytes
    }

    #[test]
    fn keyed_charge_arms_the_key_and_only_that_key_hits() {
        let (_ctrl, g, task) = setup("2x1");
        assert!(task.charge_fast(2, 64).is_none(), "a new task has no key");
        let first = task.charge_keyed(2, 0, 64).expect("charge");
        let raw = task.charge_fast(2, 64).expect("armed key hits");
        assert_eq!(raw, first.objcg.as_ptr() as usize);
        assert!(task.charge_fast(3, 64).is_none(), "another key misses");
        assert!(task.charge_fast(0, 64).is_none(), "key 0 never hits");
        assert_eq!(alloc_bytes(&task, &g), 128);
    }

    #[test]
    fn a_key_is_armed_with_a_cookie_bit_only_once_the_objcg_has_a_cookie() {
        // A heap (`HEAP_KEY`, the heap copied) and the latch of an objcg
        // with no heap (`NO_HEAP_KEY`, nothing copied), on the one key
        // and on per-CPU keys.
        for (cookie, bit) in [(0x7000, HEAP_KEY), (1, NO_HEAP_KEY)] {
            for (spec, key, other) in [("1x1", ONE_KEY, 2), ("2x1", 2, 3)] {
                let at = format!("{spec}, cookie {cookie:#x}");
                let (ctrl, g, task) = setup(spec);
                let cache = &task.shared.cache;
                let heap_of = || cache.alloc_heap.load(Ordering::Relaxed);
                let hits = |keys: u8| match keys {
                    ANY_KEY_HITS => task.charge_fast_here::<ANY_KEY_HITS>(64, || key),
                    HEAP_KEY_HITS => task.charge_fast_here::<HEAP_KEY_HITS>(64, || key),
                    _ => task.charge_fast_here::<COOKIE_KEY_HITS>(64, || key),
                };
                let mut raws = Vec::new();
                let first = task.charge_keyed(key, 0, 64).expect("charge");
                assert_eq!(
                    (armed(&task), armed_bits(&task)),
                    (key, 0),
                    "{at}: no cookie"
                );
                // The allocator sets the objcg's cookie: a hit path that
                // reads no cookie still hits, the others miss until the
                // next slow call...
                let raw = first.objcg.as_ptr() as usize;
                raws.push(first.into_raw());
                // SAFETY: a live objcg's address (the charge holds it).
                let word = unsafe { crate::engine::obj_cgroup::alloc_cookie(raw) };
                word.store(cookie, Ordering::Release);
                raws.extend(hits(ANY_KEY_HITS));
                assert_eq!(raws.len(), 2, "{at}");
                assert!(hits(HEAP_KEY_HITS).is_none(), "{at}");
                assert!(hits(COOKIE_KEY_HITS).is_none(), "{at}");
                // ...which arms the key with the cookie's bit (the heap
                // copied first).
                raws.push(task.charge_keyed(key, 0, 64).expect("charge").into_raw());
                assert_eq!((armed(&task), armed_bits(&task)), (key, bit), "{at}");
                let heap = if bit == HEAP_KEY { cookie } else { 0 };
                assert_eq!(heap_of(), heap, "{at}");
                raws.extend(hits(ANY_KEY_HITS));
                raws.extend(hits(COOKIE_KEY_HITS));
                raws.extend(task.charge_fast(key, 64));
                assert_eq!(raws.len(), 6, "{at}: each hits (the bit is not the key)");
                let heap_hit = hits(HEAP_KEY_HITS);
                assert_eq!(heap_hit.is_some(), bit == HEAP_KEY, "{at}");
                raws.extend(heap_hit);
                assert!(raws.iter().all(|&r| r == raw));
                // Another CPU's key misses every way.
                if key != ONE_KEY {
                    assert!(task
                        .charge_fast_here::<ANY_KEY_HITS>(64, || other)
                        .is_none());
                    assert!(task
                        .charge_fast_here::<HEAP_KEY_HITS>(64, || other)
                        .is_none());
                    assert!(task
                        .charge_fast_here::<COOKIE_KEY_HITS>(64, || other)
                        .is_none());
                    assert!(task.charge_fast(other, 64).is_none());
                }
                // A drain disarms (the heap word, read only under a key
                // with `HEAP_KEY`, may stay).
                task.drain_cache(None);
                assert_eq!(armed(&task), 0, "{at}");
                assert!(hits(HEAP_KEY_HITS).is_none());
                word.store(0, Ordering::Release);
                for raw in raws {
                    // SAFETY: each a raw word of a charge of 64 Alloc bytes
                    // of `ctrl`, rebuilt once.
                    let c = unsafe { Charge::from_raw(raw, 64, ChargeKind::Alloc, &ctrl) };
                    task.uncharge(0, c).expect("uncharge");
                }
                assert_eq!(alloc_bytes(&task, &g), 0);
                ctrl.check_invariants().expect("invariants");
            }
        }
    }

    #[test]
    fn a_key_past_the_limit_is_never_armed() {
        let (ctrl, _g, task) = setup("1x1");
        for key in [KEY_LIMIT, KEY_LIMIT | ONE_KEY, 1 << 32 | ONE_KEY, u64::MAX] {
            let c = task.charge_keyed(key, 0, 64).expect("charge");
            assert_eq!(armed(&task), 0, "key {key:#x}");
            task.uncharge(0, c).expect("uncharge");
        }
        ctrl.check_invariants().expect("invariants");
    }

    #[test]
    fn fast_hits_and_frees_keep_the_invariants_and_statistics() {
        let (ctrl, g, task) = setup("1x2");
        let mut charges = Vec::new();
        for i in 0..1000u64 {
            charges.push(charge(&ctrl, &task, 1, (i % 2) as usize, 24 + i % 100));
        }
        let total: u64 = (0..1000u64).map(|i| 24 + i % 100).sum();
        ctrl.check_invariants()
            .expect("invariants with pending fast charges");
        assert_eq!(alloc_bytes(&task, &g), total);
        for c in charges {
            let bytes = c.bytes;
            let raw = c.into_raw();
            // SAFETY: each charge's raw word, uncharged once.
            if !unsafe { task.uncharge_fast(raw, bytes) } {
                // SAFETY: as above.
                let c = unsafe { Charge::from_raw(raw, bytes, ChargeKind::Alloc, &ctrl) };
                task.uncharge(0, c).expect("uncharge");
            }
        }
        ctrl.check_invariants()
            .expect("invariants after fast frees");
        assert_eq!(alloc_bytes(&task, &g), 0);
    }

    /// Objects charged on one task's hits and freed on another task put
    /// their bytes' references there, and never release the objcg the
    /// first task still caches: the bytes a hit hands out carry their
    /// references, whatever the sizes (no count of objects to run out).
    #[test]
    fn objects_charged_on_hits_and_freed_elsewhere_keep_the_cached_objcg() {
        let (ctrl, g, mut a) = setup("1x1");
        // A size that is not a divisor of a page, so that the cache's
        // refills leave remainders.
        const SIZE: u64 = 10;
        let first = a.charge_keyed(1, 0, SIZE).expect("charge");
        let mut charges = vec![first];
        let mut hits = 0;
        for _ in 0..3000 {
            let raw = match a.charge_fast(1, SIZE) {
                Some(raw) => {
                    hits += 1;
                    raw
                }
                None => a.charge_keyed(1, 0, SIZE).expect("charge").into_raw(),
            };
            // SAFETY: a raw word of a charge of `SIZE` Alloc bytes of
            // `ctrl`, rebuilt once.
            charges.push(unsafe { Charge::from_raw(raw, SIZE, ChargeKind::Alloc, &ctrl) });
        }
        assert!(hits > 2900, "the hits served nearly all ({hits})");
        ctrl.check_invariants().expect("invariants after the hits");
        let mut b = ctrl.new_task(&g).expect("task");
        for c in charges {
            b.uncharge(0, c).expect("uncharge");
        }
        b.exit();
        ctrl.check_invariants()
            .expect("invariants after another task freed every object and exited");
        assert!(
            a.charge_fast(1, 16).is_some(),
            "the first task still caches its objcg"
        );
        a.exit();
        ctrl.check_invariants()
            .expect("invariants after both exits");
        assert_eq!(g.stats().stat.alloc_bytes, 16);
    }

    #[test]
    fn attach_makes_the_fast_path_miss_and_the_next_charge_goes_to_the_new_group() {
        let (ctrl, a, task) = setup("1x1");
        let b = ctrl.create("b").expect("group");
        let _first = charge(&ctrl, &task, 1, 0, 64);
        assert!(task.charge_fast(1, 8).is_some());
        b.attach(&task.handle()).expect("attach");
        assert!(task.charge_fast(1, 64).is_none(), "the update flag is set");
        let _second = task.charge_keyed(1, 0, 64).expect("charge");
        assert!(task.charge_fast(1, 32).is_some(), "re-armed for b");
        assert_eq!(alloc_bytes(&task, &a), 72);
        assert_eq!(alloc_bytes(&task, &b), 96);
    }

    #[test]
    fn overrides_flushes_and_exemption_disarm_the_key() {
        let (ctrl, _g, task) = setup("1x1");
        let other = ctrl.create("other").expect("group");
        let inner = ctrl.create("inner").expect("group");
        let _c = charge(&ctrl, &task, 1, 0, 64);
        assert!(task.charge_fast(1, 8).is_some());
        {
            let _guard = task.enter(&other).expect("enter");
            assert!(task.charge_fast(1, 8).is_none(), "override entered");
            let _d = task.charge_keyed(1, 0, 8).expect("charge");
            assert_eq!(armed(&task), 1, "armed for the override's objcg");
            {
                let _inner = task.enter(&inner).expect("enter another");
                assert!(task.charge_fast(1, 8).is_none(), "nested override entered");
                let d = task.charge_keyed(1, 0, 8).expect("charge");
                assert_eq!(armed(&task), 1, "armed for the inner override");
                assert_eq!(
                    task.shared.cache.objcg_addr.load(Ordering::Relaxed),
                    d.objcg.as_ptr() as usize,
                    "the inner override's objcg cached"
                );
            }
            assert!(task.charge_fast(1, 8).is_none(), "nested override left");
            let d = task.charge_keyed(1, 0, 8).expect("charge");
            assert_eq!(armed(&task), 1, "armed for the outer override again");
            let raw = task
                .charge_fast(1, 8)
                .expect("the outer override's hits resume");
            assert_eq!(raw, d.objcg.as_ptr() as usize);
            // SAFETY: a raw word of a charge of 8 Alloc bytes of `ctrl`.
            drop(unsafe { Charge::from_raw(raw, 8, ChargeKind::Alloc, &ctrl) });
        }
        assert!(task.charge_fast(1, 8).is_none(), "override left");
        let _e = task.charge_keyed(1, 0, 8).expect("charge");
        // (The bytes may have come from the CPU stock, leaving the byte
        // cache empty: check the key, not a hit.)
        assert_eq!(armed(&task), 1);
        task.flush(0).expect("flush");
        assert!(task.charge_fast(1, 8).is_none(), "flushed");
        let _f = task.charge_keyed(1, 0, 8).expect("charge");
        assert_eq!(armed(&task), 1);
        task.set_exempt(true);
        assert!(task.charge_fast(1, 8).is_none(), "exempt");
    }

    #[test]
    fn hits_under_an_override_charge_the_override_on_the_keys_node() {
        // Per-node cache, 2 nodes: the override's objcg of each node.
        let (ctrl, g, task) = setup("2x1");
        let other = ctrl.create("other").expect("group");
        let mut held = Vec::new();
        {
            let _guard = task.enter(&other).expect("enter");
            held.push(task.charge_keyed(2, 0, 64).expect("charge"));
            let n0 = held[0].objcg.as_ptr() as usize;
            // The override's objcg for node 0, which the byte cache holds.
            let raw = task.charge_fast(2, 8).expect("a hit under the override");
            assert_eq!(raw, n0);
            // SAFETY: a raw word of a charge of 8 Alloc bytes of `ctrl`.
            held.push(unsafe { Charge::from_raw(raw, 8, ChargeKind::Alloc, &ctrl) });
            assert!(
                task.charge_fast(3, 8).is_none(),
                "node 1's key is not armed"
            );
            held.push(task.charge_keyed(3, 1, 64).expect("charge"));
            let n1 = held[2].objcg.as_ptr() as usize;
            assert_ne!(n0, n1, "one objcg of the override per node");
            let raw = task.charge_fast(3, 8).expect("re-armed for node 1");
            assert_eq!(raw, n1);
            // SAFETY: as above.
            held.push(unsafe { Charge::from_raw(raw, 8, ChargeKind::Alloc, &ctrl) });
        }
        assert!(task.charge_fast(3, 8).is_none(), "override left");
        assert_eq!(alloc_bytes(&task, &other), 64 + 8 + 64 + 8);
        assert_eq!(
            alloc_bytes(&task, &g),
            0,
            "nothing charged to the task's group"
        );
        drop(held);
    }

    #[test]
    fn a_key_under_the_override_of_a_removed_group_stands_for_its_nearest_online_ancestor() {
        // The slow path charges the nearest online ancestor's objcg then,
        // and so do the hits: `p/c` removed under a scope of `c` charges
        // `p`'s objcg; `p` removed too, root's. (Compared by identity: a
        // removed group's objcg, reparented, has its ancestor's path.)
        let (ctrl, _g, task) = setup("1x1");
        let p = ctrl.create("p").expect("group");
        let c = ctrl.create("p/c").expect("group");
        let guard = task.enter(&c).expect("enter");
        let mut held = vec![charge(&ctrl, &task, 1, 0, 64)];
        let objcg = |ch: &Charge| {
            // SAFETY: the charge holds its objcg alive.
            let o = unsafe { ch.objcg.as_ref() };
            (
                o as *const ObjCgroup,
                o.memcg().path.to_string(),
                o.is_root(),
            )
        };
        let mut before = objcg(&held[0]);
        assert_eq!(before.1, "p/c");
        for (removed, ancestor) in [(&c, "p"), (&p, "")] {
            removed.remove().expect("remove");
            assert_eq!(armed(&task), 0, "the removal disarmed the key");
            held.push(task.charge_keyed(1, 0, 64).expect("charge"));
            held.push(task.charge_keyed(1, 0, 64).expect("charge"));
            assert_eq!(armed(&task), 1, "armed for the ancestor's objcg");
            let now = objcg(held.last().expect("a charge"));
            assert_ne!(now.0, before.0, "not the removed group's objcg");
            assert_eq!(now.1, ancestor);
            assert_eq!(now.2, ancestor.is_empty(), "root's own objcg at the top");
            let raw = task.charge_fast(1, 8).expect("a hit");
            assert_eq!(raw, now.0 as usize, "the hit charges the ancestor's objcg");
            // SAFETY: a raw word of a charge of 8 Alloc bytes of `ctrl`.
            held.push(unsafe { Charge::from_raw(raw, 8, ChargeKind::Alloc, &ctrl) });
            before = now;
        }
        drop(guard);
        for charge in held {
            task.uncharge(0, charge).expect("uncharge");
        }
    }

    #[test]
    fn removing_a_group_disarms_a_key_armed_under_its_scope() {
        // The key stood for the group's objcg; its scope's charges go to
        // the nearest online ancestor's (root's) from the removal on.
        let (ctrl, _g, task) = setup("1x1");
        let other = ctrl.create("other").expect("group");
        let guard = task.enter(&other).expect("enter");
        let c = task.charge_keyed(1, 0, 64).expect("charge");
        let d = charge(&ctrl, &task, 1, 0, 64);
        assert_eq!(armed(&task), 1, "armed under the scope");
        assert_eq!(c.objcg.as_ptr(), d.objcg.as_ptr(), "the scope's objcg");
        // Another task caching nothing of the group keeps its key.
        let bystander = ctrl.new_task(&ctrl.root()).expect("task");
        let e = charge(&ctrl, &bystander, 1, 0, 64);
        assert_eq!(armed(&bystander), 1);
        other.remove().expect("remove");
        assert_eq!(armed(&task), 0, "the removal disarmed the key");
        assert_eq!(
            armed(&bystander),
            1,
            "a task caching root's objcg keeps its key"
        );
        assert!(
            task.charge_fast(1, 8).is_none(),
            "no hit on the removed group's objcg"
        );
        let f = task.charge_keyed(1, 0, 64).expect("charge");
        // SAFETY: the charge holds its objcg alive.
        let objcg = unsafe { f.objcg.as_ref() };
        assert!(objcg.is_root(), "charged to the nearest online ancestor");
        drop(guard);
        for (t, charge) in [(&task, c), (&task, d), (&bystander, e), (&task, f)] {
            t.uncharge(0, charge).expect("uncharge");
        }
    }

    #[test]
    fn no_key_is_armed_under_an_override_in_the_single_mode_on_two_nodes() {
        // The single mode's one key covers every node, and an override's
        // objcgs are per node: a hit could charge node 0's on node 1.
        let ctrl = Controller::with_config(
            Topology::from_spec("2x1").expect("topology"),
            crate::engine::controller::Config::default().task_cache(TaskCacheMode::Single),
        );
        let g = ctrl.create("g").expect("group");
        let task = ctrl.new_task(&g).expect("task");
        let other = ctrl.create("other").expect("group");
        let _c = task.charge_keyed(1, 0, 64).expect("charge");
        assert_eq!(armed(&task), 1, "armed outside an override");
        let _guard = task.enter(&other).expect("enter");
        let _d = task.charge_keyed(1, 0, 64).expect("charge");
        assert_eq!(armed(&task), 0, "not armed under the override");
    }

    #[test]
    fn a_charge_on_another_node_does_not_arm_the_first_nodes_key() {
        // Per-node cache, 2 nodes: key 2 is CPU 0 (node 0), key 3 CPU 1.
        let (ctrl, _g, task) = setup("2x1");
        let n0 = charge(&ctrl, &task, 2, 0, 64);
        let n1 = charge(&ctrl, &task, 3, 1, 64);
        assert_ne!(n0.objcg.as_ptr(), n1.objcg.as_ptr(), "one objcg per node");
        assert!(
            task.charge_fast(2, 8).is_none(),
            "the cache moved to node 1"
        );
        let raw = task.charge_fast(3, 8).expect("armed for node 1");
        assert_eq!(raw, n1.objcg.as_ptr() as usize);
    }

    #[test]
    fn a_refresh_outside_the_allocator_path_disarms_the_key() {
        // The lookup refreshes and leaves the word clean while the byte
        // cache still holds `a`: without the refresh's disarm, the fast
        // path would keep charging `a`.
        let (ctrl, a, task) = setup("1x1");
        let b = ctrl.create("b").expect("group");
        let _first = charge(&ctrl, &task, 1, 0, 64);
        assert_eq!(armed(&task), 1);
        b.attach(&task.handle()).expect("attach");
        assert_eq!(task.obj_cgroup(0).expect("lookup").0, "b");
        assert!(!task.is_stale());
        assert!(task.charge_fast(1, 8).is_none(), "refreshed: must miss");
        let _second = charge(&ctrl, &task, 1, 0, 64);
        assert_eq!(alloc_bytes(&task, &a), 64);
        assert_eq!(alloc_bytes(&task, &b), 64);
    }

    #[test]
    fn fast_resize_moves_only_the_difference_and_misses_other_objcgs() {
        let (ctrl, g, task) = setup("1x1");
        let other = ctrl.create("other").expect("group");
        let c = task.charge_keyed(1, 0, 100).expect("charge");
        let raw = c.into_raw();
        let resize = |raw: usize, old: u64, new: u64| {
            // SAFETY: each call names a live charge of `old` bytes (the
            // 100-byte charge as resized by the calls before, or the
            // other group's 64-byte one) and keeps track of its new size.
            unsafe { task.resize_fast(raw, old, new) }
        };
        assert!(resize(raw, 100, 300));
        assert!(resize(raw, 300, 40));
        assert!(resize(raw, 40, 200));
        // More than the byte cache can hold misses.
        let huge = 200 + TASK_CACHE_BOUND_BYTES;
        assert!(!resize(raw, 200, huge));
        assert_eq!(alloc_bytes(&task, &g), 200);
        // The flush emptied the byte cache: everything misses until the
        // next charge fills it.
        assert!(!resize(raw, 200, 100));
        // A charge of another objcg (made under an override) misses.
        let o = {
            let _guard = task.enter(&other).expect("enter");
            task.charge(0, 64, ChargeKind::Alloc).expect("charge")
        };
        let c = task.charge_keyed(1, 0, 8).expect("charge");
        let o_raw = o.into_raw();
        assert!(!resize(o_raw, 64, 32));
        assert_eq!(alloc_bytes(&task, &g), 208, "200 + 8");
        // SAFETY: the raw words of the live charges, rebuilt once.
        let (big, o) = unsafe {
            (
                Charge::from_raw(raw, 200, ChargeKind::Alloc, &ctrl),
                Charge::from_raw(o_raw, 64, ChargeKind::Alloc, &ctrl),
            )
        };
        for charge in [big, c, o] {
            task.uncharge(0, charge).expect("uncharge");
        }
        ctrl.check_invariants().expect("invariants");
        assert_eq!(alloc_bytes(&task, &g), 0);
        assert_eq!(alloc_bytes(&task, &other), 0);
    }

    /// Uncharges `charges` on CPU 0, drops the task, drains the stocks and
    /// checks that the controller is consistent and `g` holds nothing.
    fn release_all(
        ctrl: &Controller,
        g: &Group,
        t: Task,
        charges: impl IntoIterator<Item = Charge>,
    ) {
        for c in charges {
            t.uncharge(0, c).expect("uncharge");
        }
        drop(t);
        ctrl.drain_stocks();
        ctrl.check_invariants().expect("invariants");
        assert_eq!(g.current_bytes(), 0);
    }

    /// `n` charges of 64 bytes on CPU 0, asserted to be all served by the
    /// task's byte cache (no slow charge).
    fn charges_of_64_from_the_cache(ctrl: &Controller, t: &Task, n: u64) -> Vec<Charge> {
        let slow = ctrl.counters().slow_charges;
        let charges = (0..n)
            .map(|_| t.charge(0, 64, ChargeKind::Alloc).expect("charge"))
            .collect();
        assert_eq!(
            ctrl.counters().slow_charges,
            slow,
            "all served by the cache"
        );
        charges
    }

    #[test]
    fn a_short_cache_refills_from_the_stock_in_one_take() {
        // A task whose byte cache is empty takes all the bytes CPU 0's
        // stock holds for its objcg at once (up to the cache's limit), not
        // just the object's: a task allocating what other tasks free then
        // misses once per batch instead of once per object.
        let (ctrl, g, t) = setup("1x1");
        let first = t.charge(0, 64, ChargeKind::Alloc).expect("charge");
        let id = t.shared.cache.objcg.load(Ordering::Relaxed);
        t.flush(0)
            .expect("flush: the cache's bytes go to CPU 0's stock");
        assert_eq!(get_u64(&t.shared.cache.bytes), 0);
        // What CPU 0's byte stock holds for the objcg (a page's remainder
        // at most: the flush handed whole pages back).
        let in_stock: u64 = ctrl
            .core()
            .stock(0)
            .expect("CPU 0")
            .obj_slots()
            .iter()
            .map(|w| crate::engine::stock::ObjSlot::unpack(w.load(Ordering::Relaxed)))
            .filter(|s| s.id == id)
            .map(|s| s.bytes)
            .sum();
        assert!(in_stock >= 64 * 2, "the stock holds {in_stock} bytes");
        let second = t.charge(0, 64, ChargeKind::Alloc).expect("charge");
        assert_eq!(
            get_u64(&t.shared.cache.bytes),
            in_stock - 64,
            "one take brought the stock's bytes into the cache"
        );
        let rest = charges_of_64_from_the_cache(&ctrl, &t, (in_stock - 64) / 64);
        release_all(&ctrl, &g, t, rest.into_iter().chain([first, second]));
    }

    #[test]
    fn a_page_charge_tops_the_cache_up_from_the_page_stock_under_no_limit() {
        // An empty cache's page charge takes the object's page and, from
        // CPU 0's page stock (the rest of the batch the charge made), as
        // many more whole pages as keep the cache within
        // `CACHE_MAX_BYTES`: the next charges up to that are hits.
        let (ctrl, g, t) = setup("1x1");
        let first = t.charge(0, 64, ChargeKind::Alloc).expect("charge");
        let cached = get_u64(&t.shared.cache.bytes);
        assert_eq!(
            cached,
            CACHE_MAX_BYTES - 64,
            "one page's remainder and three pages"
        );
        assert_eq!(
            g.current_bytes(),
            MEMCG_CHARGE_BATCH * PAGE_SIZE,
            "one batch charged"
        );
        let rest = charges_of_64_from_the_cache(&ctrl, &t, cached / 64);
        ctrl.check_invariants().expect("invariants");
        release_all(&ctrl, &g, t, rest.into_iter().chain([first]));

        // Under a `max` of two pages the charge makes no batch, so the
        // page stock has nothing to give: the cache keeps the page's
        // remainder only, and no limit event is counted.
        let h = ctrl.create("h").expect("group");
        h.set_max(crate::Limit::Bytes(2 * PAGE_SIZE)).expect("max");
        let t = ctrl.new_task(&h).expect("task");
        let c = t.charge(0, 64, ChargeKind::Alloc).expect("charge");
        assert_eq!(get_u64(&t.shared.cache.bytes), PAGE_SIZE - 64);
        assert_eq!(h.current_bytes(), PAGE_SIZE);
        assert_eq!(h.events().max, 0, "no charge went over max");
        t.uncharge(0, c).expect("uncharge");
        drop(t);
        ctrl.drain_stocks();

        // Under a `max` two pages above a batch the charge makes its
        // batch, but the group is then within a batch of its limit: the
        // pages stay in the stock, which a charge over the limit drains,
        // not in the task's cache, which it cannot.
        let n = ctrl.create("n").expect("group");
        n.set_max(crate::Limit::Bytes((MEMCG_CHARGE_BATCH + 2) * PAGE_SIZE))
            .expect("max");
        let t = ctrl.new_task(&n).expect("task");
        let c = t.charge(0, 64, ChargeKind::Alloc).expect("charge");
        assert_eq!(
            n.current_bytes(),
            MEMCG_CHARGE_BATCH * PAGE_SIZE,
            "the batch"
        );
        assert_eq!(
            get_u64(&t.shared.cache.bytes),
            PAGE_SIZE - 64,
            "near the limit: not topped up"
        );
        t.uncharge(0, c).expect("uncharge");
        drop(t);
        ctrl.drain_stocks();
        ctrl.check_invariants().expect("invariants");
    }

    #[test]
    fn a_page_charge_for_an_object_of_a_page_or_more_is_not_topped_up() {
        // An object of a page and 100 bytes takes two pages; the cache
        // keeps the second page's remainder only, though the page stock
        // holds the rest of the batch (a task that allocates and frees
        // large blocks in turn would move topped-up pages to its cache and
        // back to the counters on each block).
        let (ctrl, g, t) = setup("1x1");
        let big = t
            .charge(0, PAGE_SIZE + 100, ChargeKind::Alloc)
            .expect("charge");
        assert_eq!(get_u64(&t.shared.cache.bytes), PAGE_SIZE - 100);
        assert_eq!(g.current_bytes(), MEMCG_CHARGE_BATCH * PAGE_SIZE);
        // A small object's page charge afterwards is topped up.
        let rest = charges_of_64_from_the_cache(&ctrl, &t, (PAGE_SIZE - 100) / 64);
        let small = t.charge(0, 64, ChargeKind::Alloc).expect("charge");
        assert!(
            get_u64(&t.shared.cache.bytes) > 2 * PAGE_SIZE,
            "topped up: {} bytes",
            get_u64(&t.shared.cache.bytes)
        );
        release_all(&ctrl, &g, t, rest.into_iter().chain([big, small]));
    }

    #[test]
    fn a_spent_reservation_disarms_the_key_and_pays_for_keyed_charges() {
        let (ctrl, g, task) = setup("1x1");
        let _first = charge(&ctrl, &task, 1, 0, 64);
        assert_eq!(armed(&task), 1);
        let mut r = g.try_charge(4096).expect("reservation");
        let before = g.current_bytes();
        {
            let _spend = task.spend(&mut r).expect("spend");
            assert!(task.charge_fast(1, 64).is_none(), "spending disarms");
            let paid = task.charge_keyed(1, 0, 1000).expect("charge");
            assert_eq!(armed(&task), 0, "never armed while spending");
            assert_eq!(g.current_bytes(), before, "paid from the reservation");
            task.uncharge(0, paid).expect("uncharge");
        }
        assert_eq!(r.bytes(), 4096 - 1000);
        let _again = task.charge_keyed(1, 0, 64).expect("charge");
        assert_eq!(armed(&task), 1, "armed again once spending ended");
    }

    #[test]
    fn a_fast_growth_needs_the_blocks_word_an_armed_key_and_the_bytes() {
        let (ctrl, g, task) = setup("1x1");
        let raw = task.charge_keyed(1, 0, 100).expect("charge").into_raw();
        assert_eq!(armed(&task), 1);
        let cache = &task.shared.cache;
        let grow = |bytes: u64, word: usize| {
            // SAFETY: `raw` is the live 100-byte charge as grown by the
            // calls that returned `true`; the other words are no objcg's.
            unsafe { cache.grow_fast_at::<HIT_ADDR_AT>(bytes, word) }
        };
        let held = get_u64(&cache.bytes);
        assert!(grow(50, raw));
        assert_eq!(get_u64(&cache.bytes), held - 50, "exactly the growth");
        assert!(!grow(8, 0), "an unaccounted block's word");
        assert!(!grow(8, raw + 8), "another objcg's word");
        assert!(!grow(held, raw), "more than the cache holds");
        assert_eq!(get_u64(&cache.bytes), held - 50, "misses take nothing");
        // The cookie form compares the cookie word instead.
        cache.hit_cookie.store(0x5000, Ordering::Relaxed);
        let grow_cookie = |bytes: u64, word: usize| {
            // SAFETY: as in `grow`; 0x5000 stands for the objcg's cookie.
            unsafe { cache.grow_fast_at::<HIT_COOKIE_AT>(bytes, word) }
        };
        assert!(!grow_cookie(8, raw), "the charge word is not the cookie");
        assert!(grow_cookie(8, 0x5000));
        // A spent reservation pays for growth: its disarmed key misses.
        let mut r = g.try_charge(4096).expect("reservation");
        {
            let _spend = task.spend(&mut r).expect("spend");
            assert!(!grow(8, raw), "spending disarms the growth too");
            assert!(!grow_cookie(8, 0x5000));
        }
        drop(r);
        // SAFETY: the charge as grown: 100 + 50 + 8 bytes.
        let c = unsafe { Charge::from_raw(raw, 158, ChargeKind::Alloc, &ctrl) };
        task.uncharge(0, c).expect("uncharge");
        ctrl.check_invariants().expect("invariants");
        assert_eq!(alloc_bytes(&task, &g), 0);
    }

    /// A cache holding `bytes`, armed with `key`.
    fn cache_with(bytes: u64, key: u64) -> TaskCache {
        let c = TaskCache::new_empty();
        set_u64(&c.bytes, bytes);
        c.fast_key.store(key, Ordering::Relaxed);
        c
    }

    // The hit path's memory read-modify-write (an `asm!` on x86-64, Rust
    // elsewhere): a hit takes exactly its bytes, and a miss leaves them as
    // they were.
    #[test]
    fn a_hit_takes_its_bytes_and_a_miss_takes_nothing() {
        let c = cache_with(100, ONE_KEY);
        assert!(take_bytes(&c, 64));
        assert_eq!(get_u64(&c.bytes), 36);
        assert!(!take_bytes(&c, 37), "too few bytes");
        assert_eq!(get_u64(&c.bytes), 36);
        assert!(take_bytes(&c, 36), "exactly the bytes held");
        assert_eq!(get_u64(&c.bytes), 0);
        assert!(!take_bytes(&c, 8), "none left");
        assert_eq!(get_u64(&c.bytes), 0);
        set_u64(&c.bytes, 500);
        assert!(!take_bytes(&c, u64::MAX), "no wrap");
        assert_eq!(get_u64(&c.bytes), 500);
    }

    #[test]
    fn a_free_puts_its_bytes_back_up_to_the_bound_and_over_it_puts_nothing() {
        let c = cache_with(CACHE_MAX_BYTES - 64, 0);
        assert!(!put_bytes(&c, 72), "one byte over");
        assert_eq!(get_u64(&c.bytes), CACHE_MAX_BYTES - 64);
        assert!(put_bytes(&c, 64), "exactly at the bound");
        assert_eq!(get_u64(&c.bytes), CACHE_MAX_BYTES);
        assert!(!put_bytes(&c, 8));
        assert_eq!(get_u64(&c.bytes), CACHE_MAX_BYTES);
        // A whole free: the bytes, with their references.
        let c = cache_with(0, 0);
        assert!(put_bytes(&c, 64));
        assert_eq!(get_u64(&c.bytes), 64);
    }

    #[test]
    fn only_the_one_key_passes_the_one_key_compare() {
        let w = armed_word;
        // The key alone, whatever the cookie bits (bytes 1 to 4: a key
        // in byte 4 or a bit 31 is compared).
        for (word, hits) in [
            (w(ONE_KEY, 0), true),
            (w(ONE_KEY, HEAP_KEY), true),
            (w(ONE_KEY, NO_HEAP_KEY), true),
            (0, false),
            (HEAP_KEY, false),
            (w(2, 0), false),
            (w(2, HEAP_KEY), false),
            (w(ONE_KEY | 1 << 8, 0), false),
            (w(ONE_KEY, 0) | 1 << 31, false),
            (w(ONE_KEY, 0) | 1 << 32, false),
            (u64::MAX, false),
        ] {
            assert_eq!(key_is_one(&cache_with(0, word)), hits, "word {word:#x}");
        }
        // The whole word: only the one key with the heap bit (a 32-bit
        // immediate, sign-extended: a bit 31 or a high half is compared).
        for (word, hits) in [
            (w(ONE_KEY, HEAP_KEY), true),
            (w(ONE_KEY, 0), false),
            (w(ONE_KEY, NO_HEAP_KEY), false),
            (HEAP_KEY, false),
            (w(ONE_KEY, HEAP_KEY) | 1 << 32, false),
            (w(ONE_KEY, HEAP_KEY) | 1 << 31, false),
        ] {
            let c = cache_with(0, word);
            assert_eq!(heap_key_is_one(&c), hits, "word {word:#x}");
        }
        // And the whole hit: the one key without a CPU read, whatever its
        // bits; a per-CPU key only with its CPU; no key never. With
        // `HEAP_KEY_HITS` only a key armed with the heap bit, with
        // `COOKIE_KEY_HITS` one with either bit.
        let never = || -> u64 { panic!("the CPU was read for the one key") };
        let hits = |word: u64, keys: u8, cpu_key: &dyn Fn() -> u64| {
            let c = cache_with(64, word);
            match keys {
                ANY_KEY_HITS => c.charge_fast_here::<ANY_KEY_HITS>(64, cpu_key),
                HEAP_KEY_HITS => c.charge_fast_here::<HEAP_KEY_HITS>(64, cpu_key),
                _ => c.charge_fast_here::<COOKIE_KEY_HITS>(64, cpu_key),
            }
        };
        for bits in [0, HEAP_KEY, NO_HEAP_KEY] {
            assert!(hits(w(ONE_KEY, bits), ANY_KEY_HITS, &never), "bits {bits}");
            assert!(hits(w(7, bits), ANY_KEY_HITS, &|| 7));
            assert!(!hits(w(7, bits), ANY_KEY_HITS, &|| 8));
            let heap = bits == HEAP_KEY;
            assert_eq!(hits(w(ONE_KEY, bits), HEAP_KEY_HITS, &|| ONE_KEY), heap);
            assert_eq!(hits(w(7, bits), HEAP_KEY_HITS, &|| 7), heap);
            assert!(!hits(w(7, bits), HEAP_KEY_HITS, &|| 8));
            let cookie = bits != 0;
            assert_eq!(hits(w(ONE_KEY, bits), COOKIE_KEY_HITS, &|| 5), cookie);
            assert_eq!(hits(w(7, bits), COOKIE_KEY_HITS, &|| 7), cookie);
            assert!(!hits(w(7, bits), COOKIE_KEY_HITS, &|| 8));
        }
        assert!(hits(w(ONE_KEY, HEAP_KEY), HEAP_KEY_HITS, &never));
        assert!(hits(w(ONE_KEY, NO_HEAP_KEY), COOKIE_KEY_HITS, &never));
        for keys in [ANY_KEY_HITS, HEAP_KEY_HITS, COOKIE_KEY_HITS] {
            assert!(!hits(0, keys, &never), "no key never");
            assert!(!hits(w(7, HEAP_KEY), keys, &|| u64::MAX), "no CPU read");
        }
    }

    #[test]
    fn a_free_hits_only_on_its_own_word_and_value() {
        let c = cache_with(0, 0);
        c.hit_addr.store(0x1000, Ordering::Relaxed);
        c.hit_cookie.store(0x2000, Ordering::Relaxed);
        assert!(word_at_is::<HIT_ADDR_AT>(&c, 0x1000));
        assert!(word_at_is::<HIT_COOKIE_AT>(&c, 0x2000));
        // The other word's value, a neighbour, the same low half, 0 and a
        // stopped cache's.
        for v in [0x2000, 0x1008, 0x1000 | 1 << 32, 0, HITS_STOPPED] {
            assert!(!word_at_is::<HIT_ADDR_AT>(&c, v), "hit_addr {v:#x}");
        }
        for v in [0x1000, 0x2008, 0x2000 | 1 << 32, 0, NO_HIT_COOKIE] {
            assert!(!word_at_is::<HIT_COOKIE_AT>(&c, v), "hit_cookie {v:#x}");
        }
        // And through the two frees: a hit puts the bytes back, a miss
        // leaves the cache as it was.
        // SAFETY: no block is freed; only the cache's fields move.
        let hit = unsafe { c.uncharge_fast_cookie(64, 0x1000) };
        assert!(!hit);
        assert_eq!(get_u64(&c.bytes), 0);
        // SAFETY: as above.
        let hit = unsafe { c.uncharge_fast_cookie(64, 0x2000) };
        assert!(hit);
        assert_eq!(get_u64(&c.bytes), 64);
        // SAFETY: as above (the foreign slot is empty, so a miss on the
        // cache is a miss).
        let hit = unsafe { c.uncharge_fast(0x2000, 64) };
        assert!(!hit);
        assert_eq!(get_u64(&c.bytes), 64);
        // SAFETY: as above.
        let hit = unsafe { c.uncharge_fast(0x1000, 64) };
        assert!(hit);
        assert_eq!(get_u64(&c.bytes), 128);
    }
}
