//! qcow2 disk images (versions 2 and 3) as a [`BlockBackend`].
//!
//! Crate choice: the qcow2 engine is `imago` (MIT, written by a maintainer
//! of QEMU's block layer), built with its `sync` feature, so every call is a
//! plain blocking call behind parking_lot locks and no async runtime runs in
//! the I/O worker. It reads and writes clusters, keeps L1/L2 tables and
//! refcounts consistent (`qemu-img check` stays clean), COWs shared and
//! compressed clusters, writes zero clusters and grows the L1 table on
//! resize. The alternatives did not fit: `qcow2-rs` is async-only (io_uring
//! or tokio), `qcow`/`qcow2`/`qcow2-core` only read, and a home-grown writer
//! would have to re-earn the refcount correctness imago already has.
//!
//! What stays ours, because it is policy rather than format:
//! - [`Qcow2Header::read`] validates the header before imago sees the file.
//!   It refuses encryption (which imago would otherwise read as ciphertext),
//!   the dirty and corrupt bits, external data files, extended L2 entries,
//!   zstd compression and unknown incompatible bits, and it bounds every size
//!   a hostile header could use to make us allocate or read a lot.
//! - The backing chain: opened by us, read-only, names resolved against the
//!   directory of the image that names them, at most [`MAX_BACKING_DEPTH`]
//!   links, and a file seen twice (by device and inode, so symlinks and
//!   `../` spellings do not hide it) is a loop.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder,
    StorageOpenOptions,
};
use thiserror::Error;

use super::backend::BlockBackend;
use crate::DiskFormat;

/// The first four bytes of every qcow2 image.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Longest backing chain we follow (links below the top image).
pub const MAX_BACKING_DEPTH: usize = 8;

/// Largest virtual disk we open or create: 64 TiB.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// Cluster size used for the images we create (QEMU's default).
pub const CREATE_CLUSTER_SIZE: usize = 64 << 10;

/// qcow2 allows clusters of 512 bytes (2^9) to 2 MiB (2^21).
const MIN_CLUSTER_BITS: u32 = 9;
const MAX_CLUSTER_BITS: u32 = 21;

/// Largest L1 or refcount table, in 8-byte entries (32 MiB in memory). This
/// is imago's limit too; checking it here gives the user a clear reason.
const MAX_TABLE_ENTRIES: u64 = 4 << 20;

/// Bytes of the version 2 header; version 3 adds 32 more.
const V2_HEADER_LEN: usize = 72;
const V3_HEADER_LEN: usize = 104;

/// Header extension types (docs/interop/qcow2.txt in QEMU).
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// Incompatible feature bits.
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;

/// Longest backing file name QEMU writes.
const MAX_BACKING_NAME: u32 = 1023;

/// Why a qcow2 image cannot be opened, created or changed.
#[derive(Debug, Error)]
pub enum Qcow2Error {
    /// The file could not be opened, read or written.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// No qcow2 magic at the start of the file.
    #[error("{0} is not a qcow2 image")]
    NotQcow2(PathBuf),
    /// The image uses a feature this backend does not implement.
    #[error("{path} uses {feature}, which Hangar does not support")]
    Unsupported {
        /// The image.
        path: PathBuf,
        /// The feature, in words.
        feature: String,
    },
    /// The image's metadata is inconsistent or out of bounds.
    #[error("{path} is damaged: {reason}")]
    Corrupt {
        /// The image.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// The dirty bit is set: refcounts may be wrong after a crash.
    #[error("{0} was not closed cleanly; repair it with `qemu-img check -r all` before using it")]
    Dirty(PathBuf),
    /// The backing chain is too long or loops back on itself.
    #[error("the backing files of {path} cannot be used: {reason}")]
    BackingChain {
        /// The image naming the backing file.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// The qcow2 engine refused an operation.
    #[error("{path}: {source}")]
    Image {
        /// The image.
        path: PathBuf,
        /// What the qcow2 engine said.
        source: io::Error,
    },
}

/// The parts of a qcow2 header we check and report, read and validated by
/// [`Qcow2Header::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// The guest-visible disk size in bytes.
    pub virtual_size: u64,
    /// Entries in the L1 table.
    pub l1_size: u32,
    /// Where the L1 table starts in the file.
    pub l1_table_offset: u64,
    /// Where the refcount table starts in the file.
    pub refcount_table_offset: u64,
    /// Clusters the refcount table takes.
    pub refcount_table_clusters: u32,
    /// Internal snapshots in the image.
    pub snapshot_count: u32,
    /// log2 of the refcount width in bits (4 for version 2).
    pub refcount_order: u32,
    /// The backing file's name as stored (maybe relative to the image).
    pub backing_file: Option<String>,
    /// The backing file's format as stored ("raw", "qcow2"), if recorded.
    pub backing_format: Option<String>,
}

/// Big-endian fields from the first cluster; callers check lengths first.
fn be32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_be_bytes(b)
}

