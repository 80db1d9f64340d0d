//! The container runtime: one supervisor thread per container, each
//! driving its own helper process, reporting through the event channel.
//!
//! A container's files live in `<data dir>/containers/<id>/`: `upper/` and
//! `work/` (its writes), `rootfs/` (the overlay mount point), `bundle/`
//! (`config.json`), `console.log` (everything it printed) and
//! `container.json` (what it was asked to run, how it ended). The OCI
//! runtime's own state is in a run directory (`/run/hangar/containers` as
//! root), which does not outlive a reboot.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::cgroup::{self, CgroupFiles};
use super::helper::{HelperCommand, HelperProcess, OverlayRoot, Reply, Request};
use super::network::UserNetwork;
use super::spec::{self, build_spec, SpecInputs, SpecNetwork};
use super::{rootfs, ContainerConfig, ContainerError, ContainerExit, NetworkMode};
use crate::api::{ContainerEvent, Event, EventSink, Exit, OutputStream, WorkloadId, WorkloadState};
use crate::images::{ImageError, ImageRecord, ImageStore};

const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// After the init exits, how long the rest of its output may take to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the runtime keeps things.
#[derive(Debug, Clone)]
pub struct RuntimePaths {
    /// Hangar's data directory (images in `images/`, containers in
    /// `containers/`, the default image's source in `images-src/default`).
    pub data_dir: PathBuf,
    /// The OCI runtime's state directory (tmpfs; gone after a reboot).
    pub run_dir: PathBuf,
}

impl RuntimePaths {
    /// Hangar's data directory and `/run/hangar/containers` (root) or
    /// `$XDG_RUNTIME_DIR/hangar/containers`.
    pub fn locate() -> Result<Self, ContainerError> {
        let data_dir = crate::kit::data_dir()
            .map_err(|e| ContainerError::Host(format!("no data directory: {e}")))?;
        // SAFETY: geteuid has no preconditions.
        let run_dir = if unsafe { libc::geteuid() } == 0 {
            PathBuf::from("/run/hangar/containers")
        } else {
            match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
                Some(d) => PathBuf::from(d).join("hangar/containers"),
                None => {
                    return Err(ContainerError::Host(
                        "XDG_RUNTIME_DIR is not set (no user session)".into(),
                    ))
                }
            }
        };
        Ok(Self { data_dir, run_dir })
    }
}

/// What `container.json` keeps of a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Its id.
    pub id: WorkloadId,
    /// What it was asked to run.
    pub config: ContainerConfig,
    /// Seconds since the epoch when it was created.
    pub created: u64,
    /// The milliseconds of that second (containers started together are
    /// listed in the order they were run).
    #[serde(default)]
    pub created_ms: u32,
    /// How it ended, once it has.
    pub exit: Option<ContainerExit>,
    /// Why it could not be created or started, if it could not.
    #[serde(default)]
    pub error: Option<String>,
}

impl ContainerRecord {
    /// The state a container of an earlier run is in.
    pub fn state(&self) -> WorkloadState {
        if self.error.is_some() {
            WorkloadState::Failed
        } else {
            WorkloadState::Stopped
        }
    }

    /// Writes `container.json` in `dir`. Renamed into place but not
    /// synced: an fsync would double a container's start time, and a
    /// record lost to a power cut only drops the container from the list.
    fn save(&self, dir: &std::path::Path) -> Result<(), ContainerError> {
        let p = dir.join("container.json");
        let tmp = dir.join(".container.json.tmp");
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| ContainerError::Internal(format!("encode record: {e}")))?;
        std::fs::write(&tmp, &bytes).map_err(ContainerError::io("write", &tmp))?;
        std::fs::rename(&tmp, &p).map_err(ContainerError::io("rename", &p))
    }
}

/// The records of the containers an earlier run left in `paths`. One that
/// was still running then was killed by its helper when that run's engine
/// went away (its root and namespaces went with them); what the engine
/// itself had started for it (pasta, and the runtime's state directory) is
/// cleaned up here, and its record says it ended with the app. Unreadable records are skipped (and logged), never
/// deleted.
fn load_previous(paths: &RuntimePaths) -> HashMap<WorkloadId, ContainerRecord> {
    let mut found = HashMap::new();
    let dir = paths.data_dir.join("containers");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !valid_id(&name) {
            continue;
        }
        let cdir = e.path();
        let path = cdir.join("container.json");
        let mut rec: ContainerRecord = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(err) => {
                log::warn!("container {name}: {}: {err}; not listed", path.display());
                continue;
            }
        };
        if rec.id.0 != name {
            log::warn!(
                "container {name}: its record names '{}'; not listed",
                rec.id
            );
            continue;
        }
        if rec.exit.is_none() && rec.error.is_none() {
            UserNetwork::clean_up_after(
                &cdir.join("pasta.pid"),
                &paths.run_dir.join(format!("{name}.netns")),
            );
            let _ = std::fs::remove_dir_all(paths.run_dir.join(&name));
            rec.exit = Some(ContainerExit {
                code: 128 + libc::SIGKILL,
                signal: Some(libc::SIGKILL),
                ended_with_app: true,
                ..Default::default()
            });
            if let Err(e) = rec.save(&cdir) {
                log::warn!("container {name}: {e}");
            }
        }
        found.insert(rec.id.clone(), rec);
    }
    found
}

