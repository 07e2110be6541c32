//! The Yocto class and the Buildroot package infrastructure under cross/, run as a recipe runs
//! them: the Buildroot hooks through GNU make with a jobserver (`make -j2`, as Buildroot's
//! top-level make provides one), the Yocto rootfs function through bash with the variables
//! bitbake would expand, each against a Debian sysroot standing in for the target root.

use std::path::Path;
use std::process::Command;

use crate::cross::{assert_indexes_match_kmod, Sysroot};
use crate::dkms::fixture;
use crate::util::{copy_all, run_ok, xdkms_bin, TempDir};

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn assert_pair_installed(sysroot: &Sysroot, elf_machine: u16) {
    for name in ["xdkms_pair_a", "xdkms_pair_b"] {
        let module = sysroot.modules().join(format!("updates/dkms/{name}.ko"));
        let bytes = std::fs::read(&module).unwrap_or_else(|e| panic!("{}: {e}", module.display()));
        assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), elf_machine, "{}", module.display());
    }
}

#[test]
fn buildroot_package_infrastructure_builds_for_arm64_under_make_jobserver() {
    let sysroot = Sysroot::new("buildroot", "arm64");
    let work = TempDir::new("buildroot-work");
    // The package's build directory ($(@D)), as Buildroot extracts it.
    let build_dir = work.join("build/xdkms-pair-1.0");
    std::fs::create_dir_all(work.join("build")).expect("mkdir");
    copy_all(&fixture("xdkms_pair-1.0"), &build_dir);
    let k = &sysroot.kernel;
    let harness = format!(
        r#"# What Buildroot defines for a package .mk, and the two steps of generic-package that run
# the hooks (stamp files in the build directory, so $(@D) is that directory).
TARGET_DIR = {root}
LINUX_VERSION_PROBED = {k}
LINUX_DIR = {root}/usr/src/linux-headers-{k}
TARGET_CROSS = aarch64-linux-gnu-
TARGET_MAKE_ENV = PATH="$(PATH)"
XDKMS = {xdkms}
XDKMS_EXTRA_ARGS = --verbose
XDKMS_CACHE = {cache}
UPPERCASE = $(shell echo '$(1)' | tr 'a-z-' 'A-Z_')
define sep


endef
include {mk}
pkgname = xdkms-pair
$(eval $(xdkms-package))

{dir}/.stamp_built:
	$(foreach hook,$(XDKMS_PAIR_POST_BUILD_HOOKS),$(call $(hook))$(sep))
	touch $@
{dir}/.stamp_target_installed: {dir}/.stamp_built
	$(foreach hook,$(XDKMS_PAIR_POST_INSTALL_TARGET_HOOKS),$(call $(hook))$(sep))
	touch $@
"#,
        root = sysroot.root().display(),
        xdkms = xdkms_bin().display(),
        mk = repo("cross/buildroot/pkg-xdkms.mk").display(),
        dir = build_dir.display(),
        cache = work.join("cache").display(),
    );
    let makefile = work.join("harness.mk");
    std::fs::write(&makefile, harness).expect("harness");
    let installed = build_dir.join(".stamp_target_installed");
    // The first build, then a rebuild (`make xdkms-pair-rebuild` runs both steps again), which
    // the build cache answers.
    for round in 0..2 {
        for stamp in [".stamp_built", ".stamp_target_installed"] {
            let _ = std::fs::remove_file(build_dir.join(stamp));
        }
        let out = run_ok(
            Command::new("make")
                .args(["-j2", "-f"])
                .arg(&makefile)
                .arg(&installed)
                .env_remove("MAKEFLAGS")
                .env_remove("CROSS_COMPILE")
                .env_remove("ARCH"),
        );
        // With --verbose, on stderr: the builds took their jobs from make's jobserver, and the
        // makes that ran had no -j of their own (stdout shows dkms's line, -j included).
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(log.contains("builds share the parent make's jobserver"), "{log}");
        let restored = String::from_utf8_lossy(&out.stdout).matches("Restored from the build cache").count();
        if round == 0 {
            assert!(log.contains("xdkms: running make KERNELRELEASE=") && !log.contains("running make -j"), "{log}");
            assert_eq!(restored, 0);
        } else {
            assert!(!log.contains("xdkms: running make"), "the rebuild ran make: {log}");
            // One package (both modules), one build.
            assert_eq!(restored, 1, "{}", String::from_utf8_lossy(&out.stdout));
        }
    }
    assert_pair_installed(&sysroot, 183);
    assert_indexes_match_kmod(&sysroot, &work);
}

#[test]
fn yocto_class_rootfs_step_installs_the_images_dkms_sources() {
    let sysroot = Sysroot::new("yocto", "amd64");
    // A -dkms package installed the source tree into the rootfs.
    copy_all(&fixture("xdkms_pair-1.0"), &sysroot.root().join("usr/src/xdkms_pair-1.0"));
    let class = std::fs::read_to_string(repo("cross/yocto/classes/xdkms.bbclass")).expect("bbclass");
    let start = class.find("xdkms_rootfs_install() {").expect("the rootfs function");
    let end = start + class[start..].find("\n}\n").expect("its end") + 3;
    let function = &class[start..end];
    let k = &sysroot.kernel;
    let work = TempDir::new("yocto-work");
    let script = format!("bbnote() {{ echo \"NOTE: $*\"; }}\nset -e\n{function}xdkms_rootfs_install\n");
    run_ok(
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("XDKMS", xdkms_bin())
            .env("IMAGE_ROOTFS", sysroot.root())
            .env("STAGING_KERNEL_BUILDDIR", sysroot.root().join(format!("usr/src/linux-headers-{k}")))
            .env("TARGET_PREFIX", "x86_64-linux-gnu-")
            .env("PARALLEL_MAKE", "-j 2")
            .env("XDKMS_MODULES", "")
            .env("XDKMS_SIGNING_KEY", "")
            .env("XDKMS_SIGNING_CERT", "")
            .env("XDKMS_EXTRA_ARGS", "")
            .env("XDKMS_CACHE", work.join("cache"))
            .env_remove("MAKEFLAGS")
            .env_remove("CROSS_COMPILE"),
    );
    assert_pair_installed(&sysroot, 62);
    assert_indexes_match_kmod(&sysroot, &work);
    // The package's build (both modules) was filed in the cache the class passed on.
    let filed = std::fs::read_dir(work.join("cache/v1")).expect("cache").flatten().filter(|e| e.file_name().len() == 2);
    assert_eq!(filed.flat_map(|shard| std::fs::read_dir(shard.path()).expect("shard").flatten()).count(), 1);
    let status = run_ok(Command::new(xdkms_bin()).arg("status").arg("--root").arg(sysroot.root()));
    assert_eq!(String::from_utf8_lossy(&status.stdout), format!("xdkms_pair/1.0, {k}, x86_64: installed\n"));
}
