//! Pause and resume: the cgroup freezer (v1 `freezer.state`, v2
//! `cgroup.freeze`) stops every process of the container where it is.

use super::{LoopState, Supervisor};
use crate::cgroup::CgroupFiles;
use hangar_api::error_text;
use hangar_api::{Event, WorkloadState};

impl Supervisor {
    /// Control::Pause: freezes it, unless it is frozen or being stopped.
    pub(super) fn pause(&self, cgroup: &CgroupFiles, st: &mut LoopState) {
        if !st.frozen && !st.stopped_by_user {
            match cgroup.freeze(true) {
                Ok(()) => {
                    st.frozen = true;
                    self.set_state(WorkloadState::Paused);
                }
                Err(e) => self.emit(Event::Error {
                    id: self.id.clone(),
                    message: format!("cannot pause the container: {}", error_text(&e)),
                    registers: None,
                }),
            }
        }
    }

    /// Control::Resume: thaws a paused container.
    pub(super) fn resume(&self, cgroup: &CgroupFiles, st: &mut LoopState) {
        if st.frozen {
            self.thaw(cgroup, &mut st.frozen);
            self.set_state(WorkloadState::Running);
        }
    }

    /// Thaws a frozen container; a failure is reported (the signal that
    /// follows then waits for a thaw that may never come).
    pub(super) fn thaw(&self, cgroup: &CgroupFiles, frozen: &mut bool) {
        if !*frozen {
            return;
        }
        match cgroup.freeze(false) {
            Ok(()) => *frozen = false,
            Err(e) => self.emit(Event::Error {
                id: self.id.clone(),
                message: format!("cannot resume the container: {}", error_text(&e)),
                registers: None,
            }),
        }
    }
}
