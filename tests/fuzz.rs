//! Fuzz targets for the parts of minivmm that parse what others hand it: kernel images
//! (`loader`), guest page tables (`paging`), debug-register requests (`debugreg`) and GDB's
//! packet stream (`gdbstub`, the real stub over an in-memory connection against fake vCPUs).
//!
//! They run on stable Rust as ordinary tests: seeded, structure-aware random inputs (real
//! test guests and real RSP packets, mutated), panics caught, hangs caught by a watchdog, and
//! invariants checked on every success. `make test` gives each target a few seconds;
//!
//! ```sh
//! MINIVMM_FUZZ_SECS=60   cargo test --release --test fuzz -- --nocapture   # a minute each
//! MINIVMM_FUZZ_SECS=3600 cargo test --release --test fuzz gdbstub -- --nocapture
//! cargo test --test fuzz                 # debug build: slower, but integer overflow panics
//! ```
//!
//! A failure prints its case seed and saves the input under `target/fuzz-crashes/`;
//! `MINIVMM_FUZZ_SEED=<seed> MINIVMM_FUZZ_CASES=1` replays exactly that case. See
//! `fuzz_support` for the engine and the environment variables.

// Tests state what they expect with unwrap, expect and panic; the crate's lints are for
// code a guest or a debugger can reach.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fuzz_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fuzz_support::{Mutator, Rng, Target, fuzz};
use minivmm::arch::debugreg::{
    self, DebugRegError, HwBreakKind, HwSlot, HwSlots, NUM_SLOTS, debugreg_array, encode_dr7,
    split_watch_range,
};
use minivmm::arch::paging::{PagingContext, PagingMode, Translation, WalkError, split_by_page};
use minivmm::loader::{self, BootSpec, KernelFormat, LoaderError};
use minivmm::memory::{GuestMem, create_guest_memory, e820_map, low_ram_end, ram_ranges};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// ---------------------------------------------------------------------------------------
// loader

fn guest_file(name: &str) -> Vec<u8> {
    let path = Path::new(env!("MINIVMM_GUESTS_DIR")).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("test guest {}: {e}", path.display()))
}

/// The real test guests, plus a hand-made minimal bzImage and ELF.
fn kernel_seeds() -> &'static [Vec<u8>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        vec![
            guest_file("hello-bzimage.bin"),
            guest_file("hello64.elf"),
            guest_file("hello-pvh.elf"),
            minimal_bzimage(),
            minimal_elf(),
        ]
    })
}

