//! GUI tests of VM disks and networking: the wizard's Debian 12 template
//! (a real clone of a small fake template in a private data directory),
//! an existing disk image (a real qcow2 made by `qemu-img`, and a corrupt
//! one), the Overview's Add disk / Grow / Detach / network editing, Delete
//! with its disk files, and the disk buttons disabled while a real guest
//! runs (skipped, loudly, without /dev/kvm).

mod common;

use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use egui::accesskit::{Role, Toggled};
use egui_kittest::kittest::{NodeT as _, Queryable as _};
use hangar::gui::app::AppEnv;
use hangar::gui::command::UiCommand;
use hangar::gui::vm::delete_dialog::DELETE_DISKS_LABEL;
use hangar::gui::vm::overview_tab::STOP_FOR_DISKS;
use hangar::gui::vm::template_clone::TemplateMachine;
use hangar::gui::vm::wizard::Page;
use hangar_engine::{
    disks, templates, BootSource, DefaultKit, DiskConfig, DiskFormat, KernelBoot,
    MachineDefinition, MachineStore, PortForward, VmConfig,
};

use common::{
    click, gui_with, is_disabled, machine_id, select, settle, type_into, wait_until, ConfigDir,
    Gui, GUEST_TIMEOUT,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A stand-in for the default guest kit in `dir` (the wizard only needs
/// its files to exist; nothing boots it here).
fn fake_kit(dir: &ConfigDir) -> DefaultKit {
    let kit_dir = dir.path().join("kit");
    std::fs::create_dir_all(&kit_dir).expect("cannot create the kit dir");
    std::fs::write(kit_dir.join("vmlinuz"), common::fake_bzimage())
        .expect("cannot write the kit kernel");
    std::fs::write(kit_dir.join("initramfs.cpio.gz"), b"initramfs")
        .expect("cannot write the kit initramfs");
    std::fs::write(kit_dir.join("VERSION"), b"6.1.0-test\n").expect("cannot write the version");
    DefaultKit::in_dir(&kit_dir).expect("the fake kit is complete")
}

/// A Debian 12 template where `templates::available` looks for it: a
/// sparse raw image of `size` bytes with data in its first 64 KiB and at
/// 10 MiB. Returns the image's path.
fn fake_template(dir: &ConfigDir, size: u64) -> PathBuf {
    let tdir = dir.data().join("templates").join(templates::DEBIAN_12);
    std::fs::create_dir_all(&tdir).expect("cannot create the template dir");
    let image = tdir.join("disk.raw");
    let f = std::fs::File::create(&image).expect("cannot create the template image");
    f.set_len(size).expect("cannot size the template image");
    let pattern: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8 + 1).collect();
    f.write_all_at(&pattern, 0)
        .expect("cannot write the template image");
    f.write_all_at(b"ext4 superblock stand-in", 10 * MIB)
        .expect("cannot write the template image");
    f.sync_all().expect("cannot sync the template image");
    assert!(
        matches!(
            templates::available(&dir.data())[0],
            hangar_engine::TemplateStatus::Ready(_)
        ),
        "the fake template is not what templates::available expects"
    );
    image
}

/// The app with a kit (or not) and the config dir's private data dir.
fn app(dir: &ConfigDir, kit: Option<DefaultKit>) -> Gui {
    gui_with(AppEnv {
        config_dir: dir.path().to_path_buf(),
        data_dir: Some(dir.data()),
        kit,
        containers: common::no_containers(),
    })
}

/// `qemu-img create -f qcow2 PATH SIZE`; fails the test if qemu-img is missing.
fn qemu_img_qcow2(path: &Path, size: &str) {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run qemu-img ({e}): install qemu-utils (packaging/setup.sh does)")
        });
    assert!(
        out.status.success(),
        "qemu-img create failed: {}",
        String::from_utf8_lossy(&out.stderr)
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

#[track_caller]
fn assert_shown(h: &Gui, text: &str) {
    assert!(
        h.query_all_by_label_contains(text).next().is_some(),
        "expected {text:?} on screen"
    );
}

/// Set a number field (DragValue) labelled `label`.
fn set_number(h: &mut Gui, label: &str, value: f64) {
    h.get_by_role_and_label(Role::SpinButton, label)
        .set_value_accesskit(value);
    settle(h);
}

fn is_checked(h: &Gui, label: &str) -> bool {
    h.get_by_label(label).accesskit_node().toggled() == Some(Toggled::True)
}

/// The one definition on disk.
#[track_caller]
fn only_definition(dir: &ConfigDir) -> MachineDefinition {
    let defs = dir.definitions();
    assert_eq!(defs.len(), 1, "one definition: {defs:?}");
    defs.into_iter().next().expect("just checked")
}

/// The definition of machine `id` on disk.
#[track_caller]
fn definition(dir: &ConfigDir, id: &str) -> MachineDefinition {
    dir.definitions()
        .into_iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("no definition {id}"))
}

