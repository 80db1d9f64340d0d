//! VM templates: ready-made system disks that `packaging/setup.sh` builds
//! into Hangar's data directory (`templates/<id>/disk.raw`), and the disk a
//! new VM gets from one.
//!
//! A template's disk is a raw image of one ext4 file system (no partition
//! table) that the default kit's kernel and initramfs boot with
//! `root=/dev/vda`. A VM never boots the template itself: [`clone_disk`]
//! makes the VM its own copy — a reflink where the file system can share
//! extents (Btrfs, XFS), else a sparse copy of the data extents only — and
//! grows it to the size asked for; the guest grows its file system to the
//! disk when it boots.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::config::{DiskConfig, DiskFormat, DisplayConfig, NetworkConfig, VmConfig};
use crate::kit::{DefaultKit, DEFAULT_CMDLINE};

/// Id of the Debian 12 template.
pub const DEBIAN_12: &str = "debian-12";

/// What Hangar knows about each template it can offer: id, title, and the
/// kernel command line words that boot its disk.
const KNOWN: &[(&str, &str, &str)] = &[(DEBIAN_12, "Debian 12", "root=/dev/vda rw")];

/// What [`TemplateStatus::Missing`] says when a template was not built.
pub const MISSING_REASON: &str = "run packaging/setup.sh to build it";

/// A template whose disk image is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Short name, also the directory under `templates/` (e.g. `debian-12`).
    pub id: String,
    /// Name for people (e.g. `Debian 12`).
    pub title: String,
    /// The raw disk image (`templates/<id>/disk.raw`).
    pub image: PathBuf,
    /// The image's size in bytes: the smallest disk a VM made from it gets.
    pub virtual_size: u64,
}

/// Whether a known template can be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateStatus {
    /// Its disk image is present.
    Ready(Template),
    /// It has not been built (or its image is gone).
    Missing {
        /// Short name (e.g. `debian-12`).
        id: String,
        /// Name for people (e.g. `Debian 12`).
        title: String,
        /// What to do about it, in plain words ([`MISSING_REASON`]).
        reason: String,
    },
}

/// Why a VM's disk could not be made from a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The disk asked for is smaller than the template's file system.
    #[error(
        "a {} disk is too small for {title}: its system needs at least {}",
        human_size(*size),
        human_size(*template_size)
    )]
    TooSmall {
        /// The size asked for, in bytes.
        size: u64,
        /// The template's size, in bytes.
        template_size: u64,
        /// The template's name for people.
        title: String,
    },
    /// The size is not a whole number of 512-byte sectors.
    #[error("a disk of {0} bytes is not possible: the size must be a multiple of 512 bytes")]
    UnalignedSize(u64),
    /// Something is already at the destination; it is never overwritten.
    #[error("{0} already exists; Hangar does not overwrite a disk")]
    DestinationExists(PathBuf),
    /// The destination path has no file name or parent directory.
    #[error("{0} is not a path for a disk file")]
    BadDestination(PathBuf),
    /// The template's image could not be read.
    #[error("cannot read the template disk {path}")]
    ReadTemplate {
        /// The template's image.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The new disk could not be written.
    #[error("cannot write the new disk {path}")]
    WriteDisk {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// `bytes` for people: "4 GiB", "1.5 GiB", "300 MiB", "1000 bytes".
fn human_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 2] = [(1 << 30, "GiB"), (1 << 20, "MiB")];
    for (unit, name) in UNITS {
        if bytes >= unit {
            // One decimal is enough for a message; dropped when it is 0.
            let tenths = u128::from(bytes) * 10 / u128::from(unit);
            return if tenths.is_multiple_of(10) {
                format!("{} {name}", tenths / 10)
            } else {
                format!("{}.{} {name}", tenths / 10, tenths % 10)
            };
        }
    }
    format!("{bytes} bytes")
}

