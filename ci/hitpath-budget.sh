#!/usr/bin/env bash
# The allocators' hit path held by an instruction budget (issue 12, point 4).
#
# Builds the five hit-path programs of crates/memcg-bench (src/hitpath.rs:
# 64-byte alloc+free pairs through the global allocator, one binary per
# allocator: bare mimalloc through memcg::PlainMimalloc, bare mimalloc
# through the `mimalloc` crate's binding, a reference wrapper of
# PlainMimalloc with MemcgAlloc's per-block owner word and no accounting
# (hitpath-trailer-only), MemcgAlloc<memcg::PlainMimalloc>, MemcgMimalloc),
# runs each under `valgrind --tool=callgrind` twice, with N1 and N2 pairs,
# counting only the instructions of the pair loop (`--toggle-collect`), and
# takes (I(N2) - I(N1)) / (N2 - N1): start-up and first-allocation costs
# (the task, the group, the objcg's first page, mimalloc's first page)
# cancel out. Instruction counts do not depend on the machine's load, so
# the check is deterministic: a regression of the hit path fails at the
# commit that makes it.
#
# Each memcg binary runs twice more with `--scope`: the pairs inside a
# scope of the group (`Group::enter`, as the runtime's scopes and a
# `Future` wrapped in its group run), the thread itself in root. Those
# rows hold the hit path of an override to the attached figure's budget
# (before the key was armed under an override, such a pair cost about 467
# instructions with MemcgMimalloc).
#
# Prints instructions per pair, the ratio to bare mimalloc (through the
# plain binding, which MemcgAlloc runs over and whose rule MemcgMimalloc
# follows for its heaps; the `mimalloc` crate's binding, which calls mimalloc's aligned entry
# points for every layout, is printed beside it), the budget and
# the targets of each allocator, and exits 1 when a pair goes over its
# budget.
#
# The trailer-only row is the floor of MemcgAlloc's design: wrapping any
# allocator with an owner word after each block (its store and load, the
# inner call no longer a tail call, the size kept across it, the null
# check, a layout check) costs about 16 instructions per pair before any
# accounting. Its budget guards the harness, as bare mimalloc's does.
#
# Budgets and targets. The issue's targets are 95 instructions per pair
# for MemcgAlloc<mimalloc> and 110 for MemcgMimalloc, written as 1.3x and
# 1.5x of the 73 it measured for bare mimalloc. This harness counts 71.1
# for bare mimalloc through the plain binding (81.2 through the `mimalloc`
# crate's, whose `mi_malloc_aligned` hop costs about 10 per pair); as ratios
# of 71.1 the targets are 92.4 and 106.7. Both forms are printed. Each
# budget is the figure measured at the commit that set it plus about 3%,
# to catch regressions (MemcgMimalloc's is below its target, which it
# meets; MemcgAlloc does not meet its own).
# Lower a budget when a change cuts the hit path; raise one only with the
# reason in the commit message.
#
# Installs valgrind from the distribution's packages if it is missing
# (apt-get, through sudo when not root and sudo is available).
#
# Usage: ci/hitpath-budget.sh   (env: HITPATH_N1, HITPATH_N2; KEEP=1 keeps
#        the callgrind outputs and prints where)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Budgets (instructions per pair; see above).
# Measured when last set: 71.1, 81.2, 103.8 and 99.3 (bare mimalloc and
# MemcgAlloc's inner through memcg::PlainMimalloc, the crate's binding in a
# row of its own); before that, with the crate's binding, 81.2, 114.8 and
# 99.3 (a block charged its
# layout's size, MemcgAlloc's trailer right after it, unaligned: no
# rounding to 8 on either half of a pair); before that 116.8 and 102.3
# (MemcgMimalloc's small size rounded into the call's size register: no moves); before that 116.8
# and 104.3 (an objcg's references counted in bytes, which carry them: no
# reference credit per hit, its check on allocation and its increment on a
# free); before that 119.8 and 107.3 (MemcgAlloc's free reads its trailer
# at the inner size minus 8 from the block laundered in place: no address
# computed apart); before that 121.8 and 107.3 (MemcgMimalloc's
# allocation: the key armed with the objcg's heap, so no test of the heap;
# its size and charge word kept in memory across mimalloc's call and its
# mark cleared in place, so the call keeps one register, not three);
# before that 112.3 (the free's owner compare of memory with the block's
# word), 122.8 and 113.3 (the byte cache's bytes taken and put back with
# one read-modify-write of memory each, the hit mark one `or` of memory,
# the one-key compare of memory with a constant), 129.8 and 120.3 (no
# statistics per hit, one compare per free, the hit cache pointer instead
# of the flags byte, MemcgMimalloc's heap copied into the task cache and
# its page map pointer into the thread-local, the reference credit checked
# again in one instruction, MemcgMimalloc's small layouts apart), 167.8
# and 168.3, and before issue 12's cuts 180.8 and 257.2.
BUDGET_MIMALLOC=74          # bare mimalloc: guards the harness itself
BUDGET_MIMALLOC_CRATE=84    # the same through the `mimalloc` crate's binding
BUDGET_TRAILER_ONLY=90      # a wrapper with MemcgAlloc's owner word, no accounting (86.8)
BUDGET_MEMCG_ALLOC=107      # target 95 (1.3x)
BUDGET_MEMCG_MIMALLOC=102   # target 110 (1.5x)
TARGET_MEMCG_ALLOC=95
TARGET_MEMCG_MIMALLOC=110
TARGET_RATIO_MEMCG_ALLOC=1.30
TARGET_RATIO_MEMCG_MIMALLOC=1.50

