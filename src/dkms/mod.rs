//! The DKMS commands (add, build, install, uninstall, unbuild, remove, status, autoinstall) over
//! dkms's own tree layout, on the host or, with `--root`, entirely inside a target root.

pub mod build;
pub mod cache;
pub mod commands;
pub mod conf;
pub mod date;
pub mod depends;
pub mod fanout;
pub mod initramfs_job;
pub mod install;
pub mod matching;
pub mod parallel;
pub mod plan;
pub mod sandbox;
pub mod sign;
pub mod tally;
pub mod tarball;
pub mod target;
pub mod tree;
pub mod version;

use crate::exit::Exit;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cross::Sysroot;

use conf::{Conf, Derive, RawConf, Scope};
use sandbox::Sandbox;

/// A command that stops with dkms's exit status and `Error!` lines.
#[derive(Debug)]
pub struct Failure {
    pub code: Exit,
    pub lines: Vec<String>,
}

impl Failure {
    pub fn new(code: Exit, lines: impl IntoIterator<Item = impl Into<String>>) -> Failure {
        Failure { code, lines: lines.into_iter().map(Into::into).collect() }
    }

    /// An unexpected I/O or process failure (exit 1), with what was being done.
    pub fn io(what: impl fmt::Display, error: impl fmt::Display) -> Failure {
        Failure::new(Exit::Io, [format!("{what}: {error}")])
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
    /// A command that signs digests (crate::signing::SigningKey::Command).
    pub command: Option<String>,
}

/// One read of a dkms.conf: module, version, kernel, arch and the file (dkms's `last_mvka` and
/// `last_mvka_conf`).
pub type ConfRead = (String, String, String, String, PathBuf);

/// How dkms.conf and build commands see the filesystem.
pub struct View<'a> {
    /// The dkms tree (host path): the real one, or a build's own.
    pub build_tree: &'a Path,
    /// The mount namespace giving the target's paths, inside a root when available.
    pub sandbox: Option<&'a Sandbox>,
    /// Without a sandbox: a host-usable view of the kernel headers, if one was made.
    pub headers_view: Option<&'a Path>,
    /// Print dkms's `DIRECTIVE:` lines for this read (dkms reads the conf once where xdkms's
    /// build checks it early and reads it again for the build: the early read is silent).
    pub announce: bool,
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

/// Held by the one build using a module version's `<m>/<v>/build` on the host.
pub type VersionLock = std::sync::Arc<Mutex<()>>;

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
    pub tree_sandbox: OnceLock<Option<Sandbox>>,
    /// Kernels whose indexes must be regenerated before the run ends.
    pub depmod_pending: Mutex<BTreeSet<String>>,
    /// dkms's `found_original`, a global of its run: set once an install found a kernel's own
    /// module of the same name (it then stops saying there is none).
    pub original_found: std::sync::atomic::AtomicBool,
    /// The last conf read that printed the DIRECTIVE lines.
    pub last_conf_read: Mutex<Option<ConfRead>>,
    /// Every conf evaluated in this run, by its files and scope: sourcing one with bash (in the
    /// sandbox) costs tens of milliseconds, and a run reads each conf several times (checks,
    /// build, install, the version sanity check) with the same result.
    /// Keyed by the files' sizes and times too: a run may evaluate a conf before it takes the
    /// tree's lock. Failures are kept as well (bash's own messages are printed once).
    pub evaluated_confs: Mutex<BTreeMap<String, Evaluated>>,
    /// No other build runs beside the current one (console lines may be left open).
    pub sole_build: std::sync::atomic::AtomicBool,
    /// On the host, builds happen in dkms's own `<m>/<v>/build`: one per module version at a
    /// time (the lock of each version built in this run).
    pub host_build_dirs: Mutex<BTreeMap<(String, String), VersionLock>>,
    /// framework.conf's `build_environment` (dkms 3.4), when that file exists (host path).
    pub build_environment_file: Option<PathBuf>,
    /// The build cache (--cache, $XDKMS_CACHE), a directory of the build host.
    pub cache: Option<crate::build_cache::Store>,
    /// The key of every build of the run, by (module, version, kernel, arch), when they are
    /// recorded (`build-one` hands them on with the build).
    pub built_keys: Option<Mutex<BTreeMap<BuildId, cache::CacheSlot>>>,
    /// The builds of the run answered from the build cache.
    pub restored: Mutex<BTreeSet<BuildId>>,
    /// Set in a run on an image's parts extracted in part (of the kernels' headers only their
    /// release and configuration files, which is all that anything but a build reads there;
    /// maybe not the kernels' own module files): what needs what was left out (a build, the
    /// kernel's own module of a name being installed) calls it first, and it ends the run so that
    /// it starts again on the whole.
    pub partial_root: Option<fn() -> !>,
    /// The kernels' module files left out of the root, read from the image by depmod.
    pub outside_modules: Option<std::sync::Arc<dyn crate::depmod::outside::OutsideFiles>>,
}

