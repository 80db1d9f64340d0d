//! virtio-blk request handling (virtio 1.2, section 5.2), without transport.
//!
//! A request is one descriptor chain: device-readable bytes (a 16-byte
//! header, then data for writes, discards and write-zeroes), then
//! device-writable bytes (data for reads and GET_ID) ending in a one-byte
//! status. The header and data may be split across descriptors in any way
//! (the spec forbids assuming a layout); the status must be the last byte of
//! the chain's last descriptor.
//!
//! Every guest address is checked against guest memory before the backend
//! is touched, so a bad buffer fails the request before any disk I/O; data
//! moves through a bounded host buffer, so no guest-chosen length sizes an
//! allocation.

use std::io;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use super::IoCounters;
use crate::Persist;
use hangar_block::BlockBackend;

/// virtio-blk's sector: capacity and request offsets count in these.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the request header (type, reserved, sector).
pub const REQUEST_HEADER_LEN: u64 = 16;
/// Length of the GET_ID answer; shorter serials are padded with zeroes.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// Largest queue the transport should offer; fixes `seg_max`.
pub const QUEUE_SIZE_MAX: u16 = 256;
/// Length of one discard / write-zeroes range in the request data.
const SEGMENT_RANGE_LEN: u64 = 16;
/// Length of the config space as [`BlkConfig::to_bytes`] lays it out
/// (every field up to `write_zeroes_may_unmap` and its padding).
pub const CONFIG_SPACE_LEN: usize = 60;

/// Status values the device writes, as bytes.
pub const STATUS_OK: u8 = VIRTIO_BLK_S_OK as u8;
/// The request failed (bad request, bad range, host I/O error, read-only).
pub const STATUS_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
/// The request type or one of its flags is not supported.
pub const STATUS_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Host buffer between guest memory and the backend.
const COPY_CHUNK: usize = 128 * 1024;
/// Largest data segment the guest may use (`size_max`).
const SIZE_MAX: u32 = 1024 * 1024;
/// Largest discard / write-zeroes range: 1 GiB, so the write-zeroes fallback
/// (plain writes) stays bounded per request.
const MAX_ZEROING_SECTORS: u32 = 1 << 21;

/// Why a request failed. Each maps to the status the guest sees, or to none
/// when the chain has no usable status byte.
#[derive(Debug, Error)]
pub enum RequestError {
    /// The chain yielded no descriptor at all.
    #[error("empty descriptor chain")]
    EmptyChain,
    /// The chain stopped at a descriptor that still says "next": a loop, a
    /// next index outside the table, an unreadable descriptor or an invalid
    /// indirect table.
    #[error("descriptor chain is cut short (loop, bad index or bad indirect table)")]
    TruncatedChain,
    /// The last descriptor cannot hold the status byte.
    #[error("the last descriptor is not a writable status byte")]
    NoStatus,
    /// More descriptors than `seg_max` allows.
    #[error("{count} descriptors, at most {max} allowed")]
    TooManyDescriptors {
        /// Descriptors in the chain.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A device-readable descriptor after a device-writable one.
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
    /// A buffer that is not entirely in guest memory.
    #[error("buffer of {len} bytes at {addr:#x} is outside guest memory")]
    BufferOutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// Fewer readable bytes than a request header.
    #[error("request header needs 16 readable bytes, chain has {0}")]
    HeaderTooShort(u64),
    /// Readable data on a request that takes none, or writable data on one
    /// that returns none.
    #[error("data in the wrong direction for request type {0}")]
    WrongDirection(u32),
    /// A request that needs data has none.
    #[error("request type {0} has no data")]
    MissingData(u32),
    /// Fewer readable bytes than a fixed-size structure needs.
    #[error("structure cut short after {0} bytes")]
    ShortData(u64),
    /// Read or write data that is not whole sectors.
    #[error("data length {0} is not a multiple of 512")]
    NotSectorMultiple(u64),
    /// More data than `seg_max` × `size_max`.
    #[error("request of {0} bytes is too large")]
    TooLarge(u64),
    /// Sectors past the end of the disk, or an overflowing range.
    #[error("sectors {sector}+{count} are outside the {capacity}-sector disk")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        count: u64,
        /// The disk's capacity in sectors.
        capacity: u64,
    },
    /// A write, discard or write-zeroes to a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// A request type the device does not implement.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// A request whose feature the driver did not negotiate.
    #[error("request type {0} needs a feature the driver did not accept")]
    FeatureNotNegotiated(u32),
    /// Discard / write-zeroes flags the device does not know or allow.
    #[error("unsupported flags {0:#x} in a discard / write-zeroes range")]
    UnsupportedFlags(u32),
    /// Discard / write-zeroes ranges or sizes beyond the advertised limits.
    #[error("discard / write-zeroes request beyond the advertised limits")]
    ZeroingLimits,
    /// Guest memory could not be read or written although checked before.
    #[error("guest memory access failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The backend failed.
    #[error("disk I/O failed: {0}")]
    Io(#[from] io::Error),
}

impl RequestError {
    /// The status byte the guest gets for this error.
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) | Self::FeatureNotNegotiated(_) | Self::UnsupportedFlags(_) => {
                STATUS_UNSUPP
            }
            _ => STATUS_IOERR,
        }
    }
}

