//! Binary memory reads (`x`), which gdbstub 0.7 does not have, done around it: the session's
//! connection is wrapped in a [`BinaryReadConn`], which answers `x` packets itself (between
//! gdbstub's packets, while the VM is stopped) and hands everything else to gdbstub.
//!
//! Two clients read memory with `x`, and their replies differ:
//! - LLDB probes with `x0,0` and uses `x` if the answer is `OK`; a read's reply is the bytes
//!   themselves, nothing before them.
//! - GDB 16 offers `binary-upload+` in its qSupported and uses `x` only if the stub offers it
//!   back; a read's reply is `b` and then the bytes (an empty read is just `b`).
//!
//! A session speaks GDB's dialect if its client offered `binary-upload+`, LLDB's otherwise.
//! In both, the bytes are escaped as in every binary packet (`#`, `$`, `}` and `*` become `}`
//! and the byte XOR 0x20), runs of a byte are run-length encoded as in any reply, an
//! unreadable address is an error (`E79`, what gdbstub answers to `m` there) and a read that
//! is readable only in part returns the readable part. Hex `m` stays gdbstub's.

use std::io;

use gdbstub::conn::{Connection, ConnectionExt};
use log::{debug, warn};
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use super::conn::{Framing, SessionConn, h_packet_thread};

/// The reply to a read that found nothing readable: gdbstub's for `m` (its generic non-fatal
/// error, 121).
const ERROR_REPLY: &[u8] = b"E79";

/// The feature GDB 16 offers and expects back before it uses `x`.
const BINARY_UPLOAD: &[u8] = b"binary-upload+";

/// An `x` packet body longer than this is not one a debugger sends (`x`, two 64-bit hex
/// numbers with `0x`, a comma): the connection is dropped, as gdbstub does for packets that
/// overflow its buffer.
const MAX_X_BODY: usize = 64;

/// Incoming packets kept whole to see what the session agreed (qSupported, no-ack mode,
/// thread selection); longer ones are none of those.
const MAX_WATCHED_BODY: usize = 4096;

/// Why a session's connection is dropped on an `x` packet.
#[derive(Debug, Error)]
pub enum BinaryReadError {
    /// The packet does not end where an `x` packet would.
    #[error("x packet longer than {MAX_X_BODY} bytes")]
    TooLong,
    /// The checksum is wrong (gdbstub ends the session for this too).
    #[error("x packet with a bad checksum: {got:?} for {body:?}, expected {expected:02x}")]
    BadChecksum {
        body: String,
        got: String,
        expected: u8,
    },
}

impl From<BinaryReadError> for io::Error {
    fn from(e: BinaryReadError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Why an `x` packet's arguments cannot be used (the client gets an error reply).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum XParseError {
    #[error("not an x packet")]
    NotX,
    #[error("x packet without `addr,length`")]
    NoComma,
    #[error("x packet with a bad number {0:?}")]
    BadNumber(String),
}

/// Which reply format a session's `x` reads get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    /// LLDB's: `OK` to a zero-length read, the bytes alone otherwise.
    #[default]
    Lldb,
    /// GDB 16's (`binary-upload`): `b` and the bytes.
    Gdb,
}

/// One `x` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XRead {
    pub addr: u64,
    pub len: u64,
}

/// Parses an `x` packet body: `xADDR,LENGTH`, both hex, each with an optional `0x` (LLDB's
/// documentation shows them with it).
pub fn parse_x(body: &[u8]) -> Result<XRead, XParseError> {
    let args = body.strip_prefix(b"x").ok_or(XParseError::NotX)?;
    let comma = args
        .iter()
        .position(|&c| c == b',')
        .ok_or(XParseError::NoComma)?;
    Ok(XRead {
        addr: hex_number(&args[..comma])?,
        len: hex_number(&args[comma + 1..])?,
    })
}

