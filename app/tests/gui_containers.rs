//! GUI tests of containers: the Run container dialog (its checks, port
//! forwards, volumes, working directory and user), real containers run from
//! it (output in the console and Logs tabs, a forwarded port, exit in the
//! library, removal), and the library when containers are unavailable. Containers
//! run as root on a data directory of their own; without root those tests
//! say so loudly and return.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::kittest::{NodeT as _, Queryable as _};
use hangar::gui::command::UiCommand;
use hangar::gui::shell::tabs::{visible_panes, Pane, View};
use hangar_engine::containers::{NetworkMode, PortForward, Volume};

use common::{
    clear_focused_field, click, gui, gui_with_containers, is_disabled, is_root, library_state,
    settle, type_into, wait_until, ConfigDir, DataDir, Gui, NO_CONTAINERS,
};

/// Longest wait for a container (the first run imports the default image).
const CONTAINER_TIMEOUT: Duration = Duration::from_secs(60);

/// The one console on screen, as kittest sees it: its accessible text.
fn console_text(h: &Gui) -> String {
    h.query_by_role(Role::Terminal)
        .and_then(|n| n.value())
        .unwrap_or_default()
}

/// The app for the dialog's checks: with containers as root; without
/// root, without them (the checks do not depend on the runtime).
fn dialog_gui(dir: &ConfigDir, data: &DataDir, root: bool) -> Gui {
    if root {
        gui_with_containers(dir, data)
    } else {
        gui(dir)
    }
}

/// Runs `command` in the default image through the dialog; the new
/// container's id.
fn run_from_dialog(h: &mut Gui, command: &str) -> String {
    click(h, "Run container");
    type_into(h, "Command", command);
    click(h, "Run");
    let entries = &h.state().rt.workloads.containers.entries;
    entries.last().expect("Run added a container").id.0.clone()
}

fn description(h: &Gui, label: &str) -> String {
    h.get_by_label(label)
        .accesskit_node()
        .description()
        .unwrap_or_default()
}

#[test]
fn container_runs_from_the_dialog_and_is_removed() {
    if !is_root() {
        return;
    }
    let dir = ConfigDir::new();
    let data = DataDir::new();
    let mut h = gui_with_containers(&dir, &data);
    h.get_by_label("No containers. Click Run container to start one.");

    click(&mut h, "Run container");
    h.get_by_label("New container");
    let dialog = h
        .state_mut()
        .container_dialog_mut()
        .expect("the dialog is open");
    assert_eq!(dialog.image, "default", "the default image is chosen");
    assert!(dialog.images.iter().any(|i| i == "default"));
    type_into(
        &mut h,
        "Command",
        r#"sh -c "echo hello-from-container; sleep 0.2""#,
    );
    assert!(!is_disabled(&h.get_by_label("Run")), "Run is enabled");
    click(&mut h, "Run");
    assert!(
        h.query_by_label("New container").is_none(),
        "the dialog closes after Run"
    );

    let containers = &h.state().rt.workloads.containers.entries;
    assert_eq!(containers.len(), 1, "one container is run");
    let c = &containers[0];
    let id = c.id.0.clone();
    assert_eq!(
        c.config.command,
        vec!["sh", "-c", "echo hello-from-container; sleep 0.2"]
    );
    assert_eq!(c.config.image, "default");
    assert!(c.config.terminal, "a terminal by default");
    assert_eq!(
        visible_panes(&h.state().ui_state.tabs),
        vec![Pane {
            workload: id.clone(),
            view: View::Console
        }],
        "Run opens the container's console"
    );
    h.get_by_label(&format!("{id} — Console"));

    wait_until(
        &mut h,
        "the console to show the output and the library the exit",
        CONTAINER_TIMEOUT,
        |h| console_text(h).contains("hello-from-container") && library_state(h, &id) == "exited",
    );
    h.get_by_label("Ended: exited with code 0");
    h.get_by_label("Container console · exited");
    assert!(data.container_dir(&id).is_dir(), "kept until removed");
    assert!(
        h.query_by_label("Stop").is_none(),
        "no Stop for an exited container"
    );

    click(&mut h, "Remove");
    wait_until(
        &mut h,
        "the container to be removed",
        CONTAINER_TIMEOUT,
        |h| h.state().rt.workloads.containers.entries.is_empty(),
    );
    settle(&mut h);
    assert!(
        !data.container_dir(&id).exists(),
        "{} is gone",
        data.container_dir(&id).display()
    );
    assert!(
        h.query_by_label(&format!("{id} — Console")).is_none(),
        "its tab is closed"
    );
    h.get_by_label("No containers. Click Run container to start one.");
    assert!(
        h.state().rt.log.notifications.is_empty(),
        "no errors:\n{}",
        common::log_text(h.state())
    );
}

