//! The New virtual machine wizard: name and OS source, resources, summary.
//! Every invalid choice is explained next to its field, and Next/Create
//! stay disabled until the page is valid.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};

use hangar_engine::config::{detect_kernel_kind, DisplayConfig, MAX_CMDLINE_LEN, MIN_MEMORY_MIB};
use hangar_engine::kit::DEFAULT_CMDLINE;
use hangar_engine::{DefaultKit, HostCapability, KernelKind, VmConfig};

use super::command::{CommandQueue, UiCommand};
use super::model::Machines;

/// Command line offered for a kernel the user picks.
pub const CUSTOM_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// Where the guest comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OsSource {
    /// The kit built by packaging/setup.sh.
    DefaultLinux,
    /// A kernel (and optional initramfs) the user picks.
    KernelFiles,
}

/// Which page is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// Name and OS source.
    Source,
    /// vCPUs, memory, command line.
    Resources,
    /// Everything at a glance; Create.
    Summary,
}

/// Which file a picker is choosing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PickTarget {
    Kernel,
    Initrd,
}

/// The wizard's state while it is open.
pub struct WizardState {
    /// Current page.
    pub page: Page,
    /// Machine name.
    pub name: String,
    /// OS source.
    pub source: OsSource,
    /// Kernel path, as typed or picked.
    pub kernel: String,
    /// Initramfs path; empty for none.
    pub initrd: String,
    /// Virtual CPUs.
    pub vcpus: u8,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Kernel command line.
    pub cmdline: String,
    /// Whether the user edited the command line (then a source change keeps it).
    cmdline_edited: bool,
    /// A file dialog running on its own thread, so the window stays live.
    picker: Option<(PickTarget, Receiver<Option<PathBuf>>)>,
    /// Host CPUs and RAM, read once when the wizard opens rather than from
    /// /proc on every frame it is shown.
    host: HostResources,
}

impl WizardState {
    /// A fresh wizard: the default kit when it exists.
    pub fn new(kit: Option<&DefaultKit>) -> Self {
        let source = if kit.is_some() {
            OsSource::DefaultLinux
        } else {
            OsSource::KernelFiles
        };
        Self {
            page: Page::Source,
            name: String::new(),
            source,
            kernel: String::new(),
            initrd: String::new(),
            vcpus: 1,
            memory_mib: hangar_engine::kit::DEFAULT_MEMORY_MIB,
            cmdline: match source {
                OsSource::DefaultLinux => DEFAULT_CMDLINE.to_string(),
                OsSource::KernelFiles => CUSTOM_CMDLINE.to_string(),
            },
            cmdline_edited: false,
            picker: None,
            host: HostResources::probe(),
        }
    }
}

/// What the wizard needs to know about the world.
pub struct WizardContext<'a> {
    /// Existing machines (for unique names).
    pub machines: &'a Machines,
    /// The default guest kit, if set up.
    pub kit: Option<&'a DefaultKit>,
    /// The host's capability.
    pub host: &'a HostCapability,
}

/// Per-field problems; `None` means the field is fine.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WizardErrors {
    /// About the name.
    pub name: Option<String>,
    /// About the OS source / kernel file.
    pub kernel: Option<String>,
    /// About the initramfs.
    pub initrd: Option<String>,
    /// About vCPUs.
    pub vcpus: Option<String>,
    /// About memory.
    pub memory: Option<String>,
    /// About the command line.
    pub cmdline: Option<String>,
}

impl WizardErrors {
    fn source_page_ok(&self) -> bool {
        self.name.is_none() && self.kernel.is_none() && self.initrd.is_none()
    }

    fn resources_page_ok(&self) -> bool {
        self.vcpus.is_none() && self.memory.is_none() && self.cmdline.is_none()
    }

    /// True when the machine can be created.
    pub fn all_ok(&self) -> bool {
        self.source_page_ok() && self.resources_page_ok()
    }
}

/// Host limits the wizard offers within.
#[derive(Debug, Clone, Copy)]
pub struct HostResources {
    /// Logical CPUs.
    pub cpus: u8,
    /// RAM in MiB.
    pub memory_mib: u64,
}

impl HostResources {
    /// Read them from this host.
    pub fn probe() -> Self {
        Self {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get().min(255) as u8)
                .unwrap_or(1),
            memory_mib: hangar_engine::config::host_memory_mib(),
        }
    }
}

