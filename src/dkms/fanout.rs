//! `build-one` and `collect`: a plan's build jobs run one at a time, anywhere, and their
//! outputs installed into the root afterwards, so a fan-out/fan-in pipeline ends in the root
//! one `install` run makes.
//!
//! A build job's output (`build-one --out DIR`) is the build's result directory (`<k>/<arch>`
//! of the dkms tree: modules, Module.symvers, logs, records) as an entry of the build cache's
//! format: `files/` and a `manifest` naming every input hash and every file's sha256. `collect`
//! checks each output against its manifest, puts it into the root's dkms tree as a build would,
//! and installs it.

use std::path::{Path, PathBuf};

use super::tally::Tally;
use super::{build, cache, depends, install, tree, Ctx, Failure, Result, Target};
use crate::build_cache::CheckedEntry;
use crate::exit::Exit;

/// One build job: the modules it builds against (BUILD_DEPENDS) built (restored, when the
/// cache has them) and installed in this root first, without indexes, as an install run would
/// have done; then the module, and with `out`, its result written there.
pub fn build_one(ctx: &Ctx, module: &str, version: &str, target: &Target, out: Option<&Path>) -> Result<()> {
    let conf = ctx.module_conf(module, version, target, false)?;
    for dependency in &conf.build_depends {
        let Some(dependency_version) = depends::newest_version(ctx, dependency) else { continue };
        build::build_if_missing(ctx, dependency, &dependency_version, target)?;
        install::maybe_install(ctx, dependency, &dependency_version, target)?;
    }
    let tally = Tally::new(ctx, 1);
    let started = tally.start(module, version, target);
    let result = match out {
        None => build::build_if_missing(ctx, module, version, target),
        Some(out) => {
            // The output must come from this run's build, whose inputs are known.
            if tree::is_built(ctx, module, version, target) {
                build::unbuild(ctx, module, version, target)?;
            }
            build::build(ctx, module, version, target).and_then(|()| write_output(ctx, module, version, target, out))
        }
    };
    tally.finish(ctx, module, version, target, started, &result);
    result
}

/// The result of the build just made, written to `out` as an entry (beside it, renamed over
/// it).
fn write_output(ctx: &Ctx, module: &str, version: &str, target: &Target, out: &Path) -> Result<()> {
    let id = super::build_id(module, version, target);
    let slot = ctx
        .built_keys
        .as_ref()
        .and_then(|keys| keys.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned())
        .ok_or_else(|| {
            Failure::new(Exit::Failed, [format!("the build of {module}/{version} left no record of its inputs")])
        })?;
    let result = ctx.in_root(&ctx.version_dir(module, version).join(&target.kernel).join(&target.arch))?;
    let out = crate::fsio::absolute(out.to_path_buf());
    let failed = |e: std::io::Error| Failure::io(format!("writing {}", out.display()), e);
    let parent = out.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(failed)?;
    let staging = tempfile::Builder::new().prefix(".xdkms-out-").tempdir_in(parent).map_err(failed)?;
    crate::build_cache::write_entry(staging.path(), &slot.key, &slot.inputs, &result).map_err(failed)?;
    replace_dir(&staging.keep(), &out).map_err(failed)
}

/// `new` renamed to `dest`; a directory already there is moved aside first and removed after.
fn replace_dir(new: &Path, dest: &Path) -> std::io::Result<()> {
    let old = dest.with_file_name(format!(".xdkms-old-{}", std::process::id()));
    let had_old = std::fs::rename(dest, &old).is_ok();
    let renamed = std::fs::rename(new, dest);
    if renamed.is_err() {
        let _ = std::fs::remove_dir_all(new);
        if had_old {
            let _ = std::fs::rename(&old, dest);
        }
    } else if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    renamed
}

/// One `build-one` output found and checked.
struct Collected {
    module: String,
    version: String,
    target: Target,
    entry: CheckedEntry,
}

