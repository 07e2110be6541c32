//! squashfs images: the entries a command needs read out through backhand, and a new image
//! written with the command's changes (the data blocks of every file left alone copied as
//! stored, not recompressed; the compressor, its options and the block size kept), which then
//! replaces the old one.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use backhand::{BackhandError, FilesystemReader, FilesystemWriter, InnerNode, NodeHeader};

use super::squashfs_codec::{Codec, OPTIONS_PRESENT};
use super::{needed, normalize, written_mtime, Change, Entry, Selection};

/// The superblock's magic number and the one format version there is (4.0).
const MAGIC: &[u8; 4] = b"hsqs";
const SUPERBLOCK_LEN: usize = 96;
/// A table offset that says "no such table".
const NOT_SET: u64 = u64::MAX;
/// A metadata block's length word: this bit set means stored uncompressed.
const UNCOMPRESSED: u16 = 0x8000;

/// True when `head` starts a squashfs 4.0 image.
pub fn is_squashfs(head: &[u8]) -> bool {
    head.len() >= 30 && &head[..4] == MAGIC && head[28..30] == [4, 0]
}

/// The superblock fields xdkms checks and keeps.
#[derive(Debug, Clone, Copy)]
struct Superblock {
    block_size: u32,
    compressor: u16,
    flags: u16,
    bytes_used: u64,
    xattr_table: u64,
}

fn read_superblock(file: &mut File) -> io::Result<Superblock> {
    let mut raw = [0u8; SUPERBLOCK_LEN];
    file.read_exact(&mut raw)?;
    let u16_at = |at: usize| u16::from_le_bytes([raw[at], raw[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    let u64_at = |at: usize| {
        u64::from_le_bytes([
            raw[at],
            raw[at + 1],
            raw[at + 2],
            raw[at + 3],
            raw[at + 4],
            raw[at + 5],
            raw[at + 6],
            raw[at + 7],
        ])
    };
    Ok(Superblock {
        block_size: u32_at(12),
        compressor: u16_at(20),
        flags: u16_at(24),
        bytes_used: u64_at(40),
        xattr_table: u64_at(56),
    })
}

/// The compression options block right after the superblock, as stored (None when the image
/// has none).
fn options_block(file: &mut File, superblock: &Superblock) -> io::Result<Option<Vec<u8>>> {
    if superblock.flags & OPTIONS_PRESENT == 0 {
        return Ok(None);
    }
    let mut word = [0u8; 2];
    file.read_exact(&mut word)?;
    let header = u16::from_le_bytes(word);
    if header & UNCOMPRESSED == 0 {
        return Err(invalid("its compression options are stored compressed (mksquashfs never does that)".into()));
    }
    let mut block = word.to_vec();
    block.resize(2 + usize::from(header & !UNCOMPRESSED), 0);
    file.read_exact(&mut block[2..])?;
    Ok(Some(block))
}

/// How many distinct sets of extended attributes the image stores (0 without an xattr table).
fn xattr_sets(file: &File, superblock: &Superblock) -> io::Result<u32> {
    use std::os::unix::fs::FileExt;
    if superblock.xattr_table == NOT_SET {
        return Ok(0);
    }
    let mut table = [0u8; 16];
    file.read_exact_at(&mut table, superblock.xattr_table)?;
    Ok(u32::from_le_bytes([table[8], table[9], table[10], table[11]]))
}

/// Why xdkms cannot work on the squashfs image at `path`, or None when it can.
pub fn refusal(path: &Path) -> io::Result<Option<String>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let superblock = match read_superblock(&mut file) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Some("truncated: no whole superblock".into())),
        other => other?,
    };
    if superblock.bytes_used > len {
        return Ok(Some(format!("truncated: its superblock says {} bytes, the file has {len}", superblock.bytes_used)));
    }
    let options = match options_block(&mut file, &superblock) {
        Ok(options) => options,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(Some(e.to_string())),
        Err(e) => return Err(e),
    };
    if let Err(why) = Codec::new(superblock.compressor, superblock.block_size, options) {
        return Ok(Some(why));
    }
    if xattr_sets(&file, &superblock)? > 0 {
        return Ok(Some(
            "it stores extended attributes, which the squashfs writer xdkms uses (backhand) cannot carry \
             into a new image yet: customize the tree it was made from, or make it with mksquashfs -no-xattrs"
                .into(),
        ));
    }
    Ok(None)
}