/// A conf as bash left it, or how its evaluation failed (kind and message of the error).
pub type Evaluated = std::result::Result<RawConf, (std::io::ErrorKind, String)>;

/// A build: (module, version, kernel, arch).
pub type BuildId = (String, String, String, String);

pub fn build_id(module: &str, version: &str, target: &Target) -> BuildId {
    (module.to_string(), version.to_string(), target.kernel.clone(), target.arch.clone())
}

impl Ctx {
    /// The lock a build on the host holds while it uses `<m>/<v>/build`.
    pub fn host_build_dir_lock(&self, module: &str, version: &str) -> VersionLock {
        let mut locks = self.host_build_dirs.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry((module.to_string(), version.to_string())).or_default().clone()
    }

    /// What framework.conf's `build_environment` file exports (new or changed variables) for
    /// one build, sourced with that build's dkms variables (`$kernelver`, `$arch`, `$module`,
    /// ...) in scope, as dkms 3.4 sources it into its own shell before a build.
    pub fn build_environment(&self, variables: &[(&str, String)], sandbox: Option<&Sandbox>) -> Vec<(String, String)> {
        let Some(file) = &self.build_environment_file else { return Vec::new() };
        commands::exported_by(file, sandbox, variables).unwrap_or_else(|e| {
            self.warn(format!("{}: {e}; its variables are not set", self.shown(file).display()));
            Vec::new()
        })
    }

    /// Notes that a build was answered from the build cache.
    pub fn note_restored(&self, module: &str, version: &str, target: &Target) {
        self.restored.lock().unwrap_or_else(|e| e.into_inner()).insert(build_id(module, version, target));
    }

    /// Whether a build of this run was answered from the build cache.
    pub fn was_restored(&self, module: &str, version: &str, target: &Target) -> bool {
        self.restored.lock().unwrap_or_else(|e| e.into_inner()).contains(&build_id(module, version, target))
    }

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
    /// dkms's `depmod...` line is printed here, where dkms runs depmod; the run regenerates
    /// each kernel's indexes once, at its end.
    pub fn pending_depmod(&self, kernel: &str) {
        self.say("depmod...");
        self.depmod_pending.lock().unwrap_or_else(|e| e.into_inner()).insert(kernel.to_string());
    }

