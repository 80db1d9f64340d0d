//! The Hangar window: library on the left, tabs in the middle, log at the
//! bottom. Each frame drains the engine's events (machines and containers
//! alike), draws, then applies the commands the panels queued.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use hangar_engine::containers::{ContainerConfig, RuntimePaths};
use hangar_engine::images::ImageRecord;
use hangar_engine::{
    disks, templates, Command, ContainerCommand, ContainerSetup, DefaultKit, DiskConfig, Engine,
    EngineOptions, Event, HostCapability, MachineDefinition, MachineStore, NetworkConfig,
    OutputStream, StoredMachine, TemplateStatus, VmCommand, VmConfig, VmEvent, VmExit,
    WorkloadConfig, WorkloadId, WorkloadState, MARKER_INIT_REACHED,
};

use super::command::{CommandQueue, DiskRequest, UiCommand};
use super::container_dialog::{container_dialog_ui, ContainerDialogState};
use super::container_logs_tab::CONSOLE_LOG_FILE;
use super::delete_dialog::{delete_dialog_ui, DeleteConfirmation};
use super::host_banner::host_banner_ui;
use super::image_import::{default_pull_name, imported_text, ImageJob, ImageRequest};
use super::library_panel::library_ui;
use super::log_panel::{log_ui, notifications_ui};
use super::machine_disks::{delete_rows, format_size, machine_dir, new_disk_path};
use super::model::{
    Container, Containers, Entry, Log, Machine, Machines, RunStatus, Severity, LOG_TARGET,
};
use super::tabs::{close_machine, open_pane, open_pane_beside, Pane, PaneKind, TabsBehavior};
use super::template_clone::{CloneJob, TemplateMachine};
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
    /// Hangar's data directory: templates, and the disks Hangar makes for
    /// machines (`machines/<id>/`). None if it cannot be found.
    pub data_dir: Option<PathBuf>,
    /// The default guest kit, if `packaging/setup.sh` built it.
    pub kit: Option<DefaultKit>,
    /// Where containers live and how helpers start, or why containers
    /// cannot be run (shown in the library).
    pub containers: Result<ContainerSetup, String>,
}

/// The user's container directories; helpers re-execute this binary.
pub fn container_setup_from_system() -> Result<ContainerSetup, String> {
    let paths = RuntimePaths::locate().map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
    let helper = crate::cli::helper_command().map_err(|e| format!("{e:#}"))?;
    Ok(ContainerSetup { paths, helper })
}

impl AppEnv {
    /// The user's real directories.
    pub fn from_system() -> anyhow::Result<Self> {
        Ok(Self {
            config_dir: hangar_engine::store::config_dir()
                .context("cannot find Hangar's config directory")?,
            data_dir: hangar_engine::kit::data_dir().ok(),
            kit: DefaultKit::locate().ok(),
            containers: container_setup_from_system(),
        })
    }
}

/// The app runs containers as root only (the library says why otherwise).
fn containers_as_root(setup: ContainerSetup) -> Result<ContainerSetup, String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(format!(
            "containers need root, and Hangar runs as user {euid}"
        ));
    }
    Ok(setup)
}

/// egui's default fonts, with its monospace font (Hack) as a fallback of
/// the proportional one: Ubuntu-Light has no arrows, and port forwards
/// (ours and the engine's messages) are written `8080 → 80`.
fn install_fonts(ctx: &egui::Context) {
    let mut fonts = egui::FontDefinitions::default();
    let hack = fonts
        .families
        .get(&egui::FontFamily::Monospace)
        .and_then(|mono| mono.first().cloned());
    if let (Some(hack), Some(proportional)) = (
        hack,
        fonts.families.get_mut(&egui::FontFamily::Proportional),
    ) {
        if !proportional.contains(&hack) {
            proportional.push(hack);
        }
    }
    ctx.set_fonts(fonts);
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
    container_dialog: Option<ContainerDialogState>,
    /// The running (or last) image import or pull.
    image_job: Option<ImageJob>,
    /// A template's disk being copied for a new machine (or the copy that
    /// failed, until dismissed).
    clone_job: Option<CloneJob>,
    /// Templates, and the disks Hangar makes (see [`AppEnv::data_dir`]).
    data_dir: Option<PathBuf>,
    /// Log panel and notifications.
    pub log: Log,
    host: HostCapability,
    kit: Option<DefaultKit>,
    wizard: Option<WizardState>,
    confirm_delete: Option<DeleteConfirmation>,
    ui_state_path: PathBuf,
    commands: CommandQueue,
}

