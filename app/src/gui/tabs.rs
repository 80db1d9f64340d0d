//! The tab area: an egui_tiles tree of panes (Console / Display / Overview
//! per machine, Console / Logs / Overview per container) that the user can drag
//! into splits, close and reopen.

use egui_tiles::{Container, Tile, TileId, Tree};
use serde::{Deserialize, Serialize};

use super::command::CommandQueue;
use super::console_tab::console_tab_ui;
use super::container_console_tab::container_console_tab_ui;
use super::container_logs_tab::container_logs_tab_ui;
use super::container_overview_tab::container_overview_tab_ui;
use super::display_tab::display_tab_ui;
use super::model::{Containers, Machines};
use super::overview_tab::overview_tab_ui;

/// What a pane shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PaneKind {
    /// The serial console.
    Console,
    /// Configuration and live figures.
    Overview,
    /// The guest's screen, keyboard and mouse.
    Display,
    /// A container's output and input (`machine` is the container's id).
    ContainerConsole,
    /// A container's captured output as plain text (its `console.log`).
    ContainerLogs,
    /// A container's settings, exit and live figures.
    ContainerOverview,
}

impl PaneKind {
    /// True for the views of a container (their `machine` is its id).
    pub fn is_container(self) -> bool {
        matches!(
            self,
            PaneKind::ContainerConsole | PaneKind::ContainerLogs | PaneKind::ContainerOverview
        )
    }
}

/// One tab: a view of one machine or container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pane {
    /// The machine's id (the container's id for a container's pane, see
    /// [`PaneKind::is_container`]).
    pub machine: String,
    /// Which view.
    pub kind: PaneKind,
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

/// Close every tab of a machine (it was deleted).
pub fn close_machine(tree: &mut Tree<Pane>, machine: &str) {
    let ids: Vec<TileId> = tree
        .tiles
        .iter()
        .filter(|(_, t)| matches!(t, Tile::Pane(p) if p.machine == machine))
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
        if pane.kind.is_container() {
            match self.containers.get_mut(&pane.machine) {
                Some(c) => match pane.kind {
                    PaneKind::ContainerLogs => container_logs_tab_ui(ui, c),
                    PaneKind::ContainerOverview => container_overview_tab_ui(ui, c),
                    _ => container_console_tab_ui(ui, c, self.commands),
                },
                None => {
                    ui.centered_and_justified(|ui| ui.label("This container no longer exists."));
                }
            }
            return egui_tiles::UiResponse::None;
        }
        match self.machines.get_mut(&pane.machine) {
            Some(machine) => match pane.kind {
                PaneKind::Console => console_tab_ui(ui, &pane.machine, machine, self.commands),
                PaneKind::Overview => overview_tab_ui(ui, machine, self.data_dir, self.commands),
                PaneKind::Display => display_tab_ui(ui, &pane.machine, machine, self.commands),
                PaneKind::ContainerConsole
                | PaneKind::ContainerLogs
                | PaneKind::ContainerOverview => {}
            },
            None => {
                ui.centered_and_justified(|ui| ui.label("This machine no longer exists."));
            }
        }
        egui_tiles::UiResponse::None
    }

    fn tab_title_for_pane(&mut self, pane: &Pane) -> egui::WidgetText {
        let name = self.machines.display_name(&pane.machine);
        match pane.kind {
            PaneKind::Console => format!("{name} — Console").into(),
            PaneKind::Overview => format!("{name} — Overview").into(),
            PaneKind::Display => format!("{name} — Display").into(),
            PaneKind::ContainerConsole => format!("{} — Console", pane.machine).into(),
            PaneKind::ContainerLogs => format!("{} — Logs", pane.machine).into(),
            PaneKind::ContainerOverview => format!("{} — Overview", pane.machine).into(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pane(m: &str, kind: PaneKind) -> Pane {
        Pane {
            machine: m.into(),
            kind,
        }
    }

    #[test]
    fn test_open_twice_keeps_one_tab() {
        let mut tree = empty_tree();
        open_pane(&mut tree, pane("a", PaneKind::Console));
        open_pane(&mut tree, pane("a", PaneKind::Overview));
        open_pane(&mut tree, pane("a", PaneKind::Console));
        let panes = tree
            .tiles
            .tiles()
            .filter(|t| matches!(t, Tile::Pane(_)))
            .count();
        assert_eq!(panes, 2);
        assert_eq!(visible_panes(&tree), vec![pane("a", PaneKind::Console)]);
    }

    #[test]
    fn test_beside_shows_both_and_close_machine_removes_its_tabs() {
        let mut tree = empty_tree();
        open_pane(&mut tree, pane("a", PaneKind::Console));
        open_pane_beside(&mut tree, pane("b", PaneKind::Console));
        let mut visible = visible_panes(&tree);
        visible.sort_by(|x, y| x.machine.cmp(&y.machine));
        assert_eq!(
            visible,
            vec![pane("a", PaneKind::Console), pane("b", PaneKind::Console)]
        );
        close_machine(&mut tree, "a");
        assert_eq!(visible_panes(&tree), vec![pane("b", PaneKind::Console)]);
    }

    #[test]
    fn test_tree_round_trips_through_json() {
        let mut tree = empty_tree();
        open_pane(&mut tree, pane("a", PaneKind::Console));
        open_pane_beside(&mut tree, pane("b", PaneKind::Overview));
        let json = serde_json::to_string(&tree).unwrap();
        let back: Tree<Pane> = serde_json::from_str(&json).unwrap();
        assert_eq!(visible_panes(&back).len(), 2);
    }
}
