//! Private files written atomically: temporary file with mode 0600, fsync,
//! then `link` (create only) or `rename` (replace), then fsync of the
//! directory. Used for key files and the users file; and private
//! directories.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Creates `dir` and any missing parents with mode 0700 (ones that exist
/// keep their mode). Key, store and outbox directories all start here.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// What failed, and on which path.
#[derive(Debug)]
pub struct WriteError {
    /// The file or directory.
    pub path: std::path::PathBuf,
    /// What was being done.
    pub action: &'static str,
    /// The OS error.
    pub source: std::io::Error,
}

/// Writes `contents` to `path` atomically with mode 0600. With
/// `create_new`, fails if `path` exists (so two writers cannot both take a
/// name); otherwise replaces it.
pub fn write_private(path: &Path, contents: &[u8], create_new: bool) -> Result<(), WriteError> {
    let err = |p: &Path, action: &'static str| {
        let path = p.to_path_buf();
        move |source| WriteError { path, action, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rnd = [0u8; 6];
    getrandom::fill(&mut rnd).map_err(|e| WriteError {
        path: path.to_path_buf(),
        action: "drawing a temporary name",
        source: std::io::Error::other(e.to_string()),
    })?;
    let tmp = dir.join(format!(".{name}.tmp-{}", URL_SAFE_NO_PAD.encode(rnd)));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err(&tmp, "creating"))?;
        f.write_all(contents).map_err(err(&tmp, "writing"))?;
        f.sync_all().map_err(err(&tmp, "syncing"))?;
        if create_new {
            fs::hard_link(&tmp, path).map_err(err(path, "creating"))?;
            fs::remove_file(&tmp).map_err(err(&tmp, "removing"))
        } else {
            fs::rename(&tmp, path).map_err(err(path, "replacing"))
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir, "syncing the directory"))
}
