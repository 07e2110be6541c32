//! `build`: one (module, version, kernel, arch) built in its own staging directory, then moved
//! into `<m>/<v>/<kernel>/<arch>` in one rename.
//!
//! dkms builds every kernel in the single `<m>/<v>/build`, so two kernels cannot build at once.
//! Here each build gets `<m>/<v>/<kernel>/.tmp_<arch>_<pid>/`, holding a small dkms tree of its
//! own (`tree/<m>/<v>/{build,source}`) that the dkms.conf is evaluated against: `$dkms_tree`
//! names it, so a MAKE line that spells out `M=$dkms_tree/$PACKAGE_NAME/$PACKAGE_VERSION/build`
//! builds in the isolated copy. A killed build leaves only the staging directory, which the
//! next run removes; `status` never sees a half-built module.

use crate::exit::Exit;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use initramfs::codec::{encode, Codec, Level};

use super::cache::{BuildInputs, CacheSlot};
use super::commands::{log_tail, run_logged, run_script_in, shell_quote};
use super::conf::Conf;
use super::sandbox::Sandbox;
use super::tree::{self, BuiltModule};
use super::{Ctx, Failure, Result, ScopePaths, Target, View};

/// dkms's maybe_build_module: skip with a message when built, unless --force.
pub fn maybe_build(ctx: &Ctx, module: &str, version: &str, target: &Target) -> Result<()> {
    if tree::is_broken(ctx, module, version) {
        return Err(tree::broken(module, version));
    }
    if tree::is_built(ctx, module, version, target) {
        if ctx.force {
            unbuild(ctx, module, version, target)?;
        } else {
            ctx.say(format!(
                "Module {module}/{version} already built for kernel {} ({}), skip. You may override by specifying --force.",
                target.kernel, target.arch
            ));
            return Ok(());
        }
    }
    build(ctx, module, version, target)
}

/// install's build step: builds a pair that is not built (never rebuilds, even with --force).
pub fn build_if_missing(ctx: &Ctx, module: &str, version: &str, target: &Target) -> Result<()> {
    if tree::is_broken(ctx, module, version) {
        return Err(tree::broken(module, version));
    }
    if tree::is_built(ctx, module, version, target) {
        return Ok(());
    }
    build(ctx, module, version, target)
}

/// dkms's do_unbuild: uninstall if installed, then delete `<m>/<v>/<k>/<a>`.
pub fn unbuild(ctx: &Ctx, module: &str, version: &str, target: &Target) -> Result<()> {
    let kernel_dir = ctx.version_dir(module, version).join(&target.kernel);
    let dir = kernel_dir.join(&target.arch);
    ctx.root.remove_all(&dir).map_err(|e| Failure::io(format!("removing {}", dir.display()), e))?;
    let _ = ctx.root.remove_dir(&kernel_dir);
    Ok(())
}

/// Removes the staging directory when dropped, whatever happened.
struct Staging<'a> {
    root: &'a cross::Sysroot,
    dir: PathBuf,
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        let _ = self.root.remove_all(&self.dir);
        if let Some(kernel_dir) = self.dir.parent() {
            // Only succeeds when no other arch lives there.
            let _ = self.root.remove_dir(kernel_dir);
        }
    }
}

/// dkms's do_build for one kernel: checks, sources staged in an isolated dkms tree, patches,
/// make, the modules stripped, signed and compressed, the result renamed into place.
pub fn build(ctx: &Ctx, module: &str, version: &str, target: &Target) -> Result<()> {
    // A run on an image's parts without the kernels' headers starts again with them.
    if let Some(start_again) = ctx.partial_root {
        start_again();
    }
    // dkms's do_build prepares signing before any of its checks.
    let signer = super::sign::prepare(ctx, target);
    let job = Job::prepare(ctx, module, version, target)?;
    let slot = job.cache_slot(signer.as_ref())?;
    // A hit is the build these inputs make (--force included: --no-cache builds afresh).
    if let Some(slot) = &slot {
        if job.restore(slot)? {
            return Ok(());
        }
    }
    // On the host the build happens where dkms's does, one kernel at a time per version.
    let host_lock = (!ctx.image_mode()).then(|| ctx.host_build_dir_lock(module, version));
    let _in_use = host_lock.as_ref().map(|lock| lock.lock().unwrap_or_else(|e| e.into_inner()));
    job.stage_sources()?;
    let sandbox = ctx.sandbox(&job.build_tree, &job.staging.dir.join("mounts"), Some(&target.kernel));
    // From here on a failure leaves the build directory where dkms leaves it, `<m>/<v>/build`,
    // for inspection (make.log included).
    let outcome = job.run(sandbox.as_ref(), signer.as_ref(), slot.as_ref());
    let kept = job.version_dir.join("build");
    if outcome.is_err() && job.build_dir != kept && ctx.root.is_dir(&job.build_dir) {
        let _ = ctx.root.remove_all(&kept);
        let _ = ctx.root.rename(&job.build_dir, &kept);
    }
    outcome
}

