//! Per-vCPU identity and reset state: CPUID with a consistent topology, MSRs, and the local
//! APIC's LINT pins wired like a PC.

use kvm_bindings::{
    CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, Msrs, kvm_cpuid_entry2, kvm_lapic_state, kvm_msr_entry,
};
use kvm_ioctls::VcpuFd;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CpuError {
    #[error("KVM_SET_CPUID2 failed: {0}")]
    SetCpuid(kvm_ioctls::Error),
    #[error("KVM_SET_MSRS failed: {0}")]
    SetMsrs(kvm_ioctls::Error),
    #[error("KVM refused some boot MSRs ({set} of {wanted} set)")]
    PartialMsrs { set: usize, wanted: usize },
    #[error("building the MSR list failed")]
    MsrList,
    #[error("reading or writing the local APIC failed: {0}")]
    Lapic(kvm_ioctls::Error),
}

/// What CPUID must hide from the guest on this host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidFilter {
    /// The host emulates guest code and fails on CMPXCHG16B and XSAVE/XRSTOR.
    pub hide_unemulated: bool,
}

/// Highest vCPU count: APIC ids are 8 bits, 0xff is the broadcast id and the I/O APIC takes
/// the id after the last CPU. The MP table, the MADT and `--cpus` all obey it.
pub const MAX_CPUS: u8 = 254;

const LEAF1_ECX_CX16: u32 = 1 << 13;
const LEAF1_ECX_XSAVE: u32 = 1 << 26;
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
const LEAF1_ECX_AVX: u32 = 1 << 28;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF7_EBX_AVX2: u32 = 1 << 5;
const LEAF7_EBX_AVX512F: u32 = 1 << 16;
const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;
const EXT1_ECX_TOPOEXT: u32 = 1 << 22;
const TOPO_LEVEL_SMT: u32 = 1;
const TOPO_LEVEL_CORE: u32 = 2;

/// Number of APIC-ID bits needed to number `n` CPUs.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adapts KVM's supported CPUID for vCPU `index` of `count`: one socket of `count` single-thread
/// cores, APIC ID = index, described the same way by every topology leaf (1, 4, 0xB/0x1F and
/// AMD's 0x80000008), because Linux cross-checks them.
pub fn vcpu_cpuid(
    supported: &CpuId,
    index: u32,
    count: u32,
    filter: CpuidFilter,
) -> Result<CpuId, CpuError> {
    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .filter(|e| e.function != 0xb && e.function != 0x1f && e.function != 0x8000_001e)
        .copied()
        .collect();

    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0xffff) | (count.min(255) << 16) | (index << 24);
                e.edx |= LEAF1_EDX_HTT;
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if filter.hide_unemulated {
                    e.ecx &=
                        !(LEAF1_ECX_CX16 | LEAF1_ECX_XSAVE | LEAF1_ECX_OSXSAVE | LEAF1_ECX_AVX);
                }
            }
            4 => {
                // Cores per package, and caches: L1/L2 per core, L3 shared by all.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26);
            }
            7 if e.index == 0 && filter.hide_unemulated => {
                e.ebx &= !(LEAF7_EBX_AVX2 | LEAF7_EBX_AVX512F);
            }
            0xd if filter.hide_unemulated => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x8000_0001 => {
                // No AMD compute-unit topology (leaf 0x8000001e is dropped above).
                e.ecx &= !EXT1_ECX_TOPOEXT;
                if count > 1 {
                    e.ecx |= EXT1_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !EXT1_ECX_CMP_LEGACY;
                }
            }
            0x8000_0008 => {
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(count) << 12) | (count - 1);
            }
            _ => {}
        }
    }

    let shift = id_bits(count);
    for function in [0xb, 0x1f] {
        let levels = [
            (1, TOPO_LEVEL_SMT, 0),
            (count, TOPO_LEVEL_CORE, shift),
            (0, 0, 0),
        ];
        for (sub, (cpus, level_type, level_shift)) in levels.into_iter().enumerate() {
            entries.push(kvm_cpuid_entry2 {
                function,
                index: sub as u32,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax: level_shift,
                ebx: cpus,
                ecx: (level_type << 8) | sub as u32,
                edx: index,
                ..Default::default()
            });
        }
    }
    // Leaf 0 must announce the highest basic leaf we describe.
    if let Some(leaf0) = entries.iter_mut().find(|e| e.function == 0) {
        leaf0.eax = leaf0.eax.max(0x1f);
    }
    CpuId::from_entries(&entries).map_err(|_| CpuError::MsrList)
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// The kernel's GS base while user GS is loaded (SWAPGS exchanges them); GDB shows it too.
pub const MSR_GS_BASE: u32 = 0xc000_0101;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default memory type write-back: without it Linux maps RAM uncached.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// Reset values of the MSRs firmware would have set.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let wanted = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ];
    let entries: Vec<kvm_msr_entry> = wanted
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::MsrList)?;
    let set = vcpu.set_msrs(&msrs).map_err(CpuError::SetMsrs)?;
    if set != entries.len() {
        return Err(CpuError::PartialMsrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &state.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *byte as _;
    }
}

