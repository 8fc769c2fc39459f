//! End-to-end boot tests: the real minivmm binary boots the test guests from `guests/` on
//! /dev/kvm; each test checks the guest's serial output (stdout) and minivmm's exit status.
//!
//! Exit statuses (src/main.rs): 0 reset, 1 setup error, 2 usage, 3 triple fault,
//! 4 vCPU error, 5 Ctrl-A x, 6 GDB kill, 7 guest panic (pvpanic), 8 --timeout, 128+signal.

// Tests state what they expect with unwrap, expect and panic; the crate's lints are for
// code a guest or a debugger can reach.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod host;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Output, TIMEOUT, Vm, guest, run, run_env};

const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k";

/// Boots the guest `name` with extra `args` and nothing on stdin.
fn boot(name: &str, args: &[&str]) -> Output {
    let mut all: Vec<OsString> = vec!["--kernel".into(), guest(name).into()];
    all.extend(args.iter().map(OsString::from));
    run(&all, b"", TIMEOUT)
}

/// Boots `name` and requires a clean reset (exit status 0).
#[track_caller]
fn boot_ok(name: &str, args: &[&str]) -> Output {
    let out = boot(name, args);
    out.assert_code(0);
    out
}

/// A file in the temp directory, removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(tag: &str) -> TempPath {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("minivmm-boot-{}-{n}-{tag}", std::process::id());
        TempPath(std::env::temp_dir().join(name))
    }

    fn with_contents(tag: &str, contents: &[u8]) -> TempPath {
        let t = TempPath::new(tag);
        std::fs::write(&t.0, contents).unwrap_or_else(|e| panic!("writing {}: {e}", t.0.display()));
        t
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn read_guest(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).expect("reading test guest")
}

// ---------------------------------------------------------------------------------------
// 64-bit ELF entry

#[test]
fn hello64_prints_demo_lines_and_default_cmdline() {
    let out = boot_ok("hello64.elf", &[]);
    out.assert_stdout_line("minivmm demo guest: hello from 64-bit long mode");
    out.assert_stdout_line(&format!("cmdline: {DEFAULT_CMDLINE}"));
    out.assert_stdout_line("resetting via i8042");
    let text = out.stdout_text();
    let vendor = text
        .lines()
        .find_map(|l| l.strip_prefix("cpu vendor: "))
        .unwrap_or_else(|| panic!("no `cpu vendor:` line\n{out}"));
    assert_eq!(
        vendor.trim_end().len(),
        12,
        "CPUID vendor is 12 characters\n{out}"
    );
}

#[test]
fn hello64_gets_the_cmdline_option_verbatim() {
    let out = boot_ok("hello64.elf", &["--cmdline", "foo=bar baz"]);
    out.assert_stdout_line("cmdline: foo=bar baz");
    assert!(
        !out.stdout_text().contains(DEFAULT_CMDLINE),
        "the default command line must not be passed as well\n{out}"
    );
}

#[test]
fn hello64_boots_with_4g_split_around_the_mmio_hole() {
    let out = boot_ok("hello64.elf", &["--mem", "4096"]);
    out.assert_stdout_line("minivmm demo guest: hello from 64-bit long mode");
    out.assert_stdout_line(&format!("cmdline: {DEFAULT_CMDLINE}"));
}

// ---------------------------------------------------------------------------------------
// PVH entry

#[test]
fn pvh_start_info_has_magic_memmap_and_cmdline() {
    let out = boot_ok("hello-pvh.elf", &["--cmdline", "pvh cmdline=1"]);
    out.assert_stdout_line("minivmm: hello from pvh");
    out.assert_stdout_line("pvh start_info magic ok");
    // 256 MiB: RAM below the EBDA, the EBDA/BIOS hole, RAM from 1 MiB.
    out.assert_stdout_line("pvh memmap entries: 3");
    out.assert_stdout_line("cmdline: pvh cmdline=1");
}

