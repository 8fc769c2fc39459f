/*
 * lib32.S - serial console and reset helpers for 32-bit (PVH) guests.
 *
 * Calling convention: argument in eax; the helpers clobber eax, ecx and edx
 * and preserve ebx, esi, edi, ebp.
 */
#include "defs.h"

        .intel_syntax noprefix
        .code32
        .text

/* serial_putc32(al = byte) */
FUNC(serial_putc32)
        mov     ecx, eax
        mov     edx, COM1_LSR
1:      in      al, dx
        test    al, LSR_THRE
        jz      1b
        mov     eax, ecx
        mov     edx, COM1_THR
        out     dx, al
        ret
END(serial_putc32)

/* serial_puts32(eax = NUL-terminated string) */
FUNC(serial_puts32)
        push    esi
        mov     esi, eax
1:      movzx   eax, byte ptr [esi]
        test    eax, eax
        jz      2f
        call    serial_putc32
        inc     esi
        jmp     1b
2:      pop     esi
        ret
END(serial_puts32)

/* serial_newline32() */
FUNC(serial_newline32)
        mov     eax, '\n'
        jmp     serial_putc32
END(serial_newline32)

/* serial_putline32(eax = string): the string followed by a newline. */
FUNC(serial_putline32)
        call    serial_puts32
        jmp     serial_newline32
END(serial_putline32)

/* serial_putdec32(eax = unsigned 32-bit value), printed in decimal. */
FUNC(serial_putdec32)
        push    esi
        push    ebx
        sub     esp, 16                 /* digit buffer, filled backwards */
        lea     esi, [esp + 15]
        mov     byte ptr [esi], 0
        mov     ebx, 10
1:      xor     edx, edx
        div     ebx
        add     dl, '0'
        dec     esi
        mov     [esi], dl
        test    eax, eax
        jnz     1b
        mov     eax, esi
        call    serial_puts32
        add     esp, 16
        pop     ebx
        pop     esi
        ret
END(serial_putdec32)

/* i8042_reset32(): reset the machine; never returns. */
FUNC(i8042_reset32)
        mov     al, I8042_RESET
        out     I8042_CMD, al
1:      hlt
        jmp     1b
END(i8042_reset32)
