//! Killing xdkms at random points never leaves a truncated file: each is the old or the new one.

use std::collections::HashMap;
use std::path::Path;

use crate::util::{copy_module_dir, fastest, kill_rounds, refs, run_ok, temporary_files, xdkms, TempDir, KMOD30_FILES};

fn outputs(dir: &Path) -> HashMap<&'static str, Vec<u8>> {
    KMOD30_FILES.iter().map(|&name| (name, std::fs::read(dir.join(name)).expect(name))).collect()
}

#[test]
fn killed_depmod_leaves_each_index_old_or_new() {
    let r = refs();
    let version = r.get("XDKMS_KVER_ARM64");
    let work = TempDir::new("kill");
    let dir = copy_module_dir(&r.path("XDKMS_ROOT_ARM64"), &version, work.path());
    let module = dir.join("kernel/fs/ext4/ext4.ko");
    let saved = work.join("ext4.ko");
    std::fs::rename(&module, &saved).expect("move ext4 out");
    run_ok(xdkms().arg("depmod").arg("-b").arg(work.path()).arg(&version));
    let old = outputs(&dir);
    std::fs::rename(&saved, &module).expect("move ext4 back");
    // The kill points are fractions of an uninterrupted run: the fastest of three.
    let full_run = fastest(3, || drop(run_ok(xdkms().arg("depmod").arg("-b").arg(work.path()).arg(&version))));
    let new = outputs(&dir);
    assert_ne!(old["modules.dep"], new["modules.dep"], "the two states must differ");

    // Kill points spread over the run, half of them in its last part where the files are written.
    let mut mixed = 0;
    let killed = kill_rounds(
        24,
        0x5eed_1234,
        full_run,
        |round, r| if round % 2 == 0 { r } else { 0.75 + 0.3 * r },
        |_| {
            for (name, bytes) in &old {
                let path = dir.join(name);
                std::fs::remove_file(&path).expect("remove");
                std::fs::write(&path, bytes).expect("restore old file");
            }
            let mut cmd = xdkms();
            cmd.arg("depmod").arg("-b").arg(work.path()).arg(&version);
            cmd
        },
        |round, delay| {
            let (mut olds, mut news) = (0, 0);
            for name in KMOD30_FILES {
                let now =
                    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("round {round}: {name} missing: {e}"));
                if now == old[name] {
                    olds += 1;
                } else if now == new[name] {
                    news += 1;
                } else {
                    panic!("round {round} (killed after {delay:?}): {name} is neither the old nor the new file");
                }
            }
            if olds > 0 && news > 0 && olds + news == KMOD30_FILES.len() {
                mixed += 1;
            }
        },
    );
    assert!(killed >= 12, "only {killed} of 24 runs were killed before finishing: the test is not testing");
    // The next run removes the temporary files the killed ones left beside the indexes.
    run_ok(xdkms().arg("depmod").arg("-b").arg(work.path()).arg(&version));
    assert_eq!(outputs(&dir), new);
    let temporaries = temporary_files(&dir);
    assert!(temporaries.is_empty(), "temporary files of killed runs remain: {temporaries:?}");
    eprintln!("{killed} of 24 runs killed, {mixed} left a mix of old and new files");
}

/// `xdkms initramfs inject` in place, killed at random points: the image is always the original
/// or the complete new one; with -o the original is never touched.
#[test]
fn killed_inject_leaves_the_image_whole() {
    let r = refs();
    let (root, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
    let work = TempDir::new("kill-inject");
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    std::fs::write(tree.join("bin/payload"), vec![3u8; 4 << 20]).expect("write");
    let original = {
        let out = run_ok(std::process::Command::new("sh").arg("-c").arg(format!(
            "cd '{}' && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc | xz --check=crc32",
            tree.display()
        )));
        out.stdout
    };
    let image = work.join("image.img");
    let inject = |extra: &[&str]| {
        let mut cmd = xdkms();
        cmd.env("SOURCE_DATE_EPOCH", "1").args(["initramfs", "inject", "--root"]).arg(&root).args(["-k", &version]);
        cmd.args(extra).arg(&image).args(["nvme", "e1000e"]);
        cmd
    };
    // The kill points are fractions of an uninterrupted run: the fastest of three (the other
    // tests running at the same time, qemu boots, make single timings vary).
    let full_run = fastest(3, || {
        std::fs::write(&image, &original).expect("write");
        run_ok(&mut inject(&[]));
    });
    let new = std::fs::read(&image).expect("read");
    assert_ne!(new, original);
    let out = work.join("out.img");
    let out_arg = out.to_str().expect("utf-8");
    let mut kept = 0;
    let killed = kill_rounds(
        16,
        0xfeed,
        full_run,
        |_, r| r,
        |round| {
            std::fs::write(&image, &original).expect("restore");
            let _ = std::fs::remove_file(&out);
            let extra: &[&str] = if round % 2 == 0 { &[] } else { &["-o", out_arg] };
            let mut cmd = inject(extra);
            cmd.stderr(std::process::Stdio::null());
            cmd
        },
        |round, _| {
            let now = std::fs::read(&image).expect("the image is always there");
            if round % 2 == 0 {
                assert!(
                    now == original || now == new,
                    "round {round}: the image is neither the original nor the new one"
                );
                kept += usize::from(now == original);
            } else {
                assert!(now == original, "round {round}: -o changed the input image");
                if let Ok(written) = std::fs::read(&out) {
                    assert!(written == new, "round {round}: a partial output image");
                }
            }
        },
    );
    assert!(killed >= 6, "only {killed} of 16 runs were killed before finishing");
    // The next run, in place and with -o, removes the temporary files the killed ones left.
    run_ok(&mut inject(&[]));
    run_ok(&mut inject(&["-o", work.join("out.img").to_str().expect("utf-8")]));
    let temporaries = temporary_files(work.path());
    assert!(temporaries.is_empty(), "temporary files of killed runs remain: {temporaries:?}");
    eprintln!("{killed} of 16 injections killed; {kept} left the original in place");
}
