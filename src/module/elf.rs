//! The parts of a module's ELF image that depmod and modinfo use, read as libkmod reads them.
//!
//! Any class (32/64-bit) and byte order, independent of the host. Only the section headers and the
//! sections named below are read: `.modinfo`, `__ksymtab_strings`, `.symtab`, `.strtab` and
//! `__versions` (about a sixth of a typical module). Malformed input is an error, never a panic.

use std::collections::HashMap;
use std::io;

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::section_header::SectionHeader;
use goblin::elf::sym::Symtab;
use goblin::elf::{Elf, Header};

use super::file::ModuleImage;

const EM_SPARC: u16 = 2;
const EM_SPARCV9: u16 = 43;
const SHN_UNDEF: usize = 0;
const SHN_ABS: usize = 0xfff1;
const STB_WEAK: u8 = 2;
const STT_REGISTER: u8 = 13;
/// One `__versions` record: a CRC (4 or 8 bytes) and a NUL-padded name, 64 bytes in all.
const MODVERSION_RECORD: usize = 64;

/// A symbol the module exports, with its CRC when the caller asked for CRCs (else 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub name: Vec<u8>,
    pub crc: u64,
}

/// A symbol the module needs from the kernel or another module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    pub name: Vec<u8>,
    pub crc: u64,
    pub weak: bool,
}

/// What a module declares, as libkmod would report it.
#[derive(Debug, Clone, Default)]
pub struct ModuleElf {
    pub machine: u16,
    pub is_64bit: bool,
    pub big_endian: bool,
    /// `.modinfo` entries in section order: key and, when the entry has an `=`, value.
    pub modinfo: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub exports: Vec<Export>,
    /// Undefined symbols, then `__versions` entries matched by none of them. `None` when libkmod
    /// could not list them (no or malformed symbol table), which means: no dependencies.
    pub imports: Option<Vec<Import>>,
}

#[derive(Debug, Clone, Copy)]
struct Section {
    offset: u64,
    size: u64,
    name: u32,
}

/// Parsed section headers plus the image they describe.
struct Sections<'a> {
    image: &'a ModuleImage,
    ctx: Ctx,
    headers: Vec<Option<Section>>,
    names: Vec<u8>,
}

fn invalid() -> io::Error {
    io::Error::from_raw_os_error(22) // EINVAL, what libkmod reports for a malformed ELF
}

impl<'a> Sections<'a> {
    fn load(image: &'a ModuleImage) -> io::Result<(Sections<'a>, Header)> {
        let len = image.len();
        let ident = image.read(0, 16.min(len))?;
        if len <= 16 || !ident.starts_with(b"\x7fELF") {
            return Err(io::Error::from_raw_os_error(8)); // ENOEXEC
        }
        let (container, ehdr_size, shdr_size) = match ident[4] {
            1 => (Container::Little, 52u64, 40u64),
            2 => (Container::Big, 64u64, 64u64),
            _ => return Err(invalid()),
        };
        let endian = match ident[5] {
            1 => Endian::Little,
            2 => Endian::Big,
            _ => return Err(invalid()),
        };
        if len <= ehdr_size {
            return Err(invalid());
        }
        let header: Header = Elf::parse_header(&image.read(0, ehdr_size)?).map_err(|_| invalid())?;
        let ctx = Ctx::new(container, endian);
        if u64::from(header.e_shentsize) != shdr_size {
            return Err(invalid());
        }
        let count = u64::from(header.e_shnum);
        let table_end =
            count.checked_mul(shdr_size).and_then(|size| size.checked_add(header.e_shoff)).ok_or_else(invalid)?;
        if table_end > len {
            return Err(invalid());
        }
        let headers = if count == 0 {
            Vec::new()
        } else {
            let table = image.read(header.e_shoff, count * shdr_size)?;
            SectionHeader::parse_from(&table, 0, count as usize, ctx)
                .map_err(|_| invalid())?
                .into_iter()
                .map(|sh| {
                    // A section is usable only if it lies inside the image.
                    let end = sh.sh_offset.checked_add(sh.sh_size)?;
                    (end <= len).then_some(Section { offset: sh.sh_offset, size: sh.sh_size, name: sh.sh_name as u32 })
                })
                .collect()
        };
        let strings_index = usize::from(header.e_shstrndx);
        let strings = match headers.get(strings_index) {
            Some(Some(section)) if strings_index != 0 => *section,
            _ => return Err(invalid()),
        };
        let names = image.read(strings.offset, strings.size)?.into_owned();
        if names.last() != Some(&0) {
            return Err(invalid());
        }
        Ok((Sections { image, ctx, headers, names }, header))
    }

