/*
 * flood-pvh.S - PVH guest writing 65536 bytes to COM1, one OUT per byte
 * (LSR polled before each), as 1024 lines of 63 printable characters plus
 * '\n'; then "flood: done" and reset.  Tight loop: ~8 instructions a byte.
 */
#include "defs.h"

#define LINE_LEN        64
#define LINES           1024            /* 1024 * 64 = 65536 bytes */

        .intel_syntax noprefix
        .code32
        .text

FUNC(_start)
        cli
        cld
        mov     esp, offset pvh_stack_top
        mov     ebx, LINES
        mov     edx, COM1_LSR
FUNC(flood_line)
        mov     esi, offset flood_pattern
        mov     ecx, LINE_LEN
1:      in      al, dx                  /* dx = LSR */
        test    al, LSR_THRE
        jz      1b
        mov     dl, COM1_THR & 0xff     /* 0x3fd -> 0x3f8 */
        outsb                           /* out dx, byte [esi++] */
        mov     dl, COM1_LSR & 0xff
        dec     ecx
        jnz     1b
        dec     ebx
        jnz     flood_line
END(flood_line)

        mov     eax, offset msg_done
        call    serial_putline32
        jmp     i8042_reset32
END(_start)

        PVH_NOTE(_start)

        .section .rodata
flood_pattern:
        .ascii  "0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmno"
        .byte   '\n'
        .if     . - flood_pattern != LINE_LEN
        .error  "flood_pattern must be LINE_LEN bytes"
        .endif
msg_done:       .asciz "flood: done"

        .bss
        .balign 16
pvh_stack:
        .space  1024
pvh_stack_top:
