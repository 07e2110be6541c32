//! Signing keys and certificates read as sign-file reads them: a private key from the first
//! key block of a PEM file (other blocks, such as the certificate in the kernel's
//! signing_key.pem, are skipped) or from DER; PKCS#8 (encrypted with KBUILD_SIGN_PIN or not),
//! PKCS#1 RSA and SEC1 EC keys; a certificate in DER when the file starts as DER does
//! (`30 81`..`30 84`), else the first CERTIFICATE block.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use const_oid::db::rfc5912::{
    ECDSA_WITH_SHA_224, ECDSA_WITH_SHA_256, ECDSA_WITH_SHA_384, ECDSA_WITH_SHA_512, ID_EC_PUBLIC_KEY, RSA_ENCRYPTION,
    SECP_256_R_1, SECP_384_R_1,
};
use const_oid::ObjectIdentifier;
use der::asn1::{Null, OctetString};
use der::referenced::OwnedToRef;
use der::Decode;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo};
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;

use super::HashAlgorithm;

/// ECDSA with SHA-1 (RFC 3279) and with SHA-3 (RFC 8692's NIST arc).
const ECDSA_WITH_SHA_1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.1");
const ECDSA_WITH_SHA3_256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.10");
const ECDSA_WITH_SHA3_384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.11");
const ECDSA_WITH_SHA3_512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.12");
const ID_CE_SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");

/// The PEM labels of private keys, as OpenSSL's PEM_read_bio_PrivateKey accepts them.
const KEY_LABELS: [&str; 4] = ["PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];
const CERTIFICATE_LABELS: [&str; 2] = ["CERTIFICATE", "X509 CERTIFICATE"];

/// A private key xdkms can sign with.
pub enum PrivateKey {
    Rsa(Box<RsaPrivateKey>),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

impl std::fmt::Debug for PrivateKey {
    // Never the key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({})", self.kind())
    }
}

impl PrivateKey {
    /// Reads the key in `path`; `passphrase` opens an encrypted PKCS#8 key (sign-file takes it
    /// from KBUILD_SIGN_PIN).
    pub fn read(path: &Path, passphrase: Option<&[u8]>) -> Result<PrivateKey> {
        let bytes = std::fs::read(path).with_context(|| format!("reading the signing key {}", path.display()))?;
        Self::parse(&bytes, passphrase).with_context(|| format!("signing key {}", path.display()))
    }

    /// A key from the bytes of a key file (PEM or DER).
    pub fn parse(bytes: &[u8], passphrase: Option<&[u8]>) -> Result<PrivateKey> {
        if !looks_like_pem(bytes) {
            return Self::from_der(bytes, passphrase);
        }
        let block = pem_blocks(bytes)
            .find(|block| KEY_LABELS.contains(&block.label))
            .ok_or_else(|| anyhow!("no private key in it (no PEM block labelled {})", KEY_LABELS.join(", ")))?;
        let der = block.decode()?;
        match block.label {
            "PRIVATE KEY" => Self::from_pkcs8(PrivateKeyInfo::from_der(&der).map_err(malformed)?),
            "ENCRYPTED PRIVATE KEY" => Self::from_encrypted(&der, passphrase),
            "RSA PRIVATE KEY" => Self::from_pkcs1(&der),
            _ => Self::from_sec1(&der),
        }
    }

    /// DER: PKCS#8 (plain, then encrypted), then PKCS#1, then SEC1.
    fn from_der(der: &[u8], passphrase: Option<&[u8]>) -> Result<PrivateKey> {
        if let Ok(info) = PrivateKeyInfo::from_der(der) {
            return Self::from_pkcs8(info);
        }
        if EncryptedPrivateKeyInfo::from_der(der).is_ok() {
            return Self::from_encrypted(der, passphrase);
        }
        Self::from_pkcs1(der)
            .or_else(|_| Self::from_sec1(der))
            .map_err(|_| anyhow!("not a private key: neither PEM nor a DER PKCS#8, PKCS#1 or SEC1 key"))
    }

    fn from_encrypted(der: &[u8], passphrase: Option<&[u8]>) -> Result<PrivateKey> {
        let encrypted = EncryptedPrivateKeyInfo::from_der(der).map_err(malformed)?;
        let Some(passphrase) = passphrase else {
            bail!("the key is encrypted: set KBUILD_SIGN_PIN to its passphrase");
        };
        let wrong = || anyhow!("wrong passphrase: KBUILD_SIGN_PIN does not open this key");
        // A wrong passphrase shows as bad CBC padding (pkcs5 0.7 reports that as EncryptFailed),
        // or, one time in 256, as padding that happens to be valid around bytes that are no key.
        let decrypted = encrypted.decrypt(passphrase).map_err(|e| match e {
            pkcs8::Error::EncryptedPrivateKey(pkcs5::Error::DecryptFailed | pkcs5::Error::EncryptFailed) => wrong(),
            e => anyhow!("cannot decrypt the key: {e}"),
        })?;
        Self::from_pkcs8(decrypted.decode_msg::<PrivateKeyInfo>().map_err(|_| wrong())?)
    }

    fn from_pkcs8(info: PrivateKeyInfo<'_>) -> Result<PrivateKey> {
        let algorithm = info.algorithm.oid;
        if algorithm == RSA_ENCRYPTION {
            return Ok(PrivateKey::Rsa(Box::new(RsaPrivateKey::try_from(info).map_err(malformed)?)));
        }
        if algorithm != ID_EC_PUBLIC_KEY {
            bail!("unsupported key type ({algorithm}): xdkms signs with RSA, P-256 and P-384 keys");
        }
        match info.algorithm.parameters_oid().map_err(malformed)? {
            SECP_256_R_1 => Ok(PrivateKey::P256(p256::ecdsa::SigningKey::try_from(info).map_err(malformed)?)),
            SECP_384_R_1 => Ok(PrivateKey::P384(p384::ecdsa::SigningKey::try_from(info).map_err(malformed)?)),
            curve => bail!("unsupported elliptic curve ({curve}): xdkms signs with P-256 and P-384 keys"),
        }
    }

    fn from_pkcs1(der: &[u8]) -> Result<PrivateKey> {
        use pkcs1::DecodeRsaPrivateKey;
        Ok(PrivateKey::Rsa(Box::new(RsaPrivateKey::from_pkcs1_der(der).map_err(malformed)?)))
    }

    fn from_sec1(der: &[u8]) -> Result<PrivateKey> {
        let key = sec1::EcPrivateKey::from_der(der).map_err(malformed)?;
        match key.parameters.and_then(|p| p.named_curve()) {
            Some(SECP_256_R_1) => Ok(PrivateKey::P256(
                p256::ecdsa::SigningKey::from_slice(key.private_key).map_err(|_| anyhow!("invalid P-256 key"))?,
            )),
            Some(SECP_384_R_1) => Ok(PrivateKey::P384(
                p384::ecdsa::SigningKey::from_slice(key.private_key).map_err(|_| anyhow!("invalid P-384 key"))?,
            )),
            Some(curve) => bail!("unsupported elliptic curve ({curve}): xdkms signs with P-256 and P-384 keys"),
            None => bail!("the EC key does not name its curve"),
        }
    }

    /// A name for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            PrivateKey::Rsa(_) => "RSA",
            PrivateKey::P256(_) => "P-256",
            PrivateKey::P384(_) => "P-384",
        }
    }

    /// Fails unless `certificate` holds this key's public half (OpenSSL's CMS_add1_signer
    /// refuses a mismatch the same way).
    pub fn check_matches(&self, certificate: &Certificate) -> Result<()> {
        let spki = certificate.public_key.owned_to_ref();
        let matches =
            match self {
                PrivateKey::Rsa(key) => RsaPublicKey::try_from(spki).is_ok_and(|public| public == key.to_public_key()),
                PrivateKey::P256(key) => p256::PublicKey::try_from(spki)
                    .is_ok_and(|public| public == p256::PublicKey::from(key.verifying_key())),
                PrivateKey::P384(key) => p384::PublicKey::try_from(spki)
                    .is_ok_and(|public| public == p384::PublicKey::from(key.verifying_key())),
            };
        if !matches {
            bail!(
                "the signing key ({}) does not match the certificate {}: its public key is another one",
                self.kind(),
                certificate.source
            );
        }
        Ok(())
    }

    /// Fails where the digest cannot be signed with this key (ECDSA needs at least half the
    /// curve's size: SHA-1 and SHA-224 with P-384 are refused).
    pub fn check_hash(&self, hash: HashAlgorithm) -> Result<()> {
        let too_short = matches!(self, PrivateKey::P384(_)) && hash.digest(b"").len() < 24;
        if too_short {
            bail!("a {hash} digest is too short for a {} key: use sha256 or longer", self.kind());
        }
        Ok(())
    }

    /// The SignerInfo's signatureAlgorithm, as OpenSSL writes it: rsaEncryption (NULL
    /// parameters) for any RSA digest, ecdsa-with-<digest> (no parameters) for ECDSA.
    pub fn signature_algorithm(&self, hash: HashAlgorithm) -> AlgorithmIdentifierOwned {
        match self {
            PrivateKey::Rsa(_) => rsa_encryption(),
            PrivateKey::P256(_) | PrivateKey::P384(_) => ecdsa_with(hash),
        }
    }

    /// The raw signature of a digest: PKCS#1 v1.5 with the digest's DigestInfo, or a DER
    /// ECDSA-Sig-Value (RFC 6979 nonces).
    pub fn sign_digest(&self, hash: HashAlgorithm, digest: &[u8]) -> Result<Vec<u8>> {
        let signed = match self {
            PrivateKey::Rsa(key) => {
                let padding = match hash {
                    HashAlgorithm::Sha1 => Pkcs1v15Sign::new::<sha1::Sha1>(),
                    HashAlgorithm::Sha224 => Pkcs1v15Sign::new::<sha2::Sha224>(),
                    HashAlgorithm::Sha256 => Pkcs1v15Sign::new::<sha2::Sha256>(),
                    HashAlgorithm::Sha384 => Pkcs1v15Sign::new::<sha2::Sha384>(),
                    HashAlgorithm::Sha512 => Pkcs1v15Sign::new::<sha2::Sha512>(),
                    HashAlgorithm::Sha3_256 => Pkcs1v15Sign::new::<sha3::Sha3_256>(),
                    HashAlgorithm::Sha3_384 => Pkcs1v15Sign::new::<sha3::Sha3_384>(),
                    HashAlgorithm::Sha3_512 => Pkcs1v15Sign::new::<sha3::Sha3_512>(),
                };
                // Blinded with fresh randomness; PKCS#1 v1.5's output does not depend on it.
                key.sign_with_rng(&mut rand_core::OsRng, padding, digest).map_err(|e| anyhow!("RSA signing: {e}"))?
            }
            PrivateKey::P256(key) => {
                let signature: p256::ecdsa::Signature =
                    key.sign_prehash(digest).map_err(|e| anyhow!("ECDSA signing: {e}"))?;
                signature.to_der().as_bytes().to_vec()
            }
            PrivateKey::P384(key) => {
                let signature: p384::ecdsa::Signature =
                    key.sign_prehash(digest).map_err(|e| anyhow!("ECDSA signing: {e}"))?;
                signature.to_der().as_bytes().to_vec()
            }
        };
        Ok(signed)
    }
}

fn rsa_encryption() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned { oid: RSA_ENCRYPTION, parameters: Some(Null.into()) }
}

fn ecdsa_with(hash: HashAlgorithm) -> AlgorithmIdentifierOwned {
    let oid = match hash {
        HashAlgorithm::Sha1 => ECDSA_WITH_SHA_1,
        HashAlgorithm::Sha224 => ECDSA_WITH_SHA_224,
        HashAlgorithm::Sha256 => ECDSA_WITH_SHA_256,
        HashAlgorithm::Sha384 => ECDSA_WITH_SHA_384,
        HashAlgorithm::Sha512 => ECDSA_WITH_SHA_512,
        HashAlgorithm::Sha3_256 => ECDSA_WITH_SHA3_256,
        HashAlgorithm::Sha3_384 => ECDSA_WITH_SHA3_384,
        HashAlgorithm::Sha3_512 => ECDSA_WITH_SHA3_512,
    };
    AlgorithmIdentifierOwned { oid, parameters: None }
}

/// What a signature needs of the signer's X.509 certificate.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// The file it came from, for messages.
    pub source: String,
    pub issuer: Name,
    pub serial: SerialNumber,
    pub subject_key_id: Option<Vec<u8>>,
    pub public_key: SubjectPublicKeyInfoOwned,
}

impl Certificate {
    pub fn read(path: &Path) -> Result<Certificate> {
        let bytes = std::fs::read(path).with_context(|| format!("reading the certificate {}", path.display()))?;
        Self::parse(&bytes, &path.display().to_string()).with_context(|| format!("certificate {}", path.display()))
    }

