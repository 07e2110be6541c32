//! Paths inside a target root: every lookup resolves symlinks as if the root were `/`.
//!
//! A sysroot unpacked from packages is full of absolute symlinks (`lib/modules/K/build ->
//! /usr/src/linux-headers-K`, `lib -> /usr/lib`). Followed by the host kernel they would escape to the
//! build host's own files; here they are resolved against the root, `..` stops at the root, and
//! nothing a lookup returns lies outside it (the same rule as `openat2(RESOLVE_IN_ROOT)`).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Linux's limit on symlinks followed in one lookup (MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// Set once openat2 turned out to be missing (kernels before 5.6, seccomp filters): every later
/// lookup walks the path itself.
static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// A handle on a directory used as `/` for every path lookup and file access made through it.
///
/// Files are reached through a file descriptor of the root opened once: `openat2` with
/// `RESOLVE_IN_ROOT` (absolute symlinks and `..` stay inside the root, as if it were `/`), or on
/// kernels without openat2 a component-by-component walk with `O_NOFOLLOW` that does the same.
/// Every file-access method takes a host path below the root (the root joined with a path
/// inside it, as [`Sysroot::resolve`] or `root().join(..)` make them) and refuses any other, so
/// whatever is written through the handle lands inside the root. The build host is the root `/`.
#[derive(Clone)]
pub struct Sysroot {
    root: PathBuf,
    dir: Arc<OwnedFd>,
    /// Tests force the fallback walk with this.
    walk_only: bool,
}

impl std::fmt::Debug for Sysroot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sysroot").field("root", &self.root).finish()
    }
}

impl PartialEq for Sysroot {
    fn eq(&self, other: &Self) -> bool {
        self.root == other.root
    }
}

impl Eq for Sysroot {}

/// One entry of a directory read through the root handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: OsString,
    pub kind: EntryKind,
}

/// What an entry is, without following it when it is a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

impl Sysroot {
    /// Opens `root`, which must be an existing directory. The host path is made absolute and
    /// canonical once, so later results are plain host paths below it.
    pub fn new(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = root.as_ref();
        let canonical = std::fs::canonicalize(root)
            .map_err(|e| io::Error::new(e.kind(), format!("sysroot {}: {e}", root.display())))?;
        Self::open(canonical).map_err(|e| io::Error::new(e.kind(), format!("sysroot {}: {e}", root.display())))
    }

    /// The running system's own root, for commands run without `--root`/`-b`.
    pub fn host() -> io::Result<Self> {
        Self::open(PathBuf::from("/"))
    }

    fn open(root: PathBuf) -> io::Result<Self> {
        let dir = rustix::fs::open(&root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Sysroot { root, dir: Arc::new(dir), walk_only: false })
    }

    /// The same root, reached by the component walk alone (what kernels without openat2 get).
    #[cfg(test)]
    fn without_openat2(&self) -> Self {
        Sysroot { walk_only: true, ..self.clone() }
    }

