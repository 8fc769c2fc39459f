/*
 * lib64.S - serial console and reset helpers for 64-bit (long mode) guests.
 *
 * Calling convention: System V-like.  Argument in rdi; the helpers clobber
 * only rax, rcx, rdx, rsi and rdi and preserve everything else (rbx, rbp,
 * r8-r15 included), so callers can keep state in those registers.
 */
#include "defs.h"

        .intel_syntax noprefix
        .code64
        .text

/* serial_putc(dil = byte): wait for THR empty, then write the byte. */
FUNC(serial_putc)
        mov     edx, COM1_LSR
1:      in      al, dx
        test    al, LSR_THRE
        jz      1b
        mov     eax, edi
        mov     edx, COM1_THR
        out     dx, al
        ret
END(serial_putc)

/* serial_puts(rdi = NUL-terminated string) */
FUNC(serial_puts)
        mov     rsi, rdi
1:      movzx   edi, byte ptr [rsi]
        test    edi, edi
        jz      2f
        call    serial_putc
        inc     rsi
        jmp     1b
2:      ret
END(serial_puts)

/* serial_newline() */
FUNC(serial_newline)
        mov     edi, '\n'
        jmp     serial_putc
END(serial_newline)

/* serial_putline(rdi = string): the string followed by a newline. */
FUNC(serial_putline)
        call    serial_puts
        jmp     serial_newline
END(serial_putline)

/* serial_putdec(rdi = unsigned 64-bit value), printed in decimal. */
FUNC(serial_putdec)
        sub     rsp, 32                 /* digit buffer, filled backwards */
        lea     rsi, [rsp + 31]
        mov     byte ptr [rsi], 0
        mov     rax, rdi
        mov     ecx, 10
1:      xor     edx, edx
        div     rcx
        add     dl, '0'
        dec     rsi
        mov     [rsi], dl
        test    rax, rax
        jnz     1b
        mov     rdi, rsi
        call    serial_puts
        add     rsp, 32
        ret
END(serial_putdec)

/* serial_getc() -> al: wait for a received byte and return it. */
FUNC(serial_getc)
        mov     edx, COM1_LSR
1:      in      al, dx
        test    al, LSR_DR
        jz      1b
        mov     edx, COM1_RBR
        in      al, dx
        movzx   eax, al
        ret
END(serial_getc)

/* i8042_reset(): reset the machine; never returns. */
FUNC(i8042_reset)
        mov     al, I8042_RESET
        out     I8042_CMD, al
1:      hlt
        jmp     1b
END(i8042_reset)

/* cpu_apic_id() -> eax: initial APIC ID from CPUID.1:EBX[31:24]. */
FUNC(cpu_apic_id)
        push    rbx
        mov     eax, 1
        cpuid
        mov     eax, ebx
        shr     eax, 24
        pop     rbx
        ret
END(cpu_apic_id)
