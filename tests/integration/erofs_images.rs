//! erofs images as roots (issue 12): `depmod -b` and `modinfo -b` on images mkfs.erofs made
//! (plain and chunk-based files), against kmod and against the same commands on the extracted
//! tree; erofs-utils' own fsck.erofs and dump.erofs judge the new image (consistency, every
//! untouched inode's bytes, xattrs included, at its old number). Also the refusals, corrupt
//! bytes, and SIGKILL during the rewrite.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::ext4_images::debian_drivers_root;
use crate::images::{
    as_on_image, assert_corruptions_are_errors_not_crashes, assert_killed_depmod_leaves_the_old_or_the_new_image,
    assert_modinfo_as_on_directory, assert_no_temporaries_beside, assert_refused, image_stderr, make_root, text,
    VERSION,
};
use crate::util::{differing_files, run, run_ok, xdkms, TempDir, KMOD30_FILES};

/// An erofs image of `root` made by mkfs.erofs with `options` (per-file mtimes kept).
fn make_erofs(root: &Path, image: &Path, options: &[&str]) {
    run_ok(Command::new("mkfs.erofs").arg("--quiet").args(options).arg(image).arg(root));
}

/// The image extracted into `dir` by fsck.erofs (owners and modes kept: the tests run as
/// root), which checks every file on the way.
fn extract(image: &Path, dir: &Path) {
    run_ok(Command::new("fsck.erofs").arg(format!("--extract={}", dir.display())).arg(image));
}

/// Each entry of an extracted tree: type, mode, owner, size, mtime and a content hash (a
/// symlink's target), by path.
fn listing(dir: &Path) -> BTreeMap<String, String> {
    let script = "find . -mindepth 1 -printf '%p %y %m %U:%G %s %T@ %l ' -exec sh -c \
                  'if [ -f \"$1\" ] && [ ! -L \"$1\" ]; then sha256sum < \"$1\"; else echo -; fi' _ {} \\;";
    let out = run_ok(Command::new("sh").args(["-c", script]).current_dir(dir));
    text(&out.stdout)
        .lines()
        .filter_map(|line| line.split_once(' ').map(|(path, rest)| (path[2..].to_string(), rest.to_string())))
        .collect()
}

/// What dump.erofs says of the entry at `path`: its inode number, and the inode's bytes as
/// stored (the inode and its extended attributes).
fn raw_inode(image: &Path, path: &str) -> (u64, Vec<u8>) {
    let out = run_ok(Command::new("dump.erofs").arg(format!("--path=/{path}")).arg(image));
    let said = text(&out.stdout);
    let field = |name: &str| -> u64 {
        let at = said.find(name).unwrap_or_else(|| panic!("{path}: no {name} in {said}")) + name.len();
        said[at..].split_whitespace().next().and_then(|n| n.parse().ok()).expect("a number")
    };
    let (nid, inode_len, xattr_len) = (field("NID:"), field("Inode size:"), field("Xattr size:"));
    let bytes = std::fs::read(image).expect("image");
    // mkfs.erofs starts the metadata area at block 0 (dump.erofs -s: "inode metadata start block: 0").
    let at = (nid * 32) as usize;
    (nid, bytes[at..at + (inode_len + xattr_len) as usize].to_vec())
}

/// depmod -b IMAGE on images of plain and chunk-based files, plain and merged /usr: output as on
/// the extracted tree, kmod's indexes, a clean fsck.erofs, and every entry of the original
/// listed as it was, with the same bytes, and (but for the module directory, which gained the
/// indexes) the same inode number and inode bytes, xattrs included.
#[test]
fn depmod_on_erofs_images_writes_what_kmod_writes_and_keeps_the_rest() {
    // Compressed images get Debian's modules besides the fixture's small ones, so that files
    // are stored compressed: in compact and full indexes, big physical clusters, tails packed
    // inline.
    let cases: [(&str, &[&str], bool); 6] = [
        ("plain", &[], false),
        ("chunked", &["--chunksize=4096"], true),
        ("lz4", &["-zlz4"], false),
        ("lz4hc-big-clusters-tail-packed", &["-zlz4hc,9", "-C16384", "-Eztailpacking"], true),
        ("lz4-tail-packed", &["-zlz4", "-Eztailpacking"], false),
        ("lz4hc-full-indexes", &["-zlz4hc", "-Elegacy-compress", "-C65536"], false),
    ];
    let r = crate::util::refs();
    let (cache, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
    for (name, options, merged_usr) in cases {
        let base = TempDir::new(&format!("erofs-depmod-{name}"));
        let root = base.join("root");
        make_root(&root, merged_usr);
        let compressed = options.iter().any(|o| o.starts_with("-z"));
        if compressed {
            let module_dir = if merged_usr { "usr/lib/modules" } else { "lib/modules" };
            for module in ["fs/erofs/erofs.ko", "drivers/net/ethernet/intel/e1000e/e1000e.ko"] {
                let from = cache.join(format!("lib/modules/{version}/kernel/{module}"));
                let to = root.join(format!("{module_dir}/{VERSION}/kernel/debian/{module}"));
                std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
                std::fs::copy(from, to).expect("copy");
            }
        }
        run_ok(Command::new("touch").args(["-h", "-d", "@1234567890"]).arg(root.join("etc/hostname")));
        run_ok(
            Command::new("setfattr")
                .args(["-n", "security.selinux", "-v", "system_u:object_r:etc_t:s0"])
                .arg(root.join("etc/hostname")),
        );
        let image = base.join(format!("rootfs.{name}.erofs"));
        make_erofs(&root, &image, options);
        if compressed {
            let module_dir = if merged_usr { "usr/lib/modules" } else { "lib/modules" };
            let path = format!("{module_dir}/{VERSION}/kernel/debian/fs/erofs/erofs.ko");
            let layout = (raw_inode(&image, &path).1[0] >> 1) & 7;
            assert!(layout == 1 || layout == 3, "{name}: erofs.ko is stored compressed (layout {layout})");
        }
        let original = base.join("original.erofs");
        std::fs::copy(&image, &original).expect("copy");
        let before = base.join("before");
        extract(&original, &before);
        let listing_before = listing(&before);

        let on_image = run(xdkms().arg("depmod").arg("-b").arg(&image).arg(VERSION));
        let on_dir = run(xdkms().arg("depmod").arg("-b").arg(&before).arg(VERSION));
        assert_eq!(on_image.status.code(), Some(0), "{name}: {}", text(&on_image.stderr));
        assert_eq!(text(&on_image.stdout), as_on_image(&on_dir.stdout, &before, &image), "{name}");
        assert_eq!(image_stderr(&on_image), as_on_image(&on_dir.stderr, &before, &image), "{name}");
        let fsck = run(Command::new("fsck.erofs").arg(&image));
        assert_eq!(fsck.status.code(), Some(0), "{name}: fsck.erofs: {}{}", text(&fsck.stdout), text(&fsck.stderr));

        // The indexes are kmod's, byte for byte.
        let kmod_root = base.join("kmod");
        extract(&original, &kmod_root);
        run_ok(Command::new("depmod").arg("-b").arg(&kmod_root).arg(VERSION));
        let written = base.join("written");
        extract(&image, &written);
        let module_dir = if merged_usr { "usr/lib/modules" } else { "lib/modules" };
        let rel = format!("{module_dir}/{VERSION}");
        let differing = differing_files(&kmod_root.join(&rel), &written.join(&rel), &KMOD30_FILES);
        assert_eq!(differing, Vec::<String>::new(), "{name}");

        let listing_after = listing(&written);
        for (path, line) in &listing_before {
            if *path != rel {
                assert_eq!(listing_after.get(path), Some(line), "{name}: {path}");
                assert_eq!(raw_inode(&image, path), raw_inode(&original, path), "{name}: {path}'s inode");
            }
        }
        let added: Vec<&String> = listing_after.keys().filter(|p| !listing_before.contains_key(*p)).collect();
        let expected: Vec<String> = KMOD30_FILES.iter().map(|f| format!("{rel}/{f}")).collect();
        assert!(added.iter().all(|p| expected.contains(p)), "{name}: added {added:?}");
        assert!(listing_after["etc/hostname"].starts_with("f 600 1000:1000 7 1234567890"), "{name}");

        // A second run replaces the indexes (new inodes, the old ones left unreachable).
        let again = run(xdkms().env("SOURCE_DATE_EPOCH", "1").arg("depmod").arg("-b").arg(&image).arg(VERSION));
        assert_eq!(again.status.code(), Some(0), "{name}: {}", text(&again.stderr));
        let fsck = run(Command::new("fsck.erofs").arg(&image));
        assert_eq!(fsck.status.code(), Some(0), "{name}: second run: {}", text(&fsck.stderr));
        let rewritten = base.join("rewritten");
        extract(&image, &rewritten);
        let differing = differing_files(&kmod_root.join(&rel), &rewritten.join(&rel), &KMOD30_FILES);
        assert_eq!(differing, Vec::<String>::new(), "{name}: second run");
        let dep = listing(&rewritten)[&format!("{rel}/modules.dep")].clone();
        assert!(dep.starts_with("f 644 0:0 ") && dep.contains(" 1.0000000000 "), "{name}: {dep}");
    }
}

#[test]
fn modinfo_on_an_erofs_image_prints_what_it_prints_on_the_directory() {
    let base = TempDir::new("erofs-modinfo");
    let root = base.join("root");
    make_root(&root, true);
    let image = base.join("rootfs.erofs");
    make_erofs(&root, &image, &[]);
    assert_modinfo_as_on_directory(&image, &root);
}

/// lz4 clusters without zero padding (which xdkms does not read), a truncated image, a
/// corrupt superblock, no lib/modules, a read-only file: each refused with the image named,
/// nothing changed, nothing left beside it.
#[test]
fn bad_erofs_images_are_refused_with_their_name_and_left_alone() {
    let base = TempDir::new("erofs-bad");
    let root = base.join("root");
    make_root(&root, false);
    let depmod = |image: &Path| run(xdkms().arg("depmod").arg("-b").arg(image).arg(VERSION));
    let made = |name: &str, options: &[&str]| {
        let image = base.join(name);
        make_erofs(&root, &image, options);
        let bytes = std::fs::read(&image).expect("image");
        (image, bytes)
    };

    // A module of Debian's (200 KiB, compressible) is stored in lz4 clusters without zero
    // padding (mkfs.erofs -E legacy-compress): refused, naming it.
    let r = crate::util::refs();
    let (cache, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
    let erofs_ko = format!("lib/modules/{version}/kernel/fs/erofs/erofs.ko");
    let big = root.join(format!("lib/modules/{VERSION}/kernel/erofs.ko"));
    std::fs::copy(cache.join(&erofs_ko), &big).expect("copy");
    let (lz4, bytes) = made("lz4-unpadded.erofs", &["-zlz4", "-Elegacy-compress"]);
    std::fs::remove_file(&big).expect("rm");
    let out = depmod(&lz4);
    assert_refused(&out, &lz4, &bytes, "lz4 clusters without zero padding");
    assert!(text(&out.stderr).contains("without zero padding"), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("kernel/erofs.ko"), "the message names the file: {}", text(&out.stderr));

    let (_, whole) = made("plain.erofs", &[]);
    let truncated = base.join("truncated.erofs");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).expect("write");
    let out = depmod(&truncated);
    assert_refused(&out, &truncated, &whole[..whole.len() / 2], "a truncated image");
    assert!(text(&out.stderr).contains("truncated"), "{}", text(&out.stderr));

    // The block count, changed: the superblock's checksum no longer matches.
    let mut bad = whole.clone();
    bad[1024 + 36] ^= 1;
    let corrupt = base.join("corrupt-superblock.erofs");
    std::fs::write(&corrupt, &bad).expect("write");
    let out = depmod(&corrupt);
    assert_refused(&out, &corrupt, &bad, "a corrupt superblock");
    assert!(text(&out.stderr).contains("checksum"), "{}", text(&out.stderr));

    let read_only = base.join("read-only.erofs");
    std::fs::write(&read_only, &whole).expect("write");
    std::fs::set_permissions(&read_only, std::os::unix::fs::PermissionsExt::from_mode(0o444)).expect("chmod");
    let out = depmod(&read_only);
    assert_refused(&out, &read_only, &whole, "a read-only image");
    assert!(text(&out.stderr).contains("read-only"), "{}", text(&out.stderr));

    let empty_root = base.join("empty-root");
    std::fs::create_dir_all(empty_root.join("etc")).expect("mkdir");
    let empty = base.join("empty.erofs");
    make_erofs(&empty_root, &empty, &[]);
    let empty_bytes = std::fs::read(&empty).expect("image");
    assert_refused(&depmod(&empty), &empty, &empty_bytes, "an image with no lib/modules");

    assert_no_temporaries_beside(base.path());
}

/// SIGKILL at random points of `depmod -b IMAGE.erofs` on Debian's network drivers: the image
/// is always the old one or the new one, and with SOURCE_DATE_EPOCH the new image is the same
/// bytes on every run.
#[test]
fn killed_depmod_on_an_erofs_image_leaves_the_old_or_the_new_image() {
    let work = TempDir::new("erofs-kill");
    let root = work.join("root");
    let version = debian_drivers_root(&root, "net");
    let original_path = work.join("original.erofs");
    make_erofs(&root, &original_path, &[]);
    let original = std::fs::read(&original_path).expect("read");
    let new = assert_killed_depmod_leaves_the_old_or_the_new_image(
        &work,
        &original,
        "rootfs.erofs",
        &version,
        0xe7f5,
        &|a, b| a == b,
    );
    let fsck = run(Command::new("fsck.erofs").arg(work.join("rootfs.erofs")));
    assert_eq!(fsck.status.code(), Some(0), "{}", text(&fsck.stderr));
    assert!(new.len() > original.len());
}

/// Bytes of an erofs image overwritten at 300 seeded places (superblock, inodes, directories
/// and data alike): each `depmod -n -b` on it succeeds or is an error naming the image (exit
/// 1), never a crash, and never changes it.
#[test]
fn corrupt_erofs_images_are_errors_not_crashes() {
    let base = TempDir::new("erofs-corrupt");
    let root = base.join("root");
    make_root(&root, false);
    let image = base.join("rootfs.erofs");
    make_erofs(&root, &image, &["--chunksize=8192"]);
    let whole = std::fs::read(&image).expect("image");
    let (len, metadata_end) = (whole.len(), whole.len().min(64 * 1024));
    // Most rounds in the metadata (superblock, inodes, directories), the rest anywhere.
    let place =
        |round: usize, random: usize| if round % 4 == 3 { random % len } else { 1024 + random % (metadata_end - 1024) };
    assert_corruptions_are_errors_not_crashes(&whole, &base.join("corrupt.erofs"), 0xe7f5, place);

    // The same on an lz4 image with big clusters and tails packed inline, whose compressed
    // files (Debian's erofs.ko) depmod reads: indexes and clusters corrupted too.
    let r = crate::util::refs();
    let (cache, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
    let big = root.join(format!("lib/modules/{VERSION}/kernel/erofs.ko"));
    std::fs::copy(cache.join(format!("lib/modules/{version}/kernel/fs/erofs/erofs.ko")), &big).expect("copy");
    let compressed = base.join("rootfs.lz4.erofs");
    make_erofs(&root, &compressed, &["-zlz4hc", "-C16384", "-Eztailpacking"]);
    let whole = std::fs::read(&compressed).expect("image");
    let len = whole.len();
    let place = |round: usize, random: usize| {
        if round % 2 == 1 {
            random % len
        } else {
            1024 + random % (len.min(64 * 1024) - 1024)
        }
    };
    assert_corruptions_are_errors_not_crashes(&whole, &base.join("corrupt.lz4.erofs"), 0x1245, place);
}
