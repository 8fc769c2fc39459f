//! COM1: a 16550 UART (vm-superio) whose output goes to minivmm's stdout and whose input comes
//! from stdin, raising IRQ 4 through an irqfd.

use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex};
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

/// Output a writer thread has not written yet; beyond this the guest waits, as it would for a
/// slow UART, instead of minivmm buffering without bound.
const CONSOLE_BUFFER_MAX: usize = 1 << 20;
/// How long the writer lets output gather after each write(2).
const CONSOLE_BATCH_WINDOW: Duration = Duration::from_millis(1);

#[derive(Default)]
struct ConsoleState {
    data: Vec<u8>,
    closed: bool,
    /// The writer sleeps on `filled`: only then does new output need a wake-up call.
    writer_waiting: bool,
    /// A vCPU waits on `drained` for room in the buffer.
    guest_waiting: bool,
}

#[derive(Default)]
struct ConsoleShared {
    state: Mutex<ConsoleState>,
    filled: Condvar,
    drained: Condvar,
}

/// The UART's side of the console: appending is cheap, and a thread of its own does the
/// write(2)s, each taking everything that accumulated since the previous one. One system call
/// per byte would otherwise cost more than the guest's exit for that byte.
#[derive(Clone)]
pub struct ConsoleWriter {
    shared: Arc<ConsoleShared>,
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut st = lock(&self.shared.state);
        while st.data.len() >= CONSOLE_BUFFER_MAX && !st.closed {
            st.guest_waiting = true;
            st = self
                .shared
                .drained
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        if st.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "console closed"));
        }
        st.data.extend_from_slice(buf);
        if st.writer_waiting {
            st.writer_waiting = false;
            self.shared.filled.notify_one();
        }
        Ok(buf.len())
    }

    /// Nothing to do: the writer thread sends data as soon as it can.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The thread that writes console output to minivmm's stdout.
pub struct ConsoleThread {
    shared: Arc<ConsoleShared>,
    handle: Option<thread::JoinHandle<()>>,
}

impl ConsoleThread {
    pub fn spawn(out: Box<dyn Write + Send>) -> io::Result<(ConsoleWriter, ConsoleThread)> {
        let shared = Arc::new(ConsoleShared::default());
        let s = shared.clone();
        let handle = thread::Builder::new()
            .name("console-out".into())
            .spawn(move || write_console(&s, out))?;
        Ok((
            ConsoleWriter {
                shared: shared.clone(),
            },
            ConsoleThread {
                shared,
                handle: Some(handle),
            },
        ))
    }

    /// Writes out everything the guest printed, then stops the thread.
    pub fn finish(mut self) {
        self.close();
    }

    fn close(&mut self) {
        {
            let mut st = lock(&self.shared.state);
            st.closed = true;
            self.shared.filled.notify_all();
            self.shared.drained.notify_all();
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ConsoleThread {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_console(s: &ConsoleShared, mut out: Box<dyn Write + Send>) {
    loop {
        let data = {
            let mut st = lock(&s.state);
            while st.data.is_empty() && !st.closed {
                st.writer_waiting = true;
                st = s.filled.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.writer_waiting = false;
            if st.data.is_empty() {
                return;
            }
            if st.guest_waiting {
                st.guest_waiting = false;
                s.drained.notify_all();
            }
            std::mem::take(&mut st.data)
        };
        // A closed stdout must not stop the guest; its output is then lost.
        if out.write_all(&data).and_then(|_| out.flush()).is_err() {
            log::debug!("console output lost: stdout is closed");
        }
        thread::sleep(CONSOLE_BATCH_WINDOW);
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
    fn console_thread_writes_everything_in_order_before_finishing() {
        let out = Captured::default();
        let (mut w, t) = ConsoleThread::spawn(Box::new(out.clone())).unwrap();
        let mut expected = Vec::new();
        for i in 0..20_000u32 {
            let b = [(i % 251) as u8];
            w.write_all(&b).unwrap();
            expected.push(b[0]);
        }
        t.finish();
        assert_eq!(*out.0.lock().unwrap(), expected);
        assert!(
            w.write_all(b"late").is_err(),
            "a finished console takes no more output"
        );
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
