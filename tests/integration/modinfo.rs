//! `xdkms modinfo` against Debian's kmod 30 modinfo.

use std::path::Path;
use std::process::Command;

use crate::util::{copy_module_dir, make_fixture, refs, run, run_ok, xdkms, xdkms_bin, TempDir};

/// Runs `tool modinfo`-style commands for every query in one shell loop.
fn modinfo_all(program: &Path, prefix_args: &str, root: &Path, version: &str, queries: &Path) -> String {
    let script = format!(
        "while IFS= read -r q; do echo \"== $q\"; '{}' {prefix_args} -b '{}' -k '{version}' \"$q\" 2>&1; echo \"rc=$?\"; done < '{}'",
        program.display(),
        root.display(),
        queries.display()
    );
    let out = run(Command::new("sh").arg("-c").arg(script));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A query string that a device with this alias pattern would send (wildcards filled in).
fn sample_modalias(pattern: &str) -> Option<String> {
    (!pattern.contains('[')).then(|| pattern.replace(['*', '?'], "0"))
}

#[test]
fn every_module_builtin_and_sampled_alias_of_the_amd64_tree() {
    let r = refs();
    let version = r.get("XDKMS_KVER_AMD64");
    let work = TempDir::new("modinfo");
    let dir = copy_module_dir(&r.path("XDKMS_ROOT_AMD64"), &version, work.path());
    run_ok(xdkms().arg("depmod").arg("-b").arg(work.path()).arg(&version));
    let mut queries: Vec<String> = Vec::new();
    let dep = std::fs::read_to_string(dir.join("modules.dep")).expect("modules.dep");
    for line in dep.lines() {
        let path = line.split(':').next().expect("path");
        queries.push(path.rsplit('/').next().expect("name").split('.').next().expect("stem").to_string());
    }
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).expect("modules.builtin");
    for line in builtin.lines() {
        queries.push(line.rsplit('/').next().expect("name").trim_end_matches(".ko").to_string());
    }
    let aliases = std::fs::read_to_string(dir.join("modules.alias")).expect("modules.alias");
    queries.extend(aliases.lines().skip(1).step_by(25).filter_map(|l| l.split(' ').nth(1)).filter_map(sample_modalias));
    queries.extend(["symbol:jbd2_journal_start", "fs-ext4", "char-major-10-229", "no-such-module"].map(String::from));
    let list = work.join("queries");
    std::fs::write(&list, queries.join("\n") + "\n").expect("write");

    // Debian's modules are signed: kmod's signature fields (Debian's kmod is built with libcrypto)
    // are compared too.
    let kmod = modinfo_all(Path::new("/usr/sbin/modinfo"), "", work.path(), &version, &list);
    let ours = modinfo_all(&xdkms_bin(), "modinfo", work.path(), &version, &list);
    assert!(kmod.matches("\nfilename:").count() > 4000, "kmod printed too little");
    assert!(kmod.matches("\nsig_hashalgo:").count() > 4000, "kmod printed no signatures");
    if kmod != ours {
        let first = kmod.lines().zip(ours.lines()).enumerate().find(|(_, (a, b))| a != b);
        panic!("modinfo output differs; first difference (line, kmod, xdkms): {first:?}");
    }
}

#[test]
fn fields_separators_and_cross_arch_module_files() {
    let work = TempDir::new("modinfo-fields");
    let version = "6.1.0-fixture";
    let dir = make_fixture("tree", work.path(), version);
    run_ok(Command::new("depmod").arg("-b").arg(work.path()).arg(version));
    let cases: Vec<Vec<String>> = vec![
        vec!["core_a".into()],
        vec!["-F".into(), "alias".into(), "core_a".into()],
        vec!["-0".into(), "core_a".into()],
        vec!["-n".into(), "core-b".into()],
        vec!["-m".into(), "mod-e".into()],
        vec!["--field=softdep".into(), "core_a".into()],
        vec![dir.join("extra/mod_c.ko").display().to_string()],
        vec![dir.join("kernel/drivers/core-b.ko").display().to_string()],
        vec!["-F".into(), "name".into(), "ext4".into()],
        vec!["fs-ext4".into()],
        vec!["pci:v00001234d00005678sv0sd0bc0sc0i0".into()],
        vec!["usb:v1D6Bp0001".into()],
        vec!["missing_module".into()],
        vec![dir.join("kernel/garbage.ko").display().to_string()],
    ];
    for args in cases {
        let kmod = run(Command::new("modinfo").arg("-b").arg(work.path()).args(["-k", version]).args(&args));
        let ours = run(xdkms().arg("modinfo").arg("-b").arg(work.path()).args(["-k", version]).args(&args));
        assert_eq!(String::from_utf8_lossy(&ours.stdout), String::from_utf8_lossy(&kmod.stdout), "{args:?}");
        assert_eq!(ours.status.code(), kmod.status.code(), "{args:?}");
    }
}

#[test]
fn parameters_like_kmod() {
    let r = refs();
    let root = r.path("XDKMS_ROOT_AMD64");
    let version = r.get("XDKMS_KVER_AMD64");
    let dir = root.join("lib/modules").join(&version);
    // Modules with many parameters, given by path (no indexes needed).
    for module in [
        "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko",
        "kernel/drivers/block/loop.ko",
        "kernel/sound/pci/hda/snd-hda-intel.ko",
    ] {
        let path = dir.join(module);
        for flags in [&[][..], &["-p"][..], &["-F", "parmtype"][..]] {
            let kmod = run_ok(Command::new("modinfo").args(flags).arg(&path));
            let ours = run_ok(xdkms().arg("modinfo").args(flags).arg(&path));
            assert_eq!(
                String::from_utf8_lossy(&ours.stdout),
                String::from_utf8_lossy(&kmod.stdout),
                "{module} {flags:?}"
            );
        }
    }
}

/// The signature appended to Debian's signed modules, stored plain, xz- and zstd-compressed (it
/// sits inside the compressed stream): every field alone with -F, and -0, as kmod 30 prints them.
#[test]
fn signature_fields_of_plain_and_compressed_modules() {
    let r = refs();
    let version = r.get("XDKMS_KVER_AMD64");
    let module = "kernel/drivers/block/virtio_blk.ko";
    let trees = [("XDKMS_ROOT_AMD64", ""), ("XDKMS_ROOT_AMD64_XZ", ".xz"), ("XDKMS_ROOT_AMD64_ZST", ".zst")];
    for (tree, ext) in trees {
        let path = r.path(tree).join("lib/modules").join(&version).join(format!("{module}{ext}"));
        let mut cases: Vec<Vec<&str>> = vec![vec![], vec!["-0"]];
        for field in ["sig_id", "signer", "sig_key", "sig_hashalgo", "signature"] {
            cases.push(vec!["-F", field]);
        }
        for flags in cases {
            let kmod = run_ok(Command::new("modinfo").args(&flags).arg(&path));
            let ours = run_ok(xdkms().arg("modinfo").args(&flags).arg(&path));
            assert!(!kmod.stdout.is_empty(), "{tree} {flags:?}: kmod printed nothing");
            assert_eq!(
                String::from_utf8_lossy(&ours.stdout),
                String::from_utf8_lossy(&kmod.stdout),
                "{tree} {flags:?}"
            );
        }
    }
}

/// Modules signed here by the Debian headers' sign-file: RSA and ECDSA keys, every hash kmod 30
/// names, certificates whose subject has no CN or several RDNs, and a module signed twice
/// (sign-file appends; the last signature is the one read). Compared with kmod's modinfo.
#[test]
fn signatures_made_by_sign_file() {
    let r = refs();
    let version = r.get("XDKMS_KVER_AMD64");
    let root = r.path("XDKMS_ROOT_AMD64");
    let sign_file = root.join("usr/lib/linux-kbuild-6.1/scripts/sign-file");
    let module = root.join("lib/modules").join(&version).join("kernel/drivers/block/loop.ko");
    let work = TempDir::new("modinfo-signed");
    let keys: [(&str, &[&str], &str); 3] = [
        ("rsa", &["-newkey", "rsa:2048"], "/CN=xdkms test key/O=xdkms"),
        ("rsa4096", &["-newkey", "rsa:4096"], "/O=no common name/OU=unit"),
        ("ec", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], "/C=DE/CN=elliptic/CN=second"),
    ];
    for (name, newkey, subject) in keys {
        let (key, cert) = (work.join(format!("{name}.pem")), work.join(format!("{name}.der")));
        run_ok(
            Command::new("openssl")
                .args(["req", "-new", "-x509", "-nodes", "-days", "36500", "-subj", subject])
                .args(newkey)
                .arg("-keyout")
                .arg(&key)
                .args(["-outform", "DER", "-out"])
                .arg(&cert),
        );
        for hash in ["sha1", "sha224", "sha256", "sha384", "sha512", "sha3-256"] {
            // OpenSSL 3.0's CMS signs SHA-3 with RSA only.
            if hash.starts_with("sha3-") && name == "ec" {
                continue;
            }
            let signed = work.join(format!("{name}-{hash}.ko"));
            std::fs::copy(&module, &signed).expect("copy");
            run_ok(Command::new(&sign_file).arg(hash).arg(&key).arg(&cert).arg(&signed));
            if hash == "sha512" {
                // Signed once more: kmod reads the outermost signature.
                run_ok(Command::new(&sign_file).arg("sha256").arg(&key).arg(&cert).arg(&signed));
            }
            let kmod = run_ok(Command::new("modinfo").arg(&signed));
            let ours = run_ok(xdkms().arg("modinfo").arg(&signed));
            let text = String::from_utf8_lossy(&kmod.stdout);
            // kmod 30 shows no signature fields for a digest its table lacks (SHA-3).
            assert_eq!(text.contains("sig_id:         PKCS#7"), !hash.starts_with("sha3-"), "{name} {hash}: {text}");
            assert_eq!(String::from_utf8_lossy(&ours.stdout), text, "{name} {hash}");
        }
    }
}
