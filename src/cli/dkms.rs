//! The DKMS actions' command line: dkms's options (argh), `--opt=value` and `-jN` spellings, the
//! modules and kernels named, the run's settings made into a [`Ctx`], and dispatch to the
//! domain in `crate::dkms`; a [`Failure`] becomes dkms's `Error!` lines and exit status.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use argh::FromArgs;
use cross::Sysroot;

use crate::dkms::conf::{self, RawConf, Scope};
use crate::dkms::{
    add_if_needed, commands, fanout, initramfs_job, install, matching, module_args, parallel, print_err,
    print_err_partial, print_out, tarball, tree, Ctx, Failure, Named, Result, SigningArgs, Target,
};
use crate::exit::Exit;

/// The actions, as dkms spells them.
pub const ACTIONS: &[&str] = &[
    "add",
    "build",
    "install",
    "uninstall",
    "unbuild",
    "remove",
    "status",
    "autoinstall",
    "generate_mok",
    "match",
    "mktarball",
    "ldtarball",
    "kernel_postinst",
    "kernel_prerm",
    "kernel_preinst",
    "plan",
    "build-one",
    "collect",
    "initramfs-inject",
];

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
    /// match: the kernel whose installed modules to build and install for -k
    #[argh(option)]
    pub templatekernel: Option<String>,
    /// mktarball: the tarball to write; ldtarball: the tarball to load (host paths)
    #[argh(option)]
    pub archive: Option<PathBuf>,
    /// mktarball: the source only, no built modules
    #[argh(switch)]
    pub source_only: bool,
    /// mktarball: the built modules and dkms.conf, no source
    #[argh(switch)]
    pub binaries_only: bool,
    /// signing key, a host path or pkcs11: URI (default: framework.conf's mok_signing_key, else
    /// /var/lib/dkms/mok.key)
    #[argh(option)]
    pub mok_signing_key: Option<PathBuf>,
    /// signing certificate, a host path (default: framework.conf's mok_certificate, else
    /// /var/lib/dkms/mok.pub)
    #[argh(option)]
    pub mok_certificate: Option<PathBuf>,
    /// a sign-file program to run instead of signing in-process, a host path (default:
    /// framework.conf's sign_file; needed only for pkcs11: keys without --sign-command)
    #[argh(option)]
    pub sign_file: Option<PathBuf>,
    /// a command that signs with a key xdkms never reads (an HSM): run by bash with the hash name
    /// as $1 and the digest on stdin, it prints the raw signature (default: framework.conf's
    /// sign_command)
    #[argh(option)]
    pub sign_command: Option<String>,
    /// a build cache directory, shared by runs and machines: a build whose inputs (source,
    /// dkms.conf, kernel .config, Module.symvers, toolchain, signer, compression) were built
    /// before is restored from it (default: $XDKMS_CACHE)
    #[argh(option)]
    pub cache: Option<PathBuf>,
    /// use no build cache, even with $XDKMS_CACHE set
    #[argh(switch)]
    pub no_cache: bool,
    /// plan: json (default), make or ninja
    #[argh(option)]
    pub format: Option<String>,
    /// plan: add each kernel's installed modules to its initramfs at this path inside ROOT
    /// (`{kernel}` is the kernel: `/boot/initrd.img-{kernel}`); initramfs-inject: that file
    #[argh(option)]
    pub initramfs: Option<String>,
    /// build-one: the directory to write the build's output to (what collect takes)
    #[argh(option)]
    pub out: Option<PathBuf>,
    /// print the version
    #[argh(switch, short = 'V', long = "version")]
    pub version_flag: bool,
    /// the action, then module/version, a source directory or a dkms.conf path
    #[argh(positional)]
    pub words: Vec<String>,
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

/// dkms 3.4's usage text (`show_usage`) for what xdkms implements, printed for `--help` and after
/// an unknown option; xdkms's own list of options follows it for `--help`.
const USAGE: &str = "Usage: xdkms [action] [options]
  [action]  = { add | remove | build | unbuild | install | uninstall | match |
               autoinstall | mktarball | ldtarball | status | generate_mok |
               kernel_preinst | kernel_postinst | kernel_prerm }
  [options] = [-m module] [-v module-version] [-k kernel-version] [-a arch]
              [-c dkms.conf-location] [-q] [--force] [--force-version-override] [--all]
              [--templatekernel=kernel] [--directive='cli-directive=cli-value']
              [--config=kernel-include/config/auto.conf-location] [--archive=tarball-location]
              [--kernelsourcedir=source-location]
              [--dkmstree path] [--sourcetree path] [--installtree path]
              [--binaries-only] [--source-only] [--verbose]
              [--no-depmod] [-j number] [--version] [--help]