/// One build of a module version for one kernel: where it happens and what the checks found.
struct Job<'a> {
    ctx: &'a Ctx,
    module: &'a str,
    version: &'a str,
    target: &'a Target,
    /// `<dkms_tree>/<m>/<v>` and the build's final `<k>/<arch>` in it, resolved inside the root.
    version_dir: PathBuf,
    base_dir: PathBuf,
    /// `<k>/.tmp_<arch>_<pid>`: the build's own dkms tree and work files.
    staging: Staging<'a>,
    build_tree: PathBuf,
    build_dir: PathBuf,
    conf_path: PathBuf,
    source_dir: PathBuf,
    headers: PathBuf,
    config_text: String,
    build_target: super::target::BuildTarget,
    /// The conf as the checks evaluated it (the target's paths, not the build's).
    conf: Conf,
}

/// An I/O failure while doing `what`.
fn io(what: String) -> impl FnOnce(std::io::Error) -> Failure {
    move |e| Failure::io(what, e)
}

impl<'a> Job<'a> {
    /// dkms's checks before a build, in its order.
    fn prepare(ctx: &'a Ctx, module: &'a str, version: &'a str, target: &'a Target) -> Result<Job<'a>> {
        // Resolved once inside the root: the build's commands get these paths.
        let version_dir = ctx.in_root(&ctx.version_dir(module, version))?;
        let kernel_dir = ctx.in_root(&version_dir.join(&target.kernel))?;
        let base_dir = kernel_dir.join(&target.arch);
        check_not_built(ctx, target, &base_dir)?;
        let conf_path = ctx.conf_path(module, version)?;
        let conf = ctx.read_conf_for_checks(module, version, target, &conf_path)?;
        if conf.excluded {
            return Err(excluded(module, &ctx.shown(&base_dir)));
        }
        let source_dir = ctx.source_dir(module, version)?;
        check_source(ctx, &source_dir, &version_dir)?;
        let headers = ctx.kernel_source_dir(&target.kernel)?;
        check_headers(ctx, &headers, &target.kernel)?;
        let config_text = ctx.kernel_config_text(&target.kernel);
        let build_target = super::target::prepare(ctx, target, &headers, &config_text)?;
        let staging =
            Staging { root: &ctx.root, dir: kernel_dir.join(format!(".tmp_{}_{}", target.arch, std::process::id())) };
        // Inside a root the build's own dkms tree appears at the target's dkms tree path (see
        // ctx.sandbox); on the host, where nothing can be mounted there without hiding the
        // real tree, the build uses the real tree and dkms's `<m>/<v>/build`, so the make line,
        // the paths compiled into the module and the log are dkms's.
        let (build_tree, build_dir) = match ctx.image_mode() {
            true => {
                let build_tree = staging.dir.join("tree");
                let build_dir = build_tree.join(module).join(version).join("build");
                (build_tree, build_dir)
            }
            false => (ctx.dkms_tree.clone(), version_dir.join("build")),
        };
        Ok(Job {
            ctx,
            module,
            version,
            target,
            version_dir,
            base_dir,
            staging,
            build_tree,
            build_dir,
            conf_path,
            source_dir,
            headers,
            config_text,
            build_target,
            conf,
        })
    }

    /// This build's place in the build cache, when the run has one.
    fn cache_slot(&self, signer: Option<&super::sign::Signer>) -> Result<Option<CacheSlot>> {
        if self.ctx.cache.is_none() && self.ctx.built_keys.is_none() {
            return Ok(None);
        }
        let codec = choose_compression(self.ctx, &self.target.kernel, &self.config_text)?;
        let inputs = BuildInputs {
            module: self.module,
            version: self.version,
            target: self.target,
            conf: &self.conf,
            source_dir: &self.source_dir,
            headers: &self.headers,
            config_text: &self.config_text,
            compiler: &self.compiler(),
            strip: &self.build_target.strip(),
            make_variables: &self.build_target.make_variables(),
            signer,
            codec,
        };
        super::cache::slot(self.ctx, &inputs)
    }

    /// The compiler make runs: CC as the build exports it, else kbuild's default for the target.
    fn compiler(&self) -> String {
        let exported = match &self.build_target.toolchain {
            Some(toolchain) => toolchain.cc.clone(),
            None => compiler_from_config(&self.config_text),
        };
        exported.unwrap_or_else(|| {
            let variables = self.build_target.make_variables();
            let value = |name: &str| variables.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
            match value("LLVM") {
                Some(_) => "clang".to_string(),
                None => format!(
                    "{}gcc",
                    value("CROSS_COMPILE").or_else(|| std::env::var("CROSS_COMPILE").ok()).unwrap_or_default()
                ),
            }
        })
    }

    /// The build answered from the cache: its result put back and moved into place, as a
    /// fresh build's would be. False on a miss.
    fn restore(&self, slot: &CacheSlot) -> Result<bool> {
        let result = self.staging.dir.join("result");
        if !super::cache::restore(self.ctx, slot, &result)? {
            let _ = self.ctx.root.remove_all(&result);
            return Ok(false);
        }
        self.ctx.say("");
        self.ctx.say("Building module:");
        let shown = slot.store.as_ref().map_or_else(String::new, |store| store.dir().display().to_string());
        self.ctx.say(format!("Restored from the build cache {shown} ({})", slot.key.as_str()));
        self.put_in_place(&result)?;
        super::cache::note_built(self.ctx, self.module, self.version, self.target, slot);
        self.ctx.note_restored(self.module, self.version, self.target);
        Ok(true)
    }

    /// Copies the source into the build's own dkms tree, in which the other modules stay
    /// reachable (a conf may read a dependency's Module.symvers there).
    fn stage_sources(&self) -> Result<()> {
        let root = &self.ctx.root;
        root.create_dir_all(self.build_dir.parent().unwrap_or(&self.build_tree))
            .map_err(io(format!("creating {}", self.staging.dir.display())))?;
        if !self.ctx.image_mode() {
            // dkms's prepare_build: a failed build's directory goes, the sources are copied anew.
            match root.remove_all(&self.build_dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Failure::io(format!("removing {}", self.build_dir.display()), e))
                }
                _ => {}
            }
            return tree::copy_tree(root, &self.source_dir, &self.build_dir)
                .map_err(io(format!("copying {}", self.source_dir.display())));
        }
        tree::copy_tree(root, &self.source_dir, &self.build_dir)
            .map_err(io(format!("copying {}", self.source_dir.display())))?;
        root.symlink(&self.source_dir, &self.build_tree.join(self.module).join(self.version).join("source"))
            .map_err(io(format!("creating {}", self.build_tree.display())))?;
        for other in tree::sorted_dirs(root, &self.ctx.dkms_tree).into_iter().filter(|o| o != self.module) {
            let _ = root.symlink(&self.ctx.dkms_tree.join(&other), &self.build_tree.join(&other));
        }
        Ok(())
    }

    /// Everything after staging: the conf read for the build's own paths, patches, make, the
    /// modules collected, the result moved into place.
    fn run(
        &self,
        sandbox: Option<&Sandbox>,
        signer: Option<&super::sign::Signer>,
        slot: Option<&CacheSlot>,
    ) -> Result<()> {
        let ctx = self.ctx;
        // Without a sandbox, the headers may need a view usable from the host (see
        // cross::kernel::kbuild_dir).
        let headers_view = match sandbox {
            Some(_) => None,
            None => {
                let kbuild = cross::kernel::kbuild_dir(&ctx.root, &self.headers, &self.staging.dir.join("kbuild"))
                    .map_err(io(format!("preparing the kernel headers at {}", self.headers.display())))?;
                (kbuild.path != self.headers).then_some(kbuild.path)
            }
        };
        let view =
            View { build_tree: &self.build_tree, sandbox, headers_view: headers_view.as_deref(), announce: true };
        let conf = ctx.read_conf_in(self.module, self.version, self.target, &self.conf_path, &view, true)?;
        let paths = ctx.scope_paths(&self.target.kernel, &view)?;
        let environment = ctx.build_environment(&self.variables(&paths), sandbox);
        // dkms's order: patches and pre_build (prepare_build), then the build.
        self.apply_patches(&conf, sandbox, &environment)?;
        run_script_in(ctx, sandbox, "pre_build", &conf.pre_build, &self.build_dir, &environment);
        ctx.say("");
        ctx.say("Building module:");
        // dkms runs the conf's CLEAN here and after the build; a build of xdkms starts from a
        // fresh copy and its directory is removed afterwards, so there is nothing to clean.
        ctx.say("Cleaning build area...");
        let log_path = self.make(&conf, &paths, sandbox, &environment)?;
        self.check_built(&conf)?;
        let result = self.staging.dir.join("result");
        let records = self.collect_modules(&conf, &result, signer)?;
        self.keep_logs(&log_path, &result)?;
        super::depends::record(ctx, &conf, &result)?;
        // The record stands for the module's own conf: a build with -c or --directive has none,
        // so status evaluates the conf, as dkms does.
        if ctx.conf_override.is_none() && ctx.directives.is_empty() {
            tree::write_built_record(&ctx.root, &result, &records)
                .map_err(io(format!("writing {}", result.display())))?;
        }
        run_script_in(ctx, sandbox, "post_build", &conf.post_build, &self.build_dir, &environment);
        ctx.say("Cleaning build area...");
        if let Some(slot) = slot {
            super::cache::file(ctx, slot, &result);
        }
        self.put_in_place(&result)?;
        if let Some(slot) = slot {
            super::cache::note_built(ctx, self.module, self.version, self.target, slot);
        }
        Ok(())
    }

    /// PATCH[] in order, each `patch -p1` in the build directory (output on the console).
    fn apply_patches(&self, conf: &Conf, sandbox: Option<&Sandbox>, environment: &[(String, String)]) -> Result<()> {
        for patch in &conf.patches {
            if Path::new(patch).components().any(|c| c == std::path::Component::ParentDir) {
                return Err(Failure::new(
                    Exit::BadPatch,
                    [format!("Patch {patch} as specified in dkms.conf contains '..' path component.")],
                ));
            }
            if !self.build_dir.join("patches").join(patch).is_file() {
                return Err(Failure::new(
                    Exit::BadPatch,
                    [
                        format!(" Patch {patch} as specified in dkms.conf cannot be"),
                        format!(
                            "found in {}/patches/.",
                            self.shown_build_path(&self.build_dir).display().to_string().trim_end_matches('/')
                        ),
                    ],
                ));
            }
            self.ctx.say(format!("applying patch {patch}..."));
            let script = format!("patch -p1 < ./patches/{}", shell_quote(patch));
            if !run_logged(sandbox, None, &script, &self.build_dir, None, self.ctx.quiet, environment)?.success() {
                return Err(Failure::new(
                    Exit::PatchFailed,
                    [
                        format!("Application of patch {patch} failed."),
                        format!("Check {} for more information.", self.shown_build_path(&self.build_dir).display()),
                    ],
                ));
            }
        }
        Ok(())
    }

    /// The pre_build script and the make command, output in make.log (which, as in dkms,
    /// starts after the patches); returns make.log's path.
    fn make(
        &self,
        conf: &Conf,
        paths: &ScopePaths,
        sandbox: Option<&Sandbox>,
        environment: &[(String, String)],
    ) -> Result<PathBuf> {
        let (ctx, target) = (self.ctx, self.target);
        let log_path = self.build_dir.join("make.log");
        let mut log = ctx.root.create_file(&log_path).map_err(io(format!("creating {}", log_path.display())))?;
        let date = super::date::date_line();
        let _ = writeln!(
            log,
            "DKMS make.log for {}-{} for kernel {} ({})",
            self.module, self.version, target.kernel, target.arch
        );
        let _ = log.write_all(date.as_bytes());
        drop(log);
        let make_env = self.make_environment(paths, environment)?;
        // With a shared jobserver, make takes its -j from MAKEFLAGS; the line shows dkms's -j.
        let jobs = if ctx.jobserver.is_some() { None } else { Some(ctx.jobs.as_str()) };
        let make_command = rewrite_make(&conf.make_command, jobs, &target.kernel);
        // dkms's invoke_command: the line, then `(bad exit status: N)` on it when make fails. Only
        // a build that runs alone can leave its line open; parallel ones print whole lines.
        let shown = format!("{}...", rewrite_make(&conf.make_command, Some(ctx.jobs.as_str()), &target.kernel));
        if ctx.verbose {
            // What really runs: under a jobserver, make takes its jobs from it (no -j).
            super::print_err(format_args!("xdkms: running {make_command}"));
        }
        let sole = ctx.sole_build.load(std::sync::atomic::Ordering::Relaxed);
        if sole {
            ctx.say_partial(&shown);
        } else {
            ctx.say(&shown);
        }
        let assignments: Vec<String> =
            self.variables(paths).iter().map(|(name, value)| format!("{name}={}", shell_quote(value))).collect();
        let script = format!("{}\n{{ {make_command}; }}", assignments.join(" "));
        let status =
            run_logged(sandbox, ctx.jobserver.as_ref(), &script, &self.build_dir, Some(&log_path), false, &make_env);
        if sole {
            match status.as_ref().ok().filter(|s| !s.success()).map(|s| s.code().unwrap_or(128)) {
                Some(code) => ctx.say(format!("(bad exit status: {code})")),
                None => ctx.say(""),
            }
        }
        if !status?.success() {
            let kept = self.version_dir.join("build").join("make.log");
            let mut lines = vec![
                format!("Bad return status for module build on kernel: {} ({})", target.kernel, target.arch),
                format!("Consult {} for more information.", ctx.shown(&kept).display()),
            ];
            // xdkms's own addition, shown only with --verbose (dkms prints the two lines above).
            if ctx.verbose {
                lines.extend(log_tail(&log_path));
            }
            return Err(Failure::new(Exit::MakeFailed, lines));
        }
        Ok(log_path)
    }

    /// dkms's variables as the make command and the build_environment file see them.
    fn variables(&self, paths: &ScopePaths) -> Vec<(&'static str, String)> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            ("kernelver", self.target.kernel.clone()),
            ("arch", self.target.arch.clone()),
            ("kernel_source_dir", path(&paths.kernel_source_dir)),
            ("dkms_tree", path(&paths.dkms_tree)),
            ("source_tree", path(&paths.source_tree)),
            ("install_tree", path(&paths.install_tree)),
            ("module", self.module.to_string()),
            ("module_version", self.version.to_string()),
        ]
    }

    /// CC, MAKEFLAGS (the target's ARCH/CROSS_COMPILE, kernel directory variables inside a
    /// root) and a PATH whose `uname` answers as the target kernel.
    fn make_environment(&self, paths: &ScopePaths, environment: &[(String, String)]) -> Result<Vec<(String, String)>> {
        let mut make_env: Vec<(String, String)> = Vec::new();
        let cc = match &self.build_target.toolchain {
            Some(toolchain) => toolchain.cc.clone(),
            None => compiler_from_config(&self.config_text),
        };
        if let Some(cc) = cc {
            make_env.push(("CC".into(), cc));
        }
        let mut make_variables = self.build_target.make_variables();
        if self.ctx.image_mode() {
            for name in KERNEL_DIR_VARIABLES {
                make_variables.push((name.to_string(), paths.kernel_source_dir.to_string_lossy().into_owned()));
            }
        }
        // framework.conf's build_environment comes after what xdkms sets (dkms 3.4 sources it
        // after choosing CC), so its values win; its PATH and MAKEFLAGS are extended.
        let from_file = |name: &str| environment.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        make_env.extend(environment.iter().filter(|(n, _)| n != "PATH" && n != "MAKEFLAGS").cloned());
        if !make_variables.is_empty() {
            let ours = make_flags(&make_variables);
            let flags = from_file("MAKEFLAGS").map_or_else(|| ours.clone(), |theirs| format!("{theirs} {ours}"));
            make_env.push(("MAKEFLAGS".into(), flags));
        } else if let Some(theirs) = from_file("MAKEFLAGS") {
            make_env.push(("MAKEFLAGS".into(), theirs));
        }
        let shim_dir = self.staging.dir.join("bin");
        super::target::write_uname_shim(&shim_dir, &self.target.kernel, &self.target.arch)
            .map_err(io(format!("writing {}", shim_dir.display())))?;
        let path = from_file("PATH").unwrap_or_else(|| std::env::var("PATH").unwrap_or_default());
        make_env.push(("PATH".into(), format!("{}:{path}", shim_dir.display())));
        Ok(make_env)
    }

    /// Every module the conf names must have been built.
    fn check_built(&self, conf: &Conf) -> Result<()> {
        for record in &conf.modules {
            let built = self.build_dir.join(format!("{}{}.ko", record.built_location, record.built_name));
            if !built.is_file() {
                return Err(Failure::new(
                    Exit::ModuleNotBuilt,
                    [
                        format!(
                            " Build of {}.ko failed for: {} ({})",
                            record.built_name, self.target.kernel, self.target.arch
                        ),
                        "Make sure the name of the generated module is correct and at the root of the".to_string(),
                        "build directory, or consult make.log in the build directory".to_string(),
                        format!("{} for more information.", self.ctx.shown(&self.version_dir.join("build")).display()),
                    ],
                ));
            }
        }
        Ok(())
    }

    /// Each built module stripped, signed and compressed into `<result>/module`.
    fn collect_modules(
        &self,
        conf: &Conf,
        result: &Path,
        signer: Option<&super::sign::Signer>,
    ) -> Result<Vec<BuiltModule>> {
        let ctx = self.ctx;
        let module_dir = result.join("module");
        ctx.root.create_dir_all(&module_dir).map_err(io(format!("creating {}", module_dir.display())))?;
        let codec = choose_compression(ctx, &self.target.kernel, &self.config_text)?;
        let strip = self.build_target.strip();
        let mut records = Vec::new();
        for record in &conf.modules {
            let built = self.build_dir.join(format!("{}{}.ko", record.built_location, record.built_name));
            if record.strip {
                let what = format!("{strip} -g {}", built.display());
                super::commands::run_tool(Command::new(&strip).arg("-g").arg(&built), &what).map_err(|e| {
                    Failure::new(
                        Exit::MakeFailed,
                        [e, "Set STRIP[i]=no in dkms.conf or put the target's strip on PATH.".to_string()],
                    )
                })?;
            }
            if let Some(signer) = signer {
                super::sign::sign(ctx, signer, &built, &self.shown_build_path(&built));
            }
            let bytes = ctx.root.read(&built).map_err(io(format!("reading {}", built.display())))?;
            let (suffix, data) = match codec {
                Codec::None => (".ko", bytes),
                other => {
                    let data = encode(other, &bytes, compression_level(other))
                        .map_err(io(format!("compressing {}", built.display())))?;
                    (suffix_of(other), data)
                }
            };
            let dest = module_dir.join(format!("{}{suffix}", record.dest_name));
            ctx.root.write(&dest, &data).map_err(io(format!("writing {}", dest.display())))?;
            records.push(BuiltModule {
                dest_name: record.dest_name.clone(),
                dest_location: record.dest_location.clone(),
                dest_location_raw: record.dest_location_raw.clone(),
            });
        }
        let symvers = self.build_dir.join("Module.symvers");
        if let Ok(data) = ctx.root.read(&symvers) {
            let _ = ctx.root.write(&module_dir.join("Module.symvers"), &data);
        }
        Ok(records)
    }

    /// make.log and the kernel's configuration into `<result>/log`.
    fn keep_logs(&self, log_path: &Path, result: &Path) -> Result<()> {
        let root = &self.ctx.root;
        let log_dir = result.join("log");
        root.create_dir_all(&log_dir).map_err(io(format!("creating {}", log_dir.display())))?;
        // The configuration may be a build host file (--kernel-build, --config).
        if let Ok(config_path) = self.ctx.kernel_config_path(&self.target.kernel) {
            if config_path.is_file() {
                let _ = root.copy_in(&config_path, &log_dir.join(".config"));
            }
        }
        root.rename(log_path, &log_dir.join("make.log")).map_err(io(format!("moving {}", log_path.display())))
    }

    /// The result renamed to `<k>/<arch>` in one step; dkms's shared build directory deleted
    /// (a failed build keeps make.log there).
    fn put_in_place(&self, result: &Path) -> Result<()> {
        let root = &self.ctx.root;
        root.set_permissions(result, std::fs::Permissions::from_mode(0o755))
            .map_err(io(format!("setting the mode of {}", result.display())))?;
        root.rename(result, &self.base_dir).map_err(io(format!("moving the build to {}", self.base_dir.display())))?;
        let _ = root.remove_all(&self.version_dir.join("build"));
        if self.ctx.verbose {
            super::print_err(format_args!(
                "xdkms: build completed for {}/{} on {} ({})",
                self.module, self.version, self.target.kernel, self.target.arch
            ));
        }
        Ok(())
    }

    /// A path of the build directory as dkms shows it: in the shared `<m>/<v>/build` of the
    /// dkms tree as the target sees it, not in this build's staging copy.
    fn shown_build_path(&self, host: &Path) -> PathBuf {
        let shown_build = self.ctx.shown(&self.version_dir.join("build"));
        match host.strip_prefix(&self.build_dir) {
            Ok(rest) => shown_build.join(rest),
            Err(_) => self.ctx.shown(host),
        }
    }
}

