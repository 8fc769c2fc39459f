//! minivmm exits as soon as the guest is done and leaves the host kernel's VM teardown to a
//! short-lived keeper process ('minivmm-cleanup'). What must hold whatever the timing:
//! - minivmm's exit status is still the guest's (reset, triple fault, panic, a signal);
//! - the keeper ends on its own, normally (status 0), once minivmm is gone: nothing stays
//!   behind, and the keeper's exit is where the kernel releases the VM;
//! - the keeper holds nothing of minivmm's but the VM (no stdout/stderr pipe of the caller's);
//! - `--wait-teardown` starts no keeper.
//!
//! This test process makes itself a child subreaper, so the keepers of the minivmm processes
//! it starts are reparented to it and it can wait for them by pid. Tests run one at a time
//! here (a lock): the no-keeper check looks at all of this process's children.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::sync::{Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use common::{Output, TIMEOUT, Vm, guest, run_env};

/// The keeper must be gone within this after minivmm exits. Its work is milliseconds; the
/// slack is for a busy 2-core host.
const KEEPER_LIMIT: Duration = Duration::from_secs(20);
const LOG_TEARDOWN: (&str, &str) = ("RUST_LOG", "minivmm::teardown=debug");
const KEEPER_NAME: &str = "minivmm-cleanup";

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a process attribute; no memory is passed.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER failed");
    });
}

/// The keeper's pid, from minivmm's debug log.
fn keeper_pid(out: &Output) -> Option<i32> {
    let err = out.stderr_text();
    let at = err.find("VM teardown left to process ")?;
    let rest = &err[at + "VM teardown left to process ".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// (state, ppid, comm) of a process from /proc/PID/stat, if it is still there.
fn stat(pid: i32) -> Option<(char, i32, String)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let mut rest = s[close + 2..].split(' ');
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid, comm))
}

/// What the keeper's fds point at, if it is still alive and they can be read.
fn fd_targets(pid: i32) -> Option<Vec<String>> {
    let dir = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let mut out = Vec::new();
    for entry in dir {
        let target = fs::read_link(entry.ok()?.path()).ok()?;
        out.push(target.to_string_lossy().into_owned());
    }
    Some(out)
}

/// Waits for our child `pid` to end; its wait status, or None if it did not within the limit.
fn reap(pid: i32, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waits for one specific child of ours; `status` is a local.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(
            rc >= 0,
            "waitpid({pid}): {} (the keeper is not our child: was it reparented elsewhere?)",
            std::io::Error::last_os_error()
        );
        if rc == pid {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Checks everything about the keeper of a minivmm run that has just ended.
fn check_keeper(out: &Output) {
    let me = std::process::id() as i32;
    let pid = keeper_pid(out).unwrap_or_else(|| panic!("minivmm started no keeper\n{out}"));
    // Alive or a zombie, it is ours now: minivmm is gone, and we are the subreaper.
    if let Some((state, ppid, comm)) = stat(pid) {
        assert_eq!(comm, KEEPER_NAME, "process {pid} is not the keeper\n{out}");
        assert_eq!(ppid, me, "the keeper was not reparented to us\n{out}");
        // Alive, its fds must be the VM's and its wait pipe's, nothing of the caller's
        // (minivmm's stdout and stderr are pipes to this test: their EOF must not wait for
        // the keeper). Already exiting, there is nothing left to look at.
        match fd_targets(pid) {
            Some(fds) if state != 'Z' && !fds.is_empty() => {
                let vm = fds.iter().filter(|t| *t == "anon_inode:kvm-vm").count();
                let pipes = fds.iter().filter(|t| t.starts_with("pipe:")).count();
                assert!(
                    vm + pipes == fds.len() && pipes <= 1 && vm <= 1,
                    "the keeper holds {fds:?}: only the VM (anon_inode:kvm-vm) and its wait pipe expected\n{out}"
                );
                eprintln!("keeper {pid} alive after minivmm's exit, holding {fds:?}");
            }
            _ => eprintln!("keeper {pid} already exiting: its fds could not be checked"),
        }
    }
    let status = reap(pid, KEEPER_LIMIT).unwrap_or_else(|| {
        panic!("the keeper {pid} still runs {KEEPER_LIMIT:?} after minivmm's exit\n{out}")
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the keeper {pid} ended with wait status {status:#x}, not exit status 0\n{out}"
    );
    assert!(stat(pid).is_none(), "the keeper {pid} is still there");
}

/// Our children named like the keeper (alive or zombie).
fn keepers_among_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|(_, ppid, comm)| ppid == me && comm == KEEPER_NAME))
        .collect()
}

#[test]
fn exit_status_is_the_guests_and_the_keeper_ends_on_its_own() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    for (elf, code) in [
        ("reset-pvh.elf", 0),
        ("triple-fault.elf", 3),
        ("panic.elf", 7),
    ] {
        let out = run_env(
            ["--kernel".as_ref(), guest(elf).as_os_str()],
            &[LOG_TEARDOWN],
            b"",
            TIMEOUT,
        );
        out.assert_code(code);
        check_keeper(&out);
    }
}

