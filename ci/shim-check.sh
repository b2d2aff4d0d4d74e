#!/usr/bin/env bash
# Only crates/memcg/src/sync.rs may name std's atomics or Mutex: everything
# else goes through the shim so loom sees every synchronisation. The loom
# tests themselves (src/tests/) may count executions with std types.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(grep -rn --include='*.rs' -E 'std::sync::(atomic|Mutex)' crates/memcg/src | grep -v -e '^crates/memcg/src/sync.rs:' -e '^crates/memcg/src/tests/' || true)
if [ -n "$bad" ]; then
    echo "use crate::sync instead of std::sync in:"
    echo "$bad"
    exit 1
fi
echo "ok"
