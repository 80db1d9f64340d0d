//! Containers: Linux processes in their own namespaces and cgroup, on a
//! copy-on-write root made from an image of the [`crate::images`] store.
//!
//! The OCI runtime is youki's libcontainer, but it never runs in this
//! process: it forks with raw `clone3` (measured to stall for seconds while
//! sibling threads are busy in malloc) and changes the process-wide working
//! directory. Each container gets its own single-threaded
//! [`helper`](helper) process — our own binary re-executed, like conmon —
//! which owns the libcontainer calls and reaps the container's init. One
//! helper is kept warm so its exec is off the critical path.
//!
//! Protocol: [`ContainerRuntime::new`] gives the runtime and the receiving
//! end of its [`ContainerEvent`] channel; [`ContainerRuntime::execute`]
//! takes a [`ContainerCommand`], checks what it can at once, and hands the
//! rest to the container's supervisor thread, which reports through events
//! and calls the waker after each one.

mod cgroup;
pub mod helper;
mod network;
mod rootfs;
mod runtime;
mod spec;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use cgroup::CgroupCounters;
pub use helper::{helper_main, HelperCommand, HELPER_FD_ENV};
pub use network::PortForward;
pub use runtime::{ContainerRecord, ContainerRuntime, RuntimePaths, BUILT_IN_IMAGES};
pub use spec::{
    runtime_spec_json, SpecInputs, SpecNetwork, BLOCKED_SYSCALLS, DEFAULT_CAPABILITIES,
};

/// Names a container: 12 lowercase hex digits, like Docker's short ids. It
/// is also the container's hostname and its cgroup's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerId(pub String);

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Resource limits; `None` leaves a resource unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerLimits {
    /// Memory (RAM, no swap beyond what the host allows) in MiB.
    pub memory_mib: Option<u64>,
    /// CPU time as a number of CPUs (0.5 = half of one CPU).
    pub cpus: Option<f64>,
    /// Number of processes and threads.
    pub pids: Option<u64>,
}

/// A host directory bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Host path (must exist).
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// How the container reaches the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// An empty network namespace: loopback only.
    #[default]
    None,
    /// User-mode networking through pasta: outgoing connections as the
    /// host's, the gateway address reaching the host's loopback, and the
    /// configured port forwards (root only for now).
    User,
}

/// What to run. [`ContainerConfig::new`] gives the image's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Image name in the store (`default` is imported on first use from
    /// the set-up script's build if it is not there yet).
    pub image: String,
    /// argv; empty runs the image's entrypoint + cmd.
    pub command: Vec<String>,
    /// `NAME=value` entries, over the image's environment.
    pub env: Vec<String>,
    /// Working directory; `None` uses the image's (or `/`).
    pub workdir: Option<String>,
    /// `uid[:gid]` or a user name from the image's `/etc/passwd`; `None`
    /// uses the image's user (or root).
    pub user: Option<String>,
    /// Limits.
    pub limits: ContainerLimits,
    /// Network.
    pub network: NetworkMode,
    /// Host ports on 127.0.0.1 forwarded into the container (with
    /// [`NetworkMode::User`]).
    #[serde(default)]
    pub ports: Vec<PortForward>,
    /// Bind mounts.
    pub volumes: Vec<Volume>,
    /// Give the process a pseudo-terminal (interactive shells) instead of
    /// pipes (separate stdout and stderr).
    pub terminal: bool,
}

impl ContainerConfig {
    /// The image's defaults, no limits, no network, pipes.
    pub fn new(image: &str) -> Self {
        Self {
            image: image.to_string(),
            command: Vec::new(),
            env: Vec::new(),
            workdir: None,
            user: None,
            limits: ContainerLimits::default(),
            network: NetworkMode::None,
            ports: Vec::new(),
            volumes: Vec::new(),
            terminal: false,
        }
    }