    /// The host path of the root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True when this sysroot is the host's `/`.
    pub fn is_host(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The host path for `path` as the target sees it (absolute, or relative to the target's `/`),
    /// with every symlink on the way resolved inside the root. Components that do not exist are
    /// appended as they are (with `.`/`..` applied lexically), so the result also names files
    /// still to be created.
    pub fn resolve(&self, path: impl AsRef<Path>) -> io::Result<PathBuf> {
        let inner = self.resolve_inner(path.as_ref())?;
        Ok(self.host_path(&inner))
    }

    /// A host path below the root, with every symlink in it resolved inside the root (so that
    /// writing there cannot leave the root). A path outside the root is an error, never
    /// returned unresolved; on the build host (`/`) every absolute path is inside.
    pub fn resolve_host(&self, host: &Path) -> io::Result<PathBuf> {
        let inner = self.inner(host)?;
        if self.is_host() {
            return Ok(host.to_path_buf());
        }
        self.resolve(inner)
    }

    /// True when `host` is a path below the root (a build host file otherwise).
    pub fn contains(&self, host: &Path) -> bool {
        host.is_absolute() && host.starts_with(&self.root)
    }

    /// Like [`Sysroot::resolve`] but returns the resolved path as the target sees it
    /// (absolute, starting at the target's `/`).
    pub fn resolve_target_path(&self, path: impl AsRef<Path>) -> io::Result<PathBuf> {
        let inner = self.resolve_inner(path.as_ref())?;
        let mut out = PathBuf::from("/");
        out.extend(inner);
        Ok(out)
    }

    /// The host path of an already resolved target path, without following anything.
    pub fn host_path(&self, components: &[OsString]) -> PathBuf {
        let mut out = self.root.clone();
        out.extend(components);
        out
    }

    fn resolve_inner(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let mut pending: VecDeque<OsString> = normal_components(path).into();
        let mut resolved: Vec<OsString> = Vec::new();
        let mut links_followed = 0;
        while let Some(component) = pending.pop_front() {
            if component == "." {
                continue;
            }
            if component == ".." {
                resolved.pop();
                continue;
            }
            let candidate = self.host_path(&resolved).join(&component);
            let meta = match std::fs::symlink_metadata(&candidate) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // The rest does not exist: keep it lexically.
                    resolved.push(component);
                    for rest in pending {
                        if rest == ".." {
                            resolved.pop();
                        } else if rest != "." {
                            resolved.push(rest);
                        }
                    }
                    return Ok(resolved);
                }
                Err(e) => return Err(e),
            };
            if !meta.file_type().is_symlink() {
                resolved.push(component);
                continue;
            }
            links_followed += 1;
            if links_followed > MAX_SYMLINKS {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "too many levels of symbolic links resolving {} inside {}",
                        path.display(),
                        self.root.display()
                    ),
                ));
            }
            let target = std::fs::read_link(&candidate)?;
            if target.is_absolute() {
                resolved.clear();
            }
            for (i, c) in normal_components(&target).into_iter().enumerate() {
                pending.insert(i, c);
            }
        }
        Ok(resolved)
    }
}

