//! The vCPU side of debugging on x86: GDB's register file from KVM state, guest memory by
//! virtual address through the vCPU's own page tables, KVM_SET_GUEST_DEBUG programming, and
//! what a debug exit means.

use kvm_bindings::{
    KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS, Msrs, kvm_debug_exit_arch,
    kvm_guest_debug, kvm_msr_entry, kvm_sregs,
};
use kvm_ioctls::{Cap, Kvm, SyncReg, VcpuFd};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use super::cpu::MSR_KERNEL_GS_BASE;
use super::debugreg::{self, DR6_BS, DebugRegError, HwBreakKind, HwSlot, NUM_SLOTS};
use super::gdb::X86_64KvmRegs;
use super::paging::{self, PagingContext, Translation, WalkError};
use super::vcpu_ops::VcpuOps;
use crate::memory::GuestMem;

/// KVM_CAP_SET_GUEST_DEBUG2: the KVM_GUESTDBG_* flags this host accepts.
const KVM_CAP_SET_GUEST_DEBUG2: u64 = 195;
/// The debug exception (#DB).
pub const DB_VECTOR: u32 = 1;
/// The breakpoint exception (#BP), which int3 raises.
pub const BP_VECTOR: u32 = 3;

/// Why a debugger request could not be served on the vCPU.
#[derive(Debug, Error)]
pub enum DebugError {
    /// A KVM ioctl on the vCPU failed.
    #[error("{ioctl} failed: {source}")]
    Kvm {
        ioctl: &'static str,
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_SREGS refused GDB's values: most likely a control register the CPU refuses.
    #[error("KVM_SET_SREGS failed (a control register value the CPU refuses?): {0}")]
    SetSregs(kvm_ioctls::Error),
    /// KVM_SET_XSAVE refused the MXCSR GDB wrote.
    #[error("KVM_SET_XSAVE failed (MXCSR {mxcsr:#x} refused?): {source}")]
    SetMxcsr {
        mxcsr: u32,
        source: kvm_ioctls::Error,
    },
    /// The MSR list for KVM_GET_MSRS/KVM_SET_MSRS could not be allocated.
    #[error("cannot build the MSR list")]
    MsrList,
    /// The hardware breakpoints do not fit the debug registers.
    #[error(transparent)]
    DebugRegs(#[from] DebugRegError),
    /// A page of the range is not mapped by the vCPU's page tables (or not to RAM).
    #[error("address {0:#x} is not mapped to RAM")]
    NotMapped(u64),
    /// A page of the range is outside guest RAM.
    #[error("address {0:#x} is not RAM")]
    NotRam(u64),
    /// The range runs past the top of the address space.
    #[error("range at {0:#x} wraps around the address space")]
    Wraps(u64),
    /// Guest memory refused the write.
    #[error("write at {addr:#x}: {source}")]
    Write { addr: u64, source: GuestMemoryError },
    /// The page walk for a virtual address failed.
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// The request came while the vCPU was running; the debugger only touches a paused one.
    #[error("the vCPU is running")]
    Running,
}

/// Maps a failed ioctl to a `DebugError` naming it.
pub(crate) fn kvm(ioctl: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> DebugError {
    move |source| DebugError::Kvm { ioctl, source }
}

/// Whether the host can keep interrupts from firing while single-stepping (Linux 5.16+).
pub fn host_blocks_irq_when_stepping(kvm: &Kvm) -> bool {
    let flags = kvm.check_extension_raw(KVM_CAP_SET_GUEST_DEBUG2);
    flags > 0 && (flags as u32) & KVM_GUESTDBG_BLOCKIRQ != 0
}

/// What the debugger wants a vCPU to trap on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DebugConfig {
    pub single_step: bool,
    /// Software breakpoints exist, so `int3` must exit to minivmm.
    pub sw_breakpoints: bool,
    pub hw_slots: [Option<HwSlot>; NUM_SLOTS],
    /// Use KVM_GUESTDBG_BLOCKIRQ while stepping (only where the host supports it).
    pub block_irq: bool,
    /// Step every instruction to check watched memory: write watchpoints on a host whose
    /// data breakpoints never fire. Interrupts are not blocked: their handlers write too.
    pub watch_stepping: bool,
}

impl DebugConfig {
    /// Whether the vCPU can stop for the debugger on its own (KVM_GUESTDBG_ENABLE).
    pub fn enabled(&self) -> bool {
        self.single_step
            || self.watch_stepping
            || self.sw_breakpoints
            || self.hw_slots.iter().any(Option::is_some)
    }
}

/// Programs KVM_SET_GUEST_DEBUG from `config`; an empty config turns debugging off, so an
/// undebugged guest runs exactly as without a debugger. While it is on, KVM also copies the
/// registers into kvm_run at every exit (KVM_CAP_SYNC_REGS, where the host has it), so that
/// a stop's `StopState` costs no ioctl; returns whether it does.
pub fn set_guest_debug(
    vcpu: &mut VcpuFd,
    config: &DebugConfig,
    host_syncs_regs: bool,
) -> Result<bool, DebugError> {
    let mut dbg = kvm_guest_debug::default();
    let hw_used = config.hw_slots.iter().any(Option::is_some);
    let stepping = config.single_step || config.watch_stepping;
    if config.enabled() {
        dbg.control = KVM_GUESTDBG_ENABLE;
    }
    if stepping {
        dbg.control |= KVM_GUESTDBG_SINGLESTEP;
    }
    if config.single_step && config.block_irq {
        dbg.control |= KVM_GUESTDBG_BLOCKIRQ;
    }
    if config.sw_breakpoints {
        dbg.control |= KVM_GUESTDBG_USE_SW_BP;
    }
    if hw_used {
        dbg.control |= KVM_GUESTDBG_USE_HW_BP;
        dbg.arch.debugreg = debugreg::debugreg_array(&config.hw_slots)?;
    }
    vcpu.set_guest_debug(&dbg)
        .map_err(kvm("KVM_SET_GUEST_DEBUG"))?;
    let sync = config.enabled() && host_syncs_regs;
    for reg in [SyncReg::Register, SyncReg::SystemRegister] {
        if sync {
            vcpu.set_sync_valid_reg(reg);
        } else {
            vcpu.clear_sync_valid_reg(reg);
        }
    }
    Ok(sync)
}

/// Whether KVM can copy general and system registers into kvm_run at exits (KVM rejects a
/// KVM_RUN that asks for more than it supports).
pub fn host_syncs_regs(kvm: &Kvm) -> bool {
    let wanted = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
    kvm.check_extension_int(Cap::SyncRegs) as u32 & wanted == wanted
}

/// Why the vCPU stopped, in debugger terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugStop {
    /// A single-step finished.
    Step,
    /// A software breakpoint (`int3` the debugger planted) at the vCPU's RIP.
    SwBreak,
    /// A hardware execution breakpoint.
    HwBreak,
    /// A hardware watchpoint on `addr`.
    Watch { addr: u64, kind: HwBreakKind },
    /// The kernel just switched to its own page tables at a new KASLR slide (the debugger
    /// asked to stop then, see `KernelMapWatch`).
    KernelMapped { slide: u64 },
}

/// What to do with a KVM_EXIT_DEBUG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugExit {
    Stop(DebugStop),
    /// A #BP from an `int3` the guest owns: hand it back to the guest.
    GuestBreakpoint,
    /// A #DB the debugger did not ask for: hand it back too.
    GuestDebugTrap,
    /// A step taken only to check software-emulated watchpoints.
    WatchStep,
}

