//! Finding modules: the directory walk, externals, and which of two same-named modules wins.
//!
//! Everything here reproduces kmod's `depmod_modules_search*` and
//! `depmod_module_is_higher_priority`, including the raw readdir order (ties between same-named
//! modules depend on it) and the quirks of its prefix comparisons. Paths are target paths: inside
//! a sysroot every symlink is resolved against the root.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cross::{EntryKind, Sysroot};

use super::config::{Config, Search};
use super::outside::{by_directory, OutsideFiles};
use crate::kmod_release::Compressions;
use crate::module::modname_from_path;

/// A module chosen by the walk.
#[derive(Debug, Clone)]
pub struct FoundModule {
    /// The path as scanned (a target path when scanning a sysroot).
    pub path: Vec<u8>,
    /// Path relative to the module directory, when the module lives under it.
    pub relpath: Option<Vec<u8>>,
    /// The path modules.order lines are matched against (`kernel/fs/foo-bar.ko`).
    pub uncrelpath: Option<Vec<u8>>,
    pub modname: Vec<u8>,
    /// Where to read the file on the build host.
    pub host: PathBuf,
    /// The file's index among the walk's outside files, when it is read from there.
    pub outside: Option<usize>,
}

/// The result of a walk: modules by name plus what kmod would have printed on the way.
#[derive(Debug, Default)]
pub struct Found {
    pub modules: HashMap<Vec<u8>, FoundModule>,
    pub errors: Vec<String>,
}

/// Walks the module directory `dirname` (target path, read through `root`) and then every external
/// directory of `config`, taking the files `compressions` makes modules. Fails only when the
/// module directory itself cannot be read: then with the error line kmod prints and the error.
pub fn search(
    root: &Sysroot,
    dirname: &[u8],
    config: &Config,
    compressions: Compressions,
    outside: Option<&dyn OutsideFiles>,
) -> Result<Found, (String, std::io::Error)> {
    let outside = outside.map(by_directory).unwrap_or_default();
    let mut walker = Walker { root, compressions, dirname, config, outside, found: Found::default() };
    let shown = format!("{}{}", super::shown_root(root), show(dirname));
    let failed = |e: std::io::Error| (format!("could not open directory {shown}: {}", super::strerror(&e)), e);
    let host_dir = resolve(root, dirname).map_err(failed)?;
    walker.walk(&host_dir, dirname).map_err(failed)?;
    for external in &config.externals {
        match resolve(root, external) {
            Ok(host) => {
                if let Err(e) = walker.walk(&host, external) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        walker.found.errors.push(format!("could not open directory {}: {e}", show(external)));
                    }
                }
            }
            Err(e) => walker.found.errors.push(format!("could not open directory {}: {e}", show(external))),
        }
    }
    Ok(walker.found)
}

/// Builds the module entry for a path given explicitly on the command line (host path).
pub fn explicit_module(path: &Path, host_dirname: &[u8]) -> FoundModule {
    let bytes = path.as_os_str().as_bytes().to_vec();
    FoundModule::new(bytes, path.to_path_buf(), host_dirname)
}

fn resolve(root: &Sysroot, target: &[u8]) -> std::io::Result<PathBuf> {
    root.resolve(Path::new(std::ffi::OsStr::from_bytes(target)))
}

pub(crate) fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl FoundModule {
    fn new(path: Vec<u8>, host: PathBuf, dirname: &[u8]) -> FoundModule {
        let modname = modname_from_path(&path);
        let relpath = (path.len() > dirname.len() && path.starts_with(dirname) && path[dirname.len()] == b'/')
            .then(|| path[dirname.len() + 1..].to_vec());
        let uncrelpath = relpath.as_ref().map(|rel| {
            let base_start = rel.iter().rposition(|&b| b == b'/').map_or(0, |slash| slash + 1);
            let end = (base_start + modname.len()).min(rel.len());
            let mut uncompressed = rel[..end].to_vec();
            uncompressed.extend_from_slice(b".ko");
            uncompressed
        });
        FoundModule { path, relpath, uncrelpath, modname, host, outside: None }
    }
}

