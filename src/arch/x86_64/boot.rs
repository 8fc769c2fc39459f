//! The CPU state a kernel expects at its entry point: a GDT, identity page tables for the
//! 64-bit entry, and the segment/control/general registers for each boot protocol.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{BOOT_STACK_TOP, GDT, IDT, PD, PDPT, PML4};
use crate::memory::GuestMem;

#[derive(Debug, Error)]
pub enum BootError {
    /// Guest RAM is too small for the boot structures (cannot happen above the minimum --mem).
    #[error("cannot write the boot {0} into guest memory")]
    Write(&'static str),
}

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// 64-bit long mode with identity paging (Linux 64-bit boot protocol, vmlinux ELF):
    /// `rsi` points at the zero page.
    Long64 { entry: u64, zero_page: u64 },
    /// 32-bit protected mode without paging (PVH): `ebx` points at `hvm_start_info`.
    Pvh32 { entry: u64, start_info: u64 },
}

/// GDT slots. Linux's 64-bit boot protocol wants __BOOT_CS = 0x10 and __BOOT_DS = 0x18.
const GDT_CODE32: u16 = 1;
const GDT_CODE64: u16 = 2;
const GDT_DATA: u16 = 3;
const GDT_ENTRIES: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff), // 32-bit code, for PVH
    gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
    gdt_entry(0xc093, 0, 0xfffff), // data
];

/// Packs a segment descriptor: `flags` holds the access byte (bits 0-7) and the
/// granularity/size nibble (bits 12-15) as they appear in the descriptor's high word.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The `kvm_segment` KVM wants for the descriptor in GDT slot `index`.
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        // With G set the limit counts 4 KiB pages; KVM wants it in bytes.
        limit: if g == 1 {
            (limit_raw << 12) | 0xfff
        } else {
            limit_raw
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

const PTE_PRESENT_RW: u64 = 0x3;
const PDE_2M_PAGE: u64 = 0x83;
/// The identity map covers the first 4 GiB, so the LAPIC/IOAPIC MMIO is reachable too.
const IDENTITY_MAP_GIB: u64 = 4;

/// Writes the GDT, an empty IDT and the identity page tables (used by the 64-bit entry).
pub fn write_boot_tables(mem: &GuestMem) -> Result<(), BootError> {
    for (i, entry) in GDT_ENTRIES.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT + 8 * i as u64))
            .map_err(|_| BootError::Write("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT))
        .map_err(|_| BootError::Write("IDT"))?;

    mem.write_obj(PDPT | PTE_PRESENT_RW, GuestAddress(PML4))
        .map_err(|_| BootError::Write("page tables"))?;
    for gib in 0..IDENTITY_MAP_GIB {
        let pd = PD + gib * 0x1000;
        mem.write_obj(pd | PTE_PRESENT_RW, GuestAddress(PDPT + gib * 8))
            .map_err(|_| BootError::Write("page tables"))?;
        for i in 0..512u64 {
            let phys = (gib << 30) | (i << 21);
            mem.write_obj(phys | PDE_2M_PAGE, GuestAddress(pd + i * 8))
                .map_err(|_| BootError::Write("page tables"))?;
        }
    }
    Ok(())
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Special registers for `entry`, starting from what KVM reported for the vCPU.
pub fn boot_sregs(mut sregs: kvm_sregs, entry: &BootEntry) -> kvm_sregs {
    let code = match entry {
        BootEntry::Long64 { .. } => GDT_CODE64,
        BootEntry::Pvh32 { .. } => GDT_CODE32,
    };
    let data = segment_from_gdt(GDT_ENTRIES[GDT_DATA as usize], GDT_DATA);
    sregs.cs = segment_from_gdt(GDT_ENTRIES[code as usize], code);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    // VM entry insists on a usable busy TSS in TR, even though nothing switches tasks.
    sregs.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: 0,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    sregs.gdt.base = GDT;
    sregs.gdt.limit = (GDT_ENTRIES.len() * 8 - 1) as u16;
    sregs.idt.base = IDT;
    sregs.idt.limit = 7;
    match entry {
        BootEntry::Long64 { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        BootEntry::Pvh32 { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// General registers for `entry`.
pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved and always set
        rsp: BOOT_STACK_TOP,
        rbp: BOOT_STACK_TOP,
        ..Default::default()
    };
    match *entry {
        BootEntry::Long64 { entry, zero_page } => {
            regs.rip = entry;
            regs.rsi = zero_page;
        }
        BootEntry::Pvh32 { entry, start_info } => {
            regs.rip = entry;
            regs.rbx = start_info;
        }
    }
    regs
}

/// The x87/SSE state after FNINIT with the default MXCSR, as firmware leaves it.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn gdt_entry_encodes_flat_64bit_code() {
        // The classic flat 64-bit code descriptor.
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn segment_decodes_what_gdt_entry_encodes() {
        let seg = segment_from_gdt(gdt_entry(0xa09b, 0x1234_5678, 0xfffff), 2);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.selector, 0x10);
        assert_eq!(
            (seg.type_, seg.present, seg.s, seg.l, seg.db, seg.g),
            (0xb, 1, 1, 1, 0, 1)
        );
        let data = segment_from_gdt(GDT_ENTRIES[GDT_DATA as usize], GDT_DATA);
        assert_eq!(
            (data.type_, data.db, data.l, data.selector),
            (0x3, 1, 0, 0x18)
        );
    }

    #[test]
    fn identity_map_covers_4_gib() {
        let mem: GuestMem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4e: u64 = mem.read_obj(GuestAddress(PML4)).unwrap();
        assert_eq!(pml4e & !0xfff, PDPT);
        for gib in 0..4u64 {
            let pdpte: u64 = mem.read_obj(GuestAddress(PDPT + gib * 8)).unwrap();
            let pd = pdpte & !0xfff;
            let last: u64 = mem.read_obj(GuestAddress(pd + 511 * 8)).unwrap();
            assert_eq!(last & !0xfff, (gib << 30) + (511 << 21));
            assert_eq!(last & 0x83, 0x83);
        }
    }

    #[test]
    fn entry_modes_set_the_protocol_registers() {
        let long = BootEntry::Long64 {
            entry: 0x100200,
            zero_page: 0x7000,
        };
        let s = boot_sregs(kvm_sregs::default(), &long);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cs.selector, s.ds.selector), (0x10, 0x18));
        let r = boot_regs(&long);
        assert_eq!((r.rip, r.rsi), (0x100200, 0x7000));

        let pvh = BootEntry::Pvh32 {
            entry: 0x100000,
            start_info: 0x6000,
        };
        let s = boot_sregs(kvm_sregs::default(), &pvh);
        assert_eq!(s.cr0 & CR0_PG, 0);
        assert_eq!((s.cs.l, s.cs.db), (0, 1));
        assert_eq!(boot_regs(&pvh).rbx, 0x6000);
    }
}