/// Errors building a device.
#[derive(Debug, Error)]
pub enum BlkError {
    /// A snapshot whose disk geometry does not match the backend it is
    /// restored onto.
    #[error("snapshot is for a {saved}-sector disk, the image has {actual} sectors")]
    CapacityMismatch {
        /// Capacity in the snapshot.
        saved: u64,
        /// Capacity of the backend.
        actual: u64,
    },
    /// A snapshot of a writable disk restored onto a read-only backend.
    #[error("snapshot is of a writable disk, the image is read-only")]
    ReadOnlyMismatch,
    /// A snapshot whose limits do not match what this device offers.
    #[error("snapshot config does not match the device: {0}")]
    ConfigMismatch(&'static str),
    /// A snapshot whose driver accepted features the device never offers.
    #[error("snapshot has features {0:#x} accepted that the disk does not offer")]
    FeaturesNotOffered(u64),
}

/// What the transport does with a finished request.
#[derive(Debug)]
pub struct RequestOutcome {
    /// Bytes the device wrote into the chain, status included: the length
    /// for the used ring (0 when nothing could be written).
    pub used_len: u32,
    /// The status byte written, or `None` when the chain had no usable
    /// status byte; the transport still returns the chain to the guest.
    pub status: Option<u8>,
    /// Why the request failed, for the log.
    pub error: Option<RequestError>,
}

/// The device's config space and the features that go with it.
///
/// Field meanings follow `struct virtio_blk_config`; fields not listed
/// (geometry, topology, writeback, num_queues) read as zero.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkConfig {
    /// Disk size in 512-byte sectors.
    pub capacity: u64,
    /// Largest data segment, in bytes.
    pub size_max: u32,
    /// Most data segments in one request.
    pub seg_max: u32,
    /// Logical block size the guest should use.
    pub blk_size: u32,
    /// Largest discard in sectors.
    pub max_discard_sectors: u32,
    /// Most ranges in one discard.
    pub max_discard_seg: u32,
    /// Discard alignment hint, in sectors.
    pub discard_sector_alignment: u32,
    /// Largest write-zeroes in sectors.
    pub max_write_zeroes_sectors: u32,
    /// Most ranges in one write-zeroes.
    pub max_write_zeroes_seg: u32,
    /// Whether write-zeroes may deallocate.
    pub write_zeroes_may_unmap: bool,
    /// The disk refuses writes (VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// The disk offers discard (VIRTIO_BLK_F_DISCARD).
    pub discard: bool,
    /// The disk offers write-zeroes (VIRTIO_BLK_F_WRITE_ZEROES).
    pub write_zeroes: bool,
}

impl BlkConfig {
    /// The config for a disk on `backend`.
    pub fn for_backend(backend: &dyn BlockBackend) -> Self {
        let read_only = backend.is_read_only();
        Self {
            capacity: backend.size() / SECTOR_SIZE,
            size_max: SIZE_MAX,
            // Two descriptors go to the header and the status.
            seg_max: u32::from(QUEUE_SIZE_MAX) - 2,
            blk_size: SECTOR_SIZE as u32,
            max_discard_sectors: MAX_ZEROING_SECTORS,
            max_discard_seg: 1,
            // 4 KiB, the host file systems' usual hole granularity.
            discard_sector_alignment: 8,
            max_write_zeroes_sectors: MAX_ZEROING_SECTORS,
            max_write_zeroes_seg: 1,
            write_zeroes_may_unmap: !read_only && backend.write_zeroes_may_unmap(),
            read_only,
            discard: !read_only && backend.supports_discard(),
            write_zeroes: !read_only,
        }
    }

    /// The features the device offers: virtio 1.x, indirect descriptors
    /// (the chain reader follows them) and the disk's own.
    pub fn device_features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            // Always: without it the guest assumes a write-through cache and
            // never asks for the fdatasync its data needs.
            | (1 << VIRTIO_BLK_F_FLUSH);
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        if self.discard {
            f |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        if self.write_zeroes {
            f |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    /// The config space as the guest reads it (little-endian, spec layout).
    pub fn to_bytes(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut b = [0u8; CONFIG_SPACE_LEN];
        b[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        b[8..12].copy_from_slice(&self.size_max.to_le_bytes());
        b[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        // 16..20 geometry: not offered.
        b[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        // 24..32 topology, 32 writeback, 33 unused, 34..36 num_queues.
        b[36..40].copy_from_slice(&self.max_discard_sectors.to_le_bytes());
        b[40..44].copy_from_slice(&self.max_discard_seg.to_le_bytes());
        b[44..48].copy_from_slice(&self.discard_sector_alignment.to_le_bytes());
        b[48..52].copy_from_slice(&self.max_write_zeroes_sectors.to_le_bytes());
        b[52..56].copy_from_slice(&self.max_write_zeroes_seg.to_le_bytes());
        b[56] = u8::from(self.write_zeroes_may_unmap);
        b
    }
}

/// A virtio-blk device's state, for snapshots.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BlkState {
    /// Features the driver accepted.
    pub acked_features: u64,
    /// The config space.
    pub config: BlkConfig,
    /// The GET_ID serial, zero-padded.
    pub serial: [u8; VIRTIO_BLK_ID_BYTES],
}

/// A guest buffer: one descriptor, or the part of one a request uses.
#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: GuestAddress,
    len: u64,
}

/// A chain sorted into its parts; built only when the status is writable.
struct Layout {
    /// Readable bytes after the header.
    out_data: Vec<Segment>,
    out_len: u64,
    /// Writable bytes before the status.
    in_data: Vec<Segment>,
    in_len: u64,
    header: [u8; REQUEST_HEADER_LEN as usize],
}

/// A virtio-blk device: config, negotiated features and request execution.
pub struct VirtioBlk<B: BlockBackend> {
    backend: B,
    counters: Arc<IoCounters>,
    config: BlkConfig,
    acked_features: u64,
    serial: [u8; VIRTIO_BLK_ID_BYTES],
    buf: Vec<u8>,
}

impl<B: BlockBackend> VirtioBlk<B> {
    /// A device for `backend`; `serial` answers GET_ID (cut to 20 bytes).
    pub fn new(backend: B, serial: &str) -> Self {
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
        let s = serial.as_bytes();
        let n = s.len().min(VIRTIO_BLK_ID_BYTES);
        id[..n].copy_from_slice(&s[..n]);
        Self {
            config: BlkConfig::for_backend(&backend),
            backend,
            acked_features: 0,
            counters: Arc::default(),
            serial: id,
            buf: vec![0; COPY_CHUNK],
        }
    }

    /// The config space values.
    pub fn config(&self) -> &BlkConfig {
        &self.config
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Bytes and requests served so far.
    pub fn counters(&self) -> &Arc<IoCounters> {
        &self.counters
    }

    /// Features offered to the driver.
    pub fn device_features(&self) -> u64 {
        self.config.device_features()
    }

    /// Record the driver's features; bits the device did not offer are
    /// dropped.
    pub fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.device_features();
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// A guest read of the config space; bytes past its end read as zero.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        let bytes = self.config.to_bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| bytes.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn acked(&self, bit: u32) -> bool {
        self.acked_features & (1u64 << bit) != 0
    }

    /// Run one request: parse `chain`, execute it on the backend, write the
    /// status into `mem`. Descriptors are read through the chain's own
    /// memory, buffers through `mem` (normally the same guest memory).
    pub fn process_request<M>(
        &mut self,
        mem: &M::Target,
        chain: DescriptorChain<M>,
    ) -> RequestOutcome
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let max_descriptors = self.config.seg_max as usize + 2;
        let (status_addr, layout) = match collect(mem, chain, max_descriptors) {
            Ok(parsed) => parsed,
            Err((None, e)) => {
                return RequestOutcome {
                    used_len: 0,
                    status: None,
                    error: Some(e),
                }
            }
            Err((Some(status_addr), e)) => return finish(mem, status_addr, 0, Err(e)),
        };
        let mut written = 0u64;
        let result = self.execute(mem, &layout, &mut written);
        finish(mem, status_addr, written, result)
    }

    fn execute<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        l: &Layout,
        written: &mut u64,
    ) -> Result<(), RequestError> {
        let h = &l.header;
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        match kind {
            VIRTIO_BLK_T_IN => {
                if l.out_len != 0 {
                    return Err(RequestError::WrongDirection(kind));
                }
                let offset = self.check_io(sector, l.in_len)?;
                self.read_to_guest(mem, &l.in_data, offset, written)?;
                self.counters.add_read(l.in_len);
                Ok(())
            }
            VIRTIO_BLK_T_OUT => {
                if l.in_len != 0 {
                    return Err(RequestError::WrongDirection(kind));
                }
                if self.config.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let offset = self.check_io(sector, l.out_len)?;
                self.write_from_guest(mem, &l.out_data, offset)?;
                self.counters.add_write(l.out_len);
                Ok(())
            }
            VIRTIO_BLK_T_FLUSH => {
                if l.in_len != 0 || l.out_len != 0 {
                    return Err(RequestError::WrongDirection(kind));
                }
                Ok(self.backend.flush()?)
            }
            VIRTIO_BLK_T_GET_ID => {
                if l.out_len != 0 {
                    return Err(RequestError::WrongDirection(kind));
                }
                if l.in_len == 0 {
                    return Err(RequestError::MissingData(kind));
                }
                let n = l.in_len.min(VIRTIO_BLK_ID_BYTES as u64) as usize;
                let serial = self.serial;
                copy_to_guest(mem, &l.in_data, &serial[..n], written)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => self.zeroing(mem, kind, l),
            _ => Err(RequestError::Unsupported(kind)),
        }
    }

    /// Check an IN/OUT range and return its byte offset on the disk.
    fn check_io(&self, sector: u64, len: u64) -> Result<u64, RequestError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::NotSectorMultiple(len));
        }
        let max = u64::from(self.config.seg_max) * u64::from(self.config.size_max);
        if len > max {
            return Err(RequestError::TooLarge(len));
        }
        self.check_sectors(sector, len / SECTOR_SIZE)
    }

    /// `sector..sector + count` inside the disk; returns the byte offset.
    fn check_sectors(&self, sector: u64, count: u64) -> Result<u64, RequestError> {
        let capacity = self.config.capacity;
        match sector.checked_add(count) {
            Some(end) if end <= capacity => Ok(sector * SECTOR_SIZE),
            _ => Err(RequestError::OutOfRange {
                sector,
                count,
                capacity,
            }),
        }
    }

    fn read_to_guest<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        segs: &[Segment],
        mut offset: u64,
        written: &mut u64,
    ) -> Result<(), RequestError> {
        for seg in segs {
            let mut done = 0u64;
            while done < seg.len {
                let n = (seg.len - done).min(COPY_CHUNK as u64) as usize;
                let chunk = &mut self.buf[..n];
                self.backend.read_at(chunk, offset)?;
                mem.write_slice(chunk, seg.addr.unchecked_add(done))?;
                done += n as u64;
                offset += n as u64;
                *written += n as u64;
            }
        }
        Ok(())
    }

    fn write_from_guest<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        segs: &[Segment],
        mut offset: u64,
    ) -> Result<(), RequestError> {
        for seg in segs {
            let mut done = 0u64;
            while done < seg.len {
                let n = (seg.len - done).min(COPY_CHUNK as u64) as usize;
                let chunk = &mut self.buf[..n];
                mem.read_slice(chunk, seg.addr.unchecked_add(done))?;
                self.backend.write_at(chunk, offset)?;
                done += n as u64;
                offset += n as u64;
            }
        }
        Ok(())
    }

    /// DISCARD and WRITE_ZEROES: a list of 16-byte ranges
    /// (sector le64, num_sectors le32, flags le32).
    fn zeroing<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        kind: u32,
        l: &Layout,
    ) -> Result<(), RequestError> {
        if l.in_len != 0 {
            return Err(RequestError::WrongDirection(kind));
        }
        if self.config.read_only {
            return Err(RequestError::ReadOnly);
        }
        let discard = kind == VIRTIO_BLK_T_DISCARD;
        let (feature, max_seg, max_sectors) = if discard {
            (
                VIRTIO_BLK_F_DISCARD,
                self.config.max_discard_seg,
                self.config.max_discard_sectors,
            )
        } else {
            (
                VIRTIO_BLK_F_WRITE_ZEROES,
                self.config.max_write_zeroes_seg,
                self.config.max_write_zeroes_sectors,
            )
        };
        if !self.acked(feature) {
            return Err(RequestError::FeatureNotNegotiated(kind));
        }
        if l.out_len == 0 {
            return Err(RequestError::MissingData(kind));
        }
        if !l.out_len.is_multiple_of(SEGMENT_RANGE_LEN)
            || l.out_len / SEGMENT_RANGE_LEN > u64::from(max_seg)
        {
            return Err(RequestError::ZeroingLimits);
        }
        // At most max_seg (small) ranges: read and check them all first, so
        // a bad last range does not leave the first ones done.
        let mut ranges = Vec::new();
        for i in 0..l.out_len / SEGMENT_RANGE_LEN {
            let mut r = [0u8; SEGMENT_RANGE_LEN as usize];
            copy_from_guest(mem, &l.out_data, i * SEGMENT_RANGE_LEN, &mut r)?;
            let sector = u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]);
            let count = u32::from_le_bytes([r[8], r[9], r[10], r[11]]);
            let flags = u32::from_le_bytes([r[12], r[13], r[14], r[15]]);
            // Discard takes no flags (the spec makes UNMAP there UNSUPP).
            let allowed = if discard {
                0
            } else {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            };
            if flags & !allowed != 0 {
                return Err(RequestError::UnsupportedFlags(flags));
            }
            if count > max_sectors {
                return Err(RequestError::ZeroingLimits);
            }
            let offset = self.check_sectors(sector, u64::from(count))?;
            let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
            ranges.push((offset, u64::from(count) * SECTOR_SIZE, unmap));
        }
        for (offset, len, unmap) in ranges {
            if len == 0 {
                continue;
            }
            if discard {
                self.backend.discard(offset, len)?;
            } else {
                self.backend.write_zeroes(offset, len, unmap)?;
            }
        }
        Ok(())
    }
}

