//! virtio devices and their PCI transport.
//!
//! A device ([`VirtioDevice`]: a disk, a network card) sees guest memory and
//! descriptor chains (rust-vmm's `virtio-queue`) on an I/O thread of its
//! own, never the PCI registers: the transport ([`VirtioPciDevice`])
//! negotiates with the driver, hands the device its queues and their
//! doorbells, and turns "used" into MSI-X interrupts. Everything a chain
//! says is guest-controlled and is checked before use; a malformed chain
//! ends in an error status, never a panic or an access outside the buffers
//! the chain names.

pub mod blk;
pub mod block;
pub mod device;
pub mod net;
pub mod pci;
pub mod worker;

pub use blk::{BlkConfig, BlkError, BlkState, RequestError, RequestOutcome, VirtioBlk};
pub use block::{BlockDevice, BlockDeviceArgs};
pub use device::{ActivateError, ActiveQueue, QueueInterrupt, VirtioDevice, VirtioDeviceState};
pub use hangar_block::{BackendError, BlockBackend, MemoryDisk, RawFile};
pub use hangar_block::{Qcow2Disk, Qcow2Error};
pub use net::{NetDevice, NetDeviceArgs, NetError, NetState};
pub use pci::{
    MsiRouting, PciMmioWindow, QueuePosition, QueueSetupError, VirtioPciArgs, VirtioPciDevice,
    VirtioPciError, VirtioPciState,
};

use std::sync::atomic::{AtomicU64, Ordering};

/// What a device moved, for the user interface: counters only ever grow,
/// the app turns them into rates.
#[derive(Debug, Default)]
pub struct IoCounters {
    read_bytes: AtomicU64,
    read_ops: AtomicU64,
    written_bytes: AtomicU64,
    write_ops: AtomicU64,
}

/// A copy of [`IoCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoCountersSnapshot {
    /// Bytes read (disk: by the guest; network: received by the guest).
    pub read_bytes: u64,
    /// Read requests (or frames received).
    pub read_ops: u64,
    /// Bytes written (disk: by the guest; network: sent by the guest).
    pub written_bytes: u64,
    /// Write requests (or frames sent).
    pub write_ops: u64,
}

impl IoCounters {
    /// Count one read of `bytes`.
    pub fn add_read(&self, bytes: u64) {
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.read_ops.fetch_add(1, Ordering::Relaxed);
    }

    /// Count one write of `bytes`.
    pub fn add_write(&self, bytes: u64) {
        self.written_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.write_ops.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> IoCountersSnapshot {
        IoCountersSnapshot {
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            read_ops: self.read_ops.load(Ordering::Relaxed),
            written_bytes: self.written_bytes.load(Ordering::Relaxed),
            write_ops: self.write_ops.load(Ordering::Relaxed),
        }
    }
}
