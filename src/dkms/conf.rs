//! dkms.conf: sourced by bash as dkms 3.0.10 does, read back through a whitelist, then checked.
//!
//! A dkms.conf is a bash script (ZFS and NVIDIA packages compute values with `$(...)` and `if`),
//! so it is evaluated by bash, never parsed here. Like dkms's `safe_source`, each file (the conf,
//! then the /etc/dkms overrides) is sourced in a subshell with stdout discarded and only the
//! whitelisted variables carried to the next file; at the end they are written out NUL-separated
//! (`NAME\0INDEX\0VALUE\0`), so no value is ever re-parsed as text. The environment is cleared
//! except PATH, HOME and TMPDIR; dkms's own variables (`kernelver`, `kernel_source_dir`, `arch`,
//! `dkms_tree`, ...) are in scope as shell variables, as they are inside dkms.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::version::ver_key;

/// The variables dkms 3.0.10 accepts from a dkms.conf (its `dkms_conf_variables`, without the
/// lowercase internals a conf could only use to corrupt dkms's state) plus the later directives
/// xdkms also honours (BUILD_EXCLUSIVE_KERNEL_MIN/MAX from 3.0.11, per-module BUILD_EXCLUSIVE_*[i]
/// from 3.4, BUILD_DEPENDS_REBUILD).
pub const WHITELIST: &[&str] = &[
    "CLEAN",
    "PACKAGE_NAME",
    "PACKAGE_VERSION",
    "POST_ADD",
    "POST_BUILD",
    "POST_INSTALL",
    "POST_REMOVE",
    "PRE_BUILD",
    "PRE_INSTALL",
    "BUILD_DEPENDS",
    "BUILD_DEPENDS_REBUILD",
    "BUILD_EXCLUSIVE_KERNEL",
    "BUILD_EXCLUSIVE_KERNEL_MIN",
    "BUILD_EXCLUSIVE_KERNEL_MAX",
    "BUILD_EXCLUSIVE_ARCH",
    "BUILD_EXCLUSIVE_CONFIG",
    "OBSOLETE_BY",
    "MAKE",
    "MAKE_MATCH",
    "PATCH",
    "PATCH_MATCH",
    "BUILT_MODULE_NAME",
    "BUILT_MODULE_LOCATION",
    "DEST_MODULE_NAME",
    "DEST_MODULE_LOCATION",
    "STRIP",
    "AUTOINSTALL",
    "NO_WEAK_MODULES",
    "SIGN_FILE",
    "MOK_SIGNING_KEY",
    "MOK_CERTIFICATE",
    "REMAKE_INITRD",
    "MODULES_CONF",
    "MODULES_CONF_OBSOLETES",
    "MODULES_CONF_ALIAS_TYPE",
    "MODULES_CONF_OBSOLETE_ONLY",
];

/// The bash program that sources the files named in its arguments. After each file it reports
/// the deprecated directives dkms 3.x accepts, ignores and announces (REMAKE_INITRD, MODULES_CONF*). Arguments: the whitelist (one
/// word), then `NAME=value` pairs for dkms's variables up to a `--`, then the files.
const EVALUATOR: &str = r#"
vars=$1; shift
while [ "$1" != -- ]; do declare -- "${1%%=*}=${1#*=}"; shift; done; shift
for _v in $vars; do unset "$_v"; done
for _f in "$@"; do
    [ -e "$_f" ] || continue
    _state=$( . "$_f" >/dev/null; for _v in $vars; do declare -p "$_v" 2>/dev/null; done )
    for _v in $vars; do unset "$_v"; done
    eval "$_state"
    for _v in REMAKE_INITRD MODULES_CONF MODULES_CONF_OBSOLETES MODULES_CONF_ALIAS_TYPE MODULES_CONF_OBSOLETE_ONLY; do
        eval "_n=\${#$_v[@]}"
        [ "$_n" != 0 ] && printf 'D\0%s\0%s\0' "$_v" "$_f"
    done
done
for _v in $vars; do
    eval "_keys=\${!$_v[@]}"
    for _i in $_keys; do
        eval "_val=\${$_v[$_i]}"
        printf 'V\0%s\0%s\0%s\0' "$_v" "$_i" "$_val"
    done
