//! ext4 images as roots (issue 12): `depmod -b IMAGE.ext4` and `modinfo -b IMAGE.ext4` against
//! kmod and against the same commands on the directory the image was made from; e2fsprogs'
//! own tools (e2fsck, debugfs, dumpe2fs) judge the filesystem and every inode the command did
//! not change.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::images::{
    as_on_image, assert_killed_depmod_leaves_the_old_or_the_new_image, assert_modinfo_as_on_directory,
    assert_no_temporaries_beside, assert_refused, image_stderr, index_names, make_root, text, VERSION,
};
use crate::util::{differing_files, run, run_ok, xdkms, TempDir, KMOD30_FILES};

/// An ext4 image of `root` made by mke2fs -d, `size` big (as mke2fs reads sizes: `64M`).
fn make_ext4(root: &Path, image: &Path, size: &str) {
    run_ok(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "xdkms-root", "-U", "0e6f7e7a-1d2c-4b5e-9f00-0123456789ab", "-d"])
            .arg(root)
            .arg(image)
            .arg(size)
            .env("E2FSPROGS_FAKE_TIME", "1700000000"),
    );
}

/// Every path of the directory `root` (the tree the image was made from), sorted.
fn paths_of(root: &Path) -> Vec<String> {
    let out = run_ok(Command::new("find").arg(".").arg("-mindepth").arg("1").current_dir(root));
    let mut paths: Vec<String> = text(&out.stdout).lines().map(|l| l.trim_start_matches('.').to_string()).collect();
    paths.sort();
    paths
}

/// debugfs's `stat` of each path (inode number, type, mode, owner, size, times, extended
/// attributes, checksum, block map): what e2fsprogs says each inode is.
fn inode_listing(image: &Path, paths: &[String], work: &Path) -> BTreeMap<String, String> {
    let commands = work.join("debugfs-commands");
    std::fs::write(&commands, paths.iter().map(|p| format!("stat \"{p}\"\n")).collect::<String>()).expect("write");
    let out = run_ok(Command::new("debugfs").arg("-f").arg(&commands).arg(image));
    let mut listing = BTreeMap::new();
    for block in text(&out.stdout).split("debugfs: stat ").skip(1) {
        let (path, body) = block.split_once('\n').unwrap_or((block, ""));
        listing.insert(path.trim_matches('"').to_string(), body.to_string());
    }
    assert_eq!(listing.len(), paths.len(), "debugfs listed every path");
    listing
}

/// The whole tree of the image, as debugfs's rdump writes it (owners, modes, times kept).
fn dump(image: &Path, into: &Path) {
    std::fs::create_dir_all(into).expect("mkdir");
    for top in ["lib", "usr", "etc", "opt"] {
        run_ok(Command::new("debugfs").arg("-R").arg(format!("rdump /{top} {}", into.display())).arg(image));
    }
}

fn e2fsck_clean(image: &Path, what: &str) {
    let out = run(Command::new("e2fsck").arg("-fn").arg(image));
    assert_eq!(out.status.code(), Some(0), "{what}: e2fsck -fn: {}{}", text(&out.stdout), text(&out.stderr));
}

/// The superblock fields an edit must keep (UUID, label, features, sizes).
fn identity(image: &Path) -> Vec<String> {
    let out = run_ok(Command::new("dumpe2fs").arg("-h").arg(image));
    let keep = [
        "Filesystem UUID",
        "Filesystem volume name",
        "Filesystem features",
        "Block count",
        "Inode count",
        "Block size",
    ];
    text(&out.stdout).lines().filter(|l| keep.iter().any(|k| l.starts_with(k))).map(String::from).collect()
}

