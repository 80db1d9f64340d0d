//! The New virtual machine wizard: name and OS source, resources (with
//! disk size and network), summary. Every invalid choice is explained next
//! to its field, and Next/Create stay disabled until the page is valid.
//!
//! A template source (Debian 12) does not make the machine here: Create
//! queues [`UiCommand::CreateFromTemplate`], and the app copies the disk on
//! a worker thread before it saves the machine (template_clone.rs).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};

use hangar_engine::config::{detect_kernel_kind, DisplayConfig, MAX_CMDLINE_LEN, MIN_MEMORY_MIB};
use hangar_engine::disks::{self, MAX_DISK_SIZE};
use hangar_engine::kit::DEFAULT_CMDLINE;
use hangar_engine::{
    templates, BootSource, DefaultKit, DiskConfig, DiskInfo, HostCapability, KernelBoot,
    KernelKind, Template, TemplateStatus, VmConfig,
};

use crate::gui::command::{CommandQueue, UiCommand};
use crate::gui::vm::machine::Machines;
use crate::gui::vm::machine_disks::{format_size, GIB};
use crate::gui::vm::template_clone::TemplateMachine;
use crate::gui::widgets::port_forwards::{network_form_ui, network_text, NetworkForm};

/// Command line offered for a kernel the user picks.
pub const CUSTOM_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// What the kit's command line gets for an existing disk image: its first
/// disk is the root file system, as for templates.
pub const DISK_ROOT_ARGS: &str = "root=/dev/vda rw";

/// Disk size a machine made from a template gets unless the user says
/// otherwise (more if the template itself is bigger).
pub const DEFAULT_DISK_GIB: u32 = 8;

/// Where the guest comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OsSource {
    /// A template's system disk, copied for the machine (`template_id`).
    Template,
    /// The kit built by packaging/setup.sh.
    DefaultLinux,
    /// A kernel (and optional initramfs) the user picks.
    KernelFiles,
    /// A raw or qcow2 image that exists, used in place and booted with
    /// the kit's kernel.
    DiskImage,
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
    DiskImage,
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
    /// Every template Hangar knows, ready or not (read when the wizard opens).
    pub templates: Vec<TemplateStatus>,
    /// The template chosen when `source` is [`OsSource::Template`].
    pub template_id: String,
    /// Existing disk image path, as typed or picked.
    pub disk_image: String,
    /// What [`disks::inspect`] said about `disk_image`, for the path it
    /// was read for: read again only when the path changes.
    disk_image_info: Option<(String, Result<DiskInfo, String>)>,
    /// Size of a template machine's disk, in GiB.
    pub disk_size_gib: u32,
    /// Network on/off and port forwards.
    pub network: NetworkForm,
    /// Whether the user touched the network (then a source change keeps it).
    network_edited: bool,
    /// A file dialog running on its own thread, so the window stays live.
    picker: Option<(PickTarget, Receiver<Option<PathBuf>>)>,
    /// Host CPUs and RAM, read once when the wizard opens rather than from
    /// /proc on every frame it is shown.
    host: HostResources,
}

impl WizardState {
    /// A fresh wizard: a ready template when there is one (and the kit that
    /// boots it), else the default kit when it exists, else a kernel file.
    pub fn new(kit: Option<&DefaultKit>, templates: Vec<TemplateStatus>) -> Self {
        let ready = templates.iter().find_map(|t| match t {
            TemplateStatus::Ready(t) => Some(t.clone()),
            TemplateStatus::Missing { .. } => None,
        });
        let source = match (kit, &ready) {
            (Some(_), Some(_)) => OsSource::Template,
            (Some(_), None) => OsSource::DefaultLinux,
            (None, _) => OsSource::KernelFiles,
        };
        let template_id = match (&ready, templates.first()) {
            (Some(t), _) => t.id.clone(),
            (None, Some(TemplateStatus::Missing { id, .. })) => id.clone(),
            _ => templates::DEBIAN_12.to_string(),
        };
        let disk_size_gib = ready
            .as_ref()
            .map_or(DEFAULT_DISK_GIB, |t| DEFAULT_DISK_GIB.max(min_disk_gib(t)));
        let mut s = Self {
            page: Page::Source,
            name: String::new(),
            source,
            kernel: String::new(),
            initrd: String::new(),
            vcpus: 1,
            memory_mib: hangar_engine::kit::DEFAULT_MEMORY_MIB,
            cmdline: String::new(),
            cmdline_edited: false,
            templates,
            template_id,
            disk_image: String::new(),
            disk_image_info: None,
            disk_size_gib,
            network: NetworkForm::default(),
            network_edited: false,
            picker: None,
            host: HostResources::probe(),
        };
        s.source_changed(kit);
        s
    }

