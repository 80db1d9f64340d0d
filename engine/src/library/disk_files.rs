//! A machine's disk files as the library sees them: the folder Hangar keeps
//! the disks it makes in (`<data>/machines/<id>/`), free names for new ones,
//! and which files a delete may remove.
//!
//! The rule for deletes is deliberately narrow: only files inside the
//! machine's own folder that no other machine uses. Images the user
//! attached from elsewhere are never deleted.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{DiskConfig, DiskFormat};
use crate::disks;

/// The folder of the disks Hangar makes for machine `id`.
pub fn machine_dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("machines").join(id)
}

/// File name extension for a format.
fn extension(format: DiskFormat) -> &'static str {
    match format {
        DiskFormat::Raw => "raw",
        DiskFormat::Qcow2 => "qcow2",
    }
}

/// A path in `dir` for a new disk: `disk-N.raw` / `disk-N.qcow2` with the
/// smallest N that neither a file nor one of `attached` uses. (Creating
/// the disk still refuses to replace a file that appears meanwhile.)
pub fn new_disk_path(dir: &Path, format: DiskFormat, attached: &[DiskConfig]) -> PathBuf {
    (1u32..)
        .map(|n| dir.join(format!("disk-{n}.{}", extension(format))))
        .find(|p| p.symlink_metadata().is_err() && !attached.iter().any(|d| &d.path == p))
        .unwrap_or_else(|| dir.join(format!("disk.{}", extension(format))))
}

/// True if `path` is a file inside `dir` once symlinks are resolved (a link
/// in the machine's folder to a file elsewhere is not inside it).
pub fn is_inside(path: &Path, dir: &Path) -> bool {
    match (std::fs::canonicalize(path), std::fs::canonicalize(dir)) {
        (Ok(path), Ok(dir)) => path != dir && path.starts_with(&dir),
        _ => false,
    }
}

/// A disk file of a machine, and whether deleting the machine with its
/// disks removes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFileRow {
    /// The file.
    pub path: PathBuf,
    /// What it takes on the host (None: cannot be read).
    pub allocated: Option<u64>,
    /// What the guest sees.
    pub virtual_size: Option<u64>,
    /// Why Hangar will not delete it, if it will not.
    pub kept_because: Option<String>,
}

impl DiskFileRow {
    /// True if deleting the machine with its disks removes it.
    pub fn deletable(&self) -> bool {
        self.kept_because.is_none()
    }
}

/// The disk files of a machine and which of them a delete may remove:
/// those inside its own folder that no other machine uses. `others` are
/// the other machines' names and disks.
pub fn delete_rows<'a>(
    disks: &[DiskConfig],
    own_dir: Option<&Path>,
    others: impl Iterator<Item = (&'a str, &'a [DiskConfig])> + Clone,
) -> Vec<DiskFileRow> {
    disks
        .iter()
        .map(|disk| {
            let sizes = disks::inspect_as(&disk.path, disk.format).ok();
            let inside = own_dir.is_some_and(|dir| is_inside(&disk.path, dir));
            let user = others.clone().find(|(_, their)| {
                their
                    .iter()
                    .any(|d| d.path == disk.path || same_file(&d.path, &disk.path))
            });
            let kept_because = if !disk.path.exists() {
                Some("the file is gone".to_string())
            } else if !inside {
                Some("outside the machine's own folder: kept".to_string())
            } else if let Some((name, _)) = user {
                Some(format!("also used by \"{name}\": kept"))
            } else if matches!(
                disks::lock(&disk.path, true),
                Err(disks::DiskError::InUse(_))
            ) {
                // Held by a machine running here or in another Hangar.
                Some("in use by a running machine: kept".to_string())
            } else {
                None
            };
            DiskFileRow {
                path: disk.path.clone(),
                allocated: sizes.as_ref().map(|s| s.allocated),
                virtual_size: sizes.as_ref().map(|s| s.virtual_size),
                kept_because,
            }
        })
        .collect()
}

/// True if both paths name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hangar_testkit::TempDir;

    #[test]
    fn new_disk_path_skips_taken_names() {
        let dir = TempDir::new("library-new-disk-path");
        let raw = |n| dir.path().join(format!("disk-{n}.raw"));
        assert_eq!(new_disk_path(dir.path(), DiskFormat::Raw, &[]), raw(1));
        std::fs::write(raw(1), b"").unwrap();
        let attached = [DiskConfig {
            path: raw(2),
            format: DiskFormat::Raw,
            read_only: false,
        }];
        assert_eq!(
            new_disk_path(dir.path(), DiskFormat::Raw, &attached),
            raw(3)
        );
        assert_eq!(
            new_disk_path(dir.path(), DiskFormat::Qcow2, &attached),
            dir.path().join("disk-1.qcow2")
        );
    }

    #[test]
    fn only_own_unshared_files_are_deletable() {
        let data = TempDir::new("library-delete-rows");
        let own = machine_dir(data.path(), "m1");
        std::fs::create_dir_all(&own).unwrap();
        let disk = |path: PathBuf| DiskConfig {
            path,
            format: DiskFormat::Raw,
            read_only: false,
        };
        let mine = own.join("disk-1.raw");
        let shared = own.join("disk-2.raw");
        let outside = data.path().join("elsewhere.raw");
        let link = own.join("link.raw");
        for f in [&mine, &shared, &outside] {
            std::fs::write(f, vec![0u8; 4096]).unwrap();
        }
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let gone = own.join("gone.raw");
        let disks = [
            disk(mine.clone()),
            disk(shared.clone()),
            disk(outside.clone()),
            disk(link.clone()),
            disk(gone.clone()),
        ];
        let other_disks = [disk(shared.clone())];
        let others = [("Other", &other_disks[..])];
        let rows = delete_rows(&disks, Some(&own), others.iter().copied());
        let kept: Vec<_> = rows.iter().map(|r| r.kept_because.as_deref()).collect();
        assert_eq!(
            kept,
            [
                None,
                Some("also used by \"Other\": kept"),
                Some("outside the machine's own folder: kept"),
                Some("outside the machine's own folder: kept"),
                Some("the file is gone"),
            ]
        );
        assert_eq!(rows[0].virtual_size, Some(4096));
        assert_eq!(rows[4].allocated, None);
        // Without a data folder nothing is Hangar's own.
        let rows = delete_rows(&disks[..1], None, std::iter::empty());
        assert!(!rows[0].deletable());
    }
}
