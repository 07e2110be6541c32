//! erofs images: the entries a command needs read out of the image's inodes, and a new image
//! made from a copy of the old one with the command's changes appended: new inodes and data
//! after the old end, each changed directory's inode rewritten in its own slot to point at its
//! new entries. Every inode and data block the command did not touch keeps its bytes and its
//! place (compressed files stay as mkfs.erofs compressed them), and so do the superblock's
//! settings (block size, compression configuration, features, UUID, label, build time).
//!
//! Why appending: erofs metadata is addressed by inode number (a slot 32 bytes into the
//! metadata area) and directories name children by number, so an image can grow new inodes
//! past its end without moving any old one; a directory whose entries change keeps its number
//! (its slot holds at least the inode and xattrs it had), so no ancestor changes. The space an
//! edit leaves unreachable (a replaced file's old inode and data, a directory's old entries)
//! stays in the image until it is made again with mkfs.erofs.
//!
//! Files are read plain, inline, chunk-based or lz4 compressed (erofs_compressed.rs); what a
//! command writes is stored plain.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::{erofs_compressed, needed, written_mtime, Change, Entry, Selection};

/// Where the superblock starts, its magic number, and how much of it xdkms reads.
const SUPER_OFFSET: u64 = 1024;
const MAGIC: u32 = 0xE0F5_E1E2;
const SUPER_LEN: usize = 128;
/// Inode slots are 32 bytes: an inode number is its offset into the metadata area / 32.
const SLOT: u64 = 32;
const COMPACT_LEN: u64 = 32;
const EXTENDED_LEN: u64 = 64;
/// Data layouts (i_format bits 1..3).
const FLAT_PLAIN: u16 = 0;
const COMPRESSED_FULL: u16 = 1;
const FLAT_INLINE: u16 = 2;
const COMPRESSED_COMPACT: u16 = 3;
const CHUNK_BASED: u16 = 4;
/// A directory entry's fixed part: nid (8), name offset (2), file type (1), reserved (1).
const DIRENT_LEN: usize = 12;
/// Directory entry file types.
const FT_REG: u8 = 1;
const FT_DIR: u8 = 2;
const FT_SYMLINK: u8 = 7;
/// superblock feature_incompat: lz4 clusters end at their cluster's end, zero padded before.
const INCOMPAT_ZERO_PADDING: u32 = 0x1;
/// A chunk index entry that maps no block (a hole).
const NULL_ADDR: u32 = u32::MAX;
/// superblock feature_compat: the superblock carries a crc32c.
const COMPAT_SB_CHKSUM: u32 = 0x1;
/// superblock feature_incompat bits xdkms knows how the image is laid out with: zero padding,
/// compression configurations / big pclusters, chunked files, device table (refused when
/// there are extra devices), ztailpacking, fragments / dedupe, long xattr prefixes.
const KNOWN_INCOMPAT: u32 = 0x7f;

/// True when `head` (the first 2 KiB of a file at least) holds an erofs superblock.
pub fn is_erofs(head: &[u8]) -> bool {
    let at = SUPER_OFFSET as usize;
    head.get(at..at + 4).is_some_and(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]) == MAGIC)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn u16_at(raw: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([raw[at], raw[at + 1]])
}

fn u32_at(raw: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]])
}

fn u64_at(raw: &[u8], at: usize) -> u64 {
    u64::from(u32_at(raw, at)) | (u64::from(u32_at(raw, at + 4)) << 32)
}

/// The superblock as stored, with the fields xdkms reads.
#[derive(Debug, Clone)]
struct Superblock {
    /// The block holding it, from the superblock's start to the block's end (what its
    /// checksum covers).
    raw: Vec<u8>,
    block_bits: u32,
    root_nid: u64,
    inos: u64,
    blocks: u32,
    meta_blkaddr: u32,
    feature_compat: u32,
}

impl Superblock {
    fn block_size(&self) -> u64 {
        1 << self.block_bits
    }

    /// Where inode `nid` starts.
    fn inode_at(&self, nid: u64) -> Option<u64> {
        (u64::from(self.meta_blkaddr) << self.block_bits).checked_add(nid.checked_mul(SLOT)?)
    }
}

/// How many bytes of the superblock's block its checksum covers (erofs-utils' rule: from the
/// superblock to the block's end, or a whole block when blocks are no bigger than its offset).
fn checksummed_len(block_size: u64) -> u64 {
    if block_size > SUPER_OFFSET {
        block_size - SUPER_OFFSET
    } else {
        block_size
    }
}

