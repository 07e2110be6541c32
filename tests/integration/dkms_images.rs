//! The DKMS commands with `--root IMAGE` (issue 12): install, status and remove on an ext4
//! image, a squashfs, an erofs, a cpio.zst and a tar.zst of a root holding Debian's kernel headers print what they print on
//! the directory the image was made from and leave the image holding what they leave there.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::images::{as_on_image, image_stderr, text};
use crate::util::{refs, run, run_ok, xdkms, TempDir};

/// A root with Debian's amd64 headers (hard links into the cache), the module lists depmod
/// reads and os-release: what `xdkms install --root` needs.
fn headers_root(dir: &Path) -> String {
    let r = refs();
    let (cache, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
    let modules = dir.join("lib/modules").join(&version);
    std::fs::create_dir_all(&modules).expect("mkdir");
    std::fs::create_dir_all(dir.join("etc")).expect("mkdir");
    std::fs::write(dir.join("etc/os-release"), "ID=debian\n").expect("write");
    run_ok(Command::new("cp").arg("-al").arg(cache.join("usr")).arg(dir.join("usr")));
    for file in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
        std::fs::copy(cache.join("lib/modules").join(&version).join(file), modules.join(file)).expect("copy");
    }
    std::os::unix::fs::symlink(format!("/usr/src/linux-headers-{version}"), modules.join("build")).expect("symlink");
    version
}

/// The image's tree, extracted with the format's own tool (debugfs's rdump, unsquashfs, cpio,
/// tar, fsck.erofs).
fn unpack(image: &Path, into: &Path) {
    if image.extension().is_some_and(|e| e == "erofs") {
        run_ok(Command::new("fsck.erofs").arg(format!("--extract={}", into.display())).arg(image));
        return;
    }
    if image.extension().is_some_and(|e| e == "squashfs") {
        run_ok(Command::new("unsquashfs").arg("-q").arg("-n").arg("-d").arg(into).arg(image));
        return;
    }
    std::fs::create_dir_all(into).expect("mkdir");
    if image.to_string_lossy().ends_with(".cpio.zst") {
        let script = format!("zstd -dcq {} | cpio -idm --quiet --no-absolute-filenames", image.display());
        run_ok(Command::new("bash").args(["-c", &script]).current_dir(into));
        return;
    }
    if image.extension().is_some_and(|e| e == "ext4") {
        for top in ["lib", "var", "usr", "etc"] {
            run(Command::new("debugfs").arg("-R").arg(format!("rdump /{top} {}", into.display())).arg(image));
        }
    } else {
        run_ok(Command::new("tar").arg("-xf").arg(image).arg("-C").arg(into));
    }
}

/// Every file under `dir/rel` with its bytes, by path (symlinks as their targets).
fn tree(dir: &Path, rel: &str) -> Vec<(String, Vec<u8>)> {
    // Nothing there (removed, or not made yet) lists nothing.
    let out = run(Command::new("find").arg(rel).arg("-not").arg("-type").arg("d").current_dir(dir));
    let mut files: Vec<(String, Vec<u8>)> = text(&out.stdout)
        .lines()
        .map(|path| {
            let full = dir.join(path);
            let bytes = match std::fs::read_link(&full) {
                Ok(target) => target.to_string_lossy().as_bytes().to_vec(),
                Err(_) => std::fs::read(&full).expect("read"),
            };
            (path.to_string(), bytes)
        })
        .collect();
    files.sort();
    files
}

/// The trees `rels` hold the same files with the same bytes in the unpacked image and in the
/// directory (`what` says which step, in a failure).
fn assert_same_trees(unpacked: &Path, dir: &Path, rels: &[&str], what: &str) {
    for rel in rels {
        let (in_image, in_dir) = (tree(unpacked, rel), tree(dir, rel));
        let names = |t: &[(String, Vec<u8>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&in_image), names(&in_dir), "{what}: {rel}");
        for ((name, a), (_, b)) in in_image.iter().zip(&in_dir) {
            assert!(a == b, "{what}: {name} differs");
        }
    }
}

/// Runs one DKMS command line on the image and on the directory; both outputs must agree.
fn both(image: &Path, dir: &Path, args: &[&str]) {
    let with_root = |root: &Path| {
        let mut cmd = xdkms();
        cmd.env("SOURCE_DATE_EPOCH", "1").arg(args[0]).arg("--root").arg(root).args(&args[1..]);
        run(&mut cmd)
    };
    let on_image = with_root(image);
    let on_dir = with_root(dir);
    assert_eq!(on_image.status.code(), on_dir.status.code(), "{args:?}: {}", text(&on_image.stderr));
    assert_eq!(text(&on_image.stdout), as_on_image(&on_dir.stdout, dir, image), "{args:?}: stdout");
    assert_eq!(image_stderr(&on_image), as_on_image(&on_dir.stderr, dir, image), "{args:?}: stderr");
}

