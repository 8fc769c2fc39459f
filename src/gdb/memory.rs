//! Memory access (`m`, `x`, `M`, `X`): reads straight from guest RAM through the stopped
//! vCPU's page tables, writes through the vCPU thread so they follow its earlier requests.
//! gdbstub serves `m`, `M` and `X`; `x` comes through `binary_read`.

use gdbstub::common::Tid;
use gdbstub::target::{TargetError, TargetResult};

use super::MAX_READ_PER_REQUEST;
use super::binary_read::XTarget;
use super::target::GdbTarget;
use super::threads::tid_of;
use crate::arch::debug as archdebug;
use crate::vm_control::VcpuDebug;

impl GdbTarget {
    /// `m`/`x`: guest memory through the thread's vCPU, planted breakpoints hidden.
    pub(super) fn read_memory(
        &mut self,
        start: u64,
        data: &mut [u8],
        tid: Tid,
    ) -> TargetResult<usize, Self> {
        // GDB sizes `m` requests to fit its packet size; a longer chunk can only come from a
        // malformed request, which gdbstub would otherwise stream through all of RAM.
        if data.len() > MAX_READ_PER_REQUEST {
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

    /// `M`/`X`: writes guest memory through the thread's vCPU.
    pub(super) fn write_memory(
        &mut self,
        start: u64,
        data: &[u8],
        tid: Tid,
    ) -> TargetResult<(), Self> {
        let cpu = self.cpu_of(tid)?;
        self.current_cpu = cpu;
        // Keep planted int3 bytes in place; remember GDB's bytes as the originals instead.
        let data = self.breakpoints.keep_planted(start, data);
        self.write_raw(cpu, start, &data)
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
}

/// `x` reads what `m` reads, through the vCPU gdbstub would use: the one GDB addressed last
/// (`Hg`, a register or memory access) or the one that stopped last, as for `m`.
impl XTarget for GdbTarget {
    fn read_for_x(&mut self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut data = vec![0; len];
        let n = self
            .read_memory(addr, &mut data, tid_of(self.current_cpu))
            .ok()?;
        data.truncate(n);
        Some(data)
    }

    fn select_thread(&mut self, tid: usize) {
        if let Some(cpu) = tid.checked_sub(1).filter(|&c| c < self.vcpu_count()) {
            self.current_cpu = cpu;
        }
    }

    fn packet_starts(&mut self, legacy_continue: bool) {
        self.legacy_continue = legacy_continue;
    }
}
