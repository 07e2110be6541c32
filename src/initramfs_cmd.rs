//! `xdkms initramfs list|extract|create`: reading and writing images without kernel knowledge.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use initramfs::image::{archive_entries, normalize, segment_bytes};
use initramfs::newc::S_IFMT;
use initramfs::{Codec, Entry, Image, Level};

/// Reads and parses an image, naming the file in every error.
pub fn read_image(path: &Path) -> anyhow::Result<(Vec<u8>, Image)> {
    read_image_keeping(path, &|_| true)
}

/// [`read_image`], keeping only the file data `keep_data` asks for (by normalized path).
pub fn read_image_keeping(path: &Path, keep_data: &dyn Fn(&str) -> bool) -> anyhow::Result<(Vec<u8>, Image)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read the image {}", path.display()))?;
    let image = Image::parse_keeping(&bytes, keep_data)
        .with_context(|| format!("{} is not an initramfs image the kernel would unpack", path.display()))?;
    Ok((bytes, image))
}

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

/// Writes `bytes` to `output`: `-` is standard output (refused on a terminal), anything else is
/// written beside the target and renamed over it.
pub fn write_output(output: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if output == Path::new("-") {
        let stdout = std::io::stdout();
        if stdout.is_terminal() {
            bail!("refusing to write a binary image to a terminal; redirect standard output or use -o FILE");
        }
        let mut lock = stdout.lock();
        lock.write_all(bytes)?;
        lock.flush()?;
        return Ok(());
    }
    crate::fsio::replace_file(output, bytes).with_context(|| format!("cannot write {}", output.display()))
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

/// `list`: every member name of every segment, as stored, in order.
pub fn list(path: &Path, segments: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let (_, image) = read_image(path)?;
    for (index, segment) in image.segments.iter().enumerate() {
        if segments {
            writeln!(
                out,
                "segment {index}: offset {} length {} {} {} entries",
                segment.offset,
                segment.len,
                segment.codec,
                segment.entries.len()
            )?;
        }
        for entry in &segment.entries {
            writeln!(out, "{}{}", if segments { "  " } else { "" }, entry.name)?;
        }
    }
    Ok(())
}

/// A member name that could write outside the extraction directory.
fn unsafe_name(name: &str) -> bool {
    name.starts_with('/') || name.split('/').any(|c| c == "..")
}

/// `extract`: the merged view (what the kernel ends up with) into `dir`, created beside and
/// renamed into place. Device nodes, FIFOs and sockets are counted and skipped.
pub fn extract(path: &Path, dir: &Path) -> anyhow::Result<usize> {
    let (_, image) = read_image(path)?;
    if let Some(bad) = image.segments.iter().flat_map(|s| &s.entries).find(|e| unsafe_name(&e.name)) {
        bail!(
            "{}: member {:?} would be written outside the destination; nothing was extracted",
            path.display(),
            bad.name
        );
    }
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists and is not an empty directory", dir.display());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".xdkms-extract-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a directory beside {}", dir.display()))?;
    let root = cross::Sysroot::new(staging.path())?;
    let mut skipped = 0;
    // Directory modes are applied last, deepest first: a read-only directory must not stop the
    // files inside it from being written.
    let mut dir_modes = Vec::new();
    for (name, entry) in image.merged().files {
        let target = root.resolve(&name)?;
        let mode = entry.mode & 0o7777;
        match entry.mode & S_IFMT {
            initramfs::newc::S_IFDIR => {
                std::fs::create_dir_all(&target)?;
                dir_modes.push((target, mode));
            }
            initramfs::newc::S_IFREG => {
                if let Some(p) = target.parent() {
                    std::fs::create_dir_all(p)?;
                }
                std::fs::write(&target, &entry.data)?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
            }
            initramfs::newc::S_IFLNK => {
                if let Some(p) = target.parent() {
                    std::fs::create_dir_all(p)?;
                }
                let _ = std::fs::remove_file(&target);
                let link = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&entry.data);
                std::os::unix::fs::symlink(link, &target)?;
            }
            _ => skipped += 1,
        }
    }
    for (target, mode) in dir_modes.iter().rev() {
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(*mode))?;
    }
    let staged = staging.keep();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))?;
    if dir.exists() {
        std::fs::remove_dir(dir)?;
    }
    std::fs::rename(&staged, dir).with_context(|| format!("cannot move the extracted tree to {}", dir.display()))?;
    Ok(skipped)
}

/// `create`: an image from a directory tree, deterministic (sorted, 0:0, SOURCE_DATE_EPOCH).
pub fn create(dir: &Path, output: &Path, codec: Codec) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mut files = BTreeMap::new();
    collect(dir, dir, &mut files)?;
    let entries = archive_entries(files, None, source_date_epoch()?);
    let bytes = segment_bytes(&entries, codec, Level::default())?;
    write_output(output, &bytes)
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
            Entry::file(name.clone(), perm, std::fs::read(&path)?)
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
