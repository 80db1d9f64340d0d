//! A machine's configuration and live figures.

use egui_plot::{Legend, Line, Plot, PlotPoints};

use super::model::Machine;

/// Draw the Overview tab.
pub fn overview_tab_ui(ui: &mut egui::Ui, machine: &Machine) {
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
            ui.label("Kernel");
            ui.label(c.kernel.display().to_string());
            ui.end_row();
            ui.label("Initramfs");
            ui.label(
                c.initrd
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
            ui.label(if c.cmdline.is_empty() {
                "(empty)"
            } else {
                &c.cmdline
            });
            ui.end_row();
            if let Some(last) = machine.stats.back() {
                ui.label("Uptime");
                ui.label(format_uptime(last.stats.uptime.as_secs()));
                ui.end_row();
                ui.label("Guest RAM in use");
                ui.label(format!(
                    "{} of {} MiB",
                    human_bytes(last.stats.guest_resident_bytes),
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
    if machine.stats.len() < 2 {
        ui.weak("Figures appear here once the machine has run for a couple of seconds.");
        return;
    }
    ui.separator();
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
                        let cpu = |s: &super::model::StatsSample| {
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
                .map(|s| [s.t, s.stats.guest_resident_bytes as f64 / (1 << 20) as f64])
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
