//! `plan`: the job graph of an install run, for engines that spread work over machines or
//! cores. One build job per (module, version, kernel, arch), after the builds whose exports it
//! uses (BUILD_DEPENDS, or a MAKE line that names another planned module's tree); then one
//! install job per kernel, after that kernel's builds, which installs them and regenerates the
//! indexes; optionally one initramfs job per kernel after its install, which adds the installed
//! modules to the initramfs inside the root. Each job is an xdkms command line; rendered as JSON (schema `xdkms-plan` version
//! 1, for schedulers and CI matrices), a Makefile or a ninja file.

use std::collections::BTreeMap;

use serde::Serialize;

use super::commands::shell_quote;
use super::conf::Conf;
use super::{Ctx, Failure, Result, Target};
use crate::exit::Exit;

/// What a plan's JSON says it is.
pub const SCHEMA: &str = "xdkms-plan";
pub const SCHEMA_VERSION: u32 = 1;

/// One job of the plan.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Job {
    /// `build/<module>/<version>/<kernel>/<arch>`, `install/<kernel>/<arch>` or
    /// `initramfs/<kernel>/<arch>`.
    pub id: String,
    /// `build`, `install` or `initramfs`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub kernel: String,
    pub arch: String,
    /// The jobs that must end first.
    pub after: Vec<String>,
    /// BUILD_EXCLUSIVE rules the kernel out: the job does nothing (it has no command).
    pub excluded: bool,
    /// The xdkms command words, without `--root` and the other run options (which the runner
    /// adds after the first word, the action).
    pub args: Vec<String>,
}

/// The whole plan, as the JSON form writes it.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub schema: &'static str,
    pub version: u32,
    /// The run options every job gets after its action (`--root ROOT`, `--cache DIR`, ...).
    pub run_args: Vec<String>,
    /// In an order that runs every job after the jobs it waits for.
    pub jobs: Vec<Job>,
}

/// The plan for installing `modules` (added in the root) for `targets`, each job run with
/// `run_args`; with `initramfs` (a path inside the root, `{kernel}` standing for the kernel),
/// each kernel's installed modules are then added to its initramfs.
pub fn make(
    ctx: &Ctx,
    modules: &[(String, String)],
    targets: &[Target],
    run_args: Vec<String>,
    initramfs: Option<&str>,
) -> Result<Plan> {
    // The first failure in plan order, whichever thread met it first.
    let confs = ctx.module_confs_quietly(modules, targets).into_iter().collect::<Result<Vec<Conf>>>()?;
    let mut jobs = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        let confs = &confs[index * modules.len()..(index + 1) * modules.len()];
        let mut builds = Vec::new();
        for ((module, version), conf) in modules.iter().zip(confs) {
            builds.push(build_job(ctx, module, version, target, conf, modules));
        }
        let builds = ordered(builds)?;
        let installed: Vec<String> = builds
            .iter()
            .filter(|job| !job.excluded)
            .filter_map(|job| Some(format!("{}/{}", job.module.as_ref()?, job.version.as_ref()?)))
            .collect();
        // Every module excluded for this kernel: nothing to install (`install` with no module
        // would be a usage error).
        let nothing = installed.is_empty();
        let kernel_job = |kind: &'static str, after: Vec<String>, args: Vec<String>| Job {
            id: format!("{kind}/{}/{}", target.kernel, target.arch),
            kind,
            module: None,
            version: None,
            kernel: target.kernel.clone(),
            arch: target.arch.clone(),
            after,
            excluded: nothing,
            args,
        };
        let mut args = vec!["install".to_string(), "-k".to_string(), target_word(target)];
        args.extend(installed.iter().cloned());
        let install = kernel_job("install", builds.iter().map(|job| job.id.clone()).collect(), args);
        let inject = initramfs.map(|template| {
            let inside = super::initramfs_job::path_for(template, &target.kernel);
            let mut args = vec!["initramfs-inject".to_string(), "-k".to_string(), target_word(target)];
            args.extend(["--initramfs".to_string(), inside]);
            args.extend(installed.iter().cloned());
            kernel_job("initramfs", vec![install.id.clone()], args)
        });
        // Builds first, so that the list runs in order as it stands.
        jobs.extend(builds);
        jobs.push(install);
        jobs.extend(inject);
    }
    Ok(Plan { schema: SCHEMA, version: SCHEMA_VERSION, run_args, jobs })
}

fn target_word(target: &Target) -> String {
    format!("{}/{}", target.kernel, target.arch)
}

fn build_id(module: &str, version: &str, target: &Target) -> String {
    format!("build/{module}/{version}/{}/{}", target.kernel, target.arch)
}

