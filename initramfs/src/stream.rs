//! Reading an image as a stream: segment after segment, member after member, each member's data
//! handed to the caller as a reader. Memory stays fixed whatever the image's or a member's size:
//! nothing is held but one buffer of input, the decoder's state and the member being visited.

use std::io::{self, BufRead, Read, Write};

use crate::codec::{Codec, LZ4_LEGACY_BLOCK, LZ4_LEGACY_MAGIC, LZMA_MEMORY_LIMIT};
use crate::image::ImageError;
use crate::newc::{HEADER_LEN, NAME_MAX, S_IFLNK, S_IFMT, S_IFREG, TRAILER};

/// How much input is buffered at once.
const BUFFER: usize = 256 << 10;

/// A reader with its own buffer that can look ahead a few bytes (magics, headers) and counts
/// what has been consumed, so a decoder reading through it leaves the position exactly at the
/// end of its member.
pub struct Input<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    pos: u64,
}

impl<R: Read> Input<R> {
    pub fn new(inner: R) -> Input<R> {
        Input { inner, buf: vec![0; BUFFER].into_boxed_slice(), start: 0, end: 0, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// At least `n` bytes ahead (fewer only at the end of the input), without consuming them.
    pub fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        let n = n.min(self.buf.len());
        if self.end - self.start < n {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            while self.end < n {
                match self.inner.read(&mut self.buf[self.end..]) {
                    Ok(0) => break,
                    Ok(read) => self.end += read,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(&self.buf[self.start..(self.start + n).min(self.end)])
    }

    /// Consumes NUL bytes; returns how many.
    fn skip_zeros(&mut self) -> io::Result<u64> {
        let mut skipped = 0;
        loop {
            let available = self.fill_buf()?;
            if available.is_empty() {
                return Ok(skipped);
            }
            let zeros = available.iter().take_while(|&&b| b == 0).count();
            self.consume(zeros);
            skipped += zeros as u64;
            if zeros == 0 {
                return Ok(skipped);
            }
        }
    }

    /// Consumes exactly `n` bytes into a vector (which never grows past `n`).
    fn read_vec(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0; n];
        self.read_exact(&mut out)?;
        Ok(out)
    }

    /// Consumes up to `n` bytes, stopping at the end of the input; returns how many.
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        skip_all(&mut self.by_ref().take(n))
    }
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for Input<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            loop {
                match self.inner.read(&mut self.buf) {
                    Ok(read) => {
                        self.end = read;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(&self.buf[self.start..self.end])
    }

    fn consume(&mut self, amount: usize) {
        let amount = amount.min(self.end - self.start);
        self.start += amount;
        self.pos += amount as u64;
    }
}

/// One archive member's header. Names are bytes, as the kernel takes them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    pub name: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub ino: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub file_size: u32,
    /// The crc format's data checksum (070702).
    pub checksum: Option<u32>,
}

impl Header {
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }
}

/// A segment as the scan meets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub index: usize,
    /// Where it starts in the image.
    pub offset: u64,
    /// Its length, known at its end (zero at its start).
    pub len: u64,
    pub codec: Codec,
    /// Members read, trailers excluded (known at its end).
    pub entries: usize,
}

/// What a scan calls back for. A member's data comes as a buffered reader (so it can be written
/// out from the input's own buffer: [`copy_data`]); what a visit leaves unread is skipped.
pub trait Visitor {
    fn segment_start(&mut self, _segment: &SegmentInfo) -> io::Result<()> {
        Ok(())
    }
    fn member(&mut self, segment: &SegmentInfo, header: &Header, data: &mut dyn BufRead) -> io::Result<()>;
    fn segment_end(&mut self, _segment: &SegmentInfo) -> io::Result<()> {
        Ok(())
    }
}

/// Why a scan stopped: the image is not one the kernel would unpack, or the visitor failed.
#[derive(Debug)]
pub enum ScanError {
    Image(ImageError),
    Visitor(io::Error),
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::Image(e) => e.fmt(f),
            ScanError::Visitor(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ScanError {}

fn image_error(offset: u64, message: impl Into<String>) -> ScanError {
    ScanError::Image(ImageError { offset: offset as usize, message: message.into() })
}

/// Reads every segment of the image in `input` as the kernel's unpacker does (NULs between
/// segments skipped, an uncompressed archive 4-aligned, anything else the magic of a compressed
/// member decoded to its end), calling `visitor` for each segment and member in order.
pub fn scan(input: impl Read + Send, visitor: &mut dyn Visitor) -> Result<usize, ScanError> {
    scan_dyn(Box::new(input), visitor)
}

/// [`scan`]'s body, not generic, so that it is compiled with this crate's optimization settings
/// and not with those of each caller it would otherwise be instantiated in (xdkms's release
/// profile optimizes its own crate for size; listing a zstd image ran a third slower so).
fn scan_dyn(input: Box<dyn Read + Send + '_>, visitor: &mut dyn Visitor) -> Result<usize, ScanError> {
    let mut input = Input::new(input);
    let mut index = 0;
    loop {
        input.skip_zeros().map_err(|e| image_error(input.position(), e.to_string()))?;
        let offset = input.position();
        let head = input.peek(6).map_err(|e| image_error(offset, e.to_string()))?.to_vec();
        if head.is_empty() {
            break;
        }
        let codec = if head[0] == b'0' && offset.is_multiple_of(4) {
            Codec::None
        } else {
            match Codec::detect(&head) {
                Some(codec) => codec,
                None => return Err(unknown_magic(offset, &head)),
            }
        };
        let mut segment = SegmentInfo { index, offset, len: 0, codec, entries: 0 };
        visitor.segment_start(&segment).map_err(ScanError::Visitor)?;
        segment.entries = if codec == Codec::None {
            read_archive(&mut input, true, &segment, visitor).map_err(ArchiveError::in_image)?
        } else {
            read_compressed(&mut input, &segment, visitor)?
        };
        segment.len = input.position() - offset;
        visitor.segment_end(&segment).map_err(ScanError::Visitor)?;
        index += 1;
        if segment.len == 0 {
            return Err(image_error(offset, "a segment of no bytes"));
        }
    }
    if index == 0 {
        return Err(image_error(0, "no cpio archive in the image"));
    }
    Ok(index)
}

/// Writes what is left of `data` to `out` straight from the reader's buffer; returns how many
/// bytes. (`io::copy` would copy every byte once more, through a buffer of its own.)
pub fn copy_data(data: &mut dyn BufRead, out: &mut dyn Write) -> io::Result<u64> {
    let mut copied = 0;
    loop {
        let available = data.fill_buf()?;
        if available.is_empty() {
            return Ok(copied);
        }
        let n = available.len();
        out.write_all(available)?;
        data.consume(n);
        copied += n as u64;
    }
}

/// Consumes what is left of `data` without copying it anywhere; returns how many bytes.
fn skip_all(data: &mut dyn BufRead) -> io::Result<u64> {
    let mut skipped = 0;
    loop {
        let n = data.fill_buf()?.len();
        if n == 0 {
            return Ok(skipped);
        }
        data.consume(n);
        skipped += n as u64;
    }
}

/// Chunks of decoded data handed from the decoding thread to the reading one, and how many may
/// wait: the decoder runs ahead by at most this much.
const DECODED_CHUNK: usize = 1 << 20;
const CHUNKS_AHEAD: usize = 4;

/// A chunk of decoded data and how many of its bytes are filled (chunks are reused, never
/// shrunk: the reader sends each one back when it is done with it).
type Decoded = io::Result<(Vec<u8>, usize)>;

/// Reads the archive inside the compressed member at the input's position. The member is
/// decoded on a thread of its own while this one reads the archive (as a decompressor piped
/// into cpio would run), through a bounded queue, so memory stays a few chunks.
fn read_compressed(
    input: &mut Input<Box<dyn Read + Send + '_>>,
    segment: &SegmentInfo,
    visitor: &mut dyn Visitor,
) -> Result<usize, ScanError> {
    let (codec, offset) = (segment.codec, segment.offset);
    std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Decoded>(CHUNKS_AHEAD);
        let (spare_sender, spare_receiver) = std::sync::mpsc::channel::<Vec<u8>>();
        scope.spawn(move || {
            let mut decoder = match decoder(codec, input) {
                Ok(decoder) => decoder,
                Err(e) => return drop(sender.send(Err(e))),
            };
            loop {
                // A chunk the reader is done with, else a new one: a few in all, whatever the size.
                let mut chunk = spare_receiver.try_recv().unwrap_or_else(|_| vec![0; DECODED_CHUNK]);
                match fill(&mut decoder, &mut chunk) {
                    Ok(0) => return,
                    Ok(filled) => {
                        // The reader stopped (an error in the archive): so does the decoder.
                        if sender.send(Ok((chunk, filled))).is_err() {
                            return;
                        }
                    }
                    Err(e) => return drop(sender.send(Err(e))),
                }
            }
        });
        // One archive reader for both kinds of segment (a second instance would only grow the
        // binary): the decoded chunks are read through the same boxed reader type as the image.
        let chunks: Box<dyn Read + Send> =
            Box::new(Chunks { receiver, spare: spare_sender, chunk: Vec::new(), at: 0, filled: 0 });
        let mut decoded = Input::new(chunks);
        read_archive(&mut decoded, false, segment, visitor).map_err(|e| e.inside(codec, offset))
    })
}

/// Reads from `reader` until `buf` is full or the reader ends; returns how many bytes (what
/// `read_exact` does, without its error when the input is shorter).
pub fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The reading end of the decoding thread's queue; each chunk read is sent back for reuse.
struct Chunks {
    receiver: std::sync::mpsc::Receiver<Decoded>,
    spare: std::sync::mpsc::Sender<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
    filled: usize,
}

impl Read for Chunks {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.filled {
            match self.receiver.recv() {
                Ok(decoded) => {
                    let (chunk, filled) = decoded?;
                    let done = std::mem::replace(&mut self.chunk, chunk);
                    if !done.is_empty() {
                        // The decoder may have finished: then the chunk is simply dropped.
                        let _ = self.spare.send(done);
                    }
                    (self.at, self.filled) = (0, filled);
                }
                // The decoder finished: the end of the member.
                Err(_) => return Ok(0),
            }
        }
        let n = (self.filled - self.at).min(out.len());
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn unknown_magic(offset: u64, head: &[u8]) -> ScanError {
    let magic: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let hint = if head[0] == b'0' {
        " (an uncompressed archive after a compressed one must start on a 4-byte boundary)"
    } else {
        ""
    };
    image_error(offset, format!("unknown magic {}{hint}", magic.join(" ")))
}

/// A decoder for the one member at the input's position; it reads exactly that member.
pub fn decoder<'a, R: Read + Send>(codec: Codec, input: &'a mut Input<R>) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match codec {
        Codec::None => Box::new(input),
        Codec::Gzip => Box::new(flate2::bufread::GzDecoder::new(input)),
        Codec::Bzip2 => Box::new(bzip2::bufread::BzDecoder::new(input)),
        // Without the CONCATENATED flag the xz decoder ends with the first stream.
        Codec::Xz => Box::new(LzmaReader::new(
            xz2::stream::Stream::new_stream_decoder(LZMA_MEMORY_LIMIT, 0).map_err(io::Error::other)?,
            input,
        )),
        Codec::Lzma => Box::new(LzmaReader::new(
            xz2::stream::Stream::new_lzma_decoder(LZMA_MEMORY_LIMIT).map_err(io::Error::other)?,
            input,
        )),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?.single_frame()),
        Codec::Lz4 => Box::new(Lz4LegacyReader::new(input)?),
        Codec::Lzo => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "lzo-compressed members are not supported; recompress the image with gzip, xz or zstd",
            ))
        }
    })
}

