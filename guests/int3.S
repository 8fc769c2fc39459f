/*
 * int3.S - executes int3 with its own IDT; the #BP handler prints a line
 * and returns with iretq.  Vectors 0-31 other than #BP go to a diagnostic
 * handler that prints the vector number and resets.
 */
#include "defs.h"

#define IDT_ENTRIES     256
#define GATE_INTR       0x8e            /* present, DPL 0, 64-bit int gate */

        .intel_syntax noprefix
        .code64
        .text

FUNC(_start)
        /* exceptions 0-31 -> diagnostic stubs, #BP -> int3_handler */
        xor     ebx, ebx
1:      mov     edi, ebx
        mov     rsi, rbx
        shl     rsi, 4                  /* stubs are 16 bytes apart */
        lea     rax, [rip + exception_stubs]
        add     rsi, rax
        call    idt_set_gate
        inc     ebx
        cmp     ebx, 32
        jb      1b
        mov     edi, 3
        lea     rsi, [rip + int3_handler]
        call    idt_set_gate
        lidt    [rip + idtr]

        lea     rdi, [rip + msg_before]
        call    serial_putline
FUNC(breakpoint)
        int3
END(breakpoint)
        lea     rdi, [rip + msg_after]
        call    serial_putline
        jmp     i8042_reset
END(_start)

/* idt_set_gate(edi = vector, rsi = handler): 64-bit interrupt gate. */
FUNC(idt_set_gate)
        lea     rax, [rip + idt]
        shl     edi, 4
        add     rdi, rax
        mov     eax, esi
        mov     [rdi], ax                       /* offset 15:0 */
        mov     word ptr [rdi + 2], KERNEL_CS   /* selector */
        mov     byte ptr [rdi + 4], 0           /* IST */
        mov     byte ptr [rdi + 5], GATE_INTR   /* type / attributes */
        shr     eax, 16
        mov     [rdi + 6], ax                   /* offset 31:16 */
        mov     rax, rsi
        shr     rax, 32
        mov     [rdi + 8], eax                  /* offset 63:32 */
        mov     dword ptr [rdi + 12], 0
        ret
END(idt_set_gate)

/* The #BP handler: print, preserve the interrupted registers, iretq. */
FUNC(int3_handler)
        push    rax
        push    rcx
        push    rdx
        push    rsi
        push    rdi
        lea     rdi, [rip + msg_handler]
        call    serial_putline
        pop     rdi
        pop     rsi
        pop     rdx
        pop     rcx
        pop     rax
        iretq
END(int3_handler)

/* 32 stubs, 16 bytes apart, each pushing its vector number. */
        .balign 16
FUNC(exception_stubs)
        .set    vector, 0
        .rept   32
        .balign 16
        push    vector
        jmp     unexpected_exception
        .set    vector, vector + 1
        .endr
END(exception_stubs)

/* Diagnostics for any other exception: print the vector and reset. */
FUNC(unexpected_exception)
        lea     rdi, [rip + msg_unexpected]
        call    serial_puts
        mov     rdi, [rsp]
        call    serial_putdec
        call    serial_newline
        jmp     i8042_reset
END(unexpected_exception)

        .section .rodata
msg_before:     .asciz "int3: before"
msg_after:      .asciz "int3: after"
msg_handler:    .asciz "int3: guest #BP handler ran"
msg_unexpected: .asciz "int3: unexpected exception, vector "

        .data
        .balign 8
        .word   0                       /* align the base to 8 */
        .word   0
        .word   0
idtr:   .word   IDT_ENTRIES * 16 - 1
        .quad   idt

        .bss
        .balign 4096
DATA(idt)
        .space  IDT_ENTRIES * 16
END(idt)