/// Write the status and build the outcome.
fn finish<M: GuestMemory + ?Sized>(
    mem: &M,
    status_addr: GuestAddress,
    written: u64,
    result: Result<(), RequestError>,
) -> RequestOutcome {
    let (status, error) = match result {
        Ok(()) => (STATUS_OK, None),
        Err(e) => (e.status(), Some(e)),
    };
    // Checked writable when the chain was parsed.
    match mem.write_obj(status, status_addr) {
        Ok(()) => RequestOutcome {
            // The chain's total is below 2^32 (the chain reader stops there).
            used_len: u32::try_from(written + 1).unwrap_or(u32::MAX),
            status: Some(status),
            error,
        },
        Err(e) => RequestOutcome {
            used_len: u32::try_from(written).unwrap_or(u32::MAX),
            status: None,
            error: Some(error.unwrap_or(RequestError::Memory(e))),
        },
    }
}

/// Sort a chain into header, data and status, checking every buffer.
///
/// The error carries the status address when one is usable, so the caller
/// can still report the failure to the guest.
fn collect<M>(
    mem: &M::Target,
    chain: DescriptorChain<M>,
    max_descriptors: usize,
) -> Result<(GuestAddress, Layout), (Option<GuestAddress>, RequestError)>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut readable: Vec<Segment> = Vec::new();
    let mut writable: Vec<Segment> = Vec::new();
    let mut count = 0usize;
    let mut last = None;
    let mut first_error = None;
    // The chain reader bounds the walk (queue or indirect table size, 4 GiB
    // in total), so a looping chain ends; keep walking past our limit only
    // to find the last descriptor, without storing more.
    for desc in chain {
        count += 1;
        last = Some(desc);
        if count > max_descriptors {
            continue;
        }
        let seg = Segment {
            addr: desc.addr(),
            len: u64::from(desc.len()),
        };
        if desc.is_write_only() {
            writable.push(seg);
        } else if !writable.is_empty() {
            first_error.get_or_insert(RequestError::ReadableAfterWritable);
        } else {
            readable.push(seg);
        }
    }
    let Some(last) = last else {
        return Err((None, RequestError::EmptyChain));
    };
    if last.has_next() {
        return Err((None, RequestError::TruncatedChain));
    }
    if !last.is_write_only() || last.len() == 0 {
        return Err((None, RequestError::NoStatus));
    }
    let status_addr = match last.addr().checked_add(u64::from(last.len()) - 1) {
        Some(a) if mem.check_range(a, 1, Permissions::Write) => a,
        _ => return Err((None, RequestError::NoStatus)),
    };
    let fail = |e| Err((Some(status_addr), e));
    if count > max_descriptors {
        return fail(RequestError::TooManyDescriptors {
            count,
            max: max_descriptors,
        });
    }
    if let Some(e) = first_error {
        return fail(e);
    }
    // The status byte is the end of the last (writable) descriptor.
    if let Some(end) = writable.last_mut() {
        end.len -= 1;
    }
    for (segs, access) in [
        (&readable, Permissions::Read),
        (&writable, Permissions::Write),
    ] {
        for s in segs.iter() {
            let ok = s.len == 0
                || (s.addr.checked_add(s.len).is_some()
                    && usize::try_from(s.len).is_ok_and(|n| mem.check_range(s.addr, n, access)));
            if !ok {
                return fail(RequestError::BufferOutsideMemory {
                    addr: s.addr.0,
                    len: u32::try_from(s.len).unwrap_or(u32::MAX),
                });
            }
        }
    }
    let out_total: u64 = readable.iter().map(|s| s.len).sum();
    if out_total < REQUEST_HEADER_LEN {
        return fail(RequestError::HeaderTooShort(out_total));
    }
    let mut header = [0u8; REQUEST_HEADER_LEN as usize];
    if let Err(e) = copy_from_guest(mem, &readable, 0, &mut header) {
        return fail(e);
    }
    let out_data = skip(&readable, REQUEST_HEADER_LEN);
    let in_data: Vec<Segment> = writable.into_iter().filter(|s| s.len > 0).collect();
    let in_len = in_data.iter().map(|s| s.len).sum();
    Ok((
        status_addr,
        Layout {
            out_len: out_total - REQUEST_HEADER_LEN,
            out_data,
            in_len,
            in_data,
            header,
        },
    ))
}

