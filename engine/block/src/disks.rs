//! Disk images for VMs: look at one a user picked, create an empty one,
//! clone a template as a qcow2 overlay, grow one, and open one for a
//! virtio-blk device.
//!
//! The format is always the one stored in the VM's definition
//! ([`DiskConfig::format`]); only [`inspect`], which looks at a file a user
//! is importing, reads it from the file. A guest can write a qcow2 header
//! into a raw disk, and guessing would then let it name any host file as
//! its backing file.
//!
//! New files appear whole or not at all: they are written under a
//! temporary name in the same directory and linked into place, which also
//! fails if something already has the name, so user data is never
//! overwritten.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use crate::backend::{BackendError, BlockBackend, RawFile};
use crate::qcow2::{self, has_qcow2_magic, Qcow2Disk, Qcow2Error, Qcow2Header, MAX_VIRTUAL_SIZE};
use crate::{DiskConfig, DiskFormat};

/// Largest disk Hangar creates or grows to: 64 TiB.
pub const MAX_DISK_SIZE: u64 = MAX_VIRTUAL_SIZE;

/// Disk sizes are whole sectors.
const SECTOR_SIZE: u64 = 512;

/// Why a disk operation failed, in words for the user.
#[derive(Debug, Error)]
pub enum DiskError {
    /// A file could not be opened, read, written or created.
    #[error("cannot use {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The path is taken; Hangar never replaces an existing file.
    #[error("{0} already exists; choose another name (Hangar never overwrites a file)")]
    AlreadyExists(PathBuf),
    /// A disk of 0 bytes.
    #[error("a disk must not be empty")]
    ZeroSize,
    /// A size that is not whole 512-byte sectors.
    #[error("the disk size must be a multiple of 512 bytes ({0} bytes is not)")]
    NotSectorMultiple(u64),
    /// A size above [`MAX_DISK_SIZE`].
    #[error("{size} bytes is more than the largest disk Hangar supports ({max} bytes)")]
    TooLarge {
        /// The size asked for.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Shrinking was asked for.
    #[error(
        "{path} is {current} bytes; making it {requested} bytes would lose the data at its end, \
         so disks can only grow"
    )]
    WouldShrink {
        /// The image.
        path: PathBuf,
        /// Its size now.
        current: u64,
        /// The size asked for.
        requested: u64,
    },
    /// Another running machine has the disk open.
    #[error(
        "{0} is in use by another running machine; stop it first \
         (two machines writing one disk would corrupt it)"
    )]
    InUse(PathBuf),
    /// An overlay smaller than the disk it is built on.
    #[error(
        "the new disk ({size} bytes) cannot be smaller than the disk it is based on \
         ({backing_size} bytes)"
    )]
    SmallerThanBacking {
        /// The size asked for.
        size: u64,
        /// The backing disk's size.
        backing_size: u64,
    },
    /// A path that cannot be written into a qcow2 header.
    #[error("the path {0} is not valid UTF-8, which a qcow2 image cannot record")]
    PathNotUtf8(PathBuf),
    /// A qcow2-specific problem (damaged, unsupported, backing chain).
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
    /// A raw image could not be opened.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What [`inspect`] found out about an image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// The format, from the file's contents.
    pub format: DiskFormat,
    /// The size the guest sees, in bytes.
    pub virtual_size: u64,
    /// Bytes the file really takes on the host (`st_blocks` × 512), less
    /// than the virtual size for sparse raw files and for qcow2.
    pub allocated: u64,
    /// A qcow2 image's backing file, resolved against the image's directory.
    pub backing_file: Option<PathBuf>,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Look at an existing image a user picked for import: the qcow2 magic
/// decides the format; a qcow2 image's header and tables are checked (a
/// damaged one is an error saying what is wrong). The backing chain is not
/// opened here; [`open_backend`] does that.
pub fn inspect(path: &Path) -> Result<DiskInfo, DiskError> {
    let file = File::open(path).map_err(io_error(path))?;
    let meta = file.metadata().map_err(io_error(path))?;
    let allocated = meta.blocks().saturating_mul(512);
    if has_qcow2_magic(&file).map_err(io_error(path))? {
        let header = qcow2::check_image(file, path)?;
        return Ok(DiskInfo {
            format: DiskFormat::Qcow2,
            virtual_size: header.virtual_size,
            allocated,
            backing_file: header
                .backing_file
                .as_deref()
                .map(|name| qcow2::resolve_backing(path, name)),
        });
    }
    let virtual_size = raw_size(&file).map_err(io_error(path))?;
    Ok(DiskInfo {
        format: DiskFormat::Raw,
        virtual_size,
        allocated,
        backing_file: None,
    })
}

