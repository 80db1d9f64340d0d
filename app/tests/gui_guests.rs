//! GUI tests that run Hangar's no-std test guests on the real engine: the
//! console (output, typing), two consoles side by side, and Stop / Force
//! stop / Pause / Resume. They skip, loudly, when /dev/kvm cannot be
//! opened, and run one at a time.

mod common;

use std::time::{Duration, Instant};

use egui::accesskit::{Role, Toggled};
use egui_kittest::kittest::{NodeT as _, Queryable as _};
use hangar::gui::app::STOP_TIMEOUT;
use hangar::gui::shell::log::Severity;
use hangar::gui::shell::tabs::{visible_panes, Pane, View};
use hangar::gui::vm::machine::RunStatus;
use hangar_engine::VmExit;

use common::{
    click, gui, library_state, machine, machine_id, select, wait_until, ConfigDir, Gui,
    GUEST_TIMEOUT,
};

/// The one console on screen, as kittest sees it: its accessible text.
fn console_text(h: &Gui) -> String {
    h.query_by_role(Role::Terminal)
        .and_then(|n| n.value())
        .unwrap_or_default()
}

/// The Log has this line about `name`, and the Log panel shows it.
#[track_caller]
fn assert_logged(h: &Gui, name: &str, message: &str) {
    assert!(
        h.state()
            .rt
            .log
            .lines
            .iter()
            .any(|l| l.severity == Severity::Info
                && l.machine.as_deref() == Some(name)
                && l.message == message),
        "the Log should say {name}: {message}\n{}",
        common::log_text(h.state())
    );
    let shown = format!("{name}: {message}");
    assert!(
        h.query_by_label_contains(&shown).is_some(),
        "the Log panel shows {shown:?}"
    );
}

fn status(h: &Gui, name: &str) -> RunStatus {
    machine(h, name).status.clone()
}

#[track_caller]
fn wait_status(h: &mut Gui, name: &str, want: &str, timeout: Duration) {
    let what = format!("{name} to be {want}");
    wait_until(h, &what, timeout, |h| {
        machine(h, name).status.label() == want && library_state(h, name) == want
    });
}

/// Start the selected machine `name` and wait for its first output.
fn start_and_wait_for(h: &mut Gui, name: &str, text: &str) {
    select(h, name);
    click(h, "Start");
    let what = format!("{name} to print {text:?}");
    wait_until(h, &what, GUEST_TIMEOUT, |h| {
        machine(h, name).terminal.screen_text().contains(text)
    });
}

#[test]
fn console_shows_output_and_sends_keys() {
    if !common::kvm_available() {
        return;
    }
    let _one_at_a_time = common::kvm_lock();
    let dir = ConfigDir::new();
    dir.define("Echo", &common::guest("echo"));
    let mut h = gui(&dir);
    let id = machine_id(&h, "Echo");

    start_and_wait_for(&mut h, "Echo", "ready");
    assert_eq!(
        visible_panes(&h.state().ui_state.tabs),
        vec![Pane {
            workload: id.clone(),
            view: View::Console
        }],
        "Start opens the console"
    );
    wait_until(
        &mut h,
        "the console to show \"ready\" to kittest",
        GUEST_TIMEOUT,
        |h| console_text(h).contains("ready"),
    );
    wait_status(&mut h, "Echo", "running", GUEST_TIMEOUT);
    h.get_by_label("Serial console · running");

    h.get_by_role(Role::Terminal).click();
    h.step();
    assert!(
        h.get_by_role(Role::Terminal).is_focused(),
        "clicking the console focuses it"
    );
    h.get_by_role(Role::Terminal).type_text("hi");
    wait_until(&mut h, "the guest to echo HI", GUEST_TIMEOUT, |h| {
        machine(h, "Echo").terminal.screen_text().contains("HI") && console_text(h).contains("HI")
    });

    h.get_by_role(Role::Terminal).type_text("q");
    wait_until(&mut h, "Echo to exit", GUEST_TIMEOUT, |h| {
        matches!(machine(h, "Echo").status, RunStatus::Stopped)
            && machine(h, "Echo").last_exit.is_some()
    });
    assert_eq!(machine(&h, "Echo").last_exit, Some(VmExit::GuestExit(7)));
    common::settle(&mut h);
    assert_eq!(library_state(&h, "Echo"), "stopped");
    h.get_by_label("Serial console · stopped");
    assert_logged(&h, "Echo", "stopped: guest powered off with status 7");
    assert!(
        machine(&h, "Echo").terminal.screen_text().contains("HI"),
        "the console keeps its text"
    );
}

