/*
 * gdbtest.S - single-CPU guest for the GDB stub tests.
 *
 * _start prints `message`, then main_loop runs LOOPS times calling func_a
 * (counter += 1; watched = counter * 0x11) and func_b (register ops only).
 * after_loop prints the counter as read from memory, and done resets.
 */
#include "defs.h"

#define LOOPS   5

        .intel_syntax noprefix
        .code64
        .text

FUNC(_start)
        lea     rdi, [rip + message]
        call    serial_putline
        mov     ebx, LOOPS
FUNC(main_loop)
        call    func_a
        call    func_b
        dec     ebx
        jnz     main_loop
FUNC(after_loop)
        lea     rdi, [rip + msg_counter]
        call    serial_puts
        mov     rdi, [rip + counter]
        call    serial_putdec
        call    serial_newline
FUNC(done)
        jmp     i8042_reset
END(done)
END(after_loop)
END(main_loop)
END(_start)

/* func_a: counter += 1; watched = counter * 0x11 */
FUNC(func_a)
        mov     rax, [rip + counter]
        inc     rax
        mov     [rip + counter], rax
        imul    rax, rax, 0x11
        mov     [rip + watched], rax
        ret
END(func_a)

/* func_b: a few register operations, no memory side effects */
FUNC(func_b)
        mov     rax, rbx
        add     rax, 1
        shl     rax, 2
        xor     rax, 0x5a
        ret
END(func_b)

        .section .rodata
msg_counter:    .asciz "gdbtest: counter="

        .data
        .balign 8
DATA(counter)   .quad 0
END(counter)
DATA(watched)   .quad 0
END(watched)
DATA(message)   .asciz "gdbtest: start"
END(message)
