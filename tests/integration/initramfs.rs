//! `xdkms initramfs` against the reference tools: GNU cpio, gzip/xz/zstd/lz4/bzip2/lzma,
//! Debian's lsinitramfs and kmod's depmod.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::{refs, run, run_ok, xdkms, TempDir};

/// A small tree: directories, an executable, a symlink, a hard-linked pair, an empty file.
fn sample_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc/conf.d")).expect("mkdir");
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    std::fs::write(dir.join("init"), "#!/bin/sh\necho hi\n").expect("write");
    run_ok(Command::new("chmod").arg("755").arg(dir.join("init")));
    std::fs::write(dir.join("etc/conf.d/a.conf"), "x=1\n").expect("write");
    std::fs::write(dir.join("etc/empty"), "").expect("write");
    std::fs::write(dir.join("bin/tool"), vec![7u8; 70_000]).expect("write");
    std::fs::hard_link(dir.join("bin/tool"), dir.join("bin/tool-link")).expect("link");
    std::os::unix::fs::symlink("../init", dir.join("bin/sh")).expect("symlink");
}

/// `cpio -o -H newc` of `dir`, names sorted, piped through `compress` (a shell command).
fn reference_archive(dir: &Path, compress: &str) -> Vec<u8> {
    let out = run_ok(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | {compress}",
        dir.display()
    )));
    out.stdout
}

fn cpio_names(archive_bytes: &[u8], decompress: &str) -> Vec<String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("{decompress} | cpio --quiet -t"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = archive_bytes.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
    let out = child.wait_with_output().expect("cpio -t");
    let _ = writer.join();
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

/// GNU cpio's extraction (`cpio -id OPTIONS`) of `image`, piped through `decompress`, into `dir`.
fn cpio_extract(image: &Path, decompress: &str, options: &str, dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && {decompress} < '{}' | cpio --quiet -id {options}",
        dir.display(),
        image.display()
    )));
}

