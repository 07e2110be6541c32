//! xdkms's view of a target system: paths inside a sysroot, its kernels and their headers, the
//! architectures it may be built for and the toolchains that build for them.

pub mod kernel;
pub mod sysroot;
pub mod target;
pub mod toolchain;

pub use sysroot::{without_path, Entry, EntryKind, Sysroot};
