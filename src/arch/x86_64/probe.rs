//! A start-up probe of what this host's KVM really does, in a throwaway VM. Hosts differ in
//! ways no capability flag reveals: some nested hosts run guest code through KVM's
//! instruction emulator (no CMPXCHG16B or XSAVE, data breakpoints never fire), some
//! hardware-virtualising ones never intercept `int3` or never fire debug-register
//! breakpoints. Each capability minivmm relies on is tried, never inferred from another.

use std::fmt;

use thiserror::Error;

use kvm_bindings::{
    KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP, kvm_guest_debug,
};
use kvm_ioctls::{Kvm, SyncReg, VcpuExit, VcpuFd};
use log::{debug, info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::{BootEntry, boot_fpu, boot_regs, boot_sregs, write_boot_tables};
use super::debug::{host_blocks_irq_when_stepping, host_syncs_regs};
use super::debugreg::{self, HwBreakKind, HwSlot};
use crate::memory::{GuestMem, register_guest_memory};

/// Why the probe could not run (minivmm then assumes a hardware-virtualising host).
#[derive(Debug, Error)]
enum ProbeError {
    /// A KVM ioctl on the probe's VM failed.
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// The probe's memory could not be set up.
    #[error("probe memory: {0}")]
    Memory(String),
    /// The probe's debug registers could not be encoded.
    #[error(transparent)]
    DebugRegs(#[from] debugreg::DebugRegError),
    /// An instruction other than the ones probed failed to emulate.
    #[error("emulation failure at {0:#x}")]
    EmulationFailure(u64),
    /// KVM stopped the probe for a reason it has no business with.
    #[error("unexpected exit {0}")]
    UnexpectedExit(String),
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> ProbeError {
    move |source| ProbeError::Kvm { what, source }
}

/// What the probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostQuirks {
    /// Guest code is emulated and some instructions (CMPXCHG16B, XSAVE) fail with an
    /// emulation error.
    pub emulates_guest_code: bool,
    /// Hardware execution breakpoints (DR7 R/W = 00) raise a debug exit.
    pub exec_breakpoints_fire: bool,
    /// Hardware data breakpoints (DR7 R/W = 01/11) raise a debug exit.
    pub data_watchpoints_fire: bool,
    /// A guest `int3` reaches minivmm while KVM_GUESTDBG_USE_SW_BP is on (as KVM_EXIT_DEBUG,
    /// or as an emulation failure minivmm handles); where it does not, the guest takes the
    /// #BP itself and a planted breakpoint would kill it.
    pub int3_exits: bool,
    /// KVM copies the registers into kvm_run at exits (KVM_CAP_SYNC_REGS), and they are right.
    pub syncs_regs: bool,
    /// KVM_GUESTDBG_BLOCKIRQ is accepted: single steps do not wander into interrupt handlers.
    pub blocks_irq_when_stepping: bool,
}

impl HostQuirks {
    /// What a hardware-virtualisation host does; assumed when the probe cannot run.
    pub const NATIVE: HostQuirks = HostQuirks {
        emulates_guest_code: false,
        exec_breakpoints_fire: true,
        data_watchpoints_fire: true,
        int3_exits: true,
        syncs_regs: false,
        blocks_irq_when_stepping: false,
    };
}

impl fmt::Display for HostQuirks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "{}; execution breakpoints fire: {}; data breakpoints fire: {}; int3 reaches minivmm: {}; \
             KVM_CAP_SYNC_REGS: {}; KVM_GUESTDBG_BLOCKIRQ: {}",
            if self.emulates_guest_code {
                "KVM emulates guest code"
            } else {
                "hardware-virtualised KVM"
            },
            yes(self.exec_breakpoints_fire),
            yes(self.data_watchpoints_fire),
            yes(self.int3_exits),
            yes(self.syncs_regs),
            yes(self.blocks_irq_when_stepping),
        )
    }
}

