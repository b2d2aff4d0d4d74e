//! The CPU (and NUMA node) the calling thread runs on, cheap enough for the
//! allocation hot path.
//!
//! [`current_cpu`] answers in one of three ways, chosen once per process
//! (see `reference/percpu.md` §2.6 for the measurements behind the order):
//!
//! 1. [`CpuMode::Rseq`]: glibc (2.35 and later) registers a `struct rseq`
//!    area for every thread and publishes where it is relative to the thread
//!    pointer in `__rseq_offset`. The kernel keeps its `cpu_id` field (byte
//!    offset 4) up to date on every return to user space, so reading the CPU
//!    is one thread-pointer-relative load. Since Linux 6.3 the area also has
//!    `node_id` (byte offset 20), valid when
//!    `getauxval(AT_RSEQ_FEATURE_SIZE) >= 28`. The symbols are looked up with
//!    `dlsym`, so the binary still starts on an older glibc or a libc without
//!    rseq, and is used only if this thread's `cpu_id` is valid at init and
//!    agrees with the kernel's `getcpu`.
//! 2. [`CpuMode::Rdpid`] (x86_64 only): the `RDPID` instruction reads
//!    `IA32_TSC_AUX`, which Linux programs on each CPU to `node << 12 | cpu`.
//!    That encoding is a Linux convention, not an ISA guarantee, so RDPID is
//!    used only if CPUID.7.0:ECX bit 22 says it exists and several samples
//!    agree with the kernel's `getcpu` at init (its node bits are trusted
//!    only if they agree too). Like Linux's vDSO `getcpu`, this assumes CPU
//!    ids below 4096.
//! 3. [`CpuMode::Getcpu`]: `libc::sched_getcpu()` (the vDSO on x86_64, a
//!    system call on aarch64).
//!
//! The mode is decided by an atomic state machine, `UNINIT → INITIALIZING →
//! READY`, on the first call, with no `Once`, `OnceLock` or lazy static: a
//! caller that finds another initialization in progress (another thread, or
//! this thread re-entering from a signal handler) does not wait and uses
//! `sched_getcpu` for that call. The environment variable `MEMCG_CPU_MODE`
//! (`rseq`, `rdpid` or `getcpu`), read with `libc::getenv` during init,
//! forces a mode for testing and benchmarking; an unknown value, or a mode
//! this machine cannot use, is reported once on standard error
//! (`memcg: ...`) and the automatic choice is made instead.
//!
//! A CPU id is a locality hint: it may be stale as soon as it is read
//! (preemption, migration), so callers must be correct whatever slot the id
//! selects, and must bounds-check it before indexing (an rseq id is whatever
//! the kernel wrote; an id from a failed `sched_getcpu` is 0).
//!
//! # Nodes
//!
//! [`current_node_hint`] returns the real node when the mode gives it for
//! free. The runtime does **not** use it to place charges: it maps the CPU
//! id to a node through its [`Topology`](crate::Topology), which may be a
//! virtual one (`MEMCG_TOPOLOGY`), and a virtual topology overrides the real
//! node ids.
//!
//! # Inside `GlobalAlloc`
//!
//! Everything here runs inside the global allocator, so nothing here
//! allocates, panics or unwinds: no `String`, `format!`, `std::env`,
//! indexing that can fail, or `unwrap`. Diagnostics go to file descriptor 2
//! with `libc::write` from a stack buffer.
//!
//! The rseq mode assumes that every thread calling in was created by glibc
//! (`pthread_create`, hence `std::thread`), as glibc's rseq ABI does: glibc
//! gives each of its threads an rseq area at `__rseq_offset`. A thread made
//! with a raw `clone(2)` and a TLS block of its own is outside that ABI.
//!
//! The statics are `const`-initialized atomics from [`crate::sync`]: std's,
//! since the runtime describes the real process and is not compiled for the
//! loom models.

use crate::sync::{AtomicU64, Ordering};
use std::ffi::CStr;
use std::fmt;

/// How [`current_cpu`] finds the CPU; chosen once per process (see the
/// [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CpuMode {
    /// The `cpu_id` field of glibc's rseq area: one thread-pointer-relative
    /// load.
    Rseq,
    /// The x86_64 `RDPID` instruction (`IA32_TSC_AUX`, `node << 12 | cpu`).
    Rdpid,
    /// `libc::sched_getcpu()`.
    Getcpu,
}

impl CpuMode {
    /// The mode's name as `MEMCG_CPU_MODE` spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            CpuMode::Rseq => "rseq",
            CpuMode::Rdpid => "rdpid",
            CpuMode::Getcpu => "getcpu",
        }
    }
}