fn hex_number(s: &[u8]) -> Result<u64, XParseError> {
    let bad = || XParseError::BadNumber(String::from_utf8_lossy(s).into_owned());
    let digits = s.strip_prefix(b"0x").unwrap_or(s);
    // from_str_radix would take a sign as well.
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    let text = std::str::from_utf8(digits).map_err(|_| bad())?;
    u64::from_str_radix(text, 16).map_err(|_| bad())
}

/// Whether a byte must be escaped in binary data.
fn needs_escape(b: u8) -> bool {
    matches!(b, b'#' | b'$' | b'}' | b'*')
}

/// The longest run one `*` count can repeat: its count character is printable, at most `~`.
const MAX_REPEAT: usize = (b'~' - 29) as usize;

/// Appends `data` as binary packet data: escaped, and runs of four or more of a byte that
/// needs no escape run-length encoded (`X*c`: c - 29 more copies of X). An escaped byte is
/// never repeated that way, since decoders differ on what "the previous character" of an
/// escape is; and no count character is `#` or `$` (framing), `}` or `*`.
pub fn encode_binary(out: &mut Vec<u8>, data: &[u8]) {
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        let run = data[i..].iter().take_while(|&&c| c == b).count();
        i += run;
        if needs_escape(b) {
            for _ in 0..run {
                out.extend([b'}', b ^ 0x20]);
            }
            continue;
        }
        let mut left = run;
        while left > 0 {
            out.push(b);
            left -= 1;
            if left < 3 {
                out.extend(std::iter::repeat_n(b, left));
                break;
            }
            let mut n = left.min(MAX_REPEAT);
            while matches!(n as u8 + 29, b'#' | b'$' | b'}' | b'*') {
                n -= 1;
            }
            out.extend([b'*', n as u8 + 29]);
            left -= n;
        }
    }
}

/// The reply body to one `x` request, given what could be read (`None`: nothing).
pub fn reply_body(dialect: Dialect, req: XRead, read: Option<&[u8]>) -> Vec<u8> {
    if req.len == 0 {
        return match dialect {
            Dialect::Lldb => b"OK".to_vec(),
            Dialect::Gdb => b"b".to_vec(),
        };
    }
    let Some(data) = read.filter(|d| !d.is_empty()) else {
        return ERROR_REPLY.to_vec();
    };
    let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 4);
    if dialect == Dialect::Gdb {
        out.push(b'b');
    }
    encode_binary(&mut out, data);
    out
}

pub fn checksum(body: &[u8]) -> u8 {
    body.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

/// `$body#cs`.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(b'$');
    out.extend_from_slice(body);
    out.extend(format!("#{:02x}", checksum(body)).as_bytes());
    out
}

/// For a qSupported packet body: whether the client offered `binary-upload+`. `None` for
/// other packets.
pub fn offers_binary_upload(body: &[u8]) -> Option<bool> {
    let rest = body.strip_prefix(b"qSupported")?;
    if rest.is_empty() {
        return Some(false);
    }
    let features = rest.strip_prefix(b":")?;
    Some(features.split(|&c| c == b';').any(|f| f == BINARY_UPLOAD))
}

/// gdbstub's qSupported reply (a whole framed packet) with `binary-upload+` added; `None` if
/// the packet is not that reply.
pub fn add_binary_upload(packet: &[u8]) -> Option<Vec<u8>> {
    let hash = packet.iter().rposition(|&c| c == b'#')?;
    let body = packet.get(1..hash).filter(|_| packet[0] == b'$')?;
    // gdbstub's reply starts with its packet size; anything else (an error) stays as it is.
    if !body.starts_with(b"PacketSize=") {
        return None;
    }
    let mut new = body.to_vec();
    new.push(b';');
    new.extend_from_slice(BINARY_UPLOAD);
    Some(frame(&new))
}

