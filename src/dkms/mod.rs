//! The DKMS commands (add, build, install, uninstall, unbuild, remove, status, autoinstall) over
//! dkms's own tree layout, on the host or, with `--root`, entirely inside a target root.

pub mod build;
pub mod conf;
pub mod install;
pub mod parallel;
pub mod sandbox;
pub mod sign;
pub mod target;
pub mod tree;

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use argh::FromArgs;
use cross::Sysroot;

use conf::{Conf, Derive, RawConf, Scope};
use sandbox::Sandbox;

/// The actions, as dkms spells them.
pub const ACTIONS: &[&str] = &["add", "build", "install", "uninstall", "unbuild", "remove", "status", "autoinstall"];

/// dkms's exit statuses that callers test for (the rest are plain numbers at their call sites).
pub mod exit {
    /// Module and version not given; -k and -a counts differ.
    pub const USAGE: i32 = 1;
    /// Already added; not added.
    pub const TREE_STATE: i32 = 3;
    /// The dkms.conf cannot be read.
    pub const NO_CONF: i32 = 4;
    /// The dkms.conf is invalid.
    pub const BAD_CONF: i32 = 8;
    /// make failed.
    pub const MAKE_FAILED: i32 = 10;
    /// autoinstall: one or more modules failed.
    pub const AUTOINSTALL_FAILED: i32 = 11;
    /// The arch asked for is unknown, or is not the kernel's (dkms: "arch unknown").
    pub const ARCH: i32 = 12;
    /// Kernel headers missing (dkms 3.1.5 and later; 3.0.10 used 1).
    pub const NO_HEADERS: i32 = 21;
    /// xdkms: no compiler for the target kernel on PATH.
    pub const NO_TOOLCHAIN: i32 = 22;
    /// xdkms: the headers' kbuild host programs are missing or built for another machine.
    pub const HOST_TOOLS: i32 = 23;
    /// BUILD_EXCLUSIVE rules exclude this kernel.
    pub const EXCLUDED: i32 = 77;
}

#[derive(FromArgs, Debug, Default)]
/// DKMS commands, compatible with dkms 3.x: `xdkms ACTION [options] [module/version | source dir
/// | path/dkms.conf]`. With --root, the dkms tree, sources, modules, /etc/dkms, os-release and
/// System.map are all read and written inside ROOT, and the kernels default to every kernel in
/// ROOT that has headers (never the build host's).
pub struct Args {
    /// module name, or module/version
    #[argh(option, short = 'm')]
    pub module: Option<String>,
    /// module version
    #[argh(option, short = 'v', long = "module-version")]
    pub version: Option<String>,
    /// kernel version, or kernel/arch (repeatable)
    #[argh(option, short = 'k')]
    pub kernelver: Vec<String>,
    /// arch label (repeatable, paired with -k)
    #[argh(option, short = 'a')]
    pub arch: Vec<String>,
    /// every kernel the module is built for (remove, unbuild, uninstall)
    #[argh(switch)]
    pub all: bool,
    /// redo what is already done; skip version checks
    #[argh(switch)]
    pub force: bool,
    /// skip only the comparison with modules already in the kernel
    #[argh(switch)]
    pub force_version_override: bool,
    /// the dkms.conf to use instead of the module's own
    #[argh(option, short = 'c')]
    pub conf: Option<PathBuf>,
    /// kernel build directory, for every kernel
    #[argh(option)]
    pub kernelsourcedir: Option<PathBuf>,
    /// the kernel's build directory on the build host, read instead of ROOT's headers (Buildroot's
    /// LINUX_DIR, Yocto's STAGING_KERNEL_BUILDDIR); never written
    #[argh(option)]
    pub kernel_build: Option<PathBuf>,
    /// kernel configuration file (default: the headers' .config)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// dkms tree (default /var/lib/dkms)
    #[argh(option)]
    pub dkmstree: Option<PathBuf>,
    /// source tree (default /usr/src)
    #[argh(option)]
    pub sourcetree: Option<PathBuf>,
    /// module install tree (default /lib/modules)
    #[argh(option)]
    pub installtree: Option<PathBuf>,
    /// the target root: every path above is inside it, and nothing outside it is written
    #[argh(option)]
    pub root: Option<PathBuf>,
    /// make jobs (default: the number of CPUs)
    #[argh(option, short = 'j')]
    pub jobs: Option<String>,
    /// print nothing
    #[argh(switch, short = 'q')]
    pub quiet: bool,
    /// print the commands run
    #[argh(switch)]
    pub verbose: bool,
    /// do not regenerate the kernel's module indexes on install and uninstall
    #[argh(switch)]
    pub no_depmod: bool,
    /// NAME=value, applied after dkms.conf (repeatable)
    #[argh(option)]
    pub directive: Vec<String>,
    /// the target's CROSS_COMPILE prefix (default: $CROSS_COMPILE, else found on PATH from the
    /// kernel's architecture; none for the build host's own architecture)
    #[argh(option)]
    pub cross_compile: Option<String>,
    /// module compression: none, gz, xz or zst (default: the kernel's CONFIG_MODULE_COMPRESS_*,
    /// else the suffix of its modules)
    #[argh(option)]
    pub compress: Option<String>,
    /// status: print JSON
    #[argh(switch)]
    pub json: bool,
    /// signing key, a host path or pkcs11: URI (default: framework.conf's mok_signing_key, else
    /// /var/lib/dkms/mok.key)
    #[argh(option)]
    pub mok_signing_key: Option<PathBuf>,
    /// signing certificate, a host path (default: framework.conf's mok_certificate, else
    /// /var/lib/dkms/mok.pub)
    #[argh(option)]
    pub mok_certificate: Option<PathBuf>,
    /// the signing tool, a host path (default: framework.conf's sign_file, else the kernel's
    /// scripts/sign-file)
    #[argh(option)]
    pub sign_file: Option<PathBuf>,
    /// print the version
    #[argh(switch, short = 'V', long = "version")]
    pub version_flag: bool,
    /// the action, then module/version, a source directory or a dkms.conf path
    #[argh(positional)]
    pub words: Vec<String>,
}

/// A command that stops with dkms's exit status and `Error!` lines.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub lines: Vec<String>,
}

impl Failure {
    pub fn new(code: i32, lines: impl IntoIterator<Item = impl Into<String>>) -> Failure {
        Failure { code, lines: lines.into_iter().map(Into::into).collect() }
    }

    /// An unexpected I/O or process failure (exit 1), with what was being done.
    pub fn io(what: impl fmt::Display, error: impl fmt::Display) -> Failure {
        Failure::new(1, [format!("{what}: {error}")])
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

/// One (kernel, arch) pair the action applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub kernel: String,
    pub arch: String,
}

/// Signing settings given on the command line.
#[derive(Debug, Clone, Default)]
pub struct SigningArgs {
    pub key: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub sign_file: Option<PathBuf>,
}

/// How dkms.conf and build commands see the filesystem.
pub struct View<'a> {
    /// The dkms tree (host path): the real one, or a build's own.
    pub build_tree: &'a Path,
    /// The mount namespace giving the target's paths, inside a root when available.
    pub sandbox: Option<&'a Sandbox>,
    /// Without a sandbox: a host-usable view of the kernel headers, if one was made.
    pub headers_view: Option<&'a Path>,
}

/// dkms's path variables, as a dkms.conf or a make command sees them.
#[derive(Debug, Clone)]
pub struct ScopePaths {
    pub kernel_source_dir: PathBuf,
    pub kernel_config: PathBuf,
    pub dkms_tree: PathBuf,
    pub source_tree: PathBuf,
    pub install_tree: PathBuf,
}

/// Everything a run needs: the trees as host paths, the root, the settings.
pub struct Ctx {
    pub root: Sysroot,
    pub dkms_tree: PathBuf,
    pub source_tree: PathBuf,
    /// The source tree as the target sees it (what `source` symlinks point at).
    pub source_tree_target: PathBuf,
    /// The dkms tree and the install tree as the target sees them.
    pub dkms_tree_target: PathBuf,
    pub install_tree_target: PathBuf,
    pub install_tree: PathBuf,
    pub etc_dkms: PathBuf,
    pub distro: String,
    pub addon_modules_dir: Option<String>,
    pub jobs: String,
    pub force: bool,
    pub force_version_override: bool,
    pub verbose: bool,
    pub quiet: bool,
    pub no_depmod: bool,
    pub conf_override: Option<PathBuf>,
    pub kernel_source_override: Option<PathBuf>,
    pub kernel_config_override: Option<PathBuf>,
    pub directives: Vec<(String, String)>,
    pub compress: Option<String>,
    /// --cross-compile.
    pub cross_compile: Option<String>,
    /// framework.conf and framework.conf.d/*.conf (host paths; they may not exist).
    pub framework_files: Vec<PathBuf>,
    /// Signing settings from the command line (host paths).
    pub signing: SigningArgs,
    /// The jobserver all of a run's makes share (`-j N`), when N is a number.
    pub jobserver: Option<jobserver::Client>,
    /// The jobserver is a parent make's (this process holds one implicit job slot).
    pub jobserver_inherited: bool,
    /// The sandbox over the real dkms tree (for confs read outside builds), made on first use.
    tree_sandbox: OnceLock<Option<Sandbox>>,
    /// Kernels whose indexes must be regenerated before the run ends.
    pub depmod_pending: Mutex<BTreeSet<String>>,
}

impl Ctx {
    /// True when the run works inside a root other than `/`.
    pub fn image_mode(&self) -> bool {
        !self.root.is_host()
    }

    /// A sandbox giving the target's paths inside a root, with `dkms_tree` (host path) as the
    /// dkms tree and overlay layers under `work`; None on the host or without mount namespaces.
    /// For a kernel, the directories its headers link to outside those trees (Debian's
    /// `scripts -> ../../lib/linux-kbuild-6.1/scripts`) are mounted too.
    pub fn sandbox(&self, dkms_tree: &Path, work: &Path, kernel: Option<&str>) -> Option<Sandbox> {
        if !self.image_mode() {
            return None;
        }
        let mut binds = vec![
            (self.source_tree.clone(), self.source_tree_target.clone()),
            (self.install_tree.clone(), self.install_tree_target.clone()),
            (dkms_tree.to_path_buf(), self.dkms_tree_target.clone()),
        ];
        let boot = self.root.resolve("/boot").ok().filter(|boot| self.root.is_dir(boot));
        if let Some(boot) = boot {
            binds.push((boot, PathBuf::from("/boot")));
        }
        if let Some(kernel) = kernel {
            // The headers and the source tree's directories (Debian's -common headers) link to
            // kbuild tools elsewhere: mount each such target at its own path too.
            let mut dirs = vec![self.install_tree_target.join(kernel).join("build")];
            dirs.push(self.source_tree_target.clone());
            for name in tree::sorted_dirs(&self.root, &self.source_tree) {
                dirs.push(self.source_tree_target.join(name));
            }
            for dir in dirs {
                let Ok(host_dir) = self.root.resolve(&dir) else { continue };
                for entry in self.root.read_dir(&host_dir).unwrap_or_default() {
                    if entry.kind != cross::sysroot::EntryKind::Symlink {
                        continue;
                    }
                    let Ok(inner) = self.root.resolve_target_path(dir.join(&entry.name)) else { continue };
                    let covered = binds.iter().any(|(_, target)| inner.starts_with(target));
                    if covered || inner == Path::new("/") {
                        continue;
                    }
                    if let Ok(host) = self.root.resolve(&inner) {
                        if host.is_dir() {
                            binds.push((host, inner));
                        }
                    }
                }
            }
        }
        Sandbox::new(binds, work)
    }

    /// The sandbox over the real dkms tree, for confs read and scripts run outside builds.
    pub fn tree_sandbox(&self) -> Option<&Sandbox> {
        self.tree_sandbox
            .get_or_init(|| {
                self.sandbox(&self.dkms_tree, &self.dkms_tree.join(format!(".xdkms-work-{}", std::process::id())), None)
            })
            .as_ref()
    }

    /// Notes that a kernel's indexes must be regenerated before the run ends.
    pub fn pending_depmod(&self, kernel: &str) {
        self.depmod_pending.lock().unwrap_or_else(|e| e.into_inner()).insert(kernel.to_string());
    }

    /// The kernels noted by [`Ctx::pending_depmod`], forgetting them.
    pub fn take_pending_depmods(&self) -> Vec<String> {
        std::mem::take(&mut *self.depmod_pending.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect()
    }

    /// Prints a progress line (nothing with -q).
    pub fn say(&self, line: impl fmt::Display) {
        if !self.quiet {
            print_out(format_args!("{line}"));
        }
    }

    /// Prints a warning in dkms's form.
    pub fn warn(&self, line: impl fmt::Display) {
        if !self.quiet {
            print_err(format_args!("Warning: {line}"));
        }
    }

    /// A host path below the root with its symlinks resolved inside the root, so that what is
    /// written there stays in the root (unchanged on the host).
    pub fn in_root(&self, host: &Path) -> Result<PathBuf> {
        self.root
            .resolve_host(host)
            .map_err(|e| Failure::io(format!("resolving {} inside the root", host.display()), e))
    }

    /// `<dkms_tree>/<m>/<v>`.
    pub fn version_dir(&self, module: &str, version: &str) -> PathBuf {
        self.dkms_tree.join(module).join(version)
    }

    /// The dkms.conf read for a module: `-c`, else `<dkms_tree>/<m>/<v>/source/dkms.conf`.
    pub fn conf_path(&self, module: &str, version: &str) -> Result<PathBuf> {
        match &self.conf_override {
            Some(path) => Ok(path.clone()),
            None => Ok(self.source_dir(module, version)?.join("dkms.conf")),
        }
    }

    /// The module's source directory on the host: the `source` symlink followed inside the root.
    pub fn source_dir(&self, module: &str, version: &str) -> Result<PathBuf> {
        self.in_root(&self.version_dir(module, version).join("source"))
    }

    /// The kernel's build directory as found (before any view is made): --kernel-build (a
    /// directory of the build host), else `<install_tree>/<kernel>/build` resolved inside the root.
    pub fn kernel_source_dir(&self, kernel: &str) -> Result<PathBuf> {
        match &self.kernel_source_override {
            Some(dir) => Ok(dir.clone()),
            None => self.in_root(&self.install_tree.join(kernel).join("build")),
        }
    }

    /// The kernel's configuration file: --config, else `<build>/.config`.
    pub fn kernel_config_path(&self, kernel: &str) -> Result<PathBuf> {
        match &self.kernel_config_override {
            Some(config) => Ok(config.clone()),
            None => Ok(self.kernel_source_dir(kernel)?.join(".config")),
        }
    }

    /// The kernel's configuration text; empty when it cannot be read (the checks that need it
    /// say so themselves).
    pub fn kernel_config_text(&self, kernel: &str) -> String {
        self.kernel_config_path(kernel).ok().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// Metadata of a file that is the `-c` conf (a build host file) or inside the root.
    pub fn file_metadata(&self, path: &Path) -> std::io::Result<std::fs::Metadata> {
        if self.conf_override.as_deref() == Some(path) {
            std::fs::metadata(path)
        } else {
            self.root.metadata(path)
        }
    }

    /// The dkms.conf followed by its /etc/dkms overrides, in dkms's order; bash reads the
    /// overrides through paths whose links are resolved inside the root.
    fn conf_files(&self, conf: &Path, module: &str, version: &str, target: &Target) -> Result<Vec<PathBuf>> {
        let k = &target.kernel;
        let a = &target.arch;
        let overrides = [
            format!("{module}.conf"),
            format!("{module}-{version}.conf"),
            format!("{module}-{version}-{k}.conf"),
            format!("{module}-{version}-{k}-{a}.conf"),
        ];
        let mut files = vec![conf.to_path_buf()];
        for name in overrides {
            files.push(self.in_root(&self.etc_dkms.join(name))?);
        }
        Ok(files)
    }

    /// dkms's `read_conf_or_die`: evaluates the conf for one kernel and checks it. `build_tree`
    /// is the dkms tree the build will see (an isolated one while building).
    pub fn read_conf(
        &self,
        module: &str,
        version: &str,
        target: &Target,
        conf_path: &Path,
        build_tree: &Path,
        strict: bool,
    ) -> Result<Conf> {
        let view = View { build_tree, sandbox: self.tree_sandbox(), headers_view: None };
        self.read_conf_in(module, version, target, conf_path, &view, strict)
    }

    /// The paths dkms.conf and build commands see for one kernel: the target's paths inside a
    /// sandbox, else host paths (`$kernel_source_dir` naming a headers view when there is one).
    pub fn scope_paths(&self, kernel: &str, view: &View) -> Result<ScopePaths> {
        Ok(match view.sandbox {
            Some(sandbox) => {
                let kernel_source_dir = match &self.kernel_source_override {
                    Some(dir) => sandbox.target_path(dir),
                    None => self.install_tree_target.join(kernel).join("build"),
                };
                ScopePaths {
                    kernel_config: match &self.kernel_config_override {
                        Some(config) => sandbox.target_path(config),
                        None => kernel_source_dir.join(".config"),
                    },
                    kernel_source_dir,
                    dkms_tree: sandbox.target_path(view.build_tree),
                    source_tree: sandbox.target_path(&self.source_tree),
                    install_tree: sandbox.target_path(&self.install_tree),
                }
            }
            None => ScopePaths {
                kernel_source_dir: match view.headers_view {
                    Some(dir) => dir.to_path_buf(),
                    None => self.kernel_source_dir(kernel)?,
                },
                kernel_config: self.kernel_config_path(kernel)?,
                dkms_tree: view.build_tree.to_path_buf(),
                source_tree: self.source_tree.clone(),
                install_tree: self.install_tree.clone(),
            },
        })
    }

    /// [`Ctx::read_conf`] in a given view of the filesystem.
    pub fn read_conf_in(
        &self,
        module: &str,
        version: &str,
        target: &Target,
        conf_path: &Path,
        view: &View,
        strict: bool,
    ) -> Result<Conf> {
        if !conf_path.is_file() {
            return Err(Failure::new(
                exit::NO_CONF,
                [
                    "Could not locate dkms.conf file.".to_string(),
                    format!("File: {} does not exist.", conf_path.display()),
                ],
            ));
        }
        let paths = self.scope_paths(&target.kernel, view)?;
        // Read on the host side: the configuration's host path.
        let config = self.kernel_config_path(&target.kernel).ok().and_then(|p| std::fs::read_to_string(p).ok());
        let scope = Scope {
            kernelver: target.kernel.clone(),
            arch: target.arch.clone(),
            kernel_source_dir: paths.kernel_source_dir.clone(),
            kernel_config: paths.kernel_config.clone(),
            dkms_tree: paths.dkms_tree.clone(),
            source_tree: paths.source_tree.clone(),
            install_tree: paths.install_tree.clone(),
            module: module.to_string(),
            module_version: version.to_string(),
            parallel_jobs: self.jobs.clone(),
            running_distribution: self.distro.clone(),
        };
        let files = self.conf_files(conf_path, module, version, target)?;
        let mut raw: RawConf = conf::evaluate(&files, &scope, conf::WHITELIST, view.sandbox)
            .map_err(|e| Failure::io(format!("reading {}", conf_path.display()), e))?;
        for (name, file) in &raw.deprecated {
            if !self.quiet {
                print_err(format_args!("Deprecated feature: {name} ({})", file.display()));
            }
        }
        for (name, value) in &self.directives {
            raw.set_scalar(name, value);
            self.say(format!("DIRECTIVE: {name}=\"{value}\""));
        }
        let derive = Derive {
            kernelver: &target.kernel,
            arch: &target.arch,
            distro: &self.distro,
            addon_modules_dir: self.addon_modules_dir.as_deref(),
            kernel_source_dir: &paths.kernel_source_dir,
            kernel_config: config.as_deref(),
            build_dkms_tree: &paths.dkms_tree,
            module,
            module_version: version,
            strict,
        };
        Conf::from_raw(raw, &derive).map_err(|errors| {
            if !self.quiet {
                errors.iter().for_each(|e| print_err(format_args!("{e}")));
            }
            Failure::new(
                exit::BAD_CONF,
                [
                    "Bad conf file.".to_string(),
                    format!("File: {} does not represent a valid dkms.conf file.", conf_path.display()),
                ],
            )
        })
    }

    /// Reads the module's conf for one kernel with the real dkms tree in scope.
    pub fn module_conf(&self, module: &str, version: &str, target: &Target, strict: bool) -> Result<Conf> {
        let path = self.conf_path(module, version)?;
        self.read_conf(module, version, target, &path, &self.dkms_tree, strict)
    }

    /// The `uname -m` label for a kernel: from its configuration, else the build host's.
    pub fn default_arch(&self, kernel: &str) -> String {
        match cross::kernel::uname_machine(&self.kernel_config_text(kernel)) {
            Some(machine) => machine.to_string(),
            None => host_machine(),
        }
    }
}

/// Writes a line to stdout; a closed pipe (`xdkms status | head`) is not an error.
pub fn print_out(text: impl fmt::Display) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Writes a line to stderr, ignoring write errors.
pub fn print_err(text: impl fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Writes to stderr without a newline.
fn print_err_partial(text: &str) {
    let _ = write!(std::io::stderr().lock(), "{text}");
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if let Some(Some(_)) = self.tree_sandbox.get() {
            let _ = self.root.remove_all(&self.dkms_tree.join(format!(".xdkms-work-{}", std::process::id())));
        }
    }
}

/// The build host's `uname -m`.
pub fn host_machine() -> String {
    match std::env::consts::ARCH {
        "x86" => "i686".to_string(),
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le".to_string(),
        other => other.to_string(),
    }
}

/// The running kernel's release (`uname -r`).
fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The distribution token dkms derives from os-release: `ubuntu` for Ubuntu, else ID_LIKE, else
/// ID; `unknown` without an os-release file.
fn distro_from_os_release(text: &str) -> String {
    let value = |key: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
            .next_back()
    };
    let id = value("ID").unwrap_or_default();
    if id == "ubuntu" {
        return id;
    }
    match value("ID_LIKE") {
        Some(like) if !like.is_empty() => like,
        _ if !id.is_empty() => id,
        _ => "unknown".to_string(),
    }
}

/// Runs a dkms action; returns the exit status.
pub fn main(action: &str, args: &[&str]) -> i32 {
    let parsed = match Args::from_args(&["xdkms", action], &normalize(args)) {
        Ok(parsed) => parsed,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    print_out(format_args!("{}", early.output));
                    0
                }
                Err(()) => {
                    print_err(format_args!("{}", early.output));
                    2
                }
            };
        }
    };
    let quiet = parsed.quiet;
    match run(action, parsed) {
        Ok(()) => 0,
        Err(failure) => {
            if !quiet && !failure.lines.is_empty() {
                print_err_partial("Error! ");
                for line in &failure.lines {
                    print_err(format_args!("{line}"));
                }
            }
            failure.code
        }
    }
}

/// dkms accepts `--opt=value` for every valued option; argh wants two words.
fn normalize<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(args.len());
    for &word in args {
        // `-j4`, as make spells it.
        if let Some(jobs) = word.strip_prefix("-j").filter(|j| !j.is_empty() && j.bytes().all(|b| b.is_ascii_digit())) {
            out.push("-j");
            out.push(jobs);
            continue;
        }
        match word.strip_prefix("--").and_then(|w| w.split_once('=')) {
            Some((name, value)) => {
                let at = 2 + name.len();
                out.push(&word[..at]);
                out.push(value);
            }
            None => out.push(word),
        }
    }
    out
}

/// What the positional words named.
#[derive(Debug, Default)]
pub struct Named {
    pub module: Option<String>,
    pub version: Option<String>,
    pub source_dir: Option<PathBuf>,
}

/// The modules named: `-m` (with `-v`), then every positional `module/version`, module source
/// directory or dkms.conf path, in order. A lone `-v` completes the one request without a version.
fn classify(args: &Args) -> Vec<Named> {
    let parse = |text: &str| match text.split_once('/') {
        Some((m, v)) => Named { module: Some(m.to_string()), version: Some(v.to_string()), source_dir: None },
        None => Named { module: Some(text.to_string()), version: None, source_dir: None },
    };
    let mut requests: Vec<Named> = args.module.as_deref().map(parse).into_iter().collect();
    for word in &args.words {
        let path = Path::new(word);
        if path.is_file() && word.ends_with("dkms.conf") {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            requests.push(Named { source_dir: Some(dir.to_path_buf()), ..Default::default() });
        } else if path.is_dir() && path.join("dkms.conf").is_file() {
            requests.push(Named { source_dir: Some(path.to_path_buf()), ..Default::default() });
        } else {
            requests.push(parse(word));
        }
    }
    if let Some(version) = &args.version {
        if requests.is_empty() {
            requests.push(Named { version: Some(version.clone()), ..Default::default() });
        }
        let mut without = requests.iter_mut().filter(|n| n.version.is_none() && n.source_dir.is_none());
        if let (Some(named), None) = (without.next(), without.next()) {
            named.version = Some(version.clone());
        }
    }
    requests
}

/// Every module, version, kernel and arch named on the command line must be one path component
/// (exit 2 naming the value otherwise), before any of them is joined to a tree path.
fn check_names(requests: &[Named], args: &Args) -> Result<()> {
    let mut named: Vec<(&str, &str)> = Vec::new();
    for request in requests {
        named.extend(request.module.as_deref().map(|m| ("module", m)));
        named.extend(request.version.as_deref().map(|v| ("module version", v)));
    }
    for kernel in &args.kernelver {
        match kernel.split_once('/') {
            Some((k, a)) => named.extend([("kernel version", k), ("arch", a)]),
            None => named.push(("kernel version", kernel)),
        }
    }
    named.extend(args.arch.iter().map(|a| ("arch", a.as_str())));
    for (what, value) in named {
        if let Err(why) = crate::names::check_component(value) {
            return Err(Failure::new(
                2,
                [format!("Invalid {what} {value:?}: {why}."), format!("A {what} must be a single path component.")],
            ));
        }
    }
    Ok(())
}

/// The single module a command acts on (dkms's actions take one).
fn single(action: &str, mut requests: Vec<Named>) -> Result<Named> {
    if requests.len() > 1 {
        return Err(Failure::new(
            exit::USAGE,
            [format!("The action {action} takes one module; build and install take several.")],
        ));
    }
    Ok(requests.pop().unwrap_or_default())
}

fn run(action: &str, args: Args) -> Result<()> {
    if args.version_flag {
        print_out(format_args!("xdkms {} (dkms-3.0.10 compatible)", env!("CARGO_PKG_VERSION")));
        return Ok(());
    }
    let requests = classify(&args);
    check_names(&requests, &args)?;
    let ctx = make_ctx(&args)?;
    if args.arch.len() > 1 && args.arch.len() != args.kernelver.len() {
        return Err(Failure::new(
            exit::USAGE,
            [
                " If more than one arch is specified on the command line, then there",
                "must be an equal number of kernel versions also specified (1:1 relationship).",
            ],
        ));
    }
    if args.all && !args.kernelver.is_empty() {
        return Err(Failure::new(
            2,
            [" You cannot specify a kernel version and also specify", "--all on the command line."],
        ));
    }
    if args.all && !args.arch.is_empty() {
        return Err(Failure::new(3, [" You cannot specify an arch and also specify", "--all on the command line."]));
    }
    if args.all && matches!(action, "add" | "build" | "install" | "autoinstall") {
        return Err(Failure::new(5, [format!("The action {action} does not support the --all parameter.")]));
    }
    if action == "status" {
        let targets = explicit_targets(&args);
        return tree::status(&ctx, &single(action, requests)?, &targets, args.json);
    }
    let _lock = tree::lock(&ctx)?;
    tree::clean_leftovers(&ctx);
    let result = match action {
        "add" => {
            let targets = default_targets(&ctx, &args, false)?;
            let named = single(action, requests)?;
            tree::add(&ctx, named.module, named.version, named.source_dir, targets.first(), false).map(|_| ())
        }
        "build" | "install" => {
            let targets = default_targets(&ctx, &args, true)?;
            if requests.is_empty() {
                return module_args(action, Named::default()).map(|_| ());
            }
            if args.kernel_build.is_some() && args.kernelsourcedir.is_some() {
                return Err(Failure::new(2, ["Give --kernel-build or --kernelsourcedir, not both."]));
            }
            let mut modules = Vec::new();
            for named in requests {
                modules.push(add_if_needed(&ctx, named, targets.first())?);
            }
            parallel::build_and_install(&ctx, action == "install", &modules, &targets)
        }
        "uninstall" | "unbuild" | "remove" => {
            let (module, version) = module_args(action, single(action, requests)?)?;
            if !tree::is_added(&ctx, &module, &version) {
                return Err(Failure::new(
                    exit::TREE_STATE,
                    [format!("The module/version combo: {module}-{version} is not located in the DKMS tree.")],
                ));
            }
            let targets = if args.all || (ctx.image_mode() && args.kernelver.is_empty()) {
                tree::built_targets(&ctx, &module, &version)
            } else {
                default_targets(&ctx, &args, false)?
            };
            install::remove_family(&ctx, action, &module, &version, &targets)
        }
        "autoinstall" => {
            let targets = default_targets(&ctx, &args, true)?;
            if !ctx.image_mode() && targets.len() != 1 {
                return Err(Failure::new(
                    4,
                    ["The action autoinstall does not support multiple kernel version parameters on the command line."],
                ));
            }
            install::autoinstall(&ctx, &targets)
        }
        other => Err(Failure::new(2, [format!("Unknown action specified: \"{other}\"")])),
    };
    let indexed = install::run_pending_depmods(&ctx);
    result.and(indexed)
}

/// Prints a failure now (for loops that go on after one).
pub fn report(ctx: &Ctx, failure: &Failure) {
    if !ctx.quiet && !failure.lines.is_empty() {
        print_err_partial("Error! ");
        for line in &failure.lines {
            print_err(format_args!("{line}"));
        }
    }
}

fn module_args(action: &str, named: Named) -> Result<(String, String)> {
    match (named.module, named.version) {
        (Some(m), Some(v)) if !m.is_empty() && !v.is_empty() => Ok((m, v)),
        _ => Err(Failure::new(
            exit::USAGE,
            [
                "Arguments <module> and <module-version> are not specified.".to_string(),
                format!("Usage: {action} <module>/<module-version> or"),
                format!("       {action} -m <module>/<module-version> or"),
                format!("       {action} -m <module> -v <module-version>"),
            ],
        )),
    }
}

/// build and install add the module first when it is not in the tree (as dkms's prepare_build).
/// Given a source directory whose module is already added, they go on with it (dkms exits 3), so
/// that a recipe can run its build and install steps again.
fn add_if_needed(ctx: &Ctx, named: Named, first: Option<&Target>) -> Result<(String, String)> {
    if named.source_dir.is_some() || !matches!((&named.module, &named.version), (Some(_), Some(_))) {
        return tree::add(ctx, named.module, named.version, named.source_dir, first, true);
    }
    let (module, version) = module_args("build", named)?;
    if !tree::is_added(ctx, &module, &version) {
        tree::add(ctx, Some(module.clone()), Some(version.clone()), None, first, false)?;
    }
    Ok((module, version))
}

/// The -k/-a pairs as given (status: no defaults). A known architecture name becomes the label
/// its target's `uname -m` prints (`arm64` and `amd64` are `aarch64` and `x86_64` in the tree, as
/// the target's own dkms will look for them).
fn explicit_targets(args: &Args) -> Vec<Target> {
    let mut targets: Vec<Target> = args
        .kernelver
        .iter()
        .map(|k| match k.split_once('/') {
            Some((k, a)) => Target { kernel: k.to_string(), arch: a.to_string() },
            None => Target { kernel: k.clone(), arch: String::new() },
        })
        .collect();
    for (index, target) in targets.iter_mut().enumerate() {
        if target.arch.is_empty() {
            target.arch = args.arch.get(index).or(args.arch.first()).cloned().unwrap_or_default();
        }
        target.arch = arch_label(&target.arch);
    }
    targets
}

/// The tree's label for an arch name: the target's `uname -m` when the name is known.
fn arch_label(name: &str) -> String {
    match cross::target::by_name(name).first() {
        Some(spec) => spec.uname.to_string(),
        None => name.to_string(),
    }
}

/// The kernels an action applies to: -k as given; else the running kernel on the host, or in a
/// root every kernel with headers (`with_headers`) or every kernel directory.
fn default_targets(ctx: &Ctx, args: &Args, with_headers: bool) -> Result<Vec<Target>> {
    let mut targets = explicit_targets(args);
    let arch = args.arch.first().map(|a| arch_label(a)).unwrap_or_default();
    // A kernel build directory (--kernel-build, the override it sets) names its own kernel.
    if targets.is_empty() && ctx.image_mode() && args.kernel_build.is_some() {
        if let Some(release) = ctx.kernel_source_override.as_deref().and_then(cross::kernel::headers_release) {
            targets.push(Target { kernel: release, arch: arch.clone() });
        }
    }
    if targets.is_empty() {
        if ctx.image_mode() {
            let kernels = cross::kernel::installed_kernels(&ctx.root)
                .map_err(|e| Failure::io(format!("listing kernels in {}", ctx.root.root().display()), e))?;
            for kernel in kernels {
                let has_headers = ctx.kernel_source_dir(&kernel).is_ok_and(|dir| dir.join("include").is_dir());
                if !with_headers || has_headers {
                    targets.push(Target { kernel, arch: arch.clone() });
                }
            }
            if targets.is_empty() {
                return Err(Failure::new(
                    exit::NO_HEADERS,
                    [
                        format!("No kernel with headers was found in {}.", ctx.install_tree.display()),
                        "Install the kernel headers into the root or name the kernel with -k.".to_string(),
                    ],
                ));
            }
        } else {
            targets.push(Target { kernel: host_release(), arch });
        }
    }
    for target in &mut targets {
        if target.arch.is_empty() {
            target.arch = ctx.default_arch(&target.kernel);
        }
    }
    Ok(targets)
}

/// A tree option: a target path inside the root in image mode (a relative one is taken from the
/// root's `/`, and `..` stops there), a host path otherwise.
fn tree_path(root: &Sysroot, given: Option<&PathBuf>, framework: &str, default: &str) -> Result<(PathBuf, PathBuf)> {
    let target = match given {
        Some(path) => path.clone(),
        None if !framework.is_empty() => PathBuf::from(framework),
        None => PathBuf::from(default),
    };
    if root.is_host() {
        let host = if target.is_absolute() {
            target.clone()
        } else {
            std::env::current_dir().map(|d| d.join(&target)).unwrap_or(target.clone())
        };
        return Ok((host.clone(), host));
    }
    let target = target_absolute(&target);
    let host = root.resolve(&target).map_err(|e| Failure::io(format!("resolving {}", target.display()), e))?;
    Ok((host, target))
}