/// The image at `path`, read through its own codec (which new blocks go through too).
fn open(path: &Path) -> io::Result<(FilesystemReader<'static>, &'static Codec)> {
    let mut file = File::open(path)?;
    let superblock = read_superblock(&mut file)?;
    let options = options_block(&mut file, &superblock)?;
    let codec = Codec::new(superblock.compressor, superblock.block_size, options).map_err(invalid)?.leak();
    let kind = backhand::kind::Kind::new_v4(codec);
    let reader = FilesystemReader::from_reader_with_offset_and_kind(BufReader::new(File::open(path)?), 0, kind)
        .map_err(describe)?;
    Ok((reader, codec))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// backhand's error as an io::Error with words (built without its error strings, its own
/// Display prints nothing).
fn describe(error: BackhandError) -> io::Error {
    use BackhandError as E;
    let message = match error {
        E::StdIo(e) => return e,
        E::UnsupportedCompression(what) => format!("unsupported compression {what}"),
        E::MissingCompressor => "no compressor recorded".into(),
        E::UnsupportedSquashfsVersion(major, minor) => {
            format!("squashfs version {major}.{minor} (xdkms reads and writes 4.0)")
        }
        E::DuplicatedFileName => "a name that is there twice".into(),
        E::InvalidFilePath => "an entry whose directory is not there".into(),
        E::StringUtf8(_) | E::StrUtf8(_) => "a name that is not UTF-8".into(),
        E::InvalidIdTable | E::IdNotFoundInTable => "a corrupt owner table".into(),
        _ => "a corrupt or unsupported squashfs image (unsquashfs -s tells more)".into(),
    };
    invalid(message)
}

/// Each entry by normalized path, as far as finding the wanted parts goes.
fn entries(reader: &FilesystemReader) -> HashMap<String, Entry> {
    reader
        .files()
        .filter_map(|node| {
            let path = normalize(node.fullpath.as_os_str().as_encoded_bytes())?;
            let entry = match &node.inner {
                InnerNode::Dir(_) => Entry::Dir,
                InnerNode::Symlink(link) => Entry::Symlink(link.link.to_string_lossy().into_owned()),
                _ => Entry::Other,
            };
            Some((path, entry))
        })
        .collect()
}

/// Extracts what `wanted` needs from the image at `path` into `dir` (modes and file mtimes
/// kept, owners not; device nodes, fifos and sockets left out: no command reads them).
pub fn extract(path: &Path, wanted: Selection, dir: &Path) -> io::Result<()> {
    let (reader, _) = open(path)?;
    let keep = needed(&entries(&reader), wanted);
    let mut dirs = Vec::new();
    for node in reader.files() {
        let Some(name) = normalize(node.fullpath.as_os_str().as_encoded_bytes()) else { continue };
        if !keep.contains(&name) {
            continue;
        }
        let to = dir.join(&name);
        let mode = u32::from(node.header.permissions) & 0o7777;
        match &node.inner {
            InnerNode::Dir(_) => {
                std::fs::create_dir_all(&to)?;
                dirs.push((to, mode));
            }
            InnerNode::File(file) => {
                let mut out = File::create(&to)?;
                io::copy(&mut reader.file(file).reader(), &mut out)
                    .map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))?;
                out.set_permissions(std::fs::Permissions::from_mode(mode))?;
                out.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(node.header.mtime.into()))?;
            }
            InnerNode::Symlink(link) => {
                // Extracted already (links followed from part to part meet): the image's wins.
                let _ = std::fs::remove_file(&to);
                std::os::unix::fs::symlink(&link.link, &to)?;
            }
            _ => {}
        }
    }
    // Modes last: a read-only directory is filled first.
    for (dir, mode) in dirs.into_iter().rev() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// The image at `path` written again beside `dest` (itself, or another file) with `changes`
/// from `dir`, then renamed over `dest`. Written twice: a rehearsal whose output is discarded
/// lets every core compress the new blocks (see [`Codec`]), then the real write.
pub fn rewrite(path: &Path, dest: &Path, dir: &Path, changes: &[Change]) -> io::Result<()> {
    let (mut reader, codec) = open(path)?;
    let (mut gone, mut written) = (HashSet::new(), Vec::new());
    for change in changes {
        match change {
            Change::Removed(p) => {
                gone.insert(p.clone());
            }
            Change::Modified(p) => {
                gone.insert(p.clone());
                written.push(p.as_str());
            }
            Change::Added(p) => written.push(p.as_str()),
        }
    }
    let owners = drop_nodes(&mut reader, &gone)?;
    let (superblock, len) = {
        let mut file = File::open(path)?;
        (read_superblock(&mut file)?, file.metadata()?.len())
    };
    let edit = Edit { reader: &reader, dir, written: &written, owners: &owners, time: image_time() };
    // mksquashfs pads the image to 4 KiB unless told -nopad.
    let padded = len != superblock.bytes_used;
    codec.rehearse(|| edit.write(padded, &mut Discard::default()))?;
    let permissions = std::fs::metadata(path)?.permissions();
    cross::Sysroot::host()?.write_atomic_with(dest, Some(permissions), |file| {
        let mut out = BufWriter::new(file);
        edit.write(padded, &mut out)?;
        out.flush()
    })
}