/// Every template Hangar knows, each ready or missing, from `data_dir`
/// (Hangar's data directory, see [`crate::kit::data_dir`]).
pub fn available(data_dir: &Path) -> Vec<TemplateStatus> {
    KNOWN
        .iter()
        .map(|&(id, title, _)| {
            let image = data_dir.join("templates").join(id).join("disk.raw");
            match std::fs::metadata(&image) {
                Ok(m) if m.is_file() && m.len() > 0 => TemplateStatus::Ready(Template {
                    id: id.to_string(),
                    title: title.to_string(),
                    image,
                    virtual_size: m.len(),
                }),
                _ => TemplateStatus::Missing {
                    id: id.to_string(),
                    title: title.to_string(),
                    reason: MISSING_REASON.to_string(),
                },
            }
        })
        .collect()
}

/// Makes `dest`, a VM's own raw disk of `size` bytes, from `template`.
///
/// A reflink (`FICLONE`) shares the template's extents where the file
/// system can; elsewhere only the template's data extents are copied
/// (`SEEK_DATA`/`SEEK_HOLE`, all-zero blocks skipped), so the copy stays
/// sparse. `progress(done, total)` gets the bytes copied so far out of the
/// bytes to copy (a reflink reports once, done). The disk is written under a
/// temporary name beside `dest` (private to its owner: a VM's disk holds its
/// data) and renamed into place when complete; an existing `dest` is never
/// replaced, and nothing is left behind on failure.
pub fn clone_disk(
    template: &Template,
    dest: &Path,
    size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), TemplateError> {
    if size < template.virtual_size {
        return Err(TemplateError::TooSmall {
            size,
            template_size: template.virtual_size,
            title: template.title.clone(),
        });
    }
    if !size.is_multiple_of(512) {
        return Err(TemplateError::UnalignedSize(size));
    }
    if dest.symlink_metadata().is_ok() {
        return Err(TemplateError::DestinationExists(dest.to_path_buf()));
    }
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Err(TemplateError::BadDestination(dest.to_path_buf()));
    };
    let read_err = |source| TemplateError::ReadTemplate {
        path: template.image.clone(),
        source,
    };
    let src = File::open(&template.image).map_err(read_err)?;
    let src_len = src.metadata().map_err(read_err)?.len();

    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".part-{}", std::process::id()));
    let mut tmp = PartFile {
        path: dir.join(tmp_name),
        keep: false,
    };
    let write_err = |source| TemplateError::WriteDisk {
        path: tmp.path.clone(),
        source,
    };
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp.path)
        .map_err(write_err)?;

    if !reflink(&src, &out).map_err(write_err)? {
        copy_sparse(&src, &out, src_len, progress).map_err(|e| match e {
            CopyError::Read(source) => read_err(source),
            CopyError::Write(source) => write_err(source),
        })?;
    } else {
        progress(src_len, src_len);
    }
    out.set_len(size).map_err(write_err)?;
    out.sync_all().map_err(write_err)?;
    drop(out);
    rename_noreplace(&tmp.path, dest).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            TemplateError::DestinationExists(dest.to_path_buf())
        } else {
            TemplateError::WriteDisk {
                path: dest.to_path_buf(),
                source,
            }
        }
    })?;
    tmp.keep = true;
    Ok(())
}

/// A machine definition that boots `disk` (made by [`clone_disk`] from
/// `template`) with the default kit's kernel and initramfs: the kit's
/// command line plus the words that mount the disk as the root file system
/// (`root=/dev/vda rw`); the disk is the first, raw and writable.
pub fn vm_config(
    template: &Template,
    kit: &DefaultKit,
    name: &str,
    vcpus: u8,
    memory_mib: u32,
    disk: PathBuf,
    network: Option<NetworkConfig>,
) -> VmConfig {
    let root_args = KNOWN
        .iter()
        .find(|(id, _, _)| *id == template.id)
        .map_or("root=/dev/vda rw", |&(_, _, args)| args);
    VmConfig {
        name: name.to_string(),
        vcpus,
        memory_mib,
        boot: kit.boot(format!("{DEFAULT_CMDLINE} {root_args}")),
        display: DisplayConfig::default_screen(),
        disks: vec![DiskConfig {
            path: disk,
            format: DiskFormat::Raw,
            read_only: false,
        }],
        network,
    }
}

