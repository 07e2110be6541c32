//! ext3/4 edits made in the image itself and committed through the filesystem's own journal,
//! as the kernel commits a change; and the replay of a journal a killed run (or a crash) left
//! holding committed changes, as mounting the image would replay it.
//!
//! Why a journal rather than a copy: copying a disk image to change a few blocks of it costs as
//! much as the image is big (seconds per GiB), while the journal makes the edit atomic at the
//! price of the blocks it changes. The edit runs through a staging layer (ext4_shim.c) that keeps
//! the blocks it writes in memory. Then the blocks the image had free are written (nothing in
//! the old image refers to them), the others go into the journal as one transaction, the
//! filesystem is marked as needing recovery, they are written in place, and the mark and the
//! journal are cleared. A failed edit writes nothing; a kill before the commit leaves the old
//! filesystem; a kill after it leaves a journal that e2fsck, the kernel and xdkms replay into
//! the new one.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::ext2fs::{Access, Filesystem};
use super::jbd2;

/// The ext4 superblock: where it lies in the filesystem, how long it is, and its fields used here.
const SB_OFFSET: u64 = 1024;
const SB_LEN: usize = 1024;
const SB_LOG_BLOCK_SIZE: usize = 0x18;
const SB_FEATURE_COMPAT: usize = 0x5c;
const SB_FEATURE_INCOMPAT: usize = 0x60;
const SB_FEATURE_RO_COMPAT: usize = 0x64;
const SB_JOURNAL_INUM: usize = 0xe0;
const SB_CHECKSUM: usize = 0x3fc;
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The filesystem `offset` bytes into an image file, as raw blocks.
struct Blocks<'a> {
    file: &'a File,
    offset: u64,
    size: u64,
}

impl Blocks<'_> {
    fn read(&self, block: u64) -> io::Result<Vec<u8>> {
        let mut data = vec![0u8; self.size as usize];
        self.file.read_exact_at(&mut data, self.at(block)?)?;
        Ok(data)
    }

    fn write(&self, block: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, self.at(block)?)
    }

    fn at(&self, block: u64) -> io::Result<u64> {
        block
            .checked_mul(self.size)
            .and_then(|b| b.checked_add(self.offset))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("block {block} lies past any image")))
    }

    /// The ext4 superblock's bytes.
    fn superblock(&self) -> io::Result<Vec<u8>> {
        let mut sb = vec![0u8; SB_LEN];
        self.file.read_exact_at(&mut sb, self.offset + SB_OFFSET)?;
        Ok(sb)
    }

    /// The block that holds the ext4 superblock, and where in it the superblock starts.
    fn superblock_place(&self) -> (u64, usize) {
        (SB_OFFSET / self.size, (SB_OFFSET % self.size) as usize)
    }
}

