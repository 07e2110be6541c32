//! Image files as roots (issue 12): `depmod -b IMAGE` and `modinfo -b IMAGE` against kmod and
//! against the same commands on the extracted directory; every entry the command did not
//! change is checked to be in the new image byte for byte (header, extension headers, data).

use std::path::Path;
use std::process::{Command, Output};

use crate::util::{
    differing_files, fastest, kill_rounds, leftovers, make_fixture, run, run_ok, xdkms, TempDir, KMOD30_FILES,
};

pub const VERSION: &str = "6.1.0-fixture";

/// A root with the fixture module tree and entries a command must leave alone: an owner and
/// mode of their own, a name over 100 bytes, a user xattr; merged /usr (`lib -> usr/lib`) when
/// asked.
pub fn make_root(dir: &Path, merged_usr: bool) {
    let modules = make_fixture("tree", dir, VERSION);
    if merged_usr {
        std::fs::create_dir_all(dir.join("usr/lib")).expect("mkdir");
        std::fs::rename(dir.join("lib/modules"), dir.join("usr/lib/modules")).expect("move");
        std::fs::remove_dir(dir.join("lib")).expect("rmdir");
        std::os::unix::fs::symlink("usr/lib", dir.join("lib")).expect("symlink");
    }
    drop(modules);
    std::fs::create_dir_all(dir.join("etc")).expect("mkdir");
    std::fs::write(dir.join("etc/hostname"), "target\n").expect("write");
    run_ok(Command::new("chown").arg("1000:1000").arg(dir.join("etc/hostname")));
    std::fs::set_permissions(dir.join("etc/hostname"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let deep = dir.join(format!("opt/{}/{}", "d".repeat(60), "e".repeat(60)));
    std::fs::create_dir_all(&deep).expect("mkdir");
    std::fs::write(deep.join("long-named-file.txt"), "x\n").expect("write");
    run_ok(Command::new("setfattr").args(["-n", "user.xdkms", "-v", "kept"]).arg(dir.join("etc/hostname")));
}

/// `tar` of `root` in `format` (gnu, or posix with xattrs), compressed with `compressor` (`cat`
/// for none).
fn make_tar(root: &Path, format: &str, compressor: &str, image: &Path) {
    let xattrs = if format == "posix" { "--xattrs" } else { "" };
    let script = format!(
        "set -o pipefail; {} | {compressor} > {}",
        crate::util::tar_command(&format!("{xattrs} --format={format} --sort=name -C {} -cf - .", root.display())),
        image.display()
    );
    run_ok(Command::new("bash").args(["-c", &script]));
}

/// The image decompressed (tar recognizes every codec when reading a file).
fn plain_tar(image: &Path) -> Vec<u8> {
    let script = format!(
        "case $(head -c 6 {0} | od -An -tx1 | tr -d ' \\n') in \
         1f8b*) gzip -dc {0};; fd377a*) xz -dc {0};; 28b52f*) zstd -dc {0};; *) cat {0};; esac",
        image.display()
    );
    run_ok(Command::new("bash").args(["-c", &script])).stdout
}

/// Each logical entry of a tar archive: its name, and its raw bytes (extension headers, header,
/// data with padding), in archive order.
fn raw_entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut pending = Vec::new();
    let mut at = 0;
    while at + 512 <= archive.len() && archive[at..at + 512].iter().any(|&b| b != 0) {
        let header = tar::Header::from_byte_slice(&archive[at..at + 512]);
        let size = header.entry_size().expect("size") as usize;
        let end = at + 512 + size.div_ceil(512) * 512;
        pending.extend_from_slice(&archive[at..end]);
        let kind = header.entry_type();
        if !(kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions()) {
            let mut reader = tar::Archive::new(&pending[..]);
            let name = reader
                .entries()
                .expect("entries")
                .next()
                .map(|e| String::from_utf8_lossy(&e.expect("entry").path_bytes()).into_owned())
                .unwrap_or_default();
            entries
                .push((name.trim_start_matches("./").trim_end_matches('/').to_string(), std::mem::take(&mut pending)));
        }
        at = end;
    }
    entries
}

/// modinfo -b on `image` (made from the directory `root`) prints what it prints on `root`, for
/// a name, an alias field and a module of no kernel named, and leaves the image's bytes alone.
pub fn assert_modinfo_as_on_directory(image: &Path, root: &Path) {
    let bytes = std::fs::read(image).expect("image");
    for args in [vec!["-k", VERSION, "mod-e"], vec!["-k", VERSION, "-F", "alias", "core_a"], vec!["mod_c"]] {
        let on_image = run(xdkms().arg("modinfo").arg("-b").arg(image).args(&args));
        let on_dir = run(xdkms().arg("modinfo").arg("-b").arg(root).args(&args));
        assert_eq!(on_image.status.code(), on_dir.status.code(), "{args:?}");
        assert_eq!(text(&on_image.stdout), as_on_image(&on_dir.stdout, root, image), "{args:?}");
        assert_eq!(image_stderr(&on_image), as_on_image(&on_dir.stderr, root, image), "{args:?}");
    }
    assert!(std::fs::read(image).expect("image") == bytes, "modinfo changed the image");
}

/// No temporary file is left in `dir` (where the images of a refusal test are).
pub fn assert_no_temporaries_beside(dir: &Path) {
    let names: Vec<String> =
        std::fs::read_dir(dir).expect("dir").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains("tmp")), "temporary files left beside the images: {names:?}");
}

