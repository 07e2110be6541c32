//! Image files given as roots on the command line (`-b IMAGE` of depmod and modinfo, `--root
//! IMAGE` of `initramfs inject` and the DKMS commands): the parts each command reads, and for
//! all but inject, the command run again on the scratch root with the image's name replaced by
//! the scratch root's.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::exit::Exit;
use crate::image_root::{lexical_target, ImageRoot, Links, Selection, View};

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

/// The variable telling a child run that its root holds, of the kernels' headers, only the
/// files that tell their release and configuration.
const HEADERS_VARIABLE: &str = "XDKMS_IMAGE_HEADERS_LEFT_OUT";

/// In a child run of [`run_dkms`]: whether its root was extracted without the kernels' headers.
/// The variable goes, so that the programs the run starts do not see it: call this before any
/// thread starts.
pub fn take_headers_left_out() -> bool {
    let set = std::env::var_os(HEADERS_VARIABLE).is_some();
    std::env::remove_var(HEADERS_VARIABLE);
    set
}

/// Ends a child run of [`run_dkms`] that must build without the headers: its parent starts it
/// again with them (what it did so far is in the scratch root, which is dropped).
pub fn want_headers() -> ! {
    std::process::exit(Exit::HeadersWanted.code())
}

/// The DKMS command line `args` (the action first) run in a child process on `parts` of the
/// image `root`, named `image` on the command line: first with only the release and
/// configuration files of the kernels' headers (extracting a kernel's headers takes longer
/// than anything but a build needs them), its output held; when it must build, again on a new
/// extraction with the headers. With `whole_headers` (options naming paths in the headers),
/// that second run only. The view it last ran on and its exit status.
pub fn run_dkms(
    mut root: ImageRoot,
    image: &str,
    args: &[String],
    parts: &[String],
    whole_headers: bool,
) -> Result<(View, Exit), String> {
    if !whole_headers {
        let view = dkms_view(root, parts, Headers::ReleaseAndConfig)?;
        let held = Mutex::new(Held::default());
        let left_out = Some((HEADERS_VARIABLE, "1"));
        let exit = run_child("xdkms", &view, &child_args(&view, image, args), left_out, Some(&held));
        if exit != Exit::HeadersWanted {
            held.lock().unwrap_or_else(|e| e.into_inner()).release();
            return Ok((view, exit));
        }
        root = view.discard();
    }
    let view = dkms_view(root, parts, Headers::Whole)?;
    let exit = run_child("xdkms", &view, &child_args(&view, image, args), None, None);
    Ok((view, exit))
}

/// `args` with the image's name replaced by `view`'s scratch root.
fn child_args(view: &View, image: &str, args: &[String]) -> Vec<String> {
    let scratch = view.dir().to_string_lossy().into_owned();
    args.iter().map(|arg| replaced(arg, image, &scratch)).collect()
}

/// How much of the kernels' headers a view holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Headers {
    /// Only their release and configuration files.
    ReleaseAndConfig,
    Whole,
}

/// Where a DKMS command's module sources and kernel headers are (its other parts are
/// extracted first: the kernels' `build` links say which directories there are headers).
const SOURCE_TREE: &str = "usr/src";

/// `parts` of `root` extracted, what their symlinks point at too, with the kernels' headers as
/// `headers` says.
fn dkms_view(root: ImageRoot, parts: &[String], headers: Headers) -> Result<View, String> {
    let error = |e: crate::image_root::ImageError| e.to_string();
    let mut extraction = root.start_view().map_err(error)?;
    let (mut paths, others): (Vec<String>, Vec<String>) = parts.iter().cloned().partition(|p| p == SOURCE_TREE);
    extraction.add(Selection { paths: &others, except: &[] }, Links::Keep).map_err(error)?;
    let mut except = Vec::new();
    if headers == Headers::ReleaseAndConfig {
        for dir in header_dirs(extraction.dir()) {
            paths.extend(cross::kernel::RELEASE_AND_CONFIG_FILES.iter().map(|file| format!("{dir}/{file}")));
            except.push(dir);
        }
        // Debian's headers of a kernel include a -common directory no link names.
        except.push(format!("{SOURCE_TREE}/linux-headers-*"));
    }
    extraction.add(Selection { paths: &paths, except: &except }, Links::Follow).map_err(error)?;
    extraction.finish().map_err(error)
}

/// The kernels' headers directories of the root extracted at `dir`, root-relative: where the
/// `build` and `source` links of each kernel's module directory point.
fn header_dirs(dir: &Path) -> Vec<String> {
    let mut dirs = BTreeSet::new();
    for modules in ["lib/modules", "usr/lib/modules"] {
        // Through a symlink (lib -> usr/lib) the other one is the same directory; an absolute
        // one would lead out of the scratch root.
        if link_on_the_way(dir, modules) {
            continue;
        }
        let Ok(kernels) = std::fs::read_dir(dir.join(modules)) else { continue };
        for kernel in kernels.flatten() {
            if !kernel.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let parent = format!("{modules}/{}", kernel.file_name().to_string_lossy());
            for link in ["build", "source"] {
                let Ok(target) = std::fs::read_link(kernel.path().join(link)) else { continue };
                dirs.extend(lexical_target(&parent, &target.to_string_lossy()));
            }
        }
    }
    dirs.into_iter().collect()
}

/// Whether a component of root-relative `path` is a symlink in the root at `dir`.
fn link_on_the_way(dir: &Path, path: &str) -> bool {
    let mut at = dir.to_path_buf();
    path.split('/').any(|part| {
        at.push(part);
        std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink())
    })
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
    run_child(program, view, args, None, None)
}

/// [`run_on_view`] with `environment` set for the child, and with `held`, its output kept
/// there (up to [`HOLD_LIMIT`]) instead of passed on.
fn run_child(
    program: &str,
    view: &View,
    args: &[String],
    environment: Option<(&str, &str)>,
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
    if let Some((name, value)) = environment {
        command.env(name, value);
    }
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
        Ok(Some(code)) if code == Exit::HeadersWanted.code() => Exit::HeadersWanted,
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
struct Held {
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
    fn release(&mut self) {
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
pub fn dkms_parts() -> Vec<String> {
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
