//! The command line: argh definitions, getopt-style argument normalization, dispatch to the
//! domain modules, and their outcomes as exit statuses (`dkms.rs`: the DKMS actions).
//!
//! kmod's tools parse with getopt_long, and build systems call them that way (`depmod -ae -F
//! System.map`, `-b$DIR`, `--basedir=DIR`). argh takes one option per word, so words are first
//! rewritten into that form using each command's getopt table; the meaning never changes.

pub mod dkms;
mod getopt;
mod image_basedir;
mod image_dkms;

use std::io::Write;
use std::path::PathBuf;

use argh::FromArgs;

use crate::depmod;
use crate::exit::Exit;
use crate::image_root::Links;
use getopt::Opt;

#[derive(FromArgs, Debug)]
/// xdkms: DKMS for image builds. Builds, installs and indexes out-of-tree kernel modules in a
/// sysroot, rootfs tree or initramfs. Invoked as `depmod`, it behaves as `xdkms depmod`. The DKMS
/// actions (add, build, install, uninstall, unbuild, remove, status, autoinstall, match, mktarball,
/// ldtarball, generate_mok,
/// kernel_postinst, kernel_prerm, kernel_preinst) take dkms's
/// options: `xdkms add --help`.
pub struct Xdkms {
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Initramfs(InitramfsArgs),
    Cache(CacheArgs),
}