/// The segments after the first `n` bytes of `segs`.
fn skip(segs: &[Segment], mut n: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    for s in segs {
        if n >= s.len {
            n -= s.len;
            continue;
        }
        out.push(Segment {
            // Inside a buffer already checked against guest memory.
            addr: s.addr.unchecked_add(n),
            len: s.len - n,
        });
        n = 0;
    }
    out
}

/// Fill `buf` from the byte stream `segs` starting `start` bytes in.
fn copy_from_guest<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Segment],
    start: u64,
    buf: &mut [u8],
) -> Result<(), RequestError> {
    let mut filled = 0usize;
    for s in skip(segs, start) {
        if filled == buf.len() {
            break;
        }
        let n = (buf.len() - filled).min(usize::try_from(s.len).unwrap_or(usize::MAX));
        mem.read_slice(&mut buf[filled..filled + n], s.addr)?;
        filled += n;
    }
    if filled < buf.len() {
        return Err(RequestError::ShortData(filled as u64));
    }
    Ok(())
}

/// Write `data` to the front of the byte stream `segs` (which the caller
/// made long enough).
fn copy_to_guest<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Segment],
    data: &[u8],
    written: &mut u64,
) -> Result<(), RequestError> {
    let mut done = 0usize;
    for s in segs {
        if done == data.len() {
            break;
        }
        let n = (data.len() - done).min(usize::try_from(s.len).unwrap_or(usize::MAX));
        mem.write_slice(&data[done..done + n], s.addr)?;
        done += n;
        *written += n as u64;
    }
    Ok(())
}