/// install, status, then remove, on an ext4 image, a squashfs, an erofs, a cpio.zst and a tar.zst: each step prints what it
/// prints on the directory, and leaves the image's dkms tree, module directory and sources as
/// it leaves the directory's (the module byte for byte); ext4 stays clean for e2fsck.
#[test]
fn dkms_commands_on_images_do_what_they_do_on_the_directory() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkms/xdkms_test-1.0");
    let fixture = fixture.display().to_string();
    for kind in ["ext4", "squashfs", "erofs", "cpio.zst", "tar.zst"] {
        let work = TempDir::new(&format!("dkms-image-{kind}"));
        let root = work.join("root");
        let version = headers_root(&root);
        let image = work.join(format!("rootfs.{kind}"));
        if kind == "ext4" {
            run_ok(Command::new("mke2fs").args(["-q", "-F", "-t", "ext4", "-d"]).arg(&root).arg(&image).arg("300M"));
        } else if kind == "squashfs" {
            let options = ["-noappend", "-quiet", "-no-progress", "-comp", "zstd", "-Xcompression-level", "1"];
            run_ok(Command::new("mksquashfs").arg(&root).arg(&image).args(options));
        } else if kind == "erofs" {
            run_ok(Command::new("mkfs.erofs").arg("--quiet").arg(&image).arg(&root));
        } else if kind == "cpio.zst" {
            let script = format!(
                "set -o pipefail; cd {} && find . | cpio -o -H newc --quiet | zstd -q -1 > {}",
                root.display(),
                image.display()
            );
            run_ok(Command::new("bash").args(["-c", &script]));
        } else {
            let tar = crate::util::tar_command(&format!("-C {} -cf - .", root.display()));
            let script = format!("set -o pipefail; {tar} | zstd -q -1 > {}", image.display());
            run_ok(Command::new("bash").args(["-c", &script]));
        }
        let steps: [&[&str]; 3] =
            [&["install", "-k", &version, &fixture], &["status"], &["remove", "xdkms_test/1.0", "--all"]];
        for (step, args) in steps.iter().enumerate() {
            both(&image, &root, args);
            if kind == "ext4" {
                let out = run(Command::new("e2fsck").arg("-fn").arg(&image));
                assert_eq!(out.status.code(), Some(0), "{args:?}: e2fsck: {}", text(&out.stdout));
            }
            if kind == "erofs" {
                let out = run(Command::new("fsck.erofs").arg(&image));
                assert_eq!(out.status.code(), Some(0), "{args:?}: fsck.erofs: {}", text(&out.stderr));
            }
            let unpacked = work.join(format!("unpacked-{step}"));
            unpack(&image, &unpacked);
            let rels = ["var/lib/dkms", &format!("lib/modules/{version}"), "usr/src/xdkms_test-1.0"];
            assert_same_trees(&unpacked, &root, &rels, &format!("{kind} {args:?}"));
        }
    }
}

