#!/usr/bin/env bash
# Boots a multi-node NUMA VM (qemu, the distribution's kernel, a busybox
# initramfs) and runs host-built binaries inside it; exits with the first
# non-zero status of the commands (0 if all pass). See scripts/vm/README.md.
#
#   scripts/vm/run.sh [--topology 2x2|sparse|memonly|offline] [--cgroup NAME]
#                     [--accel auto|tcg|kvm] [--timeout SECONDS] [--add FILE]...
#                     [--env NAME=VALUE]... [--verbose]
#                     [--exec 'BINARY ARGS...']... [-- BINARY ARGS...]
#
# BINARY is a path on the host; it is copied into the VM as /bin/<name> with
# the libraries `ldd` lists, and run as `<name> ARGS...` (ARGS are split on
# spaces, no quoting). With --cgroup, every command runs in the cgroup v2
# group /sys/fs/cgroup/NAME (memory controller enabled). Output of the
# commands goes to standard output; the kernel's and init's to standard
# error only with --verbose.
set -euo pipefail

topology=2x2
cgroup=
accel=${MEMCG_VM_ACCEL:-tcg}
timeout_s=600
verbose=0
declare -a execs=() adds=() envs=()

usage() { sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --topology) topology=$2; shift 2 ;;
        --cgroup) cgroup=$2; shift 2 ;;
        --accel) accel=$2; shift 2 ;;
        --timeout) timeout_s=$2; shift 2 ;;
        --add) adds+=("$2"); shift 2 ;;
        --env) case "$2" in [A-Za-z_]*=*) envs+=("$2") ;; *) echo "vm: --env NAME=VALUE" >&2; exit 2 ;; esac; shift 2 ;;
        --exec) execs+=("$2"); shift 2 ;;
        --verbose) verbose=1; shift ;;
        --) shift; [ $# -gt 0 ] && execs+=("$*"); break ;;
        -h|--help) usage ;;
        *) echo "vm: unknown argument $1" >&2; usage ;;
    esac
done
[ ${#execs[@]} -gt 0 ] || { echo "vm: nothing to run" >&2; usage; }
case "$cgroup" in ''|[A-Za-z0-9_-]*) ;; *) echo "vm: bad cgroup name" >&2; exit 2 ;; esac

# --- packages (only those missing; quietly) ---------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
# busybox-static: a dynamically linked busybox (package busybox) will not do.
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then need+=(busybox-static); fi
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
    echo "vm: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
kernel=$(ls /boot/vmlinuz-* | sort -V | tail -n1)

# --- topology presets --------------------------------------------------------
# Memory backends are plain RAM, one per node.
mem() { echo "-object memory-backend-ram,id=$1,size=$2"; }
offline_node=
case "$topology" in
    2x2)
        smp="-smp 4"; mem_total=1024
        numa="$(mem m0 512M) $(mem m1 512M)
              -numa node,nodeid=0,cpus=0-1,memdev=m0 -numa node,nodeid=1,cpus=2-3,memdev=m1" ;;
    sparse)
        # Linux numbers ACPI proximity domains in the order it finds them, CPUs
        # first, so sparse ids cannot be asked for directly: node 1 gets CPU 2
        # and 128 MiB, and the init script takes both offline before running
        # anything. Nodes 0 and 2 then hold the online CPUs (0-1 and 3-4), and
        # node 1 is possible but has no online CPU nor memory.
        smp="-smp 5"; mem_total=1024
        numa="$(mem m0 448M) $(mem m1 128M) $(mem m2 448M)
              -numa node,nodeid=0,cpus=0-1,memdev=m0 -numa node,nodeid=1,cpus=2,memdev=m1
              -numa node,nodeid=2,cpus=3-4,memdev=m2"
        offline_node=1 ;;
    memonly)
        smp="-smp 4"; mem_total=1024
        numa="$(mem m0 384M) $(mem m1 384M) $(mem m2 256M)
              -numa node,nodeid=0,cpus=0-1,memdev=m0 -numa node,nodeid=1,cpus=2-3,memdev=m1
              -numa node,nodeid=2,memdev=m2" ;;
    offline)
        smp="-smp 4,maxcpus=8"; mem_total=1024
        numa="$(mem m0 512M) $(mem m1 512M)
              -numa node,nodeid=0,cpus=0-1,cpus=4-5,memdev=m0
              -numa node,nodeid=1,cpus=2-3,cpus=6-7,memdev=m1" ;;
    *) echo "vm: unknown topology $topology (2x2, sparse, memonly, offline)" >&2; exit 2 ;;
esac

# --- acceleration: TCG unless KVM is asked for (auto: KVM, then TCG) -------
# KVM may exist and still refuse a VM (a nested host that rejects an MSR of
# `-cpu host`): `auto` tries it and boots again under TCG if no exit marker
# came back. TCG is the tested path.
case "$accel" in
    tcg) accels=("-accel tcg") ;;
    kvm) accels=("-accel kvm -cpu host") ;;
    auto)
        if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
            accels=("-accel kvm -cpu host" "-accel tcg")
        else
            accels=("-accel tcg")
        fi ;;
    *) echo "vm: --accel auto|tcg|kvm" >&2; exit 2 ;;
esac

# --- the initramfs -----------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/memcg-vm.XXXXXX")
[ -n "${MEMCG_VM_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,etc,lib,lib64,usr/lib}
cp /bin/busybox "$root/bin/busybox"

copy_with_libs() {  # copies $1 to /bin/<name> and its ldd libraries to their paths
    local src=$1 lib
    [ -x "$src" ] || { echo "vm: $src is not an executable" >&2; exit 2; }
    cp "$src" "$root/bin/$(basename "$src")"
    for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*' || true); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}
declare -a commands=()
for e in "${execs[@]}"; do
    read -r bin args <<<"$e"
    copy_with_libs "$bin"
    commands+=("$(basename "$bin") ${args:-}")
done
for f in "${adds[@]}"; do cp "$f" "$root/bin/"; done

{
    echo '#!/bin/busybox sh'
    echo '/bin/busybox --install -s /bin'
    echo 'mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev'
    echo 'mkdir -p /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup'
    echo 'export PATH=/bin HOME=/tmp'
    if [ -n "$offline_node" ]; then
        # Offline the node's CPUs and memory blocks: it stays possible, empty.
        echo "for c in /sys/devices/system/node/node$offline_node/cpu[0-9]*; do echo 0 > \$c/online; done"
    fi
    if [ -n "$cgroup" ]; then
        echo 'echo +memory > /sys/fs/cgroup/cgroup.subtree_control'
        echo "mkdir -p /sys/fs/cgroup/$cgroup && echo \$\$ > /sys/fs/cgroup/$cgroup/cgroup.procs"
        echo "export MEMCG_VM_CGROUP=/sys/fs/cgroup/$cgroup"
    fi
    echo "export MEMCG_VM_TOPOLOGY=$topology"
    for e in "${envs[@]}"; do printf 'export %q\n' "$e"; done
    echo 'status=0'
    for c in "${commands[@]}"; do
        echo "echo '@@vm-run $c'"
        echo "$c; rc=\$?; echo \"@@vm-rc \$rc\"; [ \$status -eq 0 ] && status=\$rc"
    done
    echo 'echo "@@vm-exit $status"'
    echo 'sync; poweroff -f'
} > "$root/init"
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd.gz"

# --- boot --------------------------------------------------------------------
# numa_balancing=disable: automatic NUMA balancing would move pages after the
# fact; the checks measure where pages are put when they are first touched.
append="console=ttyS0 panic=-1 rdinit=/init numa_balancing=disable"
[ "$verbose" = 1 ] || append="$append quiet loglevel=0"
append="$append ${MEMCG_VM_APPEND:-}"
start=$(date +%s)
for accel_args in "${accels[@]}"; do
    # shellcheck disable=SC2086
    timeout --foreground -k 5 "$timeout_s" qemu-system-x86_64 $accel_args -nographic -no-reboot \
        -nodefaults -serial stdio -m "$mem_total" $smp $numa \
        -kernel "$kernel" -initrd "$work/initrd.gz" -append "$append" \
        </dev/null > "$work/console" 2> "$work/qemu-stderr" || true
    grep -q '@@vm-exit ' "$work/console" && break
    [ "$verbose" = 1 ] && { echo "vm: no exit marker with $accel_args" >&2; cat "$work/qemu-stderr" >&2; }
done
elapsed=$(( $(date +%s) - start ))

# Markers start a line of their own (the firmware leaves escape codes before).
tr -d '\r' < "$work/console" | sed 's/^.*@@vm-/@@vm-/' > "$work/console.txt"
if [ "$verbose" = 1 ]; then cat "$work/qemu-stderr" >&2; fi
# The commands' output: everything after the first command marker, markers kept.
sed -n '/^@@vm-run /,$p' "$work/console.txt" | grep -v '^\[ *[0-9.]*\] \(reboot\|ACPI\)' || true
status=$(sed -n 's/^@@vm-exit \([0-9]*\)$/\1/p' "$work/console.txt" | tail -n1)
if [ -z "$status" ]; then
    echo "vm: no exit marker after ${elapsed}s (timeout ${timeout_s}s, $accel_args, $topology); console tail:" >&2
    tail -n 40 "$work/console.txt" >&2
    cat "$work/qemu-stderr" >&2
    exit 125
fi
echo "vm: $topology, $accel_args, ${elapsed}s, status $status" >&2
exit "$status"