/// `<k>/<arch>` must not exist yet.
fn check_not_built(ctx: &Ctx, target: &Target, base_dir: &Path) -> Result<()> {
    if !ctx.root.is_dir(base_dir) {
        return Ok(());
    }
    Err(Failure::new(
        Exit::TreeState,
        [
            format!("This module/version has already been built on: {}", target.kernel),
            format!(
                "Directory {} already exists. Use the dkms remove function before trying to build again.",
                base_dir.display()
            ),
        ],
    ))
}

/// The failure for a kernel that BUILD_EXCLUSIVE rules out.
fn excluded(module: &str, base_dir: &Path) -> Failure {
    Failure::new(
        Exit::Excluded,
        [
            format!(
                "The {}/dkms.conf for module {module} includes a BUILD_EXCLUSIVE directive which does not match this kernel/arch/config.",
                base_dir.display()
            ),
            "This indicates that it should not be built.".to_string(),
        ],
    )
}

/// The source must hold something (dkms: at least two entries).
fn check_source(ctx: &Ctx, source_dir: &Path, version_dir: &Path) -> Result<()> {
    let source_entries = ctx.root.read_dir(source_dir).map(|d| d.len()).unwrap_or(0);
    if source_entries >= 2 {
        return Ok(());
    }
    Err(Failure::new(
        Exit::EmptySource,
        [
            format!(
                "The directory {} does not appear to have module source located within it.",
                ctx.shown(&version_dir.join("source")).display()
            ),
            "Build halted.".to_string(),
        ],
    ))
}

