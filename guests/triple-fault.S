/*
 * triple-fault.S - #UD with an empty IDT: #UD -> #DF -> triple fault.
 */
#include "defs.h"

        .intel_syntax noprefix
        .code64
        .text

FUNC(_start)
        lea     rdi, [rip + msg]
        call    serial_putline
        lidt    [rip + empty_idtr]
FUNC(fault)
        ud2
1:      hlt                             /* not reached */
        jmp     1b
END(fault)
END(_start)

        .section .rodata
msg:    .asciz "triple-fault: going down"
        .balign 8
empty_idtr:
        .word   0                       /* limit 0: every vector faults */
        .quad   0
