//! A VM without KVM for the GDB stub: vCPU threads that answer `VcpuDebug` requests from an
//! in-memory model (registers, 1 MiB of guest RAM read through minivmm's own page walker),
//! and a control loop that suspends and resumes them and, on resume, makes them stop the way
//! real vCPUs do (step done, breakpoint or watchpoint hit, VM ended) or keep running.
//! Failures (a vCPU error, a refused resume) are injected now and then.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use minivmm::arch::debug::{self as archdebug, DebugError, DebugStop, SoftWatch, StopState};
use minivmm::arch::debugreg::{HwBreakKind, HwSlot, NUM_SLOTS, debugreg_array};
use minivmm::arch::gdb::X86_64KvmRegs;
use minivmm::arch::paging::PagingContext;
use minivmm::gdb::{DebugCaps, GdbSetup, GdbTarget};
use minivmm::memory::GuestMem;
use minivmm::vm_control::{
    DebugChannel, VcpuControl, VcpuDebug, VcpuDebugStatus, VmEnd, VmEvent, VmRefusal, VmRequest,
    VmResponse,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::Rng;

pub const RAM: usize = 1 << 20;
/// Identity-mapping long-mode tables (one 2 MiB page) the vCPUs may start with.
const PML4: u64 = 0x1000;

#[derive(Default)]
struct Cpu {
    regs: X86_64KvmRegs,
    paused: bool,
    single_step: bool,
    hw: [Option<HwSlot>; NUM_SLOTS],
    sw: Vec<u64>,
    soft: Vec<SoftWatch>,
    /// Stop notifications sent, as the real vCPU counts them for `Resume`.
    stops_sent: u64,
}

impl Cpu {
    fn ctx(&self) -> PagingContext {
        self.regs.paging_context()
    }
}

struct Model {
    mem: GuestMem,
    cpus: Vec<Cpu>,
    rng: Rng,
    /// Failures injected so far (the clean-up checks only hold without them).
    injected: u32,
    killed: bool,
    ended: bool,
}

/// What the checks after a session can see of the VM.
pub struct Observed {
    pub injected: u32,
    pub killed: bool,
    pub ended: bool,
    /// Per vCPU: paused, stepping, any hardware slot, any software breakpoint, any soft watch.
    pub cpus: Vec<(bool, bool, bool, bool, bool)>,
}

pub struct FakeVm {
    model: Arc<Mutex<Model>>,
    threads: Vec<JoinHandle<()>>,
}

fn lock(m: &Mutex<Model>) -> MutexGuard<'_, Model> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeVm {
    /// A VM of `cpus` vCPUs and the stub's target for it.
    pub fn start(
        seed: u64,
        cpus: usize,
        caps: DebugCaps,
        starts_paused: bool,
    ) -> (FakeVm, GdbTarget) {
        let mut rng = Rng::new(seed);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest RAM");
        // PML4 -> PDPT -> PD with one 2 MiB page at 0, and some code-ish bytes.
        mem.write_obj(0x2003u64, GuestAddress(PML4)).unwrap();
        mem.write_obj(0x3003u64, GuestAddress(0x2000)).unwrap();
        mem.write_obj(0x83u64, GuestAddress(0x3000)).unwrap();
        mem.write_slice(&rng.bytes(0x1000), GuestAddress(0x10_000))
            .unwrap();
        let cpus: Vec<Cpu> = (0..cpus)
            .map(|i| {
                let mut regs = X86_64KvmRegs {
                    rip: 0x10_000 + i as u64 * 0x10,
                    ..Default::default()
                };
                regs.regs[7] = 0x8000;
                if rng.chance(2, 3) {
                    regs.cr0 = 0x8000_0011;
                    regs.cr3 = PML4;
                    regs.cr4 = 0x20;
                    regs.efer = 0x500;
                }
                Cpu {
                    regs,
                    paused: starts_paused,
                    ..Default::default()
                }
            })
            .collect();
        let n = cpus.len();
        let model = Arc::new(Mutex::new(Model {
            mem: mem.clone(),
            cpus,
            rng,
            injected: 0,
            killed: false,
            ended: false,
        }));
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        let (debug_tx, debug_rx) = channel();
        let debug = DebugChannel::new(debug_tx, wake.clone());
        let (vm_tx, vm_rx) = channel();
        let mut threads = Vec::new();
        let mut vcpus = Vec::new();
        for cpu in 0..n {
            let (tx, rx) = channel();
            vcpus.push(tx);
            let (model, debug) = (model.clone(), debug.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("fake-vcpu{cpu}"))
                    .spawn(move || vcpu_thread(cpu, rx, &model, &debug))
                    .expect("spawning a fake vCPU"),
            );
        }
        {
            let model = model.clone();
            let vcpus = vcpus.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("fake-vmm".into())
                    .spawn(move || vmm_thread(vm_rx, &model, &vcpus))
                    .expect("spawning the fake VMM"),
            );
        }
        let target = GdbTarget::new(GdbSetup {
            vcpus,
            from_vcpu: debug_rx,
            wake,
            vm: vm_tx,
            mem,
            caps,
            vm_starts_paused: starts_paused,
            // A Linux kernel's, so that `monitor kaslr` is exercised too.
            kernel_map_watch: Some(std::sync::Arc::new(
                minivmm::vm_control::KernelMapWatch::new(0xffff_ffff_8100_0000, true),
            )),
        });
        (FakeVm { model, threads }, target)
    }

    pub fn observe(&self) -> Observed {
        let m = lock(&self.model);
        Observed {
            injected: m.injected,
            killed: m.killed,
            ended: m.ended,
            cpus: m
                .cpus
                .iter()
                .map(|c| {
                    (
                        c.paused,
                        c.single_step,
                        c.hw.iter().any(Option::is_some),
                        !c.sw.is_empty(),
                        !c.soft.is_empty(),
                    )
                })
                .collect(),
        }
    }

    /// Waits for the threads, which end once the target (their channels' other end) is gone.
    pub fn join(self) {
        for t in self.threads {
            t.join().expect("a fake VM thread panicked");
        }
    }
}