/// The checksum the kernel verifies: crc32c seeded with ~0 and not inverted at the end, over
/// the superblock's block with the checksum field zeroed.
fn checksum(raw: &[u8]) -> u32 {
    let mut zeroed = raw.to_vec();
    zeroed[4..8].fill(0);
    super::kernel_crc32c(&[&zeroed])
}

/// The superblock of the image in `file` (`len` bytes long), or why xdkms cannot work on it.
fn read_superblock(file: &File, len: u64) -> io::Result<std::result::Result<Superblock, String>> {
    let mut head = [0u8; SUPER_LEN];
    match file.read_exact_at(&mut head, SUPER_OFFSET) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Ok(Err("truncated: no whole erofs superblock".into()))
        }
        other => other?,
    }
    let block_bits = u32::from(head[12]);
    if !(9..=16).contains(&block_bits) {
        return Ok(Err(format!("corrupt erofs superblock: block size 2^{block_bits}")));
    }
    let block_size = 1u64 << block_bits;
    let mut raw = vec![0u8; checksummed_len(block_size) as usize];
    match file.read_exact_at(&mut raw, SUPER_OFFSET) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Ok(Err("truncated: no whole erofs superblock block".into()))
        }
        other => other?,
    }
    let superblock = Superblock {
        block_bits,
        root_nid: u64::from(u16_at(&raw, 14)),
        inos: u64_at(&raw, 16),
        blocks: u32_at(&raw, 36),
        meta_blkaddr: u32_at(&raw, 40),
        feature_compat: u32_at(&raw, 8),
        raw,
    };
    Ok(refusal_of(&superblock, len).map_or(Ok(superblock), Err))
}

/// Why xdkms cannot work on an image with `superblock` that is `len` bytes long, if it cannot.
fn refusal_of(superblock: &Superblock, len: u64) -> Option<String> {
    let raw = &superblock.raw;
    if superblock.feature_compat & COMPAT_SB_CHKSUM != 0 && checksum(raw) != u32_at(raw, 4) {
        return Some("corrupt erofs superblock: its checksum does not match".into());
    }
    let incompat = u32_at(raw, 80);
    if incompat & !KNOWN_INCOMPAT != 0 {
        return Some(format!(
            "its erofs features {:#x} are newer than xdkms knows: make it with an erofs-utils of 2023 or older",
            incompat & !KNOWN_INCOMPAT
        ));
    }
    if u16_at(raw, 86) != 0 {
        return Some("its data lies on extra devices (mkfs.erofs --blobdev): xdkms opens one-file images".into());
    }
    if raw[90] != 0 {
        return Some("its directory blocks differ in size from its blocks: not an image xdkms can edit".into());
    }
    let needs = u64::from(superblock.blocks) << superblock.block_bits;
    if needs > len {
        return Some(format!("truncated: its superblock says {needs} bytes, the file has {len}"));
    }
    None
}

/// Why xdkms cannot work on the erofs image at `path`, or None when it can.
pub fn refusal(path: &Path) -> io::Result<Option<String>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    Ok(read_superblock(&file, len)?.err())
}

/// One inode as read from its slot.
#[derive(Debug, Clone)]
struct Inode {
    nid: u64,
    /// Where its slot starts in the image.
    at: u64,
    extended: bool,
    layout: u16,
    mode: u16,
    nlink: u32,
    size: u64,
    /// raw_blkaddr (flat layouts) or the chunk format (chunk-based).
    data_word: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    /// The extended attributes' body after the inode, as stored (shared ids are image-wide).
    xattrs: Vec<u8>,
}

impl Inode {
    fn header_len(&self) -> u64 {
        if self.extended {
            EXTENDED_LEN
        } else {
            COMPACT_LEN
        }
    }

    /// Where what follows the inode and its xattrs starts (inline data, indexes).
    fn body_at(&self) -> u64 {
        self.at + self.header_len() + self.xattrs.len() as u64
    }

    fn file_type(&self) -> u32 {
        u32::from(self.mode) & 0o170000
    }
}

/// An erofs image opened for reading.
struct Image {
    file: File,
    len: u64,
    superblock: Superblock,
}

