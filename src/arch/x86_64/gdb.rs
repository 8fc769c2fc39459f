//! GDB register file for x86_64 guests, laid out like QEMU's x86_64 system-mode stub.
//!
//! gdbstub_arch's `X86_64_SSE` has no fs_base/gs_base/k_gs_base, control registers or
//! EFER, which kernel debugging needs. Front-ends (and people's scripts) also assume
//! QEMU's numbering, so the order below reproduces QEMU's `gdb-xml/i386-64bit.xml`
//! and the register indices of its `target/i386/gdbstub.c` (66 registers):
//!
//! | numbers | registers                                   | bytes each |
//! |---------|---------------------------------------------|------------|
//! | 0-15    | rax rbx rcx rdx rsi rdi rbp rsp r8-r15      | 8          |
//! | 16      | rip                                         | 8          |
//! | 17      | eflags                                      | 4          |
//! | 18-23   | cs ss ds es fs gs                           | 4          |
//! | 24-26   | fs_base gs_base k_gs_base                   | 8          |
//! | 27-32   | cr0 cr2 cr3 cr4 cr8 efer                    | 8          |
//! | 33-40   | st0-st7                                     | 10         |
//! | 41-48   | fctrl fstat ftag fiseg fioff foseg fooff fop | 4        |
//! | 49-64   | xmm0-xmm15                                  | 16         |
//! | 65      | mxcsr                                       | 4          |
//!
//! The `g` packet is these registers in this order, little-endian (608 bytes).
//! Unlike QEMU, xmm/mxcsr sit in their own `org.gnu.gdb.i386.sse` feature so GDB
//! recognises them as the SSE unit; that does not change the wire layout or numbers.

use core::num::NonZeroUsize;

use gdbstub::arch::{Arch, RegId, Registers};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::paging::PagingContext;

/// Number of registers in the description (and in QEMU's x86_64 stub).
pub const NUM_REGS: usize = 66;

/// Length in bytes of a full `g`/`G` register block.
pub const G_PACKET_LEN: usize =
    16 * 8 + 8 + 4 + 6 * 4 + 3 * 8 + 6 * 8 + 8 * 10 + 8 * 4 + 16 * 16 + 4;

/// x86_64 with system registers, for use as `Target::Arch`.
pub enum X86_64Kvm {}

impl Arch for X86_64Kvm {
    type Usize = u64;
    type Registers = X86_64KvmRegs;
    type RegId = X86_64KvmRegId;
    // x86 breakpoint kinds are the instruction length in bytes.
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// Register state exchanged with GDB. Field widths follow the wire format.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct X86_64KvmRegs {
    /// rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8..r15 (GDB order, not KVM's).
    pub regs: [u64; 16],
    pub rip: u64,
    pub eflags: u32,
    pub cs: u32,
    pub ss: u32,
    pub ds: u32,
    pub es: u32,
    pub fs: u32,
    pub gs: u32,
    pub fs_base: u64,
    pub gs_base: u64,
    pub k_gs_base: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    /// ST(0)..ST(7) in stack order, 80-bit little-endian.
    pub st: [[u8; 10]; 8],
    pub fctrl: u32,
    pub fstat: u32,
    /// Full 16-bit x87 tag word (two bits per physical register).
    pub ftag: u32,
    pub fiseg: u32,
    pub fioff: u32,
    pub foseg: u32,
    pub fooff: u32,
    pub fop: u32,
    pub xmm: [u128; 16],
    pub mxcsr: u32,
}

/// A register number from the target description. Indexed variants carry
/// 0..16 (`Gpr`, `Xmm`) or 0..8 (`St`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum X86_64KvmRegId {
    Gpr(u8),
    Rip,
    Eflags,
    Cs,
    Ss,
    Ds,
    Es,
    Fs,
    Gs,
    FsBase,
    GsBase,
    KGsBase,
    Cr0,
    Cr2,
    Cr3,
    Cr4,
    Cr8,
    Efer,
    St(u8),
    Fctrl,
    Fstat,
    Ftag,
    Fiseg,
    Fioff,
    Foseg,
    Fooff,
    Fop,
    Xmm(u8),
    Mxcsr,
}

/// Why a single-register write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegError {
    #[error("register {reg:?} takes {expected} bytes, got {got}")]
    WrongLength {
        reg: X86_64KvmRegId,
        expected: usize,
        got: usize,
    },
    #[error("no such register: {0:?}")]
    NoSuchRegister(X86_64KvmRegId),
}

const GPR_NAMES: [&str; 16] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];
const ST_NAMES: [&str; 8] = ["st0", "st1", "st2", "st3", "st4", "st5", "st6", "st7"];
const XMM_NAMES: [&str; 16] = [
    "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
    "xmm11", "xmm12", "xmm13", "xmm14", "xmm15",
];

impl X86_64KvmRegId {
    /// Register with GDB number `n`, if the description has one.
    pub fn from_raw(n: usize) -> Option<Self> {
        use X86_64KvmRegId::*;
        const FIXED: [X86_64KvmRegId; 17] = [
            Rip, Eflags, Cs, Ss, Ds, Es, Fs, Gs, FsBase, GsBase, KGsBase, Cr0, Cr2, Cr3, Cr4, Cr8,
            Efer,
        ];
        const FPU_CTL: [X86_64KvmRegId; 8] = [Fctrl, Fstat, Ftag, Fiseg, Fioff, Foseg, Fooff, Fop];
        // The casts are lossless: each arm bounds n to a small range.
        match n {
            0..=15 => Some(Gpr(n as u8)),
            16..=32 => FIXED.get(n - 16).copied(),
            33..=40 => Some(St((n - 33) as u8)),
            41..=48 => FPU_CTL.get(n - 41).copied(),
            49..=64 => Some(Xmm((n - 49) as u8)),
            65 => Some(Mxcsr),
            _ => None,
        }
    }

    /// GDB number of this register; `None` for an out-of-range index.
    pub fn raw(self) -> Option<usize> {
        use X86_64KvmRegId::*;
        let n = match self {
            Gpr(i) if i < 16 => usize::from(i),
            Rip => 16,
            Eflags => 17,
            Cs => 18,
            Ss => 19,
            Ds => 20,
            Es => 21,
            Fs => 22,
            Gs => 23,
            FsBase => 24,
            GsBase => 25,
            KGsBase => 26,
            Cr0 => 27,
            Cr2 => 28,
            Cr3 => 29,
            Cr4 => 30,
            Cr8 => 31,
            Efer => 32,
            St(i) if i < 8 => 33 + usize::from(i),
            Fctrl => 41,
            Fstat => 42,
            Ftag => 43,
            Fiseg => 44,
            Fioff => 45,
            Foseg => 46,
            Fooff => 47,
            Fop => 48,
            Xmm(i) if i < 16 => 49 + usize::from(i),
            Mxcsr => 65,
            Gpr(_) | St(_) | Xmm(_) => return None,
        };
        Some(n)
    }