    /// The first section (index 1 up) called `name`, as libkmod's `kmod_elf_get_section`.
    fn find(&self, name: &str) -> Option<(usize, Section)> {
        self.headers.iter().enumerate().skip(1).find_map(|(index, section)| {
            let section = (*section)?;
            let start = section.name as usize;
            let rest = self.names.get(start..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            (&rest[..end] == name.as_bytes()).then_some((index, section))
        })
    }

    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match self.find(name) {
            Some((_, section)) => Ok(Some(self.image.read(section.offset, section.size)?.into_owned())),
            None => Ok(None),
        }
    }

    fn sym_size(&self) -> usize {
        if self.ctx.container == Container::Big {
            24
        } else {
            16
        }
    }

    /// An export's CRC as libkmod resolves it: the symbol's value, or for a symbol defined in a
    /// section (`__kcrctab*`) the u32 stored at that value inside the section.
    fn resolve_crc(&self, value: u64, shndx: usize) -> u64 {
        if shndx == SHN_UNDEF || shndx == SHN_ABS {
            return value;
        }
        let Some(Some(section)) = self.headers.get(shndx) else {
            return u64::MAX;
        };
        if section.size < 4 || value > section.size - 4 {
            return u64::MAX;
        }
        match self.image.read(section.offset + value, 4) {
            Ok(bytes) => {
                let raw = [bytes[0], bytes[1], bytes[2], bytes[3]];
                u64::from(match self.ctx.le {
                    Endian::Little => u32::from_le_bytes(raw),
                    Endian::Big => u32::from_be_bytes(raw),
                })
            }
            Err(_) => u64::MAX,
        }
    }
}

/// What to read beyond the always-read parts.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Resolve export CRCs (one extra read per export of a plain module); only `-E` checks use them.
    pub export_crcs: bool,
}

impl ModuleElf {
    /// Reads a module image. An error means libkmod could not open the ELF at all; problems in
    /// individual sections only make the affected lists empty, as in libkmod.
    pub fn parse(image: &ModuleImage, options: ReadOptions) -> io::Result<ModuleElf> {
        let (sections, header) = Sections::load(image)?;
        let modinfo = sections.read(".modinfo")?.map(|s| split_modinfo(&s)).unwrap_or_default();
        let strtab = sections.read(".strtab")?;
        let symtab = sections.read(".symtab")?;
        let symbols = match (&strtab, &symtab) {
            (Some(strtab), Some(symtab)) if symtab.len() % sections.sym_size() == 0 => {
                let count = symtab.len() / sections.sym_size();
                Symtab::parse(symtab, 0, count, sections.ctx).ok().map(|t| (strtab.as_slice(), t))
            }
            _ => None,
        };
        let exports = match &symbols {
            Some((strtab, symtab)) => crc_exports(&sections, strtab, symtab, options),
            None => None,
        };
        let exports = match exports {
            Some(list) if !list.is_empty() => list,
            _ => ksymtab_string_exports(sections.read("__ksymtab_strings")?.as_deref()),
        };
        let imports = match &symbols {
            Some((strtab, symtab)) => {
                let versions = sections.read("__versions")?;
                imports(&sections, header.e_machine, strtab, symtab, versions.as_deref())
            }
            None => None,
        };
        Ok(ModuleElf {
            machine: header.e_machine,
            is_64bit: sections.ctx.container == Container::Big,
            big_endian: sections.ctx.le == Endian::Big,
            modinfo,
            exports,
            imports,
        })
    }

    /// The values of `.modinfo` entries called `key`, in section order.
    pub fn modinfo_values<'s>(&'s self, key: &'s [u8]) -> impl Iterator<Item = &'s [u8]> + 's {
        self.modinfo.iter().filter(move |(k, _)| k == key).filter_map(|(_, v)| v.as_deref())
    }
}

/// The NUL-terminated string at `offset` of `strtab` (up to its end if unterminated).
fn c_string(strtab: &[u8], offset: usize) -> &[u8] {
    let rest = &strtab[offset.min(strtab.len())..];
    match rest.iter().position(|&b| b == 0) {
        Some(end) => &rest[..end],
        None => rest,
    }
}

/// Splits a string table section as libkmod's `kmod_elf_get_strings` does: leading NULs skipped,
/// runs of NULs separate strings, a final unterminated string still counts.
fn split_strings(section: &[u8]) -> Vec<&[u8]> {
    let start = section.iter().position(|&b| b != 0).unwrap_or(section.len());
    // libkmod keeps one byte of an all-NUL section and then reports nothing; a section whose
    // remainder is a single byte also yields nothing.
    let rest = &section[start.min(section.len().saturating_sub(1))..];
    if rest.len() <= 1 {
        return Vec::new();
    }
    rest.split(|&b| b == 0).filter(|s| !s.is_empty()).collect()
}

