//! Block backends: where a virtio-blk disk's bytes live.
//!
//! The device checks every request against [`BlockBackend::size`] before it
//! calls the backend; backends check again, so that a device bug cannot turn
//! into a write past the end of the image.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use thiserror::Error;

/// Zero-filled chunk for writing zeroes when the host cannot do it for us.
const ZERO_CHUNK: usize = 64 * 1024;

/// Errors opening a backend.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The image file could not be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image's path.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// The image's size could not be found.
    #[error("cannot find the size of the disk image: {0}")]
    Size(#[source] io::Error),
    /// An in-memory disk larger than this host's address space.
    #[error("an in-memory disk of {0} bytes does not fit in memory")]
    TooLarge(u64),
}

/// A disk image the virtio-blk device reads and writes at byte offsets.
///
/// Methods take `&self` so that several queues (later) can share one
/// backend; positional I/O needs no seek position.
pub trait BlockBackend: Send + Sync {
    /// The image's size in bytes, fixed while the device exists.
    fn size(&self) -> u64;

    /// Whether the image was opened read-only.
    fn is_read_only(&self) -> bool;

    /// Fill `buf` from `offset`; a short read is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Write all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Make every completed write durable on the host (a guest flush).
    fn flush(&self) -> io::Result<()>;

    /// Whether [`discard`](Self::discard) is worth offering to the guest.
    fn supports_discard(&self) -> bool {
        false
    }

    /// Let the host deallocate `len` bytes at `offset`. The guest may not
    /// rely on what it reads back afterwards, so doing nothing is correct.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// Whether [`write_zeroes`](Self::write_zeroes) may deallocate.
    fn write_zeroes_may_unmap(&self) -> bool {
        false
    }

    /// Make `len` bytes at `offset` read back as zeroes; `unmap` allows the
    /// host to deallocate them. By default, writes zeroes.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let _ = unmap;
        write_zero_chunks(self, offset, len)
    }
}

/// Write `len` zero bytes at `offset` through `write_at`, a chunk at a time.
fn write_zero_chunks<B: BlockBackend + ?Sized>(
    backend: &B,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let zeroes = [0u8; ZERO_CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK as u64) as usize;
        backend.write_at(&zeroes[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// `offset..offset + len` inside an image of `size` bytes, or an error.
fn check_range(offset: u64, len: u64, size: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{len} bytes at {offset} are outside the {size}-byte image"),
        )),
    }
}

/// Errors that mean "this file system cannot do that fallocate mode".
fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

/// A raw image: guest sector N is file bytes N*512.., nothing else.
///
/// Works on regular files and block devices. A size that is not a multiple
/// of 512 leaves the partial last sector invisible to the guest.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
    read_only: bool,
    /// Cleared the first time the host file system refuses a mode, so the
    /// next request goes straight to the fallback.
    punch_hole: AtomicBool,
    zero_range: AtomicBool,
}

