//! A new machine from a template (Debian 12), as the library panel shows
//! it: the engine's [`TemplateClone`] (copy the disk, then save the
//! definition) with its progress and, when it failed, why.
//!
//! The wizard only queues [`UiCommand::CreateFromTemplate`]; the app starts
//! the copy through the engine and lists the machine once the engine has
//! saved it.

use hangar_engine::library::format_size;
use hangar_engine::{MachineDefinition, TemplateClone};

/// What the wizard asks for (the engine library's request).
pub use hangar_engine::TemplateMachine;

use crate::gui::command::{CommandQueue, UiCommand};

/// A template's disk being copied for a new machine.
pub struct CloneJob {
    clone: TemplateClone,
    /// Start the machine once it is saved.
    pub start: bool,
    /// Bytes copied and bytes to copy, as last reported.
    pub progress: Option<(u64, u64)>,
    /// Set once the copy has ended: done, or why not.
    pub outcome: Option<Result<(), String>>,
}

impl CloneJob {
    /// Follow `clone`; `start` the machine when it is saved.
    pub fn new(clone: TemplateClone, start: bool) -> Self {
        Self {
            clone,
            start,
            progress: None,
            outcome: None,
        }
    }

    /// True until the engine has reported the outcome.
    pub fn is_running(&self) -> bool {
        self.outcome.is_none()
    }

    /// The machine's name.
    pub fn name(&self) -> &str {
        self.clone.name()
    }

    /// The template's name for people.
    pub fn template_title(&self) -> &str {
        &self.clone.template_title
    }

    /// Take what the engine reported; the outcome, once, when it arrives.
    pub fn poll(&mut self) -> Option<Result<MachineDefinition, String>> {
        if self.outcome.is_some() {
            return None;
        }
        let (progress, outcome) = self.clone.poll();
        if progress.is_some() {
            self.progress = progress;
        }
        let outcome = outcome?;
        self.outcome = Some(outcome.as_ref().map(|_| ()).map_err(Clone::clone));
        Some(outcome)
    }

    /// Fraction copied, for a progress bar.
    pub fn fraction(&self) -> f32 {
        match self.progress {
            Some((done, total)) if total > 0 => (done.min(total) as f64 / total as f64) as f32,
            Some(_) => 1.0,
            None => 0.0,
        }
    }

    /// The progress bar's text, e.g. `copying the Debian 12 disk · 1.0 of 2.0 GiB`.
    pub fn progress_text(&self) -> String {
        let mut text = format!("copying the {} disk", self.template_title());
        if let Some((done, total)) = self.progress.filter(|(_, total)| *total > 0) {
            text.push_str(&format!(
                " · {} of {}",
                format_size(done.min(total)),
                format_size(total)
            ));
        }
        text
    }
}

/// The library's line for a copy: a progress bar while it runs, the reason
/// (with Dismiss) when it failed.
pub fn clone_job_ui(ui: &mut egui::Ui, job: &CloneJob, commands: &mut CommandQueue) {
    match &job.outcome {
        None => {
            ui.label(format!("Creating \"{}\"…", job.name()));
            ui.add(
                egui::ProgressBar::new(job.fraction())
                    .text(job.progress_text())
                    .animate(true),
            );
        }
        Some(Ok(())) => {}
        Some(Err(why)) => {
            ui.colored_label(
                ui.visuals().error_fg_color,
                format!("\"{}\" was not created: {why}", job.name()),
            );
            if ui
                .small_button("Dismiss")
                .accessible_name("Dismiss the failed copy")
                .clicked()
            {
                commands.push(UiCommand::DismissCloneJob);
            }
        }
    }
}
