//! Malformed or hostile input on the GDB port: the stub must answer with an error (or an
//! empty "unsupported" reply) or drop the connection; minivmm and the guest keep running,
//! the stub keeps accepting connections, and no guest memory changes that was not written.
//!
//! A raw RSP client (no GDB) throws the input; a real `gdb -batch` session checks at the end
//! that the stub still works. A test marked `#[ignore = "..."]` reproduces a known problem.

// Tests state what they expect with unwrap, expect and panic; the crate's lints are for
// code a guest or a debugger can reach.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod gdb_support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use gdb_support::{Vmm, gdb, symbol_addr};

/// Longest the stub may take to answer one packet.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What came back for a packet.
#[derive(Debug, PartialEq)]
enum Reply {
    /// A packet, run-length decoded.
    Packet(String),
    /// The stub closed the connection.
    Dropped,
}

impl Reply {
    fn is_error_or_unsupported(&self) -> bool {
        match self {
            Reply::Packet(p) => p.is_empty() || is_error(p),
            Reply::Dropped => false,
        }
    }
}

fn is_error(p: &str) -> bool {
    p.len() == 3 && p.starts_with('E') && p[1..].chars().all(|c| c.is_ascii_hexdigit())
}

/// A minimal GDB remote-protocol client (ack mode; never asks for QStartNoAckMode).
struct Rsp {
    stream: TcpStream,
}

fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

/// `$data#xx`.
fn frame(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 4);
    v.push(b'$');
    v.extend_from_slice(data);
    v.extend_from_slice(format!("#{:02x}", checksum(data)).as_bytes());
    v
}

