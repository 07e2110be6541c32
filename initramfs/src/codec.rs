//! The compressions the kernel's initramfs unpacker accepts: detection, one-member decoding,
//! and encoding with settings every kernel decoder accepts.

use std::fmt;
use std::io::{self, Read, Write};

/// A compression method, as the kernel's `decompress_method()` tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    None,
    Gzip,
    Bzip2,
    Lzma,
    Xz,
    Lzo,
    Lz4,
    Zstd,
}

/// The LZ4 "legacy" frame magic (`lz4 -l`), the only LZ4 framing the kernel unpacks.
pub(crate) const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// The kernel decompresses each legacy block into at most this much.
pub(crate) const LZ4_LEGACY_BLOCK: usize = 8 << 20;

impl Codec {
    /// The codec whose magic starts `head`, with the kernel's two-byte test.
    pub fn detect(head: &[u8]) -> Option<Codec> {
        match head {
            [0x1f, 0x8b, ..] | [0x1f, 0x9e, ..] => Some(Codec::Gzip),
            [b'B', b'Z', ..] => Some(Codec::Bzip2),
            [0x5d, 0x00, ..] => Some(Codec::Lzma),
            [0xfd, 0x37, ..] => Some(Codec::Xz),
            [0x89, 0x4c, ..] => Some(Codec::Lzo),
            [0x02, 0x21, ..] => Some(Codec::Lz4),
            [0x28, 0xb5, ..] => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// The name used on the command line and in listings.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Bzip2 => "bzip2",
            Codec::Lzma => "lzma",
            Codec::Xz => "xz",
            Codec::Lzo => "lzo",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }

    /// Parses a codec name as [`Codec::name`] prints it.
    pub fn from_name(name: &str) -> Option<Codec> {
        [Codec::None, Codec::Gzip, Codec::Bzip2, Codec::Lzma, Codec::Xz, Codec::Lz4, Codec::Zstd]
            .into_iter()
            .find(|c| c.name() == name)
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Decodes the one compressed member at the start of `input` and returns its content and the
/// number of input bytes it occupied. Decoding stops at the member's end, as the kernel's does,
/// so whatever follows (padding, another member) is left to the caller.
pub fn decode_member(codec: Codec, input: &[u8]) -> io::Result<(Vec<u8>, usize)> {
    if codec == Codec::None {
        return Ok((input.to_vec(), input.len()));
    }
    if codec == Codec::Zstd {
        // A frame that declares its size is decoded in one pass into a buffer of that size.
        let frame_len = zstd::zstd_safe::find_frame_compressed_size(input).ok();
        let content = frame_len.and_then(|len| zstd::zstd_safe::get_frame_content_size(&input[..len]).ok().flatten());
        if let (Some(len), Some(size)) = (frame_len, content) {
            // Trusted only when plausible for the frame's length: a forged header must not
            // make us allocate gigabytes up front (streaming grows with the real output).
            if size <= (len as u64).saturating_mul(ZSTD_TRUSTED_RATIO).saturating_add(1 << 20) {
                let out = zstd::bulk::Decompressor::new()?.decompress(&input[..len], size as usize)?;
                return Ok((out, len));
            }
        }
    }
    let mut reader = crate::stream::Input::new(input);
    let mut out = Vec::new();
    crate::stream::decoder(codec, &mut reader)?.read_to_end(&mut out)?;
    Ok((out, reader.position() as usize))
}

/// liblzma's memory limit for one member: the largest dictionary any preset uses is 64 MiB
/// (`xz -9`, `lzma -9`); a header asking for more is refused instead of allocated.
pub(crate) const LZMA_MEMORY_LIMIT: u64 = 256 << 20;
/// A zstd frame's declared content size is used to size the output up front only when it is at
/// most this many times the frame's length.
const ZSTD_TRUSTED_RATIO: u64 = 64;

/// Inputs larger than this are compressed by zstd's worker threads.
const ZSTD_THREADED_ABOVE: usize = 16 << 20;

/// Compression effort: the codec's default for images, or an explicit level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Level(pub Option<i32>);

/// Compresses `data` as one member the kernel can unpack: gzip without name or mtime, xz with a
/// CRC32 check and a 1 MiB dictionary, zstd as a single frame, LZ4 in legacy frames.
pub fn encode(codec: Codec, data: &[u8], level: Level) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 3 + 64);
    match codec {
        Codec::None => out.extend_from_slice(data),
        Codec::Gzip => {
            let level = flate2::Compression::new(level.0.unwrap_or(9).clamp(0, 9) as u32);
            let mut encoder = flate2::GzBuilder::new().mtime(0).write(&mut out, level);
            encoder.write_all(data)?;
            encoder.finish()?;
        }
        Codec::Bzip2 => {
            let level = bzip2::Compression::new(level.0.unwrap_or(9).clamp(1, 9) as u32);
            let mut encoder = bzip2::write::BzEncoder::new(&mut out, level);
            encoder.write_all(data)?;
            encoder.finish()?;
        }
        Codec::Xz | Codec::Lzma => {
            let mut options = xz2::stream::LzmaOptions::new_preset(level.0.unwrap_or(6).clamp(0, 9) as u32)
                .map_err(io::Error::other)?;
            options.dict_size(1 << 20);
            let stream = if codec == Codec::Xz {
                let mut filters = xz2::stream::Filters::new();
                filters.lzma2(&options);
                xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::Crc32)
            } else {
                xz2::stream::Stream::new_lzma_encoder(&options)
            }
            .map_err(io::Error::other)?;
            let mut encoder = xz2::write::XzEncoder::new_stream(&mut out, stream);
            encoder.write_all(data)?;
            encoder.finish()?;
        }
        Codec::Zstd => {
            let mut encoder = zstd::stream::write::Encoder::new(&mut out, level.0.unwrap_or(15))?;
            // Worker threads pay off for big archives only; setting them up costs more than
            // compressing a few MiB.
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
            if threads > 1 && data.len() > ZSTD_THREADED_ABOVE {
                encoder.multithread(threads)?;
            }
            encoder.include_checksum(true)?;
            encoder.write_all(data)?;
            encoder.finish()?;
        }
        Codec::Lz4 => {
            out.extend_from_slice(&LZ4_LEGACY_MAGIC.to_le_bytes());
            for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
                let block = lz4_flex::block::compress(chunk);
                out.extend_from_slice(&(block.len() as u32).to_le_bytes());
                out.extend_from_slice(&block);
            }
        }
        Codec::Lzo => {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "xdkms does not write lzo; choose gzip, xz or zstd"))
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect()
    }

    #[test]
    fn every_codec_round_trips_and_stops_at_member_end() {
        let data = sample();
        for codec in [Codec::Gzip, Codec::Bzip2, Codec::Lzma, Codec::Xz, Codec::Lz4, Codec::Zstd] {
            let mut member = encode(codec, &data, Level::default()).expect("encode");
            assert_eq!(Codec::detect(&member), Some(codec), "{codec}");
            let len = member.len();
            // What follows a member is not part of it.
            member.extend_from_slice(&[0, 0, 0, 0, b'0', b'7', b'0', b'7']);
            let (decoded, used) = decode_member(codec, &member).unwrap_or_else(|e| panic!("{codec}: {e}"));
            assert_eq!(decoded, data, "{codec}");
            assert_eq!(used, len, "{codec}: the member's own bytes, no more, no less");
        }
    }

    /// Found by the initramfs_image fuzz target: a legacy .lzma header declaring a 4 GiB
    /// dictionary made liblzma allocate it.
    #[test]
    fn lzma_header_with_4gib_dictionary_is_refused() {
        let input = [
            0x5d, 0x00, 0x00, 0x10, 0xff, 0xfe, 0x00, 0x7a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xe8, 0x00, 0x18, 0x0d, 0x2b,
            0xe4, 0xad, 0x80, 0xff, 0xfe, 0x8e, 0xe6, 0x80,
        ];
        assert_eq!(Codec::detect(&input), Some(Codec::Lzma));
        let error = decode_member(Codec::Lzma, &input).expect_err("refused");
        assert!(error.to_string().contains("asks for more than 256 MiB"), "{error}");
    }

    #[test]
    fn truncated_members_are_errors() {
        let data = sample();
        for codec in [Codec::Gzip, Codec::Bzip2, Codec::Xz, Codec::Lz4, Codec::Zstd] {
            let member = encode(codec, &data, Level::default()).expect("encode");
            let cut = &member[..member.len() / 2];
            assert!(decode_member(codec, cut).is_err(), "{codec} accepted a truncated member");
        }
    }
}