    /// Checks what can be checked without the image or the host.
    pub fn validate(&self) -> Result<(), ContainerError> {
        let bad = |m: String| Err(ContainerError::InvalidConfig(m));
        if self.image.trim().is_empty() {
            return bad("no image given".into());
        }
        if let Some(m) = self.limits.memory_mib {
            // Below a few MiB not even the runtime's init fits.
            if !(4..=(1 << 30)).contains(&m) {
                return bad(format!(
                    "memory limit {m} MiB is out of range (4 MiB or more)"
                ));
            }
        }
        if let Some(c) = self.limits.cpus {
            if !(c.is_finite() && (0.01..=1024.0).contains(&c)) {
                return bad(format!("CPU limit {c} is out of range (0.01 to 1024 CPUs)"));
            }
        }
        if let Some(p) = self.limits.pids {
            if p < 1 {
                return bad("pids limit must be at least 1".into());
            }
        }
        for e in &self.env {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() && !k.contains('\0') => {}
                _ => return bad(format!("environment entry '{e}' is not NAME=value")),
            }
        }
        for v in &self.volumes {
            if !v.target.starts_with('/') || v.target.split('/').any(|c| c == "..") {
                return bad(format!(
                    "volume target '{}' must be an absolute path without '..'",
                    v.target
                ));
            }
            if !v.source.is_absolute() {
                return bad(format!(
                    "volume source '{}' must be an absolute path",
                    v.source.display()
                ));
            }
            if !v.source.exists() {
                return bad(format!(
                    "volume source '{}' does not exist",
                    v.source.display()
                ));
            }
        }
        if !self.ports.is_empty() && self.network != NetworkMode::User {
            return bad("port forwards need user-mode networking (network 'user')".into());
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.host_port == 0 || p.container_port == 0 {
                return bad(format!(
                    "port forward {}:{} uses port 0",
                    p.host_port, p.container_port
                ));
            }
            if self.ports[..i].iter().any(|q| q.host_port == p.host_port) {
                return bad(format!("host port {} is forwarded twice", p.host_port));
            }
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                return bad(format!("working directory '{w}' must be absolute"));
            }
        }
        Ok(())
    }
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Root filesystem and runtime being prepared.
    Creating,
    /// Its process runs.
    Running,
    /// Asked to stop; waiting for the grace period.
    Stopping,
    /// Its process has ended; logs and the writable layer are kept until
    /// removal.
    Exited,
    /// It could not be created or started.
    Failed,
}

/// How the container's process ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerExit {
    /// Exit code (a signal death counts as 128 + signal, as shells do).
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the container at its
    /// memory limit.
    pub oom_killed: bool,
    /// How many forks the pids limit refused.
    pub pids_limit_hits: u64,
    /// Stopped on request (stop or kill), not by itself.
    pub stopped_by_user: bool,
    /// Stopped because the app using the engine ended (closed, or died:
    /// the helper kills a container its engine left).
    #[serde(default)]
    pub ended_with_app: bool,
}

impl ContainerExit {
    /// What happened, in plain words for a person (stderr, the log panel).
    pub fn describe(&self, limits: &ContainerLimits) -> String {
        let mut s = match self.signal {
            Some(sig) => format!("killed by signal {sig} ({})", signal_name(sig)),
            None => format!("exited with code {}", self.code),
        };
        if self.oom_killed {
            let lim = limits
                .memory_mib
                .map(|m| format!(" of {m} MiB"))
                .unwrap_or_default();
            s.push_str(&format!(
                "; out of memory: the memory limit{lim} was reached and the kernel killed it"
            ));
        }
        if self.pids_limit_hits > 0 {
            let lim = limits.pids.map(|p| format!(" of {p}")).unwrap_or_default();
            s.push_str(&format!(
                "; the process limit{lim} was reached ({} fork(s) refused)",
                self.pids_limit_hits
            ));
        }
        if self.stopped_by_user {
            s.push_str("; stopped on request");
        }
        if self.ended_with_app {
            s.push_str("; stopped when Hangar ended");
        }
        s
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "signal",
    }
}

/// Resource use, sampled once a second from the container's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// CPU time used by all its processes since it started.
    pub cpu_time: Duration,
    /// Memory charged to it, in bytes (page cache included).
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
}

/// Which stream output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputStream {
    /// Standard output (pipes mode).
    Stdout,
    /// Standard error (pipes mode).
    Stderr,
    /// The pseudo-terminal (terminal mode: both, interleaved, with escapes).
    Terminal,
}

