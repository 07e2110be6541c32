//! `xdkms modinfo`: what kmod's modinfo prints for a module file, name or alias, read inside a
//! target root through the indexes depmod wrote.

use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cross::Sysroot;

use crate::depmod::module_dir;
use crate::depmod::output::alias_normalize;
use crate::index::Index;
use crate::module::elf::ReadOptions;
use crate::module::{is_module_file_name, ModuleElf, ModuleImage, Signature};

/// What `modinfo` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub basedir: Option<PathBuf>,
    /// Kernel version; without it the only kernel in the root, or the running kernel on the host.
    pub version: Option<String>,
    /// `-F`: print only this field's values.
    pub field: Option<String>,
    /// `-0`: NUL instead of newline after each line.
    pub null: bool,
    /// `-m`: the arguments are module names, not aliases.
    pub modname_only: bool,
    pub targets: Vec<String>,
}

/// A module to describe: a file, or one built into the kernel.
enum Found {
    /// `in_root`: found through the indexes (read through the root handle), not named by path.
    File {
        shown: String,
        host: PathBuf,
        in_root: bool,
    },
    Builtin(String),
}

struct Indexes {
    /// The module directory on the build host; `None` when every argument is a file and no
    /// index is read (no kernel version is needed then).
    dir: Option<PathBuf>,
    /// The module directory as the target sees it (`/lib/modules/VERSION`).
    target_dir: String,
    root: Sysroot,
}

impl Indexes {
    fn read(&self, name: &str) -> Option<Vec<u8>> {
        self.root.read(&self.dir.as_ref()?.join(name)).ok()
    }

    /// Exact lookup (dep.bin, builtin.bin): the first value.
    fn exact(&self, file: &str, key: &[u8]) -> Option<Vec<u8>> {
        let bytes = self.read(file)?;
        let index = Index::new(&bytes).ok()?;
        index.get(key).ok()?.first().map(|(_, v)| v.to_vec())
    }

    /// Wildcard lookup (alias.bin, symbols.bin, builtin.alias.bin): every value of every key whose
    /// pattern matches `query`, merged by priority as libkmod does.
    fn wildcard(&self, file: &str, query: &[u8]) -> Vec<Vec<u8>> {
        let Some(bytes) = self.read(file) else { return Vec::new() };
        let Ok(index) = Index::new(&bytes) else { return Vec::new() };
        let Ok(entries) = index.entries() else { return Vec::new() };
        let query = String::from_utf8_lossy(query);
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: false,
            require_literal_leading_dot: false,
        };
        let mut merged: Vec<(u32, Vec<u8>)> = Vec::new();
        for (key, values) in entries {
            let key = String::from_utf8_lossy(&key);
            let matches = match glob::Pattern::new(&key) {
                Ok(pattern) => pattern.matches_with(&query, options),
                Err(_) => key == query,
            };
            if !matches {
                continue;
            }
            for (priority, value) in values {
                let pos = merged.iter().position(|(p, _)| *p >= priority).unwrap_or(merged.len());
                merged.insert(pos, (priority, value.to_vec()));
            }
        }
        merged.into_iter().map(|(_, v)| v).collect()
    }

    /// A module by name through modules.dep.bin.
    fn by_name(&self, name: &[u8]) -> Option<Found> {
        let line = self.exact("modules.dep.bin", name)?;
        let path = &line[..line.iter().position(|&b| b == b':').unwrap_or(line.len())];
        let path = String::from_utf8_lossy(path).into_owned();
        // kmod prints the root, then the module directory and the path from modules.dep;
        // external modules (absolute paths in modules.dep) are printed as they are.
        let (shown, target) = if path.starts_with('/') {
            (path.clone(), path)
        } else {
            let target = format!("{}/{path}", self.target_dir);
            let root = if self.root.is_host() { String::new() } else { self.root.root().display().to_string() };
            (format!("{root}{target}"), target)
        };
        // A path that cannot be resolved inside the root is not opened at all.
        let host = self.root.resolve(&target).ok()?;
        Some(Found::File { shown, host, in_root: true })
    }

    fn builtin(&self, name: &[u8]) -> Vec<Found> {
        if self.exact("modules.builtin.bin", name).is_some() {
            return vec![Found::Builtin(String::from_utf8_lossy(name).into_owned())];
        }
        self.wildcard("modules.builtin.alias.bin", name)
            .into_iter()
            .map(|m| Found::Builtin(String::from_utf8_lossy(&m).into_owned()))
            .collect()
    }

    /// kmod_module_new_from_name_lookup: moddep, then the builtin indexes.
    fn lookup_name(&self, name: &str) -> Vec<Found> {
        let normalized: Vec<u8> =
            name.bytes().take_while(|&b| b != b'.').map(|b| if b == b'-' { b'_' } else { b }).collect();
        match self.by_name(&normalized) {
            Some(found) => vec![found],
            None => self.builtin(&normalized).into_iter().take(1).collect(),
        }
    }

    /// kmod_module_new_from_lookup: moddep, symbols, aliases, then the builtin indexes.
    fn lookup_alias(&self, alias: &str) -> Vec<Found> {
        let Some(alias) = alias_normalize(alias.as_bytes()) else { return Vec::new() };
        if !alias.contains(&b':') {
            if let Some(found) = self.by_name(&alias) {
                return vec![found];
            }
        }
        for file in ["modules.symbols.bin", "modules.alias.bin"] {
            if file == "modules.symbols.bin" && !alias.starts_with(b"symbol:") {
                continue;
            }
            let found: Vec<Found> =
                self.wildcard(file, &alias).iter().filter_map(|modname| self.by_name(modname)).collect();
            if !found.is_empty() {
                return found;
            }
        }
        self.builtin(&alias)
    }
}

