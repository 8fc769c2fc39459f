//! The gdbstub `Target`: every vCPU is a GDB thread (tid = vCPU index + 1), all-stop.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};

use gdbstub::common::{Signal, Tid};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::multithread::{MultiThreadBase, MultiThreadResumeOps};
use gdbstub::target::ext::base::single_register_access::SingleRegisterAccessOps;
use gdbstub::target::ext::breakpoints::BreakpointsOps;
use gdbstub::target::ext::monitor_cmd::MonitorCmdOps;
use gdbstub::target::ext::section_offsets::SectionOffsetsOps;
use gdbstub::target::ext::thread_extra_info::ThreadExtraInfoOps;
use gdbstub::target::{Target, TargetResult};
use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use super::breakpoints::Breakpoints;
use super::conn::SessionConn;
use super::resume::Action;
use super::threads::tid_of;
use super::{DebugCaps, GdbError, GdbSetup, Waited};
use crate::arch::debug::{AddressSpace, DebugStop, StopState};
use crate::arch::gdb::{X86_64Kvm, X86_64KvmRegs};
use crate::memory::GuestMem;
use crate::vm_control::{
    KernelMapWatch, VcpuControl, VcpuDebug, VcpuDebugStatus, VcpuDebugStatusMessage, VmEnd,
    VmEvent, VmRequest,
};

pub struct GdbTarget {
    pub(super) vcpus: Vec<Sender<VcpuControl>>,
    pub(super) from_vcpu: Receiver<VcpuDebugStatusMessage>,
    pub(super) wake: Arc<EventFd>,
    pub(super) vm: Sender<VmEvent>,
    /// Stop notifications that arrived while we waited for something else.
    pub(super) pending: VecDeque<VcpuDebugStatusMessage>,
    pub(super) actions: Vec<Action>,
    /// Posted requests per vCPU whose acknowledgement has not arrived yet.
    pub(super) unacked: Vec<usize>,
    /// Stop notifications received from each vCPU (see `VcpuDebug::Resume`).
    pub(super) stops_received: Vec<u64>,
    /// The vCPUs the last resume let run: only their stops may be reported now; other
    /// vCPUs' stops stay queued until GDB resumes them (scheduler locking).
    pub(super) resumed: Vec<bool>,
    /// vCPUs that may be executing guest code (resumed, no stop reported since): only if
    /// some are does a stop need to pause the VM through the control loop.
    pub(super) maybe_running: Vec<bool>,
    /// The vCPU GDB last looked at: the one `monitor` commands talk about.
    pub(super) current_cpu: usize,
    /// `monitor phys on`: addresses are guest-physical.
    pub(super) address_space: AddressSpace,
    /// Guest RAM: memory reads are served here, through the stopped vCPU's page tables,
    /// without a round trip to its thread.
    pub(super) mem: GuestMem,
    /// What each paused vCPU sent with its stop (or what its register file says): enough
    /// for the stop reply and for reading memory through its page tables.
    pub(super) stop_state: Vec<Option<StopState>>,
    /// Each paused vCPU's register file, once GDB asked for it.
    /// Both are dropped when the vCPU may run again or GDB writes its registers.
    pub(super) regs: Vec<Option<Box<X86_64KvmRegs>>>,
    pub(super) breakpoints: Breakpoints,
    pub(super) caps: DebugCaps,
    /// Where the Linux kernel runs is watched (see `KernelMapWatch`), for `monitor kaslr`.
    pub(super) kernel_map_watch: Option<Arc<KernelMapWatch>>,
    /// The last stop was minivmm's, for the kernel mapping itself at this slide.
    pub(super) kernel_mapped_stop: Option<u64>,
    /// The packet gdbstub is handling is a legacy `c`/`C`: every vCPU continues, as with
    /// gdbserver (gdbstub would resume only the thread of the last stop).
    pub(super) legacy_continue: bool,
    pub(super) vm_ended: bool,
}

impl GdbTarget {
    pub fn new(setup: GdbSetup) -> Self {
        let n = setup.vcpus.len();
        GdbTarget {
            vcpus: setup.vcpus,
            from_vcpu: setup.from_vcpu,
            wake: setup.wake,
            vm: setup.vm,
            pending: VecDeque::new(),
            actions: vec![Action::Default; n],
            unacked: vec![0; n],
            stops_received: vec![0; n],
            resumed: vec![false; n],
            maybe_running: vec![!setup.vm_starts_paused; n],
            current_cpu: 0,
            address_space: AddressSpace::Virtual,
            mem: setup.mem,
            stop_state: vec![None; n],
            regs: vec![None; n],
            breakpoints: Breakpoints::default(),
            caps: setup.caps,
            kernel_map_watch: setup.kernel_map_watch,
            kernel_mapped_stop: None,
            legacy_continue: false,
            vm_ended: false,
        }
    }

    pub fn vm_paused_for_gdb(&self) -> bool {
        !self.maybe_running.contains(&true)
    }

    pub fn vm_ended(&self) -> bool {
        self.vm_ended
    }

    /// A new GDB connection: the VM must be stopped while GDB looks at it.
    pub fn attach(&mut self) -> Result<(), GdbError> {
        self.suspend()?;
        // Stops from an earlier session are stale; acknowledgements still count.
        while let Ok(m) = self.from_vcpu.try_recv() {
            self.absorb(m);
        }
        self.pending.clear();
        Ok(())
    }

