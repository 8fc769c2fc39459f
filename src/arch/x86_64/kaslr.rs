//! Where a Linux kernel really is: its KASLR slide, read from the guest's own page tables.
//!
//! x86-64 Linux maps its image in the 1 GiB window at `__START_KERNEL_map`
//! (0xffffffff80000000) and, from its first C code on (`__startup_64`), unmaps everything in
//! that window below `_text`. So the first present mapping there is `_text`, and the slide is
//! that address minus where the kernel was linked (`__START_KERNEL_map` plus the setup
//! header's `pref_address`). LibVMI and crash find the slide the same way.

use kvm_bindings::{KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER, kvm_enable_cap};
use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};
use vm_memory::{Bytes, GuestAddress};

use super::coredump::KERNEL_IMAGE_START;
use super::cpu::MSR_GS_BASE;
use super::paging::{
    PTE_ADDR_MASK as PTE_ADDR, PTE_PAGE_SIZE as PTE_LARGE, PTE_PRESENT, PagingContext, PagingMode,
};
use crate::memory::GuestMem;

/// The kernel image window's PML4 and PDPT slots: 0xffffffff80000000 is PML4 511, PDPT 510,
/// and the window is exactly that one PDPT entry (1 GiB).
const IMAGE_PML4_SLOT: u64 = 511;
const IMAGE_PDPT_SLOT: u64 = 510;

/// Makes KVM send the guest's writes of GS base to minivmm (KVM_EXIT_X86_WRMSR): Linux's
/// first one comes right after it switched to its own page tables at its final address,
/// before its C code runs (head_64.S), which is when a debugger must learn the slide. Only
/// this MSR is filtered, and Linux writes it once per CPU at boot.
pub fn install_kernel_map_trap(vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        ..Default::default()
    };
    cap.args[0] = u64::from(KVM_MSR_EXIT_REASON_FILTER);
    vm.enable_cap(&cap)?;
    // A clear bit denies the write, which then exits to user space.
    let deny = [0u8];
    vm.set_msr_filter(
        MsrFilterDefaultAction::ALLOW,
        &[MsrFilterRange {
            flags: MsrFilterRangeFlags::WRITE,
            base: MSR_GS_BASE,
            msr_count: 1,
            bitmap: &deny,
        }],
    )
}

/// Where the running kernel's image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelPlacement {
    /// The virtual address of `_text` as the kernel runs.
    pub text: u64,
    /// `text` minus `_text`'s link-time address: add it to every vmlinux symbol (except the
    /// zero-based per-CPU ones) to get where that symbol is now.
    pub slide: u64,
    /// Linux's `phys_base`: the image's physical address minus where it was linked to load.
    pub phys_base: u64,
}

/// The kernel's placement under the page tables `paging` points to, for a kernel linked
/// with `_text` at `link_text`; `None` before the kernel has built its own page tables (the
/// decompressor and minivmm's boot tables map nothing in the window) or in another mode.
pub fn find_kernel_placement(
    mem: &GuestMem,
    paging: &PagingContext,
    link_text: u64,
) -> Option<KernelPlacement> {
    if paging.mode() != PagingMode::Level4 {
        return None;
    }
    let entry = |table: u64, index: u64| -> Option<u64> {
        let e = mem
            .read_obj::<u64>(GuestAddress((table & PTE_ADDR) + index * 8))
            .ok()?;
        (e & PTE_PRESENT != 0).then_some(e)
    };
    let pml4e = entry(paging.cr3, IMAGE_PML4_SLOT)?;
    let pdpte = entry(pml4e, IMAGE_PDPT_SLOT)?;
    if pdpte & PTE_LARGE != 0 {
        // One 1 GiB page for the whole window: nothing below `_text` was unmapped.
        return None;
    }
    let (index, pde) = (0..512).find_map(|i| entry(pdpte, i).map(|e| (i, e)))?;
    let (text, phys) = if pde & PTE_LARGE != 0 {
        (
            KERNEL_IMAGE_START + (index << 21),
            pde & PTE_ADDR & !((1 << 21) - 1),
        )
    } else {
        let (pt_index, pte) = (0..512).find_map(|i| entry(pde, i).map(|e| (i, e)))?;
        (
            KERNEL_IMAGE_START + (index << 21) + (pt_index << 12),
            pte & PTE_ADDR,
        )
    };
    Some(KernelPlacement {
        text,
        slide: text.wrapping_sub(link_text),
        // __pa(x) = x - __START_KERNEL_map + phys_base for image addresses.
        phys_base: phys.wrapping_sub(text - KERNEL_IMAGE_START),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::paging::{CR0_PG, CR4_PAE, EFER_LMA, EFER_LME};

    const PML4: u64 = 0x1000;
    const PDPT: u64 = 0x2000;
    const PD: u64 = 0x3000;
    const PT: u64 = 0x4000;
    const LINK_TEXT: u64 = 0xffff_ffff_8100_0000;

    fn mem() -> GuestMem {
        GuestMem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn long_mode() -> PagingContext {
        PagingContext {
            cr0: CR0_PG,
            cr3: PML4,
            cr4: CR4_PAE,
            efer: EFER_LMA | EFER_LME,
        }
    }

    fn set(mem: &GuestMem, table: u64, index: u64, value: u64) {
        mem.write_obj(value, GuestAddress(table + index * 8))
            .unwrap();
    }

    fn window(mem: &GuestMem) {
        set(mem, PML4, IMAGE_PML4_SLOT, PDPT | 3);
        set(mem, PDPT, IMAGE_PDPT_SLOT, PD | 3);
    }

    #[test]
    fn slid_kernel_is_found_at_its_first_2m_mapping() {
        let mem = mem();
        window(&mem);
        // _text at 0xffffffff9c000000 (PD slot 224), loaded at physical 0x5e00000.
        set(&mem, PD, 224, 0x5e0_0000 | PTE_LARGE | 3);
        set(&mem, PD, 225, 0x600_0000 | PTE_LARGE | 3);
        let p = find_kernel_placement(&mem, &long_mode(), LINK_TEXT).unwrap();
        assert_eq!(p.text, 0xffff_ffff_9c00_0000);
        assert_eq!(p.slide, 0x1b00_0000);
        // phys 0x5e00000 for virtual offset 0x1c000000: phys_base = 0x5e00000 - 0x1c000000.
        assert_eq!(p.phys_base, 0x5e0_0000u64.wrapping_sub(0x1c00_0000));
    }

    #[test]
    fn unslid_kernel_has_slide_zero_and_phys_base_zero() {
        let mem = mem();
        window(&mem);
        set(&mem, PD, 8, 0x100_0000 | PTE_LARGE | 3);
        let p = find_kernel_placement(&mem, &long_mode(), LINK_TEXT).unwrap();
        assert_eq!((p.text, p.slide, p.phys_base), (LINK_TEXT, 0, 0));
    }

    #[test]
    fn small_pages_at_the_start_count_too() {
        let mem = mem();
        window(&mem);
        set(&mem, PD, 8, PT | 3);
        set(&mem, PT, 0, 0x100_0000 | 3);
        let p = find_kernel_placement(&mem, &long_mode(), LINK_TEXT).unwrap();
        assert_eq!(p.slide, 0);
    }

    #[test]
    fn nothing_before_the_kernel_maps_its_window() {
        let mem = mem();
        // Boot-time identity map only.
        set(&mem, PML4, 0, PDPT | 3);
        assert_eq!(find_kernel_placement(&mem, &long_mode(), LINK_TEXT), None);
        let flat = PagingContext::default();
        assert_eq!(find_kernel_placement(&mem, &flat, LINK_TEXT), None);
    }
}
