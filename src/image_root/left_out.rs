//! Files of an ext2/3/4 image left out of the scratch root a command works in, read from the
//! image where they are wanted (depmod reads a kernel's own modules so: 400 MB copied out into
//! a tmpfs and removed again cost more than the rest of an install).

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};

use super::ext2fs::{Access, Filesystem};
use crate::depmod::outside::{OutsideFile, OutsideFiles};

/// The files left out of a scratch root, and where they are: the filesystem `offset` bytes
/// into `image`, `len` bytes long.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

    /// Written to `path`, to be read back with [`LeftOut::load`] by the run on the scratch root.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let text = serde_json::to_vec(self).map_err(io::Error::other)?;
        cross::Sysroot::host()?.write_atomic(path, &text, None)
    }

    pub fn load(path: &Path) -> io::Result<LeftOut> {
        let text = std::fs::read(path)?;
        let left_out: LeftOut =
            serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if left_out.files.len() != left_out.inodes.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "files and inodes differ in number"));
        }
        Ok(left_out)
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
