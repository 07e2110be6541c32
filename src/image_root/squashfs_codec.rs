//! The block codec of one squashfs image: its blocks decompressed (gzip, xz, lz4, zstd: what
//! the kernel reads and xdkms carries codecs for) and new blocks compressed with the image's
//! own settings, as mksquashfs applies them, on every core; its compression options block
//! kept as stored.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use backhand::compression::{CompressionAction, Compressor};
use backhand::{BackhandError, FilesystemCompressor, SuperBlock};

/// squashfs's compressor ids (the superblock's `compression` field).
const GZIP: u16 = 1;
const LZMA: u16 = 2;
const LZO: u16 = 3;
const XZ: u16 = 4;
const LZ4: u16 = 5;
const ZSTD: u16 = 6;

/// The superblock flag saying a compression options block follows it.
pub const OPTIONS_PRESENT: u16 = 0x0400;

/// The name of compressor `id`, as mksquashfs and unsquashfs -s name it.
pub fn name(id: u16) -> String {
    match id {
        GZIP => "gzip".into(),
        LZMA => "lzma".into(),
        LZO => "lzo".into(),
        XZ => "xz".into(),
        LZ4 => "lz4".into(),
        ZSTD => "zstd".into(),
        other => format!("unknown compressor {other}"),
    }
}

/// How new blocks are compressed: the image's options, or mksquashfs's defaults where the
/// image stores none (it stores them only when they differ from the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settings {
    Gzip {
        level: u32,
    },
    /// `filters`: the BCJ filters mksquashfs may try (its option bits); each is tried and the
    /// smallest result kept, as mksquashfs does.
    Xz {
        dict_size: u32,
        filters: u32,
    },
    Lz4,
    Zstd {
        level: i32,
    },
}

/// One image's codec; `Kind::new_v4` wants it `'static`, so [`Codec::leak`] makes one per image
/// opened (a few dozen bytes, once per command).
///
/// backhand compresses one block at a time, on one core. An image's new blocks (the fragment
/// blocks it packs again from the old files' tails, half of a Debian root's data) are known by
/// a rehearsal: the same write with its output discarded, during which [`Codec::rehearse`]
/// hands each block to a worker per core and answers at once; the real write then finds them
/// compressed, by content digest.
#[derive(Debug)]
pub struct Codec {
    settings: Settings,
    block_size: u32,
    /// The compression options block as stored after the superblock (length word included).
    options_block: Option<Vec<u8>>,
    /// Blocks compressed ahead of the write that needs them, by the digest of their content.
    ahead: Mutex<HashMap<Digest256, Vec<u8>>>,
    /// During a rehearsal: where blocks go to be compressed, and the digests sent already.
    rehearsal: Mutex<Option<Rehearsal>>,
}

type Digest256 = [u8; 32];

/// Where a rehearsal's blocks go to be compressed, and the digests of those sent already.
type Rehearsal = (SyncSender<Vec<u8>>, HashSet<Digest256>);

/// A BCJ filter added to an xz filter chain.
type Bcj = fn(&mut xz2::stream::Filters) -> &mut xz2::stream::Filters;

/// Blocks waiting for a worker during a rehearsal, at most: the rehearsal waits beyond that
/// (a few MiB in flight, whatever the image's size).
const QUEUED_BLOCKS: usize = 32;

fn digest(bytes: &[u8]) -> Digest256 {
    Sha256::digest(bytes).into()
}

impl Codec {
    /// The codec for an image whose superblock names compressor `id` and `block_size`, with the
    /// options block `options_block` (None when the image stores none); an error saying why
    /// when xdkms cannot write that compressor.
    pub fn new(id: u16, block_size: u32, options_block: Option<Vec<u8>>) -> Result<Codec, String> {
        let payload = options_block.as_deref().map_or(&[][..], |b| b.get(2..).unwrap_or(&[]));
        let word = |at: usize| payload.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let settings = match id {
            GZIP => Settings::Gzip { level: word(0).unwrap_or(9).clamp(1, 9) },
            XZ => {
                let filters = word(4).unwrap_or(0);
                if filters & !BCJ_CARRIED != 0 {
                    return Err(format!(
                        "its xz blocks may use BCJ filters (option bits {filters:#x}) that xdkms's xz library \
                         does not carry (it has x86 and sparc): make it with mksquashfs -Xbcj x86, or without -Xbcj"
                    ));
                }
                Settings::Xz { dict_size: word(0).unwrap_or(block_size), filters }
            }
            LZ4 => Settings::Lz4,
            ZSTD => Settings::Zstd { level: word(0).map_or(15, |l| i32::try_from(l.clamp(1, 22)).unwrap_or(15)) },
            other => {
                return Err(format!(
                    "it is compressed with {}, which xdkms does not read or write (it does gzip, xz, lz4 and zstd)",
                    name(other)
                ))
            }
        };
        Ok(Codec { settings, block_size, options_block, ahead: Mutex::default(), rehearsal: Mutex::default() })
    }