impl fmt::Display for CpuMode {
    /// Writes [`CpuMode::name`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Name of the environment variable that forces a [`CpuMode`].
const MODE_ENV: &CStr = c"MEMCG_CPU_MODE";

/// Byte offset of `cpu_id` in `struct rseq` (Linux uapi `linux/rseq.h`).
const RSEQ_CPU_ID_OFFSET: isize = 4;
/// Byte offset of `node_id` in `struct rseq` (Linux 6.3 and later).
const RSEQ_NODE_ID_OFFSET: isize = 20;
/// `getauxval` key of the kernel's rseq feature size (`AT_RSEQ_FEATURE_SIZE`;
/// the libc crate defines it only for Android).
const AT_RSEQ_FEATURE_SIZE: libc::c_ulong = 27;
/// Feature size from which the kernel fills `node_id` (`offsetof(struct rseq,
/// mm_cid)`, the end of `node_id`).
const RSEQ_FEATURE_SIZE_WITH_NODE: libc::c_ulong = 28;

/// Bits of `IA32_TSC_AUX` that hold the CPU id (Linux's `VDSO_CPUNODE_BITS`).
const RDPID_CPU_BITS: u32 = 12;
/// Mask of the CPU id in `IA32_TSC_AUX` (Linux's `VDSO_CPUNODE_MASK`).
const RDPID_CPU_MASK: u64 = (1 << RDPID_CPU_BITS) - 1;

/// Samples compared with the kernel's `getcpu` before a mode is trusted: at
/// least this many must agree (and none disagree).
const MIN_AGREEING_SAMPLES: u32 = 4;
/// Upper bound on the sampling attempts (a sample taken across a migration
/// is discarded, not counted).
const MAX_SAMPLE_ATTEMPTS: u32 = 32;

// --- The configuration word ---
//
// Bits 0..8: the state (`UNINIT`, `INITIALIZING` or one of the `READY_*`
// modes). Bit 8: `HAS_NODE`, the mode also gives the node. Bits 32..64: the
// rseq offset as an `i32` (only in `READY_RSEQ`). One word, so the hot path
// reads mode, flag and offset with one load and never sees them torn.

/// Mask of the state bits.
const STATE_MASK: u64 = 0xff;
/// No caller has started initialization.
const UNINIT: u64 = 0;
/// One caller is choosing the mode; others use `sched_getcpu`.
const INITIALIZING: u64 = 1;
/// Ready: [`CpuMode::Rseq`].
const READY_RSEQ: u64 = 2;
/// Ready: [`CpuMode::Rdpid`].
const READY_RDPID: u64 = 3;
/// Ready: [`CpuMode::Getcpu`].
const READY_GETCPU: u64 = 4;
/// The mode also gives the node (rseq `node_id`, RDPID's high bits).
const HAS_NODE: u64 = 1 << 8;
/// Shift of the rseq offset.
const OFFSET_SHIFT: u32 = 32;

/// A value alone in its 128-byte block (two cache lines, matching the
/// adjacent-line prefetcher on x86_64 and the line size of big aarch64
/// cores), so that nothing written often shares its line.
#[repr(align(128))]
struct ReadMostly<T>(T);

/// The configuration word (layout above).
///
/// # Invariants
///
/// - It moves `UNINIT → INITIALIZING → READY_*` and never back; only the
///   caller that won the `UNINIT → INITIALIZING` exchange stores `READY_*`.
/// - In state `READY_RSEQ`, the offset bits hold glibc's `__rseq_offset`,
///   and glibc had registered an rseq area for the thread that chose it.
/// - In state `READY_RDPID`, the CPU supports `RDPID` (CPUID checked).
/// - `HAS_NODE` is set only in `READY_RSEQ` (the kernel fills `node_id`) or
///   `READY_RDPID` (the node bits agreed with `getcpu`).
static CONFIG: ReadMostly<AtomicU64> = ReadMostly(AtomicU64::new(UNINIT));

/// The CPU id the calling thread runs on: the hot path.
///
/// Never panics and never allocates. The id is a hint (the thread may move
/// right after), at most the largest possible CPU id in practice, but
/// callers bounds-check it anyway; if every source fails it is 0.
#[inline(always)]
pub(crate) fn current_cpu() -> usize {
    // Relaxed: see `ready_config`.
    let config = CONFIG.0.load(Ordering::Relaxed);
    // The rseq mode first and alone: one compare before the load.
    if config & STATE_MASK == READY_RSEQ {
        // SAFETY: a `READY_RSEQ` word: by the invariants of `CONFIG`, its
        // offset is glibc's `__rseq_offset`, and glibc created this thread
        // (module documentation, "Inside `GlobalAlloc`").
        if let Some(cpu) = unsafe { rseq_cpu(offset_of(config)) } {
            return cpu;
        }
        // This thread has no registration (-1 or -2): not started by
        // glibc, or registration failed.
        return getcpu();
    }
    current_cpu_other(config)
}

/// The calling thread's CPU when the chosen mode reads it without a call
/// (rseq or `RDPID`), else `None` (the caller then takes a path that calls
/// [`current_cpu`]). For the allocator's hit path, which makes no call of
/// its own so that it saves no registers.
#[inline(always)]
pub(crate) fn current_cpu_inline() -> Option<usize> {
    // Relaxed: see `ready_config`.
    let config = CONFIG.0.load(Ordering::Relaxed);
    match config & STATE_MASK {
        // SAFETY: a `READY_RSEQ` word, as in `current_cpu`.
        READY_RSEQ => unsafe { rseq_cpu(offset_of(config)) },
        // SAFETY: a `READY_RDPID` word is stored only after CPUID reported
        // RDPID (invariants of `CONFIG`).
        READY_RDPID => Some(rdpid_cpu_of(unsafe { rdpid() })),
        _ => None,
    }
}

/// [`current_cpu`] in any state but `READY_RSEQ`.
#[inline(always)]
fn current_cpu_other(config: u64) -> usize {
    let config = if config & STATE_MASK > INITIALIZING {
        config
    } else {
        init()
    };
    match config & STATE_MASK {
        READY_RSEQ => {
            // SAFETY: as in `current_cpu`: a `READY_RSEQ` word (here the one
            // `init` just stored).
            unsafe { rseq_cpu(offset_of(config)) }.unwrap_or_else(getcpu)
        }
        // SAFETY: a `READY_RDPID` word is stored only after CPUID reported
        // RDPID (invariants of `CONFIG`).
        READY_RDPID => rdpid_cpu_of(unsafe { rdpid() }),
        _ => getcpu(),
    }
}

/// The NUMA node the calling thread runs on, if the chosen mode gives it
/// for free: rseq `node_id` (Linux 6.3 and later) or RDPID's node bits.
/// `None` in [`CpuMode::Getcpu`] and when the kernel does not provide it.
///
/// Never panics and never allocates. The runtime maps CPUs to nodes through
/// its [`Topology`](crate::Topology) instead, so that a virtual topology
/// (`MEMCG_TOPOLOGY`) overrides the real node ids: this is for diagnostics
/// and for checking the real topology.
#[inline]
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "for diagnostics; remove once the runtime reports it"
    )
)]
pub(crate) fn current_node_hint() -> Option<usize> {
    let config = ready_config();
    if config & HAS_NODE == 0 {
        return None;
    }
    match config & STATE_MASK {
        // SAFETY: a `READY_RSEQ` word from `ready_config`: its offset is
        // glibc's `__rseq_offset` (invariants of `CONFIG`), and glibc
        // created this thread (module documentation).
        READY_RSEQ => unsafe { rseq_node(offset_of(config)) },
        // SAFETY: a `READY_RDPID` word is stored only after CPUID reported
        // RDPID (invariants of `CONFIG`).
        READY_RDPID => Some(rdpid_node_of(unsafe { rdpid() })),
        _ => None,
    }
}

/// The mode [`current_cpu`] uses, choosing it first if no call has yet.
/// While another caller is still choosing, this is [`CpuMode::Getcpu`] (what
/// that concurrent call uses). For tests and benchmark reports.
pub(crate) fn mode() -> CpuMode {
    mode_of(ready_config())
}

/// The mode of a configuration word (`Getcpu` unless rseq or RDPID).
fn mode_of(config: u64) -> CpuMode {
    match config & STATE_MASK {
        READY_RSEQ => CpuMode::Rseq,
        READY_RDPID => CpuMode::Rdpid,
        _ => CpuMode::Getcpu,
    }
}

/// The rseq offset stored in a configuration word.
#[inline(always)]
fn offset_of(config: u64) -> isize {
    // The upper 32 bits hold an `i32`: truncation and sign extension are the
    // point.
    ((config >> OFFSET_SHIFT) as u32 as i32) as isize
}

/// A `READY_*` configuration word: the stored one, or the one init chooses
/// now, or `READY_GETCPU` for this call if another caller is choosing.
#[inline(always)]
fn ready_config() -> u64 {
    // Relaxed: the word is self-contained (state, flag and offset are
    // published together by one store) and no other memory is read on the
    // strength of it, so there is nothing to synchronize with.
    let config = CONFIG.0.load(Ordering::Relaxed);
    if config & STATE_MASK > INITIALIZING {
        config
    } else {
        init()
    }
}

/// Chooses the mode once (the `UNINIT → INITIALIZING → READY` machine) and
/// returns the configuration to use for this call.
///
/// Does not block: if another caller is initializing (another thread, or
/// this one re-entered from a signal handler), returns `READY_GETCPU` for
/// this call only. Does not allocate through the Rust global allocator
/// (`dlsym` and `getenv` use none; a failing `dlsym` may use glibc's own
/// `malloc` for `dlerror`).
///
/// A process forked while another thread was initializing stays in
/// `INITIALIZING` and uses `sched_getcpu`: correct, only slower.
#[cold]
#[inline(never)]
fn init() -> u64 {
    init_in(&CONFIG.0, || {
        let mut buffer = [0u8; MODE_ENV_BYTES];
        choose_config(env_value(MODE_ENV, &mut buffer))
    })
}

/// [`init`] on any configuration word, with the probing as a parameter
/// (`choose` returns a `READY_*` word), so that tests can drive the state
/// machine.
fn init_in(word: &AtomicU64, choose: impl FnOnce() -> u64) -> u64 {
    // Relaxed: the exchange only elects the initializer; the word it will
    // publish is self-contained (see `ready_config`).
    match word.compare_exchange(UNINIT, INITIALIZING, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => {}
        Err(current) if current & STATE_MASK > INITIALIZING => return current,
        Err(_) => return READY_GETCPU,
    }
    let config = choose();
    // Relaxed: see `ready_config`. Only this caller stores a `READY_*` word
    // (it won the exchange above), so the state never goes back.
    word.store(config, Ordering::Relaxed);
    config
}

/// The configuration for a `MEMCG_CPU_MODE` value (`None`: unset), probing
/// the machine. Reports an unusable value once (init runs once).
fn choose_config(forced: Option<&[u8]>) -> u64 {
    if let Some(value) = forced {
        match parse_mode(value) {
            Ok(None) => {}
            Ok(Some(mode)) => match config_for(mode) {
                Some(config) => return config,
                None => report(&[
                    b"memcg: MEMCG_CPU_MODE=",
                    mode.name().as_bytes(),
                    b" is not available on this machine; choosing automatically\n",
                ]),
            },
            Err(()) => {
                let mut line = StderrLine::new();
                line.push(b"memcg: ignoring MEMCG_CPU_MODE=");
                line.push_escaped(value);
                line.push(b": expected rseq, rdpid or getcpu\n");
                line.emit();
            }
        }
    }
    probe_rseq().or_else(probe_rdpid).unwrap_or(READY_GETCPU)
}

/// The configuration of `mode` if this machine can use it.
fn config_for(mode: CpuMode) -> Option<u64> {
    match mode {
        CpuMode::Rseq => probe_rseq(),
        CpuMode::Rdpid => probe_rdpid(),
        CpuMode::Getcpu => Some(READY_GETCPU),
    }
}

