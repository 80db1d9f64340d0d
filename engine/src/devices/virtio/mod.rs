//! virtio devices, independent of their transport.
//!
//! A device here sees guest memory and descriptor chains (rust-vmm's
//! `virtio-queue`), never the PCI or MMIO registers that deliver them: the
//! transport pops a chain, hands it to the device and puts the returned
//! length in the used ring. Everything a chain says is guest-controlled and
//! is checked before use; a malformed chain ends in an error status, never a
//! panic or an access outside the buffers the chain names.

pub mod backend;
pub mod blk;

pub use backend::{BackendError, BlockBackend, MemoryDisk, RawFile};
pub use blk::{BlkConfig, BlkError, BlkState, RequestError, RequestOutcome, VirtioBlk};
