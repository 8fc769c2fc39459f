//! Shared helpers for minivmm's integration tests (`tests/boot.rs`, `tests/gdb.rs`).
//!
//! Every child process started through this module has a hard timeout and is killed when
//! its handle is dropped, so a broken VMM makes a test fail with its output instead of
//! hanging the suite.
//!
//! API:
//! - [`minivmm`], [`guest`]: the binary under test and a test guest built by `build.rs`.
//! - [`run`], [`run_env`]: run minivmm to completion (stdin written then closed) and get
//!   its [`Output`]; panics with everything captured if it outlives the timeout.
//! - [`Vm::spawn`]: a running minivmm with captured stdout/stderr, open stdin, signals,
//!   [`Vm::wait_for_stdout`], [`Vm::wait`]; killed on drop.
//! - [`free_port`]: a TCP port on 127.0.0.1 that was free a moment ago (for `--gdb`).

// Each test crate compiles this module separately and uses a subset of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The default hard timeout for one minivmm run. Guests finish in well under a second even
/// on a host whose KVM emulates guest code; this only bounds a hang.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The minivmm binary under test.
pub fn minivmm() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_minivmm"))
}

/// A test guest built by `build.rs` (see `guests/README.md`), e.g. `guest("hello64.elf")`.
/// Panics if it does not exist.
pub fn guest(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("MINIVMM_GUESTS_DIR")).join(name);
    assert!(path.is_file(), "test guest {} is missing", path.display());
    path
}

/// What a finished minivmm run left behind. `Display` prints all of it, for assertion
/// messages: `assert!(cond, "...\n{out}")`.
pub struct Output {
    pub status: ExitStatus,
    /// Raw bytes: the guest's serial output is not necessarily UTF-8.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// The exit code, or `None` if a signal ended the process.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Panics (showing everything) unless the process exited normally with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code(),
            Some(code),
            "expected exit status {code}\n{self}"
        );
    }

    /// Panics unless stdout has a line exactly equal to `line` (a trailing `\r` ignored).
    #[track_caller]
    pub fn assert_stdout_line(&self, line: &str) {
        let text = self.stdout_text();
        assert!(
            text.lines().any(|l| l.trim_end_matches('\r') == line),
            "expected the line {line:?} on stdout\n{self}"
        );
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => format!(
                "killed by signal {s}{}",
                if self.status.core_dumped() {
                    " (core dumped)"
                } else {
                    ""
                }
            ),
            _ => format!("{:?}", self.status),
        };
        const MAX: usize = 8192;
        let clip = |b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            if s.len() > MAX {
                let mut cut = s.len() - MAX;
                while !s.is_char_boundary(cut) {
                    cut += 1;
                }
                format!("[... {} bytes elided ...]{}", cut, &s[cut..])
            } else {
                s.into_owned()
            }
        };
        write!(
            f,
            "--- minivmm: {status}\n--- stdout ({} bytes):\n{}\n--- stderr ({} bytes):\n{}\n---",
            self.stdout.len(),
            clip(&self.stdout),
            self.stderr.len(),
            clip(&self.stderr)
        )
    }
}

/// Runs minivmm with `args`, writes `stdin` to it and closes it, and waits up to `timeout`.
/// Panics with the captured output if minivmm has not exited by then (it is killed).
pub fn run<I, S>(args: I, stdin: &[u8], timeout: Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_env(args, &[], stdin, timeout)
}

/// [`run`] with extra environment variables, e.g. `&[("RUST_LOG", "off")]`.
pub fn run_env<I, S>(args: I, env: &[(&str, &str)], stdin: &[u8], timeout: Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut vm = Vm::spawn(args, env);
    vm.write_stdin(stdin);
    vm.close_stdin();
    vm.wait(timeout)
}

/// A running minivmm. stdout and stderr are collected by background threads (so the child
/// never blocks on a full pipe); stdin stays open until [`Vm::close_stdin`]. Dropping it
/// kills the process.
pub struct Vm {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

impl Vm {
    /// Starts minivmm with `args` and extra environment variables `env`.
    pub fn spawn<I, S>(args: I, env: &[(&str, &str)]) -> Vm
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Vm::spawn_under(&[], args, env)
    }

