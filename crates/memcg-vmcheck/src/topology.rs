//! `topology`: the runtime's topology equals what the kernel reports, and
//! the runtime's CPU id source agrees with `getcpu` on every online CPU.

use crate::kernel::{self, KernelTopology};
use crate::Report;

/// Runs the topology checks.
pub fn run(report: &mut Report) -> Result<(), String> {
    let ctrl = memcg::controller();
    let ours = ctrl.topology();
    println!(
        "topology memcg={ours} nr_node_ids={} cpu_id_source={}",
        ours.nr_node_ids(),
        memcg::cpu_id_source()
    );
    if std::env::var_os("MEMCG_TOPOLOGY").is_some_and(|v| !v.is_empty()) {
        println!("skip: MEMCG_TOPOLOGY is set (a virtual topology is not the kernel's)");
        return Ok(());
    }
    let Some(kernel) = KernelTopology::read() else {
        println!("skip: no /sys/devices/system/node (no NUMA sysfs here)");
        return Ok(());
    };
    println!(
        "kernel possible_nodes={:?} has_cpu={:?} has_memory={:?} possible_cpus={:?} online_cpus={:?} memory_only={:?}",
        kernel.possible_nodes,
        kernel.nodes_with_cpus,
        kernel.nodes_with_memory,
        kernel.possible_cpus,
        kernel.online_cpus,
        kernel.memory_only_nodes()
    );
    report.check(
        ours.nr_node_ids() == kernel.nr_node_ids(),
        format!(
            "nr_node_ids {} != kernel's {}",
            ours.nr_node_ids(),
            kernel.nr_node_ids()
        ),
    );
    // Nodes with CPUs: the kernel's `has_cpu` counts online CPUs; the
    // topology also has the possible CPUs that are offline, on the node of
    // their sysfs link (else node 0).
    let our_nodes: Vec<usize> = ours.nodes().collect();
    let mut expected_nodes = kernel.nodes_with_cpus.clone();
    for &cpu in &kernel.possible_cpus {
        if !kernel.node_of_online_cpu.contains_key(&cpu) {
            expected_nodes.push(kernel.linked_node_of_cpu.get(&cpu).copied().unwrap_or(0));
        }
    }
    expected_nodes.sort_unstable();
    expected_nodes.dedup();
    report.check(
        our_nodes == expected_nodes,
        format!(
            "nodes with CPUs {our_nodes:?} != kernel's {expected_nodes:?} (has_cpu {:?} and offline CPUs' nodes)",
            kernel.nodes_with_cpus
        ),
    );
    for (&cpu, &node) in &kernel.node_of_online_cpu {
        let got = ours.node_of(cpu).ok();
        report.check(
            got == Some(node),
            format!("online cpu {cpu}: node {got:?}, kernel {node}"),
        );
    }
    for &cpu in &kernel.possible_cpus {
        if kernel.node_of_online_cpu.contains_key(&cpu) {
            continue;
        }
        // Offline: the node of its sysfs link, else node 0 (documented).
        let expected = kernel.linked_node_of_cpu.get(&cpu).copied().unwrap_or(0);
        let got = ours.node_of(cpu).ok();
        println!(
            "offline cpu {cpu}: memcg node {got:?} (kernel link {:?})",
            kernel.linked_node_of_cpu.get(&cpu)
        );
        report.check(
            got == Some(expected),
            format!("offline cpu {cpu}: node {got:?}, expected {expected}"),
        );
    }
    for node in kernel.memory_only_nodes() {
        let cpus: Vec<usize> = ours.cpus_of_node(node).collect();
        let offline_cpus: Vec<usize> = kernel
            .linked_node_of_cpu
            .iter()
            .filter(|&(cpu, &n)| n == node && !kernel.node_of_online_cpu.contains_key(cpu))
            .map(|(&cpu, _)| cpu)
            .collect();
        println!(
            "memory-only node {node}: id below nr_node_ids, CPUs {cpus:?} (offline CPUs {offline_cpus:?})"
        );
        // No online CPU is on it: at most its offline CPUs.
        report.check(
            node < ours.nr_node_ids() && cpus == offline_cpus,
            format!("memory-only node {node} must have an id and no online CPU (has {cpus:?})"),
        );
    }
    // The CPU id source against getcpu, on every online CPU we may run on.
    let mut pinned = 0;
    for &cpu in &kernel.online_cpus {
        let result = std::thread::scope(|s| {
            s.spawn(|| -> Result<Vec<(usize, usize, usize, usize)>, String> {
                kernel::pin_to_cpu(cpu)?;
                let mut samples = Vec::new();
                for _ in 0..100 {
                    let before = kernel::getcpu();
                    let ours_cpu = memcg::current_cpu_id();
                    let ours_node = memcg::current_node_id();
                    let after = kernel::getcpu();
                    if let (Some(b), Some(a)) = (before, after) {
                        samples.push((b.0, b.1, ours_cpu, ours_node));
                        samples.push((a.0, a.1, ours_cpu, ours_node));
                    }
                }
                Ok(samples)
            })
            .join()
            .map_err(|_| "pinned thread panicked".to_string())?
        });
        match result {
            Ok(samples) => {
                pinned += 1;
                let bad = samples
                    .iter()
                    .filter(|&&(kc, kn, oc, on)| (kc, kn) != (oc, on) || kc != cpu)
                    .count();
                report.check(
                    bad == 0 && !samples.is_empty(),
                    format!(
                        "cpu {cpu}: {bad} of {} samples disagree with getcpu",
                        samples.len()
                    ),
                );
            }
            Err(e) => println!("skip: cpu {cpu}: {e}"),
        }
    }
    println!(
        "topology checked: {} online CPUs pinned, {} failures",
        pinned,
        report.failures.len()
    );
    Ok(())
}