fn be64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

/// The length of `file`; seeking also sizes block devices, whose metadata
/// says 0.
fn file_len(mut file: &File) -> io::Result<u64> {
    file.seek(SeekFrom::End(0))
}

/// Read up to `len` bytes at `offset`, stopping early only at end of file.
fn read_prefix(file: &File, len: usize, offset: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Whether `file` starts with the qcow2 magic.
pub fn has_qcow2_magic(file: &File) -> io::Result<bool> {
    Ok(read_prefix(file, 4, 0)? == QCOW2_MAGIC)
}

impl Qcow2Header {
    /// Read and validate the header of the qcow2 image `file` (named `path`
    /// in errors). Everything a later step would trust is checked here:
    /// feature bits, cluster and refcount sizes, table positions inside the
    /// file and clear of the header, table sizes, the backing file name.
    pub fn read(file: &File, path: &Path) -> Result<Self, Qcow2Error> {
        let io_err = |source| Qcow2Error::Io {
            path: path.to_owned(),
            source,
        };
        let corrupt = |reason: String| Qcow2Error::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let unsupported = |feature: &str| Qcow2Error::Unsupported {
            path: path.to_owned(),
            feature: feature.to_owned(),
        };

        let len = file_len(file).map_err(io_err)?;
        let fixed = read_prefix(file, V3_HEADER_LEN, 0).map_err(io_err)?;
        if fixed.len() < 4 || fixed[..4] != QCOW2_MAGIC {
            return Err(Qcow2Error::NotQcow2(path.to_owned()));
        }
        if fixed.len() < V2_HEADER_LEN {
            return Err(corrupt("the header is cut short".into()));
        }
        let version = be32(&fixed, 4);
        if version != 2 && version != 3 {
            return Err(unsupported(&format!("qcow2 version {version}")));
        }
        if version == 3 && fixed.len() < V3_HEADER_LEN {
            return Err(corrupt("the header is cut short".into()));
        }

        let cluster_bits = be32(&fixed, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(corrupt(format!(
                "cluster size 2^{cluster_bits} is outside 512 bytes..2 MiB"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;

        let virtual_size = be64(&fixed, 24);
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(unsupported(&format!(
                "a virtual size of {virtual_size} bytes (the limit is {MAX_VIRTUAL_SIZE})"
            )));
        }
        if be32(&fixed, 32) != 0 {
            return Err(unsupported("encryption"));
        }

        let (incompatible, refcount_order, header_len) = if version == 3 {
            (be64(&fixed, 72), be32(&fixed, 96), be32(&fixed, 100))
        } else {
            // Version 2: 16-bit refcounts, extensions right after the header.
            (0, 4, V2_HEADER_LEN as u32)
        };
        if incompatible & INCOMPAT_DIRTY != 0 {
            return Err(Qcow2Error::Dirty(path.to_owned()));
        }
        if incompatible & INCOMPAT_CORRUPT != 0 {
            return Err(corrupt(
                "QEMU marked it corrupt; repair it with `qemu-img check -r all`".into(),
            ));
        }
        if incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(unsupported("an external data file"));
        }
        if incompatible & INCOMPAT_COMPRESSION_TYPE != 0 {
            return Err(unsupported("zstd compression"));
        }
        if incompatible & INCOMPAT_EXTENDED_L2 != 0 {
            return Err(unsupported("extended L2 entries (subclusters)"));
        }
        let unknown = incompatible
            & !(INCOMPAT_DIRTY
                | INCOMPAT_CORRUPT
                | INCOMPAT_DATA_FILE
                | INCOMPAT_COMPRESSION_TYPE
                | INCOMPAT_EXTENDED_L2);
        if unknown != 0 {
            return Err(unsupported(&format!(
                "unknown incompatible features {unknown:#x}"
            )));
        }
        if refcount_order > 6 {
            return Err(corrupt(format!(
                "refcount width 2^{refcount_order} bits is more than 64"
            )));
        }
        if version == 3
            && (u64::from(header_len) < V3_HEADER_LEN as u64
                || u64::from(header_len) > cluster_size)
        {
            return Err(corrupt(format!("header length {header_len} is not valid")));
        }

        // The whole first cluster holds the header, its extensions and the
        // backing file name; at most 2 MiB. Past the end of a short file it
        // reads as zeroes, as QEMU reads it.
        let mut first_cluster = read_prefix(file, cluster_size as usize, 0).map_err(io_err)?;
        first_cluster.resize(cluster_size as usize, 0);

        let l1_size = be32(&fixed, 36);
        let l1_table_offset = be64(&fixed, 40);
        let refcount_table_offset = be64(&fixed, 48);
        let refcount_table_clusters = be32(&fixed, 56);
        let snapshot_count = be32(&fixed, 60);

        // Every guest cluster needs an L1 entry: each L2 table maps
        // cluster_size / 8 clusters.
        let bytes_per_l1_entry = cluster_size * (cluster_size / 8);
        let l1_needed = virtual_size.div_ceil(bytes_per_l1_entry);
        if u64::from(l1_size) < l1_needed {
            return Err(corrupt(format!(
                "the L1 table ({l1_size} entries) is too small for the disk size"
            )));
        }
        if u64::from(l1_size) > MAX_TABLE_ENTRIES {
            return Err(corrupt(format!(
                "the L1 table ({l1_size} entries) is larger than {MAX_TABLE_ENTRIES}"
            )));
        }
        if l1_size > 0 {
            check_table_position(
                "L1 table",
                l1_table_offset,
                u64::from(l1_size) * 8,
                cluster_size,
                len,
            )
            .map_err(corrupt)?;
        }
        let refcount_entries = u64::from(refcount_table_clusters) * (cluster_size / 8);
        if refcount_table_clusters == 0 || refcount_entries > MAX_TABLE_ENTRIES {
            return Err(corrupt(format!(
                "the refcount table size ({refcount_table_clusters} clusters) is not valid"
            )));
        }
        check_table_position(
            "refcount table",
            refcount_table_offset,
            u64::from(refcount_table_clusters) * cluster_size,
            cluster_size,
            len,
        )
        .map_err(corrupt)?;

        let backing_file =
            read_backing_name(&fixed, &first_cluster).map_err(|reason| corrupt(reason.into()))?;
        let backing_format = read_backing_format(&first_cluster, header_len, be64(&fixed, 8))
            .map_err(|reason| corrupt(reason.into()))?;

        Ok(Self {
            version,
            cluster_bits,
            virtual_size,
            l1_size,
            l1_table_offset,
            refcount_table_offset,
            refcount_table_clusters,
            snapshot_count,
            refcount_order,
            backing_file,
            backing_format,
        })
    }

    /// Bytes in one cluster.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// The largest virtual size the current L1 table can map.
    pub fn l1_capacity(&self) -> u64 {
        let cluster_size = self.cluster_size();
        u64::from(self.l1_size).saturating_mul(cluster_size * (cluster_size / 8))
    }
}

/// A metadata table must be cluster aligned, lie after the header cluster
/// and end inside the file.
fn check_table_position(
    name: &str,
    offset: u64,
    bytes: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<(), String> {
    if !offset.is_multiple_of(cluster_size) {
        return Err(format!("the {name} at {offset:#x} is not cluster aligned"));
    }
    if offset < cluster_size {
        return Err(format!("the {name} overlaps the header"));
    }
    match offset.checked_add(bytes) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(format!("the {name} lies past the end of the file")),
    }
}

/// The backing file name from the header fields, if any. `first_cluster`
/// is the whole header cluster.
fn read_backing_name(fixed: &[u8], first_cluster: &[u8]) -> Result<Option<String>, &'static str> {
    let offset = be64(fixed, 8);
    let len = be32(fixed, 16);
    if offset == 0 {
        return Ok(None);
    }
    if len == 0 || len > MAX_BACKING_NAME {
        return Err("the backing file name length is not valid");
    }
    let end = offset
        .checked_add(u64::from(len))
        .filter(|&end| end <= first_cluster.len() as u64)
        .ok_or("the backing file name lies outside the header cluster")?;
    // Both bounded by the first cluster's length just above.
    let name = &first_cluster[offset as usize..end as usize];
    let name = std::str::from_utf8(name).map_err(|_| "the backing file name is not UTF-8")?;
    if name.contains('\0') {
        return Err("the backing file name contains a NUL byte");
    }
    Ok(Some(name.to_owned()))
}

/// The backing format header extension, if present. Extensions start at
/// the end of the header and end at an end marker, at the backing file name
/// or at the end of the header cluster, as QEMU reads them; each takes at
/// least 8 bytes, so the walk ends.
fn read_backing_format(
    first_cluster: &[u8],
    header_len: u32,
    backing_name_offset: u64,
) -> Result<Option<String>, &'static str> {
    let cluster_end = first_cluster.len();
    let limit = match usize::try_from(backing_name_offset) {
        Ok(0) | Err(_) => cluster_end,
        Ok(name_at) => name_at.min(cluster_end),
    };
    let mut at = header_len as usize;
    let mut format = None;
    while at < limit {
        let Some(hdr) = first_cluster.get(at..at + 8).filter(|_| at + 8 <= limit) else {
            return Err("a header extension runs past its space");
        };
        let kind = be32(hdr, 0);
        let len = be32(hdr, 4) as usize;
        at += 8;
        if kind == EXT_END {
            break;
        }
        let Some(data) = first_cluster
            .get(at..at.saturating_add(len))
            .filter(|_| at.saturating_add(len) <= limit)
        else {
            return Err("a header extension runs past its space");
        };
        if kind == EXT_BACKING_FORMAT {
            let name =
                std::str::from_utf8(data).map_err(|_| "the backing format name is not UTF-8")?;
            format = Some(name.trim_end_matches('\0').to_owned());
        }
        at = at.saturating_add(len.next_multiple_of(8));
    }
    Ok(format)
}

/// Most host clusters [`verify_refcounts`] tracks, at one byte each
/// (128 MiB; a 8 TiB file with 64 KiB clusters).
const MAX_CHECKED_CLUSTERS: u64 = 1 << 27;

/// L1 and L2 entries keep the host offset in bits 9..56.
const TABLE_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry bit 62: the cluster is compressed.
const L2_COMPRESSED: u64 = 1 << 62;

/// Check, before a writable open, that every cluster the image uses (the
/// header, refcount table and blocks, L1 and L2 tables, data clusters) lies
/// inside the file, is used once (compressed clusters may share), and has
/// a refcount of at least its uses.
///
/// imago's allocator trusts the refcounts: it would place new clusters on
/// top of a table whose refcount says "free", and with refcounts missing in
/// the middle of the file it recurses without end (found by the fuzz
/// target). Refusing such images with a pointer to `qemu-img check -r all`
/// is what QEMU itself advises for them. Memory is one byte per cluster of
/// the file, and every table read lies inside the file, so the work is
/// bounded by the file's size.
fn verify_refcounts(file: &File, path: &Path, header: &Qcow2Header) -> Result<(), Qcow2Error> {
    let io_err = |source| Qcow2Error::Io {
        path: path.to_owned(),
        source,
    };
    let corrupt = |reason: String| Qcow2Error::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let cluster_bits = header.cluster_bits;
    let cluster_size = header.cluster_size();
    let len = file_len(file).map_err(io_err)?;
    let clusters = len.div_ceil(cluster_size);
    if clusters > MAX_CHECKED_CLUSTERS {
        return Err(Qcow2Error::Unsupported {
            path: path.to_owned(),
            feature: format!("more than {MAX_CHECKED_CLUSTERS} clusters"),
        });
    }
    // Uses of each host cluster, saturating.
    let mut uses = vec![0u8; clusters as usize];
    let mut mark = |offset: u64, what: &str, shared: bool| -> Result<(), Qcow2Error> {
        if !offset.is_multiple_of(cluster_size) {
            return Err(corrupt(format!(
                "a {what} at {offset:#x} is not cluster aligned"
            )));
        }
        let index = offset / cluster_size;
        let Some(count) = uses.get_mut(index as usize).filter(|_| index < clusters) else {
            return Err(corrupt(format!(
                "a {what} at {offset:#x} lies past the end of the file"
            )));
        };
        if *count > 0 && !shared {
            return Err(corrupt(format!(
                "the cluster at {offset:#x} is used twice (by a {what} and something else)"
            )));
        }
        *count = count.saturating_add(1);
        Ok(())
    };
    let read_table = |offset: u64, bytes: u64| -> Result<Vec<u64>, Qcow2Error> {
        // Callers checked that the table lies inside the file, whose
        // cluster count is bounded above.
        let mut raw = vec![0u8; bytes as usize];
        file.read_exact_at(&mut raw, offset).map_err(io_err)?;
        Ok(raw.chunks_exact(8).map(|c| be64(c, 0)).collect())
    };

    mark(0, "header", false)?;
    let rt_bytes = u64::from(header.refcount_table_clusters) * cluster_size;
    for i in 0..u64::from(header.refcount_table_clusters) {
        mark(
            header.refcount_table_offset + i * cluster_size,
            "refcount table",
            false,
        )?;
    }
    let refcount_table = read_table(header.refcount_table_offset, rt_bytes)?;
    for &entry in &refcount_table {
        // Bits 0..8 are reserved; the rest is the block's offset.
        let block = entry & !0x1ff;
        if block != 0 {
            mark(block, "refcount block", false)?;
        }
    }

    let l1_bytes = u64::from(header.l1_size) * 8;
    if l1_bytes > 0 {
        for i in 0..l1_bytes.div_ceil(cluster_size) {
            mark(header.l1_table_offset + i * cluster_size, "L1 table", false)?;
        }
        let l1 = read_table(header.l1_table_offset, l1_bytes)?;
        // Compressed entries: the offset takes the low (62 - (bits - 8))
        // bits, the count of extra 512-byte sectors the rest.
        let csize_shift = 62 - (cluster_bits - 8);
        let offset_mask = (1u64 << csize_shift) - 1;
        let sectors_mask = (1u64 << (cluster_bits - 8)) - 1;
        for &l1_entry in &l1 {
            let l2_offset = l1_entry & TABLE_OFFSET_MASK;
            if l2_offset == 0 {
                continue;
            }
            mark(l2_offset, "L2 table", false)?;
            for l2_entry in read_table(l2_offset, cluster_size)? {
                if l2_entry & L2_COMPRESSED != 0 {
                    let start = l2_entry & offset_mask;
                    let sectors = ((l2_entry >> csize_shift) & sectors_mask) + 1;
                    let end = start + sectors * 512;
                    let first = start / cluster_size;
                    // The last sector may run past the end of the file.
                    let last = ((end - 1) / cluster_size).min(clusters.saturating_sub(1));
                    if first >= clusters {
                        return Err(corrupt(format!(
                            "a compressed cluster at {start:#x} lies past the end of the file"
                        )));
                    }
                    for c in first..=last {
                        mark(c * cluster_size, "compressed cluster", true)?;
                    }
                } else {
                    let data = l2_entry & TABLE_OFFSET_MASK;
                    if data != 0 {
                        mark(data, "data cluster", false)?;
                    }
                }
            }
        }
    }

    // Compare with the stored refcounts, reading each block once.
    let refcount_bits = 1u64 << header.refcount_order;
    let per_block_bits = cluster_bits + 3 - header.refcount_order;
    let mut block_cache: Option<(u64, Vec<u8>)> = None;
    for (index, &used) in uses.iter().enumerate() {
        if used == 0 {
            continue;
        }
        let index = index as u64;
        let rt_index = index >> per_block_bits;
        let in_block = index & ((1u64 << per_block_bits) - 1);
        let block = refcount_table
            .get(rt_index as usize)
            .map_or(0, |e| e & !0x1ff);
        let stored = if block == 0 {
            0
        } else {
            if block_cache.as_ref().map(|(at, _)| *at) != Some(block) {
                // Marked above, so inside the file.
                let mut raw = vec![0u8; cluster_size as usize];
                file.read_exact_at(&mut raw, block).map_err(io_err)?;
                block_cache = Some((block, raw));
            }
            let raw = block_cache.as_ref().map_or(&[][..], |(_, raw)| &raw[..]);
            read_refcount(raw, in_block, refcount_bits)
        };
        if stored < u64::from(used) {
            return Err(corrupt(format!(
                "its refcounts do not match the clusters in use (the cluster at {:#x} is used \
                 {used} times but counted {stored}); repair it with `qemu-img check -r all`",
                index * cluster_size
            )));
        }
    }
    Ok(())
}

/// Entry `index` of a refcount block of `bits`-wide entries: sub-byte
/// widths pack from the low bit, wider ones are big-endian.
fn read_refcount(block: &[u8], index: u64, bits: u64) -> u64 {
    if bits < 8 {
        let bit = index * bits;
        let byte = block.get((bit / 8) as usize).copied().unwrap_or(0);
        (u64::from(byte) >> (bit % 8)) & ((1 << bits) - 1)
    } else {
        let width = (bits / 8) as usize;
        let start = index as usize * width;
        block
            .get(start..start + width)
            .map_or(0, |b| b.iter().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
    }
}

/// The imago image type every layer of a chain is served through.
type ImageAccess = FormatAccess<ImagoFile>;

/// `(device, inode)` of the files already in a chain, to spot loops.
type SeenFiles = Vec<(u64, u64)>;

/// Open `path` read-only or read-write and note it in `seen`.
/// Only regular files and block devices: a header may name any path as
/// its backing file, and opening a FIFO or a terminal would hang or eat
/// input. O_NONBLOCK keeps the open itself from waiting on a FIFO; it does
/// nothing to regular files.
fn open_file(path: &Path, writable: bool, seen: &mut SeenFiles) -> Result<File, Qcow2Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| Qcow2Error::Io {
            path: path.to_owned(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| Qcow2Error::Io {
        path: path.to_owned(),
        source,
    })?;
    if !(meta.file_type().is_file() || meta.file_type().is_block_device()) {
        return Err(Qcow2Error::Io {
            path: path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ),
        });
    }
    let id = (meta.dev(), meta.ino());
    if seen.contains(&id) {
        return Err(Qcow2Error::BackingChain {
            path: path.to_owned(),
            reason: "the chain of backing files loops back to this image".into(),
        });
    }
    seen.push(id);
    Ok(file)
}

/// Hand an open file to imago, keeping its name so imago's errors say it.
fn imago_file(file: File, path: &Path, writable: bool) -> Result<ImagoFile, Qcow2Error> {
    let opts = StorageOpenOptions::new().write(writable).filename(path);
    ImagoFile::from_open_file(file, opts).map_err(|source| Qcow2Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// Open one qcow2 layer (header validated, no backing attached yet).
fn open_layer(
    file: File,
    path: &Path,
    writable: bool,
) -> Result<(Qcow2<ImagoFile>, Qcow2Header), Qcow2Error> {
    let header = Qcow2Header::read(&file, path)?;
    if writable {
        verify_refcounts(&file, path, &header)?;
    }
    let storage = imago_file(file, path, writable)?;
    // backing(None) and data_file(None): nothing is opened behind our back;
    // the chain is attached by `open_chain`, with its own checks.
    let image = Qcow2::<ImagoFile>::builder(storage)
        .write(writable)
        .backing(None)
        .data_file(None)
        .open(DenyImplicitOpenGate::default())
        .map_err(|source| Qcow2Error::Image {
            path: path.to_owned(),
            source,
        })?;
    Ok((image, header))
}

/// Open the qcow2 image at `path` and, below it, its backing chain
/// (read-only). `depth` counts the links above this one.
fn open_chain(
    path: &Path,
    writable: bool,
    depth: usize,
    seen: &mut SeenFiles,
) -> Result<(ImageAccess, Qcow2Header), Qcow2Error> {
    let file = open_file(path, writable, seen)?;
    let (mut image, header) = open_layer(file, path, writable)?;
    if let Some(name) = &header.backing_file {
        if depth >= MAX_BACKING_DEPTH {
            return Err(Qcow2Error::BackingChain {
                path: path.to_owned(),
                reason: format!("more than {MAX_BACKING_DEPTH} backing files deep"),
            });
        }
        let backing_path = resolve_backing(path, name);
        let backing = open_backing(&backing_path, header.backing_format.as_deref(), depth, seen)
            .map_err(|e| match e {
                // Keep the innermost chain error; wrap everything else so
                // the user learns which backing file is at fault.
                Qcow2Error::BackingChain { .. } => e,
                other => Qcow2Error::BackingChain {
                    path: path.to_owned(),
                    reason: other.to_string(),
                },
            })?;
        image.set_backing(Some(backing));
    }
    Ok((FormatAccess::new(image), header))
}

/// A backing file name resolved against the directory of the image that
/// names it (absolute names stay as they are).
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let name = Path::new(name);
    if name.is_absolute() {
        return name.to_owned();
    }
    match image.parent() {
        Some(dir) => dir.join(name),
        None => name.to_owned(),
    }
}

/// Open a backing file read-only in the recorded format. Old images may not
/// record one; then the magic decides, as QEMU does (a backing file is a
/// read-only template, not a disk a guest writes).
fn open_backing(
    path: &Path,
    format: Option<&str>,
    depth: usize,
    seen: &mut SeenFiles,
) -> Result<ImageAccess, Qcow2Error> {
    let is_qcow2 = match format {
        Some("qcow2") => true,
        Some("raw") | Some("file") => false,
        Some(other) => {
            return Err(Qcow2Error::Unsupported {
                path: path.to_owned(),
                feature: format!("a backing file in the {other:?} format"),
            })
        }
        None => {
            // Opened (and type-checked) like every layer, then closed; the
            // chain bookkeeping starts over with the real open below.
            let file = open_file(path, false, &mut seen.clone())?;
            has_qcow2_magic(&file).map_err(|source| Qcow2Error::Io {
                path: path.to_owned(),
                source,
            })?
        }
    };
    if is_qcow2 {
        return open_chain(path, false, depth + 1, seen).map(|(image, _)| image);
    }
    let file = open_file(path, false, seen)?;
    let storage = imago_file(file, path, false)?;
    let raw = Raw::builder(storage)
        .write(false)
        .open(DenyImplicitOpenGate::default())
        .map_err(|source| Qcow2Error::Image {
            path: path.to_owned(),
            source,
        })?;
    Ok(FormatAccess::new(raw))
}

/// A qcow2 image, with its backing chain, serving a virtio-blk device.
pub struct Qcow2Disk {
    /// Shared for reads and writes; exclusive for discards, which may free
    /// clusters that a concurrent request is about to use.
    image: RwLock<ImageAccess>,
    size: u64,
    read_only: bool,
    /// Version 2 has no zero clusters: zeroing writes zero bytes.
    has_zero_clusters: bool,
    path: PathBuf,
}

impl std::fmt::Debug for Qcow2Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Disk")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Qcow2Disk {
    /// Open the qcow2 image at `path` with its backing chain (always
    /// read-only), the image itself read-only or read-write.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, Qcow2Error> {
        let mut seen = SeenFiles::new();
        let (image, header) = open_chain(path, !read_only, 0, &mut seen)?;
        Ok(Self {
            image: RwLock::new(image),
            size: header.virtual_size,
            read_only,
            has_zero_clusters: header.version >= 3,
            path: path.to_owned(),
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
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

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at {offset} are outside the {}-byte image",
                    self.size
                ),
            )),
        }
    }

    /// Zeroes written as data, a chunk at a time (version 2 images).
    fn write_zero_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 256 << 10;
        let zeroes = vec![0u8; CHUNK.min(len) as usize];
        let image = self.shared()?;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            image.write(&zeroes[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }

    fn shared(&self) -> io::Result<std::sync::RwLockReadGuard<'_, ImageAccess>> {
        self.image
            .read()
            .map_err(|_| io::Error::other("qcow2 image lock poisoned"))
    }

    fn exclusive(&self) -> io::Result<std::sync::RwLockWriteGuard<'_, ImageAccess>> {
        self.image
            .write()
            .map_err(|_| io::Error::other("qcow2 image lock poisoned"))
    }
}

