//! Disk images for VMs: the block backends virtio-blk reads and writes
//! through (raw files, qcow2 chains, memory for tests) and the operations
//! on image files (inspect, create, grow, lock).
//!
//! No KVM and no device model here: the device crate and the engine use
//! this one, and the fuzz targets can take it alone.
#![warn(missing_docs)]

pub mod backend;
pub mod disks;
pub mod qcow2;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use backend::{BackendError, BlockBackend, MemoryDisk, RawFile};
pub use disks::{DiskError, DiskInfo, DiskLock};
pub use qcow2::{Qcow2Disk, Qcow2Error};

/// How a disk image stores the guest's sectors.
///
/// Kept in the definition rather than guessed from the file each time: a
/// guest can write anything into a raw image, including a qcow2 header
/// naming a host file as its backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// Sector N is file bytes N*512.
    #[default]
    Raw,
    /// QEMU's copy-on-write format, optionally over a backing file.
    Qcow2,
}

impl std::fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        })
    }
}

/// A disk attached to a VM as a virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// The image file (or block device).
    pub path: PathBuf,
    /// How the image is stored.
    #[serde(default)]
    pub format: DiskFormat,
    /// The guest may read but not write.
    #[serde(default)]
    pub read_only: bool,
}
