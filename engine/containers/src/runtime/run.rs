//! Creating and starting a container: the image (a built-in one imported
//! on first use), its user, environment and `config.json`, then the
//! helper's create and start.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Instant;

use super::stdio::{stdio_pipes, Stdio};
use super::{unexpected, valid_id, ContainerRuntime, Shared, Supervisor};
use crate::cgroup::CgroupFiles;
use crate::helper::{HelperProcess, OverlayRoot, Reply, Request};
use crate::images::{ImageError, ImageRecord};
use crate::network::UserNetwork;
use crate::spec::{self, build_spec, SpecInputs, SpecNetwork};
use crate::{
    rootfs, ConfigError, ContainerConfig, ContainerError, HelperError, InternalError, NetworkMode,
};
use hangar_api::{Event, WorkloadId};

impl ContainerRuntime {
    /// Creates a container and starts its process. Errors found at once
    /// are returned; the rest arrive as [`Event::Error`].
    pub fn run(&self, id: WorkloadId, config: ContainerConfig) -> Result<(), ContainerError> {
        let mut map = self.table()?;
        config.validate()?;
        if !valid_id(&id.0) {
            return Err(ConfigError::BadId { id }.into());
        }
        if map.contains_key(&id) || self.container_dir(&id).exists() {
            return Err(ContainerError::Exists(id));
        }
        let handle = self.spawn_supervisor(id.clone(), config)?;
        map.insert(id, handle);
        Ok(())
    }
}

/// The built-in images the set-up script builds as OCI layouts in
/// `<data>/images-src/<name>/`, imported on first use.
pub const BUILT_IN_IMAGES: &[&str] = &["default", "debian"];

/// The image, importing a built-in one from the set-up script's build when
/// the store does not have it yet.
fn resolve_image(shared: &Shared, name: &str) -> Result<ImageRecord, ContainerError> {
    match shared.images.get(name) {
        Err(ImageError::NotFound(_)) if BUILT_IN_IMAGES.contains(&name) => {
            let src = shared.paths.data_dir.join("images-src").join(name);
            if !src.join("index.json").exists() {
                return Err(ConfigError::BuiltInImageMissing {
                    name: name.to_string(),
                    dir: src,
                }
                .into());
            }
            Ok(shared.images.import(&src, Some(name), &mut |_| {})?)
        }
        r => Ok(r?),
    }
}