/// The thread an `Hg` packet makes gdbstub use for memory: the one named, or the first for
/// "any" (0). `None` for other packets, and for "all" (-1), which gdbstub refuses.
pub fn selected_thread(body: &[u8]) -> Option<usize> {
    let (op, tid) = h_packet_thread(body)?;
    if op != b'g' || tid == "-1" {
        return None;
    }
    let tid = usize::from_str_radix(tid, 16).ok()?;
    Some(tid.max(1))
}

/// What `x` needs of the debug target.
pub trait XTarget {
    /// Up to `len` bytes of guest memory at `addr`, read as `m` reads them (through the
    /// selected thread's vCPU, planted breakpoints hidden): the readable part from `addr` on,
    /// `None` if nothing there is readable.
    fn read_for_x(&mut self, addr: u64, len: usize) -> Option<Vec<u8>>;
    /// GDB selected thread `tid` for memory accesses (`Hg`), as gdbstub has just been told.
    fn select_thread(&mut self, tid: usize);
    /// A packet starts; `legacy_continue`: it is a legacy `c`/`C` (LLDB sends them, after
    /// `Hc-1`), which gdbserver answers by continuing every thread, while gdbstub continues
    /// only the thread of the last stop. Said before gdbstub sees the packet's first byte.
    fn packet_starts(&mut self, legacy_continue: bool);
}

/// Collects one outgoing packet (gdbstub's qSupported reply) to add `binary-upload+` to it.
#[derive(Default)]
struct OutPacket {
    framing: Framing,
    bytes: Vec<u8>,
}

/// A session's connection with `x` answered here (see the module comment). Everything else
/// passes through unchanged, and the inner connection's limits (stall timeout, packet guard)
/// apply to `x` packets as to any other.
pub struct BinaryReadConn<C> {
    inner: C,
    /// The byte after a `$` that turned out not to start an `x` packet: gdbstub's next.
    pending: Option<u8>,
    /// Where the bytes handed to gdbstub are in RSP framing, and the packet being handed.
    framing: Framing,
    body: Vec<u8>,
    dialect: Dialect,
    no_ack: bool,
    /// An `Hg` gdbstub has been given, for the target to hear of before the next packet.
    selected: Option<usize>,

    /// Armed after a qSupported offering `binary-upload+`: gdbstub's reply to it.
    reply: Option<OutPacket>,
    /// The longest read one `x` is answered with (the client asks again for the rest).
    max_read: usize,
    used: bool,
}

impl<C: SessionConn> BinaryReadConn<C> {
    pub fn new(inner: C, max_read: usize) -> Self {
        BinaryReadConn {
            inner,
            pending: None,
            framing: Framing::default(),
            body: Vec::new(),
            dialect: Dialect::default(),
            no_ack: false,
            selected: None,
            reply: None,
            max_read,
            used: false,
        }
    }

    /// The next byte for gdbstub while it is idle (the VM stopped): `x` packets on the way are
    /// answered from `target`.
    pub fn read_serving(&mut self, target: &mut impl XTarget) -> io::Result<u8> {
        loop {
            if let Some(tid) = self.selected.take() {
                target.select_thread(tid);
            }

            if let Some(b) = self.pending.take() {
                return Ok(self.hand_over(b));
            }
            let b = self.inner.read()?;
            if self.framing == Framing::Between && b == b'$' {
                let next = self.inner.read()?;
                if next == b'x' {
                    self.serve_x(target)?;
                    continue;
                }
                // No other packet starts with c or C.
                target.packet_starts(matches!(next, b'c' | b'C'));
                self.pending = Some(next);
            }
            return Ok(self.hand_over(b));
        }
    }

