#!/bin/busybox sh
# /init of the hardware-virtualised KVM test host (L1): loads kvm-amd, mounts the outer
# machine's root read-only over 9p with /tmp, /dev, /proc, /sys fresh, and runs the command
# that scripts/hwkvm/run left in its run directory inside it (chroot), with its output on
# ttyS1. The exit status goes back through the run directory; then L1 powers off.
export PATH=/bin
bb=/bin/busybox
$bb mkdir -p /proc /sys /dev /host
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
# No transparent huge pages in L1 (Debian's default is "always"): with them, guests' RAM
# read back as zeros now and then under the TCG-emulated nested paging (a flooding guest
# ran into the end of its RAM through zeroed code in about one boot-suite run in three);
# suspected: collapses or splits of the huge pages backing guest RAM.
echo never > /sys/kernel/mm/transparent_hugepage/enabled

# In dependency order (kvm-amd needs ccp, AMD's crypto coprocessor driver).
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
    netfs fscache 9pnet 9pnet_virtio 9p irqbypass kvm ccp kvm-amd; do
    $bb insmod /modules/$m.ko || echo "l1: insmod $m failed" >&2
done

fail() { echo "l1: $*" > /dev/ttyS1; $bb poweroff -f; }
$bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=loose,ro host /host \
    || fail "cannot mount the outer machine's root (9p)"
run=$($bb sed -n 's/.*hwkvm.run=\([^ ]*\).*/\1/p' /proc/cmdline)
$bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 run "/host$run" \
    || fail "cannot mount the run directory $run (9p)"
$bb mount -t tmpfs -o size=2g tmp /host/tmp
$bb mount -t tmpfs run /host/run
$bb mount -t proc proc /host/proc
$bb mount -t sysfs sys /host/sys
$bb mount -t devtmpfs dev /host/dev
$bb mkdir -p /host/dev/pts /host/dev/shm
$bb mount -t devpts -o ptmxmode=666 devpts /host/dev/pts
$bb mount -t tmpfs shm /host/dev/shm
$bb ip link set lo up
$bb stty -F /dev/ttyS1 raw -echo 2>/dev/null

$bb chroot /host /bin/bash "$run/cmd" < /dev/null > /dev/ttyS1 2>&1
echo $? > "/host$run/status"
$bb sync
$bb poweroff -f