/// Extracts an image into `dir`.
fn extract(image: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    run_ok(Command::new("tar").arg("--xattrs").arg("--xattrs-include=*").arg("-xf").arg(image).arg("-C").arg(dir));
}

/// An image run's stderr without its progress lines: a step that took a second or more says
/// so (`xdkms: writing IMAGE took 1.2 s`), and the run on the directory has no such steps.
pub fn image_stderr(out: &Output) -> String {
    let progress = |l: &&str| l.starts_with("xdkms: ") && l.contains(" took ") && l.ends_with(" s");
    text(&out.stderr).lines().filter(|l| !progress(l)).map(|l| format!("{l}\n")).collect()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Output of a command on a directory root, with that directory's path shown as the image's.
pub fn as_on_image(out: &[u8], dir: &Path, image: &Path) -> String {
    text(out).replace(&dir.display().to_string(), &image.display().to_string())
}

pub fn index_names(module_dir: &str) -> Vec<String> {
    KMOD30_FILES.iter().map(|f| format!("{module_dir}/{f}")).collect()
}

/// depmod -b IMAGE for each codec and both tar formats, plain and merged /usr.
#[test]
fn depmod_on_tar_images_writes_what_kmod_writes_and_keeps_the_rest() {
    let cases = [
        ("gnu", "cat", "tar", false),
        ("gnu", "gzip -n", "tar.gz", true),
        ("posix", "xz", "tar.xz", false),
        ("posix", "zstd -q", "tar.zst", true),
    ];
    for (format, compressor, suffix, merged_usr) in cases {
        let base = TempDir::new(&format!("image-{suffix}"));
        let root = base.join("root");
        make_root(&root, merged_usr);
        let image = base.join(format!("rootfs.{suffix}"));
        make_tar(&root, format, compressor, &image);
        let original = base.join(format!("original.{suffix}"));
        std::fs::copy(&image, &original).expect("copy");
        let before = raw_entries(&plain_tar(&image));

        let scratch = base.join("tmp");
        std::fs::create_dir_all(&scratch).expect("mkdir");
        let on_image = run(xdkms().env("TMPDIR", &scratch).arg("depmod").arg("-b").arg(&image).arg(VERSION));
        assert_eq!(std::fs::read_dir(&scratch).expect("tmp").count(), 0, "{suffix}: the scratch root is left");
        let on_dir_root = base.join("dir");
        extract(&original, &on_dir_root);
        let on_dir = run(xdkms().arg("depmod").arg("-b").arg(&on_dir_root).arg(VERSION));
        assert_eq!(on_image.status.code(), on_dir.status.code(), "{suffix}: {}", text(&on_image.stderr));
        assert_eq!(text(&on_image.stdout), as_on_image(&on_dir.stdout, &on_dir_root, &image), "{suffix}: stdout");
        assert_eq!(image_stderr(&on_image), as_on_image(&on_dir.stderr, &on_dir_root, &image), "{suffix}: stderr");

        // The indexes are kmod's, byte for byte.
        let kmod_root = base.join("kmod");
        extract(&original, &kmod_root);
        run(Command::new("depmod").arg("-b").arg(&kmod_root).arg(VERSION));
        let written = base.join("written");
        extract(&image, &written);
        let module_dir = if merged_usr { "usr/lib/modules" } else { "lib/modules" };
        let rel = format!("{module_dir}/{VERSION}");
        assert_eq!(differing_files(&kmod_root.join(&rel), &written.join(&rel), &KMOD30_FILES), Vec::<String>::new());

        // Everything else is as it was, in its place, byte for byte.
        let after = raw_entries(&plain_tar(&image));
        let indexes = index_names(&rel);
        let kept = |entries: &[(String, Vec<u8>)]| -> Vec<(String, Vec<u8>)> {
            entries.iter().filter(|(name, _)| !indexes.contains(name)).cloned().collect()
        };
        let (kept_before, kept_after) = (kept(&before), kept(&after));
        assert_eq!(kept_before.len(), kept_after.len(), "{suffix}: entries gained or lost");
        for ((name, old), (new_name, new)) in kept_before.iter().zip(&kept_after) {
            assert_eq!(name, new_name, "{suffix}: order");
            assert!(old == new, "{suffix}: {name} changed");
        }
        if format == "posix" {
            let xattr = run_ok(
                Command::new("getfattr").args(["--only-values", "-n", "user.xdkms"]).arg(written.join("etc/hostname")),
            );
            assert_eq!(text(&xattr.stdout), "kept", "{suffix}");
        }

        // Again: the same indexes, rewritten in their places.
        let again = run(xdkms().arg("depmod").arg("-b").arg(&image).arg(VERSION));
        assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
        let names = |entries: &[(String, Vec<u8>)]| entries.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&raw_entries(&plain_tar(&image))), names(&after), "{suffix}: a second run keeps the order");
    }
}

