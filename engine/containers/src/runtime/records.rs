//! `container.json`: what a container was asked to run and how it ended,
//! written by its supervisor and read back by the next runtime, which lists
//! the containers earlier runs left.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{valid_id, ContainerRuntime, RuntimePaths, Supervisor};
use crate::network::UserNetwork;
use crate::{error_text, ContainerConfig, ContainerError, ContainerExit, InternalError};
use hangar_api::{WorkloadId, WorkloadState};

/// The layout of `container.json` this build writes. 0 (no field) is the
/// first release's, which reads the same.
pub const RECORD_VERSION: u32 = 1;

/// What `container.json` keeps of a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Layout version ([`RECORD_VERSION`] when written by this build).
    #[serde(default)]
    pub version: u32,
    /// Its id.
    pub id: WorkloadId,
    /// What it was asked to run.
    pub config: ContainerConfig,
    /// Seconds since the epoch when it was created.
    pub created: u64,
    /// The milliseconds of that second (containers started together are
    /// listed in the order they were run).
    #[serde(default)]
    pub created_ms: u32,
    /// How it ended, once it has.
    pub exit: Option<ContainerExit>,
    /// Why it could not be created or started, if it could not.
    #[serde(default)]
    pub error: Option<String>,
}

impl ContainerRecord {
    /// The state a container of an earlier run is in.
    pub fn state(&self) -> WorkloadState {
        if self.error.is_some() {
            WorkloadState::Failed
        } else {
            WorkloadState::Stopped
        }
    }

    /// Writes `container.json` in `dir`. Renamed into place but not
    /// synced: an fsync would double a container's start time, and a
    /// record lost to a power cut only drops the container from the list.
    fn save(&self, dir: &std::path::Path) -> Result<(), ContainerError> {
        let p = dir.join("container.json");
        let tmp = dir.join(".container.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(InternalError::EncodeRecord)?;
        std::fs::write(&tmp, &bytes).map_err(ContainerError::io("write", &tmp))?;
        std::fs::rename(&tmp, &p).map_err(ContainerError::io("rename", &p))
    }
}

/// The records of the containers an earlier run left in `paths`. One that
/// was still running then was killed by its helper when that run's engine
/// went away (its root and namespaces went with them); what the engine
/// itself had started for it (pasta, and the runtime's state directory) is
/// cleaned up here, and its record says it ended with the app. Unreadable records are skipped (and logged), never
/// deleted.
pub(super) fn load_previous(paths: &RuntimePaths) -> HashMap<WorkloadId, ContainerRecord> {
    let mut found = HashMap::new();
    let dir = paths.data_dir.join("containers");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !valid_id(&name) {
            continue;
        }
        let cdir = e.path();
        let path = cdir.join("container.json");
        let mut rec: ContainerRecord = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(err) => {
                log::warn!("container {name}: {}: {err}; not listed", path.display());
                continue;
            }
        };
        if rec.version > RECORD_VERSION {
            // A newer Hangar's record may mean something else by the same
            // names: not listed, and left for that Hangar.
            log::warn!(
                "container {name}: {} is of a newer Hangar (layout {}, this one reads up to \
                 {RECORD_VERSION}); not listed",
                path.display(),
                rec.version
            );
            continue;
        }
        if rec.id.0 != name {
            log::warn!(
                "container {name}: its record names '{}'; not listed",
                rec.id
            );
            continue;
        }
        if rec.exit.is_none() && rec.error.is_none() {
            UserNetwork::clean_up_after(
                &cdir.join("pasta.pid"),
                &paths.run_dir.join(format!("{name}.netns")),
            );
            let _ = std::fs::remove_dir_all(paths.run_dir.join(&name));
            // Rewritten below in this build's layout.
            rec.version = RECORD_VERSION;
            rec.exit = Some(ContainerExit {
                code: 128 + libc::SIGKILL,
                signal: Some(libc::SIGKILL),
                ended_with_app: true,
                ..Default::default()
            });
            if let Err(e) = rec.save(&cdir) {
                log::warn!("container {name}: {}", error_text(&e));
            }
        }
        found.insert(rec.id.clone(), rec);
    }
    found
}

impl ContainerRuntime {
    /// The containers earlier runs left (all stopped), oldest first, with
    /// their settings and how they ended; their logs and files stay until
    /// removed (`Command::Remove`).
    pub fn previous_containers(&self) -> Vec<ContainerRecord> {
        let mut v: Vec<ContainerRecord> = match self.shared.previous.lock() {
            Ok(p) => p.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        v.sort_by(|a, b| {
            (a.created, a.created_ms, &a.id.0).cmp(&(b.created, b.created_ms, &b.id.0))
        });
        v
    }
}

impl Supervisor {
    pub(super) fn record(
        &self,
        exit: Option<ContainerExit>,
        error: Option<String>,
    ) -> Result<(), ContainerError> {
        ContainerRecord {
            version: RECORD_VERSION,
            id: self.id.clone(),
            config: self.config.clone(),
            created: self.created.as_secs(),
            created_ms: self.created.subsec_millis(),
            exit,
            error,
        }
        .save(&self.dir)
    }
}
