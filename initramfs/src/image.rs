//! A whole initramfs image: the ordered segments the kernel unpacks, their merged view, and
//! writing a new image by rewriting its main part or appending a segment.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io;

use crate::codec::{decode_member, encode, Codec, Level};
use crate::newc::{self, Entry, S_IFDIR};

/// One archive in the image: uncompressed, or one compressed member holding a cpio stream.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Where the segment starts in the image.
    pub offset: usize,
    /// Its length (the archive or compressed member), zero padding after it excluded.
    pub len: usize,
    pub codec: Codec,
    /// Its members in order, trailers excluded.
    pub entries: Vec<Entry>,
}

/// Why an image could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at offset {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for ImageError {}

/// A parsed image.
#[derive(Debug, Clone)]
pub struct Image {
    pub segments: Vec<Segment>,
    pub size: usize,
}

/// The path a member unpacks to, relative to the root: leading `./` and `/` removed, `.` is "".
pub fn normalize(name: &str) -> &str {
    let mut name = name;
    loop {
        if let Some(rest) = name.strip_prefix("./") {
            name = rest;
        } else if let Some(rest) = name.strip_prefix('/') {
            name = rest;
        } else {
            break;
        }
    }
    let name = name.trim_end_matches('/');
    if name == "." {
        ""
    } else {
        name
    }
}

impl Image {
    /// Reads every segment as the kernel's unpacker does: NUL bytes between segments are skipped,
    /// an uncompressed archive must start on a 4-byte boundary, anything else must be the magic of
    /// a compressed member, decoded one member at a time.
    pub fn parse(bytes: &[u8]) -> Result<Image, ImageError> {
        Image::parse_keeping(bytes, &|_| true)
    }

    /// Like [`Image::parse`], but keeps file data only for members whose normalized path
    /// `keep_data` accepts (symlink targets are always kept): the layout of a large image and the
    /// contents of a few of its files, without copying the rest.
    pub fn parse_keeping(bytes: &[u8], keep_data: &dyn Fn(&str) -> bool) -> Result<Image, ImageError> {
        let keep = |name: &str| keep_data(normalize(name));
        let mut segments = Vec::new();
        let mut pos = 0;
        let fail = |offset: usize, message: String| ImageError { offset, message };
        while pos < bytes.len() {
            if bytes[pos] == 0 {
                pos += 1;
                continue;
            }
            if bytes[pos] == b'0' && pos % 4 == 0 {
                let (entries, used) =
                    newc::parse_keeping(&bytes[pos..], true, &keep).map_err(|e| fail(pos + e.offset, e.message))?;
                segments.push(Segment { offset: pos, len: used, codec: Codec::None, entries });
                pos += used;
                continue;
            }
            let Some(codec) = Codec::detect(&bytes[pos..]) else {
                let magic: Vec<String> = bytes[pos..].iter().take(4).map(|b| format!("{b:02x}")).collect();
                let hint = if bytes[pos] == b'0' {
                    " (an uncompressed archive after a compressed one must start on a 4-byte boundary)"
                } else {
                    ""
                };
                return Err(fail(pos, format!("unknown magic {}{hint}", magic.join(" "))));
            };
            let (content, used) = decode_member(codec, &bytes[pos..])
                .map_err(|e| fail(pos, format!("{codec} member cannot be decompressed: {e}")))?;
            let (entries, _) = newc::parse_keeping(&content, false, &keep)
                .map_err(|e| fail(pos, format!("inside the {codec} member, {e}")))?;
            segments.push(Segment { offset: pos, len: used, codec, entries });
            pos += used.max(1);
        }
        if segments.is_empty() {
            return Err(fail(0, "no cpio archive in the image".into()));
        }
        Ok(Image { segments, size: bytes.len() })
    }

    /// The index of the first segment a rewrite replaces: the first compressed one, or the last
    /// segment when none is compressed. Segments before it (early microcode, firmware archives)
    /// are kept byte for byte.
    pub fn rewrite_start(&self) -> usize {
        self.segments.iter().position(|s| s.codec != Codec::None).unwrap_or(self.segments.len().saturating_sub(1))
    }

