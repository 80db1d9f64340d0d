//! The engine's public API: commands in, events out.
//!
//! Protocol: the caller creates an [`Engine`] with a waker callback and gets
//! the receiving end of the event channel. [`Engine::execute`] never blocks on
//! a guest: it validates what it can at once (returning an error) and hands
//! the rest to the VM's own threads, which report through [`Event`]s and call
//! the waker after each one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, HostLimits, VmConfig};
use crate::devices::i8042::MouseButtons;
use crate::devices::keymap::GuestKey;
use crate::display::Display;
use crate::host::{HostCapability, HostProbe};
use crate::vmm::vm::{spawn_vm, ControlMsg, VmRequest};

/// Names a VM; chosen by the caller (the app uses its machine id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VmId(pub String);

impl std::fmt::Display for VmId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the caller asks of the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Build and boot a VM.
    Start {
        /// The new VM's id; must not be in use by a VM that is still running.
        id: VmId,
        /// Its definition.
        config: VmConfig,
    },
    /// Freeze all vCPUs.
    Pause(VmId),
    /// Let paused vCPUs run again.
    Resume(VmId),
    /// Ask the guest to shut down (Ctrl+Alt+Del on its keyboard); after
    /// `timeout` the VM is stopped by force.
    Stop {
        /// Which VM.
        id: VmId,
        /// How long the guest gets to shut down by itself. Zero forces at once.
        timeout: Duration,
    },
    /// Bytes typed into the guest's serial console.
    SerialInput {
        /// Which VM.
        id: VmId,
        /// The bytes, as a terminal would send them.
        bytes: Vec<u8>,
    },
    /// A key pressed or released on the guest's PS/2 keyboard.
    KeyInput {
        /// Which VM.
        id: VmId,
        /// The key, by position on a US keyboard.
        key: GuestKey,
        /// Pressed (true) or released.
        pressed: bool,
    },
    /// The guest's PS/2 mouse moved, scrolled or changed buttons.
    PointerInput {
        /// Which VM.
        id: VmId,
        /// Counts to the right.
        dx: i32,
        /// Counts downwards (screen direction).
        dy: i32,
        /// Wheel notches away from the user.
        wheel: i32,
        /// The buttons held now.
        buttons: MouseButtons,
    },
    /// Ctrl+Alt+Del on the guest's keyboard, without stopping the VM (the
    /// host's own Ctrl+Alt+Del never reaches it).
    SendCtrlAltDel(VmId),
}

/// A VM's life-cycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Memory, devices and vCPUs are being set up.
    Starting,
    /// vCPUs are running.
    Running,
    /// vCPUs are frozen.
    Paused,
    /// A stop was requested; waiting for the guest or the timeout.
    Stopping,
    /// Everything is torn down.
    Stopped,
}

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    /// The guest reset the machine (e.g. `reboot`): a clean stop.
    GuestReset,
    /// The guest powered off through the debug port with this status.
    GuestExit(u8),
    /// The caller stopped it; `forced` if the guest did not stop by itself in time.
    Stopped {
        /// True if the VM was torn down by force after the timeout.
        forced: bool,
    },
    /// The VM failed: a triple fault, an emulation failure, a set-up error.
    Failed(String),
}

/// A vCPU's registers at the moment of a fault, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterDump {
    /// vCPU index.
    pub vcpu: u8,
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags.
    pub rflags: u64,
    /// General registers rax, rbx, rcx, rdx, rsi, rdi, rbp.
    pub gprs: [u64; 7],
    /// Control registers cr0, cr2, cr3, cr4.
    pub cr: [u64; 4],
    /// Extended feature enable register.
    pub efer: u64,
    /// Code segment selector.
    pub cs: u16,
}

impl std::fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [rax, rbx, rcx, rdx, rsi, rdi, rbp] = self.gprs;
        let [cr0, cr2, cr3, cr4] = self.cr;
        write!(
            f,
            "vcpu{} rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} rax={rax:#x} rbx={rbx:#x} rcx={rcx:#x} rdx={rdx:#x} rsi={rsi:#x} rdi={rdi:#x} rbp={rbp:#x} cr0={cr0:#x} cr2={cr2:#x} cr3={cr3:#x} cr4={cr4:#x} efer={:#x}",
            self.vcpu, self.rip, self.rsp, self.rflags, self.cs, self.efer
        )
    }
}

/// One vCPU's counters since the VM started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuStats {
    /// CPU time of the vCPU thread (guest plus exit handling).
    pub cpu_time: Duration,
    /// Exits to the VMM (port I/O, MMIO, signals...).
    pub exits: u64,
}