/// Parses a `MEMCG_CPU_MODE` value: `rseq`, `rdpid` or `getcpu`, ASCII case
/// ignored, surrounding whitespace ignored. `Ok(None)` for an empty value
/// (the same as unset), `Err(())` for anything else, including a value of
/// [`MODE_ENV_BYTES`] bytes or more (it may have been cut by [`env_value`]).
fn parse_mode(value: &[u8]) -> Result<Option<CpuMode>, ()> {
    if value.len() >= MODE_ENV_BYTES {
        return Err(());
    }
    let value = value.trim_ascii();
    if value.is_empty() {
        Ok(None)
    } else if value.eq_ignore_ascii_case(b"rseq") {
        Ok(Some(CpuMode::Rseq))
    } else if value.eq_ignore_ascii_case(b"rdpid") {
        Ok(Some(CpuMode::Rdpid))
    } else if value.eq_ignore_ascii_case(b"getcpu") {
        Ok(Some(CpuMode::Getcpu))
    } else {
        Err(())
    }
}

/// The value of environment variable `name`, if set, copied into `buffer`
/// (read with `libc::getenv`; no allocation). A value of `buffer.len()`
/// bytes or more fills `buffer` exactly and is cut there: callers treat a
/// full buffer as too long.
///
/// As with any `getenv`, the process must not change the environment
/// concurrently (`std::env::set_var` documents the same contract); the
/// value is copied at once so that no reference into the environment
/// outlives this call.
pub(crate) fn env_value<'b>(name: &CStr, buffer: &'b mut [u8]) -> Option<&'b [u8]> {
    // SAFETY: `name` is NUL-terminated; `getenv` has no other precondition.
    let value = unsafe { libc::getenv(name.as_ptr()) };
    if value.is_null() {
        return None;
    }
    let mut len = 0;
    for slot in buffer.iter_mut() {
        // SAFETY:
        // - `value` points to a NUL-terminated string in the environment
        //   (the `getenv` contract), unchanged during this call (see above).
        // - `len` is at most the string's length: the loop stops at its NUL,
        //   so `value + len` is within the string.
        let byte = unsafe { value.add(len).cast::<u8>().read() };
        if byte == 0 {
            break;
        }
        *slot = byte;
        len += 1;
    }
    buffer.get(..len)
}

/// Bytes of `MEMCG_CPU_MODE` read: more than any valid value.
const MODE_ENV_BYTES: usize = 64;

// --- sched_getcpu ---

/// `libc::sched_getcpu()`, or 0 if it fails.
#[inline]
fn getcpu() -> usize {
    // SAFETY: `sched_getcpu` has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).unwrap_or(0)
}

/// The kernel's own answer, for validating a mode at init: the `getcpu`
/// system call's CPU and node, or `sched_getcpu`'s CPU if the system call is
/// refused (seccomp), or `None`.
fn kernel_cpu_node() -> Option<(usize, Option<usize>)> {
    let mut cpu: libc::c_uint = 0;
    let mut node: libc::c_uint = 0;
    // SAFETY: `getcpu(2)` writes one `unsigned int` through each non-null
    // pointer; both point to live locals of that type, and the third
    // argument (the unused cache) may be null.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_getcpu,
            &mut cpu as *mut libc::c_uint,
            &mut node as *mut libc::c_uint,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if ret == 0 {
        return Some((cpu as usize, Some(node as usize)));
    }
    // SAFETY: `sched_getcpu` has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok().map(|cpu| (cpu, None))
}

/// How samples of a mode compared with the kernel's answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Agreement {
    /// Samples whose CPU matched.
    cpu_agree: u32,
    /// Samples whose CPU did not match.
    cpu_disagree: u32,
    /// Samples whose node matched (both sides had one).
    node_agree: u32,
    /// Samples whose node did not match (both sides had one).
    node_disagree: u32,
}

impl Agreement {
    /// Enough samples agreed on the CPU and none disagreed.
    fn cpu_ok(self) -> bool {
        self.cpu_agree >= MIN_AGREEING_SAMPLES && self.cpu_disagree == 0
    }

    /// Enough samples agreed on the node and none disagreed.
    fn node_ok(self) -> bool {
        self.node_agree >= MIN_AGREEING_SAMPLES && self.node_disagree == 0
    }
}

/// Compares `sample` (a CPU and maybe a node) with the kernel's answer,
/// bracketing each sample between two kernel reads and discarding it if
/// they differ (the thread migrated).
fn sample_agreement(mut sample: impl FnMut() -> Option<(usize, Option<usize>)>) -> Agreement {
    let mut agreement = Agreement::default();
    for _ in 0..MAX_SAMPLE_ATTEMPTS {
        let before = kernel_cpu_node();
        let sampled = sample();
        let after = kernel_cpu_node();
        let (Some(kernel), Some(sampled)) = (before, sampled) else {
            continue;
        };
        if after != Some(kernel) {
            continue;
        }
        if sampled.0 == kernel.0 {
            agreement.cpu_agree += 1;
        } else {
            agreement.cpu_disagree += 1;
        }
        if let (Some(sampled_node), Some(kernel_node)) = (sampled.1, kernel.1) {
            if sampled_node == kernel_node {
                agreement.node_agree += 1;
            } else {
                agreement.node_disagree += 1;
            }
        }
        if agreement.cpu_agree >= MIN_AGREEING_SAMPLES
            && (kernel.1.is_none() || agreement.node_agree >= MIN_AGREEING_SAMPLES)
        {
            break;
        }
    }
    agreement
}

// --- rseq ---

/// Loads the `u32` at `offset` bytes from the thread pointer.
///
/// # Safety
///
/// `offset` bytes from this thread's thread pointer there must be 4
/// readable bytes, 4-aligned, of this thread's static TLS.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tp_load_u32(offset: isize) -> u32 {
    let value: u32;
    // SAFETY:
    // - On x86_64 Linux, `fs` is based at the thread pointer, so this reads
    //   the 4 readable, aligned bytes the caller guarantees.
    // - Not `pure`: the kernel changes the value between calls.
    unsafe {
        std::arch::asm!(
            "mov {value:e}, dword ptr fs:[{offset}]",
            offset = in(reg) offset,
            value = lateout(reg) value,
            options(nostack, readonly, preserves_flags),
        );
    }
    value
}

