//! The GDB thread's link to the VM: requests to one vCPU (awaited or posted), whole-VM
//! suspend and resume through the control loop, the notifications vCPUs send on their own,
//! and what is known of each paused vCPU's registers.

use std::sync::mpsc::{RecvTimeoutError, TryRecvError, channel};
use std::time::Duration;

use gdbstub::target::{TargetError, TargetResult};
use log::{debug, warn};

use super::GdbError;
use super::target::GdbTarget;
use crate::arch::debug::StopState;
use crate::arch::gdb::X86_64KvmRegs;
use crate::vm_control::{
    VcpuControl, VcpuDebug, VcpuDebugStatus, VcpuDebugStatusMessage, VmEvent, VmRequest, VmResponse,
};

/// A vCPU that does not answer in this long is wedged; the session reports an error rather
/// than hanging GDB.
const VCPU_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

impl GdbTarget {
    pub(super) fn vm_request(&mut self, req: VmRequest) -> Result<(), GdbError> {
        let (tx, rx) = channel();
        self.vm
            .send(VmEvent::Request(req, tx))
            .map_err(|_| GdbError::VmGone)?;
        match rx.recv() {
            Ok(VmResponse::Ok) => Ok(()),
            Ok(VmResponse::Refused(e)) => Err(GdbError::VmRefused(e)),
            Err(_) => Err(GdbError::VmGone),
        }
    }

    pub(super) fn suspend(&mut self) -> Result<(), GdbError> {
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
    pub(super) fn absorb(
        &mut self,
        mut m: VcpuDebugStatusMessage,
    ) -> Option<VcpuDebugStatusMessage> {
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
                // A refused request; GDB hears of it through the request that follows.
                if let VcpuDebugStatus::Error(e) = &m.msg {
                    debug!("vCPU {}: {e}", m.cpu);
                }
                None
            }
            _ => Some(m),
        }
    }

    /// Files everything the vCPUs have sent so far without waiting for more.
    pub(super) fn drain_notifications(&mut self) -> Result<(), GdbError> {
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
    pub(super) fn vcpu_post(&mut self, cpu: usize, req: VcpuDebug) -> Result<(), GdbError> {
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
    pub(super) fn forget(&mut self, cpu: usize) {
        self.stop_state[cpu] = None;
        self.regs[cpu] = None;
    }

    /// Where `cpu` stopped and how it maps memory: sent with its stop, or asked for.
    pub(super) fn stop_state_of(&mut self, cpu: usize) -> TargetResult<StopState, Self> {
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
    pub(super) fn regs_of(&mut self, cpu: usize) -> TargetResult<&X86_64KvmRegs, Self> {
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

    /// Lets `cpus` run: a posted `Resume` to each (paused, so not in KVM_RUN and needing no
    /// kick), behind what was already posted to it. Each stop is a step or a `continue` away
    /// from the next, so not going through the control loop saves a hop on every one.
    pub(super) fn resume_cpus(&mut self, cpus: Vec<usize>) -> Result<(), GdbError> {
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
}
