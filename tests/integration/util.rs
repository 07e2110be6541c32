//! Shared test helpers: the cached real artefacts, temp dirs, and running commands.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The artefacts tests/setup.sh cached (kernels, sysroots, busybox). Tests that need them fail
/// with instructions when they are missing: they never pass by skipping.
pub struct Refs {
    vars: HashMap<String, String>,
}

impl Refs {
    pub fn get(&self, key: &str) -> String {
        match self.vars.get(key) {
            Some(v) => v.clone(),
            None => panic!("{key} is not in the test cache's env.sh: re-run tests/setup.sh"),
        }
    }

    pub fn path(&self, key: &str) -> PathBuf {
        PathBuf::from(self.get(key))
    }
}

pub fn refs() -> &'static Refs {
    static REFS: OnceLock<Refs> = OnceLock::new();
    REFS.get_or_init(|| {
        let cache = std::env::var("XDKMS_TEST_CACHE").unwrap_or_else(|_| "/var/cache/xdkms-test".into());
        let env = Path::new(&cache).join("env.sh");
        let text = std::fs::read_to_string(&env)
            .unwrap_or_else(|e| panic!("{}: {e}. Run `bash tests/setup.sh` first.", env.display()));
        let vars = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .filter(|(k, _)| !k.starts_with('#'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('\'').to_string()))
            .collect();
        Refs { vars }
    })
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("xdkms-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn xdkms_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xdkms"))
}

pub fn xdkms() -> Command {
    Command::new(xdkms_bin())
}

/// Runs `cmd`, failing the test with its stderr unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd` and returns its output whatever the status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"))
}

/// A shell command writing `tar ARGS` to its stdout, for a pipeline. Other tests hard-link the
/// shared sysroot (`cp -al`), which changes its files' ctime: GNU tar calls that "file changed as
/// we read it" and exits 1 though no byte changed, so exit 1 (and only it) counts as success.
pub fn tar_command(args: &str) -> String {
    format!("{{ tar --warning=no-file-changed {args}; status=$?; [ $status -le 1 ]; }}")
}

/// A signing key pair as dkms's generate_mok makes it: an RSA-2048 key (PEM) at `key` and its
/// self-signed certificate (DER) at `cert`, with `subject`.
pub fn mok_pair(key: &Path, cert: &Path, subject: &str) {
    run_ok(
        Command::new("openssl")
            .args(["req", "-new", "-x509", "-nodes", "-days", "36500", "-subj", subject])
            .args(["-newkey", "rsa:2048", "-keyout"])
            .arg(key)
            .args(["-outform", "DER", "-out"])
            .arg(cert),
    );
}

/// Copies a module directory `ROOT/lib/modules/VERSION` to `dest/lib/modules/VERSION`. Module
/// files are hard-linked when possible (depmod only replaces its own files, by rename), so a
/// 400 MiB tree costs nothing; `build`/`source` links are left out.
pub fn copy_module_dir(root: &Path, version: &str, dest: &Path) -> PathBuf {
    let from = root.join("lib/modules").join(version);
    let to_parent = dest.join("lib/modules");
    std::fs::create_dir_all(&to_parent).expect("mkdir");
    let to = to_parent.join(version);
    let linked = Command::new("cp").arg("-al").arg(&from).arg(&to).status().is_ok_and(|s| s.success());
    if !linked {
        let _ = std::fs::remove_dir_all(&to);
        run_ok(Command::new("cp").arg("-a").arg(&from).arg(&to));
    }
    for link in ["build", "source"] {
        let _ = std::fs::remove_file(to.join(link));
    }
    to
}

/// Runs the fixture generator (tests/fixtures/make-modules.sh).
pub fn make_fixture(kind: &str, root: &Path, version: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-modules.sh");
    run_ok(Command::new("bash").arg(script).arg(kind).arg(root).arg(version));
    root.join("lib/modules").join(version)
}

