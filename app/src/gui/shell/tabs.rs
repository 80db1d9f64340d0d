//! The tab area: an egui_tiles tree of panes (Console / Display / Overview
//! per machine, Console / Logs / Overview per container) that the user can drag
//! into splits, close and reopen.

use egui_tiles::{Container, Tile, TileId, Tree};
use serde::{Deserialize, Serialize};

use crate::gui::command::CommandQueue;
use crate::gui::container::console_tab::container_console_tab_ui;
use crate::gui::container::logs_tab::container_logs_tab_ui;
use crate::gui::container::model::Containers;
use crate::gui::container::overview_tab::container_overview_tab_ui;
use crate::gui::vm::console_tab::console_tab_ui;
use crate::gui::vm::display_tab::display_tab_ui;
use crate::gui::vm::machine::Machines;
use crate::gui::vm::overview_tab::overview_tab_ui;

/// What a pane shows of its workload. A VM has a console, a display and
/// an overview; a container a console, its logs and an overview.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum View {
    /// The serial console (a VM) or the process's terminal (a container).
    // Layouts saved before panes were keyed by workload named container
    // views apart.
    #[serde(alias = "ContainerConsole")]
    Console,
    /// Configuration and live figures.
    #[serde(alias = "ContainerOverview")]
    Overview,
    /// A VM's screen, keyboard and mouse.
    Display,
    /// A container's captured output as plain text (its `console.log`).
    #[serde(alias = "ContainerLogs")]
    Logs,
}

impl View {
    /// The word on the tab.
    pub fn title(self) -> &'static str {
        match self {
            View::Console => "Console",
            View::Overview => "Overview",
            View::Display => "Display",
            View::Logs => "Logs",
        }
    }
}

/// One tab: a view of one workload (machine or container).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pane {
    /// The workload's id: a machine's or a container's.
    #[serde(alias = "machine")]
    pub workload: String,
    /// Which view.
    #[serde(alias = "kind")]
    pub view: View,
}

/// A new, empty tab area.
pub fn empty_tree() -> Tree<Pane> {
    Tree::empty(egui::Id::unique("hangar_tabs"))
}

/// Show `pane`: bring it to the front if open, else open it as a tab next to
/// the others.
pub fn open_pane(tree: &mut Tree<Pane>, pane: Pane) {
    if focus_pane(tree, &pane) {
        return;
    }
    let id = tree.tiles.insert_pane(pane.clone());
    match tree.root {
        Some(root) => {
            // Add to the first tab group found, depth first from the root, so
            // new tabs join what the user already looks at.
            let target = first_tabs(tree, root).unwrap_or(root);
            match tree.tiles.get_mut(target) {
                Some(Tile::Container(c)) => c.add_child(id),
                _ => {
                    let tabs = tree.tiles.insert_tab_tile(vec![root, id]);
                    tree.root = Some(tabs);
                }
            }
        }
        None => tree.root = Some(tree.tiles.insert_tab_tile(vec![id])),
    }
    focus_pane(tree, &pane);
}

/// Show `pane` in a new column to the right of everything else, for side by
/// side viewing.
pub fn open_pane_beside(tree: &mut Tree<Pane>, pane: Pane) {
    if let Some(existing) = tree.tiles.find_pane(&pane) {
        tree.remove_recursively(existing);
    }
    let pane_id = tree.tiles.insert_pane(pane.clone());
    let tabs = tree.tiles.insert_tab_tile(vec![pane_id]);
    match tree.root {
        Some(root) => match tree.tiles.get_mut(root) {
            Some(Tile::Container(Container::Linear(l)))
                if l.dir == egui_tiles::LinearDir::Horizontal =>
            {
                l.add_child(tabs);
            }
            _ => {
                let row = tree.tiles.insert_horizontal_tile(vec![root, tabs]);
                tree.root = Some(row);
            }
        },
        None => tree.root = Some(tabs),
    }
    focus_pane(tree, &pane);
}

fn first_tabs(tree: &Tree<Pane>, id: TileId) -> Option<TileId> {
    match tree.tiles.get(id)? {
        Tile::Container(Container::Tabs(_)) => Some(id),
        Tile::Container(c) => c.children().find_map(|&child| first_tabs(tree, child)),
        Tile::Pane(_) => None,
    }
}

fn focus_pane(tree: &mut Tree<Pane>, pane: &Pane) -> bool {
    tree.make_active(|_, tile| matches!(tile, Tile::Pane(p) if p == pane))
}

