//! mktarball and ldtarball: dkms's archive of a module (its source, or only its dkms.conf, and
//! the modules built for each kernel), written deterministically and read back without letting
//! an entry land outside the directory it is unpacked in.
//!
//! The layout is dkms's: `./dkms_main_tree/<kernel>/<arch>/{module/*.ko,log/make.log}`, then
//! `./dkms_source_tree/...` or `./dkms_binaries_only/{PACKAGE_NAME,PACKAGE_VERSION,dkms.conf}`,
//! compressed as the name says (GNU tar's -a), so dkms's own ldtarball reads it and the reverse.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use cross::{EntryKind, Sysroot};
use initramfs::{Codec, Level};

use super::{print_err, tree, Ctx, Failure, Result, Target};
use crate::exit::Exit;

/// What mktarball puts in the archive and where it goes.
#[derive(Debug, Clone, Default)]
pub struct MakeOptions {
    /// No built modules: the source alone (`source-only` in the name).
    pub source_only: bool,
    /// No source: dkms.conf, PACKAGE_NAME and PACKAGE_VERSION only.
    pub binaries_only: bool,
    /// `--archive`: the file to write (a host path); by default
    /// `<dkms_tree>/<m>/<v>/tarball/<m>-<v>-<kernels>.dkms.tar.gz` in the root.
    pub archive: Option<PathBuf>,
}

/// dkms's make_tarball.
pub fn make(ctx: &Ctx, module: &str, version: &str, targets: &[Target], options: &MakeOptions) -> Result<()> {
    let first = targets.first().cloned().unwrap_or(Target { kernel: String::new(), arch: String::new() });
    // dkms reads the conf first (read_conf_or_die): a broken one stops here.
    ctx.module_conf(module, version, &first, true)?;
    let mut archive = Archive::new(super::date::source_date_epoch().map(|s| s.max(0) as u64));
    // dkms archives its mktemp -d directory, mode 0700.
    archive.dir("./", 0o700).map_err(io_failure)?;
    archive.dir("./dkms_main_tree/", 0o755).map_err(io_failure)?;
    let kernels = if options.source_only {
        vec!["source-only".to_string()]
    } else {
        add_built(ctx, module, version, targets, &mut archive)?
    };
    add_package(ctx, module, version, options.binaries_only, &mut archive)?;
    let mut list = kernels.join("-");
    // dkms counts `wc -m` of the list and its newline.
    if list.chars().count() + 1 > 200 {
        list = "manykernels".to_string();
    }
    let name = match &options.archive {
        Some(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        None => format!("{module}-{version}-{list}.dkms.tar.gz"),
    };
    let bytes = archive.finish(codec_for(&name)).map_err(io_failure)?;
    ctx.say("");
    match &options.archive {
        Some(path) => {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            ctx.say(format!("Tarball location: {}/{name}", dir.display()));
            write_host_file(dir, &name, &bytes)
        }
        None => {
            let dir = ctx.version_dir(module, version).join("tarball");
            // dkms's destination ends in a slash, and it adds one.
            ctx.say(format!("Tarball location: {}//{name}", ctx.shown(&dir).display()));
            let dir = ctx.in_root(&dir)?;
            ctx.root.create_dir_all(&dir).map_err(|e| unwritable(&ctx.shown(&dir), e))?;
            ctx.root.write_atomic(&dir.join(&name), &bytes, None).map_err(|e| unwritable(&ctx.shown(&dir), e))
        }
    }
}

fn io_failure(error: io::Error) -> Failure {
    Failure::io("making the tarball", error)
}

/// `dkms_main_tree/<kernel>/<arch>` for each kernel, which must be built; returns the kernels'
/// part of the tarball's name.
fn add_built(ctx: &Ctx, module: &str, version: &str, targets: &[Target], archive: &mut Archive) -> Result<Vec<String>> {
    let mut kernels = Vec::new();
    for target in targets {
        let built = ctx.version_dir(module, version).join(&target.kernel).join(&target.arch);
        if !ctx.root.is_dir(&built) {
            return Err(Failure::new(
                Exit::TarballNotBuilt,
                [
                    format!("No modules built for {} ({}).", target.kernel, target.arch),
                    "Modules must already be in the built state before using mktarball.".to_string(),
                ],
            ));
        }
        ctx.say(format!("Marking modules for {} ({}) for archiving...", target.kernel, target.arch));
        kernels.push(format!("kernel{}-{}", target.kernel, target.arch));
        let in_archive = format!("./dkms_main_tree/{}/", target.kernel);
        archive.dir(&in_archive, 0o755).map_err(io_failure)?;
        archive.tree(&ctx.root, &built, &format!("{in_archive}{}/", target.arch)).map_err(io_failure)?;
    }
    Ok(kernels)
}

/// The source tree, or with `binaries_only` the package's name, version and dkms.conf.
fn add_package(ctx: &Ctx, module: &str, version: &str, binaries_only: bool, archive: &mut Archive) -> Result<()> {
    ctx.say("");
    if binaries_only {
        ctx.say("Creating tarball structure to specifically accomodate binaries.");
        let conf_path = ctx.conf_path(module, version)?;
        let text = ctx.root.read(&conf_path).map_err(|e| Failure::io(format!("reading {}", conf_path.display()), e))?;
        archive.dir("./dkms_binaries_only/", 0o755).map_err(io_failure)?;
        archive
            .file("./dkms_binaries_only/PACKAGE_NAME", format!("{module}\n").as_bytes(), 0o644)
            .map_err(io_failure)?;
        archive
            .file("./dkms_binaries_only/PACKAGE_VERSION", format!("{version}\n").as_bytes(), 0o644)
            .map_err(io_failure)?;
        archive.file("./dkms_binaries_only/dkms.conf", &text, 0o644).map_err(io_failure)
    } else {
        let source_dir = ctx.version_dir(module, version).join("source");
        ctx.say(format!("Marking {} for archiving...", ctx.shown(&source_dir).display()));
        let resolved = ctx.in_root(&source_dir)?;
        archive.tree(&ctx.root, &resolved, "./dkms_source_tree/").map_err(io_failure)
    }
}

fn unwritable(dir: &Path, error: io::Error) -> Failure {
    Failure::new(
        Exit::TarballUnwritable,
        [format!("Missing write permissions for {}.", dir.display()), format!("({error})")],
    )
}

/// Writes beside the destination, then renames: a killed run leaves no half tarball.
fn write_host_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| unwritable(dir, e))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(|e| unwritable(dir, e))?;
    temp.write_all(bytes).map_err(|e| unwritable(dir, e))?;
    temp.persist(dir.join(name)).map_err(|e| unwritable(dir, e.error))?;
    Ok(())
}

