//! Guest page-table walker.
//!
//! The GDB stub sees guest-virtual addresses; this module turns them into guest
//! physical addresses by reading the guest's own page tables out of guest memory,
//! following the paging mode selected by CR0, CR4 and EFER (Intel SDM vol. 3, ch. 4).
//! Only the translation is modelled: access rights are reported, not enforced, and
//! the walk never sets accessed/dirty bits.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

pub const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
pub const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;

pub const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
/// Page size in directory entries (PAT in the last level, which is never tested for it).
pub const PTE_PAGE_SIZE: u64 = 1 << 7;
/// Physical-address bits 51:12 of a 64-bit entry; NX, protection keys and the
/// software-available bits live outside this mask.
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// In 32-bit paging the table/frame address is bits 31:12.
const PTE32_ADDR_MASK: u32 = 0xffff_f000;
/// In 32-bit paging a 4 MiB page frame is bits 31:22...
const PDE32_4M_LOW_MASK: u32 = 0xffc0_0000;
/// ...extended by PSE-36/40: PDE bits 20:13 supply physical-address bits 39:32.
const PDE32_4M_HIGH_SHIFT: u32 = 13;
const PDE32_4M_HIGH_MASK: u32 = 0xff;
/// PAE CR3 holds a 32-byte aligned PDPT address in bits 31:5.
const PAE_CR3_MASK: u64 = 0xffff_ffe0;

const PAGE_SIZE_4K: u64 = 1 << 12;
const PAGE_SIZE_2M: u64 = 1 << 21;
const PAGE_SIZE_4M: u64 = 1 << 22;
const PAGE_SIZE_1G: u64 = 1 << 30;

/// The control registers that select and locate the guest's page tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagingContext {
    /// CR0 (PG selects whether paging is on at all).
    pub cr0: u64,
    /// CR3 (root table address; low bits are PCID or cache-control flags).
    pub cr3: u64,
    /// CR4 (PSE, PAE and LA57 select the table format).
    pub cr4: u64,
    /// IA32_EFER (LMA/LME select IA-32e paging).
    pub efer: u64,
}

/// The paging structure format in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG = 0: linear addresses are physical.
    Disabled,
    /// 32-bit paging with 4-byte entries (4 MiB pages if CR4.PSE).
    Bits32,
    /// PAE paging: 4-entry PDPT, then 8-byte PD and PT entries.
    Pae,
    /// IA-32e paging with four levels (48-bit linear addresses).
    Level4,
    /// IA-32e paging with five levels (57-bit linear addresses).
    Level5,
}

impl PagingContext {
    /// The paging mode these register values select.
    pub fn mode(&self) -> PagingMode {
        if self.cr0 & CR0_PG == 0 {
            PagingMode::Disabled
        } else if self.cr4 & CR4_PAE == 0 {
            PagingMode::Bits32
        } else if self.efer & (EFER_LMA | EFER_LME) == 0 {
            // LME with PG and PAE set means LMA is (about to be) set, so both count.
            PagingMode::Pae
        } else if self.cr4 & CR4_LA57 != 0 {
            PagingMode::Level5
        } else {
            PagingMode::Level4
        }
    }
}

/// One paging-structure entry read during a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkStep {
    /// Which structure the entry belongs to: "PML5", "PML4", "PDPT", "PD", "PT",
    /// or "PDE32"/"PTE32" for 32-bit paging.
    pub level: &'static str,
    /// Guest physical address the entry was read from.
    pub entry_addr: u64,
    /// The raw entry (zero-extended for 32-bit entries).
    pub entry: u64,
}

/// The result of translating a virtual address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    /// Guest physical address of the byte at the virtual address.
    pub phys: u64,
    /// Size of the page that maps it (4 KiB, 2 MiB, 4 MiB or 1 GiB).
    pub page_size: u64,
    /// Whether every level of the walk allows writes.
    pub writable: bool,
    /// Whether every level of the walk allows user-mode access.
    pub user: bool,
    /// The entries read, from the root down (empty when paging is off).
    pub steps: Vec<WalkStep>,
}

/// Reasons a virtual address cannot be translated.
#[derive(Debug, Error)]
pub enum WalkError {
    /// The address is not sign-extended from the top implemented linear-address bit.
    #[error("virtual address {vaddr:#x} is not canonical for {bits}-bit linear addresses")]
    NonCanonical {
        /// The address that was asked for.
        vaddr: u64,
        /// Linear-address width of the current paging mode (48 or 57).
        bits: u8,
    },
    /// The guest uses 32-bit linear addresses and this one is wider.
    #[error("virtual address {vaddr:#x} is above 4 GiB but the guest uses 32-bit paging")]
    AddressTooWide {
        /// The address that was asked for.
        vaddr: u64,
    },
    /// A paging-structure entry on the way has its present bit clear.
    #[error(
        "virtual address {vaddr:#x} is not mapped: {level} entry {entry:#x} at {entry_addr:#x} is not present"
    )]
    NotPresent {
        /// The address that was asked for.
        vaddr: u64,
        /// The structure holding the entry.
        level: &'static str,
        /// Guest physical address of the entry.
        entry_addr: u64,
        /// The raw entry.
        entry: u64,
    },
    /// An entry sets a bit the architecture reserves, so the CPU would fault.
    #[error(
        "virtual address {vaddr:#x} cannot be translated: {level} entry {entry:#x} at {entry_addr:#x} sets the reserved page-size bit"
    )]
    ReservedBit {
        /// The address that was asked for.
        vaddr: u64,
        /// The structure holding the entry.
        level: &'static str,
        /// Guest physical address of the entry.
        entry_addr: u64,
        /// The raw entry.
        entry: u64,
    },
    /// A paging structure lies outside guest RAM.
    #[error(
        "virtual address {vaddr:#x} cannot be translated: {level} entry at {entry_addr:#x} is outside guest RAM"
    )]
    TableOutsideRam {
        /// The address that was asked for.
        vaddr: u64,
        /// The structure that could not be read.
        level: &'static str,
        /// Guest physical address of the unreadable entry.
        entry_addr: u64,
        /// The underlying guest memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// Translates `vaddr` through the guest page tables described by `ctx`.
pub fn translate(
    mem: &GuestMemoryMmap,
    ctx: &PagingContext,
    vaddr: u64,
) -> Result<Translation, WalkError> {
    match ctx.mode() {
        PagingMode::Disabled => Ok(Translation {
            phys: vaddr,
            page_size: PAGE_SIZE_4K,
            writable: true,
            user: true,
            steps: Vec::new(),
        }),
        PagingMode::Bits32 => walk_32bit(mem, ctx, vaddr),
        PagingMode::Pae => {
            if vaddr > u64::from(u32::MAX) {
                return Err(WalkError::AddressTooWide { vaddr });
            }
            walk(mem, ctx.cr3 & PAE_CR3_MASK, &PAE_LEVELS, vaddr)
        }
        PagingMode::Level4 => {
            check_canonical(vaddr, 48)?;
            walk(mem, ctx.cr3 & PTE_ADDR_MASK, &LEVELS_5[1..], vaddr)
        }
        PagingMode::Level5 => {
            check_canonical(vaddr, 57)?;
            walk(mem, ctx.cr3 & PTE_ADDR_MASK, &LEVELS_5, vaddr)
        }
    }
}

fn check_canonical(vaddr: u64, bits: u8) -> Result<(), WalkError> {
    let unused = 64 - u32::from(bits);
    // Sign-extend from the top implemented bit; canonical addresses are unchanged.
    if (((vaddr << unused) as i64) >> unused) as u64 == vaddr {
        Ok(())
    } else {
        Err(WalkError::NonCanonical { vaddr, bits })
    }
}

/// One directory level of a walk with 8-byte entries. The final page-table level
/// is implicit: it is the same in every mode and always maps 4 KiB pages.
struct Level {
    name: &'static str,
    /// Position of the lowest linear-address bit that indexes this table.
    shift: u32,
    /// Number of index bits (9, or 2 for the PAE PDPT).
    index_bits: u32,
    /// Whether PS = 1 maps a page here (`Some(size)`) or is reserved (`None`).
    large_page: Option<u64>,
    /// Whether the entry has R/W and U/S bits (PAE PDPTEs do not).
    has_rights: bool,
}

const fn level(
    name: &'static str,
    shift: u32,
    index_bits: u32,
    large_page: Option<u64>,
    has_rights: bool,
) -> Level {
    Level {
        name,
        shift,
        index_bits,
        large_page,
        has_rights,
    }
}

/// IA-32e directory levels; four-level paging skips the first.
const LEVELS_5: [Level; 4] = [
    level("PML5", 48, 9, None, true),
    level("PML4", 39, 9, None, true),
    level("PDPT", 30, 9, Some(PAGE_SIZE_1G), true),
    level("PD", 21, 9, Some(PAGE_SIZE_2M), true),
];

const PAE_LEVELS: [Level; 2] = [
    level("PDPT", 30, 2, None, false),
    level("PD", 21, 9, Some(PAGE_SIZE_2M), true),
];

/// State of a walk with 8-byte entries.
struct Walker<'a> {
    mem: &'a GuestMemoryMmap,
    vaddr: u64,
    writable: bool,
    user: bool,
    steps: Vec<WalkStep>,
}

impl Walker<'_> {
    /// Reads entry `index` of the table at `table`, records it and checks that it is
    /// present.
    fn entry(&mut self, level: &'static str, table: u64, index: u64) -> Result<u64, WalkError> {
        let entry_addr = table + index * 8;
        let entry: u64 = self
            .mem
            .read_obj(GuestAddress(entry_addr))
            .map_err(|source| WalkError::TableOutsideRam {
                vaddr: self.vaddr,
                level,
                entry_addr,
                source,
            })?;
        self.steps.push(WalkStep {
            level,
            entry_addr,
            entry,
        });
        if entry & PTE_PRESENT == 0 {
            return Err(WalkError::NotPresent {
                vaddr: self.vaddr,
                level,
                entry_addr,
                entry,
            });
        }
        Ok(entry)
    }

    fn restrict(&mut self, entry: u64) {
        self.writable &= entry & PTE_WRITABLE != 0;
        self.user &= entry & PTE_USER != 0;
    }

    fn finish(self, entry: u64, size: u64) -> Translation {
        // For large pages this also drops the PAT bit (12) and reserved low bits.
        let frame = entry & PTE_ADDR_MASK & !(size - 1);
        Translation {
            phys: frame | (self.vaddr & (size - 1)),
            page_size: size,
            writable: self.writable,
            user: self.user,
            steps: self.steps,
        }
    }
}

/// Walks tables with 8-byte entries (PAE and IA-32e paging) starting at `root`:
/// the directory `levels`, then the page table.
fn walk(
    mem: &GuestMemoryMmap,
    root: u64,
    levels: &[Level],
    vaddr: u64,
) -> Result<Translation, WalkError> {
    let mut w = Walker {
        mem,
        vaddr,
        writable: true,
        user: true,
        steps: Vec::with_capacity(levels.len() + 1),
    };
    let mut table = root;
    for lvl in levels {
        let index = (vaddr >> lvl.shift) & ((1 << lvl.index_bits) - 1);
        let entry = w.entry(lvl.name, table, index)?;
        if lvl.has_rights {
            w.restrict(entry);
        }
        if entry & PTE_PAGE_SIZE != 0 {
            let Some(size) = lvl.large_page else {
                return Err(WalkError::ReservedBit {
                    vaddr,
                    level: lvl.name,
                    entry_addr: table + index * 8,
                    entry,
                });
            };
            return Ok(w.finish(entry, size));
        }
        table = entry & PTE_ADDR_MASK;
    }
    let entry = w.entry("PT", table, (vaddr >> 12) & 0x1ff)?;
    w.restrict(entry);
    Ok(w.finish(entry, PAGE_SIZE_4K))
}

