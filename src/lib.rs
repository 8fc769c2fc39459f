//! minivmm as a library: the binary in `main.rs` is its command line; the tests and fuzz
//! harnesses in `tests/` reach the pure parts (loaders, page walker, debug registers) and the
//! GDB stub through here.

pub mod arch;
pub mod builder;
pub mod coredump;
pub mod devices;
pub mod gdb;
pub mod loader;
pub mod memory;
pub mod teardown;
pub mod terminal;
pub mod vcpu;
pub mod vm_control;
pub mod vmm;