    /// Size on the wire in bytes.
    pub fn size(self) -> usize {
        use X86_64KvmRegId::*;
        match self {
            Gpr(_) | Rip | FsBase | GsBase | KGsBase | Cr0 | Cr2 | Cr3 | Cr4 | Cr8 | Efer => 8,
            Eflags | Cs | Ss | Ds | Es | Fs | Gs => 4,
            Fctrl | Fstat | Ftag | Fiseg | Fioff | Foseg | Fooff | Fop | Mxcsr => 4,
            St(_) => 10,
            Xmm(_) => 16,
        }
    }

    /// Name used in the target description.
    pub fn name(self) -> Option<&'static str> {
        use X86_64KvmRegId::*;
        Some(match self {
            Gpr(i) => GPR_NAMES.get(usize::from(i))?,
            Rip => "rip",
            Eflags => "eflags",
            Cs => "cs",
            Ss => "ss",
            Ds => "ds",
            Es => "es",
            Fs => "fs",
            Gs => "gs",
            FsBase => "fs_base",
            GsBase => "gs_base",
            KGsBase => "k_gs_base",
            Cr0 => "cr0",
            Cr2 => "cr2",
            Cr3 => "cr3",
            Cr4 => "cr4",
            Cr8 => "cr8",
            Efer => "efer",
            St(i) => ST_NAMES.get(usize::from(i))?,
            Fctrl => "fctrl",
            Fstat => "fstat",
            Ftag => "ftag",
            Fiseg => "fiseg",
            Fioff => "fioff",
            Foseg => "foseg",
            Fooff => "fooff",
            Fop => "fop",
            Xmm(i) => XMM_NAMES.get(usize::from(i))?,
            Mxcsr => "mxcsr",
        })
    }

    /// All registers in GDB number order.
    pub fn all() -> impl Iterator<Item = Self> {
        (0..NUM_REGS).filter_map(Self::from_raw)
    }
}

impl RegId for X86_64KvmRegId {
    fn from_raw_id(id: usize) -> Option<(Self, Option<NonZeroUsize>)> {
        let reg = Self::from_raw(id)?;
        Some((reg, NonZeroUsize::new(reg.size())))
    }

    fn to_raw_id(&self) -> Option<usize> {
        self.raw()
    }
}

/// Value of one register, zero-extended into a u128 (st registers as their 10 bytes).
fn reg_value(r: &X86_64KvmRegs, id: X86_64KvmRegId) -> Option<u128> {
    use X86_64KvmRegId::*;
    let idx = |i: u8| usize::from(i);
    let v = match id {
        Gpr(i) => u128::from(*r.regs.get(idx(i))?),
        Rip => r.rip.into(),
        Eflags => r.eflags.into(),
        Cs => r.cs.into(),
        Ss => r.ss.into(),
        Ds => r.ds.into(),
        Es => r.es.into(),
        Fs => r.fs.into(),
        Gs => r.gs.into(),
        FsBase => r.fs_base.into(),
        GsBase => r.gs_base.into(),
        KGsBase => r.k_gs_base.into(),
        Cr0 => r.cr0.into(),
        Cr2 => r.cr2.into(),
        Cr3 => r.cr3.into(),
        Cr4 => r.cr4.into(),
        Cr8 => r.cr8.into(),
        Efer => r.efer.into(),
        St(i) => {
            let mut b = [0u8; 16];
            b[..10].copy_from_slice(r.st.get(idx(i))?);
            u128::from_le_bytes(b)
        }
        Fctrl => r.fctrl.into(),
        Fstat => r.fstat.into(),
        Ftag => r.ftag.into(),
        Fiseg => r.fiseg.into(),
        Fioff => r.fioff.into(),
        Foseg => r.foseg.into(),
        Fooff => r.fooff.into(),
        Fop => r.fop.into(),
        Xmm(i) => *r.xmm.get(idx(i))?,
        Mxcsr => r.mxcsr.into(),
    };
    Some(v)
}

/// Store `v` (already length-checked, so truncating casts drop only zero bytes).
fn set_reg_value(r: &mut X86_64KvmRegs, id: X86_64KvmRegId, v: u128) -> Result<(), RegError> {
    use X86_64KvmRegId::*;
    let missing = RegError::NoSuchRegister(id);
    let idx = |i: u8| usize::from(i);
    match id {
        Gpr(i) => *r.regs.get_mut(idx(i)).ok_or(missing)? = v as u64,
        Rip => r.rip = v as u64,
        Eflags => r.eflags = v as u32,
        Cs => r.cs = v as u32,
        Ss => r.ss = v as u32,
        Ds => r.ds = v as u32,
        Es => r.es = v as u32,
        Fs => r.fs = v as u32,
        Gs => r.gs = v as u32,
        FsBase => r.fs_base = v as u64,
        GsBase => r.gs_base = v as u64,
        KGsBase => r.k_gs_base = v as u64,
        Cr0 => r.cr0 = v as u64,
        Cr2 => r.cr2 = v as u64,
        Cr3 => r.cr3 = v as u64,
        Cr4 => r.cr4 = v as u64,
        Cr8 => r.cr8 = v as u64,
        Efer => r.efer = v as u64,
        St(i) => {
            r.st.get_mut(idx(i))
                .ok_or(missing)?
                .copy_from_slice(&v.to_le_bytes()[..10])
        }
        Fctrl => r.fctrl = v as u32,
        Fstat => r.fstat = v as u32,
        Ftag => r.ftag = v as u32,
        Fiseg => r.fiseg = v as u32,
        Fioff => r.fioff = v as u32,
        Foseg => r.foseg = v as u32,
        Fooff => r.fooff = v as u32,
        Fop => r.fop = v as u32,
        Xmm(i) => *r.xmm.get_mut(idx(i)).ok_or(missing)? = v,
        Mxcsr => r.mxcsr = v as u32,
    }
    Ok(())
}

/// Read one register (`p` packet) into `buf`; returns the byte count, or `None`
/// if the id is out of range or `buf` is too small.
pub fn read_reg(regs: &X86_64KvmRegs, id: X86_64KvmRegId, buf: &mut [u8]) -> Option<usize> {
    let n = id.size();
    let v = reg_value(regs, id)?;
    buf.get_mut(..n)?.copy_from_slice(&v.to_le_bytes()[..n]);
    Some(n)
}

