//! A machine's configuration and live figures: its disks (sizes on the
//! host, throughput while it runs; Add disk…, Grow…, Detach while it is
//! stopped), its network (forwards, throughput; editable while stopped),
//! then CPU and memory plots.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use egui_plot::{Legend, Line, Plot, PlotPoints};
use hangar_engine::config::MAX_DISKS;
use hangar_engine::disks::MAX_DISK_SIZE;
use hangar_engine::{BootSource, DiskConfig, DiskFormat, DiskInfo};

use crate::gui::command::{CommandQueue, DiskRequest, UiCommand};
use crate::gui::vm::machine::{Machine, StatsSample};
use crate::gui::vm::machine_disks::{
    disk_sizes, format_rate, format_size, machine_dir, DiskInfoCache, FilePicker, GIB,
};
use crate::gui::vm::wizard::disk_info_text;
use crate::gui::widgets::port_forwards::{forward_text, network_form_ui, NetworkForm};

/// Why the disk buttons are disabled while the machine runs.
pub const STOP_FOR_DISKS: &str = "Stop the machine to change its disks";
/// Why the network button is disabled while the machine runs.
pub const STOP_FOR_NETWORK: &str = "Stop the machine to change its network";

/// The tab's own state, never saved: disk figures (read every few seconds)
/// and the one form open, if any.
#[derive(Default)]
pub struct OverviewState {
    /// Sizes of the disks on the host.
    pub disk_info: DiskInfoCache,
    /// The form open below the disks or the network.
    pub form: Option<OverviewForm>,
}

/// A form of the Overview tab.
pub enum OverviewForm {
    /// Add a disk.
    AddDisk(AddDiskForm),
    /// Grow a disk.
    Grow(GrowForm),
    /// Network on/off and port forwards.
    Network(NetworkForm),
}

/// The Add disk form's fields.
pub struct AddDiskForm {
    /// Attach an existing image (else make a new one).
    pub existing: bool,
    /// A new disk's size in GiB.
    pub size_gib: u32,
    /// A new disk's format.
    pub format: DiskFormat,
    /// An existing image's path.
    pub path: String,
    /// The guest may not write the existing image.
    pub read_only: bool,
    /// What inspect said, for the path it was read for.
    info: Option<(String, Result<DiskInfo, String>)>,
    picker: FilePicker,
}

impl Default for AddDiskForm {
    fn default() -> Self {
        Self {
            existing: false,
            size_gib: 8,
            format: DiskFormat::Raw,
            path: String::new(),
            read_only: false,
            info: None,
            picker: FilePicker::default(),
        }
    }
}

impl AddDiskForm {
    /// The disk the fields describe, or what is wrong with them.
    fn request(
        &self,
        attached: &[DiskConfig],
        can_create: Result<(), &str>,
    ) -> Result<DiskRequest, String> {
        if attached.len() >= MAX_DISKS {
            return Err(format!("A machine can have at most {MAX_DISKS} disks."));
        }
        if !self.existing {
            can_create.map_err(str::to_string)?;
            let size = u64::from(self.size_gib) * GIB;
            if self.size_gib == 0 {
                return Err("A disk needs at least 1 GiB.".into());
            }
            if size > MAX_DISK_SIZE {
                return Err(format!("At most {} GiB.", MAX_DISK_SIZE / GIB));
            }
            return Ok(DiskRequest::New {
                format: self.format,
                size,
            });
        }
        let path = self.path.trim();
        let info = match &self.info {
            Some((read_for, info)) if read_for == path => info.clone()?,
            _ => return Err("Choose a disk image.".into()),
        };
        let path = PathBuf::from(path);
        if attached.iter().any(|d| d.path == path) {
            return Err(format!("{} is attached already.", path.display()));
        }
        Ok(DiskRequest::Existing {
            path,
            format: info.format,
            read_only: self.read_only,
        })
    }

