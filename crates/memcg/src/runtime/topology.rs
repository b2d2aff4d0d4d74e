//! The machine's NUMA topology, detected once for the runtime, and the map
//! from the CPU ids the [`cpu`](super::cpu) layer reports to the topology's
//! CPU ids.
//!
//! # Detection ([`detect`])
//!
//! 1. **Override.** If the environment variable `MEMCG_TOPOLOGY` is set and
//!    not blank, it is parsed by [`Topology::from_spec`]: `2x1` is CPU 0 on
//!    node 0 and CPU 1 on node 1, `0:0-3;1:4-7` an explicit map. This is how
//!    a single-node machine exercises the multi-node paths with real
//!    threads. A malformed value is reported once on standard error as
//!    `memcg: ignoring MEMCG_TOPOLOGY=<value>: <reason>` and detection
//!    continues with sysfs.
//! 2. **sysfs.** Node ids come from `/sys/devices/system/node/possible` (or
//!    `online` if that is unreadable), each node's CPUs from
//!    `/sys/devices/system/node/node<N>/cpulist`, and the CPU ids from
//!    `/sys/devices/system/cpu/possible`, so that per-CPU arrays cover CPUs
//!    that come online later. Node and CPU ids may be sparse. A possible CPU
//!    that no node lists (an offline CPU: Linux lists only online CPUs in
//!    `cpulist`) is put on the node its `devices/system/cpu/cpu<N>/node<M>`
//!    link names (a present CPU keeps its link while offline), else on
//!    **node 0**, the node Linux falls back to (a possible CPU that is not
//!    present has no sysfs directory); a CPU listed by two nodes stays on
//!    the lower one. A node whose `cpulist` is missing or malformed
//!    contributes no CPUs. Nodes without CPUs (memory-only nodes, or nodes
//!    whose CPUs are all offline) are no CPU's node, but the topology has
//!    their ids ([`Topology::with_nr_node_ids`]): `nr_node_ids` is the
//!    highest possible node plus one, as in the kernel, so per-node figures
//!    have an entry for memory that sits on them.
//! 3. **Fallback.** If sysfs yields no CPU at all (no sysfs in some
//!    containers, gVisor or chroots): one node with CPUs `0..=m`, where `m`
//!    is the highest CPU in this thread's affinity mask, or CPU 0 alone.
//!
//! Files are read with `libc::open`/`read`/`close` into stack buffers and
//! parsed by the allocation-free [`parse_cpu_list`]; paths are formatted on
//! the stack. The only heap allocations are the result: the `(cpu, node)`
//! pairs and the [`Topology`] built from them ([`Topology::from_map`]), and
//! the error of a malformed override.
//!
//! # Real CPU ids on a virtual topology ([`CpuMap`])
//!
//! The CPU layer reports real CPU ids; the engine wants the topology's. A
//! [`CpuMap`] maps any `usize` to a CPU of the topology, without allocating
//! or panicking:
//!
//! - an id the topology has maps to itself (on the real topology every CPU
//!   the process runs on does);
//! - any other id `r` maps to the `(r mod n)`-th CPU of the topology in
//!   ascending order, `n` being its number of CPUs: ids beyond a virtual
//!   map **wrap modulo its CPU count**.
//!
//! So with `MEMCG_TOPOLOGY=2x1` on a two-CPU machine, real CPU 0 is on
//! virtual node 0 and real CPU 1 on virtual node 1; with `2x4` the same two
//! CPUs are virtual CPUs 0 and 1, both on node 0 (give a virtual topology
//! as many CPUs as the machine has to use every virtual node). The node the
//! runtime charges is always the topology's node of the mapped CPU, never
//! the real node ([`current_node_hint`](super::cpu::current_node_hint)).

use crate::sync::{AtomicBool, Ordering};
use std::ffi::CStr;
use std::fmt;
use std::fmt::Write as _;

use super::cpu::{env_value, interrupted, StderrLine};
use crate::engine::topology::{Topology, MAX_CPUS, MAX_NODES};
use crate::error::Error;

/// Name of the environment variable that selects a virtual topology.
const TOPOLOGY_ENV: &CStr = c"MEMCG_TOPOLOGY";

/// Root of the real sysfs.
const SYSFS_ROOT: &[u8] = b"/sys";

/// Size of the stack buffer a sysfs file is read into. A file that fills it
/// is treated as unreadable (Linux list files of real machines are far
/// shorter; they were limited to a 4 KiB page for years).
const READ_BUFFER_BYTES: usize = 8192;

/// Size of the stack buffer `MEMCG_TOPOLOGY` is copied into: a longer
/// value is rejected.
const OVERRIDE_ENV_BYTES: usize = 4096;

/// Size of the stack buffer a path is formatted into, NUL included.
const PATH_BUFFER_BYTES: usize = 512;

/// Whether a malformed `MEMCG_TOPOLOGY` was reported already.
static OVERRIDE_REPORTED: AtomicBool = AtomicBool::new(false);

/// Detects the topology the runtime uses: the `MEMCG_TOPOLOGY` override,
/// else sysfs, else one node (see the [module documentation](self)).
///
/// Reads the environment with `libc::getenv` and sysfs with `libc` calls
/// into stack buffers. Allocates only the result (and the error of a
/// malformed override), so it must run where the global allocator may be
/// entered, for example with the allocator's re-entrancy bypass active.
pub(crate) fn detect() -> Topology {
    let mut buffer = [0u8; OVERRIDE_ENV_BYTES];
    let value = env_value(TOPOLOGY_ENV, &mut buffer);
    let (topology, override_error) = detect_with(value, SYSFS_ROOT);
    if let (Some(error), Some(value)) = (override_error, value) {
        // Relaxed: the flag only suppresses repeats; it guards no data.
        if !OVERRIDE_REPORTED.swap(true, Ordering::Relaxed) {
            override_warning(value, &error).emit();
        }
    }
    topology
}

