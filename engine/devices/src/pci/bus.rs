//! PCI bus 0: up to 32 single-function devices, the host bridge at device
//! 0, and the allocator the device manager places BARs with.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::configuration::{
    PciBar, PciConfigError, PciConfiguration, PciConfigurationState, PciHeader,
};
use crate::bus::lock;
use crate::Persist;

/// Devices on the bus (device numbers 0..=31).
pub const PCI_SLOTS: usize = 32;
/// The host bridge's device number.
pub const HOST_BRIDGE_SLOT: u8 = 0;
/// Intel's vendor ID.
pub const PCI_VENDOR_ID_INTEL: u16 = 0x8086;
/// The Q35 (MCH) host bridge's device ID, one Linux knows.
pub const PCI_DEVICE_ID_Q35_HOST_BRIDGE: u16 = 0x29c0;
/// Class code of a host bridge.
pub const PCI_CLASS_HOST_BRIDGE: u32 = 0x06_00_00;

/// What reads of an absent device or register return.
const ALL_ONES: u32 = u32::MAX;

/// One PCI function as the bus sees it.
pub trait PciDevice: Send {
    /// Dword `reg` (0..64) of configuration space.
    fn read_config_register(&self, reg: usize) -> u32;
    /// The guest writes `data` at byte `offset` (0..4) of dword `reg`.
    /// Narrow writes reach the device as they are, so a byte written to
    /// the command register leaves the status register alone.
    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]);
    /// The device's BARs with their current addresses.
    fn bars(&self) -> Vec<PciBar> {
        Vec::new()
    }
    /// The device itself, so its owner can reach the concrete type.
    fn as_any(&self) -> Option<&dyn Any> {
        None
    }
}

/// A device as the bus holds it; the same device usually also sits on the
/// MMIO bus behind its BARs.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Errors of bus set-up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciBusError {
    /// Device numbers are 0..=31.
    #[error("PCI device number {0} is out of range")]
    SlotOutOfRange(u8),
    /// The device number is taken.
    #[error("PCI device number {0} is already in use")]
    SlotInUse(u8),
    /// All 32 device numbers are taken.
    #[error("PCI bus 0 is full")]
    Full,
}

/// Bus 0 and its devices.
pub struct PciBus {
    slots: Vec<Option<SharedPciDevice>>,
    /// The bridge in slot 0, by its type: its owner saves and restores it.
    host_bridge: Arc<Mutex<PciHostBridge>>,
}

impl PciBus {
    /// A bus with only the host bridge, at device 0.
    pub fn new() -> Self {
        Self::with_host_bridge(PciHostBridge::new())
    }

    /// A bus with only `bridge`, at device 0 (a restored one, say).
    pub fn with_host_bridge(bridge: PciHostBridge) -> Self {
        let host_bridge = Arc::new(Mutex::new(bridge));
        let mut slots: Vec<Option<SharedPciDevice>> = vec![None; PCI_SLOTS];
        slots[usize::from(HOST_BRIDGE_SLOT)] = Some(host_bridge.clone());
        Self { slots, host_bridge }
    }

    /// The host bridge at device 0.
    pub fn host_bridge(&self) -> &Arc<Mutex<PciHostBridge>> {
        &self.host_bridge
    }

    /// Put `device` in the lowest free slot; returns its device number.
    pub fn add_device(&mut self, device: SharedPciDevice) -> Result<u8, PciBusError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciBusError::Full)?;
        self.slots[slot] = Some(device);
        // slot < 32.
        Ok(slot as u8)
    }

    /// Put `device` at device number `slot`.
    pub fn add_device_at(&mut self, slot: u8, device: SharedPciDevice) -> Result<(), PciBusError> {
        let entry = self
            .slots
            .get_mut(usize::from(slot))
            .ok_or(PciBusError::SlotOutOfRange(slot))?;
        if entry.is_some() {
            return Err(PciBusError::SlotInUse(slot));
        }
        *entry = Some(device);
        Ok(())
    }

    /// The device at `slot`, if any.
    pub fn device(&self, slot: u8) -> Option<&SharedPciDevice> {
        self.slots.get(usize::from(slot))?.as_ref()
    }

    /// Every device with its device number.
    pub fn devices(&self) -> impl Iterator<Item = (u8, &SharedPciDevice)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((i as u8, d.as_ref()?)))
    }

    fn function(&self, bus: u8, device: u8, function: u8) -> Option<&SharedPciDevice> {
        // One bus, single-function devices: anything else is absent.
        if bus != 0 || function != 0 {
            return None;
        }
        self.device(device)
    }

    /// Dword `reg` of a function's configuration space; all-ones when the
    /// function is absent, as a master abort reads on real buses.
    pub fn read_config(&self, bus: u8, device: u8, function: u8, reg: usize) -> u32 {
        match self.function(bus, device, function) {
            Some(d) => lock(d).read_config_register(reg),
            None => ALL_ONES,
        }
    }

    /// Write to a function's configuration space; ignored when absent.
    pub fn write_config(
        &self,
        bus: u8,
        device: u8,
        function: u8,
        reg: usize,
        offset: u64,
        data: &[u8],
    ) {
        if let Some(d) = self.function(bus, device, function) {
            lock(d).write_config_register(reg, offset, data);
        }
    }
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

