//! Exec: another process in the running container, started through the
//! same helper with the init's process settings; its output is polled
//! beside the init's, and the helper reports its exit unasked.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use super::exit::decode_status;
use super::stdio::{output_fds, poll, pollfd, read_some, stdio_pipes, Stdio, DRAIN_TIMEOUT};
use super::{unexpected, LoopState, Supervisor};
use crate::helper::{HelperProcess, Reply, Request};
use crate::{error_text, CgroupCounters, ConfigError, ContainerError, HelperError, InternalError};
use hangar_api::{ContainerEvent, Event};

/// A process started in a running container.
pub(super) struct ExecSession {
    pub(super) n: u32,
    pub(super) pid: i32,
    pub(super) stdio: Stdio,
}

impl Supervisor {
    /// Control::Exec: refused while paused (the process could not start
    /// in a frozen cgroup); its start, or why not, is reported.
    pub(super) fn start_exec(
        &self,
        helper: &mut HelperProcess,
        st: &mut LoopState,
        n: u32,
        command: Vec<String>,
        terminal: bool,
    ) {
        if st.frozen {
            self.emit(Event::Error {
                id: self.id.clone(),
                message: format!("cannot run process {n} in the container: it is paused"),
                registers: None,
            });
            return;
        }
        match self.exec(helper, n, command, terminal) {
            Ok(session) => {
                self.emit(Event::Container {
                    id: self.id.clone(),
                    event: ContainerEvent::ExecStarted {
                        exec: n,
                        pid: session.pid,
                    },
                });
                st.execs.push(session);
            }
            Err(e) => self.emit(Event::Error {
                id: self.id.clone(),
                message: format!(
                    "cannot run process {n} in the container: {}",
                    error_text(&e)
                ),
                registers: None,
            }),
        }
    }

    /// Starts `command` in the running container with the init's
    /// settings (user, capabilities, environment, seccomp).
    fn exec(
        &self,
        helper: &mut HelperProcess,
        n: u32,
        command: Vec<String>,
        terminal: bool,
    ) -> Result<ExecSession, ContainerError> {
        if command.is_empty() {
            return Err(ConfigError::NoExecCommand.into());
        }
        let spec_path = self.dir.join("bundle/config.json");
        let spec: serde_json::Value = std::fs::read(&spec_path)
            .map_err(ContainerError::io("read", &spec_path))
            .and_then(|b| {
                serde_json::from_slice(&b).map_err(|source| {
                    InternalError::ReadSpec {
                        path: spec_path.clone(),
                        source,
                    }
                    .into()
                })
            })?;
        let mut process = spec["process"].clone();
        process["args"] = serde_json::json!(command);
        process["terminal"] = terminal.into();
        if terminal {
            if let Some(env) = process["env"].as_array_mut() {
                if !env
                    .iter()
                    .any(|e| e.as_str().is_some_and(|s| s.starts_with("TERM=")))
                {
                    env.push("TERM=xterm-256color".into());
                }
            }
        }
        let process_path = self.dir.join(format!("exec-{n}.json"));
        std::fs::write(&process_path, process.to_string())
            .map_err(ContainerError::io("write", &process_path))?;

        let (stdio, child_fds) = if terminal {
            (None, Vec::new())
        } else {
            // No input: stdin is a pipe whose writer is closed at once.
            let (s, fds) = stdio_pipes(false)?;
            (Some(s), fds)
        };
        let raw: Vec<RawFd> = child_fds.iter().map(|f| f.as_raw_fd()).collect();
        let reply = helper.request(
            &Request::Exec {
                process: process_path.clone(),
                terminal,
            },
            &raw,
        );
        drop(child_fds);
        let _ = std::fs::remove_file(&process_path);
        match reply? {
            (Reply::ExecStarted { pid }, fds) => {
                let stdio = match stdio {
                    Some(s) => s,
                    None => Stdio::Terminal(Some(File::from(
                        fds.into_iter().next().ok_or(HelperError::NoTerminal)?,
                    ))),
                };
                Ok(ExecSession { n, pid, stdio })
            }
            (Reply::Failed { message }, _) => Err(ContainerError::runtime("exec", message)),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// An exec'd process ended: its output is read out, then reported.
    pub(super) fn on_exec_reply(&mut self, reply: Reply, execs: &mut Vec<ExecSession>) {
        let Reply::ExecExited { pid, status } = reply else {
            return;
        };
        let Some(i) = execs.iter().position(|e| e.pid == pid) else {
            return;
        };
        let mut e = execs.remove(i);
        let until = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let outs = output_fds(&e.stdio);
            let now = Instant::now();
            if outs.is_empty() || now >= until {
                break;
            }
            let mut fds: Vec<libc::pollfd> = outs.iter().map(|(fd, _)| pollfd(*fd)).collect();
            if poll(&mut fds, until - now).is_err() {
                break;
            }
            for (j, (_, stream)) in outs.iter().enumerate() {
                if fds[j].revents != 0 {
                    if let Some(data) = read_some(&mut e.stdio, *stream) {
                        self.emit(Event::Container {
                            id: self.id.clone(),
                            event: ContainerEvent::ExecOutput {
                                exec: e.n,
                                stream: *stream,
                                data,
                            },
                        });
                    }
                }
            }
        }
        self.emit(Event::Container {
            id: self.id.clone(),
            event: ContainerEvent::ExecExited {
                exec: e.n,
                exit: decode_status(status, CgroupCounters::default(), false),
            },
        });
    }
}
