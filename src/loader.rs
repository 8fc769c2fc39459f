//! Kernel and initrd loading: detects the kernel's format from its bytes, loads it with
//! linux-loader, places the initrd and command line, and writes the boot information the
//! format's protocol defines (Linux zero page or PVH start_info), including the memory map.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{KernelLoader, KernelLoaderResult};
use thiserror::Error;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::arch::boot::BootEntry;
use crate::arch::layout::{CMDLINE, CMDLINE_MAX, HIMEM_START, PVH_START_INFO, ZERO_PAGE};
use crate::memory::{E820Entry, E820Kind, GuestMem};

#[derive(Debug, Error)]
pub enum LoaderError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {0} is empty")]
    Empty(PathBuf),
    #[error(
        "{what} {path} is larger than the guest's {mem_mib} MiB of memory: raise --mem or check the file name"
    )]
    LargerThanMemory {
        what: &'static str,
        path: PathBuf,
        mem_mib: u64,
    },
    #[error(
        "kernel {0} is not a format minivmm can boot: give a Linux bzImage, a vmlinux ELF or a PVH ELF"
    )]
    UnknownFormat(PathBuf),
    #[error("kernel {path} is truncated or corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("ELF kernel {0} is not a 64-bit x86 executable")]
    WrongElfArch(PathBuf),
    #[error(
        "bzImage {path} uses boot protocol {major}.{minor:02} without a 64-bit entry point; minivmm needs protocol 2.12 or later (Linux 3.8+)"
    )]
    OldBootProtocol {
        path: PathBuf,
        major: u16,
        minor: u16,
    },
    #[error(
        "{what} needs guest memory up to {need_mib} MiB but --mem gives {have_mib} MiB below the 3 GiB MMIO hole: raise --mem"
    )]
    TooBig {
        what: &'static str,
        need_mib: u64,
        have_mib: u64,
    },
    #[error("ELF segment at {addr:#x} lies below 1 MiB, where minivmm keeps its boot structures")]
    LowSegment { addr: u64 },
    #[error(
        "initrd ({size} bytes) does not fit between the kernel (ends at {kernel_end:#x}) and the highest address it may use ({limit:#x}): raise --mem or use a smaller initrd"
    )]
    InitrdNoRoom {
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the command line contains a NUL byte")]
    CmdlineNul,
    #[error("writing {0} into guest memory failed")]
    GuestWrite(&'static str),
}

type Result<T> = std::result::Result<T, LoaderError>;

/// The formats minivmm understands, recognised by content, never by file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage,
    Elf,
}

/// Recognises a kernel image from its first bytes.
pub fn detect_format(image: &[u8]) -> Option<KernelFormat> {
    if image.starts_with(b"\x7fELF") {
        return Some(KernelFormat::Elf);
    }
    let boot_flag = image.get(0x1fe..0x200)?;
    let magic = image.get(0x202..0x206)?;
    (boot_flag == [0x55, 0xaa] && magic == b"HdrS").then_some(KernelFormat::BzImage)
}

/// What to boot, and with which memory.
#[derive(Clone, Copy)]
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    /// Appended to the command line when the kernel is Linux (host workarounds).
    pub linux_cmdline_extra: Option<&'a str>,
    /// End of RAM below the MMIO gap: all boot data and the kernel must fit under it.
    pub low_ram_end: u64,
    pub e820: &'a [E820Entry],
    pub acpi_rsdp: Option<u64>,
}

/// What the vCPU setup needs to know after loading.
#[derive(Debug)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    pub entry: BootEntry,
    /// The command line the kernel got.
    pub cmdline: String,
}

/// Whether the image is a Linux kernel (not just any kernel in a Linux format): a bzImage
/// with a kernel version string, or an ELF carrying Linux's banner.
pub fn is_linux(image: &[u8]) -> bool {
    match detect_format(image) {
        Some(KernelFormat::BzImage) => {
            let Some(ptr) = le_u16(image, 0x20e).filter(|&p| p != 0) else {
                return false;
            };
            image
                .get(0x200 + ptr as usize)
                .is_some_and(|b| b.is_ascii_digit())
        }
        Some(KernelFormat::Elf) => image.windows(14).any(|w| w == b"Linux version "),
        None => false,
    }
}

/// Reads at most `limit` bytes: more could not fit in the guest, and a device such as
/// /dev/zero would otherwise be read until the host runs out of memory.
fn read_file(what: &'static str, path: &Path, limit: u64) -> Result<Vec<u8>> {
    let read_err = |source| LoaderError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let size_hint = file.metadata().map(|m| m.len().min(limit)).unwrap_or(0);
    let mut bytes = Vec::with_capacity(size_hint as usize);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(LoaderError::LargerThanMemory {
            what,
            path: path.to_owned(),
            mem_mib: limit >> 20,
        });
    }
    Ok(bytes)
}

/// The kernel and initrd files' contents.
pub struct Images {
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
}

/// Reads the kernel and the initrd, failing on files that cannot be read, an empty kernel
/// and files larger than the guest's `mem_bytes`: checks that need no VM.
pub fn read_images(kernel: &Path, initrd: Option<&Path>, mem_bytes: u64) -> Result<Images> {
    let image = read_file("kernel", kernel, mem_bytes)?;
    if image.is_empty() {
        return Err(LoaderError::Empty(kernel.to_owned()));
    }
    let initrd = initrd
        .map(|p| read_file("initrd", p, mem_bytes))
        .transpose()?;
    Ok(Images {
        kernel: image,
        initrd,
    })
}

/// Loads the kernel (and initrd) into `mem` and writes the boot information.
pub fn load(mem: &GuestMem, spec: &BootSpec) -> Result<LoadedKernel> {
    let ram: u64 = spec
        .e820
        .iter()
        .filter(|e| e.kind == E820Kind::Ram)
        .map(|e| e.size)
        .sum();
    let images = read_images(spec.kernel, spec.initrd, ram.max(spec.low_ram_end))?;
    load_image(mem, spec, &images.kernel, images.initrd.as_deref())
}

/// [`load`] for a kernel and initrd already in memory; `spec.kernel` only names the kernel
/// in errors and `spec.initrd` is not used.
pub fn load_image(
    mem: &GuestMem,
    spec: &BootSpec,
    image: &[u8],
    initrd: Option<&[u8]>,
) -> Result<LoadedKernel> {
    if image.is_empty() {
        return Err(LoaderError::Empty(spec.kernel.to_owned()));
    }
    let full_cmdline = match spec.linux_cmdline_extra {
        Some(extra) if is_linux(image) => format!("{} {extra}", spec.cmdline),
        _ => spec.cmdline.to_string(),
    };
    let spec = &BootSpec {
        cmdline: &full_cmdline,
        ..*spec
    };
    let cmdline = spec.cmdline.as_bytes();
    if cmdline.contains(&0) {
        return Err(LoaderError::CmdlineNul);
    }
    if cmdline.len() >= CMDLINE_MAX as usize {
        return Err(LoaderError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX as usize - 1,
        });
    }
    match detect_format(image) {
        Some(KernelFormat::BzImage) => load_bzimage(mem, spec, image, initrd),
        Some(KernelFormat::Elf) => load_elf(mem, spec, image, initrd),
        None => Err(LoaderError::UnknownFormat(spec.kernel.to_owned())),
    }
}

fn corrupt(path: &Path, why: impl ToString) -> LoaderError {
    LoaderError::Corrupt {
        path: path.to_owned(),
        why: why.to_string(),
    }
}

fn too_big(what: &'static str, need: u64, low_ram_end: u64) -> LoaderError {
    LoaderError::TooBig {
        what,
        need_mib: need.div_ceil(1 << 20),
        have_mib: low_ram_end >> 20,
    }
}

fn write_cmdline(mem: &GuestMem, cmdline: &str) -> Result<()> {
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE))
        .map_err(|_| LoaderError::GuestWrite("the command line"))
}

/// The page-aligned address for an initrd of `size` bytes: as high as allowed (kernels
/// decompress upwards from their load address), but above `kernel_end`.
pub fn initrd_address(size: u64, kernel_end: u64, highest: u64) -> Option<u64> {
    let top = highest.checked_add(1)?;
    let addr = top.checked_sub(size)? & !0xfff;
    (addr >= kernel_end).then_some(addr)
}

fn place_initrd(mem: &GuestMem, initrd: &[u8], kernel_end: u64, highest: u64) -> Result<u64> {
    let size = initrd.len() as u64;
    let addr = initrd_address(size, kernel_end, highest).ok_or(LoaderError::InitrdNoRoom {
        size,
        kernel_end,
        limit: highest,
    })?;
    mem.write_slice(initrd, GuestAddress(addr))
        .map_err(|_| LoaderError::GuestWrite("the initrd"))?;
    Ok(addr)
}

/// `boot_params` as plain bytes for guest memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);
// SAFETY: boot_params is a packed C struct of integers and arrays: every bit pattern is valid.
unsafe impl ByteValued for ZeroPage {}

const KERNEL_LOADER_OTHER: u8 = 0xff;
const XLF_KERNEL_64: u16 = 1;
const BOOT_FLAG: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Before protocol 2.03 the initrd limit was not in the header; this was the fixed value.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Protocol 2.06 added cmdline_size; older kernels took 255 bytes.
const OLD_CMDLINE_MAX: usize = 255;

/// Where the initrd is, for the kernel (placed below 4 GiB, so 32-bit fields suffice).
fn set_ramdisk(params: &mut boot_params, addr: u64, initrd: &[u8]) {
    params.hdr.ramdisk_image = addr as u32;
    params.hdr.ramdisk_size = initrd.len() as u32;
}

fn write_zero_page(mem: &GuestMem, spec: &BootSpec, mut params: boot_params) -> Result<()> {
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = spec.cmdline.len() as u32;
    if let Some(rsdp) = spec.acpi_rsdp {
        params.acpi_rsdp_addr = rsdp;
    }
    for (slot, e) in params.e820_table.iter_mut().zip(spec.e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = spec.e820.len().min(params.e820_table.len()) as u8;
    write_cmdline(mem, spec.cmdline)?;
    mem.write_obj(ZeroPage(params), GuestAddress(ZERO_PAGE))
        .map_err(|_| LoaderError::GuestWrite("the zero page"))
}

fn load_bzimage(
    mem: &GuestMem,
    spec: &BootSpec,
    image: &[u8],
    initrd: Option<&[u8]>,
) -> Result<LoadedKernel> {
    let path = spec.kernel;
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let setup_size = (setup_sects + 1) * 512;
    let syssize = image
        .get(0x1f4..0x1f8)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .unwrap_or(0);
    // syssize counts 16-byte paragraphs, rounded up.
    if image.len() < setup_size || image.len() + 15 < setup_size + syssize * 16 {
        return Err(corrupt(
            path,
            format!(
                "the setup header promises {} bytes but the file has {}",
                setup_size + syssize * 16,
                image.len()
            ),
        ));
    }

    let result: KernelLoaderResult = BzImage::load(
        mem,
        None,
        &mut Cursor::new(image),
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(|e| match e {
        linux_loader::loader::Error::InvalidKernelStartAddress => {
            corrupt(path, "its load address is below 1 MiB")
        }
        linux_loader::loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::ReadBzImageCompressedKernel,
        ) => too_big(
            "the kernel",
            (image.len() - setup_size) as u64 + HIMEM_START,
            spec.low_ram_end,
        ),
        other => corrupt(path, other),
    })?;
    let hdr = result
        .setup_header
        .ok_or_else(|| corrupt(path, "no setup header"))?;
    let version = hdr.version;
    if version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LoaderError::OldBootProtocol {
            path: path.to_owned(),
            major: version >> 8,
            minor: version & 0xff,
        });
    }
    let max_cmdline = if version >= 0x0206 {
        hdr.cmdline_size as usize
    } else {
        OLD_CMDLINE_MAX
    };
    if spec.cmdline.len() > max_cmdline {
        return Err(LoaderError::CmdlineTooLong {
            len: spec.cmdline.len(),
            max: max_cmdline,
        });
    }

    // The kernel decompresses in place and needs init_size bytes from its load address.
    let load = result.kernel_load.0;
    let kernel_end = (load + u64::from(hdr.init_size)).max(result.kernel_end);
    if kernel_end > spec.low_ram_end {
        return Err(too_big(
            "the kernel (with its decompression space)",
            kernel_end,
            spec.low_ram_end,
        ));
    }

    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        let limit = if version >= 0x0203 {
            u64::from(hdr.initrd_addr_max)
        } else {
            DEFAULT_INITRD_ADDR_MAX
        };
        let highest = limit.min(spec.low_ram_end - 1);
        let addr = place_initrd(mem, initrd, kernel_end, highest)?;
        set_ramdisk(&mut params, addr, initrd);
    }
    write_zero_page(mem, spec, params)?;
    Ok(LoadedKernel {
        format: KernelFormat::BzImage,
        // The 64-bit entry point sits 0x200 bytes into the protected-mode code.
        entry: BootEntry::Long64 {
            entry: load + 0x200,
            zero_page: ZERO_PAGE,
        },
        cmdline: spec.cmdline.to_string(),
    })
}

