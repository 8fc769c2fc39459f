/*
 * panic.S - reports a kernel panic through pvpanic, as Linux's pvpanic driver does.
 *
 * Reads port 0x505 and prints the events it supports, then writes PVPANIC_PANICKED and
 * halts: minivmm must end with status 7. With the command line "crash-loaded" it writes
 * PVPANIC_CRASH_LOADED instead (a panic with a kdump kernel waiting), which must not end
 * the VM: the guest says it runs on and resets through the i8042 (status 0).
 */
#include "defs.h"

#define SIG_CRAS        0x73617263      /* "cras" */

        .intel_syntax noprefix
        .code64
        .text

FUNC(_start)
        mov     rbx, rsi                /* zero page (boot_params) */
        lea     rdi, [rip + msg_supported]
        call    serial_puts
        mov     edx, PVPANIC_PORT
        in      al, dx
        movzx   edi, al
        call    serial_putdec
        call    serial_newline

        mov     eax, [rbx + BP_CMD_LINE_PTR]
        test    eax, eax
        jz      panicked
        cmp     dword ptr [rax], SIG_CRAS
        je      crash_loaded
END(_start)

FUNC(panicked)
        lea     rdi, [rip + msg_panicked]
        call    serial_putline
        mov     edx, PVPANIC_PORT
        mov     al, PVPANIC_PANICKED
        out     dx, al
        /* Only minivmm can end it now. */
        cli
1:      hlt
        jmp     1b
END(panicked)

FUNC(crash_loaded)
        lea     rdi, [rip + msg_crash_loaded]
        call    serial_putline
        mov     edx, PVPANIC_PORT
        mov     al, PVPANIC_CRASH_LOADED
        out     dx, al
        lea     rdi, [rip + msg_runs_on]
        call    serial_putline
        jmp     i8042_reset
END(crash_loaded)

        .section .rodata
msg_supported:          .asciz "panic: pvpanic supports "
msg_panicked:           .asciz "panic: reporting a panic"
msg_crash_loaded:       .asciz "panic: reporting a panic with a crash kernel loaded"
msg_runs_on:            .asciz "panic: still running"
