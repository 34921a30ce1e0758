#!/bin/sh
# PID 1 of the test VM, written into the initramfs by `cargo xtask test --vm`. Lines starting
# with "COLLECTOR-VM" are read by the host; everything else is shown as it comes.
/bin/busybox --install -s /bin
export PATH=/bin
# The host dates the end of the kernel's boot by this first marker.
echo "COLLECTOR-VM: init started"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# No tmpfs on /tmp: the initramfs root is already in memory and writable, and a checkout under
# /tmp has its binaries there (a mount would hide them).
chmod 1777 /tmp
ip link set lo up
# Every controller for the test cgroups below the root, as on a pure-v2 node.
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control || echo "COLLECTOR-VM: cannot enable $c"
done
for m in @MODULES@; do insmod "$m" || echo "COLLECTOR-VM: insmod $m failed"; done
# A real disk for the tests' files: page-cache misses (major faults) need one; tmpfs has none.
mkdir -p @SCRATCH@
mount -t ext4 /dev/vda @SCRATCH@ || echo "COLLECTOR-VM: no scratch disk at @SCRATCH@"
# For the host's hang report: addresses of kernel symbols in this boot (KASLR moves them).
cat /proc/kallsyms > @SCRATCH@/kallsyms && sync
# QEMU 7.2's multi-threaded TCG can leave a vCPU running its old translation of kernel text
# that another vCPU just patched: it then loops forever on the int3 of a finished live patch,
# with interrupts off (seen at the bpf_stats jump label in bpf_trace_run4). Each collector the
# tests start and stop flips such sites: the static keys and static calls of the tracepoints it
# attaches to, and the bpf_stats key when a test turns it on. Hold all of them for the whole
# run so that they never flip: bpf_stats on, and two ftrace probes on every tracepoint (a
# static call changes only between one probe and two; tracing stays off).
echo 1 > /proc/sys/kernel/bpf_stats_enabled || echo "COLLECTOR-VM: cannot hold bpf_stats on"
mkdir -p /sys/kernel/tracing/instances/hold
for dir in /sys/kernel/tracing /sys/kernel/tracing/instances/hold; do
    echo 0 > "$dir/tracing_on"
    for e in sched/sched_switch sched/sched_process_fork \
        cgroup/cgroup_mkdir cgroup/cgroup_rmdir oom/mark_victim; do
        echo 1 > "$dir/events/$e/enable" || echo "COLLECTOR-VM: cannot hold tracepoint $e"
    done
done
# The same for the jump labels of cgroups' controllers: the first cpuset cgroup turns
# cpusets_enabled() on in the page allocator and the last one turns it off, so every test
# cgroup created and removed alone patched __alloc_pages (a 6.12 guest oopsed on that int3 in a
# fork storm test). One cgroup of our own, kept for the run, holds them on.
mkdir -p /sys/fs/cgroup/hold-static-keys || echo "COLLECTOR-VM: cannot hold the controllers' keys"
# And the cgroup_skb keys of the net probe's tests (an int3 in sk_filter_trim_cap oopsed a 6.12
# guest): our own ingress/egress pair, attached to that empty cgroup for the whole run.
@HOLD_SKB_KEYS@ /sys/fs/cgroup/hold-static-keys &
echo "COLLECTOR-VM: kernel $(uname -r); cgroup2 subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
passed=0
failed=0
# @ROUNDS@ rounds (COLLECTOR_VM_ROUNDS, for hunting flakes); the result line counts every run.
for round in $(seq @ROUNDS@); do for t in @TESTS@; do
    echo "COLLECTOR-VM: running ${t##*/}"
    start=$(cut -d. -f1 /proc/uptime)
    if COLLECTOR_REQUIRE_BPF=1 COLLECTOR_REQUIRE_V2=1 RUST_BACKTRACE=1 "$t" --test-threads=1 @TEST_ARGS@; then
        passed=$((passed + 1))
        echo "COLLECTOR-VM: ok ${t##*/} in $(( $(cut -d. -f1 /proc/uptime) - start )) s"
    else
        failed=$((failed + 1))
        echo "COLLECTOR-VM: FAILED ${t##*/}"
    fi
done; done
echo "COLLECTOR-VM-RESULT: passed=$passed failed=$failed uptime=$(cut -d' ' -f1 /proc/uptime)"
umount @SCRATCH@
sync
poweroff -f
