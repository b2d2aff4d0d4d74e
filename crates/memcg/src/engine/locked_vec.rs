//! Vectors behind engine locks, changed without allocating while the lock
//! is held (the engine's rule: an allocation under an engine lock can be
//! charged, and a charge can wait for the reclaimer thread, which may need
//! the same lock).
//!
//! Each operation that needs room makes it outside the lock and retries:
//! read the length under the lock, drop the lock, allocate, take the lock
//! again and check that the room still suffices.

use crate::sync::Mutex;

/// A copy of the vector behind `m`, made without allocating under the lock.
pub(crate) fn snapshot<T: Clone>(m: &Mutex<Vec<T>>) -> Vec<T> {
    let _root = crate::sync::engine_alloc_scope();
    let mut out: Vec<T> = Vec::new();
    loop {
        let want = {
            let v = m.lock();
            if v.len() <= out.capacity() {
                // No allocation: the room is there and clones of the
                // engine's element types (`Arc`s) do not allocate.
                out.extend(v.iter().cloned());
                return out;
            }
            v.len()
        };
        out.reserve_exact(want);
    }
}

/// Inserts `item` at the index `at` returns for the locked vector (`None`:
/// do not insert; `item` is handed back), without allocating under the lock.
pub(crate) fn insert_with<T>(
    m: &Mutex<Vec<T>>,
    item: T,
    mut at: impl FnMut(&[T]) -> Option<usize>,
) -> Result<(), T> {
    loop {
        reserve_one(m);
        let mut v = m.lock();
        let Some(i) = at(&v) else {
            drop(v);
            return Err(item);
        };
        // Another insert may have used the room made: make it again.
        if v.len() < v.capacity() {
            let i = i.min(v.len());
            v.insert(i, item);
            return Ok(());
        }
    }
}

/// Makes room for one more element outside the lock, so that a later
/// insert made under another lock (the tree lock) does not allocate.
pub(crate) fn reserve_one<T>(m: &Mutex<Vec<T>>) {
    let _root = crate::sync::engine_alloc_scope();
    let mut spare: Option<Vec<T>> = None;
    loop {
        let old = {
            let mut v = m.lock();
            if v.len() < v.capacity() {
                break;
            }
            match spare.take() {
                Some(mut bigger) if bigger.capacity() > v.len() => {
                    bigger.append(&mut v);
                    std::mem::swap(&mut *v, &mut bigger);
                    bigger
                }
                _ => {
                    let want = (v.len() + 1).max(v.capacity() * 2).max(4);
                    drop(v);
                    spare = Some(Vec::with_capacity(want));
                    continue;
                }
            }
        };
        drop(old);
    }
    drop(spare);
}

/// Pushes `item` without allocating under the lock.
pub(crate) fn push<T>(m: &Mutex<Vec<T>>, item: T) {
    let _ = insert_with(m, item, |v| Some(v.len()));
}

/// Removes the elements `pred` selects and returns them, so that the
/// caller drops them after the lock is released (dropping can free).
pub(crate) fn take_where<T>(m: &Mutex<Vec<T>>, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
    let _root = crate::sync::engine_alloc_scope();
    let mut taken = Vec::new();
    loop {
        let want = {
            let mut v = m.lock();
            let n = v.iter().filter(|x| pred(x)).count();
            if n <= taken.capacity() {
                let mut i = 0;
                while i < v.len() {
                    if pred(&v[i]) {
                        taken.push(v.remove(i));
                    } else {
                        i += 1;
                    }
                }
                return taken;
            }
            n
        };
        taken.reserve_exact(want);
    }
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;

    #[test]
    fn push_insert_snapshot_and_take_keep_order() {
        let m = Mutex::new(Vec::new());
        for i in [5, 1, 3] {
            insert_with(&m, i, |v| Some(v.partition_point(|x| *x < i))).unwrap();
        }
        push(&m, 9);
        assert_eq!(snapshot(&m), [1, 3, 5, 9]);
        assert_eq!(insert_with(&m, 3, |v| v.binary_search(&3).err()), Err(3));
        assert_eq!(take_where(&m, |x| *x > 2), [3, 5, 9]);
        assert_eq!(snapshot(&m), [1]);
    }
}
