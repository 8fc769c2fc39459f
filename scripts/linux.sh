#!/usr/bin/env bash
# Boots Debian's stock cloud kernel with minivmm's tiny initramfs (see fetch-linux.sh and
# mkinitramfs.py). Extra arguments go to minivmm (e.g. --gdb 1234).
#   MINIVMM        the minivmm binary (default: target/release/minivmm)
#   LINUX_CMDLINE  the kernel command line (add minivmm.shell for a busybox shell)
set -euo pipefail
cd "$(dirname "$0")/.."

minivmm="${MINIVMM:-target/release/minivmm}"
guests=$(scripts/guests-dir --release)
linux=$(scripts/fetch-linux.sh)
initrd="$linux/initramfs.cpio.gz"
python3 scripts/mkinitramfs.py --init "$guests/linux-init" --busybox "$linux/busybox" -o "$initrd"

echo "booting $(cat "$linux/package") with 2 vCPUs (about 15 minutes to /init on an emulating nested-KVM host)" >&2
exec "$minivmm" --kernel "$linux/vmlinuz" --initrd "$initrd" --cpus 2 --mem 512 \
    --cmdline "${LINUX_CMDLINE:-console=ttyS0 reboot=k cryptomgr.notests}" "$@"
