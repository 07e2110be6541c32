//! Image files as roots: a command that works on a root directory gets a scratch directory
//! holding the parts of the image it needs, and what it changed there is written back into the
//! image, which is replaced in one rename.
//!
//! The scratch directory is a plain directory, so every command reaches it through the same root
//! handle (`cross::Sysroot`) as a root directory: confinement, symlinks resolved inside the root,
//! writes beside their target. The image format only decides how the wanted parts are read out
//! and how the changes go back in. Formats: tar (plain, gzip, xz, zstd, bzip2), cpio (any
//! initramfs codec), ext2/3/4, squashfs, erofs.

mod cpio_image;
mod disk;
mod erofs_compressed;
mod erofs_image;
mod ext2fs;
mod ext4_image;
mod ext4_in_place;
mod jbd2;
mod left_out;
mod squashfs_codec;
mod squashfs_image;
mod tar_image;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use initramfs::Codec;

use crate::depmod::outside::{OutsideFile, OutsideFiles};
pub use left_out::LeftOut;

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
    /// An ext2/3/4 filesystem `len` bytes long, starting `offset` bytes into the file (a
    /// partition's, or 0 and the whole file).
    /// `boot`: where a separate /boot filesystem lies (offset, length), for a disk whose root
    /// has an empty /boot.
    Ext4 { offset: u64, len: u64, boot: Option<(u64, u64)> },
    /// A squashfs 4.0 image.
    Squashfs,
    /// An erofs image.
    Erofs,
    /// One newc (or crc) cpio archive, compressed with `codec`.
    Cpio { codec: Codec },
}

/// An image file that is to serve as a root.
#[derive(Debug)]
pub struct ImageRoot {
    /// The file.
    path: PathBuf,
    /// The image as named, absolute: the file, or `FILE:N` for its partition N.
    shown: PathBuf,
    format: Format,
    /// Held while the image serves as a root, so that a second run on it waits for the first
    /// one's image instead of editing the old one beside it (the last rename would win).
    _lock: std::fs::File,
}

/// crc32c as the kernel computes it for erofs, ext4 and their journal: seeded with ~0 and not
/// inverted at the end, over `parts` one after another.
fn kernel_crc32c(parts: &[&[u8]]) -> u32 {
    const ALGORITHM: crc::Algorithm<u32> = crc::Algorithm { xorout: 0, ..crc::CRC_32_ISCSI };
    let crc = crc::Crc::<u32>::new(&ALGORITHM);
    let mut digest = crc.digest();
    for part in parts {
        digest.update(part);
    }
    digest.finalize()
}

/// What every "not an image" message lists.
const KINDS: &str =
    "ext2/3/4, alone or in a GPT or MBR partition; squashfs; erofs; tar, plain or gzip, xz, zstd, bzip2 compressed; cpio (newc), plain or compressed";

impl ImageRoot {
    /// The image at `path`, or None when `path` is a directory (an ordinary root) or nothing
    /// (the command reports a missing root as it always has). `DISK:N` names partition N of a
    /// disk image; a disk named alone is searched for the one partition holding lib/modules.
    pub fn open(path: &Path) -> Result<Option<ImageRoot>> {
        let (file, partition) = match std::fs::metadata(path) {
            Ok(_) => (path.to_path_buf(), None),
            Err(_) => match split_partition(path) {
                Some((file, number)) => (file, Some(number)),
                None => return Ok(None),
            },
        };
        let error = |message: String| ImageError { image: path.to_path_buf(), message };
        let Ok(meta) = std::fs::metadata(&file) else { return Ok(None) };
        if meta.is_dir() && partition.is_none() {
            return Ok(None);
        }
        if !meta.is_file() {
            return Err(error("not a directory or an image file".into()));
        }
        let format = match partition {
            Some(number) => partition_format(&file, number).map_err(error)?,
            None => detect(&file).map_err(error)?,
        };
        let absolute = |p: &Path| crate::fsio::absolute(p.to_path_buf());
        let lock = lock_image(&file, path).map_err(|e| error(format!("cannot lock it: {e}")))?;
        Ok(Some(ImageRoot { path: absolute(&file), shown: absolute(path), format, _lock: lock }))
    }

