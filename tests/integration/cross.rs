//! Cross builds into sysroots: a module pair (xdkms_pair_b uses a symbol xdkms_pair_a exports)
//! added, built and installed into the Debian arm64 and amd64 sysroots with nothing but
//! `--root`, indexes compared with kmod's depmod, then injected into a busybox initramfs that
//! the sysroot's own kernel boots under qemu, where `modprobe xdkms_pair_b` must load both. Also
//! the refusals: wrong headers, no compiler, target-arch kbuild tools, unknown arch names, and
//! an `updates` directory linked outside the root.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::boot::{base_image, boot_and_modprobe};
use crate::dkms::fixture;
use crate::util::{differing_files, refs, run, run_ok, xdkms, TempDir, KMOD30_FILES};

/// A writable copy of a cached Debian sysroot (hard links; xdkms only replaces files).
pub struct Sysroot {
    pub dir: TempDir,
    pub kernel: String,
}

impl Sysroot {
    pub fn new(name: &str, arch: &str) -> Sysroot {
        let r = refs();
        let (cache, kernel) = match arch {
            "amd64" => (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64")),
            _ => (r.path("XDKMS_ROOT_ARM64"), r.get("XDKMS_KVER_ARM64")),
        };
        let dir = TempDir::new(&format!("cross-{name}"));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::create_dir_all(root.join("var/lib/dkms")).expect("mkdir");
        std::fs::write(root.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").expect("os-release");
        for part in ["lib", "usr", "boot"] {
            run_ok(Command::new("cp").arg("-al").arg(cache.join(part)).arg(root.join(part)));
        }
        Sysroot { dir, kernel }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn modules(&self) -> PathBuf {
        self.root().join("lib/modules").join(&self.kernel)
    }

    /// `xdkms ACTION --root ROOT ARGS` with no ARCH or CROSS_COMPILE in the environment.
    pub fn xdkms(&self, action: &str, args: &[&str]) -> Output {
        run(xdkms()
            .arg(action)
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env_remove("ARCH")
            .env_remove("CROSS_COMPILE")
            .env_remove("MAKEFLAGS"))
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what} failed ({}):\n{}\n{}", out.status, text(&out.stdout), text(&out.stderr));
    out
}

/// ELF e_machine of a module file.
fn elf_machine(path: &Path) -> u16 {
    let bytes = std::fs::read(path).expect("module");
    u16::from_le_bytes([bytes[18], bytes[19]])
}

/// Compares ROOT's indexes for its kernel with kmod's depmod run on a copy of the same tree.
pub fn assert_indexes_match_kmod(sysroot: &Sysroot, work: &TempDir) {
    let copy = work.join("kmod");
    std::fs::create_dir_all(copy.join("lib/modules")).expect("mkdir");
    run_ok(Command::new("cp").arg("-a").arg(sysroot.modules()).arg(copy.join("lib/modules")));
    for link in ["build", "source"] {
        let _ = std::fs::remove_file(copy.join("lib/modules").join(&sysroot.kernel).join(link));
    }
    run_ok(Command::new("depmod").arg("-b").arg(&copy).arg(&sysroot.kernel));
    let differing = differing_files(&sysroot.modules(), &copy.join("lib/modules").join(&sysroot.kernel), &KMOD30_FILES);
    assert!(differing.is_empty(), "indexes differ from kmod's depmod -b: {differing:?}");
}

/// add, build and install the pair with only --root; check the result; inject xdkms_pair_b
/// into a busybox initramfs and boot the sysroot's kernel under qemu.
fn pair_builds_installs_and_loads(arch: &'static str, elf: u16, machine: &str) {
    let sysroot = Sysroot::new(&format!("pair-{arch}"), arch);
    let work = TempDir::new(&format!("cross-pair-{arch}-work"));
    ok(sysroot.xdkms("add", &[fixture("xdkms_pair-1.0").to_str().expect("utf-8")]), "add");
    ok(sysroot.xdkms("build", &["-j", "2", "xdkms_pair/1.0"]), "build");
    ok(sysroot.xdkms("install", &["xdkms_pair/1.0"]), "install");
    let status = text(&ok(sysroot.xdkms("status", &[]), "status").stdout);
    assert_eq!(status, format!("xdkms_pair/1.0, {}, {machine}: installed\n", sysroot.kernel));
    let updates = sysroot.modules().join("updates/dkms");
    for name in ["xdkms_pair_a", "xdkms_pair_b"] {
        let module = updates.join(format!("{name}.ko"));
        assert_eq!(elf_machine(&module), elf, "{}", module.display());
        // Built by the package's own Makefile, which asked `uname` for the kernel and machine.
        let built_for = run_ok(Command::new("modinfo").args(["-F", "built_for"]).arg(&module));
        assert_eq!(text(&built_for.stdout).trim(), format!("{}/{machine}", sysroot.kernel));
    }
    let dep = std::fs::read_to_string(sysroot.modules().join("modules.dep")).expect("modules.dep");
    assert!(dep.contains("updates/dkms/xdkms_pair_b.ko: updates/dkms/xdkms_pair_a.ko\n"), "{dep}");
    assert_indexes_match_kmod(&sysroot, &work);

    let busybox = match arch {
        "amd64" => refs().path("XDKMS_BUSYBOX_AMD64"),
        _ => refs().path("XDKMS_BUSYBOX_ARM64"),
    };
    let base = base_image(&work, &busybox, "zstd");
    let kernel_image = sysroot.root().join("boot").join(format!("vmlinuz-{}", sysroot.kernel));
    // Without the injection, modprobe has nothing to load.
    let before = boot_and_modprobe(arch, &kernel_image, &base, "xdkms_pair_b");
    assert!(before.contains("modprobe xdkms_pair_b: failed"), "{arch} base image:\n{before}");
    let image = work.join("injected.img");
    run_ok(
        xdkms()
            .args(["initramfs", "inject", "--root"])
            .arg(sysroot.root())
            .args(["-k", &sysroot.kernel, "-o"])
            .arg(&image)
            .arg(&base)
            .arg("xdkms_pair_b"),
    );
    let after = boot_and_modprobe(arch, &kernel_image, &image, "xdkms_pair_b");
    assert!(after.contains("modprobe xdkms_pair_b: ok"), "{arch}:\n{after}");
    assert!(after.contains("xdkms_pair_b: answer 42"), "{arch}:\n{after}");
    let loaded = after.lines().find(|l| l.contains("modules:")).unwrap_or_default();
    for name in ["xdkms_pair_a", "xdkms_pair_b"] {
        assert!(loaded.split_whitespace().any(|m| m == name), "{name} not loaded on {arch}: {loaded}");
    }
}

#[test]
fn arm64_pair_cross_builds_and_loads_under_qemu() {
    pair_builds_installs_and_loads("arm64", 183, "aarch64");
}

#[test]
fn amd64_pair_builds_and_loads_under_qemu() {
    pair_builds_installs_and_loads("amd64", 62, "x86_64");
}

#[test]
fn links_outside_the_root_resolve_inside_it() {
    let sysroot = Sysroot::new("outside", "amd64");
    // A directory of the build host that the sysroot's `updates` names with an absolute link.
    let outside = TempDir::new("cross-outside-host");
    symlink(outside.path(), sysroot.modules().join("updates")).expect("symlink");
    // The module's source directory too (`add` copies the source there).
    let outside_source = TempDir::new("cross-outside-source");
    symlink(outside_source.path(), sysroot.root().join("usr/src/xdkms_test-1.0")).expect("symlink");
    ok(sysroot.xdkms("install", &["-j", "2", fixture("xdkms_test-1.0").to_str().expect("utf-8")]), "install");
    for dir in [outside.path(), outside_source.path()] {
        let host_side: Vec<PathBuf> = std::fs::read_dir(dir).expect("outside").flatten().map(|e| e.path()).collect();
        assert!(host_side.is_empty(), "xdkms wrote outside the root: {host_side:?}");
    }
    let source_inside = sysroot.root().join(outside_source.path().strip_prefix("/").expect("absolute"));
    assert!(source_inside.join("dkms.conf").is_file(), "the source is not at {}", source_inside.display());
    let inside = sysroot.root().join(outside.path().strip_prefix("/").expect("absolute"));
    assert!(inside.join("dkms/xdkms_test.ko").is_file(), "not installed at {}", inside.display());
    let dep = std::fs::read_to_string(sysroot.modules().join("modules.dep")).expect("modules.dep");
    assert!(dep.contains("updates/dkms/xdkms_test.ko:"), "the native depmod did not follow the link inside the root");
    // uninstall finds it there too.
    ok(sysroot.xdkms("uninstall", &["xdkms_test/1.0"]), "uninstall");
    assert!(!inside.join("dkms/xdkms_test.ko").exists());
}

fn refused(out: &Output, code: i32, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "expected exit {code} ({needle}):\n{err}");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
}

#[test]
fn bad_targets_are_clear_errors() {
    let sysroot = Sysroot::new("bad", "arm64");
    let k = sysroot.kernel.clone();
    let source = fixture("xdkms_test-1.0");
    let source = source.to_str().expect("utf-8");
    ok(sysroot.xdkms("add", &[source]), "add");
    let module = "xdkms_test/1.0";
    // Headers missing: 21 and the path looked at.
    refused(&sysroot.xdkms("build", &["-k", "9.9.9-none", module]), 21, "lib/modules/9.9.9-none/build");
    // Headers for another arch than asked.
    refused(&sysroot.xdkms("build", &["-k", &format!("{k}/x86_64"), module]), 12, "are for aarch64 (ARCH=arm64");
    refused(&sysroot.xdkms("build", &["-k", &k, "-a", "amd64", module]), 12, "not for x86_64 as asked");
    // Headers of another kernel than the one named.
    let headers = sysroot.root().join("usr/src").join(format!("linux-headers-{k}"));
    let headers = headers.to_str().expect("utf-8");
    refused(
        &sysroot.xdkms("build", &["--kernel-build", headers, "-k", "6.1.0-99-arm64", module]),
        21,
        &format!("are for kernel {k}, not 6.1.0-99-arm64"),
    );
    // Unknown arch names.
    refused(&sysroot.xdkms("build", &["-k", &format!("{k}/sparc99"), module]), 12, "Unknown architecture 'sparc99'");
    // An explicit prefix that is not there.
    refused(&sysroot.xdkms("build", &["--cross-compile", "nowhere-linux-gnu-", module]), 22, "nowhere-linux-gnu-gcc");

    // No cross compiler on PATH: every host program except the aarch64 ones.
    let bin = TempDir::new("cross-bin");
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with("aarch64-") && !bin.join(&name).exists() {
                let _ = symlink(entry.path(), bin.join(&name));
            }
        }
    }
    let out = run(xdkms()
        .args(["build", "--root"])
        .arg(sysroot.root())
        .arg(module)
        .env("PATH", bin.path())
        .env_remove("CROSS_COMPILE")
        .env_remove("MAKEFLAGS"));
    refused(&out, 22, "Install Debian's gcc-aarch64-linux-gnu package");

