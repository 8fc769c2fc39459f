//! TEMP: replaced by the archpure branch.
#![allow(dead_code)]
pub const GDT: u64 = 0x500;
pub const IDT: u64 = 0x520;
pub const PVH_START_INFO: u64 = 0x6000;
pub const ZERO_PAGE: u64 = 0x7000;
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: u64 = 0x10000;
pub const EBDA_START: u64 = 0x9fc00;
pub const MPTABLE_START: u64 = 0x9fc00;
pub const ACPI_START: u64 = 0xe0000;
pub const BIOS_END: u64 = 0x100000;
pub const HIMEM_START: u64 = 0x100000;
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
