//! Guest physical memory map used at boot.
//!
//! Everything the VMM places in guest RAM before the first instruction runs has its
//! address here, so that the boot code, the firmware tables and the debugger agree.
//! The low megabyte follows the PC convention: real-mode structures at the bottom,
//! the EBDA just below 640 KiB and the BIOS area from 0xe0000 to 1 MiB.

/// Boot GDT (a handful of 8-byte descriptors; fits below the IDT).
pub const GDT: u64 = 0x500;

/// Boot IDT (empty: the kernel installs its own before enabling interrupts).
pub const IDT: u64 = 0x520;

/// PVH `hvm_start_info` structure handed to kernels entered through the PVH note.
pub const PVH_START_INFO: u64 = 0x6000;

/// Linux `boot_params` ("zero page") for kernels entered through the 64-bit boot protocol.
pub const ZERO_PAGE: u64 = 0x7000;

/// Initial stack pointer; the stack grows down from just below the page tables.
pub const BOOT_STACK_TOP: u64 = 0x8ff0;

/// Top-level page table (PML4) of the boot identity map.
pub const PML4: u64 = 0x9000;

/// Page-directory-pointer table of the boot identity map (first 512 GiB slot).
pub const PDPT: u64 = 0xa000;

/// First of four consecutive page directories (0xb000-0xefff) that identity-map the
/// low 4 GiB with 2 MiB pages, one directory per GiB.
pub const PD: u64 = 0xb000;

/// Number of page directories starting at [`PD`].
pub const PD_COUNT: u64 = 4;

/// Kernel command line (NUL-terminated).
pub const CMDLINE: u64 = 0x20000;

/// Maximum size of the kernel command line including its NUL terminator.
pub const CMDLINE_MAX: u64 = 0x10000;

/// Start of the Extended BIOS Data Area (last KiB below 640 KiB).
pub const EBDA_START: u64 = 0x9fc00;

/// Intel MP table (floating pointer followed by the configuration table), placed in
/// the EBDA where the MP specification tells the OS to search.
pub const MPTABLE_START: u64 = 0x9fc00;

/// ACPI tables, starting with the RSDP; the OS scans 0xe0000-0xfffff for it.
pub const ACPI_START: u64 = 0xe0000;

/// End (exclusive) of the legacy BIOS area.
pub const BIOS_END: u64 = 0x100000;

/// Start of high memory, where the kernel image is loaded.
pub const HIMEM_START: u64 = 0x100000;

/// Start of the 32-bit MMIO hole; guest RAM above this is relocated past 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;

/// End (exclusive) of the 32-bit MMIO hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

/// I/O APIC register window (the architectural default).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;

/// Local APIC register window (the architectural default).
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

// The map is only useful if regions are ordered and disjoint; check it at compile time.
const _: () = {
    assert!(GDT + 4 * 8 <= IDT);
    assert!(IDT < PVH_START_INFO);
    assert!(PVH_START_INFO + 0x1000 <= ZERO_PAGE);
    assert!(ZERO_PAGE + 0x1000 <= BOOT_STACK_TOP);
    assert!(BOOT_STACK_TOP < PML4);
    assert!(PML4 + 0x1000 == PDPT && PDPT + 0x1000 == PD);
    assert!(PD + PD_COUNT * 0x1000 <= CMDLINE);
    assert!(CMDLINE + CMDLINE_MAX <= EBDA_START);
    assert!(MPTABLE_START >= EBDA_START && MPTABLE_START < 0xa0000);
    assert!(ACPI_START >= 0xe0000 && ACPI_START < BIOS_END);
    assert!(BIOS_END <= HIMEM_START);
    assert!(MMIO_GAP_START < IOAPIC_ADDR && IOAPIC_ADDR < LAPIC_ADDR && LAPIC_ADDR < MMIO_GAP_END);
    // Four directories of 512 two-MiB pages identity-map exactly the low 4 GiB.
    assert!(PD_COUNT * 512 * (2 << 20) == MMIO_GAP_END);
    assert!(
        PML4.is_multiple_of(0x1000) && PDPT.is_multiple_of(0x1000) && PD.is_multiple_of(0x1000)
    );
    assert!(ZERO_PAGE.is_multiple_of(0x1000) && BOOT_STACK_TOP.is_multiple_of(16));
};
