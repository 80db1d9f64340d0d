//! The init has exited (or the helper is gone): the exec'd processes that
//! went with it, the cgroup's counters (why it died), the runtime state,
//! the rest of the output, pasta; then the record and `Exited`.

use std::time::Instant;

use super::stdio::Stdio;
use super::{LoopEnd, LoopState, Supervisor};
use crate::cgroup::CgroupFiles;
use crate::helper::{HelperProcess, Reply, Request};
use crate::{error_text, CgroupCounters, ContainerError, ContainerExit};
use hangar_api::{ContainerEvent, Event, Exit, WorkloadState};

impl Supervisor {
    /// Cleans up after the main loop and reports how it ended.
    pub(super) fn handle_exit(
        &mut self,
        mut helper: HelperProcess,
        mut stdio: Stdio,
        cgroup: &CgroupFiles,
        end: LoopEnd,
        mut st: LoopState,
    ) {
        // Exec'd processes die with the container's pid namespace; their
        // exits may still be queued.
        while let Some(r) = helper.take_unasked() {
            self.on_exec_reply(r, &mut st.execs);
        }
        for e in st.execs.drain(..) {
            self.emit(Event::Container {
                id: self.id.clone(),
                event: ContainerEvent::ExecExited {
                    exec: e.n,
                    exit: ContainerExit {
                        code: 128 + libc::SIGKILL,
                        signal: Some(libc::SIGKILL),
                        ..Default::default()
                    },
                },
            });
        }
        let status = match end {
            LoopEnd::Exited(s) => Some(s),
            LoopEnd::HelperLost(e) => {
                self.emit(Event::Error {
                    id: self.id.clone(),
                    message: error_text(&e),
                    registers: None,
                });
                None
            }
        };
        // Read before Delete removes the cgroup: the last sample (whole
        // CPU time used) and why it died.
        let t_exit = Instant::now();
        let counters = cgroup.counters();
        self.emit_stats(cgroup);
        match helper.request(&Request::Delete, &[]) {
            Ok((Reply::Done, _)) => {}
            Ok((Reply::Failed { message }, _)) => self.emit(Event::Error {
                id: self.id.clone(),
                message: error_text(&ContainerError::runtime(
                    "clean up the container's runtime state",
                    message,
                )),
                registers: None,
            }),
            Ok(_) | Err(_) => {}
        }
        let t_deleted = Instant::now();
        helper.finish();
        // Now that neither the container nor the helper holds a writer,
        // the streams end as soon as they are read out.
        self.drain_output(&mut stdio);
        // Stops pasta.
        self.network = None;
        log::debug!(
            "container {}: exit handled in {:?} (counters + delete {:?})",
            self.id,
            t_exit.elapsed(),
            t_deleted - t_exit,
        );
        let mut exit = match status {
            Some(s) => decode_status(s, counters, st.stopped_by_user),
            None => ContainerExit {
                code: 255,
                stopped_by_user: st.stopped_by_user,
                ..Default::default()
            },
        };
        exit.ended_with_app = st.ended_with_app;
        if let Err(e) = self.record(Some(exit.clone()), None) {
            log::warn!("container {}: {}", self.id, error_text(&e));
        }
        // The state changes before anyone hears of the exit, so a Remove
        // sent in answer to the event is accepted.
        if let Ok(mut state) = self.state.lock() {
            *state = WorkloadState::Stopped;
        }
        self.emit(Event::Exited {
            id: self.id.clone(),
            exit: Exit::container(exit, &self.config.limits),
        });
        self.set_state(WorkloadState::Stopped);
    }
}

pub(super) fn decode_status(
    status: i32,
    counters: CgroupCounters,
    stopped_by_user: bool,
) -> ContainerExit {
    let (code, signal) = if libc::WIFSIGNALED(status) {
        let s = libc::WTERMSIG(status);
        (128 + s, Some(s))
    } else {
        (libc::WEXITSTATUS(status), None)
    };
    ContainerExit {
        code,
        signal,
        oom_killed: counters.oom_kills > 0,
        pids_limit_hits: counters.pids_max_hits,
        stopped_by_user,
        ended_with_app: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_become_exit_codes_as_shells_give_them() {
        // Raw wait statuses: exit code in the second byte, a signal in the
        // low seven bits.
        let exited = decode_status(3 << 8, CgroupCounters::default(), false);
        assert_eq!((exited.code, exited.signal), (3, None));
        let killed = decode_status(
            libc::SIGKILL,
            CgroupCounters {
                oom_kills: 1,
                pids_max_hits: 2,
            },
            true,
        );
        assert_eq!((killed.code, killed.signal), (137, Some(libc::SIGKILL)));
        assert!(killed.oom_killed && killed.stopped_by_user && !killed.ended_with_app);
        assert_eq!(killed.pids_limit_hits, 2);
    }
}
