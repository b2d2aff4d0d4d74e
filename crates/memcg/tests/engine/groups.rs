use memcg::{Error, Limit};

use super::util::{check, child_names, ctrl};

#[test]
fn create_by_path_links_parent_and_children() {
    let c = ctrl("1x1");
    let t = c.create("tenants").unwrap();
    let a = c.create("tenants/a").unwrap();
    let b = t.create_child("b").unwrap();
    assert_eq!(a.path(), "tenants/a");
    assert_eq!(b.path(), "tenants/b");
    assert_eq!(a.name(), "a");
    assert_eq!(a.parent().unwrap(), t);
    assert_eq!(child_names(&t), ["a", "b"]);
    assert_eq!(c.group("/tenants/a/").unwrap(), a);
    assert_eq!(c.group("tenants").unwrap().child("b").unwrap(), b);
    assert!(c.root().is_root());
    assert_eq!(c.group("").unwrap(), c.root());
    assert_eq!(c.group("/").unwrap(), c.root());
    check(&c);
}

#[test]
fn create_bad_names_returns_invalid_name_and_changes_nothing() {
    let c = ctrl("1x1");
    let root = c.root();
    let long = "x".repeat(256);
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "tab\there",
        "nul\0",
        "nl\n",
        long.as_str(),
    ] {
        match root.create_child(bad) {
            Err(Error::InvalidName { name, reason }) => {
                assert_eq!(name, bad);
                assert!(!reason.is_empty());
            }
            other => panic!("{bad:?}: expected InvalidName, got {other:?}"),
        }
    }
    assert!(root.create_child(&"y".repeat(255)).is_ok());
    assert_eq!(root.children().len(), 1);
    check(&c);
}

#[test]
fn create_duplicate_returns_already_exists() {
    let c = ctrl("1x1");
    c.create("a").unwrap();
    assert_eq!(
        c.create("a").unwrap_err(),
        Error::AlreadyExists { path: "a".into() }
    );
    assert_eq!(c.root().children().len(), 1);
}

#[test]
fn lookup_unknown_path_returns_not_found() {
    let c = ctrl("1x1");
    c.create("a").unwrap();
    assert_eq!(
        c.group("a/b").unwrap_err(),
        Error::NotFound { path: "a/b".into() }
    );
    assert!(matches!(c.create("x/y"), Err(Error::NotFound { .. })));
    assert!(matches!(c.group("a//b"), Err(Error::InvalidPath { .. })));
    assert!(matches!(c.group("a/../b"), Err(Error::InvalidName { .. })));
    assert!(matches!(c.remove("nope"), Err(Error::NotFound { .. })));
}

#[test]
fn remove_root_returns_root_error() {
    let c = ctrl("1x1");
    assert_eq!(
        c.root().remove().unwrap_err(),
        Error::Root {
            operation: "remove"
        }
    );
    assert_eq!(
        c.remove("/").unwrap_err(),
        Error::Root {
            operation: "remove"
        }
    );
    assert!(c.root().is_online());
}

#[test]
fn remove_twice_returns_removed() {
    let c = ctrl("1x1");
    let a = c.create("a").unwrap();
    a.remove().unwrap();
    assert!(!a.is_online());
    assert_eq!(a.remove().unwrap_err(), Error::Removed { path: "a".into() });
    assert!(matches!(c.group("a"), Err(Error::NotFound { .. })));
    // The name is free again.
    let a2 = c.create("a").unwrap();
    assert_ne!(a, a2);
    check(&c);
}

#[test]
fn remove_with_tasks_returns_has_tasks_and_keeps_group() {
    let c = ctrl("1x1");
    let a = c.create("a").unwrap();
    let t = c.new_task(&a).unwrap();
    assert_eq!(
        a.remove().unwrap_err(),
        Error::HasTasks {
            path: "a".into(),
            nr_tasks: 1
        }
    );
    assert!(a.is_online());
    assert_eq!(a.nr_tasks(), 1);
    c.root().attach(&t.handle()).unwrap();
    assert_eq!(a.nr_tasks(), 0);
    a.remove().unwrap();
    check(&c);
}

#[test]
fn remove_with_children_returns_has_children() {
    let c = ctrl("1x1");
    let a = c.create("a").unwrap();
    c.create("a/b").unwrap();
    assert_eq!(
        a.remove().unwrap_err(),
        Error::HasChildren {
            path: "a".into(),
            nr_children: 1
        }
    );
    assert!(a.is_online());
    c.remove("a/b").unwrap();
    a.remove().unwrap();
}

#[test]
fn removed_group_refuses_children_tasks_charges_and_limits() {
    let c = ctrl("1x1");
    let a = c.create("a").unwrap();
    let t = c.new_task(&c.root()).unwrap();
    a.remove().unwrap();
    let removed = Error::Removed { path: "a".into() };
    assert_eq!(a.create_child("x").unwrap_err(), removed);
    assert_eq!(a.attach(&t.handle()).unwrap_err(), removed);
    assert_eq!(c.new_task(&a).unwrap_err(), removed);
    assert_eq!(a.try_charge(10).unwrap_err(), removed);
    assert_eq!(a.set_max(Limit::Bytes(1)).unwrap_err(), removed);
    assert_eq!(t.enter(&a).unwrap_err(), removed);
    assert_eq!(t.group().unwrap(), c.root());
    check(&c);
}

#[test]
fn objects_from_other_controllers_are_refused() {
    let c1 = ctrl("1x1");
    let c2 = ctrl("1x1");
    let g1 = c1.create("a").unwrap();
    let t2 = c2.new_task(&c2.root()).unwrap();
    assert_eq!(
        g1.attach(&t2.handle()).unwrap_err(),
        Error::ForeignController
    );
    assert_eq!(c2.new_task(&g1).unwrap_err(), Error::ForeignController);
    assert_eq!(t2.enter(&g1).unwrap_err(), Error::ForeignController);
    let t1 = c1.new_task(&g1).unwrap();
    let charge = t1.charge(0, 100, memcg::ChargeKind::Alloc).unwrap();
    let charge = match t2.uncharge(0, charge) {
        Err(Error::ForeignController) => t1.charge(0, 1, memcg::ChargeKind::Alloc).unwrap(),
        other => panic!("expected ForeignController, got {other:?}"),
    };
    assert_eq!(
        c2.uncharge(0, charge).unwrap_err(),
        Error::ForeignController
    );
}

#[test]
fn several_controllers_coexist_independently() {
    let c1 = ctrl("2x1");
    let c2 = ctrl("1x3");
    let a1 = c1.create("a").unwrap();
    let a2 = c2.create("a").unwrap();
    let r1 = a1.try_charge(10_000).unwrap();
    assert_eq!(a1.current_bytes(), 12_288);
    assert_eq!(a2.current_bytes(), 0);
    assert_eq!(c2.topology().nr_cpus(), 3);
    drop(r1);
    check(&c1);
    check(&c2);
}
