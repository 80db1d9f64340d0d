//! User-mode networking for a container: `pasta` (from passt) serving the
//! network namespace of the container's helper process, which the container
//! shares. pasta copies the host's addresses and routes into the namespace,
//! maps the gateway address to the host's loopback, forwards DNS queries to
//! the host's name server, and forwards host ports on 127.0.0.1 into the
//! container. No bridge, no iptables, nothing the host's other programs see
//! but the forwarded ports.
//!
//! pasta attaches before the container is created. Rootless it runs as the
//! user and attaches by the helper's pid (joining its user namespace too).
//! As root it runs with `--runas 0`, but with its capabilities dropped it
//! may not open a root process's namespaces through /proc, so the engine
//! bind-mounts the helper's network namespace on a file in the runtime
//! directory (what `ip netns attach` does) and pasta joins that. Measured:
//! pasta does not exit with its namespace, so dropping [`UserNetwork`]
//! stops it (and unmounts the file).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{ContainerError, HostError, InternalError, PastaError};

/// The address a container with user-mode networking sends DNS queries to
/// (its /etc/resolv.conf names it): pasta forwards them to the host's own
/// first name server, so the container resolves names as the host does.
pub const DNS_FORWARD_ADDR: &str = "169.254.1.1";

/// A host port on 127.0.0.1 forwarded to a port inside the container
/// (TCP): the one port-forward type every kind shares.
pub use hangar_api::config::PortForward;

/// The pasta process serving a container's network namespace; dropping it
/// stops pasta.
pub(crate) struct UserNetwork {
    pasta_pid: Option<i32>,
    pid_file: PathBuf,
    /// Root: the file the helper's network namespace is bound to.
    ns_file: Option<PathBuf>,
}

impl UserNetwork {
    /// Starts pasta for the network namespace of process `pid` (the
    /// container's helper); it daemonizes once the namespace is configured.
    /// `ns_file`: where root binds that namespace for pasta.
    pub(crate) fn attach(
        pid: i32,
        ports: &[PortForward],
        pid_file: PathBuf,
        ns_file: &Path,
    ) -> Result<Self, ContainerError> {
        let mut net = UserNetwork {
            pasta_pid: None,
            pid_file,
            ns_file: None,
        };
        let mut args: Vec<String> = Vec::new();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            bind_netns(pid, ns_file)?;
            net.ns_file = Some(ns_file.to_path_buf());
            // Without --runas, pasta run as root switches to nobody.
            args.extend([
                "--runas".into(),
                "0".into(),
                "--netns".into(),
                ns_file.display().to_string(),
            ]);
        }
        args.extend([
            "--config-net".into(),
            "--quiet".into(),
            "--pid".into(),
            net.pid_file.display().to_string(),
            "-u".into(),
            "none".into(),
            "-T".into(),
            "none".into(),
            "-U".into(),
            "none".into(),
            "--dns-forward".into(),
            DNS_FORWARD_ADDR.into(),
        ]);
        if ports.is_empty() {
            args.extend(["-t".into(), "none".into()]);
        }
        for p in ports {
            args.push("-t".into());
            args.push(format!("127.0.0.1/{}:{}", p.host_port, p.guest_port));
        }
        if !root {
            args.push(pid.to_string());
        }
        let mut hint = "is a forwarded port already in use? is the passt package installed?";
        if !root {
            hint = "is a forwarded port already in use? is the passt package installed? \
                    an unprivileged user needs read-write access to /dev/net/tun \
                    (mode 0666, as Debian ships it)";
        }
        run_pasta(&args).map_err(|source| HostError::Pasta { hint, source })?;
        let read = std::fs::read_to_string(&net.pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        net.pasta_pid = read;
        if read.is_none() {
            return Err(HostError::PastaNoPid.into());
        }
        Ok(net)
    }

    /// After an app that died: stops the pasta named in `pid_file`, if it
    /// is still there and is ours, and unbinds `ns_file`.
    pub(crate) fn clean_up_after(pid_file: &Path, ns_file: &Path) {
        unbind_netns(ns_file);
        let pid: Option<i32> = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if let Some(pid) = pid.filter(|p| *p > 0) {
            // Only a pasta started with this very pid file: the pid may have
            // been reused since.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_pasta = args.first().is_some_and(|a| a.ends_with(b"pasta"));
            let ours = args.contains(&pid_file.as_os_str().as_encoded_bytes());
            if is_pasta && ours {
                // SAFETY: kill with a pid just checked to be our pasta.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let _ = std::fs::remove_file(pid_file);
    }
}

impl Drop for UserNetwork {
    fn drop(&mut self) {
        if let Some(pid) = self.pasta_pid.take() {
            // SAFETY: kill with a pid we read from pasta's own pid file.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = std::fs::remove_file(&self.pid_file);
        if let Some(f) = self.ns_file.take() {
            unbind_netns(&f);
        }
    }
}

/// Binds the network namespace of process `pid` on the file `at`.
fn bind_netns(pid: i32, at: &Path) -> Result<(), ContainerError> {
    std::fs::File::create(at).map_err(ContainerError::io("create", at))?;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| InternalError::NulInPath { path: p.into() })
    };
    let (src, dst) = (c(Path::new(&format!("/proc/{pid}/ns/net")))?, c(at)?);
    // SAFETY: valid NUL-terminated paths; a bind mount takes no data.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if r != 0 {
        let source = std::io::Error::last_os_error();
        let _ = std::fs::remove_file(at);
        return Err(HostError::BindNetns {
            at: at.to_path_buf(),
            source,
        }
        .into());
    }
    Ok(())
}

/// Undoes [`bind_netns`]; nothing there is fine.
fn unbind_netns(at: &Path) {
    if let Ok(c) = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()) {
        // SAFETY: valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_file(at);
}

fn run_pasta(args: &[String]) -> Result<(), PastaError> {
    let out = Command::new("pasta")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(PastaError::Spawn)?;
    if !out.status.success() {
        return Err(PastaError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}
