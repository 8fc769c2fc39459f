//! Format detection, loading of each format, and the boot information written.

use super::elf::*;
use super::*;
use crate::arch::layout::PVH_START_INFO;
use crate::memory::{create_guest_memory, e820_map, low_ram_end, ram_ranges};

fn bzimage(version: u16, xloadflags: u16, payload: usize) -> Vec<u8> {
    let mut img = vec![0u8; 5 * 512 + payload];
    img[0x1f1] = 4; // setup_sects
    img[0x1f4..0x1f8].copy_from_slice(&((payload / 16) as u32).to_le_bytes());
    img[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    img[0x211] = 1; // loadflags: LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x100000u32.to_le_bytes()); // code32_start
    img[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    img[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
    img[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes()); // init_size
    img
}

fn elf(paddr: u64, filesz: u64, pvh: bool) -> Vec<u8> {
    let mut img = vec![0u8; 0x1000];
    img[0..4].copy_from_slice(b"\x7fELF");
    img[4] = 2;
    img[5] = 1;
    img[6] = 1;
    img[0x10..0x12].copy_from_slice(&2u16.to_le_bytes());
    img[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
    img[0x18..0x20].copy_from_slice(&paddr.to_le_bytes()); // e_entry
    img[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
    img[0x34..0x36].copy_from_slice(&0x40u16.to_le_bytes());
    img[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
    img[0x38..0x3a].copy_from_slice(&(1 + pvh as u16).to_le_bytes());
    let ph = 0x40;
    img[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
    img[ph + 8..ph + 16].copy_from_slice(&0x800u64.to_le_bytes());
    img[ph + 0x10..ph + 0x18].copy_from_slice(&paddr.to_le_bytes());
    img[ph + 0x18..ph + 0x20].copy_from_slice(&paddr.to_le_bytes());
    img[ph + 0x20..ph + 0x28].copy_from_slice(&filesz.to_le_bytes());
    img[ph + 0x28..ph + 0x30].copy_from_slice(&filesz.to_le_bytes());
    img[0x800] = 0xf4;
    if pvh {
        let ph = 0x78;
        let note = 0x900u64;
        img[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        img[ph + 8..ph + 16].copy_from_slice(&note.to_le_bytes());
        img[ph + 0x20..ph + 0x28].copy_from_slice(&20u64.to_le_bytes());
        let n = note as usize;
        img[n..n + 4].copy_from_slice(&4u32.to_le_bytes()); // namesz
        img[n + 4..n + 8].copy_from_slice(&4u32.to_le_bytes()); // descsz
        img[n + 8..n + 12].copy_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        img[n + 12..n + 16].copy_from_slice(b"Xen\0");
        img[n + 16..n + 20].copy_from_slice(&(paddr as u32 + 0x10).to_le_bytes());
    }
    img
}

fn boot(image: &[u8], initrd: Option<&[u8]>, mem_mib: u64) -> Result<(GuestMem, LoadedKernel)> {
    let dir = std::env::temp_dir().join(format!(
        "minivmm-loader-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let kpath = dir.join("kernel");
    std::fs::write(&kpath, image).unwrap();
    let ipath = dir.join("initrd");
    if let Some(i) = initrd {
        std::fs::write(&ipath, i).unwrap();
    }
    let ranges = ram_ranges(mem_mib).unwrap();
    let e820 = e820_map(&ranges);
    let mem = create_guest_memory(mem_mib).unwrap();
    let spec = BootSpec {
        kernel: &kpath,
        initrd: initrd.map(|_| ipath.as_path()),
        cmdline: "console=ttyS0 test=1",
        linux_cmdline_extra: Some("quirk=1"),
        low_ram_end: low_ram_end(mem_mib),
        e820: &e820,
        acpi_rsdp: Some(0xe0000),
    };
    let r = load(&mem, &spec);
    std::fs::remove_dir_all(&dir).ok();
    r.map(|k| (mem, k))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn detects_formats_by_content() {
    assert_eq!(
        detect_format(&bzimage(0x020f, 1, 512)),
        Some(KernelFormat::BzImage)
    );
    assert_eq!(
        detect_format(&elf(0x100000, 16, false)),
        Some(KernelFormat::Elf)
    );
    assert_eq!(detect_format(b"random bytes"), None);
    assert_eq!(detect_format(&[0u8; 4096]), None);
}

#[test]
fn initrd_stays_below_the_kernels_initrd_addr_max() {
    // 2 GiB of RAM, but this kernel takes its initrd only below 0x37ffffff.
    let (mem, _) = boot(&bzimage(0x020f, 1, 4096), Some(&[9u8; 5000]), 2048).unwrap();
    let p: ZeroPage = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
    let image = u64::from(p.0.hdr.ramdisk_image);
    assert_eq!(image % 4096, 0);
    assert!(
        image + 5000 <= 0x3800_0000,
        "initrd at {image:#x} above initrd_addr_max"
    );
    assert!(image > 0x3000_0000, "as high as allowed, at {image:#x}");
}

#[test]
fn bzimage_gets_zero_page_cmdline_e820_and_initrd() {
    let (mem, k) = boot(&bzimage(0x020f, 1, 4096), Some(&[7u8; 10000]), 64).unwrap();
    assert_eq!(
        k.entry,
        BootEntry::Long64 {
            entry: 0x100200,
            zero_page: ZERO_PAGE
        }
    );
    let p: ZeroPage = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
    let p = p.0;
    assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE as u32);
    assert_eq!(p.e820_entries, 3);
    assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
    let (image, size) = ({ p.hdr.ramdisk_image } as u64, { p.hdr.ramdisk_size });
    assert_eq!(size, 10000);
    assert_eq!(image % 4096, 0);
    assert!(image + 10000 <= 64 << 20);
    assert!(image >= 0x200000, "above the kernel's init_size");
    let mut buf = [0u8; 4];
    mem.read_slice(&mut buf, GuestAddress(image)).unwrap();
    assert_eq!(buf, [7; 4]);
    let mut cmd = [0u8; 21];
    mem.read_slice(&mut cmd, GuestAddress(CMDLINE)).unwrap();
    assert_eq!(&cmd, b"console=ttyS0 test=1\0");
}

#[test]
fn bzimage_errors_are_specific() {
    assert!(matches!(
        boot(&bzimage(0x020a, 0, 512), None, 64),
        Err(LoaderError::OldBootProtocol { .. })
    ));
    let mut truncated = bzimage(0x020f, 1, 4096);
    truncated.truncate(5 * 512 + 100);
    assert!(matches!(
        boot(&truncated, None, 64),
        Err(LoaderError::Corrupt { .. })
    ));
    let mut huge = bzimage(0x020f, 1, 512);
    huge[0x260..0x264].copy_from_slice(&(100u32 << 20).to_le_bytes());
    assert!(matches!(
        boot(&huge, None, 64),
        Err(LoaderError::TooBig { .. })
    ));
    assert!(matches!(
        boot(&bzimage(0x020f, 1, 512), Some(&vec![0u8; 63 << 20]), 64),
        Err(LoaderError::InitrdNoRoom { .. })
    ));
    // Larger than all of RAM: refused while reading, before anything is placed.
    assert!(matches!(
        boot(&bzimage(0x020f, 1, 512), Some(&vec![0u8; 70 << 20]), 64),
        Err(LoaderError::LargerThanMemory {
            what: "initrd",
            mem_mib: 64,
            ..
        })
    ));
}

#[test]
fn elf_is_entered_in_long_mode() {
    let (_, k) = boot(&elf(0x100000, 16, false), None, 16).unwrap();
    assert_eq!(
        k.entry,
        BootEntry::Long64 {
            entry: 0x100000,
            zero_page: ZERO_PAGE
        }
    );
}

#[test]
fn pvh_elf_gets_start_info() {
    let (mem, k) = boot(&elf(0x100000, 16, true), Some(&[1u8; 100]), 16).unwrap();
    assert_eq!(
        k.entry,
        BootEntry::Pvh32 {
            entry: 0x100010,
            start_info: PVH_START_INFO
        }
    );
    let info: StartInfo = mem.read_obj(GuestAddress(PVH_START_INFO)).unwrap();
    assert_eq!(info.0.magic, XEN_HVM_START_MAGIC);
    assert_eq!(info.0.memmap_entries, 3);
    assert_eq!(info.0.nr_modules, 1);
    let module: ModlistEntry = mem.read_obj(GuestAddress(info.0.modlist_paddr)).unwrap();
    assert_eq!(module.0.size, 100);
}

#[test]
fn elf_errors_are_specific() {
    assert!(matches!(
        boot(&elf(0x1000, 16, false), None, 16),
        Err(LoaderError::LowSegment { .. })
    ));
    assert!(matches!(
        boot(&elf(0x2000000, 16, false), None, 16),
        Err(LoaderError::TooBig { .. })
    ));
    let mut bad = elf(0x100000, 16, false);
    bad[0x60..0x68].copy_from_slice(&0x10_0000u64.to_le_bytes()); // filesz past EOF
    assert!(matches!(
        boot(&bad, None, 16),
        Err(LoaderError::Corrupt { .. })
    ));
    let mut arm = elf(0x100000, 16, false);
    arm[0x12] = 183;
    assert!(matches!(
        boot(&arm, None, 16),
        Err(LoaderError::WrongElfArch(_))
    ));
}

#[test]
fn program_headers_at_the_top_of_the_address_space_are_refused() {
    // Found by the fuzzer: reading a field there overflowed the offset arithmetic.
    let mut img = elf(0x100000, 16, false);
    img[0x20..0x28].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    assert!(elf_segments(&img).is_err());
}

#[test]
fn empty_and_unknown_files_are_refused() {
    assert!(matches!(boot(&[], None, 16), Err(LoaderError::Empty(_))));
    assert!(matches!(
        boot(&[0x42; 8192], None, 16),
        Err(LoaderError::UnknownFormat(_))
    ));
}

#[test]
fn linux_kernels_are_told_apart_from_other_kernels() {
    let mut linux = bzimage(0x020f, 1, 4096);
    linux[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
    linux[0x300..0x306].copy_from_slice(b"6.1.0 ");
    assert!(is_linux(&linux));
    assert!(!is_linux(&bzimage(0x020f, 1, 4096)));
    let mut vmlinux = elf(0x100000, 16, false);
    vmlinux[0xa00..0xa0e].copy_from_slice(b"Linux version ");
    assert!(is_linux(&vmlinux));
    assert!(!is_linux(&elf(0x100000, 16, false)));
}

#[test]
fn link_text_comes_from_pref_address_or_the_elf_load_address() {
    let mut linux = bzimage(0x020f, 1, 4096);
    linux[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
    linux[0x300..0x306].copy_from_slice(b"6.1.0 ");
    linux[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
    assert_eq!(link_text(&linux), Some(0xffff_ffff_8100_0000));
    linux[0x206..0x208].copy_from_slice(&0x0209u16.to_le_bytes());
    assert_eq!(
        link_text(&linux),
        None,
        "no pref_address before boot protocol 2.10"
    );
    let mut vmlinux = elf(0x20_0000, 16, false);
    vmlinux[0xa00..0xa0e].copy_from_slice(b"Linux version ");
    assert_eq!(link_text(&vmlinux), Some(0xffff_ffff_8020_0000));
    assert_eq!(link_text(&elf(0x100000, 16, false)), None, "not Linux");
}

#[test]
fn host_workarounds_reach_only_linux() {
    let mut linux = bzimage(0x020f, 1, 4096);
    linux[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
    linux[0x300..0x306].copy_from_slice(b"6.1.0 ");
    let (_, k) = boot(&linux, None, 64).unwrap();
    assert_eq!(k.cmdline, "console=ttyS0 test=1 quirk=1");
    let (_, k) = boot(&bzimage(0x020f, 1, 4096), None, 64).unwrap();
    assert_eq!(k.cmdline, "console=ttyS0 test=1");
}

#[test]
fn initrd_address_is_page_aligned_and_above_kernel() {
    assert_eq!(
        initrd_address(0x1800, 0x200000, 0x3ff_ffff),
        Some(0x3ffe000)
    );
    assert_eq!(
        initrd_address(0x1000, 0x3fff000, 0x3ff_ffff),
        Some(0x3fff000)
    );
    assert_eq!(initrd_address(0x2000, 0x3fff000, 0x3ff_ffff), None);
    assert_eq!(initrd_address(u64::MAX, 0, 0x3ff_ffff), None);
}