/// GNU tar -a's choice from the file name.
fn codec_for(name: &str) -> Codec {
    let suffixes: [(&[&str], Codec); 5] = [
        (&[".gz", ".tgz", ".taz"], Codec::Gzip),
        (&[".xz", ".txz"], Codec::Xz),
        (&[".zst", ".tzst"], Codec::Zstd),
        (&[".bz2", ".tbz", ".tbz2", ".tz2"], Codec::Bzip2),
        (&[".lzma", ".tlz"], Codec::Lzma),
    ];
    suffixes.iter().find(|(ends, _)| ends.iter().any(|e| name.ends_with(e))).map_or(Codec::None, |(_, codec)| *codec)
}

/// A tar archive in the making: entries in the order added (each tree sorted), owned by root,
/// dated SOURCE_DATE_EPOCH when set, else each file's own mtime.
struct Archive {
    builder: tar::Builder<Vec<u8>>,
    epoch: Option<u64>,
}

impl Archive {
    fn new(epoch: Option<u64>) -> Archive {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        Archive { builder, epoch }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode & 0o7777);
        header.set_size(size);
        header.set_uid(0);
        header.set_gid(0);
        let _ = header.set_username("root");
        let _ = header.set_groupname("root");
        header.set_mtime(self.epoch.unwrap_or(mtime));
        header
    }

    fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let mut header = self.header(tar::EntryType::Directory, mode, 0, 0);
        self.builder.append_data(&mut header, path, io::empty())
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) -> io::Result<()> {
        let mut header = self.header(tar::EntryType::Regular, mode, data.len() as u64, 0);
        self.builder.append_data(&mut header, path, data)
    }

    /// `dir`'s contents under `prefix` (which ends in `/`), through the root handle: files,
    /// directories and symlinks (kept as links, as `cp -r` copies them).
    fn tree(&mut self, root: &Sysroot, dir: &Path, prefix: &str) -> io::Result<()> {
        let meta = root.metadata(dir)?;
        let mut header = self.header(tar::EntryType::Directory, meta_mode(&meta), 0, mtime(&meta));
        self.builder.append_data(&mut header, prefix, io::empty())?;
        let mut entries = root.read_dir(dir)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for entry in entries {
            let host = dir.join(&entry.name);
            let path = format!("{prefix}{}", entry.name.to_string_lossy());
            match entry.kind {
                EntryKind::Dir => self.tree(root, &host, &format!("{path}/"))?,
                EntryKind::Symlink => {
                    let target = root.read_link(&host)?;
                    let meta = root.symlink_metadata(&host)?;
                    let mut header = self.header(tar::EntryType::Symlink, 0o777, 0, mtime(&meta));
                    self.builder.append_link(&mut header, &path, &target)?;
                }
                EntryKind::File => {
                    let mut file = root.open_file(&host)?;
                    let meta = file.metadata()?;
                    let mut data = Vec::with_capacity(meta.len() as usize);
                    file.read_to_end(&mut data)?;
                    let mut header =
                        self.header(tar::EntryType::Regular, meta_mode(&meta), data.len() as u64, mtime(&meta));
                    self.builder.append_data(&mut header, &path, data.as_slice())?;
                }
                EntryKind::Other => {}
            }
        }
        Ok(())
    }

    fn finish(self, codec: Codec) -> io::Result<Vec<u8>> {
        let tar = self.builder.into_inner()?;
        if codec == Codec::None {
            return Ok(tar);
        }
        initramfs::codec::encode(codec, &tar, Level(None))
    }
}

