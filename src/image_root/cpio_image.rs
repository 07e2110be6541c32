//! cpio images (a Buildroot `rootfs.cpio.gz`): one newc archive, plain or compressed with any
//! codec the initramfs crate reads; the entries a command needs extracted, and the archive
//! written again through the same codec with the command's changes, every other member copied
//! with its header (inode number, links, owner, mtime) and data, in its place.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use initramfs::codec::Encoder;
use initramfs::newc::{Writer, NAME_MAX, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use initramfs::stream::{scan, Header, ScanError, SegmentInfo, Visitor};
use initramfs::Codec;

use super::{cli_default_level, needed, normalize, written_mtime, Change, Entry, Selection};

/// True when `head` (an image's first decoded bytes) starts a newc or crc archive.
pub fn is_cpio_header(head: &[u8]) -> bool {
    initramfs::newc::looks_like_header(head)
}

/// A hard-linked file's identity in the archive: (device major, minor, inode).
type LinkKey = (u32, u32, u32);

fn link_key(header: &Header) -> Option<LinkKey> {
    (header.file_type() == S_IFREG && header.nlink >= 2).then_some((header.dev_major, header.dev_minor, header.ino))
}

/// Runs `visitor` over the archive at `path`, which must be one archive (an initramfs of
/// several segments is `initramfs inject`'s business).
fn visit(path: &Path, visitor: &mut dyn Visitor) -> io::Result<()> {
    let mut one = OneSegment { inner: visitor };
    scan(File::open(path)?, &mut one).map(drop).map_err(|e| match e {
        ScanError::Image(e) => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        ScanError::Visitor(e) => e,
    })
}

struct OneSegment<'a> {
    inner: &'a mut dyn Visitor,
}

impl Visitor for OneSegment<'_> {
    fn segment_start(&mut self, segment: &SegmentInfo) -> io::Result<()> {
        if segment.index > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "it holds several cpio archives one after another (an initramfs): edit it with `xdkms initramfs inject`",
            ));
        }
        self.inner.segment_start(segment)
    }

    fn member(&mut self, segment: &SegmentInfo, header: &Header, data: &mut dyn BufRead) -> io::Result<()> {
        self.inner.member(segment, header, data)
    }
}

/// Every member by normalized path (the last one of a path wins, as the kernel unpacks them),
/// and the names of each hard-linked file.
#[derive(Default)]
struct Members {
    entries: HashMap<String, Entry>,
    links: HashMap<LinkKey, Vec<String>>,
}

impl Visitor for Members {
    fn member(&mut self, _: &SegmentInfo, header: &Header, data: &mut dyn BufRead) -> io::Result<()> {
        let Some(name) = normalize(&header.name) else { return Ok(()) };
        let entry = match header.file_type() {
            S_IFDIR => Entry::Dir,
            S_IFLNK => Entry::Symlink(String::from_utf8_lossy(&link_target(data)?).into_owned()),
            _ => Entry::Other,
        };
        if let Some(key) = link_key(header) {
            self.links.entry(key).or_default().push(name.clone());
        }
        self.entries.insert(name, entry);
        Ok(())
    }
}

fn link_target(data: &mut dyn BufRead) -> io::Result<Vec<u8>> {
    let mut target = Vec::new();
    data.take(u64::from(NAME_MAX)).read_to_end(&mut target)?;
    Ok(target)
}

/// Extracts the members `wanted` needs from the archive at `path` into `dir` (modes and file
/// mtimes kept, owners not; device nodes, fifos and sockets left out).
pub fn extract(path: &Path, wanted: Selection, dir: &Path) -> io::Result<()> {
    let mut members = Members::default();
    visit(path, &mut members)?;
    let keep = needed(&members.entries, wanted);
    let mut extractor = Extractor { keep: &keep, dir, links: &members.links, dirs: Vec::new() };
    visit(path, &mut extractor)?;
    // Modes last: a read-only directory is filled first.
    for (dir, mode) in extractor.dirs.into_iter().rev() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

struct Extractor<'a> {
    keep: &'a BTreeSet<String>,
    dir: &'a Path,
    links: &'a HashMap<LinkKey, Vec<String>>,
    dirs: Vec<(PathBuf, u32)>,
}

impl Extractor<'_> {
    /// The names a regular file's data is written to: its own when wanted, and for a
    /// hard-linked file's data (cpio puts it on the last name, the others empty) every wanted
    /// name of the file, this one wanted or not.
    fn targets(&self, name: &str, header: &Header) -> Vec<String> {
        let group = link_key(header).and_then(|key| self.links.get(&key));
        match group {
            Some(names) if header.file_size > 0 => names.iter().filter(|n| self.keep.contains(*n)).cloned().collect(),
            _ if self.keep.contains(name) => vec![name.to_string()],
            _ => Vec::new(),
        }
    }

    /// A regular file's data written to its `targets`, with its mode and mtime.
    fn file(&self, targets: &[String], header: &Header, data: &mut dyn BufRead) -> io::Result<()> {
        let Some(first) = targets.first().map(|t| self.dir.join(t)) else { return Ok(()) };
        initramfs::stream::copy_data(data, &mut File::create(&first)?)?;
        for other in &targets[1..] {
            std::fs::copy(&first, self.dir.join(other))?;
        }
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(header.mtime.into());
        for target in targets {
            let file = File::options().write(true).open(self.dir.join(target))?;
            file.set_permissions(std::fs::Permissions::from_mode(header.mode & 0o7777))?;
            file.set_modified(mtime)?;
        }
        Ok(())
    }
}