    /// The chosen template, if it is ready.
    pub fn template(&self) -> Option<&Template> {
        self.templates.iter().find_map(|t| match t {
            TemplateStatus::Ready(t) if t.id == self.template_id => Some(t),
            _ => None,
        })
    }

    /// Choose `source`; the command line and network follow unless edited.
    pub fn set_source(&mut self, source: OsSource, kit: Option<&DefaultKit>) {
        if self.source != source {
            self.source = source;
            self.source_changed(kit);
        }
    }

    /// What a source brings along: its command line, and the network on
    /// for a template (a full system that expects one).
    fn source_changed(&mut self, kit: Option<&DefaultKit>) {
        if !self.cmdline_edited {
            self.cmdline = match self.source {
                OsSource::Template => match (self.template(), kit) {
                    (Some(t), Some(kit)) => {
                        let c = templates::vm_config(
                            t,
                            kit,
                            "",
                            1,
                            MIN_MEMORY_MIB,
                            PathBuf::new(),
                            None,
                        );
                        let BootSource::Kernel(boot) = c.boot;
                        boot.cmdline
                    }
                    _ => format!("{DEFAULT_CMDLINE} {DISK_ROOT_ARGS}"),
                },
                OsSource::DefaultLinux => DEFAULT_CMDLINE.to_string(),
                OsSource::KernelFiles => CUSTOM_CMDLINE.to_string(),
                OsSource::DiskImage => format!("{DEFAULT_CMDLINE} {DISK_ROOT_ARGS}"),
            };
        }
        if !self.network_edited {
            self.network.enabled = self.source == OsSource::Template;
        }
    }

    /// What [`disks::inspect`] says about the disk image path: the cached
    /// answer when it is for this path, else read now.
    pub fn disk_image_info(&self) -> Result<DiskInfo, String> {
        let path = self.disk_image.trim();
        match &self.disk_image_info {
            Some((read_for, info)) if read_for == path => info.clone(),
            _ => inspect_image(path),
        }
    }

    /// Read the disk image again if its path changed since the last read,
    /// so that a frame does not read the file.
    fn refresh_disk_image_info(&mut self) {
        if self.source != OsSource::DiskImage {
            return;
        }
        let path = self.disk_image.trim();
        if self
            .disk_image_info
            .as_ref()
            .is_none_or(|(read_for, _)| read_for != path)
        {
            self.disk_image_info = Some((path.to_string(), inspect_image(path)));
        }
    }
}

/// The smallest disk, in whole GiB, that holds `template`.
fn min_disk_gib(template: &Template) -> u32 {
    u32::try_from(template.virtual_size.div_ceil(GIB)).unwrap_or(u32::MAX)
}

/// Inspect an image a user named, in words on failure.
fn inspect_image(path: &str) -> Result<DiskInfo, String> {
    if path.is_empty() {
        return Err("Choose a disk image (raw or qcow2).".into());
    }
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(format!("The path \"{}\" must be absolute.", path.display()));
    }
    disks::inspect(path).map_err(|e| format!("{:#}", anyhow::Error::new(e)))
}

/// A disk image's format and sizes in a few words.
pub fn disk_info_text(info: &DiskInfo) -> String {
    let mut text = format!(
        "{} · {} · {} on this host",
        info.format,
        format_size(info.virtual_size),
        format_size(info.allocated)
    );
    if let Some(backing) = &info.backing_file {
        text.push_str(&format!(" · over {}", backing.display()));
    }
    text
}

/// What the wizard needs to know about the world.
pub struct WizardContext<'a> {
    /// Existing machines (for unique names).
    pub machines: &'a Machines,
    /// The default guest kit, if set up.
    pub kit: Option<&'a DefaultKit>,
    /// The host's capability.
    pub host: &'a HostCapability,
    /// Hangar's data directory (machines' disks live there), if known.
    pub data_dir: Option<&'a Path>,
    /// The machine whose disk is being copied now, if one is: one copy
    /// at a time.
    pub copying: Option<&'a str>,
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
    /// About the existing disk image.
    pub disk: Option<String>,
    /// About the template machine's disk size.
    pub disk_size: Option<String>,
    /// About the network and its port forwards.
    pub network: Option<String>,
    /// Why Create must wait, though every field is fine.
    pub create: Option<String>,
}

