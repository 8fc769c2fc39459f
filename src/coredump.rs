//! ELF64 core files of the whole guest, as QEMU's `dump-guest-memory` writes them and GDB
//! and `crash` read them: one PT_LOAD per RAM region (`p_paddr` guest-physical, `p_vaddr`
//! Linux's direct-map address where the guest's page tables show one), extra PT_LOADs over
//! the same file bytes for the kernel image's mapping, and notes: per vCPU an NT_PRSTATUS
//! (the vCPU that died first leads, so it is GDB's current thread) and a QEMU CPU state,
//! then the guest's VMCOREINFO when it published one.
//!
//! The file is written under a temporary name opened at start-up (so an unwritable path is
//! refused before the guest runs) and renamed only once complete: a full disk never leaves
//! a half file under the name asked for. RAM is streamed from guest memory (no copy of all
//! of it), pages of zeros are left as holes, and pages the guest never touched are not even
//! read (the host's page table says so).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::coredump::{
    CpuSnapshot, KernelMappings, NT_PRSTATUS, NT_QEMU, VMCOREINFO_MAX, find_vmcoreinfo_in,
    kernel_mappings, prstatus, qemu_cpu_state,
};
use crate::arch::kaslr::find_kernel_placement;
use crate::memory::GuestMem;

/// Why a core file could not be written.
#[derive(Debug, Error)]
pub enum CoreError {
    /// The temporary file beside the path cannot be created: checked at start-up.
    #[error(
        "cannot write a core file at {path}: {source} (give --core a path in a writable directory)"
    )]
    Create { path: PathBuf, source: io::Error },
    /// Writing failed (a full disk, say); nothing is left under the path.
    #[error("writing the core file {path} failed: {source}; no core was kept")]
    Write { path: PathBuf, source: io::Error },
}

/// A core file waiting to be written: opened (as `PATH.partial`) when the VM starts.
#[derive(Debug)]
pub struct CoreFile {
    path: PathBuf,
    partial: PathBuf,
    file: File,
    /// Where the guest's Linux kernel was linked to put `_text`: the core then carries the
    /// KASLR slide minivmm measures (see [`MINIVMM_NOTE`]).
    kernel_link_text: Option<u64>,
}

/// The name of minivmm's own note: the kernel's placement as minivmm measured it from the
/// page tables, in VMCOREINFO's words (`KERNELOFFSET=`, hex), for kernels that publish no
/// VMCOREINFO and as a check on those that do. scripts/gdbinit reads it.
pub const MINIVMM_NOTE: &str = "MINIVMM";
/// Its type: "KASL".
const NT_MINIVMM_KASLR: u32 = u32::from_le_bytes(*b"KASL");

/// What a written core holds, for the line minivmm prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreSummary {
    pub path: PathBuf,
    pub bytes_of_ram: u64,
    pub cpus: usize,
    pub vmcoreinfo: bool,
    /// The KASLR slide minivmm measured, when the kernel was Linux on its own page tables.
    pub kaslr_slide: Option<u64>,
    pub direct_map: Option<u64>,
    /// vCPUs whose registers are their reset state, not what they held when the guest died
    /// (KVM on AMD resets a vCPU at its triple fault).
    pub reset_cpus: Vec<usize>,
}

impl std::fmt::Display for CoreSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "core file written to {} ({} MiB of RAM, {} vCPUs{})",
            self.path.display(),
            self.bytes_of_ram >> 20,
            self.cpus,
            if self.vmcoreinfo {
                ", with the guest's VMCOREINFO"
            } else {
                ""
            }
        )?;
        match self.kaslr_slide {
            Some(slide) => write!(f, "; kernel KASLR slide {slide:#x}"),
            None => Ok(()),
        }
    }
}

const ELF_HEADER_LEN: u64 = 64;
const PHDR_LEN: u64 = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_RWX: u32 = 7;
const PAGE: u64 = 4096;
/// Every program header's p_align (see encode_phdr).
const P_ALIGN: u64 = 0;

