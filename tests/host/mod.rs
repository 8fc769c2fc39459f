// Each test crate that includes this module uses a different subset of it.
#![allow(dead_code)]

//! Which kind of KVM the tests run on, known from outside minivmm (never from its own probe),
//! so that a test can assert the path minivmm must take on that host and fail if it took
//! another.
//!
//! `MINIVMM_TEST_HOST` names it (the Makefile sets it for each host it runs the suite on); unset, the
//! CPU flags decide: a CPU with VMX or SVM is a hardware-virtualising host, one without
//! (a nested KVM that emulates guest code) the emulating kind.

use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestHost {
    /// KVM runs guest code through its instruction emulator: int3 arrives as an emulation
    /// failure, data breakpoints never fire, user-mode system calls are broken.
    Emulating,
    /// Hardware virtualisation as users have it (the hwkvm test host on the corrected QEMU).
    Hardware,
    /// Hardware virtualisation whose int3 never reaches KVM (hwkvm on Debian's unpatched
    /// QEMU 10): the guest takes the #BP itself.
    HardwareInt3NotIntercepted,
    /// Hardware virtualisation whose debug-register breakpoints never fire (hwkvm on QEMU 7.2).
    HardwareNoDebugRegisters,
}

/// How a software breakpoint (`break`) must reach minivmm on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwBreakPath {
    /// A planted int3, reported by KVM_EXIT_DEBUG with exception 3.
    KvmExitDebug,
    /// A planted int3 that the host fails to emulate (KVM_EXIT_INTERNAL_ERROR).
    EmulationFailure,
    /// No int3 at all: a debug register, because int3 would go to the guest.
    DebugRegister,
    /// Neither works: `break` must be refused.
    Refused,
}

impl TestHost {
    pub fn current() -> TestHost {
        match std::env::var("MINIVMM_TEST_HOST").as_deref() {
            Ok("emulating") => TestHost::Emulating,
            Ok("hardware") => TestHost::Hardware,
            Ok("hardware-int3-not-intercepted") => TestHost::HardwareInt3NotIntercepted,
            Ok("hardware-no-debug-registers") => TestHost::HardwareNoDebugRegisters,
            Ok(other) => panic!(
                "MINIVMM_TEST_HOST={other:?}: expected emulating, hardware, \
                 hardware-int3-not-intercepted or hardware-no-debug-registers"
            ),
            Err(_) => {
                let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
                let hw = cpuinfo
                    .lines()
                    .filter(|l| l.starts_with("flags"))
                    .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
                if hw {
                    TestHost::Hardware
                } else {
                    TestHost::Emulating
                }
            }
        }
    }

    /// Whether guest code runs in hardware virtualisation (user-mode system calls work,
    /// a Linux guest boots in seconds).
    pub fn is_hardware(self) -> bool {
        self != TestHost::Emulating
    }

    pub fn exec_breakpoints_fire(self) -> bool {
        self != TestHost::HardwareNoDebugRegisters
    }

    pub fn data_breakpoints_fire(self) -> bool {
        matches!(
            self,
            TestHost::Hardware | TestHost::HardwareInt3NotIntercepted
        )
    }

    pub fn sw_break_path(self) -> SwBreakPath {
        match self {
            TestHost::Emulating => SwBreakPath::EmulationFailure,
            TestHost::Hardware => SwBreakPath::KvmExitDebug,
            TestHost::HardwareInt3NotIntercepted => SwBreakPath::DebugRegister,
            TestHost::HardwareNoDebugRegisters => SwBreakPath::Refused,
        }
    }
}

/// Says, past libtest's output capture so that it shows in every run, what this host could
/// not exercise.
pub fn not_exercised(what: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "NOT EXERCISED ON THIS HOST ({:?}): {what}",
        TestHost::current()
    );
}

/// Whether a Linux boot that ended before user space ended in the hardware-virtualised
/// test host's known early-boot triple fault: about one boot in thirty on that host (an L1
/// under QEMU's TCG) triple-faults while the kernel still runs on its boot CPU alone, at a
/// different point each time, once even with a single vCPU; not yet classified (QEMU 7.2 as
/// the VMM in the same L1 hung too). Tests boot again once when this is what happened, and
/// say so in every run; a second one fails the test.
pub fn known_test_host_triple_fault(status: Option<i32>, stdout: &str, stderr: &str) -> bool {
    TestHost::current().is_hardware()
        && std::env::var_os("MINIVMM_ON_TEST_HOST").is_some()
        && status == Some(3)
        && stderr.contains("triple-faulted")
        && !stdout.contains("Run /init")
}

/// Says that a boot is being repeated after [`known_test_host_triple_fault`].
pub fn retrying_after_test_host_triple_fault(what: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "TEST HOST FLAKE: {what}: the guest triple-faulted in early boot (the hardware-virtualised test host's unclassified fault, see README); booting once more"
    );
}

/// Whether a Linux boot whose serial output stopped for `quiet` (minivmm still running, no
/// prompt) is the hardware-virtualised test host's known stall: once in several dozen boots
/// there, a 2-vCPU guest stopped printing while bringing up its second CPU (mid-line, no
/// exit, no error) while the previous test's VM was being torn down in the same L1; never
/// seen on the emulating host. Tests boot again once when this is what happened and say so.
pub fn known_test_host_stall(quiet: std::time::Duration) -> bool {
    TestHost::current().is_hardware()
        && std::env::var_os("MINIVMM_ON_TEST_HOST").is_some()
        && quiet >= std::time::Duration::from_secs(60)
}

/// Says that a boot is being repeated after [`known_test_host_stall`].
pub fn retrying_after_test_host_stall(what: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "TEST HOST FLAKE: {what}: the guest's output stalled for a minute in early boot (the hardware-virtualised test host's unclassified stall, see README); booting once more"
    );
}

/// The project's test kernel's build directory (`make test` builds it and names it in
/// MINIVMM_TEST_KERNEL), or None, said, where `what` cannot run: it boots in seconds on a
/// hardware-virtualised host, in many minutes on an emulating one.
pub fn test_kernel(what: &str) -> Option<std::path::PathBuf> {
    if !TestHost::current().is_hardware() {
        not_exercised(&format!("{what} (the test kernel boots in minutes here)"));
        return None;
    }
    match std::env::var_os("MINIVMM_TEST_KERNEL") {
        Some(dir) => Some(std::path::PathBuf::from(dir)),
        None => {
            not_exercised(&format!(
                "{what} (no MINIVMM_TEST_KERNEL: `make test` builds the kernel and sets it)"
            ));
            None
        }
    }
}
