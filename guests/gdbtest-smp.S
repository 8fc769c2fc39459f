/*
 * gdbtest-smp.S - SMP guest for the GDB stub tests.
 *
 * Like smp.elf, but once online every CPU calls smp_work() three times (the
 * BSP after all CPUs are online); the BSP then waits for the APs to finish,
 * prints "gdbtest-smp: done" and resets.
 */
#include "defs.h"

#define WORK_CALLS      3
#define WORK_SLOTS      64              /* per-CPU counters, by APIC ID */

        .intel_syntax noprefix
        .code64
        .text

FUNC(_start)
        call    smp_start
        mov     r12d, eax               /* number of CPUs */

        call    cpu_apic_id
        mov     edi, eax
        call    do_work

        lea     eax, [r12d - 1]
1:      pause
        cmp     [rip + aps_finished], eax
        jb      1b

        lea     rdi, [rip + msg_done]
        call    serial_putline
        jmp     i8042_reset
END(_start)

/* ap_main(edi = APIC ID): do the work, report completion, park. */
FUNC(ap_main)
        call    do_work
        lock inc dword ptr [rip + aps_finished]
        cli
1:      hlt
        jmp     1b
END(ap_main)

/* do_work(edi = APIC ID): call smp_work WORK_CALLS times. */
FUNC(do_work)
        push    rbx
        push    r12
        mov     ebx, edi
        mov     r12d, WORK_CALLS
1:      mov     edi, ebx
        call    smp_work
        dec     r12d
        jnz     1b
        pop     r12
        pop     rbx
        ret
END(do_work)

/* smp_work(edi = APIC ID): bump this CPU's counter and the total. */
FUNC(smp_work)
        and     edi, WORK_SLOTS - 1
        lea     rax, [rip + work_count]
        lock inc qword ptr [rax + rdi * 8]
        lock inc qword ptr [rip + work_total]
        ret
END(smp_work)

        .section .rodata
msg_done:       .asciz "gdbtest-smp: done"

        .data
        .balign 8
DATA(work_total)        .quad 0
END(work_total)
DATA(aps_finished)      .long 0
END(aps_finished)
        .balign 8
DATA(work_count)        .space WORK_SLOTS * 8
END(work_count)