#[test]
fn modinfo_on_a_tar_image_prints_what_it_prints_on_the_directory() {
    let base = TempDir::new("image-modinfo");
    let root = base.join("root");
    make_root(&root, true);
    let image = base.join("rootfs.tar.zst");
    make_tar(&root, "gnu", "zstd -q", &image);
    assert_modinfo_as_on_directory(&image, &root);
}

pub fn assert_refused(out: &Output, image: &Path, before: &[u8], what: &str) {
    assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out.stderr));
    let name = image.file_name().expect("name").to_string_lossy().into_owned();
    assert!(text(&out.stderr).contains(&name), "{what}: the message names the image: {}", text(&out.stderr));
    assert!(std::fs::read(image).expect("image") == before, "{what}: the image changed");
}

#[test]
fn bad_images_are_refused_with_their_name_and_left_alone() {
    let base = TempDir::new("image-bad");
    let root = base.join("root");
    make_root(&root, false);
    let image = base.join("rootfs.tar.zst");
    make_tar(&root, "gnu", "zstd -q", &image);
    let whole = std::fs::read(&image).expect("image");

    let truncated = base.join("truncated.tar.zst");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).expect("write");
    let out = run(xdkms().arg("depmod").arg("-b").arg(&truncated).arg(VERSION));
    assert_refused(&out, &truncated, &whole[..whole.len() / 2], "a truncated image");

    let junk = base.join("junk.img");
    std::fs::write(&junk, vec![0x5a; 4096]).expect("write");
    let out = run(xdkms().arg("depmod").arg("-b").arg(&junk).arg(VERSION));
    assert_refused(&out, &junk, &[0x5a; 4096], "not an image");
    assert!(text(&out.stderr).contains("not a root directory or an image"), "{}", text(&out.stderr));

    let out = run(xdkms().arg("depmod").arg("-b").arg(&image).arg("6.1.0-absent"));
    assert_refused(&out, &image, &whole, "no such kernel in the image");

    let read_only = base.join("read-only.tar.zst");
    std::fs::write(&read_only, &whole).expect("write");
    std::fs::set_permissions(&read_only, std::os::unix::fs::PermissionsExt::from_mode(0o444)).expect("chmod");
    let out = run(xdkms().arg("depmod").arg("-b").arg(&read_only).arg(VERSION));
    assert_refused(&out, &read_only, &whole, "a read-only image");
    assert!(text(&out.stderr).contains("read-only"), "{}", text(&out.stderr));

    // -n writes nothing, so a read-only image is fine and stays as it was.
    let out = run(xdkms().arg("depmod").arg("-n").arg("-b").arg(&read_only).arg(VERSION));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(std::fs::read(&read_only).expect("image") == whole);
    assert_no_temporaries_beside(base.path());
}

