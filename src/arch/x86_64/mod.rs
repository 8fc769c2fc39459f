//! x86_64: boot-time CPU state, firmware tables, debug registers and page-table walks.

pub mod acpi;
pub mod assist;
pub mod boot;
pub mod coredump;
pub mod cpu;
pub mod debug;
pub mod debugreg;
pub mod exits;
pub mod gdb;
pub mod kaslr;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod probe;
pub mod vcpu_ops;