/// Look at an attached disk as its definition says it is stored: a raw
/// disk is measured as a plain file (whatever header a guest wrote into it
/// means nothing, the VM serves it raw), a qcow2 disk's header is read and
/// checked. Used for the figures the app shows.
pub fn inspect_as(path: &Path, format: DiskFormat) -> Result<DiskInfo, DiskError> {
    match format {
        DiskFormat::Qcow2 => {
            let info = inspect(path)?;
            if info.format != DiskFormat::Qcow2 {
                return Err(DiskError::Io {
                    path: path.to_owned(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the file is not a qcow2 image (any more)",
                    ),
                });
            }
            Ok(info)
        }
        DiskFormat::Raw => {
            let file = File::open(path).map_err(io_error(path))?;
            let meta = file.metadata().map_err(io_error(path))?;
            Ok(DiskInfo {
                format: DiskFormat::Raw,
                virtual_size: raw_size(&file).map_err(io_error(path))?,
                allocated: meta.blocks().saturating_mul(512),
                backing_file: None,
            })
        }
    }
}

/// Create a new empty disk of `size` bytes: a sparse raw file, or a qcow2
/// (version 3, 64 KiB clusters). Refuses an existing path, a size of 0, a
/// size that is not whole 512-byte sectors, and sizes above
/// [`MAX_DISK_SIZE`]. A failure leaves no file behind.
pub fn create(path: &Path, format: DiskFormat, size: u64) -> Result<(), DiskError> {
    check_size(size)?;
    create_atomically(path, |file, temp_path| match format {
        DiskFormat::Raw => file.set_len(size).map_err(io_error(temp_path)),
        DiskFormat::Qcow2 => Ok(qcow2::format_new_image(file, temp_path, size, None)?),
    })
}

/// Create a qcow2 image at `path` over `backing` (in `backing_format`, as
/// stored in the template's definition), for cloning a template: reads come
/// from `backing` until the guest writes, and writes go to the new image
/// only. `size` defaults to the backing disk's size and may not be smaller.
/// The backing path is recorded absolute.
pub fn create_overlay(
    path: &Path,
    backing: &Path,
    backing_format: DiskFormat,
    size: Option<u64>,
) -> Result<(), DiskError> {
    let backing = std::fs::canonicalize(backing).map_err(io_error(backing))?;
    let backing_size = backing_size(&backing, backing_format)?;
    let size = match size {
        Some(size) if size < backing_size => {
            return Err(DiskError::SmallerThanBacking { size, backing_size })
        }
        Some(size) => size,
        // A raw template of an odd length still becomes whole sectors.
        None => backing_size.next_multiple_of(SECTOR_SIZE),
    };
    check_size(size)?;
    let backing_name = backing
        .to_str()
        .ok_or_else(|| DiskError::PathNotUtf8(backing.clone()))?;
    create_atomically(path, |file, temp_path| {
        Ok(qcow2::format_new_image(
            file,
            temp_path,
            size,
            Some((backing_name, backing_format)),
        )?)
    })
}

/// Grow the disk at `path` (in its stored `format`) to `new_size` bytes.
/// Shrinking is refused: it would lose the data at the end. For qcow2 the
/// header size changes and the L1 table grows (moved to the end of the file
/// if it must be bigger).
pub fn grow(path: &Path, format: DiskFormat, new_size: u64) -> Result<(), DiskError> {
    check_size(new_size)?;
    // Not under a running machine's feet.
    let _lock = lock(path, true)?;
    match format {
        DiskFormat::Raw => {
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_error(path))?;
            let current = raw_size(&file).map_err(io_error(path))?;
            check_growth(path, current, new_size)?;
            if new_size > current {
                file.set_len(new_size).map_err(io_error(path))?;
                file.sync_all().map_err(io_error(path))?;
            }
            Ok(())
        }
        DiskFormat::Qcow2 => {
            let file = File::open(path).map_err(io_error(path))?;
            let current = Qcow2Header::read(&file, path)?.virtual_size;
            check_growth(path, current, new_size)?;
            Ok(qcow2::grow_image(path, new_size)?)
        }
    }
}

/// A machine's claim on a disk image: an advisory `flock` held for as long
/// as this lives. Writers hold it exclusively, readers shared, so two
/// machines (in this process or in two Hangar processes) never write one
/// image at once, and nobody grows a disk a machine is using.
#[derive(Debug)]
pub struct DiskLock {
    _file: File,
}