/// A VM's figures, reported about once a second while it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStats {
    /// Time since the VM's vCPUs started.
    pub uptime: Duration,
    /// Per-vCPU counters, by index.
    pub vcpus: Vec<VcpuStats>,
    /// Guest RAM the host has actually backed with memory, in bytes.
    pub guest_resident_bytes: u64,
    /// Guest RAM size in bytes.
    pub guest_memory_bytes: u64,
    /// What each disk and network card moved since the VM started, in the
    /// order of the machine's disks, then its network card.
    #[serde(default)]
    pub devices: Vec<DeviceIo>,
}

/// One device's I/O counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIo {
    /// The device's name (`virtio-blk0`, `virtio-net0`).
    pub name: String,
    /// Bytes and requests so far (for a network card: read = received by
    /// the guest, written = sent by it).
    pub counters: crate::devices::virtio::IoCountersSnapshot,
}

/// What the engine reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A VM moved to a new state.
    StateChanged {
        /// Which VM.
        id: VmId,
        /// Its new state.
        state: VmState,
    },
    /// The VM is built and its vCPUs are entering the guest.
    Started {
        /// Which VM.
        id: VmId,
        /// Time from the Start command to the vCPU threads' launch: memory,
        /// devices, kernel loading and vCPU set-up.
        setup: Duration,
    },
    /// Periodic figures of a running VM.
    Stats {
        /// Which VM.
        id: VmId,
        /// The figures.
        stats: VmStats,
    },
    /// Bytes the guest wrote to its serial console.
    SerialOutput {
        /// Which VM.
        id: VmId,
        /// The bytes, raw (a terminal emulator interprets them).
        bytes: Vec<u8>,
    },
    /// The guest wrote a boot-progress marker to the debug port.
    BootMarker {
        /// Which VM.
        id: VmId,
        /// The marker value; [`MARKER_INIT_REACHED`] means its init started.
        value: u8,
        /// Time since the Start command was accepted.
        since_start: Duration,
    },
    /// Something went wrong; the VM may or may not still run (see `Exited`).
    Error {
        /// Which VM.
        id: VmId,
        /// A sentence for the user and the log.
        message: String,
        /// Registers of the vCPU involved, when a guest fault caused it.
        registers: Option<RegisterDump>,
    },
    /// The guest drew on its screen: read the changes from
    /// [`Engine::display`]'s [`Display::take_changes`]. At most one per
    /// screen refresh (60 a second), none while the screen is still.
    DisplayUpdated {
        /// Which VM.
        id: VmId,
    },
    /// The VM is gone; this is its last event.
    Exited {
        /// Which VM.
        id: VmId,
        /// Why.
        reason: ExitReason,
    },
}

/// The marker value the default kit's `/init` writes when it starts.
pub const MARKER_INIT_REACHED: u8 = 1;

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The host cannot run this guest.
    #[error("{0}")]
    HostCannotRun(String),
    /// No VM with this id.
    #[error("no running machine named {0}")]
    UnknownVm(VmId),
    /// A VM with this id is still running.
    #[error("machine {0} is already running")]
    AlreadyRunning(VmId),
    /// The VM's control thread is gone.
    #[error("machine {0} no longer responds")]
    VmGone(VmId),
    /// A file the VM needs could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Setting up the VM's threads failed.
    #[error("cannot start the machine's threads")]
    Spawn(#[source] std::io::Error),
}

/// Sends events and wakes the caller.
#[derive(Clone)]
pub(crate) struct EventSink {
    tx: Sender<Event>,
    waker: Arc<dyn Fn() + Send + Sync>,
}

impl EventSink {
    pub(crate) fn emit(&self, event: Event) {
        // A caller that dropped its receiver no longer listens; the VM goes on.
        if self.tx.send(event).is_ok() {
            (self.waker)();
        }
    }
}

struct VmHandle {
    tx: Sender<ControlMsg>,
    thread: Option<JoinHandle<()>>,
    display: Option<Display>,
}

impl VmHandle {
    fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

/// Runs VMs. One per process is enough; it can run many VMs at once.
pub struct Engine {
    sink: EventSink,
    capability: HostCapability,
    vms: HashMap<VmId, VmHandle>,
}

impl Engine {
    /// A new engine. `waker` is called after every event (the GUI maps it to
    /// a repaint request); events are read from the returned receiver.
    pub fn new(waker: impl Fn() + Send + Sync + 'static) -> (Self, Receiver<Event>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let engine = Self {
            sink: EventSink {
                tx,
                waker: Arc::new(waker),
            },
            capability: HostProbe::probe(),
            vms: HashMap::new(),
        };
        (engine, rx)
    }

