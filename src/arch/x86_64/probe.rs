//! A start-up probe of what this host's KVM really does, in a throwaway VM: some nested hosts
//! run guest code through KVM's instruction emulator, which cannot execute CMPXCHG16B or
//! XSAVE and never checks data breakpoints. Asking is the only reliable way to know.

use kvm_bindings::{KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_USE_HW_BP, kvm_guest_debug};
use kvm_ioctls::{Kvm, VcpuExit};
use log::{debug, info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::{BootEntry, boot_fpu, boot_regs, boot_sregs, write_boot_tables};
use super::debugreg::{HwBreakKind, HwSlot, debugreg_array};
use crate::memory::{GuestMem, register_guest_memory};

/// What the probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostQuirks {
    /// Guest code is emulated and some instructions (CMPXCHG16B, XSAVE) fail with an
    /// emulation error.
    pub emulates_guest_code: bool,
    /// Hardware data breakpoints (DR7 R/W = 01/11) raise a debug exit.
    pub data_watchpoints_fire: bool,
}

impl HostQuirks {
    /// What a hardware-virtualisation host does; assumed when the probe cannot run.
    pub const NATIVE: HostQuirks = HostQuirks {
        emulates_guest_code: false,
        data_watchpoints_fire: true,
    };
}

const CODE: u64 = 0x1000;
const DATA: u64 = 0x3000;
const PORT_WROTE: u16 = 0xf0;
const PORT_CX16_OK: u16 = 0xf1;
const PROBE_MEM: usize = 1 << 20;

/// The probe program, in 64-bit mode:
///   mov [DATA], rax           ; a write watchpoint on DATA must trap here
///   out PORT_WROTE, al
///   lock cmpxchg16b [DATA+16] ; emulation failure on an emulating host
///   out PORT_CX16_OK, al
///   hlt
const PROBE_CODE: &[u8] = &[
    0x48, 0x89, 0x04, 0x25, 0x00, 0x30, 0x00, 0x00, // mov [0x3000], rax
    0xe6, 0xf0, // out 0xf0, al
    0xf0, 0x48, 0x0f, 0xc7, 0x0c, 0x25, 0x10, 0x30, 0x00, 0x00, // lock cmpxchg16b [0x3010]
    0xe6, 0xf1, // out 0xf1, al
    0xf4, // hlt
];

/// Runs the probe; any failure to set it up means "assume a normal host" (logged).
pub fn probe_host(kvm: &Kvm) -> HostQuirks {
    match run_probe(kvm) {
        Ok(q) => q,
        Err(e) => {
            info!("host probe could not run ({e}); assuming hardware-virtualised KVM");
            HostQuirks::NATIVE
        }
    }
}

fn run_probe(kvm: &Kvm) -> Result<HostQuirks, String> {
    let vm = kvm.create_vm().map_err(|e| format!("create VM: {e}"))?;
    let mem: GuestMem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), PROBE_MEM)])
        .map_err(|e| format!("probe memory: {e}"))?;
    register_guest_memory(&vm, &mem).map_err(|e| e.to_string())?;
    write_boot_tables(&mem).map_err(|e| e.to_string())?;
    mem.write_slice(PROBE_CODE, GuestAddress(CODE))
        .map_err(|e| format!("probe code: {e}"))?;

    let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("vCPU: {e}"))?;
    let entry = BootEntry::Long64 {
        entry: CODE,
        zero_page: 0,
    };
    let sregs = vcpu.get_sregs().map_err(|e| format!("get sregs: {e}"))?;
    vcpu.set_sregs(&boot_sregs(sregs, &entry))
        .map_err(|e| format!("set sregs: {e}"))?;
    vcpu.set_regs(&boot_regs(&entry))
        .map_err(|e| format!("set regs: {e}"))?;
    vcpu.set_fpu(&boot_fpu())
        .map_err(|e| format!("set fpu: {e}"))?;

    let watch = HwSlot {
        addr: DATA,
        kind: HwBreakKind::Write,
        len: 8,
    };
    let mut debug = kvm_guest_debug {
        control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP,
        ..Default::default()
    };
    debug.arch.debugreg =
        debugreg_array(&[Some(watch), None, None, None]).map_err(|e| e.to_string())?;
    vcpu.set_guest_debug(&debug)
        .map_err(|e| format!("guest debug: {e}"))?;

    let mut quirks = HostQuirks {
        emulates_guest_code: false,
        data_watchpoints_fire: false,
    };
    // A handful of exits at most; the bound only guards against a host gone strange.
    for _ in 0..16 {
        match vcpu.run().map_err(|e| format!("run: {e}"))? {
            VcpuExit::Debug(_) => {
                quirks.data_watchpoints_fire = true;
                vcpu.set_guest_debug(&kvm_guest_debug::default())
                    .map_err(|e| format!("guest debug: {e}"))?;
            }
            VcpuExit::IoOut(PORT_WROTE, _) => {}
            VcpuExit::IoOut(PORT_CX16_OK, _) => {}
            VcpuExit::InternalError => {
                quirks.emulates_guest_code = true;
                break;
            }
            VcpuExit::Hlt => break,
            other => return Err(format!("unexpected exit {other:?}")),
        }
    }
    debug!("host probe: {quirks:?}");
    // Tearing a VM down takes milliseconds in the host kernel; the real VM need not wait.
    let _ = std::thread::Builder::new()
        .name("probe-teardown".into())
        .spawn(move || drop((vcpu, vm, mem)));
    Ok(quirks)
}
