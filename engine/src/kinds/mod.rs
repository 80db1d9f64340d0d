//! The kinds of workload, each a module behind [`Workloads`]: the shared
//! life-cycle verbs. [`crate::Engine`] finds the kind that owns an id and
//! hands it the command; what only one kind does is its own method.

pub(crate) mod container;
pub(crate) mod vm;

use std::time::Duration;

use crate::api::{EngineError, WorkloadId};

/// The shared life-cycle verbs of one kind's workloads.
pub(crate) trait Workloads {
    /// True if a workload of this kind has this id (a VM while its threads
    /// run, a container until removed).
    fn owns(&self, id: &WorkloadId) -> bool;
    /// Ask it to stop; force after `grace`.
    fn stop(&self, id: &WorkloadId, grace: Duration) -> Result<(), EngineError>;
    /// Freeze it.
    fn pause(&self, id: &WorkloadId) -> Result<(), EngineError>;
    /// Unfreeze it.
    fn resume(&self, id: &WorkloadId) -> Result<(), EngineError>;
    /// Stop it by force, now.
    fn kill(&self, id: &WorkloadId) -> Result<(), EngineError>;
    /// Forget it and delete what the engine made for it.
    fn remove(&self, id: &WorkloadId, force: bool) -> Result<(), EngineError>;
    /// Bytes for its console.
    fn input(&self, id: &WorkloadId, bytes: Vec<u8>) -> Result<(), EngineError>;
    /// Its terminal's new size.
    fn resize(&self, id: &WorkloadId, cols: u16, rows: u16) -> Result<(), EngineError>;
}