    /// A scratch directory holding `wanted` (root-relative paths: each one's entries, the
    /// directories and symlinks leading to it, resolved inside the image) and nothing else;
    /// with [`Links::Follow`], also what the symlinks in those parts point at elsewhere in the
    /// image (a kernel's headers link their build scripts from another directory).
    pub fn materialize(self, wanted: &[String], links: Links) -> Result<View> {
        let mut extraction = self.start_view()?;
        extraction.add(Selection::of(wanted), links)?;
        extraction.finish()
    }

    /// An empty scratch directory to extract parts of the image into, in one or more steps
    /// ([`Extraction::add`]), before the command runs on it ([`Extraction::finish`]).
    pub fn start_view(self) -> Result<Extraction> {
        let step = crate::progress::step(format!("extracting from {}", self.shown.display()));
        let dir = crate::fsio::Scratch::new(&scratch_parent(), "xdkms-image-")
            .map_err(|e| self.error(format!("cannot make a scratch directory: {e}")))?;
        Ok(Extraction {
            image: self,
            dir,
            requested: Vec::new(),
            left_out: Vec::new(),
            except: Vec::new(),
            _step: step,
        })
    }

    /// Extracts `wanted` into `dir` (added to what is there). The files `wanted` leaves out
    /// (an ext2/3/4 root's only: the other formats extract them), with their inodes.
    fn extract(&self, wanted: Selection, dir: &Path) -> io::Result<Vec<(OutsideFile, u32)>> {
        match self.format {
            Format::Tar { codec } => tar_image::extract(&self.path, codec, wanted, dir).map(|()| Vec::new()),
            Format::Ext4 { offset, len, boot } => {
                let left_out = ext4_image::extract(&self.path, offset, len, wanted, dir)?;
                if let Some((offset, len)) = boot {
                    let (paths, except) = (on_boot(wanted.paths), on_boot(wanted.except));
                    let wanted = Selection { except: &except, ..Selection::of(&paths) };
                    ext4_image::extract(&self.path, offset, len, wanted, &dir.join("boot"))?;
                }
                Ok(left_out)
            }
            Format::Squashfs => squashfs_image::extract(&self.path, wanted, dir).map(|()| Vec::new()),
            Format::Erofs => erofs_image::extract(&self.path, wanted, dir).map(|()| Vec::new()),
            Format::Cpio { .. } => cpio_image::extract(&self.path, wanted, dir).map(|()| Vec::new()),
        }
    }

    fn error(&self, message: String) -> ImageError {
        ImageError { image: self.shown.clone(), message }
    }
}

/// A scratch directory being filled with parts of an image.
pub struct Extraction {
    image: ImageRoot,
    /// Removed when the extraction or the view it becomes goes.
    dir: crate::fsio::Scratch,
    /// Every path asked for so far (symlinks pointing inside them need not be followed).
    requested: Vec<String>,
    /// The files left out so far, with their inodes.
    left_out: Vec<(OutsideFile, u32)>,
    /// The exceptions made so far (see [`Selection::except`]).
    except: Vec<String>,
    _step: crate::progress::Step,
}

impl Extraction {
    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Extracts `wanted` (added to what is there); with [`Links::Follow`], also what the
    /// symlinks of everything extracted so far point at, `wanted.except` left out there too.
    pub fn add(&mut self, wanted: Selection, links: Links) -> Result<()> {
        let image = &self.image;
        self.requested.extend(wanted.paths.iter().cloned());
        self.except.extend(wanted.except.iter().cloned());
        let mut round = wanted.paths.to_vec();
        for _ in 0..MAX_LINK_ROUNDS {
            let selection = Selection { paths: &round, ..wanted };
            let left_out = image.extract(selection, self.dir.path()).map_err(|e| image.error(e.to_string()))?;
            self.left_out.extend(left_out);
            if links == Links::Keep {
                break;
            }
            round = link_targets(self.dir.path(), &self.requested, wanted.except)
                .map_err(|e| image.error(format!("reading its extracted parts: {e}")))?;
            if round.is_empty() {
                break;
            }
            self.requested.extend(round.iter().cloned());
        }
        Ok(())
    }

