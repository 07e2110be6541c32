//! `xdkms initramfs inject`: modules with their dependency closure and firmware into an existing
//! image, offline, with fresh indexes from the native depmod.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cross::Sysroot;
use initramfs::image::{archive_entries, write_image};
use initramfs::spool::{Spool, SpoolOptions};
use initramfs::{Codec, Data, Entry, Level, Tree};

use crate::depmod::{self, output::alias_normalize, Analysis};
use crate::initramfs_cmd::{open_image, scan_error, source_date_epoch, write_output};
use crate::module::elf::ReadOptions;
use crate::module::{is_module_file_name, modname_from_path, ModuleElf, ModuleImage};

/// How the new content reaches the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decompress the main segment, merge, recompress (tools like lsinitramfs still read it).
    Rewrite,
    /// Leave the original bytes alone and add one segment (cost follows what is added).
    Append,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub image: PathBuf,
    pub root: PathBuf,
    pub version: String,
    pub mode: Mode,
    /// `None` keeps the image's own codec.
    pub compress: Option<Codec>,
    pub output: Option<PathBuf>,
    pub items: Vec<String>,
    /// The kmod release whose index layout the image's tools expect.
    /// The kmod build whose indexes to write (and whose module formats count): the root's.
    pub kmod: crate::kmod_release::KmodRelease,
    /// Compression level; default: the codec's image default (zstd 15), zstd 3 when appending.
    pub level: Option<i32>,
    /// The most file data the image may unpack to.
    pub max_unpacked: u64,
}

/// How much file data extract and inject take from an image unless told otherwise (8 GiB): well
/// above any initramfs a kernel boots (it holds the whole unpacked tree in memory), well below
/// what a decompression bomb of a few KiB would fill a disk with.
pub const DEFAULT_MAX_UNPACKED: u64 = 8 << 30;

/// zstd level for appended segments: they hold what was added (a few MiB), where a fast level
/// costs little space.
const APPEND_ZSTD_LEVEL: i32 = 3;

/// What an inject added, for the summary line.
#[derive(Debug, Default)]
pub struct Report {
    pub modules: Vec<String>,
    pub firmware: Vec<String>,
    pub warnings: Vec<String>,
}

/// A module to add: its file on the build host and where it goes under the module directory.
struct Added {
    relpath: String,
    host: PathBuf,
    /// ROOT's own module (read through the root handle), or a file named outside ROOT.
    in_root: bool,
}

/// The image as read: its members (file data in the scratch directory), and the open file
/// with its length (the kept bytes are copied from the very file that was read).
struct ReadImage {
    spool: Spool,
    file: std::fs::File,
    len: u64,
}

pub fn run(options: &Options) -> anyhow::Result<Report> {
    if let Err(why) = crate::names::check_component(&options.version) {
        bail!(
            "kernel version {:?} cannot be used: {why}; give the release of a kernel in ROOT/lib/modules",
            options.version
        );
    }
    if !options.root.is_dir() {
        bail!("ROOT {} does not exist or is not a directory", options.root.display());
    }
    let root = Sysroot::new(&options.root)?;
    // The image's file data is held on disk while the new image is written, not in memory.
    let scratch = crate::fsio::scratch_dir(&std::env::temp_dir(), "xdkms-inject-")
        .context("cannot create a scratch directory in TMPDIR")?;
    // The image and ROOT's modules are read at the same time.
    let (image, modules) = rayon::join(
        || read_image(options, scratch.path()),
        || RootModules::load(&root, &options.version, options.kmod),
    );
    let (image, modules) = (image?, modules?);
    let mut report = Report::default();
    let tree = image.spool.tree(0);
    let module_dir = tree.resolve(&format!("lib/modules/{}", options.version));
    let mut new_files = files_to_add(options, &root, &modules, &tree, &module_dir, &mut report)?;
    let depmod_root = scratch.path().join("depmod");
    for (name, data) in indexes_for(&tree, &module_dir, &new_files, &depmod_root, options)? {
        new_files.insert(format!("{module_dir}/{name}"), Entry::file("", 0o644, data));
    }
    // What depmod and ROOT's module lists used is free now; compressing needs the most memory.
    drop(modules);
    crate::memory::release_freed();
    write_result(options, &image, &tree, new_files)?;
    Ok(report)
}

