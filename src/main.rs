//! minivmm: a minimal KVM virtual machine monitor with a built-in GDB stub.

mod arch;
mod devices;
mod loader;
mod memory;
mod terminal;
mod vcpu;
mod vmm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::vmm::{Outcome, VmConfig};

/// The command line Linux guests get unless --cmdline says otherwise: the serial console,
/// and reboot through the keyboard controller, which ends minivmm.
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k";

const EXAMPLES: &str = "\
Examples:
  minivmm --kernel bzImage
  minivmm --kernel bzImage --initrd initramfs.cpio.gz --cpus 2 --mem 1024
  minivmm --kernel vmlinux --cmdline 'console=ttyS0 reboot=k nokaslr'

The guest's serial console (COM1) is this terminal: output to stdout, input from stdin.
On a terminal, Ctrl-A x quits. RUST_LOG=debug shows what minivmm is doing.

Exit status:
  0    the guest rebooted (reset through the i8042, e.g. Linux 'reboot' with reboot=k)
  1    minivmm could not start the VM (bad input, KVM unavailable, ...)
  2    bad command line
  3    the guest triple-faulted (CPU shutdown)
  4    a vCPU hit an error minivmm cannot continue from (report on stderr)
  5    the user quit with Ctrl-A x
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
}

/// Exit statuses, documented in --help and the README.
mod status {
    pub const SETUP_FAILED: u8 = 1;
    pub const TRIPLE_FAULT: u8 = 3;
    pub const VCPU_ERROR: u8 = 4;
    pub const USER_QUIT: u8 = 5;
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
    match outcome {
        Outcome::Reset => ExitCode::SUCCESS,
        Outcome::TripleFault { cpu } => {
            eprintln!("minivmm: the guest triple-faulted on vCPU {cpu} (CPU shutdown)");
            ExitCode::from(status::TRIPLE_FAULT)
        }
        Outcome::Crashed { cpu, report } => {
            eprintln!("minivmm: vCPU {cpu} stopped: {report}");
            ExitCode::from(status::VCPU_ERROR)
        }
        Outcome::UserQuit => ExitCode::from(status::USER_QUIT),
        Outcome::Signal(sig) => ExitCode::from(128 + sig as u8),
    }
}
