//! The dkms tree: what is added, built and installed, `add`, `status`, and the run lock.
//!
//! The layout is dkms's, so that a target's own dkms can take over:
//! `<dkms_tree>/<m>/<v>/source -> <source_tree>/<m>-<v>`, `<m>/<v>/<kernel>/<arch>/{module,log}`,
//! and `<m>/kernel-<kernel>-<arch> -> <v>/<kernel>/<arch>` marking the installed version.

use crate::exit::Exit;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use cross::Sysroot;
use serde::Serialize;

use super::{Ctx, Failure, Named, Result, Target};
use crate::module::{ModuleElf, ModuleImage};

/// Module file suffixes dkms recognizes, plain first.
pub const MODULE_SUFFIXES: &[&str] = &[".ko", ".ko.gz", ".ko.xz", ".ko.zst"];

/// `name` of a file named `<name>.ko[.<ext>]` (the suffixes cannot end one another, so there is
/// at most one way to split a name).
pub fn module_name_of(file_name: &str) -> Option<&str> {
    MODULE_SUFFIXES.iter().find_map(|s| file_name.strip_suffix(s))
}

/// Written into each built `<kernel>/<arch>` directory: the module records the build used, so that
/// `status` need not run bash for every module and kernel. Ignored by dkms.
const BUILT_RECORD: &str = ".xdkms-modules";

/// Holds the tree's lock for the duration of a run.
pub struct Lock {
    _file: File,
}

/// Serializes xdkms runs that change the tree: an exclusive lock on `<dkms_tree>/.xdkms.lock`.
pub fn lock(ctx: &Ctx) -> Result<Lock> {
    ctx.root
        .create_dir_all(&ctx.dkms_tree)
        .map_err(|e| Failure::io(format!("No write access to DKMS tree at {}", ctx.dkms_tree.display()), e))?;
    let path = ctx.dkms_tree.join(".xdkms.lock");
    let file = ctx
        .root
        .open_lock_file(&path)
        .map_err(|e| Failure::io(format!("No write access to DKMS tree at {}", ctx.dkms_tree.display()), e))?;
    take_turn(ctx, &file, &path, format!("holding {}", path.display()))?;
    Ok(Lock { _file: file })
}

/// An exclusive flock on `file` (opened from `path`), waited for when another run holds it.
/// Not a dkms line (dkms takes no lock), but a wait must never be silent: stderr says what the
/// other run is doing (`holding ...`, `indexing ...`).
pub fn take_turn(ctx: &Ctx, file: &File, path: &Path, other_run: String) -> Result<()> {
    if file.try_lock().is_err() {
        if !ctx.quiet {
            super::print_err(format_args!("xdkms: waiting for another xdkms run {other_run}"));
        }
        file.lock().map_err(|e| Failure::io(format!("locking {}", path.display()), e))?;
    }
    Ok(())
}

/// Removes what killed runs left behind: work directories (`<dkms_tree>/.xdkms-work-*`), build
/// staging directories (`<m>/<v>/<k>/.tmp_*`) and kernel directories they left empty. Called with the lock held, so none of them is in use.
pub fn clean_leftovers(ctx: &Ctx) {
    let own_work = format!(".xdkms-work-{}", std::process::id());
    for entry in ctx.root.read_dir(&ctx.dkms_tree).into_iter().flatten() {
        let name = entry.name.to_string_lossy().into_owned();
        // `status` takes no lock: a work directory of a live process stays.
        let owner_alive = name.strip_prefix(".xdkms-work-").is_some_and(|pid| Path::new("/proc").join(pid).exists());
        if name.starts_with(".xdkms-work-") && name != own_work && !owner_alive {
            let _ = ctx.root.remove_all(&ctx.dkms_tree.join(&entry.name));
        }
    }
    for module in sorted_dirs(&ctx.root, &ctx.dkms_tree) {
        for version in sorted_dirs(&ctx.root, &ctx.dkms_tree.join(&module)) {
            let version_dir = ctx.dkms_tree.join(&module).join(&version);
            for kernel in sorted_dirs(&ctx.root, &version_dir).into_iter().filter(|k| is_kernel_dir_name(k)) {
                let kernel_dir = version_dir.join(&kernel);
                let Ok(entries) = ctx.root.read_dir(&kernel_dir) else { continue };
                for entry in entries {
                    if entry.name.to_string_lossy().starts_with(".tmp_") {
                        let _ = ctx.root.remove_all(&kernel_dir.join(&entry.name));
                    }
                }
                // Only removes an empty directory.
                let _ = ctx.root.remove_dir(&kernel_dir);
            }
        }
    }
}

