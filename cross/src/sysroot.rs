//! Paths inside a target root: every lookup resolves symlinks as if the root were `/`.
//!
//! A sysroot unpacked from packages is full of absolute symlinks (`lib/modules/K/build ->
//! /usr/src/linux-headers-K`, `lib -> /usr/lib`). Followed by the host kernel they would escape to the
//! build host's own files; here they are resolved against the root, `..` stops at the root, and
//! nothing a lookup returns lies outside it (the same rule as `openat2(RESOLVE_IN_ROOT)`).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Linux's limit on symlinks followed in one lookup (MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// A directory used as `/` for every path lookup made through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysroot {
    root: PathBuf,
}

impl Sysroot {
    /// Opens `root`, which must be an existing directory. The host path is made absolute and
    /// canonical once, so later results are plain host paths below it.
    pub fn new(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = root.as_ref();
        let canonical = std::fs::canonicalize(root)
            .map_err(|e| io::Error::new(e.kind(), format!("sysroot {}: {e}", root.display())))?;
        if !canonical.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("sysroot {} is not a directory", root.display()),
            ));
        }
        Ok(Sysroot { root: canonical })
    }

    /// The running system's own root, for commands run without `--root`/`-b`.
    pub fn host() -> Self {
        Sysroot { root: PathBuf::from("/") }
    }

    /// The host path of the root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True when this sysroot is the host's `/`.
    pub fn is_host(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The host path for `path` as the target sees it (absolute, or relative to the target's `/`),
    /// with every symlink on the way resolved inside the root. Components that do not exist are
    /// appended as they are (with `.`/`..` applied lexically), so the result also names files
    /// still to be created.
    pub fn resolve(&self, path: impl AsRef<Path>) -> io::Result<PathBuf> {
        let inner = self.resolve_inner(path.as_ref())?;
        Ok(self.host_path(&inner))
    }

    /// A host path below the root, with every symlink in it resolved inside the root (so that
    /// writing there cannot leave the root). Paths outside the root are returned unchanged.
    pub fn resolve_host(&self, host: &Path) -> io::Result<PathBuf> {
        match host.strip_prefix(&self.root) {
            Ok(inside) if !self.is_host() => self.resolve(inside),
            _ => Ok(host.to_path_buf()),
        }
    }

    /// Like [`Sysroot::resolve`] but returns the resolved path as the target sees it
    /// (absolute, starting at the target's `/`).
    pub fn resolve_target_path(&self, path: impl AsRef<Path>) -> io::Result<PathBuf> {
        let inner = self.resolve_inner(path.as_ref())?;
        let mut out = PathBuf::from("/");
        out.extend(inner);
        Ok(out)
    }

    /// The host path of an already resolved target path, without following anything.
    pub fn host_path(&self, components: &[OsString]) -> PathBuf {
        let mut out = self.root.clone();
        out.extend(components);
        out
    }

    fn resolve_inner(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let mut pending: VecDeque<OsString> = normal_components(path).into();
        let mut resolved: Vec<OsString> = Vec::new();
        let mut links_followed = 0;
        while let Some(component) = pending.pop_front() {
            if component == "." {
                continue;
            }
            if component == ".." {
                resolved.pop();
                continue;
            }
            let candidate = self.host_path(&resolved).join(&component);
            let meta = match std::fs::symlink_metadata(&candidate) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // The rest does not exist: keep it lexically.
                    resolved.push(component);
                    for rest in pending {
                        if rest == ".." {
                            resolved.pop();
                        } else if rest != "." {
                            resolved.push(rest);
                        }
                    }
                    return Ok(resolved);
                }
                Err(e) => return Err(e),
            };
            if !meta.file_type().is_symlink() {
                resolved.push(component);
                continue;
            }
            links_followed += 1;
            if links_followed > MAX_SYMLINKS {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "too many levels of symbolic links resolving {} inside {}",
                        path.display(),
                        self.root.display()
                    ),
                ));
            }
            let target = std::fs::read_link(&candidate)?;
            if target.is_absolute() {
                resolved.clear();
            }
            for (i, c) in normal_components(&target).into_iter().enumerate() {
                pending.insert(i, c);
            }
        }
        Ok(resolved)
    }
}

/// The components of `path` as plain names, `.` and `..` kept for the resolver, root dropped.
fn normal_components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::CurDir => Some(OsString::from(".")),
            Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cross-sysroot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    #[test]
    fn absolute_symlink_resolves_inside_root() {
        let dir = scratch("abs");
        std::fs::create_dir_all(dir.join("usr/src/linux-headers-6")).expect("mkdir");
        std::fs::create_dir_all(dir.join("lib/modules/6")).expect("mkdir");
        symlink("/usr/src/linux-headers-6", dir.join("lib/modules/6/build")).expect("symlink");
        let root = Sysroot::new(&dir).expect("sysroot");
        let got = root.resolve("/lib/modules/6/build/Makefile").expect("resolve");
        assert_eq!(got, root.root().join("usr/src/linux-headers-6/Makefile"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn dotdot_and_relative_links_stop_at_root() {
        let dir = scratch("dotdot");
        std::fs::create_dir_all(dir.join("usr/lib")).expect("mkdir");
        symlink("usr/lib", dir.join("lib")).expect("symlink");
        symlink("../../../../../etc", dir.join("usr/escape")).expect("symlink");
        let root = Sysroot::new(&dir).expect("sysroot");
        assert_eq!(root.resolve("/lib/x").expect("resolve"), root.root().join("usr/lib/x"));
        assert_eq!(root.resolve("/usr/escape/passwd").expect("resolve"), root.root().join("etc/passwd"));
        assert_eq!(root.resolve("../../etc/passwd").expect("resolve"), root.root().join("etc/passwd"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn host_paths_below_the_root_are_resolved_inside_it() {
        let dir = scratch("host");
        std::fs::create_dir_all(dir.join("lib/modules/6")).expect("mkdir");
        symlink("/data/updates", dir.join("lib/modules/6/updates")).expect("symlink");
        let root = Sysroot::new(&dir).expect("sysroot");
        let host = root.root().join("lib/modules/6/updates/dkms/a.ko");
        assert_eq!(root.resolve_host(&host).expect("resolve"), root.root().join("data/updates/dkms/a.ko"));
        assert_eq!(root.resolve_host(Path::new("/elsewhere")).expect("resolve"), Path::new("/elsewhere"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let dir = scratch("loop");
        symlink("b", dir.join("a")).expect("symlink");
        symlink("a", dir.join("b")).expect("symlink");
        let root = Sysroot::new(&dir).expect("sysroot");
        assert!(root.resolve("/a/x").is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