/// Streams the image into a spool in `scratch`. Appending keeps only what the new indexes are
/// made from (the image's modules and depmod configuration); a rewrite keeps every file.
fn read_image(options: &Options, scratch: &Path) -> anyhow::Result<ReadImage> {
    let dir = scratch.join("spool");
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let keep_all = |_: &str| true;
    // depmod reads these as files: they get files of their own, to be linked into its tree.
    let for_depmod = |path: &str| path.contains("lib/modules/") || path.contains("depmod.d/");
    let keep: &dyn Fn(&str) -> bool = match options.mode {
        Mode::Rewrite => &keep_all,
        Mode::Append => &for_depmod,
    };
    let file = open_image(&options.image)?;
    let len = file.metadata().with_context(|| format!("cannot read {}", options.image.display()))?.len();
    let spool_options = SpoolOptions { dir: &dir, keep, separate: &for_depmod, limit: options.max_unpacked };
    let spool = Spool::read(&file, &spool_options).map_err(|e| scan_error(&options.image, e))?;
    Ok(ReadImage { spool, file, len })
}

/// The modules asked for with their closure, ROOT's module lists and the firmware they name, by
/// path in the image.
fn files_to_add(
    options: &Options,
    root: &Sysroot,
    modules: &RootModules,
    tree: &Tree,
    module_dir: &str,
    report: &mut Report,
) -> anyhow::Result<BTreeMap<String, Entry>> {
    let (wanted, mut added, outside_softdeps) = resolve_items(options, root, modules)?;
    let closure = close_over(modules, wanted, &outside_softdeps);
    let from_root = closure
        .iter()
        .map(|&m| Ok(Added { relpath: modules.modules[m].path.clone(), host: modules.host(root, m)?, in_root: true }))
        .collect::<anyhow::Result<Vec<_>>>()?;
    added.splice(0..0, from_root);
    let mut new_files: BTreeMap<String, Entry> = BTreeMap::new();
    let mut elves = Vec::new();
    for module in &added {
        if module.relpath.starts_with('/') {
            bail!("{} lies outside the module directory (an `external` module); inject it by path", module.relpath);
        }
        let data = match module.in_root {
            true => root.read(&module.host),
            false => std::fs::read(&module.host),
        }
        .with_context(|| format!("cannot read {}", module.host.display()))?;
        // Only the added modules' firmware lists are needed: parse just those.
        if let Ok(elf) = ModuleImage::from_bytes(&data).and_then(|i| ModuleElf::parse(&i, ReadOptions::default())) {
            elves.push(elf);
        }
        new_files.insert(format!("{module_dir}/{}", module.relpath), Entry::file("", 0o644, data));
        report.modules.push(module.relpath.clone());
    }
    for name in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
        if let Ok(data) = root.read(&modules.input_dir.join(name)) {
            new_files.insert(format!("{module_dir}/{name}"), Entry::file("", 0o644, data));
        }
    }
    let firmware_dir = tree.resolve("lib/firmware");
    add_firmware(root, &options.version, &elves, &firmware_dir, &mut new_files, report)?;
    Ok(new_files)
}

/// Writes the new image: in rewrite mode the segments before the main one as they were, then
/// the main segment's files merged with the new ones; in append mode the whole original, then
/// one segment of the new files.
fn write_result(
    options: &Options,
    image: &ReadImage,
    tree: &Tree,
    new_files: BTreeMap<String, Entry>,
) -> anyhow::Result<()> {
    let mtime = source_date_epoch()?;
    let codec = options.compress.unwrap_or(image.spool.main_codec());
    // An appended segment is small: a fast zstd level costs little space there.
    let level = match (options.level, options.mode, codec) {
        (Some(level), _, _) => Level(Some(level)),
        (None, Mode::Append, Codec::Zstd) => Level(Some(APPEND_ZSTD_LEVEL)),
        _ => Level::default(),
    };
    let (kept, entries) = match options.mode {
        Mode::Rewrite => {
            let mut files = image.spool.tree(image.spool.rewrite_start()).files;
            files.extend(new_files);
            (image.spool.rewrite_kept(), archive_entries(files, None, mtime))
        }
        Mode::Append => (image.spool.append_kept(image.len), archive_entries(new_files, Some(tree), mtime)),
    };
    let output = options.output.as_deref().unwrap_or(&options.image);
    write_output(output, |out| {
        let mut original = &image.file;
        std::io::Seek::seek(&mut original, std::io::SeekFrom::Start(0))?;
        write_image(out, &mut original, kept, &entries, codec, level)
    })
}

