//! Getting container images into the store from the Run container dialog:
//! import an OCI image layout (directory or tar) or a `docker save`
//! archive, or pull from a registry over HTTPS.
//!
//! The form only queues [`UiCommand::ImportImage`] / [`UiCommand::PullImage`];
//! the app starts an [`ImageJob`], which runs the blocking
//! [`ImageStore::import`] / [`ImageStore::pull`] on a worker thread of its
//! own and sends progress back over a channel (waking the UI). The file
//! dialog runs on its own short-lived thread too; the path field beside it
//! works without one (typed paths, no desktop portal).

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, TryRecvError};

use anyhow::Context as _;
use hangar_engine::images::{
    ImageRecord, ImageStore, ImportProgress, ImportStage, RegistryProtocol,
};

use crate::gui::command::{CommandQueue, UiCommand};

/// What an [`ImageJob`] fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRequest {
    /// Import a layout directory or an archive from this machine.
    Import {
        /// The directory or archive.
        source: PathBuf,
        /// Name in the store; `None` takes the name the image carries.
        name: Option<String>,
    },
    /// Pull from a registry.
    Pull {
        /// e.g. `docker.io/library/alpine:3.20`.
        reference: String,
        /// Name in the store.
        name: String,
        /// Plain HTTP (only for a registry on this machine's loopback).
        plain_http: bool,
    },
}

impl ImageRequest {
    /// A few words for the Log and the form, e.g. `import /tmp/layout`.
    pub fn describe(&self) -> String {
        match self {
            ImageRequest::Import { source, .. } => format!("import {}", source.display()),
            ImageRequest::Pull { reference, .. } => format!("pull {reference}"),
        }
    }
}

/// What the worker thread sends.
enum JobMessage {
    Progress(ImportProgress),
    Finished(Box<Result<ImageRecord, String>>),
}

/// An import or pull running on its own thread, and how far it got.
pub struct ImageJob {
    /// What it fetches.
    pub request: ImageRequest,
    /// The last progress reported.
    pub progress: Option<ImportProgress>,
    /// The stages reported so far, in order, each once.
    pub stages: Vec<ImportStage>,
    /// Set once it has ended: the image, or why not.
    pub outcome: Option<Result<ImageRecord, String>>,
    rx: Receiver<JobMessage>,
}

impl ImageJob {
    /// Start `request` on a worker thread using `store`; `wake` is called
    /// after each message (the app repaints).
    pub fn start(
        store: ImageStore,
        request: ImageRequest,
        wake: impl Fn() + Send + 'static,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let work = request.clone();
        std::thread::Builder::new()
            .name("image-import".into())
            .spawn(move || {
                let mut last: Option<ImportProgress> = None;
                let mut report = |p: ImportProgress| {
                    // The engine calls this often; pass on whole percents,
                    // layers and stages only.
                    let changed = last.is_none_or(|l| {
                        l.stage != p.stage
                            || l.layers_done != p.layers_done
                            || l.layers_total != p.layers_total
                            || percent(&l) != percent(&p)
                    });
                    if changed {
                        last = Some(p);
                        if tx.send(JobMessage::Progress(p)).is_ok() {
                            wake();
                        }
                    }
                };
                let result = run_request(&store, &work, &mut report);
                let _ = tx.send(JobMessage::Finished(Box::new(result)));
                wake();
            })
            .context("cannot start the image import thread")?;
        Ok(Self {
            request,
            progress: None,
            stages: Vec::new(),
            outcome: None,
            rx,
        })
    }

    /// True until the worker has reported its outcome.
    pub fn is_running(&self) -> bool {
        self.outcome.is_none()
    }

    /// Take what the worker sent; the outcome, the once it arrives.
    pub fn poll(&mut self) -> Option<Result<ImageRecord, String>> {
        if self.outcome.is_some() {
            return None;
        }
        loop {
            match self.rx.try_recv() {
                Ok(JobMessage::Progress(p)) => {
                    if self.stages.last() != Some(&p.stage) {
                        self.stages.push(p.stage);
                    }
                    self.progress = Some(p);
                }
                Ok(JobMessage::Finished(result)) => {
                    self.outcome = Some((*result).clone());
                    return Some(*result);
                }
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    let result = Err(format!(
                        "cannot {}: the worker thread ended without a result",
                        self.request.describe()
                    ));
                    self.outcome = Some(result.clone());
                    return Some(result);
                }
            }
        }
    }
}

