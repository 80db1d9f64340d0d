//! What the app does for containers: the engine's container events, run,
//! input and commands, and image imports.

use hangar_engine::containers::ContainerConfig;
use hangar_engine::images::ImageRecord;
use hangar_engine::{
    Command, ContainerCommand, Engine, Event, OutputStream, WorkloadConfig, WorkloadId,
    WorkloadState,
};

use crate::gui::container::image_import::{imported_text, ImageJob, ImageRequest};
use crate::gui::container::logs_tab::CONSOLE_LOG_FILE;
use crate::gui::container::model::Container;
use crate::gui::shell::log::Severity;
use crate::gui::shell::tabs::{close_workload, open_pane, Pane, View};

use crate::gui::app::HangarApp;

impl HangarApp {
    /// An import or pull ended: say so, and offer the new image.
    pub(crate) fn on_image_job_finished(&mut self, result: Result<ImageRecord, String>) {
        match result {
            Ok(record) => {
                self.rt
                    .log
                    .push(Severity::Info, None, imported_text(&record));
                let names = self.image_names();
                if let Some(dialog) = &mut self.rt.dialogs.container_dialog {
                    dialog.set_images(names);
                    dialog.image = record.name;
                }
            }
            Err(why) => self.rt.log.push(Severity::Error, None, why),
        }
    }

    /// The names of the images in the store (errors go to the Log).
    pub(crate) fn image_names(&mut self) -> Vec<String> {
        let Ok(images) = self.rt.link.engine.images() else {
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
    pub(crate) fn start_image_job(&mut self, request: ImageRequest) {
        if self
            .rt
            .jobs
            .image_job
            .as_ref()
            .is_some_and(ImageJob::is_running)
        {
            self.error(
                None,
                format!(
                    "cannot {}: another image import is running",
                    request.describe()
                ),
            );
            return;
        }
        let store = match self.rt.link.engine.images() {
            Ok(images) => images.clone(),
            Err(e) => {
                self.error(None, format!("{:#}", anyhow::Error::new(e)));
                return;
            }
        };
        let repaint = self.rt.link.repaint.clone();
        let described = request.describe();
        match ImageJob::start(store, request, move || {
            if let Some(ctx) = repaint.get() {
                ctx.request_repaint();
            }
        }) {
            Ok(job) => {
                self.rt.log.push(Severity::Info, None, described);
                self.rt.jobs.image_job = Some(job);
            }
            Err(e) => self.error(None, format!("{e:#}")),
        }
    }

    pub(crate) fn on_container_event(&mut self, event: Event) {
        let rt = &mut self.rt;
        match event {
            Event::StateChanged { id, state } => {
                if let Some(c) = rt.workloads.containers.get_mut(&id.0) {
                    c.state = state;
                }
                if state == WorkloadState::Failed {
                    rt.log
                        .push(Severity::Info, Some(id.0), "could not be started".into());
                }
            }
            Event::Started { id, pid, setup } => {
                if let Some(c) = rt.workloads.containers.get_mut(&id.0) {
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
                let Some(c) = rt.workloads.containers.get_mut(&id.0) else {
                    return;
                };
                let tty = stream == OutputStream::Terminal;
                c.on_output(&bytes, tty);
                // Answer the program's terminal queries at once, even while
                // its console is hidden (a pipe has nobody to answer).
                let replies = c.terminal.take_replies();
                if tty && !replies.is_empty() && c.is_active() {
                    let _ = rt
                        .link
                        .engine
                        .execute(Command::Input { id, bytes: replies });
                }
            }
            Event::Stats { id, stats } => {
                if let Some(c) = rt.workloads.containers.get_mut(&id.0) {
                    c.on_stats(stats);
                }
            }
            Event::Exited { id, exit } => {
                if let Some(c) = rt.workloads.containers.get_mut(&id.0) {
                    if let Some(e) = exit.as_container() {
                        c.on_exit(e.clone());
                    }
                    c.state = WorkloadState::Stopped;
                    let described = c.exit_description.clone().unwrap_or_default();
                    rt.log.push(Severity::Info, Some(id.0), described);
                }
            }
            Event::Removed(id) => {
                rt.workloads.containers.remove(&id.0);
                close_workload(&mut self.ui_state.tabs, &id.0);
                rt.log.push(Severity::Info, Some(id.0), "removed".into());
            }
            Event::Error { id, message, .. } => {
                if let Some(c) = rt.workloads.containers.get_mut(&id.0) {
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
    pub(crate) fn container(&mut self, id: &str, command: Command) -> bool {
        match self.rt.link.engine.execute(command) {
            Ok(()) => true,
            Err(e) => {
                let message = format!("{:#}", anyhow::Error::new(e));
                if let Some(c) = self.rt.workloads.containers.get_mut(id) {
                    c.last_error = Some(message.clone());
                }
                self.rt
                    .log
                    .push(Severity::Error, Some(id.to_string()), message);
                false
            }
        }
    }

    pub(crate) fn run_container(&mut self, config: ContainerConfig) {
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
            .link
            .engine
            .container_dir(&id)
            .ok()
            .map(|dir| dir.join(CONSOLE_LOG_FILE));
        self.rt.log.push(
            Severity::Info,
            Some(id.0.clone()),
            format!("run {}", c.summary()),
        );
        self.rt.workloads.containers.entries.push(c);
        open_pane(
            &mut self.ui_state.tabs,
            Pane {
                workload: id.0,
                view: View::Console,
            },
        );
    }

    pub(crate) fn container_input(&mut self, id: &str, bytes: Vec<u8>) {
        let Some(c) = self.rt.workloads.containers.get(id) else {
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
}
