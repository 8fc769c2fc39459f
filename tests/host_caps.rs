//! What differs between KVM hosts, checked against what the host is known to be (tests/host,
//! never minivmm's own probe): the probe's findings, and the mechanism behind `break`,
//! `hbreak` and `watch`, read from minivmm's debug log (`minivmm=debug` logs how each stop
//! came about). Runs on every host `make test` uses: this machine's emulating KVM and the
//! hardware-virtualised test host on the corrected QEMU, on Debian's QEMU 10 (int3 never
//! intercepted) and on QEMU 7.2 (debug-register breakpoints never fire).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod gdb_support;

use gdb_support::host::{SwBreakPath, TestHost, not_exercised};
use gdb_support::{Vmm, gdb};

const GDBTEST_DONE: &str = "gdbtest: counter=5";
const EXITED: &str = "[Inferior 1 (process 1) exited normally]";

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The line the probe logs, as it must read on this host.
fn expected_probe_line(host: TestHost) -> String {
    let int3 = host.sw_break_path() != SwBreakPath::DebugRegister
        && host.sw_break_path() != SwBreakPath::Refused;
    format!(
        "host: {}; execution breakpoints fire: {}; data breakpoints fire: {}; int3 reaches minivmm: {};",
        if host.is_hardware() {
            "hardware-virtualised KVM"
        } else {
            "KVM emulates guest code"
        },
        yes(host.exec_breakpoints_fire()),
        yes(host.data_breakpoints_fire()),
        yes(int3),
    )
}

#[test]
fn probe_finds_what_this_host_does() {
    let host = TestHost::current();
    let out = common::run_env(
        ["--kernel", common::guest("hello64.elf").to_str().unwrap()],
        &[("RUST_LOG", "minivmm=debug")],
        b"",
        common::TIMEOUT,
    );
    out.assert_code(0);
    let log = out.stderr_text();
    let line = log
        .lines()
        .find_map(|l| {
            l.split_once("] host: ")
                .map(|(_, rest)| format!("host: {rest}"))
        })
        .unwrap_or_else(|| panic!("no probe line in the log\n{out}"));
    let expected = expected_probe_line(host);
    assert!(
        line.starts_with(&expected),
        "on a {host:?} host the probe must find\n  {expected}\nbut it found\n  {line}"
    );
    // The kernels of both test hosts have both (Linux 5.16+); a missing one is a probe bug.
    assert!(
        line.ends_with("KVM_CAP_SYNC_REGS: yes; KVM_GUESTDBG_BLOCKIRQ: yes"),
        "{line}"
    );
}

/// `break` stops twice at func_a, through the mechanism this host must use; where none
/// works it is refused and the guest runs on undisturbed.
#[test]
fn break_takes_the_path_this_host_must_take() {
    let host = TestHost::current();
    let mut vmm = Vmm::start_logging("gdbtest.elf", &[], "minivmm=debug");
    let out = gdb(
        &vmm,
        &[
            "break func_a",
            "continue",
            "p (long)counter",
            "continue",
            "p (long)counter",
            "monitor host",
            "delete",
            "continue",
        ],
    );
    let log = vmm.log();
    let path = host.sw_break_path();
    let through_exit_debug =
        log.contains("SwBreak at") && log.contains("through KVM_EXIT_DEBUG (exception 3)");
    let through_failure = log.contains("through an emulation failure");
    let in_debugreg = log.contains("in a debug register")
        && log.contains("HwBreak at")
        && log.contains("through KVM_EXIT_DEBUG (exception 1)");
    let observed = [
        (SwBreakPath::KvmExitDebug, through_exit_debug),
        (SwBreakPath::EmulationFailure, through_failure),
        (SwBreakPath::DebugRegister, in_debugreg),
    ];
    for (p, seen) in observed {
        assert_eq!(
            seen,
            p == path,
            "on a {host:?} host `break` must go through {path:?}; {p:?} seen: {seen}\n{}\n{}",
            out.text,
            vmm.describe()
        );
    }
    if path == SwBreakPath::Refused {
        out.expect("Cannot insert breakpoint");
        out.expect("break: refused");
        not_exercised(
            "software breakpoints (refused: int3 and execution breakpoints never reach minivmm)",
        );
    } else {
        assert_eq!(out.numbers(), vec![0, 1], "{}", out.text);
        out.expect("Breakpoint 1, func_a ()");
        out.expect(match path {
            SwBreakPath::DebugRegister => "break: a debug register",
            _ => "break: int3 planted in guest memory",
        });
    }
    out.expect(EXITED);
    vmm.expect_exit(0);
    assert!(vmm.serial().contains(GDBTEST_DONE), "{}", vmm.describe());
}

