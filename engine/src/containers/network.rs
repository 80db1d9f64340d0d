//! User-mode networking for a container: `pasta` (from passt) serving a
//! named network namespace that the container then joins. pasta copies the
//! host's addresses and routes into the namespace, maps the gateway address
//! to the host's loopback, and forwards host ports on 127.0.0.1 into the
//! container. No bridge, no iptables, nothing the host's other programs see
//! but the forwarded ports.
//!
//! As root the namespace is named (`ip netns add`) and pasta runs with
//! `--runas 0`; pasta bound to a named namespace exits when it is deleted,
//! and we stop it ourselves first (measured: pasta attached by PID does not
//! exit with its namespace).
//!
//! Rootless, pasta runs as the user and attaches by pid to the helper
//! process whose user and network namespaces the container shares, before
//! the container is created.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::ContainerError;

/// The address a container with user-mode networking sends DNS queries to
/// (its /etc/resolv.conf names it): pasta forwards them to the host's own
/// first name server, so the container resolves names as the host does.
pub const DNS_FORWARD_ADDR: &str = "169.254.1.1";

/// A host port on 127.0.0.1 forwarded to a port inside the container (TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    /// Port on the host's 127.0.0.1.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
}

/// A container's network namespace and the pasta process serving it.
/// Dropping it stops pasta and deletes the namespace.
pub(crate) struct UserNetwork {
    /// The named namespace (root); rootless pasta serves the container's
    /// own namespace instead.
    name: Option<String>,
    pasta_pid: Option<i32>,
    pid_file: PathBuf,
}

impl UserNetwork {
    /// Creates namespace `hangar-<id>` and starts pasta for it (root).
    pub(crate) fn start(
        id: &str,
        ports: &[PortForward],
        pid_file: PathBuf,
    ) -> Result<Self, ContainerError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(ContainerError::Internal(
                "named network namespaces need root; rootless containers attach pasta".into(),
            ));
        }
        let name = format!("hangar-{id}");
        run("ip", &["netns", "add", &name])?;
        // From here on, dropping `net` deletes the namespace.
        let mut net = UserNetwork {
            name: Some(name.clone()),
            pasta_pid: None,
            pid_file,
        };
        let mut args: Vec<String> = vec!["--runas".into(), "0".into(), "--netns".into(), name];
        args.extend(net.common_args(ports));
        net.spawn_pasta(
            &args,
            "is a forwarded port already in use? is the passt package installed?",
        )?;
        Ok(net)
    }

    /// Rootless: starts pasta for the network namespace of process `pid`
    /// (the container's helper, whose namespace the container shares;
    /// pasta joins its user namespace too).
    pub(crate) fn attach(
        pid: i32,
        ports: &[PortForward],
        pid_file: PathBuf,
    ) -> Result<Self, ContainerError> {
        let mut net = UserNetwork {
            name: None,
            pasta_pid: None,
            pid_file,
        };
        let mut args = net.common_args(ports);
        args.push(pid.to_string());
        net.spawn_pasta(
            &args,
            "is a forwarded port already in use? is the passt package installed? \
             an unprivileged user needs read-write access to /dev/net/tun (mode 0666, as Debian ships it)",
        )?;
        Ok(net)
    }

    fn common_args(&self, ports: &[PortForward]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--config-net".into(),
            "--quiet".into(),
            "--pid".into(),
            self.pid_file.display().to_string(),
            "-u".into(),
            "none".into(),
            "-T".into(),
            "none".into(),
            "-U".into(),
            "none".into(),
            "--dns-forward".into(),
            DNS_FORWARD_ADDR.into(),
        ];
        if ports.is_empty() {
            args.extend(["-t".into(), "none".into()]);
        }
        for p in ports {
            args.push("-t".into());
            args.push(format!("127.0.0.1/{}:{}", p.host_port, p.container_port));
        }
        args
    }

    /// Runs pasta (it daemonizes once the namespace is configured) and
    /// keeps its pid.
    fn spawn_pasta(&mut self, args: &[String], hint: &str) -> Result<(), ContainerError> {
        run_owned("pasta", args).map_err(|e| ContainerError::Host(format!("{e} ({hint})")))?;
        let pid = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        self.pasta_pid = pid;
        if pid.is_none() {
            return Err(ContainerError::Host(
                "pasta started but wrote no pid file".into(),
            ));
        }
        Ok(())
    }

    /// After an app that died: stops the pasta named in `pid_file` (if it
    /// is still there and is ours) and deletes namespace `hangar-<id>` (root).
    pub(crate) fn clean_up_after(id: &str, pid_file: &std::path::Path) {
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
        let name = format!("hangar-{id}");
        if PathBuf::from("/run/netns").join(&name).exists() {
            if let Err(e) = run("ip", &["netns", "del", &name]) {
                log::warn!("{e}");
            }
        }
    }

    /// The named namespace's path (root only).
    pub(crate) fn netns_path(&self) -> Option<PathBuf> {
        self.name
            .as_ref()
            .map(|n| PathBuf::from("/run/netns").join(n))
    }
}

impl Drop for UserNetwork {
    fn drop(&mut self) {
        if let Some(pid) = self.pasta_pid.take() {
            // SAFETY: kill with a pid we read from pasta's own pid file.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = std::fs::remove_file(&self.pid_file);
        if let Some(name) = &self.name {
            if let Err(e) = run("ip", &["netns", "del", name]) {
                log::warn!("{e}");
            }
        }
    }
}

fn run(prog: &str, args: &[&str]) -> Result<(), ContainerError> {
    let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run_owned(prog, &owned).map_err(ContainerError::Host)
}

fn run_owned(prog: &str, args: &[String]) -> Result<(), String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
