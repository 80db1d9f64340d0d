//! A container's Overview tab: what it runs and with which limits, network,
//! ports and volumes, how it ended, and plots of its CPU, memory and
//! process count over the last two minutes (from the runtime's once a
//! second stats, kept in [`Container::stats`]).

use egui_plot::{HLine, Legend, Line, LineStyle, Plot, PlotPoints};
use hangar_engine::containers::{ContainerLimits, NetworkMode};

use crate::gui::container::model::{Container, ContainerStatsSample};

/// How far back the plots go, in seconds.
pub const PLOT_SECONDS: f64 = 120.0;

const MIB: f64 = (1u64 << 20) as f64;

/// The limits in words, e.g. `memory 64 MiB · 0.5 CPUs · 32 processes`.
pub fn limits_text(limits: &ContainerLimits) -> String {
    let mut parts = Vec::new();
    if let Some(m) = limits.memory_mib {
        parts.push(format!("memory {m} MiB"));
    }
    if let Some(c) = limits.cpus {
        parts.push(format!("{c} CPU{}", if c == 1.0 { "" } else { "s" }));
    }
    if let Some(p) = limits.pids {
        parts.push(format!("{p} process{}", if p == 1 { "" } else { "es" }));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" · ")
    }
}

/// CPU use between two samples, in percent of one CPU.
fn cpu_percent(a: &ContainerStatsSample, b: &ContainerStatsSample) -> Option<f64> {
    let dt = b.t - a.t;
    // A counter never goes back; if it seems to, count no use.
    let used = (b.cpu_time.as_secs_f64() - a.cpu_time.as_secs_f64()).max(0.0);
    (dt > 0.0).then(|| used / dt * 100.0)
}

/// One row of the details grid; long values wrap.
fn row(ui: &mut egui::Ui, name: &str, value: impl Into<egui::WidgetText>) {
    ui.label(name);
    ui.add(egui::Label::new(value).wrap());
    ui.end_row();
}

/// Draw the Overview tab of a container.
pub fn container_overview_tab_ui(ui: &mut egui::Ui, c: &Container) {
    egui::ScrollArea::vertical()
        .id_salt(("container_overview", &c.id.0))
        .auto_shrink([false, false])
        .show(ui, |ui| {
            details_ui(ui, c);
            ui.separator();
            figures_ui(ui, c);
        });
}

