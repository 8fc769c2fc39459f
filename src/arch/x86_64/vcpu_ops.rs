//! What running a vCPU and handling its exits needs from KVM, as a trait: `VcpuFd` in
//! minivmm, a scripted fake in unit tests, which can then drive the exit dispatch with
//! synthetic exits and no /dev/kvm.

use kvm_bindings::{Msrs, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events};
use kvm_ioctls::{VcpuExit, VcpuFd};

/// KVM_EXIT_INTERNAL_ERROR's details.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InternalError {
    /// KVM_INTERNAL_ERROR_*.
    pub suberror: u32,
    /// How many data words KVM attached.
    pub ndata: u32,
}

/// The vCPU operations of the run loop and the exit handlers.
pub trait VcpuOps {
    /// KVM_RUN: runs the guest until the next exit.
    fn run(&mut self) -> Result<VcpuExit<'_>, kvm_ioctls::Error>;
    /// kvm_run's `immediate_exit`: a KVM_RUN with it set returns at once (EINTR).
    fn set_immediate_exit(&mut self, on: bool);
    /// The details of the KVM_EXIT_INTERNAL_ERROR just taken.
    fn internal_error(&mut self) -> InternalError;
    fn regs(&self) -> Result<kvm_regs, kvm_ioctls::Error>;
    fn set_regs(&self, regs: &kvm_regs) -> Result<(), kvm_ioctls::Error>;
    fn sregs(&self) -> Result<kvm_sregs, kvm_ioctls::Error>;
    /// The guest-physical address of a linear address, if the vCPU's page tables map it.
    fn translate(&self, linear: u64) -> Option<u64>;
    fn events(&self) -> Result<kvm_vcpu_events, kvm_ioctls::Error>;
    fn set_events(&self, events: &kvm_vcpu_events) -> Result<(), kvm_ioctls::Error>;
    /// Writes one MSR as the host (MSR filters do not apply to the host's writes).
    fn set_msr(&self, index: u32, value: u64) -> Result<(), kvm_ioctls::Error>;
    /// Makes the WRMSR/RDMSR just taken to user space fail (the guest gets a #GP).
    fn fail_msr_exit(&mut self);
}

impl VcpuOps for VcpuFd {
    fn run(&mut self) -> Result<VcpuExit<'_>, kvm_ioctls::Error> {
        VcpuFd::run(self)
    }

    fn set_immediate_exit(&mut self, on: bool) {
        self.set_kvm_immediate_exit(u8::from(on));
    }

    fn internal_error(&mut self) -> InternalError {
        // SAFETY: called after KVM_EXIT_INTERNAL_ERROR, when `internal` is the member of the
        // exit union KVM filled in; both fields are plain integers.
        let internal = unsafe { &self.get_kvm_run().__bindgen_anon_1.internal };
        InternalError {
            suberror: internal.suberror,
            ndata: internal.ndata,
        }
    }

    fn regs(&self) -> Result<kvm_regs, kvm_ioctls::Error> {
        self.get_regs()
    }

    fn set_regs(&self, regs: &kvm_regs) -> Result<(), kvm_ioctls::Error> {
        VcpuFd::set_regs(self, regs)
    }

    fn sregs(&self) -> Result<kvm_sregs, kvm_ioctls::Error> {
        self.get_sregs()
    }

    fn translate(&self, linear: u64) -> Option<u64> {
        let t = self.translate_gva(linear).ok()?;
        (t.valid != 0).then_some(t.physical_address)
    }

    fn events(&self) -> Result<kvm_vcpu_events, kvm_ioctls::Error> {
        self.get_vcpu_events()
    }

    fn set_events(&self, events: &kvm_vcpu_events) -> Result<(), kvm_ioctls::Error> {
        self.set_vcpu_events(events)
    }

    fn fail_msr_exit(&mut self) {
        // Called after KVM_EXIT_X86_WRMSR/RDMSR, when `msr` is the member of the exit union
        // KVM filled in; KVM reads `error` at the next KVM_RUN.
        self.get_kvm_run().__bindgen_anon_1.msr.error = 1;
    }

    fn set_msr(&self, index: u32, value: u64) -> Result<(), kvm_ioctls::Error> {
        let entry = kvm_msr_entry {
            index,
            data: value,
            ..Default::default()
        };
        let msrs =
            Msrs::from_entries(&[entry]).map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
        match self.set_msrs(&msrs)? {
            1 => Ok(()),
            _ => Err(kvm_ioctls::Error::new(libc::EINVAL)),
        }
    }
}