";

/// Runs a dkms action; returns the exit status.
pub fn main(action: &str, args: &[&str]) -> Exit {
    super::image_basedir::follow_parent();
    let partial = match super::image_dkms::take_partial() {
        Ok(partial) => partial,
        Err(message) => {
            print_err(format_args!("Error! {message}"));
            return Exit::Failed;
        }
    };
    let parsed = match Args::from_args(&["xdkms", action], &normalize(args)) {
        Ok(parsed) => parsed,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    print_out(format_args!("{USAGE}\n{}", early.output));
                    Exit::Success
                }
                Err(()) => {
                    // dkms 3.4: "Error! Unknown option: --x", then its usage, exit 2.
                    match early.output.trim().strip_prefix("Unrecognized argument: ") {
                        Some(option) if option.starts_with('-') => {
                            print_err(format_args!("Error! Unknown option: {option}"));
                            print_out(USAGE);
                        }
                        _ => print_err(format_args!("{}", early.output)),
                    }
                    Exit::BadArguments
                }
            };
        }
    };
    if let Some(exit) = on_image(action, &parsed, args) {
        return exit;
    }
    let quiet = parsed.quiet;
    match run(action, parsed, partial) {
        Ok(()) => Exit::Success,
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

/// `--root IMAGE`: the command run again on the image's parts (its exit status passed on), and
/// what it changed there written into the image, failed or not, as it would stay in a root
/// directory. None when there is no --root or it names a directory.
fn on_image(action: &str, parsed: &Args, args: &[&str]) -> Option<Exit> {
    use super::image_basedir;
    let root = parsed.root.as_ref()?.to_string_lossy().into_owned();
    let words: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let report = |message: String| {
        if !parsed.quiet {
            print_err(format_args!("Error! {message}"));
        }
    };
    let image = match image_basedir::open_image(&root) {
        Ok(None) => return None,
        Ok(Some(image)) => image,
        Err(message) => {
            report(message);
            return Some(Exit::BadArguments);
        }
    };
    let child_args: Vec<String> = std::iter::once(action.to_string()).chain(words).collect();
    // A headers directory or configuration named on the command line may lie anywhere in them.
    let whole = parsed.kernelsourcedir.is_some() || parsed.config.is_some();
    let (view, exit) = match super::image_dkms::run(image, &root, action, &child_args, whole) {
        Ok(ran) => ran,
        Err(message) => {
            report(message);
            return Some(Exit::BadArguments);
        }
    };
    if exit == Exit::Failed {
        // Killed, or never started: what it left is not to be trusted.
        return Some(exit);
    }
    match view.commit() {
        Ok(_) => Some(exit),
        Err(e) => {
            report(e.to_string());
            Some(Exit::Io)
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
        } else if path.is_file() {
            // Any other file is a tarball, as dkms assumes (ldtarball reads it).
            continue;
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
                Exit::BadArguments,
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
            Exit::Usage,
            [format!("The action {action} takes one module; build and install take several.")],
        ));
    }
    Ok(requests.pop().unwrap_or_default())
}

/// Runs `action`; `partial`: what a run on an image's parts is told about them.
fn run(action: &str, args: Args, partial: super::image_dkms::Partial) -> Result<()> {
    if args.version_flag {
        print_out(format_args!("{}", super::version_line()));
        return Ok(());
    }
    // collect's words are build outputs, not modules.
    let requests = if action == "collect" { Vec::new() } else { classify(&args) };
    check_names(&requests, &args)?;
    let mut ctx = make_ctx(&args)?;
    super::image_dkms::tell(&mut ctx, partial);
    check_target_options(action, &args)?;
    if action == "plan" {
        return plan(&ctx, &args, requests);
    }
    if action == "build-one" {
        // Its dependencies are installed for their exports; the indexes are the install job's.
        ctx.no_depmod = true;
        ctx.built_keys = args.out.is_some().then(|| Mutex::new(std::collections::BTreeMap::new()));
    }
    if action == "generate_mok" {
        return crate::dkms::sign::generate_mok(&ctx);
    }
    if action == "status" {
        let targets = explicit_targets(&args);
        return tree::status(&ctx, &single(action, requests)?, &targets, args.json);
    }
    if matches!(action, "build-one" | "build" | "install") {
        evaluate_confs_unlocked(&ctx, &args, &requests);
    }
    let lock = tree::lock(&ctx)?;
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
                return Err(Failure::new(Exit::BadArguments, ["Give --kernel-build or --kernelsourcedir, not both."]));
            }
            let mut modules = Vec::new();
            for named in requests {
                modules.push(add_if_needed(&ctx, named, targets.first())?);
            }
            parallel::build_and_install(&ctx, action == "install", &modules, &targets)
        }
        "uninstall" | "unbuild" | "remove" => remove_family(&ctx, action, &args, requests),
        "autoinstall" => {
            let targets = default_targets(&ctx, &args, true)?;
            if !ctx.image_mode() && targets.len() != 1 {
                return Err(Failure::new(
                    Exit::AutoinstallKernels,
                    ["The action autoinstall does not support multiple kernel version parameters on the command line."],
                ));
            }
            install::autoinstall(&ctx, &targets)
        }
        hook if is_kernel_hook(hook) => run_kernel_hook(&ctx, hook, &args),
        "build-one" => build_one(&ctx, &args, requests),
        "initramfs-inject" => inject_initramfs(&ctx, &args, requests),
        "collect" => fanout::collect(&ctx, &args.words.iter().map(PathBuf::from).collect::<Vec<_>>()),
        "mktarball" => make_tarball(&ctx, action, requests, &args),
        "ldtarball" => {
            let named_file = args.words.iter().map(PathBuf::from).find(|p| p.is_file());
            let Some(archive) = args.archive.clone().or(named_file).or_else(|| args.words.first().map(PathBuf::from))
            else {
                return Err(Failure::new(
                    Exit::Usage,
                    ["ldtarball needs the tarball: ldtarball FILE or --archive FILE."],
                ));
            };
            let targets = default_targets(&ctx, &args, false).unwrap_or_default();
            tarball::load(&ctx, &archive, targets.first())
        }
        "match" => {
            let named = single(action, requests)?;
            let targets = default_targets(&ctx, &args, true)?;
            let [target] = targets.as_slice() else {
                return Err(Failure::new(
                    Exit::OneKernel,
                    ["The action match does not support multiple kernel version parameters on the command line."],
                ));
            };
            matching::run_match(&ctx, args.templatekernel.as_deref(), named.module.as_deref(), target)
        }
        other => Err(Failure::new(Exit::BadArguments, [format!("Unknown action specified: \"{other}\"")])),
    };
    // dkms's `$kernelver` after the run: the first kernel asked for.
    let kernel = args.kernelver.first().map(|k| k.split('/').next().unwrap_or(k).to_string());
    finish(&ctx, action, result, kernel, lock)
}

/// uninstall, unbuild and remove: the kernels named, else (with --all, or in a root) every
/// kernel the module is built for.
fn remove_family(ctx: &Ctx, action: &str, args: &Args, requests: Vec<Named>) -> Result<()> {
    let (module, version) = module_args(action, single(action, requests)?)?;
    if !tree::is_added(ctx, &module, &version) {
        return Err(not_added(&module, &version));
    }
    let targets = if args.all || (ctx.image_mode() && args.kernelver.is_empty()) {
        tree::built_targets(ctx, &module, &version)
    } else {
        default_targets(ctx, args, false)?
    };
    install::remove_family(ctx, action, &module, &version, &targets)
}

