//! The virtio-PCI transport (virtio 1.2, section 4.1), modern layout only.
//!
//! One 32-bit memory BAR holds everything the driver touches:
//!
//! | offset   | structure                                             |
//! |----------|-------------------------------------------------------|
//! | 0x0000   | common configuration (features, status, queue setup)  |
//! | 0x1000   | ISR status (read clears)                              |
//! | 0x2000   | device-specific configuration                         |
//! | 0x3000   | queue doorbells, 4 bytes apart (`notify_off_multiplier`) |
//! | 0x4000   | MSI-X table                                           |
//! | 0x6000   | MSI-X pending bits                                    |
//!
//! Vendor capabilities in configuration space point the driver there.
//! Doorbell writes normally never reach this code: the VM registers each
//! queue's eventfd with KVM (ioeventfd) at the doorbell's address and the
//! device's worker wakes up directly. Should the guest move the BAR, its
//! writes arrive here and are forwarded to the same eventfd.
//!
//! Interrupts are MSI-X only: each vector is an irqfd on a GSI of its own,
//! routed to the message the guest programmed. Masked vectors collect
//! pending bits and fire when unmasked. Every value the guest writes is
//! checked; nothing it does panics or reaches outside the BAR.

use std::any::Any;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{ActivateError, ActiveQueue, QueueInterrupt, VirtioDevice};
use crate::bus::{lock, BusDevice};
use crate::pci::{
    MsixCapability, MsixControl, MsixError, MsixMessage, MsixTable, MsixTableEntry, MsixTableState,
    PciBar, PciBarKind, PciConfigError, PciConfiguration, PciConfigurationState, PciDevice,
    PciHeader,
};
use crate::{GuestRequest, IrqLine, Persist};

/// Red Hat's vendor ID, under which virtio devices are registered.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern virtio device IDs are this plus the device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;

/// Size of the one BAR.
pub const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR_OFFSET: u64 = 0x1000;
const ISR_LEN: u64 = 1;
const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
const DEVICE_CONFIG_LEN: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' doorbells.
const NOTIFY_OFF_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u32 = 0x4000;
const MSIX_PBA_OFFSET: u32 = 0x6000;
/// At most this many queues per device (plus one config vector): room for
/// the table below the PBA.
pub const MAX_QUEUES: usize = 64;

/// "No vector" in the vector registers.
pub const NO_VECTOR: u16 = 0xffff;

/// Vendor-specific capability: the virtio structures.
const PCI_CAP_ID_VNDR: u8 = 0x09;
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;

/// ISR bit: a queue has used buffers.
const ISR_QUEUE: u8 = 1;
/// ISR bit: the device's configuration changed.
const ISR_CONFIG: u8 = 2;