/// The kernel version to use: given, else the only one in the root, else the running kernel.
fn pick_version(root: &Sysroot, given: Option<&str>) -> Result<String, String> {
    if let Some(v) = given {
        return Ok(v.to_string());
    }
    if root.is_host() {
        // uname(2), as kmod asks: it answers where /proc is not mounted (image chroots).
        return Ok(rustix::system::uname().release().to_string_lossy().into_owned());
    }
    let mut versions: Vec<String> = ["/lib/modules", "/usr/lib/modules"]
        .iter()
        .filter_map(|d| root.resolve(d).ok())
        .filter_map(|d| root.read_dir(&d).ok())
        .flat_map(|entries| entries.into_iter().map(|e| e.name.to_string_lossy().into_owned()))
        .collect();
    versions.sort();
    versions.dedup();
    match versions.as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(format!("no kernel under {}/lib/modules; pass -k VERSION", root.root().display())),
        many => Err(format!("several kernels in {} ({}); pass -k VERSION", root.root().display(), many.join(", "))),
    }
}

/// The module directory of the kernel `given` (or the one `pick_version` finds) in `root`.
fn open_indexes(root: Sysroot, given: Option<&str>) -> Result<Indexes, String> {
    let version = pick_version(&root, given)?;
    let target_dir = String::from_utf8_lossy(&module_dir(&root, &version)).into_owned();
    let dir = root
        .resolve(&target_dir)
        .map_err(|e| format!("cannot resolve {target_dir} inside {}: {e}", root.root().display()))?;
    Ok(Indexes { dir: Some(dir), target_dir, root })
}

/// Runs modinfo; returns whether every target was found and described.
pub fn run(options: &Options, out: &mut dyn Write) -> io::Result<bool> {
    let root = match &options.basedir {
        Some(dir) => match Sysroot::new(dir) {
            Ok(root) => root,
            Err(e) => {
                eprintln!("modinfo: ERROR: {e}");
                return Ok(false);
            }
        },
        None => Sysroot::host()?,
    };
    let is_file = |target: &str| {
        let path = Path::new(target);
        path.is_file() && is_module_file_name(path.as_os_str().as_bytes())
    };
    let indexes = if options.targets.iter().all(|t| is_file(t)) {
        Indexes { dir: None, target_dir: String::new(), root }
    } else {
        match open_indexes(root, options.version.as_deref()) {
            Ok(indexes) => indexes,
            Err(e) => {
                eprintln!("modinfo: ERROR: {e}");
                return Ok(false);
            }
        }
    };
    let separator = if options.null { b'\0' } else { b'\n' };
    let mut all_ok = true;
    for target in &options.targets {
        let as_path = Path::new(target);
        let found = if is_file(target) {
            let absolute = std::path::absolute(as_path).unwrap_or_else(|_| as_path.to_path_buf());
            vec![Found::File { shown: absolute.display().to_string(), host: absolute, in_root: false }]
        } else if options.modname_only {
            indexes.lookup_name(target)
        } else {
            indexes.lookup_alias(target)
        };
        if found.is_empty() {
            let what = if options.modname_only { "Module name" } else { "Module" };
            eprintln!("modinfo: ERROR: {what} {target} not found.");
            all_ok = false;
            continue;
        }
        for module in found {
            all_ok &= describe(&module, &indexes, options.field.as_deref(), separator, out)?;
        }
    }
    Ok(all_ok)
}

/// `(key, value)` entries in the order the module declares them.
type Info = Vec<(Vec<u8>, Vec<u8>)>;