n1="${HITPATH_N1:-100000}"
n2="${HITPATH_N2:-1100000}"

if ! command -v valgrind >/dev/null; then
    echo "hitpath: installing valgrind" >&2
    sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "hitpath: valgrind missing and not root (no sudo)" >&2; exit 1; }
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq >/dev/null
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi

bins=(hitpath-mimalloc hitpath-mimalloc-crate hitpath-trailer-only hitpath-memcg-alloc hitpath-memcg-mimalloc)
build=()
for b in "${bins[@]}"; do build+=(--bin "$b"); done
cargo build --release -q -p memcg-bench "${build[@]}"

out=$(mktemp -d)
if [ "${KEEP:-0}" = 1 ]; then
    echo "hitpath: callgrind outputs in $out" >&2
else
    trap 'rm -rf "$out"' EXIT
fi

# Instructions counted inside the pair loop for `$1` pairs of binary `$2`
# (`$3`: `--scope`, or nothing).
count() {
    local n=$1 bin=$2 flag=${3:-} file="$out/$2$3.$1.callgrind"
    valgrind --tool=callgrind --callgrind-out-file="$file" \
        --collect-atstart=no '--toggle-collect=*hitpath*run_pairs*' \
        "target/release/$bin" "$n" ${flag:+"$flag"} 2>"$out/$bin$flag.$n.log" \
        || { cat "$out/$bin$flag.$n.log" >&2; echo "hitpath: $bin $flag failed under valgrind" >&2; exit 1; }
    local total
    total=$(awk '/^summary:/ { print $2 }' "$file")
    [ -n "$total" ] && [ "$total" -gt 0 ] \
        || { echo "hitpath: no instructions counted for $bin (did run_pairs get renamed?)" >&2; exit 1; }
    echo "$total"
}

declare -A per_pair
runs=()
for b in "${bins[@]}"; do runs+=("$b"); done
runs+=(hitpath-memcg-alloc:--scope hitpath-memcg-mimalloc:--scope)
for r in "${runs[@]}"; do
    b=${r%%:*}
    flag=
    [ "$r" = "$b" ] || flag=${r#*:}
    i1=$(count "$n1" "$b" "$flag")
    i2=$(count "$n2" "$b" "$flag")
    per_pair[$b$flag]=$(awk -v a="$i1" -v b="$i2" -v n1="$n1" -v n2="$n2" \
        'BEGIN { printf "%.1f", (b - a) / (n2 - n1) }')
done

base=${per_pair[hitpath-mimalloc]}
status=0
printf '%-26s %12s %8s %8s %8s %8s\n' allocator "instr/pair" ratio budget target "ratio tgt"
row() {
    local name=$1 bin=$2 budget=$3 target=$4 rtarget=$5 v ratio verdict
    v=${per_pair[$bin]}
    ratio=$(awk -v v="$v" -v b="$base" 'BEGIN { printf "%.2f", v / b }')
    verdict=ok
    if awk -v v="$v" -v b="$budget" 'BEGIN { exit !(v > b) }'; then
        verdict="OVER BUDGET"
        status=1
    fi
    if [ "$rtarget" != - ]; then
        local t r
        if awk -v v="$v" -v t="$target" 'BEGIN { exit !(v <= t) }'; then
            t="target met"
        else
            t="target not met"
        fi
        if awk -v r="$ratio" -v t="$rtarget" 'BEGIN { exit !(r <= t) }'; then
            r="ratio target met"
        else
            r="ratio target not met"
        fi
        verdict="$verdict ($t, $r)"
    fi
    printf '%-26s %12s %8s %8s %8s %8s  %s\n' "$name" "$v" "$ratio" "$budget" "$target" "$rtarget" "$verdict"
}
row "bare mimalloc" hitpath-mimalloc "$BUDGET_MIMALLOC" - -
row "bare, mimalloc crate" hitpath-mimalloc-crate "$BUDGET_MIMALLOC_CRATE" - -
row "trailer, no accounting" hitpath-trailer-only "$BUDGET_TRAILER_ONLY" - -
row "MemcgAlloc<mimalloc>" hitpath-memcg-alloc "$BUDGET_MEMCG_ALLOC" "$TARGET_MEMCG_ALLOC" "$TARGET_RATIO_MEMCG_ALLOC"
row "MemcgMimalloc" hitpath-memcg-mimalloc "$BUDGET_MEMCG_MIMALLOC" "$TARGET_MEMCG_MIMALLOC" "$TARGET_RATIO_MEMCG_MIMALLOC"
row "MemcgAlloc, in a scope" hitpath-memcg-alloc--scope "$BUDGET_MEMCG_ALLOC" "$TARGET_MEMCG_ALLOC" "$TARGET_RATIO_MEMCG_ALLOC"
row "MemcgMimalloc, in a scope" hitpath-memcg-mimalloc--scope "$BUDGET_MEMCG_MIMALLOC" "$TARGET_MEMCG_MIMALLOC" "$TARGET_RATIO_MEMCG_MIMALLOC"
if [ "$status" != 0 ]; then
    echo "hitpath: a pair went over its instruction budget (see ci/hitpath-budget.sh)" >&2
fi
exit "$status"