/// liblzma over a buffered input, stopping at the end of its stream (xz2's own readers take what
/// follows as corruption, but here it is the next segment).
struct LzmaReader<B> {
    stream: xz2::stream::Stream,
    input: B,
    done: bool,
}

impl<B: BufRead> LzmaReader<B> {
    fn new(stream: xz2::stream::Stream, input: B) -> Self {
        LzmaReader { stream, input, done: false }
    }
}

impl<B: BufRead> Read for LzmaReader<B> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while !self.done && !out.is_empty() {
            let available = self.input.fill_buf()?;
            if available.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the compressed member is truncated"));
            }
            let (in_before, out_before) = (self.stream.total_in(), self.stream.total_out());
            let status = self.stream.process(available, out, xz2::stream::Action::Run).map_err(|e| match e {
                xz2::stream::Error::MemLimit => io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the member's header asks for more than {} MiB to decompress", LZMA_MEMORY_LIMIT >> 20),
                ),
                other => io::Error::new(io::ErrorKind::InvalidData, other),
            })?;
            self.input.consume((self.stream.total_in() - in_before) as usize);
            self.done = status == xz2::stream::Status::StreamEnd;
            let produced = (self.stream.total_out() - out_before) as usize;
            if produced > 0 {
                return Ok(produced);
            }
            if self.stream.total_in() == in_before && !self.done {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "the xz/lzma member makes no progress"));
            }
        }
        Ok(0)
    }
}

/// The kernel's legacy LZ4 reader: magic, then `[u32 LE length][block]` until the input ends or a
/// zero length word; a repeated magic starts a concatenated stream.
struct Lz4LegacyReader<'a, R> {
    input: &'a mut Input<R>,
    block: Vec<u8>,
    at: usize,
    len: usize,
    done: bool,
}

impl<'a, R: Read> Lz4LegacyReader<'a, R> {
    fn new(input: &'a mut Input<R>) -> io::Result<Self> {
        if input.peek(4)? != LZ4_LEGACY_MAGIC.to_le_bytes() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not an LZ4 legacy stream"));
        }
        input.consume(4);
        Ok(Lz4LegacyReader { input, block: vec![0; LZ4_LEGACY_BLOCK], at: 0, len: 0, done: false })
    }

    /// Decodes the next block into `block`; false at the end of the stream.
    fn next_block(&mut self) -> io::Result<bool> {
        loop {
            let word = self.input.peek(4)?;
            let Ok(word) = <[u8; 4]>::try_from(word.get(..4).unwrap_or_default()) else { return Ok(false) };
            let len = u32::from_le_bytes(word);
            if len == 0 {
                return Ok(false);
            }
            self.input.consume(4);
            if len == LZ4_LEGACY_MAGIC {
                continue;
            }
            // A block never holds more than the compression bound of LZ4_LEGACY_BLOCK.
            if len as usize > LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("LZ4 legacy block of {len} bytes")));
            }
            let data = self.input.read_vec(len as usize).map_err(|_| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "LZ4 legacy block runs past the end of the image")
            })?;
            self.len = lz4_flex::block::decompress_into(&data, &mut self.block)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("LZ4 block: {e}")))?;
            self.at = 0;
            return Ok(true);
        }
    }
}

impl<R: Read> Read for Lz4LegacyReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.len && !self.done {
            self.done = !self.next_block()?;
        }
        let n = (self.len - self.at).min(out.len());
        out[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A failure inside one archive: where (relative to its stream) and what.
enum ArchiveError {
    /// The cpio data is wrong.
    Format(u64, String),
    /// The stream itself cannot be read (for a compressed member: cannot be decompressed).
    Read(u64, io::Error),
    Visitor(io::Error),
}

impl ArchiveError {
    /// As an error of an uncompressed segment (its positions are the image's own).
    fn in_image(self) -> ScanError {
        match self {
            ArchiveError::Format(position, message) => image_error(position, message),
            ArchiveError::Read(position, e) => image_error(position, format!("cannot be read: {e}")),
            ArchiveError::Visitor(e) => ScanError::Visitor(e),
        }
    }

    /// As an error inside the compressed member at `offset`.
    fn inside(self, codec: Codec, offset: u64) -> ScanError {
        match self {
            ArchiveError::Format(position, message) => image_error(
                offset,
                format!("inside the {codec} member, at byte {position} of the cpio stream: {message}"),
            ),
            ArchiveError::Read(_, e) => image_error(offset, format!("{codec} member cannot be decompressed: {e}")),
            ArchiveError::Visitor(e) => ScanError::Visitor(e),
        }
    }
}

fn hex_field(header: &[u8], index: usize) -> Option<u32> {
    let field = header.get(6 + 8 * index..14 + 8 * index)?;
    u32::from_str_radix(std::str::from_utf8(field).ok()?, 16).ok()
}

/// Bytes of padding after `len` bytes to reach a multiple of four.
fn pad4(len: u64) -> u64 {
    (4 - len % 4) % 4
}

/// Reads the members of one archive stream. With `until_trailer` (an uncompressed segment) it
/// stops after the first trailer, or before anything that is not a header; otherwise (a
/// decompressed member) it reads to the end, skipping the NUL padding between archives.
fn read_archive(
    input: &mut Input<Box<dyn Read + Send + '_>>,
    until_trailer: bool,
    segment: &SegmentInfo,
    visitor: &mut dyn Visitor,
) -> Result<usize, ArchiveError> {
    let format = |position: u64, message: String| ArchiveError::Format(position, message);
    let io_error = |position: u64| move |e: io::Error| ArchiveError::Read(position, e);
    let mut entries = 0;
    loop {
        if !until_trailer {
            input.skip_zeros().map_err(io_error(input.position()))?;
            let position = input.position();
            if input.peek(1).map_err(io_error(position))?.is_empty() {
                return Ok(entries);
            }
            if !input.position().is_multiple_of(4) {
                return Err(format(
                    input.position(),
                    "broken padding: a header does not start on a 4-byte boundary".into(),
                ));
            }
        }
        let start = input.position();
        let header = read_header(input, until_trailer)?;
        // The kernel checks the crc format's sum on regular files only (do_copy); GNU cpio
        // writes 0 for a symlink's.
        let sum = header.checksum.filter(|_| header.file_type() == S_IFREG).map(|_| 0);
        let mut data = MemberData { inner: input.by_ref().take(u64::from(header.file_size)), sum };
        if header.name != TRAILER.as_bytes() {
            visitor.member(segment, &header, &mut data).map_err(|e| match e.kind() {
                // The data reader's own failures (a truncated or corrupt stream) are the image's.
                io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData if data.inner.limit() > 0 => {
                    ArchiveError::Read(start, e)
                }
                _ => ArchiveError::Visitor(e),
            })?;
            entries += 1;
        }
        skip_all(&mut data).map_err(io_error(start))?;
        if data.inner.limit() > 0 {
            return Err(format(start, format!("{}: file data is truncated", String::from_utf8_lossy(&header.name))));
        }
        if data.sum.is_some_and(|sum| Some(sum) != header.checksum) {
            return Err(format(start, format!("{}: bad data checksum", String::from_utf8_lossy(&header.name))));
        }
        // The data's padding may be missing at the very end of a stream; the kernel tolerates that.
        input.skip(pad4(u64::from(header.file_size))).map_err(io_error(start))?;
        if header.name == TRAILER.as_bytes() {
            if until_trailer {
                return Ok(entries);
            }
            continue;
        }
        if until_trailer {
            // An archive without a trailer ends where the next thing begins.
            let position = input.position();
            let next = input.peek(6).map_err(io_error(position))?;
            if !crate::newc::looks_like_header(next) {
                return Ok(entries);
            }
        }
    }
}

/// The data reader of one member, straight over the input's buffer; for a regular file of a
/// crc archive it sums the bytes as they are consumed (read, copied or skipped alike).
struct MemberData<T> {
    inner: io::Take<T>,
    sum: Option<u32>,
}

impl<T: BufRead> Read for MemberData<T> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<T: BufRead> BufRead for MemberData<T> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        if let Some(sum) = &mut self.sum {
            // What is consumed was filled already: this returns it without reading.
            if let Ok(available) = self.inner.fill_buf() {
                let bytes = &available[..amount.min(available.len())];
                *sum = bytes.iter().fold(*sum, |acc, &b| acc.wrapping_add(u32::from(b)));
            }
        }
        self.inner.consume(amount);
    }
}

