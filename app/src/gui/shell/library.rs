//! The library: every defined machine with its state and the actions on
//! the selected one; below, the containers the app ran, each with its
//! Console / Logs / Overview tabs and Stop / Remove.

use hangar_engine::WorkloadState;
use hangar_engine::{BootSource, HostCapability};

use crate::gui::app::CONTAINER_STOP_GRACE;
use crate::gui::command::{CommandQueue, UiCommand};
use crate::gui::container::model::{Container, Containers};
use crate::gui::shell::tabs::View;
use crate::gui::vm::machine::{Entry, Machine, Machines, RunStatus};
use crate::gui::vm::template_clone::{clone_job_ui, CloneJob};

/// Why Start is disabled for this machine, if it is.
pub fn start_blocked_reason(machine: &Machine, host: &HostCapability) -> Option<String> {
    if machine.status.is_active() {
        return Some("The machine is already running.".into());
    }
    if !host.has_kvm() {
        return Some(host.summary());
    }
    match machine.kernel_kind {
        None => {
            let BootSource::Kernel(boot) = &machine.def.config.boot;
            Some(format!(
                "The kernel {} cannot be read or is not a kernel.",
                boot.kernel.display()
            ))
        }
        Some(kind) if kind.is_linux() => host.linux_refusal(),
        Some(_) => None,
    }
}

/// Draw the library panel on the left.
pub fn library_ui(
    ui: &mut egui::Ui,
    machines: &Machines,
    containers: &Containers,
    selected: Option<&str>,
    host: &HostCapability,
    clone_job: Option<&CloneJob>,
    commands: &mut CommandQueue,
) {
    egui::Panel::left("library")
        .default_size(270.0)
        .resizable(true)
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("Machines");
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    if ui
                        .button("New…")
                        .on_hover_text("Create a virtual machine")
                        .clicked()
                    {
                        commands.push(UiCommand::OpenWizard);
                    }
                });
            });
            ui.separator();
            if machines.entries.is_empty() && clone_job.is_none() {
                ui.weak("No machines yet. Click New… to create one.");
            }
            egui::ScrollArea::vertical()
                .auto_shrink([false, true])
                .max_height(ui.available_height() * 0.6)
                .show(ui, |ui| {
                    for (id, entry) in &machines.entries {
                        entry_ui(ui, id, entry, selected == Some(id.as_str()), commands);
                    }
                });
            // A machine being made from a template appears once its disk is copied.
            if let Some(job) = clone_job {
                clone_job_ui(ui, job, commands);
            }
            ui.separator();
            if let Some(id) = selected {
                match machines.entries.get(id) {
                    Some(Entry::Machine(m)) => actions_ui(ui, id, m, host, commands),
                    Some(Entry::Broken { path, reason }) => {
                        ui.colored_label(
                            ui.visuals().error_fg_color,
                            "This definition cannot be used:",
                        );
                        ui.label(reason);
                        ui.weak(format!("File: {}", path.display()));
                        ui.weak("Hangar leaves the file untouched; fix or remove it by hand.");
                    }
                    None => {}
                }
                ui.separator();
            }
            containers_ui(ui, containers, commands);
        });
}

/// The Containers section: Run container, then one row per container.
fn containers_ui(ui: &mut egui::Ui, containers: &Containers, commands: &mut CommandQueue) {
    ui.horizontal(|ui| {
        ui.heading("Containers");
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            let run = ui.add_enabled(
                containers.unavailable.is_none(),
                egui::Button::new("Run container"),
            );
            let run = match &containers.unavailable {
                Some(why) => {
                    ui.ctx()
                        .accesskit_node_builder(run.id, |node| node.set_description(why.as_str()));
                    run.on_disabled_hover_text(why)
                }
                None => run.on_hover_text("Run a command in a new container"),
            };
            if run.clicked() {
                commands.push(UiCommand::OpenContainerDialog);
            }
        });
    });
    if let Some(why) = &containers.unavailable {
        ui.colored_label(
            ui.visuals().error_fg_color,
            format!("Containers are unavailable: {why}"),
        );
        return;
    }
    if containers.entries.is_empty() {
        ui.weak("No containers. Click Run container to start one.");
        return;
    }
    egui::ScrollArea::vertical()
        .id_salt("containers")
        .auto_shrink([false, true])
        .show(ui, |ui| {
            for c in &containers.entries {
                container_row_ui(ui, c, commands);
            }
        });
}

