//! The container runtime: one supervisor thread per container, each
//! driving its own helper process, reporting through the event channel.
//!
//! A container's files live in `<data dir>/containers/<id>/`: `upper/` and
//! `work/` (its writes), `rootfs/` (the overlay mount point), `bundle/`
//! (`config.json`), `console.log` (everything it printed) and
//! `container.json` (what it was asked to run, how it ended). The OCI
//! runtime's own state is in a run directory (`/run/hangar/containers` as
//! root), which does not outlive a reboot.
//!
//! One file per operation, as youki lays out its container: this one has
//! the runtime, the supervisor's thread and its loop, which hands each
//! request to the file of its operation: `run` (create and start), `exec`,
//! `stop` (stop with grace, kill, the app's end), `pause` (the freezer),
//! `remove`, `stats`, `exit` (once the init has exited), `records`
//! (`container.json`, the containers of earlier runs) and `stdio` (the
//! process's output and input).

mod exec;
mod exit;
mod pause;
mod records;
mod remove;
mod run;
mod stats;
mod stdio;
mod stop;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::cgroup::{self, CgroupFiles};
use super::helper::{HelperCommand, HelperProcess, Reply};
use super::network::UserNetwork;
use super::{error_text, ContainerConfig, ContainerError, HelperError, HostError, InternalError};
use crate::images::ImageStore;
use hangar_api::{ContainerEvent, Event, EventSink, OutputStream, WorkloadId, WorkloadState};

use exec::ExecSession;
use stats::STATS_INTERVAL;
use stdio::{output_fds, poll, pollfd, read_some, resize, write_input, Stdio};

pub use records::{ContainerRecord, RECORD_VERSION};
pub use run::BUILT_IN_IMAGES;

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
        let data_dir = hangar_api::dirs::data_dir().map_err(HostError::NoDataDir)?;
        // SAFETY: geteuid has no preconditions.
        let run_dir = if unsafe { libc::geteuid() } == 0 {
            PathBuf::from("/run/hangar/containers")
        } else {
            match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
                Some(d) => PathBuf::from(d).join("hangar/containers"),
                None => return Err(HostError::NoRuntimeDir.into()),
            }
        };
        Ok(Self { data_dir, run_dir })
    }
}

/// Requests from [`ContainerRuntime::send`] to a supervisor.
pub enum Control {
    /// Bytes for the init's stdin or terminal.
    Input(Vec<u8>),
    /// Start another process in the container.
    Exec {
        /// The caller's number for it.
        n: u32,
        /// argv.
        command: Vec<String>,
        /// Give it a pseudo-terminal.
        terminal: bool,
    },
    /// Bytes for an exec'd process's terminal.
    ExecInput(u32, Vec<u8>),
    /// An exec'd process's terminal size: columns, rows.
    ExecResize(u32, u16, u16),
    /// Close the init's stdin.
    CloseInput,
    /// The init's terminal size: columns, rows.
    Resize(u16, u16),
    /// SIGTERM, then SIGKILL after the grace time.
    Stop(Duration),
    /// This signal to the init.
    Kill(i32),
    /// Freeze every process (the cgroup freezer).
    Pause,
    /// Thaw them.
    Resume,
    /// Kill it if it runs, then delete its files.
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
                Err(e) => log::warn!(
                    "could not start a spare container helper: {}",
                    error_text(&e)
                ),
            }
        }
    }
}

/// Runs containers. Dropping it stops every running container (SIGKILL)
/// and waits for their supervisors.
pub struct ContainerRuntime {
    shared: Arc<Shared>,
    containers: Mutex<HashMap<WorkloadId, Handle>>,
}

