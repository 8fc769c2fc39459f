//! One thread per vCPU. The thread owns its `VcpuFd`; everyone else talks to it through a
//! `VcpuControl` channel and a kick (a signal that makes KVM_RUN return), so vCPU state is
//! only ever touched by its own thread, and only while the vCPU is not running.

use std::cell::Cell;
use std::ptr::null_mut;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::{self, JoinHandle};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{debug, error, warn};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::arch::assist;
use crate::arch::debug::{
    self as archdebug, AddressSpace, DebugConfig, DebugExit, DebugStop, SoftWatch, StopState,
};
use crate::arch::debugreg::{HwBreakKind, HwSlot, NUM_SLOTS};
use crate::arch::gdb::X86_64KvmRegs;
use crate::arch::paging::Translation;
use crate::devices::PioBus;
use crate::memory::GuestMem;
use crate::vmm::VmEvent;

/// Requests a vCPU thread serves between runs.
#[derive(Debug)]
pub enum VcpuControl {
    /// Stop running the guest until `Resume` (or the debugger's `VcpuDebug::Resume`).
    Pause,
    /// Run again.
    Resume,
    /// Leave the thread.
    Exit,
    /// A debugger request, served only while paused; answered on the debug channel.
    Debug(VcpuDebug),
}

/// Debugger requests to one vCPU. Memory reads, GDB's most frequent request, need none: the
/// GDB thread reads guest RAM itself through the paging registers the vCPU reported with its
/// stop (`StopState`). Writes come here, so they follow the requests posted before them.
#[derive(Debug)]
pub enum VcpuDebug {
    /// Run again (GDB's `continue` or `step` for this vCPU), unless this vCPU sent stops the
    /// debugger has not received yet (it has `stops_received` of them): such a stop is on its
    /// way and will be reported, so the vCPU must still be standing on it.
    Resume {
        stops_received: u64,
    },
    ReadRegs,
    /// Just where the vCPU is and its paging registers (cheaper than `ReadRegs`).
    ReadStopState,
    WriteRegs(Box<X86_64KvmRegs>),
    WriteMem(u64, Vec<u8>, AddressSpace),
    /// Step one instruction on the next resume (`true`) or run freely (`false`).
    EnableSinglestep(bool),
    /// Hardware breakpoints and watchpoints, one per debug register.
    SetHwBreakPoint([Option<HwSlot>; NUM_SLOTS]),
    /// Linear addresses of the software breakpoints the debugger planted.
    SetSwBreakPoints(Vec<u64>),
    /// Write watchpoints (address, length) emulated by single-stepping, for hosts whose data
    /// breakpoints never fire.
    SetSoftWatchpoints(Vec<(u64, usize)>),
    /// Walk the page tables for a virtual address.
    Translate(u64),
    /// Control, segment, descriptor-table and debug registers as text.
    DescribeSystemRegs,
}

/// Answers (and unrequested stop notifications) from a vCPU to the debugger.
#[derive(Debug)]
pub enum VcpuDebugStatus {
    RegValues(Box<X86_64KvmRegs>),
    StopState(StopState),
    CommandComplete,
    Translation(Result<Translation, String>),
    Text(String),
    Error(String),
    /// The vCPU stopped on its own for the debugger (breakpoint, step, watchpoint) and has
    /// paused itself. What GDB needs at every stop comes along (None if it could not be
    /// read), so that the debugger need not ask.
    Stopped {
        stop: DebugStop,
        state: Option<StopState>,
    },
    /// The VM ended while the debugger was attached: GDB gets a `W` (exit status) or an `X`
    /// (signal) reply.
    VmEnded(VmEnd),
}

/// How the VM ended, in GDB's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmEnd {
    Exited(u8),
    /// minivmm was killed by this signal.
    Signalled(u8),
}

#[derive(Debug)]
pub struct VcpuDebugStatusMessage {
    pub cpu: usize,
    pub msg: VcpuDebugStatus,
}

/// The channel to the debugger, with an eventfd so the GDB thread can wait on it together
/// with its socket instead of polling.
#[derive(Clone)]
pub struct DebugChannel {
    tx: Sender<VcpuDebugStatusMessage>,
    wake: Arc<EventFd>,
}