/// SIGKILL at random points of `depmod -b IMAGE` on a tar.zst of Debian's network drivers (the
/// tree's largest directory, so that each step of a run takes long enough to be hit): see
/// [`assert_killed_depmod_leaves_the_old_or_the_new_image`].
#[test]
fn killed_depmod_on_a_tar_image_leaves_the_old_or_the_new_image() {
    let r = crate::util::refs();
    let (root, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
    let work = TempDir::new("image-kill");
    let original_path = work.join("original.tar.zst");
    let dir = format!("lib/modules/{version}");
    let script = format!(
        "set -o pipefail; {} | zstd -1 -q -T0 > {}",
        crate::util::tar_command(&format!(
            "--sort=name -C {} -cf - {dir}/kernel/drivers/net {dir}/modules.order {dir}/modules.builtin \
             {dir}/modules.builtin.modinfo",
            root.display()
        )),
        original_path.display()
    );
    run_ok(Command::new("bash").args(["-c", &script]));
    let original = std::fs::read(&original_path).expect("read");
    assert_killed_depmod_leaves_the_old_or_the_new_image(
        &work,
        &original,
        "rootfs.tar.zst",
        &version,
        0x1ead,
        &|a, b| a == b,
    );
}

/// SIGKILL at 6 seeded random points of `depmod -b IMAGE VERSION` on the image `original`,
/// written at `work/NAME` before each run: the image is always the old one or the new one; two
/// runs to the end (SOURCE_DATE_EPOCH set) write the same bytes; the next run clears what a
/// killed one left (its scratch root, a half-written image beside the old one). The new image
/// (left at `work/NAME`).
pub fn assert_killed_depmod_leaves_the_old_or_the_new_image(
    work: &TempDir,
    original: &[u8],
    name: &str,
    version: &str,
    seed: u64,
    same: &dyn Fn(&[u8], &[u8]) -> bool,
) -> Vec<u8> {
    let image = work.join(name);
    let scratch = work.join("tmp");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    let depmod = || {
        let mut cmd = xdkms();
        cmd.env("SOURCE_DATE_EPOCH", "1").env("TMPDIR", &scratch).arg("depmod").arg("-b").arg(&image).arg(version);
        cmd
    };
    // Kill points are fractions of an uninterrupted run (the fastest of two).
    let mut runs = Vec::new();
    let full_run = fastest(2, || {
        std::fs::write(&image, original).expect("write");
        run_ok(&mut depmod());
        runs.push(std::fs::read(&image).expect("read"));
    });
    let new = runs.pop().expect("two runs");
    assert!(runs[0] == new, "{name}: two runs with SOURCE_DATE_EPOCH wrote different images");
    assert!(new != original, "{name}: depmod changed nothing");
    let killed = kill_rounds(
        6,
        seed,
        full_run,
        |_, r| r,
        |_| {
            std::fs::write(&image, original).expect("restore");
            let mut cmd = depmod();
            cmd.stderr(std::process::Stdio::null());
            cmd
        },
        |round, _| {
            let now = std::fs::read(&image).expect("the image is always there");
            assert!(
                same(&now, original) || same(&now, &new),
                "{name}, round {round}: neither the old nor the new image"
            );
        },
    );
    assert!(killed >= 3, "{name}: only {killed} of 6 runs were killed");
    // A run to the end clears what the killed ones left.
    std::fs::write(&image, original).expect("restore");
    run_ok(&mut depmod());
    assert!(std::fs::read(&image).expect("read") == new, "{name}");
    let left = leftovers(&[work.path(), &scratch]);
    assert_eq!(left, Vec::<String>::new(), "{name}: left behind");
    new
}

/// `initramfs inject --root IMAGE`: the modules come out of the image's parts (extracted, never
/// written back) and the initramfs written is the one `--root DIR` writes on the extracted tree,
/// byte for byte, with the same messages.
#[test]
fn inject_takes_a_tar_image_as_its_root() {
    let r = crate::util::refs();
    let (cache, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
    let work = TempDir::new("image-inject");
    let image = work.join("rootfs.tar.zst");
    let script = format!(
        "set -o pipefail; {} | zstd -1 -q -T0 > {}",
        crate::util::tar_command(&format!("--sort=name -C {} -cf - lib/modules/{version}", cache.display())),
        image.display()
    );
    run_ok(Command::new("bash").args(["-c", &script]));
    let image_bytes = std::fs::read(&image).expect("image");
    let dir = work.join("dir");
    extract(&image, &dir);
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    std::fs::write(tree.join("bin/init"), "#!/bin/sh\n").expect("write");
    let initrd = work.join("initrd.img");
    let script = format!(
        "set -o pipefail; cd {} && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc | gzip -n > {}",
        tree.display(),
        initrd.display()
    );
    run_ok(Command::new("bash").args(["-c", &script]));
    let inject = |root: &Path, out: &Path| {
        run_ok(
            xdkms()
                .env("SOURCE_DATE_EPOCH", "1")
                .args(["initramfs", "inject", "--root"])
                .arg(root)
                .args(["-k", &version, "-o"])
                .arg(out)
                .arg(&initrd)
                .args(["nvme", "e1000e"]),
        )
    };
    let (from_dir, from_image) = (work.join("from-dir.img"), work.join("from-image.img"));
    let on_dir = inject(&dir, &from_dir);
    let on_image = inject(&image, &from_image);
    assert_eq!(image_stderr(&on_image), as_on_image(&on_dir.stderr, &dir, &image));
    let written = std::fs::read(&from_image).expect("out");
    assert!(
        written == std::fs::read(&from_dir).expect("out"),
        "the initramfs differs from the one made from the directory"
    );
    assert!(written.len() > 100_000, "nvme and e1000e are in it");
    assert!(std::fs::read(&image).expect("image") == image_bytes, "inject changed its root image");
}

/// A newc archive of `root` made by GNU cpio (`find . | cpio -o -H newc`), through `compressor`.
fn make_cpio(root: &Path, compressor: &str, image: &Path) {
    let script = format!(
        "set -o pipefail; cd {} && find . | LC_ALL=C sort | cpio -o -H newc --quiet | {compressor} > {}",
        root.display(),
        image.display()
    );
    run_ok(Command::new("bash").args(["-c", &script]));
}

/// A cpio image extracted into `dir` by GNU cpio (owners, modes and mtimes kept).
fn uncpio(image: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let script = format!(
        "set -o pipefail; {{ zstd -dcq {0} 2>/dev/null || gzip -dc {0} 2>/dev/null || cat {0}; }} | \
         cpio -idm --quiet --no-absolute-filenames",
        image.display()
    );
    run_ok(Command::new("bash").args(["-c", &script]).current_dir(dir));
}

/// Each entry under `dir` as find prints it: type and mode, owner, size, mtime, link target
/// (the mtime of a directory or symlink left out: cpio -idm does not set those).
fn find_listing(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let out = run_ok(
        Command::new("find").args([".", "-mindepth", "1", "-printf", "%P %y%m %U:%G %s %T@ %l\\n"]).current_dir(dir),
    );
    let without_dir_mtime = |rest: &str| match rest.starts_with('d') || rest.starts_with('l') {
        true => rest.split(' ').enumerate().filter(|(i, _)| *i != 3).map(|(_, f)| f).collect::<Vec<_>>().join(" "),
        false => rest.to_string(),
    };
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(p, rest)| (p.to_string(), without_dir_mtime(rest))))
        .collect()
}

