//! End-to-end tests of the GDB stub: minivmm runs a test guest with `--gdb`, a real
//! `gdb -batch -nx` session drives it, and the tests check the values GDB prints, the guest's
//! serial output and minivmm's exit status.
//!
//! Run with `make debug-test` (`cargo test --release --test gdb -- --test-threads=1`); needs
//! /dev/kvm and gdb. Guests: `guests/gdbtest.S`, `guests/gdbtest-smp.S`, `guests/echo.S`.
//!
//! Tests marked `#[ignore = "..."]` check behaviour that is broken today; they
//! are the reproducers for those bugs and should pass (and lose the `ignore`) once fixed.

// Tests state what they expect with unwrap, expect and panic; the crate's lints are for
// code a guest or a debugger can reach.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod gdb_support;
mod rsp_client;

use std::io::Write;
use std::thread;
use std::time::Duration;

use gdb_support::{GdbOutput, Vmm, gdb, gdb_spawn, parse_num};
use rsp_client::{RAX, RIP, Rsp, spawn_with_gdb};

/// What gdbtest.elf prints when its 5 loop iterations ran undisturbed.
const GDBTEST_DONE: &str = "gdbtest: counter=5";
const EXITED: &str = "[Inferior 1 (process 1) exited normally]";

/// Runs `cmds` on a fresh gdbtest.elf VM.
fn gdbtest(cmds: &[&str]) -> (Vmm, GdbOutput) {
    let vmm = Vmm::start("gdbtest.elf", &[]);
    let out = gdb(&vmm, cmds);
    (vmm, out)
}

/// The address of the instruction after the one at $pc, from GDB's `x/2i $pc` lines
/// (`=> 0x100000 <_start>: ...` then `   0x100007 <_start+7>: ...`).
fn next_insn_addrs(out: &GdbOutput) -> Vec<u64> {
    let lines: Vec<&str> = out.text.lines().collect();
    let mut next = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("=> 0x")
            && let Some(n) = lines.get(i + 1)
        {
            next.push(parse_num(n.trim()).unwrap_or_else(|| panic!("no address in {n:?}")));
        }
    }
    next
}

// ---------------------------------------------------------------------------------------
// 1. Registers

#[test]
fn registers_at_entry() {
    let (mut vmm, out) = gdbtest(&[
        "p/x $pc",
        "p/x &_start",
        "p/x $cr0",
        "p/x $efer",
        "p/x $cr3",
        "p $fs_base",
        "p $k_gs_base",
        "p/x $rsp",
        "p/x $cs",
        "info registers",
        "info registers eflags",
        "kill",
    ]);
    let v = out.numbers();
    assert_eq!(v[0], v[1], "pc is not at _start:\n{}", out.text);
    assert_eq!(v[1], 0x100000, "_start moved?\n{}", out.text);
    let cr0 = v[2];
    assert_eq!(cr0 & 1, 1, "cr0.PE clear: {cr0:#x}");
    assert_eq!(cr0 & (1 << 31), 1 << 31, "cr0.PG clear: {cr0:#x}");
    assert_eq!(v[3] & 0x500, 0x500, "efer lacks LME|LMA: {:#x}", v[3]);
    assert_eq!(v[4], 0x9000, "cr3");
    assert_eq!(v[5], 0, "fs_base");
    assert_eq!(v[6], 0, "k_gs_base");
    assert_eq!(v[7], 0x8ff0, "rsp (minivmm's 64-bit entry stack)");
    // `info registers` shows the general, segment, base and control registers with values.
    for line in [
        "rip            0x100000            0x100000 <_start>",
        "cr0            0x80000011          [ PG ET PE ]",
        "cr3            0x9000",
        "efer           0x500               [ LMA LME ]",
        "fs_base        0x0",
        "gs_base        0x0",
        "k_gs_base      0x0",
        "cs             0x10",
    ] {
        out.expect(line);
    }
    out.expect("eflags         0x2                 [ IOPL=0 ]");
    vmm.expect_exit(6);
}

