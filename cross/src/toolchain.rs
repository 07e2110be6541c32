//! The compiler for a target kernel: gcc with the right CROSS_COMPILE prefix found on PATH, or
//! clang (LLVM=1) when the kernel was built with clang; and the strip that goes with it.

use std::ffi::OsStr;
use std::fmt;
use std::path::PathBuf;

use crate::target::{config_set, TargetSpec};

/// How make must be called to build for one kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    /// CROSS_COMPILE (empty for a native gcc build).
    pub cross_compile: String,
    /// The kernel was built with clang: make gets LLVM=1.
    pub llvm: bool,
    /// The compiler dkms exports as CC (the kernel's own, with the prefix), when on PATH.
    pub cc: Option<String>,
    /// The strip for the target's modules.
    pub strip: String,
}

/// No usable compiler was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolchainError {
    pub lines: Vec<String>,
}

impl fmt::Display for ToolchainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines.join("\n"))
    }
}

/// What the kernel's configuration says about its compiler.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KernelCompiler {
    clang: bool,
    /// First word of CONFIG_CC_VERSION_TEXT (`gcc-12`, `aarch64-poky-linux-gcc`, `clang`).
    program: Option<String>,
}

fn kernel_compiler(config: &str) -> KernelCompiler {
    KernelCompiler { clang: config_set(config, "CONFIG_CC_IS_CLANG"), program: kernel_cc_program(config) }
}

/// The compiler the kernel was built with: the first word of CONFIG_CC_VERSION_TEXT.
pub fn kernel_cc_program(config: &str) -> Option<String> {
    let text = config.lines().find_map(|l| l.strip_prefix("CONFIG_CC_VERSION_TEXT="))?;
    text.trim_matches('"').split_whitespace().next().map(str::to_string)
}

