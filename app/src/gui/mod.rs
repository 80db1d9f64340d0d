//! The desktop window (eframe/egui, glow renderer): the shell (library,
//! tabs, Log), a folder per workload kind (vm/, container/), the persisted
//! state and shared widgets, one file per panel or tab; panels queue [`command::UiCommand`]s that [`app::HangarApp`]
//! applies after drawing.

pub mod app;
pub mod automation;
pub mod command;
pub mod container;
pub mod shell;
pub mod state;
pub mod vm;
pub mod widgets;

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
