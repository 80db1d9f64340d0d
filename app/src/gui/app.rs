//! The Hangar window: library on the left, tabs in the middle, log at the
//! bottom. Each frame drains the engine's events (machines and containers
//! alike), draws, then applies the commands the panels queued.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use hangar_engine::containers::RuntimePaths;
use hangar_engine::{
    error_text, Command, ContainerSetup, DefaultKit, Engine, EngineOptions, Event, HostCapability,
    Library, LibraryPaths, MachineEdit, StoredMachine, VmCommand, WorkloadId,
};

use crate::gui::command::{CommandQueue, UiCommand};
use crate::gui::container::dialog::{container_dialog_ui, ContainerDialogState};
use crate::gui::container::image_import::{default_pull_name, ImageJob, ImageRequest};
use crate::gui::container::logs_tab::CONSOLE_LOG_FILE;
use crate::gui::container::model::{Container, Containers};
use crate::gui::shell::host_banner::host_banner_ui;
use crate::gui::shell::library::library_ui;
use crate::gui::shell::log::{Log, Severity, LOG_TARGET};
use crate::gui::shell::log_panel::{log_ui, notifications_ui};
use crate::gui::shell::tabs::{
    close_workload, open_pane, open_pane_beside, Pane, TabsBehavior, View,
};
use crate::gui::state::ui_state::{ui_state_path, UiState};
use crate::gui::vm::delete_dialog::{delete_dialog_ui, DeleteConfirmation};
use crate::gui::vm::machine::{Entry, Machine, Machines, RunStatus};
use crate::gui::vm::template_clone::CloneJob;
use crate::gui::vm::wizard::{wizard_ui, WizardContext, WizardState};

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

/// Runtime handles and state that are never saved, by concern.
pub struct Runtime {
    pub(crate) link: EngineLink,
    /// What the library lists and the tabs show.
    pub workloads: Workloads,
    pub(crate) dialogs: Dialogs,
    pub(crate) jobs: Jobs,
    /// Log panel and notifications.
    pub log: Log,
    pub(crate) host: HostCapability,
    pub(crate) kit: Option<DefaultKit>,
    pub(crate) ui_state_path: PathBuf,
    pub(crate) commands: CommandQueue,
}

/// The engine, its event channel, and the context its waker repaints.
pub(crate) struct EngineLink {
    pub(crate) engine: Engine,
    pub(crate) events: Receiver<Event>,
    /// Set on the first frame; the engine's waker repaints through it.
    pub(crate) repaint: Arc<OnceLock<egui::Context>>,
}

/// Every workload the app shows, by kind.
pub struct Workloads {
    /// Library entries.
    pub machines: Machines,
    /// Containers the app ran (and whether it can run any).
    pub containers: Containers,
}

/// The dialogs, while open.
#[derive(Default)]
pub(crate) struct Dialogs {
    pub(crate) wizard: Option<WizardState>,
    pub(crate) container_dialog: Option<ContainerDialogState>,
    pub(crate) confirm_delete: Option<DeleteConfirmation>,
}

/// Work on worker threads whose progress the library shows.
#[derive(Default)]
pub(crate) struct Jobs {
    /// The running (or last) image import or pull.
    pub(crate) image_job: Option<ImageJob>,
    /// A template's disk being copied for a new machine (or the copy that
    /// failed, until dismissed).
    pub(crate) clone_job: Option<CloneJob>,
}

impl HangarApp {
    /// Open the store, load machines and the saved layout, start the engine.
    pub fn new(env: AppEnv) -> Self {
        let repaint: Arc<OnceLock<egui::Context>> = Arc::new(OnceLock::new());
        let waker_ctx = repaint.clone();
        let set_up = env.containers.is_ok();
        let (library, library_error) = Library::open(LibraryPaths {
            config_dir: Some(env.config_dir.clone()),
            data_dir: env.data_dir.clone(),
        });
        let options = EngineOptions {
            containers: env.containers.and_then(containers_as_root),
            library,
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
        if let Some(e) = library_error {
            log.push(Severity::Error, None, error_text(&e));
        }
        // Without a config directory there is nothing to list (said above).
        match engine.library().machines() {
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
            Err(hangar_engine::LibraryError::NoStore) => {}
            Err(e) => log.push(Severity::Error, None, error_text(&e)),
        }
        // Tabs of workloads that are gone are dropped from the saved layout.
        let stale: Vec<String> = ui_state
            .tabs
            .tiles
            .tiles()
            .filter_map(|t| match t {
                egui_tiles::Tile::Pane(p)
                    if machines.get(&p.workload).is_none()
                        && containers.get(&p.workload).is_none() =>
                {
                    Some(p.workload.clone())
                }
                _ => None,
            })
            .collect();
        for m in stale {
            close_workload(&mut ui_state.tabs, &m);
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
                link: EngineLink {
                    engine,
                    events,
                    repaint,
                },
                workloads: Workloads {
                    machines,
                    containers,
                },
                dialogs: Dialogs::default(),
                jobs: Jobs::default(),
                log,
                host,
                kit: env.kit,
                ui_state_path,
                commands: CommandQueue::default(),
            },
        }
    }