done
"#;

/// The whitelisted variables after sourcing: each an array (index 0 is the scalar).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawConf {
    pub vars: BTreeMap<String, BTreeMap<usize, String>>,
    /// `(directive, file)` for each deprecated directive set after a file was sourced.
    pub deprecated: Vec<(String, PathBuf)>,
}

impl RawConf {
    /// `${NAME[index]}`, empty when unset.
    pub fn get(&self, name: &str, index: usize) -> &str {
        self.vars.get(name).and_then(|a| a.get(&index)).map_or("", String::as_str)
    }

    /// `$NAME`.
    pub fn scalar(&self, name: &str) -> &str {
        self.get(name, 0)
    }

    /// `${#NAME[@]}`: how many elements are set.
    pub fn count(&self, name: &str) -> usize {
        self.vars.get(name).map_or(0, BTreeMap::len)
    }

    /// The set elements of NAME in index order.
    pub fn elements(&self, name: &str) -> Vec<&str> {
        self.vars.get(name).map(|a| a.values().map(String::as_str).collect()).unwrap_or_default()
    }

    /// `NAME=value` as `export NAME=value` in dkms: sets the scalar (element 0).
    pub fn set_scalar(&mut self, name: &str, value: &str) {
        self.vars.entry(name.to_string()).or_default().insert(0, value.to_string());
    }
}

/// What a dkms.conf is evaluated with: dkms's variables in scope while it is sourced.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub kernelver: String,
    pub arch: String,
    pub kernel_source_dir: PathBuf,
    pub kernel_config: PathBuf,
    pub dkms_tree: PathBuf,
    pub source_tree: PathBuf,
    pub install_tree: PathBuf,
    pub module: String,
    pub module_version: String,
    pub parallel_jobs: String,
    pub running_distribution: String,
}

impl Scope {
    fn assignments(&self) -> Vec<String> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            format!("kernelver={}", self.kernelver),
            format!("arch={}", self.arch),
            format!("kernel_source_dir={}", path(&self.kernel_source_dir)),
            format!("kernel_config={}", path(&self.kernel_config)),
            format!("dkms_tree={}", path(&self.dkms_tree)),
            format!("source_tree={}", path(&self.source_tree)),
            format!("install_tree={}", path(&self.install_tree)),
            format!("module={}", self.module),
            format!("module_version={}", self.module_version),
            format!("parallel_jobs={}", self.parallel_jobs),
            format!("running_distribution={}", self.running_distribution),
            format!("current_kernel={}", self.kernelver),
            "current_os=Linux".to_string(),
            format!("tmp_location={}", std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into())),
        ]
    }
}

/// Sources `files` (the dkms.conf, then its overrides; missing ones are skipped) with bash, the
/// way dkms does, and returns the whitelisted variables. The files' stderr passes through. Each
/// `DKMS_DIRECTIVE*="NAME=value"` variable of our environment is applied after every file, as in
/// dkms. `variables` is the whitelist to read back. With a sandbox, bash runs in it.
pub fn evaluate(
    files: &[PathBuf],
    scope: &Scope,
    variables: &[&str],
    sandbox: Option<&super::sandbox::Sandbox>,
) -> io::Result<RawConf> {
    let mut command = match sandbox {
        Some(sandbox) => sandbox.command("bash", Path::new("/")),
        None => Command::new("bash"),
    };
    command
        .arg("-c")
        .arg(EVALUATOR)
        .arg("bash")
        .arg(variables.join(" "))
        .args(scope.assignments())
        .arg("--")
        .args(files)
        .env_clear()
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .stdout(Stdio::piped());
    for keep in ["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL"] {
        if let Some(value) = std::env::var_os(keep) {
            command.env(keep, value);
        }
    }
    let output = command.output().map_err(|e| {
        io::Error::new(e.kind(), format!("could not run bash to read dkms.conf (bash is required): {e}"))
    })?;
    let mut raw = parse_dump(&output.stdout).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bash exited with {} while reading {}", output.status, display_files(files)),
        )
    })?;
    let directives: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("DKMS_DIRECTIVE"))
        .filter_map(|(_, v)| v.split_once('=').map(|(n, v)| (n.to_string(), v.to_string())))
        .collect();
    for (name, value) in directives {
        raw.set_scalar(&name, &value);
    }
    Ok(raw)
}

