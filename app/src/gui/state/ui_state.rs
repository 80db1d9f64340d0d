//! The UI state that survives a restart: open tabs and splits, the selected
//! machine, whether the log is shown. Runtime handles (engine, textures,
//! terminals) live elsewhere and are never serialised.

use std::path::{Path, PathBuf};

use anyhow::Context;
use egui_tiles::Tree;
use serde::{Deserialize, Serialize};

use crate::gui::shell::tabs::{empty_tree, Pane};

/// The layout of `ui-state.json` this build writes. 0 (no field) is the
/// first release's, whose panes named `machine` and `kind` (with separate
/// container views); serde aliases on [`Pane`] read it.
pub const UI_STATE_VERSION: u32 = 1;

/// Persisted UI state.
#[derive(Serialize, Deserialize)]
#[serde(default)]
pub struct UiState {
    /// Layout version ([`UI_STATE_VERSION`] when written by this build).
    pub version: u32,
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
            version: UI_STATE_VERSION,
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
        let Ok(bytes) = std::fs::read(path) else {
            return Self::default();
        };
        let mut state: Self = match serde_json::from_slice(&bytes) {
            Ok(state) => state,
            Err(e) => {
                log::warn!("ignoring unreadable UI state {}: {e}", path.display());
                return Self::default();
            }
        };
        if state.version > UI_STATE_VERSION {
            // A newer Hangar's layout may mean something else by the same
            // names: start fresh rather than guess (the file stays until
            // this build saves its own).
            log::warn!(
                "ignoring UI state {} of a newer Hangar (layout {}, this one reads up to {})",
                path.display(),
                state.version,
                UI_STATE_VERSION
            );
            return Self::default();
        }
        state.version = UI_STATE_VERSION;
        state
    }

    /// Save atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(self).context("cannot encode the UI state")?;
        hangar_engine::store::write_atomic(path, &json)
            .with_context(|| format!("cannot save the window layout to {}", path.display()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::gui::shell::tabs::{open_pane, View};
    use egui_tiles::Tile;

    fn panes(state: &UiState) -> Vec<Pane> {
        state
            .tabs
            .tiles
            .tiles()
            .filter_map(|t| match t {
                Tile::Pane(p) => Some(p.clone()),
                Tile::Container(_) => None,
            })
            .collect()
    }

    #[test]
    fn test_first_release_layout_loads_and_newer_ones_are_ignored() {
        let dir = hangar_testkit::TempDir::new("ui-state-version");
        let path = ui_state_path(dir.path());
        let mut state = UiState::default();
        open_pane(
            &mut state.tabs,
            Pane {
                workload: "c1".into(),
                view: View::Logs,
            },
        );
        state.selected = Some("c1".into());
        state.save(&path).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(written["version"], UI_STATE_VERSION);

        // The first release's words for the same layout, and no version.
        let old = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"workload\"", "\"machine\"")
            .replace("\"view\"", "\"kind\"")
            .replace("\"Logs\"", "\"ContainerLogs\"")
            .replace(&format!("\"version\": {UI_STATE_VERSION},"), "");
        assert!(!old.contains("version"), "{old}");
        std::fs::write(&path, &old).unwrap();
        let loaded = UiState::load(&path);
        assert_eq!(loaded.version, UI_STATE_VERSION);
        assert_eq!(loaded.selected.as_deref(), Some("c1"));
        assert_eq!(
            panes(&loaded),
            vec![Pane {
                workload: "c1".into(),
                view: View::Logs
            }]
        );

        let newer = std::fs::read_to_string(&path).unwrap().replacen(
            '{',
            &format!("{{\"version\": {},", UI_STATE_VERSION + 1),
            1,
        );
        std::fs::write(&path, newer).unwrap();
        let loaded = UiState::load(&path);
        assert!(panes(&loaded).is_empty() && loaded.selected.is_none());
    }
}
