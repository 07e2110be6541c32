//! The safe face of e2fsprogs' libext2fs (through ext4_shim.c): an open filesystem and the
//! operations on its inodes that image roots need. Every `unsafe` of the ext4 support is here.

// The one place xdkms calls C it did not build from Rust: each call is to the shim, with an open
// handle, C strings it owns and out-pointers to locals.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_long, c_void, CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;

/// An inode's attributes (`struct xd_attr` of ext4_shim.c).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Attr {
    /// Type and permission bits, as in `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub links: u32,
    pub size: u64,
    pub mtime: i64,
}

/// The file type bits of an inode's mode (the kernel's, which are POSIX's).
pub const TYPE_MASK: u32 = 0o170000;
pub const TYPE_DIR: u32 = 0o040000;
pub const TYPE_FILE: u32 = 0o100000;
pub const TYPE_SYMLINK: u32 = 0o120000;

/// The root directory's inode.
pub const ROOT: u32 = 2;

/// The longest symlink target read (the kernel's PATH_MAX).
const LONGEST_LINK: usize = 4096;

type EntryFn = unsafe extern "C" fn(*mut c_void, *const c_char, u32, u32) -> c_int;

extern "C" {
    fn xd_error_message(code: c_long) -> *const c_char;
    fn xd_open(path: *const c_char, offset: u64, access: c_int, now: i64, out: *mut *mut c_void) -> c_long;
    fn xd_close(fs: *mut c_void) -> c_long;
    fn xd_size(fs: *mut c_void) -> u64;
    fn xd_block_size(fs: *mut c_void) -> u64;
    fn xd_abandon(fs: *mut c_void);
    fn xd_lookup(fs: *mut c_void, dir: u32, name: *const c_char, ino: *mut u32) -> c_long;
    fn xd_stat(fs: *mut c_void, ino: u32, attr: *mut Attr) -> c_long;
    fn xd_list(fs: *mut c_void, dir: u32, each: EntryFn, context: *mut c_void) -> c_long;
    fn xd_readlink(fs: *mut c_void, ino: u32, buf: *mut c_char, capacity: usize, len: *mut usize) -> c_long;
    fn xd_read_to_fd(fs: *mut c_void, ino: u32, fd: c_int) -> c_long;
    fn xd_read_at(fs: *mut c_void, ino: u32, offset: u64, buf: *mut c_char, len: usize, got: *mut usize) -> c_long;
    fn xd_write_from_fd(fs: *mut c_void, ino: u32, fd: c_int) -> c_long;
    fn xd_touch(fs: *mut c_void, ino: u32, mode: u32, mtime: i64) -> c_long;
    fn xd_create(fs: *mut c_void, dir: u32, name: *const c_char, attr: *const Attr, out: *mut u32) -> c_long;
    fn xd_mkdir(fs: *mut c_void, dir: u32, name: *const c_char, attr: *const Attr, out: *mut u32) -> c_long;
    fn xd_symlink(fs: *mut c_void, dir: u32, name: *const c_char, target: *const c_char, attr: *const Attr) -> c_long;
    fn xd_remove(fs: *mut c_void, dir: u32, name: *const c_char) -> c_long;
    fn xd_stage_new() -> *mut c_void;
    fn xd_stage_free(stage: *mut c_void);
    fn xd_stage_capacity(stage: *const c_void) -> usize;
    fn xd_stage_slot(stage: *const c_void, index: usize, block: *mut u64, was_free: *mut c_int) -> *const u8;
    fn xd_open_staged(path: *const c_char, offset: u64, now: i64, stage: *mut c_void, out: *mut *mut c_void) -> c_long;
    fn xd_journal_map(fs: *mut c_void, out: *mut u64, capacity: usize, len: *mut usize) -> c_long;
    fn xd_code_block_alloc_fail() -> c_long;
    fn xd_code_inode_alloc_fail() -> c_long;
    fn xd_code_not_found() -> c_long;
    fn xd_code_bad_magic() -> c_long;
}

/// The error libext2fs reported as `code`, with what was being done; a full filesystem is
/// `StorageFull`, a missing superblock `InvalidData`.
fn failure(code: c_long, doing: &str) -> io::Error {
    // SAFETY: xd_error_message returns a static string (com_err's table or the shim's).
    let text = unsafe { CStr::from_ptr(xd_error_message(code)) }.to_string_lossy().into_owned();
    // SAFETY: functions returning constants.
    let (full, bad_magic) = unsafe { ([xd_code_block_alloc_fail(), xd_code_inode_alloc_fail()], xd_code_bad_magic()) };
    if full.contains(&code) {
        let advice = "make the image bigger (resize2fs) and run again";
        return io::Error::new(
            io::ErrorKind::StorageFull,
            format!("{doing}: the filesystem is full ({text}): {advice}"),
        );
    }
    let kind = if code == bad_magic { io::ErrorKind::InvalidData } else { io::ErrorKind::Other };
    io::Error::new(kind, format!("{doing}: {text}"))
}

