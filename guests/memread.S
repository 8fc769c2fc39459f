/*
 * memread.S - memory for debuggers to read, as a kernel lays it out: long mode, its own page
 * tables, data reached through a high-half direct map (Linux's page_offset_base,
 * 0xffff888000000000 -> physical 0). For scripts/bench.py's memory-read benchmark, the same
 * under minivmm and QEMU (qemu-pvh/memread.elf).
 *
 * Fills MEMREAD_SIZE bytes at physical MEMREAD_DATA with a 64-bit LCG (non-repeating: no
 * run-length encoding helps), leaves the MEMREAD_SIZE bytes after them zero, prints
 * "memread: ready" and halts with interrupts off. Needs at least 64 MiB of guest RAM.
 *   x(0) = MEMREAD_SEED, x(n+1) = x(n) * LCG_MUL + LCG_INC (mod 2^64), qword n = x(n+1)
 */
#include "defs.h"

#define DIRECT_MAP      0xffff888000000000
#define MEMREAD_DATA    0x1000000               /* 16 MiB */
#define MEMREAD_SIZE    0x1000000               /* 16 MiB of data, then 16 MiB of zeros */
#define MEMREAD_SEED    0x9e3779b97f4a7c15
#define LCG_MUL         6364136223846793005
#define LCG_INC         1442695040888963407
#define PML4_DIRECT     ((DIRECT_MAP >> 39) & 511)

        .intel_syntax noprefix
        .code64
        .text

FUNC(_start)
        /* One page directory of 2 MiB pages maps the first GiB; one PDPT points at it, from
         * PML4 entry 0 (identity: this code keeps running) and the direct map's entry. */
        lea     rdi, [rip + memread_pd]
        mov     eax, 0x83                       /* present, writable, 2 MiB page */
        xor     ecx, ecx
1:      mov     [rdi + rcx * 8], rax
        add     rax, 0x200000
        inc     ecx
        cmp     ecx, 512
        jne     1b
        lea     rax, [rip + memread_pd]
        or      rax, 3
        mov     [rip + memread_pdpt], rax
        lea     rax, [rip + memread_pdpt]
        or      rax, 3
        mov     [rip + memread_pml4], rax
        mov     [rip + memread_pml4 + PML4_DIRECT * 8], rax
        lea     rax, [rip + memread_pml4]
        mov     cr3, rax

        /* The data, written through the direct map, 8 qwords per iteration. */
        movabs  rdi, DIRECT_MAP + MEMREAD_DATA
        mov     ecx, MEMREAD_SIZE / 64
        movabs  rax, MEMREAD_SEED
        movabs  rbx, LCG_MUL
        movabs  rdx, LCG_INC
FUNC(memread_fill)
        .irp    off, 0, 8, 16, 24, 32, 40, 48, 56
        imul    rax, rbx
        add     rax, rdx
        mov     [rdi + \off], rax
        .endr
        add     rdi, 64
        dec     ecx
        jnz     memread_fill
END(memread_fill)

        lea     rdi, [rip + msg_ready]
        call    serial_putline
        cli
FUNC(memread_idle)
        hlt
        jmp     memread_idle
END(memread_idle)
END(_start)

        .section .rodata
msg_ready:      .asciz "memread: ready"

        .bss
        .balign 4096
DATA(memread_pml4)
        .skip   4096
END(memread_pml4)
DATA(memread_pdpt)
        .skip   4096
END(memread_pdpt)
DATA(memread_pd)
        .skip   4096
END(memread_pd)