fn split_modinfo(section: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    split_strings(section)
        .into_iter()
        .map(|entry| match entry.iter().position(|&b| b == b'=') {
            Some(eq) => (entry[..eq].to_vec(), Some(entry[eq + 1..].to_vec())),
            None => (entry.to_vec(), None),
        })
        .collect()
}

/// Exports named by `__crc_<sym>` symbols; `None` when a name offset is out of range (libkmod
/// then falls back to `__ksymtab_strings`).
fn crc_exports(sections: &Sections, strtab: &[u8], symtab: &Symtab, options: ReadOptions) -> Option<Vec<Export>> {
    let mut exports = Vec::new();
    for sym in symtab.iter().skip(1) {
        let name_off = sym.st_name;
        if name_off >= strtab.len() {
            return None;
        }
        let name = c_string(strtab, name_off);
        if let Some(exported) = name.strip_prefix(b"__crc_") {
            let crc = if options.export_crcs { sections.resolve_crc(sym.st_value, sym.st_shndx) } else { 0 };
            exports.push(Export { name: exported.to_vec(), crc });
        }
    }
    Some(exports)
}

fn ksymtab_string_exports(section: Option<&[u8]>) -> Vec<Export> {
    let Some(section) = section else {
        return Vec::new();
    };
    split_strings(section).into_iter().map(|name| Export { name: name.to_vec(), crc: 0 }).collect()
}

/// `__versions` records as (name, crc); an empty list when the section size is not a whole
/// number of records.
fn modversions(versions: Option<&[u8]>, ctx: Ctx) -> Vec<(&[u8], u64)> {
    let Some(versions) = versions else {
        return Vec::new();
    };
    if versions.len() % MODVERSION_RECORD != 0 {
        return Vec::new();
    }
    let crc_len = if ctx.container == Container::Big { 8 } else { 4 };
    versions
        .chunks_exact(MODVERSION_RECORD)
        .map(|record| {
            let (crc, name) = record.split_at(crc_len);
            let crc = match (crc_len, ctx.le) {
                (8, Endian::Little) => u64::from_le_bytes(crc.try_into().unwrap_or_default()),
                (8, Endian::Big) => u64::from_be_bytes(crc.try_into().unwrap_or_default()),
                (_, Endian::Little) => u64::from(u32::from_le_bytes(crc.try_into().unwrap_or_default())),
                (_, Endian::Big) => u64::from(u32::from_be_bytes(crc.try_into().unwrap_or_default())),
            };
            (c_string(name, 0), crc)
        })
        .collect()
}

fn imports(
    sections: &Sections,
    machine: u16,
    strtab: &[u8],
    symtab: &Symtab,
    versions: Option<&[u8]>,
) -> Option<Vec<Import>> {
    let versions = modversions(versions, sections.ctx);
    // First record of each name, as libkmod's linear scan finds it.
    let mut by_name: HashMap<&[u8], usize> = HashMap::with_capacity(versions.len());
    for (index, (name, _)) in versions.iter().enumerate() {
        by_name.entry(name).or_insert(index);
    }
    let mut visited = vec![false; versions.len()];
    let skip_registers = machine == EM_SPARC || machine == EM_SPARCV9;
    let mut imports = Vec::new();
    for sym in symtab.iter().skip(1) {
        if sym.st_shndx != SHN_UNDEF {
            continue;
        }
        if skip_registers && sym.st_type() == STT_REGISTER {
            continue;
        }
        if sym.st_name >= strtab.len() {
            return None;
        }
        let name = c_string(strtab, sym.st_name);
        if name.is_empty() {
            continue;
        }
        let crc = match by_name.get(name) {
            Some(&index) => {
                visited[index] = true;
                versions[index].1
            }
            None => 0,
        };
        imports.push(Import { name: name.to_vec(), crc, weak: sym.st_bind() == STB_WEAK });
    }
    for (index, (name, crc)) in versions.iter().enumerate() {
        if !visited[index] {
            imports.push(Import { name: name.to_vec(), crc: *crc, weak: false });
        }
    }
    Some(imports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_split_like_libkmod() {
        assert_eq!(split_strings(b"\0\0a=1\0\0b\0"), vec![&b"a=1"[..], b"b"]);
        assert_eq!(split_strings(b"x=1\0y"), vec![&b"x=1"[..], b"y"]);
        assert!(split_strings(b"\0\0\0").is_empty());
        assert!(split_strings(b"\0a").is_empty());
        assert!(split_strings(b"").is_empty());
    }

    #[test]
    fn modinfo_entries_split_at_first_equals() {
        let entries = split_modinfo(b"alias=a=b\0intree\0");
        assert_eq!(entries[0], (b"alias".to_vec(), Some(b"a=b".to_vec())));
        assert_eq!(entries[1], (b"intree".to_vec(), None));
    }
}
