//! The VM kind: each VM is a control thread with vCPU and I/O threads of
//! its own (crate `hangar-vmm`); this keeps their handles.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Workloads;
use crate::api::{EngineError, EventSink, VmCommand, WorkloadId, WorkloadKind, WorkloadState};
use crate::config::{ConfigError, HostLimits, VmConfig};
use crate::display::Display;
use crate::host::HostCapability;
use hangar_vmm::vm::{spawn_vm, VmLaunch, VmRequest, VmRequests};

/// Why a VM command was refused.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The host cannot run this guest: it has no usable KVM, or the guest
    /// is Linux and its KVM has no hardware virtualization. The message is
    /// the host's own summary.
    #[error("{}", .0.summary())]
    HostCannotRun(HostCapability),
    /// `/dev/kvm` could not be opened to learn its vCPU limit.
    #[error("/dev/kvm cannot be opened")]
    KvmUnusable(#[source] std::io::Error),
    /// No VM with this id.
    #[error("no running machine named {0}")]
    UnknownVm(WorkloadId),
    /// A VM with this id is still running.
    #[error("machine {0} is already running")]
    AlreadyRunning(WorkloadId),
    /// The VM's control thread is gone.
    #[error("machine {0} no longer responds")]
    VmGone(WorkloadId),
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

struct VmHandle {
    requests: VmRequests,
    thread: Option<JoinHandle<()>>,
    display: Option<Display>,
    state: Arc<Mutex<WorkloadState>>,
}

impl VmHandle {
    fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

/// The VMs of one engine.
pub(crate) struct Vms {
    sink: EventSink,
    capability: HostCapability,
    vms: Mutex<HashMap<WorkloadId, VmHandle>>,
}

impl Vms {
    pub(crate) fn new(sink: EventSink, capability: HostCapability) -> Self {
        Self {
            sink,
            capability,
            vms: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn start(&self, id: WorkloadId, config: VmConfig) -> Result<(), VmError> {
        let accepted = Instant::now();
        let mut vms = self.table();
        reap(&mut vms);
        if vms.contains_key(&id) {
            return Err(VmError::AlreadyRunning(id));
        }
        if !self.capability.has_kvm() {
            return Err(VmError::HostCannotRun(self.capability.clone()));
        }
        let max_vcpus = hangar_vmm::max_vcpus().map_err(VmError::KvmUnusable)?;
        let kind = config.validate(&HostLimits::with_max_vcpus(max_vcpus))?;
        // Refuse at once rather than after a minute of instruction emulation.
        if kind.is_linux() && !self.capability.can_run_linux() {
            return Err(VmError::HostCannotRun(self.capability.clone()));
        }
        let display = config.display.map(|d| Display::new(d.width, d.height));
        let state = Arc::new(Mutex::new(WorkloadState::Starting));
        let (requests, thread) = spawn_vm(VmLaunch {
            id: id.clone(),
            config,
            kind,
            sink: self.sink.clone(),
            state: state.clone(),
            started: accepted,
            display: display.clone(),
        })
        .map_err(VmError::Spawn)?;
        vms.insert(
            id,
            VmHandle {
                requests,
                thread: Some(thread),
                display,
                state,
            },
        );
        Ok(())
    }

    pub(crate) fn command(&self, id: &WorkloadId, command: VmCommand) -> Result<(), VmError> {
        self.request(id, VmRequest::Vm(command))
    }

    pub(crate) fn display(&self, id: &WorkloadId) -> Option<Display> {
        self.table().get(id).and_then(|h| h.display.clone())
    }

    pub(crate) fn state(&self, id: &WorkloadId) -> Option<WorkloadState> {
        let vms = self.table();
        let h = vms.get(id).filter(|h| h.is_running())?;
        let state = h.state.lock().ok().map(|s| *s);
        state
    }

    fn request(&self, id: &WorkloadId, request: VmRequest) -> Result<(), VmError> {
        let mut vms = self.table();
        reap(&mut vms);
        let vm = vms.get(id).ok_or_else(|| VmError::UnknownVm(id.clone()))?;
        if vm.requests.send(request) {
            Ok(())
        } else {
            Err(VmError::VmGone(id.clone()))
        }
    }

    /// The VM table; a panic while it was held loses nothing it guards.
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<WorkloadId, VmHandle>> {
        self.vms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn unsupported(what: &'static str) -> EngineError {
        EngineError::Unsupported {
            kind: WorkloadKind::Vm,
            what,
        }
    }
}

/// Forget VMs whose control thread has ended.
fn reap(vms: &mut HashMap<WorkloadId, VmHandle>) {
    vms.retain(|_, h| {
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

impl Workloads for Vms {
    fn owns(&self, id: &WorkloadId) -> bool {
        self.table().get(id).is_some_and(VmHandle::is_running)
    }

    fn stop(&self, id: &WorkloadId, grace: Duration) -> Result<(), EngineError> {
        Ok(self.request(id, VmRequest::Stop { timeout: grace })?)
    }

    fn pause(&self, id: &WorkloadId) -> Result<(), EngineError> {
        Ok(self.request(id, VmRequest::Pause)?)
    }

    fn resume(&self, id: &WorkloadId) -> Result<(), EngineError> {
        Ok(self.request(id, VmRequest::Resume)?)
    }

    fn kill(&self, id: &WorkloadId) -> Result<(), EngineError> {
        Ok(self.request(
            id,
            VmRequest::Stop {
                timeout: Duration::ZERO,
            },
        )?)
    }

    fn remove(&self, _id: &WorkloadId, _force: bool) -> Result<(), EngineError> {
        // A VM leaves nothing behind in the engine; its definition and
        // disks belong to the library.
        Err(Self::unsupported(
            "be removed by the engine (delete it from the library)",
        ))
    }

    fn input(&self, id: &WorkloadId, bytes: Vec<u8>) -> Result<(), EngineError> {
        Ok(self.request(id, VmRequest::SerialInput(bytes))?)
    }

    fn resize(&self, _id: &WorkloadId, _cols: u16, _rows: u16) -> Result<(), EngineError> {
        Err(Self::unsupported("resize its serial console"))
    }
}

impl Drop for Vms {
    /// Stop every VM by force and wait: guests never outlive the engine.
    fn drop(&mut self) {
        let vms = self
            .vms
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for h in vms.values() {
            // A VM whose control thread is gone has nothing left to stop.
            let _ = h.requests.send(VmRequest::Stop {
                timeout: Duration::ZERO,
            });
        }
        for (_, mut h) in vms.drain() {
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn host_refusals_say_the_hosts_summary_and_keep_the_os_error() {
        let host = HostCapability::NoKvm {
            reason: "/dev/kvm does not exist".into(),
        };
        assert_eq!(
            VmError::HostCannotRun(host.clone()).to_string(),
            host.summary()
        );
        let e = VmError::KvmUnusable(std::io::Error::from_raw_os_error(libc::EACCES));
        let source = e.source().expect("the OS error");
        assert_eq!(e.to_string(), "/dev/kvm cannot be opened");
        assert_eq!(
            source.to_string(),
            std::io::Error::from_raw_os_error(libc::EACCES).to_string()
        );
    }
}
