//! `xdkms depmod` against Debian's kmod 30 depmod, on real kernels and generated fixtures.

use std::path::Path;
use std::process::Command;

use crate::util::{
    copy_all, copy_module_dir, differing_files, make_fixture, refs, run, run_ok, xdkms, xdkms_bin, TempDir,
    KMOD30_FILES,
};

/// Runs kmod's depmod on one copy of the module tree and xdkms on another; returns the files that
/// differ. `extra` arguments go to both tools.
fn compare_with_kmod(root: &Path, version: &str, extra: &[&str]) -> Vec<String> {
    let work = TempDir::new("cmp");
    let kmod_dir = copy_module_dir(root, version, &work.join("kmod"));
    let ours_dir = copy_module_dir(root, version, &work.join("xdkms"));
    run_ok(Command::new("depmod").args(extra).arg("-b").arg(work.join("kmod")).arg(version));
    run_ok(xdkms().arg("depmod").args(extra).arg("-b").arg(work.join("xdkms")).arg(version));
    differing_files(&kmod_dir, &ours_dir, &KMOD30_FILES)
}

#[test]
fn debian_amd64_tree_is_byte_identical() {
    let r = refs();
    assert_eq!(compare_with_kmod(&r.path("XDKMS_ROOT_AMD64"), &r.get("XDKMS_KVER_AMD64"), &[]), Vec::<String>::new());
}

#[test]
fn debian_arm64_tree_is_byte_identical() {
    let r = refs();
    assert_eq!(compare_with_kmod(&r.path("XDKMS_ROOT_ARM64"), &r.get("XDKMS_KVER_ARM64"), &[]), Vec::<String>::new());
}

#[test]
fn xz_and_zstd_trees_are_byte_identical() {
    let r = refs();
    for (root, version) in [
        ("XDKMS_ROOT_AMD64_XZ", "XDKMS_KVER_AMD64"),
        ("XDKMS_ROOT_AMD64_ZST", "XDKMS_KVER_AMD64"),
        ("XDKMS_ROOT_ARM64_XZ", "XDKMS_KVER_ARM64"),
        ("XDKMS_ROOT_ARM64_ZST", "XDKMS_KVER_ARM64"),
    ] {
        assert_eq!(compare_with_kmod(&r.path(root), &r.get(version), &[]), Vec::<String>::new(), "{root}");
    }
}

#[test]
fn fixture_tree_is_byte_identical() {
    let fx = TempDir::new("fixture");
    make_fixture("tree", fx.path(), "6.1.0-fixture");
    assert_eq!(compare_with_kmod(fx.path(), "6.1.0-fixture", &[]), Vec::<String>::new());
    // The fixture exercises what it claims: every ELF class and byte order is in the tree.
    let file =
        run_ok(Command::new("sh").arg("-c").arg(format!("find {} -name '*.ko' | xargs file", fx.path().display())));
    let described = String::from_utf8_lossy(&file.stdout);
    for kind in ["32-bit LSB", "32-bit MSB", "64-bit LSB", "64-bit MSB"] {
        assert!(described.contains(kind), "no {kind} module in the fixture:\n{described}");
    }
}

#[test]
fn fixture_variants_are_byte_identical() {
    let version = "6.1.0-fixture";
    // modules.order without its final newline: kmod reports it and does not sort at all.
    let fx = TempDir::new("order-no-newline");
    let dir = make_fixture("tree", fx.path(), version);
    let order = std::fs::read(dir.join("modules.order")).expect("modules.order");
    std::fs::write(dir.join("modules.order"), &order[..order.len() - 1]).expect("write");
    assert_eq!(compare_with_kmod(fx.path(), version, &[]), Vec::<String>::new());

    // modules.order listing a module twice (kmod 30: its last line counts).
    let fx = TempDir::new("order-dup");
    let dir = make_fixture("tree", fx.path(), version);
    let mut order = std::fs::read(dir.join("modules.order")).expect("modules.order");
    order.extend_from_slice(b"kernel/drivers/core_a.ko\n");
    std::fs::write(dir.join("modules.order"), order).expect("write");
    assert_eq!(compare_with_kmod(fx.path(), version, &[]), Vec::<String>::new());

    // No modules.order, modules.builtin or modules.builtin.modinfo at all.
    let fx = TempDir::new("no-inputs");
    let dir = make_fixture("tree", fx.path(), version);
    for f in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
        std::fs::remove_file(dir.join(f)).expect("rm");
    }
    assert_eq!(compare_with_kmod(fx.path(), version, &[]), Vec::<String>::new());

    // -F System.map, -e and -w change only messages, never files.
    let fx = TempDir::new("flags");
    make_fixture("tree", fx.path(), version);
    let map = fx.join("System.map");
    std::fs::write(&map, "ffffffff81000000 T _text\nffffffff82000000 R __ksymtab_kernel_thing\n").expect("write");
    let map = map.to_string_lossy().into_owned();
    assert_eq!(compare_with_kmod(fx.path(), version, &["-e", "-w", "-F", &map]), Vec::<String>::new());
}

/// What both tools print (stdout and stderr) for `-v`, `-e` with `-F` or `-E`, and `-w`, with
/// each tool's root replaced by ROOT.
#[test]
fn messages_match_kmod() {
    let version = "6.1.0-fixture";
    let base = TempDir::new("messages");
    make_fixture("tree", &base.join("kmod"), version);
    make_fixture("tree", &base.join("ours"), version);
    let map = base.join("System.map");
    std::fs::write(&map, "ffffffff81000000 T _text\nffffffff82000000 R __ksymtab_kernel_thing\nbad\n").expect("write");
    let symvers = base.join("Module.symvers");
    std::fs::write(
        &symvers,
        "0x0000abcd\tkernel_thing\tvmlinux\tEXPORT_SYMBOL\t\n0x00001111\tsym_a1\tvmlinux\tEXPORT_SYMBOL\t\n\
         0x00000001\tsym_b\tvmlinux\tEXPORT_SYMBOL_GPL\t\n0xzz\tbroken\tvmlinux\tEXPORT_SYMBOL\t\n",
    )
    .expect("write");
    let (map, symvers) = (map.display().to_string(), symvers.display().to_string());
    for flags in [vec!["-v"], vec!["-e", "-F", &map], vec!["-e", "-E", &symvers], vec!["-w", "-e"], vec!["-n", "-v"]] {
        let kmod = run(Command::new("depmod").args(&flags).arg("-b").arg(base.join("kmod")).arg(version));
        let ours = run(xdkms().arg("depmod").args(&flags).arg("-b").arg(base.join("ours")).arg(version));
        let normal = |bytes: &[u8], root: &str| {
            String::from_utf8_lossy(bytes).replace(&base.join(root).display().to_string(), "ROOT")
        };
        assert_eq!(ours.status.code(), kmod.status.code(), "{flags:?}");
        assert_eq!(normal(&ours.stdout, "ours"), normal(&kmod.stdout, "kmod"), "stdout, {flags:?}");
        // kmod prints a stale errno after "Invalid symbol version X" (": Success"); xdkms does not.
        let kmod_stderr = normal(&kmod.stderr, "kmod")
            .replace(" Invalid symbol version 0xzz: Success", " Invalid symbol version 0xzz");
        assert_eq!(normal(&ours.stderr, "ours"), kmod_stderr, "stderr, {flags:?}");
    }
}

/// Debian's kmod is built without zlib and skips `.ko.gz`; xdkms reads them. The reference is kmod
/// on the same tree uncompressed: equal files once `.ko.gz` is read as `.ko` in paths.
#[test]
fn gzip_modules_index_like_their_uncompressed_tree() {
    let version = "6.1.0-fixture";
    let base = TempDir::new("gzip");
    let plain_dir = make_fixture("tree", &base.join("plain"), version);
    let gz_dir = make_fixture("tree", &base.join("gz"), version);
    run_ok(Command::new("sh").arg("-c").arg(format!("find '{}' -name '*.ko' -exec gzip -n9 {{}} +", gz_dir.display())));
    let order = std::fs::read_to_string(gz_dir.join("modules.order")).expect("modules.order");
    assert!(std::fs::read_dir(gz_dir.join("extra")).expect("extra").all(|e| e
        .expect("entry")
        .path()
        .extension()
        .is_some_and(|x| x == "gz")));
    run_ok(Command::new("depmod").arg("-b").arg(base.join("plain")).arg(version));
    run_ok(xdkms().arg("depmod").arg("-b").arg(base.join("gz")).arg(version));
    // Every output that holds no module path is identical.
    for name in KMOD30_FILES.iter().filter(|n| !n.starts_with("modules.dep") && **n != "modules.order") {
        assert!(
            std::fs::read(plain_dir.join(name)).expect(name) == std::fs::read(gz_dir.join(name)).expect(name),
            "{name}"
        );
    }
    let dep = std::fs::read_to_string(gz_dir.join("modules.dep")).expect("modules.dep");
    assert!(dep.contains(".ko.gz"));
    assert_eq!(
        dep.replace(".ko.gz", ".ko"),
        std::fs::read_to_string(plain_dir.join("modules.dep")).expect("modules.dep")
    );
    assert!(order.contains("core_a.ko"), "modules.order still names uncompressed files");
    // modprobe resolves through modules.dep.bin the same way.
    for module in ["core_b", "mod_c", "mod_e", "dup"] {
        let show = |root: &Path| {
            let out = run_ok(Command::new("modprobe").args(["-C", "/dev/null", "-d"]).arg(root).args([
                "-S",
                version,
                "--show-depends",
                module,
            ]));
            String::from_utf8_lossy(&out.stdout).replace(&root.display().to_string(), "ROOT").replace(".ko.gz", ".ko")
        };
        assert_eq!(show(&base.join("gz")), show(&base.join("plain")), "{module}");
    }
}

/// Merged-/usr roots: modules only under usr/lib/modules, or lib as a link to usr/lib (an
/// absolute link, which kmod would follow out of the root onto the build host).
#[test]
fn usr_lib_modules_layouts() {
    let version = "6.1.0-fixture";
    let base = TempDir::new("usrlib");
    let plain = base.join("plain");
    let plain_dir = make_fixture("tree", &plain, version);
    run_ok(xdkms().arg("depmod").arg("-b").arg(&plain).arg(version));
    for (name, link) in [("usr-only", None), ("abs-link", Some("/usr/lib")), ("rel-link", Some("usr/lib"))] {
        let root = base.join(name);
        make_fixture("tree", &root, version);
        std::fs::create_dir_all(root.join("usr")).expect("mkdir");
        std::fs::rename(root.join("lib"), root.join("usr/lib")).expect("move");
        if let Some(target) = link {
            std::os::unix::fs::symlink(target, root.join("lib")).expect("symlink");
        }
        run_ok(xdkms().arg("depmod").arg("-b").arg(&root).arg(version));
        let out_dir = root.join("usr/lib/modules").join(version);
        assert_eq!(differing_files(&plain_dir, &out_dir, &KMOD30_FILES), Vec::<String>::new(), "{name}");
    }
}

/// A tree with out-of-tree modules in updates/ and extra/ and a depmod.d using search, override
/// and exclude, given to both tools with -C.
#[test]
fn depmod_d_search_override_exclude_with_config_flag() {
    let r = refs();
    let version = r.get("XDKMS_KVER_AMD64");
    let base = TempDir::new("depmod-d");
    let dir = copy_module_dir(&r.path("XDKMS_ROOT_AMD64"), &version, &base.join("tree"));
    // Same-named modules in several places: priorities decide which one is indexed.
    for (from, to) in [
        ("kernel/fs/ext4/ext4.ko", "updates/ext4.ko"),
        ("kernel/fs/ext4/ext4.ko", "extra/ext4.ko"),
        ("kernel/drivers/block/virtio_blk.ko", "extra/virtio_blk.ko"),
        ("kernel/drivers/block/virtio_blk.ko", "vendor/virtio_blk.ko"),
        ("kernel/lib/crc16.ko", "extra/crc16.ko"),
        ("kernel/fs/btrfs/btrfs.ko", "updates/dkms/btrfs.ko"),
    ] {
        std::fs::create_dir_all(dir.join(to).parent().expect("parent")).expect("mkdir");
        std::fs::copy(dir.join(from), dir.join(to)).expect("copy");
    }
    let conf = base.join("depmod.conf");
    std::fs::write(
        &conf,
        format!(
            "# test configuration\nsearch vendor extra updates built-in\noverride crc16 {} kernel/lib\n\
             override ext4 * extra\nexclude dkms\nbogus line\n",
            version.replace('.', "\\.")
        ),
    )
    .expect("write");
    let conf = conf.to_string_lossy().into_owned();
    assert_eq!(compare_with_kmod(&base.join("tree"), &version, &["-C", &conf]), Vec::<String>::new());
    // And the same with the configuration as a directory.
    let conf_dir = base.join("conf.d");
    std::fs::create_dir(&conf_dir).expect("mkdir");
    std::fs::copy(&conf, conf_dir.join("a.conf")).expect("copy");
    std::fs::write(conf_dir.join("b.conf"), "search updates\n").expect("write");
    std::fs::write(conf_dir.join("ignored.txt"), "search kernel\n").expect("write");
    let conf_dir = conf_dir.to_string_lossy().into_owned();
    assert_eq!(compare_with_kmod(&base.join("tree"), &version, &["-C", &conf_dir]), Vec::<String>::new());
}

/// Prepares a root in which kmod's own depmod can run under chroot: the reference for what the
/// target system's depmod produces from its own /etc/depmod.d and external directories.
fn install_kmod_into(root: &Path) {
    let ldd = run_ok(Command::new("ldd").arg("/usr/bin/kmod"));
    let mut files = vec!["/usr/bin/kmod".to_string()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        if let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) {
            files.push(path.to_string());
        }
    }
    for file in files {
        let dest = root.join(file.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::copy(std::fs::canonicalize(&file).expect("canonicalize"), &dest).expect("copy");
    }
    std::fs::create_dir_all(root.join("usr/sbin")).expect("mkdir");
    std::os::unix::fs::symlink("../bin/kmod", root.join("usr/sbin/depmod")).expect("symlink");
}

#[test]
fn depmod_d_and_externals_inside_root_match_the_targets_own_depmod() {
    let version = "6.1.0-fixture";
    let base = TempDir::new("chroot");
    let reference = base.join("reference");
    let dir = make_fixture("tree", &reference, version);
    // An external directory, a depmod.d in /etc and one in /usr/lib, as a target would have them.
    let external = reference.join("opt/vendor/modules");
    std::fs::create_dir_all(&external).expect("mkdir");
    std::fs::copy(dir.join("kernel/drivers/core_a.ko"), external.join("core_a.ko")).expect("copy");
    std::fs::copy(dir.join("extra/mod_c.ko"), external.join("ext_only.ko")).expect("copy");
    std::fs::create_dir_all(reference.join("etc/depmod.d")).expect("mkdir");
    std::fs::create_dir_all(reference.join("lib/depmod.d")).expect("mkdir");
    std::fs::create_dir_all(reference.join("usr/lib/depmod.d")).expect("mkdir");
    std::fs::write(
        reference.join("etc/depmod.d/10-vendor.conf"),
        format!("search external updates built-in\nexternal {} /opt/vendor/modules\n", version.replace('.', "\\.")),
    )
    .expect("write");
    std::fs::write(reference.join("lib/depmod.d/50-exclude.conf"), "exclude arm\n").expect("write");
    // Shadowed by /etc's file of the same name: must not be read.
    std::fs::write(reference.join("lib/depmod.d/10-vendor.conf"), "search kernel\n").expect("write");
    // kmod 30 does not read /usr/lib/depmod.d (kmod 32 does); this root has no /lib -> usr/lib link.
    std::fs::write(reference.join("usr/lib/depmod.d/00-ignored.conf"), "exclude drivers\n").expect("write");
    let ours = base.join("ours");
    copy_all(&reference, &ours);
    install_kmod_into(&reference);

    run_ok(Command::new("chroot").arg(&reference).arg("/usr/sbin/depmod").arg(version));
    run_ok(xdkms().arg("depmod").arg("-b").arg(&ours).arg(version));
    let rel = format!("lib/modules/{version}");
    assert_eq!(differing_files(&reference.join(&rel), &ours.join(&rel), &KMOD30_FILES), Vec::<String>::new());
    let dep = std::fs::read_to_string(ours.join(&rel).join("modules.dep")).expect("modules.dep");
    assert!(dep.contains("/opt/vendor/modules/core_a.ko:"), "external module not chosen:\n{dep}");
    assert!(!dep.contains("kernel/arm/"), "excluded directory indexed:\n{dep}");
}

#[test]
fn absolute_symlinks_in_the_root_resolve_inside_it() {
    let version = "6.1.0-fixture";
    let base = TempDir::new("symlinks");
    let plain = base.join("plain");
    make_fixture("tree", &plain, version);
    // The same tree where lib/modules/V/updates is an absolute link into the root, and the
    // depmod.d directory is reached through an absolute /etc link.
    let linked = base.join("linked");
    copy_all(&plain, &linked);
    let rel = format!("lib/modules/{version}");
    std::fs::create_dir_all(linked.join("srv")).expect("mkdir");
    std::fs::rename(linked.join(&rel).join("updates"), linked.join("srv/updates")).expect("move");
    std::os::unix::fs::symlink("/srv/updates", linked.join(&rel).join("updates")).expect("symlink");
    run_ok(xdkms().arg("depmod").arg("-b").arg(&plain).arg(version));
    run_ok(xdkms().arg("depmod").arg("-b").arg(&linked).arg(version));
    assert_eq!(differing_files(&plain.join(&rel), &linked.join(&rel), &KMOD30_FILES), Vec::<String>::new());
}

#[test]
fn dependency_cycles_fail_like_kmod_and_write_nothing() {
    let version = "6.1.0-cycle";
    let base = TempDir::new("cycle");
    let kmod_root = base.join("kmod");
    let dir_kmod = make_fixture("cycle", &kmod_root, version);
    let ours_root = base.join("ours");
    let dir_ours = make_fixture("cycle", &ours_root, version);
    let kmod = run(Command::new("depmod").arg("-b").arg(&kmod_root).arg(version));
    let ours = run(xdkms().arg("depmod").arg("-b").arg(&ours_root).arg(version));
    assert_eq!(kmod.status.code(), Some(1));
    assert_eq!(ours.status.code(), kmod.status.code());
    let cycle_lines = |stderr: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(stderr)
            .lines()
            .filter(|l| l.contains("Cycle detected") || l.contains("dependency cycles"))
            .map(String::from)
            .collect()
    };
    assert_eq!(cycle_lines(&ours.stderr), cycle_lines(&kmod.stderr));
    assert!(cycle_lines(&ours.stderr).iter().any(|l| l.contains("Found 5 modules in dependency cycles!")));
    for dir in [dir_kmod, dir_ours] {
        let written: Vec<_> =
            std::fs::read_dir(&dir).expect("readdir").flatten().filter(|e| e.path().is_file()).collect();
        assert!(written.is_empty(), "files written despite the cycle: {written:?}");
    }
}

/// Only xdkms's files in the tree: real modprobe resolves every module's dependencies exactly as
/// with kmod's files, and real modinfo finds every module.
#[test]
fn modprobe_and_modinfo_agree_on_every_amd64_module() {
    let r = refs();
    let version = r.get("XDKMS_KVER_AMD64");
    let work = TempDir::new("modprobe");
    let kmod_dir = copy_module_dir(&r.path("XDKMS_ROOT_AMD64"), &version, &work.join("kmod"));
    copy_module_dir(&r.path("XDKMS_ROOT_AMD64"), &version, &work.join("xdkms"));
    run_ok(Command::new("depmod").arg("-b").arg(work.join("kmod")).arg(&version));
    run_ok(xdkms().arg("depmod").arg("-b").arg(work.join("xdkms")).arg(&version));
    let dep = std::fs::read_to_string(kmod_dir.join("modules.dep")).expect("modules.dep");
    let names: Vec<String> = dep
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(|p| p.rsplit('/').next().unwrap_or(p).split('.').next().unwrap_or(p).replace('-', "_"))
        .collect();
    assert!(names.len() > 3000, "expected the full Debian tree, got {} modules", names.len());
    std::fs::write(work.join("names"), names.join("\n")).expect("write");
    // One shell loop per tree, both at once: ~4000 modprobe and modinfo calls each.
    let script = |root: &Path| {
        format!(
            "while read -r m; do echo \"== $m\"; modprobe -C /dev/null -d '{root}' -S '{version}' --show-depends \"$m\" 2>&1; \
             modinfo -b '{root}' -k '{version}' -F filename \"$m\" 2>&1; done < '{names}'",
            root = root.display(),
            names = work.join("names").display()
        )
    };
    let kmod_run = Command::new("sh").arg("-c").arg(script(&work.join("kmod"))).output().expect("sh");
    let ours_run = Command::new("sh").arg("-c").arg(script(&work.join("xdkms"))).output().expect("sh");
    let kmod_text = String::from_utf8_lossy(&kmod_run.stdout).replace(&work.join("kmod").display().to_string(), "ROOT");
    let ours_text =
        String::from_utf8_lossy(&ours_run.stdout).replace(&work.join("xdkms").display().to_string(), "ROOT");
    assert!(
        kmod_text.matches("insmod ").count() >= names.len(),
        "modprobe printed too little:\n{}",
        &kmod_text[..2000.min(kmod_text.len())]
    );
    assert!(!ours_text.contains("not found"), "modinfo or modprobe missed a module");
    if kmod_text != ours_text {
        let first = kmod_text.lines().zip(ours_text.lines()).find(|(a, b)| a != b);
        panic!("modprobe/modinfo disagree; first difference: {first:?}");
    }
}

#[test]
fn invoked_as_depmod_it_is_depmod() {
    let fx = TempDir::new("argv0");
    let dir = make_fixture("tree", fx.path(), "6.1.0-fixture");
    let link = fx.join("depmod");
    std::os::unix::fs::symlink(xdkms_bin(), &link).expect("symlink");
    // kmod's own spelling as the kernel's Makefile uses it: clustered flags, attached argument.
    let map = fx.join("System.map");
    std::fs::write(&map, "ffffffff82000000 R __ksymtab_kernel_thing\n").expect("write");
    run_ok(
        Command::new(&link)
            .arg("-ae")
            .arg(format!("-F{}", map.display()))
            .arg(format!("--basedir={}", fx.path().display()))
            .arg("6.1.0-fixture"),
    );
    assert!(dir.join("modules.dep.bin").is_file());
    let help = run_ok(Command::new(&link).arg("--help"));
    assert!(String::from_utf8_lossy(&help.stdout).contains("-b, --basedir"));
}

#[test]
fn dry_run_prints_the_text_files_and_writes_nothing() {
    let fx = TempDir::new("dry-run");
    let dir = make_fixture("tree", fx.path(), "6.1.0-fixture");
    let kmod = run_ok(Command::new("depmod").arg("-n").arg("-b").arg(fx.path()).arg("6.1.0-fixture"));
    let ours = run_ok(xdkms().arg("depmod").arg("-n").arg("-b").arg(fx.path()).arg("6.1.0-fixture"));
    assert_eq!(String::from_utf8_lossy(&ours.stdout), String::from_utf8_lossy(&kmod.stdout));
    assert!(!dir.join("modules.dep").exists());
}