fn meta_mode(meta: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&meta.permissions())
}

fn mtime(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::mtime(meta).max(0) as u64
}

/// The two places a dkms tarball keeps its dkms.conf, in the order dkms looks.
const CONF_PLACES: [&str; 2] = ["dkms_source_tree", "dkms_binaries_only"];

/// dkms's load_tarball and the add that follows it.
pub fn load(ctx: &Ctx, archive: &Path, first: Option<&Target>) -> Result<()> {
    if !archive.exists() {
        return Err(Failure::new(Exit::MissingSource, [format!("{} does not exist.", archive.display())]));
    }
    if archive.extension().is_some_and(|e| e == "rpm") {
        return Err(Failure::new(
            Exit::NoConfInSource,
            [format!(
                "{}: xdkms does not install rpm packages; give it the dkms tarball or the source directory.",
                archive.display()
            )],
        ));
    }
    let scratch = tempfile::Builder::new()
        .prefix("dkms.")
        .tempdir()
        .map_err(|e| Failure::io("creating a scratch directory", e))?;
    unpack(archive, scratch.path())
        .map_err(|e| Failure::new(Exit::NotATarball, [format!("{}: cannot unpack: {e}", archive.display())]))?;
    let target = first.cloned().unwrap_or(Target { kernel: String::new(), arch: String::new() });
    let (place, module, version) = package_of(ctx, archive, scratch.path(), &target)?;
    ctx.say("");
    ctx.say(format!("Loading tarball for {module}-{version}"));
    let source_tree = ctx.in_root(&ctx.source_tree.join(format!("{module}-{version}")))?;
    let conf_dir = scratch.path().join(place);
    if place == "dkms_source_tree" && ctx.force && ctx.root.is_dir(&source_tree) {
        print_err("");
        ctx.say(format!("Forcing install of {module}-{version}"));
    }
    let has_source = ctx.root.is_dir(&source_tree);
    if place == "dkms_binaries_only" && !has_source {
        let source_dir = ctx.version_dir(&module, &version).join("source");
        ctx.say(format!("Creating {}", ctx.shown(&source_dir).display()));
        ctx.say(format!("Copying dkms.conf to {} ...", ctx.shown(&source_dir).display()));
        ctx.root
            .create_dir_all(&source_dir)
            .map_err(|e| Failure::io(format!("creating {}", source_dir.display()), e))?;
        ctx.root
            .copy_in(&conf_dir.join("dkms.conf"), &source_dir.join("dkms.conf"))
            .map_err(|e| Failure::io(format!("writing {}", source_dir.display()), e))?;
    }
    load_built(ctx, &scratch.path().join("dkms_main_tree"), &module, &version)?;
    match place {
        "dkms_source_tree" => tree::add(ctx, None, None, Some(conf_dir), first, false).map(|_| ()),
        _ if has_source => tree::add(ctx, Some(module), Some(version), None, first, false).map(|_| ()),
        // dkms's load_tarball returns false here, so ldtarball exits 1 without adding.
        _ => Err(Failure::new(Exit::Failed, Vec::<String>::new())),
    }
}

