//! Register layout against the XML, conversions, and a real GDB where one is installed.

use core::num::NonZeroUsize;

use gdbstub::arch::{Arch, RegId, Registers};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::kvm::*;
use super::reg_id::*;
use super::*;
use std::process::Command;

/// (name, bitsize) of every `<reg` element, in document order.
fn xml_regs() -> Vec<(String, usize)> {
    let attr = |tag: &str, key: &str| -> String {
        let pat = format!("{key}=\"");
        let start = tag.find(&pat).expect("attribute present") + pat.len();
        let len = tag[start..].find('"').expect("closing quote");
        tag[start..start + len].to_string()
    };
    TARGET_XML
        .split("<reg ")
        .skip(1)
        .map(|rest| {
            let tag = &rest[..rest.find("/>").expect("self-closing reg")];
            (
                attr(tag, "name"),
                attr(tag, "bitsize").parse().expect("bitsize"),
            )
        })
        .collect()
}

fn serialize(r: &X86_64KvmRegs) -> Vec<u8> {
    let mut out = Vec::new();
    r.gdb_serialize(|b| out.push(b.expect("every register is available")));
    out
}

/// Byte offset of each register in the `g` packet.
fn offsets() -> Vec<usize> {
    X86_64KvmRegId::all()
        .scan(0, |off, id| {
            let here = *off;
            *off += id.size();
            Some(here)
        })
        .collect()
}

/// Every byte of every field distinct-ish and non-zero.
fn sample() -> X86_64KvmRegs {
    let mut r = X86_64KvmRegs::default();
    let mut bytes = Vec::with_capacity(G_PACKET_LEN);
    for i in 0..G_PACKET_LEN {
        bytes.push((i * 7 % 251 + 1) as u8);
    }
    r.gdb_deserialize(&bytes).expect("full-length block");
    r
}

fn gdb_available() -> bool {
    match Command::new("gdb").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            println!("NOTICE: gdb not found on PATH; skipping GDB-backed check");
            false
        }
    }
}

fn temp_xml(tag: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("minivmm-tdesc-{}-{tag}.xml", std::process::id()));
    std::fs::write(&path, TARGET_XML).expect("write temp xml");
    path
}

#[test]
fn roundtrip_serialize_deserialize() {
    let mut r = X86_64KvmRegs {
        regs: core::array::from_fn(|i| 0x1111_0000_0000_0000 + i as u64),
        rip: 0xffff_ffff_8100_0000,
        eflags: 0x0024_0246,
        cs: 0x10,
        ss: 0x18,
        ds: 0x20,
        es: 0x28,
        fs: 0x30,
        gs: 0x38,
        fs_base: 0x7fff_0000_1000,
        gs_base: 0xffff_8880_0000_2000,
        k_gs_base: 0x7fff_0000_3000,
        cr0: 0x8005_0033,
        cr2: 0xdead_b000,
        cr3: 0x0123_4000,
        cr4: 0x0037_06f0,
        cr8: 0xf,
        efer: 0xd01,
        st: core::array::from_fn(|i| core::array::from_fn(|j| (0x40 + i * 10 + j) as u8)),
        fctrl: 0x37f,
        fstat: 0x3800,
        ftag: 0x5a5a,
        fiseg: 0x1234,
        fioff: 0x5678_9abc,
        foseg: 0x2345,
        fooff: 0x6789_abcd,
        fop: 0x7ff,
        xmm: core::array::from_fn(|i| 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f00 + i as u128),
        mxcsr: 0x1f80,
    };
    let bytes = serialize(&r);
    assert_eq!(bytes.len(), G_PACKET_LEN);
    let mut back = X86_64KvmRegs::default();
    back.gdb_deserialize(&bytes).expect("deserialize");
    assert_eq!(back, r);
    assert_eq!(back.pc(), r.rip);

    // Spot-check wire placement: rip at 128, cr3 at 204, mxcsr last.
    assert_eq!(&bytes[128..136], &r.rip.to_le_bytes());
    assert_eq!(&bytes[204..212], &r.cr3.to_le_bytes());
    assert_eq!(&bytes[G_PACKET_LEN - 4..], &r.mxcsr.to_le_bytes());

    r = sample();
    assert_eq!(serialize(&r).len(), G_PACKET_LEN);
    let mut again = X86_64KvmRegs::default();
    again.gdb_deserialize(&serialize(&r)).expect("deserialize");
    assert_eq!(again, r);
}