/// Accesses nothing claims: reads give all ones (as on an empty ISA bus), writes vanish,
/// and both are logged at debug level.
#[test]
fn unclaimed_port_and_mmio_read_all_ones_and_are_logged() {
    let args = ["--kernel", &guest("hello-pvh.elf").display().to_string()];
    let out = run_env(args, &[("RUST_LOG", "minivmm=debug")], b"", TIMEOUT);
    out.assert_code(0);
    out.assert_stdout_line("unclaimed port reads 255");
    out.assert_stdout_line("unclaimed mmio reads 4294967295");
    let log = out.stderr_text();
    for line in [
        "vCPU 0: in from unclaimed port 0x2f0",
        "vCPU 0: out [ff] to unclaimed port 0x2f0",
        "vCPU 0: read of unclaimed MMIO 0xd0000000",
        "vCPU 0: write to unclaimed MMIO 0xd0000000",
    ] {
        assert!(log.contains(line), "log has {line:?}\n{out}");
    }
}

#[test]
fn pvh_memmap_with_4g_has_ram_above_4g_as_fourth_entry() {
    let out = boot_ok("hello-pvh.elf", &["--mem", "4096"]);
    out.assert_stdout_line("pvh start_info magic ok");
    out.assert_stdout_line("pvh memmap entries: 4");
    out.assert_stdout_line(&format!("cmdline: {DEFAULT_CMDLINE}"));
}

// ---------------------------------------------------------------------------------------
// bzImage

#[test]
fn bzimage_gets_cmdline_and_e820_from_zero_page() {
    let out = boot_ok("hello-bzimage.bin", &["--cmdline", "bz=1 quiet"]);
    out.assert_stdout_line("minivmm: hello from bzimage");
    out.assert_stdout_line("cmdline: bz=1 quiet");
    out.assert_stdout_line("e820 entries: 3");
}

#[test]
fn bzimage_e820_with_4g_is_split_around_the_mmio_hole() {
    let out = boot_ok("hello-bzimage.bin", &["--mem", "4096"]);
    out.assert_stdout_line("e820 entries: 4");
}

#[test]
fn bzimage_boots_with_an_initrd() {
    let initrd: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let initrd = TempPath::with_contents("initrd.img", &initrd);
    let out = boot_ok("hello-bzimage.bin", &["--initrd", initrd.arg()]);
    out.assert_stdout_line("minivmm: hello from bzimage");
    out.assert_stdout_line("e820 entries: 3");
}

// ---------------------------------------------------------------------------------------
// SMP

#[track_caller]
fn check_smp(n: usize) {
    let out = boot("smp.elf", &["--cpus", &n.to_string()]);
    out.assert_code(0);
    out.assert_stdout_line(&format!("smp: expecting {n} cpus"));
    for k in 0..n {
        out.assert_stdout_line(&format!("cpu {k} online"));
    }
    let online = out
        .stdout_text()
        .lines()
        .filter(|l| l.starts_with("cpu ") && l.ends_with(" online"))
        .count();
    assert_eq!(online, n, "exactly {n} `cpu K online` lines\n{out}");
    out.assert_stdout_line(&format!("smp: all {n} cpus online"));
}

#[test]
fn smp_one_cpu_comes_online() {
    check_smp(1);
}

#[test]
fn smp_two_cpus_come_online() {
    check_smp(2);
}

#[test]
fn smp_four_cpus_come_online() {
    check_smp(4);
}

// ---------------------------------------------------------------------------------------
// Serial input, faults, int3, output volume

#[test]
fn echo_reads_a_line_from_stdin() {
    let args: Vec<OsString> = vec!["--kernel".into(), guest("echo.elf").into()];
    let out = run(&args, b"hello minivmm\n", TIMEOUT);
    out.assert_code(0);
    out.assert_stdout_line("echo: ready");
    out.assert_stdout_line("echo: hello minivmm");
}

// ---------------------------------------------------------------------------------------
// A terminal on stdin: raw while the guest runs, restored however minivmm ends

