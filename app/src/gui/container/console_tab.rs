//! A container's console: its output in the same terminal widget as the
//! machines' serial consoles, typed keys to its stdin (or terminal), and how
//! it ended once it has.

use hangar_engine::WorkloadState;

use crate::gui::command::{CommandQueue, UiCommand};
use crate::gui::container::model::Container;

/// Draw the console; typed bytes and size changes become commands.
pub fn container_console_tab_ui(ui: &mut egui::Ui, c: &mut Container, commands: &mut CommandQueue) {
    let id = c.id.0.clone();
    ui.horizontal(|ui| {
        ui.label(format!("Container console · {}", c.state_label()));
        ui.weak(c.summary());
    });
    if let Some(last) = c.stats.back() {
        ui.weak(format!(
            "CPU {:.2} s · memory {:.1} MiB · {} process{}",
            last.cpu_time.as_secs_f64(),
            last.memory_bytes as f64 / (1 << 20) as f64,
            last.pids,
            if last.pids == 1 { "" } else { "es" }
        ));
    }
    if let Some(err) = &c.last_error {
        ui.colored_label(ui.visuals().error_fg_color, err);
    }
    match (&c.exit, &c.exit_description) {
        (Some(exit), Some(desc)) => {
            let text = format!("Ended: {desc}");
            if exit.code == 0 && !exit.oom_killed && exit.pids_limit_hits == 0 {
                ui.strong(text);
            } else {
                ui.colored_label(ui.visuals().error_fg_color, text);
            }
        }
        _ if !c.config.terminal && c.is_active() => {
            ui.weak("No terminal: typed input is not echoed; Ctrl-D ends the input.");
        }
        _ => {}
    }
    let bytes = c.terminal.ui(ui);
    let running = c.is_active() && !c.removing;
    if !bytes.is_empty() && running {
        commands.push(UiCommand::ContainerInput(id.clone(), bytes));
    }
    // The process's terminal follows the widget's grid (once per change).
    if c.config.terminal && running && c.state != WorkloadState::Stopping {
        let (cols, rows) = c.terminal.size();
        let size = (
            u16::try_from(cols).unwrap_or(u16::MAX),
            u16::try_from(rows).unwrap_or(u16::MAX),
        );
        if c.sent_size != Some(size) {
            c.sent_size = Some(size);
            commands.push(UiCommand::ContainerResize {
                id,
                cols: size.0,
                rows: size.1,
            });
        }
    }
}