/// Walks 32-bit (non-PAE) page tables with 4-byte entries.
fn walk_32bit(
    mem: &GuestMemoryMmap,
    ctx: &PagingContext,
    vaddr: u64,
) -> Result<Translation, WalkError> {
    let Ok(va) = u32::try_from(vaddr) else {
        return Err(WalkError::AddressTooWide { vaddr });
    };
    let read = |level: &'static str, entry_addr: u64| -> Result<u32, WalkError> {
        mem.read_obj(GuestAddress(entry_addr))
            .map_err(|source| WalkError::TableOutsideRam {
                vaddr,
                level,
                entry_addr,
                source,
            })
    };
    let not_present = |level: &'static str, entry_addr: u64, entry: u32| WalkError::NotPresent {
        vaddr,
        level,
        entry_addr,
        entry: entry.into(),
    };

    // CR3 bits 31:12 locate the page directory; upper and flag bits do not.
    let pd = u64::from(ctx.cr3 as u32 & PTE32_ADDR_MASK);
    let pde_addr = pd + u64::from(va >> 22) * 4;
    let pde = read("PDE32", pde_addr)?;
    let mut steps = vec![WalkStep {
        level: "PDE32",
        entry_addr: pde_addr,
        entry: pde.into(),
    }];
    if pde & PTE_PRESENT as u32 == 0 {
        return Err(not_present("PDE32", pde_addr, pde));
    }
    let mut writable = pde & PTE_WRITABLE as u32 != 0;
    let mut user = pde & PTE_USER as u32 != 0;

    // Without CR4.PSE the PS bit is ignored and the entry always points to a table.
    if ctx.cr4 & CR4_PSE != 0 && pde & PTE_PAGE_SIZE as u32 != 0 {
        let low = u64::from(pde & PDE32_4M_LOW_MASK);
        let high = u64::from((pde >> PDE32_4M_HIGH_SHIFT) & PDE32_4M_HIGH_MASK) << 32;
        return Ok(Translation {
            phys: high | low | (vaddr & (PAGE_SIZE_4M - 1)),
            page_size: PAGE_SIZE_4M,
            writable,
            user,
            steps,
        });
    }

    let pte_addr = u64::from(pde & PTE32_ADDR_MASK) + u64::from((va >> 12) & 0x3ff) * 4;
    let pte = read("PTE32", pte_addr)?;
    steps.push(WalkStep {
        level: "PTE32",
        entry_addr: pte_addr,
        entry: pte.into(),
    });
    if pte & PTE_PRESENT as u32 == 0 {
        return Err(not_present("PTE32", pte_addr, pte));
    }
    writable &= pte & PTE_WRITABLE as u32 != 0;
    user &= pte & PTE_USER as u32 != 0;
    Ok(Translation {
        phys: u64::from(pte & PTE32_ADDR_MASK) | (vaddr & (PAGE_SIZE_4K - 1)),
        page_size: PAGE_SIZE_4K,
        writable,
        user,
        steps,
    })
}