/// `path` as an absolute path of the target, `.` and `..` applied lexically and stopping at `/`.
fn target_absolute(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            std::path::Component::Normal(name) => out.push(name),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn make_ctx(args: &Args) -> Result<Ctx> {
    let root = match &args.root {
        Some(dir) => Sysroot::new(dir).map_err(|e| {
            Failure::new(2, [format!("{e}"), "--root must name the target's root directory.".to_string()])
        })?,
        None => Sysroot::host().map_err(|e| Failure::io("opening /", e))?,
    };
    let inside = |p: &str| root.resolve(p).map_err(|e| Failure::io(format!("resolving {p} inside the root"), e));
    let etc_dkms = inside("/etc/dkms")?;
    // framework.conf and framework.conf.d/*.conf, sourced with their own whitelist; bash reads
    // them through paths whose links are resolved inside the root.
    let mut framework_files = vec![inside("/etc/dkms/framework.conf")?];
    let conf_d = etc_dkms.join("framework.conf.d");
    for entry in root.read_dir(&conf_d).unwrap_or_default() {
        if Path::new(&entry.name).extension().is_some_and(|e| e == "conf") {
            let file = conf_d.join(&entry.name);
            framework_files
                .push(root.resolve_host(&file).map_err(|e| Failure::io(format!("resolving {}", file.display()), e))?);
        }
    }
    let framework = if framework_files.iter().any(|f| f.exists()) {
        conf::evaluate(
            &framework_files,
            &Scope::default(),
            &["source_tree", "dkms_tree", "install_tree", "parallel_jobs", "verbose", "symlink_modules"],
            None,
        )
        .map_err(|e| Failure::io("reading framework.conf", e))?
    } else {
        RawConf::default()
    };
    let (dkms_tree, dkms_tree_target) =
        tree_path(&root, args.dkmstree.as_ref(), framework.scalar("dkms_tree"), "/var/lib/dkms")?;
    let (source_tree, source_tree_target) =
        tree_path(&root, args.sourcetree.as_ref(), framework.scalar("source_tree"), "/usr/src")?;
    let (install_tree, install_tree_target) =
        tree_path(&root, args.installtree.as_ref(), framework.scalar("install_tree"), "/lib/modules")?;
    let os_release = root
        .read_to_string(&root.root().join("etc/os-release"))
        .or_else(|_| root.read_to_string(&root.root().join("usr/lib/os-release")))
        .unwrap_or_default();
    let jobs = match args.jobs.clone().or_else(|| Some(framework.scalar("parallel_jobs").to_string())) {
        Some(j) if !j.is_empty() => j,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()).to_string(),
    };
    let in_root = |p: &PathBuf| -> Result<PathBuf> {
        if root.is_host() {
            Ok(p.clone())
        } else {
            let target = target_absolute(p);
            root.resolve(&target).map_err(|e| Failure::io(format!("resolving {}", p.display()), e))
        }
    };
    let mut directives = Vec::new();
    for d in &args.directive {
        match d.split_once('=') {
            Some((n, v)) => directives.push((n.to_string(), v.to_string())),
            None => return Err(Failure::new(2, [format!("--directive {d:?}: use NAME=value")])),
        }
    }
    let jobs = if jobs == "0" { String::new() } else { jobs };
    // No -j and no parallel_jobs, under a make with a jobserver: share the parent's.
    let parent = if args.jobs.is_none() && framework.scalar("parallel_jobs").is_empty() {
        parallel::parent_jobserver()
    } else {
        None
    };
    let jobserver_inherited = parent.is_some();
    let jobserver = match (parent, jobs.parse::<usize>()) {
        (Some(parent), _) => Some(parent),
        (None, Ok(n)) if n > 0 => {
            Some(jobserver::Client::new(n).map_err(|e| Failure::io(format!("creating a jobserver for -j {n}"), e))?)
        }
        _ => None,
    };
    Ok(Ctx {
        jobserver,
        jobserver_inherited,
        dkms_tree,
        source_tree,
        source_tree_target,
        dkms_tree_target,
        install_tree_target,
        install_tree,
        etc_dkms,
        distro: distro_from_os_release(&os_release),
        addon_modules_dir: std::env::var("ADDON_MODULES_DIR").ok().filter(|s| !s.is_empty()),
        jobs,
        force: args.force,
        force_version_override: args.force_version_override,
        verbose: args.verbose || !framework.scalar("verbose").is_empty(),
        quiet: args.quiet,
        no_depmod: args.no_depmod,
        // Like a source directory, the conf given with -c is a file of the build host.
        conf_override: args.conf.clone().map(crate::cli::absolute),
        kernel_source_override: match &args.kernel_build {
            Some(dir) => Some(crate::cli::absolute(dir.clone())),
            None => args.kernelsourcedir.as_ref().map(in_root).transpose()?,
        },
        kernel_config_override: args.config.as_ref().map(in_root).transpose()?,
        directives,
        compress: args.compress.clone(),
        cross_compile: args.cross_compile.clone(),
        framework_files,
        signing: SigningArgs {
            key: args.mok_signing_key.clone(),
            cert: args.mok_certificate.clone(),
            sign_file: args.sign_file.clone(),
        },
        depmod_pending: Mutex::new(BTreeSet::new()),
        tree_sandbox: OnceLock::new(),
        root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_distro_token() {
        assert_eq!(distro_from_os_release("ID=debian\n"), "debian");
        assert_eq!(distro_from_os_release("ID=ubuntu\nID_LIKE=debian\n"), "ubuntu");
        assert_eq!(distro_from_os_release("ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n"), "rhel centos fedora");
        assert_eq!(distro_from_os_release(""), "unknown");
    }

    #[test]
    fn long_options_with_equals_are_split() {
        assert_eq!(normalize(&["--kernelver=6.1/x86_64", "-k", "x"]), ["--kernelver", "6.1/x86_64", "-k", "x"]);
        assert_eq!(normalize(&["-j4", "-jx"]), ["-j", "4", "-jx"]);
    }
}
