//! The workload generator and scheduler: turns a [`Scenario`] and its seed
//! into the list of [`Op`]s a run performs.
//!
//! Each step the scheduler picks a task by weight (so tasks preempt each
//! other at every step and their operations interleave), then the task
//! either migrates (to a CPU of its node or of another node), flushes its
//! byte cache, works on a reservation, frees one of the objects it is
//! responsible for, or allocates (sometimes in a fallible region, or
//! spending one of its reservations). Objects are handed at allocation to the
//! task that will free them (itself, its peer, or any task). Attach churn
//! and group churn fire on their periods, counted in scheduler ticks.

use memcg::Topology;

use crate::ops::Op;
use crate::rng::Rng;
use crate::scenario::{FreeBy, Scenario};

/// A live churn group: its path and the tasks moved in, with the group
/// each came from.
type ChurnGroup = (String, Vec<(usize, String)>);

struct GenTask {
    spec: usize,
    cpu: usize,
    group: String,
    to_free: Vec<u64>,
    reservations: Vec<u64>,
}

/// The task index of every replica, in `[[task]]` order.
pub fn task_layout(scenario: &Scenario) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (spec, t) in scenario.tasks.iter().enumerate() {
        for replica in 0..t.count as usize {
            out.push((spec, replica));
        }
    }
    out
}

/// The CPU task replica `replica` of a spec starting at `first_cpu` runs on.
pub fn initial_cpu(topo: &Topology, first_cpu: u64, replica: usize) -> usize {
    let cpus: Vec<usize> = topo.cpus().collect();
    let start = cpus
        .iter()
        .position(|&c| c as u64 == first_cpu)
        .unwrap_or(0);
    cpus[(start + replica) % cpus.len()]
}

