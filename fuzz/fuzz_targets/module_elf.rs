//! Fuzzes the module ELF reader: any bytes must give a result or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xdkms::module::elf::ReadOptions;
use xdkms::module::{ModuleElf, ModuleImage};

fuzz_target!(|data: &[u8]| {
    let image = ModuleImage::Decompressed(data.to_vec());
    let _ = ModuleElf::parse(&image, ReadOptions { export_crcs: true });
});
