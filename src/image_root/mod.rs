//! Image files as roots: a command that works on a root directory gets a scratch directory
//! holding the parts of the image it needs, and what it changed there is written back into the
//! image, which is replaced in one rename.
//!
//! The scratch directory is a plain directory, so every command reaches it through the same root
//! handle (`cross::Sysroot`) as a root directory: confinement, symlinks resolved inside the root,
//! writes beside their target. The image format only decides how the wanted parts are read out
//! and how the changes go back in. Formats: tar (plain, gzip, xz, zstd, bzip2), ext2/3/4.

mod ext2fs;
mod ext4_image;
mod tar_image;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use initramfs::Codec;

/// What went wrong with an image, naming it.
#[derive(Debug)]
pub struct ImageError {
    pub image: PathBuf,
    pub message: String,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.image.display(), self.message)
    }
}

impl std::error::Error for ImageError {}

pub type Result<T> = std::result::Result<T, ImageError>;

/// The kinds of image xdkms opens as roots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// A tar archive, compressed with `codec`.
    Tar { codec: Codec },
    /// An ext2/3/4 filesystem starting `offset` bytes into the file.
    Ext4 { offset: u64 },
}

/// An image file that is to serve as a root.
#[derive(Debug)]
pub struct ImageRoot {
    path: PathBuf,
    format: Format,
}

impl ImageRoot {
    /// The image at `path`, or None when `path` is a directory (an ordinary root) or nothing
    /// (the command reports a missing root as it always has).
    pub fn open(path: &Path) -> Result<Option<ImageRoot>> {
        let error = |message: String| ImageError { image: path.to_path_buf(), message };
        let Ok(meta) = std::fs::metadata(path) else { return Ok(None) };
        if meta.is_dir() {
            return Ok(None);
        }
        if !meta.is_file() {
            return Err(error("not a directory or an image file".into()));
        }
        let format = detect(path).map_err(|e| error(format!("cannot read it: {e}")))?.ok_or_else(|| {
            error(
                "not a root directory or an image xdkms can open (ext2/3/4; tar, plain or gzip, xz, zstd, bzip2 compressed)"
                    .into(),
            )
        })?;
        Ok(Some(ImageRoot { path: crate::fsio::absolute(path.to_path_buf()), format }))
    }

    /// A scratch directory holding `wanted` (root-relative paths: each one's entries, the
    /// directories and symlinks leading to it, resolved inside the image) and nothing else.
    pub fn materialize(self, wanted: &[String]) -> Result<View> {
        let dir = crate::fsio::scratch_dir(&scratch_parent(), "xdkms-image-")
            .map_err(|e| self.error(format!("cannot make a scratch directory: {e}")))?;
        let extracted = match self.format {
            Format::Tar { codec } => tar_image::extract(&self.path, codec, wanted, dir.path()),
            Format::Ext4 { offset } => ext4_image::extract(&self.path, offset, wanted, dir.path()),
        };
        extracted.map_err(|e| self.error(e.to_string()))?;
        // Everything there now, directories the archive only implies included, is the image's.
        let baseline = walk(dir.path())
            .map_err(|e| self.error(format!("reading its extracted parts: {e}")))?
            .into_keys()
            .filter_map(|path| stamp(dir.path(), &path).map(|s| (path, s)))
            .collect();
        Ok(View { image: self, dir, baseline })
    }

    fn error(&self, message: String) -> ImageError {
        ImageError { image: self.path.clone(), message }
    }
}

/// Free space /dev/shm must have to hold scratch roots (a container's is often 64 MiB).
const SHM_ENOUGH: u64 = 2 << 30;

/// Where scratch roots go: TMPDIR when set; else /dev/shm when it is a writable tmpfs with room
/// (creating thousands of files there is several times faster than on a disk's /tmp, and the
/// files live only as long as the command); else /tmp.
fn scratch_parent() -> PathBuf {
    if std::env::var_os("TMPDIR").is_some() {
        return std::env::temp_dir();
    }
    let shm = Path::new("/dev/shm");
    let roomy = rustix::fs::statvfs(shm).is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) >= SHM_ENOUGH);
    if roomy && rustix::fs::access(shm, rustix::fs::Access::WRITE_OK).is_ok() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// The format of the file at `path`: a codec's magic, then what the decoded start holds.
fn detect(path: &Path) -> io::Result<Option<Format>> {
    let mut head = [0u8; 2048];
    let got = read_up_to(&mut std::fs::File::open(path)?, &mut head)?;
    if ext4_image::is_ext4(&head[..got]) {
        return Ok(Some(Format::Ext4 { offset: 0 }));
    }
    let codec = Codec::detect(&head[..got]).unwrap_or(Codec::None);
    let mut input = initramfs::stream::Input::new(std::fs::File::open(path)?);
    let mut decoded = initramfs::stream::decoder(codec, &mut input)?;
    let mut block = [0u8; 512];
    let got = read_up_to(&mut decoded, &mut block)?;
    Ok(tar_image::is_tar_header(&block[..got]).then_some(Format::Tar { codec }))
}

/// Reads until `buf` is full or the input ends; how much was read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// What tells a file the command replaced or changed from one it left alone: writes go beside
/// the target and are renamed over it, so a new inode, and anything else changes size or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    mode: u32,
}

