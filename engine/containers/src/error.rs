//! Container errors. Each says what was being done and keeps the cause as
//! its source, so a message never repeats its source's text; one-line
//! reports (events, records, logs) join the chain with ": "
//! ([`hangar_api::error_text`]). The helper process's failures arrive as its own
//! text ([`HelperReported`]): an error cannot cross the socket as a value.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::images::ImageError;
pub use hangar_api::container::ConfigError;
use hangar_api::{WorkloadId, WorkloadState};

/// Container errors.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The user's configuration cannot work.
    #[error("invalid container settings")]
    InvalidConfig(#[source] ConfigError),
    /// The image could not be found or used.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// No container by that id.
    #[error("no container '{0}'")]
    NotFound(WorkloadId),
    /// The id is taken.
    #[error("a container '{0}' already exists")]
    Exists(WorkloadId),
    /// The request does not fit the container's state.
    #[error("container '{id}' is {state:?}: cannot {what}")]
    WrongState {
        /// Which container.
        id: WorkloadId,
        /// Its state.
        state: WorkloadState,
        /// What was asked.
        what: &'static str,
    },
    /// The host cannot run containers (not root and no rootless set-up,
    /// no cgroup, no overlayfs, no pasta).
    #[error("this host cannot run containers")]
    Host(#[source] HostError),
    /// A file system operation failed.
    #[error("cannot {what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The OCI runtime (in the helper process) refused or failed.
    #[error("container runtime: cannot {what}")]
    Runtime {
        /// What was asked of it.
        what: &'static str,
        /// What the helper answered.
        source: HelperReported,
    },
    /// The helper process could not be started, died, or broke the
    /// protocol.
    #[error("container helper process")]
    Helper(#[source] HelperError),
    /// A bug or an impossible state.
    #[error("internal error")]
    Internal(#[source] InternalError),
}

impl ContainerError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ContainerError {
        let path = path.into();
        move |source| ContainerError::Io { what, path, source }
    }

    /// `what` failed in the helper, which said `message`.
    pub(crate) fn runtime(what: &'static str, message: String) -> ContainerError {
        ContainerError::Runtime {
            what,
            source: HelperReported { message },
        }
    }
}

impl From<ConfigError> for ContainerError {
    fn from(e: ConfigError) -> Self {
        ContainerError::InvalidConfig(e)
    }
}

impl From<HostError> for ContainerError {
    fn from(e: HostError) -> Self {
        ContainerError::Host(e)
    }
}

impl From<HelperError> for ContainerError {
    fn from(e: HelperError) -> Self {
        ContainerError::Helper(e)
    }
}

impl From<InternalError> for ContainerError {
    fn from(e: InternalError) -> Self {
        ContainerError::Internal(e)
    }
}

/// What the host lacks for containers.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No data directory for the containers' files.
    #[error("no data directory")]
    NoDataDir(#[source] hangar_api::dirs::NoDataDir),
    /// Rootless without a session's runtime directory for the OCI
    /// runtime's state.
    #[error("XDG_RUNTIME_DIR is not set (no user session)")]
    NoRuntimeDir,
    /// A limit the engine writes into the container's cgroup (rootless)
    /// was refused.
    #[error("cannot set the limit {} = {value}", path.display())]
    SetLimit {
        /// The cgroup file.
        path: PathBuf,
        /// The value written.
        value: String,
        /// Why not.
        source: std::io::Error,
    },
    /// cgroup v2, rootless, outside the cgroup systemd delegates to the
    /// user.
    #[error(
        "rootless containers need the cgroup systemd delegates to you ({service}); \
         this process is in '{own}': start Hangar from your desktop session"
    )]
    NotInUserService {
        /// `user@<uid>.service`.
        service: String,
        /// The cgroup this process is in.
        own: String,
    },
    /// cgroup v2, rootless: a controller the containers need could not be
    /// given to them.
    #[error(
        "cannot enable {controller} for rootless containers in {} \
         (is the controller delegated to your user?)",
        subtree.display()
    )]
    EnableController {
        /// The controller.
        controller: &'static str,
        /// The `cgroup.subtree_control` file.
        subtree: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
    /// cgroup v1, rootless: the user's parent cgroup was not delegated.
    #[error(
        "rootless containers need a cgroup delegated to you: {} is missing or not yours; \
         as root run `packaging/delegate-cgroup <your user name>` (the set-up script does; \
         cgroup v1 hierarchies are empty again after a reboot)",
        dir.display()
    )]
    NoDelegatedCgroup {
        /// The cgroup directory that should be the user's.
        dir: PathBuf,
    },
    /// pasta could not serve the container's network.
    #[error("cannot start user-mode networking ({hint})")]
    Pasta {
        /// What usually causes it.
        hint: &'static str,
        /// What pasta said.
        source: PastaError,
    },
    /// pasta ran but left no pid to stop it by.
    #[error("pasta started but wrote no pid file")]
    PastaNoPid,
    /// As root, the helper's network namespace could not be bound for
    /// pasta.
    #[error("cannot bind the container's network namespace on {}", at.display())]
    BindNetns {
        /// The file it is bound on.
        at: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
    /// A path overlayfs cannot take in its options.
    #[error(
        "path '{}' contains ',', ':' or '\\', which overlayfs cannot take",
        path.display()
    )]
    OverlayPath {
        /// The path.
        path: PathBuf,
    },
    /// More layers than one overlay mount's options hold.
    #[error("the image has too many layers ({layers}) for one overlay mount")]
    TooManyLayers {
        /// The image's layers.
        layers: usize,
    },
    /// The overlay root could not be mounted.
    #[error("cannot mount the container's overlay root on {}", target.display())]
    MountOverlay {
        /// The mount point.
        target: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
}

