//! squashfs images as roots (issue 12): `depmod -b` and `modinfo -b` on images mksquashfs made
//! with each compressor xdkms writes, against kmod and against the same commands on the
//! extracted tree; squashfs-tools' own unsquashfs judges the new image (superblock, listing,
//! contents). Also the refusals, SIGKILL during the rewrite, and the module pair cross-built
//! into the Debian arm64 sysroot as a squashfs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::cross::Sysroot;
use crate::dkms::fixture;
use crate::ext4_images::debian_drivers_root;
use crate::images::{
    as_on_image, assert_corruptions_are_errors_not_crashes, assert_killed_depmod_leaves_the_old_or_the_new_image,
    assert_modinfo_as_on_directory, assert_no_temporaries_beside, assert_refused, image_stderr, make_root, text,
    VERSION,
};
use crate::util::{differing_files, run, run_ok, xdkms, TempDir, KMOD30_FILES};

/// A squashfs image of `root` made by mksquashfs with `options` (compressor, block size...).
fn make_squashfs(root: &Path, image: &Path, options: &[&str]) {
    run_ok(
        Command::new("mksquashfs")
            .arg(root)
            .arg(image)
            .args(["-noappend", "-quiet", "-no-progress", "-mkfs-time", "1700000000"])
            .args(options),
    );
}

/// What `unsquashfs -s` says of the compressor, its options and the block size.
fn compression(image: &Path) -> Vec<String> {
    let out = run_ok(Command::new("unsquashfs").arg("-s").arg(image));
    let mut lines = Vec::new();
    let mut in_options = false;
    for line in text(&out.stdout).lines() {
        if line.starts_with("Compression ") || line.starts_with("Block size") {
            in_options = line.starts_with("Compression ");
            lines.push(line.to_string());
        } else if in_options && line.starts_with('\t') {
            lines.push(line.to_string());
        } else {
            in_options = false;
        }
    }
    lines
}

/// `unsquashfs -lln`: each entry's type, mode, numeric owner, size, mtime, by path.
fn listing(image: &Path) -> BTreeMap<String, String> {
    let out = run_ok(Command::new("unsquashfs").arg("-lln").arg("-d").arg("").arg(image).env("TZ", "UTC"));
    text(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = line.split_whitespace().nth(5)?;
            path.starts_with('/').then(|| (path.to_string(), line.to_string()))
        })
        .collect()
}

/// The image extracted into `dir` by unsquashfs (owners kept: the tests run as root).
fn unsquash(image: &Path, dir: &Path) {
    run_ok(Command::new("unsquashfs").arg("-q").arg("-n").arg("-d").arg(dir).arg(image));
}

/// depmod -b IMAGE for each compressor xdkms writes, with options and block sizes of their
/// own, plain and merged /usr: output as on the extracted tree, kmod's indexes, the compressor,
/// its options and the block size kept, every other entry listed and read back as it was.
#[test]
fn depmod_on_squashfs_images_writes_what_kmod_writes_and_keeps_the_rest() {
    let cases: [(&str, &[&str], bool); 4] = [
        ("xz", &["-comp", "xz", "-Xbcj", "x86", "-b", "65536"], false),
        ("zstd", &["-comp", "zstd", "-Xcompression-level", "19"], true),
        ("gzip", &["-comp", "gzip", "-b", "262144"], false),
        ("lz4", &["-comp", "lz4", "-Xhc", "-b", "4096"], true),
    ];
    for (compressor, options, merged_usr) in cases {
        let base = TempDir::new(&format!("squashfs-depmod-{compressor}"));
        let root = base.join("root");
        make_root(&root, merged_usr);
        let image = base.join(format!("rootfs.{compressor}.squashfs"));
        make_squashfs(&root, &image, &[options, &["-no-xattrs"]].concat());
        let original = base.join("original.squashfs");
        std::fs::copy(&image, &original).expect("copy");
        let (compression_before, listing_before) = (compression(&image), listing(&image));

        let on_image = run(xdkms().arg("depmod").arg("-b").arg(&image).arg(VERSION));
        let on_dir_root = base.join("dir");
        unsquash(&original, &on_dir_root);
        let on_dir = run(xdkms().arg("depmod").arg("-b").arg(&on_dir_root).arg(VERSION));
        assert_eq!(on_image.status.code(), Some(0), "{compressor}: {}", text(&on_image.stderr));
        assert_eq!(text(&on_image.stdout), as_on_image(&on_dir.stdout, &on_dir_root, &image), "{compressor}");
        assert_eq!(image_stderr(&on_image), as_on_image(&on_dir.stderr, &on_dir_root, &image), "{compressor}");
        assert_eq!(compression(&image), compression_before, "{compressor}: compression or block size changed");

        // The indexes are kmod's, byte for byte.
        let kmod_root = base.join("kmod");
        unsquash(&original, &kmod_root);
        run_ok(Command::new("depmod").arg("-b").arg(&kmod_root).arg(VERSION));
        let (written, before) = (base.join("written"), base.join("before"));
        unsquash(&image, &written);
        unsquash(&original, &before);
        let module_dir = if merged_usr { "usr/lib/modules" } else { "lib/modules" };
        let rel = format!("{module_dir}/{VERSION}");
        assert_eq!(
            differing_files(&kmod_root.join(&rel), &written.join(&rel), &KMOD30_FILES),
            Vec::<String>::new(),
            "{compressor}"
        );

        // Every entry of the original is listed as it was (type, mode, owner, size, mtime)
        // and holds the same bytes, but for the module directory (new entries); the new
        // entries are the indexes.
        let listing_after = listing(&image);
        for (path, line) in &listing_before {
            if *path != format!("/{rel}") {
                assert_eq!(listing_after.get(path), Some(line), "{compressor}: {path}");
            }
            let (old, new) = (before.join(&path[1..]), written.join(&path[1..]));
            if old.is_file() && !old.is_symlink() {
                assert!(std::fs::read(&old).ok() == std::fs::read(&new).ok(), "{compressor}: {path} differs");
            }
        }
        let added: Vec<&String> = listing_after.keys().filter(|p| !listing_before.contains_key(*p)).collect();
        let expected: Vec<String> = KMOD30_FILES.iter().map(|f| format!("/{rel}/{f}")).collect();
        assert!(added.iter().all(|p| expected.contains(p)), "{compressor}: added {added:?}");
        let modes_kept = listing_after.get("/etc/hostname").is_some_and(|l| l.starts_with("-rw------- 1000/1000"));
        assert!(modes_kept, "{compressor}: {:?}", listing_after.get("/etc/hostname"));
    }
}