    /// The codec of the main (last compressed) segment, `None` for an uncompressed image.
    pub fn main_codec(&self) -> Codec {
        self.segments.iter().rev().map(|s| s.codec).find(|&c| c != Codec::None).unwrap_or(Codec::None)
    }

    /// What the kernel ends up with from segments `from..`: each path's last member wins.
    pub fn merged_from(&self, from: usize) -> Merged<'_> {
        let mut files = BTreeMap::new();
        for segment in &self.segments[from.min(self.segments.len())..] {
            for entry in with_hard_link_data(&segment.entries) {
                let path = normalize(&entry.name).to_string();
                if !path.is_empty() {
                    files.insert(path, entry);
                }
            }
        }
        Merged { files }
    }

    /// The merged view of the whole image.
    pub fn merged(&self) -> Merged<'_> {
        self.merged_from(0)
    }
}

/// The members of one segment with hard links filled in: members with two or more links and the
/// same (device, inode, type) are one file whose data is the last non-empty data among them, as
/// the kernel links them (cpio(1) and gen_init_cpio put the data on the last link only).
fn with_hard_link_data(entries: &[Entry]) -> Vec<Cow<'_, Entry>> {
    let key = |e: &Entry| (e.dev_major, e.dev_minor, e.ino, e.file_type());
    let mut data: std::collections::HashMap<(u32, u32, u32, u32), &[u8]> = std::collections::HashMap::new();
    for e in entries.iter().filter(|e| e.nlink >= 2 && !e.is_dir() && !e.data.is_empty()) {
        data.insert(key(e), &e.data);
    }
    entries
        .iter()
        .map(|e| match data.get(&key(e)) {
            Some(shared) if e.nlink >= 2 && !e.is_dir() && e.data != *shared => {
                Cow::Owned(Entry { data: shared.to_vec(), ..e.clone() })
            }
            _ => Cow::Borrowed(e),
        })
        .collect()
}

/// Paths (normalized) to their final member, borrowed from the image where it can be.
#[derive(Debug, Clone, Default)]
pub struct Merged<'a> {
    pub files: BTreeMap<String, Cow<'a, Entry>>,
}

/// Symlinks followed in one lookup, as Linux's limit.
const MAX_SYMLINKS: usize = 40;

impl Merged<'_> {
    /// `path` with every symlink in the image resolved (absolute targets start at the image's
    /// root, `..` stops there). Missing components are kept as they are.
    pub fn resolve(&self, path: &str) -> String {
        let mut pending: Vec<String> = path.split('/').filter(|c| !c.is_empty()).rev().map(String::from).collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut followed = 0;
        while let Some(component) = pending.pop() {
            match component.as_str() {
                "." => continue,
                ".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            resolved.push(component);
            let here = resolved.join("/");
            let Some(entry) = self.files.get(&here) else { continue };
            if !entry.is_symlink() || followed >= MAX_SYMLINKS {
                continue;
            }
            followed += 1;
            resolved.pop();
            let target = String::from_utf8_lossy(&entry.data).into_owned();
            if target.starts_with('/') {
                resolved.clear();
            }
            pending.extend(target.split('/').filter(|c| !c.is_empty()).rev().map(String::from));
        }
        resolved.join("/")
    }
}

