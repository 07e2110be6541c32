//! tar images: the entries a command needs (symlinks followed inside the archive), their
//! extraction, and the archive written again with the command's changes, every other entry
//! (its extension headers included) copied byte for byte and in its place.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use initramfs::codec::Encoder;
use initramfs::stream::{decoder, Input};
use initramfs::Codec;

use super::{cli_default_level, needed, normalize, written_mtime, Change, Entry, Selection};

/// A GNU long name or pax record block larger than this is refused, not held in memory.
const LARGEST_EXTENSION: u64 = 1 << 20;

/// True when `block` is a tar header: the ustar magic, or a valid checksum (v7 archives).
pub fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    if &block[257..262] == b"ustar" {
        return true;
    }
    let stored = std::str::from_utf8(&block[148..156])
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok());
    let sum: u32 =
        block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u32::from(b) }).sum();
    block[0] != 0 && stored == Some(sum)
}

/// Opens the archive at `path` through its codec and hands it to `body`.
fn with_archive<T>(
    path: &Path,
    codec: Codec,
    body: impl FnOnce(&mut tar::Archive<&mut dyn Read>) -> io::Result<T>,
) -> io::Result<T> {
    let mut input = Input::new(File::open(path)?);
    let mut reader = decoder(codec, &mut input)?;
    let mut archive = tar::Archive::new(&mut reader as &mut dyn Read);
    body(&mut archive)
}

/// Every entry by normalized path (the last one of a path wins, as tar extracts them).
fn scan(path: &Path, codec: Codec) -> io::Result<HashMap<String, Entry>> {
    with_archive(path, codec, |archive| {
        let mut members = HashMap::new();
        for entry in archive.entries()? {
            let entry = entry?;
            let Some(name) = normalize(&entry.path_bytes()) else { continue };
            let kind = entry.header().entry_type();
            let member = if kind.is_symlink() {
                let link = entry.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned());
                Entry::Symlink(link.unwrap_or_default())
            } else if kind.is_dir() {
                Entry::Dir
            } else {
                Entry::Other
            };
            members.insert(name, member);
        }
        Ok(members)
    })
}

/// Extracts the entries `wanted` needs into `dir` (modes and mtimes kept, owners not).
pub fn extract(path: &Path, codec: Codec, wanted: Selection, dir: &Path) -> io::Result<()> {
    let members = scan(path, codec)?;
    let keep = needed(&members, wanted);
    with_archive(path, codec, |archive| {
        archive.set_preserve_permissions(true);
        archive.set_overwrite(true);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let Some(name) = normalize(&entry.path_bytes()) else { continue };
            if !keep.contains(&name) {
                continue;
            }
            if entry.header().entry_type().is_hard_link() {
                // Its data is the target's: extracted only when the target is.
                let target = entry.link_name_bytes().and_then(|l| normalize(&l));
                if !target.is_some_and(|t| keep.contains(&t)) {
                    continue;
                }
            }
            if !entry.unpack_in(dir)? {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("entry {name} would land outside the image's root"),
                ));
            }
        }
        Ok(())
    })
}

/// The logical path of an entry: a GNU long name or a pax `path` before it, else its header's.
fn logical_path(header: &tar::Header, long_name: Option<&[u8]>, pax_path: Option<&[u8]>) -> Vec<u8> {
    match (long_name, pax_path) {
        (_, Some(path)) => path.to_vec(),
        (Some(name), None) => name.iter().copied().take_while(|&b| b != 0).collect(),
        (None, None) => header.path_bytes().into_owned(),
    }
}

/// Extension entries (GNU long names, pax headers) waiting for the entry they describe.
#[derive(Default)]
struct Pending {
    blocks: Vec<(tar::Header, Vec<u8>)>,
    long_name: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
}

/// Writes `header` and `data` as one raw entry, padded to the block size.
fn write_raw(out: &mut impl Write, header: &tar::Header, data: &mut impl Read) -> io::Result<u64> {
    out.write_all(header.as_bytes())?;
    let copied = io::copy(data, out)?;
    let padding = (512 - copied % 512) % 512;
    out.write_all(&vec![0u8; padding as usize])?;
    Ok(copied)
}