fn minimal_bzimage() -> Vec<u8> {
    let payload = 4096;
    let mut img = vec![0u8; 5 * 512 + payload];
    img[0x1f1] = 4;
    img[0x1f4..0x1f8].copy_from_slice(&((payload / 16) as u32).to_le_bytes());
    img[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
    img[0x300..0x306].copy_from_slice(b"6.1.0 ");
    img[0x211] = 1;
    img[0x214..0x218].copy_from_slice(&0x100000u32.to_le_bytes());
    img[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes());
    img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
    img[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes());
    img[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes());
    img
}

fn minimal_elf() -> Vec<u8> {
    let mut img = vec![0u8; 0x1000];
    img[0..4].copy_from_slice(b"\x7fELF");
    img[4] = 2;
    img[5] = 1;
    img[6] = 1;
    img[0x10..0x12].copy_from_slice(&2u16.to_le_bytes());
    img[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
    img[0x18..0x20].copy_from_slice(&0x100000u64.to_le_bytes());
    img[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
    img[0x34..0x36].copy_from_slice(&0x40u16.to_le_bytes());
    img[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
    img[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
    let ph = 0x40;
    img[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
    img[ph + 8..ph + 16].copy_from_slice(&0x800u64.to_le_bytes());
    img[ph + 0x10..ph + 0x18].copy_from_slice(&0x100000u64.to_le_bytes());
    img[ph + 0x18..ph + 0x20].copy_from_slice(&0x100000u64.to_le_bytes());
    img[ph + 0x20..ph + 0x28].copy_from_slice(&16u64.to_le_bytes());
    img[ph + 0x28..ph + 0x30].copy_from_slice(&16u64.to_le_bytes());
    let ph = 0x78;
    img[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
    img[ph + 8..ph + 16].copy_from_slice(&0x900u64.to_le_bytes());
    img[ph + 0x20..ph + 0x28].copy_from_slice(&20u64.to_le_bytes());
    let n = 0x900;
    img[n..n + 4].copy_from_slice(&4u32.to_le_bytes());
    img[n + 4..n + 8].copy_from_slice(&4u32.to_le_bytes());
    img[n + 8..n + 12].copy_from_slice(&18u32.to_le_bytes());
    img[n + 12..n + 16].copy_from_slice(b"Xen\0");
    img[n + 16..n + 20].copy_from_slice(&0x100010u32.to_le_bytes());
    img[0x800] = 0xf4;
    img[0xa00..0xa0e].copy_from_slice(b"Linux version ");
    img
}

fn le(b: &[u8], at: usize, width: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(width)?)?;
    let mut buf = [0u8; 8];
    buf[..width].copy_from_slice(s);
    Some(u64::from_le_bytes(buf))
}

/// The header fields of `image` as it is now: setup header for a bzImage; ELF header,
/// program headers and note headers for an ELF.
fn kernel_fields(image: &[u8]) -> Vec<(usize, usize)> {
    let mut hot = Vec::new();
    if image.starts_with(b"\x7fELF") {
        hot.extend([
            (4, 1),
            (5, 1),
            (0x10, 2),
            (0x12, 2),
            (0x18, 8),
            (0x20, 8),
            (0x28, 8),
            (0x34, 2),
            (0x36, 2),
            (0x38, 2),
        ]);
        let phoff = le(image, 0x20, 8).unwrap_or(0) as usize;
        let phentsize = le(image, 0x36, 2).unwrap_or(0) as usize;
        let phnum = le(image, 0x38, 2).unwrap_or(0) as usize;
        for i in 0..phnum.min(16) {
            let Some(ph) = phoff.checked_add(i * phentsize.max(1)) else {
                break;
            };
            if ph >= image.len() {
                break;
            }
            for (off, w) in [
                (0, 4),
                (4, 4),
                (8, 8),
                (0x10, 8),
                (0x18, 8),
                (0x20, 8),
                (0x28, 8),
            ] {
                hot.push((ph + off, w));
            }
            // Note segment: the first notes' namesz, descsz, type and descriptor.
            if le(image, ph, 4) == Some(4)
                && let Some(mut n) = le(image, ph + 8, 8).map(|o| o as usize)
            {
                for _ in 0..4 {
                    if n >= image.len() {
                        break;
                    }
                    let namesz = le(image, n, 4).unwrap_or(0) as usize;
                    let descsz = le(image, n + 4, 4).unwrap_or(0) as usize;
                    hot.extend([(n, 4), (n + 4, 4), (n + 8, 4), (n + 12, 4), (n + 16, 4)]);
                    n = n
                        .saturating_add(12)
                        .saturating_add(namesz.next_multiple_of(4))
                        .saturating_add(descsz.next_multiple_of(4));
                }
            }
        }
    } else {
        hot.extend([
            (0x1f1, 1),
            (0x1f4, 4),
            (0x1fe, 2),
            (0x202, 4),
            (0x206, 2),
            (0x20e, 2),
            (0x211, 1),
            (0x214, 4),
            (0x218, 4),
            (0x21c, 4),
            (0x22c, 4),
            (0x230, 4),
            (0x234, 1),
            (0x236, 2),
            (0x238, 4),
            (0x248, 4),
            (0x24c, 4),
            (0x258, 8),
            (0x260, 4),
            (0x264, 4),
        ]);
    }
    hot.retain(|&(off, w)| off.checked_add(w).is_some());
    hot
}

struct LoaderCase {
    image: Vec<u8>,
    initrd: Option<Vec<u8>>,
    mem_mib: u64,
    cmdline: String,
    extra: Option<String>,
    acpi_rsdp: Option<u64>,
    /// Through `loader::load` and real files rather than `load_image`.
    through_files: bool,
}

/// `loader::load` as minivmm calls it, with the case written to temporary files.
fn load_from_files(
    mem: &GuestMem,
    spec: &BootSpec,
    c: &LoaderCase,
) -> Result<loader::LoadedKernel, LoaderError> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fuzz-loader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kernel = dir.join("kernel");
    let initrd = dir.join("initrd");
    std::fs::write(&kernel, &c.image).expect("writing the kernel");
    if let Some(i) = &c.initrd {
        std::fs::write(&initrd, i).expect("writing the initrd");
    }
    let spec = BootSpec {
        kernel: &kernel,
        initrd: c.initrd.as_ref().map(|_| initrd.as_path()),
        ..*spec
    };
    loader::load(mem, &spec)
}

const MEM_SIZES: [u64; 3] = [16, 32, 64];

fn gen_cmdline(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => String::new(),
        1 => "x".repeat(*rng.pick(&[255usize, 256, 2047, 2048, 2049, 0xffff, 0x10000])),
        2 => "console=ttyS0\0nul".into(),
        3 => String::from_utf8_lossy(&rng.bytes_upto(64)).into_owned(),
        _ => "console=ttyS0 reboot=k".into(),
    }
}

fn gen_loader(rng: &mut Rng) -> LoaderCase {
    let seeds = kernel_seeds();
    let mut image = rng.pick(seeds).clone();
    if rng.chance(1, 50) {
        image = rng.bytes_upto(0x1000);
    } else {
        let donors: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
        let rounds = if rng.chance(1, 10) { 1 } else { 8 };
        for _ in 0..rounds {
            // Recompute the fields each round: earlier mutations move program headers.
            let hot = kernel_fields(&image);
            let mut m = Mutator {
                rng,
                hot: &hot,
                donors: &donors,
            };
            m.mutate(&mut image, 3);
        }
    }
    let initrd = match rng.below(64) {
        0..=39 => None,
        40..=43 => Some(Vec::new()),
        // As big as one of the RAM sizes: too big, or just about filling it.
        44 => Some(vec![0x5a; (*rng.pick(&MEM_SIZES) as usize) << 20]),
        _ => Some(rng.bytes_upto(0x4000)),
    };
    LoaderCase {
        image,
        initrd,
        mem_mib: *rng.pick(&MEM_SIZES),
        cmdline: gen_cmdline(rng),
        extra: rng
            .chance(1, 2)
            .then(|| gen_cmdline(rng))
            .filter(|_| rng.chance(9, 10)),
        acpi_rsdp: rng.chance(1, 2).then(|| rng.interesting_u64()),
        through_files: rng.chance(1, 50),
    }
}

thread_local! {
    /// Guest memories reused across cases (the loader only writes to them).
    static MEMORIES: Vec<GuestMem> = MEM_SIZES
        .iter()
        .map(|&m| create_guest_memory(m).expect("guest memory"))
        .collect();
}

fn run_loader(c: &LoaderCase) {
    let image = &c.image[..];
    let format = loader::detect_format(image);
    let linux = loader::is_linux(image);
    if linux {
        assert!(format.is_some(), "is_linux on an unrecognised image");
    }
    let segments = loader::elf_segments(image);
    if let Ok(segs) = &segments {
        assert!(!segs.is_empty());
        for s in segs {
            assert!(s.paddr.checked_add(s.memsz).is_some(), "{s:?} wraps");
        }
    }
    let ranges = ram_ranges(c.mem_mib).expect("ram ranges");
    let e820 = e820_map(&ranges);
    let ram_end = low_ram_end(c.mem_mib);
    let spec = BootSpec {
        kernel: Path::new("fuzz-kernel"),
        initrd: None,
        cmdline: &c.cmdline,
        linux_cmdline_extra: c.extra.as_deref(),
        low_ram_end: ram_end,
        e820: &e820,
        acpi_rsdp: c.acpi_rsdp,
    };
    let idx = MEM_SIZES.iter().position(|&m| m == c.mem_mib).unwrap();
    let result = MEMORIES.with(|mems| {
        if c.through_files {
            load_from_files(&mems[idx], &spec, c)
        } else {
            loader::load_image(&mems[idx], &spec, image, c.initrd.as_deref())
        }
    });
    match result {
        Ok(k) => {
            assert_eq!(Some(k.format), format, "loaded as another format");
            let expected = match &c.extra {
                Some(extra) if linux => format!("{} {extra}", c.cmdline),
                _ => c.cmdline.clone(),
            };
            assert_eq!(k.cmdline, expected);
            assert!(!k.cmdline.contains('\0'));
            if k.format == KernelFormat::Elf {
                let segs = segments.expect("an ELF loaded without valid segments");
                for s in segs {
                    assert!(
                        s.paddr >= 0x10_0000 && s.paddr + s.memsz <= ram_end,
                        "{s:?}"
                    );
                }
            }
        }
        Err(LoaderError::UnknownFormat(_)) => assert_eq!(format, None),
        Err(LoaderError::Empty(_)) => assert!(image.is_empty()),
        Err(LoaderError::CmdlineNul) => assert!(
            c.cmdline.contains('\0') || c.extra.as_deref().is_some_and(|e| e.contains('\0'))
        ),
        Err(_) => {}
    }
}

fn loader_to_bytes(c: &LoaderCase) -> Vec<u8> {
    // The kernel image itself: `minivmm --kernel` takes it as is.
    c.image.clone()
}

#[test]
fn loader() {
    fuzz(Target {
        name: "loader",
        hang_after: Duration::from_secs(10),
        generate: gen_loader,
        to_bytes: loader_to_bytes,
        run: run_loader,
    });
}

// ---------------------------------------------------------------------------------------
// paging

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const PS: u64 = 0x80;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PAGING_RAM: u64 = 2 << 20;

thread_local! {
    /// 2 MiB of RAM in one piece, and the same with a hole (1 MiB .. 1.5 MiB), reused: each
    /// case zeroes what it wrote.
    static PAGING_MEMS: [GuestMemoryMmap; 2] = [
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), PAGING_RAM as usize)]).unwrap(),
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(0x18_0000), 0x8_0000),
        ])
        .unwrap(),
    ];
}