/// depmod -b IMAGE on cpio archives (gzip, zstd, plain; flat and merged /usr) made by GNU
/// cpio, one module hard-linked from outside the module tree: output as on the extracted tree,
/// kmod's indexes, and every other entry extracted by cpio as it was (type, mode, owner, size,
/// mtime, link target, bytes).
#[test]
fn depmod_on_cpio_images_writes_what_kmod_writes_and_keeps_the_rest() {
    for (compressor, suffix, merged_usr) in
        [("gzip -n", "cpio.gz", false), ("zstd -q", "cpio.zst", true), ("cat", "cpio", false)]
    {
        let base = TempDir::new(&format!("image-{suffix}"));
        let root = base.join("root");
        make_root(&root, merged_usr);
        // A module hard-linked from outside the module tree: GNU cpio stores the data with the
        // last name, /opt's, which depmod does not read.
        let modules = if merged_usr { "usr/lib/modules" } else { "lib/modules" };
        let found = run_ok(Command::new("find").arg(root.join(modules)).args(["-name", "*.ko", "-print", "-quit"]));
        let module = text(&found.stdout).trim().to_string();
        std::fs::hard_link(&module, root.join("opt/linked.ko")).expect("link");
        let image = base.join(format!("rootfs.{suffix}"));
        make_cpio(&root, compressor, &image);
        let original = base.join(format!("original.{suffix}"));
        std::fs::copy(&image, &original).expect("copy");

        let on_image = run(xdkms().arg("depmod").arg("-b").arg(&image).arg(VERSION));
        let on_dir_root = base.join("dir");
        uncpio(&original, &on_dir_root);
        let on_dir = run(xdkms().arg("depmod").arg("-b").arg(&on_dir_root).arg(VERSION));
        assert_eq!(on_image.status.code(), Some(0), "{suffix}: {}", text(&on_image.stderr));
        assert_eq!(text(&on_image.stdout), as_on_image(&on_dir.stdout, &on_dir_root, &image), "{suffix}: stdout");
        assert_eq!(image_stderr(&on_image), as_on_image(&on_dir.stderr, &on_dir_root, &image), "{suffix}: stderr");
        let magic = |p: &Path| std::fs::read(p).expect("read")[..4].to_vec();
        assert_eq!(magic(&image), magic(&original), "{suffix}: the codec changed");

        let (kmod_root, written, before) = (base.join("kmod"), base.join("written"), base.join("before"));
        uncpio(&original, &kmod_root);
        run_ok(Command::new("depmod").arg("-b").arg(&kmod_root).arg(VERSION));
        uncpio(&image, &written);
        uncpio(&original, &before);
        let rel = format!("{}/{VERSION}", if merged_usr { "usr/lib/modules" } else { "lib/modules" });
        assert_eq!(differing_files(&kmod_root.join(&rel), &written.join(&rel), &KMOD30_FILES), Vec::<String>::new());
        let (listed_before, listed_after) = (find_listing(&before), find_listing(&written));
        for (path, line) in &listed_before {
            if *path != rel {
                assert_eq!(listed_after.get(path), Some(line), "{suffix}: {path}");
            }
            if before.join(path).is_file() && !before.join(path).is_symlink() {
                let same = std::fs::read(before.join(path)).ok() == std::fs::read(written.join(path)).ok();
                assert!(same, "{suffix}: {path} differs");
            }
        }
        let added: Vec<&String> = listed_after.keys().filter(|p| !listed_before.contains_key(*p)).collect();
        assert!(added.iter().all(|p| index_names(&rel).contains(p)), "{suffix}: added {added:?}");
    }
}