fn vcpu_thread(cpu: usize, rx: Receiver<VcpuControl>, model: &Mutex<Model>, debug: &DebugChannel) {
    while let Ok(msg) = rx.recv() {
        match msg {
            // Like the real vCPU thread: a resume is served in order with the debug
            // requests queued before it (the stub posts those without waiting), answered,
            // and then the vCPU runs.
            VcpuControl::Debug(VcpuDebug::Resume { stops_received }) => {
                let m = &mut lock(model);
                let c = &mut m.cpus[cpu];
                if !c.paused {
                    debug.send(cpu, VcpuDebugStatus::Error(DebugError::Running));
                    continue;
                }
                let run = stops_received >= c.stops_sent;
                c.paused = !run;
                debug.send(cpu, VcpuDebugStatus::CommandComplete);
                if run {
                    run_cpu(m, cpu, debug);
                }
            }
            VcpuControl::Debug(req) => {
                let answer = serve(&mut lock(model), cpu, req);
                debug.send(cpu, answer);
            }
            VcpuControl::Resume => {
                let m = &mut lock(model);
                m.cpus[cpu].paused = false;
                run_cpu(m, cpu, debug);
            }
            VcpuControl::Pause => lock(model).cpus[cpu].paused = true,
            _ => {}
        }
    }
}

/// What `Vcpu::vcpu_control_debug` does, on the model (resumes are `vcpu_thread`'s).
fn serve(m: &mut Model, cpu: usize, req: VcpuDebug) -> VcpuDebugStatus {
    if !m.cpus[cpu].paused {
        return VcpuDebugStatus::Error(DebugError::Running);
    }
    if m.rng.chance(1, 200) {
        m.injected += 1;
        return VcpuDebugStatus::Error(DebugError::NotMapped(0));
    }
    let Model { mem, cpus, .. } = m;
    let c = &mut cpus[cpu];
    match req {
        VcpuDebug::Resume { .. } => unreachable!("resumes are served by vcpu_thread"),
        VcpuDebug::ReadRegs => VcpuDebugStatus::RegValues(Box::new(c.regs.clone())),
        VcpuDebug::ReadStopState => VcpuDebugStatus::StopState(StopState::from(&c.regs)),
        VcpuDebug::Snapshot => VcpuDebugStatus::Error(DebugError::Running),
        VcpuDebug::WriteRegs(r) => {
            c.regs = *r;
            VcpuDebugStatus::CommandComplete
        }
        VcpuDebug::WriteMem(addr, data, space) => {
            match archdebug::write_memory(mem, &c.ctx(), space, addr, &data) {
                Ok(()) => VcpuDebugStatus::CommandComplete,
                Err(e) => VcpuDebugStatus::Error(e),
            }
        }
        VcpuDebug::EnableSinglestep(on) => {
            c.single_step = on;
            VcpuDebugStatus::CommandComplete
        }
        VcpuDebug::SetHwBreakPoint(slots) => match debugreg_array(&slots) {
            Ok(_) => {
                c.hw = slots;
                VcpuDebugStatus::CommandComplete
            }
            Err(e) => VcpuDebugStatus::Error(DebugError::from(e)),
        },
        VcpuDebug::SetSwBreakPoints(mut addrs) => {
            addrs.sort_unstable();
            c.sw = addrs;
            VcpuDebugStatus::CommandComplete
        }
        VcpuDebug::SetSoftWatchpoints(watches) => {
            let ctx = c.ctx();
            c.soft = watches
                .iter()
                .map(|&(addr, len)| SoftWatch::new(mem, &ctx, addr, len))
                .collect();
            VcpuDebugStatus::CommandComplete
        }
        VcpuDebug::Translate(vaddr) => VcpuDebugStatus::Translation(
            archdebug::translate(mem, &c.ctx(), vaddr).map_err(DebugError::from),
        ),
        VcpuDebug::DescribeSystemRegs => VcpuDebugStatus::Text(format!(
            "cr0 {:#x} cr3 {:#x}\ncr4 {:#x} efer {:#x}\n",
            c.regs.cr0, c.regs.cr3, c.regs.cr4, c.regs.efer
        )),
    }
}