#[derive(Debug)]
struct PagingCase {
    holey: bool,
    ctx: PagingContext,
    /// (address, value, width 4 or 8) written before the walks.
    writes: Vec<(u64, u64, u8)>,
    vaddrs: Vec<u64>,
    splits: Vec<(u64, usize)>,
}

fn sign_extend(v: u64, bits: u32) -> u64 {
    let unused = 64 - bits;
    (((v << unused) as i64) >> unused) as u64
}

/// A page-aligned table address: usually in RAM, sometimes in the hole, past the end, or
/// at the very end so the entry straddles it.
fn table_addr(rng: &mut Rng) -> u64 {
    match rng.below(16) {
        0 => PAGING_RAM - 0x1000,
        1 => rng.interesting_u64() & ADDR_MASK,
        2 => PAGING_RAM + rng.below(4) * 0x1000,
        _ => rng.below(PAGING_RAM / 0x1000) * 0x1000,
    }
}

fn entry_flags(rng: &mut Rng) -> u64 {
    let mut f = P;
    if rng.chance(7, 8) {
        f |= RW;
    }
    if rng.chance(7, 8) {
        f |= US;
    }
    if rng.chance(1, 4) {
        // NX, protection keys, available bits, PAT/PWT/PCD: must not move addresses.
        f |= rng.next() & ((1 << 63) | (0x7ff << 52) | (0x7 << 9) | 0x78);
        f &= !PS;
    }
    f
}

fn gen_paging(rng: &mut Rng) -> PagingCase {
    let mode = rng.below(6);
    let noise = |rng: &mut Rng, mask: u64| {
        if rng.chance(1, 4) {
            rng.next() & mask
        } else {
            0
        }
    };
    let mut ctx = PagingContext {
        cr0: CR0_PG | 1 | noise(rng, !CR0_PG),
        cr3: table_addr(rng),
        cr4: noise(rng, !(CR4_PAE | CR4_LA57 | CR4_PSE)),
        efer: noise(rng, !(EFER_LME | EFER_LMA)),
    };
    match mode {
        0 => ctx.cr0 &= !CR0_PG,
        1 => {
            if rng.chance(1, 2) {
                ctx.cr4 |= CR4_PSE;
            }
        }
        2 => {
            ctx.cr4 |= CR4_PAE;
            ctx.cr3 = rng.below(PAGING_RAM / 32) * 32;
        }
        3 | 4 => {
            ctx.cr4 |= CR4_PAE;
            ctx.efer |= *rng.pick(&[EFER_LME, EFER_LMA, EFER_LME | EFER_LMA]);
            if mode == 4 {
                ctx.cr4 |= CR4_LA57;
            }
        }
        _ => {
            ctx.cr0 = rng.next();
            ctx.cr4 = rng.next();
            ctx.efer = rng.next();
        }
    }
    if rng.chance(1, 8) {
        // PCID / PWT / PCD in the low bits, junk in the high ones.
        ctx.cr3 |= rng.next() & 0xfff;
        if rng.chance(1, 2) {
            ctx.cr3 |= rng.next() & !ADDR_MASK;
        }
    }
    let pm = ctx.mode();
    let gen_vaddr = |rng: &mut Rng| -> u64 {
        let v = rng.interesting_u64() ^ (rng.next() & 0xfff);
        match (pm, rng.below(8)) {
            (_, 0) => rng.next(),
            (PagingMode::Bits32 | PagingMode::Pae | PagingMode::Disabled, _) => v & 0xffff_ffff,
            (PagingMode::Level4, _) => sign_extend(v, 48),
            (PagingMode::Level5, _) => sign_extend(v, 57),
        }
    };
    let vaddrs: Vec<u64> = (0..1 + rng.index(6)).map(|_| gen_vaddr(rng)).collect();

    let mut writes = Vec::new();
    // A valid chain for each address, with large pages where the level allows them.
    for &vaddr in &vaddrs {
        if !rng.chance(3, 4) {
            continue;
        }
        match pm {
            PagingMode::Disabled => {}
            PagingMode::Bits32 => {
                let pde_addr = (ctx.cr3 & 0xffff_f000) + ((vaddr >> 22) & 0x3ff) * 4;
                let big = ctx.cr4 & CR4_PSE != 0 && rng.chance(1, 3);
                let pt = table_addr(rng) & 0xffff_f000;
                let pde = if big {
                    (rng.next() & 0xffc0_0000) | (rng.next() & 0x1f_e000) | PS | entry_flags(rng)
                } else {
                    pt | entry_flags(rng)
                };
                writes.push((pde_addr, pde & 0xffff_ffff, 4));
                let pte_addr = pt + ((vaddr >> 12) & 0x3ff) * 4;
                writes.push((pte_addr, (rng.next() & 0xffff_f000) | entry_flags(rng), 4));
            }
            _ => {
                let (root, shifts): (u64, &[u32]) = match pm {
                    PagingMode::Pae => (ctx.cr3 & 0xffff_ffe0, &[30, 21, 12]),
                    PagingMode::Level4 => (ctx.cr3 & ADDR_MASK, &[39, 30, 21, 12]),
                    _ => (ctx.cr3 & ADDR_MASK, &[48, 39, 30, 21, 12]),
                };
                let mut table = root;
                for (i, &shift) in shifts.iter().enumerate() {
                    let bits = if pm == PagingMode::Pae && i == 0 {
                        2
                    } else {
                        9
                    };
                    let idx = (vaddr >> shift) & ((1 << bits) - 1);
                    let last = shift == 12;
                    let can_be_large = shift == 21 || shift == 30 && pm != PagingMode::Pae;
                    let next = table_addr(rng);
                    let mut e = if last || (can_be_large && rng.chance(1, 3)) {
                        let frame = rng.next() & ADDR_MASK;
                        if last { frame } else { frame | PS }
                    } else {
                        next
                    };
                    e |= entry_flags(rng);
                    if pm == PagingMode::Pae && i == 0 {
                        e &= !(RW | US | PS);
                    }
                    writes.push((table + idx * 8, e, 8));
                    if e & PS != 0 {
                        break;
                    }
                    table = next;
                }
            }
        }
    }
    // Then corruption: entries anywhere, pointing anywhere.
    for _ in 0..rng.index(24) {
        let addr = match rng.below(4) {
            0 => PAGING_RAM - 1 - rng.below(8),
            _ => table_addr(rng) + rng.below(512) * 8,
        };
        let val = match rng.below(5) {
            0 => table_addr(rng) | entry_flags(rng) | if rng.chance(1, 2) { PS } else { 0 },
            1 => rng.interesting_u64(),
            2 => 0,
            _ => rng.next(),
        };
        writes.push((addr, val, *rng.pick(&[4u8, 8])));
    }
    let splits = (0..rng.index(4))
        .map(|_| {
            let vaddr = match rng.below(3) {
                0 => u64::MAX - rng.below(0x3000),
                1 => rng.interesting_u64(),
                _ => rng.next(),
            };
            let len = match rng.below(4) {
                0 => rng.interesting_u64() as usize,
                1 => rng.index(0x10),
                _ => rng.index(0x6000),
            };
            (vaddr, len)
        })
        .collect();
    PagingCase {
        holey: rng.chance(1, 4),
        ctx,
        writes,
        vaddrs,
        splits,
    }
}

fn read_entry(mem: &GuestMemoryMmap, addr: u64, width: usize) -> Option<u64> {
    let mut buf = [0u8; 8];
    mem.read_slice(&mut buf[..width], GuestAddress(addr)).ok()?;
    Some(u64::from_le_bytes(buf))
}

/// Checks a successful translation against the page tables in `mem`, step by step.
fn check_translation(mem: &GuestMemoryMmap, ctx: &PagingContext, vaddr: u64, t: &Translation) {
    let size_ok = [1 << 12, 1 << 21, 1 << 22, 1 << 30].contains(&t.page_size);
    assert!(size_ok, "page size {:#x}", t.page_size);
    assert_eq!(
        t.phys & (t.page_size - 1),
        vaddr & (t.page_size - 1),
        "page offset"
    );
    for s in &t.steps {
        let width = if s.level.ends_with("32") { 4 } else { 8 };
        assert_eq!(
            read_entry(mem, s.entry_addr, width),
            Some(s.entry),
            "{s:?} not what RAM holds"
        );
        assert!(s.entry & P != 0, "{s:?} not present but walked");
    }
    let rights = |steps: &[minivmm::arch::paging::WalkStep], bit: u64| {
        steps.iter().all(|s| s.entry & bit != 0)
    };
    match ctx.mode() {
        PagingMode::Disabled => {
            assert!(t.steps.is_empty());
            assert_eq!((t.phys, t.page_size), (vaddr, 1 << 12));
        }
        PagingMode::Bits32 => {
            assert!(vaddr <= 0xffff_ffff);
            let pde = &t.steps[0];
            assert_eq!(pde.entry_addr, (ctx.cr3 & 0xffff_f000) + (vaddr >> 22) * 4);
            if t.steps.len() == 1 {
                assert!(ctx.cr4 & CR4_PSE != 0 && pde.entry & PS != 0);
                assert_eq!(t.page_size, 4 << 20);
                let phys = (pde.entry & 0xffc0_0000) | ((pde.entry >> 13) & 0xff) << 32;
                assert_eq!(t.phys, phys | (vaddr & 0x3f_ffff));
            } else {
                assert_eq!(t.steps.len(), 2);
                assert_eq!(t.page_size, 1 << 12);
                let pte = &t.steps[1];
                assert_eq!(
                    pte.entry_addr,
                    (pde.entry & 0xffff_f000) + ((vaddr >> 12) & 0x3ff) * 4
                );
                assert_eq!(t.phys, (pte.entry & 0xffff_f000) | (vaddr & 0xfff));
            }
            assert!(t.phys < 1 << 40);
            assert_eq!(t.writable, rights(&t.steps, RW));
            assert_eq!(t.user, rights(&t.steps, US));
        }
        pm => {
            let (root, shifts, names): (u64, &[u32], &[&str]) = match pm {
                PagingMode::Pae => (ctx.cr3 & 0xffff_ffe0, &[30, 21, 12], &["PDPT", "PD", "PT"]),
                PagingMode::Level4 => (
                    ctx.cr3 & ADDR_MASK,
                    &[39, 30, 21, 12],
                    &["PML4", "PDPT", "PD", "PT"],
                ),
                _ => (
                    ctx.cr3 & ADDR_MASK,
                    &[48, 39, 30, 21, 12],
                    &["PML5", "PML4", "PDPT", "PD", "PT"],
                ),
            };
            let mut table = root;
            for (i, s) in t.steps.iter().enumerate() {
                let bits = if pm == PagingMode::Pae && i == 0 {
                    2
                } else {
                    9
                };
                assert_eq!(s.level, names[i]);
                assert_eq!(
                    s.entry_addr,
                    table + ((vaddr >> shifts[i]) & ((1 << bits) - 1)) * 8
                );
                let last = i + 1 == t.steps.len();
                if !last {
                    assert!(s.entry & PS == 0, "walked through a large page at {s:?}");
                }
                table = s.entry & ADDR_MASK;
            }
            let n = t.steps.len();
            let last = &t.steps[n - 1];
            let size = 1u64 << shifts[n - 1];
            assert_eq!(t.page_size, size, "page size for {} levels", n);
            if n < shifts.len() {
                assert!(last.entry & PS != 0);
            }
            assert_eq!(
                t.phys,
                (last.entry & ADDR_MASK & !(size - 1)) | (vaddr & (size - 1))
            );
            assert!(t.phys < 1 << 52);
            let with_rights = if pm == PagingMode::Pae {
                &t.steps[1..]
            } else {
                &t.steps[..]
            };
            assert_eq!(t.writable, rights(with_rights, RW));
            assert_eq!(t.user, rights(with_rights, US));
        }
    }
}

