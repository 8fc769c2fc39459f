//! The GDB stub. A thread of its own owns the listening socket and the connection and runs
//! gdbstub's state machine; it reaches a vCPU only through `VcpuControl::Debug` requests on
//! that vCPU's channel (answers come back as `VcpuDebugStatusMessage`s), and suspends or
//! resumes the whole VM through `VmRequest`s to the VMM's control loop.

mod binary_read;
mod breakpoints;
mod conn;
mod memory;
mod monitor;
mod offsets;
mod registers;
mod resume;
mod target;
mod threads;
mod vcpu_link;

use std::io;
use std::net::{SocketAddr, TcpListener};

use binary_read::BinaryReadConn;
use conn::{BufferedConn, MemConn, SessionConn};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::thread::{self, JoinHandle};

use gdbstub::conn::Connection as _;
use gdbstub::stub::state_machine::{self, GdbStubStateMachine, GdbStubStateMachineInner};
use gdbstub::stub::{DisconnectReason, GdbStubBuilder, MultiThreadStopReason};
use log::{info, warn};
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMem;
use crate::vm_control::{KernelMapWatch, VcpuControl, VcpuDebugStatusMessage, VmEvent, VmRefusal};

pub use target::GdbTarget;

/// The reply to `k`: the process exited with SIGKILL (`X09`), framed.
const KILLED_REPLY: &[u8] = b"$X09#c1";

/// Large packets make memory dumps fast: GDB sizes its `m` requests from this.
const PACKET_BUFFER_SIZE: usize = 0x2_0000;
/// The most one `m` request from a well-behaved GDB can ask for (hex doubles the size).
const MAX_READ_PER_REQUEST: usize = PACKET_BUFFER_SIZE / 2;

/// What ends the GDB stub or a session: these are fatal to gdbstub. A request the VM merely
/// refuses is `TargetError::NonFatal` and GDB gets an error reply.
#[derive(Debug, Error)]
pub enum GdbError {
    /// The GDB port cannot be bound.
    #[error("cannot listen for GDB on {addr}: {source} ({})", bind_advice(.source))]
    Bind { addr: SocketAddr, source: io::Error },
    /// The GDB thread cannot be started.
    #[error("cannot start the GDB thread: {0}")]
    Thread(io::Error),
    /// GDB resumed a thread that does not exist.
    #[error("GDB asked for thread {0}, which does not exist")]
    NoSuchThread(usize),
    /// The vCPU thread's channel is closed.
    #[error("vCPU {0} is gone")]
    VcpuGone(usize),
    /// The vCPU thread did not answer in time.
    #[error("vCPU {0} did not answer")]
    VcpuTimeout(usize),
    /// The control loop's channel is closed.
    #[error("the VMM control loop is gone")]
    VmGone,
    /// The control loop refused a suspend or resume.
    #[error("the VMM refused: {0}")]
    VmRefused(#[from] VmRefusal),
    /// The breakpoint table could not be sent to the vCPUs before a resume.
    #[error("the breakpoints could not be sent to the vCPUs")]
    BreakpointSync,
}

/// What to do about a failed bind, by cause.
fn bind_advice(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AddrInUse => "the port is in use: pick another with --gdb PORT",
        io::ErrorKind::AddrNotAvailable => {
            "this machine has no such address: use 127.0.0.1 or 0.0.0.0"
        }
        io::ErrorKind::PermissionDenied => "ports below 1024 need privileges: pick a higher one",
        _ => "check the address and port given to --gdb",
    }
}

/// What the rest of minivmm keeps of the GDB thread.
pub struct GdbServer {
    /// A debugger is connected (the VMM then tells it when the VM ends).
    pub attached: Arc<AtomicBool>,
    /// Fires when a session that saw the VM end has told GDB so.
    pub told_vm_end: Receiver<()>,
    _thread: JoinHandle<()>,
}

/// Everything the GDB thread needs from the VMM.
/// What this host's KVM does for a debugger (the start-up probe tried each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugCaps {
    /// Debug-register data breakpoints fire (else write watchpoints are emulated by stepping).
    pub data_breakpoints_fire: bool,
    /// Debug-register execution breakpoints fire (else hbreak is refused).
    pub exec_breakpoints_fire: bool,
    /// A guest int3 reaches minivmm (else `break` takes a debug register).
    pub int3_exits: bool,
}

pub struct GdbSetup {
    pub vcpus: Vec<Sender<VcpuControl>>,
    pub from_vcpu: Receiver<VcpuDebugStatusMessage>,
    pub wake: Arc<EventFd>,
    pub vm: Sender<VmEvent>,
    /// Guest RAM, which the GDB thread reads itself.
    pub mem: GuestMem,
    /// What this host's KVM does for a debugger.
    pub caps: DebugCaps,
    /// The VM starts paused, so this first session begins before the first instruction.
    pub vm_starts_paused: bool,
    /// Where the Linux kernel runs, shared with the vCPUs; `None` when it is not Linux.
    pub kernel_map_watch: Option<Arc<KernelMapWatch>>,
}

