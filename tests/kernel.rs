//! The project's own test kernel (scripts/build-test-kernel.sh: Linux 6.1 with DWARF 5,
//! KASLR on, pvpanic) dying in a CI-like run: a panic ends minivmm with status 7 and leaves
//! a core that `gdb -x scripts/gdbinit vmlinux core` reads as a nokaslr kernel's would and
//! that Debian's `crash --kaslr auto vmlinux core` reads (bt, log, ps).
//!
//! Needs a hardware-virtualised host (the kernel boots in seconds there) and the kernel:
//! `make test` builds it and names it in MINIVMM_TEST_KERNEL. Elsewhere the tests say what
//! they could not exercise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod host;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Vm;
use host::test_kernel;

const BOOT: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn gdb_on_core(vmlinux: &Path, core: &Path, cmds: &[&str]) -> String {
    let mut c = Command::new("gdb");
    c.args(["-batch", "-nx", "-x"])
        .arg(repo().join("scripts/gdbinit"))
        .arg(vmlinux)
        .arg(core);
    for cmd in cmds {
        c.args(["-ex", cmd]);
    }
    let out = c.output().expect("running gdb");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs Debian's `crash` on the core with `cmds`, each output preceded by `==CMD==`.
/// `--kaslr auto`: crash finds the slide by itself only in kernels with modules (it looks
/// for `module_load_offset`); with it, crash takes the slide from the core's VMCOREINFO.
fn crash_on_core(vmlinux: &Path, core: &Path, cmds: &[&str]) -> String {
    let mut script = String::new();
    for cmd in cmds {
        script.push_str(&format!("echo =={cmd}==\n{cmd}\n"));
    }
    script.push_str("quit\n");
    let mut child = Command::new("crash")
        .args(["-s", "--kaslr", "auto"])
        .arg(vmlinux)
        .arg(core)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running crash (Debian: apt-get install crash)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(script.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().expect("crash");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "crash ended with {}\n{text}",
        out.status
    );
    text
}

/// The installed crash's version, from `crash --version` ("crash 8.0.2").
fn crash_version() -> (u32, u32, u32) {
    let out = Command::new("crash")
        .arg("--version")
        .output()
        .expect("crash --version");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .split_whitespace()
        .skip_while(|w| *w != "crash")
        .nth(1)
        .unwrap_or_else(|| panic!("no version in `crash --version`: {text}"));
    let mut n = v.split(['.', '-']).map(|x| x.parse::<u32>().unwrap_or(0));
    (
        n.next().unwrap_or(0),
        n.next().unwrap_or(0),
        n.next().unwrap_or(0),
    )
}

/// The part of `crash_on_core`'s output that `cmd` printed.
fn crash_section<'a>(text: &'a str, cmd: &str) -> &'a str {
    let start = text
        .find(&format!("=={cmd}==\n"))
        .unwrap_or_else(|| panic!("no output of crash's {cmd}\n{text}"));
    let rest = &text[start + cmd.len() + 5..];
    &rest[..rest.find("\n==").unwrap_or(rest.len())]
}