/// The items asked for: modules of ROOT (by index: names, aliases, modaliases) and module files
/// from outside ROOT (they go to updates/), with what those import and softdep.
fn resolve_items(
    options: &Options,
    root: &Sysroot,
    modules: &RootModules,
) -> anyhow::Result<(BTreeSet<usize>, Vec<Added>, Vec<String>)> {
    let mut wanted: BTreeSet<usize> = BTreeSet::new();
    let mut added: Vec<Added> = Vec::new();
    let mut outside_softdeps = Vec::new();
    for item in &options.items {
        let path = Path::new(item);
        if path.is_file() && is_module_file_name(item.as_bytes()) && !path_is_in(root, path) {
            if !options.kmod.compressions.is_module_file_name(item.as_bytes()) {
                bail!(
                    "{item}: the root's kmod (release {}) was built without this compression and would not \
                     load the module; add it uncompressed or in a format that kmod reads",
                    options.kmod.version
                );
            }
            let elf = ModuleImage::open(path)
                .and_then(|image| ModuleElf::parse(&image, ReadOptions::default()))
                .with_context(|| format!("{item} is not a readable kernel module"))?;
            let base = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            wanted.extend(elf.imports.iter().flatten().filter_map(|import| modules.symbols.get(&import.name)));
            outside_softdeps.extend(elf.modinfo_values(b"softdep").flat_map(softdep_names));
            added.push(Added { relpath: format!("updates/{base}"), host: path.to_path_buf(), in_root: false });
            continue;
        }
        let found = lookup(modules, item);
        if found.is_empty() {
            bail!("{}", not_found_message(root, modules, item, &options.version));
        }
        wanted.extend(found);
    }
    Ok((wanted, added, outside_softdeps))
}

/// What inject needs to know about ROOT's modules.
struct RootModules {
    /// The module directory as ROOT sees it (`/lib/modules/VERSION`) and on the build host.
    dirname: String,
    input_dir: PathBuf,
    modules: Vec<RootModule>,
    by_name: HashMap<Vec<u8>, usize>,
    /// Each module's full dependency list, as in modules.dep.
    deps: Vec<Vec<usize>>,
    /// Normalized alias patterns and their module.
    aliases: Vec<(String, usize)>,
    /// Module names and aliases each module's softdeps name.
    softdeps: Vec<Vec<String>>,
    /// Exported symbol to its module.
    symbols: HashMap<Vec<u8>, usize>,
}

struct RootModule {
    modname: Vec<u8>,
    /// The path as modules.dep has it: relative to the module directory, or absolute (external).
    path: String,
    /// Where it is on the build host, when already known (resolved on use otherwise).
    host: Option<PathBuf>,
}

/// Words of a softdep value that name modules (`pre:`/`post:` dropped).
fn softdep_names(value: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(value)
        .split_whitespace()
        .filter(|w| *w != "pre:" && *w != "post:")
        .map(String::from)
        .collect()
}

impl RootModules {
    /// ROOT's modules for `version`: from ROOT's own indexes when they are newer than every
    /// module (depmod -A's rule), else from reading every module, as depmod would.
    fn load(root: &Sysroot, version: &str, kmod: crate::kmod_release::KmodRelease) -> anyhow::Result<RootModules> {
        let dirname = String::from_utf8_lossy(&depmod::module_dir(root, version)).into_owned();
        let input_dir = root.resolve(&dirname)?;
        if !root.is_dir(&input_dir) {
            bail!("ROOT has no {dirname}: is {version} the right kernel version?");
        }
        if depmod::up_to_date(root, &input_dir, kmod.compressions) {
            if let Some(indexed) = RootModules::from_indexes(root, &dirname, &input_dir) {
                return Ok(indexed);
            }
        }
        let options = depmod::Options {
            basedir: Some(root.root().to_path_buf()),
            version: version.to_string(),
            kmod,
            ..depmod::Options::default()
        };
        let analysis = depmod::analyze(&options, &mut std::io::sink())
            .with_context(|| format!("cannot read the modules of {version} in {}", root.root().display()))?
            .context("no modules")?;
        Ok(RootModules::from_analysis(analysis, dirname))
    }

