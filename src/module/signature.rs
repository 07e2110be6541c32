//! The signature appended to a module (`~Module signature appended~`), read as kmod 30's
//! modinfo reads it: for PKCS#7, the signer's issuer CN, its serial number, the digest
//! algorithm and the signature; for the older id types, the fields the trailer points at.

use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier};
use der::Decode;

use super::ModuleImage;

/// What follows the signature: the trailer's magic.
pub const MAGIC: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature`: algo, hash, id_type, signer_len, key_id_len, 3 pad bytes, sig_len
/// (big endian).
pub const TRAILER_LEN: usize = 12;

/// kmod's names, indexed by the trailer's fields (kernel 3.7's tables).
const ALGOS: usize = 2;
const HASH_ALGOS: [&str; 9] = ["md4", "md5", "sha1", "rmd160", "sha256", "sha384", "sha512", "sha224", "sm3"];
const ID_TYPES: [&str; 3] = ["PGP", "X509", "PKCS#7"];
const ID_PKCS7: u8 = 2;

/// A module's signature as modinfo shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub id_type: &'static str,
    /// The signer's name (PKCS#7: its issuer's common name).
    pub signer: Vec<u8>,
    /// The key identifier (PKCS#7: the serial number, big-endian, without leading zeros).
    pub key_id: Vec<u8>,
    pub hash_algo: &'static str,
    pub signature: Vec<u8>,
}

impl Signature {
    /// The signature of `image`, or `None` where kmod finds none: no magic, a trailer out of
    /// range, or a PKCS#7 message that does not parse.
    pub fn read(image: &ModuleImage) -> Option<Signature> {
        let size = image.len().checked_sub((MAGIC.len() + TRAILER_LEN) as u64)?;
        let tail = image.read(size, (MAGIC.len() + TRAILER_LEN) as u64).ok()?;
        let (trailer, magic) = tail.split_at(TRAILER_LEN);
        if magic != MAGIC {
            return None;
        }
        let (algo, hash, id_type) = (trailer[0] as usize, trailer[1] as usize, trailer[2]);
        if algo >= ALGOS || hash >= HASH_ALGOS.len() || id_type as usize >= ID_TYPES.len() {
            return None;
        }
        let (signer_len, key_id_len) = (u64::from(trailer[3]), u64::from(trailer[4]));
        let sig_len = u64::from(u32::from_be_bytes([trailer[8], trailer[9], trailer[10], trailer[11]]));
        if sig_len == 0 || size < signer_len + key_id_len + sig_len {
            return None;
        }
        let signature = image.read(size - sig_len, sig_len).ok()?;
        if id_type == ID_PKCS7 {
            return from_pkcs7(&signature);
        }
        let key_id = image.read(size - sig_len - key_id_len, key_id_len).ok()?.into_owned();
        let signer = image.read(size - sig_len - key_id_len - signer_len, signer_len).ok()?.into_owned();
        Some(Signature {
            id_type: ID_TYPES[id_type as usize],
            signer,
            key_id,
            hash_algo: HASH_ALGOS[hash],
            signature: signature.into_owned(),
        })
    }

    /// The modinfo entries kmod adds after `.modinfo`'s, in its order, byte strings as it
    /// prints them (hex values as `AB:CD:...`, 20 bytes a line).
    pub fn modinfo_entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b"sig_id".to_vec(), self.id_type.as_bytes().to_vec()),
            (b"signer".to_vec(), self.signer.clone()),
            (b"sig_key".to_vec(), hex_lines(&self.key_id)),
            (b"sig_hashalgo".to_vec(), self.hash_algo.as_bytes().to_vec()),
            (b"signature".to_vec(), hex_lines(&self.signature)),
        ]
    }
}

/// The first signer of a PKCS#7/CMS SignedData message, as libcrypto's d2i_PKCS7 gives it.
fn from_pkcs7(der: &[u8]) -> Option<Signature> {
    let content = ContentInfo::from_der(der).ok()?;
    let signed: SignedData = content.content.decode_as().ok()?;
    let signer = signed.signer_infos.0.iter().next()?;
    let SignerIdentifier::IssuerAndSerialNumber(id) = &signer.sid else { return None };
    Some(Signature {
        id_type: ID_TYPES[ID_PKCS7 as usize],
        signer: common_name(&id.issuer).unwrap_or_default(),
        key_id: magnitude(id.serial_number.as_bytes()),
        hash_algo: hash_name(&signer.digest_alg.oid)?,
        signature: signer.signature.as_bytes().to_vec(),
    })
}

/// id-at-commonName (X.520).
const COMMON_NAME: const_oid::ObjectIdentifier = const_oid::ObjectIdentifier::new_unwrap("2.5.4.3");

/// kmod's `x509_name_to_str`: the first commonName's string, or, when there is none, the last
/// entry's (its loop ends on the last one); cut at a NUL, as strlen does.
fn common_name(name: &x509_cert::name::Name) -> Option<Vec<u8>> {
    let entries: Vec<_> = name.0.iter().flat_map(|rdn| rdn.0.iter()).collect();
    let entry = entries.iter().find(|e| e.oid == COMMON_NAME).or(entries.last())?;
    let value = entry.value.value();
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    Some(value[..end].to_vec())
}

/// A DER INTEGER's content as BN_bn2bin writes the number: its magnitude, big-endian, no
/// leading zero bytes (nothing for zero).
fn magnitude(integer: &[u8]) -> Vec<u8> {
    let negative = integer.first().is_some_and(|&b| b & 0x80 != 0);
    let mut bytes = integer.to_vec();
    if negative {
        // Two's complement: invert and add one.
        for b in bytes.iter_mut() {
            *b = !*b;
        }
        for b in bytes.iter_mut().rev() {
            let (sum, carry) = b.overflowing_add(1);
            *b = sum;
            if !carry {
                break;
            }
        }
    }
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.split_off(start)
}

/// kmod's names of the digests its table knows. Others (SHA-3) have none: kmod 30 then shows no
/// signature fields at all (observed with Debian's kmod 30 on modules sign-file signed with
/// sha3-256; its source indexes the name table with -1 there).
fn hash_name(oid: &const_oid::ObjectIdentifier) -> Option<&'static str> {
    const NAMES: [(&str, usize); 9] = [
        ("1.2.840.113549.2.4", 0),
        ("1.2.840.113549.2.5", 1),
        ("1.3.14.3.2.26", 2),
        ("1.3.36.3.2.1", 3),
        ("2.16.840.1.101.3.4.2.1", 4),
        ("2.16.840.1.101.3.4.2.2", 5),
        ("2.16.840.1.101.3.4.2.3", 6),
        ("2.16.840.1.101.3.4.2.4", 7),
        ("1.2.156.10197.1.401", 8),
    ];
    let text = oid.to_string();
    NAMES.iter().find(|(dotted, _)| *dotted == text).map(|&(_, i)| HASH_ALGOS[i])
}

/// kmod's `kmod_module_hex_to_str`: `AB:CD:...`, a newline and two tabs after every 20 bytes.
fn hex_lines(bytes: &[u8]) -> Vec<u8> {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        out.push_str(&format!("{b:02X}"));
        if i + 1 < bytes.len() {
            out.push(':');
            if (i + 1) % 20 == 0 {
                out.push_str("\n\t\t");
            }
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_wraps_as_kmod_does() {
        let bytes: Vec<u8> = (0..41).collect();
        let text = String::from_utf8(hex_lines(&bytes)).expect("ascii");
        let lines: Vec<&str> = text.split("\n\t\t").collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].ends_with("13:") && lines[1].starts_with("14:") && lines[2] == "28");
        assert!(hex_lines(&[]).is_empty());
    }

    #[test]
    fn serial_numbers_lose_their_sign_byte() {
        assert_eq!(magnitude(&[0x00, 0x80, 0x01]), [0x80, 0x01]);
        assert_eq!(magnitude(&[0x00]), Vec::<u8>::new());
        assert_eq!(magnitude(&[0xff]), [0x01]);
    }

    #[test]
    fn trailers_out_of_range_are_no_signature() {
        let mut module = b"\x7fELF".to_vec();
        module.extend_from_slice(&[0; 100]);
        // sig_len 0, then an id type past kmod's table.
        for trailer in [[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 4]] {
            let mut bytes = module.clone();
            bytes.extend_from_slice(&trailer);
            bytes.extend_from_slice(MAGIC);
            let image = ModuleImage::from_bytes(&bytes).expect("image");
            assert_eq!(Signature::read(&image), None);
        }
        // A PKCS#7 id whose message does not parse.
        let mut bytes = module.clone();
        bytes.extend_from_slice(&[0x30, 0x03, 0x02, 0x01]);
        bytes.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 4]);
        bytes.extend_from_slice(MAGIC);
        assert_eq!(Signature::read(&ModuleImage::from_bytes(&bytes).expect("image")), None);
    }
}
