/*
 * bad-insn.S - jumps into the 32-bit MMIO gap where there is no RAM, so the
 * instruction fetch cannot be satisfied (KVM_EXIT_INTERNAL_ERROR).
 */
#include "defs.h"

#define MMIO_GAP_TARGET 0xd0000000

        .intel_syntax noprefix
        .code64
        .text

FUNC(_start)
        lea     rdi, [rip + msg]
        call    serial_putline
        mov     eax, MMIO_GAP_TARGET
FUNC(jump_to_mmio)
        jmp     rax
1:      hlt                             /* not reached */
        jmp     1b
END(jump_to_mmio)
END(_start)

        .section .rodata
msg:    .asciz "bad-insn: jumping to mmio"