fn check(code: c_long, doing: impl FnOnce() -> String) -> io::Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(failure(code, &doing()))
    }
}

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{:?} holds a NUL byte", String::from_utf8_lossy(bytes)))
    })
}

/// How a filesystem is opened (the shim's XD_READ, XD_CHECK_WRITABLE, XD_WRITE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read = 0,
    /// Read only, but refused as writing would be (a journal to replay, errors recorded).
    CheckWritable = 1,
    Write = 2,
}

/// Collects one directory entry into the `Vec<(Vec<u8>, u32)>` that `context` points at.
unsafe extern "C" fn collect_entry(context: *mut c_void, name: *const c_char, len: u32, ino: u32) -> c_int {
    // SAFETY: `context` is the Vec `Filesystem::list` handed to xd_list, alive for the call;
    // `name` points at `len` bytes of a directory block that live for this call.
    let (entries, bytes) = unsafe {
        (&mut *(context as *mut Vec<(Vec<u8>, u32)>), std::slice::from_raw_parts(name as *const u8, len as usize))
    };
    entries.push((bytes.to_vec(), ino));
    0
}

/// An open ext2/3/4 filesystem. Dropped without [`Filesystem::close`], a writable one's
/// changes are not written out (the copy they went into is its caller's to remove).
pub struct Filesystem {
    raw: NonNull<c_void>,
}

impl Filesystem {
    /// The filesystem in the file at `path`, `offset` bytes in; writable only when clean (no
    /// journal to replay, no errors recorded). Times libext2fs stamps are SOURCE_DATE_EPOCH's
    /// when that is set.
    pub fn open(path: &Path, offset: u64, access: Access) -> io::Result<Filesystem> {
        let name = c_string(path.as_os_str().as_bytes())?;
        let now = crate::dkms::date::source_date_epoch().unwrap_or(0);
        let mut raw = std::ptr::null_mut();
        // SAFETY: a C string and an out-pointer to a local.
        let code = unsafe { xd_open(name.as_ptr(), offset, access as c_int, now, &mut raw) };
        Filesystem::opened(path, offset, code, raw)
    }