#[test]
fn registers_write_round_trip() {
    // At _start: `lea rdi, [rip + message]` (7 bytes) does not touch rax/rbx/r15.
    let (mut vmm, out) = gdbtest(&[
        "set $rax = 0x1234",
        "p/x $rax",
        "set $r15 = 0xdeadbeefcafef00d",
        "set $rbx = 0x5555aaaa",
        "stepi",
        "p/x $rax",
        "p/x $rbx",
        "p/x $r15",
        "p/x $rdi",
        "p/x &message",
        "p/x $pc",
        // eflags: set CF (bit 0) and read it back; rip write: jump back to _start.
        "set $eflags = 0x3",
        "p/x $eflags",
        "set $rip = &_start",
        "p/x $pc",
        "kill",
    ]);
    let v = out.numbers();
    assert_eq!(v[0], 0x1234, "rax right after the write\n{}", out.text);
    assert_eq!(v[1], 0x1234, "rax after stepi\n{}", out.text);
    assert_eq!(v[2], 0x5555_aaaa, "rbx after stepi\n{}", out.text);
    assert_eq!(v[3], 0xdead_beef_cafe_f00d, "r15\n{}", out.text);
    assert_eq!(
        v[4], v[5],
        "the lea did not load &message into rdi\n{}",
        out.text
    );
    assert_eq!(
        v[6], 0x100007,
        "pc after one 7-byte instruction\n{}",
        out.text
    );
    assert_eq!(v[7], 0x3, "eflags write\n{}", out.text);
    assert_eq!(v[8], 0x100000, "rip write\n{}", out.text);
    vmm.expect_exit(6);
}

#[test]
fn registers_mxcsr() {
    let (mut vmm, out) = gdbtest(&["p/x $mxcsr", "set $mxcsr = 0x1fa0", "p/x $mxcsr", "kill"]);
    let v = out.numbers();
    assert_eq!(
        v[0], 0x1f80,
        "mxcsr at entry (the reset value)\n{}",
        out.text
    );
    // An emulating host's KVM keeps its own MXCSR whatever KVM_SET_FPU/KVM_SET_XSAVE say
    // (the guest cannot change it either: ldmxcsr fails there).
    let emulating = !gdb_support::host::TestHost::current().is_hardware();
    assert_eq!(
        vmm.log().contains("emulates guest code"),
        emulating,
        "{}",
        vmm.describe()
    );
    if emulating {
        gdb_support::host::not_exercised("MXCSR writes (the host ignores them)");
    } else {
        assert_eq!(v[1], 0x1fa0, "mxcsr write is lost\n{}", out.text);
    }
    vmm.expect_exit(6);
}

// ---------------------------------------------------------------------------------------
// 2. Memory

#[test]
fn memory_read_and_write_virtual() {
    let (mut vmm, out) = gdbtest(&[
        "x/8xb &message",
        "x/s &message",
        "p (long)counter",
        "set var *(long*)&counter = 41",
        "p (long)counter",
        "x/gx &counter",
        "continue",
    ]);
    out.expect("<message>:\t0x67\t0x64\t0x62\t0x74\t0x65\t0x73\t0x74\t0x3a");
    out.expect("<message>:\t\"gdbtest: start\"");
    out.expect("<counter>:\t0x0000000000000029");
    assert_eq!(out.numbers(), vec![0, 41], "{}", out.text);
    out.expect(EXITED);
    vmm.expect_exit(0);
    // 41 + 5 increments: the guest saw GDB's write.
    assert!(
        vmm.serial().contains("gdbtest: counter=46"),
        "{}",
        vmm.describe()
    );
}

#[test]
fn memory_unmapped_and_physical() {
    let (mut vmm, out) = gdbtest(&[
        "x/x 0xdead00000000",
        // Canonical, but beyond the 4 GiB identity map.
        "x/x 0x200000000",
        "p 1 + 2",
        "p/x $pc",
        "monitor phys on",
        // Identity-mapped: the physical address of message is its virtual address.
        "x/s 0x101010",
        "x/gx 0x9000",
        "monitor phys",
        "monitor phys off",
        "x/s &message",
        "monitor phys",
        "continue",
    ]);
    out.expect("0xdead00000000:\tCannot access memory at address 0xdead00000000");
    out.expect("0x200000000:\tCannot access memory at address 0x200000000");
    // The session goes on after the errors.
    assert_eq!(out.values()[0], "3", "{}", out.text);
    assert_eq!(out.numbers()[1], 0x100000, "{}", out.text);
    out.expect("memory addresses are now guest-physical");
    out.expect("0x101010 <message>:\t\"gdbtest: start\"");
    // The PML4's first entry points at the PDPT (0xa000, present|writable).
    out.expect(":\t0x000000000000a003");
    out.expect("memory addresses are guest-physical");
    out.expect("memory addresses are now virtual (vCPU page tables)");
    out.expect("memory addresses are virtual");
    out.expect(EXITED);
    vmm.expect_exit(0);
    assert!(vmm.serial().contains(GDBTEST_DONE), "{}", vmm.describe());
}

// ---------------------------------------------------------------------------------------
// 3. Hardware breakpoints

#[test]
fn hbreak_stops_at_function() {
    let (mut vmm, out) = gdbtest(&[
        "hbreak func_b",
        "continue",
        "p $pc == &func_b",
        "p (long)counter",
        "delete",
        "continue",
    ]);
    out.expect("Hardware assisted breakpoint 1 at 0x10005e");
    out.expect("Breakpoint 1, func_b ()");
    // func_b runs after the first func_a.
    assert_eq!(out.numbers(), vec![1, 1], "{}", out.text);
    out.expect(EXITED);
    vmm.expect_exit(0);
    assert!(vmm.serial().contains(GDBTEST_DONE), "{}", vmm.describe());
}

#[test]
fn hbreak_fifth_is_refused_cleanly() {
    // Refusals are logged at debug: GDB itself says the breakpoint could not be inserted.
    let mut vmm = Vmm::start_logging("gdbtest.elf", &[], "minivmm=debug");
    let out = gdb(
        &vmm,
        &[
            "hbreak func_a",
            "hbreak func_b",
            "hbreak after_loop",
            "hbreak done",
            "hbreak main_loop",
            "continue",
            // Still alive: drop the fifth, and the four left work.
            "p 6 * 7",
            "delete 5",
            "continue",
            "p $pc == &func_a",
            "p (long)counter",
            "delete",
            "continue",
        ],
    );
    out.expect("Could not insert hardware breakpoint");
    let v = out.values();
    assert_eq!(v[0], "42", "{}", out.text);
    out.expect("Breakpoint 1, func_a ()");
    assert_eq!(&v[1..], ["1", "0"], "{}", out.text);
    out.expect(EXITED);
    vmm.expect_exit(0);
    assert!(vmm.serial().contains(GDBTEST_DONE), "{}", vmm.describe());
    assert!(
        vmm.log()
            .contains("all 4 hardware breakpoint slots are in use"),
        "{}",
        vmm.describe()
    );
}

// ---------------------------------------------------------------------------------------
// 4. Software breakpoints

#[test]
fn break_stops_every_iteration_and_hides_int3() {
    let (mut vmm, out) = gdbtest(&[
        // Keep the int3 planted while stopped, so the reads below go over it.
        "set breakpoint always-inserted on",
        "break func_a",
        "continue",
        "p (long)counter",
        "p $pc == &func_a",
        // GDB hides its own breakpoints in `x`; a raw packet shows what the stub returns.
        "x/2xb func_a",
        "maint packet m100041,2",
        "continue",
        "p (long)counter",
        "continue",
        "p (long)counter",
        "delete",
        "continue",
    ]);
    out.expect("Breakpoint 1 at 0x100041");
    assert_eq!(out.numbers(), vec![0, 1, 1, 2], "{}", out.text);
    assert_eq!(
        out.text.matches("Breakpoint 1, func_a ()").count(),
        3,
        "{}",
        out.text
    );
    out.expect("<func_a>:\t0x48\t0x8b");
    out.expect("received: \"488b\"");
    out.expect(EXITED);
    vmm.expect_exit(0);
    assert!(vmm.serial().contains(GDBTEST_DONE), "{}", vmm.describe());
}

// ---------------------------------------------------------------------------------------
// 5. Watchpoints

#[test]
fn watchpoint_reports_old_and_new_value() {
    let mut vmm = Vmm::start("gdbtest.elf", &[]);
    let hardware = vmm.hw_watchpoints_fire();
    let out = gdb(
        &vmm,
        &[
            "watch *(long*)&watched",
            "continue",
            "p (long)counter",
            "p $pc > &func_a && $pc <= &func_b",
            "continue",
            "delete",
            "continue",
        ],
    );
    out.expect("Hardware watchpoint 1: *(long*)&watched");
    out.expect("Old value = 0\nNew value = 17");
    out.expect("Old value = 17\nNew value = 34");
    assert_eq!(
        out.numbers(),
        vec![1, 1],
        "stopped in func_a right after the store\n{}",
        out.text
    );
    out.expect(EXITED);
    vmm.expect_exit(0);
    assert!(vmm.serial().contains(GDBTEST_DONE), "{}", vmm.describe());
    if !hardware {
        // Straight to stderr, past libtest's output capture, so it shows in every run.
        let _ = std::io::stderr().write_all(
            b"NOT EXERCISED ON THIS HOST: hardware data watchpoints (minivmm emulated the watchpoint by stepping)\n",
        );
        assert!(
            vmm.log().contains("emulates GDB's write watchpoints"),
            "{}",
            vmm.describe()
        );
    }
}

/// Where data breakpoints never fire, reads cannot be watched: `rwatch` is refused cleanly and
/// the session goes on. Where they fire, `rwatch` stops on the read.
#[test]
fn read_watchpoint_works_or_is_refused_honestly() {
    let mut vmm = Vmm::start("gdbtest.elf", &[]);
    let hardware = vmm.hw_watchpoints_fire();
    let out = gdb(
        &vmm,
        &[
            "rwatch *(long*)&counter",
            "continue",
            "p $pc != 0",
            "delete",
            "continue",
        ],
    );
    if hardware {
        out.expect("Value = 0");
    } else {
        out.expect("Could not insert hardware watchpoint");
        let _ = std::io::stderr()
            .write_all(b"NOT EXERCISED ON THIS HOST: read watchpoints (refused: data breakpoints never fire)\n");
    }
    out.expect(EXITED);
    vmm.expect_exit(0);
}

/// A plain `watch` (no GDB settings) must work on every host: as a hardware watchpoint where
/// data breakpoints fire, else as a software one.
#[test]
fn watchpoint_plain_watch_works_on_every_host() {
    let (mut vmm, out) = gdbtest(&["watch *(long*)&watched", "continue", "delete", "continue"]);
    out.expect_not("Could not insert");
    out.expect("Old value = 0\nNew value = 17");
    out.expect(EXITED);
    vmm.expect_exit(0);
    assert!(vmm.serial().contains(GDBTEST_DONE), "{}", vmm.describe());
}

// ---------------------------------------------------------------------------------------
// 6. Stepping

#[test]
fn stepi_advances_by_instruction_length() {
    let (mut vmm, out) = gdbtest(&[
        "x/2i $pc",
        "stepi",
        "p/x $pc",
        "x/2i $pc",
        "stepi",
        "p/x $pc",
        "p $pc == &serial_putline",
        "kill",
    ]);
    let next = next_insn_addrs(&out);
    let v = out.numbers();
    assert_eq!(next.len(), 2, "{}", out.text);
    assert_eq!(v[0], next[0], "first stepi (lea, 7 bytes)\n{}", out.text);
    assert_eq!(v[0], 0x100007, "{}", out.text);
    // The second instruction is a call: stepi enters it.
    assert_eq!(v[2], 1, "stepi into the call\n{}", out.text);
    vmm.expect_exit(6);
}

