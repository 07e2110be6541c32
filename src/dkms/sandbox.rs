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
//! writable layer lies in a work directory inside the root. Mount namespaces need root or
//! unprivileged user namespaces (`unshare -r`); without either, commands run directly with host
//! paths, and only the kernel-directory make variables point into the root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Sets up the mounts given as arguments, enters the working directory, runs the command.
const SETUP: &str = r#"
set -e
work=$1 cwd=$2; shift 2
sources=() targets=()
while [ "$1" != -- ]; do sources+=("$1"); targets+=("$2"); shift 2; done
shift
# Mount points missing on the host are made inside overlays of their deepest existing ancestors,
# all before any bind mount (an overlay mounted later would hide the binds below it), and an
# ancestor inside another one's overlay needs none of its own.
ancestors=() overlaid=()
for target in "${targets[@]}"; do
    [ -d "$target" ] && continue
    ancestor=${target%/*}
    while [ -n "$ancestor" ] && [ ! -d "$ancestor" ]; do ancestor=${ancestor%/*}; done
    ancestors+=("$(readlink -f "${ancestor:-/}")")
done
n=0
while read -r ancestor; do
    [ -n "$ancestor" ] || continue
    for done_ in "${overlaid[@]}"; do
        case $ancestor/ in "${done_%/}"/*) continue 2 ;; esac
    done
    n=$((n + 1))
    mkdir -p "$work/overlay$n/upper" "$work/overlay$n/work"
    mount -t overlay overlay \
        -o "lowerdir=$ancestor,upperdir=$work/overlay$n/upper,workdir=$work/overlay$n/work" "$ancestor"
    overlaid+=("$ancestor")
done < <(printf '%s\n' "${ancestors[@]}" | awk '{ print length($0) "\t" $0 }' | sort -t "$(printf '\t')" -k1,1n -k2,2 -u | cut -f2-)
for i in "${!targets[@]}"; do
    mkdir -p "${targets[$i]}"
    mount --bind "${sources[$i]}" "${targets[$i]}"
done
cd "$cwd"
exec "$@"
"#;

/// How this process can get a private mount namespace, probed once.
fn unshare_flags() -> Option<&'static [&'static str]> {
    static FLAGS: OnceLock<Option<&'static [&'static str]>> = OnceLock::new();
    *FLAGS.get_or_init(|| {
        let candidates: [&'static [&'static str]; 2] =
            [&["-m", "--propagation", "private"], &["-r", "-m", "--propagation", "private"]];
        candidates.into_iter().find(|flags| {
            Command::new("unshare")
                .args(*flags)
                .arg("true")
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
    flags: &'static [&'static str],
}

impl Sandbox {
    /// A sandbox with these mounts (overlay layers under `work`), or None when mount namespaces
    /// are not available.
    pub fn new(binds: Vec<(PathBuf, PathBuf)>, work: &Path) -> Option<Sandbox> {
        let flags = unshare_flags()?;
        Some(Sandbox { binds, work: work.to_path_buf(), flags })
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
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, cwd: &Path) -> Command {
        // Overlay layers cannot be shared by two mounts at once, and commands of one run may
        // overlap (parallel builds read confs): each command gets layers of its own.
        static COMMANDS: AtomicUsize = AtomicUsize::new(0);
        let work = self.work.join(COMMANDS.fetch_add(1, Ordering::Relaxed).to_string());
        let mut command = Command::new("unshare");
        command.args(self.flags).args(["bash", "-c", SETUP, "xdkms-sandbox"]).arg(work);
        command.arg(self.target_path(cwd));
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
            flags: &[],
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
