//! Module files read from outside the root's tree: an image's, left out of the scratch root a
//! command on the image works in, because reading them from the image costs less than copying
//! them out and removing them again.

use std::collections::HashMap;

/// One module file outside the root's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsideFile {
    /// Its path in the root, without the leading `/`.
    pub path: String,
    pub size: u64,
}

/// Module files that belong in the root's tree but are read from elsewhere.
pub trait OutsideFiles: std::fmt::Debug + Send + Sync {
    /// The files, each once.
    fn files(&self) -> &[OutsideFile];
    /// Reads file `index` of [`OutsideFiles::files`] from `offset` into `buf`; how many bytes
    /// (fewer only at its end).
    fn read_at(&self, index: usize, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;
}

/// The outside files of each directory (root path without the leading `/`), by their names
/// with the files' indexes, in the order given.
pub fn by_directory(outside: &dyn OutsideFiles) -> HashMap<&str, Vec<(&str, usize)>> {
    let mut dirs: HashMap<&str, Vec<(&str, usize)>> = HashMap::new();
    for (index, file) in outside.files().iter().enumerate() {
        let (dir, name) = file.path.rsplit_once('/').unwrap_or(("", &file.path));
        dirs.entry(dir).or_default().push((name, index));
    }
    dirs
}
