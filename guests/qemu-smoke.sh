#!/usr/bin/env bash
# qemu-smoke.sh - cross-check the test guests under QEMU (TCG, no KVM needed).
#
# Usage: guests/qemu-smoke.sh [GUESTS_DIR]   (default: scripts/guests-dir)
#
# PVH guests and the bzImage boot directly; the 64-bit ELF guests are run
# through their PVH-shimmed copies in GUESTS_DIR/qemu-pvh/.  Each run must
# print the expected lines (checked as substrings, in order).
set -u
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$("$here/../scripts/guests-dir")}
qemu=${QEMU:-qemu-system-x86_64}
fail=0

# check NAME IMAGE "QEMU ARGS" INPUT EXPECTED-LINE...
check() {
    local name=$1 image=$2 args=$3 input=$4
    shift 4
    local out
    # shellcheck disable=SC2086
    out=$( (sleep 0.5; printf '%s' "$input") | timeout 30 "$qemu" -no-reboot \
        -display none -monitor none -serial stdio $args -kernel "$image" \
        -append "console=ttyS0 smoke" 2>&1)
    local rc=$? rest=$out line
    if [[ $rc -ne 0 ]]; then
        echo "FAIL $name: qemu exit status $rc (124 = timed out, no reset)"
        fail=1
        return
    fi
    for line in "$@"; do
        if [[ $rest != *"$line"* ]]; then
            echo "FAIL $name: missing '$line'"
            printf '%s\n' "$out" | tail -n 20 | sed 's/^/    | /'
            fail=1
            return
        fi
        rest=${rest#*"$line"}
    done
    echo "ok   $name"
}

check hello-pvh "$dir/hello-pvh.elf" "" "" \
    "minivmm: hello from pvh" "pvh start_info magic ok" \
    "pvh memmap entries: " "cmdline: console=ttyS0 smoke"
check reset-pvh "$dir/reset-pvh.elf" "" "" ""
# QEMU's own ACPI tables (PIIX4 PM, S5 sleep type 0): the guest reads them like firmware's.
check acpi-pvh "$dir/acpi-pvh.elf" "" "" "acpi: hello from pvh" "acpi: S5 sleep type 0, PM1a_CNT port "
check flood-pvh "$dir/flood-pvh.elf" "" "" \
    "0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_\`abcdefghijklmno" "flood: done"
check hello-bzimage "$dir/hello-bzimage.bin" "" "" \
    "minivmm: hello from bzimage" "cmdline: console=ttyS0 smoke" "e820 entries: "
check hello64 "$dir/qemu-pvh/hello64.elf" "" "" \
    "minivmm demo guest: hello from 64-bit long mode" "cpu vendor: " \
    "cmdline: console=ttyS0 smoke" "resetting via i8042"
check echo "$dir/qemu-pvh/echo.elf" "" $'hello world\n' \
    "echo: ready" "echo: hello world"
check triple-fault "$dir/qemu-pvh/triple-fault.elf" "" "" "triple-fault: going down"
check int3 "$dir/qemu-pvh/int3.elf" "" "" \
    "int3: before" "int3: guest #BP handler ran" "int3: after"
check gdbtest "$dir/qemu-pvh/gdbtest.elf" "" "" "gdbtest: start" "gdbtest: counter=5"
for n in 1 2 4; do
    check "smp ($n cpus)" "$dir/qemu-pvh/smp.elf" "-smp $n,sockets=1,cores=$n" "" \
        "smp: expecting $n cpus" "smp: all $n cpus online"
    check "gdbtest-smp ($n cpus)" "$dir/qemu-pvh/gdbtest-smp.elf" \
        "-smp $n,sockets=1,cores=$n" "" "smp: all $n cpus online" "gdbtest-smp: done"
done
# bad-insn.elf is not checked: TCG does not fail on fetches from unbacked
# memory the way KVM does (KVM_EXIT_INTERNAL_ERROR).
exit $fail
