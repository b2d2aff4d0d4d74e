//! loom models of the lock-free protocols (run them with `ci/loom.sh`).

#[cfg(not(debug_assertions))]
compile_error!(
    "loom models need debug assertions: RUSTFLAGS=\"--cfg memcg_loom -C debug-assertions\""
);
