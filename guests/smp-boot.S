/*
 * smp-boot.S - SMP bring-up shared by smp.elf and gdbtest-smp.elf.
 *
 * BSP side: smp_start() detects the CPU count, reports itself online, copies
 * the real-mode AP trampoline to 0x10000, sends INIT + 2x SIPI to all other
 * CPUs and waits until they are all online.
 *
 * AP side: real mode -> protected mode -> long mode in the trampoline (own
 * GDT, BSP's CR3), then ap_entry64 picks a 4 KiB stack from ap_stacks,
 * prints "cpu <apic id> online" under a spinlock, increments smp_aps_online
 * and calls the guest's ap_main(edi = APIC ID), which must not return.
 */
#include "defs.h"

#define TRAMPOLINE_BASE 0x10000
#define SIPI_VECTOR     (TRAMPOLINE_BASE >> 12)
#define MAX_APS         63
#define AP_STACK_SIZE   4096
#define INIT_DELAY      20000           /* pause iterations after INIT */
#define SIPI_DELAY      2000            /* pause iterations after SIPI */

/* physical address of a trampoline symbol once copied to TRAMPOLINE_BASE */
#define TR(sym)         (TRAMPOLINE_BASE + ((sym) - trampoline_start))

        .intel_syntax noprefix
        .code64
        .text

/* smp_cpu_count() -> eax: number of CPUs the VMM says we have (>= 1). */
FUNC(smp_cpu_count)
        push    rbx
        xor     eax, eax
        cpuid
        cmp     eax, 0xb
        jb      1f
        mov     eax, 0xb                /* topology leaf, core level */
        mov     ecx, 1
        cpuid
        movzx   eax, bx
        test    eax, eax
        jnz     2f
1:      mov     eax, 1                  /* CPUID.1:EBX[23:16] */
        cpuid
        mov     eax, ebx
        shr     eax, 16
        and     eax, 0xff
        jnz     2f
        mov     eax, 1
2:      cmp     eax, MAX_APS + 1
        jbe     3f
        mov     eax, MAX_APS + 1
3:      pop     rbx
        ret
END(smp_cpu_count)

/* smp_lock() / smp_unlock(): the console spinlock. Clobber eax only. */
FUNC(smp_lock)
1:      mov     eax, 1
        xchg    [rip + smp_print_lock], eax
        test    eax, eax
        jz      3f
2:      pause
        cmp     dword ptr [rip + smp_print_lock], 0
        jne     2b
        jmp     1b
3:      ret
END(smp_lock)

FUNC(smp_unlock)
        mov     dword ptr [rip + smp_print_lock], 0
        ret
END(smp_unlock)

/* smp_print_online(edi = APIC ID): "cpu <id> online", under the lock. */
FUNC(smp_print_online)
        push    rbx
        mov     ebx, edi
        call    smp_lock
        lea     rdi, [rip + msg_cpu]
        call    serial_puts
        mov     edi, ebx
        call    serial_putdec
        lea     rdi, [rip + msg_online]
        call    serial_putline
        call    smp_unlock
        pop     rbx
        ret
END(smp_print_online)

/* smp_delay(ecx = iterations) */
FUNC(smp_delay)
1:      pause
        dec     ecx
        jnz     1b
        ret
END(smp_delay)

/* lapic_send_ipi(rbx = LAPIC base, eax = ICR low): send, wait for idle. */
FUNC(lapic_send_ipi)
        mov     dword ptr [rbx + LAPIC_ICR_HI], 0
        mov     [rbx + LAPIC_ICR_LO], eax
1:      pause
        test    dword ptr [rbx + LAPIC_ICR_LO], ICR_BUSY
        jnz     1b
        ret
END(lapic_send_ipi)

/* smp_start() -> eax = number of CPUs, all of them online. BSP only. */
FUNC(smp_start)
        push    rbx
        push    r12
        call    smp_cpu_count
        mov     r12d, eax
        mov     [rip + smp_ncpus], eax

        lea     rdi, [rip + msg_expect]
        call    serial_puts
        mov     edi, r12d
        call    serial_putdec
        lea     rdi, [rip + msg_cpus]
        call    serial_putline

        call    cpu_apic_id
        mov     edi, eax
        call    smp_print_online

        cmp     r12d, 1
        jbe     2f

        /* trampoline -> 0x10000, then patch CR3 and the 64-bit target */
        lea     rsi, [rip + trampoline_start]
        mov     edi, TRAMPOLINE_BASE
        mov     ecx, trampoline_end - trampoline_start
        rep movsb
        mov     rax, cr3
        mov     [TR(tr_cr3)], eax
        lea     rax, [rip + ap_entry64]
        mov     [TR(tr_target)], rax

        /* software-enable the local APIC, then INIT, SIPI, SIPI */
        mov     ebx, LAPIC_BASE
        mov     dword ptr [rbx + LAPIC_SVR], 0x1ff
        mov     eax, ICR_INIT_ALL_BUT_SELF
        call    lapic_send_ipi
        mov     ecx, INIT_DELAY
        call    smp_delay
        mov     eax, ICR_SIPI_ALL_BUT_SELF | SIPI_VECTOR
        call    lapic_send_ipi
        mov     ecx, SIPI_DELAY
        call    smp_delay
        mov     eax, ICR_SIPI_ALL_BUT_SELF | SIPI_VECTOR
        call    lapic_send_ipi

        /* wait for the N-1 APs */
        lea     eax, [r12d - 1]
