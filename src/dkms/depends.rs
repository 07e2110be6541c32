//! BUILD_DEPENDS_REBUILD (dkms 3.4): the dependency versions a build was made against, and which
//! modules' dependencies changed version since (install rebuilds those).
//!
//! dkms 3.4 records, after a build without --force, the newest version in the tree of each
//! BUILD_DEPENDS module in `<m>/<v>/<k>/<arch>/.dep_<dependency>`. At the end of every install
//! without --force it looks at each module version built for that kernel whose conf sets
//! BUILD_DEPENDS_REBUILD: a dependency that is in the tree with no record, or with a newer (or
//! older) version than the record says, makes it uninstall, unbuild, build and install again.

use std::path::Path;

use super::conf::Conf;
use super::version::sort_v;
use super::{tree, Ctx, Failure, Result, Target};

/// The modules of `run` (the modules of one run or plan) that `module`'s build must come
/// after: those its BUILD_DEPENDS names, and those whose tree in the dkms tree or the source
/// tree its MAKE line names (a build that reads another's Module.symvers).
pub fn builds_after<'a>(
    ctx: &Ctx,
    module: &str,
    conf: &Conf,
    run: &'a [(String, String)],
) -> Vec<&'a (String, String)> {
    let trees = [&ctx.dkms_tree, &ctx.dkms_tree_target, &ctx.source_tree_target];
    let names_tree = |other: &str| {
        trees.iter().any(|tree| {
            let tree = tree.to_string_lossy();
            let tree = tree.trim_end_matches('/');
            conf.make_command.contains(&format!("{tree}/{other}/"))
                || conf.make_command.contains(&format!("{tree}/{other}-"))
        })
    };
    run.iter()
        .filter(|(other, _)| other != module)
        .filter(|(other, _)| conf.build_depends.contains(other) || names_tree(other))
        .collect()
}

/// The record of the version of `dependency` a build saw.
fn record_name(dependency: &str) -> String {
    format!(".dep_{dependency}")
}

/// The newest version of `module` in the dkms tree, as `sort -V | tail -n1` picks it.
pub fn newest_version(ctx: &Ctx, module: &str) -> Option<String> {
    tree::sorted_dirs(&ctx.root, &ctx.dkms_tree.join(module))
        .into_iter()
        .filter(|version| tree::is_added(ctx, module, version))
        .max_by(|a, b| sort_v(a, b))
}

/// After a build: the version of each dependency, written into the build's result directory
/// (`dir`, renamed into `<k>/<arch>` afterwards). Nothing with --force, as dkms 3.4.
pub fn record(ctx: &Ctx, conf: &Conf, dir: &Path) -> Result<()> {
    if !conf.build_depends_rebuild || ctx.force {
        return Ok(());
    }
    for dependency in &conf.build_depends {
        if let Some(version) = newest_version(ctx, dependency) {
            let path = dir.join(record_name(dependency));
            ctx.root
                .write(&path, format!("{version}\n").as_bytes())
                .map_err(|e| Failure::io(format!("writing {}", path.display()), e))?;
        }
    }
    Ok(())
}

/// Whether a dependency in the tree now has another version than the build recorded (or none
/// was recorded).
pub fn dependencies_changed(ctx: &Ctx, module: &str, version: &str, target: &Target, conf: &Conf) -> bool {
    let built = ctx.version_dir(module, version).join(&target.kernel).join(&target.arch);
    conf.build_depends.iter().any(|dependency| {
        let Some(newest) = newest_version(ctx, dependency) else { return false };
        let recorded = ctx.root.read_to_string(&built.join(record_name(dependency)));
        recorded.map_or(true, |text| text.trim_end_matches('\n') != newest)
    })
}

/// The module versions built for `target` that want a rebuild, in the tree's order.
pub fn stale_dependants(ctx: &Ctx, target: &Target) -> Result<Vec<(String, String)>> {
    let mut stale = Vec::new();
    for module in tree::sorted_dirs(&ctx.root, &ctx.dkms_tree) {
        for version in tree::sorted_dirs(&ctx.root, &ctx.dkms_tree.join(&module)) {
            if !tree::is_added(ctx, &module, &version) || !tree::is_built(ctx, &module, &version, target) {
                continue;
            }
            let conf = ctx.module_conf(&module, &version, target, false)?;
            if conf.build_depends_rebuild
                && !conf.build_depends.is_empty()
                && dependencies_changed(ctx, &module, &version, target, &conf)
            {
                stale.push((module.clone(), version));
            }
        }
    }
    Ok(stale)
}