/// depmod -b IMAGE on an ext4 image, flat and merged /usr: same output as on the directory,
/// kmod's indexes, a clean filesystem, every other inode exactly as it was.
#[test]
fn depmod_on_an_ext4_image_writes_what_kmod_writes_and_keeps_every_other_inode() {
    for merged_usr in [false, true] {
        let base = TempDir::new(&format!("ext4-depmod-{merged_usr}"));
        let root = base.join("root");
        make_root(&root, merged_usr);
        run_ok(Command::new("setfattr").args(["-n", "security.xdkms", "-v", "kept"]).arg(root.join("etc/hostname")));
        let image = base.join("rootfs.ext4");
        make_ext4(&root, &image, "32M");
        let paths = paths_of(&root);
        let before = inode_listing(&image, &paths, base.path());
        let (identity_before, dumped_before) = (identity(&image), base.join("dumped-before"));
        dump(&image, &dumped_before);

        let scratch = base.join("tmp");
        std::fs::create_dir_all(&scratch).expect("mkdir");
        let on_image = run(xdkms().env("TMPDIR", &scratch).arg("depmod").arg("-b").arg(&image).arg(VERSION));
        assert_eq!(std::fs::read_dir(&scratch).expect("tmp").count(), 0, "the scratch root is left");
        let on_dir_root = base.join("dir");
        crate::util::copy_all(&root, &on_dir_root);
        let on_dir = run(xdkms().arg("depmod").arg("-b").arg(&on_dir_root).arg(VERSION));
        assert_eq!(on_image.status.code(), Some(0), "{}", text(&on_image.stderr));
        assert_eq!(text(&on_image.stdout), as_on_image(&on_dir.stdout, &on_dir_root, &image), "stdout");
        assert_eq!(image_stderr(&on_image), as_on_image(&on_dir.stderr, &on_dir_root, &image), "stderr");
        e2fsck_clean(&image, "after depmod");
        assert_eq!(identity(&image), identity_before, "the superblock's identity changed");

        // The indexes are kmod's, byte for byte.
        let kmod_root = base.join("kmod");
        crate::util::copy_all(&root, &kmod_root);
        run_ok(Command::new("depmod").arg("-b").arg(&kmod_root).arg(VERSION));
        let dumped = base.join("dumped");
        dump(&image, &dumped);
        let module_dir = if merged_usr { "usr/lib/modules" } else { "lib/modules" };
        let rel = format!("{module_dir}/{VERSION}");
        assert_eq!(differing_files(&kmod_root.join(&rel), &dumped.join(&rel), &KMOD30_FILES), Vec::<String>::new());

        // Every inode but the module directory's (it has new entries) is as it was: the same
        // inode, blocks, times, owner, mode, extended attributes; and the same bytes.
        // The source tree holds no indexes: every path of it is one the command left alone, but
        // for the module directory, which has new entries.
        let after = inode_listing(&image, &paths, base.path());
        for path in paths.iter().filter(|p| **p != format!("/{rel}")) {
            assert_eq!(after.get(path), before.get(path), "{path} changed");
        }
        let kept: Vec<&str> = paths.iter().map(|p| p.trim_start_matches('/')).collect();
        assert_eq!(differing_files(&dumped_before, &dumped, &kept), Vec::<String>::new(), "file contents changed");
        assert!(before["/etc/hostname"].contains("security.xdkms"), "the fixture has a security xattr");

        // Again: the indexes are rewritten in their own inodes, and the filesystem stays clean.
        let written = index_names(&format!("/{rel}"));
        let inode_lines = |listing: BTreeMap<String, String>| -> Vec<String> {
            listing.values().map(|s| s.lines().next().unwrap_or("").to_string()).collect()
        };
        let first = inode_lines(inode_listing(&image, &written, base.path()));
        let again = run(xdkms().arg("depmod").arg("-b").arg(&image).arg(VERSION));
        assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
        e2fsck_clean(&image, "after a second depmod");
        assert_eq!(inode_lines(inode_listing(&image, &written, base.path())), first, "the indexes moved");
    }
}

#[test]
fn modinfo_on_an_ext4_image_prints_what_it_prints_on_the_directory() {
    let base = TempDir::new("ext4-modinfo");
    let root = base.join("root");
    make_root(&root, true);
    let image = base.join("rootfs.ext4");
    make_ext4(&root, &image, "16M");
    assert_modinfo_as_on_directory(&image, &root);
}

/// A field of the superblock (1024 bytes in) as dumpe2fs prints it.
fn superblock_field(image: &Path, field: &str) -> u64 {
    let out = run_ok(Command::new("dumpe2fs").arg("-h").arg(image));
    let line = text(&out.stdout).lines().find(|l| l.starts_with(field)).map(String::from).expect("field");
    line.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("number")
}

/// Truncated, corrupt, empty, full, read-only, errors recorded: each refused with the image named,
/// nothing changed, nothing left beside it.
#[test]
fn bad_ext4_images_are_refused_with_their_name_and_left_alone() {
    let base = TempDir::new("ext4-bad");
    let root = base.join("root");
    make_root(&root, false);
    let image = base.join("rootfs.ext4");
    make_ext4(&root, &image, "16M");
    let whole = std::fs::read(&image).expect("image");
    let depmod = |image: &Path| run(xdkms().arg("depmod").arg("-b").arg(image).arg(VERSION));
    let variant = |name: &str, bytes: &[u8]| {
        let path = base.join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    };

    let truncated = variant("truncated.ext4", &whole[..whole.len() / 2]);
    assert_refused(&depmod(&truncated), &truncated, &whole[..whole.len() / 2], "a truncated image");

    // The magic number is there, the block size is nonsense.
    let mut corrupt_bytes = whole.clone();
    corrupt_bytes[1024 + 24..1024 + 28].copy_from_slice(&[0xff; 4]);
    let corrupt = variant("corrupt.ext4", &corrupt_bytes);
    assert_refused(&depmod(&corrupt), &corrupt, &corrupt_bytes, "a corrupt superblock");

    let empty_root = base.join("empty-root");
    std::fs::create_dir_all(empty_root.join("etc")).expect("mkdir");
    let empty = base.join("empty.ext4");
    make_ext4(&empty_root, &empty, "8M");
    let empty_bytes = std::fs::read(&empty).expect("image");
    assert_refused(&depmod(&empty), &empty, &empty_bytes, "an image with no lib/modules");

    // Full: a file takes all but a few blocks, fewer than the indexes need.
    let full = variant("full.ext4", &whole);
    let free = superblock_field(&full, "Free blocks:");
    let block = superblock_field(&full, "Block size:");
    let filler = base.join("filler");
    std::fs::write(&filler, vec![0x11u8; ((free - 4) * block) as usize]).expect("write");
    run_ok(Command::new("debugfs").arg("-w").arg("-R").arg(format!("write {} filler", filler.display())).arg(&full));
    let full_bytes = std::fs::read(&full).expect("image");
    let out = depmod(&full);
    assert_refused(&out, &full, &full_bytes, "a full filesystem");
    assert!(text(&out.stderr).contains("full"), "{}", text(&out.stderr));

    let read_only = variant("read-only.ext4", &whole);
    std::fs::set_permissions(&read_only, std::os::unix::fs::PermissionsExt::from_mode(0o444)).expect("chmod");
    let out = depmod(&read_only);
    assert_refused(&out, &read_only, &whole, "a read-only image");
    assert!(text(&out.stderr).contains("read-only"), "{}", text(&out.stderr));

    // Errors recorded are e2fsck's business: nothing is built on them.
    let unclean = variant("unclean.ext4", &whole);
    run_ok(Command::new("debugfs").arg("-w").arg("-R").arg("ssv state 3").arg(&unclean));
    let unclean_bytes = std::fs::read(&unclean).expect("image");
    let out = depmod(&unclean);
    assert_refused(&out, &unclean, &unclean_bytes, "a filesystem with errors recorded");
    assert!(text(&out.stderr).contains("e2fsck"), "the message says what to do: {}", text(&out.stderr));

    assert_no_temporaries_beside(base.path());
}

/// A root holding Debian's amd64 `kernel/drivers/DRIVERS` and the module lists depmod reads;
/// the kernel's version.
pub fn debian_drivers_root(root: &Path, drivers: &str) -> String {
    let r = crate::util::refs();
    let (cache, version) = (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"));
    let dir = format!("lib/modules/{version}");
    std::fs::create_dir_all(root.join(&dir).join("kernel/drivers")).expect("mkdir");
    let subtree = format!("kernel/drivers/{drivers}");
    crate::util::copy_all(&cache.join(&dir).join(&subtree), &root.join(&dir).join(&subtree));
    for file in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
        std::fs::copy(cache.join(&dir).join(file), root.join(&dir).join(file)).expect("copy");
    }
    version
}

/// SIGKILL at random points of `depmod -b IMAGE.ext4` on Debian's network drivers: the image
/// is always the old filesystem or the new one (the same bytes, or after e2fsck's journal replay
/// a clean filesystem whose module directory is the same files), and a run to the end leaves
/// nothing behind. With SOURCE_DATE_EPOCH the new image is the same bytes on every run.
#[test]
fn killed_depmod_on_an_ext4_image_leaves_the_old_or_the_new_image() {
    let work = TempDir::new("ext4-kill");
    let root = work.join("root");
    let version = debian_drivers_root(&root, "net");
    let original_path = work.join("original.ext4");
    make_ext4(&root, &original_path, "160M");
    let original = std::fs::read(&original_path).expect("read");
    let settled = work.join("settled");
    let same =
        |now: &[u8], want: &[u8]| now == want || crate::ext4_journal::same_filesystem(&settled, now, want, &version);
    assert_killed_depmod_leaves_the_old_or_the_new_image(&work, &original, "rootfs.ext4", &version, 0xe4e4, &same);
    e2fsck_clean(&work.join("rootfs.ext4"), "after an uninterrupted run");
}

/// A disk image with a `label` (gpt or dos) partition table: each partition `size_mib` big
/// and, when a tree is given, an ext4 filesystem made from it. Where each partition starts.
fn make_disk(label: &str, partitions: &[(u64, Option<&Path>)], image: &Path) -> Vec<(u64, u64)> {
    const MIB: u64 = 1 << 20;
    let total: u64 = partitions.iter().map(|(size, _)| size).sum::<u64>() + 2;
    std::fs::File::create(image).and_then(|f| f.set_len(total * MIB)).expect("create");
    let mut script = format!("label: {label}\n");
    let mut placed = Vec::new();
    let mut start = MIB;
    for (size, _) in partitions {
        script.push_str(&format!("start={}, size={}, type=linux\n", start / 512, size * MIB / 512));
        placed.push((start, size * MIB));
        start += size * MIB;
    }
    let mut child =
        Command::new("sfdisk").arg("-q").arg(image).stdin(std::process::Stdio::piped()).spawn().expect("sfdisk");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), script.as_bytes()).expect("write");
    assert!(child.wait().expect("wait").success(), "sfdisk");
    for ((start, len), (_, tree)) in placed.iter().zip(partitions) {
        if let Some(tree) = tree {
            let mut mke2fs = Command::new("mke2fs");
            mke2fs.args(["-q", "-F", "-t", "ext4", "-E", &format!("offset={start}"), "-d"]).arg(tree).arg(image);
            run_ok(mke2fs.arg(format!("{}k", len / 1024)).env("E2FSPROGS_FAKE_TIME", "1700000000"));
        }
    }
    placed
}

/// The bytes of `image` outside `start..start + len`.
fn outside(image: &[u8], (start, len): (u64, u64)) -> Vec<u8> {
    let (start, end) = (start as usize, (start + len) as usize);
    [&image[..start], &image[end..]].concat()
}

/// depmod -b on a disk image: the root partition is the one holding lib/modules (GPT) or the
/// one named (MBR, `DISK:2`); it gets what kmod writes, stays clean for e2fsck, and every byte
/// outside it (partition table, the other partitions, GPT's backup) is as it was.
#[test]
fn depmod_on_a_disk_image_edits_the_root_partition_only() {
    let base = TempDir::new("ext4-disk");
    let root = base.join("root");
    make_root(&root, false);
    let boot = base.join("boot");
    std::fs::create_dir_all(&boot).expect("mkdir");
    std::fs::write(boot.join("vmlinuz-fixture"), "not a kernel\n").expect("write");
    let kmod_root = base.join("kmod");
    crate::util::copy_all(&root, &kmod_root);
    run_ok(Command::new("depmod").arg("-b").arg(&kmod_root).arg(VERSION));
    let rel = format!("lib/modules/{VERSION}");
    for (label, named) in [("gpt", false), ("dos", true)] {
        let image = base.join(format!("disk-{label}.img"));
        let placed = make_disk(label, &[(8, Some(&boot)), (24, Some(&root)), (4, None)], &image);
        let before = std::fs::read(&image).expect("read");
        let given = if named { format!("{}:2", image.display()) } else { image.display().to_string() };
        let on_image = run(xdkms().arg("depmod").arg("-b").arg(&given).arg(VERSION));
        let on_dir_root = base.join(format!("dir-{label}"));
        crate::util::copy_all(&root, &on_dir_root);
        let on_dir = run(xdkms().arg("depmod").arg("-b").arg(&on_dir_root).arg(VERSION));
        assert_eq!(on_image.status.code(), Some(0), "{label}: {}", text(&on_image.stderr));
        let shown = Path::new(&given);
        assert_eq!(image_stderr(&on_image), as_on_image(&on_dir.stderr, &on_dir_root, shown), "{label}: stderr");
        let after = std::fs::read(&image).expect("read");
        assert!(outside(&after, placed[1]) == outside(&before, placed[1]), "{label}: bytes outside the root changed");
        let partition = format!("{}?offset={}", image.display(), placed[1].0);
        e2fsck_clean(Path::new(&partition), label);
        let dumped = base.join(format!("dumped-{label}"));
        std::fs::create_dir_all(&dumped).expect("mkdir");
        run_ok(Command::new("debugfs").arg("-R").arg(format!("rdump /lib {}", dumped.display())).arg(&partition));
        assert_eq!(differing_files(&kmod_root.join(&rel), &dumped.join(&rel), &KMOD30_FILES), Vec::<String>::new());
    }
}

/// Disks xdkms cannot choose a root on: none holds lib/modules, or two do; a partition named
/// that is not there, or holds no filesystem. Each an error naming the disk (and what to
/// name instead), nothing changed.
#[test]
fn disk_images_without_one_clear_root_are_refused() {
    let base = TempDir::new("ext4-disk-bad");
    let root = base.join("root");
    make_root(&root, true);
    let data = base.join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("notes"), "no modules here\n").expect("write");
    let depmod = |given: &str| run(xdkms().arg("depmod").arg("-b").arg(given).arg(VERSION));

    let two = base.join("two-roots.img");
    make_disk("gpt", &[(16, Some(&root)), (16, Some(&root))], &two);
    let two_bytes = std::fs::read(&two).expect("read");
    let out = depmod(&two.display().to_string());
    assert_refused(&out, &two, &two_bytes, "two roots");
    assert!(text(&out.stderr).contains(&format!("{}:1", two.display())), "names the choices: {}", text(&out.stderr));

    let none = base.join("no-root.img");
    make_disk("dos", &[(8, Some(&data)), (4, None)], &none);
    let none_bytes = std::fs::read(&none).expect("read");
    let out = depmod(&none.display().to_string());
    assert_refused(&out, &none, &none_bytes, "no root");
    assert!(text(&out.stderr).contains("no partition holds lib/modules"), "{}", text(&out.stderr));

    for (given, says) in
        [(format!("{}:7", two.display()), "no partition 7"), (format!("{}:2", none.display()), "holds no filesystem")]
    {
        let out = depmod(&given);
        assert_eq!(out.status.code(), Some(1), "{given}");
        assert!(text(&out.stderr).contains(says), "{given}: {}", text(&out.stderr));
    }
    assert!(std::fs::read(&two).expect("read") == two_bytes && std::fs::read(&none).expect("read") == none_bytes);
}

/// `initramfs inject --in-root /boot/initrd.img-K` on an ext4 image: the initramfs inside the
/// image becomes, byte for byte, what the same command makes of it in the directory the image
/// was made from; every other inode stays; `-o` writes the changed image elsewhere and leaves
/// the original alone.
#[test]
fn inject_in_root_edits_the_initramfs_inside_an_ext4_image() {
    let work = TempDir::new("ext4-in-root");
    let root = work.join("root");
    let version = debian_drivers_root(&root, "nvme");
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    std::fs::write(tree.join("bin/init"), "#!/bin/sh\n").expect("write");
    std::fs::create_dir_all(root.join("boot")).expect("mkdir");
    let initrd = format!("boot/initrd.img-{version}");
    run_ok(xdkms().args(["initramfs", "create"]).arg(&tree).args(["--compress", "gzip", "-o"]).arg(root.join(&initrd)));
    let image = work.join("rootfs.ext4");
    make_ext4(&root, &image, "64M");
    let original = std::fs::read(&image).expect("read");
    let paths = paths_of(&root);
    let before = inode_listing(&image, &paths, work.path());

    let inject = |root: &Path, output: Option<&Path>| {
        let mut cmd = xdkms();
        cmd.env("SOURCE_DATE_EPOCH", "1").args(["initramfs", "inject", "--root"]).arg(root);
        cmd.args(["-k", &version, "--in-root", &format!("/{initrd}")]);
        if let Some(output) = output {
            cmd.arg("-o").arg(output);
        }
        run(cmd.arg("nvme"))
    };
    let elsewhere = work.join("changed.ext4");
    let out = inject(&image, Some(&elsewhere));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(std::fs::read(&image).expect("read") == original, "-o changed the original image");
    let on_image = inject(&image, None);
    assert_eq!(on_image.status.code(), Some(0), "{}", text(&on_image.stderr));
    assert!(std::fs::read(&image).expect("read") == std::fs::read(&elsewhere).expect("read"), "-o wrote another image");
    let on_dir = inject(&root, None);
    assert_eq!(image_stderr(&on_image), as_on_image(&on_dir.stderr, &root, &image));
    e2fsck_clean(&image, "after inject --in-root");

    let dumped = work.join("initrd-from-image");
    run_ok(Command::new("debugfs").arg("-R").arg(format!("dump /{initrd} {}", dumped.display())).arg(&image));
    let written = std::fs::read(&dumped).expect("read");
    assert!(written == std::fs::read(root.join(&initrd)).expect("read"), "the initramfs differs from the directory's");
    assert!(written.len() > 20_000, "nvme is in it");
    let after = inode_listing(&image, &paths, work.path());
    for path in paths.iter().filter(|p| **p != format!("/{initrd}")) {
        assert_eq!(after.get(path), before.get(path), "{path} changed");
    }
    let inode_line =
        |listing: &BTreeMap<String, String>| listing[&format!("/{initrd}")].lines().next().map(String::from);
    assert_eq!(inode_line(&after), inode_line(&before), "the initramfs keeps its inode");
}