/// Requests from [`ContainerRuntime::send`] to a supervisor.
pub(crate) enum Control {
    Input(Vec<u8>),
    Exec {
        n: u32,
        command: Vec<String>,
        terminal: bool,
    },
    ExecInput(u32, Vec<u8>),
    ExecResize(u32, u16, u16),
    CloseInput,
    Resize(u16, u16),
    Stop(Duration),
    Kill(i32),
    /// Freeze every process (the cgroup freezer).
    Pause,
    /// Thaw them.
    Resume,
    Remove,
    /// The runtime is dropped: kill, keep the files for the next run.
    Shutdown,
}

struct Handle {
    tx: Sender<Control>,
    wake: Arc<EventFd>,
    state: Arc<Mutex<WorkloadState>>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    paths: RuntimePaths,
    /// Run by an unprivileged user: helpers make their own user namespace,
    /// mount the root there, and the engine writes the limits.
    rootless: bool,
    images: ImageStore,
    helper: HelperCommand,
    /// A helper started ahead of need.
    warm: Mutex<Option<HelperProcess>>,
    /// Containers of earlier runs, stopped, until removed.
    previous: Mutex<HashMap<WorkloadId, ContainerRecord>>,
    events: EventSink,
}

impl Shared {
    /// A ready helper: the warm one if it is still alive, else a new one.
    fn take_helper(&self) -> Result<HelperProcess, ContainerError> {
        let warm = self.warm.lock().map(|mut w| w.take()).unwrap_or(None);
        let mut helper = match warm {
            Some(mut h) => {
                if h.is_alive() {
                    h
                } else {
                    h.finish();
                    HelperProcess::spawn(&self.helper)?
                }
            }
            None => HelperProcess::spawn(&self.helper)?,
        };
        match helper.wait_ready() {
            Ok(()) => Ok(helper),
            Err(e) => {
                helper.finish();
                Err(e)
            }
        }
    }

    /// Starts the next warm helper, unless one is there.
    fn warm_up(&self) {
        let Ok(mut w) = self.warm.lock() else { return };
        if w.is_none() {
            match HelperProcess::spawn(&self.helper) {
                Ok(h) => *w = Some(h),
                Err(e) => log::warn!("could not start a spare container helper: {e}"),
            }
        }
    }
}

/// Runs containers. Dropping it stops every running container (SIGKILL)
/// and waits for their supervisors.
pub(crate) struct ContainerRuntime {
    shared: Arc<Shared>,
    containers: Mutex<HashMap<WorkloadId, Handle>>,
}

impl ContainerRuntime {
    /// A runtime using `paths`, starting helpers with `helper` and
    /// reporting to `events`.
    pub(crate) fn new(
        paths: RuntimePaths,
        helper: HelperCommand,
        events: EventSink,
    ) -> Result<Self, ContainerError> {
        for d in [paths.data_dir.join("containers"), paths.run_dir.clone()] {
            std::fs::create_dir_all(&d).map_err(ContainerError::io("create", &d))?;
        }
        let images = ImageStore::open(&paths.data_dir)?;
        // SAFETY: geteuid has no preconditions.
        let rootless = unsafe { libc::geteuid() } != 0;
        let previous = Mutex::new(load_previous(&paths));
        let shared = Arc::new(Shared {
            paths,
            rootless,
            previous,
            images,
            helper,
            warm: Mutex::new(None),
            events,
        });
        // The first helper's exec happens now, not when the user clicks.
        let s = Arc::clone(&shared);
        let _ = std::thread::Builder::new()
            .name("container-warmup".into())
            .spawn(move || s.warm_up());
        Ok(Self {
            shared,
            containers: Mutex::new(HashMap::new()),
        })
    }

