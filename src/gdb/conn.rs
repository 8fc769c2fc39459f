//! The GDB connection: a TCP stream with buffering both ways. gdbstub reads one byte and
//! writes a few bytes at a time; unbuffered, that is a system call per byte (a 16 MiB memory
//! dump took tens of thousands of sends). Here a reply goes out in one send when gdbstub
//! flushes it, and reads take whatever the socket has, up to a buffer.
//!
//! [`MemConn`] is the same protocol over bytes in memory, for fuzzing the whole session.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use gdbstub::conn::{Connection, ConnectionExt};
use vmm_sys_util::eventfd::EventFd;

/// A connection the session loop can run on: gdbstub's byte I/O plus the wait for "GDB sent
/// something or a vCPU stopped".
pub trait SessionConn: ConnectionExt<Error = io::Error> {
    /// Blocks until the connection has input (or hit its end) or `wake` fires; says which.
    fn wait(&mut self, wake: &EventFd) -> io::Result<(bool, bool)>;
}

const READ_BUFFER: usize = 64 * 1024;

/// How long the GDB thread keeps checking for input before it goes to sleep, when input is
/// due soon: GDB's next packet follows our reply within tens of microseconds, and on a
/// virtualised host being woken from sleep costs about as much again. At most this much CPU
/// is spent per packet, and only while GDB is talking.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(150);

/// How long a packet may stall halfway (after its `$`, before its checksum) before the
/// connection is dropped. GDB sends a packet in one piece, so a sender that stops mid-packet
/// is gone or hostile, and only one client is served at a time: it would lock out the next
/// one. Quiet between packets is fine (GDB may sit at a stop for hours).
const STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a reply may wait for GDB to read: a client that asks and stops reading would
/// otherwise hold the stub (and a stopped VM) forever. It counts while no byte gets out.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the input is in RSP framing, as gdbstub reads it: between packets, or in one (its
/// body, or the checksum digits after `#`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Framing {
    #[default]
    Between,
    Body,
    Checksum1,
    Checksum2,
}

impl Framing {
    pub(super) fn next(self, b: u8) -> Framing {
        match (self, b) {
            (Framing::Between, b'$') => Framing::Body,
            (Framing::Body, b'#') => Framing::Checksum1,
            (Framing::Body, _) => Framing::Body,
            (Framing::Checksum1, _) => Framing::Checksum2,
            (Framing::Between | Framing::Checksum2, _) => Framing::Between,
        }
    }
}

/// Polls `ready` until it has something or `SPIN_BEFORE_SLEEP` is over (then `None`: the
/// caller blocks instead).
pub(super) fn spin_briefly<T>(
    mut ready: impl FnMut() -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    let until = Instant::now() + SPIN_BEFORE_SLEEP;
    loop {
        if let Some(v) = ready()? {
            return Ok(Some(v));
        }
        if Instant::now() >= until {
            return Ok(None);
        }
        std::hint::spin_loop();
    }
}

pub struct BufferedConn {
    stream: TcpStream,
    out: Vec<u8>,
    inbuf: Box<[u8]>,
    start: usize,
    end: usize,
    guard: PacketGuard,
    /// `WRITE_STALL_TIMEOUT`, but for tests.
    write_timeout: Duration,
}

impl BufferedConn {
    /// A connection to a VM with `threads` vCPUs (GDB threads 1..=threads).
    pub fn new(stream: TcpStream, threads: usize) -> Self {
        BufferedConn {
            stream,
            out: Vec::with_capacity(4096),
            inbuf: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            guard: PacketGuard::new(threads),
            write_timeout: WRITE_STALL_TIMEOUT,
        }
    }

    /// Bytes already received but not yet consumed: the caller must not wait on the socket
    /// while there are any.
    pub fn has_buffered_input(&self) -> bool {
        self.start < self.end
    }

    /// How long a wait for input may last, as poll(2) takes it: forever (-1) between
    /// packets, `STALL_TIMEOUT` in the middle of one.
    pub fn input_timeout_ms(&self) -> i32 {
        if !self.guard.mid_packet() {
            -1
        } else {
            STALL_TIMEOUT.as_millis() as i32
        }
    }

    /// Blocks until the socket has data (or EOF, which is an error), or a packet stalled.
    fn fill(&mut self) -> io::Result<()> {
        if spin_briefly(|| self.fill_nonblocking())?.is_some() {
            return Ok(());
        }
        let timeout = self.input_timeout_ms();
        if timeout >= 0 && super::poll_ready([self.as_raw_fd()], timeout)? == [false] {
            return Err(stalled());
        }
        let n = loop {
            match Read::read(&mut self.stream, &mut self.inbuf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.filled(n)
    }

    /// Takes what the socket has without waiting: `None` if nothing.
    fn fill_nonblocking(&mut self) -> io::Result<Option<()>> {
        // SAFETY: recv(2) into our own buffer, at most its length.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                self.inbuf.as_mut_ptr().cast(),
                self.inbuf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return self.filled(n as usize).map(Some);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        }
    }

    fn filled(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "GDB closed the connection",
            ));
        }
        self.start = 0;
        self.end = n;
        Ok(())
    }
}

/// The error that drops a connection whose packet stalled halfway.
pub(super) fn stalled() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("GDB sent part of a packet and then nothing for {STALL_TIMEOUT:?}"),
    )
}

/// A session's end: what gdbstub wrote last (a `W`/`X` reply) must reach GDB. Closing a socket
/// with unread input (GDB's `+` for that reply) makes the kernel reset the connection, and
/// GDB may then lose the reply; so say goodbye properly and read what is still coming.
impl Drop for BufferedConn {
    fn drop(&mut self) {
        let _ = self.stream.set_write_timeout(Some(self.write_timeout));
        let _ = Connection::flush(self);
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let _ = self
            .stream
            .set_read_timeout(Some(std::time::Duration::from_millis(50)));
        let mut scratch = [0u8; 512];
        for _ in 0..16 {
            match Read::read(&mut self.stream, &mut scratch) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

impl AsRawFd for BufferedConn {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl Connection for BufferedConn {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        self.out.push(byte);
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let sent = Write::write_all(&mut self.stream, &self.out);
        // Sent or not, it is gone: after an error the connection is dropped, and a second
        // attempt (when it is) would only wait again.
        self.out.clear();
        sent.map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("GDB read none of a reply for {:?}", self.write_timeout),
            ),
            _ => e,
        })
    }

    fn on_session_start(&mut self) -> io::Result<()> {
        // Every packet is a round trip; do not let Nagle hold replies back.
        self.stream.set_nodelay(true)?;
        self.stream.set_write_timeout(Some(self.write_timeout))
    }
}

impl ConnectionExt for BufferedConn {
    fn read(&mut self) -> io::Result<u8> {
        // Anything gdbstub wrote must reach GDB before we wait for GDB's answer to it.
        self.flush()?;
        if !self.has_buffered_input() {
            self.fill()?;
        }
        let b = self.inbuf[self.start];
        self.start += 1;
        self.guard.check(b)?;
        Ok(b)
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        if !self.has_buffered_input() && self.fill_nonblocking()?.is_none() {
            return Ok(None);
        }
        Ok(Some(self.inbuf[self.start]))
    }
}

impl SessionConn for BufferedConn {
    fn wait(&mut self, wake: &EventFd) -> io::Result<(bool, bool)> {
        super::poll_two(self, wake)
    }
}

/// GDB's side of a session as bytes in memory: reads come from `input` and then end of file
/// (an error, as on a socket GDB closed); everything written is collected. The input passes
/// the same [`PacketGuard`] as a socket's.
pub struct MemConn<'a> {
    input: &'a [u8],
    pos: usize,
    out: &'a mut Vec<u8>,
    guard: PacketGuard,
}

impl<'a> MemConn<'a> {
    /// A session with a VM of `threads` vCPUs.
    pub fn new(input: &'a [u8], out: &'a mut Vec<u8>, threads: usize) -> Self {
        MemConn {
            input,
            pos: 0,
            out,
            guard: PacketGuard::new(threads),
        }
    }

    fn eof() -> io::Error {
        io::Error::new(io::ErrorKind::UnexpectedEof, "end of the input")
    }
}

impl Connection for MemConn<'_> {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        self.out.push(byte);
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ConnectionExt for MemConn<'_> {
    fn read(&mut self) -> io::Result<u8> {
        let b = *self.input.get(self.pos).ok_or_else(Self::eof)?;
        self.pos += 1;
        self.guard.check(b)?;
        Ok(b)
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        match self.input.get(self.pos) {
            Some(&b) => Ok(Some(b)),
            None => Err(Self::eof()),
        }
    }
}

impl SessionConn for MemConn<'_> {
    /// Never blocks: a stop the vCPUs already reported comes first, then the input (or its
    /// end, which ends the session), so a session is a deterministic function of its input.
    fn wait(&mut self, wake: &EventFd) -> io::Result<(bool, bool)> {
        let [woke] = super::poll_ready([wake.as_raw_fd()], 0)?;
        Ok((!woke, woke))
    }
}

/// Follows the packets going to gdbstub: where the input is in the framing (for the stall
/// timeout), and two kinds of packet gdbstub would act on without checking: memory writes
/// whose length field disagrees with their data (gdbstub 0.7 writes the data and ignores the
/// length), and thread selections (`Hg`, `Hc`) that name a thread that does not exist
/// (gdbstub answers OK). Only a broken or hostile client sends either, so the connection is
/// dropped before gdbstub sees the end of the packet, and nothing changes.
pub struct PacketGuard {
    framing: Framing,
    body: Vec<u8>,
    threads: usize,
}

/// Packets longer than this are not kept: they are not memory writes GDB would send.
const GUARD_MAX_BODY: usize = 0x4_0000;

impl PacketGuard {
    pub fn new(threads: usize) -> Self {
        PacketGuard {
            framing: Framing::default(),
            body: Vec::new(),
            threads,
        }
    }

    /// Whether a packet has started (`$`) and not yet ended (its two checksum digits).
    pub fn mid_packet(&self) -> bool {
        self.framing != Framing::Between
    }

