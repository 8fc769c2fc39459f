//! Emulated devices and the port-I/O bus that routes guest `in`/`out` to them.

pub mod acpi_pm;
pub mod i8042;
pub mod pvpanic;
pub mod serial;

use std::sync::{Arc, Mutex};

/// A device on the port-I/O bus. `offset` is relative to the device's base port.
pub trait PioDevice: Send {
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]);
}

struct PioRange {
    base: u16,
    len: u16,
    device: SharedPioDevice,
}

/// A device shared between vCPU threads.
pub type SharedPioDevice = Arc<Mutex<dyn PioDevice>>;

/// Ports mapped to devices, so the vCPU loop never names a port number.
#[derive(Default, Clone)]
pub struct PioBus {
    ranges: Arc<Vec<PioRange>>,
}

/// Returned by bus accesses that no device claims; the caller logs them at debug level.
#[derive(Debug, PartialEq, Eq)]
pub struct Unclaimed;

impl PioBus {
    /// Builds the bus from (base, length, device) triples. Ranges must not overlap.
    pub fn new(devices: Vec<(u16, u16, SharedPioDevice)>) -> Self {
        let mut ranges: Vec<PioRange> = devices
            .into_iter()
            .map(|(base, len, device)| PioRange { base, len, device })
            .collect();
        ranges.sort_by_key(|r| r.base);
        PioBus {
            ranges: Arc::new(ranges),
        }
    }

    fn find(&self, port: u16) -> Option<(&PioRange, u16)> {
        let idx = self
            .ranges
            .partition_point(|r| r.base <= port)
            .checked_sub(1)?;
        let r = &self.ranges[idx];
        let offset = port - r.base;
        (offset < r.len).then_some((r, offset))
    }

    /// An `in`: absent ports read as all ones, as on a real ISA bus.
    pub fn read(&self, port: u16, data: &mut [u8]) -> Result<(), Unclaimed> {
        match self.find(port) {
            Some((r, offset)) => {
                lock(&r.device).read(offset, data);
                Ok(())
            }
            None => {
                data.fill(0xff);
                Err(Unclaimed)
            }
        }
    }

    /// An `out`: writes to absent ports are dropped.
    pub fn write(&self, port: u16, data: &[u8]) -> Result<(), Unclaimed> {
        let (r, offset) = self.find(port).ok_or(Unclaimed)?;
        lock(&r.device).write(offset, data);
        Ok(())
    }
}

/// Locks a device even if another thread panicked while holding it: device state stays
/// usable, and losing the console because of an unrelated panic would hide the cause.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u16, Vec<u8>)>,
    }

    impl PioDevice for Recorder {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let b = Arc::new(Mutex::new(Recorder::default()));
        let bus = PioBus::new(vec![(0x3f8, 8, a.clone()), (0x60, 5, b.clone())]);
        let mut d = [0u8; 1];
        bus.read(0x3fd, &mut d).unwrap();
        assert_eq!(d, [5]);
        bus.write(0x64, &[0xfe]).unwrap();
        assert_eq!(b.lock().unwrap().writes, vec![(4, vec![0xfe])]);
        assert!(a.lock().unwrap().writes.is_empty());
    }

    #[test]
    fn unclaimed_ports_read_all_ones() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let bus = PioBus::new(vec![(0x3f8, 8, a)]);
        let mut d = [0u8; 4];
        assert_eq!(bus.read(0x400, &mut d), Err(Unclaimed));
        assert_eq!(d, [0xff; 4]);
        assert_eq!(bus.read(0x3f7, &mut d[..1]), Err(Unclaimed));
        assert_eq!(bus.write(0x0, &[1]), Err(Unclaimed));
    }
}