#[test]
fn two_consoles_side_by_side() {
    if !common::kvm_available() {
        return;
    }
    let _one_at_a_time = common::kvm_lock();
    let dir = ConfigDir::new();
    let spin = common::guest("spin");
    dir.define("Spin A", &spin);
    dir.define("Spin B", &spin);
    let mut h = gui(&dir);
    let a = machine_id(&h, "Spin A");
    let b = machine_id(&h, "Spin B");

    start_and_wait_for(&mut h, "Spin A", "spinning");
    start_and_wait_for(&mut h, "Spin B", "spinning");
    // Both consoles are tabs of one group: only B's is shown.
    assert_eq!(
        visible_panes(&h.state().ui_state.tabs),
        vec![Pane {
            workload: b.clone(),
            view: View::Console
        }]
    );
    click(&mut h, "Console beside");
    h.step();

    let mut visible = visible_panes(&h.state().ui_state.tabs);
    visible.sort_by(|x, y| x.workload.cmp(&y.workload));
    let mut want = vec![
        Pane {
            workload: a.clone(),
            view: View::Console,
        },
        Pane {
            workload: b.clone(),
            view: View::Console,
        },
    ];
    want.sort_by(|x, y| x.workload.cmp(&y.workload));
    assert_eq!(visible, want, "both consoles are visible");

    let screen = egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(1280.0, 800.0));
    let tab_a = h.get_by_label("Spin A — Console");
    let tab_b = h.get_by_label("Spin B — Console");
    for tab in [&tab_a, &tab_b] {
        assert_eq!(
            tab.accesskit_node().toggled(),
            Some(Toggled::True),
            "{tab:?} is the active tab"
        );
        assert!(screen.contains_rect(tab.rect()), "{tab:?} is on screen");
    }
    assert!(
        tab_a.rect().right() <= tab_b.rect().left() || tab_b.rect().right() <= tab_a.rect().left(),
        "the tabs are side by side"
    );
    wait_until(
        &mut h,
        "both consoles to show \"spinning\" to kittest",
        GUEST_TIMEOUT,
        |h| {
            let consoles: Vec<_> = h.query_all_by_role(Role::Terminal).collect();
            consoles.len() == 2
                && consoles
                    .iter()
                    .all(|c| c.value().is_some_and(|v| v.contains("spinning")))
        },
    );
    let consoles: Vec<egui::Rect> = h
        .query_all_by_role(Role::Terminal)
        .map(|n| n.rect())
        .collect();
    assert!(
        !consoles[0].intersects(consoles[1]),
        "the consoles do not overlap: {consoles:?}"
    );
    for c in &consoles {
        assert!(
            screen.contains_rect(*c) && c.width() > 100.0 && c.height() > 100.0,
            "console {c:?}"
        );
    }
    assert_eq!(library_state(&h, "Spin A"), "running");
    assert_eq!(library_state(&h, "Spin B"), "running");
}