/// The temporary file of a disk being made: removed when dropped, unless
/// it was renamed into place.
struct PartFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Shares `src`'s extents with the empty `dst`. `Ok(false)` when the file
/// system cannot (the caller copies instead).
fn reflink(src: &File, dst: &File) -> io::Result<bool> {
    // SAFETY: FICLONE takes the source descriptor as its argument and reads
    // no memory of ours; both descriptors are open for the call's duration.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Not this file system, across file systems, or no such ioctl.
        Some(
            libc::EOPNOTSUPP
            | libc::EXDEV
            | libc::EINVAL
            | libc::ENOTTY
            | libc::ENOSYS
            | libc::EPERM,
        ) => Ok(false),
        _ => Err(e),
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copy unit: large enough for few system calls, small enough that a
/// partly written chunk is skipped where it is zero.
const CHUNK: usize = 1 << 20;
/// All-zero blocks of this size are left as holes.
const ZERO_BLOCK: usize = 64 << 10;

/// The data extents of `f` (of length `len`), as (start, end) byte ranges;
/// the whole file when the file system cannot tell.
fn data_extents(f: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let seek = |off: u64, whence| -> io::Result<Option<u64>> {
        let off =
            libc::off_t::try_from(off).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: lseek on an open descriptor touches no memory of ours.
        let r = unsafe { libc::lseek(fd, off, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        }
    };
    let mut extents = Vec::new();
    let mut pos = 0;
    while pos < len {
        let start = match seek(pos, libc::SEEK_DATA) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && extents.is_empty() => {
                // No SEEK_DATA here: everything may be data.
                return Ok(vec![(0, len)]);
            }
            Err(e) => return Err(e),
        };
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        if end <= start {
            break;
        }
        extents.push((start, end));
        pos = end;
    }
    Ok(extents)
}

/// Copies the data extents of `src` (of length `len`) into the empty `dst`
/// at the same offsets, leaving holes where `src` has them or reads zero,
/// and sets `dst`'s length to `len`.
fn copy_sparse(
    src: &File,
    dst: &File,
    len: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), CopyError> {
    let extents = data_extents(src, len).map_err(CopyError::Read)?;
    let total: u64 = extents.iter().map(|(s, e)| e - s).sum();
    let mut done = 0u64;
    progress(0, total);
    let mut buf = vec![0u8; CHUNK];
    for (start, end) in extents {
        let mut off = start;
        while off < end {
            // Bounded by CHUNK, so the cast cannot truncate.
            let n = (end - off).min(CHUNK as u64) as usize;
            let chunk = &mut buf[..n];
            src.read_exact_at(chunk, off).map_err(CopyError::Read)?;
            for (i, block) in chunk.chunks(ZERO_BLOCK).enumerate() {
                if block.iter().any(|&b| b != 0) {
                    dst.write_all_at(block, off + (i * ZERO_BLOCK) as u64)
                        .map_err(CopyError::Write)?;
                }
            }
            off += n as u64;
            done += n as u64;
            progress(done, total);
        }
    }
    dst.set_len(len).map_err(CopyError::Write)
}

/// Renames `from` to `to` unless `to` exists (then `AlreadyExists`).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let cstr = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (from_c, to_c) = (cstr(from)?, cstr(to)?);
    // SAFETY: two NUL-terminated paths that live across the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
        return Err(e);
    }
    // A file system without RENAME_NOREPLACE: a hard link fails the same
    // way when `to` exists.
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_testkit::TempDir;
    use std::os::unix::fs::MetadataExt;

    const MIB: u64 = 1 << 20;

    /// A 32 MiB template with data at 0, 10 MiB and 20 MiB + 3 bytes,
    /// holes elsewhere.
    fn make_template(dir: &Path) -> Template {
        let image = dir.join("disk.raw");
        let f = File::create(&image).unwrap();
        f.set_len(32 * MIB).unwrap();
        let pattern: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 + 1).collect();
        f.write_all_at(&pattern, 0).unwrap();
        f.write_all_at(&pattern, 10 * MIB).unwrap();
        f.write_all_at(b"end", 20 * MIB + 3).unwrap();
        f.sync_all().unwrap();
        Template {
            id: DEBIAN_12.into(),
            title: "Debian 12".into(),
            image,
            virtual_size: 32 * MIB,
        }
    }

    fn read(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap()
    }

    #[test]
    fn test_clone_disk_keeps_content_and_holes_and_grows() {
        let dir = TempDir::new("templates");
        let t = make_template(dir.path());
        let dest = dir.join("vm.raw");
        let mut calls = Vec::new();
        clone_disk(&t, &dest, 64 * MIB, &mut |d, n| calls.push((d, n))).unwrap();

        let (src, out) = (read(&t.image), read(&dest));
        assert_eq!(out.len() as u64, 64 * MIB, "grown to the size asked for");
        assert_eq!(&out[..src.len()], &src[..], "same content");
        assert!(
            out[src.len()..].iter().all(|&b| b == 0),
            "the growth reads zero"
        );
        let (sm, dm) = (
            std::fs::metadata(&t.image).unwrap(),
            std::fs::metadata(&dest).unwrap(),
        );
        assert!(
            dm.blocks() <= sm.blocks(),
            "holes kept: {} blocks for the template's {}",
            dm.blocks(),
            sm.blocks()
        );
        assert!(
            dm.blocks() * 512 < 4 * MIB,
            "{} blocks is not sparse",
            dm.blocks()
        );
        assert_eq!(dm.mode() & 0o777, 0o600);
        let &(done, total) = calls.last().unwrap();
        assert_eq!(done, total, "progress ends complete");
        assert!(
            calls.windows(2).all(|w| w[0].0 <= w[1].0),
            "progress only grows"
        );
        // Only the disk is left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn test_copy_sparse_copies_only_data_extents() {
        // The copy path itself, whatever clone_disk's file system allows.
        let dir = TempDir::new("templates");
        let t = make_template(dir.path());
        let src = File::open(&t.image).unwrap();
        let dest = dir.join("copy.raw");
        let dst = File::create(&dest).unwrap();
        let mut last = (0, 0);
        assert!(copy_sparse(&src, &dst, t.virtual_size, &mut |d, n| last = (d, n)).is_ok());
        assert_eq!(read(&dest), read(&t.image));
        let (sm, dm) = (src.metadata().unwrap(), dst.metadata().unwrap());
        assert!(
            dm.blocks() <= sm.blocks(),
            "{} > {}",
            dm.blocks(),
            sm.blocks()
        );
        assert_eq!(last.0, last.1);
        assert!(
            last.1 < 4 * MIB,
            "only the data extents are copied: {}",
            last.1
        );
    }

    #[test]
    fn test_clone_disk_refuses_existing_destination() {
        let dir = TempDir::new("templates");
        let t = make_template(dir.path());
        let dest = dir.join("taken.raw");
        std::fs::write(&dest, b"mine").unwrap();
        let err = clone_disk(&t, &dest, 32 * MIB, &mut |_, _| {}).unwrap_err();
        assert!(matches!(err, TemplateError::DestinationExists(_)), "{err}");
        assert_eq!(read(&dest), b"mine", "left alone");
        // A dangling symlink is something too.
        let link = dir.join("link.raw");
        std::os::unix::fs::symlink(dir.join("nowhere"), &link).unwrap();
        let err = clone_disk(&t, &link, 32 * MIB, &mut |_, _| {}).unwrap_err();
        assert!(matches!(err, TemplateError::DestinationExists(_)), "{err}");
    }

    #[test]
    fn test_clone_disk_refuses_smaller_or_unaligned_size() {
        let dir = TempDir::new("templates");
        let t = make_template(dir.path());
        let dest = dir.join("small.raw");
        let err = clone_disk(&t, &dest, 16 * MIB, &mut |_, _| {}).unwrap_err();
        assert!(matches!(err, TemplateError::TooSmall { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "a 16 MiB disk is too small for Debian 12: its system needs at least 32 MiB"
        );
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(4 << 30), "4 GiB");
        assert_eq!(human_size(1000), "1000 bytes");
        let err = clone_disk(&t, &dest, 32 * MIB + 100, &mut |_, _| {}).unwrap_err();
        assert!(matches!(err, TemplateError::UnalignedSize(_)), "{err}");
        assert!(!dest.exists(), "nothing made");
        // The template's own size is fine.
        clone_disk(&t, &dest, 32 * MIB, &mut |_, _| {}).unwrap();
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), 32 * MIB);
    }

    #[test]
    fn test_clone_disk_missing_template_leaves_nothing() {
        let dir = TempDir::new("templates");
        let mut t = make_template(dir.path());
        t.image = dir.join("gone.raw");
        let dest = dir.join("vm.raw");
        let err = clone_disk(&t, &dest, 32 * MIB, &mut |_, _| {}).unwrap_err();
        assert!(matches!(err, TemplateError::ReadTemplate { .. }), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn test_available_reports_missing_then_ready() {
        let dir = TempDir::new("templates");
        let list = available(dir.path());
        assert_eq!(list.len(), KNOWN.len());
        match &list[0] {
            TemplateStatus::Missing { id, title, reason } => {
                assert_eq!(id, DEBIAN_12);
                assert_eq!(title, "Debian 12");
                assert!(reason.contains("packaging/setup.sh"), "{reason}");
            }
            other => panic!("expected Missing, got {other:?}"),
        }
        let tdir = dir.join("templates").join(DEBIAN_12);
        std::fs::create_dir_all(&tdir).unwrap();
        // An empty file (an interrupted build) is not a template.
        File::create(tdir.join("disk.raw")).unwrap();
        assert!(matches!(
            available(dir.path())[0],
            TemplateStatus::Missing { .. }
        ));
        File::create(tdir.join("disk.raw"))
            .unwrap()
            .set_len(8 * MIB)
            .unwrap();
        match &available(dir.path())[0] {
            TemplateStatus::Ready(t) => {
                assert_eq!(t.id, DEBIAN_12);
                assert_eq!(t.virtual_size, 8 * MIB);
                assert_eq!(t.image, tdir.join("disk.raw"));
            }
            other => panic!("expected Ready, got {other:?}"),
        }
    }

    #[test]
    fn test_vm_config_boots_the_disk_with_the_kit() {
        let kit = DefaultKit {
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initramfs.cpio.gz".into(),
            version: "6.1.0-test".into(),
        };
        let t = Template {
            id: DEBIAN_12.into(),
            title: "Debian 12".into(),
            image: "/t/disk.raw".into(),
            virtual_size: 4 << 30,
        };
        let net = Some(NetworkConfig::default());
        let c = vm_config(&t, &kit, "deb", 2, 1024, "/vms/deb.raw".into(), net.clone());
        assert_eq!(c.name, "deb");
        assert_eq!((c.vcpus, c.memory_mib), (2, 1024));
        let boot = c.kernel_boot().unwrap();
        assert_eq!(boot.kernel, kit.kernel);
        assert_eq!(boot.initrd.as_ref(), Some(&kit.initrd));
        assert!(
            boot.cmdline.starts_with(DEFAULT_CMDLINE),
            "{}",
            boot.cmdline
        );
        assert!(
            boot.cmdline.ends_with(" root=/dev/vda rw"),
            "{}",
            boot.cmdline
        );
        assert_eq!(
            c.disks,
            vec![DiskConfig {
                path: "/vms/deb.raw".into(),
                format: DiskFormat::Raw,
                read_only: false,
            }]
        );
        assert_eq!(c.network, net);
    }
}