fn run_request(
    store: &ImageStore,
    request: &ImageRequest,
    report: &mut dyn FnMut(ImportProgress),
) -> Result<ImageRecord, String> {
    let result = match request {
        ImageRequest::Import { source, name } => store
            .import(source, name.as_deref(), report)
            .with_context(|| format!("cannot import {}", source.display())),
        ImageRequest::Pull {
            reference,
            name,
            plain_http,
        } => {
            let protocol = if *plain_http {
                RegistryProtocol::Http
            } else {
                RegistryProtocol::Https
            };
            store
                .pull(reference, name, protocol, report)
                .with_context(|| format!("cannot pull {reference}"))
        }
    };
    result.map_err(|e| format!("{e:#}"))
}

/// Whole percent of the current stage's bytes.
fn percent(p: &ImportProgress) -> u64 {
    (p.bytes_done.min(p.bytes_total) * 100)
        .checked_div(p.bytes_total)
        .unwrap_or(0)
}

/// Fraction of the current stage done, for a progress bar.
pub fn progress_fraction(p: &ImportProgress) -> f32 {
    if p.stage == ImportStage::Done {
        return 1.0;
    }
    if p.bytes_total > 0 {
        (p.bytes_done.min(p.bytes_total) as f64 / p.bytes_total as f64) as f32
    } else if p.layers_total > 0 {
        p.layers_done.min(p.layers_total) as f32 / p.layers_total as f32
    } else {
        0.0
    }
}

/// The progress bar's text, e.g. `unpacking · layer 1 of 3 · 2.0 of 5.1 MiB`.
pub fn progress_text(p: &ImportProgress) -> String {
    let stage = match p.stage {
        ImportStage::Downloading => "downloading",
        ImportStage::Reading => "reading the archive",
        ImportStage::Verifying => "verifying",
        ImportStage::Unpacking => "unpacking",
        ImportStage::Done => "done",
    };
    let mut parts = vec![stage.to_string()];
    if p.layers_total > 0 {
        parts.push(format!(
            "{} of {} layer{}",
            p.layers_done,
            p.layers_total,
            if p.layers_total == 1 { "" } else { "s" }
        ));
    }
    if p.bytes_total > 0 {
        parts.push(format!(
            "{} of {}",
            human_size(p.bytes_done.min(p.bytes_total)),
            human_size(p.bytes_total)
        ));
    }
    parts.join(" · ")
}

