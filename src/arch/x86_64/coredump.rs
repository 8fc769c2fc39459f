//! The x86 half of a core file: a vCPU's state as Linux's NT_PRSTATUS and QEMU's
//! QEMUCPUState notes (what GDB and `crash` read), and where a Linux guest maps guest
//! RAM (its direct map and its kernel image), read from the guest's own page tables so that
//! `gdb vmlinux core` finds kernel variables by their virtual addresses.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::debug::{DebugError, kvm, read_kernel_gs_base};
use super::paging::PagingContext;
use crate::memory::GuestMem;

/// One vCPU's architectural state at the moment the core is written.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSnapshot {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub kernel_gs_base: u64,
}

impl CpuSnapshot {
    /// Reads the vCPU (its own thread, while it is out of KVM_RUN).
    pub fn capture(vcpu: &VcpuFd) -> Result<CpuSnapshot, DebugError> {
        Ok(CpuSnapshot {
            regs: vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            kernel_gs_base: read_kernel_gs_base(vcpu)?,
        })
    }

    /// Whether this is the state of a vCPU just reset (RIP at the reset vector 0xfff0 with
    /// CS base 0xffff0000), as KVM on AMD leaves a vCPU after a triple fault.
    pub fn is_reset_state(&self) -> bool {
        self.regs.rip == 0xfff0 && self.sregs.cs.base == 0xffff_0000
    }

    pub fn paging(&self) -> PagingContext {
        PagingContext {
            cr0: self.sregs.cr0,
            cr3: self.sregs.cr3,
            cr4: self.sregs.cr4,
            efer: self.sregs.efer,
        }
    }
}

/// NT_PRSTATUS: `struct elf_prstatus` of x86-64 Linux (336 bytes), what GDB and crash
/// take a thread's registers from. `pid` names the thread (GDB shows it as LWP).
pub const NT_PRSTATUS: u32 = 1;
const PRSTATUS_LEN: usize = 336;
const PRSTATUS_PID: usize = 32;
const PRSTATUS_REGS: usize = 112;
/// pr_cursig, the signal GDB reports for the thread: a vCPU had none.
const NO_SIGNAL: i16 = 0;