/// [`detect`] with the override value and the sysfs root as parameters;
/// also returns why the override was ignored, if it was.
fn detect_with(override_value: Option<&[u8]>, sysfs_root: &[u8]) -> (Topology, Option<Error>) {
    let mut override_error = None;
    if let Some(value) = override_value {
        match parse_override(value) {
            Ok(Some(topology)) => return (topology, None),
            Ok(None) => {}
            Err(error) => override_error = Some(error),
        }
    }
    let topology = read_sysfs(sysfs_root).unwrap_or_else(fallback);
    (topology, override_error)
}

/// Parses a `MEMCG_TOPOLOGY` value with [`Topology::from_spec`]. `Ok(None)`
/// if it is blank (the same as unset).
///
/// # Errors
///
/// [`Error::InvalidTopology`] if it has [`OVERRIDE_ENV_BYTES`] bytes or
/// more (it may have been cut by `env_value`), is not UTF-8 or is not a
/// valid specification.
fn parse_override(value: &[u8]) -> Result<Option<Topology>, Error> {
    if value.len() >= OVERRIDE_ENV_BYTES {
        return Err(Error::InvalidTopology {
            reason: format!(
                "expected a specification of at most {} bytes, got a longer one",
                OVERRIDE_ENV_BYTES - 1
            ),
        });
    }
    let value = value.trim_ascii();
    if value.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(value).map_err(|error| Error::InvalidTopology {
        reason: format!(
            "expected UTF-8 text, got an invalid byte at offset {}",
            error.valid_up_to()
        ),
    })?;
    Topology::from_spec(text).map(Some)
}

/// The line reporting an ignored override:
/// `memcg: ignoring MEMCG_TOPOLOGY=<value>: <error>`, the value escaped.
fn override_warning(value: &[u8], error: &Error) -> StderrLine {
    let mut line = StderrLine::new();
    line.push(b"memcg: ignoring MEMCG_TOPOLOGY=");
    line.push_escaped(value);
    // Writing to a `StderrLine` never fails: it truncates.
    let _ = write!(line, ": {error}");
    line.push(b"\n");
    line
}

/// Reads the topology under `root` (`/sys` on a real machine); `None` if
/// no CPU is found.
fn read_sysfs(root: &[u8]) -> Option<Topology> {
    let mut buffer = [0u8; READ_BUFFER_BYTES];

    let mut nodes = NodeSet::new();
    let node_lists: [&[u8]; 2] = [
        b"/devices/system/node/possible",
        b"/devices/system/node/online",
    ];
    for list in node_lists {
        let path = StackPath::new(&[root, list]);
        if read_node_list(&path, &mut buffer, |node| nodes.insert(node)) {
            break;
        }
    }

    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for node in nodes.iter() {
        let mut path = StackPath::new(&[root, b"/devices/system/node/node"]);
        path.push_decimal(node);
        path.push(b"/cpulist");
        read_cpu_list(&path, &mut buffer, |cpu| pairs.push((cpu, node)));
    }
    // Stable: a CPU listed by two nodes keeps the lower node first.
    pairs.sort_by_key(|&(cpu, _)| cpu);
    let listed = pairs.len();
    // Possible CPUs that no node lists are offline: their node is the one
    // their `cpu<N>/node<M>` link names (present CPUs keep it while
    // offline), else node 0.
    let possible = StackPath::new(&[root, b"/devices/system/cpu/possible"]);
    let mut unlisted: Vec<usize> = Vec::new();
    read_cpu_list(&possible, &mut buffer, |cpu| {
        let listed_pairs = pairs.get(..listed).unwrap_or(&[]);
        if listed_pairs
            .binary_search_by_key(&cpu, |&(c, _)| c)
            .is_err()
        {
            unlisted.push(cpu);
        }
    });
    for cpu in unlisted {
        pairs.push((cpu, linked_node(root, cpu, &nodes).unwrap_or(0)));
    }

    pairs.sort_by_key(|&(cpu, _)| cpu);
    pairs.dedup_by_key(|&mut (cpu, _)| cpu);
    if pairs.is_empty() {
        return None;
    }
    // Node ids cover every possible node, with CPUs or not (memory-only
    // nodes), as the kernel's `nr_node_ids` does.
    let nr_node_ids = nodes.iter().last().map_or(0, |node| node + 1);
    Topology::from_map(&pairs)
        .ok()?
        .with_nr_node_ids(nr_node_ids)
        .ok()
}

/// The node of `cpu` that its sysfs directory links to
/// (`devices/system/cpu/cpu<N>/node<M>`), among `nodes`.
fn linked_node(root: &[u8], cpu: usize, nodes: &NodeSet) -> Option<usize> {
    nodes.iter().find(|&node| {
        let mut path = StackPath::new(&[root, b"/devices/system/cpu/cpu"]);
        path.push_decimal(cpu);
        path.push(b"/node");
        path.push_decimal(node);
        path.as_cstr().is_some_and(|path| {
            // SAFETY: `path` is a NUL-terminated string that lives across
            // the call; `access` only reads it.
            unsafe { libc::access(path.as_ptr(), libc::F_OK) == 0 }
        })
    })
}

/// One node, node 0, with CPUs `0..=m`, `m` the highest CPU in this
/// thread's affinity mask (CPU 0 alone if the mask is unavailable).
fn fallback() -> Topology {
    let nr_cpus = affinity_max_cpu()
        .map_or(1, |cpu| cpu.saturating_add(1))
        .clamp(1, MAX_CPUS);
    Topology::single_node(nr_cpus).expect("1..=MAX_CPUS cpus on one node is a valid topology")
}

