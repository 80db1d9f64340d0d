//! Hangar's containers: Linux processes in their own namespaces and
//! cgroup, on a copy-on-write root made from an image of the [`images`]
//! store. The only crate that names libcontainer or an OCI registry.
//!
//! The OCI runtime is youki's libcontainer, but it never runs in this
//! process: it forks with raw `clone3` (measured to stall for seconds while
//! sibling threads are busy in malloc) and changes the process-wide working
//! directory. Each container gets its own single-threaded
//! [`helper`](helper) process — our own binary re-executed, like conmon —
//! which owns the libcontainer calls and reaps the container's init. One
//! helper is kept warm so its exec is off the critical path.
//!
//! The engine's container kind (in `hangar-engine`) drives the
//! [`ContainerRuntime`]: it checks what it can at once and hands the rest
//! to the container's supervisor thread, which reports through the API's
//! event sink.
#![warn(missing_docs)]

mod cgroup;
mod error;
pub mod helper;
pub mod images;
mod network;
mod rootfs;
mod runtime;
mod spec;

pub use cgroup::CgroupCounters;
pub use error::{
    ConfigError, ContainerError, HelperError, HelperReported, HostError, InternalError, PastaError,
};
pub use hangar_api::container::{
    ContainerConfig, ContainerExit, ContainerLimits, NetworkMode, Volume,
};
pub(crate) use hangar_api::error_text;
pub use helper::{helper_main, HelperCommand, HELPER_FD_ENV};
pub use network::PortForward;
pub use runtime::{
    ContainerRecord, ContainerRuntime, Control, RuntimePaths, BUILT_IN_IMAGES, RECORD_VERSION,
};
pub use spec::{
    runtime_spec_json, SpecInputs, SpecNetwork, BLOCKED_SYSCALLS, DEFAULT_CAPABILITIES,
};

#[cfg(test)]
mod tests {
    use super::*;

    /// What the runtime makes of a refused definition.
    fn validate(c: &ContainerConfig) -> Result<(), ContainerError> {
        Ok(c.validate()?)
    }

    #[test]
    fn validation_rejects_impossible_settings() {
        let ok = ContainerConfig::new("default");
        assert!(validate(&ok).is_ok());
        let mut c = ok.clone();
        c.limits.memory_mib = Some(1);
        let err = validate(&c).unwrap_err();
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
        assert!(validate(&c).is_err());
        let mut c = ok.clone();
        c.limits.pids = Some(0);
        assert!(validate(&c).is_err());
        let mut c = ok.clone();
        c.env.push("NOEQUALS".into());
        assert!(validate(&c).is_err());
        let mut c = ok.clone();
        c.volumes.push(Volume {
            source: "/".into(),
            target: "/a/../b".into(),
            read_only: false,
        });
        assert!(validate(&c).is_err());
        let mut c = ok.clone();
        c.volumes.push(Volume {
            source: "/no/such/dir/here".into(),
            target: "/data".into(),
            read_only: false,
        });
        let err = validate(&c).unwrap_err();
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
        assert!(validate(&c).is_err());
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
