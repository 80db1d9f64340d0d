//! The Log panel (bottom) and error notifications (top right).

use std::time::UNIX_EPOCH;

use crate::gui::command::{CommandQueue, UiCommand};
use crate::gui::shell::log::{Log, LogLine, Severity};

fn clock(line: &LogLine) -> String {
    // Local time needs a time-zone database; UTC wall-clock is unambiguous.
    let secs = line
        .time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02} UTC",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

fn line_text(line: &LogLine) -> String {
    match &line.machine {
        Some(m) => format!("{}  {m}: {}", clock(line), line.message),
        None => format!("{}  {}", clock(line), line.message),
    }
}

/// The bottom Log panel, collapsible.
pub fn log_ui(ui: &mut egui::Ui, log: &Log, show: &mut bool) {
    let mut hide = false;
    egui::Panel::bottom("log")
        .resizable(true)
        .default_size(130.0)
        .show_collapsible(ui, &mut show.clone(), |ui| {
            ui.horizontal(|ui| {
                ui.strong("Log");
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    if ui.small_button("Hide").clicked() {
                        hide = true;
                    }
                });
            });
            egui::ScrollArea::vertical()
                .stick_to_bottom(true)
                .auto_shrink([false, false])
                .show(ui, |ui| {
                    for line in &log.lines {
                        let text = egui::RichText::new(line_text(line)).monospace();
                        match line.severity {
                            Severity::Error => ui.colored_label(ui.visuals().error_fg_color, text),
                            Severity::Info => ui.label(text),
                        };
                    }
                });
        });
    if hide {
        *show = false;
    }
    if !*show {
        egui::Panel::bottom("log_collapsed").show(ui, |ui| {
            if ui
                .small_button(format!("Show log ({} lines)", log.lines.len()))
                .clicked()
            {
                *show = true;
            }
        });
    }
}

/// Error notifications, newest last, each dismissible.
pub fn notifications_ui(ctx: &egui::Context, log: &Log, commands: &mut CommandQueue) {
    if log.notifications.is_empty() {
        return;
    }
    egui::Area::new(egui::Id::unique("notifications"))
        .anchor(egui::Align2::RIGHT_TOP, egui::vec2(-12.0, 40.0))
        .order(egui::Order::Foreground)
        .show(ctx, |ui| {
            ui.set_max_width(420.0);
            for (i, (line, _)) in log.notifications.iter().enumerate() {
                egui::Frame::popup(ui.style()).show(ui, |ui| {
                    ui.horizontal(|ui| {
                        ui.vertical(|ui| {
                            if let Some(m) = &line.machine {
                                ui.strong(m);
                            }
                            ui.colored_label(ui.visuals().error_fg_color, &line.message);
                        });
                        if ui
                            .small_button("Dismiss")
                            .on_hover_text("Dismiss")
                            .clicked()
                        {
                            commands.push(UiCommand::DismissNotification(i));
                        }
                    });
                });
            }
        });
    // Notifications expire on their own; come back to remove them.
    ctx.request_repaint_after(std::time::Duration::from_secs(1));
}
