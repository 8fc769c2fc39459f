//! One thread per vCPU. The thread owns its `VcpuFd`; everyone else talks to it through a
//! `VcpuControl` channel and a kick (a signal that makes KVM_RUN return), so vCPU state is
//! only ever touched by its own thread, and only while the vCPU is not running.
//!
//! `exit` turns each KVM exit into what the loop does next; `debug` serves the debugger's
//! requests while the vCPU is paused.

mod debug;
pub mod exit;

use std::cell::Cell;
use std::ptr::null_mut;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::{self, JoinHandle};

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;
use log::{debug, error};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::arch::VcpuOps;
use crate::arch::coredump::CpuSnapshot;
use crate::arch::debug::{DebugError, DebugStop};
use crate::arch::exits::DebugTraps;
use crate::devices::PioBus;
use crate::memory::GuestMem;
use crate::vm_control::{DebugChannel, KernelMapWatch, VcpuControl, VcpuDebugStatus, VmEvent};
use exit::{ExitContext, Next, handle_kvm_exit};

/// The signal that kicks a vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

thread_local! {
    /// This thread's kvm_run page, for the kick handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(null_mut()) };
    /// This thread's vCPU index, for devices that report which vCPU wrote to them.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the vCPU running on this thread, if it is a vCPU thread. Devices run on the
/// vCPU thread that accesses them, so this names the vCPU behind a port access.
pub fn current_index() -> Option<usize> {
    INDEX.with(Cell::get)
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Setting immediate_exit closes the race where the kick lands just before KVM_RUN: the
    // next KVM_RUN returns at once instead of sleeping in a halted guest.
    let run = KVM_RUN.with(|p| p.get());
    if !run.is_null() {
        // SAFETY: the pointer is this thread's kvm_run mapping, set while its VcpuFd lives
        // and cleared before it is dropped; a byte store is async-signal-safe.
        unsafe { (*run).immediate_exit = 1 };
    }
}

/// Installs the kick handler; once per process, before any vCPU thread starts.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), kick_handler)
}

/// What the rest of the VMM holds for each vCPU.
pub struct VcpuHandle {
    pub index: usize,
    control: Sender<VcpuControl>,
    /// Set by the vCPU thread while it is paused (blocked on its channel, out of KVM_RUN).
    paused: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    /// Sends a request and kicks the thread so it is served promptly. A paused thread is
    /// waiting on its channel already and needs no kick; a running one checks its channel
    /// before every KVM_RUN, so a request is never left behind a sleeping guest.
    pub fn send(&self, msg: VcpuControl) {
        if self.control.send(msg).is_ok() && !self.paused.load(Ordering::SeqCst) {
            self.kick();
        }
    }

    fn kick(&self) {
        if let Some(t) = &self.thread
            && let Err(e) = t.kill(kick_signal())
        {
            debug!("vCPU {}: kick failed: {e}", self.index);
        }
    }

    /// A sender for debug requests (which need no kick: they are served while paused).
    pub fn control_sender(&self) -> Sender<VcpuControl> {
        self.control.clone()
    }

    /// Waits for the thread to end.
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            error!("vCPU {} thread panicked", self.index);
        }
    }
}

/// Everything a vCPU thread needs.
pub struct Vcpu {
    pub index: usize,
    pub fd: VcpuFd,
    pub pio: PioBus,
    pub mem: GuestMem,
    pub events: Sender<VmEvent>,
    /// Present when a debugger may attach.
    pub debug: Option<DebugChannel>,
    /// The host supports KVM_GUESTDBG_BLOCKIRQ.
    pub block_irq_when_stepping: bool,
    /// The host can copy registers into kvm_run at exits (KVM_CAP_SYNC_REGS).
    pub host_syncs_regs: bool,
    /// Where the Linux kernel maps itself is watched for the debugger.
    pub kernel_map_watch: Option<Arc<KernelMapWatch>>,
}