#[test]
fn interactive_shell_gets_keys_and_the_console_size_and_can_be_stopped() {
    if !is_root() {
        return;
    }
    let dir = ConfigDir::new();
    let data = DataDir::new();
    let mut h = gui_with_containers(&dir, &data);
    let id = run_from_dialog(&mut h, "sh");
    wait_until(&mut h, "the shell to run", CONTAINER_TIMEOUT, |h| {
        library_state(h, &id) == "running"
    });

    h.get_by_role(Role::Terminal).click();
    h.step();
    h.get_by_role(Role::Terminal)
        .type_text("stty size; echo typed-$((6*7))");
    h.key_press(egui::Key::Enter);
    wait_until(&mut h, "the shell to answer", CONTAINER_TIMEOUT, |h| {
        console_text(h).contains("typed-42")
    });
    let (cols, rows) = h.state().rt.workloads.containers.entries[0].terminal.size();
    assert!(cols > 80, "the grid fills the tab: {cols} columns");
    let size = format!("{rows} {cols}");
    assert!(
        console_text(&h).lines().any(|l| l.trim() == size),
        "the shell's terminal is the console's size ({size}):\n{}",
        console_text(&h)
    );

    // An interactive shell as init ignores SIGTERM: Stop, then Kill.
    click(&mut h, "Stop");
    wait_until(
        &mut h,
        "the container to be stopping",
        CONTAINER_TIMEOUT,
        |h| library_state(h, &id) == "stopping",
    );
    click(&mut h, "Kill");
    wait_until(&mut h, "the container to exit", CONTAINER_TIMEOUT, |h| {
        library_state(h, &id) == "exited"
    });
    h.get_by_label("Ended: killed by signal 9 (SIGKILL); stopped on request");
    click(&mut h, "Remove");
    wait_until(
        &mut h,
        "the container to be removed",
        CONTAINER_TIMEOUT,
        |h| {
            h.state().rt.workloads.containers.entries.is_empty()
                && !data.container_dir(&id).exists()
        },
    );
}

#[test]
fn run_is_disabled_for_an_invalid_memory_limit() {
    let dir = ConfigDir::new();
    let data = DataDir::new();
    let root = is_root();
    let mut h = dialog_gui(&dir, &data, root);
    if root {
        click(&mut h, "Run container");
    } else {
        // Without root the button is disabled; the dialog's checks do not
        // depend on the runtime.
        h.state_mut().apply(UiCommand::OpenContainerDialog);
        settle(&mut h);
    }
    h.get_by_label("New container");
    assert!(!is_disabled(&h.get_by_label("Run")));

    type_into(&mut h, "Memory (MiB)", "1");
    let why = "memory limit 1 MiB is out of range (4 MiB or more)";
    assert!(is_disabled(&h.get_by_label("Run")), "Run is disabled");
    assert!(
        description(&h, "Run").contains(why),
        "the reason is Run's description: {:?}",
        description(&h, "Run")
    );
    assert!(
        h.query_by_label_contains(why).is_some(),
        "the reason is shown in the dialog"
    );
    click(&mut h, "Run");
    assert!(
        h.state().rt.workloads.containers.entries.is_empty(),
        "nothing ran"
    );

    h.get_by_label("Memory (MiB)").click();
    h.step();
    clear_focused_field(&mut h);
    h.get_by_label("Memory (MiB)").type_text("64");
    settle(&mut h);
    assert!(!is_disabled(&h.get_by_label("Run")), "64 MiB is fine");
    assert!(h.query_by_label_contains("out of range").is_none());

    click(&mut h, "Cancel");
    assert!(h.query_by_label("New container").is_none());
    assert!(h.state().rt.workloads.containers.entries.is_empty());
}

#[test]
fn unavailable_containers_say_why() {
    let dir = ConfigDir::new();
    let h = gui(&dir);
    h.get_by_label(&format!("Containers are unavailable: {NO_CONTAINERS}"));
    let run = h.get_by_label("Run container");
    assert!(is_disabled(&run));
    assert_eq!(
        run.accesskit_node().description().as_deref(),
        Some(NO_CONTAINERS)
    );
}