impl RawFile {
    /// Open the image at `path`, read-only or read-write.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BackendError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BackendError::Open {
                path: path.to_owned(),
                source,
            })?;
        Self::from_file(file, read_only)
    }

    /// Use an already open image. `read_only` must be set if `file` was
    /// opened without write access.
    pub fn from_file(mut file: File, read_only: bool) -> Result<Self, BackendError> {
        // Seeking to the end also sizes block devices, whose metadata says 0.
        let size = file.seek(SeekFrom::End(0)).map_err(BackendError::Size)?;
        Ok(Self {
            file,
            size,
            read_only,
            punch_hole: AtomicBool::new(true),
            zero_range: AtomicBool::new(true),
        })
    }

    fn refuse_if_read_only(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the disk image is read-only",
            ));
        }
        Ok(())
    }

    /// `fallocate(2)` with `mode | FALLOC_FL_KEEP_SIZE`, retried on EINTR.
    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "range exceeds off_t");
        let off = libc::off_t::try_from(offset).map_err(|_| too_big())?;
        let n = libc::off_t::try_from(len).map_err(|_| too_big())?;
        loop {
            // SAFETY: fallocate takes only scalars; the descriptor belongs to
            // `self.file`, which is open for as long as `self` lives.
            let r = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    mode | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    n,
                )
            };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Try one fallocate mode unless it is known not to work here. `Ok(true)`
    /// when it did the job, `Ok(false)` when the caller should fall back.
    fn try_mode(
        &self,
        flag: &AtomicBool,
        mode: libc::c_int,
        offset: u64,
        len: u64,
    ) -> io::Result<bool> {
        if !flag.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match self.fallocate(mode, offset, len) {
            Ok(()) => Ok(true),
            Err(e) if is_unsupported(&e) => {
                log::info!(
                    "virtio-blk: fallocate mode {mode:#x} unsupported here ({e}); falling back"
                );
                flag.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

impl BlockBackend for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.refuse_if_read_only()?;
        check_range(offset, buf.len() as u64, self.size)?;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        // fdatasync: the data and what is needed to read it back, not mtime.
        self.file.sync_data()
    }

    fn supports_discard(&self) -> bool {
        !self.read_only
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.refuse_if_read_only()?;
        check_range(offset, len, self.size)?;
        // Discard is a hint: where holes cannot be punched, the data stays.
        // (Writing zeroes instead would turn a guest's whole-disk discard at
        // mkfs time into a full write of the image.)
        self.try_mode(&self.punch_hole, libc::FALLOC_FL_PUNCH_HOLE, offset, len)
            .map(|_| ())
    }

    fn write_zeroes_may_unmap(&self) -> bool {
        !self.read_only
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.refuse_if_read_only()?;
        check_range(offset, len, self.size)?;
        // A punched hole reads back as zeroes, so it serves both.
        if unmap && self.try_mode(&self.punch_hole, libc::FALLOC_FL_PUNCH_HOLE, offset, len)? {
            return Ok(());
        }
        if self.try_mode(&self.zero_range, libc::FALLOC_FL_ZERO_RANGE, offset, len)? {
            return Ok(());
        }
        write_zero_chunks(self, offset, len)
    }
}

/// A disk held in host memory: scratch disks, tests and fuzzing.
#[derive(Debug)]
pub struct MemoryDisk {
    data: Mutex<Vec<u8>>,
    read_only: bool,
}

impl MemoryDisk {
    /// A zero-filled writable disk of `size` bytes.
    pub fn new(size: u64) -> Result<Self, BackendError> {
        let len = usize::try_from(size).map_err(|_| BackendError::TooLarge(size))?;
        Ok(Self::from_bytes(vec![0; len], false))
    }

    /// A disk holding `data`.
    pub fn from_bytes(data: Vec<u8>, read_only: bool) -> Self {
        Self {
            data: Mutex::new(data),
            read_only,
        }
    }

    /// A copy of the disk's current contents.
    pub fn contents(&self) -> Vec<u8> {
        match self.data.lock() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Run `f` on the bytes `offset..offset + len`, checked against the size.
    fn with_range<T>(
        &self,
        offset: u64,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> T,
    ) -> io::Result<T> {
        let mut data = self
            .data
            .lock()
            .map_err(|_| io::Error::other("in-memory disk lock poisoned"))?;
        check_range(offset, len as u64, data.len() as u64)?;
        // In range of a Vec's length, so both fit in usize.
        let start = offset as usize;
        Ok(f(&mut data[start..start + len]))
    }

    fn refuse_if_read_only(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the disk is read-only",
            ));
        }
        Ok(())
    }
}

impl BlockBackend for MemoryDisk {
    fn size(&self) -> u64 {
        match self.data.lock() {
            Ok(d) => d.len() as u64,
            Err(poisoned) => poisoned.into_inner().len() as u64,
        }
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with_range(offset, buf.len(), |d| buf.copy_from_slice(d))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.refuse_if_read_only()?;
        self.with_range(offset, buf.len(), |d| d.copy_from_slice(buf))
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn supports_discard(&self) -> bool {
        !self.read_only
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes_may_unmap(&self) -> bool {
        !self.read_only
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        self.refuse_if_read_only()?;
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))?;
        self.with_range(offset, len, |d| d.fill(0))
    }
}

