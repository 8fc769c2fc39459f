//! Minimal ACPI tables: RSDP, RSDT, XSDT, FADT (with its FACS and DSDT) and a MADT.
//!
//! The MADT is how Linux finds the CPUs and the I/O APIC (it prefers it to the MP table).
//! The FADT points the guest at the power-management registers of
//! [`crate::devices::acpi_pm`], and the DSDT holds `\_S5`, the sleep type for soft-off:
//! together they let Linux `poweroff` end the VM, and `reboot` use the FADT's reset
//! register. It is a full (not hardware-reduced) FADT, so Linux keeps the legacy PIC and
//! PIT it uses without ACPI. The DSDT also describes the pvpanic port
//! ([`crate::devices::pvpanic`]) as QEMU does, for Linux's `pvpanic-mmio` driver.
//!
//! The DSDT's AML comes from rust-vmm's `acpi_tables`; the tables themselves are built here
//! (the crate's RSDP has no RSDT address, which 32-bit guests walk, and its FADT builder
//! would set no more than the fields written below).

use acpi_tables::Aml;
use acpi_tables::aml::{
    Arg, Device, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, IO, Local,
    Method, Name, OpRegion, OpRegionSpace, Package, Path, ResourceTemplate, Return, Scope, Store,
};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::cpu::MAX_CPUS;
use super::layout::{ACPI_START, BIOS_END, IOAPIC_ADDR, LAPIC_ADDR};
use crate::devices::acpi_pm::{
    PM1_CNT_LEN, PM1_CNT_PORT, PM1_EVT_LEN, PM1_EVT_PORT, RESET_PORT, RESET_VALUE, S5_SLP_TYP,
};
use crate::devices::pvpanic::{PVPANIC_LEN, PVPANIC_PORT};

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
const MADT_ISO: u8 = 2;
const MADT_ISO_LEN: u8 = 10;
/// MPS INTI flags: active high (01), level triggered (11 << 2).
const MADT_ISO_HIGH_LEVEL: u16 = 0b1101;

/// FADT revision 6 (ACPI 6.x): 276 bytes. Fields past the ones set here stay zero.
const FADT_REVISION: u8 = 6;
const FADT_LEN: usize = 276;
/// The SCI's ISA IRQ, as on PC chipsets. Nothing raises it: no fixed event is ever set.
const SCI_IRQ: u16 = 9;
/// IAPC_BOOT_ARCH: an 8042 is present (the reset line; Linux may probe it).
const IAPC_8042: u16 = 1 << 1;
/// FADT flags: WBINVD works; the power and sleep buttons are not fixed-feature hardware
/// (there are none); the reset register is supported.
const FADT_WBINVD: u32 = 1 << 0;
const FADT_PWR_BUTTON: u32 = 1 << 4;
const FADT_SLP_BUTTON: u32 = 1 << 5;
const FADT_RESET_REG_SUP: u32 = 1 << 10;
/// C2/C3 latencies above 100 and 1000 microseconds mean "not supported".
const NO_C2: u16 = 101;
const NO_C3: u16 = 1001;
/// Generic address structure: system I/O space, byte access.
const GAS_SYSTEM_IO: u8 = 1;
const GAS_BYTE_ACCESS: u8 = 1;

const FACS_LEN: usize = 64;
const FACS_VERSION: u8 = 2;
/// The FACS must sit on a 64-byte boundary.
const FACS_ALIGN: u64 = 64;

/// DSDT revision 2: AML integers are 64-bit.
const DSDT_REVISION: u8 = 2;
/// Room for the DSDT's AML (about 150 bytes; a unit test keeps it under this).
const DSDT_AML_MAX: usize = 512;
/// `_STA` of the pvpanic device: present, enabled, shown in the UI, functioning.
const STA_PRESENT: u8 = 0x0f;

/// Tables start on 16-byte boundaries; the RSDP must, and the rest keep it tidy.
const TABLE_ALIGN: u64 = 16;

/// Room the tables need for `cpus` CPUs, alignment padding included.
const fn tables_len(cpus: u64) -> u64 {
    let madt = HEADER_LEN as u64 + 8 + cpus * 8 + MADT_IOAPIC_LEN as u64 + MADT_ISO_LEN as u64;
    let fixed = RSDP_LEN + HEADER_LEN + 8 + HEADER_LEN + 16 + FADT_LEN + FACS_LEN;
    fixed as u64 + HEADER_LEN as u64 + DSDT_AML_MAX as u64 + madt + 6 * FACS_ALIGN
}