#[test]
fn run_is_disabled_for_an_invalid_port_volume_or_working_directory() {
    let dir = ConfigDir::new();
    let data = DataDir::new();
    let root = is_root();
    let mut h = dialog_gui(&dir, &data, root);
    h.state_mut().apply(UiCommand::OpenContainerDialog);
    settle(&mut h);
    h.get_by_label("New container");

    let run_blocked_by = |h: &Gui, why: &str| {
        assert!(is_disabled(&h.get_by_label("Run")), "Run is disabled");
        assert!(
            description(h, "Run").contains(why),
            "the reason is Run's description: {:?}",
            description(h, "Run")
        );
        assert!(
            h.query_by_label_contains(why).is_some(),
            "the reason is shown in the dialog: {why}"
        );
    };

    click(&mut h, "Add port");
    let network = h.state_mut().container_dialog_mut().map(|d| d.network);
    assert_eq!(
        network,
        Some(NetworkMode::User),
        "a port forward chooses user-mode networking"
    );
    type_into(&mut h, "Host port 1", "http");
    type_into(&mut h, "Container port 1", "80");
    run_blocked_by(
        &h,
        r#"Port forward 1: host port "http" is not a port number (1-65535)."#,
    );
    click(&mut h, "Run");
    assert!(
        h.state().rt.workloads.containers.entries.is_empty(),
        "nothing ran"
    );

    h.get_by_label("Host port 1").click();
    h.step();
    clear_focused_field(&mut h);
    h.get_by_label("Host port 1").type_text("8080");
    settle(&mut h);
    assert!(!is_disabled(&h.get_by_label("Run")), "8080:80 is fine");

    click(&mut h, "None");
    run_blocked_by(&h, "port forwards need user-mode networking");
    click(&mut h, "User-mode");
    assert!(!is_disabled(&h.get_by_label("Run")));

    click(&mut h, "Add volume");
    type_into(&mut h, "Host path 1", "relative/dir");
    run_blocked_by(
        &h,
        r#"Volume 1: the host path "relative/dir" must be absolute."#,
    );
    h.get_by_label("Host path 1").click();
    h.step();
    clear_focused_field(&mut h);
    h.get_by_label("Host path 1")
        .type_text("/no/such/hangar/dir");
    type_into(&mut h, "Container path 1", "/data");
    run_blocked_by(&h, "volume source '/no/such/hangar/dir' does not exist");
    click(&mut h, "Remove volume 1");
    assert!(h.query_by_label("Host path 1").is_none(), "the row is gone");
    assert!(!is_disabled(&h.get_by_label("Run")));

    type_into(&mut h, "Working directory", "app");
    run_blocked_by(&h, "working directory 'app' must be absolute");
    click(&mut h, "Cancel");
    assert!(h.state().rt.workloads.containers.entries.is_empty());
}

#[test]
fn ports_volumes_working_directory_and_user_reach_the_container() {
    if !is_root() {
        return;
    }
    let dir = ConfigDir::new();
    let data = DataDir::new();
    let shared = dir
        .scratch_file("hello.txt", b"from-the-volume\n")
        .parent()
        .expect("a scratch file has a directory")
        .to_path_buf();
    let host_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut h = gui_with_containers(&dir, &data);
    click(&mut h, "Run container");
    type_into(
        &mut h,
        "Command",
        r#"sh -c "pwd; id -u; cat hello.txt; touch new 2>/dev/null || echo read-only-ok; exec httpd -f -p 8080 -h /data""#,
    );
    type_into(&mut h, "Working directory", "/data");
    type_into(&mut h, "User", "1000:1000");
    click(&mut h, "Terminal (interactive programs)");
    click(&mut h, "Add port");
    type_into(&mut h, "Host port 1", &host_port.to_string());
    type_into(&mut h, "Container port 1", "8080");
    click(&mut h, "Add volume");
    type_into(&mut h, "Host path 1", &shared.display().to_string());
    type_into(&mut h, "Container path 1", "/data");
    click(&mut h, "Read-only 1");
    assert!(
        !is_disabled(&h.get_by_label("Run")),
        "valid settings: {}",
        description(&h, "Run")
    );
    click(&mut h, "Run");

    let c = &h.state().rt.workloads.containers.entries[0];
    let id = c.id.0.clone();
    assert_eq!(c.config.network, NetworkMode::User);
    assert_eq!(
        c.config.ports,
        vec![PortForward {
            host_port,
            guest_port: 8080
        }]
    );
    assert_eq!(
        c.config.volumes,
        vec![Volume {
            source: shared.clone(),
            target: "/data".into(),
            read_only: true
        }]
    );
    assert_eq!(c.config.workdir.as_deref(), Some("/data"));
    assert_eq!(c.config.user.as_deref(), Some("1000:1000"));
    assert!(!c.config.terminal);

    click(&mut h, "Logs");
    wait_until(
        &mut h,
        "the container's output in its Logs tab",
        CONTAINER_TIMEOUT,
        |h| {
            ["/data", "1000", "from-the-volume", "read-only-ok"]
                .iter()
                .all(|line| h.query_by_label(line).is_some())
        },
    );
    assert!(
        !shared.join("new").exists(),
        "the read-only volume was not written"
    );
    // The forward on 127.0.0.1 reaches httpd, which serves the volume.
    let until = Instant::now() + Duration::from_secs(20);
    let fetched = loop {
        let mut answer = String::new();
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", host_port)) {
            let _ = s.write_all(b"GET /hello.txt HTTP/1.0\r\n\r\n");
            let _ = s.read_to_string(&mut answer);
        }
        if answer.contains("from-the-volume") {
            break answer;
        }
        assert!(
            Instant::now() < until,
            "the port forward never answered:\n{}",
            common::log_text(h.state())
        );
        h.step();
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(fetched.starts_with("HTTP/1."), "{fetched}");

    click(&mut h, "Stop");
    wait_until(&mut h, "the container to end", CONTAINER_TIMEOUT, |h| {
        matches!(library_state(h, &id).as_str(), "stopping" | "exited")
    });
    if library_state(&h, &id) == "stopping" {
        click(&mut h, "Kill");
    }
    wait_until(&mut h, "the container to exit", CONTAINER_TIMEOUT, |h| {
        library_state(h, &id) == "exited"
    });
    click(&mut h, "Remove");
    wait_until(
        &mut h,
        "the container to be removed",
        CONTAINER_TIMEOUT,
        |h| h.state().rt.workloads.containers.entries.is_empty(),
    );
    assert!(
        shared.join("hello.txt").is_file(),
        "removing a container leaves its volumes alone"
    );
}

#[test]
fn containers_stay_listed_after_the_app_is_closed_and_opened_again() {
    if !is_root() {
        return;
    }
    let dir = ConfigDir::new();
    let data = DataDir::new();
    let mut h = gui_with_containers(&dir, &data);
    let done = run_from_dialog(&mut h, "sh -c 'echo from-the-first-run'");
    wait_until(
        &mut h,
        "the first container to exit",
        CONTAINER_TIMEOUT,
        |h| library_state(h, &done) == "exited",
    );
    let running = run_from_dialog(&mut h, "sleep 1000");
    wait_until(
        &mut h,
        "the second container to run",
        CONTAINER_TIMEOUT,
        |h| library_state(h, &running) == "running",
    );
    // Closing the app ends what runs and keeps both.
    drop(h);
    assert!(data.container_dir(&done).is_dir());
    assert!(data.container_dir(&running).is_dir());

    let mut h = gui_with_containers(&dir, &data);
    settle(&mut h);
    assert_eq!(library_state(&h, &done), "exited");
    assert_eq!(library_state(&h, &running), "exited");
    let ids: Vec<String> = h
        .state()
        .rt
        .workloads
        .containers
        .entries
        .iter()
        .map(|c| c.id.0.clone())
        .collect();
    assert_eq!(ids, vec![done.clone(), running.clone()], "oldest first");
    let second = &h.state().rt.workloads.containers.entries[1];
    assert_eq!(
        second.exit_description.as_deref(),
        Some("killed by signal 9 (SIGKILL); stopped when Hangar ended")
    );
    // The first one's console shows what it printed in the earlier run.
    let first = &h.state().rt.workloads.containers.entries[0];
    assert!(
        first.terminal.screen_text().contains("from-the-first-run"),
        "{}",
        first.terminal.screen_text()
    );
    // Both can be removed, files and all.
    for id in [&done, &running] {
        h.state_mut()
            .apply(UiCommand::RemoveContainer(id.to_string()));
        settle(&mut h);
    }
    wait_until(&mut h, "both to be removed", CONTAINER_TIMEOUT, |h| {
        h.state().rt.workloads.containers.entries.is_empty()
    });
    assert!(!data.container_dir(&done).exists());
    assert!(!data.container_dir(&running).exists());
    assert!(
        h.state().rt.log.notifications.is_empty(),
        "no errors:\n{}",
        common::log_text(h.state())
    );
}
