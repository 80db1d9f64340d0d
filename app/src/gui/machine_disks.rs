//! A machine's disk files as the app sees them: the folder Hangar keeps the
//! disks it makes in (`<data>/machines/<id>/`), free names for new ones,
//! sizes in words, what the host says about each disk (read again every few
//! seconds, never every frame), which files a delete may remove, and a file
//! dialog on its own thread.
//!
//! Kept apart from the panels that show these (Overview, wizard, delete
//! dialog) because all three need the same rules.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use hangar_engine::disks;
use hangar_engine::{DiskConfig, DiskFormat};

/// How old a disk's figures may get before the Overview reads them again.
pub const DISK_INFO_REFRESH: Duration = Duration::from_secs(3);

/// One GiB, the unit disk sizes are chosen in.
pub const GIB: u64 = 1 << 30;

/// The folder of the disks Hangar makes for machine `id`. Only files in it
/// are ever deleted with a machine; images the user attached from
/// elsewhere stay.
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
/// smallest N that neither a file nor one of `attached` uses. (The engine
/// still refuses to replace a file that appears meanwhile.)
pub fn new_disk_path(dir: &Path, format: DiskFormat, attached: &[DiskConfig]) -> PathBuf {
    (1u32..)
        .map(|n| dir.join(format!("disk-{n}.{}", extension(format))))
        .find(|p| p.symlink_metadata().is_err() && !attached.iter().any(|d| &d.path == p))
        .unwrap_or_else(|| dir.join(format!("disk.{}", extension(format))))
}

/// Bytes in words: `0 B`, `512 B`, `196 KiB`, `12.5 MiB`, `8.0 GiB`, `2.0 TiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            return if unit == "KiB" {
                format!("{} KiB", bytes.div_ceil(1024))
            } else {
                format!("{:.1} {unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes} B")
}

/// A rate in words, e.g. `1.5 MiB/s`.
pub fn format_rate(bytes_per_second: f64) -> String {
    format!(
        "{}/s",
        format_size(bytes_per_second.max(0.0).round() as u64)
    )
}

/// The sizes of a disk file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSizes {
    /// What the guest sees, in bytes.
    pub virtual_size: u64,
    /// What the file takes on the host, in bytes.
    pub allocated: u64,
}

/// Sizes of `disk`, read as its definition's format says (a raw disk as a
/// plain file, whatever a guest wrote into it).
pub fn disk_sizes(disk: &DiskConfig) -> Result<DiskSizes, String> {
    let info = disks::inspect_as(&disk.path, disk.format).map_err(|e| e.to_string())?;
    Ok(DiskSizes {
        virtual_size: info.virtual_size,
        allocated: info.allocated,
    })
}

/// Disk figures read at most every [`DISK_INFO_REFRESH`], by path.
#[derive(Default)]
pub struct DiskInfoCache {
    entries: HashMap<PathBuf, (Instant, Result<DiskSizes, String>)>,
}

impl DiskInfoCache {
    /// The figures of `disk`, read again if older than the refresh time.
    pub fn get(&mut self, disk: &DiskConfig) -> Result<DiskSizes, String> {
        let fresh = self
            .entries
            .get(&disk.path)
            .is_some_and(|(read, _)| read.elapsed() < DISK_INFO_REFRESH);
        if !fresh {
            self.entries
                .insert(disk.path.clone(), (Instant::now(), disk_sizes(disk)));
        }
        self.entries
            .get(&disk.path)
            .map(|(_, sizes)| sizes.clone())
            .unwrap_or_else(|| Err("not read yet".into()))
    }

    /// Forget everything (the disks changed).
    pub fn invalidate(&mut self) {
        self.entries.clear();
    }
}

/// True if `path` is a file inside `dir` once symlinks are resolved (a link
/// in the machine's folder to a file elsewhere is not inside it).
pub fn is_inside(path: &Path, dir: &Path) -> bool {
    match (std::fs::canonicalize(path), std::fs::canonicalize(dir)) {
        (Ok(path), Ok(dir)) => path != dir && path.starts_with(&dir),
        _ => false,
    }
}

/// A disk file as the delete dialog lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// True if "delete disk files" removes it.
    pub fn deletable(&self) -> bool {
        self.kept_because.is_none()
    }
}

