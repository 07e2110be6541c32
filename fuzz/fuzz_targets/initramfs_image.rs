//! Fuzzes the initramfs image reader: segments, every codec's member decoder, newc parsing, the
//! spooled tree (last member wins, hard links) and in-image symlink resolution.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("initramfs-fuzz-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    // A few MiB of file data at most: a small input must not fill the disk.
    let options = initramfs::spool::SpoolOptions { dir: &dir, keep: &|_| true, separate: &|_| false, limit: 8 << 20 };
    if let Ok(spool) = initramfs::spool::Spool::read(data, &options) {
        let tree = spool.tree(0);
        let _ = tree.resolve("lib/modules/6.1.0/kernel");
        let _ = spool.tree(spool.rewrite_start());
        let _ = spool.main_codec();
    }
});
