//! Building the VM, as a builder apart from the running VM: checks the user's input, opens
//! KVM, lays out guest memory and firmware tables, loads the kernel, creates the devices and
//! the vCPUs, and starts the vCPU, console and GDB threads. `vmm` then runs what this built.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_API_VERSION, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use log::{debug, info};
use thiserror::Error;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::boot::{self, BootEntry};
use crate::arch::cpu::{self, CpuidFilter};
use crate::arch::kaslr::install_kernel_map_trap;
use crate::arch::probe::{HostQuirks, probe_host};
use crate::arch::{acpi, mptable};
use crate::coredump::{CoreError, CoreFile};
use crate::devices::acpi_pm::{AcpiPm, PM_BASE, PM_LEN};
use crate::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use crate::devices::pvpanic::{PVPANIC_LEN, PVPANIC_PORT, PvPanic};
use crate::devices::serial::{
    COM1_BASE, COM1_IRQ, COM1_LEN, ConsoleThread, InputEvent, IrqTrigger, Serial,
    spawn_input_thread,
};
use crate::devices::{PioBus, PioDevice};
use crate::gdb::{DebugCaps, GdbError, GdbListener, GdbServer, GdbSetup};
use crate::loader::{self, BootSpec};
use crate::memory::{self, GuestMem};
use crate::teardown::Teardown;
use crate::terminal::RawTerminal;
use crate::vcpu::{self, Vcpu, VcpuHandle};
use crate::vm_control::{DebugChannel, KernelMapWatch, VmEvent};

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// bzImage, vmlinux or PVH ELF.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The kernel command line (Linux may get host workarounds appended).
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    pub cpus: u32,
    /// Where the GDB stub listens, if at all.
    pub gdb: Option<SocketAddr>,
    /// With `gdb`: hold the VM before its first instruction until GDB attaches.
    pub gdb_wait: bool,
    /// On a host that emulates guest code, add LINUX_EMULATED_HOST_ARGS to a Linux command line.
    pub host_workarounds: bool,
    /// Where to write a core file of the guest when it dies (panic, triple fault, ...).
    pub core: Option<PathBuf>,
    /// End the VM after this much wall time (`--timeout`).
    pub timeout: Option<std::time::Duration>,
    /// How the VM is let go of at the end: by a keeper process, or waited for here.
    pub teardown: Teardown,
}

/// Features such a host advertises in CPUID whatever minivmm asks, but cannot run: Linux must
/// be told on its command line not to use them.
pub const LINUX_EMULATED_HOST_ARGS: &str = "noxsave clearcpuid=popcnt,ssse3";