/// Interprets a debug exit. `is_our_sw_breakpoint` says whether a software breakpoint is
/// planted at the given linear address.
pub fn classify_debug_exit(
    exit: &kvm_debug_exit_arch,
    config: &DebugConfig,
    is_our_sw_breakpoint: impl Fn(u64) -> bool,
) -> DebugExit {
    match exit.exception {
        BP_VECTOR if is_our_sw_breakpoint(exit.pc) => DebugExit::Stop(DebugStop::SwBreak),
        BP_VECTOR => DebugExit::GuestBreakpoint,
        DB_VECTOR => {
            for slot in debugreg::triggered_slots(exit.dr6) {
                if let Some(Some(hw)) = config.hw_slots.get(slot) {
                    return DebugExit::Stop(match hw.kind {
                        HwBreakKind::Execute => DebugStop::HwBreak,
                        kind => DebugStop::Watch {
                            addr: hw.addr,
                            kind,
                        },
                    });
                }
            }
            if config.single_step {
                DebugExit::Stop(DebugStop::Step)
            } else if exit.dr6 & DR6_BS != 0 && config.watch_stepping {
                DebugExit::WatchStep
            } else if exit.dr6 & DR6_BS != 0 {
                DebugExit::Stop(DebugStop::Step)
            } else {
                DebugExit::GuestDebugTrap
            }
        }
        _ => DebugExit::GuestDebugTrap,
    }
}