/// A truncated cpio.gz and an initramfs of two archives are refused, named, unchanged.
#[test]
fn bad_cpio_images_are_refused_with_their_name_and_left_alone() {
    let base = TempDir::new("image-cpio-bad");
    let root = base.join("root");
    make_root(&root, false);
    let image = base.join("rootfs.cpio.gz");
    make_cpio(&root, "gzip -n", &image);
    let whole = std::fs::read(&image).expect("image");
    let depmod = |image: &Path| run(xdkms().arg("depmod").arg("-b").arg(image).arg(VERSION));

    let truncated = base.join("truncated.cpio.gz");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).expect("write");
    assert_refused(&depmod(&truncated), &truncated, &whole[..whole.len() / 2], "a truncated cpio.gz");

    let two = base.join("two.cpio.gz");
    let mut bytes = whole.clone();
    bytes.extend_from_slice(&whole);
    std::fs::write(&two, &bytes).expect("write");
    let out = depmod(&two);
    assert_refused(&out, &two, &bytes, "two archives");
    assert!(text(&out.stderr).contains("initramfs inject"), "the message says what to do: {}", text(&out.stderr));
    assert_no_temporaries_beside(base.path());
}

/// SIGKILL at random points of `depmod -b IMAGE` on a cpio.zst of Debian's network drivers:
/// see [`assert_killed_depmod_leaves_the_old_or_the_new_image`].
#[test]
fn killed_depmod_on_a_cpio_image_leaves_the_old_or_the_new_image() {
    let work = TempDir::new("image-cpio-kill");
    let root = work.join("root");
    let version = crate::ext4_images::debian_drivers_root(&root, "net");
    let original_path = work.join("original.cpio.zst");
    make_cpio(&root, "zstd -1 -q -T0", &original_path);
    let original = std::fs::read(&original_path).expect("read");
    assert_killed_depmod_leaves_the_old_or_the_new_image(
        &work,
        &original,
        "rootfs.cpio.zst",
        &version,
        0xc910,
        &|a, b| a == b,
    );
}

