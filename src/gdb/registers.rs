//! Registers (`g`, `G`, `p`, `P`, and the ones expedited with every stop reply), in the
//! layout of `arch::gdb`.

use gdbstub::common::Tid;
use gdbstub::target::ext::base::single_register_access::SingleRegisterAccess;
use gdbstub::target::{TargetError, TargetResult};

use super::target::GdbTarget;
use crate::arch::gdb::{X86_64KvmRegId, X86_64KvmRegs, read_reg, write_reg};
use crate::vm_control::VcpuDebug;

impl GdbTarget {
    /// `g`: the thread's register file, read from its vCPU once per stop.
    pub(super) fn read_thread_registers(
        &mut self,
        regs: &mut X86_64KvmRegs,
        tid: Tid,
    ) -> TargetResult<(), Self> {
        let cpu = self.cpu_of(tid)?;
        self.current_cpu = cpu;
        regs.clone_from(self.regs_of(cpu)?);
        Ok(())
    }

    /// `G`: writes the whole register file to the thread's vCPU.
    pub(super) fn write_thread_registers(
        &mut self,
        regs: &X86_64KvmRegs,
        tid: Tid,
    ) -> TargetResult<(), Self> {
        let cpu = self.cpu_of(tid)?;
        // Read back next time: KVM may not take every value as written.
        self.forget(cpu);
        self.vcpu_command(cpu, VcpuDebug::WriteRegs(Box::new(regs.clone())))
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
}

impl SingleRegisterAccess<Tid> for GdbTarget {
    fn read_register(
        &mut self,
        tid: Tid,
        reg: X86_64KvmRegId,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        let mut regs = X86_64KvmRegs::default();
        self.read_thread_registers(&mut regs, tid)?;
        read_reg(&regs, reg, buf).ok_or(TargetError::NonFatal)
    }

    fn write_register(
        &mut self,
        tid: Tid,
        reg: X86_64KvmRegId,
        val: &[u8],
    ) -> TargetResult<(), Self> {
        let mut regs = X86_64KvmRegs::default();
        self.read_thread_registers(&mut regs, tid)?;
        write_reg(&mut regs, reg, val).map_err(|_| TargetError::NonFatal)?;
        self.write_thread_registers(&regs, tid)
    }
}
