//! Intel MultiProcessor Specification 1.4 tables.
//!
//! Kernels that predate ACPI-based SMP (or are built without ACPI) find their CPUs,
//! the I/O APIC and the legacy interrupt routing through these tables. The floating
//! pointer goes at the start of the EBDA, where the OS searches for it, and the
//! configuration table follows it immediately.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::cpu::MAX_CPUS;
use super::layout::{IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_START};

/// The table must stay below the legacy video/ROM hole that starts at 640 KiB.
const MPTABLE_LIMIT: u32 = 0xa0000;

// MPTABLE_START is used as a 32-bit physical pointer inside the tables.
const _: () = assert!(MPTABLE_START < MPTABLE_LIMIT as u64);

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_ENTRY_LEN: usize = 20;
/// Every entry type other than the processor entry is 8 bytes long.
const SMALL_ENTRY_LEN: usize = 8;

/// MP specification revision 1.4.
const SPEC_REV: u8 = 4;
const OEM_ID: &[u8; 8] = b"MINIVMM ";
const PRODUCT_ID: &[u8; 12] = b"MINIVMM-PC  ";

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTSTRAP: u8 = 1 << 1;
const IOAPIC_ENABLED: u8 = 1 << 0;

/// Integrated xAPIC version as reported by the LAPIC version register.
const LAPIC_VERSION: u8 = 0x14;
/// 82093AA-compatible I/O APIC, which is what KVM's in-kernel I/O APIC emulates.
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6, model 15, stepping 1: any P6-class signature satisfies the OS.
const CPU_SIGNATURE: u32 = (6 << 8) | (15 << 4) | 1;
/// CPUID.1:EDX bits the OS may look at here: FPU, TSC, CX8 and APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 4) | (1 << 8) | (1 << 9);

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger mode "conform to the bus" (edge, active high on ISA).
const INT_FLAGS_CONFORMING: u16 = 0;
const ISA_BUS_ID: u8 = 0;
const ISA_IRQS: u8 = 16;
/// Destination id meaning "every local APIC".
const ALL_LAPICS: u8 = 0xff;

/// Errors from building the MP table.
#[derive(Debug, Error)]
pub enum MptableError {
    /// The VM has no CPUs, so there is nothing to describe.
    #[error("cannot build an MP table for zero CPUs")]
    NoCpus,
    /// More CPUs than 8-bit APIC ids can address next to the I/O APIC.
    #[error("{requested} CPUs requested but the MP table can describe at most {MAX_CPUS}")]
    TooManyCpus {
        /// The CPU count that was asked for.
        requested: u8,
    },
    /// The table for this many CPUs overruns the space reserved for it.
    #[error(
        "MP table for {num_cpus} CPUs needs {needed} bytes at {start:#x} but must end by {limit:#x}"
    )]
    DoesNotFit {
        /// The CPU count that was asked for.
        num_cpus: u8,
        /// Bytes needed by the floating pointer and the configuration table together.
        needed: usize,
        /// Guest physical address where the table starts.
        start: u64,
        /// Guest physical address the table must not reach.
        limit: u64,
    },
    /// Guest memory does not cover the table's location.
    #[error("failed to write the MP table ({len} bytes) to guest memory at {addr:#x}")]
    WriteMemory {
        /// Guest physical address of the failed write.
        addr: u64,
        /// Length of the failed write.
        len: usize,
        /// The underlying guest memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// Writes the MP floating pointer and configuration table for `num_cpus` CPUs at
/// [`MPTABLE_START`].
///
/// CPU `i` gets APIC id `i` (CPU 0 is the bootstrap processor), the I/O APIC gets id
/// `num_cpus`, and ISA IRQs 0-15 are routed to I/O APIC pins 0-15.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    write_mptable(mem, MPTABLE_START as u32, MPTABLE_LIMIT, num_cpus)
}