const CODE: u64 = 0x1000;
const DATA: u64 = 0x3000;
const PORT_WROTE: u16 = 0xf0;
const PORT_CX16_OK: u16 = 0xf1;
const PROBE_MEM: usize = 1 << 20;
/// Where the probe's instructions are (see PROBE_CODE).
const AT_OUT: u64 = CODE + 9;
const AT_CMPXCHG16B: u64 = CODE + 11;
const CMPXCHG16B_LEN: u64 = 10;
const AT_INT3: u64 = CODE + 23;

/// The probe program, in 64-bit mode, with no IDT (an exception the guest takes itself ends
/// in a triple fault):
///   nop                       ; an execution breakpoint (DR0) must trap here
///   mov [DATA], rax           ; a write watchpoint (DR1) on DATA must trap here
///   out PORT_WROTE, al        ; (KVM_CAP_SYNC_REGS checked at this exit)
///   lock cmpxchg16b [DATA+16] ; emulation failure on an emulating host
///   out PORT_CX16_OK, al
///   int3                      ; must reach minivmm with KVM_GUESTDBG_USE_SW_BP
///   hlt
const PROBE_CODE: &[u8] = &[
    0x90, // nop
    0x48, 0x89, 0x04, 0x25, 0x00, 0x30, 0x00, 0x00, // mov [0x3000], rax
    0xe6, 0xf0, // out 0xf0, al
    0xf0, 0x48, 0x0f, 0xc7, 0x0c, 0x25, 0x10, 0x30, 0x00, 0x00, // lock cmpxchg16b [0x3010]
    0xe6, 0xf1, // out 0xf1, al
    0xcc, // int3
    0xf4, // hlt
];

/// Runs the probe; any failure to set it up means "assume a normal host" (logged).
pub fn probe_host(kvm: &Kvm) -> HostQuirks {
    let quirks = match run_probe(kvm) {
        Ok(q) => q,
        Err(e) => {
            info!("host probe could not run ({e}); assuming hardware-virtualised KVM");
            HostQuirks::NATIVE
        }
    };
    debug!("host: {quirks}");
    quirks
}

fn debug_control(
    breakpoints: [Option<HwSlot>; 4],
    control: u32,
) -> Result<kvm_guest_debug, ProbeError> {
    let mut debug = kvm_guest_debug {
        control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP | control,
        ..Default::default()
    };
    if breakpoints.iter().any(Option::is_some) {
        debug.control |= KVM_GUESTDBG_USE_HW_BP;
        debug.arch.debugreg = debugreg::debugreg_array(&breakpoints)?;
    }
    Ok(debug)
}

fn set_debug(vcpu: &VcpuFd, slots: [Option<HwSlot>; 4]) -> Result<(), ProbeError> {
    vcpu.set_guest_debug(&debug_control(slots, 0)?)
        .map_err(ioctl("guest debug"))
}

