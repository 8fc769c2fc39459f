//! A real, unmodified Linux kernel (Debian's stock cloud kernel, fetched by
//! scripts/fetch-linux.sh into a cache outside git) under minivmm.
//!
//! In `make test`: the early boot (banner, command line, e820) and GDB at the kernel's entry
//! point, which take about a minute each on an emulating nested-KVM host. The full boot to the
//! initramfs marker is `#[ignore]`d here and run by `make linux-test`.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

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

/// minivmm with the serial console read line by line on a thread.
struct Vm {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Vm {
    fn start(args: &[&str]) -> Vm {
        let mut child = Command::new(MINIVMM)
            .args(args)
            .env("RUST_LOG", "minivmm=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting minivmm");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Vm {
            child,
            lines: rx,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Waits for a serial line containing `needle`; panics with the console so far on timeout.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no serial line with {needle:?} within {timeout:?}; console so far:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    fn finish(mut self) -> (Option<i32>, String) {
        let _ = self.child.kill();
        let status = self.child.wait().ok().and_then(|s| s.code());
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
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

#[test]
fn linux_prints_banner_exact_cmdline_and_our_e820_map() {
    let linux = linux_dir();
    let kernel = linux.join("vmlinuz");
    let cmdline = "console=ttyS0 reboot=k earlyprintk=serial,ttyS0 minivmm.test=banner";
    let mut vm = Vm::start(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--mem",
        "256",
        "--cmdline",
        cmdline,
    ]);
    let banner = vm.wait_for("Linux version", EARLY);
    let got_cmdline = vm.wait_for("Command line:", Duration::from_secs(30));
    vm.wait_for("BIOS-e820", Duration::from_secs(30));
    let mut e820 = vec![vm.seen.last().cloned().unwrap_or_default()];
    for _ in 0..2 {
        e820.push(vm.wait_for("BIOS-e820", Duration::from_secs(30)));
    }
    let (_, stderr) = vm.finish();

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
    for (line, want) in e820.iter().zip(want) {
        assert!(
            line.ends_with(want),
            "e820 line {line:?} should end with {want:?}"
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn file_contains(path: &Path, needle: &str) -> bool {
    fs::read(path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

#[test]
fn gdb_stops_at_linux_entry_and_reads_kernel_memory() {
    let linux = linux_dir();
    let kernel = linux.join("vmlinuz");
    let port = free_port().to_string();
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
    let mut vm = Vm::start(&[
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
    ]);
    let marker = vm.wait_for("minivmm-init:", Duration::from_secs(900));
    let status = vm.child.wait().ok().and_then(|s| s.code());
    let (_, stderr) = vm.finish();
    let _ = fs::remove_file(&initrd);
    assert!(marker.contains("nproc=2"), "{marker}");
    assert!(
        marker.contains(&format!("cmdline={}", expected_cmdline(cmdline, &stderr))),
        "{marker}"
    );
    assert_eq!(
        status,
        Some(0),
        "the guest's reboot ends minivmm with 0\n{stderr}"
    );
}