/// Number of possible CPU ids of the real machine, to size tables indexed by
/// real CPU id: the highest id in `/sys/devices/system/cpu/possible` plus
/// one, else the highest CPU in this thread's affinity mask plus one, else
/// 1; at most [`MAX_CPUS`].
///
/// Allocation-free (stack buffers and `libc` calls only), so it may run
/// inside the global allocator.
pub(crate) fn nr_possible_cpus() -> usize {
    nr_possible_cpus_in(SYSFS_ROOT)
}

/// [`nr_possible_cpus`] with the sysfs root as a parameter.
fn nr_possible_cpus_in(root: &[u8]) -> usize {
    let mut buffer = [0u8; READ_BUFFER_BYTES];
    let path = StackPath::new(&[root, b"/devices/system/cpu/possible"]);
    let mut max_cpu = None;
    read_cpu_list(&path, &mut buffer, |cpu| max_cpu = max_cpu.max(Some(cpu)));
    max_cpu
        .or_else(affinity_max_cpu)
        .map_or(1, |cpu| cpu.saturating_add(1))
        .clamp(1, MAX_CPUS)
}

/// The highest CPU id in this thread's affinity mask (`sched_getaffinity`,
/// which covers CPU ids below 1024).
fn affinity_max_cpu() -> Option<usize> {
    // SAFETY: `cpu_set_t` is a plain bit array; all zeroes is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live `cpu_set_t` and the size passed is its size;
    // pid 0 is the calling thread.
    let ret = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if ret != 0 {
        return None;
    }
    let nr_bits = std::mem::size_of_val(&set) * 8;
    // SAFETY: `cpu < nr_bits`, the number of bits in `set`.
    (0..nr_bits)
        .rev()
        .find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
}

/// Reads the CPU list file at `path` into `buffer` and calls `f` with each
/// CPU id ([`parse_cpu_list`]); `false`, without calling `f`, if the file
/// is missing, unreadable, too long for `buffer` or malformed.
fn read_cpu_list(path: &StackPath, buffer: &mut [u8], f: impl FnMut(usize)) -> bool {
    read_file(path, buffer).is_some_and(|text| parse_cpu_list(text, f).is_ok())
}

/// [`read_cpu_list`] for a node list: ids below [`MAX_NODES`].
fn read_node_list(path: &StackPath, buffer: &mut [u8], f: impl FnMut(usize)) -> bool {
    read_file(path, buffer).is_some_and(|text| parse_id_list(text, MAX_NODES, f).is_ok())
}

/// Reads the file at `path` into `buffer` with `libc::open`/`read`/`close`;
/// `None` if it cannot be opened or read, or fills `buffer` (it may be
/// longer).
fn read_file<'b>(path: &StackPath, buffer: &'b mut [u8]) -> Option<&'b [u8]> {
    let path = path.as_cstr()?;
    // SAFETY: `path` is NUL-terminated; `open` has no other precondition.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut len = 0usize;
    let complete = loop {
        let Some(rest) = buffer.get_mut(len..).filter(|rest| !rest.is_empty()) else {
            break false;
        };
        // SAFETY: `fd` is open; `rest` is a live, writable buffer of
        // `rest.len()` bytes, the count passed.
        let read = unsafe { libc::read(fd, rest.as_mut_ptr().cast(), rest.len()) };
        match usize::try_from(read) {
            Ok(0) => break true,
            Ok(n) => len = len.saturating_add(n),
            Err(_) if interrupted() => {}
            Err(_) => break false,
        }
    };
    // SAFETY: `fd` was opened above and is closed once, here. A failed
    // close of a read-only file loses nothing.
    unsafe { libc::close(fd) };
    if complete {
        buffer.get(..len)
    } else {
        None
    }
}

/// A path formatted in a stack buffer: no allocation. Too long a path
/// (more than [`PATH_BUFFER_BYTES`] bytes with its NUL) is remembered as
/// such, and [`StackPath::as_cstr`] then refuses it.
struct StackPath {
    /// The bytes so far, and a NUL after them (`as_cstr`).
    buf: [u8; PATH_BUFFER_BYTES],
    /// Bytes in use, without the NUL.
    len: usize,
    /// Something did not fit.
    overflowed: bool,
}

impl StackPath {
    /// The concatenation of `parts`.
    fn new(parts: &[&[u8]]) -> StackPath {
        let mut path = StackPath {
            buf: [0; PATH_BUFFER_BYTES],
            len: 0,
            overflowed: false,
        };
        for part in parts {
            path.push(part);
        }
        path
    }

    /// Appends `bytes`.
    fn push(&mut self, bytes: &[u8]) {
        // Keep one byte for the NUL.
        let end = self.len.saturating_add(bytes.len());
        match self.buf.get_mut(self.len..end) {
            Some(target) if end < PATH_BUFFER_BYTES => {
                target.copy_from_slice(bytes);
                self.len = end;
            }
            _ => self.overflowed = true,
        }
    }

    /// Appends `value` in decimal.
    fn push_decimal(&mut self, mut value: usize) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            if let Some(digit) = digits.get_mut(start) {
                *digit = b'0' + (value % 10) as u8;
            }
            value /= 10;
            if value == 0 || start == 0 {
                break;
            }
        }
        self.push(digits.get(start..).unwrap_or(&[]));
    }

    /// The path as a C string; `None` if it overflowed or contains a NUL.
    fn as_cstr(&self) -> Option<&CStr> {
        if self.overflowed {
            return None;
        }
        // `push` always leaves the byte at `len` zero (the buffer starts
        // zeroed and `push` never writes at or past `len` + its input).
        CStr::from_bytes_with_nul(self.buf.get(..=self.len)?).ok()
    }
}

/// A set of node ids below [`MAX_NODES`], as a bitmap on the stack.
struct NodeSet {
    /// Bit `n % 64` of word `n / 64` is node `n`.
    words: [u64; MAX_NODES.div_ceil(64)],
}

