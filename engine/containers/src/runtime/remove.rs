//! Removing a container: its files (writable layer, log, record) go, here
//! or, for one that still runs (forced), once its supervisor has seen it
//! exit.

use std::io;

use super::{ContainerRuntime, Control, LoopState, Supervisor};
use crate::cgroup::CgroupFiles;
use crate::helper::HelperProcess;
use crate::{error_text, ContainerError, InternalError};
use hangar_api::{Event, WorkloadId, WorkloadState};

impl ContainerRuntime {
    /// Deletes an exited (or, forced, a running) container: its writable
    /// layer, log and runtime state.
    pub fn remove(&self, id: &WorkloadId, force: bool) -> Result<(), ContainerError> {
        let mut map = self.table()?;
        let Some(h) = map.get(id) else {
            return self.remove_previous(id.clone());
        };
        let state = h.state.lock().map(|s| *s).unwrap_or(WorkloadState::Failed);
        if !force
            && matches!(
                state,
                WorkloadState::Running
                    | WorkloadState::Paused
                    | WorkloadState::Stopping
                    | WorkloadState::Starting
            )
        {
            return Err(ContainerError::WrongState {
                id: id.clone(),
                state,
                what: "remove it while it runs (stop it, or force)",
            });
        }
        // The supervisor removes the files and ends; forget it.
        let h = map
            .remove(id)
            .ok_or_else(|| ContainerError::NotFound(id.clone()))?;
        let _ = h.tx.send(Control::Remove);
        let _ = h.wake.write(1);
        Ok(())
    }

    /// Removes a container an earlier run left, off the caller's thread.
    fn remove_previous(&self, id: WorkloadId) -> Result<(), ContainerError> {
        let known = self
            .shared
            .previous
            .lock()
            .map_err(|_| InternalError::Poisoned {
                what: "list of earlier containers",
            })?
            .remove(&id)
            .is_some();
        if !known {
            return Err(ContainerError::NotFound(id));
        }
        let dir = self.container_dir(&id);
        let events = self.shared.events.clone();
        std::thread::Builder::new()
            .name(format!("container-rm-{}", id.0))
            .spawn(move || match remove_tree(&dir) {
                Ok(()) => events.emit(Event::Removed(id)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => events.emit(Event::Removed(id)),
                Err(e) => events.emit(Event::Error {
                    id,
                    message: error_text(&ContainerError::io("remove", &dir)(e)),
                    registers: None,
                }),
            })
            .map(|_| ())
            .map_err(|source| {
                InternalError::SpawnThread {
                    what: "removal",
                    source,
                }
                .into()
            })
    }
}

impl Supervisor {
    /// Removal was asked while it runs (forced): kill, then the normal exit
    /// path runs and the files go.
    pub(super) fn remove_while_running(
        &mut self,
        helper: &mut HelperProcess,
        cgroup: &CgroupFiles,
        st: &mut LoopState,
    ) {
        self.thaw(cgroup, &mut st.frozen);
        st.stopped_by_user = true;
        self.kill(helper, libc::SIGKILL, true);
        self.remove_requested = true;
    }

    /// After the exit: keep the files until Remove (or the runtime's end).
    pub(super) fn wait_for_removal(&mut self) {
        if !self.remove_requested {
            loop {
                match self.controls.recv() {
                    Ok(Control::Remove) => break,
                    // The runtime is gone: the files stay for the next one.
                    Err(_) => return,
                    Ok(_) => {}
                }
            }
        }
        self.log = None;
        match remove_tree(&self.dir) {
            Ok(()) => self.emit(Event::Removed(self.id.clone())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.emit(Event::Removed(self.id.clone()))
            }
            Err(e) => self.emit(Event::Error {
                id: self.id.clone(),
                message: error_text(&ContainerError::io("remove", &self.dir)(e)),
                registers: None,
            }),
        }
    }
}

/// Removes a container's directory. Rootless, overlayfs leaves its work
/// directory (and the container may leave directories) without
/// permissions for their owner: give them back and retry.
fn remove_tree(dir: &std::path::Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            grant_owner_access(dir);
            std::fs::remove_dir_all(dir)
        }
        r => r,
    }
}

fn grant_owner_access(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            grant_owner_access(&e.path());
        }
    }
}