/// Errors while building the transport.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The device has no queues or more than [`MAX_QUEUES`].
    #[error("a virtio device needs 1..={MAX_QUEUES} queues, not {0}")]
    QueueCount(usize),
    /// Configuration space could not hold the capabilities.
    #[error("cannot lay out PCI configuration space: {0}")]
    Config(#[from] crate::pci::PciConfigError),
    /// The MSI-X table could not be built.
    #[error("cannot build the MSI-X table: {0}")]
    Msix(#[from] crate::pci::MsixError),
    /// An eventfd could not be created.
    #[error("cannot create a queue eventfd")]
    EventFd(#[source] std::io::Error),
    /// The interrupt lines do not match the vectors.
    #[error("{got} interrupt lines for {want} MSI-X vectors")]
    VectorLines {
        /// Lines given.
        got: usize,
        /// Vectors the device has.
        want: usize,
    },
    /// A state's configuration space cannot be restored onto this device.
    #[error("the saved configuration space does not fit the device")]
    ConfigState(#[source] PciConfigError),
    /// A state's MSI-X table cannot be restored.
    #[error("the saved MSI-X table cannot be restored")]
    MsixState(#[source] MsixError),
    /// A state whose device part is not the device given to restore it.
    #[error("the saved device state is not the state of the device restored from it")]
    DeviceState,
    /// A state of a device with other queues or vectors.
    #[error("the state is of another device: its {0} differ")]
    StateMismatch(&'static str),
    /// A vector register naming a vector the table does not have.
    #[error("vector register holds {0}, which is not in the MSI-X table")]
    Vector(u16),
    /// ISR bits the device never sets.
    #[error("ISR status {0:#x} has bits the device never sets")]
    Isr(u8),
    /// Features accepted (FEATURES_OK) that the device does not offer.
    #[error("features {0:#x} accepted that the device does not offer")]
    Features(u64),
    /// A started device whose status does not say the driver started it.
    #[error("the device is started but its status {0:#x} lacks FEATURES_OK or DRIVER_OK")]
    ActiveStatus(u8),
    /// A started device saved while its I/O thread ran its queues (not
    /// paused): where they stood is unknown.
    #[error("the device was saved while its I/O thread ran: its queue positions are unknown")]
    PositionsUnknown,
    /// A started queue the saved registers cannot make.
    #[error("cannot restore queue {index}")]
    Queue {
        /// The queue.
        index: usize,
        /// Why.
        #[source]
        source: QueueSetupError,
    },
    /// The device could not start again on its queues.
    #[error("cannot restart the device on its queues")]
    Resume(#[source] ActivateError),
}

/// Why a queue's registers do not make a queue the device can use.
#[derive(Debug, thiserror::Error)]
pub enum QueueSetupError {
    /// A size or ring address `virtio-queue` refuses.
    #[error("the registers are not a queue")]
    Registers(#[source] virtio_queue::Error),
    /// Rings not inside guest memory.
    #[error("its rings are not inside guest memory")]
    OutsideMemory,
}

/// Points interrupt messages at the guest's local APICs: the device manager
/// implements it over KVM's GSI routing. Devices only name a GSI and the
/// message the guest programmed.
pub trait MsiRouting: Send + Sync {
    /// Route `gsi` to `message` (replacing any earlier route).
    fn route(&self, gsi: u32, message: MsixMessage) -> std::io::Result<()>;
}

/// One queue's registers, as the driver set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRegisters {
    /// Largest size the device allows.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// `queue_enable`.
    pub enabled: bool,
    /// MSI-X vector, or [`NO_VECTOR`].
    pub vector: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Driver (available) ring address.
    pub driver: u64,
    /// Device (used) ring address.
    pub device: u64,
}

impl QueueRegisters {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            enabled: false,
            vector: NO_VECTOR,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// Where a started queue stands: the next chain the device takes from the
/// available ring and the next slot it fills in the used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueuePosition {
    /// Index into the available ring (wrapping).
    pub next_avail: u16,
    /// Index into the used ring (wrapping).
    pub next_used: u16,
}

/// The transport's state, for snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtioPciState {
    /// Configuration space.
    pub config: PciConfigurationState,
    /// MSI-X table and pending bits.
    pub msix: MsixTableState,
    /// `device_status`.
    pub status: u8,
    /// `device_feature_select`.
    pub device_feature_select: u32,
    /// `driver_feature_select`.
    pub driver_feature_select: u32,
    /// Features the driver wrote.
    pub driver_features: u64,
    /// `queue_select`.
    pub queue_select: u16,
    /// `msix_config`.
    pub config_vector: u16,
    /// Every queue's registers.
    pub queues: Vec<QueueRegisters>,
    /// ISR status bits.
    pub isr: u8,
    /// The device's own state (a disk's or a network card's).
    pub device: super::device::VirtioDeviceState,
    /// The driver started the device (DRIVER_OK) and it serves its queues.
    #[serde(default)]
    pub active: bool,
    /// A started device's queue positions, one per queue, once its queues
    /// were handed back to the transport (paused, or restored and not yet
    /// resumed); `None` while an I/O thread runs them: such a state is
    /// refused.
    #[serde(default)]
    pub positions: Option<Vec<QueuePosition>>,
    /// Why the device gave up, until the driver resets it.
    #[serde(default)]
    pub failure: Option<String>,
}

/// What a restored transport is connected to: what [`VirtioPciDevice::new`]
/// takes.
pub struct VirtioPciArgs {
    /// Names the device in log lines.
    pub label: String,
    /// The device, restored from the state's `device` part.
    pub device: Box<dyn VirtioDevice>,
    /// Guest memory, holding the rings.
    pub memory: GuestMemoryMmap,
    /// One unregistered interrupt line per MSI-X vector.
    pub vector_lines: Vec<IrqLine>,
    /// Where the guest's MSI-X messages are routed.
    pub routing: Arc<dyn MsiRouting>,
}

/// MSI-X state shared by the transport (guest writes) and the device's
/// worker (interrupts).
struct Vectors {
    table: MsixTable,
    control: MsixControl,
    /// Vector of each queue, copied from the queue registers.
    queue_vectors: Vec<u16>,
    config_vector: u16,
}

/// The interrupt side of the transport, handed to the device.
struct Interrupts {
    vectors: Mutex<Vectors>,
    /// One irqfd line per MSI-X vector.
    lines: Vec<IrqLine>,
    isr: AtomicU8,
    routing: Arc<dyn MsiRouting>,
    label: String,
    /// Why the device gave up, until the driver resets it, and whether
    /// the VM was told.
    failure: Mutex<Option<(String, bool)>>,
}

impl Interrupts {
    /// Fire `vector` now, or leave it pending while masked.
    fn signal(&self, vector: u16, isr_bit: u8) {
        self.isr.fetch_or(isr_bit, Ordering::AcqRel);
        let mut v = lock(&self.vectors);
        if !v.control.enabled || vector == NO_VECTOR {
            // No INTx: a driver without MSI-X polls the ISR (or is broken).
            return;
        }
        let control = v.control;
        if v.table.signal(usize::from(vector), control).is_some() {
            self.fire(vector);
        }
    }

    fn fire(&self, vector: u16) {
        if let Some(line) = self.lines.get(usize::from(vector)) {
            if let Err(e) = line.trigger() {
                log::warn!("{}: cannot raise MSI-X vector {vector}: {e}", self.label);
            }
        }
    }

    /// Deliver every pending vector that is no longer masked.
    fn deliver_pending(&self) {
        let mut v = lock(&self.vectors);
        let control = v.control;
        for (n, _) in v.table.take_deliverable(control) {
            // n < table size <= MAX_QUEUES + 1.
            self.fire(n as u16);
        }
    }

    /// Point vector `n`'s GSI at what the guest programmed.
    fn reroute(&self, n: usize, message: MsixMessage) {
        if let Some(line) = self.lines.get(n) {
            if let Err(e) = self.routing.route(line.gsi(), message) {
                log::warn!("{}: cannot route MSI-X vector {n}: {e}", self.label);
            }
        }
    }
}

impl QueueInterrupt for Interrupts {
    fn notify_queue(&self, index: u16) {
        let vector = lock(&self.vectors)
            .queue_vectors
            .get(usize::from(index))
            .copied()
            .unwrap_or(NO_VECTOR);
        self.signal(vector, ISR_QUEUE);
    }

    fn notify_config(&self) {
        let vector = lock(&self.vectors).config_vector;
        self.signal(vector, ISR_CONFIG);
    }

    fn device_failed(&self, why: String) {
        {
            let mut failure = lock(&self.failure);
            if failure.is_some() {
                return;
            }
            log::error!("{}: {why}; the driver must reset the device", self.label);
            *failure = Some((why, false));
        }
        // The spec's way to tell the driver: NEEDS_RESET plus a config
        // change interrupt.
        self.notify_config();
    }
}

/// A virtio device on PCI: configuration space, the BAR's registers and
/// MSI-X. Sits on the PCI bus (configuration) and, through the device
/// manager's window, on the MMIO bus (its BAR).
pub struct VirtioPciDevice {
    label: String,
    config: PciConfiguration,
    device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    interrupts: Arc<Interrupts>,
    notify: Vec<EventFd>,
    queues: Vec<QueueRegisters>,
    status: u8,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    active: bool,
    /// A started device's queues while no I/O thread has them (paused, or
    /// restored and not yet resumed).
    paused: Option<Vec<ActiveQueue>>,
}

impl VirtioPciDevice {
    /// Wrap `device`. `vector_lines` has one unregistered interrupt line per
    /// MSI-X vector (queues + 1), on GSIs the device manager chose.
    pub fn new(
        label: String,
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        vector_lines: Vec<IrqLine>,
        routing: Arc<dyn MsiRouting>,
    ) -> Result<Self, VirtioPciError> {
        let max_sizes = device.queue_max_sizes();
        if max_sizes.is_empty() || max_sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::QueueCount(max_sizes.len()));
        }
        let vectors = Self::vector_count(max_sizes.len());
        if vector_lines.len() != usize::from(vectors) {
            return Err(VirtioPciError::VectorLines {
                got: vector_lines.len(),
                want: usize::from(vectors),
            });
        }
        let device_type = device.device_type();
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            // Device types are small numbers (1, 2, ...).
            device_id: VIRTIO_PCI_DEVICE_ID_BASE + device_type as u16,
            class_code: class_code(device_type),
            // Revision 1: a modern-only device.
            revision_id: 1,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: 0x40,
            interrupt_pin: 0,
            multifunction: false,
        });
        config.add_bar(
            0,
            PciBarKind::Memory32 {
                prefetchable: false,
            },
            BAR_SIZE,
        )?;
        let cap = |cfg_type: u8, offset: u64, len: u64| -> Vec<u8> {
            let mut c = vec![PCI_CAP_ID_VNDR, 0, 16, cfg_type, 0, 0, 0, 0];
            c.extend_from_slice(&(offset as u32).to_le_bytes());
            c.extend_from_slice(&(len as u32).to_le_bytes());
            c
        };
        config.add_capability(
            &cap(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, COMMON_LEN),
            &[],
        )?;
        config.add_capability(&cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, ISR_LEN), &[])?;
        config.add_capability(
            &cap(
                VIRTIO_PCI_CAP_DEVICE_CFG,
                DEVICE_CONFIG_OFFSET,
                DEVICE_CONFIG_LEN,
            ),
            &[],
        )?;
        let mut notify_cap = cap(
            VIRTIO_PCI_CAP_NOTIFY_CFG,
            NOTIFY_OFFSET,
            max_sizes.len() as u64 * u64::from(NOTIFY_OFF_MULTIPLIER),
        );
        notify_cap[2] = 20;
        notify_cap.extend_from_slice(&NOTIFY_OFF_MULTIPLIER.to_le_bytes());
        config.add_capability(&notify_cap, &[])?;
        config.add_msix_capability(&MsixCapability {
            table_size: vectors,
            table_bar: 0,
            table_offset: MSIX_TABLE_OFFSET,
            pba_bar: 0,
            pba_offset: MSIX_PBA_OFFSET,
        })?;

        let notify = (0..max_sizes.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VirtioPciError::EventFd)?;
        let interrupts = Arc::new(Interrupts {
            vectors: Mutex::new(Vectors {
                table: MsixTable::new(vectors)?,
                control: MsixControl::default(),
                queue_vectors: vec![NO_VECTOR; max_sizes.len()],
                config_vector: NO_VECTOR,
            }),
            lines: vector_lines,
            isr: AtomicU8::new(0),
            routing,
            label: label.clone(),
            failure: Mutex::new(None),
        });
        Ok(Self {
            label,
            config,
            queues: max_sizes.iter().map(|&m| QueueRegisters::new(m)).collect(),
            device,
            memory,
            interrupts,
            notify,
            status: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            active: false,
            paused: None,
        })
    }

    /// MSI-X vectors for `queues` queues: one each, and one for config.
    pub fn vector_count(queues: usize) -> u16 {
        // Bounded by MAX_QUEUES + 1.
        (queues.min(MAX_QUEUES) + 1) as u16
    }

    /// Place the BAR, as firmware would; `address` comes from the device
    /// manager's allocator.
    pub fn set_bar_address(&mut self, address: u64) -> Result<(), VirtioPciError> {
        self.config.set_bar_address(0, address)?;
        Ok(())
    }

    /// The BAR's current address.
    pub fn bar_address(&self) -> u64 {
        self.config.bar_address(0).unwrap_or(0)
    }

    /// Each queue's doorbell address and eventfd, for KVM ioeventfds.
    pub fn doorbells(&self) -> Vec<(u64, &EventFd)> {
        let base = self.bar_address() + NOTIFY_OFFSET;
        self.notify
            .iter()
            .enumerate()
            .map(|(i, e)| (base + i as u64 * u64::from(NOTIFY_OFF_MULTIPLIER), e))
            .collect()
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Stop the device's worker (VM teardown).
    pub fn shut_down(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
            self.paused = None;
        }
    }

    /// Take a started device's queues back from its I/O thread, which
    /// stops at a request boundary ([`VirtioDevice::pause`]); a save now
    /// records where they stand. Nothing to do for a device not started,
    /// or one paused already. Doorbells rung meanwhile wait in their
    /// eventfds.
    pub fn pause(&mut self) {
        if self.active && self.paused.is_none() {
            self.paused = Some(self.device.pause());
        }
    }

    /// Start the device's I/O thread again on the queues it was handed
    /// back (by [`VirtioPciDevice::pause`] or a restore), ringing each
    /// doorbell once: requests the guest published while no thread served
    /// the queues are served now. A device that fails to start shows
    /// NEEDS_RESET to its driver.
    pub fn resume(&mut self) -> Result<(), VirtioPciError> {
        let Some(queues) = self.paused.take() else {
            return Ok(());
        };
        let interrupt: Arc<dyn QueueInterrupt> = self.interrupts.clone();
        if let Err(e) = self.device.resume(self.memory.clone(), queues, interrupt) {
            self.active = false;
            self.status |= VIRTIO_CONFIG_S_NEEDS_RESET as u8;
            return Err(VirtioPciError::Resume(e));
        }
        Ok(())
    }

    /// Whether the device has queues no I/O thread serves (paused, or
    /// restored and not yet resumed).
    pub fn is_paused(&self) -> bool {
        self.paused.is_some()
    }

    /// Whether the driver accepted VIRTIO_F_EVENT_IDX.
    fn event_idx(&self) -> bool {
        self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0
    }

    /// The enabled queues of a restored, started device at `positions`.
    fn restored_queues(
        &self,
        positions: &[QueuePosition],
    ) -> Result<Vec<ActiveQueue>, VirtioPciError> {
        let event_idx = self.event_idx();
        let mut queues = Vec::new();
        for (i, (regs, position)) in self.queues.iter().zip(positions).enumerate() {
            if !regs.enabled {
                continue;
            }
            let mut queue = queue_from_registers(regs, event_idx, &self.memory)
                .map_err(|source| VirtioPciError::Queue { index: i, source })?;
            queue.set_next_avail(position.next_avail);
            queue.set_next_used(position.next_used);
            queues.push(ActiveQueue {
                // i < MAX_QUEUES.
                index: i as u16,
                queue,
                notify: self.notify[i]
                    .try_clone()
                    .map_err(VirtioPciError::EventFd)?,
            });
        }
        Ok(queues)
    }

    fn offered_features(&self) -> u64 {
        self.device.device_features() | (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn selected(&self) -> Option<&QueueRegisters> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn selected_mut(&mut self) -> Option<&mut QueueRegisters> {
        // Queue registers are frozen while the device runs.
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK as u8 != 0 {
            return None;
        }
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn read_common(&self, offset: u64, data: &mut [u8]) {
        let q = self.selected();
        let config_vector = lock(&self.interrupts.vectors).config_vector;
        let value: u64 = match (offset, data.len()) {
            (0x00, 4) => u64::from(self.device_feature_select),
            (0x04, 4) => match self.device_feature_select {
                0 => self.offered_features() & 0xffff_ffff,
                1 => self.offered_features() >> 32,
                _ => 0,
            },
            (0x08, 4) => u64::from(self.driver_feature_select),
            (0x0c, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => u64::from(config_vector),
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => u64::from(self.status_with_failure()),
            // Our config spaces never change under the driver's feet.
            (0x15, 1) => 0,
            (0x16, 2) => u64::from(self.queue_select),
            (0x18, 2) => q.map_or(0, |q| u64::from(q.size)),
            (0x1a, 2) => q.map_or(u64::from(NO_VECTOR), |q| u64::from(q.vector)),
            (0x1c, 2) => q.map_or(0, |q| u64::from(q.enabled)),
            (0x1e, 2) => u64::from(self.queue_select),
            (0x20, 8) => q.map_or(0, |q| q.desc),
            (0x20, 4) => q.map_or(0, |q| q.desc & 0xffff_ffff),
            (0x24, 4) => q.map_or(0, |q| q.desc >> 32),
            (0x28, 8) => q.map_or(0, |q| q.driver),
            (0x28, 4) => q.map_or(0, |q| q.driver & 0xffff_ffff),
            (0x2c, 4) => q.map_or(0, |q| q.driver >> 32),
            (0x30, 8) => q.map_or(0, |q| q.device),
            (0x30, 4) => q.map_or(0, |q| q.device & 0xffff_ffff),
            (0x34, 4) => q.map_or(0, |q| q.device >> 32),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut raw = [0u8; 8];
        let n = data.len().min(8);
        raw[..n].copy_from_slice(&data[..n]);
        let value = u64::from_le_bytes(raw);
        let lo = |old: u64| (old & !0xffff_ffff) | (value & 0xffff_ffff);
        let hi = |old: u64| (old & 0xffff_ffff) | (value << 32);
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = value as u32,
            (0x08, 4) => self.driver_feature_select = value as u32,
            // Features are fixed once the driver said FEATURES_OK.
            (0x0c, 4) if self.status & VIRTIO_CONFIG_S_FEATURES_OK as u8 == 0 => {
                match self.driver_feature_select {
                    0 => self.driver_features = lo(self.driver_features),
                    1 => self.driver_features = hi(self.driver_features),
                    _ => {}
                }
            }
            (0x10, 2) => {
                let vector = self.checked_vector(value as u16);
                lock(&self.interrupts.vectors).config_vector = vector;
            }
            (0x14, 1) => self.write_status(value as u8),
            (0x16, 2) => self.queue_select = value as u16,
            (0x18, 2) => {
                if let Some(q) = self.selected_mut() {
                    // An invalid size is kept and refused at DRIVER_OK, so
                    // the driver learns of it by the device failing.
                    q.size = value as u16;
                }
            }
            (0x1a, 2) => {
                let vector = self.checked_vector(value as u16);
                let index = usize::from(self.queue_select);
                if let Some(q) = self.selected_mut() {
                    q.vector = vector;
                    if let Some(v) = lock(&self.interrupts.vectors).queue_vectors.get_mut(index) {
                        *v = vector;
                    }
                }
            }
            (0x1c, 2) => {
                if let Some(q) = self.selected_mut() {
                    // Writing 0 is not allowed; a reset disables queues.
                    if value == 1 {
                        q.enabled = true;
                    }
                }
            }
            (0x20, 8) => self.set_queue(|q| q.desc = value),
            (0x20, 4) => self.set_queue(|q| q.desc = lo(q.desc)),
            (0x24, 4) => self.set_queue(|q| q.desc = hi(q.desc)),
            (0x28, 8) => self.set_queue(|q| q.driver = value),
            (0x28, 4) => self.set_queue(|q| q.driver = lo(q.driver)),
            (0x2c, 4) => self.set_queue(|q| q.driver = hi(q.driver)),
            (0x30, 8) => self.set_queue(|q| q.device = value),
            (0x30, 4) => self.set_queue(|q| q.device = lo(q.device)),
            (0x34, 4) => self.set_queue(|q| q.device = hi(q.device)),
            _ => {}
        }
    }

    fn set_queue(&mut self, f: impl FnOnce(&mut QueueRegisters)) {
        if let Some(q) = self.selected_mut() {
            if !q.enabled {
                f(q);
            }
        }
    }

    /// A vector the table has, or NO_VECTOR (which the driver reads back
    /// to learn that its choice was refused).
    fn checked_vector(&self, vector: u16) -> u16 {
        let size = lock(&self.interrupts.vectors).table.len();
        if usize::from(vector) < size {
            vector
        } else {
            NO_VECTOR
        }
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let mut new = value;
        // Bits are only ever added, except by a reset.
        if new & old != old {
            log::warn!(
                "{}: driver cleared status bits {old:#x} → {new:#x}; ignored",
                self.label
            );
            new |= old;
        }
        let features_ok = VIRTIO_CONFIG_S_FEATURES_OK as u8;
        if new & features_ok != 0 && old & features_ok == 0 {
            let offered = self.offered_features();
            let accepted = self.driver_features & offered == self.driver_features
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if accepted {
                self.device.ack_features(self.driver_features);
            } else {
                log::warn!(
                    "{}: driver features {:#x} refused (offered {offered:#x})",
                    self.label,
                    self.driver_features
                );
                // The driver reads FEATURES_OK back and gives up.
                new &= !features_ok;
            }
        }
        let driver_ok = VIRTIO_CONFIG_S_DRIVER_OK as u8;
        if new & driver_ok != 0 && old & driver_ok == 0 {
            if new & features_ok == 0 {
                new |= VIRTIO_CONFIG_S_FAILED as u8;
            } else if let Err(e) = self.activate() {
                log::warn!("{}: cannot start: {e}", self.label);
                new |= VIRTIO_CONFIG_S_NEEDS_RESET as u8;
            }
        }
        self.status = new;
    }

    fn activate(&mut self) -> Result<(), String> {
        let event_idx = self.event_idx();
        let mut active = Vec::new();
        for (i, regs) in self.queues.iter().enumerate() {
            if !regs.enabled {
                continue;
            }
            let q = match queue_from_registers(regs, event_idx, &self.memory) {
                Ok(q) => q,
                Err(QueueSetupError::Registers(e)) => return Err(format!("queue {i}: {e}")),
                Err(QueueSetupError::OutsideMemory) => {
                    return Err(format!(
                        "queue {i} is not valid (size {}, rings at {:#x}/{:#x}/{:#x})",
                        regs.size, regs.desc, regs.driver, regs.device
                    ))
                }
            };
            let notify = self.notify[i]
                .try_clone()
                .map_err(|e| format!("queue {i}: {e}"))?;
            active.push(ActiveQueue {
                // i < MAX_QUEUES.
                index: i as u16,
                queue: q,
                notify,
            });
        }
        let interrupt: Arc<dyn QueueInterrupt> = self.interrupts.clone();
        self.device
            .activate(self.memory.clone(), active, interrupt)
            .map_err(|e| e.to_string())?;
        self.active = true;
        Ok(())
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
            self.paused = None;
        }
        // Drain doorbells rung before the reset.
        for e in &self.notify {
            let _ = e.read();
        }
        for q in &mut self.queues {
            *q = QueueRegisters::new(q.max_size);
        }
        {
            let mut v = lock(&self.interrupts.vectors);
            v.queue_vectors.iter_mut().for_each(|x| *x = NO_VECTOR);
            v.config_vector = NO_VECTOR;
        }
        self.interrupts.isr.store(0, Ordering::Release);
        // The driver did what NEEDS_RESET asked; the device starts afresh.
        *lock(&self.interrupts.failure) = None;
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
    }

    /// `device_status` as the driver reads it: NEEDS_RESET while the
    /// device has given up.
    fn status_with_failure(&self) -> u8 {
        if lock(&self.interrupts.failure).is_some() {
            self.status | VIRTIO_CONFIG_S_NEEDS_RESET as u8
        } else {
            self.status
        }
    }

    /// Why the device gave up, the first time this is asked after it did
    /// (the VM turns it into one error event).
    pub fn take_failure(&self) -> Option<String> {
        match &mut *lock(&self.interrupts.failure) {
            Some((why, told @ false)) => {
                *told = true;
                Some(why.clone())
            }
            _ => None,
        }
    }

    fn msix_read(&self, offset: u64, data: &mut [u8]) {
        let v = lock(&self.interrupts.vectors);
        let table = u64::from(MSIX_TABLE_OFFSET);
        let pba = u64::from(MSIX_PBA_OFFSET);
        if offset >= pba {
            v.table.read_pba(offset - pba, data);
        } else if offset >= table {
            v.table.read_table(offset - table, data);
        }
    }

    fn msix_write(&mut self, offset: u64, data: &[u8]) {
        let table = u64::from(MSIX_TABLE_OFFSET);
        if offset >= u64::from(MSIX_PBA_OFFSET) || offset < table {
            return;
        }
        let offset = offset - table;
        let n = (offset / crate::pci::msix::MSIX_ENTRY_SIZE) as usize;
        let changed = {
            let mut v = lock(&self.interrupts.vectors);
            let before = v.table.entry(n).copied();
            v.table.write_table(offset, data);
            let after = v.table.entry(n).copied();
            (before != after).then_some(after).flatten()
        };
        if let Some(entry) = changed {
            self.interrupts.reroute(n, entry.message());
            self.interrupts.deliver_pending();
        }
    }

    /// Pick up the enable and function-mask bits after a config write.
    fn sync_msix_control(&mut self) {
        let control = self.config.msix_control().unwrap_or_default();
        let changed = {
            let mut v = lock(&self.interrupts.vectors);
            let changed = v.control != control;
            v.control = control;
            changed
        };
        if changed {
            self.interrupts.deliver_pending();
        }
    }
}

/// A queue on the rings `regs` name, ready for a device. The try_ setters:
/// the plain ones log and keep the old value (size max_size, rings at
/// address 0), so a bad size or an unaligned ring would silently become a
/// different queue.
fn queue_from_registers(
    regs: &QueueRegisters,
    event_idx: bool,
    memory: &GuestMemoryMmap,
) -> Result<Queue, QueueSetupError> {
    let mut q = Queue::new(regs.max_size).map_err(QueueSetupError::Registers)?;
    q.try_set_size(regs.size)
        .map_err(QueueSetupError::Registers)?;
    q.try_set_desc_table_address(GuestAddress(regs.desc))
        .map_err(QueueSetupError::Registers)?;
    q.try_set_avail_ring_address(GuestAddress(regs.driver))
        .map_err(QueueSetupError::Registers)?;
    q.try_set_used_ring_address(GuestAddress(regs.device))
        .map_err(QueueSetupError::Registers)?;
    q.set_event_idx(event_idx);
    q.set_ready(true);
    if !q.is_valid(memory) {
        return Err(QueueSetupError::OutsideMemory);
    }
    Ok(q)
}

impl Persist for VirtioPciDevice {
    type State = VirtioPciState;
    type Args = VirtioPciArgs;
    type Error = VirtioPciError;

    /// The transport's registers, MSI-X, the device's own state and, for a
    /// started device whose queues no I/O thread holds, where they stand.
    fn save(&self) -> VirtioPciState {
        let failure = lock(&self.interrupts.failure)
            .as_ref()
            .map(|(why, _)| why.clone());
        let positions = self.paused.as_ref().map(|queues| {
            let mut positions = vec![QueuePosition::default(); self.queues.len()];
            for q in queues {
                if let Some(p) = positions.get_mut(usize::from(q.index)) {
                    *p = QueuePosition {
                        next_avail: q.queue.next_avail(),
                        next_used: q.queue.next_used(),
                    };
                }
            }
            positions
        });
        let v = lock(&self.interrupts.vectors);
        VirtioPciState {
            config: self.config.save(),
            msix: v.table.save(),
            status: self.status,
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            config_vector: v.config_vector,
            queues: self.queues.clone(),
            isr: self.interrupts.isr.load(Ordering::Acquire),
            device: self.device.save_state(),
            active: self.active,
            positions,
            failure,
        }
    }

    /// A started device comes back with its queues at their positions but
    /// no I/O thread on them: [`VirtioPciDevice::resume`] starts it once
    /// the VM is ready. KVM's routes belong to the new VM, so every vector
    /// the guest programmed is routed again here.
    ///
    /// Queue registers of a device not yet started hold whatever the
    /// driver wrote (a bad size is refused only at DRIVER_OK); those of a
    /// started one must make valid queues inside guest memory.
    fn restore(args: VirtioPciArgs, state: &VirtioPciState) -> Result<Self, VirtioPciError> {
        let mut t = Self::new(
            args.label,
            args.device,
            args.memory,
            args.vector_lines,
            args.routing,
        )?;
        if t.device.save_state() != state.device {
            return Err(VirtioPciError::DeviceState);
        }
        let config =
            PciConfiguration::restore((), &state.config).map_err(VirtioPciError::ConfigState)?;
        config
            .check_layout(&t.config)
            .map_err(VirtioPciError::ConfigState)?;
        let table = MsixTable::restore((), &state.msix).map_err(VirtioPciError::MsixState)?;
        let vectors = lock(&t.interrupts.vectors).table.len();
        if table.len() != vectors {
            return Err(VirtioPciError::StateMismatch("MSI-X vectors"));
        }
        if state.queues.len() != t.queues.len()
            || state
                .queues
                .iter()
                .zip(&t.queues)
                .any(|(saved, fresh)| saved.max_size != fresh.max_size)
        {
            return Err(VirtioPciError::StateMismatch("queues"));
        }
        let vector_registers = state.queues.iter().map(|q| q.vector);
        if let Some(v) = vector_registers
            .chain([state.config_vector])
            .find(|&v| v != NO_VECTOR && usize::from(v) >= vectors)
        {
            return Err(VirtioPciError::Vector(v));
        }
        if state.isr & !(ISR_QUEUE | ISR_CONFIG) != 0 {
            return Err(VirtioPciError::Isr(state.isr));
        }
        let features_ok = VIRTIO_CONFIG_S_FEATURES_OK as u8;
        let driver_ok = VIRTIO_CONFIG_S_DRIVER_OK as u8;
        if state.status & features_ok != 0 {
            let offered = t.offered_features();
            if state.driver_features & !offered != 0
                || state.driver_features & (1 << VIRTIO_F_VERSION_1) == 0
            {
                return Err(VirtioPciError::Features(state.driver_features));
            }
        }
        if state.active && state.status & (features_ok | driver_ok) != features_ok | driver_ok {
            return Err(VirtioPciError::ActiveStatus(state.status));
        }
        let positions = match (state.active, &state.positions) {
            (false, None) => None,
            (true, None) => return Err(VirtioPciError::PositionsUnknown),
            (true, Some(p)) if p.len() == t.queues.len() => Some(p.as_slice()),
            (_, Some(_)) => return Err(VirtioPciError::StateMismatch("queue positions")),
        };

        t.config = config;
        t.status = state.status;
        t.device_feature_select = state.device_feature_select;
        t.driver_feature_select = state.driver_feature_select;
        t.driver_features = state.driver_features;
        t.queue_select = state.queue_select;
        t.queues = state.queues.clone();
        let programmed: Vec<(usize, MsixMessage)> = (0..table.len())
            .filter_map(|n| {
                let entry = table.entry(n)?;
                (*entry != MsixTableEntry::default()).then(|| (n, entry.message()))
            })
            .collect();
        {
            let mut v = lock(&t.interrupts.vectors);
            v.table = table;
            v.control = t.config.msix_control().unwrap_or_default();
            v.queue_vectors = t.queues.iter().map(|q| q.vector).collect();
            v.config_vector = state.config_vector;
        }
        t.interrupts.isr.store(state.isr, Ordering::Release);
        // A new VM's error event tells the user once more.
        *lock(&t.interrupts.failure) = state.failure.clone().map(|why| (why, false));
        for (n, message) in programmed {
            t.interrupts.reroute(n, message);
        }
        if let Some(positions) = positions {
            t.paused = Some(t.restored_queues(positions)?);
            t.active = true;
        }
        Ok(t)
    }
}

/// PCI class code for a device type.
fn class_code(device_type: u32) -> u32 {
    match device_type {
        // Ethernet controller.
        super::device::VIRTIO_ID_NET => 0x02_00_00,
        // Mass storage, SCSI class as QEMU reports virtio-blk.
        super::device::VIRTIO_ID_BLOCK => 0x01_00_00,
        // Other.
        _ => 0xff_00_00,
    }
}

impl PciDevice for VirtioPciDevice {
    fn read_config_register(&self, reg: usize) -> u32 {
        self.config.read_register(reg)
    }

    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write_register(reg, offset, data);
        self.sync_msix_control();
    }

    fn bars(&self) -> Vec<PciBar> {
        self.config.bars()
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

impl BusDevice for VirtioPciDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() > 8 {
            return;
        }
        match offset {
            o if (COMMON_OFFSET..COMMON_OFFSET + COMMON_LEN).contains(&o) => {
                self.read_common(o - COMMON_OFFSET, data)
            }
            o if o == ISR_OFFSET => {
                // Reading the ISR clears it (and would lower INTx).
                if let Some(b) = data.first_mut() {
                    *b = self.interrupts.isr.swap(0, Ordering::AcqRel);
                }
            }
            o if (DEVICE_CONFIG_OFFSET..DEVICE_CONFIG_OFFSET + DEVICE_CONFIG_LEN).contains(&o) => {
                self.device.read_config(o - DEVICE_CONFIG_OFFSET, data)
            }
            o if (u64::from(MSIX_TABLE_OFFSET)..BAR_SIZE).contains(&o) => self.msix_read(o, data),
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        if data.len() > 8 {
            return None;
        }
        match offset {
            o if (COMMON_OFFSET..COMMON_OFFSET + COMMON_LEN).contains(&o) => {
                self.write_common(o - COMMON_OFFSET, data)
            }
            o if (DEVICE_CONFIG_OFFSET..DEVICE_CONFIG_OFFSET + DEVICE_CONFIG_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE_CONFIG_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..u64::from(MSIX_TABLE_OFFSET)).contains(&o) => {
                // Only when no ioeventfd caught it (e.g. the BAR moved).
                let q = (o - NOTIFY_OFFSET) / u64::from(NOTIFY_OFF_MULTIPLIER);
                if let Some(e) = usize::try_from(q).ok().and_then(|q| self.notify.get(q)) {
                    let _ = e.write(1);
                }
            }
            o if (u64::from(MSIX_TABLE_OFFSET)..BAR_SIZE).contains(&o) => self.msix_write(o, data),
            _ => {}
        }
        None
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The MMIO window for PCI BARs: finds the device whose memory BAR holds
/// an address (where the guest currently has it, while memory decoding is
/// on) and forwards the access at the BAR-relative offset.
pub struct PciMmioWindow {
    base: u64,
    devices: Vec<Arc<Mutex<VirtioPciDevice>>>,
}

impl PciMmioWindow {
    /// A window starting at guest-physical `base` (bus offsets are relative
    /// to it).
    pub fn new(base: u64) -> Self {
        Self {
            base,
            devices: Vec::new(),
        }
    }

    /// Serve `device`'s BAR through the window.
    pub fn add(&mut self, device: Arc<Mutex<VirtioPciDevice>>) {
        self.devices.push(device);
    }

    fn with_device<R>(
        &self,
        offset: u64,
        len: usize,
        f: impl FnOnce(&mut VirtioPciDevice, u64) -> R,
    ) -> Option<R> {
        let addr = self.base.checked_add(offset)?;
        for d in &self.devices {
            let mut dev = lock(d);
            if !dev.config.memory_enabled() {
                continue;
            }
            let bar = dev.bar_address();
            if addr >= bar && addr + len as u64 <= bar + BAR_SIZE {
                return Some(f(&mut dev, addr - bar));
            }
        }
        None
    }
}

impl BusDevice for PciMmioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let len = data.len();
        if self
            .with_device(offset, len, |d, o| BusDevice::read(d, o, data))
            .is_none()
        {
            // Nothing decodes here: a master abort reads all-ones.
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        self.with_device(offset, data.len(), |d, o| BusDevice::write(d, o, data))
            .flatten()
    }
}

#[cfg(test)]
pub(crate) mod driver_spec;
#[cfg(test)]
mod tests;