/// A pseudo-terminal pair (controller, device).
fn openpty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut controller, mut device) = (-1, -1);
    // SAFETY: openpty writes two fds into the locals; the other arguments may be null.
    let r = unsafe {
        libc::openpty(
            &mut controller,
            &mut device,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds are new and owned by nobody else.
    unsafe {
        (
            FromRawFd::from_raw_fd(controller),
            FromRawFd::from_raw_fd(device),
        )
    }
}

/// The terminal settings that raw mode changes.
fn term_modes(fd: &std::os::fd::OwnedFd) -> [libc::tcflag_t; 4] {
    use std::os::fd::AsRawFd;
    // SAFETY: termios is plain data, filled by tcgetattr on success.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a valid termios to fill.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    [t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag]
}

/// Runs echo.elf on a terminal, waits until it is ready, checks the terminal is raw, types
/// `input`, and checks minivmm exits with `code` and leaves the terminal as it found it.
fn echo_on_a_terminal(input: &[u8], code: i32) {
    use std::io::Write;
    let (controller, device) = openpty();
    let before = term_modes(&device);
    let mut child = std::process::Command::new(common::minivmm())
        .args(["--kernel".as_ref(), guest("echo.elf").as_os_str()])
        .env("RUST_LOG", "off")
        .stdin(device.try_clone().unwrap())
        .stdout(device.try_clone().unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting minivmm");
    let mut reader = std::fs::File::from(controller.try_clone().unwrap());
    let screen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let shown = || String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
    let deadline = Instant::now() + TIMEOUT;
    while !shown().contains("echo: ready") {
        assert!(Instant::now() < deadline, "no 'echo: ready': {:?}", shown());
        std::thread::sleep(Duration::from_millis(10));
    }
    let during = term_modes(&device);
    assert_eq!(
        during[3] & (libc::ICANON | libc::ECHO | libc::ISIG),
        0,
        "raw while the guest runs"
    );
    std::fs::File::from(controller).write_all(input).unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("minivmm did not exit; screen: {:?}", shown());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(code), "screen: {:?}", shown());
    assert_eq!(term_modes(&device), before, "terminal restored");
}

#[test]
fn terminal_is_raw_while_running_and_restored_after_a_reset() {
    echo_on_a_terminal(b"hi\n", 0);
}

#[test]
fn terminal_is_restored_after_ctrl_a_x() {
    echo_on_a_terminal(b"\x01x", 5);
}

#[test]
fn triple_fault_exits_3_and_says_so() {
    let out = boot("triple-fault.elf", &[]);
    out.assert_code(3);
    out.assert_stdout_line("triple-fault: going down");
    assert!(
        out.stderr_text().contains("triple-fault"),
        "stderr must mention the triple fault\n{out}"
    );
}

#[test]
fn bad_insn_exits_4_with_rip_and_registers() {
    let out = boot("bad-insn.elf", &[]);
    out.assert_code(4);
    out.assert_stdout_line("bad-insn: jumping to mmio");
    let err = out.stderr_text();
    // src/arch/x86_64/assist.rs: "CS:RIP (linear) {:#018x}", then the GPRs.
    assert!(
        err.contains("RIP (linear) 0x00000000d0000000"),
        "stderr must give RIP 0xd0000000\n{out}"
    );
    for reg in ["rax 0x00000000d0000000", "rsp 0x", "rflags 0x", "cr3 0x"] {
        assert!(err.contains(reg), "stderr must show {reg:?}\n{out}");
    }
    assert!(!err.contains("panicked"), "no panic\n{out}");
}

#[test]
fn int3_reaches_the_guest_idt_handler() {
    let out = run_env(
        ["--kernel", guest("int3.elf").to_str().unwrap()],
        &[("RUST_LOG", "minivmm=debug")],
        b"",
        TIMEOUT,
    );
    out.assert_code(0);
    // Only where KVM emulates guest code does the int3 need minivmm's help.
    let assisted = out.stderr_text().contains("the guest's own int3");
    assert_eq!(
        assisted,
        !host::TestHost::current().is_hardware(),
        "minivmm delivered the guest's int3 itself: {assisted}, on a {:?} host\n{out}",
        host::TestHost::current()
    );
    let text = out.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        ["int3: before", "int3: guest #BP handler ran", "int3: after"],
        "handler runs once, between before and after\n{out}"
    );
}

