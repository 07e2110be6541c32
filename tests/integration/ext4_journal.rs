//! ext4 edits committed through the journal (issue 12): the states a run killed while committing
//! leaves behind, made byte for byte from a run that finished, and judged by e2fsck (which
//! replays journals as the kernel does) and by xdkms's own replay.

use std::path::Path;
use std::process::Command;

use crate::images::{make_root, text, VERSION};
use crate::util::{run, run_ok, xdkms, TempDir};

const JBD2_MAGIC: u32 = 0xc03b_3998;

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// crc32c seeded with ~0 and not inverted, as jbd2 and ext4 checksum.
fn crc32c(bytes: &[u8]) -> u32 {
    const RAW: crc::Algorithm<u32> = crc::Algorithm { xorout: 0, ..crc::CRC_32_ISCSI };
    crc::Crc::<u32>::new(&RAW).checksum(bytes)
}

/// The filesystem blocks of the journal inode, in order, as debugfs maps them.
fn journal_blocks(image: &Path) -> Vec<u64> {
    let out = run_ok(Command::new("debugfs").arg("-R").arg("blocks <8>").arg(image));
    text(&out.stdout).split_whitespace().map(|b| b.parse().expect("block number")).collect()
}

/// What one finished edit left in its journal: the journal superblock's place, and the
/// filesystem blocks its last transaction holds.
struct Transaction {
    block_size: usize,
    journal_sb: usize,
    sequence: u32,
    first: u32,
    tagged: Vec<u64>,
}

/// Reads the last transaction out of `image`'s journal (its log emptied after the commit: the
/// transaction stays in its blocks, one sequence number behind the journal's).
fn last_transaction(image: &Path, bytes: &[u8]) -> Transaction {
    let block_size = 1024usize << le32(bytes, 1024 + 0x18);
    let map = journal_blocks(image);
    let journal_sb = map[0] as usize * block_size;
    let sb = &bytes[journal_sb..journal_sb + 1024];
    let (sequence, first, incompat) = (be32(sb, 24).wrapping_sub(1), be32(sb, 20), be32(sb, 0x28));
    let (v3, v2, wide) = (incompat & 0x10 != 0, incompat & 0x8 != 0, incompat & 0x2 != 0);
    let tag_bytes = if v3 { 16 } else { 8 + if v2 { 2 } else { 0 } + if wide { 4 } else { 0 } };
    let tail = if v2 || v3 { 4 } else { 0 };
    let mut tagged = Vec::new();
    let mut at = first as usize;
    loop {
        let block = &bytes[map[at] as usize * block_size..][..block_size];
        if be32(block, 0) != JBD2_MAGIC || be32(block, 8) != sequence || be32(block, 4) != 1 {
            break;
        }
        let mut tag = 12;
        let mut count = 0;
        while tag + tag_bytes <= block_size - tail {
            let flags = u16::from_be_bytes([block[tag + 6], block[tag + 7]]);
            let high = if wide { u64::from(be32(block, tag + 8)) << 32 } else { 0 };
            tagged.push(high | u64::from(be32(block, tag)));
            count += 1;
            tag += tag_bytes + if flags & 2 == 0 { 16 } else { 0 };
            if flags & 8 != 0 {
                break;
            }
        }
        at += 1 + count;
    }
    assert!(be32(&bytes[map[at] as usize * block_size..], 4) == 2, "the transaction ends in a commit block");
    Transaction { block_size, journal_sb, sequence, first, tagged }
}

/// The new image with every block the transaction holds put back as the old image had it
/// (`put_back` picks which), and its journal's log started again at the transaction (`started`)
/// or left empty as the old image had it.
fn crash_state(old: &[u8], new: &[u8], tx: &Transaction, put_back: impl Fn(usize) -> bool, started: bool) -> Vec<u8> {
    let mut state = new.to_vec();
    let size = tx.block_size;
    for (_, block) in tx.tagged.iter().enumerate().filter(|(i, _)| put_back(*i)) {
        let at = *block as usize * size;
        state[at..at + size].copy_from_slice(&old[at..at + size]);
    }
    let sb = tx.journal_sb;
    if started {
        state[sb + 24..sb + 28].copy_from_slice(&tx.sequence.to_be_bytes());
        state[sb + 28..sb + 32].copy_from_slice(&tx.first.to_be_bytes());
        if be32(&state, sb + 0x28) & 0x18 != 0 {
            state[sb + 0xfc..sb + 0x100].fill(0);
            let sum = crc32c(&state[sb..sb + 1024]);
            state[sb + 0xfc..sb + 0x100].copy_from_slice(&sum.to_be_bytes());
        }
    } else {
        state[sb..sb + size].copy_from_slice(&old[sb..sb + size]);
    }
    state
}

/// `state` with the filesystem marked as needing recovery (superblock checksum kept).
fn marked(mut state: Vec<u8>) -> Vec<u8> {
    let incompat = le32(&state, 1024 + 0x60) | 0x4;
    state[1024 + 0x60..1024 + 0x64].copy_from_slice(&incompat.to_le_bytes());
    let sum = crc32c(&state[1024..1024 + 0x3fc]);
    state[1024 + 0x3fc..1024 + 0x400].copy_from_slice(&sum.to_le_bytes());
    state
}

/// True when `image` (bytes), its journal replayed by e2fsck, is a clean filesystem whose
/// kernel `version` module directory holds the same files as `want`'s (bytes); `work` is a
/// scratch directory, emptied first.
pub fn same_filesystem(work: &Path, image: &[u8], want: &[u8], version: &str) -> bool {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).expect("mkdir");
    let (now, wanted) = (work.join("now.ext4"), work.join("want.ext4"));
    std::fs::write(&now, image).expect("write");
    std::fs::write(&wanted, want).expect("write");
    e2fsck(&now, true) <= 1
        && e2fsck(&now, false) == 0
        && modules_of(&now, &work.join("now"), version) == modules_of(&wanted, &work.join("want"), version)
}

/// The kernel's module directory as debugfs dumps it out of `image`.
fn modules_of(image: &Path, into: &Path, version: &str) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(into).expect("mkdir");
    let dir = format!("/lib/modules/{version}");
    run_ok(Command::new("debugfs").arg("-R").arg(format!("rdump {dir} {}", into.display())).arg(image));
    let out = run_ok(Command::new("find").arg(".").arg("-type").arg("f").current_dir(into));
    let mut files: Vec<(String, Vec<u8>)> =
        text(&out.stdout).lines().map(|p| (p.to_string(), std::fs::read(into.join(p)).expect("read"))).collect();
    files.sort();
    files
}

fn e2fsck(image: &Path, fix: bool) -> i32 {
    let out = run(Command::new("e2fsck").arg(if fix { "-fy" } else { "-fn" }).arg(image));
    out.status.code().unwrap_or(-1)
}

/// One crash state: e2fsck's replay (on a copy) and xdkms's (`depmod -n`, which writes no index,
/// on another) must both give the filesystem of `expected` (the old or the new image), clean;
/// xdkms's must give the finished run's bytes when `new` is given.
fn assert_settles_to(work: &TempDir, name: &str, state: &[u8], expected: &Path, new: Option<&[u8]>) {
    let by_e2fsck = work.join(format!("{name}.e2fsck.ext4"));
    std::fs::write(&by_e2fsck, state).expect("write");
    assert!(e2fsck(&by_e2fsck, true) <= 1, "{name}: e2fsck -fy failed");
    assert_eq!(e2fsck(&by_e2fsck, false), 0, "{name}: not clean after e2fsck's replay");
    let want = modules_of(expected, &work.join(format!("{name}.expected")), VERSION);
    assert!(
        modules_of(&by_e2fsck, &work.join(format!("{name}.by-e2fsck")), VERSION) == want,
        "{name}: e2fsck's replay"
    );

    let by_xdkms = work.join(format!("{name}.xdkms.ext4"));
    std::fs::write(&by_xdkms, state).expect("write");
    let out = run(xdkms().arg("depmod").arg("-n").arg("-b").arg(&by_xdkms).arg(VERSION));
    assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
    assert_eq!(e2fsck(&by_xdkms, false), 0, "{name}: not clean after xdkms's replay");
    assert!(modules_of(&by_xdkms, &work.join(format!("{name}.by-xdkms")), VERSION) == want, "{name}: xdkms's replay");
    if let Some(new) = new {
        let replayed = std::fs::read(&by_xdkms).expect("read");
        assert!(replayed == new, "{name}: xdkms's replay is not the finished run's image byte for byte");
    }
}

/// `depmod -b IMAGE.ext4` committed through the journal, killed (made from a finished run)
/// before its commit, right after it, and after marking the filesystem with half its blocks
/// written in place: e2fsck and xdkms settle each on the old or the new filesystem, for a
/// journal without checksums on 1 KiB blocks and one with v3 checksums on 4 KiB blocks. A
/// journal with version 1 checksums, or a copy whose checksum fails, is refused.
#[test]
fn an_ext4_edit_killed_while_committing_settles_on_the_old_or_the_new_image() {
    for (label, block_size, checksums) in [("plain", "1024", false), ("csum-v3", "4096", true)] {
        let work = TempDir::new(&format!("ext4-journal-{label}"));
        let root = work.join("root");
        make_root(&root, false);
        let old_path = work.join("old.ext4");
        run_ok(
            Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4", "-b", block_size, "-d"])
                .arg(&root)
                .arg(&old_path)
                .arg("32M"),
        );
        if checksums {
            let commands = work.join("debugfs-commands");
            std::fs::write(&commands, "jo -c\njc\n").expect("write");
            run_ok(Command::new("debugfs").arg("-w").arg("-f").arg(&commands).arg(&old_path));
        }
        let old = std::fs::read(&old_path).expect("read");
        let new_path = work.join("new.ext4");
        std::fs::write(&new_path, &old).expect("write");
        run_ok(xdkms().env("SOURCE_DATE_EPOCH", "1").arg("depmod").arg("-b").arg(&new_path).arg(VERSION));
        let new = std::fs::read(&new_path).expect("read");
        let tx = last_transaction(&new_path, &new);
        assert!(tx.tagged.len() > 3, "{label}: the edit went through the journal");

        let before_commit = crash_state(&old, &new, &tx, |_| true, false);
        assert_settles_to(&work, &format!("{label}-before-commit"), &before_commit, &old_path, None);
        let committed = crash_state(&old, &new, &tx, |_| true, true);
        assert_settles_to(&work, &format!("{label}-committed"), &committed, &new_path, Some(&new));
        let half_written = marked(crash_state(&old, &new, &tx, |i| i % 2 == 0, true));
        assert_settles_to(&work, &format!("{label}-half-written"), &half_written, &new_path, Some(&new));

        // A copy in the journal whose checksum fails: the kernel would not mount it, xdkms
        // leaves it to e2fsck and the image as it is.
        if checksums {
            let mut damaged = committed.clone();
            let first_copy = journal_blocks(&new_path)[tx.first as usize + 1] as usize * tx.block_size;
            damaged[first_copy + 100] ^= 1;
            let image = work.join("damaged.ext4");
            std::fs::write(&image, &damaged).expect("write");
            let out = run(xdkms().arg("depmod").arg("-n").arg("-b").arg(&image).arg(VERSION));
            assert_eq!(out.status.code(), Some(1), "{label}: {}", text(&out.stderr));
            assert!(text(&out.stderr).contains("checksum does not match"), "{label}: {}", text(&out.stderr));
            assert!(std::fs::read(&image).expect("read") == damaged, "{label}: the image changed");
        }
        // Version 1 checksums (of whole transactions) are not verified: such a journal is
        // e2fsck's to replay, and the image is left as it is.
        if !checksums {
            let mut v1 = committed.clone();
            let sb = tx.journal_sb;
            let compat = be32(&v1, sb + 0x24) | 0x1;
            v1[sb + 0x24..sb + 0x28].copy_from_slice(&compat.to_be_bytes());
            let image = work.join("v1.ext4");
            std::fs::write(&image, &v1).expect("write");
            let out = run(xdkms().arg("depmod").arg("-n").arg("-b").arg(&image).arg(VERSION));
            assert_eq!(out.status.code(), Some(1), "{label}: {}", text(&out.stderr));
            assert!(text(&out.stderr).contains("e2fsck -fy"), "{label}: {}", text(&out.stderr));
            assert!(std::fs::read(&image).expect("read") == v1, "{label}: the image changed");
        }
    }
}
