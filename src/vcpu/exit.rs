//! KVM exit dispatch: one KVM_RUN and what the vCPU loop does about its exit. Port I/O goes
//! to the bus, unclaimed MMIO reads as all ones, a shutdown is a triple fault; debug exits,
//! internal errors and entry failures are the architecture's (`arch::exits`).
//!
//! Generic over `VcpuOps`, so that unit tests drive it with synthetic exits.

use kvm_ioctls::VcpuExit;
use log::{debug, warn};

use crate::arch::VcpuOps;
use crate::arch::debug::DebugStop;
use crate::arch::exits::{self, ArchExit, DebugTraps};
use crate::devices::PioBus;
use crate::memory::GuestMem;
use crate::vm_control::{KernelMapWatch, VcpuFault};

/// What the vCPU loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Run the guest again.
    Continue,
    /// The vCPU cannot go on: tell the control loop.
    Stop(VcpuFault),
    /// Stopped for the debugger: pause until told to resume.
    DebugStop(DebugStop),
}

impl From<ArchExit> for Next {
    fn from(exit: ArchExit) -> Self {
        match exit {
            ArchExit::Continue => Next::Continue,
            ArchExit::DebugStop(stop) => Next::DebugStop(stop),
            ArchExit::Crash(report) => Next::Stop(VcpuFault::Crashed(report)),
        }
    }
}

/// What exits are handled with, besides the vCPU itself.
pub struct ExitContext<'a> {
    /// The vCPU's index, for logs and reports.
    pub cpu: usize,
    pub pio: &'a PioBus,
    pub mem: &'a GuestMem,
    /// Set when the kernel's mapping of itself is watched for a debugger.
    pub kernel_map_watch: Option<&'a KernelMapWatch>,
}

