//! A crate of ordinary integer comparisons that compiles only while
//! memcg's default features bring no crate whose trait impls make them
//! ambiguous.
//!
//! Each function compares an integer with a value whose type is inferred
//! from the comparison: `v == x.into()`, `v == Default::default()`,
//! `v == s.parse().unwrap()`, `v == it.sum()`, `v == n as _` … They compile
//! while `u8: PartialEq<T>` (and so on) has one impl. `serde_json` adds
//! `impl PartialEq<serde_json::Value> for u8` (and for every integer type),
//! so once it is anywhere in a crate's graph — as a dependency of memcg,
//! say — each of these fails with E0283 ("type annotations needed …
//! multiple `impl`s satisfying `u8: PartialEq<_>` found in the following
//! crates: `core`, `serde_json`") or E0282. This is what broke `bytes`' and
//! `rayon-core`'s own tests when memcg was added to them.
//!
//! memcg keeps `serde_json` behind its `json` feature, off by default; this
//! crate depends on memcg with default features and is built by every
//! `cargo build/test/clippy --workspace`, so a default that brought
//! `serde_json` (or another crate with such impls) back fails the build
//! here. See `README.md` for the error it gives with `json` on.

// A dependency that is never named is never loaded, and the impls of the
// crates it depends on would not be seen: name memcg, as a user does.
pub use memcg::Controller;

/// `v == x.into()`: a widening `Into<?T>` with `u32: PartialEq<?T>`.
pub fn eq_into(v: u32, x: u8) -> bool {
    v == x.into()
}

/// `v == Default::default()`.
pub fn eq_default(v: u8) -> bool {
    v == Default::default()
}

/// `v == s.parse().unwrap()`, as in `bytes`' tests of parsed numbers.
pub fn eq_parsed(v: u8, s: &str) -> bool {
    v == s.parse().unwrap_or_default()
}

/// `v == it.sum()`: `Sum<&u64>` for an inferred type.
pub fn eq_sum(v: u64, s: &[u64]) -> bool {
    v == s.iter().sum()
}

/// `v == n.try_into().unwrap()`: the conversion's target inferred from the
/// comparison, as in `rayon-core`'s tests of counts.
pub fn eq_try_into(v: usize, n: u32) -> bool {
    v == n.try_into().unwrap_or_default()
}

/// `v[0] == b[0].into()`: a byte widened to an inferred type.
pub fn eq_byte_into(v: &[u16], b: &[u8]) -> bool {
    v[0] == b[0].into()
}

/// `x == n as _`: a cast to the type the comparison infers.
pub fn eq_cast(n: u16) -> bool {
    let x: u32 = 3;
    x == n as _
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_compile_and_compare_values() {
        assert!(eq_into(3, 3) && !eq_into(3, 4));
        assert!(eq_default(0) && !eq_default(1));
        assert!(eq_parsed(42, "42") && !eq_parsed(42, "41"));
        assert!(eq_sum(6, &[1, 2, 3]));
        assert!(eq_try_into(7, 7));
        assert!(eq_byte_into(&[97, 98], b"ab") && !eq_byte_into(&[97], b"x"));
        assert!(eq_cast(3) && !eq_cast(4));
    }

    #[test]
    fn memcg_is_loaded_and_usable() {
        let ctrl = Controller::new(memcg::Topology::from_spec("1x1").unwrap());
        assert!(ctrl.root().is_root());
    }
}
