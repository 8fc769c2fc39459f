//! Binary memory reads (`x`), end to end: LLDB (Debian's `lldb`) reads guest memory with
//! them, and a raw client speaks GDB 16's dialect (`binary-upload`; Debian 12 has no GDB 16)
//! and the dialect of clients that do not offer it. Every read is checked against the bytes
//! the guest holds and against the hex `m` read of the same memory.
//!
//! The guest is `spin.elf` (long mode, 4 GiB identity-mapped, 256 MiB of RAM), whose memory
//! at 2 MiB is free: the tests write a pattern there first (every byte value, the ones binary
//! data must escape, runs that run-length encoding shortens, noise).

// Tests state what they expect with unwrap, expect and panic; the crate's lints are for
// code a guest or a debugger can reach.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod gdb_support;
mod rsp_client;

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use gdb_support::{GDB_TIMEOUT, Vmm, gdb};
use rsp_client::{Rsp, spawn_with_gdb, unescape};

/// Where the pattern goes: RAM the guest does not use.
const PATTERN_AT: u64 = 0x20_0000;
/// Three of LLDB's `x` reads (64 KiB each) and a bit.
const PATTERN_LEN: usize = 0x3_0100;
/// The end of the guest's RAM (minivmm's default 256 MiB): a read across it is partial.
const RAM_END: u64 = 0x1000_0000;
/// Mapped by no page table entry of the guest (its identity map covers 4 GiB).
const UNMAPPED: u64 = 0x40_0000_0000;

/// Every byte value, then runs (of bytes that escape and of ones that do not, lengths
/// around what one run-length count holds), then noise.
fn pattern() -> Vec<u8> {
    let mut p: Vec<u8> = (0..=255u8).collect();
    for n in [3usize, 4, 6, 7, 8, 97, 98, 99, 300, 5000] {
        for b in [0u8, b'#', b'$', b'}', b'*', b'a', 0xff] {
            p.extend(std::iter::repeat_n(b, n));
        }
    }
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    while p.len() < PATTERN_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push((x >> 32) as u8);
    }
    p.truncate(PATTERN_LEN);
    p
}

fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("minivmm-binread-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs `lldb --batch` with `cmds` (after connecting to `port` with a packet log in
/// `log`), under a hard deadline; returns its output.
fn lldb(port: u16, log: &Path, cmds: &[String]) -> String {
    let mut cmd = Command::new("lldb");
    cmd.arg("--batch")
        .arg("-o")
        .arg(format!(
            "log enable -f {} gdb-remote packets",
            log.display()
        ))
        .arg("-o")
        .arg(format!("gdb-remote 127.0.0.1:{port}"));
    for c in cmds {
        cmd.arg("-o").arg(c);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning lldb (Debian package `lldb`)");
    let deadline = Instant::now() + GDB_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "lldb did not finish within {GDB_TIMEOUT:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `(request, reply)` pairs of LLDB's packet log (`send packet:` then `read packet:`),
/// bodies only.
fn lldb_packets(log: &str) -> Vec<(String, String)> {
    let body = |l: &str, key: &str| {
        let p = l.split_once(key)?.1.strip_prefix('$')?;
        Some(p.rsplit_once('#').map_or(p, |(b, _)| b).to_string())
    };
    let mut pairs = Vec::new();
    let mut sent: Option<String> = None;
    for l in log.lines() {
        if let Some(b) = body(l, "send packet: ") {
            sent = Some(b);
        } else if let Some(b) = body(l, "read packet: ")
            && let Some(s) = sent.take()
        {
            pairs.push((s, b));
        }
    }
    pairs
}

#[test]
fn lldb_reads_guest_memory_with_x_and_gets_what_gdb_reads() {
    let vmm = Vmm::start_logging("spin.elf", &[], "minivmm=debug");
    let data = pattern();
    let pat = temp_path("pattern.bin");
    std::fs::write(&pat, &data).unwrap();

    // GDB 13 (hex `m` reads) writes the pattern and reads it back, then lets the guest run on.
    let by_gdb = temp_path("gdb.bin");
    let end = PATTERN_AT + PATTERN_LEN as u64;
    let out = gdb(
        &vmm,
        &[
            &format!("restore {} binary {PATTERN_AT:#x}", pat.display()),
            &format!(
                "dump binary memory {} {PATTERN_AT:#x} {end:#x}",
                by_gdb.display()
            ),
            "detach",
        ],
    );
    out.expect("detached");
    assert!(
        std::fs::read(&by_gdb).unwrap() == data,
        "GDB's hex read differs from what it wrote:\n{}",
        out.text
    );
    assert!(
        !vmm.log().contains("reads memory in binary"),
        "GDB 13 has no x packet, yet:\n{}",
        vmm.log()
    );

    // LLDB attaches to the running VM and reads the same memory; then an address that has no
    // mapping (last: lldb --batch stops at the first failed command).
    let by_lldb = temp_path("lldb.bin");
    let log = temp_path("lldb-packets.log");
    let text = lldb(
        vmm.port,
        &log,
        &[
            format!(
                "memory read --binary --force -o {} {PATTERN_AT:#x} {end:#x}",
                by_lldb.display()
            ),
            format!("process plugin packet send m{:x},40", PATTERN_AT + 0x100),
            format!("memory read --force {UNMAPPED:#x} {:#x}", UNMAPPED + 0x10),
        ],
    );
    let got =
        std::fs::read(&by_lldb).unwrap_or_else(|e| panic!("LLDB wrote no file ({e}):\n{text}"));
    assert_eq!(got.len(), data.len(), "{text}");
    let first_diff = got.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "LLDB's read differs from the pattern:\n{text}"
    );
    assert!(
        text.contains(&format!("memory read failed for {UNMAPPED:#x}")),
        "{text}"
    );

    // How LLDB read it: `x0,0` answered OK, then `x` reads answered with the bytes alone,
    // and no hex read of the pattern but the one asked for by hand.
    let log = std::fs::read(&log).unwrap();
    let packets = lldb_packets(&String::from_utf8_lossy(&log));
    assert!(
        packets.iter().any(|(s, r)| s == "x0,0" && r == "OK"),
        "no x0,0 probe answered OK: {:?}",
        &packets[..packets.len().min(40)]
    );
    let x_reads: Vec<_> = packets
        .iter()
        .filter(|(s, _)| s.starts_with(&format!("x{PATTERN_AT:x},")))
        .collect();
    assert!(!x_reads.is_empty(), "LLDB did not read the pattern with x");
    let hex_reads: Vec<_> = packets
        .iter()
        .filter(|(s, _)| {
            s.strip_prefix('m')
                .and_then(|a| u64::from_str_radix(a.split(',').next()?, 16).ok())
                .is_some_and(|a| (PATTERN_AT..end).contains(&a))
        })
        .collect();
    assert_eq!(
        hex_reads.len(),
        1,
        "hex reads of the pattern: {hex_reads:?}"
    );
    // The hand-sent `m`: the same bytes in hex.
    let want_hex: String = data[0x100..0x140]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        text.contains(&format!("response: {want_hex}")),
        "m reply differs:\n{text}"
    );
    assert!(
        packets
            .iter()
            .any(|(s, r)| s.starts_with(&format!("x{UNMAPPED:x},")) && r == "E79"),
        "unmapped read not answered E79: {:?}",
        packets.iter().rev().take(5).collect::<Vec<_>>()
    );
    let log = vmm.log();
    assert!(
        log.contains("the debugger reads memory in binary (x packets, LLDB's format)"),
        "{log}"
    );
}

/// Writes the pattern with `X` packets (64 KiB-ish each, as GDB sizes them).
fn write_pattern(rsp: &mut Rsp, data: &[u8]) {
    for (i, chunk) in data.chunks(0x8000).enumerate() {
        let at = PATTERN_AT + (i * 0x8000) as u64;
        rsp.send_binary(&format!("X{at:x},{:x}:", chunk.len()), chunk);
        assert_eq!(rsp.recv("X").as_deref(), Some("OK"), "writing the pattern");
    }
}

fn hex_decode(hex: &[u8]) -> Vec<u8> {
    hex.chunks(2)
        .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
        .collect()
}

/// One client's view: (x reply, m reply) for each read, with the pattern in place.
fn x_and_m(rsp: &mut Rsp, addr: u64, len: usize) -> (Vec<u8>, Vec<u8>) {
    let x = rsp.ask_bytes(&format!("x{addr:x},{len:x}"));
    let m = rsp.ask_bytes(&format!("m{addr:x},{len:x}"));
    (x, m)
}

#[test]
fn gdb16_dialect_binary_upload_and_b_replies() {
    let data = pattern();
    for no_ack in [false, true] {
        let (vm, port) = spawn_with_gdb("spin.elf");
        let mut rsp = Rsp::connect(port);
        // GDB 16's qSupported (its features, binary-upload among them).
        let sup = rsp.handshake_with(
            "multiprocess+;swbreak+;hwbreak+;qRelocInsn+;fork-events+;vfork-events+;\
             exec-events+;vContSupported+;QThreadEvents+;QThreadOptions=5;no-resumed+;\
             memory-tagging+;xmlRegisters=i386;error-message+;binary-upload+",
            no_ack,
        );
        assert!(
            sup.split(';').any(|f| f == "binary-upload+"),
            "binary-upload+ not offered back: {sup}"
        );
        assert!(sup.starts_with("PacketSize="), "{sup}");
        write_pattern(&mut rsp, &data);

        assert_eq!(rsp.ask_bytes("x0,0"), b"b", "an empty read");
        // Reads of the pattern in pieces of several sizes, every byte checked: `b`, then the
        // bytes escaped; the same bytes as `m` gives in hex.
        let mut at = 0usize;
        for len in [1usize, 0x100, 0x1000, 0x8000, 0x1_0000, 0x7000] {
            let (x, m) = x_and_m(&mut rsp, PATTERN_AT + at as u64, len);
            assert_eq!(
                x.first(),
                Some(&b'b'),
                "x reply without b: {:?}",
                &x[..x.len().min(8)]
            );
            let x = unescape(&x[1..]);
            assert_eq!(x.len(), len);
            assert!(
                x == data[at..at + len],
                "x read at +{at:#x} differs from the pattern"
            );
            assert_eq!(hex_decode(&m), x, "x and m differ at +{at:#x}");
            at += len;
        }
        // The pattern's first bytes hold every value; the escaped ones are escaped.
        let raw = rsp.ask_bytes(&format!("x{:x},4", PATTERN_AT + u64::from(b'#')));
        assert_eq!(raw, b"b}\x03}\x04%&", "# and $ escaped");
        let raw = rsp.ask_bytes(&format!("x{:x},1", PATTERN_AT + u64::from(b'}')));
        assert_eq!(raw, b"b}]");

        // Readable only in part: what is readable, as for m.
        let (x, m) = x_and_m(&mut rsp, RAM_END - 0x10, 0x40);
        assert_eq!(x.first(), Some(&b'b'));
        assert_eq!(unescape(&x[1..]).len(), 0x10, "partial read");
        assert_eq!(hex_decode(&m), unescape(&x[1..]));
        // Nothing readable: an error, as for m.
        let (x, m) = x_and_m(&mut rsp, UNMAPPED, 0x10);
        assert_eq!(x, b"E79");
        assert_eq!(m, b"E79");
        // Longer than one request may be (the stub's packet size, more than gdbstub reads
        // for `m`): the first 64 KiB, and the client asks again for the rest.
        let x = rsp.ask_bytes(&format!("x{PATTERN_AT:x},ffffffffffffffff"));
        assert!(
            unescape(&x[1..]) == data[..0x1_0000],
            "a read clamped to 64 KiB"
        );
        // Malformed: an error, and the session goes on.
        assert_eq!(rsp.ask_bytes("x12,zz"), b"E79");
        assert_eq!(rsp.ask("g").len(), minivmm::arch::gdb::G_PACKET_LEN * 2);

        rsp.detach();
        drop(vm);
    }
}

#[test]
fn clients_without_binary_upload_get_lldbs_format() {
    let data = pattern();
    let (vm, port) = spawn_with_gdb("spin.elf");
    let mut rsp = Rsp::connect(port);
    let sup = rsp.handshake(true);
    assert!(!sup.contains("binary-upload"), "{sup}");
    write_pattern(&mut rsp, &data);
    assert_eq!(rsp.ask_bytes("x0,0"), b"OK", "LLDB's probe");
    let (x, m) = x_and_m(&mut rsp, PATTERN_AT, 0x1_0000);
    let x = unescape(&x);
    assert!(x == data[..0x1_0000], "x read differs from the pattern");
    assert_eq!(hex_decode(&m), x);
    assert_eq!(rsp.ask_bytes(&format!("x{UNMAPPED:x},10")), b"E79");
    // LLDB's documentation writes the numbers with 0x.
    assert_eq!(rsp.ask_bytes(&format!("x{PATTERN_AT:#x},0x3")), [0, 1, 2]);
    rsp.detach();
    drop(vm);
}