/// The headers must be there, and be the kernel's: modules carry the headers' UTS_RELEASE in
/// their vermagic, so other headers would build modules the kernel refuses.
fn check_headers(ctx: &Ctx, headers: &Path, kernel: &str) -> Result<()> {
    if !headers.join("include").is_dir() {
        // dkms's words, naming the kernel's two places as the target sees them (also when
        // --kernelsourcedir named the directory: dkms does not say it either).
        let kernel_dir = ctx.install_tree_target.join(kernel);
        let looked_at = format!("{} or {}", kernel_dir.join("build").display(), kernel_dir.join("source").display());
        return Err(Failure::new(
            Exit::NoHeaders,
            [
                format!("Your kernel headers for kernel {kernel} cannot be found at {looked_at}."),
                format!(
                    "Please install the linux-headers-{kernel} package or use the --kernelsourcedir option to tell DKMS where it's located."
                ),
            ],
        ));
    }
    match cross::kernel::headers_release(headers).filter(|r| r != kernel) {
        None => Ok(()),
        Some(release) => Err(Failure::new(
            Exit::NoHeaders,
            [
                format!(
                    "The headers at {} are for kernel {release}, not {kernel} (include/generated/utsrelease.h).",
                    headers.display()
                ),
                format!("Give -k {release}, or the headers of {kernel} with --kernelsourcedir or --kernel-build."),
            ],
        )),
    }
}