/// Check every field.
pub fn validate(
    state: &WizardState,
    world: &WizardContext<'_>,
    host: HostResources,
) -> WizardErrors {
    let mut e = WizardErrors::default();
    let name = state.name.trim();
    if name.is_empty() {
        e.name = Some("Give the machine a name.".into());
    } else if name.chars().count() > 64 {
        e.name = Some("Keep the name under 64 characters.".into());
    } else if world.machines.name_taken(name) {
        e.name = Some(format!("A machine named \"{name}\" already exists."));
    }
    match state.source {
        OsSource::DefaultLinux => {
            if world.kit.is_none() {
                e.kernel = Some("The default guest kit is not installed: run packaging/setup.sh, or pick a kernel.".into());
            }
        }
        OsSource::KernelFiles => {
            if state.kernel.trim().is_empty() {
                e.kernel = Some("Choose a kernel file.".into());
            } else {
                match detect_kernel_kind(Path::new(state.kernel.trim())) {
                    Ok(_) => {}
                    // With its cause: "No such file or directory", "Permission denied"...
                    Err(err) => e.kernel = Some(format!("{:#}", anyhow::Error::new(err))),
                }
            }
            let initrd = state.initrd.trim();
            if !initrd.is_empty() && !Path::new(initrd).is_file() {
                e.initrd = Some(format!("{initrd} does not exist or is not a file."));
            }
        }
    }
    if state.vcpus == 0 {
        e.vcpus = Some("A machine needs at least one virtual CPU.".into());
    } else if state.vcpus > host.cpus {
        e.vcpus = Some(format!("This computer has {} CPUs.", host.cpus));
    }
    if state.memory_mib < MIN_MEMORY_MIB {
        e.memory = Some(format!("At least {MIN_MEMORY_MIB} MiB."));
    } else if host.memory_mib > 0 && u64::from(state.memory_mib) > host.memory_mib {
        e.memory = Some(format!("This computer has only {} MiB.", host.memory_mib));
    } else if host.memory_mib > 0 && u64::from(state.memory_mib) > host.memory_mib * 3 / 4 {
        // Allowed, but the user should know the host will be squeezed.
    }
    if state.cmdline.len() >= MAX_CMDLINE_LEN {
        e.cmdline = Some(format!("At most {} characters.", MAX_CMDLINE_LEN - 1));
    }
    e
}

/// The machine the wizard describes (call only when valid).
pub fn config_of(state: &WizardState, kit: Option<&DefaultKit>) -> Option<VmConfig> {
    let (kernel, initrd) = match state.source {
        OsSource::DefaultLinux => {
            let kit = kit?;
            (kit.kernel.clone(), Some(kit.initrd.clone()))
        }
        OsSource::KernelFiles => {
            let initrd = state.initrd.trim();
            (
                PathBuf::from(state.kernel.trim()),
                (!initrd.is_empty()).then(|| PathBuf::from(initrd)),
            )
        }
    };
    Some(VmConfig {
        name: state.name.trim().to_string(),
        vcpus: state.vcpus,
        memory_mib: state.memory_mib,
        kernel,
        initrd,
        cmdline: state.cmdline.trim().to_string(),
        // Linux guests get a screen; Hangar's bare test programs do not use one.
        display: DisplayConfig::default_screen(),
        disks: Vec::new(),
        network: None,
    })
}

/// Memory choices offered by the slider's quick buttons.
const MEMORY_STEPS: [u32; 8] = [64, 128, 256, 512, 1024, 2048, 4096, 8192];

fn field_error(ui: &mut egui::Ui, error: &Option<String>) {
    if let Some(msg) = error {
        ui.colored_label(ui.visuals().error_fg_color, msg);
    }
}

fn start_file_picker(state: &mut WizardState, target: PickTarget, ctx: &egui::Context) {
    let (tx, rx) = std::sync::mpsc::channel();
    let ctx = ctx.clone();
    let spawned = std::thread::Builder::new()
        .name("file-dialog".into())
        .spawn(move || {
            let title = match target {
                PickTarget::Kernel => "Choose a kernel",
                PickTarget::Initrd => "Choose an initramfs",
            };
            let picked = rfd::FileDialog::new().set_title(title).pick_file();
            let _ = tx.send(picked);
            ctx.request_repaint();
        });
    match spawned {
        Ok(_) => state.picker = Some((target, rx)),
        Err(e) => log::warn!("cannot open a file dialog: {e}"),
    }
}

