use memcg::engine::Task;
use memcg::{Controller, Group, Topology};

/// A controller on `spec` (e.g. "2x2").
pub(crate) fn ctrl(spec: &str) -> Controller {
    Controller::new(Topology::from_spec(spec).expect("valid spec"))
}

/// Flushes every given task on CPU 0, drains all stocks, checks invariants.
pub(crate) fn settle(ctrl: &Controller, tasks: &[&Task]) {
    for t in tasks {
        if !t.has_exited() {
            t.flush(0).expect("cpu 0 exists");
        }
    }
    ctrl.drain_stocks();
    check(ctrl);
}

/// Asserts the invariants hold, printing the violations otherwise.
pub(crate) fn check(ctrl: &Controller) {
    if let Err(v) = ctrl.check_invariants() {
        panic!("{v}");
    }
}

/// Names of the children of `g`.
pub(crate) fn child_names(g: &Group) -> Vec<String> {
    g.children().iter().map(|c| c.name().to_string()).collect()
}
