//! The build cache in DKMS terms: what a build's key is made of (the module's source, its
//! dkms.conf as evaluated, the kernel's .config, Module.symvers and release, the toolchain,
//! the signer, the compression, the dependencies' exports), a build answered from the cache,
//! and a fresh build filed in it.
//!
//! What an entry holds is a build's whole result directory (`<k>/<arch>` as it is renamed into
//! place: the modules stripped, signed and compressed, Module.symvers, make.log, the .config,
//! the records), so a hit puts back the very bytes the first build left, logs included.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use initramfs::Codec;

use super::conf::Conf;
use super::sign::Signer;
use super::{Ctx, Failure, Result, Target};
use crate::build_cache::{sha256_hex, CheckedEntry, Key, Put, RestoredFile, Store};

/// Environment variables kbuild reads that change what a module build produces.
const KBUILD_ENVIRONMENT: &[&str] = &[
    "ARCH",
    "CROSS_COMPILE",
    "LLVM",
    "KCFLAGS",
    "KCPPFLAGS",
    "KAFLAGS",
    "KBUILD_BUILD_TIMESTAMP",
    "KBUILD_BUILD_USER",
    "KBUILD_BUILD_HOST",
    "SOURCE_DATE_EPOCH",
];

/// Everything a build's result depends on, gathered by the build before it starts.
pub struct BuildInputs<'a> {
    pub module: &'a str,
    pub version: &'a str,
    pub target: &'a Target,
    pub conf: &'a Conf,
    /// Host paths (resolved inside the root).
    pub source_dir: &'a Path,
    pub headers: &'a Path,
    pub config_text: &'a str,
    /// The compiler make runs (`CC`, or kbuild's default for the target).
    pub compiler: &'a str,
    pub strip: &'a str,
    /// The target's make variables (ARCH, CROSS_COMPILE, LLVM).
    pub make_variables: &'a [(String, String)],
    pub signer: Option<&'a Signer>,
    pub codec: Codec,
}

/// A build's place in the cache: the store (none when the run has no cache but wants the key:
/// `build-one`), its key and what the key was made of.
#[derive(Clone)]
pub struct CacheSlot {
    pub store: Option<Store>,
    pub key: Key,
    pub inputs: BTreeMap<String, String>,
}

/// The slot of the build `inputs` describes, when the run has a cache or records keys.
pub fn slot(ctx: &Ctx, inputs: &BuildInputs) -> Result<Option<CacheSlot>> {
    if ctx.cache.is_none() && ctx.built_keys.is_none() {
        return Ok(None);
    }
    let inputs = key_inputs(ctx, inputs)?;
    Ok(Some(CacheSlot { store: ctx.cache.clone(), key: Key::of(&inputs), inputs }))
}

/// Notes the key of a build that ended in the dkms tree (built or restored), when the run
/// records them.
pub fn note_built(ctx: &Ctx, module: &str, version: &str, target: &Target, slot: &CacheSlot) {
    if let Some(keys) = &ctx.built_keys {
        keys.lock().unwrap_or_else(|e| e.into_inner()).insert(super::build_id(module, version, target), slot.clone());
    }
}

/// The named hashes a build's key is made of.
fn key_inputs(ctx: &Ctx, b: &BuildInputs) -> Result<BTreeMap<String, String>> {
    let read_failure = |what: &Path| {
        let shown = ctx.shown(what);
        move |e: std::io::Error| Failure::io(format!("reading {} for the build cache", shown.display()), e)
    };
    let mut inputs = BTreeMap::new();
    let mut put = |name: &str, value: String| {
        inputs.insert(name.to_string(), value);
    };
    put("xdkms", format!("{} result 1", env!("CARGO_PKG_VERSION")));
    put("module", format!("{}/{}", b.module, b.version));
    put("target", format!("{}/{}", b.target.kernel, b.target.arch));
    put("source", tree_hash(b.source_dir).map_err(read_failure(b.source_dir))?);
    put("dkms.conf", conf_hash(b.conf));
    // Which records the result holds: the built-modules record (not with -c or --directive)
    // and the BUILD_DEPENDS versions (not with --force).
    let records =
        (ctx.conf_override.is_none() && ctx.directives.is_empty(), b.conf.build_depends_rebuild && !ctx.force);
    put("records", format!("{records:?}"));
    put("kernel .config", sha256_hex(b.config_text.as_bytes()));
    put("kernel Module.symvers", file_hash(&b.headers.join("Module.symvers")));
    put("kernel release", uts_release(b.headers).unwrap_or_else(|| b.target.kernel.clone()));
    put("compiler", tool_identity(b.compiler));
    put("strip", b.strip.to_string());
    put("make variables", format!("{:?}", b.make_variables));
    put("environment", environment_hash());
    if let Some(file) = &ctx.build_environment_file {
        put("build_environment", file_hash(file));
    }
    put("signer", signer_identity(b.signer));
    put("compression", format!("{:?}", b.codec));
    for dependency in &b.conf.build_depends {
        put(&format!("depends {dependency}"), dependency_exports(ctx, dependency, b.target));
    }
    Ok(inputs)
}