/// What the caller asks of the runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ContainerCommand {
    /// Create a container and start its process.
    Run {
        /// The new container's id (see [`ContainerRuntime::new_id`]).
        id: ContainerId,
        /// What to run.
        config: ContainerConfig,
    },
    /// Bytes for the process's stdin (or terminal).
    Input {
        /// Which container.
        id: ContainerId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Close the process's stdin (pipes mode): end of input.
    CloseInput(ContainerId),
    /// Tell the terminal its new size.
    Resize {
        /// Which container.
        id: ContainerId,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// SIGTERM, then SIGKILL to every process after `grace`.
    Stop {
        /// Which container.
        id: ContainerId,
        /// How long it gets to exit by itself.
        grace: Duration,
    },
    /// Start another process in the running container (e.g. a shell), with
    /// the init's user, capabilities and environment. Without a terminal its
    /// stdin is empty.
    Exec {
        /// Which container.
        id: ContainerId,
        /// The caller's number for this process (named in its events).
        exec: u32,
        /// argv.
        command: Vec<String>,
        /// Give it a pseudo-terminal.
        terminal: bool,
    },
    /// Bytes for an exec'd process's terminal.
    ExecInput {
        /// Which container.
        id: ContainerId,
        /// Which process.
        exec: u32,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Tell an exec'd process's terminal its new size.
    ExecResize {
        /// Which container.
        id: ContainerId,
        /// Which process.
        exec: u32,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Send a signal to the container's init process.
    Kill {
        /// Which container.
        id: ContainerId,
        /// The signal number.
        signal: i32,
    },
    /// Delete an exited (or, forced, a running) container: its writable
    /// layer, log and runtime state.
    Remove {
        /// Which container.
        id: ContainerId,
        /// Kill it first if it still runs.
        force: bool,
    },
}

/// What the runtime reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ContainerEvent {
    /// The container moved to a new state.
    StateChanged {
        /// Which container.
        id: ContainerId,
        /// Its new state.
        state: ContainerState,
    },
    /// Its process started.
    Started {
        /// Which container.
        id: ContainerId,
        /// The init process's pid on the host.
        pid: i32,
        /// From the command to the process running.
        setup: Duration,
    },
    /// Output of the process.
    Output {
        /// Which container.
        id: ContainerId,
        /// Which stream.
        stream: OutputStream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Resource use.
    Stats {
        /// Which container.
        id: ContainerId,
        /// The sample.
        stats: ContainerStats,
    },
    /// The process ended; all output before it has been reported.
    Exited {
        /// Which container.
        id: ContainerId,
        /// How.
        exit: ContainerExit,
    },
    /// An exec'd process runs.
    ExecStarted {
        /// Which container.
        id: ContainerId,
        /// The caller's number for it.
        exec: u32,
        /// Its host pid.
        pid: i32,
    },
    /// Output of an exec'd process.
    ExecOutput {
        /// Which container.
        id: ContainerId,
        /// Which process.
        exec: u32,
        /// Which stream.
        stream: OutputStream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// An exec'd process ended; its output has all been reported.
    ExecExited {
        /// Which container.
        id: ContainerId,
        /// Which process.
        exec: u32,
        /// How (limits and `stopped_by_user` are not tracked per process).
        exit: ContainerExit,
    },
    /// The container is gone (after Remove).
    Removed(ContainerId),
    /// Something went wrong; said once, in plain words.
    Error {
        /// Which container.
        id: ContainerId,
        /// What.
        message: String,
    },
}

/// Container errors.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The user's configuration cannot work.
    #[error("invalid container settings: {0}")]
    InvalidConfig(String),
    /// The image could not be found or used.
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),
    /// No container by that id.
    #[error("no container '{0}'")]
    NotFound(ContainerId),
    /// The id is taken.
    #[error("a container '{0}' already exists")]
    Exists(ContainerId),
    /// The request does not fit the container's state.
    #[error("container '{id}' is {state:?}: cannot {what}")]
    WrongState {
        /// Which container.
        id: ContainerId,
        /// Its state.
        state: ContainerState,
        /// What was asked.
        what: &'static str,
    },
    /// The host cannot run containers (not root and no rootless set-up,
    /// no cgroup, no overlayfs).
    #[error("this host cannot run containers: {0}")]
    Host(String),
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The OCI runtime (in the helper process) refused or failed.
    #[error("container runtime: {0}")]
    Runtime(String),
    /// The helper process could not be started or died.
    #[error("container helper process: {0}")]
    Helper(String),
    /// A bug or an impossible state; the message says which.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ContainerError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ContainerError {
        let path = path.into();
        move |source| ContainerError::Io { what, path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_impossible_settings() {
        let ok = ContainerConfig::new("default");
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.limits.memory_mib = Some(1);
        assert!(
            matches!(c.validate(), Err(ContainerError::InvalidConfig(m)) if m.contains("memory"))
        );
        let mut c = ok.clone();
        c.limits.cpus = Some(f64::NAN);
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.limits.pids = Some(0);
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.env.push("NOEQUALS".into());
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.volumes.push(Volume {
            source: "/".into(),
            target: "/a/../b".into(),
            read_only: false,
        });
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.volumes.push(Volume {
            source: "/no/such/dir/here".into(),
            target: "/data".into(),
            read_only: false,
        });
        assert!(
            matches!(c.validate(), Err(ContainerError::InvalidConfig(m)) if m.contains("does not exist"))
        );
        let mut c = ok;
        c.image = " ".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn exit_description_names_the_limit() {
        let limits = ContainerLimits {
            memory_mib: Some(32),
            cpus: None,
            pids: Some(16),
        };
        let e = ContainerExit {
            code: 137,
            signal: Some(9),
            oom_killed: true,
            ..Default::default()
        };
        let d = e.describe(&limits);
        assert!(
            d.contains("SIGKILL") && d.contains("out of memory") && d.contains("32 MiB"),
            "{d}"
        );
        let e = ContainerExit {
            code: 1,
            pids_limit_hits: 5,
            ..Default::default()
        };
        let d = e.describe(&limits);
        assert!(
            d.contains("code 1") && d.contains("process limit of 16") && d.contains("5 fork"),
            "{d}"
        );
    }
}