    /// Reads the rest of an `x` packet (its `x` is read) and answers it.
    fn serve_x(&mut self, target: &mut impl XTarget) -> io::Result<()> {
        let mut body = vec![b'x'];
        loop {
            let b = self.inner.read()?;
            if b == b'#' {
                break;
            }
            if body.len() >= MAX_X_BODY {
                return Err(BinaryReadError::TooLong.into());
            }
            body.push(b);
        }
        let sum = [self.inner.read()?, self.inner.read()?];
        let expected = checksum(&body);
        let got = std::str::from_utf8(&sum)
            .ok()
            .and_then(|s| u8::from_str_radix(s, 16).ok());
        if got != Some(expected) {
            return Err(BinaryReadError::BadChecksum {
                body: String::from_utf8_lossy(&body).into_owned(),
                got: String::from_utf8_lossy(&sum).into_owned(),
                expected,
            }
            .into());
        }
        if !self.no_ack {
            self.inner.write(b'+')?;
        }
        let reply = match parse_x(&body) {
            Ok(req) => {
                if !self.used {
                    self.used = true;
                    debug!(
                        "the debugger reads memory in binary (x packets, {})",
                        match self.dialect {
                            Dialect::Lldb => "LLDB's format",
                            Dialect::Gdb => "GDB's binary-upload format",
                        }
                    );
                }
                let data = match usize::try_from(req.len) {
                    Ok(0) => None,
                    Ok(len) => target.read_for_x(req.addr, len.min(self.max_read)),
                    Err(_) => target.read_for_x(req.addr, self.max_read),
                };
                reply_body(self.dialect, req, data.as_deref())
            }
            Err(e) => {
                debug!("{e}");
                ERROR_REPLY.to_vec()
            }
        };
        self.inner.write_all(&frame(&reply))?;
        self.inner.flush()
    }

    /// Follows a byte on its way to gdbstub; at the end of a packet, takes note of what it
    /// agreed.
    fn hand_over(&mut self, b: u8) -> u8 {
        let was = self.framing;
        self.framing = was.next(b);
        match (was, self.framing) {
            (Framing::Between, Framing::Body) => self.body.clear(),
            (Framing::Body, Framing::Body) if self.body.len() < MAX_WATCHED_BODY => {
                self.body.push(b)
            }
            (Framing::Checksum2, Framing::Between) => self.packet_handed_over(),
            _ => {}
        }
        b
    }

    fn packet_handed_over(&mut self) {
        let body = &self.body;
        if let Some(offered) = offers_binary_upload(body) {
            self.dialect = if offered { Dialect::Gdb } else { Dialect::Lldb };
            self.reply = offered.then(OutPacket::default);
            debug!("qSupported: x replies in {:?}'s format", self.dialect);
        } else if body.as_slice() == b"QStartNoAckMode" {
            // gdbstub always agrees (its target keeps the default).
            self.no_ack = true;
        } else if let Some(tid) = selected_thread(body) {
            self.selected = Some(tid);
        }
    }

    /// Sends what gdbstub writes, holding back its qSupported reply to add `binary-upload+`.
    fn write_out(&mut self, b: u8) -> io::Result<()> {
        let Some(reply) = &mut self.reply else {
            return self.inner.write(b);
        };
        let was = reply.framing;
        reply.framing = was.next(b);
        if reply.framing == Framing::Between && was == Framing::Between {
            // An ack before the reply.
            return self.inner.write(b);
        }
        reply.bytes.push(b);
        if reply.framing == Framing::Between {
            let done = std::mem::take(&mut reply.bytes);
            self.reply = None;
            let out = add_binary_upload(&done).unwrap_or(done);
            return self.inner.write_all(&out);
        }
        Ok(())
    }
}

impl<C: SessionConn> Connection for BinaryReadConn<C> {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        self.write_out(byte)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.reply.is_none() {
            return self.inner.write_all(buf);
        }
        buf.iter().try_for_each(|&b| self.write_out(b))
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(reply) = self.reply.take() {
            // Not reached: gdbstub flushes whole packets. Send it as it is rather than never.
            warn!("qSupported reply flushed unfinished: binary-upload not offered");
            self.inner.write_all(&reply.bytes)?;
        }
        self.inner.flush()
    }

    fn on_session_start(&mut self) -> io::Result<()> {
        self.inner.on_session_start()
    }
}

