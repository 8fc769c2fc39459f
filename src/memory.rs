//! Guest RAM: how `--mem` becomes memory regions, and the memory map the guest is told about.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout::{BIOS_END, EBDA_START, MMIO_GAP_END, MMIO_GAP_START};

/// Guest memory as every module sees it.
pub type GuestMem = GuestMemoryMmap<()>;

const MIB: u64 = 1 << 20;
/// Below this the fixed boot structures (page tables, zero page, command line, kernel at 1 MiB)
/// do not fit.
pub const MIN_MEM_MIB: u64 = 8;
/// A sanity bound so a typo (`--mem 1000000000`) fails early with a clear message.
pub const MAX_MEM_MIB: u64 = 1 << 24;

#[derive(Debug, Error)]
pub enum MemoryError {
    /// `--mem` is outside what minivmm can lay out.
    #[error("--mem {0} MiB is out of range: give between {MIN_MEM_MIB} and {MAX_MEM_MIB} MiB")]
    BadSize(u64),
    /// mmap of guest RAM failed, usually because the host lacks memory.
    #[error("cannot allocate {mib} MiB of guest memory ({source}): try a smaller --mem")]
    Allocate {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    /// KVM refused a memory slot.
    #[error("KVM refused the guest memory ({0}): try a smaller --mem")]
    Register(std::io::Error),
    /// More guest memory than the host has.
    #[error("--mem {asked} MiB is more than this host's memory ({host} MiB): give less")]
    MoreThanHost { asked: u64, host: u64 },
}

/// Kinds of e820 entries, with the numbers the BIOS interface uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// The guest-physical RAM ranges for `mem_mib` MiB: one range below the 32-bit MMIO gap, and
/// the rest above 4 GiB when it does not fit below.
pub fn ram_ranges(mem_mib: u64) -> Result<Vec<(u64, u64)>, MemoryError> {
    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mem_mib) {
        return Err(MemoryError::BadSize(mem_mib));
    }
    let total = mem_mib * MIB;
    if total <= MMIO_GAP_START {
        Ok(vec![(0, total)])
    } else {
        Ok(vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, total - MMIO_GAP_START),
        ])
    }
}

/// Host RAM plus swap in MiB, from /proc/meminfo (None if it cannot be read).
fn host_memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((kib("MemTotal:")? + kib("SwapTotal:").unwrap_or(0)) / 1024)
}

/// Refuses more guest RAM than the host has (RAM plus swap). Mapping it would succeed (it is
/// not reserved up front); the guest would be killed later, at the worst moment.
pub fn check_fits_host(mem_mib: u64) -> Result<(), MemoryError> {
    match host_memory_mib() {
        Some(host) if mem_mib > host => Err(MemoryError::MoreThanHost {
            asked: mem_mib,
            host,
        }),
        _ => Ok(()),
    }
}

/// Allocates guest RAM (anonymous, private, not touched until the guest uses it). The
/// caller checks first that it fits the host ([`check_fits_host`]).
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMem, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mem_mib)?
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate {
        mib: mem_mib,
        source,
    })
}

/// Hands every RAM region to KVM as a memory slot.
pub fn register_guest_memory(vm: &VmFd, mem: &GuestMem) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| MemoryError::Register(std::io::Error::from_raw_os_error(libc::EFAULT)))?;
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping belongs to `mem`, which every caller keeps alive for as long as
        // the VM (and its vCPUs) can touch it.
        unsafe { vm.set_user_memory_region(desc) }.map_err(|e| MemoryError::Register(e.into()))?;
    }
    Ok(())
}

/// End (exclusive) of the RAM below the MMIO gap: where boot-time data must live.
pub fn low_ram_end(mem_mib: u64) -> u64 {
    (mem_mib * MIB).min(MMIO_GAP_START)
}

/// The memory map for the guest: conventional memory, the EBDA/BIOS hole (the MP and ACPI
/// tables live there and must not be handed out as RAM), and the RAM ranges.
pub fn e820_map(ranges: &[(u64, u64)]) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: EBDA_START,
            size: BIOS_END - EBDA_START,
            kind: E820Kind::Reserved,
        },
    ];
    for &(start, size) in ranges {
        // The first range starts at 0; its part below 1 MiB is described above.
        let start_above_bios = start.max(BIOS_END);
        let end = start + size;
        if end > start_above_bios {
            map.push(E820Entry {
                addr: start_above_bios,
                size: end - start_above_bios,
                kind: E820Kind::Ram,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(256).unwrap(), vec![(0, 256 * MIB)]);
    }

    #[test]
    fn memory_above_the_gap_is_split() {
        let ranges = ram_ranges(4096).unwrap();
        assert_eq!(
            ranges,
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, 4096 * MIB - MMIO_GAP_START)
            ]
        );
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        assert_eq!(total, 4096 * MIB);
    }

    #[test]
    fn exactly_up_to_the_gap_is_one_range() {
        assert_eq!(
            ram_ranges(MMIO_GAP_START / MIB).unwrap(),
            vec![(0, MMIO_GAP_START)]
        );
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(ram_ranges(0), Err(MemoryError::BadSize(0))));
        assert!(ram_ranges(MIN_MEM_MIB - 1).is_err());
        assert!(ram_ranges(MAX_MEM_MIB + 1).is_err());
    }

    #[test]
    fn e820_matches_ranges_and_reserves_bios_area() {
        let map = e820_map(&ram_ranges(4096).unwrap());
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820Kind::Ram
            }
        );
        assert_eq!(map[1].kind, E820Kind::Reserved);
        assert_eq!(map[1].addr + map[1].size, BIOS_END);
        assert_eq!(map[2].addr, BIOS_END);
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!(map[3].addr, MMIO_GAP_END);
        assert_eq!(map[3].size, 4096 * MIB - MMIO_GAP_START);
        // No entry overlaps the next one.
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr);
        }
    }

    #[test]
    fn guest_memory_has_the_planned_regions() {
        let mem = create_guest_memory(64).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress(64 * MIB - 1));
    }
}
