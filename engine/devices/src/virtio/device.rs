//! What a virtio device offers its transport, and what the transport hands
//! it once the driver is ready.
//!
//! A device never sees PCI: it gets guest memory, its queues (each with the
//! eventfd the guest's doorbell writes land on) and a [`QueueInterrupt`] to
//! tell the guest about used buffers. Devices do their I/O on worker threads
//! of their own, so a vCPU never waits for a disk or a socket.

use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::blk::BlkState;

/// virtio device type of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// virtio device type of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;

/// A queue the driver set up, ready for the device's worker.
pub struct ActiveQueue {
    /// The queue's index within the device.
    pub index: u16,
    /// Ring addresses, size and position, as `virtio-queue` tracks them.
    pub queue: Queue,
    /// Becomes readable when the guest notifies this queue (KVM ioeventfd,
    /// or the transport itself when a doorbell write reaches the bus).
    pub notify: EventFd,
}

/// How a device tells the guest it used buffers.
pub trait QueueInterrupt: Send + Sync {
    /// Interrupt for queue `index` (the transport maps it to a vector).
    fn notify_queue(&self, index: u16);
    /// Interrupt for a change of the device's config space.
    fn notify_config(&self);
    /// The device cannot go on (a ring it cannot use, a worker that died):
    /// the transport shows NEEDS_RESET in the device status, interrupts
    /// the driver, and the VM reports `why` once. Said once per failure;
    /// later calls until the driver resets the device are ignored.
    fn device_failed(&self, why: String);
}

/// Why a device could not start on the queues it was given.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs was not set up by the driver.
    #[error("the driver did not set up queue {0}")]
    MissingQueue(u16),
    /// The worker thread could not be started (or its doorbells reached).
    #[error("cannot start the device's I/O thread")]
    Spawn(#[source] io::Error),
    /// The device's backend could not be prepared.
    #[error("the device's backend failed: {0}")]
    Backend(String),
}

/// A device's own state, for snapshots (the transport keeps the rest);
/// each device type restores from its own variant ([`crate::Persist`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum VirtioDeviceState {
    /// A virtio-blk disk.
    Blk(BlkState),
    /// A virtio-net card.
    Net(super::net::NetState),
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device type ([`VIRTIO_ID_BLOCK`], [`VIRTIO_ID_NET`]).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; their number is the device's queue
    /// count.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Features offered, device-specific bits and `VIRTIO_F_VERSION_1`.
    fn device_features(&self) -> u64;
    /// The features the driver accepted (a subset of what was offered,
    /// transport bits included).
    fn ack_features(&mut self, features: u64);
    /// A guest read of the device-specific config space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A guest write to the device-specific config space; ignored by
    /// default (the config of our devices is read-only).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// The driver is ready: start serving `queues`.
    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn QueueInterrupt>,
    ) -> Result<(), ActivateError>;
    /// The driver reset the device (or the VM is going away): stop the
    /// worker and forget the queues. Must be safe to call when inactive.
    fn reset(&mut self);
    /// Stop the worker at a request boundary and hand back its queues,
    /// positions included: every request it took is finished and in the
    /// used ring, the rest stay available. For a snapshot, or to move the
    /// queues to another worker ([`VirtioDevice::resume`]); empty when the
    /// device is not running (or its worker died, which it reported).
    fn pause(&mut self) -> Vec<ActiveQueue>;
    /// Serve `queues` handed back by a [`VirtioDevice::pause`], this
    /// device's or another's of the same kind: [`VirtioDevice::activate`],
    /// then one doorbell per queue, so that requests published while no
    /// worker served them are taken now.
    fn resume(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn QueueInterrupt>,
    ) -> Result<(), ActivateError> {
        let doorbells = queues
            .iter()
            .map(|q| q.notify.try_clone())
            .collect::<io::Result<Vec<_>>>()
            .map_err(ActivateError::Spawn)?;
        self.activate(memory, queues, interrupt)?;
        for doorbell in doorbells {
            // A full counter already wakes the worker.
            let _ = doorbell.write(1);
        }
        Ok(())
    }
    /// The device's own state: its [`crate::Persist::save`], for
    /// the transport, which holds devices as trait objects.
    fn save_state(&self) -> VirtioDeviceState;
    /// Counters for the user interface (bytes moved), if the device has any.
    fn io_counters(&self) -> Option<Arc<super::IoCounters>> {
        None
    }
}