/// Discarding is a hint: a format or range that cannot discard is fine.
fn ignore_unsupported(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
        other => other,
    }
}

impl BlockBackend for Qcow2Disk {
    fn size(&self) -> u64 {
        self.size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.shared()?.read(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.refuse_if_read_only()?;
        self.check_range(offset, buf.len() as u64)?;
        self.shared()?.write(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        let image = self.shared()?;
        // Cached L2 tables and refcount blocks first, then the file: a guest
        // flush must find the metadata that maps its data on disk too.
        image.flush()?;
        image.sync()
    }

    fn supports_discard(&self) -> bool {
        !self.read_only
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.refuse_if_read_only()?;
        self.check_range(offset, len)?;
        ignore_unsupported(self.exclusive()?.discard_to_any(offset, len))
    }

    fn write_zeroes_may_unmap(&self) -> bool {
        !self.read_only
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.refuse_if_read_only()?;
        self.check_range(offset, len)?;
        if !self.has_zero_clusters {
            return self.write_zero_bytes(offset, len);
        }
        if unmap {
            // Frees the clusters and marks them zero (not "from backing").
            self.exclusive()?.discard_to_zero(offset, len)
        } else {
            // Zero clusters where whole clusters are covered, zero bytes
            // written at the edges.
            self.shared()?.write_zeroes(offset, len)
        }
    }
}

/// Validate the qcow2 image open as `file` (named `path`): its header, and
/// its L1 and refcount tables as imago loads them. The backing chain is not
/// opened.
pub fn check_image(file: File, path: &Path) -> Result<Qcow2Header, Qcow2Error> {
    let header = Qcow2Header::read(&file, path)?;
    verify_refcounts(&file, path, &header)?;
    let (_image, header) = open_layer(file, path, false)?;
    Ok(header)
}

/// Make `file` (empty, open read-write, named `path`) a qcow2 v3 image of
/// `size` bytes with 64 KiB clusters, optionally over `backing` (its name as
/// it is to be stored, and its format).
pub fn format_new_image(
    file: File,
    path: &Path,
    size: u64,
    backing: Option<(&str, DiskFormat)>,
) -> Result<(), Qcow2Error> {
    let image_err = |source| Qcow2Error::Image {
        path: path.to_owned(),
        source,
    };
    let storage = imago_file(file, path, true)?;
    let mut builder = Qcow2::<ImagoFile>::create_builder(storage)
        .cluster_size(CREATE_CLUSTER_SIZE)
        .size(size);
    if let Some((name, format)) = backing {
        builder = builder.backing(name.to_owned(), format.to_string());
    }
    builder.create().map_err(image_err)
}

/// Grow the qcow2 image at `path` to `new_size` bytes (the L1 table is
/// enlarged and moved if the new size needs it). Never shrinks.
pub fn grow_image(path: &Path, new_size: u64) -> Result<(), Qcow2Error> {
    let mut seen = SeenFiles::new();
    let file = open_file(path, true, &mut seen)?;
    // The backing chain does not take part: growing only changes this
    // file's header and tables.
    let (image, header) = open_layer(file, path, true)?;
    if new_size <= header.virtual_size {
        return Ok(());
    }
    let image = FormatAccess::new(image);
    let image_err = |source| Qcow2Error::Image {
        path: path.to_owned(),
        source,
    };
    image
        .resize_grow(new_size, imago::format::PreallocateMode::None)
        .map_err(image_err)?;
    image.flush().map_err(image_err)?;
    image.sync().map_err(image_err)
}

#[cfg(test)]
mod tests;