/// Save a stopped machine booting `kernel` whose disks are made by
/// `disks_of(own folder)` (the folder exists); returns its id.
fn define_with_disks(
    dir: &ConfigDir,
    name: &str,
    kernel: &Path,
    disks_of: impl FnOnce(&Path) -> Vec<DiskConfig>,
) -> String {
    let mut def = MachineDefinition::new(VmConfig {
        name: name.into(),
        vcpus: 1,
        memory_mib: 64,
        boot: BootSource::Kernel(KernelBoot {
            kernel: kernel.to_path_buf(),
            initrd: None,
            cmdline: String::new(),
        }),
        display: None,
        disks: Vec::new(),
        network: None,
    });
    let own = dir.data().join("machines").join(&def.id);
    std::fs::create_dir_all(&own).expect("cannot create the machine folder");
    def.config.disks = disks_of(&own);
    MachineStore::open(dir.path())
        .expect("cannot open the store")
        .create(&def)
        .expect("cannot save the definition");
    def.id
}

fn new_raw(path: PathBuf, size: u64) -> DiskConfig {
    disks::create(&path, DiskFormat::Raw, size).expect("cannot create a raw disk");
    DiskConfig {
        path,
        format: DiskFormat::Raw,
        read_only: false,
    }
}

#[test]
fn wizard_clones_the_debian_template_with_network() {
    let dir = ConfigDir::new();
    let template = fake_template(&dir, 64 * MIB);
    let kit = fake_kit(&dir);
    let mut h = app(&dir, Some(kit.clone()));

    click(&mut h, "New…");
    assert_enabled(&h, "Debian 12");
    assert!(
        is_checked(&h, "Debian 12"),
        "a built template is the default"
    );
    assert_shown(&h, "its own copy of the Debian 12 disk");
    type_into(&mut h, "Name", "Deb box");
    click(&mut h, "Next");

    // Disk size: 8 GiB by default, and explained when impossible.
    assert_eq!(h.state_mut().wizard_mut().map(|w| w.disk_size_gib), Some(8));
    set_number(&mut h, "Disk size", 0.0);
    assert_shown(&h, "A disk needs at least 1 GiB.");
    assert_disabled(&h, "Next");
    set_number(&mut h, "Disk size", 2.0);
    assert!(h.query_by_label_contains("at least 1 GiB").is_none());

    // Network: on by default for Debian; duplicates and port 0 refused inline.
    assert!(
        is_checked(&h, "Network (user-mode)"),
        "network on by default"
    );
    click(&mut h, "Add port forward");
    type_into(&mut h, "Host port 1", "2222");
    type_into(&mut h, "Guest port 1", "22");
    assert_enabled(&h, "Next");
    click(&mut h, "Add port forward");
    type_into(&mut h, "Host port 2", "2222");
    type_into(&mut h, "Guest port 2", "80");
    assert_shown(&h, "the host port is forwarded twice");
    assert_disabled(&h, "Next");
    h.get_by_label("Host port 2").click();
    h.step();
    common::clear_focused_field(&mut h);
    h.get_by_label("Host port 2").type_text("0");
    settle(&mut h);
    assert_shown(&h, "port 0 cannot be forwarded");
    assert_disabled(&h, "Next");
    click(&mut h, "Remove port forward 2");
    assert!(h.query_by_label_contains("cannot be forwarded").is_none());
    assert_enabled(&h, "Next");
    click(&mut h, "Next");

    assert_shown(&h, "2 GiB, raw: a copy of the Debian 12 disk");
    assert_shown(&h, "user-mode, 127.0.0.1:2222 → guest:22");
    click(&mut h, "Create");
    assert!(h.query_by_label("New virtual machine").is_none());

    wait_until(&mut h, "the clone to finish", GUEST_TIMEOUT, |h| {
        h.state().clone_job().is_none() && h.state().rt.workloads.machines.entries.len() == 1
    });
    let def = only_definition(&dir);
    assert_eq!(def.config.name, "Deb box");
    let disk = dir.data().join("machines").join(&def.id).join("disk.raw");
    assert_eq!(
        def.config.disks,
        vec![DiskConfig {
            path: disk.clone(),
            format: DiskFormat::Raw,
            read_only: false,
        }]
    );
    assert_eq!(
        def.config.network.as_ref().map(|n| n.port_forwards.clone()),
        Some(vec![PortForward {
            host_port: 2222,
            guest_port: 22
        }])
    );
    let boot = def.config.kernel_boot().expect("a kernel boot");
    assert_eq!(boot.kernel, kit.kernel);
    assert_eq!(boot.initrd.as_ref(), Some(&kit.initrd));
    assert!(
        boot.cmdline.ends_with("root=/dev/vda rw"),
        "{}",
        boot.cmdline
    );

    let meta = std::fs::metadata(&disk).expect("the cloned disk exists");
    assert_eq!(meta.len(), 2 * GIB, "grown to the size chosen");
    assert!(
        meta.blocks() * 512 < 4 * MIB,
        "the clone is sparse: {} bytes allocated",
        meta.blocks() * 512
    );
    let mut head = vec![0u8; 64 * 1024];
    let clone = std::fs::File::open(&disk).expect("cannot open the clone");
    clone
        .read_exact_at(&mut head, 0)
        .expect("cannot read the clone");
    let mut want = vec![0u8; 64 * 1024];
    std::fs::File::open(&template)
        .and_then(|t| t.read_exact_at(&mut want, 0))
        .expect("cannot read the template");
    assert_eq!(head, want, "the clone has the template's data");
    // Nothing else in the machine's folder (no temporary file left).
    let names: Vec<_> = std::fs::read_dir(disk.parent().expect("a folder"))
        .expect("cannot list the machine folder")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn wizard_shows_why_debian_is_unavailable_and_how_big_it_must_be() {
    // Not built: shown, disabled, with the reason.
    let dir = ConfigDir::new();
    let mut h = app(&dir, Some(fake_kit(&dir)));
    click(&mut h, "New…");
    assert_disabled(&h, "Debian 12");
    assert_shown(
        &h,
        "Debian 12 is not built yet: run packaging/setup.sh to build it.",
    );
    assert!(
        is_checked(&h, "Default Linux (Debian kernel 6.1.0-test)"),
        "the kit is the default without a template"
    );

    // A template bigger than the default size: the default follows it, and
    // a smaller size is explained.
    let dir = ConfigDir::new();
    fake_template(&dir, 9 * GIB);
    let mut h = app(&dir, Some(fake_kit(&dir)));
    click(&mut h, "New…");
    type_into(&mut h, "Name", "Big");
    click(&mut h, "Next");
    assert_eq!(h.state_mut().wizard_mut().map(|w| w.disk_size_gib), Some(9));
    set_number(&mut h, "Disk size", 8.0);
    assert_shown(&h, "Debian 12 needs at least 9 GiB");
    assert_disabled(&h, "Next");
}

#[test]
fn template_clone_failure_leaves_no_machine_and_no_file() {
    let dir = ConfigDir::new();
    fake_template(&dir, 64 * MIB);
    let mut h = app(&dir, Some(fake_kit(&dir)));
    // The template goes away after the wizard offered it.
    let request = TemplateMachine {
        template: templates::DEBIAN_12.into(),
        name: "Doomed".into(),
        vcpus: 1,
        memory_mib: 256,
        disk_size: GIB,
        network: None,
        cmdline: None,
        start: false,
    };
    std::fs::remove_dir_all(dir.data().join("templates")).expect("cannot remove the template");
    h.state_mut()
        .apply(UiCommand::CreateFromTemplate(request.clone()));
    settle(&mut h);
    assert!(dir.definitions().is_empty());
    assert!(
        common::log_text(h.state()).contains("Debian 12 is not available"),
        "{}",
        common::log_text(h.state())
    );

    // A copy that fails on its thread (a disk smaller than the template):
    // shown in the library, logged, and nothing left behind.
    fake_template(&dir, 64 * MIB);
    h.state_mut()
        .apply(UiCommand::CreateFromTemplate(TemplateMachine {
            disk_size: 32 * MIB,
            ..request
        }));
    wait_until(&mut h, "the copy to fail", GUEST_TIMEOUT, |h| {
        h.state()
            .clone_job()
            .is_some_and(|j| j.outcome.as_ref().is_some_and(|o| o.is_err()))
    });
    settle(&mut h);
    assert_shown(&h, "\"Doomed\" was not created: ");
    assert_shown(&h, "too small for Debian 12");
    assert!(common::log_text(h.state()).contains("too small for Debian 12"));
    click(&mut h, "Dismiss the failed copy");
    assert!(h.state().clone_job().is_none());
    assert!(dir.definitions().is_empty(), "no machine");
    let machines = dir.data().join("machines");
    let left: Vec<_> = std::fs::read_dir(&machines)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "nothing left in {}: {left:?}",
        machines.display()
    );
}

#[test]
fn existing_disk_image_is_inspected_and_a_corrupt_one_refused() {
    let dir = ConfigDir::new();
    let kit = fake_kit(&dir);
    let good = dir.path().join("scratch").join("guest.qcow2");
    std::fs::create_dir_all(good.parent().expect("a folder")).expect("cannot create scratch");
    qemu_img_qcow2(&good, "1G");
    // The qcow2 magic and then nonsense: a damaged image.
    let mut bad = b"QFI\xfb".to_vec();
    bad.extend_from_slice(&[0xff; 600]);
    let bad = dir.scratch_file("broken.qcow2", &bad);

    let mut h = app(&dir, Some(kit.clone()));
    click(&mut h, "New…");
    type_into(&mut h, "Name", "Imported");
    click(&mut h, "Existing disk image");
    assert_shown(&h, "Choose a disk image (raw or qcow2).");
    assert_disabled(&h, "Next");

    type_into(&mut h, "Disk image", &bad.display().to_string());
    assert_shown(&h, &bad.display().to_string());
    // The engine's own words about the damage, under the field.
    let why = disks::inspect(&bad).expect_err("the image is damaged");
    assert_shown(&h, &why.to_string());
    assert!(
        h.query_by_label_contains("qcow2 · ").is_none(),
        "no sizes shown"
    );
    assert_disabled(&h, "Next");
    // Even on the Summary page, Create stays disabled.
    if let Some(w) = h.state_mut().wizard_mut() {
        w.page = Page::Summary;
    }
    settle(&mut h);
    assert_disabled(&h, "Create");
    assert_disabled(&h, "Create and start");
    if let Some(w) = h.state_mut().wizard_mut() {
        w.page = Page::Source;
    }
    settle(&mut h);

    h.get_by_label("Disk image").click();
    h.step();
    common::clear_focused_field(&mut h);
    h.get_by_label("Disk image")
        .type_text(&good.display().to_string());
    settle(&mut h);
    assert_shown(&h, "qcow2 · 1.0 GiB · ");
    assert_enabled(&h, "Next");
    click(&mut h, "Next");
    assert!(
        !is_checked(&h, "Network (user-mode)"),
        "no network unless asked for an image"
    );
    click(&mut h, "Next");
    click(&mut h, "Create");

    let def = only_definition(&dir);
    assert_eq!(
        def.config.disks,
        vec![DiskConfig {
            path: good.clone(),
            format: DiskFormat::Qcow2,
            read_only: false,
        }]
    );
    let boot = def.config.kernel_boot().expect("a kernel boot");
    assert_eq!(boot.kernel, kit.kernel);
    assert!(boot.cmdline.ends_with("root=/dev/vda rw"));
    assert_eq!(def.config.network, None);
}

