//! Writing files so that readers only ever see the old or the new content, and so that what a
//! killed run left half-written is cleaned up by the next one.

use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with what `write` writes (a stream of any size), mode 0644: written beside
/// it and renamed over it through the build host's root handle ([`cross::Sysroot::write_atomic`]: a temporary file named after this
/// process, locked while written, what a killed run left removed by the next write), so a crash
/// leaves the old file or the new one. A symlink is replaced where it points (`initrd.img ->
/// initrd.img-6.1.0`), never turned into a file.
pub fn replace_file_with(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let path = absolute(real_target(path)?);
    cross::Sysroot::host()?.write_atomic_with(&path, Some(std::fs::Permissions::from_mode(0o644)), write)
}

/// Reads a whole file that must be a regular one: a device (`/dev/zero`), FIFO or socket given
/// where a file is expected would never end.
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    Ok(data)
}

/// A scratch directory `<prefix><pid>-<random>` in `parent`, removed when dropped; those a
/// killed run left there (their process gone) are removed first.
pub fn scratch_dir(parent: &Path, prefix: &str) -> io::Result<tempfile::TempDir> {
    for entry in std::fs::read_dir(parent)?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)).and_then(|rest| rest.split_once('-')) else {
            continue;
        };
        let pid = pid.0;
        let dead = !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && pid != std::process::id().to_string()
            && !Path::new("/proc").join(pid).exists();
        match entry.file_type() {
            Ok(kind) if dead && kind.is_dir() => {
                let _ = std::fs::remove_dir_all(entry.path());
            }
            // What a run keeps beside its scratch directory (an image's left-out files' list).
            Ok(kind) if dead && kind.is_file() => {
                let _ = std::fs::remove_file(entry.path());
            }
            _ => {}
        }
    }
    tempfile::Builder::new().prefix(&format!("{prefix}{}-", std::process::id())).tempdir_in(parent)
}

/// A scratch directory emptied on every core when dropped, then removed: unlinking a module
/// tree's thousands of files from a tmpfs is page work in the kernel, which spreads.
#[derive(Debug)]
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    /// [`scratch_dir`], emptied in parallel when dropped.
    pub fn new(parent: &Path, prefix: &str) -> io::Result<Scratch> {
        scratch_dir(parent, prefix).map(Scratch)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // What is left (an error) goes with the directory itself, as TempDir removes it.
        let _ = remove_contents_in_parallel(self.0.path());
    }
}

/// Removes what `dir` holds: its files on every core, then its directories, deepest first.
fn remove_contents_in_parallel(dir: &Path) -> io::Result<()> {
    let (dirs, files): (Vec<_>, Vec<_>) = entries_below(dir)?.into_iter().partition(|(_, kind)| kind.is_dir());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len().div_ceil(64)).max(1);
    std::thread::scope(|scope| {
        for first in 0..threads {
            let files = &files;
            scope.spawn(move || {
                for (file, _) in files.iter().skip(first).step_by(threads) {
                    let _ = std::fs::remove_file(file);
                }
            });
        }
    });
    // A directory is listed before the ones it holds.
    for (dir, _) in dirs.iter().rev() {
        std::fs::remove_dir(dir)?;
    }
    Ok(())
}

/// Every entry below `dir` (not `dir` itself) with its type (a symlink is one, not followed),
/// each directory listed before what it holds.
pub fn entries_below(dir: &Path) -> io::Result<Vec<(PathBuf, std::fs::FileType)>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            }
            found.push((entry.path(), kind));
        }
    }
    Ok(found)
}

/// The bytes of the regular files below `dir` (symlinks not followed; a tree that cannot be
/// read, as one that another run is removing, counts nothing).
pub fn tree_bytes(dir: &Path) -> u64 {
    let entries = entries_below(dir).unwrap_or_default();
    let files = entries.iter().filter(|(_, kind)| kind.is_file());
    files.map(|(path, _)| std::fs::symlink_metadata(path).map_or(0, |m| m.len())).sum()
}

/// `path` made absolute against the working directory (as given when that cannot be read).
pub fn absolute(path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        std::env::current_dir().map(|cwd| cwd.join(&path)).unwrap_or(path)
    }
}

/// The file a path names once its symlinks are followed (the path itself when it is none, or
/// does not exist yet).
fn real_target(path: &Path) -> io::Result<PathBuf> {
    if !path.is_symlink() {
        return Ok(path.to_path_buf());
    }
    std::fs::canonicalize(path).map_err(|e| {
        io::Error::new(e.kind(), format!("{} is a symbolic link to nothing that exists: {e}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xdkms-fsio-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn a_symlinked_target_is_replaced_where_it_points() {
        let dir = scratch("link");
        std::fs::write(dir.join("initrd.img-6.1"), "old").expect("write");
        std::os::unix::fs::symlink("initrd.img-6.1", dir.join("initrd.img")).expect("symlink");
        replace_file_with(&dir.join("initrd.img"), |f| f.write_all(b"new")).expect("replace");
        assert!(dir.join("initrd.img").is_symlink());
        assert_eq!(std::fs::read(dir.join("initrd.img-6.1")).expect("read"), b"new");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn temporaries_of_dead_runs_are_removed_and_live_ones_kept() {
        let dir = scratch("stale");
        // PID 0 never names a process in /proc; our parent's does.
        let dead = dir.join(".image.0.xdkms-tmp");
        let live = dir.join(format!(".image.{}.xdkms-tmp", std::os::unix::process::parent_id()));
        let other = dir.join(".other.0.xdkms-tmp");
        for file in [&dead, &live, &other] {
            std::fs::write(file, "partial").expect("write");
        }
        replace_file_with(&dir.join("image"), |f| f.write_all(b"whole")).expect("replace");
        assert!(!dead.exists(), "a dead run's temporary file was kept");
        assert!(live.exists() && other.exists());
        let names: Vec<_> = std::fs::read_dir(&dir).expect("read_dir").flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