fn display_files(files: &[PathBuf]) -> String {
    files.first().map(|f| f.display().to_string()).unwrap_or_default()
}

/// Reads the evaluator's NUL-separated records; None when they are malformed.
fn parse_dump(bytes: &[u8]) -> Option<RawConf> {
    let mut raw = RawConf::default();
    let mut fields = bytes.split(|&b| b == 0);
    let text = |f: &[u8]| String::from_utf8_lossy(f).into_owned();
    while let Some(tag) = fields.next() {
        match tag {
            b"" => break,
            b"D" => {
                let name = text(fields.next()?);
                let file = PathBuf::from(text(fields.next()?));
                raw.deprecated.push((name, file));
            }
            b"V" => {
                let name = text(fields.next()?);
                let index = text(fields.next()?);
                let mut value = text(fields.next()?);
                // An associative array is no dkms directive; its keys are not indexes.
                let Ok(index) = index.parse::<usize>() else { continue };
                // CRLF files: bash keeps the carriage return of `X="y"\r`; dkms 3.4 strips it.
                if value.ends_with('\r') {
                    value.pop();
                }
                raw.vars.entry(name).or_default().insert(index, value);
            }
            _ => return None,
        }
    }
    Some(raw)
}

/// One module of a package: what the build produces and where it is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRecord {
    pub built_name: String,
    /// Relative to the build directory, with a trailing `/` (empty for the top).
    pub built_location: String,
    pub dest_name: String,
    /// After the distribution's override (`/updates/dkms` on Debian).
    pub dest_location: String,
    /// As written in dkms.conf.
    pub dest_location_raw: String,
    pub strip: bool,
}

/// A dkms.conf evaluated for one kernel and arch, with dkms's defaults applied.
#[derive(Debug, Clone, Default)]
pub struct Conf {
    pub package_name: String,
    pub package_version: String,
    pub modules: Vec<ModuleRecord>,
    /// The make command before dkms's `make` rewrite.
    pub make_command: String,
    pub patches: Vec<String>,
    pub pre_build: String,
    pub post_build: String,
    pub pre_install: String,
    pub post_install: String,
    pub post_add: String,
    pub post_remove: String,
    pub autoinstall: bool,
    pub build_depends: Vec<String>,
    /// BUILD_DEPENDS_REBUILD (dkms 3.4): rebuild when a dependency's newest version changes.
    pub build_depends_rebuild: bool,
    pub obsolete_by: String,
    pub excluded: bool,
    pub no_weak_modules: bool,
    pub raw: RawConf,
}

/// Where a distribution puts DKMS modules, whatever DEST_MODULE_LOCATION says (dkms's
/// `override_dest_module_location`); None keeps the conf's value.
pub fn distro_dest_location(distro: &str) -> Option<&'static str> {
    let starts = |p: &str| distro.starts_with(p);
    if starts("fedora") || starts("rhel") || starts("ovm") {
        Some("/extra")
    } else if starts("sles") || starts("suse") || starts("opensuse") {
        Some("/updates")
    } else if starts("debian") || starts("ubuntu") || starts("arch") {
        Some("/updates/dkms")
    } else {
        None
    }
}

/// The inputs of [`Conf::from_raw`] besides the variables.
pub struct Derive<'a> {
    pub kernelver: &'a str,
    pub arch: &'a str,
    pub distro: &'a str,
    /// `$ADDON_MODULES_DIR`: overrides every destination when set.
    pub addon_modules_dir: Option<&'a str>,
    pub kernel_source_dir: &'a Path,
    /// The kernel's configuration text, when it could be read (BUILD_EXCLUSIVE_CONFIG, clang).
    pub kernel_config: Option<&'a str>,
    /// The dkms tree as the build sees it (for the default make command).
    pub build_dkms_tree: &'a Path,
    pub module: &'a str,
    pub module_version: &'a str,
    /// add, build and install also apply the checks dkms 3.4 added (duplicate names, values of
    /// AUTOINSTALL); uninstall, unbuild and remove must work on any conf.
    pub strict: bool,
}