/// Claim `path`: exclusively to write it, shared to only read it.
/// [`DiskError::InUse`] when a machine holds a conflicting claim.
pub fn lock(path: &Path, exclusive: bool) -> Result<DiskLock, DiskError> {
    use std::os::unix::io::AsRawFd;
    let file = File::open(path).map_err(io_error(path))?;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    // SAFETY: flock on a descriptor we own; it touches no memory of ours.
    // flock locks belong to this open file description, so a second open
    // in the same process conflicts with the first, as wanted.
    if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            DiskError::InUse(path.to_owned())
        } else {
            DiskError::Io {
                path: path.to_owned(),
                source: e,
            }
        });
    }
    Ok(DiskLock { _file: file })
}

/// Open a VM's disk for its virtio-blk device, in the format its definition
/// records (never guessed: a raw disk whose guest wrote a qcow2 header into
/// it is still served raw), read-only if the definition says so. A qcow2
/// disk's backing files are always opened read-only.
pub fn open_backend(disk: &DiskConfig) -> Result<Box<dyn BlockBackend>, DiskError> {
    Ok(match disk.format {
        DiskFormat::Raw => Box::new(RawFile::open(&disk.path, disk.read_only)?),
        DiskFormat::Qcow2 => Box::new(Qcow2Disk::open(&disk.path, disk.read_only)?),
    })
}

fn check_size(size: u64) -> Result<(), DiskError> {
    if size == 0 {
        return Err(DiskError::ZeroSize);
    }
    if !size.is_multiple_of(SECTOR_SIZE) {
        return Err(DiskError::NotSectorMultiple(size));
    }
    if size > MAX_DISK_SIZE {
        return Err(DiskError::TooLarge {
            size,
            max: MAX_DISK_SIZE,
        });
    }
    Ok(())
}

fn check_growth(path: &Path, current: u64, requested: u64) -> Result<(), DiskError> {
    if requested < current {
        return Err(DiskError::WouldShrink {
            path: path.to_owned(),
            current,
            requested,
        });
    }
    Ok(())
}

/// The size of a raw image; seeking sizes block devices too.
fn raw_size(mut file: &File) -> io::Result<u64> {
    use std::io::Seek;
    file.seek(io::SeekFrom::End(0))
}

/// The guest-visible size of `backing` read as `format`.
fn backing_size(backing: &Path, format: DiskFormat) -> Result<u64, DiskError> {
    let file = File::open(backing).map_err(io_error(backing))?;
    match format {
        DiskFormat::Raw => raw_size(&file).map_err(io_error(backing)),
        DiskFormat::Qcow2 => Ok(qcow2::check_image(file, backing)?.virtual_size),
    }
}