    /// This codec with a `'static` lifetime, as backhand's `Kind` holds it.
    pub fn leak(self) -> &'static Codec {
        Box::leak(Box::new(self))
    }

    /// Runs `write` (a write whose output is discarded) as a rehearsal: each block it compresses
    /// is compressed by a worker per core instead, and kept for the next write.
    pub fn rehearse<T>(&'static self, write: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (sender, receiver) = sync_channel::<Vec<u8>>(QUEUED_BLOCKS);
        let receiver = Mutex::new(receiver);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers).map(|_| scope.spawn(|| self.compress_ahead(&receiver))).collect();
            *lock(&self.rehearsal) = Some((sender, HashSet::new()));
            let result = write();
            // Dropping the sender ends the workers once the queue is empty.
            *lock(&self.rehearsal) = None;
            for handle in handles {
                handle.join().map_err(|_| io::Error::other("a compression worker panicked"))?;
            }
            result
        })
    }

    /// A worker of [`Codec::rehearse`]: compresses blocks until the rehearsal ends. A block it
    /// cannot compress is left to the real write (which reports the error); the worker goes on
    /// taking blocks, so the rehearsal never waits on a queue nobody empties.
    fn compress_ahead(&self, queue: &Mutex<Receiver<Vec<u8>>>) {
        loop {
            // The queue's lock is let go before compressing (in a `while let` it would be held).
            let next = lock(queue).recv();
            let Ok(block) = next else { return };
            if let Ok(compressed) = self.compress_block(&block) {
                lock(&self.ahead).insert(digest(&block), compressed);
            }
        }
    }

    /// `bytes` compressed: queued for the workers during a rehearsal (and returned as they are,
    /// the rehearsal's output being discarded), taken from what they compressed after it, or
    /// compressed here.
    fn compress_or_queue(&self, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let key = digest(bytes);
        let sender = match lock(&self.rehearsal).as_mut() {
            Some((sender, sent)) => sent.insert(key).then(|| sender.clone()),
            None => {
                if let Some(compressed) = lock(&self.ahead).remove(&key) {
                    return Ok(compressed);
                }
                return self.compress_block(bytes);
            }
        };
        if let Some(sender) = sender {
            // Waits while the queue is full; fails only when the workers are gone (an error).
            sender.send(bytes.to_vec()).map_err(|_| io::Error::other("the compression workers stopped"))?;
        }
        Ok(bytes.to_vec())
    }

    fn compress_block(&self, bytes: &[u8]) -> io::Result<Vec<u8>> {
        match self.settings {
            Settings::Gzip { level } => {
                let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(level));
                encoder.write_all(bytes)?;
                encoder.finish()
            }
            Settings::Xz { dict_size, filters } => xz_smallest(bytes, dict_size, filters),
            Settings::Lz4 => Ok(lz4_flex::block::compress(bytes)),
            Settings::Zstd { level } => zstd::bulk::compress(bytes, level),
        }
    }

    /// Decompresses `bytes` onto the end of `out`.
    fn decompress_block(&self, bytes: &[u8], out: &mut Vec<u8>, id: u16) -> io::Result<()> {
        // A data block holds at most block_size bytes, a metadata block 8 KiB.
        let limit = self.block_size.max(8192) as usize;
        let start = out.len();
        match id {
            GZIP => {
                out.reserve(limit);
                let status = flate2::Decompress::new(true)
                    .decompress_vec(bytes, out, flate2::FlushDecompress::Finish)
                    .map_err(|e| invalid(format!("a gzip block: {e}")))?;
                if status != flate2::Status::StreamEnd {
                    return Err(invalid("a gzip block larger than the block size".into()));
                }
            }
            XZ => xz_decompress(bytes, out, limit)?,
            LZ4 => {
                out.resize(start + limit, 0);
                let got = lz4_flex::block::decompress_into(bytes, &mut out[start..])
                    .map_err(|e| invalid(format!("an lz4 block: {e}")))?;
                out.truncate(start + got);
            }
            ZSTD => {
                let block = zstd::bulk::decompress(bytes, limit).map_err(|e| invalid(format!("a zstd block: {e}")))?;
                out.extend_from_slice(&block);
            }
            other => return Err(invalid(format!("a block compressed with {}", name(other)))),
        }
        Ok(())
    }
}

