//! `install`, `uninstall`, `unbuild`, `remove` and `autoinstall`, and the one native depmod per
//! kernel at the end of a run.
//!
//! Install follows dkms 3.x: the version check against a module of the same name already in the
//! kernel, the original module archived (except on Debian and Ubuntu, where dkms leaves it in
//! place and `updates/` wins), each file written beside its destination and renamed, then the
//! `kernel-<k>-<a>` link. The host's depmod is never run: the kernel's indexes are regenerated
//! natively inside the root, once per kernel per run.

use crate::exit::Exit;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cross::Sysroot;

use super::tree::{self, module_file};
use super::version::ver_key;
use super::{build, commands, depends, Conf, Ctx, Failure, Result, Target};

/// The kernel's module files by name: every file named `<name>.ko` or `<name>.ko.<ext>` below the
/// kernel's module directory (inside the root; links to directories are not followed, as find
/// does not). dkms runs find for each question; one install asks two or three per module, and a
/// walk of a distribution kernel's 4000-module tree costs tens of milliseconds, so an install
/// walks once and keeps the answers in step with its own moves and writes.
struct KernelModules {
    by_name: HashMap<String, Vec<PathBuf>>,
}

impl KernelModules {
    fn walk(root: &Sysroot, dir: &Path) -> KernelModules {
        let mut by_name: HashMap<String, Vec<PathBuf>> = HashMap::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = root.read_dir(&dir) else { continue };
            for entry in entries {
                if entry.kind == cross::sysroot::EntryKind::Dir {
                    pending.push(dir.join(&entry.name));
                } else if let Some(name) = entry.name.to_str().and_then(tree::module_name_of) {
                    by_name.entry(name.to_string()).or_default().push(dir.join(&entry.name));
                }
            }
        }
        by_name.values_mut().for_each(|paths| paths.sort());
        KernelModules { by_name }
    }

    /// The files of module `name`, sorted.
    fn named(&self, name: &str) -> &[PathBuf] {
        self.by_name.get(name).map_or(&[], Vec::as_slice)
    }

    fn added(&mut self, name: &str, path: PathBuf) {
        let paths = self.by_name.entry(name.to_string()).or_default();
        if !paths.contains(&path) {
            paths.push(path);
            paths.sort();
        }
    }

    fn removed(&mut self, name: &str, path: &Path) {
        if let Some(paths) = self.by_name.get_mut(name) {
            paths.retain(|p| p != path);
        }
    }
}

/// In a run on an image's parts whose kernels' own module files were left out (depmod reads
/// them from the image): when one bears the name of a module `conf` installs, the install must
/// see it (dkms compares versions and keeps the original aside), so the run starts again on the
/// whole image.
fn start_again_for_left_out_namesakes(ctx: &Ctx, conf: &Conf) {
    let (Some(outside), Some(start_again)) = (&ctx.outside_modules, ctx.partial_root) else { return };
    let named = |file: &crate::depmod::outside::OutsideFile| {
        let name = file.path.rsplit('/').next().and_then(tree::module_name_of);
        conf.modules.iter().any(|record| name == Some(record.dest_name.as_str()))
    };
    if outside.files().iter().any(named) {
        start_again();
    }
}

fn is_debian_like(ctx: &Ctx) -> bool {
    ctx.distro.starts_with("debian") || ctx.distro.starts_with("ubuntu")
}

/// dkms's maybe_install_module.
pub fn maybe_install(ctx: &Ctx, module: &str, version: &str, target: &Target) -> Result<()> {
    if tree::is_broken(ctx, module, version) {
        return Err(tree::broken(module, version));
    }
    if tree::is_built(ctx, module, version, target) && tree::is_installed_link(ctx, module, version, target) {
        if ctx.force {
            uninstall(ctx, module, version, target)?;
        } else {
            ctx.say(format!(
                "Module {module}/{version} already installed on kernel {} ({}), skip. You may override by specifying --force.",
                target.kernel, target.arch
            ));
            return Ok(());
        }
    }
    install(ctx, module, version, target)
}

