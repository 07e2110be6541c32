//! The build cache: a content-addressed store of build results (a small tree of files each),
//! filed under the hash of everything that went into making them. It knows nothing of kernel
//! modules: callers name the inputs, the store hashes them into the key.
//!
//! Layout of `DIR`: `v1/<first two hex digits>/<key>/` holds `manifest` and `files/`;
//! `v1/tmp/` holds entries being written or removed. An entry is written whole in `tmp/` and
//! renamed into place in one step, so readers on any machine sharing `DIR` (NFS, a CI cache
//! action's copy) see a whole entry or none, and a second writer of the same key finds the
//! place taken and drops its own copy: one writer wins, none corrupts the other. Nothing is
//! fsynced: an entry torn by a crash is caught the way a damaged one is, by reading: every file
//! is checked against the size and sha256 its manifest lists before any is handed out, and an
//! entry that fails is a miss (and is removed), never a wrong result.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// The layout version: a directory of its own, so that a later layout never reads this one.
const LAYOUT: &str = "v1";

/// A manifest's first line.
const MANIFEST_HEADER: &str = "xdkms build cache entry 1";

/// A temporary entry older than this belongs to a run that died: prune removes it.
const STALE_TMP: Duration = Duration::from_secs(24 * 3600);

/// The most bytes one entry's files may hold: a result is a few modules and their logs; a
/// manifest listing more is not read (it would be read whole into memory to be checked).
const MAX_ENTRY_BYTES: u64 = 1 << 30;

/// The hash naming an entry: sha256 of its inputs, in hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    /// The key of `inputs` (name to value; values are hashes or short words, one line each).
    pub fn of(inputs: &BTreeMap<String, String>) -> Key {
        let mut hasher = Sha256::new();
        hasher.update(b"xdkms build cache v1\n");
        for (name, value) in inputs {
            hasher.update(name.as_bytes());
            hasher.update(b"=");
            hasher.update(value.as_bytes());
            hasher.update(b"\n");
        }
        Key(hex(&hasher.finalize()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// sha256 of `data`, in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One file of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// Relative to the entry's top, `/`-separated, no `.` or `..`.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    pub size: u64,
    pub sha256: String,
}

/// What an entry holds and what made it: its `manifest`, lines of text (`key HASH`, `input
/// NAME=VALUE`, `dir PATH`, `file MODE SIZE SHA256 PATH`) under a header line, readable with
/// grep and diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub key: String,
    /// The inputs the key was made of, by name: to tell why two builds did not share an entry.
    pub inputs: BTreeMap<String, String>,
    /// Directories (relative paths, parents first), so that empty ones come back too.
    pub dirs: Vec<String>,
    pub files: Vec<FileRecord>,
}

impl Manifest {
    fn to_text(&self) -> String {
        let mut text = format!("{MANIFEST_HEADER}\nkey {}\n", self.key);
        for (name, value) in &self.inputs {
            text.push_str(&format!("input {name}={value}\n"));
        }
        for dir in &self.dirs {
            text.push_str(&format!("dir {dir}\n"));
        }
        for file in &self.files {
            text.push_str(&format!("file {:o} {} {} {}\n", file.mode, file.size, file.sha256, file.path));
        }
        text
    }

    /// The manifest in `text`; None when it is not one.
    fn parse(text: &str) -> Option<Manifest> {
        let mut lines = text.lines();
        if lines.next()? != MANIFEST_HEADER {
            return None;
        }
        let key = lines.next()?.strip_prefix("key ")?.to_string();
        let mut manifest = Manifest { key, inputs: BTreeMap::new(), dirs: Vec::new(), files: Vec::new() };
        for line in lines {
            let (kind, rest) = line.split_once(' ')?;
            match kind {
                "input" => {
                    let (name, value) = rest.split_once('=')?;
                    manifest.inputs.insert(name.to_string(), value.to_string());
                }
                "dir" => manifest.dirs.push(rest.to_string()),
                "file" => {
                    let mut fields = rest.splitn(4, ' ');
                    let mode = u32::from_str_radix(fields.next()?, 8).ok()?;
                    let size = fields.next()?.parse().ok()?;
                    let sha256 = fields.next()?.to_string();
                    let path = fields.next()?.to_string();
                    manifest.files.push(FileRecord { path, mode, size, sha256 });
                }
                _ => return None,
            }
        }
        Some(manifest)
    }
}

/// A file of an entry, checked, handed to the caller to write where it belongs.
pub struct RestoredFile<'a> {
    pub path: &'a str,
    pub mode: u32,
    pub data: &'a [u8],
}

/// Whether [`Store::put`] filed the entry or found one already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Filed,
    AlreadyThere,
}

/// What [`Store::prune`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub kept_entries: usize,
    pub kept_bytes: u64,
    pub removed_entries: usize,
    pub removed_bytes: u64,
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Store {
    /// `DIR/v1`.
    top: PathBuf,
    /// As the user named it, for messages.
    shown: PathBuf,
}

impl Store {
    /// The cache at `dir`, created when missing.
    pub fn open(dir: &Path) -> io::Result<Store> {
        let top = dir.join(LAYOUT);
        std::fs::create_dir_all(top.join("tmp"))?;
        Ok(Store { top, shown: dir.to_path_buf() })
    }

    /// The directory as named.
    pub fn dir(&self) -> &Path {
        &self.shown
    }

    fn entry_dir(&self, key: &Key) -> PathBuf {
        self.top.join(&key.0[..2]).join(&key.0)
    }

    /// The entry filed under `key`, every file checked against its manifest, handed to `write`
    /// directories first (parents before children), then files in the manifest's order. None
    /// when there is no entry, or it fails the checks (then it is removed, so the next writer
    /// can file a good one); `write` is only called once every file has passed.
    pub fn get(
        &self,
        key: &Key,
        write_dir: &mut dyn FnMut(&str) -> io::Result<()>,
        write: &mut dyn FnMut(RestoredFile<'_>) -> io::Result<()>,
    ) -> io::Result<Option<Manifest>> {
        let dir = self.entry_dir(key);
        let checked = match read_entry(&dir, Some(key)) {
            Ok(Some(checked)) => checked,
            Ok(None) => return Ok(None),
            Err(_) => {
                self.discard(&dir);
                return Ok(None);
            }
        };
        checked.write_out(write_dir, write)?;
        // Its mtime tells prune when it was last used.
        let _ = rustix::fs::utimensat(
            rustix::fs::CWD,
            &dir,
            &rustix::fs::Timestamps { last_access: now_timespec(), last_modification: now_timespec() },
            rustix::fs::AtFlags::empty(),
        );
        Ok(Some(checked.manifest))
    }

    /// Files the tree at `from` (regular files and directories; anything else is refused) under
    /// `key`, with `inputs` recorded in its manifest.
    pub fn put(&self, key: &Key, inputs: &BTreeMap<String, String>, from: &Path) -> io::Result<Put> {
        let dir = self.entry_dir(key);
        if dir.is_dir() {
            return Ok(Put::AlreadyThere);
        }
        let staging = tempfile::Builder::new()
            .prefix(&format!("put-{}-", std::process::id()))
            .tempdir_in(self.top.join("tmp"))?;
        write_entry(staging.path(), key, inputs, from)?;
        std::fs::create_dir_all(dir.parent().unwrap_or(&self.top))?;
        let staged = staging.keep();
        match std::fs::rename(&staged, &dir) {
            Ok(()) => Ok(Put::Filed),
            // Another writer filed the key first (rename does not replace a non-empty directory).
            Err(_) if dir.is_dir() => {
                let _ = std::fs::remove_dir_all(&staged);
                Ok(Put::AlreadyThere)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staged);
                Err(e)
            }
        }
    }

    /// Removes the least recently used entries until the rest hold at most `max_bytes`, and
    /// what dead runs left in `tmp/`.
    pub fn prune(&self, max_bytes: u64) -> io::Result<Pruned> {
        self.remove_stale_tmp();
        let mut entries = self.entries()?;
        // Most recently used first; ties by key, so that the outcome does not depend on readdir.
        entries.sort_by(|a, b| b.used.cmp(&a.used).then_with(|| a.dir.cmp(&b.dir)));
        let mut pruned = Pruned::default();
        for entry in entries {
            if pruned.kept_bytes + entry.bytes <= max_bytes {
                pruned.kept_bytes += entry.bytes;
                pruned.kept_entries += 1;
            } else {
                self.discard(&entry.dir);
                pruned.removed_bytes += entry.bytes;
                pruned.removed_entries += 1;
            }
        }
        Ok(pruned)
    }