    /// The view the command works on: everything extracted is the image's.
    pub fn finish(self) -> Result<View> {
        let Extraction { image, dir, mut left_out, except, .. } = self;
        // A file two wanted paths reach is listed once.
        left_out.sort_by(|a, b| a.0.path.cmp(&b.0.path));
        left_out.dedup_by(|a, b| a.0.path == b.0.path);
        // Everything there now, directories the archive only implies included, is the image's.
        let baseline = walk(dir.path())
            .map_err(|e| image.error(format!("reading its extracted parts: {e}")))?
            .into_keys()
            .filter_map(|path| stamp(dir.path(), &path).map(|s| (path, s)))
            .collect();
        let left_out = match image.format {
            Format::Ext4 { offset, len, .. } if !left_out.is_empty() => {
                Some(LeftOut::new(image.path.clone(), offset, len, left_out))
            }
            _ => None,
        };
        Ok(View { image, dir, baseline, left_out, except })
    }
}

/// What to extract from an image: each of `paths` with everything below it, but not what lies
/// under one of `except` deeper than the path it was reached from (a directory read only in
/// part: what is read there is named in `paths`). The last component of an exception may end
/// in `*`: every entry of that directory whose name starts with the rest. From an ext2/3/4
/// root, the regular files whose root-relative paths `leave_out` picks are not extracted but
/// listed ([`View::left_out`]).
#[derive(Clone, Copy)]
pub struct Selection<'a> {
    pub paths: &'a [String],
    pub except: &'a [String],
    pub leave_out: Option<&'a (dyn Fn(&str) -> bool + Sync)>,
}

impl<'a> Selection<'a> {
    /// `paths`, whole.
    pub fn of(paths: &'a [String]) -> Selection<'a> {
        Selection { paths, except: &[], leave_out: None }
    }
}

impl Selection<'_> {
    /// Whether `path`, below `place` (one of the paths, resolved), is extracted.
    fn keeps(&self, place: &str, path: &str) -> bool {
        under(place, path) && !self.except.iter().any(|e| depth(e) > depth(place) && matches_below(e, path))
    }
}

/// Whether `path` is `dir` or lies below it (every path lies below the root, "").
fn under(dir: &str, path: &str) -> bool {
    dir.is_empty() || path == dir || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// The directory an exception names, or whose entries it names (`dir/name*`).
fn pattern_dir(pattern: &str) -> &str {
    match pattern.strip_suffix('*') {
        Some(prefix) => prefix.rsplit_once('/').map_or("", |(dir, _)| dir),
        None => pattern,
    }
}

/// How many components a root-relative path has.
fn depth(path: &str) -> usize {
    path.split('/').filter(|p| !p.is_empty()).count()
}

/// Whether `path` is what `pattern` (a path, its last component perhaps ending in `*`) names,
/// or lies below it.
fn matches_below(pattern: &str, path: &str) -> bool {
    let Some(prefix) = pattern.strip_suffix('*') else { return under(pattern, path) };
    let (dir, start) = prefix.rsplit_once('/').unwrap_or(("", prefix));
    let rest = match dir {
        "" => path,
        dir => match path.strip_prefix(dir).and_then(|r| r.strip_prefix('/')) {
            Some(rest) => rest,
            None => return false,
        },
    };
    rest.split('/').next().is_some_and(|name| name.starts_with(start))
}

/// Whether [`ImageRoot::materialize`] also extracts what symlinks in the wanted parts point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// The wanted parts only (their symlinks may point at nothing in the scratch root).
    Keep,
    /// Their symlinks' targets too, and theirs, for a few rounds.
    Follow,
}

/// Rounds of symlink targets followed, at most (a chain of links from part to part).
const MAX_LINK_ROUNDS: usize = 8;

/// The root-relative targets of the symlinks under `dir` that no `requested` path covers;
/// links to the root itself, to one of their own ancestors (which would pull in everything
/// around them) or into one of `except` are left alone.
fn link_targets(dir: &Path, requested: &[String], except: &[String]) -> io::Result<Vec<String>> {
    let covered =
        |target: &str| requested.iter().any(|r| under(r, target)) || except.iter().any(|e| matches_below(e, target));
    let mut targets = BTreeSet::new();
    for (path, is_dir) in walk(dir)? {
        if is_dir || !std::fs::symlink_metadata(dir.join(&path))?.file_type().is_symlink() {
            continue;
        }
        let link = std::fs::read_link(dir.join(&path))?;
        let parent = path.rsplit_once('/').map_or("", |(parent, _)| parent);
        let Some(target) = lexical_target(parent, &link.to_string_lossy()) else { continue };
        let own_ancestor = path.starts_with(&format!("{target}/"));
        if !target.is_empty() && !own_ancestor && !covered(&target) {
            targets.insert(target);
        }
    }
    Ok(targets.into_iter().collect())
}