struct Walker<'a> {
    root: &'a Sysroot,
    /// What the kmod build reproduced reads: files in other formats are not modules to it.
    compressions: Compressions,
    dirname: &'a [u8],
    config: &'a Config,
    /// Module files of the root read from outside its tree, by directory (see [`OutsideFiles`]).
    outside: HashMap<&'a str, Vec<(&'a str, usize)>>,
    found: Found,
}

impl Walker<'_> {
    fn excluded(&self, name: &[u8]) -> bool {
        name == b"."
            || name == b".."
            || name == b"build"
            || name == b"source"
            || self.config.excludes.iter().any(|e| e == name)
    }

    /// Depth first in readdir order, descending into a directory as soon as it is met. Every
    /// entry is read through the root handle: a symlink is followed inside the root.
    fn walk(&mut self, host_dir: &Path, target_dir: &[u8]) -> std::io::Result<()> {
        for entry in self.root.read_dir_in_order(host_dir).map_err(cross::without_path)? {
            let name = entry.name.as_bytes();
            if self.excluded(name) {
                continue;
            }
            let mut target = target_dir.to_vec();
            target.push(b'/');
            target.extend_from_slice(name);
            let host = host_dir.join(&entry.name);
            let kind = match entry.kind {
                EntryKind::Symlink => match self.root.metadata(&host) {
                    Ok(meta) if meta.is_dir() => EntryKind::Dir,
                    Ok(meta) if meta.is_file() => EntryKind::File,
                    Ok(_) => EntryKind::Other,
                    Err(e) => {
                        self.found.errors.push(format!("fstatat({}): {}", show(&target), cross::without_path(e)));
                        continue;
                    }
                },
                kind => kind,
            };
            match kind {
                EntryKind::Dir => {
                    if let Err(e) = self.walk(&host, &target) {
                        self.found.errors.push(format!("failed {}: {}", show(&target), cross::without_path(e)));
                    }
                }
                EntryKind::File => {
                    if self.compressions.is_module_file_name(name) {
                        self.consider(target, host);
                    }
                }
                _ => self.found.errors.push(format!("unsupported file type {}", show(&target))),
            }
        }
        self.consider_outside(host_dir, target_dir);
        Ok(())
    }

    /// The outside files of the directory at `host_dir`, after the ones it holds (they would be
    /// among them: a tie between two same-named modules may fall otherwise than on the tree).
    fn consider_outside(&mut self, host_dir: &Path, target_dir: &[u8]) {
        let Ok(relative) = host_dir.strip_prefix(self.root.root()) else { return };
        let Some(files) = relative.to_str().and_then(|dir| self.outside.get(dir)) else { return };
        for (name, index) in files.clone() {
            if self.excluded(name.as_bytes()) || !self.compressions.is_module_file_name(name.as_bytes()) {
                continue;
            }
            let mut target = target_dir.to_vec();
            target.push(b'/');
            target.extend_from_slice(name.as_bytes());
            let mut candidate = FoundModule::new(target, host_dir.join(name), self.dirname);
            candidate.outside = Some(index);
            self.consider_found(candidate);
        }
    }

    fn consider(&mut self, path: Vec<u8>, host: PathBuf) {
        self.consider_found(FoundModule::new(path, host, self.dirname));
    }

    fn consider_found(&mut self, candidate: FoundModule) {
        if let Some(existing) = self.found.modules.get(&candidate.modname) {
            if existing_wins(self.config, self.dirname, existing, &candidate) {
                return;
            }
        }
        self.found.modules.insert(candidate.modname.clone(), candidate);
    }
}

/// Length of `path` up to the end of the module name in its basename (kmod's `baselen + modnamelen`).
fn name_end(module: &FoundModule) -> usize {
    let base_start = module.path.iter().rposition(|&b| b == b'/').map_or(0, |slash| slash + 1);
    (base_start + module.modname.len()).min(module.path.len())
}

/// The path relative to `dirname`, cut after the module name, when the path starts with dirname.
/// (kmod checks only the prefix here, not the slash after it.)
fn relative_stem<'p>(path: &'p [u8], end: usize, dirname: &[u8]) -> Option<&'p [u8]> {
    if !path.starts_with(dirname) {
        return None;
    }
    Some(path.get(dirname.len() + 1..end).unwrap_or(&[]))
}