impl DebugChannel {
    pub fn new(tx: Sender<VcpuDebugStatusMessage>, wake: Arc<EventFd>) -> Self {
        DebugChannel { tx, wake }
    }

    pub fn send(&self, cpu: usize, msg: VcpuDebugStatus) {
        // Answers are awaited on the channel itself; only notifications can arrive while the
        // GDB thread sleeps in poll(2), so only they cost an eventfd write.
        let notify = matches!(
            msg,
            VcpuDebugStatus::Stopped { .. } | VcpuDebugStatus::VmEnded(_)
        );
        if self.tx.send(VcpuDebugStatusMessage { cpu, msg }).is_ok() && notify {
            let _ = self.wake.write(1);
        }
    }
}

/// Why a vCPU stopped for good, as reported to the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuFault {
    /// KVM_EXIT_SHUTDOWN: a triple fault, the guest's CPU reset.
    TripleFault,
    /// An exit minivmm cannot continue from; the text says what happened and where.
    Crashed(String),
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

thread_local! {
    /// This thread's kvm_run page, for the kick handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(null_mut()) };
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
}

/// What the loop does after an exit.
enum Next {
    Continue,
    Stop(VcpuFault),
    /// Stopped for the debugger: pause until told to resume.
    DebugStop(DebugStop),
}