    /// A certificate from a file's bytes; `source` names it in messages.
    pub fn parse(bytes: &[u8], source: &str) -> Result<Certificate> {
        // sign-file's test: DER when the outer SEQUENCE has a long-form length.
        let der = if bytes.len() >= 2 && bytes[0] == 0x30 && (0x81..=0x84).contains(&bytes[1]) {
            bytes.to_vec()
        } else {
            pem_blocks(bytes)
                .find(|block| CERTIFICATE_LABELS.contains(&block.label))
                .ok_or_else(|| anyhow!("not an X.509 certificate: neither DER nor a PEM CERTIFICATE block"))?
                .decode()?
        };
        let certificate = x509_cert::Certificate::from_der(&der)
            .map_err(|e| anyhow!("not a valid X.509 certificate (truncated or damaged?): {e}"))?;
        let tbs = certificate.tbs_certificate;
        let subject_key_id = tbs
            .extensions
            .iter()
            .flatten()
            .find(|extension| extension.extn_id == ID_CE_SUBJECT_KEY_IDENTIFIER)
            .map(|extension| OctetString::from_der(extension.extn_value.as_bytes()).map(OctetString::into_bytes))
            .transpose()
            .map_err(malformed)?;
        Ok(Certificate {
            source: source.to_string(),
            issuer: tbs.issuer,
            serial: tbs.serial_number,
            subject_key_id,
            public_key: tbs.subject_public_key_info,
        })
    }

    /// The signatureAlgorithm for a signature made outside (an external signer) with the key
    /// this certificate holds.
    pub fn signature_algorithm(&self, hash: HashAlgorithm) -> Result<AlgorithmIdentifierOwned> {
        match self.public_key.algorithm.oid {
            RSA_ENCRYPTION => Ok(rsa_encryption()),
            ID_EC_PUBLIC_KEY => Ok(ecdsa_with(hash)),
            other => bail!("{}: unsupported key type ({other}) in the certificate", self.source),
        }
    }
}

fn malformed(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("malformed: {e}")
}

/// True when the bytes hold PEM text (a BEGIN line somewhere), as opposed to DER.
fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// One `-----BEGIN X-----` ... `-----END X-----` block of a PEM file.
struct PemBlock<'a> {
    label: &'a str,
    text: &'a [u8],
}

impl PemBlock<'_> {
    fn decode(&self) -> Result<Vec<u8>> {
        if self.text.windows(10).any(|w| w == b"Proc-Type:") {
            bail!(
                "the key is encrypted in OpenSSL's legacy PEM format, which xdkms does not read: \
                 convert it with `openssl pkcs8 -topk8` (PKCS#8)"
            );
        }
        let (_, der) =
            pem_rfc7468::decode_vec(self.text).map_err(|e| anyhow!("damaged {} PEM block: {e}", self.label))?;
        Ok(der)
    }
}

/// The PEM blocks of a file, in order; text between them (comments, `openssl x509 -text`
/// output) is skipped as OpenSSL skips it.
fn pem_blocks(bytes: &[u8]) -> impl Iterator<Item = PemBlock<'_>> {
    let mut rest = bytes;
    std::iter::from_fn(move || loop {
        let begin = find(rest, b"-----BEGIN ")?;
        let after_begin = &rest[begin + 11..];
        let label_end = find(after_begin, b"-----")?;
        let label = std::str::from_utf8(&after_begin[..label_end]).unwrap_or("");
        let end_marker = format!("-----END {label}-----");
        let Some(end) = find(after_begin, end_marker.as_bytes()) else {
            rest = after_begin;
            continue;
        };
        let block_end = begin + 11 + end + end_marker.len();
        let text = &rest[begin..block_end];
        rest = &rest[block_end..];
        return Some(PemBlock { label, text });
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_found_among_other_text() {
        let text = b"junk\n-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n\
                     more\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let labels: Vec<&str> = pem_blocks(text).map(|b| b.label).collect();
        assert_eq!(labels, ["EC PARAMETERS", "CERTIFICATE"]);
        assert!(pem_blocks(b"-----BEGIN X-----\nno end").next().is_none());
    }

    #[test]
    fn garbage_is_no_key_and_no_certificate() {
        assert!(PrivateKey::parse(b"not a key", None).is_err());
        assert!(Certificate::parse(b"\x30\x82\x01", "cut.der").is_err());
        assert!(Certificate::parse(b"", "empty.der").is_err());
    }
}
