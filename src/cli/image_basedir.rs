//! Image files given as roots on the command line (`-b IMAGE` of depmod and modinfo, `--root
//! IMAGE` of `initramfs inject` and the DKMS commands): the parts each command reads, and for
//! all but inject, the command run again on the scratch root with the image's name replaced by
//! the scratch root's.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::exit::Exit;
use crate::image_root::{ImageRoot, Links, View};

/// The image named by `basedir`, opened with the parts `wanted` lists, and `args` with its name
/// replaced by the scratch root; None when `basedir` is not given or names a directory.
pub fn open(
    basedir: Option<&str>,
    args: &[String],
    wanted: &[String],
    links: Links,
) -> Result<Option<(View, Vec<String>)>, String> {
    let Some(image) = basedir else { return Ok(None) };
    let Some(root) = ImageRoot::open(std::path::Path::new(image)).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let view = root.materialize(wanted, links).map_err(|e| e.to_string())?;
    let scratch = view.dir().to_string_lossy().into_owned();
    let args = args.iter().map(|arg| replaced(arg, image, &scratch)).collect();
    Ok(Some((view, args)))
}

/// The image named by `root`, opened; None when it names a directory (or nothing).
pub fn open_image(root: &str) -> Result<Option<ImageRoot>, String> {
    ImageRoot::open(Path::new(root)).map_err(|e| e.to_string())
}

/// `args` with the image's name replaced by `view`'s scratch root.
pub(super) fn child_args(view: &View, image: &str, args: &[String]) -> Vec<String> {
    let scratch = view.dir().to_string_lossy().into_owned();
    args.iter().map(|arg| replaced(arg, image, &scratch)).collect()
}

/// The variable naming the process that runs a command on an image's parts.
const PARENT_VARIABLE: &str = "XDKMS_IMAGE_PARENT";

/// In the child [`run_on_view`] starts: go when the parent goes (killed, it holds the image and
/// the scratch root; the child's work would be for nothing).
pub fn follow_parent() {
    let Some(parent) = std::env::var(PARENT_VARIABLE).ok().and_then(|p| p.parse::<i32>().ok()) else { return };
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    // Gone before the signal was asked for: nothing to do.
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
        std::process::exit(Exit::Failed.code());
    }
}

/// Runs `program` (depmod or modinfo as argv[0] names it, or xdkms) again on the scratch root
/// with `args`, in a child process whose output is passed on with the scratch root's path shown
/// as the image's, so that messages name the image, not a directory that is gone when they are
/// read. Its exit status is passed on; killed by a signal, it failed.
pub fn run_on_view(program: &str, view: &View, args: &[String]) -> Exit {
    run_child(program, view, args, &[], None)
}

/// [`run_on_view`] with `environment` set for the child, and with `held`, its output kept
/// there (up to [`HOLD_LIMIT`]) instead of passed on.
pub(super) fn run_child(
    program: &str,
    view: &View,
    args: &[String],
    environment: &[(&str, String)],
    held: Option<&Mutex<Held>>,
) -> Exit {
    let scratch = view.dir().to_string_lossy().into_owned();
    let image = view.image().to_string_lossy().into_owned();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("{program}: FATAL: cannot run xdkms again on the image's parts: {e}");
            return Exit::Failed;
        }
    };
    let mut command = Command::new(exe);
    command
        .arg0(program)
        .args(args)
        .env(PARENT_VARIABLE, std::process::id().to_string())
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.envs(environment.iter().map(|(name, value)| (name, value)));
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("{program}: FATAL: cannot run xdkms again on the image's parts: {e}");
            return Exit::Failed;
        }
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    std::thread::scope(|scope| {
        if let Some(stderr) = stderr {
            scope.spawn(|| pass_on(stderr, Stream::Err, &scratch, &image, held));
        }
        if let Some(stdout) = stdout {
            pass_on(stdout, Stream::Out, &scratch, &image, held);
        }
    });
    match child.wait().map(|status| status.code()) {
        Ok(Some(0)) => Exit::Success,
        Ok(Some(code)) if code == Exit::WholeRootWanted.code() => Exit::WholeRootWanted,
        Ok(Some(code)) => Exit::Relayed(u8::try_from(code).unwrap_or(1)),
        _ => Exit::Failed,
    }
}

/// The standard stream a child's line was written to.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Out,
    Err,
}

/// Writes `line` to `stream` at once; false when it cannot be written (a closed pipe).
fn write_line(stream: Stream, line: &[u8]) -> bool {
    let written = match stream {
        Stream::Out => {
            let mut out = std::io::stdout().lock();
            out.write_all(line).and_then(|()| out.flush())
        }
        Stream::Err => std::io::stderr().lock().write_all(line),
    };
    written.is_ok()
}

