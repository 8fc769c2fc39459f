//! The keyboard controller, for its one job in a VM: the CPU reset line (`outb 0xfe, 0x64`),
//! which is how Linux (`reboot=k`) and the test guests ask to end the VM.

use vm_superio::{I8042Device, Trigger};

use super::PioDevice;

/// The i8042's ports: data at 0x60, command/status at 0x64.
pub const I8042_BASE: u16 = 0x60;
pub const I8042_LEN: u16 = 5;

pub struct I8042<T: Trigger> {
    inner: I8042Device<T>,
}

impl<T: Trigger> I8042<T> {
    /// `reset` fires when the guest pulses the reset line.
    pub fn new(reset: T) -> Self {
        I8042 {
            inner: I8042Device::new(reset),
        }
    }
}

impl<T: Trigger + Send> PioDevice for I8042<T> {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = self.inner.read(offset as u8);
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let Some(&value) = data.first()
            && self.inner.write(offset as u8, value).is_err()
        {
            log::error!("i8042: could not deliver the guest's reset request");
        }
    }
}
