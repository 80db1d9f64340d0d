//! A new machine from a template (Debian 12): its own copy of the
//! template's disk, in the machine's folder, made on a `disk-clone` worker
//! thread with progress. The definition is saved only once the disk is
//! complete, so a machine never exists without its disk; a failed copy
//! leaves no file behind (the disk is written under a temporary name) and
//! no empty folder, and a definition that cannot be saved takes its new
//! disk with it.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, TryRecvError};

use super::{machine_dir, Library, LibraryError};
use crate::config::NetworkConfig;
use crate::kit::DefaultKit;
use crate::store::{MachineDefinition, MachineStore};
use crate::templates::{self, Template, TemplateStatus};

/// What the user asks for: a machine booting its own copy of a template.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
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

/// Bytes copied and bytes to copy.
pub type CloneProgress = (u64, u64);

enum CloneMessage {
    Progress(CloneProgress),
    Finished(Result<MachineDefinition, LibraryError>),
}

/// A template's disk being copied for a new machine.
pub struct TemplateClone {
    /// The machine, saved once the copy is complete (its first disk is
    /// the copy).
    pub def: MachineDefinition,
    /// The template's name for people.
    pub template_title: String,
    rx: Receiver<CloneMessage>,
}

impl Library {
    /// Start copying a template's disk for the machine `request` asks for;
    /// `wake` is called after each progress report and at the end.
    pub fn clone_template(
        &self,
        request: &TemplateMachine,
        kit: Option<&DefaultKit>,
        wake: impl Fn() + Send + 'static,
    ) -> Result<TemplateClone, LibraryError> {
        let store = self.store()?.clone();
        let data_dir = self
            .data_dir()
            .ok_or(LibraryError::NoDataDir("the machine's disk"))?;
        let kit = kit.ok_or(LibraryError::NoKit)?;
        // Looked up again: the template may have gone since the user chose it.
        let template = match templates::available(data_dir)
            .into_iter()
            .find(|t| match t {
                TemplateStatus::Ready(t) => t.id == request.template,
                TemplateStatus::Missing { id, .. } => *id == request.template,
            }) {
            Some(TemplateStatus::Ready(t)) => t,
            Some(TemplateStatus::Missing { title, reason, .. }) => {
                return Err(LibraryError::TemplateMissing {
                    name: request.name.clone(),
                    title,
                    reason,
                })
            }
            None => return Err(LibraryError::NoTemplate(request.template.clone())),
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
            if let (Some(cmdline), Some(boot)) = (&request.cmdline, c.kernel_boot_mut()) {
                boot.cmdline = cmdline.clone();
            }
            c
        };
        // The id names the disk's folder, so the definition comes first.
        let mut def = MachineDefinition::new(config(PathBuf::new()));
        let dest = machine_dir(data_dir, &def.id).join("disk.raw");
        def.config = config(dest.clone());
        let (tx, rx) = mpsc::channel();
        let template_title = template.title.clone();
        let size = request.disk_size;
        let saved = def.clone();
        std::thread::Builder::new()
            .name("disk-clone".into())
            .spawn(move || {
                let mut last_percent = None;
                let mut report = |done: u64, total: u64| {
                    // Called per MiB copied: pass on whole percents only.
                    let percent = (done.min(total) * 100).checked_div(total).unwrap_or(100);
                    if last_percent != Some(percent) {
                        last_percent = Some(percent);
                        if tx.send(CloneMessage::Progress((done, total))).is_ok() {
                            wake();
                        }
                    }
                };
                let result = clone_and_save(&template, &dest, size, &mut report, &store, saved);
                if let Err(e) = &result {
                    log::warn!("{}", crate::api::error_text(e));
                }
                let _ = tx.send(CloneMessage::Finished(result));
                wake();
            })
            .map_err(LibraryError::Thread)?;
        Ok(TemplateClone {
            def,
            template_title,
            rx,
        })
    }
}

impl TemplateClone {
    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.def.config.name
    }

    /// What the worker sent since the last call: the latest progress, and
    /// the outcome once it arrives (the saved definition, or why not).
    pub fn poll(
        &mut self,
    ) -> (
        Option<CloneProgress>,
        Option<Result<MachineDefinition, String>>,
    ) {
        let mut progress = None;
        loop {
            match self.rx.try_recv() {
                Ok(CloneMessage::Progress(p)) => progress = Some(p),
                Ok(CloneMessage::Finished(result)) => {
                    let outcome = result.map_err(|e| crate::api::error_text(&e));
                    return (progress, Some(outcome));
                }
                Err(TryRecvError::Empty) => return (progress, None),
                Err(TryRecvError::Disconnected) => {
                    let why = format!(
                        "cannot create {}: the disk copy thread ended without a result",
                        self.name()
                    );
                    return (progress, Some(Err(why)));
                }
            }
        }
    }
}

/// Create the disk's folder if needed, clone into it and save the machine;
/// a failure removes what this call made.
fn clone_and_save(
    template: &Template,
    dest: &Path,
    size: u64,
    report: &mut dyn FnMut(u64, u64),
    store: &MachineStore,
    def: MachineDefinition,
) -> Result<MachineDefinition, LibraryError> {
    let dir = dest.parent().ok_or_else(|| LibraryError::CopyTemplate {
        title: template.title.clone(),
        dest: dest.to_path_buf(),
        source: templates::TemplateError::BadDestination(dest.to_path_buf()),
    })?;
    let made_dir = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|source| LibraryError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let remove_dir = || {
        if made_dir {
            let _ = std::fs::remove_dir(dir);
        }
    };
    if let Err(source) = templates::clone_disk(template, dest, size, report) {
        remove_dir();
        return Err(LibraryError::CopyTemplate {
            title: template.title.clone(),
            dest: dest.to_path_buf(),
            source,
        });
    }
    if let Err(e) = store.create(&def) {
        let _ = std::fs::remove_file(dest);
        remove_dir();
        return Err(e.into());
    }
    Ok(def)
}
