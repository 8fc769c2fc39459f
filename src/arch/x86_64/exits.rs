//! The x86-specific part of exit handling: debug exits (breakpoints, steps, watchpoints),
//! KVM internal errors (the int3 and instruction assists of hosts that emulate guest code)
//! and entry failures. The generic dispatch in `vcpu::exit` hands these exits here.

use kvm_bindings::kvm_debug_exit_arch;
use log::debug;

use super::assist;
use super::cpu::MSR_GS_BASE;
use super::debug::{BP_VECTOR, DB_VECTOR, paging_context, reinject_exception};
use super::debug::{DebugConfig, DebugExit, DebugStop, SoftWatch, classify_debug_exit};
use super::debugreg::HwBreakKind;
use super::kaslr::find_kernel_placement;
use super::paging::PagingContext;
use super::vcpu_ops::VcpuOps;
use crate::memory::GuestMem;
use crate::vm_control::KernelMapWatch;

/// KVM_INTERNAL_ERROR_EMULATION: the in-kernel emulator met an instruction it cannot run.
pub const SUBERROR_EMULATION: u32 = 1;
/// KVM_INTERNAL_ERROR_SIMUL_EX: an exception while delivering another one.
const SUBERROR_SIMULTANEOUS_EXCEPTION: u32 = 2;
/// KVM_INTERNAL_ERROR_DELIVERY_EV: an exit KVM cannot handle while delivering an event.
const SUBERROR_DELIVERY_EVENT: u32 = 3;

/// What an x86-specific exit comes to for the vCPU loop.
#[derive(Debug, PartialEq, Eq)]
pub enum ArchExit {
    /// Run the guest again.
    Continue,
    /// Stop for the debugger.
    DebugStop(DebugStop),
    /// The vCPU cannot go on; the text says what happened and where.
    Crash(String),
}

/// What the debugger asked this vCPU to trap on, and what exit handling remembers between
/// exits. Owned by the vCPU thread.
#[derive(Default)]
pub struct DebugTraps {
    /// What KVM_SET_GUEST_DEBUG was last given.
    pub config: DebugConfig,
    /// Sorted linear addresses of the software breakpoints the debugger planted.
    sw_breakpoints: Vec<u64>,
    /// Write watchpoints emulated by single-stepping.
    pub soft_watches: Vec<SoftWatch>,
    /// Where the last exit re-ran an instruction whose int3 the debugger had lifted; a second
    /// failure there in a row is a real one.
    rerun_after_lifted_int3: Option<u64>,
}

impl DebugTraps {
    /// Replaces the planted software breakpoints; returns whether there are any.
    pub fn set_sw_breakpoints(&mut self, mut addrs: Vec<u64>) -> bool {
        addrs.sort_unstable();
        self.sw_breakpoints = addrs;
        !self.sw_breakpoints.is_empty()
    }

    fn is_planted(&self, linear: u64) -> bool {
        self.sw_breakpoints.binary_search(&linear).is_ok()
    }

    /// Where the previous exit re-ran a lifted int3's instruction. Taken at every exit: the
    /// re-run only concerns the exit right after it.
    pub fn take_rerun(&mut self) -> Option<u64> {
        self.rerun_after_lifted_int3.take()
    }

    /// The first emulated watchpoint whose memory changed, as a stop.
    fn soft_watch_hit(&mut self, vcpu: &impl VcpuOps, mem: &GuestMem) -> Option<DebugStop> {
        if self.soft_watches.is_empty() {
            return None;
        }
        let ctx = paging_context(vcpu).ok()?;
        let mut hit = None;
        for w in self.soft_watches.iter_mut() {
            // Every watch refreshes its snapshot, so one write is reported once.
            if w.changed(mem, &ctx) && hit.is_none() {
                debug!(
                    "Watch at {:#x} by single-stepping (memory compared)",
                    w.addr
                );
                hit = Some(DebugStop::Watch {
                    addr: w.addr,
                    kind: HwBreakKind::Write,
                });
            }
        }
        hit
    }
}

/// A WRMSR that KVM's MSR filter sent here: only GS base is filtered (see
/// `install_kernel_map_trap`). The write is done as the guest asked; then, when the write
/// comes from a Linux kernel on its own page tables, its placement is measured and the
/// debugger is stopped if it asked to be (`KernelMapWatch`). A write KVM refuses gives the
/// guest the #GP it would have had.
pub fn handle_wrmsr(
    vcpu: &mut impl VcpuOps,
    mem: &GuestMem,
    index: u32,
    value: u64,
    watch: Option<&KernelMapWatch>,
) -> ArchExit {
    if let Err(e) = vcpu.set_msr(index, value) {
        debug!("WRMSR {index:#x} <- {value:#x} failed: {e}");
        vcpu.fail_msr_exit();
        return ArchExit::Continue;
    }
    let (Some(watch), MSR_GS_BASE) = (watch, index) else {
        return ArchExit::Continue;
    };
    let Ok(sregs) = vcpu.sregs() else {
        return ArchExit::Continue;
    };
    let paging = PagingContext {
        cr0: sregs.cr0,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
    };
    match find_kernel_placement(mem, &paging, watch.link_text) {
        Some(p) if watch.should_stop_for(p.slide) => {
            debug!(
                "the kernel mapped itself: _text at {:#x}, KASLR slide {:#x}; stopping for the debugger",
                p.text, p.slide
            );
            ArchExit::DebugStop(DebugStop::KernelMapped { slide: p.slide })
        }
        _ => ArchExit::Continue,
    }
}

/// KVM_EXIT_DEBUG: a stop for the debugger, a step that only checks emulated watchpoints, or
/// an exception that belongs to the guest.
pub fn handle_debug_exit(
    vcpu: &impl VcpuOps,
    mem: &GuestMem,
    exit: &kvm_debug_exit_arch,
    traps: &mut DebugTraps,
) -> ArchExit {
    let ours = |pc: u64| traps.is_planted(pc);
    match classify_debug_exit(exit, &traps.config, ours) {
        DebugExit::Stop(DebugStop::Step) => {
            ArchExit::DebugStop(traps.soft_watch_hit(vcpu, mem).unwrap_or(DebugStop::Step))
        }
        DebugExit::Stop(stop) => {
            // Which mechanism stopped the vCPU differs by host; tests assert it from this.
            debug!(
                "{stop:?} at {:#x} through KVM_EXIT_DEBUG (exception {})",
                exit.pc, exit.exception
            );
            ArchExit::DebugStop(stop)
        }
        DebugExit::WatchStep => match traps.soft_watch_hit(vcpu, mem) {
            Some(stop) => ArchExit::DebugStop(stop),
            None => ArchExit::Continue,
        },
        DebugExit::GuestBreakpoint => reinject(vcpu, BP_VECTOR),
        DebugExit::GuestDebugTrap => reinject(vcpu, DB_VECTOR),
    }
}

fn reinject(vcpu: &impl VcpuOps, vector: u32) -> ArchExit {
    match reinject_exception(vcpu, vector) {
        Ok(()) => ArchExit::Continue,
        Err(e) => ArchExit::Crash(format!(
            "could not give exception {vector} back to the guest: {e}"
        )),
    }
}

/// KVM_EXIT_FAIL_ENTRY: the crash report.
pub fn describe_entry_failure(
    vcpu: &impl VcpuOps,
    mem: &GuestMem,
    reason: u64,
    host_cpu: u32,
) -> String {
    format!(
        "KVM could not enter the guest (hardware entry failure reason {reason:#x} on host CPU {host_cpu})\n{}",
        assist::describe_state(vcpu, mem)
    )
}

/// KVM_EXIT_INTERNAL_ERROR. On hosts that emulate guest code, an emulation failure may be a
/// debugger's breakpoint, an instruction minivmm can run itself, or the guest's own int3;
/// anything else ends the vCPU. `rerun_at` is what `DebugTraps::take_rerun` gave at this exit.
pub fn handle_internal_error(
    vcpu: &mut impl VcpuOps,
    mem: &GuestMem,
    cpu: usize,
    traps: &mut DebugTraps,
    rerun_at: Option<u64>,
) -> ArchExit {
    let internal = vcpu.internal_error();
    if internal.suberror == SUBERROR_EMULATION
        && let Some(fault) = assist::fetch_fault(&*vcpu, mem)
    {
        let linear_rip = fault.linear_rip;
        match breakpoint_failure(&fault.bytes, linear_rip, &traps.sw_breakpoints, rerun_at) {
            // This host reports int3 as an emulation failure; RIP is still at the int3,
            // exactly where a debugger expects a software breakpoint stop.
            BreakpointFailure::Hit => {
                debug!("vCPU {cpu}: SwBreak at {linear_rip:#x} through an emulation failure");
                return ArchExit::DebugStop(DebugStop::SwBreak);
            }
            BreakpointFailure::Lifted => {
                debug!(
                    "vCPU {cpu}: breakpoint at {linear_rip:#x} lifted under its int3; running the instruction again"
                );
                traps.rerun_after_lifted_int3 = Some(linear_rip);
                return ArchExit::Continue;
            }
            BreakpointFailure::Unrelated => {}
        }
        match assist::emulate_unsupported(&*vcpu, &fault) {
            Ok(Some(insn)) => {
                debug!("vCPU {cpu}: emulated {insn:?} at {linear_rip:#x}");
                return ArchExit::Continue;
            }
            Ok(None) => {}
            Err(e) => return ArchExit::Crash(format!("emulating an instruction failed: {e}")),
        }
        if assist::is_int3(&fault.bytes) {
            // Only a host that emulates guest code gets here: deliver the #BP the guest
            // would have taken on hardware.
            return match assist::inject_breakpoint(&*vcpu, &fault) {
                Ok(()) => {
                    debug!(
                        "vCPU {cpu}: the guest's own int3 at {linear_rip:#x} given to it as #BP (an emulation failure)"
                    );
                    ArchExit::Continue
                }
                Err(e) => ArchExit::Crash(format!("could not inject #BP: {e}")),
            };
        }
    }
    let what = match internal.suberror {
        SUBERROR_EMULATION => "instruction emulation failed".to_string(),
        SUBERROR_SIMULTANEOUS_EXCEPTION => {
            "a simultaneous exception (double fault while delivering an event)".to_string()
        }
        SUBERROR_DELIVERY_EVENT => "an exit during event delivery".to_string(),
        n => format!("suberror {n}, {} data words", internal.ndata),
    };
    ArchExit::Crash(format!(
        "KVM internal error on vCPU {cpu}: {what}\n{}",
        assist::describe_state(&*vcpu, mem)
    ))
}

/// How an emulation failure relates to the debugger's software breakpoints.
#[derive(Debug, PartialEq, Eq)]
enum BreakpointFailure {
    /// The vCPU is on a planted int3: a breakpoint stop.
    Hit,
    /// The address of a planted breakpoint holds the original byte again: the int3 the vCPU
    /// failed on was lifted before the exit was handled (GDB removes every breakpoint when
    /// another vCPU stops). Running the instruction again is right; if the breakpoint is
    /// back by then, the vCPU stops on it as usual.
    Lifted,
    /// Not the debugger's business.
    Unrelated,
}

/// `insn`: the bytes at the failing `rip` now; `planted`: the sorted breakpoint addresses;
/// `rerun_at`: where the previous exit already re-ran an instruction (a second failure in a
/// row there is a real one).
fn breakpoint_failure(
    insn: &[u8],
    rip: u64,
    planted: &[u64],
    rerun_at: Option<u64>,
) -> BreakpointFailure {
    if planted.binary_search(&rip).is_err() {
        BreakpointFailure::Unrelated
    } else if assist::is_int3(insn) {
        BreakpointFailure::Hit
    } else if rerun_at != Some(rip) {
        BreakpointFailure::Lifted
    } else {
        BreakpointFailure::Unrelated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INT3: &[u8] = &[0xcc, 0x90];
    const AND_EDI: &[u8] = &[0x83, 0xe7, 0x3f];
    const PLANTED: &[u64] = &[0x100060, 0x100080];

    #[test]
    fn failure_on_a_planted_int3_is_a_breakpoint_stop() {
        assert_eq!(
            breakpoint_failure(INT3, 0x100060, PLANTED, None),
            BreakpointFailure::Hit
        );
        // Even right after a re-run there: the breakpoint is back.
        assert_eq!(
            breakpoint_failure(INT3, 0x100060, PLANTED, Some(0x100060)),
            BreakpointFailure::Hit
        );
    }

    #[test]
    fn lifted_int3_reruns_once_then_counts_as_a_real_failure() {
        assert_eq!(
            breakpoint_failure(AND_EDI, 0x100060, PLANTED, None),
            BreakpointFailure::Lifted
        );
        assert_eq!(
            breakpoint_failure(AND_EDI, 0x100060, PLANTED, Some(0x100060)),
            BreakpointFailure::Unrelated
        );
        assert_eq!(
            breakpoint_failure(AND_EDI, 0x100080, PLANTED, Some(0x100060)),
            BreakpointFailure::Lifted
        );
    }

    #[test]
    fn failures_away_from_planted_breakpoints_are_not_the_debuggers() {
        // The guest's own int3 (delivered to the guest) and any other failure.
        assert_eq!(
            breakpoint_failure(INT3, 0x200000, PLANTED, None),
            BreakpointFailure::Unrelated
        );
        assert_eq!(
            breakpoint_failure(AND_EDI, 0x200000, &[], None),
            BreakpointFailure::Unrelated
        );
    }
}