impl WizardErrors {
    fn source_page_ok(&self) -> bool {
        self.name.is_none() && self.kernel.is_none() && self.initrd.is_none() && self.disk.is_none()
    }

    fn resources_page_ok(&self) -> bool {
        self.vcpus.is_none()
            && self.memory.is_none()
            && self.cmdline.is_none()
            && self.disk_size.is_none()
            && self.network.is_none()
    }

    /// True when the machine can be created.
    pub fn all_ok(&self) -> bool {
        self.source_page_ok() && self.resources_page_ok() && self.create.is_none()
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
    const NO_KIT_FOR_DISK: &str = "It boots with the default guest kit's kernel, which is not installed: run packaging/setup.sh.";
    match state.source {
        OsSource::Template => match state
            .templates
            .iter()
            .find(|t| template_id(t) == state.template_id)
        {
            Some(TemplateStatus::Ready(_)) => {
                if world.kit.is_none() {
                    e.kernel = Some(NO_KIT_FOR_DISK.into());
                } else if world.data_dir.is_none() {
                    e.kernel = Some(
                        "Hangar has no data folder to keep the machine's disk in (is HOME set?)."
                            .into(),
                    );
                }
            }
            Some(TemplateStatus::Missing { title, reason, .. }) => {
                e.kernel = Some(format!("{title} is not available: {reason}."));
            }
            None => e.kernel = Some("Choose an operating system.".into()),
        },
        OsSource::DiskImage => {
            if let Err(why) = state.disk_image_info() {
                e.disk = Some(why);
            }
            if world.kit.is_none() {
                e.kernel = Some(NO_KIT_FOR_DISK.into());
            }
        }
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
    if state.source == OsSource::Template {
        e.disk_size = disk_size_error(state);
    }
    if let Err(why) = state.network.config() {
        e.network = Some(why);
    }
    if let (OsSource::Template, Some(name)) = (state.source, world.copying) {
        e.create = Some(format!(
            "The disk of \"{name}\" is being copied; create this machine when it is done."
        ));
    }
    e
}

fn template_id(t: &TemplateStatus) -> &str {
    match t {
        TemplateStatus::Ready(t) => &t.id,
        TemplateStatus::Missing { id, .. } => id,
    }
}

/// What is wrong with a template machine's disk size, if anything.
fn disk_size_error(state: &WizardState) -> Option<String> {
    let size = u64::from(state.disk_size_gib) * GIB;
    let max_gib = MAX_DISK_SIZE / GIB;
    if state.disk_size_gib == 0 {
        return Some("A disk needs at least 1 GiB.".into());
    }
    if size > MAX_DISK_SIZE {
        return Some(format!("At most {max_gib} GiB."));
    }
    let t = state.template()?;
    (size < t.virtual_size).then(|| {
        format!(
            "{} needs at least {} GiB: its system takes {}.",
            t.title,
            min_disk_gib(t),
            format_size(t.virtual_size)
        )
    })
}

/// The machine the wizard describes (call only when valid); None for a
/// template, whose machine the app makes once the disk is copied
/// ([`template_request_of`]).
pub fn config_of(state: &WizardState, kit: Option<&DefaultKit>) -> Option<VmConfig> {
    let mut disks = Vec::new();
    let (kernel, initrd) = match state.source {
        OsSource::Template => return None,
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
        OsSource::DiskImage => {
            let kit = kit?;
            let info = state.disk_image_info().ok()?;
            disks.push(DiskConfig {
                path: PathBuf::from(state.disk_image.trim()),
                format: info.format,
                read_only: false,
            });
            (kit.kernel.clone(), Some(kit.initrd.clone()))
        }
    };
    Some(VmConfig {
        name: state.name.trim().to_string(),
        vcpus: state.vcpus,
        memory_mib: state.memory_mib,
        boot: BootSource::Kernel(KernelBoot {
            kernel,
            initrd,
            cmdline: state.cmdline.trim().to_string(),
        }),
        // Linux guests get a screen; Hangar's bare test programs do not use one.
        display: DisplayConfig::default_screen(),
        disks,
        network: state.network.config().ok()?,
    })
}

/// The template machine the wizard describes (call only when valid), or
/// None for the other sources.
pub fn template_request_of(state: &WizardState, start: bool) -> Option<TemplateMachine> {
    if state.source != OsSource::Template {
        return None;
    }
    let template = state.template()?;
    Some(TemplateMachine {
        template: template.id.clone(),
        name: state.name.trim().to_string(),
        vcpus: state.vcpus,
        memory_mib: state.memory_mib,
        disk_size: u64::from(state.disk_size_gib) * GIB,
        network: state.network.config().ok()?,
        cmdline: state
            .cmdline_edited
            .then(|| state.cmdline.trim().to_string()),
        start,
    })
}

/// What Create queues for the wizard's machine, if it can be made.
fn create_command(state: &WizardState, kit: Option<&DefaultKit>, start: bool) -> Option<UiCommand> {
    match state.source {
        OsSource::Template => template_request_of(state, start).map(UiCommand::CreateFromTemplate),
        _ => config_of(state, kit).map(|config| UiCommand::Create { config, start }),
    }
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
                PickTarget::DiskImage => "Choose a disk image (raw or qcow2)",
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
                    PickTarget::DiskImage => state.disk_image = path,
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
    s.refresh_disk_image_info();
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
                            let create = |start| {
                                if valid {
                                    create_command(s, world.kit, start)
                                } else {
                                    None
                                }
                            };
                            let (with_start, without) = (create(true), create(false));
                            let why_not = errors.create.as_deref();
                            let button = ui.add_enabled(
                                with_start.is_some(),
                                egui::Button::new("Create and start"),
                            );
                            let button = match why_not {
                                Some(why) => button.on_disabled_hover_text(why),
                                None => button,
                            };
                            if button.clicked() {
                                if let Some(command) = with_start {
                                    commands.push(command);
                                    close = true;
                                }
                            }
                            let button =
                                ui.add_enabled(without.is_some(), egui::Button::new("Create"));
                            let button = match why_not {
                                Some(why) => button.on_disabled_hover_text(why),
                                None => button,
                            };
                            if button.clicked() {
                                if let Some(command) = without {
                                    commands.push(command);
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
    let mut chosen = s.source;
    let mut chosen_template = None;
    for t in &s.templates {
        let (id, title, missing) = match t {
            TemplateStatus::Ready(t) => (&t.id, &t.title, None),
            TemplateStatus::Missing {
                id, title, reason, ..
            } => (id, title, Some(reason)),
        };
        let checked = s.source == OsSource::Template && s.template_id == *id;
        let radio = ui.add_enabled(missing.is_none(), egui::RadioButton::new(checked, title));
        if let Some(reason) = missing {
            let why = format!("{title} is not built yet: {reason}.");
            ui.ctx()
                .accesskit_node_builder(radio.id, |node| node.set_description(why.as_str()));
            radio.on_disabled_hover_text(&why);
            ui.indent(("template_missing", id), |ui| ui.weak(why));
        } else if radio.clicked() {
            chosen = OsSource::Template;
            chosen_template = Some(id.clone());
        }
    }
    let kit_text = match world.kit {
        Some(kit) => format!("Default Linux (Debian kernel {})", kit.version),
        None => "Default Linux (not installed)".to_string(),
    };
    ui.radio_value(&mut chosen, OsSource::DefaultLinux, kit_text);
    ui.radio_value(
        &mut chosen,
        OsSource::KernelFiles,
        "Linux kernel + initramfs",
    );
    ui.radio_value(&mut chosen, OsSource::DiskImage, "Existing disk image");
    let other_template = chosen_template
        .as_ref()
        .is_some_and(|id| *id != s.template_id);
    if let Some(id) = chosen_template {
        s.template_id = id;
    }
    if other_template && s.source == OsSource::Template {
        // Another template brings its own command line.
        s.source_changed(world.kit);
    }
    s.set_source(chosen, world.kit);
    if s.source == OsSource::Template {
        if let Some(t) = s.template() {
            ui.weak(format!(
                "The machine gets its own copy of the {} disk ({}), kept in Hangar's data folder.",
                t.title,
                format_size(t.virtual_size)
            ));
        }
        field_error(ui, &errors.kernel);
    } else if s.source == OsSource::DiskImage {
        disk_image_ui(ui, s, errors);
    } else if s.source == OsSource::KernelFiles {
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

/// The existing disk image's path, Browse…, and what the file is (or why
/// it cannot be used).
fn disk_image_ui(ui: &mut egui::Ui, s: &mut WizardState, errors: &WizardErrors) {
    let picking = s.picker.is_some();
    let label = ui.label("Disk image");
    ui.horizontal(|ui| {
        ui.add(
            egui::TextEdit::singleline(&mut s.disk_image)
                .hint_text("/path/to/disk.qcow2")
                .desired_width(330.0),
        )
        .labelled_by(label.id);
        if ui
            .add_enabled(!picking, egui::Button::new("Browse…"))
            .clicked()
        {
            start_file_picker(s, PickTarget::DiskImage, ui.ctx());
        }
    });
    match (&errors.disk, s.disk_image_info()) {
        (Some(_), _) => field_error(ui, &errors.disk),
        (None, Ok(info)) => {
            ui.label(disk_info_text(&info));
        }
        (None, Err(_)) => {}
    }
    ui.weak(format!(
        "Used where it is (not copied) as the first disk; it boots with the default kit's \
         kernel and \"{DISK_ROOT_ARGS}\" (change that under Resources → Advanced)."
    ));
    field_error(ui, &errors.kernel);
}

/// A warning (not an error: the definition is still useful elsewhere) when
/// this host cannot start the Linux kernel chosen.
fn linux_on_this_host(s: &WizardState, world: &WizardContext<'_>) -> Option<String> {
    let is_linux = match s.source {
        OsSource::DefaultLinux | OsSource::Template | OsSource::DiskImage => true,
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
    if s.source == OsSource::Template {
        ui.add_space(8.0);
        let label = ui.label("Disk size");
        ui.add(egui::DragValue::new(&mut s.disk_size_gib).suffix(" GiB"))
            .labelled_by(label.id);
        field_error(ui, &errors.disk_size);
    }
    ui.add_space(8.0);
    if network_form_ui(ui, &mut s.network) {
        s.network_edited = true;
    }
    field_error(ui, &errors.network);
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
    let config = match (s.source, s.template(), world.kit) {
        (OsSource::Template, Some(t), Some(kit)) => Some(templates::vm_config(
            t,
            kit,
            s.name.trim(),
            s.vcpus,
            s.memory_mib,
            PathBuf::new(),
            s.network.config().ok().flatten(),
        )),
        (OsSource::Template, _, _) => None,
        _ => config_of(s, world.kit),
    };
    let Some(mut c) = config else {
        // Only a missing kit, template or image gets here; its field says which.
        let why = [&errors.kernel, &errors.disk]
            .into_iter()
            .find_map(Option::as_deref)
            .unwrap_or("The default guest kit is not installed.");
        ui.colored_label(ui.visuals().error_fg_color, why);
        return;
    };
    if s.source == OsSource::Template {
        let BootSource::Kernel(boot) = &mut c.boot;
        boot.cmdline = s.cmdline.trim().to_string();
    }
    let BootSource::Kernel(boot) = &c.boot;
    let disk = match (s.source, s.template()) {
        (OsSource::Template, Some(t)) => format!(
            "{} GiB, raw: a copy of the {} disk in Hangar's data folder",
            s.disk_size_gib, t.title
        ),
        _ => match c.disks.first() {
            Some(d) => format!("{} ({}, used in place)", d.path.display(), d.format),
            None => "none".into(),
        },
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
            let disk_error = errors.disk.clone().or(errors.disk_size.clone());
            summary_row(ui, "Disk", disk.into(), &disk_error);
            summary_row(
                ui,
                "Network",
                network_text(c.network.as_ref()).into(),
                &errors.network,
            );
            summary_row(
                ui,
                "Kernel",
                boot.kernel.display().to_string().into(),
                &errors.kernel,
            );
            let initrd = boot
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
                boot.cmdline.clone().into(),
                &errors.cmdline,
            );
        });
    if let Some(why) = linux_on_this_host(s, world) {
        ui.colored_label(ui.visuals().warn_fg_color, why);
    }
    field_error(ui, &errors.create);
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
            data_dir: None,
            copying: None,
        }
    }

    #[test]
    fn test_empty_name_and_missing_kernel_are_explained() {
        let machines = Machines::default();
        let cap = HostCapability::NoKvm {
            reason: "test".into(),
        };
        let s = WizardState::new(None, Vec::new());
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
        let mut s = WizardState::new(None, Vec::new());
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
        let mut s = WizardState::new(None, Vec::new());
        s.source = OsSource::DefaultLinux;
        s.name = "x".into();
        let e = validate(&s, &world(&machines, &cap), host());
        assert!(e.kernel.as_deref().is_some_and(|m| m.contains("setup.sh")));
        assert!(config_of(&s, None).is_none());
    }
}
