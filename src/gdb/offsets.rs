//! `qOffsets`: where a KASLR kernel's sections are, asked by GDB when it connects.
//!
//! GDB applies the reply to vmlinux's .text, .data and .bss only (the form a section-offset
//! reply can take for a file with more than two segments): enough for a plain `gdb vmlinux`
//! attaching to a running kernel to get backtraces and variables right. Init code, read-only
//! data and the zero-based per-CPU section need more, which scripts/gdbinit does (it reloads
//! vmlinux at the slide with the per-CPU section kept at 0). Before the kernel has mapped
//! itself the slide is unknown, and the answer is no offset.

use gdbstub::target::ext::section_offsets::{Offsets, SectionOffsets};

use super::target::GdbTarget;

impl SectionOffsets for GdbTarget {
    fn get_section_offsets(&mut self) -> Result<Offsets<u64>, Self::Error> {
        let slide = self
            .kernel_placement(self.current_cpu)
            .map_or(0, |p| p.slide);
        Ok(Offsets::Sections {
            text: slide,
            data: slide,
            bss: Some(slide),
        })
    }
}