// Even 254 CPUs need about 3 KiB with padding, far less than the BIOS area holds.
const _: () = assert!(ACPI_START + tables_len(MAX_CPUS as u64) <= BIOS_END);

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

/// Writes the ACPI tables for `num_cpus` CPUs starting at [`ACPI_START`] and returns the
/// RSDP address (for `boot_params.acpi_rsdp_addr` and PVH's `rsdp_paddr`).
///
/// CPU `i` gets ACPI processor id and APIC id `i`; the I/O APIC gets id `num_cpus`
/// and GSI base 0. ISA IRQ n is GSI n; the one override says the SCI is level-triggered
/// and active high.
pub fn setup_acpi(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<GuestAddress, AcpiError> {
    if num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(AcpiError::TooManyCpus {
            requested: num_cpus,
        });
    }

    // Everything lives below 1 MiB (checked at compile time), so 32-bit pointers fit.
    let rsdp_addr = ACPI_START;
    let rsdt_addr = align_up(rsdp_addr + RSDP_LEN as u64);
    let xsdt_addr = align_up(rsdt_addr + (HEADER_LEN + 2 * 4) as u64);
    let fadt_addr = align_up(xsdt_addr + (HEADER_LEN + 2 * 8) as u64);
    let facs_addr = (fadt_addr + FADT_LEN as u64).next_multiple_of(FACS_ALIGN);
    let dsdt_addr = align_up(facs_addr + FACS_LEN as u64);
    let dsdt = sdt(b"DSDT", DSDT_REVISION, &dsdt_aml());
    let madt_addr = align_up(dsdt_addr + dsdt.len() as u64);

    let madt = madt(num_cpus);
    let fadt = fadt(dsdt_addr as u32, facs_addr as u32);
    let listed = [fadt_addr, madt_addr];
    let rsdt_body: Vec<u8> = listed
        .iter()
        .flat_map(|a| (*a as u32).to_le_bytes())
        .collect();
    let xsdt_body: Vec<u8> = listed.iter().flat_map(|a| a.to_le_bytes()).collect();
    let rsdt = sdt(b"RSDT", RSDT_REVISION, &rsdt_body);
    let xsdt = sdt(b"XSDT", XSDT_REVISION, &xsdt_body);
    let rsdp = rsdp(rsdt_addr as u32, xsdt_addr);

    write(mem, "MADT", madt_addr, &madt)?;
    write(mem, "DSDT", dsdt_addr, &dsdt)?;
    write(mem, "FACS", facs_addr, &facs())?;
    write(mem, "FADT", fadt_addr, &fadt)?;
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
    body.extend_from_slice(&[MADT_ISO, MADT_ISO_LEN, 0, SCI_IRQ as u8]); // ISA bus, IRQ
    body.extend_from_slice(&u32::from(SCI_IRQ).to_le_bytes()); // GSI
    body.extend_from_slice(&MADT_ISO_HIGH_LEVEL.to_le_bytes());
    sdt(b"APIC", MADT_REVISION, &body)
}

/// The FADT: where the PM1 registers, the reset register, the FACS and the DSDT are.
/// SMI_CMD stays 0, which tells the OS the platform is always in ACPI mode.
fn fadt(dsdt_addr: u32, facs_addr: u32) -> Vec<u8> {
    let mut body = vec![0u8; FADT_LEN - HEADER_LEN];
    let mut put = |offset: usize, bytes: &[u8]| {
        body[offset - HEADER_LEN..][..bytes.len()].copy_from_slice(bytes);
    };
    put(36, &facs_addr.to_le_bytes()); // FIRMWARE_CTRL
    put(40, &dsdt_addr.to_le_bytes()); // DSDT
    put(46, &SCI_IRQ.to_le_bytes()); // SCI_INT
    put(56, &u32::from(PM1_EVT_PORT).to_le_bytes()); // PM1a_EVT_BLK
    put(64, &u32::from(PM1_CNT_PORT).to_le_bytes()); // PM1a_CNT_BLK
    put(88, &[PM1_EVT_LEN, PM1_CNT_LEN]); // PM1_EVT_LEN, PM1_CNT_LEN
    put(96, &NO_C2.to_le_bytes()); // P_LVL2_LAT
    put(98, &NO_C3.to_le_bytes()); // P_LVL3_LAT
    put(109, &IAPC_8042.to_le_bytes()); // IAPC_BOOT_ARCH
    let flags = FADT_WBINVD | FADT_PWR_BUTTON | FADT_SLP_BUTTON | FADT_RESET_REG_SUP;
    put(112, &flags.to_le_bytes());
    put(116, &[GAS_SYSTEM_IO, 8, 0, GAS_BYTE_ACCESS]); // RESET_REG
    put(120, &u64::from(RESET_PORT).to_le_bytes());
    put(128, &[RESET_VALUE]);
    put(140, &u64::from(dsdt_addr).to_le_bytes()); // X_DSDT, the same table
    sdt(b"FACP", FADT_REVISION, &body)
}