impl Visitor for Extractor<'_> {
    fn member(&mut self, _: &SegmentInfo, header: &Header, data: &mut dyn BufRead) -> io::Result<()> {
        let Some(name) = normalize(&header.name) else { return Ok(()) };
        if header.file_type() == S_IFREG {
            return self.file(&self.targets(&name, header), header, data);
        }
        if !self.keep.contains(&name) {
            return Ok(());
        }
        let to = self.dir.join(&name);
        match header.file_type() {
            S_IFDIR => {
                std::fs::create_dir_all(&to)?;
                self.dirs.push((to, header.mode & 0o7777));
            }
            S_IFLNK => {
                let target = link_target(data)?;
                // Extracted already (links followed from part to part meet): the image's wins.
                let _ = std::fs::remove_file(&to);
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &to)?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The archive at `path` written again beside `dest` (itself, or another file) through
/// `codec` with `changes` from `dir`, then renamed over `dest`: removed members dropped,
/// modified ones rewritten in their place, added ones appended.
pub fn rewrite(path: &Path, dest: &Path, codec: Codec, dir: &Path, changes: &[Change]) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
    cross::Sysroot::host()?.write_atomic_with(dest, Some(meta.permissions()), |file| {
        let encoder = Encoder::new(codec, BufWriter::new(file), cli_default_level(codec), meta.len())?;
        let mut rewriter = Rewriter { out: Writer::new(encoder), dir, changes, last_ino: 0, dot_prefix: None };
        visit(path, &mut rewriter)?;
        let Rewriter { mut out, last_ino, dot_prefix, .. } = rewriter;
        let mut ino = last_ino;
        for change in changes {
            if let Change::Added(name) = change {
                // An archive numbered up to u32::MAX gets that number again: a member of one
                // link is never linked to another.
                ino = ino.saturating_add(1);
                let shown = if dot_prefix == Some(true) { format!("./{name}") } else { name.clone() };
                let header = Header { name: shown.into_bytes(), ino, nlink: 1, ..Header::default() };
                write_from(&mut out, dir, name, header)?;
            }
        }
        out.finish()?.finish()?.flush()
    })
}

struct Rewriter<'a, W: Write> {
    out: Writer<W>,
    dir: &'a Path,
    changes: &'a [Change],
    /// The highest inode number met: new members are numbered after it.
    last_ino: u32,
    /// Whether the archive names its members `./...` (as `find . | cpio -o` does).
    dot_prefix: Option<bool>,
}

impl<W: Write> Visitor for Rewriter<'_, W> {
    fn member(&mut self, _: &SegmentInfo, header: &Header, data: &mut dyn BufRead) -> io::Result<()> {
        self.last_ino = self.last_ino.max(header.ino);
        let Some(name) = normalize(&header.name) else { return self.out.member_as_is(header, data) };
        self.dot_prefix.get_or_insert(header.name.starts_with(b"./"));
        let change = self.changes.binary_search_by(|c| super::change_path(c).cmp(name.as_str()));
        match change.map(|i| &self.changes[i]) {
            Ok(Change::Removed(_)) => Ok(()),
            // Its old header (name, owner, inode number) with the new type, mode, size and mtime;
            // a link of its own now.
            Ok(Change::Modified(_)) => {
                write_from(&mut self.out, self.dir, &name, Header { nlink: 1, ..header.clone() })
            }
            _ => self.out.member_as_is(header, data),
        }
    }
}

/// Writes the entry `name` of `dir` as a member with `header`'s name, owner and inode number,
/// and the entry's own type, mode, mtime (SOURCE_DATE_EPOCH when set) and data.
fn write_from<W: Write>(out: &mut Writer<W>, dir: &Path, name: &str, mut header: Header) -> io::Result<()> {
    let file = dir.join(name);
    let meta = std::fs::symlink_metadata(&file)?;
    let kind = meta.mode() & S_IFMT;
    header.mode = meta.mode() & (S_IFMT | 0o7777);
    header.mtime = u32::try_from(written_mtime(&meta)).unwrap_or(0);
    header.checksum = None;
    match kind {
        S_IFREG => {
            header.file_size = u32::try_from(meta.len())
                .map_err(|_| io::Error::other(format!("{name}: larger than the 4 GiB a cpio member can hold")))?;
            out.member_as_is(&header, &mut File::open(&file)?)
        }
        S_IFLNK => {
            let target = std::fs::read_link(&file)?.into_os_string().into_vec();
            header.file_size = target.len() as u32;
            out.member_as_is(&header, &mut target.as_slice())
        }
        S_IFDIR => {
            header.file_size = 0;
            header.nlink = header.nlink.max(2);
            out.member_as_is(&header, &mut io::empty())
        }
        _ => Err(io::Error::other(format!("{name} is a kind of entry xdkms does not write into cpio images"))),
    }
}
