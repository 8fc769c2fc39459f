//! What the vCPU loop does when KVM could not run an instruction: single-instruction assists
//! with exact x86 semantics (an `int3` becomes the #BP the guest expects), and the crash report
//! (RIP, instruction bytes, registers) when nothing can be done.

use std::fmt::Write as _;

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use super::debug::BP_VECTOR;
use super::vcpu_ops::VcpuOps;
use crate::memory::GuestMem;

const INT3: u8 = 0xcc;
const MAX_INSN_LEN: usize = 15;

/// The vCPU's state at an instruction KVM could not run.
pub struct Fault {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// Linear address of CS:RIP.
    pub linear_rip: u64,
    /// The instruction bytes there (fewer where memory cannot be read: unmapped, not RAM).
    pub bytes: Vec<u8>,
}

/// Reads the faulting instruction through the vCPU's page tables: one translation per page,
/// since this runs on every assisted instruction (tens of thousands per Linux boot).
pub fn fetch_fault(vcpu: &impl VcpuOps, mem: &GuestMem) -> Option<Fault> {
    let regs = vcpu.regs().ok()?;
    let sregs = vcpu.sregs().ok()?;
    let linear_rip = sregs.cs.base.wrapping_add(regs.rip);
    let mut bytes = Vec::with_capacity(MAX_INSN_LEN);
    let mut at = linear_rip;
    while bytes.len() < MAX_INSN_LEN {
        let in_page = (0x1000 - (at & 0xfff)) as usize;
        let want = in_page.min(MAX_INSN_LEN - bytes.len());
        let Some(phys) = vcpu.translate(at) else {
            break;
        };
        let mut chunk = vec![0u8; want];
        if mem.read_slice(&mut chunk, GuestAddress(phys)).is_err() {
            break;
        }
        bytes.extend_from_slice(&chunk);
        at = at.wrapping_add(want as u64);
    }
    Some(Fault {
        regs,
        sregs,
        linear_rip,
        bytes,
    })
}

const RFLAGS_AC: u64 = 1 << 18;
const CLAC: [u8; 3] = [0x0f, 0x01, 0xca];
const STAC: [u8; 3] = [0x0f, 0x01, 0xcb];
const FWAIT: u8 = 0x9b;

/// An instruction some emulating hosts cannot run, executed here with its exact effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulated {
    /// CLAC: clear RFLAGS.AC (kernel mode only).
    Clac,
    /// STAC: set RFLAGS.AC (kernel mode only).
    Stac,
    /// FWAIT: nothing to wait for (minivmm never leaves x87 exceptions pending).
    Fwait,
}

impl Emulated {
    fn len(self) -> u64 {
        match self {
            Emulated::Clac | Emulated::Stac => 3,
            Emulated::Fwait => 1,
        }
    }

    /// The RFLAGS after the instruction.
    fn rflags(self, rflags: u64) -> u64 {
        match self {
            Emulated::Clac => rflags & !RFLAGS_AC,
            Emulated::Stac => rflags | RFLAGS_AC,
            Emulated::Fwait => rflags,
        }
    }
}

/// Recognises the instructions minivmm emulates. CLAC/STAC fault with #UD outside ring 0, so
/// they are only emulated at CPL 0 (the caller then reports the failure instead).
pub fn decode_emulatable(bytes: &[u8], cpl: u8) -> Option<Emulated> {
    if bytes.starts_with(&CLAC) && cpl == 0 {
        Some(Emulated::Clac)
    } else if bytes.starts_with(&STAC) && cpl == 0 {
        Some(Emulated::Stac)
    } else if bytes.first() == Some(&FWAIT) {
        Some(Emulated::Fwait)
    } else {
        None
    }
}

/// Runs the instruction at RIP if the host could not: returns what was emulated, or `None`
/// when the bytes are not one minivmm knows how to run.
pub fn emulate_unsupported(
    vcpu: &impl VcpuOps,
    fault: &Fault,
) -> Result<Option<Emulated>, kvm_ioctls::Error> {
    let Some(insn) = decode_emulatable(&fault.bytes, fault.sregs.cs.dpl) else {
        return Ok(None);
    };
    let mut regs = fault.regs;
    regs.rflags = insn.rflags(regs.rflags);
    regs.rip = regs.rip.wrapping_add(insn.len());
    vcpu.set_regs(&regs)?;
    Ok(Some(insn))
}

/// Whether an emulation failure at these bytes is an `int3` the guest itself executed.
pub fn is_int3(bytes: &[u8]) -> bool {
    bytes.first() == Some(&INT3)
}

/// Delivers the #BP an `int3` raises: RIP moves past the one-byte instruction (a trap, so the
/// saved RIP points after it) and the exception is injected for the guest's IDT to handle.
pub fn inject_breakpoint(vcpu: &impl VcpuOps, fault: &Fault) -> Result<(), kvm_ioctls::Error> {
    let mut regs = fault.regs;
    regs.rip = regs.rip.wrapping_add(1);
    vcpu.set_regs(&regs)?;
    let mut events = vcpu.events()?;
    events.exception.injected = 1;
    events.exception.nr = BP_VECTOR as u8;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
    events.exception.pending = 0;
    vcpu.set_events(&events)
}

/// A multi-line report of the vCPU's state, for the crash message.
pub fn describe_state(vcpu: &impl VcpuOps, mem: &GuestMem) -> String {
    let mut out = String::new();
    let Some(Fault {
        regs: r,
        sregs: s,
        linear_rip,
        bytes,
    }) = fetch_fault(vcpu, mem)
    else {
        return "  (the vCPU's registers cannot be read)".to_string();
    };
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
    {
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
    {
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
    fn decodes_the_assisted_instructions() {
        assert_eq!(
            decode_emulatable(&[0x0f, 0x01, 0xca, 0x90], 0),
            Some(Emulated::Clac)
        );
        assert_eq!(
            decode_emulatable(&[0x0f, 0x01, 0xcb], 0),
            Some(Emulated::Stac)
        );
        assert_eq!(
            decode_emulatable(&[0x0f, 0x01, 0xcb], 3),
            None,
            "STAC is ring-0 only"
        );
        assert_eq!(
            decode_emulatable(&[0x9b, 0xdb, 0xe2], 3),
            Some(Emulated::Fwait)
        );
        assert_eq!(
            decode_emulatable(&[0x0f, 0x01, 0xc8], 0),
            None,
            "MONITOR is not assisted"
        );
        assert_eq!(decode_emulatable(&[0x0f, 0x01], 0), None, "truncated");
    }

    #[test]
    fn emulation_has_the_architectural_effect() {
        assert_eq!(Emulated::Stac.rflags(0x2), 0x2 | RFLAGS_AC);
        assert_eq!(Emulated::Clac.rflags(0x2 | RFLAGS_AC | 0x200), 0x202);
        assert_eq!(Emulated::Fwait.rflags(0x246), 0x246);
        assert_eq!((Emulated::Clac.len(), Emulated::Fwait.len()), (3, 1));
    }

    #[test]
    fn recognises_int3_only() {
        assert!(is_int3(&[0xcc, 0x90]));
        assert!(!is_int3(&[0xcd, 0x03]));
        assert!(!is_int3(&[]));
    }
}