/// A disk chosen at run time (raw or qcow2) behind the generic device.
impl BlockBackend for Box<dyn BlockBackend> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn is_read_only(&self) -> bool {
        (**self).is_read_only()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
    fn supports_discard(&self) -> bool {
        (**self).supports_discard()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).discard(offset, len)
    }
    fn write_zeroes_may_unmap(&self) -> bool {
        (**self).write_zeroes_may_unmap()
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        (**self).write_zeroes(offset, len, unmap)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use hangar_testkit::TempImage;

    #[test]
    fn test_raw_file_round_trip_and_bounds() {
        let img = TempImage::new(8192);
        let disk = RawFile::open(&img.0, false).unwrap();
        assert_eq!(disk.size(), 8192);
        disk.write_at(&[7; 512], 512).unwrap();
        let mut buf = [0u8; 512];
        disk.read_at(&mut buf, 512).unwrap();
        assert_eq!(buf, [7; 512]);
        disk.flush().unwrap();
        assert!(disk.read_at(&mut buf, 8192 - 511).is_err());
        assert!(disk.write_at(&buf, u64::MAX).is_err());
        assert!(disk.write_zeroes(8000, 500, false).is_err());
    }

    #[test]
    fn test_raw_file_write_zeroes_and_discard_read_back_zero() {
        let img = TempImage::new(1 << 20);
        let disk = RawFile::open(&img.0, false).unwrap();
        disk.write_at(&vec![0xab; 1 << 20], 0).unwrap();
        disk.write_zeroes(4096, 8192, false).unwrap();
        disk.write_zeroes(65536, 4096, true).unwrap();
        disk.discard(131072, 4096).unwrap();
        let data = std::fs::read(&img.0).unwrap();
        assert_eq!(data.len(), 1 << 20, "KEEP_SIZE: the file does not grow");
        assert!(data[4096..12288].iter().all(|&b| b == 0));
        assert!(data[65536..69632].iter().all(|&b| b == 0));
        assert_eq!(data[4095], 0xab);
        assert_eq!(data[12288], 0xab);
        assert_eq!(data[69632], 0xab);
    }

    #[test]
    fn test_raw_file_fallback_writes_zeroes() {
        let img = TempImage::new(65536);
        let disk = RawFile::open(&img.0, false).unwrap();
        disk.write_at(&[0xcd; 65536], 0).unwrap();
        // As if the file system refused both modes.
        disk.punch_hole.store(false, Ordering::Relaxed);
        disk.zero_range.store(false, Ordering::Relaxed);
        disk.write_zeroes(512, 1024, true).unwrap();
        let data = std::fs::read(&img.0).unwrap();
        assert!(data[512..1536].iter().all(|&b| b == 0));
        assert_eq!(data[511], 0xcd);
        assert_eq!(data[1536], 0xcd);
    }

    #[test]
    fn test_raw_file_read_only_refuses_writes() {
        let img = TempImage::new(4096);
        let disk = RawFile::open(&img.0, true).unwrap();
        assert!(disk.is_read_only());
        assert!(!disk.supports_discard());
        assert!(disk.write_at(&[1; 512], 0).is_err());
        assert!(disk.write_zeroes(0, 512, false).is_err());
        assert!(disk.discard(0, 512).is_err());
        let mut buf = [1u8; 512];
        disk.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [0; 512]);
        disk.flush().unwrap();
    }

    #[test]
    fn test_raw_file_open_missing_file_is_an_error() {
        let err = RawFile::open(Path::new("/nonexistent/hangar.img"), true).unwrap_err();
        assert!(matches!(err, BackendError::Open { .. }));
    }

    #[test]
    fn test_memory_disk_bounds() {
        let disk = MemoryDisk::new(1024).unwrap();
        disk.write_at(&[3; 512], 512).unwrap();
        assert!(disk.write_at(&[3; 512], 513).is_err());
        assert!(disk.write_zeroes(u64::MAX, 2, false).is_err());
        assert_eq!(&disk.contents()[512..], &[3; 512]);
    }
}