impl NodeSet {
    /// The empty set.
    fn new() -> NodeSet {
        NodeSet {
            words: [0; MAX_NODES.div_ceil(64)],
        }
    }

    /// Adds `node` (ignored if not below [`MAX_NODES`]).
    fn insert(&mut self, node: usize) {
        if let Some(word) = self.words.get_mut(node / 64) {
            *word |= 1 << (node % 64);
        }
    }

    /// The nodes, ascending.
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_NODES).filter(|&node| {
            self.words
                .get(node / 64)
                .is_some_and(|word| word & (1 << (node % 64)) != 0)
        })
    }
}

// --- the list format ---

/// Why a Linux list (`0-3,8,10-11`) was rejected. Allocation-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListError {
    /// Byte offset in the input where the problem was found.
    pub(crate) offset: usize,
    /// What was wrong there.
    pub(crate) kind: ListErrorKind,
}

/// What is wrong with a list (see [`ListError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListErrorKind {
    /// A decimal id was expected (at the start, after `,` or `-`).
    ExpectedId,
    /// A byte other than a digit, `-` or `,` (or a second `-`) appeared.
    UnexpectedByte(u8),
    /// An id is not below the limit (for CPU lists [`MAX_CPUS`]).
    IdTooLarge {
        /// Ids must be below this.
        limit: usize,
    },
    /// A range `a-b` has `a > b`.
    ReversedRange {
        /// The first id of the range.
        first: usize,
        /// The last id of the range.
        last: usize,
    },
}

impl fmt::Display for ListError {
    /// Writes what was expected and what was found, with the byte offset.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ListErrorKind::ExpectedId => write!(f, "expected a decimal id"),
            ListErrorKind::UnexpectedByte(byte) => write!(
                f,
                "expected a digit, `-` or `,`, got {:?}",
                char::from(byte)
            ),
            ListErrorKind::IdTooLarge { limit } => {
                write!(f, "expected ids below {limit}, got a larger id")
            }
            ListErrorKind::ReversedRange { first, last } => {
                write!(f, "expected ranges as `low-high`, got {first}-{last}")
            }
        }?;
        write!(f, " at byte {}", self.offset)
    }
}

/// Parses a Linux CPU list such as `0-3,8,10-11` (the format of sysfs
/// `cpulist` and `possible` files) and calls `f` with each CPU id, in the
/// order listed (repeats are passed on). Surrounding ASCII whitespace, such
/// as sysfs's final newline, is ignored; a blank list (a node without CPUs)
/// has no ids. CPU ids must be below [`MAX_CPUS`].
///
/// Allocation-free. `f` is called only if the whole list is valid.
///
/// # Errors
///
/// [`ListError`] on anything else: an empty element (`1,,2`, `1,`), a
/// missing end (`1-`), a byte other than digits, `-` and `,` (inner
/// whitespace, `+`, the kernel's `:stride` input syntax), a reversed range
/// or an id of [`MAX_CPUS`] or more.
pub(crate) fn parse_cpu_list(bytes: &[u8], f: impl FnMut(usize)) -> Result<(), ListError> {
    parse_id_list(bytes, MAX_CPUS, f)
}

/// [`parse_cpu_list`] with ids below `limit` instead of [`MAX_CPUS`].
fn parse_id_list(bytes: &[u8], limit: usize, mut f: impl FnMut(usize)) -> Result<(), ListError> {
    scan_list(bytes, limit, |_, _| {})?;
    scan_list(bytes, limit, |first, last| {
        for id in first..=last {
            f(id);
        }
    })
}

/// Validates the list and calls `on_range(first, last)` for each element
/// (`a` is `a-a`) as it goes; the caller scans twice to call back only on
/// a valid list.
fn scan_list(
    bytes: &[u8],
    limit: usize,
    mut on_range: impl FnMut(usize, usize),
) -> Result<(), ListError> {
    let start = bytes.len() - bytes.trim_ascii_start().len();
    let end = start + bytes.get(start..).unwrap_or(&[]).trim_ascii().len();
    let mut pos = start;
    if pos == end {
        return Ok(());
    }
    loop {
        let (first, after_first) = scan_id(bytes, pos, end, limit)?;
        let (last, after_last) = match bytes.get(after_first) {
            Some(b'-') if after_first < end => scan_id(bytes, after_first + 1, end, limit)?,
            _ => (first, after_first),
        };
        if first > last {
            return Err(ListError {
                offset: pos,
                kind: ListErrorKind::ReversedRange { first, last },
            });
        }
        on_range(first, last);
        if after_last == end {
            return Ok(());
        }
        match bytes.get(after_last) {
            Some(b',') => pos = after_last + 1,
            Some(&byte) => {
                return Err(ListError {
                    offset: after_last,
                    kind: ListErrorKind::UnexpectedByte(byte),
                })
            }
            None => return Ok(()),
        }
    }
}

/// Scans the decimal id starting at `pos` (before `end`); returns it and
/// the offset after it.
fn scan_id(
    bytes: &[u8],
    pos: usize,
    end: usize,
    limit: usize,
) -> Result<(usize, usize), ListError> {
    let mut value = 0usize;
    let mut at = pos;
    while at < end {
        let Some(&byte) = bytes.get(at) else { break };
        if !byte.is_ascii_digit() {
            break;
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(usize::from(byte - b'0')))
            .filter(|&v| v < limit)
            .ok_or(ListError {
                offset: pos,
                kind: ListErrorKind::IdTooLarge { limit },
            })?;
        at += 1;
    }
    if at == pos {
        return Err(ListError {
            offset: pos,
            kind: ListErrorKind::ExpectedId,
        });
    }
    Ok((value, at))
}

// --- real CPU ids to topology CPU ids ---

/// Maps the CPU ids the [`cpu`](super::cpu) layer reports to CPU ids of a
/// [`Topology`]: an id the topology has maps to itself; any other id `r`
/// maps to the `(r mod n)`-th of its `n` CPUs, ascending (see the [module
/// documentation](self)).
///
/// The table covers every possible real CPU id and every topology id, so
/// [`CpuMap::to_topology`] is one bounds-checked load; only larger ids
/// (which the kernel does not report) take a division.
///
/// # Invariants
///
/// `present` is not empty, and every entry of `table` and `present` is a CPU
/// of the topology the map was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CpuMap {
    /// The image of each id below `max(nr_possible_cpus, nr_cpu_ids)`.
    table: Box<[u16]>,
    /// The topology's CPUs, ascending.
    present: Box<[u16]>,
}

impl CpuMap {
    /// The map onto `topology`'s CPUs, with a table covering the real
    /// machine's possible CPUs ([`nr_possible_cpus`]). Allocates two tables
    /// of at most [`MAX_CPUS`] entries.
    pub(crate) fn new(topology: &Topology) -> CpuMap {
        CpuMap::with_real_cpus(topology, nr_possible_cpus())
    }

    /// [`CpuMap::new`] for a machine of `nr_real_cpu_ids` possible CPU ids.
    fn with_real_cpus(topology: &Topology, nr_real_cpu_ids: usize) -> CpuMap {
        // CPU ids are below MAX_CPUS = 65536, so they fit a u16.
        let present: Box<[u16]> = topology
            .cpus()
            .filter_map(|cpu| u16::try_from(cpu).ok())
            .collect();
        let present = if present.is_empty() {
            // Unreachable: a topology has at least one CPU.
            Box::new([0])
        } else {
            present
        };
        let wrap = |id: usize| -> u16 {
            id.checked_rem(present.len())
                .and_then(|index| present.get(index))
                .copied()
                .unwrap_or(0)
        };
        let len = nr_real_cpu_ids.min(MAX_CPUS).max(topology.nr_cpu_ids());
        let table = (0..len)
            .map(|id| match topology.node_of_cpu(id) {
                Some(_) => u16::try_from(id).unwrap_or_else(|_| wrap(id)),
                None => wrap(id),
            })
            .collect();
        CpuMap { table, present }
    }

    /// The topology CPU of real CPU id `cpu`. Never panics or allocates.
    #[inline(always)]
    pub(crate) fn to_topology(&self, cpu: usize) -> usize {
        match self.table.get(cpu) {
            Some(&mapped) => usize::from(mapped),
            None => self.wrap(cpu),
        }
    }

    /// The `(cpu mod n)`-th CPU of the topology.
    #[cold]
    #[inline(never)]
    fn wrap(&self, cpu: usize) -> usize {
        cpu.checked_rem(self.present.len())
            .and_then(|index| self.present.get(index))
            .map_or(0, |&mapped| usize::from(mapped))
    }
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;
    use crate::runtime::cpu::current_cpu;
    use std::path::{Path, PathBuf};

    fn ids(list: &[u8]) -> Result<Vec<usize>, ListError> {
        let mut out = Vec::new();
        parse_cpu_list(list, |cpu| out.push(cpu)).map(|()| out)
    }

    fn pairs_of(topology: &Topology) -> Vec<(usize, usize)> {
        topology
            .cpus()
            .map(|cpu| (cpu, topology.node_of(cpu).unwrap()))
            .collect()
    }

    /// The CPUs this thread may run on.
    fn affinity_cpus() -> Vec<usize> {
        // SAFETY: all-zero is a valid `cpu_set_t`.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: a live `cpu_set_t` and its size; pid 0 is this thread.
        let ret = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
        assert_eq!(ret, 0);
        // SAFETY: every index is below the set's bit count.
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect()
    }

    /// A temporary fake sysfs root, removed on drop.
    struct FakeSysfs {
        root: PathBuf,
    }

