//! A Machine Owner Key pair made in-process, with what dkms's `openssl req -new -x509 -nodes
//! -days 36500 -subj "/CN=DKMS module signing key" -newkey rsa:2048` writes: an RSA 2048 key as
//! unencrypted PKCS#8 PEM, and a self-signed X.509 v3 certificate in DER with a random 159-bit
//! serial, SHA-256 with RSA, and OpenSSL's v3_ca extensions (subject key identifier, authority
//! key identifier by key id, basicConstraints critical CA:TRUE), plus the extendedKeyUsage
//! codeSigning that dkms 3.4 adds (`-addext`).

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};
use const_oid::db::rfc5912::{ID_CE_EXT_KEY_USAGE, ID_KP_CODE_SIGNING, SHA_256_WITH_RSA_ENCRYPTION};
use der::asn1::{BitString, GeneralizedTime, Null, OctetString, UtcTime};
use der::Encode;
use rand_core::{OsRng, RngCore};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use sha2::Digest;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, SubjectKeyIdentifier};
use x509_cert::ext::{AsExtension, Extension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};
use zeroize::Zeroizing;

/// The subject dkms gives its key.
pub const DKMS_SUBJECT: &str = "CN=DKMS module signing key";
/// dkms's `-days 36500`.
pub const DKMS_DAYS: u64 = 36500;

/// A generated key (PEM, kept zeroized in memory) and its certificate (DER).
pub struct KeyPair {
    pub key_pem: Zeroizing<String>,
    pub certificate_der: Vec<u8>,
}

/// Generates an RSA 2048 key and a self-signed certificate for `subject` (RFC 4514, e.g.
/// `CN=name`) valid from now for `days`.
pub fn generate(subject: &str, days: u64) -> Result<KeyPair> {
    let key = RsaPrivateKey::new(&mut OsRng, 2048).map_err(|e| anyhow!("generating an RSA key: {e}"))?;
    let key_pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| anyhow!("encoding the key: {e}"))?;
    let public_der = key.to_public_key().to_public_key_der().map_err(|e| anyhow!("encoding the public key: {e}"))?;
    let spki = SubjectPublicKeyInfoOwned::try_from(public_der.as_bytes()).map_err(|e| anyhow!("{e}"))?;
    let name = Name::from_str(subject).map_err(|e| anyhow!("the subject {subject}: {e}"))?;
    let tbs = tbs_certificate(name, spki, days).map_err(|e| anyhow!("building the certificate: {e}"))?;
    let tbs_der = tbs.to_der().map_err(|e| anyhow!("encoding the certificate: {e}"))?;
    let signature = key
        .sign_with_rng(&mut OsRng, Pkcs1v15Sign::new::<sha2::Sha256>(), &sha2::Sha256::digest(&tbs_der))
        .map_err(|e| anyhow!("signing the certificate: {e}"))?;
    let certificate = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: sha256_with_rsa(),
        signature: BitString::from_bytes(&signature).map_err(|e| anyhow!("{e}"))?,
    };
    let certificate_der = certificate.to_der().map_err(|e| anyhow!("encoding the certificate: {e}"))?;
    Ok(KeyPair { key_pem, certificate_der })
}

fn sha256_with_rsa() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned { oid: SHA_256_WITH_RSA_ENCRYPTION, parameters: Some(Null.into()) }
}

fn tbs_certificate(name: Name, spki: SubjectPublicKeyInfoOwned, days: u64) -> der::Result<TbsCertificate> {
    // RFC 5280's key identifier method 1, as OpenSSL's `subjectKeyIdentifier=hash`: SHA-1 of
    // the subjectPublicKey bits.
    let key_id = OctetString::new(sha1::Sha1::digest(spki.subject_public_key.raw_bytes()).to_vec())?;
    let subject_key_id = SubjectKeyIdentifier(key_id.clone());
    let authority_key_id = AuthorityKeyIdentifier { key_identifier: Some(key_id), ..Default::default() };
    let basic_constraints = BasicConstraints { ca: true, path_len_constraint: None };
    let extensions: Vec<Extension> = vec![
        subject_key_id.to_extension(&name, &[])?,
        authority_key_id.to_extension(&name, &[])?,
        basic_constraints.to_extension(&name, &[])?,
        // Not critical, as OpenSSL writes it (x509-cert would mark it critical).
        Extension {
            extn_id: ID_CE_EXT_KEY_USAGE,
            critical: false,
            extn_value: OctetString::new(ExtendedKeyUsage(vec![ID_KP_CODE_SIGNING]).to_der()?)?,
        },
    ];
    let now = SystemTime::now();
    let validity =
        Validity { not_before: time(now)?, not_after: time(now + Duration::from_secs(days.saturating_mul(86400)))? };
    Ok(TbsCertificate {
        version: Version::V3,
        serial_number: random_serial()?,
        signature: sha256_with_rsa(),
        issuer: name.clone(),
        validity,
        subject: name,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    })
}

/// RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
fn time(at: SystemTime) -> der::Result<Time> {
    match UtcTime::from_system_time(at) {
        Ok(utc) => Ok(Time::UtcTime(utc)),
        Err(_) => Ok(Time::GeneralTime(GeneralizedTime::from_system_time(at)?)),
    }
}

/// A random serial, as OpenSSL's `req -x509` draws one: positive, 20 bytes.
fn random_serial() -> der::Result<SerialNumber> {
    let mut bytes = [0u8; 20];
    OsRng.fill_bytes(&mut bytes);
    // Positive and without a leading zero byte, so it stays 20 bytes long.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::new(&bytes)
}
