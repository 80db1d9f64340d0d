//! The Run container dialog: image, command, environment, limits and
//! terminal. Run stays disabled, with the reason shown, until the settings
//! pass [`ContainerConfig::validate`].

use hangar_engine::containers::{ContainerConfig, ContainerLimits};

use super::command::{CommandQueue, UiCommand};

/// The image always offered: the set-up script's busybox, imported on first use.
pub const DEFAULT_IMAGE: &str = "default";

/// The dialog's fields while it is open.
pub struct ContainerDialogState {
    /// Chosen image.
    pub image: String,
    /// Images to choose from (read once when the dialog opens).
    pub images: Vec<String>,
    /// Command line, split on whitespace (quotes group words, as in a
    /// shell); empty runs the image's default.
    pub command: String,
    /// `NAME=value` lines.
    pub env: String,
    /// Memory limit in MiB; empty for none.
    pub memory_mib: String,
    /// CPU limit as a number of CPUs; empty for none.
    pub cpus: String,
    /// Process limit; empty for none.
    pub pids: String,
    /// Give the process a terminal.
    pub terminal: bool,
}

impl ContainerDialogState {
    /// A fresh dialog offering `images` (and `default`, always).
    pub fn new(mut images: Vec<String>) -> Self {
        if !images.iter().any(|i| i == DEFAULT_IMAGE) {
            images.insert(0, DEFAULT_IMAGE.to_string());
        }
        Self {
            image: DEFAULT_IMAGE.to_string(),
            images,
            command: String::new(),
            env: String::new(),
            memory_mib: String::new(),
            cpus: String::new(),
            pids: String::new(),
            terminal: true,
        }
    }

    /// The configuration the fields describe, or why there is none.
    pub fn config(&self) -> Result<ContainerConfig, String> {
        let mut c = ContainerConfig::new(&self.image);
        c.command = split_command(&self.command)?;
        c.env = self
            .env
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        c.terminal = self.terminal;
        c.limits = ContainerLimits {
            memory_mib: optional(&self.memory_mib, "Memory limit", "a whole number of MiB")?,
            cpus: optional(&self.cpus, "CPU limit", "a number of CPUs, e.g. 0.5")?,
            pids: optional(&self.pids, "Process limit", "a whole number")?,
        };
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }
}

/// Split a command line on whitespace; `'...'` and `"..."` keep words
/// together and a backslash takes the next character literally (not inside
/// single quotes), as a shell does. No expansions.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        match ch {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("The command has an unclosed ' quote.".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => w.push(c),
                            None => return Err("The command has an unclosed \" quote.".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("The command has an unclosed \" quote.".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("The command ends with a lone backslash.".into()),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// An empty field is no limit; anything else must parse.
fn optional<T: std::str::FromStr>(text: &str, what: &str, want: &str) -> Result<Option<T>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| format!("{what} \"{t}\" is not {want}."))
}

/// Draw the dialog if it is open; Run queues [`UiCommand::RunContainer`].
pub fn container_dialog_ui(
    ctx: &egui::Context,
    state: &mut Option<ContainerDialogState>,
    commands: &mut CommandQueue,
) {
    let Some(s) = state.as_mut() else {
        return;
    };
    let config = s.config();
    let mut open = true;
    let mut close = false;
    egui::Window::new("New container")
        .open(&mut open)
        .collapsible(false)
        .resizable(false)
        .default_width(460.0)
        .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
        .show(ctx, |ui| {
            egui::Grid::new("container_dialog")
                .num_columns(2)
                .spacing([12.0, 8.0])
                .show(ui, |ui| {
                    let label = ui.label("Image");
                    egui::ComboBox::from_id_salt("container_image")
                        .selected_text(s.image.as_str())
                        .show_ui(ui, |ui| {
                            for name in &s.images {
                                ui.selectable_value(&mut s.image, name.clone(), name);
                            }
                        })
                        .response
                        .labelled_by(label.id);
                    ui.end_row();

                    let label = ui.label("Command");
                    ui.add(
                        egui::TextEdit::singleline(&mut s.command)
                            .hint_text("empty: the image's default")
                            .desired_width(300.0),
                    )
                    .labelled_by(label.id);
                    ui.end_row();

                    let label = ui.label("Environment");
                    ui.add(
                        egui::TextEdit::multiline(&mut s.env)
                            .hint_text("NAME=value, one a line")
                            .desired_rows(2)
                            .desired_width(300.0),
                    )
                    .labelled_by(label.id);
                    ui.end_row();

                    for (name, field, hint) in [
                        ("Memory (MiB)", &mut s.memory_mib, "no limit"),
                        ("CPUs", &mut s.cpus, "no limit, e.g. 0.5"),
                        ("Processes", &mut s.pids, "no limit"),
                    ] {
                        let label = ui.label(name);
                        ui.add(
                            egui::TextEdit::singleline(field)
                                .hint_text(hint)
                                .desired_width(120.0),
                        )
                        .labelled_by(label.id);
                        ui.end_row();
                    }
                });
            ui.checkbox(&mut s.terminal, "Terminal (interactive programs)");
            if let Err(why) = &config {
                ui.colored_label(ui.visuals().error_fg_color, why);
            }
            ui.separator();
            ui.horizontal(|ui| {
                if ui.button("Cancel").clicked() {
                    close = true;
                }
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    let run = ui.add_enabled(config.is_ok(), egui::Button::new("Run"));
                    let run = match &config {
                        Err(why) => {
                            ui.ctx().accesskit_node_builder(run.id, |node| {
                                node.set_description(why.as_str())
                            });
                            run.on_disabled_hover_text(why)
                        }
                        Ok(_) => run,
                    };
                    if run.clicked() {
                        if let Ok(c) = &config {
                            commands.push(UiCommand::RunContainer(c.clone()));
                            close = true;
                        }
                    }
                });
            });
        });
    if !open || close {
        *state = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_make_a_config_or_say_why_not() {
        let mut s = ContainerDialogState::new(vec!["alpine".into()]);
        assert_eq!(s.images, vec!["default".to_string(), "alpine".to_string()]);
        s.command = "  sh -c   true ".into();
        s.env = "A=1\n\n B=2 \n".into();
        assert_eq!(
            split_command(r#"sh -c "echo 'a  b'; x=\"q\"" '' c\ d"#),
            Ok(vec![
                "sh".to_string(),
                "-c".into(),
                "echo 'a  b'; x=\"q\"".into(),
                String::new(),
                "c d".into()
            ])
        );
        assert!(split_command("echo \"open").is_err());
        s.memory_mib = "64".into();
        let c = s.config().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.command, vec!["sh", "-c", "true"]);
        assert_eq!(c.env, vec!["A=1", "B=2"]);
        assert_eq!(c.limits.memory_mib, Some(64));
        assert!(c.terminal);
        s.memory_mib = "1".into();
        assert!(s.config().is_err_and(|e| e.contains("memory limit 1 MiB")));
        s.memory_mib = "lots".into();
        assert!(s.config().is_err_and(|e| e.contains("\"lots\"")));
        s.memory_mib.clear();
        s.env = "NOEQUALS".into();
        assert!(s.config().is_err_and(|e| e.contains("NOEQUALS")));
    }
}
