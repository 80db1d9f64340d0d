//! A machine's disk files as the panels show them: sizes in words, what the
//! host says about each disk (read again every few seconds, never every
//! frame), and a file dialog on its own thread. The rules (which folder is
//! the machine's own, which files a delete may remove) are the engine
//! library's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use hangar_engine::disks;
use hangar_engine::{error_text, DiskConfig};

pub use hangar_engine::library::{format_size, machine_dir, DiskFileRow};

/// How old a disk's figures may get before the Overview reads them again.
pub const DISK_INFO_REFRESH: Duration = Duration::from_secs(3);

/// One GiB, the unit disk sizes are chosen in.
pub const GIB: u64 = 1 << 30;

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
    let info = disks::inspect_as(&disk.path, disk.format).map_err(|e| error_text(&e))?;
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
    fn test_rates_in_words() {
        // Sizes in words are the engine library's (tested there).
        assert_eq!(format_rate(1536.0), "2 KiB/s");
        assert_eq!(format_rate(-1.0), "0 B/s");
        assert_eq!(format_size(8 * GIB), "8.0 GiB");
    }
}