/// Generates `scenario.run.steps` operations (or returns the explicit
/// `[[step]]` list).
///
/// # Errors
/// When the topology spec is invalid (validated scenarios never are).
pub fn generate(scenario: &Scenario) -> memcg::Result<Vec<Op>> {
    if !scenario.steps.is_empty() {
        return Ok(scenario.steps.clone());
    }
    let topo = Topology::from_spec(&scenario.machine.topology)?;
    let cpus: Vec<usize> = topo.cpus().collect();
    let mut rng = Rng::new(scenario.run.seed);
    let layout = task_layout(scenario);
    let mut tasks: Vec<GenTask> = layout
        .iter()
        .map(|&(spec, replica)| {
            let s = &scenario.tasks[spec];
            GenTask {
                spec,
                cpu: initial_cpu(&topo, s.cpu, replica),
                group: s.group.clone(),
                to_free: Vec::new(),
                reservations: Vec::new(),
            }
        })
        .collect();
    let replicas_of = |name: &str| -> Vec<usize> {
        layout
            .iter()
            .enumerate()
            .filter(|(_, &(spec, _))| scenario.tasks[spec].name == name)
            .map(|(i, _)| i)
            .collect()
    };
    let total_weight: f64 = tasks.iter().map(|t| scenario.tasks[t.spec].weight).sum();
    let steps = scenario.run.steps as usize;
    let mut ops = Vec::with_capacity(steps);
    let mut next_obj = 0u64;
    // Tasks with a `start_cpu` charge once there (their cache refreshes on
    // that node), then move to their `cpu` for good.
    for (i, t) in tasks.iter().enumerate() {
        if scenario.tasks[t.spec].start_cpu.is_some() {
            ops.push(Op::Alloc {
                task: i,
                bytes: 64,
                obj: next_obj,
                cache: false,
                fallible: false,
                spend: None,
            });
            ops.push(Op::Free {
                task: i,
                obj: next_obj,
            });
            ops.push(Op::Migrate {
                task: i,
                cpu: t.cpu,
            });
            next_obj += 1;
        }
    }
    let mut next_res = 0u64;
    let mut churn_groups: Vec<Option<ChurnGroup>> = vec![None; scenario.group_churn.len()];
    let mut tick = 0u64;
    while ops.len() < steps {
        tick += 1;
        for c in &scenario.attach_churn {
            if tick.is_multiple_of(c.every_steps) {
                let g = &c.groups[((tick / c.every_steps) as usize) % c.groups.len()];
                for i in replicas_of(&c.task) {
                    tasks[i].group = g.clone();
                    ops.push(Op::Attach {
                        task: i,
                        group: g.clone(),
                    });
                }
            }
        }
        for (k, c) in scenario.group_churn.iter().enumerate() {
            if tick.is_multiple_of(c.every_steps) {
                let path = format!("{}/churn-{}", c.parent, tick / c.every_steps);
                ops.push(Op::CreateGroup { path: path.clone() });
                let mut moved = Vec::new();
                for i in replicas_of(&c.task) {
                    moved.push((i, tasks[i].group.clone()));
                    tasks[i].group = path.clone();
                    ops.push(Op::Attach {
                        task: i,
                        group: path.clone(),
                    });
                }
                churn_groups[k] = Some((path, moved));
            } else if tick % c.every_steps == c.every_steps / 2 {
                // Move the tasks back where they were and remove the group:
                // its live objects are reparented.
                if let Some((path, moved)) = churn_groups[k].take() {
                    for (i, back) in moved {
                        let back = if tasks[i].group == path {
                            back
                        } else {
                            tasks[i].group.clone()
                        };
                        tasks[i].group = back.clone();
                        ops.push(Op::Attach {
                            task: i,
                            group: back,
                        });
                    }
                    ops.push(Op::RemoveGroup { path });
                }
            }
        }

        // Pick a task by weight.
        let mut x = rng.unit() * total_weight;
        let mut i = tasks.len() - 1;
        for (j, t) in tasks.iter().enumerate() {
            let w = scenario.tasks[t.spec].weight;
            if x < w {
                i = j;
                break;
            }
            x -= w;
        }
        let spec = &scenario.tasks[tasks[i].spec];
        if rng.chance(spec.migrate_rate) && cpus.len() > 1 {
            let node = topo.node_of(tasks[i].cpu).unwrap_or(0);
            let cross = rng.chance(spec.cross_node_share);
            let choices: Vec<usize> = cpus
                .iter()
                .copied()
                .filter(|&c| c != tasks[i].cpu)
                .filter(|&c| (topo.node_of(c).unwrap_or(0) != node) == cross)
                .collect();
            let choices = if choices.is_empty() {
                cpus.iter()
                    .copied()
                    .filter(|&c| c != tasks[i].cpu)
                    .collect()
            } else {
                choices
            };
            let cpu = choices[rng.index(choices.len())];
            tasks[i].cpu = cpu;
            ops.push(Op::Migrate { task: i, cpu });
            continue;
        }
        if rng.chance(spec.flush_rate) {
            ops.push(Op::Flush { task: i });
            continue;
        }
        if rng.chance(spec.reserve_rate) {
            let t = &mut tasks[i];
            if !t.reservations.is_empty() && rng.chance(0.6) {
                let k = rng.index(t.reservations.len());
                if rng.chance(0.5) {
                    let res = t.reservations.swap_remove(k);
                    ops.push(Op::Release { res });
                } else {
                    let bytes = rng.range(1, spec.reserve_max_bytes);
                    ops.push(Op::ResizeReservation {
                        res: t.reservations[k],
                        bytes,
                    });
                }
            } else {
                let res = next_res;
                next_res += 1;
                t.reservations.push(res);
                ops.push(Op::Reserve {
                    group: t.group.clone(),
                    bytes: rng.range(1, spec.reserve_max_bytes),
                    res,
                });
            }
            continue;
        }
        let queue = tasks[i].to_free.len() as f64;
        if queue > 0.0 && rng.chance((queue / spec.lifetime_ops).min(1.0)) {
            let k = rng.index(tasks[i].to_free.len());
            let obj = tasks[i].to_free.swap_remove(k);
            ops.push(Op::Free { task: i, obj });
            continue;
        }
        let obj = next_obj;
        next_obj += 1;
        let bytes = rng.range(spec.alloc_min_bytes, spec.alloc_max_bytes);
        let cache = rng.chance(spec.cache_share);
        // Drawn only when asked for, so that workloads without them keep
        // their step lists.
        let fallible = spec.fallible_share > 0.0 && rng.chance(spec.fallible_share);
        let reservations = &tasks[i].reservations;
        let spend =
            (spec.spend_share > 0.0 && !reservations.is_empty() && rng.chance(spec.spend_share))
                .then(|| reservations[rng.index(reservations.len())]);
        ops.push(Op::Alloc {
            task: i,
            bytes,
            obj,
            cache,
            fallible,
            spend,
        });
        let freer = match (spec.free_by, &spec.peer) {
            (FreeBy::Peer, Some(p)) => {
                let peers = replicas_of(p);
                let replica = layout[i].1;
                peers
                    .get(replica % peers.len().max(1))
                    .copied()
                    .unwrap_or(i)
            }
            (FreeBy::Any, _) => rng.index(tasks.len()),
            _ => i,
        };
        tasks[freer].to_free.push(obj);
    }
    ops.truncate(steps);
    Ok(ops)
}
