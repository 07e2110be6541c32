//! `xdkms depmod`: kmod's depmod, natively, reading everything inside the target root.

pub mod config;
pub mod graph;
pub mod hash;
pub mod output;
pub mod outside;
pub mod scan;

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cross::Sysroot;
use rayon::prelude::*;

use crate::kmod_release::{Compressions, KmodRelease};
use crate::module::elf::ReadOptions;
use crate::module::{ModuleElf, ModuleImage};
use config::Config;
use graph::Symbols;
pub use output::Format;
use output::Level;
use scan::{show, FoundModule};

/// What `depmod` was asked to do (kmod's options, same meanings).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `-b`: the target root. Module directory, depmod.d and externals are read inside it.
    pub basedir: Option<PathBuf>,
    pub version: String,
    /// `-C`: configuration files or directories (host paths), replacing the defaults.
    pub config_paths: Vec<PathBuf>,
    /// `-E`: Module.symvers of the kernel, for `-e` version checks.
    pub symvers: Option<PathBuf>,
    /// `-F`: System.map of the kernel.
    pub system_map: Option<PathBuf>,
    /// `-e`: report unresolved symbols.
    pub print_unknown: bool,
    /// `-n`: text files to stdout, nothing written.
    pub dry_run: bool,
    /// `-A`: do nothing if no module is newer than modules.dep.
    pub quick: bool,
    /// `-v`: print each dependency found.
    pub verbose: bool,
    /// `-w`: warn about duplicate index values.
    pub warn_dups: bool,
    /// `-P`: symbol prefix character.
    pub sym_prefix: Option<u8>,
    /// Module files named on the command line (absolute host paths); empty means scan everything.
    pub files: Vec<PathBuf>,
    /// The kmod build whose behaviour and output to reproduce: its release (30 = Debian 12) and
    /// the module compressions it reads.
    pub kmod: KmodRelease,
    /// Module files of the root read from outside its tree (an image's, left out of the scratch
    /// root): walked as if they were there.
    pub outside: Option<std::sync::Arc<dyn outside::OutsideFiles>>,
    /// `-o` (kmod 31 and later): write the files under this directory instead of the base
    /// directory (`OUTDIR/lib/modules/VERSION`, created as needed).
    pub outdir: Option<PathBuf>,
    /// `-m` (kmod 34): the module directory, instead of `/lib/modules`, below the base directory
    /// and the output directory.
    pub moduledir: Option<String>,
}

impl Options {
    /// The output format of the selected kmod release.
    pub fn format(&self) -> Format {
        match self.kmod.version {
            0..=32 => Format::Kmod30,
            33 => Format::Kmod33,
            _ => Format::Kmod34,
        }
    }
}

/// How a run ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    Printed,
    /// `-A` found modules.dep up to date.
    UpToDate,
}

/// A run that must exit non-zero, with what kmod would print before exiting.
#[derive(Debug)]
pub struct Failure {
    pub errors: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.errors.join("\n"))
    }
}

impl std::error::Error for Failure {}

fn warn(message: &str) {
    eprintln!("depmod: WARNING: {message}");
}

fn error(message: &str) {
    eprintln!("depmod: ERROR: {message}");
}

fn report(level: Level, message: String) {
    match level {
        Level::Error => error(&message),
        Level::Warning => warn(&message),
    }
}

/// The module directory as the target sees it: `/lib/modules/VERSION`, or on a root that has only
/// `/usr/lib/modules` (merged /usr without the `lib` link yet), that one.
pub fn module_dir(root: &Sysroot, version: &str) -> Vec<u8> {
    let lib = format!("/lib/modules/{version}");
    let usr = format!("/usr/lib/modules/{version}");
    let exists = |p: &str| root.resolve(p).is_ok_and(|h| root.is_dir(&h));
    if !exists(&lib) && exists(&usr) {
        usr.into_bytes()
    } else {
        lib.into_bytes()
    }
}

/// The module directory of a run: `-m`'s (kmod 34; leading slashes dropped, as kmod does, then
/// one put back), or the one the root has.
fn module_dir_name(root: &Sysroot, options: &Options) -> Vec<u8> {
    match &options.moduledir {
        Some(dir) => format!("/{}/{}", dir.trim_start_matches('/'), options.version).into_bytes(),
        None => module_dir(root, &options.version),
    }
}

/// A module tree as depmod sees it, before anything is written.
pub struct Analysis {
    /// The root handle every file of the module directory is read and written through.
    pub root: Sysroot,
    /// The module directory on the build host.
    pub input_dir: PathBuf,
    /// Modules in depmod's order (hash order, then modules.order).
    pub modules: Vec<FoundModule>,
    /// Each module's ELF contents; `None` for a module that could not be read.
    pub elves: Vec<Option<ModuleElf>>,
    /// Every module's dependencies, transitively, dependents first (modules.dep's order).
    pub all_deps: Vec<Vec<u32>>,
    pub symbols: Symbols,
}

/// Runs depmod. `stdout` receives `-n` output and `-v` lines; diagnostics go to stderr.
pub fn run(options: &Options, stdout: &mut dyn Write) -> anyhow::Result<Outcome> {
    let Some(analysis) = analyze(options, stdout)? else {
        return Ok(Outcome::UpToDate);
    };
    let Analysis { root, input_dir, modules, elves, all_deps, symbols } = &analysis;
    let format = options.format();
    let model = output::Model { root, modules, elves, all_deps, symbols, format, warn_dups: options.warn_dups };
    let files = output::output_files(options.format());
    if options.dry_run {
        for file in files.iter().filter(|f| f.text) {
            let bytes = model.render(file.name, input_dir, &mut report)?;
            stdout.write_all(&bytes)?;
        }
        return Ok(Outcome::Printed);
    }
    // Render everything first (in parallel), so a failure leaves every old file in place.
    type Rendered = (&'static str, Vec<u8>, Vec<(Level, String)>);
    let rendered: Vec<Rendered> = files
        .par_iter()
        .map(|file| {
            let mut messages = Vec::new();
            model
                .render(file.name, input_dir, &mut |level, text| messages.push((level, text)))
                .map(|bytes| (file.name, bytes, messages))
        })
        .collect::<Result<_, _>>()?;
    let (out_root, out_dir) = output_dir(options, root, input_dir)?;
    for (name, bytes, messages) in rendered {
        messages.into_iter().for_each(|(level, text)| report(level, text));
        out_root
            .write_atomic(&out_dir.join(name), &bytes, Some(std::os::unix::fs::PermissionsExt::from_mode(0o644)))
            .with_context(|| format!("could not write {}", out_dir.join(name).display()))?;
    }
    Ok(Outcome::Written)
}

/// Where the files go: the module directory itself, or with `-o` the same directory below the
/// output root (created as kmod's mkdir_p does, mode 0755), reached through a handle on it.
fn output_dir(options: &Options, root: &Sysroot, input_dir: &Path) -> anyhow::Result<(Sysroot, PathBuf)> {
    let Some(outdir) = &options.outdir else {
        return Ok((root.clone(), input_dir.to_path_buf()));
    };
    let dirname = module_dir_name(root, options);
    let shown = format!("{}{}", outdir.display(), show(&dirname));
    let create = || -> std::io::Result<(Sysroot, PathBuf)> {
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(outdir)?;
        let out_root = Sysroot::new(outdir)?;
        let relative = Path::new(std::ffi::OsStr::from_bytes(&dirname)).strip_prefix("/").unwrap_or(Path::new(""));
        out_root.create_dir_all(&out_root.root().join(relative))?;
        let dir = out_root.resolve(Path::new(std::ffi::OsStr::from_bytes(&dirname)))?;
        Ok((out_root, dir))
    };
    create().with_context(|| format!("could not create directory {shown}"))
}

/// Everything depmod does before writing: configuration, walk, parse, symbols, dependency order.
/// `None` when `-A` finds the tree up to date. A dependency cycle is a [`Failure`].
pub fn analyze(options: &Options, stdout: &mut dyn Write) -> anyhow::Result<Option<Analysis>> {
    let root = match &options.basedir {
        Some(dir) => Sysroot::new(dir).with_context(|| format!("could not open base directory {}", dir.display()))?,
        None => Sysroot::host().context("could not open /")?,
    };
    let dirname = module_dir_name(&root, options);
    // kmod names the module directory with the base directory in front.
    let shown_dir = format!("{}{}", shown_root(&root), show(&dirname));
    let input_dir = root
        .resolve(Path::new(std::ffi::OsStr::from_bytes(&dirname)))
        .with_context(|| format!("could not open directory {shown_dir}"))?;

    // Outside files' times are not looked at: with them, the indexes are always made again.
    let quick = options.quick && options.outside.is_none();
    if quick && (options.dry_run || up_to_date(&root, &input_dir, options.kmod.compressions)) {
        return Ok(None);
    }

    let mut symbols = Symbols::new(options.sym_prefix);
    let check_symvers = options.symvers.is_some();
    let print_unknown = load_kernel_symbols(options, &mut symbols)?;
    let mut modules = find_modules(options, &root, &dirname, &input_dir)?;

    // Messages name a module as kmod does: the root as given, then the path as scanned.
    let root_prefix = if options.files.is_empty() { shown_root(&root) } else { String::new() };
    let shown = |m: &FoundModule| format!("{root_prefix}{}", show(&m.path));

    hash::sort_in_table_order(&mut modules, hash::MODULE_BUCKETS, |m| &m.modname);
    sort_by_modules_order(&root, &mut modules, &input_dir, &shown_dir, options.format());
    let read_options = ReadOptions { export_crcs: check_symvers };
    let elves = parse_modules(&root, options.outside.as_ref(), &modules, read_options, &shown);
    for (index, elf) in elves.iter().enumerate() {
        if let Some(elf) = elf {
            for export in &elf.exports {
                symbols.add(&export.name, false, export.crc, Some(index as u32));
            }
        }
    }
    let resolution = graph::resolve(&elves, &symbols, print_unknown, check_symvers);
    report_resolution(options, &resolution, &modules, &shown, stdout)?;
    let order = match graph::topological_order(&resolution.deps) {
        Ok(order) => order,
        Err(users) => {
            let names: Vec<&[u8]> = modules.iter().map(|m| m.modname.as_slice()).collect();
            let (lines, count) = graph::report_cycles(&resolution.deps, &users, &names);
            let mut errors = lines;
            errors.push(format!("Found {count} modules in dependency cycles!"));
            return Err(Failure { errors }.into());
        }
    };
    let mut seen = vec![0u32; modules.len()];
    let all_deps: Vec<Vec<u32>> = (0..modules.len() as u32)
        .map(|m| graph::all_dependencies(m, &resolution.deps, &order, &mut seen, m + 1))
        .collect();
    Ok(Some(Analysis { root, input_dir, modules, elves, all_deps, symbols }))
}

/// `-E` or `-F`: the kernel's own symbols. Returns whether `-e` can report unknown symbols.
fn load_kernel_symbols(options: &Options, symbols: &mut Symbols) -> anyhow::Result<bool> {
    if let Some(path) = &options.symvers {
        load_symvers(symbols, path)?;
    } else if let Some(path) = &options.system_map {
        load_system_map(symbols, path)?;
    } else if options.print_unknown {
        warn("-e needs -E or -F");
        return Ok(false);
    }
    Ok(options.print_unknown)
}

/// The modules to index: the module directory's (with depmod.d's search, override and external
/// rules), or the files named on the command line.
fn find_modules(
    options: &Options,
    root: &Sysroot,
    dirname: &[u8],
    input_dir: &Path,
) -> anyhow::Result<Vec<FoundModule>> {
    Ok(if options.files.is_empty() {
        let mut warnings = Vec::new();
        let config = Config::load(root, &options.config_paths, &options.version, options.kmod.version, &mut warnings);
        warnings.iter().for_each(|w| error(w));
        let outside = options.outside.as_deref();
        let found = scan::search(root, dirname, &config, options.kmod.compressions, outside).map_err(|(line, e)| {
            error(&line);
            anyhow::anyhow!("could not search modules: {}", strerror(&e))
        })?;
        found.errors.iter().for_each(|e| error(e));
        found.modules.into_values().collect()
    } else {
        let host_dirname = input_dir.as_os_str().as_bytes();
        let mut by_name = std::collections::HashMap::new();
        for path in &options.files {
            if !path.is_absolute() {
                bail!("{}: not absolute path.", path.display());
            }
            if !path.is_file() {
                bail!("could not create module {}: No such file or directory", path.display());
            }
            let module = scan::explicit_module(path, host_dirname);
            if by_name.contains_key(&module.modname) {
                bail!("could not add module {}: File exists", path.display());
            }
            by_name.insert(module.modname.clone(), module);
        }
        by_name.into_values().collect()
    })
}

/// A module file: through the root handle when it lies in the root, as given otherwise (files
/// named on the command line, which kmod opens as they are).
fn open_module(root: &Sysroot, host: &Path) -> std::io::Result<std::fs::File> {
    if root.contains(host) {
        root.open_file(host).map_err(cross::without_path)
    } else {
        std::fs::File::open(host)
    }
}

/// Every module parsed, in parallel; failures reported in module order, as kmod's sequential
/// loop does.
fn parse_modules(
    root: &Sysroot,
    outside: Option<&std::sync::Arc<dyn outside::OutsideFiles>>,
    modules: &[FoundModule],
    read_options: ReadOptions,
    shown: &dyn Fn(&FoundModule) -> String,
) -> Vec<Option<ModuleElf>> {
    let parsed: Vec<std::io::Result<ModuleElf>> = modules
        .par_iter()
        .map(|m| {
            let image = match (m.outside, outside) {
                (Some(index), Some(outside)) => ModuleImage::outside(outside.clone(), index),
                _ => open_module(root, &m.host).and_then(ModuleImage::from_file),
            };
            image.and_then(|image| ModuleElf::parse(&image, read_options))
        })
        .collect();
    parsed
        .into_iter()
        .zip(modules)
        .map(|(result, m)| match result {
            Ok(elf) => Some(elf),
            Err(e) => {
                error(&format!("failed to load symbols from {}: {}", shown(m), strerror(&e)));
                None
            }
        })
        .collect()
}

/// `-v` lines for each resolved symbol, and the unknown or mismatched ones as warnings.
fn report_resolution(
    options: &Options,
    resolution: &graph::Resolution,
    modules: &[FoundModule],
    shown: &dyn Fn(&FoundModule) -> String,
    stdout: &mut dyn Write,
) -> anyhow::Result<()> {
    if options.verbose {
        for (module, symbol, owner) in &resolution.verbose {
            writeln!(
                stdout,
                "{} needs \"{}\": {}",
                shown(&modules[*module as usize]),
                show(symbol),
                shown(&modules[*owner as usize])
            )?;
        }
    }
    for (module, symbol, mismatch) in &resolution.problems {
        let path = shown(&modules[*module as usize]);
        if *mismatch {
            warn(&format!("{path} disagrees about version of symbol {}", show(symbol)));
        } else {
            warn(&format!("{path} needs unknown symbol {}", show(symbol)));
        }
    }
    Ok(())
}

/// strerror's text for an I/O error, without Rust's "(os error N)" suffix.
pub(crate) fn strerror(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

/// The base directory as kmod prints it in front of paths: nothing for the host's `/`.
pub fn shown_root(root: &Sysroot) -> String {
    if root.is_host() {
        String::new()
    } else {
        root.root().display().to_string()
    }
}

/// Orders modules listed in modules.order by that file, the rest after them in hash order
/// (stable). kmod 30 keys each module by its last line, kmod 34 by its first.
fn sort_by_modules_order(
    root: &Sysroot,
    modules: &mut Vec<FoundModule>,
    input_dir: &Path,
    shown_dir: &str,
    format: Format,
) {
    let text = match root.read(&input_dir.join("modules.order")).map_err(cross::without_path) {
        Ok(text) => text,
        Err(e) => {
            warn(&format!("could not open modules.order at {shown_dir}: {}", strerror(&e)));
            return;
        }
    };
    let lines: Vec<&[u8]> = output::fgets_lines(&text).collect();
    if let Some(bad) = lines.iter().position(|l| !l.is_empty() && !l.ends_with(b"\n")) {
        error(&format!("{shown_dir}/modules.order:{} corrupted line misses '\\n'", bad + 1));
        return;
    }
    let by_path: std::collections::HashMap<&[u8], usize> =
        modules.iter().enumerate().filter_map(|(i, m)| m.uncrelpath.as_deref().map(|p| (p, i))).collect();
    let mut keys = vec![1i64; modules.len()];
    let total = lines.len() as i64 + 1;
    let mut next = -(modules.len() as i64);
    for (line_no, line) in lines.iter().enumerate() {
        if line.is_empty() {
            continue;
        }
        let Some(&m) = by_path.get(&line[..line.len() - 1]) else { continue };
        match format {
            Format::Kmod30 | Format::Kmod33 => keys[m] = line_no as i64 + 1 - total,
            Format::Kmod34 => {
                if keys[m] >= 0 {
                    keys[m] = next;
                    next += 1;
                }
            }
        }
    }
    let mut keyed: Vec<(i64, FoundModule)> = keys.into_iter().zip(std::mem::take(modules)).collect();
    keyed.sort_by_key(|(key, _)| *key); // stable, like glibc's merge-sort qsort
    *modules = keyed.into_iter().map(|(_, module)| module).collect();
}

/// `-A`: modules.dep exists and no module file under the module directory is newer (seconds).
pub(crate) fn up_to_date(root: &Sysroot, input_dir: &Path, compressions: Compressions) -> bool {
    let Ok(dep) = root.metadata(&input_dir.join("modules.dep")).and_then(|m| m.modified()) else {
        return false;
    };
    let dep_secs = seconds(dep);
    let mut stack = vec![input_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = root.read_dir_in_order(&dir) else { continue };
        for entry in entries {
            let name = entry.name;
            if name == "build" || name == "source" {
                continue;
            }
            let path = dir.join(&name);
            let Ok(meta) = root.metadata(&path) else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if compressions.is_module_file_name(name.as_bytes())
                && meta.modified().map(seconds).unwrap_or(i64::MAX) > dep_secs
            {
                return false;
            }
        }
    }
    true
}

fn seconds(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// `-E`: kernel symbols with CRCs from Module.symvers (`crc symbol vmlinux ...`).
fn load_symvers(symbols: &mut Symbols, path: &Path) -> anyhow::Result<()> {
    let text = crate::fsio::read_regular(path).with_context(|| format!("could not load {}", path.display()))?;
    for (line_no, line) in output::fgets_lines(&text).enumerate() {
        let mut words = line.split(|&b| b == b' ' || b == b'\t').filter(|w| !w.is_empty());
        let (Some(crc), Some(symbol), Some(owner)) = (words.next(), words.next(), words.next()) else { continue };
        if owner != b"vmlinux" {
            continue;
        }
        let digits = crc.strip_prefix(b"0x").or_else(|| crc.strip_prefix(b"0X")).unwrap_or(crc);
        match std::str::from_utf8(digits).ok().and_then(|d| u64::from_str_radix(d, 16).ok()) {
            Some(crc) => symbols.add(symbol, false, crc, None),
            None => error(&format!("{}:{} Invalid symbol version {}", path.display(), line_no + 1, show(crc))),
        }
    }
    symbols.add_fake_kernel_symbols();
    Ok(())
}

/// `-F`: kernel symbols from System.map (`addr type __ksymtab_NAME`).
fn load_system_map(symbols: &mut Symbols, path: &Path) -> anyhow::Result<()> {
    let text = crate::fsio::read_regular(path).with_context(|| format!("could not load {}", path.display()))?;
    for (line_no, line) in output::fgets_lines(&text).enumerate() {
        let mut spaces = line.iter().enumerate().filter(|(_, &b)| b == b' ').map(|(i, _)| i);
        let (Some(_), Some(second)) = (spaces.next(), spaces.next()) else {
            error(&format!("{}:{}: invalid line: {}", path.display(), line_no + 1, show(line)));
            continue;
        };
        let mut name = &line[second + 1..];
        if let (Some(p), Some(&first)) = (symbols.prefix(), name.first()) {
            if first == p {
                name = &name[1..];
            }
        }
        let Some(name) = name.strip_prefix(b"__ksymtab_") else { continue };
        let name = name.strip_suffix(b"\n").unwrap_or(name);
        symbols.add(name, true, 0, None);
    }
    symbols.add_fake_kernel_symbols();
    Ok(())
}