/// Where a symlink in root-relative directory `parent` with target `link` points, by its
/// words alone (`..` cannot climb above the root); None when it is the root.
pub fn lexical_target(parent: &str, link: &str) -> Option<String> {
    let mut parts: Vec<&str> =
        if link.starts_with('/') { Vec::new() } else { parent.split('/').filter(|p| !p.is_empty()).collect() };
    for part in link.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
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

/// An exclusive lock (flock) on the image file at `path`; when another run holds it, says so on
/// stderr and waits. A file renamed over `path` meanwhile (the other run's new image) is
/// locked in its turn: the lock is always on the image `path` names.
fn lock_image(path: &Path, shown: &Path) -> io::Result<std::fs::File> {
    use rustix::fs::FlockOperation;
    loop {
        let file = std::fs::File::open(path)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                eprintln!("xdkms: waiting for another run on {} to finish", shown.display());
                rustix::fs::flock(&file, FlockOperation::LockExclusive)?;
            }
            Err(e) => return Err(e.into()),
        }
        let (locked, now) = (file.metadata()?, std::fs::metadata(path)?);
        if locked.ino() == now.ino() && locked.dev() == now.dev() {
            return Ok(file);
        }
    }
}

/// `FILE:N` split into FILE and N, when FILE is there and N a number.
fn split_partition(path: &Path) -> Option<(PathBuf, u32)> {
    let text = path.to_str()?;
    let (file, number) = text.rsplit_once(':')?;
    let number = number.parse::<u32>().ok()?;
    Path::new(file).exists().then(|| (PathBuf::from(file), number))
}

/// The format of the file at `path`: an ext2/3/4 superblock, a codec's magic and what the
/// decoded start holds, or a partition table and the one partition that holds a root.
fn detect(path: &Path) -> std::result::Result<Format, String> {
    let unreadable = |e: io::Error| format!("cannot read it: {e}");
    let mut head = [0u8; 2048];
    let got =
        initramfs::stream::fill(&mut std::fs::File::open(path).map_err(unreadable)?, &mut head).map_err(unreadable)?;
    if ext4_image::is_ext4(&head[..got]) {
        let len = std::fs::metadata(path).map_err(unreadable)?.len();
        return Ok(Format::Ext4 { offset: 0, len, boot: None });
    }
    if squashfs_image::is_squashfs(&head[..got]) {
        return match squashfs_image::refusal(path).map_err(unreadable)? {
            Some(why) => Err(why),
            None => Ok(Format::Squashfs),
        };
    }
    if erofs_image::is_erofs(&head[..got]) {
        return match erofs_image::refusal(path).map_err(unreadable)? {
            Some(why) => Err(why),
            None => Ok(Format::Erofs),
        };
    }
    if let Some(codec) = tar_codec(path).map_err(unreadable)? {
        return Ok(Format::Tar { codec });
    }
    if let Some(codec) = cpio_codec(path).map_err(unreadable)? {
        return Ok(Format::Cpio { codec });
    }
    match disk::partitions(path).map_err(unreadable)? {
        Some(partitions) => root_partition(path, &partitions),
        None => Err(format!("not a root directory or an image xdkms can open ({KINDS})")),
    }
}

/// The codec of a tar archive at `path`, None when it is none.
fn tar_codec(path: &Path) -> io::Result<Option<Codec>> {
    archive_codec(path, 512, tar_image::is_tar_header)
}

/// The codec of a cpio archive at `path`, None when it is none.
fn cpio_codec(path: &Path) -> io::Result<Option<Codec>> {
    archive_codec(path, 6, cpio_image::is_cpio_header)
}

