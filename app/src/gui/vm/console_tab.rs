//! A machine's serial console as a terminal.

use crate::gui::command::{CommandQueue, UiCommand};
use crate::gui::vm::machine::Machine;

/// Draw the console; typed bytes become a command for the engine.
pub fn console_tab_ui(
    ui: &mut egui::Ui,
    id: &str,
    machine: &mut Machine,
    commands: &mut CommandQueue,
) {
    ui.horizontal(|ui| {
        ui.label(format!("Serial console · {}", machine.status.label()));
        if !machine.status.is_active() {
            ui.weak("(start the machine to type into it)");
        }
    });
    let bytes = machine.terminal.ui(ui);
    if !bytes.is_empty() && machine.status.is_active() {
        commands.push(UiCommand::SerialInput(id.to_string(), bytes));
    }
}
