//! The debugger's side of a vCPU thread: stop notifications, and the `VcpuDebug` requests it
//! serves while paused.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::arch::coredump::CpuSnapshot;
use crate::arch::debug::{self as archdebug, DebugConfig, DebugError, DebugStop, SoftWatch};
use crate::vm_control::{VcpuDebug, VcpuDebugStatus};

use super::{DebugState, Vcpu};

impl Vcpu {
    /// Tells the debugger this vCPU stopped (it is paused now), with where it is. Stepping
    /// stays as it is: the debugger says, before every resume, whether to step, so a run of
    /// `stepi`s programs KVM only once.
    pub(super) fn vcpu_exit_debug(&self, stop: DebugStop, debug: &mut DebugState) {
        if let Some(ch) = &self.debug {
            debug.stops_sent += 1;
            let state = archdebug::read_stop_state(&self.fd, debug.synced_regs).ok();
            ch.send(self.index, VcpuDebugStatus::Stopped { stop, state });
        }
    }

    /// Programs KVM only when the debug configuration actually changed.
    fn apply_debug(
        &mut self,
        debug: &mut DebugState,
        change: impl FnOnce(&mut DebugConfig),
    ) -> Result<VcpuDebugStatus, DebugError> {
        let config = &mut debug.traps.config;
        let before = config.clone();
        change(config);
        if *config != before {
            // Until KVM took the new setting, kvm_run's copy is not to be trusted.
            debug.synced_regs = false;
            debug.synced_regs =
                archdebug::set_guest_debug(&mut self.fd, config, self.host_syncs_regs)?;
        }
        Ok(VcpuDebugStatus::CommandComplete)
    }

    /// Serves a debugger request (the vCPU is paused). Errors become text here, where they
    /// leave for the GDB thread, which logs them and refuses GDB's request.
    pub(super) fn vcpu_control_debug(
        &mut self,
        req: VcpuDebug,
        debug: &mut DebugState,
        paused: &AtomicBool,
    ) -> VcpuDebugStatus {
        let block_irq = self.block_irq_when_stepping;
        let result = match req {
            VcpuDebug::Resume { stops_received } => {
                if stops_received >= debug.stops_sent {
                    paused.store(false, Ordering::SeqCst);
                }
                Ok(VcpuDebugStatus::CommandComplete)
            }
            VcpuDebug::ReadRegs => {
                archdebug::read_registers(&self.fd).map(|r| VcpuDebugStatus::RegValues(Box::new(r)))
            }
            VcpuDebug::Snapshot => {
                CpuSnapshot::capture(&self.fd).map(|s| VcpuDebugStatus::Snapshot(Box::new(s)))
            }
            VcpuDebug::ReadStopState => {
                // Not from kvm_run: GDB may have written registers since the exit.
                archdebug::read_stop_state(&self.fd, false).map(VcpuDebugStatus::StopState)
            }
            VcpuDebug::WriteRegs(regs) => archdebug::write_registers(&self.fd, &regs)
                .map(|_| VcpuDebugStatus::CommandComplete),
            VcpuDebug::WriteMem(addr, data, space) => archdebug::paging_context(&self.fd)
                .and_then(|ctx| archdebug::write_memory(&self.mem, &ctx, space, addr, &data))
                .map(|_| VcpuDebugStatus::CommandComplete),
            VcpuDebug::EnableSinglestep(on) => self.apply_debug(debug, |c| {
                c.single_step = on;
                c.block_irq = block_irq;
            }),
            VcpuDebug::SetHwBreakPoint(slots) => self.apply_debug(debug, |c| c.hw_slots = slots),
            VcpuDebug::SetSwBreakPoints(addrs) => {
                let any = debug.traps.set_sw_breakpoints(addrs);
                self.apply_debug(debug, |c| c.sw_breakpoints = any)
            }
            VcpuDebug::SetSoftWatchpoints(watches) => {
                archdebug::paging_context(&self.fd).and_then(|ctx| {
                    debug.traps.soft_watches = watches
                        .iter()
                        .map(|&(addr, len)| SoftWatch::new(&self.mem, &ctx, addr, len))
                        .collect();
                    let any = !watches.is_empty();
                    self.apply_debug(debug, |c| c.watch_stepping = any)
                })
            }
            VcpuDebug::Translate(vaddr) => archdebug::paging_context(&self.fd).map(|ctx| {
                VcpuDebugStatus::Translation(
                    archdebug::translate(&self.mem, &ctx, vaddr).map_err(DebugError::from),
                )
            }),
            VcpuDebug::DescribeSystemRegs => {
                archdebug::describe_system_registers(&self.fd).map(VcpuDebugStatus::Text)
            }
        };
        result.unwrap_or_else(VcpuDebugStatus::Error)
    }
}
