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
//! The engine's container kind ([`crate::kinds::container`]) drives the
//! runtime: it checks what it can at once and hands the rest to the
//! container's supervisor thread, which reports through the engine's one
//! event channel.

mod cgroup;
mod error;
pub mod helper;
mod network;
mod rootfs;
pub(crate) mod runtime;
mod spec;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub(crate) use crate::api::error_text;
pub use cgroup::CgroupCounters;
pub use error::{
    ConfigError, ContainerError, HelperError, HelperReported, HostError, InternalError, PastaError,
};
pub use helper::{helper_main, HelperCommand, HELPER_FD_ENV};
pub use network::PortForward;
pub(crate) use runtime::ContainerRuntime;
pub use runtime::{ContainerRecord, RuntimePaths, BUILT_IN_IMAGES, RECORD_VERSION};
pub use spec::{
    runtime_spec_json, SpecInputs, SpecNetwork, BLOCKED_SYSCALLS, DEFAULT_CAPABILITIES,
};

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
        Ok(self.check()?)
    }

    fn check(&self) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_impossible_settings() {
        let ok = ContainerConfig::new("default");
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.limits.memory_mib = Some(1);
        let err = c.validate().unwrap_err();
        assert!(
            matches!(
                err,
                ContainerError::InvalidConfig(ConfigError::MemoryOutOfRange { mib: 1 })
            ),
            "{err:?}"
        );
        assert!(error_text(&err).contains("memory"), "{err:?}");
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
        let err = c.validate().unwrap_err();
        assert!(
            matches!(
                err,
                ContainerError::InvalidConfig(ConfigError::VolumeSourceMissing { .. })
            ),
            "{err:?}"
        );
        assert!(error_text(&err).contains("does not exist"), "{err:?}");
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