/// The codec of the file at `path` (none, or the one its magic names) when its first `len`
/// decoded bytes are what `starts` looks for.
fn archive_codec(path: &Path, len: usize, starts: fn(&[u8]) -> bool) -> io::Result<Option<Codec>> {
    let mut head = [0u8; 6];
    let got = initramfs::stream::fill(&mut std::fs::File::open(path)?, &mut head)?;
    let codec = Codec::detect(&head[..got]).unwrap_or(Codec::None);
    let mut input = initramfs::stream::Input::new(std::fs::File::open(path)?);
    let Ok(mut decoded) = initramfs::stream::decoder(codec, &mut input) else { return Ok(None) };
    let mut block = vec![0u8; len];
    let got = initramfs::stream::fill(&mut decoded, &mut block).unwrap_or(0);
    Ok(starts(&block[..got]).then_some(codec))
}

/// The format of partition `number` of the disk at `path`.
fn partition_format(path: &Path, number: u32) -> std::result::Result<Format, String> {
    let partitions = disk::partitions(path)
        .map_err(|e| format!("cannot read it: {e}"))?
        .ok_or_else(|| "no GPT or MBR partition table: name the image without :N".to_string())?;
    let partition = partitions.iter().find(|p| p.number == number).ok_or_else(|| {
        let numbers: Vec<String> = partitions.iter().map(|p| p.number.to_string()).collect();
        format!("no partition {number} (it has {})", numbers.join(", "))
    })?;
    if !ext4_image::is_ext4_at(path, partition.start).map_err(|e| format!("cannot read it: {e}"))? {
        return Err(format!("partition {number} holds no filesystem xdkms can open (ext2/3/4)"));
    }
    let boot = boot_partition(path, partition, &partitions);
    Ok(Format::Ext4 { offset: partition.start, len: partition.len, boot })
}

/// The one other ext2/3/4 partition of the disk at `path` holding a kernel's files at its top,
/// when `root` has an empty /boot: a separate /boot, where those files are read and written.
fn boot_partition(path: &Path, root: &disk::Partition, partitions: &[disk::Partition]) -> Option<(u64, u64)> {
    if !ext4_image::boot_is_empty(path, root.start) {
        return None;
    }
    let boots: Vec<&disk::Partition> = partitions
        .iter()
        .filter(|p| p.number != root.number)
        .filter(|p| ext4_image::is_ext4_at(path, p.start).unwrap_or(false) && ext4_image::holds_kernel(path, p.start))
        .collect();
    match boots.as_slice() {
        [one] => Some((one.start, one.len)),
        _ => None,
    }
}

/// The paths of `wanted` under /boot, relative to a separate /boot filesystem ("" for all of it).
fn on_boot(wanted: &[String]) -> Vec<String> {
    wanted
        .iter()
        .filter_map(|path| {
            let path = path.trim_start_matches('/');
            if path == "boot" {
                Some(String::new())
            } else {
                path.strip_prefix("boot/").map(String::from)
            }
        })
        .collect()
}

/// The one partition of the disk at `path` that holds a root (an ext2/3/4 filesystem with
/// lib/modules or usr/lib/modules).
fn root_partition(path: &Path, partitions: &[disk::Partition]) -> std::result::Result<Format, String> {
    let mut roots = Vec::new();
    for partition in partitions {
        let is_root = ext4_image::is_ext4_at(path, partition.start).unwrap_or(false)
            && ext4_image::holds_modules(path, partition.start);
        if is_root {
            roots.push(partition);
        }
    }
    let named = |p: &&disk::Partition| format!("{}:{}", path.display(), p.number);
    match roots.as_slice() {
        [one] => Ok(Format::Ext4 { offset: one.start, len: one.len, boot: boot_partition(path, one, partitions) }),
        [] => Err(format!(
            "no partition holds lib/modules in an ext2/3/4 filesystem: name the root partition as {}:N",
            path.display()
        )),
        several => Err(format!(
            "partitions {} all hold lib/modules: name the root as one of {}",
            several.iter().map(|p| p.number.to_string()).collect::<Vec<_>>().join(" and "),
            several.iter().map(named).collect::<Vec<_>>().join(", ")
        )),
    }
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
    dir: crate::fsio::Scratch,
    /// Each extracted entry as it was right after extraction (directories included).
    baseline: BTreeMap<String, Stamp>,
    /// The files of the image left out of the scratch directory, when there are any.
    left_out: Option<LeftOut>,
    /// The exceptions made extracting it: directories extracted in part.
    except: Vec<String>,
}

