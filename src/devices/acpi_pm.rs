//! ACPI power management registers: how a guest powers off or resets through ACPI.
//!
//! Linux `poweroff` enters sleep state S5 by writing SLP_TYP (from the DSDT's `\_S5`) and
//! SLP_EN to the PM1 control register; Linux `reboot` first writes the FADT's reset value
//! to its reset register. Both end the VM. The PM1 event registers hold what the guest
//! writes (ACPICA checks that enable bits stick) and never report an event: nothing here
//! raises the SCI.

use vm_superio::Trigger;

use super::PioDevice;

/// The register block: PM1a event (status, enable), PM1a control, then the reset register.
pub const PM_BASE: u16 = 0x600;
pub const PM_LEN: u16 = 8;
/// PM1a_EVT_BLK: a 16-bit status register followed by a 16-bit enable register.
pub const PM1_EVT_PORT: u16 = PM_BASE;
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a_CNT_BLK: one 16-bit control register.
pub const PM1_CNT_PORT: u16 = PM_BASE + 4;
pub const PM1_CNT_LEN: u8 = 2;
/// The FADT's RESET_REG (8 bits) and the value that resets.
pub const RESET_PORT: u16 = PM_BASE + 6;
pub const RESET_VALUE: u8 = 1;
/// The SLP_TYP value that `\_S5` names: writing it with SLP_EN powers the VM off.
pub const S5_SLP_TYP: u8 = 5;

const STATUS: usize = 0;
const ENABLE: usize = 2;
const CONTROL: usize = 4;
const RESET: u16 = RESET_PORT - PM_BASE;

/// Always set: there is no legacy mode to switch from (the FADT has no SMI_CMD).
const SCI_EN: u16 = 1 << 0;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0b111 << SLP_TYP_SHIFT;
/// Write-only: it starts the sleep transition and always reads as 0.
const SLP_EN: u16 = 1 << 13;

pub struct AcpiPm<T: Trigger> {
    /// Status, enable and control, little-endian, so byte and word accesses agree.
    regs: [u8; 6],
    power_off: T,
    reset: T,
}

impl<T: Trigger> AcpiPm<T> {
    pub fn new(power_off: T, reset: T) -> Self {
        let mut regs = [0; 6];
        regs[CONTROL..].copy_from_slice(&SCI_EN.to_le_bytes());
        AcpiPm {
            regs,
            power_off,
            reset,
        }
    }

    fn control(&self) -> u16 {
        u16::from_le_bytes([self.regs[CONTROL], self.regs[CONTROL + 1]])
    }

    fn set_control(&mut self, value: u16) {
        self.regs[CONTROL..].copy_from_slice(&value.to_le_bytes());
    }

