//! The one place that decides where devices live and which interrupt each
//! gets. Devices themselves only see their offset and their [`IrqLine`].

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use super::bus::{lock, Bus, BusError};
use super::cmos::{Cmos, CmosState, CMOS_BASE, CMOS_IRQ, CMOS_LEN};
use super::debug_port::{DebugPort, DEBUG_PORT_BASE, DEBUG_PORT_LEN};
use super::i8042::{
    I8042Controller, I8042State, MouseButtons, I8042_AUX_IRQ, I8042_BASE, I8042_KBD_IRQ, I8042_LEN,
};
use super::keymap::GuestKey;
use super::pci::{
    PciBarAllocError, PciBarAllocator, PciBus, PciBusError, PciConfigIo, PciConfigIoState,
    PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN,
};
use super::serial::{
    SerialConsole, SerialConsoleState, SERIAL_COM1_BASE, SERIAL_COM1_IRQ, SERIAL_COM1_LEN,
};
use super::virtio::{
    IoCounters, MsiRouting, PciMmioWindow, VirtioDevice, VirtioPciDevice, VirtioPciError,
    VirtioPciState,
};
use super::IrqLine;

/// Where a VM's linear framebuffer goes: the bottom of the 32-bit MMIO gap
/// (RAM ends below it; the APICs sit at its top).
pub const FRAMEBUFFER_START: u64 = 0xc000_0000;
/// Room for it: 512 MiB, below the PCI window (a 4K screen needs 32 MiB).
pub const FRAMEBUFFER_MAX_SIZE: u64 = 0x2000_0000;
/// Where PCI devices' memory BARs go: after the framebuffer, up to the
/// IOAPIC. Linux, booted without ACPI, keeps BARs where we put them.
pub const PCI_MMIO_START: u64 = FRAMEBUFFER_START + FRAMEBUFFER_MAX_SIZE;
/// End (exclusive) of the PCI BAR window: the IOAPIC's page.
pub const PCI_MMIO_END: u64 = 0xfec0_0000;
/// The first GSI for MSI-X vectors: 0..=23 are the IOAPIC's pins.
pub const FIRST_MSI_GSI: u32 = 24;
/// GSIs KVM can route (KVM_MAX_IRQ_ROUTES).
const MAX_GSI: u32 = 4096;