/// `plan`: the job graph of installing the named modules (default: the newest version of
/// every module added) for the kernels, printed as --format says.
fn plan(ctx: &Ctx, args: &Args, requests: Vec<Named>) -> Result<()> {
    let targets = default_targets(ctx, args, true)?;
    let mut modules = Vec::new();
    for named in requests {
        let (module, version) = module_args("plan", named)?;
        if !tree::is_added(ctx, &module, &version) {
            return Err(not_added(&module, &version));
        }
        modules.push((module, version));
    }
    if modules.is_empty() {
        for module in tree::sorted_dirs(&ctx.root, &ctx.dkms_tree) {
            modules.extend(crate::dkms::depends::newest_version(ctx, &module).map(|version| (module.clone(), version)));
        }
    }
    if let Some(template) = &args.initramfs {
        for target in &targets {
            initramfs_job::initramfs_in_root(ctx, &initramfs_job::path_for(template, &target.kernel))?;
        }
    }
    let plan = crate::dkms::plan::make(ctx, &modules, &targets, job_options(args), args.initramfs.as_deref())?;
    let xdkms = std::env::current_exe().map_or_else(|_| "xdkms".to_string(), |p| p.display().to_string());
    let text = match args.format.as_deref().unwrap_or("json") {
        "json" => crate::dkms::plan::to_json(&plan),
        "make" => crate::dkms::plan::to_make(&plan, &xdkms),
        "ninja" => crate::dkms::plan::to_ninja(&plan, &xdkms),
        other => return Err(Failure::new(Exit::BadArguments, [format!("--format {other}: use json, make or ninja.")])),
    };
    print_out(format_args!("{}", text.trim_end()));
    Ok(())
}

fn not_added(module: &str, version: &str) -> Failure {
    Failure::new(
        Exit::TreeState,
        [format!("The module/version combo: {module}-{version} is not located in the DKMS tree.")],
    )
}

/// The options of a plan run that its jobs get too: the root, trees, kernel, toolchain,
/// compression, signing and cache. Paths of the build host are made absolute (jobs may run
/// from elsewhere); paths inside the root are passed as given.
fn job_options(args: &Args) -> Vec<String> {
    let host = |path: &Option<PathBuf>| path.as_ref().map(|p| crate::fsio::absolute(p.clone()).display().to_string());
    let given = |path: &Option<PathBuf>| path.as_ref().map(|p| p.display().to_string());
    let options = [
        ("--root", host(&args.root)),
        ("--kernel-build", host(&args.kernel_build)),
        ("-c", host(&args.conf)),
        ("--mok-signing-key", host(&args.mok_signing_key)),
        ("--mok-certificate", host(&args.mok_certificate)),
        ("--sign-file", host(&args.sign_file)),
        ("--cache", host(&args.cache)),
        ("--dkmstree", given(&args.dkmstree)),
        ("--sourcetree", given(&args.sourcetree)),
        ("--installtree", given(&args.installtree)),
        ("--kernelsourcedir", given(&args.kernelsourcedir)),
        ("--config", given(&args.config)),
        ("--cross-compile", args.cross_compile.clone()),
        ("--compress", args.compress.clone()),
        ("--sign-command", args.sign_command.clone()),
        // Under make the jobs share its jobserver; a -j given to the plan bounds each job's make
        // where there is none (ninja).
        ("-j", args.jobs.clone()),
    ];
    let mut words = Vec::new();
    for (name, value) in options {
        if let Some(value) = value {
            words.extend([name.to_string(), value]);
        }
    }
    for directive in &args.directive {
        words.extend(["--directive".to_string(), directive.clone()]);
    }
    for (flag, on) in [("--no-cache", args.no_cache), ("-q", args.quiet), ("--verbose", args.verbose)] {
        if on {
            words.push(flag.to_string());
        }
    }
    words
}

/// A plan's jobs run side by side and take the tree's lock in turn. On a cache hit, the bash
/// evaluations of the modules' confs are most of a job's work: done before the lock (they only
/// read; the run's memo knows each file's size and times), one job's evaluations overlap
/// another's locked work. The locked run takes them from the memo; failures are its to report.
fn evaluate_confs_unlocked(ctx: &Ctx, args: &Args, requests: &[Named]) {
    let modules: Vec<(String, String)> = requests
        .iter()
        .filter_map(|named| Some((named.module.clone()?, named.version.clone()?)))
        .filter(|(module, version)| tree::is_added(ctx, module, version))
        .collect();
    if modules.is_empty() {
        return;
    }
    if let Ok(targets) = default_targets(ctx, args, true) {
        let _ = ctx.module_confs_quietly(&modules, &targets);
    }
}

/// `build-one -k K[/ARCH] MODULE/VERSION [--out DIR]`: one build job of a plan.
fn build_one(ctx: &Ctx, args: &Args, requests: Vec<Named>) -> Result<()> {
    let (module, version) = module_args("build-one", single("build-one", requests)?)?;
    if !tree::is_added(ctx, &module, &version) {
        return Err(not_added(&module, &version));
    }
    let targets = default_targets(ctx, args, true)?;
    let [target] = targets.as_slice() else {
        return Err(Failure::new(Exit::OneKernel, ["The action build-one builds for one kernel: give one -k."]));
    };
    fanout::build_one(ctx, &module, &version, target, args.out.as_deref())
}

/// `initramfs-inject -k K[/ARCH] --initramfs PATH MODULE/VERSION...`: a plan's initramfs job.
fn inject_initramfs(ctx: &Ctx, args: &Args, requests: Vec<Named>) -> Result<()> {
    let Some(inside) = &args.initramfs else {
        return Err(Failure::new(
            Exit::BadArguments,
            ["The action initramfs-inject needs --initramfs PATH, the initramfs inside the root."],
        ));
    };
    let targets = default_targets(ctx, args, true)?;
    let [target] = targets.as_slice() else {
        return Err(Failure::new(Exit::OneKernel, ["The action initramfs-inject acts on one kernel: give one -k."]));
    };
    let mut modules = Vec::new();
    for named in requests {
        let (module, version) = module_args("initramfs-inject", named)?;
        if !tree::is_added(ctx, &module, &version) {
            return Err(not_added(&module, &version));
        }
        modules.push((module, version));
    }
    if modules.is_empty() {
        return module_args("initramfs-inject", Named::default()).map(|_| ());
    }
    initramfs_job::inject(ctx, &modules, target, inside)
}

/// After an action: the indexes of each kernel it changed, then framework.conf's
/// post_transaction, which dkms 3.4 runs after a successful install, uninstall, unbuild or
/// remove, and after an autoinstall that installed something.
/// `kernel` is the first kernel named (else the first one the run changed): post_transaction
/// may use `$kernelver`.
/// The dkms tree's lock goes first: the indexes are the kernels' module directories' own
/// business, so a run for another kernel need not wait for them.
fn finish(ctx: &Ctx, action: &str, result: Result<()>, kernel: Option<String>, lock: tree::Lock) -> Result<()> {
    drop(lock);
    let changed_kernels = ctx.pending_kernels();
    let result = result.and(install::run_pending_depmods(ctx));
    let transaction = match action {
        "install" | "uninstall" | "unbuild" | "remove" => true,
        "autoinstall" => !changed_kernels.is_empty(),
        _ => false,
    };
    let kernel = kernel.or_else(|| changed_kernels.into_iter().next()).unwrap_or_default();
    if result.is_ok() && transaction {
        if let Some(command) = commands::post_transaction_command(ctx, &kernel) {
            // It writes its log into the dkms tree: under the tree's lock again.
            let _lock = tree::lock(ctx)?;
            commands::post_transaction(ctx, &command, &kernel)?;
        }
    }
    result
}

/// dkms's checks of -k, -a and --all against each other and the action.
fn check_target_options(action: &str, args: &Args) -> Result<()> {
    if args.arch.len() > 1 && args.arch.len() != args.kernelver.len() {
        return Err(Failure::new(
            Exit::Usage,
            [
                " If more than one arch is specified on the command line, then there",
                "must be an equal number of kernel versions also specified (1:1 relationship).",
            ],
        ));
    }
    if args.all && !args.kernelver.is_empty() {
        return Err(Failure::new(
            Exit::BadArguments,
            [" You cannot specify a kernel version and also specify", "--all on the command line."],
        ));
    }
    if args.all && !args.arch.is_empty() {
        return Err(Failure::new(
            Exit::ArchWithAll,
            [" You cannot specify an arch and also specify", "--all on the command line."],
        ));
    }
    if args.all && (matches!(action, "add" | "build" | "install" | "autoinstall" | "match") || is_kernel_hook(action)) {
        return Err(Failure::new(
            Exit::Unsupported,
            [format!("The action {} does not support the --all parameter.", hook_checked_as(action))],
        ));
    }
    Ok(())
}

