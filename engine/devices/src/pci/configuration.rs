//! One PCI function's 256-byte type-0 configuration header.
//!
//! Registers are kept as 64 dwords with a mask of the bits the guest may
//! write; everything else (IDs, class, header type, capability bytes, the
//! low type bits of BARs) keeps its value whatever the guest writes. BAR
//! sizing falls out of the mask: a BAR of size `s` has only the address
//! bits above `s - 1` writable, so writing all-ones reads back the size
//! mask with the type bits, as the specification requires.

use serde::{Deserialize, Serialize};

use super::msix::{
    MsixCapability, MsixControl, MSG_CTL_ENABLE, MSG_CTL_FUNCTION_MASK, MSIX_CAP_LEN,
    MSIX_MAX_VECTORS,
};
use crate::Persist;

/// Dwords in a configuration header.
pub const NUM_CONFIG_REGISTERS: usize = 64;
/// Number of BARs of a type-0 header.
pub const NUM_BARS: usize = 6;

/// Register index of the vendor and device IDs.
const REG_ID: usize = 0;
/// Register index of command (low half) and status (high half).
const REG_COMMAND_STATUS: usize = 1;
/// Register index of revision (byte 0) and class code (bytes 1..3).
const REG_CLASS: usize = 2;
/// Register index of cache line size, latency timer, header type, BIST.
const REG_HEADER_TYPE: usize = 3;
/// Register index of BAR 0.
const REG_BAR0: usize = 4;
/// Register index of the subsystem vendor and subsystem IDs.
const REG_SUBSYSTEM: usize = 11;
/// Register index of interrupt line (byte 0) and pin (byte 1).
const REG_INTERRUPT: usize = 15;

/// Where capabilities may go: after the standard header.
const CAP_START: usize = 0x40;
/// Offset of the capabilities pointer.
const CAP_POINTER_OFFSET: usize = 0x34;

/// Command: respond to I/O space accesses.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command: respond to memory space accesses.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command: the function may master the bus (DMA, MSI writes).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command: parity error response.
const COMMAND_PARITY: u16 = 1 << 6;
/// Command: SERR# enable.
const COMMAND_SERR: u16 = 1 << 8;
/// Command: INTx disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// The command bits a guest may change; the rest are hardwired to zero
/// on a virtual device.
const COMMAND_WRITABLE: u16 = COMMAND_IO
    | COMMAND_MEMORY
    | COMMAND_BUS_MASTER
    | COMMAND_PARITY
    | COMMAND_SERR
    | COMMAND_INTX_DISABLE;
/// Status: the function has a capability list.
const STATUS_CAP_LIST: u16 = 1 << 4;

/// Header type byte: multi-function device.
const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;

/// BAR bit 0: I/O space.
const BAR_IO: u32 = 0x1;
/// Memory BAR type bits: 64-bit.
const BAR_MEM_64: u32 = 0x4;
/// Memory BAR: prefetchable.
const BAR_MEM_PREFETCH: u32 = 0x8;
/// Address bits of a memory BAR's low dword.
const BAR_MEM_ADDR_MASK: u32 = !0xf;
/// Address bits of an I/O BAR.
const BAR_IO_ADDR_MASK: u32 = !0x3;
/// Smallest memory BAR the specification allows.
const BAR_MEM_MIN_SIZE: u64 = 16;
/// Smallest I/O BAR.
const BAR_IO_MIN_SIZE: u64 = 4;
/// Largest I/O BAR: x86 has 64 KiB of ports and a function gets at most 256.
const BAR_IO_MAX_SIZE: u64 = 256;