/// Copies a whole directory tree (symlinks kept).
pub fn copy_all(from: &Path, to: &Path) {
    run_ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// The names of the files that differ (or exist on one side only) among `names` in two dirs.
pub fn differing_files(a: &Path, b: &Path, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|name| std::fs::read(a.join(name)).ok() != std::fs::read(b.join(name)).ok())
        .map(|name| name.to_string())
        .collect()
}

/// What kmod 30 writes.
pub const KMOD30_FILES: [&str; 11] = [
    "modules.dep",
    "modules.dep.bin",
    "modules.alias",
    "modules.alias.bin",
    "modules.softdep",
    "modules.symbols",
    "modules.symbols.bin",
    "modules.builtin.bin",
    "modules.builtin.alias.bin",
    "modules.devname",
    // Never written by depmod: checked so that a tool that touched it would be caught.
    "modules.order",
];

/// What kmod 33 and later write: kmod 30's files and modules.weakdep.
pub const KMOD34_FILES: [&str; 12] = [
    "modules.dep",
    "modules.dep.bin",
    "modules.alias",
    "modules.alias.bin",
    "modules.softdep",
    "modules.weakdep",
    "modules.symbols",
    "modules.symbols.bin",
    "modules.builtin.bin",
    "modules.builtin.alias.bin",
    "modules.devname",
    // Never written by depmod: checked so that a tool that touched it would be caught.
    "modules.order",
];

/// Every entry below `dir` whose name `wanted` accepts (directories so named are not entered).
pub fn entries_named(dir: &Path, wanted: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if wanted(&entry.file_name().to_string_lossy()) {
                found.push(path);
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            }
        }
    }
    found
}

/// Every `*.xdkms-tmp` file or link below `dir` (what a killed write leaves beside its target).
pub fn temporary_files(dir: &Path) -> Vec<PathBuf> {
    entries_named(dir, |name| name.ends_with(".xdkms-tmp"))
}

/// What a run may have left in `dirs` (not below them): entries named like xdkms's temporary
/// files and scratch roots, or like any temporary file; `tmp` itself is a test's TMPDIR.
pub fn leftovers(dirs: &[&Path]) -> Vec<String> {
    dirs.iter()
        .flat_map(|dir| std::fs::read_dir(dir).expect("read_dir").flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| (n.contains("xdkms") || n.contains("tmp")) && n != "tmp")
        .collect()
}

/// The fastest of `runs` timed calls of `run`: what kill points are fractions of (other tests
/// running at the same time make single timings vary).
pub fn fastest(runs: usize, mut run: impl FnMut()) -> std::time::Duration {
    (0..runs)
        .map(|_| {
            let started = std::time::Instant::now();
            run();
            started.elapsed()
        })
        .min()
        .expect("at least one run")
}

/// Kills `rounds` runs at points spread over an uninterrupted run of `full_run`: each run is the
/// command `start(round)` gives (after restoring its input), killed after `fraction(round, r)`
/// of `full_run`, where `r` in [0, 1) comes from a fixed-seed generator (a failure replays),
/// then judged by `check(round, delay)`. A run that finishes before its kill means the machine
/// got less busy: the estimate shrinks by a fifth, aiming earlier. How many runs were killed.
pub fn kill_rounds(
    rounds: usize,
    mut seed: u64,
    mut full_run: std::time::Duration,
    mut fraction: impl FnMut(usize, f64) -> f64,
    mut start: impl FnMut(usize) -> Command,
    mut check: impl FnMut(usize, std::time::Duration),
) -> usize {
    let mut killed = 0;
    for round in 0..rounds {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let random = (seed >> 33) as f64 / (1u64 << 31) as f64;
        let delay = full_run.mul_f64(fraction(round, random));
        let mut child = start(round).spawn().expect("spawn");
        std::thread::sleep(delay);
        let _ = child.kill();
        if child.wait().expect("wait").success() {
            full_run = full_run.mul_f64(0.8);
        } else {
            killed += 1;
        }
        check(round, delay);
    }
    killed
}
