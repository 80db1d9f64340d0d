//! Hangar's data directory: every kind keeps its files under it (the kit,
//! templates, machines, images, containers).

use std::path::PathBuf;

/// Environment variable that overrides Hangar's data directory.
pub const DATA_DIR_ENV: &str = "HANGAR_DATA_DIR";

/// Neither the override nor a home directory names a data directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot determine Hangar's data directory (is HOME set?)")]
pub struct NoDataDir;

/// Hangar's data directory: `$HANGAR_DATA_DIR`, else the XDG data dir.
pub fn data_dir() -> Result<PathBuf, NoDataDir> {
    if let Some(d) = std::env::var_os(DATA_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    directories::ProjectDirs::from("", "", "hangar")
        .map(|p| p.data_dir().to_path_buf())
        .ok_or(NoDataDir)
}