/// What a tarball may unpack to: far above any module's source and builds, far below what a
/// small compressed archive could fill a disk with.
const LARGEST_UNPACKED: u64 = 4 << 30;

/// Unpacks a tar archive (plain or compressed in any codec the initramfs reader knows) into
/// `dir`; entries with absolute paths or `..` are refused by the tar reader.
fn unpack(archive: &Path, dir: &Path) -> io::Result<()> {
    let mut file = std::fs::File::open(archive)?;
    let mut head = [0u8; 6];
    let got = file.read(&mut head)?;
    drop(file);
    let codec = Codec::detect(&head[..got]).unwrap_or(Codec::None);
    let mut input = initramfs::stream::Input::new(std::fs::File::open(archive)?);
    let reader = initramfs::stream::decoder(codec, &mut input)?;
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(true);
    tar.set_overwrite(true);
    let mut unpacked = 0u64;
    for entry in tar.entries()? {
        let mut entry = entry?;
        unpacked = unpacked.saturating_add(entry.header().size()?);
        if unpacked > LARGEST_UNPACKED {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("it unpacks to more than {} GiB, more than any module's tarball", LARGEST_UNPACKED >> 30),
            ));
        }
        if !entry.unpack_in(dir)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("entry {} would land outside the archive's directory", entry.path()?.display()),
            ));
        }
    }
    Ok(())
}

/// The dkms.conf dkms would take from an unpacked tarball: where it is, and its package.
fn package_of(ctx: &Ctx, archive: &Path, dir: &Path, target: &Target) -> Result<(&'static str, String, String)> {
    for place in CONF_PLACES {
        let conf_path = dir.join(place).join("dkms.conf");
        if !conf_path.is_file() {
            continue;
        }
        let conf = ctx.read_conf("", "", target, &conf_path, &ctx.dkms_tree, false)?;
        if conf.package_name.is_empty() || conf.package_version.is_empty() {
            print_err("");
            print_err("Malformed dkms.conf, refusing to load.");
            continue;
        }
        if tree::is_added(ctx, &conf.package_name, &conf.package_version) && !ctx.force {
            return Err(Failure::new(
                Exit::BadConf,
                [format!("{}-{} is already added!", conf.package_name, conf.package_version), "Aborting.".to_string()],
            ));
        }
        return Ok((place, conf.package_name, conf.package_version));
    }
    Err(Failure::new(
        Exit::NotATarball,
        [
            "No valid dkms.conf in dkms_source_tree or dkms_binaries_only.".to_string(),
            format!("{} is not a valid DKMS tarball.", archive.display()),
        ],
    ))
}

/// The built modules of each `<kernel>/<arch>` in the tarball, into the dkms tree (an existing
/// build is kept unless --force).
fn load_built(ctx: &Ctx, main_tree: &Path, module: &str, version: &str) -> Result<()> {
    let sorted = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    for kernel in sorted(main_tree) {
        for arch in sorted(&main_tree.join(&kernel)) {
            let dest = ctx.version_dir(module, version).join(&kernel).join(&arch);
            let shown = ctx.shown(&dest);
            if ctx.root.is_dir(&dest) && !ctx.force {
                ctx.warn(format!("{} already exists. Skipping...", shown.display()));
                continue;
            }
            ctx.say(format!("Loading {}...", shown.display()));
            let _ = ctx.root.remove_all(&dest);
            tree::copy_tree(&ctx.root, &main_tree.join(&kernel).join(&arch), &dest)
                .map_err(|e| Failure::io(format!("loading {}", shown.display()), e))?;
        }
    }
    Ok(())
}