/// Installs the builds in `outputs` (directories `build-one --out` wrote) into the root: each
/// checked, put into the dkms tree where its build would have left it, then installed, in
/// (module, version, kernel, arch) order; the indexes are regenerated at the end of the run.
pub fn collect(ctx: &Ctx, outputs: &[PathBuf]) -> Result<()> {
    if outputs.is_empty() {
        return Err(Failure::new(Exit::Usage, ["collect needs the directories build-one --out wrote."]));
    }
    let mut collected = outputs.iter().map(|dir| read_output(ctx, dir)).collect::<Result<Vec<_>>>()?;
    collected.sort_by(|a, b| {
        (&a.module, &a.version, &a.target.kernel, &a.target.arch).cmp(&(
            &b.module,
            &b.version,
            &b.target.kernel,
            &b.target.arch,
        ))
    });
    for job in &collected {
        if tree::is_built(ctx, &job.module, &job.version, &job.target) {
            ctx.say(format!(
                "Module {}/{} already built for kernel {} ({}), skip.",
                job.module, job.version, job.target.kernel, job.target.arch
            ));
            continue;
        }
        place(ctx, job)?;
    }
    let mut last = Ok(());
    for job in &collected {
        if let Err(failure) = install::maybe_install(ctx, &job.module, &job.version, &job.target) {
            super::report(ctx, &failure);
            last = Err(Failure { code: failure.code, lines: Vec::new() });
        }
    }
    last
}

/// The output at `dir`, checked against its manifest, for a module added in the root.
fn read_output(ctx: &Ctx, dir: &Path) -> Result<Collected> {
    let not_output = |why: String| {
        Failure::new(
            Exit::BadArguments,
            [
                format!("{}: not a build-one output ({why}).", dir.display()),
                "Give the directories build-one --out wrote.".to_string(),
            ],
        )
    };
    let entry = CheckedEntry::read(dir).map_err(|e| not_output(e.to_string()))?;
    let input = |name: &str| entry.manifest.inputs.get(name).and_then(|value| value.split_once('/'));
    let (Some((module, version)), Some((kernel, arch))) = (input("module"), input("target")) else {
        return Err(not_output("its manifest names no module or kernel".to_string()));
    };
    let (module, version) = (module.to_string(), version.to_string());
    let target = Target { kernel: kernel.to_string(), arch: arch.to_string() };
    if !tree::is_added(ctx, &module, &version) {
        return Err(Failure::new(
            Exit::TreeState,
            [format!(
                "{}: {module}/{version} is not added in the root: add its source before collecting its builds.",
                dir.display()
            )],
        ));
    }
    Ok(Collected { module, version, target, entry })
}

/// A collected build put where its build would have left it: written beside, renamed into
/// `<m>/<v>/<k>/<arch>`.
fn place(ctx: &Ctx, job: &Collected) -> Result<()> {
    let kernel_dir = ctx.in_root(&ctx.version_dir(&job.module, &job.version).join(&job.target.kernel))?;
    // Named as a build's staging directory, so that a killed run's is removed by the next.
    let staging = kernel_dir.join(format!(".tmp_{}_{}", job.target.arch, std::process::id()));
    let _ = ctx.root.remove_all(&staging);
    cache::write_entry_into(ctx, &job.entry, &staging)?;
    let dest = kernel_dir.join(&job.target.arch);
    ctx.root
        .set_permissions(&staging, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .and_then(|()| ctx.root.rename(&staging, &dest))
        .map_err(|e| {
            let _ = ctx.root.remove_all(&staging);
            Failure::io(format!("moving the build to {}", ctx.shown(&dest).display()), e)
        })?;
    // As a build ends: dkms's shared build directory (add made it) goes.
    if let Ok(version_dir) = ctx.in_root(&ctx.version_dir(&job.module, &job.version)) {
        let _ = ctx.root.remove_all(&version_dir.join("build"));
    }
    Ok(())
}