/// Reads a header and its name, with their padding.
fn read_header(input: &mut Input<Box<dyn Read + Send + '_>>, until_trailer: bool) -> Result<Header, ArchiveError> {
    let start = input.position();
    let format = |message: &str| ArchiveError::Format(start, message.to_string());
    let head = input.peek(HEADER_LEN).map_err(|e| ArchiveError::Read(start, e))?;
    if head.starts_with(b"070707") {
        return Err(format("old binary/odc cpio (070707): the kernel reads only newc; use cpio -H newc"));
    }
    // A stream cut inside the magic is reported as truncated below, not as junk.
    let cut_magic = head.len() < 6 && b"070701".starts_with(head);
    if !(crate::newc::looks_like_header(head) || cut_magic) {
        return Err(format(if until_trailer { "no cpio magic" } else { "junk at the end of the compressed archive" }));
    }
    if head.len() < HEADER_LEN {
        return Err(format("truncated cpio header"));
    }
    let fields: Option<Vec<u32>> = (0..13).map(|i| hex_field(head, i)).collect();
    let fields = fields.ok_or_else(|| format("cpio header field is not hexadecimal"))?;
    let crc = head.starts_with(b"070702");
    input.consume(HEADER_LEN);
    let namesize = fields[11];
    if namesize == 0 || namesize > NAME_MAX {
        return Err(format(&format!("name size {namesize} is outside 1..={NAME_MAX}")));
    }
    let mut name = input.read_vec(namesize as usize).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => format("truncated cpio name"),
        _ => ArchiveError::Read(start, e),
    })?;
    input.skip(pad4(HEADER_LEN as u64 + u64::from(namesize))).map_err(|e| ArchiveError::Read(start, e))?;
    // The name ends at its first NUL (namesize counts the terminator).
    if let Some(nul) = name.iter().position(|&b| b == 0) {
        name.truncate(nul);
    }
    if name.is_empty() {
        return Err(format("empty entry name"));
    }
    let header = Header {
        name,
        ino: fields[0],
        mode: fields[1],
        uid: fields[2],
        gid: fields[3],
        nlink: fields[4],
        mtime: fields[5],
        file_size: fields[6],
        dev_major: fields[7],
        dev_minor: fields[8],
        rdev_major: fields[9],
        rdev_minor: fields[10],
        checksum: crc.then_some(fields[12]),
    };
    if header.file_type() == S_IFLNK && header.file_size > NAME_MAX {
        return Err(format("symlink target longer than PATH_MAX"));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode, Level};
    use crate::newc::{write, Entry};

    /// Collects what a scan sees.
    #[derive(Default)]
    struct Collect {
        segments: Vec<SegmentInfo>,
        members: Vec<(Vec<u8>, Vec<u8>)>,
    }

    impl Visitor for Collect {
        fn member(&mut self, _segment: &SegmentInfo, header: &Header, data: &mut dyn BufRead) -> io::Result<()> {
            let mut bytes = Vec::new();
            data.read_to_end(&mut bytes)?;
            self.members.push((header.name.clone(), bytes));
            Ok(())
        }
        fn segment_end(&mut self, segment: &SegmentInfo) -> io::Result<()> {
            self.segments.push(*segment);
            Ok(())
        }
    }

    fn archive(names: &[&str]) -> Vec<u8> {
        let entries: Vec<Entry> =
            names.iter().map(|n| Entry::file(n.to_string(), 0o644, n.as_bytes().repeat(1000))).collect();
        write(&entries).expect("write")
    }

    #[test]
    fn every_codec_streams_and_ends_at_its_member() {
        for codec in [Codec::Gzip, Codec::Bzip2, Codec::Lzma, Codec::Xz, Codec::Lz4, Codec::Zstd] {
            let mut image = archive(&["early/a"]);
            let first = image.len() as u64;
            image.extend(encode(codec, &archive(&["b", "c"]), Level::default()).expect("encode"));
            let second_end = image.len() as u64;
            // The kernel's LZ4 reader ends its member at a zero length word: images pad with NULs.
            image.extend([0; 4]);
            while !image.len().is_multiple_of(4) {
                image.push(0);
            }
            image.extend(archive(&["late"]));
            let mut seen = Collect::default();
            scan(&image[..], &mut seen).unwrap_or_else(|e| panic!("{codec}: {e}"));
            let names: Vec<&[u8]> = seen.members.iter().map(|(n, _)| n.as_slice()).collect();
            assert_eq!(names, [&b"early/a"[..], b"b", b"c", b"late"], "{codec}");
            assert_eq!(seen.members[1].1, b"b".repeat(1000));
            assert_eq!(seen.segments.len(), 3, "{codec}");
            assert_eq!((seen.segments[1].offset, seen.segments[1].offset + seen.segments[1].len), (first, second_end));
            assert_eq!(seen.segments[1].entries, 2);
        }
    }

    #[test]
    fn names_are_bytes() {
        let mut bytes = archive(&["x"]);
        // Rename "x" to the byte 0xff: same length, so the archive stays valid.
        let at = bytes.windows(2).position(|w| w == b"x\0").expect("name");
        bytes[at] = 0xff;
        let mut seen = Collect::default();
        scan(&bytes[..], &mut seen).expect("scan");
        assert_eq!(seen.members[0].0, [0xff]);
    }

    fn scan_error(bytes: &[u8]) -> String {
        scan(bytes, &mut Collect::default()).expect_err("refused").to_string()
    }

    #[test]
    fn bad_headers_and_layouts_are_errors() {
        let good = archive(&["a"]);
        let mut long = good.clone();
        long[94..102].copy_from_slice(b"00001001"); // namesize 4097
        assert!(scan_error(&long).contains("name size 4097"));
        let mut odc = good.clone();
        odc[..6].copy_from_slice(b"070707");
        assert!(scan_error(&odc).contains("070707"));
        assert!(scan_error(&[0; 64]).contains("no cpio archive"));
        // An uncompressed archive one byte past a 4-byte boundary after a compressed member.
        let mut misaligned = encode(Codec::Gzip, &good, Level::default()).expect("encode");
        misaligned.resize(misaligned.len().next_multiple_of(4) + 1, 0);
        misaligned.extend_from_slice(&good);
        assert!(scan_error(&misaligned).contains("4-byte boundary"));
        assert!(scan_error(b"PK\x03\x04zip").contains("unknown magic"));
    }

    #[test]
    fn truncated_and_junk_images_are_errors() {
        let member = encode(Codec::Gzip, &archive(&["a"]), Level::default()).expect("encode");
        for bad in [&member[..member.len() - 9], b"junk", &[]] {
            assert!(scan(bad, &mut Collect::default()).is_err());
        }
        let mut data = archive(&["a"]);
        data.truncate(200);
        assert!(scan(&data[..], &mut Collect::default()).is_err());
    }
}
