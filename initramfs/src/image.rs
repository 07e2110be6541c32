//! A whole initramfs image: paths as the kernel unpacks them, the member lists a new segment is
//! made of, and writing an image as kept bytes of the original followed by one new segment,
//! with the kernel's layout rules between them.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufWriter, Read, Write};

use crate::codec::{Codec, Encoder, Level};
use crate::newc::{Entry, Writer, S_IFDIR};

/// Why an image could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at offset {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for ImageError {}

/// The path a member unpacks to, relative to the root: leading `./` and `/` removed, `.` is "".
pub fn normalize(name: &str) -> &str {
    let mut name = name;
    loop {
        if let Some(rest) = name.strip_prefix("./") {
            name = rest;
        } else if let Some(rest) = name.strip_prefix('/') {
            name = rest;
        } else {
            break;
        }
    }
    let name = name.trim_end_matches('/');
    if name == "." {
        ""
    } else {
        name
    }
}

/// Symlinks followed in one lookup, as Linux's limit.
const MAX_SYMLINKS: usize = 40;

/// What the kernel ends up with: normalized paths to their final member.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub files: BTreeMap<String, Entry>,
}

impl Tree {
    /// `path` with every symlink in the image resolved (absolute targets start at the image's
    /// root, `..` stops there). Missing components are kept as they are.
    pub fn resolve(&self, path: &str) -> String {
        let mut pending: Vec<String> = path.split('/').filter(|c| !c.is_empty()).rev().map(String::from).collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut followed = 0;
        while let Some(component) = pending.pop() {
            match component.as_str() {
                "." => continue,
                ".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            resolved.push(component);
            let here = resolved.join("/");
            let Some(entry) = self.files.get(&here) else { continue };
            let crate::newc::Data::Bytes(target) = &entry.data else { continue };
            if !entry.is_symlink() || followed >= MAX_SYMLINKS {
                continue;
            }
            followed += 1;
            resolved.pop();
            let target = String::from_utf8_lossy(target).into_owned();
            if target.starts_with('/') {
                resolved.clear();
            }
            pending.extend(target.split('/').filter(|c| !c.is_empty()).rev().map(String::from));
        }
        resolved.join("/")
    }
}

/// Turns path → member into an archive's member list: every missing parent directory added
/// (taking an existing directory's metadata from `existing` when it has one, else 0755), sorted
/// so parents precede children, owned by 0:0, with `mtime`, one link each.
pub fn archive_entries(files: BTreeMap<String, Entry>, existing: Option<&Tree>, mtime: u32) -> Vec<Entry> {
    let mut all: BTreeMap<String, Entry> = BTreeMap::new();
    for path in files.keys() {
        let mut parent = path.as_str();
        while let Some(slash) = parent.rfind('/') {
            parent = &parent[..slash];
            if files.contains_key(parent) || all.contains_key(parent) {
                continue;
            }
            let dir = match existing.and_then(|tree| tree.files.get(parent)) {
                Some(e) if e.is_dir() => Entry { name: parent.to_string(), ..e.clone() },
                _ => Entry::directory(parent),
            };
            all.insert(parent.to_string(), dir);
        }
    }
    // The members themselves are moved, not copied.
    all.extend(files.into_iter().map(|(path, entry)| (path.clone(), Entry { name: path, ..entry })));
    all.into_values()
        .map(|mut e| {
            e.uid = 0;
            e.gid = 0;
            e.mtime = mtime;
            e.nlink = 1;
            if e.file_type() == S_IFDIR {
                e.data = Default::default();
            }
            e
        })
        .collect()
}

/// The bytes of an original image that a new one keeps: the first `len`, after which came a
/// segment compressed with `last_codec` (`None`: nothing is kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Kept {
    pub len: u64,
    pub last_codec: Option<Codec>,
}

/// Writes an image to `out`: the kept bytes of `original`, then one segment holding `entries`
/// as a newc archive compressed with `codec`, following the kernel's layout rules (an
/// uncompressed archive starts on a 4-byte boundary; after an LZ4 member, which has no end
/// marker, come zero bytes). File data is read as it is written: memory stays fixed.
pub fn write_image(
    out: &mut dyn Write,
    original: &mut dyn Read,
    kept: Kept,
    entries: &[Entry],
    codec: Codec,
    level: Level,
) -> io::Result<()> {
    let copied = io::copy(&mut original.take(kept.len), out)?;
    if copied != kept.len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the original image shrank while it was rewritten"));
    }
    let mut position = kept.len;
    if kept.last_codec == Some(Codec::Lz4) {
        out.write_all(&[0; 4])?;
        position += 4;
    }
    if codec == Codec::None {
        let padding = position.next_multiple_of(4) - position;
        out.write_all(&vec![0; padding as usize])?;
    }
    let size: u64 = entries.iter().map(|e| e.data.len() + e.name.len() as u64 + 120).sum();
    let encoder = Encoder::new(codec, out, level, size)?;
    // The archive writer's small header writes are gathered before they reach the compressor.
    let mut archive = Writer::new(BufWriter::with_capacity(1 << 20, encoder));
    for entry in entries {
        archive.member(entry)?;
    }
    archive.finish()?.into_inner().map_err(|e| e.into_error())?.finish()?.flush()
}

/// One segment's bytes in memory: the archive, compressed with `codec`.
pub fn segment_bytes(entries: &[Entry], codec: Codec, level: Level) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    write_image(&mut out, &mut io::empty(), Kept::default(), entries, codec, level)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, Entry> {
        list.iter().map(|(p, d)| (p.to_string(), Entry::file(*p, 0o644, d.as_bytes().to_vec()))).collect()
    }

    #[test]
    fn parents_come_first_and_symlinks_resolve_in_the_image() {
        let mut listed = files(&[("usr/lib/modules/6/kernel/a.ko", "x")]);
        listed.insert("lib".into(), Entry::symlink("lib", "usr/lib"));
        listed.insert("abs".into(), Entry::symlink("abs", "/usr/lib/../lib"));
        let entries = archive_entries(listed, None, 7);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "abs",
                "lib",
                "usr",
                "usr/lib",
                "usr/lib/modules",
                "usr/lib/modules/6",
                "usr/lib/modules/6/kernel",
                "usr/lib/modules/6/kernel/a.ko"
            ]
        );
        assert!(entries.iter().all(|e| e.mtime == 7 && e.uid == 0));
        let tree = Tree { files: entries.into_iter().map(|e| (e.name.clone(), e)).collect() };
        assert_eq!(tree.resolve("lib/modules/6"), "usr/lib/modules/6");
        assert_eq!(tree.resolve("/abs/modules/../modules"), "usr/lib/modules");
    }
}