// ---------------------------------------------------------------------------------------
// Ending the VM through ACPI: the guest walks RSDP -> RSDT -> FADT (-> DSDT) itself

/// Boots acpi-pvh.elf with `args`; it must end minivmm with status 0 after printing
/// exactly `lines`.
#[track_caller]
fn acpi_guest_ends_vm(args: &[&str], lines: &[&str]) {
    let out = boot_ok("acpi-pvh.elf", args);
    let text = out.stdout_text();
    assert_eq!(text.lines().collect::<Vec<_>>(), lines, "{out}");
}

/// Linux `poweroff`: SLP_TYP from the DSDT's \_S5, with SLP_EN, to PM1a_CNT_BLK (port
/// 0x604 and sleep type 5, as the README documents).
#[test]
fn acpi_power_off_ends_minivmm_with_status_0() {
    acpi_guest_ends_vm(
        &[],
        &[
            "acpi: hello from pvh",
            "acpi: S5 sleep type 5, PM1a_CNT port 1540",
        ],
    );
}

/// Linux `reboot` without `reboot=k`: the FADT's RESET_VALUE to its RESET_REG.
#[test]
fn acpi_reset_register_ends_minivmm_with_status_0() {
    acpi_guest_ends_vm(
        &["--cmdline", "reset"],
        &[
            "acpi: hello from pvh",
            "acpi: reset register port 1542, value 1",
        ],
    );
}

// ---------------------------------------------------------------------------------------
// A guest panic (pvpanic) and a hung guest (--timeout) end minivmm with their own status

/// The last line minivmm wrote to stderr.
fn last_stderr_line(out: &Output) -> String {
    out.stderr_text()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// Linux's pvpanic driver on panic: read the supported events, write PANICKED.
#[test]
fn pvpanic_panic_ends_minivmm_with_status_7() {
    let out = boot("panic.elf", &[]);
    out.assert_code(7);
    let text = out.stdout_text();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["panic: pvpanic supports 7", "panic: reporting a panic"],
        "the guest's output before the panic reaches stdout\n{out}"
    );
    assert_eq!(
        last_stderr_line(&out),
        "minivmm: the guest kernel panicked on vCPU 0 (pvpanic): status 7",
        "{out}"
    );
}

/// A panic with a crash kernel loaded: the guest goes on to kdump, so the VM must not end.
#[test]
fn pvpanic_crash_loaded_lets_the_guest_run_on() {
    let out = boot_ok("panic.elf", &["--cmdline", "crash-loaded"]);
    let text = out.stdout_text();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "panic: pvpanic supports 7",
            "panic: reporting a panic with a crash kernel loaded",
            "panic: still running",
        ],
        "{out}"
    );
    assert!(
        out.stderr_text().contains("crash kernel loaded"),
        "logged\n{out}"
    );
}

#[test]
fn timeout_ends_a_hung_guest_with_status_8() {
    let start = Instant::now();
    let out = boot("spin.elf", &["--timeout", "2"]);
    let took = start.elapsed();
    out.assert_code(8);
    out.assert_stdout_line("spin: spinning forever");
    assert_eq!(
        last_stderr_line(&out),
        "minivmm: the guest ran for 2 s (--timeout): ended, status 8",
        "{out}"
    );
    // Start-up takes milliseconds; the slack is for a busy 2-core host.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "ended after {took:?}\n{out}"
    );
}

#[test]
fn timeout_leaves_a_guest_that_ends_in_time_alone() {
    let out = boot_ok("hello64.elf", &["--timeout", "60"]);
    out.assert_stdout_line("resetting via i8042");
}

#[test]
fn rejects_a_timeout_that_is_zero_or_not_a_number() {
    assert_usage_error(
        &["--kernel", &hello64(), "--timeout", "0"],
        "at least 1 second",
    );
    for bad in ["abc", "1.5", "10s", ""] {
        assert_usage_error(
            &["--kernel", &hello64(), "--timeout", bad],
            "whole number of seconds",
        );
    }
}