/// Write one register (`P` packet); `bytes` must be exactly the register's size.
pub fn write_reg(
    regs: &mut X86_64KvmRegs,
    id: X86_64KvmRegId,
    bytes: &[u8],
) -> Result<(), RegError> {
    let expected = id.size();
    if bytes.len() != expected {
        return Err(RegError::WrongLength {
            reg: id,
            expected,
            got: bytes.len(),
        });
    }
    let mut b = [0u8; 16];
    b[..expected].copy_from_slice(bytes);
    set_reg_value(regs, id, u128::from_le_bytes(b))
}

impl Registers for X86_64KvmRegs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        // Going through read_reg keeps `g` and `p` from ever disagreeing.
        let mut buf = [0u8; 16];
        for id in X86_64KvmRegId::all() {
            if let Some(n) = read_reg(self, id, &mut buf) {
                buf[..n].iter().for_each(|b| write_byte(Some(*b)));
            }
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        if bytes.len() != G_PACKET_LEN {
            return Err(());
        }
        // Decode into a copy so a failure leaves the registers untouched.
        let mut next = self.clone();
        let mut rest = bytes;
        for id in X86_64KvmRegId::all() {
            let (head, tail) = rest.split_at_checked(id.size()).ok_or(())?;
            write_reg(&mut next, id, head).map_err(|_| ())?;
            rest = tail;
        }
        *self = next;
        Ok(())
    }
}

/// x87 tag values (two bits per physical register in the full tag word).
const TAG_VALID: u16 = 0b00;
const TAG_ZERO: u16 = 0b01;
const TAG_SPECIAL: u16 = 0b10;
const TAG_EMPTY: u16 = 0b11;

