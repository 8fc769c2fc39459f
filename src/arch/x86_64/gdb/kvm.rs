//! Conversions between GDB's register file and KVM's `kvm_regs`/`kvm_sregs`/`kvm_fpu`,
//! including the x87 tag word, which FXSAVE keeps abridged and GDB wants in full.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::X86_64KvmRegs;
use crate::arch::paging::PagingContext;

/// x87 tag values (two bits per physical register in the full tag word).
pub(super) const TAG_VALID: u16 = 0b00;
pub(super) const TAG_ZERO: u16 = 0b01;
pub(super) const TAG_SPECIAL: u16 = 0b10;
pub(super) const TAG_EMPTY: u16 = 0b11;

/// Tag a non-empty 80-bit register by its contents (SDM vol. 1, "x87 FPU Tag Word").
pub(super) fn classify_st(st: &[u8; 10]) -> u16 {
    let mut m = [0u8; 8];
    m.copy_from_slice(&st[..8]);
    let mantissa = u64::from_le_bytes(m);
    let exponent = u16::from_le_bytes([st[8], st[9]]) & 0x7fff;
    let integer_bit = mantissa >> 63 != 0;
    match exponent {
        // Infinity or NaN.
        0x7fff => TAG_SPECIAL,
        0 if mantissa == 0 => TAG_ZERO,
        // Denormal or pseudo-denormal.
        0 => TAG_SPECIAL,
        // Unnormal: non-zero exponent without the explicit integer bit.
        _ if !integer_bit => TAG_SPECIAL,
        _ => TAG_VALID,
    }
}

/// Expand FXSAVE's abridged tag (1 bit per physical register, 1 = non-empty) to
/// the full tag word. `st` is in stack order, so physical register j holds
/// ST((j - TOP) mod 8), TOP being fsw bits 11..13.
pub(super) fn ftw_abridged_to_full(ftwx: u8, fsw: u16, st: &[[u8; 10]; 8]) -> u16 {
    let top = usize::from((fsw >> 11) & 7);
    let mut full = 0u16;
    for (phys, stack_slot) in (0..8).map(|j| (j, (j + 8 - top) % 8)) {
        let tag = if ftwx & (1 << phys) == 0 {
            TAG_EMPTY
        } else {
            st.get(stack_slot).map_or(TAG_SPECIAL, classify_st)
        };
        full |= tag << (2 * phys);
    }
    full
}

/// Compress a full tag word to FXSAVE's abridged form: only "empty" survives.
pub(super) fn ftw_full_to_abridged(full: u16) -> u8 {
    (0..8)
        .filter(|j| (full >> (2 * j)) & 3 != TAG_EMPTY)
        .fold(0u8, |acc, j| acc | (1 << j))
}

fn le_u128(b: &[u8; 16]) -> u128 {
    u128::from_le_bytes(*b)
}

impl X86_64KvmRegs {
    /// The registers the page-table walker needs, so memory can be read through this
    /// vCPU's view without asking it again.
    pub fn paging_context(&self) -> PagingContext {
        PagingContext {
            cr0: self.cr0,
            cr3: self.cr3,
            cr4: self.cr4,
            efer: self.efer,
        }
    }

