//! A real, unmodified Linux kernel (Debian's stock cloud kernel, fetched by
//! scripts/fetch-linux.sh into a cache outside git) under minivmm.
//!
//! In `make test`: the early boot (banner, command line, e820) and GDB at the kernel's entry
//! point, which take about a minute each on an emulating nested-KVM host. The full boot to the
//! initramfs marker is `#[ignore]`d here and run by `make linux-test`.
//!
//! On a hardware-virtualised host (tests/host) the kernel reaches its initramfs in seconds, so
//! the `hw_` tests run there by default: the marker on 1, 2 and 4 vCPUs, every way the guest
//! can end minivmm, the busybox shell on the serial console, and GDB from the 64-bit entry to
//! a software breakpoint in the kernel's own mapping. On an emulating host they say what they
//! could not exercise and return.

// Tests state what they expect with unwrap, expect and panic; the crate's lints are for
// code a guest or a debugger can reach.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod host;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::{Output, Vm};
use host::{SwBreakPath, TestHost, not_exercised};

const MINIVMM: &str = env!("CARGO_BIN_EXE_minivmm");
/// Where the decompressed kernel's 64-bit entry (startup_64) lands without KASLR.
const LINUX_ENTRY: u64 = 0x100_0000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fetches the kernel (cached); a machine without the network must fail loudly, not skip.
fn linux_dir() -> PathBuf {
    let out = Command::new(repo().join("scripts/fetch-linux.sh"))
        .output()
        .expect("running scripts/fetch-linux.sh");
    assert!(
        out.status.success(),
        "could not fetch Debian's kernel (network needed for the first run):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The test initramfs, built in the temp directory: the kernel cache may be read-only (it is
/// on the hardware-virtualised test host, which mounts this machine's files that way).
fn initramfs(linux: &Path) -> TempFile {
    static BUILT: AtomicUsize = AtomicUsize::new(0);
    let out = std::env::temp_dir().join(format!(
        "minivmm-initramfs-{}-{}.cpio.gz",
        std::process::id(),
        BUILT.fetch_add(1, Ordering::Relaxed)
    ));
    common::build_initramfs(linux, &out);
    TempFile(out)
}

/// The console lines minivmm printed so far.
fn console_lines(vm: &Vm) -> Vec<String> {
    let (out, _) = vm.output_so_far();
    String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The first console line containing `needle`.
fn line_with(lines: &[String], needle: &str) -> String {
    lines
        .iter()
        .find(|l| l.contains(needle))
        .cloned()
        .unwrap_or_default()
}

/// Emulating hosts get extra command-line words from minivmm, which it logs.
fn expected_cmdline(given: &str, stderr: &str) -> String {
    match stderr
        .split("added '")
        .nth(1)
        .and_then(|s| s.split('\'').next())
    {
        Some(extra) => format!("{given} {extra}"),
        None => given.to_string(),
    }
}

/// On a hardware-virtualised host, one VM at a time: the tests take seconds each there, and a
/// 4-vCPU guest on a 2-CPU host should not share those CPUs with another test's VM too.
fn one_vm_at_a_time() -> Option<MutexGuard<'static, ()>> {
    static ONE: Mutex<()> = Mutex::new(());
    TestHost::current()
        .is_hardware()
        .then(|| ONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

const EARLY: Duration = Duration::from_secs(300);
/// From start to ACPI's "supports S0 S5" line: a few minutes on an emulating host.
const ACPI_ON: Duration = Duration::from_secs(900);

#[test]
fn linux_prints_banner_exact_cmdline_and_our_e820_map() {
    let _one = one_vm_at_a_time();
    let linux = linux_dir();
    let kernel = linux.join("vmlinuz");
    let cmdline = "console=ttyS0 reboot=k earlyprintk=serial,ttyS0 minivmm.test=banner";
    let mut vm = Vm::spawn(
        [
            "--kernel",
            kernel.to_str().unwrap(),
            "--mem",
            "256",
            "--cmdline",
            cmdline,
        ],
        &[("RUST_LOG", "minivmm=info")],
    );
    // The last of the three e820 lines minivmm's map gives for 256 MiB.
    let last_e820 = "BIOS-e820: [mem 0x0000000000100000";
    vm.wait_for_stdout(last_e820, EARLY);
    // The needle can arrive before the rest of its line: wait for the newline too.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&vm.output_so_far().0)
        .split(last_e820)
        .nth(1)
        .is_some_and(|rest| rest.contains('\n'))
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(50));
    }
    // Then Linux lists our ACPI tables and parses the MADT, a little later.
    vm.wait_for_stdout("ACPI: Using ACPI (MADT)", EARLY);
    let lines = console_lines(&vm);
    let (_, stderr) = vm.output_so_far();
    let stderr = String::from_utf8_lossy(&stderr);
    let banner = line_with(&lines, "Linux version");
    let got_cmdline = line_with(&lines, "Command line:");
    let e820: Vec<&String> = lines.iter().filter(|l| l.contains("BIOS-e820")).collect();

    assert!(banner.contains("Linux version 6."), "{banner}");
    let got = got_cmdline
        .split("Command line: ")
        .nth(1)
        .unwrap_or_default()
        .trim();
    assert_eq!(
        got,
        expected_cmdline(cmdline, &stderr),
        "the kernel saw a different command line"
    );
    // minivmm's map for 256 MiB: conventional memory, the EBDA/BIOS hole, RAM above 1 MiB.
    let want = [
        "[mem 0x0000000000000000-0x000000000009fbff] usable",
        "[mem 0x000000000009fc00-0x00000000000fffff] reserved",
        "[mem 0x0000000000100000-0x000000000fffffff] usable",
    ];
    assert_eq!(e820.len(), want.len(), "e820 lines: {e820:?}");
    for (line, want) in e820.iter().zip(want) {
        assert!(
            line.ends_with(want),
            "e820 line {line:?} should end with {want:?}"
        );
    }
    // Every table minivmm writes, found through the RSDP, and the SCI's interrupt override
    // from the MADT.
    for table in ["RSDP", "XSDT", "FACP", "DSDT", "APIC"] {
        let line = line_with(&lines, &format!("ACPI: {table} 0x"));
        assert!(line.contains(" (v0"), "ACPI {table}: {line:?}");
    }
    let facs = line_with(&lines, "ACPI: FACS 0x");
    assert!(facs.ends_with(" 000040"), "ACPI FACS (64 bytes): {facs:?}");
    let fadt = line_with(&lines, "ACPI: FACP 0x");
    assert!(fadt.contains("(v06 MINIVM"), "{fadt}");
    let iso = line_with(&lines, "ACPI: INT_SRC_OVR");
    assert!(
        iso.ends_with("(bus 0 bus_irq 9 global_irq 9 high level)"),
        "{iso:?}"
    );

    // Later, ACPICA loads the DSDT's AML, switches to ACPI mode (no SMI command: already
    // there) and finds \_S5: `poweroff` will go through minivmm's PM1 control register.
    vm.wait_for_stdout("ACPI: PM: (supports S0 S5)", ACPI_ON);
    let lines = console_lines(&vm);
    for needed in [
        "ACPI: 1 ACPI AML tables successfully acquired and loaded",
        "ACPI: Interpreter enabled",
    ] {
        assert_ne!(line_with(&lines, needed), "", "no {needed:?}");
    }
    let complaints: Vec<&String> = lines
        .iter()
        .filter(|l| {
            [
                "ACPI Error",
                "ACPI BIOS Error",
                "ACPI Warning",
                "ACPI BIOS Warning",
                "ACPI Exception",
            ]
            .iter()
            .any(|bad| l.contains(bad))
                || (l.contains("[Firmware Bug]") && l.contains("ACPI"))
        })
        .collect();
    assert!(
        complaints.is_empty(),
        "Linux complains about the ACPI tables: {complaints:#?}"
    );
}

fn file_contains(path: &Path, needle: &str) -> bool {
    fs::read(path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

#[test]
fn gdb_stops_at_linux_entry_and_reads_kernel_memory() {
    let _one = one_vm_at_a_time();
    let linux = linux_dir();
    let kernel = linux.join("vmlinuz");
    let port = common::free_port().to_string();
    let tmp = std::env::temp_dir();
    let serial = tmp.join(format!("minivmm-linux-gdb-{}.serial", std::process::id()));
    let gdb_out = tmp.join(format!("minivmm-linux-gdb-{}.gdb", std::process::id()));
    let mut vm = Command::new(MINIVMM)
        .args(["--kernel", kernel.to_str().unwrap(), "--gdb", &port])
        .args([
            "--cmdline",
            "console=ttyS0 reboot=k earlyprintk=serial,ttyS0 nokaslr",
        ])
        .env("RUST_LOG", "minivmm=info")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&serial).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    // The first `continue` runs the decompressor up to the kernel's entry; the second runs
    // the kernel until the test interrupts GDB (SIGINT, as Ctrl-C would) once it printed its
    // banner: by then paging with the kernel's own mapping is on.
    let mut gdb = Command::new("gdb")
        .args(["-batch", "-nx"])
        .args(["-ex", &format!("target remote 127.0.0.1:{port}")])
        .args(["-ex", &format!("hbreak *{LINUX_ENTRY:#x}")])
        .args(["-ex", "continue"])
        .args(["-ex", "p/x $pc"])
        .args(["-ex", "p/x $cr0"])
        .args(["-ex", "p/x $cr3"])
        .args(["-ex", "p/x $efer"])
        .args(["-ex", "x/8i $pc"])
        .args(["-ex", "stepi"])
        .args(["-ex", "p/x $pc"])
        .args(["-ex", "delete"])
        .args(["-ex", "continue"])
        .args(["-ex", "p/x $pc"])
        .args(["-ex", "x/2i $pc"])
        .args(["-ex", "x/2gx 0xffffffff81000000"])
        .args(["-ex", "kill"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&gdb_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + EARLY;
    while !file_contains(&serial, "Linux version") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    // Give GDB a moment to be back in `continue` after the entry-point commands.
    thread::sleep(Duration::from_secs(1));
    // SAFETY: kill(2) on our own, not yet reaped, child.
    unsafe { libc::kill(gdb.id() as libc::pid_t, libc::SIGINT) };
    let gdb_deadline = Instant::now() + Duration::from_secs(60);
    while gdb.try_wait().ok().flatten().is_none() && Instant::now() < gdb_deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let _ = gdb.kill();
    let _ = gdb.wait();
    let _ = vm.kill();
    let _ = vm.wait();
    let text = fs::read_to_string(&gdb_out).unwrap_or_default();
    let console = fs::read_to_string(&serial).unwrap_or_default();
    let _ = fs::remove_file(&serial);
    let _ = fs::remove_file(&gdb_out);

    assert!(
        console.contains("Linux version"),
        "the kernel never printed its banner:\n{console}"
    );
    let values: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split(" = 0x").nth(1))
        .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
        .collect();
    assert!(values.len() >= 6, "GDB printed too few values:\n{text}");
    let (pc, cr0, cr3, efer, pc_after_step, pc_running) = (
        values[0], values[1], values[2], values[3], values[4], values[5],
    );
    assert_eq!(pc, LINUX_ENTRY, "hbreak at the entry point:\n{text}");
    assert_eq!(
        cr0 & 0x8000_0001,
        0x8000_0001,
        "paging and protection on:\n{text}"
    );
    assert_ne!(cr3, 0, "{text}");
    assert_eq!(efer & 0x500, 0x500, "long mode active:\n{text}");
    assert!(
        pc_after_step > pc && pc_after_step < pc + 16,
        "stepi moved one instruction:\n{text}"
    );
    assert!(
        text.contains("received signal SIGINT"),
        "the interrupt stopped the kernel:\n{text}"
    );
    assert!(
        pc_running >= 0xffff_ffff_8000_0000,
        "interrupted in the kernel's own mapping:\n{text}"
    );
    assert!(
        text.contains("0xffffffff81000000:")
            && !text.contains("Cannot access memory at address 0xffffffff81000000"),
        "kernel text readable at its virtual address:\n{text}"
    );
}

#[test]
#[ignore = "the full boot takes minutes on an emulating host: make linux-test"]
fn linux_boots_to_initramfs_marker_on_every_vcpu_and_reboots() {
    let _one = one_vm_at_a_time();
    let linux = linux_dir();
    let initrd = initramfs(&linux);
    let kernel = linux.join("vmlinuz");
    let cmdline = "console=ttyS0 reboot=k cryptomgr.notests";
    let mut vm = Vm::spawn(
        [
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.0.to_str().unwrap(),
            "--cpus",
            "2",
            "--mem",
            "512",
            "--cmdline",
            cmdline,
        ],
        &[("RUST_LOG", "minivmm=info")],
    );
    vm.wait_for_stdout("minivmm-init:", Duration::from_secs(900));
    let out = vm.wait(Duration::from_secs(60));
    let stdout: Vec<String> = out.stdout_text().lines().map(str::to_owned).collect();
    let marker = line_with(&stdout, "minivmm-init:");
    assert!(marker.contains("nproc=2"), "{marker}");
    let stderr = out.stderr_text();
    assert!(
        marker.contains(&format!("cmdline={}", expected_cmdline(cmdline, &stderr))),
        "{marker}"
    );
    out.assert_code(0);
}

// ---- On a hardware-virtualised host: the whole boot, its ends, the shell, GDB ----

/// Start to the marker on a hardware-virtualised host: seconds there, but the test host's L1
/// runs under TCG and may be loaded.
const HW_BOOT: Duration = Duration::from_secs(300);
/// From a command typed at the shell (or the marker) to its answer (or minivmm's end).
const HW_STEP: Duration = Duration::from_secs(60);
/// minivmm's log level that shows which ACPI register the guest used to end it.
const LOG_ACPI: (&str, &str) = ("RUST_LOG", "minivmm=info,minivmm::devices::acpi_pm=debug");

/// Returns `false` (after saying so) on a host where Debian's kernel cannot reach user space.
fn hardware_or_say(what: &str) -> bool {
    let hw = TestHost::current().is_hardware();
    if !hw {
        not_exercised(&format!(
            "{what}: user-mode system calls fail on this host, so the initramfs cannot run \
             (make linux-test shows the boot up to /init)"
        ));
    }
    hw
}

/// `spawn_linux`, then waits for `needle`; on the hardware-virtualised test host a boot lost
/// to its known early triple fault is repeated once (see `host::known_test_host_triple_fault`).
fn boot_linux_until(linux: &Path, initrd: &TempFile, cpus: u32, cmdline: &str, needle: &str) -> Vm {
    let mut vm = spawn_linux(linux, initrd, cpus, cmdline, &[]);
    let Some(out) = vm.wait_for_stdout_or_exit(needle, HW_BOOT) else {
        return vm;
    };
    assert!(
        host::known_test_host_triple_fault(out.code(), &out.stdout_text(), &out.stderr_text()),
        "minivmm exited before printing {needle:?}\n{out}"
    );
    host::retrying_after_test_host_triple_fault(&format!("{cpus} vCPUs, {cmdline}"));
    let mut vm = spawn_linux(linux, initrd, cpus, cmdline, &[]);
    vm.wait_for_stdout(needle, HW_BOOT);
    vm
}

fn spawn_linux(linux: &Path, initrd: &TempFile, cpus: u32, cmdline: &str, extra: &[&str]) -> Vm {
    let kernel = linux.join("vmlinuz");
    let cpus = cpus.to_string();
    let mut args = vec![
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.0.to_str().unwrap(),
        "--cpus",
        &cpus,
        "--mem",
        "512",
        "--cmdline",
        cmdline,
    ];
    args.extend_from_slice(extra);
    Vm::spawn(args, &[LOG_ACPI])
}

/// The kernel release, from the package fetch-linux.sh downloaded.
fn kernel_release(linux: &Path) -> String {
    let package = fs::read_to_string(linux.join("package")).expect("the cache's package file");
    package
        .trim()
        .strip_prefix("linux-image-")
        .unwrap_or_else(|| panic!("unexpected package name {package:?}"))
        .to_string()
}

/// How the guest ended minivmm.
#[derive(Clone, Copy, Debug)]
enum End {
    /// `reboot=k`: the kernel pulses the i8042's reset line.
    I8042Reset,
    /// Linux's default reboot: the FADT's reset register.
    AcpiReset,
    /// `poweroff`: S5 through the PM1a control register.
    AcpiPowerOff,
}

#[track_caller]
fn assert_ended_by(out: &Output, end: End) {
    out.assert_code(0);
    let log = out.stderr_text();
    let console = out.stdout_text();
    let acpi_reset = log.contains("ACPI: the guest asked for reset");
    let acpi_off = log.contains("ACPI: the guest asked for power-off");
    let (ok, kernel_said) = match end {
        End::I8042Reset => (!acpi_reset && !acpi_off, "reboot: Restarting system"),
        End::AcpiReset => (acpi_reset && !acpi_off, "reboot: Restarting system"),
        End::AcpiPowerOff => (acpi_off && !acpi_reset, "reboot: Power down"),
    };
    assert!(ok, "the guest should have ended minivmm by {end:?}\n{out}");
    assert!(
        console.contains(kernel_said),
        "the kernel should have said {kernel_said:?}\n{out}"
    );
}

/// Waits until the console has a line that is exactly `want` (the shell echoes what is typed,
/// so a command's answer must not be found in its own echo).
fn wait_for_line(vm: &Vm, want: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines = console_lines(vm);
        if lines.iter().any(|l| l.trim_end_matches('\r') == want) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no line {want:?} on the console within {timeout:?}:\n{}",
            lines.join("\n")
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Types `command` at the shell and waits for the line `want` it should print.
fn shell(vm: &mut Vm, command: &str, want: &str) -> Vec<String> {
    vm.write_stdin(format!("{command}\n").as_bytes());
    wait_for_line(vm, want, HW_STEP)
}

#[test]
fn hw_linux_reaches_marker_on_1_2_4_vcpus_and_reboots_or_powers_off() {
    if !hardware_or_say("Debian's kernel to the initramfs marker on 1, 2 and 4 vCPUs") {
        return;
    }
    let _one = one_vm_at_a_time();
    let linux = linux_dir();
    let initrd = initramfs(&linux);
    // Every way /init can end the VM, one per vCPU count: the i8042 (`reboot=k`), Linux's
    // default reboot (ACPI reset register) and power-off (ACPI S5).
    let cases = [
        (1, "console=ttyS0 reboot=k", End::I8042Reset),
        (2, "console=ttyS0", End::AcpiReset),
        (
            4,
            "console=ttyS0 reboot=k minivmm.poweroff",
            End::AcpiPowerOff,
        ),
    ];
    for (cpus, cmdline, end) in cases {
        let started = Instant::now();
        let vm = boot_linux_until(&linux, &initrd, cpus, cmdline, "minivmm-init:");
        let to_marker = started.elapsed();
        let out = vm.wait(HW_STEP);
        let lines: Vec<String> = out.stdout_text().lines().map(str::to_owned).collect();
        let marker = line_with(&lines, "minivmm-init:");
        assert_eq!(
            marker.trim_end(),
            format!("minivmm-init: nproc={cpus} cmdline={cmdline}"),
            "every vCPU online and exactly our command line\n{out}"
        );
        let plural = if cpus == 1 { "" } else { "s" };
        let brought_up = format!("smp: Brought up 1 node, {cpus} CPU{plural}");
        assert_ne!(line_with(&lines, &brought_up), "", "{brought_up:?}\n{out}");
        assert_ended_by(&out, end);
        eprintln!(
            "{cpus} vCPU(s): marker {:.1} s after start, minivmm ended ({end:?}) at {:.1} s",
            to_marker.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn hw_linux_busybox_shell_works_on_the_serial_console() {
    if !hardware_or_say("busybox's shell on the serial console") {
        return;
    }
    let _one = one_vm_at_a_time();
    let linux = linux_dir();
    let initrd = initramfs(&linux);
    let started = Instant::now();
    let mut vm = boot_linux_until(
        &linux,
        &initrd,
        2,
        "console=ttyS0 reboot=k minivmm.shell",
        "minivmm-init: nproc=2",
    );
    vm.wait_for_stdout("/ # ", HW_STEP);
    let prompt = started.elapsed();
    // Each answer is printed behind a tag, so only the command's output can match it.
    shell(&mut vm, "echo R1=$((6*7))", "R1=42");
    shell(
        &mut vm,
        "echo CPUS=$(cat /proc/cpuinfo | grep -c processor)",
        "CPUS=2",
    );
    shell(
        &mut vm,
        "echo UNAME=$(uname -r)",
        &format!("UNAME={}", kernel_release(&linux)),
    );
    // busybox `poweroff` signals PID 1 (our /init), which powers off.
    vm.write_stdin(b"poweroff\n");
    let out = vm.wait(HW_STEP);
    assert_ended_by(&out, End::AcpiPowerOff);
    eprintln!(
        "shell prompt {:.1} s after start, powered off at {:.1} s",
        prompt.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// Addresses of kernel symbols without KASLR, asked of the kernel itself: its shell greps
/// /proc/kallsyms (Debian's package has no symbol file for GDB). Ends with busybox `reboot`,
/// without `reboot=k`: the ACPI reset register.
fn kallsyms_nokaslr(linux: &Path, initrd: &TempFile, names: &[&str]) -> HashMap<String, u64> {
    let mut vm = boot_linux_until(
        linux,
        initrd,
        1,
        "console=ttyS0 nokaslr minivmm.shell",
        "/ # ",
    );
    let pattern: String = names.iter().map(|n| format!(" -e {n}")).collect();
    let lines = shell(
        &mut vm,
        &format!("grep -w{pattern} /proc/kallsyms; echo KALLSYMS-END"),
        "KALLSYMS-END",
    );
    let mut found = HashMap::new();
    for line in &lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [addr, _kind, name] = words[..]
            && names.contains(&name)
            && let Ok(addr) = u64::from_str_radix(addr, 16)
        {
            found.insert(name.to_string(), addr);
        }
    }
    vm.write_stdin(b"reboot\n");
    let out = vm.wait(HW_STEP);
    assert_ended_by(&out, End::AcpiReset);
    for name in names {
        assert!(
            found
                .get(*name)
                .is_some_and(|&a| a >= 0xffff_ffff_8000_0000),
            "{name} not in /proc/kallsyms (or hidden):\n{out}"
        );
    }
    found
}

/// The `$N = VALUE` results in a GDB transcript, parsed as numbers.
fn gdb_values(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix('$')?.split_once(" = "))
        .filter_map(|(_, v)| {
            let v = v.split_whitespace().next()?;
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .collect()
}

/// The words after `ADDR:` on GDB's `x/2gx ADDR` line.
fn gdb_quadwords(text: &str, addr: u64) -> Vec<String> {
    let label = format!("{addr:#x}:");
    text.lines()
        .find_map(|l| l.strip_prefix(&label))
        .map(|rest| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

#[test]
fn hw_gdb_breaks_steps_and_reads_kernel_memory_through_the_boot() {
    if !hardware_or_say("GDB on Debian's kernel up to its initramfs") {
        return;
    }
    let host = TestHost::current();
    if !host.exec_breakpoints_fire() {
        not_exercised("GDB's hbreak on Linux: debug-register breakpoints never fire here");
        return;
    }
    let _one = one_vm_at_a_time();
    let linux = linux_dir();
    let initrd = initramfs(&linux);
    let syms = kallsyms_nokaslr(
        &linux,
        &initrd,
        &["x86_64_start_kernel", "start_kernel", "linux_banner"],
    );
    let (start64, start_kernel, banner) = (
        syms["x86_64_start_kernel"],
        syms["start_kernel"],
        syms["linux_banner"],
    );
    let sw_break = host.sw_break_path() == SwBreakPath::KvmExitDebug;
    if !sw_break {
        not_exercised("GDB's `break` (int3) on Linux: int3 does not reach KVM on this host");
    }

    let port = common::free_port().to_string();
    let vm = spawn_linux(
        &linux,
        &initrd,
        2,
        "console=ttyS0 reboot=k nokaslr",
        &["--gdb", &port],
    );
    let deadline = Instant::now() + HW_STEP;
    while !String::from_utf8_lossy(&vm.output_so_far().1).contains("waiting for GDB on") {
        assert!(Instant::now() < deadline, "minivmm never waited for GDB");
        thread::sleep(Duration::from_millis(20));
    }
    // At the 64-bit entry the decompressor's identity map is on; x86_64_start_kernel runs in
    // the kernel's own mapping, where the software breakpoint is planted by virtual address.
    // The last `continue` lets the kernel boot on to /init, which reboots.
    let mut cmds = vec![
        format!("target remote 127.0.0.1:{port}"),
        format!("hbreak *{LINUX_ENTRY:#x}"),
        "continue".into(),
        "info registers".into(),
        "x/8i $pc".into(),
        format!("x/2gx {LINUX_ENTRY:#x}"),
        "stepi".into(),
        "p/x $pc".into(),
        "delete".into(),
        format!("hbreak *{start64:#x}"),
        "continue".into(),
        "p/x $pc".into(),
        "info threads".into(),
        "delete".into(),
    ];
    if sw_break {
        cmds.extend([
            format!("break *{start_kernel:#x}"),
            "continue".into(),
            "p/x $pc".into(),
            // The int3 under the stop is hidden from reads.
            "p/x *(unsigned char *)$pc".into(),
            "x/8i $pc".into(),
            "stepi".into(),
            "p/x $pc".into(),
            "delete".into(),
        ]);
    }
    cmds.extend([
        format!("x/s {banner:#x}"),
        "x/2gx 0xffffffff81000000".into(),
        "info registers rip cr0 cr3 cr4 efer".into(),
        "continue".into(),
    ]);
    let mut gdb = Command::new("gdb");
    gdb.args(["-batch", "-nx"]);
    for c in &cmds {
        gdb.arg("-ex").arg(c);
    }
    let started = Instant::now();
    let gdb_out = tempfile_path("gdb");
    // One file for both, so errors land among the results they belong to.
    let gdb_file = fs::File::create(&gdb_out.0).unwrap();
    let mut child = gdb
        .stdin(Stdio::null())
        .stdout(gdb_file.try_clone().unwrap())
        .stderr(gdb_file)
        .spawn()
        .expect("running gdb");
    let deadline = Instant::now() + HW_BOOT;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let gdb_time = started.elapsed();
    let out = vm.wait(HW_STEP);
    let text = fs::read_to_string(&gdb_out.0).unwrap_or_default();
    let all = format!("--- GDB:\n{text}\n{out}");

    // The entry: registers and code.
    assert!(
        text.lines()
            .any(|l| l.starts_with("rip") && l.contains(&format!("{LINUX_ENTRY:#x}"))),
        "stopped at the 64-bit entry:\n{all}"
    );
    for reg in ["rsp", "eflags", "cs", "cr0", "cr3", "efer", "fs_base"] {
        assert!(
            text.lines().any(|l| l.starts_with(reg)),
            "info registers shows {reg}:\n{all}"
        );
    }
    let entry_insns = text
        .lines()
        .filter(|l| l.starts_with(&format!("=> {LINUX_ENTRY:#x}")))
        .count();
    assert!(entry_insns >= 1, "x/8i at the entry:\n{all}");
    let values = gdb_values(&text);
    let want = if sw_break { 5 } else { 2 };
    assert!(values.len() >= want, "GDB printed too few values:\n{all}");
    assert!(
        values[0] > LINUX_ENTRY && values[0] < LINUX_ENTRY + 16,
        "stepi moved one instruction from the entry:\n{all}"
    );
    assert_eq!(values[1], start64, "hbreak at x86_64_start_kernel:\n{all}");
    assert!(
        text.contains("Thread 2") || text.contains("vCPU 1"),
        "both vCPUs are threads:\n{all}"
    );
    if sw_break {
        assert_eq!(values[2], start_kernel, "break at start_kernel:\n{all}");
        assert_ne!(values[3], 0xcc, "the int3 is hidden from reads:\n{all}");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("=> {start_kernel:#x}"))),
            "x/8i at start_kernel:\n{all}"
        );
        assert!(
            values[4] != start_kernel && values[4] >= 0xffff_ffff_8000_0000,
            "stepi from the breakpoint went on in the kernel:\n{all}"
        );
    }
    // Kernel memory by virtual address: the banner Linux will print, and the text at the
    // kernel's start that the entry ran from at its physical address.
    let release = kernel_release(&linux);
    let banner_in_memory = text
        .lines()
        .find(|l| l.starts_with(&format!("{banner:#x}")))
        .and_then(|l| l.split_once('"'))
        .map(|(_, s)| s.trim_end_matches('"').to_string())
        .unwrap_or_default();
    assert!(
        banner_in_memory.starts_with(&format!("Linux version {release} ")),
        "linux_banner read from kernel memory:\n{all}"
    );
    let entry_text = gdb_quadwords(&text, LINUX_ENTRY);
    assert_eq!(entry_text.len(), 2, "x/2gx at the entry:\n{all}");
    assert_eq!(
        gdb_quadwords(&text, 0xffff_ffff_8100_0000),
        entry_text,
        "the kernel's text at 0xffffffff81000000 is what ran at its entry:\n{all}"
    );
    // The guest booted on from the breakpoints to /init, which rebooted.
    let console = out.stdout_text();
    assert!(
        console.contains(&banner_in_memory[..banner_in_memory.len().min(60)]),
        "the console's banner is the one read from memory:\n{all}"
    );
    assert!(console.contains("minivmm-init: nproc=2"), "{all}");
    assert_ended_by(&out, End::I8042Reset);
    assert!(
        text.contains("[Inferior 1 (process 1) exited normally]"),
        "GDB saw the guest end:\n{all}"
    );
    eprintln!(
        "GDB session to the guest's reboot: {:.1} s",
        gdb_time.as_secs_f64()
    );
}

fn tempfile_path(what: &str) -> TempFile {
    TempFile(std::env::temp_dir().join(format!("minivmm-linux-{what}-{}.txt", std::process::id())))
}