#[test]
fn modinfo_on_a_squashfs_image_prints_what_it_prints_on_the_directory() {
    let base = TempDir::new("squashfs-modinfo");
    let root = base.join("root");
    make_root(&root, true);
    let image = base.join("rootfs.squashfs");
    make_squashfs(&root, &image, &["-comp", "zstd", "-no-xattrs"]);
    assert_modinfo_as_on_directory(&image, &root);
}

/// Extended attributes (which backhand cannot write), a truncated image, compressors and
/// filters xdkms does not carry, no lib/modules, a read-only file: each refused with the
/// image named, nothing changed, nothing left beside it.
#[test]
fn bad_squashfs_images_are_refused_with_their_name_and_left_alone() {
    let base = TempDir::new("squashfs-bad");
    let root = base.join("root");
    make_root(&root, false);
    let depmod = |image: &Path| run(xdkms().arg("depmod").arg("-b").arg(image).arg(VERSION));
    let made = |name: &str, options: &[&str]| {
        let image = base.join(name);
        make_squashfs(&root, &image, options);
        let bytes = std::fs::read(&image).expect("image");
        (image, bytes)
    };

    // make_root gives etc/hostname a user.xdkms attribute; mksquashfs keeps it by default.
    let (xattrs, bytes) = made("xattrs.squashfs", &["-comp", "xz"]);
    let out = depmod(&xattrs);
    assert_refused(&out, &xattrs, &bytes, "extended attributes");
    assert!(text(&out.stderr).contains("-no-xattrs"), "the message says what to do: {}", text(&out.stderr));

    let (_, whole) = made("plain.squashfs", &["-comp", "xz", "-no-xattrs"]);
    let truncated = base.join("truncated.squashfs");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).expect("write");
    let out = depmod(&truncated);
    assert_refused(&out, &truncated, &whole[..whole.len() / 2], "a truncated image");
    assert!(text(&out.stderr).contains("truncated"), "{}", text(&out.stderr));

    let (lzo, bytes) = made("lzo.squashfs", &["-comp", "lzo", "-no-xattrs"]);
    let out = depmod(&lzo);
    assert_refused(&out, &lzo, &bytes, "lzo");
    assert!(text(&out.stderr).contains("lzo"), "{}", text(&out.stderr));

    let (arm, bytes) = made("arm-bcj.squashfs", &["-comp", "xz", "-Xbcj", "arm", "-no-xattrs"]);
    assert_refused(&depmod(&arm), &arm, &bytes, "an xz filter xdkms does not carry");

    let read_only = base.join("read-only.squashfs");
    std::fs::write(&read_only, &whole).expect("write");
    std::fs::set_permissions(&read_only, std::os::unix::fs::PermissionsExt::from_mode(0o444)).expect("chmod");
    let out = depmod(&read_only);
    assert_refused(&out, &read_only, &whole, "a read-only image");
    assert!(text(&out.stderr).contains("read-only"), "{}", text(&out.stderr));

    let empty_root = base.join("empty-root");
    std::fs::create_dir_all(empty_root.join("etc")).expect("mkdir");
    let empty = base.join("empty.squashfs");
    make_squashfs(&empty_root, &empty, &["-comp", "gzip"]);
    let empty_bytes = std::fs::read(&empty).expect("image");
    assert_refused(&depmod(&empty), &empty, &empty_bytes, "an image with no lib/modules");

    assert_no_temporaries_beside(base.path());
}

