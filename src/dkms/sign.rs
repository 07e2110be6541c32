//! Module signing as dkms 3.0.10 prepares it: the kernel's `sign-file`, a key and certificate
//! from the command line or framework.conf (default `/var/lib/dkms/mok.key` and `mok.pub`), and
//! the hash from CONFIG_MODULE_SIG_HASH. Modules are signed after stripping, before compression.
//!
//! One difference, on purpose: dkms generates a key pair when none exists. xdkms does so on the
//! host only; inside a root (`--root`) it never writes a private key into an image, and builds
//! unsigned modules unless a key is given.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::conf::{self, Scope};
use super::{Ctx, Target};

/// What signing a module needs, once checked.
#[derive(Debug, Clone)]
pub struct Signer {
    sign_file: PathBuf,
    hash: String,
    key: String,
    cert: PathBuf,
}

/// A path from framework.conf or a default: on the host as given; in a root a path of the
/// target (relative ones from its `/`), resolved inside it, and None when that fails (the build
/// host's own files are never used instead).
fn in_root(ctx: &Ctx, value: &str) -> Option<PathBuf> {
    if !ctx.image_mode() {
        return Some(PathBuf::from(value));
    }
    match ctx.root.resolve(Path::new("/").join(value)) {
        Ok(path) => Some(path),
        Err(e) => {
            ctx.warn(format!("cannot resolve {value} inside {}: {e}", ctx.root.root().display()));
            None
        }
    }
}

/// dkms's prepare_signing for one kernel; None (after saying why) when modules stay unsigned.
pub fn prepare(ctx: &Ctx, target: &Target) -> Option<Signer> {
    // framework.conf's signing variables may use $kernelver: read them for this kernel.
    let scope = Scope { kernelver: target.kernel.clone(), arch: target.arch.clone(), ..Default::default() };
    let framework =
        conf::evaluate(&ctx.framework_files, &scope, &["sign_file", "mok_signing_key", "mok_certificate"], None)
            .unwrap_or_default();
    let configured = |cli: &Option<PathBuf>, name: &str| -> Option<PathBuf> {
        cli.clone().or_else(|| Some(framework.scalar(name)).filter(|v| !v.is_empty()).and_then(|v| in_root(ctx, v)))
    };
    let series = target.kernel.rsplit_once('.').map_or(target.kernel.as_str(), |(head, _)| head);
    let sign_file = configured(&ctx.signing.sign_file, "sign_file").or_else(|| {
        let debian = in_root(ctx, &format!("/usr/lib/linux-kbuild-{series}/scripts/sign-file"));
        match debian {
            Some(debian) if ctx.distro.starts_with("debian") && debian.is_file() => Some(debian),
            _ => ctx.kernel_source_dir(&target.kernel).ok().map(|dir| dir.join("scripts/sign-file")),
        }
    })?;
    ctx.say(format!("Sign command: {}", sign_file.display()));
    let executable = std::fs::metadata(&sign_file)
        .is_ok_and(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0);
    if !executable {
        ctx.say(format!("Binary {} not found, modules won't be signed", sign_file.display()));
        return None;
    }
    let key = match &ctx.signing.key {
        Some(key) => key.to_string_lossy().into_owned(),
        None => match framework.scalar("mok_signing_key") {
            "" => in_root(ctx, "/var/lib/dkms/mok.key")?.to_string_lossy().into_owned(),
            pkcs11 if pkcs11.starts_with("pkcs11:") => pkcs11.to_string(),
            path => in_root(ctx, path)?.to_string_lossy().into_owned(),
        },
    };
    ctx.say(format!("Signing key: {key}"));
    let cert = match configured(&ctx.signing.cert, "mok_certificate") {
        Some(cert) => cert,
        None => in_root(ctx, "/var/lib/dkms/mok.pub")?,
    };
    ctx.say(format!("Public certificate (MOK): {}", cert.display()));
    let key_present = key.starts_with("pkcs11:") || Path::new(&key).is_file();
    if !key_present || !cert.is_file() {
        if ctx.image_mode() {
            ctx.say(
                "Certificate or key are missing; xdkms does not create keys inside a root, modules won't be signed \
                 (give --mok-signing-key and --mok-certificate)",
            );
            return None;
        }
        ctx.say("Certificate or key are missing, generating self signed certificate for MOK...");
        let generated = Command::new("openssl")
            .args(["req", "-new", "-x509", "-nodes", "-days", "36500", "-subj", "/CN=DKMS module signing key"])
            .args(["-newkey", "rsa:2048", "-keyout"])
            .arg(&key)
            .args(["-outform", "DER", "-out"])
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(generated, Ok(s) if s.success()) || !Path::new(&key).is_file() {
            ctx.say(format!("Key file {key} not found and can't be generated, modules won't be signed"));
            return None;
        }
    }
    let config = ctx.kernel_config_text(&target.kernel);
    let hash = config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_MODULE_SIG_HASH="))
        .map(|h| h.trim_matches('"').to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sha512".to_string());
    Some(Signer { sign_file, hash, key, cert })
}

/// Signs a module in place; a failure is a warning, as in dkms (the build still succeeds).
pub fn sign(ctx: &Ctx, signer: &Signer, module: &Path) {
    ctx.say(format!("Signing module {}", module.display()));
    let mut command = Command::new(&signer.sign_file);
    command.arg(&signer.hash).arg(&signer.key).arg(&signer.cert).arg(module);
    if let Err(e) = super::commands::run_tool(&mut command, &format!("Failed to sign module '{}'!", module.display())) {
        ctx.warn(e);
    }
}