/// Errors while building a configuration header or restoring it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciConfigError {
    /// BAR index past 5 (or past 4 for a 64-bit BAR, which takes two).
    #[error("BAR {0} does not exist for this kind of BAR")]
    BarIndex(usize),
    /// The BAR's register is already taken.
    #[error("BAR {0} is already in use")]
    BarInUse(usize),
    /// Sizes are powers of two within the kind's limits.
    #[error("invalid BAR size {0:#x}")]
    BarSize(u64),
    /// The address does not fit the BAR's kind or is not aligned to its size.
    #[error("BAR {index} cannot be placed at {address:#x}")]
    BarAddress {
        /// The BAR.
        index: usize,
        /// The rejected address.
        address: u64,
    },
    /// No such BAR was added.
    #[error("BAR {0} is not defined")]
    NoBar(usize),
    /// A capability needs at least its ID and next-pointer bytes.
    #[error("a capability needs at least 2 bytes")]
    CapabilityTooShort,
    /// No room left in configuration space.
    #[error("no room for a {0}-byte capability")]
    CapabilitySpaceFull(usize),
    /// The writable mask must be empty or as long as the capability.
    #[error("writable mask has {mask} bytes for a {cap}-byte capability")]
    WritableMaskLength {
        /// Bytes of the capability.
        cap: usize,
        /// Bytes of the mask.
        mask: usize,
    },
    /// A function has at most one MSI-X capability.
    #[error("MSI-X capability already present")]
    MsixPresent,
    /// The MSI-X table or PBA does not fit its BAR, or is misaligned.
    #[error("invalid MSI-X layout: {0}")]
    MsixLayout(&'static str),
    /// A snapshot has the wrong number of registers or BARs.
    #[error("configuration state has {got} {what}, expected {expected}")]
    StateLength {
        /// Which list.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length it must have.
        expected: usize,
    },
    /// A snapshot's capability offset is outside the capability area or
    /// not dword aligned.
    #[error("a capability at {0:#x} is outside configuration space's capability area")]
    CapabilityOffset(u8),
    /// A snapshot's capabilities end past configuration space.
    #[error("capabilities end at {0:#x}, past the 256-byte header")]
    CapabilitiesEnd(u16),
    /// A snapshot is of another device: its identity, masks, BARs or
    /// capabilities differ from the device it is restored onto.
    #[error("configuration state is of another device: its {0} differ")]
    LayoutMismatch(&'static str),
}

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PciBarKind {
    /// Port I/O.
    Io,
    /// Memory below 4 GiB, one register.
    Memory32 {
        /// Reads have no side effects (the guest may map it write-combined).
        prefetchable: bool,
    },
    /// Memory anywhere, two registers (the next index is the high dword).
    Memory64 {
        /// Reads have no side effects.
        prefetchable: bool,
    },
}

impl PciBarKind {
    /// The read-only type bits of the BAR's (low) register.
    fn type_bits(self) -> u32 {
        match self {
            Self::Io => BAR_IO,
            Self::Memory32 { prefetchable } => {
                if prefetchable {
                    BAR_MEM_PREFETCH
                } else {
                    0
                }
            }
            Self::Memory64 { prefetchable } => {
                BAR_MEM_64 | if prefetchable { BAR_MEM_PREFETCH } else { 0 }
            }
        }
    }

    /// Whether the BAR decodes memory.
    pub fn is_memory(self) -> bool {
        !matches!(self, Self::Io)
    }
}

/// A BAR as the device manager sees it: what it is and where the guest
/// (or the manager, standing in for firmware) put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciBar {
    /// BAR index (0..=5; a 64-bit BAR also takes the next one).
    pub index: u8,
    /// What it decodes.
    pub kind: PciBarKind,
    /// Size in bytes, a power of two.
    pub size: u64,
    /// Current base address (port number for I/O BARs).
    pub address: u64,
}

/// The read-only identity of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciHeader {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Class code: base class, subclass and programming interface
    /// (0x060000 is a host bridge).
    pub class_code: u32,
    /// Revision ID.
    pub revision_id: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Interrupt pin: 0 none, 1..=4 INTA#..INTD#.
    pub interrupt_pin: u8,
    /// Whether the device has functions besides 0.
    pub multifunction: bool,
}