#[test]
fn flood_delivers_all_65536_bytes_in_order() {
    const PATTERN: &str = "0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmno\n";
    // 65,537 port writes, each a VM exit: on the hardware-virtualised test host, whose
    // nested exits run under TCG, that is tens of seconds, so the bound is wider.
    let g = guest("flood-pvh.elf");
    let out = run(
        ["--kernel", g.to_str().unwrap()],
        b"",
        Duration::from_secs(180),
    );
    out.assert_code(0);
    let done = b"flood: done\n";
    assert!(
        out.stdout.ends_with(done),
        "stdout ends with `flood: done`\n{out}"
    );
    let flood = &out.stdout[..out.stdout.len() - done.len()];
    assert_eq!(
        flood.len(),
        65536,
        "65536 bytes before `flood: done`\n{out}"
    );
    let bad = flood
        .chunks(PATTERN.len())
        .position(|line| line != PATTERN.as_bytes());
    assert_eq!(
        bad, None,
        "every line is the pattern (first bad line)\n{out}"
    );
}

// ---------------------------------------------------------------------------------------
// Bad input: one `minivmm: error:` line, a failure status, no panic, no signal, no hang.

/// Runs minivmm with RUST_LOG=off (so stderr holds only what minivmm itself prints).
fn run_quiet(args: &[&str]) -> Output {
    run_env(args, &[("RUST_LOG", "off")], b"", TIMEOUT)
}

#[track_caller]
fn assert_not_crashed(out: &Output) {
    assert!(
        out.code().is_some(),
        "minivmm must exit, not die of a signal\n{out}"
    );
    assert!(!out.stderr_text().contains("panicked"), "no panic\n{out}");
}

/// A setup error: status 1, exactly one stderr line `minivmm: error: ...` containing
/// `mention`, nothing from the guest.
#[track_caller]
fn assert_setup_error(args: &[&str], mention: &str) {
    let out = run_quiet(args);
    assert_not_crashed(&out);
    out.assert_code(1);
    let err = out.stderr_text();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr\n{out}");
    assert!(
        lines[0].starts_with("minivmm: error: "),
        "stderr starts with `minivmm: error: `\n{out}"
    );
    assert!(
        lines[0].contains(mention),
        "the error mentions {mention:?}\n{out}"
    );
    assert!(out.stdout.is_empty(), "the guest never ran\n{out}");
}

/// A command line clap rejects: status 2, clap's `error:` first, mentioning `mention`.
#[track_caller]
fn assert_usage_error(args: &[&str], mention: &str) {
    let out = run_quiet(args);
    assert_not_crashed(&out);
    out.assert_code(2);
    let err = out.stderr_text();
    assert!(err.starts_with("error: "), "clap's usage error\n{out}");
    assert!(
        err.contains(mention),
        "the error mentions {mention:?}\n{out}"
    );
}

fn hello64() -> String {
    guest("hello64.elf").to_str().unwrap().to_owned()
}

#[test]
fn rejects_missing_kernel_file() {
    let missing = TempPath::new("no-such-kernel");
    assert_setup_error(&["--kernel", missing.arg()], missing.arg());
}

#[test]
fn rejects_empty_kernel_file() {
    let empty = TempPath::with_contents("empty", b"");
    assert_setup_error(&["--kernel", empty.arg()], "empty");
}

#[test]
fn rejects_random_bytes_as_kernel() {
    // xorshift64, fixed seed: the same 64 KiB every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let random = TempPath::with_contents("random", &bytes);
    assert_setup_error(&["--kernel", random.arg()], "format");
}

/// An endless device is read only as far as guest memory goes, not until the host runs
/// out of memory.
#[test]
fn rejects_endless_device_as_kernel_or_initrd() {
    assert_setup_error(
        &["--kernel", "/dev/zero", "--mem", "64"],
        "larger than the guest's 64 MiB",
    );
    assert_setup_error(
        &[
            "--kernel",
            &hello64(),
            "--initrd",
            "/dev/zero",
            "--mem",
            "64",
        ],
        "initrd /dev/zero is larger",
    );
}