    /// The build-host path of module `m`, resolved inside ROOT.
    fn host(&self, root: &Sysroot, m: usize) -> anyhow::Result<PathBuf> {
        let module = &self.modules[m];
        if let Some(host) = &module.host {
            return Ok(host.clone());
        }
        let target = if module.path.starts_with('/') {
            module.path.clone()
        } else {
            format!("{}/{}", self.dirname, module.path)
        };
        Ok(root.resolve(&target)?)
    }

    fn from_analysis(analysis: Analysis, dirname: String) -> RootModules {
        let Analysis { input_dir, modules, elves, all_deps, .. } = analysis;
        let mut aliases = Vec::new();
        let mut softdeps = Vec::new();
        let mut symbols = HashMap::new();
        for (index, elf) in elves.iter().enumerate() {
            let elf = elf.as_ref();
            for alias in elf.into_iter().flat_map(|e| e.modinfo_values(b"alias")) {
                if let Some(pattern) = alias_normalize(alias) {
                    aliases.push((String::from_utf8_lossy(&pattern).into_owned(), index));
                }
            }
            softdeps.push(elf.into_iter().flat_map(|e| e.modinfo_values(b"softdep")).flat_map(softdep_names).collect());
            // The last exporter in depmod's order owns a symbol.
            for export in elf.into_iter().flat_map(|e| &e.exports) {
                symbols.insert(export.name.clone(), index);
            }
        }
        let modules: Vec<RootModule> = modules
            .into_iter()
            .map(|m| RootModule {
                path: String::from_utf8_lossy(m.relpath.as_deref().unwrap_or(&m.path)).into_owned(),
                modname: m.modname,
                host: Some(m.host),
            })
            .collect();
        let by_name = modules.iter().enumerate().map(|(i, m)| (m.modname.clone(), i)).collect();
        let deps = all_deps.into_iter().map(|d| d.into_iter().map(|x| x as usize).collect()).collect();
        RootModules { dirname, input_dir, modules, by_name, deps, aliases, softdeps, symbols }
    }

    /// Reads modules.dep, modules.alias, modules.softdep and modules.symbols; `None` when one
    /// is missing or names a module modules.dep does not list.
    fn from_indexes(root: &Sysroot, dirname: &str, input_dir: &Path) -> Option<RootModules> {
        let read = |name: &str| root.read_to_string(&input_dir.join(name)).ok();
        let (dep, alias, softdep, symbols_text) =
            (read("modules.dep")?, read("modules.alias")?, read("modules.softdep")?, read("modules.symbols")?);
        let mut modules = Vec::new();
        let mut dep_paths = Vec::new();
        for line in dep.lines() {
            let (path, deps) = line.split_once(':')?;
            modules.push(RootModule {
                modname: modname_from_path(path.as_bytes()),
                path: path.to_string(),
                host: None,
            });
            dep_paths.push(deps.split_whitespace().map(String::from).collect::<Vec<_>>());
        }
        let by_path: HashMap<&str, usize> = modules.iter().enumerate().map(|(i, m)| (m.path.as_str(), i)).collect();
        let deps = dep_paths
            .iter()
            .map(|list| list.iter().map(|p| by_path.get(p.as_str()).copied()).collect::<Option<Vec<_>>>())
            .collect::<Option<Vec<_>>>()?;
        let by_name: HashMap<Vec<u8>, usize> =
            modules.iter().enumerate().map(|(i, m)| (m.modname.clone(), i)).collect();
        let mut aliases = Vec::new();
        for line in alias.lines().filter(|l| !l.starts_with('#')) {
            let mut words = line.split(' ');
            let (Some("alias"), Some(pattern), Some(name)) = (words.next(), words.next(), words.next()) else {
                continue;
            };
            if let Some(pattern) = alias_normalize(pattern.as_bytes()) {
                aliases.push((String::from_utf8_lossy(&pattern).into_owned(), *by_name.get(name.as_bytes())?));
            }
        }
        let mut softdeps = vec![Vec::new(); modules.len()];
        for line in softdep.lines().filter(|l| !l.starts_with('#')) {
            let mut words = line.splitn(3, ' ');
            let (Some("softdep"), Some(name), Some(value)) = (words.next(), words.next(), words.next()) else {
                continue;
            };
            softdeps[*by_name.get(name.as_bytes())?].extend(softdep_names(value.as_bytes()));
        }
        let mut symbols = HashMap::new();
        for line in symbols_text.lines().filter(|l| !l.starts_with('#')) {
            let mut words = line.split(' ');
            let (Some("alias"), Some(symbol), Some(name)) = (words.next(), words.next(), words.next()) else {
                continue;
            };
            let symbol = symbol.strip_prefix("symbol:")?;
            symbols.insert(symbol.as_bytes().to_vec(), *by_name.get(name.as_bytes())?);
        }
        Some(RootModules {
            dirname: dirname.to_string(),
            input_dir: input_dir.to_path_buf(),
            modules,
            by_name,
            deps,
            aliases,
            softdeps,
            symbols,
        })
    }
}