#[test]
fn a_signal_still_gives_its_status_and_the_keeper_ends() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    let mut vm = Vm::spawn(
        ["--kernel".as_ref(), guest("spin.elf").as_os_str()],
        &[LOG_TEARDOWN],
    );
    vm.wait_for_stdout("spin: spinning forever", TIMEOUT);
    vm.signal(libc::SIGTERM);
    let out = vm.wait(TIMEOUT);
    out.assert_code(128 + libc::SIGTERM);
    check_keeper(&out);
}

/// A pipe's write end that minivmm inherits (not close-on-exec, like a caller's stdout): once
/// minivmm has exited, its reader must see EOF at once, without waiting for the keeper. The
/// keeper is cloned with a copy of minivmm's fds and closes them before minivmm may exit.
#[test]
fn the_callers_pipes_see_eof_when_minivmm_exits() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    for round in 0..5 {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the array; the read end is made close-on-exec, the write end is
        // inherited by the child on purpose.
        unsafe {
            assert_eq!(libc::pipe2(fds.as_mut_ptr(), 0), 0);
            libc::fcntl(fds[0], libc::F_SETFD, libc::FD_CLOEXEC);
        }
        let [read_end, write_end] = fds;
        let out = run_env(
            ["--kernel".as_ref(), guest("reset-pvh.elf").as_os_str()],
            &[LOG_TEARDOWN],
            b"",
            TIMEOUT,
        );
        // SAFETY: our copy of the write end, then a non-blocking read of our read end.
        let (n, err) = unsafe {
            libc::close(write_end);
            libc::fcntl(read_end, libc::F_SETFL, libc::O_NONBLOCK);
            let mut byte = 0u8;
            let n = libc::read(read_end, (&raw mut byte).cast(), 1);
            (n, std::io::Error::last_os_error())
        };
        // SAFETY: our read end, no longer used.
        unsafe { libc::close(read_end) };
        out.assert_code(0);
        assert_eq!(
            n, 0,
            "round {round}: the inherited pipe is not at EOF after minivmm's exit ({err}): \
             another process (the keeper) still holds it\n{out}"
        );
        check_keeper(&out);
    }
}

#[test]
fn wait_teardown_starts_no_keeper() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    let out = run_env(
        [
            "--kernel".as_ref(),
            guest("reset-pvh.elf").as_os_str(),
            "--wait-teardown".as_ref(),
        ],
        &[LOG_TEARDOWN],
        b"",
        TIMEOUT,
    );
    out.assert_code(0);
    assert_eq!(
        keeper_pid(&out),
        None,
        "--wait-teardown started a keeper\n{out}"
    );
    let left = keepers_among_children();
    assert!(left.is_empty(), "keepers left behind: {left:?}\n{out}");
}