/// One program header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Phdr {
    kind: u32,
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
}

/// One ELF note: name, type, contents.
struct Note<'a> {
    name: &'a str,
    kind: u32,
    desc: &'a [u8],
}

fn pad4(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
}

fn encode_notes(notes: &[Note]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in notes {
        out.extend_from_slice(&(n.name.len() as u32 + 1).to_le_bytes());
        out.extend_from_slice(&(n.desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&n.kind.to_le_bytes());
        out.extend_from_slice(n.name.as_bytes());
        out.push(0);
        pad4(&mut out);
        out.extend_from_slice(n.desc);
        pad4(&mut out);
    }
    out
}

/// Program headers for `regions` (guest-physical start, length): the notes first, then
/// RAM page-aligned after them, each region once; then the kernel image's mappings over
/// the same bytes. Returns the headers and where RAM starts in the file.
fn layout(regions: &[(u64, u64)], notes_len: u64, maps: &KernelMappings) -> Vec<Phdr> {
    let n_image = maps
        .image
        .iter()
        .filter(|m| file_offset_in(regions, 0, m.paddr, m.len).is_some())
        .count();
    let phnum = 1 + regions.len() + n_image;
    let notes_at = ELF_HEADER_LEN + PHDR_LEN * phnum as u64;
    let ram_at = (notes_at + notes_len).div_ceil(PAGE) * PAGE;
    let mut out = vec![Phdr {
        kind: PT_NOTE,
        offset: notes_at,
        vaddr: 0,
        paddr: 0,
        filesz: notes_len,
    }];
    let mut offset = ram_at;
    for &(start, len) in regions {
        out.push(Phdr {
            kind: PT_LOAD,
            offset,
            // Without a Linux direct map, guest-physical is the best address GDB can use
            // (the test guests map memory one to one).
            vaddr: maps.direct_map.map_or(start, |o| start.wrapping_add(o)),
            paddr: start,
            filesz: len,
        });
        offset += len;
    }
    for m in &maps.image {
        if let Some(at) = file_offset_in(regions, ram_at, m.paddr, m.len) {
            out.push(Phdr {
                kind: PT_LOAD,
                offset: at,
                vaddr: m.vaddr,
                paddr: m.paddr,
                filesz: m.len,
            });
        }
    }
    out
}

/// Where guest-physical `[paddr, paddr + len)` lies in the file when RAM starts at `ram_at`.
fn file_offset_in(regions: &[(u64, u64)], ram_at: u64, paddr: u64, len: u64) -> Option<u64> {
    let mut offset = ram_at;
    for &(start, rlen) in regions {
        if paddr >= start && paddr + len <= start + rlen {
            return Some(offset + paddr - start);
        }
        offset += rlen;
    }
    None
}

/// Whether a page is all zeros, eight bytes at a time.
pub(crate) fn is_zero(page: &[u8]) -> bool {
    let mut words = page.chunks_exact(8);
    words.all(|w| w == [0u8; 8]) && words.remainder().iter().all(|&b| b == 0)
}

/// Pages of guest RAM that minivmm's process never touched, told by /proc/self/pagemap: in
/// a private anonymous mapping (how minivmm allocates guest RAM) a page that is neither
/// present nor swapped out reads as zeros, so the core need not read it (reading it would
/// fault in the zero page: most of an idle guest's core time).
struct Untouched {
    pagemap: File,
}

const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;

impl Untouched {
    /// None where pagemap cannot be read (then every page is read).
    fn open() -> Option<Untouched> {
        File::open("/proc/self/pagemap")
            .ok()
            .map(|pagemap| Untouched { pagemap })
    }

    /// Whether the mapping holding host address `hva` is private and anonymous (its line in
    /// /proc/self/maps: "start-end perms offset dev inode [path]", inode 0, no file path).
    fn private_anonymous(hva: u64) -> bool {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return false;
        };
        maps.lines().any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some((lo, hi)) = f.first().and_then(|r| r.split_once('-')) else {
                return false;
            };
            let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
            else {
                return false;
            };
            (lo..hi).contains(&hva)
                && f.get(1).is_some_and(|p| p.ends_with('p'))
                && f.get(4) == Some(&"0")
                && f.len() == 5
        })
    }

    /// For `n` pages from page-aligned host address `hva`: true for each never touched.
    fn pages(&self, hva: u64, n: usize) -> Option<Vec<bool>> {
        let mut raw = vec![0u8; n * 8];
        self.pagemap.read_exact_at(&mut raw, hva / PAGE * 8).ok()?;
        Some(
            raw.chunks_exact(8)
                .map(|e| {
                    let v = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
                    v & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED) == 0
                })
                .collect(),
        )
    }
}