/// The GDB port, bound before anything runs so that a bad address or a busy port fails at
/// start-up, before the guest has done anything.
pub struct GdbListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl GdbListener {
    pub fn bind(addr: SocketAddr) -> Result<GdbListener, GdbError> {
        let listener = TcpListener::bind(addr).map_err(|source| GdbError::Bind { addr, source })?;
        Ok(GdbListener { listener, addr })
    }
}

impl GdbServer {
    /// Starts the GDB thread on a bound port.
    pub fn start(listener: GdbListener, setup: GdbSetup) -> Result<GdbServer, GdbError> {
        let attached = Arc::new(AtomicBool::new(false));
        let (told_tx, told_rx) = std::sync::mpsc::channel();
        let flag = attached.clone();
        let thread = thread::Builder::new()
            .name("gdb".into())
            .spawn(move || serve(listener, setup, flag, told_tx))
            .map_err(GdbError::Thread)?;
        Ok(GdbServer {
            attached,
            told_vm_end: told_rx,
            _thread: thread,
        })
    }
}

fn serve(
    GdbListener { listener, addr }: GdbListener,
    setup: GdbSetup,
    attached: Arc<AtomicBool>,
    told_vm_end: Sender<()>,
) {
    let mut target = GdbTarget::new(setup);
    loop {
        if target.vm_paused_for_gdb() {
            info!(
                "waiting for GDB on {addr} (the VM is paused until it attaches): gdb -ex 'target remote {addr}'"
            );
        } else {
            info!("GDB can attach on {addr}");
        }
        let stream = match listener.accept() {
            Ok((stream, peer)) => {
                info!("GDB connected from {peer}");
                stream
            }
            Err(e) => {
                warn!("accepting a GDB connection failed: {e}");
                continue;
            }
        };
        attached.store(true, Ordering::SeqCst);
        let conn = BufferedConn::new(stream, target.vcpu_count());
        let reason = run_session(&mut target, conn);
        attached.store(false, Ordering::SeqCst);
        match after_session(&mut target, &reason) {
            AfterSession::Killed => return,
            AfterSession::VmEnded => {
                let _ = told_vm_end.send(());
                return;
            }
            AfterSession::Detached => {}
        }
    }
}

/// What is left to do once a session has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterSession {
    /// GDB killed the VM (minivmm is ending).
    Killed,
    /// The VM ended while GDB was attached.
    VmEnded,
    /// GDB went away; its breakpoints were removed and the VM runs on.
    Detached,
}

/// Cleans up after a session the way its end asks for.
fn after_session(
    target: &mut GdbTarget,
    reason: &Result<DisconnectReason, SessionError>,
) -> AfterSession {
    match reason {
        Ok(DisconnectReason::Kill) => {
            info!("GDB killed the VM");
            target.end_vm();
            return AfterSession::Killed;
        }
        Ok(DisconnectReason::TargetExited(_)) | Ok(DisconnectReason::TargetTerminated(_)) => {
            return AfterSession::VmEnded;
        }
        Ok(DisconnectReason::Disconnect) => info!("GDB detached; the VM runs on"),
        Err(e) => info!("GDB session ended: {e}"),
    }
    if target.vm_ended() {
        return AfterSession::VmEnded;
    }
    if let Err(e) = target.detach() {
        warn!("cleaning up after GDB failed: {e}");
    }
    AfterSession::Detached
}

/// For fuzzing and tests: runs one whole session on `input` (an in-memory connection: GDB's
/// bytes, then end of file) and cleans up after it as the GDB thread would. Returns how the
/// session ended, what was left to do, and everything the stub sent.
#[doc(hidden)]
pub fn fuzz_session(
    target: &mut GdbTarget,
    input: &[u8],
) -> (
    Result<DisconnectReason, SessionError>,
    AfterSession,
    Vec<u8>,
) {
    let mut output = Vec::new();
    let threads = target.vcpu_count();
    let reason = run_session(target, MemConn::new(input, &mut output, threads));
    let after = after_session(target, &reason);
    (reason, after, output)
}

