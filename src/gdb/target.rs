//! The gdbstub `Target`: every vCPU is a GDB thread (tid = vCPU index + 1), all-stop.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::time::Duration;

use gdbstub::common::{Signal, Tid};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::single_register_access::{
    SingleRegisterAccess, SingleRegisterAccessOps,
};
use gdbstub::target::ext::breakpoints::BreakpointsOps;
use gdbstub::target::ext::monitor_cmd::MonitorCmdOps;
use gdbstub::target::ext::thread_extra_info::{ThreadExtraInfo, ThreadExtraInfoOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use super::breakpoints::Breakpoints;
use super::conn::SessionConn;
use super::{GdbError, GdbSetup, Waited};
use crate::arch::debug::{self as archdebug, AddressSpace, DebugStop, StopState};
use crate::arch::gdb::{X86_64Kvm, X86_64KvmRegId, X86_64KvmRegs, read_reg, write_reg};
use crate::memory::GuestMem;
use crate::vcpu::{VcpuControl, VcpuDebug, VcpuDebugStatus, VcpuDebugStatusMessage, VmEnd};
use crate::vmm::{VmEvent, VmRequest, VmResponse};

/// A vCPU that does not answer in this long is wedged; the session reports an error rather
/// than hanging GDB.
const VCPU_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What GDB asked each vCPU to do on the next resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// No explicit action: continue, unless GDB locked the scheduler.
    Default,
    Stay,
    Continue,
    Step,
}

pub struct GdbTarget {
    vcpus: Vec<Sender<VcpuControl>>,
    from_vcpu: Receiver<VcpuDebugStatusMessage>,
    wake: Arc<EventFd>,
    vm: Sender<VmEvent>,
    /// Stop notifications that arrived while we waited for something else.
    pending: VecDeque<VcpuDebugStatusMessage>,
    actions: Vec<Action>,
    /// Posted requests per vCPU whose acknowledgement has not arrived yet.
    unacked: Vec<usize>,
    /// Stop notifications received from each vCPU (see `VcpuDebug::Resume`).
    stops_received: Vec<u64>,
    /// The vCPUs the last resume let run: only their stops may be reported now; other
    /// vCPUs' stops stay queued until GDB resumes them (scheduler locking).
    resumed: Vec<bool>,
    /// vCPUs that may be executing guest code (resumed, no stop reported since): only if
    /// some are does a stop need to pause the VM through the control loop.
    maybe_running: Vec<bool>,
    /// The vCPU GDB last looked at: the one `monitor` commands talk about.
    pub(super) current_cpu: usize,
    /// `monitor phys on`: addresses are guest-physical.
    pub(super) address_space: AddressSpace,
    /// Guest RAM: memory reads are served here, through the stopped vCPU's page tables,
    /// without a round trip to its thread.
    mem: GuestMem,
    /// What each paused vCPU sent with its stop (or what its register file says): enough
    /// for the stop reply and for reading memory through its page tables.
    stop_state: Vec<Option<StopState>>,
    /// Each paused vCPU's register file, once GDB asked for it.
    /// Both are dropped when the vCPU may run again or GDB writes its registers.
    regs: Vec<Option<Box<X86_64KvmRegs>>>,
    pub(super) breakpoints: Breakpoints,
    pub(super) watchpoints_work: bool,
    vm_ended: bool,
}

