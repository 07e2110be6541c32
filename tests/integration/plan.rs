//! `plan`, `build-one` and `collect` (issue 13): a plan run by make, and the same plan run job
//! by job in two working roots that share nothing but the plan and the cache, then collected,
//! end in the root one `xdkms install` run makes; a second run is answered from the cache;
//! BUILD_DEPENDS orders the graph and a cycle is an error naming the modules; a changed input
//! rebuilds exactly the jobs it feeds; a plan's initramfs jobs leave the initramfs an install
//! and an `initramfs inject` leave.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::dkms::fixture;
use crate::util::{refs, run, run_ok, xdkms, TempDir};

/// Debian's DKMS packages the matrix builds: one, two and several source files.
const PACKAGES: [&str; 3] = ["v4l2loopback-dkms", "ddcci-dkms", "dm-writeboost-dkms"];

/// The date every run writes into make.log (so that the logs compare byte for byte).
const EPOCH: &str = "1700000000";

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A root holding Debian's amd64 sysroot and the arm64 kernel's modules and headers, with
/// `sources` added.
fn matrix_root(dir: &Path, sources: &[PathBuf]) -> PathBuf {
    let root = dir.to_path_buf();
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    std::fs::create_dir_all(root.join("var/lib/dkms")).expect("mkdir");
    std::fs::write(root.join("etc/os-release"), "ID=debian\n").expect("os-release");
    let amd64 = refs().path("XDKMS_ROOT_AMD64");
    let arm64 = refs().path("XDKMS_ROOT_ARM64");
    let arm64_kernel = refs().get("XDKMS_KVER_ARM64");
    for part in ["lib", "usr", "boot"] {
        run_ok(Command::new("cp").arg("-al").arg(amd64.join(part)).arg(root.join(part)));
    }
    run_ok(
        Command::new("cp").arg("-al").arg(arm64.join("lib/modules").join(&arm64_kernel)).arg(root.join("lib/modules")),
    );
    let headers = format!("usr/src/linux-headers-{arm64_kernel}");
    run_ok(Command::new("cp").arg("-al").arg(arm64.join(&headers)).arg(root.join("usr/src")));
    for source in sources {
        run_ok(xdkms().arg("add").arg("--root").arg(&root).arg("-q").arg(source));
    }
    root
}

fn xdkms_at(args: &[&str]) -> Command {
    let mut command = xdkms();
    command.args(args).env("SOURCE_DATE_EPOCH", EPOCH).env_remove("XDKMS_CACHE").env_remove("MAKEFLAGS");
    command
}

/// The build jobs of a JSON plan: each one's command words.
fn build_jobs(plan: &serde_json::Value) -> Vec<Vec<String>> {
    let jobs = plan["jobs"].as_array().expect("jobs");
    jobs.iter()
        .filter(|job| job["kind"] == "build" && job["excluded"] == false)
        .map(|job| {
            job["args"].as_array().expect("args").iter().map(|w| w.as_str().expect("word").to_string()).collect()
        })
        .collect()
}

/// `diff -r` of `tree` in two roots (symlinks compared as links), `excluded` file names left
/// out.
fn assert_same(a: &Path, b: &Path, tree: &str, excluded: &[&str]) {
    let mut diff = Command::new("diff");
    diff.arg("-r").arg("--no-dereference");
    for name in excluded {
        diff.arg(format!("--exclude={name}"));
    }
    let out = run(diff.arg(a.join(tree)).arg(b.join(tree)));
    assert!(out.status.success(), "{tree} differs between {} and {}:\n{}", a.display(), b.display(), text(&out));
}

/// Two roots hold the same dkms trees and module directories (modules and indexes), byte for
/// byte, but for make.log: two builds under `make -jN` log their parallel jobs' lines in the
/// order they ran (SOURCE_DATE_EPOCH fixes its date line).
fn assert_same_roots(a: &Path, b: &Path) {
    assert_same(a, b, "var/lib/dkms", &["make.log"]);
    for kernel in [refs().get("XDKMS_KVER_AMD64"), refs().get("XDKMS_KVER_ARM64")] {
        assert_same(a, b, &format!("lib/modules/{kernel}"), &[]);
    }
}