/// A pax extension block without the records the new header states itself (size, mtime).
fn pax_without_stat(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for extension in tar::PaxExtensions::new(data).flatten() {
        let key = extension.key_bytes();
        if key == b"size" || key == b"mtime" {
            continue;
        }
        let body_len = key.len() + extension.value_bytes().len() + 3;
        // The length counts its own digits.
        let mut len = body_len + 1;
        while len.to_string().len() + body_len != len {
            len += 1;
        }
        out.extend_from_slice(format!("{len} ").as_bytes());
        out.extend_from_slice(key);
        out.push(b'=');
        out.extend_from_slice(extension.value_bytes());
        out.push(b'\n');
    }
    out
}

/// The archive at `path` written again beside `dest` (itself, or another file) with `changes`
/// from `dir`, then renamed over `dest`: removed entries dropped, modified ones rewritten in
/// their place, added ones appended.
pub fn rewrite(path: &Path, dest: &Path, codec: Codec, dir: &Path, changes: &[Change]) -> io::Result<()> {
    let mut modified = HashSet::new();
    let mut removed = HashSet::new();
    let mut added = Vec::new();
    for change in changes {
        match change {
            Change::Modified(p) => modified.insert(p.as_str()),
            Change::Removed(p) => removed.insert(p.as_str()),
            Change::Added(p) => {
                added.push(p.as_str());
                true
            }
        };
    }
    let meta = std::fs::metadata(path)?;
    cross::Sysroot::host()?.write_atomic_with(dest, Some(meta.permissions()), |file| {
        let mut out = Encoder::new(codec, BufWriter::new(file), cli_default_level(codec), meta.len())?;
        let dot_prefix =
            with_archive(path, codec, |archive| copy_entries(archive, &mut out, dir, &modified, &removed))?;
        for name in added {
            append_new(&mut out, dir, name, dot_prefix)?;
        }
        // The end of the archive: two zero blocks.
        out.write_all(&[0u8; 1024])?;
        out.finish()?.flush()
    })
}

/// Copies each entry of `archive` to `out`, dropping the removed ones and writing the modified
/// ones anew from `dir`; true when the archive names its entries `./...`.
fn copy_entries(
    archive: &mut tar::Archive<&mut dyn Read>,
    out: &mut impl Write,
    dir: &Path,
    modified: &HashSet<&str>,
    removed: &HashSet<&str>,
) -> io::Result<bool> {
    let mut pending = Pending::default();
    let mut dot_prefix = None;
    for entry in archive.entries()?.raw(true) {
        let mut entry = entry?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions() {
            if header.entry_size()? > LARGEST_EXTENSION {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "an extension header of {} bytes (names and pax records are far smaller)",
                        header.entry_size()?
                    ),
                ));
            }
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            if kind.is_gnu_longname() {
                pending.long_name = Some(data.clone());
            }
            if kind.is_pax_local_extensions() {
                let path = tar::PaxExtensions::new(&data).flatten().find(|e| e.key_bytes() == b"path");
                pending.pax_path = path.map(|e| e.value_bytes().to_vec()).or(pending.pax_path.take());
            }
            pending.blocks.push((header, data));
            continue;
        }
        let raw_path = logical_path(&header, pending.long_name.as_deref(), pending.pax_path.as_deref());
        let extensions = std::mem::take(&mut pending);
        let name = normalize(&raw_path);
        if name.is_some() && dot_prefix.is_none() && !kind.is_pax_global_extensions() {
            dot_prefix = Some(raw_path.starts_with(b"./"));
        }
        let key = name.as_deref().unwrap_or("");
        if removed.contains(key) {
            io::copy(&mut entry, &mut io::sink())?;
        } else if modified.contains(key) {
            io::copy(&mut entry, &mut io::sink())?;
            write_modified(out, dir, key, header, extensions)?;
        } else {
            for (ext_header, data) in &extensions.blocks {
                write_raw(out, ext_header, &mut data.as_slice())?;
            }
            write_raw(out, &header, &mut entry)?;
        }
    }
    Ok(dot_prefix.unwrap_or(false))
}