/// The vCPU's debugging state, owned by its thread.
#[derive(Default)]
struct DebugState {
    /// What exit handling must trap on and remember.
    traps: DebugTraps,
    /// KVM copies the registers into kvm_run at every exit (see `set_guest_debug`).
    synced_regs: bool,
    /// Stop notifications sent to the debugger, for `Resume`.
    stops_sent: u64,
}

impl Vcpu {
    /// Starts the thread. `paused` keeps it from running the guest until `Resume`.
    pub fn spawn(self, paused: bool) -> std::io::Result<VcpuHandle> {
        let (tx, rx) = channel();
        let index = self.index;
        let paused = Arc::new(AtomicBool::new(paused));
        let flag = paused.clone();
        let thread = thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || self.thread_main(rx, &flag))?;
        Ok(VcpuHandle {
            index,
            control: tx,
            paused,
            thread: Some(thread),
        })
    }

    fn thread_main(mut self, control: Receiver<VcpuControl>, paused: &AtomicBool) {
        KVM_RUN.with(|p| p.set(self.fd.get_kvm_run() as *mut kvm_run));
        INDEX.with(|i| i.set(Some(self.index)));
        let mut debug = DebugState::default();
        self.run_loop(&control, paused, &mut debug);
        KVM_RUN.with(|p| p.set(null_mut()));
    }

    fn run_loop(
        &mut self,
        control: &Receiver<VcpuControl>,
        paused: &AtomicBool,
        debug: &mut DebugState,
    ) {
        loop {
            // Serve what arrived; while paused, wait for the next request instead of running.
            let msg = if paused.load(Ordering::SeqCst) {
                match control.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                }
            } else {
                match control.try_recv() {
                    Ok(m) => Some(m),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                }
            };
            if let Some(msg) = msg {
                match msg {
                    VcpuControl::Pause => {
                        if !paused.load(Ordering::SeqCst) {
                            self.complete_pending_exit();
                            paused.store(true, Ordering::SeqCst);
                        }
                    }
                    VcpuControl::Resume => paused.store(false, Ordering::SeqCst),
                    VcpuControl::Exit => return,
                    VcpuControl::Snapshot(reply) => {
                        if !paused.load(Ordering::SeqCst) {
                            self.complete_pending_exit();
                            paused.store(true, Ordering::SeqCst);
                        }
                        let state = CpuSnapshot::capture(&self.fd);
                        let _ = reply.send((self.index, state));
                    }
                    VcpuControl::Debug(req) => {
                        let answer = if paused.load(Ordering::SeqCst) {
                            self.vcpu_control_debug(req, debug, paused)
                        } else {
                            VcpuDebugStatus::Error(DebugError::Running)
                        };
                        if let Some(ch) = &self.debug {
                            ch.send(self.index, answer);
                        }
                    }
                }
                continue;
            }
            let ctx = ExitContext {
                cpu: self.index,
                pio: &self.pio,
                mem: &self.mem,
                kernel_map_watch: self.kernel_map_watch.as_deref(),
            };
            match handle_kvm_exit(&mut self.fd, &ctx, &mut debug.traps) {
                Next::Continue => {}
                Next::DebugStop(stop) => {
                    if let DebugStop::KernelMapped { .. } = stop {
                        // Finish the WRMSR first: GDB then sees the vCPU past it.
                        self.complete_pending_exit();
                    }
                    paused.store(true, Ordering::SeqCst);
                    self.vcpu_exit_debug(stop, debug);
                }
                Next::Stop(fault) => {
                    let _ = self.events.send(VmEvent::VcpuStopped {
                        cpu: self.index,
                        fault,
                    });
                    // Stay around (paused) so the VMM can still ask for an orderly exit.
                    paused.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    /// Lets KVM finish an I/O or MMIO exit we already answered, so the registers a debugger
    /// reads next are the ones after the instruction.
    fn complete_pending_exit(&mut self) {
        self.fd.set_immediate_exit(true);
        let _ = VcpuOps::run(&mut self.fd);
        self.fd.set_immediate_exit(false);
    }
}