/// Expands the stub's run-length encoding (`X*n`: n - 29 more copies of X).
fn rle_decode(body: &[u8]) -> String {
    let mut out: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'*' && i + 1 < body.len() {
            let last = *out.last().expect("RLE without a character to repeat");
            let n = body[i + 1] as usize - 29;
            out.extend(std::iter::repeat_n(last, n));
            i += 2;
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Rsp {
    fn connect(port: u16) -> Rsp {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
                    stream.set_nodelay(true).unwrap();
                    return Rsp { stream };
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot connect to the stub: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Sends raw bytes and reads the reply packet (acks skipped, the reply acked).
    fn raw(&mut self, bytes: &[u8]) -> Reply {
        if self.stream.write_all(bytes).is_err() {
            return Reply::Dropped;
        }
        self.read_reply(bytes)
    }

    fn read_reply(&mut self, sent: &[u8]) -> Reply {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut byte = [0u8; 1];
        let mut next = |s: &mut TcpStream| -> Option<u8> {
            loop {
                match s.read(&mut byte) {
                    Ok(0) => return None,
                    Ok(_) => return Some(byte[0]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        panic!(
                            "the stub did not answer {:?} within {REPLY_TIMEOUT:?} (hung?)",
                            String::from_utf8_lossy(&sent[..sent.len().min(80)])
                        )
                    }
                    Err(_) => return None, // reset
                }
                assert!(Instant::now() < deadline, "reply too slow");
            }
        };
        // Skip acks ('+'); a '-' asks for a resend, which we do not do for junk: treat the
        // next packet as the answer.
        loop {
            match next(&mut self.stream) {
                None => return Reply::Dropped,
                Some(b'$') => break,
                Some(_) => {}
            }
        }
        let mut body = Vec::new();
        loop {
            match next(&mut self.stream) {
                None => return Reply::Dropped,
                Some(b'#') => break,
                Some(b) => body.push(b),
            }
            assert!(
                body.len() <= 1 << 22,
                "reply to {:?} larger than 4 MiB",
                String::from_utf8_lossy(&sent[..sent.len().min(80)])
            );
        }
        let mut sum = [0u8; 2];
        for s in &mut sum {
            match next(&mut self.stream) {
                None => return Reply::Dropped,
                Some(b) => *s = b,
            }
        }
        let want = format!("{:02x}", checksum(&body));
        assert_eq!(
            want.as_bytes(),
            &sum,
            "bad checksum from the stub: {:?}",
            String::from_utf8_lossy(&body)
        );
        let _ = self.stream.write_all(b"+");
        Reply::Packet(rle_decode(&body))
    }

    fn packet(&mut self, data: &str) -> Reply {
        self.raw(&frame(data.as_bytes()))
    }

    /// A packet that must be answered (not dropped).
    #[track_caller]
    fn ask(&mut self, data: &str) -> String {
        match self.packet(data) {
            Reply::Packet(p) => p,
            Reply::Dropped => panic!("the stub dropped the connection on {data:?}"),
        }
    }

    /// The stub's advertised PacketSize (bytes).
    fn packet_size(&mut self) -> usize {
        let sup = self.ask("qSupported:multiprocess+;xmlRegisters=i386");
        let size = sup
            .split(';')
            .find_map(|f| f.strip_prefix("PacketSize="))
            .unwrap_or_else(|| panic!("no PacketSize in {sup:?}"));
        usize::from_str_radix(size, 16).expect("PacketSize hex")
    }

    /// Reads `len` bytes at `addr` with `m` packets.
    fn read_mem(&mut self, addr: u64, len: usize) -> Vec<u8> {
        let hex = self.ask(&format!("m{addr:x},{len:x}"));
        assert!(!is_error(&hex), "m{addr:x},{len:x} failed: {hex}");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        assert_eq!(bytes.len(), len, "short read at {addr:#x}");
        bytes
    }

    /// The stub still works: (re)connect if needed and ask for the stop reason.
    fn alive(mut self, vmm: &mut Vmm, what: &str) -> Rsp {
        assert!(
            vmm.running(),
            "minivmm died after {what}\n{}",
            vmm.describe()
        );
        let reply = self.packet("?");
        if let Reply::Packet(p) = &reply
            && p.starts_with('T')
        {
            return self;
        }
        // Dropped (or the junk left the stream out of step): a new connection must work.
        drop(self);
        let mut fresh = Rsp::connect(vmm.port);
        fresh.packet_size();
        let p = fresh.ask("?");
        assert!(
            p.starts_with('T') || p.starts_with('S'),
            "after {what}: stop reason {p:?}"
        );
        assert!(
            vmm.running(),
            "minivmm died after {what}\n{}",
            vmm.describe()
        );
        fresh
    }
}

/// Sends each packet; every answer must be an error/unsupported reply or a dropped
/// connection (then the test reconnects). Returns the client, still usable.
fn throw(mut rsp: Rsp, vmm: &mut Vmm, batch: &[&[u8]]) -> Rsp {
    for &junk in batch {
        let shown = String::from_utf8_lossy(&junk[..junk.len().min(60)]).into_owned();
        let reply = rsp.raw(junk);
        match &reply {
            Reply::Dropped => {}
            Reply::Packet(p) => assert!(
                reply.is_error_or_unsupported(),
                "{shown:?} was accepted: {p:?}"
            ),
        }
        rsp = rsp.alive(vmm, &shown);
    }
    rsp
}

/// Everything that is answered without dropping the connection, on gdbtest.elf (a drop would
/// resume the VM, which then runs to its end): memory at func_a and the data are unchanged,
/// and after `c` the guest finishes normally (the real-GDB check is in the echo.elf test,
/// since ending this raw session would resume the VM).
#[test]
fn hostile_packets_answered_and_memory_unchanged() {
    let mut vmm = Vmm::start("gdbtest.elf", &[]);
    let func_a = symbol_addr(&vmm.guest, "func_a");
    let counter = symbol_addr(&vmm.guest, "counter");
    let mut rsp = Rsp::connect(vmm.port);
    rsp.packet_size();
    let code_before = rsp.read_mem(func_a, 256);
    let data_before = rsp.read_mem(counter, 32);

    let wrap_write = format!("Mfffffffffffffff0,20:{}", "00".repeat(32));
    let batch: Vec<&str> = vec![
        // Huge and wrapping memory ranges.
        "mffffffffffffffff,ffffffffffffffff",
        "mfffffffffffffff0,20",
        "m0000dead00000000,10",
        &wrap_write,
        "Mffffffffffffffff,2:0000",
        // Registers that do not exist.
        "P99=00000000",
        "Pffff=00",
        "p99",
        // A thread that does not exist (selecting one drops the connection: see
        // hostile_missing_thread_ids_refused), and "any thread".
        "T999",
        "Hg0",
        // Breakpoint kinds x86 does not have; removing what is not there.
        "Z9,100000,1",
        // Watchpoints of odd sizes are legitimate (GDB watches structs): they may be taken
        // or refused, and are removed again.
        "Z2,101000,3",
        "Z4,101000,8",
        "z2,101000,3",
        "z4,101000,8",
        "z0,100041,1",
        "z1,100041,1",
        // Unknown queries and verbs.
        "qFooBar",
        "vFooBar",
        "vMustReplyEmpty",
        "QFoo:bar",
        "X100000,0:",
        // Binary reads (`x`, LLDB's format here: no binary-upload offered): a legitimate one,
        // then ranges that cannot be read and malformed ones, which are errors.
        "x1000,10",
        "xffffffffffffffff,ffffffffffffffff",
        "x0000dead00000000,10",
        "x1000",
        "x1000,zz",
        "x-1,1",
        // A length beyond any request: the first 64 KiB, the client asks again for the rest
        // (tests/binary_read.rs checks the size).
        "x0,ffffffffffffffff",
    ];
    for junk in &batch {
        let reply = rsp.packet(junk);
        match (&reply, *junk) {
            // Real-thread selections are fine.
            (Reply::Packet(p), "Hg0") => assert_eq!(p, "OK"),
            // 16 bytes of the guest's (zeroed) low memory, unescaped: no prefix, no error.
            (Reply::Packet(p), "x1000,10") => assert_eq!(p.as_bytes(), [0; 16], "{junk}"),
            (Reply::Packet(p), "x0,ffffffffffffffff") => {
                assert!(!p.is_empty() && !is_error(p), "{junk}: {} bytes", p.len())
            }
            (Reply::Packet(p), "X100000,0:") => assert!(p == "OK" || p.is_empty() || is_error(p)),
            (
                Reply::Packet(p),
                "z0,100041,1" | "z1,100041,1" | "Z2,101000,3" | "Z4,101000,8" | "z2,101000,3"
                | "z4,101000,8",
            ) => {
                assert!(p == "OK" || p.is_empty() || is_error(p), "{junk}: {p}")
            }
            (Reply::Packet(_), _) => assert!(
                reply.is_error_or_unsupported(),
                "{junk:?} was accepted: {reply:?}"
            ),
            (Reply::Dropped, _) => panic!(
                "the stub dropped the connection on {junk:?}; the VM then runs on and this \
                 test cannot go on\n{}",
                vmm.describe()
            ),
        }
        assert!(
            vmm.running(),
            "minivmm died on {junk:?}\n{}",
            vmm.describe()
        );
    }
    // The stub still answers, registers are intact, and memory is unchanged.
    rsp.ask("Hg0");
    let stop = rsp.ask("?");
    assert!(stop.starts_with('T'), "{stop}");
    assert_eq!(
        rsp.read_mem(func_a, 256),
        code_before,
        "code at func_a changed"
    );
    assert_eq!(
        rsp.read_mem(counter, 32),
        data_before,
        "counter/watched changed"
    );
    // Continue: the guest runs to its end and the stub reports the exit (W00).
    assert_eq!(rsp.ask("c"), "W00");
    drop(rsp);
    vmm.expect_exit(0);
    assert!(
        vmm.serial().contains("gdbtest: counter=5"),
        "{}",
        vmm.describe()
    );
}

/// Input that may make the stub drop the connection, on echo.elf (which waits for serial
/// input forever, so it is still there after a drop resumed it): bad checksums, non-hex,
/// oversized packets, half packets, NAKs, malformed verbs. Planted breakpoints are removed
/// when a connection drops. At the end a real GDB session sees the same memory, and the
/// guest still echoes a line and exits normally.
#[test]
fn hostile_input_may_drop_but_stub_and_guest_survive() {
    let mut vmm = Vmm::start("echo.elf", &[]);
    let read_loop = symbol_addr(&vmm.guest, "read_loop");
    let line_buf = symbol_addr(&vmm.guest, "line_buf");
    let mut rsp = Rsp::connect(vmm.port);
    let packet_size = rsp.packet_size();
    let code_before = rsp.read_mem(read_loop, 256);
    let data_before = rsp.read_mem(line_buf, 256);

    let oversized = frame(&vec![b'q'; packet_size + 64]);
    let bad_sum = b"$g#00".to_vec();
    let non_hex_sum = b"$g#zz".to_vec();
    let m_bad_hex = frame(b"mzz,10");
    let m_bad_len = frame(b"m100000,zz");
    let m_wrap = frame(b"mffffffffffffff00,200");
    let g_short = frame(b"G00");
    let g_long = frame(format!("G{}", "0".repeat(2000)).as_bytes());
    let hg_neg = frame(b"Hg-1");
    let vcont_bad = frame(b"vCont;z");
    let rcmd_bad = frame(b"qRcmd,zz");
    let z_bad = frame(b"Z0,zz,1");
    let empty = frame(b"");
    let xfer_bad = frame(b"qXfer:features:read:nosuch.xml:0,100");
    let nak = b"-".to_vec();
    let batches: Vec<(&str, Vec<&[u8]>)> = vec![
        ("checksums", vec![&bad_sum, &non_hex_sum]),
        ("non-hex", vec![&m_bad_hex, &m_bad_len, &z_bad, &rcmd_bad]),
        ("oversized", vec![&oversized]),
        ("ranges", vec![&m_wrap]),
        ("registers", vec![&g_short, &g_long]),
        ("threads", vec![&hg_neg]),
        ("verbs", vec![&vcont_bad, &empty, &xfer_bad]),
        ("nak", vec![&nak]),
    ];
    for (name, batch) in &batches {
        rsp = throw(rsp, &mut vmm, batch);
        assert!(vmm.running(), "minivmm died after batch {name}");
    }

    // A breakpoint planted, then the connection lost mid-packet: the int3 must not stay
    // in guest memory.
    rsp.ask("Hg1");
    assert_eq!(rsp.ask(&format!("Z0,{read_loop:x},1")), "OK");
    let hidden = rsp.read_mem(read_loop, 4);
    assert_eq!(hidden, code_before[..4], "the stub shows its int3 to GDB");
    rsp.stream.write_all(b"$m1000").unwrap();
    drop(rsp);
    let mut rsp = Rsp::connect(vmm.port);
    rsp.packet_size();
    assert!(rsp.ask("?").starts_with('T'));
    assert!(vmm.running(), "{}", vmm.describe());

    assert_eq!(rsp.read_mem(read_loop, 256), code_before, "code changed");
    assert_eq!(rsp.read_mem(line_buf, 256), data_before, "line_buf changed");
    assert_eq!(rsp.ask("D"), "OK");
    drop(rsp);

    // A real GDB session still works and sees the same code.
    let out = gdb(
        &vmm,
        &[
            "x/4xb read_loop",
            "p $pc >= &_start && $pc < &i8042_reset",
            "info threads",
            "detach",
        ],
    );
    let want = format!(
        "<read_loop>:\t0x{:02x}\t0x{:02x}\t0x{:02x}\t0x{:02x}",
        code_before[0], code_before[1], code_before[2], code_before[3]
    );
    out.expect(&want);
    assert_eq!(out.values(), vec!["1"], "{}", out.text);
    out.expect("[Inferior 1 (process 1) detached]");

    vmm.send_input("still here\n");
    vmm.expect_exit(0);
    assert!(
        vmm.serial().contains("echo: still here"),
        "{}",
        vmm.describe()
    );
}

/// `m` with a valid address and a huge length must be answered promptly with an error or
/// at most PacketSize of data.
#[test]
fn hostile_huge_read_from_valid_address() {
    let mut vmm = Vmm::start("echo.elf", &["--mem", "64"]);
    let mut rsp = Rsp::connect(vmm.port);
    let size = rsp.packet_size();
    let t = Instant::now();
    let reply = rsp.ask("m100000,ffffffffffffffff");
    assert!(t.elapsed() < REPLY_TIMEOUT, "took {:?}", t.elapsed());
    assert!(
        is_error(&reply) || reply.len() <= size,
        "reply of {} characters, ends {:?}",
        reply.len(),
        &reply[reply.len().saturating_sub(16)..]
    );
    drop(rsp);
    let _ = vmm.running();
}

/// `M`/`X` whose length does not match its data must be refused (an error or a dropped
/// connection) and change nothing.
#[test]
fn hostile_write_with_mismatched_length() {
    let mut vmm = Vmm::start("echo.elf", &[]);
    let mut rsp = Rsp::connect(vmm.port);
    rsp.packet_size();
    let before = rsp.read_mem(0x100000, 4);
    for bad in [
        "M100000,ffffffffffffffff:00",
        "M100000,1:00000000",
        "X100000,1:\0\0\0",
    ] {
        match rsp.packet(bad) {
            Reply::Dropped => {
                // The VM runs on after a dropped connection; a new one looks again.
                rsp = Rsp::connect(vmm.port);
                rsp.packet_size();
            }
            Reply::Packet(r) => assert!(is_error(&r), "{bad:?} was accepted: {r}"),
        }
        assert_eq!(
            rsp.read_mem(0x100000, 4),
            before,
            "{bad:?} changed guest memory"
        );
    }
    let _ = vmm.running();
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| {
            let v = l.strip_prefix(field)?.strip_prefix(':')?;
            v.trim().strip_suffix(" kB")?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {field} in\n{status}"))
}

/// Reads until the stub closes the connection (end of file or reset); panics if it is still
/// open after `timeout`.
fn expect_closed(stream: &mut TcpStream, timeout: Duration, what: &str) {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "the stub kept the connection open {:?} after {what}",
                    start.elapsed()
                )
            }
            Err(_) => return, // reset
        }
    }
}

/// Waits (at most REPLY_TIMEOUT) for minivmm to log `text`: a dropped session is logged
/// after its socket is closed.
#[track_caller]
fn expect_log(vmm: &Vmm, text: &str) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while !vmm.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the log\n{}",
            vmm.describe()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `$` and then tens of MiB without `#`: minivmm's memory must not grow with the packet. The
/// stub drops the connection once the packet outgrows its buffer, and serves the next client.
#[test]
fn hostile_endless_packet_memory_bounded() {
    const ENDLESS: usize = 64 << 20;
    const MAX_GROWTH_KIB: u64 = 20 << 10;
    let mut vmm = Vmm::start("echo.elf", &[]);
    let mut rsp = Rsp::connect(vmm.port);
    rsp.packet_size();
    let pid = vmm.pid();
    let rss_before = proc_status_kib(pid, "VmRSS");
    // Peak RSS from here on: "5" resets the high-water mark to the current RSS.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("resetting VmHWM");

    let mut out = rsp.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        // Fails once the stub closes the connection.
        let chunk = vec![b'a'; 1 << 20];
        let mut sent = 0;
        if out.write_all(b"$").is_ok() {
            while sent < ENDLESS && out.write_all(&chunk).is_ok() {
                sent += chunk.len();
            }
        }
        sent
    });
    let sent = writer.join().unwrap();
    let growth = proc_status_kib(pid, "VmHWM").saturating_sub(rss_before);
    assert!(
        growth < MAX_GROWTH_KIB,
        "minivmm's RSS grew by {growth} KiB on a packet of {sent} bytes"
    );
    assert!(
        sent < ENDLESS,
        "the stub took all {sent} bytes of one packet"
    );
    expect_closed(&mut rsp.stream, REPLY_TIMEOUT, "an endless packet");
    expect_log(&vmm, "oversized packet");

    let mut rsp = rsp.alive(&mut vmm, "an endless packet");
    let regs = rsp.ask("g");
    assert!(!is_error(&regs) && !regs.is_empty(), "g: {regs:?}");
}

