//! Hangar's engine: virtual machines (KVM guests and their devices) and
//! containers, side by side behind one plain-data API. Commands for every
//! kind of workload go in through [`Engine::execute`]; events come out of one
//! channel, and a waker callback tells the caller (the GUI's repaint, the
//! CLI's loop) that there is something to drain. No KVM or guest-memory type
//! crosses this API.
#![warn(missing_docs)]

pub mod api;
/// What a VM is made of (crate `hangar-api`).
pub use hangar_api::config;
/// A VM's screen as the app reads it (crate `hangar-api`).
pub use hangar_api::display;
/// Disk images: inspect, create, grow, lock, open (crate `hangar-block`).
pub use hangar_block::disks;
/// Containers and their runtime (crate `hangar-containers`).
pub use hangar_containers as containers;
/// The device models (crate `hangar-devices`).
pub use hangar_devices as devices;
pub mod host;
/// The container image store (crate `hangar-containers`).
pub use hangar_containers::images;
pub(crate) mod kinds;
pub mod kit;
pub mod library;
pub mod store;
pub mod templates;

pub use api::{
    error_text, Command, ContainerCommand, ContainerEvent, ContainerSetup, ContainerStats,
    ContainersUnavailable, DeviceIo, Engine, EngineError, EngineOptions, Event, Exit, ExitDetail,
    OutputStream, RegisterDump, Stats, StatsDetail, VcpuStats, VmCommand, VmEvent, VmExit, VmStats,
    WorkloadConfig, WorkloadId, WorkloadKind, WorkloadState, MARKER_INIT_REACHED,
};
pub use config::{
    BootSource, ConfigError, DiskConfig, DiskFormat, DisplayConfig, KernelBoot, KernelKind,
    NetworkConfig, PortForward, VmConfig,
};
pub use devices::i8042::MouseButtons;
pub use devices::keymap::GuestKey;
pub use disks::{DiskError, DiskInfo, DiskLock};
pub use display::{DirtyRect, Display, DisplayError, Frame};
pub use host::{HostCapability, HostProbe};
pub use kinds::vm::VmError;
pub use kit::{DefaultKit, KitError};
pub use library::{
    Deleted, DiskFileRow, DiskRequest, Duplicate, Library, LibraryError, LibraryPaths,
    MachineChange, MachineEdit, TemplateClone, TemplateMachine,
};
pub use store::{MachineDefinition, MachineStore, StoredMachine};
pub use templates::{Template, TemplateError, TemplateStatus};