/// Progress of image steps: by default a step under a second says nothing; with
/// XDKMS_PROGRESS_AFTER=0 each step ends with one plain line saying how long it took when
/// stderr is no terminal, and under a terminal (script(1)) its line is drawn and then erased.
#[test]
fn image_steps_report_their_progress_as_lines_or_on_a_terminal() {
    let base = TempDir::new("image-progress");
    let root = base.join("root");
    make_root(&root, false);
    let image = base.join("rootfs.tar.zst");
    make_tar(&root, "gnu", "zstd -q", &image);
    let depmod = |after: Option<&str>| {
        let mut cmd = xdkms();
        if let Some(after) = after {
            cmd.env("XDKMS_PROGRESS_AFTER", after);
        }
        run(cmd.arg("depmod").arg("-b").arg(&image).arg(VERSION))
    };
    // The fixture's own depmod messages come first; the progress lines are the `xdkms:` ones.
    let quiet = depmod(None);
    assert!(!text(&quiet.stderr).contains("xdkms: "), "a step under a second said something");
    let shown = text(&depmod(Some("0")).stderr);
    let lines: Vec<&str> = shown.lines().filter(|l| l.starts_with("xdkms: ")).collect();
    assert_eq!(lines.len(), 2, "{shown}");
    assert!(lines[0].starts_with(&format!("xdkms: extracting from {} took ", image.display())), "{shown}");
    assert!(lines[1].starts_with(&format!("xdkms: writing {} took ", image.display())), "{shown}");

    let command = format!(
        "XDKMS_PROGRESS_AFTER=0 {} depmod -b {} {VERSION}",
        crate::util::xdkms_bin().display(),
        image.display()
    );
    let on_terminal = run_ok(Command::new("script").args(["-qec", &command, "/dev/null"]));
    let drawn = text(&on_terminal.stdout);
    assert!(drawn.contains(&format!("\r\x1b[Kxdkms: extracting from {} (0 s)", image.display())), "{drawn:?}");
    assert!(drawn.contains(&format!("\r\x1b[Kxdkms: writing {} (0 s)", image.display())), "{drawn:?}");
    assert!(drawn.ends_with("\r\x1b[K"), "the line is erased at the end: {drawn:?}");
    assert!(!drawn.contains(" took "), "{drawn:?}");
}

/// Bytes of the image `whole` overwritten at 300 seeded places (`place` picks each from the
/// round and a random number), each written to `corrupt` in turn: every `depmod -n -b` on it
/// succeeds or is an error naming the image (exit 1), never a crash, and never changes it;
/// some corruption is noticed.
pub fn assert_corruptions_are_errors_not_crashes(
    whole: &[u8],
    corrupt: &Path,
    seed: u64,
    mut place: impl FnMut(usize, usize) -> usize,
) {
    let mut seed = seed;
    let mut next = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    let name = corrupt.file_name().expect("name").to_string_lossy().into_owned();
    let mut refused = 0;
    for round in 0..300 {
        let mut bytes = whole.to_vec();
        let at = place(round, next());
        bytes[at] = (next() & 0xff) as u8;
        bytes[at ^ 1] = (next() & 0xff) as u8;
        std::fs::write(corrupt, &bytes).expect("write");
        let out = run(xdkms().arg("depmod").arg("-n").arg("-b").arg(corrupt).arg(VERSION));
        let code = out.status.code();
        assert!(
            code == Some(0) || code == Some(1),
            "round {round}, byte {at}: {:?}: {}",
            out.status,
            text(&out.stderr)
        );
        if code == Some(1) {
            refused += 1;
            assert!(text(&out.stderr).contains(&name), "round {round}: {}", text(&out.stderr));
        }
        assert!(std::fs::read(corrupt).expect("read") == bytes, "round {round}: the image changed");
    }
    eprintln!("{refused} of 300 corruptions refused");
    assert!(refused > 0, "no corruption was noticed");
}
