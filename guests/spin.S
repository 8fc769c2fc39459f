/*
 * spin.S - says so, then spins forever with interrupts off: a hung guest that only
 * minivmm can end (--timeout, a signal, GDB).
 */
#include "defs.h"

        .intel_syntax noprefix
        .code64
        .text

FUNC(_start)
        lea     rdi, [rip + msg]
        call    serial_putline
        cli
FUNC(spin)
        pause
        jmp     spin
END(spin)
END(_start)

        .section .rodata
msg:    .asciz "spin: spinning forever"