#[test]
fn a_plan_run_by_make_and_fanned_out_to_two_roots_ends_as_one_install_run() {
    let dir = TempDir::new("plan-matrix");
    let packages = refs().path("XDKMS_DKMS_PACKAGES");
    let sources: Vec<PathBuf> = PACKAGES
        .iter()
        .map(|p| {
            let src = packages.join(p).join("usr/src");
            std::fs::read_dir(&src).expect("package source").flatten().next().expect("one source").path()
        })
        .collect();
    let kernels = [refs().get("XDKMS_KVER_AMD64"), refs().get("XDKMS_KVER_ARM64")];
    let cache = dir.join("cache");

    // The reference: one install run of the three packages for both kernels.
    let reference = matrix_root(&dir.join("reference"), &sources);
    let mut install = xdkms_at(&["install", "-q", "-j", "2", "-k", &kernels[0], "-k", &kernels[1]]);
    install.arg("--root").arg(&reference).args(sources.iter());
    run_ok(&mut install);

    // The JSON plan, run job by job in two working roots sharing only the plan and the cache,
    // then collected into a fresh root.
    let planned = matrix_root(&dir.join("planned"), &sources);
    let out = run_ok(
        xdkms_at(&["plan", "-k", &kernels[0], "-k", &kernels[1], "--format", "json", "--cache"])
            .arg(&cache)
            .arg("--root")
            .arg(&planned),
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the plan is JSON");
    assert_eq!((plan["schema"].as_str(), plan["version"].as_u64()), (Some("xdkms-plan"), Some(1)));
    let jobs = build_jobs(&plan);
    assert_eq!(jobs.len(), 6, "{plan:#}");
    let machines = [matrix_root(&dir.join("machine-1"), &sources), matrix_root(&dir.join("machine-2"), &sources)];
    let mut outputs = Vec::new();
    for (n, words) in jobs.iter().enumerate() {
        let output = dir.join(format!("out/{n}"));
        let mut command = xdkms_at(&[&words[0], "-q", "--cache"]);
        command.arg(&cache).arg("--root").arg(&machines[n % 2]).arg("--out").arg(&output).args(&words[1..]);
        let done = run(&mut command);
        assert!(done.status.success(), "{words:?}: {}", text(&done));
        outputs.push(output);
    }
    run_ok(xdkms_at(&["collect", "-q", "--root"]).arg(&planned).args(&outputs));
    assert_same_roots(&reference, &planned);

    // The make form of the same plan, run a second time with the same cache: every job a hit.
    let by_make = matrix_root(&dir.join("by-make"), &sources);
    let makefile = dir.join("plan.mk");
    let out = run_ok(
        xdkms_at(&["plan", "-k", &kernels[0], "-k", &kernels[1], "--format", "make", "--cache"])
            .arg(&cache)
            .arg("--root")
            .arg(&by_make),
    );
    std::fs::write(&makefile, &out.stdout).expect("write the Makefile");
    let made = run_ok(
        Command::new("make")
            .arg("-j2")
            .arg("-f")
            .arg(&makefile)
            .current_dir(dir.path())
            .env("SOURCE_DATE_EPOCH", EPOCH),
    );
    let restored = String::from_utf8_lossy(&made.stdout).matches("Restored from the build cache").count();
    assert_eq!(restored, 6, "{}", text(&made));
    assert_same_roots(&reference, &by_make);
}

/// A root of the Debian amd64 sysroot with the fixture modules `names` added.
fn fixture_root(dir: &Path, names: &[&str]) -> PathBuf {
    let root = dir.to_path_buf();
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    std::fs::create_dir_all(root.join("var/lib/dkms")).expect("mkdir");
    std::fs::write(root.join("etc/os-release"), "ID=debian\n").expect("os-release");
    for part in ["lib", "usr", "boot"] {
        run_ok(Command::new("cp").arg("-al").arg(refs().path("XDKMS_ROOT_AMD64").join(part)).arg(root.join(part)));
    }
    for name in names {
        run_ok(xdkms().arg("add").arg("--root").arg(&root).arg("-q").arg(fixture(name)));
    }
    root
}

#[test]
fn build_depends_order_the_plan_and_ninja_runs_it() {
    let dir = TempDir::new("plan-order");
    let root = fixture_root(&dir.join("root"), &["xdkms_user-1.0", "xdkms_test-1.0"]);
    let out = run_ok(xdkms_at(&["plan", "--format", "json", "--root"]).arg(&root));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ids: Vec<&str> = plan["jobs"].as_array().expect("jobs").iter().map(|j| j["id"].as_str().expect("id")).collect();
    let position = |module: &str| ids.iter().position(|id| id.starts_with(&format!("build/{module}/"))).expect(module);
    assert!(position("xdkms_test") < position("xdkms_user"), "{ids:?}");
    let user = &plan["jobs"][position("xdkms_user")];
    assert_eq!(user["after"][0].as_str().map(|id| id.starts_with("build/xdkms_test/")), Some(true), "{user}");

    // xdkms_user's build reads xdkms_test's Module.symvers: it only builds after it.
    let ninja_file = dir.join("plan.ninja");
    let out = run_ok(xdkms_at(&["plan", "--format", "ninja", "--root"]).arg(&root));
    std::fs::write(&ninja_file, &out.stdout).expect("write");
    let ran = run(Command::new("ninja").arg("-f").arg(&ninja_file).current_dir(dir.path()));
    assert!(ran.status.success(), "{}", text(&ran));
    let status = run_ok(xdkms().arg("status").arg("--root").arg(&root));
    let installed = String::from_utf8_lossy(&status.stdout).matches(": installed").count();
    assert_eq!(installed, 2, "{}", text(&status));
}

#[test]
fn a_kernel_every_module_excludes_gets_an_install_job_that_does_nothing() {
    let dir = TempDir::new("plan-excluded");
    let root = fixture_root(&dir.join("root"), &["xdkms_exclusive-1.0"]);
    let out = run_ok(xdkms_at(&["plan", "--format", "json", "--root"]).arg(&root));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let jobs = plan["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 2, "{plan:#}");
    assert!(jobs.iter().all(|job| job["excluded"] == true), "{plan:#}");
    let makefile = dir.join("plan.mk");
    let out = run_ok(xdkms_at(&["plan", "--format", "make", "--root"]).arg(&root));
    std::fs::write(&makefile, &out.stdout).expect("write");
    run_ok(Command::new("make").arg("-f").arg(&makefile).current_dir(dir.path()));
    let status = run_ok(xdkms().arg("status").arg("--root").arg(&root));
    assert_eq!(String::from_utf8_lossy(&status.stdout), "xdkms_exclusive/1.0: added\n");
}

#[test]
fn a_dependency_cycle_is_an_error_naming_the_modules() {
    let dir = TempDir::new("plan-cycle");
    let root = fixture_root(&dir.join("root"), &[]);
    for (name, depends) in [("xdkms_ping", "xdkms_pong"), ("xdkms_pong", "xdkms_ping")] {
        let source = dir.join(format!("{name}-1.0"));
        std::fs::create_dir_all(&source).expect("mkdir");
        std::fs::write(source.join(format!("{name}.c")), "#include <linux/module.h>\nMODULE_LICENSE(\"GPL\");\n")
            .expect("write");
        std::fs::write(source.join("Makefile"), format!("obj-m := {name}.o\n")).expect("write");
        let conf = format!(
            "PACKAGE_NAME=\"{name}\"\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=\"{name}\"\nDEST_MODULE_LOCATION[0]=\"/extra\"\nBUILD_DEPENDS[0]=\"{depends}\"\n"
        );
        std::fs::write(source.join("dkms.conf"), conf).expect("write");
        run_ok(xdkms().arg("add").arg("--root").arg(&root).arg("-q").arg(&source));
    }
    let out = run(xdkms_at(&["plan", "--root"]).arg(&root));
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("cycle: xdkms_ping -> xdkms_pong -> xdkms_ping"), "{said}");
}

#[test]
fn collect_refuses_what_is_not_a_build_output_and_changes_nothing() {
    let dir = TempDir::new("plan-collect");
    let root = fixture_root(&dir.join("root"), &["xdkms_test-1.0"]);
    let kernel = refs().get("XDKMS_KVER_AMD64");
    let output = dir.join("out");
    let built = run(xdkms_at(&["build-one", "-q", "-k", &kernel, "xdkms_test/1.0", "--root"])
        .arg(&root)
        .arg("--out")
        .arg(&output));
    assert!(built.status.success(), "{}", text(&built));
    // A flipped byte in the output's module: collect names the output and installs nothing.
    let target = fixture_root(&dir.join("target"), &["xdkms_test-1.0"]);
    let module = output.join("files/module/xdkms_test.ko");
    let mut bytes = std::fs::read(&module).expect("module");
    bytes[100] ^= 1;
    std::fs::write(&module, bytes).expect("damage");
    let out = run(xdkms_at(&["collect", "--root"]).arg(&target).arg(&output));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains(&format!("{}: not a build-one output", output.display())), "{}", text(&out));
    let status = run_ok(xdkms().arg("status").arg("--root").arg(&target));
    assert_eq!(String::from_utf8_lossy(&status.stdout), "xdkms_test/1.0: added\n");
}

/// A root of [`fixture_root`] whose /boot holds an initramfs for `kernel` (zstd, as Debian makes
/// them), made from a tree with only /bin.
fn root_with_initramfs(dir: &Path, names: &[&str], kernel: &str) -> PathBuf {
    let root = fixture_root(dir, names);
    let tree = dir.with_extension("initramfs-tree");
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    let image = root.join(format!("boot/initrd.img-{kernel}"));
    run_ok(xdkms_at(&["initramfs", "create", "--compress", "zstd", "-o"]).arg(&image).arg(&tree));
    root
}

#[test]
fn a_plan_with_initramfs_jobs_ends_as_install_then_inject() {
    let dir = TempDir::new("plan-initramfs");
    let kernel = refs().get("XDKMS_KVER_AMD64");
    let modules = ["xdkms_user-1.0", "xdkms_test-1.0"];
    let initrd = format!("boot/initrd.img-{kernel}");

    // The reference: install, then inject the installed modules by hand.
    let reference = root_with_initramfs(&dir.join("reference"), &modules, &kernel);
    run_ok(xdkms_at(&["install", "-q", "-k", &kernel, "xdkms_test/1.0", "xdkms_user/1.0", "--root"]).arg(&reference));
    let inside = format!("/{initrd}");
    run_ok(
        xdkms_at(&["initramfs", "inject", "-k", &kernel, "--in-root", &inside, "--root"])
            .arg(&reference)
            .args(["xdkms_test", "xdkms_user"]),
    );

    // The plan with an initramfs job per kernel, run by make.
    let planned = root_with_initramfs(&dir.join("planned"), &modules, &kernel);
    // A directive too: reading the confs to plan prints none of dkms's `DIRECTIVE:` lines into
    // the JSON (a build prints them).
    let out = run_ok(
        xdkms_at(&["plan", "-k", &kernel, "--format", "json", "--directive", "STRIP=no", "--initramfs"])
            .arg("/boot/initrd.img-{kernel}")
            .arg("--root")
            .arg(&planned),
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let last = plan["jobs"].as_array().and_then(|jobs| jobs.last()).expect("jobs");
    assert_eq!(last["kind"], "initramfs", "{plan:#}");
    assert_eq!(last["after"][0].as_str(), Some(format!("install/{kernel}/x86_64").as_str()), "{plan:#}");
    let makefile = dir.join("plan.mk");
    let out = run_ok(
        xdkms_at(&["plan", "-k", &kernel, "--format", "make", "--initramfs", "/boot/initrd.img-{kernel}", "--root"])
            .arg(&planned),
    );
    std::fs::write(&makefile, &out.stdout).expect("write");
    let made = run(Command::new("make")
        .arg("-j2")
        .arg("-f")
        .arg(&makefile)
        .current_dir(dir.path())
        .env("SOURCE_DATE_EPOCH", EPOCH));
    assert!(made.status.success(), "{}", text(&made));
    let image = std::fs::read(planned.join(&initrd)).expect("the planned root's initramfs");
    assert!(image == std::fs::read(reference.join(&initrd)).expect("the reference's"), "the initramfs images differ");
    let listed = text(&run_ok(xdkms().args(["initramfs", "list"]).arg(planned.join(&initrd))));
    for module in ["xdkms_test", "xdkms_user"] {
        assert!(listed.contains(&format!("lib/modules/{kernel}/updates/dkms/{module}.ko")), "{module}:\n{listed}");
    }

    // An initramfs the root does not have is refused when planning, naming the path.
    let out = run(xdkms_at(&["plan", "--initramfs", "/boot/initramfs-{kernel}.img", "--root"]).arg(&planned));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains(&format!("--initramfs /boot/initramfs-{kernel}.img: no such file")), "{}", text(&out));
}

/// The jobs a cached install of the matrix built (not restored), as `module kernel` pairs.
fn jobs_built(said: &str) -> BTreeSet<String> {
    let built = said.lines().filter(|line| line.starts_with("xdkms: [") && line.contains(": built in "));
    built
        .map(|line| {
            let job = line.split_once("] ").map_or(line, |(_, rest)| rest);
            let (name, rest) = job.split_once(" for ").expect("a job line names its module");
            let kernel = rest.split_whitespace().next().expect("and its kernel");
            format!("{} {kernel}", name.split('/').next().unwrap_or(name))
        })
        .collect()
}

/// A directory of compiler wrappers, first on PATH: `--version` says another release, anything
/// else runs the real compiler.
fn other_compiler(dir: &Path, names: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    for name in names {
        let script = format!(
            "#!/bin/sh\ncase \"$1\" in --version) echo '{name} (Other) 12.9.9';; *) exec /usr/bin/{name} \"$@\";; esac\n"
        );
        let path = dir.join(name);
        std::fs::write(&path, script).expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    }
    dir.to_path_buf()
}

/// A signing key pair (mok.key, mok.pub) made once in `dir`.
fn signing_key(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(format!("key-{name}"));
    std::fs::create_dir_all(&key).expect("mkdir");
    crate::util::mok_pair(&key.join("mok.key"), &key.join("mok.pub"), &format!("/CN=key {name}"));
    key
}

#[test]
fn a_changed_input_rebuilds_exactly_the_jobs_it_affects() {
    let dir = TempDir::new("plan-affected");
    let cache = dir.join("cache");
    let (amd64, arm64) = (refs().get("XDKMS_KVER_AMD64"), refs().get("XDKMS_KVER_ARM64"));
    let other = fixture("xdkms_multi-1.0");
    let (key_a, key_b) = (signing_key(dir.path(), "a"), signing_key(dir.path(), "b"));
    let mut roots = 0;
    // Adds `source` and xdkms_multi to a fresh matrix root (`edit` changes it first), installs
    // both for both kernels with the cache and `path_first` ahead on PATH: the jobs it built.
    let mut install = |source: &Path, key: &Path, path_first: Option<&Path>, edit: &dyn Fn(&Path)| {
        roots += 1;
        let root = matrix_root(&dir.join(format!("root-{roots}")), &[source.to_path_buf(), other.clone()]);
        for file in ["mok.key", "mok.pub"] {
            std::fs::copy(key.join(file), root.join("var/lib/dkms").join(file)).expect("copy key");
        }
        edit(&root);
        let mut command = xdkms_at(&["install", "-j", "2", "-k", &amd64, "-k", &arm64, "--cache"]);
        command.arg(&cache).arg("--root").arg(&root).args(["xdkms_test/1.0", "xdkms_multi/1.0"]);
        if let Some(first) = path_first {
            command.env("PATH", format!("{}:{}", first.display(), std::env::var("PATH").unwrap_or_default()));
        }
        let out = run(&mut command);
        assert!(out.status.success(), "{}", text(&out));
        jobs_built(&String::from_utf8_lossy(&out.stderr))
    };
    let jobs = |modules: &[&str], kernels: &[&str]| -> BTreeSet<String> {
        modules.iter().flat_map(|m| kernels.iter().map(move |k| format!("{m} {k}"))).collect()
    };
    let both = ["xdkms_test", "xdkms_multi"];
    let unchanged = |_: &Path| {};
    let source = fixture("xdkms_test-1.0");

    assert_eq!(install(&source, &key_a, None, &unchanged), jobs(&both, &[&amd64, &arm64]), "the first run");
    assert_eq!(install(&source, &key_a, None, &unchanged), BTreeSet::new(), "the same inputs");

    // A source file: that module's jobs, for both kernels.
    let edited = dir.join("edited/xdkms_test-1.0");
    std::fs::create_dir_all(edited.parent().expect("parent")).expect("mkdir");
    run_ok(Command::new("cp").arg("-a").arg(&source).arg(&edited));
    let code = std::fs::read_to_string(edited.join("xdkms_test.c")).expect("source");
    std::fs::write(edited.join("xdkms_test.c"), format!("{code}\n/* edited */\n")).expect("edit");
    assert_eq!(install(&edited, &key_a, None, &unchanged), jobs(&["xdkms_test"], &[&amd64, &arm64]), "a source file");

    // A .config symbol of the arm64 kernel: its jobs only (the root's files are hard links to
    // the test cache's: the file is replaced, not written through).
    let arm64_config = |root: &Path| {
        let config = root.join("usr/src").join(format!("linux-headers-{arm64}")).join(".config");
        let before = std::fs::read_to_string(&config).expect(".config");
        std::fs::remove_file(&config).expect("unlink");
        std::fs::write(&config, before + "CONFIG_XDKMS_TEST=y\n").expect("write");
    };
    assert_eq!(install(&source, &key_a, None, &arm64_config), jobs(&both, &[&arm64]), "an arm64 .config symbol");

    // The compiler's version: the native compiler's changes the amd64 jobs, the cross
    // compiler's the arm64 jobs.
    let native = other_compiler(&dir.join("native-gcc"), &["gcc", "gcc-12"]);
    assert_eq!(install(&source, &key_a, Some(&native), &unchanged), jobs(&both, &[&amd64]), "the native compiler");
    let cross = other_compiler(&dir.join("cross-gcc"), &["aarch64-linux-gnu-gcc", "aarch64-linux-gnu-gcc-12"]);
    assert_eq!(install(&source, &key_a, Some(&cross), &unchanged), jobs(&both, &[&arm64]), "the cross compiler");

    // The signing key: every job signs.
    assert_eq!(install(&source, &key_b, None, &unchanged), jobs(&both, &[&amd64, &arm64]), "the signing key");
}