/// A configuration header, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciConfigurationState {
    /// The 64 dwords as the guest reads them.
    pub registers: Vec<u32>,
    /// For each dword, the bits the guest may write.
    pub writable_bits: Vec<u32>,
    /// The six BAR slots; a 64-bit BAR's upper slot is `None`.
    pub bars: Vec<Option<BarDefinition>>,
    /// Offset of the last capability in the list.
    pub last_capability: Option<u8>,
    /// Offset of the MSI-X capability.
    pub msix_capability: Option<u8>,
    /// First byte after the last capability (0 before any).
    pub capabilities_end: u16,
}

/// What was declared for one BAR: kind and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarDefinition {
    /// What it decodes.
    pub kind: PciBarKind,
    /// Size in bytes.
    pub size: u64,
}

/// The configuration space of one type-0 function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciConfiguration {
    registers: [u32; NUM_CONFIG_REGISTERS],
    writable_bits: [u32; NUM_CONFIG_REGISTERS],
    bars: [Option<BarDefinition>; NUM_BARS],
    last_capability: Option<u8>,
    msix_capability: Option<u8>,
    capabilities_end: u16,
}

impl PciConfiguration {
    /// A header with `header`'s identity, no BARs and no capabilities.
    pub fn new(header: &PciHeader) -> Self {
        let mut registers = [0u32; NUM_CONFIG_REGISTERS];
        let mut writable_bits = [0u32; NUM_CONFIG_REGISTERS];
        registers[REG_ID] = u32::from(header.device_id) << 16 | u32::from(header.vendor_id);
        registers[REG_CLASS] =
            (header.class_code & 0x00ff_ffff) << 8 | u32::from(header.revision_id);
        let header_type = if header.multifunction {
            HEADER_TYPE_MULTIFUNCTION
        } else {
            0
        };
        registers[REG_HEADER_TYPE] = u32::from(header_type) << 16;
        registers[REG_SUBSYSTEM] =
            u32::from(header.subsystem_id) << 16 | u32::from(header.subsystem_vendor_id);
        registers[REG_INTERRUPT] = u32::from(header.interrupt_pin.min(4)) << 8;

        writable_bits[REG_COMMAND_STATUS] = u32::from(COMMAND_WRITABLE);
        // Cache line size only: Linux writes it; the latency timer means
        // nothing to a virtual bus and stays zero.
        writable_bits[REG_HEADER_TYPE] = 0xff;
        // Interrupt line: scratch for the guest's IRQ routing.
        writable_bits[REG_INTERRUPT] = 0xff;
        Self {
            registers,
            writable_bits,
            bars: [None; NUM_BARS],
            last_capability: None,
            msix_capability: None,
            capabilities_end: 0,
        }
    }

    /// Check that `self`, restored from a snapshot, is the header `fresh`
    /// (the device as its constructor builds it) in some state the guest
    /// could have brought it to: same identity and read-only bits, same
    /// masks, BARs and capabilities.
    pub fn check_layout(&self, fresh: &PciConfiguration) -> Result<(), PciConfigError> {
        if self.writable_bits != fresh.writable_bits {
            return Err(PciConfigError::LayoutMismatch("writable bits"));
        }
        if self.bars != fresh.bars {
            return Err(PciConfigError::LayoutMismatch("BARs"));
        }
        if (
            self.last_capability,
            self.msix_capability,
            self.capabilities_end,
        ) != (
            fresh.last_capability,
            fresh.msix_capability,
            fresh.capabilities_end,
        ) {
            return Err(PciConfigError::LayoutMismatch("capabilities"));
        }
        let read_only_differ = self
            .registers
            .iter()
            .zip(&fresh.registers)
            .zip(&self.writable_bits)
            .any(|((a, b), w)| (a ^ b) & !w != 0);
        if read_only_differ {
            return Err(PciConfigError::LayoutMismatch("read-only registers"));
        }
        Ok(())
    }

