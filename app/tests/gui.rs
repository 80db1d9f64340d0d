//! GUI tests that need no running guest: the New machine wizard, the
//! library (broken files, delete, duplicate), the saved layout, and the
//! host check on Start. Each test drives the real panels through
//! egui_kittest, on a config directory of its own.

mod common;

use egui::accesskit::Role;
use egui_kittest::kittest::{NodeT as _, Queryable as _};
use hangar::gui::app::AppEnv;
use hangar::gui::shell::tabs::{visible_panes, Pane, View};
use hangar::gui::vm::machine::Entry;
use hangar::gui::vm::wizard::CUSTOM_CMDLINE;
use hangar_engine::{DefaultKit, HostProbe};

use common::{
    clear_focused_field, click, fake_bzimage, gui, gui_with, is_disabled, library_entry,
    library_state, machine_id, select, settle, type_into, ConfigDir, Gui,
};

/// The explanation `text` is shown right under the field labelled `field`.
#[track_caller]
fn assert_explained_under(h: &Gui, field: &str, text: &str) {
    let errors: Vec<_> = h.query_all_by_label_contains(text).collect();
    assert_eq!(
        errors.len(),
        1,
        "expected the explanation {text:?} once, found {errors:?}"
    );
    let error = errors[0].rect();
    let field_bottom = h
        .query_all_by_label(field)
        .map(|n| n.rect().bottom())
        .fold(f32::NAN, f32::max);
    assert!(!field_bottom.is_nan(), "no field labelled {field:?}");
    let gap = error.top() - field_bottom;
    assert!(
        (-1.0..40.0).contains(&gap),
        "the explanation {text:?} is not next to the field {field:?} ({gap} points below it)"
    );
}

#[track_caller]
fn assert_disabled(h: &Gui, label: &str) {
    assert!(
        is_disabled(&h.get_by_label(label)),
        "{label:?} should be disabled"
    );
}

#[track_caller]
fn assert_enabled(h: &Gui, label: &str) {
    assert!(
        !is_disabled(&h.get_by_label(label)),
        "{label:?} should be enabled"
    );
}

/// A copy of a test guest the test may delete.
fn own_kernel(dir: &ConfigDir, name: &str) -> std::path::PathBuf {
    let bytes = std::fs::read(common::guest("hello")).expect("cannot read the hello guest");
    dir.scratch_file(name, &bytes)
}

#[test]
fn wizard_creates_a_machine() {
    let dir = ConfigDir::new();
    let kernel = common::guest("hello");
    // A stand-in for the default kit, so the wizard starts on "Default Linux"
    // and the test has to switch to its own kernel.
    let kit_dir = dir.path().join("kit");
    std::fs::create_dir_all(&kit_dir).expect("cannot create the kit dir");
    std::fs::write(kit_dir.join("vmlinuz"), fake_bzimage()).expect("cannot write the kit kernel");
    std::fs::write(kit_dir.join("initramfs.cpio.gz"), b"initramfs")
        .expect("cannot write the kit initramfs");
    std::fs::write(kit_dir.join("VERSION"), b"6.1.0-test\n").expect("cannot write the kit version");
    let kit = DefaultKit::in_dir(&kit_dir).expect("the fake kit is complete");
    let mut h = gui_with(AppEnv {
        config_dir: dir.path().to_path_buf(),
        data_dir: Some(dir.data()),
        kit: Some(kit),
        containers: common::no_containers(),
    });
    h.get_by_label("No machines yet. Click New… to create one.");

    click(&mut h, "New…");
    h.get_by_label("New virtual machine");
    type_into(&mut h, "Name", "Test box");
    click(&mut h, "Linux kernel + initramfs");
    type_into(&mut h, "Kernel", &kernel.display().to_string());
    assert_enabled(&h, "Next");
    click(&mut h, "Next");
    h.get_by_role_and_label(Role::Slider, "Virtual CPUs");
    h.get_by_role_and_label(Role::Slider, "Memory");
    click(&mut h, "Next");
    h.get_by_label("Test box");
    h.get_by_label(&kernel.display().to_string());
    click(&mut h, "Create");

    assert!(
        h.query_by_label("New virtual machine").is_none(),
        "the wizard closes after Create"
    );
    let files = dir.definition_files();
    assert_eq!(files.len(), 1, "one definition file: {files:?}");
    let defs = dir.definitions();
    let def = &defs[0];
    assert_eq!(
        files[0].file_stem().and_then(|s| s.to_str()),
        Some(def.id.as_str())
    );
    assert_eq!(def.version, 1);
    assert_eq!(def.config.name, "Test box");
    let boot = def.config.kernel_boot().expect("a kernel boot");
    assert_eq!(boot.kernel, kernel);
    assert_eq!(boot.initrd, None);
    assert_eq!(def.config.vcpus, 1);
    assert_eq!(
        def.config.memory_mib,
        hangar_engine::kit::DEFAULT_MEMORY_MIB
    );
    assert_eq!(
        boot.cmdline, CUSTOM_CMDLINE,
        "switching to a custom kernel switches the command line"
    );

    assert_eq!(library_state(&h, "Test box"), "stopped");
    assert_eq!(
        h.state().ui_state.selected.as_deref(),
        Some(def.id.as_str()),
        "the new machine is selected"
    );
    assert_enabled(&h, "Start");
}

