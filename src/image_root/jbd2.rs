//! The ext3/4 journal's on-disk format (jbd2), as e2fsck and the kernel read it: the journal
//! superblock, one transaction laid out as log blocks (descriptor blocks with their block tags,
//! the blocks' copies, a commit block), and the blocks a log's committed transactions hold
//! (revoke records honoured, checksums verified), for replaying it. No I/O here: callers hand
//! in and take out whole journal blocks.

use std::collections::BTreeMap;

/// Every journal block that is not a copy of a filesystem block starts with this magic number.
const MAGIC: u32 = 0xc03b_3998;
/// Block types.
const DESCRIPTOR_BLOCK: u32 = 1;
const COMMIT_BLOCK: u32 = 2;
const SUPERBLOCK_V1: u32 = 3;
const SUPERBLOCK_V2: u32 = 4;
const REVOKE_BLOCK: u32 = 5;
/// A block header: magic, type, sequence.
const HEADER_LEN: usize = 12;
/// Feature bits.
const COMPAT_CHECKSUM: u32 = 0x1;
const INCOMPAT_REVOKE: u32 = 0x1;
const INCOMPAT_64BIT: u32 = 0x2;
const INCOMPAT_ASYNC_COMMIT: u32 = 0x4;
const INCOMPAT_CSUM_V2: u32 = 0x8;
const INCOMPAT_CSUM_V3: u32 = 0x10;
const INCOMPAT_FAST_COMMIT: u32 = 0x20;
/// Tag flags.
const FLAG_ESCAPE: u16 = 1;
const FLAG_SAME_UUID: u16 = 2;
const FLAG_LAST_TAG: u16 = 8;
/// The journal superblock's checksum field, and the length it covers.
const SB_CHECKSUM_AT: usize = 0xfc;
const SB_LEN: usize = 1024;
/// A commit block's checksum field (h_chksum[0]) and commit time.
const COMMIT_CHECKSUM_AT: usize = 16;
const COMMIT_SEC_AT: usize = 48;

use super::kernel_crc32c as crc32c;

/// The checksum ext4 keeps in its superblock (`sb` its 1024 bytes), over all but that field.
pub fn ext4_superblock_checksum(sb: &[u8]) -> u32 {
    crc32c(&[&sb[..0x3fc]])
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn put32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

fn header(block: &mut [u8], kind: u32, sequence: u32) {
    put32(block, 0, MAGIC);
    put32(block, 4, kind);
    put32(block, 8, sequence);
}

/// A journal's superblock (its block 0).
#[derive(Debug, Clone)]
pub struct Superblock {
    raw: Vec<u8>,
    pub block_size: u32,
    /// Blocks in the journal; the log is blocks `first..last` (fast-commit blocks past it).
    maxlen: u32,
    pub first: u32,
    /// The first transaction's sequence number, and the log block it starts at (0: the log is
    /// empty, nothing to replay).
    pub sequence: u32,
    pub start: u32,
    compat: u32,
    incompat: u32,
    fast_commit_blocks: u32,
}

impl Superblock {
    /// The superblock in journal block 0 (`block`), or why it is not one xdkms can use.
    pub fn parse(block: &[u8]) -> Result<Superblock, String> {
        if block.len() < SB_LEN || be32(block, 0) != MAGIC {
            return Err("its journal has no journal superblock".into());
        }
        let version = match be32(block, 4) {
            SUPERBLOCK_V1 => 1,
            SUPERBLOCK_V2 => 2,
            other => return Err(format!("its journal superblock has type {other}")),
        };
        let features = |at: usize| if version == 2 { be32(block, at) } else { 0 };
        let sb = Superblock {
            raw: block[..SB_LEN].to_vec(),
            block_size: be32(block, 12),
            maxlen: be32(block, 16),
            first: be32(block, 20),
            sequence: be32(block, 24),
            start: be32(block, 28),
            compat: features(0x24),
            incompat: features(0x28),
            fast_commit_blocks: if features(0x28) & INCOMPAT_FAST_COMMIT != 0 { be32(block, 0x54) } else { 0 },
        };
        if sb.has_csum() && be32(block, SB_CHECKSUM_AT) != sb.own_checksum() {
            return Err("its journal superblock's checksum does not match".into());
        }
        let known = INCOMPAT_REVOKE | INCOMPAT_64BIT | INCOMPAT_ASYNC_COMMIT | INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3;
        if sb.incompat & !(known | INCOMPAT_FAST_COMMIT) != 0 {
            return Err(format!("its journal has features {:#x} xdkms does not know", sb.incompat & !known));
        }
        if sb.first == 0 || sb.first >= sb.last() || sb.maxlen < sb.fast_commit_blocks {
            return Err("its journal superblock is corrupt (log bounds)".into());
        }
        Ok(sb)
    }

    /// True when the journal may hold fast commits (ext4's own log records, which only e2fsck
    /// and the kernel replay).
    pub fn has_fast_commits(&self) -> bool {
        self.incompat & INCOMPAT_FAST_COMMIT != 0
    }

    /// True when the journal carries version 1 checksums (of whole transactions, which xdkms
    /// does not verify: with asynchronous commits only they tell a torn transaction).
    pub fn has_v1_checksums(&self) -> bool {
        self.compat & COMPAT_CHECKSUM != 0
    }

    /// One past the log's last block.
    fn last(&self) -> u32 {
        self.maxlen - self.fast_commit_blocks
    }

    fn has_csum(&self) -> bool {
        self.incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3) != 0
    }

    fn own_checksum(&self) -> u32 {
        let mut raw = self.raw.clone();
        put32(&mut raw, SB_CHECKSUM_AT, 0);
        crc32c(&[&raw])
    }

    /// Why xdkms cannot write a transaction into this journal, if it cannot (it then edits a
    /// copy of the image instead).
    pub fn refusal_to_write(&self) -> Option<&'static str> {
        if self.has_v1_checksums() {
            Some("its journal uses version 1 checksums")
        } else if self.has_fast_commits() {
            Some("its journal has fast commits")
        } else if self.start != 0 {
            Some("its journal is not empty")
        } else {
            None
        }
    }

    /// The seed of every block checksum: crc32c of the journal's UUID.
    fn seed_parts(&self) -> &[u8] {
        &self.raw[0x30..0x40]
    }

    fn tag_bytes(&self) -> usize {
        if self.incompat & INCOMPAT_CSUM_V3 != 0 {
            16
        } else {
            let csum = if self.incompat & INCOMPAT_CSUM_V2 != 0 { 2 } else { 0 };
            let wide = if self.incompat & INCOMPAT_64BIT != 0 { 4 } else { 0 };
            8 + csum + wide
        }
    }

    /// Bytes at a descriptor or revoke block's end kept for its checksum.
    fn tail_len(&self) -> usize {
        if self.has_csum() {
            4
        } else {
            0
        }
    }

    /// This superblock with the log starting at `start` (0: empty) and `sequence` as the next
    /// transaction's number, checksum updated: the bytes of journal block 0's first 1024.
    pub fn with_log(&self, start: u32, sequence: u32) -> Vec<u8> {
        let mut raw = self.raw.clone();
        put32(&mut raw, 24, sequence);
        put32(&mut raw, 28, start);
        if self.has_csum() {
            put32(&mut raw, SB_CHECKSUM_AT, 0);
            let sum = crc32c(&[&raw]);
            put32(&mut raw, SB_CHECKSUM_AT, sum);
        }
        raw
    }

    /// The log block after `at`, wrapping.
    fn next(&self, at: u32) -> u32 {
        if at + 1 >= self.last() {
            self.first
        } else {
            at + 1
        }
    }

    /// Sets the checksum at `block`'s tail (a descriptor or revoke block).
    fn seal_tail(&self, block: &mut [u8]) {
        if self.has_csum() {
            let at = block.len() - 4;
            put32(block, at, 0);
            let sum = crc32c(&[self.seed_parts(), block]);
            put32(block, at, sum);
        }
    }

    fn tail_is_sound(&self, block: &[u8]) -> bool {
        if !self.has_csum() {
            return true;
        }
        let mut copy = block.to_vec();
        let at = copy.len() - 4;
        put32(&mut copy, at, 0);
        be32(block, at) == crc32c(&[self.seed_parts(), &copy])
    }

    fn commit_is_sound(&self, block: &[u8]) -> bool {
        if !self.has_csum() {
            return true;
        }
        let mut copy = block.to_vec();
        put32(&mut copy, COMMIT_CHECKSUM_AT, 0);
        be32(block, COMMIT_CHECKSUM_AT) == crc32c(&[self.seed_parts(), &copy])
    }

    /// The checksum a tag carries for `stored` (a block's copy as written in the log).
    fn tag_checksum(&self, sequence: u32, stored: &[u8]) -> u32 {
        crc32c(&[self.seed_parts(), &sequence.to_be_bytes(), stored])
    }

    /// How many log blocks a transaction of `count` blocks takes (descriptors, copies, commit).
    pub fn transaction_len(&self, count: usize) -> usize {
        let per_descriptor = self.tags_per_descriptor();
        count + count.div_ceil(per_descriptor) + 1
    }

    /// Tags one descriptor block holds (the first one followed by the journal's UUID).
    fn tags_per_descriptor(&self) -> usize {
        let room = self.block_size as usize - HEADER_LEN - self.tail_len() - 16;
        (room / self.tag_bytes()).max(1)
    }

    /// Log blocks free for one transaction when the log is empty.
    pub fn room(&self) -> usize {
        (self.last() - self.first) as usize
    }
}

