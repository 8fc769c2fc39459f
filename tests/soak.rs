//! Soak test of the GDB stub (issue "Hardening", item 4): in ONE minivmm process running
//! echo.elf (which polls the UART for input forever), many breakpoint stop/continue cycles,
//! many single-steps and many attach/detach cycles. Threads, open files and RSS of the
//! minivmm process (from /proc) must come back to where they started, and at the end the
//! guest still echoes a line and resets (exit status 0).
//!
//! Full counts: 10,000 breakpoint cycles with a hardware and 10,000 with a software
//! breakpoint, 10,000 steps, 1,000 attach/detach cycles.
//! `MINIVMM_SOAK_SCALE` (a factor, default 1) scales them, e.g. 0.1 for a quick run or 10
//! for a long one. The figures go to stderr as a table (`cargo test --test soak --
//! --nocapture`).

// Tests state what they expect with unwrap, expect and panic; the crate's lints are for
// code a guest or a debugger can reach.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod gdb_support;
mod rsp_client;

use std::fmt;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use gdb_support::{guest, symbol_addr};
use rsp_client::{RIP, Rsp, Stop, spawn_with_gdb};

const FULL_BREAKPOINT_CYCLES: f64 = 10_000.0;
const FULL_STEPS: f64 = 10_000.0;
const FULL_ATTACH_CYCLES: f64 = 1_000.0;
/// Most RSS may grow over the whole soak.
const RSS_GROWTH_LIMIT_KIB: u64 = 2 * 1024;

/// One look at the minivmm process.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Usage {
    threads: usize,
    fds: usize,
    rss_kib: u64,
    peak_rss_kib: u64,
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/PID/status"))
}

fn usage(pid: u32) -> Usage {
    let count = |what: &str| {
        fs::read_dir(format!("/proc/{pid}/{what}"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/{what}: {e}"))
            .count()
    };
    // The start-up probe's VM is torn down by a thread of its own, which on a slow host may
    // still be at it when the first reading is taken: it is not the stub's.
    let probe_teardown = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| {
                    fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "probe-teardown")
                })
                .count()
        })
        .unwrap_or(0);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    Usage {
        threads: count("task") - probe_teardown,
        fds: count("fd"),
        rss_kib: status_kib(&status, "VmRSS:"),
        peak_rss_kib: status_kib(&status, "VmHWM:"),
    }
}