impl View {
    /// The scratch directory: the root the command works on.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The image this view was taken from.
    pub fn image(&self) -> &Path {
        &self.image.shown
    }

    /// The files of the image not in the scratch directory (see [`Selection::leave_out`]).
    pub fn left_out(&self) -> Option<&LeftOut> {
        self.left_out.as_ref()
    }

    /// Whether what the command changed reaches into what was left out of the scratch
    /// directory: a directory that held left-out files removed or replaced, a file written where
    /// a left-out one is, anything changed in a directory extracted in part or the directory
    /// itself removed. Such a change cannot be written back as it is (the command saw less than
    /// the image holds): the command must run again on the whole. Not knowing counts as yes.
    pub fn changes_reach_left_out(&self) -> bool {
        let files: Vec<&str> = self.left_out.iter().flat_map(|l| l.files()).map(|f| f.path.as_str()).collect();
        if files.is_empty() && self.except.is_empty() {
            return false;
        }
        let Ok(changes) = self.changes() else { return true };
        changes.iter().map(change_path).any(|path| {
            files.iter().any(|file| under(path, file))
                || self.except.iter().any(|e| matches_below(e, path) || under(path, pattern_dir(e)))
        })
    }

    /// The image, still held, with the scratch directory and what was done there gone.
    pub fn discard(self) -> ImageRoot {
        self.image
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
        self.commit_to(None)
    }

    /// [`View::commit`], or with `output`, the changed image written there (beside it, renamed)
    /// and the image itself left alone: a copy when nothing changed. How many paths changed.
    pub fn commit_to(self, output: Option<&Path>) -> Result<usize> {
        let changes = self.changes().map_err(|e| self.image.error(format!("reading the changes back: {e}")))?;
        let source = &self.image.path;
        let dest = output.map_or_else(|| source.clone(), |o| crate::fsio::absolute(o.to_path_buf()));
        if changes.is_empty() {
            if output.is_some() {
                copy_image(source, &dest)
                    .map_err(|e| self.image.error(format!("copying it to {}: {e}", dest.display())))?;
            }
            return Ok(0);
        }
        // Replacing the file by rename would succeed; its read-only mode says not to.
        let mode = std::fs::metadata(source).map(|m| m.mode()).unwrap_or(0);
        if output.is_none() && mode & 0o222 == 0 {
            return Err(self.image.error(format!(
                "the image is read-only (mode {:o}): make it writable, or work on a copy",
                mode & 0o7777
            )));
        }
        let dir = self.dir.path();
        let shown = output.map_or_else(|| self.image.shown.clone(), Path::to_path_buf);
        let step = crate::progress::step(format!("writing {}", shown.display()));
        let written = match self.image.format {
            Format::Tar { codec } => tar_image::rewrite(source, &dest, codec, dir, &changes),
            Format::Ext4 { offset, len, boot } => {
                ext4_image::rewrite(source, &dest, &ext4_edits(offset, len, boot, dir, &changes))
            }
            Format::Squashfs => squashfs_image::rewrite(source, &dest, dir, &changes),
            Format::Erofs => erofs_image::rewrite(source, &dest, dir, &changes),
            Format::Cpio { codec } => cpio_image::rewrite(source, &dest, codec, dir, &changes),
        };
        drop(step);
        written.map_err(|e| self.image.error(format!("writing the changes into {}: {e}", shown_dest(output))))?;
        Ok(changes.len())
    }
}