fn run_probe(kvm: &Kvm) -> Result<HostQuirks, ProbeError> {
    let vm = kvm.create_vm().map_err(ioctl("create VM"))?;
    let mem: GuestMem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), PROBE_MEM)])
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    register_guest_memory(&vm, &mem).map_err(|e| ProbeError::Memory(e.to_string()))?;
    write_boot_tables(&mem).map_err(|e| ProbeError::Memory(e.to_string()))?;
    mem.write_slice(PROBE_CODE, GuestAddress(CODE))
        .map_err(|e| ProbeError::Memory(e.to_string()))?;

    let mut vcpu = vm.create_vcpu(0).map_err(ioctl("vCPU"))?;
    let entry = BootEntry::Long64 {
        entry: CODE,
        zero_page: 0,
    };
    let sregs = vcpu.get_sregs().map_err(ioctl("get sregs"))?;
    vcpu.set_sregs(&boot_sregs(sregs, &entry))
        .map_err(ioctl("set sregs"))?;
    vcpu.set_regs(&boot_regs(&entry))
        .map_err(ioctl("set regs"))?;
    vcpu.set_fpu(&boot_fpu()).map_err(ioctl("set fpu"))?;

    let exec = HwSlot {
        addr: CODE,
        kind: HwBreakKind::Execute,
        len: 1,
    };
    let watch = HwSlot {
        addr: DATA,
        kind: HwBreakKind::Write,
        len: 8,
    };
    set_debug(&vcpu, [Some(exec), Some(watch), None, None])?;
    let sync_offered = host_syncs_regs(kvm);
    if sync_offered {
        vcpu.set_sync_valid_reg(SyncReg::Register);
    }

    let mut quirks = HostQuirks {
        emulates_guest_code: false,
        exec_breakpoints_fire: false,
        data_watchpoints_fire: false,
        int3_exits: false,
        syncs_regs: false,
        blocks_irq_when_stepping: false,
    };
    // A handful of exits at most; the bound only guards against a host gone strange.
    for _ in 0..16 {
        match vcpu.run().map_err(ioctl("run"))? {
            VcpuExit::Debug(arch) if arch.exception == 3 => {
                quirks.int3_exits = true;
                break;
            }
            VcpuExit::Debug(arch) => {
                // Each breakpoint is taken out once it fired, so the run goes on past it.
                for slot in debugreg::triggered_slots(arch.dr6) {
                    match slot {
                        0 => quirks.exec_breakpoints_fire = true,
                        1 => quirks.data_watchpoints_fire = true,
                        _ => {}
                    }
                }
                let keep = |fired: bool, slot| (!fired).then_some(slot);
                set_debug(
                    &vcpu,
                    [
                        keep(quirks.exec_breakpoints_fire, exec),
                        keep(quirks.data_watchpoints_fire, watch),
                        None,
                        None,
                    ],
                )?;
            }
            VcpuExit::IoOut(PORT_WROTE, _) => {
                // KVM's copy in kvm_run must be what KVM_GET_REGS says at the same exit.
                if sync_offered {
                    let synced = vcpu.sync_regs().regs;
                    let regs = vcpu.get_regs().map_err(ioctl("get regs"))?;
                    quirks.syncs_regs = synced.rip == regs.rip
                        && synced.rsp == regs.rsp
                        && synced.rflags == regs.rflags
                        && (AT_OUT..=AT_CMPXCHG16B).contains(&regs.rip);
                }
                if !quirks.exec_breakpoints_fire || !quirks.data_watchpoints_fire {
                    set_debug(&vcpu, [None; 4])?;
                }
            }
            VcpuExit::IoOut(PORT_CX16_OK, _) => {}
            VcpuExit::InternalError => {
                let mut regs = vcpu.get_regs().map_err(ioctl("get regs"))?;
                match regs.rip {
                    AT_CMPXCHG16B => {
                        // The emulator's gap; skip the instruction and go on probing.
                        quirks.emulates_guest_code = true;
                        regs.rip += CMPXCHG16B_LEN;
                        vcpu.set_regs(&regs).map_err(ioctl("set regs"))?;
                    }
                    AT_INT3 => {
                        // An emulating host fails on int3, and minivmm handles that failure.
                        quirks.int3_exits = true;
                        break;
                    }
                    rip => return Err(ProbeError::EmulationFailure(rip)),
                }
            }
            // The int3 went to the guest, which has no IDT: #BP, #DF, triple fault.
            VcpuExit::Shutdown => break,
            VcpuExit::Hlt => break,
            other => return Err(ProbeError::UnexpectedExit(format!("{other:?}"))),
        }
    }
    // KVM rejects guest-debug flags it does not know, so asking is trying.
    quirks.blocks_irq_when_stepping = host_blocks_irq_when_stepping(kvm)
        && vcpu
            .set_guest_debug(&kvm_guest_debug {
                control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_BLOCKIRQ,
                ..Default::default()
            })
            .is_ok();
    // Tearing a VM down takes milliseconds in the host kernel; the real VM need not wait.
    let _ = std::thread::Builder::new()
        .name("probe-teardown".into())
        .spawn(move || drop((vcpu, vm, mem)));
    Ok(quirks)
}