    /// Every entry, with its size on disk and last use.
    fn entries(&self) -> io::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for shard in std::fs::read_dir(&self.top)? {
            let shard = shard?;
            let name = shard.file_name();
            if name.len() != 2 || !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(shard.path())? {
                let entry = entry?;
                let meta = entry.metadata()?;
                if !meta.is_dir() {
                    continue;
                }
                let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                entries.push(Entry { dir: entry.path(), used, bytes: crate::fsio::tree_bytes(&entry.path()) });
            }
        }
        Ok(entries)
    }

    /// An entry moved out of sight in one rename, then deleted.
    fn discard(&self, dir: &Path) {
        let Ok(grave) = tempfile::Builder::new().prefix("gone-").tempdir_in(self.top.join("tmp")) else { return };
        let grave = grave.keep();
        let target = grave.join("entry");
        if std::fs::rename(dir, &target).is_ok() {
            let _ = std::fs::remove_dir_all(&grave);
        } else {
            let _ = std::fs::remove_dir_all(&grave);
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    fn remove_stale_tmp(&self) {
        let Ok(listing) = std::fs::read_dir(self.top.join("tmp")) else { return };
        for item in listing.flatten() {
            let old = item
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP);
            if old {
                let _ = std::fs::remove_dir_all(item.path());
            }
        }
    }
}

struct Entry {
    dir: PathBuf,
    used: SystemTime,
    bytes: u64,
}

fn now_timespec() -> rustix::fs::Timespec {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    rustix::fs::Timespec { tv_sec: now.as_secs() as i64, tv_nsec: now.subsec_nanos() as _ }
}