/// hello64.elf with its first PT_LOAD's memsz raised to `memsz`.
fn hello64_with_memsz(memsz: u64) -> Vec<u8> {
    let mut elf = read_guest("hello64.elf");
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let phentsize = u16_at(&elf, 0x36) as usize;
    let phnum = u16_at(&elf, 0x38) as usize;
    let load = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|&ph| u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) == 1)
        .expect("hello64.elf has a PT_LOAD");
    elf[load + 0x28..load + 0x30].copy_from_slice(&memsz.to_le_bytes());
    elf
}

#[test]
fn rejects_kernel_larger_than_mem() {
    let big = TempPath::with_contents("big.elf", &hello64_with_memsz(64 << 20));
    assert_setup_error(&["--kernel", big.arg(), "--mem", "16"], "--mem");
}

#[test]
fn kernel_with_64m_memsz_boots_when_mem_is_enough() {
    // The control for rejects_kernel_larger_than_mem: the patched ELF itself is fine.
    let big = TempPath::with_contents("big-ok.elf", &hello64_with_memsz(64 << 20));
    let out = run(["--kernel", big.arg(), "--mem", "256"], b"", TIMEOUT);
    out.assert_code(0);
    out.assert_stdout_line("minivmm demo guest: hello from 64-bit long mode");
}

#[test]
fn rejects_mem_0() {
    assert_setup_error(&["--kernel", &hello64(), "--mem", "0"], "--mem");
}

#[test]
fn rejects_cpus_0() {
    assert_setup_error(&["--kernel", &hello64(), "--cpus", "0"], "--cpus");
}

#[test]
fn rejects_more_cpus_than_kvm_allows() {
    assert_setup_error(&["--kernel", &hello64(), "--cpus", "100000"], "--cpus");
}

#[test]
fn rejects_missing_initrd() {
    let missing = TempPath::new("no-such-initrd");
    assert_setup_error(
        &["--kernel", &hello64(), "--initrd", missing.arg()],
        "initrd",
    );
}