#[test]
fn xml_sizes_match_serialization() {
    let regs = xml_regs();
    assert_eq!(regs.len(), NUM_REGS);
    let total_bits: usize = regs.iter().map(|(_, bits)| bits).sum();
    assert_eq!(total_bits % 8, 0);
    assert_eq!(total_bits / 8, G_PACKET_LEN);
    assert_eq!(serialize(&sample()).len(), total_bits / 8);
    assert!(TARGET_XML.contains("<architecture>i386:x86-64</architecture>"));
    assert!(TARGET_XML.contains("<feature name=\"org.gnu.gdb.i386.core\">"));
    assert!(TARGET_XML.contains("<feature name=\"org.gnu.gdb.i386.sse\">"));
    assert_eq!(X86_64Kvm::target_description_xml(), Some(TARGET_XML));
}

#[test]
fn raw_ids_follow_xml_order() {
    for (n, (name, bits)) in xml_regs().into_iter().enumerate() {
        let (id, size) = X86_64KvmRegId::from_raw_id(n).expect("known register");
        assert_eq!(
            size.map(NonZeroUsize::get),
            Some(bits / 8),
            "size of {name}"
        );
        assert_eq!(id.name(), Some(name.as_str()), "number {n}");
        assert_eq!(id.to_raw_id(), Some(n));
    }
    for n in [NUM_REGS, NUM_REGS + 1, 1000, usize::MAX] {
        assert!(X86_64KvmRegId::from_raw_id(n).is_none(), "{n}");
    }
    // QEMU's fixed anchors (target/i386/gdbstub.c indices).
    assert_eq!(X86_64KvmRegId::KGsBase.raw(), Some(26));
    assert_eq!(X86_64KvmRegId::Cr0.raw(), Some(27));
    assert_eq!(X86_64KvmRegId::Efer.raw(), Some(32));
    assert_eq!(X86_64KvmRegId::St(0).raw(), Some(33));
    assert_eq!(X86_64KvmRegId::Xmm(0).raw(), Some(49));
    assert_eq!(X86_64KvmRegId::Mxcsr.raw(), Some(65));
    // Out-of-range indices are not registers.
    assert_eq!(X86_64KvmRegId::Gpr(16).raw(), None);
    assert_eq!(X86_64KvmRegId::St(8).raw(), None);
    assert_eq!(X86_64KvmRegId::Xmm(16).name(), None);
}

#[test]
fn single_register_write_touches_only_that_register() {
    let base = sample();
    let base_bytes = serialize(&base);
    let offs = offsets();
    for (n, id) in X86_64KvmRegId::all().enumerate() {
        let size = id.size();
        let value: Vec<u8> = (0..size).map(|i| 0xa0 ^ (i as u8) ^ (n as u8)).collect();
        let mut r = base.clone();
        write_reg(&mut r, id, &value).expect("write");

        let mut buf = [0u8; 16];
        assert_eq!(read_reg(&r, id, &mut buf), Some(size));
        assert_eq!(&buf[..size], value.as_slice(), "{id:?} readback");

        let after = serialize(&r);
        let range = offs[n]..offs[n] + size;
        assert_eq!(&after[range.clone()], value.as_slice(), "{id:?} placement");
        for (i, (a, b)) in after.iter().zip(&base_bytes).enumerate() {
            if !range.contains(&i) {
                assert_eq!(a, b, "{id:?} changed byte {i}");
            }
        }
        assert_ne!(after, base_bytes, "{id:?} had no effect");
    }
}

