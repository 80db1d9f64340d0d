//! Files an earlier release saved still load: the machine definitions and
//! container records in `tests/fixtures/saved-*/`, written by that release's
//! app (`tests/fixtures/make-saved`), never edited by hand.

// Test code: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use hangar_engine::config::{DiskFormat, PortForward};
use hangar_engine::containers::{HelperCommand, NetworkMode, RuntimePaths, RECORD_VERSION};
use hangar_engine::{
    ContainerSetup, Engine, EngineOptions, MachineStore, StoredMachine, VmConfig, WorkloadState,
};
use hangar_testkit::{saved_fixture, TempDir};

/// A copy of a fixture tree: loading may write (a record of a container
/// that ended with the app is brought up to date), the fixture never.
fn copy_of(release: &str) -> TempDir {
    let dir = TempDir::new("saved");
    copy_tree(&saved_fixture(release), dir.path());
    dir
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

fn machine<'a>(all: &'a [StoredMachine], id: &str) -> &'a VmConfig {
    all.iter()
        .find_map(|m| match m {
            StoredMachine::Valid(d) if d.id == id => Some(&d.config),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no valid machine '{id}' in {all:?}"))
}

#[test]
fn machine_definitions_of_release_0_1_load() {
    let copy = copy_of("0.1");
    let all = MachineStore::open(&copy.join("config"))
        .unwrap()
        .load_all()
        .unwrap();
    assert_eq!(all.len(), 5, "{all:?}");
    assert!(
        all.iter().all(|m| matches!(m, StoredMachine::Valid(_))),
        "{all:?}"
    );

    // Disks added in the app: a qcow2 and a raw one.
    let echo = machine(&all, "echo");
    let disks: Vec<_> = echo.disks.iter().map(|d| (d.format, d.read_only)).collect();
    assert_eq!(
        disks,
        [(DiskFormat::Qcow2, false), (DiskFormat::Raw, false)]
    );
    assert!(echo.disks[0].path.ends_with("machines/echo/disk-1.qcow2"));
    assert_eq!(echo.display.map(|d| (d.width, d.height)), Some((1024, 768)));
    assert_eq!(echo.network, None);

    // Networking set in the app.
    let chatter = machine(&all, "chatter");
    let ports = &chatter.network.as_ref().unwrap().port_forwards;
    assert_eq!(
        ports,
        &[PortForward {
            host_port: 18082,
            guest_port: 22
        }]
    );

    // Created with no screen and two vCPUs.
    let screenless = machine(&all, "fixture-screenless-cc7a94f4");
    assert_eq!((screenless.vcpus, screenless.memory_mib), (2, 256));
    assert_eq!(screenless.display, None);
    assert_eq!(
        screenless.kernel_boot().unwrap().cmdline,
        "console=ttyS0 quiet"
    );

    // Created with everything: initrd, a read-only disk, a small screen, a port.
    let full = machine(&all, "fixture-full-169d94b2");
    assert!(full
        .kernel_boot()
        .unwrap()
        .initrd
        .as_ref()
        .unwrap()
        .ends_with("kit/initramfs.cpio.gz"));
    assert!(full.disks[0].read_only);
    assert_eq!(full.display.map(|d| (d.width, d.height)), Some((800, 600)));
    assert_eq!(
        full.network.as_ref().unwrap().port_forwards[0],
        PortForward {
            host_port: 18080,
            guest_port: 80
        }
    );

    // Cloned from the Debian 12 template.
    let debian = machine(&all, "fixture-debian-bab93b57");
    assert_eq!((debian.vcpus, debian.memory_mib), (2, 1024));
    let debian_cmdline = &debian.kernel_boot().unwrap().cmdline;
    assert!(
        debian_cmdline.contains("root=/dev/vda rw"),
        "{}",
        debian_cmdline
    );
    assert!(debian.disks[0]
        .path
        .ends_with("machines/fixture-debian-bab93b57/disk.raw"));
    assert_eq!(debian.network.as_ref().unwrap().port_forwards, []);
}

#[test]
fn container_records_of_release_0_1_load() {
    let copy = copy_of("0.1");
    let data = copy.join("data");
    let paths = RuntimePaths {
        data_dir: data.clone(),
        run_dir: data.join("run"),
    };
    let helper = HelperCommand {
        program: env!("CARGO_BIN_EXE_hangar-container-helper").into(),
        args: vec![],
    };
    let options = EngineOptions {
        containers: Ok(ContainerSetup { paths, helper }),
        library: hangar_engine::Library::none(),
    };
    let (engine, _events) = Engine::new(options, || {});
    assert!(engine.containers_unavailable().is_none());
    let records = engine.previous_containers();
    let ids: Vec<&str> = records.iter().map(|r| r.id.0.as_str()).collect();
    assert_eq!(ids, ["419ab81b0142", "8d374ac1dd29"]);

    // Exited by itself with code 3, pipes, limits and a read-only volume.
    let exited = &records[0];
    assert_eq!(engine.state(&exited.id), Some(WorkloadState::Stopped));
    let exit = exited.exit.as_ref().unwrap();
    assert_eq!(
        (exit.code, exit.signal, exit.ended_with_app),
        (3, None, false)
    );
    assert_eq!(exited.config.command, ["sh", "-c", "echo fixture; exit 3"]);
    assert_eq!(exited.config.env, ["FIXTURE=1"]);
    assert_eq!(exited.config.workdir.as_deref(), Some("/tmp"));
    assert_eq!(exited.config.user.as_deref(), Some("0:0"));
    assert_eq!(exited.config.limits.memory_mib, Some(64));
    assert_eq!(exited.config.limits.cpus, Some(0.5));
    assert_eq!(exited.config.limits.pids, Some(32));
    assert_eq!(exited.config.network, NetworkMode::None);
    assert!(!exited.config.terminal);
    let vol = &exited.config.volumes[0];
    assert_eq!((vol.target.as_str(), vol.read_only), ("/data", true));

    // Still running when the app quit: killed with it, on a terminal, with
    // user networking and a port.
    let killed = &records[1];
    assert_eq!(engine.state(&killed.id), Some(WorkloadState::Stopped));
    let exit = killed.exit.as_ref().unwrap();
    assert_eq!(
        (exit.code, exit.signal, exit.ended_with_app),
        (137, Some(9), true)
    );
    assert!(killed.config.terminal);
    assert_eq!(killed.config.network, NetworkMode::User);
    let port = killed.config.ports[0];
    assert_eq!((port.host_port, port.guest_port), (18081, 80));
    assert_eq!(killed.error, None);
    // Release 0.1 wrote no layout version: read as 0, the same layout.
    assert_eq!((exited.version, killed.version), (0, 0));
}

#[test]
fn a_container_record_of_a_newer_hangar_is_left_alone() {
    let copy = copy_of("0.1");
    let data = copy.join("data");
    let record = data.join("containers/419ab81b0142/container.json");
    let newer = std::fs::read_to_string(&record).unwrap().replacen(
        '{',
        &format!("{{\"version\": {},", RECORD_VERSION + 1),
        1,
    );
    std::fs::write(&record, &newer).unwrap();
    let options = EngineOptions {
        containers: Ok(ContainerSetup {
            paths: RuntimePaths {
                data_dir: data.clone(),
                run_dir: data.join("run"),
            },
            helper: HelperCommand {
                program: env!("CARGO_BIN_EXE_hangar-container-helper").into(),
                args: vec![],
            },
        }),
        library: hangar_engine::Library::none(),
    };
    let (engine, _events) = Engine::new(options, || {});
    let ids: Vec<String> = engine
        .previous_containers()
        .into_iter()
        .map(|r| r.id.0)
        .collect();
    assert_eq!(ids, ["8d374ac1dd29"]);
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        newer,
        "untouched"
    );
}