/// Why the VM could not be built.
#[derive(Debug, Error)]
pub enum VmError {
    /// /dev/kvm cannot be opened.
    #[error(
        "cannot open /dev/kvm ({0}): is KVM enabled and may this user read and write /dev/kvm?"
    )]
    OpenKvm(kvm_ioctls::Error),
    /// /dev/kvm is something else.
    #[error(
        "/dev/kvm does not answer KVM's ioctls: it is not a KVM device (check `ls -l /dev/kvm`: char 10,232)"
    )]
    NotKvm,
    /// The host speaks another KVM API version.
    #[error("/dev/kvm speaks KVM API version {0}, minivmm needs version {KVM_API_VERSION}")]
    KvmVersion(i32),
    /// `--cpus` is out of range.
    #[error(
        "--cpus {asked}: give between 1 and {max} (the most this host's KVM and x86 APIC IDs allow)"
    )]
    BadCpuCount { asked: u32, max: u32 },
    /// Guest memory cannot be laid out or allocated.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// The kernel or initrd cannot be read or loaded.
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    /// The boot page tables or GDT cannot be written.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// A vCPU cannot be configured (CPUID, MSRs).
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    /// The MP table cannot be written.
    #[error("MP table: {0}")]
    Mptable(#[from] mptable::MptableError),
    /// The ACPI tables cannot be written.
    #[error("ACPI tables: {0}")]
    Acpi(#[from] acpi::AcpiError),
    /// A KVM ioctl on the VM or a vCPU failed.
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// The GDB port cannot be bound or its thread started.
    #[error(transparent)]
    Gdb(#[from] GdbError),
    /// The --core path cannot be written.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// An eventfd (serial IRQ, GDB wake-up) cannot be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// A thread (console, input, vCPU) cannot be started.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    /// Standard output cannot be duplicated for the console thread.
    #[error("cannot duplicate standard output for the console: {0}")]
    Stdout(std::io::Error),
    /// The signal handler that kicks vCPUs out of KVM_RUN cannot be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickHandler(vmm_sys_util::errno::Error),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Sends a fixed event to the control loop when a device's line fires (a reset, a
/// power-off request or a guest panic).
struct EventTrigger {
    events: Mutex<Sender<VmEvent>>,
    event: fn() -> VmEvent,
}

impl EventTrigger {
    fn new(events: &Sender<VmEvent>, event: fn() -> VmEvent) -> Self {
        EventTrigger {
            events: Mutex::new(events.clone()),
            event,
        }
    }
}

impl Trigger for EventTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        let tx = crate::devices::lock(&self.events);
        tx.send((self.event)())
            .map_err(|_| std::io::Error::other("VMM control loop is gone"))
    }
}

/// Guest memory, the VM with its in-kernel devices, and the firmware tables in memory.
/// Returns the RSDP's address.
fn build_vm(
    kvm: &Kvm,
    mem_mib: u64,
    cpus: u8,
) -> Result<(GuestMem, VmFd, vm_memory::GuestAddress), VmError> {
    let mem = memory::create_guest_memory(mem_mib)?;
    let vm = create_vm(kvm, &mem)?;
    boot::write_boot_tables(&mem)?;
    match mptable::setup_mptable(&mem, cpus) {
        // The MP table only serves kernels without ACPI; the MADT describes every CPU.
        Err(mptable::MptableError::DoesNotFit { .. }) => {
            info!(
                "{cpus} vCPUs do not fit in an MP table below 640 KiB; describing them in ACPI only"
            )
        }
        other => other?,
    }
    let rsdp = acpi::setup_acpi(&mem, cpus)?;
    Ok((mem, vm, rsdp))
}

/// Where the guest's ISA interrupts, timers and APICs live: KVM's in-kernel models.
fn create_vm(kvm: &Kvm, mem: &GuestMem) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    // Intel VMX needs a 3-page TSS area for real-mode emulation; put it out of RAM's way.
    vm.set_tss_address(0xfffb_d000)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    memory::register_guest_memory(&vm, mem)?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(vm)
}

fn setup_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    config: &VmConfig,
    quirks: &HostQuirks,
    entry: &BootEntry,
) -> Result<Vec<VcpuFd>, VmError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let filter = CpuidFilter {
        hide_unemulated: quirks.emulates_guest_code,
    };
    let mut vcpus = Vec::with_capacity(config.cpus as usize);
    for index in 0..config.cpus {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let cpuid = cpu::vcpu_cpuid(&supported, index, config.cpus, filter)?;
        cpu::setup_vcpu(&fd, &cpuid)?;
        fd.set_fpu(&boot::boot_fpu())
            .map_err(kvm_err("KVM_SET_FPU"))?;
        // Application processors keep their reset state and wait for INIT/SIPI in KVM.
        if index == 0 {
            let sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
            fd.set_sregs(&boot::boot_sregs(sregs, entry))
                .map_err(kvm_err("KVM_SET_SREGS"))?;
            fd.set_regs(&boot::boot_regs(entry))
                .map_err(kvm_err("KVM_SET_REGS"))?;
        }
        vcpus.push(fd);
    }
    Ok(vcpus)
}

fn open_kvm(config: &VmConfig) -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let version = kvm.get_api_version();
    if version < 0 {
        return Err(VmError::NotKvm);
    }
    if version != KVM_API_VERSION as i32 {
        return Err(VmError::KvmVersion(version));
    }
    let max = kvm.get_max_vcpus().min(usize::from(cpu::MAX_CPUS)) as u32;
    if config.cpus == 0 || config.cpus > max {
        return Err(VmError::BadCpuCount {
            asked: config.cpus,
            max,
        });
    }
    Ok(kvm)
}

/// Standard output without Rust's line buffering: the console thread batches by itself and
/// one batch should be one write(2).
fn raw_stdout() -> Result<Box<dyn std::io::Write + Send>, VmError> {
    use std::os::fd::AsFd;
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(VmError::Stdout)?;
    Ok(Box::new(std::fs::File::from(fd)))
}

/// The devices on the port-I/O bus, and the console thread behind the UART.
struct Devices {
    pio: PioBus,
    serial: Arc<Mutex<Serial>>,
    console: ConsoleThread,
}