/// The host bridge's state, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciHostBridgeState {
    /// Its configuration space.
    pub config: PciConfigurationState,
}

/// The host bridge: only a configuration header, so that guests see a
/// PCI bus (Linux's type-1 sanity check looks for a host bridge class).
#[derive(Debug)]
pub struct PciHostBridge {
    config: PciConfiguration,
}

impl PciHostBridge {
    /// An Intel Q35 host bridge header.
    pub fn new() -> Self {
        Self {
            config: PciConfiguration::new(&PciHeader {
                vendor_id: PCI_VENDOR_ID_INTEL,
                device_id: PCI_DEVICE_ID_Q35_HOST_BRIDGE,
                class_code: PCI_CLASS_HOST_BRIDGE,
                revision_id: 0,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
                interrupt_pin: 0,
                multifunction: false,
            }),
        }
    }
}

impl Persist for PciHostBridge {
    type State = PciHostBridgeState;
    type Args = ();
    type Error = PciConfigError;

    /// Its configuration space.
    fn save(&self) -> PciHostBridgeState {
        PciHostBridgeState {
            config: self.config.save(),
        }
    }

    /// The state must be of this bridge: the Q35 header, as the guest may
    /// have changed its few writable bits.
    fn restore((): (), state: &PciHostBridgeState) -> Result<Self, PciConfigError> {
        let config = PciConfiguration::restore((), &state.config)?;
        config.check_layout(&PciHostBridge::new().config)?;
        Ok(Self { config })
    }
}

impl Default for PciHostBridgeState {
    /// A bridge out of reset, for snapshots from before it was saved.
    fn default() -> Self {
        PciHostBridge::new().save()
    }
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for PciHostBridge {
    fn read_config_register(&self, reg: usize) -> u32 {
        self.config.read_register(reg)
    }

    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write_register(reg, offset, data);
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

/// Smallest MMIO BAR the allocator hands out: a page, so that each BAR
/// can be mapped (and trapped) on its own.
pub const PCI_MMIO_MIN_SIZE: u64 = 4096;
/// Smallest I/O BAR.
pub const PCI_IO_MIN_SIZE: u64 = 4;

/// Errors of BAR allocation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciBarAllocError {
    /// The window [start, end) is empty.
    #[error("empty allocation window {start:#x}..{end:#x}")]
    EmptyWindow {
        /// Start of the window.
        start: u64,
        /// End of the window (exclusive).
        end: u64,
    },
    /// Sizes are powers of two no smaller than the allocator's minimum.
    #[error("invalid BAR size {size:#x} (a power of two, at least {min:#x})")]
    BadSize {
        /// The size asked for.
        size: u64,
        /// The allocator's minimum.
        min: u64,
    },
    /// No naturally aligned room left.
    #[error("no room for {0:#x} bytes in the BAR window")]
    Exhausted(u64),
}

/// Hands out naturally aligned ranges of a window: first fit, so holes
/// left by alignment are used by later, smaller BARs.
#[derive(Debug, Clone)]
pub struct PciBarAllocator {
    start: u64,
    end: u64,
    min_size: u64,
    /// Allocated ranges, start → end (exclusive).
    used: BTreeMap<u64, u64>,
}

impl PciBarAllocator {
    /// An allocator for MMIO BARs in [start, end); sizes at least 4 KiB.
    pub fn mmio(start: u64, end: u64) -> Result<Self, PciBarAllocError> {
        Self::new(start, end, PCI_MMIO_MIN_SIZE)
    }

    /// An allocator for I/O BARs in the ports [start, end).
    pub fn io(start: u64, end: u64) -> Result<Self, PciBarAllocError> {
        Self::new(start, end, PCI_IO_MIN_SIZE)
    }

    fn new(start: u64, end: u64, min_size: u64) -> Result<Self, PciBarAllocError> {
        if start >= end {
            return Err(PciBarAllocError::EmptyWindow { start, end });
        }
        Ok(Self {
            start,
            end,
            min_size,
            used: BTreeMap::new(),
        })
    }

    /// A free range of `size` bytes aligned to `size`; returns its start.
    pub fn allocate(&mut self, size: u64) -> Result<u64, PciBarAllocError> {
        if !size.is_power_of_two() || size < self.min_size {
            return Err(PciBarAllocError::BadSize {
                size,
                min: self.min_size,
            });
        }
        let mut candidate = align_up(self.start, size);
        for (&s, &e) in &self.used {
            let Some(c) = candidate else { break };
            if c.checked_add(size).is_some_and(|ce| ce <= s) {
                break;
            }
            if e > c {
                candidate = align_up(e, size);
            }
        }
        let addr = candidate
            .filter(|c| c.checked_add(size).is_some_and(|ce| ce <= self.end))
            .ok_or(PciBarAllocError::Exhausted(size))?;
        self.used.insert(addr, addr + size);
        Ok(addr)
    }
}

/// `v` rounded up to a multiple of `align` (a power of two); `None` on
/// overflow.
fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}
