//! Resuming (`vCont`: continue, step, scheduler locking) in all-stop mode: GDB's actions are
//! recorded per thread and applied together when it resumes.

use gdbstub::common::{Signal, Tid};
use gdbstub::target::ext::base::multithread::{
    MultiThreadResume, MultiThreadSchedulerLocking, MultiThreadSchedulerLockingOps,
    MultiThreadSingleStep, MultiThreadSingleStepOps,
};

use super::GdbError;
use super::breakpoints::Breakpoints;
use super::target::GdbTarget;
use crate::vm_control::VcpuDebug;

/// What GDB asked each vCPU to do on the next resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// No explicit action: continue, unless GDB locked the scheduler.
    Default,
    Stay,
    Continue,
    Step,
}

impl GdbTarget {
    /// Records GDB's action for a thread; a thread that does not exist ends the session
    /// (resuming nothing would leave GDB waiting forever).
    pub(super) fn set_action(&mut self, tid: Tid, action: Action) -> Result<(), GdbError> {
        let slot = self
            .actions
            .get_mut(tid.get() - 1)
            .ok_or(GdbError::NoSuchThread(tid.get()))?;
        *slot = action;
        Ok(())
    }
}

impl MultiThreadResume for GdbTarget {
    fn resume(&mut self) -> Result<(), Self::Error> {
        self.kernel_mapped_stop = None;
        if std::mem::take(&mut self.legacy_continue) {
            for action in &mut self.actions {
                if *action == Action::Stay {
                    *action = Action::Continue;
                }
            }
        }
        Breakpoints::sync_to_vcpus(self).map_err(|_| GdbError::BreakpointSync)?;
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