#[test]
fn nexti_steps_over_call() {
    let (mut vmm, out) = gdbtest(&[
        "hbreak main_loop",
        "continue",
        "delete",
        "x/2i $pc",
        "p (long)counter",
        "nexti",
        "p/x $pc",
        "p (long)counter",
        "nexti",
        "p $pc == &main_loop + 10",
        "continue",
    ]);
    out.expect("Breakpoint 1, main_loop ()");
    out.expect("<main_loop>:\tcall   0x100041 <func_a>");
    let next = next_insn_addrs(&out);
    let v = out.numbers();
    assert_eq!(v[0], 0, "counter before the call\n{}", out.text);
    assert_eq!(
        v[1], next[0],
        "nexti did not land after the call\n{}",
        out.text
    );
    assert_eq!(v[1], 0x100016, "{}", out.text);
    assert_eq!(v[2], 1, "func_a did not run during nexti\n{}", out.text);
    assert_eq!(v[3], 1, "second nexti (over call func_b)\n{}", out.text);
    out.expect(EXITED);
    vmm.expect_exit(0);
    assert!(vmm.serial().contains(GDBTEST_DONE), "{}", vmm.describe());
}

// ---------------------------------------------------------------------------------------
// 7. Run control: continue to the end, Ctrl-C, detach, reattach, kill

#[test]
fn continue_to_end() {
    let (mut vmm, out) = gdbtest(&["continue"]);
    out.expect(EXITED);
    assert!(out.status.success(), "{}", out.text);
    vmm.expect_exit(0);
    let serial = vmm.serial();
    assert!(serial.contains("gdbtest: start"), "{}", vmm.describe());
    assert!(serial.contains(GDBTEST_DONE), "{}", vmm.describe());
}

/// `--timeout` while GDB lets the guest run: GDB is told the inferior exited with status 8.
#[test]
fn timeout_ends_the_vm_running_under_gdb() {
    let mut vmm = Vmm::start("spin.elf", &["--timeout", "3"]);
    let out = gdb(&vmm, &["continue"]);
    out.expect("[Inferior 1 (process 1) exited with code 010]");
    vmm.expect_exit(8);
    assert!(
        vmm.log()
            .contains("the guest ran for 3 s (--timeout): ended, status 8"),
        "{}",
        vmm.describe()
    );
}

/// `--timeout` while the VM is stopped in GDB (at its first instruction here): the time
/// limit is wall time, so the VM still ends. GDB reads nothing while it is stopped, so it
/// learns at its next command that the connection is gone.
#[test]
fn timeout_ends_the_vm_stopped_in_gdb() {
    let mut vmm = Vmm::start("spin.elf", &["--timeout", "2"]);
    let start = std::time::Instant::now();
    let out = gdb(&vmm, &["p $pc == &_start", "shell sleep 4", "stepi"]);
    assert_eq!(out.values(), vec!["1"], "{}", out.text);
    out.expect("Remote connection closed");
    vmm.expect_exit(8);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{}",
        vmm.describe()
    );
    assert!(
        !vmm.serial().contains("spin:"),
        "the guest never ran\n{}",
        vmm.describe()
    );
}