#[test]
fn quick_mode_skips_up_to_date_trees() {
    let fx = TempDir::new("quick");
    let dir = make_fixture("tree", fx.path(), "6.1.0-fixture");
    run_ok(xdkms().arg("depmod").arg("-b").arg(fx.path()).arg("6.1.0-fixture"));
    std::fs::write(dir.join("modules.dep"), "stale\n").expect("write");
    // Nothing newer than modules.dep: -A leaves it alone.
    run_ok(xdkms().arg("depmod").arg("-A").arg("-b").arg(fx.path()).arg("6.1.0-fixture"));
    assert_eq!(std::fs::read_to_string(dir.join("modules.dep")).expect("read"), "stale\n");
    // A module newer than modules.dep: -A regenerates.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options().write(true).open(dir.join("modules.dep")).expect("open").set_modified(old).expect("touch");
    run_ok(xdkms().arg("depmod").arg("-A").arg("-b").arg(fx.path()).arg("6.1.0-fixture"));
    assert_ne!(std::fs::read_to_string(dir.join("modules.dep")).expect("read"), "stale\n");
}

#[test]
fn bad_input_gives_clear_errors_and_exit_1() {
    let fx = TempDir::new("bad-input");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["-b".into(), fx.join("missing").display().to_string(), "6.1.0".into()],
            "could not open base directory".into(),
        ),
        (
            vec!["-b".into(), fx.path().display().to_string(), "6.1.0".into()],
            // As kmod names it: the base directory, then the module directory.
            format!("could not open directory {}/lib/modules/6.1.0", fx.path().display()),
        ),
        (vec!["-b".into(), fx.path().display().to_string(), "six".into()], "Bad version passed six".into()),
        (vec!["-P".into(), "ab".into(), "6.1.0".into()], "-P only takes a single char".into()),
        (vec!["-b".into(), fx.path().display().to_string()], "no kernel version given".into()),
        (vec!["--no-such-option".into(), "6.1.0".into()], "depmod: unrecognized option '--no-such-option'".into()),
    ];
    for (args, message) in cases {
        let out = run(xdkms().arg("depmod").args(&args));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&message), "{args:?}: expected {message:?} in:\n{stderr}");
    }
}

/// Module file names that are not ASCII (UTF-8 and a stray byte): kmod 30 indexes them (its trie
/// keeps such bytes in node prefixes), so xdkms must too, byte for byte; it used to stop with
/// "only 7-bit ASCII is supported". kmod 34 does stop (`--kmod-version 34` still refuses).
#[test]
fn regression_non_ascii_module_names_are_indexed_as_kmod_30_does() {
    use std::os::unix::ffi::OsStrExt;
    let r = refs();
    let source =
        r.path("XDKMS_ROOT_AMD64").join("lib/modules").join(r.get("XDKMS_KVER_AMD64")).join("kernel/drivers/block");
    let work = TempDir::new("non-ascii");
    let version = "6.1.0-99-amd64";
    let tree = work.join("root");
    let dir = tree.join("lib/modules").join(version).join("kernel");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (from, to) in
        [("virtio_blk.ko", &b"v\xc3\xafrtio_blk.ko"[..]), ("loop.ko", b"lo\xffop.ko"), ("nbd.ko", b"nbd.ko")]
    {
        std::fs::copy(source.join(from), dir.join(std::ffi::OsStr::from_bytes(to))).expect("copy");
    }
    assert_eq!(compare_with_kmod(&tree, version, &[]), Vec::<String>::new());
    let out = run(xdkms().args(["depmod", "--kmod-version", "34", "-b"]).arg(&tree).arg(version));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only 7-bit ASCII"));
}