/// The vCPU's debugging state, owned by its thread.
#[derive(Default)]
struct DebugState {
    config: DebugConfig,
    /// Sorted linear addresses of planted software breakpoints.
    sw_breakpoints: Vec<u64>,
    soft_watches: Vec<SoftWatch>,
    /// KVM copies the registers into kvm_run at every exit (see `set_guest_debug`).
    synced_regs: bool,
    /// Stop notifications sent to the debugger, for `Resume`.
    stops_sent: u64,
    /// Where the last exit re-ran an instruction whose int3 the debugger had lifted; a second
    /// failure there in a row is a real one.
    rerun_after_lifted_int3: Option<u64>,
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
                    VcpuControl::Debug(req) => {
                        let answer = if paused.load(Ordering::SeqCst) {
                            self.vcpu_control_debug(req, debug, paused)
                        } else {
                            VcpuDebugStatus::Error("vCPU is running".into())
                        };
                        if let Some(ch) = &self.debug {
                            ch.send(self.index, answer);
                        }
                    }
                }
                continue;
            }
            match self.run_once(debug) {
                Next::Continue => {}
                Next::DebugStop(stop) => {
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

    /// Tells the debugger this vCPU stopped (it is paused now), with where it is. Stepping
    /// stays as it is: the debugger says, before every resume, whether to step, so a run of
    /// `stepi`s programs KVM only once.
    fn vcpu_exit_debug(&self, stop: DebugStop, debug: &mut DebugState) {
        if let Some(ch) = &self.debug {
            debug.stops_sent += 1;
            let state = archdebug::read_stop_state(&self.fd, debug.synced_regs).ok();
            ch.send(self.index, VcpuDebugStatus::Stopped { stop, state });
        }
    }

    /// Lets KVM finish an I/O or MMIO exit we already answered, so the registers a debugger
    /// reads next are the ones after the instruction.
    fn complete_pending_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
    }

    /// Programs KVM only when the debug configuration actually changed.
    fn apply_debug(
        &mut self,
        debug: &mut DebugState,
        change: impl FnOnce(&mut DebugConfig),
    ) -> Result<VcpuDebugStatus, String> {
        let before = debug.config.clone();
        change(&mut debug.config);
        if debug.config != before {
            // Until KVM took the new setting, kvm_run's copy is not to be trusted.
            debug.synced_regs = false;
            debug.synced_regs =
                archdebug::set_guest_debug(&mut self.fd, &debug.config, self.host_syncs_regs)?;
        }
        Ok(VcpuDebugStatus::CommandComplete)
    }

    /// Serves a debugger request (the vCPU is paused).
    fn vcpu_control_debug(
        &mut self,
        req: VcpuDebug,
        debug: &mut DebugState,
        paused: &AtomicBool,
    ) -> VcpuDebugStatus {
        let block_irq = self.block_irq_when_stepping;
        let result = match req {
            VcpuDebug::Resume { stops_received } => {
                if stops_received >= debug.stops_sent {
                    paused.store(false, Ordering::SeqCst);
                }
                Ok(VcpuDebugStatus::CommandComplete)
            }
            VcpuDebug::ReadRegs => {
                archdebug::read_registers(&self.fd).map(|r| VcpuDebugStatus::RegValues(Box::new(r)))
            }
            VcpuDebug::ReadStopState => {
                // Not from kvm_run: GDB may have written registers since the exit.
                archdebug::read_stop_state(&self.fd, false).map(VcpuDebugStatus::StopState)
            }
            VcpuDebug::WriteRegs(regs) => archdebug::write_registers(&self.fd, &regs)
                .map(|_| VcpuDebugStatus::CommandComplete),
            VcpuDebug::WriteMem(addr, data, space) => archdebug::paging_context(&self.fd)
                .and_then(|ctx| archdebug::write_memory(&self.mem, &ctx, space, addr, &data))
                .map(|_| VcpuDebugStatus::CommandComplete),
            VcpuDebug::EnableSinglestep(on) => self.apply_debug(debug, |c| {
                c.single_step = on;
                c.block_irq = block_irq;
            }),
            VcpuDebug::SetHwBreakPoint(slots) => self.apply_debug(debug, |c| c.hw_slots = slots),
            VcpuDebug::SetSwBreakPoints(mut addrs) => {
                addrs.sort_unstable();
                let any = !addrs.is_empty();
                debug.sw_breakpoints = addrs;
                self.apply_debug(debug, |c| c.sw_breakpoints = any)
            }
            VcpuDebug::SetSoftWatchpoints(watches) => {
                archdebug::paging_context(&self.fd).and_then(|ctx| {
                    debug.soft_watches = watches
                        .iter()
                        .map(|&(addr, len)| SoftWatch::new(&self.mem, &ctx, addr, len))
                        .collect();
                    let any = !watches.is_empty();
                    self.apply_debug(debug, |c| c.watch_stepping = any)
                })
            }
            VcpuDebug::Translate(vaddr) => archdebug::paging_context(&self.fd).map(|ctx| {
                VcpuDebugStatus::Translation(
                    archdebug::translate(&self.mem, &ctx, vaddr).map_err(|e| e.to_string()),
                )
            }),
            VcpuDebug::DescribeSystemRegs => {
                archdebug::describe_system_registers(&self.fd).map(VcpuDebugStatus::Text)
            }
        };
        result.unwrap_or_else(VcpuDebugStatus::Error)
    }

    /// The first emulated watchpoint whose memory changed, as a stop.
    fn soft_watch_hit(&self, debug: &mut DebugState) -> Option<DebugStop> {
        if debug.soft_watches.is_empty() {
            return None;
        }
        let ctx = archdebug::paging_context(&self.fd).ok()?;
        let mut hit = None;
        for w in debug.soft_watches.iter_mut() {
            // Every watch refreshes its snapshot, so one write is reported once.
            if w.changed(&self.mem, &ctx) && hit.is_none() {
                hit = Some(DebugStop::Watch {
                    addr: w.addr,
                    kind: HwBreakKind::Write,
                });
            }
        }
        hit
    }

    fn run_once(&mut self, debug: &mut DebugState) -> Next {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                return Next::Continue;
            }
            Err(e) => {
                return Next::Stop(VcpuFault::Crashed(format!("KVM_RUN failed: {e}")));
            }
        };
        let rerun_at = debug.rerun_after_lifted_int3.take();
        match exit {
            VcpuExit::IoIn(port, data) => {
                if self.pio.read(port, data).is_err() {
                    debug!("vCPU {}: in from unclaimed port {port:#x}", self.index);
                }
                Next::Continue
            }
            VcpuExit::IoOut(port, data) => {
                if self.pio.write(port, data).is_err() {
                    debug!(
                        "vCPU {}: out {data:x?} to unclaimed port {port:#x}",
                        self.index
                    );
                }
                Next::Continue
            }
            VcpuExit::MmioRead(addr, data) => {
                debug!("vCPU {}: read of unclaimed MMIO {addr:#x}", self.index);
                data.fill(0xff);
                Next::Continue
            }
            VcpuExit::MmioWrite(addr, _) => {
                debug!("vCPU {}: write to unclaimed MMIO {addr:#x}", self.index);
                Next::Continue
            }
            VcpuExit::Shutdown => Next::Stop(VcpuFault::TripleFault),
            VcpuExit::Hlt => {
                // Only without an in-kernel irqchip; treat a halt as "nothing left to run".
                Next::Stop(VcpuFault::Crashed(
                    "the guest halted with no way to wake up".into(),
                ))
            }
            VcpuExit::FailEntry(reason, cpu) => Next::Stop(VcpuFault::Crashed(format!(
                "KVM could not enter the guest (hardware entry failure reason {reason:#x} on host CPU {cpu})\n{}",
                assist::describe_state(&self.fd, &self.mem)
            ))),
            VcpuExit::InternalError => self.internal_error(debug, rerun_at),
            VcpuExit::Debug(arch) => {
                let ours = |pc: u64| debug.sw_breakpoints.binary_search(&pc).is_ok();
                match archdebug::classify_debug_exit(&arch, &debug.config, ours) {
                    DebugExit::Stop(DebugStop::Step) => {
                        Next::DebugStop(self.soft_watch_hit(debug).unwrap_or(DebugStop::Step))
                    }
                    DebugExit::Stop(stop) => Next::DebugStop(stop),
                    DebugExit::WatchStep => match self.soft_watch_hit(debug) {
                        Some(stop) => Next::DebugStop(stop),
                        None => Next::Continue,
                    },
                    DebugExit::GuestBreakpoint => self.reinject(3),
                    DebugExit::GuestDebugTrap => self.reinject(1),
                }
            }
            VcpuExit::Intr => Next::Continue,
            other => {
                let what = format!("{other:?}");
                warn!("vCPU {}: unexpected exit {what}", self.index);
                Next::Stop(VcpuFault::Crashed(format!("unexpected KVM exit {what}")))
            }
        }
    }

    fn reinject(&self, vector: u32) -> Next {
        match archdebug::reinject_exception(&self.fd, vector) {
            Ok(()) => Next::Continue,
            Err(e) => Next::Stop(VcpuFault::Crashed(format!(
                "could not give exception {vector} back to the guest: {e}"
            ))),
        }
    }

    fn internal_error(&mut self, debug: &mut DebugState, rerun_at: Option<u64>) -> Next {
        // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member of the exit union is
        // the one KVM filled in.
        let (suberror, ndata) = unsafe {
            let internal = &self.fd.get_kvm_run().__bindgen_anon_1.internal;
            (internal.suberror, internal.ndata)
        };
        if suberror == assist::SUBERROR_EMULATION
            && let Some(fault) = assist::fetch_fault(&self.fd, &self.mem)
        {
            let linear_rip = fault.linear_rip;
            match breakpoint_failure(&fault.bytes, linear_rip, &debug.sw_breakpoints, rerun_at) {
                // This host reports int3 as an emulation failure; RIP is still at the int3,
                // exactly where a debugger expects a software breakpoint stop.
                BreakpointFailure::Hit => return Next::DebugStop(DebugStop::SwBreak),
                BreakpointFailure::Lifted => {
                    debug!(
                        "vCPU {}: breakpoint at {linear_rip:#x} lifted under its int3; running the instruction again",
                        self.index
                    );
                    debug.rerun_after_lifted_int3 = Some(linear_rip);
                    return Next::Continue;
                }
                BreakpointFailure::Unrelated => {}
            }
            match assist::emulate_unsupported(&self.fd, &fault) {
                Ok(Some(insn)) => {
                    debug!("vCPU {}: emulated {insn:?} at {linear_rip:#x}", self.index);
                    return Next::Continue;
                }
                Ok(None) => {}
                Err(e) => {
                    return Next::Stop(VcpuFault::Crashed(format!(
                        "emulating an instruction failed: {e}"
                    )));
                }
            }
            if assist::is_int3(&fault.bytes) {
                // Only a host that emulates guest code gets here: deliver the #BP the guest
                // would have taken on hardware.
                return match assist::inject_breakpoint(&self.fd, &fault) {
                    Ok(()) => Next::Continue,
                    Err(e) => Next::Stop(VcpuFault::Crashed(format!("could not inject #BP: {e}"))),
                };
            }
        }
        let what = match suberror {
            assist::SUBERROR_EMULATION => "instruction emulation failed".to_string(),
            2 => "a simultaneous exception (double fault while delivering an event)".to_string(),
            3 => "an exit during event delivery".to_string(),
            n => format!("suberror {n}, {ndata} data words"),
        };
        Next::Stop(VcpuFault::Crashed(format!(
            "KVM internal error on vCPU {}: {what}\n{}",
            self.index,
            assist::describe_state(&self.fd, &self.mem)
        )))
    }
}