impl Image {
    fn open(path: &Path) -> io::Result<Image> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let superblock = read_superblock(&file, len)?.map_err(invalid)?;
        Ok(Image { file, len, superblock })
    }

    /// `len` bytes at `at`, refused when they lie past the image's end.
    fn read(&self, at: u64, len: u64, what: &dyn Fn() -> String) -> io::Result<Vec<u8>> {
        // Nothing to read: where it would be does not matter (an inline-only file's block
        // address is unset).
        if len == 0 {
            return Ok(Vec::new());
        }
        let end = at.checked_add(len).filter(|end| *end <= self.len);
        if end.is_none() {
            return Err(invalid(format!("corrupt: {} lies past the image's end", what())));
        }
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, at)?;
        Ok(buf)
    }

    fn inode(&self, nid: u64) -> io::Result<Inode> {
        let what = || format!("inode {nid}");
        let at =
            self.superblock.inode_at(nid).ok_or_else(|| invalid(format!("corrupt: {} is out of range", what())))?;
        let compact = self.read(at, COMPACT_LEN, &what)?;
        let format = u16_at(&compact, 0);
        let extended = format & 1 == 1;
        let raw = if extended { self.read(at, EXTENDED_LEN, &what)? } else { compact };
        let xattr_count = u64::from(u16_at(&raw, 2));
        let xattr_len = if xattr_count == 0 { 0 } else { 12 + (xattr_count - 1) * 4 };
        let header_len = if extended { EXTENDED_LEN } else { COMPACT_LEN };
        let xattrs = self.read(at + header_len, xattr_len, &what)?;
        // What the two inode versions store differently: link count, size, owners, time.
        let (nlink, size, uid, gid, mtime) = if extended {
            (u32_at(&raw, 44), u64_at(&raw, 8), u32_at(&raw, 24), u32_at(&raw, 28), u64_at(&raw, 32))
        } else {
            let (uid, gid) = (u32::from(u16_at(&raw, 24)), u32::from(u16_at(&raw, 26)));
            // Compact inodes have no time of their own: the image's build time.
            (u32::from(u16_at(&raw, 6)), u64::from(u32_at(&raw, 8)), uid, gid, u64_at(&self.superblock.raw, 24))
        };
        let inode = Inode {
            nid,
            at,
            extended,
            layout: (format >> 1) & 7,
            mode: u16_at(&raw, 4),
            nlink,
            size,
            data_word: u32_at(&raw, 16),
            uid,
            gid,
            mtime,
            xattrs,
        };
        Ok(inode)
    }

    /// The whole content of `inode` (`name` for messages).
    fn data(&self, inode: &Inode, name: &str) -> io::Result<Vec<u8>> {
        let what = || format!("{name} (inode {})", inode.nid);
        if matches!(inode.layout, COMPRESSED_FULL | COMPRESSED_COMPACT) {
            return self.compressed(inode, &what);
        }
        // Stored as it is: no bigger than the image.
        if inode.size > self.len {
            return Err(invalid(format!("corrupt: {} is {} bytes, more than the image", what(), inode.size)));
        }
        let block = self.superblock.block_size();
        let start = u64::from(inode.data_word) << self.superblock.block_bits;
        match inode.layout {
            FLAT_PLAIN => self.read(start, inode.size, &what),
            FLAT_INLINE => {
                // All blocks but the last at raw_blkaddr, the last one after the inode.
                let whole = inode.size.div_ceil(block).saturating_sub(1) * block;
                let mut data = self.read(start, whole, &what)?;
                data.extend(self.read(inode.body_at(), inode.size - whole, &what)?);
                Ok(data)
            }
            CHUNK_BASED => self.chunked(inode, &what),
            other => Err(invalid(format!("corrupt: {} has data layout {other}", what()))),
        }
    }

    /// The content of a compressed file.
    fn compressed(&self, inode: &Inode, what: &dyn Fn() -> String) -> io::Result<Vec<u8>> {
        let geometry = erofs_compressed::Geometry {
            block_bits: self.superblock.block_bits,
            zero_padding: u32_at(&self.superblock.raw, 80) & INCOMPAT_ZERO_PADDING != 0,
            image_len: self.len,
        };
        let file = erofs_compressed::File {
            body_at: inode.body_at(),
            size: inode.size,
            compact: inode.layout == COMPRESSED_COMPACT,
        };
        erofs_compressed::read(&geometry, &file, &|at, len| self.read(at, len, what), what)
    }

    /// The content of a chunk-based file: its chunk index, then each chunk (or a hole).
    fn chunked(&self, inode: &Inode, what: &dyn Fn() -> String) -> io::Result<Vec<u8>> {
        let format = inode.data_word as u16;
        let unit: u64 = if format & 0x20 != 0 { 8 } else { 4 };
        let chunk_bits = self.superblock.block_bits + u32::from(format & 0x1f);
        if chunk_bits > 40 {
            return Err(invalid(format!("corrupt: {} has chunks of 2^{chunk_bits} bytes", what())));
        }
        let chunk = 1u64 << chunk_bits;
        let chunks = inode.size.div_ceil(chunk);
        let index_at = inode.body_at().next_multiple_of(unit);
        let index = self.read(index_at, chunks * unit, what)?;
        let mut data = Vec::with_capacity(inode.size as usize);
        for n in 0..chunks {
            let entry = (n * unit) as usize;
            let blkaddr = if unit == 8 { u32_at(&index, entry + 4) } else { u32_at(&index, entry) };
            let len = chunk.min(inode.size - n * chunk);
            if blkaddr == NULL_ADDR {
                data.resize(data.len() + len as usize, 0);
            } else {
                data.extend(self.read(u64::from(blkaddr) << self.superblock.block_bits, len, what)?);
            }
        }
        Ok(data)
    }

    /// The entries of directory `inode` but `.` and `..`: name, nid, file type.
    fn entries(&self, inode: &Inode, name: &str) -> io::Result<Vec<(Vec<u8>, u64, u8)>> {
        let data = self.data(inode, name)?;
        let block = self.superblock.block_size() as usize;
        let corrupt = || invalid(format!("corrupt: directory {name} (inode {}) has a bad entry block", inode.nid));
        let mut entries = Vec::new();
        for start in (0..data.len()).step_by(block) {
            let chunk = &data[start..data.len().min(start + block)];
            if chunk.len() < DIRENT_LEN {
                return Err(corrupt());
            }
            let first_name = usize::from(u16_at(chunk, 8));
            if first_name < DIRENT_LEN || first_name % DIRENT_LEN != 0 || first_name > chunk.len() {
                return Err(corrupt());
            }
            let count = first_name / DIRENT_LEN;
            for i in 0..count {
                let at = i * DIRENT_LEN;
                let name_start = usize::from(u16_at(chunk, at + 8));
                let name_end =
                    if i + 1 < count { usize::from(u16_at(chunk, at + DIRENT_LEN + 8)) } else { chunk.len() };
                if name_start > name_end || name_end > chunk.len() {
                    return Err(corrupt());
                }
                let raw_name = &chunk[name_start..name_end];
                // The last name of a block may be followed by NUL padding.
                let entry_name = raw_name.split(|b| *b == 0).next().unwrap_or_default();
                if entry_name.is_empty() {
                    return Err(corrupt());
                }
                if entry_name != b"." && entry_name != b".." {
                    entries.push((entry_name.to_vec(), u64_at(chunk, at), chunk[at + 10]));
                }
            }
        }
        Ok(entries)
    }

    /// Every entry of the image by normalized path, with its nid, directories walked from the
    /// root (each at most once: a directory reached twice is corrupt).
    fn tree(&self) -> io::Result<BTreeMap<String, (u64, Entry)>> {
        let mut tree = BTreeMap::new();
        let mut seen = BTreeSet::from([self.superblock.root_nid]);
        let mut pending = vec![(String::new(), self.superblock.root_nid)];
        while let Some((dir, nid)) = pending.pop() {
            let inode = self.inode(nid)?;
            let shown = if dir.is_empty() { "/" } else { dir.as_str() };
            for (name, child, file_type) in self.entries(&inode, shown)? {
                if name.contains(&b'/') {
                    return Err(invalid(format!("corrupt: directory {shown} holds a name with a slash")));
                }
                let name = String::from_utf8_lossy(&name);
                let path = if dir.is_empty() { name.into_owned() } else { format!("{dir}/{name}") };
                let entry = match file_type {
                    FT_DIR => {
                        if !seen.insert(child) {
                            return Err(invalid(format!("corrupt: directory {path} is reached twice")));
                        }
                        pending.push((path.clone(), child));
                        Entry::Dir
                    }
                    FT_SYMLINK => {
                        let target = self.data(&self.inode(child)?, &path)?;
                        Entry::Symlink(String::from_utf8_lossy(&target).into_owned())
                    }
                    _ => Entry::Other,
                };
                tree.insert(path, (child, entry));
            }
        }
        Ok(tree)
    }
}