1:      pause
        cmp     [rip + smp_aps_online], eax
        jb      1b

2:      call    smp_lock
        lea     rdi, [rip + msg_all]
        call    serial_puts
        mov     edi, r12d
        call    serial_putdec
        lea     rdi, [rip + msg_cpus_online]
        call    serial_putline
        call    smp_unlock

        mov     eax, r12d
        pop     r12
        pop     rbx
        ret
END(smp_start)

/* APs arrive here from the trampoline, in long mode, without a stack. */
FUNC(ap_entry64)
        mov     eax, 1
        lock xadd [rip + smp_ap_next], eax
        cmp     eax, MAX_APS
        jae     ap_park
        inc     eax
        shl     eax, 12                 /* (index + 1) * AP_STACK_SIZE */
        lea     rsp, [rip + ap_stacks]
        add     rsp, rax

        call    cpu_apic_id
        mov     ebx, eax
        mov     edi, eax
        call    smp_print_online
        lock inc dword ptr [rip + smp_aps_online]
        mov     edi, ebx
        call    ap_main
ap_park:
        cli
1:      hlt
        jmp     1b
END(ap_entry64)

/*
 * The AP trampoline: copied to TRAMPOLINE_BASE, entered by SIPI vector 0x10
 * in real mode with cs = 0x1000, ip = 0.  Position-dependent only through
 * TR(), which yields the addresses of the copy.
 */
        .balign 16
trampoline_start:
        .code16
        cli
        cld
        mov     ax, cs
        mov     ds, ax
        lgdt    [tr_gdtr - trampoline_start]
        mov     eax, cr0
        or      eax, CR0_PE
        mov     cr0, eax
        .byte   0x66, 0xea              /* ljmpl 0x08:tr_pm32 */
        .long   TR(tr_pm32)
        .word   0x08

        .code32
tr_pm32:
        mov     ax, KERNEL_DS
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     eax, cr4
        or      eax, CR4_PAE
        mov     cr4, eax
        mov     eax, [TR(tr_cr3)]
        mov     cr3, eax
        mov     ecx, MSR_EFER
        rdmsr
        or      eax, EFER_LME
        wrmsr
        mov     eax, cr0
        or      eax, CR0_PG | CR0_PE
        mov     cr0, eax
        .byte   0xea                    /* ljmp KERNEL_CS:tr_lm64 */
        .long   TR(tr_lm64)
        .word   KERNEL_CS

        .code64
tr_lm64:
        mov     ax, KERNEL_DS
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     rax, [TR(tr_target)]
        jmp     rax

        .balign 8
tr_gdt:
        .quad   0
        .quad   0x00cf9a000000ffff      /* 0x08: 32-bit code */
        .quad   0x00af9a000000ffff      /* 0x10: 64-bit code */
        .quad   0x00cf92000000ffff      /* 0x18: data */
tr_gdtr:
        .word   4 * 8 - 1
        .long   TR(tr_gdt)
        .balign 8
tr_cr3:
        .long   0                       /* BSP's CR3, patched in the copy */
        .long   0
tr_target:
        .quad   0                       /* &ap_entry64, patched in the copy */
trampoline_end:

        .section .rodata
msg_expect:     .asciz "smp: expecting "
msg_cpus:       .asciz " cpus"
msg_all:        .asciz "smp: all "
msg_cpus_online: .asciz " cpus online"
msg_cpu:        .asciz "cpu "
msg_online:     .asciz " online"

        .data
        .balign 8
DATA(smp_ncpus)         .long 0
END(smp_ncpus)
DATA(smp_aps_online)    .long 0
END(smp_aps_online)
DATA(smp_ap_next)       .long 0
END(smp_ap_next)
DATA(smp_print_lock)    .long 0
END(smp_print_lock)

        .bss
        .balign 4096
DATA(ap_stacks)
        .space  MAX_APS * AP_STACK_SIZE
END(ap_stacks)