    /// Sees one incoming byte; an error means "drop the connection".
    pub fn check(&mut self, b: u8) -> io::Result<()> {
        let was = self.framing;
        self.framing = was.next(b);
        match (was, self.framing) {
            (Framing::Between, Framing::Body) => self.body.clear(),
            (Framing::Body, Framing::Body) if self.body.len() < GUARD_MAX_BODY => self.body.push(b),
            (Framing::Body, Framing::Checksum1) => {
                if let Some(why) = write_length_mismatch(&self.body)
                    .or_else(|| unknown_thread(&self.body, self.threads))
                {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, why));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// For an `Hg`/`Hc` packet body that names a thread other than 1..=`threads`, says which.
/// Thread 0 ("any") and -1 ("all") are fine, and malformed ids are gdbstub's to refuse.
pub fn unknown_thread(body: &[u8], threads: usize) -> Option<String> {
    let (op, tid) = h_packet_thread(body)?;
    if tid == "-1" {
        return None;
    }
    let n = u64::from_str_radix(tid, 16).ok()?;
    (n > threads as u64).then(|| {
        format!(
            "H{} selects thread {tid}, but the VM has threads 1 to {threads}",
            op as char
        )
    })
}

/// For an `Hg`/`Hc` packet body: the operation (`g` or `c`) and the thread id as sent (the
/// thread part of the multiprocess form `p<pid>.<tid>`; the process is gdbstub's business).
pub(super) fn h_packet_thread(body: &[u8]) -> Option<(u8, &str)> {
    let op = *body.get(1)?;
    if body.first() != Some(&b'H') || !matches!(op, b'g' | b'c') {
        return None;
    }
    let id = std::str::from_utf8(&body[2..]).ok()?;
    let tid = match id.strip_prefix('p') {
        Some(pid_tid) => pid_tid.split_once('.')?.1,
        None => id,
    };
    Some((op, tid))
}

/// For an `M`/`X` packet body whose data length differs from its length field, says how.
pub fn write_length_mismatch(body: &[u8]) -> Option<String> {
    let kind = *body.first()?;
    if kind != b'M' && kind != b'X' {
        return None;
    }
    let colon = body.iter().position(|&c| c == b':')?;
    let header = std::str::from_utf8(&body[1..colon]).ok()?;
    let len = usize::from_str_radix(header.split_once(',')?.1, 16).ok();
    let data = &body[colon + 1..];
    let have = if kind == b'M' {
        // Two hex digits a byte; an odd count is malformed as well.
        if !data.len().is_multiple_of(2) {
            return Some(format!("M packet with {} hex digits", data.len()));
        }
        data.len() / 2
    } else {
        // Binary data: `}` escapes the byte after it, which may itself be a `}`.
        let mut bytes = 0;
        let mut rest = data.iter();
        while let Some(&c) = rest.next() {
            if c == b'}' {
                rest.next();
            }
            bytes += 1;
        }
        bytes
    };
    match len {
        Some(len) if len == have => None,
        Some(len) => Some(format!(
            "{} packet says {len} bytes but carries {have}",
            kind as char
        )),
        None => Some(format!("{} packet with an unreadable length", kind as char)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (BufferedConn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (BufferedConn::new(server, 1), client)
    }

    #[test]
    fn memory_writes_must_match_their_length() {
        assert_eq!(write_length_mismatch(b"M100000,4:00112233"), None);
        assert_eq!(
            write_length_mismatch(b"X100000,2:}]a"),
            None,
            "an escaped byte counts once"
        );
        assert_eq!(write_length_mismatch(b"X100000,0:"), None);
        assert_eq!(
            write_length_mismatch(b"m100000,ffff"),
            None,
            "reads are not checked"
        );
        assert!(write_length_mismatch(b"M100000,ffffffffffffffff:00").is_some());
        // An escaped `}` is one data byte: `}}x` is two bytes, not one.
        assert!(write_length_mismatch(b"X100000,1:}}x").is_some());
        assert_eq!(write_length_mismatch(b"X100000,2:}}x"), None);
        assert_eq!(write_length_mismatch(b"X100000,1:}]"), None);
    }

    #[test]
    fn thread_selections_must_name_a_vcpu() {
        for ok in [
            "Hg1", "Hc2", "Hg0", "Hc-1", "Hgp1.2", "Hcp1.-1", "Hg00", "g", "m0,1",
        ] {
            assert_eq!(unknown_thread(ok.as_bytes(), 2), None, "{ok}");
        }
        for bad in ["Hg3", "Hc999", "Hgp1.3", "Hgffffffffffffffff"] {
            assert!(unknown_thread(bad.as_bytes(), 2).is_some(), "{bad}");
        }
        // Malformed ids are left to gdbstub, which refuses them itself.
        assert_eq!(unknown_thread(b"Hgzz", 2), None);
        assert!(write_length_mismatch(b"M100000,1:00000000").is_some());
        assert!(
            write_length_mismatch(b"M100000,2:001").is_some(),
            "odd hex digits"
        );
        assert!(write_length_mismatch(b"X100000,zz:ab").is_some());
        let mut g = PacketGuard::new(1);
        assert!(b"+$M1,1:00#00".iter().all(|&b| g.check(b).is_ok()));
        assert!(b"$M1,2:00".iter().all(|&b| g.check(b).is_ok()));
        assert!(
            g.check(b'#').is_err(),
            "dropped before the checksum reaches gdbstub"
        );
    }

    #[test]
    fn writes_are_sent_on_flush_as_one_piece() {
        let (mut conn, mut client) = pair();
        conn.write_all(b"$OK").unwrap();
        conn.write(b'#').unwrap();
        conn.write_all(b"9a").unwrap();
        conn.flush().unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"$OK#9a");
    }

    #[test]
    fn reads_and_peeks_are_served_from_the_buffer() {
        let (mut conn, mut client) = pair();
        assert_eq!(conn.peek().unwrap(), None);
        Write::write_all(&mut client, b"+$g#67").unwrap();
        assert_eq!(conn.read().unwrap(), b'+');
        assert!(conn.has_buffered_input());
        assert_eq!(conn.peek().unwrap(), Some(b'$'));
        let rest: Vec<u8> = (0..5).map(|_| conn.read().unwrap()).collect();
        assert_eq!(rest, b"$g#67");
        assert!(!conn.has_buffered_input());
        drop(client);
        assert!(conn.read().is_err(), "EOF is an error");
    }

    #[test]
    fn a_read_flushes_pending_output_first() {
        let (mut conn, mut client) = pair();
        conn.write_all(b"+").unwrap();
        let t = std::thread::spawn(move || {
            let mut b = [0u8];
            client.read_exact(&mut b).unwrap();
            Write::write_all(&mut client, b"x").unwrap();
            b[0]
        });
        assert_eq!(conn.read().unwrap(), b'x');
        assert_eq!(t.join().unwrap(), b'+');
    }

    #[test]
    fn a_client_that_stops_reading_times_the_reply_out() {
        let (mut conn, client) = pair();
        conn.write_timeout = Duration::from_millis(300);
        conn.on_session_start().unwrap();
        // More than the socket buffers on both ends can hold.
        conn.write_all(&vec![b'a'; 64 << 20]).unwrap();
        let t = std::time::Instant::now();
        let err = Connection::flush(&mut conn).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("read none of a reply"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        drop(client);
    }
}
