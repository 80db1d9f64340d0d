//! A VM's control thread: builds the machine, runs its vCPU threads, applies
//! commands and turns everything that happens into [`Event`]s.

use std::io::Write;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::boot::{self, BootError, BootSpec};
use super::framebuffer::GuestFramebuffer;
use super::irq_routing::{KvmIrqLine, KvmMsiRouting, ISA_IRQS};
use super::passt::Passt;
use super::vcpu::{install_kick_handler, VcpuCommand, VcpuOutcome, VcpuReport, VcpuThread};
use crate::api::{
    DeviceIo, Event, EventSink, Exit, OutputStream, Stats, StatsDetail, VcpuStats, VmCommand,
    VmEvent, VmExit, VmStats, WorkloadId, WorkloadState,
};
use crate::config::{BootSource, DiskConfig, KernelKind, VmConfig};
use crate::devices::bus::lock;
use crate::devices::i8042::MouseButtons;
use crate::devices::irq::InterruptSink;
use crate::devices::keymap::GuestKey;
use crate::devices::manager::{DeviceManager, DeviceManagerError};
use crate::devices::virtio::net::NetDevice;
use crate::devices::virtio::{BlockBackend, BlockDevice, MsiRouting};
use crate::display::Display;

/// Where the TSS the hypervisor needs on Intel sits: three pages just below
/// the BIOS area at the top of the 32-bit space, inside the MMIO gap.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// How often the control thread looks at timers and queued input.
const TICK: Duration = Duration::from_millis(20);
/// How often a running VM reports its figures.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the screen is checked for what the guest drew (60 Hz).
const DISPLAY_INTERVAL: Duration = Duration::from_micros(16_667);
/// How long the vCPUs get to leave after being told to.
const VCPU_EXIT_GRACE: Duration = Duration::from_secs(5);