/// An initrd minivmm may not read: mode 000, and as root, run without the capabilities
/// that bypass file permissions.
#[test]
fn rejects_unreadable_initrd() {
    use std::os::unix::fs::PermissionsExt;
    let initrd = TempPath::with_contents("unreadable", b"initrd");
    std::fs::set_permissions(initrd.path(), std::fs::Permissions::from_mode(0o000)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let wrapper: &[&str] = if root {
        &["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]
    } else {
        &[]
    };
    let kernel = hello64();
    let mut vm = Vm::spawn_under(
        wrapper,
        ["--kernel", kernel.as_str(), "--initrd", initrd.arg()],
        &[("RUST_LOG", "off")],
    );
    vm.close_stdin();
    let out = vm.wait(TIMEOUT);
    assert_not_crashed(&out);
    out.assert_code(1);
    let err = out.stderr_text();
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [format!(
            "minivmm: error: cannot read initrd {}: Permission denied (os error 13)",
            initrd.arg()
        )],
        "{out}"
    );
}

#[test]
fn rejects_directory_as_initrd() {
    let dir = TempPath::new("initrd-dir");
    std::fs::create_dir(dir.path()).expect("creating a temp directory");
    assert_setup_error(&["--kernel", &hello64(), "--initrd", dir.arg()], "initrd");
}

#[test]
fn rejects_truncated_bzimage() {
    let image = read_guest("hello-bzimage.bin");
    let cut = TempPath::with_contents("cut-bzimage", &image[..600]);
    assert_setup_error(&["--kernel", cut.arg()], cut.arg());
}

#[test]
fn rejects_elf_truncated_in_program_headers() {
    let elf = read_guest("hello64.elf");
    // The 64-byte ELF header survives; the program headers (at e_phoff, 64) do not.
    let cut = TempPath::with_contents("cut-phdrs.elf", &elf[..100]);
    assert_setup_error(&["--kernel", cut.arg()], cut.arg());
}

#[test]
fn rejects_elf_truncated_in_segment_data() {
    let elf = read_guest("hello64.elf");
    // Cut in the middle of the last PT_LOAD's file data.
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(elf[0x38..0x3a].try_into().unwrap()) as usize;
    let end = (0..phnum)
        .map(|i| &elf[phoff + i * 56..phoff + (i + 1) * 56])
        .filter(|ph| u32::from_le_bytes(ph[0..4].try_into().unwrap()) == 1)
        .map(|ph| {
            let off = u64::from_le_bytes(ph[8..16].try_into().unwrap());
            let filesz = u64::from_le_bytes(ph[0x20..0x28].try_into().unwrap());
            (off + filesz / 2) as usize
        })
        .max()
        .expect("hello64.elf has a PT_LOAD");
    let cut = TempPath::with_contents("cut-data.elf", &elf[..end]);
    assert_setup_error(&["--kernel", cut.arg()], cut.arg());
}

#[test]
fn rejects_70000_character_cmdline() {
    let long = "x".repeat(70000);
    assert_setup_error(
        &["--kernel", &hello64(), "--cmdline", &long],
        "command line",
    );
}

#[test]
fn rejects_gdb_argument_that_is_not_a_port() {
    assert_usage_error(&["--kernel", &hello64(), "--gdb", "notaport"], "notaport");
}

#[test]
fn rejects_missing_kernel_option() {
    assert_usage_error(&[], "--kernel");
}

// ---------------------------------------------------------------------------------------
// --help, --version

#[test]
fn help_documents_options_and_exit_statuses() {
    let out = run(["--help"], b"", TIMEOUT);
    out.assert_code(0);
    let text = out.stdout_text();
    for needle in [
        "--kernel",
        "--gdb",
        "--initrd",
        "--cmdline",
        "--timeout",
        "Exit status",
    ] {
        assert!(text.contains(needle), "--help mentions {needle:?}\n{out}");
    }
    // Statuses 0-8 each start a line of the "Exit status" section; 130 and 143 share one.
    let section = text.split("Exit status").nth(1).unwrap_or_default();
    for status in ["0", "1", "2", "3", "4", "5", "6", "7", "8"] {
        assert!(
            section
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{status} "))),
            "--help documents exit status {status}\n{out}"
        );
    }
    for status in ["130", "143"] {
        assert!(
            section
                .split(|c: char| !c.is_ascii_digit())
                .any(|t| t == status),
            "--help documents exit status {status}\n{out}"
        );
    }
}

#[test]
fn version_prints_the_package_version() {
    let out = run(["--version"], b"", TIMEOUT);
    out.assert_code(0);
    out.assert_stdout_line(&format!("minivmm {}", env!("CARGO_PKG_VERSION")));
}

// ---------------------------------------------------------------------------------------
// Signals

/// echo.elf waits for input forever; `signal` must end minivmm with 128 + signal, quickly.
#[track_caller]
fn check_signal_ends_vm(signal: i32, status: i32) {
    let args: Vec<OsString> = vec!["--kernel".into(), guest("echo.elf").into()];
    let mut vm = Vm::spawn(&args, &[]);
    vm.wait_for_stdout("echo: ready\n", TIMEOUT);
    let sent = Instant::now();
    vm.signal(signal);
    let out = vm.wait(TIMEOUT);
    let took = sent.elapsed();
    out.assert_code(status);
    assert!(
        took < Duration::from_secs(5),
        "minivmm took {took:?} to end after signal {signal}\n{out}"
    );
    out.assert_stdout_line("echo: ready");
    assert!(!out.stderr_text().contains("panicked"), "no panic\n{out}");
}

#[test]
fn sigterm_ends_a_running_vm_with_143() {
    check_signal_ends_vm(libc::SIGTERM, 143);
}

#[test]
fn sigint_ends_a_running_vm_with_130() {
    check_signal_ends_vm(libc::SIGINT, 130);
}

#[test]
fn rejects_more_memory_than_the_host_has() {
    // Far beyond any CI machine; the mapping alone would not fail, so minivmm must check.
    assert_setup_error(
        &["--kernel", &hello64(), "--mem", "16000000"],
        "more than this host's memory",
    );
}
