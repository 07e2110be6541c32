//! newc (`070701`) and crc (`070702`) cpio archives: the member model and a deterministic,
//! streaming writer (reading is in [`crate::stream`], with the kernel's rules).

use std::io::{self, Read, Write};
use std::path::PathBuf;

/// Header length: 6-byte magic and 13 eight-digit hex fields.
pub(crate) const HEADER_LEN: usize = 110;
/// The kernel's PATH_MAX: longer names are not unpacked.
pub const NAME_MAX: u32 = 4096;
pub const TRAILER: &str = "TRAILER!!!";

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;

/// Where a member's data is: in memory, or in a file read only when the archive is written, so
/// an archive of any size is written at fixed memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// A symlink's target, a small or generated file.
    Bytes(Vec<u8>),
    /// A file of the build host holding exactly `len` bytes.
    File { path: PathBuf, len: u64 },
    /// `len` bytes at `offset` in a file of the build host (many members' data in one file).
    Range { path: PathBuf, offset: u64, len: u64 },
}

impl Default for Data {
    fn default() -> Data {
        Data::Bytes(Vec::new())
    }
}

impl Data {
    pub fn len(&self) -> u64 {
        match self {
            Data::Bytes(bytes) => bytes.len() as u64,
            Data::File { len, .. } | Data::Range { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole content (read from its file for the file-backed kinds).
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len() as usize);
        self.copy_to(&mut out)?;
        Ok(out)
    }

    /// Copies the content to `out`; a file that no longer holds `len` bytes is an error.
    fn copy_to(&self, out: &mut dyn Write) -> io::Result<()> {
        let (path, offset, len) = match self {
            Data::Bytes(bytes) => return out.write_all(bytes),
            Data::File { path, len } => (path, 0, *len),
            Data::Range { path, offset, len } => (path, *offset, *len),
        };
        let mut file =
            std::fs::File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        io::Seek::seek(&mut file, io::SeekFrom::Start(offset))?;
        let copied = io::copy(&mut file.take(len), out)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while the archive was written", path.display()),
            ));
        }
        Ok(())
    }
}

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
    pub data: Data,
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
    pub fn file(name: impl Into<String>, perm: u32, data: impl Into<Data>) -> Entry {
        Entry { name: name.into(), mode: S_IFREG | (perm & 0o7777), nlink: 1, data: data.into(), ..Entry::default() }
    }

    /// A symbolic link to `target`.
    pub fn symlink(name: impl Into<String>, target: impl Into<Vec<u8>>) -> Entry {
        Entry {
            name: name.into(),
            mode: S_IFLNK | 0o777,
            nlink: 1,
            data: Data::Bytes(target.into()),
            ..Entry::default()
        }
    }
}

impl From<Vec<u8>> for Data {
    fn from(bytes: Vec<u8>) -> Data {
        Data::Bytes(bytes)
    }
}

/// True when `bytes` start like a newc/crc header.
pub fn looks_like_header(bytes: &[u8]) -> bool {
    bytes.starts_with(b"070701") || bytes.starts_with(b"070702")
}