fn check_walk_error(mem: &GuestMemoryMmap, e: &WalkError) {
    match e {
        WalkError::NotPresent {
            entry_addr,
            entry,
            level,
            ..
        } => {
            let width = if level.ends_with("32") { 4 } else { 8 };
            assert_eq!(read_entry(mem, *entry_addr, width), Some(*entry));
            assert_eq!(entry & P, 0);
        }
        WalkError::ReservedBit {
            entry_addr, entry, ..
        } => {
            assert_eq!(read_entry(mem, *entry_addr, 8), Some(*entry));
            assert_ne!(entry & PS, 0);
        }
        WalkError::TableOutsideRam {
            entry_addr, level, ..
        } => {
            let width = if level.ends_with("32") { 4 } else { 8 };
            assert_eq!(read_entry(mem, *entry_addr, width), None, "{e}");
        }
        WalkError::NonCanonical { .. } | WalkError::AddressTooWide { .. } => {}
    }
    // Every error renders.
    assert!(!e.to_string().is_empty());
}

fn run_paging(c: &PagingCase) {
    PAGING_MEMS.with(|mems| {
        let mem = &mems[usize::from(c.holey)];
        for &(addr, val, width) in &c.writes {
            let bytes = val.to_le_bytes();
            let _ = mem.write_slice(&bytes[..usize::from(width)], GuestAddress(addr));
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for &vaddr in &c.vaddrs {
                match minivmm::arch::paging::translate(mem, &c.ctx, vaddr) {
                    Ok(t) => check_translation(mem, &c.ctx, vaddr, &t),
                    Err(e) => check_walk_error(mem, &e),
                }
            }
        }));
        // Leave the memory zeroed for the next case, even when this one failed.
        for &(addr, _, width) in &c.writes {
            let _ = mem.write_slice(&[0u8; 8][..usize::from(width)], GuestAddress(addr));
        }
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });
    for &(vaddr, len) in &c.splits {
        check_split(vaddr, len);
    }
}

fn check_split(vaddr: u64, len: usize) {
    const MAX_PIECES: usize = 4096;
    let mut expected_start = u128::from(vaddr);
    let mut total = 0u128;
    let mut count = 0;
    for (start, n) in split_by_page(vaddr, len).take(MAX_PIECES) {
        assert_eq!(u128::from(start), expected_start, "pieces are contiguous");
        assert!(
            n >= 1 && (start & 0xfff) as usize + n <= 0x1000,
            "({start:#x}, {n}) crosses a page"
        );
        expected_start += n as u128;
        assert!(expected_start <= 1 << 64);
        total += n as u128;
        count += 1;
    }
    let want = (len as u128).min((1u128 << 64) - u128::from(vaddr));
    assert!(total <= want);
    if count < MAX_PIECES {
        assert_eq!(
            total, want,
            "split_by_page({vaddr:#x}, {len:#x}) covers the range"
        );
    }
}

fn paging_to_bytes(c: &PagingCase) -> Vec<u8> {
    format!("{c:#x?}\n").into_bytes()
}

#[test]
fn paging() {
    fuzz(Target {
        name: "paging",
        hang_after: Duration::from_secs(5),
        generate: gen_paging,
        to_bytes: paging_to_bytes,
        run: run_paging,
    });
}

// ---------------------------------------------------------------------------------------
// debugreg

#[derive(Debug)]
enum HwOp {
    Add(HwSlot),
    AddAll(Vec<HwSlot>),
    Remove(u64, HwBreakKind, u8),
    Clear,
    Encode([Option<HwSlot>; NUM_SLOTS]),
    Split(u64, u64),
    Triggered(u64),
}

fn gen_slot(rng: &mut Rng, near: &[u64]) -> HwSlot {
    let kind = *rng.pick(&[
        HwBreakKind::Execute,
        HwBreakKind::Write,
        HwBreakKind::ReadWrite,
    ]);
    let len = if rng.chance(1, 8) {
        rng.byte()
    } else {
        *rng.pick(&[1u8, 2, 4, 8])
    };
    let addr = if !near.is_empty() && rng.chance(1, 2) {
        *rng.pick(near)
    } else if rng.chance(1, 2) {
        rng.interesting_u64() & !(u64::from(len.max(1)) - 1).min(7)
    } else {
        rng.interesting_u64()
    };
    HwSlot { addr, kind, len }
}

fn gen_debugreg(rng: &mut Rng) -> Vec<HwOp> {
    let near: Vec<u64> = (0..3).map(|_| rng.interesting_u64() & !7).collect();
    (0..1 + rng.index(40))
        .map(|_| match rng.below(10) {
            0..=2 => HwOp::Add(gen_slot(rng, &near)),
            3 => HwOp::AddAll((0..rng.index(6)).map(|_| gen_slot(rng, &near)).collect()),
            4 | 5 => {
                let s = gen_slot(rng, &near);
                HwOp::Remove(s.addr, s.kind, s.len)
            }
            6 => HwOp::Clear,
            7 => HwOp::Encode(std::array::from_fn(|_| {
                rng.chance(1, 2).then(|| gen_slot(rng, &near))
            })),
            8 => {
                let addr = match rng.below(3) {
                    0 => u64::MAX - rng.below(64),
                    1 => rng.pick(&near).wrapping_add(rng.below(16)),
                    _ => rng.interesting_u64(),
                };
                let len = if rng.chance(3, 4) {
                    rng.below(40)
                } else {
                    rng.interesting_u64()
                };
                HwOp::Split(addr, len)
            }
            _ => HwOp::Triggered(rng.next()),
        })
        .collect()
}

fn valid(s: &HwSlot) -> bool {
    matches!(s.len, 1 | 2 | 4 | 8)
        && match s.kind {
            HwBreakKind::Execute => s.len == 1,
            _ => s.addr.is_multiple_of(u64::from(s.len)),
        }
}

/// DR7 computed from the SDM's description, independently of `encode_dr7`.
fn expected_dr7(slots: &[Option<HwSlot>; NUM_SLOTS]) -> u64 {
    let mut dr7 = 1 << 10;
    for (i, s) in slots.iter().enumerate() {
        let Some(s) = s else { continue };
        let rw = match s.kind {
            HwBreakKind::Execute => 0,
            HwBreakKind::Write => 1,
            HwBreakKind::ReadWrite => 3,
        };
        let len = match s.len {
            1 => 0,
            2 => 1,
            8 => 2,
            _ => 3,
        };
        dr7 |= 1 << (2 * i);
        dr7 |= (rw | len << 2) << (16 + 4 * i);
    }
    if slots.iter().any(Option::is_some) {
        dr7 |= 0x300;
    }
    dr7
}