#[test]
fn overview_adds_grows_and_detaches_disks_and_edits_the_network() {
    let dir = ConfigDir::new();
    let id = define_with_disks(&dir, "Disky", &common::guest("hello"), |_| Vec::new());
    let external = dir.path().join("scratch").join("extra.qcow2");
    std::fs::create_dir_all(external.parent().expect("a folder")).expect("cannot create scratch");
    qemu_img_qcow2(&external, "64M");
    let mut h = app(&dir, None);
    select(&mut h, "Disky");
    click(&mut h, "Overview");
    assert_shown(&h, "No disks.");

    // A new raw disk in the machine's folder.
    click(&mut h, "Add disk…");
    set_number(&mut h, "New disk size", 1.0);
    click(&mut h, "Add");
    let own = dir.data().join("machines").join(&id);
    let raw = own.join("disk-1.raw");
    assert_eq!(
        definition(&dir, &id).config.disks,
        vec![DiskConfig {
            path: raw.clone(),
            format: DiskFormat::Raw,
            read_only: false
        }],
        "{}",
        common::log_text(h.state())
    );
    assert_eq!(std::fs::metadata(&raw).map(|m| m.len()).ok(), Some(GIB));
    assert_shown(&h, "raw · 1.0 GiB virtual · ");

    // Grow it: 2 GiB is offered; 1 GiB (not more) is explained.
    click(&mut h, "Grow vda");
    set_number(&mut h, "New size", 1.0);
    assert_shown(&h, "disks only grow");
    assert_disabled(&h, "Grow");
    set_number(&mut h, "New size", 3.0);
    click(&mut h, "Grow");
    assert_eq!(std::fs::metadata(&raw).map(|m| m.len()).ok(), Some(3 * GIB));
    assert_shown(&h, "raw · 3.0 GiB virtual · ");

    // A new qcow2 disk.
    click(&mut h, "Add disk…");
    click(&mut h, "qcow2");
    click(&mut h, "Add");
    let qcow = own.join("disk-1.qcow2");
    let info = disks::inspect(&qcow).expect("the new qcow2 disk is valid");
    assert_eq!(
        (info.format, info.virtual_size),
        (DiskFormat::Qcow2, 8 * GIB)
    );

    // An existing image, attached read-only where it is.
    click(&mut h, "Add disk…");
    click(&mut h, "Existing image");
    type_into(&mut h, "Image path", &external.display().to_string());
    assert_shown(&h, "qcow2 · 64.0 MiB · ");
    click(&mut h, "Read-only");
    click(&mut h, "Add");
    let disks_now = definition(&dir, &id).config.disks;
    assert_eq!(disks_now.len(), 3, "{disks_now:?}");
    assert_eq!(
        disks_now[2],
        DiskConfig {
            path: external.clone(),
            format: DiskFormat::Qcow2,
            read_only: true
        }
    );

    // Detach the first: gone from the definition, the file stays.
    click(&mut h, "Detach vda");
    let disks_now = definition(&dir, &id).config.disks;
    assert_eq!(
        disks_now.iter().map(|d| d.path.clone()).collect::<Vec<_>>(),
        vec![qcow.clone(), external.clone()]
    );
    assert!(raw.is_file(), "a detached disk's file stays");

    // Network: on, with a forward.
    assert_shown(&h, "Off");
    click(&mut h, "Edit network…");
    click(&mut h, "Network (user-mode)");
    click(&mut h, "Add port forward");
    type_into(&mut h, "Host port 1", "8080");
    type_into(&mut h, "Guest port 1", "80");
    click(&mut h, "Save network");
    assert_eq!(
        definition(&dir, &id)
            .config
            .network
            .map(|n| n.port_forwards),
        Some(vec![PortForward {
            host_port: 8080,
            guest_port: 80
        }])
    );
    h.get_by_label("127.0.0.1:8080 → guest:80");
}