#[test]
fn stop_force_stop_pause_and_resume() {
    if !common::kvm_available() {
        return;
    }
    let _one_at_a_time = common::kvm_lock();
    let dir = ConfigDir::new();
    dir.define("Spinner", &common::guest("spin"));
    let mut h = gui(&dir);

    start_and_wait_for(&mut h, "Spinner", "spinning");
    wait_status(&mut h, "Spinner", "running", GUEST_TIMEOUT);

    // The Overview shows live figures once a few stats samples came in.
    click(&mut h, "Overview");
    wait_until(&mut h, "two stats samples", GUEST_TIMEOUT, |h| {
        machine(h, "Spinner").stats.len() >= 2
    });
    h.step();
    h.get_by_label("Spinner — Overview");
    h.get_by_label("Uptime");
    h.get_by_label("vCPU use (% of one host CPU)");
    h.get_by_label("Guest RAM in use (MiB)");
    h.check_accessibility();
    click(&mut h, "Spinner — Console");
    assert_eq!(
        visible_panes(&h.state().ui_state.tabs),
        vec![Pane {
            workload: machine_id(&h, "Spinner"),
            view: View::Console
        }]
    );

    assert!(
        common::is_disabled(&h.get_by_label("Delete…")),
        "a running machine cannot be deleted"
    );
    assert!(common::is_disabled(&h.get_by_label("Start")));

    // Pause and Resume.
    click(&mut h, "Pause");
    wait_status(&mut h, "Spinner", "paused", GUEST_TIMEOUT);
    h.get_by_label("Serial console · paused");
    assert!(h.query_by_label("Pause").is_none());
    click(&mut h, "Resume");
    wait_status(&mut h, "Spinner", "running", GUEST_TIMEOUT);
    h.get_by_label("Serial console · running");
    h.get_by_label("Pause");

    // Stop: the spinner ignores Ctrl+Alt+Del, so it is forced after the timeout.
    let asked = Instant::now();
    click(&mut h, "Stop");
    let countdown = h
        .get_by_label_contains("Stopping… forced in ")
        .value()
        .unwrap_or_default();
    let seconds: u64 = countdown
        .trim_start_matches("Stopping… forced in ")
        .trim_end_matches(" s")
        .parse()
        .unwrap_or_else(|e| panic!("{countdown:?}: {e}"));
    assert!(
        (1..=STOP_TIMEOUT.as_secs()).contains(&seconds),
        "{countdown:?}"
    );
    assert_eq!(library_state(&h, "Spinner"), "stopping");
    h.get_by_label("Force stop");
    wait_until(
        &mut h,
        "Spinner to be stopped by force",
        STOP_TIMEOUT + GUEST_TIMEOUT,
        |h| matches!(status(h, "Spinner"), RunStatus::Stopped),
    );
    assert!(
        asked.elapsed() >= STOP_TIMEOUT - Duration::from_secs(1),
        "it was forced by the timeout, not at once ({:?})",
        asked.elapsed()
    );
    assert_eq!(
        machine(&h, "Spinner").last_exit,
        Some(VmExit::Stopped { forced: true })
    );
    common::settle(&mut h);
    assert_eq!(library_state(&h, "Spinner"), "stopped");
    assert!(h.query_by_label_contains("Stopping…").is_none());
    assert_logged(&h, "Spinner", "stopped by force");

    // Force stop ends it at once.
    start_and_wait_for(&mut h, "Spinner", "spinning");
    wait_status(&mut h, "Spinner", "running", GUEST_TIMEOUT);
    click(&mut h, "Stop");
    let asked = Instant::now();
    click(&mut h, "Force stop");
    wait_until(&mut h, "Spinner to be forced", GUEST_TIMEOUT, |h| {
        matches!(status(h, "Spinner"), RunStatus::Stopped)
    });
    assert!(
        asked.elapsed() < STOP_TIMEOUT / 2,
        "Force stop did not wait for the timeout ({:?})",
        asked.elapsed()
    );
    assert_eq!(
        machine(&h, "Spinner").last_exit,
        Some(VmExit::Stopped { forced: true })
    );
    common::settle(&mut h);
    assert_eq!(library_state(&h, "Spinner"), "stopped");
    h.get_by_label("Start");
}

#[test]
fn wizard_create_and_start_runs_the_guest() {
    if !common::kvm_available() {
        return;
    }
    let _one_at_a_time = common::kvm_lock();
    let dir = ConfigDir::new();
    let mut h = gui(&dir);
    click(&mut h, "New…");
    common::type_into(&mut h, "Name", "Hello");
    click(&mut h, "Linux kernel + initramfs");
    common::type_into(
        &mut h,
        "Kernel",
        &common::guest("hello").display().to_string(),
    );
    click(&mut h, "Next");
    click(&mut h, "Next");
    click(&mut h, "Create and start");
    assert_eq!(dir.definitions().len(), 1);
    wait_until(&mut h, "Hello to print and power off", GUEST_TIMEOUT, |h| {
        machine(h, "Hello").last_exit.is_some()
    });
    assert_eq!(machine(&h, "Hello").last_exit, Some(VmExit::GuestExit(0)));
    common::settle(&mut h);
    assert!(
        console_text(&h).contains("hello from guest"),
        "{:?}",
        console_text(&h)
    );
    assert_logged(&h, "Hello", "stopped: guest powered off with status 0");
    assert_eq!(library_state(&h, "Hello"), "stopped");
}
