//! kmod's command line and releases, against Debian's kmod 30 and kmod 34.2 built by the setup
//! script: getopt's refusals and abbreviations, `-o` and `-m`, the root's own kmod detected,
//! the cycle report's starting module, and modinfo without /proc.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::{
    copy_all, differing_files, make_fixture, refs, run, run_ok, xdkms, TempDir, KMOD30_FILES, KMOD34_FILES,
};

/// A kmod 34 tool, run with argv[0] `depmod` (or `modinfo`) as from PATH, so glibc's messages
/// name it as they name Debian's.
fn kmod34(tool: &str) -> Command {
    let mut command = Command::new(refs().path("XDKMS_KMOD34").join("sbin").join(tool));
    command.arg0(tool);
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit status, stdout and stderr, with the paths of one run's root replaced.
fn outcome(output: &Output, root: &Path) -> (Option<i32>, String, String) {
    let root = root.display().to_string();
    (output.status.code(), text(&output.stdout).replace(&root, "ROOT"), text(&output.stderr).replace(&root, "ROOT"))
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn getopt_refusals_and_abbreviations_read_as_kmods() {
    let work = TempDir::new("kmod-getopt");
    let version = "6.1.0-fixture";
    make_fixture("tree", &work.join("kmod"), version);
    copy_all(&work.join("kmod"), &work.join("ours"));
    // Refused by getopt, before anything is read: the message and exit status of each release.
    for (release, lines) in [
        (
            "30",
            &["--x", "--x=5", "-Z", "--ver=3", "--verb=3", "-b", "--basedir", "-ab", "-o /out", "--outdir=/out"][..],
        ),
        ("34", &["--x", "-u", "-q", "-r", "--map", "--moduledir", "-m", "-ao", "--unresolved-error"][..]),
    ] {
        for line in lines {
            let reference = match release {
                "30" => run(Command::new("depmod").args(words(line))),
                _ => run(kmod34("depmod").args(words(line))),
            };
            let ours = run(xdkms().args(["depmod", "--kmod-version", release]).args(words(line)));
            assert_eq!(reference.status.code(), Some(1), "kmod {release} {line}");
            assert_eq!(outcome(&ours, work.path()), outcome(&reference, work.path()), "kmod {release}: depmod {line}");
        }
    }
    // Accepted abbreviations and attached arguments mean what they mean to kmod.
    for line in ["--sh --bas=ROOT VERSION", "-anbROOT VERSION", "--verb --show --basedir ROOT VERSION"] {
        let line_for = |root: &Path| line.replace("ROOT", &root.display().to_string()).replace("VERSION", version);
        let reference = run(Command::new("depmod").args(words(&line_for(&work.join("kmod")))));
        let ours = run(xdkms().arg("depmod").args(words(&line_for(&work.join("ours")))));
        assert_eq!(reference.status.code(), Some(0), "{line}: {}", text(&reference.stderr));
        assert_eq!(outcome(&ours, &work.join("ours")), outcome(&reference, &work.join("kmod")), "depmod {line}");
    }
    let help = run_ok(xdkms().args(["depmod", "--kmod-version", "34", "--help"]));
    let reference = run_ok(kmod34("depmod").arg("--help"));
    assert!(text(&help.stdout).starts_with(&text(&reference.stdout)), "depmod --help is kmod 34's, then xdkms's own");
}

/// A kernel version with no module directory: kmod's two lines, with strerror's text in both.
#[test]
fn a_missing_module_directory_is_reported_as_kmod_does() {
    let work = TempDir::new("kmod-no-module-dir");
    std::fs::create_dir_all(work.join("lib/modules")).expect("mkdir");
    let reference = run(Command::new("depmod").arg("-b").arg(work.path()).arg("6.1.0-absent"));
    let ours = run(xdkms().arg("depmod").arg("-b").arg(work.path()).arg("6.1.0-absent"));
    assert_eq!(reference.status.code(), Some(1));
    assert_eq!(outcome(&ours, work.path()), outcome(&reference, work.path()));
}

#[test]
fn outdir_and_moduledir_as_kmod_34_writes_them() {
    let work = TempDir::new("kmod-outdir");
    let version = "6.1.0-fixture";
    let pristine = work.join("pristine");
    make_fixture("tree", &pristine, version);
    let copy = |name: &str| {
        copy_all(&pristine, &work.join(name));
        work.join(name)
    };
    let written = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.retain(|n| n.starts_with("modules.") && n != "modules.order" && !n.starts_with("modules.builtin"));
        names.sort();
        names
    };
    let module_dir = |root: &Path, moduledir: &str| root.join(moduledir).join(version);

    // -o: everything below OUTDIR/lib/modules/VERSION (created), nothing in the base directory.
    let (kmod_root, ours_root) = (copy("kmod-o"), copy("ours-o"));
    run_ok(kmod34("depmod").arg("-b").arg(&kmod_root).arg("-o").arg(work.join("kmod-out")).arg(version));
    run_ok(
        xdkms()
            .args(["depmod", "--kmod-version", "34", "-b"])
            .arg(&ours_root)
            .arg("-o")
            .arg(work.join("ours-out"))
            .arg(version),
    );
    let (kmod_out, ours_out) =
        (module_dir(&work.join("kmod-out"), "lib/modules"), module_dir(&work.join("ours-out"), "lib/modules"));
    assert!(kmod_out.join("modules.weakdep").is_file(), "kmod 34 wrote its files below OUTDIR");
    assert_eq!(differing_files(&kmod_out, &ours_out, &KMOD34_FILES), Vec::<String>::new());
    assert_eq!(written(&module_dir(&ours_root, "lib/modules")), written(&module_dir(&kmod_root, "lib/modules")));

    // -m: a module directory of the distribution's choosing, with and without -o.
    for with_outdir in [false, true] {
        let name = if with_outdir { "m-and-o" } else { "m" };
        let (kmod_root, ours_root) = (copy(&format!("kmod-{name}")), copy(&format!("ours-{name}")));
        for root in [&kmod_root, &ours_root] {
            std::fs::create_dir_all(root.join("usr/lib")).expect("mkdir");
            std::fs::rename(root.join("lib/modules"), root.join("usr/lib/modules")).expect("move");
            std::fs::create_dir_all(root.join("lib/modules")).expect("an empty /lib/modules");
        }
        let outdir = |side: &str| with_outdir.then(|| work.join(format!("{side}-{name}-out")));
        let mut kmod = kmod34("depmod");
        kmod.arg("-b").arg(&kmod_root).args(["-m", "/usr/lib/modules"]);
        let mut ours = xdkms();
        ours.args(["depmod", "--kmod-version", "34", "-b"]).arg(&ours_root).args(["--moduledir=usr/lib/modules"]);
        if let (Some(k), Some(o)) = (outdir("kmod"), outdir("ours")) {
            kmod.arg("-o").arg(k);
            ours.arg("-o").arg(o);
        }
        run_ok(kmod.arg(version));
        run_ok(ours.arg(version));
        let (kmod_dir, ours_dir) = match (outdir("kmod"), outdir("ours")) {
            (Some(k), Some(o)) => (module_dir(&k, "usr/lib/modules"), module_dir(&o, "usr/lib/modules")),
            _ => (module_dir(&kmod_root, "usr/lib/modules"), module_dir(&ours_root, "usr/lib/modules")),
        };
        assert!(kmod_dir.join("modules.dep").is_file(), "{name}: kmod 34 wrote into {}", kmod_dir.display());
        assert_eq!(differing_files(&kmod_dir, &ours_dir, &KMOD34_FILES), Vec::<String>::new(), "{name}");
    }

    // kmod 31 to 33 have -o (kmod 30's files); what they write equals kmod 30's in-place run.
    let (kmod_root, ours_root) = (copy("kmod-31"), copy("ours-31"));
    run_ok(Command::new("depmod").arg("-b").arg(&kmod_root).arg(version));
    run_ok(
        xdkms()
            .args(["depmod", "--kmod-version", "31", "-b"])
            .arg(&ours_root)
            .arg("-o")
            .arg(work.join("out-31"))
            .arg(version),
    );
    assert_eq!(
        differing_files(
            &module_dir(&kmod_root, "lib/modules"),
            &module_dir(&work.join("out-31"), "lib/modules"),
            &KMOD30_FILES[..10]
        ),
        Vec::<String>::new()
    );
}

/// Puts `kmod` into `root` as Debian lays it out: /usr/bin/kmod, and /usr/sbin/depmod an absolute
/// symlink to it (resolved inside the root, never on the build host).
fn install_kmod(root: &Path, kmod: &Path) {
    std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
    std::fs::create_dir_all(root.join("usr/sbin")).expect("mkdir");
    std::fs::copy(kmod, root.join("usr/bin/kmod")).expect("copy kmod");
    std::os::unix::fs::symlink("/usr/bin/kmod", root.join("usr/sbin/depmod")).expect("symlink");
}

/// A fixture tree with one of its modules gzip-compressed (which Debian's kmod cannot read).
fn tree_with_a_gzip_module(root: &Path, version: &str) -> PathBuf {
    let dir = make_fixture("tree", root, version);
    let module = crate::util::entries_named(&dir, |n| n.ends_with(".ko")).into_iter().min().expect("a module");
    run_ok(Command::new("gzip").arg("-n").arg(&module));
    dir
}

#[test]
fn the_roots_own_kmod_decides_release_and_compressions() {
    let work = TempDir::new("kmod-detect");
    let version = "6.1.0-fixture";
    let pristine = work.join("pristine");
    let dir = tree_with_a_gzip_module(&pristine, version);
    let gzipped = crate::util::entries_named(&dir, |n| n.ends_with(".ko.gz"));
    let gzipped = gzipped[0].strip_prefix(&dir).expect("relative").display().to_string();
    let module_dir = |root: &Path| root.join("lib/modules").join(version);
    let dep_has_gz = |root: &Path| {
        std::fs::read_to_string(module_dir(root).join("modules.dep")).expect("modules.dep").contains(&gzipped)
    };

    // Debian 12's kmod in the root: kmod 30's files, and the .ko.gz is not a module to it.
    let debian = work.join("debian");
    copy_all(&pristine, &debian);
    install_kmod(&debian, Path::new("/usr/bin/kmod"));
    let reference = work.join("debian-reference");
    copy_all(&debian, &reference);
    run_ok(Command::new("depmod").arg("-b").arg(&reference).arg(version));
    run_ok(xdkms().arg("depmod").arg("-b").arg(&debian).arg(version));
    assert!(!dep_has_gz(&reference), "Debian's kmod skips {gzipped}");
    assert_eq!(differing_files(&module_dir(&reference), &module_dir(&debian), &KMOD30_FILES), Vec::<String>::new());
    let shown = run_ok(xdkms().arg("depmod").arg("-b").arg(&debian).arg("-V"));
    assert!(text(&shown.stdout).contains("kmod 30: +ZSTD +XZ -ZLIB"), "{}", text(&shown.stdout));

    // kmod 34 in the root: its layout, modules.weakdep, and the .ko.gz indexed.
    let newer = work.join("kmod34");
    copy_all(&pristine, &newer);
    install_kmod(&newer, &refs().path("XDKMS_KMOD34").join("bin/kmod"));
    let reference = work.join("kmod34-reference");
    copy_all(&newer, &reference);
    run_ok(kmod34("depmod").arg("-b").arg(&reference).arg(version));
    run_ok(xdkms().arg("depmod").arg("-b").arg(&newer).arg(version));
    assert!(dep_has_gz(&reference), "kmod 34 reads {gzipped}");
    assert_eq!(differing_files(&module_dir(&reference), &module_dir(&newer), &KMOD34_FILES), Vec::<String>::new());

    // No kmod in the root: the default (kmod 30's layout, every compression) until told.
    let bare = work.join("bare");
    copy_all(&pristine, &bare);
    run_ok(xdkms().arg("depmod").arg("-b").arg(&bare).arg(version));
    assert!(dep_has_gz(&bare) && !module_dir(&bare).join("modules.weakdep").exists());
    run_ok(xdkms().args(["depmod", "--kmod-features", "+ZSTD +XZ -ZLIB", "-b"]).arg(&bare).arg(version));
    assert_eq!(
        differing_files(&module_dir(&work.join("debian-reference")), &module_dir(&bare), &KMOD30_FILES),
        Vec::<String>::new()
    );
    let refused = run(xdkms().args(["depmod", "--kmod-features", "ZLIB", "-b"]).arg(&bare).arg(version));
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("+NAME or -NAME"), "{}", text(&refused.stderr));
}

/// The cycle lines of a depmod run's stderr.
fn cycle_lines(output: &Output) -> Vec<String> {
    let lines = text(&output.stderr);
    lines
        .lines()
        .filter(|l| l.contains("Cycle detected") || l.contains("dependency cycles"))
        .map(String::from)
        .collect()
}

/// Builds a module tree from `make-modules.sh graph` specs.
fn graph(root: &Path, version: &str, specs: &[String]) {
    run_ok(
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-modules.sh"))
            .arg("graph")
            .arg(root)
            .arg(version)
            .args(specs),
    );
}

/// A kmod depmod run bounded in time and memory: on some cyclic graphs kmod's cycle report
/// walks forever (allocating as it goes) or overflows its stack and aborts.
fn bounded(program: &Path, root: &Path, version: &str) -> Output {
    run(Command::new("timeout").args(["20", "prlimit", "--as=536870912"]).arg(program).arg("-b").arg(root).arg(version))
}

/// True when kmod finished its report normally (exit 1 after its count line).
fn kmod_reported(output: &Output) -> bool {
    output.status.code() == Some(1) && text(&output.stderr).contains("modules in dependency cycles!")
}

#[test]
fn cycles_are_reported_from_the_module_kmod_starts_from() {
    let work = TempDir::new("kmod-cycles");
    let version = "4.4.4";
    let kmod34_depmod = refs().path("XDKMS_KMOD34").join("sbin/depmod");
    let compare = |root: &Path, what: &str| -> Option<Vec<String>> {
        let kmod30 = bounded(Path::new("/usr/sbin/depmod"), root, version);
        let ours = run(xdkms().arg("depmod").arg("-b").arg(root).arg(version));
        if kmod30.status.code() == Some(0) {
            assert_eq!(ours.status.code(), Some(0), "{what}: no cycle, but {}", text(&ours.stderr));
            return None;
        }
        assert_eq!(ours.status.code(), Some(1), "{what}: {}", text(&ours.stderr));
        if !kmod_reported(&kmod30) {
            return None;
        }
        let kmod34 = bounded(&kmod34_depmod, root, version);
        assert_eq!(cycle_lines(&ours), cycle_lines(&kmod30), "{what}: kmod 30");
        assert_eq!(cycle_lines(&ours), cycle_lines(&kmod34), "{what}: kmod 34");
        Some(cycle_lines(&ours))
    };
    // kmod's own detect-loop case, in three readdir orders: one report for all.
    let mut reports = Vec::new();
    for layout in ["flat", "reversed", "split"] {
        let root = work.join(layout);
        run_ok(
            Command::new("bash")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-modules.sh"))
                .arg("loops")
                .arg(&root)
                .args([version, layout]),
        );
        reports.push(compare(&root, layout).expect("kmod reports kmod's own test case"));
    }
    assert_eq!(reports[0].len(), 5, "{:?}", reports[0]);
    assert!(reports.iter().all(|r| r == &reports[0]), "{reports:?}");

    // Generated graphs, seeded so a failure replays. Where kmod does not finish its report,
    // xdkms's must still hold only real cycles: each line a path of dependencies back to its start.
    let mut compared = 0;
    for seed in 0..16u64 {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut next = |bound: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % bound
        };
        let count = 4 + next(8);
        let edges: Vec<Vec<u64>> = (0..count)
            .map(|m| {
                let mut deps: Vec<u64> = (0..1 + next(2)).map(|_| next(count)).filter(|&d| d != m).collect();
                deps.dedup();
                deps
            })
            .collect();
        let specs: Vec<String> = edges
            .iter()
            .enumerate()
            .map(|(m, deps)| {
                format!("m{m:02}:{}", deps.iter().map(|d| format!("m{d:02}")).collect::<Vec<_>>().join(","))
            })
            .collect();
        let root = work.join(format!("graph-{seed}"));
        graph(&root, version, &specs);
        if compare(&root, &format!("seed {seed}: {specs:?}")).is_some() {
            compared += 1;
            continue;
        }
        let ours = run(xdkms().arg("depmod").arg("-b").arg(&root).arg(version));
        for line in cycle_lines(&ours).iter().filter_map(|l| l.split("Cycle detected: ").nth(1)) {
            let path: Vec<usize> = line.split(" -> ").map(|m| m[1..].parse().expect("mNN")).collect();
            assert_eq!(path.first(), path.last(), "seed {seed}: {line}");
            assert!(path.windows(2).all(|w| edges[w[0]].contains(&(w[1] as u64))), "seed {seed}: {line} is no cycle");
        }
    }
    assert!(compared >= 6, "only {compared} of 16 graphs had a report from kmod to compare with");

    // kmod aborts on an assertion here (its stack overflows): xdkms reports each strongly
    // connected group once and exits 1, as for any cycle.
    let root = work.join("interlocked");
    graph(&root, version, &["m00:m03,m01", "m01:m03", "m02:m01", "m03:m00,m01,m02"].map(String::from));
    let kmod30 = bounded(Path::new("/usr/sbin/depmod"), &root, version);
    assert!(text(&kmod30.stderr).contains("Assertion"), "kmod 30 no longer aborts here: {}", text(&kmod30.stderr));
    let ours = run(xdkms().arg("depmod").arg("-b").arg(&root).arg(version));
    assert_eq!(ours.status.code(), Some(1));
    assert_eq!(cycle_lines(&ours).len(), 2, "{:?}", cycle_lines(&ours));
    assert!(cycle_lines(&ours)[1].ends_with("Found 4 modules in dependency cycles!"));
}

#[test]
fn modinfo_needs_no_proc() {
    let r = refs();
    let version = r.get("XDKMS_KVER_AMD64");
    let module = crate::util::entries_named(&r.path("XDKMS_ROOT_AMD64").join("lib/modules").join(&version), |n| {
        n.starts_with("virtio_blk.ko")
    })
    .pop()
    .expect("virtio_blk");
    let work = TempDir::new("modinfo-no-proc");
    make_fixture("demo", work.path(), "6.1.0-demo");
    run_ok(Command::new("depmod").arg("-b").arg(work.path()).arg("6.1.0-demo"));
    let by_file = run_ok(Command::new("modinfo").arg(&module));
    let by_name = run_ok(Command::new("modinfo").arg("-b").arg(work.path()).args(["-k", "6.1.0-demo", "demo_core"]));
    // In a mount namespace whose /proc is an empty tmpfs, as in an image chroot.
    let script = r#"mount -t tmpfs none /proc && test ! -e /proc/sys && "$@""#;
    let without_proc = |args: &[&std::ffi::OsStr]| {
        run(Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(crate::util::xdkms_bin())
            .arg("modinfo")
            .args(args))
    };
    let ours = without_proc(&[module.as_os_str()]);
    assert_eq!((ours.status.code(), text(&ours.stdout)), (Some(0), text(&by_file.stdout)), "{}", text(&ours.stderr));
    // The only kernel of the base directory, found without -k.
    let ours = without_proc(&["-b".as_ref(), work.path().as_os_str(), "demo_core".as_ref()]);
    assert_eq!((ours.status.code(), text(&ours.stdout)), (Some(0), text(&by_name.stdout)), "{}", text(&ours.stderr));
}