/// Close every tab of a workload (it was deleted or removed).
pub fn close_workload(tree: &mut Tree<Pane>, workload: &str) {
    let ids: Vec<TileId> = tree
        .tiles
        .iter()
        .filter(|(_, t)| matches!(t, Tile::Pane(p) if p.workload == workload))
        .map(|(id, _)| *id)
        .collect();
    for id in ids {
        tree.remove_recursively(id);
    }
}

/// Panes currently visible on screen (active tabs), for tests and repaints.
pub fn visible_panes(tree: &Tree<Pane>) -> Vec<Pane> {
    tree.active_tiles()
        .into_iter()
        .filter_map(|id| tree.tiles.get_pane(&id).cloned())
        .collect()
}

/// Draws panes and tab titles.
pub struct TabsBehavior<'a> {
    /// The machines the panes show.
    pub machines: &'a mut Machines,
    /// The containers the panes show.
    pub containers: &'a mut Containers,
    /// Where pane UIs put their commands.
    pub commands: &'a mut CommandQueue,
    /// Hangar's data directory (new disks go into machines' folders there).
    pub data_dir: Option<&'a std::path::Path>,
}

impl egui_tiles::Behavior<Pane> for TabsBehavior<'_> {
    fn pane_ui(
        &mut self,
        ui: &mut egui::Ui,
        _tile_id: TileId,
        pane: &mut Pane,
    ) -> egui_tiles::UiResponse {
        if let Some(c) = self.containers.get_mut(&pane.workload) {
            match pane.view {
                View::Console => container_console_tab_ui(ui, c, self.commands),
                View::Logs => container_logs_tab_ui(ui, c),
                View::Overview => container_overview_tab_ui(ui, c),
                View::Display => no_such_view(ui, "A container has no display."),
            }
        } else if let Some(machine) = self.machines.get_mut(&pane.workload) {
            let id = &pane.workload;
            match pane.view {
                View::Console => console_tab_ui(ui, id, machine, self.commands),
                View::Overview => overview_tab_ui(ui, machine, self.data_dir, self.commands),
                View::Display => display_tab_ui(ui, id, machine, self.commands),
                View::Logs => no_such_view(ui, "A machine's log is its Console."),
            }
        } else {
            no_such_view(ui, "This machine or container no longer exists.");
        }
        egui_tiles::UiResponse::None
    }

    fn tab_title_for_pane(&mut self, pane: &Pane) -> egui::WidgetText {
        // Containers are named by id; machines by name.
        let name = match self.containers.get(&pane.workload) {
            Some(_) => pane.workload.clone(),
            None => self.machines.display_name(&pane.workload),
        };
        format!("{name} — {}", pane.view.title()).into()
    }

    fn is_tab_closable(&self, _tiles: &egui_tiles::Tiles<Pane>, _tile_id: TileId) -> bool {
        true
    }

    fn simplification_options(&self) -> egui_tiles::SimplificationOptions {
        egui_tiles::SimplificationOptions {
            all_panes_must_have_tabs: true,
            ..Default::default()
        }
    }
}

fn no_such_view(ui: &mut egui::Ui, why: &str) {
    ui.centered_and_justified(|ui| ui.label(why));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pane(m: &str, view: View) -> Pane {
        Pane {
            workload: m.into(),
            view,
        }
    }

    #[test]
    fn test_open_twice_keeps_one_tab() {
        let mut tree = empty_tree();
        open_pane(&mut tree, pane("a", View::Console));
        open_pane(&mut tree, pane("a", View::Overview));
        open_pane(&mut tree, pane("a", View::Console));
        let panes = tree
            .tiles
            .tiles()
            .filter(|t| matches!(t, Tile::Pane(_)))
            .count();
        assert_eq!(panes, 2);
        assert_eq!(visible_panes(&tree), vec![pane("a", View::Console)]);
    }

    #[test]
    fn test_beside_shows_both_and_close_machine_removes_its_tabs() {
        let mut tree = empty_tree();
        open_pane(&mut tree, pane("a", View::Console));
        open_pane_beside(&mut tree, pane("b", View::Console));
        let mut visible = visible_panes(&tree);
        visible.sort_by(|x, y| x.workload.cmp(&y.workload));
        assert_eq!(
            visible,
            vec![pane("a", View::Console), pane("b", View::Console)]
        );
        close_workload(&mut tree, "a");
        assert_eq!(visible_panes(&tree), vec![pane("b", View::Console)]);
    }

    #[test]
    fn test_tree_round_trips_through_json() {
        let mut tree = empty_tree();
        open_pane(&mut tree, pane("a", View::Console));
        open_pane_beside(&mut tree, pane("b", View::Overview));
        let json = serde_json::to_string(&tree).unwrap();
        let back: Tree<Pane> = serde_json::from_str(&json).unwrap();
        assert_eq!(visible_panes(&back).len(), 2);
    }
}