/// minivmm's `STALL_TIMEOUT`: how long a packet may stall halfway.
const STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A client that sends half a packet and then nothing must not keep the next client waiting
/// (one client is served at a time): the stub closes it after its stall timeout. A client
/// quiet between packets, at a stop or while the VM runs, is not timed out.
#[test]
fn hostile_half_packet_times_out() {
    let vmm = Vmm::start("echo.elf", &[]);
    let mut a = Rsp::connect(vmm.port);
    a.packet_size();
    a.stream.write_all(b"$m1000").unwrap();
    let mut b = Rsp::connect(vmm.port);
    b.stream.write_all(&frame(b"?")).unwrap();
    expect_closed(
        &mut a.stream,
        STALL_TIMEOUT + REPLY_TIMEOUT,
        "half a packet",
    );
    expect_log(&vmm, "part of a packet");
    // B's `?` waited for A; now it is answered.
    let stop = b.read_reply(b"?");
    assert!(
        matches!(&stop, Reply::Packet(p) if p.starts_with('T')),
        "{stop:?}"
    );
    let regs = b.ask("g");
    assert!(!is_error(&regs) && !regs.is_empty(), "g: {regs:?}");

    // Quiet at a stop, then while the VM runs (echo.elf waits for input): still connected.
    std::thread::sleep(STALL_TIMEOUT + Duration::from_secs(1));
    assert!(b.ask("?").starts_with('T'), "{}", vmm.describe());
    b.stream.write_all(&frame(b"c")).unwrap();
    std::thread::sleep(STALL_TIMEOUT + Duration::from_secs(1));
    let stop = b.raw(b"\x03");
    assert!(
        matches!(&stop, Reply::Packet(p) if p.starts_with('T')),
        "Ctrl-C after a long run: {stop:?}\n{}",
        vmm.describe()
    );
}