/// A write watchpoint emulated by comparing memory after every instruction.
#[derive(Clone, Debug)]
pub struct SoftWatch {
    pub addr: u64,
    len: usize,
    last: Vec<u8>,
}

impl SoftWatch {
    /// Starts watching `[addr, addr + len)` from its current contents.
    pub fn new(mem: &GuestMem, ctx: &PagingContext, addr: u64, len: usize) -> SoftWatch {
        let last = read_memory(mem, ctx, AddressSpace::Virtual, addr, len);
        SoftWatch { addr, len, last }
    }

    /// Whether the watched bytes changed since the last look (and remembers them).
    pub fn changed(&mut self, mem: &GuestMem, ctx: &PagingContext) -> bool {
        let now = read_memory(mem, ctx, AddressSpace::Virtual, self.addr, self.len);
        if now == self.last {
            return false;
        }
        self.last = now;
        true
    }
}

/// Gives a #BP that KVM intercepted back to the guest. RIP still points at the `int3`; KVM
/// recorded the instruction length at the intercept and delivers it as a software exception.
pub fn reinject_exception(vcpu: &impl VcpuOps, vector: u32) -> Result<(), kvm_ioctls::Error> {
    let mut events = vcpu.events()?;
    events.exception.injected = 1;
    events.exception.nr = vector as u8;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
    vcpu.set_events(&events)
}

pub fn read_kernel_gs_base(vcpu: &VcpuFd) -> Result<u64, DebugError> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_KERNEL_GS_BASE,
        ..Default::default()
    }])
    .map_err(|_| DebugError::MsrList)?;
    vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
    Ok(msrs.as_slice()[0].data)
}

/// MXCSR's place in the legacy (FXSAVE) part of the XSAVE area, in 32-bit words.
const XSAVE_MXCSR_WORD: usize = 6;

/// KVM_GET_FPU leaves MXCSR out on some hosts (and KVM_SET_FPU ignores it); the XSAVE area
/// always has it.
fn fpu_with_mxcsr(vcpu: &VcpuFd) -> Result<kvm_bindings::kvm_fpu, DebugError> {
    let mut fpu = vcpu.get_fpu().map_err(kvm("KVM_GET_FPU"))?;
    if let Ok(xsave) = vcpu.get_xsave() {
        fpu.mxcsr = xsave.region[XSAVE_MXCSR_WORD];
    }
    Ok(fpu)
}

fn set_mxcsr(vcpu: &VcpuFd, mxcsr: u32) -> Result<(), DebugError> {
    let Ok(mut xsave) = vcpu.get_xsave() else {
        return Ok(());
    };
    if xsave.region[XSAVE_MXCSR_WORD] == mxcsr {
        return Ok(());
    }
    xsave.region[XSAVE_MXCSR_WORD] = mxcsr;
    // SAFETY: the buffer is the full legacy-size area KVM_GET_XSAVE just filled for this vCPU,
    // which is what KVM_SET_XSAVE reads.
    unsafe { vcpu.set_xsave(&xsave) }.map_err(|source| DebugError::SetMxcsr { mxcsr, source })
}

/// GDB's register file from the vCPU.
pub fn read_registers(vcpu: &VcpuFd) -> Result<X86_64KvmRegs, DebugError> {
    let regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
    let sregs = get_sregs(vcpu)?;
    let fpu = fpu_with_mxcsr(vcpu)?;
    Ok(X86_64KvmRegs::from_kvm(
        &regs,
        &sregs,
        &fpu,
        read_kernel_gs_base(vcpu)?,
    ))
}

/// Writes GDB's register file back, touching only what GDB can express.
pub fn write_registers(vcpu: &VcpuFd, new: &X86_64KvmRegs) -> Result<(), DebugError> {
    let mut regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
    let mut sregs = get_sregs(vcpu)?;
    let mut fpu = fpu_with_mxcsr(vcpu)?;
    let kgs = new.to_kvm(&mut regs, &mut sregs, &mut fpu);
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
    vcpu.set_sregs(&sregs).map_err(DebugError::SetSregs)?;
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;
    set_mxcsr(vcpu, fpu.mxcsr)?;
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_KERNEL_GS_BASE,
        data: kgs,
        ..Default::default()
    }])
    .map_err(|_| DebugError::MsrList)?;
    vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    Ok(())
}

