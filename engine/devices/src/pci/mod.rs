//! PCI: the type-1 configuration mechanism (ports 0xCF8/0xCFC), a model of
//! one function's configuration space with BARs and capabilities, MSI-X
//! tables, bus 0 with its host bridge, and the allocator that places BARs.
//!
//! Guests without ACPI (Debian's kernel booted directly) find the host
//! bridge through the ports alone, so nothing here needs firmware tables.
//! Delivery of interrupts and the placement of BARs on the MMIO bus belong
//! to the device manager; the types here only say what the guest asked for.

pub mod bus;
pub mod config_io;
pub mod configuration;
pub mod msix;

pub use bus::{
    PciBarAllocError, PciBarAllocator, PciBus, PciBusError, PciDevice, PciHostBridge,
    PciHostBridgeState, SharedPciDevice,
};
pub use config_io::{
    PciConfigIo, PciConfigIoError, PciConfigIoState, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN,
};
pub use configuration::{
    BarDefinition, PciBar, PciBarKind, PciConfigError, PciConfiguration, PciConfigurationState,
    PciHeader,
};
pub use msix::{
    MsixCapability, MsixControl, MsixError, MsixMessage, MsixTable, MsixTableEntry, MsixTableState,
};

#[cfg(test)]
mod tests;
