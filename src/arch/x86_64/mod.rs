//! x86_64: boot-time CPU state, firmware tables, debug registers and page-table walks.

pub mod acpi;
pub mod debugreg;
pub mod gdb;
pub mod layout;
pub mod mptable;
pub mod paging;
