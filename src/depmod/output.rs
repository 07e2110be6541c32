//! The files depmod writes, rendered in memory in kmod's exact formats and orders.

use std::io;
use std::path::Path;

use super::graph::Symbols;
use super::hash::{sort_in_table_order, SYMBOL_BUCKETS};
use super::scan::FoundModule;
use crate::index::{BadCharacter, IndexBuilder, Layout};
use crate::module::ModuleElf;

/// kmod's fixed buffers (PATH_MAX): longer aliases and lines are cut or split there.
const PATH_MAX: usize = 4096;

/// Which kmod release's output to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// kmod 30 (Debian 12): post-order indexes, last modules.order line wins, no weakdep.
    #[default]
    Kmod30,
    /// kmod 33: as 30, plus modules.weakdep.
    Kmod33,
    /// kmod 34: pre-order indexes, first modules.order line wins, modules.weakdep.
    Kmod34,
}

impl Format {
    pub fn layout(self) -> Layout {
        match self {
            Format::Kmod30 | Format::Kmod33 => Layout::PostOrder,
            Format::Kmod34 => Layout::PreOrder,
        }
    }
}

/// One output file: its name and whether it is a text file (printed by `-n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputFile {
    pub name: &'static str,
    pub text: bool,
}

/// The files in the order kmod writes them.
pub fn output_files(format: Format) -> Vec<OutputFile> {
    let mut files = vec![
        OutputFile { name: "modules.dep", text: true },
        OutputFile { name: "modules.dep.bin", text: false },
        OutputFile { name: "modules.alias", text: true },
        OutputFile { name: "modules.alias.bin", text: false },
        OutputFile { name: "modules.softdep", text: true },
    ];
    if format != Format::Kmod30 {
        files.push(OutputFile { name: "modules.weakdep", text: true });
    }
    files.extend([
        OutputFile { name: "modules.symbols", text: true },
        OutputFile { name: "modules.symbols.bin", text: false },
        OutputFile { name: "modules.builtin.bin", text: false },
        OutputFile { name: "modules.builtin.alias.bin", text: false },
        OutputFile { name: "modules.devname", text: true },
    ]);
    files
}

/// Everything the renderers read.
pub struct Model<'a> {
    /// The root whose module directory is indexed: modules.builtin* are read through it.
    pub root: &'a cross::Sysroot,
    pub modules: &'a [FoundModule],
    pub elves: &'a [Option<ModuleElf>],
    /// Full sorted dependency list of each module.
    pub all_deps: &'a [Vec<u32>],
    pub symbols: &'a Symbols,
    pub format: Format,
    pub warn_dups: bool,
}

/// How serious a message is; kmod prints ERROR or WARNING before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
}

/// Receives the messages a renderer reports and goes on from.
pub type Report<'r> = &'r mut dyn FnMut(Level, String);

/// Why an output could not be produced.
#[derive(Debug)]
pub enum RenderError {
    Index(&'static str, BadCharacter),
    Read(String, io::Error),
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::Index(file, e) => write!(f, "could not write index '{file}': {e}"),
            RenderError::Read(file, e) => write!(f, "could not read {file}: {e}"),
        }
    }
}

impl std::error::Error for RenderError {}