/// Turns path → member into an archive's member list: every missing parent directory added
/// (taking an existing directory's metadata from `existing` when it has one, else 0755), sorted
/// so parents precede children, owned by 0:0, with `mtime`, one link each.
pub fn archive_entries(files: BTreeMap<String, Entry>, existing: Option<&Merged>, mtime: u32) -> Vec<Entry> {
    let mut all: BTreeMap<String, Entry> = BTreeMap::new();
    for path in files.keys() {
        let mut parent = path.as_str();
        while let Some(slash) = parent.rfind('/') {
            parent = &parent[..slash];
            if files.contains_key(parent) || all.contains_key(parent) {
                continue;
            }
            let dir = match existing.and_then(|m| m.files.get(parent)) {
                Some(e) if e.is_dir() => Entry { name: parent.to_string(), ..Entry::clone(e) },
                _ => Entry::directory(parent),
            };
            all.insert(parent.to_string(), dir);
        }
    }
    // The members themselves are moved, not copied: an image's data is large.
    all.extend(files.into_iter().map(|(path, entry)| (path.clone(), Entry { name: path, ..entry })));
    all.into_values()
        .map(|mut e| {
            e.uid = 0;
            e.gid = 0;
            e.mtime = mtime;
            e.nlink = 1;
            if e.file_type() == S_IFDIR {
                e.data.clear();
            }
            e
        })
        .collect()
}

/// One segment's bytes: the archive, compressed with `codec`.
pub fn segment_bytes(entries: &[Entry], codec: Codec, level: Level) -> io::Result<Vec<u8>> {
    let archive = newc::write(entries)?;
    encode(codec, &archive, level)
}

