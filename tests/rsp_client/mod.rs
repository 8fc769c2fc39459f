//! A small GDB remote-protocol client for `tests/hardening.rs` and `tests/soak.rs`: packets
//! out, packets in, stop replies parsed (every read has a deadline, so a stub that never
//! answers fails the test instead of hanging it); and [`spawn_with_gdb`], minivmm with a
//! stub as a `common::Vm` (pid, signals). Crates using this need `mod common; mod gdb_support;`.

// Each test crate that includes this module uses a different subset of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::Vm;

/// Longest the stub may take to answer one packet (or to report a stop after a resume).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Rsp {
    out: TcpStream,
    input: BufReader<TcpStream>,
    ack: bool,
}

fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

impl Rsp {
    /// Connects to the stub on 127.0.0.1:`port` (retrying for a few seconds).
    pub fn connect(port: u16) -> Rsp {
        let deadline = Instant::now() + Duration::from_secs(5);
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot connect to the stub: {e}");
                    thread::sleep(Duration::from_millis(20));
                }
            }
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Rsp {
            input: BufReader::new(stream.try_clone().expect("cloning the socket")),
            out: stream,
            ack: true,
        }
    }

    /// `qSupported` as GDB sends it (multiprocess thread ids), then no-ack mode if `no_ack`.
    pub fn handshake(&mut self, no_ack: bool) -> String {
        self.handshake_with("multiprocess+;swbreak+;hwbreak+;vContSupported+", no_ack)
    }

    /// `qSupported:<features>`, then no-ack mode if `no_ack`; returns the stub's features.
    pub fn handshake_with(&mut self, features: &str, no_ack: bool) -> String {
        let sup = self.ask(&format!("qSupported:{features}"));
        if no_ack {
            assert_eq!(self.ask("QStartNoAckMode"), "OK");
            self.ack = false;
        }
        sup
    }

    /// Sends one packet without waiting for anything.
    pub fn send(&mut self, data: &str) {
        let framed = format!("${data}#{:02x}", checksum(data.as_bytes()));
        self.out
            .write_all(framed.as_bytes())
            .unwrap_or_else(|e| panic!("sending {data:?}: {e}"));
    }

    fn byte(&mut self, what: &str) -> Option<u8> {
        let mut b = [0u8];
        loop {
            match self.input.read(&mut b) {
                Ok(0) => return None,
                Ok(_) => return Some(b[0]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("no reply to {what:?} within {REPLY_TIMEOUT:?}: the stub hangs")
                }
                Err(_) => return None,
            }
        }
    }

    /// Reads the next packet (acks skipped, run-length encoding expanded); `None` if the
    /// stub closed the connection. `what` names the request, for the panic on timeout.
    pub fn recv(&mut self, what: &str) -> Option<String> {
        self.recv_bytes(what)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// [`Rsp::recv`] for binary replies: the body's bytes, run-length encoding expanded
    /// (escapes are the caller's: what they mean depends on the packet).
    pub fn recv_bytes(&mut self, what: &str) -> Option<Vec<u8>> {
        loop {
            match self.byte(what)? {
                b'$' => break,
                b'+' => {}
                other => panic!("unexpected byte {other:#x} before a packet ({what:?})"),
            }
        }
        let mut body = Vec::new();
        self.input
            .read_until(b'#', &mut body)
            .unwrap_or_else(|e| panic!("reading the reply to {what:?}: {e}"));
        assert_eq!(body.pop(), Some(b'#'), "truncated reply to {what:?}");
        let sum = [self.byte(what)?, self.byte(what)?];
        assert_eq!(
            format!("{:02x}", checksum(&body)).as_bytes(),
            sum,
            "bad checksum on the reply to {what:?}"
        );
        if self.ack {
            self.out.write_all(b"+").expect("sending an ack");
        }
        Some(rle_decode(&body))
    }

    /// Sends a packet and returns its reply as bytes (see [`Rsp::recv_bytes`]).
    #[track_caller]
    pub fn ask_bytes(&mut self, data: &str) -> Vec<u8> {
        self.send(data);
        self.recv_bytes(data)
            .unwrap_or_else(|| panic!("the stub closed the connection on {data:?}"))
    }

    /// Sends a packet with binary data after `head` (`X` packets), escaped.
    pub fn send_binary(&mut self, head: &str, data: &[u8]) {
        let mut body = head.as_bytes().to_vec();
        for &b in data {
            if matches!(b, b'#' | b'$' | b'}' | b'*') {
                body.extend([b'}', b ^ 0x20]);
            } else {
                body.push(b);
            }
        }
        let mut framed = vec![b'$'];
        framed.extend(&body);
        framed.extend(format!("#{:02x}", checksum(&body)).as_bytes());
        self.out
            .write_all(&framed)
            .unwrap_or_else(|e| panic!("sending {head:?}: {e}"));
    }

    /// Sends a packet and returns its reply; panics if the connection drops.
    #[track_caller]
    pub fn ask(&mut self, data: &str) -> String {
        self.send(data);
        self.recv(data)
            .unwrap_or_else(|| panic!("the stub closed the connection on {data:?}"))
    }

    /// Sends a resume packet and waits for the stop reply.
    #[track_caller]
    pub fn resume(&mut self, data: &str) -> Stop {
        Stop::parse(&self.ask(data))
    }

    /// A register of thread `tid` (`Hg` then `p`), as the little-endian value.
    pub fn reg(&mut self, tid: usize, regno: usize) -> u64 {
        assert_eq!(self.ask(&format!("Hgp1.{tid:x}")), "OK");
        le_hex(&self.ask(&format!("p{regno:x}")))
    }

    /// `D`, then waits for the stub to close its end.
    pub fn detach(mut self) {
        assert_eq!(self.ask("D"), "OK");
        let _ = self.out.shutdown(std::net::Shutdown::Write);
        while self.byte("D").is_some() {}
    }
}

