//! The monitor thread of the memcg child: exempt from accounting (its
//! allocations are charged to root), it takes exact snapshots of a group
//! on request and samples `memory.current` against the live bytes every
//! millisecond while a workload runs.
//!
//! The workload thread talks to it through a `Mutex` and a `Condvar`
//! only, which do not allocate: after the workload's threads flushed their
//! caches, a snapshot must not be disturbed by new charges of theirs.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use memcg::{Group, PAGE_SIZE};

/// A group's usage and live bytes at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// `memory.current`.
    pub current_bytes: u64,
    /// Live bytes (`alloc + runtime + reservation` of `memory.stat`).
    pub live_bytes: u64,
    /// `Σ over nodes of ceil(live bytes of the node / 4096) × 4096`: what
    /// `memory.current` must be after every task flushed and the stocks
    /// were drained (one objcg per node for a group without children).
    pub expected_bytes: u64,
}

impl Snapshot {
    /// Reads `group` (no draining).
    pub fn read(group: &Group) -> Snapshot {
        let stats = group.stats();
        let mut live = 0;
        let mut expected = 0;
        for n in &stats.numa {
            let s = n.hierarchical;
            let node_live = s.alloc_bytes + s.runtime_bytes + s.reservation_bytes;
            live += node_live;
            expected += node_live.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        }
        Snapshot {
            current_bytes: stats.current_bytes,
            live_bytes: live,
            expected_bytes: expected,
        }
    }
}

/// The worst gaps seen while sampling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Gaps {
    /// Samples taken.
    pub samples: u64,
    /// Largest `memory.current − live` (bytes charged but not live).
    pub worst_over_bytes: u64,
    /// Largest `live − memory.current` (statistics ahead of usage; only
    /// the statistics lag can cause it).
    pub worst_under_bytes: u64,
    /// Largest `memory.current` seen.
    pub peak_current_bytes: u64,
    /// Largest `memory.current − live` that held over three consecutive
    /// samples (about 2 ms): the smallest of the three gaps. A charge or
    /// free in flight between its statistics and its page counter update
    /// (a few atomics; longer only if its thread is preempted right there)
    /// shows in a sample or two; what is cached in stocks and task caches
    /// stays.
    pub worst_held_over_bytes: u64,
    /// The same for `live − memory.current`.
    pub worst_held_under_bytes: u64,
    /// The two previous samples' gaps (over, under), oldest first.
    #[serde(skip)]
    last: [Option<(u64, u64)>; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Idle,
    Measure,
    Sample,
    Exit,
}

#[derive(Debug)]
struct State {
    command: Command,
    snapshot: Option<Snapshot>,
    gaps: Gaps,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// The monitor thread; see the module docs.
#[derive(Debug)]
pub struct Monitor {
    shared: Shared,
    thread: Option<JoinHandle<()>>,
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.0.lock().unwrap_or_else(|e| e.into_inner())
}

impl Monitor {
    /// Starts the monitor for `group`. Call it from a thread still in
    /// root, before the workload's threads attach, so that its own
    /// allocations stay out of the group.
    pub fn start(group: Group) -> Monitor {
        let shared: Shared = Arc::new((
            Mutex::new(State {
                command: Command::Idle,
                snapshot: None,
                gaps: Gaps::default(),
            }),
            Condvar::new(),
        ));
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("memcg-monitor".into())
            .spawn(move || run(&s, &group))
            .expect("the OS starts the monitor thread");
        Monitor {
            shared,
            thread: Some(thread),
        }
    }

    fn set(&self, command: Command) {
        let mut st = lock(&self.shared);
        st.command = command;
        self.shared.1.notify_all();
    }

    /// Drains every stock (`memcg::Controller::drain_stocks`, which also
    /// trims the objcgs' sub-page pools) and reads the group, on the
    /// monitor thread. The calling thread does not allocate meanwhile.
    pub fn measure(&self) -> Snapshot {
        let mut st = lock(&self.shared);
        st.snapshot = None;
        st.command = Command::Measure;
        self.shared.1.notify_all();
        loop {
            if let Some(s) = st.snapshot.take() {
                return s;
            }
            st = self.shared.1.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Starts sampling every millisecond, with fresh gaps.
    pub fn start_sampling(&self) {
        lock(&self.shared).gaps = Gaps::default();
        self.set(Command::Sample);
    }

    /// Stops sampling; returns the gaps seen.
    pub fn stop_sampling(&self) -> Gaps {
        let mut st = lock(&self.shared);
        st.command = Command::Idle;
        st.gaps
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.set(Command::Exit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, group: &Group) {
    memcg::set_current_exempt(true);
    let mut st = lock(shared);
    loop {
        match st.command {
            Command::Idle => st = shared.1.wait(st).unwrap_or_else(|e| e.into_inner()),
            Command::Exit => return,
            Command::Measure => {
                memcg::controller().drain_stocks();
                st.snapshot = Some(Snapshot::read(group));
                st.command = Command::Idle;
                shared.1.notify_all();
            }
            Command::Sample => {
                drop(st);
                let s = Snapshot::read(group);
                st = lock(shared);
                if st.command == Command::Sample {
                    let g = &mut st.gaps;
                    g.samples += 1;
                    let over = s.current_bytes.saturating_sub(s.live_bytes);
                    let under = s.live_bytes.saturating_sub(s.current_bytes);
                    g.worst_over_bytes = g.worst_over_bytes.max(over);
                    g.worst_under_bytes = g.worst_under_bytes.max(under);
                    if let [Some((o1, u1)), Some((o2, u2))] = g.last {
                        g.worst_held_over_bytes = g.worst_held_over_bytes.max(over.min(o1).min(o2));
                        g.worst_held_under_bytes =
                            g.worst_held_under_bytes.max(under.min(u1).min(u2));
                    }
                    g.last = [g.last[1], Some((over, under))];
                    g.peak_current_bytes = g.peak_current_bytes.max(s.current_bytes);
                    st = shared
                        .1
                        .wait_timeout(st, Duration::from_millis(1))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}