/// dkms's do_install for one kernel.
pub fn install(ctx: &Ctx, module: &str, version: &str, target: &Target) -> Result<()> {
    if !tree::is_built(ctx, module, version, target) {
        build::maybe_build(ctx, module, version, target)?;
    }
    let kernel_dir = ctx.in_root(&ctx.install_tree.join(&target.kernel))?;
    if !ctx.root.exists(&kernel_dir) {
        return Err(Failure::new(
            Exit::NoKernelDir,
            [
                format!("The directory {} doesn't exist.", ctx.shown(&kernel_dir).display()),
                "You cannot install a module onto a non-existant kernel.".to_string(),
            ],
        ));
    }
    let conf = ctx.module_conf(module, version, target, true)?;
    let built_dir = ctx.version_dir(module, version).join(&target.kernel).join(&target.arch).join("module");
    let link = ctx.dkms_tree.join(module).join(format!("kernel-{}-{}", target.kernel, target.arch));
    let archive_dir = ctx.dkms_tree.join(module).join("original_module").join(&target.kernel).join(&target.arch);
    let mut installed_any = false;
    start_again_for_left_out_namesakes(ctx, &conf);
    let mut kernel_modules = KernelModules::walk(&ctx.root, &kernel_dir);
    for (index, record) in conf.modules.iter().enumerate() {
        let Some(built) = module_file(&ctx.root, &built_dir, &record.dest_name) else {
            return Err(Failure::new(
                Exit::InstallAborted,
                [format!("Missing module {} in {}", record.dest_name, ctx.shown(&built_dir).display())],
            ));
        };
        let file_name = built.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        ctx.say("");
        ctx.say(format!("{}:", file_name.to_string_lossy()));
        let existing = kernel_modules.named(&record.dest_name);
        if !version_sanity(ctx, target, &conf.obsolete_by, &record.dest_name, &built, existing)? {
            // Debian's and Ubuntu's dkms count a refused module as installed (their archives
            // install a dkms package beside the kernel's own newer copy): the install goes on,
            // marks the version active and exits 0. Upstream aborts when nothing was installed.
            installed_any |= is_debian_like(ctx);
            continue;
        }
        if index == 0
            && !commands::run_script(ctx, "pre_install", &conf.pre_install, &ctx.source_dir(module, version)?)
            && !ctx.force
        {
            return Err(Failure::new(
                Exit::PreInstallFailed,
                ["pre_install failed, aborting install.", "You may override by specifying --force."],
            ));
        }
        if index == 0 && !conf.pre_install.is_empty() {
            // The script may have changed the kernel's tree.
            kernel_modules = KernelModules::walk(&ctx.root, &kernel_dir);
        }
        let place = Placement { kernel_dir: &kernel_dir, archive: &archive_dir, suffix: &suffix_of(&file_name) };
        let active = ctx.root.is_symlink(&link);
        original_module(ctx, &place, &mut kernel_modules, &record.dest_name, &record.dest_location, active)?;
        // Symlinks on the way (an `updates` linked elsewhere) resolve inside the root.
        let dest_dir = ctx.in_root(&kernel_dir.join(record.dest_location.trim_start_matches('/')))?;
        let dest = dest_dir.join(&file_name);
        ctx.say(" - Installation");
        ctx.say(format!(
            "   - Installing to {}/",
            ctx.shown(&kernel_dir).join(record.dest_location.trim_start_matches('/')).display()
        ));
        let bytes = ctx.root.read(&built).map_err(|e| Failure::io(format!("reading {}", built.display()), e))?;
        ctx.root.create_dir_all(&dest_dir).map_err(|e| Failure::io(format!("creating {}", dest_dir.display()), e))?;
        // A module of the same name with another suffix would shadow or duplicate this one.
        for other in tree::MODULE_SUFFIXES {
            let stale = dest_dir.join(format!("{}{other}", record.dest_name));
            if stale != dest && ctx.root.exists(&stale) && ctx.root.remove_file(&stale).is_ok() {
                kernel_modules.removed(&record.dest_name, &stale);
            }
        }
        ctx.root
            .write_atomic(&dest, &bytes, Some(std::os::unix::fs::PermissionsExt::from_mode(0o644)))
            .map_err(|e| Failure::io(format!("writing {}", dest.display()), e))?;
        // A destination reached through a link out of the kernel's directory is not below it
        // for find either.
        if dest.starts_with(&kernel_dir) {
            kernel_modules.added(&record.dest_name, dest);
        }
        installed_any = true;
    }
    if !installed_any && !conf.modules.is_empty() {
        return Err(Failure::new(Exit::InstallAborted, ["Installation aborted."]));
    }
    ctx.root
        .replace_symlink(&Path::new(version).join(&target.kernel).join(&target.arch), &link)
        .map_err(|e| Failure::io(format!("creating {}", link.display()), e))?;
    commands::run_script(ctx, "post_install", &conf.post_install, &ctx.source_dir(module, version)?);
    ctx.pending_depmod(&target.kernel);
    rebuild_dependants(ctx, target)
}