/// Extracts what `wanted` needs from the image at `path` into `dir` (modes and file mtimes
/// kept, owners not; device nodes, fifos and sockets left out: no command reads them).
pub fn extract(path: &Path, wanted: Selection, dir: &Path) -> io::Result<()> {
    let image = Image::open(path)?;
    let tree = image.tree()?;
    let entries: HashMap<String, Entry> = tree.iter().map(|(p, (_, e))| (p.clone(), e.clone())).collect();
    let mut dirs = Vec::new();
    for name in needed(&entries, wanted) {
        let Some((nid, entry)) = tree.get(&name) else { continue };
        let inode = image.inode(*nid)?;
        let to = dir.join(&name);
        let mode = u32::from(inode.mode) & 0o7777;
        match entry {
            Entry::Dir => {
                std::fs::create_dir_all(&to)?;
                dirs.push((to, mode));
            }
            Entry::Symlink(target) => {
                // Extracted already (links followed from part to part meet): the image's wins.
                let _ = std::fs::remove_file(&to);
                std::os::unix::fs::symlink(target, &to)?;
            }
            Entry::Other if inode.file_type() == 0o100000 => {
                let mut out = File::create(&to)?;
                out.write_all(&image.data(&inode, &name)?)?;
                out.set_permissions(std::fs::Permissions::from_mode(mode))?;
                out.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(inode.mtime))?;
            }
            Entry::Other => {}
        }
    }
    // Modes last: a read-only directory is filled first.
    for (dir, mode) in dirs.into_iter().rev() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Where a directory entry points: an inode of the image, or one the edit adds (by index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Old(u64),
    New(usize),
}

