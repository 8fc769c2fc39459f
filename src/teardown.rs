//! The host kernel's VM teardown, off minivmm's exit path.
//!
//! Closing the last reference to a KVM VM makes the host kernel destroy it there and then, and
//! most of that is waiting: the in-kernel PIT unregisters two interrupt notifiers, each
//! followed by an SRCU grace period (several scheduler ticks), and the guest RAM's pages are
//! unmapped. A CI job that runs minivmm thousands of times waits for that every time, after the
//! guest is long done. So minivmm does what QEMU's `-run-with async-teardown=on` does: a
//! child process that shares minivmm's address space (clone with CLONE_VM, so nothing is
//! copied) takes a copy of the VM's file descriptor, closes every other descriptor (stdout
//! and stderr pipes must see EOF when minivmm exits, not when the keeper does), and waits
//! until minivmm has exited. The last references to the VM (its fd, and the address space
//! with guest RAM and the vCPUs' kvm_run mappings) are then the keeper's, and the kernel tears
//! the VM down as the keeper exits. minivmm's exit status is the guest's and is delivered at
//! once; the keeper is reparented to init (or the caller's subreaper), which reaps it.
//!
//! Unlike QEMU's keeper, which is cloned at start-up before any VM exists and so keeps only
//! the address space, this one is cloned at the end with the VM's fd: the PIT's grace
//! periods, the slow part here, are deferred too.

use std::os::fd::{AsRawFd, RawFd};

use kvm_ioctls::VmFd;
use log::debug;
use thiserror::Error;

use crate::memory::GuestMem;

/// The keeper's name in `ps` (15 characters at most).
const KEEPER_NAME: &[u8] = b"minivmm-cleanup\0";
/// The keeper's stack: it calls a handful of system calls and nothing else.
const KEEPER_STACK: usize = 64 * 1024;

/// How minivmm lets go of the VM at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teardown {
    /// Hand the VM to a keeper process and return at once (the default).
    Background,
    /// Close the VM here and wait for the host kernel to destroy it.
    Wait,
}

#[derive(Debug, Error)]
pub enum TeardownError {
    #[error("pipe for the teardown keeper: {0}")]
    Pipe(std::io::Error),
    #[error("stack for the teardown keeper: {0}")]
    Stack(std::io::Error),
    #[error("clone of the teardown keeper: {0}")]
    Clone(std::io::Error),
}

/// Lets go of the VM: in `Background` mode a keeper process inherits it and this returns
/// without waiting for the host kernel; otherwise (or if the keeper cannot be started) the VM
/// is destroyed here.
pub fn release(vm: VmFd, mem: GuestMem, mode: Teardown) {
    if mode == Teardown::Background {
        match spawn_keeper(vm.as_raw_fd()) {
            Ok(pid) => {
                debug!("VM teardown left to process {pid}");
                // Guest RAM stays mapped: the address space is the keeper's too, and
                // unmapping it is part of the work the keeper does at its exit.
                std::mem::forget(mem);
                // Closing this copy only drops a reference: the keeper holds another.
                drop(vm);
                return;
            }
            Err(e) => debug!("VM teardown in the foreground: {e}"),
        }
    }
    drop(vm);
    drop(mem);
}

/// What the keeper is told. Lives on the keeper's own stack mapping, which nothing unmaps
/// before the address space itself goes.
#[repr(C)]
struct KeeperArgs {
    vm_fd: RawFd,
    /// Read end of a pipe whose only write end is minivmm's: EOF once minivmm has exited.
    wait_fd: RawFd,
    /// Write end of a pipe minivmm reads until EOF: closed once the keeper holds nothing else.
    ready_fd: RawFd,
}

/// Clones the keeper and waits until it has closed every fd but the VM's; returns its pid.
fn spawn_keeper(vm_fd: RawFd) -> Result<libc::pid_t, TeardownError> {
    let [wait_fd, wait_write] = pipe()?;
    let ready = pipe();
    let result = ready.and_then(|[ready_read, ready_fd]| {
        let pid = clone_keeper(KeeperArgs {
            vm_fd,
            wait_fd,
            ready_fd,
        });
        // SAFETY: our copy of the ready pipe's write end; the keeper has its own.
        unsafe { libc::close(ready_fd) };
        if pid.is_ok() {
            // EOF once the keeper has closed its copy, which it does last: from then on it
            // holds nothing of the caller's (a pipe on minivmm's stdout sees EOF when
            // minivmm exits, not when the keeper gets round to it).
            let mut byte = 0u8;
            // SAFETY: reads into a local byte from our own pipe.
            while unsafe { libc::read(ready_read, (&raw mut byte).cast(), 1) } > 0 {}
        }
        // SAFETY: our read end, used only above.
        unsafe { libc::close(ready_read) };
        pid
    });
    // SAFETY: our copy of the wait pipe's read end, which nothing here uses. The write end is
    // kept open on purpose until minivmm exits: its closing is the keeper's signal. It is
    // close-on-exec, and minivmm starts no other processes.
    unsafe { libc::close(wait_fd) };
    if result.is_err() {
        // SAFETY: no keeper holds the pipe; the write end is ours alone.
        unsafe { libc::close(wait_write) };
    }
    result
}

/// A close-on-exec pipe: [read end, write end].
fn pipe() -> Result<[RawFd; 2], TeardownError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(TeardownError::Pipe(std::io::Error::last_os_error()));
    }
    Ok(fds)
}

fn clone_keeper(keeper_args: KeeperArgs) -> Result<libc::pid_t, TeardownError> {
    // SAFETY: a fresh private anonymous mapping; checked for MAP_FAILED below.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            KEEPER_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(TeardownError::Stack(std::io::Error::last_os_error()));
    }
    let args = stack.cast::<KeeperArgs>();
    // SAFETY: the mapping is KEEPER_STACK bytes, page-aligned, and writable; the arguments
    // take its lowest bytes, the stack grows down from its top.
    unsafe { args.write(keeper_args) };
    // SAFETY: KEEPER_STACK is a multiple of 16, so the top is aligned as the ABI wants.
    let top = unsafe { stack.cast::<u8>().add(KEEPER_STACK) }.cast::<libc::c_void>();

    // Every signal blocked while cloning, and so in the keeper for good (it inherits the
    // mask): Ctrl-C or a SIGTERM to minivmm's process group must not end the keeper early
    // (harmless, but then the teardown is back on someone's clock) or run a handler of
    // minivmm's on the keeper's stack. SIGKILL still ends it, and its exit still tears down.
    // SAFETY: plain signal-mask manipulation on locals.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    // SAFETY: `keeper` runs on its own stack mapping, which is never unmapped while the
    // address space lives; it touches only its arguments there and makes raw system calls
    // (no allocation, no locks shared with minivmm's threads). CLONE_VM shares the address
    // space without copying it; the fd table is copied (no CLONE_FILES), so the keeper can
    // close what it must not hold without touching minivmm's. SIGCHLD makes it an ordinary
    // child for whoever reaps it.
    let pid = unsafe {
        libc::clone(
            keeper,
            top,
            libc::CLONE_VM | libc::SIGCHLD,
            args.cast::<libc::c_void>(),
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: restores this thread's mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        // SAFETY: no keeper uses the stack: it was never started.
        unsafe { libc::munmap(stack, KEEPER_STACK) };
        return Err(TeardownError::Clone(err));
    }
    Ok(pid)
}

/// The keeper: holds the VM's fd until minivmm has exited, then exits itself, which makes the
/// host kernel destroy the VM. Only raw system calls here: it shares minivmm's memory while
/// minivmm's threads still run.
extern "C" fn keeper(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at the KeeperArgs written before the clone, on this process's
    // own stack mapping.
    let KeeperArgs {
        vm_fd,
        wait_fd,
        ready_fd,
    } = unsafe { arg.cast::<KeeperArgs>().read() };
    // SAFETY: raw system calls on this process's own fd table and name; errors are ignored
    // (there is nobody to tell, and each step only makes the keeper hold less).
    unsafe {
        libc::prctl(libc::PR_SET_NAME, KEEPER_NAME.as_ptr());
        close_all_but(&mut [vm_fd, wait_fd, ready_fd]);
        libc::close(ready_fd);
        // Returns 0 (EOF) when minivmm's last copy of the write end goes, that is when it
        // has exited; any error also ends the wait.
        let mut byte = 0u8;
        while libc::read(wait_fd, (&raw mut byte).cast(), 1) > 0 {}
    }
    0
}

/// Closes every fd but `keep` (sorted here), with close_range where the kernel has it.
///
/// # Safety
/// Closes fds behind the back of whatever owns them: only for the keeper's own fd table.
unsafe fn close_all_but(keep: &mut [RawFd; 3]) {
    keep.sort_unstable();
    let mut from: libc::c_uint = 0;
    for &fd in keep.iter() {
        let fd = fd as libc::c_uint;
        if fd > from {
            // SAFETY: see the function's contract.
            unsafe { close_range(from, fd - 1) };
        }
        from = fd + 1;
    }
    // SAFETY: see the function's contract.
    unsafe { close_range(from, libc::c_uint::MAX) };
}

/// # Safety
/// As `close_all_but`.
unsafe fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: close_range (Linux 5.9+) takes plain integers.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if r == 0 {
        return;
    }
    // Older kernels: close one by one up to the fd limit.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 16) as libc::c_uint
    } else {
        1024
    };
    for fd in first..=last.min(limit.saturating_sub(1)) {
        // SAFETY: see the function's contract.
        unsafe { libc::close(fd as RawFd) };
    }
}