fn poll_file_picker(state: &mut WizardState) {
    let Some((target, rx)) = &state.picker else {
        return;
    };
    match rx.try_recv() {
        Ok(picked) => {
            if let Some(path) = picked {
                let path = path.display().to_string();
                match target {
                    PickTarget::Kernel => state.kernel = path,
                    PickTarget::Initrd => state.initrd = path,
                }
            }
            state.picker = None;
        }
        Err(TryRecvError::Empty) => {}
        Err(TryRecvError::Disconnected) => state.picker = None,
    }
}

/// Draw the wizard window; closing it sets `state` to None.
pub fn wizard_ui(
    ctx: &egui::Context,
    state: &mut Option<WizardState>,
    world: &WizardContext<'_>,
    commands: &mut CommandQueue,
) {
    let Some(s) = state.as_mut() else {
        return;
    };
    poll_file_picker(s);
    let host = s.host;
    let errors = validate(s, world, host);
    let mut open = true;
    let mut close = false;
    egui::Window::new("New virtual machine")
        .open(&mut open)
        .collapsible(false)
        .resizable(false)
        .default_width(460.0)
        .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
        .show(ctx, |ui| {
            let steps = ["1 Source", "2 Resources", "3 Summary"];
            ui.horizontal(|ui| {
                for (i, label) in steps.iter().enumerate() {
                    let current = i == s.page as usize;
                    let text = egui::RichText::new(*label);
                    ui.label(if current { text.strong() } else { text.weak() });
                }
            });
            ui.separator();
            match s.page {
                Page::Source => source_page_ui(ui, s, world, &errors),
                Page::Resources => resources_page_ui(ui, s, world, &errors, host),
                Page::Summary => summary_page_ui(ui, s, world, &errors),
            }
            ui.separator();
            ui.horizontal(|ui| {
                if s.page != Page::Source && ui.button("Back").clicked() {
                    s.page = match s.page {
                        Page::Summary => Page::Resources,
                        _ => Page::Source,
                    };
                }
                if ui.button("Cancel").clicked() {
                    close = true;
                }
                ui.with_layout(
                    egui::Layout::right_to_left(egui::Align::Center),
                    |ui| match s.page {
                        Page::Source => {
                            if ui
                                .add_enabled(errors.source_page_ok(), egui::Button::new("Next"))
                                .clicked()
                            {
                                s.page = Page::Resources;
                            }
                        }
                        Page::Resources => {
                            if ui
                                .add_enabled(errors.resources_page_ok(), egui::Button::new("Next"))
                                .clicked()
                            {
                                s.page = Page::Summary;
                            }
                        }
                        Page::Summary => {
                            let valid = errors.all_ok();
                            let config = if valid { config_of(s, world.kit) } else { None };
                            if ui
                                .add_enabled(
                                    config.is_some(),
                                    egui::Button::new("Create and start"),
                                )
                                .clicked()
                            {
                                if let Some(config) = config.clone() {
                                    commands.push(UiCommand::Create {
                                        config,
                                        start: true,
                                    });
                                    close = true;
                                }
                            }
                            if ui
                                .add_enabled(config.is_some(), egui::Button::new("Create"))
                                .clicked()
                            {
                                if let Some(config) = config {
                                    commands.push(UiCommand::Create {
                                        config,
                                        start: false,
                                    });
                                    close = true;
                                }
                            }
                        }
                    },
                );
            });
        });
    if !open || close {
        *state = None;
    }
}

