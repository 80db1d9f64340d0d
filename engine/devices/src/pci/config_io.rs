//! PCI configuration mechanism #1: ports 0xCF8..=0xCFF.
//!
//! The guest writes a dword to CONFIG_ADDRESS (0xCF8) naming bus, device,
//! function and register, then reads or writes CONFIG_DATA (0xCFC..=0xCFF);
//! a byte or word at 0xCFC + n reaches byte n of the selected dword.
//! Linux's `pci_check_type1` first byte-writes 0xCFB (a chipset's mechanism
//! select), then checks that 0x80000000 written to 0xCF8 reads back. Only
//! dword accesses reach CONFIG_ADDRESS, as the specification says, so the
//! byte write leaves the address alone and narrow reads there return
//! all-ones (which also makes Linux's mechanism-#2 probe fail, as it must).
//!
//! Port 0xCF9, a byte, is the chipset's reset control register: Linux
//! falls back to it when the keyboard controller fails to reset.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::bus::PciBus;
use crate::bus::lock;
use crate::{BusDevice, GuestRequest, Persist};

/// CONFIG_ADDRESS's port; CONFIG_DATA is at +4.
pub const PCI_CONFIG_IO_BASE: u16 = 0xcf8;
/// CONFIG_ADDRESS (4 ports) and CONFIG_DATA (4 ports).
pub const PCI_CONFIG_IO_LEN: u64 = 8;

/// Offset of CONFIG_DATA.
const DATA_OFFSET: u64 = 4;
/// Offset of the reset control register (port 0xCF9).
const RESET_CONTROL_OFFSET: u64 = 1;

/// CONFIG_ADDRESS: configuration cycles enabled.
const ADDR_ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS: bits that hold something. Bits 30:28 are reserved and
/// bits 1:0 hardwired to zero; bits 27:24 are kept because AMD chipsets use
/// them for registers past 255, which must not alias the first 256.
const ADDR_KEPT: u32 = 0x8fff_fffc;
/// CONFIG_ADDRESS: AMD's extended register bits.
const ADDR_EXTENDED_REGISTER: u32 = 0x0f00_0000;

/// Reset control: reset the CPU when this bit is written as one.
const RESET_CPU: u8 = 1 << 2;
/// Reset control: bits that are kept (hard reset, full reset).
const RESET_KEPT: u8 = 0x0a;

/// What the ports remember, for snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PciConfigIoState {
    /// CONFIG_ADDRESS.
    pub config_address: u32,
    /// The reset control register at 0xCF9.
    pub reset_control: u8,
}

/// Why a state of the ports cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciConfigIoError {
    /// CONFIG_ADDRESS with reserved or hardwired bits set.
    #[error("CONFIG_ADDRESS {0:#010x} has reserved bits set")]
    ConfigAddress(u32),
    /// The reset control register with bits it does not keep.
    #[error("reset control {0:#04x} has bits the register does not keep")]
    ResetControl(u8),
}

/// The configuration ports in front of a [`PciBus`].
pub struct PciConfigIo {
    state: PciConfigIoState,
    // Shared rather than owned so that a later ECAM (MMCONFIG) window can
    // reach the same bus.
    bus: Arc<Mutex<PciBus>>,
}

impl PciConfigIo {
    /// Ports in front of `bus`, nothing selected.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        Self {
            state: PciConfigIoState::default(),
            bus,
        }
    }

    /// The selected (bus, device, function, register), or `None` when
    /// configuration cycles are off or the register is past 255.
    fn target(&self) -> Option<(u8, u8, u8, usize)> {
        let a = self.state.config_address;
        if a & ADDR_ENABLE == 0 || a & ADDR_EXTENDED_REGISTER != 0 {
            return None;
        }
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            ((a >> 2) & 0x3f) as usize,
        ))
    }

    fn read_data(&self, byte: usize, data: &mut [u8]) {
        let value = match self.target() {
            Some((bus, dev, func, reg)) => lock(&self.bus).read_config(bus, dev, func, reg),
            None => u32::MAX,
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(byte + i).copied().unwrap_or(0xff);
        }
    }

    fn write_data(&self, byte: usize, data: &[u8]) {
        if byte + data.len() > 4 {
            return;
        }
        if let Some((bus, dev, func, reg)) = self.target() {
            lock(&self.bus).write_config(bus, dev, func, reg, byte as u64, data);
        }
    }
}

impl Persist for PciConfigIo {
    type State = PciConfigIoState;
    /// The bus the ports reach.
    type Args = Arc<Mutex<PciBus>>;
    type Error = PciConfigIoError;

    /// CONFIG_ADDRESS and the reset control register.
    fn save(&self) -> PciConfigIoState {
        self.state
    }

    fn restore(
        bus: Arc<Mutex<PciBus>>,
        state: &PciConfigIoState,
    ) -> Result<Self, PciConfigIoError> {
        if state.config_address & !ADDR_KEPT != 0 {
            return Err(PciConfigIoError::ConfigAddress(state.config_address));
        }
        if state.reset_control & !RESET_KEPT != 0 {
            return Err(PciConfigIoError::ResetControl(state.reset_control));
        }
        Ok(Self { state: *state, bus })
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.state.config_address.to_le_bytes()),
            (RESET_CONTROL_OFFSET, 1) => data[0] = self.state.reset_control,
            (DATA_OFFSET..PCI_CONFIG_IO_LEN, _) => {
                self.read_data((offset - DATA_OFFSET) as usize, data)
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        match (offset, data) {
            (0, &[a, b, c, d]) => {
                self.state.config_address = u32::from_le_bytes([a, b, c, d]) & ADDR_KEPT;
            }
            (RESET_CONTROL_OFFSET, &[v]) => {
                self.state.reset_control = v & RESET_KEPT;
                if v & RESET_CPU != 0 {
                    return Some(GuestRequest::Reset);
                }
            }
            (DATA_OFFSET..PCI_CONFIG_IO_LEN, _) => {
                self.write_data((offset - DATA_OFFSET) as usize, data)
            }
            _ => {}
        }
        None
    }
}