fn write_mptable(
    mem: &GuestMemoryMmap,
    start: u32,
    limit: u32,
    num_cpus: u8,
) -> Result<(), MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus {
            requested: num_cpus,
        });
    }
    let needed = FLOATING_POINTER_LEN + config_table_len(num_cpus);
    if u64::from(start) + needed as u64 > u64::from(limit) {
        return Err(MptableError::DoesNotFit {
            num_cpus,
            needed,
            start: start.into(),
            limit: limit.into(),
        });
    }

    // The fit check above keeps this address below `limit`, so it fits in 32 bits.
    let config_addr = start + FLOATING_POINTER_LEN as u32;
    write(mem, start, &floating_pointer(config_addr))?;
    write(mem, config_addr, &config_table(num_cpus))
}

fn write(mem: &GuestMemoryMmap, addr: u32, bytes: &[u8]) -> Result<(), MptableError> {
    mem.write_slice(bytes, GuestAddress(addr.into()))
        .map_err(|source| MptableError::WriteMemory {
            addr: addr.into(),
            len: bytes.len(),
            source,
        })
}

fn config_table_len(num_cpus: u8) -> usize {
    HEADER_LEN
        + usize::from(num_cpus) * PROCESSOR_ENTRY_LEN
        + SMALL_ENTRY_LEN // bus
        + SMALL_ENTRY_LEN // I/O APIC
        + usize::from(ISA_IRQS) * SMALL_ENTRY_LEN
        + 2 * SMALL_ENTRY_LEN // LINT0, LINT1
}

/// Value that makes `bytes` sum to zero modulo 256 when stored in one of them
/// (whose current value must be 0).
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

fn floating_pointer(config_addr: u32) -> [u8; FLOATING_POINTER_LEN] {
    let mut fp = [0u8; FLOATING_POINTER_LEN];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&config_addr.to_le_bytes());
    fp[8] = 1; // length in 16-byte paragraphs
    fp[9] = SPEC_REV;
    // Feature byte 1 = 0: a configuration table is present (no default config).
    // Feature byte 2 bit 7 (IMCR) = 0: virtual-wire mode, which is what KVM provides.
    fp[10] = checksum(&fp);
    fp
}