/// Errors while building a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A KVM call failed.
    #[error("KVM refused to {what}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Loading the kernel or building boot structures failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Placing devices failed.
    #[error(transparent)]
    Devices(#[from] DeviceManagerError),
    /// A thread could not be started.
    #[error("cannot start a vCPU thread")]
    Spawn(#[source] std::io::Error),
    /// User-mode networking could not start.
    #[error("cannot start the network: {0}")]
    Network(String),
    /// A disk image could not be opened.
    #[error("cannot use disk {path}: {reason}")]
    Disk {
        /// The image.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
}

/// A locally administered unicast MAC, the same for a machine's name each
/// time (so its DHCP address stays put): 02:68:61 ("ha") + a name hash.
fn mac_address(name: &str) -> [u8; 6] {
    // FNV-1a: stable across runs and Rust versions, unlike DefaultHasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let [a, b, c, _] = h.to_be_bytes();
    [0x02, 0x68, 0x61, a, b, c]
}

/// Open a disk image as its definition says (raw or qcow2, never guessed).
fn open_disk(disk: &DiskConfig) -> Result<Box<dyn BlockBackend>, BuildError> {
    crate::disks::open_backend(disk).map_err(|e| BuildError::Disk {
        path: disk.path.clone(),
        reason: error_chain(&e),
    })
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::Kvm { what, source }
}

/// What the engine asks of a running VM.
#[derive(Debug)]
pub(crate) enum VmRequest {
    Pause,
    Resume,
    Stop {
        timeout: Duration,
    },
    SerialInput(Vec<u8>),
    /// What only a VM is asked (keyboard, mouse, Ctrl+Alt+Del).
    Vm(VmCommand),
}

/// Most key events waiting for the guest's keyboard buffer; beyond, the
/// oldest go (a guest that stopped reading does not make us hoard keys).
const MAX_PENDING_KEYS: usize = 256;

/// Input for the guest's keyboard and mouse not yet taken by the i8042:
/// keys in order, and mouse motion added up.
#[derive(Default)]
struct PendingInput {
    keys: std::collections::VecDeque<(GuestKey, bool)>,
    motion: Option<(i32, i32, i32, MouseButtons)>,
}

impl PendingInput {
    fn key(&mut self, key: GuestKey, pressed: bool) {
        if self.keys.len() == MAX_PENDING_KEYS {
            self.keys.pop_front();
        }
        self.keys.push_back((key, pressed));
    }

    fn pointer(&mut self, dx: i32, dy: i32, wheel: i32, buttons: MouseButtons) {
        let (x, y, w, _) = self.motion.unwrap_or_default();
        self.motion = Some((
            x.saturating_add(dx),
            y.saturating_add(dy),
            w.saturating_add(wheel),
            buttons,
        ));
    }

    /// Hands the devices what they take now; the rest waits.
    fn deliver(&mut self, devices: &DeviceManager) {
        while let Some(&(key, pressed)) = self.keys.front() {
            if !devices.inject_key(key, pressed) {
                break;
            }
            self.keys.pop_front();
        }
        if let Some((dx, dy, wheel, buttons)) = self.motion {
            if devices.inject_mouse(dx, dy, wheel, buttons) {
                self.motion = None;
            }
        }
    }
}

/// Everything the control thread waits on, in one channel.
#[derive(Debug)]
pub(crate) enum ControlMsg {
    Request(VmRequest),
    Vcpu(VcpuReport),
    /// The serial buffer went from empty to non-empty.
    SerialOutput,
}

/// COM1's output: bytes collect here and the control thread sends them on
/// in batches, so a chatty guest costs one event per burst, not per byte.
struct SerialSink {
    buf: Arc<Mutex<Vec<u8>>>,
    notify: Sender<ControlMsg>,
}

impl Write for SerialSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = lock(&self.buf);
        let was_empty = buf.is_empty();
        buf.extend_from_slice(data);
        drop(buf);
        if was_empty {
            // The control thread may already be gone during teardown.
            let _ = self.notify.send(ControlMsg::SerialOutput);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Start a VM's control thread. It reports through `sink` and ends after
/// sending `Exited`. `started` is when the Start command was accepted.
/// `display` is the screen the app reads, for a config with one.
pub(crate) fn spawn_vm(launch: VmLaunch) -> std::io::Result<JoinHandle<()>> {
    let VmLaunch {
        id,
        config,
        kind,
        sink,
        state,
        channel: (tx, rx),
        started,
        display,
    } = launch;
    std::thread::Builder::new()
        .name("vm-control".into())
        .spawn(move || {
            let control = VmControl {
                id,
                sink,
                state,
                started,
            };
            control.run(&config, kind, tx, rx, display);
        })
}

/// What a VM's control thread starts from.
pub(crate) struct VmLaunch {
    /// The VM's id, in its events.
    pub id: WorkloadId,
    /// Its definition.
    pub config: VmConfig,
    /// What its kernel file is (validated).
    pub kind: KernelKind,
    /// Where its events go.
    pub sink: EventSink,
    /// Its state as last reported, for [`crate::Engine::state`].
    pub state: Arc<Mutex<WorkloadState>>,
    /// Its control channel: the engine keeps a sender, the vCPUs get one.
    pub channel: (Sender<ControlMsg>, Receiver<ControlMsg>),
    /// When the Start command was accepted.
    pub started: Instant,
    /// Its screen, if it has one.
    pub display: Option<Display>,
}

/// Everything a built VM holds. Dropped only after its vCPU threads ended.
struct Machine {
    // Kept alive for the vCPUs: the VM fd and the guest memory mapping.
    vm: Arc<VmFd>,
    memory: GuestMemoryMmap,
    /// The screen's memory, dirty-logged.
    framebuffer: Option<GuestFramebuffer>,
    /// The network backend, stopped after the devices.
    passt: Option<Passt>,
    /// The claims on the disk images, released when the machine goes.
    _disk_locks: Vec<crate::disks::DiskLock>,
    devices: DeviceManager,
    serial_out: Arc<Mutex<Vec<u8>>>,
    vcpus: Vec<VcpuThread>,
}

struct VmControl {
    id: WorkloadId,
    sink: EventSink,
    state: Arc<Mutex<WorkloadState>>,
    started: Instant,
}

impl VmControl {
    fn emit(&self, event: Event) {
        self.sink.emit(event);
    }

    fn state(&self, state: WorkloadState) {
        *lock(&self.state) = state;
        self.emit(Event::StateChanged {
            id: self.id.clone(),
            state,
        });
    }

    fn run(
        &self,
        config: &VmConfig,
        kind: KernelKind,
        tx: Sender<ControlMsg>,
        rx: Receiver<ControlMsg>,
        display: Option<Display>,
    ) {
        self.state(WorkloadState::Starting);
        let reason = match build(config, kind, &tx, display) {
            Ok(mut machine) => {
                self.emit(Event::Started {
                    id: self.id.clone(),
                    setup: self.started.elapsed(),
                    pid: None,
                });
                self.state(WorkloadState::Running);
                let reason = self.supervise(&mut machine, &rx);
                self.teardown(&mut machine, &rx);
                self.flush_serial(&machine);
                // The last frame: what the guest drew since the last poll.
                if let Some(fb) = &mut machine.framebuffer {
                    if let Ok(true) = fb.poll(&machine.vm) {
                        self.emit(Event::Vm {
                            id: self.id.clone(),
                            event: VmEvent::DisplayUpdated,
                        });
                    }
                }
                reason
            }
            Err(e) => {
                let message = format!("cannot start {}: {}", config.name, error_chain(&e));
                log::error!("{}: {message}", self.id);
                self.emit(Event::Error {
                    id: self.id.clone(),
                    message: message.clone(),
                    registers: None,
                });
                VmExit::Failed(message)
            }
        };
        log::info!("{}: exited: {reason:?}", self.id);
        self.state(WorkloadState::Stopped);
        self.emit(Event::Exited {
            id: self.id.clone(),
            exit: Exit::vm(reason),
        });
    }

    /// Run until the VM must stop; returns why.
    fn supervise(&self, m: &mut Machine, rx: &Receiver<ControlMsg>) -> VmExit {
        let mut pending_input: Vec<u8> = Vec::new();
        let mut pending_devices = PendingInput::default();
        let mut paused_acks = 0usize;
        let mut pause_wanted = false;
        let mut stop_deadline: Option<Instant> = None;
        let mut last_tick = Instant::now();
        let running_since = Instant::now();
        let mut last_stats = running_since;
        let mut next_frame = Instant::now();
        // A dirty log KVM refuses once it will refuse again: said once,
        // then the screen stays as it is.
        let mut screen_broken = false;
        loop {
            let wait = if m.framebuffer.is_some() && !screen_broken {
                TICK.min(next_frame.saturating_duration_since(Instant::now()))
            } else {
                TICK
            };
            let msg = match rx.recv_timeout(wait) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                // Cannot happen while we hold a sender; treat as a stop.
                Err(RecvTimeoutError::Disconnected) => return VmExit::Stopped { forced: true },
            };
            match msg {
                Some(ControlMsg::SerialOutput) => self.flush_serial(m),
                Some(ControlMsg::Request(req)) => match req {
                    VmRequest::Pause => {
                        if !pause_wanted {
                            pause_wanted = true;
                            paused_acks = 0;
                            m.vcpus.iter().for_each(|v| v.send(VcpuCommand::Pause));
                        }
                    }
                    VmRequest::Resume => {
                        if pause_wanted {
                            pause_wanted = false;
                            m.vcpus.iter().for_each(|v| v.send(VcpuCommand::Resume));
                            self.state(WorkloadState::Running);
                        }
                    }
                    VmRequest::Stop { timeout } => {
                        if timeout.is_zero() {
                            return VmExit::Stopped { forced: true };
                        }
                        if stop_deadline.is_none() {
                            self.state(WorkloadState::Stopping);
                            // A paused guest cannot react to the keyboard.
                            if pause_wanted {
                                pause_wanted = false;
                                m.vcpus.iter().for_each(|v| v.send(VcpuCommand::Resume));
                            }
                            m.devices.send_ctrl_alt_del();
                            stop_deadline = Some(Instant::now() + timeout);
                        }
                    }
                    VmRequest::SerialInput(bytes) => pending_input.extend_from_slice(&bytes),
                    VmRequest::Vm(VmCommand::Key { key, pressed }) => {
                        pending_devices.key(key, pressed)
                    }
                    VmRequest::Vm(VmCommand::Pointer {
                        dx,
                        dy,
                        wheel,
                        buttons,
                    }) => pending_devices.pointer(dx, dy, wheel, buttons),
                    VmRequest::Vm(VmCommand::CtrlAltDel) => m.devices.send_ctrl_alt_del(),
                },
                Some(ControlMsg::Vcpu(report)) => match report {
                    VcpuReport::Paused(index) => {
                        log::debug!("{}: vcpu{index} paused", self.id);
                        paused_acks += 1;
                        if pause_wanted && paused_acks == m.vcpus.len() {
                            self.state(WorkloadState::Paused);
                        }
                    }
                    VcpuReport::Marker(value) => self.emit(Event::Vm {
                        id: self.id.clone(),
                        event: VmEvent::BootMarker {
                            value,
                            since_start: self.started.elapsed(),
                        },
                    }),
                    VcpuReport::GuestError { message, registers } => {
                        log::warn!(
                            "{}: {message}{}",
                            self.id,
                            registers
                                .as_ref()
                                .map(|r| format!(" [{r}]"))
                                .unwrap_or_default()
                        );
                        self.emit(Event::Error {
                            id: self.id.clone(),
                            message,
                            registers,
                        });
                    }
                    VcpuReport::Exited(index, outcome) => {
                        return self.outcome_reason(index, outcome, stop_deadline.is_some())
                    }
                },
                None => {}
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                m.devices.tick();
                for (device, why) in m.devices.take_device_failures() {
                    self.emit(Event::Error {
                        id: self.id.clone(),
                        message: format!(
                            "{device} stopped working: {why}; the guest has to reset it"
                        ),
                        registers: None,
                    });
                }
            }
            if let (Some(fb), false) = (&mut m.framebuffer, screen_broken) {
                if Instant::now() >= next_frame {
                    next_frame = Instant::now() + DISPLAY_INTERVAL;
                    match fb.poll(&m.vm) {
                        Ok(true) => self.emit(Event::Vm {
                            id: self.id.clone(),
                            event: VmEvent::DisplayUpdated,
                        }),
                        Ok(false) => {}
                        Err(e) => {
                            screen_broken = true;
                            let message = format!(
                                "the screen stopped updating: KVM refused its dirty log: {e}"
                            );
                            log::warn!("{}: {message}", self.id);
                            self.emit(Event::Error {
                                id: self.id.clone(),
                                message,
                                registers: None,
                            });
                        }
                    }
                }
            }
            if last_stats.elapsed() >= STATS_INTERVAL {
                last_stats = Instant::now();
                self.emit(Event::Stats {
                    id: self.id.clone(),
                    stats: stats(m, running_since.elapsed()),
                });
            }
            if !pending_input.is_empty() {
                let taken = m.devices.serial_input(&pending_input);
                pending_input.drain(..taken);
            }
            pending_devices.deliver(&m.devices);
            if stop_deadline.is_some_and(|d| Instant::now() >= d) {
                return VmExit::Stopped { forced: true };
            }
        }
    }

    fn outcome_reason(&self, index: u8, outcome: VcpuOutcome, stopping: bool) -> VmExit {
        match outcome {
            // A guest that resets while we asked it to stop did what we asked.
            VcpuOutcome::Reset if stopping => VmExit::Stopped { forced: false },
            VcpuOutcome::Reset => VmExit::GuestReset,
            VcpuOutcome::PowerOff(_) if stopping => VmExit::Stopped { forced: false },
            VcpuOutcome::PowerOff(code) => VmExit::GuestExit(code),
            VcpuOutcome::Stopped => VmExit::Failed(format!("vCPU {index} stopped unexpectedly")),
            VcpuOutcome::Fault { message, registers } => {
                log::error!(
                    "{}: {message}{}",
                    self.id,
                    registers
                        .as_ref()
                        .map(|r| format!(" [{r}]"))
                        .unwrap_or_default()
                );
                self.emit(Event::Error {
                    id: self.id.clone(),
                    message: message.clone(),
                    registers,
                });
                VmExit::Failed(message)
            }
        }
    }

    /// Tell every vCPU to leave and wait for them, so none is still inside
    /// KVM_RUN when the guest memory goes away.
    fn teardown(&self, m: &mut Machine, rx: &Receiver<ControlMsg>) {
        m.vcpus.iter().for_each(|v| v.send(VcpuCommand::Exit));
        let deadline = Instant::now() + VCPU_EXIT_GRACE;
        while !m.vcpus.iter().all(VcpuThread::is_finished) {
            if Instant::now() >= deadline {
                log::error!("{}: vCPU threads did not stop in time", self.id);
                break;
            }
            match rx.recv_timeout(TICK) {
                Ok(ControlMsg::SerialOutput) => self.flush_serial(m),
                Ok(_) => {}
                // Kick again: a signal may have landed between two checks.
                Err(RecvTimeoutError::Timeout) => {
                    m.vcpus.iter().for_each(|v| v.send(VcpuCommand::Exit))
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for v in m.vcpus.drain(..) {
            v.join();
        }
        // The I/O threads go last: a vCPU may have rung a doorbell just
        // before it left.
        m.devices.shut_down_virtio();
        // Killing passt closes the forwarded ports.
        m.passt.take();
    }

    fn flush_serial(&self, m: &Machine) {
        let bytes = std::mem::take(&mut *lock(&m.serial_out));
        if !bytes.is_empty() {
            self.emit(Event::Output {
                id: self.id.clone(),
                stream: OutputStream::Serial,
                bytes,
            });
        }
    }
}

/// Create the VM, its memory, devices and vCPUs, and start the vCPUs.
fn build(
    config: &VmConfig,
    kind: KernelKind,
    tx: &Sender<ControlMsg>,
    display: Option<Display>,
) -> Result<Machine, BuildError> {
    let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("create the interrupt controllers"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(kvm_err("create the PIT timer"))?;

    let memory = boot::create_guest_memory(config.memory_mib)?;
    for (slot, region) in memory.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| BuildError::Boot(BootError::from(e)))?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mmap owned by `memory`, which the
        // returned Machine keeps until every vCPU thread has been joined.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("map guest memory"))?;
    }

    let serial_out = Arc::new(Mutex::new(Vec::new()));
    let sink = SerialSink {
        buf: serial_out.clone(),
        notify: tx.clone(),
    };
    let mut devices = DeviceManager::new(
        Box::new(sink),
        boot::ram_below_4g(&memory),
        boot::ram_above_4g(&memory),
    )?;
    let vm = Arc::new(vm);
    let routing: Arc<dyn MsiRouting> = Arc::new(KvmMsiRouting::new(vm.clone()));
    let mut disk_locks = Vec::with_capacity(config.disks.len());
    for (i, disk) in config.disks.iter().enumerate() {
        // Claimed before opening: another running machine may be writing it.
        disk_locks.push(
            crate::disks::lock(&disk.path, !disk.read_only).map_err(|e| BuildError::Disk {
                path: disk.path.clone(),
                reason: error_chain(&e),
            })?,
        );
        let backend = open_disk(disk)?;
        let name = format!("virtio-blk{i}");
        // The serial shows in the guest's /dev/disk/by-id.
        let device = BlockDevice::new(name.clone(), backend, &format!("hangar-disk{i}"));
        devices.add_virtio_device(name, Box::new(device), memory.clone(), routing.clone())?;
    }
    // User-mode networking: passt on the other end of a socketpair.
    let passt = match &config.network {
        Some(net) => {
            let (passt, socket) = Passt::start(net, &config.name)
                .map_err(|e| BuildError::Network(error_chain(&e)))?;
            let name = "virtio-net0".to_string();
            let device = NetDevice::new(name.clone(), mac_address(&config.name), socket);
            devices.add_virtio_device(name, Box::new(device), memory.clone(), routing.clone())?;
            Some(passt)
        }
        None => None,
    };
    let isa_sink: Arc<dyn InterruptSink> = Arc::new(KvmIrqLine(vm.clone()));
    for line in devices.irq_lines() {
        if line.gsi() < ISA_IRQS {
            line.deliver_through(isa_sink.clone());
        } else {
            vm.register_irqfd(line.eventfd(), line.gsi())
                .map_err(kvm_err("connect an interrupt line"))?;
        }
    }
    for (addr, doorbell) in devices.doorbells().map_err(BuildError::Spawn)? {
        vm.register_ioevent(&doorbell, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(kvm_err("connect a virtio doorbell"))?;
    }

    // The screen: its own dirty-logged slot after the RAM slots.
    let framebuffer = match (&config.display, display) {
        (Some(cfg), Some(display)) => {
            let base = devices.framebuffer_address(GuestFramebuffer::mapped_size(cfg))?;
            let fb = GuestFramebuffer::new(cfg, base, memory.num_regions() as u32, display)?;
            fb.register(&vm).map_err(kvm_err("map the framebuffer"))?;
            Some(fb)
        }
        _ => None,
    };
    let BootSource::Kernel(boot) = &config.boot;
    let spec = BootSpec {
        kernel: &boot.kernel,
        kind,
        initrd: boot.initrd.as_deref(),
        cmdline: &boot.cmdline,
        vcpus: config.vcpus,
        screen: framebuffer.as_ref().map(|fb| fb.screen_info(false)),
    };
    let setup = boot::setup_guest(&memory, &spec)?;

    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("report its supported CPUID"))?;
    let mut fds = Vec::with_capacity(usize::from(config.vcpus));
    for index in 0..config.vcpus {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("create a vCPU"))?;
        boot::configure_vcpu(&fd, &cpuid, index, config.vcpus, &setup)?;
        fds.push(fd);
    }

    // Every exit then records the registers, for a useful report of a
    // fatal one (see exit_history.rs).
    let sync_regs = vm.check_extension(Cap::SyncRegs);
    install_kick_handler()
        .map_err(|e| BuildError::Spawn(std::io::Error::from_raw_os_error(e.errno())))?;
    let mut vcpus = Vec::with_capacity(fds.len());
    for (index, fd) in fds.into_iter().enumerate() {
        let tx = tx.clone();
        let report = Box::new(move |r| {
            let _ = tx.send(ControlMsg::Vcpu(r));
        });
        let thread = VcpuThread::spawn(
            index as u8,
            fd,
            devices.io_bus().clone(),
            devices.mmio_bus().clone(),
            report,
            sync_regs,
        );
        match thread {
            Ok(t) => vcpus.push(t),
            Err(e) => {
                // Stop the ones already running before the memory goes away.
                for v in vcpus.drain(..) {
                    let v: VcpuThread = v;
                    v.send(VcpuCommand::Exit);
                    v.join();
                }
                return Err(BuildError::Spawn(e));
            }
        }
    }
    Ok(Machine {
        vm,
        memory,
        framebuffer,
        passt,
        _disk_locks: disk_locks,
        devices,
        serial_out,
        vcpus,
    })
}

fn stats(m: &Machine, uptime: Duration) -> Stats {
    let vcpus: Vec<VcpuStats> = m
        .vcpus
        .iter()
        .map(|v| VcpuStats {
            cpu_time: v.cpu_time().unwrap_or_default(),
            exits: v.exits(),
        })
        .collect();
    Stats {
        cpu_time: vcpus.iter().map(|v| v.cpu_time).sum(),
        memory_bytes: resident_bytes(&m.memory),
        detail: StatsDetail::Vm(VmStats {
            uptime,
            vcpus,
            guest_memory_bytes: m.memory.iter().map(|r| r.len()).sum(),
            devices: m
                .devices
                .virtio_devices()
                .iter()
                .filter_map(|slot| {
                    Some(DeviceIo {
                        name: slot.name.clone(),
                        counters: slot.counters.as_ref()?.snapshot(),
                    })
                })
                .collect(),
        }),
    }
}

/// How much of guest RAM the host has backed with pages (mincore), i.e.
/// what the guest really costs the host, as opposed to its configured size.
fn resident_bytes(memory: &GuestMemoryMmap) -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return 0,
    };
    let mut total = 0u64;
    let mut vec = Vec::new();
    for region in memory.iter() {
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        let len = region.len() as usize;
        vec.resize(len.div_ceil(page), 0u8);
        // SAFETY: [host, host+len) is one live mapping owned by `memory`
        // (page aligned, as mmap returns), and `vec` has one byte per page.
        let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if rc == 0 {
            total += vec.iter().filter(|b| *b & 1 == 1).count() as u64 * page as u64;
        }
    }
    total
}

/// "outer: inner: innermost", for one-line messages.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