    /// What this host can run, probed once when the engine was created.
    pub fn capability(&self) -> &HostCapability {
        &self.capability
    }

    /// Apply a command. Errors are returned here only for what can be told
    /// at once; everything after a successful start arrives as events.
    pub fn execute(&mut self, command: Command) -> Result<(), EngineError> {
        match command {
            Command::Start { id, config } => self.start(id, config),
            Command::Pause(id) => self.request(&id, VmRequest::Pause),
            Command::Resume(id) => self.request(&id, VmRequest::Resume),
            Command::Stop { id, timeout } => self.request(&id, VmRequest::Stop { timeout }),
            Command::SerialInput { id, bytes } => self.request(&id, VmRequest::SerialInput(bytes)),
            Command::KeyInput { id, key, pressed } => {
                self.request(&id, VmRequest::Key { key, pressed })
            }
            Command::PointerInput {
                id,
                dx,
                dy,
                wheel,
                buttons,
            } => self.request(
                &id,
                VmRequest::Pointer {
                    dx,
                    dy,
                    wheel,
                    buttons,
                },
            ),
            Command::SendCtrlAltDel(id) => self.request(&id, VmRequest::CtrlAltDel),
        }
    }

    /// The screen of a VM that has one (its config's `display`), for as
    /// long as the engine knows the VM: the app keeps the handle and reads
    /// the frame on [`Event::DisplayUpdated`].
    pub fn display(&self, id: &VmId) -> Option<Display> {
        self.vms.get(id).and_then(|h| h.display.clone())
    }

    /// Ids of VMs whose threads are still alive.
    pub fn running(&self) -> Vec<VmId> {
        let mut ids: Vec<VmId> = self
            .vms
            .iter()
            .filter(|(_, h)| h.is_running())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn start(&mut self, id: VmId, config: VmConfig) -> Result<(), EngineError> {
        let accepted = Instant::now();
        self.reap();
        if self.vms.contains_key(&id) {
            return Err(EngineError::AlreadyRunning(id));
        }
        if !self.capability.has_kvm() {
            return Err(EngineError::HostCannotRun(self.capability.summary()));
        }
        let max_vcpus = kvm_ioctls::Kvm::new()
            .map(|k| k.get_max_vcpus())
            .map_err(|e| EngineError::HostCannotRun(format!("/dev/kvm cannot be opened: {e}")))?;
        let kind = config.validate(&HostLimits::with_max_vcpus(max_vcpus))?;
        // Refuse at once rather than after a minute of instruction emulation.
        if kind.is_linux() {
            if let Some(why) = self.capability.linux_refusal() {
                return Err(EngineError::HostCannotRun(why));
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let display = config.display.map(|d| Display::new(d.width, d.height));
        let thread = spawn_vm(
            id.clone(),
            config,
            kind,
            self.sink.clone(),
            (tx.clone(), rx),
            accepted,
            display.clone(),
        )
        .map_err(EngineError::Spawn)?;
        self.vms.insert(
            id,
            VmHandle {
                tx,
                thread: Some(thread),
                display,
            },
        );
        Ok(())
    }

    fn request(&mut self, id: &VmId, request: VmRequest) -> Result<(), EngineError> {
        self.reap();
        let vm = self
            .vms
            .get(id)
            .ok_or_else(|| EngineError::UnknownVm(id.clone()))?;
        vm.tx
            .send(ControlMsg::Request(request))
            .map_err(|_| EngineError::VmGone(id.clone()))
    }

    /// Forget VMs whose control thread has ended.
    fn reap(&mut self) {
        self.vms.retain(|_, h| {
            if h.is_running() {
                return true;
            }
            if let Some(t) = h.thread.take() {
                if t.join().is_err() {
                    log::error!("a VM control thread panicked");
                }
            }
            false
        });
    }
}

impl Drop for Engine {
    /// Stop every VM by force and wait: guests never outlive the engine.
    fn drop(&mut self) {
        for h in self.vms.values() {
            let _ = h.tx.send(ControlMsg::Request(VmRequest::Stop {
                timeout: Duration::ZERO,
            }));
        }
        for (_, mut h) in self.vms.drain() {
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestReset => f.write_str("guest reset"),
            ExitReason::GuestExit(code) => write!(f, "guest powered off with status {code}"),
            ExitReason::Stopped { forced: false } => f.write_str("stopped (the guest shut down)"),
            ExitReason::Stopped { forced: true } => f.write_str("stopped by force"),
            ExitReason::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}
