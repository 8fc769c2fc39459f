/*
 * bzimage-setup.S - the real-mode part ("setup sectors") of hello-bzimage.bin.
 *
 * Contains the Linux x86 boot protocol 2.15 setup header at 0x1f1 (see
 * Documentation/arch/x86/boot.rst) and a tiny real-mode setup routine for
 * boot loaders that run it (e.g. QEMU's -kernel): it fills the e820 table
 * via BIOS int 0x15/e820, switches to protected mode and jumps to
 * code32_start with esi = boot_params, as the 32-bit boot protocol wants.
 * Loaders that use the 64-bit entry (minivmm) only read the header.
 *
 * build.rs assembles this with -DSYSSIZE=<payload size / 16> and
 * -DINIT_SIZE=<bytes>; the result is flattened with objcopy -O binary and
 * must be exactly (SETUP_SECTS + 1) * 512 bytes long.
 */
#include "defs.h"

#define SETUP_SECTS     4
#define BOOT_CS32       0x10            /* __BOOT_CS */
#define BOOT_DS         0x18            /* __BOOT_DS */
#define E820_SMAP       0x534d4150      /* "SMAP" */
#define E820_MAX        128

        .intel_syntax noprefix
        .code16
        .section .setup, "ax"

        .globl  setup_start
setup_start:
        /* offset 0: legacy boot sector, not bootable from a disk */
        .org    0x1f1
hdr_setup_sects:        .byte   SETUP_SECTS
        .org    0x1f2
hdr_root_flags:         .word   0
        .org    0x1f4
hdr_syssize:            .long   SYSSIZE
        .org    0x1f8
hdr_ram_size:           .word   0
        .org    0x1fa
hdr_vid_mode:           .word   0xffff          /* NORMAL_VGA */
        .org    0x1fc
hdr_root_dev:           .word   0
        .org    0x1fe
hdr_boot_flag:          .word   0xaa55
        .org    0x200
hdr_jump:               .byte   0xeb, setup_code - 0x202 /* jmp short */
        .org    0x202
hdr_header:             .ascii  "HdrS"
        .org    0x206
hdr_version:            .word   0x020f
        .org    0x208
hdr_realmode_swtch:     .long   0
        .org    0x20c
hdr_start_sys_seg:      .word   0x1000
        .org    0x20e
hdr_kernel_version:     .word   kernel_version - 0x200
        .org    0x210
hdr_type_of_loader:     .byte   0
        .org    0x211
hdr_loadflags:          .byte   0x01            /* LOADED_HIGH */
        .org    0x212
hdr_setup_move_size:    .word   0x8000
        .org    0x214
hdr_code32_start:       .long   0x100000
        .org    0x218
hdr_ramdisk_image:      .long   0
        .org    0x21c
hdr_ramdisk_size:       .long   0
        .org    0x220
hdr_bootsect_kludge:    .long   0
        .org    0x224
hdr_heap_end_ptr:       .word   0
        .org    0x226
hdr_ext_loader_ver:     .byte   0
        .org    0x227
hdr_ext_loader_type:    .byte   0
        .org    0x228
hdr_cmd_line_ptr:       .long   0
        .org    0x22c
hdr_initrd_addr_max:    .long   0x7fffffff
        .org    0x230
hdr_kernel_alignment:   .long   0x200000
        .org    0x234
hdr_relocatable_kernel: .byte   0
        .org    0x235
hdr_min_alignment:      .byte   21              /* log2(2 MiB) */
        .org    0x236
hdr_xloadflags:         .word   0x0001          /* XLF_KERNEL_64 */
        .org    0x238
hdr_cmdline_size:       .long   2047
        .org    0x23c
hdr_hardware_subarch:   .long   0
        .org    0x240
hdr_hardware_subarch_data: .quad 0
        .org    0x248
hdr_payload_offset:     .long   0
        .org    0x24c
hdr_payload_length:     .long   0
        .org    0x250
hdr_setup_data:         .quad   0
        .org    0x258
hdr_pref_address:       .quad   0x100000
        .org    0x260
hdr_init_size:          .long   INIT_SIZE
        .org    0x264
hdr_handover_offset:    .long   0
        .org    0x268
hdr_kernel_info_offset: .long   0
        .org    0x26c

/*
 * Real-mode entry: cs = setup segment + 0x20 (so ip is relative to 0x200),
 * ds = es = ss = setup segment.  boot_params is built in a separate page at
 * ZERO_PAGE within the segment (the loaded setup is not the zero page).
 */
#define ZERO_PAGE       0x1000
#define HDR_START       0x1f1
#define HDR_END         0x26c

setup_code:
        cli
        cld
        mov     ax, cs
        sub     ax, 0x20
        mov     ds, ax
        mov     es, ax

        /* boot_params: zeroed, with a copy of the (loader-updated) header */
        mov     di, ZERO_PAGE
        mov     cx, 4096 / 2
        xor     ax, ax
        rep stosw
        mov     si, HDR_START
        mov     di, ZERO_PAGE + HDR_START
        mov     cx, HDR_END - HDR_START
        rep movsb

        /* e820 table into boot_params.e820_table via int 0x15, eax=0xe820 */
        xor     ebx, ebx
        xor     bp, bp
        mov     di, ZERO_PAGE + BP_E820_TABLE
1:      mov     eax, 0xe820
        mov     edx, E820_SMAP
        mov     ecx, 20
        int     0x15
        jc      2f
        cmp     eax, E820_SMAP
        jne     2f
        add     di, 20
        inc     bp
        cmp     bp, E820_MAX
        jae     2f
        test    ebx, ebx
        jnz     1b
2:      mov     ax, bp
        mov     [ZERO_PAGE + BP_E820_ENTRIES], al
        cli

        /* esi = linear address of boot_params; patch the GDT base */
        xor     eax, eax
        mov     ax, ds
        shl     eax, 4
        lea     esi, [eax + ZERO_PAGE]
        add     eax, offset setup_gdt
        mov     [setup_gdtr + 2], eax
        lgdt    [setup_gdtr]

        mov     eax, cr0
        or      eax, CR0_PE
        mov     cr0, eax
        mov     ax, BOOT_DS
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        .byte   0x66, 0xea              /* ljmpl BOOT_CS32:code32_start */
        .long   0x100000
        .word   BOOT_CS32

        .balign 8
setup_gdt:
        .quad   0
        .quad   0
        .quad   0x00cf9a000000ffff      /* 0x10: __BOOT_CS, 32-bit flat */
        .quad   0x00cf92000000ffff      /* 0x18: __BOOT_DS, flat */
setup_gdtr:
        .word   4 * 8 - 1
        .long   0                       /* patched at run time */

kernel_version:
        .asciz  "minivmm-test-guest"

        .org    (SETUP_SECTS + 1) * 512