/// What a debugger needs at every stop: where the vCPU is (GDB places the stop from pc, sp
/// and frame pointer) and how it maps memory. At a stop it comes from kvm_run for free (see
/// `set_guest_debug`), otherwise from two ioctls; the rest of the register file (FPU, SSE,
/// MSRs) costs three more and is read only when asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopState {
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub paging: PagingContext,
}

impl From<&X86_64KvmRegs> for StopState {
    fn from(r: &X86_64KvmRegs) -> Self {
        StopState {
            rip: r.rip,
            rsp: r.regs[7],
            rbp: r.regs[6],
            paging: r.paging_context(),
        }
    }
}

/// The vCPU's `StopState`. `synced`: KVM copied the registers into kvm_run at the exit just
/// taken (see `set_guest_debug`) and nothing changed them since.
pub fn read_stop_state(vcpu: &VcpuFd, synced: bool) -> Result<StopState, DebugError> {
    let (regs, sregs) = if synced {
        let s = vcpu.sync_regs();
        (s.regs, s.sregs)
    } else {
        let regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        (regs, get_sregs(vcpu)?)
    };
    Ok(StopState {
        rip: regs.rip,
        rsp: regs.rsp,
        rbp: regs.rbp,
        paging: paging_of(&sregs),
    })
}

/// The vCPU's paging state, for the page-table walker.
pub fn paging_context(vcpu: &impl VcpuOps) -> Result<PagingContext, DebugError> {
    let sregs = vcpu.sregs().map_err(kvm("KVM_GET_SREGS"))?;
    Ok(paging_of(&sregs))
}

fn get_sregs(vcpu: &VcpuFd) -> Result<kvm_sregs, DebugError> {
    vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))
}

fn paging_of(s: &kvm_sregs) -> PagingContext {
    PagingContext {
        cr0: s.cr0,
        cr3: s.cr3,
        cr4: s.cr4,
        efer: s.efer,
    }
}

/// How a debugger address is to be understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSpace {
    /// Guest-virtual, through the vCPU's current page tables.
    Virtual,
    /// Guest-physical (`monitor phys on`).
    Physical,
}

/// Translates `vaddr` with the vCPU's page tables.
pub fn translate(
    mem: &GuestMem,
    ctx: &PagingContext,
    vaddr: u64,
) -> Result<Translation, WalkError> {
    paging::translate(mem, ctx, vaddr)
}

/// Reads guest memory page by page; stops at the first byte that cannot be read and returns
/// what was read before it (GDB accepts short reads).
pub fn read_memory(
    mem: &GuestMem,
    ctx: &PagingContext,
    space: AddressSpace,
    addr: u64,
    len: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for (page_addr, chunk) in paging::split_by_page(addr, len) {
        let Some(phys) = physical(mem, ctx, space, page_addr) else {
            break;
        };
        let start = out.len();
        out.resize(start + chunk, 0);
        if mem
            .read_slice(&mut out[start..], GuestAddress(phys))
            .is_err()
        {
            out.truncate(start);
            break;
        }
    }
    out
}

/// Writes guest memory; all or nothing: every page is translated and checked before the
/// first byte changes.
pub fn write_memory(
    mem: &GuestMem,
    ctx: &PagingContext,
    space: AddressSpace,
    addr: u64,
    data: &[u8],
) -> Result<(), DebugError> {
    let mut pieces = Vec::new();
    let mut offset = 0;
    for (page_addr, chunk) in paging::split_by_page(addr, data.len()) {
        let phys = physical(mem, ctx, space, page_addr).ok_or(DebugError::NotMapped(page_addr))?;
        if !mem.check_range(GuestAddress(phys), chunk) {
            return Err(DebugError::NotRam(page_addr));
        }
        pieces.push((phys, offset, chunk));
        offset += chunk;
    }
    if offset != data.len() {
        return Err(DebugError::Wraps(addr));
    }
    for (phys, off, chunk) in pieces {
        mem.write_slice(&data[off..off + chunk], GuestAddress(phys))
            .map_err(|source| DebugError::Write { addr: phys, source })?;
    }
    Ok(())
}

