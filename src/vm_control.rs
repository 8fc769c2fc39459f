//! The messages minivmm's threads exchange: the control loop's events and the debugger's
//! whole-VM requests (`VmEvent`, `VmRequest`), requests to one vCPU thread (`VcpuControl`,
//! `VcpuDebug`) and what vCPUs tell the debugger (`VcpuDebugStatus` on a `DebugChannel`).
//!
//! Only types live here, so that the control loop, the vCPU threads and the GDB thread each
//! depend on this module and none on another.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;

use vmm_sys_util::eventfd::EventFd;

use crate::arch::coredump::CpuSnapshot;
use crate::arch::debug::{AddressSpace, DebugError, DebugStop, StopState};
use crate::arch::debugreg::{HwSlot, NUM_SLOTS};
use crate::arch::gdb::X86_64KvmRegs;
use crate::arch::paging::Translation;

/// Messages to the control loop.
#[derive(Debug)]
pub enum VmEvent {
    /// The guest reset the machine (the i8042's reset line or the ACPI reset register): a
    /// reboot, which ends minivmm successfully.
    GuestReset,
    /// The guest entered ACPI S5 (Linux `poweroff`), which also ends minivmm successfully.
    GuestPowerOff,
    /// The guest kernel reported a panic through pvpanic, from vCPU `cpu`.
    GuestPanicked { cpu: usize },
    /// A vCPU (index `cpu`) cannot go on.
    VcpuStopped { cpu: usize, fault: VcpuFault },
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// Ctrl-A x on the console.
    UserQuit,
    /// The debugger asks for something that concerns the whole VM.
    Request(VmRequest, Sender<VmResponse>),
    /// GDB's `kill` or `monitor quit`.
    DebuggerKill,
}

/// Whole-VM requests from the GDB thread.
#[derive(Debug)]
pub enum VmRequest {
    /// Pause every vCPU (all-stop). Debug requests queued after this are served paused.
    SuspendVcpus,
    /// Let every vCPU run again (the debugger left). Between stops, the debugger resumes the
    /// vCPUs it chose itself, with `VcpuDebug::Resume`.
    ResumeVcpus,
}

/// The control loop's answer to a `VmRequest`.
#[derive(Debug)]
pub enum VmResponse {
    /// Done.
    Ok,
    /// Refused, and why (the control loop itself never refuses; test doubles do).
    Refused(VmRefusal),
}

/// Why the control loop refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VmRefusal {
    /// The VM is ending; its vCPUs take no more requests.
    #[error("the VM is ending")]
    Ending,
}

/// What the vCPU threads and the GDB thread share about where the Linux kernel runs. The
/// vCPUs trap the kernel's first write of GS base (it comes right after the kernel switched
/// to its own page tables, before any C code runs at its final address) and measure its
/// KASLR slide there; the GDB thread asks to be stopped at that moment, so that GDB can
/// relocate vmlinux before breakpoints set at attach are needed.
#[derive(Debug)]
pub struct KernelMapWatch {
    /// Where the kernel was linked to put `_text`.
    pub link_text: u64,
    /// KVM sends the kernel's GS-base writes to minivmm (an MSR filter): without it, the
    /// slide is known only at stops.
    pub trap_installed: bool,
    stop_requested: AtomicBool,
    /// The slide GDB was last stopped for (0: never; vmlinux's own addresses).
    slide_reported: AtomicU64,
}

impl KernelMapWatch {
    pub fn new(link_text: u64, trap_installed: bool) -> Self {
        KernelMapWatch {
            link_text,
            trap_installed,
            stop_requested: AtomicBool::new(false),
            slide_reported: AtomicU64::new(0),
        }
    }

    /// The debugger wants (or no longer wants) a stop when the kernel maps itself somewhere
    /// new. A new session starts from vmlinux's own addresses again.
    pub fn request_stop(&self, on: bool) {
        self.stop_requested.store(on, Ordering::SeqCst);
        self.slide_reported.store(0, Ordering::SeqCst);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop_requested.load(Ordering::SeqCst)
    }

    /// Whether the vCPU that found the kernel at `slide` must stop: the debugger asked, and
    /// no vCPU has stopped for this slide yet (each AP writes GS base too).
    pub fn should_stop_for(&self, slide: u64) -> bool {
        self.stop_requested() && self.slide_reported.swap(slide, Ordering::SeqCst) != slide
    }
}

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
    /// Stop running (for good: the VM is ending) and send the vCPU's state, for a core file.
    Snapshot(Sender<(usize, Result<CpuSnapshot, DebugError>)>),
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
        /// Stop notifications from this vCPU the debugger has received so far.
        stops_received: u64,
    },
    /// The whole register file GDB sees.
    ReadRegs,
    /// Just where the vCPU is and its paging registers (cheaper than `ReadRegs`).
    ReadStopState,
    /// The state a core file records (`monitor dump`).
    Snapshot,
    /// Write GDB's register file back.
    WriteRegs(Box<X86_64KvmRegs>),
    /// Write these bytes at this address, all or nothing.
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
///
/// Errors travel as text: the debugger only logs them and refuses GDB's request.
pub enum VcpuDebugStatus {
    /// Answers `ReadRegs`.
    RegValues(Box<X86_64KvmRegs>),
    /// Answers `ReadStopState`.
    StopState(StopState),
    /// Answers `Snapshot`.
    Snapshot(Box<CpuSnapshot>),
    /// A request that only needed to succeed did.
    CommandComplete,
    /// Answers `Translate`: the page walk, or why it failed.
    Translation(Result<Translation, DebugError>),
    /// Answers `DescribeSystemRegs`.
    Text(String),
    /// A request failed (or came while the vCPU was running).
    Error(DebugError),
    /// The vCPU stopped on its own for the debugger (breakpoint, step, watchpoint) and has
    /// paused itself. What GDB needs at every stop comes along (None if it could not be
    /// read), so that the debugger need not ask.
    Stopped {
        /// Why it stopped.
        stop: DebugStop,
        /// Where it stopped and how it maps memory.
        state: Option<StopState>,
    },
    /// The VM ended while the debugger was attached: GDB gets a `W` (exit status) or an `X`
    /// (signal) reply.
    VmEnded(VmEnd),
}

/// How the VM ended, in GDB's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmEnd {
    /// minivmm exits with this status.
    Exited(u8),
    /// minivmm was killed by this signal.
    Signalled(u8),
}

/// A `VcpuDebugStatus` and the vCPU it comes from (`usize::MAX` for the VM as a whole).
#[derive(Debug)]
pub struct VcpuDebugStatusMessage {
    /// The sending vCPU's index.
    pub cpu: usize,
    /// What it says.
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