#[derive(FromArgs, Debug)]
/// Look after a build cache (the directory `--cache` and XDKMS_CACHE name).
#[argh(subcommand, name = "cache")]
pub struct CacheArgs {
    #[argh(subcommand)]
    pub command: CacheCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum CacheCommand {
    Prune(PruneArgs),
}

#[derive(FromArgs, Debug)]
/// Remove the least recently used builds until the cache holds at most --max-size, and what
/// killed runs left half-written.
#[argh(subcommand, name = "prune")]
pub struct PruneArgs {
    /// the most the cache may hold, in bytes or with K, M, G, T
    #[argh(option)]
    pub max_size: String,
    /// the cache directory (default: $XDKMS_CACHE)
    #[argh(option)]
    pub cache: Option<PathBuf>,
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
    #[argh(option, default = "crate::inject::DEFAULT_MAX_UNPACKED.to_string()")]
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
    /// the root (a directory, or a tar, cpio, ext2/3/4, squashfs or disk image) whose lib/modules/VERSION and
    /// lib/firmware provide the modules
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
    /// output image (default: replace IMAGE), or - for standard output; with --in-root on a
    /// root image, where the changed root image goes (default: replace ROOT)
    #[argh(option, short = 'o')]
    pub output: Option<PathBuf>,
    /// the initramfs at this path inside ROOT (`/boot/initrd.img-VERSION`), in place of an
    /// IMAGE argument: edited there, inside a root directory or a root image
    #[argh(option)]
    pub in_root: Option<String>,
    /// write indexes as this kmod release does (default: ROOT's kmod, else 30)
    #[argh(option)]
    pub kmod_version: Option<u32>,
    /// the decompressors of that kmod build, `+ZSTD +XZ -ZLIB` (default: ROOT's kmod, else all)
    #[argh(option)]
    pub kmod_features: Option<String>,
    /// compression level (default: zstd 15, xz 6, gzip 9; zstd 3 when appending)
    #[argh(option)]
    pub level: Option<i32>,
    /// the most file data the image may unpack to, in bytes or with K, M, G, T (default 8G)
    #[argh(option, default = "crate::inject::DEFAULT_MAX_UNPACKED.to_string()")]
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

/// kmod modinfo's getopt table (the same from kmod 30 to 34).
const MODINFO_OPTIONS: &[Opt] = &[
    Opt::short('a', &["author"], false),
    Opt::short('d', &["description"], false),
    Opt::short('l', &["license"], false),
    Opt::short('p', &["parameters"], false),
    Opt::short('n', &["filename"], false),
    Opt::short('0', &["null"], false),
    Opt::short('m', &["modname"], false),
    Opt::short('F', &["field"], true),
    Opt::short('k', &["set-version"], true),
    Opt::short('b', &["basedir"], true),
    Opt::short('V', &["version"], false),
    Opt::short('h', &["help"], false),
];

/// kmod modinfo's help text.
const MODINFO_HELP: &str = "Usage:
\t{} [options] <modulename|filename> [args]
Options:
\t-a, --author                Print only 'author'
\t-d, --description           Print only 'description'
\t-l, --license               Print only 'license'
\t-p, --parameters            Print only 'parm'
\t-n, --filename              Print only 'filename'
\t-0, --null                  Use \\0 instead of \\n
\t-m, --modname               Handle argument as module name instead of alias or filename
\t-F, --field=FIELD           Print only provided FIELD
\t-k, --set-version=VERSION   Use VERSION instead of `uname -r`
\t-b, --basedir=DIR           Use DIR as filesystem root for /lib/modules
\t-V, --version               Show version
\t-h, --help                  Show this help
";

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
    /// write indexes as this kmod release does: 30 (also 31, 32), 33 (adds modules.weakdep) or
    /// 34 (parent-first .bin layout, first modules.order line wins); default: BASEDIR's kmod, else 30
    #[argh(option)]
    pub kmod_version: Option<u32>,
    /// the decompressors of that kmod build (`+ZSTD +XZ -ZLIB`); default: BASEDIR's kmod, else all
    #[argh(option)]
    pub kmod_features: Option<String>,
    /// kmod 31 and later (-o): write the files below this directory instead of BASEDIR
    #[argh(option)]
    pub outdir: Option<PathBuf>,
    /// kmod 34 (-m): the module directory below BASEDIR (default /lib/modules)
    #[argh(option)]
    pub moduledir: Option<String>,
    /// kernel version, then optional module files (absolute paths) to index alone
    #[argh(positional)]
    pub args: Vec<String>,
}

/// kmod depmod's getopt table as release `kmod` has it (kmod 31 added `-o`; kmod 34 dropped
/// the deprecated `-u -q -r -m` and made `-m` the module directory), plus xdkms's own options.
fn depmod_options(kmod: u32) -> Vec<Opt> {
    let mut table = vec![
        Opt::short('a', &["all"], false),
        Opt::short('A', &["quick"], false),
        Opt::short('b', &["basedir"], true),
        Opt::short('C', &["config"], true),
        Opt::short('E', &["symvers"], true),
        Opt::short('F', &["filesyms"], true),
        Opt::short('e', &["errsyms"], false),
        Opt::short('v', &["verbose"], false),
        Opt::short('n', &["show", "dry-run"], false),
        Opt::short('P', &["symbol-prefix"], true),
        Opt::short('w', &["warn"], false),
        Opt::short('V', &["version"], false),
        Opt::short('h', &["help"], false),
        Opt::long(None, &["kmod-version"], true, "kmod-version"),
        Opt::long(None, &["kmod-features"], true, "kmod-features"),
    ];
    if kmod >= 31 {
        table.push(Opt::long(Some('o'), &["outdir"], true, "outdir"));
    }
    if kmod >= 34 {
        table.push(Opt::long(Some('m'), &["moduledir"], true, "moduledir"));
    } else {
        table.extend([
            Opt::short('u', &["unresolved-error"], false),
            Opt::short('q', &["quiet"], false),
            Opt::short('r', &["root"], false),
            Opt::short('m', &["map"], false),
        ]);
    }
    table
}

/// kmod depmod's help text as release `kmod` prints it, then xdkms's own options.
fn depmod_help(program: &str, kmod: u32) -> String {
    let distribution = match kmod {
        34.. => {
            "\t-b, --basedir=DIR    Root path (default: /).
\t-m, --moduledir=DIR  Module directory (default: /lib/modules).
\t-o, --outdir=DIR     Output root path (default: same as <basedir>).
"
        }
        31..=33 => {
            "\t-b, --basedir=DIR    Use an image of a module tree.
\t-o, --outdir=DIR     Output directory for generated files.
"
        }
        _ => "\t-b, --basedir=DIR    Use an image of a module tree.\n",
    };
    format!(
        "Usage:
\t{program} -[aA] [options] [forced_version]

If no arguments (except options) are given, \"depmod -a\" is assumed

depmod will output a dependency list suitable for the modprobe utility.

Options:
\t-a, --all            Probe all modules
\t-A, --quick          Only does the work if there's a new module
\t-e, --errsyms        Report not supplied symbols
\t-n, --show           Write the dependency file on stdout only
\t-P, --symbol-prefix  Architecture symbol prefix
\t-C, --config=PATH    Read configuration from PATH
\t-v, --verbose        Enable verbose mode
\t-w, --warn           Warn on duplicates
\t-V, --version        show version
\t-h, --help           show this help

The following options are useful for people managing distributions:
{distribution}\t-F, --filesyms=FILE  Use the file instead of the
\t                     current kernel symbols.
\t-E, --symvers=FILE   Use Module.symvers file to check
\t                     symbol versions.

xdkms (this help is kmod {kmod}'s; by default xdkms follows the kmod of the base directory):
\t-b IMAGE             The base directory may be a tar image (plain or compressed);
\t                     the indexes are written into it.
\t--kmod-version=N     Behave and write indexes as kmod release N does (30 to 34).
\t--kmod-features=STR  The decompressors of that kmod build, as `kmod --version`
\t                     prints them (e.g. \"+ZSTD +XZ -ZLIB\"); modules in other
\t                     formats are not indexed.
"
    )
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
  add, build, install, uninstall, unbuild, remove, status, autoinstall, match, mktarball,
  ldtarball, generate_mok,
  kernel_postinst, kernel_prerm, kernel_preinst (dkms 3.4's kernel package hooks, one -k each)
  plan, build-one, collect, initramfs-inject (a run as a job graph for make, ninja or a CI
  matrix, its build jobs run anywhere, their outputs installed, initramfs images updated;
  README \"Build plans\")
Build cache: `--cache DIR` on the DKMS commands; `xdkms cache prune --max-size SIZE`.
kmod commands (kmod's getopt command line; `xdkms depmod --help`):
  depmod            generate modules.dep and the .bin indexes, byte-identical to kmod's
  modinfo           show what kmod's modinfo shows for module files, names or aliases
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
    // glibc names the program in its messages as argv[0] has it: the symlink's path, or the
    // command's name under xdkms.
    let kmod_program = |name: &str| if invoked_as == name { program.clone() } else { name.to_string() };
    match command_words.first().map(String::as_str) {
        Some("depmod") => return depmod_main(&kmod_program("depmod"), rest),
        Some("modinfo") => return modinfo_main(&kmod_program("modinfo"), rest),
        _ => {}
    }
    let mut words: Vec<&str> = command_words.iter().map(String::as_str).collect();
    words.extend(rest.iter().map(String::as_str));
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
        Command::Initramfs(args) => match run_initramfs(args) {
            Ok(()) => Exit::Success,
            Err(e) => {
                eprintln!("xdkms initramfs: error: {e:#}");
                Exit::Failed
            }
        },
        Command::Cache(CacheArgs { command: CacheCommand::Prune(args) }) => match run_prune(&args) {
            Ok(()) => Exit::Success,
            Err(e) => {
                eprintln!("xdkms cache prune: error: {e:#}");
                Exit::Failed
            }
        },
    }
}

/// `cache prune`: the cache cut down to --max-size, what it kept and removed printed.
fn run_prune(args: &PruneArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let max = crate::initramfs_cmd::parse_size(&args.max_size)?;
    let dir = match args
        .cache
        .clone()
        .or_else(|| std::env::var_os("XDKMS_CACHE").filter(|v| !v.is_empty()).map(PathBuf::from))
    {
        Some(dir) => dir,
        None => anyhow::bail!("no cache named: give --cache DIR or set XDKMS_CACHE"),
    };
    if !dir.is_dir() {
        anyhow::bail!("{}: no such cache directory", dir.display());
    }
    let store = crate::build_cache::Store::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    let pruned = store.prune(max).with_context(|| format!("pruning {}", dir.display()))?;
    println!(
        "{}: kept {} builds ({} bytes), removed {} ({} bytes)",
        dir.display(),
        pruned.kept_entries,
        pruned.kept_bytes,
        pruned.removed_entries,
        pruned.removed_bytes
    );
    Ok(())
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
        InitramfsCommand::Inject(a) => run_inject(a),
    }
}

/// `initramfs inject`: ROOT may be a root directory or an image file, of which only the parts
/// inject reads are extracted; they are written back only when the initramfs is one of them
/// (`--in-root`). Messages name the image, not the scratch root.
fn run_inject(a: InjectArgs) -> anyhow::Result<()> {
    let mut wanted = image_basedir::inject_parts(&a.kernel);
    wanted.extend(a.in_root.iter().map(|p| p.trim_start_matches('/').to_string()));
    let view = match crate::image_root::ImageRoot::open(&a.root)? {
        Some(image) => Some(image.materialize(&wanted, Links::Keep)?),
        None => None,
    };
    let root = view.as_ref().map_or_else(|| a.root.clone(), |v| v.dir().to_path_buf());
    let shown = |text: String| match &view {
        Some(view) => text.replace(&*view.dir().to_string_lossy(), &view.image().to_string_lossy()),
        None => text,
    };
    let (image, items) = inject_operands(&a, &root).map_err(|e| anyhow::anyhow!(shown(format!("{e:#}"))))?;
    // With --in-root on an image, -o names where the root image goes, not the initramfs.
    let root_output = a.output.clone().filter(|_| view.is_some() && a.in_root.is_some());
    let output = if root_output.is_some() { None } else { a.output.clone() };
    let options = inject_options(&a, image, root, output, items)?;
    let report = crate::inject::run(&options).map_err(|e| anyhow::anyhow!(shown(format!("{e:#}"))))?;
    for warning in &report.warnings {
        eprintln!("xdkms initramfs: warning: {}", shown(warning.clone()));
    }
    if let (Some(view), Some(_)) = (view, &a.in_root) {
        view.commit_to(root_output.as_deref())?;
    }
    eprintln!("xdkms initramfs: added {} modules and {} firmware files", report.modules.len(), report.firmware.len());
    Ok(())
}

/// The initramfs to edit and the items to add: the first positional and the rest, or with
/// `--in-root`, that path resolved inside `root` and every positional.
fn inject_operands(a: &InjectArgs, root: &std::path::Path) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let mut positional = a.args.iter().cloned();
    let image = match &a.in_root {
        Some(inside) => {
            let sysroot = cross::Sysroot::new(root)?;
            let host = sysroot.resolve(inside)?;
            if !host.is_file() {
                anyhow::bail!("--in-root {inside}: no such file in {}", root.display());
            }
            host
        }
        None => PathBuf::from(positional.next().ok_or_else(|| anyhow::anyhow!("missing IMAGE"))?),
    };
    let items: Vec<String> = positional.collect();
    if items.is_empty() {
        anyhow::bail!("nothing to inject: name modules, aliases or .ko files after IMAGE");
    }
    Ok((image, items))
}

/// The inject run `a` asks for, on `image` with the modules of `root`.
fn inject_options(
    a: &InjectArgs,
    image: PathBuf,
    root: PathBuf,
    output: Option<PathBuf>,
    items: Vec<String>,
) -> anyhow::Result<crate::inject::Options> {
    use crate::initramfs_cmd::{parse_compress, parse_size};
    let mode = match a.mode.as_str() {
        "rewrite" => crate::inject::Mode::Rewrite,
        "append" => crate::inject::Mode::Append,
        other => anyhow::bail!("--mode {other:?}: use rewrite or append"),
    };
    let kmod = crate::kmod_release::resolve(Some(&root), a.kmod_version, a.kmod_features.as_deref())
        .map_err(|e| anyhow::anyhow!("--kmod-features: {e}"))?;
    Ok(crate::inject::Options {
        image,
        root,
        version: a.kernel.clone(),
        mode,
        compress: parse_compress(&a.compress)?,
        output,
        items,
        kmod,
        level: a.level,
        max_unpacked: parse_size(&a.max_unpacked)?,
    })
}

/// The words before `--`: where getopt's rewrite puts every option.
fn options_part(words: &[String]) -> impl Iterator<Item = &String> {
    words.iter().take_while(|w| *w != "--")
}

/// Parses a rewritten command line with argh, as the subcommand `name`.
fn parse_rewritten<T: FromArgs>(name: &str, words: &[String]) -> Result<T, Exit> {
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    T::from_args(&[name], &refs).map_err(|early| {
        eprintln!("{}", early.output.trim_end());
        if early.status.is_ok() {
            Exit::Success
        } else {
            Exit::Failed
        }
    })
}

/// `depmod ARGS`: getopt as the target's kmod release has it, then the run.
fn depmod_main(program: &str, args: &[String]) -> Exit {
    image_basedir::follow_parent();
    let words = getopt::skim(args, &depmod_options(33));
    let version = words.iter().skip_while(|w| *w != "--").nth(1);
    let parts = version.map(|v| image_basedir::depmod_parts(v)).unwrap_or_default();
    match image_basedir::open(option_value(&words, "-b").as_deref(), args, &parts, Links::Keep) {
        Ok(Some((view, args))) => {
            let exit = image_basedir::run_on_view(program, &view, &args);
            finish_image(program, view, exit)
        }
        Ok(None) => depmod_on(program, args),
        Err(message) => {
            eprintln!("{program}: FATAL: {message}");
            Exit::Failed
        }
    }
}

/// After a command on an image's parts: its changes written into the image when it succeeded.
fn finish_image(program: &str, view: crate::image_root::View, exit: Exit) -> Exit {
    if exit != Exit::Success {
        return exit;
    }
    match view.commit() {
        Ok(_) => exit,
        Err(e) => {
            eprintln!("{program}: FATAL: {e}");
            Exit::Failed
        }
    }
}

/// The last value given to `option` in skimmed words.
fn option_value(words: &[String], option: &str) -> Option<String> {
    let options: Vec<&String> = options_part(words).collect();
    options.windows(2).filter(|pair| pair[0] == option).map(|pair| pair[1].clone()).next_back()
}

/// depmod on a root directory.
fn depmod_on(program: &str, args: &[String]) -> Exit {
    let outcome = depmod_release(program, args).and_then(|release| {
        let words = getopt::rewrite(program, args, &depmod_options(release.version))?;
        Ok((release, words))
    });
    let (release, words) = match outcome {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("{message}");
            return Exit::Failed;
        }
    };
    if options_part(&words).any(|w| w == "--help") {
        print!("{}", depmod_help(short_name(program), release.version));
        return Exit::Success;
    }
    match parse_rewritten::<DepmodArgs>("depmod", &words) {
        Ok(parsed) => run_depmod(parsed, release),
        Err(exit) => exit,
    }
}

/// The kmod build a depmod command line asks for: `--kmod-version` and `--kmod-features`, else
/// the base directory's kmod, else the default. Read before the real parse, since the option
/// table itself depends on the release (`-m` means two things).
fn depmod_release(program: &str, args: &[String]) -> Result<crate::kmod_release::KmodRelease, String> {
    let words = getopt::skim(args, &depmod_options(33));
    let value_of = |option: &str| option_value(&words, option);
    let version = value_of("--kmod-version")
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| format!("{program}: --kmod-version {v:?}: give a kmod release number, e.g. 30 or 34"))
        })
        .transpose()?;
    let features = value_of("--kmod-features");
    let basedir = value_of("-b").map(|dir| crate::fsio::absolute(PathBuf::from(dir)));
    crate::kmod_release::resolve(basedir.as_deref(), version, features.as_deref())
        .map_err(|e| format!("{program}: --kmod-features: {e}"))
}

/// `modinfo ARGS`: kmod's getopt table, then the run.
fn modinfo_main(program: &str, args: &[String]) -> Exit {
    image_basedir::follow_parent();
    let words = getopt::skim(args, MODINFO_OPTIONS);
    let parts = image_basedir::modinfo_parts(option_value(&words, "-k").as_deref());
    match image_basedir::open(option_value(&words, "-b").as_deref(), args, &parts, Links::Keep) {
        // modinfo changes nothing: the view goes, the image stays as it was.
        Ok(Some((view, args))) => image_basedir::run_on_view(program, &view, &args),
        Ok(None) => modinfo_on(program, args),
        Err(message) => {
            eprintln!("modinfo: ERROR: {message}");
            Exit::Failed
        }
    }
}

/// modinfo on a root directory (or none).
fn modinfo_on(program: &str, args: &[String]) -> Exit {
    let words = match getopt::rewrite(program, args, MODINFO_OPTIONS) {
        Ok(words) => words,
        Err(message) => {
            eprintln!("{message}");
            return Exit::Failed;
        }
    };
    if options_part(&words).any(|w| w == "--help") {
        print!("{}", MODINFO_HELP.replace("{}", short_name(program)));
        return Exit::Success;
    }
    match parse_rewritten::<ModinfoArgs>("modinfo", &words) {
        Ok(parsed) => run_modinfo(parsed),
        Err(exit) => exit,
    }
}