impl<C: SessionConn> ConnectionExt for BinaryReadConn<C> {
    /// A byte for gdbstub while the VM runs: `x` is answered only while it is stopped.
    fn read(&mut self) -> io::Result<u8> {
        let b = match self.pending.take() {
            Some(b) => b,
            None => self.inner.read()?,
        };
        Ok(self.hand_over(b))
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        match self.pending {
            Some(b) => Ok(Some(b)),
            None => self.inner.peek(),
        }
    }
}

impl<C: SessionConn> SessionConn for BinaryReadConn<C> {
    fn wait(&mut self, wake: &EventFd) -> io::Result<(bool, bool)> {
        if self.pending.is_some() {
            return Ok((true, false));
        }
        self.inner.wait(wake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gdb::conn::MemConn;

    /// Decodes binary reply data the way GDB's read_frame and remote_unescape_input do:
    /// run-length expansion on the raw characters, then unescaping.
    fn gdb_decode(body: &[u8]) -> Vec<u8> {
        let mut raw: Vec<u8> = Vec::new();
        let mut i = 0;
        while i < body.len() {
            if body[i] == b'*' {
                let last = *raw.last().unwrap();
                raw.extend(std::iter::repeat_n(last, usize::from(body[i + 1]) - 29));
                i += 2;
            } else {
                raw.push(body[i]);
                i += 1;
            }
        }
        let mut out = Vec::new();
        let mut it = raw.into_iter();
        while let Some(c) = it.next() {
            out.push(if c == b'}' {
                it.next().unwrap() ^ 0x20
            } else {
                c
            });
        }
        out
    }

    /// LLDB's ExpandRLE: both in one pass, `*` repeating the last decoded byte.
    fn lldb_decode(body: &[u8]) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        let mut i = 0;
        while i < body.len() {
            match body[i] {
                b'*' => {
                    let last = *out.last().unwrap();
                    out.extend(std::iter::repeat_n(last, usize::from(body[i + 1]) + 3 - 32));
                    i += 2;
                }
                b'}' => {
                    out.push(body[i + 1] ^ 0x20);
                    i += 2;
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        out
    }

    fn samples() -> Vec<Vec<u8>> {
        let mut all: Vec<u8> = (0..=255u8).collect();
        all.extend(b"##$$}}**");
        let mut runs = Vec::new();
        for n in [
            1usize, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 96, 97, 98, 99, 200, 1000,
        ] {
            runs.extend(std::iter::repeat_n(0u8, n));
            runs.push(b'a');
            runs.extend(std::iter::repeat_n(b'}', n));
            runs.extend(std::iter::repeat_n(0xffu8, n));
        }
        let mut x = 0x1234_5678_u32;
        let noise = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                // Few distinct values, so runs happen.
                [0u8, 0, 0, b'#', b'*', 7][(x % 6) as usize]
            })
            .collect();
        vec![vec![], all, runs, noise, vec![0; 0x10000]]
    }

    #[test]
    fn binary_data_round_trips_through_both_decoders() {
        for data in samples() {
            let mut enc = Vec::new();
            encode_binary(&mut enc, &data);
            assert!(
                !enc.iter().any(|&c| c == b'#' || c == b'$'),
                "framing characters in the data"
            );
            assert_eq!(gdb_decode(&enc), data);
            assert_eq!(lldb_decode(&enc), data);
        }
    }

    #[test]
    fn escapes_and_runs_are_encoded() {
        let mut enc = Vec::new();
        encode_binary(&mut enc, b"a#b$c}d*e");
        assert_eq!(enc, b"a}\x03b}\x04c}]d}\x0ae");
        let mut enc = Vec::new();
        encode_binary(&mut enc, &[0; 4]);
        assert_eq!(enc, b"\0* ", "four zeros: one and three more");
        // Six or seven more would make the count `#` or `$`.
        for n in [7usize, 8] {
            let mut enc = Vec::new();
            encode_binary(&mut enc, &vec![1; n]);
            assert!(!enc.contains(&b'#') && !enc.contains(&b'$'), "{enc:?}");
            assert_eq!(gdb_decode(&enc), vec![1; n]);
        }
        let mut enc = Vec::new();
        encode_binary(&mut enc, &[b'*'; 5]);
        assert_eq!(
            enc, b"}\x0a}\x0a}\x0a}\x0a}\x0a",
            "escaped bytes are not repeated"
        );
        let mut enc = Vec::new();
        encode_binary(&mut enc, &[0; 0x10000]);
        assert!(enc.len() < 0x10000 / 30, "{} bytes", enc.len());
    }

    #[test]
    fn x_packets_parse() {
        assert_eq!(parse_x(b"x0,0"), Ok(XRead { addr: 0, len: 0 }));
        assert_eq!(
            parse_x(b"xffffffff81000000,10000"),
            Ok(XRead {
                addr: 0xffff_ffff_8100_0000,
                len: 0x10000
            })
        );
        assert_eq!(
            parse_x(b"x0x1000,0x200"),
            Ok(XRead {
                addr: 0x1000,
                len: 0x200
            })
        );
        assert_eq!(parse_x(b"m0,0"), Err(XParseError::NotX));
        assert_eq!(parse_x(b"x1000"), Err(XParseError::NoComma));
        for bad in [
            &b"x,1"[..],
            b"x1,",
            b"x-1,1",
            b"x+1,1",
            b"x1,zz",
            b"x10000000000000000,1",
            b"x0x,1",
        ] {
            assert!(
                matches!(parse_x(bad), Err(XParseError::BadNumber(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn replies_follow_the_dialect() {
        let probe = XRead { addr: 0, len: 0 };
        let read = XRead { addr: 0, len: 3 };
        assert_eq!(reply_body(Dialect::Lldb, probe, None), b"OK");
        assert_eq!(reply_body(Dialect::Gdb, probe, None), b"b");
        assert_eq!(reply_body(Dialect::Lldb, read, Some(b"a#c")), b"a}\x03c");
        assert_eq!(reply_body(Dialect::Gdb, read, Some(b"a#c")), b"ba}\x03c");
        for d in [Dialect::Lldb, Dialect::Gdb] {
            assert_eq!(reply_body(d, read, None), b"E79");
            assert_eq!(reply_body(d, read, Some(b"")), b"E79");
        }
    }

    #[test]
    fn qsupported_is_read_and_answered() {
        assert_eq!(offers_binary_upload(b"qSupported"), Some(false));
        assert_eq!(
            offers_binary_upload(b"qSupported:multiprocess+;binary-upload+;swbreak+"),
            Some(true)
        );
        assert_eq!(
            offers_binary_upload(b"qSupported:binary-upload-;xmlRegisters=i386"),
            Some(false)
        );
        assert_eq!(offers_binary_upload(b"qSupportedX"), None);
        assert_eq!(offers_binary_upload(b"m0,1"), None);

        let reply = frame(b"PacketSize=2*!;vContSupported+");
        let new = add_binary_upload(&reply).unwrap();
        assert_eq!(new, frame(b"PacketSize=2*!;vContSupported+;binary-upload+"));
        assert_eq!(add_binary_upload(&frame(b"E01")), None);
        assert_eq!(add_binary_upload(b"+"), None);
    }

    #[test]
    fn thread_selections_are_followed() {
        assert_eq!(selected_thread(b"Hg2"), Some(2));
        assert_eq!(selected_thread(b"Hgp1.3"), Some(3));
        assert_eq!(selected_thread(b"Hg0"), Some(1));
        assert_eq!(selected_thread(b"Hg-1"), None);
        assert_eq!(selected_thread(b"Hc2"), None);
        assert_eq!(selected_thread(b"g"), None);
    }

    /// Guest memory 0x1000..0x1100 holds `i as u8`; other addresses are unreadable.
    #[derive(Default)]
    struct FakeMem {
        selected: Vec<usize>,
        reads: Vec<(u64, usize)>,
        legacy_continues: Vec<bool>,
    }

    impl XTarget for FakeMem {
        fn read_for_x(&mut self, addr: u64, len: usize) -> Option<Vec<u8>> {
            self.reads.push((addr, len));
            let range = 0x1000u64..0x1100;
            if !range.contains(&addr) {
                return None;
            }
            let end = (addr + len as u64).min(range.end);
            Some((addr..end).map(|a| a as u8).collect())
        }
        fn select_thread(&mut self, tid: usize) {
            self.selected.push(tid);
        }
        fn packet_starts(&mut self, legacy_continue: bool) {
            self.legacy_continues.push(legacy_continue);
        }
    }

    fn packet(body: &[u8]) -> Vec<u8> {
        frame(body)
    }

    /// Runs `input` through the wrapper as the session loop would while idle; returns what
    /// reached gdbstub, what was sent, and the error that ended it (EOF at the end).
    fn run(input: &[u8], mem: &mut FakeMem) -> (Vec<u8>, Vec<u8>, io::Error) {
        let mut sent = Vec::new();
        let mut to_stub = Vec::new();
        let err = {
            let mut conn = BinaryReadConn::new(MemConn::new(input, &mut sent, 2), 0x40);
            loop {
                match conn.read_serving(mem) {
                    Ok(b) => to_stub.push(b),
                    Err(e) => break e,
                }
            }
        };
        (to_stub, sent, err)
    }

    #[test]
    fn legacy_continues_are_told_before_gdbstub_sees_them() {
        let mut input = packet(b"Hc-1");
        input.extend(packet(b"c"));
        input.extend(packet(b"vCont;c:2"));
        input.extend(packet(b"C05"));
        let mut mem = FakeMem::default();
        let (to_stub, _, _) = run(&input, &mut mem);
        assert_eq!(mem.legacy_continues, [false, true, false, true]);
        assert_eq!(to_stub.len(), input.len(), "every byte reaches gdbstub");
    }

    #[test]
    fn x_packets_are_answered_and_the_rest_passes_through() {
        let mut input = packet(b"qSupported:multiprocess+");
        input.push(b'+');
        input.extend(packet(b"x0,0"));
        input.extend(packet(b"x1000,4"));
        input.extend(packet(b"xdead,4"));
        input.extend(packet(b"x10fe,10"));
        input.extend(packet(b"x1000,100"));
        input.extend(packet(b"xzz,1"));
        input.extend(packet(b"m1000,4"));
        input.extend(packet(b"Hgp1.2"));
        input.extend(packet(b"x1020,1"));
        let mut mem = FakeMem::default();
        let (to_stub, sent, err) = run(&input, &mut mem);
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");

        let mut stub_expected = packet(b"qSupported:multiprocess+");
        stub_expected.push(b'+');
        stub_expected.extend(packet(b"m1000,4"));
        stub_expected.extend(packet(b"Hgp1.2"));
        assert_eq!(
            String::from_utf8_lossy(&to_stub),
            String::from_utf8_lossy(&stub_expected)
        );

        let mut expected = Vec::new();
        for body in [
            &b"OK"[..],
            b"\0\x01\x02\x03",
            b"E79",
            b"\xfe\xff",
            b"E79", // a malformed x packet
        ] {
            expected.push(b'+');
            expected.extend(frame(body));
        }
        // The 0x100-byte read is answered with the first 0x40 (max_read).
        let first: Vec<u8> = (0..0x40u8).collect();
        let mut enc = Vec::new();
        encode_binary(&mut enc, &first);
        let at = expected.len() - (frame(b"E79").len() + 1);
        let mut tail = vec![b'+'];
        tail.extend(frame(&enc));
        expected.splice(at..at, tail);
        expected.push(b'+');
        expected.extend(frame(&[0x20]));
        assert_eq!(
            String::from_utf8_lossy(&sent),
            String::from_utf8_lossy(&expected)
        );
        assert_eq!(mem.selected, [2], "Hg reaches the target");
        assert_eq!(mem.reads.last(), Some(&(0x1020, 1)));
        assert!(mem.reads.contains(&(0x1000, 0x40)));
    }

    #[test]
    fn gdb_dialect_and_no_ack_mode() {
        let mut input = packet(b"qSupported:multiprocess+;binary-upload+");
        input.extend(packet(b"QStartNoAckMode"));
        input.extend(packet(b"x0,0"));
        input.extend(packet(b"x1023,2"));
        input.extend(packet(b"x2000,2"));
        let mut mem = FakeMem::default();
        let (_, sent, _) = run(&input, &mut mem);
        let mut expected = frame(b"b");
        expected.extend(frame(b"b}\x03}\x04"));
        expected.extend(frame(b"E79"));
        assert_eq!(
            String::from_utf8_lossy(&sent),
            String::from_utf8_lossy(&expected),
            "no acks in no-ack mode, b prefixes"
        );
    }

    #[test]
    fn the_qsupported_reply_offers_binary_upload_only_when_asked() {
        for (offer, expect_added) in [(true, true), (false, false)] {
            let body: &[u8] = if offer {
                b"qSupported:binary-upload+"
            } else {
                b"qSupported:multiprocess+"
            };
            let input = packet(body);
            let mut sent = Vec::new();
            {
                let mut conn = BinaryReadConn::new(MemConn::new(&input, &mut sent, 1), 0x40);
                let mut mem = FakeMem::default();
                while conn.read_serving(&mut mem).is_ok() {}
                // gdbstub's answer, written a byte and a piece at a time.
                conn.write(b'+').unwrap();
                conn.write_all(b"$PacketSize=2*!;").unwrap();
                conn.write_all(b"vContSupported+").unwrap();
                conn.write(b'#').unwrap();
                let sum = checksum(b"PacketSize=2*!;vContSupported+");
                conn.write_all(format!("{sum:02x}").as_bytes()).unwrap();
                conn.flush().unwrap();
                // Later replies pass untouched.
                conn.write_all(&frame(b"PacketSize=1")).unwrap();
            }
            let mut expected = vec![b'+'];
            if expect_added {
                expected.extend(frame(b"PacketSize=2*!;vContSupported+;binary-upload+"));
            } else {
                expected.extend(frame(b"PacketSize=2*!;vContSupported+"));
            }
            expected.extend(frame(b"PacketSize=1"));
            assert_eq!(
                String::from_utf8_lossy(&sent),
                String::from_utf8_lossy(&expected)
            );
        }
    }

    #[test]
    fn bad_x_packets_end_the_session() {
        let mut mem = FakeMem::default();
        let (_, sent, err) = run(b"$x1000,4#00", &mut mem);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("checksum"), "{err}");
        assert!(sent.is_empty());
        let mut long = b"$x".to_vec();
        long.extend([b'0'; 100]);
        long.extend(b",1#00");
        let (_, _, err) = run(&long, &mut mem);
        assert!(err.to_string().contains("longer than"), "{err}");
        assert!(mem.reads.is_empty());
    }

    #[test]
    fn only_packet_starts_are_intercepted() {
        // An `x` inside another packet (or its checksum) is gdbstub's.
        let mut input = packet(b"qRcmd,$x");
        input.extend(b"$m1,1#x");
        input.extend(b"x");
        let mut mem = FakeMem::default();
        let (to_stub, sent, _) = run(&input, &mut mem);
        assert_eq!(to_stub, input);
        assert!(sent.is_empty());
    }
}