/// The mutex's value; a worker that panicked holding it left nothing half-done that matters
/// (a map insert), so its poison is ignored.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// mksquashfs's xz option bits for its BCJ filters (x86, powerpc, ia64, arm, armthumb, sparc).
const BCJ_X86: u32 = 0x01;
const BCJ_SPARC: u32 = 0x20;
/// The BCJ filters the statically built liblzma (lzma-sys) carries: x86 and sparc only.
const BCJ_CARRIED: u32 = BCJ_X86 | BCJ_SPARC;

/// The BCJ filters of mksquashfs's xz option bits that xdkms can write.
fn bcj_filters(bits: u32) -> Vec<Bcj> {
    let all: [(u32, Bcj); 2] = [(BCJ_X86, xz2::stream::Filters::x86), (BCJ_SPARC, xz2::stream::Filters::sparc)];
    all.into_iter().filter(|(bit, _)| bits & bit != 0).map(|(_, filter)| filter).collect()
}

/// `bytes` as an xz stream (CRC32 check, preset 6, the image's dictionary size), with no BCJ
/// filter and with each of the image's, the smallest kept: what mksquashfs writes.
fn xz_smallest(bytes: &[u8], dict_size: u32, filter_bits: u32) -> io::Result<Vec<u8>> {
    let mut options = xz2::stream::LzmaOptions::new_preset(6).map_err(io::Error::other)?;
    options.dict_size(dict_size);
    let mut best: Option<Vec<u8>> = None;
    let mut candidates: Vec<Option<Bcj>> = vec![None];
    candidates.extend(bcj_filters(filter_bits).into_iter().map(Some));
    for bcj in candidates {
        let mut filters = xz2::stream::Filters::new();
        if let Some(bcj) = bcj {
            bcj(&mut filters);
        }
        filters.lzma2(&options);
        let mut stream =
            xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::Crc32).map_err(io::Error::other)?;
        let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16 + 256);
        loop {
            let consumed = stream.total_in() as usize;
            let status = stream
                .process_vec(&bytes[consumed..], &mut out, xz2::stream::Action::Finish)
                .map_err(io::Error::other)?;
            if status == xz2::stream::Status::StreamEnd {
                break;
            }
            out.reserve(out.capacity().max(4096));
        }
        if best.as_ref().is_none_or(|b| out.len() < b.len()) {
            best = Some(out);
        }
    }
    best.ok_or_else(|| io::Error::other("no xz filter chain"))
}

/// Decodes the xz stream `bytes` onto the end of `out`, refusing more than `limit` bytes.
fn xz_decompress(bytes: &[u8], out: &mut Vec<u8>, limit: usize) -> io::Result<()> {
    let start = out.len();
    let mut stream = xz2::stream::Stream::new_stream_decoder(u64::MAX, 0).map_err(io::Error::other)?;
    out.reserve(limit);
    loop {
        let consumed = stream.total_in() as usize;
        let status = stream
            .process_vec(&bytes[consumed..], out, xz2::stream::Action::Finish)
            .map_err(|e| invalid(format!("an xz block: {e}")))?;
        if status == xz2::stream::Status::StreamEnd {
            return Ok(());
        }
        if out.len() - start >= limit {
            return Err(invalid("an xz block larger than the block size".into()));
        }
        if out.len() == out.capacity() {
            out.reserve(limit);
        } else if consumed == bytes.len() {
            return Err(invalid("an xz block that ends early".into()));
        }
    }
}

impl CompressionAction for Codec {
    type Error = BackhandError;
    type Compressor = Compressor;
    type FilesystemCompressor = FilesystemCompressor;
    type SuperBlock = SuperBlock;

    fn decompress(&self, bytes: &[u8], out: &mut Vec<u8>, compressor: Compressor) -> Result<(), BackhandError> {
        self.decompress_block(bytes, out, compressor as u16).map_err(BackhandError::StdIo)
    }