    /// How many kernels [`Ctx::pending_depmod`] has noted so far.
    pub fn pending_kernels(&self) -> Vec<String> {
        self.depmod_pending.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
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

    /// A path as the target sees it: inside a root, without the root's prefix.
    pub fn shown(&self, host: &Path) -> PathBuf {
        match host.strip_prefix(self.root.root()) {
            Ok(inner) if self.image_mode() => Path::new("/").join(inner),
            _ => host.to_path_buf(),
        }
    }

    /// Prints without ending the line (flushed, so it shows while a command runs).
    pub fn say_partial(&self, text: &str) {
        if !self.quiet {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{text}");
            let _ = out.flush();
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
        let view = View { build_tree, sandbox: self.tree_sandbox(), headers_view: None, announce: true };
        self.read_conf_in(module, version, target, conf_path, &view, strict)
    }

    /// A module's conf for planning and scheduling (what it builds after, the modules it
    /// installs): not strict, and without dkms's `DIRECTIVE:` lines, which belong to its build.
    pub fn module_conf_quietly(&self, module: &str, version: &str, target: &Target) -> Result<Conf> {
        let conf_path = self.conf_path(module, version)?;
        let view =
            View { build_tree: &self.dkms_tree, sandbox: self.tree_sandbox(), headers_view: None, announce: false };
        self.read_conf_in(module, version, target, &conf_path, &view, false)
    }

    /// [`Ctx::module_conf_quietly`] of each module for each target (target-major), evaluated in
    /// parallel: each evaluation is a bash run of tens of milliseconds.
    pub fn module_confs_quietly(&self, modules: &[(String, String)], targets: &[Target]) -> Vec<Result<Conf>> {
        use rayon::prelude::*;
        let pairs: Vec<(&Target, &(String, String))> =
            targets.iter().flat_map(|target| modules.iter().map(move |module| (target, module))).collect();
        pairs
            .into_par_iter()
            .map(|(target, (module, version))| self.module_conf_quietly(module, version, target))
            .collect()
    }

    /// [`Ctx::read_conf`] without dkms's `DIRECTIVE:` lines: a build's checks before the read
    /// dkms makes.
    pub fn read_conf_for_checks(&self, module: &str, version: &str, target: &Target, conf_path: &Path) -> Result<Conf> {
        let view =
            View { build_tree: &self.dkms_tree, sandbox: self.tree_sandbox(), headers_view: None, announce: false };
        self.read_conf_in(module, version, target, conf_path, &view, true)
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
                Exit::NoConf,
                [
                    "Could not locate dkms.conf file.".to_string(),
                    format!("File: {} does not exist.", self.shown(conf_path).display()),
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
        let mut raw = self.evaluate_conf(&files, &scope, view.sandbox)?;
        for (name, file) in &raw.deprecated {
            if !self.quiet {
                print_err(format_args!("Deprecated feature: {name} ({})", file.display()));
            }
        }
        for (name, value) in &self.directives {
            raw.set_scalar(name, value);
        }
        if view.announce && !self.directives.is_empty() {
            // dkms skips re-reading the conf it read last (same module, version, kernel, arch
            // and file), and with it the DIRECTIVE lines.
            let read = (
                module.to_string(),
                version.to_string(),
                target.kernel.clone(),
                target.arch.clone(),
                conf_path.to_path_buf(),
            );
            let mut last = self.last_conf_read.lock().unwrap_or_else(|e| e.into_inner());
            if last.as_ref() != Some(&read) {
                for (name, value) in &self.directives {
                    self.say(format!("DIRECTIVE: {name}=\"{value}\""));
                }
                *last = Some(read);
            }
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
                Exit::BadConf,
                [
                    "Bad conf file.".to_string(),
                    format!("File: {} does not represent a valid dkms.conf file.", self.shown(conf_path).display()),
                ],
            )
        })
    }

    /// `files` sourced in `scope` ([`conf::evaluate`]), once per run.
    fn evaluate_conf(&self, files: &[PathBuf], scope: &conf::Scope, sandbox: Option<&Sandbox>) -> Result<RawConf> {
        let stamps: Vec<_> = files
            .iter()
            .map(|file| {
                std::fs::metadata(file).ok().map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
            })
            .collect();
        let key = format!("{files:?} {stamps:?} {scope:?} {}", sandbox.is_some());
        let conf_path = files.first().map_or_else(PathBuf::new, Clone::clone);
        let failed = |(kind, message): (std::io::ErrorKind, String)| {
            Failure::io(format!("reading {}", conf_path.display()), std::io::Error::new(kind, message))
        };
        if let Some(evaluated) = self.evaluated_confs.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return evaluated.clone().map_err(failed);
        }
        let evaluated = conf::evaluate(files, scope, conf::WHITELIST, sandbox).map_err(|e| (e.kind(), e.to_string()));
        self.evaluated_confs.lock().unwrap_or_else(|e| e.into_inner()).insert(key, evaluated.clone());
        evaluated.map_err(failed)
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
pub fn print_err_partial(text: &str) {
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

/// What the positional words named.
#[derive(Debug, Default)]
pub struct Named {
    pub module: Option<String>,
    pub version: Option<String>,
    pub source_dir: Option<PathBuf>,
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

pub fn module_args(action: &str, named: Named) -> Result<(String, String)> {
    match (named.module, named.version) {
        (Some(m), Some(v)) if !m.is_empty() && !v.is_empty() => Ok((m, v)),
        _ => Err(Failure::new(
            Exit::Usage,
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
pub fn add_if_needed(ctx: &Ctx, named: Named, first: Option<&Target>) -> Result<(String, String)> {
    if named.source_dir.is_some() || !matches!((&named.module, &named.version), (Some(_), Some(_))) {
        return tree::add(ctx, named.module, named.version, named.source_dir, first, true);
    }
    let (module, version) = module_args("build", named)?;
    if !tree::is_added(ctx, &module, &version) {
        tree::add(ctx, Some(module.clone()), Some(version.clone()), None, first, false)?;
    }
    Ok((module, version))
}
