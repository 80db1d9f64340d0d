//! Stopping a container: SIGTERM to the init, then SIGKILL to every
//! process once the grace is over; a signal the user chose; the app's end.
//! Each thaws a paused container first: a frozen process handles no
//! signal.

use std::time::{Duration, Instant};

use super::{LoopState, Supervisor};
use crate::cgroup::CgroupFiles;
use crate::helper::{HelperProcess, Reply, Request};
use hangar_api::error_text;
use hangar_api::{Event, WorkloadState};

impl Supervisor {
    /// Control::Stop: SIGTERM now and SIGKILL when `grace` is over, or
    /// SIGKILL at once without grace.
    pub(super) fn stop(
        &self,
        helper: &mut HelperProcess,
        cgroup: &CgroupFiles,
        st: &mut LoopState,
        grace: Duration,
    ) {
        self.thaw(cgroup, &mut st.frozen);
        st.stopped_by_user = true;
        self.set_state(WorkloadState::Stopping);
        if grace.is_zero() {
            self.kill(helper, libc::SIGKILL, true);
        } else {
            self.kill(helper, libc::SIGTERM, false);
            st.kill_at = Some(Instant::now() + grace);
        }
    }

    /// Control::Kill: `signal` to the init, SIGKILL to every process.
    pub(super) fn signal(
        &self,
        helper: &mut HelperProcess,
        cgroup: &CgroupFiles,
        st: &mut LoopState,
        signal: i32,
    ) {
        self.thaw(cgroup, &mut st.frozen);
        st.stopped_by_user = true;
        self.kill(helper, signal, signal == libc::SIGKILL);
    }

    /// Control::Shutdown: the runtime is dropped; kill, and the files stay
    /// for the next run.
    pub(super) fn shut_down(
        &self,
        helper: &mut HelperProcess,
        cgroup: &CgroupFiles,
        st: &mut LoopState,
    ) {
        self.thaw(cgroup, &mut st.frozen);
        st.ended_with_app = true;
        self.kill(helper, libc::SIGKILL, true);
    }

    /// SIGKILL once a stop's grace is over.
    pub(super) fn kill_when_grace_is_over(
        &self,
        helper: &mut HelperProcess,
        st: &mut LoopState,
        now: Instant,
    ) {
        if st.kill_at.is_some_and(|t| now >= t) {
            st.kill_at = None;
            self.kill(helper, libc::SIGKILL, true);
        }
    }

    pub(super) fn kill(&self, helper: &mut HelperProcess, signal: i32, all: bool) {
        match helper.request(&Request::Kill { signal, all }, &[]) {
            Ok((Reply::Done, _)) => {}
            // It may have exited in between: the exit event follows.
            Ok((Reply::Failed { message }, _)) => {
                log::debug!("container {}: kill {signal}: {message}", self.id)
            }
            Ok(_) => {}
            Err(e) => self.emit(Event::Error {
                id: self.id.clone(),
                message: error_text(&e),
                registers: None,
            }),
        }
    }
}
