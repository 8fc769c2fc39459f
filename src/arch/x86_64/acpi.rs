//! Minimal ACPI tables: RSDP, RSDT, XSDT and a MADT.
//!
//! This is just enough for Linux to enumerate the CPUs and the I/O APIC through ACPI
//! (which it prefers over the MP table). There is no FADT or DSDT, so the kernel runs
//! without an AML interpreter or power management; the processor and interrupt
//! controller information is parsed from the MADT before that matters.

// The VMM boot path that calls `setup_acpi` is written separately.
#![allow(dead_code)]

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{ACPI_START, BIOS_END, IOAPIC_ADDR, LAPIC_ADDR};

/// Highest CPU count: APIC ids are 8 bits, 0xff is the broadcast id and the I/O
/// APIC takes the id after the last CPU.
pub const MAX_CPUS: u8 = 254;

const OEM_ID: &[u8; 6] = b"MINIVM";
const OEM_TABLE_ID: &[u8; 8] = b"MINIVMM ";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: &[u8; 4] = b"MVMM";
const CREATOR_REVISION: u32 = 1;

const RSDP_LEN: usize = 36;
/// The ACPI 1.0 checksum covers only the first 20 bytes of the RSDP.
const RSDP_V1_LEN: usize = 20;
/// RSDP revision 2 (ACPI 2.0+) carries the XSDT address and extended checksum.
const RSDP_REVISION: u8 = 2;
const HEADER_LEN: usize = 36;
const RSDT_REVISION: u8 = 1;
const XSDT_REVISION: u8 = 1;
/// MADT revision 3 (ACPI 5.0 through 6.1): every field used here exists, and local APIC
/// flag bit 1 is still reserved (revision 5 gave it the "online capable" meaning).
const MADT_REVISION: u8 = 3;
const MADT_PCAT_COMPAT: u32 = 1 << 0;
const MADT_LAPIC: u8 = 0;
const MADT_LAPIC_LEN: u8 = 8;
const MADT_LAPIC_ENABLED: u32 = 1 << 0;
const MADT_IOAPIC: u8 = 1;
const MADT_IOAPIC_LEN: u8 = 12;

/// Tables start on 16-byte boundaries; the RSDP must, and the rest keep it tidy.
const TABLE_ALIGN: u64 = 16;

// Even 254 CPUs need about 2.3 KiB, far less than the BIOS area holds.
const _: () =
    assert!(ACPI_START + 0x100 + (HEADER_LEN as u64 + 8 + MAX_CPUS as u64 * 8 + 12) <= BIOS_END);

/// Errors from building the ACPI tables.
#[derive(Debug, Error)]
pub enum AcpiError {
    /// The VM has no CPUs, so there is nothing to describe.
    #[error("cannot build ACPI tables for zero CPUs")]
    NoCpus,
    /// More CPUs than 8-bit APIC ids can address next to the I/O APIC.
    #[error("{requested} CPUs requested but the MADT can describe at most {MAX_CPUS}")]
    TooManyCpus {
        /// The CPU count that was asked for.
        requested: u8,
    },
    /// Guest memory does not cover a table's location.
    #[error("failed to write ACPI table {table} ({len} bytes) to guest memory at {addr:#x}")]
    WriteMemory {
        /// Signature of the table being written.
        table: &'static str,
        /// Guest physical address of the failed write.
        addr: u64,
        /// Length of the failed write.
        len: usize,
        /// The underlying guest memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// Writes the RSDP, RSDT, XSDT and MADT for `num_cpus` CPUs starting at
/// [`ACPI_START`] and returns the RSDP address (for `boot_params.acpi_rsdp_addr`).
///
/// CPU `i` gets ACPI processor id and APIC id `i`; the I/O APIC gets id `num_cpus`
/// and GSI base 0, with no interrupt source overrides (ISA IRQ n is GSI n).
pub fn setup_acpi(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<GuestAddress, AcpiError> {
    if num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(AcpiError::TooManyCpus {
            requested: num_cpus,
        });
    }

    let rsdp_addr = ACPI_START;
    let rsdt_addr = align_up(rsdp_addr + RSDP_LEN as u64);
    let rsdt_len = HEADER_LEN + 4;
    let xsdt_addr = align_up(rsdt_addr + rsdt_len as u64);
    let xsdt_len = HEADER_LEN + 8;
    let madt_addr = align_up(xsdt_addr + xsdt_len as u64);

    // Everything lives below 1 MiB (checked at compile time), so 32-bit pointers fit.
    let madt = madt(num_cpus);
    let rsdt = sdt(b"RSDT", RSDT_REVISION, &(madt_addr as u32).to_le_bytes());
    let xsdt = sdt(b"XSDT", XSDT_REVISION, &madt_addr.to_le_bytes());
    let rsdp = rsdp(rsdt_addr as u32, xsdt_addr);

    write(mem, "MADT", madt_addr, &madt)?;
    write(mem, "XSDT", xsdt_addr, &xsdt)?;
    write(mem, "RSDT", rsdt_addr, &rsdt)?;
    // The RSDP goes last so that a half-written set is never discoverable.
    write(mem, "RSDP", rsdp_addr, &rsdp)?;
    Ok(GuestAddress(rsdp_addr))
}

fn align_up(addr: u64) -> u64 {
    addr.next_multiple_of(TABLE_ALIGN)
}

fn write(
    mem: &GuestMemoryMmap,
    table: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), AcpiError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| AcpiError::WriteMemory {
            table,
            addr,
            len: bytes.len(),
            source,
        })
}