/// dkms's rewrite: a command starting with `make` becomes `make -jN KERNELRELEASE=<kernel> ...`;
/// `'make'` (quoted) is left alone.
pub fn rewrite_make(command: &str, jobs: Option<&str>, kernel: &str) -> String {
    match (command.strip_prefix("make"), jobs) {
        (Some(rest), Some(jobs)) => format!("make -j{jobs} KERNELRELEASE={kernel}{rest}"),
        (Some(rest), None) => format!("make KERNELRELEASE={kernel}{rest}"),
        (None, _) => command.to_string(),
    }
}

/// Module Makefiles often default the kernel directory to the build host's
/// `/lib/modules/$(KVER)/build` under one of a few conventional names. Inside a root that path is
/// the host's, not the target's, so each name is set to the target's headers for every make the
/// build runs (variables in MAKEFLAGS act as command-line assignments and reach sub-makes).
const KERNEL_DIR_VARIABLES: &[&str] = &["KDIR", "KERNELDIR", "KERNEL_DIR", "KERNEL_SRC", "KSRC", "KERNEL_TREE"];

/// MAKEFLAGS for a build's makes: the caller's own flags without its job settings (the build's
/// jobserver supplies those), then `variables` as command-line assignments.
fn make_flags(variables: &[(String, String)]) -> String {
    let inherited = std::env::var("MAKEFLAGS").unwrap_or_default();
    let mut words: Vec<String> = inherited
        .split_whitespace()
        .filter(|w| !(w.starts_with("--jobserver-auth=") || w.starts_with("--jobserver-fds=") || w.starts_with("-j")))
        .map(str::to_string)
        .collect();
    for (name, value) in variables {
        words.push(format!("{name}={}", value.replace(' ', "\\ ")));
    }
    words.join(" ")
}

