//! `xdkms initramfs inject`: modules with their dependency closure and firmware into an existing
//! image, offline, with fresh indexes from the native depmod.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cross::Sysroot;
use initramfs::image::{append, archive_entries, rewrite};
use initramfs::{Codec, Entry, Level};

use crate::depmod::{self, output::alias_normalize, Analysis};
use crate::initramfs_cmd::{read_image, read_image_keeping, source_date_epoch, write_output};
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
    pub kmod_version: u32,
    /// Compression level; default: the codec's image default (zstd 15), zstd 9 when appending.
    pub level: Option<i32>,
}

/// zstd level for appended segments.
const APPEND_ZSTD_LEVEL: i32 = 9;

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
}

pub fn run(options: &Options) -> anyhow::Result<Report> {
    if !options.root.is_dir() {
        bail!("ROOT {} does not exist or is not a directory", options.root.display());
    }
    let root = Sysroot::new(&options.root)?;
    // The image and ROOT's modules are read at the same time. Appending needs the image's
    // layout and its modules, not the rest of its data.
    let (image, analysis) = rayon::join(
        || match options.mode {
            Mode::Rewrite => read_image(&options.image),
            Mode::Append => read_image_keeping(&options.image, &|path| path.contains("lib/modules/")),
        },
        || analyze_root(&options.root, &options.version),
    );
    let ((original, image), analysis) = (image?, analysis?);
    let mut report = Report::default();

    // Modules by index into the analysis, plus modules from outside ROOT.
    let mut wanted: BTreeSet<usize> = BTreeSet::new();
    let mut outside: Vec<(Added, ModuleElf)> = Vec::new();
    for item in &options.items {
        let path = Path::new(item);
        if path.is_file() && is_module_file_name(item.as_bytes()) && !path_is_in(&root, path) {
            let elf = ModuleImage::open(path)
                .and_then(|image| ModuleElf::parse(&image, ReadOptions::default()))
                .with_context(|| format!("{item} is not a readable kernel module"))?;
            let base = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            for import in elf.imports.iter().flatten() {
                if let Some(owner) = analysis.exporter(&import.name) {
                    wanted.insert(owner);
                }
            }
            outside.push((Added { relpath: format!("updates/{base}"), host: path.to_path_buf() }, elf));
            continue;
        }
        let found = lookup(&analysis, item);
        if found.is_empty() {
            bail!("{}", not_found_message(&analysis, item, &options.version));
        }
        wanted.extend(found);
    }
    let closure = close_over(&analysis, wanted, outside.iter().map(|(_, elf)| elf));

    // Files to add, by path in the image.
    let merged = image.merged();
    let module_dir = merged.resolve(&format!("lib/modules/{}", options.version));
    let firmware_dir = merged.resolve("lib/firmware");
    let mut new_files: BTreeMap<String, Entry> = BTreeMap::new();
    let mut added: Vec<Added> = closure
        .iter()
        .map(|&m| {
            let module = &analysis.modules[m];
            Added {
                relpath: String::from_utf8_lossy(module.relpath.as_deref().unwrap_or(&module.path)).into_owned(),
                host: module.host.clone(),
            }
        })
        .collect();
    let mut elves: Vec<&ModuleElf> = closure.iter().filter_map(|&m| analysis.elves[m].as_ref()).collect();
    for (module, elf) in &outside {
        elves.push(elf);
        added.push(Added { relpath: module.relpath.clone(), host: module.host.clone() });
    }
    for module in &added {
        if module.relpath.starts_with('/') {
            bail!("{} lies outside the module directory (an `external` module); inject it by path", module.relpath);
        }
        let data = std::fs::read(&module.host).with_context(|| format!("cannot read {}", module.host.display()))?;
        new_files.insert(format!("{module_dir}/{}", module.relpath), Entry::file("", 0o644, data));
        report.modules.push(module.relpath.clone());
    }
    for name in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
        if let Ok(data) = std::fs::read(analysis.input_dir.join(name)) {
            new_files.insert(format!("{module_dir}/{name}"), Entry::file("", 0o644, data));
        }
    }
    add_firmware(&root, &options.version, &elves, &firmware_dir, &mut new_files, &mut report)?;

    // Fresh indexes over every module the image will hold.
    for (name, data) in indexes_for(&merged, &module_dir, &new_files, &options.version, options.kmod_version)? {
        new_files.insert(format!("{module_dir}/{name}"), Entry::file("", 0o644, data));
    }

    let mtime = source_date_epoch()?;
    let codec = options.compress.unwrap_or(image.main_codec());
    // An appended segment is small: a fast zstd level costs little space there.
    let level = match (options.level, options.mode, codec) {
        (Some(level), _, _) => Level(Some(level)),
        (None, Mode::Append, Codec::Zstd) => Level(Some(APPEND_ZSTD_LEVEL)),
        _ => Level::default(),
    };
    let bytes = match options.mode {
        Mode::Rewrite => {
            let start = image.rewrite_start();
            let mut files = image.merged_from(start).files;
            files.extend(new_files);
            rewrite(&original, &image, &archive_entries(&files, None, mtime), codec, level)?
        }
        Mode::Append => append(&original, &image, &archive_entries(&new_files, Some(&merged), mtime), codec, level)?,
    };
    write_output(options.output.as_deref().unwrap_or(&options.image), &bytes)?;
    Ok(report)
}