/// Names of the subdirectories of `dir` (a host path inside `root`; links to directories count,
/// resolved inside the root) not starting with a dot, in byte order (the C locale's glob order,
/// which dkms's output follows). Names that are not UTF-8 are left out: no module, version or
/// kernel of the tree can have one.
pub fn sorted_dirs(root: &Sysroot, dir: &Path) -> Vec<String> {
    let Ok(entries) = root.read_dir(dir) else { return Vec::new() };
    entries
        .into_iter()
        .filter_map(|e| e.name.into_string().ok())
        .filter(|n| !n.starts_with('.') && root.is_dir(&dir.join(n)))
        .collect()
}

/// dkms's glob for kernel directories, `+([0-9]).*`.
pub fn is_kernel_dir_name(name: &str) -> bool {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && name.as_bytes().get(digits) == Some(&b'.')
}

/// dkms's is_module_added: `<m>/<v>` exists with a `source` link or directory.
pub fn is_added(ctx: &Ctx, module: &str, version: &str) -> bool {
    if module.is_empty() || version.is_empty() {
        return false;
    }
    let source = ctx.version_dir(module, version).join("source");
    ctx.root.is_symlink(&source) || ctx.root.is_dir(&source)
}

/// An added module whose source is gone: the link dangles or the directory has no dkms.conf.
pub fn is_broken(ctx: &Ctx, module: &str, version: &str) -> bool {
    ctx.conf_override.is_none()
        && !ctx.source_dir(module, version).is_ok_and(|dir| ctx.root.is_file(&dir.join("dkms.conf")))
}

/// `(version, srcversion)` from a module's .modinfo; empty strings when absent or unreadable.
pub fn module_version(root: &Sysroot, path: &Path) -> (String, String) {
    let Ok(bytes) = root.read(path) else { return Default::default() };
    let Ok(image) = ModuleImage::from_bytes(&bytes) else { return Default::default() };
    let Ok(elf) = ModuleElf::parse(&image, Default::default()) else { return Default::default() };
    let field = |key: &[u8]| {
        elf.modinfo_values(key).next().map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()
    };
    (field(b"version"), field(b"srcversion"))
}

/// The failure for a module whose source is gone.
pub fn broken(module: &str, version: &str) -> Failure {
    Failure::new(
        Exit::Broken,
        [
            format!("{module}/{version} is broken!"),
            "Missing the module source directory or the symbolic link pointing to it.".to_string(),
            "Manual intervention is required!".to_string(),
        ],
    )
}

/// The module file for `name` in `dir` (inside `root`), plain or compressed.
pub fn module_file(root: &Sysroot, dir: &Path, name: &str) -> Option<PathBuf> {
    MODULE_SUFFIXES.iter().map(|s| dir.join(format!("{name}{s}"))).find(|p| root.exists(p))
}

/// One built module as recorded at build time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltModule {
    pub dest_name: String,
    pub dest_location: String,
    pub dest_location_raw: String,
}

/// Records the modules of a build in its staging directory.
pub fn write_built_record(root: &Sysroot, dir: &Path, modules: &[BuiltModule]) -> io::Result<()> {
    let text: String =
        modules.iter().map(|m| format!("{}\t{}\t{}\n", m.dest_name, m.dest_location, m.dest_location_raw)).collect();
    root.write(&dir.join(BUILT_RECORD), text.as_bytes())
}

/// The modules a build of `<m>/<v>/<k>/<a>` must contain: from its record while that is newer than
/// every conf file, else from the conf evaluated again (as dkms does every time). None when the
/// conf cannot be read.
pub fn expected_modules(ctx: &Ctx, module: &str, version: &str, target: &Target) -> Option<Vec<BuiltModule>> {
    let dir = ctx.version_dir(module, version).join(&target.kernel).join(&target.arch);
    let record = dir.join(BUILT_RECORD);
    if ctx.directives.is_empty() {
        if let Ok(recorded) = ctx.root.metadata(&record).and_then(|m| m.modified()) {
            let conf = ctx.conf_path(module, version).ok()?;
            let overrides = [
                format!("{module}.conf"),
                format!("{module}-{version}.conf"),
                format!("{module}-{version}-{}.conf", target.kernel),
                format!("{module}-{version}-{}-{}.conf", target.kernel, target.arch),
            ];
            let newer = std::iter::once(conf)
                .chain(overrides.iter().map(|o| ctx.etc_dkms.join(o)))
                .filter_map(|p| ctx.file_metadata(&p).and_then(|m| m.modified()).ok())
                .any(|t| t > recorded);
            if !newer {
                if let Ok(text) = ctx.root.read_to_string(&record) {
                    return Some(
                        text.lines()
                            .filter_map(|l| {
                                let mut f = l.split('\t');
                                Some(BuiltModule {
                                    dest_name: f.next()?.to_string(),
                                    dest_location: f.next()?.to_string(),
                                    dest_location_raw: f.next()?.to_string(),
                                })
                            })
                            .collect(),
                    );
                }
            }
        }
    }
    let conf = ctx.module_conf(module, version, target, false).ok()?;
    Some(
        conf.modules
            .iter()
            .map(|m| BuiltModule {
                dest_name: m.dest_name.clone(),
                dest_location: m.dest_location.clone(),
                dest_location_raw: m.dest_location_raw.clone(),
            })
            .collect(),
    )
}

