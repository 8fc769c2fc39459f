# minivmm: `make run` boots the bundled demo guest, `make test` runs everything CI runs.

CARGO  ?= cargo
BIN    := target/release/minivmm
# The test guests are built from source by build.rs; this asks cargo where they went.
GUESTS  = $(shell scripts/guests-dir --release)
FUZZ_SECS ?= 600

.PHONY: all build run test unit-test e2e-test debug-test guests bench lint linux linux-test fuzz clean hwkvm hwkvm-test

all: build

build:
	$(CARGO) build --release

guests:
	@echo "$(GUESTS)"

## The main job: boot the demo guest and see its serial output.
run: build
	$(BIN) --kernel $(GUESTS)/hello64.elf

## Everything CI runs: lints, unit tests, the end-to-end suites on this machine's KVM, then
## on the hardware-virtualised KVM test host (hwkvm-test).
# No core files from a crashing gdb in the work tree (core_pattern is often plain "core").
test: lint
	ulimit -c 0 && $(CARGO) test --release
	$(MAKE) hwkvm-test

## The hardware-virtualised KVM test host (scripts/hwkvm/): an L1 Linux with kvm-amd under
## QEMU's TCG. Built from Debian's packages and QEMU source on first use (minutes), cached.
hwkvm:
	scripts/hwkvm/setup

# The end-to-end suites there, the Linux boot included (seconds there); then the probe and
# the fallbacks on two hosts with gaps: Debian's own QEMU 10 never lets int3 reach L1's KVM,
# QEMU 7.2 never fires debug-register breakpoints.
# Linux with 4 vCPUs on an L1 with 2 triple-faulted in 3 of 10 boots, with 4 in none of 6
# (../shared/HOST-KVM.md): the Linux tests get an L1 with 4 CPUs.
HWKVM_SUITE ?= boot core gdb gdb_hostile hardening host_caps kernel kernel_session=--test-threads=1 soak=--nocapture teardown
hwkvm-test: hwkvm test-kernel
	MINIVMM_TEST_KERNEL=$$(scripts/build-test-kernel.sh) scripts/hwkvm/test $(HWKVM_SUITE)
	scripts/hwkvm/test --smp 4 'linux=--include-ignored --test-threads=1'
	scripts/hwkvm/test --qemu debian-10 --host hardware-int3-not-intercepted host_caps hardening
	scripts/hwkvm/test --qemu debian-7.2 --host hardware-no-debug-registers host_caps

unit-test:
	$(CARGO) test --release --lib

e2e-test:
	$(CARGO) test --release --test boot

## The end-to-end GDB suite (needs /dev/kvm, gdb and lldb).
debug-test:
	ulimit -c 0 && $(CARGO) test --release --test gdb --test gdb_hostile --test hardening --test binary_read

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings

bench: build
	python3 scripts/bench.py --minivmm $(BIN) --guests $(GUESTS) $(BENCH_ARGS)

## A stock Debian kernel with minivmm's tiny initramfs (downloads it once into ~/.cache/minivmm).
linux: build
	MINIVMM=$(BIN) scripts/linux.sh

## A small Linux 6.1 with debug info and GDB helpers, built from Debian's source into
## ~/.cache/minivmm/kernel (minutes); prints the directory with bzImage and vmlinux.
.PHONY: test-kernel
test-kernel:
	scripts/build-test-kernel.sh

## The full Linux boot to the initramfs marker, as a test (minutes on an emulating host).
linux-test:
	$(CARGO) test --release --test linux -- --include-ignored

## The fuzz targets (tests/fuzz.rs), FUZZ_SECS seconds each; see README "Fuzzing".
fuzz:
	MINIVMM_FUZZ_SECS=$(FUZZ_SECS) $(CARGO) test --release --test fuzz -- --nocapture

clean:
	$(CARGO) clean
