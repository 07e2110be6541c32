//! Names that become path components (module, version, kernel release, arch, module file
//! names): each must be one component, or a crafted `-m ..`, `-k ../x` or `PACKAGE_NAME=../x`
//! would name a directory outside the tree it belongs in.

use std::fmt;

/// Why a name cannot be used as a path component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadName {
    Empty,
    Dots,
    Slash,
    Nul,
}

impl fmt::Display for BadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadName::Empty => "it is empty",
            BadName::Dots => "'.' and '..' are not names",
            BadName::Slash => "it contains '/'",
            BadName::Nul => "it contains a NUL byte",
        })
    }
}

/// Checks that `name` is a single path component: not empty, not `.` or `..`, no `/` or NUL.
/// Any other byte is allowed, as in the file names the kernel and dkms accept.
pub fn check_component(name: &str) -> Result<(), BadName> {
    if name.is_empty() {
        Err(BadName::Empty)
    } else if name == "." || name == ".." {
        Err(BadName::Dots)
    } else if name.contains('/') {
        Err(BadName::Slash)
    } else if name.contains('\0') {
        Err(BadName::Nul)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_components_only() {
        for good in ["v4l2loopback", "0.12.7", "6.1.0-57-amd64", "x86_64", "1.0~rc1+dfsg", "a b", "ü", "..."] {
            assert_eq!(check_component(good), Ok(()), "{good}");
        }
        assert_eq!(check_component(""), Err(BadName::Empty));
        assert_eq!(check_component("."), Err(BadName::Dots));
        assert_eq!(check_component(".."), Err(BadName::Dots));
        assert_eq!(check_component("../x"), Err(BadName::Slash));
        assert_eq!(check_component("/"), Err(BadName::Slash));
        assert_eq!(check_component("a\0b"), Err(BadName::Nul));
    }
}