    /// Inspect the image again when its path changed.
    fn refresh(&mut self) {
        if let Some(picked) = self.picker.poll() {
            self.path = picked.display().to_string();
        }
        let path = self.path.trim();
        if !self.existing || self.info.as_ref().is_some_and(|(p, _)| p == path) {
            return;
        }
        let info = if path.is_empty() {
            Err("Choose a disk image (raw or qcow2).".to_string())
        } else if !Path::new(path).is_absolute() {
            Err(format!("The path \"{path}\" must be absolute."))
        } else {
            hangar_engine::disks::inspect(Path::new(path))
                .map_err(|e| format!("{:#}", anyhow::Error::new(e)))
        };
        self.info = Some((path.to_string(), info));
    }
}

/// The Grow form's fields.
pub struct GrowForm {
    /// The disk.
    pub path: PathBuf,
    /// Its size when the form opened.
    pub current: u64,
    /// The new size in GiB.
    pub size_gib: u32,
}

impl GrowForm {
    fn new_size(&self) -> Result<u64, String> {
        let size = u64::from(self.size_gib) * GIB;
        if size <= self.current {
            return Err(format!(
                "The new size must be more than the disk's {}: disks only grow.",
                format_size(self.current)
            ));
        }
        if size > MAX_DISK_SIZE {
            return Err(format!("At most {} GiB.", MAX_DISK_SIZE / GIB));
        }
        Ok(size)
    }
}

/// The guest's name of disk `index` (`vda`, `vdb`…).
pub fn guest_disk_name(index: usize) -> String {
    let letter = u8::try_from(index % 26).map_or('?', |i| char::from(b'a' + i));
    format!("vd{letter}")
}

/// Bytes a second a device read and wrote between the last two samples.
fn device_rates(samples: &VecDeque<StatsSample>, device: &str) -> Option<(f64, f64)> {
    let n = samples.len();
    let (a, b) = (samples.get(n.checked_sub(2)?)?, samples.get(n - 1)?);
    let dt = b.t - a.t;
    let counters = |s: &StatsSample| {
        s.stats
            .devices
            .iter()
            .find(|d| d.name == device)
            .map(|d| d.counters)
    };
    let (ca, cb) = (counters(a)?, counters(b)?);
    (dt > 0.0).then(|| {
        (
            cb.read_bytes.saturating_sub(ca.read_bytes) as f64 / dt,
            cb.written_bytes.saturating_sub(ca.written_bytes) as f64 / dt,
        )
    })
}

/// A button that is disabled, with `why` on hover and for screen readers,
/// when `blocked`.
fn guarded_button(ui: &mut egui::Ui, text: &str, name: &str, why: Option<&str>) -> bool {
    let response = ui
        .add_enabled(why.is_none(), egui::Button::new(text))
        .accessible_name(name);
    match why {
        Some(why) => {
            ui.ctx()
                .accesskit_node_builder(response.id, |node| node.set_description(why));
            response.on_disabled_hover_text(why).clicked()
        }
        None => response.clicked(),
    }
}