fn container_row_ui(ui: &mut egui::Ui, c: &Container, commands: &mut CommandQueue) {
    let id = c.id.0.clone();
    let status = c.state_label();
    let mut text = egui::RichText::new(format!("{}  ·  {status}", c.name()));
    if status == "failed" {
        text = text.color(ui.visuals().error_fg_color);
    } else if status == "running" {
        text = text.strong();
    }
    let mut hover = c.summary();
    if let Some(d) = &c.exit_description {
        hover.push_str(&format!("\n{d}"));
    }
    if let Some(e) = &c.last_error {
        hover.push_str(&format!("\n{e}"));
    }
    ui.horizontal(|ui| {
        let row = ui.selectable_label(false, text).on_hover_text(hover);
        if row.clicked() {
            commands.push(UiCommand::OpenTab(id.clone(), View::Console));
        }
        row.context_menu(|ui| {
            for (label, kind) in CONTAINER_VIEWS {
                if ui.button(label).clicked() {
                    commands.push(UiCommand::OpenTab(id.clone(), kind));
                    ui.close();
                }
            }
        });
        if !c.removing {
            lifecycle_button_ui(ui, c, commands);
        }
    });
    ui.horizontal(|ui| {
        ui.add_space(12.0);
        for (label, kind) in CONTAINER_VIEWS {
            if ui
                .small_button(label)
                .on_hover_text(format!("Open {}'s {label} tab", c.name()))
                .clicked()
            {
                commands.push(UiCommand::OpenTab(id.clone(), kind));
            }
        }
    });
}

/// Stop, Kill or Remove, as the container's state allows.
fn lifecycle_button_ui(ui: &mut egui::Ui, c: &Container, commands: &mut CommandQueue) {
    let id = c.id.0.clone();
    match c.state {
        WorkloadState::Starting | WorkloadState::Running | WorkloadState::Paused => {
            if ui
                .small_button("Stop")
                .on_hover_text(format!(
                    "SIGTERM, then SIGKILL after {} s",
                    CONTAINER_STOP_GRACE.as_secs()
                ))
                .clicked()
            {
                commands.push(UiCommand::StopContainer(id));
            }
        }
        WorkloadState::Stopping => {
            if ui.small_button("Kill").clicked() {
                commands.push(UiCommand::KillContainer(id));
            }
        }
        WorkloadState::Stopped | WorkloadState::Failed => {
            if ui
                .small_button("Remove")
                .on_hover_text("Delete its files and its output")
                .clicked()
            {
                commands.push(UiCommand::RemoveContainer(id));
            }
        }
    }
}

/// Why a machine's Display buttons are disabled.
const NO_SCREEN: &str = "This machine has no screen: its definition gives it none";

/// The tabs a machine row's menu opens.
const MACHINE_VIEWS: [(&str, View); 3] = [
    ("Console", View::Console),
    ("Display", View::Display),
    ("Overview", View::Overview),
];

/// The tabs a container row opens, as its buttons name them.
const CONTAINER_VIEWS: [(&str, View); 3] = [
    ("Console", View::Console),
    ("Logs", View::Logs),
    ("Overview", View::Overview),
];

fn entry_ui(
    ui: &mut egui::Ui,
    id: &str,
    entry: &Entry,
    selected: bool,
    commands: &mut CommandQueue,
) {
    let (text, tooltip) = match entry {
        Entry::Machine(m) => {
            let status = if m.last_error.is_some() && !m.status.is_active() {
                "error"
            } else {
                m.status.label()
            };
            let mut text = egui::RichText::new(format!("{}  ·  {status}", m.name()));
            if status == "error" {
                text = text.color(ui.visuals().error_fg_color);
            } else if matches!(m.status, RunStatus::Running) {
                text = text.strong();
            }
            (text, m.last_error.clone())
        }
        Entry::Broken { reason, .. } => (
            egui::RichText::new(format!("{id}  ·  error")).color(ui.visuals().error_fg_color),
            Some(reason.clone()),
        ),
    };
    let mut response = ui.selectable_label(selected, text);
    if let Some(t) = tooltip {
        response = response.on_hover_text(t);
    }
    if response.clicked() {
        commands.push(UiCommand::Select(id.to_string()));
    }
    if response.double_clicked() {
        commands.push(UiCommand::OpenTab(id.to_string(), View::Console));
    }
    if let Entry::Machine(m) = entry {
        let has_screen = m.def.config.display.is_some();
        response.context_menu(|ui| {
            for (label, kind) in MACHINE_VIEWS {
                let enabled = kind != View::Display || has_screen;
                if ui.add_enabled(enabled, egui::Button::new(label)).clicked() {
                    commands.push(UiCommand::OpenTab(id.to_string(), kind));
                    ui.close();
                }
            }
        });
    }
}