fn starts_with_dir(path: &[u8], len: usize, dir: &[u8]) -> bool {
    len > dir.len() && path.get(dir.len()) == Some(&b'/') && path.starts_with(dir)
}

/// kmod's `depmod_module_is_higher_priority`: true when the module already found stays.
fn existing_wins(config: &Config, dirname: &[u8], old: &FoundModule, new: &FoundModule) -> bool {
    let (new_end, old_end) = (name_end(new), name_end(old));
    let rel_new = relative_stem(&new.path, new_end, dirname);
    let rel_old = relative_stem(&old.path, old_end, dirname);

    for entry in &config.overrides {
        if rel_new == Some(entry.as_slice()) {
            return false;
        }
        if rel_old == Some(entry.as_slice()) {
            return true;
        }
    }

    let (mut builtin, mut old_prio, mut new_prio) = (-1i64, -1i64, -1i64);
    let mut i = 0i64;
    for search in &config.searches {
        match search {
            Search::BuiltIn => builtin = i,
            Search::External => {
                for external in &config.externals {
                    if starts_with_dir(&new.path, new_end, external) {
                        new_prio = i;
                    }
                    if starts_with_dir(&old.path, old_end, external) {
                        old_prio = i;
                    }
                    i += 1;
                }
            }
            Search::Path(dir) => {
                let under = |rel: Option<&[u8]>| {
                    rel.is_some_and(|rel| rel.len() > dir.len() && rel[dir.len()] == b'/' && rel.starts_with(dir))
                };
                // kmod's else-if: the old module is only checked when the new one does not match.
                if under(rel_new) {
                    new_prio = i;
                } else if under(rel_old) {
                    old_prio = i;
                }
            }
        }
        i += 1;
    }
    if new_prio < 0 {
        new_prio = builtin;
    }
    if old_prio < 0 {
        old_prio = builtin;
    }
    new_prio <= old_prio
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(path: &str) -> FoundModule {
        FoundModule::new(path.as_bytes().to_vec(), PathBuf::new(), b"/lib/modules/6.1")
    }

    fn config(text: &str) -> Config {
        let mut config = Config::default();
        config.parse_file(text.as_bytes(), Path::new("t.conf"), "6.1", &mut Vec::new());
        if config.searches.is_empty() {
            config.searches.push(Search::Path(b"updates".to_vec()));
        }
        config
    }

    #[test]
    fn uncompressed_relative_path_for_modules_order() {
        let m = module("/lib/modules/6.1/kernel/fs/foo-bar.ko.xz");
        assert_eq!(m.relpath.as_deref(), Some(&b"kernel/fs/foo-bar.ko.xz"[..]));
        assert_eq!(m.uncrelpath.as_deref(), Some(&b"kernel/fs/foo-bar.ko"[..]));
        assert_eq!(m.modname, b"foo_bar");
        assert!(module("/opt/ext/foo.ko").relpath.is_none());
    }

    #[test]
    fn updates_beats_kernel_by_default() {
        let c = config("");
        let kernel = module("/lib/modules/6.1/kernel/foo.ko");
        let updates = module("/lib/modules/6.1/updates/foo.ko");
        assert!(!existing_wins(&c, b"/lib/modules/6.1", &kernel, &updates));
        assert!(existing_wins(&c, b"/lib/modules/6.1", &updates, &kernel));
    }

    #[test]
    fn same_prefix_search_does_not_match_longer_dir() {
        let c = config("search foobar foo built-in\n");
        let foo = module("/lib/modules/6.1/foo/m.ko");
        let foobar = module("/lib/modules/6.1/foobar/m.ko");
        assert!(!existing_wins(&c, b"/lib/modules/6.1", &foo, &foobar));
        assert!(existing_wins(&c, b"/lib/modules/6.1", &foobar, &foo));
    }

    #[test]
    fn override_wins_over_search() {
        let c = config("search updates built-in\noverride m * kernel/drivers\n");
        let updates = module("/lib/modules/6.1/updates/m.ko");
        let kernel = module("/lib/modules/6.1/kernel/drivers/m.ko");
        assert!(!existing_wins(&c, b"/lib/modules/6.1", &updates, &kernel));
    }
}
