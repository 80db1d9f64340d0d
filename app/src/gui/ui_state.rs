//! The UI state that survives a restart: open tabs and splits, the selected
//! machine, whether the log is shown. Runtime handles (engine, textures,
//! terminals) live elsewhere and are never serialised.

use std::path::{Path, PathBuf};

use anyhow::Context;
use egui_tiles::Tree;
use serde::{Deserialize, Serialize};

use super::tabs::{empty_tree, Pane};

/// Persisted UI state.
#[derive(Serialize, Deserialize)]
#[serde(default)]
pub struct UiState {
    /// Tabs and splits.
    pub tabs: Tree<Pane>,
    /// The machine selected in the library.
    pub selected: Option<String>,
    /// Whether the Log panel is open.
    pub show_log: bool,
}

impl Default for UiState {
    fn default() -> Self {
        Self {
            tabs: empty_tree(),
            selected: None,
            show_log: true,
        }
    }
}

/// The file it lives in, next to the machine definitions.
pub fn ui_state_path(config_dir: &Path) -> PathBuf {
    config_dir.join("ui-state.json")
}

impl UiState {
    /// Load, or start fresh if the file is missing or unreadable (the layout
    /// is a convenience; losing it must not stop the app).
    pub fn load(path: &Path) -> Self {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                log::warn!("ignoring unreadable UI state {}: {e}", path.display());
                Self::default()
            }),
            Err(_) => Self::default(),
        }
    }

    /// Save atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(self).context("cannot encode the UI state")?;
        hangar_engine::store::write_atomic(path, &json)
            .with_context(|| format!("cannot save the window layout to {}", path.display()))
    }
}