/// dkms 3.4's kernel package hooks: after a kernel is installed (autoinstall for it), before
/// it is removed, and before it is installed (the modules of an earlier install of it go).
fn is_kernel_hook(action: &str) -> bool {
    matches!(action, "kernel_postinst" | "kernel_prerm" | "kernel_preinst")
}

/// mktarball: of one added module, for -k's kernels (by default the running kernel on the host,
/// every kernel it is built for in a root).
fn make_tarball(ctx: &Ctx, action: &str, requests: Vec<Named>, args: &Args) -> Result<()> {
    if args.binaries_only && args.source_only {
        return Err(Failure::new(
            Exit::BadConf,
            [" You have specified both --binaries-only and --source-only.", "You cannot do this."],
        ));
    }
    let (module, version) = module_args(action, single(action, requests)?)?;
    if !tree::is_added(ctx, &module, &version) {
        return Err(not_added(&module, &version));
    }
    let targets = if ctx.image_mode() && args.kernelver.is_empty() {
        tree::built_targets(ctx, &module, &version)
    } else {
        default_targets(ctx, args, false)?
    };
    let options = tarball::MakeOptions {
        source_only: args.source_only,
        binaries_only: args.binaries_only,
        archive: args.archive.clone(),
    };
    tarball::make(ctx, &module, &version, &targets, &options)
}

/// A kernel hook, for the one kernel it must be given.
fn run_kernel_hook(ctx: &Ctx, hook: &str, args: &Args) -> Result<()> {
    let targets = default_targets(ctx, args, hook == "kernel_postinst")?;
    let [target] = targets.as_slice() else {
        return Err(Failure::new(
            Exit::OneKernel,
            [format!(
                "The action {} requires exactly one kernel version parameter on the command line.",
                hook_checked_as(hook)
            )],
        ));
    };
    match hook {
        "kernel_postinst" => install::autoinstall(ctx, std::slice::from_ref(target)),
        _ => install::kernel_removal(ctx, hook, target),
    }
}

/// dkms 3.4's kernel_preinst checks its arguments under kernel_prerm's name.
fn hook_checked_as(action: &str) -> &str {
    if action == "kernel_preinst" {
        "kernel_prerm"
    } else {
        action
    }
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
                    Exit::NoHeaders,
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

/// The root to work in: `--root`, else the host's `/`.
fn open_root(args: &Args) -> Result<Sysroot> {
    match &args.root {
        Some(dir) => Sysroot::new(dir).map_err(|e| {
            Failure::new(
                Exit::BadArguments,
                [format!("{e}"), "--root must name the target's root directory.".to_string()],
            )
        }),
        None => Sysroot::host().map_err(|e| Failure::io("opening /", e)),
    }
}

/// framework.conf and framework.conf.d/*.conf (paths with their links resolved inside the root,
/// for bash to read), and their values.
fn read_framework(root: &Sysroot, etc_dkms: &Path) -> Result<(Vec<PathBuf>, RawConf)> {
    let resolve =
        |file: &Path| root.resolve_host(file).map_err(|e| Failure::io(format!("resolving {}", file.display()), e));
    let mut files = vec![resolve(&etc_dkms.join("framework.conf"))?];
    let conf_d = etc_dkms.join("framework.conf.d");
    for entry in root.read_dir(&conf_d).unwrap_or_default() {
        if Path::new(&entry.name).extension().is_some_and(|e| e == "conf") {
            files.push(resolve(&conf_d.join(&entry.name))?);
        }
    }
    let framework = if files.iter().any(|f| f.exists()) {
        conf::evaluate(
            &files,
            &Scope::default(),
            &[
                "source_tree",
                "dkms_tree",
                "install_tree",
                "parallel_jobs",
                "verbose",
                "symlink_modules",
                "build_environment",
            ],
            None,
        )
        .map_err(|e| Failure::io("reading framework.conf", e))?
    } else {
        RawConf::default()
    };
    Ok((files, framework))
}

/// `-j` (or parallel_jobs, else the CPU count; 0 for none) and the jobserver all makes share:
/// a parent make's when neither is given, else one of that many tokens.
fn jobs_and_jobserver(args: &Args, framework: &RawConf) -> Result<(String, Option<jobserver::Client>, bool)> {
    let jobs = match args.jobs.clone().or_else(|| Some(framework.scalar("parallel_jobs").to_string())) {
        Some(j) if !j.is_empty() => j,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()).to_string(),
    };
    let jobs = if jobs == "0" { String::new() } else { jobs };
    let parent = if args.jobs.is_none() && framework.scalar("parallel_jobs").is_empty() {
        parallel::parent_jobserver()
    } else {
        None
    };
    let inherited = parent.is_some();
    let jobserver = match (parent, jobs.parse::<usize>()) {
        (Some(parent), _) => Some(parent),
        (None, Ok(n)) if n > 0 => {
            Some(jobserver::Client::new(n).map_err(|e| Failure::io(format!("creating a jobserver for -j {n}"), e))?)
        }
        _ => None,
    };
    Ok((jobs, jobserver, inherited))
}