/// The DSDT's definition blocks:
///
/// ```text
/// Name (_S5, Package (2) { 5, 5 })          // SLP_TYPa, SLP_TYPb for soft-off
/// Scope (\_SB) {
///     Device (PEVT) {                        // QEMU's pvpanic-isa, as QEMU writes it
///         Name (_HID, "QEMU0001")
///         Name (_CRS, ResourceTemplate () { IO (Decode16, 0x505, 0x505, 1, 1) })
///         OperationRegion (PEOR, SystemIO, 0x505, 1)
///         Field (PEOR, ByteAcc, NoLock, Preserve) { PEPT, 8 }
///         Method (_STA) { Return (0x0F) }
///         Method (RDPT) { Store (PEPT, Local0) Return (Local0) }
///         Method (WRPT, 1) { Store (Arg0, PEPT) }
///     }
/// }
/// ```
fn dsdt_aml() -> Vec<u8> {
    let port = PVPANIC_PORT;
    let len = PVPANIC_LEN as u8;
    let pept = Path::new("PEPT");
    let mut aml = Vec::new();
    Name::new("_S5_".into(), &Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP])).to_aml_bytes(&mut aml);
    // One statement, so that the temporaries the objects borrow live until it is encoded.
    Scope::new(
        "\\_SB_".into(),
        vec![&Device::new(
            "PEVT".into(),
            vec![
                &Name::new("_HID".into(), &"QEMU0001"),
                &Name::new(
                    "_CRS".into(),
                    &ResourceTemplate::new(vec![&IO::new(port, port, 1, len)]),
                ),
                &OpRegion::new("PEOR".into(), OpRegionSpace::SystemIO, &port, &len),
                &Field::new(
                    "PEOR".into(),
                    FieldAccessType::Byte,
                    FieldLockRule::NoLock,
                    FieldUpdateRule::Preserve,
                    vec![FieldEntry::Named(*b"PEPT", 8)],
                ),
                &Method::new("_STA".into(), 0, false, vec![&Return::new(&STA_PRESENT)]),
                &Method::new(
                    "RDPT".into(),
                    0,
                    false,
                    vec![&Store::new(&Local(0), &pept), &Return::new(&Local(0))],
                ),
                &Method::new("WRPT".into(), 1, false, vec![&Store::new(&pept, &Arg(0))]),
            ],
        )],
    )
    .to_aml_bytes(&mut aml);
    aml
}