/// The Disks section.
fn disks_ui(
    ui: &mut egui::Ui,
    machine: &mut Machine,
    data_dir: Option<&Path>,
    commands: &mut CommandQueue,
) {
    let id = machine.def.id.clone();
    let running = machine.status.is_active();
    let blocked = running.then_some(STOP_FOR_DISKS);
    let disks = machine.def.config.disks.clone();
    ui.heading("Disks");
    if disks.is_empty() {
        ui.weak("No disks.");
    }
    for (i, disk) in disks.iter().enumerate() {
        let name = guest_disk_name(i);
        ui.horizontal_wrapped(|ui| {
            ui.strong(&name);
            ui.label(disk.path.display().to_string());
        });
        ui.indent(("disk", i), |ui| {
            let mut facts = vec![disk.format.to_string()];
            match machine.overview.disk_info.get(disk) {
                Ok(sizes) => {
                    facts.push(format!("{} virtual", format_size(sizes.virtual_size)));
                    facts.push(format!(
                        "{} used on this host",
                        format_size(sizes.allocated)
                    ));
                }
                Err(why) => facts.push(why),
            }
            facts.push(
                if disk.read_only {
                    "read-only"
                } else {
                    "read-write"
                }
                .into(),
            );
            ui.label(facts.join(" · "));
            if running {
                let device = format!("virtio-blk{i}");
                match device_rates(&machine.stats, &device) {
                    Some((read, write)) => ui.label(format!(
                        "reading {} · writing {}",
                        format_rate(read),
                        format_rate(write)
                    )),
                    None => ui.weak("throughput shows after a couple of seconds"),
                };
            }
            ui.horizontal(|ui| {
                if guarded_button(ui, "Grow…", &format!("Grow {name}"), blocked) {
                    let current = disk_sizes(disk).map_or(0, |s| s.virtual_size);
                    machine.overview.form = Some(OverviewForm::Grow(GrowForm {
                        path: disk.path.clone(),
                        current,
                        size_gib: u32::try_from(current / GIB + 1).unwrap_or(u32::MAX),
                    }));
                }
                if guarded_button(ui, "Detach", &format!("Detach {name}"), blocked) {
                    commands.push(UiCommand::DetachDisk {
                        id: id.clone(),
                        path: disk.path.clone(),
                    });
                }
            });
            if let Some(OverviewForm::Grow(form)) = &mut machine.overview.form {
                if form.path == disk.path {
                    let done = grow_form_ui(ui, &id, form, blocked, commands);
                    if done {
                        machine.overview.form = None;
                    }
                }
            }
        });
    }
    if guarded_button(ui, "Add disk…", "Add disk…", blocked) {
        machine.overview.form = Some(OverviewForm::AddDisk(AddDiskForm::default()));
    }
    if let Some(OverviewForm::AddDisk(form)) = &mut machine.overview.form {
        let own_dir = data_dir.map(|d| machine_dir(d, &id));
        if add_disk_form_ui(ui, &id, form, &disks, own_dir.as_deref(), blocked, commands) {
            machine.overview.form = None;
        }
    }
}

/// The Grow form; true when it should close.
fn grow_form_ui(
    ui: &mut egui::Ui,
    id: &str,
    form: &mut GrowForm,
    blocked: Option<&str>,
    commands: &mut CommandQueue,
) -> bool {
    let mut close = false;
    ui.group(|ui| {
        ui.horizontal(|ui| {
            let label = ui.label("New size");
            ui.add(egui::DragValue::new(&mut form.size_gib).suffix(" GiB"))
                .labelled_by(label.id);
            ui.weak(format!("now {}", format_size(form.current)));
        });
        let new_size = form.new_size();
        if let Err(why) = &new_size {
            ui.colored_label(ui.visuals().error_fg_color, why);
        }
        ui.horizontal(|ui| {
            let why = blocked.or(new_size.as_ref().err().map(String::as_str));
            if guarded_button(ui, "Grow", "Grow", why) {
                if let Ok(new_size) = new_size {
                    commands.push(UiCommand::GrowDisk {
                        id: id.to_string(),
                        path: form.path.clone(),
                        new_size,
                    });
                    close = true;
                }
            }
            if ui.button("Cancel").clicked() {
                close = true;
            }
        });
        ui.weak("The guest sees the new size at its next boot; grow its partition and file system there.");
    });
    close
}

