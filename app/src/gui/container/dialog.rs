//! The Run container dialog: image (and importing one), command,
//! environment, limits, network and port forwards, volumes, working
//! directory, user and terminal. Run stays disabled, with the reason shown,
//! until the settings pass [`ContainerConfig::validate`].

use std::path::{Path, PathBuf};

use hangar_engine::containers::{
    ContainerConfig, ContainerLimits, NetworkMode, PortForward, Volume,
};

use crate::gui::command::{CommandQueue, UiCommand};
use crate::gui::container::image_import::{image_import_ui, ImageImportForm, ImageJob};

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
    /// Working directory inside the container; empty for the image's.
    pub workdir: String,
    /// `uid[:gid]` or a user name; empty for the image's.
    pub user: String,
    /// How the container reaches the network.
    pub network: NetworkMode,
    /// Port forward rows (rows left empty are ignored).
    pub ports: Vec<PortRow>,
    /// Volume rows (rows left empty are ignored).
    pub volumes: Vec<VolumeRow>,
    /// The import form is shown.
    pub show_import: bool,
    /// The import form's fields.
    pub import: ImageImportForm,
}

/// One port forward as typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortRow {
    /// Port on the host's 127.0.0.1.
    pub host: String,
    /// Port inside the container.
    pub container: String,
}

/// One bind mount as typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeRow {
    /// Host directory or file (absolute).
    pub source: String,
    /// Path inside the container (absolute).
    pub target: String,
    /// Mount it read-only.
    pub read_only: bool,
}

impl PortRow {
    fn is_empty(&self) -> bool {
        self.host.trim().is_empty() && self.container.trim().is_empty()
    }

    /// The forward this row describes (`n` numbers it in messages).
    pub fn parse(&self, n: usize) -> Result<PortForward, String> {
        let port = |text: &str, which: &str| {
            let t = text.trim();
            t.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                format!("Port forward {n}: {which} port \"{t}\" is not a port number (1-65535).")
            })
        };
        Ok(PortForward {
            host_port: port(&self.host, "host")?,
            guest_port: port(&self.container, "container")?,
        })
    }
}

impl VolumeRow {
    fn is_empty(&self) -> bool {
        self.source.trim().is_empty() && self.target.trim().is_empty()
    }

    /// The bind mount this row describes (`n` numbers it in messages).
    pub fn parse(&self, n: usize) -> Result<Volume, String> {
        let source = self.source.trim();
        let target = self.target.trim();
        if source.is_empty() {
            return Err(format!("Volume {n}: give the host path."));
        }
        if !Path::new(source).is_absolute() {
            return Err(format!(
                "Volume {n}: the host path \"{source}\" must be absolute."
            ));
        }
        if target.is_empty() {
            return Err(format!("Volume {n}: give the path inside the container."));
        }
        if !target.starts_with('/') {
            return Err(format!(
                "Volume {n}: the container path \"{target}\" must be absolute."
            ));
        }
        Ok(Volume {
            source: PathBuf::from(source),
            target: target.to_string(),
            read_only: self.read_only,
        })
    }
}

