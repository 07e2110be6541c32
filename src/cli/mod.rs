//! The command line: argh definitions, getopt-style argument normalization, dispatch to the
//! domain modules, and their outcomes as exit statuses (`dkms.rs`: the DKMS actions).
//!
//! kmod's tools parse with getopt_long, and build systems call them that way (`depmod -ae -F
//! System.map`, `-b$DIR`, `--basedir=DIR`). argh takes one option per word, so words are first
//! rewritten into that form using each command's getopt table; the meaning never changes.

pub mod dkms;

use std::io::Write;
use std::path::PathBuf;

use argh::FromArgs;

use crate::depmod;
use crate::exit::Exit;

#[derive(FromArgs, Debug)]
/// xdkms: DKMS for image builds. Builds, installs and indexes out-of-tree kernel modules in a
/// sysroot, rootfs tree or initramfs. Invoked as `depmod`, it behaves as `xdkms depmod`. The DKMS
/// actions (add, build, install, uninstall, unbuild, remove, status, autoinstall, generate_mok) take dkms's
/// options: `xdkms add --help`.
pub struct Xdkms {
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Depmod(DepmodArgs),
    Modinfo(ModinfoArgs),
    Initramfs(InitramfsArgs),
}

#[derive(FromArgs, Debug)]
/// Read, create and inject initramfs images: every layout the kernel unpacks (concatenated
/// uncompressed and gzip, xz, zstd, lz4, lzma or bzip2 members).
#[argh(subcommand, name = "initramfs")]
pub struct InitramfsArgs {
    #[argh(subcommand)]
    pub command: InitramfsCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum InitramfsCommand {
    List(ListArgs),
    Extract(ExtractArgs),
    Create(CreateArgs),
    Inject(InjectArgs),
}

#[derive(FromArgs, Debug)]
/// List every member of every segment, in order.
#[argh(subcommand, name = "list")]
pub struct ListArgs {
    /// show each segment's offset, length, compression and member count
    #[argh(switch)]
    pub segments: bool,
    /// the image
    #[argh(positional)]
    pub image: PathBuf,
}

/// How much file data extract and inject take from an image unless told otherwise: well above
/// any initramfs a kernel boots (it holds the whole unpacked tree in memory), well below what a
/// decompression bomb of a few KiB would fill a disk with.
const DEFAULT_MAX_UNPACKED: &str = "8G";

#[derive(FromArgs, Debug)]
/// Extract what the kernel would unpack into a new directory (device nodes are skipped).
#[argh(subcommand, name = "extract")]
pub struct ExtractArgs {
    /// the image
    #[argh(positional)]
    pub image: PathBuf,
    /// the directory to create
    #[argh(positional)]
    pub dir: PathBuf,
    /// the most file data to write, in bytes or with K, M, G, T (default 8G)
    #[argh(option, default = "String::from(DEFAULT_MAX_UNPACKED)")]
    pub max_unpacked: String,
}

#[derive(FromArgs, Debug)]
/// Create an image from a directory: sorted, owned by 0:0, mtime SOURCE_DATE_EPOCH (else 0).
#[argh(subcommand, name = "create")]
pub struct CreateArgs {
    /// the directory tree to archive
    #[argh(positional)]
    pub dir: PathBuf,
    /// output image, or - for standard output
    #[argh(option, short = 'o')]
    pub output: PathBuf,
    /// none, gzip, xz, zstd, lz4, bzip2 or lzma (default none)
    #[argh(option, default = "String::from(\"none\")")]
    pub compress: String,
}

#[derive(FromArgs, Debug)]
/// Add modules (names, aliases, modaliases or .ko files) with their dependencies, softdeps and
/// firmware from ROOT to an image, and regenerate its module indexes.
#[argh(subcommand, name = "inject")]
pub struct InjectArgs {
    /// the root whose lib/modules/VERSION and lib/firmware provide the modules
    #[argh(option)]
    pub root: PathBuf,
    /// kernel version
    #[argh(option, short = 'k')]
    pub kernel: String,
    /// rewrite (default: recompress the main segment) or append (add one segment)
    #[argh(option, default = "String::from(\"rewrite\")")]
    pub mode: String,
    /// keep (default), none, gzip, xz, zstd, lz4, bzip2 or lzma
    #[argh(option, default = "String::from(\"keep\")")]
    pub compress: String,
    /// output image (default: replace IMAGE), or - for standard output
    #[argh(option, short = 'o')]
    pub output: Option<PathBuf>,
    /// index layout of this kmod release (default 30)
    #[argh(option, default = "30")]
    pub kmod_version: u32,
    /// compression level (default: zstd 15, xz 6, gzip 9; zstd 3 when appending)
    #[argh(option)]
    pub level: Option<i32>,
    /// the most file data the image may unpack to, in bytes or with K, M, G, T (default 8G)
    #[argh(option, default = "String::from(DEFAULT_MAX_UNPACKED)")]
    pub max_unpacked: String,
    /// the image, then the modules to add
    #[argh(positional)]
    pub args: Vec<String>,
}

#[derive(FromArgs, Debug)]
/// Show what kmod's modinfo shows for a module file, name or alias, looked up through the
/// indexes in BASEDIR/lib/modules/VERSION.
#[argh(subcommand, name = "modinfo")]
pub struct ModinfoArgs {
    /// print only 'author'
    #[argh(switch, short = 'a')]
    pub author: bool,
    /// print only 'description'
    #[argh(switch, short = 'd')]
    pub description: bool,
    /// print only 'license'
    #[argh(switch, short = 'l')]
    pub license: bool,
    /// print only 'parm'
    #[argh(switch, short = 'p')]
    pub parameters: bool,
    /// print only 'filename'
    #[argh(switch, short = 'n')]
    pub filename: bool,
    /// end each line with NUL instead of newline
    #[argh(switch, short = '0')]
    pub null: bool,
    /// treat arguments as module names, not aliases
    #[argh(switch, short = 'm')]
    pub modname: bool,
    /// print only this field
    #[argh(option, short = 'F')]
    pub field: Option<String>,
    /// kernel version (default: the only kernel in BASEDIR, or the running one)
    #[argh(option, short = 'k')]
    pub set_version: Option<String>,
    /// root directory of the target system
    #[argh(option, short = 'b')]
    pub basedir: Option<PathBuf>,
    /// print the version
    #[argh(switch, short = 'V')]
    pub version: bool,
    /// module files, names or aliases
    #[argh(positional)]
    pub modules: Vec<String>,
}

/// kmod modinfo's getopt table.
const MODINFO_SHORT_WITH_ARG: &str = "Fkb";
const MODINFO_LONG: &[(&str, char)] = &[
    ("author", 'a'),
    ("description", 'd'),
    ("license", 'l'),
    ("parameters", 'p'),
    ("filename", 'n'),
    ("null", '0'),
    ("modname", 'm'),
    ("field", 'F'),
    ("set-version", 'k'),
    ("basedir", 'b'),
    ("version", 'V'),
    ("help", 'h'),
];

#[derive(FromArgs, Debug)]
/// Generate modules.dep and the module index files, byte-identical to kmod's depmod. With -b,
/// the module directory, depmod.d and external directories are all read inside BASEDIR.
#[argh(subcommand, name = "depmod")]
pub struct DepmodArgs {
    /// probe all modules (the default when no module files are named)
    #[argh(switch, short = 'a')]
    pub all: bool,
    /// only run if some module is newer than modules.dep
    #[argh(switch, short = 'A')]
    pub quick: bool,
    /// root directory of the target system; everything is read inside it
    #[argh(option, short = 'b')]
    pub basedir: Option<PathBuf>,
    /// configuration file or directory (host path), replacing the target's depmod.d; repeatable
    #[argh(option, short = 'C')]
    pub config: Vec<PathBuf>,
    /// the kernel's Module.symvers, for symbol version checks
    #[argh(option, short = 'E')]
    pub symvers: Option<PathBuf>,
    /// the kernel's System.map, to report unknown symbols
    #[argh(option, short = 'F')]
    pub filesyms: Option<PathBuf>,
    /// report symbols no module or the kernel provides (needs -E or -F)
    #[argh(switch, short = 'e')]
    pub errsyms: bool,
    /// write the text files to stdout instead of the module directory
    #[argh(switch, short = 'n')]
    pub dry_run: bool,
    /// architecture symbol prefix character
    #[argh(option, short = 'P')]
    pub symbol_prefix: Option<String>,
    /// print each dependency found
    #[argh(switch, short = 'v')]
    pub verbose: bool,
    /// warn about duplicate index entries
    #[argh(switch, short = 'w')]
    pub warn: bool,
    /// accepted and ignored, as by kmod 30 (-u, -q, -r, -m)
    #[argh(switch, short = 'u')]
    pub unresolved_error: bool,
    /// accepted and ignored, as by kmod 30
    #[argh(switch, short = 'q')]
    pub quiet: bool,
    /// accepted and ignored, as by kmod 30
    #[argh(switch, short = 'r')]
    pub root: bool,
    /// accepted and ignored, as by kmod 30
    #[argh(switch, short = 'm')]
    pub map: bool,
    /// print the version
    #[argh(switch, short = 'V')]
    pub version: bool,
    /// write indexes as this kmod release does: 30 (default; also 31, 32), 33 (adds
    /// modules.weakdep) or 34 (parent-first .bin layout, first modules.order line wins)
    #[argh(option, default = "30")]
    pub kmod_version: u32,
    /// kernel version, then optional module files (absolute paths) to index alone
    #[argh(positional)]
    pub args: Vec<String>,
}

/// kmod depmod's getopt table: short options taking an argument, and long names.
const DEPMOD_SHORT_WITH_ARG: &str = "bCEFP";
const DEPMOD_LONG: &[(&str, char)] = &[
    ("all", 'a'),
    ("quick", 'A'),
    ("basedir", 'b'),
    ("config", 'C'),
    ("symvers", 'E'),
    ("filesyms", 'F'),
    ("errsyms", 'e'),
    ("unresolved-error", 'u'),
    ("quiet", 'q'),
    ("root", 'r'),
    ("verbose", 'v'),
    ("show", 'n'),
    ("dry-run", 'n'),
    ("symbol-prefix", 'P'),
    ("warn", 'w'),
    ("map", 'm'),
    ("version", 'V'),
    ("help", 'h'),
];

/// Rewrites getopt-style words into one option per word: `-ae` → `-a -e`, `-bDIR` → `-b DIR`,
/// `--basedir=DIR` → `-b DIR`. Long options unknown to the table are passed on as they are
/// (argh's own, such as `--kmod-version`). Everything after `--` is left alone.
pub fn normalize_getopt(args: &[String], short_with_arg: &str, long: &[(&str, char)]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if word == "--" {
            out.push(word.clone());
            out.extend(words.by_ref().cloned());
            break;
        }
        if let Some(long_word) = word.strip_prefix("--") {
            let (name, value) = match long_word.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long_word, None),
            };
            match long.iter().find(|(n, _)| *n == name) {
                Some(&(_, 'h')) => out.push("--help".into()),
                Some(&(_, short)) => {
                    out.push(format!("-{short}"));
                    if let Some(v) = value {
                        out.push(v.to_string());
                    }
                }
                None => {
                    out.push(format!("--{name}"));
                    if let Some(v) = value {
                        out.push(v.to_string());
                    }
                }
            }
            continue;
        }
        let Some(cluster) = word.strip_prefix('-').filter(|c| !c.is_empty()) else {
            out.push(word.clone());
            continue;
        };
        for (at, short) in cluster.char_indices() {
            if short == 'h' {
                out.push("--help".into());
                continue;
            }
            out.push(format!("-{short}"));
            if short_with_arg.contains(short) {
                let rest = &cluster[at + short.len_utf8()..];
                if !rest.is_empty() {
                    out.push(rest.to_string());
                } else if let Some(next) = words.next() {
                    out.push(next.clone());
                }
                break;
            }
        }
    }
    out
}

/// What `--version` prints: dkms prints `dkms-<version>`; xdkms names itself the same way and
/// the dkms and kmod releases whose behaviour it reproduces.
pub fn version_line() -> String {
    format!("xdkms-{} (dkms-3.0.10, kmod version 30)", env!("CARGO_PKG_VERSION"))
}

/// The commands argh does not list (they have command lines of their own), for the top-level
/// help.
const MORE_COMMANDS: &str = "\
DKMS commands (dkms 3.0.10's command line; `xdkms ACTION --help` lists the options):
  add, build, install, uninstall, unbuild, remove, status, autoinstall, generate_mok
Applets (also run through a symlink of that name):
  sign-file         the kernel's scripts/sign-file: `[-dpk] hash key x509 module [dest]`,
                    `-s raw-sig hash x509 module [dest]`, signing in-process
Version: `xdkms --version` or `-V`.";

/// Parses and runs a command line; returns the process exit status.
pub fn main_with_args(argv: Vec<String>) -> Exit {
    let program = argv.first().cloned().unwrap_or_else(|| "xdkms".into());
    let invoked_as = program.rsplit('/').next().unwrap_or("xdkms").to_string();
    // `depmod` or `modinfo` as a symlink to xdkms acts as that command, as busybox applets do.
    let (command_words, rest): (Vec<String>, &[String]) = if invoked_as == "depmod" || invoked_as == "modinfo" {
        (vec![invoked_as.clone()], argv.get(1..).unwrap_or(&[]))
    } else {
        match argv.get(1) {
            Some(cmd) if !cmd.starts_with('-') => (vec![cmd.clone()], argv.get(2..).unwrap_or(&[])),
            _ => (Vec::new(), argv.get(1..).unwrap_or(&[])),
        }
    };
    // Invoked as `sign-file` (a symlink, for kernel builds to point at) or `xdkms sign-file`:
    // sign-file's own command line, which argh cannot express (`-dp`, options anywhere).
    if invoked_as == "sign-file" {
        return crate::sign_file::main(argv.get(1..).unwrap_or(&[]));
    }
    if command_words.first().is_some_and(|c| c == "sign-file") {
        return crate::sign_file::main(rest);
    }
    if command_words.is_empty() && rest.first().is_some_and(|a| a == "--version" || a == "-V") {
        println!("{}", version_line());
        return Exit::Success;
    }
    if let Some(action) = command_words.first().filter(|a| dkms::ACTIONS.contains(&a.as_str())) {
        let words: Vec<&str> = rest.iter().map(String::as_str).collect();
        return dkms::main(action, &words);
    }
    let normalized = match command_words.first().map(String::as_str) {
        Some("depmod") => normalize_getopt(rest, DEPMOD_SHORT_WITH_ARG, DEPMOD_LONG),
        Some("modinfo") => normalize_getopt(rest, MODINFO_SHORT_WITH_ARG, MODINFO_LONG),
        _ => rest.to_vec(),
    };
    let mut words: Vec<&str> = command_words.iter().map(String::as_str).collect();
    words.extend(normalized.iter().map(String::as_str));
    let parsed = match Xdkms::from_args(&[invoked_as.as_str()], &words) {
        Ok(parsed) => parsed,
        Err(early) => {
            return match early.status {
                Ok(()) if command_words.is_empty() || command_words[0] == "help" => {
                    println!("{}\n\n{MORE_COMMANDS}", early.output.trim_end());
                    Exit::Success
                }
                Ok(()) => {
                    println!("{}", early.output);
                    Exit::Success
                }
                Err(()) => {
                    eprintln!("{}", early.output);
                    Exit::Usage
                }
            };
        }
    };
    match parsed.command {
        Command::Depmod(args) => run_depmod(args),
        Command::Modinfo(args) => run_modinfo(args),
        Command::Initramfs(args) => match run_initramfs(args) {
            Ok(()) => Exit::Success,
            Err(e) => {
                eprintln!("xdkms initramfs: error: {e:#}");
                Exit::Failed
            }
        },
    }
}