    /// Acts on SLP_EN after a write to the control register has landed.
    fn sleep_if_asked(&mut self) {
        let control = self.control();
        if control & SLP_EN == 0 {
            return;
        }
        self.set_control(control & !SLP_EN);
        let slp_typ = (control & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
        if slp_typ == u16::from(S5_SLP_TYP) {
            fire(&self.power_off, "power-off");
        } else {
            // Only \_S5 is in the DSDT, so a guest that asks for another state ignored it. At
            // debug: the guest can write this as often as it likes.
            log::debug!(
                "ACPI: the guest asked for sleep type {slp_typ}; only S5 (power-off) exists"
            );
        }
    }
}

fn fire<T: Trigger>(trigger: &T, what: &str) {
    log::debug!("ACPI: the guest asked for {what}");
    if trigger.trigger().is_err() {
        log::error!("ACPI: could not deliver the guest's {what} request");
    }
}

impl<T: Trigger + Send> PioDevice for AcpiPm<T> {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::from(offset) + i;
            *byte = match at {
                STATUS..CONTROL => self.regs[at],
                CONTROL.. if at < self.regs.len() => self.regs[at],
                _ => 0,
            };
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if offset == RESET {
            match data.first() {
                Some(&RESET_VALUE) => fire(&self.reset, "reset"),
                Some(other) => log::debug!(
                    "ACPI: reset register written with {other:#x}, not {RESET_VALUE:#x}"
                ),
                None => {}
            }
            return;
        }
        let mut control_written = false;
        for (i, &byte) in data.iter().enumerate() {
            let at = usize::from(offset) + i;
            match at {
                // Status bits are write-1-to-clear, and none is ever set.
                STATUS..ENABLE => {}
                ENABLE..CONTROL => self.regs[at] = byte,
                CONTROL.. if at < self.regs.len() => {
                    self.regs[at] = byte;
                    control_written = true;
                }
                _ => {}
            }
        }
        if control_written {
            self.set_control(self.control() | SCI_EN);
            self.sleep_if_asked();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Counts how often it fired.
    #[derive(Clone, Default)]
    struct Count(Arc<AtomicU32>);

    impl Count {
        fn get(&self) -> u32 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Trigger for Count {
        type E = std::io::Error;
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn pm() -> (AcpiPm<Count>, Count, Count) {
        let (off, reset) = (Count::default(), Count::default());
        (AcpiPm::new(off.clone(), reset.clone()), off, reset)
    }

    fn read16(pm: &mut AcpiPm<Count>, port: u16) -> u16 {
        let mut b = [0u8; 2];
        pm.read(port - PM_BASE, &mut b);
        u16::from_le_bytes(b)
    }

    fn write16(pm: &mut AcpiPm<Count>, port: u16, value: u16) {
        pm.write(port - PM_BASE, &value.to_le_bytes());
    }

    const S5: u16 = (S5_SLP_TYP as u16) << SLP_TYP_SHIFT;

    #[test]
    fn linux_s5_sequence_powers_off_once_at_slp_en() {
        let (mut pm, off, reset) = pm();
        // ACPICA's legacy sleep: read control, write SLP_TYP, then SLP_TYP | SLP_EN.
        let control = read16(&mut pm, PM1_CNT_PORT);
        assert_eq!(control & SCI_EN, SCI_EN, "always in ACPI mode");
        write16(&mut pm, PM1_CNT_PORT, control | S5);
        assert_eq!(off.get(), 0, "SLP_TYP alone does nothing");
        write16(&mut pm, PM1_CNT_PORT, control | S5 | SLP_EN);
        assert_eq!((off.get(), reset.get()), (1, 0));
        assert_eq!(
            read16(&mut pm, PM1_CNT_PORT) & SLP_EN,
            0,
            "SLP_EN reads as 0"
        );
    }

    #[test]
    fn byte_writes_to_the_high_control_byte_also_power_off() {
        let (mut pm, off, _) = pm();
        pm.write(PM1_CNT_PORT - PM_BASE + 1, &[((S5 | SLP_EN) >> 8) as u8]);
        assert_eq!(off.get(), 1);
    }

    #[test]
    fn other_sleep_types_are_ignored() {
        let (mut pm, off, reset) = pm();
        for typ in (0..8).filter(|t| *t != u16::from(S5_SLP_TYP)) {
            write16(&mut pm, PM1_CNT_PORT, (typ << SLP_TYP_SHIFT) | SLP_EN);
        }
        assert_eq!((off.get(), reset.get()), (0, 0));
    }

    #[test]
    fn enable_bits_stick_and_status_reads_clear() {
        let (mut pm, ..) = pm();
        // ACPICA enables the global lock event and reads the bit back.
        write16(&mut pm, PM1_EVT_PORT + 2, 1 << 5);
        assert_eq!(read16(&mut pm, PM1_EVT_PORT + 2), 1 << 5);
        write16(&mut pm, PM1_EVT_PORT, 0xffff);
        assert_eq!(read16(&mut pm, PM1_EVT_PORT), 0);
        let mut all = [0xaa; 4];
        pm.read(0, &mut all);
        assert_eq!(all, [0, 0, 1 << 5, 0]);
    }

    #[test]
    fn reset_register_resets_only_with_the_reset_value() {
        let (mut pm, off, reset) = pm();
        pm.write(RESET_PORT - PM_BASE, &[RESET_VALUE + 1]);
        assert_eq!(reset.get(), 0);
        pm.write(RESET_PORT - PM_BASE, &[RESET_VALUE]);
        assert_eq!((off.get(), reset.get()), (0, 1));
        let mut b = [0xff];
        pm.read(RESET_PORT - PM_BASE, &mut b);
        assert_eq!(b, [0]);
    }
}