/// Loads the `u32` at `offset` bytes from the thread pointer.
///
/// # Safety
///
/// `offset` bytes from this thread's thread pointer there must be 4
/// readable bytes, 4-aligned, of this thread's static TLS.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn tp_load_u32(offset: isize) -> u32 {
    let value: u32;
    // SAFETY:
    // - `tpidr_el0` holds the thread pointer on aarch64 Linux, so this reads
    //   the 4 readable, aligned bytes the caller guarantees.
    // - Not `pure`: the kernel changes the value between calls.
    unsafe {
        std::arch::asm!(
            "mrs {tp}, tpidr_el0",
            "ldr {value:w}, [{tp}, {offset}]",
            tp = out(reg) _,
            offset = in(reg) offset,
            value = lateout(reg) value,
            options(nostack, readonly, preserves_flags),
        );
    }
    value
}

/// Without thread-pointer asm for this architecture: `u32::MAX`, which is
/// rseq's "unregistered" `-1`, so the rseq mode is never chosen.
///
/// # Safety
///
/// None; `unsafe` only to match the other architectures.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline(always)]
unsafe fn tp_load_u32(_offset: isize) -> u32 {
    u32::MAX
}

/// The `cpu_id` of this thread's rseq area, or `None` if it is negative
/// (`-1` unregistered, `-2` registration failed, or garbage).
///
/// # Safety
///
/// `rseq_offset` is glibc's `__rseq_offset`, and glibc created this thread
/// (it then allocated at least 32 bytes of rseq area at that offset).
#[inline(always)]
unsafe fn rseq_cpu(rseq_offset: isize) -> Option<usize> {
    // SAFETY: the caller guarantees the rseq area at `rseq_offset`; `cpu_id`
    // is its 4-aligned `u32` at byte 4 (the area is 32-aligned).
    let raw = unsafe { tp_load_u32(rseq_offset.wrapping_add(RSEQ_CPU_ID_OFFSET)) };
    usize::try_from(raw as i32).ok()
}

/// The `node_id` of this thread's rseq area, if this thread is registered.
///
/// # Safety
///
/// As [`rseq_cpu`].
#[inline]
unsafe fn rseq_node(rseq_offset: isize) -> Option<usize> {
    // SAFETY: as in `rseq_cpu` (the caller's guarantee is the same).
    unsafe { rseq_cpu(rseq_offset) }?;
    // SAFETY: the caller guarantees the area; `node_id` is its 4-aligned
    // `u32` at byte 20, inside the 32 bytes glibc always allocates.
    let raw = unsafe { tp_load_u32(rseq_offset.wrapping_add(RSEQ_NODE_ID_OFFSET)) };
    usize::try_from(raw as i32).ok()
}

/// What [`probe_rseq_area`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RseqArea {
    /// glibc's `__rseq_offset`.
    offset: isize,
    /// The kernel fills `node_id` (`AT_RSEQ_FEATURE_SIZE >= 28`).
    has_node: bool,
}

/// glibc's rseq area, if glibc exports one and registered it for this
/// thread (never without thread-pointer asm: see [`tp_load_u32`]).
fn probe_rseq_area() -> Option<RseqArea> {
    // SAFETY: `dlsym` with `RTLD_DEFAULT` and a NUL-terminated name has no
    // other precondition.
    let offset_ptr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) };
    // SAFETY: as above.
    let size_ptr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) };
    if offset_ptr.is_null() || size_ptr.is_null() {
        return None;
    }
    // SAFETY:
    // - glibc (2.35 and later) defines `const ptrdiff_t __rseq_offset` and
    //   `const unsigned int __rseq_size`; `dlsym` returned their addresses,
    //   which are aligned for their types (`isize` is `ptrdiff_t` here).
    // - Both are written during startup, before any Rust code runs, and
    //   never again.
    let (offset, size) = unsafe {
        (
            offset_ptr.cast::<isize>().read(),
            size_ptr.cast::<u32>().read(),
        )
    };
    // Size 0: glibc's registration failed or is disabled
    // (`glibc.pthread.rseq=0`). The offset must fit the configuration word.
    if size == 0 || i32::try_from(offset).is_err() {
        return None;
    }
    // SAFETY: `offset` is glibc's `__rseq_offset`, read above, and glibc
    // created this thread (the one running Rust code in a glibc process);
    // glibc allocates the area even when registration failed, and then
    // writes -2 to `cpu_id`, which `rseq_cpu` turns into `None`.
    unsafe { rseq_cpu(offset) }?;
    // SAFETY: `getauxval` has no preconditions (unknown keys return 0).
    let feature_size = unsafe { libc::getauxval(AT_RSEQ_FEATURE_SIZE) };
    Some(RseqArea {
        offset,
        has_node: feature_size >= RSEQ_FEATURE_SIZE_WITH_NODE,
    })
}

/// The `READY_RSEQ` configuration, if glibc's rseq area exists, is
/// registered for this thread and agrees with the kernel.
fn probe_rseq() -> Option<u64> {
    let area = probe_rseq_area()?;
    let agreement = sample_agreement(|| {
        // SAFETY: `area.offset` is glibc's `__rseq_offset` (from
        // `probe_rseq_area`), and this is the thread that probed it.
        let cpu = unsafe { rseq_cpu(area.offset) }?;
        let node = if area.has_node {
            // SAFETY: as above.
            unsafe { rseq_node(area.offset) }
        } else {
            None
        };
        Some((cpu, node))
    });
    // The kernel's `getcpu` may be unavailable (seccomp): then nothing can
    // be compared and the kernel's rseq ABI is trusted.
    let compared = agreement.cpu_agree + agreement.cpu_disagree > 0;
    if compared && !agreement.cpu_ok() {
        return None;
    }
    let node_trusted = area.has_node && agreement.node_disagree == 0;
    // Two's complement of the `i32` offset in the upper half: `offset_of`
    // undoes it.
    let offset_bits = u64::from(area.offset as i32 as u32) << OFFSET_SHIFT;
    Some(READY_RSEQ | offset_bits | if node_trusted { HAS_NODE } else { 0 })
}

