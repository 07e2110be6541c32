//! xdkms's view of a target system: paths inside a sysroot (and, later, kernels and toolchains).

pub mod sysroot;

pub use sysroot::Sysroot;