/// sha256 over a tree: each entry's relative path, kind, executable bit and content (a
/// symlink's target as written), in path order.
fn tree_hash(dir: &Path) -> std::io::Result<String> {
    let mut listing: Vec<u8> = Vec::new();
    let mut pending = vec![PathBuf::new()];
    let mut lines: Vec<(PathBuf, String)> = Vec::new();
    while let Some(rel) = pending.pop() {
        for entry in std::fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let path = rel.join(entry.file_name());
            let meta = std::fs::symlink_metadata(entry.path())?;
            let line = if meta.is_dir() {
                pending.push(path.clone());
                "dir".to_string()
            } else if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(entry.path())?.display())
            } else if meta.is_file() {
                let executable = meta.mode() & 0o111 != 0;
                format!("file {executable} {}", sha256_hex(&std::fs::read(entry.path())?))
            } else {
                "special".to_string()
            };
            lines.push((path, line));
        }
    }
    lines.sort();
    for (path, line) in lines {
        listing.extend_from_slice(path.as_os_str().as_encoded_bytes());
        listing.push(0);
        listing.extend_from_slice(line.as_bytes());
        listing.push(b'\n');
    }
    Ok(sha256_hex(&listing))
}

/// The release the headers compile into modules (UTS_RELEASE, their vermagic's first word).
fn uts_release(headers: &Path) -> Option<String> {
    let text = std::fs::read_to_string(headers.join("include/generated/utsrelease.h")).ok()?;
    let line = text.lines().find_map(|l| l.trim().strip_prefix("#define UTS_RELEASE"))?;
    Some(line.trim().trim_matches('"').to_string())
}

/// sha256 of the conf's variables as evaluated (every element of every whitelisted one).
fn conf_hash(conf: &Conf) -> String {
    let mut text = Vec::new();
    for (name, elements) in &conf.raw.vars {
        for (index, value) in elements {
            text.extend_from_slice(format!("{name}[{index}]=").as_bytes());
            text.extend_from_slice(value.as_bytes());
            text.push(0);
        }
    }
    sha256_hex(&text)
}

/// sha256 of a file's content, or `none` when it cannot be read.
fn file_hash(path: &Path) -> String {
    std::fs::read(path).map_or_else(|_| "none".to_string(), |data| sha256_hex(&data))
}

/// What the compiler says of itself (`--version`, `-dumpmachine`), hashed; the name when it
/// cannot be run (the build will say so).
fn tool_identity(tool: &str) -> String {
    let mut said = Vec::new();
    for flag in ["--version", "-dumpmachine"] {
        match Command::new("sh").arg("-c").arg(format!("exec {tool} {flag}")).output() {
            Ok(output) if output.status.success() => said.extend_from_slice(&output.stdout),
            _ => return format!("{tool} (not runnable)"),
        }
    }
    sha256_hex(&said)
}

/// sha256 of the kbuild variables set in the environment.
fn environment_hash() -> String {
    let text: Vec<String> =
        KBUILD_ENVIRONMENT.iter().filter_map(|name| std::env::var(name).ok().map(|v| format!("{name}={v}"))).collect();
    sha256_hex(text.join("\0").as_bytes())
}