fn stamp(dir: &Path, path: &str) -> Option<Stamp> {
    let meta = std::fs::symlink_metadata(dir.join(path)).ok()?;
    Some(Stamp {
        ino: meta.ino(),
        size: meta.size(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        mode: meta.mode(),
    })
}

/// A change a command made in the scratch directory, by root-relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A file, directory or symlink that was not in the image.
    Added(String),
    /// An entry of the image whose content or metadata changed.
    Modified(String),
    /// An entry of the image that is gone.
    Removed(String),
}

/// The parts of an image a command works on.
#[derive(Debug)]
pub struct View {
    image: ImageRoot,
    /// Removed when the view goes.
    dir: tempfile::TempDir,
    /// Each extracted entry as it was right after extraction (directories included).
    baseline: BTreeMap<String, Stamp>,
}

impl View {
    /// The scratch directory: the root the command works on.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The image this view was taken from.
    pub fn image(&self) -> &Path {
        &self.image.path
    }

    /// What the command changed, sorted by path.
    fn changes(&self) -> io::Result<Vec<Change>> {
        let now = walk(self.dir.path())?;
        let mut changes = Vec::new();
        for (path, is_dir) in &now {
            match self.baseline.get(path) {
                None => changes.push(Change::Added(path.clone())),
                // A directory's own stamp changes with its entries: those are reported.
                Some(before) if !is_dir && Some(*before) != stamp(self.dir.path(), path) => {
                    changes.push(Change::Modified(path.clone()))
                }
                Some(_) => {}
            }
        }
        changes.extend(self.baseline.keys().filter(|p| !now.contains_key(*p)).map(|p| Change::Removed(p.clone())));
        changes.sort_by(|a, b| change_path(a).cmp(change_path(b)));
        Ok(changes)
    }

    /// Writes what the command changed back into the image (a new image beside it, renamed
    /// over it); nothing when it changed nothing. The scratch directory goes either way.
    pub fn commit(self) -> Result<usize> {
        let changes = self.changes().map_err(|e| self.image.error(format!("reading the changes back: {e}")))?;
        if changes.is_empty() {
            return Ok(0);
        }
        // Replacing the file by rename would succeed; its read-only mode says not to.
        let mode = std::fs::metadata(&self.image.path).map(|m| m.mode()).unwrap_or(0);
        if mode & 0o222 == 0 {
            return Err(self.image.error(format!(
                "the image is read-only (mode {:o}): make it writable, or work on a copy",
                mode & 0o7777
            )));
        }
        let written = match self.image.format {
            Format::Tar { codec } => tar_image::rewrite(&self.image.path, codec, self.dir.path(), &changes),
            Format::Ext4 { offset } => ext4_image::rewrite(&self.image.path, offset, self.dir.path(), &changes),
        };
        written.map_err(|e| self.image.error(format!("writing the changes into it: {e}")))?;
        Ok(changes.len())
    }
}

/// Every entry under `dir` by root-relative path, with whether it is a directory.
fn walk(dir: &Path) -> io::Result<BTreeMap<String, bool>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        for entry in std::fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let is_dir = entry.file_type()?.is_dir();
            if is_dir {
                pending.push(path.clone());
            }
            found.insert(path, is_dir);
        }
    }
    Ok(found)
}

fn change_path(change: &Change) -> &str {
    match change {
        Change::Added(p) | Change::Modified(p) | Change::Removed(p) => p,
    }
}

/// A path of the image, normalized: no leading `./` or `/`, no trailing `/`, no `.` components;
/// None for the root itself or a path with `..`.
pub fn normalize(path: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(path);
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// What a path of an image is, as far as finding the wanted parts goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    /// A symlink, with its target as stored.
    Symlink(String),
    Other,
}

/// Symlinks followed while resolving one path, at most (the kernel's limit).
const MAX_LINK_HOPS: usize = 40;

/// Where `path` really is in an image whose entries `entry` tells, following its symlinks as
/// the kernel would inside the root; the symlinks and directories on the way are added to
/// `keep`. None when the symlinks loop.
fn resolve(entry: &mut dyn FnMut(&str) -> Option<Entry>, path: &str, keep: &mut BTreeSet<String>) -> Option<String> {
    let mut todo: VecDeque<String> = path.split('/').map(String::from).collect();
    let mut at: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                at.pop();
                continue;
            }
            _ => {}
        }
        at.push(part);
        let here = at.join("/");
        match entry(&here) {
            Some(Entry::Symlink(target)) => {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return None;
                }
                keep.insert(here);
                at.pop();
                if target.starts_with('/') {
                    at.clear();
                }
                for (i, component) in target.split('/').enumerate() {
                    todo.insert(i, component.to_string());
                }
            }
            Some(Entry::Dir) => {
                keep.insert(here);
            }
            Some(Entry::Other) | None => {}
        }
    }
    Some(at.join("/"))
}

/// The mtime a file written into an image gets: SOURCE_DATE_EPOCH when set, else its own.
fn written_mtime(meta: &std::fs::Metadata) -> i64 {
    crate::dkms::date::source_date_epoch().unwrap_or_else(|| meta.mtime())
}
