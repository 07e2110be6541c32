//! Fuzzes the initramfs image reader: segments, every codec's member decoder, newc parsing, the
//! merged view and in-image symlink resolution.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = initramfs::Image::parse(data) {
        let merged = image.merged();
        let _ = merged.resolve("lib/modules/6.1.0/kernel");
        let _ = image.rewrite_start();
        let _ = image.main_codec();
    }
});