/// File access through the root's descriptor. Each method takes a host path below the root.
impl Sysroot {
    /// The path below the root that `host` names; an error for any path outside the root.
    fn inner<'p>(&self, host: &'p Path) -> io::Result<&'p Path> {
        if !host.is_absolute() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not an absolute path inside {}", host.display(), self.root.display()),
            ));
        }
        host.strip_prefix(&self.root).map_err(|_| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is outside the root {}", host.display(), self.root.display()),
            )
        })
    }

    /// Opens `host` with `flags`, every symlink on the way (the last one too) resolved inside
    /// the root.
    fn open_at(&self, host: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let inner = self.inner(host)?;
        self.open_inner(inner, flags, mode).map_err(|e| with_path(e, host))
    }

    fn open_inner(&self, inner: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let path: &Path = if inner.as_os_str().is_empty() { Path::new(".") } else { inner };
        if !self.walk_only && !OPENAT2_MISSING.load(Ordering::Relaxed) {
            let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
            // EAGAIN: a rename raced the lookup; the kernel asks to retry.
            for _ in 0..16 {
                match rustix::fs::openat2(self.dir.as_fd(), path, flags | OFlags::CLOEXEC, mode, resolve) {
                    Err(Errno::AGAIN) => continue,
                    Err(Errno::NOSYS) | Err(Errno::PERM) => {
                        OPENAT2_MISSING.store(true, Ordering::Relaxed);
                        break;
                    }
                    other => return other.map_err(io::Error::from),
                }
            }
        }
        self.walk(path, flags, mode)
    }

    /// The fallback lookup: one component at a time from the root's descriptor, each opened with
    /// O_NOFOLLOW; a symlink is read and its target spliced in (an absolute one from the root),
    /// `..` goes back to the directory the walk came from and never above the root.
    fn walk(&self, path: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut pending: VecDeque<OsString> = normal_components(path).into();
        let mut links = 0;
        while let Some(component) = pending.pop_front() {
            if component == "." {
                continue;
            }
            if component == ".." {
                stack.pop();
                continue;
            }
            let current: BorrowedFd<'_> = stack.last().map_or(self.dir.as_fd(), |fd| fd.as_fd());
            // O_EXCL creates a file that is not there: a symlink in its place is not followed.
            let not_followed = pending.is_empty() && flags.contains(OFlags::CREATE | OFlags::EXCL);
            match rustix::fs::readlinkat(current, component.as_os_str(), Vec::new()) {
                Ok(_) if not_followed => {}
                Ok(target) => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(io::Error::from(Errno::LOOP));
                    }
                    let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                    if target.is_absolute() {
                        stack.clear();
                    }
                    for (i, c) in normal_components(&target).into_iter().enumerate() {
                        pending.insert(i, c);
                    }
                    continue;
                }
                // EINVAL: not a symlink; ENOENT: missing (the last one may be created).
                Err(Errno::INVAL) => {}
                Err(Errno::NOENT) if pending.is_empty() => {}
                Err(e) => return Err(e.into()),
            }
            if pending.is_empty() {
                return Ok(rustix::fs::openat(
                    current,
                    component.as_os_str(),
                    flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    mode,
                )?);
            }
            let next = rustix::fs::openat(
                current,
                component.as_os_str(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            stack.push(next);
        }
        let current: BorrowedFd<'_> = stack.last().map_or(self.dir.as_fd(), |fd| fd.as_fd());
        Ok(rustix::fs::openat(current, ".", flags | OFlags::CLOEXEC, mode)?)
    }

    /// The directory holding `host` (resolved inside the root) and the last component's name,
    /// which is not followed: what removing, renaming or linking needs.
    fn parent_of(&self, host: &Path) -> io::Result<(OwnedFd, OsString)> {
        let inner = self.inner(host)?;
        let name = match inner.components().next_back() {
            Some(Component::Normal(name)) => name.to_os_string(),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} names no entry of a directory", host.display()),
                ))
            }
        };
        let parent = inner.parent().unwrap_or(Path::new(""));
        let dir =
            self.open_inner(parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).map_err(|e| with_path(e, host))?;
        Ok((dir, name))
    }

    /// `std::fs::metadata`, symlinks followed inside the root.
    pub fn metadata(&self, host: &Path) -> io::Result<Metadata> {
        File::from(self.open_at(host, OFlags::PATH, Mode::empty())?).metadata()
    }

    /// `std::fs::symlink_metadata`: the last component itself, not what it links to.
    pub fn symlink_metadata(&self, host: &Path) -> io::Result<Metadata> {
        if self.inner(host)?.as_os_str().is_empty() {
            return self.metadata(host);
        }
        let (dir, name) = self.parent_of(host)?;
        let fd = rustix::fs::openat(&dir, &name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| with_path(e.into(), host))?;
        File::from(fd).metadata()
    }

    /// True when `host` exists (a dangling symlink does not).
    pub fn exists(&self, host: &Path) -> bool {
        self.metadata(host).is_ok()
    }

    /// True when `host` is a directory, or a symlink to one inside the root.
    pub fn is_dir(&self, host: &Path) -> bool {
        self.metadata(host).is_ok_and(|m| m.is_dir())
    }

    /// True when `host` is a regular file, or a symlink to one inside the root.
    pub fn is_file(&self, host: &Path) -> bool {
        self.metadata(host).is_ok_and(|m| m.is_file())
    }

    /// True when `host` itself is a symlink.
    pub fn is_symlink(&self, host: &Path) -> bool {
        self.symlink_metadata(host).is_ok_and(|m| m.file_type().is_symlink())
    }

    /// True when both paths name the same file (after resolving them inside the root).
    pub fn same_file(&self, a: &Path, b: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.metadata(a), self.metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Opens a file for reading.
    pub fn open_file(&self, host: &Path) -> io::Result<File> {
        Ok(File::from(self.open_at(host, OFlags::RDONLY, Mode::empty())?))
    }

    /// `std::fs::read`.
    pub fn read(&self, host: &Path) -> io::Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open_file(host)?.read_to_end(&mut data).map_err(|e| with_path(e, host))?;
        Ok(data)
    }

    /// `std::fs::read_to_string`.
    pub fn read_to_string(&self, host: &Path) -> io::Result<String> {
        let mut text = String::new();
        self.open_file(host)?.read_to_string(&mut text).map_err(|e| with_path(e, host))?;
        Ok(text)
    }

    /// The entries of a directory (without `.` and `..`), sorted by name.
    pub fn read_dir(&self, host: &Path) -> io::Result<Vec<Entry>> {
        let mut entries = self.read_dir_in_order(host)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// The entries of a directory (without `.` and `..`) in the order readdir(3) returns them,
    /// as tools that walk in that order (depmod) need.
    pub fn read_dir_in_order(&self, host: &Path) -> io::Result<Vec<Entry>> {
        let fd = self.open_at(host, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        let mut entries = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd)? {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let kind = match entry.file_type() {
                rustix::fs::FileType::RegularFile => EntryKind::File,
                rustix::fs::FileType::Directory => EntryKind::Dir,
                rustix::fs::FileType::Symlink => EntryKind::Symlink,
                rustix::fs::FileType::Unknown => {
                    let stat = rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
                    match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
                        rustix::fs::FileType::RegularFile => EntryKind::File,
                        rustix::fs::FileType::Directory => EntryKind::Dir,
                        rustix::fs::FileType::Symlink => EntryKind::Symlink,
                        _ => EntryKind::Other,
                    }
                }
                _ => EntryKind::Other,
            };
            entries.push(Entry { name: name.to_os_string(), kind });
        }
        Ok(entries)
    }

    /// Creates (or truncates) a file for writing, mode 0666 less the umask.
    pub fn create_file(&self, host: &Path) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC;
        Ok(File::from(self.open_at(host, flags, Mode::from_raw_mode(0o666))?))
    }

    /// Creates a file that must not exist yet, mode 0666 less the umask: AlreadyExists when
    /// anything is there (a symlink too, which is not followed).
    pub fn create_new_file(&self, host: &Path) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        Ok(File::from(self.open_at(host, flags, Mode::from_raw_mode(0o666))?))
    }

    /// Opens `host` for writing without truncating it, creating it if needed (a lock file).
    pub fn open_lock_file(&self, host: &Path) -> io::Result<File> {
        Ok(File::from(self.open_at(host, OFlags::WRONLY | OFlags::CREATE, Mode::from_raw_mode(0o644))?))
    }

    /// A directory opened read-only (to lock it: flock works on a directory's descriptor, so
    /// runs can take turns on a tree without a lock file in it).
    pub fn open_dir(&self, host: &Path) -> io::Result<File> {
        Ok(File::from(self.open_at(host, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?))
    }

    /// `std::fs::write`.
    pub fn write(&self, host: &Path, data: &[u8]) -> io::Result<()> {
        self.create_file(host)?.write_all(data).map_err(|e| with_path(e, host))
    }

    /// Writes `data` to a temporary file beside `host` (`.<name>.<pid>.xdkms-tmp`, locked while
    /// written), then renames it over `host`: a reader (or a killed run) sees the old or the new
    /// file, never a part, and what a killed run left beside it is removed by the next write.
    pub fn write_atomic(&self, host: &Path, data: &[u8], permissions: Option<Permissions>) -> io::Result<()> {
        self.write_atomic_with(host, permissions, |file| file.write_all(data))
    }

    /// [`Sysroot::write_atomic`] with the content written by `write` (a stream of any size).
    pub fn write_atomic_with(
        &self,
        host: &Path,
        permissions: Option<Permissions>,
        write: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<()> {
        let (dir, name) = self.parent_of(host)?;
        remove_stale_temporaries(&dir, &name);
        let temp_name = temporary_name(&name, std::process::id());
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // Created with the final mode's bits already (a private key is never readable by others,
        // not even while written); set exactly afterwards, past the umask.
        let create_mode = permissions.as_ref().map_or(0o666, |p| std::os::unix::fs::PermissionsExt::mode(p) & 0o777);
        let fd = rustix::fs::openat(&dir, &temp_name, flags, Mode::from_raw_mode(create_mode))
            .map_err(|e| with_path(e.into(), host))?;
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::LockExclusive).map_err(|e| with_path(e.into(), host))?;
        let mut file = File::from(fd);
        let written = write(&mut file)
            .and_then(|()| permissions.map_or(Ok(()), |p| file.set_permissions(p)))
            .and_then(|()| Ok(rustix::fs::renameat(&dir, &temp_name, &dir, &name)?));
        if written.is_err() {
            let _ = rustix::fs::unlinkat(&dir, &temp_name, AtFlags::empty());
        }
        written.map_err(|e| with_path(e, host))
    }

    /// Copies a file of the build host (`from`, any path) to `host` inside the root, mode kept.
    pub fn copy_in(&self, from: &Path, host: &Path) -> io::Result<()> {
        let mut source = File::open(from).map_err(|e| with_path(e, from))?;
        let permissions = source.metadata()?.permissions();
        let mut dest = self.create_file(host)?;
        io::copy(&mut source, &mut dest).map_err(|e| with_path(e, host))?;
        dest.set_permissions(permissions)
    }

    /// Sets the mode of `host` (symlinks followed inside the root).
    pub fn set_permissions(&self, host: &Path, permissions: Permissions) -> io::Result<()> {
        File::from(self.open_at(host, OFlags::RDONLY, Mode::empty())?).set_permissions(permissions)
    }

    /// `std::fs::create_dir_all`, each level resolved inside the root.
    pub fn create_dir_all(&self, host: &Path) -> io::Result<()> {
        let inner = self.inner(host)?.to_path_buf();
        let mut prefix = self.root.clone();
        for component in inner.components() {
            prefix.push(component);
            if self.is_dir(&prefix) {
                continue;
            }
            let (dir, name) = self.parent_of(&prefix)?;
            match rustix::fs::mkdirat(&dir, &name, Mode::from_raw_mode(0o777)) {
                Ok(()) | Err(Errno::EXIST) if self.is_dir(&prefix) => {}
                Ok(()) => {}
                Err(e) => return Err(with_path(e.into(), &prefix)),
            }
        }
        Ok(())
    }

    /// Creates one directory, mode 0777 less the umask; its parent must exist.
    pub fn create_dir(&self, host: &Path) -> io::Result<()> {
        let (dir, name) = self.parent_of(host)?;
        rustix::fs::mkdirat(&dir, &name, Mode::from_raw_mode(0o777)).map_err(|e| with_path(e.into(), host))
    }

    /// Removes a file or symlink (never what the symlink points to).
    pub fn remove_file(&self, host: &Path) -> io::Result<()> {
        let (dir, name) = self.parent_of(host)?;
        rustix::fs::unlinkat(&dir, &name, AtFlags::empty()).map_err(|e| with_path(e.into(), host))
    }

    /// Removes an empty directory.
    pub fn remove_dir(&self, host: &Path) -> io::Result<()> {
        let (dir, name) = self.parent_of(host)?;
        rustix::fs::unlinkat(&dir, &name, AtFlags::REMOVEDIR).map_err(|e| with_path(e.into(), host))
    }

    /// `rm -rf`: removes `host` and everything below it; a symlink anywhere (`host` itself
    /// included) is removed as a link, never followed.
    pub fn remove_all(&self, host: &Path) -> io::Result<()> {
        let (dir, name) = self.parent_of(host)?;
        remove_entry(&dir, &name).map_err(|e| with_path(e, host))
    }

    /// `ln -s target host`.
    pub fn symlink(&self, target: &Path, host: &Path) -> io::Result<()> {
        let (dir, name) = self.parent_of(host)?;
        rustix::fs::symlinkat(target, &dir, &name).map_err(|e| with_path(e.into(), host))
    }

    /// Points the symlink `host` at `target` in one step (a new link beside it, renamed over it).
    pub fn replace_symlink(&self, target: &Path, host: &Path) -> io::Result<()> {
        let (dir, name) = self.parent_of(host)?;
        remove_stale_temporaries(&dir, &name);
        let temp_name = temporary_name(&name, std::process::id());
        let _ = rustix::fs::unlinkat(&dir, &temp_name, AtFlags::empty());
        rustix::fs::symlinkat(target, &dir, &temp_name)
            .and_then(|()| rustix::fs::renameat(&dir, &temp_name, &dir, &name))
            .map_err(|e| with_path(e.into(), host))
    }

    /// What the symlink `host` points to, as stored.
    pub fn read_link(&self, host: &Path) -> io::Result<PathBuf> {
        let (dir, name) = self.parent_of(host)?;
        let target = rustix::fs::readlinkat(&dir, &name, Vec::new()).map_err(|e| with_path(e.into(), host))?;
        Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
    }

    /// `ln existing host`: a hard link, both inside the root (their last components not followed).
    pub fn hard_link(&self, existing: &Path, host: &Path) -> io::Result<()> {
        let (from_dir, from_name) = self.parent_of(existing)?;
        let (to_dir, to_name) = self.parent_of(host)?;
        rustix::fs::linkat(&from_dir, &from_name, &to_dir, &to_name, AtFlags::empty())
            .map_err(|e| with_path(e.into(), host))
    }

    /// Renames `from` to `to`, both inside the root (their last components not followed).
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from_dir, from_name) = self.parent_of(from)?;
        let (to_dir, to_name) = self.parent_of(to)?;
        rustix::fs::renameat(&from_dir, &from_name, &to_dir, &to_name).map_err(|e| with_path(e.into(), from))
    }
}