fn source_page_ui(
    ui: &mut egui::Ui,
    s: &mut WizardState,
    world: &WizardContext<'_>,
    errors: &WizardErrors,
) {
    let label = ui.label("Name");
    ui.add(
        egui::TextEdit::singleline(&mut s.name)
            .hint_text("e.g. Debian test box")
            .desired_width(f32::INFINITY),
    )
    .labelled_by(label.id);
    field_error(ui, &errors.name);
    ui.add_space(8.0);
    ui.label("Operating system");
    let before = s.source;
    let kit_text = match world.kit {
        Some(kit) => format!("Default Linux (Debian kernel {})", kit.version),
        None => "Default Linux (not installed)".to_string(),
    };
    ui.radio_value(&mut s.source, OsSource::DefaultLinux, kit_text);
    ui.radio_value(
        &mut s.source,
        OsSource::KernelFiles,
        "Linux kernel + initramfs",
    );
    if s.source != before && !s.cmdline_edited {
        s.cmdline = match s.source {
            OsSource::DefaultLinux => DEFAULT_CMDLINE.to_string(),
            OsSource::KernelFiles => CUSTOM_CMDLINE.to_string(),
        };
    }
    if s.source == OsSource::KernelFiles {
        let picking = s.picker.is_some();
        let label = ui.label("Kernel");
        ui.horizontal(|ui| {
            ui.add(
                egui::TextEdit::singleline(&mut s.kernel)
                    .hint_text("/path/to/vmlinuz")
                    .desired_width(330.0),
            )
            .labelled_by(label.id);
            if ui
                .add_enabled(!picking, egui::Button::new("Browse…"))
                .clicked()
            {
                start_file_picker(s, PickTarget::Kernel, ui.ctx());
            }
        });
        field_error(ui, &errors.kernel);
        let label = ui.label("Initramfs (optional)");
        ui.horizontal(|ui| {
            ui.add(
                egui::TextEdit::singleline(&mut s.initrd)
                    .hint_text("/path/to/initrd.img")
                    .desired_width(330.0),
            )
            .labelled_by(label.id);
            if ui
                .add_enabled(!picking, egui::Button::new("Browse… "))
                .clicked()
            {
                start_file_picker(s, PickTarget::Initrd, ui.ctx());
            }
        });
        field_error(ui, &errors.initrd);
    } else {
        field_error(ui, &errors.kernel);
    }
    if let Some(why) = linux_on_this_host(s, world) {
        ui.add_space(4.0);
        ui.colored_label(ui.visuals().warn_fg_color, why);
    }
}

/// A warning (not an error: the definition is still useful elsewhere) when
/// this host cannot start the Linux kernel chosen.
fn linux_on_this_host(s: &WizardState, world: &WizardContext<'_>) -> Option<String> {
    let is_linux = match s.source {
        OsSource::DefaultLinux => true,
        OsSource::KernelFiles => {
            detect_kernel_kind(Path::new(s.kernel.trim())).is_ok_and(KernelKind::is_linux)
        }
    };
    if is_linux {
        world
            .host
            .linux_refusal()
            .map(|why| format!("You can create this machine, but it will not start here: {why}"))
    } else {
        None
    }
}

fn resources_page_ui(
    ui: &mut egui::Ui,
    s: &mut WizardState,
    _world: &WizardContext<'_>,
    errors: &WizardErrors,
    host: HostResources,
) {
    let label = ui.label("Virtual CPUs");
    ui.add(egui::Slider::new(&mut s.vcpus, 1..=host.cpus.max(1)).suffix(" vCPU"))
        .labelled_by(label.id);
    field_error(ui, &errors.vcpus);
    ui.add_space(8.0);
    let label = ui.label("Memory");
    // The slider spans what this host has (or the usual sizes when that is
    // unknown); a number typed next to it is kept as typed, so that a wrong
    // one is explained below instead of silently changed.
    let max = match host.memory_mib {
        0 => MEMORY_STEPS[MEMORY_STEPS.len() - 1],
        mib => u32::try_from(mib).unwrap_or(u32::MAX),
    }
    .max(MIN_MEMORY_MIB);
    ui.add(
        egui::Slider::new(&mut s.memory_mib, MIN_MEMORY_MIB..=max)
            .logarithmic(true)
            .clamping(egui::SliderClamping::Never)
            .suffix(" MiB"),
    )
    .labelled_by(label.id);
    field_error(ui, &errors.memory);
    ui.horizontal_wrapped(|ui| {
        for step in MEMORY_STEPS
            .iter()
            .copied()
            .filter(|m| u64::from(*m) <= host.memory_mib || host.memory_mib == 0)
        {
            let label = if step >= 1024 {
                format!("{} GiB", step / 1024)
            } else {
                format!("{step} MiB")
            };
            if ui.selectable_label(s.memory_mib == step, label).clicked() {
                s.memory_mib = step;
            }
        }
    });
    ui.add_space(8.0);
    egui::CollapsingHeader::new("Advanced")
        .default_open(false)
        .show(ui, |ui| {
            let label = ui.label("Kernel command line");
            if ui
                .add(egui::TextEdit::singleline(&mut s.cmdline).desired_width(f32::INFINITY))
                .labelled_by(label.id)
                .changed()
            {
                s.cmdline_edited = true;
            }
            field_error(ui, &errors.cmdline);
        });
}

