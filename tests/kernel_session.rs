//! A kernel developer's session on the project's test kernel (scripts/build-test-kernel.sh:
//! Linux 6.1 with DWARF 5, GDB scripts, KASLR on), driven through the real GDB with
//! scripts/gdbinit and Linux's own scripts/gdb, as Documentation/dev-tools/
//! gdb-kernel-debugging.rst describes it: no `nokaslr`, no `hbreak`, no slide by hand.
//!
//! Needs the hardware-virtualised host (the kernel boots in seconds there) and the kernel in
//! MINIVMM_TEST_KERNEL (`make test` sets both); elsewhere the tests say what they skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod gdb_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gdb_support::host::{self, test_kernel};
use gdb_support::{GdbOutput, Vmm, gdb_command_on, gdb_spawn_command};

/// Boot to the shell, GDB's stops included, on the test host.
const SESSION: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// minivmm on the test kernel, waiting for GDB, logging how stops come about.
fn start(kernel: &Path, extra: &[&str]) -> Vmm {
    let bz = kernel.join("bzImage");
    let mut args = vec!["--mem", "512", "--timeout", "600"];
    args.extend_from_slice(extra);
    Vmm::start_logging(bz.to_str().unwrap(), &args, "minivmm=debug")
}

/// `gdb -batch -nx -x scripts/gdbinit vmlinux` on `vmm`, Linux's scripts/gdb auto-loaded,
/// with `cmds`; `interrupt_when` (serial output) makes it Ctrl-C the guest once.
fn kernel_gdb(vmm: &Vmm, kernel: &Path, cmds: &[&str], interrupt_when: Option<&str>) -> GdbOutput {
    kernel_gdb_unless_stalled(vmm, kernel, cmds, interrupt_when)
        .unwrap_or_else(|| panic!("the guest stalled\n{}", vmm.describe()))
}