/// dkms 3.4's check_and_rebuild_dependent_modules, run at the end of an install on `target`:
/// each stale dependant uninstalled, unbuilt, built and installed again. Each rebuild's own
/// install runs this check again, so a module is looked at afresh before its turn and is never
/// rebuilt twice (dkms 3.4 works from the list it made first). A failed rebuild fails the run.
fn rebuild_dependants(ctx: &Ctx, target: &Target) -> Result<()> {
    if ctx.force {
        return Ok(());
    }
    for (module, version) in depends::stale_dependants(ctx, target)? {
        let conf = ctx.module_conf(&module, &version, target, false)?;
        if !tree::is_built(ctx, &module, &version, target)
            || !depends::dependencies_changed(ctx, &module, &version, target, &conf)
        {
            continue;
        }
        ctx.say("");
        ctx.say(format!("Rebuilding module {module}/{version} due to updated dependencies"));
        ctx.say("");
        uninstall(ctx, &module, &version, target)?;
        build::unbuild(ctx, &module, &version, target)?;
        build::build(ctx, &module, &version, target)?;
        install(ctx, &module, &version, target)?;
    }
    Ok(())
}

/// dkms's check_version_sanity: false (after saying why) when the module must not be installed.
fn version_sanity(
    ctx: &Ctx,
    target: &Target,
    obsolete_by: &str,
    name: &str,
    built: &Path,
    existing: &[PathBuf],
) -> Result<bool> {
    let kernel = &target.kernel;
    ctx.say("Running module version sanity check.");
    if !obsolete_by.is_empty() && !ctx.force && is_obsoleted(obsolete_by, kernel) {
        super::print_err("");
        super::print_err(format_args!("Module has been obsoleted due to being included"));
        super::print_err(format_args!("in kernel {obsolete_by}.  We will avoid installing"));
        super::print_err(format_args!("for future kernels above {obsolete_by}."));
        super::print_err(format_args!("You may override by specifying --force."));
        return Ok(false);
    }
    if existing.is_empty() || ctx.force_version_override {
        return Ok(true);
    }
    if existing.len() > 1 {
        ctx.warn(format!(
            "Warning! Cannot do version sanity checking because multiple {name} modules were found in kernel {kernel}."
        ));
        return Ok(true);
    }
    // dkms compares `version` only; srcversion just tells its two messages apart.
    let (old_version, _) = tree::module_version(&ctx.root, &existing[0]);
    let (new_version, _) = tree::module_version(&ctx.root, built);
    let suffix = built.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if ctx.force {
        return Ok(true);
    }
    if old_version == new_version {
        super::print_err(format_args!("Module version {new_version} for {suffix}"));
        super::print_err(format_args!("exactly matches what is already found in kernel {kernel}."));
        super::print_err(format_args!("DKMS will not replace this module."));
        super::print_err(format_args!("You may override by specifying --force."));
        return Ok(false);
    }
    if !old_version.is_empty() && !new_version.is_empty() && ver_key(&old_version) > ver_key(&new_version) {
        super::print_err(format_args!(
            "Error! Module version {new_version} for {suffix}\nis not newer than what is already found in kernel {kernel} ({old_version}).\nYou may override by specifying --force."
        ));
        return Ok(false);
    }
    Ok(true)
}

