//! The target's paths for dkms.conf and build commands. Inside a root, dkms.conf files are read,
//! and patch, make and the build scripts run, in a private mount namespace in which the root's
//! source tree, module tree, /boot and a dkms tree sit where confs and Makefiles spell them out
//! (`/usr/src/...`, `/lib/modules/$kernelver/build`, `/var/lib/dkms/$module/$version/build`),
//! as on a target with its headers installed; the variables dkms passes (`$kernel_source_dir`,
//! `$dkms_tree`, ...) and the working directory are those target paths too. So a build inside a
//! root sees the paths dkms would see on the target, and produces the same module bytes.
//!
//! The namespace lives as long as the command; nothing is mounted on the host. A mount point
//! missing on the host (no /lib/modules on a build server) is created inside an overlay whose
//! writable layer lies in a work directory inside the root. The namespace is set up by this
//! binary run again as a helper (unshare(2) and mount(2), then exec of the command). Mount
//! namespaces need root or unprivileged user namespaces; without either, commands run directly
//! with host paths, and only the kernel-directory make variables point into the root.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::thread::UnshareFlags;

/// argv[1] of the helper process that sets a namespace up and runs the command (this binary,
/// run again: no shell script, no `unshare` program).
pub const HELPER: &str = "__xdkms-sandbox";

/// How the helper gets its mount namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Privilege {
    /// As root: a mount namespace.
    Root,
    /// Without root: a user namespace mapping us to root inside, and a mount namespace.
    UserNamespace,
}

impl Privilege {
    fn name(self) -> &'static str {
        match self {
            Privilege::Root => "root",
            Privilege::UserNamespace => "user",
        }
    }
}

/// This binary, for the helper.
fn helper_program() -> Option<PathBuf> {
    std::env::current_exe().ok()
}

/// How this process can get a private mount namespace, probed once by running the helper.
fn privilege() -> Option<Privilege> {
    static PRIVILEGE: OnceLock<Option<Privilege>> = OnceLock::new();
    *PRIVILEGE.get_or_init(|| {
        let program = helper_program()?;
        [Privilege::Root, Privilege::UserNamespace].into_iter().find(|privilege| {
            Command::new(&program)
                .args([HELPER, privilege.name(), "probe"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    })
}

/// The mounts of one view: `(host directory, target path it appears at)`.
#[derive(Debug, Clone)]
pub struct Sandbox {
    binds: Vec<(PathBuf, PathBuf)>,
    work: PathBuf,
    privilege: Privilege,
    program: PathBuf,
}

impl Sandbox {
    /// A sandbox with these mounts (overlay layers under `work`), or None when mount namespaces
    /// are not available.
    pub fn new(binds: Vec<(PathBuf, PathBuf)>, work: &Path) -> Option<Sandbox> {
        let privilege = privilege()?;
        Some(Sandbox { binds, work: work.to_path_buf(), privilege, program: helper_program()? })
    }

    /// The path a host path has inside the namespace (unchanged when no mount covers it).
    pub fn target_path(&self, host: &Path) -> PathBuf {
        self.binds
            .iter()
            .filter_map(|(source, target)| {
                // `join("")` would add a trailing slash.
                let rest = host.strip_prefix(source).ok()?;
                Some((source, if rest.as_os_str().is_empty() { target.clone() } else { target.join(rest) }))
            })
            .max_by_key(|(source, _)| source.as_os_str().len())
            .map(|(_, path)| path)
            .unwrap_or_else(|| host.to_path_buf())
    }

    /// A command running `program` inside the namespace, in `cwd` (a host path, entered at its
    /// target path).
    pub fn command(&self, program: impl AsRef<OsStr>, cwd: &Path) -> Command {
        // Overlay layers cannot be shared by two mounts at once, and commands of one run may
        // overlap (parallel builds read confs): each command gets layers of its own.
        static COMMANDS: AtomicUsize = AtomicUsize::new(0);
        let work = self.work.join(COMMANDS.fetch_add(1, Ordering::Relaxed).to_string());
        let mut command = Command::new(&self.program);
        command.args([HELPER, self.privilege.name(), "run"]).arg(work).arg(self.target_path(cwd));
        // Parents before children: a bind mounted over another one's mount point hides it.
        let mut binds: Vec<&(PathBuf, PathBuf)> = self.binds.iter().collect();
        binds.sort_by_key(|(_, target)| target.components().count());
        for (source, target) in binds {
            command.arg(source).arg(target);
        }
        command.arg("--").arg(program);
        command
    }
}

/// The helper's arguments: `HELPER root|user probe`, or `HELPER root|user run WORK CWD
/// [SOURCE TARGET]... -- PROGRAM [ARGS]...`.
struct HelperArgs {
    work: PathBuf,
    cwd: PathBuf,
    binds: Vec<(PathBuf, PathBuf)>,
    program: Vec<OsString>,
}

fn parse_helper(args: &[OsString]) -> Result<(Privilege, Option<HelperArgs>), String> {
    let privilege = match args.first().and_then(|a| a.to_str()) {
        Some("root") => Privilege::Root,
        Some("user") => Privilege::UserNamespace,
        _ => return Err("the privilege must be root or user".into()),
    };
    match args.get(1).and_then(|a| a.to_str()) {
        Some("probe") => return Ok((privilege, None)),
        Some("run") => {}
        _ => return Err("the mode must be probe or run".into()),
    }
    let (Some(work), Some(cwd)) = (args.get(2), args.get(3)) else { return Err("missing WORK and CWD".into()) };
    let rest = &args[4..];
    let separator = rest.iter().position(|a| a == "--").ok_or("missing --")?;
    let (pairs, program) = (&rest[..separator], &rest[separator + 1..]);
    if pairs.len() % 2 != 0 || program.is_empty() {
        return Err("binds come in SOURCE TARGET pairs, then -- PROGRAM".into());
    }
    let binds: Vec<(PathBuf, PathBuf)> =
        pairs.chunks(2).map(|pair| (PathBuf::from(&pair[0]), PathBuf::from(&pair[1]))).collect();
    if let Some((_, bad)) = binds.iter().find(|(_, target)| !is_plain_absolute(target)) {
        return Err(format!("mount point {} is not an absolute path without . or ..", bad.display()));
    }
    Ok((
        privilege,
        Some(HelperArgs { work: PathBuf::from(work), cwd: PathBuf::from(cwd), binds, program: program.to_vec() }),
    ))
}

/// The helper process (`xdkms __xdkms-sandbox ...`, argv after HELPER): enters a private mount
/// namespace, mounts the view, enters the working directory and executes the program. Returns
/// only on failure, with the exit status to use.
pub fn helper_main(args: &[OsString]) -> i32 {
    let (privilege, parsed) = match parse_helper(args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("xdkms sandbox: {message}");
            return 2;
        }
    };
    if let Err(e) = enter_namespace(privilege) {
        eprintln!("xdkms sandbox: cannot enter a mount namespace: {e}");
        return 125;
    }
    let Some(helper) = parsed else { return 0 };
    if let Err(e) = mount_view(&helper.work, &helper.binds) {
        eprintln!("xdkms sandbox: {e}");
        return 125;
    }
    if let Err(e) = std::env::set_current_dir(&helper.cwd) {
        eprintln!("xdkms sandbox: cannot enter {}: {e}", helper.cwd.display());
        return 125;
    }
    let error = Command::new(&helper.program[0]).args(&helper.program[1..]).exec();
    eprintln!("xdkms sandbox: cannot run {}: {error}", helper.program[0].to_string_lossy());
    127
}

/// Moves this process into a new mount namespace (and, without root, a user namespace in which
/// it is root), with every mount private so nothing mounted reaches the host.
#[allow(unsafe_code)]
fn enter_namespace(privilege: Privilege) -> std::io::Result<()> {
    let (uid, gid) = (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw());
    let flags = match privilege {
        Privilege::Root => UnshareFlags::NEWNS,
        Privilege::UserNamespace => UnshareFlags::NEWNS | UnshareFlags::NEWUSER,
    };
    // SAFETY: unshare_unsafe is unsafe only for CLONE_FILES, which is not asked for; the helper
    // calls this first thing, before it starts any thread (a user namespace needs that too).
    unsafe { rustix::thread::unshare_unsafe(flags) }?;
    if privilege == Privilege::UserNamespace {
        std::fs::write("/proc/self/setgroups", "deny")?;
        std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
        std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    }
    rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)?;
    Ok(())
}

/// Mounts the view: mount points missing on the host are made inside overlays of their deepest
/// existing ancestors (all before any bind: an overlay mounted later would hide the binds below
/// it; an ancestor inside another one's overlay needs none of its own), then each bind, parents
/// first.
fn mount_view(work: &Path, binds: &[(PathBuf, PathBuf)]) -> Result<(), String> {
    for (n, ancestor) in overlay_ancestors(binds).iter().enumerate() {
        let layers = work.join(format!("overlay{}", n + 1));
        let (upper, lower_work) = (layers.join("upper"), layers.join("work"));
        for dir in [&upper, &lower_work] {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let options =
            format!("lowerdir={},upperdir={},workdir={}", ancestor.display(), upper.display(), lower_work.display());
        let options = std::ffi::CString::new(options).map_err(|_| format!("a NUL byte in {}", ancestor.display()))?;
        rustix::mount::mount("overlay", ancestor, "overlay", MountFlags::empty(), Some(options.as_c_str()))
            .map_err(|e| format!("cannot mount an overlay on {}: {e}", ancestor.display()))?;
    }
    for (source, target) in binds {
        std::fs::create_dir_all(target).map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        rustix::mount::mount_bind(source, target)
            .map_err(|e| format!("cannot mount {} on {}: {e}", source.display(), target.display()))?;
    }
    Ok(())
}

/// The deepest existing ancestor (resolved) of every bind target missing on the host, shortest
/// first and without those inside another one.
fn overlay_ancestors(binds: &[(PathBuf, PathBuf)]) -> Vec<PathBuf> {
    let mut ancestors: Vec<PathBuf> = binds
        .iter()
        .filter(|(_, target)| !target.is_dir())
        .filter_map(|(_, target)| {
            let mut ancestor = target.as_path();
            while !ancestor.is_dir() {
                ancestor = ancestor.parent()?;
            }
            std::fs::canonicalize(ancestor).ok()
        })
        .collect();
    ancestors.sort_by(|a, b| a.as_os_str().len().cmp(&b.as_os_str().len()).then_with(|| a.cmp(b)));
    ancestors.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for ancestor in ancestors {
        if !kept.iter().any(|done| ancestor.starts_with(done)) {
            kept.push(ancestor);
        }
    }
    kept
}

/// True for an absolute path without `.` or `..` (what a bind target must be).
fn is_plain_absolute(path: &Path) -> bool {
    path.is_absolute() && path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_map_to_the_longest_mount() {
        let sandbox = Sandbox {
            binds: vec![
                (PathBuf::from("/r/usr/src"), PathBuf::from("/usr/src")),
                (PathBuf::from("/r/var/lib/dkms/m/1/.tmp/tree"), PathBuf::from("/var/lib/dkms")),
                (PathBuf::from("/r/var/lib/dkms"), PathBuf::from("/x")),
            ],
            work: PathBuf::from("/w"),
            privilege: Privilege::Root,
            program: PathBuf::from("/bin/xdkms"),
        };
        assert_eq!(sandbox.target_path(Path::new("/r/usr/src/m-1/dkms.conf")), Path::new("/usr/src/m-1/dkms.conf"));
        assert_eq!(
            sandbox.target_path(Path::new("/r/var/lib/dkms/m/1/.tmp/tree/m/1/build")),
            Path::new("/var/lib/dkms/m/1/build")
        );
        assert_eq!(sandbox.target_path(Path::new("/elsewhere")), Path::new("/elsewhere"));
        assert_eq!(sandbox.target_path(Path::new("/r/usr/src")).as_os_str(), "/usr/src");
    }
}