/// Runs the vCPU until its next exit and handles the exit.
pub fn handle_kvm_exit<V: VcpuOps>(
    vcpu: &mut V,
    ctx: &ExitContext,
    traps: &mut DebugTraps,
) -> Next {
    let cpu = ctx.cpu;
    let exit = match vcpu.run() {
        Ok(exit) => exit,
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            // A kick (or a pause's completion run) set immediate_exit; the next run is real.
            vcpu.set_immediate_exit(false);
            return Next::Continue;
        }
        Err(e) => return Next::Stop(VcpuFault::Crashed(format!("KVM_RUN failed: {e}"))),
    };
    let rerun_at = traps.take_rerun();
    match exit {
        VcpuExit::IoIn(port, data) => {
            if ctx.pio.read(port, data).is_err() {
                debug!("vCPU {cpu}: in from unclaimed port {port:#x}");
            }
            Next::Continue
        }
        VcpuExit::IoOut(port, data) => {
            if ctx.pio.write(port, data).is_err() {
                debug!("vCPU {cpu}: out {data:x?} to unclaimed port {port:#x}");
            }
            Next::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            debug!("vCPU {cpu}: read of unclaimed MMIO {addr:#x}");
            data.fill(0xff);
            Next::Continue
        }
        VcpuExit::MmioWrite(addr, _) => {
            debug!("vCPU {cpu}: write to unclaimed MMIO {addr:#x}");
            Next::Continue
        }
        VcpuExit::Shutdown => Next::Stop(VcpuFault::TripleFault),
        // Only without an in-kernel irqchip; treat a halt as "nothing left to run".
        VcpuExit::Hlt => Next::Stop(VcpuFault::Crashed(
            "the guest halted with no way to wake up".into(),
        )),
        VcpuExit::FailEntry(reason, host_cpu) => Next::Stop(VcpuFault::Crashed(
            exits::describe_entry_failure(vcpu, ctx.mem, reason, host_cpu),
        )),
        VcpuExit::InternalError => {
            exits::handle_internal_error(vcpu, ctx.mem, cpu, traps, rerun_at).into()
        }
        VcpuExit::Debug(arch) => exits::handle_debug_exit(vcpu, ctx.mem, &arch, traps).into(),
        VcpuExit::X86Wrmsr(exit) => {
            let (index, value) = (exit.index, exit.data);
            *exit.error = 0;
            exits::handle_wrmsr(vcpu, ctx.mem, index, value, ctx.kernel_map_watch).into()
        }
        VcpuExit::Intr => Next::Continue,
        other => {
            let what = format!("{other:?}");
            warn!("vCPU {cpu}: unexpected exit {what}");
            Next::Stop(VcpuFault::Crashed(format!("unexpected KVM exit {what}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::sync::{Arc, Mutex};

    use kvm_bindings::{kvm_debug_exit_arch, kvm_regs, kvm_sregs, kvm_vcpu_events};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::arch::InternalError;
    use crate::arch::debugreg::{HwBreakKind, HwSlot};
    use crate::arch::exits::SUBERROR_EMULATION;
    use crate::devices::PioDevice;

    /// An exit for the fake vCPU to report, with the data KVM would put in kvm_run.
    enum Scripted {
        IoIn(u16, usize),
        IoOut(u16, Vec<u8>),
        MmioRead(u64, usize),
        MmioWrite(u64, Vec<u8>),
        Shutdown,
        Debug(kvm_debug_exit_arch),
        InternalError(u32),
        Wrmsr(u32, u64),
        Nmi,
        Errno(i32),
    }

    /// A vCPU without KVM: flat addressing (linear = physical), registers in cells.
    struct FakeVcpu {
        next: Option<Scripted>,
        /// kvm_run's data area for I/O and MMIO exits.
        data: Vec<u8>,
        suberror: u32,
        immediate_exit: bool,
        regs: RefCell<kvm_regs>,
        events: RefCell<kvm_vcpu_events>,
        set_events_calls: Cell<u32>,
        sregs: kvm_sregs,
        /// MSR writes done as the host, and whether they fail.
        msrs: RefCell<Vec<(u32, u64)>>,
        msr_writes_fail: bool,
        /// kvm_run's `msr.error`.
        msr_error: u8,
    }

    impl FakeVcpu {
        fn at(rip: u64) -> Self {
            FakeVcpu {
                next: None,
                data: Vec::new(),
                suberror: 0,
                immediate_exit: false,
                regs: RefCell::new(kvm_regs {
                    rip,
                    rflags: 0x2,
                    ..Default::default()
                }),
                events: RefCell::new(kvm_vcpu_events::default()),
                set_events_calls: Cell::new(0),
                sregs: kvm_sregs::default(),
                msrs: RefCell::new(Vec::new()),
                msr_writes_fail: false,
                msr_error: 0xff,
            }
        }
    }

    impl VcpuOps for FakeVcpu {
        fn run(&mut self) -> Result<VcpuExit<'_>, kvm_ioctls::Error> {
            let next = self.next.take().expect("a scripted exit");
            Ok(match next {
                Scripted::IoIn(port, len) => {
                    self.data = vec![0; len];
                    VcpuExit::IoIn(port, &mut self.data)
                }
                Scripted::IoOut(port, data) => {
                    self.data = data;
                    VcpuExit::IoOut(port, &self.data)
                }
                Scripted::MmioRead(addr, len) => {
                    self.data = vec![0; len];
                    VcpuExit::MmioRead(addr, &mut self.data)
                }
                Scripted::MmioWrite(addr, data) => {
                    self.data = data;
                    VcpuExit::MmioWrite(addr, &self.data)
                }
                Scripted::Shutdown => VcpuExit::Shutdown,
                Scripted::Debug(arch) => VcpuExit::Debug(arch),
                Scripted::InternalError(suberror) => {
                    self.suberror = suberror;
                    VcpuExit::InternalError
                }
                Scripted::Wrmsr(index, data) => VcpuExit::X86Wrmsr(kvm_ioctls::WriteMsrExit {
                    error: &mut self.msr_error,
                    reason: kvm_ioctls::MsrExitReason::Filter,
                    index,
                    data,
                }),
                Scripted::Nmi => VcpuExit::Nmi,
                Scripted::Errno(errno) => return Err(kvm_ioctls::Error::new(errno)),
            })
        }
        fn set_immediate_exit(&mut self, on: bool) {
            self.immediate_exit = on;
        }
        fn internal_error(&mut self) -> InternalError {
            InternalError {
                suberror: self.suberror,
                ndata: 0,
            }
        }
        fn regs(&self) -> Result<kvm_regs, kvm_ioctls::Error> {
            Ok(*self.regs.borrow())
        }
        fn set_regs(&self, regs: &kvm_regs) -> Result<(), kvm_ioctls::Error> {
            *self.regs.borrow_mut() = *regs;
            Ok(())
        }
        fn sregs(&self) -> Result<kvm_sregs, kvm_ioctls::Error> {
            Ok(self.sregs)
        }
        fn set_msr(&self, index: u32, value: u64) -> Result<(), kvm_ioctls::Error> {
            if self.msr_writes_fail {
                return Err(kvm_ioctls::Error::new(libc::EINVAL));
            }
            self.msrs.borrow_mut().push((index, value));
            Ok(())
        }
        fn fail_msr_exit(&mut self) {
            self.msr_error = 1;
        }
        fn translate(&self, linear: u64) -> Option<u64> {
            Some(linear)
        }
        fn events(&self) -> Result<kvm_vcpu_events, kvm_ioctls::Error> {
            Ok(*self.events.borrow())
        }
        fn set_events(&self, events: &kvm_vcpu_events) -> Result<(), kvm_ioctls::Error> {
            *self.events.borrow_mut() = *events;
            self.set_events_calls.set(self.set_events_calls.get() + 1);
            Ok(())
        }
    }

    /// Port writes a device saw: (offset, data).
    type Writes = Arc<Mutex<Vec<(u16, Vec<u8>)>>>;

    /// A port device that answers reads with its offset and records writes.
    struct Probe(Writes);

    impl PioDevice for Probe {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(0x40 + offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    const PROBE_PORT: u16 = 0x3f8;
    const CODE: u64 = 0x1000;

    struct Setup {
        pio: PioBus,
        mem: GuestMem,
        writes: Writes,
        traps: DebugTraps,
        watch: Option<KernelMapWatch>,
    }

    impl Setup {
        fn new() -> Self {
            let writes = Arc::new(Mutex::new(Vec::new()));
            let device: Arc<Mutex<dyn PioDevice>> = Arc::new(Mutex::new(Probe(writes.clone())));
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
            Setup {
                pio: PioBus::new(vec![(PROBE_PORT, 8, device)]),
                mem,
                writes,
                traps: DebugTraps::default(),
                watch: None,
            }
        }

        /// Runs `vcpu` into `exit` and dispatches it.
        fn exit(&mut self, vcpu: &mut FakeVcpu, exit: Scripted) -> Next {
            vcpu.next = Some(exit);
            let ctx = ExitContext {
                cpu: 0,
                pio: &self.pio,
                mem: &self.mem,
                kernel_map_watch: self.watch.as_ref(),
            };
            handle_kvm_exit(vcpu, &ctx, &mut self.traps)
        }

        fn code(&self, bytes: &[u8]) {
            self.mem.write_slice(bytes, GuestAddress(CODE)).unwrap();
        }

        fn plant(&mut self, addrs: &[u64]) {
            let any = self.traps.set_sw_breakpoints(addrs.to_vec());
            self.traps.config.sw_breakpoints = any;
        }
    }

    fn debug_exit(exception: u32, pc: u64, dr6: u64) -> Scripted {
        Scripted::Debug(kvm_debug_exit_arch {
            exception,
            pc,
            dr6,
            ..Default::default()
        })
    }

    const GS_BASE: u32 = 0xc000_0101;

    /// Linux's page tables after `__startup_64`, in the fake's RAM: the kernel window holds
    /// `_text` at 0xffffffff9c000000 (slide 0x1b000000 from 0xffffffff81000000).
    fn kernel_page_tables(s: &Setup, vcpu: &mut FakeVcpu) {
        let (pml4, pdpt, pd) = (0x4000u64, 0x5000u64, 0x6000u64);
        s.mem
            .write_obj(pdpt | 3, GuestAddress(pml4 + 511 * 8))
            .unwrap();
        s.mem
            .write_obj(pd | 3, GuestAddress(pdpt + 510 * 8))
            .unwrap();
        s.mem
            .write_obj(0x200_0000u64 | 0x83, GuestAddress(pd + 224 * 8))
            .unwrap();
        vcpu.sregs.cr0 = 1 << 31;
        vcpu.sregs.cr3 = pml4;
        vcpu.sregs.cr4 = 1 << 5;
        vcpu.sregs.efer = (1 << 8) | (1 << 10);
    }

    #[test]
    fn a_filtered_msr_write_is_done_as_the_host() {
        let mut s = Setup::new();
        let mut vcpu = FakeVcpu::at(CODE);
        assert_eq!(
            s.exit(&mut vcpu, Scripted::Wrmsr(GS_BASE, 0x1234)),
            Next::Continue
        );
        assert_eq!(*vcpu.msrs.borrow(), [(GS_BASE, 0x1234)]);
        assert_eq!(vcpu.msr_error, 0, "KVM must complete the WRMSR");
        vcpu.msr_writes_fail = true;
        assert_eq!(
            s.exit(&mut vcpu, Scripted::Wrmsr(GS_BASE, 1)),
            Next::Continue
        );
        assert_eq!(vcpu.msr_error, 1, "a write KVM refuses is the guest's #GP");
    }

    #[test]
    fn the_kernel_mapping_itself_stops_once_per_slide_when_asked() {
        let mut s = Setup::new();
        let mut vcpu = FakeVcpu::at(CODE);
        kernel_page_tables(&s, &mut vcpu);
        s.watch = Some(KernelMapWatch::new(0xffff_ffff_8100_0000, true));
        // Not asked: no stop.
        assert_eq!(
            s.exit(&mut vcpu, Scripted::Wrmsr(GS_BASE, 7)),
            Next::Continue
        );
        s.watch.as_ref().unwrap().request_stop(true);
        assert_eq!(
            s.exit(&mut vcpu, Scripted::Wrmsr(GS_BASE, 7)),
            Next::DebugStop(DebugStop::KernelMapped { slide: 0x1b00_0000 })
        );
        // Each AP writes GS base too: the same slide stops nobody again.
        assert_eq!(
            s.exit(&mut vcpu, Scripted::Wrmsr(GS_BASE, 8)),
            Next::Continue
        );
        // Before the kernel's own page tables, nothing is known and nobody stops.
        let mut early = FakeVcpu::at(CODE);
        s.watch.as_ref().unwrap().request_stop(true);
        assert_eq!(
            s.exit(&mut early, Scripted::Wrmsr(GS_BASE, 9)),
            Next::Continue
        );
    }

    #[test]
    fn port_io_goes_to_the_bus() {
        let mut s = Setup::new();
        let mut vcpu = FakeVcpu::at(CODE);
        assert_eq!(
            s.exit(&mut vcpu, Scripted::IoIn(PROBE_PORT + 2, 1)),
            Next::Continue
        );
        assert_eq!(vcpu.data, [0x42]);
        let out = Scripted::IoOut(PROBE_PORT + 1, vec![0x61, 0x62]);
        assert_eq!(s.exit(&mut vcpu, out), Next::Continue);
        assert_eq!(*s.writes.lock().unwrap(), [(1, vec![0x61, 0x62])]);
    }

    #[test]
    fn unclaimed_ports_and_mmio_read_as_all_ones_and_ignore_writes() {
        let mut s = Setup::new();
        let mut vcpu = FakeVcpu::at(CODE);
        assert_eq!(s.exit(&mut vcpu, Scripted::IoIn(0x80, 2)), Next::Continue);
        assert_eq!(vcpu.data, [0xff, 0xff]);
        assert_eq!(
            s.exit(&mut vcpu, Scripted::IoOut(0x80, vec![1])),
            Next::Continue
        );
        let read = Scripted::MmioRead(0xfebf_0000, 4);
        assert_eq!(s.exit(&mut vcpu, read), Next::Continue);
        assert_eq!(vcpu.data, [0xff; 4]);
        let write = Scripted::MmioWrite(0xfebf_0000, vec![0; 4]);
        assert_eq!(s.exit(&mut vcpu, write), Next::Continue);
        assert!(s.writes.lock().unwrap().is_empty());
    }

    #[test]
    fn shutdown_is_a_triple_fault_and_strange_exits_crash() {
        let mut s = Setup::new();
        let mut vcpu = FakeVcpu::at(CODE);
        assert_eq!(
            s.exit(&mut vcpu, Scripted::Shutdown),
            Next::Stop(VcpuFault::TripleFault)
        );
        match s.exit(&mut vcpu, Scripted::Nmi) {
            Next::Stop(VcpuFault::Crashed(report)) => assert!(report.contains("Nmi"), "{report}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_kick_only_clears_immediate_exit_and_a_failed_run_crashes() {
        let mut s = Setup::new();
        let mut vcpu = FakeVcpu::at(CODE);
        vcpu.immediate_exit = true;
        assert_eq!(
            s.exit(&mut vcpu, Scripted::Errno(libc::EINTR)),
            Next::Continue
        );
        assert!(!vcpu.immediate_exit);
        assert!(matches!(
            s.exit(&mut vcpu, Scripted::Errno(libc::EFAULT)),
            Next::Stop(VcpuFault::Crashed(_))
        ));
    }

    #[test]
    fn debug_exits_are_classified() {
        let mut s = Setup::new();
        let mut vcpu = FakeVcpu::at(CODE);
        s.plant(&[CODE]);
        assert_eq!(
            s.exit(&mut vcpu, debug_exit(3, CODE, 0)),
            Next::DebugStop(DebugStop::SwBreak)
        );
        // The guest's own int3 goes back to the guest as #BP.
        assert_eq!(
            s.exit(&mut vcpu, debug_exit(3, CODE + 8, 0)),
            Next::Continue
        );
        let events = *vcpu.events.borrow();
        assert_eq!((events.exception.injected, events.exception.nr), (1, 3));

        s.traps.config.hw_slots[1] = Some(HwSlot {
            addr: 0x2000,
            kind: HwBreakKind::Write,
            len: 4,
        });
        assert_eq!(
            s.exit(&mut vcpu, debug_exit(1, CODE, 1 << 1)),
            Next::DebugStop(DebugStop::Watch {
                addr: 0x2000,
                kind: HwBreakKind::Write
            })
        );
        s.traps.config.single_step = true;
        assert_eq!(
            s.exit(&mut vcpu, debug_exit(1, CODE, 1 << 14)),
            Next::DebugStop(DebugStop::Step)
        );
        // A #DB the debugger did not ask for is the guest's.
        s.traps.config.single_step = false;
        let before = vcpu.set_events_calls.get();
        assert_eq!(s.exit(&mut vcpu, debug_exit(1, CODE, 0)), Next::Continue);
        assert_eq!(vcpu.set_events_calls.get(), before + 1);
        assert_eq!(vcpu.events.borrow().exception.nr, 1);
    }

    #[test]
    fn emulation_failure_on_a_planted_int3_is_a_breakpoint_stop() {
        let mut s = Setup::new();
        let mut vcpu = FakeVcpu::at(CODE);
        s.code(&[0xcc, 0x90]);
        s.plant(&[CODE]);
        assert_eq!(
            s.exit(&mut vcpu, Scripted::InternalError(SUBERROR_EMULATION)),
            Next::DebugStop(DebugStop::SwBreak)
        );
        assert_eq!(vcpu.regs.borrow().rip, CODE, "RIP stays on the int3");
    }

    #[test]
    fn a_lifted_int3_reruns_once_then_crashes() {
        let mut s = Setup::new();
        let mut vcpu = FakeVcpu::at(CODE);
        // The planted address holds its original instruction again (`and edi, 0x3f`).
        s.code(&[0x83, 0xe7, 0x3f]);
        s.plant(&[CODE]);
        let failure = || Scripted::InternalError(SUBERROR_EMULATION);
        assert_eq!(s.exit(&mut vcpu, failure()), Next::Continue);
        match s.exit(&mut vcpu, failure()) {
            Next::Stop(VcpuFault::Crashed(report)) => {
                assert!(report.contains("instruction emulation failed"), "{report}");
                assert!(report.contains("83 e7 3f"), "{report}");
            }
            other => panic!("{other:?}"),
        }
        // Any other exit in between forgets the re-run.
        assert_eq!(s.exit(&mut vcpu, failure()), Next::Continue);
        assert_eq!(s.exit(&mut vcpu, Scripted::IoIn(0x80, 1)), Next::Continue);
        assert_eq!(s.exit(&mut vcpu, failure()), Next::Continue);
    }

    #[test]
    fn emulation_failures_the_debugger_does_not_own_are_assisted() {
        let mut s = Setup::new();
        // The guest's own int3: #BP injected, RIP past it.
        let mut vcpu = FakeVcpu::at(CODE);
        s.code(&[0xcc]);
        let failure = || Scripted::InternalError(SUBERROR_EMULATION);
        assert_eq!(s.exit(&mut vcpu, failure()), Next::Continue);
        assert_eq!(vcpu.regs.borrow().rip, CODE + 1);
        assert_eq!(vcpu.events.borrow().exception.nr, 3);
        // STAC at CPL 0: emulated, RFLAGS.AC set.
        let mut vcpu = FakeVcpu::at(CODE);
        s.code(&[0x0f, 0x01, 0xcb]);
        assert_eq!(s.exit(&mut vcpu, failure()), Next::Continue);
        assert_eq!(vcpu.regs.borrow().rip, CODE + 3);
        assert_eq!(vcpu.regs.borrow().rflags, 0x2 | 1 << 18);
    }

    #[test]
    fn other_internal_errors_crash_with_a_description() {
        let mut s = Setup::new();
        let mut vcpu = FakeVcpu::at(CODE);
        match s.exit(&mut vcpu, Scripted::InternalError(2)) {
            Next::Stop(VcpuFault::Crashed(report)) => {
                assert!(report.contains("simultaneous exception"), "{report}");
                assert!(report.contains("CS:RIP"), "{report}");
            }
            other => panic!("{other:?}"),
        }
    }
}