/// OBSOLETE_BY: the module is part of the kernel from that release (and ABI) on.
fn is_obsoleted(obsolete_by: &str, kernel: &str) -> bool {
    let split = |s: &str| {
        let mut parts = s.splitn(3, '-');
        (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string())
    };
    let (obs, obs_abi) = split(obsolete_by);
    let (my, my_abi) = split(kernel);
    if obs.is_empty() || my.is_empty() {
        return false;
    }
    if ver_key(&obs) == ver_key(&my) {
        obs_abi.is_empty() || ver_key(&my_abi) >= ver_key(&obs_abi)
    } else {
        ver_key(&my) > ver_key(&obs)
    }
}

/// The `<name>.ko...` suffix of a module file name (`.ko`, `.ko.xz`), as dkms's module_suffix.
fn suffix_of(file_name: &std::ffi::OsStr) -> String {
    let name = file_name.to_string_lossy();
    name.find(".ko").map_or_else(|| ".ko".to_string(), |at| name[at..].to_string())
}

/// Where an install looks for and keeps the kernel's own modules.
struct Placement<'p> {
    kernel_dir: &'p Path,
    archive: &'p Path,
    suffix: &'p str,
}

/// dkms's " - Original module" report, and the kernel's own module of this name moved aside as
/// dkms does on distributions other than Debian and Ubuntu (there the module stays and
/// `updates/` wins): the first of extra/, updates/, the destination, or a single match
/// anywhere; every same-named module when there are several.
fn original_module(
    ctx: &Ctx,
    place: &Placement<'_>,
    kernel_modules: &mut KernelModules,
    name: &str,
    dest_location: &str,
    active: bool,
) -> Result<()> {
    let (root, kernel_dir, archive) = (&ctx.root, place.kernel_dir, place.archive);
    let everywhere = kernel_modules.named(name).to_vec();
    let io = |p: &Path| {
        let what = format!("archiving {}", p.display());
        move |e| Failure::io(what, e)
    };
    let moves = !is_debian_like(ctx);
    ctx.say(" - Original module");
    if active {
        if module_file(root, archive, name).is_some() {
            ctx.say("   - An original module was already stored during a previous install");
        } else {
            ctx.say("   - This kernel never originally had a module by this name");
        }
    } else {
        let candidates = [
            module_file(root, &kernel_dir.join("extra"), name),
            module_file(root, &kernel_dir.join("updates"), name),
            module_file(root, &kernel_dir.join(dest_location.trim_start_matches('/')), name),
            (everywhere.len() == 1).then(|| everywhere[0].clone()),
        ];
        let found = candidates.into_iter().flatten().next();
        if let Some(original) = &found {
            if moves {
                ctx.say(format!("   - Found {}", ctx.shown(original).display()));
                ctx.say(format!("   - Storing in {}/", ctx.shown(archive).display()));
                ctx.say("   - Archiving for uninstallation purposes");
                root.create_dir_all(archive).map_err(io(archive))?;
                let file_name = original.file_name().map(|n| n.to_os_string()).unwrap_or_default();
                root.rename(original, &archive.join(&file_name)).map_err(io(original))?;
                kernel_modules.removed(name, original);
                let origin = format!("{}\n", original.strip_prefix(kernel_dir).unwrap_or(original).display());
                let _ = root.write(&archive.join(format!("{}.origin", file_name.to_string_lossy())), origin.as_bytes());
            }
        }
        // dkms's found_original is a global: once one module of the run had an original, the
        // "none" lines are not printed for the next ones either.
        if found.is_some() {
            ctx.original_found.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if ctx.original_found.load(std::sync::atomic::Ordering::Relaxed) {
            // Said nothing more, as dkms.
        } else if everywhere.len() > 1 {
            ctx.say("   - Multiple original modules exist but DKMS does not know which to pick");
            ctx.say("   - Due to the confusion, none will be considered during a later uninstall");
        } else {
            ctx.say("   - No original module exists within this kernel");
        }
    }
    if everywhere.len() > 1 {
        ctx.say(" - Multiple same named modules!");
        ctx.say(format!(
            "   - {} named {name}{} in {}/",
            everywhere.len(),
            place.suffix,
            ctx.shown(kernel_dir).display()
        ));
        if moves {
            let collisions = archive.join("collisions");
            ctx.say("   - All instances of this module will now be stored for reference purposes ONLY");
            ctx.say(format!("   - Storing in {}/", ctx.shown(&collisions).display()));
            for duplicate in kernel_modules.named(name).to_vec() {
                let relative = duplicate.strip_prefix(kernel_dir).unwrap_or(&duplicate).to_path_buf();
                let stored = collisions.join(&relative);
                if let Some(parent) = stored.parent() {
                    root.create_dir_all(parent).map_err(io(parent))?;
                }
                ctx.say(format!("     - Stored {}", ctx.shown(&duplicate).display()));
                root.rename(&duplicate, &stored).map_err(io(&duplicate))?;
                kernel_modules.removed(name, &duplicate);
            }
        }
    }
    Ok(())
}

/// dkms's do_uninstall for one kernel.
pub fn uninstall(ctx: &Ctx, module: &str, version: &str, target: &Target) -> Result<()> {
    let kernel_dir = ctx.in_root(&ctx.install_tree.join(&target.kernel))?;
    let link = ctx.dkms_tree.join(module).join(format!("kernel-{}-{}", target.kernel, target.arch));
    let conf = ctx.module_conf(module, version, target, false)?;
    ctx.say(format!("Module {module}-{version} for kernel {} ({}).", target.kernel, target.arch));
    let archive_dir = ctx.dkms_tree.join(module).join("original_module").join(&target.kernel).join(&target.arch);
    let was_active = tree::is_installed_link(ctx, module, version, target);
    if was_active {
        ctx.say("Before uninstall, this module version was ACTIVE on this kernel.");
        let built_dir = ctx.version_dir(module, version).join(&target.kernel).join(&target.arch).join("module");
        for record in &conf.modules {
            let built = tree::BuiltModule {
                dest_name: record.dest_name.clone(),
                dest_location: record.dest_location.clone(),
                dest_location_raw: record.dest_location_raw.clone(),
            };
            let built_file = module_file(&ctx.root, &built_dir, &record.dest_name);
            let suffix = built_file.as_deref().and_then(Path::file_name).map_or_else(|| ".ko".to_string(), suffix_of);
            ctx.say("");
            ctx.say(format!("{}{suffix}:", record.dest_name));
            ctx.say(" - Uninstallation");
            let location = built_file.and_then(|b| tree::installed_location(ctx, target, &built, &b));
            match location {
                Some(dir) => {
                    ctx.say(format!("   - Deleting from: {}/", ctx.shown(&dir).display()));
                    for suffix in tree::MODULE_SUFFIXES {
                        let _ = ctx.root.remove_file(&dir.join(format!("{}{suffix}", record.dest_name)));
                    }
                    remove_empty_dirs(&ctx.root, &dir, &kernel_dir);
                }
                None => ctx.say(format!("   - Module was not found within {}/", ctx.shown(&kernel_dir).display())),
            }
            ctx.say(" - Original module");
            let archived = module_file(&ctx.root, &archive_dir, &record.dest_name);
            if archived.is_none() {
                ctx.say("   - No original module was found for this module on this kernel.");
                ctx.say("   - Use the dkms install command to reinstall any previous module version.");
            }
            if !is_debian_like(ctx) {
                if let Some(original) = archived {
                    let file_name = original.file_name().map(|n| n.to_os_string()).unwrap_or_default();
                    let origin_record = archive_dir.join(format!("{}.origin", file_name.to_string_lossy()));
                    let origin =
                        ctx.root.read_to_string(&origin_record).ok().map(|o| kernel_dir.join(o.trim())).unwrap_or_else(
                            || kernel_dir.join(record.dest_location_raw.trim_start_matches('/')).join(&file_name),
                        );
                    let origin = ctx.in_root(&origin)?;
                    ctx.say("   - Archived original module found in the DKMS tree");
                    let origin_dir = origin.parent().unwrap_or(&kernel_dir);
                    ctx.say(format!("   - Moving it to: {}/", ctx.shown(origin_dir).display()));
                    if let Some(parent) = origin.parent() {
                        let _ = ctx.root.create_dir_all(parent);
                    }
                    ctx.root
                        .rename(&original, &origin)
                        .map_err(|e| Failure::io(format!("restoring {}", original.display()), e))?;
                }
            }
        }
        ctx.root.remove_file(&link).map_err(|e| Failure::io(format!("removing {}", link.display()), e))?;
    } else {
        ctx.say("This module version was INACTIVE for this kernel.");
    }
    commands::run_script(ctx, "post_remove", &conf.post_remove, &ctx.source_dir(module, version)?);
    ctx.pending_depmod(&target.kernel);
    let collisions = archive_dir.join("collisions");
    if was_active && ctx.root.is_dir(&archive_dir) && ctx.root.is_dir(&collisions) {
        ctx.say("");
        ctx.say(format!("Keeping directory {}/", ctx.shown(&collisions).display()));
        ctx.say("for your reference purposes.  Your kernel originally contained multiple");
        ctx.say("same-named modules and this directory is now where these are located.");
    }
    if was_active && ctx.root.is_dir(&archive_dir) && !ctx.root.is_dir(&collisions) {
        ctx.say("");
        ctx.say(format!("Removing original_module from DKMS tree for kernel {} ({})", target.kernel, target.arch));
        let _ = ctx.root.remove_all(&archive_dir);
        if let Some(kernel_archive) = archive_dir.parent() {
            let _ = ctx.root.remove_dir(kernel_archive);
        }
    }
    let _ = ctx.root.remove_dir(&ctx.dkms_tree.join(module).join("original_module"));
    Ok(())
}

/// `rmdir -p --ignore-fail-on-non-empty`, stopping at the kernel's directory.
fn remove_empty_dirs(root: &Sysroot, from: &Path, stop: &Path) {
    let mut dir = from.to_path_buf();
    while dir.starts_with(stop) && dir != stop {
        if root.remove_dir(&dir).is_err() {
            break;
        }
        if !dir.pop() {
            break;
        }
    }
}

/// uninstall, unbuild and remove over their kernels.
pub fn remove_family(ctx: &Ctx, action: &str, module: &str, version: &str, targets: &[Target]) -> Result<()> {
    if tree::is_broken(ctx, module, version) {
        return Err(tree::broken(module, version));
    }
    for target in targets {
        if tree::is_built(ctx, module, version, target) && tree::is_installed_link(ctx, module, version, target) {
            uninstall(ctx, module, version, target)?;
        } else {
            ctx.say(format!(
                "Module {module} {version} is not installed for kernel {} ({}). Skipping...",
                target.kernel, target.arch
            ));
        }
        if action == "uninstall" {
            continue;
        }
        if tree::is_built(ctx, module, version, target) {
            build::unbuild(ctx, module, version, target)?;
        } else {
            ctx.say(format!(
                "Module {module} {version} is not built for kernel {} ({}). Skipping...",
                target.kernel, target.arch
            ));
        }
    }
    if action == "remove" {
        let version_dir = ctx.version_dir(module, version);
        let keep = tree::sorted_dirs(&ctx.root, &version_dir)
            .into_iter()
            .any(|d| !matches!(d.as_str(), "build" | "tarball" | "driver_disk" | "rpm" | "deb" | "source"));
        if !keep {
            ctx.say(format!("Deleting module {module}-{version} completely from the DKMS tree."));
            ctx.root
                .remove_all(&version_dir)
                .map_err(|e| Failure::io(format!("removing {}", version_dir.display()), e))?;
        }
        let module_dir = ctx.dkms_tree.join(module);
        if ctx.root.read_dir(&module_dir).is_ok_and(|entries| entries.is_empty()) {
            let _ = ctx.root.remove_dir(&module_dir);
        }
    }
    Ok(())
}

/// `autoinstall`: for each kernel, install the newest version of every module with AUTOINSTALL
/// set that is not installed there, in BUILD_DEPENDS order (dkms's repeated passes).
pub fn autoinstall(ctx: &Ctx, targets: &[Target]) -> Result<()> {
    let mut failed_any = false;
    for target in targets {
        // Newest version of each module, from everything added.
        let mut candidates: Vec<(String, String, Vec<String>)> = Vec::new();
        let mut installed: Vec<String> = Vec::new();
        for module in tree::sorted_dirs(&ctx.root, &ctx.dkms_tree) {
            let mut best: Option<(String, Vec<String>)> = None;
            let mut is_installed = false;
            for version in tree::sorted_dirs(&ctx.root, &ctx.dkms_tree.join(&module)) {
                if !tree::is_added(ctx, &module, &version) {
                    continue;
                }
                if tree::is_broken(ctx, &module, &version) {
                    super::print_err(format_args!("Error! {module}/{version} is broken! Skipping it."));
                    continue;
                }
                if tree::is_installed_link(ctx, &module, &version, target) {
                    is_installed = true;
                    continue;
                }
                let Ok(conf) = ctx.module_conf(&module, &version, target, false) else { continue };
                if !conf.autoinstall {
                    continue;
                }
                if best.as_ref().is_none_or(|(v, _)| ver_key(&version) > ver_key(v)) {
                    best = Some((version, conf.build_depends));
                }
            }
            if is_installed {
                installed.push(module);
            } else if let Some((version, depends)) = best {
                candidates.push((module, version, depends));
            }
        }
        let mut failed: Vec<String> = Vec::new();
        loop {
            let mut progress = false;
            let mut waiting = Vec::new();
            for (module, version, depends) in std::mem::take(&mut candidates) {
                if depends.iter().any(|d| !installed.contains(d)) {
                    waiting.push((module, version, depends));
                    continue;
                }
                match maybe_install(ctx, &module, &version, target) {
                    Ok(()) => {
                        installed.push(module);
                        progress = true;
                    }
                    Err(failure) => {
                        super::report(ctx, &failure);
                        failed.push(format!("{module}({})", failure.code.code()));
                    }
                }
            }
            candidates = waiting;
            if !progress || candidates.is_empty() {
                break;
            }
        }
        for (module, version, depends) in &candidates {
            let missing: Vec<&str> = depends.iter().filter(|d| !installed.contains(d)).map(String::as_str).collect();
            ctx.say(format!(
                "{module}/{version} autoinstall failed due to missing dependencies: {}",
                missing.join(" ")
            ));
        }
        failed_any |= !failed.is_empty() || !candidates.is_empty();
    }
    if failed_any {
        return Err(Failure::new(
            Exit::AutoinstallFailed,
            [
                "One or more modules failed to install during autoinstall.",
                "Refer to previous errors for more information.",
            ],
        ));
    }
    Ok(())
}

/// dkms 3.4's kernel_prerm (a kernel is being removed: every module built for it) and
/// kernel_preinst (a kernel is being installed: the AUTOINSTALL ones left from an earlier
/// install of that release): each is unbuilt, uninstalling it first, then the kernel's empty
/// directories are removed. One module's failure does not stop the others.
pub fn kernel_removal(ctx: &Ctx, action: &str, target: &Target) -> Result<()> {
    let mut failed = Vec::new();
    for module in tree::sorted_dirs(&ctx.root, &ctx.dkms_tree) {
        for version in tree::sorted_dirs(&ctx.root, &ctx.dkms_tree.join(&module)) {
            if !tree::is_built(ctx, &module, &version, target) {
                continue;
            }
            if action == "kernel_preinst" && !ctx.module_conf(&module, &version, target, true)?.autoinstall {
                continue;
            }
            super::print_err(format_args!(
                "dkms: removing module {module}/{version} for kernel {} ({})",
                target.kernel, target.arch
            ));
            if let Err(failure) = remove_family(ctx, "unbuild", &module, &version, std::slice::from_ref(target)) {
                super::report(ctx, &failure);
                failed.push(format!(" {module}/{version}({})", failure.code.code()));
            }
            if action == "kernel_prerm" {
                ctx.say("");
            }
        }
    }
    if let Ok(kernel_dir) = ctx.in_root(&ctx.install_tree.join(&target.kernel)) {
        remove_empty_tree(&ctx.root, &kernel_dir);
    }
    if !failed.is_empty() {
        return Err(Failure::new(
            Exit::KernelHookFailed,
            [format!(
                "dkms {action} for kernel {} ({}) failed for module(s){}.",
                target.kernel,
                target.arch,
                failed.concat()
            )],
        ));
    }
    Ok(())
}

/// `find DIR -type d -empty -delete`: every directory below `dir` (and `dir` itself) left empty,
/// deepest first, through the root handle (symlinks are not followed).
fn remove_empty_tree(root: &Sysroot, dir: &Path) {
    let Ok(entries) = root.read_dir(dir) else { return };
    for entry in entries {
        if entry.kind == cross::EntryKind::Dir {
            remove_empty_tree(root, &dir.join(&entry.name));
        }
    }
    if root.read_dir(dir).is_ok_and(|rest| rest.is_empty()) {
        let _ = root.remove_dir(dir);
    }
}

/// Regenerates the indexes of every kernel this run changed, natively and inside the root.
pub fn run_pending_depmods(ctx: &Ctx) -> Result<()> {
    let kernels: Vec<String> = ctx.take_pending_depmods();
    if ctx.no_depmod {
        return Ok(());
    }
    for kernel in kernels {
        // depmod works on BASEDIR/lib/modules/KERNEL: find BASEDIR from the install tree.
        let default_tree = ctx.root.resolve("/lib/modules").ok();
        let basedir = if ctx.image_mode() && default_tree.as_deref() == Some(ctx.install_tree.as_path()) {
            Some(ctx.root.root().to_path_buf())
        } else {
            basedir_of(&ctx.install_tree)
        };
        let Some(basedir) = basedir else {
            ctx.warn(format!(
                "not running depmod: the install tree {} does not end in lib/modules",
                ctx.install_tree.display()
            ));
            continue;
        };
        if !ctx.root.is_dir(&ctx.install_tree.join(&kernel)) {
            continue;
        }
        // Runs for other kernels index theirs meanwhile; runs for this one take turns (each run's
        // indexes are written after its own installs, and scan what every earlier one left).
        let module_dir = ctx.install_tree.join(&kernel);
        let turn =
            ctx.root.open_dir(&module_dir).map_err(|e| Failure::io(format!("opening {}", module_dir.display()), e))?;
        tree::take_turn(ctx, &turn, &module_dir, format!("indexing {}", ctx.shown(&module_dir).display()))?;
        let system_map = ctx.in_root(&basedir.join("boot").join(format!("System.map-{kernel}")))?;
        let options = crate::depmod::Options {
            basedir: Some(basedir.clone()),
            version: kernel.clone(),
            system_map: system_map.is_file().then_some(system_map),
            kmod: crate::kmod_release::detect(&ctx.root).map(|found| found.release).unwrap_or_default(),
            outside: ctx.outside_modules.clone(),
            ..Default::default()
        };
        if ctx.verbose {
            super::print_err(format_args!("xdkms: running depmod for {kernel}"));
        }
        let mut sink = std::io::sink();
        if let Err(e) = crate::depmod::run(&options, &mut sink) {
            return Err(Failure::new(
                Exit::DepmodFailed,
                [
                    format!("Problems with depmod detected for {kernel}: {e:#}"),
                    "The modules are installed but the kernel's module indexes are stale.".to_string(),
                ],
            ));
        }
    }
    Ok(())
}

/// The directory whose `lib/modules` is `install_tree` (`/` for `/lib/modules`).
fn basedir_of(install_tree: &Path) -> Option<PathBuf> {
    let modules = install_tree.file_name()?;
    let lib = install_tree.parent()?;
    (modules == "modules" && lib.file_name()? == "lib").then(|| lib.parent().map(Path::to_path_buf)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obsoleted_kernels() {
        assert!(is_obsoleted("5.10", "6.1.0-56-amd64"));
        assert!(!is_obsoleted("99.0", "6.1.0-56-amd64"));
        assert!(is_obsoleted("6.1.0-50", "6.1.0-56-amd64"));
        assert!(!is_obsoleted("6.1.0-60", "6.1.0-56-amd64"));
    }

    #[test]
    fn basedir_from_install_tree() {
        assert_eq!(basedir_of(Path::new("/lib/modules")), Some(PathBuf::from("/")));
        assert_eq!(basedir_of(Path::new("/r/usr/lib/modules")), Some(PathBuf::from("/r/usr")));
        assert_eq!(basedir_of(Path::new("/r/mods")), None);
    }
}
