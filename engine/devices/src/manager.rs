//! The one place that decides where devices live and which interrupt each
//! gets. Devices themselves only see their offset and their [`IrqLine`].

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::bus::{lock, Bus, BusError};
use super::cmos::{Cmos, CmosArgs, CmosError, CmosState, CMOS_BASE, CMOS_IRQ, CMOS_LEN};
use super::debug_port::{
    DebugPort, DebugPortError, DebugPortState, DEBUG_PORT_BASE, DEBUG_PORT_LEN,
};
use super::i8042::{
    I8042Args, I8042Controller, I8042Error, I8042State, MouseButtons, I8042_AUX_IRQ, I8042_BASE,
    I8042_KBD_IRQ, I8042_LEN,
};
use super::keymap::GuestKey;
use super::pci::{
    PciBarAllocError, PciBarAllocator, PciBus, PciBusError, PciConfigError, PciConfigIo,
    PciConfigIoError, PciConfigIoState, PciHostBridge, PciHostBridgeState, PCI_CONFIG_IO_BASE,
    PCI_CONFIG_IO_LEN,
};
use super::serial::{
    SerialConsole, SerialConsoleArgs, SerialConsoleError, SerialConsoleState, SerialOutput,
    SERIAL_COM1_BASE, SERIAL_COM1_IRQ, SERIAL_COM1_LEN,
};
use super::virtio::{
    BlkError, BlockBackend, BlockDevice, BlockDeviceArgs, IoCounters, MsiRouting, NetDevice,
    NetDeviceArgs, NetError, PciMmioWindow, VirtioDevice, VirtioDeviceState, VirtioPciArgs,
    VirtioPciDevice, VirtioPciError, VirtioPciState,
};
use super::{IrqLine, Persist};

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
    /// COM1's state was refused.
    #[error("cannot restore COM1")]
    Serial(#[source] SerialConsoleError),
    /// The keyboard controller's state was refused.
    #[error("cannot restore the keyboard controller")]
    I8042(#[source] I8042Error),
    /// The RTC's state was refused.
    #[error("cannot restore the RTC")]
    Cmos(#[source] CmosError),
    /// The debug port's state was refused.
    #[error("cannot restore the debug port")]
    DebugPort(#[source] DebugPortError),
    /// The host bridge's state was refused.
    #[error("cannot restore the PCI host bridge")]
    HostBridge(#[source] PciConfigError),
    /// The configuration ports' state was refused.
    #[error("cannot restore the PCI configuration ports")]
    PciConfigIo(#[source] PciConfigIoError),
    /// Not one backend per saved virtio device.
    #[error("{saved} virtio devices were saved but {given} backends given")]
    VirtioCount {
        /// Devices in the state.
        saved: usize,
        /// Backends in the arguments.
        given: usize,
    },
    /// A backend of another kind than the device saved in its place.
    #[error("virtio device {0} was saved as another kind of device than its backend")]
    VirtioKind(String),
    /// A disk's state was refused.
    #[error("cannot restore disk {name}")]
    Disk {
        /// The disk.
        name: String,
        /// Why.
        #[source]
        source: BlkError,
    },
    /// A network card's state was refused.
    #[error("cannot restore network card {name}")]
    Net {
        /// The card.
        name: String,
        /// Why.
        #[source]
        source: NetError,
    },
    /// A virtio transport's state was refused.
    #[error("cannot restore virtio device {name}")]
    VirtioState {
        /// The device.
        name: String,
        /// Why.
        #[source]
        source: VirtioPciError,
    },
    /// A restored virtio device did not start.
    #[error("cannot restart virtio device {name}")]
    Resume {
        /// The device.
        name: String,
        /// Why.
        #[source]
        source: VirtioPciError,
    },
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
    /// Hangar's debug port.
    #[serde(default)]
    pub debug_port: DebugPortState,
    /// PCI bus 0's host bridge.
    #[serde(default)]
    pub pci_host_bridge: PciHostBridgeState,
    /// The PCI configuration ports (the address register).
    #[serde(default)]
    pub pci_config_io: PciConfigIoState,
    /// Each virtio device's transport, in the order they were added.
    #[serde(default)]
    pub virtio: Vec<VirtioPciState>,
}

/// What backs a virtio device being restored, in the order the devices
/// were added (the order of [`DeviceStates::virtio`]).
pub enum VirtioBackend {
    /// A disk on its image.
    Block {
        /// Its name (thread names and log lines).
        name: String,
        /// The image it was saved with.
        backend: Box<dyn BlockBackend>,
    },
    /// A network card on a new connection to passt.
    Net {
        /// Its name.
        name: String,
        /// The connected stream.
        stream: UnixStream,
    },
}

/// What a restored [`DeviceManager`] is connected to. The guest's RAM
/// sizes, which [`DeviceManager::new`] also takes, are not needed: the
/// CMOS state holds the bytes the BIOS wrote from them.
pub struct DeviceManagerArgs {
    /// Receives everything the guest writes to COM1.
    pub serial_out: SerialOutput,
    /// Guest memory, for the virtio devices' rings.
    pub memory: GuestMemoryMmap,
    /// Routes the virtio devices' MSI-X messages.
    pub routing: Arc<dyn MsiRouting>,
    /// One backend per saved virtio device.
    pub virtio: Vec<VirtioBackend>,
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
    debug_port: Arc<Mutex<DebugPort>>,
    /// Bus 0 (its host bridge, and the PCI devices to come).
    pci_bus: Arc<Mutex<PciBus>>,
    pci_config_io: Arc<Mutex<PciConfigIo>>,
    pci_window: Arc<Mutex<PciMmioWindow>>,
    bar_allocator: PciBarAllocator,
    virtio: Vec<VirtioSlot>,
    next_gsi: u32,
    irq_lines: Vec<IrqLine>,
}

/// The legacy devices' interrupt lines as they are handed out, with a
/// second handle on each kept for registering with the hypervisor.
#[derive(Default)]
struct LegacyLines(Vec<IrqLine>);

impl LegacyLines {
    fn line(&mut self, gsi: u32) -> Result<IrqLine, DeviceManagerError> {
        let l = IrqLine::new(gsi).map_err(DeviceManagerError::Irq)?;
        self.0.push(l.try_clone().map_err(DeviceManagerError::Irq)?);
        Ok(l)
    }
}

/// The PC's legacy devices and PCI bus 0, before they go on the buses.
struct LegacyDevices {
    serial: SerialConsole,
    i8042: I8042Controller,
    cmos: Cmos,
    debug_port: DebugPort,
    pci_bus: Arc<Mutex<PciBus>>,
    pci_config_io: PciConfigIo,
    irq_lines: LegacyLines,
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
        let mut lines = LegacyLines::default();
        let serial = SerialConsole::new(lines.line(SERIAL_COM1_IRQ)?, serial_out);
        let i8042 = I8042Controller::new(lines.line(I8042_KBD_IRQ)?, lines.line(I8042_AUX_IRQ)?);
        let cmos = Cmos::new(ram_below_4g, ram_above_4g, lines.line(CMOS_IRQ)?);
        // A PCI host bridge behind the type-1 ports: Linux, booted without
        // ACPI, finds PCI through them alone.
        let pci_bus = Arc::new(Mutex::new(PciBus::new()));
        let pci_config_io = PciConfigIo::new(pci_bus.clone());
        Self::assemble(LegacyDevices {
            serial,
            i8042,
            cmos,
            debug_port: DebugPort::default(),
            pci_bus,
            pci_config_io,
            irq_lines: lines,
        })
    }

    /// Put the legacy devices on the buses and open the PCI window.
    fn assemble(devices: LegacyDevices) -> Result<Self, DeviceManagerError> {
        let serial = Arc::new(Mutex::new(devices.serial));
        let i8042 = Arc::new(Mutex::new(devices.i8042));
        let cmos = Arc::new(Mutex::new(devices.cmos));
        let debug_port = Arc::new(Mutex::new(devices.debug_port));
        let pci_config_io = Arc::new(Mutex::new(devices.pci_config_io));

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
        place(
            &mut io_bus,
            debug_port.clone(),
            DEBUG_PORT_BASE,
            DEBUG_PORT_LEN,
        )?;
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
            debug_port,
            pci_bus: devices.pci_bus,
            pci_config_io,
            pci_window,
            bar_allocator,
            virtio: Vec::new(),
            next_gsi: FIRST_MSI_GSI,
            irq_lines: devices.irq_lines.0,
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
        memory: GuestMemoryMmap,
        routing: Arc<dyn MsiRouting>,
    ) -> Result<(), DeviceManagerError> {
        self.place_virtio(name, device, memory, routing, None)
    }

    /// [`Self::add_virtio_device`], or with `saved` its restore: the same
    /// slot, GSIs and BAR allocation as when it was first added, in the
    /// same order, and the transport's registers from `saved`.
    fn place_virtio(
        &mut self,
        name: String,
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        routing: Arc<dyn MsiRouting>,
        saved: Option<&VirtioPciState>,
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
        let mut transport = match saved {
            None => VirtioPciDevice::new(name.clone(), device, memory, lines, routing)
                .map_err(DeviceManagerError::Virtio)?,
            Some(state) => {
                let args = VirtioPciArgs {
                    label: name.clone(),
                    device,
                    memory,
                    vector_lines: lines,
                    routing,
                };
                VirtioPciDevice::restore(args, state).map_err(|source| {
                    DeviceManagerError::VirtioState {
                        name: name.clone(),
                        source,
                    }
                })?
            }
        };
        // Allocated for a restored device too, so later devices get the
        // BARs they would have had; its BAR itself is where the guest left
        // it, in the saved registers.
        let bar = self
            .bar_allocator
            .allocate(super::virtio::pci::BAR_SIZE)
            .map_err(DeviceManagerError::PciSpace)?;
        if saved.is_none() {
            transport
                .set_bar_address(bar)
                .map_err(DeviceManagerError::Virtio)?;
        }
        let bar = transport.bar_address();
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

    /// Stop every started virtio device's I/O thread at a request
    /// boundary and keep its queues ([`VirtioPciDevice::pause`]): with the
    /// vCPUs stopped too, guest memory and a [`Persist::save`] now agree.
    pub fn pause_virtio(&self) {
        for slot in &self.virtio {
            lock(&slot.device).pause();
        }
    }

    /// Start the I/O threads of paused virtio devices, and of restored ones
    /// that were running when saved; call once the VM is ready to run.
    /// Every device is tried; the first failure is returned.
    pub fn resume_virtio(&self) -> Result<(), DeviceManagerError> {
        let mut first_failure = None;
        for slot in &self.virtio {
            if let Err(source) = lock(&slot.device).resume() {
                first_failure.get_or_insert(DeviceManagerError::Resume {
                    name: slot.name.clone(),
                    source,
                });
            }
        }
        first_failure.map_or(Ok(()), Err)
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
}

impl Persist for DeviceManager {
    type State = DeviceStates;
    type Args = DeviceManagerArgs;
    type Error = DeviceManagerError;

    /// The state of every device. A started virtio device whose I/O thread
    /// runs saves no queue positions, and such a state is refused on
    /// restore: pause them first ([`DeviceManager::pause_virtio`]).
    fn save(&self) -> DeviceStates {
        let pci_host_bridge = lock(lock(&self.pci_bus).host_bridge()).save();
        DeviceStates {
            serial: lock(&self.serial).save(),
            i8042: lock(&self.i8042).save(),
            cmos: lock(&self.cmos).save(),
            debug_port: lock(&self.debug_port).save(),
            pci_host_bridge,
            pci_config_io: lock(&self.pci_config_io).save(),
            virtio: self.virtio.iter().map(|s| lock(&s.device).save()).collect(),
        }
    }

    /// The same devices at the same ports, IRQs, PCI slots, GSIs and BARs,
    /// in their saved states. Started virtio devices come back without I/O
    /// threads: [`DeviceManager::resume_virtio`] starts them.
    fn restore(args: DeviceManagerArgs, state: &DeviceStates) -> Result<Self, DeviceManagerError> {
        if args.virtio.len() != state.virtio.len() {
            return Err(DeviceManagerError::VirtioCount {
                saved: state.virtio.len(),
                given: args.virtio.len(),
            });
        }
        // The lines in the order `new` makes them.
        let mut lines = LegacyLines::default();
        let serial_args = SerialConsoleArgs {
            irq: lines.line(SERIAL_COM1_IRQ)?,
            out: args.serial_out,
        };
        let serial = SerialConsole::restore(serial_args, &state.serial)
            .map_err(DeviceManagerError::Serial)?;
        let i8042_args = I8042Args {
            kbd_irq: lines.line(I8042_KBD_IRQ)?,
            aux_irq: lines.line(I8042_AUX_IRQ)?,
        };
        let i8042 = I8042Controller::restore(i8042_args, &state.i8042)
            .map_err(DeviceManagerError::I8042)?;
        let cmos_args = CmosArgs {
            irq: lines.line(CMOS_IRQ)?,
        };
        let cmos = Cmos::restore(cmos_args, &state.cmos).map_err(DeviceManagerError::Cmos)?;
        let debug_port =
            DebugPort::restore((), &state.debug_port).map_err(DeviceManagerError::DebugPort)?;
        let bridge = PciHostBridge::restore((), &state.pci_host_bridge)
            .map_err(DeviceManagerError::HostBridge)?;
        let pci_bus = Arc::new(Mutex::new(PciBus::with_host_bridge(bridge)));
        let pci_config_io = PciConfigIo::restore(pci_bus.clone(), &state.pci_config_io)
            .map_err(DeviceManagerError::PciConfigIo)?;
        let mut manager = Self::assemble(LegacyDevices {
            serial,
            i8042,
            cmos,
            debug_port,
            pci_bus,
            pci_config_io,
            irq_lines: lines,
        })?;
        for (backend, saved) in args.virtio.into_iter().zip(&state.virtio) {
            let (name, device): (String, Box<dyn VirtioDevice>) = match (backend, &saved.device) {
                (VirtioBackend::Block { name, backend }, VirtioDeviceState::Blk(s)) => {
                    let args = BlockDeviceArgs {
                        name: name.clone(),
                        backend,
                    };
                    let disk = BlockDevice::restore(args, s).map_err(|source| {
                        DeviceManagerError::Disk {
                            name: name.clone(),
                            source,
                        }
                    })?;
                    (name, Box::new(disk))
                }
                (VirtioBackend::Net { name, stream }, VirtioDeviceState::Net(s)) => {
                    let args = NetDeviceArgs {
                        name: name.clone(),
                        backend: stream,
                    };
                    let card =
                        NetDevice::restore(args, s).map_err(|source| DeviceManagerError::Net {
                            name: name.clone(),
                            source,
                        })?;
                    (name, Box::new(card))
                }
                (VirtioBackend::Block { name, .. } | VirtioBackend::Net { name, .. }, _) => {
                    return Err(DeviceManagerError::VirtioKind(name));
                }
            };
            manager.place_virtio(
                name,
                device,
                args.memory.clone(),
                args.routing.clone(),
                Some(saved),
            )?;
        }
        Ok(manager)
    }
}

#[cfg(test)]
mod tests;