    /// Dword `reg` (0..64); past the header, all-ones.
    pub fn read_register(&self, reg: usize) -> u32 {
        self.registers.get(reg).copied().unwrap_or(u32::MAX)
    }

    /// The guest writes `data` at byte `offset` of dword `reg`. Only
    /// writable bits change; accesses past the dword are ignored.
    pub fn write_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        let Some(end) = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data.len()))
        else {
            return;
        };
        if reg >= NUM_CONFIG_REGISTERS || data.is_empty() || end > 4 {
            return;
        }
        let mut mask = 0u32;
        let mut value = 0u32;
        for (i, &b) in data.iter().enumerate() {
            let shift = 8 * (end - data.len() + i);
            mask |= 0xff << shift;
            value |= u32::from(b) << shift;
        }
        let writable = self.writable_bits[reg] & mask;
        self.registers[reg] = (self.registers[reg] & !writable) | (value & writable);
    }

    /// Read byte `offset` of configuration space.
    fn byte(&self, offset: usize) -> u8 {
        self.read_register(offset / 4).to_le_bytes()[offset % 4]
    }

    /// Set byte `offset` (a device-side write: no mask applies).
    fn set_byte(&mut self, offset: usize, value: u8, writable: u8) {
        if let (Some(r), Some(w)) = (
            self.registers.get_mut(offset / 4),
            self.writable_bits.get_mut(offset / 4),
        ) {
            let shift = 8 * (offset % 4);
            *r = (*r & !(0xff << shift)) | u32::from(value) << shift;
            *w = (*w & !(0xff << shift)) | u32::from(writable) << shift;
        }
    }

    /// The vendor ID.
    pub fn vendor_id(&self) -> u16 {
        self.registers[REG_ID] as u16
    }

    /// The device ID.
    pub fn device_id(&self) -> u16 {
        (self.registers[REG_ID] >> 16) as u16
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.registers[REG_COMMAND_STATUS] as u16
    }

    /// The status register.
    pub fn status(&self) -> u16 {
        (self.registers[REG_COMMAND_STATUS] >> 16) as u16
    }

    /// Whether the guest lets the function decode its memory BARs.
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }

    /// Whether the guest lets the function decode its I/O BARs.
    pub fn io_enabled(&self) -> bool {
        self.command() & COMMAND_IO != 0
    }

    /// Whether the function may do DMA and send MSIs.
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    /// The interrupt line the guest wrote.
    pub fn interrupt_line(&self) -> u8 {
        self.registers[REG_INTERRUPT] as u8
    }

    /// Whether BAR `index`'s register is taken (as a BAR or as the upper
    /// half of a 64-bit one).
    fn bar_slot_used(&self, index: usize) -> bool {
        self.bars.get(index).is_some_and(Option::is_some)
            || index.checked_sub(1).is_some_and(|lo| {
                matches!(
                    self.bars[lo],
                    Some(BarDefinition {
                        kind: PciBarKind::Memory64 { .. },
                        ..
                    })
                )
            })
    }

    /// Declare BAR `index` of `size` bytes (a power of two: at least 16 for
    /// memory, 4..=256 for I/O; a 32-bit memory BAR at most 2 GiB). Its
    /// address starts at 0; see [`PciConfiguration::set_bar_address`].
    pub fn add_bar(
        &mut self,
        index: usize,
        kind: PciBarKind,
        size: u64,
    ) -> Result<(), PciConfigError> {
        let regs = if matches!(kind, PciBarKind::Memory64 { .. }) {
            2
        } else {
            1
        };
        if index + regs > NUM_BARS {
            return Err(PciConfigError::BarIndex(index));
        }
        if (index..index + regs).any(|i| self.bar_slot_used(i)) {
            return Err(PciConfigError::BarInUse(index));
        }
        let (min, max) = match kind {
            PciBarKind::Io => (BAR_IO_MIN_SIZE, BAR_IO_MAX_SIZE),
            PciBarKind::Memory32 { .. } => (BAR_MEM_MIN_SIZE, 1 << 31),
            PciBarKind::Memory64 { .. } => (BAR_MEM_MIN_SIZE, 1 << 63),
        };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(PciConfigError::BarSize(size));
        }
        let reg = REG_BAR0 + index;
        let addr_mask = !(size - 1);
        let low_mask = if kind.is_memory() {
            BAR_MEM_ADDR_MASK
        } else {
            BAR_IO_ADDR_MASK
        };
        self.registers[reg] = kind.type_bits();
        // Truncation keeps the low dword of the address mask.
        self.writable_bits[reg] = (addr_mask as u32) & low_mask;
        if regs == 2 {
            self.registers[reg + 1] = 0;
            self.writable_bits[reg + 1] = (addr_mask >> 32) as u32;
        }
        self.bars[index] = Some(BarDefinition { kind, size });
        Ok(())
    }

    /// Place BAR `index` at `address`, as firmware would before the guest
    /// runs. The address must be aligned to the BAR's size and fit its kind.
    pub fn set_bar_address(&mut self, index: usize, address: u64) -> Result<(), PciConfigError> {
        let def = self
            .bars
            .get(index)
            .copied()
            .flatten()
            .ok_or(PciConfigError::NoBar(index))?;
        let limit = match def.kind {
            PciBarKind::Io => 1 << 16,
            PciBarKind::Memory32 { .. } => 1 << 32,
            PciBarKind::Memory64 { .. } => u64::MAX,
        };
        if !address.is_multiple_of(def.size) || address > limit - def.size {
            return Err(PciConfigError::BarAddress { index, address });
        }
        let reg = REG_BAR0 + index;
        // The low type bits stay; the address fills the rest.
        self.registers[reg] = def.kind.type_bits() | address as u32;
        if matches!(def.kind, PciBarKind::Memory64 { .. }) {
            self.registers[reg + 1] = (address >> 32) as u32;
        }
        Ok(())
    }

    /// BAR `index`'s current address, if it is defined.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let def = self.bars.get(index).copied().flatten()?;
        let low = self.registers[REG_BAR0 + index];
        Some(match def.kind {
            PciBarKind::Io => u64::from(low & BAR_IO_ADDR_MASK),
            PciBarKind::Memory32 { .. } => u64::from(low & BAR_MEM_ADDR_MASK),
            PciBarKind::Memory64 { .. } => {
                u64::from(self.registers[REG_BAR0 + index + 1]) << 32
                    | u64::from(low & BAR_MEM_ADDR_MASK)
            }
        })
    }

    /// Every defined BAR with its current address. While the guest sizes
    /// a BAR the address reads as the size mask; callers that map BARs
    /// should do so only while decoding is enabled in the command register.
    pub fn bars(&self) -> Vec<PciBar> {
        (0..NUM_BARS)
            .filter_map(|i| {
                let def = self.bars[i]?;
                Some(PciBar {
                    // i < 6.
                    index: i as u8,
                    kind: def.kind,
                    size: def.size,
                    address: self.bar_address(i)?,
                })
            })
            .collect()
    }

    /// Append a capability to the list. `cap[0]` is its ID; `cap[1]`, the
    /// next pointer, is filled in here. `writable` is empty (all read-only)
    /// or a byte mask as long as `cap`; the ID and next bytes always stay
    /// read-only. Returns the capability's offset in configuration space.
    pub fn add_capability(&mut self, cap: &[u8], writable: &[u8]) -> Result<u8, PciConfigError> {
        if cap.len() < 2 {
            return Err(PciConfigError::CapabilityTooShort);
        }
        if !writable.is_empty() && writable.len() != cap.len() {
            return Err(PciConfigError::WritableMaskLength {
                cap: cap.len(),
                mask: writable.len(),
            });
        }
        let start = usize::from(self.capabilities_end)
            .max(CAP_START)
            .next_multiple_of(4);
        if start + cap.len() > NUM_CONFIG_REGISTERS * 4 {
            return Err(PciConfigError::CapabilitySpaceFull(cap.len()));
        }
        // start < 256 by the check above.
        let offset = start as u8;
        for (i, &b) in cap.iter().enumerate() {
            let w = if i < 2 {
                0
            } else {
                writable.get(i).copied().unwrap_or(0)
            };
            let v = if i == 1 { 0 } else { b };
            self.set_byte(start + i, v, w);
        }
        match self.last_capability {
            None => self.set_byte(CAP_POINTER_OFFSET, offset, 0),
            Some(last) => self.set_byte(usize::from(last) + 1, offset, 0),
        }
        self.registers[REG_COMMAND_STATUS] |= u32::from(STATUS_CAP_LIST) << 16;
        self.last_capability = Some(offset);
        // At most 256 by the check above.
        self.capabilities_end = (start + cap.len()) as u16;
        Ok(offset)
    }

    /// Add the MSI-X capability for `cap`, whose table and PBA must lie in
    /// memory BARs already added. Enable and function mask start clear.
    pub fn add_msix_capability(&mut self, cap: &MsixCapability) -> Result<u8, PciConfigError> {
        if self.msix_capability.is_some() {
            return Err(PciConfigError::MsixPresent);
        }
        if cap.table_size == 0 || cap.table_size > MSIX_MAX_VECTORS {
            return Err(PciConfigError::MsixLayout("table size must be 1..=2048"));
        }
        let fits = |bar: u8, offset: u32, len: u64| {
            let def = self.bars.get(usize::from(bar)).copied().flatten();
            offset.is_multiple_of(8)
                && def.is_some_and(|d| d.kind.is_memory() && u64::from(offset) + len <= d.size)
        };
        if !fits(cap.table_bar, cap.table_offset, cap.table_len()) {
            return Err(PciConfigError::MsixLayout("table does not fit its BAR"));
        }
        if !fits(cap.pba_bar, cap.pba_offset, cap.pba_len()) {
            return Err(PciConfigError::MsixLayout("PBA does not fit its BAR"));
        }
        if cap.table_bar == cap.pba_bar {
            let t = (u64::from(cap.table_offset), cap.table_len());
            let p = (u64::from(cap.pba_offset), cap.pba_len());
            if t.0 < p.0 + p.1 && p.0 < t.0 + t.1 {
                return Err(PciConfigError::MsixLayout("table and PBA overlap"));
            }
        }
        let bytes = cap.to_bytes();
        let mut writable = [0u8; MSIX_CAP_LEN];
        // Only enable and function mask, in the control word's high byte.
        writable[3] = ((MSG_CTL_ENABLE | MSG_CTL_FUNCTION_MASK) >> 8) as u8;
        let offset = self.add_capability(&bytes, &writable)?;
        self.msix_capability = Some(offset);
        Ok(offset)
    }

    /// The MSI-X layout, if the function has the capability.
    pub fn msix_capability(&self) -> Option<MsixCapability> {
        let at = usize::from(self.msix_capability?);
        let reg = at / 4;
        Some(MsixCapability::from_registers(
            (self.read_register(reg) >> 16) as u16,
            self.read_register(reg + 1),
            self.read_register(reg + 2),
        ))
    }

    /// The MSI-X enable and function-mask bits, if the function has the
    /// capability.
    pub fn msix_control(&self) -> Option<MsixControl> {
        let at = usize::from(self.msix_capability?);
        let control = (self.read_register(at / 4) >> 16) as u16;
        Some(MsixControl::from_message_control(control))
    }

    /// Walk the capability list from the pointer at 0x34: (offset, ID) of
    /// each, stopping at a loop or a pointer into the standard header.
    pub fn capabilities(&self) -> Vec<(u8, u8)> {
        let mut out = Vec::new();
        let mut at = self.byte(CAP_POINTER_OFFSET) & !0x3;
        while usize::from(at) >= CAP_START && out.len() < NUM_CONFIG_REGISTERS {
            out.push((at, self.byte(usize::from(at))));
            at = self.byte(usize::from(at) + 1) & !0x3;
        }
        out
    }
}

