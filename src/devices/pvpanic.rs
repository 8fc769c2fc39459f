//! pvpanic, as QEMU defines it (docs/specs/pvpanic.rst): one byte at ISA port 0x505 through
//! which a guest kernel says it panicked, so that a CI run ends at once with a status that
//! says so instead of hanging.
//!
//! Reading the port gives the events minivmm understands; the guest writes one of them.
//! Linux's `pvpanic-mmio` driver (ACPI id `QEMU0001`, described in the DSDT) writes
//! PANICKED from its panic notifier, or CRASH_LOADED instead when a crash kernel is loaded
//! (the guest goes on to kdump, so the VM must keep running), and SHUTDOWN on power-off.

use vm_superio::Trigger;

use super::PioDevice;

/// The ISA port QEMU uses, and the length of the register.
pub const PVPANIC_PORT: u16 = 0x505;
pub const PVPANIC_LEN: u16 = 1;

/// The guest panicked: the VM ends (exit status 7).
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// The guest panicked with a crash kernel loaded and will kdump: logged, the guest runs on.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// The guest is shutting down: logged (the power-off itself ends the VM).
pub const PVPANIC_SHUTDOWN: u8 = 1 << 2;
/// What a read of the port answers: every event above is understood.
pub const PVPANIC_SUPPORTED: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN;

pub struct PvPanic<T: Trigger> {
    panicked: T,
}

impl<T: Trigger> PvPanic<T> {
    /// `panicked` fires when the guest reports a panic.
    pub fn new(panicked: T) -> Self {
        PvPanic { panicked }
    }

    fn event(&mut self, value: u8) {
        // Each bit is its own event, as in QEMU; a guest may set several at once.
        if value & PVPANIC_CRASH_LOADED != 0 {
            log::warn!(
                "pvpanic: the guest panicked with a crash kernel loaded; it runs on (kdump)"
            );
        }
        if value & PVPANIC_SHUTDOWN != 0 {
            log::info!("pvpanic: the guest says it is shutting down");
        }
        if value & !PVPANIC_SUPPORTED != 0 {
            log::debug!("pvpanic: unknown event bits {value:#04x} ignored");
        }
        if value & PVPANIC_PANICKED != 0 {
            log::debug!("pvpanic: the guest panicked");
            if self.panicked.trigger().is_err() {
                log::error!("pvpanic: could not deliver the guest's panic");
            }
        }
    }
}

impl<T: Trigger + Send> PioDevice for PvPanic<T> {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let (0, Some(first)) = (offset, data.first_mut()) {
            *first = PVPANIC_SUPPORTED;
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        // Only the register's own byte counts, whatever the access width.
        if let (0, Some(&value)) = (offset, data.first()) {
            self.event(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

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

    fn device() -> (PvPanic<Count>, Count) {
        let count = Count::default();
        (PvPanic::new(count.clone()), count)
    }

    #[test]
    fn reads_give_the_supported_events() {
        let (mut dev, _) = device();
        let mut b = [0xff];
        dev.read(0, &mut b);
        assert_eq!(b, [0b111]);
        // A wider read: the register, then nothing.
        let mut w = [0xff; 2];
        dev.read(0, &mut w);
        assert_eq!(w, [0b111, 0]);
    }

    #[test]
    fn only_panicked_fires() {
        let (mut dev, panicked) = device();
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        dev.write(0, &[PVPANIC_SHUTDOWN]);
        dev.write(0, &[0]);
        dev.write(0, &[0xf8]);
        assert_eq!(
            panicked.get(),
            0,
            "crash-loaded, shutdown and unknown bits run on"
        );
        dev.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(panicked.get(), 1);
        dev.write(0, &[PVPANIC_PANICKED | PVPANIC_CRASH_LOADED]);
        assert_eq!(panicked.get(), 2, "panicked counts whatever comes with it");
    }

    #[test]
    fn the_low_byte_of_a_wide_write_is_the_event() {
        let (mut dev, panicked) = device();
        dev.write(0, &[PVPANIC_SHUTDOWN, PVPANIC_PANICKED]);
        assert_eq!(panicked.get(), 0);
        dev.write(0, &[PVPANIC_PANICKED, 0]);
        assert_eq!(panicked.get(), 1);
        dev.write(0, &[]);
        assert_eq!(panicked.get(), 1);
    }
}
