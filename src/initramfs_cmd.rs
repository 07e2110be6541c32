//! `xdkms initramfs list|extract|create`: reading and writing images without kernel knowledge.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use initramfs::image::{archive_entries, normalize, write_image, Kept};
use initramfs::stream::{scan, Header, ScanError, SegmentInfo, Visitor};
use initramfs::{Codec, Data, Entry, Level};

/// The mtime of everything written: SOURCE_DATE_EPOCH, else 0.
pub fn source_date_epoch() -> anyhow::Result<u32> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(_) => Ok(0),
        Ok(v) => v
            .trim()
            .parse::<u32>()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds that fits a cpio header")),
    }
}

/// Writes an image to `output` through `write`: `-` is standard output (refused on a terminal),
/// anything else is written beside the target and renamed over it.
pub fn write_output(output: &Path, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> anyhow::Result<()> {
    if output == Path::new("-") {
        let stdout = std::io::stdout();
        if stdout.is_terminal() {
            bail!("refusing to write a binary image to a terminal; redirect standard output or use -o FILE");
        }
        let mut lock = stdout.lock();
        write(&mut lock)?;
        lock.flush()?;
        return Ok(());
    }
    // The root handle's error names the path already: said once.
    crate::fsio::replace_file_with(output, |file| write(file))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", output.display(), cross::without_path(e)))
}

/// Parses a size as `--max-unpacked` takes it: bytes, or a number with K, M, G or T (powers of
/// 1024, as coreutils reads them).
pub fn parse_size(value: &str) -> anyhow::Result<u64> {
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let shift = match value[digits.len()..].to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => bail!("size {value:?}: give bytes, or a number with K, M, G or T"),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .with_context(|| format!("size {value:?}: give bytes, or a number with K, M, G or T"))
}

/// Parses a `--compress` value; `keep` is `None` (the caller picks the image's own codec).
pub fn parse_compress(value: &str) -> anyhow::Result<Option<Codec>> {
    if value == "keep" {
        return Ok(None);
    }
    match Codec::from_name(value) {
        Some(codec) => Ok(Some(codec)),
        None => bail!("unknown compression {value:?}: use keep, none, gzip, xz, zstd, lz4, bzip2 or lzma"),
    }
}

/// Opens an image for streaming, refusing what is not a regular file (`/dev/zero` would never end).
pub fn open_image(path: &Path) -> anyhow::Result<std::fs::File> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read the image {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("cannot read the image {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file; give the image file itself", path.display());
    }
    Ok(file)
}

/// Streams an image through `visitor`, naming the file in the error.
fn scan_image(path: &Path, visitor: &mut dyn Visitor) -> anyhow::Result<()> {
    scan(open_image(path)?, visitor).map(drop).map_err(|e| scan_error(path, e))
}

/// A scan's error as the user sees it: the image named, and what to do about a limit.
pub fn scan_error(path: &Path, error: ScanError) -> anyhow::Error {
    match error {
        ScanError::Image(e) => anyhow::Error::new(e)
            .context(format!("{} is not an initramfs image the kernel would unpack", path.display())),
        ScanError::Visitor(e) if e.kind() == std::io::ErrorKind::FileTooLarge => anyhow::anyhow!(
            "{}: {e}; if the image is what you expect, raise it with --max-unpacked SIZE",
            path.display()
        ),
        ScanError::Visitor(e) => anyhow::Error::new(e).context(format!("while reading {}", path.display())),
    }
}

/// `list`: every member name of every segment, as stored (bytes, as `cpio -t` prints them), in
/// order, read as a stream.
pub fn list(path: &Path, segments: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    scan_image(path, &mut Lister { out, segments, names: Vec::new() })
}

/// Prints names as they come; with segment lines, one segment's names wait for its line (which
/// gives its length and count).
struct Lister<'a> {
    out: &'a mut dyn Write,
    segments: bool,
    names: Vec<u8>,
}

impl Visitor for Lister<'_> {
    fn member(&mut self, _segment: &SegmentInfo, header: &Header, _data: &mut dyn BufRead) -> std::io::Result<()> {
        if self.segments {
            self.names.extend_from_slice(b"  ");
            self.names.extend_from_slice(&header.name);
            self.names.push(b'\n');
            return Ok(());
        }
        self.out.write_all(&header.name)?;
        self.out.write_all(b"\n")
    }

    fn segment_end(&mut self, segment: &SegmentInfo) -> std::io::Result<()> {
        if self.segments {
            writeln!(
                self.out,
                "segment {}: offset {} length {} {} {} entries",
                segment.index, segment.offset, segment.len, segment.codec, segment.entries
            )?;
            self.out.write_all(&self.names)?;
            self.names.clear();
        }
        Ok(())
    }
}

/// A member name that could write outside the extraction directory.
fn unsafe_name(name: &[u8]) -> bool {
    name.starts_with(b"/") || name.split(|&b| b == b'/').any(|c| c == b"..")
}

/// A member's path relative to the root: leading `./` and `/` and trailing `/` removed; `.` is
/// the root itself (empty).
fn relative_name(name: &[u8]) -> &[u8] {
    let mut name = name;
    loop {
        if let Some(rest) = name.strip_prefix(b"./") {
            name = rest;
        } else if let Some(rest) = name.strip_prefix(b"/") {
            name = rest;
        } else {
            break;
        }
    }
    while let Some(rest) = name.strip_suffix(b"/") {
        name = rest;
    }
    if name == b"." {
        b""
    } else {
        name
    }
}

/// `extract`: what the kernel ends up with, member after member as it unpacks them (a later
/// member replaces an earlier one of the same path), into `dir`, created beside and renamed into
/// place; the image is streamed and each file's data copied in pieces. Device nodes, FIFOs and
/// sockets are counted and skipped. At most `max_unpacked` bytes of file data are written.
pub fn extract(path: &Path, dir: &Path, max_unpacked: u64) -> anyhow::Result<usize> {
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists and is not an empty directory", dir.display());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging = crate::fsio::scratch_dir(parent, ".xdkms-extract-")
        .with_context(|| format!("cannot create a directory beside {}", dir.display()))?;
    let root = cross::Sysroot::new(staging.path())?;
    let mut extractor = Extractor {
        root: &root,
        dir_modes: BTreeMap::new(),
        links: HashMap::new(),
        known_dirs: HashSet::new(),
        skipped: 0,
        left: max_unpacked,
        limit: max_unpacked,
    };
    scan_image(path, &mut extractor).context("nothing was extracted")?;
    // Directory modes are applied last, deepest first: a read-only directory must not stop the
    // files inside it from being written.
    let mut dir_modes: Vec<(PathBuf, u32)> = std::mem::take(&mut extractor.dir_modes).into_iter().collect();
    dir_modes.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
    for (target, mode) in dir_modes {
        if root.symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            root.set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
        }
    }
    let skipped = extractor.skipped;
    let staged = staging.keep();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))?;
    if dir.exists() {
        std::fs::remove_dir(dir)?;
    }
    std::fs::rename(&staged, dir).with_context(|| format!("cannot move the extracted tree to {}", dir.display()))?;
    Ok(skipped)
}

/// Writes members into a staging root as the kernel's unpacker would.
struct Extractor<'a> {
    root: &'a cross::Sysroot,
    /// Directory modes, applied at the end (the last member of a path wins).
    dir_modes: BTreeMap<PathBuf, u32>,
    /// The first path of each multiply-linked file of the current archive, by (device, inode, type).
    links: HashMap<(u32, u32, u32, u32), PathBuf>,
    /// Directories made or met below the root, so that a member's parents are looked at once
    /// and not for every member; forgotten whenever anything is removed.
    known_dirs: HashSet<PathBuf>,
    skipped: usize,
    /// Bytes of file data that may still be written, of `limit`.
    left: u64,
    limit: u64,
}

impl Extractor<'_> {
    /// Makes room for a member at `target`: what is there (not a directory) is removed, as the
    /// kernel unlinks it; an empty directory too when the member is not one.
    fn clear(&mut self, target: &Path, is_dir: bool) -> std::io::Result<()> {
        let meta = self.root.symlink_metadata(target);
        if meta.as_ref().is_ok_and(|meta| !(meta.is_dir() && is_dir)) {
            // What is removed may be a directory, or a link standing for one, that was known.
            self.known_dirs.clear();
        }
        match meta {
            Ok(meta) if meta.is_dir() && !is_dir => self.root.remove_dir(target).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("{}: a non-empty directory stands where a file goes", target.display()),
                )
            }),
            Ok(meta) if !meta.is_dir() => self.root.remove_file(target),
            _ => Ok(()),
        }
    }

    /// Creates `dir` and those of its parents that are missing, top down, each inside the root.
    fn make_dirs(&mut self, dir: &Path) -> std::io::Result<()> {
        let mut missing = Vec::new();
        let mut at = dir;
        while at != self.root.root() && !self.known_dirs.contains(at) {
            missing.push(at.to_path_buf());
            match at.parent() {
                Some(parent) => at = parent,
                None => break,
            }
        }
        for dir in missing.into_iter().rev() {
            match self.root.create_dir(&dir) {
                Err(e) if !(e.kind() == std::io::ErrorKind::AlreadyExists && self.root.is_dir(&dir)) => return Err(e),
                _ => self.known_dirs.insert(dir),
            };
        }
        Ok(())
    }

    /// A new file at `target`: created where nothing is (the common case, one system call),
    /// else in place of what is there.
    fn create(&mut self, target: &Path) -> std::io::Result<std::fs::File> {
        match self.root.create_new_file(target) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.clear(target, false)?;
                self.root.create_file(target)
            }
            created => created,
        }
    }

    fn file(&mut self, target: &Path, header: &Header, data: &mut dyn BufRead) -> std::io::Result<()> {
        self.left = self.left.checked_sub(u64::from(header.file_size)).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("the image's files hold more than {} bytes, the limit", self.limit),
            )
        })?;
        let key = (header.dev_major, header.dev_minor, header.ino, header.file_type());
        let first = if header.nlink >= 2 { self.links.get(&key).cloned() } else { None };
        let mut file = match first {
            // A later link of a file already written: linked to it, its data (cpio puts it on the
            // last link) written through the shared inode.
            Some(first) => {
                self.clear(target, false)?;
                self.root.hard_link(&first, target)?;
                if header.file_size == 0 {
                    return Ok(());
                }
                self.root.create_file(target)?
            }
            None => {
                if header.nlink >= 2 {
                    self.links.insert(key, target.to_path_buf());
                }
                self.create(target)?
            }
        };
        initramfs::stream::copy_data(data, &mut file)?;
        file.set_permissions(std::fs::Permissions::from_mode(header.mode & 0o7777))
    }
}

