//! The build cache (issue 13): a build restored from it is the bytes a fresh build made, found
//! without running make; every input the key names is a miss when it changes; damaged,
//! racing and killed writes never hand out a wrong module.
//!
//! Each test installs the fixture module into copies of the Debian amd64 root sharing one
//! cache directory (two roots stand for two machines). A run that must be answered from the
//! cache gets a PATH whose `make` fails, so a hit is proven by the run succeeding, and a miss
//! by its failing with the build's own error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::{refs, run, run_ok, xdkms, TempDir};

struct Setup {
    dir: TempDir,
    kernel: String,
    cache: PathBuf,
    source: PathBuf,
    /// A directory whose `make` fails loudly, put first on PATH.
    no_make: PathBuf,
}

/// What a failing build prints (make ran: the cache missed).
const BUILD_FAILED: &str = "Bad return status for module build";

impl Setup {
    fn new(name: &str) -> Setup {
        let dir = TempDir::new(&format!("cache-{name}"));
        let source = dir.join("xdkms_test-1.0");
        run_ok(Command::new("cp").arg("-a").arg(crate::dkms::fixture("xdkms_test-1.0")).arg(&source));
        let no_make = dir.join("no-make");
        std::fs::create_dir_all(&no_make).expect("mkdir");
        write_script(&no_make.join("make"), "#!/bin/sh\necho 'make run' >&2\nexit 2\n");
        Setup { kernel: refs().get("XDKMS_KVER_AMD64"), cache: dir.join("cache"), source, no_make, dir }
    }

    /// A fresh copy of the Debian amd64 root.
    fn root(&self, name: &str) -> PathBuf {
        let root = self.dir.join(name);
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::create_dir_all(root.join("var/lib/dkms")).expect("mkdir");
        std::fs::write(root.join("etc/os-release"), "ID=debian\n").expect("os-release");
        let cached = refs().path("XDKMS_ROOT_AMD64");
        for part in ["lib", "usr", "boot"] {
            run_ok(Command::new("cp").arg("-al").arg(cached.join(part)).arg(root.join(part)));
        }
        root
    }

    /// `xdkms install` of `source` into `root` with the cache, `path_first` ahead on PATH.
    fn install_command(&self, root: &Path, source: &Path, path_first: &[&Path]) -> Command {
        let mut command = xdkms();
        command.arg("install").arg("--root").arg(root).args(["-k", &self.kernel]).arg("--cache").arg(&self.cache);
        command.arg(source);
        let mut path: Vec<String> = path_first.iter().map(|p| p.display().to_string()).collect();
        path.push(std::env::var("PATH").unwrap_or_default());
        command.env("PATH", path.join(":")).env_remove("XDKMS_CACHE");
        command
    }

    fn install(&self, root: &Path, path_first: &[&Path]) -> Output {
        run(&mut self.install_command(root, &self.source, path_first))
    }

    /// An install that must be a hit: make cannot run.
    fn install_from_cache(&self, root: &Path) -> Output {
        let out = self.install(root, &[&self.no_make]);
        assert!(out.status.success(), "not answered from the cache:\n{}", text(&out));
        assert!(text(&out).contains("Restored from the build cache"), "{}", text(&out));
        out
    }

    /// An install that must miss: it runs make (which fails here).
    fn assert_misses(&self, root: &Path, source: &Path, extra_path: &[&Path], why: &str) {
        let mut path: Vec<&Path> = vec![&self.no_make];
        path.extend_from_slice(extra_path);
        let out = run(&mut self.install_command(root, source, &path));
        assert!(!out.status.success() && text(&out).contains(BUILD_FAILED), "{why}: not a miss:\n{}", text(&out));
    }

    /// A copy of the module's source with a comment added to its C file.
    fn edited_source(&self) -> PathBuf {
        let edited = self.dir.join("edited/xdkms_test-1.0");
        std::fs::create_dir_all(edited.parent().expect("parent")).expect("mkdir");
        run_ok(Command::new("cp").arg("-a").arg(&self.source).arg(&edited));
        let c_file = edited.join("xdkms_test.c");
        let code = std::fs::read_to_string(&c_file).expect("source");
        std::fs::write(&c_file, format!("{code}\n/* edited */\n")).expect("edit");
        edited
    }

