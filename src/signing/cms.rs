//! The CMS SignedData of a module signature, as OpenSSL's CMS_sign writes it for sign-file
//! (`CMS_NOCERTS | CMS_BINARY | CMS_DETACHED | CMS_NOATTR | CMS_NOSMIMECAP`): detached id-data
//! content, one digest algorithm (parameters absent), one SignerInfo without signed or unsigned
//! attributes, no certificates. Built from RustCrypto's cms types: their builder always adds
//! signed attributes, which the kernel's sign-file leaves out.

use cms::cert::IssuerAndSerialNumber;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos};
use const_oid::db::rfc5911::{ID_DATA, ID_SIGNED_DATA};
use der::asn1::{Any, OctetString, SetOfVec};
use der::Encode;
use spki::AlgorithmIdentifierOwned;
use x509_cert::ext::pkix::SubjectKeyIdentifier;

use super::{Certificate, HashAlgorithm, SignerId};

/// The DER ContentInfo holding the SignedData for one raw `signature` by the key of
/// `certificate`, named as `signer_id` says (the caller has checked that a subject key
/// identifier exists where one is asked for).
pub fn signed_data(
    hash: HashAlgorithm,
    certificate: &Certificate,
    signer_id: SignerId,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: Vec<u8>,
) -> der::Result<Vec<u8>> {
    let digest_algorithm = AlgorithmIdentifierOwned { oid: hash.oid(), parameters: None };
    // RFC 5652 5.3: version 1 with issuerAndSerialNumber, 3 with a subject key identifier; the
    // SignedData's version follows (5.1).
    let (version, sid) = match (signer_id, &certificate.subject_key_id) {
        (SignerId::SubjectKeyId, Some(id)) => (
            CmsVersion::V3,
            SignerIdentifier::SubjectKeyIdentifier(SubjectKeyIdentifier(OctetString::new(id.clone())?)),
        ),
        _ => (
            CmsVersion::V1,
            SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: certificate.issuer.clone(),
                serial_number: certificate.serial.clone(),
            }),
        ),
    };
    let signer_info = SignerInfo {
        version,
        sid,
        digest_alg: digest_algorithm.clone(),
        signed_attrs: None,
        signature_algorithm,
        signature: OctetString::new(signature)?,
        unsigned_attrs: None,
    };
    let signed = SignedData {
        version,
        digest_algorithms: SetOfVec::try_from(vec![digest_algorithm])?,
        encap_content_info: EncapsulatedContentInfo { econtent_type: ID_DATA, econtent: None },
        certificates: None,
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info])?),
    };
    ContentInfo { content_type: ID_SIGNED_DATA, content: Any::encode_from(&signed)? }.to_der()
}