    /// The clean filesystem in the file at `path`, `offset` bytes in, opened to write through
    /// a [`Stage`]: blocks the image has free are written to it at once, every other block is
    /// kept in the stage, for the caller to commit (see [`Staged::close`]).
    pub fn open_staged(path: &Path, offset: u64) -> io::Result<Staged> {
        let name = c_string(path.as_os_str().as_bytes())?;
        let now = crate::dkms::date::source_date_epoch().unwrap_or(0);
        // SAFETY: allocates a zeroed stage, or returns NULL.
        let stage = NonNull::new(unsafe { xd_stage_new() })
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "no memory for the staged blocks"))?;
        let stage = Stage { raw: stage };
        let mut raw = std::ptr::null_mut();
        // SAFETY: a C string, a live stage the filesystem refers to until it is closed (the
        // Staged below drops the filesystem before the stage), an out-pointer to a local.
        let code = unsafe { xd_open_staged(name.as_ptr(), offset, now, stage.raw.as_ptr(), &mut raw) };
        let fs = Filesystem::opened(path, offset, code, raw)?;
        Ok(Staged { fs, stage })
    }

    /// The handle `xd_open` or `xd_open_staged` returned with `code`, checked.
    fn opened(path: &Path, offset: u64, code: c_long, raw: *mut c_void) -> io::Result<Filesystem> {
        check(code, || "opening its ext2/3/4 filesystem".into())?;
        let raw =
            NonNull::new(raw).ok_or_else(|| io::Error::other("opening its ext2/3/4 filesystem gave no handle"))?;
        let fs = Filesystem { raw };
        // libext2fs reads past the end as errors only where it reads: a cut image is refused
        // up front.
        let available = std::fs::metadata(path)?.len().saturating_sub(offset);
        let spans = fs.size();
        if spans > available {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "truncated: its ext2/3/4 filesystem spans {spans} bytes, the file holds {available} from its start"
                ),
            ));
        }
        Ok(fs)
    }

    /// The filesystem's block size in bytes.
    pub fn block_size(&self) -> u64 {
        // SAFETY: open handle.
        unsafe { xd_block_size(self.raw.as_ptr()) }
    }

    /// How many bytes the filesystem spans.
    pub fn size(&self) -> u64 {
        // SAFETY: open handle.
        unsafe { xd_size(self.raw.as_ptr()) }
    }

    /// The filesystem blocks of the journal inode's file, in file order (0 for a hole).
    pub fn journal_blocks(&self, journal_ino: u32, block_size: u64) -> io::Result<Vec<u64>> {
        let size = self.stat(journal_ino)?.size;
        let mut blocks = vec![0u64; usize::try_from(size / block_size.max(1)).unwrap_or(0)];
        let mut len = 0;
        // SAFETY: open handle; `blocks` holds `blocks.len()` entries, the shim writes no more.
        let code = unsafe { xd_journal_map(self.raw.as_ptr(), blocks.as_mut_ptr(), blocks.len(), &mut len) };
        check(code, || format!("mapping the journal (inode {journal_ino})"))?;
        blocks.truncate(len);
        Ok(blocks)
    }

    /// Writes the superblock, group descriptors and bitmaps out (when writable) and closes.
    pub fn close(self) -> io::Result<()> {
        let raw = self.raw.as_ptr();
        std::mem::forget(self);
        // SAFETY: the handle is open and never used again.
        check(unsafe { xd_close(raw) }, || "writing the filesystem's metadata".into())
    }

    /// The inode of `name` in directory `dir`, None when there is none.
    pub fn lookup(&self, dir: u32, name: &[u8]) -> io::Result<Option<u32>> {
        let c = c_string(name)?;
        let mut ino = 0;
        // SAFETY: open handle, C string, out-pointer to a local.
        let code = unsafe { xd_lookup(self.raw.as_ptr(), dir, c.as_ptr(), &mut ino) };
        // SAFETY: a function returning a constant.
        if code == unsafe { xd_code_not_found() } {
            return Ok(None);
        }
        check(code, || format!("looking up {}", String::from_utf8_lossy(name)))?;
        Ok(Some(ino))
    }

    /// The inode at root-relative `path`, symlinks not followed; None when it is not there.
    pub fn lookup_path(&self, path: &str) -> io::Result<Option<u32>> {
        let mut ino = ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            match self.lookup(ino, part.as_bytes())? {
                Some(next) => ino = next,
                None => return Ok(None),
            }
        }
        Ok(Some(ino))
    }

    pub fn stat(&self, ino: u32) -> io::Result<Attr> {
        let mut attr = Attr::default();
        // SAFETY: open handle, out-pointer to a local.
        check(unsafe { xd_stat(self.raw.as_ptr(), ino, &mut attr) }, || format!("reading inode {ino}"))?;
        Ok(attr)
    }

    /// The entries of directory `dir` but `.` and `..`: name and inode.
    pub fn list(&self, dir: u32) -> io::Result<Vec<(Vec<u8>, u32)>> {
        let mut entries: Vec<(Vec<u8>, u32)> = Vec::new();
        let context = &mut entries as *mut Vec<(Vec<u8>, u32)> as *mut c_void;
        // SAFETY: `collect_entry` casts `context` back to `entries`, which outlives the call.
        let code = unsafe { xd_list(self.raw.as_ptr(), dir, collect_entry, context) };
        check(code, || format!("listing directory inode {dir}"))?;
        Ok(entries)
    }

    /// A symlink's target, as stored.
    pub fn readlink(&self, ino: u32) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; LONGEST_LINK];
        let mut len = 0;
        // SAFETY: `buf` holds `buf.len()` bytes; the shim writes at most that many.
        let code = unsafe { xd_readlink(self.raw.as_ptr(), ino, buf.as_mut_ptr() as *mut c_char, buf.len(), &mut len) };
        check(code, || format!("reading symlink inode {ino}"))?;
        buf.truncate(len.min(LONGEST_LINK));
        Ok(buf)
    }

    /// Writes file `ino`'s content to `to` (at its current offset).
    pub fn read_into(&self, ino: u32, to: &File) -> io::Result<()> {
        // SAFETY: open handle; the descriptor is open for the call.
        check(unsafe { xd_read_to_fd(self.raw.as_ptr(), ino, to.as_raw_fd()) }, || format!("reading inode {ino}"))
    }

    /// Reads file `ino`'s bytes from `offset` into `buf`; how many (fewer at the file's end).
    pub fn read_at(&self, ino: u32, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        // SAFETY: open handle; `buf` holds `buf.len()` bytes and the shim writes at most that many.
        let code =
            unsafe { xd_read_at(self.raw.as_ptr(), ino, offset, buf.as_mut_ptr() as *mut c_char, buf.len(), &mut got) };
        check(code, || format!("reading inode {ino}"))?;
        Ok(got.min(buf.len()))
    }

    /// Replaces file `ino`'s content with `from`'s (from its current offset to its end).
    pub fn write_from(&self, ino: u32, from: &File) -> io::Result<()> {
        // SAFETY: open handle; the descriptor is open for the call.
        check(unsafe { xd_write_from_fd(self.raw.as_ptr(), ino, from.as_raw_fd()) }, || format!("writing inode {ino}"))
    }

    /// Sets `ino`'s permission bits and modification (and change) time; owner and extended
    /// attributes stay.
    pub fn touch(&self, ino: u32, mode: u32, mtime: i64) -> io::Result<()> {
        // SAFETY: open handle.
        check(unsafe { xd_touch(self.raw.as_ptr(), ino, mode, mtime) }, || format!("setting inode {ino}'s times"))
    }

    /// A new empty regular file `name` in `dir` with `attr`'s mode, owner and times.
    pub fn create(&self, dir: u32, name: &[u8], attr: &Attr) -> io::Result<u32> {
        let c = c_string(name)?;
        let mut ino = 0;
        // SAFETY: open handle, C string, pointers to locals.
        let code = unsafe { xd_create(self.raw.as_ptr(), dir, c.as_ptr(), attr, &mut ino) };
        check(code, || format!("creating {}", String::from_utf8_lossy(name)))?;
        Ok(ino)
    }

    pub fn mkdir(&self, dir: u32, name: &[u8], attr: &Attr) -> io::Result<u32> {
        let c = c_string(name)?;
        let mut ino = 0;
        // SAFETY: open handle, C string, pointers to locals.
        let code = unsafe { xd_mkdir(self.raw.as_ptr(), dir, c.as_ptr(), attr, &mut ino) };
        check(code, || format!("making directory {}", String::from_utf8_lossy(name)))?;
        Ok(ino)
    }

    pub fn symlink(&self, dir: u32, name: &[u8], target: &[u8], attr: &Attr) -> io::Result<()> {
        let (c, target) = (c_string(name)?, c_string(target)?);
        // SAFETY: open handle, C strings, a pointer to a local.
        let code = unsafe { xd_symlink(self.raw.as_ptr(), dir, c.as_ptr(), target.as_ptr(), attr) };
        check(code, || format!("making symlink {}", String::from_utf8_lossy(name)))
    }

    /// Removes `name` from `dir`: a file or symlink (freed with its last link) or an empty
    /// directory.
    pub fn remove(&self, dir: u32, name: &[u8]) -> io::Result<()> {
        let c = c_string(name)?;
        // SAFETY: open handle, C string.
        check(unsafe { xd_remove(self.raw.as_ptr(), dir, c.as_ptr()) }, || {
            format!("removing {}", String::from_utf8_lossy(name))
        })
    }
}

