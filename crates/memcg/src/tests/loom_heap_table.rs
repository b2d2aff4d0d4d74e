//! The heap → objcg table of `MemcgMimalloc` (`src/heap_table.rs`) under
//! loom: two inserts whose keys share a home slot (so one probes past the
//! other's claim) race with lookups of both keys. Every lookup sees no key
//! or the key with its own value, never a claimed-but-unwritten slot or a
//! torn entry; after the race both keys map to their values and a third
//! insert finds the table full. (Publishing the key before the value fails
//! this model: a lookup sees the key with value 0.)

use loom::sync::Arc;
use loom::thread;

use crate::heap_table::HeapTable;

/// Four slots: room for two heaps.
type Table = HeapTable<4>;

/// Two distinct heap-like addresses (aligned, never 0 or 1) with the same
/// home slot.
fn colliding_keys() -> (usize, usize) {
    let first = 0x1000;
    let home = Table::home(first);
    let second = (2..)
        .map(|i| i * 0x1000)
        .find(|&k| Table::home(k) == home)
        .expect("some other key lands on the same slot");
    (first, second)
}

#[test]
fn racing_inserts_and_lookups_never_see_a_torn_entry() {
    super::model(|| {
        let (k1, k2) = colliding_keys();
        let table = Arc::new(Table::new());
        let inserters: Vec<_> = [(k1, 11), (k2, 22)]
            .into_iter()
            .map(|(k, v)| {
                let t = Arc::clone(&table);
                thread::spawn(move || assert!(t.insert(k, v), "room for two heaps"))
            })
            .collect();
        for (k, v) in [(k1, 11), (k2, 22)] {
            let seen = table.get(k);
            assert!(
                seen.is_none() || seen == Some(v),
                "key {k:#x}: saw {seen:?}, expected nothing or {v}"
            );
        }
        for h in inserters {
            h.join().expect("inserter");
        }
        assert_eq!(table.objcg_of(k1), 11);
        assert_eq!(table.objcg_of(k2), 22);
        assert_eq!(table.objcg_of(0x7000_0000), 0, "an absent key");
        assert!(!table.insert(0x9000, 33), "the table takes two heaps");
    });
}
