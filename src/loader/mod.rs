//! Kernel and initrd loading: detects the kernel's format from its bytes, loads it with
//! linux-loader, places the initrd and command line, and writes the boot information the
//! format's protocol defines (Linux zero page or PVH start_info), including the memory map.

mod elf;
#[cfg(test)]
mod tests;

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::{KernelLoader, KernelLoaderResult};
use thiserror::Error;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::arch::boot::BootEntry;
use crate::arch::layout::{CMDLINE, CMDLINE_MAX, HIMEM_START, ZERO_PAGE};
use crate::memory::{E820Entry, E820Kind, GuestMem};
use elf::load_elf;
pub use elf::{ElfSegment, elf_segments};

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

/// Where a Linux kernel image was linked to put `_text` (the base its KASLR slide is
/// measured from): `__START_KERNEL_map` plus the bzImage setup header's `pref_address`
/// (boot protocol 2.10+), or plus the lowest physical load address of a vmlinux ELF, which
/// the kernel links at that offset. `None` for anything else.
pub fn link_text(image: &[u8]) -> Option<u64> {
    const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
    const PREF_ADDRESS: usize = 0x258;
    const VERSION: usize = 0x206;
    if !is_linux(image) {
        return None;
    }
    let load = match detect_format(image)? {
        KernelFormat::BzImage => {
            let version = u16::from_le_bytes(image.get(VERSION..VERSION + 2)?.try_into().ok()?);
            if version < 0x20a {
                return None;
            }
            u64::from_le_bytes(image.get(PREF_ADDRESS..PREF_ADDRESS + 8)?.try_into().ok()?)
        }
        KernelFormat::Elf => elf::elf_segments(image)
            .ok()?
            .iter()
            .map(|s| s.paddr)
            .min()?,
    };
    START_KERNEL_MAP.checked_add(load)
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