/// `hbreak` stops in a debug register where execution breakpoints fire, and is refused
/// (never silently lost) where they do not.
#[test]
fn hbreak_fires_or_is_refused() {
    let host = TestHost::current();
    let mut vmm = Vmm::start_logging("gdbtest.elf", &[], "minivmm=debug");
    let out = gdb(
        &vmm,
        &[
            "hbreak func_b",
            "continue",
            "p $pc == &func_b",
            "delete",
            "continue",
        ],
    );
    if host.exec_breakpoints_fire() {
        assert_eq!(out.values(), vec!["1"], "{}", out.text);
        assert!(vmm.log().contains("HwBreak at"), "{}", vmm.describe());
    } else {
        out.expect("Cannot insert hardware breakpoint");
        assert!(!vmm.log().contains("HwBreak at"), "{}", vmm.describe());
        not_exercised("hardware breakpoints (refused: they never fire)");
    }
    out.expect(EXITED);
    vmm.expect_exit(0);
}

/// `watch` stops on the write: in a debug register where data breakpoints fire, by
/// single-stepping elsewhere; `rwatch` works only with debug registers.
#[test]
fn watch_takes_the_path_this_host_must_take() {
    let host = TestHost::current();
    let mut vmm = Vmm::start_logging("gdbtest.elf", &[], "minivmm=debug");
    let out = gdb(
        &vmm,
        &[
            "watch *(long*)&watched",
            "continue",
            "p (long)counter",
            "delete",
            "rwatch *(long*)&counter",
            "continue",
            "delete",
            "continue",
        ],
    );
    out.expect("Old value = 0\nNew value = 17");
    assert_eq!(out.numbers(), vec![1], "{}", out.text);
    let log = vmm.log();
    let in_debugreg =
        log.contains("Watch { addr:") && log.contains("through KVM_EXIT_DEBUG (exception 1)");
    let stepped = log.contains("by single-stepping (memory compared)");
    assert_eq!(
        (in_debugreg, stepped),
        (host.data_breakpoints_fire(), !host.data_breakpoints_fire()),
        "on a {host:?} host: watchpoint in a debug register {in_debugreg}, by stepping {stepped}\n{}\n{}",
        out.text,
        vmm.describe()
    );
    if host.data_breakpoints_fire() {
        out.expect("Value = ");
    } else {
        out.expect("Could not insert hardware watchpoint");
        not_exercised(
            "data watchpoints in debug registers (write watchpoints emulated by stepping, rwatch refused)",
        );
    }
    out.expect(EXITED);
    vmm.expect_exit(0);
}

/// The guest's own int3 reaches its own #BP handler, also while GDB has breakpoints planted
/// (KVM_GUESTDBG_USE_SW_BP on): minivmm gives back a #BP that is not its own.
#[test]
fn guest_int3_reaches_the_guest_while_debugging() {
    let mut vmm = Vmm::start_logging("int3.elf", &[], "minivmm=debug");
    // A breakpoint that is never hit, so that software breakpoints are on.
    let out = gdb(&vmm, &["break unexpected_exception", "continue"]);
    vmm.expect_exit(0);
    let serial = vmm.serial();
    for line in ["int3: before", "int3: guest #BP handler ran", "int3: after"] {
        assert!(
            serial.contains(line),
            "{line:?} missing\n{}\n{}",
            out.text,
            vmm.describe()
        );
    }
}
