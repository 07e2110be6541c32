//! `build`: one (module, version, kernel, arch) built in its own staging directory, then moved
//! into `<m>/<v>/<kernel>/<arch>` in one rename.
//!
//! dkms builds every kernel in the single `<m>/<v>/build`, so two kernels cannot build at once.
//! Here each build gets `<m>/<v>/<kernel>/.tmp_<arch>_<pid>/`, holding a small dkms tree of its
//! own (`tree/<m>/<v>/{build,source}`) that the dkms.conf is evaluated against: `$dkms_tree`
//! names it, so a MAKE line that spells out `M=$dkms_tree/$PACKAGE_NAME/$PACKAGE_VERSION/build`
//! builds in the isolated copy. A killed build leaves only the staging directory, which the
//! next run removes; `status` never sees a half-built module.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use initramfs::codec::{encode, Codec, Level};

use super::sandbox::Sandbox;
use super::tree::{self, BuiltModule};
use super::{exit, Ctx, Failure, Result, Target, View};

/// How many lines of a failed make.log are shown.
const LOG_TAIL_LINES: usize = 20;

/// dkms's maybe_build_module: skip with a message when built, unless --force.
pub fn maybe_build(ctx: &Ctx, module: &str, version: &str, target: &Target) -> Result<()> {
    if tree::is_broken(ctx, module, version) {
        return Err(broken(module, version));
    }
    if tree::is_built(ctx, module, version, target) {
        if ctx.force {
            super::install::unbuild(ctx, module, version, target)?;
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
        return Err(broken(module, version));
    }
    if tree::is_built(ctx, module, version, target) {
        return Ok(());
    }
    build(ctx, module, version, target)
}

/// The failure for a module whose source is gone.
pub fn broken(module: &str, version: &str) -> Failure {
    Failure::new(
        4,
        [
            format!("{module}/{version} is broken!"),
            "Missing the module source directory or the symbolic link pointing to it.".to_string(),
            "Manual intervention is required!".to_string(),
        ],
    )
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

/// dkms's do_build for one kernel.
pub fn build(ctx: &Ctx, module: &str, version: &str, target: &Target) -> Result<()> {
    // Resolved once inside the root: the build's commands get these paths.
    let version_dir = ctx.in_root(&ctx.version_dir(module, version))?;
    let kernel_dir = ctx.in_root(&version_dir.join(&target.kernel))?;
    let base_dir = kernel_dir.join(&target.arch);
    if ctx.root.is_dir(&base_dir) {
        return Err(Failure::new(
            exit::TREE_STATE,
            [
                format!("This module/version has already been built on: {}", target.kernel),
                format!(
                    "Directory {} already exists. Use the dkms remove function before trying to build again.",
                    base_dir.display()
                ),
            ],
        ));
    }
    let staging =
        Staging { root: &ctx.root, dir: kernel_dir.join(format!(".tmp_{}_{}", target.arch, std::process::id())) };
    let build_tree = staging.dir.join("tree");
    let build_dir = build_tree.join(module).join(version).join("build");
    let conf_path = ctx.conf_path(module, version)?;
    let conf = ctx.read_conf(module, version, target, &conf_path, &ctx.dkms_tree, true)?;
    if conf.excluded {
        return Err(Failure::new(
            exit::EXCLUDED,
            [
                format!(
                    "The {}/dkms.conf for module {module} includes a BUILD_EXCLUSIVE directive which does not match this kernel/arch/config.",
                    base_dir.display()
                ),
                "This indicates that it should not be built.".to_string(),
            ],
        ));
    }
    let source_dir = ctx.source_dir(module, version)?;
    let source_entries = ctx.root.read_dir(&source_dir).map(|d| d.len()).unwrap_or(0);
    if source_entries < 2 {
        return Err(Failure::new(
            8,
            [
                format!(
                    "The directory {} does not appear to have module source located within it.",
                    version_dir.join("source").display()
                ),
                "Build halted.".to_string(),
            ],
        ));
    }
    let headers = ctx.kernel_source_dir(&target.kernel)?;
    if !headers.join("include").is_dir() {
        return Err(Failure::new(
            exit::NO_HEADERS,
            [
                format!("Your kernel headers for kernel {} cannot be found at {}.", target.kernel, headers.display()),
                format!(
                    "Please install the linux-headers-{} package or use the --kernelsourcedir option to tell DKMS where it's located.",
                    target.kernel
                ),
            ],
        ));
    }
    // Modules carry the headers' UTS_RELEASE in their vermagic: other headers than the kernel's
    // would build modules it refuses.
    if let Some(release) = cross::kernel::headers_release(&headers).filter(|r| r != &target.kernel) {
        return Err(Failure::new(
            exit::NO_HEADERS,
            [
                format!(
                    "The headers at {} are for kernel {release}, not {} (include/generated/utsrelease.h).",
                    headers.display(),
                    target.kernel
                ),
                format!(
                    "Give -k {release}, or the headers of {} with --kernelsourcedir or --kernel-build.",
                    target.kernel
                ),
            ],
        ));
    }
    let config_text = ctx.kernel_config_text(&target.kernel);
    let build_target = super::target::prepare(ctx, target, &headers, &config_text)?;
    let io = |what: String| move |e: std::io::Error| Failure::io(what, e);
    ctx.root
        .create_dir_all(build_dir.parent().unwrap_or(&build_tree))
        .map_err(io(format!("creating {}", staging.dir.display())))?;
    tree::copy_tree(&ctx.root, &source_dir, &build_dir).map_err(io(format!("copying {}", source_dir.display())))?;
    ctx.root
        .symlink(&source_dir, &build_tree.join(module).join(version).join("source"))
        .map_err(io(format!("creating {}", build_tree.display())))?;
    // The other modules stay reachable through the build's dkms tree (a conf may read a
    // dependency's Module.symvers there).
    for other in tree::sorted_dirs(&ctx.root, &ctx.dkms_tree).into_iter().filter(|o| o != module) {
        let _ = ctx.root.symlink(&ctx.dkms_tree.join(&other), &build_tree.join(&other));
    }
    let sandbox = ctx.sandbox(&build_tree, &staging.dir.join("mounts"), Some(&target.kernel));
    let sandbox = sandbox.as_ref();
    // From here on a failure leaves the build directory where dkms leaves it, `<m>/<v>/build`,
    // for inspection (make.log included).
    let outcome = (|| -> Result<()> {
        // Without a sandbox, the headers may need a view usable from the host (see
        // cross::kernel::kbuild_dir). The conf is read again for the build's own tree and paths.
        let headers_view = match sandbox {
            Some(_) => None,
            None => {
                let kbuild = cross::kernel::kbuild_dir(&ctx.root, &headers, &staging.dir.join("kbuild"))
                    .map_err(io(format!("preparing the kernel headers at {}", headers.display())))?;
                (kbuild.path != headers).then_some(kbuild.path)
            }
        };
        let view = View { build_tree: &build_tree, sandbox, headers_view: headers_view.as_deref() };
        let conf = ctx.read_conf_in(module, version, target, &conf_path, &view, true)?;
        let paths = ctx.scope_paths(&target.kernel, &view)?;

        ctx.say("");
        ctx.say("Building module:");
        for patch in &conf.patches {
            if Path::new(patch).components().any(|c| c == std::path::Component::ParentDir) {
                return Err(Failure::new(
                    5,
                    [format!("Patch {patch} as specified in dkms.conf contains '..' path component.")],
                ));
            }
            if !build_dir.join("patches").join(patch).is_file() {
                return Err(Failure::new(
                    5,
                    [
                        format!(" Patch {patch} as specified in dkms.conf cannot be"),
                        format!("found in {}/patches/.", build_dir.display()),
                    ],
                ));
            }
            ctx.say(format!("applying patch {patch}..."));
            let script = format!("patch -p1 < ./patches/{}", shell_quote(patch));
            if !run_logged(sandbox, None, &script, &build_dir, None, ctx.quiet, &[])? {
                return Err(Failure::new(
                    6,
                    [
                        format!("Application of patch {patch} failed."),
                        format!("Check {} for more information.", build_dir.display()),
                    ],
                ));
            }
        }

        // As in dkms, make.log starts after the patches (whose output goes to the console).
        let log_path = build_dir.join("make.log");
        let mut log = ctx.root.create_file(&log_path).map_err(io(format!("creating {}", log_path.display())))?;
        let date = Command::new("date").output().map(|o| o.stdout).unwrap_or_default();
        let _ = writeln!(log, "DKMS make.log for {module}-{version} for kernel {} ({})", target.kernel, target.arch);
        let _ = log.write_all(&date);

        let mut make_env: Vec<(String, String)> = Vec::new();
        let cc = match &build_target.toolchain {
            Some(toolchain) => toolchain.cc.clone(),
            None => compiler_from_config(&config_text),
        };
        if let Some(cc) = cc {
            make_env.push(("CC".into(), cc));
        }
        let mut make_variables = build_target.make_variables();
        if ctx.image_mode() {
            for name in KERNEL_DIR_VARIABLES {
                make_variables.push((name.to_string(), paths.kernel_source_dir.to_string_lossy().into_owned()));
            }
        }
        if !make_variables.is_empty() {
            make_env.push(("MAKEFLAGS".into(), make_flags(&make_variables)));
        }
        // `uname -r`/`uname -m` in module Makefiles answer as the target kernel.
        let shim_dir = staging.dir.join("bin");
        super::target::write_uname_shim(&shim_dir, &target.kernel, &target.arch)
            .map_err(io(format!("writing {}", shim_dir.display())))?;
        let host_path = std::env::var("PATH").unwrap_or_default();
        make_env.push(("PATH".into(), format!("{}:{host_path}", shim_dir.display())));
        let jobserver = ctx.jobserver.as_ref();
        run_script_in(ctx, sandbox, "pre_build", &conf.pre_build, &build_dir);

        // With a shared jobserver, make takes its -j from MAKEFLAGS.
        let jobs = if ctx.jobserver.is_some() { None } else { Some(ctx.jobs.as_str()) };
        let make_command = rewrite_make(&conf.make_command, jobs, &target.kernel);
        ctx.say(format!("{make_command}..."));
        let assignments = format!(
            "kernelver={} arch={} kernel_source_dir={} dkms_tree={} source_tree={} install_tree={} module={} module_version={}\n",
            shell_quote(&target.kernel),
            shell_quote(&target.arch),
            shell_quote(&paths.kernel_source_dir.to_string_lossy()),
            shell_quote(&paths.dkms_tree.to_string_lossy()),
            shell_quote(&paths.source_tree.to_string_lossy()),
            shell_quote(&paths.install_tree.to_string_lossy()),
            shell_quote(module),
            shell_quote(version),
        );
        if !run_logged(
            sandbox,
            jobserver,
            &format!("{assignments}{{ {make_command}; }}"),
            &build_dir,
            Some(&log_path),
            false,
            &make_env,
        )? {
            let kept = version_dir.join("build").join("make.log");
            let mut lines = vec![
                format!("Bad return status for module build on kernel: {} ({})", target.kernel, target.arch),
                format!("Consult {} for more information.", kept.display()),
            ];
            lines.extend(log_tail(&log_path));
            return Err(Failure::new(exit::MAKE_FAILED, lines));
        }
        for record in &conf.modules {
            let built = build_dir.join(format!("{}{}.ko", record.built_location, record.built_name));
            if !built.is_file() {
                return Err(Failure::new(
                    7,
                    [
                        format!(" Build of {}.ko failed for: {} ({})", record.built_name, target.kernel, target.arch),
                        "Make sure the name of the generated module is correct and at the root of the".to_string(),
                        "build directory, or consult make.log in the build directory".to_string(),
                        format!("{} for more information.", version_dir.join("build").display()),
                    ],
                ));
            }
        }

        let result = staging.dir.join("result");
        let module_dir = result.join("module");
        let log_dir = result.join("log");
        for dir in [&module_dir, &log_dir] {
            ctx.root.create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        let codec = choose_compression(ctx, &target.kernel, &config_text)?;
        let strip = build_target.strip();
        let signer = super::sign::prepare(ctx, target);
        let mut records = Vec::new();
        for record in &conf.modules {
            let built = build_dir.join(format!("{}{}.ko", record.built_location, record.built_name));
            if record.strip {
                let status = Command::new(&strip).arg("-g").arg(&built).status();
                if !matches!(status, Ok(s) if s.success()) {
                    return Err(Failure::new(
                        exit::MAKE_FAILED,
                        [format!(
                            "{strip} -g {} failed; set STRIP[i]=no or put the target's strip on PATH.",
                            built.display()
                        )],
                    ));
                }
            }
            if let Some(signer) = &signer {
                super::sign::sign(ctx, signer, &built);
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
        let symvers = build_dir.join("Module.symvers");
        if let Ok(data) = ctx.root.read(&symvers) {
            let _ = ctx.root.write(&module_dir.join("Module.symvers"), &data);
        }
        // The configuration may be a build host file (--kernel-build, --config).
        if let Ok(config_path) = ctx.kernel_config_path(&target.kernel) {
            if config_path.is_file() {
                let _ = ctx.root.copy_in(&config_path, &log_dir.join(".config"));
            }
        }
        drop(log);
        ctx.root.rename(&log_path, &log_dir.join("make.log")).map_err(io(format!("moving {}", log_path.display())))?;
        // The record stands for the module's own conf: a build with -c or --directive has none,
        // so status evaluates the conf, as dkms does.
        if ctx.conf_override.is_none() && ctx.directives.is_empty() {
            tree::write_built_record(&ctx.root, &result, &records)
                .map_err(io(format!("writing {}", result.display())))?;
        }
        run_script_in(ctx, sandbox, "post_build", &conf.post_build, &build_dir);
        ctx.root
            .set_permissions(&result, std::fs::Permissions::from_mode(0o755))
            .map_err(io(format!("setting the mode of {}", result.display())))?;
        ctx.root.rename(&result, &base_dir).map_err(io(format!("moving the build to {}", base_dir.display())))?;
        // dkms deletes its shared build directory after a successful build (a failed one keeps
        // make.log there).
        let _ = ctx.root.remove_all(&version_dir.join("build"));
        ctx.say(format!("DKMS: build completed for {module}/{version} on {} ({}).", target.kernel, target.arch));
        Ok(())
    })();
    if outcome.is_err() && ctx.root.is_dir(&build_dir) {
        let kept = version_dir.join("build");
        let _ = ctx.root.remove_all(&kept);
        let _ = ctx.root.rename(&build_dir, &kept);
    }
    outcome
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
            other => Err(Failure::new(2, [format!("--compress {other}: use none, gz, xz or zst")])),
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

/// Runs a shell command in `dir` with its output appended to `log` (else on the console, or
/// nowhere with `quiet`); true on success.
fn run_logged(
    sandbox: Option<&Sandbox>,
    jobserver: Option<&jobserver::Client>,
    script: &str,
    dir: &Path,
    log: Option<&Path>,
    quiet: bool,
    env: &[(String, String)],
) -> Result<bool> {
    let (out, err) = match log {
        Some(log) => {
            let out = std::fs::OpenOptions::new()
                .append(true)
                .open(log)
                .map_err(|e| Failure::io(format!("opening {}", log.display()), e))?;
            let err = out.try_clone().map_err(|e| Failure::io(format!("opening {}", log.display()), e))?;
            (Stdio::from(out), Stdio::from(err))
        }
        None if quiet => (Stdio::null(), Stdio::null()),
        None => (Stdio::inherit(), Stdio::inherit()),
    };
    let mut command = match sandbox {
        Some(sandbox) => sandbox.command("bash", dir),
        None => Command::new("bash"),
    };
    command.arg("-c").arg(script).current_dir(dir).stdin(Stdio::null()).stdout(out).stderr(err);
    // dkms unsets these so that the kernel's own flags apply.
    for name in ["CC", "CXX", "CFLAGS", "CXXFLAGS", "LDFLAGS"] {
        command.env_remove(name);
    }
    let mut env = env.to_vec();
    if let Some(jobserver) = jobserver {
        jobserver.configure_make(&mut command);
        // Our MAKEFLAGS additions go after the jobserver's.
        let shared = command
            .get_envs()
            .find(|(k, _)| *k == "MAKEFLAGS")
            .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
            .unwrap_or_default();
        for (name, value) in &mut env {
            if name == "MAKEFLAGS" {
                *value = format!("{shared} {value}");
            }
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let status = command.status().map_err(|e| Failure::io("running bash (bash is required)", e))?;
    Ok(status.success())
}

/// The last lines of a log, indented, for an error message.
fn log_tail(log: &Path) -> Vec<String> {
    let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    let mut out = vec![format!("Last lines of make.log:")];
    out.extend(lines[start..].iter().map(|l| format!("  {l}")));
    out
}

/// Quotes a word for bash.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// dkms's run_build_script: `SCRIPT args` relative to `dir`, run there if executable, else a
/// warning. Its status only matters for pre_install.
pub fn run_script(ctx: &Ctx, kind: &str, value: &str, dir: &Path) -> bool {
    run_script_in(ctx, ctx.tree_sandbox(), kind, value, dir)
}

/// [`run_script`], inside the build's sandbox when there is one.
fn run_script_in(ctx: &Ctx, sandbox: Option<&Sandbox>, kind: &str, value: &str, dir: &Path) -> bool {
    let mut words = value.split_whitespace();
    let Some(script) = words.next() else { return true };
    let path = dir.join(script);
    let executable = std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    ctx.say("");
    if !executable {
        ctx.warn(format!("The {kind} script is not executable."));
        return true;
    }
    ctx.say(format!("Running the {kind} script:"));
    let mut command = match sandbox {
        Some(sandbox) => sandbox.command(sandbox.target_path(&path), dir),
        None => Command::new(&path),
    };
    command.args(words).current_dir(dir).stdin(Stdio::null());
    if ctx.quiet {
        command.stdout(Stdio::null()).stderr(Stdio::null());
    }
    matches!(command.status(), Ok(s) if s.success())
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
