//! erofs files stored compressed, read whole: their logical-cluster indexes (full or compact),
//! the extents those describe (each from a head cluster to the next one: its physical cluster's
//! address and size, big physical clusters, a tail packed inline after the indexes), and each
//! physical cluster decoded (lz4, or stored plain) into the file's bytes. The layout is
//! erofs-utils' and the kernel's (zmap.c). What erofs-utils 1.6 added (tails kept as fragments
//! of a packed inode, rotated plain clusters, clusters shared by dedupe) is refused by name:
//! Debian 12's erofs-utils 1.5, the reference the tests use, cannot make it.

use std::io;

/// Logical-cluster types (the two low bits of an index's advise).
const TYPE_PLAIN: u8 = 0;
const TYPE_HEAD1: u8 = 1;
const TYPE_NONHEAD: u8 = 2;
/// A non-head cluster whose delta field holds its physical cluster's block count instead.
const D0_CBLKCNT: u32 = 1 << 11;
/// A full index's head that refers to part of a decoded cluster (dedupe).
const PARTIAL_REF: u16 = 1 << 15;
/// The map header's advise bits.
const ADVISE_COMPACTED_2B: u16 = 0x1;
const ADVISE_BIG_PCLUSTER_1: u16 = 0x2;
const ADVISE_BIG_PCLUSTER_2: u16 = 0x4;
const ADVISE_INLINE_PCLUSTER: u16 = 0x8;
const ADVISE_INTERLACED_PCLUSTER: u16 = 0x10;
const ADVISE_FRAGMENT_PCLUSTER: u16 = 0x20;
/// The map header's cluster-bits byte: the whole file is a fragment of the packed inode.
const FRAGMENT_INODE_BIT: u8 = 0x80;
/// Compression algorithms xdkms decodes.
const ALGORITHM_LZ4: u8 = 0;
/// The largest a decoded extent may be (the format's own limit is far below).
const MAX_EXTENT: u64 = 64 << 20;
/// The largest compressed file read (its cluster indexes are held while it decodes: 24 bytes
/// per 4 KiB); a kernel's files are far smaller.
const MAX_FILE: u64 = 1 << 30;

/// The image-wide settings a compressed file is read with.
pub struct Geometry {
    pub block_bits: u32,
    /// lz4 data ends at its physical cluster's end, after zero padding (mkfs.erofs since 2020).
    pub zero_padding: bool,
    /// The image's length: no file decodes to more than 256 times it (lz4's best ratio is 255).
    pub image_len: u64,
}

/// A compressed file: where its inode's body starts (after the inode and its xattrs), its size,
/// and whether its indexes are compact.
pub struct File {
    pub body_at: u64,
    pub size: u64,
    pub compact: bool,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// One logical cluster's index, decoded.
#[derive(Debug, Clone, Copy, Default)]
struct Lcluster {
    kind: u8,
    /// Heads: where in the cluster the extent starts, and its physical block.
    clusterofs: u32,
    pblk: u64,
    /// Non-heads: the physical cluster's block count, when this one carries it.
    cblkcnt: Option<u32>,
}

/// The map header and what it says.
struct Header {
    advise: u16,
    algorithm: u8,
    cluster_bits: u32,
    /// Bytes of the tail packed inline.
    idata_size: u16,
    whole_fragment: bool,
}

fn header(raw: &[u8], geometry: &Geometry) -> Header {
    Header {
        advise: le16(raw, 4),
        algorithm: raw[6] & 15,
        cluster_bits: geometry.block_bits + u32::from(raw[7] & 7),
        idata_size: le16(raw, 2),
        whole_fragment: raw[7] & FRAGMENT_INODE_BIT != 0,
    }
}

/// The whole content of compressed `file`, its bytes read with `bytes` (`len` at `at` in the
/// image); `what` names it in messages.
pub fn read(
    geometry: &Geometry,
    file: &File,
    bytes: &dyn Fn(u64, u64) -> io::Result<Vec<u8>>,
    what: &dyn Fn() -> String,
) -> io::Result<Vec<u8>> {
    let corrupt = |detail: &str| invalid(format!("corrupt: {}: {detail}", what()));
    let unread = |detail: &str| {
        let advice = "make the image without it, or customize the tree it was made from";
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{} is stored {detail}, which xdkms does not read yet: {advice}", what()),
        )
    };
    if file.size > geometry.image_len.saturating_mul(256) {
        return Err(corrupt("its size is more than its image could hold compressed"));
    }
    if file.size > MAX_FILE {
        return Err(unread(&format!(
            "compressed and {} bytes long (xdkms reads compressed files up to 1 GiB)",
            file.size
        )));
    }
    let map_at = file.body_at.next_multiple_of(8);
    let head = header(&bytes(map_at, 8)?, geometry);
    if head.whole_fragment || head.advise & ADVISE_FRAGMENT_PCLUSTER != 0 {
        return Err(unread("in the packed inode (mkfs.erofs -E fragments)"));
    }
    if head.advise & ADVISE_INTERLACED_PCLUSTER != 0 {
        return Err(unread("in interlaced clusters (erofs-utils 1.6 or later)"));
    }
    if head.algorithm != ALGORITHM_LZ4 {
        return Err(unread(&format!("compressed with erofs algorithm {} (xdkms reads lz4)", head.algorithm)));
    }
    if !geometry.zero_padding {
        return Err(unread("in lz4 clusters without zero padding (mkfs.erofs -E legacy-compress, or before 2020)"));
    }
    let lclusters = if file.compact {
        compact_indexes(geometry, file, &head, map_at + 8, bytes, &corrupt)?
    } else {
        full_indexes(file, &head, map_at + 16, bytes, &unread)?
    };
    let extents = extents(geometry, file, &head, &lclusters, &corrupt)?;
    let tail_inline_at = tail_inline_at(file, &head, map_at, lclusters.len() as u64);
    let last = extents.len().saturating_sub(1);
    // Grown extent by extent, each only as long as what is stored for it can decode to.
    let mut data = Vec::new();
    for (index, extent) in extents.iter().enumerate() {
        let (at, len) = if index == last && head.advise & ADVISE_INLINE_PCLUSTER != 0 {
            (tail_inline_at, u64::from(head.idata_size))
        } else {
            (extent.pblk << geometry.block_bits, u64::from(extent.blocks) << geometry.block_bits)
        };
        let stored = bytes(at, len)?;
        if extent.end - extent.start > (stored.len() as u64).saturating_mul(256) {
            return Err(corrupt("an extent is longer than its stored cluster could decode to"));
        }
        data.resize(extent.end as usize, 0);
        decode(geometry, extent, &stored, &mut data[extent.start as usize..]).map_err(|detail| corrupt(&detail))?;
    }
    if data.len() as u64 != file.size {
        return Err(corrupt("its extents do not cover it"));
    }
    Ok(data)
}

/// Where the tail packed inline starts: right after the index pack of the last cluster.
fn tail_inline_at(file: &File, head: &Header, map_at: u64, clusters: u64) -> u64 {
    let last = clusters.saturating_sub(1);
    if !file.compact {
        return map_at + 16 + (last + 1) * 8;
    }
    let (at, pack) = compact_position(head, map_at + 8, last, clusters);
    at - at % pack + pack
}

/// A full index: 8 bytes per logical cluster after the map header and 8 reserved bytes.
fn full_indexes(
    file: &File,
    head: &Header,
    at: u64,
    bytes: &dyn Fn(u64, u64) -> io::Result<Vec<u8>>,
    unread: &dyn Fn(&str) -> io::Error,
) -> io::Result<Vec<Lcluster>> {
    let count = file.size.div_ceil(1u64 << head.cluster_bits);
    let raw = bytes(at, count * 8)?;
    let mut lclusters = Vec::with_capacity(count as usize);
    for entry in raw.chunks_exact(8) {
        let advise = le16(entry, 0);
        let kind = (advise & 3) as u8;
        let mut lcluster = Lcluster { kind, ..Lcluster::default() };
        match kind {
            TYPE_PLAIN | TYPE_HEAD1 => {
                if advise & PARTIAL_REF != 0 {
                    return Err(unread("in clusters shared with other files (mkfs.erofs -E dedupe)"));
                }
                lcluster.clusterofs = u32::from(le16(entry, 2));
                lcluster.pblk = u64::from(le32(entry, 4));
            }
            TYPE_NONHEAD => {
                let delta0 = u32::from(le16(entry, 4));
                if delta0 & D0_CBLKCNT != 0 {
                    lcluster.cblkcnt = Some(delta0 & !D0_CBLKCNT);
                }
            }
            _ => return Err(unread("with a second compression algorithm")),
        }
        lclusters.push(lcluster);
    }
    Ok(lclusters)
}

/// Where compact index entry `lcn` of `count` lies (clusters of one block only), and the size of
/// its pack: 4-byte entries (packs of 2 in 8 bytes) up to a 32-byte boundary, then 2-byte ones
/// (packs of 16 in 32 bytes) when the header says so, then 4-byte ones again.
fn compact_position(head: &Header, base: u64, lcn: u64, count: u64) -> (u64, u64) {
    let mut initial = (32 - base % 32) / 4;
    if initial == 8 {
        initial = 0;
    }
    let two_byte =
        if head.advise & ADVISE_COMPACTED_2B != 0 && initial < count { (count - initial) / 16 * 16 } else { 0 };
    if lcn < initial {
        return (base + lcn * 4, 8);
    }
    let (at, lcn) = (base + initial * 4, lcn - initial);
    if lcn < two_byte {
        return (at + lcn * 2, 32);
    }
    (at + two_byte * 2 + (lcn - two_byte) * 4, 8)
}

/// Compact indexes, decoded pack by pack: each entry's type and low bits, and each head's
/// physical block counted from the pack's base address.
fn compact_indexes(
    geometry: &Geometry,
    file: &File,
    head: &Header,
    base: u64,
    bytes: &dyn Fn(u64, u64) -> io::Result<Vec<u8>>,
    corrupt: &dyn Fn(&str) -> io::Error,
) -> io::Result<Vec<Lcluster>> {
    if head.cluster_bits != geometry.block_bits {
        return Err(corrupt("compact indexes over clusters of several blocks"));
    }
    if (head.advise & ADVISE_BIG_PCLUSTER_1 == 0) != (head.advise & ADVISE_BIG_PCLUSTER_2 == 0) {
        return Err(corrupt("inconsistent big cluster flags"));
    }
    let count = file.size.div_ceil(1u64 << geometry.block_bits);
    let mut lclusters = Vec::with_capacity(count as usize);
    let mut lcn = 0;
    while lcn < count {
        let (at, pack) = compact_position(head, base, lcn, count);
        let start = at - at % pack;
        let per_pack = if pack == 32 { 16 } else { 2 };
        let raw = bytes(start, pack)?;
        let first = lcn - (at - start) / (pack / per_pack);
        let decoded = unpack(head, &raw, per_pack, geometry.block_bits);
        for (index, lcluster) in decoded.into_iter().enumerate() {
            let n = first + index as u64;
            if n >= lcn && n < count {
                lclusters.push(lcluster);
            }
        }
        lcn = first + per_pack;
    }
    if lclusters.len() as u64 != count {
        return Err(corrupt("compact indexes do not cover the file"));
    }
    Ok(lclusters)
}

/// The entries of one compact pack (`raw`, `count` entries and the base address at its end).
fn unpack(head: &Header, raw: &[u8], count: u64, bits: u32) -> Vec<Lcluster> {
    let encode_bits = (raw.len() as u64 - 4) * 8 / count;
    let mask = (1u32 << bits) - 1;
    let entry = |i: u64| {
        let pos = encode_bits * i;
        let byte = (pos / 8) as usize;
        let mut word = [0u8; 4];
        let available = (raw.len() - byte).min(4);
        word[..available].copy_from_slice(&raw[byte..byte + available]);
        let v = u32::from_le_bytes(word) >> (pos % 8);
        ((v >> bits) as u8 & 3, v & mask)
    };
    let big = head.advise & ADVISE_BIG_PCLUSTER_1 != 0;
    // The base address precedes the pack's first cluster by one block unless clusters are big
    // (erofs-utils' and the kernel's reading of it).
    let base = u64::from(le32(raw, raw.len() - 4));
    let mut blocks = if big { 0 } else { 1 };
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        let (kind, lo) = entry(i);
        let mut lcluster = Lcluster { kind, ..Lcluster::default() };
        // Each block count in the pack moves the address on, its head in this pack or the
        // last one; a head without one takes one block.
        if kind == TYPE_NONHEAD {
            if big && lo & D0_CBLKCNT != 0 {
                lcluster.cblkcnt = Some(lo & !D0_CBLKCNT);
                blocks += u64::from(lo & !D0_CBLKCNT);
            }
        } else {
            lcluster.clusterofs = lo;
            lcluster.pblk = base + blocks;
            let counted_next = (i + 1 < count)
                .then(|| entry(i + 1))
                .is_some_and(|(next, lo)| big && next == TYPE_NONHEAD && lo & D0_CBLKCNT != 0);
            if !counted_next {
                blocks += 1;
            }
        }
        out.push(lcluster);
    }
    out
}

/// One extent of the file: its bytes `start..end`, from a physical cluster of `blocks` blocks
/// at block `pblk` (or the inline tail, or a fragment), decoded as its head's type says.
#[derive(Debug)]
struct Extent {
    start: u64,
    end: u64,
    pblk: u64,
    blocks: u32,
    plain: bool,
}

/// The file's extents, each from a head cluster to the next head (the last to the file's end).
fn extents(
    geometry: &Geometry,
    file: &File,
    head: &Header,
    lclusters: &[Lcluster],
    corrupt: &dyn Fn(&str) -> io::Error,
) -> io::Result<Vec<Extent>> {
    let cluster = 1u64 << head.cluster_bits;
    let big = head.advise & ADVISE_BIG_PCLUSTER_1 != 0;
    let heads: Vec<usize> = (0..lclusters.len()).filter(|&i| lclusters[i].kind != TYPE_NONHEAD).collect();
    let start_of = |i: usize| i as u64 * cluster + u64::from(lclusters[i].clusterofs);
    if heads.first().map(|&i| start_of(i)) != Some(0) {
        return Err(corrupt("its first cluster is not an extent's head"));
    }
    let mut extents = Vec::with_capacity(heads.len());
    for (n, &i) in heads.iter().enumerate() {
        let start = start_of(i);
        if start >= file.size {
            break;
        }
        let end = heads.get(n + 1).map_or(file.size, |&next| start_of(next)).min(file.size);
        if end <= start || end - start > MAX_EXTENT {
            return Err(corrupt("an extent's bounds are out of order"));
        }
        if lclusters[i].kind != TYPE_PLAIN && lclusters[i].kind != TYPE_HEAD1 {
            return Err(corrupt("a cluster of a second algorithm, which xdkms does not read"));
        }
        let plain = lclusters[i].kind == TYPE_PLAIN;
        // One logical cluster's worth of blocks, unless a big cluster's count says otherwise.
        let one_cluster = 1u32 << (head.cluster_bits - geometry.block_bits);
        let blocks = match lclusters.get(i + 1) {
            Some(next) if big && !plain && next.kind == TYPE_NONHEAD => {
                next.cblkcnt.ok_or_else(|| corrupt("a big cluster without its block count"))?
            }
            _ => one_cluster,
        };
        extents.push(Extent { start, end, pblk: lclusters[i].pblk, blocks, plain });
    }
    Ok(extents)
}

/// Decodes `stored` (a physical cluster, or the inline tail) into `out` (the extent's bytes).
fn decode(geometry: &Geometry, extent: &Extent, stored: &[u8], out: &mut [u8]) -> Result<(), String> {
    if extent.plain {
        if out.len() > stored.len() {
            return Err("a stored cluster is shorter than its extent".into());
        }
        out.copy_from_slice(&stored[..out.len()]);
        return Ok(());
    }
    if stored.is_empty() {
        return Err("an lz4 cluster holds nothing".into());
    }
    let block = (1usize << geometry.block_bits).min(stored.len());
    let margin = stored[..block].iter().position(|&b| b != 0).unwrap_or(block);
    if margin >= stored.len() {
        return Err("an lz4 cluster holds nothing".into());
    }
    match lz4_flex::block::decompress_into(&stored[margin..], out) {
        Ok(n) if n == out.len() => Ok(()),
        Ok(n) => Err(format!("an lz4 cluster decodes to {n} bytes, its extent is {}", out.len())),
        Err(e) => Err(format!("an lz4 cluster does not decode: {e}")),
    }
}