impl HangarApp {
    /// Open the store, load machines and the saved layout, start the engine.
    pub fn new(env: AppEnv) -> Self {
        let repaint: Arc<OnceLock<egui::Context>> = Arc::new(OnceLock::new());
        let waker_ctx = repaint.clone();
        let set_up = env.containers.is_ok();
        let options = EngineOptions {
            containers: env.containers.and_then(containers_as_root),
        };
        let (engine, events) = Engine::new(options, move || {
            if let Some(ctx) = waker_ctx.get() {
                ctx.request_repaint();
            }
        });
        let host = engine.capability().clone();
        let mut log = Log::default();
        log.push(Severity::Info, None, host.summary());
        let mut containers = Containers::default();
        match engine.containers_unavailable() {
            None => {
                // What earlier runs left stays listed until removed.
                for record in engine.previous_containers() {
                    let log_path = engine
                        .container_dir(&record.id)
                        .map(|d| d.join(CONSOLE_LOG_FILE))
                        .unwrap_or_default();
                    containers
                        .entries
                        .push(Container::from_record(record, log_path));
                }
            }
            Some(why) => {
                // The reason's whole chain: the runtime's errors keep the
                // cause as their source.
                let why = format!("{:#}", anyhow::Error::new(why.clone()));
                // A set-up that was found but could not start is news; no
                // set-up at all is only shown in the library.
                if set_up {
                    log.push(
                        Severity::Info,
                        None,
                        format!("containers are unavailable: {why}"),
                    );
                }
                containers.unavailable = Some(why);
            }
        }
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
                container_dialog: None,
                image_job: None,
                clone_job: None,
                data_dir: env.data_dir,
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
        if self.rt.repaint.set(ui.ctx().clone()).is_ok() {
            install_fonts(ui.ctx());
        }
        self.drain_events();
        self.rt.log.expire_notifications();

        host_banner_ui(ui, &self.rt.host);
        library_ui(
            ui,
            &self.rt.machines,
            &self.rt.containers,
            self.ui_state.selected.as_deref(),
            &self.rt.host,
            self.rt.clone_job.as_ref(),
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
                    data_dir: self.rt.data_dir.as_deref(),
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
                data_dir: self.rt.data_dir.as_deref(),
                copying: self
                    .rt
                    .clone_job
                    .as_ref()
                    .filter(|j| j.is_running())
                    .map(CloneJob::name),
            },
            &mut self.rt.commands,
        );
        container_dialog_ui(
            &ctx,
            &mut self.rt.container_dialog,
            self.rt.image_job.as_ref(),
            &mut self.rt.commands,
        );
        delete_dialog_ui(&ctx, &mut self.rt.confirm_delete, &mut self.rt.commands);
        notifications_ui(&ctx, &self.rt.log, &mut self.rt.commands);