fn details_ui(ui: &mut egui::Ui, c: &Container) {
    let config = &c.config;
    // Values wrap within the tab instead of widening it (and the plots).
    let value_width = (ui.available_width() - 160.0).max(160.0);
    egui::Grid::new(("container_overview_grid", &c.id.0))
        .num_columns(2)
        .striped(true)
        .max_col_width(value_width)
        .show(ui, |ui| {
            row(ui, "Container", c.name());
            row(ui, "Image", config.image.as_str());
            row(ui, "Command", c.command_line());
            row(ui, "State", c.state_label());
            row(
                ui,
                "Process",
                match c.pid {
                    Some(pid) if c.is_active() => format!("pid {pid} on the host"),
                    Some(pid) => format!("pid {pid} on the host (ended)"),
                    None => "not started".into(),
                },
            );
            if let Some(setup) = c.setup_time {
                row(ui, "Started in", format!("{} ms", setup.as_millis()));
            }
            row(ui, "Limits", limits_text(&config.limits));
            row(
                ui,
                "Network",
                match config.network {
                    NetworkMode::None => "none (loopback only)",
                    NetworkMode::User => "user-mode (pasta)",
                },
            );
            let ports = if config.ports.is_empty() {
                "none".to_string()
            } else {
                config
                    .ports
                    .iter()
                    .map(|p| format!("127.0.0.1:{} -> {}", p.host_port, p.guest_port))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            row(ui, "Ports", ports);
            let volumes = if config.volumes.is_empty() {
                "none".to_string()
            } else {
                config
                    .volumes
                    .iter()
                    .map(|v| {
                        format!(
                            "{} -> {}{}",
                            v.source.display(),
                            v.target,
                            if v.read_only { " (read-only)" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            row(ui, "Volumes", volumes);
            row(
                ui,
                "Working directory",
                config.workdir.as_deref().unwrap_or("the image's"),
            );
            row(ui, "User", config.user.as_deref().unwrap_or("the image's"));
            row(
                ui,
                "Terminal",
                if config.terminal { "yes" } else { "no (pipes)" },
            );
            if !config.env.is_empty() {
                row(ui, "Environment", config.env.join("\n"));
            }
            if let Some(desc) = &c.exit_description {
                ui.label("Exit");
                let failed = c
                    .exit
                    .as_ref()
                    .is_some_and(|e| e.code != 0 || e.oom_killed || e.pids_limit_hits > 0);
                let mut text = egui::RichText::new(desc.as_str());
                if failed {
                    text = text.color(ui.visuals().error_fg_color);
                }
                ui.add(egui::Label::new(text).wrap());
                ui.end_row();
            }
            if let Some(err) = &c.last_error {
                ui.label("Error");
                let text = egui::RichText::new(err.as_str()).color(ui.visuals().error_fg_color);
                ui.add(egui::Label::new(text).wrap());
                ui.end_row();
            }
        });
}

fn figures_ui(ui: &mut egui::Ui, c: &Container) {
    let limits = &c.config.limits;
    let Some(last) = c.stats.back() else {
        ui.weak("Figures appear here once the container has run for a couple of seconds.");
        return;
    };
    let now = last.t;
    let samples: Vec<&ContainerStatsSample> = c
        .stats
        .iter()
        .filter(|s| s.t >= now - PLOT_SECONDS - 1.0)
        .collect();
    let cpu_now = samples
        .len()
        .checked_sub(2)
        .and_then(|i| cpu_percent(samples[i], samples[i + 1]));
    let memory_mib = last.memory_bytes as f64 / MIB;
    let mut now_text = vec![match cpu_now {
        Some(p) => format!("CPU {p:.1} %"),
        None => "CPU —".into(),
    }];
    now_text.push(match limits.memory_mib {
        Some(m) => format!("memory {memory_mib:.1} of {m} MiB"),
        None => format!("memory {memory_mib:.1} MiB"),
    });
    now_text.push(match limits.pids {
        Some(p) => format!("{} of {p} processes", last.pids),
        None => format!(
            "{} process{}",
            last.pids,
            if last.pids == 1 { "" } else { "es" }
        ),
    });
    ui.strong(if c.is_active() {
        format!("Now: {}", now_text.join(" · "))
    } else {
        format!("Last seen: {}", now_text.join(" · "))
    });
    if samples.len() < 2 {
        ui.weak("Plots appear once there are two samples.");
        return;
    }
    let x = |s: &ContainerStatsSample| s.t - now;
    let limit_color = ui.visuals().warn_fg_color;
    let limit_line = |y: f64| {
        HLine::new("limit", y)
            .color(limit_color)
            .style(LineStyle::dashed_dense())
    };
    let plot = |id: &str| {
        Plot::new((id.to_string(), c.id.0.clone()))
            .height(130.0)
            .legend(Legend::default())
            .include_x(-PLOT_SECONDS)
            .include_x(0.0)
            .include_y(0.0)
            .x_axis_label("seconds ago")
            .allow_drag(false)
            .allow_zoom(false)
            .allow_scroll(false)
            .allow_boxed_zoom(false)
            .allow_double_click_reset(false)
    };

    match limits.cpus {
        Some(cpus) => ui.label(format!(
            "CPU use (% of one CPU) — limit {cpus} CPU{} = {:.0} %",
            if cpus == 1.0 { "" } else { "s" },
            cpus * 100.0
        )),
        None => ui.label("CPU use (% of one CPU)"),
    };
    plot("container_cpu_plot").include_y(100.0).show(ui, |p| {
        let points: PlotPoints = samples
            .windows(2)
            .filter_map(|w| Some([x(w[1]), cpu_percent(w[0], w[1])?]))
            .collect();
        p.line(Line::new("CPU %", points));
        if let Some(cpus) = limits.cpus {
            p.hline(limit_line(cpus * 100.0));
        }
    });

    match limits.memory_mib {
        Some(m) => ui.label(format!("Memory (MiB) — limit {m} MiB")),
        None => ui.label("Memory (MiB) — no limit"),
    };
    let mut memory_plot = plot("container_memory_plot");
    if let Some(m) = limits.memory_mib {
        memory_plot = memory_plot.include_y(m as f64 * 1.05);
    }
    memory_plot.show(ui, |p| {
        let points: PlotPoints = samples
            .iter()
            .map(|s| [x(s), s.memory_bytes as f64 / MIB])
            .collect();
        p.line(Line::new("memory", points));
        if let Some(m) = limits.memory_mib {
            p.hline(limit_line(m as f64));
        }
    });

    match limits.pids {
        Some(n) => ui.label(format!("Processes — limit {n}")),
        None => ui.label("Processes — no limit"),
    };
    let mut pids_plot = plot("container_pids_plot").include_y(4.0);
    if let Some(n) = limits.pids {
        pids_plot = pids_plot.include_y(n as f64 * 1.05);
    }
    pids_plot.show(ui, |p| {
        let points: PlotPoints = samples.iter().map(|s| [x(s), s.pids as f64]).collect();
        p.line(Line::new("processes", points));
        if let Some(n) = limits.pids {
            p.hline(limit_line(n as f64));
        }
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn limits_and_cpu_use_in_words() {
        assert_eq!(limits_text(&ContainerLimits::default()), "none");
        let l = ContainerLimits {
            memory_mib: Some(64),
            cpus: Some(0.5),
            pids: Some(1),
        };
        assert_eq!(limits_text(&l), "memory 64 MiB · 0.5 CPUs · 1 process");
        let sample = |t: f64, cpu_ms: u64| ContainerStatsSample {
            t,
            cpu_time: Duration::from_millis(cpu_ms),
            memory_bytes: 0,
            pids: 1,
        };
        let p = cpu_percent(&sample(1.0, 100), &sample(2.0, 600));
        assert!(p.is_some_and(|p| (p - 50.0).abs() < 1e-6), "{p:?}");
        assert_eq!(cpu_percent(&sample(1.0, 0), &sample(1.0, 10)), None);
    }
}
