//! Module signing as dkms 3.0.10 prepares it: a key and certificate from the command line or
//! framework.conf (default `/var/lib/dkms/mok.key` and `mok.pub`, generated on first use), the
//! hash from CONFIG_MODULE_SIG_HASH; modules are signed after stripping, before compression.
//!
//! xdkms signs in-process (crate::signing: the bytes the kernel's sign-file writes) and makes
//! the first-use key pair in-process, so neither OpenSSL nor a host-built sign-file is needed.
//! A sign-file program still runs where one is configured (`--sign-file`, framework.conf's
//! `sign_file`), and for a `pkcs11:` key without a signing command, as OpenSSL's engine is the
//! only way to reach those. A signing command (`--sign-command`, framework.conf's
//! `sign_command`) signs digests with a key xdkms never sees, such as an HSM's.
//!
//! One difference, on purpose: inside a root (`--root`) xdkms never writes a private key into
//! an image, and builds unsigned modules unless a key is given.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::conf::{self, Scope};
use super::{Ctx, Failure, Target};
use crate::exit::Exit;
use crate::signing::{mok, Certificate, HashAlgorithm, ModuleSigner, PrivateKey, SignerId, SigningKey};

/// How modules get signed, once checked.
#[derive(Debug)]
pub enum Signer {
    /// In-process.
    BuiltIn(Box<ModuleSigner>),
    /// A sign-file program: `<sign_file> <hash> <key> <cert> <module>`.
    Program { sign_file: PathBuf, hash: String, key: String, cert: PathBuf },
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

/// framework.conf's signing variables for one kernel (they may use $kernelver).
struct Framework(conf::RawConf);

const FRAMEWORK_VARIABLES: [&str; 5] =
    ["sign_file", "mok_signing_key", "mok_certificate", "sign_command", "try_sign_modules"];

impl Framework {
    fn read(ctx: &Ctx, target: &Target) -> Framework {
        let scope = Scope { kernelver: target.kernel.clone(), arch: target.arch.clone(), ..Default::default() };
        Framework(conf::evaluate(&ctx.framework_files, &scope, &FRAMEWORK_VARIABLES, None).unwrap_or_default())
    }