/// Thread ids that do not exist (vCPU threads are 1..=N): packets naming one get an error or
/// the empty reply, or end the session, and change nothing. gdbstub 0.7 would answer `Hg`/`Hc`
/// itself with OK, so minivmm drops the connection at such a selection; it treats a refused
/// resume action as fatal, so `vCont;c:999` ends the session too (as a disconnect would). None
/// may hang or change guest memory.
#[test]
fn hostile_missing_thread_ids_refused() {
    let mut vmm = Vmm::start("echo.elf", &[]);
    let read_loop = symbol_addr(&vmm.guest, "read_loop");
    let mut rsp = Rsp::connect(vmm.port);
    rsp.packet_size();
    assert_eq!(rsp.ask("Hg1"), "OK");
    let mut regs = rsp.ask("g");
    let code = rsp.read_mem(read_loop, 64);
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(rsp.ask("qThreadExtraInfo,1"), hex("vCPU 0"));

    for p in ["qThreadExtraInfo,999", "qThreadExtraInfo,p1.999", "T999"] {
        let r = rsp.ask(p);
        assert!(r.is_empty() || is_error(&r), "{p:?} was accepted: {r:?}");
    }
    // Thread 0 ("any") and -1 ("all") are valid selections.
    for p in ["Hg0", "Hc-1", "Hgp1.1"] {
        assert_eq!(rsp.ask(p), "OK", "{p}");
    }
    // Selecting a missing thread (gdbstub would say OK) or resuming one drops the
    // connection; nothing changes and the VM runs on, as after any disconnect.
    for p in ["Hg999", "Hc999", "Hgp1.999", "vCont;c:999"] {
        match rsp.packet(p) {
            Reply::Packet(r) => {
                assert!(is_error(&r), "{p:?} was accepted: {r:?}");
                assert_eq!(rsp.ask("g"), regs, "{p:?} changed the registers");
            }
            Reply::Dropped => {
                assert!(vmm.running(), "{}", vmm.describe());
                rsp = Rsp::connect(vmm.port);
                rsp.packet_size();
                assert_eq!(rsp.ask("Hg1"), "OK", "after {p:?}");
                regs = rsp.ask("g");
            }
        }
    }
    assert_eq!(rsp.read_mem(read_loop, 64), code, "code changed");
    assert_eq!(rsp.ask("D"), "OK");
    drop(rsp);
    vmm.send_input("still here\n");
    vmm.expect_exit(0);
    assert!(
        vmm.serial().contains("echo: still here"),
        "{}",
        vmm.describe()
    );
}
