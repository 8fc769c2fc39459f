//! The running VM: the control loop that reacts to guest resets, vCPU faults, signals and
//! GDB's suspend/resume requests, and the orderly end. `builder` builds what runs here.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::arch::coredump::CpuSnapshot;
use crate::builder::{self, Vm};
pub use crate::builder::{LINUX_EMULATED_HOST_ARGS, VmConfig, VmError};
use crate::coredump::{CoreError, CoreFile, CoreSummary};
use crate::gdb::GdbServer;
use crate::memory::GuestMem;
use crate::teardown;
use crate::vcpu::VcpuHandle;
use crate::vm_control::{
    DebugChannel, VcpuControl, VcpuDebugStatus, VcpuFault, VmEnd, VmEvent, VmRequest, VmResponse,
};

/// How the VM ended; main turns it into an exit status and a last line on stderr.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest rebooted (i8042 or ACPI reset register).
    Reset,
    /// The guest entered ACPI S5.
    PowerOff,
    /// The guest kernel reported a panic through pvpanic, from vCPU `cpu`.
    GuestPanicked { cpu: usize },
    /// vCPU `cpu` triple-faulted.
    TripleFault { cpu: usize },
    /// vCPU `cpu` hit an exit minivmm cannot continue from; `report` says where.
    Crashed { cpu: usize, report: String },
    /// The guest ran for `after` (`--timeout`) without ending.
    Timeout { after: Duration },
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// Ctrl-A x.
    UserQuit,
    /// GDB's `kill` or `monitor quit`.
    DebuggerKill,
}

/// Exit statuses, documented in --help and the README.
pub mod status {
    pub const SETUP_FAILED: u8 = 1;
    pub const TRIPLE_FAULT: u8 = 3;
    pub const VCPU_ERROR: u8 = 4;
    pub const USER_QUIT: u8 = 5;
    pub const DEBUGGER_KILL: u8 = 6;
    pub const GUEST_PANIC: u8 = 7;
    pub const TIMEOUT: u8 = 8;
    /// The VM ended as stderr says, but the core file asked for could not be written.
    pub const CORE_FAILED: u8 = 9;
}

impl Outcome {
    /// For endings that want a core file (the guest died, or was ended from outside before
    /// it finished): the vCPU to show first. Clean reboots, power-off and the user's or
    /// debugger's quit want none.
    pub fn dying_cpu(&self) -> Option<usize> {
        match self {
            Outcome::TripleFault { cpu }
            | Outcome::Crashed { cpu, .. }
            | Outcome::GuestPanicked { cpu } => Some(*cpu),
            Outcome::Timeout { .. } => Some(0),
            Outcome::Signal(sig) if *sig == libc::SIGTERM => Some(0),
            _ => None,
        }
    }

    /// The process exit status for this ending.
    pub fn exit_status(&self) -> u8 {
        match self {
            Outcome::Reset | Outcome::PowerOff => 0,
            Outcome::GuestPanicked { .. } => status::GUEST_PANIC,
            Outcome::TripleFault { .. } => status::TRIPLE_FAULT,
            Outcome::Crashed { .. } => status::VCPU_ERROR,
            Outcome::Timeout { .. } => status::TIMEOUT,
            Outcome::UserQuit => status::USER_QUIT,
            Outcome::DebuggerKill => status::DEBUGGER_KILL,
            Outcome::Signal(sig) => 128u8.saturating_add(*sig as u8),
        }
    }
}

/// Blocks SIGINT and SIGTERM in this thread and so in every thread started after it: they
/// must wait for `forward_signals`, not kill minivmm by their default action in some helper
/// thread (the host probe's, say) before the VM is set up.
fn block_forwarded_signals() -> libc::sigset_t {
    // SAFETY: plain sigset manipulation on a local, then a mask change for this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Turns the signals `block_forwarded_signals` held back (and any later ones) into events.
fn forward_signals(set: libc::sigset_t, events: Sender<VmEvent>) -> Result<(), VmError> {
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut sig = 0;
                // SAFETY: waits for one of the blocked signals in `set`.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    return;
                }
                if events.send(VmEvent::Signal(sig)).is_err() {
                    return;
                }
            }
        })
        .map_err(VmError::Thread)?;
    Ok(())
}

/// Tells an attached GDB how the VM ended (a `W` or `X` reply) before the connection goes.
fn tell_debugger_vm_ended(gdb: &GdbServer, channel: &DebugChannel, outcome: &Outcome) {
    if !gdb.attached.load(std::sync::atomic::Ordering::SeqCst) || *outcome == Outcome::DebuggerKill
    {
        return;
    }
    let end = match outcome {
        Outcome::Signal(sig) => VmEnd::Signalled(*sig as u8),
        _ => VmEnd::Exited(outcome.exit_status()),
    };
    channel.send(usize::MAX, VcpuDebugStatus::VmEnded(end));
    let _ = gdb
        .told_vm_end
        .recv_timeout(std::time::Duration::from_secs(1));
}

