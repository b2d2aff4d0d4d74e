// The NUMA attribution tests shared by `alloc_numa.rs` (`MemcgAlloc`) and
// `alloc_heaps_numa.rs` (`MemcgMimalloc`), included by both with
// `include!`. The including binary sets the global allocator and defines
// `charged(size) -> u64`.

const CHILD: &str = "MEMCG_TEST_NUMA_CHILD";

fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only read and write that local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Allocates on CPU 0 then CPU 1 and prints the bytes each node got.
fn child() {
    let ctrl = memcg::controller();
    assert_eq!(
        ctrl.topology().nr_node_ids(),
        2,
        "MEMCG_TOPOLOGY=2x1 is in effect"
    );
    let g = ctrl.create("numa").unwrap();
    g.attach_current().unwrap();
    assert!(pin_to_cpu(0), "cpu 0 available");
    // `black_box`: the optimizer may remove an allocation nothing reads.
    let a = std::hint::black_box(vec![0u8; 40_000]);
    if !pin_to_cpu(1) {
        println!("SKIP: cpu 1 not available");
        return;
    }
    let b = std::hint::black_box(vec![0u8; 60_000]);
    memcg::flush_current();
    let numa = g.stats().numa;
    println!(
        "RESULT {} {}",
        numa[0].hierarchical.alloc_bytes, numa[1].hierarchical.alloc_bytes
    );
    drop((a, b));
}

fn run_child(mode: &str) -> Option<(u64, u64)> {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "numa_child", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("MEMCG_TOPOLOGY", "2x1")
        .env("MEMCG_TASK_CACHE", mode)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if stdout.contains("SKIP") {
        return None;
    }
    let line = stdout.lines().find(|l| l.starts_with("RESULT"))?;
    let mut it = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<u64>().unwrap());
    Some((it.next()?, it.next()?))
}

#[test]
fn numa_child() {
    if std::env::var_os(CHILD).is_some() {
        child();
    }
}

#[test]
fn thread_moved_to_node1_charges_node1_with_per_node_cache() {
    let Some((n0, n1)) = run_child("per-node") else {
        return;
    };
    assert_eq!(n0, charged(40_000), "the first block on node 0");
    assert_eq!(n1, charged(60_000), "the second block on node 1");
}

#[test]
fn thread_moved_to_node1_keeps_charging_node0_with_single_cache() {
    let Some((n0, n1)) = run_child("single") else {
        return;
    };
    assert_eq!(
        n0,
        charged(40_000) + charged(60_000),
        "both blocks on node 0: the seed's bug"
    );
    assert_eq!(n1, 0);
}