impl Supervisor {
    pub(super) fn create_and_start(
        &mut self,
        started: Instant,
    ) -> Result<(HelperProcess, Stdio), ContainerError> {
        let image = resolve_image(&self.shared, &self.config.image)?;
        let layers = self.shared.images.layer_roots(&image)?;
        let (upper, work, rootfs_dir, bundle) = (
            self.dir.join("upper"),
            self.dir.join("work"),
            self.dir.join("rootfs"),
            self.dir.join("bundle"),
        );
        for d in [&upper, &work, &rootfs_dir, &bundle] {
            std::fs::create_dir_all(d).map_err(ContainerError::io("create", d))?;
        }
        self.record(None, None)?;
        let log_path = self.dir.join("console.log");
        self.log = Some(File::create(&log_path).map_err(ContainerError::io("create", &log_path))?);
        let rootless = self.shared.rootless;
        let overlay = OverlayRoot {
            lower: layers,
            upper,
            work,
            target: rootfs_dir.clone(),
        };
        let run = &image.config.config;
        let user = self
            .config
            .user
            .clone()
            .or_else(|| run.user.clone())
            .unwrap_or_default();
        // The helper mounts the root, out of our sight: names come from
        // the layers. Rootless, only root (our own uid outside) is mapped.
        let (uid, gid) = if rootless {
            rootless_user(&user)?
        } else {
            rootfs::resolve_user(&overlay.lower, &user)?
        };
        let mut args: Vec<String> = run.entrypoint.clone().unwrap_or_default();
        if self.config.command.is_empty() {
            args.extend(run.cmd.clone().unwrap_or_default());
        } else {
            args.extend(self.config.command.iter().cloned());
        }
        if args.is_empty() {
            return Err(ConfigError::NoCommand {
                image: self.config.image.clone(),
            }
            .into());
        }
        let env = merge_env(
            run.env.as_deref().unwrap_or_default(),
            &self.config.env,
            &self.id.0,
            self.config.terminal,
        );
        let cwd = self
            .config
            .workdir
            .clone()
            .or_else(|| run.working_dir.clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        let etc_files = self.write_etc_files()?;
        let spec = build_spec(
            &self.config,
            &SpecInputs {
                rootfs: &rootfs_dir,
                args,
                env,
                cwd,
                uid,
                gid,
                hostname: &self.id.0,
                cgroup_path: &self.cgroup_path,
                // The helper's, where pasta serves user networking.
                network: SpecNetwork::Inherit,
                etc_files,
                rootless,
            },
        )?;
        let spec_path = bundle.join("config.json");
        if let Err(source) = spec.save(&spec_path) {
            return Err(InternalError::WriteSpec {
                path: spec_path,
                source,
            }
            .into());
        }

        let prepared = started.elapsed();
        let mut helper = self.shared.take_helper()?;
        // Any failure from here on ends the helper (which kills and deletes
        // whatever it created) in one place.
        let (pid, stdio) = match self.create_in_helper(&mut helper, &bundle, overlay) {
            Ok(r) => r,
            Err(e) => {
                helper.finish();
                return Err(e);
            }
        };
        log::debug!(
            "container {}: started in {:?} ({prepared:?} preparing)",
            self.id,
            started.elapsed()
        );
        self.emit(Event::Started {
            id: self.id.clone(),
            setup: started.elapsed(),
            pid: Some(pid),
        });
        Ok((helper, stdio))
    }

    /// Creates and starts the container through `helper`; its host pid and
    /// our ends of its stdio.
    fn create_in_helper(
        &mut self,
        helper: &mut HelperProcess,
        bundle: &std::path::Path,
        overlay: OverlayRoot,
    ) -> Result<(i32, Stdio), ContainerError> {
        let (stdio, child_fds) = if self.config.terminal {
            (None, Vec::new())
        } else {
            let (s, fds) = stdio_pipes(true)?;
            (Some(s), fds)
        };
        let raw: Vec<RawFd> = child_fds.iter().map(|f| f.as_raw_fd()).collect();
        if self.config.network == NetworkMode::User {
            // Before Create: libcontainer makes the helper non-dumpable,
            // and then pasta could no longer open its namespaces.
            self.network = Some(UserNetwork::attach(
                helper.pid(),
                &self.config.ports,
                self.dir.join("pasta.pid"),
                &self
                    .shared
                    .paths
                    .run_dir
                    .join(format!("{}.netns", self.id.0)),
            )?);
        }
        let t_create = Instant::now();
        let reply = helper.request(
            &Request::Create {
                id: self.id.0.clone(),
                state_root: self.shared.paths.run_dir.clone(),
                bundle: bundle.to_path_buf(),
                terminal: self.config.terminal,
                overlay,
            },
            &raw,
        );
        log::debug!(
            "container {}: create request {:?}",
            self.id,
            t_create.elapsed()
        );
        // The container holds its ends now; ours must close or the pipes
        // never see end-of-file.
        drop(child_fds);
        let (pid, master) = match reply? {
            (Reply::Created { pid }, fds) => (pid, fds.into_iter().next()),
            (Reply::Failed { message }, _) => {
                return Err(ContainerError::runtime("create", message))
            }
            (other, _) => return Err(unexpected(&other)),
        };
        let stdio = match (stdio, master) {
            (Some(s), _) => s,
            (None, Some(m)) => Stdio::Terminal(Some(File::from(m))),
            (None, None) => return Err(HelperError::NoTerminal.into()),
        };
        if self.shared.rootless {
            // Before its first instruction runs (see cgroup.rs).
            CgroupFiles::new(&self.cgroup_path)
                .apply_limits(&self.config.limits, spec::CPU_PERIOD_US)?;
        }
        let t_start = Instant::now();
        let started = helper.request(&Request::Start, &[]);
        log::debug!(
            "container {}: start request {:?}",
            self.id,
            t_start.elapsed()
        );
        match started? {
            (Reply::Done, _) => Ok((pid, stdio)),
            (Reply::Failed { message }, _) => {
                let _ = helper.request(&Request::Delete, &[]);
                Err(ContainerError::runtime("start", message))
            }
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// The container's `/etc/hosts` (its hostname resolves) and, with
    /// user-mode networking, `/etc/resolv.conf` naming pasta's DNS
    /// forwarder, as Docker gives them; written in its directory.
    fn write_etc_files(&self) -> Result<Vec<(PathBuf, &'static str)>, ContainerError> {
        let dir = self.dir.join("etc");
        std::fs::create_dir_all(&dir).map_err(ContainerError::io("create", &dir))?;
        let mut files = vec![(
            dir.join("hosts"),
            "/etc/hosts",
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
                self.id.0
            ),
        )];
        if self.config.network == NetworkMode::User {
            files.push((
                dir.join("resolv.conf"),
                "/etc/resolv.conf",
                format!("nameserver {}\n", crate::network::DNS_FORWARD_ADDR),
            ));
        }
        let mut mounts = Vec::new();
        for (path, target, text) in files {
            std::fs::write(&path, text).map_err(ContainerError::io("write", &path))?;
            mounts.push((path, target));
        }
        Ok(mounts)
    }
}

/// Rootless, only root is mapped in the container: any other user the
/// config or image names cannot be run as.
fn rootless_user(user: &str) -> Result<(u32, u32), ContainerError> {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let is_root = |s: &str| matches!(s.trim(), "" | "0" | "root");
    if is_root(u) && is_root(g) {
        Ok((0, 0))
    } else {
        Err(ConfigError::RootlessUser {
            user: user.to_string(),
        }
        .into())
    }
}

/// Image env, then the user's (same name replaces), plus PATH, HOSTNAME
/// and TERM where missing.
fn merge_env(image: &[String], user: &[String], hostname: &str, terminal: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut set = |e: &str| {
        let key = e.split('=').next().unwrap_or(e);
        out.retain(|x| x.split('=').next() != Some(key));
        out.push(e.to_string());
    };
    set("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    set(&format!("HOSTNAME={hostname}"));
    if terminal {
        set("TERM=xterm-256color");
    }
    for e in image.iter().chain(user) {
        set(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_api::error_text;

    #[test]
    fn the_users_environment_overrides_the_images() {
        let env = merge_env(
            &["PATH=/image/bin".into(), "LANG=C".into()],
            &["LANG=C.UTF-8".into(), "EXTRA=1".into()],
            "box",
            true,
        );
        assert_eq!(
            env,
            [
                "HOSTNAME=box",
                "TERM=xterm-256color",
                "PATH=/image/bin",
                "LANG=C.UTF-8",
                "EXTRA=1"
            ]
        );
        let env = merge_env(&[], &[], "box", false);
        assert!(env.iter().any(|e| e.starts_with("PATH=/usr/local/sbin")));
        assert!(!env.iter().any(|e| e.starts_with("TERM=")), "{env:?}");
    }

    #[test]
    fn rootless_containers_run_as_root_only() {
        for ok in ["", "0", "root", "0:0", "root:root", " 0 : root "] {
            assert_eq!(rootless_user(ok).unwrap(), (0, 0), "{ok:?}");
        }
        let err = rootless_user("1000:1000").unwrap_err();
        assert!(
            matches!(
                err,
                ContainerError::InvalidConfig(ConfigError::RootlessUser { .. })
            ),
            "{err:?}"
        );
        assert!(
            error_text(&err).contains("rootless container runs as root"),
            "{}",
            error_text(&err)
        );
    }
}
