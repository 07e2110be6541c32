//! Opening a module file: the codec is chosen by magic bytes, as libkmod does, not by extension.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::depmod::outside::OutsideFiles;

/// How a module file is stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Gzip,
}

impl Compression {
    /// The codec whose magic starts `head` (at least 6 bytes read from the file).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else {
            Compression::None
        }
    }
}

/// A module's ELF image: read lazily from the file when stored plain (only the sections a caller
/// asks for are read), or held in memory after decompression.
pub enum ModuleImage {
    Plain {
        file: File,
        len: u64,
    },
    Decompressed(Vec<u8>),
    /// Stored plain outside the root's tree (see [`OutsideFiles`]): file `index` there.
    Outside {
        files: Arc<dyn OutsideFiles>,
        index: usize,
        len: u64,
    },
}

impl ModuleImage {
    /// Opens `path` and decompresses it if its magic says so. Files shorter than 6 bytes are
    /// rejected like libkmod does (EINVAL).
    pub fn open(path: &Path) -> io::Result<ModuleImage> {
        ModuleImage::from_file(File::open(path)?)
    }

    /// [`ModuleImage::open`] for a file already open (through a root handle).
    pub fn from_file(mut file: File) -> io::Result<ModuleImage> {
        let len = file.metadata()?.len();
        let mut head = [0u8; 6];
        if len < head.len() as u64 {
            return Err(io::Error::from_raw_os_error(22));
        }
        file.read_exact_at(&mut head, 0)?;
        let compression = Compression::sniff(&head);
        if compression == Compression::None {
            return Ok(ModuleImage::Plain { file, len });
        }
        decompress(&mut file, compression, len).map(ModuleImage::Decompressed)
    }

    /// File `index` of `files`, decompressed if its magic says so.
    pub fn outside(files: Arc<dyn OutsideFiles>, index: usize) -> io::Result<ModuleImage> {
        let len = files.files().get(index).map_or(0, |f| f.size);
        let mut head = [0u8; 6];
        if len < head.len() as u64 {
            return Err(io::Error::from_raw_os_error(22));
        }
        read_exact_outside(files.as_ref(), index, 0, &mut head)?;
        let compression = Compression::sniff(&head);
        if compression == Compression::None {
            return Ok(ModuleImage::Outside { files, index, len });
        }
        // Compressed modules are read whole, as from a file.
        let mut bytes = vec![0u8; usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(27))?];
        read_exact_outside(files.as_ref(), index, 0, &mut bytes)?;
        decompress(&mut &bytes[..], compression, len).map(ModuleImage::Decompressed)
    }

    /// A module held in memory (read from an archive or already read from disk).
    pub fn from_bytes(bytes: &[u8]) -> io::Result<ModuleImage> {
        ModuleImage::from_vec(bytes.to_vec())
    }

    /// [`ModuleImage::from_bytes`] for bytes the caller gives up (kept as they are when plain).
    pub fn from_vec(bytes: Vec<u8>) -> io::Result<ModuleImage> {
        if bytes.len() < 6 {
            return Err(io::Error::from_raw_os_error(22));
        }
        match Compression::sniff(&bytes) {
            Compression::None => Ok(ModuleImage::Decompressed(bytes)),
            compression => decompress(&mut &bytes[..], compression, bytes.len() as u64).map(ModuleImage::Decompressed),
        }
    }

    /// The image's size in bytes (decompressed).
    pub fn len(&self) -> u64 {
        match self {
            ModuleImage::Plain { len, .. } | ModuleImage::Outside { len, .. } => *len,
            ModuleImage::Decompressed(bytes) => bytes.len() as u64,
        }
    }

    /// True for an empty image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `len` bytes at `offset`; the range must lie inside the image.
    pub fn read(&self, offset: u64, len: u64) -> io::Result<Cow<'_, [u8]>> {
        let end =
            offset.checked_add(len).filter(|&end| end <= self.len()).ok_or_else(|| io::Error::from_raw_os_error(22))?;
        match self {
            ModuleImage::Decompressed(bytes) => Ok(Cow::Borrowed(&bytes[offset as usize..end as usize])),
            ModuleImage::Plain { file, .. } => {
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, offset)?;
                Ok(Cow::Owned(buf))
            }
            ModuleImage::Outside { files, index, .. } => {
                let mut buf = vec![0u8; len as usize];
                read_exact_outside(files.as_ref(), *index, offset, &mut buf)?;
                Ok(Cow::Owned(buf))
            }
        }
    }
}

/// Fills `buf` from file `index` of `files` at `offset`; the file ending first is an error.
fn read_exact_outside(files: &dyn OutsideFiles, index: usize, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match files.read_at(index, offset, buf)? {
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            got => {
                buf = &mut buf[got..];
                offset += got as u64;
            }
        }
    }
    Ok(())
}

/// The whole content of a compressed module. What does not start as an ELF file is decoded to
/// its end without being kept (so a corrupt stream still reports its own error) and refused as
/// the ELF reader would: a gigabyte of compressed zeros costs no memory.
fn decompress(input: &mut dyn Read, compression: Compression, compressed_len: u64) -> io::Result<Vec<u8>> {
    let mut decoder: Box<dyn Read + '_> = match compression {
        // A single-stream decoder: trailing garbage after the stream is an error.
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_stream(
            input,
            xz2::stream::Stream::new_stream_decoder(u64::MAX, 0).map_err(io::Error::other)?,
        )),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(input)),
        Compression::None => Box::new(input),
    };
    let mut head = Vec::with_capacity(16);
    decoder.by_ref().take(16).read_to_end(&mut head)?;
    if head.len() == 16 && !head.starts_with(b"\x7fELF") {
        io::copy(&mut decoder, &mut io::sink())?;
        return Err(io::Error::from_raw_os_error(8)); // ENOEXEC, as the ELF reader says
    }
    // Modules are a few MiB at most; capacity from the compressed size avoids most regrowth.
    let mut out = Vec::with_capacity((compressed_len as usize).saturating_mul(4));
    out.extend_from_slice(&head);
    decoder.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_magic() {
        assert_eq!(Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]), Compression::Zstd);
        assert_eq!(Compression::sniff(b"\xfd7zXZ\0"), Compression::Xz);
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0, 0, 0]), Compression::Gzip);
        assert_eq!(Compression::sniff(b"\x7fELF\x02\x01"), Compression::None);
    }
}