#[test]
fn wizard_explains_and_blocks_invalid_choices() {
    let dir = ConfigDir::new();
    let kernel = own_kernel(&dir, "kernel.elf");
    dir.define("Existing", &kernel);
    let mut h = gui(&dir);
    click(&mut h, "New…");
    click(&mut h, "Linux kernel + initramfs");

    // No name yet.
    type_into(&mut h, "Kernel", &kernel.display().to_string());
    assert_explained_under(&h, "Name", "Give the machine a name.");
    assert_disabled(&h, "Next");

    // A name that is taken (names compare without case).
    type_into(&mut h, "Name", "EXISTING");
    assert_explained_under(&h, "Name", "A machine named \"EXISTING\" already exists.");
    assert_disabled(&h, "Next");
    clear_focused_field(&mut h);
    h.get_by_label("Name").type_text("Fresh");
    settle(&mut h);
    assert!(h.query_by_label_contains("already exists").is_none());
    assert!(h.query_by_label("Give the machine a name.").is_none());
    assert_enabled(&h, "Next");

    // A kernel file that does not exist.
    h.get_by_label("Kernel").click();
    h.step();
    clear_focused_field(&mut h);
    h.get_by_label("Kernel").type_text("/nonexistent/vmlinuz");
    settle(&mut h);
    assert_explained_under(&h, "Kernel", "cannot read kernel /nonexistent/vmlinuz");
    assert_disabled(&h, "Next");
    clear_focused_field(&mut h);
    h.get_by_label("Kernel")
        .type_text(&kernel.display().to_string());
    settle(&mut h);
    assert!(h.query_by_label_contains("cannot read kernel").is_none());
    assert_enabled(&h, "Next");
    click(&mut h, "Next");

    // Absurd memory, typed into the number next to the slider.
    let host_mib = hangar_engine::config::host_memory_mib();
    h.get_by_role_and_label(Role::SpinButton, "Memory")
        .set_value_accesskit(100.0 * 1024.0 * 1024.0);
    settle(&mut h);
    assert_eq!(
        wizard_memory(&h),
        100 * 1024 * 1024,
        "the typed value is kept, to be explained"
    );
    if host_mib > 0 {
        assert_explained_under(
            &h,
            "Memory",
            &format!("This computer has only {host_mib} MiB."),
        );
        assert_disabled(&h, "Next");
    }
    h.get_by_role_and_label(Role::SpinButton, "Memory")
        .set_value_accesskit(1.0);
    settle(&mut h);
    assert_explained_under(&h, "Memory", "At least 16 MiB.");
    assert_disabled(&h, "Next");
    click(&mut h, "128 MiB");
    assert_eq!(wizard_memory(&h), 128);
    assert!(h.query_by_label_contains("At least").is_none());
    assert_enabled(&h, "Next");
    click(&mut h, "Next");

    // The summary: Create is possible, until the kernel file disappears.
    assert_enabled(&h, "Create");
    assert_enabled(&h, "Create and start");
    std::fs::remove_file(&kernel).expect("cannot remove the kernel copy");
    settle(&mut h);
    assert_disabled(&h, "Create");
    assert_disabled(&h, "Create and start");
    h.get_by_label_contains("cannot read kernel");

    // Nothing was written by all this.
    assert_eq!(dir.definition_files().len(), 1);
}

fn wizard_memory(h: &Gui) -> u32 {
    let value = h
        .get_by_role_and_label(Role::SpinButton, "Memory")
        .accesskit_node()
        .numeric_value()
        .expect("the memory field has a value");
    value as u32
}

