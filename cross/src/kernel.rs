//! A target kernel as found in a root: its headers directory, configuration and `uname -m` label.

use std::io;
use std::path::{Path, PathBuf};

use crate::target::{ElfIdent, TargetSpec};
use crate::Sysroot;

/// The `uname -m` a kernel built with this configuration reports, which dkms uses as the arch
/// label of its tree (`<module>/<version>/<kernel>/<arch>`). None for an architecture not known.
pub fn uname_machine(config: &str) -> Option<&'static str> {
    crate::target::from_config(config).map(|t| t.uname)
}

/// The release a headers directory was built for: UTS_RELEASE in
/// `include/generated/utsrelease.h` (what modules built there carry in their vermagic), else
/// `include/config/kernel.release`. None when neither says. (Debian's kernel.release holds the
/// upstream version, 6.1.192, where UTS_RELEASE is the package's 6.1.0-57-arm64.)
pub fn headers_release(headers: &Path) -> Option<String> {
    let uts = std::fs::read_to_string(headers.join("include/generated/utsrelease.h")).ok().and_then(|text| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix("#define UTS_RELEASE")?;
            Some(rest.trim().trim_matches('"').to_string())
        })
    });
    if let Some(release) = uts.filter(|r| !r.is_empty()) {
        return Some(release);
    }
    let text = std::fs::read_to_string(headers.join("include/config/kernel.release")).ok()?;
    Some(text.trim().to_string()).filter(|r| !r.is_empty())
}

/// The files of a kernel's headers that tell its release and configuration: all that is read
/// there by anything but a build.
pub const RELEASE_AND_CONFIG_FILES: [&str; 3] =
    [".config", "include/generated/utsrelease.h", "include/config/kernel.release"];

/// Why kbuild's host programs cannot run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostToolError {
    /// The program is missing from the headers.
    Missing(PathBuf),
    /// The program is built for another machine (its description).
    ForeignMachine(PathBuf, String),
}

/// kbuild's host programs every external module build runs.
pub const KBUILD_HOST_TOOLS: [&str; 2] = ["scripts/basic/fixdep", "scripts/mod/modpost"];

/// Checks that the headers' kbuild host programs (fixdep, modpost) run on the build host:
/// present, and ELF files for `host` (scripts are accepted). `headers` is a host path; below the
/// root its symlinks are followed inside the root (see [`Sysroot::resolve_host`]).
pub fn check_host_tools(root: &Sysroot, headers: &Path, host: &TargetSpec) -> Result<(), HostToolError> {
    for tool in KBUILD_HOST_TOOLS {
        let wanted = headers.join(tool);
        // A kernel build directory of the build host (--kernel-build) is read where it is.
        let path = if root.contains(&wanted) {
            root.resolve_host(&wanted).map_err(|_| HostToolError::Missing(wanted.clone()))?
        } else {
            wanted
        };
        let mut head = [0u8; 64];
        let read = std::fs::File::open(&path).and_then(|mut f| {
            use std::io::Read;
            f.read(&mut head)
        });
        let Ok(len) = read else { return Err(HostToolError::Missing(path)) };
        if let Some(ident) = ElfIdent::parse(&head[..len]) {
            if !host.matches_elf(&ident) {
                return Err(HostToolError::ForeignMachine(path, ident.describe()));
            }
        }
    }
    Ok(())
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
    fn release_prefers_utsrelease() {
        let dir = std::env::temp_dir().join(format!("cross-release-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("include/config")).expect("mkdir");
        std::fs::create_dir_all(dir.join("include/generated")).expect("mkdir");
        std::fs::write(dir.join("include/config/kernel.release"), "6.1.192\n").expect("write");
        assert_eq!(headers_release(&dir).as_deref(), Some("6.1.192"));
        std::fs::write(dir.join("include/generated/utsrelease.h"), "#define UTS_RELEASE \"6.1.0-57-arm64\"\n")
            .expect("write");
        assert_eq!(headers_release(&dir).as_deref(), Some("6.1.0-57-arm64"));
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn machines_from_config() {
        assert_eq!(uname_machine("CONFIG_X86_64=y\nCONFIG_64BIT=y\n"), Some("x86_64"));
        assert_eq!(uname_machine("CONFIG_ARM64=y\n"), Some("aarch64"));
        assert_eq!(uname_machine("CONFIG_PPC64=y\nCONFIG_CPU_LITTLE_ENDIAN=y\n"), Some("ppc64le"));
        assert_eq!(uname_machine("# CONFIG_X86_64 is not set\n"), None);
    }
}
