//! `monitor` commands: what GDB's own commands cannot show about a VM.

use gdbstub::outputln;
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd};

use super::DebugCaps;
use super::target::GdbTarget;
use crate::arch::debug::AddressSpace;
use crate::arch::kaslr::{KernelPlacement, find_kernel_placement};
use crate::coredump::{CoreFile, CoreSummary};
use crate::vm_control::{VcpuDebug, VcpuDebugStatus};

const HELP: &str = "\
minivmm monitor commands (they apply to the current thread's vCPU):
  monitor regs            control, segment, descriptor-table and debug registers
  monitor translate ADDR  walk the page tables for a virtual address, level by level
  monitor phys on|off     treat memory addresses as guest-physical (on) or virtual (off)
  monitor host            how this host's KVM serves break, hbreak and watch
  monitor kaslr           where the Linux kernel runs: its KASLR slide, _text, phys_base
  monitor kaslr stop on|off  stop when the kernel has mapped itself at a new slide
                          (scripts/gdbinit turns this on and relocates vmlinux there)
  monitor info version    minivmm's version (Linux's scripts/gdb ask this, as of QEMU)
  monitor dump PATH       write an ELF core file of the whole guest (as --core does)
  monitor quit            end minivmm
  monitor help            this text";

/// Parses a number the way GDB users type it: 0x-prefixed hex or decimal.
fn parse_addr(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// What `break`, `hbreak` and `watch` use on this host, in a GDB user's words.
fn describe_caps(caps: &DebugCaps) -> [&'static str; 3] {
    [
        match (caps.int3_exits, caps.exec_breakpoints_fire) {
            (true, _) => "break: int3 planted in guest memory (any number)",
            (false, true) => {
                "break: a debug register (int3 never reaches minivmm on this host; four at most, shared with hbreak and watch)"
            }
            (false, false) => {
                "break: refused (int3 never reaches minivmm and execution breakpoints never fire here)"
            }
        },
        if caps.exec_breakpoints_fire {
            "hbreak: debug registers DR0-DR3"
        } else {
            "hbreak: refused (execution breakpoints never fire on this host)"
        },
        if caps.data_breakpoints_fire {
            "watch/rwatch/awatch: debug registers DR0-DR3"
        } else {
            "watch: emulated by single-stepping (data breakpoints never fire on this host); rwatch/awatch: refused"
        },
    ]
}

impl MonitorCmd for GdbTarget {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), Self::Error> {
        let cmd = String::from_utf8_lossy(cmd);
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let cpu = self.current_cpu;
        match words.as_slice() {
            [] | ["help"] => outputln!(out, "{HELP}"),
            ["regs"] => match self.vcpu_request(cpu, VcpuDebug::DescribeSystemRegs)? {
                VcpuDebugStatus::Text(t) => {
                    outputln!(out, "vCPU {cpu}:");
                    for line in t.lines() {
                        outputln!(out, "{line}");
                    }
                }
                other => outputln!(out, "vCPU {cpu}: {other:?}"),
            },
            ["translate", addr] => match parse_addr(addr) {
                None => outputln!(
                    out,
                    "not an address: {addr} (use hex like 0xffffffff81000000)"
                ),
                Some(vaddr) => match self.vcpu_request(cpu, VcpuDebug::Translate(vaddr))? {
                    VcpuDebugStatus::Translation(Ok(t)) => {
                        outputln!(out, "vCPU {cpu}: {vaddr:#x}");
                        for step in &t.steps {
                            outputln!(
                                out,
                                "  {:<6} entry at {:#014x} = {:#018x}",
                                step.level,
                                step.entry_addr,
                                step.entry
                            );
                        }
                        outputln!(
                            out,
                            "  -> physical {:#x} ({} KiB page, {}, {})",
                            t.phys,
                            t.page_size / 1024,
                            if t.writable { "writable" } else { "read-only" },
                            if t.user { "user" } else { "supervisor" }
                        );
                    }
                    VcpuDebugStatus::Translation(Err(e)) => {
                        outputln!(out, "vCPU {cpu}: {vaddr:#x}: {e}")
                    }
                    other => outputln!(out, "vCPU {cpu}: {other:?}"),
                },
            },
            ["phys", "on"] => {
                self.address_space = AddressSpace::Physical;
                outputln!(out, "memory addresses are now guest-physical");
            }
            ["phys", "off"] => {
                self.address_space = AddressSpace::Virtual;
                outputln!(out, "memory addresses are now virtual (vCPU page tables)");
            }
            ["phys"] => outputln!(
                out,
                "memory addresses are {}",
                if self.address_space == AddressSpace::Physical {
                    "guest-physical"
                } else {
                    "virtual"
                }
            ),
            ["dump", path] => match self.dump_core(std::path::Path::new(path), &mut out) {
                Ok(summary) => outputln!(out, "{summary}"),
                Err(e) => outputln!(out, "{e}"),
            },
            ["kaslr"] => {
                let placement = self.kernel_placement(cpu);
                let link = self.kernel_map_watch.as_ref().map(|w| w.link_text);
                outputln!(out, "{}", describe_placement(link, placement));
                if let Some(slide) = self.kernel_mapped_stop {
                    outputln!(
                        out,
                        "this stop: minivmm's, the kernel has just mapped itself at slide {slide:#x}"
                    );
                }
            }
            ["kaslr", "stop", on_off @ ("on" | "off")] => match &self.kernel_map_watch {
                Some(watch) if watch.trap_installed => {
                    watch.request_stop(*on_off == "on");
                    outputln!(
                        out,
                        "kernel-mapping stop {on_off}: minivmm stops when the kernel has mapped itself at a new slide"
                    );
                }
                Some(_) => outputln!(
                    out,
                    "kernel-mapping stop unavailable: this host's KVM cannot trap the kernel's GS-base write (no MSR filter)"
                ),
                None => outputln!(
                    out,
                    "kernel-mapping stop unavailable: the kernel is not Linux"
                ),
            },
            // Linux's scripts/gdb take a stub that answers this for QEMU's, whose threads
            // are CPUs numbered from 1 (lx-cpus, $lx_current()): minivmm's are the same.
            ["info", "version"] => outputln!(out, "minivmm {}", env!("CARGO_PKG_VERSION")),
            ["host"] => {
                for line in describe_caps(&self.caps) {
                    outputln!(out, "{line}");
                }
            }
            ["quit"] => {
                outputln!(out, "ending minivmm");
                self.end_vm();
            }
            _ => outputln!(out, "unknown command '{cmd}'; try 'monitor help'"),
        }
        Ok(())
    }
}

/// `monitor kaslr`'s answer. Its first line is `slide 0x...` (or `slide unknown`), which
/// scripts/gdbinit reads.
fn describe_placement(link_text: Option<u64>, placement: Option<KernelPlacement>) -> String {
    match (link_text, placement) {
        (None, _) => "slide unknown: the kernel is not a Linux x86-64 image".to_string(),
        (Some(_), None) => "slide unknown: the kernel has not mapped itself yet (it is still \
             starting, or this vCPU is not in its page tables); ask again at a later stop"
            .to_string(),
        (Some(link), Some(p)) => format!(
            "slide {:#x}\n_text {:#x} (linked at {link:#x})\nphys_base {:#x}",
            p.slide, p.text, p.phys_base
        ),
    }
}

impl GdbTarget {
    /// Where the kernel is, through `cpu`'s page tables (the vCPU is stopped).
    pub(super) fn kernel_placement(&mut self, cpu: usize) -> Option<KernelPlacement> {
        let link = self.kernel_map_watch.as_ref()?.link_text;
        let state = self.stop_state_of(cpu).ok()?;
        find_kernel_placement(&self.mem, &state.paging, link)
    }

    /// `monitor dump`: every vCPU is stopped (GDB is at a stop), so each can be asked.
    fn dump_core(
        &mut self,
        path: &std::path::Path,
        out: &mut ConsoleOutput<'_>,
    ) -> Result<CoreSummary, String> {
        let core = CoreFile::create(path)
            .map_err(|e| e.to_string())?
            .for_linux_linked_at(self.kernel_map_watch.as_ref().map(|w| w.link_text));
        let mut cpus = Vec::with_capacity(self.vcpus.len());
        for cpu in 0..self.vcpus.len() {
            match self.vcpu_request(cpu, VcpuDebug::Snapshot) {
                Ok(VcpuDebugStatus::Snapshot(s)) => cpus.push(*s),
                other => {
                    core.discard();
                    return Err(format!(
                        "vCPU {cpu}'s registers could not be read: {other:?}"
                    ));
                }
            }
        }
        // Progress lines keep GDB from timing out on a large guest.
        let mut progress = |done: u64, total: u64| {
            outputln!(out, "writing RAM: {} of {} MiB", done >> 20, total >> 20);
            out.flush();
        };
        core.write_reporting(&self.mem, &cpus, self.current_cpu, &mut progress)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kaslr_answer_starts_with_the_slide() {
        let p = KernelPlacement {
            text: 0xffff_ffff_9c00_0000,
            slide: 0x1b00_0000,
            phys_base: 0x200_0000,
        };
        let text = describe_placement(Some(0xffff_ffff_8100_0000), Some(p));
        assert!(
            text.starts_with("slide 0x1b000000\n_text 0xffffffff9c000000"),
            "{text}"
        );
        assert!(describe_placement(Some(1), None).starts_with("slide unknown: the kernel has not"));
        assert!(describe_placement(None, Some(p)).starts_with("slide unknown: the kernel is not"));
    }

    #[test]
    fn parses_hex_and_decimal() {
        assert_eq!(
            parse_addr("0xffffffff81000000"),
            Some(0xffff_ffff_8100_0000)
        );
        assert_eq!(parse_addr("4096"), Some(4096));
        assert_eq!(parse_addr("zz"), None);
    }
}