    /// Build from KVM state. `kernel_gs_base` is MSR 0xC000_0102, which is not in
    /// `kvm_sregs`.
    ///
    /// FPU pointers: KVM returns the 64-bit FXSAVE64 forms with no selectors, so,
    /// as GDB does for amd64 FXSAVE areas, the low half goes to fioff/fooff and the
    /// high half to fiseg/foseg. That is lossless and matches where the FXSAVE64
    /// image keeps those bits (QEMU's own stub reports them as 0).
    pub fn from_kvm(
        regs: &kvm_regs,
        sregs: &kvm_sregs,
        fpu: &kvm_fpu,
        kernel_gs_base: u64,
    ) -> Self {
        let mut st = [[0u8; 10]; 8];
        for (dst, src) in st.iter_mut().zip(fpu.fpr.iter()) {
            dst.copy_from_slice(&src[..10]);
        }
        let mut xmm = [0u128; 16];
        for (dst, src) in xmm.iter_mut().zip(fpu.xmm.iter()) {
            *dst = le_u128(src);
        }
        Self {
            regs: [
                regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.rsp,
                regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
            ],
            rip: regs.rip,
            // Bits 32..63 of RFLAGS are reserved; GDB's eflags is 32 bits.
            eflags: regs.rflags as u32,
            cs: sregs.cs.selector.into(),
            ss: sregs.ss.selector.into(),
            ds: sregs.ds.selector.into(),
            es: sregs.es.selector.into(),
            fs: sregs.fs.selector.into(),
            gs: sregs.gs.selector.into(),
            fs_base: sregs.fs.base,
            gs_base: sregs.gs.base,
            k_gs_base: kernel_gs_base,
            cr0: sregs.cr0,
            cr2: sregs.cr2,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            cr8: sregs.cr8,
            efer: sregs.efer,
            fctrl: fpu.fcw.into(),
            fstat: fpu.fsw.into(),
            ftag: ftw_abridged_to_full(fpu.ftwx, fpu.fsw, &st).into(),
            fiseg: (fpu.last_ip >> 32) as u32,
            fioff: fpu.last_ip as u32,
            foseg: (fpu.last_dp >> 32) as u32,
            fooff: fpu.last_dp as u32,
            fop: fpu.last_opcode.into(),
            st,
            xmm,
            mxcsr: fpu.mxcsr,
        }
    }

    /// Write back into KVM state, changing only what GDB can see: segment writes
    /// touch only the selector (KVM keeps the cached descriptor), the reserved
    /// upper RFLAGS bits and the fpr padding are preserved. Wire values wider than
    /// the KVM field (selectors, fctrl/fstat/fop) are truncated. Returns the new
    /// value for `cpu::MSR_KERNEL_GS_BASE`.
    pub fn to_kvm(&self, regs: &mut kvm_regs, sregs: &mut kvm_sregs, fpu: &mut kvm_fpu) -> u64 {
        let [
            rax,
            rbx,
            rcx,
            rdx,
            rsi,
            rdi,
            rbp,
            rsp,
            r8,
            r9,
            r10,
            r11,
            r12,
            r13,
            r14,
            r15,
        ] = self.regs;
        regs.rax = rax;
        regs.rbx = rbx;
        regs.rcx = rcx;
        regs.rdx = rdx;
        regs.rsi = rsi;
        regs.rdi = rdi;
        regs.rbp = rbp;
        regs.rsp = rsp;
        regs.r8 = r8;
        regs.r9 = r9;
        regs.r10 = r10;
        regs.r11 = r11;
        regs.r12 = r12;
        regs.r13 = r13;
        regs.r14 = r14;
        regs.r15 = r15;
        regs.rip = self.rip;
        regs.rflags = (regs.rflags & !0xffff_ffff) | u64::from(self.eflags);

        sregs.cs.selector = self.cs as u16;
        sregs.ss.selector = self.ss as u16;
        sregs.ds.selector = self.ds as u16;
        sregs.es.selector = self.es as u16;
        sregs.fs.selector = self.fs as u16;
        sregs.gs.selector = self.gs as u16;
        sregs.fs.base = self.fs_base;
        sregs.gs.base = self.gs_base;
        sregs.cr0 = self.cr0;
        sregs.cr2 = self.cr2;
        sregs.cr3 = self.cr3;
        sregs.cr4 = self.cr4;
        sregs.cr8 = self.cr8;
        sregs.efer = self.efer;

        for (dst, src) in fpu.fpr.iter_mut().zip(self.st.iter()) {
            dst[..10].copy_from_slice(src);
        }
        fpu.fcw = self.fctrl as u16;
        fpu.fsw = self.fstat as u16;
        fpu.ftwx = ftw_full_to_abridged(self.ftag as u16);
        fpu.last_opcode = self.fop as u16;
        fpu.last_ip = (u64::from(self.fiseg) << 32) | u64::from(self.fioff);
        fpu.last_dp = (u64::from(self.foseg) << 32) | u64::from(self.fooff);
        for (dst, src) in fpu.xmm.iter_mut().zip(self.xmm.iter()) {
            *dst = src.to_le_bytes();
        }
        fpu.mxcsr = self.mxcsr;

        self.k_gs_base
    }
}