/// The disk files of machine `id` and which of them a delete may remove:
/// those inside its own folder that no other machine uses.
/// `others` are the other machines' names and disks.
pub fn delete_rows<'a>(
    disks: &[DiskConfig],
    own_dir: Option<&Path>,
    others: impl Iterator<Item = (&'a str, &'a [DiskConfig])> + Clone,
) -> Vec<DiskFileRow> {
    disks
        .iter()
        .map(|disk| {
            let sizes = disk_sizes(disk).ok();
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
            } else {
                user.map(|(name, _)| format!("also used by \"{name}\": kept"))
            };
            DiskFileRow {
                path: disk.path.clone(),
                allocated: sizes.map(|s| s.allocated),
                virtual_size: sizes.map(|s| s.virtual_size),
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

/// A file dialog on its own short-lived thread, so the window stays live
/// while it is open.
#[derive(Default)]
pub struct FilePicker {
    rx: Option<Receiver<Option<PathBuf>>>,
}

impl FilePicker {
    /// Open a dialog titled `title`.
    pub fn open(&mut self, title: &'static str, ctx: &egui::Context) {
        let (tx, rx) = mpsc::channel();
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("file-dialog".into())
            .spawn(move || {
                let picked = rfd::FileDialog::new().set_title(title).pick_file();
                let _ = tx.send(picked);
                ctx.request_repaint();
            });
        match spawned {
            Ok(_) => self.rx = Some(rx),
            Err(e) => log::warn!("cannot open a file dialog: {e}"),
        }
    }

    /// True while the dialog is open.
    pub fn is_open(&self) -> bool {
        self.rx.is_some()
    }

    /// The file picked, once the dialog has closed with one.
    pub fn poll(&mut self) -> Option<PathBuf> {
        let rx = self.rx.as_ref()?;
        match rx.try_recv() {
            Ok(picked) => {
                self.rx = None;
                picked
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.rx = None;
                None
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn test_sizes_in_words() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(200 * 1024 - 5), "200 KiB");
        assert_eq!(format_size(3 << 20), "3.0 MiB");
        assert_eq!(format_size(8 * GIB), "8.0 GiB");
        assert_eq!(format_size(2 << 40), "2.0 TiB");
        assert_eq!(format_rate(1536.0), "2 KiB/s");
    }

    #[test]
    fn test_new_disk_path_skips_taken_names() {
        let dir =
            vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hangar-disks-app-").unwrap();
        let d = dir.as_path();
        assert_eq!(new_disk_path(d, DiskFormat::Raw, &[]), d.join("disk-1.raw"));
        std::fs::write(d.join("disk-1.raw"), b"").unwrap();
        let attached = [DiskConfig {
            path: d.join("disk-2.raw"),
            format: DiskFormat::Raw,
            read_only: false,
        }];
        assert_eq!(
            new_disk_path(d, DiskFormat::Raw, &attached),
            d.join("disk-3.raw")
        );
        assert_eq!(
            new_disk_path(d, DiskFormat::Qcow2, &attached),
            d.join("disk-1.qcow2")
        );
    }

    #[test]
    fn test_only_own_unshared_files_are_deletable() {
        let tmp =
            vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hangar-disks-app-").unwrap();
        let own = tmp.as_path().join("machines/m1");
        std::fs::create_dir_all(&own).unwrap();
        let raw = |path: PathBuf| DiskConfig {
            path,
            format: DiskFormat::Raw,
            read_only: false,
        };
        let mine = own.join("disk.raw");
        let shared = own.join("shared.raw");
        let outside = tmp.as_path().join("outside.raw");
        let link = own.join("link.raw");
        for f in [&mine, &shared, &outside] {
            std::fs::write(f, vec![0u8; 4096]).unwrap();
        }
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let disks: Vec<_> = [&mine, &shared, &outside, &link]
            .into_iter()
            .map(|p| raw(p.clone()))
            .collect();
        let other = vec![raw(shared.clone())];
        let rows = delete_rows(
            &disks,
            Some(&own),
            [("Other", other.as_slice())].into_iter(),
        );
        let deletable: Vec<bool> = rows.iter().map(DiskFileRow::deletable).collect();
        assert_eq!(deletable, [true, false, false, false], "{rows:?}");
        assert_eq!(rows[0].virtual_size, Some(4096));
        assert!(rows[1].kept_because.as_deref().unwrap().contains("Other"));
        assert!(rows[2].kept_because.as_deref().unwrap().contains("outside"));
    }
}