#[test]
fn wrong_lengths_rejected() {
    let orig = sample();
    let good = serialize(&orig);
    for len in [0, 1, G_PACKET_LEN - 1, G_PACKET_LEN + 1, 2 * G_PACKET_LEN] {
        let mut bytes = good.clone();
        bytes.resize(len, 0xee);
        let mut r = orig.clone();
        assert_eq!(r.gdb_deserialize(&bytes), Err(()), "len {len}");
        assert_eq!(r, orig, "failed deserialize must not modify");
    }
    for id in X86_64KvmRegId::all() {
        let size = id.size();
        for len in [0, size - 1, size + 1] {
            let mut r = orig.clone();
            let err = write_reg(&mut r, id, &vec![0u8; len]);
            assert_eq!(
                err,
                Err(RegError::WrongLength {
                    reg: id,
                    expected: size,
                    got: len
                })
            );
            assert_eq!(r, orig);
        }
        let mut small = vec![0u8; size - 1];
        assert_eq!(read_reg(&orig, id, &mut small), None);
    }
    let mut r = orig.clone();
    assert_eq!(
        write_reg(&mut r, X86_64KvmRegId::Gpr(16), &[0; 8]),
        Err(RegError::NoSuchRegister(X86_64KvmRegId::Gpr(16)))
    );
    assert_eq!(read_reg(&orig, X86_64KvmRegId::Xmm(16), &mut [0; 16]), None);
}

/// 80-bit value from sign+exponent and the 64-bit significand.
fn f80(sign_exp: u16, mantissa: u64) -> [u8; 10] {
    let mut b = [0u8; 10];
    b[..8].copy_from_slice(&mantissa.to_le_bytes());
    b[8..].copy_from_slice(&sign_exp.to_le_bytes());
    b
}

#[test]
fn classify_cases() {
    assert_eq!(classify_st(&f80(0x3fff, 1 << 63)), TAG_VALID); // 1.0
    assert_eq!(classify_st(&f80(0xc000, 0xc000_0000_0000_0000)), TAG_VALID); // -3.0
    assert_eq!(classify_st(&f80(0, 0)), TAG_ZERO);
    assert_eq!(classify_st(&f80(0x8000, 0)), TAG_ZERO); // -0.0
    assert_eq!(classify_st(&f80(0x7fff, 1 << 63)), TAG_SPECIAL); // +inf
    assert_eq!(
        classify_st(&f80(0xffff, 0xc000_0000_0000_0000)),
        TAG_SPECIAL
    ); // QNaN
    assert_eq!(classify_st(&f80(0, 1)), TAG_SPECIAL); // denormal
    assert_eq!(classify_st(&f80(0, 1 << 63)), TAG_SPECIAL); // pseudo-denormal
    assert_eq!(classify_st(&f80(0x3fff, 1)), TAG_SPECIAL); // unnormal
}