impl<B: BlockBackend> Persist for VirtioBlk<B> {
    type State = BlkState;
    /// The image the disk is restored onto.
    type Args = B;
    type Error = BlkError;

    /// The device's state.
    fn save(&self) -> BlkState {
        BlkState {
            acked_features: self.acked_features,
            config: self.config,
            serial: self.serial,
        }
    }

    /// Rebuild a device from a snapshot onto the same image.
    ///
    /// The snapshot may come from an untrusted file: its config must be
    /// what this device would offer for `backend`, so no limit the request
    /// checks rely on comes from the file.
    fn restore(backend: B, state: &BlkState) -> Result<Self, BlkError> {
        let fresh = BlkConfig::for_backend(&backend);
        if state.config.capacity != fresh.capacity {
            return Err(BlkError::CapacityMismatch {
                saved: state.config.capacity,
                actual: fresh.capacity,
            });
        }
        if !state.config.read_only && fresh.read_only {
            return Err(BlkError::ReadOnlyMismatch);
        }
        if state.config != fresh {
            return Err(BlkError::ConfigMismatch("limits or features differ"));
        }
        let unknown = state.acked_features & !fresh.device_features();
        if unknown != 0 {
            return Err(BlkError::FeaturesNotOffered(unknown));
        }
        let mut dev = Self::new(backend, "");
        dev.serial = state.serial;
        dev.ack_features(state.acked_features);
        Ok(dev)
    }
}

#[cfg(test)]
mod tests;