/// How an emulation failure relates to the debugger's software breakpoints.
#[derive(Debug, PartialEq, Eq)]
enum BreakpointFailure {
    /// The vCPU is on a planted int3: a breakpoint stop.
    Hit,
    /// The address of a planted breakpoint holds the original byte again: the int3 the vCPU
    /// failed on was lifted before the exit was handled (GDB removes every breakpoint when
    /// another vCPU stops). Running the instruction again is right; if the breakpoint is
    /// back by then, the vCPU stops on it as usual.
    Lifted,
    /// Not the debugger's business.
    Unrelated,
}

/// `insn`: the bytes at the failing `rip` now; `planted`: the sorted breakpoint addresses;
/// `rerun_at`: where the previous exit already re-ran an instruction (a second failure in a
/// row there is a real one).
fn breakpoint_failure(
    insn: &[u8],
    rip: u64,
    planted: &[u64],
    rerun_at: Option<u64>,
) -> BreakpointFailure {
    if planted.binary_search(&rip).is_err() {
        BreakpointFailure::Unrelated
    } else if assist::is_int3(insn) {
        BreakpointFailure::Hit
    } else if rerun_at != Some(rip) {
        BreakpointFailure::Lifted
    } else {
        BreakpointFailure::Unrelated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INT3: &[u8] = &[0xcc, 0x90];
    const AND_EDI: &[u8] = &[0x83, 0xe7, 0x3f];
    const PLANTED: &[u64] = &[0x100060, 0x100080];

    #[test]
    fn failure_on_a_planted_int3_is_a_breakpoint_stop() {
        assert_eq!(
            breakpoint_failure(INT3, 0x100060, PLANTED, None),
            BreakpointFailure::Hit
        );
        // Even right after a re-run there: the breakpoint is back.
        assert_eq!(
            breakpoint_failure(INT3, 0x100060, PLANTED, Some(0x100060)),
            BreakpointFailure::Hit
        );
    }

    #[test]
    fn lifted_int3_reruns_once_then_counts_as_a_real_failure() {
        assert_eq!(
            breakpoint_failure(AND_EDI, 0x100060, PLANTED, None),
            BreakpointFailure::Lifted
        );
        assert_eq!(
            breakpoint_failure(AND_EDI, 0x100060, PLANTED, Some(0x100060)),
            BreakpointFailure::Unrelated
        );
        assert_eq!(
            breakpoint_failure(AND_EDI, 0x100080, PLANTED, Some(0x100060)),
            BreakpointFailure::Lifted
        );
    }

    #[test]
    fn failures_away_from_planted_breakpoints_are_not_the_debuggers() {
        // The guest's own int3 (delivered to the guest) and any other failure.
        assert_eq!(
            breakpoint_failure(INT3, 0x200000, PLANTED, None),
            BreakpointFailure::Unrelated
        );
        assert_eq!(
            breakpoint_failure(AND_EDI, 0x200000, &[], None),
            BreakpointFailure::Unrelated
        );
    }
}
