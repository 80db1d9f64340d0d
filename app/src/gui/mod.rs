//! The desktop window (eframe/egui, glow renderer). One file per panel or
//! tab kind; panels queue [`command::UiCommand`]s that [`app::HangarApp`]
//! applies after drawing.

pub mod app;
pub mod automation;
pub mod command;
pub mod console_tab;
pub mod container_console_tab;
pub mod container_dialog;
pub mod container_logs_tab;
pub mod container_overview_tab;
pub mod delete_dialog;
pub mod display_keys;
pub mod display_tab;
pub mod frame_stats;
pub mod host_banner;
pub mod image_import;
pub mod library_panel;
pub mod log_panel;
pub mod machine_disks;
pub mod model;
pub mod overview_tab;
pub mod port_forwards;
pub mod tabs;
pub mod template_clone;
pub mod terminal;
pub mod ui_state;
pub mod wizard;

use anyhow::Context;

/// Open the window and run until it is closed.
pub fn run() -> anyhow::Result<()> {
    let env = app::AppEnv::from_system()?;
    // Screenshot scripts and frame figures (automation.rs); None normally.
    let hooks = automation::Hooks::from_env()?;
    let outcome = hooks.as_ref().map(automation::Hooks::outcome);
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Hangar")
            .with_app_id("hangar")
            .with_inner_size([1200.0, 780.0])
            .with_min_inner_size([640.0, 420.0]),
        renderer: eframe::Renderer::Glow,
        ..Default::default()
    };
    eframe::run_native(
        "Hangar",
        options,
        Box::new(|_cc| Ok(automation::boxed(app::HangarApp::new(env), hooks))),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
    .context("cannot open the Hangar window")?;
    automation::check(outcome)
}
