//! What a build needs to know about its target kernel before make runs: which architecture the
//! headers are for (checked against the arch asked for and the kernel's own modules), whether
//! kbuild's host programs run here, and the toolchain; then the make variables and the `uname`
//! shim that give module Makefiles the target's view.

use crate::exit::Exit;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cross::target::{ElfIdent, TargetSpec};
use cross::toolchain::Toolchain;

use super::commands::shell_quote;
use super::{Ctx, Failure, Result, Target};

/// A build's target: its table row (None for an architecture the table does not know, built as
/// dkms would) and the toolchain.
pub struct BuildTarget {
    pub spec: Option<&'static TargetSpec>,
    pub toolchain: Option<Toolchain>,
    /// Building for another architecture than the build host's (or with an explicit prefix).
    pub cross: bool,
}

impl BuildTarget {
    /// Variables for every make of the build (as command-line assignments in MAKEFLAGS, so they
    /// reach sub-makes and win over Makefile defaults).
    pub fn make_variables(&self) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        if let (Some(spec), Some(toolchain)) = (self.spec, &self.toolchain) {
            if self.cross {
                vars.push(("ARCH".to_string(), spec.kernel_arch.to_string()));
                vars.push(("CROSS_COMPILE".to_string(), toolchain.cross_compile.clone()));
            }
            if toolchain.llvm {
                vars.push(("LLVM".to_string(), "1".to_string()));
            }
        }
        vars
    }

    /// The strip for the target's modules.
    pub fn strip(&self) -> String {
        match &self.toolchain {
            Some(toolchain) => toolchain.strip.clone(),
            None => format!("{}strip", std::env::var("CROSS_COMPILE").unwrap_or_default()),
        }
    }
}

/// Checks the kernel `target.kernel` (headers at `headers`, a host path; configuration text
/// `config`) against the arch asked for, its modules and the build host, and finds the compiler.
pub fn prepare(ctx: &Ctx, target: &Target, headers: &Path, config: &str) -> Result<BuildTarget> {
    let Some(spec) = cross::target::from_config(config) else {
        // An architecture the table does not know: build as dkms does, with the host's tools.
        return Ok(BuildTarget { spec: None, toolchain: None, cross: false });
    };
    let config_path = ctx.kernel_config_path(&target.kernel)?;
    let asked = cross::target::by_name(&target.arch);
    if asked.is_empty() {
        return Err(unknown_arch(&target.arch));
    }
    if !asked.contains(&spec) {
        return Err(Failure::new(
            Exit::Arch,
            [
                format!(
                    "The headers of kernel {} are for {} (ARCH={}, from {}), not for {} as asked.",
                    target.kernel,
                    spec.uname,
                    spec.kernel_arch,
                    config_path.display(),
                    target.arch
                ),
                format!(
                    "Give -k {}/{} or install the {} headers for this kernel.",
                    target.kernel, spec.uname, target.arch
                ),
            ],
        ));
    }
    let kernel_dir = ctx.in_root(&ctx.install_tree.join(&target.kernel))?;
    if let Some((module, ident)) = first_module_ident(&kernel_dir) {
        if !spec.matches_elf(&ident) {
            return Err(Failure::new(
                Exit::Arch,
                [
                    format!(
                        "The configuration {} is for {}, but the kernel's module {} is {}.",
                        config_path.display(),
                        spec.uname,
                        module.display(),
                        ident.describe()
                    ),
                    "The headers and the modules come from different kernels: install the headers that match the kernel."
                        .to_string(),
                ],
            ));
        }
    }
    let host = cross::target::host();
    if let Some(host) = host {
        match cross::kernel::check_host_tools(&ctx.root, headers, host) {
            Ok(()) => {}
            Err(cross::kernel::HostToolError::Missing(path)) => {
                return Err(Failure::new(
                    Exit::HostTools,
                    [
                        format!("kbuild's host program {} is missing.", path.display()),
                        "The headers are not prepared for building modules: install the distribution's kbuild tools for this build host (Debian: linux-kbuild-<series>), or run `make modules_prepare` in the kernel tree.".to_string(),
                    ],
                ));
            }
            Err(cross::kernel::HostToolError::ForeignMachine(path, machine)) => {
                return Err(Failure::new(
                    Exit::HostTools,
                    [
                        format!(
                            "kbuild's host program {} is built for {machine} and cannot run on this {} build host.",
                            path.display(),
                            host.uname
                        ),
                        format!(
                            "Use headers whose scripts are built for {} (Debian: the build host's linux-kbuild-<series> package; Yocto: the kernel's STAGING_KERNEL_BUILDDIR), or rebuild them with `make -C <kernel tree> ARCH={} scripts`.",
                            host.uname, spec.kernel_arch
                        ),
                    ],
                ));
            }
        }
    }
    let given = ctx.cross_compile.clone().or_else(|| std::env::var("CROSS_COMPILE").ok().filter(|p| !p.is_empty()));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let toolchain = cross::toolchain::find(spec, host, config, given.as_deref(), &path)
        .map_err(|e| Failure::new(Exit::NoToolchain, e.lines))?;
    let cross = host != Some(spec) || !toolchain.cross_compile.is_empty();
    Ok(BuildTarget { spec: Some(spec), toolchain: Some(toolchain), cross })
}