/// The Add disk form; true when it should close.
fn add_disk_form_ui(
    ui: &mut egui::Ui,
    id: &str,
    form: &mut AddDiskForm,
    attached: &[DiskConfig],
    own_dir: Option<&Path>,
    blocked: Option<&str>,
    commands: &mut CommandQueue,
) -> bool {
    form.refresh();
    let mut close = false;
    ui.group(|ui| {
        ui.horizontal(|ui| {
            ui.radio_value(&mut form.existing, false, "New empty disk");
            ui.radio_value(&mut form.existing, true, "Existing image");
        });
        if form.existing {
            let label = ui.label("Image path");
            ui.horizontal(|ui| {
                ui.add(
                    egui::TextEdit::singleline(&mut form.path)
                        .hint_text("/path/to/disk.qcow2")
                        .desired_width(300.0),
                )
                .labelled_by(label.id);
                if ui
                    .add_enabled(!form.picker.is_open(), egui::Button::new("Browse…"))
                    .clicked()
                {
                    form.picker
                        .open("Choose a disk image (raw or qcow2)", ui.ctx());
                }
            });
            if let Some((_, Ok(info))) = &form.info {
                ui.label(disk_info_text(info));
            }
            ui.checkbox(&mut form.read_only, "Read-only");
            ui.weak("Used where it is; Hangar never deletes it.");
        } else {
            ui.horizontal(|ui| {
                let label = ui.label("New disk size");
                ui.add(egui::DragValue::new(&mut form.size_gib).suffix(" GiB"))
                    .labelled_by(label.id);
                ui.radio_value(&mut form.format, DiskFormat::Raw, "raw");
                ui.radio_value(&mut form.format, DiskFormat::Qcow2, "qcow2");
            });
            if let Some(dir) = own_dir {
                ui.weak(format!("Created in {}", dir.display()));
            }
        }
        let can_create = match own_dir {
            Some(_) => Ok(()),
            None => Err("Hangar has no data folder to keep new disks in (is HOME set?)."),
        };
        let request = form.request(attached, can_create);
        if let Err(why) = &request {
            ui.colored_label(ui.visuals().error_fg_color, why);
        }
        ui.horizontal(|ui| {
            let why = blocked.or(request.as_ref().err().map(String::as_str));
            if guarded_button(ui, "Add", "Add", why) {
                if let Ok(disk) = request {
                    commands.push(UiCommand::AddDisk {
                        id: id.to_string(),
                        disk,
                    });
                    close = true;
                }
            }
            if ui.button("Cancel").clicked() {
                close = true;
            }
        });
    });
    close
}

/// The Network section.
fn network_ui(ui: &mut egui::Ui, machine: &mut Machine, commands: &mut CommandQueue) {
    let id = machine.def.id.clone();
    let running = machine.status.is_active();
    let blocked = running.then_some(STOP_FOR_NETWORK);
    ui.heading("Network");
    match &machine.def.config.network {
        None => {
            ui.label("Off");
        }
        Some(net) => {
            ui.label("User-mode (passt): the guest reaches what this host reaches");
            if net.port_forwards.is_empty() {
                ui.weak("No forwarded ports.");
            }
            for f in &net.port_forwards {
                ui.label(forward_text(f));
            }
            if running {
                match device_rates(&machine.stats, "virtio-net0") {
                    Some((received, sent)) => ui.label(format!(
                        "receiving {} · sending {}",
                        format_rate(received),
                        format_rate(sent)
                    )),
                    None => ui.weak("throughput shows after a couple of seconds"),
                };
            }
        }
    }
    if guarded_button(ui, "Edit network…", "Edit network…", blocked) {
        machine.overview.form = Some(OverviewForm::Network(NetworkForm::from_config(
            machine.def.config.network.as_ref(),
        )));
    }
    let mut close = false;
    if let Some(OverviewForm::Network(form)) = &mut machine.overview.form {
        ui.group(|ui| {
            network_form_ui(ui, form);
            let network = form.config();
            if let Err(why) = &network {
                ui.colored_label(ui.visuals().error_fg_color, why);
            }
            ui.horizontal(|ui| {
                let why = blocked.or(network.as_ref().err().map(String::as_str));
                if guarded_button(ui, "Save network", "Save network", why) {
                    if let Ok(network) = network {
                        commands.push(UiCommand::SetNetwork {
                            id: id.clone(),
                            network,
                        });
                        close = true;
                    }
                }
                if ui.button("Cancel").clicked() {
                    close = true;
                }
            });
        });
    }
    if close {
        machine.overview.form = None;
    }
}

/// Draw the Overview tab. `data_dir` is where new disks go (None: nowhere).
pub fn overview_tab_ui(
    ui: &mut egui::Ui,
    machine: &mut Machine,
    data_dir: Option<&Path>,
    commands: &mut CommandQueue,
) {
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show(ui, |ui| {
            settings_ui(ui, machine);
            ui.separator();
            disks_ui(ui, machine, data_dir, commands);
            ui.separator();
            network_ui(ui, machine, commands);
            ui.separator();
            figures_ui(ui, machine);
        });
}