/// minivmm on `guest_name` with a GDB stub (the VM waits for GDB), as a [`Vm`] (pid,
/// signals, stdin); retried if the port was taken. The crate must have `mod common;`.
pub fn spawn_with_gdb(guest_name: &str) -> (Vm, u16) {
    let kernel = crate::gdb_support::guest(guest_name);
    for _ in 0..3 {
        let port = crate::gdb_support::free_port();
        let port_arg = port.to_string();
        let args = [
            "--kernel".as_ref(),
            kernel.as_os_str(),
            "--gdb".as_ref(),
            port_arg.as_ref(),
        ];
        let mut vm = Vm::spawn(args, &[("RUST_LOG", "minivmm=info")]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = String::from_utf8_lossy(&vm.output_so_far().1).into_owned();
            if log.contains("waiting for GDB on") {
                return (vm, port);
            }
            if let Some(out) = vm.wait_timeout(Duration::ZERO) {
                eprintln!("minivmm did not start (port {port} taken?):\n{out}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "minivmm did not listen for GDB:\n{log}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
    panic!("could not start minivmm with a GDB stub");
}

/// Register numbers in the stub's (QEMU's) x86-64 layout.
pub const RAX: usize = 0;
pub const RBP: usize = 6;
pub const RSP: usize = 7;
pub const RIP: usize = 0x10;

/// A register value as the protocol writes it (target byte order, hex), up to 8 bytes.
fn le_hex(hex: &str) -> u64 {
    let bytes: Vec<u8> = (0..hex.len().min(16))
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or_else(|_| panic!("{hex}")))
        .collect();
    bytes.iter().rev().fold(0, |v, &b| (v << 8) | u64::from(b))
}

/// Undoes the escapes of binary data (`}` then the byte XOR 0x20).
pub fn unescape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut it = data.iter();
    while let Some(&c) = it.next() {
        if c == b'}' {
            out.push(it.next().expect("escape at the end of the data") ^ 0x20);
        } else {
            out.push(c);
        }
    }
    out
}

/// Expands run-length encoding (`X*n`: n - 29 more copies of X).
fn rle_decode(body: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'*' && i + 1 < body.len() {
            let last = *out.last().expect("RLE without a character to repeat");
            out.extend(std::iter::repeat_n(last, usize::from(body[i + 1]) - 29));
            i += 2;
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

/// A stop reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// `T`/`S`: signal, thread id (tid, not multiprocess-qualified), stop-reason keys seen,
    /// and the registers sent along (number, little-endian value).
    Signal {
        signal: u8,
        tid: Option<usize>,
        reasons: Vec<String>,
        regs: Vec<(usize, u64)>,
    },
    /// `W`: the inferior exited with this code.
    Exited(u8),
    /// Anything else (an error reply, `X`, ...), as received.
    Other(String),
}

impl Stop {
    pub fn parse(p: &str) -> Stop {
        let hex = |s: &str| u8::from_str_radix(s, 16).ok();
        if let Some(code) = p.strip_prefix('W').and_then(|r| hex(r.split(';').next()?)) {
            return Stop::Exited(code);
        }
        let Some(signal) = p
            .get(1..3)
            .filter(|_| p.starts_with(['T', 'S']))
            .and_then(hex)
        else {
            return Stop::Other(p.to_string());
        };
        let mut tid = None;
        let mut reasons = Vec::new();
        let mut regs = Vec::new();
        for field in p[3..].split(';').filter(|f| !f.is_empty()) {
            let (key, val) = field.split_once(':').unwrap_or((field, ""));
            if key == "thread" {
                let t = val.rsplit('.').next().unwrap_or(val);
                tid = usize::from_str_radix(t, 16).ok();
            } else if !key.chars().all(|c| c.is_ascii_hexdigit()) {
                reasons.push(key.to_string());
            } else if let Ok(n) = usize::from_str_radix(key, 16) {
                regs.push((n, le_hex(val)));
            }
        }
        Stop::Signal {
            signal,
            tid,
            reasons,
            regs,
        }
    }

    /// A register the stop reply carried.
    pub fn expedited(&self, regno: usize) -> Option<u64> {
        match self {
            Stop::Signal { regs, .. } => regs.iter().find(|r| r.0 == regno).map(|r| r.1),
            _ => None,
        }
    }

    /// The stopped thread of a `T05` (SIGTRAP) stop; panics on anything else.
    #[track_caller]
    pub fn trap_tid(&self) -> usize {
        match self {
            Stop::Signal {
                signal: 5,
                tid: Some(t),
                ..
            } => *t,
            other => panic!("expected a SIGTRAP stop with a thread, got {other:?}"),
        }
    }
}

#[test]
fn stop_replies_parse() {
    assert_eq!(Stop::parse("W03"), Stop::Exited(3));
    assert_eq!(Stop::parse("W00;process:1"), Stop::Exited(0));
    assert_eq!(
        Stop::parse("T05thread:p01.03;hwbreak:;"),
        Stop::Signal {
            signal: 5,
            tid: Some(3),
            reasons: vec!["hwbreak".into()],
            regs: vec![],
        }
    );
    assert_eq!(
        Stop::parse("T0506:3412;thread:0a;"),
        Stop::Signal {
            signal: 5,
            tid: Some(10),
            reasons: vec![],
            regs: vec![(6, 0x1234)],
        }
    );
    assert_eq!(Stop::parse("E01"), Stop::Other("E01".into()));
    assert_eq!(rle_decode(b"0* "), b"0000");
    assert_eq!(unescape(b"a}\x03}]"), b"a#}");
}
