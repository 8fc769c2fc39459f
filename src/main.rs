//! minivmm: a minimal KVM virtual machine monitor with a built-in GDB stub.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use minivmm::teardown::Teardown;
use minivmm::vmm::{self, Ended, Outcome, VmConfig, status};

/// The command line Linux guests get unless --cmdline says otherwise: the serial console,
/// and reboot through the keyboard controller, which ends minivmm.
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k";

const EXAMPLES: &str = "\
Examples:
  minivmm --kernel bzImage
  minivmm --kernel bzImage --initrd initramfs.cpio.gz --cpus 2 --mem 1024
  minivmm --kernel vmlinux --cmdline 'console=ttyS0 reboot=k nokaslr'
  minivmm --kernel bzImage --gdb 1234        # then: gdb vmlinux -ex 'target remote :1234'
  minivmm --kernel bzImage --timeout 600     # in CI: a hung guest ends with status 8

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
  7    the guest kernel panicked (pvpanic: Linux with CONFIG_PVPANIC_MMIO)
  8    the guest ran longer than --timeout
  9    the VM ended (stderr says why) but the --core file could not be written
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

    /// Write an ELF core file of the whole guest here when it dies (kernel panic, triple
    /// fault, vCPU error, --timeout, SIGTERM): `gdb vmlinux PATH` reads it. Nothing is
    /// written on a clean reboot or power-off; an unwritable PATH is refused at start
    #[arg(long, value_name = "PATH")]
    core: Option<PathBuf>,

    /// On a host whose KVM emulates guest code (nested KVM without VMX/SVM), minivmm adds
    /// 'noxsave clearcpuid=popcnt,ssse3' to a Linux kernel's command line; this prevents it
    #[arg(long)]
    no_host_workarounds: bool,

    /// End the VM after SECONDS of wall time (time stopped in GDB counts) with exit status 8:
    /// for CI, where a hung guest must not hold a job until the job's own limit
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout)]
    timeout: Option<Duration>,

    /// Wait at exit until the host kernel has destroyed the VM (milliseconds to tens of
    /// milliseconds). By default a short-lived child process, 'minivmm-cleanup', holds the VM
    /// while the kernel tears it down, and minivmm exits as soon as the guest is done
    #[arg(long)]
    wait_teardown: bool,
}

/// `1234` means 127.0.0.1:1234; `ADDR:PORT` is taken as given.
fn parse_gdb_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("'{s}' is not PORT or ADDR:PORT (for example 1234 or 0.0.0.0:1234)"))
}

/// A whole number of seconds, at least 1.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("the time limit must be at least 1 second".into()),
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => Err(format!(
            "'{s}' is not a whole number of seconds (for example 600)"
        )),
    }
}

/// What is logged unless RUST_LOG says otherwise: what minivmm's user must act on.
const DEFAULT_LOG_FILTER: &str = "minivmm=info";
/// gdbstub logs protocol chatter at info on every attach ("Unknown command" for each query it
/// does not implement): shown only if RUST_LOG names gdbstub.
const GDBSTUB_LOG_FILTER: &str = "gdbstub=warn";

/// RUST_LOG (or the default), with gdbstub held at warn unless RUST_LOG names it: a bare
/// `info`/`debug`/`trace` is for minivmm and the crates it uses, not gdbstub's chatter.
fn log_filter(rust_log: Option<&str>) -> String {
    let Some(filter) = rust_log.filter(|f| !f.trim().is_empty()) else {
        return format!("{DEFAULT_LOG_FILTER},{GDBSTUB_LOG_FILTER}");
    };
    let verbose_default = filter.split(',').any(|directive| {
        let level = directive.trim().to_ascii_lowercase();
        matches!(level.as_str(), "info" | "debug" | "trace")
    });
    if verbose_default && !filter.contains("gdbstub") {
        format!("{filter},{GDBSTUB_LOG_FILTER}")
    } else {
        filter.to_string()
    }
}

fn main() -> ExitCode {
    let rust_log = std::env::var("RUST_LOG").ok();
    env_logger::Builder::new()
        .parse_filters(&log_filter(rust_log.as_deref()))
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
        core: cli.core,
        timeout: cli.timeout,
        teardown: if cli.wait_teardown {
            Teardown::Wait
        } else {
            Teardown::Background
        },
    };
    match vmm::run(&config) {
        Ok(ended) => exit_for(ended),
        Err(e) => {
            eprintln!("minivmm: error: {e}");
            ExitCode::from(status::SETUP_FAILED)
        }
    }
}

/// The exit status, after a last line on stderr for every ending a CI log must explain.
fn exit_for(ended: Ended) -> ExitCode {
    let outcome = ended.outcome;
    let status = outcome.exit_status();
    match &outcome {
        Outcome::GuestPanicked { cpu } => {
            eprintln!("minivmm: the guest kernel panicked on vCPU {cpu} (pvpanic): status {status}")
        }
        Outcome::TripleFault { cpu } => {
            eprintln!("minivmm: the guest triple-faulted on vCPU {cpu} (CPU shutdown)")
        }
        Outcome::Crashed { cpu, report } => eprintln!("minivmm: vCPU {cpu} stopped: {report}"),
        Outcome::Timeout { after } => eprintln!(
            "minivmm: the guest ran for {} s (--timeout): ended, status {status}",
            after.as_secs()
        ),
        Outcome::DebuggerKill => eprintln!("minivmm: killed from GDB"),
        Outcome::Reset | Outcome::PowerOff | Outcome::UserQuit | Outcome::Signal(_) => {}
    }
    // The core's line comes last: it is what a CI log reader looks for.
    match ended.core {
        Some(Ok(core)) => {
            for cpu in &core.reset_cpus {
                eprintln!(
                    "minivmm: note: vCPU {cpu}'s registers in the core are its reset state: this host's KVM (AMD) resets a vCPU at a triple fault"
                );
            }
            eprintln!("minivmm: {core}: gdb vmlinux {}", core.path.display());
        }
        Some(Err(e)) => {
            eprintln!("minivmm: error: {e}");
            return ExitCode::from(status::CORE_FAILED);
        }
        None => {}
    }
    ExitCode::from(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdbstub_chatter_is_hidden_unless_asked_for() {
        assert_eq!(log_filter(None), "minivmm=info,gdbstub=warn");
        assert_eq!(log_filter(Some("debug")), "debug,gdbstub=warn");
        assert_eq!(log_filter(Some("off")), "off");
        assert_eq!(log_filter(Some("minivmm=debug")), "minivmm=debug");
        assert_eq!(log_filter(Some("gdbstub=trace")), "gdbstub=trace");
    }

    #[test]
    fn timeout_is_a_positive_whole_number_of_seconds() {
        assert_eq!(parse_timeout("5"), Ok(Duration::from_secs(5)));
        assert!(
            parse_timeout("0")
                .unwrap_err()
                .contains("at least 1 second")
        );
        for bad in ["", "-1", "1.5", "5s", "abc"] {
            assert!(
                parse_timeout(bad).unwrap_err().contains("whole number"),
                "{bad:?}"
            );
        }
    }
}