// --- RDPID ---

/// Whether this CPU has `RDPID` (CPUID.(EAX=7,ECX=0):ECX bit 22); always
/// `false` off x86_64.
fn cpu_has_rdpid() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // `__get_cpuid_max` and `__cpuid_count` are safe functions from Rust
        // 1.87 on; the crate's minimum toolchain (1.85) still needs `unsafe`.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86_64 CPU; leaf 0 is always valid.
        let (max_leaf, _) = unsafe { std::arch::x86_64::__get_cpuid_max(0) };
        #[allow(unused_unsafe)]
        // SAFETY: leaf 7 is at most the maximum basic leaf (checked first).
        let has_rdpid =
            max_leaf >= 7 && unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.ecx & (1 << 22) != 0;
        has_rdpid
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `IA32_TSC_AUX` via `RDPID`: Linux stores `node << 12 | cpu` there.
///
/// # Safety
///
/// The CPU supports `RDPID` ([`cpu_has_rdpid`]); otherwise it raises `#UD`.
#[inline(always)]
unsafe fn rdpid() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        let value: u64;
        // SAFETY:
        // - The caller guarantees the CPU supports RDPID.
        // - RDPID reads a register: no memory, no stack, no flags. Not
        //   `pure`: the value depends on the CPU the thread runs on.
        unsafe {
            std::arch::asm!(
                "rdpid {value}",
                value = out(reg) value,
                options(nomem, nostack, preserves_flags),
            );
        }
        value
    }
    // Unreachable: `cpu_has_rdpid` is false off x86_64.
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// The CPU bits of an `RDPID` value.
#[inline(always)]
fn rdpid_cpu_of(aux: u64) -> usize {
    (aux & RDPID_CPU_MASK) as usize
}

/// The node bits of an `RDPID` value.
#[inline(always)]
fn rdpid_node_of(aux: u64) -> usize {
    (aux >> RDPID_CPU_BITS) as usize
}

/// The `READY_RDPID` configuration, if the CPU has `RDPID` and its CPU bits
/// agree with the kernel (`HAS_NODE` if its node bits agree too).
fn probe_rdpid() -> Option<u64> {
    if !cpu_has_rdpid() {
        return None;
    }
    let agreement = sample_agreement(|| {
        // SAFETY: CPUID reported RDPID just above.
        let aux = unsafe { rdpid() };
        Some((rdpid_cpu_of(aux), Some(rdpid_node_of(aux))))
    });
    if !agreement.cpu_ok() {
        return None;
    }
    Some(READY_RDPID | if agreement.node_ok() { HAS_NODE } else { 0 })
}

// --- diagnostics ---

/// One line for standard error, built in a stack buffer (no allocation) and
/// written with a single `libc::write(2, ...)` so that concurrent messages
/// do not interleave. Text beyond the buffer is dropped and the line ends
/// with `...` and a newline.
pub(crate) struct StderrLine {
    /// The text so far.
    buf: [u8; StderrLine::CAPACITY],
    /// Bytes of `buf` in use.
    len: usize,
    /// Some text did not fit.
    truncated: bool,
}

impl StderrLine {
    /// Bytes a line can hold.
    const CAPACITY: usize = 512;

    /// An empty line.
    pub(crate) fn new() -> StderrLine {
        StderrLine {
            buf: [0; StderrLine::CAPACITY],
            len: 0,
            truncated: false,
        }
    }

    /// The text so far.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Appends bytes as they are, as many as fit.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.push_byte(byte);
        }
    }

    /// Appends bytes with every byte that is not printable ASCII (or is a
    /// backslash) escaped as Rust does (`\n`, `\x01`), so that an
    /// environment value cannot forge lines or terminal escapes.
    pub(crate) fn push_escaped(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            for escaped in std::ascii::escape_default(byte) {
                self.push_byte(escaped);
            }
        }
    }

    /// Appends one byte if it fits.
    fn push_byte(&mut self, byte: u8) {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = byte;
                self.len += 1;
            }
            None => self.truncated = true,
        }
    }

    /// Writes the line to standard error (errors are ignored: there is
    /// nowhere else to report them).
    pub(crate) fn emit(mut self) {
        if self.truncated {
            let end = self.len.saturating_sub(4);
            if let Some(tail) = self.buf.get_mut(end..self.len) {
                tail.copy_from_slice(b"...\n");
            }
        }
        let mut rest = self.as_bytes();
        while !rest.is_empty() {
            // SAFETY: `rest` is a live, initialized byte slice; `write` reads
            // at most `rest.len()` bytes from it.
            let written = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
            match usize::try_from(written) {
                Ok(0) => break,
                Ok(n) => rest = rest.get(n..).unwrap_or(&[]),
                Err(_) if interrupted() => {}
                Err(_) => break,
            }
        }
    }
}

impl fmt::Write for StderrLine {
    /// Appends `s`, as much as fits; never fails.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

impl fmt::Debug for StderrLine {
    /// Writes the text so far (as bytes if it is not UTF-8); no allocation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("StderrLine");
        match std::str::from_utf8(self.as_bytes()) {
            Ok(text) => debug.field("text", &text),
            Err(_) => debug.field("bytes", &self.as_bytes()),
        };
        debug.field("truncated", &self.truncated).finish()
    }
}