fn check_encoding(slots: &[Option<HwSlot>; NUM_SLOTS]) {
    let all_valid = slots.iter().flatten().all(valid);
    match (encode_dr7(slots), debugreg_array(slots)) {
        (Ok(dr7), Ok(regs)) => {
            assert!(all_valid, "encoded an invalid slot: {slots:?}");
            assert_eq!(dr7, expected_dr7(slots), "DR7 for {slots:?}");
            for i in 0..NUM_SLOTS {
                assert_eq!(dr7 >> (2 * i) & 1, u64::from(slots[i].is_some()), "L{i}");
                assert_eq!(dr7 >> (2 * i + 1) & 1, 0, "G{i} is never used");
                assert_eq!(regs[i], slots[i].map_or(0, |s| s.addr));
            }
            assert_eq!(&regs[4..7], &[0, 0, 0]);
            assert_eq!(regs[7], dr7);
        }
        (Err(a), Err(b)) => {
            assert!(!all_valid, "refused valid slots {slots:?}: {a}");
            assert_eq!(a, b);
        }
        (a, b) => panic!("encode_dr7 {a:?} and debugreg_array {b:?} disagree"),
    }
}

fn check_split_watch(addr: u64, len: u64) {
    match split_watch_range(addr, len) {
        Ok(pieces) => {
            assert!((1..=NUM_SLOTS).contains(&pieces.len()), "{pieces:?}");
            let mut next = addr;
            let mut total = 0u64;
            for &(a, l) in &pieces {
                assert_eq!(a, next, "contiguous");
                assert!(
                    matches!(l, 1 | 2 | 4 | 8) && a % u64::from(l) == 0,
                    "({a:#x}, {l})"
                );
                total += u64::from(l);
                next = a.wrapping_add(u64::from(l));
            }
            assert_eq!(total, len, "covers exactly the range");
            assert!(addr.checked_add(len - 1).is_some());
            // Each piece is one valid debug register.
            let slots: Vec<HwSlot> = pieces
                .iter()
                .map(|&(addr, len)| HwSlot {
                    addr,
                    kind: HwBreakKind::Write,
                    len,
                })
                .collect();
            assert_eq!(
                HwSlots::new().add_all(&slots).map(|v| v.len()),
                Ok(slots.len())
            );
        }
        Err(DebugRegError::InvalidRange { .. }) => {
            assert!(len == 0 || addr.checked_add(len - 1).is_none());
        }
        Err(DebugRegError::RangeTooLarge { .. }) => {
            assert!(len > 4, "{len} bytes at {addr:#x} fit in 4 single bytes");
            assert!(
                !(addr.is_multiple_of(8) && len.is_multiple_of(8) && len <= 32),
                "{len} at {addr:#x}"
            );
        }
        Err(e) => panic!("unexpected {e}"),
    }
}

fn run_debugreg(ops: &Vec<HwOp>) {
    let mut hw = HwSlots::new();
    let mut model: [Option<HwSlot>; NUM_SLOTS] = [None; NUM_SLOTS];
    for op in ops {
        match op {
            HwOp::Add(s) => {
                let got = hw.add(*s);
                assert_eq!(debugreg::validate(s).is_ok(), valid(s), "validate {s:?}");
                match model.iter().position(Option::is_none) {
                    _ if !valid(s) => assert!(got.is_err()),
                    Some(i) => {
                        assert_eq!(got, Ok(i));
                        model[i] = Some(*s);
                    }
                    None => assert_eq!(got, Err(DebugRegError::NoFreeSlot)),
                }
            }
            HwOp::AddAll(slots) => {
                let got = hw.add_all(slots);
                let free: Vec<usize> = (0..NUM_SLOTS).filter(|&i| model[i].is_none()).collect();
                if slots.iter().all(valid) && slots.len() <= free.len() {
                    assert_eq!(got, Ok(free[..slots.len()].to_vec()));
                    for (i, s) in free.iter().zip(slots) {
                        model[*i] = Some(*s);
                    }
                } else {
                    assert!(got.is_err(), "add_all {slots:?} into {model:?}");
                }
            }
            HwOp::Remove(addr, kind, len) => {
                let want = HwSlot {
                    addr: *addr,
                    kind: *kind,
                    len: *len,
                };
                let got = hw.remove(*addr, *kind, *len);
                match model.iter().position(|s| *s == Some(want)) {
                    Some(i) => {
                        assert_eq!(got, Ok(i));
                        model[i] = None;
                    }
                    None => assert!(got.is_err()),
                }
            }
            HwOp::Clear => {
                hw.clear();
                model = [None; NUM_SLOTS];
            }
            HwOp::Encode(slots) => check_encoding(slots),
            HwOp::Split(addr, len) => check_split_watch(*addr, *len),
            HwOp::Triggered(dr6) => {
                let got: Vec<usize> = debugreg::triggered_slots(*dr6).collect();
                let want: Vec<usize> = (0..NUM_SLOTS).filter(|i| dr6 >> i & 1 != 0).collect();
                assert_eq!(got, want);
            }
        }
        assert_eq!(hw.slots(), &model, "after {op:?}");
        assert_eq!(hw.is_empty(), model.iter().all(Option::is_none));
        check_encoding(hw.slots());
    }
}

fn debugreg_to_bytes(ops: &Vec<HwOp>) -> Vec<u8> {
    format!("{ops:#x?}\n").into_bytes()
}

#[test]
fn debugreg() {
    fuzz(Target {
        name: "debugreg",
        hang_after: Duration::from_secs(5),
        generate: gen_debugreg,
        to_bytes: debugreg_to_bytes,
        run: run_debugreg,
    });
}

// ---------------------------------------------------------------------------------------
// gdbstub

use fuzz_support::fake_vm::{self, FakeVm};
use minivmm::gdb::{AfterSession, DebugCaps};