fn tid_of(cpu: usize) -> Tid {
    NonZeroUsize::new(cpu.saturating_add(1)).unwrap_or(NonZeroUsize::MIN)
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
            watchpoints_work: setup.watchpoints_work,
            vm_ended: false,
        }
    }

    /// Records GDB's action for a thread; a thread that does not exist ends the session
    /// (resuming nothing would leave GDB waiting forever).
    fn set_action(&mut self, tid: Tid, action: Action) -> Result<(), GdbError> {
        let slot = self
            .actions
            .get_mut(tid.get() - 1)
            .ok_or(GdbError::NoSuchThread(tid.get()))?;
        *slot = action;
        Ok(())
    }

    pub fn vm_paused_for_gdb(&self) -> bool {
        !self.maybe_running.contains(&true)
    }

    pub fn vm_ended(&self) -> bool {
        self.vm_ended
    }

    /// How many vCPUs, so GDB threads 1..=n, there are.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }

    fn cpu_of(&self, tid: Tid) -> TargetResult<usize, Self> {
        let cpu = tid.get() - 1;
        if cpu < self.vcpus.len() {
            Ok(cpu)
        } else {
            Err(TargetError::NonFatal)
        }
    }

    fn vm_request(&mut self, req: VmRequest) -> Result<(), GdbError> {
        let (tx, rx) = channel();
        self.vm
            .send(VmEvent::Request(req, tx))
            .map_err(|_| GdbError::VmGone)?;
        match rx.recv() {
            Ok(VmResponse::Ok) => Ok(()),
            Ok(VmResponse::Err(e)) => Err(GdbError::VmRefused(e)),
            Err(_) => Err(GdbError::VmGone),
        }
    }

    fn suspend(&mut self) -> Result<(), GdbError> {
        if self.maybe_running.contains(&true) {
            self.vm_request(VmRequest::SuspendVcpus)?;
            self.maybe_running.fill(false);
        }
        Ok(())
    }

    /// Sends one request to one (paused) vCPU and waits for its answer.
    pub(super) fn vcpu_request(
        &mut self,
        cpu: usize,
        req: VcpuDebug,
    ) -> Result<VcpuDebugStatus, GdbError> {
        let tx = self.vcpus.get(cpu).ok_or(GdbError::VcpuGone(cpu))?;
        tx.send(VcpuControl::Debug(req))
            .map_err(|_| GdbError::VcpuGone(cpu))?;
        loop {
            let m = match self.from_vcpu.recv_timeout(VCPU_ANSWER_TIMEOUT) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => return Err(GdbError::VcpuTimeout(cpu)),
                Err(RecvTimeoutError::Disconnected) => return Err(GdbError::VcpuGone(cpu)),
            };
            if let Some(m) = self.absorb(m) {
                if m.cpu == cpu {
                    return Ok(m.msg);
                }
                debug!("stale answer from vCPU {}: {:?}", m.cpu, m.msg);
            }
        }
    }

    /// Files what a vCPU sent that is not the answer being waited for: stop notifications are
    /// queued, acknowledgements of posted requests are counted off. Returns anything else.
    fn absorb(&mut self, mut m: VcpuDebugStatusMessage) -> Option<VcpuDebugStatusMessage> {
        match &mut m.msg {
            VcpuDebugStatus::Stopped { state, .. } => {
                if let Some(n) = self.stops_received.get_mut(m.cpu) {
                    *n += 1;
                }
                if m.cpu < self.vcpus.len() {
                    self.forget(m.cpu);
                    self.stop_state[m.cpu] = *state;
                }
                self.pending.push_back(m);
                None
            }
            VcpuDebugStatus::VmEnded(_) => {
                self.pending.push_back(m);
                None
            }
            VcpuDebugStatus::CommandComplete | VcpuDebugStatus::Error(_)
                if self.unacked.get(m.cpu).is_some_and(|&n| n > 0) =>
            {
                self.unacked[m.cpu] -= 1;
                if let VcpuDebugStatus::Error(e) = &m.msg {
                    warn!("vCPU {}: {e}", m.cpu);
                }
                None
            }
            _ => Some(m),
        }
    }

    /// Files everything the vCPUs have sent so far without waiting for more.
    fn drain_notifications(&mut self) -> Result<(), GdbError> {
        loop {
            match self.from_vcpu.try_recv() {
                Ok(m) => {
                    if let Some(m) = self.absorb(m) {
                        debug!("stale answer from vCPU {}: {:?}", m.cpu, m.msg);
                    }
                }
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(GdbError::VcpuGone(0)),
            }
        }
    }

    /// Sends a request whose answer nobody waits for (it is counted off when it comes):
    /// the vCPU serves its requests in order, so what follows sees its effect.
    fn vcpu_post(&mut self, cpu: usize, req: VcpuDebug) -> Result<(), GdbError> {
        let tx = self.vcpus.get(cpu).ok_or(GdbError::VcpuGone(cpu))?;
        tx.send(VcpuControl::Debug(req))
            .map_err(|_| GdbError::VcpuGone(cpu))?;
        self.unacked[cpu] += 1;
        Ok(())
    }

    /// A request that only needs to succeed.
    pub(super) fn vcpu_command(&mut self, cpu: usize, req: VcpuDebug) -> TargetResult<(), Self> {
        match self.vcpu_request(cpu, req) {
            Ok(VcpuDebugStatus::CommandComplete) => Ok(()),
            Ok(VcpuDebugStatus::Error(e)) => {
                debug!("vCPU {cpu}: {e}");
                Err(TargetError::NonFatal)
            }
            Ok(other) => {
                warn!("vCPU {cpu}: unexpected answer {other:?}");
                Err(TargetError::NonFatal)
            }
            Err(e) => Err(TargetError::Fatal(e)),
        }
    }

    /// Posts the same request to every vCPU. Used for the breakpoint table just before a
    /// resume, which the vCPUs then serve first; one that fails is logged when its answer
    /// comes.
    pub(super) fn post_to_all_vcpus(
        &mut self,
        req: impl Fn() -> VcpuDebug,
    ) -> TargetResult<(), Self> {
        for cpu in 0..self.vcpus.len() {
            self.vcpu_post(cpu, req()).map_err(TargetError::Fatal)?;
        }
        Ok(())
    }

    /// Drops what is known of `cpu`'s registers: it may run, or GDB changed them.
    fn forget(&mut self, cpu: usize) {
        self.stop_state[cpu] = None;
        self.regs[cpu] = None;
    }

    /// Where `cpu` stopped and how it maps memory: sent with its stop, or asked for.
    fn stop_state_of(&mut self, cpu: usize) -> TargetResult<StopState, Self> {
        if let Some(Some(s)) = self.stop_state.get(cpu) {
            return Ok(*s);
        }
        match self.vcpu_request(cpu, VcpuDebug::ReadStopState) {
            Ok(VcpuDebugStatus::StopState(s)) => {
                self.stop_state[cpu] = Some(s);
                Ok(s)
            }
            Ok(other) => {
                debug!("vCPU {cpu}: ReadStopState answered {other:?}");
                Err(TargetError::NonFatal)
            }
            Err(e) => Err(TargetError::Fatal(e)),
        }
    }

    /// `cpu`'s register file, asked for once per stop.
    fn regs_of(&mut self, cpu: usize) -> TargetResult<&X86_64KvmRegs, Self> {
        if self.regs.get(cpu).is_some_and(Option::is_none) {
            match self.vcpu_request(cpu, VcpuDebug::ReadRegs) {
                Ok(VcpuDebugStatus::RegValues(r)) => {
                    self.stop_state[cpu] = Some(StopState::from(&*r));
                    self.regs[cpu] = Some(r);
                }
                Ok(other) => {
                    debug!("vCPU {cpu}: ReadRegs answered {other:?}");
                    return Err(TargetError::NonFatal);
                }
                Err(e) => return Err(TargetError::Fatal(e)),
            }
        }
        match self.regs.get(cpu) {
            Some(Some(r)) => Ok(r),
            _ => Err(TargetError::NonFatal),
        }
    }

    /// Raw guest memory through `cpu`'s view (breakpoint bytes included). The vCPU is paused,
    /// so its page tables are where its registers say.
    pub(super) fn read_raw(
        &mut self,
        cpu: usize,
        addr: u64,
        len: usize,
    ) -> TargetResult<Vec<u8>, Self> {
        let ctx = self.stop_state_of(cpu)?.paging;
        Ok(archdebug::read_memory(
            &self.mem,
            &ctx,
            self.address_space,
            addr,
            len,
        ))
    }

    pub(super) fn write_raw(
        &mut self,
        cpu: usize,
        addr: u64,
        data: &[u8],
    ) -> TargetResult<(), Self> {
        self.vcpu_command(
            cpu,
            VcpuDebug::WriteMem(addr, data.to_vec(), self.address_space),
        )
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

    /// Lets `cpus` run: a posted `Resume` to each (paused, so not in KVM_RUN and needing no
    /// kick), behind what was already posted to it. Each stop is a step or a `continue` away
    /// from the next, so not going through the control loop saves a hop on every one.
    fn resume_cpus(&mut self, cpus: Vec<usize>) -> Result<(), GdbError> {
        for cpu in cpus {
            self.forget(cpu);
            // A vCPU whose stop is still on its way stays where it stopped (it is reported
            // next): it knows from the count.
            let stops_received = self.stops_received[cpu];
            self.vcpu_post(cpu, VcpuDebug::Resume { stops_received })?;
            self.maybe_running[cpu] = true;
        }
        Ok(())
    }

    /// The registers GDB needs to place a stop (frame pointer, stack pointer, pc), sent
    /// with the stop reply as gdbserver does, so that GDB need not ask for the whole file.
    pub fn expedited_registers(&self) -> Vec<(X86_64KvmRegId, [u8; 8])> {
        let Some(Some(s)) = self.stop_state.get(self.current_cpu) else {
            return Vec::new();
        };
        vec![
            (X86_64KvmRegId::Gpr(6), s.rbp.to_le_bytes()),
            (X86_64KvmRegId::Gpr(7), s.rsp.to_le_bytes()),
            (X86_64KvmRegId::Rip, s.rip.to_le_bytes()),
        ]
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
    fn reportable(&self, m: &VcpuDebugStatusMessage) -> bool {
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
}

impl MultiThreadBase for GdbTarget {
    fn read_registers(&mut self, regs: &mut X86_64KvmRegs, tid: Tid) -> TargetResult<(), Self> {
        let cpu = self.cpu_of(tid)?;
        self.current_cpu = cpu;
        regs.clone_from(self.regs_of(cpu)?);
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86_64KvmRegs, tid: Tid) -> TargetResult<(), Self> {
        let cpu = self.cpu_of(tid)?;
        // Read back next time: KVM may not take every value as written.
        self.forget(cpu);
        self.vcpu_command(cpu, VcpuDebug::WriteRegs(Box::new(regs.clone())))
    }

    #[inline(always)]
    fn support_single_register_access(&mut self) -> Option<SingleRegisterAccessOps<'_, Tid, Self>> {
        Some(self)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        // GDB sizes `m` requests to fit its packet size; a longer chunk can only come from a
        // malformed request, which gdbstub would otherwise stream through all of RAM.
        if data.len() > super::MAX_READ_PER_REQUEST {
            return Err(TargetError::NonFatal);
        }
        let cpu = self.cpu_of(tid)?;
        // GDB's Hg reaches us only through the tid of accesses like this one; breakpoints
        // (Z0, which names no thread) go through the vCPU GDB last addressed.
        self.current_cpu = cpu;
        let bytes = self.read_raw(cpu, start, data.len())?;
        if bytes.is_empty() && !data.is_empty() {
            return Err(TargetError::NonFatal);
        }
        data[..bytes.len()].copy_from_slice(&bytes);
        // GDB must see the code, not the int3 bytes we planted in it.
        self.breakpoints
            .hide_planted(start, &mut data[..bytes.len()]);
        Ok(bytes.len())
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let cpu = self.cpu_of(tid)?;
        self.current_cpu = cpu;
        // Keep planted int3 bytes in place; remember GDB's bytes as the originals instead.
        let data = self.breakpoints.keep_planted(start, data);
        self.write_raw(cpu, start, &data)
    }

    fn list_active_threads(
        &mut self,
        thread_is_active: &mut dyn FnMut(Tid),
    ) -> Result<(), Self::Error> {
        for cpu in 0..self.vcpus.len() {
            thread_is_active(tid_of(cpu));
        }
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

impl ThreadExtraInfo for GdbTarget {
    fn thread_extra_info(&self, tid: Tid, buf: &mut [u8]) -> Result<usize, Self::Error> {
        // No text (an empty reply) for a thread that does not exist: gdbstub has no non-fatal
        // error here, and an error would end the session.
        let Ok(cpu) = self.cpu_of(tid) else {
            return Ok(0);
        };
        let text = format!("vCPU {cpu}");
        let n = text.len().min(buf.len());
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        Ok(n)
    }
}

impl SingleRegisterAccess<Tid> for GdbTarget {
    fn read_register(
        &mut self,
        tid: Tid,
        reg: X86_64KvmRegId,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        let mut regs = X86_64KvmRegs::default();
        self.read_registers(&mut regs, tid)?;
        read_reg(&regs, reg, buf).ok_or(TargetError::NonFatal)
    }

    fn write_register(
        &mut self,
        tid: Tid,
        reg: X86_64KvmRegId,
        val: &[u8],
    ) -> TargetResult<(), Self> {
        let mut regs = X86_64KvmRegs::default();
        self.read_registers(&mut regs, tid)?;
        write_reg(&mut regs, reg, val).map_err(|_| TargetError::NonFatal)?;
        self.write_registers(&regs, tid)
    }
}

impl MultiThreadResume for GdbTarget {
    fn resume(&mut self) -> Result<(), Self::Error> {
        Breakpoints::sync_to_vcpus(self)
            .map_err(|_| GdbError::VmRefused("breakpoint setup failed".into()))?;
        // A stop that arrived while GDB was busy, from a vCPU GDB now resumes, is reported
        // before anything runs again. One still on its way is caught by the vCPU itself: the
        // resume tells it how many of its stops arrived (see `VcpuDebug::Resume`).
        self.drain_notifications()?;
        self.resumed = self.actions.iter().map(|a| *a != Action::Stay).collect();
        if self.pending.iter().any(|m| self.reportable(m)) {
            return Ok(());
        }
        let mut run = Vec::new();
        for cpu in 0..self.vcpus.len() {
            let action = self.actions[cpu];
            if action == Action::Stay {
                continue;
            }
            let action = if action == Action::Default {
                Action::Continue
            } else {
                action
            };
            // Posted, not awaited: every stepi or continue saves a round trip to the vCPU.
            self.vcpu_post(cpu, VcpuDebug::EnableSinglestep(action == Action::Step))?;
            run.push(cpu);
        }
        self.resume_cpus(run)
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.actions.fill(Action::Default);
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        self.set_action(tid, Action::Continue)
    }

    #[inline(always)]
    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSchedulerLocking for GdbTarget {
    /// Only the threads GDB named run (`set scheduler-locking on`, or a bare `vCont;s:N`).
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        for a in self.actions.iter_mut().filter(|a| **a == Action::Default) {
            *a = Action::Stay;
        }
        Ok(())
    }
}

impl MultiThreadSingleStep for GdbTarget {
    fn set_resume_action_step(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        self.set_action(tid, Action::Step)
    }
}