fn physical(mem: &GuestMem, ctx: &PagingContext, space: AddressSpace, addr: u64) -> Option<u64> {
    match space {
        AddressSpace::Physical => Some(addr),
        AddressSpace::Virtual => paging::translate(mem, ctx, addr).ok().map(|t| t.phys),
    }
}

/// The registers `monitor regs` shows beyond GDB's own: debug registers and descriptor tables.
pub fn describe_system_registers(vcpu: &VcpuFd) -> Result<String, DebugError> {
    let s = get_sregs(vcpu)?;
    let d = vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
    let r = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
    let seg = |n: &str, x: &kvm_bindings::kvm_segment| {
        format!(
            "{n:<4} sel {:#06x} base {:#018x} limit {:#010x} type {:#x} dpl {} l {} db {}\n",
            x.selector, x.base, x.limit, x.type_, x.dpl, x.l, x.db
        )
    };
    let mut out = format!(
        "rip  {:#018x} rflags {:#010x}\ncr0  {:#018x} cr2 {:#018x} cr3 {:#018x}\ncr4  {:#018x} cr8 {:#x} efer {:#x} apic_base {:#x}\n",
        r.rip, r.rflags, s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer, s.apic_base
    );
    for (n, x) in [
        ("cs", &s.cs),
        ("ds", &s.ds),
        ("es", &s.es),
        ("fs", &s.fs),
        ("gs", &s.gs),
        ("ss", &s.ss),
        ("tr", &s.tr),
        ("ldt", &s.ldt),
    ] {
        out.push_str(&seg(n, x));
    }
    out.push_str(&format!(
        "gdt  base {:#018x} limit {:#06x}\nidt  base {:#018x} limit {:#06x}\n",
        s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit
    ));
    out.push_str(&format!(
        "dr0  {:#018x} dr1 {:#018x}\ndr2  {:#018x} dr3 {:#018x}\ndr6  {:#018x} dr7 {:#018x}\n",
        d.db[0], d.db[1], d.db[2], d.db[3], d.dr6, d.dr7
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(exception: u32, pc: u64, dr6: u64) -> kvm_debug_exit_arch {
        kvm_debug_exit_arch {
            exception,
            pad: 0,
            pc,
            dr6,
            dr7: 0,
        }
    }

    #[test]
    fn classifies_debug_exits() {
        let mut config = DebugConfig::default();
        config.hw_slots[1] = Some(HwSlot {
            addr: 0x2000,
            kind: HwBreakKind::Execute,
            len: 1,
        });
        config.hw_slots[2] = Some(HwSlot {
            addr: 0x3000,
            kind: HwBreakKind::Write,
            len: 8,
        });
        let ours = |pc| pc == 0x1000;
        assert_eq!(
            classify_debug_exit(&exit(3, 0x1000, 0), &config, ours),
            DebugExit::Stop(DebugStop::SwBreak)
        );
        assert_eq!(
            classify_debug_exit(&exit(3, 0x1234, 0), &config, ours),
            DebugExit::GuestBreakpoint
        );
        assert_eq!(
            classify_debug_exit(&exit(1, 0x2000, 0b10), &config, ours),
            DebugExit::Stop(DebugStop::HwBreak)
        );
        assert_eq!(
            classify_debug_exit(&exit(1, 0x5555, 0b100), &config, ours),
            DebugExit::Stop(DebugStop::Watch {
                addr: 0x3000,
                kind: HwBreakKind::Write
            })
        );
        assert_eq!(
            classify_debug_exit(&exit(1, 0x1, DR6_BS), &config, ours),
            DebugExit::Stop(DebugStop::Step)
        );
        // A #DB from a slot the debugger does not own, and no stepping: the guest's.
        assert_eq!(
            classify_debug_exit(&exit(1, 0x1, 0b1), &config, ours),
            DebugExit::GuestDebugTrap
        );
        // Steps taken for emulated watchpoints are not stops; a step GDB asked for is.
        config.watch_stepping = true;
        assert_eq!(
            classify_debug_exit(&exit(1, 0x1, DR6_BS), &config, ours),
            DebugExit::WatchStep
        );
        config.single_step = true;
        assert_eq!(
            classify_debug_exit(&exit(1, 0x1, DR6_BS), &config, ours),
            DebugExit::Stop(DebugStop::Step)
        );
    }
}