/// The log blocks of transaction `sequence` holding `blocks` (filesystem block number, new
/// bytes, each one journal block long), committed at `commit_time` (seconds): to be written
/// from log block `first` on, in order. Block numbers past 32 bits need a 64-bit journal.
pub fn transaction(
    sb: &Superblock,
    sequence: u32,
    blocks: &[(u64, Vec<u8>)],
    commit_time: i64,
) -> Result<Vec<Vec<u8>>, String> {
    let size = sb.block_size as usize;
    let wide = sb.incompat & INCOMPAT_64BIT != 0;
    let v3 = sb.incompat & INCOMPAT_CSUM_V3 != 0;
    let mut log = Vec::with_capacity(sb.transaction_len(blocks.len()));
    for group in blocks.chunks(sb.tags_per_descriptor()) {
        let mut descriptor = vec![0u8; size];
        header(&mut descriptor, DESCRIPTOR_BLOCK, sequence);
        let mut at = HEADER_LEN;
        let mut copies = Vec::with_capacity(group.len());
        for (index, (number, data)) in group.iter().enumerate() {
            if data.len() != size {
                return Err(format!("block {number} is {} bytes, not a journal block", data.len()));
            }
            if !wide && *number > u64::from(u32::MAX) {
                return Err(format!("block {number} lies past what its 32-bit journal can name"));
            }
            let mut stored = data.clone();
            let mut flags = 0u16;
            if be32(&stored, 0) == MAGIC {
                stored[..4].fill(0);
                flags |= FLAG_ESCAPE;
            }
            if index > 0 {
                flags |= FLAG_SAME_UUID;
            }
            if index + 1 == group.len() {
                flags |= FLAG_LAST_TAG;
            }
            let checksum = if sb.has_csum() { sb.tag_checksum(sequence, &stored) } else { 0 };
            let tag = &mut descriptor[at..at + sb.tag_bytes()];
            put32(tag, 0, *number as u32);
            if v3 {
                put32(tag, 4, u32::from(flags));
                put32(tag, 8, (*number >> 32) as u32);
                put32(tag, 12, checksum);
            } else {
                tag[4..6].copy_from_slice(&((checksum & 0xffff) as u16).to_be_bytes());
                tag[6..8].copy_from_slice(&flags.to_be_bytes());
                if wide {
                    put32(tag, 8, (*number >> 32) as u32);
                }
            }
            at += sb.tag_bytes();
            if index == 0 {
                descriptor[at..at + 16].copy_from_slice(sb.seed_parts());
                at += 16;
            }
            copies.push(stored);
        }
        sb.seal_tail(&mut descriptor);
        log.push(descriptor);
        log.extend(copies);
    }
    let mut commit = vec![0u8; size];
    header(&mut commit, COMMIT_BLOCK, sequence);
    commit[COMMIT_SEC_AT..COMMIT_SEC_AT + 8].copy_from_slice(&commit_time.to_be_bytes());
    if sb.has_csum() {
        let sum = crc32c(&[sb.seed_parts(), &commit]);
        put32(&mut commit, COMMIT_CHECKSUM_AT, sum);
    }
    log.push(commit);
    Ok(log)
}

/// What a log's committed transactions hold.
#[derive(Debug, Default)]
pub struct Replay {
    /// Each filesystem block's bytes as the last committed transaction that wrote it (and no
    /// later one revoked it) left them.
    pub blocks: BTreeMap<u64, Vec<u8>>,
    /// The sequence number after the last committed transaction.
    pub next_sequence: u32,
    /// Blocks of a committed transaction whose checksum did not match: copies (left out) and
    /// descriptor or revoke blocks (the log read as ending there). The kernel refuses to mount
    /// such a journal.
    pub bad_checksums: usize,
}

/// One tag of a descriptor block.
struct Tag {
    block: u64,
    flags: u16,
    checksum: u32,
}

/// The tags of `descriptor` (kernel's count_tags: up to the last-tag flag or the block's end).
fn tags(sb: &Superblock, descriptor: &[u8]) -> Vec<Tag> {
    let (bytes, end) = (sb.tag_bytes(), descriptor.len() - sb.tail_len());
    let wide = sb.incompat & INCOMPAT_64BIT != 0;
    let v3 = sb.incompat & INCOMPAT_CSUM_V3 != 0;
    let mut found = Vec::new();
    let mut at = HEADER_LEN;
    while at + bytes <= end {
        let tag = &descriptor[at..at + bytes];
        let flags = be16(tag, 6);
        let high = if wide { u64::from(be32(tag, 8)) << 32 } else { 0 };
        let checksum = if v3 { be32(tag, 12) } else { u32::from(be16(tag, 4)) };
        found.push(Tag { block: high | u64::from(be32(tag, 0)), flags, checksum });
        at += bytes;
        if flags & FLAG_SAME_UUID == 0 {
            at += 16;
        }
        if flags & FLAG_LAST_TAG != 0 {
            break;
        }
    }
    found
}

/// A log block: its type, when it is a header block of transaction `sequence`.
fn kind_of(block: &[u8], sequence: u32) -> Option<u32> {
    (block.len() >= HEADER_LEN && be32(block, 0) == MAGIC && be32(block, 8) == sequence).then(|| be32(block, 4))
}

/// The block numbers a revoke block names.
fn revoked(sb: &Superblock, block: &[u8]) -> Vec<u64> {
    let width = if sb.incompat & INCOMPAT_64BIT != 0 { 8 } else { 4 };
    let used = (be32(block, HEADER_LEN) as usize).min(block.len() - sb.tail_len());
    let mut at = HEADER_LEN + 4;
    let mut numbers = Vec::new();
    while at + width <= used {
        numbers.push(if width == 8 {
            u64::from(be32(block, at)) << 32 | u64::from(be32(block, at + 4))
        } else {
            u64::from(be32(block, at))
        });
        at += width;
    }
    numbers
}

/// The blocks the committed transactions of the log hold, read with `read` (log block number to
/// its bytes), as e2fsck's recovery finds them: transactions from the superblock's start and
/// sequence on, up to the first that is not whole (a missing or unsound commit block ends the
/// log), revoked blocks left out, a block whose checksum fails counted.
pub fn replay<E>(sb: &Superblock, mut read: impl FnMut(u32) -> Result<Vec<u8>, E>) -> Result<Replay, E> {
    if sb.start == 0 {
        return Ok(Replay { next_sequence: sb.sequence, ..Replay::default() });
    }
    // One pass: each transaction's copies are held until its commit block shows it whole.
    let mut done = Replay { next_sequence: sb.sequence, ..Replay::default() };
    let mut writes: Vec<(u32, u64, Vec<u8>)> = Vec::new();
    let mut revokes: BTreeMap<u64, u32> = BTreeMap::new();
    let (mut pending, mut pending_revokes) = (Vec::new(), Vec::new());
    let mut at = sb.start;
    // A log never holds more blocks than it has: a bound against a corrupt loop.
    for _ in 0..sb.room() {
        let block = read(at)?;
        let sequence = done.next_sequence;
        match kind_of(&block, sequence) {
            Some(DESCRIPTOR_BLOCK) if sb.tail_is_sound(&block) => {
                for tag in tags(sb, &block) {
                    at = sb.next(at);
                    let mut copy = read(at)?;
                    if sb.has_csum() {
                        let expected = sb.tag_checksum(sequence, &copy);
                        let carried = if sb.incompat & INCOMPAT_CSUM_V3 != 0 { expected } else { expected & 0xffff };
                        if carried != tag.checksum {
                            done.bad_checksums += 1;
                            continue;
                        }
                    }
                    if tag.flags & FLAG_ESCAPE != 0 {
                        put32(&mut copy, 0, MAGIC);
                    }
                    pending.push((sequence, tag.block, copy));
                }
            }
            Some(REVOKE_BLOCK) if sb.tail_is_sound(&block) => {
                pending_revokes.extend(revoked(sb, &block).into_iter().map(|number| (number, sequence)));
            }
            // This transaction's own block, damaged (a commit block that fails only ends the
            // log: the transaction was not committed).
            Some(DESCRIPTOR_BLOCK | REVOKE_BLOCK) => {
                done.bad_checksums += 1;
                break;
            }
            Some(COMMIT_BLOCK) if sb.commit_is_sound(&block) => {
                writes.append(&mut pending);
                for (number, by) in pending_revokes.drain(..) {
                    revokes.insert(number, by);
                }
                done.next_sequence = sequence.wrapping_add(1);
            }
            _ => break,
        }
        at = sb.next(at);
    }
    for (sequence, number, copy) in writes {
        // Revoked by this transaction or a later one: not replayed.
        if revokes.get(&number).is_some_and(|by| by.wrapping_sub(sequence) as i32 >= 0) {
            continue;
        }
        done.blocks.insert(number, copy);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal_superblock(incompat: u32, block_size: u32) -> Superblock {
        let mut raw = vec![0u8; block_size as usize];
        header(&mut raw, SUPERBLOCK_V2, 0);
        put32(&mut raw, 12, block_size);
        put32(&mut raw, 16, 64);
        put32(&mut raw, 20, 1);
        put32(&mut raw, 24, 7);
        put32(&mut raw, 0x28, incompat);
        raw[0x30..0x40].copy_from_slice(b"0123456789abcdef");
        let sum = crc32c(&[&raw[..SB_LEN]]);
        put32(&mut raw, SB_CHECKSUM_AT, if incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3) != 0 { sum } else { 0 });
        Superblock::parse(&raw).expect("parse")
    }

    /// `log` written into a journal held in memory from block 1 on, the log started there, and
    /// replayed.
    fn replay_log(sb: &Superblock, log: &[Vec<u8>]) -> Replay {
        let mut journal = vec![vec![0u8; sb.block_size as usize]; 64];
        for (index, block) in log.iter().enumerate() {
            journal[1 + index] = block.clone();
        }
        let started = Superblock::parse(&sb.with_log(1, 7)).expect("started");
        replay(&started, |at| Ok::<_, ()>(journal[at as usize].clone())).expect("replay")
    }

    /// Writes `blocks` as one transaction into a log held in memory and replays it.
    fn round_trip(incompat: u32, blocks: &[(u64, Vec<u8>)]) -> Replay {
        let sb = journal_superblock(incompat, 1024);
        replay_log(&sb, &transaction(&sb, 7, blocks, 1).expect("transaction"))
    }

    #[test]
    fn a_transaction_replays_to_its_blocks_in_every_tag_format() {
        let mut escaped = vec![5u8; 1024];
        escaped[..4].copy_from_slice(&MAGIC.to_be_bytes());
        let blocks: Vec<(u64, Vec<u8>)> =
            (0..40u64).map(|n| (n * 3 + 100, vec![n as u8; 1024])).chain([(9, escaped)]).collect();
        for incompat in [0, INCOMPAT_64BIT, INCOMPAT_CSUM_V2, INCOMPAT_CSUM_V2 | INCOMPAT_64BIT, INCOMPAT_CSUM_V3] {
            let replay = round_trip(incompat, &blocks);
            let expected: BTreeMap<u64, Vec<u8>> = blocks.iter().cloned().collect();
            assert_eq!(replay.blocks, expected, "features {incompat:#x}");
            assert_eq!((replay.next_sequence, replay.bad_checksums), (8, 0));
        }
    }

    #[test]
    fn a_transaction_without_its_commit_block_is_not_replayed() {
        let sb = journal_superblock(INCOMPAT_CSUM_V3, 1024);
        let log = transaction(&sb, 7, &[(50, vec![1u8; 1024])], 1).expect("transaction");
        let replay = replay_log(&sb, &log[..log.len() - 1]);
        assert!(replay.blocks.is_empty());
        assert_eq!(replay.next_sequence, 7);
    }

    #[test]
    fn a_copy_with_a_wrong_checksum_is_left_out_and_counted() {
        let sb = journal_superblock(INCOMPAT_CSUM_V3, 1024);
        let mut log = transaction(&sb, 7, &[(50, vec![1u8; 1024]), (51, vec![2u8; 1024])], 1).expect("tx");
        log[1][100] ^= 1;
        let replay = replay_log(&sb, &log);
        assert_eq!(replay.blocks.keys().copied().collect::<Vec<_>>(), vec![51]);
        assert_eq!(replay.bad_checksums, 1);
    }

    #[test]
    fn a_damaged_descriptor_of_the_transaction_is_counted_not_skipped() {
        let sb = journal_superblock(INCOMPAT_CSUM_V3, 1024);
        let mut log = transaction(&sb, 7, &[(50, vec![1u8; 1024])], 1).expect("tx");
        log[0][40] ^= 1;
        let replay = replay_log(&sb, &log);
        assert!(replay.blocks.is_empty());
        assert_eq!(replay.bad_checksums, 1);
    }

    #[test]
    fn a_corrupt_journal_superblock_is_refused() {
        let sb = journal_superblock(INCOMPAT_CSUM_V3, 1024);
        let mut raw = sb.with_log(0, 7);
        raw[40] ^= 1;
        assert!(Superblock::parse(&raw).is_err());
    }
}