#[test]
fn delete_removes_own_disk_files_only_when_asked_and_never_external_ones() {
    let dir = ConfigDir::new();
    let kernel = common::guest("hello");
    let external = dir.path().join("scratch").join("shared-data.qcow2");
    std::fs::create_dir_all(external.parent().expect("a folder")).expect("cannot create scratch");
    qemu_img_qcow2(&external, "16M");
    let ext_disk = DiskConfig {
        path: external.clone(),
        format: DiskFormat::Qcow2,
        read_only: false,
    };
    let keep_id = define_with_disks(&dir, "Keeper", &kernel, |own| {
        vec![new_raw(own.join("disk.raw"), 16 * MIB)]
    });
    let ext = ext_disk.clone();
    let gone_id = define_with_disks(&dir, "Goner", &kernel, move |own| {
        vec![new_raw(own.join("disk.raw"), 32 * MIB), ext]
    });
    let own_dir = |id: &str| dir.data().join("machines").join(id);
    let mut h = app(&dir, None);

    // Not ticked: the definition goes, the files stay.
    select(&mut h, "Keeper");
    click(&mut h, "Delete…");
    assert!(!is_checked(&h, DELETE_DISKS_LABEL), "off unless ticked");
    click(&mut h, "Delete");
    assert!(dir.definitions().iter().all(|d| d.id != keep_id));
    assert!(own_dir(&keep_id).join("disk.raw").is_file());

    // Ticked: the machine's own file goes, the external one stays.
    select(&mut h, "Goner");
    click(&mut h, "Delete…");
    let own_file = own_dir(&gone_id).join("disk.raw");
    assert_shown(&h, &format!("{} — ", own_file.display()));
    assert_shown(&h, "(32.0 MiB disk)");
    assert_shown(&h, &format!("{} — ", external.display()));
    assert_shown(&h, "(outside the machine's own folder: kept)");
    assert_shown(&h, "never deleted automatically");
    click(&mut h, DELETE_DISKS_LABEL);
    assert!(is_checked(&h, DELETE_DISKS_LABEL));
    click(&mut h, "Delete");
    assert!(dir.definitions().is_empty());
    assert!(!own_file.exists(), "the machine's own disk is deleted");
    assert!(!own_dir(&gone_id).exists(), "and its emptied folder");
    assert!(external.is_file(), "an image from elsewhere stays");
    assert_eq!(h.state().rt.workloads.machines.entries.len(), 0);
}