impl Conf {
    /// Applies dkms 3.0.10's `read_conf` defaults and checks. On failure returns the
    /// `dkms.conf: Error! ...` lines, in dkms's order.
    pub fn from_raw(raw: RawConf, d: &Derive) -> Result<Conf, Vec<String>> {
        let mut errors = Vec::new();
        let modules = module_records(&raw, d, &mut errors);
        let make_command = make_command(&raw, d);
        let patches = matching_patches(&raw, d.kernelver);
        let (excluded_modules, excluded) = exclusions(&raw, d, modules.len());
        if modules.is_empty() {
            errors.push("dkms.conf: Error! No 'DEST_MODULE_LOCATION' directive specified.".to_string());
        }
        let package_name = raw.scalar("PACKAGE_NAME").to_string();
        let package_version = raw.scalar("PACKAGE_VERSION").to_string();
        if package_name.is_empty() {
            errors.push("dkms.conf: Error! No 'PACKAGE_NAME' directive specified.".to_string());
        }
        if package_version.is_empty() {
            errors.push("dkms.conf: Error! No 'PACKAGE_VERSION' directive specified.".to_string());
        }
        check_path_components(&package_name, &package_version, &modules, d.strict, &mut errors);
        let autoinstall = raw.scalar("AUTOINSTALL");
        // dkms 3.4's read_conf_strict runs these only on a conf that passed the checks above.
        if d.strict && errors.is_empty() {
            strict_checks(&raw, &modules, &mut errors);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // A module its own BUILD_EXCLUSIVE_*[i] rules out is not checked, saved or installed (the
        // make still runs the package's Makefile, which decides what it builds).
        let modules = match excluded {
            true => modules,
            false => modules.into_iter().zip(excluded_modules).filter(|(_, out)| !out).map(|(m, _)| m).collect(),
        };
        Ok(Conf {
            package_name,
            package_version,
            modules,
            make_command,
            patches,
            pre_build: raw.scalar("PRE_BUILD").to_string(),
            post_build: raw.scalar("POST_BUILD").to_string(),
            pre_install: raw.scalar("PRE_INSTALL").to_string(),
            post_install: raw.scalar("POST_INSTALL").to_string(),
            post_add: raw.scalar("POST_ADD").to_string(),
            post_remove: raw.scalar("POST_REMOVE").to_string(),
            autoinstall: is_yes(autoinstall),
            build_depends: raw
                .elements("BUILD_DEPENDS")
                .iter()
                .flat_map(|s| s.split_whitespace())
                .map(String::from)
                .collect(),
            build_depends_rebuild: is_yes(raw.scalar("BUILD_DEPENDS_REBUILD")),
            obsolete_by: raw.scalar("OBSOLETE_BY").to_string(),
            excluded,
            no_weak_modules: !raw.scalar("NO_WEAK_MODULES").is_empty(),
            raw,
        })
    }
}

/// A dkms 3.4 yes/no directive: set unless empty or `no` (dkms 3.4 clears a `no`; a conf that
/// passed no strict check keeps any other word, which bash's `[[ $X ]]` takes as set).
fn is_yes(value: &str) -> bool {
    !value.is_empty() && !value.eq_ignore_ascii_case("no")
}

/// The module records (BUILT_/DEST_MODULE_NAME/LOCATION, STRIP) with dkms's defaults, and the
/// errors of each, in record order.
fn module_records(raw: &RawConf, d: &Derive, errors: &mut Vec<String>) -> Vec<ModuleRecord> {
    let count = ["BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION", "DEST_MODULE_NAME", "DEST_MODULE_LOCATION"]
        .iter()
        .map(|n| raw.count(n))
        .max()
        .unwrap_or(0);
    let mut modules = Vec::with_capacity(count);
    let mut strip0: Option<bool> = None;
    for index in 0..count {
        let strip = match raw.get("STRIP", index).chars().next() {
            Some('n' | 'N') => false,
            Some('y' | 'Y') => true,
            // An unset entry takes STRIP[0]'s decision; other words leave it at yes.
            _ => strip0.unwrap_or(true),
        };
        if index == 0 {
            strip0 = Some(strip);
        }
        modules.push(module_record(raw, d, index, strip, errors));
    }
    modules
}

/// Record `index`: names defaulted as dkms does, checked, and its destination for this
/// distribution.
fn module_record(raw: &RawConf, d: &Derive, index: usize, strip: bool, errors: &mut Vec<String>) -> ModuleRecord {
    let mut built_name = raw.get("BUILT_MODULE_NAME", index).to_string();
    let mut built_location = raw.get("BUILT_MODULE_LOCATION", index).to_string();
    let mut dest_name = raw.get("DEST_MODULE_NAME", index).to_string();
    let dest_location_raw = raw.get("DEST_MODULE_LOCATION", index).to_string();
    if built_name.is_empty() && raw.count("DEST_MODULE_LOCATION") == 1 {
        // Debian's dkms 3.0.10 defaults to PACKAGE_NAME (upstream used $module).
        built_name = raw.scalar("PACKAGE_NAME").to_string();
    }
    if dest_name.is_empty() {
        dest_name = built_name.clone();
    }
    if !built_location.is_empty() && !built_location.ends_with('/') {
        built_location.push('/');
    }
    if built_name.is_empty() {
        errors.push(format!("dkms.conf: Error! No 'BUILT_MODULE_NAME' directive specified for record #{index}."));
    }
    if built_name.ends_with(".o") || built_name.ends_with(".ko") {
        errors
            .push(format!("dkms.conf: Error! 'BUILT_MODULE_NAME' directive ends in '.o' or '.ko' in record #{index}."));
    }
    if dest_name.ends_with(".o") || dest_name.ends_with(".ko") {
        errors
            .push(format!("dkms.conf: Error! 'DEST_MODULE_NAME' directive ends in '.o' or '.ko' in record #{index}."));
    }
    let dest_location = match (d.addon_modules_dir, distro_dest_location(d.distro)) {
        (Some(dir), _) => format!("/{dir}"),
        (None, Some(fixed)) => fixed.to_string(),
        (None, None) => dest_location_raw.clone(),
    };
    if dest_location_raw.is_empty() {
        errors.push(format!("dkms.conf: Error! No 'DEST_MODULE_LOCATION' directive specified for record #{index}."));
    }
    if !["/kernel", "/updates", "/extra"].iter().any(|p| dest_location_raw.starts_with(p)) {
        errors.push("dkms.conf: Error! Directive 'DEST_MODULE_LOCATION' does not begin with".to_string());
        errors.push(format!("'/kernel', '/updates', or '/extra' in record #{index}."));
    }
    ModuleRecord { built_name, built_location, dest_name, dest_location, dest_location_raw, strip }
}

/// MAKE (the last MAKE_MATCH that matches the kernel wins), else dkms's default, plus the
/// compiler and linker a clang-built kernel needs.
fn make_command(raw: &RawConf, d: &Derive) -> String {
    let mut make_command =
        if raw.get("MAKE_MATCH", 0).is_empty() { raw.get("MAKE", 0).to_string() } else { String::new() };
    if let Some(makes) = raw.vars.get("MAKE") {
        for (&index, make) in makes {
            let pattern = raw.get("MAKE_MATCH", index);
            if !make.is_empty() && !pattern.is_empty() && ere_matches(pattern, d.kernelver) {
                make_command = make.clone();
            }
        }
    }
    if make_command.is_empty() {
        make_command = format!(
            "make -C {} M={}/{}/{}/build",
            d.kernel_source_dir.display(),
            d.build_dkms_tree.display(),
            d.module,
            d.module_version
        );
    }
    if let Some(config) = d.kernel_config {
        if config.lines().any(|l| l.starts_with("CONFIG_CC_IS_CLANG=y")) {
            make_command.push_str(" CC=clang");
        }
        if config.lines().any(|l| l.starts_with("CONFIG_LD_IS_LLD=y")) {
            make_command.push_str(" LD=ld.lld");
        }
    }
    make_command
}

/// PATCH[] entries whose PATCH_MATCH (if any) matches the kernel, in index order.
fn matching_patches(raw: &RawConf, kernelver: &str) -> Vec<String> {
    let mut patches = Vec::new();
    if let Some(list) = raw.vars.get("PATCH") {
        for (&index, patch) in list {
            let pattern = raw.get("PATCH_MATCH", index);
            if !patch.is_empty() && (pattern.is_empty() || ere_matches(pattern, kernelver)) {
                patches.push(patch.clone());
            }
        }
    }
    patches
}

/// Safety, not dkms: package names and versions become directories, module names files; each
/// must be one path component. An empty name has dkms's own message; a '/' in a module name
/// dkms 3.4's strict one.
fn check_path_components(
    package_name: &str,
    package_version: &str,
    modules: &[ModuleRecord],
    strict: bool,
    errors: &mut Vec<String>,
) {
    let components = [("PACKAGE_NAME", package_name), ("PACKAGE_VERSION", package_version)];
    for (directive, value) in components.into_iter().filter(|(_, v)| !v.is_empty()) {
        if let Err(why) = crate::names::check_component(value) {
            errors.push(format!("dkms.conf: Error! '{directive}' value {value:?} cannot be a directory name: {why}."));
        }
    }
    for (index, m) in modules.iter().enumerate() {
        for (directive, value) in [("BUILT_MODULE_NAME", &m.built_name), ("DEST_MODULE_NAME", &m.dest_name)] {
            let bad = match crate::names::check_component(value) {
                Err(crate::names::BadName::Empty) => false,
                Err(crate::names::BadName::Slash) => !strict,
                Err(_) => true,
                Ok(()) => false,
            };
            if bad {
                errors.push(format!(
                    "dkms.conf: Error! '{directive}' value {value:?} in record #{index} cannot be a file name."
                ));
            }
        }
    }
}

/// dkms 3.4's read_conf_strict: AUTOINSTALL values, duplicate BUILT or DEST names, '/' in names.
fn strict_checks(raw: &RawConf, modules: &[ModuleRecord], errors: &mut Vec<String>) {
    for name in ["AUTOINSTALL", "BUILD_DEPENDS_REBUILD"] {
        let value = raw.scalar(name);
        if !value.is_empty() && !value.eq_ignore_ascii_case("yes") && !value.eq_ignore_ascii_case("no") {
            errors.push(format!("dkms.conf: Error! Unsupported {name} value '{value}'"));
        }
    }
    let mut seen = Vec::new();
    for (index, m) in modules.iter().enumerate() {
        let key = format!("{}{}", m.built_location, m.built_name);
        if seen.contains(&key) {
            errors.push(format!("dkms.conf: Error! Duplicate module '{key}' in 'BUILT_MODULE_NAME[{index}]'."));
        }
        seen.push(key);
    }
    let mut seen = Vec::new();
    for (index, m) in modules.iter().enumerate() {
        if seen.contains(&m.dest_name) {
            errors
                .push(format!("dkms.conf: Error! Duplicate module '{}' in 'DEST_MODULE_NAME[{index}]'.", m.dest_name));
        }
        seen.push(m.dest_name.clone());
    }
    for (index, m) in modules.iter().enumerate() {
        if m.dest_name.contains('/') || m.built_name.contains('/') {
            errors.push(format!(
                "dkms.conf: Error! Module names must not contain '/' (record #{index}); use the \
                 BUILT_MODULE_LOCATION and DEST_MODULE_LOCATION directives for directories."
            ));
        }
    }
}

/// The BUILD_EXCLUSIVE directives.
const EXCLUSIVE: [&str; 5] = [
    "BUILD_EXCLUSIVE_KERNEL",
    "BUILD_EXCLUSIVE_KERNEL_MIN",
    "BUILD_EXCLUSIVE_KERNEL_MAX",
    "BUILD_EXCLUSIVE_ARCH",
    "BUILD_EXCLUSIVE_CONFIG",
];

/// dkms 3.4's check_build_exclusive_for_module: element 0 of each BUILD_EXCLUSIVE array (the
/// plain `BUILD_EXCLUSIVE_KERNEL=...` of older confs) applies to every module, element `index`
/// to module `index` as well.
fn module_excluded(raw: &RawConf, d: &Derive, index: usize) -> bool {
    rules_exclude(raw, d, 0) || (index > 0 && rules_exclude(raw, d, index))
}

/// True when any BUILD_EXCLUSIVE directive is set, globally or for one of `count` modules.
fn has_exclusive_directives(raw: &RawConf, count: usize) -> bool {
    EXCLUSIVE.iter().any(|name| (0..count.max(1)).any(|i| !raw.get(name, i).is_empty()))
}

/// Which modules are excluded, and whether the whole build is (dkms 3.4: no module left to
/// build while BUILD_EXCLUSIVE directives are set).
fn exclusions(raw: &RawConf, d: &Derive, count: usize) -> (Vec<bool>, bool) {
    let per_module: Vec<bool> = (0..count).map(|i| module_excluded(raw, d, i)).collect();
    let whole = if count == 0 { rules_exclude(raw, d, 0) } else { per_module.iter().all(|&e| e) };
    (per_module, whole && has_exclusive_directives(raw, count))
}

/// dkms's BUILD_EXCLUSIVE rules, element `index`: KERNEL and ARCH are unanchored EREs (bash
/// `=~`), KERNEL_MIN and KERNEL_MAX compare with VER(), CONFIG needs each `CONFIG_X` set to y or m
/// and each `!CONFIG_X` not, and is skipped when the kernel's configuration cannot be read.
fn rules_exclude(raw: &RawConf, d: &Derive, index: usize) -> bool {
    let kernel = raw.get("BUILD_EXCLUSIVE_KERNEL", index);
    if !kernel.is_empty() && !ere_matches(kernel, d.kernelver) {
        return true;
    }
    let arch = raw.get("BUILD_EXCLUSIVE_ARCH", index);
    if !arch.is_empty() && !ere_matches(arch, d.arch) {
        return true;
    }
    let min = raw.get("BUILD_EXCLUSIVE_KERNEL_MIN", index);
    if !min.is_empty() && ver_key(d.kernelver) < ver_key(min) {
        return true;
    }
    let max = raw.get("BUILD_EXCLUSIVE_KERNEL_MAX", index);
    if !max.is_empty() && ver_key(d.kernelver) > ver_key(max) {
        return true;
    }
    let wanted = raw.get("BUILD_EXCLUSIVE_CONFIG", index);
    if let (false, Some(config)) = (wanted.is_empty(), d.kernel_config) {
        let is_set = |name: &str| {
            config.lines().any(|l| {
                l.strip_prefix(name).and_then(|r| r.strip_prefix('=')).is_some_and(|v| v.starts_with(['y', 'm']))
            })
        };
        for item in wanted.split_whitespace() {
            let excluded = match item.strip_prefix('!') {
                Some(name) => is_set(name),
                None => !is_set(item),
            };
            if excluded {
                return true;
            }
        }
    }
    false
}

/// bash's `[[ text =~ pattern ]]`: an unanchored POSIX ERE. A pattern regex-lite cannot compile
/// never matches, as bash's `=~` returns 2 (false) for an invalid regex.
pub fn ere_matches(pattern: &str, text: &str) -> bool {
    regex_lite::Regex::new(pattern).is_ok_and(|re| re.is_match(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, usize, &str)]) -> RawConf {
        let mut raw = RawConf::default();
        for (name, index, value) in pairs {
            raw.vars.entry(name.to_string()).or_default().insert(*index, value.to_string());
        }
        raw
    }

