//! xdkms: DKMS for image builds. The library behind the `xdkms` binary.

pub mod build_cache;
pub mod cli;
pub mod depmod;
pub mod dkms;
pub mod exit;
pub mod fsio;
pub mod image_root;
pub mod index;
pub mod initramfs_cmd;
pub mod inject;
pub mod kmod_release;
pub mod memory;
pub mod modinfo;
pub mod module;
pub mod names;
pub mod progress;
pub mod sign_file;
pub mod signing;
