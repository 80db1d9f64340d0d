//! Making a new machine from a template (Debian 12): its own copy of the
//! template's disk, in the machine's folder, made on a `disk-clone` worker
//! thread with progress (as [`super::image_import`] does for images).
//!
//! The wizard only queues [`UiCommand::CreateFromTemplate`]; the app starts
//! a [`CloneJob`] and saves the definition once the disk is complete, so a
//! machine never exists without its disk. A failed copy leaves no file
//! behind (the engine writes under a temporary name) and no empty folder.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, TryRecvError};

use anyhow::Context as _;
use hangar_engine::{templates, MachineDefinition, NetworkConfig, Template};

use super::command::{CommandQueue, UiCommand};
use super::machine_disks::format_size;

/// What the wizard asks for: a machine booting its own copy of a template.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct TemplateMachine {
    /// The template's id (e.g. `debian-12`).
    pub template: String,
    /// The machine's name.
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// The machine's disk size in bytes (at least the template's).
    pub disk_size: u64,
    /// User-mode networking, or none.
    pub network: Option<NetworkConfig>,
    /// A command line the user typed instead of the template's.
    pub cmdline: Option<String>,
    /// Start the machine once it is created.
    pub start: bool,
}

/// What the worker thread sends.
enum CloneMessage {
    Progress(u64, u64),
    Finished(Result<(), String>),
}

/// A template's disk being copied for a new machine.
pub struct CloneJob {
    /// The machine saved once the copy is complete (its first disk is the
    /// copy).
    pub def: MachineDefinition,
    /// Start it then.
    pub start: bool,
    /// The template's name for people.
    pub template_title: String,
    /// Bytes copied and bytes to copy, as last reported.
    pub progress: Option<(u64, u64)>,
    /// Set once the copy has ended: done, or why not.
    pub outcome: Option<Result<(), String>>,
    rx: Receiver<CloneMessage>,
}

impl CloneJob {
    /// Copy `template` to `dest` (created with its folder) and grow it to
    /// `size` bytes on a worker thread; `wake` is called after each message
    /// (the app repaints).
    pub fn start(
        template: Template,
        dest: PathBuf,
        size: u64,
        def: MachineDefinition,
        start: bool,
        wake: impl Fn() + Send + 'static,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let template_title = template.title.clone();
        std::thread::Builder::new()
            .name("disk-clone".into())
            .spawn(move || {
                let mut last_percent = None;
                let mut report = |done: u64, total: u64| {
                    // Called per MiB copied: pass on whole percents only.
                    let percent = (done.min(total) * 100).checked_div(total).unwrap_or(100);
                    if last_percent != Some(percent) {
                        last_percent = Some(percent);
                        if tx.send(CloneMessage::Progress(done, total)).is_ok() {
                            wake();
                        }
                    }
                };
                let result =
                    clone_into_new_folder(&template, &dest, size, &mut report).map_err(|e| {
                        let message = format!("{e:#}");
                        log::warn!("{message}");
                        message
                    });
                let _ = tx.send(CloneMessage::Finished(result));
                wake();
            })
            .context("cannot start the disk copy thread")?;
        Ok(Self {
            def,
            start,
            template_title,
            progress: None,
            outcome: None,
            rx,
        })
    }

    /// True until the worker has reported its outcome.
    pub fn is_running(&self) -> bool {
        self.outcome.is_none()
    }

    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.def.config.name
    }

    /// Take what the worker sent; the outcome, the once it arrives.
    pub fn poll(&mut self) -> Option<Result<(), String>> {
        if self.outcome.is_some() {
            return None;
        }
        loop {
            match self.rx.try_recv() {
                Ok(CloneMessage::Progress(done, total)) => self.progress = Some((done, total)),
                Ok(CloneMessage::Finished(result)) => {
                    self.outcome = Some(result.clone());
                    return Some(result);
                }
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    let result = Err(format!(
                        "cannot create {}: the disk copy thread ended without a result",
                        self.name()
                    ));
                    self.outcome = Some(result.clone());
                    return Some(result);
                }
            }
        }
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
        let mut text = format!("copying the {} disk", self.template_title);
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

/// Create the disk's folder if needed and clone into it; a failure removes
/// the folder again if this call made it (and it is empty: the engine
/// removes its own temporary file).
fn clone_into_new_folder(
    template: &Template,
    dest: &std::path::Path,
    size: u64,
    report: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<()> {
    let dir = dest
        .parent()
        .with_context(|| format!("{} has no folder", dest.display()))?;
    let made_dir = !dir.exists();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = templates::clone_disk(template, dest, size, report).with_context(|| {
        format!(
            "cannot copy the {} disk to {}",
            template.title,
            dest.display()
        )
    });
    if result.is_err() && made_dir {
        let _ = std::fs::remove_dir(dir);
    }
    result
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
