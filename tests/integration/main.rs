//! xdkms's integration tests: one binary, each test against a real reference tool or property.

mod atomic;
mod boot;
mod build_cache;
mod cross;
mod depmod;
mod dkms;
mod dkms_images;
mod docs;
mod erofs_images;
mod ext4_images;
mod ext4_journal;
mod hostile;
mod images;
mod initramfs;
mod kmod34;
mod kmod_cli;
mod layers;
mod modinfo;
mod plan;
mod recipes;
mod robustness;
mod signing;
mod squashfs_images;
mod util;
