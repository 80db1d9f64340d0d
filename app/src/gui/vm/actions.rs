//! What the app does for machines: the engine's VM events, start, and the
//! library's machine operations (create, duplicate, delete, clone, edit).

use hangar_engine::{
    error_text, Command, Event, MachineDefinition, MachineEdit, TemplateMachine, VmConfig, VmEvent,
    VmExit, WorkloadConfig, WorkloadId, MARKER_INIT_REACHED,
};

use crate::gui::app::{HangarApp, STOP_TIMEOUT};
use crate::gui::shell::log::Severity;
use crate::gui::shell::tabs::{close_workload, open_pane, Pane, View};
use crate::gui::vm::machine::{Entry, Machine, RunStatus};
use crate::gui::vm::template_clone::CloneJob;

impl HangarApp {
    pub(crate) fn on_machine_event(&mut self, event: Event) {
        let rt = &mut self.rt;
        match event {
            Event::StateChanged { id, state } => {
                if let Some(m) = rt.workloads.machines.get_mut(&id.0) {
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
                if let Some(m) = rt.workloads.machines.get_mut(&id.0) {
                    m.screen.on_display_updated(std::time::Instant::now());
                }
            }
            Event::Stats { id, stats } => {
                if let Some(m) = rt.workloads.machines.get_mut(&id.0) {
                    m.on_stats(stats);
                }
            }
            Event::Output { id, bytes, .. } => {
                let replies = match rt.workloads.machines.get_mut(&id.0) {
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
                        .link
                        .engine
                        .execute(Command::Input { id, bytes: replies });
                }
            }
            Event::Vm {
                id,
                event: VmEvent::BootMarker { value, since_start },
            } => {
                if value == MARKER_INIT_REACHED {
                    let name = rt.workloads.machines.display_name(&id.0);
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
                let name = rt.workloads.machines.display_name(&id.0);
                let full = match &registers {
                    Some(r) => format!("{message} [{r}]"),
                    None => message.clone(),
                };
                rt.log.push(Severity::Error, Some(name), full);
                if let Some(m) = rt.workloads.machines.get_mut(&id.0) {
                    m.last_error = Some(message);
                }
            }
            Event::Exited { id, exit } => {
                let Some(reason) = exit.as_vm().cloned() else {
                    return;
                };
                let name = rt.workloads.machines.display_name(&id.0);
                let message = match &reason {
                    // "stopped by force", not "stopped: stopped by force".
                    VmExit::Stopped { .. } => reason.to_string(),
                    _ => format!("stopped: {reason}"),
                };
                rt.log.push(Severity::Info, Some(name), message);
                if let Some(m) = rt.workloads.machines.get_mut(&id.0) {
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

    pub(crate) fn start(&mut self, id: &str) {
        let Some(m) = self.rt.workloads.machines.get_mut(id) else {
            return;
        };
        let config = m.def.config.clone();
        m.last_error = None;
        open_pane(
            &mut self.ui_state.tabs,
            Pane {
                workload: id.to_string(),
                view: View::Console,
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
        if let Some(m) = self.rt.workloads.machines.get_mut(id).filter(|_| started) {
            m.status = RunStatus::Starting;
            // The screen of this run (none if the definition has none).
            m.screen
                .attach(self.rt.link.engine.display(&WorkloadId::from(id)));
        }
    }

    /// Save a new machine and start it if asked; true if it was saved.
    pub(crate) fn create(&mut self, config: VmConfig, start: bool) -> bool {
        let def = MachineDefinition::new(config);
        if let Err(e) = self.rt.link.engine.library().create_machine(&def) {
            self.error(None, error_text(&e));
            return false;
        }
        self.adopt(def, start);
        true
    }

    /// List a machine the library has just saved, select it, and start it
    /// if asked.
    pub(crate) fn adopt(&mut self, def: MachineDefinition, start: bool) {
        let id = def.id.clone();
        self.rt.log.push(
            Severity::Info,
            Some(def.config.name.clone()),
            "created".into(),
        );
        self.rt
            .workloads
            .machines
            .entries
            .insert(id.clone(), Entry::Machine(Box::new(Machine::new(def))));
        self.ui_state.selected = Some(id.clone());
        if start {
            self.start(&id);
        }
    }

    pub(crate) fn duplicate(&mut self, id: &str) {
        let copy = match self.rt.link.engine.library().duplicate_machine(id) {
            Ok(copy) => copy,
            Err(e) => {
                self.error(Some(id), error_text(&e));
                return;
            }
        };
        let copy_name = copy.def.config.name.clone();
        self.adopt(copy.def, false);
        if copy.shared_disks > 0 {
            // The copy's definition names the same disk files: two machines
            // writing one disk at once would corrupt it.
            self.rt.log.push(
                Severity::Info,
                Some(copy_name),
                format!(
                    "shares its {} disk file(s) with \"{}\": do not run both at once",
                    copy.shared_disks, copy.original
                ),
            );
        }
    }

    /// Delete a stopped machine (with `with_disks`, the disk files the
    /// library says may go with it).
    pub(crate) fn delete(&mut self, id: &str, with_disks: bool) {
        let deleted = match self.rt.link.engine.delete_machine(id, with_disks) {
            Ok(deleted) => deleted,
            Err(e) => {
                self.error(Some(id), error_text(&e));
                return;
            }
        };
        let name = deleted.name;
        self.rt.workloads.machines.entries.remove(id);
        close_workload(&mut self.ui_state.tabs, id);
        if self.ui_state.selected.as_deref() == Some(id) {
            self.ui_state.selected = None;
        }
        self.rt
            .log
            .push(Severity::Info, Some(name.clone()), "deleted".into());
        for (path, result) in deleted.disks {
            match result {
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
    }

    /// Start copying a template's disk for a new machine; the library saves
    /// the machine when the copy is complete ([`Self::on_clone_finished`]).
    pub(crate) fn create_from_template(&mut self, request: TemplateMachine) {
        if let Some(job) = self.rt.jobs.clone_job.as_ref().filter(|j| j.is_running()) {
            let why = format!(
                "cannot create {}: the disk of {} is being copied; try again when it is done",
                request.name,
                job.name()
            );
            self.error(None, why);
            return;
        }
        match self
            .rt
            .link
            .engine
            .clone_template(&request, self.rt.kit.as_ref())
        {
            Ok(clone) => {
                let job = CloneJob::new(clone, request.start);
                self.rt.log.push(
                    Severity::Info,
                    Some(request.name.clone()),
                    format!("copying the {} disk", job.template_title()),
                );
                self.rt.jobs.clone_job = Some(job);
            }
            Err(e) => self.error(None, error_text(&e)),
        }
    }

    /// A template copy ended: list the saved machine, or say why not.
    pub(crate) fn on_clone_finished(&mut self, result: Result<MachineDefinition, String>) {
        let start = self.rt.jobs.clone_job.as_ref().is_some_and(|j| j.start);
        match result {
            Ok(def) => {
                self.rt.jobs.clone_job = None;
                self.adopt(def, start);
            }
            Err(why) => self.error(None, why),
        }
    }

    /// Change a stopped machine's definition through the engine; the Log
    /// says what changed, or why nothing did.
    pub(crate) fn edit(&mut self, id: &str, edit: MachineEdit) {
        match self.rt.link.engine.edit_machine(id, edit) {
            Ok((def, change)) => {
                let name = def.config.name.clone();
                if let Some(m) = self.rt.workloads.machines.get_mut(id) {
                    m.def = def;
                    m.overview.disk_info.invalidate();
                }
                self.rt
                    .log
                    .push(Severity::Info, Some(name), change.to_string());
            }
            Err(e) => self.error(Some(id), error_text(&e)),
        }
    }
}