/// A module's `.modinfo` or, for a builtin one, its modules.builtin.modinfo records.
fn info_of(module: &Found, indexes: &Indexes) -> Result<Info, String> {
    match module {
        Found::File { shown, host, in_root } => {
            let file = match in_root {
                true => indexes.root.open_file(host).map_err(cross::without_path),
                false => std::fs::File::open(host),
            };
            let fail = |e: io::Error| format!("could not get modinfo from '{shown}': {e}");
            let image = file.and_then(ModuleImage::from_file).map_err(fail)?;
            let elf = ModuleElf::parse(&image, ReadOptions::default()).map_err(fail)?;
            let mut info: Info =
                elf.modinfo.into_iter().map(|(k, v)| (k, v.unwrap_or_else(|| b"(null)".to_vec()))).collect();
            // kmod lists the appended signature's fields after .modinfo's.
            info.extend(Signature::read(&image).iter().flat_map(Signature::modinfo_entries));
            Ok(info)
        }
        Found::Builtin(name) => {
            let data = indexes.read("modules.builtin.modinfo").unwrap_or_default();
            let prefix = format!("{name}.");
            Ok(data
                .split(|&b| b == 0)
                .filter_map(|record| record.strip_prefix(prefix.as_bytes()))
                .filter_map(|kv| {
                    let eq = kv.iter().position(|&b| b == b'=')?;
                    Some((kv[..eq].to_vec(), kv[eq + 1..].to_vec()))
                })
                .collect())
        }
    }
}

/// `parm`/`parmtype` entries merged per parameter, newest parameter first (kmod prepends).
struct Param {
    name: Vec<u8>,
    description: Option<Vec<u8>>,
    kind: Option<Vec<u8>>,
}

fn add_param(params: &mut Vec<Param>, key: &[u8], value: &[u8]) {
    let Some(colon) = value.iter().position(|&b| b == b':') else {
        eprintln!(
            "modinfo: ERROR: Found invalid \"{}={}\": missing ':'",
            String::from_utf8_lossy(key),
            String::from_utf8_lossy(value)
        );
        return;
    };
    let (name, rest) = (&value[..colon], &value[colon + 1..]);
    let index = match params.iter().position(|p| p.name == name) {
        Some(i) => i,
        None => {
            params.insert(0, Param { name: name.to_vec(), description: None, kind: None });
            0
        }
    };
    if key == b"parm" {
        params[index].description = Some(rest.to_vec());
    } else {
        params[index].kind = Some(rest.to_vec());
    }
}

fn param_text(p: &Param, in_list: bool) -> Vec<u8> {
    let mut line = p.name.clone();
    match (&p.description, &p.kind) {
        (None, Some(kind)) if in_list => {
            line.extend_from_slice(b": (");
            line.extend_from_slice(kind);
            line.push(b')');
        }
        (None, kind) => {
            line.push(b':');
            line.extend_from_slice(kind.as_deref().unwrap_or_default());
        }
        (Some(description), Some(kind)) => {
            line.push(b':');
            line.extend_from_slice(description);
            line.extend_from_slice(b" (");
            line.extend_from_slice(kind);
            line.push(b')');
        }
        (Some(description), None) => {
            line.push(b':');
            line.extend_from_slice(description);
        }
    }
    line
}

/// `printf("%-16s", label)`.
fn label(text: &str) -> Vec<u8> {
    format!("{text:<16}").into_bytes()
}

fn describe(module: &Found, indexes: &Indexes, field: Option<&str>, sep: u8, out: &mut dyn Write) -> io::Result<bool> {
    let filename = match module {
        Found::File { shown, .. } => shown.clone(),
        Found::Builtin(name) => {
            match field {
                None => out.write_all(&[label("name:"), name.as_bytes().to_vec(), vec![sep]].concat())?,
                Some("name") => out.write_all(&[name.as_bytes(), &[sep]].concat())?,
                Some(_) => {}
            }
            "(builtin)".to_string()
        }
    };
    match field {
        Some("filename") => {
            out.write_all(&[filename.as_bytes(), &[sep]].concat())?;
            return Ok(true);
        }
        None => out.write_all(&[label("filename:"), filename.into_bytes(), vec![sep]].concat())?,
        Some(_) => {}
    }
    let info = match info_of(module, indexes) {
        Ok(info) => info,
        Err(e) => {
            eprintln!("modinfo: ERROR: {e}");
            return Ok(false);
        }
    };
    let mut params = Vec::new();
    if field == Some("parm") {
        for (key, value) in &info {
            if key == b"parm" || key == b"parmtype" {
                add_param(&mut params, key, value);
            }
        }
        for p in &params {
            out.write_all(&[param_text(p, true), vec![sep]].concat())?;
        }
        return Ok(true);
    }
    for (key, value) in &info {
        if let Some(field) = field {
            if key == field.as_bytes() {
                out.write_all(&[value.as_slice(), &[sep]].concat())?;
            }
            continue;
        }
        if key == b"parm" || key == b"parmtype" {
            add_param(&mut params, key, value);
            continue;
        }
        let mut line = key.clone();
        if sep == 0 {
            line.push(b'=');
        } else {
            // printf("%s:%-*s", key, 15 - keylen, ""): a negative width still pads by its size.
            line.push(b':');
            line.extend(std::iter::repeat_n(b' ', 15usize.abs_diff(key.len())));
        }
        line.extend_from_slice(value);
        line.push(sep);
        out.write_all(&line)?;
    }
    if field.is_none() {
        for p in &params {
            out.write_all(&[label("parm:"), param_text(p, false), vec![sep]].concat())?;
        }
    }
    Ok(true)
}
