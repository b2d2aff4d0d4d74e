//! A group tree with limits, a task charging and freeing, and the cgroup
//! v2 files of a group.
//!
//! Run: `cargo run -p memcg --example basic`

use memcg::{ChargeKind, Controller, Limit, Topology};

fn main() -> Result<(), memcg::Error> {
    // A virtual machine: 2 NUMA nodes × 2 CPUs (CPUs 0-1 on node 0, 2-3 on node 1).
    let ctrl = Controller::new(Topology::from_spec("2x2")?);
    let tenants = ctrl.create("tenants")?;
    let a = tenants.create_child("a")?;
    a.set_max(Limit::parse("1M")?)?;

    // A task attached to tenants/a charges objects on the CPU it runs on.
    let task = ctrl.new_task(&a)?;
    let small = task.charge(0, 200, ChargeKind::Alloc)?;
    let big = task.charge(3, 300_000, ChargeKind::Alloc)?;

    // An explicit reservation; over the limit it fails with a typed error.
    let reservation = a.try_charge(100_000)?;
    match a.try_charge(1 << 20) {
        Err(e) => println!("refused: {e}\n"),
        Ok(_) => unreachable!("1 MiB more cannot fit under a 1 MiB limit"),
    }

    task.flush(0)?;
    let stats = a.stats();
    println!("tenants/a memory.current\n{}", stats.memory_current());
    println!("tenants/a memory.stat\n{}", stats.memory_stat());
    println!("tenants/a memory.numa_stat\n{}", stats.numa_stat());
    println!("tenants/a memory.events\n{}", stats.events.to_text());

    task.uncharge(1, small)?;
    task.uncharge(2, big)?;
    drop(reservation);
    drop(task);
    a.remove()?;
    ctrl.drain_stocks();
    println!(
        "after freeing and removing tenants/a: tenants memory.current = {}",
        tenants.current_bytes()
    );
    if let Err(v) = ctrl.check_invariants() {
        eprintln!("{v}");
        std::process::exit(1);
    }
    Ok(())
}
