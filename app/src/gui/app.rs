//! The Hangar window: library on the left, tabs in the middle, log at the
//! bottom. Each frame drains engine and container runtime events, draws,
//! then applies the commands the panels queued.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use hangar_engine::containers::{
    ContainerCommand, ContainerConfig, ContainerEvent, ContainerId, ContainerRuntime,
    ContainerState, HelperCommand, OutputStream, RuntimePaths,
};
use hangar_engine::images::ImageRecord;
use hangar_engine::{
    Command, DefaultKit, Engine, Event, ExitReason, HostCapability, MachineDefinition,
    MachineStore, StoredMachine, VmConfig, VmId,
};

use super::command::{CommandQueue, UiCommand};
use super::container_dialog::{container_dialog_ui, ContainerDialogState};
use super::container_logs_tab::CONSOLE_LOG_FILE;
use super::host_banner::host_banner_ui;
use super::image_import::{default_pull_name, imported_text, ImageJob, ImageRequest};
use super::library_panel::library_ui;
use super::log_panel::{log_ui, notifications_ui};
use super::model::{
    Container, Containers, Entry, Log, Machine, Machines, RunStatus, Severity, LOG_TARGET,
};
use super::tabs::{close_machine, open_pane, open_pane_beside, Pane, PaneKind, TabsBehavior};
use super::ui_state::{ui_state_path, UiState};
use super::wizard::{wizard_ui, WizardContext, WizardState};

/// How long a guest gets to shut down after Stop before it is forced.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a container's process gets after Stop (SIGTERM) before SIGKILL.
pub const CONTAINER_STOP_GRACE: Duration = Duration::from_secs(10);

/// Where the app keeps its files and what it boots by default.
pub struct AppEnv {
    /// Hangar's config directory (machine definitions, window layout).
    pub config_dir: PathBuf,
    /// The default guest kit, if `packaging/setup.sh` built it.
    pub kit: Option<DefaultKit>,
    /// Where containers live and how helpers start, or why containers
    /// cannot be run (shown in the library).
    pub containers: Result<ContainerSetup, String>,
}

/// What the container runtime needs.
pub struct ContainerSetup {
    /// Data directory (images, containers) and run directory.
    pub paths: RuntimePaths,
    /// How the runtime starts its per-container helper processes.
    pub helper: HelperCommand,
}

impl ContainerSetup {
    /// The user's data directory; helpers re-execute this binary.
    pub fn from_system() -> Result<Self, String> {
        let paths = RuntimePaths::locate().map_err(|e| e.to_string())?;
        let helper = crate::cli::helper_command().map_err(|e| format!("{e:#}"))?;
        Ok(Self { paths, helper })
    }
}

impl AppEnv {
    /// The user's real directories.
    pub fn from_system() -> anyhow::Result<Self> {
        Ok(Self {
            config_dir: hangar_engine::store::config_dir()
                .context("cannot find Hangar's config directory")?,
            kit: DefaultKit::locate().ok(),
            containers: ContainerSetup::from_system(),
        })
    }
}

/// Start the container runtime; its waker repaints like the VM engine's.
fn start_container_runtime(
    setup: ContainerSetup,
    repaint: &Arc<OnceLock<egui::Context>>,
) -> Result<(ContainerRuntime, Receiver<ContainerEvent>), String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(format!(
            "containers need root, and Hangar runs as user {euid}"
        ));
    }
    let waker_ctx = repaint.clone();
    ContainerRuntime::new(setup.paths, setup.helper, move || {
        if let Some(ctx) = waker_ctx.get() {
            ctx.request_repaint();
        }
    })
    .map_err(|e| e.to_string())
}

/// The whole app: persisted UI state plus runtime handles.
pub struct HangarApp {
    /// Saved across restarts.
    pub ui_state: UiState,
    /// Everything else.
    pub rt: Runtime,
}