impl Visitor for Extractor<'_> {
    fn member(&mut self, _segment: &SegmentInfo, header: &Header, data: &mut dyn BufRead) -> std::io::Result<()> {
        if unsafe_name(&header.name) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("member {:?} would be written outside the destination", String::from_utf8_lossy(&header.name)),
            ));
        }
        let name = relative_name(&header.name);
        if name.is_empty() {
            return Ok(());
        }
        let target = self.root.root().join(std::ffi::OsStr::from_bytes(name));
        if let Some(parent) = target.parent() {
            self.make_dirs(parent)?;
        }
        match header.file_type() {
            initramfs::newc::S_IFDIR => {
                self.clear(&target, true)?;
                self.make_dirs(&target)?;
                self.dir_modes.insert(target, header.mode & 0o7777);
            }
            initramfs::newc::S_IFREG => self.file(&target, header, data)?,
            initramfs::newc::S_IFLNK => {
                let mut link = Vec::new();
                data.take(u64::from(initramfs::newc::NAME_MAX)).read_to_end(&mut link)?;
                self.clear(&target, false)?;
                self.root.symlink(Path::new(std::ffi::OsStr::from_bytes(&link)), &target)?;
            }
            _ => self.skipped += 1,
        }
        Ok(())
    }

    fn segment_end(&mut self, _segment: &SegmentInfo) -> std::io::Result<()> {
        // Hard links pair up within one archive.
        self.links.clear();
        Ok(())
    }
}

/// `create`: an image from a directory tree, deterministic (sorted, 0:0, SOURCE_DATE_EPOCH);
/// files are read as the archive is written.
pub fn create(dir: &Path, output: &Path, codec: Codec) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mut files = BTreeMap::new();
    collect(dir, dir, &mut files)?;
    let entries = archive_entries(files, None, source_date_epoch()?);
    write_output(output, |out| {
        write_image(out, &mut std::io::empty(), Kept::default(), &entries, codec, Level::default())
    })
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<String, Entry>) -> anyhow::Result<()> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for path in names {
        let meta = std::fs::symlink_metadata(&path)?;
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let name = rel.to_str().with_context(|| format!("{} is not a UTF-8 path", path.display()))?.to_string();
        let perm = meta.permissions().mode() & 0o7777;
        let kind = meta.file_type();
        let entry = if kind.is_dir() {
            Entry { mode: initramfs::newc::S_IFDIR | perm, ..Entry::directory(name.clone()) }
        } else if kind.is_file() {
            Entry::file(name.clone(), perm, Data::File { path: path.clone(), len: meta.len() })
        } else if kind.is_symlink() {
            Entry::symlink(name.clone(), std::fs::read_link(&path)?.as_os_str().as_encoded_bytes().to_vec())
        } else if kind.is_block_device() || kind.is_char_device() || kind.is_fifo() || kind.is_socket() {
            let rdev = meta.rdev();
            Entry {
                name: name.clone(),
                mode: meta.mode(),
                nlink: 1,
                rdev_major: (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)) as u32,
                rdev_minor: (((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)) as u32,
                ..Entry::default()
            }
        } else {
            continue;
        };
        files.insert(normalize(&name).to_string(), entry);
        if kind.is_dir() {
            collect(root, &path, files)?;
        }
    }
    Ok(())
}
