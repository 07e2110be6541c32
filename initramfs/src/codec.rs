//! The compressions the kernel's initramfs unpacker accepts: detection, one-member decoding,
//! and encoding with settings every kernel decoder accepts.

use std::fmt;
use std::io::{self, Write};

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

/// liblzma's memory limit for one member: the largest dictionary any preset uses is 64 MiB
/// (`xz -9`, `lzma -9`); a header asking for more is refused instead of allocated.
pub(crate) const LZMA_MEMORY_LIMIT: u64 = 256 << 20;

/// Inputs larger than this are compressed by zstd's worker threads.
const ZSTD_THREADED_ABOVE: u64 = 16 << 20;
/// The input each zstd worker compresses at a time.
const ZSTD_JOB_SIZE: u32 = 8 << 20;

/// Compression effort: the codec's default for images, or an explicit level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Level(pub Option<i32>);

/// A compressor writing one member the kernel can unpack: gzip without name or mtime, xz with a
/// CRC32 check and a 1 MiB dictionary, zstd as a single frame, LZ4 in legacy frames. Data is
/// compressed as it is written; [`Encoder::finish`] ends the member.
pub struct Encoder<W: Write> {
    inner: Inner<W>,
}

enum Inner<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Bzip2(bzip2::write::BzEncoder<W>),
    Xz(xz2::write::XzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    /// The kernel's legacy LZ4 framing: blocks of at most [`LZ4_LEGACY_BLOCK`] each.
    Lz4 {
        out: W,
        block: Vec<u8>,
    },
}

impl<W: Write> Encoder<W> {
    /// An encoder for `codec` into `out`; `size_hint` (the expected input size) decides whether
    /// zstd uses worker threads.
    pub fn new(codec: Codec, mut out: W, level: Level, size_hint: u64) -> io::Result<Encoder<W>> {
        let inner = match codec {
            Codec::None => Inner::None(out),
            Codec::Gzip => {
                let level = flate2::Compression::new(level.0.unwrap_or(9).clamp(0, 9) as u32);
                Inner::Gzip(flate2::GzBuilder::new().mtime(0).write(out, level))
            }
            Codec::Bzip2 => {
                let level = bzip2::Compression::new(level.0.unwrap_or(9).clamp(1, 9) as u32);
                Inner::Bzip2(bzip2::write::BzEncoder::new(out, level))
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
                Inner::Xz(xz2::write::XzEncoder::new_stream(out, stream))
            }
            Codec::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(out, level.0.unwrap_or(15))?;
                // Worker threads pay off for big archives only; setting them up costs more than
                // compressing a few MiB.
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
                if threads > 1 && size_hint > ZSTD_THREADED_ABOVE {
                    encoder.multithread(threads)?;
                    // zstd's default job (4 windows: 16 MiB at level 15) keeps several jobs'
                    // input and output buffered per worker; 8 MiB jobs cut that by a third at
                    // 0.2% more output.
                    encoder.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_SIZE))?;
                }
                encoder.include_checksum(true)?;
                Inner::Zstd(encoder)
            }
            Codec::Lz4 => {
                out.write_all(&LZ4_LEGACY_MAGIC.to_le_bytes())?;
                Inner::Lz4 { out, block: Vec::with_capacity(LZ4_LEGACY_BLOCK.min(size_hint as usize)) }
            }
            Codec::Lzo => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "xdkms does not write lzo; choose gzip, xz or zstd",
                ))
            }
        };
        Ok(Encoder { inner })
    }

    /// Ends the member; returns the output.
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            Inner::None(out) => Ok(out),
            Inner::Gzip(encoder) => encoder.finish(),
            Inner::Bzip2(encoder) => encoder.finish(),
            Inner::Xz(encoder) => encoder.finish(),
            Inner::Zstd(encoder) => encoder.finish(),
            Inner::Lz4 { mut out, block } => {
                write_lz4_block(&mut out, &block)?;
                Ok(out)
            }
        }
    }
}

fn write_lz4_block(out: &mut dyn Write, block: &[u8]) -> io::Result<()> {
    if block.is_empty() {
        return Ok(());
    }
    let compressed = lz4_flex::block::compress(block);
    out.write_all(&(compressed.len() as u32).to_le_bytes())?;
    out.write_all(&compressed)
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::None(out) => out.write(buf),
            Inner::Gzip(encoder) => encoder.write(buf),
            Inner::Bzip2(encoder) => encoder.write(buf),
            Inner::Xz(encoder) => encoder.write(buf),
            Inner::Zstd(encoder) => encoder.write(buf),
            Inner::Lz4 { out, block } => {
                let n = buf.len().min(LZ4_LEGACY_BLOCK - block.len());
                block.extend_from_slice(&buf[..n]);
                if block.len() == LZ4_LEGACY_BLOCK {
                    write_lz4_block(out, block)?;
                    block.clear();
                }
                Ok(n)
            }
        }
    }

    /// Passes nothing on: a compressor's flush ends a block early (and liblzma's legacy .lzma
    /// encoder cannot flush at all), which would change the member. [`Encoder::finish`] ends it.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `data` compressed as one member, in memory.
pub fn encode(codec: Codec, data: &[u8], level: Level) -> io::Result<Vec<u8>> {
    let mut encoder = Encoder::new(codec, Vec::with_capacity(data.len() / 3 + 64), level, data.len() as u64)?;
    encoder.write_all(data)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// The member at the start of `input` decoded by the streaming reader, and its length.
    fn decode_member(codec: Codec, input: &[u8]) -> io::Result<(Vec<u8>, usize)> {
        let mut reader = crate::stream::Input::new(input);
        let mut out = Vec::new();
        crate::stream::decoder(codec, &mut reader)?.read_to_end(&mut out)?;
        Ok((out, reader.position() as usize))
    }

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

    /// Data written in small pieces (as the archive writer does) makes the same member, and LZ4
    /// cuts it into the kernel's 8 MiB blocks.
    #[test]
    fn streamed_encoding_matches_and_lz4_blocks_are_bounded() {
        let data: Vec<u8> = (0..(9u32 << 20)).map(|i| (i / 7 % 251) as u8).collect();
        for codec in [Codec::Gzip, Codec::Xz, Codec::Lz4, Codec::Zstd] {
            let whole = encode(codec, &data, Level(Some(1))).expect("encode");
            let mut encoder = Encoder::new(codec, Vec::new(), Level(Some(1)), data.len() as u64).expect("encoder");
            for piece in data.chunks(100_003) {
                encoder.write_all(piece).expect("write");
            }
            let streamed = encoder.finish().expect("finish");
            assert_eq!(decode_member(codec, &streamed).expect("decode").0, data, "{codec}");
            if codec != Codec::Zstd {
                assert_eq!(whole, streamed, "{codec}: the same bytes however the data arrives");
            }
        }
        let lz4 = encode(Codec::Lz4, &data, Level::default()).expect("lz4");
        let first = u32::from_le_bytes(lz4[4..8].try_into().expect("word")) as usize;
        let second = u32::from_le_bytes(lz4[8 + first..12 + first].try_into().expect("word")) as usize;
        assert_eq!(12 + first + second, lz4.len(), "two blocks: 8 MiB and the rest");
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