    impl FakeSysfs {
        fn new(name: &str) -> FakeSysfs {
            let root =
                std::env::temp_dir().join(format!("memcg-topology-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            FakeSysfs { root }
        }

        fn file(&self, relative: &str, contents: &str) -> &Self {
            let path = self.root.join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
            self
        }

        fn root(&self) -> &[u8] {
            self.root.as_os_str().as_encoded_bytes()
        }

        fn path(&self) -> &Path {
            &self.root
        }
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    // --- parse_cpu_list ---

    #[test]
    fn parse_cpu_list_ranges_and_singles_are_expanded_in_order() {
        assert_eq!(ids(b"0-3,8,10-11\n"), Ok(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(ids(b"5"), Ok(vec![5]));
        assert_eq!(ids(b"7-7"), Ok(vec![7]));
        assert_eq!(ids(b"3,1"), Ok(vec![3, 1]));
        assert_eq!(ids(b"0-1,1"), Ok(vec![0, 1, 1]));
        assert_eq!(ids(b"007,010"), Ok(vec![7, 10]));
    }

    #[test]
    fn parse_cpu_list_blank_input_has_no_ids() {
        for blank in [&b""[..], b"\n", b"  \t\n", b"\n\n"] {
            assert_eq!(ids(blank), Ok(vec![]), "{blank:?}");
        }
    }

    #[test]
    fn parse_cpu_list_surrounding_whitespace_is_ignored() {
        assert_eq!(ids(b"  0-1,4 \n"), Ok(vec![0, 1, 4]));
        assert_eq!(ids(b"\t2\r\n"), Ok(vec![2]));
    }

    #[test]
    fn parse_cpu_list_malformed_input_is_rejected_with_offset() {
        use ListErrorKind::*;
        let cases: [(&[u8], usize, ListErrorKind); 17] = [
            (b",", 0, ExpectedId),
            (b",1", 0, ExpectedId),
            (b"1,", 2, ExpectedId),
            (b"1,\n", 2, ExpectedId),
            (b"1,,2", 2, ExpectedId),
            (b"1-", 2, ExpectedId),
            (b"1-\n", 2, ExpectedId),
            (b"-1", 0, ExpectedId),
            (b"1--3", 2, ExpectedId),
            (b"1-2-3", 3, UnexpectedByte(b'-')),
            (b"a", 0, ExpectedId),
            (b"1a", 1, UnexpectedByte(b'a')),
            (b"1 2", 1, UnexpectedByte(b' ')),
            (b"1, 2", 2, ExpectedId),
            (b"+1", 0, ExpectedId),
            (b"0-7:2/4", 3, UnexpectedByte(b':')),
            (b"1\n2", 1, UnexpectedByte(b'\n')),
        ];
        for (input, offset, kind) in cases {
            assert_eq!(ids(input), Err(ListError { offset, kind }), "{input:?}");
        }
    }

    #[test]
    fn parse_cpu_list_reversed_range_is_rejected() {
        assert_eq!(
            ids(b"0,3-1"),
            Err(ListError {
                offset: 2,
                kind: ListErrorKind::ReversedRange { first: 3, last: 1 }
            })
        );
    }

    #[test]
    fn parse_cpu_list_ids_at_or_over_max_cpus_are_rejected() {
        let too_large = ListErrorKind::IdTooLarge { limit: MAX_CPUS };
        assert_eq!(ids(b"65535").map(|v| v.len()), Ok(1));
        assert_eq!(ids(b"65536").unwrap_err().kind, too_large);
        assert_eq!(ids(b"0-65536").unwrap_err().kind, too_large);
        assert_eq!(
            ids(b"99999999999999999999999999").unwrap_err().kind,
            too_large
        );
        assert_eq!(ids(b"0-65535").map(|v| v.len()), Ok(MAX_CPUS));
    }

    #[test]
    fn parse_cpu_list_calls_back_only_on_valid_input() {
        let mut calls = 0;
        assert!(parse_cpu_list(b"0-3,8,x", |_| calls += 1).is_err());
        assert_eq!(calls, 0);
    }

    #[test]
    fn parse_id_list_node_limit_is_enforced() {
        let mut out = Vec::new();
        assert!(parse_id_list(b"0,1023", MAX_NODES, |n| out.push(n)).is_ok());
        assert_eq!(out, vec![0, 1023]);
        assert_eq!(
            parse_id_list(b"1024", MAX_NODES, |_| {}).unwrap_err().kind,
            ListErrorKind::IdTooLarge { limit: MAX_NODES }
        );
    }

    #[test]
    fn list_error_display_names_expectation_and_offset() {
        let error = ids(b"1,,2").unwrap_err();
        assert_eq!(error.to_string(), "expected a decimal id at byte 2");
        let error = ids(b"3-1").unwrap_err();
        assert_eq!(
            error.to_string(),
            "expected ranges as `low-high`, got 3-1 at byte 0"
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_cpu_list_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(
            proptest::sample::select(b"0123456789-, \n9x".to_vec()), 0..24)) {
            let _ = ids(&bytes);
        }

        #[test]
        fn parse_cpu_list_round_trips_topology_display(
            cpus in proptest::collection::btree_set(0usize..300, 1..40)
        ) {
            let pairs: Vec<(usize, usize)> = cpus.iter().map(|&cpu| (cpu, 0)).collect();
            let text = Topology::from_map(&pairs).unwrap().to_string();
            let list = text.strip_prefix("0:").unwrap();
            let parsed = ids(list.as_bytes()).unwrap();
            proptest::prop_assert_eq!(parsed, cpus.into_iter().collect::<Vec<_>>());
        }
    }

    // --- sysfs ---

    #[test]
    fn read_sysfs_this_machine_has_a_node_and_every_runnable_cpu() {
        let topology = read_sysfs(SYSFS_ROOT).expect("this machine has sysfs");
        assert!(topology.nodes().count() >= 1);
        for cpu in affinity_cpus() {
            assert!(
                topology.node_of(cpu).is_ok(),
                "cpu {cpu} missing: {topology}"
            );
        }
        let cpu = current_cpu();
        assert!(
            topology.node_of(cpu).is_ok(),
            "current cpu {cpu}: {topology}"
        );
        eprintln!("detected topology: {topology:?}");
    }

    #[test]
    fn read_sysfs_sparse_nodes_and_unlisted_cpus_are_mapped() {
        let fake = FakeSysfs::new("sparse");
        fake.file("devices/system/node/possible", "0,2\n")
            .file("devices/system/node/node0/cpulist", "0-1\n")
            .file("devices/system/node/node2/cpulist", "2,4\n")
            .file("devices/system/cpu/possible", "0-5\n");
        let topology = read_sysfs(fake.root()).unwrap();
        assert_eq!(
            pairs_of(&topology),
            vec![(0, 0), (1, 0), (2, 2), (3, 0), (4, 2), (5, 0)]
        );
        assert_eq!(topology.nr_node_ids(), 3);
        assert_eq!(topology.nodes().collect::<Vec<_>>(), vec![0, 2]);
    }

    #[test]
    fn read_sysfs_offline_cpu_takes_the_node_of_its_link() {
        let fake = FakeSysfs::new("offline-cpu");
        fake.file("devices/system/node/possible", "0-2\n")
            .file("devices/system/node/node0/cpulist", "0-1\n")
            .file("devices/system/node/node1/cpulist", "\n")
            .file("devices/system/node/node2/cpulist", "3-4\n")
            .file("devices/system/cpu/cpu2/node1", "")
            .file("devices/system/cpu/possible", "0-5\n");
        let topology = read_sysfs(fake.root()).unwrap();
        // CPU 2 is offline but present (its link names node 1); CPU 5 is
        // not present (no link): node 0.
        assert_eq!(
            pairs_of(&topology),
            vec![(0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (5, 0)]
        );
        assert_eq!(topology.nr_node_ids(), 3);
    }

    #[test]
    fn read_sysfs_online_is_used_when_possible_is_missing() {
        let fake = FakeSysfs::new("online");
        fake.file("devices/system/node/online", "1\n")
            .file("devices/system/node/node1/cpulist", "0-1\n")
            .file("devices/system/cpu/possible", "0-1\n");
        let topology = read_sysfs(fake.root()).unwrap();
        assert_eq!(pairs_of(&topology), vec![(0, 1), (1, 1)]);
    }

    #[test]
    fn read_sysfs_bad_or_missing_node_files_are_skipped() {
        let fake = FakeSysfs::new("bad-node");
        fake.file("devices/system/node/possible", "0-3\n")
            .file("devices/system/node/node0/cpulist", "0\n")
            .file("devices/system/node/node1/cpulist", "1,x\n")
            // node2 has no directory; node3 has memory but no CPUs.
            .file("devices/system/node/node3/cpulist", "\n")
            .file("devices/system/cpu/possible", "0-1\n");
        let topology = read_sysfs(fake.root()).unwrap();
        assert_eq!(pairs_of(&topology), vec![(0, 0), (1, 0)]);
        // Every possible node has an id, CPUs or not (node 3: memory only).
        assert_eq!(topology.nr_node_ids(), 4);
        assert_eq!(topology.nodes().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn read_sysfs_cpu_listed_twice_stays_on_the_lower_node() {
        let fake = FakeSysfs::new("twice");
        fake.file("devices/system/node/possible", "0-1\n")
            .file("devices/system/node/node0/cpulist", "0-1\n")
            .file("devices/system/node/node1/cpulist", "1-2\n");
        let topology = read_sysfs(fake.root()).unwrap();
        assert_eq!(pairs_of(&topology), vec![(0, 0), (1, 0), (2, 1)]);
    }

    #[test]
    fn read_sysfs_without_nodes_puts_possible_cpus_on_node_zero() {
        let fake = FakeSysfs::new("no-nodes");
        fake.file("devices/system/cpu/possible", "0-3,6\n");
        let topology = read_sysfs(fake.root()).unwrap();
        assert_eq!(
            pairs_of(&topology),
            vec![(0, 0), (1, 0), (2, 0), (3, 0), (6, 0)]
        );
    }

    #[test]
    fn read_sysfs_too_long_file_is_unreadable() {
        let fake = FakeSysfs::new("long");
        let long = format!("0{}\n", " ".repeat(READ_BUFFER_BYTES));
        fake.file("devices/system/cpu/possible", &long);
        assert_eq!(read_sysfs(fake.root()), None);
        let fits = format!("{}0-2\n", " ".repeat(READ_BUFFER_BYTES - 10));
        fake.file("devices/system/cpu/possible", &fits);
        assert_eq!(read_sysfs(fake.root()).map(|t| t.nr_cpus()), Some(3));
    }

    #[test]
    fn read_sysfs_missing_or_empty_root_finds_nothing() {
        assert_eq!(read_sysfs(b"/nonexistent/memcg-sysfs-root"), None);
        let fake = FakeSysfs::new("empty");
        assert!(fake.path().is_dir());
        assert_eq!(read_sysfs(fake.root()), None);
        // A root too long for the path buffer, or with a NUL, reads nothing.
        assert_eq!(read_sysfs(&[b'a'; PATH_BUFFER_BYTES]), None);
        assert_eq!(read_sysfs(b"/sys\0"), None);
    }

    #[test]
    fn detect_with_missing_sysfs_falls_back_to_one_node_of_runnable_cpus() {
        let (topology, error) = detect_with(None, b"/nonexistent/memcg-sysfs-root");
        assert_eq!(error, None);
        assert_eq!(topology.nodes().collect::<Vec<_>>(), vec![0]);
        let runnable = affinity_cpus();
        assert_eq!(topology.nr_cpus(), runnable.iter().max().unwrap() + 1);
        for cpu in runnable {
            assert_eq!(topology.node_of(cpu), Ok(0));
        }
    }

    #[test]
    fn detect_with_this_machine_matches_read_sysfs() {
        let (topology, error) = detect_with(None, SYSFS_ROOT);
        assert_eq!(error, None);
        assert_eq!(Some(topology), read_sysfs(SYSFS_ROOT));
    }

    // --- the override ---

    #[test]
    fn parse_override_specs_are_parsed() {
        let two = parse_override(b"2x1").unwrap().unwrap();
        assert_eq!(pairs_of(&two), vec![(0, 0), (1, 1)]);
        let explicit = parse_override(b" 0:0-3;1:4-7\n").unwrap().unwrap();
        assert_eq!(explicit, Topology::uniform(2, 4).unwrap());
        let sparse = parse_override(b"0:0-1;2:2").unwrap().unwrap();
        assert_eq!(pairs_of(&sparse), vec![(0, 0), (1, 0), (2, 2)]);
    }

    #[test]
    fn parse_override_too_long_is_an_error() {
        let long = vec![b' '; OVERRIDE_ENV_BYTES];
        let Err(Error::InvalidTopology { reason }) = parse_override(&long) else {
            panic!("expected an error");
        };
        assert!(reason.contains("at most 4095 bytes"), "{reason}");
        let mut fits = vec![b' '; OVERRIDE_ENV_BYTES - 1];
        fits[..3].copy_from_slice(b"2x1");
        assert_eq!(
            parse_override(&fits),
            Ok(Some(Topology::uniform(2, 1).unwrap()))
        );
    }

    #[test]
    fn parse_override_blank_is_unset() {
        assert_eq!(parse_override(b""), Ok(None));
        assert_eq!(parse_override(b" \n"), Ok(None));
    }

    #[test]
    fn parse_override_malformed_is_an_error() {
        for bad in [&b"2y1"[..], b"0x4", b"0:3-1", b"0:a", b"x", b"2x1\xff"] {
            match parse_override(bad) {
                Err(Error::InvalidTopology { reason }) => assert!(!reason.is_empty()),
                other => panic!("{bad:?}: expected InvalidTopology, got {other:?}"),
            }
        }
        let Err(Error::InvalidTopology { reason }) = parse_override(b"2x1\xff") else {
            panic!("expected an error");
        };
        assert!(reason.contains("UTF-8"), "{reason}");
    }

    #[test]
    fn detect_with_override_wins_over_sysfs() {
        let (topology, error) = detect_with(Some(b"2x1"), SYSFS_ROOT);
        assert_eq!(error, None);
        assert_eq!(topology, Topology::uniform(2, 1).unwrap());
    }

    #[test]
    fn detect_with_malformed_override_continues_with_sysfs() {
        let (topology, error) = detect_with(Some(b"2y1"), SYSFS_ROOT);
        assert!(
            matches!(error, Some(Error::InvalidTopology { .. })),
            "{error:?}"
        );
        assert_eq!(Some(topology), read_sysfs(SYSFS_ROOT));
        let (_, error) = detect_with(Some(b"  "), SYSFS_ROOT);
        assert_eq!(error, None);
    }

    #[test]
    fn override_warning_names_variable_value_and_reason() {
        let error = parse_override(b"2y1").unwrap_err();
        let line = override_warning(b"2y1", &error);
        let text = std::str::from_utf8(line.as_bytes()).unwrap();
        assert!(
            text.starts_with("memcg: ignoring MEMCG_TOPOLOGY=2y1: invalid topology: "),
            "{text}"
        );
        assert!(text.ends_with('\n'), "{text}");
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        let line = override_warning(b"a\nb", &error);
        assert!(line
            .as_bytes()
            .starts_with(b"memcg: ignoring MEMCG_TOPOLOGY=a\\nb: "));
    }

    #[test]
    fn detect_returns_a_topology_with_the_current_cpu_mapped() {
        let topology = detect();
        let map = CpuMap::new(&topology);
        assert!(topology.node_of(map.to_topology(current_cpu())).is_ok());
    }

    // --- CpuMap ---

    #[test]
    fn cpu_map_dense_virtual_map_is_identity_then_wraps() {
        let map = CpuMap::with_real_cpus(&Topology::from_spec("2x1").unwrap(), 4);
        assert_eq!(
            (0..6).map(|cpu| map.to_topology(cpu)).collect::<Vec<_>>(),
            vec![0, 1, 0, 1, 0, 1]
        );
        assert_eq!(map.to_topology(usize::MAX), usize::MAX % 2);
    }

    #[test]
    fn cpu_map_sparse_map_keeps_present_ids_and_wraps_the_rest() {
        // CPUs 0,1,2,3,4,5,8 (7 CPUs); ids 6 and 7 are absent.
        let topology = Topology::from_spec("0:0-3;2:4-5,8").unwrap();
        // Table sizes below, at and beyond the topology's ids agree.
        let maps = [0, 9, 11].map(|real| CpuMap::with_real_cpus(&topology, real));
        for map in &maps[1..] {
            for cpu in 0..20 {
                assert_eq!(map.to_topology(cpu), maps[0].to_topology(cpu), "cpu {cpu}");
            }
        }
        let map = &maps[2];
        let mapped: Vec<usize> = (0..12).map(|cpu| map.to_topology(cpu)).collect();
        // 6 -> present[6 % 7] = 8, 7 -> present[0] = 0, 9 -> present[2] = 2,
        // 10 -> present[3] = 3, 11 -> present[4] = 4.
        assert_eq!(mapped, vec![0, 1, 2, 3, 4, 5, 8, 0, 8, 2, 3, 4]);
        for cpu in [0, 7, 1000, usize::MAX] {
            assert!(topology.node_of(map.to_topology(cpu)).is_ok());
        }
    }

    #[test]
    fn cpu_map_real_cpus_on_two_node_virtual_map_reach_both_nodes() {
        let topology = Topology::from_spec("2x1").unwrap();
        let map = CpuMap::new(&topology);
        assert_eq!(topology.node_of(map.to_topology(0)), Ok(0));
        assert_eq!(topology.node_of(map.to_topology(1)), Ok(1));
        let current = map.to_topology(current_cpu());
        assert!(current < 2);
    }

    #[test]
    fn cpu_map_new_covers_this_machine_without_wrapping() {
        let topology = Topology::from_spec("2x1").unwrap();
        let map = CpuMap::new(&topology);
        assert_eq!(map.table.len(), nr_possible_cpus().max(2));
    }

    #[test]
    fn nr_possible_cpus_is_highest_possible_id_plus_one() {
        let runnable = affinity_cpus();
        assert!(nr_possible_cpus() > *runnable.iter().max().unwrap());
        let fake = FakeSysfs::new("possible");
        fake.file("devices/system/cpu/possible", "0-3,8\n");
        assert_eq!(nr_possible_cpus_in(fake.root()), 9);
        let from_affinity = runnable.iter().max().unwrap() + 1;
        assert_eq!(
            nr_possible_cpus_in(b"/nonexistent/memcg-sysfs-root"),
            from_affinity
        );
    }

    #[test]
    fn cpu_map_single_cpu_maps_everything_to_it() {
        let map = CpuMap::with_real_cpus(&Topology::from_map(&[(5, 1)]).unwrap(), 8);
        for cpu in [0, 4, 5, 6, 1 << 40] {
            assert_eq!(map.to_topology(cpu), 5);
        }
    }
}