    fn entries(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for shard in std::fs::read_dir(self.cache.join("v1")).expect("cache").flatten() {
            if shard.file_name().len() == 2 {
                found.extend(std::fs::read_dir(shard.path()).expect("shard").flatten().map(|e| e.path()));
            }
        }
        found
    }

    fn built_module(&self, root: &Path) -> Vec<u8> {
        let dir = root.join("var/lib/dkms/xdkms_test/1.0").join(&self.kernel).join("x86_64/module/xdkms_test.ko");
        std::fs::read(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
    }
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `diff -r` of one tree in two roots, symlinks compared as links.
fn assert_same_tree(a: &Path, b: &Path, tree: &str) {
    let out = run(Command::new("diff").arg("-r").arg("--no-dereference").arg(a.join(tree)).arg(b.join(tree)));
    assert!(out.status.success(), "{tree} differs:\n{}", text(&out));
}

#[test]
fn a_hit_restores_the_build_byte_identical_without_running_make() {
    let setup = Setup::new("hit");
    let (first, second) = (setup.root("first"), setup.root("second"));
    let out = setup.install(&first, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(setup.entries().len(), 1);
    let restored = setup.install_from_cache(&second);
    // With a cache, the run tells each build's outcome and sums them up on stderr.
    let said = String::from_utf8_lossy(&restored.stderr);
    assert!(said.contains("restored from the build cache in"), "{said}");
    assert!(
        said.contains("1 build in") && said.contains(": 0 built, 1 from the build cache, 0 failed, 0 skipped"),
        "{said}"
    );
    assert_same_tree(&first, &second, "var/lib/dkms");
    assert_same_tree(&first, &second, &format!("lib/modules/{}/updates", setup.kernel));
    let status = |root: &Path| run_ok(xdkms().arg("status").arg("--root").arg(root)).stdout;
    assert_eq!(status(&first), status(&second));
    assert_eq!(setup.entries().len(), 1);
}

#[test]
fn a_changed_input_is_a_miss_and_the_same_inputs_a_hit() {
    let setup = Setup::new("inputs");
    let first = setup.root("first");
    assert!(setup.install(&first, &[]).status.success());

    // A source file.
    let edited = setup.edited_source();
    setup.assert_misses(&setup.root("source"), &edited, &[], "an edited source file");

    // A .config symbol (the file is replaced: the root's files are hard links to the test cache's).
    let root = setup.root("config");
    let config = root.join("usr/src").join(format!("linux-headers-{}", setup.kernel)).join(".config");
    let text_before = std::fs::read_to_string(&config).expect(".config");
    std::fs::remove_file(&config).expect("unlink");
    std::fs::write(&config, text_before + "CONFIG_XDKMS_TEST=y\n").expect("write");
    setup.assert_misses(&root, &setup.source, &[], "a new .config symbol");

    // The compiler's version: a gcc that says it is another release.
    let other_gcc = setup.dir.join("other-gcc");
    std::fs::create_dir_all(&other_gcc).expect("mkdir");
    for name in ["gcc", "gcc-12"] {
        let script = format!(
            "#!/bin/sh\ncase \"$1\" in --version) echo '{name} (Other) 12.9.9';; *) exec /usr/bin/{name} \"$@\";; esac\n"
        );
        write_script(&other_gcc.join(name), &script);
    }
    setup.assert_misses(&setup.root("compiler"), &setup.source, &[&other_gcc], "another compiler version");

    // Unchanged inputs in a new root still hit.
    setup.install_from_cache(&setup.root("again"));
}

#[test]
fn an_edited_source_rebuilds_its_module_only() {
    let setup = Setup::new("only");
    let other = crate::dkms::fixture("xdkms_multi-1.0");
    let install_both = |root: &Path, source: &Path| {
        let mut command = setup.install_command(root, source, &[]);
        command.arg(&other);
        let out = run(&mut command);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    install_both(&setup.root("first"), &setup.source);
    let edited = setup.edited_source();
    let said = install_both(&setup.root("second"), &edited);
    assert!(
        said.contains("xdkms_test/1.0 for") && said.contains(": 1 built, 1 from the build cache, 0 failed"),
        "{said}"
    );
    assert!(
        said.lines().any(|l| l.contains("xdkms_multi/1.0 for") && l.contains("restored from the build cache")),
        "{said}"
    );
}

#[test]
fn a_changed_signing_key_is_a_miss() {
    let setup = Setup::new("signer");
    let with_key = |name: &str, key_of: &str| {
        let root = setup.root(name);
        let dkms = root.join("var/lib/dkms");
        let key_dir = setup.dir.join(format!("key-{key_of}"));
        if !key_dir.exists() {
            std::fs::create_dir_all(&key_dir).expect("mkdir");
            crate::util::mok_pair(&key_dir.join("mok.key"), &key_dir.join("mok.pub"), &format!("/CN=key {key_of}"));
        }
        for file in ["mok.key", "mok.pub"] {
            std::fs::copy(key_dir.join(file), dkms.join(file)).expect("copy key");
        }
        root
    };
    let first = with_key("first", "a");
    let out = setup.install(&first, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let signed = setup.built_module(&first);
    let again = with_key("again", "a");
    setup.install_from_cache(&again);
    assert_eq!(setup.built_module(&again), signed, "the signed module comes back as it was");
    setup.assert_misses(&with_key("other", "b"), &setup.source, &[], "another signing key");
}

#[test]
fn a_damaged_entry_is_rebuilt_never_used() {
    let setup = Setup::new("damaged");
    let first = setup.root("first");
    assert!(setup.install(&first, &[]).status.success());
    let [entry] = setup.entries().try_into().expect("one entry");
    let module = entry.join("files/module/xdkms_test.ko");
    let mut bytes = std::fs::read(&module).expect("cached module");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&module, &bytes).expect("damage");
    setup.assert_misses(&setup.root("second"), &setup.source, &[], "a damaged entry");
    assert!(setup.entries().is_empty(), "the damaged entry was removed");
    let third = setup.root("third");
    assert!(setup.install(&third, &[]).status.success());
    assert_eq!(setup.built_module(&third), setup.built_module(&first));
    setup.install_from_cache(&setup.root("fourth"));
}

#[test]
fn two_runs_filling_one_key_at_once_leave_one_good_entry() {
    let setup = Setup::new("race");
    let roots = [setup.root("one"), setup.root("two")];
    let children: Vec<_> = roots
        .iter()
        .map(|root| {
            let mut command = setup.install_command(root, &setup.source, &[]);
            command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            command.spawn().expect("spawn")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(setup.entries().len(), 1);
    let third = setup.root("three");
    setup.install_from_cache(&third);
    assert_eq!(setup.built_module(&third), setup.built_module(&roots[0]));
    let leftovers: Vec<_> = std::fs::read_dir(setup.cache.join("v1/tmp")).expect("tmp").flatten().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_run_killed_while_filling_the_cache_leaves_no_entry_or_a_good_one() {
    let setup = Setup::new("killed");
    let reference = setup.root("reference");
    let started = std::time::Instant::now();
    let out = run(setup.install_command(&reference, &setup.source, &[]).arg("--no-cache"));
    assert!(out.status.success(), "{}", text(&out));
    let full_run = started.elapsed();
    let expected = setup.built_module(&reference);
    let killed = crate::util::kill_rounds(
        6,
        13,
        full_run,
        // Late in the run, where the result is filed.
        |_, r| 0.6 + 0.5 * r,
        |round| {
            let _ = std::fs::remove_dir_all(&setup.cache);
            let mut command = setup.install_command(&setup.root(&format!("killed-{round}")), &setup.source, &[]);
            command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            command
        },
        |round, delay| {
            let check = setup.root(&format!("check-{round}"));
            let out = setup.install(&check, &[&setup.no_make]);
            if out.status.success() {
                assert_eq!(setup.built_module(&check), expected, "round {round} (killed after {delay:?})");
            } else {
                assert!(text(&out).contains(BUILD_FAILED), "round {round}: {}", text(&out));
            }
        },
    );
    assert!(killed > 0, "no run was killed");
}