/// The new image: the old one's tree less what went, plus what was written.
struct Edit<'a> {
    reader: &'a FilesystemReader<'static>,
    dir: &'a Path,
    written: &'a [&'a str],
    owners: &'a HashMap<String, (u32, u32)>,
    time: u32,
}

impl Edit<'_> {
    fn write(&self, padded: bool, out: &mut (impl Write + std::io::Seek)) -> io::Result<()> {
        let mut writer = FilesystemWriter::from_fs_reader(self.reader).map_err(describe)?;
        writer.set_time(self.time);
        if !padded {
            writer.set_no_padding();
        }
        for name in self.written {
            push(&mut writer, self.dir, name, self.owners.get(*name).copied().unwrap_or((0, 0)))?;
        }
        writer.write(out).map(drop).map_err(describe)
    }
}

/// A file that keeps nothing: where a rehearsal writes.
#[derive(Default)]
struct Discard {
    at: u64,
    len: u64,
}

impl Write for Discard {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.at += buf.len() as u64;
        self.len = self.len.max(self.at);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl std::io::Seek for Discard {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let at = match to {
            io::SeekFrom::Start(at) => Some(at),
            io::SeekFrom::Current(by) => self.at.checked_add_signed(by),
            io::SeekFrom::End(by) => self.len.checked_add_signed(by),
        };
        self.at = at.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a seek before the start"))?;
        Ok(self.at)
    }
}

/// The new image's time: SOURCE_DATE_EPOCH when set, else now (as mksquashfs stamps it).
fn image_time() -> u32 {
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let time = crate::dkms::date::source_date_epoch().unwrap_or_else(now);
    u32::try_from(time).unwrap_or(0)
}

/// Drops the nodes at `gone` from `reader`'s tree; the owners (uid, gid) each had. An entry
/// left whose directory went is an error: the command removed a directory of which it saw only
/// part.
fn drop_nodes(reader: &mut FilesystemReader, gone: &HashSet<String>) -> io::Result<HashMap<String, (u32, u32)>> {
    let mut owners = HashMap::new();
    reader.root.nodes.retain(|node| {
        let Some(name) = normalize(node.fullpath.as_os_str().as_encoded_bytes()) else { return true };
        let drop = gone.contains(&name);
        if drop {
            owners.insert(name, (node.header.uid, node.header.gid));
        }
        !drop
    });
    let dirs: BTreeSet<String> = reader
        .files()
        .filter(|n| matches!(n.inner, InnerNode::Dir(_)))
        .filter_map(|n| normalize(n.fullpath.as_os_str().as_encoded_bytes()))
        .collect();
    for node in reader.files() {
        let Some(name) = normalize(node.fullpath.as_os_str().as_encoded_bytes()) else { continue };
        if let Some((parent, _)) = name.rsplit_once('/') {
            if !dirs.contains(parent) {
                return Err(invalid(format!("{parent} was removed while it still holds {name}")));
            }
        }
    }
    Ok(owners)
}

/// Adds the entry `name` of `dir` to `writer`: owned by `owner` (uid, gid), with its mode and
/// the mtime written entries get.
fn push(writer: &mut FilesystemWriter, dir: &Path, name: &str, owner: (u32, u32)) -> io::Result<()> {
    let file = dir.join(name);
    let meta = std::fs::symlink_metadata(&file)?;
    let mtime = u32::try_from(written_mtime(&meta)).unwrap_or(0);
    let header = NodeHeader::new((meta.mode() & 0o7777) as u16, owner.0, owner.1, mtime);
    let pushed = if meta.is_dir() {
        writer.push_dir(name, header)
    } else if meta.file_type().is_symlink() {
        writer.push_symlink(std::fs::read_link(&file)?, name, header)
    } else if meta.is_file() {
        writer.push_file_from_path(&file, name, header)
    } else {
        return Err(io::Error::other(format!("{name} is a kind of entry xdkms does not write into squashfs images")));
    };
    pushed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {}", describe(e))))
}