/// A directory's entries as the edit leaves them: name, where it points, file type.
type Listing = BTreeMap<Vec<u8>, (Target, u8)>;

/// What a new inode holds.
#[derive(Debug)]
enum Content {
    /// A file or symlink: the scratch path its bytes (or target) come from.
    Path(std::path::PathBuf),
    /// A directory: its entries.
    Dir(Listing),
}

/// An inode the edit adds past the image's end.
#[derive(Debug)]
struct NewInode {
    /// Its path in the image, and its parent's target (for `..`).
    path: String,
    parent: Target,
    mode: u16,
    uid: u32,
    gid: u32,
    mtime: u64,
    /// Extended attributes' body carried over from the inode it replaces.
    xattrs: Vec<u8>,
    content: Content,
}

/// A directory of the image whose entries change: rewritten in its own slot.
#[derive(Debug)]
struct ChangedDir {
    inode: Inode,
    parent: u64,
    entries: Listing,
    /// Subdirectories added less subdirectories removed (its link count follows).
    subdirs_delta: i64,
}

/// The edit of an erofs image: what is added past its end and which directories change.
#[derive(Debug, Default)]
struct Plan {
    new: Vec<NewInode>,
    changed: BTreeMap<String, ChangedDir>,
    /// Paths of new inodes by index (to find a new directory's slot).
    new_by_path: HashMap<String, usize>,
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// The directory entry file type of `meta`; None for what a command never writes (devices,
/// fifos, sockets).
fn file_type_of(meta: &std::fs::Metadata) -> Option<u8> {
    let kind = meta.file_type();
    if kind.is_dir() {
        Some(FT_DIR)
    } else if kind.is_symlink() {
        Some(FT_SYMLINK)
    } else if kind.is_file() {
        Some(FT_REG)
    } else {
        None
    }
}

impl Plan {
    fn new(image: &Image, tree: &BTreeMap<String, (u64, Entry)>, dir: &Path, changes: &[Change]) -> io::Result<Plan> {
        let mut plan = Plan::default();
        let removed: BTreeSet<&str> =
            changes.iter().filter_map(|c| if let Change::Removed(p) = c { Some(p.as_str()) } else { None }).collect();
        // Parents first: a new directory is in place before its entries are.
        for change in changes {
            match change {
                Change::Added(path) | Change::Modified(path) => plan.add(image, tree, dir, path)?,
                Change::Removed(path) => plan.remove(image, tree, &removed, path)?,
            }
        }
        Ok(plan)
    }

    /// The target of the directory at `path` (the root is "").
    fn target_of(&self, tree: &BTreeMap<String, (u64, Entry)>, root: u64, path: &str) -> io::Result<Target> {
        if path.is_empty() {
            return Ok(Target::Old(root));
        }
        if let Some(index) = self.new_by_path.get(path) {
            return Ok(Target::New(*index));
        }
        match tree.get(path) {
            Some((nid, Entry::Dir)) => Ok(Target::Old(*nid)),
            _ => Err(invalid(format!("{path} is not a directory of the image"))),
        }
    }