/// Appends `segment` (encoded with `codec`) to `out` following the kernel's layout rules: an
/// uncompressed archive starts on a 4-byte boundary, and an LZ4 member already at the end gets
/// zero bytes after it (legacy LZ4 has no end marker).
pub fn push_segment(out: &mut Vec<u8>, last_codec: Option<Codec>, segment: &[u8], codec: Codec) {
    if last_codec == Some(Codec::Lz4) {
        out.extend_from_slice(&[0; 4]);
    }
    if codec == Codec::None {
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out.extend_from_slice(segment);
}

/// A new image from `original`: the segments before `image.rewrite_start()` byte for byte, then
/// one segment with `entries`.
pub fn rewrite(original: &[u8], image: &Image, entries: &[Entry], codec: Codec, level: Level) -> io::Result<Vec<u8>> {
    let start = image.rewrite_start();
    let keep = image.segments.get(start).map_or(original.len(), |s| s.offset);
    let mut out = original[..keep].to_vec();
    let last = start.checked_sub(1).map(|i| image.segments[i].codec);
    push_segment(&mut out, last, &segment_bytes(entries, codec, level)?, codec);
    Ok(out)
}

/// `original` untouched, with one more segment holding `entries`.
pub fn append(original: &[u8], image: &Image, entries: &[Entry], codec: Codec, level: Level) -> io::Result<Vec<u8>> {
    let mut out = original.to_vec();
    let last = image.segments.last().map(|s| s.codec);
    push_segment(&mut out, last, &segment_bytes(entries, codec, level)?, codec);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, Entry> {
        list.iter().map(|(p, d)| (p.to_string(), Entry::file(*p, 0o644, d.as_bytes().to_vec()))).collect()
    }

    #[test]
    fn every_layout_parses_and_later_segments_win() {
        let early = segment_bytes(
            &archive_entries(files(&[("kernel/x86/microcode/GenuineIntel.bin", "ucode")]), None, 0),
            Codec::None,
            Level::default(),
        )
        .expect("early");
        for main_codec in [Codec::Gzip, Codec::Xz, Codec::Zstd, Codec::Lz4, Codec::Bzip2, Codec::Lzma, Codec::None] {
            let main = archive_entries(files(&[("init", "v1"), ("etc/a", "a")]), None, 0);
            let mut image = Vec::new();
            push_segment(&mut image, None, &early, Codec::None);
            push_segment(
                &mut image,
                Some(Codec::None),
                &segment_bytes(&main, main_codec, Level::default()).expect("main"),
                main_codec,
            );
            let over = archive_entries(files(&[("init", "v2")]), None, 0);
            for tail_codec in [Codec::None, Codec::Gzip, Codec::Lz4] {
                let mut full = image.clone();
                push_segment(
                    &mut full,
                    Some(main_codec),
                    &segment_bytes(&over, tail_codec, Level::default()).expect("tail"),
                    tail_codec,
                );
                let parsed = Image::parse(&full).unwrap_or_else(|e| panic!("{main_codec}+{tail_codec}: {e}"));
                assert_eq!(parsed.segments.len(), 3, "{main_codec}+{tail_codec}");
                assert_eq!(parsed.segments[1].codec, main_codec);
                let merged = parsed.merged();
                assert_eq!(merged.files["init"].data, b"v2");
                assert_eq!(merged.files["etc/a"].data, b"a");
                assert!(merged.files["kernel/x86/microcode"].is_dir());
            }
        }
    }

    #[test]
    fn rewrite_keeps_early_bytes_and_append_keeps_everything() {
        let early =
            segment_bytes(&archive_entries(files(&[("kernel/x", "e")]), None, 0), Codec::None, Level::default())
                .expect("early");
        let mut original = early.clone();
        let main = archive_entries(files(&[("init", "v1")]), None, 0);
        push_segment(
            &mut original,
            Some(Codec::None),
            &segment_bytes(&main, Codec::Gzip, Level::default()).expect("main"),
            Codec::Gzip,
        );
        let image = Image::parse(&original).expect("parse");
        let new = archive_entries(files(&[("init", "v2")]), None, 0);
        let rewritten = rewrite(&original, &image, &new, Codec::Xz, Level::default()).expect("rewrite");
        assert!(rewritten.starts_with(&early));
        let parsed = Image::parse(&rewritten).expect("parse");
        assert_eq!(parsed.segments.iter().map(|s| s.codec).collect::<Vec<_>>(), vec![Codec::None, Codec::Xz]);
        let appended = append(&original, &image, &new, Codec::None, Level::default()).expect("append");
        assert!(appended.starts_with(&original));
        assert_eq!(Image::parse(&appended).expect("parse").merged().files["init"].data, b"v2");
    }

    #[test]
    fn parents_come_first_and_symlinks_resolve_in_the_image() {
        let mut listed = files(&[("usr/lib/modules/6/kernel/a.ko", "x")]);
        listed.insert("lib".into(), Entry::symlink("lib", "usr/lib"));
        listed.insert("abs".into(), Entry::symlink("abs", "/usr/lib/../lib"));
        let entries = archive_entries(listed, None, 7);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "abs",
                "lib",
                "usr",
                "usr/lib",
                "usr/lib/modules",
                "usr/lib/modules/6",
                "usr/lib/modules/6/kernel",
                "usr/lib/modules/6/kernel/a.ko"
            ]
        );
        assert!(entries.iter().all(|e| e.mtime == 7 && e.uid == 0));
        let merged = Merged { files: entries.into_iter().map(|e| (e.name.clone(), Cow::Owned(e))).collect() };
        assert_eq!(merged.resolve("lib/modules/6"), "usr/lib/modules/6");
        assert_eq!(merged.resolve("/abs/modules/../modules"), "usr/lib/modules");
    }

    #[test]
    fn bad_images_are_errors() {
        let good = segment_bytes(&archive_entries(files(&[("init", "v")]), None, 0), Codec::Gzip, Level::default())
            .expect("segment");
        assert!(Image::parse(&good[..good.len() - 5]).is_err(), "truncated");
        let mut junk = good.clone();
        junk.extend_from_slice(b"JUNK");
        assert!(Image::parse(&junk).expect_err("junk").message.contains("unknown magic"));
        assert!(Image::parse(b"PK\x03\x04zip").is_err());
        assert!(Image::parse(&[0; 64]).expect_err("empty").message.contains("no cpio archive"));
        // An uncompressed archive one byte past a 4-byte boundary.
        let mut misaligned = good.clone();
        misaligned.resize(misaligned.len().next_multiple_of(4) + 1, 0);
        misaligned.extend_from_slice(
            &segment_bytes(&[Entry::file("x", 0o644, vec![])], Codec::None, Level::default()).expect("u"),
        );
        assert!(Image::parse(&misaligned).expect_err("misaligned").message.contains("4-byte boundary"));
    }
}
