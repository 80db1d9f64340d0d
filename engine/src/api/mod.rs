//! The engine's public API: one [`Engine`] for every kind of workload,
//! commands in, events out.
//!
//! Protocol: the caller creates an [`Engine`] with a waker callback and gets
//! the receiving end of the one event channel. [`Engine::execute`] never
//! blocks on a workload: it validates what it can at once (returning an
//! error) and hands the rest to the workload's own threads, which report
//! through [`Event`]s and call the waker after each one.
//!
//! The life-cycle verbs (start, stop, pause, resume, kill, remove, input,
//! resize) are shared; what only one kind does goes through its own command
//! and event variants ([`VmCommand`], [`ContainerCommand`], [`VmEvent`],
//! [`ContainerEvent`]). Each kind is a module of [`crate::kinds`] behind one
//! internal trait; a new kind is one more module there and one more
//! variant in the plain data of `hangar-api`, which this module
//! re-exports.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

pub(crate) use hangar_api::EventSink;
pub use hangar_api::{
    error_text, Command, ContainerCommand, ContainerEvent, ContainerStats, DeviceIo, Event, Exit,
    ExitDetail, OutputStream, RegisterDump, Stats, StatsDetail, VcpuStats, VmCommand, VmEvent,
    VmExit, VmStats, WorkloadConfig, WorkloadId, WorkloadKind, WorkloadState, MARKER_INIT_REACHED,
};

use crate::containers::{ContainerError, ContainerRecord, HelperCommand, RuntimePaths};
use crate::display::Display;
use crate::host::{HostCapability, HostProbe};
use crate::images::ImageStore;
use crate::kinds::container::Containers;
use crate::kinds::vm::{VmError, Vms};
use crate::kinds::Workloads;
use crate::kit::DefaultKit;
use crate::library::{
    Deleted, Library, LibraryError, MachineChange, MachineEdit, TemplateClone, TemplateMachine,
};
use crate::store::MachineDefinition;

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A VM command was refused.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A container command was refused.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// No workload has this id.
    #[error("no machine or container named {0}")]
    Unknown(WorkloadId),
    /// The id names a workload of another kind.
    #[error("{id} is already the name of a {}", kind.noun())]
    IdInUse {
        /// The id.
        id: WorkloadId,
        /// The kind of the workload that has it.
        kind: WorkloadKind,
    },
    /// The kind cannot do this.
    #[error("a {} cannot {what}", kind.noun())]
    Unsupported {
        /// The workload's kind.
        kind: WorkloadKind,
        /// What was asked, as a verb phrase.
        what: &'static str,
    },
    /// The engine was made without containers, or they cannot run here.
    #[error("containers are unavailable")]
    ContainersUnavailable(#[source] ContainersUnavailable),
}

/// Why an engine runs no containers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ContainersUnavailable {
    /// The caller gave no container set-up, for this reason.
    #[error("{0}")]
    NotSetUp(String),
    /// The container runtime could not be started.
    #[error(transparent)]
    Failed(Arc<ContainerError>),
}

/// What the engine needs to know about the host's directories.
pub struct EngineOptions {
    /// Where containers live and how their helpers start, or why this
    /// engine runs none (shown to the user as is).
    pub containers: Result<ContainerSetup, String>,
    /// The definitions this engine keeps ([`Library::open`]), or
    /// [`Library::none`].
    pub library: Library,
}

/// What the container kind needs.
#[derive(Debug, Clone)]
pub struct ContainerSetup {
    /// Data directory (images, containers) and run directory.
    pub paths: RuntimePaths,
    /// How per-container helper processes start.
    pub helper: HelperCommand,
}

/// Runs workloads of every kind. One per process is enough; it can run
/// many at once.
pub struct Engine {
    capability: HostCapability,
    vms: Vms,
    containers: Result<Containers, ContainersUnavailable>,
    library: Library,
    waker: Arc<dyn Fn() + Send + Sync>,
}

impl Engine {
    /// A new engine. `waker` is called after every event (the GUI maps it to
    /// a repaint request); events are read from the returned receiver.
    pub fn new(
        options: EngineOptions,
        waker: impl Fn() + Send + Sync + 'static,
    ) -> (Self, Receiver<Event>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let waker: Arc<dyn Fn() + Send + Sync> = Arc::new(waker);
        let sink = EventSink::new(tx, waker.clone());
        let capability = HostProbe::probe();
        let containers = match options.containers {
            Ok(setup) => Containers::new(setup, sink.clone())
                .map_err(|e| ContainersUnavailable::Failed(Arc::new(e))),
            Err(why) => Err(ContainersUnavailable::NotSetUp(why)),
        };
        let engine = Self {
            vms: Vms::new(sink, capability.clone()),
            capability,
            containers,
            library: options.library,
            waker,
        };
        (engine, rx)
    }

    /// What this host can run, probed once when the engine was created.
    pub fn capability(&self) -> &HostCapability {
        &self.capability
    }