/// The failure for an arch name the table does not know.
pub fn unknown_arch(name: &str) -> Failure {
    let mut known: Vec<&str> = cross::target::targets().iter().map(|t| t.uname).collect();
    known.dedup();
    Failure::new(Exit::Arch, [format!("Unknown architecture '{name}'. Known: {}.", known.join(", "))])
}

/// The ELF identity of the first module found under a kernel's module directory (its `kernel/`
/// tree, where the distribution's own modules are).
fn first_module_ident(kernel_dir: &Path) -> Option<(PathBuf, ElfIdent)> {
    let mut pending = vec![kernel_dir.join("kernel")];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                pending.push(path);
            } else if crate::module::is_module_file_name(entry.file_name().as_encoded_bytes()) {
                let image = crate::module::ModuleImage::open(&path).ok()?;
                let head = image.read(0, 64.min(image.len())).ok()?;
                return ElfIdent::parse(&head).map(|ident| (path, ident));
            }
        }
    }
    None
}

/// Writes `dir/uname`, a `uname` that answers -r and -m (and -a) with the target's values and
/// passes everything else to the real one. Module Makefiles that run `uname -r` or `uname -m`
/// then see the kernel being built for, not the build host.
pub fn write_uname_shim(dir: &Path, kernel: &str, machine: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let script = format!(
        r#"#!/bin/sh
# Written by xdkms for one build: `uname` answering as the target kernel.
release={release} machine={machine}
real() {{
    old=$IFS; IFS=:
    for d in $PATH; do
        if [ "$d" != {shim_dir} ] && [ -x "$d/uname" ]; then IFS=$old; "$d/uname" "$@"; return; fi
    done
    IFS=$old; echo unknown
}}
[ $# -eq 0 ] && set -- -s
out=
for opt in "$@"; do
    case $opt in
        -r|--kernel-release) out="$out $release" ;;
        -m|--machine|-p|--processor|-i|--hardware-platform) out="$out $machine" ;;
        -a|--all) out="$out $(real -s) $(real -n) $release $(real -v) $machine $(real -o)" ;;
        -s|--kernel-name|-n|--nodename|-v|--kernel-version|-o|--operating-system) out="$out $(real "$opt")" ;;
        *) real "$@"; exit ;;
    esac
done
echo "${{out# }}"
"#,
        release = shell_quote(kernel),
        machine = shell_quote(machine),
        shim_dir = shell_quote(&dir.to_string_lossy()),
    );
    let path = dir.join("uname");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn uname_shim_answers_as_the_target() {
        let dir = std::env::temp_dir().join(format!("xdkms-uname-{}", std::process::id()));
        write_uname_shim(&dir, "6.1.0-57-arm64", "aarch64").expect("shim");
        let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
        let run = |args: &[&str]| {
            let out = Command::new("uname").args(args).env("PATH", &path).output().expect("uname");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        assert_eq!(run(&["-r"]), "6.1.0-57-arm64");
        assert_eq!(run(&["-m"]), "aarch64");
        assert_eq!(run(&["-s"]), "Linux");
        assert_eq!(run(&[]), "Linux");
        assert_eq!(run(&["-r", "-m"]), "6.1.0-57-arm64 aarch64");
        assert!(run(&["-a"]).contains(" 6.1.0-57-arm64 ") && run(&["-a"]).contains(" aarch64 "));
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