    /// A fresh container id (12 random hex digits).
    pub(crate) fn new_id() -> WorkloadId {
        let mut b = [0u8; 6];
        // SAFETY: getrandom writes at most b.len() bytes into b.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            // Unreachable on Linux ≥ 3.17 for 6 bytes; time and pid still
            // make a unique enough id.
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let v = (t as u64) ^ ((std::process::id() as u64) << 32);
            b.copy_from_slice(&v.to_le_bytes()[..6]);
        }
        WorkloadId(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    /// The image store the runtime takes images from.
    pub(crate) fn images(&self) -> &ImageStore {
        &self.shared.images
    }

    /// The directory of a container's files.
    pub(crate) fn container_dir(&self, id: &WorkloadId) -> PathBuf {
        self.shared.paths.data_dir.join("containers").join(&id.0)
    }

    /// The state a container is in, if it is known to this runtime (run
    /// by it, or left by an earlier run).
    pub(crate) fn state(&self, id: &WorkloadId) -> Option<WorkloadState> {
        let map = self.containers.lock().ok()?;
        match map.get(id) {
            Some(h) => h.state.lock().ok().map(|s| *s),
            None => self.shared.previous.lock().ok()?.get(id).map(|r| r.state()),
        }
    }

    /// The containers earlier runs left (all stopped), oldest first, with
    /// their settings and how they ended; their logs and files stay until
    /// removed ([`crate::Command::Remove`]).
    pub(crate) fn previous_containers(&self) -> Vec<ContainerRecord> {
        let mut v: Vec<ContainerRecord> = match self.shared.previous.lock() {
            Ok(p) => p.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        v.sort_by(|a, b| {
            (a.created, a.created_ms, &a.id.0).cmp(&(b.created, b.created_ms, &b.id.0))
        });
        v
    }

    fn table(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, HashMap<WorkloadId, Handle>>, ContainerError> {
        self.containers
            .lock()
            .map_err(|_| ContainerError::Internal("container table poisoned".into()))
    }

    /// True if the runtime knows the container: run by it, or left by an
    /// earlier run and not removed.
    pub(crate) fn knows(&self, id: &WorkloadId) -> bool {
        self.table().is_ok_and(|t| t.contains_key(id))
            || self
                .shared
                .previous
                .lock()
                .is_ok_and(|p| p.contains_key(id))
    }

    /// Creates a container and starts its process. Errors found at once
    /// are returned; the rest arrive as [`Event::Error`].
    pub(crate) fn run(
        &self,
        id: WorkloadId,
        config: ContainerConfig,
    ) -> Result<(), ContainerError> {
        let mut map = self.table()?;
        config.validate()?;
        if !valid_id(&id.0) {
            return Err(ContainerError::InvalidConfig(format!(
                "container id '{id}' must be 1-64 characters of a-z, 0-9, '_' or '-'"
            )));
        }
        if map.contains_key(&id) || self.container_dir(&id).exists() {
            return Err(ContainerError::Exists(id));
        }
        let handle = self.spawn_supervisor(id.clone(), config)?;
        map.insert(id, handle);
        Ok(())
    }

    /// Deletes an exited (or, forced, a running) container: its writable
    /// layer, log and runtime state.
    pub(crate) fn remove(&self, id: &WorkloadId, force: bool) -> Result<(), ContainerError> {
        let mut map = self.table()?;
        let Some(h) = map.get(id) else {
            return self.remove_previous(id.clone());
        };
        let state = h.state.lock().map(|s| *s).unwrap_or(WorkloadState::Failed);
        if !force
            && matches!(
                state,
                WorkloadState::Running
                    | WorkloadState::Paused
                    | WorkloadState::Stopping
                    | WorkloadState::Starting
            )
        {
            return Err(ContainerError::WrongState {
                id: id.clone(),
                state,
                what: "remove it while it runs (stop it, or force)",
            });
        }
        // The supervisor removes the files and ends; forget it.
        let h = map
            .remove(id)
            .ok_or_else(|| ContainerError::NotFound(id.clone()))?;
        let _ = h.tx.send(Control::Remove);
        let _ = h.wake.write(1);
        Ok(())
    }

    /// Hands a running container's supervisor a request.
    pub(crate) fn send(&self, id: &WorkloadId, control: Control) -> Result<(), ContainerError> {
        let map = self.table()?;
        let h = map
            .get(id)
            .ok_or_else(|| ContainerError::NotFound(id.clone()))?;
        h.tx.send(control)
            .map_err(|_| ContainerError::Internal(format!("supervisor of '{id}' is gone")))?;
        h.wake
            .write(1)
            .map_err(|e| ContainerError::Internal(format!("wake supervisor: {e}")))?;
        Ok(())
    }

    /// Removes a container an earlier run left, off the caller's thread.
    fn remove_previous(&self, id: WorkloadId) -> Result<(), ContainerError> {
        let known = self
            .shared
            .previous
            .lock()
            .map_err(|_| ContainerError::Internal("container list poisoned".into()))?
            .remove(&id)
            .is_some();
        if !known {
            return Err(ContainerError::NotFound(id));
        }
        let dir = self.container_dir(&id);
        let events = self.shared.events.clone();
        std::thread::Builder::new()
            .name(format!("container-rm-{}", id.0))
            .spawn(move || match remove_tree(&dir) {
                Ok(()) => events.emit(Event::Removed(id)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => events.emit(Event::Removed(id)),
                Err(e) => events.emit(Event::Error {
                    id,
                    message: format!("cannot remove {}: {e}", dir.display()),
                    registers: None,
                }),
            })
            .map(|_| ())
            .map_err(|e| ContainerError::Internal(format!("spawn removal thread: {e}")))
    }

    fn spawn_supervisor(
        &self,
        id: WorkloadId,
        config: ContainerConfig,
    ) -> Result<Handle, ContainerError> {
        let (tx, rx) = mpsc::channel();
        let wake = Arc::new(
            EventFd::new(EFD_NONBLOCK)
                .map_err(|e| ContainerError::Internal(format!("eventfd: {e}")))?,
        );
        let cgroup_parent = if self.shared.rootless {
            // SAFETY: geteuid has no preconditions.
            cgroup::rootless_parent(unsafe { libc::geteuid() })?
        } else {
            "/hangar".to_string()
        };
        let state = Arc::new(Mutex::new(WorkloadState::Starting));
        let sup = Supervisor {
            shared: Arc::clone(&self.shared),
            dir: self.container_dir(&id),
            cgroup_path: format!("{cgroup_parent}/{}", id.0),
            id: id.clone(),
            config,
            controls: rx,
            wake: Arc::clone(&wake),
            state: Arc::clone(&state),
            log: None,
            remove_requested: false,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            network: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("container-{}", id.0))
            .spawn(move || sup.run())
            .map_err(|e| ContainerError::Internal(format!("spawn supervisor thread: {e}")))?;
        Ok(Handle {
            tx,
            wake,
            state,
            thread: Some(thread),
        })
    }
}

impl Drop for ContainerRuntime {
    fn drop(&mut self) {
        let handles: Vec<Handle> = match self.containers.lock() {
            Ok(mut m) => m.drain().map(|(_, h)| h).collect(),
            Err(_) => return,
        };
        // Containers end with the app, as they would if it died (their
        // helpers kill them), but stay listed with their files, like
        // Docker's stopped containers, until removed.
        let mut threads = Vec::new();
        for mut h in handles {
            let _ = h.tx.send(Control::Shutdown);
            let _ = h.wake.write(1);
            threads.extend(h.thread.take());
            // Dropping the sender tells an exited container's supervisor
            // that no removal will come.
        }
        for t in threads {
            let _ = t.join();
        }
        if let Ok(mut w) = self.shared.warm.lock() {
            if let Some(h) = w.take() {
                h.finish();
            }
        }
    }
}

fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
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
                return Err(ContainerError::InvalidConfig(format!(
                    "the image '{name}' is not in the store and {} does not exist: run packaging/setup.sh",
                    src.display()
                )));
            }
            Ok(shared.images.import(&src, Some(name), &mut |_| {})?)
        }
        r => Ok(r?),
    }
}