        for cmd in self.rt.commands.take() {
            self.apply(cmd);
        }
    }

    fn drain_events(&mut self) {
        while let Ok(event) = self.rt.events.try_recv() {
            if self.rt.containers.get(event.id().as_str()).is_some() {
                self.on_container_event(event);
            } else {
                self.on_machine_event(event);
            }
        }
        // What the engine only logged still reaches the person (the Log's
        // own lines, echoed to stderr, are in it already).
        let own = format!("{LOG_TARGET}: ");
        for (_, text) in crate::logging::take_warnings() {
            if !text.starts_with(&own) {
                self.rt.log.push(Severity::Error, None, text);
            }
        }
        let finished = self.rt.image_job.as_mut().and_then(ImageJob::poll);
        if let Some(result) = finished {
            self.on_image_job_finished(result);
        }
        let copied = self.rt.clone_job.as_mut().and_then(CloneJob::poll);
        if let Some(result) = copied {
            self.on_clone_finished(result);
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
        let Ok(images) = self.rt.engine.images() else {
            return Vec::new();
        };
        match images.list() {
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
        let store = match self.rt.engine.images() {
            Ok(images) => images.clone(),
            Err(e) => {
                self.error(None, format!("{:#}", anyhow::Error::new(e)));
                return;
            }
        };
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

    fn on_container_event(&mut self, event: Event) {
        let rt = &mut self.rt;
        match event {
            Event::StateChanged { id, state } => {
                if let Some(c) = rt.containers.get_mut(&id.0) {
                    c.state = state;
                }
                if state == WorkloadState::Failed {
                    rt.log
                        .push(Severity::Info, Some(id.0), "could not be started".into());
                }
            }
            Event::Started { id, pid, setup } => {
                if let Some(c) = rt.containers.get_mut(&id.0) {
                    c.pid = pid;
                    c.setup_time = Some(setup);
                }
                rt.log.push(
                    Severity::Info,
                    Some(id.0),
                    format!("started in {} ms", setup.as_millis()),
                );
            }
            Event::Output { id, stream, bytes } => {
                let Some(c) = rt.containers.get_mut(&id.0) else {
                    return;
                };
                let tty = stream == OutputStream::Terminal;
                c.on_output(&bytes, tty);
                // Answer the program's terminal queries at once, even while
                // its console is hidden (a pipe has nobody to answer).
                let replies = c.terminal.take_replies();
                if tty && !replies.is_empty() && c.is_active() {
                    let _ = rt.engine.execute(Command::Input { id, bytes: replies });
                }
            }
            Event::Stats { id, stats } => {
                if let Some(c) = rt.containers.get_mut(&id.0) {
                    c.on_stats(stats);
                }
            }
            Event::Exited { id, exit } => {
                if let Some(c) = rt.containers.get_mut(&id.0) {
                    if let Some(e) = exit.as_container() {
                        c.on_exit(e.clone());
                    }
                    c.state = WorkloadState::Stopped;
                    let described = c.exit_description.clone().unwrap_or_default();
                    rt.log.push(Severity::Info, Some(id.0), described);
                }
            }
            Event::Removed(id) => {
                rt.containers.remove(&id.0);
                close_machine(&mut self.ui_state.tabs, &id.0);
                rt.log.push(Severity::Info, Some(id.0), "removed".into());
            }
            Event::Error { id, message, .. } => {
                if let Some(c) = rt.containers.get_mut(&id.0) {
                    c.last_error = Some(message.clone());
                }
                rt.log.push(Severity::Error, Some(id.0), message);
            }
            // The app starts no exec'd processes (yet), and a container has
            // no VM events.
            Event::Container { .. } | Event::Vm { .. } => {}
        }
    }

    /// Run a container command; a refusal goes to the Log. True if
    /// accepted.
    fn container(&mut self, id: &str, command: Command) -> bool {
        match self.rt.engine.execute(command) {
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
        let id = Engine::new_container_id();
        let run = Command::Start {
            id: id.clone(),
            config: WorkloadConfig::Container(config.clone()),
        };
        if !self.container(&id.0, run) {
            return;
        }
        let mut c = Container::new(id.clone(), config);
        c.log_path = self
            .rt
            .engine
            .container_dir(&id)
            .ok()
            .map(|dir| dir.join(CONSOLE_LOG_FILE));
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
        let cid = WorkloadId::from(id);
        if c.config.terminal {
            self.container(id, Command::Input { id: cid, bytes });
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
                Command::Input {
                    id: cid.clone(),
                    bytes: data,
                },
            );
        }
        if eof {
            self.container(
                id,
                Command::Container {
                    id: cid,
                    command: ContainerCommand::CloseInput,
                },
            );
        }
    }

    fn on_machine_event(&mut self, event: Event) {
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
            Event::Vm {
                id,
                event: VmEvent::DisplayUpdated,
            } => {
                if let Some(m) = rt.machines.get_mut(&id.0) {
                    m.screen.on_display_updated(std::time::Instant::now());
                }
            }
            Event::Stats { id, stats } => {
                if let Some(m) = rt.machines.get_mut(&id.0) {
                    m.on_stats(stats);
                }
            }
            Event::Output { id, bytes, .. } => {
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
                    let _ = rt.engine.execute(Command::Input { id, bytes: replies });
                }
            }
            Event::Vm {
                id,
                event: VmEvent::BootMarker { value, since_start },
            } => {
                if value == MARKER_INIT_REACHED {
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
            Event::Exited { id, exit } => {
                let Some(reason) = exit.as_vm().cloned() else {
                    return;
                };
                let name = rt.machines.display_name(&id.0);
                let message = match &reason {
                    // "stopped by force", not "stopped: stopped by force".
                    VmExit::Stopped { .. } => reason.to_string(),
                    _ => format!("stopped: {reason}"),
                };
                rt.log.push(Severity::Info, Some(name), message);
                if let Some(m) = rt.machines.get_mut(&id.0) {
                    m.status = RunStatus::Stopped;
                    m.started = None;
                    m.screen.on_exited();
                    match &reason {
                        // Not every failure comes with an Error event first.
                        VmExit::Failed(why) => {
                            if m.last_error.is_none() {
                                m.last_error = Some(why.clone());
                            }
                        }
                        _ => m.last_error = None,
                    }
                    m.last_exit = Some(reason);
                }
            }
            // Only containers send these.
            Event::Removed(_) | Event::Container { .. } => {}
        }
    }

    fn error(&mut self, machine: Option<&str>, message: String) {
        let name = machine.map(|id| self.rt.machines.display_name(id));
        if let Some(m) = machine.and_then(|id| self.rt.machines.get_mut(id)) {
            m.last_error = Some(message.clone());
        }
        self.rt.log.push(Severity::Error, name, message);
    }

    fn send_to_engine(&mut self, id: &str, command: Command) {
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
            UiCommand::Pause(id) => {
                self.send_to_engine(&id, Command::Pause(WorkloadId::from(id.as_str())))
            }
            UiCommand::Resume(id) => {
                self.send_to_engine(&id, Command::Resume(WorkloadId::from(id.as_str())))
            }
            UiCommand::Stop(id) => {
                let asked = self.try_engine(
                    &id,
                    Command::Stop {
                        id: WorkloadId::from(id.as_str()),
                        grace: STOP_TIMEOUT,
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
            UiCommand::ForceStop(id) => {
                self.send_to_engine(&id, Command::Kill(WorkloadId::from(id.as_str())))
            }
            UiCommand::AskDelete(id) => {
                self.rt.confirm_delete = Some(DeleteConfirmation::new(
                    &id,
                    &self.rt.machines,
                    self.rt.data_dir.as_deref(),
                ))
            }
            UiCommand::Delete(id) => self.delete(&id, false),
            UiCommand::DeleteWithDisks(id) => self.delete(&id, true),
            UiCommand::Duplicate(id) => self.duplicate(&id),
            UiCommand::OpenWizard => {
                let templates = self
                    .rt
                    .data_dir
                    .as_deref()
                    .map(templates::available)
                    .unwrap_or_default();
                self.rt.wizard = Some(WizardState::new(self.rt.kit.as_ref(), templates));
            }
            UiCommand::Create { config, start } => {
                self.create(config, start, None);
            }
            UiCommand::CreateFromTemplate(request) => self.create_from_template(request),
            UiCommand::DismissCloneJob => {
                if !self.rt.clone_job.as_ref().is_some_and(CloneJob::is_running) {
                    self.rt.clone_job = None;
                }
            }
            UiCommand::AddDisk { id, disk } => self.add_disk(&id, disk),
            UiCommand::GrowDisk { id, path, new_size } => self.grow_disk(&id, &path, new_size),
            UiCommand::DetachDisk { id, path } => self.detach_disk(&id, &path),
            UiCommand::SetNetwork { id, network } => self.set_network(&id, network),
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
            UiCommand::SerialInput(id, bytes) => self.send_to_engine(
                &id,
                Command::Input {
                    id: WorkloadId::from(id.as_str()),
                    bytes,
                },
            ),
            UiCommand::KeyInput { id, key, pressed } => self.send_to_engine(
                &id,
                Command::Vm {
                    id: WorkloadId::from(id.as_str()),
                    command: VmCommand::Key { key, pressed },
                },
            ),
            UiCommand::PointerInput {
                id,
                dx,
                dy,
                wheel,
                buttons,
            } => self.send_to_engine(
                &id,
                Command::Vm {
                    id: WorkloadId::from(id.as_str()),
                    command: VmCommand::Pointer {
                        dx,
                        dy,
                        wheel,
                        buttons,
                    },
                },
            ),
            UiCommand::SendCtrlAltDel(id) => {
                let command = Command::Vm {
                    id: WorkloadId::from(id.as_str()),
                    command: VmCommand::CtrlAltDel,
                };
                self.send_to_engine(&id, command)
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
                let cid = WorkloadId::from(id.as_str());
                self.container(
                    &id,
                    Command::Stop {
                        id: cid,
                        grace: CONTAINER_STOP_GRACE,
                    },
                );
            }
            UiCommand::KillContainer(id) => {
                // SIGTERM and, at once, SIGKILL to every process.
                let cid = WorkloadId::from(id.as_str());
                self.container(
                    &id,
                    Command::Stop {
                        id: cid,
                        grace: Duration::ZERO,
                    },
                );
            }
            UiCommand::RemoveContainer(id) => {
                let cid = WorkloadId::from(id.as_str());
                let asked = self.container(
                    &id,
                    Command::Remove {
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
                let cid = WorkloadId::from(id.as_str());
                self.container(
                    &id,
                    Command::Resize {
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
                id: WorkloadId::from(id),
                config: WorkloadConfig::Vm(config),
            },
        );
        // Starting at once, so that Start is disabled before the engine's
        // first event (a double click would be refused as already running).
        if let Some(m) = self.rt.machines.get_mut(id).filter(|_| started) {
            m.status = RunStatus::Starting;
            // The screen of this run (none if the definition has none).
            m.screen
                .attach(self.rt.engine.display(&WorkloadId::from(id)));
        }
    }

    /// Save a new machine (`def` if it was made already, for its id) and
    /// start it if asked; true if it was saved.
    fn create(&mut self, config: VmConfig, start: bool, def: Option<MachineDefinition>) -> bool {
        let Some(store) = &self.rt.store else {
            self.error(
                None,
                "cannot save machines: Hangar's config directory is not usable".into(),
            );
            return false;
        };
        let def = def.unwrap_or_else(|| MachineDefinition::new(config));
        if let Err(e) = store.create(&def) {
            self.error(None, format!("{:#}", anyhow::Error::new(e)));
            return false;
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
        true
    }

    fn duplicate(&mut self, id: &str) {
        let Some(m) = self.rt.machines.get(id) else {
            return;
        };
        let mut config = m.def.config.clone();
        let original = config.name.clone();
        let base = format!("{} (copy)", config.name);
        let mut name = base.clone();
        let mut n = 2;
        while self.rt.machines.name_taken(&name) {
            name = format!("{base} {n}");
            n += 1;
        }
        config.name = name;
        let shared = config.disks.len();
        let copy_name = config.name.clone();
        if self.create(config, false, None) && shared > 0 {
            // The copy's definition names the same disk files: two machines
            // writing one disk at once would corrupt it.
            self.rt.log.push(
                Severity::Info,
                Some(copy_name),
                format!(
                    "shares its {shared} disk file(s) with \"{original}\": do not run both at once"
                ),
            );
        }
    }

    /// Delete a stopped machine's definition; with `with_disks`, then the
    /// disk files in its own folder that no other machine uses (files
    /// elsewhere are never deleted), and the folder if that empties it.
    fn delete(&mut self, id: &str, with_disks: bool) {
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
        // Decided again here, not taken from the dialog: files and other
        // machines may have changed since it opened.
        let own_dir = self.rt.data_dir.as_deref().map(|d| machine_dir(d, id));
        let doomed: Vec<PathBuf> = match (with_disks, self.rt.machines.get(id)) {
            (true, Some(m)) => {
                let others = self
                    .rt
                    .machines
                    .entries
                    .iter()
                    .filter_map(|(other, e)| match e {
                        Entry::Machine(o) if other != id => {
                            Some((o.name(), o.def.config.disks.as_slice()))
                        }
                        _ => None,
                    });
                delete_rows(&m.def.config.disks, own_dir.as_deref(), others)
                    .into_iter()
                    .filter(|r| r.deletable())
                    .map(|r| r.path)
                    .collect()
            }
            _ => Vec::new(),
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
            .push(Severity::Info, Some(name.clone()), "deleted".into());
        for path in doomed {
            match std::fs::remove_file(&path) {
                Ok(()) => self.rt.log.push(
                    Severity::Info,
                    Some(name.clone()),
                    format!("deleted its disk {}", path.display()),
                ),
                Err(e) => self.rt.log.push(
                    Severity::Error,
                    Some(name.clone()),
                    format!("cannot delete its disk {}: {e}", path.display()),
                ),
            }
        }
        if with_disks {
            // Only an empty folder goes: anything else in it was not listed.
            if let Some(dir) = own_dir {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }

    /// Start copying a template's disk for a new machine; the machine is
    /// saved when the copy is complete ([`Self::on_clone_finished`]).
    fn create_from_template(&mut self, request: TemplateMachine) {
        if let Err(e) = self.start_clone(request) {
            self.error(None, format!("{e:#}"));
        }
    }

    fn start_clone(&mut self, request: TemplateMachine) -> anyhow::Result<()> {
        if let Some(job) = self.rt.clone_job.as_ref().filter(|j| j.is_running()) {
            anyhow::bail!(
                "cannot create {}: the disk of {} is being copied; try again when it is done",
                request.name,
                job.name()
            );
        }
        let data_dir = self
            .rt
            .data_dir
            .clone()
            .context("Hangar has no data folder to keep the machine's disk in")?;
        let kit = self.rt.kit.as_ref().context(
            "the default guest kit, which boots templates, is not installed: run packaging/setup.sh",
        )?;
        // Looked up again: the template may have gone since the wizard opened.
        let template = match templates::available(&data_dir)
            .into_iter()
            .find(|t| match t {
                TemplateStatus::Ready(t) => t.id == request.template,
                TemplateStatus::Missing { id, .. } => *id == request.template,
            }) {
            Some(TemplateStatus::Ready(t)) => t,
            Some(TemplateStatus::Missing { title, reason, .. }) => {
                anyhow::bail!(
                    "cannot create {}: {title} is not available: {reason}",
                    request.name
                )
            }
            None => anyhow::bail!("there is no template {:?}", request.template),
        };
        let config = |disk: PathBuf| {
            let mut c = templates::vm_config(
                &template,
                kit,
                &request.name,
                request.vcpus,
                request.memory_mib,
                disk,
                request.network.clone(),
            );
            if let Some(cmdline) = &request.cmdline {
                c.cmdline = cmdline.clone();
            }
            c
        };
        // The id names the disk's folder, so the definition comes first
        // (saved only once the disk is complete).
        let mut def = MachineDefinition::new(config(PathBuf::new()));
        let dest = machine_dir(&data_dir, &def.id).join("disk.raw");
        def.config = config(dest.clone());
        let repaint = self.rt.repaint.clone();
        let job = CloneJob::start(
            template,
            dest,
            request.disk_size,
            def,
            request.start,
            move || {
                if let Some(ctx) = repaint.get() {
                    ctx.request_repaint();
                }
            },
        )?;
        self.rt.log.push(
            Severity::Info,
            Some(request.name.clone()),
            format!("copying the {} disk", job.template_title),
        );
        self.rt.clone_job = Some(job);
        Ok(())
    }

    /// A template copy ended: save the machine, or say why not. A machine
    /// that cannot be saved takes its new disk with it.
    fn on_clone_finished(&mut self, result: Result<(), String>) {
        let Some(job) = self.rt.clone_job.as_ref() else {
            return;
        };
        let (def, start) = (job.def.clone(), job.start);
        if let Err(why) = result {
            self.error(None, why);
            return;
        }
        let disk = def.config.disks.first().map(|d| d.path.clone());
        let saved = self.create(def.config.clone(), start, Some(def.clone()));
        if !saved {
            if let Some(disk) = disk {
                let _ = std::fs::remove_file(&disk);
                if let Some(dir) = disk.parent() {
                    let _ = std::fs::remove_dir(dir);
                }
            }
            if let Some(job) = &mut self.rt.clone_job {
                job.outcome = Some(Err("the machine could not be saved (see the Log)".into()));
            }
            return;
        }
        self.rt.clone_job = None;
    }

    /// Change a stopped machine's definition with `change` (which returns
    /// what it did, for the Log), save it, and keep it; on any failure the
    /// definition stays as it was and the Log says why. True if saved.
    fn update_definition(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut VmConfig) -> anyhow::Result<String>,
    ) -> bool {
        let result = (|| {
            let m = self.rt.machines.get(id).context("no such machine")?;
            if m.status.is_active() {
                anyhow::bail!("stop the machine before changing its disks or network");
            }
            let store = self
                .rt
                .store
                .as_ref()
                .context("cannot save machines: Hangar's config directory is not usable")?;
            let mut def = m.def.clone();
            let done = change(&mut def.config)?;
            store.update(&def)?;
            Ok((def, done))
        })();
        match result {
            Ok((def, done)) => {
                let name = def.config.name.clone();
                if let Some(m) = self.rt.machines.get_mut(id) {
                    m.def = def;
                    m.overview.disk_info.invalidate();
                }
                self.rt.log.push(Severity::Info, Some(name), done);
                true
            }
            Err(e) => {
                self.error(Some(id), format!("{e:#}"));
                false
            }
        }
    }

    fn add_disk(&mut self, id: &str, request: DiskRequest) {
        let own_dir = self.rt.data_dir.as_deref().map(|d| machine_dir(d, id));
        let mut created = None;
        let saved = self.update_definition(id, |config| {
            if config.disks.len() >= hangar_engine::config::MAX_DISKS {
                anyhow::bail!(
                    "a machine can have at most {} disks",
                    hangar_engine::config::MAX_DISKS
                );
            }
            let (disk, done) = match request {
                DiskRequest::New { format, size } => {
                    let dir = own_dir.context("Hangar has no data folder to keep new disks in")?;
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    let path = new_disk_path(&dir, format, &config.disks);
                    disks::create(&path, format, size)
                        .with_context(|| format!("cannot create the disk {}", path.display()))?;
                    created = Some(path.clone());
                    let done =
                        format!("new {} {format} disk {}", format_size(size), path.display());
                    (
                        DiskConfig {
                            path,
                            format,
                            read_only: false,
                        },
                        done,
                    )
                }
                DiskRequest::Existing {
                    path,
                    format,
                    read_only,
                } => {
                    // Looked at again: the file may have changed since the form read it.
                    let info = disks::inspect(&path)
                        .with_context(|| format!("cannot attach {}", path.display()))?;
                    if info.format != format {
                        anyhow::bail!(
                            "{} is {} now, not {format}; choose it again",
                            path.display(),
                            info.format
                        );
                    }
                    if config.disks.iter().any(|d| d.path == path) {
                        anyhow::bail!("{} is attached already", path.display());
                    }
                    let done = format!("attached {} ({format})", path.display());
                    (
                        DiskConfig {
                            path,
                            format,
                            read_only,
                        },
                        done,
                    )
                }
            };
            config.disks.push(disk);
            Ok(done)
        });
        // A new file whose definition could not be saved goes again: no
        // disk that no machine knows about.
        if !saved {
            if let Some(path) = created {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn grow_disk(&mut self, id: &str, path: &std::path::Path, new_size: u64) {
        // Through update_definition for its checks (the machine is stopped,
        // the file is one of its disks); the definition is saved unchanged.
        self.update_definition(id, |config| {
            let disk = config
                .disks
                .iter()
                .find(|d| d.path == path)
                .with_context(|| format!("{} is not one of its disks", path.display()))?;
            disks::grow(&disk.path, disk.format, new_size)
                .with_context(|| format!("cannot grow {}", path.display()))?;
            Ok(format!(
                "grew {} to {}",
                path.display(),
                format_size(new_size)
            ))
        });
    }

    fn detach_disk(&mut self, id: &str, path: &std::path::Path) {
        self.update_definition(id, |config| {
            let before = config.disks.len();
            config.disks.retain(|d| d.path != path);
            if config.disks.len() == before {
                anyhow::bail!("{} is not one of its disks", path.display());
            }
            Ok(format!("detached {} (the file stays)", path.display()))
        });
    }

    fn set_network(&mut self, id: &str, network: Option<NetworkConfig>) {
        self.update_definition(id, |config| {
            if let Some(n) = &network {
                n.validate()?;
            }
            config.network = network;
            Ok(format!(
                "network: {}",
                super::port_forwards::network_text(config.network.as_ref())
            ))
        });
    }

    /// The open wizard, if any (UI scripts set its fields: automation.rs).
    pub fn wizard_mut(&mut self) -> Option<&mut WizardState> {
        self.rt.wizard.as_mut()
    }

    /// Choose the open wizard's OS source, as clicking it would (UI scripts).
    pub fn set_wizard_source(&mut self, source: super::wizard::OsSource) {
        if let Some(w) = self.rt.wizard.as_mut() {
            w.set_source(source, self.rt.kit.as_ref());
        }
    }

    /// The open Run container dialog, if any (tests and UI scripts).
    pub fn container_dialog_mut(&mut self) -> Option<&mut ContainerDialogState> {
        self.rt.container_dialog.as_mut()
    }

    /// The running (or failed) template disk copy, if any.
    pub fn clone_job(&self) -> Option<&CloneJob> {
        self.rt.clone_job.as_ref()
    }

    /// The running (or last) image import or pull, if any.
    pub fn image_job(&self) -> Option<&ImageJob> {
        self.rt.image_job.as_ref()
    }

    /// The engine, for what tests and hooks read of it.
    pub fn engine(&self) -> &Engine {
        &self.rt.engine
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
