//! Module signing as the kernel's `scripts/sign-file` does it, in-process: the module's digest
//! signed with an RSA (PKCS#1 v1.5) or ECDSA (P-256, P-384) key, wrapped in a detached CMS
//! SignedData without signed attributes or certificates, then sign-file's 12-byte
//! `module_signature` trailer and magic string. RSA signatures are deterministic, so a module
//! signed here is byte-identical to sign-file's; ECDSA ones verify the same way.

pub mod cms;
pub mod keys;
pub mod mok;

use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use const_oid::{AssociatedOid, ObjectIdentifier};
use sha2::Digest;

pub use keys::{Certificate, PrivateKey};

use crate::module::signature::{MAGIC, TRAILER_LEN};

/// `module_signature.id_type` of a PKCS#7/CMS signature, the only one sign-file writes.
const ID_PKCS7: u8 = 2;

/// The digests the kernel's module signing knows (CONFIG_MODULE_SIG_HASH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Sha3_256,
    Sha3_384,
    Sha3_512,
}

impl HashAlgorithm {
    const ALL: [HashAlgorithm; 8] = [
        HashAlgorithm::Sha1,
        HashAlgorithm::Sha224,
        HashAlgorithm::Sha256,
        HashAlgorithm::Sha384,
        HashAlgorithm::Sha512,
        HashAlgorithm::Sha3_256,
        HashAlgorithm::Sha3_384,
        HashAlgorithm::Sha3_512,
    ];

    /// The algorithm a name denotes, with the spellings OpenSSL's EVP_get_digestbyname takes
    /// (`sha256`, `SHA256`, `SHA2-256`, `sha-256`, `sha3-256`).
    pub fn from_name(name: &str) -> Option<HashAlgorithm> {
        let name = name.to_ascii_lowercase();
        let name = name.strip_prefix("sha2-").map(|bits| format!("sha{bits}")).unwrap_or(name);
        let name = if name.starts_with("sha-") { name.replacen("sha-", "sha", 1) } else { name };
        Self::ALL.into_iter().find(|algorithm| algorithm.name() == name)
    }