/// LINT0 receives the 8259's ExtINT, LINT1 the NMI: the wiring of every PC since the 486.
pub fn setup_lapic_lints(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let mut state = vcpu.get_lapic().map_err(CpuError::Lapic)?;
    let with_mode = |v: u32, mode: u32| (v & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(&state, APIC_LVT0);
    let lvt1 = lapic_reg(&state, APIC_LVT1);
    set_lapic_reg(&mut state, APIC_LVT0, with_mode(lvt0, APIC_MODE_EXTINT));
    set_lapic_reg(&mut state, APIC_LVT1, with_mode(lvt1, APIC_MODE_NMI));
    vcpu.set_lapic(&state).map_err(CpuError::Lapic)
}

/// Applies CPUID, MSRs and LAPIC wiring: the state every vCPU needs, BSP or not.
pub fn setup_vcpu(vcpu: &VcpuFd, cpuid: &CpuId) -> Result<(), CpuError> {
    vcpu.set_cpuid2(cpuid).map_err(CpuError::SetCpuid)?;
    setup_msrs(vcpu)?;
    setup_lapic_lints(vcpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_supported() -> CpuId {
        let e = |function, index, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        CpuId::from_entries(&[
            e(0, 0, 0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65),
            e(
                1,
                0,
                0x00a0_0f11,
                0x0008_0800,
                LEAF1_ECX_CX16 | LEAF1_ECX_XSAVE | 1,
                0x178b_fbff,
            ),
            e(4, 0, 0x121, 0, 0, 0),
            e(4, 3, 0x163, 0, 0, 0),
            e(0xb, 0, 1, 2, 0x100, 7),
            e(0x8000_0001, 0, 0, 0, EXT1_ECX_TOPOEXT, 0),
            e(0x8000_0008, 0, 0x3030, 0, 0xff, 0),
            e(0x8000_001e, 0, 0, 0, 0, 0),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn topology_is_consistent_across_leaves() {
        let c = vcpu_cpuid(&fake_supported(), 2, 4, CpuidFilter::default()).unwrap();
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 2, "APIC ID");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical CPUs");
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(find(&c, 4, 0).eax >> 26, 3);
        assert_eq!((find(&c, 4, 3).eax >> 14) & 0xfff, 3, "L3 shared by all");
        assert_eq!((find(&c, 4, 0).eax >> 14) & 0xfff, 0, "L1 per core");
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (2, 4, 2, 2));
        assert_eq!(find(&c, 0xb, 0).ebx, 1);
        assert_eq!(find(&c, 0x1f, 1).ebx, 4);
        assert_eq!(find(&c, 0x8000_0008, 0).ecx & 0xff, 3);
        assert_eq!(find(&c, 0x8000_0001, 0).ecx & EXT1_ECX_TOPOEXT, 0);
        assert!(c.as_slice().iter().all(|e| e.function != 0x8000_001e));
        // The host's own 0xB entries are replaced, not duplicated.
        assert_eq!(
            c.as_slice()
                .iter()
                .filter(|e| e.function == 0xb && e.index == 0)
                .count(),
            1
        );
        assert_eq!(find(&c, 0, 0).eax, 0x1f);
    }

    #[test]
    fn filter_hides_unemulated_features_only_when_asked() {
        let plain = vcpu_cpuid(&fake_supported(), 0, 1, CpuidFilter::default()).unwrap();
        assert_ne!(find(&plain, 1, 0).ecx & LEAF1_ECX_CX16, 0);
        let hidden = vcpu_cpuid(
            &fake_supported(),
            0,
            1,
            CpuidFilter {
                hide_unemulated: true,
            },
        )
        .unwrap();
        let ecx = find(&hidden, 1, 0).ecx;
        assert_eq!(ecx & (LEAF1_ECX_CX16 | LEAF1_ECX_XSAVE), 0);
        assert_ne!(ecx & 1, 0, "unrelated features stay");
        assert_ne!(ecx & LEAF1_ECX_HYPERVISOR, 0);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(id_bits), [0, 1, 2, 2, 3, 3, 4]);
    }
}