    fn derive<'a>(distro: &'a str) -> Derive<'a> {
        Derive {
            kernelver: "6.1.0-56-amd64",
            arch: "x86_64",
            distro,
            addon_modules_dir: None,
            kernel_source_dir: Path::new("/k"),
            kernel_config: None,
            build_dkms_tree: Path::new("/var/lib/dkms"),
            module: "m",
            module_version: "1",
            strict: true,
        }
    }

    #[test]
    fn empty_conf_gives_dkms_errors_in_order() {
        let errors = Conf::from_raw(RawConf::default(), &derive("debian")).err().unwrap_or_default();
        assert_eq!(
            errors,
            [
                "dkms.conf: Error! No 'DEST_MODULE_LOCATION' directive specified.",
                "dkms.conf: Error! No 'PACKAGE_NAME' directive specified.",
                "dkms.conf: Error! No 'PACKAGE_VERSION' directive specified.",
            ]
        );
    }

    #[test]
    fn single_record_defaults_and_debian_location() {
        let conf = Conf::from_raw(
            raw(&[("PACKAGE_NAME", 0, "foo"), ("PACKAGE_VERSION", 0, "1"), ("DEST_MODULE_LOCATION", 0, "/extra")]),
            &derive("debian"),
        );
        let conf = conf.ok().unwrap_or_default();
        assert_eq!(conf.modules.len(), 1);
        assert_eq!(conf.modules[0].built_name, "foo");
        assert_eq!(conf.modules[0].dest_location, "/updates/dkms");
        assert_eq!(conf.make_command, "make -C /k M=/var/lib/dkms/m/1/build");
    }

    #[test]
    fn make_match_picks_the_last_matching_entry() {
        let conf = Conf::from_raw(
            raw(&[
                ("PACKAGE_NAME", 0, "foo"),
                ("PACKAGE_VERSION", 0, "1"),
                ("DEST_MODULE_LOCATION", 0, "/extra"),
                ("MAKE", 0, "make zero"),
                ("MAKE", 1, "make one"),
                ("MAKE_MATCH", 1, "^6\\."),
                ("MAKE", 2, "make two"),
                ("MAKE_MATCH", 2, "^5\\."),
            ]),
            &derive("alpine"),
        )
        .ok()
        .unwrap_or_default();
        assert_eq!(conf.make_command, "make one");
        assert_eq!(conf.modules[0].dest_location, "/extra");
    }

    #[test]
    fn build_exclusive_rules() {
        let base = [("PACKAGE_NAME", 0, "foo"), ("PACKAGE_VERSION", 0, "1"), ("DEST_MODULE_LOCATION", 0, "/extra")];
        let with = |extra: (&'static str, usize, &'static str)| {
            let mut all = base.to_vec();
            all.push(extra);
            Conf::from_raw(raw(&all), &derive("debian")).map(|c| c.excluded).unwrap_or(false)
        };
        assert!(with(("BUILD_EXCLUSIVE_ARCH", 0, "none")));
        assert!(!with(("BUILD_EXCLUSIVE_ARCH", 0, "x86_")));
        assert!(with(("BUILD_EXCLUSIVE_KERNEL_MIN", 0, "6.2")));
        assert!(!with(("BUILD_EXCLUSIVE_KERNEL_MAX", 0, "6.2")));
        assert!(with(("BUILD_EXCLUSIVE_KERNEL", 0, "^5\\.")));
    }

    #[test]
    fn per_module_build_exclusive_as_dkms_34() {
        let two = [
            ("PACKAGE_NAME", 0, "foo"),
            ("PACKAGE_VERSION", 0, "1"),
            ("BUILT_MODULE_NAME", 0, "a"),
            ("BUILT_MODULE_NAME", 1, "b"),
            ("DEST_MODULE_LOCATION", 0, "/extra"),
            ("DEST_MODULE_LOCATION", 1, "/extra"),
        ];
        let conf = |extra: &[(&'static str, usize, &'static str)]| {
            let mut all = two.to_vec();
            all.extend_from_slice(extra);
            Conf::from_raw(raw(&all), &derive("debian")).expect("valid conf")
        };
        let names = |c: &Conf| c.modules.iter().map(|m| m.built_name.clone()).collect::<Vec<_>>();
        let only_a = conf(&[("BUILD_EXCLUSIVE_ARCH", 1, "none")]);
        assert_eq!((names(&only_a), only_a.excluded), (vec!["a".to_string()], false));
        // Element 0 is every module's rule: both go, and so does the build.
        assert!(conf(&[("BUILD_EXCLUSIVE_ARCH", 0, "none")]).excluded);
        let none_left = conf(&[("BUILD_EXCLUSIVE_KERNEL_MIN", 1, "9"), ("BUILD_EXCLUSIVE_KERNEL", 0, "^5\\.")]);
        assert!(none_left.excluded);
        let both_kept = conf(&[("BUILD_EXCLUSIVE_KERNEL_MAX", 1, "9")]);
        assert_eq!((names(&both_kept).len(), both_kept.excluded), (2, false));
    }
}