/// Finds `program` in the directories of `path` (a PATH value).
pub fn find_on_path(program: &str, path: &OsStr) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    std::env::split_paths(path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// The toolchain for a kernel of target `target` configured by `config`, built on `host`.
/// `given` is an explicit CROSS_COMPILE (`--cross-compile`, or the environment's); `path` is the
/// PATH searched.
pub fn find(
    target: &TargetSpec,
    host: Option<&TargetSpec>,
    config: &str,
    given: Option<&str>,
    path: &OsStr,
) -> Result<Toolchain, ToolchainError> {
    let compiler = kernel_compiler(config);
    let on_path = |p: &str| find_on_path(p, path).is_some();
    if compiler.clang {
        // kbuild derives clang's --target from ARCH (or from CROSS_COMPILE when given).
        let clang = compiler.program.clone().filter(|p| on_path(p)).unwrap_or_else(|| "clang".to_string());
        let missing: Vec<&str> = [clang.as_str(), "ld.lld", "llvm-strip"].into_iter().filter(|p| !on_path(p)).collect();
        if !missing.is_empty() {
            return Err(ToolchainError {
                lines: vec![
                    format!("The kernel was built with clang, and {} is not on PATH.", missing.join(", ")),
                    "Install the LLVM toolchain (Debian: clang lld llvm) or put its bin directory on PATH.".into(),
                ],
            });
        }
        return Ok(Toolchain {
            cross_compile: given.unwrap_or_default().to_string(),
            llvm: true,
            cc: Some(clang),
            strip: "llvm-strip".to_string(),
        });
    }
    // The kernel's gcc without any prefix it carries (`aarch64-poky-linux-gcc` -> `gcc`).
    let (named_prefix, gcc) = match compiler.program.as_deref() {
        Some(program) => match program.rfind("gcc") {
            Some(at) if at > 0 && program[..at].ends_with('-') => {
                (Some(program[..at].to_string()), program[at..].to_string())
            }
            _ => (None, program.to_string()),
        },
        None => (None, "gcc".to_string()),
    };
    let with_prefix = |prefix: &str| {
        let versioned = format!("{prefix}{gcc}");
        if on_path(&versioned) {
            Some(versioned)
        } else {
            let plain = format!("{prefix}gcc");
            on_path(&plain).then_some(plain)
        }
    };
    let native = host.is_some_and(|h| h == target);
    let prefix = match given {
        Some(prefix) => {
            if with_prefix(prefix).is_none() {
                return Err(ToolchainError {
                    lines: vec![
                        format!("The cross compiler {prefix}gcc (CROSS_COMPILE={prefix}) is not on PATH."),
                        "Put the toolchain's bin directory on PATH or give the right prefix with --cross-compile."
                            .into(),
                    ],
                });
            }
            prefix.to_string()
        }
        None if native => String::new(),
        None => {
            let mut candidates: Vec<String> = named_prefix.into_iter().collect();
            candidates.extend(target.cross_prefixes.iter().map(|p| p.to_string()));
            match candidates.iter().find(|p| with_prefix(p).is_some()) {
                Some(found) => found.clone(),
                None => {
                    let tried: Vec<String> = candidates.iter().map(|p| format!("{p}gcc")).collect();
                    return Err(ToolchainError {
                        lines: vec![
                            format!("No cross compiler for {} was found on PATH (tried {}).", target.uname, tried.join(", ")),
                            format!(
                                "Install Debian's {} package, put your toolchain's bin directory on PATH, or give its prefix with --cross-compile.",
                                target.debian_gcc_package
                            ),
                        ],
                    });
                }
            }
        }
    };
    Ok(Toolchain { cc: with_prefix(&prefix), strip: format!("{prefix}strip"), cross_compile: prefix, llvm: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::by_name;
    use std::os::unix::fs::PermissionsExt;

    fn bin_dir(name: &str, programs: &[&str]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cross-toolchain-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for p in programs {
            std::fs::write(dir.join(p), "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        dir
    }

    const DEBIAN_ARM64: &str =
        "CONFIG_ARM64=y\nCONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14) 12.2.0\"\nCONFIG_CC_IS_GCC=y\n";

    #[test]
    fn debian_prefix_found_with_the_kernels_gcc_version() {
        let dir = bin_dir("debian", &["aarch64-linux-gnu-gcc-12", "aarch64-linux-gnu-gcc"]);
        let arm64 = by_name("arm64")[0];
        let x86 = by_name("x86_64")[0];
        let found = find(arm64, Some(x86), DEBIAN_ARM64, None, dir.as_os_str()).expect("found");
        assert_eq!(found.cross_compile, "aarch64-linux-gnu-");
        assert_eq!(found.cc.as_deref(), Some("aarch64-linux-gnu-gcc-12"));
        assert_eq!(found.strip, "aarch64-linux-gnu-strip");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn yocto_kernel_names_its_prefix() {
        let dir = bin_dir("yocto", &["aarch64-poky-linux-gcc"]);
        let config = "CONFIG_ARM64=y\nCONFIG_CC_VERSION_TEXT=\"aarch64-poky-linux-gcc (GCC) 13.2.0\"\n";
        let found = find(by_name("arm64")[0], by_name("x86_64").first().copied(), config, None, dir.as_os_str())
            .expect("found");
        assert_eq!(found.cross_compile, "aarch64-poky-linux-");
        assert_eq!(found.cc.as_deref(), Some("aarch64-poky-linux-gcc"));
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn missing_cross_compiler_names_the_debian_package() {
        let dir = bin_dir("none", &["gcc"]);
        let err =
            find(by_name("riscv64")[0], by_name("x86_64").first().copied(), "CONFIG_RISCV=y\n", None, dir.as_os_str())
                .expect_err("nothing to find");
        assert!(err.to_string().contains("gcc-riscv64-linux-gnu"), "{err}");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn native_and_clang() {
        let dir = bin_dir("native", &["gcc-12", "clang", "ld.lld", "llvm-strip"]);
        let x86 = by_name("x86_64")[0];
        let config = "CONFIG_X86_64=y\nCONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian) 12.2.0\"\n";
        let native = find(x86, Some(x86), config, None, dir.as_os_str()).expect("native");
        assert_eq!((native.cross_compile.as_str(), native.cc.as_deref()), ("", Some("gcc-12")));
        let clang =
            find(by_name("arm64")[0], Some(x86), "CONFIG_CC_IS_CLANG=y\n", None, dir.as_os_str()).expect("clang");
        assert!(clang.llvm && clang.strip == "llvm-strip");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