/// The temporary file a write of `name` by process `pid` uses beside it.
fn temporary_name(name: &OsStr, pid: u32) -> OsString {
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(".{pid}.xdkms-tmp"));
    temp
}

/// Removes the temporary files of `name` in `dir` that runs which died left: their process is
/// gone and nobody holds their lock.
fn remove_stale_temporaries(dir: &OwnedFd, name: &OsStr) {
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let Ok(listing) = rustix::fs::openat(dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
    else {
        return;
    };
    let Ok(entries) = rustix::fs::Dir::read_from(&listing) else { return };
    for entry in entries.flatten() {
        let entry_name = OsStr::from_bytes(entry.file_name().to_bytes());
        let Some(pid) = entry_name
            .as_bytes()
            .strip_prefix(prefix.as_bytes())
            .and_then(|rest| rest.strip_suffix(b".xdkms-tmp"))
            .filter(|pid| !pid.is_empty() && pid.iter().all(u8::is_ascii_digit))
        else {
            continue;
        };
        let pid = String::from_utf8_lossy(pid);
        if pid == std::process::id().to_string() || Path::new("/proc").join(pid.as_ref()).exists() {
            continue;
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let unused = match rustix::fs::openat(dir, entry_name, flags, Mode::empty()) {
            Ok(fd) => rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok(),
            // A link being put in place (replace_symlink) has no lock: its dead owner is enough.
            Err(Errno::LOOP) => true,
            Err(_) => false,
        };
        if unused {
            let _ = rustix::fs::unlinkat(dir, entry_name, AtFlags::empty());
        }
    }
}

/// Removes `name` in `dir` and, when it is a directory, everything below it, each level reached
/// through descriptors opened with O_NOFOLLOW.
fn remove_entry(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Directory {
        return Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?);
    }
    let child = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&child)? {
        let entry = entry?;
        let entry_name = OsStr::from_bytes(entry.file_name().to_bytes());
        if entry_name != "." && entry_name != ".." {
            names.push(entry_name.to_os_string());
        }
    }
    for entry_name in names {
        remove_entry(&child, &entry_name)?;
    }
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

/// The error with the path it concerns (once: errors already naming it are kept).
fn with_path(error: io::Error, path: &Path) -> io::Error {
    let shown = path.display().to_string();
    if error.to_string().contains(&shown) {
        return error;
    }
    io::Error::new(error.kind(), PathError { path: shown, source: error })
}

/// An error of the root handle naming its path; the OS error stays inside, for callers that
/// print it as another tool would ([`without_path`]). Its message already holds the OS error,
/// so it names no source: an error chain printed whole (`{:#}`) would say it twice.
#[derive(Debug)]
struct PathError {
    path: String,
    source: io::Error,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.source)
    }
}

