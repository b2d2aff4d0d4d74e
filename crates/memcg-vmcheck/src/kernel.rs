//! What the kernel says: the NUMA topology in sysfs, `getcpu`, where pages
//! are (`move_pages` with no target nodes), the cgroup v2 `memory.numa_stat`
//! of this process's group; and pinning a thread to a CPU.
//!
//! This module reads the kernel independently of memcg's own detection
//! (plain `std::fs`, its own list parser), so that a check compares two
//! readings, not one reading with itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bytes of a base page (x86-64).
pub const PAGE_BYTES: usize = 4096;

/// Parses a Linux id list (`0-3,8,10-11`; empty is no id).
pub fn parse_list(text: &str) -> Result<Vec<usize>, String> {
    let mut ids = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (low, high) = part.split_once('-').unwrap_or((part, part));
        let low: usize = low.parse().map_err(|_| format!("bad id list {text:?}"))?;
        let high: usize = high.parse().map_err(|_| format!("bad id list {text:?}"))?;
        if low > high {
            return Err(format!("bad range in id list {text:?}"));
        }
        ids.extend(low..=high);
    }
    Ok(ids)
}

fn read_list(path: &Path) -> Option<Vec<usize>> {
    parse_list(&std::fs::read_to_string(path).ok()?).ok()
}

/// The NUMA layout as sysfs reports it.
#[derive(Debug, Clone, Default)]
pub struct KernelTopology {
    /// `node/possible`: the kernel's node ids (`nr_node_ids` is the last + 1).
    pub possible_nodes: Vec<usize>,
    /// `node/has_cpu`: nodes with an online CPU.
    pub nodes_with_cpus: Vec<usize>,
    /// `node/has_memory`: nodes with memory.
    pub nodes_with_memory: Vec<usize>,
    /// `cpu/possible`.
    pub possible_cpus: Vec<usize>,
    /// `cpu/online`.
    pub online_cpus: Vec<usize>,
    /// Node of each online CPU, from `node<N>/cpulist`.
    pub node_of_online_cpu: BTreeMap<usize, usize>,
    /// Node of each possible CPU that has a `cpu<N>/node<M>` link (present
    /// CPUs, online or not).
    pub linked_node_of_cpu: BTreeMap<usize, usize>,
}

impl KernelTopology {
    /// Reads `/sys/devices/system/{node,cpu}`; `None` without sysfs nodes.
    pub fn read() -> Option<KernelTopology> {
        let sys = Path::new("/sys/devices/system");
        let possible_nodes = read_list(&sys.join("node/possible"))?;
        let mut topology = KernelTopology {
            nodes_with_cpus: read_list(&sys.join("node/has_cpu")).unwrap_or_default(),
            nodes_with_memory: read_list(&sys.join("node/has_memory")).unwrap_or_default(),
            possible_cpus: read_list(&sys.join("cpu/possible"))?,
            online_cpus: read_list(&sys.join("cpu/online"))?,
            possible_nodes,
            ..KernelTopology::default()
        };
        for &node in &topology.possible_nodes {
            let list = sys.join(format!("node/node{node}/cpulist"));
            for cpu in read_list(&list).unwrap_or_default() {
                topology.node_of_online_cpu.entry(cpu).or_insert(node);
            }
        }
        for &cpu in &topology.possible_cpus {
            for &node in &topology.possible_nodes {
                if sys.join(format!("cpu/cpu{cpu}/node{node}")).exists() {
                    topology.linked_node_of_cpu.insert(cpu, node);
                    break;
                }
            }
        }
        Some(topology)
    }

    /// `nr_node_ids`: the highest possible node plus one.
    pub fn nr_node_ids(&self) -> usize {
        self.possible_nodes.last().map_or(0, |n| n + 1)
    }

    /// Nodes with memory and no online CPU.
    pub fn memory_only_nodes(&self) -> Vec<usize> {
        self.nodes_with_memory
            .iter()
            .copied()
            .filter(|n| !self.nodes_with_cpus.contains(n))
            .collect()
    }

    /// The online CPUs of `node`, ascending.
    pub fn cpus_of_node(&self, node: usize) -> Vec<usize> {
        self.node_of_online_cpu
            .iter()
            .filter(|&(_, &n)| n == node)
            .map(|(&cpu, _)| cpu)
            .collect()
    }
}

/// For each node of `topology` with an online CPU, that node and its first
/// online CPU (the topology also has offline CPUs: a node whose CPUs are
/// all offline is left out, as memory-only nodes are).
pub fn online_targets(topology: &memcg::Topology) -> Vec<(usize, usize)> {
    let online = read_list(Path::new("/sys/devices/system/cpu/online"));
    topology
        .nodes()
        .filter_map(|node| {
            let mut cpus = topology.cpus_of_node(node);
            let cpu = match &online {
                Some(online) => cpus.find(|cpu| online.contains(cpu)),
                None => cpus.next(),
            }?;
            Some((node, cpu))
        })
        .collect()
}

