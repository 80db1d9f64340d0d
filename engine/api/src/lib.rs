//! The plain data of Hangar's engine API: what a caller sends
//! ([`Command`]), what the engine reports ([`Event`]), and everything they
//! carry — ids, states, exits, stats samples, and each kind's definition
//! ([`VmConfig`], [`ContainerConfig`]).
//!
//! No KVM, guest-memory or runtime type appears here: this crate is what
//! the engine's façade (`hangar-engine`, which adds the `Engine` itself),
//! the VMM and the container runtime (which report through [`EventSink`])
//! and the app all agree on. A new kind of workload adds its definition
//! and its own command and event variants here.
#![warn(missing_docs)]

pub mod config;
pub mod container;
pub mod dirs;
pub mod display;
mod sink;
mod vm;
mod workload;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use config::{
    BootSource, ConfigError, DiskConfig, DiskFormat, DisplayConfig, KernelBoot, KernelKind,
    NetworkConfig, PortForward, VmConfig,
};
pub use container::{
    ContainerCommand, ContainerConfig, ContainerEvent, ContainerExit, ContainerLimits, NetworkMode,
    Volume,
};
pub use display::{DirtyRect, Display, DisplayError, Frame};
pub use sink::EventSink;
pub use vm::{
    DeviceIo, RegisterDump, VcpuStats, VmCommand, VmEvent, VmExit, VmStats, MARKER_INIT_REACHED,
};
pub use workload::{
    ContainerStats, Exit, ExitDetail, OutputStream, Stats, StatsDetail, WorkloadId, WorkloadKind,
    WorkloadState,
};

/// What to run: a workload's definition, of its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkloadConfig {
    /// A virtual machine.
    Vm(VmConfig),
    /// A container.
    Container(ContainerConfig),
}

impl WorkloadConfig {
    /// Its kind.
    pub fn kind(&self) -> WorkloadKind {
        match self {
            WorkloadConfig::Vm(_) => WorkloadKind::Vm,
            WorkloadConfig::Container(_) => WorkloadKind::Container,
        }
    }
}

/// What the caller asks of the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create a workload and start it.
    Start {
        /// The new workload's id; must not be in use.
        id: WorkloadId,
        /// What to run.
        config: WorkloadConfig,
    },
    /// Ask it to stop (a VM: Ctrl+Alt+Del on its keyboard; a container:
    /// SIGTERM), and stop it by force after `grace`. Zero forces at once.
    Stop {
        /// Which workload.
        id: WorkloadId,
        /// How long it gets to stop by itself.
        grace: Duration,
    },
    /// Freeze it: a VM's vCPUs, a container's processes (the cgroup
    /// freezer).
    Pause(WorkloadId),
    /// Let a paused workload run again.
    Resume(WorkloadId),
    /// Stop it by force, now (a container: SIGKILL to its init).
    Kill(WorkloadId),
    /// Forget an ended container and delete its files (its writable layer,
    /// log and runtime state); `force` kills it first if it still runs.
    Remove {
        /// Which workload.
        id: WorkloadId,
        /// Kill it first if it still runs.
        force: bool,
    },
    /// Bytes typed into its console: a VM's serial port, a container's
    /// stdin or terminal.
    Input {
        /// Which workload.
        id: WorkloadId,
        /// The bytes, as a terminal would send them.
        bytes: Vec<u8>,
    },
    /// Tell its terminal its new size.
    Resize {
        /// Which workload.
        id: WorkloadId,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// What only a VM does.
    Vm {
        /// Which VM.
        id: WorkloadId,
        /// What to do.
        command: VmCommand,
    },
    /// What only a container does.
    Container {
        /// Which container.
        id: WorkloadId,
        /// What to do.
        command: ContainerCommand,
    },
}

/// What the engine reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A workload moved to a new state.
    StateChanged {
        /// Which workload.
        id: WorkloadId,
        /// Its new state.
        state: WorkloadState,
    },
    /// It is built and runs: a VM's vCPUs are entering the guest, a
    /// container's process runs.
    Started {
        /// Which workload.
        id: WorkloadId,
        /// From the Start command to running: a VM's memory, devices,
        /// kernel loading and vCPU set-up; a container's root file system,
        /// runtime and process.
        setup: Duration,
        /// A container's init process's pid on the host (a VM runs in the
        /// engine's own process).
        pid: Option<i32>,
    },
    /// Output of its console.
    Output {
        /// Which workload.
        id: WorkloadId,
        /// Which stream.
        stream: OutputStream,
        /// The bytes, raw (a terminal emulator interprets them).
        bytes: Vec<u8>,
    },
    /// Periodic figures while it runs.
    Stats {
        /// Which workload.
        id: WorkloadId,
        /// The sample.
        stats: Stats,
    },
    /// Something went wrong; said once, in plain words. The workload may or
    /// may not still run (see `Exited`).
    Error {
        /// Which workload.
        id: WorkloadId,
        /// A sentence for the user and the log.
        message: String,
        /// A VM's vCPU registers, when a guest fault caused it.
        registers: Option<RegisterDump>,
    },
    /// It ended; all its output before has been reported. A VM's last event.
    Exited {
        /// Which workload.
        id: WorkloadId,
        /// How.
        exit: Exit,
    },
    /// A container is gone (after Remove): its last event.
    Removed(WorkloadId),
    /// What only a VM reports.
    Vm {
        /// Which VM.
        id: WorkloadId,
        /// What happened.
        event: VmEvent,
    },
    /// What only a container reports.
    Container {
        /// Which container.
        id: WorkloadId,
        /// What happened.
        event: ContainerEvent,
    },
}

impl Event {
    /// The workload it is about.
    pub fn id(&self) -> &WorkloadId {
        match self {
            Event::StateChanged { id, .. }
            | Event::Started { id, .. }
            | Event::Output { id, .. }
            | Event::Stats { id, .. }
            | Event::Error { id, .. }
            | Event::Exited { id, .. }
            | Event::Removed(id)
            | Event::Vm { id, .. }
            | Event::Container { id, .. } => id,
        }
    }
}

/// An error and its sources in one line, "outer: inner: innermost": the
/// text events, records, logs and the GUI show. A source whose text the
/// message above it already includes is left out: some libraries' messages
/// repeat their source.
pub fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut above = text.clone();
    let mut source = e.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !above.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        above = inner_text;
        source = inner.source();
    }
    text
}