/// The definition and the latest figures, as a grid.
fn settings_ui(ui: &mut egui::Ui, machine: &Machine) {
    let c = &machine.def.config;
    egui::Grid::new(("overview", &machine.def.id))
        .num_columns(2)
        .striped(true)
        .show(ui, |ui| {
            ui.label("Name");
            ui.label(&c.name);
            ui.end_row();
            ui.label("State");
            ui.label(machine.status.label());
            ui.end_row();
            ui.label("Virtual CPUs");
            ui.label(c.vcpus.to_string());
            ui.end_row();
            ui.label("Memory");
            ui.label(format!("{} MiB", c.memory_mib));
            ui.end_row();
            let BootSource::Kernel(boot) = &c.boot;
            ui.label("Kernel");
            ui.label(boot.kernel.display().to_string());
            ui.end_row();
            ui.label("Initramfs");
            ui.label(
                boot.initrd
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "none".into()),
            );
            ui.end_row();
            ui.label("Screen");
            ui.label(match &c.display {
                Some(d) => format!("{}×{}", d.width, d.height),
                None => "none".into(),
            });
            ui.end_row();
            ui.label("Command line");
            ui.label(if boot.cmdline.is_empty() {
                "(empty)"
            } else {
                &boot.cmdline
            });
            ui.end_row();
            if let Some(last) = machine.stats.back() {
                ui.label("Uptime");
                ui.label(format_uptime(last.stats.uptime.as_secs()));
                ui.end_row();
                ui.label("Guest RAM in use");
                ui.label(format!(
                    "{} of {} MiB",
                    human_bytes(last.memory_bytes),
                    last.stats.guest_memory_bytes >> 20
                ));
                ui.end_row();
                for (i, v) in last.stats.vcpus.iter().enumerate() {
                    ui.label(format!("vCPU {i}"));
                    ui.label(format!(
                        "{:.2} s CPU, {} exits",
                        v.cpu_time.as_secs_f64(),
                        v.exits
                    ));
                    ui.end_row();
                }
            }
        });
}

/// CPU and memory plots, once there are two samples.
fn figures_ui(ui: &mut egui::Ui, machine: &Machine) {
    if machine.stats.len() < 2 {
        ui.weak("Figures appear here once the machine has run for a couple of seconds.");
        return;
    }
    let samples: Vec<_> = machine.stats.iter().collect();
    let vcpus = samples.last().map(|s| s.stats.vcpus.len()).unwrap_or(0);
    ui.label("vCPU use (% of one host CPU)");
    Plot::new(("cpu_plot", &machine.def.id))
        .height(140.0)
        .legend(Legend::default())
        .include_y(0.0)
        .include_y(100.0)
        .show(ui, |plot| {
            for i in 0..vcpus {
                let points: PlotPoints = samples
                    .windows(2)
                    .filter_map(|w| {
                        let (a, b) = (w[0], w[1]);
                        let dt = b.t - a.t;
                        let cpu = |s: &crate::gui::vm::machine::StatsSample| {
                            s.stats.vcpus.get(i).map(|v| v.cpu_time.as_secs_f64())
                        };
                        let (ca, cb) = (cpu(a)?, cpu(b)?);
                        (dt > 0.0).then(|| [b.t, ((cb - ca) / dt * 100.0).max(0.0)])
                    })
                    .collect();
                plot.line(Line::new(format!("vCPU {i}"), points));
            }
        });
    ui.label("Guest RAM in use (MiB)");
    Plot::new(("rss_plot", &machine.def.id))
        .height(120.0)
        .include_y(0.0)
        .show(ui, |plot| {
            let points: PlotPoints = samples
                .iter()
                .map(|s| [s.t, s.memory_bytes as f64 / (1 << 20) as f64])
                .collect();
            plot.line(Line::new("resident", points));
        });
}

/// KiB below one MiB, so a tiny guest does not read as "0.0".
fn human_bytes(b: u64) -> String {
    if b < 1 << 20 {
        format!("{} KiB", b.div_ceil(1024))
    } else {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    }
}

fn format_uptime(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, (secs / 60) % 60, secs % 60)
}
