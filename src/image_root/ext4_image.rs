//! ext2/3/4 images: the entries a command needs read out through libext2fs, and the command's
//! changes carried out through it (files rewritten in their inodes, new ones allocated, removed
//! ones freed): in the image itself, committed through its journal (ext4_in_place.rs), or in a
//! copy that then replaces it when that cannot be done.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::ext2fs::{Access, Attr, Filesystem, ROOT, TYPE_DIR, TYPE_FILE, TYPE_MASK, TYPE_SYMLINK};
use super::{resolve, written_mtime, Change, Entry, Selection};
use crate::depmod::outside::OutsideFile;

/// Where an ext2/3/4 superblock's magic number sits in the filesystem, and its value.
const MAGIC_OFFSET: usize = 1024 + 56;
const MAGIC: [u8; 2] = [0x53, 0xef];

/// True when `head` (the first 2 KiB of a filesystem, at least) starts an ext2/3/4 filesystem.
pub fn is_ext4(head: &[u8]) -> bool {
    head.get(MAGIC_OFFSET..MAGIC_OFFSET + 2) == Some(&MAGIC[..])
}

/// True when an ext2/3/4 superblock starts `offset` bytes into the file at `path`.
pub fn is_ext4_at(path: &Path, offset: u64) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 2];
    match File::open(path)?.read_exact_at(&mut magic, offset + MAGIC_OFFSET as u64) {
        Ok(()) => Ok(magic == MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// True when the filesystem `offset` bytes into `path` has lib/modules or usr/lib/modules
/// (symlinks followed inside it): a root, not a /boot or data partition.
pub fn holds_modules(path: &Path, offset: u64) -> bool {
    let Ok(fs) = Filesystem::open(path, offset, Access::Read) else { return false };
    ["lib/modules", "usr/lib/modules"].iter().any(|dir| {
        let mut keep = BTreeSet::new();
        resolve(&mut |p| entry(&fs, p), dir, &mut keep).is_some_and(|place| entry(&fs, &place) == Some(Entry::Dir))
    })
}

/// Names a kernel's files have at the top of a separate /boot filesystem.
const KERNEL_FILES: [&str; 7] =
    ["vmlinuz-", "vmlinux-", "initrd.img-", "initramfs-", "System.map-", "config-", "Image"];

/// True when the filesystem `offset` bytes into `path` holds a kernel's files at its top (a
/// /boot partition).
pub fn holds_kernel(path: &Path, offset: u64) -> bool {
    let Ok(fs) = Filesystem::open(path, offset, Access::Read) else { return false };
    let Ok(names) = fs.list(ROOT) else { return false };
    names.iter().any(|(name, _)| KERNEL_FILES.iter().any(|start| name.starts_with(start.as_bytes())))
}

/// True when the filesystem `offset` bytes into `path` has no /boot, or an empty one (a
/// separate /boot partition is mounted there).
pub fn boot_is_empty(path: &Path, offset: u64) -> bool {
    let Ok(fs) = Filesystem::open(path, offset, Access::Read) else { return false };
    match fs.lookup_path("boot") {
        Ok(None) => true,
        Ok(Some(ino)) => fs.list(ino).is_ok_and(|names| names.iter().all(|(name, _)| name == b"lost+found")),
        Err(_) => false,
    }
}

/// The filesystem `offset` bytes into `image`, refused when it spans more than its `len`
/// bytes (a partition cut short).
pub(super) fn open_in(image: &Path, offset: u64, len: u64, access: Access) -> io::Result<Filesystem> {
    let fs = Filesystem::open(image, offset, access)?;
    if fs.size() > len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("its ext2/3/4 filesystem spans {} bytes, more than the {len} of its partition", fs.size()),
        ));
    }
    Ok(fs)
}

/// What kind of entry root-relative `path` is (symlinks not followed), for [`resolve`].
fn entry(fs: &Filesystem, path: &str) -> Option<Entry> {
    let ino = fs.lookup_path(path).ok()??;
    let attr = fs.stat(ino).ok()?;
    Some(match attr.mode & TYPE_MASK {
        TYPE_DIR => Entry::Dir,
        TYPE_SYMLINK => Entry::Symlink(String::from_utf8_lossy(&fs.readlink(ino).ok()?).into_owned()),
        _ => Entry::Other,
    })
}

/// Extracts what `wanted` needs from the filesystem `offset` bytes into `image` into `dir`; the
/// files it leaves out, with their inodes.
pub fn extract(
    image: &Path,
    offset: u64,
    len: u64,
    wanted: Selection,
    dir: &Path,
) -> io::Result<Vec<(OutsideFile, u32)>> {
    // A journal left holding committed changes (a killed run, a crash) is replayed first.
    super::ext4_in_place::replay_journal(image, offset)?;
    let fs = open_in(image, offset, len, Access::Read)?;
    let mut keep = BTreeSet::new();
    let mut places = Vec::new();
    for path in wanted.paths {
        if let Some(place) = resolve(&mut |p| entry(&fs, p), path, &mut keep) {
            places.push(place);
        }
    }
    // Parents sort before their entries: the directories and symlinks on the way first.
    for path in &keep {
        match entry(&fs, path) {
            Some(Entry::Dir) => std::fs::create_dir_all(dir.join(path))?,
            Some(Entry::Symlink(target)) => {
                let _ = std::fs::remove_file(dir.join(path));
                std::os::unix::fs::symlink(target, dir.join(path))?
            }
            _ => {}
        }
    }
    let mut copied = HashSet::new();
    let mut out = Out {
        fs: &fs,
        copied: &mut copied,
        leave_out: wanted.leave_out,
        left: Vec::new(),
        files: Vec::new(),
        dirs: Vec::new(),
    };
    // Errors name the path in the image, not in the scratch directory.
    let scratch = format!("{}/", dir.display());
    let in_image = |e: io::Error| io::Error::new(e.kind(), e.to_string().replace(&scratch, ""));
    for place in &places {
        // The filesystem's root itself: all of it.
        let found = if place.is_empty() { Some(ROOT) } else { fs.lookup_path(place)? };
        if let Some(ino) = found {
            out.visit(ino, &dir.join(place), place, &|path: &str| wanted.keeps(place, path)).map_err(in_image)?;
        }
    }
    let Out { mut files, dirs, left, .. } = out;
    drop(fs);
    // A file two wanted paths reach is copied once (two threads must not write one file).
    files.sort_by(|a, b| a.1.cmp(&b.1));
    files.dedup_by(|a, b| a.1 == b.1);
    copy_files(image, offset, len, &files).map_err(in_image)?;
    // Modes last: a read-only directory is filled first.
    for (to, mode) in dirs {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(left)
}

/// A regular file to copy out of the filesystem: its inode, where it goes, its mode and mtime.
type FileOut = (u32, PathBuf, u32, i64);

/// Walks what is extracted, making its directories and symlinks; its files are listed to be
/// copied afterwards ([`copy_files`]).
struct Out<'a> {
    fs: &'a Filesystem,
    /// The directories visited so far: a directory reached twice (a damaged filesystem) is not
    /// visited again.
    copied: &'a mut HashSet<u32>,
    /// Which regular files are listed in `left` instead of copied.
    leave_out: Option<&'a (dyn Fn(&str) -> bool + Sync)>,
    left: Vec<(OutsideFile, u32)>,
    files: Vec<FileOut>,
    /// The directories made, with their modes, each after what it holds.
    dirs: Vec<(PathBuf, u32)>,
}

impl Out<'_> {
    /// Visits inode `ino` (root-relative path `rel`, going to `to`) and, for a directory, what
    /// `keeps` keeps below it; special files are left out (no command reads them).
    fn visit(&mut self, ino: u32, to: &Path, rel: &str, keeps: &dyn Fn(&str) -> bool) -> io::Result<()> {
        let fs = self.fs;
        let attr = fs.stat(ino)?;
        let mode = attr.mode & 0o7777;
        match attr.mode & TYPE_MASK {
            TYPE_DIR => {}
            TYPE_FILE => {
                match self.leave_out {
                    Some(leave_out) if leave_out(rel) => {
                        let file = OutsideFile { path: rel.to_string(), size: attr.size };
                        self.left.push((file, ino));
                    }
                    _ => self.files.push((ino, to.to_path_buf(), mode, attr.mtime)),
                }
                return Ok(());
            }
            TYPE_SYMLINK => {
                let target = fs.readlink(ino)?;
                // Extracted already (links followed from part to part meet): the image's wins.
                let _ = std::fs::remove_file(to);
                return std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), to);
            }
            _ => return Ok(()),
        }
        if !self.copied.insert(ino) {
            return Ok(());
        }
        std::fs::create_dir_all(to)?;
        for (name, child) in fs.list(ino)? {
            if name.contains(&b'/') || name == b"." || name == b".." {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("directory {} holds an entry named {:?}", to.display(), String::from_utf8_lossy(&name)),
                ));
            }
            let shown_name = String::from_utf8_lossy(&name);
            let child_rel = if rel.is_empty() { shown_name.into_owned() } else { format!("{rel}/{shown_name}") };
            if keeps(&child_rel) {
                self.visit(child, &to.join(std::ffi::OsStr::from_bytes(&name)), &child_rel, keeps)?;
            }
        }
        self.dirs.push((to.to_path_buf(), mode));
        Ok(())
    }
}