/// `getcpu(2)`: the CPU and node this thread runs on now.
pub fn getcpu() -> Option<(usize, usize)> {
    let (mut cpu, mut node) = (0u32, 0u32);
    // SAFETY: both pointers are to live `u32`s; the third argument (the
    // unused cache) may be null.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_getcpu,
            &mut cpu as *mut u32,
            &mut node as *mut u32,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    (ret == 0).then_some((cpu as usize, node as usize))
}

/// Pins the calling thread to `cpu` (and waits until it runs there).
pub fn pin_to_cpu(cpu: usize) -> Result<(), String> {
    // SAFETY: `cpu_set_t` is a plain bit array; all zeroes is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `CPU_SET` writes one bit of `set`; `cpu` is checked below the
    // set's size first.
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(format!("cpu {cpu} does not fit a cpu_set_t"));
    }
    // SAFETY: `cpu` is below the number of bits of `set` (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live `cpu_set_t` of the size passed; 0 is this thread.
    let ret = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if ret != 0 {
        return Err(format!(
            "sched_setaffinity to cpu {cpu}: {}",
            std::io::Error::last_os_error()
        ));
    }
    for _ in 0..1000 {
        if getcpu().map(|(c, _)| c) == Some(cpu) {
            return Ok(());
        }
        std::thread::yield_now();
    }
    Err(format!("pinned to cpu {cpu} but getcpu says otherwise"))
}

/// The node of each page (`move_pages(2)` with no target nodes: a query);
/// a negative value is an error for that page (`-ENOENT`: not present).
pub fn nodes_of_pages(pages: &[usize]) -> Result<Vec<i32>, String> {
    let mut status = vec![0i32; pages.len()];
    for (chunk, out) in pages.chunks(4096).zip(status.chunks_mut(4096)) {
        let ptrs: Vec<*mut libc::c_void> = chunk.iter().map(|&p| p as *mut libc::c_void).collect();
        // SAFETY: `ptrs` and `out` hold `chunk.len()` entries each and live
        // across the call; null target nodes make it a query that moves
        // nothing; pid 0 is this process.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_move_pages,
                0,
                ptrs.len() as libc::c_ulong,
                ptrs.as_ptr(),
                std::ptr::null::<libc::c_int>(),
                out.as_mut_ptr(),
                0,
            )
        };
        if ret < 0 {
            return Err(format!("move_pages: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(status)
}

/// The pages (start addresses) of `len` bytes at `addr`.
pub fn pages_of(addr: usize, len: usize) -> impl Iterator<Item = usize> {
    let first = addr / PAGE_BYTES;
    let last = (addr + len.max(1) - 1) / PAGE_BYTES;
    (first..=last).map(|page| page * PAGE_BYTES)
}

/// The cgroup v2 directory of this process (`/proc/self/cgroup`'s `0::`
/// line under `/sys/fs/cgroup`), if it has a `memory.numa_stat`.
pub fn own_cgroup_dir() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let relative = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(relative.trim_start_matches('/'));
    dir.join("memory.numa_stat").exists().then_some(dir)
}

/// One key of `memory.numa_stat` (`anon N0=… N1=…`) as node → bytes.
pub fn numa_stat(dir: &Path, key: &str) -> Result<BTreeMap<usize, u64>, String> {
    let path = dir.join("memory.numa_stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some(key))
        .ok_or_else(|| format!("{}: no {key} line", path.display()))?;
    line.split_whitespace()
        .skip(1)
        .map(|field| {
            let (node, bytes) = field
                .strip_prefix('N')
                .and_then(|f| f.split_once('='))
                .ok_or_else(|| format!("bad field {field:?}"))?;
            Ok((
                node.parse().map_err(|_| format!("bad node {node:?}"))?,
                bytes.parse().map_err(|_| format!("bad bytes {bytes:?}"))?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_list_ranges_and_empty() {
        assert_eq!(parse_list("0-2,5\n").unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse_list("\n").unwrap(), Vec::<usize>::new());
        assert!(parse_list("3-1").is_err());
    }

    #[test]
    fn nodes_of_pages_finds_a_touched_page() {
        let buffer = vec![1u8; 3 * PAGE_BYTES];
        let pages: Vec<usize> = pages_of(buffer.as_ptr() as usize, buffer.len()).collect();
        let nodes = nodes_of_pages(&pages).unwrap();
        assert!(nodes.iter().all(|&n| n >= 0), "{nodes:?}");
    }
}