/// Errors while placing devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// An interrupt line could not be created.
    #[error("cannot create an interrupt line")]
    Irq(#[source] io::Error),
    /// Two devices claimed the same addresses.
    #[error("cannot place a device on the bus")]
    Bus(#[source] BusError),
    /// The framebuffer does not fit below the IOAPIC.
    #[error("a framebuffer of {0} bytes does not fit in the 32-bit MMIO gap")]
    FramebufferTooLarge(u64),
    /// No room left for a device's BAR.
    #[error("no room for another PCI device")]
    PciSpace(#[source] PciBarAllocError),
    /// PCI bus 0 is full.
    #[error("cannot add a PCI device")]
    PciBus(#[source] PciBusError),
    /// All routable interrupts are taken.
    #[error("no interrupt numbers left for another device")]
    OutOfGsis,
    /// The virtio transport could not be built.
    #[error("cannot set up a virtio device")]
    Virtio(#[source] VirtioPciError),
}

/// The state of every device, for snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStates {
    /// COM1.
    pub serial: SerialConsoleState,
    /// Keyboard controller.
    pub i8042: I8042State,
    /// RTC and CMOS RAM.
    pub cmos: CmosState,
    /// The PCI configuration ports (the address register).
    #[serde(default)]
    pub pci_config_io: PciConfigIoState,
    /// Each virtio device's transport, in the order they were added.
    #[serde(default)]
    pub virtio: Vec<VirtioPciState>,
}

/// A virtio device as the VM sees it: its name, where its BAR is, and its
/// I/O counters.
pub struct VirtioSlot {
    /// Its name (thread names and log lines).
    pub name: String,
    /// The transport.
    pub device: Arc<Mutex<VirtioPciDevice>>,
    /// Bytes moved, if the device counts them.
    pub counters: Option<Arc<IoCounters>>,
}

/// A VM's legacy devices and the buses they sit on.
pub struct DeviceManager {
    io_bus: Bus,
    mmio_bus: Bus,
    serial: Arc<Mutex<SerialConsole>>,
    i8042: Arc<Mutex<I8042Controller>>,
    cmos: Arc<Mutex<Cmos>>,
    /// Bus 0 (its host bridge, and the PCI devices to come).
    pci_bus: Arc<Mutex<PciBus>>,
    pci_config_io: Arc<Mutex<PciConfigIo>>,
    pci_window: Arc<Mutex<PciMmioWindow>>,
    bar_allocator: PciBarAllocator,
    virtio: Vec<VirtioSlot>,
    next_gsi: u32,
    irq_lines: Vec<IrqLine>,
}

impl DeviceManager {
    /// Create the PC's legacy devices: COM1, the i8042, the RTC and
    /// Hangar's debug port. `serial_out` receives everything the guest
    /// writes to COM1.
    pub fn new(
        serial_out: Box<dyn Write + Send>,
        ram_below_4g: u64,
        ram_above_4g: u64,
    ) -> Result<Self, DeviceManagerError> {
        let mut irq_lines = Vec::new();
        let mut line = |gsi| -> Result<IrqLine, DeviceManagerError> {
            let l = IrqLine::new(gsi).map_err(DeviceManagerError::Irq)?;
            irq_lines.push(l.try_clone().map_err(DeviceManagerError::Irq)?);
            Ok(l)
        };
        let serial = Arc::new(Mutex::new(SerialConsole::new(
            line(SERIAL_COM1_IRQ)?,
            serial_out,
        )));
        let i8042 = Arc::new(Mutex::new(I8042Controller::new(
            line(I8042_KBD_IRQ)?,
            line(I8042_AUX_IRQ)?,
        )));
        let cmos = Arc::new(Mutex::new(Cmos::new(
            ram_below_4g,
            ram_above_4g,
            line(CMOS_IRQ)?,
        )));
        let debug = Arc::new(Mutex::new(DebugPort::default()));
        // A PCI host bridge behind the type-1 ports: Linux, booted without
        // ACPI, finds PCI through them alone.
        let pci_bus = Arc::new(Mutex::new(PciBus::new()));
        let pci_config_io = Arc::new(Mutex::new(PciConfigIo::new(pci_bus.clone())));

        let mut io_bus = Bus::new();
        let place = |bus: &mut Bus, dev, base: u16, len| {
            bus.insert(dev, u64::from(base), len)
                .map_err(DeviceManagerError::Bus)
        };
        place(
            &mut io_bus,
            serial.clone(),
            SERIAL_COM1_BASE,
            SERIAL_COM1_LEN,
        )?;
        place(&mut io_bus, i8042.clone(), I8042_BASE, I8042_LEN)?;
        place(&mut io_bus, cmos.clone(), CMOS_BASE, CMOS_LEN)?;
        place(&mut io_bus, debug, DEBUG_PORT_BASE, DEBUG_PORT_LEN)?;
        place(
            &mut io_bus,
            pci_config_io.clone(),
            PCI_CONFIG_IO_BASE,
            PCI_CONFIG_IO_LEN,
        )?;
        // One window for every PCI BAR: it finds the device whose BAR the
        // guest has at an address, so BARs the guest moves keep working.
        let mut mmio_bus = Bus::new();
        let pci_window = Arc::new(Mutex::new(PciMmioWindow::new(PCI_MMIO_START)));
        mmio_bus
            .insert(
                pci_window.clone(),
                PCI_MMIO_START,
                PCI_MMIO_END - PCI_MMIO_START,
            )
            .map_err(DeviceManagerError::Bus)?;
        let bar_allocator = PciBarAllocator::mmio(PCI_MMIO_START, PCI_MMIO_END)
            .map_err(DeviceManagerError::PciSpace)?;
        Ok(Self {
            io_bus,
            mmio_bus,
            serial,
            i8042,
            cmos,
            pci_bus,
            pci_config_io,
            pci_window,
            bar_allocator,
            virtio: Vec::new(),
            next_gsi: FIRST_MSI_GSI,
            irq_lines,
        })
    }

    /// Put a virtio device on PCI: a slot on bus 0, a BAR in the window,
    /// one MSI-X vector per queue plus one, each on a GSI of its own whose
    /// message `routing` points at the guest's APICs. Its interrupt lines
    /// join [`Self::irq_lines`]; its doorbells are in [`Self::doorbells`].
    pub fn add_virtio_device(
        &mut self,
        name: String,
        device: Box<dyn VirtioDevice>,
        memory: vm_memory::GuestMemoryMmap,
        routing: Arc<dyn MsiRouting>,
    ) -> Result<(), DeviceManagerError> {
        let vectors = u32::from(VirtioPciDevice::vector_count(
            device.queue_max_sizes().len(),
        ));
        let first = self.next_gsi;
        let end = first
            .checked_add(vectors)
            .filter(|&e| e <= MAX_GSI)
            .ok_or(DeviceManagerError::OutOfGsis)?;
        let lines = (first..end)
            .map(IrqLine::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(DeviceManagerError::Irq)?;
        let kept = lines
            .iter()
            .map(IrqLine::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(DeviceManagerError::Irq)?;
        let counters = device.io_counters();
        let mut transport = VirtioPciDevice::new(name.clone(), device, memory, lines, routing)
            .map_err(DeviceManagerError::Virtio)?;
        let bar = self
            .bar_allocator
            .allocate(super::virtio::pci::BAR_SIZE)
            .map_err(DeviceManagerError::PciSpace)?;
        transport
            .set_bar_address(bar)
            .map_err(DeviceManagerError::Virtio)?;
        let transport = Arc::new(Mutex::new(transport));
        lock(&self.pci_bus)
            .add_device(transport.clone())
            .map_err(DeviceManagerError::PciBus)?;
        lock(&self.pci_window).add(transport.clone());
        self.next_gsi = end;
        self.irq_lines.extend(kept);
        log::debug!("{name}: virtio-pci BAR at {bar:#x}, GSIs {first}..{end}");
        self.virtio.push(VirtioSlot {
            name,
            device: transport,
            counters,
        });
        Ok(())
    }

    /// The virtio devices, in the order they were added.
    pub fn virtio_devices(&self) -> &[VirtioSlot] {
        &self.virtio
    }

    /// Every virtio queue's doorbell: guest-physical address and a handle
    /// on its eventfd, for KVM ioeventfds.
    pub fn doorbells(&self) -> io::Result<Vec<(u64, EventFd)>> {
        let mut out = Vec::new();
        for slot in &self.virtio {
            for (addr, evt) in lock(&slot.device).doorbells() {
                out.push((addr, evt.try_clone()?));
            }
        }
        Ok(out)
    }

    /// Stop every virtio device's I/O thread (the VM is going away).
    pub fn shut_down_virtio(&self) {
        for slot in &self.virtio {
            lock(&slot.device).shut_down();
        }
    }

    /// The guest-physical address of a framebuffer of `size` bytes.
    pub fn framebuffer_address(&self, size: u64) -> Result<u64, DeviceManagerError> {
        if size > FRAMEBUFFER_MAX_SIZE {
            return Err(DeviceManagerError::FramebufferTooLarge(size));
        }
        Ok(FRAMEBUFFER_START)
    }

    /// PCI bus 0.
    pub fn pci_bus(&self) -> &Arc<Mutex<PciBus>> {
        &self.pci_bus
    }

    /// The port-I/O bus, shared with the vCPU threads.
    pub fn io_bus(&self) -> &Bus {
        &self.io_bus
    }

    /// The MMIO bus, shared with the vCPU threads.
    pub fn mmio_bus(&self) -> &Bus {
        &self.mmio_bus
    }

    /// The virtio devices that gave up since the last call, with why
    /// (each failure once; see [`VirtioPciDevice::take_failure`]).
    pub fn take_device_failures(&self) -> Vec<(String, String)> {
        self.virtio
            .iter()
            .filter_map(|slot| {
                let why = lock(&slot.device).take_failure()?;
                Some((slot.name.clone(), why))
            })
            .collect()
    }

    /// Every interrupt line, for registering with the hypervisor.
    pub fn irq_lines(&self) -> &[IrqLine] {
        &self.irq_lines
    }

    /// Feed typed bytes to COM1; returns how many it took (the rest must be
    /// offered again once the guest has read some).
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        lock(&self.serial).enqueue_input(bytes)
    }

    /// Let time-driven device state advance (the RTC's update and alarm
    /// interrupts); called a few times a second by the VM's control thread.
    pub fn tick(&self) {
        lock(&self.cmos).tick();
    }

    /// Press Ctrl+Alt+Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&self) {
        lock(&self.i8042).send_ctrl_alt_del();
    }

    /// A key event for the keyboard; false if it could not take it now
    /// (its buffer is full, or the guest switched scanning off).
    pub fn inject_key(&self, key: GuestKey, pressed: bool) -> bool {
        lock(&self.i8042).inject_key(key, pressed)
    }

    /// Mouse motion, wheel and buttons; false if the mouse could not take
    /// it now (see [`I8042Controller::inject_mouse`]).
    pub fn inject_mouse(&self, dx: i32, dy: i32, wheel: i32, buttons: MouseButtons) -> bool {
        lock(&self.i8042).inject_mouse(dx, dy, wheel, buttons)
    }

    /// The state of every device.
    pub fn state(&self) -> DeviceStates {
        DeviceStates {
            serial: lock(&self.serial).state(),
            i8042: lock(&self.i8042).state(),
            cmos: lock(&self.cmos).state(),
            pci_config_io: lock(&self.pci_config_io).state(),
            virtio: self
                .virtio
                .iter()
                .map(|s| lock(&s.device).state())
                .collect(),
        }
    }
}