/// Copies `files` out of the filesystem `offset` bytes into `image`, on every core: each
/// thread with its own handle (libext2fs shares nothing between handles), the files dealt out
/// in turn. Writing a module tree into tmpfs is the kernel's page work, which spreads.
fn copy_files(image: &Path, offset: u64, len: u64, files: &[FileOut]) -> io::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len().div_ceil(64)).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|first| {
                scope.spawn(move || {
                    let fs = open_in(image, offset, len, Access::Read)?;
                    files.iter().skip(first).step_by(threads).try_for_each(|file| copy_file(&fs, file))
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|worker| worker.join().unwrap_or_else(|_| Err(io::Error::other("a copying thread panicked"))))
    })
}

/// Copies one regular file out of `fs`.
fn copy_file(fs: &Filesystem, (ino, to, mode, mtime): &FileOut) -> io::Result<()> {
    let file = File::create(to)?;
    fs.read_into(*ino, &file).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", to.display())))?;
    file.set_permissions(std::fs::Permissions::from_mode(*mode))?;
    file.set_modified(mtime_of(*mtime))
}

fn mtime_of(seconds: i64) -> std::time::SystemTime {
    let magnitude = std::time::Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        std::time::UNIX_EPOCH + magnitude
    } else {
        std::time::UNIX_EPOCH - magnitude
    }
}

/// Changes to carry out in one filesystem of an image.
#[derive(Debug)]
pub struct Edit {
    /// Where the filesystem lies in the image file, and how long its partition is.
    pub offset: u64,
    pub len: u64,
    /// The scratch directory holding the filesystem's tree, and what changed in it.
    pub dir: std::path::PathBuf,
    pub changes: Vec<Change>,
}

/// Carries out `edits` (one per filesystem of the image: the root, a separate /boot) in a copy
/// of `image` beside `dest` (the image itself, or another file), renamed over `dest`.
pub fn rewrite(image: &Path, dest: &Path, edits: &[Edit]) -> io::Result<()> {
    let edits: Vec<&Edit> = edits.iter().filter(|e| !e.changes.is_empty()).collect();
    // Refused before anything is copied: a journal to replay, errors recorded.
    for edit in &edits {
        drop(open_in(image, edit.offset, edit.len, Access::CheckWritable)?);
    }
    // One filesystem edited in the image itself: committed through its journal when it has one
    // xdkms can write (two, a root and a /boot, could not be committed as one).
    if let ([edit], true) = (&edits[..], same_file(image, dest)) {
        let apply = |fs: &Filesystem| apply(fs, &edit.dir, &edit.changes);
        if super::ext4_in_place::edit(image, edit.offset, edit.len, apply)? {
            return Ok(());
        }
    }
    let meta = std::fs::metadata(image)?;
    // The error of the edit itself, told as it is (not under the copy's path).
    let mut failed = None;
    let written = cross::Sysroot::host()?.write_atomic_with(dest, Some(meta.permissions()), |copy| {
        copy_sparse(&mut File::open(image)?, copy, meta.len())?;
        // libext2fs opens by name: the copy's descriptor, by its /proc name.
        let name = format!("/proc/self/fd/{}", copy.as_raw_fd());
        // Through the journal as in place when it can be (the same bytes as an edit in place),
        // straight into the copy when it cannot.
        let edited = edits.iter().try_for_each(|edit| {
            let on_copy = |fs: &Filesystem| apply(fs, &edit.dir, &edit.changes);
            if super::ext4_in_place::edit(Path::new(&name), edit.offset, edit.len, on_copy)? {
                return Ok(());
            }
            open_in(Path::new(&name), edit.offset, edit.len, Access::Write)
                .and_then(|fs| apply(&fs, &edit.dir, &edit.changes).and_then(|()| fs.close()))
        });
        match edited {
            Ok(()) => copy.sync_all(),
            Err(e) => {
                let kind = e.kind();
                failed = Some(e);
                Err(io::Error::from(kind))
            }
        }
    });
    match (written, failed) {
        (Err(_), Some(e)) => Err(e),
        (written, _) => written,
    }
}