    /// The entries of the directory at `path`, to be changed: a new directory's, or the
    /// image's directory's (read on first use).
    fn listing(
        &mut self,
        image: &Image,
        tree: &BTreeMap<String, (u64, Entry)>,
        path: &str,
    ) -> io::Result<&mut Listing> {
        let root = image.superblock.root_nid;
        match self.target_of(tree, root, path)? {
            Target::New(index) => match &mut self.new[index].content {
                Content::Dir(listing) => Ok(listing),
                Content::Path(_) => Err(invalid(format!("{path} is not a directory"))),
            },
            Target::Old(nid) => {
                if !self.changed.contains_key(path) {
                    let inode = image.inode(nid)?;
                    let shown = if path.is_empty() { "/" } else { path };
                    let entries = image
                        .entries(&inode, shown)?
                        .into_iter()
                        .map(|(name, child, file_type)| (name, (Target::Old(child), file_type)))
                        .collect();
                    let (parent_path, _) = split(path);
                    let parent = if path.is_empty() {
                        root
                    } else {
                        match self.target_of(tree, root, parent_path)? {
                            Target::Old(parent) => parent,
                            Target::New(_) => return Err(invalid(format!("{path}: its directory is new"))),
                        }
                    };
                    self.changed.insert(path.to_string(), ChangedDir { inode, parent, entries, subdirs_delta: 0 });
                }
                let changed = self.changed.get_mut(path).ok_or_else(|| invalid(format!("{path} vanished")))?;
                Ok(&mut changed.entries)
            }
        }
    }

    /// `path` added or replaced with what the scratch directory `dir` holds there.
    fn add(&mut self, image: &Image, tree: &BTreeMap<String, (u64, Entry)>, dir: &Path, path: &str) -> io::Result<()> {
        let scratch = dir.join(path);
        let meta = std::fs::symlink_metadata(&scratch)?;
        let file_type = file_type_of(&meta)
            .ok_or_else(|| invalid(format!("{path}: xdkms writes files, directories and symlinks only")))?;
        let (uid, gid, xattrs) = match tree.get(path) {
            Some((nid, _)) => {
                let old = image.inode(*nid)?;
                (old.uid, old.gid, old.xattrs)
            }
            None => (0, 0, Vec::new()),
        };
        let (parent_path, name) = split(path);
        let parent = self.target_of(tree, image.superblock.root_nid, parent_path)?;
        let content = if file_type == FT_DIR { Content::Dir(Listing::new()) } else { Content::Path(scratch) };
        let index = self.new.len();
        self.new.push(NewInode {
            path: path.to_string(),
            parent,
            mode: (meta.mode() & 0o177777) as u16,
            uid,
            gid,
            mtime: u64::try_from(written_mtime(&meta)).unwrap_or(0),
            xattrs,
            content,
        });
        self.new_by_path.insert(path.to_string(), index);
        let replaced =
            self.listing(image, tree, parent_path)?.insert(name.as_bytes().to_vec(), (Target::New(index), file_type));
        let was_dir = replaced.is_some_and(|(_, t)| t == FT_DIR);
        self.count_subdir(parent_path, i64::from(file_type == FT_DIR) - i64::from(was_dir));
        Ok(())
    }

    /// `path` gone from its directory. A directory must go with everything the image holds
    /// under it: the command removed it having seen all of it.
    fn remove(
        &mut self,
        image: &Image,
        tree: &BTreeMap<String, (u64, Entry)>,
        removed: &BTreeSet<&str>,
        path: &str,
    ) -> io::Result<()> {
        let (parent_path, name) = split(path);
        if removed.contains(parent_path) {
            return Ok(());
        }
        let prefix = format!("{path}/");
        if let Some(left) = tree.keys().find(|p| p.starts_with(&prefix) && !removed.contains(p.as_str())) {
            return Err(invalid(format!("{path} was removed while it still holds {left}")));
        }
        let gone = self.listing(image, tree, parent_path)?.remove(name.as_bytes());
        if gone.is_some_and(|(_, t)| t == FT_DIR) {
            self.count_subdir(parent_path, -1);
        }
        Ok(())
    }