/// Of a kernel's headers, a command that does not build extracts only the files that tell the
/// kernel's release and configuration (issue 12: never more than a command needs). With a
/// header file damaged in an ext4 image (its extent header zeroed), installing a module already
/// built there prints and leaves what it does in the directory; building, which extracts the
/// headers, fails naming the image and the file, and leaves the image as it was.
#[test]
fn only_a_build_extracts_the_kernel_headers_from_an_image() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkms/xdkms_test-1.0");
    let work = TempDir::new("headers-left-out");
    let root = work.join("root");
    let version = headers_root(&root);
    run_ok(xdkms().arg("build").arg("--root").arg(&root).args(["-q", "-k", &version]).arg(&fixture));
    let image = work.join("rootfs.ext4");
    run_ok(Command::new("mke2fs").args(["-q", "-F", "-t", "ext4", "-d"]).arg(&root).arg(&image).arg("300M"));
    // Debian's headers: the kernel's directory, which `build` names, and the -common one.
    let common = format!("usr/src/linux-headers-{}-common", version.trim_end_matches("-amd64"));
    let damaged = format!("/{common}/include/linux/module.h");
    run_ok(Command::new("debugfs").arg("-w").arg("-R").arg(format!("sif {damaged} block[0] 0")).arg(&image));
    let unbuilt = work.join("unbuilt.ext4");
    run_ok(Command::new("cp").arg("--sparse=always").arg(&image).arg(&unbuilt));

    both(&image, &root, &["install", "-k", &version, "xdkms_test/1.0"]);
    let unpacked = work.join("unpacked");
    unpack(&image, &unpacked);
    let rel = format!("lib/modules/{version}/updates/dkms");
    assert_eq!(tree(&unpacked, &rel), tree(&root, &rel), "the installed module");

    run_ok(xdkms().arg("unbuild").arg("--root").arg(&unbuilt).args(["-q", "-k", &version, "xdkms_test/1.0"]));
    let before = work.join("before.ext4");
    run_ok(Command::new("cp").arg("--sparse=always").arg(&unbuilt).arg(&before));
    let out = run(xdkms().arg("build").arg("--root").arg(&unbuilt).args(["-k", &version, "xdkms_test/1.0"]));
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    let named = format!("{}: {}: ", unbuilt.display(), damaged.trim_start_matches('/'));
    assert!(stderr.contains(&named) && stderr.contains("Corrupt extent header"), "{stderr}");
    assert!(
        run(Command::new("cmp").arg("-s").arg(&before).arg(&unbuilt)).status.success(),
        "the failed build changed the image"
    );
}

/// [`headers_root`] with part of the kernel's own module tree (block drivers, the libraries and
/// ciphers they use: a few hundred modules with dependencies between them), hard links into the
/// cache.
fn modules_root(dir: &Path) -> String {
    let version = headers_root(dir);
    let r = refs();
    let cache = r.path("XDKMS_ROOT_AMD64").join("lib/modules").join(&version);
    for part in ["kernel/drivers/block", "kernel/lib", "kernel/crypto"] {
        let into = dir.join("lib/modules").join(&version).join(part);
        std::fs::create_dir_all(into.parent().expect("parent")).expect("mkdir");
        run_ok(Command::new("cp").arg("-al").arg(cache.join(part)).arg(&into));
    }
    version
}

/// Installs into an ext4 image read the kernel's own module files where they lie: they are not
/// extracted, depmod reads them from the image. A module named like one of them (dkms keeps the
/// original aside), a package with scripts (which may read anything) and a change reaching
/// into what stayed in the image (kernel_prerm removing the directories that look empty) make
/// the run start again on the whole image. Every step prints what it prints on the directory (a run started
/// again shows its output once) and leaves the image holding what it leaves there, the kernel's
/// indexes byte for byte; e2fsck finds the image clean.
#[test]
fn installs_into_an_ext4_image_index_the_kernels_modules_in_place() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkms");
    let work = TempDir::new("modules-left-out");
    let root = work.join("root");
    let version = modules_root(&root);
    for fixture in ["xdkms_test-1.0", "xdkms_replace-1.0", "xdkms_scripts-1.0"] {
        let mut build = xdkms();
        build.arg("build").arg("--root").arg(&root).args(["-q", "-k", &version]).arg(fixtures.join(fixture));
        run_ok(&mut build);
    }
    let image = work.join("rootfs.ext4");
    run_ok(Command::new("mke2fs").args(["-q", "-F", "-t", "ext4", "-d"]).arg(&root).arg(&image).arg("300M"));
    // kernel_prerm ends with `find KERNEL_DIR -type d -empty -delete`: the directories whose
    // files stayed in the image look empty to it, and must stay.
    let steps: [&[&str]; 6] = [
        &["install", "-k", &version, "xdkms_test/1.0"],
        &["install", "-k", &version, "xdkms_replace/1.0"],
        &["install", "-k", &version, "xdkms_scripts/1.0"],
        &["status"],
        &["uninstall", "-k", &version, "xdkms_replace/1.0"],
        &["kernel_prerm", "-k", &version],
    ];
    for (step, args) in steps.iter().enumerate() {
        both(&image, &root, args);
        let out = run(Command::new("e2fsck").arg("-fn").arg(&image));
        assert_eq!(out.status.code(), Some(0), "{args:?}: e2fsck: {}", text(&out.stdout));
        let unpacked = work.join(format!("unpacked-{step}"));
        unpack(&image, &unpacked);
        let rels = ["var/lib/dkms", &format!("lib/modules/{version}"), "usr/src/xdkms_scripts-1.0"];
        assert_same_trees(&unpacked, &root, &rels, &format!("{args:?}"));
    }
}