/// Output held back: a run that may be started again shows only its last run's output.
#[derive(Debug, Default)]
pub(super) struct Held {
    lines: Vec<(Stream, Vec<u8>)>,
    bytes: usize,
    /// Past [`HOLD_LIMIT`]: what was held has been written and the rest is passed on as it
    /// comes (a run started again after that shows those lines twice).
    passing: bool,
}

/// Output held back at most, in bytes: far more than a run that builds nothing prints.
const HOLD_LIMIT: usize = 16 << 20;

impl Held {
    /// Writes what is held, in the order it came.
    pub(super) fn release(&mut self) {
        for (stream, line) in self.lines.drain(..) {
            write_line(stream, &line);
        }
        self.bytes = 0;
    }
}

/// Copies `from` to `to` line by line with every `scratch` replaced by `image`; with `held`,
/// into it instead while it has room.
fn pass_on(from: impl Read, to: Stream, scratch: &str, image: &str, held: Option<&Mutex<Held>>) {
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let shown = replace_bytes(&line, scratch.as_bytes(), image.as_bytes());
        if let Some(held) = held {
            let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
            if !held.passing && held.bytes + shown.len() <= HOLD_LIMIT {
                held.bytes += shown.len();
                held.lines.push((to, shown));
                continue;
            }
            if !held.passing {
                held.release();
                held.passing = true;
            }
        }
        // A closed pipe (`| head`) ends the copying, not the command.
        if !write_line(to, &shown) {
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
            break;
        }
    }
}

/// `line` with every `from` replaced by `to` (output may be any bytes: `modinfo -0`).
fn replace_bytes(line: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    let mut at = 0;
    while at < line.len() {
        if !from.is_empty() && line[at..].starts_with(from) {
            out.extend_from_slice(to);
            at += from.len();
        } else {
            out.push(line[at]);
            at += 1;
        }
    }
    out
}

/// `arg` with the image's name replaced: the whole word (`-b IMAGE`), or its end in an option
/// word (`-bIMAGE`, `--basedir=IMAGE`).
fn replaced(arg: &str, image: &str, scratch: &str) -> String {
    if arg == image {
        return scratch.to_string();
    }
    match arg.strip_suffix(image) {
        Some(option) if option.starts_with('-') => format!("{option}{scratch}"),
        _ => arg.to_string(),
    }
}

/// What depmod reads for kernel `version`: its module directory, the depmod.d directories,
/// System.map, and the root's kmod binaries (which tell its release).
pub fn depmod_parts(version: &str) -> Vec<String> {
    let mut parts: Vec<String> = vec![
        format!("lib/modules/{version}"),
        format!("usr/lib/modules/{version}"),
        format!("boot/System.map-{version}"),
    ];
    parts.extend(depmod_settings());
    parts
}

/// What depmod reads besides a kernel's modules and System.map: the depmod.d directories and
/// the root's kmod binaries (which tell its release).
fn depmod_settings() -> Vec<String> {
    let dirs = ["etc/depmod.d", "run/depmod.d", "usr/local/lib/depmod.d", "usr/lib/depmod.d", "lib/depmod.d"];
    let binaries = crate::kmod_release::CANDIDATES.iter().map(|c| c.trim_start_matches('/'));
    dirs.into_iter().chain(binaries).map(String::from).collect()
}

/// What `initramfs inject` reads: what depmod reads (it regenerates the image's indexes with
/// the root's kmod) and the firmware directory.
pub fn inject_parts(version: &str) -> Vec<String> {
    let mut parts = depmod_parts(version);
    parts.push("lib/firmware".to_string());
    parts
}

/// What the DKMS commands read in a root: the dkms tree, the module sources and kernel headers
/// (/usr/src), /etc/dkms, os-release, /boot (System.map), every kernel's modules (status and
/// depmod read them), and depmod's settings.
pub(super) fn dkms_parts() -> Vec<String> {
    let mut parts: Vec<String> = [
        "var/lib/dkms",
        "usr/src",
        "etc/dkms",
        "etc/os-release",
        "usr/lib/os-release",
        "boot",
        "lib/modules",
        "usr/lib/modules",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    parts.extend(depmod_settings());
    parts
}

/// What modinfo reads: the kernel's module directory (every kernel's when none is named).
pub fn modinfo_parts(version: Option<&str>) -> Vec<String> {
    match version {
        Some(version) => vec![format!("lib/modules/{version}"), format!("usr/lib/modules/{version}")],
        None => vec!["lib/modules".to_string(), "usr/lib/modules".to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_image_is_replaced() {
        let scratch = "/tmp/s";
        assert_eq!(replaced("root.tar", "root.tar", scratch), "/tmp/s");
        assert_eq!(replaced("-broot.tar", "root.tar", scratch), "-b/tmp/s");
        assert_eq!(replaced("--basedir=root.tar", "root.tar", scratch), "--basedir=/tmp/s");
        assert_eq!(replaced("6.1.0", "root.tar", scratch), "6.1.0");
        assert_eq!(replaced("xroot.tar", "root.tar", scratch), "xroot.tar");
    }
}