/// `echo c > /proc/sysrq-trigger` in the busybox shell, KASLR on: pvpanic ends minivmm
/// with status 7 and a core whose backtrace is the panic's, by symbol.
#[test]
fn sysrq_crash_ends_with_status_7_and_a_core_gdb_and_crash_read_by_symbol() {
    let Some(kernel) = test_kernel("a kernel panic's status and core") else {
        return;
    };
    let initrd = common::test_initramfs("panic");
    let dir = std::env::temp_dir().join(format!("minivmm-kernel-core-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let core = dir.join("vm.core");
    let bz = kernel.join("bzImage");
    let spawn = || {
        Vm::spawn(
            [
                "--kernel",
                bz.to_str().unwrap(),
                "--initrd",
                initrd.to_str().unwrap(),
                "--cpus",
                "2",
                "--mem",
                "512",
                "--cmdline",
                "console=ttyS0 minivmm.shell",
                "--core",
                core.to_str().unwrap(),
                "--timeout",
                "600",
            ],
            &[("RUST_LOG", "off")],
        )
    };
    // Typed only at the prompt: the kernel's serial driver drops what came before.
    let mut vm = spawn();
    if let Some(out) = vm.wait_for_stdout_or_exit("/ # ", BOOT) {
        assert!(
            host::known_test_host_triple_fault(out.code(), &out.stdout_text(), &out.stderr_text()),
            "minivmm exited before the shell's prompt\n{out}"
        );
        host::retrying_after_test_host_triple_fault("the test kernel's boot");
        vm = spawn();
        vm.wait_for_stdout("/ # ", BOOT);
    }
    vm.write_stdin(b"echo READY-$((40+2))\n");
    vm.wait_for_stdout("READY-42", Duration::from_secs(60));
    vm.write_stdin(b"echo c > /proc/sysrq-trigger\n");
    let out = vm.wait(BOOT);
    out.assert_code(7);
    let stdout = out.stdout_text();
    assert!(
        stdout.contains("Kernel panic - not syncing: sysrq triggered crash"),
        "{out}"
    );
    let err = out.stderr_text();
    assert!(err.contains("panicked on vCPU"), "{out}");
    assert!(
        err.lines()
            .last()
            .unwrap_or("")
            .contains("with the guest's VMCOREINFO"),
        "{out}"
    );

    let text = gdb_on_core(
        &kernel.join("vmlinux"),
        &core,
        &[
            "bt",
            "info threads",
            "p panic_cpu.counter",
            "p init_task.comm",
        ],
    );
    // The slide the kernel published (VMCOREINFO, which scripts/gdbinit applies) is the one
    // minivmm measured from the page tables (its own note, named on stderr).
    let said = |text: &str, key: &str| {
        text.split_once(key).map(|(_, rest)| {
            rest.chars()
                .take_while(|c| c.is_ascii_hexdigit() || *c == 'x')
                .collect::<String>()
        })
    };
    let published = said(&text, "minivmm: vmlinux relocated by the KASLR offset ");
    assert!(published.is_some(), "{text}");
    assert_eq!(
        published,
        said(&err, "kernel KASLR slide "),
        "{err}\n{text}"
    );
    for frame in [
        "panic (",
        "sysrq_handle_crash",
        "__handle_sysrq",
        "write_sysrq_trigger",
    ] {
        assert!(text.contains(frame), "bt shows {frame}\n{text}");
    }
    assert!(
        text.contains("LWP 1") && text.contains("LWP 2"),
        "every vCPU\n{text}"
    );
    // panic_cpu is -1 until a panic: a value read from the core, not vmlinux's image.
    assert!(
        text.contains("$1 = 0") || text.contains("$1 = 1"),
        "the panicking CPU, read from the core\n{text}"
    );
    assert!(text.contains("\"swapper/0"), "{text}");

    // crash: the panic, the panicking task's backtrace, the kernel's log, the task list.
    let tasks = "list task_struct.tasks -s task_struct.comm -h init_task";
    let text = crash_on_core(
        &kernel.join("vmlinux"),
        &core,
        &["sys", "bt", "log", "ps", tasks],
    );
    assert!(
        crash_section(&text, "sys")
            .contains("PANIC: \"Kernel panic - not syncing: sysrq triggered crash\""),
        "{text}"
    );
    let bt = crash_section(&text, "bt");
    // crash's frames read "#N [stack address] function at address". sysrq_handle_crash is
    // not among them: it ends with its call to the noreturn panic(), so the return address
    // on the stack lies past its end (gdb, which looks up return address - 1, shows it).
    for frame in [
        "] panic at ",
        "] __handle_sysrq at ",
        "] write_sysrq_trigger at ",
        "] ksys_write at ",
        "] entry_SYSCALL_64",
    ] {
        assert!(bt.contains(frame), "crash's bt shows {frame}\n{text}");
    }
    assert!(bt.contains("COMMAND: \"sh\""), "the shell panicked\n{text}");
    let log = crash_section(&text, "log");
    for line in [
        "Linux version 6.1",
        "Run /init as init process",
        "sysrq: Trigger a crash",
        "Kernel panic - not syncing: sysrq triggered crash",
    ] {
        assert!(log.contains(line), "crash's log shows {line}\n{text}");
    }
    // What the shell echoed went to the console, not to the kernel's log.
    assert!(!log.contains("READY-42"), "{text}");
    let ps = crash_section(&text, "ps");
    assert!(ps.contains("PID    PPID  CPU"), "{text}");
    for task in ["[swapper/0]", "[swapper/1]"] {
        assert!(ps.contains(task), "crash's ps lists {task}\n{text}");
    }
    // The panicking task is marked active (">").
    assert!(
        ps.lines().any(|l| l.starts_with('>') && l.ends_with(" sh")),
        "{text}"
    );
    // crash before 8.0.4 reads struct pid without its numbers[] (a flexible array since
    // Linux 6.5, backported to Debian's 6.1): ps then lists only the tasks that were on a
    // CPU. Walking init_task's task list works with any crash.
    if crash_version() >= (8, 0, 4) {
        assert!(
            ps.contains("[kthreadd]"),
            "crash's ps lists every task\n{text}"
        );
    } else {
        assert!(
            !ps.contains("[kthreadd]"),
            "crash < 8.0.4 lists every task: the README's caveat is out of date\n{text}"
        );
    }
    let list = crash_section(&text, tasks);
    for comm in ["swapper/0", "kthreadd", "init", "sh"] {
        assert!(
            list.contains(&format!("comm = \"{comm}\\000")),
            "crash's task list has {comm}\n{text}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_file(&initrd).unwrap();
}