/// depmod's view of ROOT's modules for `version`, read inside ROOT, nothing written.
fn analyze_root(root: &Path, version: &str) -> anyhow::Result<Analysis> {
    let options = depmod::Options {
        basedir: Some(root.to_path_buf()),
        version: version.to_string(),
        kmod_version: 30,
        ..depmod::Options::default()
    };
    let mut sink = std::io::sink();
    depmod::analyze(&options, &mut sink)
        .with_context(|| format!("cannot read the modules of {version} in {}", root.display()))?
        .context("no modules")
}

fn path_is_in(root: &Sysroot, path: &Path) -> bool {
    std::fs::canonicalize(path).map(|p| p.starts_with(root.root())).unwrap_or(false)
}

/// Modules an item names: a module name, else every module with a matching alias (as modprobe
/// loads all of them for a modalias).
fn lookup(analysis: &Analysis, item: &str) -> Vec<usize> {
    let name = modname_from_path(item.as_bytes());
    if !item.contains(':') {
        if let Some(m) = analysis.find(&name) {
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
    (0..analysis.modules.len())
        .filter(|&m| {
            analysis.elves[m].as_ref().is_some_and(|elf| {
                elf.modinfo_values(b"alias").any(|alias| {
                    let Some(pattern) = alias_normalize(alias) else { return false };
                    let pattern = String::from_utf8_lossy(&pattern);
                    match glob::Pattern::new(&pattern) {
                        Ok(p) => p.matches_with(&query, options),
                        Err(_) => pattern == query,
                    }
                })
            })
        })
        .collect()
}

fn not_found_message(analysis: &Analysis, item: &str, version: &str) -> String {
    let builtin = std::fs::read_to_string(analysis.input_dir.join("modules.builtin")).unwrap_or_default();
    let name = String::from_utf8_lossy(&modname_from_path(item.as_bytes())).into_owned();
    if builtin.lines().any(|l| String::from_utf8_lossy(&modname_from_path(l.as_bytes())) == name) {
        return format!("{item} is built into the {version} kernel; there is nothing to inject");
    }
    let mut close: Vec<(f64, String)> = analysis
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
fn close_over<'e>(
    analysis: &Analysis,
    wanted: BTreeSet<usize>,
    outside: impl Iterator<Item = &'e ModuleElf>,
) -> BTreeSet<usize> {
    let mut closure = BTreeSet::new();
    let mut queue: Vec<usize> = wanted.into_iter().collect();
    let softdeps_of = |elf: &ModuleElf| -> Vec<String> {
        elf.modinfo_values(b"softdep")
            .flat_map(|v| String::from_utf8_lossy(v).split_whitespace().map(String::from).collect::<Vec<_>>())
            .filter(|word| word != "pre:" && word != "post:")
            .collect()
    };
    for elf in outside {
        for name in softdeps_of(elf) {
            queue.extend(lookup(analysis, &name));
        }
    }
    while let Some(m) = queue.pop() {
        if !closure.insert(m) {
            continue;
        }
        queue.extend(analysis.all_deps[m].iter().map(|&d| d as usize));
        if let Some(elf) = &analysis.elves[m] {
            for name in softdeps_of(elf) {
                queue.extend(lookup(analysis, &name));
            }
        }
    }
    closure
}

/// Each module's `firmware=` files from ROOT's firmware search path (with .xz/.zst variants);
/// a missing one is a warning, as in dracut.
fn add_firmware(
    root: &Sysroot,
    version: &str,
    elves: &[&ModuleElf],
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
                    let host = root.resolve(&target).ok().filter(|h| h.is_file())?;
                    Some((target, host))
                })
            });
            match found {
                Some((target, host)) => {
                    let rel = target.trim_start_matches("/lib/firmware/");
                    let data = std::fs::read(&host).with_context(|| format!("cannot read {}", host.display()))?;
                    files.insert(format!("{firmware_dir}/{rel}"), Entry::file("", 0o644, data));
                    report.firmware.push(rel.to_string());
                }
                None => report.warnings.push(format!("firmware {firmware} not found in ROOT/lib/firmware")),
            }
        }
    }
    Ok(())
}

/// Runs the native depmod over the image's modules plus the new files, in a scratch tree laid out
/// like the image's module directory, and returns the index files.
fn indexes_for(
    merged: &initramfs::Merged,
    module_dir: &str,
    new_files: &BTreeMap<String, Entry>,
    version: &str,
    kmod_version: u32,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    // The image's modules are written out for depmod: in memory (tmpfs) where the host has it.
    let shm = Path::new("/dev/shm");
    let scratch = match tempfile::Builder::new().prefix("xdkms-inject-").tempdir_in(shm) {
        Ok(dir) => dir,
        Err(_) => tempfile::Builder::new().prefix("xdkms-inject-").tempdir()?,
    };
    let dir = scratch.path().join("lib/modules").join(version);
    std::fs::create_dir_all(&dir)?;
    let prefix = format!("{module_dir}/");
    let in_module_dir =
        merged.files.iter().chain(new_files.iter()).filter(|(path, e)| path.starts_with(&prefix) && e.is_file());
    for (path, entry) in in_module_dir {
        let rel = &path[prefix.len()..];
        if rel.split('/').any(|c| c == "..") {
            continue;
        }
        let target = dir.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, &entry.data)?;
    }
    let options = depmod::Options {
        basedir: Some(scratch.path().to_path_buf()),
        version: version.to_string(),
        kmod_version,
        ..depmod::Options::default()
    };
    let mut sink = std::io::sink();
    depmod::run(&options, &mut sink).context("cannot index the modules of the new image")?;
    let names = depmod::output::output_files(options.format());
    names.iter().map(|f| Ok((f.name.to_string(), std::fs::read(dir.join(f.name))?))).collect()
}
