/*
 * echo.S - reads one line from COM1 and echoes it back, then resets.
 */
#include "defs.h"

#define LINE_MAX 256

        .intel_syntax noprefix
        .code64
        .text

FUNC(_start)
        lea     rdi, [rip + msg_ready]
        call    serial_putline

        lea     rbx, [rip + line_buf]
        xor     r12d, r12d              /* line length */
FUNC(read_loop)
        call    serial_getc
        cmp     al, '\n'
        je      1f
        cmp     al, '\r'
        je      1f
        cmp     r12d, LINE_MAX - 1      /* keep room for the NUL */
        jae     read_loop
        mov     [rbx + r12], al
        inc     r12d
        jmp     read_loop
1:      mov     byte ptr [rbx + r12], 0

        lea     rdi, [rip + msg_echo]
        call    serial_puts
        mov     rdi, rbx
        call    serial_putline
        jmp     i8042_reset
END(read_loop)
END(_start)

        .section .rodata
msg_ready:      .asciz "echo: ready"
msg_echo:       .asciz "echo: "

        .bss
DATA(line_buf)
        .space  LINE_MAX
END(line_buf)
