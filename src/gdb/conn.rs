//! The GDB connection: a TCP stream with buffering both ways. gdbstub reads one byte and
//! writes a few bytes at a time; unbuffered, that is a system call per byte (a 16 MiB memory
//! dump took tens of thousands of sends). Here a reply goes out in one send when gdbstub
//! flushes it, and reads take whatever the socket has, up to a buffer.
//!
//! [`MemConn`] is the same protocol over bytes in memory, for fuzzing the whole session.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use gdbstub::conn::{Connection, ConnectionExt};
use vmm_sys_util::eventfd::EventFd;

/// A connection the session loop can run on: gdbstub's byte I/O plus the wait for "GDB sent
/// something or a vCPU stopped".
pub trait SessionConn: ConnectionExt<Error = io::Error> {
    /// Blocks until the connection has input (or hit its end) or `wake` fires; says which.
    fn wait(&mut self, wake: &EventFd) -> io::Result<(bool, bool)>;
}

const READ_BUFFER: usize = 64 * 1024;

pub struct BufferedConn {
    stream: TcpStream,
    out: Vec<u8>,
    inbuf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl BufferedConn {
    pub fn new(stream: TcpStream) -> Self {
        BufferedConn {
            stream,
            out: Vec::with_capacity(4096),
            inbuf: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Bytes already received but not yet consumed: the caller must not wait on the socket
    /// while there are any.
    pub fn has_buffered_input(&self) -> bool {
        self.start < self.end
    }

    /// Blocks until the socket has data (or EOF, which is an error).
    fn fill(&mut self) -> io::Result<()> {
        let n = loop {
            match Read::read(&mut self.stream, &mut self.inbuf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
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
        if !self.out.is_empty() {
            Write::write_all(&mut self.stream, &self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    fn on_session_start(&mut self) -> io::Result<()> {
        // Every packet is a round trip; do not let Nagle hold replies back.
        self.stream.set_nodelay(true)
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
        Ok(b)
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        if self.has_buffered_input() {
            return Ok(Some(self.inbuf[self.start]));
        }
        self.stream.set_nonblocking(true)?;
        let result = Read::read(&mut self.stream, &mut self.inbuf);
        self.stream.set_nonblocking(false)?;
        match result {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "GDB closed the connection",
            )),
            Ok(n) => {
                self.start = 0;
                self.end = n;
                Ok(Some(self.inbuf[0]))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl SessionConn for BufferedConn {
    fn wait(&mut self, wake: &EventFd) -> io::Result<(bool, bool)> {
        super::poll_two(self, wake)
    }
}

/// GDB's side of a session as bytes in memory: reads come from `input` and then end of file
/// (an error, as on a socket GDB closed); everything written is collected.
pub struct MemConn<'a> {
    input: &'a [u8],
    pos: usize,
    out: &'a mut Vec<u8>,
}

impl<'a> MemConn<'a> {
    pub fn new(input: &'a [u8], out: &'a mut Vec<u8>) -> Self {
        MemConn { input, pos: 0, out }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (BufferedConn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (BufferedConn::new(server), client)
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
}
