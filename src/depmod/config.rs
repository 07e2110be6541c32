//! depmod.d configuration: `search`, `override`, `external` and `exclude` lines, read as kmod does.
//!
//! Unlike kmod, the default directories are looked up inside the target root, so an image build
//! never picks up the build host's own depmod.d.

use std::path::{Path, PathBuf};

use cross::Sysroot;

/// The directories kmod reads, in precedence order. `/usr/lib/depmod.d` is read from kmod 32 on;
/// kmod 30 and 31 see it only where `/lib` links to `/usr/lib` (merged /usr).
pub fn default_dirs(kmod_version: u32) -> Vec<&'static str> {
    let mut dirs = vec!["/etc/depmod.d", "/run/depmod.d", "/usr/local/lib/depmod.d"];
    if kmod_version >= 32 {
        dirs.push("/usr/lib/depmod.d");
    }
    dirs.push("/lib/depmod.d");
    dirs
}

/// One `search` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Search {
    BuiltIn,
    External,
    Path(Vec<u8>),
}

/// The merged configuration. Lists are in kmod's internal order, which is the reverse of the order
/// of the lines (kmod prepends each entry to a linked list); the duplicate-module rules depend on it.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub searches: Vec<Search>,
    /// `SUBDIR/MODNAME` as written in the config (no extension).
    pub overrides: Vec<Vec<u8>>,
    /// External directories as target paths.
    pub externals: Vec<Vec<u8>>,
    pub excludes: Vec<Vec<u8>>,
}

/// A configuration problem kmod reports and goes on from.
pub type Warnings = Vec<String>;

impl Config {
    /// Loads the configuration for kernel `version`. `explicit` are the `-C` paths (host paths,
    /// files or directories); without them the default directories of `kmod_version` are read
    /// inside `root`.
    pub fn load(
        root: &Sysroot,
        explicit: &[PathBuf],
        version: &str,
        kmod_version: u32,
        warnings: &mut Warnings,
    ) -> Config {
        let mut files: Vec<(Vec<u8>, PathBuf)> = Vec::new();
        // `-C` paths are the build host's, as kmod takes them; the default directories the root's.
        let host = Sysroot::host();
        let (reader, listed): (&Sysroot, Vec<(PathBuf, PathBuf)>) = if explicit.is_empty() {
            let dirs = default_dirs(kmod_version).into_iter();
            (root, dirs.filter_map(|dir| Some((root.resolve(dir).ok()?, PathBuf::from(dir)))).collect())
        } else {
            match &host {
                Ok(host) => (host, explicit.iter().map(|p| (crate::fsio::absolute(p.clone()), p.clone())).collect()),
                Err(e) => {
                    warnings.push(format!("cannot open /: {e}"));
                    return Config::default();
                }
            }
        };
        for (path, shown) in &listed {
            list_config_files(reader, path, shown, &mut files, warnings);
        }
        let mut config = Config::default();
        for (_, path) in &files {
            let text = match reader.metadata(path) {
                Ok(meta) if !meta.is_file() => {
                    Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"))
                }
                _ => reader.read(path).map_err(cross::without_path),
            };
            match text {
                Ok(text) => config.parse_file(&text, path, version, warnings),
                Err(e) => warnings.push(format!("file parse {}: {e}", path.display())),
            }
        }
        // kmod: with no `search` line at all, `updates` comes first (and beats everything else).
        if config.searches.is_empty() {
            config.searches.push(Search::Path(b"updates".to_vec()));
        }
        config
    }

    /// Parses one file's text into the lists (prepending, as kmod does).
    pub fn parse_file(&mut self, text: &[u8], path: &Path, version: &str, warnings: &mut Warnings) {
        for (line_no, line) in logical_lines(text) {
            if line.is_empty() || line[0] == b'#' {
                continue;
            }
            let mut words = line.split(|&b| b == b' ' || b == b'\t').filter(|w| !w.is_empty());
            let Some(cmd) = words.next() else { continue };
            let at = || format!("{}:{line_no}", path.display());
            match cmd {
                b"search" => {
                    for word in words {
                        self.searches.insert(
                            0,
                            match word {
                                b"built-in" => Search::BuiltIn,
                                b"external" => Search::External,
                                path => Search::Path(path.to_vec()),
                            },
                        );
                    }
                }
                b"override" => {
                    let (Some(modname), Some(kver), Some(subdir)) = (words.next(), words.next(), words.next()) else {
                        warnings.push(format!("{}: ignoring bad line starting with 'override'", at()));
                        continue;
                    };
                    if kernel_matches(kver, version) {
                        let mut entry = subdir.to_vec();
                        entry.push(b'/');
                        entry.extend_from_slice(modname);
                        self.overrides.insert(0, entry);
                    }
                }
                b"external" => {
                    let (Some(kver), Some(dir)) = (words.next(), words.next()) else {
                        warnings.push(format!("{}: ignoring bad line starting with 'external'", at()));
                        continue;
                    };
                    if kernel_matches(kver, version) {
                        self.externals.insert(0, dir.to_vec());
                    }
                }
                b"exclude" => {
                    for word in words {
                        self.excludes.insert(0, word.to_vec());
                    }
                }
                b"include" | b"make_map_files" => {}
                other => warnings.push(format!(
                    "{}: ignoring bad line starting with '{}'",
                    at(),
                    String::from_utf8_lossy(other)
                )),
            }
        }
    }
}

