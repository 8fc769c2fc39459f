//! minivmm: a minimal KVM virtual machine monitor with a built-in GDB stub.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use minivmm::vmm::{self, Outcome, VmConfig, status};

/// The command line Linux guests get unless --cmdline says otherwise: the serial console,
/// and reboot through the keyboard controller, which ends minivmm.
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k";

const EXAMPLES: &str = "\
Examples:
  minivmm --kernel bzImage
  minivmm --kernel bzImage --initrd initramfs.cpio.gz --cpus 2 --mem 1024
  minivmm --kernel vmlinux --cmdline 'console=ttyS0 reboot=k nokaslr'
  minivmm --kernel bzImage --gdb 1234        # then: gdb vmlinux -ex 'target remote :1234'

The guest's serial console (COM1) is this terminal: output to stdout, input from stdin.
On a terminal, Ctrl-A x quits. RUST_LOG=debug shows what minivmm is doing.

Exit status:
  0    the guest rebooted or powered off (Linux 'reboot' or 'poweroff': i8042 or ACPI)
  1    minivmm could not start the VM (bad input, KVM unavailable, ...)
  2    bad command line
  3    the guest triple-faulted (CPU shutdown)
  4    a vCPU hit an error minivmm cannot continue from (report on stderr)
  5    the user quit with Ctrl-A x
  6    GDB ended the VM ('kill' or 'monitor quit')
  130  interrupted by SIGINT; 143 terminated by SIGTERM";

/// minivmm boots a Linux bzImage, vmlinux or PVH kernel in a KVM virtual machine.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    /// Kernel to boot: a Linux bzImage, an ELF vmlinux (64-bit entry) or a PVH ELF
    /// (recognised by content)
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,

    /// Initial ramdisk (initramfs) to hand to the kernel
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,

    /// Kernel command line
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    cmdline: String,

    /// Guest memory in MiB; above 3072 the memory is split around the 32-bit MMIO hole
    #[arg(long, value_name = "MiB", default_value_t = 256)]
    mem: u64,

    /// Number of vCPUs; the first boots the kernel, the others wait for INIT/SIPI
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u32,

    /// Start the GDB stub on [ADDR:]PORT (address 127.0.0.1 unless given: the stub can read
    /// and write all guest memory). The VM waits before its first instruction until GDB attaches.
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = parse_gdb_addr)]
    gdb: Option<SocketAddr>,

    /// With --gdb: start the VM at once; GDB can attach whenever it likes
    #[arg(long, requires = "gdb")]
    gdb_no_wait: bool,

    /// On a host whose KVM emulates guest code (nested KVM without VMX/SVM), minivmm adds
    /// 'noxsave clearcpuid=popcnt,ssse3' to a Linux kernel's command line; this prevents it
    #[arg(long)]
    no_host_workarounds: bool,
}

/// `1234` means 127.0.0.1:1234; `ADDR:PORT` is taken as given.
fn parse_gdb_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("'{s}' is not PORT or ADDR:PORT (for example 1234 or 0.0.0.0:1234)"))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("minivmm=info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let config = VmConfig {
        kernel: cli.kernel,
        initrd: cli.initrd,
        cmdline: cli.cmdline,
        mem_mib: cli.mem,
        cpus: cli.cpus,
        gdb: cli.gdb,
        gdb_wait: !cli.gdb_no_wait,
        host_workarounds: !cli.no_host_workarounds,
    };
    match vmm::run(&config) {
        Ok(outcome) => exit_for(outcome),
        Err(e) => {
            eprintln!("minivmm: error: {e}");
            ExitCode::from(status::SETUP_FAILED)
        }
    }
}

fn exit_for(outcome: Outcome) -> ExitCode {
    match &outcome {
        Outcome::TripleFault { cpu } => {
            eprintln!("minivmm: the guest triple-faulted on vCPU {cpu} (CPU shutdown)")
        }
        Outcome::Crashed { cpu, report } => eprintln!("minivmm: vCPU {cpu} stopped: {report}"),
        Outcome::DebuggerKill => eprintln!("minivmm: killed from GDB"),
        Outcome::Reset | Outcome::PowerOff | Outcome::UserQuit | Outcome::Signal(_) => {}
    }
    ExitCode::from(outcome.exit_status())
}