/// The FACS: no waking vector and an unowned global lock. It has no checksum.
fn facs() -> [u8; FACS_LEN] {
    let mut f = [0u8; FACS_LEN];
    f[0..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&(FACS_LEN as u32).to_le_bytes());
    f[32] = FACS_VERSION;
    f
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
        Override { irq: u8, gsi: u32, flags: u16 },
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
                (2, 10) => {
                    assert_eq!(e[2], 0, "ISA bus");
                    Madt::Override {
                        irq: e[3],
                        gsi: u32_at(e, 4),
                        flags: u16::from_le_bytes([e[8], e[9]]),
                    }
                }
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

    /// The tables a guest finds by following the RSDP, by signature, checked for
    /// checksums and for the RSDT and XSDT agreeing.
    fn tables_from_rsdp(mem: &GuestMemoryMmap, rsdp_addr: u64) -> Vec<(u64, Vec<u8>)> {
        let rsdp = read(mem, rsdp_addr, 36);
        assert_eq!(rsdp[15], 2, "RSDP revision");
        assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
        assert_eq!(sum(&rsdp), 0, "extended checksum");
        let (xsdt_addr, rsdt_addr) = (u64_at(&rsdp, 24), u64::from(u32_at(&rsdp, 16)));
        let xsdt = table(mem, xsdt_addr, b"XSDT");
        let rsdt = table(mem, rsdt_addr, b"RSDT");
        let from_xsdt: Vec<u64> = xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
        let from_rsdt: Vec<u64> = rsdt[36..].chunks(4).map(|c| u32_at(c, 0).into()).collect();
        assert_eq!(from_xsdt, from_rsdt);
        let mut found = vec![(rsdp_addr, rsdp), (xsdt_addr, xsdt), (rsdt_addr, rsdt)];
        for addr in from_xsdt {
            let sig: [u8; 4] = read(mem, addr, 4).try_into().unwrap();
            found.push((addr, table(mem, addr, &sig)));
        }
        found
    }

    fn by_sig<'a>(tables: &'a [(u64, Vec<u8>)], sig: &[u8; 4]) -> (u64, &'a [u8]) {
        let (addr, t) = tables
            .iter()
            .find(|(_, t)| &t[0..4] == sig)
            .unwrap_or_else(|| panic!("no {} table", String::from_utf8_lossy(sig)));
        (*addr, t)
    }

    #[test]
    fn tables_are_discoverable_and_consistent() {
        for n in [1u8, 2, 8, 254] {
            let mem = memory();
            let rsdp_addr = setup_acpi(&mem, n).unwrap();
            assert_eq!(find_rsdp(&mem), rsdp_addr.0);
            let mut tables = tables_from_rsdp(&mem, rsdp_addr.0);
            let sigs: Vec<&[u8]> = tables[3..].iter().map(|(_, t)| &t[0..4]).collect();
            assert_eq!(sigs, [b"FACP", b"APIC"], "tables the XSDT lists");

            let (_, madt) = by_sig(&tables, b"APIC");
            assert_eq!(madt[8], 3, "MADT revision");
            assert_eq!(u32_at(madt, 36), 0xfee0_0000);
            assert_eq!(u32_at(madt, 40), 1, "PCAT_COMPAT");
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
            expected.push(Madt::Override {
                irq: 9,
                gsi: 9,
                flags: 0b1101,
            });
            assert_eq!(madt_entries(madt), expected);

            // The FACS and the DSDT hang off the FADT.
            let (_, fadt) = by_sig(&tables, b"FACP");
            let facs_addr = u64::from(u32_at(fadt, 36));
            assert_eq!(facs_addr % 64, 0, "FACS alignment");
            let facs = read(&mem, facs_addr, 64);
            assert_eq!(&facs[0..4], b"FACS");
            assert_eq!(u32_at(&facs, 4), 64);
            let dsdt_addr = u64::from(u32_at(fadt, 40));
            assert_eq!(u64_at(fadt, 140), dsdt_addr, "X_DSDT matches DSDT");
            tables.push((facs_addr, facs));
            tables.push((dsdt_addr, table(&mem, dsdt_addr, b"DSDT")));

            // No table overlaps another, and all stay in the BIOS area.
            tables.sort_by_key(|(addr, _)| *addr);
            for w in tables.windows(2) {
                assert!(
                    w[0].0 + w[0].1.len() as u64 <= w[1].0,
                    "{:x} overlaps {:x}",
                    w[0].0,
                    w[1].0
                );
            }
            let (last, t) = tables.last().unwrap();
            assert!(last + t.len() as u64 <= 0x100000);
        }
    }

    #[test]
    fn fadt_points_at_the_power_management_registers() {
        let mem = memory();
        let rsdp = setup_acpi(&mem, 1).unwrap();
        let tables = tables_from_rsdp(&mem, rsdp.0);
        let (_, fadt) = by_sig(&tables, b"FACP");
        assert_eq!((fadt[8], fadt.len()), (6, 276), "FADT revision and length");
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9, "SCI_INT");
        assert_eq!(u32_at(fadt, 48), 0, "no SMI_CMD: always in ACPI mode");
        assert_eq!(u32_at(fadt, 56), u32::from(PM1_EVT_PORT));
        assert_eq!(u32_at(fadt, 64), u32::from(PM1_CNT_PORT));
        assert_eq!(
            (fadt[88], fadt[89]),
            (4, 2),
            "PM1 event and control lengths"
        );
        assert_eq!(u32_at(fadt, 76), 0, "no PM timer");
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(flags & (1 << 20), 0, "not hardware-reduced");
        // RESET_REG: system I/O, 8 bits at the reset port, then the value.
        assert_eq!(&fadt[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(fadt, 120), u64::from(RESET_PORT));
        assert_eq!(fadt[128], RESET_VALUE);
    }

    /// An AML PkgLength at `b[0]`: (the length it encodes, the bytes it takes itself).
    fn pkg_length(b: &[u8]) -> (usize, usize) {
        let follow = usize::from(b[0] >> 6);
        if follow == 0 {
            return (usize::from(b[0] & 0x3f), 1);
        }
        let mut len = usize::from(b[0] & 0x0f);
        for i in 0..follow {
            len |= usize::from(b[1 + i]) << (4 + 8 * i);
        }
        (len, 1 + follow)
    }

    /// A term that opens with `op` and a PkgLength, then `name`: its body after the name,
    /// and what follows the whole term.
    fn package_term<'a>(aml: &'a [u8], op: &[u8], name: &[u8]) -> (&'a [u8], &'a [u8]) {
        assert_eq!(
            &aml[..op.len()],
            op,
            "opcode before {:?}",
            name.escape_ascii()
        );
        let at = op.len();
        let (len, len_bytes) = pkg_length(&aml[at..]);
        let term = &aml[at..at + len];
        assert_eq!(
            &term[len_bytes..len_bytes + name.len()],
            name,
            "{:?}",
            name.escape_ascii()
        );
        (&term[len_bytes + name.len()..], &aml[at + len..])
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn dsdt_body(mem: &GuestMemoryMmap) -> Vec<u8> {
        let rsdp = setup_acpi(mem, 1).unwrap();
        let tables = tables_from_rsdp(mem, rsdp.0);
        let (_, fadt) = by_sig(&tables, b"FACP");
        let dsdt = table(mem, u64::from(u32_at(fadt, 40)), b"DSDT");
        assert_eq!(dsdt[8], 2, "DSDT revision: 64-bit integers");
        dsdt[36..].to_vec()
    }

    /// What ACPICA does to find the sleep type for S5: look up `_S5_` in the DSDT and take
    /// the first element of its package.
    #[test]
    fn dsdt_names_the_s5_sleep_type_the_pm_device_acts_on() {
        let mem = memory();
        let aml = dsdt_body(&mem);
        assert_eq!(&aml[..5], b"\x08_S5_", "NameOp _S5_ at the root");
        let (elements, rest) = package_term(&aml[5..], &[0x12], b"");
        assert_eq!(elements[0], 2, "NumElements");
        assert_eq!(&elements[1..], &[0x0a, S5_SLP_TYP, 0x0a, S5_SLP_TYP]);
        assert_eq!(rest[0], 0x10, "the _SB scope follows");
    }

    /// QEMU's pvpanic-isa device: `\_SB.PEVT`, _HID QEMU0001, one I/O port at 0x505,
    /// present (_STA 0x0F). The scope is the rest of the table.
    #[test]
    fn dsdt_describes_pvpanic_as_qemu_does() {
        let mem = memory();
        let aml = dsdt_body(&mem);
        let scope_at = aml.iter().position(|b| *b == 0x10).unwrap();
        let (scope, rest) = package_term(&aml[scope_at..], &[0x10], b"\\_SB_");
        assert!(rest.is_empty(), "the scope ends the table");
        let (device, rest) = package_term(scope, &[0x5b, 0x82], b"PEVT");
        assert!(rest.is_empty(), "PEVT is the scope's only object");

        assert!(contains(device, b"\x08_HID\x0dQEMU0001\x00"), "_HID string");
        // _CRS: a buffer holding IO (Decode16, 0x505, 0x505, 1, 1) and the end tag.
        let io = [0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01, 0x79, 0x00];
        let crs_at = device.windows(5).position(|w| w == b"\x08_CRS").unwrap();
        let (buffer, _) = package_term(&device[crs_at + 5..], &[0x11], b"");
        assert_eq!(buffer[0], 0x0a, "BytePrefix buffer size");
        assert_eq!(usize::from(buffer[1]), io.len());
        assert_eq!(&buffer[2..], &io, "the IO descriptor and end tag");
        // Method (_STA, 0) { Return (0x0F) }
        let sta_at = device.windows(4).position(|w| w == b"_STA").unwrap() - 2;
        let (body, _) = package_term(&device[sta_at..], &[0x14], b"_STA");
        assert_eq!(
            body,
            &[0x00, 0xa4, 0x0a, 0x0f],
            "no arguments, Return (0x0F)"
        );
        // OperationRegion (PEOR, SystemIO, 0x505, 1)
        assert!(contains(device, b"\x5b\x80PEOR\x01\x0b\x05\x05\x01"));
    }

    #[test]
    fn dsdt_aml_fits_the_room_reserved_for_it() {
        assert!(
            dsdt_aml().len() <= DSDT_AML_MAX,
            "{} bytes",
            dsdt_aml().len()
        );
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