/// Writes one newc archive member by member, then its trailer padded to 512 bytes as cpio(1)
/// and gen_init_cpio do. Inode numbers are assigned 1, 2, ... in order.
pub struct Writer<W: Write> {
    out: Counting<W>,
    members: u32,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer { out: Counting { inner: out, written: 0 }, members: 0 }
    }

    pub fn member(&mut self, entry: &Entry) -> io::Result<()> {
        let size = u32::try_from(entry.data.len())
            .map_err(|_| io::Error::other(format!("{}: larger than the 4 GiB a cpio entry can hold", entry.name)))?;
        self.members += 1;
        let builder = cpio::newc::Builder::new(&entry.name)
            .ino(self.members)
            .mode(entry.mode)
            .uid(entry.uid)
            .gid(entry.gid)
            .nlink(entry.nlink.max(1))
            .mtime(entry.mtime)
            .dev_major(entry.dev_major)
            .dev_minor(entry.dev_minor)
            .rdev_major(entry.rdev_major)
            .rdev_minor(entry.rdev_minor);
        let mut writer = builder.write(&mut self.out, size);
        entry.data.copy_to(&mut writer)?;
        writer.finish()?;
        Ok(())
    }

    /// Writes a member with every field of `header` as given, its inode number included (a
    /// member copied from another archive keeps its hard links), and `header.file_size` bytes
    /// of `data`.
    pub fn member_as_is(&mut self, header: &crate::stream::Header, data: &mut dyn Read) -> io::Result<()> {
        let name = std::str::from_utf8(&header.name).map_err(|_| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("member {} has a name that is not UTF-8", header.name.escape_ascii()),
            )
        })?;
        self.members += 1;
        let builder = cpio::newc::Builder::new(name)
            .ino(header.ino)
            .mode(header.mode)
            .uid(header.uid)
            .gid(header.gid)
            .nlink(header.nlink)
            .mtime(header.mtime)
            .dev_major(header.dev_major)
            .dev_minor(header.dev_minor)
            .rdev_major(header.rdev_major)
            .rdev_minor(header.rdev_minor);
        let mut writer = builder.write(&mut self.out, header.file_size);
        let copied = io::copy(&mut data.take(u64::from(header.file_size)), &mut writer)?;
        if copied != u64::from(header.file_size) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{name}: its data ended early")));
        }
        writer.finish()?;
        Ok(())
    }

    /// Writes the trailer and the padding; returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        cpio::newc::trailer(&mut self.out)?;
        let padding = self.out.written.next_multiple_of(512) - self.out.written;
        self.out.write_all(&vec![0; padding as usize])?;
        self.out.flush()?;
        Ok(self.out.inner)
    }
}

/// A writer that counts what passes through it.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `entries` in the given order as one archive in memory.
pub fn write(entries: &[Entry]) -> io::Result<Vec<u8>> {
    let mut writer = Writer::new(Vec::new());
    for entry in entries {
        writer.member(entry)?;
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{scan, Header, SegmentInfo, Visitor};
    use std::io::BufRead;

    /// Every member a scan sees, with its data.
    #[derive(Default)]
    struct Collect(Vec<(Header, Vec<u8>)>);

    impl Visitor for Collect {
        fn member(&mut self, _segment: &SegmentInfo, header: &Header, data: &mut dyn BufRead) -> io::Result<()> {
            let mut bytes = Vec::new();
            data.read_to_end(&mut bytes)?;
            self.0.push((header.clone(), bytes));
            Ok(())
        }
    }

    #[test]
    fn written_archives_read_back() {
        let dir = std::env::temp_dir().join(format!("initramfs-newc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let host = dir.join("tool");
        std::fs::write(&host, b"#!/bin/sh\n").expect("write");
        let entries = vec![
            Entry::directory("bin"),
            Entry::file("bin/tool", 0o755, Data::File { path: host.clone(), len: 10 }),
            Entry::symlink("sbin", "bin"),
            Entry::file("empty", 0o644, Vec::new()),
        ];
        let bytes = write(&entries).expect("write");
        assert_eq!(bytes.len() % 512, 0);
        let mut seen = Collect::default();
        scan(&bytes[..], &mut seen).expect("scan");
        assert_eq!(seen.0.len(), entries.len());
        for ((header, data), entry) in seen.0.iter().zip(&entries) {
            assert_eq!(header.name, entry.name.as_bytes());
            assert_eq!(header.mode, entry.mode);
            assert_eq!(*data, entry.data.read_all().expect("data"));
        }
        // A file that shrank after it was listed is an error, not a short member.
        std::fs::write(&host, b"#!").expect("write");
        let error = write(&entries).expect_err("shrank");
        assert!(error.to_string().contains("shrank"), "{error}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