/// KiB below one MiB, else MiB with one decimal.
pub fn human_size(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{} KiB", bytes.div_ceil(1024))
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// What to say when an image arrived.
pub fn imported_text(record: &ImageRecord) -> String {
    format!(
        "Imported {} ({} layer{}, {})",
        record.name,
        record.layers.len(),
        if record.layers.len() == 1 { "" } else { "s" },
        human_size(record.size())
    )
}

/// The store name a pulled image gets unless one is given:
/// `registry/path/repo:tag` → `repo:tag` (`repo` for `@digest`).
pub fn default_pull_name(reference: &str) -> Option<String> {
    let last = reference.trim().rsplit('/').next()?;
    let name = last.split('@').next()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// Which kind of file dialog to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PickKind {
    /// An archive (`.tar`, `.tar.gz`...).
    File,
    /// An OCI layout directory.
    Folder,
}

/// The import form's fields.
#[derive(Default)]
pub struct ImageImportForm {
    /// Layout directory or archive, as typed or picked.
    pub path: String,
    /// Name in the store; empty takes the image's own (or the reference's).
    pub name: String,
    /// Registry reference to pull.
    pub reference: String,
    /// Pull over plain HTTP (a registry on this machine).
    pub plain_http: bool,
    /// A file dialog running on its own thread, so the window stays live.
    picker: Option<Receiver<Option<PathBuf>>>,
}

impl ImageImportForm {
    /// The import the fields ask for, or why they do not.
    pub fn import_request(&self) -> Result<ImageRequest, String> {
        let path = self.path.trim();
        if path.is_empty() {
            return Err("Give the image's path: an OCI layout folder or an archive.".into());
        }
        let source = PathBuf::from(path);
        if !source.is_absolute() {
            return Err(format!("The image path \"{path}\" must be absolute."));
        }
        if !source.exists() {
            return Err(format!("{path} does not exist."));
        }
        let name = self.name.trim();
        Ok(ImageRequest::Import {
            source,
            name: (!name.is_empty()).then(|| name.to_string()),
        })
    }

    /// The pull the fields ask for, or why they do not.
    pub fn pull_request(&self) -> Result<ImageRequest, String> {
        let reference = self.reference.trim();
        if reference.is_empty() {
            return Err("Give an image reference, e.g. docker.io/library/alpine:3.20.".into());
        }
        let name = match self.name.trim() {
            "" => default_pull_name(reference).ok_or_else(|| {
                format!("Cannot name an image after \"{reference}\": give a name.")
            })?,
            n => n.to_string(),
        };
        Ok(ImageRequest::Pull {
            reference: reference.to_string(),
            name,
            plain_http: self.plain_http,
        })
    }

    fn start_picker(&mut self, kind: PickKind, ctx: &egui::Context) {
        let (tx, rx) = mpsc::channel();
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("file-dialog".into())
            .spawn(move || {
                let dialog = rfd::FileDialog::new();
                let picked = match kind {
                    PickKind::File => dialog
                        .set_title("Choose an image archive (OCI or docker save)")
                        .pick_file(),
                    PickKind::Folder => dialog
                        .set_title("Choose an OCI image layout folder")
                        .pick_folder(),
                };
                let _ = tx.send(picked);
                ctx.request_repaint();
            });
        match spawned {
            Ok(_) => self.picker = Some(rx),
            Err(e) => log::warn!("cannot open a file dialog: {e}"),
        }
    }

    fn poll_picker(&mut self) {
        let Some(rx) = &self.picker else {
            return;
        };
        match rx.try_recv() {
            Ok(picked) => {
                if let Some(path) = picked {
                    self.path = path.display().to_string();
                }
                self.picker = None;
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => self.picker = None,
        }
    }
}

/// Draw the import form; Import and Pull queue commands. `job` is the
/// running or last import, whose progress and outcome are shown.
pub fn image_import_ui(
    ui: &mut egui::Ui,
    form: &mut ImageImportForm,
    job: Option<&ImageJob>,
    commands: &mut CommandQueue,
) {
    form.poll_picker();
    let busy = job.is_some_and(ImageJob::is_running);
    let picking = form.picker.is_some();
    egui::Grid::new("image_import_form")
        .num_columns(2)
        .spacing([12.0, 6.0])
        .show(ui, |ui| {
            let label = ui.label("Image path");
            ui.horizontal(|ui| {
                ui.add(
                    egui::TextEdit::singleline(&mut form.path)
                        .hint_text("/path/to/oci-layout or image.tar")
                        .desired_width(230.0),
                )
                .labelled_by(label.id);
                if ui
                    .add_enabled(!picking, egui::Button::new("File…"))
                    .on_hover_text("Choose an archive: OCI layout tar or docker save output")
                    .clicked()
                {
                    form.start_picker(PickKind::File, ui.ctx());
                }
                if ui
                    .add_enabled(!picking, egui::Button::new("Folder…"))
                    .on_hover_text("Choose an OCI image layout folder")
                    .clicked()
                {
                    form.start_picker(PickKind::Folder, ui.ctx());
                }
            });
            ui.end_row();

            let label = ui.label("Image name");
            ui.add(
                egui::TextEdit::singleline(&mut form.name)
                    .hint_text("optional: the image's own name")
                    .desired_width(230.0),
            )
            .labelled_by(label.id);
            ui.end_row();

            let label = ui.label("Registry image");
            ui.add(
                egui::TextEdit::singleline(&mut form.reference)
                    .hint_text("docker.io/library/alpine:3.20")
                    .desired_width(230.0),
            )
            .labelled_by(label.id);
            ui.end_row();
        });
    let import = form.import_request();
    let pull = form.pull_request();
    ui.horizontal(|ui| {
        let button = ui.add_enabled(!busy && import.is_ok(), egui::Button::new("Import"));
        let button = match (&import, busy) {
            (_, true) => button.on_disabled_hover_text("An import is running"),
            (Err(why), false) => {
                ui.ctx()
                    .accesskit_node_builder(button.id, |n| n.set_description(why.as_str()));
                button.on_disabled_hover_text(why)
            }
            (Ok(_), false) => button.on_hover_text("Import the image at the path above"),
        };
        if button.clicked() {
            if let Ok(ImageRequest::Import { source, name }) = import {
                commands.push(UiCommand::ImportImage { source, name });
            }
        }
        let button = ui.add_enabled(!busy && pull.is_ok(), egui::Button::new("Pull"));
        let button = match (&pull, busy) {
            (_, true) => button.on_disabled_hover_text("An import is running"),
            (Err(why), false) => button.on_disabled_hover_text(why),
            (Ok(_), false) => button.on_hover_text("Download the image from its registry"),
        };
        if button.clicked() {
            if let Ok(ImageRequest::Pull {
                reference,
                name,
                plain_http,
            }) = pull
            {
                commands.push(UiCommand::PullImage {
                    reference,
                    name: Some(name),
                    plain_http,
                });
            }
        }
        ui.checkbox(&mut form.plain_http, "Plain HTTP")
            .on_hover_text("Only for a registry on this machine (localhost)");
    });
    if let Some(job) = job {
        job_status_ui(ui, job);
    }
}

/// The progress bar of a running job, or how the last one ended.
fn job_status_ui(ui: &mut egui::Ui, job: &ImageJob) {
    match &job.outcome {
        None => {
            let (fraction, text) = match &job.progress {
                Some(p) => (progress_fraction(p), progress_text(p)),
                None => (0.0, "starting".to_string()),
            };
            ui.add(
                egui::ProgressBar::new(fraction)
                    .text(format!("{}: {text}", job.request.describe()))
                    .animate(true),
            );
        }
        Some(Ok(record)) => {
            if let Some(p) = &job.progress {
                ui.add(egui::ProgressBar::new(1.0).text(progress_text(p)));
            }
            ui.label(imported_text(record));
        }
        Some(Err(why)) => {
            ui.colored_label(ui.visuals().error_fg_color, why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_in_words_and_names() {
        let p = ImportProgress {
            stage: ImportStage::Unpacking,
            bytes_done: 3 << 20,
            bytes_total: 6 << 20,
            layers_done: 1,
            layers_total: 2,
        };
        assert_eq!(
            progress_text(&p),
            "unpacking · 1 of 2 layers · 3.0 MiB of 6.0 MiB"
        );
        assert!((progress_fraction(&p) - 0.5).abs() < 1e-6);
        assert_eq!(percent(&p), 50);
        let empty = ImportProgress {
            bytes_total: 0,
            bytes_done: 0,
            ..p
        };
        assert_eq!(percent(&empty), 0);
        assert_eq!(
            default_pull_name("docker.io/library/alpine:3.20").as_deref(),
            Some("alpine:3.20")
        );
        assert_eq!(
            default_pull_name("localhost:5000/tools@sha256:ab").as_deref(),
            Some("tools")
        );
        assert_eq!(default_pull_name("x/"), None);
    }

    #[test]
    fn form_checks_its_fields() {
        let mut f = ImageImportForm::default();
        assert!(f.import_request().is_err_and(|e| e.contains("Give")));
        f.path = "relative/dir".into();
        assert!(f.import_request().is_err_and(|e| e.contains("absolute")));
        f.path = "/no/such/hangar/layout".into();
        assert!(f
            .import_request()
            .is_err_and(|e| e.contains("does not exist")));
        f.path = "/".into();
        f.name = " mine ".into();
        assert_eq!(
            f.import_request(),
            Ok(ImageRequest::Import {
                source: "/".into(),
                name: Some("mine".into())
            })
        );
        f.name.clear();
        f.reference = "docker.io/library/busybox:1.36".into();
        assert_eq!(
            f.pull_request(),
            Ok(ImageRequest::Pull {
                reference: "docker.io/library/busybox:1.36".into(),
                name: "busybox:1.36".into(),
                plain_http: false
            })
        );
    }
}