#[test]
fn ctrl_c_interrupts_running_guest() {
    // echo.elf waits for serial input forever: it is running, in serial_getc, when GDB
    // interrupts it.
    let mut vmm = Vmm::start("echo.elf", &[]);
    let session = gdb_spawn(
        &vmm,
        &[
            "continue",
            "p $pc >= &serial_getc && $pc < &i8042_reset",
            "info threads",
            "detach",
        ],
    );
    // Let the guest get going (it prints "echo: ready" first).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !vmm.serial().contains("echo: ready") {
        assert!(std::time::Instant::now() < deadline, "{}", vmm.describe());
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(300));
    let t = std::time::Instant::now();
    session.interrupt();
    let out = session.finish(Duration::from_secs(10));
    let stop_latency = t.elapsed();
    out.expect("Program received signal SIGINT, Interrupt.");
    assert_eq!(out.values(), vec!["1"], "{}", out.text);
    out.expect("(vCPU 0)");
    out.expect("[Inferior 1 (process 1) detached]");
    assert!(
        stop_latency < Duration::from_secs(3),
        "interrupt took {stop_latency:?}"
    );
    // Detached: the guest runs on and answers input.
    vmm.send_input("after-interrupt\n");
    vmm.expect_exit(0);
    assert!(
        vmm.serial().contains("echo: after-interrupt"),
        "{}",
        vmm.describe()
    );
}

#[test]
fn detach_at_breakpoint_runs_to_end_without_int3() {
    let (mut vmm, out) = gdbtest(&[
        "break func_a",
        "continue",
        "continue",
        "p (long)counter",
        "detach",
    ]);
    assert_eq!(out.numbers(), vec![1], "{}", out.text);
    out.expect("[Inferior 1 (process 1) detached]");
    // Had an int3 stayed planted, the guest would take #BP (no IDT: triple fault, exit 3).
    vmm.expect_exit(0);
    assert!(vmm.serial().contains(GDBTEST_DONE), "{}", vmm.describe());
}

#[test]
fn reattach_after_detach() {
    let mut vmm = Vmm::start("echo.elf", &[]);
    let first = gdb(&vmm, &["p $pc == &_start", "detach"]);
    assert_eq!(first.values(), vec!["1"], "{}", first.text);
    first.expect("[Inferior 1 (process 1) detached]");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !vmm.serial().contains("echo: ready") {
        assert!(std::time::Instant::now() < deadline, "{}", vmm.describe());
        thread::sleep(Duration::from_millis(10));
    }
    let second = gdb(
        &vmm,
        &[
            "p $pc >= &serial_getc && $pc < &i8042_reset",
            "p/x (long)&line_buf",
            "info threads",
            "detach",
        ],
    );
    assert_eq!(second.values()[0], "1", "{}", second.text);
    second.expect("(vCPU 0)");
    second.expect("[Inferior 1 (process 1) detached]");
    assert!(vmm.running(), "{}", vmm.describe());
    vmm.send_input("twice\n");
    vmm.expect_exit(0);
    assert!(vmm.serial().contains("echo: twice"), "{}", vmm.describe());
    assert_eq!(
        vmm.log().matches("GDB connected from").count(),
        2,
        "{}",
        vmm.describe()
    );
}

#[test]
fn kill_ends_minivmm_with_status_6() {
    let (mut vmm, out) = gdbtest(&["break func_b", "continue", "kill"]);
    out.expect("Breakpoint 1, func_b ()");
    vmm.expect_exit(6);
    assert!(!vmm.serial().contains(GDBTEST_DONE), "{}", vmm.describe());
    assert!(vmm.log().contains("killed from GDB"), "{}", vmm.describe());
}

// ---------------------------------------------------------------------------------------
// 8. Several vCPUs

/// `thread apply all p/x $REG` → (GDB thread number, value) pairs, by thread number.
fn thread_values(text: &str) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut current = None;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("Thread ")
            && rest.contains("(vCPU")
        {
            current = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let (Some(t), Some((_, v))) = (current, l.split_once(" = ")) {
            out.push((t, parse_num(v).expect("pc")));
            current = None;
        }
    }
    out.sort_unstable();
    out
}