    /// [`Vm::spawn`] through a `wrapper` command line (e.g. `setpriv ...`) that runs
    /// minivmm as its last argument.
    pub fn spawn_under<I, S>(wrapper: &[&str], args: I, env: &[(&str, &str)]) -> Vm
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(minivmm());
                c
            }
            None => Command::new(minivmm()),
        };
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Vm {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes to minivmm's stdin (the guest's serial input). Errors (minivmm already gone)
    /// are ignored: the exit status and output tell the story.
    pub fn write_stdin(&mut self, bytes: &[u8]) {
        if let Some(stdin) = &mut self.stdin {
            let _ = stdin.write_all(bytes).and_then(|_| stdin.flush());
        }
    }

    /// Closes minivmm's stdin (EOF for the serial input thread).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to minivmm.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child, which has not been reaped yet (we hold `child`).
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.child.id());
    }

    /// stdout and stderr captured so far.
    pub fn output_so_far(&self) -> (Vec<u8>, Vec<u8>) {
        (
            self.stdout.lock().unwrap().clone(),
            self.stderr.lock().unwrap().clone(),
        )
    }

    /// Like [`Vm::wait_for_stdout`], but when minivmm exits first this returns what it left
    /// (the caller decides what that ending means) instead of panicking.
    pub fn wait_for_stdout_or_exit(&mut self, needle: &str, timeout: Duration) -> Option<Output> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = {
                let out = self.stdout.lock().unwrap();
                out.windows(needle.len()).any(|w| w == needle.as_bytes())
            };
            if found {
                return None;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                let out = self.finish();
                let printed = out
                    .stdout
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes());
                return (!printed).then_some(out);
            }
            if Instant::now() >= deadline {
                let out = self.kill_and_finish();
                panic!("{needle:?} did not appear on stdout within {timeout:?}\n{out}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until stdout contains `needle`. Panics (killing minivmm, showing its output)
    /// if it does not appear within `timeout` or minivmm exits first.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let found = {
                let out = self.stdout.lock().unwrap();
                out.windows(needle.len()).any(|w| w == needle.as_bytes())
            };
            if found {
                return;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                // Exited: the readers may still hold the last bytes; collect them all.
                let out = self.finish();
                if out
                    .stdout
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes())
                {
                    return;
                }
                panic!("minivmm exited before printing {needle:?}\n{out}");
            }
            if Instant::now() >= deadline {
                let out = self.kill_and_finish();
                panic!("{needle:?} did not appear on stdout within {timeout:?}\n{out}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `timeout` for minivmm to exit and returns everything it printed. On
    /// timeout it is killed and this panics with the output.
    pub fn wait(mut self, timeout: Duration) -> Output {
        match self.wait_timeout(timeout) {
            Some(out) => out,
            None => {
                let out = self.kill_and_finish();
                panic!("minivmm did not exit within {timeout:?} (killed it)\n{out}");
            }
        }
    }

    /// Like [`Vm::wait`], but returns `None` (minivmm still running, not killed) on timeout.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Output> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Some(self.finish()),
                Ok(None) if Instant::now() >= deadline => return None,
                Ok(None) => thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("waiting for minivmm: {e}"),
            }
        }
    }

    fn kill_and_finish(&mut self) -> Output {
        let _ = self.child.kill();
        self.finish()
    }

    /// Reaps the child (which has exited or was killed) and collects all its output.
    fn finish(&mut self) -> Output {
        self.stdin = None;
        let status = self.child.wait().expect("waiting for minivmm");
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let (stdout, stderr) = self.output_so_far();
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A TCP port on 127.0.0.1 that was free when asked (the OS picks it). Another process may
/// take it before minivmm binds it, but that is rare enough for tests.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// minivmm's test initramfs with busybox from Debian (scripts/fetch-linux.sh, cached), built
/// in the temp directory under a name with `name` and this process's id.
pub fn test_initramfs(name: &str) -> std::path::PathBuf {
    let fetched = Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-linux.sh"),
    )
    .output()
    .expect("fetch-linux.sh");
    let linux = std::path::PathBuf::from(String::from_utf8_lossy(&fetched.stdout).trim());
    let out = std::env::temp_dir().join(format!(
        "minivmm-initramfs-{name}-{}.cpio.gz",
        std::process::id()
    ));
    build_initramfs(&linux, &out);
    out
}

/// Builds minivmm's test initramfs (its /init and busybox from `linux_dir`, the directory
/// scripts/fetch-linux.sh prints) at `out`, which should be in the temp directory: the
/// caches are read-only on the hardware-virtualised test host.
pub fn build_initramfs(linux_dir: &std::path::Path, out: &std::path::Path) {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("python3")
        .arg(repo.join("scripts/mkinitramfs.py"))
        .arg("--init")
        .arg(PathBuf::from(env!("MINIVMM_GUESTS_DIR")).join("linux-init"))
        .arg("--busybox")
        .arg(linux_dir.join("busybox"))
        .arg("-o")
        .arg(out)
        .status()
        .expect("running mkinitramfs.py");
    assert!(status.success(), "mkinitramfs.py failed");
}
