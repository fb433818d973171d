//! Where the dev mesh keeps the bootstrap operator key, so later starts can print working
//! commands. Dev only: `palisade serve identity` prints the key once and keeps nothing but its
//! hash.

use std::{fs, io::Write, path::Path, path::PathBuf};

const KEY_FILE: &str = "operator-api-key";

/// The key file in the dev data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Writes `key` to [`path`], readable by its owner only (also when the file was not).
pub fn save(data_dir: &Path, key: &str) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path(data_dir))?;
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(format!("{key}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_key_file_that_was_readable_by_all_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        fs::write(&path, "old\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

        save(dir.path(), "pal_new").unwrap();

        assert_eq!(fs::read_to_string(&path).unwrap(), "pal_new\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