impl Model<'_> {
    fn path_of(&self, module: u32) -> &[u8] {
        let m = &self.modules[module as usize];
        m.relpath.as_deref().unwrap_or(&m.path)
    }

    fn modinfo<'s>(&'s self, module: usize, key: &'s [u8]) -> impl Iterator<Item = &'s [u8]> + 's {
        self.elves[module].iter().flat_map(move |elf| elf.modinfo_values(key))
    }

    fn dep_line(&self, module: usize) -> Vec<u8> {
        let mut line = self.path_of(module as u32).to_vec();
        line.push(b':');
        for &dep in &self.all_deps[module] {
            line.push(b' ');
            line.extend_from_slice(self.path_of(dep));
        }
        line
    }

    /// Renders `file`; `input_dir` is where modules.builtin* are read. Warnings go to `report`.
    pub fn render(&self, file: &str, input_dir: &Path, report: Report) -> Result<Vec<u8>, RenderError> {
        let layout = self.format.layout();
        let index_error = |e| RenderError::Index(static_name(file), e);
        Ok(match file {
            "modules.dep" => self.dep_text(),
            "modules.dep.bin" => self.dep_index(layout, report).map_err(index_error)?,
            "modules.alias" => self.alias_text(),
            "modules.alias.bin" => self.alias_index(layout, report).map_err(index_error)?,
            "modules.softdep" => {
                self.modinfo_text(b"softdep", b"# Soft dependencies extracted from modules themselves.\n")
            }
            "modules.weakdep" => {
                self.modinfo_text(b"weakdep", b"# Weak dependencies extracted from modules themselves.\n")
            }
            "modules.symbols" => self.symbols_text(),
            "modules.symbols.bin" => self.symbols_index(layout, report).map_err(index_error)?,
            "modules.builtin.bin" => match read_optional(self.root, input_dir, "modules.builtin", report)? {
                // kmod leaves the file empty when its input is missing.
                None => Vec::new(),
                Some(text) => builtin_index(&text, layout, report).map_err(index_error)?,
            },
            "modules.builtin.alias.bin" => {
                match read_optional(self.root, input_dir, "modules.builtin.modinfo", report)? {
                    None => Vec::new(),
                    Some(data) => builtin_alias_index(&data, layout, report).map_err(index_error)?,
                }
            }
            "modules.devname" => self.devname_text(report),
            _ => Vec::new(),
        })
    }

    /// `-w`: a value stored twice under one key.
    fn duplicate(&self, report: Report, what: &str, text: String) {
        if self.warn_dups {
            report(Level::Warning, format!("duplicate module {what}:\n{text}"));
        }
    }

    fn dep_text(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for m in 0..self.modules.len() {
            out.extend_from_slice(&self.dep_line(m));
            out.push(b'\n');
        }
        out
    }

    fn dep_index(&self, layout: Layout, report: Report) -> Result<Vec<u8>, BadCharacter> {
        let mut index = IndexBuilder::for_layout(layout);
        for m in 0..self.modules.len() {
            let line = self.dep_line(m);
            if index.insert(&self.modules[m].modname, &line, m as u32)? {
                self.duplicate(report, "deps", String::from_utf8_lossy(&line).into_owned());
            }
        }
        Ok(index.to_bytes(layout))
    }

    fn alias_text(&self) -> Vec<u8> {
        let mut out = b"# Aliases extracted from modules themselves.\n".to_vec();
        for m in 0..self.modules.len() {
            for value in self.modinfo(m, b"alias") {
                out.extend_from_slice(b"alias ");
                out.extend_from_slice(value);
                out.push(b' ');
                out.extend_from_slice(&self.modules[m].modname);
                out.push(b'\n');
            }
        }
        out
    }

    fn alias_index(&self, layout: Layout, report: Report) -> Result<Vec<u8>, BadCharacter> {
        let mut index = IndexBuilder::for_layout(layout);
        for m in 0..self.modules.len() {
            let modname = &self.modules[m].modname;
            for value in self.modinfo(m, b"alias") {
                let Some(alias) = alias_normalize(value) else {
                    report(Level::Warning, format!("Unmatched bracket in {}", String::from_utf8_lossy(value)));
                    continue;
                };
                if index.insert(&alias, modname, m as u32)? {
                    self.duplicate(report, "alias", format!("{} {}", lossy(&alias), lossy(modname)));
                }
            }
        }
        Ok(index.to_bytes(layout))
    }

    /// modules.softdep and modules.weakdep: `KEY modname value` for each `KEY=` modinfo entry.
    fn modinfo_text(&self, key: &[u8], header: &[u8]) -> Vec<u8> {
        let mut out = header.to_vec();
        for m in 0..self.modules.len() {
            for value in self.modinfo(m, key) {
                out.extend_from_slice(key);
                out.push(b' ');
                out.extend_from_slice(&self.modules[m].modname);
                out.push(b' ');
                out.extend_from_slice(value);
                out.push(b'\n');
            }
        }
        out
    }

    fn symbols_text(&self) -> Vec<u8> {
        let mut out = b"# Aliases for symbols, used by symbol_request().\n".to_vec();
        for (name, owner) in self.owned_symbols() {
            out.extend_from_slice(b"alias symbol:");
            out.extend_from_slice(name);
            out.push(b' ');
            out.extend_from_slice(&self.modules[owner as usize].modname);
            out.push(b'\n');
        }
        out
    }

    fn symbols_index(&self, layout: Layout, report: Report) -> Result<Vec<u8>, BadCharacter> {
        let mut index = IndexBuilder::for_layout(layout);
        for (name, owner) in self.owned_symbols() {
            let mut key = b"symbol:".to_vec();
            key.extend_from_slice(name);
            let modname = &self.modules[owner as usize].modname;
            if index.insert(&key, modname, owner)? {
                self.duplicate(report, "syms", format!("{} {}", lossy(&key), lossy(modname)));
            }
        }
        Ok(index.to_bytes(layout))
    }

    /// modules.devname: modules with a `devname:` alias and a char or block major:minor.
    fn devname_text(&self, report: Report) -> Vec<u8> {
        let mut out = Vec::new();
        for m in 0..self.modules.len() {
            let modname = &self.modules[m].modname;
            let mut devname: Option<&[u8]> = None;
            let mut node: Option<(u8, u32, u32)> = None;
            for value in self.modinfo(m, b"alias") {
                if let Some(name) = value.strip_prefix(b"devname:") {
                    devname = Some(name);
                } else if let Some((major, minor)) = scan_major_minor(value, b"char-major-") {
                    node = Some((b'c', major, minor));
                } else if let Some((major, minor)) = scan_major_minor(value, b"block-major-") {
                    node = Some((b'b', major, minor));
                }
                if devname.is_some() && node.is_some() {
                    break;
                }
            }
            match (devname, node) {
                (Some(devname), Some((kind, major, minor))) => {
                    if out.is_empty() {
                        out.extend_from_slice(b"# Device nodes to trigger on-demand module loading.\n");
                    }
                    out.extend_from_slice(modname);
                    out.push(b' ');
                    out.extend_from_slice(devname);
                    out.extend_from_slice(format!(" {}{major}:{minor}\n", kind as char).as_bytes());
                }
                (Some(devname), None) => report(
                    Level::Error,
                    format!(
                        "Module '{}' has devname ({}) but lacks major and minor information. Ignoring.",
                        lossy(modname),
                        lossy(devname)
                    ),
                ),
                _ => {}
            }
        }
        out
    }

    /// Module-owned symbols in kmod's symbol-table iteration order.
    fn owned_symbols(&self) -> Vec<(&[u8], u32)> {
        let mut owned: Vec<(&[u8], u32)> = self
            .symbols
            .table
            .iter()
            .filter_map(|(name, sym)| sym.owner.map(|owner| (name.as_slice(), owner)))
            .collect();
        sort_in_table_order(&mut owned, SYMBOL_BUCKETS, |(name, _)| name);
        owned
    }
}

/// modules.builtin.bin: one key per builtin module of modules.builtin.
fn builtin_index(text: &[u8], layout: Layout, report: Report) -> Result<Vec<u8>, BadCharacter> {
    let mut index = IndexBuilder::for_layout(layout);
    for line in fgets_lines(text) {
        if !line.first().is_some_and(u8::is_ascii_alphabetic) {
            report(Level::Error, format!("Invalid modules.builtin line: {}", lossy(line)));
            continue;
        }
        index.insert(&builtin_modname(line), b"", 0)?;
    }
    Ok(index.to_bytes(layout))
}

/// modules.builtin.alias.bin: the aliases of modules.builtin.modinfo.
fn builtin_alias_index(data: &[u8], layout: Layout, report: Report) -> Result<Vec<u8>, BadCharacter> {
    let mut index = IndexBuilder::for_layout(layout);
    for (modname, value) in builtin_aliases(data) {
        let Some(alias) = alias_normalize(&value) else {
            report(Level::Warning, format!("Unmatched bracket in {}", lossy(&value)));
            continue;
        };
        index.insert(&alias, &modname, 0)?;
    }
    Ok(index.to_bytes(layout))
}

fn static_name(file: &str) -> &'static str {
    output_files(Format::Kmod34).into_iter().find(|f| f.name == file).map_or("index", |f| f.name)
}

fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// An input kmod reads if it is there (warning as kmod does when it is not).
fn read_optional(
    root: &cross::Sysroot,
    dir: &Path,
    name: &str,
    report: Report,
) -> Result<Option<Vec<u8>>, RenderError> {
    let path = dir.join(name);
    match root.read(&path).map_err(cross::without_path) {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            report(Level::Warning, format!("could not open {name} at {}: No such file or directory", dir.display()));
            Ok(None)
        }
        Err(e) => Err(RenderError::Read(path.display().to_string(), e)),
    }
}

/// kmod's `alias_normalize`: `-` becomes `_` outside bracket expressions, which are copied as
/// they are; an unmatched bracket rejects the alias. Cut at kmod's PATH_MAX buffer.
pub fn alias_normalize(alias: &[u8]) -> Option<Vec<u8>> {
    let alias = &alias[..alias.len().min(PATH_MAX - 1)];
    let mut out = Vec::with_capacity(alias.len());
    let mut i = 0;
    while i < alias.len() {
        match alias[i] {
            b'-' => out.push(b'_'),
            b']' => return None,
            b'[' => {
                let close = alias[i..].iter().position(|&b| b == b']')?;
                out.extend_from_slice(&alias[i..=i + close]);
                i += close;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Some(out)
}

/// Lines as C's `fgets` with a PATH_MAX buffer returns them: newline kept, long lines split.
pub fn fgets_lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let limit = rest.len().min(PATH_MAX - 1);
        let end = rest[..limit].iter().position(|&b| b == b'\n').map_or(limit, |nl| nl + 1);
        let (line, tail) = rest.split_at(end);
        rest = tail;
        // strlen() stops at an embedded NUL.
        Some(match line.iter().position(|&b| b == 0) {
            Some(nul) => &line[..nul],
            None => line,
        })
    })
}

