//! xdkms's integration tests: one binary, each test against a real reference tool or property.

mod depmod;
mod util;