/// The blocks a staged edit kept (`struct xd_stage` of ext4_shim.c).
struct Stage {
    raw: NonNull<c_void>,
}

impl Drop for Stage {
    fn drop(&mut self) {
        // SAFETY: no filesystem refers to the stage any more (Staged drops its filesystem
        // first); this is its last use.
        unsafe { xd_stage_free(self.raw.as_ptr()) }
    }
}

/// A filesystem open for a staged edit, and the blocks it keeps.
pub struct Staged {
    /// Declared before `stage`, so dropped before it: the filesystem refers to the stage.
    fs: Filesystem,
    stage: Stage,
}

impl Staged {
    pub fn fs(&self) -> &Filesystem {
        &self.fs
    }

    /// Closes the filesystem (its metadata written through the stage) and hands over every
    /// block the edit kept, by block number.
    pub fn close(self) -> io::Result<Kept> {
        let Staged { fs, stage } = self;
        let block_size = usize::try_from(fs.block_size()).unwrap_or(0);
        fs.close()?;
        // SAFETY: the stage is alive; its capacity is its table's length.
        let capacity = unsafe { xd_stage_capacity(stage.raw.as_ptr()) };
        let mut kept = Kept::default();
        for index in 0..capacity {
            let (mut block, mut was_free) = (0, 0);
            // SAFETY: index below capacity, out-pointers to locals; a non-NULL result points
            // at one block of the filesystem's size, alive as long as the stage.
            let data = unsafe { xd_stage_slot(stage.raw.as_ptr(), index, &mut block, &mut was_free) };
            if !data.is_null() {
                // SAFETY: as above.
                let bytes = unsafe { std::slice::from_raw_parts(data, block_size) }.to_vec();
                if was_free != 0 { &mut kept.free } else { &mut kept.used }.push((block, bytes));
            }
        }
        kept.free.sort_unstable_by_key(|(block, _)| *block);
        kept.used.sort_unstable_by_key(|(block, _)| *block);
        Ok(kept)
    }
}

/// The blocks a staged edit wrote (block number, new bytes): those the image had free, and
/// the others.
#[derive(Debug, Default)]
pub struct Kept {
    pub free: Vec<(u64, Vec<u8>)>,
    pub used: Vec<(u64, Vec<u8>)>,
}

impl Drop for Filesystem {
    fn drop(&mut self) {
        // SAFETY: the handle is open; this is its last use.
        unsafe { xd_abandon(self.raw.as_ptr()) }
    }
}