fn kvm_sample() -> (kvm_regs, kvm_sregs, kvm_fpu) {
    let regs = kvm_regs {
        rax: 1,
        rbx: 2,
        rcx: 3,
        rdx: 4,
        rsi: 5,
        rdi: 6,
        rsp: 7,
        rbp: 8,
        r8: 9,
        r9: 10,
        r10: 11,
        r11: 12,
        r12: 13,
        r13: 14,
        r14: 15,
        r15: 16,
        rip: 0xffff_ffff_8100_1234,
        rflags: 0x0000_0000_0020_0246,
    };
    let mut sregs = kvm_sregs::default();
    for (k, seg) in [
        &mut sregs.cs,
        &mut sregs.ss,
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
    ]
    .into_iter()
    .enumerate()
    {
        seg.selector = 0x10 + 8 * k as u16;
        seg.base = 0x1000 * (k as u64 + 1);
        seg.limit = 0xffff_ffff;
        seg.type_ = 0xb;
        seg.present = 1;
        seg.l = 1;
    }
    sregs.cr0 = 0x8005_0033;
    sregs.cr2 = 0xdead_b000;
    sregs.cr3 = 0x0123_4000;
    sregs.cr4 = 0x0037_06f0;
    sregs.cr8 = 0x7;
    sregs.efer = 0xd01;

    // TOP = 3: ST(i) lives in physical register (i + 3) % 8.
    let mut fpu = kvm_fpu {
        fsw: (3 << 11) | 0x0041,
        fcw: 0x037f,
        ..Default::default()
    };
    let contents = [
        f80(0x3fff, 1 << 63),               // ST0 -> R3: valid
        f80(0, 0),                          // ST1 -> R4: zero
        f80(0x7fff, 0xc000_0000_0000_0000), // ST2 -> R5: NaN
        f80(0x7fff, 1 << 63),               // ST3 -> R6: infinity
        f80(0, 0x1234),                     // ST4 -> R7: denormal
        f80(0x4000, 0x1234),                // ST5 -> R0: unnormal
        f80(0xbfff, 1 << 63),               // ST6 -> R1: empty despite contents
        f80(0, 0),                          // ST7 -> R2: empty
    ];
    for (dst, src) in fpu.fpr.iter_mut().zip(contents) {
        dst[..10].copy_from_slice(&src);
        dst[10..].copy_from_slice(&[0xaa; 6]);
    }
    // Non-empty physical registers R0, R3..R7.
    fpu.ftwx = 0b1111_1001;
    fpu.last_opcode = 0x05d9;
    fpu.last_ip = 0x0000_7fff_1234_5678;
    fpu.last_dp = 0xffff_8880_0bad_f00d;
    for (i, x) in fpu.xmm.iter_mut().enumerate() {
        *x = (0x1111_2222_3333_4444_5555_6666_7777_0000u128 + i as u128).to_le_bytes();
    }
    fpu.mxcsr = 0x1fa0;
    (regs, sregs, fpu)
}

#[test]
fn tag_word_conversion() {
    let (_, _, fpu) = kvm_sample();
    let r = X86_64KvmRegs::from_kvm(&kvm_regs::default(), &kvm_sregs::default(), &fpu, 0);
    // Physical R7..R0: special, special, special, zero, valid, empty, empty, special.
    let expected: u16 = (TAG_SPECIAL << 14)
        | (TAG_SPECIAL << 12)
        | (TAG_SPECIAL << 10)
        | (TAG_ZERO << 8)
        | (TAG_VALID << 6)
        | (TAG_EMPTY << 4)
        | (TAG_EMPTY << 2)
        | TAG_SPECIAL;
    assert_eq!(r.ftag, u32::from(expected), "{:#06x}", r.ftag);
    assert_eq!(ftw_full_to_abridged(expected), fpu.ftwx);

    // All empty / all valid extremes, with TOP = 0.
    let st = [f80(0x3fff, 1 << 63); 8];
    assert_eq!(ftw_abridged_to_full(0, 0, &st), 0xffff);
    assert_eq!(ftw_abridged_to_full(0xff, 0, &st), 0x0000);
    assert_eq!(ftw_full_to_abridged(0xffff), 0);
    assert_eq!(ftw_full_to_abridged(0x0000), 0xff);
    // Any non-empty tag maps to 1.
    assert_eq!(ftw_full_to_abridged(0xff00 | 0b10_01_00_11), 0b1110);
}

