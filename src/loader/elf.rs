//! ELF kernels: a vmlinux entered in 64-bit mode, or a PVH kernel entered through its Xen
//! PVH note with an `hvm_start_info` (memory map, command line, initrd as a module).

use std::io::Cursor;

use linux_loader::bootparam::boot_params;
use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::{
    BOOT_FLAG, BootSpec, DEFAULT_INITRD_ADDR_MAX, HDRS_MAGIC, KernelFormat, LoadedKernel,
    LoaderError, Result, corrupt, le_u16, le_u32, le_u64, place_initrd, set_ramdisk, too_big,
    write_cmdline, write_zero_page,
};
use crate::arch::boot::BootEntry;
use crate::arch::layout::{CMDLINE, HIMEM_START, PVH_START_INFO, ZERO_PAGE};
use crate::memory::GuestMem;

/// A PT_LOAD segment's placement, from the program headers.
#[derive(Debug, PartialEq, Eq)]
pub struct ElfSegment {
    pub paddr: u64,
    pub memsz: u64,
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

pub(super) const PVH_MEMMAP: u64 = PVH_START_INFO + 0x40;
pub(super) const PVH_MODLIST: u64 = PVH_START_INFO + 0x800;
pub(super) const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub(super) struct StartInfo(pub(super) hvm_start_info);
// SAFETY: a repr(C) struct of integers without padding.
unsafe impl ByteValued for StartInfo {}
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub(super) struct MemmapEntry(pub(super) hvm_memmap_table_entry);
// SAFETY: a repr(C) struct of integers without padding.
unsafe impl ByteValued for MemmapEntry {}
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub(super) struct ModlistEntry(pub(super) hvm_modlist_entry);
// SAFETY: a repr(C) struct of integers without padding.
unsafe impl ByteValued for ModlistEntry {}

pub(super) fn load_elf(
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
