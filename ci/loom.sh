#!/usr/bin/env bash
# Runs the loom models of memcg (crates/memcg/src/tests/loom_*.rs).
#
# Usage: ci/loom.sh [extra `cargo test` arguments, e.g. a narrower filter
#        after `--`]. Runnable from anywhere; works in the repository root.
# Env:   LOOM_MAX_PREEMPTIONS (default 2; 1 for a quick local run),
#        LOOM_MAX_BRANCHES, LOOM_LOG, LOOM_LOCATION (see the loom docs).
#
# Whether the models have teeth (each needed ordering, weakened, fails a
# model): scripts/loom-mutations.py (not run in CI; see its header).
#
# The models build with `--cfg memcg_loom` (all engine atomics and mutexes
# become loom's) into a separate target directory, so they do not
# invalidate the normal build.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
export RUSTFLAGS="--cfg memcg_loom -C debug-assertions"

start=$(date +%s)
status=0
if [ "$#" -gt 0 ]; then
    # A narrower selection, e.g. `-- loom_reclaim` (cargo runs a test that
    # matches any filter, so `loom_` is only added when none is given).
    cargo test -p memcg --lib --release --target-dir target/loom "$@" || status=$?
else
    # --nocapture: each model prints its executions and time.
    cargo test -p memcg --lib --release --target-dir target/loom -- loom_ --nocapture || status=$?
fi
end=$(date +%s)

echo "loom: LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS}, took $((end - start))s (exit ${status})"
exit "$status"
