/*
 * qemu-pvh-shim.S - TESTING ONLY: makes a 64-bit guest PVH-bootable so it
 * can be run with `qemu-system-x86_64 -kernel guest.elf`.
 *
 * Linked in front of a 64-bit guest, it turns the PVH start_info into a
 * minimal Linux zero page at 0x7000 (command line pointer and e820 table),
 * recreates minivmm's 64-bit entry environment (enter64.S) and jumps to the
 * guest's _start with rsi = 0x7000.  build.rs writes these variants to
 * $MINIVMM_GUESTS_DIR/qemu-pvh/.
 */
#include "defs.h"

        .intel_syntax noprefix
        .text
        .code32

FUNC(pvh_shim_start)
        cli
        cld
        mov     esp, VMM_BOOT_RSP

        /* clear the zero page */
        mov     edi, VMM_ZERO_PAGE
        mov     ecx, 4096 / 4
        xor     eax, eax
        rep stosd

        /* hdr.cmd_line_ptr = start_info.cmdline_paddr (low 32 bits) */
        mov     eax, [ebx + HVM_SI_CMDLINE_PADDR]
        mov     [VMM_ZERO_PAGE + BP_CMD_LINE_PTR], eax

        /* hvm_memmap_table_entry (24 bytes) -> boot_e820_entry (20 bytes) */
        mov     ecx, [ebx + HVM_SI_MEMMAP_ENTRIES]
        cmp     ecx, 128
        jbe     1f
        mov     ecx, 128
1:      mov     [VMM_ZERO_PAGE + BP_E820_ENTRIES], cl
        mov     esi, [ebx + HVM_SI_MEMMAP_PADDR]
        mov     edi, VMM_ZERO_PAGE + BP_E820_TABLE
        jecxz   3f
2:      mov     eax, [esi]              /* addr */
        mov     [edi], eax
        mov     eax, [esi + 4]
        mov     [edi + 4], eax
        mov     eax, [esi + 8]          /* size */
        mov     [edi + 8], eax
        mov     eax, [esi + 12]
        mov     [edi + 12], eax
        mov     eax, [esi + 16]         /* type */
        mov     [edi + 16], eax
        add     esi, 24
        add     edi, 20
        dec     ecx
        jnz     2b

3:      mov     esi, VMM_ZERO_PAGE
        mov     edi, offset _start
        jmp     enter_long_mode32
END(pvh_shim_start)

        PVH_NOTE(pvh_shim_start)