/// The build job of one module for one target; it waits for the planned modules it builds
/// after.
fn build_job(
    ctx: &Ctx,
    module: &str,
    version: &str,
    target: &Target,
    conf: &Conf,
    planned: &[(String, String)],
) -> Job {
    let after = super::depends::builds_after(ctx, module, conf, planned)
        .into_iter()
        .map(|(other, other_version)| build_id(other, other_version, target))
        .collect();
    Job {
        id: build_id(module, version, target),
        kind: "build",
        module: Some(module.to_string()),
        version: Some(version.to_string()),
        kernel: target.kernel.clone(),
        arch: target.arch.clone(),
        after,
        excluded: conf.excluded,
        args: vec!["build-one".to_string(), "-k".to_string(), target_word(target), format!("{module}/{version}")],
    }
}

/// `builds` in an order where each comes after those it waits for (otherwise as given); a
/// cycle is an error naming its modules.
fn ordered(builds: Vec<Job>) -> Result<Vec<Job>> {
    let index: BTreeMap<String, usize> = builds.iter().enumerate().map(|(i, job)| (job.id.clone(), i)).collect();
    // 0: not visited, 1: on the current path, 2: placed.
    let mut state = vec![0u8; builds.len()];
    let mut order = Vec::with_capacity(builds.len());
    let mut path = Vec::new();
    for start in 0..builds.len() {
        visit(start, &builds, &index, &mut state, &mut order, &mut path)?;
    }
    let mut slots: Vec<Option<Job>> = builds.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

fn visit(
    at: usize,
    builds: &[Job],
    index: &BTreeMap<String, usize>,
    state: &mut [u8],
    order: &mut Vec<usize>,
    path: &mut Vec<usize>,
) -> Result<()> {
    match state[at] {
        2 => return Ok(()),
        1 => {
            let from = path.iter().position(|&i| i == at).unwrap_or(0);
            let mut names: Vec<&str> = path[from..].iter().filter_map(|&i| builds[i].module.as_deref()).collect();
            names.extend(builds[at].module.as_deref());
            return Err(Failure::new(
                Exit::BadConf,
                [
                    format!("The modules' build dependencies form a cycle: {}.", names.join(" -> ")),
                    "BUILD_DEPENDS (or a MAKE line naming another module's tree) must not loop back.".to_string(),
                ],
            ));
        }
        _ => {}
    }
    state[at] = 1;
    path.push(at);
    for dependency in &builds[at].after {
        if let Some(&next) = index.get(dependency) {
            visit(next, builds, index, state, order, path)?;
        }
    }
    path.pop();
    state[at] = 2;
    order.push(at);
    Ok(())
}

/// The jobs no other job waits for: what running the whole plan means.
fn final_jobs(plan: &Plan) -> impl Iterator<Item = &Job> {
    let waited: std::collections::BTreeSet<&str> =
        plan.jobs.iter().flat_map(|job| job.after.iter().map(String::as_str)).collect();
    plan.jobs.iter().filter(move |job| !waited.contains(job.id.as_str()))
}

/// The plan as JSON (pretty, one job per object, ending in a newline).
pub fn to_json(plan: &Plan) -> String {
    serde_json::to_string_pretty(plan).map(|text| text + "\n").unwrap_or_default()
}

/// A file name for a job's stamp: its id with `/` as `__`, other unsafe bytes as `_`.
fn stamp_name(id: &str) -> String {
    id.replace('/', "__")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._+-".contains(c) { c } else { '_' })
        .collect()
}

/// A job's command line for a shell: `xdkms` and `run` (variables of the file, as written),
/// the action before them and the other words after, each word quoted for the shell and then
/// by `escape` for the file's own syntax.
fn command_line(job: &Job, xdkms: &str, run: &str, escape: fn(&str) -> String) -> String {
    let mut words: Vec<String> = job.args.iter().map(|word| escape(&shell_quote(word))).collect();
    let action = words.remove(0);
    format!("{xdkms} {action} {run} {}", words.join(" "))
}

/// Words for make: `$` doubled.
fn make_escape(text: &str) -> String {
    text.replace('$', "$$")
}

/// The plan as a Makefile: one stamp target per job, prerequisites from `after`; every
/// command is a recursive make line (`+`), so xdkms takes its jobs from make's jobserver.
pub fn to_make(plan: &Plan, xdkms: &str) -> String {
    let run: Vec<String> = plan.run_args.iter().map(|word| make_escape(&shell_quote(word))).collect();
    let mut text = String::from(
        "# xdkms plan (schema xdkms-plan 1): run with `make -f FILE -jN`; every job shares make's\n\
         # jobserver. Stamps go to XDKMS_PLAN_STAMPS; a job whose stamp is there is done.\n",
    );
    text.push_str(&format!(
        "XDKMS ?= {}\nXDKMS_RUN_ARGS ?= {}\nXDKMS_PLAN_STAMPS ?= .xdkms-plan\n",
        make_escape(&shell_quote(xdkms)),
        run.join(" ")
    ));
    let stamp = |id: &str| format!("$(XDKMS_PLAN_STAMPS)/{}", stamp_name(id));
    let finals: Vec<String> = final_jobs(plan).map(|job| stamp(&job.id)).collect();
    text.push_str(&format!("\n.PHONY: all\nall: {}\n", finals.join(" ")));
    for job in &plan.jobs {
        let after: Vec<String> = job.after.iter().map(|id| stamp(id)).collect();
        text.push_str(&format!("\n{}: {}\n\t@mkdir -p $(@D)\n", stamp(&job.id), after.join(" ")));
        if !job.excluded {
            text.push_str(&format!("\t+{}\n", command_line(job, "$(XDKMS)", "$(XDKMS_RUN_ARGS)", make_escape)));
        }
        text.push_str("\t@touch $@\n");
    }
    text
}

/// A ninja variable's value: `$` doubled.
fn ninja_value(text: &str) -> String {
    text.replace('$', "$$")
}

/// A ninja path: `$`, space and `:` escaped.
fn ninja_path(text: &str) -> String {
    ninja_value(text).replace(' ', "$ ").replace(':', "$:")
}

/// The plan as a ninja file: one stamp per job, order-only dependencies from `after`.
pub fn to_ninja(plan: &Plan, xdkms: &str) -> String {
    let run: Vec<String> = plan.run_args.iter().map(|word| ninja_value(&shell_quote(word))).collect();
    let mut text = String::from("# xdkms plan (schema xdkms-plan 1): run with `ninja -f FILE`.\n");
    text.push_str(&format!(
        "xdkms = {}\nrun_args = {}\nstamps = .xdkms-plan\n\n\
         rule xdkms\n  command = $job_command && touch $out\n  description = $id\n\n\
         rule skip\n  command = touch $out\n  description = $id (excluded)\n",
        ninja_value(&shell_quote(xdkms)),
        run.join(" "),
    ));
    let stamp = |id: &str| format!("$stamps/{}", ninja_path(&stamp_name(id)));
    for job in &plan.jobs {
        let after: Vec<String> = job.after.iter().map(|id| stamp(id)).collect();
        let rule = if job.excluded { "skip" } else { "xdkms" };
        let order = if after.is_empty() { String::new() } else { format!(" | {}", after.join(" ")) };
        text.push_str(&format!("\nbuild {}: {rule}{order}\n  id = {}\n", stamp(&job.id), ninja_value(&job.id)));
        if !job.excluded {
            text.push_str(&format!("  job_command = {}\n", command_line(job, "$xdkms", "$run_args", ninja_value)));
        }
    }
    let finals: Vec<String> = final_jobs(plan).map(|job| stamp(&job.id)).collect();
    text.push_str(&format!("\ndefault {}\n", finals.join(" ")));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(module: &str, after: &[&str]) -> Job {
        Job {
            id: format!("build/{module}/1/k/x86_64"),
            kind: "build",
            module: Some(module.to_string()),
            version: Some("1".to_string()),
            kernel: "k".to_string(),
            arch: "x86_64".to_string(),
            after: after.iter().map(|m| format!("build/{m}/1/k/x86_64")).collect(),
            excluded: false,
            args: vec!["build-one".into(), "-k".into(), "k/x86_64".into(), format!("{module}/1")],
        }
    }

    #[test]
    fn builds_come_after_what_they_wait_for() {
        let order = ordered(vec![job("c", &["b"]), job("b", &["a"]), job("a", &[]), job("d", &[])]).expect("order");
        let names: Vec<&str> = order.iter().filter_map(|j| j.module.as_deref()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
    }

    #[test]
    fn a_cycle_names_its_modules() {
        let failure = ordered(vec![job("a", &["b"]), job("b", &["c"]), job("c", &["a"])]).expect_err("cycle");
        assert_eq!(failure.code, Exit::BadConf);
        assert!(failure.lines[0].contains("a -> b -> c -> a"), "{:?}", failure.lines);
    }

    #[test]
    fn stamps_and_ninja_values_are_escaped() {
        assert_eq!(stamp_name("build/m/1.0~rc1/6.1/x86_64"), "build__m__1.0_rc1__6.1__x86_64");
        assert_eq!(ninja_path("a b:$c"), "a$ b$:$$c");
        assert_eq!(make_escape("$HOME"), "$$HOME");
    }
}