/// Runs gdbtest-smp.elf on `cpus` vCPUs: one thread per vCPU, a hardware breakpoint hit on
/// some vCPU, per-thread registers, optionally a `stepi` under scheduler-locking that must
/// move only the current thread, then the guest runs to its end.
fn smp(cpus: u32, locked_step: bool) {
    let n = cpus.to_string();
    let mut vmm = Vmm::start("gdbtest-smp.elf", &["--cpus", &n]);
    let mut cmds = vec![
        "info threads",
        "hbreak smp_work",
        "continue",
        "p $pc == &smp_work",
        "echo ==pc\\n",
        "thread apply all p/x $pc",
        "echo ==rdi\\n",
        "thread apply all p/x $rdi",
        "echo ==end\\n",
    ];
    if locked_step {
        cmds.extend([
            "x/2i $pc",
            "set scheduler-locking on",
            "stepi",
            "echo ==after\\n",
            "thread apply all p/x $pc",
            "echo ==end\\n",
            "set scheduler-locking off",
        ]);
    }
    cmds.extend(["delete", "continue"]);
    let out = gdb(&vmm, &cmds);
    for i in 0..cpus {
        out.expect(&format!("Thread 1.{} (vCPU {i})", i + 1));
    }
    out.expect_not(&format!("(vCPU {cpus})"));
    let hit = out
        .text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Thread ")?
                .split_once(" hit Breakpoint 1, smp_work ()")
                .map(|(t, _)| t.parse::<u32>().expect("thread number"))
        })
        .unwrap_or_else(|| panic!("no 'Thread N hit Breakpoint 1, smp_work':\n{}", out.text));
    assert_eq!(out.values()[0], "1", "{}", out.text);

    let section = |name: &str| {
        out.text
            .split_once(&format!("=={name}\n"))
            .and_then(|(_, rest)| rest.split_once("\n=="))
            .map(|(s, _)| thread_values(s))
            .unwrap_or_else(|| panic!("no =={name} section:\n{}", out.text))
    };
    let pcs = section("pc");
    let rdis = section("rdi");
    assert_eq!(pcs.len(), cpus as usize, "{}", out.text);
    // Every vCPU stopped at smp_work holds its own APIC ID (= vCPU index) in edi: the
    // registers GDB shows per thread are that vCPU's.
    let smp_work = pcs.iter().find(|&&(t, _)| t == hit).expect("hit thread").1;
    for (&(t, pc), &(t2, rdi)) in pcs.iter().zip(&rdis) {
        assert_eq!(t, t2);
        if pc == smp_work {
            assert_eq!(
                rdi & 0x3f,
                u64::from(t - 1),
                "edi of thread {t}\n{}",
                out.text
            );
        }
    }
    if locked_step {
        let after = section("after");
        let next = next_insn_addrs(&out)[0];
        for (&(t, pc0), &(t1, pc1)) in pcs.iter().zip(&after) {
            assert_eq!(t, t1);
            if t == hit {
                assert_eq!(pc1, next, "the stepped thread {t}\n{}", out.text);
            } else {
                assert_eq!(
                    pc1, pc0,
                    "thread {t} moved under scheduler-locking\n{}",
                    out.text
                );
            }
        }
    }
    out.expect(EXITED);
    vmm.expect_exit(0);
    assert!(
        vmm.serial().contains("gdbtest-smp: done"),
        "{}",
        vmm.describe()
    );
}

#[test]
fn smp_two_vcpus() {
    smp(2, true);
}

#[test]
fn smp_four_vcpus() {
    smp(4, false);
}

/// With 4 vCPUs several usually hit the breakpoint in the same run; the stub queues their
/// stops and must report only stops of threads GDB resumed (here: the one it steps).
#[test]
fn smp_four_vcpus_scheduler_locked_stepi() {
    smp(4, true);
}

#[test]
fn smp_per_thread_registers() {
    let mut vmm = Vmm::start("gdbtest-smp.elf", &["--cpus", "2"]);
    let out = gdb(
        &vmm,
        &[
            "thread 1", "p/x $pc", "p/x $rsp", "thread 2", "p/x $pc", "p/x $cr0", "kill",
        ],
    );
    let v = out.numbers();
    assert_eq!(v[0], 0x100000, "vCPU 0 at _start\n{}", out.text);
    assert_eq!(v[1], 0x8ff0, "{}", out.text);
    // The AP waits for INIT/SIPI in real mode at the reset vector.
    assert_eq!(v[2], 0xfff0, "vCPU 1 at its reset vector\n{}", out.text);
    assert_eq!(
        v[3] & 1,
        0,
        "vCPU 1 is not in protected mode yet\n{}",
        out.text
    );
    vmm.expect_exit(6);
}

