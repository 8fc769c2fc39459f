//! Helpers for the GDB stub tests (`tests/gdb.rs`, `tests/gdb_hostile.rs`).
//!
//! * [`Vmm`] runs minivmm with `--gdb` on a free port. The process is killed when the
//!   value is dropped (so a failing test never leaves a VM behind) and every wait on it
//!   has a hard deadline. Its serial output (stdout) and log (stderr) are collected in the
//!   background; its stdin is a pipe the test can write to (the guest's COM1 input).
//! * [`gdb`] runs one `gdb -batch -nx` session against it, also under a hard deadline, and
//!   returns everything GDB printed (stdout and stderr interleaved, as on a terminal).
//!
//! Nothing here sleeps for a fixed time to "let things start": minivmm is ready when its
//! log says it is waiting for GDB.

// Each test crate that includes this module uses a different subset of it.
#![allow(dead_code)]

#[path = "../host/mod.rs"]
pub mod host;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long minivmm may take to start listening for GDB.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline for one GDB session.
pub const GDB_TIMEOUT: Duration = Duration::from_secs(20);
/// Default deadline for minivmm to exit once the guest is expected to end.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The minivmm binary under test.
pub fn minivmm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_minivmm")
}

/// A test guest built by build.rs, e.g. `guest("gdbtest.elf")`.
pub fn guest(name: &str) -> PathBuf {
    PathBuf::from(env!("MINIVMM_GUESTS_DIR")).join(name)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().expect("local_addr").port()
}

/// Output collected from a child's pipe by a background thread.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<u8>>>);

impl Collected {
    fn spawn(mut pipe: impl Read + Send + 'static) -> Self {
        let c = Collected::default();
        let buf = c.0.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        c
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A running minivmm with a GDB stub; killed on drop.
pub struct Vmm {
    child: Child,
    pub port: u16,
    pub guest: PathBuf,
    stdin: Option<ChildStdin>,
    stdout: Collected,
    stderr: Collected,
    status: Option<ExitStatus>,
}

impl Vmm {
    /// Starts `minivmm --kernel <guest> --gdb <free port> <extra...>` (the VM waits for GDB)
    /// and returns once the stub listens.
    pub fn start(guest_name: &str, extra: &[&str]) -> Vmm {
        Vmm::start_logging(guest_name, extra, "minivmm=info")
    }

    /// [`Vmm::start`] with another `RUST_LOG` (`minivmm=debug` logs how each stop came about).
    pub fn start_logging(guest_name: &str, extra: &[&str], rust_log: &str) -> Vmm {
        let guest = guest(guest_name);
        // A port can be taken between free_port() and minivmm's bind; try a few.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut child = Command::new(minivmm_bin())
                .arg("--kernel")
                .arg(&guest)
                .arg("--gdb")
                .arg(port.to_string())
                .args(extra)
                .env("RUST_LOG", rust_log)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawning minivmm");
            let stdin = child.stdin.take();
            let stdout = Collected::spawn(child.stdout.take().unwrap());
            let stderr = Collected::spawn(child.stderr.take().unwrap());
            let mut vmm = Vmm {
                child,
                port,
                guest: guest.clone(),
                stdin,
                stdout,
                stderr,
                status: None,
            };
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                let log = vmm.log();
                if log.contains("waiting for GDB on") || log.contains("GDB can attach on") {
                    return vmm;
                }
                if vmm.try_status().is_some() {
                    last_log = log;
                    break; // e.g. the port was taken: try another
                }
                assert!(
                    Instant::now() < deadline,
                    "minivmm did not start listening for GDB within {START_TIMEOUT:?}; log:\n{log}"
                );
                thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("minivmm could not start its GDB stub; last log:\n{last_log}");
    }

    /// minivmm's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the guest printed on its serial port so far.
    pub fn serial(&self) -> String {
        self.stdout.text()
    }

    /// minivmm's log (stderr) so far.
    pub fn log(&self) -> String {
        self.stderr.text()
    }

    /// Whether this host's KVM fires hardware data breakpoints (as the host is known to be),
    /// after checking that minivmm's probe found the same (it logs "never fires data
    /// breakpoints" when they do not).
    pub fn hw_watchpoints_fire(&self) -> bool {
        let host = host::TestHost::current();
        let probe_says = !self.log().contains("never fires data breakpoints");
        assert_eq!(
            probe_says,
            host.data_breakpoints_fire(),
            "on a {host:?} host the probe found data breakpoints firing: {probe_says}\n{}",
            self.describe()
        );
        probe_says
    }

    /// Writes to the guest's serial input.
    pub fn send_input(&mut self, s: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin
            .write_all(s.as_bytes())
            .expect("writing minivmm stdin");
        stdin.flush().expect("flushing minivmm stdin");
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait on minivmm");
        }
        self.status
    }

    /// Whether minivmm is still running.
    pub fn running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits (at most `timeout`, else panics with the output so far) for minivmm to exit
    /// and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                // Let the reader threads drain the pipes.
                thread::sleep(Duration::from_millis(50));
                return s.code().unwrap_or(-1);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "minivmm did not exit within {timeout:?}\n--- serial:\n{}\n--- log:\n{}",
                    self.serial(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for minivmm to exit and asserts the exit code.
    pub fn expect_exit(&mut self, code: i32) {
        let got = self.wait_exit(EXIT_TIMEOUT);
        assert_eq!(
            got,
            code,
            "minivmm exit status\n--- serial:\n{}\n--- log:\n{}",
            self.serial(),
            self.log()
        );
    }

    /// Everything about this VM, for assertion messages.
    pub fn describe(&self) -> String {
        format!("--- serial:\n{}\n--- log:\n{}", self.serial(), self.log())
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a GDB session printed.
#[derive(Debug)]
pub struct GdbOutput {
    /// stdout and stderr, interleaved.
    pub text: String,
    pub status: ExitStatus,
    pub elapsed: Duration,
}

impl GdbOutput {
    /// The values of GDB's `$N = VALUE` lines, in order (`p/x $pc` → `"0x100000"`).
    pub fn values(&self) -> Vec<String> {
        self.text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix('$')?;
                let (num, val) = rest.split_once(" = ")?;
                num.parse::<u32>().ok()?;
                Some(val.trim().to_string())
            })
            .collect()
    }

    /// The `$N = VALUE` values parsed as numbers (hex with 0x, else decimal).
    pub fn numbers(&self) -> Vec<u64> {
        self.values()
            .iter()
            .map(|v| parse_num(v).unwrap_or_else(|| panic!("not a number: {v:?}\n{}", self.text)))
            .collect()
    }

    pub fn contains(&self, s: &str) -> bool {
        self.text.contains(s)
    }

    /// Panics with the whole transcript unless it contains `s`.
    #[track_caller]
    pub fn expect(&self, s: &str) {
        assert!(
            self.text.contains(s),
            "GDB output lacks {s:?}:\n{}",
            self.text
        );
    }

    /// Panics with the whole transcript if it contains `s`.
    #[track_caller]
    pub fn expect_not(&self, s: &str) {
        assert!(
            !self.text.contains(s),
            "GDB output unexpectedly has {s:?}:\n{}",
            self.text
        );
    }
}

/// `0x1f` or `31` (GDB's own number formats; the first word only).
pub fn parse_num(s: &str) -> Option<u64> {
    let w = s.split_whitespace().next()?;
    match w.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => w.parse().ok(),
    }
}

/// The `gdb` command line for a session on `vmm`: `-batch -nx <guest> -ex 'target remote'`
/// followed by one `-ex` per command.
pub fn gdb_command(vmm: &Vmm, cmds: &[&str]) -> (Command, std::io::PipeReader) {
    gdb_command_on(vmm, &vmm.guest, &[], cmds)
}

/// [`gdb_command`] with another symbol file (vmlinux for a bzImage guest) and `-iex`/`-x`
/// arguments before it (`leading`, as given).
pub fn gdb_command_on(
    vmm: &Vmm,
    symbols: &std::path::Path,
    leading: &[&str],
    cmds: &[&str],
) -> (Command, std::io::PipeReader) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut cmd = Command::new("gdb");
    cmd.arg("-batch").arg("-nx").args(leading).arg(symbols);
    // On the hardware-virtualised test host a guest busy with port I/O keeps L1 (under
    // TCG) so busy that the stub's first reply can take longer than GDB's 2 s default.
    if std::env::var_os("MINIVMM_ON_TEST_HOST").is_some() {
        cmd.arg("-ex").arg("set remotetimeout 10");
    }
    cmd.arg("-ex")
        .arg(format!("target remote 127.0.0.1:{}", vmm.port));
    for c in cmds {
        cmd.arg("-ex").arg(c);
    }
    cmd.stdin(Stdio::null())
        .stdout(writer.try_clone().expect("pipe clone"))
        .stderr(writer);
    (cmd, reader)
}