#[test]
fn kvm_roundtrip_every_field() {
    let (regs, sregs, fpu) = kvm_sample();
    let r = X86_64KvmRegs::from_kvm(&regs, &sregs, &fpu, 0xffff_8880_1234_0000);
    assert_eq!(
        r.regs,
        [1, 2, 3, 4, 5, 6, 8, 7, 9, 10, 11, 12, 13, 14, 15, 16]
    );
    assert_eq!(r.rip, regs.rip);
    assert_eq!(r.eflags, 0x0020_0246);
    assert_eq!(
        [r.cs, r.ss, r.ds, r.es, r.fs, r.gs],
        [0x10, 0x18, 0x20, 0x28, 0x30, 0x38]
    );
    assert_eq!(r.fs_base, sregs.fs.base);
    assert_eq!(r.gs_base, sregs.gs.base);
    assert_eq!(r.k_gs_base, 0xffff_8880_1234_0000);
    assert_eq!(
        [r.cr0, r.cr2, r.cr3, r.cr4, r.cr8, r.efer],
        [
            sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.cr8, sregs.efer
        ]
    );
    for (st, fpr) in r.st.iter().zip(fpu.fpr.iter()) {
        assert_eq!(st.as_slice(), &fpr[..10]);
    }
    assert_eq!(r.fctrl, 0x037f);
    assert_eq!(r.fstat, u32::from(fpu.fsw));
    assert_eq!((r.fiseg, r.fioff), (0x7fff, 0x1234_5678));
    assert_eq!((r.foseg, r.fooff), (0xffff_8880, 0x0bad_f00d));
    assert_eq!(r.fop, 0x05d9);
    assert_eq!(r.xmm[15], 0x1111_2222_3333_4444_5555_6666_7777_000f);
    assert_eq!(r.mxcsr, 0x1fa0);

    // Unchanged state goes back bit-for-bit, including untouched KVM fields.
    let (mut regs2, mut sregs2, mut fpu2) = (regs, sregs, fpu);
    assert_eq!(r.to_kvm(&mut regs2, &mut sregs2, &mut fpu2), r.k_gs_base);
    assert_eq!(regs2, regs);
    assert_eq!(sregs2, sregs);
    assert_eq!(fpu2, fpu);

    // Edits land in the right KVM fields; selector writes keep the descriptor cache.
    let mut edited = r.clone();
    edited.regs[6] = 0xbbbb; // rbp
    edited.regs[7] = 0x5555; // rsp
    edited.eflags = 0x2;
    edited.cs = 0x33;
    edited.gs = 0x2b;
    edited.gs_base = 0x4242;
    edited.k_gs_base = 0x9999;
    edited.cr3 = 0xabc000;
    edited.cr8 = 0xf;
    edited.efer = 0x500;
    edited.st[0] = f80(0, 0);
    // Only R0 non-empty; with TOP = 3 it holds ST5, an unnormal, so it reads back
    // as special (0b10) rather than the 0b00 written here.
    edited.ftag = 0xfffc;
    edited.fiseg = 0x1;
    edited.fooff = 0x2;
    edited.fop = 0x123;
    edited.xmm[3] = u128::MAX;
    edited.mxcsr = 0x1f80;
    let (mut regs3, mut sregs3, mut fpu3) = (regs, sregs, fpu);
    let kgs = edited.to_kvm(&mut regs3, &mut sregs3, &mut fpu3);
    assert_eq!(kgs, 0x9999);
    assert_eq!((regs3.rbp, regs3.rsp), (0xbbbb, 0x5555));
    assert_eq!(regs3.rflags, 0x2);
    assert_eq!(sregs3.cs.selector, 0x33);
    assert_eq!(
        (
            sregs3.cs.base,
            sregs3.cs.limit,
            sregs3.cs.type_,
            sregs3.cs.l
        ),
        (sregs.cs.base, sregs.cs.limit, sregs.cs.type_, sregs.cs.l)
    );
    assert_eq!((sregs3.gs.selector, sregs3.gs.base), (0x2b, 0x4242));
    assert_eq!(
        (sregs3.cr3, sregs3.cr8, sregs3.efer),
        (0xabc000, 0xf, 0x500)
    );
    assert_eq!(&fpu3.fpr[0][..10], &[0u8; 10]);
    assert_eq!(&fpu3.fpr[0][10..], &[0xaa; 6], "fpr padding preserved");
    assert_eq!(fpu3.ftwx, 0b0000_0001);
    assert_eq!(fpu3.last_ip, 0x1_1234_5678);
    assert_eq!(fpu3.last_dp, 0xffff_8880_0000_0002);
    assert_eq!(fpu3.last_opcode, 0x123);
    assert_eq!(fpu3.xmm[3], [0xff; 16]);
    assert_eq!(fpu3.mxcsr, 0x1f80);
    // Reading the result back gives what was written, with the tag re-derived.
    let back = X86_64KvmRegs::from_kvm(&regs3, &sregs3, &fpu3, kgs);
    assert_eq!(back.ftag, 0xfffe);
    assert_eq!(
        X86_64KvmRegs {
            ftag: 0xfffc,
            ..back
        },
        edited
    );
}