/// A GDB session case: the fake VM's seed and shape, and one packet stream per connection
/// (the target, like minivmm's GDB thread, lives across connections).
#[derive(Debug)]
struct GdbCase {
    vm_seed: u64,
    cpus: usize,
    caps: DebugCaps,
    starts_paused: bool,
    sessions: Vec<Vec<u8>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn gdb_addr(rng: &mut Rng, clean: bool) -> String {
    let v = match rng.below(6) {
        0 | 1 => 0x10_000 + rng.below(0x1000),
        2 => rng.below(fake_vm::RAM as u64 + 0x2000),
        3 => u64::MAX - rng.below(0x20),
        _ => rng.interesting_u64(),
    };
    match if clean { 20 } else { rng.below(20) } {
        0 => format!("{v:x}{:x}", rng.below(16)), // more than 64 bits
        1 => String::new(),
        2 => "xyz".into(),
        3 => format!("-{v:x}"),
        _ => format!("{v:x}"),
    }
}

fn gdb_len(rng: &mut Rng, clean: bool) -> String {
    let v = match rng.below(6) {
        0..=2 => rng.below(0x40),
        3 => *rng.pick(&[0x1000, 0xffff, 0x1_0000, 0x1_0001, 0x2_0000, 0x4_0000]),
        _ => rng.interesting_u64(),
    };
    if !clean && rng.chance(1, 20) {
        "q".into()
    } else {
        format!("{v:x}")
    }
}

fn gdb_tid(rng: &mut Rng, clean: bool) -> String {
    if clean {
        return rng.pick(&["1", "1", "2", "p1.1", "3"]).to_string();
    }
    rng.pick(&[
        "0",
        "-1",
        "1",
        "2",
        "3",
        "4",
        "ff",
        "ffffffffffffffff",
        "p1.1",
        "p1.-1",
        "p1.2",
        "-2",
        "x",
        "",
    ])
    .to_string()
}

fn monitor_cmd(rng: &mut Rng) -> Vec<u8> {
    let addr = gdb_addr(rng, true);
    let s = match rng.below(15) {
        0 => "help".into(),
        12 => "kaslr".into(),
        13 => format!(
            "kaslr stop {}",
            ["on", "off", "maybe"][rng.below(3) as usize]
        ),
        14 => "info version".into(),
        1 => "regs".into(),
        2 | 3 => format!("translate 0x{addr}"),
        4 => format!("translate {}", rng.next()),
        5 => "translate zz".into(),
        6 => "phys on".into(),
        7 => "phys off".into(),
        8 => "phys".into(),
        9 if rng.chance(1, 4) => "quit".into(),
        10 => return rng.bytes_upto(40),
        _ => "  translate   0x10000 extra ".into(),
    };
    s.into_bytes()
}

/// Escapes binary data for an `X` packet.
fn escape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in data {
        if matches!(b, b'#' | b'$' | b'}' | b'*') {
            out.extend([b'}', b ^ 0x20]);
        } else {
            out.push(b);
        }
    }
    out
}

/// One packet body from the RSP grammar, with random (often hostile) arguments.
fn packet_body(rng: &mut Rng, clean: bool) -> Vec<u8> {
    let s: String = match rng.below(40) {
        0 => "?".into(),
        1 => "g".into(),
        2 => {
            let n = match if clean { 0 } else { rng.below(4) } {
                0 => minivmm::arch::gdb::G_PACKET_LEN,
                1 => rng.index(700),
                2 => minivmm::arch::gdb::G_PACKET_LEN + 1,
                _ => minivmm::arch::gdb::G_PACKET_LEN - 1,
            };
            let mut h = hex(&rng.bytes(n));
            if rng.chance(1, 10) {
                h.push('0');
            }
            format!("G{h}")
        }
        3 | 4 => format!("p{:x}", if rng.chance(4, 5) { rng.below(0x48) } else { rng.interesting_u64() }),
        5 => {
            let n = *rng.pick(&[1usize, 2, 4, 8, 10, 16, 3, 0, 20]);
            format!("P{:x}={}", rng.below(0x48), hex(&rng.bytes(n)))
        }
        6 | 7 => format!("m{},{}", gdb_addr(rng, clean), gdb_len(rng, clean)),
        // Binary read (`x`): minivmm answers it beside gdbstub, in LLDB's or GDB 16's format.
        8 if rng.chance(1, 8) => "x0,0".into(),
        8 => format!("x{},{}", gdb_addr(rng, clean), gdb_len(rng, clean)),
        9 | 10 => {
            let n = rng.index(40);
            let data = hex(&rng.bytes(n));
            let len = if rng.chance(4, 5) { format!("{n:x}") } else { gdb_len(rng, clean) };
            format!("M{},{len}:{data}", gdb_addr(rng, clean))
        }
        11 => {
            let data = rng.bytes_upto(40);
            let mut p = format!("X{},{:x}:", gdb_addr(rng, clean), data.len()).into_bytes();
            p.extend(escape(&data));
            return p;
        }
        12..=15 => {
            let z = if rng.chance(1, 2) { 'Z' } else { 'z' };
            let ty = if rng.chance(9, 10) { rng.below(5) } else { rng.below(16) };
            let kind = *rng.pick(&["1", "2", "4", "8", "3", "0", "10", "ffffffffffffffff", ""]);
            format!("{z}{ty},{},{kind}", gdb_addr(rng, clean))
        }
        16 => "c".into(),
        17 => "s".into(),
        18 => format!("{}{}", rng.pick(&["c", "s", "C05;", "S05;", "C05", "S0b"]), gdb_addr(rng, clean)),
        19..=22 => {
            let mut v = String::from("vCont");
            for _ in 0..1 + rng.index(3) {
                // gdbstub itself refuses `t` and `r` (not minivmm's to handle).
                let action = if clean {
                    rng.pick(&["c", "s", "C05", "S05"])
                } else {
                    rng.pick(&["c", "s", "t", "C05", "S05", "r10000,10010", "q"])
                };
                v.push(';');
                v.push_str(action);
                if rng.chance(2, 3) {
                    v.push(':');
                    let tid = if rng.chance(1, 8) { "-1".into() } else { gdb_tid(rng, clean) };
                    v.push_str(&tid);
                }
            }
            v
        }
        23 => "vCont?".into(),
        24 | 25 => {
            let op = if clean { rng.pick(&["g", "c"]) } else { rng.pick(&["g", "c", "G", "x"]) };
            format!("H{op}{}", gdb_tid(rng, clean))
        }
        26 => format!("T{}", gdb_tid(rng, clean)),
        27 => rng
            .pick(&[
                "qfThreadInfo",
                "qsThreadInfo",
                "qC",
                "qAttached",
                "qOffsets",
                "qSymbol::",
                "qTStatus",
                "QStartNoAckMode",
                "vMustReplyEmpty",
                "qHostInfo",
                "QThreadEvents:1",
                "qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;fork-events+;vfork-events+;exec-events+;vContSupported+;QThreadEvents+;no-resumed+;xmlRegisters=i386",
                "qSupported:multiprocess-;swbreak+",
                "qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+;binary-upload+",
                "qSupported:binary-upload+",
                "vKill;1",
                "!",
                "qXfer:threads:read::0,fff",
                "QDisableRandomization:1",
                "vFile:open:6a7573742070726f62696e67,0,1c0",
            ])
            .to_string(),
        28 | 29 => {
            let annex = if clean {
                "target.xml"
            } else {
                rng.pick(&["target.xml", "i386-64bit.xml", "", "../../etc/passwd", "target.xml:x"])
            };
            format!("qXfer:features:read:{annex}:{},{}", gdb_len(rng, clean), gdb_len(rng, clean))
        }
        30 => format!("qThreadExtraInfo,{}", gdb_tid(rng, clean)),
        31..=33 => format!("qRcmd,{}", hex(&monitor_cmd(rng))),
        34 if !clean => rng.pick(&["qRcmd,zz", "qSupported", "vKill", "T0", "qThreadExtraInfo,0"]).to_string(),
        35 if rng.chance(1, 3) => rng.pick(&["D", "D;1", "k"]).to_string(),
        36 if !clean => {
            return rng.bytes_upto(24);
        }
        _ => format!("m{},{}", gdb_addr(rng, clean), gdb_len(rng, clean)),
    };
    s.into_bytes()
}

