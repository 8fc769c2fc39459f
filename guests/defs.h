/*
 * defs.h - constants shared by all minivmm test guests.
 *
 * Included (via the C preprocessor) by every guest source.  All guest code is
 * GNU as with `.intel_syntax noprefix`.
 */
#ifndef MINIVMM_GUEST_DEFS_H
#define MINIVMM_GUEST_DEFS_H

/* COM1 16550 UART */
#define COM1            0x3f8
#define COM1_THR        (COM1 + 0)      /* transmit holding register (write) */
#define COM1_RBR        (COM1 + 0)      /* receive buffer register (read) */
#define COM1_LSR        (COM1 + 5)      /* line status register */
#define LSR_DR          0x01            /* data ready */
#define LSR_THRE        0x20            /* transmit holding register empty */

/* i8042 keyboard controller: writing 0xfe to the command port resets */
#define I8042_CMD       0x64
#define I8042_RESET     0xfe

/* pvpanic (QEMU's ISA device): read the supported events, write one */
#define PVPANIC_PORT            0x505
#define PVPANIC_PANICKED        0x01
#define PVPANIC_CRASH_LOADED    0x02

/* Fixed layout the VMM sets up for 64-bit entry (see README in guests/) */
#define VMM_GDT         0x500
#define VMM_ZERO_PAGE   0x7000
#define VMM_BOOT_RSP    0x8ff0
#define VMM_PML4        0x9000          /* PML4, PDPT, 4 PDs: 0x9000-0xefff */
#define KERNEL_CS       0x10            /* 64-bit code selector */
#define KERNEL_DS       0x18            /* data selector */

/* struct boot_params (the Linux "zero page") */
#define BP_E820_ENTRIES 0x1e8           /* u8 */
#define BP_CMD_LINE_PTR 0x228           /* u32, hdr.cmd_line_ptr */
#define BP_E820_TABLE   0x2d0           /* struct boot_e820_entry[128] */

/* struct hvm_start_info (PVH) */
#define HVM_START_MAGIC         0x336ec578
#define HVM_SI_MAGIC            0
#define HVM_SI_CMDLINE_PADDR    24      /* u64 */
#define HVM_SI_RSDP_PADDR       32      /* u64 */
#define HVM_SI_MEMMAP_PADDR     40      /* u64 */
#define HVM_SI_MEMMAP_ENTRIES   48      /* u32 */

/* Xen ELF note type carrying the 32-bit PVH entry point */
#define XEN_ELFNOTE_PHYS32_ENTRY 18

/* Local APIC (xAPIC MMIO) */
#define LAPIC_BASE      0xfee00000
#define LAPIC_SVR       0x0f0
#define LAPIC_ICR_LO    0x300
#define LAPIC_ICR_HI    0x310
#define ICR_BUSY        (1 << 12)
/* destination shorthand "all excluding self" | level assert | mode */
#define ICR_INIT_ALL_BUT_SELF   0x000c4500
#define ICR_SIPI_ALL_BUT_SELF   0x000c4600

/* Control register / MSR bits */
#define CR0_PE          (1 << 0)
#define CR0_PG          (1 << 31)
#define CR4_PAE         (1 << 5)
#define MSR_EFER        0xc0000080
#define EFER_LME        (1 << 8)

/*
 * Emit a global function / data symbol with ELF type information, so that
 * GDB sees proper symbols.  Use END(name) after the body to set the size.
 */
#define FUNC(name)  .globl name; .type name, @function; name:
#define DATA(name)  .globl name; .type name, @object; name:
#define END(name)   .size name, . - name

/*
 * PVH_NOTE(entry): the Xen ELF note that marks an ELF as PVH bootable and
 * names its 32-bit physical entry point.
 */
#define PVH_NOTE(entry)                                 \
        .pushsection .note.Xen, "a", @note;             \
        .balign 4;                                      \
        .long 4;                /* namesz */            \
        .long 4;                /* descsz */            \
        .long XEN_ELFNOTE_PHYS32_ENTRY;                 \
        .asciz "Xen";                                   \
        .long entry;                                    \
        .popsection

#endif
