//! GUI tests of getting container images from the Run container dialog:
//! an OCI layout made here (the default busybox image copied with skopeo,
//! plus a layer umoci adds) is imported through the typed path, with the
//! progress bar going through every stage and the image offered and run; a
//! directory that is no image fails with the reason in the dialog and the
//! Log; an image is pulled from a docker-registry on 127.0.0.1 (plain HTTP,
//! loopback only). Root only (the images go into the container runtime's
//! store); without root the tests say so loudly and return.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::kittest::{NodeT as _, Queryable as _};
use hangar_engine::images::ImportStage;

use common::{
    click, gui_with_containers, is_disabled, is_root, library_state, type_into, wait_until,
    ConfigDir, DataDir, Gui,
};

/// Longest wait for an import or a container.
const TIMEOUT: Duration = Duration::from_secs(60);

#[track_caller]
fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (packaging/setup.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An OCI layout at `dir` (tag `gui`): the default busybox image with one
/// more layer (made by umoci) holding `/etc/gui-import` = `text`.
fn make_layout(data: &DataDir, dir: &Path, text: &str) {
    let default = data.path().join("images-src/default");
    run(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        &format!("oci:{}:default", default.display()),
        &format!("oci:{}:gui", dir.display()),
    ]));
    // unpack + repack, not `umoci insert`: insert writes a layer tar
    // without its end-of-archive blocks (GNU tar rejects it too).
    let bundle = dir.with_extension("bundle");
    let image = format!("{}:gui", dir.display());
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    std::fs::write(bundle.join("rootfs/etc/gui-import"), text)
        .expect("cannot write the added file");
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
}

fn open_import_form(h: &mut Gui) {
    click(h, "Run container");
    click(h, "Import image…");
    h.get_by_label("Image path");
    assert!(
        is_disabled(&h.get_by_label("Import")),
        "nothing to import yet"
    );
}

