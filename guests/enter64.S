/*
 * enter64.S - switch from 32-bit protected mode (paging off) to 64-bit long
 * mode, recreating exactly the environment minivmm gives a 64-bit ELF guest:
 *
 *   GDT at 0x500 (0x08 32-bit code, 0x10 64-bit code, 0x18 data),
 *   identity map of the first 4 GiB with 2 MiB pages at 0x9000-0xefff,
 *   CS = 0x10, DS/ES/SS = 0x18, rsp = 0x8ff0, interrupts off.
 *
 * Used by the bzImage 32-bit entry point (startup_32) and by the PVH shim
 * that lets QEMU boot the 64-bit test guests.  Not used under minivmm's own
 * 64-bit entry paths.
 */
#include "defs.h"

        .intel_syntax noprefix
        .text
        .code32

/*
 * enter_long_mode32: edi = 64-bit entry point (below 4 GiB), esi = value
 * handed over in rsi (zero page).  Never returns.
 */
FUNC(enter_long_mode32)
        cli
        cld
        mov     ebp, edi                /* keep the target */

        /* GDT at VMM_GDT */
        mov     edi, VMM_GDT
        mov     eax, offset boot_gdt
        mov     ecx, 8                  /* 4 descriptors = 8 dwords */
1:      mov     edx, [eax]
        mov     [edi], edx
        add     eax, 4
        add     edi, 4
        dec     ecx
        jnz     1b
        lgdt    [boot_gdtr]

        /* page tables: PML4 0x9000, PDPT 0xa000, PDs 0xb000-0xefff */
        mov     edi, VMM_PML4
        mov     ecx, 0x6000 / 4
        xor     eax, eax
        rep stosd
        mov     dword ptr [VMM_PML4], VMM_PML4 + 0x1000 + 3
        mov     edi, VMM_PML4 + 0x1000  /* PDPT[0..3] -> the four PDs */
        mov     eax, VMM_PML4 + 0x2000 + 3
        mov     ecx, 4
2:      mov     [edi], eax
        add     eax, 0x1000
        add     edi, 8
        dec     ecx
        jnz     2b
        mov     edi, VMM_PML4 + 0x2000  /* 2048 2 MiB pages: 0 - 4 GiB */
        mov     eax, 0x83               /* present, writable, PS */
        xor     edx, edx                /* high dword of the frame */
        mov     ecx, 2048
3:      mov     [edi], eax
        mov     [edi + 4], edx
        add     eax, 0x200000
        adc     edx, 0
        add     edi, 8
        dec     ecx
        jnz     3b

        mov     eax, cr4
        or      eax, CR4_PAE
        mov     cr4, eax
        mov     eax, VMM_PML4
        mov     cr3, eax
        mov     ecx, MSR_EFER
        rdmsr
        or      eax, EFER_LME
        wrmsr
        mov     eax, cr0
        or      eax, CR0_PG | CR0_PE
        mov     cr0, eax
        .byte   0xea                    /* ljmp KERNEL_CS:long_mode_entered */
        .long   long_mode_entered
        .word   KERNEL_CS

        .code64
long_mode_entered:
        mov     eax, KERNEL_DS
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     fs, ax
        mov     gs, ax
        mov     esp, VMM_BOOT_RSP
        mov     esi, esi                /* zero-extend into rsi */
        mov     ebp, ebp
        xor     eax, eax
        jmp     rbp
END(enter_long_mode32)

        .section .rodata
        .balign 8
boot_gdt:
        .quad   0
        .quad   0x00cf9a000000ffff      /* 0x08: 32-bit code */
        .quad   0x00af9a000000ffff      /* 0x10: 64-bit code */
        .quad   0x00cf92000000ffff      /* 0x18: data */
boot_gdtr:
        .word   4 * 8 - 1
        .long   VMM_GDT
