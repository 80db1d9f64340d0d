//! GUI tests of a container's Logs and Overview tabs, opened from the
//! library's row buttons, on real containers run from the Run container
//! dialog. Containers run as root on a data directory of their own; without
//! root the tests say so loudly and return.

mod common;

use std::time::Duration;

use egui::accesskit::Role;
use egui_kittest::kittest::Queryable as _;
use hangar::gui::shell::tabs::{visible_panes, Pane, View};

use common::{
    click, gui_with_containers, is_root, library_state, settle, type_into, wait_until, ConfigDir,
    DataDir, Gui,
};

/// Longest wait for a container (the first run imports the default image).
const CONTAINER_TIMEOUT: Duration = Duration::from_secs(60);

/// Run `command` from the dialog (pipes or terminal as asked) and return
/// the new container's id.
fn run_from_dialog(h: &mut Gui, command: &str, fields: &[(&str, &str)], terminal: bool) -> String {
    click(h, "Run container");
    type_into(h, "Command", command);
    for (label, text) in fields {
        type_into(h, label, text);
    }
    if !terminal {
        click(h, "Terminal (interactive programs)");
    }
    click(h, "Run");
    assert!(
        h.query_by_label("New container").is_none(),
        "the dialog closed:\n{}",
        common::log_text(h.state())
    );
    let entries = &h.state().rt.workloads.containers.entries;
    entries
        .last()
        .unwrap_or_else(|| panic!("no container ran:\n{}", common::log_text(h.state())))
        .id
        .0
        .clone()
}

fn shows(h: &Gui, text: &str) -> bool {
    h.query_by_label(text).is_some()
}

fn visible(h: &Gui) -> Vec<Pane> {
    visible_panes(&h.state().ui_state.tabs)
}

#[test]
fn logs_tab_follows_a_running_container() {
    if !is_root() {
        return;
    }
    let dir = ConfigDir::new();
    let data = DataDir::new();
    let mut h = gui_with_containers(&dir, &data);
    let id = run_from_dialog(
        &mut h,
        r#"sh -c "echo first-line; sleep 2; echo second-line; sleep 0.5""#,
        &[],
        true,
    );
    click(&mut h, "Logs");
    assert_eq!(
        visible(&h),
        vec![Pane {
            workload: id.clone(),
            view: View::Logs
        }],
        "the row's Logs button opens the Logs tab"
    );
    h.get_by_label(&format!("{id} — Logs"));
    h.get_by_label("Follow");
    h.get_by_label("Clear view");

    // Read while it runs: the first line before the second is printed.
    wait_until(
        &mut h,
        "the first line in the Logs tab",
        CONTAINER_TIMEOUT,
        |h| shows(h, "first-line"),
    );
    assert!(
        !shows(&h, "second-line"),
        "the second line comes two seconds later"
    );
    assert_eq!(library_state(&h, &id), "running");
    wait_until(
        &mut h,
        "the second line and the exit",
        CONTAINER_TIMEOUT,
        |h| shows(h, "second-line") && library_state(h, &id) == "exited",
    );
    h.get_by_label("Logs · exited");
    let log = data.container_dir(&id).join("console.log");
    let on_disk = std::fs::read_to_string(&log).expect("the log file is there");
    assert!(
        on_disk.contains("first-line\r\nsecond-line\r\n"),
        "terminal output, with carriage returns: {on_disk:?}"
    );

    // Clear view hides the text and keeps the file.
    click(&mut h, "Clear view");
    assert!(!shows(&h, "first-line") && !shows(&h, "second-line"));
    h.get_by_label("View cleared. New output appears here.");
    assert_eq!(
        std::fs::read_to_string(&log).expect("the log file is kept"),
        on_disk
    );

    // The console tab is still a click away.
    click(&mut h, "Console");
    assert_eq!(
        visible(&h),
        vec![Pane {
            workload: id.clone(),
            view: View::Console
        }]
    );
    assert!(
        h.state().rt.log.notifications.is_empty(),
        "no errors:\n{}",
        common::log_text(h.state())
    );
}