/// The byte ranges of `buf` made of whole runs of pages that are not all zeros.
fn nonzero_runs(buf: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, page) in buf.chunks(PAGE as usize).enumerate() {
        if is_zero(page) {
            continue;
        }
        let (from, to) = (i * PAGE as usize, i * PAGE as usize + page.len());
        match runs.last_mut() {
            Some(last) if last.1 == from => last.1 = to,
            _ => runs.push((from, to)),
        }
    }
    runs
}

fn elf_header(phnum: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(ELF_HEADER_LEN as usize);
    h.extend_from_slice(b"\x7fELF");
    h.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, System V ABI
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&4u16.to_le_bytes()); // ET_CORE
    h.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    h.extend_from_slice(&ELF_HEADER_LEN.to_le_bytes()); // e_phoff
    h.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    h.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    h.extend_from_slice(&(ELF_HEADER_LEN as u16).to_le_bytes());
    h.extend_from_slice(&(PHDR_LEN as u16).to_le_bytes());
    h.extend_from_slice(&phnum.to_le_bytes());
    h.extend_from_slice(&[0; 6]); // no sections
    h
}

fn encode_phdr(p: &Phdr) -> Vec<u8> {
    let mut v = Vec::with_capacity(PHDR_LEN as usize);
    v.extend_from_slice(&p.kind.to_le_bytes());
    v.extend_from_slice(&(if p.kind == PT_LOAD { PF_RWX } else { 0 }).to_le_bytes());
    for x in [p.offset, p.vaddr, p.paddr, p.filesz, p.filesz] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    // p_align 0, as kexec-tools' and QEMU's cores have it: crash takes an ELF core whose
    // first PT_LOAD is page-aligned with a nonzero p_align for the old netdump format, and
    // crash 8.0.2 then dereferences a null pointer on the QEMU notes (a segfault at start).
    v.extend_from_slice(&P_ALIGN.to_le_bytes());
    v
}