/// The stdio the engine keeps: pipes' engine ends, or the terminal.
enum Stdio {
    Pipes {
        stdin: Option<File>,
        stdout: Option<File>,
        stderr: Option<File>,
    },
    Terminal(Option<File>),
}

struct Supervisor {
    shared: Arc<Shared>,
    id: WorkloadId,
    config: ContainerConfig,
    dir: PathBuf,
    cgroup_path: String,
    controls: Receiver<Control>,
    wake: Arc<EventFd>,
    state: Arc<Mutex<WorkloadState>>,
    log: Option<File>,
    /// Forced removal while running: remove as soon as it has exited.
    remove_requested: bool,
    /// pasta and its namespace (network `user`), stopped when dropped.
    network: Option<UserNetwork>,
    /// When it was created (since the epoch), for its record.
    created: Duration,
}

/// Why the main loop ended.
enum LoopEnd {
    Exited(i32),
    HelperLost(ContainerError),
}

impl Supervisor {
    fn run(mut self) {
        self.set_state(WorkloadState::Starting);
        let started = Instant::now();
        match self.create_and_start(started) {
            Ok((helper, stdio)) => {
                self.set_state(WorkloadState::Running);
                // The next container's helper starts now, beside this one.
                let shared = Arc::clone(&self.shared);
                let _ = std::thread::Builder::new()
                    .name("container-warmup".into())
                    .spawn(move || shared.warm_up());
                self.supervise(helper, stdio);
            }
            Err(e) => {
                // Only if the directory is there: a container refused
                // before anything was made leaves nothing behind.
                if self.dir.join("container.json").exists() {
                    if let Err(e) = self.record(None, Some(e.to_string())) {
                        log::warn!("container {}: {e}", self.id);
                    }
                }
                self.emit(Event::Error {
                    id: self.id.clone(),
                    message: e.to_string(),
                    registers: None,
                });
                self.network = None;
                self.set_state(WorkloadState::Failed);
            }
        }
        self.wait_for_removal();
    }