/// The usage once the stub has let go of a closed connection: the thread and fd counts
/// must settle at `want` (else the last reading is returned, for the assertion to show).
fn settled_usage(pid: u32, want: Usage) -> Usage {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let u = usage(pid);
        if (u.threads == want.threads && u.fds == want.fds) || Instant::now() >= deadline {
            return u;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

struct Row {
    phase: &'static str,
    cycles: usize,
    secs: f64,
    usage: Usage,
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = &self.usage;
        write!(
            f,
            "| {:<28} | {:>7} | {:>7.1} | {:>7} | {:>3} | {:>8} | {:>8} |",
            self.phase, self.cycles, self.secs, u.threads, u.fds, u.rss_kib, u.peak_rss_kib
        )
    }
}

fn scaled(full: f64, scale: f64) -> usize {
    ((full * scale).round() as usize).max(1)
}

/// The addresses of serial_getc's polling loop (`in al, dx; test al, 1; jz <in>`): the
/// instruction addresses from the `in` to the `jz`, from GDB's disassembly.
fn poll_loop(elf: &std::path::Path) -> Vec<u64> {
    let getc = symbol_addr(elf, "serial_getc");
    let out = std::process::Command::new("gdb")
        .args(["-batch", "-nx"])
        .arg(elf)
        .args(["-ex", "x/6i serial_getc"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running gdb");
    let text = String::from_utf8_lossy(&out.stdout);
    let addr_of = |l: &str| gdb_support::parse_num(l.trim_start_matches("=>").trim());
    let insns: Vec<(u64, &str)> = text
        .lines()
        .filter_map(|l| Some((addr_of(l)?, l)))
        .collect();
    let (jz_at, jz) = *insns
        .iter()
        .find(|(_, l)| l.contains("\tje ") || l.contains("\tjz "))
        .unwrap_or_else(|| panic!("no conditional jump in serial_getc:\n{text}"));
    let target = jz
        .split_whitespace()
        .skip_while(|w| !matches!(*w, "je" | "jz"))
        .find_map(|w| {
            w.strip_prefix("0x")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
        })
        .unwrap_or_else(|| panic!("no jump target in {jz:?}"));
    assert!(target > getc && target < jz_at, "{text}");
    insns
        .iter()
        .map(|&(a, _)| a)
        .filter(|&a| a >= target && a <= jz_at)
        .collect()
}

#[test]
fn soak_stop_continue_step_attach_detach() {
    let scale: f64 = std::env::var("MINIVMM_SOAK_SCALE")
        .ok()
        .map(|s| s.parse().expect("MINIVMM_SOAK_SCALE: a number"))
        .unwrap_or(1.0);
    let bp_cycles = scaled(FULL_BREAKPOINT_CYCLES, scale);
    let steps = scaled(FULL_STEPS, scale);
    let attach_cycles = scaled(FULL_ATTACH_CYCLES, scale);
    eprintln!(
        "soak: MINIVMM_SOAK_SCALE={scale}: {bp_cycles} breakpoint cycles, {steps} single-steps, \
         {attach_cycles} attach/detach cycles"
    );

    let elf = guest("echo.elf");
    let loop_addrs = poll_loop(&elf);
    let bp = loop_addrs[0];
    let (mut vm, port) = spawn_with_gdb("echo.elf");
    let pid = vm.pid();

    // A first session lets the VM start; the guest then polls for input.
    let mut rsp = Rsp::connect(port);
    rsp.handshake(true);
    rsp.detach();
    vm.wait_for_stdout("echo: ready", Duration::from_secs(10));
    let t0 = Instant::now();
    let start = usage(pid);
    let mut rows = vec![Row {
        phase: "start (after one session)",
        cycles: 0,
        secs: 0.0,
        usage: start,
    }];
    let baseline = start;

    // 1. Stop at a breakpoint, continue past it as GDB does (remove it, step, insert it
    //    again), over and over, in one session: a hardware one (Z1), then a software one
    //    (Z0: an int3 written into guest memory and hidden from reads).
    let mut rsp = Rsp::connect(port);
    rsp.handshake(true);
    for (kind, phase) in [
        (1, "hw breakpoint stop/continue"),
        (0, "sw breakpoint stop/continue"),
    ] {
        let t = Instant::now();
        let insert = format!("Z{kind},{bp:x},1");
        let remove = format!("z{kind},{bp:x},1");
        assert_eq!(rsp.ask(&insert), "OK");
        for i in 0..bp_cycles {
            let stop = rsp.resume("vCont;c");
            assert_eq!(stop.trap_tid(), 1, "{phase} {i}: {stop:?}");
            if i % 1000 == 0 {
                assert_eq!(rsp.reg(1, RIP), bp, "{phase} {i}: not at the breakpoint");
            }
            assert_eq!(rsp.ask(&remove), "OK");
            assert_eq!(rsp.resume("vCont;s:p1.1").trap_tid(), 1, "{phase} {i}");
            assert_eq!(rsp.ask(&insert), "OK");
        }
        assert_eq!(rsp.ask(&remove), "OK");
        rows.push(Row {
            phase,
            cycles: bp_cycles,
            secs: t.elapsed().as_secs_f64(),
            usage: usage(pid),
        });
    }

    // 2. Single-steps (same session), staying in the polling loop.
    let t = Instant::now();
    for i in 0..steps {
        assert_eq!(rsp.resume("vCont;s:p1.1").trap_tid(), 1, "step {i}");
        if i % 1000 == 0 {
            let pc = rsp.reg(1, RIP);
            assert!(
                loop_addrs.contains(&pc),
                "step {i}: pc {pc:#x} left the loop {loop_addrs:x?}"
            );
        }
    }
    rsp.detach();
    rows.push(Row {
        phase: "single-step, then detach",
        cycles: steps,
        secs: t.elapsed().as_secs_f64(),
        usage: settled_usage(pid, baseline),
    });

    // 3. Attach and detach.
    let t = Instant::now();
    for i in 0..attach_cycles {
        let mut rsp = Rsp::connect(port);
        let stop = rsp.ask("?");
        assert!(
            matches!(Stop::parse(&stop), Stop::Signal { .. }),
            "attach {i}: {stop:?}"
        );
        rsp.handshake(false);
        rsp.detach();
    }
    rows.push(Row {
        phase: "attach/detach",
        cycles: attach_cycles,
        secs: t.elapsed().as_secs_f64(),
        usage: settled_usage(pid, baseline),
    });
    let end = rows.last().unwrap().usage;

    eprintln!(
        "\nminivmm GDB stub soak (echo.elf, 1 vCPU, one process, {:.1} s):\n\
         | phase                        |  cycles |       s | threads | fds |  RSS KiB | peak KiB |\n\
         |------------------------------|---------|---------|---------|-----|----------|----------|",
        t0.elapsed().as_secs_f64()
    );
    for r in &rows {
        eprintln!("{r}");
    }
    eprintln!();

    assert_eq!(
        end.threads, baseline.threads,
        "threads: {} at the start, {} at the end",
        baseline.threads, end.threads
    );
    assert_eq!(
        end.fds, baseline.fds,
        "open fds: {} at the start, {} at the end",
        baseline.fds, end.fds
    );
    let growth = end.rss_kib.saturating_sub(baseline.rss_kib);
    assert!(
        growth < RSS_GROWTH_LIMIT_KIB,
        "RSS grew by {growth} KiB ({} -> {} KiB)",
        baseline.rss_kib,
        end.rss_kib
    );
    let peak_growth = end.peak_rss_kib.saturating_sub(baseline.peak_rss_kib);
    assert!(
        peak_growth < RSS_GROWTH_LIMIT_KIB,
        "peak RSS grew by {peak_growth} KiB ({} -> {} KiB)",
        baseline.peak_rss_kib,
        end.peak_rss_kib
    );

    // The guest still works.
    vm.write_stdin(b"still alive\n");
    vm.wait_for_stdout("echo: still alive", Duration::from_secs(10));
    let out = vm.wait(Duration::from_secs(10));
    out.assert_code(0);
}