    /// The kernel's name (`sha256`, `sha3-256`).
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha1 => "sha1",
            HashAlgorithm::Sha224 => "sha224",
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha384 => "sha384",
            HashAlgorithm::Sha512 => "sha512",
            HashAlgorithm::Sha3_256 => "sha3-256",
            HashAlgorithm::Sha3_384 => "sha3-384",
            HashAlgorithm::Sha3_512 => "sha3-512",
        }
    }

    /// Every name, for error messages.
    pub fn names() -> String {
        Self::ALL.map(HashAlgorithm::name).join(", ")
    }

    pub fn oid(self) -> ObjectIdentifier {
        match self {
            HashAlgorithm::Sha1 => sha1::Sha1::OID,
            HashAlgorithm::Sha224 => sha2::Sha224::OID,
            HashAlgorithm::Sha256 => sha2::Sha256::OID,
            HashAlgorithm::Sha384 => sha2::Sha384::OID,
            HashAlgorithm::Sha512 => sha2::Sha512::OID,
            HashAlgorithm::Sha3_256 => sha3::Sha3_256::OID,
            HashAlgorithm::Sha3_384 => sha3::Sha3_384::OID,
            HashAlgorithm::Sha3_512 => sha3::Sha3_512::OID,
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlgorithm::Sha1 => sha1::Sha1::digest(data).to_vec(),
            HashAlgorithm::Sha224 => sha2::Sha224::digest(data).to_vec(),
            HashAlgorithm::Sha256 => sha2::Sha256::digest(data).to_vec(),
            HashAlgorithm::Sha384 => sha2::Sha384::digest(data).to_vec(),
            HashAlgorithm::Sha512 => sha2::Sha512::digest(data).to_vec(),
            HashAlgorithm::Sha3_256 => sha3::Sha3_256::digest(data).to_vec(),
            HashAlgorithm::Sha3_384 => sha3::Sha3_384::digest(data).to_vec(),
            HashAlgorithm::Sha3_512 => sha3::Sha3_512::digest(data).to_vec(),
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What makes the raw signature of a digest.
#[derive(Debug)]
pub enum SigningKey {
    /// A private key read into memory.
    Private(PrivateKey),
    /// An external program (an HSM's tool): run with bash as `bash -c COMMAND xdkms-sign HASH`,
    /// it reads the digest (binary) on stdin and writes the raw signature on stdout: PKCS#1
    /// v1.5 (with the DigestInfo) for an RSA certificate, a DER ECDSA-Sig-Value for an EC one.
    Command(String),
}

/// How the signature names its signer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignerId {
    /// The certificate's issuer and serial number (sign-file's default).
    IssuerAndSerial,
    /// The certificate's subject key identifier (sign-file `-k`).
    SubjectKeyId,
}

/// A key, its certificate and a digest: everything signing a module needs, checked once.
#[derive(Debug)]
pub struct ModuleSigner {
    key: SigningKey,
    certificate: Certificate,
    hash: HashAlgorithm,
    signer_id: SignerId,
}

impl ModuleSigner {
    /// Checks that the key belongs to the certificate and that the certificate can name the
    /// signer as asked.
    pub fn new(key: SigningKey, certificate: Certificate, hash: HashAlgorithm, signer_id: SignerId) -> Result<Self> {
        if let SigningKey::Private(private) = &key {
            private.check_matches(&certificate)?;
            private.check_hash(hash)?;
        }
        if signer_id == SignerId::SubjectKeyId && certificate.subject_key_id.is_none() {
            bail!("{}: the certificate has no subject key identifier to name the signer by", certificate.source);
        }
        Ok(ModuleSigner { key, certificate, hash, signer_id })
    }

    /// What tells this signer's signatures from another's: the certificate's issuer, serial,
    /// subject key id and public key, the digest and how the signer is named (a build cache
    /// keys signed modules by it; the private key itself is never read for it).
    pub fn identity(&self) -> String {
        use der::Encode;
        let cert = &self.certificate;
        let mut parts: Vec<u8> = Vec::new();
        for part in [
            cert.issuer.to_der().unwrap_or_default(),
            cert.serial.as_bytes().to_vec(),
            cert.subject_key_id.clone().unwrap_or_default(),
            cert.public_key.to_der().unwrap_or_default(),
        ] {
            parts.extend_from_slice(&(part.len() as u64).to_le_bytes());
            parts.extend_from_slice(&part);
        }
        format!("{} {:?} {}", self.hash.name(), self.signer_id, crate::build_cache::sha256_hex(&parts))
    }

    /// The DER CMS SignedData that signs `module` (sign-file's `.p7s`).
    pub fn cms_signature(&self, module: &[u8]) -> Result<Vec<u8>> {
        let digest = self.hash.digest(module);
        let (algorithm, signature) = match &self.key {
            SigningKey::Private(key) => (key.signature_algorithm(self.hash), key.sign_digest(self.hash, &digest)?),
            SigningKey::Command(command) => {
                (self.certificate.signature_algorithm(self.hash)?, run_external_signer(command, self.hash, &digest)?)
            }
        };
        cms::signed_data(self.hash, &self.certificate, self.signer_id, algorithm, signature)
            .with_context(|| format!("encoding the signature of {}", self.certificate.source))
    }

    /// `module` with its signature appended, any signature it already had replaced.
    pub fn sign(&self, module: &[u8]) -> Result<Vec<u8>> {
        let unsigned = &module[..unsigned_len(module)];
        let signature = self.cms_signature(unsigned)?;
        Ok(append_signature(unsigned, &signature))
    }
}

/// `module` followed by `signature`, the trailer and the magic, as sign-file writes them.
pub fn append_signature(module: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut signed = Vec::with_capacity(module.len() + signature.len() + TRAILER_LEN + MAGIC.len());
    signed.extend_from_slice(module);
    signed.extend_from_slice(signature);
    signed.extend_from_slice(&trailer(signature.len()));
    signed.extend_from_slice(MAGIC);
    signed
}

/// `struct module_signature` for a PKCS#7 signature of `len` bytes: algo, hash, signer and key
/// id lengths are 0 (the CMS message holds them), sig_len big-endian.
fn trailer(len: usize) -> [u8; TRAILER_LEN] {
    let mut trailer = [0u8; TRAILER_LEN];
    trailer[2] = ID_PKCS7;
    // sign-file stores the length in 32 bits too; a signature is a few hundred bytes.
    trailer[8..].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    trailer
}

/// The length of `module` without the PKCS#7 signatures appended to it (all of them: a module
/// signed twice carries both).
pub fn unsigned_len(module: &[u8]) -> usize {
    let mut len = module.len();
    while len >= MAGIC.len() + TRAILER_LEN && &module[len - MAGIC.len()..len] == MAGIC {
        let trailer = &module[len - MAGIC.len() - TRAILER_LEN..len - MAGIC.len()];
        let sig_len = u32::from_be_bytes([trailer[8], trailer[9], trailer[10], trailer[11]]) as usize;
        let Some(rest) = (len - MAGIC.len() - TRAILER_LEN).checked_sub(sig_len) else { break };
        if trailer[2] != ID_PKCS7 || sig_len == 0 {
            break;
        }
        len = rest;
    }
    len
}

/// Runs an external signer on a digest; its stdout is the raw signature.
fn run_external_signer(command: &str, hash: HashAlgorithm, digest: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("bash")
        .args(["-c", command, "xdkms-sign", hash.name()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running the signing command `{command}`"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A signer that exits without reading its input shows in its status, not here.
        let _ = stdin.write_all(digest);
    }
    let output = child.wait_with_output().with_context(|| format!("running the signing command `{command}`"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("the signing command `{command}` failed ({}): {}", output.status, stderr.trim_end());
    }
    if output.stdout.is_empty() {
        bail!("the signing command `{command}` wrote no signature on its standard output");
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_names_as_openssl_spells_them() {
        assert_eq!(HashAlgorithm::from_name("SHA256"), Some(HashAlgorithm::Sha256));
        assert_eq!(HashAlgorithm::from_name("sha2-384"), Some(HashAlgorithm::Sha384));
        assert_eq!(HashAlgorithm::from_name("SHA-1"), Some(HashAlgorithm::Sha1));
        assert_eq!(HashAlgorithm::from_name("sha3-512"), Some(HashAlgorithm::Sha3_512));
        assert_eq!(HashAlgorithm::from_name("md5"), None);
    }

    #[test]
    fn signatures_are_stripped_back_to_the_module() {
        let module = b"\x7fELF module bytes".to_vec();
        let once = append_signature(&module, b"first signature");
        let twice = append_signature(&once, b"second");
        assert_eq!(unsigned_len(&twice), module.len());
        assert_eq!(unsigned_len(&module), module.len());
        // A trailer whose length points before the file's start is not a signature.
        let mut bogus = module.clone();
        bogus.extend_from_slice(&trailer(1 << 20));
        bogus.extend_from_slice(MAGIC);
        assert_eq!(unsigned_len(&bogus), bogus.len());
    }
}
