//! The `sign-file` applet: the kernel's `scripts/sign-file` command line (`[-dpk] hash key x509
//! module [dest]`, `-s raw-sig hash x509 module [dest]`), its exit codes (2 for usage, 1 for any
//! failure) and its output bytes, with xdkms's in-process signing instead of OpenSSL. Like
//! sign-file it appends to a module that is already signed; unlike it, it writes the result
//! beside the destination and renames it, so a failure leaves the old file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::exit::Exit;
use crate::signing::{append_signature, Certificate, HashAlgorithm, ModuleSigner, PrivateKey, SignerId, SigningKey};

const USAGE: &str = "Usage: scripts/sign-file [-dp] <hash algo> <key> <x509> <module> [<dest>]\n       \
                     scripts/sign-file -s <raw sig> <hash algo> <x509> <module> [<dest>]";

/// sign-file's options and operands.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    /// `-s`: the first operand is a ready signature to append.
    raw_signature: bool,
    /// `-p`: also write `<module>.p7s`.
    save_signature: bool,
    /// `-d`: only write `<module>.p7s`.
    signature_only: bool,
    /// `-k`: name the signer by its subject key identifier.
    key_id: bool,
    operands: Vec<String>,
}

/// Parses the arguments as sign-file's getopt("sdpk") does: options may come after operands,
/// `--` ends them. None for an unknown option (after saying which, as getopt does).
fn parse(args: &[String]) -> Option<Options> {
    let mut options = Options::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            options.operands.extend(rest.by_ref().cloned());
            break;
        }
        let Some(letters) = arg.strip_prefix('-').filter(|l| !l.is_empty()) else {
            options.operands.push(arg.clone());
            continue;
        };
        for letter in letters.chars() {
            match letter {
                's' => options.raw_signature = true,
                'p' => options.save_signature = true,
                'd' => {
                    options.signature_only = true;
                    options.save_signature = true;
                }
                'k' => options.key_id = true,
                other => {
                    eprintln!("sign-file: invalid option -- '{other}'");
                    return None;
                }
            }
        }
    }
    Some(options)
}

/// Runs the applet on the arguments after the program name.
pub fn main(args: &[String]) -> Exit {
    let Some(options) = parse(args).filter(|o| (4..=5).contains(&o.operands.len())) else {
        eprintln!("{USAGE}");
        return Exit::BadArguments;
    };
    match run(&options) {
        Ok(()) => Exit::Success,
        Err(e) => {
            eprintln!("sign-file: {e:#}");
            Exit::Failed
        }
    }
}

fn run(options: &Options) -> Result<()> {
    let operands = &options.operands;
    let (first, hash_name, x509, module_path) = (&operands[0], &operands[1], &operands[2], &operands[3]);
    let (hash_name, first) = if options.raw_signature { (hash_name, first) } else { (first, hash_name) };
    let module_path = Path::new(module_path);
    let module = std::fs::read(module_path).with_context(|| format!("{}", module_path.display()))?;
    let signature = if options.raw_signature {
        std::fs::read(first).with_context(|| first.to_string())?
    } else {
        let signer = signer(first, hash_name, Path::new(x509), options.key_id)?;
        let signature = signer.cms_signature(&module)?;
        if options.save_signature {
            let mut p7s = module_path.as_os_str().to_owned();
            p7s.push(".p7s");
            write_file(Path::new(&p7s), &signature)?;
        }
        if options.signature_only {
            return Ok(());
        }
        signature
    };
    // As sign-file: a destination equal to the module means in place.
    let dest = operands.get(4).map(PathBuf::from).unwrap_or_else(|| module_path.to_path_buf());
    write_file(&dest, &append_signature(&module, &signature))
}

/// The signer for a key file (never a `pkcs11:` URI: those need OpenSSL's engine).
fn signer(key: &str, hash_name: &str, x509: &Path, key_id: bool) -> Result<ModuleSigner> {
    let hash = HashAlgorithm::from_name(hash_name)
        .ok_or_else(|| anyhow!("unknown hash algorithm '{hash_name}' (known: {})", HashAlgorithm::names()))?;
    if key.starts_with("pkcs11:") {
        bail!(
            "{key}: PKCS#11 keys need the kernel's sign-file built with OpenSSL's pkcs11 engine; \
             xdkms signs with them through a signing command (see the README's Module signing)"
        );
    }
    let passphrase = std::env::var_os("KBUILD_SIGN_PIN").map(|pin| pin.into_encoded_bytes());
    let private = PrivateKey::read(Path::new(key), passphrase.as_deref())?;
    let certificate = Certificate::read(x509)?;
    let signer_id = if key_id { SignerId::SubjectKeyId } else { SignerId::IssuerAndSerial };
    ModuleSigner::new(SigningKey::Private(private), certificate, hash, signer_id)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fsio::replace_file_with(path, |file| file.write_all(bytes)).with_context(|| format!("{}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn options_are_parsed_as_getopt_permutes_them() {
        let parsed = parse(&args(&["sha256", "-dp", "key", "cert", "m.ko", "-k"])).expect("parses");
        assert!(parsed.signature_only && parsed.save_signature && parsed.key_id && !parsed.raw_signature);
        assert_eq!(parsed.operands, ["sha256", "key", "cert", "m.ko"]);
        let parsed = parse(&args(&["-s", "--", "-sig", "sha1", "c", "m"])).expect("parses");
        assert_eq!(parsed.operands, ["-sig", "sha1", "c", "m"]);
        assert!(parse(&args(&["-x", "a", "b", "c", "d"])).is_none());
    }
}