    /// One frame: events in, panels drawn, commands applied.
    pub fn frame_ui(&mut self, ui: &mut egui::Ui) {
        if self.rt.link.repaint.set(ui.ctx().clone()).is_ok() {
            install_fonts(ui.ctx());
        }
        self.drain_events();
        self.rt.log.expire_notifications();

        host_banner_ui(ui, &self.rt.host);
        library_ui(
            ui,
            &self.rt.workloads.machines,
            &self.rt.workloads.containers,
            self.ui_state.selected.as_deref(),
            &self.rt.host,
            self.rt.jobs.clone_job.as_ref(),
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
                    machines: &mut self.rt.workloads.machines,
                    containers: &mut self.rt.workloads.containers,
                    commands: &mut self.rt.commands,
                    data_dir: self.rt.link.engine.library().data_dir(),
                };
                self.ui_state.tabs.ui(&mut behavior, ui);
            }
        });
        // A Display tab that was not drawn (hidden, closed) lets go of the
        // keyboard, releasing what the guest holds.
        let pass = ui.ctx().cumulative_pass_nr();
        for (id, entry) in &mut self.rt.workloads.machines.entries {
            if let Entry::Machine(m) = entry {
                m.screen.release_if_hidden(id, pass, &mut self.rt.commands);
            }
        }
        let ctx = ui.ctx().clone();
        wizard_ui(
            &ctx,
            &mut self.rt.dialogs.wizard,
            &WizardContext {
                machines: &self.rt.workloads.machines,
                kit: self.rt.kit.as_ref(),
                host: &self.rt.host,
                data_dir: self.rt.link.engine.library().data_dir(),
                copying: self
                    .rt
                    .jobs
                    .clone_job
                    .as_ref()
                    .filter(|j| j.is_running())
                    .map(CloneJob::name),
            },
            &mut self.rt.commands,
        );
        container_dialog_ui(
            &ctx,
            &mut self.rt.dialogs.container_dialog,
            self.rt.jobs.image_job.as_ref(),
            &mut self.rt.commands,
        );
        delete_dialog_ui(
            &ctx,
            &mut self.rt.dialogs.confirm_delete,
            &mut self.rt.commands,
        );
        notifications_ui(&ctx, &self.rt.log, &mut self.rt.commands);

        for cmd in self.rt.commands.take() {
            self.apply(cmd);
        }
    }

    fn drain_events(&mut self) {
        while let Ok(event) = self.rt.link.events.try_recv() {
            if self
                .rt
                .workloads
                .containers
                .get(event.id().as_str())
                .is_some()
            {
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
        let finished = self.rt.jobs.image_job.as_mut().and_then(ImageJob::poll);
        if let Some(result) = finished {
            self.on_image_job_finished(result);
        }
        let copied = self.rt.jobs.clone_job.as_mut().and_then(CloneJob::poll);
        if let Some(result) = copied {
            self.on_clone_finished(result);
        }
    }

    pub(crate) fn error(&mut self, machine: Option<&str>, message: String) {
        let name = machine.map(|id| self.rt.workloads.machines.display_name(id));
        if let Some(m) = machine.and_then(|id| self.rt.workloads.machines.get_mut(id)) {
            m.last_error = Some(message.clone());
        }
        self.rt.log.push(Severity::Error, name, message);
    }

    pub(crate) fn send_to_engine(&mut self, id: &str, command: Command) {
        self.try_engine(id, command);
    }

    /// Run an engine command; a refusal goes to the Log. True if accepted.
    pub(crate) fn try_engine(&mut self, id: &str, command: Command) -> bool {
        match self.rt.link.engine.execute(command) {
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
                if let Some(m) = self.rt.workloads.machines.get_mut(&id).filter(|_| asked) {
                    m.status = RunStatus::Stopping {
                        force_at: std::time::Instant::now() + STOP_TIMEOUT,
                    };
                }
            }
            UiCommand::ForceStop(id) => {
                self.send_to_engine(&id, Command::Kill(WorkloadId::from(id.as_str())))
            }
            UiCommand::AskDelete(id) => {
                self.rt.dialogs.confirm_delete = Some(DeleteConfirmation::new(
                    &id,
                    &self.rt.workloads.machines,
                    self.rt.link.engine.library(),
                ))
            }
            UiCommand::Delete(id) => self.delete(&id, false),
            UiCommand::DeleteWithDisks(id) => self.delete(&id, true),
            UiCommand::Duplicate(id) => self.duplicate(&id),
            UiCommand::OpenWizard => {
                let templates = self.rt.link.engine.library().templates();
                self.rt.dialogs.wizard = Some(WizardState::new(self.rt.kit.as_ref(), templates));
            }
            UiCommand::Create { config, start } => {
                self.create(config, start);
            }
            UiCommand::CreateFromTemplate(request) => self.create_from_template(request),
            UiCommand::DismissCloneJob => {
                if !self
                    .rt
                    .jobs
                    .clone_job
                    .as_ref()
                    .is_some_and(CloneJob::is_running)
                {
                    self.rt.jobs.clone_job = None;
                }
            }
            UiCommand::AddDisk { id, disk } => self.edit(&id, MachineEdit::AddDisk(disk)),
            UiCommand::GrowDisk { id, path, new_size } => self.edit(
                &id,
                MachineEdit::GrowDisk {
                    path,
                    size: new_size,
                },
            ),
            UiCommand::DetachDisk { id, path } => self.edit(&id, MachineEdit::DetachDisk(path)),
            UiCommand::SetNetwork { id, network } => {
                self.edit(&id, MachineEdit::SetNetwork(network))
            }
            UiCommand::OpenTab(id, kind) => open_pane(
                &mut self.ui_state.tabs,
                Pane {
                    workload: id,
                    view: kind,
                },
            ),
            UiCommand::OpenBeside(id) => open_pane_beside(
                &mut self.ui_state.tabs,
                Pane {
                    workload: id,
                    view: View::Console,
                },
            ),
            UiCommand::OpenTabBeside(id, kind) => open_pane_beside(
                &mut self.ui_state.tabs,
                Pane {
                    workload: id,
                    view: kind,
                },
            ),
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
                if let Some(m) = self.rt.workloads.machines.get_mut(&id) {
                    m.screen.mode = mode;
                }
            }
            UiCommand::ScreenshotSaved { id, result } => {
                let name = self.rt.workloads.machines.display_name(&id);
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
                self.rt.dialogs.container_dialog = Some(ContainerDialogState::new(images));
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
                if let Some(c) = self.rt.workloads.containers.get_mut(&id).filter(|_| asked) {
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

    /// The open wizard, if any (UI scripts set its fields: automation.rs).
    pub fn wizard_mut(&mut self) -> Option<&mut WizardState> {
        self.rt.dialogs.wizard.as_mut()
    }

    /// Choose the open wizard's OS source, as clicking it would (UI scripts).
    pub fn set_wizard_source(&mut self, source: crate::gui::vm::wizard::OsSource) {
        if let Some(w) = self.rt.dialogs.wizard.as_mut() {
            w.set_source(source, self.rt.kit.as_ref());
        }
    }

    /// The open Run container dialog, if any (tests and UI scripts).
    pub fn container_dialog_mut(&mut self) -> Option<&mut ContainerDialogState> {
        self.rt.dialogs.container_dialog.as_mut()
    }

    /// The running (or failed) template disk copy, if any.
    pub fn clone_job(&self) -> Option<&CloneJob> {
        self.rt.jobs.clone_job.as_ref()
    }

    /// The running (or last) image import or pull, if any.
    pub fn image_job(&self) -> Option<&ImageJob> {
        self.rt.jobs.image_job.as_ref()
    }

    /// The engine, for what tests and hooks read of it.
    pub fn engine(&self) -> &Engine {
        &self.rt.link.engine
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
