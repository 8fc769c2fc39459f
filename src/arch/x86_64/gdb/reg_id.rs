//! Register numbers, names and sizes, and single-register access (`p`/`P`).

use core::num::NonZeroUsize;

use gdbstub::arch::RegId;

use super::{NUM_REGS, X86_64KvmRegs};

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
