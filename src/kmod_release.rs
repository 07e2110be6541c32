//! The target's kmod: which release it is and which decompressors it was built with, read off
//! the root's kmod binary, and the module file names that depmod of that build indexes.
//!
//! Every kmod binary carries both facts as string literals, because `kmod --version` prints
//! them: `kmod version 30` and the feature string (`+ZSTD +XZ -ZLIB +LIBCRYPTO -EXPERIMENTAL` in
//! Debian 12, `+ZSTD +XZ +ZLIB +OPENSSL` in kmod 34). Reading them needs no emulator, so a root of
//! any architecture can be asked.

use std::io::Read;
use std::path::{Path, PathBuf};

use cross::Sysroot;

/// The release whose behaviour xdkms reproduces when the root has no kmod (Debian 12's).
pub const DEFAULT_VERSION: u32 = 30;

/// Where distributions install the depmod the target runs, and kmod itself; the first that is a
/// kmod binary answers.
pub const CANDIDATES: [&str; 8] = [
    "/usr/sbin/depmod",
    "/sbin/depmod",
    "/usr/bin/depmod",
    "/bin/depmod",
    "/usr/bin/kmod",
    "/bin/kmod",
    "/usr/sbin/kmod",
    "/sbin/kmod",
];

/// Binaries bigger than this are not kmod (a static kmod is a few MB); they are not read.
const LARGEST_BINARY: u64 = 64 << 20;

/// The module compressions a kmod build reads. Modules in other formats are not modules to it:
/// its depmod skips them (Debian 12's kmod has no zlib, so `.ko.gz` files are not indexed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compressions {
    pub zstd: bool,
    pub xz: bool,
    pub zlib: bool,
}

impl Compressions {
    /// All three, what xdkms reads when nothing says otherwise.
    pub const ALL: Compressions = Compressions { zstd: true, xz: true, zlib: true };

    /// Reads a feature string as `kmod --version` prints it (`+ZSTD +XZ -ZLIB +LIBCRYPTO`).
    /// A compression the string does not mention is one the build lacks; other features are
    /// ignored.
    pub fn parse(features: &str) -> Result<Compressions, String> {
        let mut found = Compressions { zstd: false, xz: false, zlib: false };
        for token in features.split_whitespace() {
            let (enabled, name) = match token.split_at(token.len().min(1)) {
                ("+", name) => (true, name),
                ("-", name) => (false, name),
                _ => {
                    return Err(format!(
                        "feature {token:?}: write each as +NAME or -NAME, as `kmod --version` prints them \
                         (e.g. \"+ZSTD +XZ -ZLIB\")"
                    ))
                }
            };
            match name.to_ascii_uppercase().as_str() {
                "ZSTD" => found.zstd = enabled,
                "XZ" => found.xz = enabled,
                "ZLIB" => found.zlib = enabled,
                _ => {}
            }
        }
        Ok(found)
    }

    /// The module file name endings this build takes, longest first.
    fn extensions(self) -> impl Iterator<Item = &'static str> {
        [(self.zstd, ".ko.zst"), (self.xz, ".ko.xz"), (self.zlib, ".ko.gz"), (true, ".ko")]
            .into_iter()
            .filter_map(|(on, ext)| on.then_some(ext))
    }

    /// True when depmod of this build takes `file_name` as a module: it ends in an extension the
    /// build reads and is longer than it.
    pub fn is_module_file_name(self, file_name: &[u8]) -> bool {
        self.extensions().any(|ext| file_name.len() > ext.len() && file_name.ends_with(ext.as_bytes()))
    }
}

/// As `kmod --version` prints them.
impl std::fmt::Display for Compressions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = |on: bool| if on { '+' } else { '-' };
        write!(f, "{}ZSTD {}XZ {}ZLIB", sign(self.zstd), sign(self.xz), sign(self.zlib))
    }
}

/// A kmod build: its major release and its decompressors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KmodRelease {
    pub version: u32,
    pub compressions: Compressions,
}

impl Default for KmodRelease {
    fn default() -> Self {
        KmodRelease { version: DEFAULT_VERSION, compressions: Compressions::ALL }
    }
}

/// A kmod found in a root, and where (the path as the target sees it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub release: KmodRelease,
    pub binary: PathBuf,
}

/// The kmod the root runs as depmod, if it has one. A depmod that is not kmod (busybox's) or no
/// depmod at all is `None`: the caller keeps its default.
pub fn detect(root: &Sysroot) -> Option<Detected> {
    CANDIDATES.iter().find_map(|candidate| {
        let host = root.resolve(candidate).ok()?;
        let file = root.open_file(&host).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.len() > LARGEST_BINARY {
            return None;
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(LARGEST_BINARY).read_to_end(&mut bytes).ok()?;
        let release = parse_binary(&bytes)?;
        Some(Detected { release, binary: PathBuf::from(candidate) })
    })
}

/// The release and features a kmod binary prints for `--version`, from its string literals.
pub fn parse_binary(bytes: &[u8]) -> Option<KmodRelease> {
    let strings = || bytes.split(|&b| b == 0);
    let version = strings().find_map(|s| {
        let number = s.strip_prefix(b"kmod version ")?;
        let digits = number.iter().take_while(|b| b.is_ascii_digit()).count();
        let rest = &number[digits..];
        if digits == 0 || !(rest.is_empty() || rest[0] == b'.' || rest[0] == b'-') {
            return None;
        }
        std::str::from_utf8(&number[..digits]).ok()?.parse().ok()
    })?;
    let compressions = strings().find_map(|s| {
        let text = std::str::from_utf8(s).ok()?;
        let tokens: Vec<&str> = text.split(' ').collect();
        let well_formed = tokens.iter().all(|t| {
            t.len() > 1
                && (t.starts_with('+') || t.starts_with('-'))
                && t[1..].bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        });
        let names_a_codec = tokens.iter().any(|t| matches!(t.get(1..), Some("XZ" | "ZSTD" | "ZLIB")));
        (well_formed && names_a_codec).then(|| Compressions::parse(text).ok()).flatten()
    })?;
    Some(KmodRelease { version, compressions })
}

/// What a command line and the root say together: each explicit value wins, then the root's kmod,
/// then the default.
pub fn resolve(root: Option<&Path>, version: Option<u32>, features: Option<&str>) -> Result<KmodRelease, String> {
    let explicit_features = features.map(Compressions::parse).transpose()?;
    let detected = if version.is_some() && explicit_features.is_some() {
        None
    } else {
        let handle = match root {
            Some(dir) => Sysroot::new(dir).ok(),
            None => Sysroot::host().ok(),
        };
        handle.as_ref().and_then(detect).map(|d| d.release)
    };
    let fallback = detected.unwrap_or_default();
    Ok(KmodRelease {
        version: version.unwrap_or(fallback.version),
        compressions: explicit_features.unwrap_or(fallback.compressions),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_strings_of_real_builds() {
        let debian = Compressions::parse("+ZSTD +XZ -ZLIB +LIBCRYPTO -EXPERIMENTAL").expect("parse");
        assert_eq!(debian, Compressions { zstd: true, xz: true, zlib: false });
        assert!(debian.is_module_file_name(b"a.ko.xz"));
        assert!(!debian.is_module_file_name(b"a.ko.gz"));
        assert!(debian.is_module_file_name(b"a.ko"));
        assert!(!debian.is_module_file_name(b".ko"));
        assert_eq!(Compressions::parse("+XZ").expect("parse"), Compressions { zstd: false, xz: true, zlib: false });
        assert!(Compressions::parse("ZSTD").is_err());
    }

    #[test]
    fn release_and_features_from_string_literals() {
        let binary = b"\x7fELF\0junk\0kmod version 34.2\0+ZSTD +XZ +ZLIB +OPENSSL\0usage\0";
        assert_eq!(parse_binary(binary), Some(KmodRelease { version: 34, compressions: Compressions::ALL }));
        let old = b"kmod version 30\0\0+ZSTD +XZ -ZLIB +LIBCRYPTO -EXPERIMENTAL\0";
        assert_eq!(parse_binary(old).map(|r| (r.version, r.compressions.zlib)), Some((30, false)));
        assert_eq!(parse_binary(b"BusyBox v1.35.0\0depmod\0"), None);
        assert_eq!(parse_binary(b"kmod version x\0+XZ\0"), None);
    }
}
