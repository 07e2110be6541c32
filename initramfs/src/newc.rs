//! newc (`070701`) and crc (`070702`) cpio archives, read with the kernel's rules and written
//! deterministically.

use std::fmt;
use std::io::Read;

/// Header length: 6-byte magic and 13 eight-digit hex fields.
pub(crate) const HEADER_LEN: usize = 110;
/// The kernel's PATH_MAX: longer names are not unpacked.
pub const NAME_MAX: u32 = 4096;
pub const TRAILER: &str = "TRAILER!!!";

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;

/// One archive member. `data` is a file's content or a symlink's target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub name: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub ino: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub data: Vec<u8>,
}

impl Entry {
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == S_IFDIR
    }

    pub fn is_file(&self) -> bool {
        self.file_type() == S_IFREG
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type() == S_IFLNK
    }

    /// A directory entry with mode 0755.
    pub fn directory(name: impl Into<String>) -> Entry {
        Entry { name: name.into(), mode: S_IFDIR | 0o755, nlink: 1, ..Entry::default() }
    }

    /// A regular file with `perm` permission bits.
    pub fn file(name: impl Into<String>, perm: u32, data: Vec<u8>) -> Entry {
        Entry { name: name.into(), mode: S_IFREG | (perm & 0o7777), nlink: 1, data, ..Entry::default() }
    }

    /// A symbolic link to `target`.
    pub fn symlink(name: impl Into<String>, target: impl Into<Vec<u8>>) -> Entry {
        Entry { name: name.into(), mode: S_IFLNK | 0o777, nlink: 1, data: target.into(), ..Entry::default() }
    }
}

/// Why an archive could not be read; `offset` is relative to the archive stream's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {} of the cpio stream: {}", self.offset, self.message)
    }
}

impl std::error::Error for ParseError {}

/// True when `bytes` start like a newc/crc header.
pub fn looks_like_header(bytes: &[u8]) -> bool {
    bytes.starts_with(b"070701") || bytes.starts_with(b"070702")
}

fn hex_field(header: &[u8], index: usize) -> Option<u32> {
    let field = header.get(6 + 8 * index..14 + 8 * index)?;
    u32::from_str_radix(std::str::from_utf8(field).ok()?, 16).ok()
}

/// Reads archive members from `stream`. With `until_trailer`, stops after the first
/// `TRAILER!!!` (a stand-alone uncompressed archive); otherwise reads to the end (the content of
/// a compressed member), skipping the NUL padding between archives, and anything else left over
/// is an error. Returns the members (trailers excluded) and the bytes used.
pub fn parse(stream: &[u8], until_trailer: bool) -> Result<(Vec<Entry>, usize), ParseError> {
    parse_keeping(stream, until_trailer, &|_| true)
}

