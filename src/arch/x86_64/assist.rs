//! What the vCPU loop does when KVM could not run an instruction: single-instruction assists
//! with exact x86 semantics (an `int3` becomes the #BP the guest expects), and the crash report
//! (RIP, instruction bytes, registers) when nothing can be done.

use std::fmt::Write as _;

use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMem;

/// KVM_INTERNAL_ERROR_EMULATION: the in-kernel emulator met an instruction it cannot run.
pub const SUBERROR_EMULATION: u32 = 1;
const INT3: u8 = 0xcc;
const BP_VECTOR: u8 = 3;
const MAX_INSN_LEN: usize = 15;

/// The linear address of CS:RIP and the instruction bytes there, translated through the
/// vCPU's page tables. Bytes that cannot be read (unmapped, not RAM) end the slice early.
pub fn insn_bytes(vcpu: &VcpuFd, mem: &GuestMem) -> (u64, Vec<u8>) {
    let (Ok(regs), Ok(sregs)) = (vcpu.get_regs(), vcpu.get_sregs()) else {
        return (0, Vec::new());
    };
    let linear = sregs.cs.base.wrapping_add(regs.rip);
    let mut bytes = Vec::with_capacity(MAX_INSN_LEN);
    for i in 0..MAX_INSN_LEN as u64 {
        let Ok(t) = vcpu.translate_gva(linear.wrapping_add(i)) else {
            break;
        };
        if t.valid == 0 {
            break;
        }
        let mut b = [0u8];
        if mem
            .read_slice(&mut b, GuestAddress(t.physical_address))
            .is_err()
        {
            break;
        }
        bytes.push(b[0]);
    }
    (linear, bytes)
}

/// Whether an emulation failure at these bytes is an `int3` the guest itself executed.
pub fn is_int3(bytes: &[u8]) -> bool {
    bytes.first() == Some(&INT3)
}

/// Delivers the #BP an `int3` raises: RIP moves past the one-byte instruction (a trap, so the
/// saved RIP points after it) and the exception is injected for the guest's IDT to handle.
pub fn inject_breakpoint(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut regs = vcpu.get_regs()?;
    regs.rip = regs.rip.wrapping_add(1);
    vcpu.set_regs(&regs)?;
    let mut events = vcpu.get_vcpu_events()?;
    events.exception.injected = 1;
    events.exception.nr = BP_VECTOR;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
    events.exception.pending = 0;
    vcpu.set_vcpu_events(&events)
}

/// A multi-line report of the vCPU's state, for the crash message.
pub fn describe_state(vcpu: &VcpuFd, mem: &GuestMem) -> String {
    let mut out = String::new();
    let (linear_rip, bytes) = insn_bytes(vcpu, mem);
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let _ = writeln!(
        out,
        "  CS:RIP (linear) {linear_rip:#018x}, instruction bytes: {}",
        if hex.is_empty() {
            "(unreadable)".to_string()
        } else {
            hex.join(" ")
        }
    );
    if let Ok(r) = vcpu.get_regs() {
        let _ = writeln!(
            out,
            "  rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n  rsi {:#018x} rdi {:#018x} rbp {:#018x} rsp {:#018x}\n  r8  {:#018x} r9  {:#018x} r10 {:#018x} r11 {:#018x}\n  r12 {:#018x} r13 {:#018x} r14 {:#018x} r15 {:#018x}\n  rflags {:#010x}",
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            r.rbp,
            r.rsp,
            r.r8,
            r.r9,
            r.r10,
            r.r11,
            r.r12,
            r.r13,
            r.r14,
            r.r15,
            r.rflags
        );
    }
    if let Ok(s) = vcpu.get_sregs() {
        let _ = write!(
            out,
            "  cs {:#06x} ss {:#06x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}",
            s.cs.selector, s.ss.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_int3_only() {
        assert!(is_int3(&[0xcc, 0x90]));
        assert!(!is_int3(&[0xcd, 0x03]));
        assert!(!is_int3(&[]));
    }
}