/// COM1 (output through the console thread, IRQ 4 through an irqfd), and the i8042, the
/// ACPI power-management registers and pvpanic, through which the guest ends the VM.
fn setup_devices(vm: &VmFd, events: &Sender<VmEvent>) -> Result<Devices, VmError> {
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(kvm_err("KVM_IRQFD"))?;
    let (console, console_thread) = ConsoleThread::spawn(raw_stdout()?).map_err(VmError::Thread)?;
    let serial = Arc::new(Mutex::new(Serial::new(
        IrqTrigger(serial_irq),
        Box::new(console),
    )));
    let reset = || VmEvent::GuestReset;
    let i8042: Arc<Mutex<dyn PioDevice>> =
        Arc::new(Mutex::new(I8042::new(EventTrigger::new(events, reset))));
    let acpi_pm: Arc<Mutex<dyn PioDevice>> = Arc::new(Mutex::new(AcpiPm::new(
        EventTrigger::new(events, || VmEvent::GuestPowerOff),
        EventTrigger::new(events, reset),
    )));
    let pvpanic: Arc<Mutex<dyn PioDevice>> =
        Arc::new(Mutex::new(PvPanic::new(EventTrigger::new(events, || {
            VmEvent::GuestPanicked {
                // Only vCPU threads do port I/O.
                cpu: vcpu::current_index().unwrap_or(0),
            }
        }))));
    let pio = PioBus::new(vec![
        (
            COM1_BASE,
            COM1_LEN,
            serial.clone() as Arc<Mutex<dyn PioDevice>>,
        ),
        (I8042_BASE, I8042_LEN, i8042),
        (PM_BASE, PM_LEN, acpi_pm),
        (PVPANIC_PORT, PVPANIC_LEN, pvpanic),
    ]);

    Ok(Devices {
        pio,
        serial,
        console: console_thread,
    })
}

/// A built VM, running or about to: the vCPU threads, the GDB thread and the console.
pub struct Vm {
    /// The VM's own fd. It must stay open while the guest runs: closing it makes KVM
    /// release the VM's irqfds, and the serial port's interrupts would never arrive.
    pub vm_fd: VmFd,
    /// Guest RAM (shared with the vCPUs and the GDB thread).
    pub mem: GuestMem,
    /// The core file to write if the guest dies.
    pub core: Option<CoreFile>,
    pub vcpus: Vec<VcpuHandle>,
    /// The GDB thread and the channel on which the VM tells it how the VM ended.
    pub debugger: Option<(GdbServer, DebugChannel)>,
    /// The thread writing the guest's serial output to stdout.
    pub console: ConsoleThread,
    /// The terminal in raw mode while the VM runs (restored when dropped).
    pub terminal: RawTerminal,
}