/// A second run on an image another one is editing waits for it (saying so) and then edits
/// the image the first one wrote: nothing the first run changed is lost.
#[test]
fn a_run_on_a_locked_image_waits_for_the_other_one() {
    let base = TempDir::new("ext4-lock");
    let root = base.join("root");
    make_root(&root, false);
    let image = base.join("rootfs.ext4");
    make_ext4(&root, &image, "16M");
    // Another run holds the image (flock(1) takes the same lock xdkms takes) for two seconds.
    let mut holder = Command::new("flock").arg("-x").arg(&image).args(["-c", "sleep 2"]).spawn().expect("flock");
    let held = || !run(Command::new("flock").arg("-n").arg(&image).arg("true")).status.success();
    let started = std::time::Instant::now();
    while !held() {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "flock never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = run(xdkms().arg("depmod").arg("-b").arg(&image).arg(VERSION));
    assert!(holder.wait().expect("wait").success());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let waited = format!("xdkms: waiting for another run on {} to finish", image.display());
    assert!(text(&out.stderr).contains(&waited), "{}", text(&out.stderr));
    e2fsck_clean(&image, "after the wait");
}

/// A disk whose root has an empty /boot and whose kernel and initramfs live on a /boot
/// partition of their own: `inject --in-root /boot/initrd.img-K` edits the initramfs on that
/// partition, as it edits the one in the directory holding both trees; the root partition and
/// every byte outside the /boot one stay as they were; e2fsck finds the /boot filesystem clean.
#[test]
fn a_separate_boot_partition_is_where_boot_paths_are_read_and_written() {
    let work = TempDir::new("ext4-boot-partition");
    let root = work.join("root");
    let version = debian_drivers_root(&root, "nvme");
    std::fs::create_dir_all(root.join("boot")).expect("mkdir");
    let boot = work.join("boot");
    std::fs::create_dir_all(&boot).expect("mkdir");
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    std::fs::write(tree.join("bin/init"), "#!/bin/sh\n").expect("write");
    let initrd = format!("initrd.img-{version}");
    run_ok(xdkms().args(["initramfs", "create"]).arg(&tree).args(["--compress", "gzip", "-o"]).arg(boot.join(&initrd)));
    std::fs::write(boot.join(format!("config-{version}")), "CONFIG_MODULES=y\n").expect("write");
    let disk = work.join("disk.img");
    let placed = make_disk("gpt", &[(16, Some(&boot)), (64, Some(&root))], &disk);
    let original = std::fs::read(&disk).expect("read");

    // The same trees as one directory: the /boot partition mounted on the root's /boot.
    let together = work.join("together");
    crate::util::copy_all(&root, &together);
    run_ok(Command::new("cp").arg("-a").arg(boot.join(".")).arg(together.join("boot")));
    let inject = |root: &Path| {
        let mut cmd = xdkms();
        cmd.env("SOURCE_DATE_EPOCH", "1").args(["initramfs", "inject", "--root"]).arg(root);
        run(cmd.args(["-k", &version, "--in-root", &format!("/boot/{initrd}"), "nvme"]))
    };
    let on_disk = inject(&disk);
    assert_eq!(on_disk.status.code(), Some(0), "{}", text(&on_disk.stderr));
    let on_dir = inject(&together);
    assert_eq!(image_stderr(&on_disk), as_on_image(&on_dir.stderr, &together, &disk));

    let now = std::fs::read(&disk).expect("read");
    assert!(outside(&now, placed[0]) == outside(&original, placed[0]), "bytes outside the /boot partition changed");
    let (start, len) = (placed[0].0 as usize, placed[0].1 as usize);
    let partition = work.join("boot.ext4");
    std::fs::write(&partition, &now[start..start + len]).expect("write");
    e2fsck_clean(&partition, "the /boot partition after inject");
    let dumped = work.join("initrd-from-disk");
    run_ok(Command::new("debugfs").arg("-R").arg(format!("dump /{initrd} {}", dumped.display())).arg(&partition));
    let written = std::fs::read(&dumped).expect("read");
    assert!(written == std::fs::read(together.join("boot").join(&initrd)).expect("read"), "the initramfs differs");
    assert!(written.len() > 20_000, "nvme is in it");
}