/// The edits of an ext2/3/4 image: with a separate /boot, what changed under boot/ goes into
/// that filesystem (paths relative to it), the rest into the root's.
fn ext4_edits(
    offset: u64,
    len: u64,
    boot: Option<(u64, u64)>,
    dir: &Path,
    changes: &[Change],
) -> Vec<ext4_image::Edit> {
    let Some((boot_offset, boot_len)) = boot else {
        return vec![ext4_image::Edit { offset, len, dir: dir.to_path_buf(), changes: changes.to_vec() }];
    };
    let (mut on_root, mut on_boot) = (Vec::new(), Vec::new());
    for change in changes.iter().cloned() {
        let under_boot = change_path(&change).strip_prefix("boot/").map(String::from);
        match (change, under_boot) {
            (Change::Added(_), Some(p)) => on_boot.push(Change::Added(p)),
            (Change::Modified(_), Some(p)) => on_boot.push(Change::Modified(p)),
            (Change::Removed(_), Some(p)) => on_boot.push(Change::Removed(p)),
            (change, None) => on_root.push(change),
        }
    }
    vec![
        ext4_image::Edit { offset, len, dir: dir.to_path_buf(), changes: on_root },
        ext4_image::Edit { offset: boot_offset, len: boot_len, dir: dir.join("boot"), changes: on_boot },
    ]
}

/// How a commit names where it writes: "it" (the image itself), or the output file.
fn shown_dest(output: Option<&Path>) -> String {
    output.map_or_else(|| "it".to_string(), |o| o.display().to_string())
}

/// `source` copied to `dest` (beside it, renamed), holes kept.
fn copy_image(source: &Path, dest: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(source)?;
    cross::Sysroot::host()?.write_atomic_with(dest, Some(meta.permissions()), |file| {
        ext4_image::copy_sparse(&mut std::fs::File::open(source)?, file, meta.len())
    })
}