    fn value(&self, name: &str) -> Option<&str> {
        Some(self.0.scalar(name)).filter(|v| !v.is_empty())
    }
}

/// dkms's prepare_signing for one kernel; None (after saying why) when modules stay unsigned.
pub fn prepare(ctx: &Ctx, target: &Target) -> Option<Signer> {
    let framework = Framework::read(ctx, target);
    // dkms 3.4's policy switch. (Its "not_in_chroot" default is moot here: an image root is the
    // target, not a chroot, and its key is the one asked for.)
    if framework.value("try_sign_modules") == Some("false") {
        ctx.say("Module signing is disabled by policy, modules won't be signed");
        return None;
    }
    let configured = |cli: &Option<PathBuf>, name: &str| -> Option<PathBuf> {
        cli.clone().or_else(|| framework.value(name).and_then(|v| in_root(ctx, v)))
    };
    let sign_command = ctx.signing.command.clone().or_else(|| framework.value("sign_command").map(str::to_string));
    let sign_file = configured(&ctx.signing.sign_file, "sign_file");
    let key = match &ctx.signing.key {
        Some(key) => key.to_string_lossy().into_owned(),
        None => match framework.value("mok_signing_key") {
            None => in_root(ctx, "/var/lib/dkms/mok.key")?.to_string_lossy().into_owned(),
            Some(pkcs11) if pkcs11.starts_with("pkcs11:") => pkcs11.to_string(),
            Some(path) => in_root(ctx, path)?.to_string_lossy().into_owned(),
        },
    };
    // A program only where one is asked for, or where nothing else reaches the key.
    let program = match sign_file {
        Some(path) => Some(path),
        None if key.starts_with("pkcs11:") && sign_command.is_none() => Some(default_sign_file(ctx, target)),
        None => None,
    };
    if !announce_command(ctx, target, program.as_deref()) {
        return None;
    }
    let shown_key =
        if key.starts_with("pkcs11:") { key.clone() } else { ctx.shown(Path::new(&key)).display().to_string() };
    ctx.say(format!("Signing key: {shown_key}"));
    let cert = match configured(&ctx.signing.cert, "mok_certificate") {
        Some(cert) => cert,
        None => in_root(ctx, "/var/lib/dkms/mok.pub")?,
    };
    ctx.say(format!("Public certificate (MOK): {}", ctx.shown(&cert).display()));
    let external_key = key.starts_with("pkcs11:") || (program.is_none() && sign_command.is_some());
    if !external_key && !key_pair_ready(ctx, Path::new(&key), &cert, !ctx.image_mode()) {
        return None;
    }
    let hash = kernel_hash(ctx, target);
    match program {
        Some(sign_file) => Some(Signer::Program { sign_file, hash, key, cert }),
        None => built_in(ctx, &key, &cert, &hash, sign_command),
    }
}

/// dkms's `Sign command:` line; false (after dkms's line) when a program is to run and is
/// missing. Signing in-process writes what dkms's sign-file would: that program's path is shown
/// when it exists, as dkms shows it, else the built-in one is named.
fn announce_command(ctx: &Ctx, target: &Target, program: Option<&Path>) -> bool {
    let Some(path) = program else {
        let default = default_sign_file(ctx, target);
        if ctx.verbose {
            super::print_err(format_args!("xdkms: signing in-process (the bytes {} writes)", default.display()));
        }
        let shown = if default.is_file() {
            ctx.shown(&default).display().to_string()
        } else {
            "xdkms sign-file (built in)".into()
        };
        ctx.say(format!("Sign command: {shown}"));
        return true;
    };
    ctx.say(format!("Sign command: {}", ctx.shown(path).display()));
    let executable = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if !executable {
        ctx.say(format!("Binary {} not found, modules won't be signed", ctx.shown(path).display()));
    }
    executable
}

/// Where dkms looks for sign-file when none is configured.
fn default_sign_file(ctx: &Ctx, target: &Target) -> PathBuf {
    let series = target.kernel.rsplit_once('.').map_or(target.kernel.as_str(), |(head, _)| head);
    let debian = in_root(ctx, &format!("/usr/lib/linux-kbuild-{series}/scripts/sign-file"));
    match debian {
        Some(debian) if ctx.distro.starts_with("debian") && debian.is_file() => debian,
        _ => ctx.kernel_source_dir(&target.kernel).map(|dir| dir.join("scripts/sign-file")).unwrap_or_default(),
    }
}

/// CONFIG_MODULE_SIG_HASH, sha512 when unset (as dkms).
fn kernel_hash(ctx: &Ctx, target: &Target) -> String {
    ctx.kernel_config_text(&target.kernel)
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_MODULE_SIG_HASH="))
        .map(|h| h.trim_matches('"').to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sha512".to_string())
}

/// dkms 3.4's `generate_mok`: the key pair at the configured paths, made when either file is
/// missing. Inside a root only when asked for this way (a build never puts a private key into
/// an image by itself).
pub fn generate_mok(ctx: &Ctx) -> Result<(), Failure> {
    let framework = Framework(
        conf::evaluate(&ctx.framework_files, &Scope::default(), &FRAMEWORK_VARIABLES, None).unwrap_or_default(),
    );
    let configured = |cli: &Option<PathBuf>, name: &str, default: &str| -> Option<PathBuf> {
        cli.clone().or_else(|| in_root(ctx, framework.value(name).unwrap_or(default)))
    };
    let unresolved =
        || Failure::new(Exit::MokNotGenerated, ["The key or certificate path cannot be resolved in the root."]);
    let key = configured(&ctx.signing.key, "mok_signing_key", "/var/lib/dkms/mok.key").ok_or_else(unresolved)?;
    ctx.say(format!("Signing key: {}", ctx.shown(&key).display()));
    let cert = configured(&ctx.signing.cert, "mok_certificate", "/var/lib/dkms/mok.pub").ok_or_else(unresolved)?;
    ctx.say(format!("Public certificate (MOK): {}", ctx.shown(&cert).display()));
    if key.to_string_lossy().starts_with("pkcs11:") || key_pair_ready(ctx, &key, &cert, true) {
        Ok(())
    } else {
        Err(Failure::new(Exit::MokNotGenerated, Vec::<String>::new()))
    }
}

/// True when the key and certificate exist, after making them (dkms's first-use key pair,
/// in-process) where `may_generate`; false after dkms's messages when there is none to sign
/// with. Builds inside a root never generate: a private key does not belong in an image.
fn key_pair_ready(ctx: &Ctx, key: &Path, cert: &Path, may_generate: bool) -> bool {
    // Parallel builds prepare signing at once: one of them makes the pair, the others use it
    // (two generators could leave one's key beside the other's certificate).
    static GENERATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = GENERATING.lock().unwrap_or_else(|e| e.into_inner());
    if key.is_file() && cert.is_file() {
        return true;
    }
    if !may_generate {
        ctx.say(
            "Certificate or key are missing; xdkms does not create keys inside a root, modules won't be signed \
             (give --mok-signing-key and --mok-certificate)",
        );
        return false;
    }
    ctx.say("Certificate or key are missing, generating self signed certificate for MOK...");
    // As openssl does, both files are written even where only one was missing.
    let written = mok::generate(mok::DKMS_SUBJECT, mok::DKMS_DAYS).and_then(|pair| {
        write_new(ctx, key, 0o600, pair.key_pem.as_bytes())?;
        write_new(ctx, cert, 0o644, &pair.certificate_der)?;
        Ok(())
    });
    // dkms discards openssl's own complaints; why the pair could not be written is xdkms's.
    if let (Err(e), true) = (&written, ctx.verbose) {
        super::print_err(format_args!("xdkms: the generated key pair could not be written: {e}"));
    }
    if !key.is_file() {
        ctx.say(format!(
            "Key file {} not found and can't be generated, modules won't be signed",
            ctx.shown(key).display()
        ));
        return false;
    }
    if !cert.is_file() {
        ctx.say(format!(
            "Certificate file {} not found and can't be generated, modules won't be signed",
            ctx.shown(cert).display()
        ));
        return false;
    }
    true
}

/// Writes a generated file with its mode from the start (a private key is never readable by
/// others, not even while written): through the root's handle for a path in the root, through
/// the build host's for one given on the command line (options name build host files).
fn write_new(ctx: &Ctx, path: &Path, mode: u32, data: &[u8]) -> std::io::Result<()> {
    let permissions = Some(std::fs::Permissions::from_mode(mode));
    if ctx.root.contains(path) {
        ctx.root.write_atomic(path, data, permissions)
    } else {
        cross::Sysroot::host()?.write_atomic(&crate::fsio::absolute(path.to_path_buf()), data, permissions)
    }
}

/// A key or certificate: through the root's handle when it lies in the root.
fn read_input(ctx: &Ctx, path: &Path) -> std::io::Result<Vec<u8>> {
    if ctx.root.contains(path) {
        ctx.root.read(path)
    } else {
        std::fs::read(path)
    }
}

/// The in-process signer; None (after a warning naming the file and the fix) when the key,
/// certificate or hash cannot be used.
fn built_in(ctx: &Ctx, key: &str, cert: &Path, hash: &str, sign_command: Option<String>) -> Option<Signer> {
    let checked = (|| {
        let hash = HashAlgorithm::from_name(hash).ok_or_else(|| {
            anyhow::anyhow!("CONFIG_MODULE_SIG_HASH={hash} is not a hash xdkms knows ({})", HashAlgorithm::names())
        })?;
        let key = match sign_command {
            Some(command) => SigningKey::Command(command),
            None => {
                let passphrase = std::env::var_os("KBUILD_SIGN_PIN").map(|pin| pin.into_encoded_bytes());
                let bytes = read_input(ctx, Path::new(key))
                    .map_err(|e| anyhow::anyhow!("reading the signing key {key}: {e}"))?;
                let private = PrivateKey::parse(&bytes, passphrase.as_deref())
                    .map_err(|e| anyhow::anyhow!("signing key {key}: {e:#}"))?;
                SigningKey::Private(private)
            }
        };
        let source = cert.display().to_string();
        let bytes = read_input(ctx, cert).map_err(|e| anyhow::anyhow!("reading the certificate {source}: {e}"))?;
        let certificate =
            Certificate::parse(&bytes, &source).map_err(|e| anyhow::anyhow!("certificate {source}: {e:#}"))?;
        ModuleSigner::new(key, certificate, hash, SignerId::IssuerAndSerial)
    })();
    match checked {
        Ok(signer) => Some(Signer::BuiltIn(Box::new(signer))),
        Err(e) => {
            ctx.warn(format!("{e:#}; modules won't be signed"));
            None
        }
    }
}

/// Signs a module in place (a signature it already has is replaced); a failure is a warning,
/// as in dkms (the build still succeeds). `shown` is the module's path as dkms would print it.
pub fn sign(ctx: &Ctx, signer: &Signer, module: &Path, shown: &Path) {
    ctx.say(format!("Signing module {}", shown.display()));
    let failed = |e: String| ctx.warn(format!("Failed to sign module '{}'! {e}", module.display()));
    match signer {
        Signer::BuiltIn(signer) => {
            let signed = ctx.root.read(module).map_err(|e| e.to_string()).and_then(|bytes| {
                signer.sign(&bytes).map_err(|e| format!("{e:#}")).and_then(|signed| {
                    ctx.root
                        .write_atomic(module, &signed, None)
                        .map_err(|e| format!("writing {}: {e}", module.display()))
                })
            });
            if let Err(e) = signed {
                failed(e);
            }
        }
        Signer::Program { sign_file, hash, key, cert } => {
            let mut command = Command::new(sign_file);
            command.arg(hash).arg(key).arg(cert).arg(module);
            if let Err(e) =
                super::commands::run_tool(&mut command, &format!("Failed to sign module '{}'!", module.display()))
            {
                ctx.warn(e);
            }
        }
    }
}
