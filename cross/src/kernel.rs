//! A target kernel as found in a root: its headers directory, configuration and `uname -m` label.

use std::io;
use std::path::{Path, PathBuf};

use crate::Sysroot;

/// The `uname -m` a kernel built with this configuration reports, which dkms uses as the arch
/// label of its tree (`<module>/<version>/<kernel>/<arch>`). None for an architecture not known.
pub fn uname_machine(config: &str) -> Option<&'static str> {
    let set = |name: &str| config.lines().any(|l| l.strip_prefix(name).is_some_and(|rest| rest == "=y"));
    let little = set("CONFIG_CPU_LITTLE_ENDIAN");
    let sixty_four = set("CONFIG_64BIT");
    let machine = if set("CONFIG_X86_64") {
        "x86_64"
    } else if set("CONFIG_X86_32") {
        "i686"
    } else if set("CONFIG_ARM64") {
        "aarch64"
    } else if set("CONFIG_ARM") {
        "armv7l"
    } else if set("CONFIG_RISCV") {
        if sixty_four {
            "riscv64"
        } else {
            "riscv32"
        }
    } else if set("CONFIG_PPC64") {
        if little {
            "ppc64le"
        } else {
            "ppc64"
        }
    } else if set("CONFIG_PPC32") {
        "ppc"
    } else if set("CONFIG_MIPS") {
        if sixty_four {
            "mips64"
        } else {
            "mips"
        }
    } else if set("CONFIG_S390") {
        "s390x"
    } else if set("CONFIG_LOONGARCH") {
        "loongarch64"
    } else {
        return None;
    };
    Some(machine)
}

/// Kernel releases with a module directory in the root (`lib/modules/*`, which on merged-/usr
/// roots is `usr/lib/modules/*`), sorted.
pub fn installed_kernels(root: &Sysroot) -> io::Result<Vec<String>> {
    let mut found = Vec::new();
    for dir in ["/lib/modules", "/usr/lib/modules"] {
        let host = root.resolve(dir)?;
        let Ok(entries) = std::fs::read_dir(&host) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && !found.contains(&name) {
                found.push(name);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// A headers directory made usable from the build host.
///
/// Distribution headers split the tree: Debian's `linux-headers-K-amd64/Makefile` is the single
/// line `include /usr/src/linux-headers-K-common/Makefile`, an absolute path that names the
/// target's file but, read by the host's make, the host's. When such includes exist, the build
/// uses a view directory: a symlink to every entry of the headers directory (resolved inside the
/// root) and a Makefile whose absolute includes point into the root. kbuild takes its objtree
/// from the directory make runs in and its srctree from the included Makefile, as it does in the
/// real tree.
#[derive(Debug, Clone)]
pub struct KbuildDir {
    /// The directory to pass as `make -C` (the view, or the headers directory itself).
    pub path: PathBuf,
    /// The headers directory on the host, resolved inside the root.
    pub headers: PathBuf,
}

/// Returns the headers directory `headers_host` (already resolved inside `root`) as a directory
/// make can use. A view is created under `view_dir` (replacing an older one) only when the
/// Makefile includes absolute paths and the root is not the host's `/`.
pub fn kbuild_dir(root: &Sysroot, headers_host: &Path, view_dir: &Path) -> io::Result<KbuildDir> {
    let plain = KbuildDir { path: headers_host.to_path_buf(), headers: headers_host.to_path_buf() };
    if root.is_host() {
        return Ok(plain);
    }
    let Ok(makefile) = std::fs::read_to_string(headers_host.join("Makefile")) else {
        return Ok(plain);
    };
    let mut rewritten = String::with_capacity(makefile.len() + 64);
    let mut changed = false;
    for line in makefile.lines() {
        let trimmed = line.trim_start();
        let directive = ["include ", "-include ", "sinclude "].into_iter().find(|d| trimmed.starts_with(d));
        match directive {
            Some(directive) => {
                let mut words = Vec::new();
                for word in trimmed[directive.len()..].split_whitespace() {
                    if word.starts_with('/') {
                        words.push(root.resolve(word)?.to_string_lossy().into_owned());
                        changed = true;
                    } else {
                        words.push(word.to_string());
                    }
                }
                rewritten.push_str(directive);
                rewritten.push_str(&words.join(" "));
            }
            None => rewritten.push_str(line),
        }
        rewritten.push('\n');
    }
    if !changed {
        return Ok(plain);
    }
    if view_dir.exists() {
        std::fs::remove_dir_all(view_dir)?;
    }
    std::fs::create_dir_all(view_dir)?;
    for entry in std::fs::read_dir(headers_host)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "Makefile" {
            continue;
        }
        // Entries are often symlinks into the root (`scripts -> ../../lib/linux-kbuild-6.1/
        // scripts`): follow them there, not on the host.
        let inside = headers_host.strip_prefix(root.root()).unwrap_or(headers_host);
        let target = root.resolve(Path::new("/").join(inside).join(&name))?;
        std::os::unix::fs::symlink(target, view_dir.join(&name))?;
    }
    std::fs::write(view_dir.join("Makefile"), rewritten)?;
    Ok(KbuildDir { path: view_dir.to_path_buf(), headers: headers_host.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_from_config() {
        assert_eq!(uname_machine("CONFIG_X86_64=y\nCONFIG_64BIT=y\n"), Some("x86_64"));
        assert_eq!(uname_machine("CONFIG_ARM64=y\n"), Some("aarch64"));
        assert_eq!(uname_machine("CONFIG_PPC64=y\nCONFIG_CPU_LITTLE_ENDIAN=y\n"), Some("ppc64le"));
        assert_eq!(uname_machine("# CONFIG_X86_64 is not set\n"), None);
    }
}