impl std::error::Error for PathError {}

/// The OS error under a root handle's error, without the path it names (kmod's messages show
/// `strerror` alone).
pub fn without_path(error: io::Error) -> io::Error {
    if !error.get_ref().is_some_and(|inner| inner.is::<PathError>()) {
        return error;
    }
    match error.into_inner().map(|inner| inner.downcast::<PathError>()) {
        Some(Ok(path_error)) => path_error.source,
        Some(Err(inner)) => io::Error::other(inner),
        None => io::Error::other("unknown error"),
    }
}

/// The components of `path` as plain names, `.` and `..` kept for the resolver, root dropped.
fn normal_components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::CurDir => Some(OsString::from(".")),
            Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cross-sysroot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    #[test]
    fn absolute_symlink_resolves_inside_root() {
        let dir = scratch("abs");
        std::fs::create_dir_all(dir.join("usr/src/linux-headers-6")).expect("mkdir");
        std::fs::create_dir_all(dir.join("lib/modules/6")).expect("mkdir");
        symlink("/usr/src/linux-headers-6", dir.join("lib/modules/6/build")).expect("symlink");
        let root = Sysroot::new(&dir).expect("sysroot");
        let got = root.resolve("/lib/modules/6/build/Makefile").expect("resolve");
        assert_eq!(got, root.root().join("usr/src/linux-headers-6/Makefile"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn dotdot_and_relative_links_stop_at_root() {
        let dir = scratch("dotdot");
        std::fs::create_dir_all(dir.join("usr/lib")).expect("mkdir");
        symlink("usr/lib", dir.join("lib")).expect("symlink");
        symlink("../../../../../etc", dir.join("usr/escape")).expect("symlink");
        let root = Sysroot::new(&dir).expect("sysroot");
        assert_eq!(root.resolve("/lib/x").expect("resolve"), root.root().join("usr/lib/x"));
        assert_eq!(root.resolve("/usr/escape/passwd").expect("resolve"), root.root().join("etc/passwd"));
        assert_eq!(root.resolve("../../etc/passwd").expect("resolve"), root.root().join("etc/passwd"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn host_paths_below_the_root_are_resolved_inside_it() {
        let dir = scratch("host");
        std::fs::create_dir_all(dir.join("lib/modules/6")).expect("mkdir");
        symlink("/data/updates", dir.join("lib/modules/6/updates")).expect("symlink");
        let root = Sysroot::new(&dir).expect("sysroot");
        let host = root.root().join("lib/modules/6/updates/dkms/a.ko");
        assert_eq!(root.resolve_host(&host).expect("resolve"), root.root().join("data/updates/dkms/a.ko"));
        assert!(root.resolve_host(Path::new("/elsewhere")).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let dir = scratch("loop");
        symlink("b", dir.join("a")).expect("symlink");
        symlink("a", dir.join("b")).expect("symlink");
        let root = Sysroot::new(&dir).expect("sysroot");
        assert!(root.resolve("/a/x").is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
    /// Both lookups: openat2 and the component walk of kernels without it.
    fn both(dir: &Path) -> [Sysroot; 2] {
        let root = Sysroot::new(dir).expect("sysroot");
        let walk = root.without_openat2();
        [root, walk]
    }

    #[test]
    fn file_access_follows_absolute_links_inside_the_root() {
        let dir = scratch("fd-abs");
        let outside = scratch("fd-abs-outside");
        std::fs::write(outside.join("secret"), "host").expect("write");
        std::fs::create_dir_all(dir.join(outside.strip_prefix("/").expect("absolute"))).expect("mkdir");
        std::fs::write(dir.join(outside.strip_prefix("/").expect("absolute")).join("secret"), "root").expect("write");
        symlink(&outside, dir.join("link")).expect("symlink");
        for root in both(&dir) {
            let text = root.read_to_string(&root.root().join("link/secret")).expect("read");
            assert_eq!(text, "root", "walk_only={}", root.walk_only);
            root.write(&root.root().join("link/new"), b"x").expect("write");
            assert!(!outside.join("new").exists());
            root.create_dir_all(&root.root().join("link/a/b")).expect("mkdir");
            assert!(!outside.join("a").exists());
            let _ = std::fs::remove_file(dir.join(outside.strip_prefix("/").expect("absolute")).join("new"));
            let _ = std::fs::remove_dir_all(dir.join(outside.strip_prefix("/").expect("absolute")).join("a"));
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
        std::fs::remove_dir_all(&outside).expect("cleanup");
    }

    #[test]
    fn remove_all_removes_links_and_never_their_targets() {
        let outside = scratch("fd-rm-outside");
        std::fs::write(outside.join("keep"), "host").expect("write");
        for walk in [false, true] {
            let dir = scratch("fd-rm");
            std::fs::create_dir_all(dir.join("tree/m/v")).expect("mkdir");
            symlink(&outside, dir.join("tree/m/v/K")).expect("symlink");
            symlink(&outside, dir.join("tree/top")).expect("symlink");
            let mut root = Sysroot::new(&dir).expect("sysroot");
            if walk {
                root = root.without_openat2();
            }
            root.remove_all(&root.root().join("tree/top")).expect("remove link");
            root.remove_all(&root.root().join("tree/m")).expect("remove tree");
            assert!(!dir.join("tree/m").exists() && !dir.join("tree/top").exists());
            assert!(outside.join("keep").is_file());
            std::fs::remove_dir_all(&dir).expect("cleanup");
        }
        std::fs::remove_dir_all(&outside).expect("cleanup");
    }

    #[test]
    fn paths_outside_the_root_are_refused() {
        let dir = scratch("fd-outside");
        let root = Sysroot::new(&dir).expect("sysroot");
        let error = root.write(Path::new("/tmp/xdkms-never-written"), b"x").expect_err("outside");
        assert!(error.to_string().contains("outside the root"), "{error}");
        assert!(root.write(Path::new("relative"), b"x").is_err());
        assert!(!Path::new("/tmp/xdkms-never-written").exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn dotdot_in_file_access_stops_at_the_root() {
        let dir = scratch("fd-dotdot");
        std::fs::create_dir_all(dir.join("a")).expect("mkdir");
        symlink("../../../../../../..", dir.join("a/up")).expect("symlink");
        for root in both(&dir) {
            root.write(&root.root().join("a/up/etc-file"), b"x").expect("write");
            assert!(dir.join("etc-file").is_file(), "walk_only={}", root.walk_only);
            std::fs::remove_file(dir.join("etc-file")).expect("cleanup");
            let names: Vec<_> = root.read_dir(&root.root().join("a/up/a")).expect("read_dir");
            assert_eq!(names, vec![Entry { name: "up".into(), kind: EntryKind::Symlink }]);
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn atomic_writes_and_symlink_replacement_leave_no_temporary_file() {
        let dir = scratch("fd-atomic");
        for root in both(&dir) {
            root.write_atomic(&root.root().join("f"), b"one", None).expect("write");
            root.write_atomic(&root.root().join("f"), b"two", None).expect("write");
            root.replace_symlink(Path::new("f"), &root.root().join("l")).expect("link");
            root.replace_symlink(Path::new("g"), &root.root().join("l")).expect("link");
            assert_eq!(root.read_link(&root.root().join("l")).expect("readlink"), Path::new("g"));
            assert_eq!(std::fs::read(dir.join("f")).expect("read"), b"two");
            let names: Vec<_> = root.read_dir(root.root()).expect("read_dir").into_iter().map(|e| e.name).collect();
            assert_eq!(names, vec![OsString::from("f"), OsString::from("l")]);
            std::fs::remove_file(dir.join("l")).expect("cleanup");
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