/// For an architecture the target table does not know: the compiler the kernel was built with,
/// when it is on PATH, the first word of CONFIG_CC_VERSION_TEXT (as dkms exports CC).
fn compiler_from_config(config: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    cross::toolchain::kernel_cc_program(config).filter(|cc| cross::toolchain::find_on_path(cc, &path).is_some())
}

/// The compression of installed modules: --compress, else the kernel's CONFIG_MODULE_COMPRESS_*,
/// else the suffix of the kernel's existing modules (as dkms 3.1.3+ looks for `*.ko.*`).
pub fn choose_compression(ctx: &Ctx, kernel: &str, config: &str) -> Result<Codec> {
    if let Some(name) = &ctx.compress {
        return match name.as_str() {
            "none" => Ok(Codec::None),
            "gz" | "gzip" => Ok(Codec::Gzip),
            "xz" => Ok(Codec::Xz),
            "zst" | "zstd" => Ok(Codec::Zstd),
            other => Err(Failure::new(Exit::BadArguments, [format!("--compress {other}: use none, gz, xz or zst")])),
        };
    }
    for (symbol, codec) in [
        ("CONFIG_MODULE_COMPRESS_ZSTD=y", Codec::Zstd),
        ("CONFIG_MODULE_COMPRESS_XZ=y", Codec::Xz),
        ("CONFIG_MODULE_COMPRESS_GZIP=y", Codec::Gzip),
    ] {
        if config.lines().any(|l| l == symbol) {
            return Ok(codec);
        }
    }
    Ok(existing_suffix(&ctx.install_tree.join(kernel)).unwrap_or(Codec::None))
}