impl ContainerRuntime {
    /// A runtime using `paths`, starting helpers with `helper` and
    /// reporting to `events`.
    pub fn new(
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
        let previous = Mutex::new(records::load_previous(&paths));
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
    pub fn new_id() -> WorkloadId {
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
    pub fn images(&self) -> &ImageStore {
        &self.shared.images
    }

    /// The directory of a container's files.
    pub fn container_dir(&self, id: &WorkloadId) -> PathBuf {
        self.shared.paths.data_dir.join("containers").join(&id.0)
    }

    /// The state a container is in, if it is known to this runtime (run
    /// by it, or left by an earlier run).
    pub fn state(&self, id: &WorkloadId) -> Option<WorkloadState> {
        let map = self.containers.lock().ok()?;
        match map.get(id) {
            Some(h) => h.state.lock().ok().map(|s| *s),
            None => self.shared.previous.lock().ok()?.get(id).map(|r| r.state()),
        }
    }

    fn table(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, HashMap<WorkloadId, Handle>>, ContainerError> {
        self.containers.lock().map_err(|_| {
            InternalError::Poisoned {
                what: "container table",
            }
            .into()
        })
    }

    /// True if the runtime knows the container: run by it, or left by an
    /// earlier run and not removed.
    pub fn knows(&self, id: &WorkloadId) -> bool {
        self.table().is_ok_and(|t| t.contains_key(id))
            || self
                .shared
                .previous
                .lock()
                .is_ok_and(|p| p.contains_key(id))
    }

    /// Hands a running container's supervisor a request.
    pub fn send(&self, id: &WorkloadId, control: Control) -> Result<(), ContainerError> {
        let map = self.table()?;
        let h = map
            .get(id)
            .ok_or_else(|| ContainerError::NotFound(id.clone()))?;
        h.tx.send(control)
            .map_err(|_| InternalError::SupervisorGone { id: id.clone() })?;
        h.wake.write(1).map_err(InternalError::WakeSupervisor)?;
        Ok(())
    }

    fn spawn_supervisor(
        &self,
        id: WorkloadId,
        config: ContainerConfig,
    ) -> Result<Handle, ContainerError> {
        let (tx, rx) = mpsc::channel();
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(InternalError::EventFd)?);
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
            .map_err(|source| InternalError::SpawnThread {
                what: "supervisor",
                source,
            })?;
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

/// What the supervisor's loop keeps between its rounds.
struct LoopState {
    /// When a stop's grace is over and SIGKILL follows.
    kill_at: Option<Instant>,
    /// Stopped on request (stop, kill, forced removal).
    stopped_by_user: bool,
    /// Killed because the runtime was dropped.
    ended_with_app: bool,
    /// Frozen by Pause; thawed before anything that must reach the
    /// processes (a frozen process handles no signal).
    frozen: bool,
    /// Processes started by Exec that have not been reported gone.
    execs: Vec<ExecSession>,
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
                    if let Err(e) = self.record(None, Some(error_text(&e))) {
                        log::warn!("container {}: {}", self.id, error_text(&e));
                    }
                }
                self.emit(Event::Error {
                    id: self.id.clone(),
                    message: error_text(&e),
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

    /// Streams output, applies controls, samples stats, until the init
    /// exits; then cleans up and reports.
    fn supervise(&mut self, mut helper: HelperProcess, mut stdio: Stdio) {
        let cgroup = CgroupFiles::new(&self.cgroup_path);
        let mut next_stats = Instant::now();
        let mut st = LoopState {
            kill_at: None,
            stopped_by_user: false,
            ended_with_app: false,
            frozen: false,
            execs: Vec::new(),
        };
        let end = loop {
            let mut init_status = None;
            while let Some(r) = helper.take_unasked() {
                match r {
                    Reply::Exited { status } => init_status = Some(status),
                    other => self.on_exec_reply(other, &mut st.execs),
                }
            }
            if let Some(status) = init_status {
                break LoopEnd::Exited(status);
            }
            let now = Instant::now();
            if now >= next_stats {
                self.emit_stats(&cgroup);
                next_stats = now + STATS_INTERVAL;
            }
            self.kill_when_grace_is_over(&mut helper, &mut st, now);
            let deadline = st.kill_at.map_or(next_stats, |k| k.min(next_stats));
            let timeout = deadline.saturating_duration_since(Instant::now());

            let mut fds = vec![
                pollfd(helper.socket().as_raw_fd()),
                pollfd(self.wake.as_raw_fd()),
            ];
            let mut outputs: Vec<(RawFd, Option<usize>, OutputStream)> = output_fds(&stdio)
                .into_iter()
                .map(|(fd, s)| (fd, None, s))
                .collect();
            for (i, e) in st.execs.iter().enumerate() {
                outputs.extend(
                    output_fds(&e.stdio)
                        .into_iter()
                        .map(|(fd, s)| (fd, Some(i), s)),
                );
            }
            fds.extend(outputs.iter().map(|(fd, _, _)| pollfd(*fd)));
            if let Err(e) = poll(&mut fds, timeout) {
                break LoopEnd::HelperLost(InternalError::Poll(e).into());
            }
            for (i, (_, exec, stream)) in outputs.iter().enumerate() {
                if fds[2 + i].revents == 0 {
                    continue;
                }
                match exec {
                    None => self.read_output(&mut stdio, *stream),
                    Some(e) => {
                        if let Some(data) = read_some(&mut st.execs[*e].stdio, *stream) {
                            self.emit(Event::Container {
                                id: self.id.clone(),
                                event: ContainerEvent::ExecOutput {
                                    exec: st.execs[*e].n,
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
                    self.on_control(c, &mut helper, &mut stdio, &cgroup, &mut st);
                }
            }
            if fds[0].revents != 0 {
                match helper.read_event() {
                    Ok(Some(Reply::Exited { status })) => break LoopEnd::Exited(status),
                    Ok(Some(other)) => self.on_exec_reply(other, &mut st.execs),
                    Ok(None) => {}
                    Err(e) => break LoopEnd::HelperLost(e),
                }
            }
        };
        self.handle_exit(helper, stdio, &cgroup, end, st);
    }

    /// Hands one request to its operation.
    fn on_control(
        &mut self,
        control: Control,
        helper: &mut HelperProcess,
        stdio: &mut Stdio,
        cgroup: &CgroupFiles,
        st: &mut LoopState,
    ) {
        match control {
            Control::Input(b) => write_input(stdio, &b),
            Control::CloseInput => {
                if let Stdio::Pipes { stdin, .. } = stdio {
                    *stdin = None;
                }
            }
            Control::Resize(cols, rows) => resize(stdio, cols, rows),
            Control::Exec {
                n,
                command,
                terminal,
            } => self.start_exec(helper, st, n, command, terminal),
            Control::ExecInput(n, b) => {
                if let Some(e) = st.execs.iter_mut().find(|e| e.n == n) {
                    write_input(&mut e.stdio, &b);
                }
            }
            Control::ExecResize(n, cols, rows) => {
                if let Some(e) = st.execs.iter().find(|e| e.n == n) {
                    resize(&e.stdio, cols, rows);
                }
            }
            Control::Pause => self.pause(cgroup, st),
            Control::Resume => self.resume(cgroup, st),
            Control::Stop(grace) => self.stop(helper, cgroup, st, grace),
            Control::Kill(signal) => self.signal(helper, cgroup, st, signal),
            Control::Shutdown => self.shut_down(helper, cgroup, st),
            Control::Remove => self.remove_while_running(helper, cgroup, st),
        }
    }
}

fn unexpected(reply: &Reply) -> ContainerError {
    HelperError::UnexpectedReply {
        reply: format!("{reply:?}"),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_a_directory_and_nothing_else() {
        for ok in ["a", "web-1", "db_2", &"x".repeat(64)] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", "A", "a/b", "..", "a.b", " a", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad}");
        }
        let id = ContainerRuntime::new_id();
        assert!(valid_id(&id.0) && id.0.len() == 12, "{id}");
    }
}