// ---------------------------------------------------------------------------------------
// 9. monitor commands

#[test]
fn monitor_commands() {
    let (mut vmm, out) = gdbtest(&[
        "monitor help",
        "monitor regs",
        "monitor translate 0x100000",
        "monitor translate 0x200000000",
        "monitor translate 0xdead00000000",
        "monitor translate zz",
        "monitor foo",
        "p 2 + 2",
        "continue",
    ]);
    for cmd in [
        "monitor regs",
        "monitor translate ADDR",
        "monitor phys on|off",
        "monitor quit",
        "monitor help",
    ] {
        out.expect(cmd);
    }
    out.expect("cr0  0x0000000080000011");
    out.expect("cr3 0x0000000000009000");
    out.expect("efer 0x500");
    out.expect("dr7 0x");
    out.expect("gdt  base 0x0000000000000500");
    // The walk, level by level.
    out.expect("vCPU 0: 0x100000\n");
    out.expect("  PML4   entry at 0x000000009000 = 0x000000000000a003");
    out.expect("  PDPT   entry at 0x00000000a000 = 0x000000000000b003");
    out.expect("  PD     entry at 0x00000000b000 = 0x0000000000000083");
    out.expect("  -> physical 0x100000 (2048 KiB page, writable, supervisor)");
    out.expect("vCPU 0: 0x200000000: virtual address 0x200000000 is not mapped: PDPT entry");
    out.expect("is not present");
    out.expect("vCPU 0: 0xdead00000000: virtual address 0xdead00000000 is not canonical");
    out.expect("not an address: zz");
    out.expect("unknown command 'foo'; try 'monitor help'");
    assert_eq!(out.values(), vec!["4"], "{}", out.text);
    out.expect(EXITED);
    vmm.expect_exit(0);
    assert!(vmm.serial().contains(GDBTEST_DONE), "{}", vmm.describe());
}

/// The stub keeps each stopped vCPU's registers to answer GDB's many reads per stop; a
/// register write must not leave a stale copy behind, for registers or for the page tables
/// memory is read through. Raw packets, because GDB itself caches what it wrote.
#[test]
fn register_writes_are_seen_by_later_register_and_memory_reads() {
    const CR3: usize = 29;
    let le = |v: u64| {
        v.to_le_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let (_vm, port) = spawn_with_gdb("gdbtest.elf");
    let mut rsp = Rsp::connect(port);
    rsp.handshake(true);
    assert!(rsp.ask("?").starts_with('T'));
    let rip = rsp.reg(1, RIP);
    let code = rsp.ask(&format!("m{rip:x},4"));
    assert_eq!(code.len(), 8, "reading the code at rip: {code:?}");

    assert_eq!(
        rsp.ask(&format!("P{RAX:x}={}", le(0x1122_3344_5566_7788))),
        "OK"
    );
    assert_eq!(rsp.reg(1, RAX), 0x1122_3344_5566_7788);

    // Page tables that map nothing (zeroed RAM): the same virtual read must now fail...
    let cr3 = rsp.reg(1, CR3);
    assert_eq!(rsp.ask(&format!("P{CR3:x}={}", le(0x80_0000))), "OK");
    let unmapped = rsp.ask(&format!("m{rip:x},4"));
    assert!(
        unmapped.starts_with('E'),
        "read through empty page tables gave {unmapped:?}"
    );
    // ...and work again once cr3 is back.
    assert_eq!(rsp.ask(&format!("P{CR3:x}={}", le(cr3))), "OK");
    assert_eq!(rsp.ask(&format!("m{rip:x},4")), code);
    rsp.detach();
}