/// [`parse`], keeping file data only for members whose name `keep_data` accepts (symlink
/// targets, and data with a checksum to verify, are always read).
pub fn parse_keeping(
    stream: &[u8],
    until_trailer: bool,
    keep_data: &dyn Fn(&str) -> bool,
) -> Result<(Vec<Entry>, usize), ParseError> {
    let mut entries = Vec::new();
    let mut pos = 0;
    let err = |offset: usize, message: String| ParseError { offset, message };
    loop {
        if !until_trailer {
            // The kernel eats NULs between archives; a header must then start 4-aligned.
            while stream.get(pos) == Some(&0) {
                pos += 1;
            }
            if pos == stream.len() {
                return Ok((entries, pos));
            }
            if pos % 4 != 0 {
                return Err(err(pos, "broken padding: a header does not start on a 4-byte boundary".into()));
            }
        }
        let rest = &stream[pos..];
        if rest.starts_with(b"070707") {
            return Err(err(pos, "old binary/odc cpio (070707): the kernel reads only newc; use cpio -H newc".into()));
        }
        // A stream cut inside the magic is reported as truncated below, not as junk.
        let cut_magic = rest.len() < 6 && b"070701".starts_with(rest);
        if !(looks_like_header(rest) || cut_magic) {
            let what = if until_trailer { "no cpio magic" } else { "junk at the end of the compressed archive" };
            return Err(err(pos, what.into()));
        }
        let header = rest.get(..HEADER_LEN).ok_or_else(|| err(pos, "truncated cpio header".into()))?;
        let fields: Option<Vec<u32>> = (0..13).map(|i| hex_field(header, i)).collect();
        let fields = fields.ok_or_else(|| err(pos, "cpio header field is not hexadecimal".into()))?;
        let namesize = fields[11];
        if namesize == 0 || namesize > NAME_MAX {
            return Err(err(pos, format!("name size {namesize} is outside 1..={NAME_MAX}")));
        }
        let mut rest = &stream[pos..];
        let reader = cpio::newc::Reader::new(&mut rest).map_err(|e| err(pos, format!("bad cpio entry: {e}")))?;
        let meta = reader.entry().clone();
        let wanted = keep_data(meta.name()) || meta.mode() & S_IFMT == S_IFLNK || meta.checksum().is_some();
        let mut data = Vec::with_capacity(if wanted { (meta.file_size() as usize).min(stream.len()) } else { 0 });
        let mut reader = reader;
        let read = if wanted {
            reader.by_ref().read_to_end(&mut data)
        } else {
            std::io::copy(&mut reader.by_ref(), &mut std::io::sink()).map(|n| n as usize)
        }
        .map_err(|e| err(pos, format!("reading data: {e}")))?;
        if read != meta.file_size() as usize {
            return Err(err(pos, format!("{}: file data is truncated", meta.name())));
        }
        if let Some(sum) = meta.checksum() {
            let actual = data.iter().fold(0u32, |acc, &b| acc.wrapping_add(u32::from(b)));
            if actual != sum {
                return Err(err(pos, format!("{}: bad data checksum", meta.name())));
            }
        }
        // The data's padding may be missing at the very end of a stream; the kernel tolerates that.
        let after = match reader.finish() {
            Ok(r) => r,
            Err(_) => &[][..],
        };
        let used = stream.len() - after.len() - pos;
        let start = pos;
        pos += used;
        if meta.is_trailer() {
            if until_trailer {
                return Ok((entries, pos));
            }
            continue;
        }
        if meta.name().is_empty() {
            return Err(err(start, "empty entry name".into()));
        }
        entries.push(Entry {
            name: meta.name().to_string(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            nlink: meta.nlink(),
            mtime: meta.mtime(),
            ino: meta.ino(),
            dev_major: meta.dev_major(),
            dev_minor: meta.dev_minor(),
            rdev_major: meta.rdev_major(),
            rdev_minor: meta.rdev_minor(),
            data,
        });
        if until_trailer && pos >= stream.len() {
            return Ok((entries, pos));
        }
        if until_trailer && !looks_like_header(&stream[pos..]) {
            // An archive without a trailer ends where the next thing begins.
            return Ok((entries, pos));
        }
    }
}

/// Writes `entries` in the given order as one newc archive with a trailer, padded to 512 bytes as
/// cpio(1) and gen_init_cpio do. Inode numbers are assigned 1, 2, ... in order.
pub fn write(entries: &[Entry]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let size = u32::try_from(entry.data.len()).map_err(|_| {
            std::io::Error::other(format!("{}: larger than the 4 GiB a cpio entry can hold", entry.name))
        })?;
        let builder = cpio::newc::Builder::new(&entry.name)
            .ino(index as u32 + 1)
            .mode(entry.mode)
            .uid(entry.uid)
            .gid(entry.gid)
            .nlink(entry.nlink.max(1))
            .mtime(entry.mtime)
            .dev_major(entry.dev_major)
            .dev_minor(entry.dev_minor)
            .rdev_major(entry.rdev_major)
            .rdev_minor(entry.rdev_minor);
        let mut writer = builder.write(&mut out, size);
        std::io::Write::write_all(&mut writer, &entry.data)?;
        writer.finish()?;
    }
    cpio::newc::trailer(&mut out)?;
    out.resize(out.len().next_multiple_of(512), 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_parse() {
        let entries = vec![
            Entry::directory("bin"),
            Entry::file("bin/tool", 0o755, b"#!/bin/sh\n".to_vec()),
            Entry::symlink("sbin", "bin"),
            Entry::file("empty", 0o644, Vec::new()),
        ];
        let bytes = write(&entries).expect("write");
        assert_eq!(bytes.len() % 512, 0);
        let (parsed, used) = parse(&bytes, true).expect("parse");
        assert_eq!(parsed.len(), entries.len());
        for (a, b) in parsed.iter().zip(&entries) {
            assert_eq!((&a.name, a.mode, &a.data), (&b.name, b.mode, &b.data));
        }
        // The trailer's own padding is part of the archive; the 512 padding is not.
        assert!(used <= bytes.len() && bytes[used..].iter().all(|&b| b == 0));
    }

    #[test]
    fn rejects_bad_headers() {
        let good = write(&[Entry::file("a", 0o644, b"x".to_vec())]).expect("write");
        let mut long = good.clone();
        long[94..102].copy_from_slice(b"00001001"); // namesize 4097
        assert!(parse(&long, true).expect_err("namesize").message.contains("name size 4097"));
        let mut odc = good.clone();
        odc[..6].copy_from_slice(b"070707");
        assert!(parse(&odc, true).expect_err("odc").message.contains("070707"));
        assert!(parse(&good[..50], true).is_err());
        assert!(parse(&good[..112], true).expect_err("no data").message.contains("truncated"));
        let mut junk = good.clone();
        junk.extend_from_slice(b"garbage!");
        assert!(parse(&junk, false).expect_err("junk").message.contains("junk"));
    }
}
