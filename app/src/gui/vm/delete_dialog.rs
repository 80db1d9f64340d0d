//! The Delete machine dialog: asks first, lists the machine's disk files
//! with their sizes, and offers to delete them too. Only the files in the
//! machine's own folder that no other machine uses are ever deleted, and
//! only when the box is ticked; the dialog says which stay and why.

use std::path::PathBuf;

use hangar_engine::Library;

use crate::gui::command::{CommandQueue, UiCommand};
use crate::gui::vm::machine::Machines;
use crate::gui::vm::machine_disks::{format_size, DiskFileRow};

/// Label of the box that also deletes disk files.
pub const DELETE_DISKS_LABEL: &str = "Also delete its disk files";

/// The dialog while it is open. The files are looked at once, when it
/// opens, not on every frame.
pub struct DeleteConfirmation {
    /// The machine.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its own folder (where Hangar makes its disks), if Hangar has a data
    /// directory.
    pub own_dir: Option<PathBuf>,
    /// Its disk files and whether each would be deleted.
    pub disks: Vec<DiskFileRow>,
    /// The user ticked "also delete its disk files".
    pub delete_disks: bool,
}

impl DeleteConfirmation {
    /// Ask about machine `id`: what the library would delete now.
    pub fn new(id: &str, machines: &Machines, library: &Library) -> Self {
        let own_dir = library.machine_dir(id);
        let disks = library.delete_plan(id).unwrap_or_default();
        Self {
            id: id.to_string(),
            name: machines.display_name(id),
            own_dir,
            disks,
            delete_disks: false,
        }
    }

    /// The files "delete disk files" removes.
    pub fn deletable(&self) -> impl Iterator<Item = &DiskFileRow> {
        self.disks.iter().filter(|d| d.deletable())
    }
}

fn row_text(row: &DiskFileRow) -> String {
    let mut text = row.path.display().to_string();
    match (row.allocated, row.virtual_size) {
        (Some(used), Some(size)) => text.push_str(&format!(
            " — {} on this host ({} disk)",
            format_size(used),
            format_size(size)
        )),
        _ => text.push_str(" — cannot be read"),
    }
    text
}

/// Draw the dialog; Delete queues the command, Cancel or closing forgets it.
pub fn delete_dialog_ui(
    ctx: &egui::Context,
    state: &mut Option<DeleteConfirmation>,
    commands: &mut CommandQueue,
) {
    let Some(s) = state.as_mut() else {
        return;
    };
    let mut open = true;
    let mut close = false;
    egui::Window::new("Delete machine?")
        .collapsible(false)
        .resizable(false)
        .open(&mut open)
        .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
        .show(ctx, |ui| {
            ui.label(format!("Delete the machine \"{}\"?", s.name));
            ui.weak("Its definition is removed; kernel and initramfs files stay where they are.");
            if !s.disks.is_empty() {
                ui.add_space(6.0);
                ui.label("Disk files:");
                for row in &s.disks {
                    ui.horizontal_wrapped(|ui| {
                        ui.label(row_text(row));
                        if let Some(why) = &row.kept_because {
                            ui.weak(format!("({why})"));
                        }
                    });
                }
                let (count, bytes) = s
                    .deletable()
                    .fold((0, 0), |(n, b), r| (n + 1, b + r.allocated.unwrap_or(0)));
                let label = if count > 0 {
                    format!(
                        "{DELETE_DISKS_LABEL} ({count} file{}, {})",
                        if count == 1 { "" } else { "s" },
                        format_size(bytes)
                    )
                } else {
                    DELETE_DISKS_LABEL.to_string()
                };
                ui.add_enabled(count > 0, egui::Checkbox::new(&mut s.delete_disks, label))
                    .accessible_name(DELETE_DISKS_LABEL)
                    .on_disabled_hover_text("None of its disk files is Hangar's to delete");
                let folder = s
                    .own_dir
                    .as_ref()
                    .map_or("its own folder".to_string(), |d| d.display().to_string());
                ui.weak(format!(
                    "Only files in the machine's own folder ({folder}) are deleted. Images from \
                     anywhere else are never deleted automatically."
                ));
            }
            ui.horizontal(|ui| {
                if ui.button("Delete").clicked() {
                    let delete_files = s.delete_disks && s.deletable().next().is_some();
                    commands.push(if delete_files {
                        UiCommand::DeleteWithDisks(s.id.clone())
                    } else {
                        UiCommand::Delete(s.id.clone())
                    });
                    close = true;
                }
                if ui.button("Cancel").clicked() {
                    close = true;
                }
            });
        });
    if !open || close {
        *state = None;
    }
}
