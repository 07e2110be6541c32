//! Files of an ext2/3/4 image left out of the scratch root a command works in, read from the
//! image where they are wanted (depmod reads a kernel's own modules so: 400 MB copied out into
//! a tmpfs and removed again cost more than the rest of an install).

use std::cell::RefCell;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::ext2fs::{Access, Filesystem};
use crate::depmod::outside::{OutsideFile, OutsideFiles};

/// The files left out of a scratch root, and where they are: the filesystem `offset` bytes
/// into `image`, `len` bytes long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    image: PathBuf,
    offset: u64,
    len: u64,
    files: Vec<OutsideFile>,
    /// Each file's inode.
    inodes: Vec<u32>,
}

impl LeftOut {
    pub(super) fn new(image: PathBuf, offset: u64, len: u64, left: Vec<(OutsideFile, u32)>) -> LeftOut {
        let (files, inodes) = left.into_iter().unzip();
        LeftOut { image, offset, len, files, inodes }
    }

    /// Written to `path`, to be read back with [`LeftOut::load`] by the run on the scratch root:
    /// NUL-terminated fields (no path holds a NUL), the image, its offset and length, then each
    /// file's path, inode and size.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut text = Vec::new();
        let mut field = |bytes: &[u8]| {
            text.extend_from_slice(bytes);
            text.push(0);
        };
        field(self.image.as_os_str().as_bytes());
        field(self.offset.to_string().as_bytes());
        field(self.len.to_string().as_bytes());
        for (file, ino) in self.files.iter().zip(&self.inodes) {
            field(file.path.as_bytes());
            field(ino.to_string().as_bytes());
            field(file.size.to_string().as_bytes());
        }
        cross::Sysroot::host()?.write_atomic(path, &text, None)
    }

    pub fn load(path: &Path) -> io::Result<LeftOut> {
        let text = std::fs::read(path)?;
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a list of left-out files");
        let mut fields = text.strip_suffix(&[0]).ok_or_else(bad)?.split(|&b| b == 0);
        let mut next = || fields.next().ok_or_else(bad);
        let number = |bytes: &[u8]| std::str::from_utf8(bytes).ok().and_then(|t| t.parse().ok()).ok_or_else(bad);
        let image = PathBuf::from(std::ffi::OsStr::from_bytes(next()?));
        let (offset, len) = (number(next()?)?, number(next()?)?);
        let (mut files, mut inodes) = (Vec::new(), Vec::new());
        while let Some(path) = fields.next() {
            let path = String::from_utf8(path.to_vec()).map_err(|_| bad())?;
            let mut rest = || fields.next().ok_or_else(bad);
            let (ino, size) = (number(rest()?)?, number(rest()?)?);
            inodes.push(u32::try_from(ino).map_err(|_| bad())?);
            files.push(OutsideFile { path, size });
        }
        Ok(LeftOut { image, offset, len, files, inodes })
    }

    fn open(&self) -> io::Result<Filesystem> {
        super::ext4_image::open_in(&self.image, self.offset, self.len, Access::Read)
    }
}

thread_local! {
    /// Each thread's handle on the image (libext2fs shares nothing between handles, and a
    /// handle is used by one thread at a time), with the image it is on.
    static HANDLE: RefCell<Option<(PathBuf, u64, Filesystem)>> = const { RefCell::new(None) };
}

impl OutsideFiles for LeftOut {
    fn files(&self) -> &[OutsideFile] {
        &self.files
    }

    fn read_at(&self, index: usize, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let (Some(file), Some(&ino)) = (self.files.get(index), self.inodes.get(index)) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no left-out file {index}")));
        };
        HANDLE.with(|handle| {
            let mut handle = handle.borrow_mut();
            let current =
                matches!(&*handle, Some((image, offset, _)) if *image == self.image && *offset == self.offset);
            if !current {
                *handle = Some((self.image.clone(), self.offset, self.open()?));
            }
            let Some((_, _, fs)) = handle.as_ref() else { return Err(io::Error::other("no handle on the image")) };
            fs.read_at(ino, offset, buf).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.path)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_reads_back_as_written_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |path: &str, size| OutsideFile { path: path.to_string(), size };
        let left =
            vec![(file("lib/modules/6.1/kernel/a b\tc.ko", 7), 12), (file("lib/modules/6.1/kernel/x.ko.xz", 0), 13)];
        let left_out = LeftOut::new(PathBuf::from("/images/root fs.ext4"), 1 << 20, 1 << 30, left);
        let path = dir.path().join("list");
        left_out.save(&path).expect("save");
        assert_eq!(LeftOut::load(&path).expect("load"), left_out);
        let written = std::fs::read(&path).expect("read");
        for cut in [1, 5, written.len() / 2] {
            std::fs::write(&path, &written[..written.len() - cut]).expect("write");
            assert!(LeftOut::load(&path).is_err(), "cut {cut}");
        }
    }
}
