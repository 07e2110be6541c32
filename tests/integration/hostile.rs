//! Hostile roots and arguments: every case runs one xdkms command in a private mount namespace
//! whose /mnt, /var/lib/dkms, /usr/src and /lib/modules are decoys (tmpfs filled with a fake dkms
//! tree and files, present whether or not the host has those directories), with the root's
//! links pointing at them. Only the decoys are looked at, not the host's own directories, which
//! other tests and processes running meanwhile may change. The decoys and the test directory around the
//! root are hashed before and after: nothing outside the root may be created, changed or
//! deleted, no command may run past its time limit, and each refusal must say what was wrong.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::dkms::fixture;
use crate::util::{xdkms_bin, TempDir};

const KERNEL: &str = "6.1.0-99-amd64";

/// Sets the decoys up, snapshots them, runs the command under `timeout`, snapshots again.
const CONFINED: &str = r#"
tmp=$1; shift
# What an earlier command of the same case left: its exit status, its overlays' layers.
rm -rf "$tmp/out/rc" "$tmp/out"/layer*
mount -t tmpfs decoy /mnt || exit 90
mkdir -p /mnt/H/m/v/$KERNEL/x86_64/module /mnt/H/keep /mnt/H/src /mnt/H/evil
echo secret > /mnt/H/keep/file
printf 'PACKAGE_NAME=m\nPACKAGE_VERSION=v\nBUILT_MODULE_NAME[0]=m\nDEST_MODULE_LOCATION[0]=/updates\n' > /mnt/H/src/dkms.conf
ln -s /mnt/H/src /mnt/H/m/v/source
echo module > /mnt/H/m/v/$KERNEL/x86_64/module/m.ko
n=0
for d in /var/lib/dkms /usr/src /lib/modules; do
    if [ ! -d "$d" ]; then
        # Not on this host (a fresh container has no /lib/modules): made in an overlay of its
        # parent, so the decoy is there all the same and nothing reaches the host.
        parent=$(realpath "${d%/*}") n=$((n + 1))
        mkdir -p "$tmp/out/layer$n/upper" "$tmp/out/layer$n/work"
        mount -t overlay layer -o "lowerdir=$parent,upperdir=$tmp/out/layer$n/upper,workdir=$tmp/out/layer$n/work" \
            "$parent" || exit 90
        mkdir "$parent/${d##*/}" || exit 90
    fi
    mount -t tmpfs decoy "$d" && cp -a /mnt/H/. "$d"/ || exit 90
done
snapshot() {
    find /mnt /var/lib/dkms /usr/src /lib/modules "$tmp" -path "$tmp/root" -prune -o -path "$tmp/out" -prune \
        -o -printf '%p %y %m %s %l\n' 2>/dev/null | LC_ALL=C sort
    find /mnt /var/lib/dkms /usr/src /lib/modules "$tmp" -path "$tmp/root" -prune -o -path "$tmp/out" -prune \
        -o -type f -print0 2>/dev/null | xargs -0 -r sha256sum | LC_ALL=C sort
}
before=$(snapshot)
timeout -s KILL 60 "$@"
echo $? > "$tmp/out/rc"
after=$(snapshot)
diff <(echo "$before") <(echo "$after") > "$tmp/out/diff"
"#;

/// A small root: os-release, an empty dkms tree, a source tree, a kernel directory.
struct Hostile {
    dir: TempDir,
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Hostile {
    fn new(name: &str) -> Hostile {
        let dir = TempDir::new(&format!("hostile-{name}"));
        let root = dir.join("root");
        for sub in ["etc", "var/lib/dkms", "usr/src"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        std::fs::create_dir_all(root.join("lib/modules").join(KERNEL)).expect("mkdir");
        std::fs::create_dir_all(dir.join("out")).expect("mkdir");
        std::fs::write(root.join("etc/os-release"), "ID=debian\n").expect("os-release");
        Hostile { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// A link inside the root (parents created).
    fn link(&self, inside: &str, target: &str) {
        let path = self.root().join(inside);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        symlink(target, path).expect("symlink");
    }

    /// A module `m/v` added inside the root, with a valid source.
    fn added_module(&self) {
        let source = self.root().join("usr/src/m-v");
        std::fs::create_dir_all(&source).expect("mkdir");
        std::fs::write(
            source.join("dkms.conf"),
            "PACKAGE_NAME=m\nPACKAGE_VERSION=v\nBUILT_MODULE_NAME[0]=m\nDEST_MODULE_LOCATION[0]=/updates\n",
        )
        .expect("conf");
        std::fs::write(source.join("Makefile"), "obj-m := m.o\n").expect("Makefile");
        self.link("var/lib/dkms/m/v/source", "/usr/src/m-v");
    }

    /// Runs xdkms with `args` (`ROOT` replaced by the root) over the decoys; fails the test if the
    /// decoys or the directory around the root changed, or the command ran out of time.
    fn run(&self, args: &[&str]) -> Outcome {
        let root = self.root();
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("ROOT", &root.to_string_lossy()).replace("TMP", &self.dir.path().to_string_lossy()))
            .collect();
        let output = Command::new("unshare")
            .args(["-m", "--propagation", "private", "bash", "-c", CONFINED, "confined"])
            .arg(self.dir.path())
            .arg(xdkms_bin())
            .current_dir(self.dir.path())
            .args(&args)
            .env("KERNEL", KERNEL)
            .output()
            .expect("run unshare");
        let read = |name: &str| std::fs::read_to_string(self.dir.join("out").join(name)).unwrap_or_default();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let code: i32 = read("rc").trim().parse().unwrap_or_else(|_| panic!("no exit status for {args:?}: {stderr}"));
        assert_ne!(code, 137, "xdkms {args:?} ran past 60 s (killed)\nstderr: {stderr}");
        let diff = read("diff");
        assert!(diff.trim().is_empty(), "xdkms {args:?} changed files outside the root:\n{diff}\nstderr: {stderr}");
        Outcome { code, stdout, stderr }
    }
}

/// An empty initramfs image at `image`, made by `xdkms initramfs create`.
fn create_image(tree: &Path, image: &Path) {
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    let out = Command::new(xdkms_bin())
        .args(["initramfs", "create"])
        .arg(tree)
        .arg("-o")
        .arg(image)
        .output()
        .expect("create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn assert_refused(outcome: &Outcome, code: i32, message: &str) {
    assert_eq!(outcome.code, code, "stdout: {}\nstderr: {}", outcome.stdout, outcome.stderr);
    assert!(outcome.stderr.contains(message), "expected {message:?} in:\n{}", outcome.stderr);
}

#[test]
fn regression_status_reads_no_module_linked_out_of_the_root() {
    let case = Hostile::new("status-link");
    case.link("var/lib/dkms/m", "/mnt/H/m");
    let outcome = case.run(&["status", "--root", "ROOT"]);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert!(!outcome.stdout.contains("m/v"), "status listed the decoy's module:\n{}", outcome.stdout);
}

#[test]
fn regression_unbuild_through_a_kernel_link_deletes_nothing_outside() {
    let case = Hostile::new("unbuild-link");
    case.added_module();
    case.link(&format!("var/lib/dkms/m/v/{KERNEL}"), &format!("/mnt/H/m/v/{KERNEL}"));
    let outcome = case.run(&["unbuild", "--root", "ROOT", "m/v", "-k", &format!("{KERNEL}/x86_64")]);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert!(outcome.stdout.contains("is not built"), "{}", outcome.stdout);
}

#[test]
fn regression_remove_all_through_a_module_link_deletes_nothing_outside() {
    let case = Hostile::new("remove-link");
    case.link("var/lib/dkms/m", "/mnt/H/m");
    let outcome = case.run(&["remove", "--all", "--root", "ROOT", "m/v"]);
    assert_refused(&outcome, 3, "is not located in the DKMS tree");
}

#[test]
fn regression_relative_link_out_of_the_tree_stays_in_the_root() {
    let case = Hostile::new("relative-link");
    case.link("var/lib/dkms/m", "../../../../../../../../../../mnt/H/m");
    case.link("var/lib/dkms/.xdkms-work-1", "/mnt/H/keep");
    let outcome = case.run(&["remove", "--all", "--root", "ROOT", "m/v"]);
    assert_refused(&outcome, 3, "is not located in the DKMS tree");
    assert!(!case.root().join("var/lib/dkms/.xdkms-work-1").exists(), "the stale work link was kept");
}

#[test]
fn regression_kernel_version_with_dotdot_is_refused() {
    let case = Hostile::new("kernel-dotdot");
    case.added_module();
    let outcome = case.run(&["unbuild", "--root", "ROOT", "-m", "m", "-v", "v", "-k", "../../../X"]);
    // `-k K/arch`: the first component is the kernel.
    assert_refused(&outcome, 2, "Invalid kernel version \"..\"");
}

#[test]
fn regression_module_and_version_with_dotdot_are_refused() {
    let case = Hostile::new("module-dotdot");
    let outcome = case.run(&["remove", "--all", "--root", "ROOT", "-m", "..", "-v", "../../X"]);
    assert_refused(&outcome, 2, "Invalid module \"..\"");
    let outcome = case.run(&["remove", "--all", "--root", "ROOT", "m/../../../mnt"]);
    assert_refused(&outcome, 2, "Invalid module version");
}

#[test]
fn empty_kernel_version_and_arch_names_are_refused() {
    let case = Hostile::new("empty-kernel");
    case.added_module();
    assert_refused(&case.run(&["install", "--root", "ROOT", "-k", "", "m/v"]), 2, "Invalid kernel version \"\"");
    assert_refused(&case.run(&["build", "--root", "ROOT", "-k", "K/..", "m/v"]), 2, "Invalid arch \"..\"");
    assert_refused(&case.run(&["build", "--root", "ROOT", "-a", "a/b", "-k", KERNEL, "m/v"]), 2, "Invalid arch");
}

#[test]
fn regression_package_name_with_dotdot_is_a_bad_conf() {
    let case = Hostile::new("package-dotdot");
    let source = case.dir.join("evil-src");
    std::fs::create_dir_all(&source).expect("mkdir");
    std::fs::write(source.join("Makefile"), "obj-m := m.o\n").expect("Makefile");
    for (name, version, built, message) in [
        (
            "../../../../mnt/H/evil",
            "1",
            "m",
            "'PACKAGE_NAME' value \"../../../../mnt/H/evil\" cannot be a directory name",
        ),
        ("e", "..", "m", "'PACKAGE_VERSION' value \"..\""),
        ("e", "1", "..", "'BUILT_MODULE_NAME' value \"..\" in record #0 cannot be a file name"),
    ] {
        let conf = format!(
            "PACKAGE_NAME={name}\nPACKAGE_VERSION={version}\nBUILT_MODULE_NAME[0]={built}\nDEST_MODULE_LOCATION[0]=/updates\n"
        );
        std::fs::write(source.join("dkms.conf"), conf).expect("conf");
        assert_refused(&case.run(&["add", "--root", "ROOT", "TMP/evil-src"]), 8, message);
    }
}

#[test]
fn regression_relative_tree_options_are_paths_in_the_root_and_do_not_hang() {
    let case = Hostile::new("relative-trees");
    let source = fixture("xdkms_test-1.0");
    let outcome = case.run(&[
        "add",
        "--root",
        "ROOT",
        "--dkmstree",
        "var/lib/dkms",
        "--sourcetree",
        "usr/src",
        "--installtree",
        "lib/modules",
        &source.to_string_lossy(),
    ]);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert!(case.root().join("var/lib/dkms/xdkms_test/1.0/source").is_symlink());
    assert!(case.root().join("usr/src/xdkms_test-1.0/dkms.conf").is_file());
    // `..` stops at the root's `/`.
    let outcome = case.run(&["add", "--root", "ROOT", "--dkmstree", "../../X", &source.to_string_lossy()]);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert!(case.root().join("X/xdkms_test/1.0/source").is_symlink());
}

#[test]
fn regression_source_link_escaping_by_dotdot_is_broken_not_followed() {
    let case = Hostile::new("source-escape");
    case.link("var/lib/dkms/m/v/source", "../../../../../../../../../../mnt/H/src");
    let outcome = case.run(&["status", "--root", "ROOT"]);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert!(outcome.stdout.contains("m/v: broken"), "{}", outcome.stdout);
}

#[test]
fn regression_framework_tree_outside_is_inside_the_root() {
    let case = Hostile::new("framework");
    std::fs::create_dir_all(case.root().join("etc/dkms")).expect("mkdir");
    std::fs::write(case.root().join("etc/dkms/framework.conf"), "dkms_tree=/mnt/H\n").expect("framework");
    let outcome = case.run(&["remove", "--all", "--root", "ROOT", "m/v"]);
    assert_refused(&outcome, 3, "is not located in the DKMS tree");
}

#[test]
fn regression_uninstall_through_installed_and_staging_links_deletes_nothing_outside() {
    let case = Hostile::new("uninstall-links");
    case.added_module();
    case.link(&format!("var/lib/dkms/m/kernel-{KERNEL}-x86_64"), "/mnt/H/keep");
    case.link(&format!("var/lib/dkms/m/v/{KERNEL}/.tmp_x86_64_1"), "/mnt/H/keep");
    let outcome = case.run(&["uninstall", "--root", "ROOT", "m/v", "-k", &format!("{KERNEL}/x86_64")]);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
}

#[test]
fn regression_module_tree_linked_out_is_read_and_written_inside() {
    let case = Hostile::new("depmod-link");
    std::fs::remove_dir_all(case.root().join("lib/modules")).expect("rm");
    case.link("lib/modules", "/mnt/H");
    let outcome = case.run(&["depmod", "-b", "ROOT", KERNEL]);
    assert_ne!(outcome.code, 0, "depmod found a module directory through the decoy");
    assert!(outcome.stderr.contains(&format!("lib/modules/{KERNEL}")), "{}", outcome.stderr);
    let outcome = case.run(&["modinfo", "-b", "ROOT", "-k", KERNEL, "m"]);
    assert_ne!(outcome.code, 0, "modinfo found the decoy's module");
}

/// Every command over a root whose every top-level tree links out of it: whatever each says,
/// nothing outside changes and nothing hangs.
#[test]
fn every_command_over_a_root_of_outward_links() {
    let case = Hostile::new("all-links");
    std::fs::remove_dir_all(case.root().join("var/lib/dkms")).expect("rm");
    std::fs::remove_dir_all(case.root().join("usr/src")).expect("rm");
    case.link("var/lib/dkms", "/mnt/H");
    case.link("usr/src", "/mnt/H/src");
    let k = format!("{KERNEL}/x86_64");
    for args in [
        vec!["status", "--root", "ROOT"],
        vec!["status", "--root", "ROOT", "--json"],
        vec!["unbuild", "--root", "ROOT", "m/v", "-k", &k],
        vec!["uninstall", "--root", "ROOT", "m/v", "-k", &k],
        vec!["remove", "--root", "ROOT", "--all", "m/v"],
        vec!["build", "--root", "ROOT", "m/v", "-k", &k],
        vec!["install", "--root", "ROOT", "m/v", "-k", &k],
        vec!["autoinstall", "--root", "ROOT", "-k", &k],
    ] {
        let outcome = case.run(&args);
        assert!(!outcome.stderr.contains("panicked"), "{args:?}: {}", outcome.stderr);
    }
}

#[test]
fn paths_given_are_not_confused_with_the_root() {
    // A sanity check of the harness itself: a write outside the root is seen.
    let case = Hostile::new("harness");
    let escaped = Path::new("/mnt/H/keep/file");
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", CONFINED, "confined"])
        .arg(case.dir.path())
        .args(["sh", "-c", &format!("echo changed > {}", escaped.display())])
        .env("KERNEL", KERNEL)
        .output()
        .expect("run unshare");
    let diff = std::fs::read_to_string(case.dir.join("out/diff")).expect("diff");
    assert!(diff.contains("/mnt/H/keep/file"), "the harness missed a write outside the root:\n{diff}");
}

/// Devices given where depmod expects a file (`-F`, `-E`, `-C`) are refused at once instead of
/// read forever.
#[test]
fn regression_depmod_refuses_devices_as_input_files() {
    let work = TempDir::new("depmod-devices");
    std::fs::create_dir_all(work.join("lib/modules").join(KERNEL)).expect("mkdir");
    for option in ["-F", "-E", "-C"] {
        let out = Command::new("timeout")
            .args(["-s", "KILL", "20"])
            .arg(xdkms_bin())
            .args(["depmod", "-b"])
            .arg(work.path())
            .args([option, "/dev/zero", KERNEL])
            .output()
            .expect("run depmod");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(137), "depmod {option} /dev/zero ran on");
        if option != "-C" {
            assert_eq!(out.status.code(), Some(1), "{option}: {stderr}");
        }
        assert!(stderr.contains("not a regular file"), "{option}: {stderr}");
    }
}

/// `inject -k ""` wrote indexes to `usr/lib/modules/`; a kernel version must name one directory.
#[test]
fn regression_inject_refuses_an_empty_kernel_version() {
    let work = TempDir::new("inject-empty-k");
    let image = work.join("image.img");
    create_image(&work.join("tree"), &image);
    let before = std::fs::read(&image).expect("read");
    for version in ["", "..", "a/b"] {
        let out = Command::new(xdkms_bin())
            .args(["initramfs", "inject", "--root"])
            .arg(work.path())
            .args(["-k", version])
            .arg(&image)
            .arg("nvme")
            .output()
            .expect("inject");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{version:?}: {stderr}");
        assert!(stderr.contains(&format!("kernel version {version:?} cannot be used")), "{stderr}");
        assert_eq!(std::fs::read(&image).expect("read"), before);
    }
}

/// Ubuntu's `/boot/initrd.img -> initrd.img-K`: writing the image keeps the link and replaces
/// the file it points to (the link used to become a file, the real image left unchanged).
#[test]
fn regression_a_symlinked_image_is_updated_where_it_points() {
    let work = TempDir::new("image-link");
    std::fs::write(work.join("initrd.img-6.1.0-99-amd64"), "old").expect("write");
    symlink("initrd.img-6.1.0-99-amd64", work.join("initrd.img")).expect("symlink");
    create_image(&work.join("tree"), &work.join("initrd.img"));
    assert!(work.join("initrd.img").is_symlink(), "the link was replaced by a file");
    let real = std::fs::read(work.join("initrd.img-6.1.0-99-amd64")).expect("read");
    assert!(real.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) || real.starts_with(b"070701"), "the real image is unchanged");
}

/// `inject` over a root whose module tree links out of it: it reads (and the image's indexes
/// are built from) the root's own tree only, and writes nothing but the image.
#[test]
fn regression_inject_reads_a_linked_module_tree_inside_the_root() {
    let case = Hostile::new("inject-link");
    std::fs::remove_dir_all(case.root().join("lib/modules")).expect("rm");
    case.link("lib/modules", "/mnt/H");
    let image = case.dir.join("image.img");
    create_image(&case.dir.join("image-tree"), &image);
    let before = std::fs::read(&image).expect("read");
    // The image is part of what the harness hashes: it must come out unchanged (the inject fails).
    let outcome = case.run(&["initramfs", "inject", "TMP/image.img", "--root", "ROOT", "-k", KERNEL, "m"]);
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    assert_eq!(std::fs::read(&image).expect("read"), before);
}

/// Names with spaces, newlines, quotes, shell characters and non-UTF-8-looking text: taken as
/// one component each, never split, expanded or joined into another path.
#[test]
fn odd_bytes_in_names_stay_one_component() {
    let case = Hostile::new("odd-names");
    // The harness runs xdkms in the test directory, which it hashes: a `$(touch pwned)` run by a
    // shell would show there.
    for name in ["a b", "new\nline", "quote'\"", "$(touch pwned)", "`touch pwned`", "*", "-rf", "ü"] {
        let outcome = case.run(&["status", "--root", "ROOT", "-m", name, "-v", name, "-k", &format!("{name}/{name}")]);
        assert_eq!(outcome.code, 0, "{name:?}: {}", outcome.stderr);
        let outcome = case.run(&["remove", "--root", "ROOT", "--all", "-m", name, "-v", name]);
        assert_refused(&outcome, 3, "is not located in the DKMS tree");
    }
}