/// Builds the VM from `config` and starts its threads; `events` is the control loop's
/// channel, to which the devices, vCPUs and GDB thread report.
pub fn build(config: &VmConfig, events: &Sender<VmEvent>) -> Result<Vm, VmError> {
    let ranges = memory::ram_ranges(config.mem_mib)?;
    memory::check_fits_host(config.mem_mib)?;
    // Bad files are the likeliest mistake: report them before touching KVM. Reads stop at
    // the guest's size, which fits the host: a device like /dev/zero cannot exhaust it.
    let mem_bytes = config.mem_mib.saturating_mul(1 << 20);
    let images = loader::read_images(&config.kernel, config.initrd.as_deref(), mem_bytes)?;
    let core = config
        .core
        .as_deref()
        .map(CoreFile::create)
        .transpose()?
        .map(|c| c.for_linux_linked_at(loader::link_text(&images.kernel)));
    let kvm = open_kvm(config)?;
    let gdb_listener = config.gdb.map(GdbListener::bind).transpose()?;
    let (mem, vm, rsdp) = build_vm(&kvm, config.mem_mib, config.cpus as u8)?;
    let quirks = probe_host(&kvm);
    let e820 = memory::e820_map(&ranges);
    let workarounds =
        (quirks.emulates_guest_code && config.host_workarounds).then_some(LINUX_EMULATED_HOST_ARGS);
    let spec = BootSpec {
        kernel: &config.kernel,
        initrd: config.initrd.as_deref(),
        cmdline: &config.cmdline,
        linux_cmdline_extra: workarounds,
        low_ram_end: memory::low_ram_end(config.mem_mib),
        e820: &e820,
        acpi_rsdp: Some(rsdp.0),
    };
    let kernel = loader::load_image(&mem, &spec, &images.kernel, images.initrd.as_deref())?;
    debug!(
        "loaded {:?} kernel, entry {:?}, command line {:?}",
        kernel.format, kernel.entry, kernel.cmdline
    );
    if quirks.emulates_guest_code {
        info!(
            "this host's KVM emulates guest code: hiding CMPXCHG16B/XSAVE/AVX in CPUID, emulating int3/clac/stac/fwait where it fails"
        );
        if kernel.cmdline != config.cmdline {
            info!(
                "added '{LINUX_EMULATED_HOST_ARGS}' to the Linux command line for this host (--no-host-workarounds to prevent)"
            );
        }
    }
    let vcpu_fds = setup_vcpus(&kvm, &vm, config, &quirks, &kernel.entry)?;

    let Devices {
        pio,
        serial,
        console: console_thread,
    } = setup_devices(&vm, events)?;

    let terminal = RawTerminal::enter();
    let quit_tx = Mutex::new(events.clone());
    spawn_input_thread(
        serial,
        Box::new(std::io::stdin()),
        terminal.is_raw(),
        move |e| match e {
            InputEvent::Quit => {
                let _ = crate::devices::lock(&quit_tx).send(VmEvent::UserQuit);
            }
        },
    )
    .map_err(VmError::Thread)?;

    let block_irq_when_stepping = quirks.blocks_irq_when_stepping;
    let host_syncs_regs = quirks.syncs_regs;
    let (debug_tx, debug_rx) = channel();
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?);
    let debug_channel = config
        .gdb
        .map(|_| DebugChannel::new(debug_tx, wake.clone()));
    let start_paused = config.gdb.is_some() && config.gdb_wait;

    let kernel_map_watch = config
        .gdb
        .and(loader::link_text(&images.kernel))
        .map(|link| Arc::new(KernelMapWatch::new(link, watch_kernel_mapping(&vm))));

    vcpu::install_kick_handler().map_err(VmError::KickHandler)?;
    let mut handles = Vec::with_capacity(vcpu_fds.len());
    for (index, fd) in vcpu_fds.into_iter().enumerate() {
        let vcpu = Vcpu {
            index,
            fd,
            pio: pio.clone(),
            mem: mem.clone(),
            events: events.clone(),
            debug: debug_channel.clone(),
            block_irq_when_stepping,
            host_syncs_regs,
            kernel_map_watch: kernel_map_watch.clone(),
        };
        handles.push(vcpu.spawn(start_paused).map_err(VmError::Thread)?);
    }

    let gdb_server = match gdb_listener {
        Some(listener) => Some(GdbServer::start(
            listener,
            GdbSetup {
                vcpus: handles.iter().map(VcpuHandle::control_sender).collect(),
                from_vcpu: debug_rx,
                wake,
                vm: events.clone(),
                mem: mem.clone(),
                caps: DebugCaps {
                    data_breakpoints_fire: quirks.data_watchpoints_fire,
                    exec_breakpoints_fire: quirks.exec_breakpoints_fire,
                    int3_exits: quirks.int3_exits,
                },
                vm_starts_paused: start_paused,
                kernel_map_watch: kernel_map_watch.clone(),
            },
        )?),
        None => None,
    };
    if config.gdb.is_some() {
        tell_user_what_debugging_lacks(&quirks);
    }
    Ok(Vm {
        vm_fd: vm,
        mem,
        core,
        vcpus: handles,
        debugger: gdb_server.zip(debug_channel),
        console: console_thread,
        terminal,
    })
}

/// Traps the kernel's GS-base writes, so that a debugger can be stopped when the kernel has
/// mapped itself (KASLR). Hosts without MSR filters (before Linux 5.10) only lose that stop.
fn watch_kernel_mapping(vm: &VmFd) -> bool {
    match install_kernel_map_trap(vm) {
        Ok(()) => {
            debug!("kernel-mapping trap: on (GS-base writes exit to minivmm)");
            true
        }
        Err(e) => {
            debug!("kernel-mapping trap: off (this host's KVM has no MSR filter: {e})");
            false
        }
    }
}

/// Says once, at start-up, which debugger features this host makes minivmm do differently.
fn tell_user_what_debugging_lacks(quirks: &HostQuirks) {
    if !quirks.data_watchpoints_fire {
        info!(
            "this host's KVM never fires data breakpoints: minivmm emulates GDB's write watchpoints by single-stepping (slow) and refuses rwatch/awatch"
        );
    }
    match (quirks.int3_exits, quirks.exec_breakpoints_fire) {
        (true, true) => {}
        (false, true) => info!(
            "this host's KVM never lets a guest's int3 reach minivmm: GDB's software breakpoints use the debug registers (four at most, shared with hbreak and watch)"
        ),
        (true, false) => {
            info!(
                "this host's KVM never fires execution breakpoints: hbreak is refused (break works)"
            )
        }
        (false, false) => info!(
            "this host's KVM neither lets int3 reach minivmm nor fires execution breakpoints: GDB's break and hbreak are refused"
        ),
    }
}
