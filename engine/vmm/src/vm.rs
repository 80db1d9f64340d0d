//! A VM's control thread: builds the machine (see [`super::build`]), runs
//! its vCPU threads, applies commands and turns everything that happens into
//! [`Event`]s.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::build::{build, Machine};
use super::vcpu::{VcpuCommand, VcpuOutcome, VcpuReport, VcpuThread};
use hangar_api::config::{KernelKind, VmConfig};
use hangar_api::display::Display;
use hangar_api::{
    DeviceIo, Event, EventSink, Exit, OutputStream, Stats, StatsDetail, VcpuStats, VmCommand,
    VmEvent, VmExit, VmStats, WorkloadId, WorkloadState,
};
use hangar_devices::bus::lock;
use hangar_devices::i8042::MouseButtons;
use hangar_devices::keymap::GuestKey;
use hangar_devices::manager::DeviceManager;

/// How often the control thread looks at timers and queued input.
const TICK: Duration = Duration::from_millis(20);
/// How often a running VM reports its figures.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the screen is checked for what the guest drew (60 Hz).
const DISPLAY_INTERVAL: Duration = Duration::from_micros(16_667);
/// How long the vCPUs get to leave after being told to.
const VCPU_EXIT_GRACE: Duration = Duration::from_secs(5);

/// What the engine asks of a running VM.
#[derive(Debug)]
pub enum VmRequest {
    /// Freeze the vCPUs.
    Pause,
    /// Let them run again.
    Resume,
    /// Ctrl+Alt+Del, then force after `timeout` (zero: force at once).
    Stop {
        /// How long the guest gets to shut down.
        timeout: Duration,
    },
    /// Bytes for the serial console.
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

/// The engine's end of a VM's control channel.
#[derive(Debug, Clone)]
pub struct VmRequests(Sender<ControlMsg>);

impl VmRequests {
    /// Hand the control thread a request; false once that thread is gone.
    #[must_use]
    pub fn send(&self, request: VmRequest) -> bool {
        self.0.send(ControlMsg::Request(request)).is_ok()
    }
}

/// Start a VM's control thread, which builds the machine and runs it. It
/// reports through the launch's `sink` and ends after sending `Exited`.
pub fn spawn_vm(launch: VmLaunch) -> std::io::Result<(VmRequests, JoinHandle<()>)> {
    let VmLaunch {
        id,
        config,
        kind,
        sink,
        state,
        started,
        display,
    } = launch;
    let (tx, rx) = std::sync::mpsc::channel();
    let requests = VmRequests(tx.clone());
    let thread = std::thread::Builder::new()
        .name("vm-control".into())
        .spawn(move || {
            let control = VmControl {
                id,
                sink,
                state,
                started,
            };
            control.run(&config, kind, tx, rx, display);
        })?;
    Ok((requests, thread))
}

/// What a VM's control thread starts from.
pub struct VmLaunch {
    /// The VM's id, in its events.
    pub id: WorkloadId,
    /// Its definition.
    pub config: VmConfig,
    /// What its kernel file is (validated).
    pub kind: KernelKind,
    /// Where its events go.
    pub sink: EventSink,
    /// Its state as last reported, for the engine's `state` query.
    pub state: Arc<Mutex<WorkloadState>>,
    /// When the Start command was accepted.
    pub started: Instant,
    /// Its screen, which the app reads, for a config with one.
    pub display: Option<Display>,
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
                if let Some(fb) = &mut machine.platform.framebuffer {
                    if let Ok(true) = fb.poll(&machine.platform.vm) {
                        self.emit(Event::Vm {
                            id: self.id.clone(),
                            event: VmEvent::DisplayUpdated,
                        });
                    }
                }
                reason
            }
            Err(e) => {
                let message = format!(
                    "cannot start {}: {}",
                    config.name,
                    hangar_api::error_text(&e)
                );
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
            let wait = if m.platform.framebuffer.is_some() && !screen_broken {
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
                            m.platform.devices.send_ctrl_alt_del();
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
                    VmRequest::Vm(VmCommand::CtrlAltDel) => m.platform.devices.send_ctrl_alt_del(),
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
                m.platform.devices.tick();
                for (device, why) in m.platform.devices.take_device_failures() {
                    self.emit(Event::Error {
                        id: self.id.clone(),
                        message: format!(
                            "{device} stopped working: {why}; the guest has to reset it"
                        ),
                        registers: None,
                    });
                }
            }
            if let (Some(fb), false) = (&mut m.platform.framebuffer, screen_broken) {
                if Instant::now() >= next_frame {
                    next_frame = Instant::now() + DISPLAY_INTERVAL;
                    match fb.poll(&m.platform.vm) {
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
                let taken = m.platform.devices.serial_input(&pending_input);
                pending_input.drain(..taken);
            }
            pending_devices.deliver(&m.platform.devices);
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
        m.platform.devices.shut_down_virtio();
        // Killing passt closes the forwarded ports.
        m.platform.passt.take();
    }

    fn flush_serial(&self, m: &Machine) {
        let bytes = std::mem::take(&mut *lock(&m.platform.serial_out));
        if !bytes.is_empty() {
            self.emit(Event::Output {
                id: self.id.clone(),
                stream: OutputStream::Serial,
                bytes,
            });
        }
    }
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
        memory_bytes: resident_bytes(&m.platform.memory),
        detail: StatsDetail::Vm(VmStats {
            uptime,
            vcpus,
            guest_memory_bytes: m.platform.memory.iter().map(|r| r.len()).sum(),
            devices: m
                .platform
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