/// Whether BAR slot `index` may hold `def`, as [`PciConfiguration::add_bar`]
/// would have allowed it.
fn check_bar(
    bars: &[Option<BarDefinition>],
    index: usize,
    def: BarDefinition,
) -> Result<(), PciConfigError> {
    let (min, max) = match def.kind {
        PciBarKind::Io => (BAR_IO_MIN_SIZE, BAR_IO_MAX_SIZE),
        PciBarKind::Memory32 { .. } => (BAR_MEM_MIN_SIZE, 1 << 31),
        PciBarKind::Memory64 { .. } => (BAR_MEM_MIN_SIZE, 1 << 63),
    };
    // Sizes divide addresses later: a zero would panic.
    if !def.size.is_power_of_two() || def.size < min || def.size > max {
        return Err(PciConfigError::BarSize(def.size));
    }
    if matches!(def.kind, PciBarKind::Memory64 { .. }) {
        // The upper half takes the next slot.
        match bars.get(index + 1) {
            None => return Err(PciConfigError::BarIndex(index)),
            Some(Some(_)) => return Err(PciConfigError::BarInUse(index + 1)),
            Some(None) => {}
        }
    }
    Ok(())
}

/// Whether `offset` is where a capability can start.
fn check_capability_offset(offset: Option<u8>) -> Result<(), PciConfigError> {
    match offset {
        Some(o) if usize::from(o) < CAP_START || o % 4 != 0 => {
            Err(PciConfigError::CapabilityOffset(o))
        }
        _ => Ok(()),
    }
}