/// Value that makes `bytes` sum to zero modulo 256 when stored in one of them
/// (whose current value must be 0).
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

fn rsdp(rsdt_addr: u32, xsdt_addr: u64) -> [u8; RSDP_LEN] {
    let mut r = [0u8; RSDP_LEN];
    r[0..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(OEM_ID);
    r[15] = RSDP_REVISION;
    r[16..20].copy_from_slice(&rsdt_addr.to_le_bytes());
    r[20..24].copy_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    r[24..32].copy_from_slice(&xsdt_addr.to_le_bytes());
    r[8] = checksum(&r[..RSDP_V1_LEN]);
    // The extended checksum covers the whole structure, including the first checksum.
    r[32] = checksum(&r);
    r
}

/// A system description table: the standard header followed by `body`.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    // Tables here are at most a few KiB, so the length fits in 32 bits.
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, patched below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&OEM_REVISION.to_le_bytes());
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

fn madt(num_cpus: u8) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + usize::from(num_cpus) * 8 + 12);
    body.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    // A legacy 8259 pair is present, so the OS must mask it before using the APICs.
    body.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for cpu in 0..num_cpus {
        body.extend_from_slice(&[MADT_LAPIC, MADT_LAPIC_LEN, cpu, cpu]);
        body.extend_from_slice(&MADT_LAPIC_ENABLED.to_le_bytes());
    }
    body.extend_from_slice(&[MADT_IOAPIC, MADT_IOAPIC_LEN, num_cpus, 0]);
    body.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    sdt(b"APIC", MADT_REVISION, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    /// Scans the BIOS area on 16-byte boundaries for a valid RSDP, as Linux does
    /// when it is not told the address.
    fn find_rsdp(mem: &GuestMemoryMmap) -> u64 {
        let area = read(mem, 0xe0000, 0x20000);
        (0..area.len() - 36)
            .step_by(16)
            .find(|&o| &area[o..o + 8] == b"RSD PTR " && sum(&area[o..o + 20]) == 0)
            .map(|o| 0xe0000 + o as u64)
            .expect("no RSDP in 0xe0000-0xfffff")
    }

    /// Reads a whole table, checking its signature and checksum.
    fn table(mem: &GuestMemoryMmap, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        let head = read(mem, addr, 36);
        assert_eq!(&head[0..4], sig);
        let t = read(mem, addr, u32_at(&head, 4) as usize);
        assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
        assert_eq!(&t[10..16], b"MINIVM");
        t
    }

    #[derive(Debug, PartialEq)]
    enum Madt {
        Lapic { uid: u8, apic_id: u8, flags: u32 },
        IoApic { id: u8, addr: u32, gsi_base: u32 },
    }

    fn madt_entries(madt: &[u8]) -> Vec<Madt> {
        let mut out = Vec::new();
        let mut pos = 44;
        while pos < madt.len() {
            let (kind, len) = (madt[pos], usize::from(madt[pos + 1]));
            let e = &madt[pos..pos + len];
            out.push(match (kind, len) {
                (0, 8) => Madt::Lapic {
                    uid: e[2],
                    apic_id: e[3],
                    flags: u32_at(e, 4),
                },
                (1, 12) => Madt::IoApic {
                    id: e[2],
                    addr: u32_at(e, 4),
                    gsi_base: u32_at(e, 8),
                },
                _ => panic!("unexpected MADT entry type {kind} length {len}"),
            });
            pos += len;
        }
        assert_eq!(
            pos,
            madt.len(),
            "MADT entries must end exactly at the table length"
        );
        out
    }

    #[test]
    fn tables_are_discoverable_and_consistent() {
        for n in [1u8, 2, 8, 254] {
            let mem = memory();
            let rsdp_addr = setup_acpi(&mem, n).unwrap();
            assert_eq!(find_rsdp(&mem), rsdp_addr.0);

            let rsdp = read(&mem, rsdp_addr.0, 36);
            assert_eq!(rsdp[15], 2, "RSDP revision");
            assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
            assert_eq!(sum(&rsdp), 0, "extended checksum");

            let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
            assert_eq!(xsdt.len(), 36 + 8, "XSDT lists one table");
            let rsdt = table(&mem, u64::from(u32_at(&rsdp, 16)), b"RSDT");
            assert_eq!(rsdt.len(), 36 + 4, "RSDT lists one table");
            let madt_addr = u64_at(&xsdt, 36);
            assert_eq!(u64::from(u32_at(&rsdt, 36)), madt_addr);

            let madt = table(&mem, madt_addr, b"APIC");
            assert_eq!(madt[8], 3, "MADT revision");
            assert_eq!(u32_at(&madt, 36), 0xfee0_0000);
            assert_eq!(u32_at(&madt, 40), 1, "PCAT_COMPAT");
            assert_eq!(madt.len(), 44 + 8 * usize::from(n) + 12);

            let mut expected: Vec<_> = (0..n)
                .map(|i| Madt::Lapic {
                    uid: i,
                    apic_id: i,
                    flags: 1,
                })
                .collect();
            expected.push(Madt::IoApic {
                id: n,
                addr: 0xfec0_0000,
                gsi_base: 0,
            });
            assert_eq!(madt_entries(&madt), expected);

            // No table overlaps the next one.
            let ends = [
                (rsdp_addr.0, 36u64),
                (u64::from(u32_at(&rsdp, 16)), rsdt.len() as u64),
                (u64_at(&rsdp, 24), xsdt.len() as u64),
                (madt_addr, madt.len() as u64),
            ];
            for w in ends.windows(2) {
                assert!(w[0].0 + w[0].1 <= w[1].0, "{w:x?}");
            }
            assert!(madt_addr + madt.len() as u64 <= 0x100000);
        }
    }

    #[test]
    fn invalid_cpu_counts_are_rejected_without_writing() {
        let mem = memory();
        assert!(matches!(setup_acpi(&mem, 0), Err(AcpiError::NoCpus)));
        assert!(matches!(
            setup_acpi(&mem, 255),
            Err(AcpiError::TooManyCpus { requested: 255 })
        ));
        assert!(read(&mem, 0xe0000, 0x200).iter().all(|b| *b == 0));
    }

    #[test]
    fn memory_without_the_bios_area_reports_a_write_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0xa0000)]).unwrap();
        let err = setup_acpi(&mem, 1).unwrap_err();
        assert!(
            matches!(err, AcpiError::WriteMemory { table: "MADT", .. }),
            "{err}"
        );
    }

    #[test]
    fn rsdp_checksums_cover_the_right_ranges() {
        let r = rsdp(0x1234_5678, 0x9abc_def0_1122_3344);
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(&r), 0);
    }
}