fn vmm_thread(rx: Receiver<VmEvent>, model: &Mutex<Model>, vcpus: &[Sender<VcpuControl>]) {
    while let Ok(ev) = rx.recv() {
        match ev {
            VmEvent::Request(req, reply) => {
                let answer = control(&mut lock(model), req, vcpus);
                let _ = reply.send(answer);
            }
            VmEvent::DebuggerKill => lock(model).killed = true,
            _ => {}
        }
    }
}

/// The VMM control loop's answer to a GDB request, and what the vCPUs do next.
fn control(m: &mut Model, req: VmRequest, vcpus: &[Sender<VcpuControl>]) -> VmResponse {
    if m.rng.chance(1, 300) {
        m.injected += 1;
        return VmResponse::Refused(VmRefusal::Ending);
    }
    match req {
        // Through each vCPU's queue, as minivmm's control loop does: requests queued before
        // a pause (a posted resume) are served first.
        VmRequest::SuspendVcpus => {
            for tx in vcpus {
                let _ = tx.send(VcpuControl::Pause);
            }
            VmResponse::Ok
        }
        VmRequest::ResumeVcpus => {
            for tx in vcpus {
                let _ = tx.send(VcpuControl::Resume);
            }
            VmResponse::Ok
        }
    }
}

/// Decides how vCPU `i`, just resumed, stops (if it does) and tells the stub, as the vCPU
/// thread does after a KVM_EXIT_DEBUG.
fn run_cpu(m: &mut Model, i: usize, debug: &DebugChannel) {
    if m.ended {
        return;
    }
    if m.rng.chance(1, 100) {
        m.ended = true;
        let code = m.rng.byte();
        let end = if code & 1 == 0 {
            VmEnd::Exited(code)
        } else {
            VmEnd::Signalled(code >> 1)
        };
        debug.send(usize::MAX, VcpuDebugStatus::VmEnded(end));
        return;
    }
    let Model { cpus, rng, .. } = m;
    let c = &mut cpus[i];
    let stop = if c.single_step {
        c.regs.rip = c.regs.rip.wrapping_add(1 + rng.below(15));
        c.single_step = false;
        Some(DebugStop::Step)
    } else {
        match rng.below(8) {
            0 | 1 if !c.sw.is_empty() => {
                c.regs.rip = *rng.pick(&c.sw);
                Some(DebugStop::SwBreak)
            }
            2 => {
                c.hw.iter()
                    .flatten()
                    .find(|s| s.kind == HwBreakKind::Execute)
                    .map(|s| {
                        c.regs.rip = s.addr;
                        DebugStop::HwBreak
                    })
            }
            3 => {
                c.hw.iter()
                    .flatten()
                    .find(|s| s.kind != HwBreakKind::Execute)
                    .map(|s| DebugStop::Watch {
                        addr: s.addr,
                        kind: s.kind,
                    })
            }
            4 if !c.soft.is_empty() => Some(DebugStop::Watch {
                addr: c.soft[rng.index(c.soft.len())].addr,
                kind: HwBreakKind::Write,
            }),
            // Keeps running until GDB interrupts it.
            _ => None,
        }
    };
    if let Some(stop) = stop {
        c.paused = true;
        c.stops_sent += 1;
        // As a real vCPU does, where it stopped travels with the stop (now and then they could
        // not be read).
        let state = (!rng.chance(1, 20)).then(|| StopState::from(&c.regs));
        debug.send(i, VcpuDebugStatus::Stopped { stop, state });
    }
}
