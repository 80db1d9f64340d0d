//! What a container is (its definition, limits and volumes), what only
//! containers are asked and report (their extra processes and signals),
//! and how one ended.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::PortForward;
use crate::workload::{OutputStream, WorkloadId};

/// What only a container is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerCommand {
    /// Close the process's stdin (pipes mode): end of input.
    CloseInput,
    /// Start another process in the running container (e.g. a shell), with
    /// the init's user, capabilities and environment. Without a terminal its
    /// stdin is empty.
    Exec {
        /// The caller's number for this process (named in its events).
        exec: u32,
        /// argv.
        command: Vec<String>,
        /// Give it a pseudo-terminal.
        terminal: bool,
    },
    /// Bytes for an exec'd process's terminal.
    ExecInput {
        /// Which process.
        exec: u32,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Tell an exec'd process's terminal its new size.
    ExecResize {
        /// Which process.
        exec: u32,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Send a signal to the container's init process.
    Signal(i32),
}

/// What only a container reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerEvent {
    /// An exec'd process runs.
    ExecStarted {
        /// The caller's number for it.
        exec: u32,
        /// Its host pid.
        pid: i32,
    },
    /// Output of an exec'd process.
    ExecOutput {
        /// Which process.
        exec: u32,
        /// Which stream.
        stream: OutputStream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// An exec'd process ended; its output has all been reported.
    ExecExited {
        /// Which process.
        exec: u32,
        /// How (limits and `stopped_by_user` are not tracked per process).
        exit: ContainerExit,
    },
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
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.image.trim().is_empty() {
            return Err(ConfigError::NoImage);
        }
        if let Some(mib) = self.limits.memory_mib {
            // Below a few MiB not even the runtime's init fits.
            if !(4..=(1 << 30)).contains(&mib) {
                return Err(ConfigError::MemoryOutOfRange { mib });
            }
        }
        if let Some(cpus) = self.limits.cpus {
            if !(cpus.is_finite() && (0.01..=1024.0).contains(&cpus)) {
                return Err(ConfigError::CpusOutOfRange { cpus });
            }
        }
        if let Some(p) = self.limits.pids {
            if p < 1 {
                return Err(ConfigError::NoPids);
            }
        }
        for e in &self.env {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() && !k.contains('\0') => {}
                _ => return Err(ConfigError::BadEnv { entry: e.clone() }),
            }
        }
        for v in &self.volumes {
            if !v.target.starts_with('/') || v.target.split('/').any(|c| c == "..") {
                return Err(ConfigError::VolumeTarget {
                    target: v.target.clone(),
                });
            }
            if !v.source.is_absolute() {
                return Err(ConfigError::VolumeSourceRelative {
                    path: v.source.clone(),
                });
            }
            if !v.source.exists() {
                return Err(ConfigError::VolumeSourceMissing {
                    path: v.source.clone(),
                });
            }
        }
        if !self.ports.is_empty() && self.network != NetworkMode::User {
            return Err(ConfigError::PortsWithoutNetwork);
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.host_port == 0 || p.guest_port == 0 {
                return Err(ConfigError::PortZero {
                    host_port: p.host_port,
                    container_port: p.guest_port,
                });
            }
            if self.ports[..i].iter().any(|q| q.host_port == p.host_port) {
                return Err(ConfigError::PortTwice { port: p.host_port });
            }
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                return Err(ConfigError::RelativeWorkdir { dir: w.clone() });
            }
        }
        Ok(())
    }
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

/// Settings that cannot work, found before anything runs.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The image name is blank.
    #[error("no image given")]
    NoImage,
    /// A memory limit too small for anything to run, or absurd.
    #[error("memory limit {mib} MiB is out of range (4 MiB or more)")]
    MemoryOutOfRange {
        /// The limit asked for.
        mib: u64,
    },
    /// A memory limit whose bytes do not fit in 64 bits.
    #[error("memory limit {mib} MiB is too large")]
    MemoryTooLarge {
        /// The limit asked for.
        mib: u64,
    },
    /// A CPU limit that is not a number of CPUs from 0.01 to 1024.
    #[error("CPU limit {cpus} is out of range (0.01 to 1024 CPUs)")]
    CpusOutOfRange {
        /// The limit asked for.
        cpus: f64,
    },
    /// A pids limit of 0.
    #[error("pids limit must be at least 1")]
    NoPids,
    /// An environment entry without a name.
    #[error("environment entry '{entry}' is not NAME=value")]
    BadEnv {
        /// The entry.
        entry: String,
    },
    /// A volume's target that is relative or climbs with `..`.
    #[error("volume target '{target}' must be an absolute path without '..'")]
    VolumeTarget {
        /// The target asked for.
        target: String,
    },
    /// A volume's host path that is relative.
    #[error("volume source '{}' must be an absolute path", path.display())]
    VolumeSourceRelative {
        /// The host path.
        path: PathBuf,
    },
    /// A volume's host path that is not there.
    #[error("volume source '{}' does not exist", path.display())]
    VolumeSourceMissing {
        /// The host path.
        path: PathBuf,
    },
    /// Port forwards without the network they forward into.
    #[error("port forwards need user-mode networking (network 'user')")]
    PortsWithoutNetwork,
    /// A port forward naming port 0.
    #[error("port forward {host_port}:{container_port} uses port 0")]
    PortZero {
        /// The host's side.
        host_port: u16,
        /// The container's side.
        container_port: u16,
    },
    /// Two forwards of one host port.
    #[error("host port {port} is forwarded twice")]
    PortTwice {
        /// The host port.
        port: u16,
    },
    /// A relative working directory.
    #[error("working directory '{dir}' must be absolute")]
    RelativeWorkdir {
        /// The directory asked for.
        dir: String,
    },
    /// An id that cannot name a container's directory.
    #[error("container id '{id}' must be 1-64 characters of a-z, 0-9, '_' or '-'")]
    BadId {
        /// The id.
        id: WorkloadId,
    },
    /// A built-in image that neither the store nor the set-up script's
    /// build has.
    #[error(
        "the image '{name}' is not in the store and {} does not exist: run packaging/setup.sh",
        dir.display()
    )]
    BuiltInImageMissing {
        /// The image's name.
        name: String,
        /// Where the set-up script builds it.
        dir: PathBuf,
    },
    /// Neither the settings nor the image name a command.
    #[error("the image '{image}' names no command: give one")]
    NoCommand {
        /// The image.
        image: String,
    },
    /// An exec without a command.
    #[error("no command given")]
    NoExecCommand,
    /// A user other than root for a rootless container.
    #[error(
        "user '{user}': a rootless container runs as root inside (only your own user is mapped into it)"
    )]
    RootlessUser {
        /// The user asked for.
        user: String,
    },
    /// A user name the image does not have.
    #[error("user '{user}' is not in the image's /etc/passwd")]
    UnknownUser {
        /// The name.
        user: String,
    },
    /// A group name the image does not have.
    #[error("group '{group}' is not in the image's /etc/group")]
    UnknownGroup {
        /// The name.
        group: String,
    },
    /// An image without layers: nothing to make a root of.
    #[error("the image has no layers")]
    NoLayers,
}
