#!/usr/bin/env bash
# The NUMA VM checks (issue 13): memcg-vmcheck on the host (one node: what
# it can check), then in a VM per topology, inside a cgroup v2 group, with
# both allocators. scripts/vm/run.sh installs qemu, the kernel and busybox
# from the distribution if missing, and boots under TCG (software
# emulation). A few minutes in all on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p memcg-vmcheck
bin=target/release
"$bin/memcg-vmcheck-heaps" topology
"$bin/memcg-vmcheck-heaps" placement --min-percent 99
for topology in ${MEMCG_VM_TOPOLOGIES:-2x2 sparse memonly offline}; do
    echo "-- VM topology $topology"
    extra=()
    # A node filled past its free memory: once, on the plain two-node layout.
    [ "$topology" = 2x2 ] && extra=(--exec "$bin/memcg-vmcheck-heaps node-full")
    scripts/vm/run.sh --topology "$topology" --cgroup vmcheck \
        --exec "$bin/memcg-vmcheck-heaps all --min-percent 99" \
        --exec "$bin/memcg-vmcheck-alloc all" "${extra[@]}"
done