/// A changed entry written in its old place: its old header (owner, names, format) with the new
/// size, mode and mtime; its extension headers kept, without the size and mtime they stated.
fn write_modified(
    out: &mut impl Write,
    dir: &Path,
    name: &str,
    mut header: tar::Header,
    extensions: Pending,
) -> io::Result<()> {
    let file = dir.join(name);
    let meta = std::fs::symlink_metadata(&file)?;
    if !meta.is_file() && !meta.file_type().is_symlink() {
        return Err(io::Error::other(format!(
            "{name} changed into a kind of entry xdkms does not write back into tar images"
        )));
    }
    for (mut ext_header, data) in extensions.blocks {
        let data = if ext_header.entry_type().is_pax_local_extensions() { pax_without_stat(&data) } else { data };
        ext_header.set_size(data.len() as u64);
        ext_header.set_cksum();
        write_raw(out, &ext_header, &mut data.as_slice())?;
    }
    header.set_mode(meta.mode() & 0o7777);
    header.set_mtime(entry_mtime(&meta));
    if meta.file_type().is_symlink() {
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_link_name(std::fs::read_link(&file)?)?;
        header.set_cksum();
        return write_raw(out, &header, &mut io::empty()).map(drop);
    }
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(meta.len());
    header.set_cksum();
    write_raw(out, &header, &mut File::open(&file)?).map(drop)
}

/// The mtime a written entry gets: SOURCE_DATE_EPOCH when set, else the file's.
fn entry_mtime(meta: &std::fs::Metadata) -> u64 {
    u64::try_from(written_mtime(meta)).unwrap_or(0)
}

/// A new entry from `dir`, owned by root, appended at the end and named as the archive names
/// its entries (`./` or not; a GNU long-name entry before it when the name is over 100 bytes).
fn append_new(out: &mut impl Write, dir: &Path, name: &str, dot_prefix: bool) -> io::Result<()> {
    let file = dir.join(name);
    let meta = std::fs::symlink_metadata(&file)?;
    let mut shown = if dot_prefix { format!("./{name}") } else { name.to_string() };
    let mut header = tar::Header::new_gnu();
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(0);
    header.set_gid(0);
    header.set_username("root")?;
    header.set_groupname("root")?;
    header.set_mtime(entry_mtime(&meta));
    header.set_size(0);
    let mut data: Box<dyn Read> = Box::new(io::empty());
    if meta.is_dir() {
        header.set_entry_type(tar::EntryType::Directory);
        shown.push('/');
    } else if meta.file_type().is_symlink() {
        header.set_entry_type(tar::EntryType::Symlink);
        let target = std::fs::read_link(&file)?;
        header.set_link_name(&target).map_err(|e| io::Error::other(format!("{name}: {e}")))?;
    } else if meta.is_file() {
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(meta.len());
        data = Box::new(File::open(&file)?);
    } else {
        return Err(io::Error::other(format!("{name} is a kind of entry xdkms does not write into tar images")));
    }
    let name_bytes = shown.as_bytes();
    if name_bytes.len() > 100 {
        let mut long = tar::Header::new_gnu();
        long.set_entry_type(tar::EntryType::GNULongName);
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_mode(0o644);
        let mut value = name_bytes.to_vec();
        value.push(0);
        long.set_size(value.len() as u64);
        long.set_cksum();
        write_raw(out, &long, &mut value.as_slice())?;
    }
    let field = &mut header.as_old_mut().name;
    let kept = name_bytes.len().min(field.len());
    field[..kept].copy_from_slice(&name_bytes[..kept]);
    header.set_cksum();
    write_raw(out, &header, &mut data).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_keep_their_length_prefix_right() {
        let data = b"20 mtime=1700000000\n11 size=42\n28 SCHILY.xattr.user.k=vvvv\n";
        assert_eq!(pax_without_stat(data), b"28 SCHILY.xattr.user.k=vvvv\n");
        let long = format!("path={}", "x".repeat(95));
        let record = format!("{} {long}\n", long.len() + 5);
        assert_eq!(pax_without_stat(record.as_bytes()), record.as_bytes());
    }
}