/// `sb` (an ext4 superblock's bytes) with the needs-recovery flag set or cleared, its checksum
/// updated when the filesystem keeps one.
fn with_recover_flag(sb: &[u8], set: bool) -> Vec<u8> {
    let mut sb = sb.to_vec();
    let mut incompat = le32(&sb, SB_FEATURE_INCOMPAT);
    if set {
        incompat |= INCOMPAT_RECOVER;
    } else {
        incompat &= !INCOMPAT_RECOVER;
    }
    sb[SB_FEATURE_INCOMPAT..SB_FEATURE_INCOMPAT + 4].copy_from_slice(&incompat.to_le_bytes());
    if le32(&sb, SB_FEATURE_RO_COMPAT) & RO_COMPAT_METADATA_CSUM != 0 {
        let sum = jbd2::ext4_superblock_checksum(&sb);
        sb[SB_CHECKSUM..SB_CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
    }
    sb
}

/// A filesystem's internal journal: its superblock and where each of its blocks lies.
struct Journal {
    sb: jbd2::Superblock,
    /// Filesystem block of each journal block.
    map: Vec<u64>,
}

impl Journal {
    /// The internal journal of the filesystem whose superblock is `sb`, None when it has none
    /// (ext2, or a journal on another device).
    fn of(image: &Path, offset: u64, blocks: &Blocks, sb: &[u8]) -> io::Result<Option<Journal>> {
        let inum = le32(sb, SB_JOURNAL_INUM);
        let internal = le32(sb, SB_FEATURE_COMPAT) & COMPAT_HAS_JOURNAL != 0
            && le32(sb, SB_FEATURE_INCOMPAT) & INCOMPAT_JOURNAL_DEV == 0
            && inum != 0;
        if !internal {
            return Ok(None);
        }
        let map = Filesystem::open(image, offset, Access::Read)?.journal_blocks(inum, blocks.size)?;
        let first = map.first().copied().filter(|b| *b != 0).ok_or_else(|| corrupt("its journal has no blocks"))?;
        let sb = jbd2::Superblock::parse(&blocks.read(first)?).map_err(corrupt)?;
        if u64::from(sb.block_size) != blocks.size || map.len() < sb.room() + sb.first as usize {
            return Err(corrupt("its journal's size or block size does not match its filesystem's"));
        }
        Ok(Some(Journal { sb, map }))
    }

    /// Where journal block `index` lies.
    fn place(&self, index: u32) -> io::Result<u64> {
        match self.map.get(index as usize) {
            Some(&block) if block != 0 => Ok(block),
            _ => Err(corrupt(format!("its journal has no block {index}"))),
        }
    }

    /// Writes the journal superblock with the log starting at `start` and `sequence` next.
    fn set_log(&self, blocks: &Blocks, start: u32, sequence: u32) -> io::Result<()> {
        let place = self.place(0)?;
        let mut block = blocks.read(place)?;
        let head = self.sb.with_log(start, sequence);
        block[..head.len()].copy_from_slice(&head);
        blocks.write(place, &block)
    }
}

fn corrupt(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn block_size_of(sb: &[u8]) -> io::Result<u64> {
    match le32(sb, SB_LOG_BLOCK_SIZE) {
        log @ 0..=6 => Ok(1024 << log),
        _ => Err(corrupt("corrupt superblock: block size")),
    }
}

/// Replays what the journal of the filesystem `offset` bytes into `image` holds, if it holds
/// anything (a run killed after its commit, a crashed system), as mounting it would; nothing
/// when the journal is empty or there is none.
pub fn replay_journal(image: &Path, offset: u64) -> io::Result<()> {
    let file = File::open(image)?;
    let sb = Blocks { file: &file, offset, size: 1024 }.superblock()?;
    let recover = le32(&sb, SB_FEATURE_INCOMPAT) & INCOMPAT_RECOVER != 0;
    let size = block_size_of(&sb)?;
    let reading = Blocks { file: &file, offset, size };
    let Some(journal) = Journal::of(image, offset, &reading, &sb)? else { return Ok(()) };
    if journal.sb.start == 0 && !recover {
        return Ok(());
    }
    if journal.sb.start != 0 && (journal.sb.has_fast_commits() || journal.sb.has_v1_checksums()) {
        let kind = if journal.sb.has_fast_commits() { "fast commits" } else { "transactions with version 1 checksums" };
        return Err(corrupt(format!("its journal holds {kind} to replay: replay them with e2fsck -fy first")));
    }
    let file = File::options().read(true).write(true).open(image).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("its journal holds changes to replay and it cannot be written ({e}): make it writable, or replay them with e2fsck -fy"),
        )
    })?;
    let blocks = Blocks { file: &file, offset, size };
    let replay = jbd2::replay(&journal.sb, |index| journal.place(index).and_then(|place| blocks.read(place)))?;
    // The kernel will not mount such a journal either: e2fsck decides what is left.
    if replay.bad_checksums > 0 {
        return Err(corrupt(format!(
            "its journal holds {} block(s) whose checksum does not match: replay it with e2fsck -fy first",
            replay.bad_checksums
        )));
    }
    for (number, data) in &replay.blocks {
        blocks.write(*number, data)?;
    }
    file.sync_data()?;
    let sb = blocks.superblock()?;
    file.write_all_at(&with_recover_flag(&sb, false), offset + SB_OFFSET)?;
    file.sync_data()?;
    journal.set_log(&blocks, 0, replay.next_sequence)?;
    file.sync_data()
}

/// Edits the filesystem `offset` bytes into `image` (`len` bytes its partition's) in place:
/// `apply` makes the changes, which are then committed through the journal. Ok(false), with the
/// filesystem as it was, when it cannot be edited so: no internal journal, a journal xdkms does
/// not write, or changes too big for it. The caller then edits a copy.
pub fn edit(
    image: &Path,
    offset: u64,
    len: u64,
    apply: impl FnOnce(&Filesystem) -> io::Result<()>,
) -> io::Result<bool> {
    let file = File::options().read(true).write(true).open(image)?;
    let sb = Blocks { file: &file, offset, size: 1024 }.superblock()?;
    let blocks = Blocks { file: &file, offset, size: block_size_of(&sb)? };
    let Some(journal) = Journal::of(image, offset, &blocks, &sb)? else { return Ok(false) };
    if journal.sb.refusal_to_write().is_some() {
        return Ok(false);
    }
    let staged = Filesystem::open_staged(image, offset)?;
    if staged.fs().size() > len {
        return Err(corrupt(format!(
            "its ext2/3/4 filesystem spans {} bytes, more than the {len} of its partition",
            staged.fs().size()
        )));
    }
    apply(staged.fs())?;
    let kept = staged.close()?;
    if journal.sb.transaction_len(kept.used.len()) > journal.sb.room() {
        return Ok(false);
    }
    // Blocks the image had free first: nothing refers to them until the commit.
    for (number, data) in &kept.free {
        blocks.write(*number, data)?;
    }
    if !kept.used.is_empty() {
        commit(&file, &blocks, &journal, &kept.used)?;
    }
    Ok(true)
}

/// Commits `changed` (block number, new bytes) through `journal`, then writes it in place.
fn commit(file: &File, blocks: &Blocks, journal: &Journal, changed: &[(u64, Vec<u8>)]) -> io::Result<()> {
    let sequence = journal.sb.sequence;
    let now = crate::dkms::date::source_date_epoch().unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
    });
    let log = jbd2::transaction(&journal.sb, sequence, changed, now).map_err(corrupt)?;
    // What went to blocks the image had free, then the transaction, then the journal's start:
    // from that write on the change is committed.
    file.sync_data()?;
    for (index, block) in log.iter().enumerate() {
        let index = u32::try_from(index).map_err(|_| corrupt("transaction too long"))?;
        blocks.write(journal.place(journal.sb.first + index)?, block)?;
    }
    file.sync_data()?;
    journal.set_log(blocks, journal.sb.first, sequence)?;
    file.sync_data()?;
    checkpoint(file, blocks, changed)?;
    journal.set_log(blocks, 0, sequence.wrapping_add(1))?;
    file.sync_data()
}

/// Writes committed blocks in place. The superblock's block goes first with the needs-recovery
/// flag set (so that a kill from here on makes every reader replay the journal), and last
/// without it.
fn checkpoint(file: &File, blocks: &Blocks, changed: &[(u64, Vec<u8>)]) -> io::Result<()> {
    let (sb_block, sb_at) = blocks.superblock_place();
    let new_sb_block = match changed.iter().find(|(number, _)| *number == sb_block) {
        Some((_, data)) => data.clone(),
        None => blocks.read(sb_block)?,
    };
    let mut flagged = new_sb_block.clone();
    let sb = with_recover_flag(&new_sb_block[sb_at..sb_at + SB_LEN], true);
    flagged[sb_at..sb_at + SB_LEN].copy_from_slice(&sb);
    blocks.write(sb_block, &flagged)?;
    file.sync_data()?;
    for (number, data) in changed.iter().filter(|(number, _)| *number != sb_block) {
        blocks.write(*number, data)?;
    }
    file.sync_data()?;
    blocks.write(sb_block, &new_sb_block)?;
    file.sync_data()
}
