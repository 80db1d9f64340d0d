//! Device models and the buses they sit on: Hangar's PC (COM1, i8042,
//! RTC/CMOS, PCI host bridge, virtio-PCI with blk and net), with no KVM in
//! it, so the device tests and the fuzz targets run anywhere.
//!
//! A device never sees the VM: it gets an offset inside its own range, an
//! [`IrqLine`] if it raises interrupts, and (later) guest memory. Address and
//! IRQ allocation happen in one place, [`manager::DeviceManager`]. Every
//! device implements [`Persist`]: its state is a serde struct it can be
//! rebuilt from, so that a whole VM can be saved and restored.
#![warn(missing_docs)]

pub mod bus;
pub mod cmos;
pub mod debug_port;
pub mod i8042;
pub mod irq;
pub mod keymap;
pub mod manager;
pub mod pci;
pub mod persist;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use irq::IrqLine;
pub use persist::Persist;

/// Something a guest asked of the machine through a device register.
///
/// Devices return these from [`BusDevice::write`]; the vCPU loop acts on them.
/// This keeps devices free of any handle to the VM itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestRequest {
    /// The guest pulsed the reset line (i8042 command 0xFE): the VM stops.
    Reset,
    /// The guest asked to power off with an exit status (debug port).
    Exit(u8),
    /// The guest wrote a boot-progress marker (debug port).
    Marker(u8),
}