    fn emit(&self, e: Event) {
        self.shared.events.emit(e);
    }

    fn set_state(&self, s: WorkloadState) {
        if let Ok(mut st) = self.state.lock() {
            *st = s;
        }
        self.emit(Event::StateChanged {
            id: self.id.clone(),
            state: s,
        });
    }

    fn record(
        &self,
        exit: Option<ContainerExit>,
        error: Option<String>,
    ) -> Result<(), ContainerError> {
        ContainerRecord {
            id: self.id.clone(),
            config: self.config.clone(),
            created: self.created.as_secs(),
            created_ms: self.created.subsec_millis(),
            exit,
            error,
        }
        .save(&self.dir)
    }

    fn create_and_start(
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
            return Err(ContainerError::InvalidConfig(format!(
                "the image '{}' names no command: give one",
                self.config.image
            )));
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
        spec.save(&spec_path)
            .map_err(|e| ContainerError::Internal(format!("write {}: {e}", spec_path.display())))?;

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
                return Err(ContainerError::Runtime(format!("cannot create: {message}")))
            }
            (other, _) => return Err(unexpected(&other)),
        };
        let stdio = match (stdio, master) {
            (Some(s), _) => s,
            (None, Some(m)) => Stdio::Terminal(Some(File::from(m))),
            (None, None) => {
                return Err(ContainerError::Runtime(
                    "the helper sent no terminal".into(),
                ))
            }
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
                Err(ContainerError::Runtime(format!("cannot start: {message}")))
            }
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// Streams output, applies controls, samples stats, until the init
    /// exits; then cleans up and reports.
    fn supervise(&mut self, mut helper: HelperProcess, mut stdio: Stdio) {
        let cgroup = CgroupFiles::new(&self.cgroup_path);
        let mut next_stats = Instant::now();
        let mut kill_at: Option<Instant> = None;
        let mut stopped_by_user = false;
        let mut ended_with_app = false;
        let mut execs: Vec<ExecSession> = Vec::new();
        // Frozen by Pause; thawed before anything that must reach the
        // processes (a frozen process handles no signal).
        let mut frozen = false;
        let end = loop {
            let mut init_status = None;
            while let Some(r) = helper.take_unasked() {
                match r {
                    Reply::Exited { status } => init_status = Some(status),
                    other => self.on_exec_reply(other, &mut execs),
                }
            }
            if let Some(status) = init_status {
                break LoopEnd::Exited(status);
            }
            let now = Instant::now();
            if now >= next_stats {
                self.emit(Event::Stats {
                    id: self.id.clone(),
                    stats: cgroup.stats(),
                });
                next_stats = now + STATS_INTERVAL;
            }
            if kill_at.is_some_and(|t| now >= t) {
                kill_at = None;
                self.kill(&mut helper, libc::SIGKILL, true);
            }
            let deadline = kill_at.map_or(next_stats, |k| k.min(next_stats));
            let timeout = deadline.saturating_duration_since(Instant::now());

            let mut fds = vec![
                pollfd(helper.socket().as_raw_fd()),
                pollfd(self.wake.as_raw_fd()),
            ];
            let mut outputs: Vec<(RawFd, Option<usize>, OutputStream)> = output_fds(&stdio)
                .into_iter()
                .map(|(fd, s)| (fd, None, s))
                .collect();
            for (i, e) in execs.iter().enumerate() {
                outputs.extend(
                    output_fds(&e.stdio)
                        .into_iter()
                        .map(|(fd, s)| (fd, Some(i), s)),
                );
            }
            fds.extend(outputs.iter().map(|(fd, _, _)| pollfd(*fd)));
            if let Err(e) = poll(&mut fds, timeout) {
                break LoopEnd::HelperLost(ContainerError::Internal(format!("poll: {e}")));
            }
            for (i, (_, exec, stream)) in outputs.iter().enumerate() {
                if fds[2 + i].revents == 0 {
                    continue;
                }
                match exec {
                    None => self.read_output(&mut stdio, *stream),
                    Some(e) => {
                        if let Some(data) = read_some(&mut execs[*e].stdio, *stream) {
                            self.emit(Event::Container {
                                id: self.id.clone(),
                                event: ContainerEvent::ExecOutput {
                                    exec: execs[*e].n,
                                    stream: *stream,
                                    data,
                                },
                            });
                        }
                    }
                }
            }
            if fds[1].revents != 0 {
                let _ = self.wake.read();
                while let Ok(c) = self.controls.try_recv() {
                    match c {
                        Control::Input(b) => write_input(&mut stdio, &b),
                        Control::CloseInput => {
                            if let Stdio::Pipes { stdin, .. } = &mut stdio {
                                *stdin = None;
                            }
                        }
                        Control::Resize(cols, rows) => resize(&stdio, cols, rows),
                        Control::Exec { n, .. } if frozen => self.emit(Event::Error {
                            id: self.id.clone(),
                            message: format!(
                                "cannot run process {n} in the container: it is paused"
                            ),
                            registers: None,
                        }),
                        Control::Exec {
                            n,
                            command,
                            terminal,
                        } => match self.exec(&mut helper, n, command, terminal) {
                            Ok(session) => {
                                self.emit(Event::Container {
                                    id: self.id.clone(),
                                    event: ContainerEvent::ExecStarted {
                                        exec: n,
                                        pid: session.pid,
                                    },
                                });
                                execs.push(session);
                            }
                            Err(e) => self.emit(Event::Error {
                                id: self.id.clone(),
                                message: format!("cannot run process {n} in the container: {e}"),
                                registers: None,
                            }),
                        },
                        Control::ExecInput(n, b) => {
                            if let Some(e) = execs.iter_mut().find(|e| e.n == n) {
                                write_input(&mut e.stdio, &b);
                            }
                        }
                        Control::ExecResize(n, cols, rows) => {
                            if let Some(e) = execs.iter().find(|e| e.n == n) {
                                resize(&e.stdio, cols, rows);
                            }
                        }
                        Control::Pause => {
                            if !frozen && !stopped_by_user {
                                match cgroup.freeze(true) {
                                    Ok(()) => {
                                        frozen = true;
                                        self.set_state(WorkloadState::Paused);
                                    }
                                    Err(e) => self.emit(Event::Error {
                                        id: self.id.clone(),
                                        message: format!("cannot pause the container: {e}"),
                                        registers: None,
                                    }),
                                }
                            }
                        }
                        Control::Resume => {
                            if frozen {
                                self.thaw(&cgroup, &mut frozen);
                                self.set_state(WorkloadState::Running);
                            }
                        }
                        Control::Stop(grace) => {
                            self.thaw(&cgroup, &mut frozen);
                            stopped_by_user = true;
                            self.set_state(WorkloadState::Stopping);
                            if grace.is_zero() {
                                self.kill(&mut helper, libc::SIGKILL, true);
                            } else {
                                self.kill(&mut helper, libc::SIGTERM, false);
                                kill_at = Some(Instant::now() + grace);
                            }
                        }
                        Control::Kill(sig) => {
                            self.thaw(&cgroup, &mut frozen);
                            stopped_by_user = true;
                            self.kill(&mut helper, sig, sig == libc::SIGKILL);
                        }
                        Control::Shutdown => {
                            self.thaw(&cgroup, &mut frozen);
                            ended_with_app = true;
                            self.kill(&mut helper, libc::SIGKILL, true);
                        }
                        // Removal was asked while running (forced): kill,
                        // then the normal exit path runs and the files go.
                        Control::Remove => {
                            self.thaw(&cgroup, &mut frozen);
                            stopped_by_user = true;
                            self.kill(&mut helper, libc::SIGKILL, true);
                            self.remove_requested = true;
                        }
                    }
                }
            }
            if fds[0].revents != 0 {
                match helper.read_event() {
                    Ok(Some(Reply::Exited { status })) => break LoopEnd::Exited(status),
                    Ok(Some(other)) => self.on_exec_reply(other, &mut execs),
                    Ok(None) => {}
                    Err(e) => break LoopEnd::HelperLost(e),
                }
            }
        };
        // Exec'd processes die with the container's pid namespace; their
        // exits may still be queued.
        while let Some(r) = helper.take_unasked() {
            self.on_exec_reply(r, &mut execs);
        }
        for e in execs.drain(..) {
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
                    message: e.to_string(),
                    registers: None,
                });
                None
            }
        };
        // Read before Delete removes the cgroup: the last sample (whole
        // CPU time used) and why it died.
        let t_exit = Instant::now();
        let counters = cgroup.counters();
        self.emit(Event::Stats {
            id: self.id.clone(),
            stats: cgroup.stats(),
        });
        match helper.request(&Request::Delete, &[]) {
            Ok((Reply::Done, _)) => {}
            Ok((Reply::Failed { message }, _)) => self.emit(Event::Error {
                id: self.id.clone(),
                message: format!("cleaning up the container's runtime state: {message}"),
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
            Some(s) => decode_status(s, counters, stopped_by_user),
            None => ContainerExit {
                code: 255,
                stopped_by_user,
                ..Default::default()
            },
        };
        exit.ended_with_app = ended_with_app;
        if let Err(e) = self.record(Some(exit.clone()), None) {
            log::warn!("container {}: {e}", self.id);
        }
        // The state changes before anyone hears of the exit, so a Remove
        // sent in answer to the event is accepted.
        if let Ok(mut st) = self.state.lock() {
            *st = WorkloadState::Stopped;
        }
        self.emit(Event::Exited {
            id: self.id.clone(),
            exit: Exit::container(exit, &self.config.limits),
        });
        self.set_state(WorkloadState::Stopped);
    }

    /// Thaws a frozen container; a failure is reported (the signal that
    /// follows then waits for a thaw that may never come).
    fn thaw(&self, cgroup: &CgroupFiles, frozen: &mut bool) {
        if !*frozen {
            return;
        }
        match cgroup.freeze(false) {
            Ok(()) => *frozen = false,
            Err(e) => self.emit(Event::Error {
                id: self.id.clone(),
                message: format!("cannot resume the container: {e}"),
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
            return Err(ContainerError::InvalidConfig("no command given".into()));
        }
        let spec_path = self.dir.join("bundle/config.json");
        let spec: serde_json::Value = std::fs::read(&spec_path)
            .map_err(ContainerError::io("read", &spec_path))
            .and_then(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| ContainerError::Internal(format!("runtime spec: {e}")))
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
                    None => Stdio::Terminal(Some(File::from(fds.into_iter().next().ok_or_else(
                        || ContainerError::Runtime("the helper sent no terminal".into()),
                    )?))),
                };
                Ok(ExecSession { n, pid, stdio })
            }
            (Reply::Failed { message }, _) => Err(ContainerError::Runtime(message)),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// An exec'd process ended: its output is read out, then reported.
    fn on_exec_reply(&mut self, reply: Reply, execs: &mut Vec<ExecSession>) {
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
                exit: decode_status(status, super::CgroupCounters::default(), false),
            },
        });
    }

    fn kill(&self, helper: &mut HelperProcess, signal: i32, all: bool) {
        match helper.request(&Request::Kill { signal, all }, &[]) {
            Ok((Reply::Done, _)) => {}
            // It may have exited in between: the exit event follows.
            Ok((Reply::Failed { message }, _)) => {
                log::debug!("container {}: kill {signal}: {message}", self.id)
            }
            Ok(_) => {}
            Err(e) => self.emit(Event::Error {
                id: self.id.clone(),
                message: e.to_string(),
                registers: None,
            }),
        }
    }

    /// One read from a readable output; end-of-file or an error (EIO on a
    /// terminal whose process is gone) closes our end.
    fn read_output(&mut self, stdio: &mut Stdio, stream: OutputStream) {
        if let Some(data) = read_some(stdio, stream) {
            self.output(stream, data);
        }
    }

    fn output(&mut self, stream: OutputStream, data: Vec<u8>) {
        if let Some(log) = &mut self.log {
            if let Err(e) = log.write_all(&data) {
                log::warn!(
                    "container {}: log write failed, logging stops: {e}",
                    self.id
                );
                self.log = None;
            }
        }
        self.emit(Event::Output {
            id: self.id.clone(),
            stream,
            bytes: data,
        });
    }

    /// Reads what is left once the container is gone, until every stream
    /// ends (all writers closed) or [`DRAIN_TIMEOUT`].
    fn drain_output(&mut self, stdio: &mut Stdio) {
        let until = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let outputs = output_fds(stdio);
            let now = Instant::now();
            if outputs.is_empty() || now >= until {
                return;
            }
            let mut fds: Vec<libc::pollfd> = outputs.iter().map(|(fd, _)| pollfd(*fd)).collect();
            if poll(&mut fds, until - now).is_err() {
                return;
            }
            for (i, (_, stream)) in outputs.iter().enumerate() {
                if fds[i].revents != 0 {
                    self.read_output(stdio, *stream);
                }
            }
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
                format!("nameserver {}\n", super::network::DNS_FORWARD_ADDR),
            ));
        }
        let mut mounts = Vec::new();
        for (path, target, text) in files {
            std::fs::write(&path, text).map_err(ContainerError::io("write", &path))?;
            mounts.push((path, target));
        }
        Ok(mounts)
    }

    /// After the exit: keep the files until Remove (or the runtime's end).
    fn wait_for_removal(&mut self) {
        if !self.remove_requested {
            loop {
                match self.controls.recv() {
                    Ok(Control::Remove) => break,
                    // The runtime is gone: the files stay for the next one.
                    Err(_) => return,
                    Ok(_) => {}
                }
            }
        }
        self.log = None;
        match remove_tree(&self.dir) {
            Ok(()) => self.emit(Event::Removed(self.id.clone())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.emit(Event::Removed(self.id.clone()))
            }
            Err(e) => self.emit(Event::Error {
                id: self.id.clone(),
                message: format!("cannot remove {}: {e}", self.dir.display()),
                registers: None,
            }),
        }
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
        Err(ContainerError::InvalidConfig(format!(
            "user '{user}': a rootless container runs as root inside (only your own user is mapped into it)"
        )))
    }
}

