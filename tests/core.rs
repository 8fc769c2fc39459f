//! Core files (`--core`, `monitor dump`): written when the guest dies and only then, read
//! back by the real GDB, refused or cleaned up when they cannot be written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod gdb_support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{TIMEOUT, Vm, guest, run_env};
use gdb_support::host::{TestHost, not_exercised};
use gdb_support::{Vmm, gdb};

/// A fresh directory for one test's files (removed at the end of a passing test).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("minivmm-core-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `gdb -batch -nx ELF CORE -ex ...`: what GDB makes of the core.
fn gdb_on_core(elf: &Path, core: &Path, cmds: &[&str]) -> String {
    let mut c = Command::new("gdb");
    c.args(["-batch", "-nx"]).arg(elf).arg(core);
    for cmd in cmds {
        c.args(["-ex", cmd]);
    }
    let out = c.output().expect("running gdb");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn run_with_core(guest_name: &str, core: &Path, extra: &[&str]) -> common::Output {
    let g = guest(guest_name);
    let mut args = vec![
        "--kernel",
        g.to_str().unwrap(),
        "--core",
        core.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_env(args, &[("RUST_LOG", "off")], b"", TIMEOUT)
}

#[test]
fn triple_fault_leaves_a_core_with_the_faulting_registers() {
    let dir = scratch("triple");
    let core = dir.join("vm.core");
    let out = run_with_core("triple-fault.elf", &core, &[]);
    out.assert_code(3);
    let err = out.stderr_text();
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.contains("core file written to") && last.contains(core.to_str().unwrap()),
        "stderr's last line names the core\n{out}"
    );
    // RAM is 256 MiB in the file's size, but zero pages are holes.
    let meta = std::fs::metadata(&core).unwrap();
    assert!(meta.len() >= 256 << 20, "{}", meta.len());
    assert!(
        meta.blocks() * 512 < 16 << 20,
        "sparse: {} blocks",
        meta.blocks()
    );
    let g = gdb_on_core(
        &guest("triple-fault.elf"),
        &core,
        &["p $pc == &fault", "p/x $pc", "info threads", "x/s &msg"],
    );
    assert!(g.contains("* 1    LWP 1"), "{g}");
    assert!(
        g.contains("triple-fault: going down"),
        "memory reads from the core\n{g}"
    );
    // KVM on AMD resets a vCPU at a triple fault: its registers are then the reset state,
    // and minivmm must say so rather than pass them off as the fault's.
    let reset_note = err.contains("registers in the core are its reset state");
    if reset_note {
        assert!(
            TestHost::current().is_hardware(),
            "only hardware KVM resets\n{out}"
        );
        assert!(g.contains("$2 = 0xfff0"), "the reset vector, as said\n{g}");
        not_exercised("registers at a triple fault (KVM on AMD resets the vCPU)");
    } else {
        assert!(
            g.contains("$1 = 1"),
            "the core's rip is at the faulting ud2\n{g}\n{out}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_leaves_a_core_with_every_vcpu() {
    let dir = scratch("sigterm");
    let core = dir.join("vm.core");
    let g = guest("echo.elf");
    let mut vm = Vm::spawn(
        [
            "--kernel",
            g.to_str().unwrap(),
            "--cpus",
            "2",
            "--core",
            core.to_str().unwrap(),
        ],
        &[("RUST_LOG", "off")],
    );
    vm.wait_for_stdout("echo: ready", Duration::from_secs(20));
    vm.signal(libc::SIGTERM);
    let out = vm.wait(TIMEOUT);
    out.assert_code(143);
    let text = gdb_on_core(
        &g,
        &core,
        &[
            "info threads",
            "p $pc >= &serial_getc && $pc < &i8042_reset",
        ],
    );
    assert!(
        text.contains("LWP 1") && text.contains("LWP 2"),
        "both vCPUs\n{text}"
    );
    assert!(
        text.contains("$1 = 1"),
        "vCPU 0 was waiting for input\n{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn clean_reset_leaves_no_core() {
    let dir = scratch("clean");
    let core = dir.join("vm.core");
    let out = run_with_core("hello64.elf", &core, &[]);
    out.assert_code(0);
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "nothing left behind: {left:?}\n{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unwritable_core_path_is_refused_before_the_guest_runs() {
    let out = run_with_core("hello64.elf", Path::new("/nonexistent/dir/vm.core"), &[]);
    out.assert_code(1);
    let err = out.stderr_text();
    assert_eq!(err.lines().count(), 1, "one line\n{out}");
    assert!(err.contains("writable directory"), "{out}");
    assert!(out.stdout.is_empty(), "the guest never ran\n{out}");
}

/// A write that fails halfway (here: the file-size limit, as a full disk would) leaves no
/// file under the name asked for, and the status says the core is missing.
#[test]
fn failed_write_leaves_nothing_claimed_as_good() {
    let dir = scratch("full");
    let core = dir.join("vm.core");
    let g = guest("triple-fault.elf");
    let out = Command::new("prlimit")
        .arg("--fsize=1000000")
        .arg(common::minivmm())
        .args([
            "--kernel",
            g.to_str().unwrap(),
            "--core",
            core.to_str().unwrap(),
        ])
        .env("RUST_LOG", "off")
        .output()
        .expect("running prlimit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{err}");
    assert!(
        err.contains("triple-faulted"),
        "the reason is still said\n{err}"
    );
    assert!(err.contains("no core was kept"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "no file left: {left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn monitor_dump_writes_a_core_at_a_gdb_stop() {
    let dir = scratch("dump");
    let core = dir.join("stop.core");
    let mut vmm = Vmm::start("gdbtest.elf", &[]);
    let dump = format!("monitor dump {}", core.display());
    let out = gdb(
        &vmm,
        &["hbreak func_b", "continue", "continue", &dump, "kill"],
    );
    out.expect("core file written to");
    vmm.expect_exit(6);
    let text = gdb_on_core(
        &guest("gdbtest.elf"),
        &core,
        &["p $pc == &func_b", "p (long)counter"],
    );
    assert!(text.contains("$1 = 1"), "stopped at func_b\n{text}");
    assert!(text.contains("$2 = 2"), "func_a ran twice before\n{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn guest_panic_leaves_a_core_where_the_guest_reported_it() {
    let dir = scratch("panic");
    let core = dir.join("vm.core");
    let out = run_with_core("panic.elf", &core, &[]);
    out.assert_code(7);
    assert!(
        out.stderr_text()
            .lines()
            .last()
            .unwrap_or("")
            .contains("core file written to"),
        "{out}"
    );
    let text = gdb_on_core(
        &guest("panic.elf"),
        &core,
        &["p $pc > &panicked && $pc < &crash_loaded"],
    );
    assert!(
        text.contains("$1 = 1"),
        "rip just after the pvpanic write\n{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn timeout_leaves_a_core_with_the_spinning_rip() {
    let dir = scratch("timeout");
    let core = dir.join("vm.core");
    let out = run_with_core("spin.elf", &core, &["--timeout", "1"]);
    out.assert_code(8);
    let text = gdb_on_core(&guest("spin.elf"), &core, &["info symbol $pc"]);
    assert!(
        text.contains("spin"),
        "the core's rip is in the spin loop\n{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