/// Why a session ended other than by GDB's choice.
#[derive(Debug, Error)]
pub enum SessionError {
    /// gdbstub gave up (a protocol error, or a fatal target error).
    #[error("{0}")]
    Stub(#[from] gdbstub::stub::GdbStubError<GdbError, io::Error>),
    /// Attaching to the VM failed.
    #[error("{0}")]
    Target(#[from] GdbError),
    /// The connection failed or stalled.
    #[error("connection: {0}")]
    Conn(#[from] io::Error),
}

/// Runs one connection to its end. This is gdbstub's blocking loop, with a wait that watches
/// the socket and the vCPUs' stop notifications together (poll(2); the only timeout is for
/// a packet that stalls halfway, see `conn::STALL_TIMEOUT`), and binary memory reads (`x`)
/// answered beside gdbstub while the VM is stopped (see `binary_read`).
fn run_session<C: SessionConn>(
    target: &mut GdbTarget,
    conn: C,
) -> Result<DisconnectReason, SessionError> {
    let mut conn = BinaryReadConn::new(conn, MAX_READ_PER_REQUEST);
    // gdbstub leaves this call to its user: socket options (no Nagle, write timeout).
    conn.on_session_start()?;
    target.attach()?;
    // A buffer of our own: gdbstub's default one grows with every byte of a packet that
    // never ends. With a fixed one, an oversized packet ends the session instead.
    let mut packet_buffer = vec![0; PACKET_BUFFER_SIZE];
    let gdb = GdbStubBuilder::new(conn)
        .with_packet_buffer(&mut packet_buffer)
        .build()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut machine = gdb.run_state_machine(target)?;
    loop {
        machine = match machine {
            GdbStubStateMachine::Idle(mut gdb) => {
                let byte = gdb.borrow_conn().read_serving(target)?;
                gdb.incoming_data(target, byte)?
            }
            GdbStubStateMachine::Disconnected(mut gdb) => {
                let reason = gdb.get_reason();
                if matches!(reason, DisconnectReason::Kill) {
                    // LLDB waits for the exit reply to `k` ("failed to send the k packet"
                    // otherwise); GDB expects none and ignores it.
                    let conn = gdb.borrow_conn();
                    let _ = conn.write_all(KILLED_REPLY).and_then(|()| conn.flush());
                }
                return Ok(reason);
            }
            GdbStubStateMachine::CtrlCInterrupt(gdb) => {
                let was_running = !target.vm_paused_for_gdb();
                match target.interrupt() {
                    // Reported here rather than by gdbstub, to send the registers along.
                    Some(reason) if was_running => {
                        match gdb.interrupt_handled(target, None::<MultiThreadStopReason<u64>>)? {
                            GdbStubStateMachine::Running(gdb) => report_stop(gdb, target, reason)?,
                            // Not reached: gdbstub is idle only while the VM is stopped.
                            other => {
                                warn!("Ctrl-C stop not reported: gdbstub was idle");
                                other
                            }
                        }
                    }
                    reason => gdb.interrupt_handled(target, reason)?,
                }
            }
            GdbStubStateMachine::Running(mut gdb) => {
                match target.wait_for_stop(gdb.borrow_conn())? {
                    Waited::Data(byte) => gdb.incoming_data(target, byte)?,
                    Waited::Stopped(reason) => report_stop(gdb, target, reason)?,
                }
            }
        };
    }
}

/// Sends a stop reply with the registers GDB needs first, so it need not ask for them.
fn report_stop<'a, C: SessionConn>(
    gdb: GdbStubStateMachineInner<'a, state_machine::state::Running, GdbTarget, C>,
    target: &mut GdbTarget,
    reason: MultiThreadStopReason<u64>,
) -> Result<GdbStubStateMachine<'a, GdbTarget, C>, SessionError> {
    let regs = target.expedited_registers();
    let mut regs = regs.iter().map(|(id, v)| (*id, &v[..]));
    Ok(gdb.report_stop_with_regs(target, reason, &mut regs)?)
}

/// What woke the GDB thread while the VM ran.
pub enum Waited {
    Data(u8),
    Stopped(MultiThreadStopReason<u64>),
}

/// Blocks until the socket has a byte or the wake eventfd fires (or a packet GDB started
/// stalls: an error).
fn poll_two(conn: &BufferedConn, wake: &EventFd) -> io::Result<(bool, bool)> {
    if conn.has_buffered_input() {
        return Ok((true, false));
    }
    let fds = [conn.as_raw_fd(), wake.as_raw_fd()];
    // A step or a short run stops within microseconds: catch it without sleeping.
    let ready = conn::spin_briefly(|| {
        let [data, woke] = poll_ready(fds, 0)?;
        Ok((data || woke).then_some((data, woke)))
    })?;
    match ready {
        Some(r) => Ok(r),
        None => {
            let timeout = conn.input_timeout_ms();
            match poll_ready(fds, timeout)? {
                [false, false] if timeout >= 0 => Err(conn::stalled()),
                [data, woke] => Ok((data, woke)),
            }
        }
    }
}

/// poll(2) for input on `fds` (`timeout_ms` as poll takes it; -1 waits forever): which are
/// readable (or hung up).
fn poll_ready<const N: usize>(fds: [RawFd; N], timeout_ms: i32) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: `pfds` is a valid array of N pollfd for the duration of the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, timeout_ms) };
        if n >= 0 {
            return Ok(
                pfds.map(|f| f.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
            );
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