/// kmod's `path_to_modname` on a modules.builtin line (its newline included).
fn builtin_modname(line: &[u8]) -> Vec<u8> {
    let base = line.iter().rposition(|&b| b == b'/').map_or(line, |slash| &line[slash + 1..]);
    base.iter().take_while(|&&b| b != b'.').map(|&b| if b == b'-' { b'_' } else { b }).collect()
}

/// `(modname, alias)` pairs from modules.builtin.modinfo (`mod.key=value\0` records), read with
/// kmod's stream rules, quirks included.
fn builtin_aliases(data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    // Reads up to `end`, NUL or EOF; the stop byte is consumed. Returns the text when the stop
    // byte was `end` (kmod returns a zero length otherwise).
    let read_to = |pos: &mut usize, end: u8| -> Option<Vec<u8>> {
        let start = *pos;
        while *pos < data.len() && data[*pos] != end && data[*pos] != 0 && *pos - start < PATH_MAX {
            *pos += 1;
        }
        let text = data[start..*pos].to_vec();
        let stop = data.get(*pos).copied();
        if *pos < data.len() {
            *pos += 1;
        }
        (stop == Some(end) && !text.is_empty()).then_some(text)
    };
    while pos < data.len() {
        let Some(modname) = read_to(&mut pos, b'.') else { continue };
        let key = read_to(&mut pos, b'=');
        if key.as_deref() != Some(b"alias") {
            while pos < data.len() && data[pos] != 0 {
                pos += 1;
            }
            pos = (pos + 1).min(data.len());
            continue;
        }
        if let Some(value) = read_to(&mut pos, 0) {
            out.push((modname, value));
        }
    }
    out
}

/// `sscanf(value, "<prefix>%u-%u")` returning both numbers when both converted.
fn scan_major_minor(value: &[u8], prefix: &[u8]) -> Option<(u32, u32)> {
    let rest = value.strip_prefix(prefix)?;
    let (major, rest) = scan_unsigned(rest)?;
    let rest = rest.strip_prefix(b"-")?;
    let (minor, _) = scan_unsigned(rest)?;
    Some((major, minor))
}

/// C's `%u`: optional white space and sign, then digits, converted like `strtoul` and stored in
/// an `unsigned int`.
fn scan_unsigned(text: &[u8]) -> Option<(u32, &[u8])> {
    let mut i = text.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let negative = match text.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits = text[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut value: u64 = 0;
    for &d in &text[i..i + digits] {
        value = value.saturating_mul(10).saturating_add(u64::from(d - b'0'));
    }
    if negative {
        value = value.wrapping_neg();
    }
    Some((value as u32, &text[i + digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_normalization() {
        assert_eq!(alias_normalize(b"sym[0-9]-x").as_deref(), Some(&b"sym[0-9]_x"[..]));
        assert_eq!(alias_normalize(b"pci:v00001234d*sv*").as_deref(), Some(&b"pci:v00001234d*sv*"[..]));
        assert_eq!(alias_normalize(b"a]b"), None);
        assert_eq!(alias_normalize(b"a[b"), None);
    }

    #[test]
    fn builtin_modinfo_records() {
        let data = b"ext4.alias=fs-ext4\0ext4.license=GPL\0crc32c_generic.alias=crypto-crc32c\0x.desc\0y.alias=lost\0";
        let got = builtin_aliases(data);
        assert_eq!(
            got,
            vec![(b"ext4".to_vec(), b"fs-ext4".to_vec()), (b"crc32c_generic".to_vec(), b"crypto-crc32c".to_vec())]
        );
    }

    #[test]
    fn devname_numbers_follow_sscanf() {
        assert_eq!(scan_major_minor(b"char-major-10-229", b"char-major-"), Some((10, 229)));
        assert_eq!(scan_major_minor(b"char-major-10-", b"char-major-"), None);
        assert_eq!(scan_major_minor(b"block-major-8- 3x", b"block-major-"), Some((8, 3)));
        assert_eq!(scan_major_minor(b"char-major--1-2", b"char-major-"), Some((u32::MAX, 2)));
    }

    #[test]
    fn builtin_lines() {
        let lines: Vec<&[u8]> = fgets_lines(b"kernel/a-b.ko\nkernel/c.ko").collect();
        assert_eq!(lines, vec![&b"kernel/a-b.ko\n"[..], b"kernel/c.ko"]);
        assert_eq!(builtin_modname(lines[0]), b"a_b");
    }
}