/// Writes an entry into the empty directory `dir`: the tree at `from` (regular files and
/// directories; anything else is refused) under `files/`, and its manifest naming `key` and
/// `inputs`. Build outputs handed from machine to machine (`build-one --out`) are entries too.
pub fn write_entry(dir: &Path, key: &Key, inputs: &BTreeMap<String, String>, from: &Path) -> io::Result<()> {
    if inputs.iter().any(|(name, value)| name.contains(['=', '\n']) || value.contains('\n')) {
        return Err(io::Error::other("an input name holds `=` or a line break, or its value a line break"));
    }
    let (dirs, files) = copy_tree(from, &dir.join("files"))?;
    let manifest = Manifest { key: key.0.clone(), inputs: inputs.clone(), dirs, files };
    std::fs::write(dir.join("manifest"), manifest.to_text())?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

/// An entry read and checked: its manifest, and the content of each file it lists.
pub struct CheckedEntry {
    pub manifest: Manifest,
    contents: Vec<Vec<u8>>,
}

impl CheckedEntry {
    /// The entry at `dir` (see [`Store::get`] for the checks); an error naming what failed.
    pub fn read(dir: &Path) -> io::Result<CheckedEntry> {
        read_entry(dir, None)?.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no manifest"))
    }

    /// Hands the entry to `write_dir` (directories, parents first) and `write` (files).
    pub fn write_out(
        &self,
        write_dir: &mut dyn FnMut(&str) -> io::Result<()>,
        write: &mut dyn FnMut(RestoredFile<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        for dir in &self.manifest.dirs {
            write_dir(dir)?;
        }
        for (record, data) in self.manifest.files.iter().zip(&self.contents) {
            write(RestoredFile { path: &record.path, mode: record.mode, data })?;
        }
        Ok(())
    }
}

/// The entry at `dir` read and checked: its manifest's key is that of its inputs (and `key`,
/// when given), its paths stay inside it, and every file has the size and hash listed. None
/// when there is no entry; an error when it fails a check.
fn read_entry(dir: &Path, key: Option<&Key>) -> io::Result<Option<CheckedEntry>> {
    let text = match std::fs::read_to_string(dir.join("manifest")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let manifest = Manifest::parse(&text).ok_or_else(|| bad("not a manifest".into()))?;
    if manifest.key != Key::of(&manifest.inputs).0 || key.is_some_and(|k| k.0 != manifest.key) {
        return Err(bad("the manifest's key is not that of its inputs, or not the one looked up".into()));
    }
    let total: u64 = manifest.files.iter().map(|f| f.size).sum();
    let paths = manifest.dirs.iter().chain(manifest.files.iter().map(|f| &f.path));
    if total > MAX_ENTRY_BYTES || paths.clone().any(|p| !is_plain_relative(p)) {
        return Err(bad("manifest lists paths outside the entry or too much data".into()));
    }
    let mut contents = Vec::with_capacity(manifest.files.len());
    for record in &manifest.files {
        let path = dir.join("files").join(&record.path);
        let file = std::fs::File::open(&path)?;
        if !file.metadata()?.is_file() {
            return Err(bad(format!("{}: not a regular file", record.path)));
        }
        let mut data = Vec::new();
        file.take(record.size + 1).read_to_end(&mut data)?;
        if data.len() as u64 != record.size || sha256_hex(&data) != record.sha256 {
            return Err(bad(format!("{}: content differs from the manifest", record.path)));
        }
        contents.push(data);
    }
    Ok(Some(CheckedEntry { manifest, contents }))
}

/// A relative path of plain names (no `.`, `..`, root or empty parts).
fn is_plain_relative(path: &str) -> bool {
    !path.is_empty() && Path::new(path).components().all(|c| matches!(c, Component::Normal(_))) && !path.contains("//")
}

/// Copies the tree at `from` to `to` (created): its directories (parents first) and files
/// (sorted by path), each file hashed as it is copied.
fn copy_tree(from: &Path, to: &Path) -> io::Result<(Vec<String>, Vec<FileRecord>)> {
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    std::fs::create_dir_all(to)?;
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        let mut names: Vec<_> = std::fs::read_dir(from.join(&rel))?.collect::<io::Result<_>>()?;
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let name = entry.file_name().into_string().map_err(|_| io::Error::other("a file name is not UTF-8"))?;
            if name.contains('\n') {
                return Err(io::Error::other(format!("{name:?}: a file name with a line break")));
            }
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let meta = std::fs::symlink_metadata(entry.path())?;
            if meta.is_dir() {
                std::fs::create_dir(to.join(&path))?;
                dirs.push(path.clone());
                pending.push(path);
            } else if meta.is_file() {
                let data = std::fs::read(entry.path())?;
                std::fs::write(to.join(&path), &data)?;
                files.push(FileRecord {
                    path,
                    mode: meta.mode() & 0o7777,
                    size: data.len() as u64,
                    sha256: sha256_hex(&data),
                });
            } else {
                return Err(io::Error::other(format!("{path}: only files and directories can be cached")));
            }
        }
    }
    dirs.sort();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((dirs, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("source".to_string(), value.to_string())])
    }

    fn tree(dir: &Path, content: &[u8]) {
        std::fs::create_dir_all(dir.join("module")).expect("mkdir");
        std::fs::create_dir_all(dir.join("empty")).expect("mkdir");
        std::fs::write(dir.join("module/a.ko"), content).expect("write");
        std::fs::write(dir.join("log"), b"log").expect("write");
    }

    /// An entry as handed out: its directories, and its files' contents by path.
    type Fetched = (Vec<String>, BTreeMap<String, Vec<u8>>);

    /// The entry under `key`.
    fn fetched(store: &Store, key: &Key) -> Option<Fetched> {
        let (mut dirs, mut files) = (Vec::new(), BTreeMap::new());
        let got = store
            .get(
                key,
                &mut |d| {
                    dirs.push(d.to_string());
                    Ok(())
                },
                &mut |f| {
                    files.insert(f.path.to_string(), f.data.to_vec());
                    Ok(())
                },
            )
            .expect("get");
        got.map(|_| (dirs, files))
    }

    #[test]
    fn a_filed_tree_comes_back_whole() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&scratch.path().join("cache")).expect("open");
        tree(&scratch.path().join("result"), b"module bytes");
        let key = Key::of(&inputs("a"));
        assert_eq!(store.put(&key, &inputs("a"), &scratch.path().join("result")).expect("put"), Put::Filed);
        let (dirs, files) = fetched(&store, &key).expect("hit");
        assert_eq!(dirs, ["empty", "module"]);
        assert_eq!(files.get("module/a.ko").map(Vec::as_slice), Some(&b"module bytes"[..]));
        assert_eq!(files.get("log").map(Vec::as_slice), Some(&b"log"[..]));
        assert!(fetched(&store, &Key::of(&inputs("b"))).is_none());
    }

    #[test]
    fn a_second_writer_of_a_key_keeps_the_first_entry() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&scratch.path().join("cache")).expect("open");
        let key = Key::of(&inputs("a"));
        tree(&scratch.path().join("one"), b"first");
        tree(&scratch.path().join("two"), b"second");
        store.put(&key, &inputs("a"), &scratch.path().join("one")).expect("put");
        assert_eq!(store.put(&key, &inputs("a"), &scratch.path().join("two")).expect("put"), Put::AlreadyThere);
        let (_, files) = fetched(&store, &key).expect("hit");
        assert_eq!(files.get("module/a.ko").map(Vec::as_slice), Some(&b"first"[..]));
    }

    #[test]
    fn a_damaged_entry_is_a_miss_and_goes() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&scratch.path().join("cache")).expect("open");
        let key = Key::of(&inputs("a"));
        tree(&scratch.path().join("result"), b"module bytes");
        store.put(&key, &inputs("a"), &scratch.path().join("result")).expect("put");
        let file = store.entry_dir(&key).join("files/module/a.ko");
        std::fs::write(&file, b"module bytez").expect("damage");
        let mut wrote = false;
        let got = store.get(&key, &mut |_| Ok(()), &mut |_| {
            wrote = true;
            Ok(())
        });
        assert!(got.expect("get").is_none());
        assert!(!wrote, "nothing of a damaged entry is handed out");
        assert!(!store.entry_dir(&key).exists());
    }

    #[test]
    fn a_manifest_reads_back_as_written() {
        let manifest = Manifest {
            key: "ab".repeat(32),
            inputs: inputs("x y=z"),
            dirs: vec!["module".into()],
            files: vec![FileRecord { path: "module/a b.ko".into(), mode: 0o644, size: 3, sha256: "00".repeat(32) }],
        };
        assert_eq!(Manifest::parse(&manifest.to_text()), Some(manifest));
        assert_eq!(Manifest::parse("xdkms build cache entry 1\nkey k\nfile 644 x"), None);
    }

    #[test]
    fn a_manifest_naming_paths_outside_the_entry_is_refused() {
        assert!(is_plain_relative("module/a.ko"));
        for path in ["../x", "/etc/passwd", "a/../../b", "", "a//b", "./a"] {
            assert!(!is_plain_relative(path), "{path}");
        }
    }

    #[test]
    fn prune_keeps_the_most_recently_used() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&scratch.path().join("cache")).expect("open");
        let keys: Vec<Key> = (0..3).map(|i| Key::of(&inputs(&i.to_string()))).collect();
        for (i, key) in keys.iter().enumerate() {
            let dir = scratch.path().join(format!("r{i}"));
            tree(&dir, &vec![b'x'; 1000]);
            store.put(key, &inputs(&i.to_string()), &dir).expect("put");
            let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64);
            std::fs::File::open(store.entry_dir(key)).and_then(|f| f.set_modified(old)).expect("age");
        }
        // Using the oldest makes it the newest.
        assert!(fetched(&store, &keys[0]).is_some());
        let size_of_one = crate::fsio::tree_bytes(&store.entry_dir(&keys[0]));
        let pruned = store.prune(size_of_one * 2).expect("prune");
        assert_eq!((pruned.kept_entries, pruned.removed_entries), (2, 1));
        assert!(store.entry_dir(&keys[0]).exists() && store.entry_dir(&keys[2]).exists());
        assert!(!store.entry_dir(&keys[1]).exists());
    }
}
