//! DKMS commands on an image (`--root IMAGE`): run first on the image's parts extracted in part,
//! and again on the whole when the run needs what was left out.
//!
//! Left out of the first extraction: the kernels' headers but their release and configuration
//! files (only a build reads more there), and from an ext2/3/4 image the kernels' own module
//! files (`lib/modules/K/kernel/**`) whose names the dkms tree does not know (only depmod reads
//! them, and reads them from the image). Copying both out and removing them again took most of
//! an install's time.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::image_basedir::{child_args, dkms_parts, run_child, Held};
use crate::depmod::outside::OutsideFiles;
use crate::dkms::tree::module_name_of;
use crate::exit::Exit;
use crate::image_root::{lexical_target, ImageRoot, LeftOut, Links, Selection, View};

/// The variable telling a child run that its root is the image's in part.
const PARTIAL_VARIABLE: &str = "XDKMS_IMAGE_PARTIAL";

/// The variable naming the file that lists the module files left out of a child run's root.
const LEFT_OUT_VARIABLE: &str = "XDKMS_IMAGE_LEFT_OUT";

/// What a child run of [`run`] is told about its root.
#[derive(Debug, Default)]
pub struct Partial {
    /// The root is the image's in part.
    pub partial: bool,
    /// The kernels' module files left out of the root.
    pub left_out: Option<Arc<dyn OutsideFiles>>,
}

/// In a child run of [`run`]: what it is told about its root. The variables go, so that the
/// programs the run starts do not see them: call this before any thread starts.
pub fn take_partial() -> Result<Partial, String> {
    let partial = std::env::var_os(PARTIAL_VARIABLE).is_some();
    let left_out = std::env::var_os(LEFT_OUT_VARIABLE).map(PathBuf::from);
    std::env::remove_var(PARTIAL_VARIABLE);
    std::env::remove_var(LEFT_OUT_VARIABLE);
    let left_out = match left_out {
        Some(path) => {
            let left_out = LeftOut::load(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            Some(Arc::new(left_out) as Arc<dyn OutsideFiles>)
        }
        None => None,
    };
    Ok(Partial { partial, left_out })
}

/// A child run's context told what its root is.
pub fn tell(ctx: &mut crate::dkms::Ctx, partial: Partial) {
    if partial.partial {
        ctx.partial_root = Some(want_whole_root);
    }
    // The module files left out are those whose names the image's /var/lib/dkms does not know.
    if partial.left_out.is_some() && ctx.dkms_tree_target != Path::new("/").join(DKMS_TREE) {
        want_whole_root();
    }
    ctx.outside_modules = partial.left_out;
}

/// Ends a child run of [`run`] that needs what was left out of its root: its parent starts it
/// again on the whole (what it did so far is in the scratch root, which is dropped).
pub fn want_whole_root() -> ! {
    std::process::exit(Exit::WholeRootWanted.code())
}

/// The DKMS command line `args` (the action first) run in a child process on the parts of the
/// image `root` that `action` reads, the image named `image` on the command line: first on a
/// partial extraction, its output held; when it needs what was left out, again on the whole.
/// With `whole` (options naming paths in the headers), that second run only. The view it last
/// ran on and its exit status.
pub fn run(
    mut root: ImageRoot,
    image: &str,
    action: &str,
    args: &[String],
    whole: bool,
) -> Result<(View, Exit), String> {
    let mut parts = dkms_parts();
    // inject reads the kernel's modules it puts in the initramfs.
    let reads_modules = action == "initramfs-inject";
    if reads_modules {
        // The firmware the added modules name goes into the initramfs too.
        parts.extend(["lib/firmware".to_string(), "usr/lib/firmware".to_string()]);
    }
    if !whole {
        let view = view(root, &parts, Extent::Partial { reads_modules })?;
        let left_out = left_out_file(&view)?;
        let mut environment = vec![(PARTIAL_VARIABLE, "1".to_string())];
        if let Some(file) = &left_out {
            environment.push((LEFT_OUT_VARIABLE, file.display().to_string()));
        }
        let held = Mutex::new(Held::default());
        let exit = run_child("xdkms", &view, &child_args(&view, image, args), &environment, Some(&held));
        if let Some(file) = &left_out {
            let _ = std::fs::remove_file(file);
        }
        // A change into what was left out (an uninstall removing a directory that looked empty)
        // is not written back: the command runs again on the whole.
        if exit != Exit::WholeRootWanted && (exit == Exit::Failed || !view.changes_reach_left_out()) {
            held.lock().unwrap_or_else(|e| e.into_inner()).release();
            return Ok((view, exit));
        }
        root = view.discard();
    }
    let view = view(root, &parts, Extent::Whole)?;
    let exit = run_child("xdkms", &view, &child_args(&view, image, args), &[], None);
    Ok((view, exit))
}

/// The list of `view`'s left-out files, written beside its scratch root (a killed run's is
/// removed with the scratch roots it left); None when nothing was left out.
fn left_out_file(view: &View) -> Result<Option<PathBuf>, String> {
    let Some(left_out) = view.left_out() else { return Ok(None) };
    let file = PathBuf::from(format!("{}.left-out", view.dir().display()));
    left_out.save(&file).map_err(|e| format!("writing {}: {e}", file.display()))?;
    Ok(Some(file))
}

/// How much of the image a view holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extent {
    /// Of the kernels' headers their release and configuration files only, and unless the
    /// command `reads_modules`, not the kernels' own module files the dkms tree does not name.
    Partial {
        reads_modules: bool,
    },
    Whole,
}

