//! Threads: every vCPU is a GDB thread, tid = vCPU index + 1.

use std::num::NonZeroUsize;

use gdbstub::common::Tid;
use gdbstub::target::ext::thread_extra_info::ThreadExtraInfo;
use gdbstub::target::{TargetError, TargetResult};

use super::target::GdbTarget;

pub(super) fn tid_of(cpu: usize) -> Tid {
    NonZeroUsize::new(cpu.saturating_add(1)).unwrap_or(NonZeroUsize::MIN)
}

impl GdbTarget {
    /// Every vCPU is a thread.
    pub(super) fn list_threads(&self, thread_is_active: &mut dyn FnMut(Tid)) {
        for cpu in 0..self.vcpus.len() {
            thread_is_active(tid_of(cpu));
        }
    }

    /// How many vCPUs, so GDB threads 1..=n, there are.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }

    pub(super) fn cpu_of(&self, tid: Tid) -> TargetResult<usize, Self> {
        let cpu = tid.get() - 1;
        if cpu < self.vcpus.len() {
            Ok(cpu)
        } else {
            Err(TargetError::NonFatal)
        }
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