/// True when `a` and `b` name the same file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Copies `len` bytes of `from` into `to`, holes kept as holes (an image is mostly free space).
pub fn copy_sparse(from: &mut File, to: &mut File, len: u64) -> io::Result<()> {
    to.set_len(len)?;
    let mut at = 0u64;
    while at < len {
        let data = match rustix::fs::seek(&*from, rustix::fs::SeekFrom::Data(at)) {
            Ok(data) => data,
            // No data past `at`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= len {
            break;
        }
        let hole = rustix::fs::seek(&*from, rustix::fs::SeekFrom::Hole(data))?.min(len);
        copy_range(from, to, data, hole)?;
        at = hole;
    }
    from.seek(SeekFrom::Start(0))?;
    Ok(())
}

/// Copies bytes `start..end` of `from` to the same place in `to`: in the kernel where it can
/// (copy_file_range), by reads and writes where it cannot (another filesystem, an old kernel).
fn copy_range(from: &File, to: &File, start: u64, end: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut offset = start;
    let mut by_hand = false;
    let mut buf = Vec::new();
    while offset < end {
        let chunk = usize::try_from(end - offset).unwrap_or(usize::MAX).min(1 << 30);
        let copied = if by_hand {
            buf.resize(chunk.min(1 << 20), 0);
            let got = from.read_at(&mut buf, offset)?;
            to.write_all_at(&buf[..got], offset)?;
            got
        } else {
            let (mut src, mut dst) = (offset, offset);
            match rustix::fs::copy_file_range(from, Some(&mut src), to, Some(&mut dst), chunk) {
                Ok(copied) => copied,
                Err(
                    rustix::io::Errno::XDEV
                    | rustix::io::Errno::NOSYS
                    | rustix::io::Errno::OPNOTSUPP
                    | rustix::io::Errno::INVAL,
                ) => {
                    by_hand = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        };
        if copied == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the image shrank while being copied"));
        }
        offset += copied as u64;
    }
    Ok(())
}

/// Carries `changes` out in the filesystem: removals deepest first, then additions and
/// modifications, parents before their entries.
fn apply(fs: &Filesystem, dir: &Path, changes: &[Change]) -> io::Result<()> {
    let mut removed: Vec<&str> =
        changes.iter().filter_map(|c| if let Change::Removed(p) = c { Some(p.as_str()) } else { None }).collect();
    removed.sort_by(|a, b| b.cmp(a));
    for path in removed {
        remove(fs, path)?;
    }
    for change in changes {
        match change {
            Change::Added(path) => add(fs, dir, path)?,
            Change::Modified(path) => modify(fs, dir, path)?,
            Change::Removed(_) => {}
        }
    }
    Ok(())
}

/// The parent directory's inode and the last component of `path`.
fn parent_of<'a>(fs: &Filesystem, path: &'a str) -> io::Result<(u32, &'a str)> {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let ino = fs
        .lookup_path(parent)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{parent}: no such directory in the image")))?;
    Ok((ino, name))
}

fn remove(fs: &Filesystem, path: &str) -> io::Result<()> {
    let (parent, name) = parent_of(fs, path)?;
    fs.remove(parent, name.as_bytes()).map_err(|e| in_path(e, path))
}

/// `error` with the image path it happened at.
fn in_path(error: io::Error, path: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{path}: {error}"))
}

/// The attributes a new entry gets: the scratch copy's mode and mtime (SOURCE_DATE_EPOCH when
/// set), owned by root.
fn new_attr(meta: &std::fs::Metadata) -> Attr {
    Attr { mode: meta.mode() & 0o7777, mtime: written_mtime(meta), ..Attr::default() }
}