fn path_is_in(root: &Sysroot, path: &Path) -> bool {
    std::fs::canonicalize(path).map(|p| p.starts_with(root.root())).unwrap_or(false)
}

/// Modules an item names: a module name, else every module with a matching alias (as modprobe
/// loads all of them for a modalias).
fn lookup(root: &RootModules, item: &str) -> Vec<usize> {
    if !item.contains(':') {
        if let Some(&m) = root.by_name.get(&modname_from_path(item.as_bytes())) {
            return vec![m];
        }
    }
    let Some(query) = alias_normalize(item.as_bytes()) else { return Vec::new() };
    let query = String::from_utf8_lossy(&query).into_owned();
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: false,
        require_literal_leading_dot: false,
    };
    let mut found: Vec<usize> = root
        .aliases
        .iter()
        .filter(|(pattern, _)| match glob::Pattern::new(pattern) {
            Ok(p) => p.matches_with(&query, options),
            Err(_) => *pattern == query,
        })
        .map(|&(_, m)| m)
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

fn not_found_message(sysroot: &Sysroot, root: &RootModules, item: &str, version: &str) -> String {
    let builtin = sysroot.read_to_string(&root.input_dir.join("modules.builtin")).unwrap_or_default();
    let name = String::from_utf8_lossy(&modname_from_path(item.as_bytes())).into_owned();
    if builtin.lines().any(|l| String::from_utf8_lossy(&modname_from_path(l.as_bytes())) == name) {
        return format!("{item} is built into the {version} kernel; there is nothing to inject");
    }
    let mut close: Vec<(f64, String)> = root
        .modules
        .iter()
        .map(|m| String::from_utf8_lossy(&m.modname).into_owned())
        .map(|candidate| (strsim::jaro_winkler(&name, &candidate), candidate))
        .filter(|(score, _)| *score > 0.85)
        .collect();
    close.sort_by(|a, b| b.0.total_cmp(&a.0));
    let suggestions: Vec<String> = close.into_iter().take(5).map(|(_, n)| n).collect();
    let mut message = format!("no module or alias {item:?} in the {version} modules of ROOT");
    if !suggestions.is_empty() {
        message.push_str(&format!("; did you mean {}?", suggestions.join(", ")));
    }
    message
}

/// Adds dependencies (transitively) and softdep pre/post modules, as modprobe would load them.
fn close_over(root: &RootModules, wanted: BTreeSet<usize>, extra_softdeps: &[String]) -> BTreeSet<usize> {
    let mut closure = BTreeSet::new();
    let mut queue: Vec<usize> = wanted.into_iter().collect();
    for name in extra_softdeps {
        queue.extend(lookup(root, name));
    }
    while let Some(m) = queue.pop() {
        if !closure.insert(m) {
            continue;
        }
        queue.extend(root.deps[m].iter().copied());
        for name in &root.softdeps[m] {
            queue.extend(lookup(root, name));
        }
    }
    closure
}