impl Persist for PciConfiguration {
    type State = PciConfigurationState;
    type Args = ();
    type Error = PciConfigError;

    /// The registers, masks, BARs and capabilities.
    fn save(&self) -> PciConfigurationState {
        PciConfigurationState {
            registers: self.registers.to_vec(),
            writable_bits: self.writable_bits.to_vec(),
            bars: self.bars.to_vec(),
            last_capability: self.last_capability,
            msix_capability: self.msix_capability,
            capabilities_end: self.capabilities_end,
        }
    }

    /// A header that holds together; whether it is the right device's is
    /// for the device to check ([`PciConfiguration::check_layout`]).
    fn restore((): (), state: &PciConfigurationState) -> Result<Self, PciConfigError> {
        let length = |what, got: usize, expected| {
            if got == expected {
                Ok(())
            } else {
                Err(PciConfigError::StateLength {
                    what,
                    got,
                    expected,
                })
            }
        };
        length("registers", state.registers.len(), NUM_CONFIG_REGISTERS)?;
        length(
            "writable masks",
            state.writable_bits.len(),
            NUM_CONFIG_REGISTERS,
        )?;
        length("BARs", state.bars.len(), NUM_BARS)?;
        for (index, def) in state.bars.iter().enumerate() {
            if let Some(def) = def {
                check_bar(&state.bars, index, *def)?;
            }
        }
        check_capability_offset(state.last_capability)?;
        check_capability_offset(state.msix_capability)?;
        if usize::from(state.capabilities_end) > NUM_CONFIG_REGISTERS * 4 {
            return Err(PciConfigError::CapabilitiesEnd(state.capabilities_end));
        }
        let mut c = Self {
            registers: [0; NUM_CONFIG_REGISTERS],
            writable_bits: [0; NUM_CONFIG_REGISTERS],
            bars: [None; NUM_BARS],
            last_capability: state.last_capability,
            msix_capability: state.msix_capability,
            capabilities_end: state.capabilities_end,
        };
        c.registers.copy_from_slice(&state.registers);
        c.writable_bits.copy_from_slice(&state.writable_bits);
        c.bars.copy_from_slice(&state.bars);
        Ok(c)
    }
}
