/*
 * smp.S - SMP bring-up test: all CPUs come online, then the BSP resets.
 */
#include "defs.h"

        .intel_syntax noprefix
        .code64
        .text

FUNC(_start)
        call    smp_start
        jmp     i8042_reset
END(_start)

/* ap_main(edi = APIC ID): APs have nothing more to do. */
FUNC(ap_main)
        cli
1:      hlt
        jmp     1b
END(ap_main)