    /// GDB left (detach or lost connection): take out everything it planted and let the VM run.
    pub fn detach(&mut self) -> Result<(), GdbError> {
        self.suspend()?;
        // The next debugger may not relocate vmlinux: no stops it did not ask for.
        if let Some(watch) = &self.kernel_map_watch {
            watch.request_stop(false);
        }
        let cleared = Breakpoints::clear_all(self);
        if cleared.is_err() {
            warn!("some breakpoints could not be removed from guest memory");
        }
        for cpu in 0..self.vcpus.len() {
            let _ = self.vcpu_request(cpu, VcpuDebug::EnableSinglestep(false));
        }
        self.pending.clear();
        // Awaited: when GDB's session is over, the VM is running again.
        (0..self.vcpus.len()).for_each(|cpu| self.forget(cpu));
        self.vm_request(VmRequest::ResumeVcpus)?;
        self.maybe_running.fill(true);
        Ok(())
    }

    /// GDB's `kill`: end minivmm.
    pub fn end_vm(&mut self) {
        let _ = self.vm.send(VmEvent::DebuggerKill);
    }

    /// Ctrl-C from GDB.
    pub fn interrupt(&mut self) -> Option<MultiThreadStopReason<u64>> {
        if let Err(e) = self.suspend() {
            warn!("could not stop the VM: {e}");
        }
        // For the stop reply: GDB then need not ask where the vCPU is.
        let _ = self.stop_state_of(self.current_cpu);
        Some(MultiThreadStopReason::SignalWithThread {
            tid: tid_of(self.current_cpu),
            signal: Signal::SIGINT,
        })
    }

    /// Waits for GDB input or a vCPU stop, whichever comes first.
    pub fn wait_for_stop<C: SessionConn>(
        &mut self,
        conn: &mut C,
    ) -> Result<Waited, super::SessionError> {
        loop {
            if let Some(i) = self.pending.iter().position(|m| self.reportable(m))
                && let Some(m) = self.pending.remove(i)
                && let Some(reason) = self.stop_reason(m)
            {
                return Ok(Waited::Stopped(reason));
            }
            let (data, woke) = conn.wait(&self.wake)?;
            if data {
                let byte = conn.read()?;
                return Ok(Waited::Data(byte));
            }
            if woke {
                let _ = self.wake.read();
                self.drain_notifications()?;
            }
        }
    }

    /// Whether a queued notification can be reported now.
    pub(super) fn reportable(&self, m: &VcpuDebugStatusMessage) -> bool {
        match m.msg {
            VcpuDebugStatus::VmEnded(_) => true,
            VcpuDebugStatus::Stopped { .. } => self.resumed.get(m.cpu).copied().unwrap_or(false),
            _ => false,
        }
    }

    /// Turns a vCPU notification into a GDB stop, stopping the rest of the VM (all-stop).
    fn stop_reason(&mut self, m: VcpuDebugStatusMessage) -> Option<MultiThreadStopReason<u64>> {
        let tid = tid_of(m.cpu);
        let reason = match m.msg {
            VcpuDebugStatus::VmEnded(end) => {
                self.vm_ended = true;
                return Some(match end {
                    VmEnd::Exited(code) => MultiThreadStopReason::Exited(code),
                    VmEnd::Signalled(sig) => MultiThreadStopReason::Terminated(Signal(sig)),
                });
            }
            VcpuDebugStatus::Stopped { stop, .. } => match stop {
                DebugStop::Step => MultiThreadStopReason::SignalWithThread {
                    tid,
                    signal: Signal::SIGTRAP,
                },
                DebugStop::KernelMapped { slide } => {
                    self.kernel_mapped_stop = Some(slide);
                    MultiThreadStopReason::SignalWithThread {
                        tid,
                        signal: Signal::SIGTRAP,
                    }
                }
                DebugStop::SwBreak => MultiThreadStopReason::SwBreak(tid),
                DebugStop::HwBreak => MultiThreadStopReason::HwBreak(tid),
                DebugStop::Watch { addr, .. } => match self.breakpoints.watch_for_hit(addr) {
                    Some((addr, kind)) => MultiThreadStopReason::Watch { tid, kind, addr },
                    None => MultiThreadStopReason::SignalWithThread {
                        tid,
                        signal: Signal::SIGTRAP,
                    },
                },
            },
            other => {
                debug!("ignoring {other:?} from vCPU {}", m.cpu);
                return None;
            }
        };
        // The reporting vCPU paused itself; the others are paused only if some may run.
        if let Some(r) = self.maybe_running.get_mut(m.cpu) {
            *r = false;
        }
        if let Err(e) = self.suspend() {
            warn!("could not stop the other vCPUs: {e}");
        }
        self.current_cpu = m.cpu;
        Some(reason)
    }
}

impl Target for GdbTarget {
    type Arch = X86_64Kvm;
    type Error = GdbError;

    #[inline(always)]
    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    #[inline(always)]
    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_section_offsets(&mut self) -> Option<SectionOffsetsOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadBase for GdbTarget {
    fn read_registers(&mut self, regs: &mut X86_64KvmRegs, tid: Tid) -> TargetResult<(), Self> {
        self.read_thread_registers(regs, tid)
    }

    fn write_registers(&mut self, regs: &X86_64KvmRegs, tid: Tid) -> TargetResult<(), Self> {
        self.write_thread_registers(regs, tid)
    }

    #[inline(always)]
    fn support_single_register_access(&mut self) -> Option<SingleRegisterAccessOps<'_, Tid, Self>> {
        Some(self)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        self.read_memory(start, data, tid)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        self.write_memory(start, data, tid)
    }

    fn list_active_threads(
        &mut self,
        thread_is_active: &mut dyn FnMut(Tid),
    ) -> Result<(), Self::Error> {
        self.list_threads(thread_is_active);
        Ok(())
    }

    #[inline(always)]
    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_thread_extra_info(&mut self) -> Option<ThreadExtraInfoOps<'_, Self>> {
        Some(self)
    }
}