    fn count_subdir(&mut self, parent: &str, delta: i64) {
        if let Some(changed) = self.changed.get_mut(parent) {
            changed.subdirs_delta += delta;
        }
    }
}

/// A directory's entry blocks for `entries` (`.` and `..` included), names sorted byte-wise
/// across and within blocks as the kernel's lookup expects; and its size (the last block
/// counts up to its last name).
fn dir_blocks(entries: &[(Vec<u8>, u64, u8)], block: usize) -> io::Result<(Vec<u8>, u64)> {
    let mut sorted: Vec<&(Vec<u8>, u64, u8)> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut groups: Vec<Vec<&(Vec<u8>, u64, u8)>> = vec![Vec::new()];
    let mut used = 0;
    for entry in sorted {
        let needs = DIRENT_LEN + entry.0.len();
        if needs > block {
            return Err(invalid(format!("the name {} is too long for a block", String::from_utf8_lossy(&entry.0))));
        }
        if used + needs > block {
            groups.push(Vec::new());
            used = 0;
        }
        used += needs;
        if let Some(group) = groups.last_mut() {
            group.push(entry);
        }
    }
    let mut data = Vec::new();
    let mut size = 0;
    for group in &groups {
        let start = data.len();
        let mut name_at = group.len() * DIRENT_LEN;
        for (name, nid, file_type) in group.iter().copied() {
            data.extend(nid.to_le_bytes());
            data.extend((name_at as u16).to_le_bytes());
            data.extend([*file_type, 0]);
            name_at += name.len();
        }
        for (name, _, _) in group.iter().copied() {
            data.extend(name);
        }
        size = data.len() as u64;
        data.resize(start + block, 0);
    }
    Ok((data, size))
}

/// The entries of a directory with inode number `own` in `parent`, `.` and `..` included.
fn dir_entries(listing: &Listing, own: u64, parent: u64, nid_of: &dyn Fn(Target) -> u64) -> Vec<(Vec<u8>, u64, u8)> {
    let mut entries: Vec<(Vec<u8>, u64, u8)> =
        listing.iter().map(|(name, (target, file_type))| (name.clone(), nid_of(*target), *file_type)).collect();
    entries.push((b".".to_vec(), own, FT_DIR));
    entries.push((b"..".to_vec(), parent, FT_DIR));
    entries
}

/// How many of `listing`'s entries are directories.
fn subdirs(listing: &Listing) -> u32 {
    listing.values().filter(|(_, file_type)| *file_type == FT_DIR).count() as u32
}

/// The content of scratch entry `path` (a symlink's target) written at `at`; its length.
fn write_content(path: &Path, out: &File, at: u64) -> io::Result<u64> {
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        let target = std::fs::read_link(path)?;
        out.write_all_at(target.as_os_str().as_bytes(), at)?;
        return Ok(target.as_os_str().len() as u64);
    }
    let mut input = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        let got = match input.read(&mut buf) {
            Ok(0) => return Ok(written),
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all_at(&buf[..got], at + written)?;
        written += got as u64;
    }
}

/// An extended inode (its own time and 32-bit owners) with plain data at `blkaddr`.
fn inode_bytes(inode: &NewInode, size: u64, blkaddr: u32, ino: u32, nlink: u32) -> Vec<u8> {
    let mut raw = vec![0u8; EXTENDED_LEN as usize];
    raw[0..2].copy_from_slice(&(1 | (FLAT_PLAIN << 1)).to_le_bytes());
    let xattr_count = if inode.xattrs.is_empty() { 0 } else { (inode.xattrs.len() - 12) / 4 + 1 };
    raw[2..4].copy_from_slice(&(xattr_count as u16).to_le_bytes());
    raw[4..6].copy_from_slice(&inode.mode.to_le_bytes());
    raw[8..16].copy_from_slice(&size.to_le_bytes());
    raw[16..20].copy_from_slice(&blkaddr.to_le_bytes());
    raw[20..24].copy_from_slice(&ino.to_le_bytes());
    raw[24..28].copy_from_slice(&inode.uid.to_le_bytes());
    raw[28..32].copy_from_slice(&inode.gid.to_le_bytes());
    raw[32..40].copy_from_slice(&inode.mtime.to_le_bytes());
    raw[44..48].copy_from_slice(&nlink.to_le_bytes());
    raw.extend(&inode.xattrs);
    raw
}