/// Where a DKMS command's module sources and kernel headers are (the other parts are extracted
/// first: the kernels' `build` links say which directories there are headers).
const SOURCE_TREE: &str = "usr/src";

/// The dkms tree, extracted first: the module names it knows are extracted with the kernels'
/// module files, not left out.
const DKMS_TREE: &str = "var/lib/dkms";

/// `parts` of `root` extracted, what their symlinks point at too, as `extent` says.
fn view(root: ImageRoot, parts: &[String], extent: Extent) -> Result<View, String> {
    let error = |e: crate::image_root::ImageError| e.to_string();
    let mut extraction = root.start_view().map_err(error)?;
    let (mut sources, mut others): (Vec<String>, Vec<String>) = parts.iter().cloned().partition(|p| p == SOURCE_TREE);
    let Extent::Partial { reads_modules } = extent else {
        extraction.add(Selection::of(&others), Links::Keep).map_err(error)?;
        extraction.add(Selection::of(&sources), Links::Follow).map_err(error)?;
        return extraction.finish().map_err(error);
    };
    let tree: Vec<String> = others.iter().filter(|p| *p == DKMS_TREE).cloned().collect();
    others.retain(|p| p != DKMS_TREE);
    extraction.add(Selection::of(&tree), Links::Keep).map_err(error)?;
    let known = module_names_below(&extraction.dir().join(DKMS_TREE));
    let leave_out = |path: &str| kernel_module_file(path).is_some_and(|name| !known.contains(name));
    let leave_out: &(dyn Fn(&str) -> bool + Sync) = &leave_out;
    let others = Selection { leave_out: (!reads_modules).then_some(leave_out), ..Selection::of(&others) };
    extraction.add(others, Links::Keep).map_err(error)?;
    let mut except = Vec::new();
    for dir in header_dirs(extraction.dir()) {
        sources.extend(cross::kernel::RELEASE_AND_CONFIG_FILES.iter().map(|file| format!("{dir}/{file}")));
        except.push(dir);
    }
    // Debian's headers of a kernel include a -common directory no link names.
    except.push(format!("{SOURCE_TREE}/linux-headers-*"));
    extraction.add(Selection { except: &except, ..Selection::of(&sources) }, Links::Follow).map_err(error)?;
    extraction.finish().map_err(error)
}

/// The module name of root-relative `path` when it is a module file of a kernel's own tree
/// (`lib/modules/K/kernel/...` or `usr/lib/modules/K/kernel/...`).
fn kernel_module_file(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("usr/").unwrap_or(path).strip_prefix("lib/modules/")?;
    let (_kernel, rest) = rest.split_once('/')?;
    let file = rest.strip_prefix("kernel/")?.rsplit('/').next()?;
    module_name_of(file)
}

/// The module names of the module files below `dir` (the dkms tree: built modules, original
/// modules kept aside; none when it was not extracted).
fn module_names_below(dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (path, kind) in crate::fsio::entries_below(dir).unwrap_or_default() {
        if let Some(name) =
            path.file_name().and_then(|n| n.to_str()).and_then(module_name_of).filter(|_| !kind.is_dir())
        {
            names.insert(name.to_string());
        }
    }
    names
}

/// The kernels' headers directories of the root extracted at `dir`, root-relative: where the
/// `build` and `source` links of each kernel's module directory point.
fn header_dirs(dir: &Path) -> Vec<String> {
    let mut dirs = BTreeSet::new();
    for modules in ["lib/modules", "usr/lib/modules"] {
        // Through a symlink (lib -> usr/lib) the other one is the same directory; an absolute
        // one would lead out of the scratch root.
        if link_on_the_way(dir, modules) {
            continue;
        }
        let Ok(kernels) = std::fs::read_dir(dir.join(modules)) else { continue };
        for kernel in kernels.flatten() {
            if !kernel.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let parent = format!("{modules}/{}", kernel.file_name().to_string_lossy());
            for link in ["build", "source"] {
                let Ok(target) = std::fs::read_link(kernel.path().join(link)) else { continue };
                dirs.extend(lexical_target(&parent, &target.to_string_lossy()));
            }
        }
    }
    dirs.into_iter().collect()
}

/// Whether a component of root-relative `path` is a symlink in the root at `dir`.
fn link_on_the_way(dir: &Path, path: &str) -> bool {
    let mut at = dir.to_path_buf();
    path.split('/').any(|part| {
        at.push(part);
        std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kernels_own_module_files_are_left_out() {
        assert_eq!(kernel_module_file("lib/modules/6.1/kernel/drivers/block/nbd.ko"), Some("nbd"));
        assert_eq!(kernel_module_file("usr/lib/modules/6.1/kernel/fs/ext4/ext4.ko.xz"), Some("ext4"));
        assert_eq!(kernel_module_file("lib/modules/6.1/kernel/a.ko.zst"), Some("a"));
        assert_eq!(kernel_module_file("lib/modules/6.1/kernel/a.kobj.ko"), Some("a.kobj"));
        assert_eq!(kernel_module_file("lib/modules/6.1/updates/dkms/m.ko"), None);
        assert_eq!(kernel_module_file("lib/modules/6.1/kernel/drivers/x.ko.sig"), None);
        assert_eq!(kernel_module_file("lib/modules/6.1/modules.dep"), None);
        assert_eq!(kernel_module_file("lib/firmware/kernel/x.ko"), None);
    }
}