/// A temporary file next to the final path, removed on drop unless it was
/// linked into place.
struct TempFile {
    path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Once linked, the final name holds the data; this name goes either way.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Create `path` by running `fill` on a new temporary file in the same
/// directory, syncing it, and hard-linking it to `path`. `link(2)` never
/// replaces an existing file, so a file created at `path` meanwhile is safe
/// too; any failure removes the temporary file.
fn create_atomically(
    path: &Path,
    fill: impl FnOnce(File, &Path) -> Result<(), DiskError>,
) -> Result<(), DiskError> {
    if path.symlink_metadata().is_ok() {
        return Err(DiskError::AlreadyExists(path.to_owned()));
    }
    let file_name = path.file_name().ok_or_else(|| DiskError::Io {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(
        ".hangar-new-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = TempFile {
        path: dir.join(temp_name),
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&temp.path)
        .map_err(io_error(&temp.path))?;
    fill(file, &temp.path)?;
    // `fill` consumed its handle; sync through a new one so the data is on
    // disk before the name appears.
    File::open(&temp.path)
        .and_then(|f| f.sync_all())
        .map_err(io_error(&temp.path))?;
    std::fs::hard_link(&temp.path, path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            DiskError::AlreadyExists(path.to_owned())
        } else {
            DiskError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    drop(temp);
    // The new name itself survives a crash only once the directory is synced.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(&dir))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> hangar_testkit::TempDir {
        hangar_testkit::TempDir::new(&format!("disks-unit-{name}"))
    }

    #[test]
    fn test_create_refuses_bad_sizes_and_existing_files() {
        let dir = temp_dir("sizes");
        let path = dir.join("d.img");
        assert!(matches!(
            create(&path, DiskFormat::Raw, 0),
            Err(DiskError::ZeroSize)
        ));
        assert!(matches!(
            create(&path, DiskFormat::Qcow2, 1000),
            Err(DiskError::NotSectorMultiple(1000))
        ));
        assert!(matches!(
            create(&path, DiskFormat::Raw, MAX_DISK_SIZE + 512),
            Err(DiskError::TooLarge { .. })
        ));
        create(&path, DiskFormat::Raw, 1 << 20).unwrap();
        std::fs::write(&path, b"user data").unwrap();
        assert!(matches!(
            create(&path, DiskFormat::Qcow2, 1 << 20),
            Err(DiskError::AlreadyExists(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"user data");
        // Only the one file: no temporary left behind by the refusals.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn test_raw_create_is_sparse_and_grows_only() {
        let dir = temp_dir("raw");
        let path = dir.join("d.img");
        create(&path, DiskFormat::Raw, 1 << 30).unwrap();
        let info = inspect(&path).unwrap();
        assert_eq!(info.format, DiskFormat::Raw);
        assert_eq!(info.virtual_size, 1 << 30);
        assert!(info.allocated < 1 << 20, "sparse: {}", info.allocated);
        assert!(matches!(
            grow(&path, DiskFormat::Raw, 1 << 29),
            Err(DiskError::WouldShrink { .. })
        ));
        grow(&path, DiskFormat::Raw, 2 << 30).unwrap();
        assert_eq!(inspect(&path).unwrap().virtual_size, 2 << 30);
    }

    #[test]
    fn test_inspect_as_reads_the_stored_format_not_the_contents() {
        let dir = temp_dir("inspect-as");
        let qcow = dir.join("q.qcow2");
        create(&qcow, DiskFormat::Qcow2, 8 << 20).unwrap();
        let file_len = std::fs::metadata(&qcow).unwrap().len();
        // A raw disk a guest wrote a qcow2 header into: the file's length.
        let raw = inspect_as(&qcow, DiskFormat::Raw).unwrap();
        assert_eq!((raw.format, raw.virtual_size), (DiskFormat::Raw, file_len));
        let q = inspect_as(&qcow, DiskFormat::Qcow2).unwrap();
        assert_eq!((q.format, q.virtual_size), (DiskFormat::Qcow2, 8 << 20));
        // A qcow2 disk that is no qcow2 any more is an error, not raw.
        let plain = dir.join("plain.img");
        create(&plain, DiskFormat::Raw, 1 << 20).unwrap();
        assert!(inspect_as(&plain, DiskFormat::Qcow2).is_err());
    }

    #[test]
    fn test_a_disk_has_one_writer_or_many_readers() {
        let dir = temp_dir("lock");
        let path = dir.join("d.img");
        create(&path, DiskFormat::Raw, 1 << 20).unwrap();
        let writer = lock(&path, true).unwrap();
        assert!(matches!(lock(&path, true), Err(DiskError::InUse(_))));
        assert!(matches!(lock(&path, false), Err(DiskError::InUse(_))));
        // Nor can it grow under the machine using it.
        assert!(matches!(
            grow(&path, DiskFormat::Raw, 2 << 20),
            Err(DiskError::InUse(_))
        ));
        drop(writer);
        let r1 = lock(&path, false).unwrap();
        let _r2 = lock(&path, false).unwrap();
        assert!(matches!(lock(&path, true), Err(DiskError::InUse(_))));
        drop(r1);
        drop(_r2);
        grow(&path, DiskFormat::Raw, 2 << 20).unwrap();
        assert!(lock(&path, true).is_ok());
    }

    #[test]
    fn test_open_backend_uses_the_stored_format() {
        let dir = temp_dir("stored");
        let qcow = dir.join("q.qcow2");
        create(&qcow, DiskFormat::Qcow2, 1 << 20).unwrap();
        // Stored as raw: served raw, header bytes and all.
        let raw = open_backend(&DiskConfig {
            path: qcow.clone(),
            format: DiskFormat::Raw,
            read_only: true,
        })
        .unwrap();
        let mut magic = [0u8; 4];
        raw.read_at(&mut magic, 0).unwrap();
        assert_eq!(magic, *b"QFI\xfb");
        let disk = open_backend(&DiskConfig {
            path: qcow.clone(),
            format: DiskFormat::Qcow2,
            read_only: true,
        })
        .unwrap();
        assert_eq!(disk.size(), 1 << 20);
        assert!(disk.is_read_only());
        assert!(disk.write_at(&[1; 512], 0).is_err());
        // A raw file stored as qcow2 is refused, not guessed.
        let plain = dir.join("plain.img");
        create(&plain, DiskFormat::Raw, 1 << 20).unwrap();
        let err = open_backend(&DiskConfig {
            path: plain,
            format: DiskFormat::Qcow2,
            read_only: false,
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("not a qcow2 image"), "{err}");
    }
}
