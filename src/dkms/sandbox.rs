//! The target's paths for build commands. Inside a root, patch, make and the build scripts run in
//! a private mount namespace in which the root's source tree, module tree and the build's own
//! dkms tree are mounted where dkms.conf files and Makefiles spell them out (`/usr/src/...`,
//! `/lib/modules/$kernelver/build`, `/var/lib/dkms/$module/$version/build`), exactly as on a
//! target with the headers installed. The namespace lives as long as the command; nothing is
//! mounted on the host. A mount point missing on the host (no /lib/modules on a build server) is
//! created inside an overlay whose writable layer lies in the build's staging directory.
//!
//! Mount namespaces need root or unprivileged user namespaces (`unshare -r`). Without either,
//! commands run directly and only the kernel-directory make variables point into the root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Sets up the mounts given as arguments, then runs the command after `--`.
const SETUP: &str = r#"
set -e
work=$1; shift
n=0
while [ "$1" != -- ]; do
    source=$1 target=$2; shift 2
    if [ ! -d "$target" ]; then
        parent=$(readlink -f "${target%/*}")
        n=$((n + 1))
        mkdir -p "$work/overlay$n/upper" "$work/overlay$n/work"
        mount -t overlay overlay -o "lowerdir=$parent,upperdir=$work/overlay$n/upper,workdir=$work/overlay$n/work" "$parent"
        mkdir -p "$target"
    fi
    mount --bind "$source" "$target"
done
shift
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

/// Mounts for one build: `(host directory, path it appears at)`.
#[derive(Debug, Clone)]
pub struct Sandbox {
    binds: Vec<(PathBuf, PathBuf)>,
    work: PathBuf,
    flags: &'static [&'static str],
}

impl Sandbox {
    /// A sandbox with these mounts, or None when mount namespaces are not available.
    pub fn new(binds: Vec<(PathBuf, PathBuf)>, work: &Path) -> Option<Sandbox> {
        let flags = unshare_flags()?;
        Some(Sandbox { binds, work: work.to_path_buf(), flags })
    }

    /// A command running `program args...` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("unshare");
        command.args(self.flags).args(["bash", "-c", SETUP, "xdkms-sandbox"]).arg(&self.work);
        for (source, target) in &self.binds {
            command.arg(source).arg(target);
        }
        command.arg("--").arg(program);
        command
    }
}