/// Which key signs the modules, if any.
fn signer_identity(signer: Option<&Signer>) -> String {
    match signer {
        None => "unsigned".to_string(),
        Some(Signer::BuiltIn(signer)) => signer.identity(),
        Some(Signer::Program { sign_file, hash, key, cert }) => {
            format!("{} {hash} {key} {}", sign_file.display(), file_hash(cert))
        }
    }
}

/// A dependency's newest version and the exports it was built with for `target` (its
/// Module.symvers, which the dependent's make reads).
fn dependency_exports(ctx: &Ctx, dependency: &str, target: &Target) -> String {
    let root = ctx.dkms_tree.join(dependency);
    let versions = super::tree::sorted_dirs(&ctx.root, &root);
    let Some(version) = versions
        .iter()
        .filter(|v| super::tree::is_added(ctx, dependency, v))
        .max_by(|a, b| super::version::sort_v(a, b))
    else {
        return "not added".to_string();
    };
    let symvers = root.join(version).join(&target.kernel).join(&target.arch).join("module/Module.symvers");
    format!("{version} {}", ctx.root.read(&symvers).map_or_else(|_| "none".to_string(), |d| sha256_hex(&d)))
}

/// The build filed under `slot` written into `result` (a new directory, through the root
/// handle); false on a miss.
pub fn restore(ctx: &Ctx, slot: &CacheSlot, result: &Path) -> Result<bool> {
    let Some(store) = &slot.store else { return Ok(false) };
    write_into(ctx, result, |make_dir, write| store.get(&slot.key, make_dir, write)).map(|hit| hit.is_some())
}

/// A checked entry (a `build-one` output) written into `result` (a new directory).
pub fn write_entry_into(ctx: &Ctx, entry: &CheckedEntry, result: &Path) -> Result<()> {
    write_into(ctx, result, |make_dir, write| entry.write_out(make_dir, write))
}

/// The directory `result` made through the root handle, and filled by `hand_out` with the
/// directories and files of an entry.
fn write_into<T>(
    ctx: &Ctx,
    result: &Path,
    hand_out: impl FnOnce(
        &mut dyn FnMut(&str) -> std::io::Result<()>,
        &mut dyn FnMut(RestoredFile<'_>) -> std::io::Result<()>,
    ) -> std::io::Result<T>,
) -> Result<T> {
    let root = &ctx.root;
    let failed = |path: &Path, e: std::io::Error| Failure::io(format!("writing {}", ctx.shown(path).display()), e);
    root.create_dir_all(result).map_err(|e| failed(result, e))?;
    let mut make_dir = |rel: &str| root.create_dir_all(&result.join(rel));
    let mut write = |file: RestoredFile<'_>| {
        let path = result.join(file.path);
        root.write(&path, file.data)?;
        root.set_permissions(&path, std::fs::Permissions::from_mode(file.mode))
    };
    hand_out(&mut make_dir, &mut write).map_err(|e| failed(result, e))
}

/// A fresh build's result filed under `slot`; a cache that cannot take it is a warning (the
/// build itself succeeded).
pub fn file(ctx: &Ctx, slot: &CacheSlot, result: &Path) {
    let Some(store) = &slot.store else { return };
    match store.put(&slot.key, &slot.inputs, result) {
        Ok(Put::Filed | Put::AlreadyThere) => {}
        Err(e) => ctx.warn(format!("the build was not filed in the build cache {}: {e}", store.dir().display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_hash_changes_with_content_names_and_exec_bits_only() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let dir = scratch.path();
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        std::fs::write(dir.join("sub/a.c"), "int a;").expect("write");
        std::fs::write(dir.join("Makefile"), "obj-m := a.o").expect("write");
        let first = tree_hash(dir).expect("hash");
        assert_eq!(tree_hash(dir).expect("hash"), first);
        std::fs::write(dir.join("sub/a.c"), "int b;").expect("write");
        let changed = tree_hash(dir).expect("hash");
        assert_ne!(changed, first);
        std::fs::set_permissions(dir.join("Makefile"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_ne!(tree_hash(dir).expect("hash"), changed);
        std::fs::rename(dir.join("sub/a.c"), dir.join("sub/b.c")).expect("rename");
        assert_ne!(tree_hash(dir).expect("hash"), changed);
    }
}
