/*
 * /init for minivmm's Linux initramfs: a static 32-bit program that prints one marker line
 *   minivmm-init: nproc=N cmdline=<the kernel command line>
 * and reboots (which ends minivmm with status 0). With `minivmm.shell` on the command line
 * it runs /bin/sh (busybox) instead, for an interactive initramfs shell.
 *
 * It is 32-bit and uses `int $0x80`, never `syscall`: some emulating nested-KVM hosts
 * mishandle the 64-bit `syscall` instruction from user mode (see HOST-KVM notes), while
 * 32-bit system calls go through the IDT like any interrupt.
 */
        .intel_syntax noprefix
        .code32

        .set SYS_read, 3
        .set SYS_write, 4
        .set SYS_open, 5
        .set SYS_execve, 11
        .set SYS_mount, 21
        .set SYS_reboot, 88
        .set SYS_sched_getaffinity, 242
        .set LINUX_REBOOT_MAGIC1, 0xfee1dead
        .set LINUX_REBOOT_MAGIC2, 672274793
        .set LINUX_REBOOT_CMD_RESTART, 0x01234567
        /* Defined before use: in Intel syntax a later-defined symbol reads as memory. */
        .set CMDLINE_MAX, 4096
        .set AFFINITY_BYTES, 128
        .set SHELL_WORD_LEN, 13

        .text
        .globl _start
_start:
        /* mount("proc", "/proc", "proc", 0, NULL) so /proc/cmdline can be read. */
        mov     eax, SYS_mount
        lea     ebx, str_proc
        lea     ecx, str_proc_dir
        lea     edx, str_proc
        xor     esi, esi
        xor     edi, edi
        int     0x80

        /* Read the command line; a failure leaves it empty. */
        mov     eax, SYS_open
        lea     ebx, str_cmdline_path
        xor     ecx, ecx
        int     0x80
        test    eax, eax
        js      1f
        mov     ebx, eax
        mov     eax, SYS_read
        lea     ecx, cmdline
        mov     edx, CMDLINE_MAX - 1
        int     0x80
        test    eax, eax
        js      1f
        mov     [cmdline_len], eax
1:
        /* Strip the trailing newline /proc/cmdline ends with. */
        mov     ecx, [cmdline_len]
        test    ecx, ecx
        jz      2f
        cmp     byte ptr [cmdline + ecx - 1], 10
        jne     2f
        dec     dword ptr [cmdline_len]
2:
        /* nproc: the CPUs init may run on, from sched_getaffinity(0). */
        mov     eax, SYS_sched_getaffinity
        xor     ebx, ebx
        mov     ecx, AFFINITY_BYTES
        lea     edx, affinity
        int     0x80
        xor     edi, edi                /* edi = number of set bits */
        test    eax, eax
        jle     4f
        mov     ecx, eax                /* bytes filled in */
        lea     esi, affinity
3:      movzx   eax, byte ptr [esi]
        inc     esi
5:      test    eax, eax
        jz      6f
        mov     edx, eax
        dec     edx
        and     eax, edx                /* clear the lowest set bit */
        inc     edi
        jmp     5b
6:      loop    3b
4:
        lea     ecx, str_marker
        call    puts
        mov     eax, edi
        call    put_decimal
        lea     ecx, str_cmdline
        call    puts
        mov     eax, SYS_write
        mov     ebx, 1
        lea     ecx, cmdline
        mov     edx, [cmdline_len]
        int     0x80
        lea     ecx, str_newline
        call    puts

        /* `minivmm.shell` on the command line: hand over to busybox sh. */
        lea     esi, cmdline
        mov     ecx, [cmdline_len]
7:      cmp     ecx, SHELL_WORD_LEN
        jb      reboot
        push    ecx
        push    esi
        lea     edi, str_shell_word
        mov     ecx, SHELL_WORD_LEN
        repe    cmpsb
        pop     esi
        pop     ecx
        je      run_shell
        inc     esi
        dec     ecx
        jmp     7b

run_shell:
        mov     eax, SYS_execve
        lea     ebx, str_sh
        lea     ecx, sh_argv
        lea     edx, sh_envp
        int     0x80
        lea     ecx, str_exec_failed
        call    puts

reboot:
        mov     eax, SYS_reboot
        mov     ebx, LINUX_REBOOT_MAGIC1
        mov     ecx, LINUX_REBOOT_MAGIC2
        mov     edx, LINUX_REBOOT_CMD_RESTART
        xor     esi, esi
        int     0x80
8:      jmp     8b

/* puts: write the NUL-terminated string at ecx to stdout. */
puts:
        mov     edx, ecx
9:      cmp     byte ptr [edx], 0
        je      10f
        inc     edx
        jmp     9b
10:     sub     edx, ecx
        mov     eax, SYS_write
        mov     ebx, 1
        int     0x80
        ret

/* put_decimal: write eax in decimal. */
put_decimal:
        lea     ecx, digits_end
        mov     ebx, 10
11:     xor     edx, edx
        div     ebx
        add     dl, '0'
        dec     ecx
        mov     [ecx], dl
        test    eax, eax
        jnz     11b
        lea     edx, digits_end
        sub     edx, ecx
        mov     eax, SYS_write
        mov     ebx, 1
        int     0x80
        ret

        .section .rodata
str_proc:           .asciz "proc"
str_proc_dir:       .asciz "/proc"
str_cmdline_path:   .asciz "/proc/cmdline"
str_marker:         .asciz "minivmm-init: nproc="
str_cmdline:        .asciz " cmdline="
str_newline:        .asciz "\n"
str_shell_word:     .ascii "minivmm.shell"
        .if (. - str_shell_word) != SHELL_WORD_LEN
        .error "SHELL_WORD_LEN does not match the string"
        .endif
str_sh:             .asciz "/bin/sh"
str_exec_failed:    .asciz "minivmm-init: cannot run /bin/sh, rebooting\n"
str_path:           .asciz "PATH=/bin:/sbin"
str_term:           .asciz "TERM=linux"

        .section .data
        .balign 4
sh_argv:            .long str_sh, 0
sh_envp:            .long str_path, str_term, 0
cmdline_len:        .long 0

        .section .bss
cmdline:            .skip CMDLINE_MAX
affinity:           .skip AFFINITY_BYTES
digits:             .skip 12
digits_end:
