#!/bin/sh
# PID 1 of the test VM, written into the initramfs by `cargo xtask test --vm`. Lines starting
# with "COLLECTOR-VM" are read by the host; everything else is shown as it comes.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /tmp
ip link set lo up
# Every controller for the test cgroups below the root, as on a pure-v2 node.
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control || echo "COLLECTOR-VM: cannot enable $c"
done
for m in @MODULES@; do insmod "$m" || echo "COLLECTOR-VM: insmod $m failed"; done
# A real disk for the tests' files: page-cache misses (major faults) need one; tmpfs has none.
mkdir -p @SCRATCH@
mount -t ext4 /dev/vda @SCRATCH@ || echo "COLLECTOR-VM: no scratch disk at @SCRATCH@"
echo "COLLECTOR-VM: kernel $(uname -r); cgroup2 subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
passed=0
failed=0
for t in @TESTS@; do
    echo "COLLECTOR-VM: running ${t##*/}"
    start=$(cut -d. -f1 /proc/uptime)
    if COLLECTOR_REQUIRE_BPF=1 COLLECTOR_REQUIRE_V2=1 RUST_BACKTRACE=1 "$t" --test-threads=1; then
        passed=$((passed + 1))
        echo "COLLECTOR-VM: ok ${t##*/} in $(( $(cut -d. -f1 /proc/uptime) - start )) s"
    else
        failed=$((failed + 1))
        echo "COLLECTOR-VM: FAILED ${t##*/}"
    fi
done
echo "COLLECTOR-VM-RESULT: passed=$passed failed=$failed uptime=$(cut -d' ' -f1 /proc/uptime)"
umount @SCRATCH@
sync
poweroff -f