/// Runtime handles and state that are never saved.
pub struct Runtime {
    engine: Engine,
    events: Receiver<Event>,
    /// Set on the first frame; the engine's waker repaints through it.
    repaint: Arc<OnceLock<egui::Context>>,
    store: Option<MachineStore>,
    /// Library entries.
    pub machines: Machines,
    /// Containers the app ran (and whether it can run any).
    pub containers: Containers,
    container_runtime: Option<ContainerRuntime>,
    container_events: Option<Receiver<ContainerEvent>>,
    container_dialog: Option<ContainerDialogState>,
    /// The running (or last) image import or pull.
    image_job: Option<ImageJob>,
    /// Log panel and notifications.
    pub log: Log,
    host: HostCapability,
    kit: Option<DefaultKit>,
    wizard: Option<WizardState>,
    confirm_delete: Option<String>,
    ui_state_path: PathBuf,
    commands: CommandQueue,
}

impl HangarApp {
    /// Open the store, load machines and the saved layout, start the engine.
    pub fn new(env: AppEnv) -> Self {
        let repaint: Arc<OnceLock<egui::Context>> = Arc::new(OnceLock::new());
        let waker_ctx = repaint.clone();
        let (engine, events) = Engine::new(move || {
            if let Some(ctx) = waker_ctx.get() {
                ctx.request_repaint();
            }
        });
        let host = engine.capability().clone();
        let mut log = Log::default();
        log.push(Severity::Info, None, host.summary());
        let mut containers = Containers::default();
        let (container_runtime, container_events) = match env.containers {
            Ok(setup) => match start_container_runtime(setup, &repaint) {
                Ok((rt, events)) => {
                    // What earlier runs left stays listed until removed.
                    for record in rt.previous_containers() {
                        let log_path = rt.container_dir(&record.id).join(CONSOLE_LOG_FILE);
                        containers
                            .entries
                            .push(Container::from_record(record, log_path));
                    }
                    (Some(rt), Some(events))
                }
                Err(why) => {
                    log.push(
                        Severity::Info,
                        None,
                        format!("containers are unavailable: {why}"),
                    );
                    containers.unavailable = Some(why);
                    (None, None)
                }
            },
            Err(why) => {
                containers.unavailable = Some(why);
                (None, None)
            }
        };
        let ui_state_path = ui_state_path(&env.config_dir);
        let mut ui_state = UiState::load(&ui_state_path);
        let mut machines = Machines::default();
        let store = match MachineStore::open(&env.config_dir) {
            Ok(store) => {
                match store.load_all() {
                    Ok(all) => {
                        for stored in all {
                            let (id, entry) = match stored {
                                StoredMachine::Valid(def) => {
                                    (def.id.clone(), Entry::Machine(Box::new(Machine::new(def))))
                                }
                                StoredMachine::Broken { id, path, reason } => {
                                    log.push(
                                        Severity::Error,
                                        Some(id.clone()),
                                        format!("cannot load {}: {reason}", path.display()),
                                    );
                                    (id, Entry::Broken { path, reason })
                                }
                            };
                            machines.entries.insert(id, entry);
                        }
                    }
                    Err(e) => log.push(
                        Severity::Error,
                        None,
                        format!("{:#}", anyhow::Error::new(e)),
                    ),
                }
                Some(store)
            }
            Err(e) => {
                log.push(
                    Severity::Error,
                    None,
                    format!("{:#}", anyhow::Error::new(e)),
                );
                None
            }
        };
        // Tabs of machines that are gone are dropped from the saved layout.
        let stale: Vec<String> = ui_state
            .tabs
            .tiles
            .tiles()
            .filter_map(|t| match t {
                egui_tiles::Tile::Pane(p) if machines.get(&p.machine).is_none() => {
                    Some(p.machine.clone())
                }
                _ => None,
            })
            .collect();
        for m in stale {
            close_machine(&mut ui_state.tabs, &m);
        }
        if ui_state
            .selected
            .as_ref()
            .is_some_and(|s| !machines.entries.contains_key(s))
        {
            ui_state.selected = None;
        }
        Self {
            ui_state,
            rt: Runtime {
                engine,
                events,
                repaint,
                store,
                machines,
                containers,
                container_runtime,
                container_events,
                container_dialog: None,
                image_job: None,
                log,
                host,
                kit: env.kit,
                wizard: None,
                confirm_delete: None,
                ui_state_path,
                commands: CommandQueue::default(),
            },
        }
    }