impl Plan {
    /// Writes the edit into `out`, a copy of `image`.
    fn write(&self, image: &Image, out: &File) -> io::Result<()> {
        let superblock = &image.superblock;
        let (bits, block) = (superblock.block_bits, superblock.block_size());
        let meta_base = u64::from(superblock.meta_blkaddr) << bits;
        let old_end = image.len.max(u64::from(superblock.blocks) << bits).next_multiple_of(block);
        // The new inodes first, each in whole slots, then their data and the changed
        // directories' entries, block by block.
        let (mut inode_at, mut nids) = (Vec::new(), Vec::new());
        let mut at = old_end;
        for inode in &self.new {
            inode_at.push(at);
            nids.push((at - meta_base) / SLOT);
            at += (EXTENDED_LEN + inode.xattrs.len() as u64).next_multiple_of(SLOT);
        }
        let nid_of = |target: Target| match target {
            Target::Old(nid) => nid,
            Target::New(index) => nids[index],
        };
        let blkaddr = |at: u64| {
            u32::try_from(at >> bits).map_err(|_| invalid("the image would outgrow erofs' 2^32 blocks".into()))
        };
        let mut data_at = at.next_multiple_of(block);
        for (index, inode) in self.new.iter().enumerate() {
            let (size, nlink) = match &inode.content {
                Content::Dir(listing) => {
                    let entries = dir_entries(listing, nids[index], nid_of(inode.parent), &nid_of);
                    let (bytes, size) = dir_blocks(&entries, block as usize)?;
                    out.write_all_at(&bytes, data_at)?;
                    (size, 2 + subdirs(listing))
                }
                Content::Path(path) => (write_content(path, out, data_at).map_err(|e| named(&inode.path, e))?, 1),
            };
            let start = if size == 0 { 0 } else { blkaddr(data_at)? };
            let ino = u32::try_from(superblock.inos + index as u64 + 1).unwrap_or(u32::MAX);
            out.write_all_at(&inode_bytes(inode, size, start, ino, nlink), inode_at[index])?;
            data_at += size.next_multiple_of(block);
        }
        // The superblock's block as it ends up: its checksum covers the inodes that share it.
        let mut raw = superblock.raw.clone();
        for changed in self.changed.values() {
            let entries = dir_entries(&changed.entries, changed.inode.nid, changed.parent, &nid_of);
            let (bytes, size) = dir_blocks(&entries, block as usize)?;
            out.write_all_at(&bytes, data_at)?;
            let inode = moved_dir_inode(image, changed, size, blkaddr(data_at)?)?;
            out.write_all_at(&inode, changed.inode.at)?;
            patch(&mut raw, SUPER_OFFSET, &inode, changed.inode.at);
            data_at += bytes.len() as u64;
        }
        out.set_len(data_at)?;
        raw[16..24].copy_from_slice(&(superblock.inos + self.new.len() as u64).to_le_bytes());
        raw[36..40].copy_from_slice(&blkaddr(data_at)?.to_le_bytes());
        if superblock.feature_compat & COMPAT_SB_CHKSUM != 0 {
            let sum = checksum(&raw);
            raw[4..8].copy_from_slice(&sum.to_le_bytes());
        }
        out.write_all_at(&raw, SUPER_OFFSET)
    }
}

/// A changed directory's inode as stored, pointing at its new entries (plain data at
/// `blkaddr`, `size` bytes) with its link count following its subdirectories; everything else
/// (owner, mode, time, xattrs) as it was.
fn moved_dir_inode(image: &Image, changed: &ChangedDir, size: u64, blkaddr: u32) -> io::Result<Vec<u8>> {
    {
        let inode = &changed.inode;
        let mut raw = image.read(inode.at, inode.header_len(), &|| format!("inode {}", inode.nid))?;
        let format = (u16_at(&raw, 0) & !0b1110) | (FLAT_PLAIN << 1);
        raw[0..2].copy_from_slice(&format.to_le_bytes());
        raw[16..20].copy_from_slice(&blkaddr.to_le_bytes());
        let nlink = (i64::from(inode.nlink) + changed.subdirs_delta).max(2);
        if inode.extended {
            raw[8..16].copy_from_slice(&size.to_le_bytes());
            raw[44..48].copy_from_slice(&(nlink as u32).to_le_bytes());
        } else {
            let size = u32::try_from(size).map_err(|_| invalid("a directory outgrew a compact inode".into()))?;
            raw[8..12].copy_from_slice(&size.to_le_bytes());
            raw[6..8].copy_from_slice(&u16::try_from(nlink).unwrap_or(u16::MAX).to_le_bytes());
        }
        Ok(raw)
    }
}

/// `bytes` written at `at` applied to `buf`, a copy of the image's bytes from `buf_at` on.
fn patch(buf: &mut [u8], buf_at: u64, bytes: &[u8], at: u64) {
    let buf_end = buf_at + buf.len() as u64;
    let (start, end) = (at.max(buf_at), (at + bytes.len() as u64).min(buf_end));
    if start < end {
        let (from, to) = ((start - at) as usize, (start - buf_at) as usize);
        let len = (end - start) as usize;
        buf[to..to + len].copy_from_slice(&bytes[from..from + len]);
    }
}

fn named(path: &str, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{path}: {error}"))
}

/// The image at `path` with `changes` from `dir`: a copy of it beside `dest` with the edit
/// appended, renamed over `dest`.
pub fn rewrite(path: &Path, dest: &Path, dir: &Path, changes: &[Change]) -> io::Result<()> {
    let image = Image::open(path)?;
    let tree = image.tree()?;
    let plan = Plan::new(&image, &tree, dir, changes)?;
    let permissions = std::fs::metadata(path)?.permissions();
    cross::Sysroot::host()?.write_atomic_with(dest, Some(permissions), |file| {
        super::ext4_image::copy_sparse(&mut File::open(path)?, file, image.len)?;
        plan.write(&image, file)
    })
}