/// A summary row, with the field's problem under it: files can vanish and
/// names be taken while the wizard is open.
fn summary_row(ui: &mut egui::Ui, name: &str, value: egui::WidgetText, error: &Option<String>) {
    ui.label(name);
    ui.label(value);
    ui.end_row();
    if let Some(msg) = error {
        ui.label("");
        ui.colored_label(ui.visuals().error_fg_color, msg);
        ui.end_row();
    }
}

fn summary_page_ui(
    ui: &mut egui::Ui,
    s: &WizardState,
    world: &WizardContext<'_>,
    errors: &WizardErrors,
) {
    let Some(c) = config_of(s, world.kit) else {
        ui.colored_label(
            ui.visuals().error_fg_color,
            "The default guest kit is not installed.",
        );
        return;
    };
    egui::Grid::new("wizard_summary")
        .num_columns(2)
        .show(ui, |ui| {
            summary_row(
                ui,
                "Name",
                egui::RichText::new(&c.name).strong().into(),
                &errors.name,
            );
            summary_row(
                ui,
                "Kernel",
                c.kernel.display().to_string().into(),
                &errors.kernel,
            );
            let initrd = c
                .initrd
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".into());
            summary_row(ui, "Initramfs", initrd.into(), &errors.initrd);
            summary_row(
                ui,
                "Virtual CPUs",
                c.vcpus.to_string().into(),
                &errors.vcpus,
            );
            summary_row(
                ui,
                "Memory",
                format!("{} MiB", c.memory_mib).into(),
                &errors.memory,
            );
            summary_row(
                ui,
                "Command line",
                c.cmdline.clone().into(),
                &errors.cmdline,
            );
        });
    if let Some(why) = linux_on_this_host(s, world) {
        ui.colored_label(ui.visuals().warn_fg_color, why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostResources {
        HostResources {
            cpus: 4,
            memory_mib: 4096,
        }
    }

    fn world<'a>(machines: &'a Machines, cap: &'a HostCapability) -> WizardContext<'a> {
        WizardContext {
            machines,
            kit: None,
            host: cap,
        }
    }

    #[test]
    fn test_empty_name_and_missing_kernel_are_explained() {
        let machines = Machines::default();
        let cap = HostCapability::NoKvm {
            reason: "test".into(),
        };
        let s = WizardState::new(None);
        assert_eq!(s.source, OsSource::KernelFiles);
        let e = validate(&s, &world(&machines, &cap), host());
        assert!(e.name.is_some());
        assert!(e.kernel.is_some());
        assert!(!e.all_ok());
    }

    #[test]
    fn test_absurd_resources_are_rejected() {
        let machines = Machines::default();
        let cap = HostCapability::NoKvm {
            reason: "test".into(),
        };
        let mut s = WizardState::new(None);
        s.memory_mib = 1 << 30;
        s.vcpus = 200;
        s.cmdline = "x".repeat(MAX_CMDLINE_LEN);
        let e = validate(&s, &world(&machines, &cap), host());
        assert!(
            e.memory.as_deref().is_some_and(|m| m.contains("4096")),
            "{e:?}"
        );
        assert!(e.vcpus.is_some());
        assert!(e.cmdline.is_some());
        s.memory_mib = 1;
        assert!(validate(&s, &world(&machines, &cap), host())
            .memory
            .is_some());
    }

    #[test]
    fn test_default_source_without_kit_is_an_error() {
        let machines = Machines::default();
        let cap = HostCapability::NoKvm {
            reason: "test".into(),
        };
        let mut s = WizardState::new(None);
        s.source = OsSource::DefaultLinux;
        s.name = "x".into();
        let e = validate(&s, &world(&machines, &cap), host());
        assert!(e.kernel.as_deref().is_some_and(|m| m.contains("setup.sh")));
        assert!(config_of(&s, None).is_none());
    }
}