/// Every entry under `dir` by root-relative path, with whether it is a directory.
fn walk(dir: &Path) -> io::Result<BTreeMap<String, bool>> {
    let mut found = BTreeMap::new();
    for (path, kind) in crate::fsio::entries_below(dir)? {
        let relative = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().into_owned();
        found.insert(relative, kind.is_dir());
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

/// The entries to extract for `wanted` from an image whose entries are `entries` (by
/// normalized path): each wanted path's entry and everything below it, with the symlinks and
/// directories leading there.
fn needed(entries: &HashMap<String, Entry>, wanted: Selection) -> BTreeSet<String> {
    let mut keep = BTreeSet::new();
    let mut places = Vec::new();
    for path in wanted.paths {
        if let Some(place) = resolve(&mut |p| entries.get(p).cloned(), path, &mut keep) {
            places.push(place);
        }
    }
    for name in entries.keys() {
        if places.iter().any(|p| !p.is_empty() && wanted.keeps(p, name)) {
            keep.insert(name.clone());
        }
    }
    let ancestors: Vec<String> = keep
        .iter()
        .flat_map(|name| name.match_indices('/').map(|(i, _)| name[..i].to_string()).collect::<Vec<_>>())
        .filter(|dir| entries.contains_key(dir))
        .collect();
    keep.extend(ancestors);
    keep
}

/// The level the compressing tool uses by default (`gzip`, `xz`, `zstd`, `bzip2`): what most
/// images were made with (the image does not say), where the initramfs codecs' own defaults
/// are those of small images compressed once and booted many times.
fn cli_default_level(codec: Codec) -> initramfs::Level {
    initramfs::Level(match codec {
        Codec::Gzip | Codec::Xz | Codec::Lzma => Some(6),
        Codec::Zstd => Some(3),
        Codec::Bzip2 => Some(9),
        _ => None,
    })
}

/// The mtime a file written into an image gets: SOURCE_DATE_EPOCH when set, else its own.
fn written_mtime(meta: &std::fs::Metadata) -> i64 {
    crate::dkms::date::source_date_epoch().unwrap_or_else(|| meta.mtime())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(&str, Entry)]) -> HashMap<String, Entry> {
        list.iter().map(|(name, entry)| (name.to_string(), entry.clone())).collect()
    }

    fn link(target: &str) -> Entry {
        Entry::Symlink(target.to_string())
    }

    #[test]
    fn wanted_paths_follow_symlinks_inside_the_image() {
        use Entry::{Dir, Other};
        let archive = members(&[
            ("lib", link("usr/lib")),
            ("usr", Dir),
            ("usr/lib", Dir),
            ("usr/lib/modules", Dir),
            ("usr/lib/modules/6.1", Dir),
            ("usr/lib/modules/6.1/kernel.ko", Other),
            ("usr/lib/modules/6.1/build", link("/usr/src/linux-6.1")),
            ("usr/lib/modules/5.10/old.ko", Other),
            ("usr/src/linux-6.1/Makefile", Other),
            ("etc/hostname", Other),
            ("sbin", link("/usr/../usr/sbin")),
            ("usr/sbin/depmod", link("../bin/kmod")),
            ("usr/bin/kmod", Other),
        ]);
        let paths = ["lib/modules/6.1".to_string(), "sbin/depmod".to_string()];
        let keep = needed(&archive, Selection::of(&paths));
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        assert_eq!(
            keep,
            [
                "lib",
                "sbin",
                "usr",
                "usr/bin/kmod",
                "usr/lib",
                "usr/lib/modules",
                "usr/lib/modules/6.1",
                "usr/lib/modules/6.1/build",
                "usr/lib/modules/6.1/kernel.ko",
                "usr/sbin/depmod",
            ]
        );
    }

    #[test]
    fn symlink_loops_resolve_to_nothing() {
        let archive = members(&[("a", link("b")), ("b", link("a"))]);
        let paths = ["a/x".to_string()];
        assert!(needed(&archive, Selection::of(&paths)).iter().all(|n| n == "a" || n == "b"));
    }

    #[test]
    fn an_exception_leaves_out_its_directory_but_what_is_named_inside_it() {
        use Entry::{Dir, Other};
        let archive = members(&[
            ("usr", Dir),
            ("usr/src", Dir),
            ("usr/src/m-1", Dir),
            ("usr/src/m-1/dkms.conf", Other),
            ("usr/src/linux-6.1", Dir),
            ("usr/src/linux-6.1/.config", Other),
            ("usr/src/linux-6.1/include", Dir),
            ("usr/src/linux-6.1/include/linux", Dir),
            ("usr/src/linux-6.1/include/linux/module.h", Other),
            ("usr/src/linux-6.1-extra", Dir),
            ("usr/src/linux-headers-6.1-common", Dir),
            ("usr/src/linux-headers-6.1-common/Makefile", Other),
        ]);
        let paths = ["usr/src".to_string(), "usr/src/linux-6.1/.config".to_string()];
        let except = ["usr/src/linux-6.1".to_string(), "usr/src/linux-headers-*".to_string()];
        let keep = needed(&archive, Selection { except: &except, ..Selection::of(&paths) });
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        assert_eq!(
            keep,
            [
                "usr",
                "usr/src",
                "usr/src/linux-6.1",
                "usr/src/linux-6.1-extra",
                "usr/src/linux-6.1/.config",
                "usr/src/m-1",
                "usr/src/m-1/dkms.conf",
            ]
        );
    }

    #[test]
    fn a_link_target_is_read_from_its_words_inside_the_root() {
        let debian_scripts = "../../lib/linux-kbuild-6.1/scripts";
        assert_eq!(
            lexical_target("usr/src/linux-headers-6.1.0-57-amd64", debian_scripts).as_deref(),
            Some("usr/lib/linux-kbuild-6.1/scripts")
        );
        assert_eq!(lexical_target("lib/modules/6.1", "/usr/src/h").as_deref(), Some("usr/src/h"));
        // `..` stops at the root, as the kernel resolves inside a chroot.
        assert_eq!(lexical_target("a", "../../../etc").as_deref(), Some("etc"));
        assert_eq!(lexical_target("a/b", "../.."), None);
        assert_eq!(lexical_target("a", "./b/./c").as_deref(), Some("a/b/c"));
    }

    #[test]
    fn link_targets_skip_what_is_requested_and_links_to_their_own_ancestors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/src/h")).expect("mkdir");
        std::os::unix::fs::symlink("../../lib/kbuild/scripts", root.join("usr/src/h/scripts")).expect("link");
        std::os::unix::fs::symlink("/usr/src/h", root.join("usr/src/h/inside")).expect("link");
        std::os::unix::fs::symlink("..", root.join("usr/src/h/up")).expect("link");
        std::os::unix::fs::symlink("/", root.join("usr/src/h/top")).expect("link");
        let targets = link_targets(root, &["usr/src".to_string()], &[]).expect("targets");
        assert_eq!(targets, vec!["usr/lib/kbuild/scripts".to_string()]);
    }
}
