//! Files an earlier release saved still load: the window layout in
//! `tests/fixtures/saved-*/config/ui-state.json` and the UI script that made
//! it, written by that release (`tests/fixtures/make-saved`).

// Test code: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

use egui_tiles::Tile;
use hangar::gui::automation::{parse_script, Step};
use hangar::gui::command::UiCommand;
use hangar::gui::shell::tabs::View;
use hangar::gui::state::ui_state::{ui_state_path, UiState};
use hangar_testkit::saved_fixture as fixture;

#[test]
fn ui_state_of_release_0_1_loads() {
    let state = UiState::load(&ui_state_path(&fixture("0.1").join("config")));
    assert_eq!(state.selected.as_deref(), Some("chatter"));
    assert!(state.show_log);
    let mut panes: Vec<(String, View)> = state
        .tabs
        .tiles
        .iter()
        .filter_map(|(_, t)| match t {
            Tile::Pane(p) => Some((p.workload.clone(), p.view)),
            Tile::Container(_) => None,
        })
        .collect();
    panes.sort_by(|a, b| (&a.0, a.1 as u8).cmp(&(&b.0, b.1 as u8)));
    let want = [
        ("419ab81b0142", View::Console),
        ("8d374ac1dd29", View::Console),
        ("8d374ac1dd29", View::Logs),
        ("chatter", View::Overview),
        ("ec37b74e5ea3", View::Console),
        ("echo", View::Console),
        ("echo", View::Display),
    ];
    let want: Vec<(String, View)> = want.iter().map(|(m, k)| (m.to_string(), *k)).collect();
    assert_eq!(panes, want);
    // Two tab groups side by side (the Overview was opened beside).
    let root = state.tabs.root.unwrap();
    match state.tabs.tiles.get(root) {
        Some(Tile::Container(c)) => assert_eq!(c.num_children(), 2),
        other => panic!("the root is {other:?}"),
    }
}

#[test]
fn ui_script_of_release_0_1_parses() {
    let path = fixture("0.1").join("ui-scripts/fixtures.json");
    let steps = parse_script(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(steps.len(), 20);
    assert!(
        matches!(&steps[1], Step::Command(UiCommand::Create { start: false, config }) if config.display.is_none())
    );
    assert!(
        matches!(&steps[6], Step::Command(UiCommand::CreateFromTemplate(t)) if t.template == "debian-12")
    );
    assert!(matches!(&steps[9], Step::Command(UiCommand::RunContainer(c)) if c.ports.len() == 1));
    assert_eq!(
        steps[14],
        Step::Command(UiCommand::OpenTab("echo".into(), View::Display))
    );
    assert_eq!(steps[15], Step::ContainerTab(View::Logs));
    assert_eq!(steps[19], Step::Quit);
}