/// Builds the VM and runs it until it ends.
pub fn run(config: &VmConfig) -> Result<Ended, VmError> {
    let signals = block_forwarded_signals();
    // A core file over the file-size limit must fail as an error minivmm reports, not kill
    // it by SIGXFSZ's default action.
    // SAFETY: setting a signal's disposition to ignore has no memory effects.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let (events_tx, events_rx) = channel();
    forward_signals(signals, events_tx.clone())?;
    let Vm {
        vm_fd,
        mem,
        core,
        vcpus: mut handles,
        debugger,
        console,
        terminal,
    } = builder::build(config, &events_tx)?;
    drop(events_tx);

    let outcome = control_loop(&events_rx, &handles, config.timeout);
    // Whatever must see the guest as it ended (its registers, its memory) belongs here,
    // while the vCPU threads still exist.
    let core = core.and_then(|core| match outcome.dying_cpu() {
        Some(first) => Some(write_core(core, &mem, &handles, first)),
        None => {
            core.discard();
            None
        }
    });
    if let Some((gdb, channel)) = &debugger {
        tell_debugger_vm_ended(gdb, channel, &outcome);
    }
    for h in &handles {
        h.send(VcpuControl::Exit);
    }
    for h in &mut handles {
        h.join();
    }
    // Everything the guest printed reaches stdout before minivmm exits.
    console.finish();
    drop(terminal);
    // Last: from here on the host kernel's teardown is all that is left.
    teardown::release(vm_fd, mem, config.teardown);
    Ok(Ended { outcome, core })
}

/// How the VM ended, and the core file written (or not) for it.
#[derive(Debug)]
pub struct Ended {
    pub outcome: Outcome,
    pub core: Option<Result<CoreSummary, CoreError>>,
}

/// Asks every vCPU for its state (they stop for good) and writes the core.
fn write_core(
    core: CoreFile,
    mem: &GuestMem,
    vcpus: &[VcpuHandle],
    first: usize,
) -> Result<CoreSummary, CoreError> {
    let (tx, rx) = channel();
    for v in vcpus {
        v.send(VcpuControl::Snapshot(tx.clone()));
    }
    drop(tx);
    let mut cpus = vec![CpuSnapshot::default(); vcpus.len()];
    let deadline = Instant::now() + SNAPSHOT_TIMEOUT;
    for _ in vcpus {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((cpu, Ok(state))) if cpu < cpus.len() => cpus[cpu] = state,
            Ok((cpu, Err(e))) => warn!("core file: vCPU {cpu}'s registers could not be read: {e}"),
            Ok(_) => {}
            Err(_) => {
                warn!("core file: a vCPU did not answer; its registers are zero in the core");
                break;
            }
        }
    }
    core.write(mem, &cpus, first)
}

/// A wedged vCPU must not keep the core (and minivmm's exit) waiting.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits for the event that ends the VM, serving the debugger's requests meanwhile. With a
/// `timeout`, the VM ends that long after this starts, whatever it is doing (stopped in GDB
/// too: the time limit is wall time).
fn control_loop(
    events: &Receiver<VmEvent>,
    vcpus: &[VcpuHandle],
    timeout: Option<Duration>,
) -> Outcome {
    // A limit too far away to represent is no limit.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let next = match deadline {
            Some(at) => events.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let event = match next {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => {
                return Outcome::Timeout {
                    after: timeout.unwrap_or_default(),
                };
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Outcome::Crashed {
                    cpu: 0,
                    report: "every vCPU thread ended unexpectedly".into(),
                };
            }
        };
        debug!("control loop: {event:?}");
        match event {
            VmEvent::GuestReset => return Outcome::Reset,
            VmEvent::GuestPowerOff => return Outcome::PowerOff,
            VmEvent::GuestPanicked { cpu } => return Outcome::GuestPanicked { cpu },
            VmEvent::VcpuStopped { cpu, fault } => {
                return match fault {
                    VcpuFault::TripleFault => Outcome::TripleFault { cpu },
                    VcpuFault::Crashed(report) => Outcome::Crashed { cpu, report },
                };
            }
            VmEvent::Signal(sig) => return Outcome::Signal(sig),
            VmEvent::UserQuit => return Outcome::UserQuit,
            VmEvent::DebuggerKill => return Outcome::DebuggerKill,
            VmEvent::Request(req, reply) => {
                let answer = match req {
                    VmRequest::SuspendVcpus => {
                        vcpus.iter().for_each(|v| v.send(VcpuControl::Pause));
                        VmResponse::Ok
                    }
                    VmRequest::ResumeVcpus => {
                        vcpus.iter().for_each(|v| v.send(VcpuControl::Resume));
                        VmResponse::Ok
                    }
                };
                let _ = reply.send(answer);
            }
        }
    }
}
