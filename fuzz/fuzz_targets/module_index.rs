//! Fuzzes the module index (`modules.*.bin`) reader: lookups and full dumps of any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xdkms::index::Index;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = Index::new(data) {
        let _ = index.get(b"ext4");
        let _ = index.get(b"");
        let _ = index.entries();
    }
});