/// A PT_LOAD segment's placement, from the program headers.
#[derive(Debug, PartialEq, Eq)]
pub struct ElfSegment {
    pub paddr: u64,
    pub memsz: u64,
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

const EM_X86_64: u16 = 62;
const ELFCLASS64: u8 = 2;
const PT_LOAD: u32 = 1;

/// Checks an ELF image's header and program headers against the file's length, and returns
/// the loadable segments. linux-loader trusts these fields; minivmm wants clear errors first.
pub fn elf_segments(image: &[u8]) -> std::result::Result<Vec<ElfSegment>, String> {
    if image.get(4) != Some(&ELFCLASS64) || le_u16(image, 0x12) != Some(EM_X86_64) {
        return Err("not x86-64".into());
    }
    let truncated = || "header points past the end of the file".to_string();
    let phoff = le_u64(image, 0x20).ok_or_else(truncated)?;
    let phentsize = le_u16(image, 0x36).ok_or_else(truncated)? as u64;
    let phnum = le_u16(image, 0x38).ok_or_else(truncated)? as u64;
    if phnum == 0 {
        return Err("no program headers".into());
    }
    if phentsize < 0x38 {
        return Err(format!("program header size {phentsize} is too small"));
    }
    let mut segments = Vec::new();
    for i in 0..phnum {
        let at = phoff
            .checked_add(i * phentsize)
            .and_then(|a| usize::try_from(a).ok())
            .ok_or_else(truncated)?;
        let p_type = le_u32(image, at).ok_or_else(truncated)?;
        if p_type != PT_LOAD {
            continue;
        }
        let offset = le_u64(image, at + 0x08).ok_or_else(truncated)?;
        let paddr = le_u64(image, at + 0x18).ok_or_else(truncated)?;
        let filesz = le_u64(image, at + 0x20).ok_or_else(truncated)?;
        let memsz = le_u64(image, at + 0x28).ok_or_else(truncated)?;
        match offset.checked_add(filesz) {
            Some(end) if end <= image.len() as u64 => {}
            _ => return Err(format!("segment {i} extends past the end of the file")),
        }
        if memsz < filesz || paddr.checked_add(memsz).is_none() {
            return Err(format!("segment {i} has inconsistent sizes"));
        }
        segments.push(ElfSegment { paddr, memsz });
    }
    if segments.is_empty() {
        return Err("no loadable segments".into());
    }
    Ok(segments)
}

const PVH_MEMMAP: u64 = PVH_START_INFO + 0x40;
const PVH_MODLIST: u64 = PVH_START_INFO + 0x800;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
// SAFETY: a repr(C) struct of integers without padding.
unsafe impl ByteValued for StartInfo {}
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemmapEntry(hvm_memmap_table_entry);
// SAFETY: a repr(C) struct of integers without padding.
unsafe impl ByteValued for MemmapEntry {}
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModlistEntry(hvm_modlist_entry);
// SAFETY: a repr(C) struct of integers without padding.
unsafe impl ByteValued for ModlistEntry {}

fn load_elf(
    mem: &GuestMem,
    spec: &BootSpec,
    image: &[u8],
    initrd: Option<&[u8]>,
) -> Result<LoadedKernel> {
    let path = spec.kernel;
    let segments = elf_segments(image).map_err(|why| {
        if why == "not x86-64" {
            LoaderError::WrongElfArch(path.to_owned())
        } else {
            corrupt(path, why)
        }
    })?;
    let mut kernel_end = 0;
    for s in &segments {
        if s.paddr < HIMEM_START {
            return Err(LoaderError::LowSegment { addr: s.paddr });
        }
        kernel_end = kernel_end.max(s.paddr + s.memsz);
    }
    if kernel_end > spec.low_ram_end {
        return Err(too_big("the kernel", kernel_end, spec.low_ram_end));
    }
    let result = Elf::load(
        mem,
        None,
        &mut Cursor::new(image),
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(|e| corrupt(path, e))?;

    let highest = spec.low_ram_end - 1;
    let initrd_at = initrd
        .map(|i| place_initrd(mem, i, kernel_end, highest.min(DEFAULT_INITRD_ADDR_MAX)))
        .transpose()?;

    if let PvhBootCapability::PvhEntryPresent(entry) = result.pvh_boot_cap {
        write_pvh_start_info(mem, spec, initrd_at.zip(initrd.map(|i| i.len() as u64)))?;
        return Ok(LoadedKernel {
            format: KernelFormat::Elf,
            entry: BootEntry::Pvh32 {
                entry: entry.0,
                start_info: PVH_START_INFO,
            },
            cmdline: spec.cmdline.to_string(),
        });
    }

    // A vmlinux entered directly in 64-bit mode still reads the zero page.
    let mut params = boot_params::default();
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.kernel_alignment = 0x0100_0000;
    if let (Some(addr), Some(initrd)) = (initrd_at, initrd) {
        set_ramdisk(&mut params, addr, initrd);
    }
    write_zero_page(mem, spec, params)?;
    Ok(LoadedKernel {
        format: KernelFormat::Elf,
        entry: BootEntry::Long64 {
            entry: result.kernel_load.0,
            zero_page: ZERO_PAGE,
        },
        cmdline: spec.cmdline.to_string(),
    })
}

fn write_pvh_start_info(mem: &GuestMem, spec: &BootSpec, initrd: Option<(u64, u64)>) -> Result<()> {
    write_cmdline(mem, spec.cmdline)?;
    for (i, e) in spec.e820.iter().enumerate() {
        let entry = MemmapEntry(hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        });
        mem.write_obj(entry, GuestAddress(PVH_MEMMAP + 24 * i as u64))
            .map_err(|_| LoaderError::GuestWrite("the PVH memory map"))?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE,
        rsdp_paddr: spec.acpi_rsdp.unwrap_or(0),
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: spec.e820.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        let module = ModlistEntry(hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        });
        mem.write_obj(module, GuestAddress(PVH_MODLIST))
            .map_err(|_| LoaderError::GuestWrite("the PVH module list"))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST;
    }
    mem.write_obj(StartInfo(info), GuestAddress(PVH_START_INFO))
        .map_err(|_| LoaderError::GuestWrite("the PVH start info"))
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
