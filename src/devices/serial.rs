//! COM1: a 16550 UART (vm-superio) whose output goes to minivmm's stdout and whose input comes
//! from stdin, raising IRQ 4 through an irqfd.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use vm_superio::{Serial as Uart, Trigger, serial::NoEvents};
use vmm_sys_util::eventfd::EventFd;

use super::{PioDevice, lock};

pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_LEN: u16 = 8;
pub const COM1_IRQ: u32 = 4;

/// Raises the UART's interrupt line by signalling an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

pub type SerialOut = Box<dyn Write + Send>;

pub struct Serial {
    uart: Uart<IrqTrigger, NoEvents, SerialOut>,
}

impl Serial {
    pub fn new(irq: IrqTrigger, out: SerialOut) -> Self {
        Serial {
            uart: Uart::new(irq, out),
        }
    }

    /// Queues input bytes for the guest; returns how many fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity();
        let n = bytes.len().min(room);
        if n == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..n]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial input dropped: {e:?}");
                n
            }
        }
    }
}

impl PioDevice for Serial {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = self.uart.read(offset as u8);
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let Some(&value) = data.first() {
            // A closed stdout must not stop the guest; the output is simply lost.
            if let Err(e) = self.uart.write(offset as u8, value) {
                log::debug!("serial write: {e:?}");
            }
        }
    }
}

/// Ctrl-A, as in QEMU: Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A.
const ESCAPE: u8 = 0x01;

/// Strips the Ctrl-A escape sequences out of console input.
struct EscapeFilter {
    enabled: bool,
    pending: bool,
}

impl EscapeFilter {
    /// The bytes for the guest, and whether the quit sequence was typed (input after it is
    /// dropped).
    fn filter(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        if !self.enabled {
            return (input.to_vec(), false);
        }
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.pending {
                self.pending = false;
                if b == b'x' || b == b'X' {
                    return (out, true);
                }
                out.push(b);
            } else if b == ESCAPE {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

/// What the input thread saw that the VMM must act on.
pub enum InputEvent {
    /// The user typed the quit sequence on a terminal.
    Quit,
}

/// Copies `input` into the UART's receive FIFO until EOF, waiting while the FIFO is full.
/// With `escapes` (stdin is a terminal), Ctrl-A x asks to quit.
pub fn spawn_input_thread(
    serial: Arc<Mutex<Serial>>,
    mut input: Box<dyn Read + Send>,
    escapes: bool,
    on_event: impl Fn(InputEvent) + Send + 'static,
) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("serial-in".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            let mut escapes = EscapeFilter {
                enabled: escapes,
                pending: false,
            };
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::debug!("serial input ended: {e}");
                        return;
                    }
                };
                let (bytes, quit) = escapes.filter(&buf[..n]);
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let taken = lock(&serial).enqueue_input(rest);
                    rest = &rest[taken..];
                    if !rest.is_empty() {
                        // The guest has not drained the FIFO yet; typing speed makes this rare.
                        thread::sleep(Duration::from_millis(2));
                    }
                }
                if quit {
                    on_event(InputEvent::Quit);
                    return;
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const LSR: u16 = 5;
    const LSR_DATA_READY: u8 = 1;

    #[test]
    fn output_reaches_the_writer() {
        let out = Captured::default();
        let mut s = Serial::new(IrqTrigger(EventFd::new(0).unwrap()), Box::new(out.clone()));
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn input_thread_feeds_the_fifo_and_handles_escape() {
        let serial = Arc::new(Mutex::new(Serial::new(
            IrqTrigger(EventFd::new(0).unwrap()),
            Box::new(io::sink()),
        )));
        let quit = Arc::new(Mutex::new(false));
        let q = quit.clone();
        let input: Box<dyn Read + Send> =
            Box::new(io::Cursor::new(b"ab\x01\x01c\x01x ignored".to_vec()));
        spawn_input_thread(serial.clone(), input, true, move |_| {
            *q.lock().unwrap() = true
        })
        .unwrap()
        .join()
        .unwrap();
        assert!(*quit.lock().unwrap());
        let mut got = Vec::new();
        let mut s = serial.lock().unwrap();
        let mut d = [0u8];
        loop {
            s.read(LSR, &mut d);
            if d[0] & LSR_DATA_READY == 0 {
                break;
            }
            s.read(0, &mut d);
            got.push(d[0]);
        }
        assert_eq!(got, b"ab\x01c");
    }
}