fn add(fs: &Filesystem, dir: &Path, path: &str) -> io::Result<()> {
    let source = dir.join(path);
    let meta = std::fs::symlink_metadata(&source)?;
    let (parent, name) = parent_of(fs, path)?;
    let (name, attr, kind) = (name.as_bytes(), new_attr(&meta), meta.file_type());
    let added = if kind.is_dir() {
        fs.mkdir(parent, name, &attr).map(drop)
    } else if kind.is_symlink() {
        fs.symlink(parent, name, std::fs::read_link(&source)?.as_os_str().as_bytes(), &attr)
    } else if kind.is_file() {
        fs.create(parent, name, &attr).and_then(|ino| {
            fs.write_from(ino, &File::open(&source)?)?;
            fs.touch(ino, attr.mode, attr.mtime)
        })
    } else {
        let what = if kind.is_block_device() || kind.is_char_device() { "a device node" } else { "a special file" };
        Err(io::Error::new(io::ErrorKind::Unsupported, format!("adding {what} to an image is not supported")))
    };
    added.map_err(|e| in_path(e, path))
}

/// A changed entry: a file's content, mode and mtime go into its inode (owner, extended
/// attributes and hard links stay); anything whose type changed is removed and added again.
fn modify(fs: &Filesystem, dir: &Path, path: &str) -> io::Result<()> {
    let source = dir.join(path);
    let meta = std::fs::symlink_metadata(&source)?;
    let ino = fs
        .lookup_path(path)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{path}: no longer in the image")))?;
    let before = fs.stat(ino)?;
    if meta.file_type().is_file() && before.mode & TYPE_MASK == TYPE_FILE {
        return fs
            .write_from(ino, &File::open(&source)?)
            .and_then(|()| fs.touch(ino, meta.mode(), written_mtime(&meta)))
            .map_err(|e| in_path(e, path));
    }
    remove(fs, path)?;
    add(fs, dir, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    /// Extracted file data equals what debugfs reads from the image, whatever maps it: extents
    /// with holes (a sparse file), several blocks, an empty file, inline data (ext4's
    /// `inline_data`), ext2's block maps.
    #[test]
    fn extracted_files_equal_what_debugfs_reads() {
        let work = tempfile::tempdir().expect("tempdir");
        let tree = work.path().join("tree");
        std::fs::create_dir_all(tree.join("data")).expect("mkdir");
        let sparse = File::create(tree.join("data/sparse")).expect("create");
        sparse.write_all_at(b"head", 0).expect("write");
        sparse.write_all_at(b"middle", 5 << 20).expect("write");
        sparse.set_len(12 << 20).expect("truncate");
        std::fs::write(tree.join("data/small"), b"tiny\n").expect("write");
        std::fs::write(tree.join("data/empty"), b"").expect("write");
        let blocks: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        std::fs::write(tree.join("data/blocks"), &blocks).expect("write");
        for (kind, options) in
            [("ext4", &["-t", "ext4"][..]), ("inline", &["-t", "ext4", "-O", "inline_data"]), ("ext2", &["-t", "ext2"])]
        {
            let image = work.path().join(format!("{kind}.img"));
            let made = Command::new("mke2fs")
                .arg("-q")
                .arg("-F")
                .args(options)
                .arg("-d")
                .arg(&tree)
                .arg(&image)
                .arg("64M")
                .status();
            assert!(made.expect("mke2fs (tests/setup.sh installs e2fsprogs)").success(), "mke2fs {kind}");
            let out = work.path().join(kind);
            let len = std::fs::metadata(&image).expect("image").len();
            let paths = ["data".to_string()];
            extract(&image, 0, len, Selection::of(&paths), &out).expect("extract");
            for name in ["sparse", "small", "empty", "blocks"] {
                // e2fsprogs' own reading of the image is the reference: mke2fs 1.47.0 with
                // inline_data stores the sparse file cut after its last data block.
                let dumped = work.path().join(format!("{kind}-{name}"));
                let request = format!("dump /data/{name} {}", dumped.display());
                let ran = Command::new("debugfs").arg("-R").arg(&request).arg(&image).output().expect("debugfs");
                assert!(ran.status.success(), "debugfs {kind} {name}");
                let want = std::fs::read(&dumped).expect("read debugfs's dump");
                let got = std::fs::read(out.join("data").join(name)).expect("read extracted");
                assert!(got == want, "{kind}: data/{name} differs ({} bytes, {} wanted)", got.len(), want.len());
            }
            let stored = std::fs::read(out.join("data/blocks")).expect("read extracted");
            assert!(stored == blocks, "{kind}: data/blocks is not what the tree held");
        }
    }
}
