/*
 * bzimage-head.S - protected-mode payload of hello-bzimage.bin.
 *
 * The payload is linked at 0x100000 (code32_start) and flattened with
 * objcopy -O binary; bzimage-setup.S supplies the setup sectors in front.
 *
 *   payload + 0x000: startup_32, the 32-bit boot protocol entry (esi = zero
 *                    page).  Builds minivmm's long mode environment itself
 *                    (enter64.S) and continues at startup_64.  Only used
 *                    when booted through the real-mode setup (e.g. QEMU).
 *   payload + 0x200: startup_64, the 64-bit entry point minivmm uses
 *                    (rsi = zero page).
 */
#include "defs.h"

        .intel_syntax noprefix
        .section .head.text, "ax"
        .code32

FUNC(startup_32)
        cli
        cld
        mov     eax, KERNEL_DS
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     esp, VMM_BOOT_RSP
        mov     edi, offset startup_64
        jmp     enter_long_mode32
END(startup_32)

        .org    0x200
        .code64
FUNC(startup_64)
        mov     rbx, rsi                /* zero page */

        lea     rdi, [rip + msg_hello]
        call    serial_putline

        lea     rdi, [rip + msg_cmdline]
        call    serial_puts
        mov     edi, [rbx + BP_CMD_LINE_PTR]
        test    edi, edi
        jz      1f
        call    serial_puts
1:      call    serial_newline

        lea     rdi, [rip + msg_e820]
        call    serial_puts
        movzx   edi, byte ptr [rbx + BP_E820_ENTRIES]
        call    serial_putdec
        call    serial_newline

        jmp     i8042_reset
END(startup_64)

        .section .rodata
msg_hello:      .asciz "minivmm: hello from bzimage"
msg_cmdline:    .asciz "cmdline: "
msg_e820:       .asciz "e820 entries: "
