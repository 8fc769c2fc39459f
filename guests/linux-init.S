/*
 * /init for minivmm's Linux initramfs: a static 32-bit program that prints one marker line
 *   minivmm-init: nproc=N cmdline=<the kernel command line>
 * and reboots (which ends minivmm with status 0); with `minivmm.poweroff` on the command line
 * it powers off instead. With `minivmm.shell` it runs /bin/sh (busybox) for an interactive
 * initramfs shell and stays PID 1, as an init does: busybox `reboot` and `poweroff` signal
 * PID 1 (SIGTERM, SIGUSR2), which then reboots or powers off; so does the shell's end.
 *
 * It is 32-bit and uses `int $0x80`, never `syscall`: some emulating nested-KVM hosts
 * mishandle the 64-bit `syscall` instruction from user mode (see HOST-KVM notes), while
 * 32-bit system calls go through the IDT like any interrupt.
 */
        .intel_syntax noprefix
        .code32

        .set SYS_fork, 2
        .set SYS_read, 3
        .set SYS_write, 4
        .set SYS_open, 5
        .set SYS_waitpid, 7
        .set SYS_execve, 11
        .set SYS_mount, 21
        .set SYS_signal, 48
        .set SYS_reboot, 88
        .set SYS_sched_getaffinity, 242
        .set LINUX_REBOOT_MAGIC1, 0xfee1dead
        .set LINUX_REBOOT_MAGIC2, 672274793
        .set LINUX_REBOOT_CMD_RESTART, 0x01234567
        .set LINUX_REBOOT_CMD_POWER_OFF, 0x4321fedc
        .set SIGTERM, 15
        .set SIGUSR2, 12
        /* Defined before use: in Intel syntax a later-defined symbol reads as memory. */
        .set CMDLINE_MAX, 4096
        .set AFFINITY_BYTES, 128
        .set SHELL_WORD_LEN, 13
        .set POWEROFF_WORD_LEN, 16

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

        lea     edi, str_shell_word
        mov     edx, SHELL_WORD_LEN
        call    has_word
        jnz     run_shell
        lea     edi, str_poweroff_word
        mov     edx, POWEROFF_WORD_LEN
        call    has_word
        jnz     poweroff
        jmp     reboot

run_shell:
        /* Handlers first: a `reboot` typed at once must not find PID 1 ignoring it. */
        mov     eax, SYS_signal
        mov     ebx, SIGTERM
        lea     ecx, reboot
        int     0x80
        mov     eax, SYS_signal
        mov     ebx, SIGUSR2
        lea     ecx, poweroff
        int     0x80
        mov     eax, SYS_fork
        int     0x80
        test    eax, eax
        js      exec_failed
        jz      exec_shell
        mov     [shell_pid], eax
        /* Reap orphans until the shell itself ends (or a signal ends init first). */
12:     mov     eax, SYS_waitpid
        mov     ebx, -1
        xor     ecx, ecx
        xor     edx, edx
        int     0x80
        cmp     eax, -4                 /* -EINTR */
        je      12b
        test    eax, eax
        js      reboot                  /* no children left */
        cmp     eax, [shell_pid]
        jne     12b
        lea     ecx, str_shell_ended
        call    puts
        jmp     reboot

exec_shell:
        /* The child: execve resets the handlers, so the shell gets the default ones. */
        mov     eax, SYS_execve
        lea     ebx, str_sh
        lea     ecx, sh_argv
        lea     edx, sh_envp
        int     0x80
exec_failed:
        lea     ecx, str_exec_failed
        call    puts

/* Also the SIGTERM handler: it never returns, so it needs no sigreturn. */
reboot:
        mov     edx, LINUX_REBOOT_CMD_RESTART
        jmp     13f
/* Also the SIGUSR2 handler. */
poweroff:
        mov     edx, LINUX_REBOOT_CMD_POWER_OFF
13:     mov     eax, SYS_reboot
        mov     ebx, LINUX_REBOOT_MAGIC1
        mov     ecx, LINUX_REBOOT_MAGIC2
        xor     esi, esi
        int     0x80
8:      jmp     8b

/* has_word: ZF clear (jnz) if the command line contains the edx bytes at edi. */
has_word:
        lea     esi, cmdline
        mov     ecx, [cmdline_len]
7:      cmp     ecx, edx
        jb      14f
        push    ecx
        push    esi
        push    edi
        mov     ecx, edx
        repe    cmpsb
        pop     edi
        pop     esi
        pop     ecx
        je      15f
        inc     esi
        dec     ecx
        jmp     7b
14:     xor     eax, eax                /* sets ZF: not found */
        ret
15:     or      eax, 1                  /* clears ZF: found */
        ret

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
str_poweroff_word:  .ascii "minivmm.poweroff"
        .if (. - str_poweroff_word) != POWEROFF_WORD_LEN
        .error "POWEROFF_WORD_LEN does not match the string"
        .endif
str_sh:             .asciz "/bin/sh"
str_exec_failed:    .asciz "minivmm-init: cannot run /bin/sh, rebooting\n"
str_shell_ended:    .asciz "minivmm-init: the shell ended, rebooting\n"
str_path:           .asciz "PATH=/bin:/sbin"
str_term:           .asciz "TERM=linux"

        .section .data
        .balign 4
sh_argv:            .long str_sh, 0
sh_envp:            .long str_path, str_term, 0
cmdline_len:        .long 0
shell_pid:          .long 0

        .section .bss
cmdline:            .skip CMDLINE_MAX
affinity:           .skip AFFINITY_BYTES
digits:             .skip 12
digits_end:
