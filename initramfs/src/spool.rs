//! An image held for editing at fixed memory: one streaming scan keeps every member's header in
//! memory and the regular files' data on disk in a scratch directory (in one shared file, or in
//! a file of its own where the caller needs files), so the kernel's final view of the image can
//! be looked at and written back out, in any order, whatever its size.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

use crate::codec::Codec;
use crate::image::{normalize, Kept, Tree};
use crate::newc::{Data, Entry, NAME_MAX, S_IFDIR, S_IFLNK, S_IFREG};
use crate::stream::{copy_data, scan, Header, ScanError, SegmentInfo, Visitor};

/// An image's segments and members, file data on disk.
#[derive(Debug)]
pub struct Spool {
    segments: Vec<SegmentInfo>,
    /// In image order: the segment, the normalized path, and the member (`None`: a regular file
    /// whose data was not kept, which the views leave out).
    members: Vec<(usize, String, Option<Entry>)>,
    unpacked: u64,
}

/// What [`Spool::read`] keeps.
pub struct SpoolOptions<'a> {
    /// Where file data goes (one file per member); it must exist and outlive the spool's use.
    pub dir: &'a Path,
    /// Which regular files' data to keep, by normalized path.
    pub keep: &'a dyn Fn(&str) -> bool,
    /// Which of those get a file of their own ([`Data::File`], for a caller that hands them
    /// to a tool); the others share one file ([`Data::Range`]): creating and removing thousands
    /// of small files costs more than the data.
    pub separate: &'a dyn Fn(&str) -> bool,
    /// At most this many bytes of file data are kept: an image of a few KiB can decompress to
    /// terabytes.
    pub limit: u64,
}

impl Spool {
    /// Scans the image in `input`. Member names must be UTF-8 (they are written back out);
    /// a name that is not, or more kept data than the limit, is an error of the visit.
    pub fn read(input: impl Read + Send, options: &SpoolOptions) -> Result<Spool, ScanError> {
        let spool = Spool { segments: Vec::new(), members: Vec::new(), unpacked: 0 };
        let mut spooler = Spooler { options, spool, shared: None };
        scan(input, &mut spooler)?;
        if let Some((file, _, _)) = spooler.shared.as_mut() {
            file.flush().map_err(ScanError::Visitor)?;
        }
        Ok(spooler.spool)
    }

    pub fn segments(&self) -> &[SegmentInfo] {
        &self.segments
    }

    /// Bytes of file data kept.
    pub fn unpacked(&self) -> u64 {
        self.unpacked
    }

    /// The index of the first segment a rewrite replaces: the first compressed one, or the last
    /// segment when none is compressed. Segments before it (early microcode, firmware archives)
    /// are kept byte for byte.
    pub fn rewrite_start(&self) -> usize {
        self.segments.iter().position(|s| s.codec != Codec::None).unwrap_or(self.segments.len().saturating_sub(1))
    }

    /// What a rewrite keeps of the original: everything before [`Spool::rewrite_start`].
    pub fn rewrite_kept(&self) -> Kept {
        let start = self.rewrite_start();
        Kept {
            len: self.segments.get(start).map_or(0, |s| s.offset),
            last_codec: start.checked_sub(1).map(|i| self.segments[i].codec),
        }
    }

    /// What an append keeps: the whole original, `len` bytes.
    pub fn append_kept(&self, len: u64) -> Kept {
        Kept { len, last_codec: self.segments.last().map(|s| s.codec) }
    }

    /// The codec of the main (last compressed) segment, `None` for an uncompressed image.
    pub fn main_codec(&self) -> Codec {
        self.segments.iter().rev().map(|s| s.codec).find(|&c| c != Codec::None).unwrap_or(Codec::None)
    }

    /// What the kernel ends up with from segments `from..`: each path's last member wins, and
    /// the members of a hard-linked file share its data.
    pub fn tree(&self, from: usize) -> Tree {
        let links = self.hard_link_data();
        let mut tree = Tree::default();
        for (segment, path, entry) in self.members.iter().filter(|(s, p, _)| *s >= from && !p.is_empty()) {
            match entry {
                Some(entry) => {
                    let mut entry = entry.clone();
                    if let Some(shared) = links.get(&link_key(*segment, &entry)) {
                        entry.data = shared.clone();
                    }
                    tree.files.insert(path.clone(), entry);
                }
                None => {
                    tree.files.remove(path);
                }
            }
        }
        tree
    }

    /// The data of each multiply-linked file, per segment: the last non-empty data among its
    /// members, as the kernel links them (cpio(1) and gen_init_cpio put it on the last link).
    fn hard_link_data(&self) -> HashMap<LinkKey, Data> {
        let mut shared = HashMap::new();
        for (segment, _, entry) in &self.members {
            if let Some(entry) = entry.as_ref().filter(|e| e.nlink >= 2 && !e.is_dir() && !e.data.is_empty()) {
                shared.insert(link_key(*segment, entry), entry.data.clone());
            }
        }
        shared
    }
}

/// A file's identity inside one segment: (segment, device, inode, type).
type LinkKey = (usize, u32, u32, u32, u32);

fn link_key(segment: usize, entry: &Entry) -> LinkKey {
    (segment, entry.dev_major, entry.dev_minor, entry.ino, entry.file_type())
}

struct Spooler<'a> {
    options: &'a SpoolOptions<'a>,
    spool: Spool,
    /// The shared data file (written through a buffer), its path and how much it holds.
    shared: Option<(io::BufWriter<File>, PathBuf, u64)>,
}

impl Spooler<'_> {
    /// Copies a member's data to disk, within the limit: to a file of its own, or appended to
    /// the shared file.
    fn keep_file(&mut self, data: &mut dyn BufRead, len: u64, separate: bool) -> io::Result<Data> {
        let left = self.options.limit.saturating_sub(self.spool.unpacked);
        if len > left {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("the image's files hold more than {} bytes, the limit", self.options.limit),
            ));
        }
        let create =
            |path: &Path| File::create(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())));
        if separate {
            let path: PathBuf = self.options.dir.join(self.spool.members.len().to_string());
            let copied = copy_data(data, &mut create(&path)?)?;
            self.spool.unpacked += copied;
            return Ok(Data::File { path, len: copied });
        }
        let shared = match self.shared.take() {
            Some(shared) => shared,
            None => {
                let path = self.options.dir.join("shared");
                (io::BufWriter::with_capacity(1 << 20, create(&path)?), path, 0)
            }
        };
        let (file, path, offset) = self.shared.insert(shared);
        let copied = copy_data(data, file)?;
        let range = Data::Range { path: path.clone(), offset: *offset, len: copied };
        *offset += copied;
        self.spool.unpacked += copied;
        Ok(range)
    }
}

impl Visitor for Spooler<'_> {
    fn member(&mut self, segment: &SegmentInfo, header: &Header, data: &mut dyn BufRead) -> io::Result<()> {
        // Unsupported, not InvalidData: the scan takes InvalidData from a visit for the image's
        // own corruption.
        let name = String::from_utf8(header.name.clone()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "member {} has a name that is not UTF-8, which xdkms cannot write back",
                    header.name.escape_ascii()
                ),
            )
        })?;
        let path = normalize(&name).to_string();
        let size = u64::from(header.file_size);
        let data = match header.file_type() {
            S_IFLNK => {
                let mut target = Vec::new();
                data.take(u64::from(NAME_MAX)).read_to_end(&mut target)?;
                Some(Data::Bytes(target))
            }
            S_IFREG if size == 0 => Some(Data::default()),
            S_IFREG if (self.options.keep)(&path) => {
                Some(self.keep_file(data, size, (self.options.separate)(&path))?)
            }
            S_IFREG => None,
            // Directories and device nodes have no data.
            _ => Some(Data::default()),
        };
        let entry = data.map(|data| Entry {
            name,
            mode: header.mode,
            uid: header.uid,
            gid: header.gid,
            nlink: header.nlink,
            mtime: header.mtime,
            ino: header.ino,
            dev_major: header.dev_major,
            dev_minor: header.dev_minor,
            rdev_major: header.rdev_major,
            rdev_minor: header.rdev_minor,
            data: if header.file_type() == S_IFDIR { Data::default() } else { data },
        });
        self.spool.members.push((segment.index, path, entry));
        Ok(())
    }

    fn segment_end(&mut self, segment: &SegmentInfo) -> io::Result<()> {
        self.spool.segments.push(*segment);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Level;
    use crate::image::{archive_entries, segment_bytes, write_image};
    use std::collections::BTreeMap;

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, Entry> {
        list.iter().map(|(p, d)| (p.to_string(), Entry::file(*p, 0o644, d.as_bytes().to_vec()))).collect()
    }

    fn segment(list: &[(&str, &str)], codec: Codec) -> Vec<u8> {
        segment_bytes(&archive_entries(files(list), None, 0), codec, Level::default()).expect("segment")
    }

    /// A scratch directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("initramfs-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    fn read(image: &[u8], dir: &Path) -> Spool {
        Spool::read(image, &SpoolOptions { dir, keep: &|_| true, separate: &|p| p.starts_with('e'), limit: u64::MAX })
            .expect("spool")
    }

    /// An image: early microcode (uncompressed), then the main archive, then each `tail`.
    fn layered(main_codec: Codec, tails: &[(Codec, &[(&str, &str)])]) -> Vec<u8> {
        let mut image = segment(&[("kernel/x86/microcode/GenuineIntel.bin", "ucode")], Codec::None);
        let early = image.len() as u64;
        let mut kept = Kept { len: early, last_codec: Some(Codec::None) };
        for (codec, list) in
            std::iter::once((main_codec, &[("init", "v1"), ("etc/a", "a")][..])).chain(tails.iter().copied())
        {
            let mut out = Vec::new();
            let entries = archive_entries(files(list), None, 0);
            write_image(&mut out, &mut &image[..], kept, &entries, codec, Level::default()).expect("write");
            kept = Kept { len: out.len() as u64, last_codec: Some(codec) };
            image = out;
        }
        image
    }

    #[test]
    fn every_layout_reads_and_later_segments_win() {
        let dir = scratch("layouts");
        for main in [Codec::Gzip, Codec::Xz, Codec::Zstd, Codec::Lz4, Codec::Bzip2, Codec::Lzma, Codec::None] {
            for tail in [Codec::None, Codec::Gzip, Codec::Lz4] {
                let image = layered(main, &[(tail, &[("init", "v2")])]);
                let spool = read(&image, &dir);
                let codecs: Vec<Codec> = spool.segments().iter().map(|s| s.codec).collect();
                assert_eq!(codecs, [Codec::None, main, tail], "{main}+{tail}");
                let tree = spool.tree(0);
                assert_eq!(tree.files["init"].data.read_all().expect("init"), b"v2");
                assert_eq!(tree.files["etc/a"].data.read_all().expect("a"), b"a");
                assert!(tree.files["kernel/x86/microcode"].is_dir());
            }
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn rewrite_keeps_early_bytes_and_append_keeps_everything() {
        let dir = scratch("rewrite");
        let original = layered(Codec::Gzip, &[]);
        let spool = read(&original, &dir);
        let early = &original[..spool.segments()[1].offset as usize];
        let new = archive_entries(files(&[("init", "v2")]), None, 0);
        let mut rewritten = Vec::new();
        write_image(&mut rewritten, &mut &original[..], spool.rewrite_kept(), &new, Codec::Xz, Level::default())
            .expect("rewrite");
        assert!(rewritten.starts_with(early));
        let again = read(&rewritten, &dir);
        assert_eq!(again.segments().iter().map(|s| s.codec).collect::<Vec<_>>(), [Codec::None, Codec::Xz]);
        let mut appended = Vec::new();
        let kept = spool.append_kept(original.len() as u64);
        write_image(&mut appended, &mut &original[..], kept, &new, Codec::None, Level::default()).expect("append");
        assert!(appended.starts_with(&original));
        assert_eq!(read(&appended, &dir).tree(0).files["init"].data.read_all().expect("init"), b"v2");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn hard_links_share_the_last_data_and_the_limit_holds() {
        let dir = scratch("links");
        let mut first = Entry::file("a", 0o644, Vec::new());
        let mut second = Entry::file("b", 0o644, b"shared".to_vec());
        for entry in [&mut first, &mut second] {
            entry.nlink = 2;
        }
        // The archive writer numbers inodes itself: give both one inode by hand-editing "b"'s.
        let mut bytes = crate::newc::write(&[first, second]).expect("write");
        let b_header = bytes.windows(2).rposition(|w| w == b"b\0").expect("b") - 110;
        let ino = bytes[6..14].to_vec();
        bytes[b_header + 6..b_header + 14].copy_from_slice(&ino);
        let tree = read(&bytes, &dir).tree(0);
        assert_eq!(tree.files["a"].data.read_all().expect("a"), b"shared");
        let limited =
            Spool::read(&bytes[..], &SpoolOptions { dir: &dir, keep: &|_| true, separate: &|_| false, limit: 5 });
        let error = limited.expect_err("over the limit").to_string();
        assert!(error.contains("more than 5 bytes"), "{error}");
        // Data not kept leaves the member out of the views.
        let skipped =
            Spool::read(&bytes[..], &SpoolOptions { dir: &dir, keep: &|p| p != "b", separate: &|_| true, limit: 0 });
        let tree = skipped.expect("spool").tree(0);
        assert!(tree.files.contains_key("a") && !tree.files.contains_key("b"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