/// `--directive NAME=value` pairs.
fn directives(args: &Args) -> Result<Vec<(String, String)>> {
    args.directive
        .iter()
        .map(|d| match d.split_once('=') {
            Some((n, v)) => Ok((n.to_string(), v.to_string())),
            None => Err(Failure::new(Exit::BadArguments, [format!("--directive {d:?}: use NAME=value")])),
        })
        .collect()
}

fn make_ctx(args: &Args) -> Result<Ctx> {
    let root = open_root(args)?;
    let etc_dkms = root.resolve("/etc/dkms").map_err(|e| Failure::io("resolving /etc/dkms inside the root", e))?;
    let (framework_files, framework) = read_framework(&root, &etc_dkms)?;
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
    let (jobs, jobserver, jobserver_inherited) = jobs_and_jobserver(args, &framework)?;
    let in_root = |p: &PathBuf| -> Result<PathBuf> {
        if root.is_host() {
            Ok(p.clone())
        } else {
            let target = target_absolute(p);
            root.resolve(&target).map_err(|e| Failure::io(format!("resolving {}", p.display()), e))
        }
    };
    // dkms 3.4 sources the file when it exists; inside a root it is the root's file.
    let build_environment_file = match framework.scalar("build_environment") {
        "" => None,
        file => in_root(&PathBuf::from(file)).ok().filter(|f| root.is_file(f)),
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
        conf_override: args.conf.clone().map(crate::fsio::absolute),
        kernel_source_override: match &args.kernel_build {
            Some(dir) => Some(crate::fsio::absolute(dir.clone())),
            None => args.kernelsourcedir.as_ref().map(in_root).transpose()?,
        },
        kernel_config_override: args.config.as_ref().map(in_root).transpose()?,
        directives: directives(args)?,
        compress: args.compress.clone(),
        cross_compile: args.cross_compile.clone(),
        framework_files,
        signing: SigningArgs {
            key: args.mok_signing_key.clone(),
            cert: args.mok_certificate.clone(),
            sign_file: args.sign_file.clone(),
            command: args.sign_command.clone(),
        },
        depmod_pending: Mutex::new(BTreeSet::new()),
        original_found: std::sync::atomic::AtomicBool::new(false),
        sole_build: std::sync::atomic::AtomicBool::new(true),
        host_build_dirs: Mutex::new(std::collections::BTreeMap::new()),
        build_environment_file,
        last_conf_read: Mutex::new(None),
        evaluated_confs: Mutex::new(Default::default()),
        tree_sandbox: OnceLock::new(),
        cache: open_cache(args)?,
        built_keys: None,
        restored: Mutex::new(BTreeSet::new()),
        partial_root: None,
        outside_modules: None,
        root,
    })
}

/// The build cache: --cache, else $XDKMS_CACHE; none with --no-cache. A path of the build
/// host, created when missing.
fn open_cache(args: &Args) -> Result<Option<crate::build_cache::Store>> {
    if args.no_cache {
        return Ok(None);
    }
    let Some(dir) =
        args.cache.clone().or_else(|| std::env::var_os("XDKMS_CACHE").filter(|v| !v.is_empty()).map(PathBuf::from))
    else {
        return Ok(None);
    };
    let dir = crate::fsio::absolute(dir);
    crate::build_cache::Store::open(&dir).map(Some).map_err(|e| {
        Failure::new(
            Exit::BadArguments,
            [
                format!("cannot use {} as the build cache: {e}", dir.display()),
                "Name a writable directory with --cache or XDKMS_CACHE.".to_string(),
            ],
        )
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