/// Tag a non-empty 80-bit register by its contents (SDM vol. 1, "x87 FPU Tag Word").
fn classify_st(st: &[u8; 10]) -> u16 {
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
fn ftw_abridged_to_full(ftwx: u8, fsw: u16, st: &[[u8; 10]; 8]) -> u16 {
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
fn ftw_full_to_abridged(full: u16) -> u8 {
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

/// Target description served to GDB via `qXfer:features:read`. Register order,
/// sizes and types reproduce QEMU's x86_64 system-mode description.
const TARGET_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
  <architecture>i386:x86-64</architecture>
  <feature name="org.gnu.gdb.i386.core">
    <flags id="i386_eflags" size="4">
      <field name="" start="22" end="31"/>
      <field name="ID" start="21" end="21"/>
      <field name="VIP" start="20" end="20"/>
      <field name="VIF" start="19" end="19"/>
      <field name="AC" start="18" end="18"/>
      <field name="VM" start="17" end="17"/>
      <field name="RF" start="16" end="16"/>
      <field name="" start="15" end="15"/>
      <field name="NT" start="14" end="14"/>
      <field name="IOPL" start="12" end="13"/>
      <field name="OF" start="11" end="11"/>
      <field name="DF" start="10" end="10"/>
      <field name="IF" start="9" end="9"/>
      <field name="TF" start="8" end="8"/>
      <field name="SF" start="7" end="7"/>
      <field name="ZF" start="6" end="6"/>
      <field name="" start="5" end="5"/>
      <field name="AF" start="4" end="4"/>
      <field name="" start="3" end="3"/>
      <field name="PF" start="2" end="2"/>
      <field name="" start="1" end="1"/>
      <field name="CF" start="0" end="0"/>
    </flags>
    <reg name="rax" bitsize="64" type="int64" regnum="0"/>
    <reg name="rbx" bitsize="64" type="int64"/>
    <reg name="rcx" bitsize="64" type="int64"/>
    <reg name="rdx" bitsize="64" type="int64"/>
    <reg name="rsi" bitsize="64" type="int64"/>
    <reg name="rdi" bitsize="64" type="int64"/>
    <reg name="rbp" bitsize="64" type="data_ptr"/>
    <reg name="rsp" bitsize="64" type="data_ptr"/>
    <reg name="r8" bitsize="64" type="int64"/>
    <reg name="r9" bitsize="64" type="int64"/>
    <reg name="r10" bitsize="64" type="int64"/>
    <reg name="r11" bitsize="64" type="int64"/>
    <reg name="r12" bitsize="64" type="int64"/>
    <reg name="r13" bitsize="64" type="int64"/>
    <reg name="r14" bitsize="64" type="int64"/>
    <reg name="r15" bitsize="64" type="int64"/>
    <reg name="rip" bitsize="64" type="code_ptr"/>
    <reg name="eflags" bitsize="32" type="i386_eflags"/>
    <reg name="cs" bitsize="32" type="int32"/>
    <reg name="ss" bitsize="32" type="int32"/>
    <reg name="ds" bitsize="32" type="int32"/>
    <reg name="es" bitsize="32" type="int32"/>
    <reg name="fs" bitsize="32" type="int32"/>
    <reg name="gs" bitsize="32" type="int32"/>
    <reg name="fs_base" bitsize="64" type="int64"/>
    <reg name="gs_base" bitsize="64" type="int64"/>
    <reg name="k_gs_base" bitsize="64" type="int64"/>
    <flags id="i386_cr0" size="8">
      <field name="PG" start="31" end="31"/>
      <field name="CD" start="30" end="30"/>
      <field name="NW" start="29" end="29"/>
      <field name="AM" start="18" end="18"/>
      <field name="WP" start="16" end="16"/>
      <field name="NE" start="5" end="5"/>
      <field name="ET" start="4" end="4"/>
      <field name="TS" start="3" end="3"/>
      <field name="EM" start="2" end="2"/>
      <field name="MP" start="1" end="1"/>
      <field name="PE" start="0" end="0"/>
    </flags>
    <flags id="i386_cr3" size="8">
      <field name="PDBR" start="12" end="63"/>
      <field name="PCID" start="0" end="11"/>
    </flags>
    <flags id="i386_cr4" size="8">
      <field name="PKE" start="22" end="22"/>
      <field name="SMAP" start="21" end="21"/>
      <field name="SMEP" start="20" end="20"/>
      <field name="OSXSAVE" start="18" end="18"/>
      <field name="PCIDE" start="17" end="17"/>
      <field name="FSGSBASE" start="16" end="16"/>
      <field name="SMXE" start="14" end="14"/>
      <field name="VMXE" start="13" end="13"/>
      <field name="LA57" start="12" end="12"/>
      <field name="UMIP" start="11" end="11"/>
      <field name="OSXMMEXCPT" start="10" end="10"/>
      <field name="OSFXSR" start="9" end="9"/>
      <field name="PCE" start="8" end="8"/>
      <field name="PGE" start="7" end="7"/>
      <field name="MCE" start="6" end="6"/>
      <field name="PAE" start="5" end="5"/>
      <field name="PSE" start="4" end="4"/>
      <field name="DE" start="3" end="3"/>
      <field name="TSD" start="2" end="2"/>
      <field name="PVI" start="1" end="1"/>
      <field name="VME" start="0" end="0"/>
    </flags>
    <flags id="i386_efer" size="8">
      <field name="TCE" start="15" end="15"/>
      <field name="FFXSR" start="14" end="14"/>
      <field name="LMSLE" start="13" end="13"/>
      <field name="SVME" start="12" end="12"/>
      <field name="NXE" start="11" end="11"/>
      <field name="LMA" start="10" end="10"/>
      <field name="LME" start="8" end="8"/>
      <field name="SCE" start="0" end="0"/>
    </flags>
    <reg name="cr0" bitsize="64" type="i386_cr0"/>
    <reg name="cr2" bitsize="64" type="int64"/>
    <reg name="cr3" bitsize="64" type="i386_cr3"/>
    <reg name="cr4" bitsize="64" type="i386_cr4"/>
    <reg name="cr8" bitsize="64" type="int64"/>
    <reg name="efer" bitsize="64" type="i386_efer"/>
    <reg name="st0" bitsize="80" type="i387_ext"/>
    <reg name="st1" bitsize="80" type="i387_ext"/>
    <reg name="st2" bitsize="80" type="i387_ext"/>
    <reg name="st3" bitsize="80" type="i387_ext"/>
    <reg name="st4" bitsize="80" type="i387_ext"/>
    <reg name="st5" bitsize="80" type="i387_ext"/>
    <reg name="st6" bitsize="80" type="i387_ext"/>
    <reg name="st7" bitsize="80" type="i387_ext"/>
    <reg name="fctrl" bitsize="32" type="int" group="float"/>
    <reg name="fstat" bitsize="32" type="int" group="float"/>
    <reg name="ftag" bitsize="32" type="int" group="float"/>
    <reg name="fiseg" bitsize="32" type="int" group="float"/>
    <reg name="fioff" bitsize="32" type="int" group="float"/>
    <reg name="foseg" bitsize="32" type="int" group="float"/>
    <reg name="fooff" bitsize="32" type="int" group="float"/>
    <reg name="fop" bitsize="32" type="int" group="float"/>
  </feature>
  <feature name="org.gnu.gdb.i386.sse">
    <vector id="v4f" type="ieee_single" count="4"/>
    <vector id="v2d" type="ieee_double" count="2"/>
    <vector id="v16i8" type="int8" count="16"/>
    <vector id="v8i16" type="int16" count="8"/>
    <vector id="v4i32" type="int32" count="4"/>
    <vector id="v2i64" type="int64" count="2"/>
    <union id="vec128">
      <field name="v4_float" type="v4f"/>
      <field name="v2_double" type="v2d"/>
      <field name="v16_int8" type="v16i8"/>
      <field name="v8_int16" type="v8i16"/>
      <field name="v4_int32" type="v4i32"/>
      <field name="v2_int64" type="v2i64"/>
      <field name="uint128" type="uint128"/>
    </union>
    <flags id="i386_mxcsr" size="4">
      <field name="IE" start="0" end="0"/>
      <field name="DE" start="1" end="1"/>
      <field name="ZE" start="2" end="2"/>
      <field name="OE" start="3" end="3"/>
      <field name="UE" start="4" end="4"/>
      <field name="PE" start="5" end="5"/>
      <field name="DAZ" start="6" end="6"/>
      <field name="IM" start="7" end="7"/>
      <field name="DM" start="8" end="8"/>
      <field name="ZM" start="9" end="9"/>
      <field name="OM" start="10" end="10"/>
      <field name="UM" start="11" end="11"/>
      <field name="PM" start="12" end="12"/>
      <field name="FZ" start="15" end="15"/>
    </flags>
    <reg name="xmm0" bitsize="128" type="vec128"/>
    <reg name="xmm1" bitsize="128" type="vec128"/>
    <reg name="xmm2" bitsize="128" type="vec128"/>
    <reg name="xmm3" bitsize="128" type="vec128"/>
    <reg name="xmm4" bitsize="128" type="vec128"/>
    <reg name="xmm5" bitsize="128" type="vec128"/>
    <reg name="xmm6" bitsize="128" type="vec128"/>
    <reg name="xmm7" bitsize="128" type="vec128"/>
    <reg name="xmm8" bitsize="128" type="vec128"/>
    <reg name="xmm9" bitsize="128" type="vec128"/>
    <reg name="xmm10" bitsize="128" type="vec128"/>
    <reg name="xmm11" bitsize="128" type="vec128"/>
    <reg name="xmm12" bitsize="128" type="vec128"/>
    <reg name="xmm13" bitsize="128" type="vec128"/>
    <reg name="xmm14" bitsize="128" type="vec128"/>
    <reg name="xmm15" bitsize="128" type="vec128"/>
    <reg name="mxcsr" bitsize="32" type="i386_mxcsr" group="vector"/>
  </feature>
</target>"#;

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// (name, bitsize) of every `<reg` element, in document order.
    fn xml_regs() -> Vec<(String, usize)> {
        let attr = |tag: &str, key: &str| -> String {
            let pat = format!("{key}=\"");
            let start = tag.find(&pat).expect("attribute present") + pat.len();
            let len = tag[start..].find('"').expect("closing quote");
            tag[start..start + len].to_string()
        };
        TARGET_XML
            .split("<reg ")
            .skip(1)
            .map(|rest| {
                let tag = &rest[..rest.find("/>").expect("self-closing reg")];
                (
                    attr(tag, "name"),
                    attr(tag, "bitsize").parse().expect("bitsize"),
                )
            })
            .collect()
    }

    fn serialize(r: &X86_64KvmRegs) -> Vec<u8> {
        let mut out = Vec::new();
        r.gdb_serialize(|b| out.push(b.expect("every register is available")));
        out
    }

    /// Byte offset of each register in the `g` packet.
    fn offsets() -> Vec<usize> {
        X86_64KvmRegId::all()
            .scan(0, |off, id| {
                let here = *off;
                *off += id.size();
                Some(here)
            })
            .collect()
    }

    /// Every byte of every field distinct-ish and non-zero.
    fn sample() -> X86_64KvmRegs {
        let mut r = X86_64KvmRegs::default();
        let mut bytes = Vec::with_capacity(G_PACKET_LEN);
        for i in 0..G_PACKET_LEN {
            bytes.push((i * 7 % 251 + 1) as u8);
        }
        r.gdb_deserialize(&bytes).expect("full-length block");
        r
    }

    fn gdb_available() -> bool {
        match Command::new("gdb").arg("--version").output() {
            Ok(o) if o.status.success() => true,
            _ => {
                println!("NOTICE: gdb not found on PATH; skipping GDB-backed check");
                false
            }
        }
    }

    fn temp_xml(tag: &str) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("minivmm-tdesc-{}-{tag}.xml", std::process::id()));
        std::fs::write(&path, TARGET_XML).expect("write temp xml");
        path
    }

    #[test]
    fn roundtrip_serialize_deserialize() {
        let mut r = X86_64KvmRegs {
            regs: core::array::from_fn(|i| 0x1111_0000_0000_0000 + i as u64),
            rip: 0xffff_ffff_8100_0000,
            eflags: 0x0024_0246,
            cs: 0x10,
            ss: 0x18,
            ds: 0x20,
            es: 0x28,
            fs: 0x30,
            gs: 0x38,
            fs_base: 0x7fff_0000_1000,
            gs_base: 0xffff_8880_0000_2000,
            k_gs_base: 0x7fff_0000_3000,
            cr0: 0x8005_0033,
            cr2: 0xdead_b000,
            cr3: 0x0123_4000,
            cr4: 0x0037_06f0,
            cr8: 0xf,
            efer: 0xd01,
            st: core::array::from_fn(|i| core::array::from_fn(|j| (0x40 + i * 10 + j) as u8)),
            fctrl: 0x37f,
            fstat: 0x3800,
            ftag: 0x5a5a,
            fiseg: 0x1234,
            fioff: 0x5678_9abc,
            foseg: 0x2345,
            fooff: 0x6789_abcd,
            fop: 0x7ff,
            xmm: core::array::from_fn(|i| 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f00 + i as u128),
            mxcsr: 0x1f80,
        };
        let bytes = serialize(&r);
        assert_eq!(bytes.len(), G_PACKET_LEN);
        let mut back = X86_64KvmRegs::default();
        back.gdb_deserialize(&bytes).expect("deserialize");
        assert_eq!(back, r);
        assert_eq!(back.pc(), r.rip);

        // Spot-check wire placement: rip at 128, cr3 at 204, mxcsr last.
        assert_eq!(&bytes[128..136], &r.rip.to_le_bytes());
        assert_eq!(&bytes[204..212], &r.cr3.to_le_bytes());
        assert_eq!(&bytes[G_PACKET_LEN - 4..], &r.mxcsr.to_le_bytes());

        r = sample();
        assert_eq!(serialize(&r).len(), G_PACKET_LEN);
        let mut again = X86_64KvmRegs::default();
        again.gdb_deserialize(&serialize(&r)).expect("deserialize");
        assert_eq!(again, r);
    }

    #[test]
    fn xml_sizes_match_serialization() {
        let regs = xml_regs();
        assert_eq!(regs.len(), NUM_REGS);
        let total_bits: usize = regs.iter().map(|(_, bits)| bits).sum();
        assert_eq!(total_bits % 8, 0);
        assert_eq!(total_bits / 8, G_PACKET_LEN);
        assert_eq!(serialize(&sample()).len(), total_bits / 8);
        assert!(TARGET_XML.contains("<architecture>i386:x86-64</architecture>"));
        assert!(TARGET_XML.contains("<feature name=\"org.gnu.gdb.i386.core\">"));
        assert!(TARGET_XML.contains("<feature name=\"org.gnu.gdb.i386.sse\">"));
        assert_eq!(X86_64Kvm::target_description_xml(), Some(TARGET_XML));
    }

    #[test]
    fn raw_ids_follow_xml_order() {
        for (n, (name, bits)) in xml_regs().into_iter().enumerate() {
            let (id, size) = X86_64KvmRegId::from_raw_id(n).expect("known register");
            assert_eq!(
                size.map(NonZeroUsize::get),
                Some(bits / 8),
                "size of {name}"
            );
            assert_eq!(id.name(), Some(name.as_str()), "number {n}");
            assert_eq!(id.to_raw_id(), Some(n));
        }
        for n in [NUM_REGS, NUM_REGS + 1, 1000, usize::MAX] {
            assert!(X86_64KvmRegId::from_raw_id(n).is_none(), "{n}");
        }
        // QEMU's fixed anchors (target/i386/gdbstub.c indices).
        assert_eq!(X86_64KvmRegId::KGsBase.raw(), Some(26));
        assert_eq!(X86_64KvmRegId::Cr0.raw(), Some(27));
        assert_eq!(X86_64KvmRegId::Efer.raw(), Some(32));
        assert_eq!(X86_64KvmRegId::St(0).raw(), Some(33));
        assert_eq!(X86_64KvmRegId::Xmm(0).raw(), Some(49));
        assert_eq!(X86_64KvmRegId::Mxcsr.raw(), Some(65));
        // Out-of-range indices are not registers.
        assert_eq!(X86_64KvmRegId::Gpr(16).raw(), None);
        assert_eq!(X86_64KvmRegId::St(8).raw(), None);
        assert_eq!(X86_64KvmRegId::Xmm(16).name(), None);
    }

    #[test]
    fn single_register_write_touches_only_that_register() {
        let base = sample();
        let base_bytes = serialize(&base);
        let offs = offsets();
        for (n, id) in X86_64KvmRegId::all().enumerate() {
            let size = id.size();
            let value: Vec<u8> = (0..size).map(|i| 0xa0 ^ (i as u8) ^ (n as u8)).collect();
            let mut r = base.clone();
            write_reg(&mut r, id, &value).expect("write");

            let mut buf = [0u8; 16];
            assert_eq!(read_reg(&r, id, &mut buf), Some(size));
            assert_eq!(&buf[..size], value.as_slice(), "{id:?} readback");

            let after = serialize(&r);
            let range = offs[n]..offs[n] + size;
            assert_eq!(&after[range.clone()], value.as_slice(), "{id:?} placement");
            for (i, (a, b)) in after.iter().zip(&base_bytes).enumerate() {
                if !range.contains(&i) {
                    assert_eq!(a, b, "{id:?} changed byte {i}");
                }
            }
            assert_ne!(after, base_bytes, "{id:?} had no effect");
        }
    }

    #[test]
    fn wrong_lengths_rejected() {
        let orig = sample();
        let good = serialize(&orig);
        for len in [0, 1, G_PACKET_LEN - 1, G_PACKET_LEN + 1, 2 * G_PACKET_LEN] {
            let mut bytes = good.clone();
            bytes.resize(len, 0xee);
            let mut r = orig.clone();
            assert_eq!(r.gdb_deserialize(&bytes), Err(()), "len {len}");
            assert_eq!(r, orig, "failed deserialize must not modify");
        }
        for id in X86_64KvmRegId::all() {
            let size = id.size();
            for len in [0, size - 1, size + 1] {
                let mut r = orig.clone();
                let err = write_reg(&mut r, id, &vec![0u8; len]);
                assert_eq!(
                    err,
                    Err(RegError::WrongLength {
                        reg: id,
                        expected: size,
                        got: len
                    })
                );
                assert_eq!(r, orig);
            }
            let mut small = vec![0u8; size - 1];
            assert_eq!(read_reg(&orig, id, &mut small), None);
        }
        let mut r = orig.clone();
        assert_eq!(
            write_reg(&mut r, X86_64KvmRegId::Gpr(16), &[0; 8]),
            Err(RegError::NoSuchRegister(X86_64KvmRegId::Gpr(16)))
        );
        assert_eq!(read_reg(&orig, X86_64KvmRegId::Xmm(16), &mut [0; 16]), None);
    }

    /// 80-bit value from sign+exponent and the 64-bit significand.
    fn f80(sign_exp: u16, mantissa: u64) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[..8].copy_from_slice(&mantissa.to_le_bytes());
        b[8..].copy_from_slice(&sign_exp.to_le_bytes());
        b
    }

    #[test]
    fn classify_cases() {
        assert_eq!(classify_st(&f80(0x3fff, 1 << 63)), TAG_VALID); // 1.0
        assert_eq!(classify_st(&f80(0xc000, 0xc000_0000_0000_0000)), TAG_VALID); // -3.0
        assert_eq!(classify_st(&f80(0, 0)), TAG_ZERO);
        assert_eq!(classify_st(&f80(0x8000, 0)), TAG_ZERO); // -0.0
        assert_eq!(classify_st(&f80(0x7fff, 1 << 63)), TAG_SPECIAL); // +inf
        assert_eq!(
            classify_st(&f80(0xffff, 0xc000_0000_0000_0000)),
            TAG_SPECIAL
        ); // QNaN
        assert_eq!(classify_st(&f80(0, 1)), TAG_SPECIAL); // denormal
        assert_eq!(classify_st(&f80(0, 1 << 63)), TAG_SPECIAL); // pseudo-denormal
        assert_eq!(classify_st(&f80(0x3fff, 1)), TAG_SPECIAL); // unnormal
    }

    fn kvm_sample() -> (kvm_regs, kvm_sregs, kvm_fpu) {
        let regs = kvm_regs {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rsp: 7,
            rbp: 8,
            r8: 9,
            r9: 10,
            r10: 11,
            r11: 12,
            r12: 13,
            r13: 14,
            r14: 15,
            r15: 16,
            rip: 0xffff_ffff_8100_1234,
            rflags: 0x0000_0000_0020_0246,
        };
        let mut sregs = kvm_sregs::default();
        for (k, seg) in [
            &mut sregs.cs,
            &mut sregs.ss,
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.fs,
            &mut sregs.gs,
        ]
        .into_iter()
        .enumerate()
        {
            seg.selector = 0x10 + 8 * k as u16;
            seg.base = 0x1000 * (k as u64 + 1);
            seg.limit = 0xffff_ffff;
            seg.type_ = 0xb;
            seg.present = 1;
            seg.l = 1;
        }
        sregs.cr0 = 0x8005_0033;
        sregs.cr2 = 0xdead_b000;
        sregs.cr3 = 0x0123_4000;
        sregs.cr4 = 0x0037_06f0;
        sregs.cr8 = 0x7;
        sregs.efer = 0xd01;

        // TOP = 3: ST(i) lives in physical register (i + 3) % 8.
        let mut fpu = kvm_fpu {
            fsw: (3 << 11) | 0x0041,
            fcw: 0x037f,
            ..Default::default()
        };
        let contents = [
            f80(0x3fff, 1 << 63),               // ST0 -> R3: valid
            f80(0, 0),                          // ST1 -> R4: zero
            f80(0x7fff, 0xc000_0000_0000_0000), // ST2 -> R5: NaN
            f80(0x7fff, 1 << 63),               // ST3 -> R6: infinity
            f80(0, 0x1234),                     // ST4 -> R7: denormal
            f80(0x4000, 0x1234),                // ST5 -> R0: unnormal
            f80(0xbfff, 1 << 63),               // ST6 -> R1: empty despite contents
            f80(0, 0),                          // ST7 -> R2: empty
        ];
        for (dst, src) in fpu.fpr.iter_mut().zip(contents) {
            dst[..10].copy_from_slice(&src);
            dst[10..].copy_from_slice(&[0xaa; 6]);
        }
        // Non-empty physical registers R0, R3..R7.
        fpu.ftwx = 0b1111_1001;
        fpu.last_opcode = 0x05d9;
        fpu.last_ip = 0x0000_7fff_1234_5678;
        fpu.last_dp = 0xffff_8880_0bad_f00d;
        for (i, x) in fpu.xmm.iter_mut().enumerate() {
            *x = (0x1111_2222_3333_4444_5555_6666_7777_0000u128 + i as u128).to_le_bytes();
        }
        fpu.mxcsr = 0x1fa0;
        (regs, sregs, fpu)
    }

    #[test]
    fn tag_word_conversion() {
        let (_, _, fpu) = kvm_sample();
        let r = X86_64KvmRegs::from_kvm(&kvm_regs::default(), &kvm_sregs::default(), &fpu, 0);
        // Physical R7..R0: special, special, special, zero, valid, empty, empty, special.
        let expected: u16 = (TAG_SPECIAL << 14)
            | (TAG_SPECIAL << 12)
            | (TAG_SPECIAL << 10)
            | (TAG_ZERO << 8)
            | (TAG_VALID << 6)
            | (TAG_EMPTY << 4)
            | (TAG_EMPTY << 2)
            | TAG_SPECIAL;
        assert_eq!(r.ftag, u32::from(expected), "{:#06x}", r.ftag);
        assert_eq!(ftw_full_to_abridged(expected), fpu.ftwx);

        // All empty / all valid extremes, with TOP = 0.
        let st = [f80(0x3fff, 1 << 63); 8];
        assert_eq!(ftw_abridged_to_full(0, 0, &st), 0xffff);
        assert_eq!(ftw_abridged_to_full(0xff, 0, &st), 0x0000);
        assert_eq!(ftw_full_to_abridged(0xffff), 0);
        assert_eq!(ftw_full_to_abridged(0x0000), 0xff);
        // Any non-empty tag maps to 1.
        assert_eq!(ftw_full_to_abridged(0xff00 | 0b10_01_00_11), 0b1110);
    }

    #[test]
    fn kvm_roundtrip_every_field() {
        let (regs, sregs, fpu) = kvm_sample();
        let r = X86_64KvmRegs::from_kvm(&regs, &sregs, &fpu, 0xffff_8880_1234_0000);
        assert_eq!(
            r.regs,
            [1, 2, 3, 4, 5, 6, 8, 7, 9, 10, 11, 12, 13, 14, 15, 16]
        );
        assert_eq!(r.rip, regs.rip);
        assert_eq!(r.eflags, 0x0020_0246);
        assert_eq!(
            [r.cs, r.ss, r.ds, r.es, r.fs, r.gs],
            [0x10, 0x18, 0x20, 0x28, 0x30, 0x38]
        );
        assert_eq!(r.fs_base, sregs.fs.base);
        assert_eq!(r.gs_base, sregs.gs.base);
        assert_eq!(r.k_gs_base, 0xffff_8880_1234_0000);
        assert_eq!(
            [r.cr0, r.cr2, r.cr3, r.cr4, r.cr8, r.efer],
            [
                sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.cr8, sregs.efer
            ]
        );
        for (st, fpr) in r.st.iter().zip(fpu.fpr.iter()) {
            assert_eq!(st.as_slice(), &fpr[..10]);
        }
        assert_eq!(r.fctrl, 0x037f);
        assert_eq!(r.fstat, u32::from(fpu.fsw));
        assert_eq!((r.fiseg, r.fioff), (0x7fff, 0x1234_5678));
        assert_eq!((r.foseg, r.fooff), (0xffff_8880, 0x0bad_f00d));
        assert_eq!(r.fop, 0x05d9);
        assert_eq!(r.xmm[15], 0x1111_2222_3333_4444_5555_6666_7777_000f);
        assert_eq!(r.mxcsr, 0x1fa0);

        // Unchanged state goes back bit-for-bit, including untouched KVM fields.
        let (mut regs2, mut sregs2, mut fpu2) = (regs, sregs, fpu);
        assert_eq!(r.to_kvm(&mut regs2, &mut sregs2, &mut fpu2), r.k_gs_base);
        assert_eq!(regs2, regs);
        assert_eq!(sregs2, sregs);
        assert_eq!(fpu2, fpu);

        // Edits land in the right KVM fields; selector writes keep the descriptor cache.
        let mut edited = r.clone();
        edited.regs[6] = 0xbbbb; // rbp
        edited.regs[7] = 0x5555; // rsp
        edited.eflags = 0x2;
        edited.cs = 0x33;
        edited.gs = 0x2b;
        edited.gs_base = 0x4242;
        edited.k_gs_base = 0x9999;
        edited.cr3 = 0xabc000;
        edited.cr8 = 0xf;
        edited.efer = 0x500;
        edited.st[0] = f80(0, 0);
        // Only R0 non-empty; with TOP = 3 it holds ST5, an unnormal, so it reads back
        // as special (0b10) rather than the 0b00 written here.
        edited.ftag = 0xfffc;
        edited.fiseg = 0x1;
        edited.fooff = 0x2;
        edited.fop = 0x123;
        edited.xmm[3] = u128::MAX;
        edited.mxcsr = 0x1f80;
        let (mut regs3, mut sregs3, mut fpu3) = (regs, sregs, fpu);
        let kgs = edited.to_kvm(&mut regs3, &mut sregs3, &mut fpu3);
        assert_eq!(kgs, 0x9999);
        assert_eq!((regs3.rbp, regs3.rsp), (0xbbbb, 0x5555));
        assert_eq!(regs3.rflags, 0x2);
        assert_eq!(sregs3.cs.selector, 0x33);
        assert_eq!(
            (
                sregs3.cs.base,
                sregs3.cs.limit,
                sregs3.cs.type_,
                sregs3.cs.l
            ),
            (sregs.cs.base, sregs.cs.limit, sregs.cs.type_, sregs.cs.l)
        );
        assert_eq!((sregs3.gs.selector, sregs3.gs.base), (0x2b, 0x4242));
        assert_eq!(
            (sregs3.cr3, sregs3.cr8, sregs3.efer),
            (0xabc000, 0xf, 0x500)
        );
        assert_eq!(&fpu3.fpr[0][..10], &[0u8; 10]);
        assert_eq!(&fpu3.fpr[0][10..], &[0xaa; 6], "fpr padding preserved");
        assert_eq!(fpu3.ftwx, 0b0000_0001);
        assert_eq!(fpu3.last_ip, 0x1_1234_5678);
        assert_eq!(fpu3.last_dp, 0xffff_8880_0000_0002);
        assert_eq!(fpu3.last_opcode, 0x123);
        assert_eq!(fpu3.xmm[3], [0xff; 16]);
        assert_eq!(fpu3.mxcsr, 0x1f80);
        // Reading the result back gives what was written, with the tag re-derived.
        let back = X86_64KvmRegs::from_kvm(&regs3, &sregs3, &fpu3, kgs);
        assert_eq!(back.ftag, 0xfffe);
        assert_eq!(
            X86_64KvmRegs {
                ftag: 0xfffc,
                ..back
            },
            edited
        );
    }

    #[test]
    fn gdb_accepts_target_description() {
        if !gdb_available() {
            return;
        }
        let path = temp_xml("offline");
        let out = Command::new("gdb")
            .args(["-batch", "-nx", "-ex"])
            .arg(format!("set tdesc filename {}", path.display()))
            .args(["-ex", "maint print remote-registers"])
            .output()
            .expect("run gdb");
        let _ = std::fs::remove_file(&path);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "gdb failed: {stderr}");
        assert!(
            !stderr.to_lowercase().contains("warning") && !stderr.contains("rror"),
            "gdb complained: {stderr}"
        );

        // Columns: Name Nr Rel Offset Size Type [Rmt-Nr g/G-Offset]. GDB's remote
        // numbering and g-packet offsets must equal ours.
        let mut by_remote: Vec<(usize, String, usize, usize)> = stdout
            .lines()
            .filter_map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let [name, _, _, _, size, .., rmt, goff] = cols.as_slice() else {
                    return None;
                };
                Some((
                    rmt.parse().ok()?,
                    name.to_string(),
                    size.parse().ok()?,
                    goff.parse().ok()?,
                ))
            })
            .collect();
        by_remote.sort();
        assert_eq!(by_remote.len(), NUM_REGS, "{stdout}");
        let offs = offsets();
        for (n, (rmt, name, size, goff)) in by_remote.into_iter().enumerate() {
            let id = X86_64KvmRegId::from_raw(n).expect("id");
            assert_eq!(rmt, n);
            assert_eq!(Some(name.as_str()), id.name(), "remote number {n}");
            assert_eq!(size, id.size(), "{name}");
            assert_eq!(goff, offs[n], "{name}");
        }
    }

    /// Minimal single-CPU target so real GDB can talk to the stub.
    struct FakeCpu {
        regs: X86_64KvmRegs,
    }

    mod fake_target {
        use super::super::*;
        use super::FakeCpu;
        use gdbstub::target::ext::base::BaseOps;
        use gdbstub::target::ext::base::single_register_access::{
            SingleRegisterAccess, SingleRegisterAccessOps,
        };
        use gdbstub::target::ext::base::singlethread::SingleThreadBase;
        use gdbstub::target::{Target, TargetError, TargetResult};

        impl Target for FakeCpu {
            type Arch = X86_64Kvm;
            type Error = ();
            fn base_ops(&mut self) -> BaseOps<'_, X86_64Kvm, ()> {
                BaseOps::SingleThread(self)
            }
            // Never resumed, so GDB-inserted breakpoints are irrelevant here.
            fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
                true
            }
        }

        impl SingleThreadBase for FakeCpu {
            fn read_registers(&mut self, regs: &mut X86_64KvmRegs) -> TargetResult<(), Self> {
                *regs = self.regs.clone();
                Ok(())
            }
            fn write_registers(&mut self, regs: &X86_64KvmRegs) -> TargetResult<(), Self> {
                self.regs = regs.clone();
                Ok(())
            }
            fn read_addrs(&mut self, _addr: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
                data.fill(0);
                Ok(data.len())
            }
            fn write_addrs(&mut self, _addr: u64, _data: &[u8]) -> TargetResult<(), Self> {
                Ok(())
            }
            fn support_single_register_access(
                &mut self,
            ) -> Option<SingleRegisterAccessOps<'_, (), Self>> {
                Some(self)
            }
        }

        impl SingleRegisterAccess<()> for FakeCpu {
            fn read_register(
                &mut self,
                _tid: (),
                id: X86_64KvmRegId,
                buf: &mut [u8],
            ) -> TargetResult<usize, Self> {
                read_reg(&self.regs, id, buf).ok_or(TargetError::NonFatal)
            }
            fn write_register(
                &mut self,
                _tid: (),
                id: X86_64KvmRegId,
                val: &[u8],
            ) -> TargetResult<(), Self> {
                write_reg(&mut self.regs, id, val).map_err(|_| TargetError::NonFatal)
            }
        }
    }

    /// Serve one GDB session on `listener`; returns the final register state.
    fn serve_one(listener: std::net::TcpListener, regs: X86_64KvmRegs) -> X86_64KvmRegs {
        use gdbstub::conn::ConnectionExt;
        use gdbstub::stub::state_machine::GdbStubStateMachine;
        use gdbstub::stub::{GdbStub, SingleThreadStopReason};

        let (stream, _) = listener.accept().expect("accept");
        let mut cpu = FakeCpu { regs };
        let mut sm = GdbStub::new(stream)
            .run_state_machine(&mut cpu)
            .expect("start stub");
        loop {
            sm = match sm {
                GdbStubStateMachine::Idle(mut g) => {
                    let Ok(byte) = g.borrow_conn().read() else {
                        break;
                    };
                    g.incoming_data(&mut cpu, byte).expect("packet")
                }
                GdbStubStateMachine::CtrlCInterrupt(g) => g
                    .interrupt_handled(&mut cpu, None::<SingleThreadStopReason<u64>>)
                    .expect("interrupt"),
                GdbStubStateMachine::Running(_) | GdbStubStateMachine::Disconnected(_) => break,
            };
        }
        cpu.regs
    }

    #[test]
    fn gdb_session_over_remote_protocol() {
        if !gdb_available() {
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut regs = sample();
        regs.cr3 = 0x1234_5000;
        regs.efer = 0xd01;
        let initial = regs.clone();
        let server = std::thread::spawn(move || serve_one(listener, initial));

        let mut child = Command::new("gdb")
            .args(["-batch", "-nx"])
            .args(["-ex", "set remotetimeout 5"])
            .arg("-ex")
            .arg(format!("target remote 127.0.0.1:{port}"))
            .args(["-ex", "maint print raw-registers"])
            .args(["-ex", "p/x $cr3"])
            .args(["-ex", "p $efer"])
            .args(["-ex", "set $k_gs_base = 0xffff888012340000"])
            .args(["-ex", "set $st1 = 2.5"])
            .args(["-ex", "p/x $k_gs_base"])
            .args(["-ex", "detach"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn gdb");
        // Guard against a wedged session.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("gdb timed out");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("gdb output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let final_regs = server.join().expect("stub thread");
        assert!(out.status.success(), "gdb failed: {stderr}\n{stdout}");

        // Every described register shows up with a name GDB understood.
        let raw_names: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        for id in X86_64KvmRegId::all() {
            let name = id.name().expect("name");
            assert!(raw_names.contains(&name), "{name} missing:\n{stdout}");
        }
        assert!(stdout.contains("0x12345000"), "{stdout}");
        assert!(stdout.contains("SCE") && stdout.contains("LMA"), "{stdout}");
        assert!(stdout.contains("0xffff888012340000"), "{stdout}");
        assert_eq!(final_regs.k_gs_base, 0xffff_8880_1234_0000);
        // 2.5 as x87 extended: exponent 0x4000, significand 0xa000...
        assert_eq!(final_regs.st[1], [0, 0, 0, 0, 0, 0, 0, 0xa0, 0x00, 0x40]);
        let mut expected = regs.clone();
        expected.k_gs_base = final_regs.k_gs_base;
        expected.st[1] = final_regs.st[1];
        assert_eq!(final_regs, expected, "no other register may change");
    }
}
