//! Partitioned disk images (GPT, or MBR's four primary partitions): where each partition lies in
//! the file, read with the gpt crate.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The sector size partition tables count in (disk images are made with 512-byte sectors).
const SECTOR: u64 = 512;

/// MBR partition types that are no partition to look into: empty, GPT's protective entry,
/// extended partition containers.
const NOT_A_FILESYSTEM: [u8; 5] = [0x00, 0xee, 0x05, 0x0f, 0x85];

/// One partition: its number as the kernel names it (`sda2` is 2), where it starts and how
/// long it is, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    pub start: u64,
    pub len: u64,
}

/// The partitions of the disk image at `path`, None when it has no partition table (GPT
/// first, then MBR); every partition lies inside the file.
pub fn partitions(path: &Path) -> io::Result<Option<Vec<Partition>>> {
    let file_len = std::fs::metadata(path)?.len();
    let found = match gpt_partitions(path) {
        Some(found) => found,
        None => match mbr_partitions(path)? {
            Some(found) => found,
            None => return Ok(None),
        },
    };
    // A table whose entries point past the end is no table (a boot sector's bytes, say), or
    // the disk was cut: either way nothing to open.
    if found.iter().any(|p| p.start.checked_add(p.len).is_none_or(|end| end > file_len)) {
        return Ok(None);
    }
    Ok(Some(found))
}

fn gpt_partitions(path: &Path) -> Option<Vec<Partition>> {
    let disk = gpt::GptConfig::new().writable(false).open(path).ok()?;
    let sector: u64 = (*disk.logical_block_size()).into();
    let found = disk
        .partitions()
        .iter()
        .filter(|(_, p)| p.is_used() && p.last_lba >= p.first_lba)
        .map(|(&number, p)| Partition {
            number,
            start: p.first_lba.saturating_mul(sector),
            len: (p.last_lba - p.first_lba + 1).saturating_mul(sector),
        })
        .collect();
    Some(found)
}

fn mbr_partitions(path: &Path) -> io::Result<Option<Vec<Partition>>> {
    let mut sector = [0u8; SECTOR as usize];
    let mut file = File::open(path)?;
    if file.read_exact(&mut sector).is_err() {
        return Ok(None);
    }
    let Ok(mbr) = gpt::mbr::ProtectiveMBR::from_bytes(&sector, gpt::disk::LogicalBlockSize::Lb512) else {
        return Ok(None);
    };
    let found: Vec<Partition> = (0..4)
        .filter_map(|slot| mbr.partition(slot).map(|record| (slot, record)))
        .filter(|(_, r)| !NOT_A_FILESYSTEM.contains(&r.os_type) && r.lb_size > 0)
        .map(|(slot, r)| Partition {
            number: slot as u32 + 1,
            start: u64::from(r.lb_start) * SECTOR,
            len: u64::from(r.lb_size) * SECTOR,
        })
        .collect();
    Ok((!found.is_empty()).then_some(found))
}
