//! A banner at the top when this computer cannot run Linux guests.

use hangar_engine::HostCapability;

/// Show the host check in plain words, only when something is missing.
pub fn host_banner_ui(ui: &mut egui::Ui, host: &HostCapability) {
    if host.can_run_linux() {
        return;
    }
    egui::Panel::top("host_banner").show(ui, |ui| {
        ui.horizontal_wrapped(|ui| {
            ui.colored_label(ui.visuals().warn_fg_color, "Warning:");
            ui.label(host.summary());
        });
    });
}