/// dkms's is_module_built: the module directory exists and holds every module the conf names.
pub fn is_built(ctx: &Ctx, module: &str, version: &str, target: &Target) -> bool {
    let dir = ctx.version_dir(module, version).join(&target.kernel).join(&target.arch).join("module");
    if !ctx.root.is_dir(&dir) {
        return false;
    }
    match expected_modules(ctx, module, version, target) {
        Some(modules) => modules.iter().all(|m| module_file(&ctx.root, &dir, &m.dest_name).is_some()),
        None => false,
    }
}

/// dkms's _is_module_installed: `kernel-<k>-<a>` resolves to this version's build.
pub fn is_installed_link(ctx: &Ctx, module: &str, version: &str, target: &Target) -> bool {
    let link = ctx.dkms_tree.join(module).join(format!("kernel-{}-{}", target.kernel, target.arch));
    let built = ctx.version_dir(module, version).join(&target.kernel).join(&target.arch);
    ctx.root.is_symlink(&link) && ctx.root.same_file(&link, &built)
}

/// Every (kernel, arch) a module version is built for, in `sort -V`-like order.
pub fn built_targets(ctx: &Ctx, module: &str, version: &str) -> Vec<Target> {
    let version_dir = ctx.version_dir(module, version);
    let mut targets = Vec::new();
    for kernel in sorted_dirs(&ctx.root, &version_dir).into_iter().filter(|k| is_kernel_dir_name(k)) {
        for arch in sorted_dirs(&ctx.root, &version_dir.join(&kernel)) {
            let target = Target { kernel: kernel.clone(), arch };
            if is_built(ctx, module, version, &target) {
                targets.push(target);
            }
        }
    }
    targets.sort_by_key(|t| super::version::ver_key(&t.kernel));
    targets
}

/// A line of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusEntry {
    pub module: String,
    pub version: String,
    /// added, built, installed or broken.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// dkms moved the kernel's own copy of a module aside (`original_module/<k>/<a>`).
    pub original_module_exists: bool,
    /// An installed module differs from the built one.
    pub differs_from_installed: bool,
}

impl StatusEntry {
    /// The line dkms 3.0.10 prints.
    pub fn line(&self) -> String {
        match (&self.kernel, &self.arch) {
            (Some(k), Some(a)) => {
                let mut line = format!("{}/{}, {k}, {a}: {}", self.module, self.version, self.state);
                if self.original_module_exists {
                    line.push_str(" (original_module exists)");
                }
                if self.differs_from_installed {
                    line.push_str(" (WARNING! Diff between built and installed module!)");
                }
                line
            }
            _ => format!("{}/{}: {}", self.module, self.version, self.state),
        }
    }
}