#[test]
fn gdb_accepts_target_description() {
    if !gdb_available() {
        return;
    }
    let path = temp_xml("offline");
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-ex"])
        .arg(format!("set tdesc filename {}", path.display()))
        .args(["-ex", "maint print remote-registers"])
        .output()
        .expect("run gdb");
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gdb failed: {stderr}");
    assert!(
        !stderr.to_lowercase().contains("warning") && !stderr.contains("rror"),
        "gdb complained: {stderr}"
    );

    // Columns: Name Nr Rel Offset Size Type [Rmt-Nr g/G-Offset]. GDB's remote
    // numbering and g-packet offsets must equal ours.
    let mut by_remote: Vec<(usize, String, usize, usize)> = stdout
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let [name, _, _, _, size, .., rmt, goff] = cols.as_slice() else {
                return None;
            };
            Some((
                rmt.parse().ok()?,
                name.to_string(),
                size.parse().ok()?,
                goff.parse().ok()?,
            ))
        })
        .collect();
    by_remote.sort();
    assert_eq!(by_remote.len(), NUM_REGS, "{stdout}");
    let offs = offsets();
    for (n, (rmt, name, size, goff)) in by_remote.into_iter().enumerate() {
        let id = X86_64KvmRegId::from_raw(n).expect("id");
        assert_eq!(rmt, n);
        assert_eq!(Some(name.as_str()), id.name(), "remote number {n}");
        assert_eq!(size, id.size(), "{name}");
        assert_eq!(goff, offs[n], "{name}");
    }
}

/// Minimal single-CPU target so real GDB can talk to the stub.
struct FakeCpu {
    regs: X86_64KvmRegs,
}

mod fake_target {
    use super::super::*;
    use super::FakeCpu;
    use gdbstub::target::ext::base::BaseOps;
    use gdbstub::target::ext::base::single_register_access::{
        SingleRegisterAccess, SingleRegisterAccessOps,
    };
    use gdbstub::target::ext::base::singlethread::SingleThreadBase;
    use gdbstub::target::{Target, TargetError, TargetResult};

    impl Target for FakeCpu {
        type Arch = X86_64Kvm;
        type Error = ();
        fn base_ops(&mut self) -> BaseOps<'_, X86_64Kvm, ()> {
            BaseOps::SingleThread(self)
        }
        // Never resumed, so GDB-inserted breakpoints are irrelevant here.
        fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
            true
        }
    }

    impl SingleThreadBase for FakeCpu {
        fn read_registers(&mut self, regs: &mut X86_64KvmRegs) -> TargetResult<(), Self> {
            *regs = self.regs.clone();
            Ok(())
        }
        fn write_registers(&mut self, regs: &X86_64KvmRegs) -> TargetResult<(), Self> {
            self.regs = regs.clone();
            Ok(())
        }
        fn read_addrs(&mut self, _addr: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
            data.fill(0);
            Ok(data.len())
        }
        fn write_addrs(&mut self, _addr: u64, _data: &[u8]) -> TargetResult<(), Self> {
            Ok(())
        }
        fn support_single_register_access(
            &mut self,
        ) -> Option<SingleRegisterAccessOps<'_, (), Self>> {
            Some(self)
        }
    }

    impl SingleRegisterAccess<()> for FakeCpu {
        fn read_register(
            &mut self,
            _tid: (),
            id: X86_64KvmRegId,
            buf: &mut [u8],
        ) -> TargetResult<usize, Self> {
            read_reg(&self.regs, id, buf).ok_or(TargetError::NonFatal)
        }
        fn write_register(
            &mut self,
            _tid: (),
            id: X86_64KvmRegId,
            val: &[u8],
        ) -> TargetResult<(), Self> {
            write_reg(&mut self.regs, id, val).map_err(|_| TargetError::NonFatal)
        }
    }
}