/// Whether the last failed libc call was interrupted by a signal (`EINTR`).
/// Reads `errno`; no allocation.
pub(crate) fn interrupted() -> bool {
    std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
}

/// Writes the concatenation of `parts` to standard error as one line.
fn report(parts: &[&[u8]]) {
    let mut line = StderrLine::new();
    for part in parts {
        line.push(part);
    }
    line.emit();
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;

    /// `sched_getcpu()` directly.
    fn sched_getcpu() -> i32 {
        // SAFETY: no preconditions.
        unsafe { libc::sched_getcpu() }
    }

    /// Runs `read` between two `sched_getcpu` calls until both agree (no
    /// migration in between) and returns `(read, kernel)`.
    fn bracketed(mut read: impl FnMut() -> usize) -> (usize, usize) {
        for _ in 0..1000 {
            let before = sched_getcpu();
            let value = read();
            let after = sched_getcpu();
            if before == after && before >= 0 {
                return (value, before as usize);
            }
        }
        panic!("the thread migrated on every one of 1000 attempts");
    }

    #[test]
    fn current_cpu_matches_sched_getcpu() {
        let (cpu, kernel) = bracketed(current_cpu);
        assert_eq!(cpu, kernel, "mode {:?}", mode());
    }

    #[test]
    fn current_cpu_from_many_threads_matches_sched_getcpu() {
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        let (cpu, kernel) = bracketed(current_cpu);
                        assert_eq!(cpu, kernel, "mode {:?}", mode());
                    }
                });
            }
        });
    }

    #[test]
    fn mode_is_stable_and_ready() {
        let first = mode();
        assert_eq!(mode(), first);
        let state = CONFIG.0.load(Ordering::Relaxed) & STATE_MASK;
        assert!(state > INITIALIZING, "state {state}");
        eprintln!("cpu mode: {first:?}, node hint: {:?}", current_node_hint());
    }

    #[test]
    fn init_in_concurrent_callers_probe_once_and_never_wait() {
        let word = AtomicU64::new(UNINIT);
        let probes = AtomicU64::new(0);
        let chosen = READY_RSEQ | HAS_NODE | 7 << OFFSET_SHIFT;
        let barrier = std::sync::Barrier::new(8);
        let results: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        init_in(&word, || {
                            probes.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            chosen
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(probes.load(Ordering::Relaxed), 1);
        assert_eq!(word.load(Ordering::Relaxed), chosen);
        assert!(results.contains(&chosen));
        assert!(
            results.iter().all(|&r| r == chosen || r == READY_GETCPU),
            "{results:x?}"
        );
        // Once ready, later callers get the stored word without probing.
        assert_eq!(init_in(&word, || unreachable!()), chosen);
    }

    #[test]
    fn init_in_reentrant_call_uses_getcpu_for_that_call() {
        let word = AtomicU64::new(UNINIT);
        let inner = std::cell::Cell::new(0);
        let outer = init_in(&word, || {
            // As if a signal handler on this thread asked for the CPU now.
            inner.set(init_in(&word, || unreachable!()));
            READY_RDPID
        });
        assert_eq!(inner.get(), READY_GETCPU);
        assert_eq!(outer, READY_RDPID);
        assert_eq!(word.load(Ordering::Relaxed), READY_RDPID);
    }

    #[test]
    fn getcpu_mode_matches_sched_getcpu() {
        let (cpu, kernel) = bracketed(getcpu);
        assert_eq!(cpu, kernel);
    }

    #[test]
    fn rseq_mode_when_available_matches_sched_getcpu() {
        let Some(config) = probe_rseq() else {
            eprintln!("rseq: not available here");
            return;
        };
        assert_eq!(config & STATE_MASK, READY_RSEQ);
        let offset = offset_of(config);
        // SAFETY: `offset` is glibc's `__rseq_offset` (from `probe_rseq`), on
        // a glibc-created thread.
        let read = || unsafe { rseq_cpu(offset) }.expect("registered thread");
        let (cpu, kernel) = bracketed(read);
        assert_eq!(cpu, kernel);
        // Another glibc thread has its own area at the same offset.
        std::thread::spawn(move || {
            // SAFETY: as above; glibc created this thread too.
            let read = || unsafe { rseq_cpu(offset) }.expect("registered thread");
            let (cpu, kernel) = bracketed(read);
            assert_eq!(cpu, kernel);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn rseq_node_when_available_matches_getcpu_syscall() {
        let Some(config) = probe_rseq() else { return };
        if config & HAS_NODE == 0 {
            eprintln!("rseq: no node_id here");
            return;
        }
        let offset = offset_of(config);
        for _ in 0..100 {
            let kernel = kernel_cpu_node();
            // SAFETY: glibc's offset on a glibc thread (see above).
            let node = unsafe { rseq_node(offset) };
            if kernel == kernel_cpu_node() {
                assert_eq!(node, kernel.and_then(|(_, node)| node));
                return;
            }
        }
        panic!("migrated on every attempt");
    }

    #[test]
    fn rdpid_mode_when_available_matches_sched_getcpu() {
        let Some(config) = probe_rdpid() else {
            eprintln!("rdpid: not available here (cpuid bit: {})", cpu_has_rdpid());
            return;
        };
        assert_eq!(config & STATE_MASK, READY_RDPID);
        // SAFETY: `probe_rdpid` succeeded, so CPUID reported RDPID.
        let (cpu, kernel) = bracketed(|| rdpid_cpu_of(unsafe { rdpid() }));
        assert_eq!(cpu, kernel);
        if config & HAS_NODE != 0 {
            for _ in 0..100 {
                let kernel = kernel_cpu_node();
                // SAFETY: as above.
                let node = Some(rdpid_node_of(unsafe { rdpid() }));
                if kernel == kernel_cpu_node() {
                    assert_eq!(node, kernel.and_then(|(_, node)| node));
                    return;
                }
            }
            panic!("migrated on every attempt");
        }
    }

    #[test]
    fn sample_agreement_rejects_a_wrong_source() {
        let wrong = sample_agreement(|| {
            let (cpu, node) = kernel_cpu_node()?;
            Some((cpu + 1, node.map(|n| n + 1)))
        });
        assert!(!wrong.cpu_ok(), "{wrong:?}");
        assert!(!wrong.node_ok(), "{wrong:?}");
        let right = sample_agreement(kernel_cpu_node);
        assert!(right.cpu_ok(), "{right:?}");
        let nothing = sample_agreement(|| None);
        assert_eq!(nothing, Agreement::default());
    }

    #[test]
    fn config_word_round_trips_negative_and_positive_offsets() {
        for offset in [
            -320isize,
            -256,
            0,
            4,
            2336,
            i32::MIN as isize,
            i32::MAX as isize,
        ] {
            let word = READY_RSEQ | u64::from(offset as i32 as u32) << OFFSET_SHIFT | HAS_NODE;
            assert_eq!(offset_of(word), offset);
            assert_eq!(mode_of(word), CpuMode::Rseq);
            assert_eq!(word & STATE_MASK, READY_RSEQ);
        }
        assert_eq!(mode_of(READY_RDPID | HAS_NODE), CpuMode::Rdpid);
        assert_eq!(mode_of(READY_GETCPU), CpuMode::Getcpu);
        assert_eq!(mode_of(INITIALIZING), CpuMode::Getcpu);
    }

    #[test]
    fn forced_modes_are_honoured_when_available() {
        assert_eq!(choose_config(Some(b"getcpu")), READY_GETCPU);
        assert_eq!(mode_of(choose_config(Some(b" GetCpu\n"))), CpuMode::Getcpu);
        if let Some(config) = probe_rseq() {
            assert_eq!(choose_config(Some(b"rseq")), config);
        }
        if let Some(config) = probe_rdpid() {
            assert_eq!(choose_config(Some(b"rdpid")), config);
        }
        // Unset and empty choose automatically: the first available mode.
        let automatic = probe_rseq().or_else(probe_rdpid).unwrap_or(READY_GETCPU);
        assert_eq!(mode_of(choose_config(None)), mode_of(automatic));
        assert_eq!(mode_of(choose_config(Some(b""))), mode_of(automatic));
    }

    #[test]
    fn parse_mode_accepts_the_three_names_only() {
        assert_eq!(parse_mode(b"rseq"), Ok(Some(CpuMode::Rseq)));
        assert_eq!(parse_mode(b"RDPID"), Ok(Some(CpuMode::Rdpid)));
        assert_eq!(parse_mode(b" getcpu \n"), Ok(Some(CpuMode::Getcpu)));
        assert_eq!(parse_mode(b""), Ok(None));
        assert_eq!(parse_mode(b"  "), Ok(None));
        for bad in [&b"rseq2"[..], b"get cpu", b"auto", b"\xff", b"rseq,rdpid"] {
            assert_eq!(parse_mode(bad), Err(()), "{bad:?}");
        }
        let mut long = [b' '; MODE_ENV_BYTES];
        long[..4].copy_from_slice(b"rseq");
        assert_eq!(parse_mode(&long), Err(()));
        assert_eq!(
            parse_mode(&long[..MODE_ENV_BYTES - 1]),
            Ok(Some(CpuMode::Rseq))
        );
        for mode in [CpuMode::Rseq, CpuMode::Rdpid, CpuMode::Getcpu] {
            assert_eq!(parse_mode(mode.name().as_bytes()), Ok(Some(mode)));
            assert_eq!(mode.to_string(), mode.name());
        }
    }

    #[test]
    fn current_node_hint_when_given_matches_getcpu_syscall() {
        for _ in 0..100 {
            let kernel = kernel_cpu_node();
            let hint = current_node_hint();
            if kernel != kernel_cpu_node() {
                continue;
            }
            if let (Some(hint), Some((_, Some(node)))) = (hint, kernel) {
                assert_eq!(hint, node);
            }
            return;
        }
        panic!("migrated on every attempt");
    }

    #[test]
    fn env_value_copies_a_set_variable_and_fills_a_short_buffer() {
        // PATH is set in every environment the tests run in.
        let expected = std::env::var_os("PATH").expect("PATH is set");
        let expected = expected.as_encoded_bytes();
        let mut buffer = [0u8; 65536];
        assert_eq!(env_value(c"PATH", &mut buffer), Some(expected));
        let mut short = [0u8; 3];
        let cut = env_value(c"PATH", &mut short).unwrap();
        assert_eq!(cut, &expected[..3.min(expected.len())]);
        assert_eq!(
            env_value(c"MEMCG_SURELY_UNSET_VARIABLE_1234", &mut buffer),
            None
        );
        assert_eq!(env_value(c"PATH", &mut []), Some(&[][..]));
    }

    #[test]
    fn stderr_line_escapes_and_truncates() {
        let mut line = StderrLine::new();
        line.push(b"a=");
        line.push_escaped(b"x\n\x1b\\y");
        assert_eq!(line.as_bytes(), b"a=x\\n\\x1b\\\\y");
        let mut long = StderrLine::new();
        for _ in 0..100 {
            long.push(b"0123456789");
        }
        assert_eq!(long.as_bytes().len(), StderrLine::CAPACITY);
        assert!(long.truncated);
        use std::fmt::Write as _;
        let mut formatted = StderrLine::new();
        write!(formatted, "{} {}", CpuMode::Rseq, 42).unwrap();
        assert_eq!(formatted.as_bytes(), b"rseq 42");
    }
}