fn actions_ui(
    ui: &mut egui::Ui,
    id: &str,
    m: &Machine,
    host: &HostCapability,
    commands: &mut CommandQueue,
) {
    let id = id.to_string();
    ui.strong(m.name());
    let BootSource::Kernel(boot) = &m.def.config.boot;
    ui.weak(format!(
        "{} vCPU · {} MiB · {}",
        m.def.config.vcpus,
        m.def.config.memory_mib,
        boot.kernel
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    if let Some(err) = &m.last_error {
        ui.colored_label(ui.visuals().error_fg_color, err);
    }
    ui.horizontal_wrapped(|ui| {
        let blocked = start_blocked_reason(m, host);
        let start = ui.add_enabled(blocked.is_none(), egui::Button::new("Start"));
        let start = match &blocked {
            Some(why) if !m.status.is_active() => {
                // The tooltip only shows on hover; screen readers get the reason too.
                ui.ctx()
                    .accesskit_node_builder(start.id, |node| node.set_description(why.as_str()));
                start.on_disabled_hover_text(why)
            }
            _ => start,
        };
        if start.clicked() {
            commands.push(UiCommand::Start(id.clone()));
        }
        let pause_resume = match m.status {
            RunStatus::Running => Some(("Pause", UiCommand::Pause(id.clone()))),
            RunStatus::Paused => Some(("Resume", UiCommand::Resume(id.clone()))),
            _ => None,
        };
        if let Some((label, command)) = pause_resume {
            if ui.button(label).clicked() {
                commands.push(command);
            }
        }
        match m.status {
            RunStatus::Running | RunStatus::Paused | RunStatus::Starting => {
                if ui
                    .button("Stop")
                    .on_hover_text("Ask the guest to shut down")
                    .clicked()
                {
                    commands.push(UiCommand::Stop(id.clone()));
                }
            }
            RunStatus::Stopping { force_at } => {
                let left = force_at.saturating_duration_since(std::time::Instant::now());
                ui.label(format!("Stopping… forced in {} s", left.as_secs() + 1));
                ui.ctx()
                    .request_repaint_after(std::time::Duration::from_millis(250));
                if ui.button("Force stop").clicked() {
                    commands.push(UiCommand::ForceStop(id.clone()));
                }
            }
            RunStatus::Stopped => {}
        }
    });
    let has_screen = m.def.config.display.is_some();
    ui.horizontal_wrapped(|ui| {
        if ui.button("Console").clicked() {
            commands.push(UiCommand::OpenTab(id.clone(), View::Console));
        }
        let display = ui.add_enabled(has_screen, egui::Button::new("Display"));
        if display
            .on_hover_text("The guest's screen, keyboard and mouse")
            .on_disabled_hover_text(NO_SCREEN)
            .clicked()
        {
            commands.push(UiCommand::OpenTab(id.clone(), View::Display));
        }
        if ui.button("Overview").clicked() {
            commands.push(UiCommand::OpenTab(id.clone(), View::Overview));
        }
    });
    ui.horizontal_wrapped(|ui| {
        if ui
            .button("Console beside")
            .on_hover_text("Open the console in a new column, side by side with the others")
            .clicked()
        {
            commands.push(UiCommand::OpenBeside(id.clone()));
        }
        let display = ui.add_enabled(has_screen, egui::Button::new("Display beside"));
        if display
            .on_hover_text("Open the screen in a new column, side by side with the others")
            .on_disabled_hover_text(NO_SCREEN)
            .clicked()
        {
            commands.push(UiCommand::OpenTabBeside(id.clone(), View::Display));
        }
    });
    ui.horizontal_wrapped(|ui| {
        if ui.button("Duplicate").clicked() {
            commands.push(UiCommand::Duplicate(id.clone()));
        }
        let delete = ui.add_enabled(!m.status.is_active(), egui::Button::new("Delete…"));
        if delete
            .on_disabled_hover_text("Stop the machine first")
            .clicked()
        {
            commands.push(UiCommand::AskDelete(id.clone()));
        }
    });
}
