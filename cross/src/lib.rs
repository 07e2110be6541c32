//! xdkms's view of a target system: paths inside a sysroot, its kernels and their headers.

pub mod kernel;
pub mod sysroot;

pub use sysroot::Sysroot;