#[test]
fn logs_tab_shows_the_newest_of_many_lines_and_stops_following_on_scroll() {
    if !is_root() {
        return;
    }
    let dir = ConfigDir::new();
    let data = DataDir::new();
    let mut h = gui_with_containers(&dir, &data);
    // Pipes: no terminal, no carriage returns.
    let id = run_from_dialog(
        &mut h,
        r#"sh -c "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo row-$i; done""#,
        &[],
        false,
    );
    wait_until(&mut h, "the container to exit", CONTAINER_TIMEOUT, |h| {
        library_state(h, &id) == "exited"
    });
    click(&mut h, "Logs");
    settle(&mut h);
    assert!(shows(&h, "row-400"), "following shows the last line");
    assert!(
        !shows(&h, "row-1"),
        "the first lines are scrolled away (only visible rows are drawn)"
    );
    let logs = &h.state().rt.workloads.containers.entries[0].logs;
    assert_eq!(logs.lines().len(), 400, "every line is kept");
    assert!(logs.follow);
    assert!(!logs.is_truncated());

    // Scrolling up stops following.
    h.get_by_label("row-400").hover();
    for _ in 0..20 {
        h.event(egui::Event::MouseWheel {
            unit: egui::MouseWheelUnit::Page,
            delta: egui::vec2(0.0, 1.0),
            modifiers: egui::Modifiers::default(),
            phase: egui::TouchPhase::Move,
            source: egui::MouseWheelSource::Wheel,
        });
        h.step();
    }
    settle(&mut h);
    assert!(
        !h.state().rt.workloads.containers.entries[0].logs.follow,
        "Follow is unticked after scrolling up"
    );
    assert!(shows(&h, "row-1"), "the top is in sight");
    assert!(!shows(&h, "row-400"));
    // Ticking Follow brings the end back.
    click(&mut h, "Follow");
    settle(&mut h);
    assert!(shows(&h, "row-400"));
    assert!(h.state().rt.workloads.containers.entries[0].logs.follow);
}

#[test]
fn overview_tab_shows_limits_figures_and_plots() {
    if !is_root() {
        return;
    }
    let dir = ConfigDir::new();
    let data = DataDir::new();
    let mut h = gui_with_containers(&dir, &data);
    let id = run_from_dialog(
        &mut h,
        r#"sh -c "echo up; sleep 60""#,
        &[("Memory (MiB)", "64"), ("CPUs", "0.5"), ("Processes", "32")],
        true,
    );
    click(&mut h, "Overview");
    assert_eq!(
        visible(&h),
        vec![Pane {
            workload: id.clone(),
            view: View::Overview
        }]
    );
    h.get_by_label(&format!("{id} — Overview"));
    h.get_by_label("memory 64 MiB · 0.5 CPUs · 32 processes");
    h.get_by_label("none (loopback only)");
    h.get_by_label(r#"sh -c "echo up; sleep 60""#);

    wait_until(&mut h, "three stats samples", CONTAINER_TIMEOUT, |h| {
        h.state().rt.workloads.containers.entries[0].stats.len() >= 3
    });
    settle(&mut h);
    let pid = h.state().rt.workloads.containers.entries[0]
        .pid
        .expect("the Started event gave the pid");
    h.get_by_label(&format!("pid {pid} on the host"));
    h.get_by_label("Memory (MiB) — limit 64 MiB");
    h.get_by_label("Processes — limit 32");
    h.get_by_label("CPU use (% of one CPU) — limit 0.5 CPUs = 50 %");
    let now: Vec<String> = h
        .query_all_by_label_contains("Now: CPU ")
        .filter_map(|n| n.value())
        .collect();
    assert!(
        now.len() == 1 && now[0].contains(" of 64 MiB") && now[0].contains(" of 32 processes"),
        "the current figures name the limits: {now:?}"
    );
    // Each plot draws its legend: the series and its limit line.
    for series in ["CPU %", "memory", "processes"] {
        assert_eq!(
            h.query_all_by_role_and_label(Role::CheckBox, series)
                .count(),
            1,
            "the {series} plot is drawn"
        );
    }
    let limit_lines = h
        .query_all_by_role_and_label(Role::CheckBox, "limit")
        .count();
    assert_eq!(limit_lines, 3, "each plot shows its limit as a line");

    // Stop (sh as init ignores SIGTERM), then Kill; the exit is described.
    click(&mut h, "Stop");
    wait_until(&mut h, "the container to stop", CONTAINER_TIMEOUT, |h| {
        library_state(h, &id) == "stopping"
    });
    click(&mut h, "Kill");
    wait_until(&mut h, "the container to exit", CONTAINER_TIMEOUT, |h| {
        library_state(h, &id) == "exited"
    });
    h.get_by_label("killed by signal 9 (SIGKILL); stopped on request");
    h.get_by_label(&format!("pid {pid} on the host (ended)"));
    assert_eq!(
        h.query_all_by_label_contains("Last seen: CPU ").count(),
        1,
        "the last figures stay"
    );
}