#[test]
fn corrupt_definition_is_shown_in_error_and_left_alone() {
    let dir = ConfigDir::new();
    let kernel = own_kernel(&dir, "kernel.elf");
    dir.define("Good one", &kernel);
    let bad = dir.machines().join("x.json");
    let garbage: &[u8] = b"{ \"version\": 1, \"id\": \"x\", this is not JSON \x00\xff";
    std::fs::write(&bad, garbage).expect("cannot write the corrupt file");

    let mut h = gui(&dir);
    let reason = match h.state().rt.workloads.machines.entries.get("x") {
        Some(Entry::Broken { reason, .. }) => reason.clone(),
        _ => panic!("x.json should load as a broken entry"),
    };
    assert!(reason.contains("not a valid definition"), "{reason}");
    let entry = library_entry(&h, "x");
    assert!(entry
        .accesskit_node()
        .label()
        .is_some_and(|l| l.contains("error")));
    assert_eq!(
        entry.accesskit_node().description().as_deref(),
        Some(reason.as_str()),
        "the reason is its hover text"
    );
    assert_eq!(
        library_state(&h, "Good one"),
        "stopped",
        "the other machines load"
    );
    assert!(
        h.state()
            .rt
            .log
            .lines
            .iter()
            .any(|l| l.message.contains("x.json") && l.message.contains(&reason)),
        "the Log tells which file and why:\n{}",
        common::log_text(h.state())
    );

    // The error also popped up as a notification, which can be dismissed.
    assert_eq!(h.state().rt.log.notifications.len(), 1);
    click(&mut h, "Dismiss");
    assert!(h.state().rt.log.notifications.is_empty());
    assert!(h.query_by_label("Dismiss").is_none());

    select(&mut h, "x");
    h.get_by_label("This definition cannot be used:");
    h.get_by_label(&reason);
    assert!(
        h.query_by_label("Start").is_none(),
        "no actions on a broken entry"
    );
    assert!(h.query_by_label("Delete…").is_none());

    // Work on the other machine and save the layout: x.json stays as it was.
    select(&mut h, "Good one");
    click(&mut h, "Duplicate");
    click(&mut h, "Overview");
    h.state_mut().save_ui_state();
    drop(h);
    assert_eq!(
        std::fs::read(&bad).expect("x.json is still there"),
        garbage,
        "x.json is unchanged"
    );
    let h = gui(&dir);
    assert_eq!(library_state(&h, "x"), "error");
}

#[test]
fn delete_asks_first_and_duplicate_makes_a_copy() {
    let dir = ConfigDir::new();
    let kernel = own_kernel(&dir, "kernel.elf");
    let alpha = dir.define("Alpha", &kernel);
    dir.define("Beta", &kernel);
    let mut h = gui(&dir);

    select(&mut h, "Alpha");
    click(&mut h, "Console");
    click(&mut h, "Overview");
    h.get_by_label("Alpha — Console");
    h.get_by_label("Alpha — Overview");

    // Duplicate.
    click(&mut h, "Duplicate");
    assert_eq!(library_state(&h, "Alpha (copy)"), "stopped");
    let copy_id = machine_id(&h, "Alpha (copy)");
    assert_ne!(copy_id, alpha);
    let defs = dir.definitions();
    assert_eq!(defs.len(), 3);
    let copy = defs
        .iter()
        .find(|d| d.id == copy_id)
        .expect("the copy is on disk");
    let original = defs
        .iter()
        .find(|d| d.id == alpha)
        .expect("the original is on disk");
    assert_eq!(copy.config.name, "Alpha (copy)");
    assert_eq!(copy.config.kernel_boot(), original.config.kernel_boot());
    assert_eq!(copy.config.memory_mib, original.config.memory_mib);
    select(&mut h, "Alpha");
    click(&mut h, "Duplicate");
    assert_eq!(
        library_state(&h, "Alpha (copy) 2"),
        "stopped",
        "a second copy gets a new name"
    );
    assert_eq!(dir.definition_files().len(), 4);

    // Delete asks first; Cancel keeps everything.
    select(&mut h, "Alpha");
    click(&mut h, "Delete…");
    h.get_by_label("Delete machine?");
    h.get_by_label("Delete the machine \"Alpha\"?");
    assert_eq!(
        dir.definition_files().len(),
        4,
        "nothing deleted before confirming"
    );
    click(&mut h, "Cancel");
    assert!(h.query_by_label("Delete machine?").is_none());
    assert_eq!(dir.definition_files().len(), 4);

    click(&mut h, "Delete…");
    click(&mut h, "Delete");
    assert!(h.query_by_label("Delete machine?").is_none());
    let left: Vec<String> = dir
        .definitions()
        .into_iter()
        .map(|d| d.config.name)
        .collect();
    assert_eq!(left.len(), 3, "only Alpha's file is gone: {left:?}");
    assert!(!left.contains(&"Alpha".to_string()));
    assert!(kernel.is_file(), "the kernel file stays");
    assert!(!h.state().rt.workloads.machines.entries.contains_key(&alpha));
    assert!(
        h.query_by_label("Alpha — Console").is_none(),
        "its tabs are closed"
    );
    assert!(h.query_by_label("Alpha — Overview").is_none());
    assert!(h.state().ui_state.tabs.tiles.tiles().all(|t| match t {
        egui_tiles::Tile::Pane(p) => p.workload != alpha,
        egui_tiles::Tile::Container(_) => true,
    }));
    assert_eq!(library_state(&h, "Beta"), "stopped");
    assert_eq!(library_state(&h, "Alpha (copy)"), "stopped");
}