/// `None` for an empty (or blank) field.
fn non_empty(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

impl ContainerDialogState {
    /// A fresh dialog offering `images` (and `default`, always).
    pub fn new(images: Vec<String>) -> Self {
        let mut s = Self {
            image: DEFAULT_IMAGE.to_string(),
            images: Vec::new(),
            command: String::new(),
            env: String::new(),
            memory_mib: String::new(),
            cpus: String::new(),
            pids: String::new(),
            terminal: true,
            workdir: String::new(),
            user: String::new(),
            network: NetworkMode::None,
            ports: Vec::new(),
            volumes: Vec::new(),
            show_import: false,
            import: ImageImportForm::default(),
        };
        s.set_images(images);
        s
    }

    /// Offer `images` (and `default`, always); keep the chosen one.
    pub fn set_images(&mut self, mut images: Vec<String>) {
        if !images.iter().any(|i| i == DEFAULT_IMAGE) {
            images.insert(0, DEFAULT_IMAGE.to_string());
        }
        self.images = images;
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
        c.workdir = non_empty(&self.workdir);
        c.user = non_empty(&self.user);
        c.network = self.network;
        c.ports = self
            .ports
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(i, r)| r.parse(i + 1))
            .collect::<Result<_, _>>()?;
        c.volumes = self
            .volumes
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(i, r)| r.parse(i + 1))
            .collect::<Result<_, _>>()?;
        // The whole chain: the reason is the error's source.
        c.validate()
            .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
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
/// `image_job` is the running or last image import, shown in the import
/// form.
pub fn container_dialog_ui(
    ctx: &egui::Context,
    state: &mut Option<ContainerDialogState>,
    image_job: Option<&ImageJob>,
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
        .default_width(520.0)
        .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
        .show(ctx, |ui| {
            egui::ScrollArea::vertical()
                .max_height(ctx.content_rect().height() - 160.0)
                .show(ui, |ui| {
                    image_ui(ui, s, image_job, commands);
                    settings_ui(ui, s);
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

/// The image picker, and the import form under it when asked for.
fn image_ui(
    ui: &mut egui::Ui,
    s: &mut ContainerDialogState,
    image_job: Option<&ImageJob>,
    commands: &mut CommandQueue,
) {
    ui.horizontal(|ui| {
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
        let running = image_job.is_some_and(ImageJob::is_running);
        let text = if s.show_import {
            "Hide import"
        } else if running {
            "Importing…"
        } else {
            "Import image…"
        };
        if ui
            .button(text)
            .on_hover_text("Import an OCI layout or docker save archive, or pull from a registry")
            .clicked()
        {
            s.show_import = !s.show_import;
        }
    });
    if s.show_import {
        egui::Frame::group(ui.style()).show(ui, |ui| {
            image_import_ui(ui, &mut s.import, image_job, commands);
        });
    }
}

/// Command, environment, limits, working directory, user, network, ports
/// and volumes.
fn settings_ui(ui: &mut egui::Ui, s: &mut ContainerDialogState) {
    egui::Grid::new("container_dialog")
        .num_columns(2)
        .spacing([12.0, 8.0])
        .show(ui, |ui| {
            let label = ui.label("Command");
            ui.add(
                egui::TextEdit::singleline(&mut s.command)
                    .hint_text("empty: the image's default")
                    .desired_width(320.0),
            )
            .labelled_by(label.id);
            ui.end_row();

            let label = ui.label("Environment");
            ui.add(
                egui::TextEdit::multiline(&mut s.env)
                    .hint_text("NAME=value, one a line")
                    .desired_rows(2)
                    .desired_width(320.0),
            )
            .labelled_by(label.id);
            ui.end_row();

            for (name, field, hint) in [
                ("Memory (MiB)", &mut s.memory_mib, "no limit"),
                ("CPUs", &mut s.cpus, "no limit, e.g. 0.5"),
                ("Processes", &mut s.pids, "no limit"),
                (
                    "Working directory",
                    &mut s.workdir,
                    "the image's, e.g. /app",
                ),
                ("User", &mut s.user, "the image's, e.g. 1000:1000"),
            ] {
                let label = ui.label(name);
                ui.add(
                    egui::TextEdit::singleline(field)
                        .hint_text(hint)
                        .desired_width(200.0),
                )
                .labelled_by(label.id);
                ui.end_row();
            }

            ui.label("Network");
            ui.horizontal(|ui| {
                ui.radio_value(&mut s.network, NetworkMode::None, "None")
                    .on_hover_text("Loopback only");
                ui.radio_value(&mut s.network, NetworkMode::User, "User-mode")
                    .on_hover_text(
                        "Outgoing connections as this host's (pasta); the gateway reaches \
                         this host's loopback; port forwards on 127.0.0.1",
                    );
            });
            ui.end_row();

            ui.label("Ports");
            ports_ui(ui, s);
            ui.end_row();

            ui.label("Volumes");
            volumes_ui(ui, &mut s.volumes);
            ui.end_row();
        });
}

fn ports_ui(ui: &mut egui::Ui, s: &mut ContainerDialogState) {
    ui.vertical(|ui| {
        let mut remove = None;
        for (i, row) in s.ports.iter_mut().enumerate() {
            let n = i + 1;
            ui.horizontal(|ui| {
                ui.weak("127.0.0.1:");
                ui.add(
                    egui::TextEdit::singleline(&mut row.host)
                        .hint_text("host")
                        .desired_width(60.0),
                )
                .accessible_name(format!("Host port {n}"));
                ui.label("to");
                ui.add(
                    egui::TextEdit::singleline(&mut row.container)
                        .hint_text("container")
                        .desired_width(70.0),
                )
                .accessible_name(format!("Container port {n}"));
                if ui
                    .small_button("Remove")
                    .accessible_name(format!("Remove port {n}"))
                    .clicked()
                {
                    remove = Some(i);
                }
            });
        }
        if let Some(i) = remove {
            s.ports.remove(i);
        }
        if ui
            .small_button("Add port")
            .on_hover_text("Forward a port of this host's 127.0.0.1 into the container (TCP)")
            .clicked()
        {
            s.ports.push(PortRow::default());
            // Forwards need user-mode networking: choose it with the first.
            s.network = NetworkMode::User;
        }
    });
}

fn volumes_ui(ui: &mut egui::Ui, volumes: &mut Vec<VolumeRow>) {
    ui.vertical(|ui| {
        let mut remove = None;
        for (i, row) in volumes.iter_mut().enumerate() {
            let n = i + 1;
            ui.horizontal(|ui| {
                ui.add(
                    egui::TextEdit::singleline(&mut row.source)
                        .hint_text("/host/path")
                        .desired_width(140.0),
                )
                .accessible_name(format!("Host path {n}"));
                ui.label("to");
                ui.add(
                    egui::TextEdit::singleline(&mut row.target)
                        .hint_text("/in/container")
                        .desired_width(110.0),
                )
                .accessible_name(format!("Container path {n}"));
                ui.checkbox(&mut row.read_only, "ro")
                    .on_hover_text("Mount read-only")
                    .accessible_name(format!("Read-only {n}"));
                if ui
                    .small_button("Remove")
                    .accessible_name(format!("Remove volume {n}"))
                    .clicked()
                {
                    remove = Some(i);
                }
            });
        }
        if let Some(i) = remove {
            volumes.remove(i);
        }
        if ui
            .small_button("Add volume")
            .on_hover_text("Bind-mount a host directory or file into the container")
            .clicked()
        {
            volumes.push(VolumeRow::default());
        }
    });
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

    #[test]
    fn ports_volumes_workdir_and_user_reach_the_config() {
        let mut s = ContainerDialogState::new(Vec::new());
        s.workdir = " /srv ".into();
        s.user = "1000:1000".into();
        s.ports.push(PortRow {
            host: "8080".into(),
            container: "80".into(),
        });
        s.ports.push(PortRow::default());
        assert!(
            s.config()
                .is_err_and(|e| e.contains("user-mode networking")),
            "forwards need network user"
        );
        s.network = NetworkMode::User;
        s.volumes.push(VolumeRow {
            source: "/tmp".into(),
            target: "/data".into(),
            read_only: true,
        });
        let c = s.config().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.workdir.as_deref(), Some("/srv"));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(
            c.ports,
            vec![PortForward {
                host_port: 8080,
                guest_port: 80
            }],
            "the empty row is ignored"
        );
        assert_eq!(
            c.volumes,
            vec![Volume {
                source: "/tmp".into(),
                target: "/data".into(),
                read_only: true
            }]
        );

        s.ports[1].host = "99999".into();
        assert_eq!(
            s.config(),
            Err("Port forward 2: host port \"99999\" is not a port number (1-65535).".into())
        );
        s.ports[1] = PortRow {
            host: "8080".into(),
            container: "81".into(),
        };
        assert!(s
            .config()
            .is_err_and(|e| e.contains("host port 8080 is forwarded twice")));
        s.ports.truncate(1);
        s.volumes[0].source = "tmp".into();
        assert!(s.config().is_err_and(|e| e.contains("must be absolute")));
        s.volumes[0].source = "/no/such/hangar/dir".into();
        assert!(s.config().is_err_and(|e| e.contains("does not exist")));
        s.volumes[0].source = "/tmp".into();
        s.volumes[0].target = "data".into();
        assert!(s
            .config()
            .is_err_and(|e| e.contains("\"data\" must be absolute")));
        s.volumes.clear();
        s.workdir = "srv".into();
        assert!(s
            .config()
            .is_err_and(|e| e.contains("working directory 'srv'")));
    }
}