/// SIGKILL at random points of `depmod -b IMAGE.squashfs` on Debian's network drivers: the
/// image is always the old one or the new one, and with SOURCE_DATE_EPOCH the new image is the
/// same bytes on every run.
#[test]
fn killed_depmod_on_a_squashfs_image_leaves_the_old_or_the_new_image() {
    let work = TempDir::new("squashfs-kill");
    let root = work.join("root");
    let version = debian_drivers_root(&root, "net");
    let original_path = work.join("original.squashfs");
    make_squashfs(&root, &original_path, &["-comp", "xz"]);
    let original = std::fs::read(&original_path).expect("read");
    assert_killed_depmod_leaves_the_old_or_the_new_image(
        &work,
        &original,
        "rootfs.squashfs",
        &version,
        0x5a5f,
        &|a, b| a == b,
    );
}

/// Acceptance 2: the module pair (xdkms_pair_b uses xdkms_pair_a's export) cross-built and
/// installed into a squashfs of the Debian arm64 sysroot with `--root IMAGE` alone: the
/// compressor and block size are the original's, and the image's indexes, read back with
/// unsquashfs, are kmod's depmod -b of the extracted tree.
#[test]
fn arm64_pair_installed_into_a_squashfs_sysroot_is_indexed_as_kmod_does() {
    let sysroot = Sysroot::new("squashfs-arm64", "arm64");
    let image = sysroot.dir.join("rootfs.squashfs");
    make_squashfs(&sysroot.root(), &image, &["-comp", "zstd", "-Xcompression-level", "3", "-b", "262144"]);
    let before = compression(&image);
    let pair = fixture("xdkms_pair-1.0");
    let install = run(xdkms()
        .arg("install")
        .arg("--root")
        .arg(&image)
        .arg("-k")
        .arg(&sysroot.kernel)
        .arg(&pair)
        .env_remove("ARCH")
        .env_remove("CROSS_COMPILE")
        .env_remove("MAKEFLAGS"));
    assert_eq!(install.status.code(), Some(0), "install: {}{}", text(&install.stdout), text(&install.stderr));
    assert_eq!(compression(&image), before, "compression or block size changed");
    let status = run_ok(xdkms().arg("status").arg("--root").arg(&image));
    assert_eq!(text(&status.stdout), format!("xdkms_pair/1.0, {}, aarch64: installed\n", sysroot.kernel));

    let modules = format!("lib/modules/{}", sysroot.kernel);
    let (written, kmod) = (sysroot.dir.join("written"), sysroot.dir.join("kmod"));
    run_ok(Command::new("unsquashfs").arg("-q").arg("-n").arg("-d").arg(&written).arg(&image).arg(&modules));
    for name in ["xdkms_pair_a", "xdkms_pair_b"] {
        let module = written.join(&modules).join(format!("updates/dkms/{name}.ko"));
        let bytes = std::fs::read(&module).unwrap_or_else(|e| panic!("{}: {e}", module.display()));
        assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), 183, "{name} is not an arm64 module");
    }
    run_ok(Command::new("cp").arg("-a").arg(&written).arg(&kmod));
    for link in ["build", "source"] {
        let _ = std::fs::remove_file(kmod.join(&modules).join(link));
    }
    run_ok(Command::new("depmod").arg("-b").arg(&kmod).arg(&sysroot.kernel));
    let differing = differing_files(&written.join(&modules), &kmod.join(&modules), &KMOD30_FILES);
    assert!(differing.is_empty(), "indexes differ from kmod's depmod -b: {differing:?}");
    let dep = std::fs::read_to_string(written.join(&modules).join("modules.dep")).expect("modules.dep");
    assert!(dep.contains("updates/dkms/xdkms_pair_b.ko: updates/dkms/xdkms_pair_a.ko\n"), "{dep}");
}

/// Bytes of a squashfs image overwritten at 300 seeded places (its superblock, tables and data
/// alike): each `depmod -n -b` on it succeeds or is an error naming the image (exit 1), never
/// a crash, and never changes it.
#[test]
fn corrupt_squashfs_images_are_errors_not_crashes() {
    let base = TempDir::new("squashfs-corrupt");
    let root = base.join("root");
    make_root(&root, false);
    let image = base.join("rootfs.squashfs");
    make_squashfs(&root, &image, &["-comp", "gzip", "-no-xattrs"]);
    let whole = std::fs::read(&image).expect("image");
    let len = whole.len();
    // A third of the rounds in the superblock, the rest anywhere.
    let place = |round: usize, random: usize| if round.is_multiple_of(3) { random % 96 } else { random % len };
    assert_corruptions_are_errors_not_crashes(&whole, &base.join("corrupt.squashfs"), 0x5eed, place);
}
