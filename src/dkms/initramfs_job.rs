//! `initramfs-inject`: a plan's last job for a kernel: the modules its install job installed
//! (each package's DEST_MODULE_NAMEs, as the root's indexes now know them), with their
//! dependencies and firmware, added to the initramfs at a path inside the root.

use super::{Ctx, Failure, Result, Target};
use crate::exit::Exit;

/// The path of a kernel's initramfs inside the root: `template` with `{kernel}` replaced.
pub fn path_for(template: &str, kernel: &str) -> String {
    template.replace("{kernel}", kernel)
}

/// The initramfs `inside` the root, as a host path; an error naming it when the root has no
/// such file (the plan checks this before any job runs).
pub fn initramfs_in_root(ctx: &Ctx, inside: &str) -> Result<std::path::PathBuf> {
    let host = ctx.root.resolve(inside).map_err(|e| Failure::io(format!("resolving {inside} inside the root"), e))?;
    if !host.is_file() {
        return Err(Failure::new(
            Exit::BadArguments,
            [
                format!("--initramfs {inside}: no such file in the root {}.", ctx.root.root().display()),
                "Make the initramfs first, or give the path it has in the root ({kernel} stands for the kernel)."
                    .to_string(),
            ],
        ));
    }
    Ok(host)
}

/// Adds the modules of `modules` built for `target` (those BUILD_EXCLUSIVE keeps out left
/// out) to the initramfs at `inside`, rewritten in place with its own compression.
pub fn inject(ctx: &Ctx, modules: &[(String, String)], target: &Target, inside: &str) -> Result<()> {
    let image = initramfs_in_root(ctx, inside)?;
    let mut names = Vec::new();
    for (module, version) in modules {
        let conf = ctx.module_conf_quietly(module, version, target)?;
        if !conf.excluded {
            names.extend(conf.modules.iter().map(|record| record.dest_name.clone()));
        }
    }
    if names.is_empty() {
        ctx.say(format!("Nothing to add to {inside}: every module is excluded for kernel {}.", target.kernel));
        return Ok(());
    }
    let options = crate::inject::Options {
        image,
        root: ctx.root.root().to_path_buf(),
        version: target.kernel.clone(),
        mode: crate::inject::Mode::Rewrite,
        compress: None,
        output: None,
        items: names,
        kmod: crate::kmod_release::detect(&ctx.root).map(|found| found.release).unwrap_or_default(),
        level: None,
        max_unpacked: crate::inject::DEFAULT_MAX_UNPACKED,
    };
    let report = crate::inject::run(&options)
        .map_err(|e| Failure::new(Exit::Failed, [format!("Adding modules to {inside}: {e:#}")]))?;
    for warning in &report.warnings {
        ctx.warn(warning);
    }
    ctx.say(format!(
        "Added {} modules and {} firmware files to {inside} for kernel {}.",
        report.modules.len(),
        report.firmware.len(),
        target.kernel
    ));
    Ok(())
}