fn sorted(mut panes: Vec<Pane>) -> Vec<Pane> {
    panes.sort_by(|a, b| (&a.workload, a.view as u8).cmp(&(&b.workload, b.view as u8)));
    panes
}

#[test]
fn window_layout_is_restored() {
    let dir = ConfigDir::new();
    let kernel = own_kernel(&dir, "kernel.elf");
    let a = dir.define("Left", &kernel);
    let b = dir.define("Right", &kernel);
    let mut h = gui(&dir);
    select(&mut h, "Left");
    click(&mut h, "Console");
    click(&mut h, "Overview");
    select(&mut h, "Right");
    click(&mut h, "Console beside");
    let visible = sorted(visible_panes(&h.state().ui_state.tabs));
    assert_eq!(
        visible,
        vec![
            Pane {
                workload: a.clone(),
                view: View::Overview
            },
            Pane {
                workload: b.clone(),
                view: View::Console
            },
        ]
    );
    // Beside again: still one console of Right, still both shown.
    click(&mut h, "Console beside");
    assert_eq!(sorted(visible_panes(&h.state().ui_state.tabs)), visible);
    assert_eq!(h.query_all_by_label("Right — Console").count(), 1);
    h.state_mut().save_ui_state();
    drop(h);

    let h = gui(&dir);
    assert_eq!(sorted(visible_panes(&h.state().ui_state.tabs)), visible);
    for title in ["Left — Console", "Left — Overview", "Right — Console"] {
        h.get_by_label(title);
    }
    assert_eq!(h.state().ui_state.selected.as_deref(), Some(b.as_str()));
    drop(h);

    // A machine deleted behind Hangar's back loses its tabs, and only those.
    std::fs::remove_file(dir.machines().join(format!("{b}.json")))
        .expect("cannot remove Right's file");
    let h = gui(&dir);
    assert!(h.query_by_label("Right — Console").is_none());
    h.get_by_label("Left — Console");
    h.get_by_label("Left — Overview");
    assert_eq!(h.state().ui_state.selected, None);
}

#[test]
fn linux_kernel_cannot_start_without_hardware_virtualization() {
    let dir = ConfigDir::new();
    let kernel = dir.scratch_file("vmlinuz", &fake_bzimage());
    dir.define("Linux box", &kernel);
    let mut h = gui(&dir);
    select(&mut h, "Linux box");
    let host = HostProbe::probe();
    if host.can_run_linux() {
        eprintln!("note: this host has hardware KVM; Start is allowed for Linux kernels");
        assert_enabled(&h, "Start");
        return;
    }
    assert_disabled(&h, "Start");
    let why = host.linux_refusal().unwrap_or_else(|| host.summary());
    assert_eq!(
        h.get_by_label("Start")
            .accesskit_node()
            .description()
            .as_deref(),
        Some(why.as_str()),
        "the reason is the disabled Start button's description"
    );
    // The banner says it once; hovering Start shows it again as a tooltip.
    let shown_before = h.query_all_by_label(&why).count();
    h.get_by_label("Start").hover();
    h.run_steps(8);
    assert_eq!(
        h.query_all_by_label(&why).count(),
        shown_before + 1,
        "hovering Start explains why it is disabled"
    );
    click(&mut h, "Start");
    assert!(h
        .state()
        .rt
        .workloads
        .machines
        .get(&machine_id(&h, "Linux box"))
        .is_some_and(|m| !m.status.is_active()));
}