/// Splits the virtual range `[vaddr, vaddr + len)` into pieces that do not cross a
/// 4 KiB boundary, as `(start, length)` pairs in address order.
///
/// A range that would run past the top of the address space stops at `u64::MAX`
/// instead of wrapping to zero.
pub fn split_by_page(vaddr: u64, len: usize) -> impl Iterator<Item = (u64, usize)> {
    // u128 arithmetic lets the end sit one past u64::MAX without overflowing.
    let end = (u128::from(vaddr) + len as u128).min(1u128 << 64);
    let mut cur = u128::from(vaddr);
    std::iter::from_fn(move || {
        if cur >= end {
            return None;
        }
        let next_page = (cur | u128::from(PAGE_SIZE_4K - 1)) + 1;
        let piece_end = next_page.min(end);
        // `cur` < 2^64 and pieces are at most 4 KiB, so both conversions are lossless.
        let piece = (cur as u64, (piece_end - cur) as usize);
        cur = piece_end;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PTE_PRESENT;
    const RW: u64 = PTE_WRITABLE;
    const US: u64 = PTE_USER;
    const PS: u64 = PTE_PAGE_SIZE;
    /// Bits a correct walker must ignore when extracting addresses: NX, bits 62:52
    /// (available / protection key) and the available bits 11:9.
    const NOISE: u64 = (1 << 63) | (0x7ff << 52) | (0x7 << 9);

    const PG: u64 = CR0_PG;
    const RAM: usize = 8 << 20;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap()
    }

    fn put64(mem: &GuestMemoryMmap, addr: u64, val: u64) {
        mem.write_obj(val, GuestAddress(addr)).unwrap();
    }

    fn put32(mem: &GuestMemoryMmap, addr: u64, val: u32) {
        mem.write_obj(val, GuestAddress(addr)).unwrap();
    }

    fn idx(vaddr: u64, shift: u32) -> u64 {
        (vaddr >> shift) & 0x1ff
    }

    fn long_mode(cr3: u64) -> PagingContext {
        PagingContext {
            cr0: PG | 1,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
        }
    }

    fn levels(t: &Translation) -> Vec<&'static str> {
        t.steps.iter().map(|s| s.level).collect()
    }

    /// Four-level tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD), 0x4000 (PT)
    /// mapping `vaddr` to the 4 KiB frame `frame`.
    fn build_4level(mem: &GuestMemoryMmap, vaddr: u64, frame: u64) {
        put64(
            mem,
            0x1000 + idx(vaddr, 39) * 8,
            0x2000 | P | RW | US | NOISE,
        );
        put64(
            mem,
            0x2000 + idx(vaddr, 30) * 8,
            0x3000 | P | RW | US | NOISE,
        );
        put64(
            mem,
            0x3000 + idx(vaddr, 21) * 8,
            0x4000 | P | RW | US | NOISE,
        );
        put64(
            mem,
            0x4000 + idx(vaddr, 12) * 8,
            frame | P | RW | US | NOISE,
        );
    }

    #[test]
    fn paging_disabled_is_identity() {
        let mem = memory();
        let ctx = PagingContext {
            cr0: 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: EFER_LME,
        };
        assert_eq!(ctx.mode(), PagingMode::Disabled);
        let t = translate(&mem, &ctx, 0xdead_beef).unwrap();
        assert_eq!(t.phys, 0xdead_beef);
        assert_eq!(t.page_size, 4096);
        assert!(t.steps.is_empty());
    }

    #[test]
    fn four_level_4k_page() {
        let mem = memory();
        let vaddr = 0xffff_ffff_8123_4567;
        build_4level(&mem, vaddr, 0x7_6543_2000);
        // Low CR3 bits are PCID / cache flags and must not move the root.
        let ctx = long_mode(0x1000 | 0x5);
        assert_eq!(ctx.mode(), PagingMode::Level4);
        let t = translate(&mem, &ctx, vaddr).unwrap();
        assert_eq!(t.phys, 0x7_6543_2567);
        assert_eq!(t.page_size, 4096);
        assert!(t.writable && t.user);
        assert_eq!(levels(&t), ["PML4", "PDPT", "PD", "PT"]);
        assert_eq!(t.steps[0].entry_addr, 0x1000 + 511 * 8);
        assert_eq!(t.steps[3].entry_addr, 0x4000 + 0x34 * 8);
        assert_eq!(t.steps[3].entry, 0x7_6543_2000 | P | RW | US | NOISE);
    }

    #[test]
    fn rights_are_the_intersection_of_all_levels() {
        let mem = memory();
        let vaddr = 0x40_0000_1000;
        build_4level(&mem, vaddr, 0x5000);
        // Read-only at the PD level, supervisor-only at the PT level.
        put64(&mem, 0x3000 + idx(vaddr, 21) * 8, 0x4000 | P | US);
        put64(&mem, 0x4000 + idx(vaddr, 12) * 8, 0x5000 | P | RW);
        let t = translate(&mem, &long_mode(0x1000), vaddr).unwrap();
        assert!(!t.writable);
        assert!(!t.user);
    }

    #[test]
    fn lme_without_lma_still_selects_ia32e_paging() {
        let mem = memory();
        let vaddr = 0x1234_5000;
        build_4level(&mem, vaddr, 0x9000);
        let mut ctx = long_mode(0x1000);
        ctx.efer = EFER_LME;
        assert_eq!(translate(&mem, &ctx, vaddr).unwrap().phys, 0x9000);
    }

    #[test]
    fn four_level_2m_page_ignores_pat_bit() {
        let mem = memory();
        let vaddr = 0x7fff_ffe1_2345;
        put64(&mem, 0x1000 + idx(vaddr, 39) * 8, 0x2000 | P | RW);
        put64(&mem, 0x2000 + idx(vaddr, 30) * 8, 0x3000 | P | RW);
        // Bit 12 is PAT for a large page, not an address bit.
        put64(
            &mem,
            0x3000 + idx(vaddr, 21) * 8,
            0x1_4060_0000 | (1 << 12) | P | PS | NOISE,
        );
        let t = translate(&mem, &long_mode(0x1000), vaddr).unwrap();
        assert_eq!(t.phys, 0x1_4060_0000 | (vaddr & 0x1f_ffff));
        assert_eq!(t.page_size, 2 << 20);
        assert!(!t.writable);
        assert_eq!(levels(&t), ["PML4", "PDPT", "PD"]);
    }

    #[test]
    fn four_level_1g_page() {
        let mem = memory();
        let vaddr = 0xffff_8000_7abc_def0;
        put64(&mem, 0x1000 + idx(vaddr, 39) * 8, 0x2000 | P | RW);
        put64(
            &mem,
            0x2000 + idx(vaddr, 30) * 8,
            0xf_c000_0000 | (1 << 12) | P | RW | PS | NOISE,
        );
        let t = translate(&mem, &long_mode(0x1000), vaddr).unwrap();
        assert_eq!(t.phys, 0xf_c000_0000 | 0x3abc_def0);
        assert_eq!(t.page_size, 1 << 30);
        assert!(t.writable);
        assert_eq!(levels(&t), ["PML4", "PDPT"]);
    }

    #[test]
    fn page_size_bit_in_pml4_is_reserved() {
        let mem = memory();
        put64(&mem, 0x1000, 0x2000 | P | PS);
        let err = translate(&mem, &long_mode(0x1000), 0x1000).unwrap_err();
        assert!(
            matches!(err, WalkError::ReservedBit { level: "PML4", .. }),
            "{err}"
        );
    }

    #[test]
    fn five_level_4k_page() {
        let mem = memory();
        // Bits 56:48 are non-zero, so this needs the fifth level.
        let vaddr = 0x00ab_cdef_1234_5678;
        put64(&mem, 0x6000 + idx(vaddr, 48) * 8, 0x1000 | P | RW | US);
        build_4level(&mem, vaddr, 0x22_2000);
        let mut ctx = long_mode(0x6000);
        ctx.cr4 |= CR4_LA57;
        assert_eq!(ctx.mode(), PagingMode::Level5);
        let t = translate(&mem, &ctx, vaddr).unwrap();
        assert_eq!(t.phys, 0x22_2678);
        assert_eq!(levels(&t), ["PML5", "PML4", "PDPT", "PD", "PT"]);
        assert_eq!(t.steps[0].entry_addr, 0x6000 + 0xab * 8);

        // The same address is not canonical with four levels.
        let err = translate(&mem, &long_mode(0x1000), vaddr).unwrap_err();
        assert!(
            matches!(err, WalkError::NonCanonical { bits: 48, .. }),
            "{err}"
        );
    }

    #[test]
    fn non_canonical_addresses_are_rejected() {
        let mem = memory();
        let ctx = long_mode(0x1000);
        for vaddr in [
            0x0000_8000_0000_0000,
            0xffff_7fff_ffff_ffff,
            0x8000_0000_0000_0000,
        ] {
            let err = translate(&mem, &ctx, vaddr).unwrap_err();
            assert!(
                matches!(err, WalkError::NonCanonical { bits: 48, .. }),
                "{vaddr:#x}: {err}"
            );
        }
        let mut ctx5 = ctx;
        ctx5.cr4 |= CR4_LA57;
        let err = translate(&mem, &ctx5, 0x0100_0000_0000_0000).unwrap_err();
        assert!(
            matches!(err, WalkError::NonCanonical { bits: 57, .. }),
            "{err}"
        );
    }

    #[test]
    fn not_present_is_reported_at_each_level() {
        let vaddr = 0xffff_ffff_8123_4567;
        let entries = [
            ("PML4", 0x1000 + idx(vaddr, 39) * 8),
            ("PDPT", 0x2000 + idx(vaddr, 30) * 8),
            ("PD", 0x3000 + idx(vaddr, 21) * 8),
            ("PT", 0x4000 + idx(vaddr, 12) * 8),
        ];
        for (name, addr) in entries {
            let mem = memory();
            build_4level(&mem, vaddr, 0x5000);
            // Clear only the present bit; the rest of the entry is reported as is.
            let entry = 0x5000 | RW | US;
            put64(&mem, addr, entry);
            match translate(&mem, &long_mode(0x1000), vaddr) {
                Err(WalkError::NotPresent {
                    level,
                    entry_addr,
                    entry: e,
                    vaddr: v,
                }) => {
                    assert_eq!((level, entry_addr, e, v), (name, addr, entry, vaddr));
                }
                other => panic!("{name}: expected not-present, got {other:?}"),
            }
        }
    }

    #[test]
    fn tables_outside_ram_are_reported() {
        let mem = memory();
        let err = translate(&mem, &long_mode(0x8000_0000), 0x1000).unwrap_err();
        assert!(
            matches!(
                err,
                WalkError::TableOutsideRam {
                    level: "PML4",
                    entry_addr: 0x8000_0000,
                    ..
                }
            ),
            "{err}"
        );

        // A PDPT entry pointing past the end of RAM fails when reading the PD.
        put64(&mem, 0x1000, 0x2000 | P);
        put64(&mem, 0x2000, 0x40_0000_0000 | P);
        let err = translate(&mem, &long_mode(0x1000), 0x10).unwrap_err();
        assert!(
            matches!(err, WalkError::TableOutsideRam { level: "PD", .. }),
            "{err}"
        );
    }

    #[test]
    fn pae_4k_and_2m_pages() {
        let mem = memory();
        // PAE CR3 only needs 32-byte alignment.
        let cr3 = 0x1020;
        let ctx = PagingContext {
            cr0: PG | 1,
            cr3,
            cr4: CR4_PAE,
            efer: 0,
        };
        assert_eq!(ctx.mode(), PagingMode::Pae);

        let v4k = 0xc012_3abc_u64;
        // PDPTEs have no R/W or U/S bits; those positions are ignored.
        put64(&mem, cr3 + 3 * 8, 0x2000 | P);
        put64(&mem, 0x2000 + idx(v4k, 21) * 8, 0x3000 | P | RW | US);
        put64(
            &mem,
            0x3000 + idx(v4k, 12) * 8,
            0x1_2345_6000 | P | RW | US | NOISE,
        );
        let t = translate(&mem, &ctx, v4k).unwrap();
        assert_eq!(t.phys, 0x1_2345_6abc);
        assert!(t.writable && t.user);
        assert_eq!(levels(&t), ["PDPT", "PD", "PT"]);
        assert_eq!(t.steps[0].entry_addr, 0x1038);

        let v2m = 0x4060_1234_u64;
        put64(&mem, cr3 + 8, 0x4000 | P);
        put64(
            &mem,
            0x4000 + idx(v2m, 21) * 8,
            0x80_0000 | (1 << 12) | P | PS,
        );
        let t = translate(&mem, &ctx, v2m).unwrap();
        assert_eq!(t.phys, 0x80_0000 | (v2m & 0x1f_ffff));
        assert_eq!(t.page_size, 2 << 20);
        assert!(!t.writable);

        let err = translate(&mem, &ctx, 0x1_0000_0000).unwrap_err();
        assert!(matches!(err, WalkError::AddressTooWide { .. }), "{err}");
        let err = translate(&mem, &ctx, 0).unwrap_err();
        assert!(
            matches!(err, WalkError::NotPresent { level: "PDPT", .. }),
            "{err}"
        );
    }

    #[test]
    fn page_size_bit_in_pae_pdpte_is_reserved() {
        let mem = memory();
        let ctx = PagingContext {
            cr0: PG,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: 0,
        };
        put64(&mem, 0x1000, 0x4000_0000 | P | PS);
        let err = translate(&mem, &ctx, 0x1234).unwrap_err();
        assert!(
            matches!(
                err,
                WalkError::ReservedBit {
                    level: "PDPT",
                    entry_addr: 0x1000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn bits32_4k_page() {
        let mem = memory();
        let ctx = PagingContext {
            cr0: PG | 1,
            cr3: 0x1000,
            cr4: 0,
            efer: 0,
        };
        assert_eq!(ctx.mode(), PagingMode::Bits32);
        let vaddr = 0xc040_2abc_u64;
        put32(&mem, 0x1000 + (vaddr >> 22) * 4, 0x2000 | 0x7);
        put32(
            &mem,
            0x2000 + ((vaddr >> 12) & 0x3ff) * 4,
            0xfedc_b000 | 0x5,
        );
        let t = translate(&mem, &ctx, vaddr).unwrap();
        assert_eq!(t.phys, 0xfedc_babc);
        assert_eq!(t.page_size, 4096);
        assert!(!t.writable && t.user);
        assert_eq!(levels(&t), ["PDE32", "PTE32"]);
        assert_eq!(t.steps[0].entry_addr, 0x1000 + 0x301 * 4);

        let err = translate(&mem, &ctx, 0x1_0000_0000).unwrap_err();
        assert!(matches!(err, WalkError::AddressTooWide { .. }), "{err}");
        let err = translate(&mem, &ctx, 0xc040_3000).unwrap_err();
        assert!(
            matches!(err, WalkError::NotPresent { level: "PTE32", .. }),
            "{err}"
        );
        let err = translate(&mem, &ctx, 0x0).unwrap_err();
        assert!(
            matches!(err, WalkError::NotPresent { level: "PDE32", .. }),
            "{err}"
        );
    }

    #[test]
    fn bits32_4m_page_needs_pse() {
        let mem = memory();
        let vaddr = 0x8012_3456_u64;
        // 4 MiB frame 0x0c00_0000 with PSE-36 bits 20:13 = 0x3 (physical bits 33:32).
        let pde = 0x0c00_0000 | (0x3 << 13) | 0x83;
        put32(&mem, 0x1000 + (vaddr >> 22) * 4, pde);
        let pse = PagingContext {
            cr0: PG,
            cr3: 0x1000,
            cr4: CR4_PSE,
            efer: 0,
        };
        let t = translate(&mem, &pse, vaddr).unwrap();
        assert_eq!(t.phys, 0x3_0c12_3456);
        assert_eq!(t.page_size, 4 << 20);
        assert!(t.writable && !t.user);
        assert_eq!(levels(&t), ["PDE32"]);

        // Without CR4.PSE the same entry points at a page table (at 0x0c000000 + flag
        // bits masked off), which lies outside this guest's RAM.
        let no_pse = PagingContext { cr4: 0, ..pse };
        let err = translate(&mem, &no_pse, vaddr).unwrap_err();
        match err {
            WalkError::TableOutsideRam {
                level: "PTE32",
                entry_addr,
                ..
            } => {
                assert_eq!(entry_addr, 0x0c00_6000 + 0x123 * 4);
            }
            other => panic!("expected PTE32 outside RAM, got {other}"),
        }
    }

    fn split(vaddr: u64, len: usize) -> Vec<(u64, usize)> {
        split_by_page(vaddr, len).collect()
    }

    #[test]
    fn split_by_page_cases() {
        assert_eq!(split(0x1000, 0), []);
        assert_eq!(split(0x1000, 0x1000), [(0x1000, 0x1000)]);
        assert_eq!(split(0x1ffe, 4), [(0x1ffe, 2), (0x2000, 2)]);
        assert_eq!(
            split(0x1800, 0x2000),
            [(0x1800, 0x800), (0x2000, 0x1000), (0x3000, 0x800)]
        );
        assert_eq!(split(0x1fff, 1), [(0x1fff, 1)]);
    }

    #[test]
    fn split_by_page_stops_at_the_top_of_the_address_space() {
        assert_eq!(split(u64::MAX, 1), [(u64::MAX, 1)]);
        assert_eq!(split(u64::MAX - 1, 16), [(u64::MAX - 1, 2)]);
        assert_eq!(
            split(0xffff_ffff_ffff_effe, 0x2000),
            [(0xffff_ffff_ffff_effe, 2), (0xffff_ffff_ffff_f000, 0x1000)]
        );
        assert_eq!(split(u64::MAX, usize::MAX), [(u64::MAX, 1)]);
    }
}