/// Every status entry matching the filters (empty filters match everything).
pub fn entries(ctx: &Ctx, module: &str, version: &str, kernel: &str, arch: &str) -> Vec<StatusEntry> {
    let mut out = Vec::new();
    let modules = if module.is_empty() { sorted_dirs(&ctx.root, &ctx.dkms_tree) } else { vec![module.to_string()] };
    for m in modules {
        let versions = if version.is_empty() {
            sorted_dirs(&ctx.root, &ctx.dkms_tree.join(&m))
        } else {
            vec![version.to_string()]
        };
        for v in versions {
            if !is_added(ctx, &m, &v) {
                continue;
            }
            let entry = |state: &'static str, k: Option<String>, a: Option<String>| StatusEntry {
                module: m.clone(),
                version: v.clone(),
                state,
                kernel: k,
                arch: a,
                original_module_exists: false,
                differs_from_installed: false,
            };
            if is_broken(ctx, &m, &v) {
                out.push(entry("broken", None, None));
                continue;
            }
            let version_dir = ctx.version_dir(&m, &v);
            let kernels: Vec<String> = if kernel.is_empty() {
                sorted_dirs(&ctx.root, &version_dir).into_iter().filter(|k| is_kernel_dir_name(k)).collect()
            } else {
                vec![kernel.to_string()]
            };
            let mut any = false;
            for k in kernels {
                let arches = if arch.is_empty() {
                    sorted_dirs(&ctx.root, &version_dir.join(&k))
                } else {
                    vec![arch.to_string()]
                };
                for a in arches {
                    let target = Target { kernel: k.clone(), arch: a.clone() };
                    // is_built, keeping what it reads.
                    let built_dir = version_dir.join(&k).join(&a).join("module");
                    if !ctx.root.is_dir(&built_dir) {
                        continue;
                    }
                    let Some(records) = expected_modules(ctx, &m, &v, &target) else { continue };
                    let built: Option<Vec<PathBuf>> =
                        records.iter().map(|r| module_file(&ctx.root, &built_dir, &r.dest_name)).collect();
                    let Some(built) = built else { continue };
                    any = true;
                    let installed = is_installed_link(ctx, &m, &v, &target);
                    let mut e = entry(if installed { "installed" } else { "built" }, Some(k.clone()), Some(a.clone()));
                    e.original_module_exists =
                        ctx.root.is_dir(&ctx.dkms_tree.join(&m).join("original_module").join(&k).join(&a));
                    if installed {
                        for (record, built) in records.iter().zip(&built) {
                            // The usual case first: an identical copy where the distribution puts it.
                            let usual = ctx.install_tree.join(&k).join(record.dest_location.trim_start_matches('/'));
                            let equal = |f: PathBuf| files_equal(&ctx.root, &f, built);
                            if module_file(&ctx.root, &usual, &record.dest_name).is_some_and(equal) {
                                continue;
                            }
                            let installed_file = installed_location(ctx, &target, record, built)
                                .and_then(|dir| module_file(&ctx.root, &dir, &record.dest_name));
                            e.differs_from_installed |= !installed_file.is_some_and(equal);
                        }
                    }
                    out.push(e);
                }
            }
            if !any {
                out.push(entry("added", None, None));
            }
        }
    }
    out
}

/// dkms's find_actual_dest_module_location: the destination directory (the distribution's or
/// the conf's own) whose copy of the module has the built module's version.
pub fn installed_location(ctx: &Ctx, target: &Target, record: &BuiltModule, built: &Path) -> Option<PathBuf> {
    let kernel_dir = ctx.install_tree.join(&target.kernel);
    let mut locations = vec![record.dest_location.clone()];
    if record.dest_location_raw != record.dest_location {
        locations.push(record.dest_location_raw.clone());
    }
    let built_version = module_version(&ctx.root, built);
    locations.into_iter().map(|l| kernel_dir.join(l.trim_start_matches('/'))).find(|dir| {
        module_file(&ctx.root, dir, &record.dest_name)
            .is_some_and(|installed| module_version(&ctx.root, &installed).0 == built_version.0)
    })
}