/// Why pasta did not run.
#[derive(Debug, thiserror::Error)]
pub enum PastaError {
    /// It could not be started.
    #[error("cannot run pasta")]
    Spawn(#[source] std::io::Error),
    /// It exited with an error.
    #[error("pasta {args} failed: {stderr}")]
    Failed {
        /// Its arguments.
        args: String,
        /// What it printed.
        stderr: String,
    },
}

/// A request the helper process could not carry out, in its own words: the
/// helper's error chain as text, since an error cannot cross the socket as
/// a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HelperReported {
    /// The helper's message (its error chain joined with ": ").
    pub message: String,
}

/// The helper process could not be started, died, or broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// Its socket pair could not be made.
    #[error("cannot create its socket pair")]
    SocketPair(#[source] std::io::Error),
    /// The program could not be started.
    #[error("cannot start {}", program.display())]
    Spawn {
        /// The helper's executable.
        program: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
    /// It said nothing in time.
    #[error("it was not ready after {timeout:?}")]
    NotReady {
        /// How long it had.
        timeout: Duration,
    },
    /// It could not make its namespaces.
    #[error("it could not set itself up")]
    SetUp(#[source] HelperReported),
    /// Its socket failed or closed.
    #[error("lost contact{}", exit_note(.exit))]
    LostContact {
        /// How it ended, if it has.
        exit: Option<ExitStatus>,
        /// What the socket said.
        source: std::io::Error,
    },
    /// A terminal was asked for and none came with the reply.
    #[error("it sent no terminal")]
    NoTerminal,
    /// A reply that does not answer the request.
    #[error("it gave an unexpected reply ({reply})")]
    UnexpectedReply {
        /// The reply, as written for debugging.
        reply: String,
    },
}

fn exit_note(exit: &Option<ExitStatus>) -> String {
    exit.map(|s| format!(" (it exited: {s})"))
        .unwrap_or_default()
}

/// A bug or an impossible state: the variant says which.
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    /// A lock was poisoned by a panic.
    #[error("the {what} is poisoned")]
    Poisoned {
        /// What it guards.
        what: &'static str,
    },
    /// The container's supervisor thread ended while the runtime still
    /// lists it.
    #[error("the supervisor of '{id}' is gone")]
    SupervisorGone {
        /// The container.
        id: WorkloadId,
    },
    /// Its supervisor could not be woken for a request.
    #[error("cannot wake the supervisor")]
    WakeSupervisor(#[source] std::io::Error),
    /// No eventfd for the supervisor's wake-ups.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// A thread could not be started.
    #[error("cannot start the {what} thread")]
    SpawnThread {
        /// Which thread.
        what: &'static str,
        /// Why not.
        source: std::io::Error,
    },
    /// `container.json` could not be encoded.
    #[error("cannot encode the container's record")]
    EncodeRecord(#[source] serde_json::Error),
    /// The runtime spec could not be turned into JSON.
    #[error("cannot encode the runtime spec")]
    EncodeSpec(#[source] serde_json::Error),
    /// The spec the engine built does not fit the OCI types.
    #[error("the generated runtime spec is invalid")]
    InvalidSpec(#[source] serde_json::Error),
    /// The runtime spec could not be written.
    #[error("cannot write {}", path.display())]
    WriteSpec {
        /// `config.json`.
        path: PathBuf,
        /// Why not.
        source: libcontainer::oci_spec::OciSpecError,
    },
    /// The container's runtime spec could not be read back (for an exec).
    #[error("cannot parse the runtime spec {}", path.display())]
    ReadSpec {
        /// `config.json`.
        path: PathBuf,
        /// Why not.
        source: serde_json::Error,
    },
    /// Waiting on the container's descriptors failed.
    #[error("poll failed")]
    Poll(#[source] std::io::Error),
    /// No pipe for the process's stdio.
    #[error("cannot create a pipe")]
    Pipe(#[source] std::io::Error),
    /// A path with a NUL byte, which no system call takes.
    #[error("NUL in the path {path:?}")]
    NulInPath {
        /// The path.
        path: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_api::error_text;

    #[test]
    fn messages_say_what_was_done_and_the_chain_says_why() {
        let e =
            ContainerError::io("create", "/x/y")(std::io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.to_string(), "cannot create /x/y");
        assert!(
            error_text(&e).starts_with("cannot create /x/y: Permission denied"),
            "{}",
            error_text(&e)
        );
        let e = ContainerError::runtime("start", "exec failed: no such file".into());
        assert_eq!(e.to_string(), "container runtime: cannot start");
        assert_eq!(
            error_text(&e),
            "container runtime: cannot start: exec failed: no such file"
        );
        let e = ContainerError::from(HelperError::LostContact {
            exit: None,
            source: std::io::Error::other("it closed its socket"),
        });
        assert_eq!(
            error_text(&e),
            "container helper process: lost contact: it closed its socket"
        );
    }

    #[test]
    fn a_source_a_library_already_repeated_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("digest error: {0}")]
        struct Repeating(#[source] std::io::Error);
        let e = ContainerError::from(HelperError::Spawn {
            program: "/h".into(),
            source: std::io::Error::other(Repeating(std::io::Error::other("bad digest"))),
        });
        assert_eq!(
            error_text(&e),
            "container helper process: cannot start /h: digest error: bad digest"
        );
    }

    #[test]
    fn no_message_repeats_its_source() {
        let io = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let errors: Vec<ContainerError> = vec![
            ContainerError::io("read", "/a")(io()),
            HostError::SetLimit {
                path: "/sys/fs/cgroup/x/memory.max".into(),
                value: "1".into(),
                source: io(),
            }
            .into(),
            HostError::MountOverlay {
                target: "/r".into(),
                source: io(),
            }
            .into(),
            HostError::Pasta {
                hint: "hint",
                source: PastaError::Spawn(io()),
            }
            .into(),
            HelperError::Spawn {
                program: "/bin/helper".into(),
                source: io(),
            }
            .into(),
            InternalError::Pipe(io()).into(),
        ];
        for e in &errors {
            let mut cur: Option<&dyn std::error::Error> = Some(e);
            while let Some(outer) = cur {
                if let Some(inner) = outer.source() {
                    assert!(
                        !outer.to_string().contains(&inner.to_string()),
                        "'{outer}' repeats '{inner}'"
                    );
                }
                cur = outer.source();
            }
        }
    }
}
