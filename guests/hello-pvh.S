/*
 * hello-pvh.S - PVH entry guest (32-bit protected mode, paging off,
 * ebx = struct hvm_start_info).
 */
#include "defs.h"

#define UNCLAIMED_PORT  0x2f0
#define UNCLAIMED_MMIO  0xd0000000      /* in the 32-bit MMIO hole, below the I/O APIC */

        .intel_syntax noprefix
        .code32
        .text

FUNC(_start)
        cli
        cld
        mov     esp, offset pvh_stack_top

        mov     eax, offset msg_hello
        call    serial_putline32

        /* magic check; on a bad magic don't trust any other field */
        xor     esi, esi                /* esi = 1 if start_info usable */
        mov     eax, offset msg_magic_bad
        cmp     dword ptr [ebx + HVM_SI_MAGIC], HVM_START_MAGIC
        jne     1f
        inc     esi
        mov     eax, offset msg_magic_ok
1:      call    serial_putline32

        mov     eax, offset msg_memmap
        call    serial_puts32
        xor     eax, eax
        test    esi, esi
        jz      2f
        mov     eax, [ebx + HVM_SI_MEMMAP_ENTRIES]
2:      call    serial_putdec32
        call    serial_newline32

        mov     eax, offset msg_cmdline
        call    serial_puts32
        test    esi, esi
        jz      3f
        cmp     dword ptr [ebx + HVM_SI_CMDLINE_PADDR + 4], 0
        jne     3f                      /* above 4 GiB: unreachable */
        mov     eax, [ebx + HVM_SI_CMDLINE_PADDR]
        test    eax, eax
        jz      3f
        call    serial_puts32
3:      call    serial_newline32

        /* Nothing answers here: an absent port and absent MMIO read as all ones. */
        mov     eax, offset msg_port
        call    serial_puts32
        mov     edx, UNCLAIMED_PORT
        in      al, dx
        out     dx, al
        movzx   eax, al
        call    serial_putdec32
        call    serial_newline32
        mov     eax, offset msg_mmio
        call    serial_puts32
        mov     eax, [UNCLAIMED_MMIO]
        mov     [UNCLAIMED_MMIO], eax
        call    serial_putdec32
        call    serial_newline32

        jmp     i8042_reset32
END(_start)

        PVH_NOTE(_start)

        .section .rodata
msg_hello:      .asciz "minivmm: hello from pvh"
msg_magic_ok:   .asciz "pvh start_info magic ok"
msg_magic_bad:  .asciz "pvh start_info magic BAD"
msg_memmap:     .asciz "pvh memmap entries: "
msg_cmdline:    .asciz "cmdline: "
msg_port:       .asciz "unclaimed port reads "
msg_mmio:       .asciz "unclaimed mmio reads "

        .bss
        .balign 16
pvh_stack:
        .space  4096
pvh_stack_top:
