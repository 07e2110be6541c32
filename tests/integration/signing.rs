//! In-process module signing against the Debian headers' `scripts/sign-file` (OpenSSL 3): RSA
//! signatures byte for byte, ECDSA ones verified by `openssl cms -verify` and read back by kmod's
//! modinfo; encrypted keys; bad keys and certificates refused with the module untouched; the
//! key pair `generate_mok` makes, used by sign-file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{refs, run, run_ok, xdkms, xdkms_bin, TempDir};

/// The Debian headers' sign-file (kernel 6.1, OpenSSL 3).
fn sign_file() -> PathBuf {
    refs().path("XDKMS_ROOT_AMD64").join("usr/lib/linux-kbuild-6.1/scripts/sign-file")
}

/// loop.ko with Debian's signature cut off: the module sign-file would sign.
fn unsigned_module(dir: &Path) -> PathBuf {
    let r = refs();
    let signed = r
        .path("XDKMS_ROOT_AMD64")
        .join("lib/modules")
        .join(r.get("XDKMS_KVER_AMD64"))
        .join("kernel/drivers/block/loop.ko");
    let bytes = std::fs::read(&signed).expect("loop.ko");
    let magic = b"~Module signature appended~\n";
    assert!(bytes.ends_with(magic), "Debian's loop.ko is signed");
    let trailer = &bytes[bytes.len() - magic.len() - 12..bytes.len() - magic.len()];
    let sig_len = u32::from_be_bytes([trailer[8], trailer[9], trailer[10], trailer[11]]) as usize;
    let module = dir.join("unsigned.ko");
    std::fs::write(&module, &bytes[..bytes.len() - magic.len() - 12 - sig_len]).expect("write");
    module
}

/// `openssl req` making a self-signed key pair; `key_form` is applied by openssl's own tools
/// afterwards where a test needs another key encoding.
fn openssl_pair(dir: &Path, name: &str, newkey: &[&str], subject: &str, cert_form: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.{}", cert_form.to_lowercase()));
    run_ok(
        Command::new("openssl")
            .args(["req", "-new", "-x509", "-nodes", "-days", "36500", "-subj", subject])
            .args(newkey)
            .arg("-keyout")
            .arg(&key)
            .args(["-outform", cert_form, "-out"])
            .arg(&cert),
    );
    (key, cert)
}

fn copy(from: &Path, to: &Path) -> PathBuf {
    std::fs::copy(from, to).expect("copy");
    to.to_path_buf()
}

/// Signs a copy of `module` with sign-file and one with xdkms's applet (`xdkms sign-file`),
/// same arguments; returns both results.
fn both_sign(dir: &Path, module: &Path, args: &[&str], env: &[(&str, &str)]) -> (Vec<u8>, Vec<u8>) {
    let reference = copy(module, &dir.join("by-sign-file.ko"));
    let ours = copy(module, &dir.join("by-xdkms.ko"));
    run_ok(Command::new(sign_file()).args(args).arg(&reference).envs(env.iter().copied()));
    run_ok(xdkms().arg("sign-file").args(args).arg(&ours).envs(env.iter().copied()));
    (std::fs::read(&reference).expect("read"), std::fs::read(&ours).expect("read"))
}

#[test]
fn rsa_signatures_are_byte_identical_to_sign_file() {
    let work = TempDir::new("sign-rsa");
    let module = unsigned_module(work.path());
    let rsa2048 = openssl_pair(work.path(), "rsa2048", &["-newkey", "rsa:2048"], "/CN=xdkms signing/O=xdkms", "DER");
    let rsa4096 = openssl_pair(work.path(), "rsa4096", &["-newkey", "rsa:4096"], "/O=no common name", "PEM");
    // The 4096-bit key as PKCS#1 ("RSA PRIVATE KEY"), the 2048-bit one stays PKCS#8.
    let pkcs1 = work.join("rsa4096-pkcs1.key");
    run_ok(Command::new("openssl").args(["rsa", "-traditional", "-in"]).arg(&rsa4096.0).arg("-out").arg(&pkcs1));
    // The kernel's signing_key.pem: key and certificate in one PEM file.
    let combined = work.join("signing_key.pem");
    let mut text = std::fs::read(&rsa4096.0).expect("key");
    text.extend(std::fs::read(&rsa4096.1).expect("cert"));
    std::fs::write(&combined, text).expect("combined");
    let keys = [
        (rsa2048.0.clone(), rsa2048.1.clone()),
        (pkcs1.clone(), rsa4096.1.clone()),
        (combined.clone(), combined.clone()),
    ];
    for (key, cert) in &keys {
        for hash in ["sha1", "sha224", "sha256", "sha384", "sha512", "sha3-256", "sha3-512"] {
            let args = [hash, key.to_str().expect("utf-8"), cert.to_str().expect("utf-8")];
            let (reference, ours) = both_sign(work.path(), &module, &args, &[]);
            assert!(reference == ours, "{} {hash}: xdkms's signed module differs from sign-file's", key.display());
        }
    }
    let (key, cert) = (rsa2048.0.to_str().expect("utf-8"), rsa2048.1.to_str().expect("utf-8"));
    // -k: the signer named by its subject key identifier.
    let (reference, ours) = both_sign(work.path(), &module, &["-k", "sha256", key, cert], &[]);
    assert!(reference == ours, "-k differs");
    // A module that is already signed: the applet appends a second signature, as sign-file does.
    let signed = copy(&work.join("by-sign-file.ko"), &work.join("signed-once.ko"));
    let (reference, ours) = both_sign(work.path(), &signed, &["sha512", key, cert], &[]);
    assert!(reference == ours, "re-signing differs");
    // -d and -p: the detached .p7s; -s: appending a ready signature; a destination file.
    let detached = copy(&module, &work.join("detached.ko"));
    run_ok(Command::new(sign_file()).args(["-d", "sha384", key, cert]).arg(&detached));
    let reference_p7s = std::fs::read(work.join("detached.ko.p7s")).expect("sign-file's .p7s");
    std::fs::remove_file(work.join("detached.ko.p7s")).expect("rm");
    run_ok(xdkms().args(["sign-file", "-d", "sha384", key, cert]).arg(&detached));
    assert!(std::fs::read(work.join("detached.ko.p7s")).expect("our .p7s") == reference_p7s, "-d: .p7s differs");
    assert!(std::fs::read(&detached).expect("read") == std::fs::read(&module).expect("read"), "-d left the module");
    // The applet under sign-file's own name, as a kernel build would call it.
    let applet = work.join("sign-file");
    std::os::unix::fs::symlink(xdkms_bin(), &applet).expect("symlink");
    let (from_raw, to_raw) = (work.join("raw-sign-file.ko"), work.join("raw-xdkms.ko"));
    let p7s = work.join("detached.ko.p7s");
    run_ok(Command::new(sign_file()).args(["-s"]).arg(&p7s).args(["sha384", cert]).arg(&module).arg(&from_raw));
    run_ok(Command::new(&applet).args(["-s"]).arg(&p7s).args(["sha384", cert]).arg(&module).arg(&to_raw));
    assert!(std::fs::read(&from_raw).expect("read") == std::fs::read(&to_raw).expect("read"), "-s differs");
    // Usage errors: sign-file's exit status 2 and its usage text.
    for (program, bad) in [(sign_file(), "-x"), (applet.clone(), "-x")] {
        let out = run(Command::new(&program).args([bad, "sha256", key, cert]).arg(&module));
        assert_eq!(out.status.code(), Some(2), "{}", program.display());
        assert!(String::from_utf8_lossy(&out.stderr).contains("Usage: scripts/sign-file"));
    }
}

/// The fields kmod's modinfo shows for a signature, the signature value left out.
fn signature_fields(module: &Path) -> Vec<String> {
    ["signer", "sig_key", "sig_hashalgo", "sig_id"]
        .iter()
        .map(|field| {
            String::from_utf8_lossy(&run_ok(Command::new("modinfo").args(["-F", field]).arg(module)).stdout)
                .into_owned()
        })
        .collect()
}

#[test]
fn ecdsa_signatures_verify_and_name_the_signer_as_sign_files() {
    let work = TempDir::new("sign-ecdsa");
    let module = unsigned_module(work.path());
    for curve in ["P-256", "P-384"] {
        let pkeyopt = format!("ec_paramgen_curve:{curve}");
        let (key, cert) = openssl_pair(
            work.path(),
            curve,
            &["-newkey", "ec", "-pkeyopt", &pkeyopt],
            &format!("/CN={curve} key"),
            "DER",
        );
        let cert_pem = work.join(format!("{curve}.pem"));
        run_ok(Command::new("openssl").args(["x509", "-inform", "DER", "-in"]).arg(&cert).arg("-out").arg(&cert_pem));
        for hash in ["sha256", "sha384", "sha512"] {
            let args = ["-p", hash, key.to_str().expect("utf-8"), cert.to_str().expect("utf-8")];
            let (reference, ours) = both_sign(work.path(), &module, &args, &[]);
            assert!(
                reference.len().abs_diff(ours.len()) <= 2,
                "{curve} {hash}: sizes differ by more than DER integer padding"
            );
            let p7s = work.join("by-xdkms.ko.p7s");
            let verified = run(Command::new("openssl")
                .args(["cms", "-verify", "-binary", "-inform", "DER", "-noverify", "-out", "/dev/null", "-in"])
                .arg(&p7s)
                .arg("-content")
                .arg(&module)
                .arg("-certfile")
                .arg(&cert_pem));
            assert!(verified.status.success(), "{curve} {hash}: {}", String::from_utf8_lossy(&verified.stderr));
            assert_eq!(
                signature_fields(&work.join("by-xdkms.ko")),
                signature_fields(&work.join("by-sign-file.ko")),
                "{curve} {hash}"
            );
            // And xdkms's own modinfo reads what it wrote as kmod does.
            let kmod = run_ok(Command::new("modinfo").arg(work.join("by-xdkms.ko")));
            let ours = run_ok(xdkms().arg("modinfo").arg(work.join("by-xdkms.ko")));
            assert_eq!(String::from_utf8_lossy(&ours.stdout), String::from_utf8_lossy(&kmod.stdout), "{curve} {hash}");
        }
    }
}

#[test]
fn encrypted_keys_open_with_kbuild_sign_pin() {
    let work = TempDir::new("sign-pin");
    let module = unsigned_module(work.path());
    let (plain, cert) = openssl_pair(work.path(), "rsa", &["-newkey", "rsa:2048"], "/CN=encrypted", "DER");
    let (cert, module_s) = (cert.to_str().expect("utf-8").to_string(), module.clone());
    // PKCS#8 with PBES2: AES-256-CBC under PBKDF2, and under scrypt.
    for (name, extra) in [("pbkdf2", vec![]), ("scrypt", vec!["-scrypt"])] {
        let key = work.join(format!("{name}.key"));
        run_ok(
            Command::new("openssl")
                .args(["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout", "pass:s3cret"])
                .args(&extra)
                .arg("-in")
                .arg(&plain)
                .arg("-out")
                .arg(&key),
        );
        let key = key.to_str().expect("utf-8").to_string();
        let (reference, ours) =
            both_sign(work.path(), &module_s, &["sha256", &key, &cert], &[("KBUILD_SIGN_PIN", "s3cret")]);
        assert!(reference == ours, "{name}: differs from sign-file's");
        for (pin, expected) in [(Some("wrong"), "wrong passphrase"), (None, "KBUILD_SIGN_PIN")] {
            let target = copy(&module, &work.join("untouched.ko"));
            let mut command = xdkms();
            command.args(["sign-file", "sha256", &key, &cert]).arg(&target).env_remove("KBUILD_SIGN_PIN");
            if let Some(pin) = pin {
                command.env("KBUILD_SIGN_PIN", pin);
            }
            let out = run(&mut command);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name} {pin:?}: {stderr}");
            assert!(stderr.contains(expected) && stderr.contains(&key), "{name} {pin:?}: {stderr}");
            assert!(std::fs::read(&target).expect("read") == std::fs::read(&module).expect("read"), "module changed");
        }
    }
}

#[test]
fn bad_keys_and_certificates_are_refused_and_leave_the_module() {
    let work = TempDir::new("sign-bad");
    let module = unsigned_module(work.path());
    let (key, cert) = openssl_pair(work.path(), "good", &["-newkey", "rsa:2048"], "/CN=good", "DER");
    let (other_key, _) = openssl_pair(work.path(), "other", &["-newkey", "rsa:2048"], "/CN=other", "DER");
    let (ed_key, ed_cert) = openssl_pair(work.path(), "ed", &["-newkey", "ed25519"], "/CN=ed", "DER");
    let truncated = work.join("truncated.der");
    let der = std::fs::read(&cert).expect("cert");
    std::fs::write(&truncated, &der[..der.len() / 2]).expect("write");
    let legacy = work.join("legacy.key");
    run_ok(
        Command::new("openssl")
            .args(["rsa", "-traditional", "-aes256", "-passout", "pass:x", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&legacy),
    );
    let p = |path: &PathBuf| path.to_str().expect("utf-8").to_string();
    let cases: [(&str, [String; 3], &str); 7] = [
        ("mismatch", ["sha256".into(), p(&other_key), p(&cert)], "does not match"),
        ("ed25519", ["sha256".into(), p(&ed_key), p(&ed_cert)], "unsupported key type"),
        ("truncated", ["sha256".into(), p(&key), p(&truncated)], "truncated"),
        ("legacy", ["sha256".into(), p(&legacy), p(&cert)], "openssl pkcs8"),
        ("hash", ["md5".into(), p(&key), p(&cert)], "unknown hash algorithm"),
        ("missing key", ["sha256".into(), p(&work.join("absent.key")), p(&cert)], "absent.key"),
        ("certificate as key", ["sha256".into(), p(&cert), p(&cert)], "not a private key"),
    ];
    for (name, args, expected) in cases {
        let target = copy(&module, &work.join("target.ko"));
        let out = run(xdkms().arg("sign-file").args(&args).arg(&target));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(
            std::fs::read(&target).expect("read") == std::fs::read(&module).expect("read"),
            "{name}: module changed"
        );
        let leftovers: Vec<_> = std::fs::read_dir(work.path())
            .expect("ls")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("xdkms-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{name}: temporary files left: {leftovers:?}");
    }
}

#[test]
fn generate_mok_makes_a_pair_sign_file_signs_with() {
    let work = TempDir::new("sign-mok");
    let root = work.join("root");
    std::fs::create_dir_all(root.join("var/lib/dkms")).expect("mkdir");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    let out = run_ok(xdkms().args(["generate_mok", "--root"]).arg(&root));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("generating self signed certificate for MOK"), "{stdout}");
    let (key, cert) = (root.join("var/lib/dkms/mok.key"), root.join("var/lib/dkms/mok.pub"));
    assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600, "key readable by others");
    // What openssl prints of it, next to a certificate dkms 3.4's openssl command makes.
    let reference = openssl_pair(
        work.path(),
        "dkms",
        &["-newkey", "rsa:2048", "-addext", "extendedKeyUsage=codeSigning"],
        "/CN=DKMS module signing key",
        "DER",
    );
    let describe = |cert: &Path| -> Vec<String> {
        let text = run_ok(Command::new("openssl").args(["x509", "-inform", "DER", "-noout", "-text", "-in"]).arg(cert));
        String::from_utf8_lossy(&text.stdout)
            .lines()
            // Key, serial, key identifiers and signature are hex lines: random, left out.
            .filter(|l| !l.trim().chars().all(|c| c.is_ascii_hexdigit() || c == ':'))
            .filter(|l| !l.contains("Not Before") && !l.contains("Not After"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(describe(&cert), describe(&reference.1));
    let module = unsigned_module(work.path());
    let (key_s, cert_s) = (key.to_str().expect("utf-8"), cert.to_str().expect("utf-8"));
    let (by_sign_file, by_xdkms) = both_sign(work.path(), &module, &["sha512", key_s, cert_s], &[]);
    assert!(by_sign_file == by_xdkms, "the generated key signs differently");
    // A second run keeps the pair.
    let before = std::fs::read(&cert).expect("cert");
    let out = run_ok(xdkms().args(["generate_mok", "--root"]).arg(&root));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("generating"));
    assert!(std::fs::read(&cert).expect("cert") == before, "the pair was replaced");
}

#[test]
fn damaged_signature_trailers_read_as_kmod_reads_them() {
    let work = TempDir::new("sign-trailer");
    let module = unsigned_module(work.path());
    let (key, cert) = openssl_pair(work.path(), "k", &["-newkey", "rsa:2048"], "/CN=k", "DER");
    let signed = copy(&module, &work.join("signed.ko"));
    run_ok(xdkms().args(["sign-file", "sha256"]).arg(&key).arg(&cert).arg(&signed));
    let bytes = std::fs::read(&signed).expect("read");
    let trailer_at = bytes.len() - 28 - 12;
    // sig_len past the start, an unknown id type, a zero length, a damaged CMS message.
    let damages: [(&str, usize, &[u8]); 4] = [
        ("length", trailer_at + 8, &[0x7f, 0xff, 0xff, 0xff]),
        ("id type", trailer_at + 2, &[9]),
        ("zero length", trailer_at + 8, &[0, 0, 0, 0]),
        ("cms", trailer_at - 300, &[0xff; 16]),
    ];
    for (name, at, with) in damages {
        let mut damaged = bytes.clone();
        damaged[at..at + with.len()].copy_from_slice(with);
        let path = work.join(format!("{}.ko", name.replace(' ', "-")));
        std::fs::write(&path, &damaged).expect("write");
        let kmod = run(Command::new("modinfo").arg(&path));
        let ours = run(xdkms().arg("modinfo").arg(&path));
        assert_eq!(ours.status.code(), kmod.status.code(), "{name}");
        assert_eq!(String::from_utf8_lossy(&ours.stdout), String::from_utf8_lossy(&kmod.stdout), "{name}");
    }
}
