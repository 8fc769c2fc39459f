/*
 * acpi-pvh.S - PVH guest that ends the VM through ACPI, finding its way there the way
 * an OS does: from the RSDP in start_info to the RSDT, the FADT and the DSDT.
 *
 * Default: power off (S5): write the SLP_TYP of the DSDT's \_S5 package, with SLP_EN, to
 * PM1a_CNT_BLK, as Linux `poweroff` does. With the command line "reset": write the
 * FADT's RESET_VALUE to its RESET_REG, as Linux `reboot` does first.
 *
 * Tables that are not as expected print "acpi: bad tables" and triple-fault. After its
 * request the guest halts with interrupts off: only the VMM can end it.
 */
#include "defs.h"

#define SIG_RSD         0x20445352      /* "RSD " */
#define SIG_PTR         0x20525450      /* "PTR " */
#define SIG_RSDT        0x54445352      /* "RSDT" */
#define SIG_FACP        0x50434146      /* "FACP" */
#define SIG_DSDT        0x54445344      /* "DSDT" */
#define NAME_S5         0x5f35535f      /* "_S5_" */
#define SIG_RESE        0x65736572      /* "rese" */

#define SDT_LEN         4               /* u32 table length */
#define SDT_BODY        36
#define RSDP_RSDT       16              /* u32 */
#define FADT_DSDT       40              /* u32 */
#define FADT_PM1A_CNT   64              /* u32 */
#define FADT_FLAGS      112             /* u32 */
#define FADT_RESET_SUP  (1 << 10)
#define FADT_RESET_REG  116             /* generic address structure */
#define FADT_RESET_ADDR 120             /* u64 within RESET_REG */
#define FADT_RESET_VAL  128             /* u8 */
#define GAS_SYSTEM_IO   1
#define AML_PACKAGE     0x12
#define AML_BYTE        0x0a
#define SLP_TYP_SHIFT   10
#define SLP_EN          (1 << 13)

        .intel_syntax noprefix
        .code32
        .text

FUNC(_start)
        cli
        cld
        mov     esp, offset stack_top
        mov     eax, offset msg_hello
        call    serial_putline32

        /* ebx = start_info: the RSDP, checked by signature */
        cmp     dword ptr [ebx + HVM_SI_MAGIC], HVM_START_MAGIC
        jne     bad_tables
        mov     esi, [ebx + HVM_SI_RSDP_PADDR]
        test    esi, esi
        jz      bad_tables
        cmp     dword ptr [esi], SIG_RSD
        jne     bad_tables
        cmp     dword ptr [esi + 4], SIG_PTR
        jne     bad_tables

        /* the RSDT's entries, for the one with signature FACP */
        mov     esi, [esi + RSDP_RSDT]
        cmp     dword ptr [esi], SIG_RSDT
        jne     bad_tables
        mov     ecx, [esi + SDT_LEN]
        sub     ecx, SDT_BODY
        shr     ecx, 2
        lea     edi, [esi + SDT_BODY]
1:      test    ecx, ecx
        jz      bad_tables
        mov     ebp, [edi]
        cmp     dword ptr [ebp], SIG_FACP
        je      2f
        add     edi, 4
        dec     ecx
        jmp     1b

        /* ebp = FADT. Which request does the command line ask for? */
2:      mov     eax, [ebx + HVM_SI_CMDLINE_PADDR]
        test    eax, eax
        jz      power_off
        cmp     dword ptr [eax], SIG_RESE
        je      reset
        jmp     power_off
END(_start)

/* Writes RESET_VALUE to RESET_REG (ebp = FADT). */
FUNC(reset)
        test    dword ptr [ebp + FADT_FLAGS], FADT_RESET_SUP
        jz      bad_tables
        cmp     byte ptr [ebp + FADT_RESET_REG], GAS_SYSTEM_IO
        jne     bad_tables
        mov     eax, offset msg_reset_port
        call    serial_puts32
        mov     eax, [ebp + FADT_RESET_ADDR]
        call    serial_putdec32
        mov     eax, offset msg_value
        call    serial_puts32
        movzx   eax, byte ptr [ebp + FADT_RESET_VAL]
        call    serial_putdec32
        call    serial_newline32
        mov     edx, [ebp + FADT_RESET_ADDR]
        mov     al, [ebp + FADT_RESET_VAL]
        out     dx, al
        jmp     wait_for_the_end
END(reset)

/* Finds \_S5 in the DSDT and enters S5 through PM1a_CNT_BLK (ebp = FADT). */
FUNC(power_off)
        mov     esi, [ebp + FADT_DSDT]
        cmp     dword ptr [esi], SIG_DSDT
        jne     bad_tables
        lea     edi, [esi + SDT_BODY]
        add     esi, [esi + SDT_LEN]            /* esi = end of the DSDT */
        /* the name, PackageOp, PkgLength, NumElements and a two-byte element */
1:      lea     eax, [edi + 10]
        cmp     eax, esi
        ja      bad_tables
        cmp     dword ptr [edi], NAME_S5
        je      2f
        inc     edi
        jmp     1b
2:      cmp     byte ptr [edi + 4], AML_PACKAGE
        jne     bad_tables
        /* PkgLength: bits 7-6 of its first byte count the bytes that follow it */
        movzx   eax, byte ptr [edi + 5]
        shr     eax, 6
        lea     edi, [edi + eax + 7]            /* first element, after NumElements */
        movzx   eax, byte ptr [edi]
        cmp     eax, AML_BYTE
        jne     3f
        movzx   eax, byte ptr [edi + 1]
        jmp     4f
3:      cmp     eax, 1                          /* ZeroOp and OneOp are their own value */
        ja      bad_tables
4:      mov     edi, eax                        /* edi = SLP_TYPa */

        mov     eax, offset msg_s5
        call    serial_puts32
        mov     eax, edi
        call    serial_putdec32
        mov     eax, offset msg_pm1a_cnt
        call    serial_puts32
        mov     eax, [ebp + FADT_PM1A_CNT]
        call    serial_putdec32
        call    serial_newline32
        mov     edx, [ebp + FADT_PM1A_CNT]
        mov     eax, edi
        shl     eax, SLP_TYP_SHIFT
        or      eax, SLP_EN
        out     dx, ax
        jmp     wait_for_the_end
END(power_off)

FUNC(wait_for_the_end)
        cli
1:      hlt
        jmp     1b
END(wait_for_the_end)

FUNC(bad_tables)
        mov     eax, offset msg_bad
        call    serial_putline32
        lidt    [null_idt]
        ud2
END(bad_tables)

        PVH_NOTE(_start)

        .section .rodata
msg_hello:      .asciz "acpi: hello from pvh"
msg_s5:         .asciz "acpi: S5 sleep type "
msg_pm1a_cnt:   .asciz ", PM1a_CNT port "
msg_reset_port: .asciz "acpi: reset register port "
msg_value:      .asciz ", value "
msg_bad:        .asciz "acpi: bad tables"
        .balign 8
null_idt:       .word 0
                .long 0

        .bss
        .balign 16
stack:
        .space  4096
stack_top:
