//! GDB register file for x86_64 guests, laid out like QEMU's x86_64 system-mode stub.
//!
//! gdbstub_arch's `X86_64_SSE` has no fs_base/gs_base/k_gs_base, control registers or
//! EFER, which kernel debugging needs. Front-ends (and people's scripts) also assume
//! QEMU's numbering, so the order below reproduces QEMU's `gdb-xml/i386-64bit.xml`
//! and the register indices of its `target/i386/gdbstub.c` (66 registers):
//!
//! | numbers | registers                                   | bytes each |
//! |---------|---------------------------------------------|------------|
//! | 0-15    | rax rbx rcx rdx rsi rdi rbp rsp r8-r15      | 8          |
//! | 16      | rip                                         | 8          |
//! | 17      | eflags                                      | 4          |
//! | 18-23   | cs ss ds es fs gs                           | 4          |
//! | 24-26   | fs_base gs_base k_gs_base                   | 8          |
//! | 27-32   | cr0 cr2 cr3 cr4 cr8 efer                    | 8          |
//! | 33-40   | st0-st7                                     | 10         |
//! | 41-48   | fctrl fstat ftag fiseg fioff foseg fooff fop | 4        |
//! | 49-64   | xmm0-xmm15                                  | 16         |
//! | 65      | mxcsr                                       | 4          |
//!
//! The `g` packet is these registers in this order, little-endian (608 bytes).
//! Unlike QEMU, xmm/mxcsr sit in their own `org.gnu.gdb.i386.sse` feature so GDB
//! recognises them as the SSE unit; that does not change the wire layout or numbers.

mod kvm;
mod reg_id;
#[cfg(test)]
mod tests;

use gdbstub::arch::{Arch, Registers};

pub use reg_id::{RegError, X86_64KvmRegId, read_reg, write_reg};

/// Target description served to GDB via `qXfer:features:read`. Register order,
/// sizes and types reproduce QEMU's x86_64 system-mode description.
/// It lives in `target.xml` beside this file.
pub const TARGET_XML: &str = include_str!("target.xml");

/// Number of registers in the description (and in QEMU's x86_64 stub).
pub const NUM_REGS: usize = 66;

/// Length in bytes of a full `g`/`G` register block.
pub const G_PACKET_LEN: usize =
    16 * 8 + 8 + 4 + 6 * 4 + 3 * 8 + 6 * 8 + 8 * 10 + 8 * 4 + 16 * 16 + 4;

/// x86_64 with system registers, for use as `Target::Arch`.
pub enum X86_64Kvm {}

impl Arch for X86_64Kvm {
    type Usize = u64;
    type Registers = X86_64KvmRegs;
    type RegId = X86_64KvmRegId;
    // x86 breakpoint kinds are the instruction length in bytes.
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// Register state exchanged with GDB. Field widths follow the wire format.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct X86_64KvmRegs {
    /// rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8..r15 (GDB order, not KVM's).
    pub regs: [u64; 16],
    pub rip: u64,
    pub eflags: u32,
    pub cs: u32,
    pub ss: u32,
    pub ds: u32,
    pub es: u32,
    pub fs: u32,
    pub gs: u32,
    pub fs_base: u64,
    pub gs_base: u64,
    pub k_gs_base: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    /// ST(0)..ST(7) in stack order, 80-bit little-endian.
    pub st: [[u8; 10]; 8],
    pub fctrl: u32,
    pub fstat: u32,
    /// Full 16-bit x87 tag word (two bits per physical register).
    pub ftag: u32,
    pub fiseg: u32,
    pub fioff: u32,
    pub foseg: u32,
    pub fooff: u32,
    pub fop: u32,
    pub xmm: [u128; 16],
    pub mxcsr: u32,
}

impl Registers for X86_64KvmRegs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        // Going through read_reg keeps `g` and `p` from ever disagreeing.
        let mut buf = [0u8; 16];
        for id in X86_64KvmRegId::all() {
            if let Some(n) = read_reg(self, id, &mut buf) {
                buf[..n].iter().for_each(|b| write_byte(Some(*b)));
            }
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        if bytes.len() != G_PACKET_LEN {
            return Err(());
        }
        // Decode into a copy so a failure leaves the registers untouched.
        let mut next = self.clone();
        let mut rest = bytes;
        for id in X86_64KvmRegId::all() {
            let (head, tail) = rest.split_at_checked(id.size()).ok_or(())?;
            write_reg(&mut next, id, head).map_err(|_| ())?;
            rest = tail;
        }
        *self = next;
        Ok(())
    }
}