    fn compress(&self, bytes: &[u8], _: FilesystemCompressor, _: u32) -> Result<Vec<u8>, BackhandError> {
        self.compress_or_queue(bytes).map_err(BackhandError::StdIo)
    }

    /// The original image's options block, byte for byte.
    fn compression_options(
        &self,
        superblock: &mut SuperBlock,
        _: &backhand::kind::Kind,
        _: FilesystemCompressor,
    ) -> Result<Option<Vec<u8>>, BackhandError> {
        if self.options_block.is_some() {
            superblock.flags |= OPTIONS_PRESENT;
        }
        Ok(self.options_block.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(id: u16, options: Option<Vec<u8>>) {
        let codec = Codec::new(id, 131072, options).expect("codec");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 ^ (i / 1000) as u8).collect();
        let block = &data[..131072];
        let packed = codec.compress_block(block).expect("compress");
        assert!(packed.len() < block.len());
        let mut out = b"kept".to_vec();
        codec.decompress_block(&packed, &mut out, id).expect("decompress");
        assert_eq!(&out[..4], b"kept");
        assert_eq!(&out[4..], block);
    }

    #[test]
    fn every_written_compressor_reads_back_its_blocks() {
        round_trip(GZIP, None);
        round_trip(XZ, None);
        // x86 and sparc BCJ filters allowed, 64 KiB dictionary.
        let mut xz = vec![0x08, 0x80];
        xz.extend_from_slice(&65536u32.to_le_bytes());
        xz.extend_from_slice(&0x21u32.to_le_bytes());
        round_trip(XZ, Some(xz));
        round_trip(LZ4, Some(vec![0x08, 0x80, 1, 0, 0, 0, 0, 0, 0, 0]));
        round_trip(ZSTD, None);
    }

    #[test]
    fn options_set_the_settings_and_defaults_are_mksquashfs_ones() {
        let zstd = |options| Codec::new(ZSTD, 131072, options).expect("codec").settings;
        assert_eq!(zstd(None), Settings::Zstd { level: 15 });
        assert_eq!(zstd(Some(vec![4, 0x80, 19, 0, 0, 0])), Settings::Zstd { level: 19 });
        let xz = Codec::new(XZ, 1 << 20, None).expect("codec").settings;
        assert_eq!(xz, Settings::Xz { dict_size: 1 << 20, filters: 0 });
        let refused = Codec::new(LZO, 131072, None).expect_err("lzo");
        assert!(refused.contains("lzo"), "{refused}");
        let mut arm = vec![0x08, 0x80];
        arm.extend_from_slice(&131072u32.to_le_bytes());
        arm.extend_from_slice(&0x08u32.to_le_bytes());
        let refused = Codec::new(XZ, 131072, Some(arm)).expect_err("arm bcj");
        assert!(refused.contains("-Xbcj"), "{refused}");
    }

    #[test]
    fn blocks_compressed_in_a_rehearsal_are_the_ones_compressed_inline() {
        let codec = Codec::new(XZ, 131072, None).expect("codec").leak();
        let blocks: Vec<Vec<u8>> =
            (0..40u32).map(|n| (0..131072u32).map(|i| ((i * n) % 253) as u8).collect()).collect();
        let inline: Vec<Vec<u8>> = blocks.iter().map(|b| codec.compress_block(b).expect("compress")).collect();
        let rehearsed = codec
            .rehearse(|| blocks.iter().map(|b| codec.compress_or_queue(b)).collect::<io::Result<Vec<_>>>())
            .expect("rehearsal");
        assert_eq!(rehearsed, blocks, "a rehearsal returns its blocks as they are");
        assert_eq!(lock(&codec.ahead).len(), blocks.len());
        let written: Vec<Vec<u8>> = blocks.iter().map(|b| codec.compress_or_queue(b).expect("write")).collect();
        assert_eq!(written, inline);
        assert!(lock(&codec.ahead).is_empty(), "every block compressed ahead was used");
    }

    #[test]
    fn a_corrupt_block_is_an_error_not_a_panic() {
        for id in [GZIP, XZ, LZ4, ZSTD] {
            let codec = Codec::new(id, 4096, None).expect("codec");
            let mut out = Vec::new();
            assert!(codec.decompress_block(&[0xff; 64], &mut out, id).is_err(), "compressor {id}");
        }
    }
}
