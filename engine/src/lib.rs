//! Hangar's engine: KVM guests, their devices and the host checks, behind a
//! plain-data API. Commands go in through [`Engine::execute`]; events come out
//! of a channel, and a waker callback tells the caller (the GUI's repaint, the
//! CLI's loop) that there is something to drain. No KVM or guest-memory type
//! crosses this API.
#![warn(missing_docs)]

pub mod config;
pub mod containers;
pub mod devices;
pub mod disks;
pub mod display;
pub mod engine;
pub mod host;
pub mod images;
pub mod kit;
pub mod store;
pub mod templates;
pub(crate) mod vmm;

pub use config::{
    ConfigError, DiskConfig, DiskFormat, DisplayConfig, KernelKind, NetworkConfig, PortForward,
    VmConfig,
};
pub use devices::i8042::MouseButtons;
pub use devices::keymap::GuestKey;
pub use disks::{DiskError, DiskInfo, DiskLock};
pub use display::{DirtyRect, Display, DisplayError, Frame};
pub use engine::{
    Command, Engine, EngineError, Event, ExitReason, VcpuStats, VmId, VmState, VmStats,
};
pub use host::{HostCapability, HostProbe};
pub use kit::{DefaultKit, KitError};
pub use store::{MachineDefinition, MachineStore, StoredMachine};
pub use templates::{Template, TemplateError, TemplateStatus};