    /// Apply a command. Errors are returned here only for what can be told
    /// at once; everything after a successful start arrives as events.
    pub fn execute(&self, command: Command) -> Result<(), EngineError> {
        match command {
            Command::Start { id, config } => {
                // One id, one workload, whatever its kind.
                let other = match config.kind() {
                    WorkloadKind::Vm => self
                        .containers
                        .as_ref()
                        .ok()
                        .filter(|c| c.owns(&id))
                        .map(|_| WorkloadKind::Container),
                    WorkloadKind::Container => self.vms.owns(&id).then_some(WorkloadKind::Vm),
                };
                if let Some(kind) = other {
                    return Err(EngineError::IdInUse { id, kind });
                }
                match config {
                    WorkloadConfig::Vm(config) => Ok(self.vms.start(id, config)?),
                    WorkloadConfig::Container(config) => Ok(self.containers()?.run(id, config)?),
                }
            }
            Command::Stop { id, grace } => self.owner(&id)?.stop(&id, grace),
            Command::Pause(id) => self.owner(&id)?.pause(&id),
            Command::Resume(id) => self.owner(&id)?.resume(&id),
            Command::Kill(id) => self.owner(&id)?.kill(&id),
            Command::Remove { id, force } => self.owner(&id)?.remove(&id, force),
            Command::Input { id, bytes } => self.owner(&id)?.input(&id, bytes),
            Command::Resize { id, cols, rows } => self.owner(&id)?.resize(&id, cols, rows),
            Command::Vm { id, command } => Ok(self.vms.command(&id, command)?),
            Command::Container { id, command } => Ok(self.containers()?.command(&id, command)?),
        }
    }

    /// The kind that has a workload with this id.
    fn owner(&self, id: &WorkloadId) -> Result<&dyn Workloads, EngineError> {
        if self.vms.owns(id) {
            return Ok(&self.vms);
        }
        match &self.containers {
            Ok(c) if c.owns(id) => Ok(c),
            _ => Err(EngineError::Unknown(id.clone())),
        }
    }

    fn containers(&self) -> Result<&Containers, EngineError> {
        self.containers
            .as_ref()
            .map_err(|why| EngineError::ContainersUnavailable(why.clone()))
    }

    /// The kind of the workload with this id, if the engine knows one.
    pub fn kind_of(&self, id: &WorkloadId) -> Option<WorkloadKind> {
        if self.vms.owns(id) {
            Some(WorkloadKind::Vm)
        } else if self.containers.as_ref().is_ok_and(|c| c.owns(id)) {
            Some(WorkloadKind::Container)
        } else {
            None
        }
    }

    /// The state of a workload the engine knows: a VM while its threads
    /// run, a container until it is removed.
    pub fn state(&self, id: &WorkloadId) -> Option<WorkloadState> {
        self.vms
            .state(id)
            .or_else(|| self.containers.as_ref().ok()?.state(id))
    }

    /// The screen of a VM that has one (its config's `display`), for as
    /// long as the engine knows the VM: the app keeps the handle and reads
    /// the frame on [`VmEvent::DisplayUpdated`].
    pub fn display(&self, id: &WorkloadId) -> Option<Display> {
        self.vms.display(id)
    }

    /// Why this engine runs no containers, if it does not.
    pub fn containers_unavailable(&self) -> Option<&ContainersUnavailable> {
        self.containers.as_ref().err()
    }

    /// A fresh container id (12 random hex digits).
    pub fn new_container_id() -> WorkloadId {
        crate::containers::ContainerRuntime::new_id()
    }

    /// The image store containers take their images from.
    pub fn images(&self) -> Result<&ImageStore, EngineError> {
        Ok(self.containers()?.images())
    }

    /// The containers earlier runs left (all stopped), oldest first, with
    /// their settings and how they ended; their logs and files stay until
    /// removed ([`Command::Remove`]). Empty without containers.
    pub fn previous_containers(&self) -> Vec<ContainerRecord> {
        self.containers
            .as_ref()
            .map(|c| c.previous())
            .unwrap_or_default()
    }

    /// The directory of a container's files.
    pub fn container_dir(&self, id: &WorkloadId) -> Result<PathBuf, EngineError> {
        Ok(self.containers()?.dir(id))
    }

    /// The definitions this engine keeps.
    pub fn library(&self) -> &Library {
        &self.library
    }

    /// True while the engine runs a VM with this id (until its threads
    /// have ended): its definition and disks are in use.
    fn in_use(&self, id: &str) -> bool {
        self.vms.state(&WorkloadId::from(id)).is_some()
    }

    /// Change a stopped machine's definition and save it; on failure the
    /// definition stays as it was.
    pub fn edit_machine(
        &self,
        id: &str,
        edit: MachineEdit,
    ) -> Result<(MachineDefinition, MachineChange), LibraryError> {
        if self.in_use(id) {
            return Err(LibraryError::Running("changing its disks or network"));
        }
        self.library.edit_machine(id, edit)
    }

    /// Delete a stopped machine's definition; with `with_disks`, also the
    /// disk files in its own folder that no other machine uses (files
    /// elsewhere are never deleted), and the folder if that empties it.
    pub fn delete_machine(&self, id: &str, with_disks: bool) -> Result<Deleted, LibraryError> {
        if self.in_use(id) {
            return Err(LibraryError::Running("deleting it"));
        }
        self.library.delete_machine(id, with_disks)
    }

    /// Start copying a template's disk for a new machine
    /// ([`Library::clone_template`]); the engine's waker is called as it
    /// progresses.
    pub fn clone_template(
        &self,
        request: &TemplateMachine,
        kit: Option<&DefaultKit>,
    ) -> Result<TemplateClone, LibraryError> {
        let waker = self.waker.clone();
        self.library.clone_template(request, kit, move || waker())
    }
}
