//! `match`: build and install for one kernel what another kernel has installed (dkms 3.4's
//! run_match; dkms 3.0.10's reads its own status lines wrongly and matches nothing usable).

use super::{build, install, print_err, tree, Ctx, Failure, Result, Target};
use crate::exit::Exit;

/// Builds and installs on `target` every module/version installed for `template` (and the same
/// architecture), or only those of `module` when one is named.
pub fn run_match(ctx: &Ctx, template: Option<&str>, module: Option<&str>, target: &Target) -> Result<()> {
    let Some(template) = template else {
        return Err(Failure::new(
            Exit::Usage,
            [
                "Invalid number of parameters passed.",
                "Usage: match --templatekernel=<kernel-version> -k <kernel-version>",
                "   or: match --templatekernel=<kernel-version> -k <kernel-version> <module>",
            ],
        ));
    };
    if template == target.kernel {
        return Err(Failure::new(
            Exit::BadArguments,
            ["The templatekernel and the specified kernel version are the same."],
        ));
    }
    let mut installed: Vec<(String, String)> = tree::entries(ctx, "", "", template, &target.arch)
        .into_iter()
        .filter(|entry| entry.state == "installed" && entry.kernel.as_deref() == Some(template))
        .map(|entry| (entry.module, entry.version))
        .collect();
    if let Some(module) = module {
        if !ctx.root.is_dir(&ctx.dkms_tree.join(module)) {
            return Err(Failure::new(
                Exit::TreeState,
                [format!("The module: {module} is not located in the DKMS tree.")],
            ));
        }
        installed.retain(|(m, _)| m == module);
    }
    ctx.say("");
    ctx.say(format!("Matching modules in kernel: {} ({})", target.kernel, target.arch));
    ctx.say(format!("to the configuration of kernel: {template} ({})", target.arch));
    if installed.is_empty() {
        ctx.say("");
        ctx.say("There is nothing to be done for this match.");
        return Ok(());
    }
    for (module, version) in installed {
        ctx.say(format!("Module:  {module}"));
        ctx.say(format!("Version: {version}"));
        if tree::is_broken(ctx, &module, &version) {
            print_err(format_args!(
                "Error! {module}/{version} is broken!\nMissing the source directory or the symbolic link pointing to it.\nManual intervention is required!"
            ));
            continue;
        }
        build::maybe_build(ctx, &module, &version, target)?;
        install::maybe_install(ctx, &module, &version, target)?;
    }
    Ok(())
}