/// The compression of the first compressed module under `dir` (zst over xz over gz, as dkms).
fn existing_suffix(dir: &Path) -> Option<Codec> {
    let mut found = None;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if name.ends_with(".ko.zst") {
                return Some(Codec::Zstd);
            } else if name.ends_with(".ko.xz") {
                found = Some(Codec::Xz);
            } else if name.ends_with(".ko.gz") && found.is_none() {
                found = Some(Codec::Gzip);
            }
        }
    }
    found
}

/// The levels the kernel's own `make modules_install` uses (gzip -9, xz default, zstd -19 is
/// what dkms's 3.0.10 used with --ultra -20; 19 keeps memory modest at load time).
fn compression_level(codec: Codec) -> Level {
    match codec {
        Codec::Gzip => Level(Some(9)),
        Codec::Zstd => Level(Some(19)),
        _ => Level(None),
    }
}

/// The module suffix of a codec.
pub fn suffix_of(codec: Codec) -> &'static str {
    match codec {
        Codec::Gzip => ".ko.gz",
        Codec::Xz => ".ko.xz",
        Codec::Zstd => ".ko.zst",
        _ => ".ko",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_rewrite_rule() {
        assert_eq!(rewrite_make("make -C /k M=/b", Some("4"), "6.1"), "make -j4 KERNELRELEASE=6.1 -C /k M=/b");
        assert_eq!(rewrite_make("'make' -C /k", Some("4"), "6.1"), "'make' -C /k");
        assert_eq!(rewrite_make("make", Some(""), "6.1"), "make -j KERNELRELEASE=6.1");
        assert_eq!(rewrite_make("make all", None, "6.1"), "make KERNELRELEASE=6.1 all");
    }
}