/// Serve one GDB session on `listener`; returns the final register state.
fn serve_one(listener: std::net::TcpListener, regs: X86_64KvmRegs) -> X86_64KvmRegs {
    use gdbstub::conn::ConnectionExt;
    use gdbstub::stub::state_machine::GdbStubStateMachine;
    use gdbstub::stub::{GdbStub, SingleThreadStopReason};

    let (stream, _) = listener.accept().expect("accept");
    let mut cpu = FakeCpu { regs };
    let mut sm = GdbStub::new(stream)
        .run_state_machine(&mut cpu)
        .expect("start stub");
    loop {
        sm = match sm {
            GdbStubStateMachine::Idle(mut g) => {
                let Ok(byte) = g.borrow_conn().read() else {
                    break;
                };
                g.incoming_data(&mut cpu, byte).expect("packet")
            }
            GdbStubStateMachine::CtrlCInterrupt(g) => g
                .interrupt_handled(&mut cpu, None::<SingleThreadStopReason<u64>>)
                .expect("interrupt"),
            GdbStubStateMachine::Running(_) | GdbStubStateMachine::Disconnected(_) => break,
        };
    }
    cpu.regs
}

#[test]
fn gdb_session_over_remote_protocol() {
    if !gdb_available() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut regs = sample();
    regs.cr3 = 0x1234_5000;
    regs.efer = 0xd01;
    let initial = regs.clone();
    let server = std::thread::spawn(move || serve_one(listener, initial));

    let mut child = Command::new("gdb")
        .args(["-batch", "-nx"])
        .args(["-ex", "set remotetimeout 5"])
        .arg("-ex")
        .arg(format!("target remote 127.0.0.1:{port}"))
        .args(["-ex", "maint print raw-registers"])
        .args(["-ex", "p/x $cr3"])
        .args(["-ex", "p $efer"])
        .args(["-ex", "set $k_gs_base = 0xffff888012340000"])
        .args(["-ex", "set $st1 = 2.5"])
        .args(["-ex", "p/x $k_gs_base"])
        .args(["-ex", "detach"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn gdb");
    // Guard against a wedged session.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("gdb timed out");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("gdb output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let final_regs = server.join().expect("stub thread");
    assert!(out.status.success(), "gdb failed: {stderr}\n{stdout}");

    // Every described register shows up with a name GDB understood.
    let raw_names: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for id in X86_64KvmRegId::all() {
        let name = id.name().expect("name");
        assert!(raw_names.contains(&name), "{name} missing:\n{stdout}");
    }
    assert!(stdout.contains("0x12345000"), "{stdout}");
    assert!(stdout.contains("SCE") && stdout.contains("LMA"), "{stdout}");
    assert!(stdout.contains("0xffff888012340000"), "{stdout}");
    assert_eq!(final_regs.k_gs_base, 0xffff_8880_1234_0000);
    // 2.5 as x87 extended: exponent 0x4000, significand 0xa000...
    assert_eq!(final_regs.st[1], [0, 0, 0, 0, 0, 0, 0, 0xa0, 0x00, 0x40]);
    let mut expected = regs.clone();
    expected.k_gs_base = final_regs.k_gs_base;
    expected.st[1] = final_regs.st[1];
    assert_eq!(final_regs, expected, "no other register may change");
}