/// [`kernel_gdb`], or `None` when the guest's output stopped for a minute before it printed
/// `interrupt_when` on the test host (see [`host::known_test_host_stall`]).
fn kernel_gdb_unless_stalled(
    vmm: &Vmm,
    kernel: &Path,
    cmds: &[&str],
    interrupt_when: Option<&str>,
) -> Option<GdbOutput> {
    let gdbinit = repo().join("scripts/gdbinit");
    let (cmd, reader) = gdb_command_on(
        vmm,
        &kernel.join("vmlinux"),
        &[
            "-iex",
            "set auto-load safe-path /",
            "-x",
            gdbinit.to_str().unwrap(),
        ],
        cmds,
    );
    let session = gdb_spawn_command(cmd, reader);
    if let Some(text) = interrupt_when {
        let deadline = Instant::now() + SESSION;
        let (mut seen, mut since) = (0, Instant::now());
        loop {
            let serial = vmm.serial();
            if serial.contains(text) {
                break;
            }
            if serial.len() != seen {
                (seen, since) = (serial.len(), Instant::now());
            } else if host::known_test_host_stall(since.elapsed()) {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "the guest never printed {text:?}\n{}",
                vmm.describe()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        session.interrupt();
    }
    Some(session.finish(SESSION))
}

/// How waiting for a boot to print something ended.
#[derive(Debug)]
enum Boot {
    Reached,
    /// minivmm exited first.
    Ended,
    /// Nothing new on the serial console for this long (minivmm still running).
    Stalled(Duration),
}

/// Waits until the guest printed `text`, minivmm ended, or its output stopped for a minute.
fn wait_for_serial(vmm: &mut Vmm, text: &str) -> Boot {
    let deadline = Instant::now() + SESSION;
    let (mut seen, mut since) = (0, Instant::now());
    loop {
        let serial = vmm.serial();
        if serial.contains(text) {
            return Boot::Reached;
        }
        if vmm.try_status().is_some() {
            return Boot::Ended;
        }
        if serial.len() != seen {
            (seen, since) = (serial.len(), Instant::now());
        } else if since.elapsed() >= Duration::from_secs(60) || Instant::now() > deadline {
            return Boot::Stalled(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The slide scripts/gdbinit relocated vmlinux by, if it did.
fn relocated_by(out: &GdbOutput) -> Option<u64> {
    const SAID: &str = "vmlinux relocated by the KASLR offset 0x";
    let at = out.text.find(SAID)? + SAID.len();
    let hex: String = out.text[at..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(&hex, 16).ok()
}

/// Whether this run died of the test host's early triple fault (see tests/host), not of
/// anything the session did.
fn test_host_flake(vmm: &mut Vmm) -> bool {
    let code = vmm.try_status().and_then(|s| s.code());
    host::known_test_host_triple_fault(code, &vmm.serial(), &vmm.log())
}

/// A boot of the test kernel with `cmdline`, GDB attached before its first instruction:
/// `break start_kernel`, `continue`, `bt`, `monitor kaslr`, and whether `$pc` is
/// start_kernel's address. `None` when the test host's early triple fault ended the boot.
fn break_start_kernel_at_attach(kernel: &Path, cmdline: &str) -> Option<(Vmm, GdbOutput)> {
    let mut vmm = start(kernel, &["--cpus", "2", "--cmdline", cmdline]);
    let out = kernel_gdb(
        &vmm,
        kernel,
        &[
            "break start_kernel",
            "continue",
            "bt",
            "monitor kaslr",
            "p/x $pc == (unsigned long)&start_kernel",
            "monitor quit",
        ],
        None,
    );
    if !out.contains("hit Breakpoint 1, start_kernel ()") && test_host_flake(&mut vmm) {
        host::retrying_after_test_host_triple_fault("the test kernel's early boot");
        return None;
    }
    out.expect("hit Breakpoint 1, start_kernel ()");
    out.expect("x86_64_start_reservations");
    out.expect("x86_64_start_kernel");
    out.expect("$1 = 0x1");
    // Held in a debug register while nothing mapped start_kernel.
    let log = vmm.log();
    assert!(
        log.contains("in a debug register (its address is not mapped yet)"),
        "{log}"
    );
    Some((vmm, out))
}

/// Item 3 and 4 of the kernel workflow: `break start_kernel` typed before the first
/// instruction, KASLR on, stops at start_kernel with a backtrace by symbol, on boots with
/// different slides. minivmm holds the breakpoint (its address is not mapped yet), stops when
/// the kernel has mapped itself, and scripts/gdbinit relocates vmlinux and goes on.
#[test]
fn break_start_kernel_at_attach_works_with_kaslr_on_across_boots() {
    let Some(kernel) = test_kernel("break start_kernel with KASLR on") else {
        return;
    };
    let mut slides = Vec::new();
    let mut boots = 0;
    while slides.len() < 3 && !(slides.len() >= 2 && slides[0] != slides[1]) {
        boots += 1;
        assert!(boots <= 5, "too many boots: {slides:x?}");
        let Some((vmm, out)) = break_start_kernel_at_attach(&kernel, "console=ttyS0") else {
            continue;
        };
        out.expect("minivmm: the kernel has mapped itself; continuing");
        let slide = relocated_by(&out).unwrap_or(0);
        out.expect(&format!(
            "slide {slide:#x}\n_text {:#x}",
            0xffff_ffff_8100_0000u64 + slide
        ));
        // The path its host must take: minivmm's stop when the kernel mapped itself.
        let log = vmm.log();
        assert!(
            log.contains(&format!(
                "KASLR slide {slide:#x}; stopping for the debugger"
            )),
            "{log}"
        );
        slides.push(slide);
    }
    assert_ne!(slides[0], slides[1], "two boots, two slides: {slides:x?}");
}

/// Item 4 with KASLR off: the breakpoint typed at attach waits in a debug register until
/// start_kernel runs; minivmm has no slide to stop for.
#[test]
fn break_start_kernel_at_attach_works_with_kaslr_off() {
    let Some(kernel) = test_kernel("break start_kernel with nokaslr") else {
        return;
    };
    for _ in 1..=2 {
        let Some((vmm, out)) = break_start_kernel_at_attach(&kernel, "console=ttyS0 nokaslr")
        else {
            continue;
        };
        out.expect("slide 0x0\n_text 0xffffffff81000000");
        out.expect_not("vmlinux relocated");
        let log = vmm.log();
        assert!(!log.contains("stopping for the debugger"), "{log}");
        return;
    }
    panic!("two boots ended in the test host's triple fault");
}

/// Item 2: the documented workflow on a kernel that reached user space, KASLR on: `next`
/// over a call, `finish`, `watch` on a kernel variable, then at the shell lx-dmesg, lx-ps,
/// lx-cmdline, lx-cpus, lx-symbols, `$lx_current()` on every vCPU and `info threads`.
#[test]
fn the_kernel_gdb_workflow_works_with_kaslr_on() {
    let Some(kernel) = test_kernel("the kernel GDB workflow") else {
        return;
    };
    let initrd = common::test_initramfs("workflow");
    let cmdline = "console=ttyS0 minivmm.shell";
    let mut attempt = 0;
    let (vmm, out) = loop {
        attempt += 1;
        let mut vmm = start(
            &kernel,
            &[
                "--cpus",
                "2",
                "--initrd",
                initrd.to_str().unwrap(),
                "--cmdline",
                cmdline,
            ],
        );
        let out = kernel_gdb_unless_stalled(
            &vmm,
            &kernel,
            &[
                "break start_kernel",
                "continue",
                "next",
                "next",
                "break sched_init",
                "continue",
                "finish",
                "watch jiffies",
                "continue",
                "delete",
                "continue",
                // Ctrl-C at the shell's prompt ends that continue.
                "lx-dmesg",
                "lx-cmdline",
                "lx-ps",
                "lx-cpus",
                "info threads",
                "thread 1",
                "p $lx_current().comm",
                "thread 2",
                "p $lx_current().comm",
                // lx-symbols reloads vmlinux as linked; scripts/gdbinit moves it back.
                "lx-symbols",
                "info symbol $pc",
                "monitor info version",
                "monitor quit",
            ],
            Some("/ # "),
        );
        let Some(out) = out else {
            assert!(attempt == 1, "the guest stalled twice\n{}", vmm.describe());
            host::retrying_after_test_host_stall("the test kernel's boot under GDB");
            continue;
        };
        if attempt == 1 && !out.contains("Linux version 6.1") && test_host_flake(&mut vmm) {
            host::retrying_after_test_host_triple_fault("the test kernel's boot");
            continue;
        }
        break (vmm, out);
    };
    let _ = &vmm;
    out.expect("hit Breakpoint 1, start_kernel ()");
    // `next` stays in start_kernel, over the calls on its lines.
    out.expect_not("set_task_stack_end_magic (");
    // `finish` returns from sched_init into start_kernel.
    let after_sched_init = out
        .text
        .split_once("hit Breakpoint 2, sched_init ()")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no stop in sched_init\n{}", out.text));
    assert!(
        after_sched_init.contains("start_kernel () at"),
        "finish went back to start_kernel\n{}",
        out.text
    );
    out.expect("Hardware watchpoint 3: jiffies");
    out.expect("New value = ");
    // lx-dmesg: the kernel's log, read from its ring buffer.
    out.expect("Linux version 6.1");
    out.expect(cmdline);
    // lx-ps: the idle task and kthreadd at least.
    out.expect("swapper/0");
    out.expect("kthreadd");
    out.expect("Thread 1.2 (vCPU 1)");
    // $lx_current(): each vCPU's own task (CPU = thread - 1, as for QEMU's stub).
    let comms: Vec<String> = out
        .values()
        .into_iter()
        .filter(|v| v.starts_with('"'))
        .collect();
    assert!(
        comms.len() >= 2,
        "two $lx_current().comm values\n{}",
        out.text
    );
    for (cpu, comm) in comms.iter().take(2).enumerate() {
        if comm.starts_with("\"swapper") {
            assert!(
                comm.starts_with(&format!("\"swapper/{cpu}")),
                "vCPU {cpu} runs {comm}\n{}",
                out.text
            );
        }
    }
    let after_lx_symbols = out
        .text
        .split_once("loading vmlinux")
        .map_or("", |(_, r)| r);
    assert!(
        after_lx_symbols.contains("minivmm: vmlinux relocated by the KASLR offset")
            && after_lx_symbols.contains(" in section .text"),
        "vmlinux relocated again after lx-symbols\n{}",
        out.text
    );
    out.expect("minivmm 0.");
    std::fs::remove_file(&initrd).unwrap();
}

/// LLDB's output for `cmds` (`lldb --batch`, one `-o` each) on `vmlinux`; `while_running`
/// is called every 500 ms until LLDB ends (at most `SESSION`).
fn lldb(
    vmlinux: Option<&Path>,
    cmds: &[String],
    mut while_running: impl FnMut(),
) -> Result<String, String> {
    let out_path = std::env::temp_dir().join(format!(
        "minivmm-lldb-{}-{}.txt",
        std::process::id(),
        cmds.len()
    ));
    let out_file = std::fs::File::create(&out_path).unwrap();
    let mut c = Command::new("lldb");
    c.arg("--batch");
    if let Some(v) = vmlinux {
        c.arg(v);
    }
    for cmd in cmds {
        c.args(["-o", cmd]);
    }
    let mut child = c
        .stdin(std::process::Stdio::null())
        .stdout(out_file.try_clone().unwrap())
        .stderr(out_file)
        .spawn()
        .expect("running lldb (Debian's lldb package)");
    let deadline = Instant::now() + SESSION;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "lldb did not finish:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            ));
        }
        while_running();
        std::thread::sleep(Duration::from_millis(500));
    }
    let text = std::fs::read_to_string(&out_path).unwrap();
    std::fs::remove_file(&out_path).unwrap();
    Ok(text)
}

/// Attaching to a running kernel, KASLR on. A plain `gdb vmlinux` gets backtraces by symbol
/// from `qOffsets`. Item 5: LLDB on vmlinux (the slide from `monitor kaslr`, given to LLDB as
/// `target modules load --slide`): registers with cr0/cr3/efer, a breakpoint by symbol, bt,
/// every vCPU in `thread list`, memory read, si, `process kill`.
#[test]
fn plain_gdb_and_lldb_attach_to_the_running_kernel() {
    let Some(kernel) = test_kernel("LLDB on the test kernel") else {
        return;
    };
    let initrd = common::test_initramfs("lldb");
    let mut attempt = 0;
    let mut vmm = loop {
        attempt += 1;
        let mut vmm = start(
            &kernel,
            &[
                "--cpus",
                "2",
                "--initrd",
                initrd.to_str().unwrap(),
                "--cmdline",
                "console=ttyS0 minivmm.shell",
                "--gdb-no-wait",
            ],
        );
        match wait_for_serial(&mut vmm, "/ # ") {
            Boot::Reached => break vmm,
            Boot::Ended if attempt == 1 && test_host_flake(&mut vmm) => {
                host::retrying_after_test_host_triple_fault("the test kernel's boot")
            }
            Boot::Stalled(quiet) if attempt == 1 && host::known_test_host_stall(quiet) => {
                host::retrying_after_test_host_stall("the test kernel's boot")
            }
            other => panic!("no shell ({other:?})\n{}", vmm.describe()),
        }
    };
    // A plain `gdb vmlinux` (no scripts/gdbinit): qOffsets relocates .text, .data and .bss.
    let (cmd, reader) = gdb_command_on(
        &vmm,
        &kernel.join("vmlinux"),
        &[],
        &["bt", "info symbol $pc", "p jiffies > 0", "detach"],
    );
    let plain = gdb_spawn_command(cmd, reader).finish(SESSION);
    plain.expect("in section .text");
    plain.expect("$1 = 1");
    plain.expect("do_idle () at");
    plain.expect("start_kernel () at");

    let remote = format!("gdb-remote {}", vmm.port);
    let asked = lldb(
        None,
        &[
            remote.clone(),
            "process plugin packet monitor kaslr".into(),
            "process detach".into(),
        ],
        || {},
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", vmm.describe()));
    let slide = asked
        .split_once("slide 0x")
        .and_then(|(_, rest)| {
            let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
            u64::from_str_radix(&hex, 16).ok()
        })
        .unwrap_or_else(|| panic!("monitor kaslr through LLDB\n{asked}"));

    let vmlinux = kernel.join("vmlinux");
    let mut typed = 0;
    let text = lldb(
        Some(&vmlinux),
        &[
            remote,
            format!("target modules load --file vmlinux --slide {slide:#x}"),
            "breakpoint set -n vfs_write".into(),
            "continue".into(),
            "bt".into(),
            "thread list".into(),
            "register read cr0 cr3 efer rip".into(),
            "memory read -c 16 $rip".into(),
            "si".into(),
            "process kill".into(),
        ],
        // The shell's echo makes a write(2) once LLDB lets the kernel run.
        || {
            typed += 1;
            if typed % 4 == 0 && vmm.try_status().is_none() {
                vmm.send_input("echo hi\n");
            }
        },
    );
    let text = text.unwrap_or_else(|e| panic!("{e}\n{}", vmm.describe()));
    let expect = |s: &str| assert!(text.contains(s), "LLDB output lacks {s:?}\n{text}");
    expect("Breakpoint 1: where = vmlinux`vfs_write");
    expect("stop reason = breakpoint 1.1");
    expect("vmlinux`vfs_write");
    expect("do_syscall_64");
    expect("thread #2: tid = 0x0002");
    expect("cr0 = 0x");
    expect("efer = 0x0000000000000d01");
    expect("stop reason = instruction step into");
    expect("Process 1 exited with status = 9");
    assert!(!text.contains("failed to send the k packet"), "{text}");
    // Status 6: ended from the debugger.
    assert_eq!(
        vmm.wait_exit(Duration::from_secs(30)),
        6,
        "{}",
        vmm.describe()
    );
    assert!(
        vmm.log().contains("GDB killed the VM"),
        "{}",
        vmm.describe()
    );
    std::fs::remove_file(&initrd).unwrap();
}
