//! The architecture seam: everything CPU-specific lives below `arch/<name>/` and is
//! re-exported from here. This is the only place with `cfg(target_arch)`.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::vcpu_ops::{InternalError, VcpuOps};
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;