#[test]
fn disk_buttons_are_disabled_while_the_machine_runs() {
    if !common::kvm_available() {
        return;
    }
    let _kvm = common::kvm_lock();
    let dir = ConfigDir::new();
    define_with_disks(&dir, "Runner", &common::guest("spin"), |own| {
        vec![new_raw(own.join("disk.raw"), 16 * MIB)]
    });
    let mut h = app(&dir, None);
    select(&mut h, "Runner");
    click(&mut h, "Overview");
    for label in ["Add disk…", "Grow vda", "Detach vda", "Edit network…"] {
        assert_enabled(&h, label);
    }
    click(&mut h, "Start");
    let id = machine_id(&h, "Runner");
    // Start brings the Console to the front; back to the Overview.
    click(&mut h, "Overview");
    wait_until(&mut h, "the guest to run", GUEST_TIMEOUT, |h| {
        h.state()
            .rt
            .workloads
            .machines
            .get(&id)
            .is_some_and(|m| m.status == hangar::gui::vm::machine::RunStatus::Running)
    });
    for label in ["Add disk…", "Grow vda", "Detach vda"] {
        let node = h.get_by_label(label);
        assert!(is_disabled(&node), "{label:?} is disabled while running");
        assert_eq!(
            node.accesskit_node().description(),
            Some(STOP_FOR_DISKS.to_string()),
            "{label:?} says why"
        );
    }
    assert_disabled(&h, "Edit network…");
    // Throughput from consecutive samples of the disk's counters.
    wait_until(&mut h, "the disk's throughput", GUEST_TIMEOUT, |h| {
        h.query_by_label_contains("reading 0 B/s · writing 0 B/s")
            .is_some()
    });
    // A command sent anyway (a script, a stale frame) is refused too.
    h.state_mut().apply(UiCommand::DetachDisk {
        id: id.clone(),
        path: dir.data().join("machines").join(&id).join("disk.raw"),
    });
    assert_eq!(definition(&dir, &id).config.disks.len(), 1);

    h.state_mut().apply(UiCommand::ForceStop(id.clone()));
    wait_until(&mut h, "the guest to stop", GUEST_TIMEOUT, |h| {
        h.state()
            .rt
            .workloads
            .machines
            .get(&id)
            .is_some_and(|m| !m.status.is_active())
    });
    settle(&mut h);
    for label in ["Add disk…", "Grow vda", "Detach vda", "Edit network…"] {
        assert_enabled(&h, label);
    }
}