impl CoreFile {
    /// Opens `PATH.partial` for the core, so that a path that cannot be written is found out
    /// before the guest runs.
    pub fn create(path: &Path) -> Result<CoreFile, CoreError> {
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .map_err(|source| CoreError::Create {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(CoreFile {
            path: path.to_path_buf(),
            partial,
            file,
            kernel_link_text: None,
        })
    }

    /// The guest's kernel is Linux, linked with `_text` at `link_text`: the core will say
    /// where it found the kernel.
    pub fn for_linux_linked_at(mut self, link_text: Option<u64>) -> Self {
        self.kernel_link_text = link_text;
        self
    }

    /// The VM ended in a way that wants no core: nothing is left behind.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.partial);
    }

    /// Writes the core of `mem` with `cpus` (by vCPU index; `first` leads) and puts it in
    /// place. On failure the partial file is removed.
    pub fn write(
        self,
        mem: &GuestMem,
        cpus: &[CpuSnapshot],
        first: usize,
    ) -> Result<CoreSummary, CoreError> {
        self.write_reporting(mem, cpus, first, &mut |_, _| {})
    }

    /// [`CoreFile::write`], calling `progress(bytes done, bytes in all)` about once a second
    /// while RAM is written (GDB gives up on a silent stub after two seconds).
    pub fn write_reporting(
        self,
        mem: &GuestMem,
        cpus: &[CpuSnapshot],
        first: usize,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<CoreSummary, CoreError> {
        let result = self.write_all(mem, cpus, first, progress);
        match result {
            Ok(summary) => Ok(summary),
            Err(source) => {
                let _ = std::fs::remove_file(&self.partial);
                Err(CoreError::Write {
                    path: self.path,
                    source,
                })
            }
        }
    }

    fn write_all(
        &self,
        mem: &GuestMem,
        cpus: &[CpuSnapshot],
        first: usize,
        progress: &mut dyn FnMut(u64, u64),
    ) -> io::Result<CoreSummary> {
        let regions: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
        let ram_end = regions.iter().map(|&(s, l)| s + l).max().unwrap_or(0);
        let lead = cpus.get(first).or(cpus.first());
        let maps = lead
            .map(|c| kernel_mappings(mem, &c.paging(), ram_end))
            .unwrap_or_default();
        let placement = lead
            .zip(self.kernel_link_text)
            .and_then(|(c, link)| find_kernel_placement(mem, &c.paging(), link));
        let placement_text = placement.map(|p| {
            format!(
                "KERNELOFFSET={:x}\nTEXT={:x}\nPHYS_BASE={:x}\n",
                p.slide, p.text, p.phys_base
            )
        });

        let order: Vec<usize> = std::iter::once(first)
            .chain((0..cpus.len()).filter(|&i| i != first))
            .filter(|&i| i < cpus.len())
            .collect();
        let statuses: Vec<(Vec<u8>, Vec<u8>)> = order
            .iter()
            .map(|&i| (prstatus(&cpus[i], i as u32 + 1), qemu_cpu_state(&cpus[i])))
            .collect();
        // The notes go first, but the VMCOREINFO is found while RAM is written (one pass
        // over RAM): RAM starts after room for the longest VMCOREINFO note, and the notes
        // are written last.
        let encode = |vmcoreinfo: Option<&[u8]>| {
            let mut notes: Vec<Note> = Vec::new();
            for (pr, _) in &statuses {
                notes.push(Note {
                    name: "CORE",
                    kind: NT_PRSTATUS,
                    desc: pr,
                });
            }
            for (_, q) in &statuses {
                notes.push(Note {
                    name: "QEMU",
                    kind: NT_QEMU,
                    desc: q,
                });
            }
            if let Some(text) = &placement_text {
                notes.push(Note {
                    name: MINIVMM_NOTE,
                    kind: NT_MINIVMM_KASLR,
                    desc: text.as_bytes(),
                });
            }
            if let Some(info) = vmcoreinfo {
                notes.push(Note {
                    name: "VMCOREINFO",
                    kind: 0,
                    desc: info,
                });
            }
            encode_notes(&notes)
        };
        let room = encode(Some(&[0u8; VMCOREINFO_MAX])).len() as u64;
        let mut phdrs = layout(&regions, room, &maps);
        let phnum =
            u16::try_from(phdrs.len()).map_err(|_| io::Error::other("too many program headers"))?;
        self.file.set_len(0)?;

        // RAM, region by region at the offsets the PT_LOADs give; zero pages stay holes.
        let mut buf = vec![0u8; 1 << 20];
        let mut end = 0u64;
        let total: u64 = regions.iter().map(|&(_, l)| l).sum();
        let mut written = 0u64;
        let mut vmcoreinfo: Option<Vec<u8>> = None;
        let mut last_report = std::time::Instant::now();
        let untouched = Untouched::open();
        for (p, &(start, len)) in phdrs[1..].iter().zip(&regions) {
            // Only guest RAM in a private anonymous mapping may be skipped by pagemap.
            let hva = mem
                .get_host_address(GuestAddress(start))
                .map(|h| h as u64)
                .ok()
                .filter(|&h| h % PAGE == 0 && Untouched::private_anonymous(h));
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(buf.len() as u64) as usize;
                let skip = untouched
                    .as_ref()
                    .zip(hva)
                    .and_then(|(u, h)| u.pages(h + done, n.div_ceil(PAGE as usize)));
                match &skip {
                    // Runs of never-touched pages are zeros, as buf is for them; the runs
                    // in between are read.
                    Some(never) => {
                        let mut i = 0;
                        while i < never.len() {
                            let run = never[i..].iter().take_while(|&&x| x == never[i]).count();
                            let from = i * PAGE as usize;
                            let to = n.min((i + run) * PAGE as usize);
                            if never[i] {
                                buf[from..to].fill(0);
                            } else {
                                mem.read_slice(
                                    &mut buf[from..to],
                                    GuestAddress(start + done + from as u64),
                                )
                                .map_err(|e| io::Error::other(format!("reading guest RAM: {e}")))?;
                            }
                            i += run;
                        }
                    }
                    None => mem
                        .read_slice(&mut buf[..n], GuestAddress(start + done))
                        .map_err(|e| io::Error::other(format!("reading guest RAM: {e}")))?,
                }
                if vmcoreinfo.is_none() {
                    vmcoreinfo = find_vmcoreinfo_in(mem, &buf[..n], start + done);
                }
                // One write per run of non-zero pages: a page per system call made a full
                // guest's core several times slower.
                for (from, to) in nonzero_runs(&buf[..n]) {
                    self.file
                        .write_all_at(&buf[from..to], p.offset + done + from as u64)?;
                }
                done += n as u64;
                written += n as u64;
                if last_report.elapsed() >= std::time::Duration::from_secs(1) {
                    progress(written, total);
                    last_report = std::time::Instant::now();
                }
            }
            end = end.max(p.offset + len);
        }

        let notes = encode(vmcoreinfo.as_deref());
        phdrs[0].filesz = notes.len() as u64;
        let mut head = elf_header(phnum);
        for p in &phdrs {
            head.extend_from_slice(&encode_phdr(p));
        }
        head.extend_from_slice(&notes);
        self.file.write_all_at(&head, 0)?;
        end = end.max(head.len() as u64);
        self.file.set_len(end)?;
        self.file.sync_all()?;
        std::fs::rename(&self.partial, &self.path)?;
        Ok(CoreSummary {
            path: self.path.clone(),
            bytes_of_ram: regions.iter().map(|&(_, l)| l).sum(),
            cpus: cpus.len(),
            vmcoreinfo: vmcoreinfo.is_some(),
            kaslr_slide: placement.map(|p| p.slide),
            direct_map: maps.direct_map,
            reset_cpus: cpus
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_reset_state())
                .map(|(i, _)| i)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::coredump::KernelMapping;

    #[test]
    fn pagemap_tells_untouched_guest_ram() {
        let mem: GuestMem =
            vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_slice(&[1u8], GuestAddress(3 * PAGE + 5)).unwrap();
        let hva = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        assert!(Untouched::private_anonymous(hva), "vm-memory's RAM mapping");
        assert!(!Untouched::private_anonymous(0), "no mapping at 0");
        let never = Untouched::open().unwrap().pages(hva, 256).unwrap();
        assert_eq!(never.len(), 256);
        assert!(!never[3], "the written page was touched");
        assert!(never[10] && never[255], "the others were not");
    }

    #[test]
    fn nonzero_pages_are_written_in_runs() {
        let mut buf = vec![0u8; 6 * PAGE as usize + 100];
        for page in [1usize, 2, 4] {
            buf[page * PAGE as usize + 7] = 1;
        }
        buf[6 * PAGE as usize + 99] = 1; // the short tail counts as a page
        assert_eq!(
            nonzero_runs(&buf),
            vec![
                (4096, 3 * 4096),
                (4 * 4096, 5 * 4096),
                (6 * 4096, 6 * 4096 + 100)
            ]
        );
        assert!(nonzero_runs(&vec![0u8; 3 * PAGE as usize]).is_empty());
    }

    #[test]
    fn notes_are_padded_to_four_bytes() {
        let n = encode_notes(&[Note {
            name: "CORE",
            kind: 1,
            desc: &[1, 2, 3],
        }]);
        // namesz 5, descsz 3, type 1, "CORE\0" + 3 pad, 3 bytes + 1 pad.
        assert_eq!(n.len(), 12 + 8 + 4);
        assert_eq!(&n[0..4], &5u32.to_le_bytes());
        assert_eq!(&n[12..17], b"CORE\0");
        assert_eq!(&n[20..23], &[1, 2, 3]);
    }

    #[test]
    fn layout_puts_each_region_once_and_image_over_the_same_bytes() {
        let regions = [(0, 0xc000_0000), (0x1_0000_0000, 0x4000_0000)];
        let maps = KernelMappings {
            direct_map: Some(0xffff_8880_0000_0000),
            image: vec![
                KernelMapping {
                    vaddr: 0xffff_ffff_9a00_0000,
                    paddr: 0x0a00_0000,
                    len: 0x40_0000,
                },
                // Not in RAM: no header.
                KernelMapping {
                    vaddr: 0xffff_ffff_bf00_0000,
                    paddr: 0xd000_0000,
                    len: 0x20_0000,
                },
            ],
        };
        let p = layout(&regions, 1000, &maps);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].kind, PT_NOTE);
        assert_eq!(p[0].offset, 64 + 4 * 56);
        let ram_at = p[1].offset;
        assert_eq!(ram_at % PAGE, 0);
        assert!(ram_at >= p[0].offset + 1000);
        assert_eq!(
            (p[1].paddr, p[1].vaddr, p[1].filesz),
            (0, 0xffff_8880_0000_0000, 0xc000_0000)
        );
        assert_eq!(p[2].offset, ram_at + 0xc000_0000);
        assert_eq!(p[2].vaddr, 0xffff_8881_0000_0000);
        assert_eq!(
            p[3].offset,
            ram_at + 0x0a00_0000,
            "image over region 0's bytes"
        );
        assert_eq!(
            (p[3].vaddr, p[3].paddr),
            (0xffff_ffff_9a00_0000, 0x0a00_0000)
        );
    }

    #[test]
    fn without_a_direct_map_virtual_is_physical() {
        let p = layout(&[(0, 0x100_0000)], 10, &KernelMappings::default());
        assert_eq!(p[1].vaddr, 0);
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn a_linux_core_carries_the_slide_minivmm_measured() {
        let dir = std::env::temp_dir().join(format!("minivmm-core-kaslr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.core");
        let mem: GuestMem =
            vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        // The kernel's window: PML4[511] -> PDPT[510] -> PD[224], _text at 0xffffffff9c000000.
        mem.write_obj(0x2003u64, GuestAddress(0x1000 + 511 * 8))
            .unwrap();
        mem.write_obj(0x3003u64, GuestAddress(0x2000 + 510 * 8))
            .unwrap();
        mem.write_obj(0x20_0083u64, GuestAddress(0x3000 + 224 * 8))
            .unwrap();
        let mut cpu = CpuSnapshot::default();
        cpu.sregs.cr0 = 1 << 31;
        cpu.sregs.cr3 = 0x1000;
        cpu.sregs.cr4 = 1 << 5;
        cpu.sregs.efer = (1 << 8) | (1 << 10);
        let core = CoreFile::create(&path)
            .unwrap()
            .for_linux_linked_at(Some(0xffff_ffff_8100_0000));
        let s = core.write(&mem, &[cpu], 0).unwrap();
        assert_eq!(s.kaslr_slide, Some(0x1b00_0000));
        assert!(
            s.to_string().ends_with("; kernel KASLR slide 0x1b000000"),
            "{s}"
        );
        let bytes = std::fs::read(&path).unwrap();
        let note = b"MINIVMM\0KERNELOFFSET=1b000000\nTEXT=ffffffff9c000000\n";
        assert!(
            bytes.windows(note.len()).any(|w| w == note),
            "minivmm's note in the core"
        );
        // Not Linux (no link address): no such note.
        let core = CoreFile::create(&path).unwrap();
        assert_eq!(core.write(&mem, &[cpu], 0).unwrap().kaslr_slide, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn core_file_round_trip_and_refusals() {
        let dir = std::env::temp_dir().join(format!("minivmm-core-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.core");
        let mem: GuestMem =
            vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_slice(b"hello core", GuestAddress(0x5000))
            .unwrap();
        // A VMCOREINFO note in RAM (found while RAM is written) ends up among the notes.
        let info = b"OSRELEASE=6.1.0\nKERNELOFFSET=1a000000\n";
        let mut note = Vec::new();
        for v in [11u32, info.len() as u32, 0] {
            note.extend_from_slice(&v.to_le_bytes());
        }
        note.extend_from_slice(b"VMCOREINFO\0\0");
        note.extend_from_slice(info);
        mem.write_slice(&note, GuestAddress(0x8_0ff4)).unwrap();
        let core = CoreFile::create(&path).unwrap();
        let cpus = [CpuSnapshot::default(), CpuSnapshot::default()];
        let s = core.write(&mem, &cpus, 1).unwrap();
        assert_eq!(s.cpus, 2);
        assert!(s.vmcoreinfo);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[0..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([bytes[16], bytes[17]]), 4, "ET_CORE");
        let ram_at = u64::from_le_bytes(bytes[64 + 56 + 8..64 + 56 + 16].try_into().unwrap());
        assert_eq!(&bytes[ram_at as usize + 0x5000..][..10], b"hello core");
        assert_eq!(bytes.len() as u64, ram_at + (1 << 20));
        // crash tells kdump-style ELF cores (which it reads with QEMU notes) from the old
        // netdump format by the first PT_LOAD: page-aligned offset and nonzero p_align is
        // netdump. The offset is page-aligned here, so p_align must be 0.
        assert_eq!(ram_at % PAGE, 0);
        let p_align = u64::from_le_bytes(bytes[64 + 56 + 48..64 + 56 + 56].try_into().unwrap());
        assert_eq!(p_align, 0, "the first PT_LOAD's p_align");
        assert!(!dir.join("vm.core.partial").exists());
        // The first NT_PRSTATUS is vCPU 1's (pid 2): it died first.
        let notes_at = u64::from_le_bytes(bytes[64 + 8..64 + 16].try_into().unwrap()) as usize;
        let notes_len = u64::from_le_bytes(bytes[64 + 32..64 + 40].try_into().unwrap()) as usize;
        assert!(notes_at + notes_len <= ram_at as usize);
        let notes = &bytes[notes_at..notes_at + notes_len];
        // The last note: its name, the text, padding to four bytes.
        let tail = &notes[notes_len - info.len().div_ceil(4) * 4 - 12..];
        assert_eq!(&tail[..12], b"VMCOREINFO\0\0");
        assert_eq!(&tail[12..12 + info.len()], info);
        assert_eq!(&bytes[notes_at + 12..notes_at + 17], b"CORE\0");
        assert_eq!(
            u32::from_le_bytes(
                bytes[notes_at + 20 + 32..notes_at + 20 + 36]
                    .try_into()
                    .unwrap()
            ),
            2
        );

        let e = CoreFile::create(&dir.join("missing-dir/vm.core")).unwrap_err();
        assert!(e.to_string().contains("writable directory"), "{e}");
        let discarded = CoreFile::create(&dir.join("gone.core")).unwrap();
        discarded.discard();
        assert!(!dir.join("gone.core.partial").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