/// The program name as kmod prints it (program_invocation_short_name).
fn short_name(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
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

fn run_depmod(args: DepmodArgs, kmod: crate::kmod_release::KmodRelease) -> Exit {
    if args.version {
        println!(
            "xdkms {} (depmod compatible with kmod {}: {})",
            env!("CARGO_PKG_VERSION"),
            kmod.version,
            kmod.compressions
        );
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
        kmod,
        outdir: args.outdir.map(crate::fsio::absolute),
        moduledir: args.moduledir,
        outside: None,
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
    fn depmod_tables_follow_the_release() {
        let parse = |kmod, s: &str| getopt::rewrite("depmod", &words(s), &depmod_options(kmod));
        assert_eq!(
            parse(30, "-ae -FSystem.map -b /r --config=/c 6.1 -- -x"),
            Ok(words("-a -e -F System.map -b /r -C /c -- 6.1 -x"))
        );
        assert_eq!(parse(30, "-o /out 6.1"), Err("depmod: invalid option -- 'o'".to_string()));
        assert_eq!(parse(31, "-o /out -m 6.1"), Ok(words("--outdir /out -m -- 6.1")));
        assert_eq!(parse(34, "-m /usr/lib/modules 6.1"), Ok(words("--moduledir /usr/lib/modules -- 6.1")));
        assert_eq!(parse(34, "-u 6.1"), Err("depmod: invalid option -- 'u'".to_string()));
        assert_eq!(
            parse(30, "--show --basedir /r --kmod-version=34 -h"),
            Ok(words("-n -b /r --kmod-version 34 --help"))
        );
    }

    #[test]
    fn version_numbers() {
        assert!(is_version_number("6.1.0-56-amd64"));
        assert!(!is_version_number("6"));
        assert!(!is_version_number("abc.1"));
    }
}