/// Removes a container's directory. Rootless, overlayfs leaves its work
/// directory (and the container may leave directories) without
/// permissions for their owner: give them back and retry.
fn remove_tree(dir: &std::path::Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            grant_owner_access(dir);
            std::fs::remove_dir_all(dir)
        }
        r => r,
    }
}

fn grant_owner_access(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            grant_owner_access(&e.path());
        }
    }
}

/// One read from a readable output; end-of-file or an error (EIO on a
/// terminal whose process is gone) closes our end.
fn read_some(stdio: &mut Stdio, stream: OutputStream) -> Option<Vec<u8>> {
    let slot = stream_slot(stdio, stream);
    let f = slot.as_mut()?;
    let mut buf = vec![0u8; 64 * 1024];
    match f.read(&mut buf) {
        Ok(0) => *slot = None,
        Ok(n) => {
            buf.truncate(n);
            return Some(buf);
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(_) => *slot = None,
    }
    None
}

/// A process started in a running container.
struct ExecSession {
    n: u32,
    pid: i32,
    stdio: Stdio,
}

fn stream_slot(stdio: &mut Stdio, stream: OutputStream) -> &mut Option<File> {
    match (stdio, stream) {
        (Stdio::Pipes { stderr, .. }, OutputStream::Stderr) => stderr,
        (Stdio::Pipes { stdout, .. }, _) => stdout,
        (Stdio::Terminal(m), _) => m,
    }
}

/// The output descriptors still open.
fn output_fds(stdio: &Stdio) -> Vec<(RawFd, OutputStream)> {
    match stdio {
        Stdio::Pipes { stdout, stderr, .. } => stdout
            .iter()
            .map(|f| (f.as_raw_fd(), OutputStream::Stdout))
            .chain(stderr.iter().map(|f| (f.as_raw_fd(), OutputStream::Stderr)))
            .collect(),
        Stdio::Terminal(m) => m
            .iter()
            .map(|f| (f.as_raw_fd(), OutputStream::Terminal))
            .collect(),
    }
}

fn write_input(stdio: &mut Stdio, bytes: &[u8]) {
    let target = match stdio {
        Stdio::Pipes { stdin, .. } => stdin,
        Stdio::Terminal(m) => m,
    };
    if let Some(f) = target {
        // A process that stopped reading its input: drop the input, never
        // the supervisor.
        if f.write_all(bytes).is_err() {
            if let Stdio::Pipes { stdin, .. } = stdio {
                *stdin = None;
            }
        }
    }
}

fn resize(stdio: &Stdio, cols: u16, rows: u16) {
    if let Stdio::Terminal(Some(m)) = stdio {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ on a pty master with a valid winsize pointer.
        unsafe { libc::ioctl(m.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

fn unexpected(reply: &Reply) -> ContainerError {
    ContainerError::Internal(format!("unexpected reply from the helper: {reply:?}"))
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<()> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is a valid slice of pollfd for the call.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        for f in fds.iter_mut() {
            f.revents = 0;
        }
    }
    Ok(())
}

/// Pipes for a process without a terminal: our ends, and the process's
/// (stdin, stdout, stderr) to send to the helper. Without `input`, our end
/// of stdin is closed at once (the process reads end-of-file).
fn stdio_pipes(input: bool) -> Result<(Stdio, Vec<OwnedFd>), ContainerError> {
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let ours = Stdio::Pipes {
        stdin: input.then(|| File::from(in_w)),
        stdout: Some(File::from(out_r)),
        stderr: Some(File::from(err_r)),
    };
    Ok((ours, vec![in_r, out_w, err_w]))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(ContainerError::Internal(format!(
            "pipe: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: two new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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

fn decode_status(
    status: i32,
    counters: super::CgroupCounters,
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
