//! The container kind: [`ContainerRuntime`] (one supervisor thread and one
//! single-threaded helper process per container) behind the shared verbs.

use std::path::PathBuf;
use std::time::Duration;

use super::Workloads;
use crate::api::{
    ContainerCommand, ContainerSetup, EngineError, EventSink, WorkloadId, WorkloadState,
};

use crate::containers::{
    ContainerConfig, ContainerError, ContainerRecord, ContainerRuntime, Control,
};
use crate::images::ImageStore;

/// The containers of one engine.
pub(crate) struct Containers {
    runtime: ContainerRuntime,
}

impl Containers {
    pub(crate) fn new(setup: ContainerSetup, sink: EventSink) -> Result<Self, ContainerError> {
        Ok(Self {
            runtime: ContainerRuntime::new(setup.paths, setup.helper, sink)?,
        })
    }

    pub(crate) fn run(
        &self,
        id: WorkloadId,
        config: ContainerConfig,
    ) -> Result<(), ContainerError> {
        self.runtime.run(id, config)
    }

    pub(crate) fn command(
        &self,
        id: &WorkloadId,
        command: ContainerCommand,
    ) -> Result<(), ContainerError> {
        let control = match command {
            ContainerCommand::CloseInput => Control::CloseInput,
            ContainerCommand::Exec {
                exec,
                command,
                terminal,
            } => Control::Exec {
                n: exec,
                command,
                terminal,
            },
            ContainerCommand::ExecInput { exec, bytes } => Control::ExecInput(exec, bytes),
            ContainerCommand::ExecResize { exec, cols, rows } => {
                Control::ExecResize(exec, cols, rows)
            }
            ContainerCommand::Signal(signal) => Control::Kill(signal),
        };
        self.runtime.send(id, control)
    }

    pub(crate) fn state(&self, id: &WorkloadId) -> Option<WorkloadState> {
        self.runtime.state(id)
    }

    pub(crate) fn images(&self) -> &ImageStore {
        self.runtime.images()
    }

    pub(crate) fn previous(&self) -> Vec<ContainerRecord> {
        self.runtime.previous_containers()
    }

    pub(crate) fn dir(&self, id: &WorkloadId) -> PathBuf {
        self.runtime.container_dir(id)
    }
}

impl Workloads for Containers {
    fn owns(&self, id: &WorkloadId) -> bool {
        self.runtime.knows(id)
    }

    fn stop(&self, id: &WorkloadId, grace: Duration) -> Result<(), EngineError> {
        Ok(self.runtime.send(id, Control::Stop(grace))?)
    }

    fn pause(&self, id: &WorkloadId) -> Result<(), EngineError> {
        Ok(self.runtime.send(id, Control::Pause)?)
    }

    fn resume(&self, id: &WorkloadId) -> Result<(), EngineError> {
        Ok(self.runtime.send(id, Control::Resume)?)
    }

    fn kill(&self, id: &WorkloadId) -> Result<(), EngineError> {
        Ok(self.runtime.send(id, Control::Kill(libc::SIGKILL))?)
    }

    fn remove(&self, id: &WorkloadId, force: bool) -> Result<(), EngineError> {
        Ok(self.runtime.remove(id, force)?)
    }

    fn input(&self, id: &WorkloadId, bytes: Vec<u8>) -> Result<(), EngineError> {
        Ok(self.runtime.send(id, Control::Input(bytes))?)
    }

    fn resize(&self, id: &WorkloadId, cols: u16, rows: u16) -> Result<(), EngineError> {
        Ok(self.runtime.send(id, Control::Resize(cols, rows))?)
    }
}