    // kbuild host programs built for the target: fixdep replaced by an arm64 program.
    // The headers' scripts link leads (relatively, so inside the root) to linux-kbuild's.
    let fixdep = std::fs::canonicalize(Path::new(headers).join("scripts/basic/fixdep")).expect("fixdep");
    assert!(fixdep.starts_with(sysroot.root()));
    std::fs::remove_file(&fixdep).expect("unlink the hard link");
    std::fs::copy(refs().path("XDKMS_BUSYBOX_ARM64"), &fixdep).expect("copy");
    refused(&sysroot.xdkms("build", &[module]), 23, "is built for aarch64 and cannot run on this x86_64 build host");
    std::fs::remove_file(&fixdep).expect("unlink");
    refused(&sysroot.xdkms("build", &[module]), 23, "scripts/basic/fixdep is missing");

    // Nothing was built by any of these.
    let status = text(&ok(sysroot.xdkms("status", &[]), "status").stdout);
    assert_eq!(status, "xdkms_test/1.0: added\n");
}

/// Regression: on a build host that has /lib/modules (but not the kbuild tools the headers link
/// to), the overlay made for the kbuild mount point hid the root's /lib/modules bound before it,
/// and make found no /lib/modules/K/build. Such a host is made here in a mount namespace.
#[test]
fn regression_host_lib_modules_not_hidden_by_a_later_overlay() {
    let sysroot = Sysroot::new("host-lib-modules", "amd64");
    let work = TempDir::new("host-lib-modules-layer");
    let script = r#"set -e
mkdir -p "$1/upper" "$1/work"
mount -t overlay overlay -o "lowerdir=/usr/lib,upperdir=$1/upper,workdir=$1/work" /usr/lib
mkdir -p /usr/lib/modules
shift
exec "$@""#;
    let out = run(Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", script, "host"])
        .arg(work.path())
        .arg(crate::util::xdkms_bin())
        .args(["install", "-q", "-j", "2", "--root"])
        .arg(sysroot.root())
        .arg(fixture("xdkms_test-1.0"))
        .env_remove("MAKEFLAGS"));
    ok(out, "install with /lib/modules on the host");
    assert!(sysroot.modules().join("updates/dkms/xdkms_test.ko").is_file());
}