/// A GDB session started in the background (see [`gdb_spawn`]).
pub struct GdbSession {
    child: Child,
    out: Collected,
    started: Instant,
}

impl GdbSession {
    /// Sends SIGINT to GDB, as Ctrl-C on its terminal would (GDB then interrupts the target).
    pub fn interrupt(&self) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        assert_eq!(r, 0, "kill(SIGINT) on gdb");
    }

    /// Waits for GDB to end (at most `timeout`; else kills it and panics with its output).
    pub fn finish(mut self, timeout: Duration) -> GdbOutput {
        let deadline = self.started + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on gdb") {
                thread::sleep(Duration::from_millis(20));
                return GdbOutput {
                    text: self.out.text(),
                    status,
                    elapsed: self.started.elapsed(),
                };
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "gdb did not finish within {timeout:?} (hung stub?); output so far:\n{}",
                    self.out.text()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for GdbSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `gdb -batch -nx` on `vmm` with `cmds`, without waiting for it.
pub fn gdb_spawn(vmm: &Vmm, cmds: &[&str]) -> GdbSession {
    let (cmd, reader) = gdb_command(vmm, cmds);
    gdb_spawn_command(cmd, reader)
}

/// Starts a command from [`gdb_command_on`], without waiting for it.
pub fn gdb_spawn_command(mut cmd: Command, reader: std::io::PipeReader) -> GdbSession {
    let child = cmd.spawn().expect("spawning gdb (is it installed?)");
    // The Command still holds the write ends; drop it so the reader sees EOF.
    drop(cmd);
    GdbSession {
        child,
        out: Collected::spawn(reader),
        started: Instant::now(),
    }
}

/// Runs one `gdb -batch -nx` session on `vmm` to its end (hard deadline [`GDB_TIMEOUT`]).
pub fn gdb(vmm: &Vmm, cmds: &[&str]) -> GdbOutput {
    gdb_spawn(vmm, cmds).finish(GDB_TIMEOUT)
}

/// The address of `symbol` in `elf`, asked of GDB without a target (no nm needed).
pub fn symbol_addr(elf: &std::path::Path, symbol: &str) -> u64 {
    let out = Command::new("gdb")
        .args(["-batch", "-nx"])
        .arg(elf)
        .arg("-ex")
        .arg(format!("p/x (long)&{symbol}"))
        .stdin(Stdio::null())
        .output()
        .expect("running gdb");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split_once(" = ").and_then(|(_, v)| parse_num(v)))
        .unwrap_or_else(|| panic!("no address for {symbol} in {}: {text}", elf.display()))
}