    /// One frame: events in, panels drawn, commands applied.
    pub fn frame_ui(&mut self, ui: &mut egui::Ui) {
        let _ = self.rt.repaint.set(ui.ctx().clone());
        self.drain_events();
        self.rt.log.expire_notifications();

        host_banner_ui(ui, &self.rt.host);
        library_ui(
            ui,
            &self.rt.machines,
            &self.rt.containers,
            self.ui_state.selected.as_deref(),
            &self.rt.host,
            &mut self.rt.commands,
        );
        log_ui(ui, &self.rt.log, &mut self.ui_state.show_log);
        egui::CentralPanel::default().show(ui, |ui| {
            if self.ui_state.tabs.is_empty() {
                ui.centered_and_justified(|ui| {
                    ui.weak("Select a machine and open its Console or Overview. Drag tabs to place them side by side.");
                });
            } else {
                let mut behavior = TabsBehavior {
                    machines: &mut self.rt.machines,
                    containers: &mut self.rt.containers,
                    commands: &mut self.rt.commands,
                };
                self.ui_state.tabs.ui(&mut behavior, ui);
            }
        });
        // A Display tab that was not drawn (hidden, closed) lets go of the
        // keyboard, releasing what the guest holds.
        let pass = ui.ctx().cumulative_pass_nr();
        for (id, entry) in &mut self.rt.machines.entries {
            if let Entry::Machine(m) = entry {
                m.screen.release_if_hidden(id, pass, &mut self.rt.commands);
            }
        }
        let ctx = ui.ctx().clone();
        wizard_ui(
            &ctx,
            &mut self.rt.wizard,
            &WizardContext {
                machines: &self.rt.machines,
                kit: self.rt.kit.as_ref(),
                host: &self.rt.host,
            },
            &mut self.rt.commands,
        );
        container_dialog_ui(
            &ctx,
            &mut self.rt.container_dialog,
            self.rt.image_job.as_ref(),
            &mut self.rt.commands,
        );
        self.confirm_delete_ui(&ctx);
        notifications_ui(&ctx, &self.rt.log, &mut self.rt.commands);

        for cmd in self.rt.commands.take() {
            self.apply(cmd);
        }
    }

    fn confirm_delete_ui(&mut self, ctx: &egui::Context) {
        let Some(id) = self.rt.confirm_delete.clone() else {
            return;
        };
        let name = self.rt.machines.display_name(&id);
        let mut open = true;
        egui::Window::new("Delete machine?")
            .collapsible(false)
            .resizable(false)
            .open(&mut open)
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ctx, |ui| {
                ui.label(format!("Delete the machine \"{name}\"?"));
                ui.weak("Only its definition is removed; kernel and initramfs files stay where they are.");
                ui.horizontal(|ui| {
                    if ui.button("Delete").clicked() {
                        self.rt.commands.push(UiCommand::Delete(id.clone()));
                        self.rt.confirm_delete = None;
                    }
                    if ui.button("Cancel").clicked() {
                        self.rt.confirm_delete = None;
                    }
                });
            });
        if !open {
            self.rt.confirm_delete = None;
        }
    }

    fn drain_events(&mut self) {
        while let Ok(event) = self.rt.events.try_recv() {
            self.on_event(event);
        }
        // What the engine only logged still reaches the person (the Log's
        // own lines, echoed to stderr, are in it already).
        let own = format!("{LOG_TARGET}: ");
        for (_, text) in crate::logging::take_warnings() {
            if !text.starts_with(&own) {
                self.rt.log.push(Severity::Error, None, text);
            }
        }
        while let Some(event) = self
            .rt
            .container_events
            .as_ref()
            .and_then(|rx| rx.try_recv().ok())
        {
            self.on_container_event(event);
        }
        let finished = self.rt.image_job.as_mut().and_then(ImageJob::poll);
        if let Some(result) = finished {
            self.on_image_job_finished(result);
        }
    }

    /// An import or pull ended: say so, and offer the new image.
    fn on_image_job_finished(&mut self, result: Result<ImageRecord, String>) {
        match result {
            Ok(record) => {
                self.rt
                    .log
                    .push(Severity::Info, None, imported_text(&record));
                let names = self.image_names();
                if let Some(dialog) = &mut self.rt.container_dialog {
                    dialog.set_images(names);
                    dialog.image = record.name;
                }
            }
            Err(why) => self.rt.log.push(Severity::Error, None, why),
        }
    }

    /// The names of the images in the store (errors go to the Log).
    fn image_names(&mut self) -> Vec<String> {
        let Some(runtime) = &self.rt.container_runtime else {
            return Vec::new();
        };
        match runtime.images().list() {
            Ok(list) => list.into_iter().map(|i| i.name).collect(),
            Err(e) => {
                let message = format!(
                    "{:#}",
                    anyhow::Error::new(e).context("cannot list the container images")
                );
                self.error(None, message);
                Vec::new()
            }
        }
    }

    /// Start an import or pull on a worker thread, unless one runs.
    fn start_image_job(&mut self, request: ImageRequest) {
        if self.rt.image_job.as_ref().is_some_and(ImageJob::is_running) {
            self.error(
                None,
                format!(
                    "cannot {}: another image import is running",
                    request.describe()
                ),
            );
            return;
        }
        let Some(runtime) = &self.rt.container_runtime else {
            let why = self
                .rt
                .containers
                .unavailable
                .clone()
                .unwrap_or_else(|| "no container runtime".into());
            self.error(None, format!("containers are unavailable: {why}"));
            return;
        };
        let store = runtime.images().clone();
        let repaint = self.rt.repaint.clone();
        let described = request.describe();
        match ImageJob::start(store, request, move || {
            if let Some(ctx) = repaint.get() {
                ctx.request_repaint();
            }
        }) {
            Ok(job) => {
                self.rt.log.push(Severity::Info, None, described);
                self.rt.image_job = Some(job);
            }
            Err(e) => self.error(None, format!("{e:#}")),
        }
    }

    fn on_container_event(&mut self, event: ContainerEvent) {
        let rt = &mut self.rt;
        match event {
            ContainerEvent::StateChanged { id, state } => {
                if let Some(c) = rt.containers.get_mut(&id.0) {
                    c.state = state;
                }
                if state == ContainerState::Failed {
                    rt.log
                        .push(Severity::Info, Some(id.0), "could not be started".into());
                }
            }
            ContainerEvent::Started { id, pid, setup } => {
                if let Some(c) = rt.containers.get_mut(&id.0) {
                    c.pid = Some(pid);
                    c.setup_time = Some(setup);
                }
                rt.log.push(
                    Severity::Info,
                    Some(id.0),
                    format!("started in {} ms", setup.as_millis()),
                );
            }
            ContainerEvent::Output { id, stream, data } => {
                let Some(c) = rt.containers.get_mut(&id.0) else {
                    return;
                };
                let tty = stream == OutputStream::Terminal;
                c.on_output(&data, tty);
                // Answer the program's terminal queries at once, even while
                // its console is hidden (a pipe has nobody to answer).
                let replies = c.terminal.take_replies();
                if tty && !replies.is_empty() && c.is_active() {
                    if let Some(runtime) = &rt.container_runtime {
                        let _ = runtime.execute(ContainerCommand::Input { id, bytes: replies });
                    }
                }
            }
            ContainerEvent::Stats { id, stats } => {
                if let Some(c) = rt.containers.get_mut(&id.0) {
                    c.on_stats(stats);
                }
            }
            ContainerEvent::Exited { id, exit } => {
                if let Some(c) = rt.containers.get_mut(&id.0) {
                    c.on_exit(exit);
                    c.state = ContainerState::Exited;
                    let described = c.exit_description.clone().unwrap_or_default();
                    rt.log.push(Severity::Info, Some(id.0), described);
                }
            }
            ContainerEvent::Removed(id) => {
                rt.containers.remove(&id.0);
                close_machine(&mut self.ui_state.tabs, &id.0);
                rt.log.push(Severity::Info, Some(id.0), "removed".into());
            }
            ContainerEvent::Error { id, message } => {
                if let Some(c) = rt.containers.get_mut(&id.0) {
                    c.last_error = Some(message.clone());
                }
                rt.log.push(Severity::Error, Some(id.0), message);
            }
            // The app starts no exec'd processes (yet).
            ContainerEvent::ExecStarted { .. }
            | ContainerEvent::ExecOutput { .. }
            | ContainerEvent::ExecExited { .. } => {}
        }
    }

    /// Run a container runtime command; a refusal goes to the Log. True if
    /// accepted.
    fn container(&mut self, id: &str, command: ContainerCommand) -> bool {
        let Some(runtime) = &self.rt.container_runtime else {
            let why = self
                .rt
                .containers
                .unavailable
                .clone()
                .unwrap_or_else(|| "no container runtime".into());
            self.rt.log.push(
                Severity::Error,
                None,
                format!("containers are unavailable: {why}"),
            );
            return false;
        };
        match runtime.execute(command) {
            Ok(()) => true,
            Err(e) => {
                let message = format!("{:#}", anyhow::Error::new(e));
                if let Some(c) = self.rt.containers.get_mut(id) {
                    c.last_error = Some(message.clone());
                }
                self.rt
                    .log
                    .push(Severity::Error, Some(id.to_string()), message);
                false
            }
        }
    }

    fn run_container(&mut self, config: ContainerConfig) {
        let id = ContainerRuntime::new_id();
        let run = ContainerCommand::Run {
            id: id.clone(),
            config: config.clone(),
        };
        if !self.container(&id.0, run) {
            return;
        }
        let mut c = Container::new(id.clone(), config);
        c.log_path = self
            .rt
            .container_runtime
            .as_ref()
            .map(|runtime| runtime.container_dir(&id).join(CONSOLE_LOG_FILE));
        self.rt.log.push(
            Severity::Info,
            Some(id.0.clone()),
            format!("run {}", c.summary()),
        );
        self.rt.containers.entries.push(c);
        open_pane(
            &mut self.ui_state.tabs,
            Pane {
                machine: id.0,
                kind: PaneKind::ContainerConsole,
            },
        );
    }

    fn container_input(&mut self, id: &str, bytes: Vec<u8>) {
        let Some(c) = self.rt.containers.get(id) else {
            return;
        };
        let cid = ContainerId(id.to_string());
        if c.config.terminal {
            self.container(id, ContainerCommand::Input { id: cid, bytes });
            return;
        }
        // Pipes: Enter is a newline, Ctrl-D ends the input.
        let (data, eof) = match bytes.iter().position(|&b| b == 0x04) {
            Some(i) => (&bytes[..i], true),
            None => (&bytes[..], false),
        };
        let data: Vec<u8> = data
            .iter()
            .map(|&b| if b == b'\r' { b'\n' } else { b })
            .collect();
        if !data.is_empty() {
            self.container(
                id,
                ContainerCommand::Input {
                    id: cid.clone(),
                    bytes: data,
                },
            );
        }
        if eof {
            self.container(id, ContainerCommand::CloseInput(cid));
        }
    }

    fn on_event(&mut self, event: Event) {
        let rt = &mut self.rt;
        match event {
            Event::StateChanged { id, state } => {
                if let Some(m) = rt.machines.get_mut(&id.0) {
                    m.on_state(state, STOP_TIMEOUT);
                }
            }
            Event::Started { .. } => {}
            // The Display tab reads the frame when it draws; here it is
            // only counted (frames per second).
            Event::DisplayUpdated { id } => {
                if let Some(m) = rt.machines.get_mut(&id.0) {
                    m.screen.on_display_updated(std::time::Instant::now());
                }
            }
            Event::Stats { id, stats } => {
                if let Some(m) = rt.machines.get_mut(&id.0) {
                    m.on_stats(stats);
                }
            }
            Event::SerialOutput { id, bytes } => {
                let replies = match rt.machines.get_mut(&id.0) {
                    Some(m) => {
                        m.terminal.feed(&bytes);
                        m.terminal.take_replies()
                    }
                    None => Vec::new(),
                };
                // Answer the guest's terminal queries (cursor position...) at
                // once, even while its console is hidden. A guest that is gone
                // needs no answer.
                if !replies.is_empty() {
                    let _ = rt
                        .engine
                        .execute(Command::SerialInput { id, bytes: replies });
                }
            }
            Event::BootMarker {
                id,
                value,
                since_start,
            } => {
                if value == hangar_engine::engine::MARKER_INIT_REACHED {
                    let name = rt.machines.display_name(&id.0);
                    rt.log.push(
                        Severity::Info,
                        Some(name),
                        format!("init reached after {} ms", since_start.as_millis()),
                    );
                }
            }
            Event::Error {
                id,
                message,
                registers,
            } => {
                let name = rt.machines.display_name(&id.0);
                let full = match &registers {
                    Some(r) => format!("{message} [{r}]"),
                    None => message.clone(),
                };
                rt.log.push(Severity::Error, Some(name), full);
                if let Some(m) = rt.machines.get_mut(&id.0) {
                    m.last_error = Some(message);
                }
            }
            Event::Exited { id, reason } => {
                let name = rt.machines.display_name(&id.0);
                let message = match &reason {
                    // "stopped by force", not "stopped: stopped by force".
                    ExitReason::Stopped { .. } => reason.to_string(),
                    _ => format!("stopped: {reason}"),
                };
                rt.log.push(Severity::Info, Some(name), message);
                if let Some(m) = rt.machines.get_mut(&id.0) {
                    m.status = RunStatus::Stopped;
                    m.started = None;
                    m.screen.on_exited();
                    match &reason {
                        // Not every failure comes with an Error event first.
                        ExitReason::Failed(why) => {
                            if m.last_error.is_none() {
                                m.last_error = Some(why.clone());
                            }
                        }
                        _ => m.last_error = None,
                    }
                    m.last_exit = Some(reason);
                }
            }
        }
    }

    fn error(&mut self, machine: Option<&str>, message: String) {
        let name = machine.map(|id| self.rt.machines.display_name(id));
        if let Some(m) = machine.and_then(|id| self.rt.machines.get_mut(id)) {
            m.last_error = Some(message.clone());
        }
        self.rt.log.push(Severity::Error, name, message);
    }

    fn engine(&mut self, id: &str, command: Command) {
        self.try_engine(id, command);
    }

    /// Run an engine command; a refusal goes to the Log. True if accepted.
    fn try_engine(&mut self, id: &str, command: Command) -> bool {
        match self.rt.engine.execute(command) {
            Ok(()) => true,
            Err(e) => {
                self.error(Some(id), format!("{:#}", anyhow::Error::new(e)));
                false
            }
        }
    }

    /// Apply one command (after drawing).
    pub fn apply(&mut self, cmd: UiCommand) {
        match cmd {
            UiCommand::Select(id) => self.ui_state.selected = Some(id),
            UiCommand::Start(id) => self.start(&id),
            UiCommand::Pause(id) => self.engine(&id, Command::Pause(VmId(id.clone()))),
            UiCommand::Resume(id) => self.engine(&id, Command::Resume(VmId(id.clone()))),
            UiCommand::Stop(id) => {
                let asked = self.try_engine(
                    &id,
                    Command::Stop {
                        id: VmId(id.clone()),
                        timeout: STOP_TIMEOUT,
                    },
                );
                // Only a stop the engine took counts down; a refused one
                // would leave the machine "stopping" for ever.
                if let Some(m) = self.rt.machines.get_mut(&id).filter(|_| asked) {
                    m.status = RunStatus::Stopping {
                        force_at: std::time::Instant::now() + STOP_TIMEOUT,
                    };
                }
            }
            UiCommand::ForceStop(id) => self.engine(
                &id,
                Command::Stop {
                    id: VmId(id.clone()),
                    timeout: Duration::ZERO,
                },
            ),
            UiCommand::AskDelete(id) => self.rt.confirm_delete = Some(id),
            UiCommand::Delete(id) => self.delete(&id),
            UiCommand::Duplicate(id) => self.duplicate(&id),
            UiCommand::OpenWizard => self.rt.wizard = Some(WizardState::new(self.rt.kit.as_ref())),
            UiCommand::Create { config, start } => self.create(config, start),
            UiCommand::OpenTab(id, kind) => {
                open_pane(&mut self.ui_state.tabs, Pane { machine: id, kind })
            }
            UiCommand::OpenBeside(id) => open_pane_beside(
                &mut self.ui_state.tabs,
                Pane {
                    machine: id,
                    kind: PaneKind::Console,
                },
            ),
            UiCommand::OpenTabBeside(id, kind) => {
                open_pane_beside(&mut self.ui_state.tabs, Pane { machine: id, kind })
            }
            UiCommand::SerialInput(id, bytes) => self.engine(
                &id,
                Command::SerialInput {
                    id: VmId(id.clone()),
                    bytes,
                },
            ),
            UiCommand::KeyInput { id, key, pressed } => self.engine(
                &id,
                Command::KeyInput {
                    id: VmId(id.clone()),
                    key,
                    pressed,
                },
            ),
            UiCommand::PointerInput {
                id,
                dx,
                dy,
                wheel,
                buttons,
            } => self.engine(
                &id,
                Command::PointerInput {
                    id: VmId(id.clone()),
                    dx,
                    dy,
                    wheel,
                    buttons,
                },
            ),
            UiCommand::SendCtrlAltDel(id) => {
                self.engine(&id, Command::SendCtrlAltDel(VmId(id.clone())))
            }
            UiCommand::DisplayZoom(id, mode) => {
                if let Some(m) = self.rt.machines.get_mut(&id) {
                    m.screen.mode = mode;
                }
            }
            UiCommand::ScreenshotSaved { id, result } => {
                let name = self.rt.machines.display_name(&id);
                match result {
                    Ok(path) => self.rt.log.push(
                        Severity::Info,
                        Some(name),
                        format!("screenshot saved to {}", path.display()),
                    ),
                    Err(why) => self.rt.log.push(Severity::Error, Some(name), why),
                }
            }
            UiCommand::OpenContainerDialog => {
                let images = self.image_names();
                self.rt.container_dialog = Some(ContainerDialogState::new(images));
            }
            UiCommand::ImportImage { source, name } => {
                self.start_image_job(ImageRequest::Import { source, name })
            }
            UiCommand::PullImage {
                reference,
                name,
                plain_http,
            } => match name.or_else(|| default_pull_name(&reference)) {
                Some(name) => self.start_image_job(ImageRequest::Pull {
                    reference,
                    name,
                    plain_http,
                }),
                None => self.error(
                    None,
                    format!("cannot name an image after '{reference}': give a name"),
                ),
            },
            UiCommand::RunContainer(config) => self.run_container(config),
            UiCommand::StopContainer(id) => {
                let cid = ContainerId(id.clone());
                self.container(
                    &id,
                    ContainerCommand::Stop {
                        id: cid,
                        grace: CONTAINER_STOP_GRACE,
                    },
                );
            }
            UiCommand::KillContainer(id) => {
                let cid = ContainerId(id.clone());
                self.container(
                    &id,
                    ContainerCommand::Stop {
                        id: cid,
                        grace: Duration::ZERO,
                    },
                );
            }
            UiCommand::RemoveContainer(id) => {
                let cid = ContainerId(id.clone());
                let asked = self.container(
                    &id,
                    ContainerCommand::Remove {
                        id: cid,
                        force: false,
                    },
                );
                if let Some(c) = self.rt.containers.get_mut(&id).filter(|_| asked) {
                    c.removing = true;
                }
            }
            UiCommand::ContainerInput(id, bytes) => self.container_input(&id, bytes),
            UiCommand::ContainerResize { id, cols, rows } => {
                let cid = ContainerId(id.clone());
                self.container(
                    &id,
                    ContainerCommand::Resize {
                        id: cid,
                        cols,
                        rows,
                    },
                );
            }
            UiCommand::DismissNotification(i) => {
                if i < self.rt.log.notifications.len() {
                    self.rt.log.notifications.remove(i);
                }
            }
        }
    }

    fn start(&mut self, id: &str) {
        let Some(m) = self.rt.machines.get_mut(id) else {
            return;
        };
        let config = m.def.config.clone();
        m.last_error = None;
        open_pane(
            &mut self.ui_state.tabs,
            Pane {
                machine: id.to_string(),
                kind: PaneKind::Console,
            },
        );
        let started = self.try_engine(
            id,
            Command::Start {
                id: VmId(id.to_string()),
                config,
            },
        );
        // Starting at once, so that Start is disabled before the engine's
        // first event (a double click would be refused as already running).
        if let Some(m) = self.rt.machines.get_mut(id).filter(|_| started) {
            m.status = RunStatus::Starting;
            // The screen of this run (none if the definition has none).
            m.screen
                .attach(self.rt.engine.display(&VmId(id.to_string())));
        }
    }

    fn create(&mut self, config: VmConfig, start: bool) {
        let Some(store) = &self.rt.store else {
            self.error(
                None,
                "cannot save machines: Hangar's config directory is not usable".into(),
            );
            return;
        };
        let def = MachineDefinition::new(config);
        if let Err(e) = store.create(&def) {
            self.error(None, format!("{:#}", anyhow::Error::new(e)));
            return;
        }
        let id = def.id.clone();
        self.rt.log.push(
            Severity::Info,
            Some(def.config.name.clone()),
            "created".into(),
        );
        self.rt
            .machines
            .entries
            .insert(id.clone(), Entry::Machine(Box::new(Machine::new(def))));
        self.ui_state.selected = Some(id.clone());
        if start {
            self.start(&id);
        }
    }

    fn duplicate(&mut self, id: &str) {
        let Some(m) = self.rt.machines.get(id) else {
            return;
        };
        let mut config = m.def.config.clone();
        let base = format!("{} (copy)", config.name);
        let mut name = base.clone();
        let mut n = 2;
        while self.rt.machines.name_taken(&name) {
            name = format!("{base} {n}");
            n += 1;
        }
        config.name = name;
        self.create(config, false);
    }

    fn delete(&mut self, id: &str) {
        if self
            .rt
            .machines
            .get(id)
            .is_some_and(|m| m.status.is_active())
        {
            self.error(Some(id), "stop the machine before deleting it".into());
            return;
        }
        let Some(store) = &self.rt.store else {
            return;
        };
        if let Err(e) = store.delete(id) {
            self.error(Some(id), format!("{:#}", anyhow::Error::new(e)));
            return;
        }
        let name = self.rt.machines.display_name(id);
        self.rt.machines.entries.remove(id);
        close_machine(&mut self.ui_state.tabs, id);
        if self.ui_state.selected.as_deref() == Some(id) {
            self.ui_state.selected = None;
        }
        self.rt
            .log
            .push(Severity::Info, Some(name), "deleted".into());
    }

    /// The open wizard, if any (UI scripts set its fields: automation.rs).
    pub fn wizard_mut(&mut self) -> Option<&mut WizardState> {
        self.rt.wizard.as_mut()
    }

    /// The open Run container dialog, if any (tests and UI scripts).
    pub fn container_dialog_mut(&mut self) -> Option<&mut ContainerDialogState> {
        self.rt.container_dialog.as_mut()
    }

    /// The running (or last) image import or pull, if any.
    pub fn image_job(&self) -> Option<&ImageJob> {
        self.rt.image_job.as_ref()
    }

    /// The container runtime, if containers can run here.
    pub fn container_runtime(&self) -> Option<&ContainerRuntime> {
        self.rt.container_runtime.as_ref()
    }

    /// Save the window layout.
    pub fn save_ui_state(&mut self) {
        if let Err(e) = self.ui_state.save(&self.rt.ui_state_path) {
            self.rt.log.push(Severity::Error, None, format!("{e:#}"));
        }
    }
}

impl eframe::App for HangarApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.frame_ui(ui);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.save_ui_state();
    }
}
