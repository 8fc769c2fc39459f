/*
 * hello64.S - demo guest for `make run` (64-bit ELF entry).
 *
 * Prints a greeting, the CPUID vendor string and the kernel command line
 * from the zero page (rsi at entry), then resets via the i8042.
 */
#include "defs.h"

        .intel_syntax noprefix
        .code64
        .text

FUNC(_start)
        mov     rbx, rsi                /* zero page (boot_params) */

        lea     rdi, [rip + msg_hello]
        call    serial_putline

        /* CPUID leaf 0: vendor string in ebx, edx, ecx */
        push    rbx
        xor     eax, eax
        cpuid
        mov     [rip + vendor], ebx
        mov     [rip + vendor + 4], edx
        mov     [rip + vendor + 8], ecx
        pop     rbx
        lea     rdi, [rip + msg_vendor]
        call    serial_puts
        lea     rdi, [rip + vendor]
        call    serial_putline

        lea     rdi, [rip + msg_cmdline]
        call    serial_puts
        mov     edi, [rbx + BP_CMD_LINE_PTR]
        test    edi, edi
        jz      1f
        call    serial_puts
1:      call    serial_newline

        lea     rdi, [rip + msg_reset]
        call    serial_putline
        jmp     i8042_reset
END(_start)

        .section .rodata
msg_hello:      .asciz "minivmm demo guest: hello from 64-bit long mode"
msg_vendor:     .asciz "cpu vendor: "
msg_cmdline:    .asciz "cmdline: "
msg_reset:      .asciz "resetting via i8042"

        .data
DATA(vendor)
        .space  13                      /* 12 chars + NUL */
END(vendor)
