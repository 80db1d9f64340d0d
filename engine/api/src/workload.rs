//! What every kind of workload shares: its id, its life-cycle state, how it
//! ended, its figures and its output streams.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::container::{ContainerExit, ContainerLimits};
use crate::vm::{VmExit, VmStats};

/// Names a workload of any kind. A VM's is its machine id (chosen by the
/// caller); a container's is 12 random hex digits
/// (`Engine::new_container_id` in `hangar-engine`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkloadId(pub String);

impl WorkloadId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for WorkloadId {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl From<String> for WorkloadId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// The kinds of workload the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkloadKind {
    /// A KVM guest.
    Vm,
    /// A process tree in namespaces and a cgroup.
    Container,
}

impl WorkloadKind {
    /// The kind in words, for messages ("machine", "container").
    pub fn noun(self) -> &'static str {
        match self {
            WorkloadKind::Vm => "machine",
            WorkloadKind::Container => "container",
        }
    }
}

/// Where a workload is in its life. Each kind goes through the states that
/// apply to it: a VM ends `Stopped` whatever the reason (its [`Exit`] says
/// why); a container that could not be created or started is `Failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadState {
    /// Being set up: a VM's memory, devices and vCPUs, a container's root
    /// file system and runtime.
    #[serde(alias = "Creating")]
    Starting,
    /// Running.
    Running,
    /// Frozen: a VM's vCPUs, a container's processes.
    Paused,
    /// A stop was asked for; waiting for the workload or the grace period.
    Stopping,
    /// Ended; a container's logs and writable layer are kept until it is
    /// removed.
    #[serde(alias = "Exited")]
    Stopped,
    /// It could not be created or started.
    Failed,
}

/// How a workload ended: in plain words, and the kind's own detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    /// What happened, for a person (stderr, the log panel).
    pub reason: String,
    /// The kind's account of it.
    pub detail: ExitDetail,
}

/// A kind's account of how its workload ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExitDetail {
    /// A VM's.
    Vm(VmExit),
    /// A container's process's.
    Container(ContainerExit),
}

impl Exit {
    /// A VM's exit.
    pub fn vm(exit: VmExit) -> Self {
        Self {
            reason: exit.to_string(),
            detail: ExitDetail::Vm(exit),
        }
    }

    /// A container's exit; its limits say which one it hit.
    pub fn container(exit: ContainerExit, limits: &ContainerLimits) -> Self {
        Self {
            reason: exit.describe(limits),
            detail: ExitDetail::Container(exit),
        }
    }

    /// The VM detail, if a VM ended.
    pub fn as_vm(&self) -> Option<&VmExit> {
        match &self.detail {
            ExitDetail::Vm(e) => Some(e),
            ExitDetail::Container(_) => None,
        }
    }

    /// The container detail, if a container ended.
    pub fn as_container(&self) -> Option<&ContainerExit> {
        match &self.detail {
            ExitDetail::Container(e) => Some(e),
            ExitDetail::Vm(_) => None,
        }
    }
}

/// One sample of a workload's figures, about once a second while it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// CPU time of everything it runs (a VM's vCPU threads, a container's
    /// processes) since it started.
    pub cpu_time: Duration,
    /// Host memory it holds, in bytes: a VM's guest RAM the host has
    /// backed, a container's memory charge (page cache included).
    pub memory_bytes: u64,
    /// The kind's own figures.
    pub detail: StatsDetail,
}

/// A kind's own figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StatsDetail {
    /// A VM's.
    Vm(VmStats),
    /// A container's.
    Container(ContainerStats),
}

impl Stats {
    /// The VM figures, if a VM's.
    pub fn as_vm(&self) -> Option<&VmStats> {
        match &self.detail {
            StatsDetail::Vm(s) => Some(s),
            StatsDetail::Container(_) => None,
        }
    }

    /// The container figures, if a container's.
    pub fn as_container(&self) -> Option<&ContainerStats> {
        match &self.detail {
            StatsDetail::Container(s) => Some(s),
            StatsDetail::Vm(_) => None,
        }
    }
}

/// A container's own figures, sampled from its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// Processes and threads.
    pub pids: u64,
}

/// Which stream output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputStream {
    /// A VM's serial console.
    Serial,
    /// Standard output (a container in pipes mode).
    Stdout,
    /// Standard error (a container in pipes mode).
    Stderr,
    /// A pseudo-terminal (a container in terminal mode: both, interleaved,
    /// with escapes).
    Terminal,
}