#[test]
fn image_imports_with_progress_and_runs() {
    if !is_root() {
        return;
    }
    let dir = ConfigDir::new();
    let data = DataDir::new();
    let layout = dir.path().join("layout");
    make_layout(&data, &layout, "imported-through-the-gui\n");
    let mut h = gui_with_containers(&dir, &data);
    open_import_form(&mut h);

    type_into(&mut h, "Image path", &layout.display().to_string());
    type_into(&mut h, "Image name", "gui-test:1");
    assert!(!is_disabled(&h.get_by_label("Import")));
    click(&mut h, "Import");
    assert!(
        h.state().image_job().is_some(),
        "the import runs:\n{}",
        common::log_text(h.state())
    );
    // The UI keeps drawing while the worker imports.
    wait_until(&mut h, "the import to finish", TIMEOUT, |h| {
        h.state().image_job().is_some_and(|j| !j.is_running())
    });
    let job = h.state().image_job().expect("the job is kept");
    assert_eq!(
        job.progress
            .map(|p| (p.stage, p.layers_done, p.layers_total)),
        Some((ImportStage::Done, 2, 2)),
        "the last progress reported is Done"
    );
    assert_eq!(
        job.stages,
        vec![
            ImportStage::Verifying,
            ImportStage::Unpacking,
            ImportStage::Done
        ],
        "the progress bar went through every stage of a layout import"
    );
    let record = match &job.outcome {
        Some(Ok(r)) => r.clone(),
        other => panic!(
            "the import failed: {other:?}\n{}",
            common::log_text(h.state())
        ),
    };
    assert_eq!(record.name, "gui-test:1");
    assert_eq!(record.layers.len(), 2, "busybox plus the added layer");

    // The finished progress bar and the result are shown.
    let bars: Vec<(String, f64)> = h
        .query_all_by_role(Role::ProgressIndicator)
        .map(|n| {
            (
                n.accesskit_node().label().unwrap_or_default(),
                n.accesskit_node().numeric_value().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(bars.len(), 1, "one progress bar: {bars:?}");
    assert!(
        bars[0].0.starts_with("done · 2 of 2 layers") && bars[0].1 == 100.0,
        "the bar is full: {bars:?}"
    );
    let imported = hangar::gui::container::image_import::imported_text(&record);
    assert!(
        imported.starts_with("Imported gui-test:1 (2 layers, "),
        "{imported}"
    );
    h.get_by_label(&imported);
    assert!(
        common::log_text(h.state()).contains("Imported gui-test:1"),
        "and logged"
    );
    let dialog = h
        .state_mut()
        .container_dialog_mut()
        .expect("the dialog stays open");
    assert!(dialog.images.iter().any(|i| i == "gui-test:1"), "offered");
    assert_eq!(dialog.image, "gui-test:1", "and chosen");

    // The imported image runs.
    type_into(&mut h, "Command", "cat /etc/gui-import");
    click(&mut h, "Run");
    let id = h.state().rt.workloads.containers.entries[0].id.0.clone();
    assert_eq!(
        h.state().rt.workloads.containers.entries[0].config.image,
        "gui-test:1"
    );
    click(&mut h, "Logs");
    wait_until(&mut h, "the added file's text", TIMEOUT, |h| {
        h.query_by_label("imported-through-the-gui").is_some() && library_state(h, &id) == "exited"
    });
    h.get_by_label("Logs · exited");
    assert!(
        h.state().rt.log.notifications.is_empty(),
        "no errors:\n{}",
        common::log_text(h.state())
    );
}

#[test]
fn a_directory_that_is_no_image_fails_with_the_reason() {
    if !is_root() {
        return;
    }
    let dir = ConfigDir::new();
    let data = DataDir::new();
    let not_an_image = dir.path().join("empty-dir");
    std::fs::create_dir(&not_an_image).expect("cannot create a directory");
    let mut h = gui_with_containers(&dir, &data);
    open_import_form(&mut h);
    type_into(&mut h, "Image path", "relative/layout");
    assert!(is_disabled(&h.get_by_label("Import")));
    assert_eq!(
        h.get_by_label("Import")
            .accesskit_node()
            .description()
            .unwrap_or_default(),
        r#"The image path "relative/layout" must be absolute."#
    );

    h.get_by_label("Image path").click();
    h.step();
    common::clear_focused_field(&mut h);
    h.get_by_label("Image path")
        .type_text(&not_an_image.display().to_string());
    common::settle(&mut h);
    click(&mut h, "Import");
    wait_until(&mut h, "the import to fail", TIMEOUT, |h| {
        h.state().image_job().is_some_and(|j| !j.is_running())
    });
    let why = format!("cannot import {}", not_an_image.display());
    let outcome = h.state().image_job().and_then(|j| j.outcome.clone());
    let message = match outcome {
        Some(Err(message)) => message,
        other => panic!("the import should have failed: {other:?}"),
    };
    assert!(message.starts_with(&why), "{message}");
    // In the dialog's import form, and in the error notification (the Log
    // panel's line has the time in front).
    assert_eq!(
        h.query_all_by_label(&message).count(),
        2,
        "the reason is shown in the dialog and as a notification"
    );
    let app = h.state();
    assert!(
        app.rt
            .log
            .notifications
            .iter()
            .any(|(l, _)| l.message.contains(&why)),
        "and in the Log as an error:\n{}",
        common::log_text(app)
    );
    let dialog_images = h
        .state_mut()
        .container_dialog_mut()
        .map(|d| d.images.clone())
        .unwrap_or_default();
    assert_eq!(dialog_images, vec!["default".to_string()], "nothing new");
}

/// Debian's docker-registry serving from `dir` on 127.0.0.1; killed (by
/// its pid) when dropped.
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("registry").display()
            ),
        )
        .expect("cannot write the registry's config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is missing: run packaging/setup.sh");
        let registry = Registry { child, addr };
        let until = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&registry.addr).is_err() {
            assert!(Instant::now() < until, "the registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn image_pulls_from_a_loopback_registry_with_progress() {
    if !is_root() {
        return;
    }
    let dir = ConfigDir::new();
    let data = DataDir::new();
    let registry = Registry::start(dir.path());
    run(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!(
            "oci:{}:default",
            data.path().join("images-src/default").display()
        ),
        &format!("docker://{}/hangar/busybox:1.0", registry.addr),
    ]));
    let mut h = gui_with_containers(&dir, &data);
    open_import_form(&mut h);
    assert!(is_disabled(&h.get_by_label("Pull")), "no reference yet");
    type_into(
        &mut h,
        "Registry image",
        &format!("{}/hangar/busybox:1.0", registry.addr),
    );
    click(&mut h, "Plain HTTP");
    click(&mut h, "Pull");
    wait_until(&mut h, "the pull to finish", TIMEOUT, |h| {
        h.state().image_job().is_some_and(|j| !j.is_running())
    });
    let job = h.state().image_job().expect("the job is kept");
    let record = match &job.outcome {
        Some(Ok(r)) => r.clone(),
        other => panic!(
            "the pull failed: {other:?}\n{}",
            common::log_text(h.state())
        ),
    };
    assert_eq!(record.name, "busybox:1.0", "named after the reference");
    assert_eq!(
        job.stages.first(),
        Some(&ImportStage::Downloading),
        "the bar showed the download: {:?}",
        job.stages
    );
    assert_eq!(job.stages.last(), Some(&ImportStage::Done));
    h.get_by_label(&hangar::gui::container::image_import::imported_text(
        &record,
    ));
    let dialog = h
        .state_mut()
        .container_dialog_mut()
        .expect("the dialog stays open");
    assert_eq!(dialog.image, "busybox:1.0", "the pulled image is chosen");
}