/// Each module's `firmware=` files from ROOT's firmware search path (with .xz/.zst variants);
/// a missing one is a warning, as in dracut.
fn add_firmware(
    root: &Sysroot,
    version: &str,
    elves: &[ModuleElf],
    firmware_dir: &str,
    files: &mut BTreeMap<String, Entry>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let search = [
        format!("/lib/firmware/updates/{version}"),
        "/lib/firmware/updates".to_string(),
        format!("/lib/firmware/{version}"),
        "/lib/firmware".to_string(),
    ];
    for elf in elves {
        for firmware in elf.modinfo_values(b"firmware") {
            let firmware = String::from_utf8_lossy(firmware).into_owned();
            let found = search.iter().find_map(|dir| {
                ["", ".xz", ".zst"].iter().find_map(|ext| {
                    let target = format!("{dir}/{firmware}{ext}");
                    let host = root.resolve(&target).ok().filter(|h| root.is_file(h))?;
                    Some((target, host))
                })
            });
            match found {
                Some((target, host)) => {
                    let rel = target.trim_start_matches("/lib/firmware/");
                    let data = root.read(&host).with_context(|| format!("cannot read {}", host.display()))?;
                    files.insert(format!("{firmware_dir}/{rel}"), Entry::file("", 0o644, data));
                    report.firmware.push(rel.to_string());
                }
                None => report.warnings.push(format!("firmware {firmware} not found in ROOT/lib/firmware")),
            }
        }
    }
    Ok(())
}

/// Runs the native depmod over the image's modules plus the new files, in a scratch root
/// (`depmod_root`) laid out like the image's module directory, and returns the index files.
fn indexes_for(
    tree: &Tree,
    module_dir: &str,
    new_files: &BTreeMap<String, Entry>,
    depmod_root: &Path,
    options: &Options,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let dir = depmod_root.join("lib/modules").join(&options.version);
    std::fs::create_dir_all(&dir)?;
    let prefix = format!("{module_dir}/");
    let in_module_dir =
        tree.files.iter().chain(new_files.iter()).filter(|(path, e)| path.starts_with(&prefix) && e.is_file());
    for (path, entry) in in_module_dir {
        let rel = &path[prefix.len()..];
        if !rel.split('/').any(|c| c == "..") {
            place(&entry.data, &dir.join(rel))?;
        }
    }
    // The image's own depmod.d (search, override, exclude) applies to its indexes; depmod reads
    // it inside the scratch root, as the target's depmod would inside the image.
    for (path, entry) in &tree.files {
        let in_config_dir = depmod::config::default_dirs(options.kmod.version)
            .iter()
            .any(|dir| path.strip_prefix(dir.trim_start_matches('/')).is_some_and(|rest| rest.starts_with('/')));
        if in_config_dir && entry.is_file() && !path.split('/').any(|c| c == "..") {
            place(&entry.data, &depmod_root.join(path))?;
        }
    }
    let depmod_options = depmod::Options {
        basedir: Some(depmod_root.to_path_buf()),
        version: options.version.clone(),
        kmod: options.kmod,
        ..depmod::Options::default()
    };
    let mut sink = std::io::sink();
    depmod::run(&depmod_options, &mut sink).context("cannot index the modules of the new image")?;
    let names = depmod::output::output_files(depmod_options.format());
    names.iter().map(|f| Ok((f.name.to_string(), std::fs::read(dir.join(f.name))?))).collect()
}

/// Puts a member's data at `target` in the scratch root: files of their own are hard-linked
/// (they are in the same scratch directory), other data is written.
fn place(data: &Data, target: &Path) -> anyhow::Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let _ = std::fs::remove_file(target);
    let placed = match data {
        Data::File { path, .. } => std::fs::hard_link(path, target).or_else(|_| std::fs::copy(path, target).map(drop)),
        other => other.read_all().and_then(|bytes| std::fs::write(target, bytes)),
    };
    placed.with_context(|| format!("cannot write {}", target.display()))
}