fn config_table(num_cpus: u8) -> Vec<u8> {
    let mut t = Vec::with_capacity(config_table_len(num_cpus));
    let entry_count = u16::from(num_cpus) + 1 + 1 + u16::from(ISA_IRQS) + 2;
    let ioapic_id = num_cpus;

    // Header; length and checksum are patched in once the entries are known.
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&0u16.to_le_bytes()); // base table length
    t.push(SPEC_REV);
    t.push(0); // checksum
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(PRODUCT_ID);
    t.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    t.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    t.extend_from_slice(&entry_count.to_le_bytes());
    t.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    t.extend_from_slice(&0u16.to_le_bytes()); // no extended table
    t.push(0); // extended table checksum
    t.push(0); // reserved

    for cpu in 0..num_cpus {
        let bsp = if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        t.extend_from_slice(&[ENTRY_PROCESSOR, cpu, LAPIC_VERSION, CPU_ENABLED | bsp]);
        t.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        t.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        t.extend_from_slice(&[0; 8]);
    }

    t.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    t.extend_from_slice(b"ISA   ");

    t.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED]);
    t.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());

    for irq in 0..ISA_IRQS {
        t.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT]);
        t.extend_from_slice(&INT_FLAGS_CONFORMING.to_le_bytes());
        t.extend_from_slice(&[ISA_BUS_ID, irq, ioapic_id, irq]);
    }

    // The 8259 reaches the BSP through LINT0 (virtual wire); NMIs arrive on LINT1.
    for (int_type, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        t.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, int_type]);
        t.extend_from_slice(&INT_FLAGS_CONFORMING.to_le_bytes());
        t.extend_from_slice(&[ISA_BUS_ID, 0, ALL_LAPICS, lint]);
    }

    // At most 44 + 254 * 20 + 160 bytes, well inside u16.
    let len = t.len() as u16;
    t[4..6].copy_from_slice(&len.to_le_bytes());
    t[7] = checksum(&t);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    #[derive(Debug, PartialEq)]
    enum Entry {
        Cpu {
            apic_id: u8,
            enabled: bool,
            bsp: bool,
        },
        Bus {
            id: u8,
            name: [u8; 6],
        },
        IoApic {
            id: u8,
            version: u8,
            enabled: bool,
            addr: u32,
        },
        IoInt {
            kind: u8,
            flags: u16,
            bus: u8,
            irq: u8,
            apic: u8,
            pin: u8,
        },
        LocalInt {
            kind: u8,
            flags: u16,
            apic: u8,
            lint: u8,
        },
    }

    struct Parsed {
        fp_addr: u64,
        header: Vec<u8>,
        entries: Vec<Entry>,
    }

    /// Finds and decodes the tables the way an OS would: scan the EBDA on 16-byte
    /// boundaries for the signature, verify checksums, walk the entries.
    fn parse(mem: &GuestMemoryMmap) -> Parsed {
        let ebda = read(mem, 0x9fc00, 0x400);
        let off = (0..ebda.len())
            .step_by(16)
            .find(|&o| &ebda[o..o + 4] == b"_MP_")
            .expect("no floating pointer in the EBDA");
        let fp = &ebda[off..off + 16];
        assert_eq!(sum(fp), 0, "floating pointer checksum");
        assert_eq!(fp[8], 1, "floating pointer length");
        assert_eq!(fp[9], 4, "spec revision");
        assert_eq!(fp[11], 0, "default configuration must not be selected");

        let table_addr = u64::from(u32_at(fp, 4));
        let head = read(mem, table_addr, 44);
        assert_eq!(&head[0..4], b"PCMP");
        let len = usize::from(u16_at(&head, 4));
        let table = read(mem, table_addr, len);
        assert_eq!(sum(&table), 0, "configuration table checksum");
        assert_eq!(u16_at(&table, 40), 0, "no extended table");

        let count = usize::from(u16_at(&table, 34));
        let mut entries = Vec::new();
        let mut pos = 44;
        for _ in 0..count {
            let e = &table[pos..];
            let (entry, size) = match e[0] {
                0 => (
                    Entry::Cpu {
                        apic_id: e[1],
                        enabled: e[3] & 1 != 0,
                        bsp: e[3] & 2 != 0,
                    },
                    20,
                ),
                1 => {
                    let mut name = [0u8; 6];
                    name.copy_from_slice(&e[2..8]);
                    (Entry::Bus { id: e[1], name }, 8)
                }
                2 => (
                    Entry::IoApic {
                        id: e[1],
                        version: e[2],
                        enabled: e[3] & 1 != 0,
                        addr: u32_at(e, 4),
                    },
                    8,
                ),
                3 => (
                    Entry::IoInt {
                        kind: e[1],
                        flags: u16_at(e, 2),
                        bus: e[4],
                        irq: e[5],
                        apic: e[6],
                        pin: e[7],
                    },
                    8,
                ),
                4 => (
                    Entry::LocalInt {
                        kind: e[1],
                        flags: u16_at(e, 2),
                        apic: e[6],
                        lint: e[7],
                    },
                    8,
                ),
                t => panic!("unknown entry type {t}"),
            };
            entries.push(entry);
            pos += size;
        }
        assert_eq!(pos, len, "entries must fill the base table exactly");
        Parsed {
            fp_addr: 0x9fc00 + off as u64,
            header: table[..44].to_vec(),
            entries,
        }
    }

    #[test]
    fn single_cpu_table_is_complete() {
        let mem = memory();
        setup_mptable(&mem, 1).unwrap();
        let p = parse(&mem);
        assert_eq!(p.fp_addr, MPTABLE_START);
        assert_eq!(u32_at(&p.header, 36), 0xfee0_0000);
        assert_eq!(p.header[6], 4);

        let ioapic_id = 1;
        let mut expected = vec![
            Entry::Cpu {
                apic_id: 0,
                enabled: true,
                bsp: true,
            },
            Entry::Bus {
                id: 0,
                name: *b"ISA   ",
            },
            Entry::IoApic {
                id: ioapic_id,
                version: 0x11,
                enabled: true,
                addr: 0xfec0_0000,
            },
        ];
        for irq in 0..16 {
            expected.push(Entry::IoInt {
                kind: 0,
                flags: 0,
                bus: 0,
                irq,
                apic: ioapic_id,
                pin: irq,
            });
        }
        expected.push(Entry::LocalInt {
            kind: 3,
            flags: 0,
            apic: 0xff,
            lint: 0,
        });
        expected.push(Entry::LocalInt {
            kind: 1,
            flags: 0,
            apic: 0xff,
            lint: 1,
        });
        assert_eq!(p.entries, expected);
    }

    #[test]
    fn one_processor_entry_per_cpu_with_only_cpu0_as_bsp() {
        for n in [2u8, 4, 17] {
            let mem = memory();
            setup_mptable(&mem, n).unwrap();
            let p = parse(&mem);
            let cpus: Vec<_> = p
                .entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Cpu {
                        apic_id,
                        enabled,
                        bsp,
                    } => Some((*apic_id, *enabled, *bsp)),
                    _ => None,
                })
                .collect();
            let expected: Vec<_> = (0..n).map(|i| (i, true, i == 0)).collect();
            assert_eq!(cpus, expected);
            assert_eq!(usize::from(u16_at(&p.header, 34)), usize::from(n) + 20);
            assert_eq!(
                usize::from(u16_at(&p.header, 4)),
                44 + 20 * usize::from(n) + 20 * 8
            );
            // The I/O APIC id follows the CPUs and every IRQ targets it.
            assert!(p.entries.contains(&Entry::IoApic {
                id: n,
                version: 0x11,
                enabled: true,
                addr: 0xfec0_0000
            }));
            assert!(p.entries.iter().all(|e| match e {
                Entry::IoInt { apic, .. } => *apic == n,
                _ => true,
            }));
        }
    }

    #[test]
    fn largest_table_that_fits_ends_at_640k() {
        // 1024 - 16 - 44 - 160 = 804 bytes leave room for 40 twenty-byte processor entries.
        let mem = memory();
        setup_mptable(&mem, 40).unwrap();
        let p = parse(&mem);
        let end =
            u64::from(u32_at(&read(&mem, p.fp_addr, 16), 4)) + u64::from(u16_at(&p.header, 4));
        assert!(end <= 0xa0000);

        let err = setup_mptable(&mem, 41).unwrap_err();
        assert!(
            matches!(
                err,
                MptableError::DoesNotFit {
                    num_cpus: 41,
                    needed: 1040,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn too_many_or_zero_cpus_are_rejected() {
        let mem = memory();
        assert!(matches!(
            setup_mptable(&mem, 255),
            Err(MptableError::TooManyCpus { requested: 255 })
        ));
        assert!(matches!(setup_mptable(&mem, 0), Err(MptableError::NoCpus)));
        // Nothing was written for the rejected requests.
        assert!(read(&mem, MPTABLE_START, 16).iter().all(|b| *b == 0));
    }

    #[test]
    fn the_254_cpu_limit_is_what_ids_allow_given_room() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_mptable(&mem, 0x10000, 0x20000, 254).unwrap();
        let fp = read(&mem, 0x10000, 16);
        assert_eq!(sum(&fp), 0);
        let table = read(&mem, 0x10010, 44 + 254 * 20 + 160);
        assert_eq!(sum(&table), 0);
        assert_eq!(table[44 + 253 * 20 + 1], 253);
    }

    #[test]
    fn memory_without_the_ebda_reports_a_write_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9f000)]).unwrap();
        let err = setup_mptable(&mem, 1).unwrap_err();
        assert!(
            matches!(
                err,
                MptableError::WriteMemory {
                    addr: 0x9fc00,
                    len: 16,
                    ..
                }
            ),
            "{err}"
        );
    }
}