/// kmod's kernel-version match: `*`, or a POSIX extended regex searched anywhere in the version.
/// A pattern that does not compile matches nothing, as in kmod.
fn kernel_matches(pattern: &[u8], version: &str) -> bool {
    if pattern == b"*" {
        return true;
    }
    let Ok(pattern) = std::str::from_utf8(pattern) else { return false };
    regex_lite::Regex::new(pattern).map(|re| re.is_match(version)).unwrap_or(false)
}

/// Logical lines as kmod's `freadline_wrapped` reads them: a backslash-newline joins lines, a
/// backslash before any other byte is dropped, and each line is numbered by the line it ends on.
fn logical_lines(text: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut line = Vec::new();
    let mut line_no = 0;
    let mut bytes = text.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(b'\n') => line_no += 1,
                Some(next) => line.push(next),
                None => {}
            },
            b'\n' => {
                line_no += 1;
                out.push((line_no, std::mem::take(&mut line)));
            }
            other => line.push(other),
        }
    }
    if !line.is_empty() {
        out.push((line_no + 1, line));
    }
    out
}

/// Adds the `.conf` files of `host` (a file or a directory) to `files`, kept sorted by basename;
/// a basename already listed from an earlier directory shadows this one. `shown` is the name used
/// in messages.
fn list_config_files(
    reader: &Sysroot,
    host: &Path,
    shown: &Path,
    files: &mut Vec<(Vec<u8>, PathBuf)>,
    warnings: &mut Warnings,
) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(meta) = reader.metadata(host) else { return };
    let mut add = |name: Vec<u8>, path: PathBuf| {
        if let Err(pos) = files.binary_search_by(|(n, _)| n.as_slice().cmp(&name)) {
            files.insert(pos, (name, path));
        }
    };
    if !meta.is_dir() {
        let name = host.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
        add(name, host.to_path_buf());
        return;
    }
    let entries = match reader.read_dir_in_order(host) {
        Ok(entries) => entries,
        Err(e) => {
            warnings.push(format!("files list {}: {}", shown.display(), cross::without_path(e)));
            return;
        }
    };
    for entry in entries {
        let name = entry.name.as_bytes().to_vec();
        if name.first() == Some(&b'.') || name.len() < 6 || !name.ends_with(b".conf") {
            continue;
        }
        let path = host.join(&entry.name);
        if reader.metadata(&path).map(|m| m.is_dir()).unwrap_or(false) {
            warnings.push(format!(
                "Directories inside directories are not supported: {}/{}",
                shown.display(),
                String::from_utf8_lossy(&name)
            ));
            continue;
        }
        add(name, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Config, Warnings) {
        let mut config = Config::default();
        let mut warnings = Vec::new();
        config.parse_file(text.as_bytes(), Path::new("t.conf"), "6.1.0-56-amd64", &mut warnings);
        (config, warnings)
    }

    #[test]
    fn usr_lib_depmod_d_from_kmod_32() {
        assert!(!default_dirs(30).contains(&"/usr/lib/depmod.d"));
        assert_eq!(default_dirs(34)[3], "/usr/lib/depmod.d");
    }

    #[test]
    fn lists_are_reversed_like_kmod() {
        let (config, warnings) = parse("search updates extra built-in\nexclude a b\n");
        assert!(warnings.is_empty());
        assert_eq!(
            config.searches,
            vec![Search::BuiltIn, Search::Path(b"extra".to_vec()), Search::Path(b"updates".to_vec())]
        );
        assert_eq!(config.excludes, vec![b"b".to_vec(), b"a".to_vec()]);
    }

    #[test]
    fn override_and_external_match_the_kernel() {
        let (config, _) = parse("override foo 6\\.1\\..* extra\noverride bar ^5 x\nexternal * /opt/ext\n");
        assert_eq!(config.overrides, vec![b"extra/foo".to_vec()]);
        assert_eq!(config.externals, vec![b"/opt/ext".to_vec()]);
        // kmod's line reader drops the backslash of `\.`, so `5\..*` becomes `5..*` and matches "-56-".
        let (config, _) = parse("override bar 5\\..* x\n");
        assert_eq!(config.overrides, vec![b"x/bar".to_vec()]);
    }

    #[test]
    fn continuation_and_bad_lines() {
        let (config, warnings) = parse("search a \\\n b\n# c\nbogus x\noverride only-two 1\n");
        assert_eq!(config.searches, vec![Search::Path(b"b".to_vec()), Search::Path(b"a".to_vec())]);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        // The joined first line spans lines 1-2, so `bogus` is on line 4.
        assert!(warnings[0].contains("t.conf:4: ignoring bad line starting with 'bogus'"), "{warnings:?}");
    }
}