/// `$body#cs`, usually right; sometimes a wrong or missing checksum, or cut short.
fn frame(rng: &mut Rng, clean: bool, body: &[u8], out: &mut Vec<u8>) {
    let sum = body.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    out.push(b'$');
    out.extend_from_slice(body);
    match if clean { 40 } else { rng.below(40) } {
        0 => out.extend(format!("#{:02x}", sum.wrapping_add(1)).as_bytes()),
        1 => out.extend(b"#zz"),
        2 => out.push(b'#'),
        3 => {}
        4 => out.extend(format!("#{:02X}", sum).as_bytes()),
        _ => out.extend(format!("#{sum:02x}").as_bytes()),
    }
}

fn gen_stream(rng: &mut Rng) -> Vec<u8> {
    // gdbstub ends the session at the first malformed packet, bad checksum or NACK: most
    // streams are well-formed so that the packets after the first reach the target.
    let clean = rng.chance(3, 4);
    let mut out = Vec::new();
    if rng.chance(1, 4) {
        frame(rng, true, b"QStartNoAckMode", &mut out);
        out.push(b'+');
    }
    for _ in 0..1 + rng.index(40) {
        match if clean {
            3 + rng.below(27)
        } else {
            rng.below(30)
        } {
            0 => out.push(b'-'),
            1 => out.extend(rng.bytes_upto(8 + 1)),
            2 => {
                // A run-length encoded body (the stub should not expect RLE from GDB).
                out.extend(b"$m10000,4*\"#00");
            }
            3 => out.push(0x03),
            _ => {
                let body = packet_body(rng, clean);
                frame(rng, clean, &body, &mut out);
                if rng.chance(4, 5) {
                    out.push(b'+');
                }
                // GDB sends nothing but Ctrl-C while the VM runs.
                let resumes = matches!(body.first(), Some(b'c' | b's' | b'C' | b'S'))
                    || body.starts_with(b"vCont;");
                if clean && resumes && rng.chance(4, 5) {
                    out.push(0x03);
                }
            }
        }
    }
    out
}

fn gen_gdb(rng: &mut Rng) -> GdbCase {
    GdbCase {
        vm_seed: rng.next(),
        cpus: 1 + rng.index(3),
        caps: DebugCaps {
            data_breakpoints_fire: rng.chance(1, 2),
            exec_breakpoints_fire: rng.chance(3, 4),
            int3_exits: rng.chance(3, 4),
        },
        starts_paused: rng.chance(1, 2),
        sessions: (0..1 + rng.index(3)).map(|_| gen_stream(rng)).collect(),
    }
}

/// Every `$...#xx` the stub sent has the right checksum.
fn check_stub_output(out: &[u8]) {
    let mut i = 0;
    while let Some(start) = out[i..].iter().position(|&b| b == b'$').map(|p| p + i) {
        let Some(end) = out[start..]
            .iter()
            .position(|&b| b == b'#')
            .map(|p| p + start)
        else {
            panic!(
                "unterminated packet from the stub: {:?}",
                String::from_utf8_lossy(&out[start..])
            );
        };
        let body = &out[start + 1..end];
        let sum = body.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        let got = std::str::from_utf8(out.get(end + 1..end + 3).unwrap_or_default())
            .ok()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        assert_eq!(
            got,
            Some(sum),
            "bad checksum on {:?}",
            String::from_utf8_lossy(body)
        );
        i = end + 3;
    }
}

fn run_gdb(c: &GdbCase) {
    let (vm, mut target) = FakeVm::start(c.vm_seed, c.cpus, c.caps, c.starts_paused);
    for input in &c.sessions {
        let (reason, after, output) = minivmm::gdb::fuzz_session(&mut target, input);
        if std::env::var_os("MINIVMM_FUZZ_VERBOSE").is_some() {
            eprintln!(
                "--- in:  {}\n--- out: {}\n--- end: {reason:?} -> {after:?}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(&output)
            );
        }
        check_stub_output(&output);
        let seen = vm.observe();
        match after {
            AfterSession::Killed => {
                // The kill goes to the VMM thread asynchronously.
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                while !vm.observe().killed && std::time::Instant::now() < deadline {
                    std::thread::yield_now();
                }
                assert!(
                    vm.observe().killed,
                    "the session ended with kill but the VMM was not told"
                );
                break;
            }
            AfterSession::VmEnded => break,
            AfterSession::Detached if seen.injected == 0 && !seen.ended => {
                // GDB went away: nothing of its stays planted, and the VM runs on. The resume
                // reaches each vCPU through its queue, as in minivmm: give it a moment.
                let mut seen = seen;
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                while seen.cpus.iter().any(|c| c.0)
                    && !seen.ended
                    && std::time::Instant::now() < deadline
                {
                    std::thread::yield_now();
                    seen = vm.observe();
                }
                if seen.ended {
                    break;
                }
                for (i, &(paused, step, hw, sw, soft)) in seen.cpus.iter().enumerate() {
                    assert!(
                        !step && !hw && !sw && !soft,
                        "vCPU {i} keeps GDB's debug state after detach (step {step}, hw {hw}, sw {sw}, soft {soft})"
                    );
                    assert!(!paused, "vCPU {i} still paused after detach");
                }
            }
            AfterSession::Detached => {}
        }
    }
    drop(target);
    vm.join();
}

fn gdb_to_bytes(c: &GdbCase) -> Vec<u8> {
    // The streams, one per connection, after a line describing the fake VM.
    let mut out = format!(
        "vm_seed={:#x} cpus={} caps={:?} starts_paused={} sessions={}\n",
        c.vm_seed,
        c.cpus,
        c.caps,
        c.starts_paused,
        c.sessions.len()
    )
    .into_bytes();
    for s in &c.sessions {
        out.extend(format!("--- {} bytes\n", s.len()).as_bytes());
        out.extend(s);
        out.push(b'\n');
    }
    out
}

#[test]
fn gdbstub() {
    fuzz(Target {
        name: "gdbstub",
        hang_after: Duration::from_secs(8),
        generate: gen_gdb,
        to_bytes: gdb_to_bytes,
        run: run_gdb,
    });
}