pub fn prstatus(cpu: &CpuSnapshot, pid: u32) -> Vec<u8> {
    let r = &cpu.regs;
    let s = &cpu.sregs;
    // user_regs_struct order.
    let regs: [u64; 27] = [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        u64::MAX, // orig_rax: not in a system call
        r.rip,
        u64::from(s.cs.selector),
        r.rflags,
        r.rsp,
        u64::from(s.ss.selector),
        s.fs.base,
        s.gs.base,
        u64::from(s.ds.selector),
        u64::from(s.es.selector),
        u64::from(s.fs.selector),
        u64::from(s.gs.selector),
    ];
    let mut out = vec![0u8; PRSTATUS_LEN];
    out[12..14].copy_from_slice(&NO_SIGNAL.to_le_bytes());
    out[PRSTATUS_PID..PRSTATUS_PID + 4].copy_from_slice(&pid.to_le_bytes());
    for (i, v) in regs.iter().enumerate() {
        let at = PRSTATUS_REGS + i * 8;
        out[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// QEMU's note (name "QEMU", type 0) with `QEMUCPUState` (target/i386/arch_dump.c,
/// version 1): general registers, segments, descriptor tables, CR0-CR4 and
/// kernel_gs_base; crash reads CR3 and the segment bases from it.
pub const NT_QEMU: u32 = 0;
const QEMU_CPUSTATE_VERSION: u32 = 1;

fn qemu_segment(out: &mut Vec<u8>, selector: u16, limit: u32, flags: u32, base: u64) {
    out.extend_from_slice(&u32::from(selector).to_le_bytes());
    out.extend_from_slice(&limit.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&base.to_le_bytes());
}

/// A KVM segment's attributes in the descriptor's high-dword layout QEMU keeps them in.
fn descriptor_flags(seg: &kvm_segment) -> u32 {
    u32::from(seg.type_) << 8
        | u32::from(seg.s) << 12
        | u32::from(seg.dpl) << 13
        | u32::from(seg.present) << 15
        | u32::from(seg.avl) << 20
        | u32::from(seg.l) << 21
        | u32::from(seg.db) << 22
        | u32::from(seg.g) << 23
}

pub fn qemu_cpu_state(cpu: &CpuSnapshot) -> Vec<u8> {
    let r = &cpu.regs;
    let s = &cpu.sregs;
    let mut out = Vec::with_capacity(QEMU_CPUSTATE_LEN);
    out.extend_from_slice(&QEMU_CPUSTATE_VERSION.to_le_bytes());
    out.extend_from_slice(&(QEMU_CPUSTATE_LEN as u32).to_le_bytes());
    for v in [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for seg in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.ldt, &s.tr] {
        qemu_segment(
            &mut out,
            seg.selector,
            seg.limit,
            descriptor_flags(seg),
            seg.base,
        );
    }
    for dt in [&s.gdt, &s.idt] {
        qemu_segment(&mut out, 0, u32::from(dt.limit), 0, dt.base);
    }
    for cr in [s.cr0, 0, s.cr2, s.cr3, s.cr4] {
        out.extend_from_slice(&cr.to_le_bytes());
    }
    out.extend_from_slice(&cpu.kernel_gs_base.to_le_bytes());
    out
}

/// version, size, 18 registers, 10 segments of 24 bytes, cr[5], kernel_gs_base.
const QEMU_CPUSTATE_LEN: usize = 4 + 4 + 18 * 8 + 10 * 24 + 5 * 8 + 8;

/// A range of guest-physical memory mapped at a kernel virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelMapping {
    pub vaddr: u64,
    pub paddr: u64,
    pub len: u64,
}

/// Where Linux (x86-64, 4-level paging) maps guest RAM, from the page tables of `paging`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelMappings {
    /// The direct map's offset (`page_offset_base`): RAM at `paddr` is at `paddr + this`.
    pub direct_map: Option<u64>,
    /// The kernel image's mappings in 0xffffffff80000000-0xffffffffc0000000, merged runs.
    pub image: Vec<KernelMapping>,
}

const PTE_PRESENT: u64 = 1;
const PTE_LARGE: u64 = 1 << 7;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;
/// `__START_KERNEL_map` and the end of the kernel image's 1 GiB window.
pub const KERNEL_IMAGE_START: u64 = 0xffff_ffff_8000_0000;
const KERNEL_IMAGE_END: u64 = 0xffff_ffff_c000_0000;
/// The kernel half of a 4-level address space starts at PML4 slot 256.
const KERNEL_HALF_SLOT: u64 = 256;
/// Beyond this many leaf mappings a walk stops: a page table gone wild cannot stall the end.
const MAX_LEAVES: usize = 1 << 20;

fn sign_extend_48(v: u64) -> u64 {
    if v & (1 << 47) != 0 {
        v | 0xffff_0000_0000_0000
    } else {
        v
    }
}

fn read_entry(mem: &GuestMem, table: u64, index: u64) -> u64 {
    mem.read_obj::<u64>(GuestAddress(table + index * 8))
        .unwrap_or(0)
}

/// Every present leaf mapping in the kernel half (vaddr, paddr, size), in address order.
fn kernel_half_leaves(mem: &GuestMem, paging: &PagingContext) -> Vec<KernelMapping> {
    let mut out = Vec::new();
    let pml4 = paging.cr3 & PTE_ADDR;
    for i4 in KERNEL_HALF_SLOT..512 {
        let e4 = read_entry(mem, pml4, i4);
        if e4 & PTE_PRESENT == 0 {
            continue;
        }
        for i3 in 0..512 {
            let e3 = read_entry(mem, e4 & PTE_ADDR, i3);
            if e3 & PTE_PRESENT == 0 {
                continue;
            }
            let va3 = sign_extend_48(i4 << 39 | i3 << 30);
            if e3 & PTE_LARGE != 0 {
                out.push(KernelMapping {
                    vaddr: va3,
                    paddr: e3 & PTE_ADDR & !((1 << 30) - 1),
                    len: 1 << 30,
                });
                continue;
            }
            for i2 in 0..512 {
                let e2 = read_entry(mem, e3 & PTE_ADDR, i2);
                if e2 & PTE_PRESENT == 0 {
                    continue;
                }
                let va2 = va3 | i2 << 21;
                if e2 & PTE_LARGE != 0 {
                    out.push(KernelMapping {
                        vaddr: va2,
                        paddr: e2 & PTE_ADDR & !((1 << 21) - 1),
                        len: 1 << 21,
                    });
                    continue;
                }
                for i1 in 0..512 {
                    let e1 = read_entry(mem, e2 & PTE_ADDR, i1);
                    if e1 & PTE_PRESENT != 0 {
                        out.push(KernelMapping {
                            vaddr: va2 | i1 << 12,
                            paddr: e1 & PTE_ADDR,
                            len: 1 << 12,
                        });
                    }
                }
                if out.len() > MAX_LEAVES {
                    return out;
                }
            }
        }
    }
    out
}

/// Merges runs that continue each other in both virtual and physical addresses.
fn merge(maps: impl IntoIterator<Item = KernelMapping>) -> Vec<KernelMapping> {
    let mut out: Vec<KernelMapping> = Vec::new();
    for m in maps {
        if let Some(last) = out.last_mut()
            && last.vaddr.wrapping_add(last.len) == m.vaddr
            && last.paddr + last.len == m.paddr
        {
            last.len += m.len;
            continue;
        }
        out.push(m);
    }
    out
}

/// Finds Linux's direct map and kernel image in the guest's page tables; `ram_end` bounds
/// what counts as RAM. Nothing is found for other paging modes or other kernels.
pub fn kernel_mappings(mem: &GuestMem, paging: &PagingContext, ram_end: u64) -> KernelMappings {
    use super::paging::PagingMode;
    if paging.mode() != PagingMode::Level4 {
        return KernelMappings::default();
    }
    let leaves = kernel_half_leaves(mem, paging);
    find_kernel_mappings(&leaves, ram_end)
}

/// The pure part of [`kernel_mappings`]: the direct map is the offset (vaddr - paddr) under
/// which the most RAM is mapped with large pages outside the kernel image's window.
fn find_kernel_mappings(leaves: &[KernelMapping], ram_end: u64) -> KernelMappings {
    let in_image = |m: &KernelMapping| (KERNEL_IMAGE_START..KERNEL_IMAGE_END).contains(&m.vaddr);
    let mut by_offset: std::collections::BTreeMap<u64, u64> = Default::default();
    for m in leaves
        .iter()
        .filter(|m| !in_image(m) && m.len > 1 << 12 && m.paddr < ram_end)
    {
        *by_offset.entry(m.vaddr.wrapping_sub(m.paddr)).or_default() += m.len;
    }
    let direct_map = by_offset
        .into_iter()
        .max_by_key(|&(_, total)| total)
        .map(|(offset, _)| offset);
    let image = merge(
        leaves
            .iter()
            .copied()
            .filter(|m| in_image(m) && m.paddr < ram_end),
    );
    KernelMappings { direct_map, image }
}

/// Longest VMCOREINFO text taken (Linux's note is one page).
pub const VMCOREINFO_MAX: usize = 4096;

/// The guest's VMCOREINFO note (what `crash` and `makedumpfile` read: the kernel's
/// release, KASLR offset, symbol addresses), found as crash finds it in a raw dump: an ELF
/// note named "VMCOREINFO" whose text starts with "OSRELEASE=". Linux allocates it at boot,
/// anywhere in RAM, so all of RAM is searched (4-byte aligned, as notes are): here the
/// note whose name starts in `chunk`, a copy of guest RAM
/// from `gpa` (4-byte aligned, whole pages but perhaps the last); the note's header and
/// text are read from `mem`, so they may lie outside the chunk. The core writer calls this
/// on the chunks it writes: one pass over RAM.
pub fn find_vmcoreinfo_in(mem: &GuestMem, chunk: &[u8], gpa: u64) -> Option<Vec<u8>> {
    const NAME: &[u8] = b"VMCOREINFO\0\0";
    const PAGE: usize = 4096;
    let magic = u32::from_le_bytes([b'V', b'M', b'C', b'O']);
    // A page of zeros holds no name (most of an idle guest's RAM: skipping those pages
    // made the search several times faster).
    for (p, page) in chunk.chunks(PAGE).enumerate() {
        if crate::coredump::is_zero(page) {
            continue;
        }
        for (w, word) in page.chunks_exact(4).enumerate() {
            if u32::from_le_bytes([word[0], word[1], word[2], word[3]]) != magic {
                continue;
            }
            let name_at = gpa + (p * PAGE + w * 4) as u64;
            let mut head = [0u8; 12 + 12];
            if name_at < 12
                || mem
                    .read_slice(&mut head, GuestAddress(name_at - 12))
                    .is_err()
                || &head[12..] != NAME
            {
                continue;
            }
            let namesz = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let descsz = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
            if namesz != 11 || descsz > VMCOREINFO_MAX {
                continue;
            }
            let mut desc = vec![0u8; descsz];
            if mem
                .read_slice(&mut desc, GuestAddress(name_at + NAME.len() as u64))
                .is_ok()
                && desc.starts_with(b"OSRELEASE=")
            {
                return Some(desc);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prstatus_has_linux_layout() {
        let mut cpu = CpuSnapshot::default();
        cpu.regs.rip = 0xffff_ffff_8100_0000;
        cpu.regs.rsp = 0x1234;
        cpu.regs.r15 = 15;
        cpu.sregs.cs.selector = 0x10;
        let p = prstatus(&cpu, 3);
        assert_eq!(p.len(), 336);
        let word = |i: usize| u64::from_le_bytes(p[112 + i * 8..120 + i * 8].try_into().unwrap());
        assert_eq!(u32::from_le_bytes(p[32..36].try_into().unwrap()), 3);
        assert_eq!(word(0), 15, "r15 first");
        assert_eq!(word(16), 0xffff_ffff_8100_0000, "rip");
        assert_eq!(word(17), 0x10, "cs");
        assert_eq!(word(19), 0x1234, "rsp");
    }

    #[test]
    fn qemu_cpu_state_is_version_1_with_its_size() {
        let mut cpu = CpuSnapshot::default();
        cpu.sregs.cr3 = 0x5000;
        cpu.kernel_gs_base = 0xabc;
        cpu.sregs.cs.type_ = 0xb;
        cpu.sregs.cs.present = 1;
        cpu.sregs.cs.l = 1;
        let q = qemu_cpu_state(&cpu);
        assert_eq!(q.len(), QEMU_CPUSTATE_LEN);
        assert_eq!(
            u32::from_le_bytes(q[4..8].try_into().unwrap()) as usize,
            q.len()
        );
        let cr_at = 8 + 18 * 8 + 10 * 24;
        assert_eq!(
            u64::from_le_bytes(q[cr_at + 24..cr_at + 32].try_into().unwrap()),
            0x5000
        );
        assert_eq!(
            u64::from_le_bytes(q[q.len() - 8..].try_into().unwrap()),
            0xabc
        );
        let cs_flags = u32::from_le_bytes(q[8 + 18 * 8 + 8..8 + 18 * 8 + 12].try_into().unwrap());
        assert_eq!(cs_flags, 0xb << 8 | 1 << 15 | 1 << 21);
    }

    fn m(vaddr: u64, paddr: u64, len: u64) -> KernelMapping {
        KernelMapping { vaddr, paddr, len }
    }

    #[test]
    fn direct_map_and_image_found_among_other_mappings() {
        let page_offset = 0xffff_8880_0000_0000;
        let leaves = [
            // The direct map, 2 MiB pages, with a 4 KiB-mapped first 2 MiB.
            m(page_offset, 0, 4096),
            m(page_offset + 0x20_0000, 0x20_0000, 1 << 21),
            m(page_offset + 0x40_0000, 0x40_0000, 1 << 21),
            // vmemmap-like: another offset, less RAM.
            m(0xffff_ea00_0000_0000, 0x1000_0000, 1 << 21),
            // The kernel image at a KASLR slide, two runs.
            m(0xffff_ffff_9a00_0000, 0x0a00_0000, 1 << 21),
            m(0xffff_ffff_9a20_0000, 0x0a20_0000, 1 << 21),
            m(0xffff_ffff_9a60_0000, 0x0a60_0000, 1 << 21),
        ];
        let found = find_kernel_mappings(&leaves, 1 << 30);
        assert_eq!(found.direct_map, Some(page_offset));
        assert_eq!(
            found.image,
            vec![
                m(0xffff_ffff_9a00_0000, 0x0a00_0000, 2 << 21),
                m(0xffff_ffff_9a60_0000, 0x0a60_0000, 1 << 21)
            ]
        );
    }

    #[test]
    fn nothing_found_without_large_mappings() {
        let found = find_kernel_mappings(&[m(0xffff_8880_0000_0000, 0, 4096)], 1 << 30);
        assert_eq!(found, KernelMappings::default());
    }

    /// All of RAM searched chunk by chunk, as the core writer does.
    fn find_vmcoreinfo(mem: &GuestMem) -> Option<Vec<u8>> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        const CHUNK: usize = 1 << 22;
        let mut buf = vec![0u8; CHUNK];
        for region in mem.iter() {
            let (start, len) = (region.start_addr().0, region.len() as usize);
            let mut off = 0usize;
            while off < len {
                let n = CHUNK.min(len - off);
                let gpa = start + off as u64;
                if mem.read_slice(&mut buf[..n], GuestAddress(gpa)).is_err() {
                    break;
                }
                if let Some(found) = find_vmcoreinfo_in(mem, &buf[..n], gpa) {
                    return Some(found);
                }
                off += CHUNK;
            }
        }
        None
    }

    #[test]
    fn vmcoreinfo_note_is_found_in_ram() {
        let mem: GuestMem =
            vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let text = b"OSRELEASE=6.1.0\nKERNELOFFSET=1a000000\n";
        let mut note = Vec::new();
        note.extend_from_slice(&11u32.to_le_bytes());
        note.extend_from_slice(&(text.len() as u32).to_le_bytes());
        note.extend_from_slice(&0u32.to_le_bytes());
        note.extend_from_slice(b"VMCOREINFO\0\0");
        note.extend_from_slice(text);
        mem.write_slice(&note, GuestAddress(0x8_1000)).unwrap();
        assert_eq!(find_vmcoreinfo(&mem).as_deref(), Some(&text[..]));
        // The header at the end of a page, the name at the start of the next (pages of
        // zeros are skipped: only the name's page must be looked at).
        mem.write_slice(&[0u8; 128], GuestAddress(0x8_1000))
            .unwrap();
        mem.write_slice(&note, GuestAddress(0x8_0ff4)).unwrap();
        assert_eq!(find_vmcoreinfo(&mem).as_deref(), Some(&text[..]));
        mem.write_slice(&[0u8; 128], GuestAddress(0x8_0ff4))
            .unwrap();
        mem.write_slice(&note, GuestAddress(0x8_1000)).unwrap();
        // At the very end of a 4 MiB chunk, and misaligned (not a note): found, not found.
        mem.write_slice(&[0u8; 128], GuestAddress(0x8_1000))
            .unwrap();
        let big: GuestMem =
            vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        big.write_slice(&note, GuestAddress((4 << 20) - 8)).unwrap();
        assert_eq!(find_vmcoreinfo(&big).as_deref(), Some(&text[..]));
        big.write_slice(&[0u8; 128], GuestAddress((4 << 20) - 8))
            .unwrap();
        big.write_slice(&note, GuestAddress(0x10002)).unwrap();
        assert_eq!(find_vmcoreinfo(&big), None);
        mem.write_slice(&note, GuestAddress(0x8_1000)).unwrap();
        mem.write_slice(b"NOTAREL", GuestAddress(0x8_1000 + 24))
            .unwrap();
        assert_eq!(find_vmcoreinfo(&mem), None);
    }
}