fn run_initramfs(args: InitramfsArgs) -> anyhow::Result<()> {
    use crate::initramfs_cmd::{create, extract, list, parse_compress, parse_size};
    match args.command {
        InitramfsCommand::List(a) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            list(&a.image, a.segments, &mut out)?;
            match out.flush() {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
        InitramfsCommand::Extract(a) => {
            let skipped = extract(&a.image, &a.dir, parse_size(&a.max_unpacked)?)?;
            if skipped > 0 {
                eprintln!("xdkms initramfs: {skipped} device nodes, FIFOs or sockets were not extracted");
            }
            Ok(())
        }
        InitramfsCommand::Create(a) => {
            let codec = parse_compress(&a.compress)?
                .ok_or_else(|| anyhow::anyhow!("--compress keep needs an image to keep the codec of"))?;
            create(&a.dir, &a.output, codec)
        }
        InitramfsCommand::Inject(a) => {
            let mode = match a.mode.as_str() {
                "rewrite" => crate::inject::Mode::Rewrite,
                "append" => crate::inject::Mode::Append,
                other => anyhow::bail!("--mode {other:?}: use rewrite or append"),
            };
            let mut positional = a.args.into_iter();
            let image = positional.next().ok_or_else(|| anyhow::anyhow!("missing IMAGE"))?;
            let items: Vec<String> = positional.collect();
            if items.is_empty() {
                anyhow::bail!("nothing to inject: name modules, aliases or .ko files after IMAGE");
            }
            let options = crate::inject::Options {
                image: PathBuf::from(image),
                root: a.root,
                version: a.kernel,
                mode,
                compress: parse_compress(&a.compress)?,
                output: a.output,
                items,
                kmod_version: a.kmod_version,
                level: a.level,
                max_unpacked: parse_size(&a.max_unpacked)?,
            };
            let report = crate::inject::run(&options)?;
            for warning in &report.warnings {
                eprintln!("xdkms initramfs: warning: {warning}");
            }
            eprintln!(
                "xdkms initramfs: added {} modules and {} firmware files",
                report.modules.len(),
                report.firmware.len()
            );
            Ok(())
        }
    }
}

fn run_modinfo(args: ModinfoArgs) -> Exit {
    if args.version {
        println!("xdkms {} (modinfo compatible with kmod 30)", env!("CARGO_PKG_VERSION"));
        return Exit::Success;
    }
    let shortcut = [
        (args.author, "author"),
        (args.description, "description"),
        (args.license, "license"),
        (args.parameters, "parm"),
        (args.filename, "filename"),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, field)| field.to_string())
    .next_back();
    if args.modules.is_empty() {
        eprintln!("modinfo: ERROR: missing module or filename.");
        return Exit::Usage;
    }
    let options = crate::modinfo::Options {
        basedir: args.basedir.map(crate::fsio::absolute),
        version: args.set_version,
        field: shortcut.or(args.field),
        null: args.null,
        modname_only: args.modname,
        targets: args.modules,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = crate::modinfo::run(&options, &mut out).and_then(|ok| out.flush().map(|()| ok));
    match result {
        Ok(true) => Exit::Success,
        Ok(false) => Exit::Failed,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Success,
        Err(e) => {
            eprintln!("modinfo: ERROR: {e}");
            Exit::Failed
        }
    }
}

fn run_depmod(args: DepmodArgs) -> Exit {
    if args.version {
        println!("xdkms {} (depmod compatible with kmod 30)", env!("CARGO_PKG_VERSION"));
        return Exit::Success;
    }
    for (flag, set) in [('u', args.unresolved_error), ('q', args.quiet), ('r', args.root), ('m', args.map)] {
        if set {
            eprintln!("depmod: WARNING: Ignored deprecated option -{flag}");
        }
    }
    let sym_prefix = match args.symbol_prefix.as_deref() {
        None => None,
        Some(p) if p.len() == 1 => p.bytes().next(),
        Some(_) => {
            eprintln!("depmod: FATAL: -P only takes a single char");
            return Exit::Usage;
        }
    };
    let mut positional = args.args.into_iter();
    let Some(version) = positional.next() else {
        eprintln!(
            "depmod: FATAL: no kernel version given; xdkms never defaults to the build host's `uname -r`. \
             Pass the target kernel's version, e.g. `depmod -b ROOT 6.1.0-56-amd64`."
        );
        return Exit::Usage;
    };
    if !is_version_number(&version) {
        eprintln!("depmod: ERROR: Bad version passed {version}");
        return Exit::Usage;
    }
    let options = depmod::Options {
        basedir: args.basedir.map(crate::fsio::absolute),
        version,
        config_paths: args.config,
        symvers: args.symvers,
        system_map: args.filesyms,
        print_unknown: args.errsyms,
        dry_run: args.dry_run,
        quick: args.quick,
        verbose: args.verbose,
        warn_dups: args.warn,
        sym_prefix,
        files: positional.map(PathBuf::from).collect(),
        kmod_version: args.kmod_version,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = depmod::run(&options, &mut out);
    let flushed = out.flush();
    match (result, flushed) {
        (Ok(_), Ok(())) => Exit::Success,
        (Ok(_), Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Success,
        (Ok(_), Err(e)) => {
            eprintln!("depmod: FATAL: could not write to stdout: {e}");
            Exit::Failed
        }
        (Err(e), _) => {
            match e.downcast_ref::<depmod::Failure>() {
                Some(failure) => failure.errors.iter().for_each(|line| eprintln!("depmod: ERROR: {line}")),
                None => eprintln!("depmod: FATAL: {e:#}"),
            }
            Exit::Failed
        }
    }
}

/// kmod's test: the version must start with `%u.%u`.
fn is_version_number(version: &str) -> bool {
    let mut parts = version.splitn(2, '.');
    let major = parts.next().unwrap_or("");
    let rest = parts.next().unwrap_or("");
    let digits = |s: &str| s.trim_start().trim_start_matches('+').chars().take_while(char::is_ascii_digit).count() > 0;
    digits(major) && digits(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn getopt_clusters_and_attached_arguments() {
        let got = normalize_getopt(
            &words("-ae -FSystem.map -b /r --config=/c 6.1 -- -x"),
            DEPMOD_SHORT_WITH_ARG,
            DEPMOD_LONG,
        );
        assert_eq!(got, words("-a -e -F System.map -b /r -C /c 6.1 -- -x"));
    }

    #[test]
    fn getopt_long_aliases() {
        let got =
            normalize_getopt(&words("--show --basedir /r --kmod-version=34 -h"), DEPMOD_SHORT_WITH_ARG, DEPMOD_LONG);
        assert_eq!(got, words("-n -b /r --kmod-version 34 --help"));
    }

    #[test]
    fn version_numbers() {
        assert!(is_version_number("6.1.0-56-amd64"));
        assert!(!is_version_number("6"));
        assert!(!is_version_number("abc.1"));
    }
}
