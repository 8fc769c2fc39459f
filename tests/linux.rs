//! A real, unmodified Linux kernel (Debian's stock cloud kernel, fetched by
//! scripts/fetch-linux.sh into a cache outside git) under minivmm.
//!
//! In `make test`: the early boot (banner, command line, e820) and GDB at the kernel's entry
//! point, which take about a minute each on an emulating nested-KVM host. The full boot to the
//! initramfs marker is `#[ignore]`d here and run by `make linux-test`.

// Tests state what they expect with unwrap, expect and panic; the crate's lints are for
// code a guest or a debugger can reach.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::Vm;

const MINIVMM: &str = env!("CARGO_BIN_EXE_minivmm");
const GUESTS: &str = env!("MINIVMM_GUESTS_DIR");
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

fn initramfs(linux: &Path) -> PathBuf {
    let out = linux.join(format!("initramfs-test-{}.cpio.gz", std::process::id()));
    let status = Command::new("python3")
        .arg(repo().join("scripts/mkinitramfs.py"))
        .arg("--init")
        .arg(Path::new(GUESTS).join("linux-init"))
        .arg("--busybox")
        .arg(linux.join("busybox"))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("running mkinitramfs.py");
    assert!(status.success());
    out
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

const EARLY: Duration = Duration::from_secs(300);
/// From start to ACPI's "supports S0 S5" line: a few minutes on an emulating host.
const ACPI_ON: Duration = Duration::from_secs(900);

#[test]
fn linux_prints_banner_exact_cmdline_and_our_e820_map() {
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
    let linux = linux_dir();
    let initrd = initramfs(&linux);
    let kernel = linux.join("vmlinuz");
    let cmdline = "console=ttyS0 reboot=k cryptomgr.notests";
    let mut vm = Vm::spawn(
        [
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
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
    let _ = fs::remove_file(&initrd);
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
