//! Kernel module files: names, compression, and what their ELF image declares.

pub mod elf;
pub mod file;
pub mod signature;

pub use elf::{Export, Import, ModuleElf};
pub use file::{Compression, ModuleImage};
pub use signature::Signature;

/// The file-name endings a kernel module can have, longest first so the first match wins.
pub const MODULE_EXTENSIONS: [&str; 4] = [".ko.zst", ".ko.xz", ".ko.gz", ".ko"];

/// True when `file_name` names a module: it ends in a module extension and is longer than it.
pub fn is_module_file_name(file_name: &[u8]) -> bool {
    MODULE_EXTENSIONS.iter().any(|ext| file_name.len() > ext.len() && file_name.ends_with(ext.as_bytes()))
}

/// The module name kmod derives from a path: the basename cut at its first `.`, with every `-`
/// turned into `_` (`foo-bar.ko.xz` is `foo_bar`; `a.b.ko` is `a`).
pub fn modname_from_path(path: &[u8]) -> Vec<u8> {
    let base = match path.iter().rposition(|&b| b == b'/') {
        Some(slash) => &path[slash + 1..],
        None => path,
    };
    let stem = match base.iter().position(|&b| b == b'.') {
        Some(dot) => &base[..dot],
        None => base,
    };
    stem.iter().map(|&b| if b == b'-' { b'_' } else { b }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modname_follows_kmod() {
        assert_eq!(modname_from_path(b"kernel/fs/foo-bar.ko.xz"), b"foo_bar");
        assert_eq!(modname_from_path(b"/x/a.b.ko"), b"a");
        assert_eq!(modname_from_path(b"plain.ko"), b"plain");
    }

    #[test]
    fn module_file_names() {
        assert!(is_module_file_name(b"a.ko"));
        assert!(is_module_file_name(b"a.ko.zst"));
        assert!(!is_module_file_name(b".ko"));
        assert!(!is_module_file_name(b"a.ko.bz2"));
        assert!(!is_module_file_name(b"a.o"));
    }
}