fn xdkms_list(image: &Path) -> Vec<String> {
    let out = run_ok(xdkms().args(["initramfs", "list"]).arg(image));
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

const CODECS: [(&str, &str, &str); 6] = [
    ("gzip", "gzip -n -9", "gzip -dc"),
    ("xz", "xz --check=crc32 --lzma2=dict=1MiB", "xz -dc"),
    ("zstd", "zstd -q -19", "zstd -dcq"),
    ("lz4", "lz4 -l -q -9", "lz4 -dcq"),
    ("bzip2", "bzip2 -9", "bzip2 -dc"),
    ("lzma", "lzma -9", "lzma -dc"),
];

/// Early uncompressed microcode archive + a main member made by each codec's own tool (+ another
/// member after it): xdkms reads every segment and lists what cpio -t lists for each.
#[test]
fn layouts_made_by_reference_tools_are_read() {
    let work = TempDir::new("ref-layouts");
    let early = work.join("early");
    std::fs::create_dir_all(early.join("kernel/x86/microcode")).expect("mkdir");
    std::fs::write(early.join("kernel/x86/microcode/GenuineIntel.bin"), vec![0xa5u8; 4096]).expect("write");
    std::fs::write(early.join("early_cpio"), "1\n").expect("write");
    let main = work.join("main");
    sample_tree(&main);
    let early_bytes = reference_archive(&early, "cat");
    let main_tree = reference_archive(&main, "cat");
    for (name, compress, decompress) in CODECS {
        let member = reference_archive(&main, compress);
        let extra = reference_archive(&early, "gzip -n");
        let mut image = early_bytes.clone();
        image.extend_from_slice(&member);
        if name == "lz4" {
            image.extend_from_slice(&[0; 4]); // legacy LZ4 has no end marker
        }
        image.extend_from_slice(&extra);
        let path = work.join(format!("{name}.img"));
        std::fs::write(&path, &image).expect("write");
        let mut want = cpio_names(&early_bytes, "cat");
        want.extend(cpio_names(&member, decompress));
        want.extend(cpio_names(&extra, "gzip -dc"));
        assert_eq!(xdkms_list(&path), want, "{name}");
        let segments = run_ok(xdkms().args(["initramfs", "list", "--segments"]).arg(&path));
        let text = String::from_utf8_lossy(&segments.stdout);
        assert!(
            text.contains(&format!("offset {} length {} {name}", early_bytes.len(), member.len())),
            "{name}:\n{text}"
        );
        // Extraction gives the tree back, hard link data included.
        let out = work.join(format!("{name}-x"));
        run_ok(xdkms().args(["initramfs", "extract"]).arg(&path).arg(&out));
        assert_eq!(std::fs::read(out.join("bin/tool-link")).expect("link"), vec![7u8; 70_000], "{name}");
        assert_eq!(std::fs::read_link(out.join("bin/sh")).expect("symlink"), PathBuf::from("../init"));
        assert_eq!(std::fs::read(out.join("kernel/x86/microcode/GenuineIntel.bin")).expect("ucode").len(), 4096);
    }
    assert!(!main_tree.is_empty());
}

/// xdkms's own writers: each codec's output passes its reference tool, and cpio -t lists what
/// xdkms lists.
#[test]
fn created_images_pass_reference_tools() {
    let work = TempDir::new("create");
    let tree = work.join("tree");
    sample_tree(&tree);
    for (name, _, decompress) in CODECS {
        let image = work.join(format!("{name}.img"));
        run_ok(xdkms().args(["initramfs", "create", "--compress", name, "-o"]).arg(&image).arg(&tree));
        let test = match name {
            "lz4" => format!("lz4 -dcq '{}' > /dev/null", image.display()),
            other => format!("{other} -t '{}'", image.display()),
        };
        run_ok(Command::new("sh").arg("-c").arg(test));
        let bytes = std::fs::read(&image).expect("read");
        assert_eq!(cpio_names(&bytes, decompress), xdkms_list(&image), "{name}");
    }
}

fn inject_args(root: &Path, version: &str) -> Vec<String> {
    vec!["initramfs".into(), "inject".into(), "--root".into(), root.display().to_string(), "-k".into(), version.into()]
}

/// Debian's busybox image layout with early microcode, injected (rewrite): lsinitramfs lists what
/// xdkms lists, the early segment is byte-identical, and the indexes inside equal kmod's depmod
/// on the extracted tree.
#[test]
fn rewritten_images_work_with_lsinitramfs_and_kmod() {
    let r = refs();
    let (root, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
    let work = TempDir::new("rewrite-interop");
    let early = work.join("early");
    std::fs::create_dir_all(early.join("kernel/x86/microcode")).expect("mkdir");
    std::fs::write(early.join("kernel/x86/microcode/AuthenticAMD.bin"), vec![0x5au8; 1000]).expect("write");
    let early_bytes = reference_archive(&early, "cat");
    let tree = work.join("tree");
    sample_tree(&tree);
    for (name, compress, _) in &CODECS[..3] {
        let mut image = early_bytes.clone();
        image.extend_from_slice(&reference_archive(&tree, compress));
        let base = work.join(format!("base-{name}.img"));
        std::fs::write(&base, &image).expect("write");
        let out = work.join(format!("out-{name}.img"));
        run_ok(xdkms().args(inject_args(&root, &version)).arg("-o").arg(&out).arg(&base).args(["ext4", "e1000e"]));
        let bytes = std::fs::read(&out).expect("read");
        assert!(bytes.starts_with(&early_bytes), "{name}: the early archive changed");
        let ls = run_ok(Command::new("lsinitramfs").arg(&out));
        let mut listed: Vec<String> = String::from_utf8_lossy(&ls.stdout).lines().map(String::from).collect();
        let mut ours = xdkms_list(&out);
        listed.sort();
        ours.sort();
        assert_eq!(listed, ours, "{name}");
        assert!(
            ours.iter().any(|n| n.ends_with("kernel/fs/ext4/ext4.ko")) && ours.iter().any(|n| n.ends_with("/jbd2.ko"))
        );

        // The indexes in the image are what kmod's depmod makes of the same tree.
        let extracted = work.join(format!("x-{name}"));
        run_ok(xdkms().args(["initramfs", "extract"]).arg(&out).arg(&extracted));
        let moddir = extracted.join("lib/modules").join(&version);
        let inside: Vec<(String, Vec<u8>)> = crate::util::KMOD30_FILES[..10]
            .iter()
            .map(|f| (f.to_string(), std::fs::read(moddir.join(f)).expect(f)))
            .collect();
        run_ok(Command::new("depmod").arg("-b").arg(&extracted).arg(&version));
        for (file, data) in inside {
            assert!(std::fs::read(moddir.join(&file)).expect("kmod's") == data, "{name}: {file} differs from kmod's");
        }
    }
}

#[test]
fn injection_is_reproducible() {
    let r = refs();
    let (root, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
    let work = TempDir::new("reproducible");
    let tree = work.join("tree");
    sample_tree(&tree);
    let base = work.join("base.img");
    std::fs::write(&base, reference_archive(&tree, "zstd -q")).expect("write");
    for mode in ["rewrite", "append"] {
        let outputs: Vec<Vec<u8>> = (0..2)
            .map(|i| {
                let out = work.join(format!("{mode}-{i}.img"));
                run_ok(
                    xdkms()
                        .env("SOURCE_DATE_EPOCH", "1700000000")
                        .args(inject_args(&root, &version))
                        .args(["--mode", mode, "-o"])
                        .arg(&out)
                        .arg(&base)
                        .args(["nvme", "virtio_net"]),
                );
                std::fs::read(&out).expect("read")
            })
            .collect();
        assert!(outputs[0] == outputs[1], "{mode}: two injections differ");
        // Every member xdkms wrote carries SOURCE_DATE_EPOCH (in append mode: the last segment).
        let image = work.join(format!("{mode}-0.img"));
        let segments = run_ok(xdkms().args(["initramfs", "list", "--segments"]).arg(&image));
        let last = String::from_utf8_lossy(&segments.stdout)
            .lines()
            .rfind(|l| l.starts_with("segment"))
            .and_then(|l| l.split_whitespace().nth(3).map(String::from))
            .expect("a segment line");
        let decompressed = run_ok(Command::new("sh").arg("-c").arg(format!(
            "tail -c +{} '{}' | zstd -dcq | cpio --quiet -tv",
            last.parse::<usize>().expect("offset") + 1,
            image.display()
        )));
        let listing = String::from_utf8_lossy(&decompressed.stdout);
        assert!(listing.contains("nvme.ko") && listing.contains("Nov 14  2023"), "{mode}:\n{listing}");
    }
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let r = refs();
    let (root, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
    let work = TempDir::new("bad-images");
    let tree = work.join("tree");
    sample_tree(&tree);
    let good = reference_archive(&tree, "gzip -n");
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() / 2].to_vec(), "cannot be decompressed"),
        ("unknown-magic", b"PK\x03\x04 not an initramfs".to_vec(), "unknown magic 50 4b 03 04"),
        ("junk-after", [good.clone(), b"JUNKJUNK".to_vec()].concat(), "unknown magic"),
        ("empty", vec![0; 1024], "no cpio archive"),
    ];
    let mut long_name = reference_archive(&tree, "cat");
    long_name[94..102].copy_from_slice(b"00002000");
    cases.push(("namesize", long_name, "name size 8192"));
    for (what, bytes, message) in cases {
        let image = work.join(format!("{what}.img"));
        std::fs::write(&image, &bytes).expect("write");
        for args in [vec!["list"], vec!["inject"]] {
            let mut cmd = xdkms();
            if args[0] == "inject" {
                cmd.args(inject_args(&root, &version)).arg(&image).arg("virtio_blk");
            } else {
                cmd.args(["initramfs", "list"]).arg(&image);
            }
            let out = run(&mut cmd);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{what} {args:?}");
            assert!(stderr.contains(message) && stderr.contains(&format!("{what}.img")), "{what}: {stderr}");
            assert!(std::fs::read(&image).expect("read") == bytes, "{what}: the image changed");
        }
    }

    // Names that would escape the destination are refused on extract, and nothing is created.
    for evil in ["../escape", "/etc/evil"] {
        let evil_tree = work.join("evil-src");
        let _ = std::fs::remove_dir_all(&evil_tree);
        std::fs::create_dir_all(&evil_tree).expect("mkdir");
        std::fs::write(evil_tree.join("x"), "x").expect("write");
        let mut bytes = reference_archive(&evil_tree, "cat");
        // Rename member "x" (namesize 2) to the evil name by rebuilding the header.
        let name_at = 110;
        assert_eq!(&bytes[name_at..name_at + 2], b"x\0");
        let mut patched = bytes[..94].to_vec();
        patched.extend_from_slice(format!("{:08X}", evil.len() + 1).as_bytes());
        patched.extend_from_slice(&bytes[102..110]);
        patched.extend_from_slice(evil.as_bytes());
        patched.push(0);
        while !patched.len().is_multiple_of(4) {
            patched.push(0);
        }
        let data_at = (110 + 2usize).next_multiple_of(4);
        patched.extend_from_slice(&bytes[data_at..]);
        bytes = patched;
        let image = work.join("evil.img");
        std::fs::write(&image, &bytes).expect("write");
        assert!(xdkms_list(&image).contains(&evil.to_string()));
        let dest = work.join("evil-out");
        let out = run(xdkms().args(["initramfs", "extract"]).arg(&image).arg(&dest));
        assert_eq!(out.status.code(), Some(1), "{evil}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("outside the destination"), "{evil}");
        assert!(!dest.exists() && !work.path().parent().expect("parent").join("escape").exists());
    }

    // A module that does not exist: suggestions. A missing ROOT: named.
    let image = work.join("good.img");
    std::fs::write(&image, &good).expect("write");
    let out = run(xdkms().args(inject_args(&root, &version)).arg(&image).arg("virtio_blkk"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("did you mean virtio_blk"), "{stderr}");
    let out = run(xdkms().args(inject_args(&work.join("no-root"), &version)).arg(&image).arg("virtio_blk"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-root does not exist"));
    assert!(std::fs::read(&image).expect("read") == good);
}

/// A module whose firmware is missing is still injected, with a warning (as dracut does); the
/// firmware that exists comes along, compressed variants included.
#[test]
fn firmware_comes_along_and_missing_firmware_warns() {
    let r = refs();
    let (root, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
    let work = TempDir::new("firmware");
    // A root sharing the Debian modules (hard links) with one firmware file present.
    let fw_root = work.join("root");
    crate::util::copy_module_dir(&root, &version, &fw_root);
    let tree = work.join("tree");
    sample_tree(&tree);
    let base = work.join("base.img");
    std::fs::write(&base, reference_archive(&tree, "gzip -n")).expect("write");
    // e100 declares firmware e100/d101m_ucode.bin, d101s_ucode.bin and d102e_ucode.bin.
    std::fs::create_dir_all(fw_root.join("lib/firmware/e100")).expect("mkdir");
    std::fs::write(fw_root.join("lib/firmware/e100/d101m_ucode.bin"), "fw").expect("write");
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("printf fw | xz > '{}'", fw_root.join("lib/firmware/e100/d101s_ucode.bin.xz").display())),
    );
    let out = run_ok(xdkms().args(inject_args(&fw_root, &version)).arg(&base).arg("e100"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: firmware e100/d102e_ucode.bin not found"), "{stderr}");
    let listed = xdkms_list(&base);
    assert!(listed.contains(&"lib/firmware/e100/d101m_ucode.bin".to_string()), "{listed:?}");
    assert!(listed.contains(&"lib/firmware/e100/d101s_ucode.bin.xz".to_string()), "{listed:?}");
}

/// ROOT's own indexes, when current, give the same image as reading every module; a stale index
/// (a module newer than modules.dep) is not trusted.
#[test]
fn roots_own_indexes_give_the_same_image() {
    let r = refs();
    let (root, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
    let work = TempDir::new("root-indexes");
    let indexed = work.join("indexed");
    let moddir = crate::util::copy_module_dir(&root, &version, &indexed);
    run_ok(xdkms().arg("depmod").arg("-b").arg(&indexed).arg(&version));
    let tree = work.join("tree");
    sample_tree(&tree);
    let base = work.join("base.img");
    std::fs::write(&base, reference_archive(&tree, "gzip -n")).expect("write");
    let inject = |from: &Path, out: &str| {
        let out = work.join(out);
        run_ok(
            xdkms()
                .env("SOURCE_DATE_EPOCH", "1")
                .args(inject_args(from, &version))
                .arg("-o")
                .arg(&out)
                .arg(&base)
                .args(["nvme", "e1000e", "virtio:d00000002v00001AF4", "fs-btrfs"]),
        );
        std::fs::read(out).expect("read")
    };
    let reference = inject(&root, "unindexed.img");
    assert!(inject(&indexed, "indexed.img") == reference, "ROOT's indexes gave another image");
    // Make the index stale and wrong: modules.dep no longer lists nvme's dependencies, and a
    // module is newer than it. The modules themselves must be read again.
    let dep = std::fs::read_to_string(moddir.join("modules.dep")).expect("modules.dep");
    let broken: String = dep
        .lines()
        .map(|l| {
            if l.contains("/nvme.ko:") {
                format!("{}:\n", l.split(':').next().unwrap_or(l))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(moddir.join("modules.dep"), broken).expect("write");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(moddir.join("modules.dep"))
        .expect("open")
        .set_modified(old)
        .expect("touch");
    let module = moddir.join("kernel/drivers/block/loop.ko");
    let copy = std::fs::read(&module).expect("read");
    std::fs::remove_file(&module).expect("unlink the hard link");
    std::fs::write(&module, copy).expect("a newer module");
    assert!(inject(&indexed, "stale.img") == reference, "a stale index was trusted");
}

/// The image's own depmod.d shapes its indexes, as the target's depmod would apply it: here an
/// `exclude` drops the virtio directory from them (checked against kmod's depmod given the same
/// configuration).
#[test]
fn the_images_depmod_d_applies_to_its_indexes() {
    let r = refs();
    let (root, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
    let work = TempDir::new("image-depmod-d");
    let tree = work.join("tree");
    sample_tree(&tree);
    std::fs::create_dir_all(tree.join("etc/depmod.d")).expect("mkdir");
    std::fs::write(tree.join("etc/depmod.d/local.conf"), "exclude virtio\nsearch updates built-in\n").expect("write");
    for (mode, compress) in [("rewrite", "gzip -n"), ("append", "zstd -q")] {
        let image = work.join(format!("{mode}.img"));
        std::fs::write(&image, reference_archive(&tree, compress)).expect("write");
        run_ok(
            xdkms().args(inject_args(&root, &version)).args(["--mode", mode]).arg(&image).args(["virtio_blk", "nvme"]),
        );
        let extracted = work.join(format!("x-{mode}"));
        run_ok(xdkms().args(["initramfs", "extract"]).arg(&image).arg(&extracted));
        let moddir = extracted.join("lib/modules").join(&version);
        let dep = std::fs::read_to_string(moddir.join("modules.dep")).expect("modules.dep");
        assert!(dep.contains("/nvme.ko:") && !dep.contains("kernel/drivers/virtio/"), "{mode}:\n{dep}");
        let inside = std::fs::read(moddir.join("modules.dep.bin")).expect("dep.bin");
        run_ok(
            Command::new("depmod")
                .arg("-C")
                .arg(extracted.join("etc/depmod.d"))
                .arg("-b")
                .arg(&extracted)
                .arg(&version),
        );
        assert!(
            std::fs::read(moddir.join("modules.dep.bin")).expect("kmod's") == inside,
            "{mode}: differs from kmod's"
        );
    }
}

/// Member names are bytes to the kernel: names that are not UTF-8 (and ones with newlines or
/// backslashes) are listed byte for byte as `cpio -t` lists them and extracted as `cpio -i`
/// extracts them, contents, modes and hard links included.
#[test]
fn names_the_kernel_accepts_are_listed_and_extracted_as_cpio_does() {
    use std::os::unix::ffi::OsStrExt;
    let work = TempDir::new("byte-names");
    let tree = work.join("tree");
    sample_tree(&tree);
    for name in [&b"caf\xe9"[..], b"new\nline", b"back\\slash", "ünïcödé".as_bytes()] {
        std::fs::write(tree.join(std::ffi::OsStr::from_bytes(name)), name).expect("write");
    }
    for (codec, compress, decompress) in [("gzip", "gzip -n", "gzip -dc"), ("zstd", "zstd -q", "zstd -dcq")] {
        let bytes = reference_archive(&tree, compress);
        let image = work.join(format!("names.{codec}"));
        std::fs::write(&image, &bytes).expect("write");
        let listed = run_ok(xdkms().args(["initramfs", "list"]).arg(&image)).stdout;
        let want =
            run_ok(Command::new("sh").arg("-c").arg(format!("{decompress} < '{}' | cpio --quiet -t", image.display())))
                .stdout;
        assert_eq!(listed, want, "{codec}: list differs from cpio -t");
        let ours = work.join(format!("x-{codec}"));
        run_ok(xdkms().args(["initramfs", "extract"]).arg(&image).arg(&ours));
        let theirs = work.join(format!("cpio-{codec}"));
        cpio_extract(&image, decompress, "--no-absolute-filenames", &theirs);
        let diff = run(Command::new("diff").arg("-r").arg("--no-dereference").arg(&ours).arg(&theirs));
        assert!(
            diff.status.success(),
            "{codec}: extract differs from cpio -i:\n{}",
            String::from_utf8_lossy(&diff.stdout)
        );
        let mode = |dir: &Path, name: &str| {
            use std::os::unix::fs::MetadataExt;
            std::fs::symlink_metadata(dir.join(name)).expect(name).mode()
        };
        for name in ["init", "bin", "etc/empty", "bin/sh"] {
            assert_eq!(mode(&ours, name), mode(&theirs, name), "{codec}: mode of {name}");
        }
        use std::os::unix::fs::MetadataExt;
        let inode = |dir: &Path, name: &str| std::fs::metadata(dir.join(name)).expect(name).ino();
        assert_eq!(inode(&ours, "bin/tool"), inode(&ours, "bin/tool-link"), "{codec}: hard link");
        // inject writes names back as UTF-8 paths: it refuses the image, naming it and the
        // member, and leaves it as it was.
        let r = refs();
        let (root, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
        let out = run(xdkms().args(inject_args(&root, &version)).arg(&image).arg("virtio_blk"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{codec}: {stderr}");
        assert!(stderr.contains(&format!("names.{codec}")) && stderr.contains("caf\\xe9"), "{codec}: {stderr}");
        assert!(!stderr.contains("not an initramfs image"), "{codec}: a valid image was called corrupt: {stderr}");
        assert!(std::fs::read(&image).expect("read") == bytes, "{codec}: the image changed");
    }
}

/// Something other than an image file (a device that never ends) is refused at once.
#[test]
fn a_device_is_not_an_image() {
    for command in ["list", "extract"] {
        let mut cmd = xdkms();
        cmd.args(["initramfs", command, "/dev/zero"]);
        if command == "extract" {
            cmd.arg(std::env::temp_dir().join(format!("xdkms-never-{}", std::process::id())));
        }
        let out = run(&mut cmd);
        assert_eq!(out.status.code(), Some(1), "{command}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("/dev/zero is not a regular file"), "{command}");
    }
}

/// A few KiB of image can decompress to terabytes: extract and inject stop at --max-unpacked
/// (named in the error, with the image), write nothing, and leave no scratch files in TMPDIR.
#[test]
fn unpacking_past_the_limit_is_refused_and_leaves_nothing() {
    let r = refs();
    let (root, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
    let work = TempDir::new("max-unpacked");
    let tree = work.join("tree");
    sample_tree(&tree);
    let good = reference_archive(&tree, "zstd -q");
    let image = work.join("image.img");
    std::fs::write(&image, &good).expect("write");
    let scratch = work.join("tmp");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    let dest = work.join("out");
    let extract =
        |limit: &str| run(xdkms().args(["initramfs", "extract", "--max-unpacked", limit]).arg(&image).arg(&dest));
    let inject = |limit: &str| {
        run(xdkms()
            .env("TMPDIR", &scratch)
            .args(inject_args(&root, &version))
            .args(["--max-unpacked", limit])
            .arg(&image)
            .arg("virtio_blk"))
    };
    // bin/tool alone holds 70,000 bytes.
    for out in [extract("64K"), inject("64K")] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("image.img") && stderr.contains("--max-unpacked"), "{stderr}");
    }
    assert!(!dest.exists() && std::fs::read(&image).expect("read") == good);
    assert_eq!(std::fs::read_dir(&scratch).expect("tmp").count(), 0, "scratch files were left in TMPDIR");
    let out = extract("12Q");
    assert!(String::from_utf8_lossy(&out.stderr).contains("size \"12Q\""), "a bad size is named");
    for out in [extract("1M"), inject("1M")] {
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(dest.join("bin/tool").is_file() && std::fs::read(&image).expect("read") != good);
    assert_eq!(std::fs::read_dir(&scratch).expect("tmp").count(), 0, "scratch files were left in TMPDIR");
}

/// `-o` into a directory that is not there: one message naming the file once (it named it
/// twice and the OS error twice, a whole error chain printed over a message holding its source).
#[test]
fn regression_a_missing_output_directory_is_said_once() {
    let work = TempDir::new("initramfs-missing-dir");
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    std::fs::write(tree.join("bin/init"), "#!/bin/sh\n").expect("write");
    let output = work.join("no-such-dir/initrd.img");
    let out = run(xdkms().args(["initramfs", "create"]).arg(&tree).arg("-o").arg(&output));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("xdkms initramfs: error: cannot write {}: No such file or directory (os error 2)\n", output.display())
    );
}

/// `cpio -o -H FORMAT` of the entries `names` of `dir`, in that order, piped through `compress`.
fn archive_of(dir: &Path, names: &[&str], format: &str, compress: &str) -> Vec<u8> {
    let list = dir.join(".names");
    std::fs::write(&list, names.iter().map(|n| format!("{n}\n")).collect::<String>()).expect("write");
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("cd '{}' && cpio --quiet -o -H {format} -R 0:0 < .names | {compress}", dir.display())),
    );
    std::fs::remove_file(&list).expect("rm");
    out.stdout
}

/// Every entry below `dir`, sorted, as `path kind content`: a file's bytes, a link's target.
fn walk(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).expect("read_dir").map(|e| e.expect("entry").path()) {
            let name = entry.strip_prefix(dir).expect("below").display().to_string();
            let kind = std::fs::symlink_metadata(&entry).expect("stat").file_type();
            if kind.is_symlink() {
                found.push(format!("{name} -> {}", std::fs::read_link(&entry).expect("readlink").display()));
            } else if kind.is_dir() {
                found.push(format!("{name}/"));
                pending.push(entry);
            } else {
                found.push(format!("{name} = {}", String::from_utf8_lossy(&std::fs::read(&entry).expect("read"))));
            }
        }
    }
    found.sort();
    found
}

/// Three segments (stored, gzip, zstd) where later members replace earlier ones, as the kernel
/// unpacks them one over the other: a file rewritten, an empty directory replaced by an absolute
/// symlink that a later member is written through (inside the root, never the host's /etc), a
/// file replaced by a directory. Extraction creates files without looking first, so each
/// replacement is the path where what is there must be cleared.
#[test]
fn later_members_replace_earlier_ones_through_links_inside_the_root() {
    let work = TempDir::new("initramfs-replace");
    let (first, second, third) = (work.join("first"), work.join("second"), work.join("third"));
    for dir in [first.join("etc"), first.join("data"), second.join("etc"), third.join("data"), third.join("swap")] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(first.join("etc/motd"), "old").expect("write");
    std::fs::write(first.join("swap"), "a file").expect("write");
    std::fs::write(second.join("etc/motd"), "new").expect("write");
    std::os::unix::fs::symlink("/etc", second.join("data")).expect("symlink");
    std::fs::write(third.join("data/via-link"), "through the link").expect("write");
    std::fs::write(third.join("swap/inner"), "in a directory").expect("write");
    let mut image = archive_of(&first, &["etc", "etc/motd", "data", "swap"], "newc", "cat");
    image.extend(archive_of(&second, &["etc/motd", "data"], "newc", "gzip -n"));
    image.extend(archive_of(&third, &["data/via-link", "swap", "swap/inner"], "newc", "zstd -q"));
    let path = work.join("layers.img");
    std::fs::write(&path, &image).expect("write");
    let out = work.join("out");
    run_ok(xdkms().args(["initramfs", "extract"]).arg(&path).arg(&out));
    assert_eq!(
        walk(&out),
        [
            "data -> /etc",
            "etc/",
            "etc/motd = new",
            "etc/via-link = through the link",
            "swap/",
            "swap/inner = in a directory",
        ]
    );
    assert!(!Path::new("/etc/via-link").exists(), "a member was written through a link to the host");
}

/// GNU cpio's crc format (070702) sums the data of regular files and writes 0 for the rest: the
/// kernel checks the sum of regular files only (do_copy). Every crc image holding a symlink was
/// refused ("bad data checksum"), since the sum was checked on every member.
#[test]
fn regression_crc_archives_are_extracted_and_only_file_checksums_are_checked() {
    let work = TempDir::new("initramfs-crc");
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    // Larger than the reader's buffers, with a marker to corrupt in its middle.
    let mut big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    big[1_500_000..1_500_016].copy_from_slice(b"#marker-in-big#!");
    std::fs::write(tree.join("big"), &big).expect("write");
    std::fs::write(tree.join("bin/tool"), "#!/bin/sh\n").expect("write");
    std::os::unix::fs::symlink("tool", tree.join("bin/sh")).expect("symlink");
    let stored = archive_of(&tree, &["bin", "bin/tool", "bin/sh", "big"], "crc", "cat");
    for (codec, compress, decompress) in [("stored", "cat", "cat"), ("zstd", "zstd -q", "zstd -dcq")] {
        let image = work.join(format!("crc-{codec}.img"));
        let write_image = |archive: &[u8]| {
            let plain = work.join("plain.cpio");
            std::fs::write(&plain, archive).expect("write");
            let encoded = run_ok(Command::new("sh").arg("-c").arg(format!("{compress} < '{}'", plain.display())));
            std::fs::write(&image, encoded.stdout).expect("write");
        };
        write_image(&stored);
        let ours = work.join(format!("x-{codec}"));
        run_ok(xdkms().args(["initramfs", "extract"]).arg(&image).arg(&ours));
        let theirs = work.join(format!("cpio-{codec}"));
        cpio_extract(&image, decompress, "", &theirs);
        assert_eq!(walk(&ours), walk(&theirs), "{codec}: extract differs from cpio -i");
        let at = stored.windows(16).position(|w| w == b"#marker-in-big#!").expect("marker");
        let mut corrupt = stored.clone();
        corrupt[at] ^= 1;
        write_image(&corrupt);
        let out = run(xdkms().args(["initramfs", "extract"]).arg(&image).arg(work.join(format!("bad-{codec}"))));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{codec}: {stderr}");
        assert!(stderr.contains("big: bad data checksum"), "{codec}: {stderr}");
        assert!(!work.join(format!("bad-{codec}")).exists(), "{codec}: a refused image was half extracted");
    }
}