fn files_equal(root: &Sysroot, a: &Path, b: &Path) -> bool {
    match (root.read(a), root.read(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// `status`: dkms's lines, or JSON. Always exits 0, as dkms does.
pub fn status(ctx: &Ctx, named: &Named, targets: &[Target], json: bool) -> Result<()> {
    let module = named.module.as_deref().unwrap_or("");
    let version = named.version.as_deref().unwrap_or("");
    let mut all = Vec::new();
    if targets.is_empty() {
        all = entries(ctx, module, version, "", "");
    } else {
        for t in targets {
            all.extend(entries(ctx, module, version, &t.kernel, &t.arch));
        }
    }
    if json {
        let text = serde_json::to_string_pretty(&all).map_err(|e| Failure::io("writing JSON", e))?;
        super::print_out(format_args!("{text}"));
        return Ok(());
    }
    for e in &all {
        super::print_out(format_args!("{}", e.line()));
        if e.state == "broken" {
            super::print_err(format_args!(
                "Error! {}/{}: Missing the module source directory or the symbolic link pointing to it.",
                e.module, e.version
            ));
            super::print_err(format_args!("Manual intervention is required!"));
        }
    }
    Ok(())
}

/// Copies a source tree of the build host (`from`) into the root (`to`) as `cp -a` does: modes
/// kept, symlinks copied as symlinks.
pub fn copy_tree(root: &Sysroot, from: &Path, to: &Path) -> io::Result<()> {
    root.create_dir_all(to)?;
    let mut entries: Vec<_> = std::fs::read_dir(from)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let source = entry.path();
        let dest = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            let _ = root.remove_file(&dest);
            root.symlink(&std::fs::read_link(&source)?, &dest)?;
        } else if kind.is_dir() {
            copy_tree(root, &source, &dest)?;
            root.set_permissions(&dest, std::fs::metadata(&source)?.permissions())?;
        } else {
            root.copy_in(&source, &dest)?;
        }
    }
    Ok(())
}

/// `add`: registers `<source_tree>/<m>-<v>` (copying a given source directory there first).
pub fn add(
    ctx: &Ctx,
    module: Option<String>,
    version: Option<String>,
    source_dir: Option<PathBuf>,
    first: Option<&Target>,
    added_ok: bool,
) -> Result<(String, String)> {
    let target = first.cloned().unwrap_or(Target { kernel: String::new(), arch: String::new() });
    let (module, version) = match source_dir {
        Some(dir) => {
            let from = std::fs::canonicalize(&dir).map_err(|_| {
                Failure::new(Exit::NoConfInSource, [format!("{} must contain a dkms.conf file!", dir.display())])
            })?;
            let conf_path = from.join("dkms.conf");
            if !conf_path.is_file() {
                return Err(Failure::new(
                    Exit::NoConfInSource,
                    [format!("{} must contain a dkms.conf file!", dir.display())],
                ));
            }
            let conf = ctx.read_conf("", "", &target, &conf_path, &ctx.dkms_tree, true)?;
            let (module, version) = (conf.package_name, conf.package_version);
            // A source directory that is a link resolves inside the root, as everything written.
            let dest = ctx.in_root(&ctx.source_tree.join(format!("{module}-{version}")))?;
            // Nothing to copy when the source already is that directory (and with --force, dkms
            // would delete it).
            let in_place = std::fs::canonicalize(&dest).ok().as_ref() == Some(&from);
            if ctx.force && ctx.root.is_dir(&dest) && !in_place {
                ctx.root.remove_all(&dest).map_err(|e| Failure::io(format!("removing {}", dest.display()), e))?;
            }
            if !in_place {
                copy_tree(&ctx.root, &from, &dest)
                    .map_err(|e| Failure::io(format!("copying {} to {}", from.display(), dest.display()), e))?;
            }
            (module, version)
        }
        None => super::module_args("add", Named { module, version, source_dir: None })?,
    };
    if is_added(ctx, &module, &version) {
        if added_ok {
            return Ok((module, version));
        }
        return Err(Failure::new(
            Exit::TreeState,
            [
                format!("DKMS tree already contains: {module}-{version}"),
                "You cannot add the same module/version combo more than once.".to_string(),
            ],
        ));
    }
    let source = ctx.in_root(&ctx.source_tree.join(format!("{module}-{version}")))?;
    if !ctx.root.is_dir(&source) {
        return Err(Failure::new(
            Exit::MissingSource,
            [
                "Could not find module source directory.".to_string(),
                format!("Directory: {} does not exist.", source.display()),
            ],
        ));
    }
    let conf_path = ctx.conf_override.clone().unwrap_or_else(|| source.join("dkms.conf"));
    let conf = ctx.read_conf(&module, &version, &target, &conf_path, &ctx.dkms_tree, true)?;
    let version_dir = ctx.version_dir(&module, &version);
    let link_target = ctx.source_tree_target.join(format!("{module}-{version}"));
    ctx.say(format!("Creating symlink {}/source -> {}", ctx.shown(&version_dir).display(), link_target.display()));
    ctx.root
        .create_dir_all(&version_dir.join("build"))
        .map_err(|e| Failure::io(format!("creating {}", version_dir.display()), e))?;
    ctx.root
        .symlink(&link_target, &version_dir.join("source"))
        .map_err(|e| Failure::io(format!("creating {}/source", version_dir.display()), e))?;
    super::commands::run_script(ctx, "post_add", &conf.post_add, &source);
    Ok((module, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_directory_glob() {
        assert!(is_kernel_dir_name("6.1.0-56-amd64"));
        assert!(is_kernel_dir_name("10.x"));
        assert!(!is_kernel_dir_name("build"));
        assert!(!is_kernel_dir_name("6"));
        assert!(!is_kernel_dir_name("v6.1"));
    }
}
