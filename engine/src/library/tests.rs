#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use hangar_testkit::TempDir;

use super::*;
use crate::config::{BootSource, KernelBoot, PortForward};
use crate::error_text;
use crate::kit::DefaultKit;

const MIB: u64 = 1 << 20;

struct Fixture {
    _dir: TempDir,
    config: PathBuf,
    data: PathBuf,
    library: Library,
}

fn fixture(tag: &str) -> Fixture {
    let dir = TempDir::new(tag);
    let config = dir.join("config");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (library, error) = Library::open(LibraryPaths {
        config_dir: Some(config.clone()),
        data_dir: Some(data.clone()),
    });
    assert!(error.is_none(), "{error:?}");
    Fixture {
        _dir: dir,
        config,
        data,
        library,
    }
}

fn config(name: &str) -> VmConfig {
    VmConfig {
        name: name.into(),
        vcpus: 1,
        memory_mib: 256,
        boot: BootSource::Kernel(KernelBoot {
            kernel: "/boot/vmlinuz".into(),
            initrd: None,
            cmdline: String::new(),
        }),
        display: None,
        disks: Vec::new(),
        network: None,
    }
}

fn saved(f: &Fixture, name: &str) -> MachineDefinition {
    let def = MachineDefinition::new(config(name));
    f.library.create_machine(&def).unwrap();
    def
}

#[test]
fn edits_are_saved_and_failed_ones_change_nothing() {
    let f = fixture("library-edits");
    let def = saved(&f, "Alpha");
    let own = f.library.machine_dir(&def.id).unwrap();

    let (after, change) = f
        .library
        .edit_machine(
            &def.id,
            MachineEdit::AddDisk(DiskRequest::New {
                format: DiskFormat::Raw,
                size: 8 * MIB,
            }),
        )
        .unwrap();
    let disk = own.join("disk-1.raw");
    assert_eq!(
        change.to_string(),
        format!("new 8.0 MiB raw disk {}", disk.display())
    );
    assert_eq!(after.config.disks[0].path, disk);
    assert_eq!(f.library.machine(&def.id).unwrap(), after, "saved");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 8 * MIB);

    // The same image again is refused, and the definition is unchanged.
    let again = f.library.edit_machine(
        &def.id,
        MachineEdit::AddDisk(DiskRequest::Existing {
            path: disk.clone(),
            format: DiskFormat::Raw,
            read_only: true,
        }),
    );
    assert!(matches!(again, Err(LibraryError::AlreadyAttached(_))));
    // A format that changed since the user chose it is refused.
    let wrong = f.library.edit_machine(
        &def.id,
        MachineEdit::AddDisk(DiskRequest::Existing {
            path: disk.clone(),
            format: DiskFormat::Qcow2,
            read_only: true,
        }),
    );
    let text = error_text(&wrong.unwrap_err());
    assert!(text.contains("is raw now, not qcow2"), "{text}");
    assert_eq!(f.library.machine(&def.id).unwrap(), after);

    let (_, change) = f
        .library
        .edit_machine(
            &def.id,
            MachineEdit::GrowDisk {
                path: disk.clone(),
                size: 16 * MIB,
            },
        )
        .unwrap();
    assert_eq!(
        change.to_string(),
        format!("grew {} to 16.0 MiB", disk.display())
    );
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 16 * MIB);
    let shrink = f.library.edit_machine(
        &def.id,
        MachineEdit::GrowDisk {
            path: disk.clone(),
            size: MIB,
        },
    );
    let text = error_text(&shrink.unwrap_err());
    assert!(
        text.starts_with(&format!("cannot grow {}: ", disk.display())),
        "{text}"
    );
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 16 * MIB);

    let forward = |host_port| PortForward {
        host_port,
        guest_port: 22,
    };
    let bad = f.library.edit_machine(
        &def.id,
        MachineEdit::SetNetwork(Some(NetworkConfig {
            port_forwards: vec![forward(2222), forward(2222)],
        })),
    );
    assert!(matches!(bad, Err(LibraryError::Config(_))));
    let (after, change) = f
        .library
        .edit_machine(
            &def.id,
            MachineEdit::SetNetwork(Some(NetworkConfig {
                port_forwards: vec![forward(2222)],
            })),
        )
        .unwrap();
    assert_eq!(
        change.to_string(),
        "network: user-mode, 127.0.0.1:2222 → guest:22"
    );
    assert_eq!(f.library.machine(&def.id).unwrap(), after);

    let (after, change) = f
        .library
        .edit_machine(&def.id, MachineEdit::DetachDisk(disk.clone()))
        .unwrap();
    assert_eq!(
        change.to_string(),
        format!("detached {} (the file stays)", disk.display())
    );
    assert!(after.config.disks.is_empty());
    assert!(disk.is_file(), "a detached disk's file stays");
    let gone = f
        .library
        .edit_machine(&def.id, MachineEdit::DetachDisk(disk.clone()));
    assert!(matches!(gone, Err(LibraryError::NotADisk(_))));
}

#[test]
fn a_disk_whose_definition_cannot_be_saved_goes_again() {
    let f = fixture("library-unsaved-disk");
    let def = saved(&f, "Alpha");
    let machines = f.config.join("machines");
    // The save's temporary file cannot be made (a folder has its name), so
    // the save fails after the disk was made.
    let blocker = machines.join(format!(".{}.json.tmp-{}", def.id, std::process::id()));
    std::fs::create_dir(&blocker).unwrap();
    let result = f.library.edit_machine(
        &def.id,
        MachineEdit::AddDisk(DiskRequest::New {
            format: DiskFormat::Raw,
            size: MIB,
        }),
    );
    assert!(matches!(result, Err(LibraryError::Store(_))), "{result:?}");
    let own = f.library.machine_dir(&def.id).unwrap();
    assert!(!own.join("disk-1.raw").exists(), "the new disk went again");
    assert_eq!(f.library.machine(&def.id).unwrap(), def, "unchanged");
    std::fs::remove_dir(&blocker).unwrap();

    // A broken file is never overwritten, and no disk is made for it.
    let file = machines.join(format!("{}.json", def.id));
    std::fs::write(&file, b"{ not json").unwrap();
    let result = f.library.edit_machine(
        &def.id,
        MachineEdit::AddDisk(DiskRequest::New {
            format: DiskFormat::Raw,
            size: MIB,
        }),
    );
    assert!(matches!(result, Err(LibraryError::NoSuchMachine(_))));
    assert_eq!(std::fs::read(&file).unwrap(), b"{ not json");
    assert!(!own.join("disk-1.raw").exists());
}

#[test]
fn too_many_disks_are_refused() {
    let f = fixture("library-max-disks");
    let mut def = MachineDefinition::new(config("Full"));
    for n in 0..MAX_DISKS {
        def.config.disks.push(DiskConfig {
            path: f.data.join(format!("d{n}.raw")),
            format: DiskFormat::Raw,
            read_only: false,
        });
    }
    f.library.create_machine(&def).unwrap();
    let result = f.library.edit_machine(
        &def.id,
        MachineEdit::AddDisk(DiskRequest::New {
            format: DiskFormat::Raw,
            size: MIB,
        }),
    );
    assert_eq!(
        result.unwrap_err().to_string(),
        format!("a machine can have at most {MAX_DISKS} disks")
    );
    assert!(!f.library.machine_dir(&def.id).unwrap().exists());
}

#[test]
fn duplicates_get_free_names_and_share_disks() {
    let f = fixture("library-duplicate");
    let mut def = MachineDefinition::new(config("Alpha"));
    def.config.disks.push(DiskConfig {
        path: f.data.join("shared.raw"),
        format: DiskFormat::Raw,
        read_only: false,
    });
    f.library.create_machine(&def).unwrap();
    let first = f.library.duplicate_machine(&def.id).unwrap();
    assert_eq!(first.def.config.name, "Alpha (copy)");
    assert_eq!(first.original, "Alpha");
    assert_eq!(first.shared_disks, 1);
    assert_ne!(first.def.id, def.id);
    let second = f.library.duplicate_machine(&def.id).unwrap();
    assert_eq!(second.def.config.name, "Alpha (copy) 2");
    assert_eq!(f.library.machines().unwrap().len(), 3);
    assert!(f.library.name_taken(" alpha (COPY) ").unwrap());
}

#[test]
fn delete_removes_only_own_unshared_disks() {
    let f = fixture("library-delete");
    let doomed = saved(&f, "Doomed");
    let own = f.library.machine_dir(&doomed.id).unwrap();
    let with_disk = add_new_disk(&f, &doomed.id, DiskFormat::Qcow2, 4 * MIB);
    let mine = with_disk.config.disks[0].path.clone();
    let shared = f.data.join("shared.raw");
    std::fs::write(&shared, vec![0u8; 4096]).unwrap();
    f.library
        .edit_machine(
            &doomed.id,
            MachineEdit::AddDisk(DiskRequest::Existing {
                path: shared.clone(),
                format: DiskFormat::Raw,
                read_only: false,
            }),
        )
        .unwrap();

    let plan = f.library.delete_plan(&doomed.id).unwrap();
    let deletable: Vec<bool> = plan.iter().map(DiskFileRow::deletable).collect();
    assert_eq!(deletable, [true, false], "{plan:?}");

    let deleted = f.library.delete_machine(&doomed.id, true).unwrap();
    assert_eq!(deleted.name, "Doomed");
    assert_eq!(deleted.disks.len(), 1);
    assert_eq!(deleted.disks[0].0, mine);
    assert!(deleted.disks[0].1.is_ok());
    assert!(!mine.exists());
    assert!(!own.exists(), "the emptied folder goes");
    assert!(shared.is_file(), "a file outside its folder stays");
    assert!(matches!(
        f.library.machine(&doomed.id),
        Err(LibraryError::NoSuchMachine(_))
    ));
}

/// Add a new empty disk to machine `id` through the library.
fn add_new_disk(f: &Fixture, id: &str, format: DiskFormat, size: u64) -> MachineDefinition {
    f.library
        .edit_machine(id, MachineEdit::AddDisk(DiskRequest::New { format, size }))
        .unwrap()
        .0
}

#[test]
fn a_disk_a_running_machine_holds_is_never_deleted() {
    let f = fixture("library-delete-busy");
    let def = saved(&f, "Busy");
    let with_disk = add_new_disk(&f, &def.id, DiskFormat::Raw, MIB);
    let disk = with_disk.config.disks[0].path.clone();
    // What a VM holds while it runs, here or in another Hangar.
    let held = disks::lock(&disk, true).unwrap();
    let plan = f.library.delete_plan(&def.id).unwrap();
    assert_eq!(
        plan[0].kept_because.as_deref(),
        Some("in use by a running machine: kept")
    );
    let deleted = f.library.delete_machine(&def.id, true).unwrap();
    assert!(deleted.disks.is_empty(), "{:?}", deleted.disks);
    assert!(disk.is_file());
    drop(held);
}

#[test]
fn delete_without_disks_keeps_every_file() {
    let f = fixture("library-delete-keep");
    let def = saved(&f, "Keeper");
    let with_disk = add_new_disk(&f, &def.id, DiskFormat::Raw, MIB);
    let deleted = f.library.delete_machine(&def.id, false).unwrap();
    assert!(deleted.disks.is_empty());
    assert!(with_disk.config.disks[0].path.is_file());
}

#[test]
fn no_config_dir_means_nothing_is_saved() {
    let (library, error) = Library::open(LibraryPaths::default());
    assert!(matches!(error, Some(StoreError::NoConfigDir)));
    let def = MachineDefinition::new(config("Nowhere"));
    assert!(matches!(
        library.create_machine(&def),
        Err(LibraryError::NoStore)
    ));
    assert!(library.templates().is_empty());
}

fn template_fixture(tag: &str) -> (Fixture, DefaultKit) {
    let f = fixture(tag);
    let dir = f.data.join("templates").join(templates::DEBIAN_12);
    std::fs::create_dir_all(&dir).unwrap();
    let mut image = vec![0u8; 2 * MIB as usize];
    image[MIB as usize..MIB as usize + 5].copy_from_slice(b"hello");
    std::fs::write(dir.join("disk.raw"), image).unwrap();
    let kit = DefaultKit {
        kernel: f.data.join("kit/vmlinux"),
        initrd: f.data.join("kit/initramfs"),
        version: "test".into(),
    };
    (f, kit)
}

fn request(name: &str, disk_size: u64) -> TemplateMachine {
    TemplateMachine {
        template: templates::DEBIAN_12.into(),
        name: name.into(),
        vcpus: 2,
        memory_mib: 1024,
        disk_size,
        network: None,
        cmdline: Some("console=ttyS0 root=/dev/vda".into()),
        start: false,
    }
}

fn wait(job: &mut TemplateClone) -> (Vec<CloneProgress>, Result<MachineDefinition, String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut progress = Vec::new();
    loop {
        let (p, outcome) = job.poll();
        progress.extend(p);
        if let Some(outcome) = outcome {
            return (progress, outcome);
        }
        assert!(Instant::now() < deadline, "the copy never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_template_clone_saves_the_machine_once_its_disk_is_complete() {
    let (f, kit) = template_fixture("library-clone");
    let woken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = woken.clone();
    let mut job = f
        .library
        .clone_template(&request("Deb", 4 * MIB), Some(&kit), move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
    assert_eq!(job.name(), "Deb");
    assert_eq!(job.template_title, "Debian 12");
    let (progress, outcome) = wait(&mut job);
    let def = outcome.unwrap();
    assert!(woken.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    if let Some(&(done, total)) = progress.last() {
        assert_eq!(done, total);
    }
    assert_eq!(f.library.machine(&def.id).unwrap(), def, "saved");
    let boot = def.config.kernel_boot().unwrap();
    assert_eq!(boot.cmdline, "console=ttyS0 root=/dev/vda");
    assert_eq!(def.config.vcpus, 2);
    assert_eq!(boot.kernel, kit.kernel);
    let disk = &def.config.disks[0].path;
    assert_eq!(
        disk,
        &f.library.machine_dir(&def.id).unwrap().join("disk.raw")
    );
    let bytes = std::fs::read(disk).unwrap();
    assert_eq!(bytes.len() as u64, 4 * MIB);
    assert_eq!(&bytes[MIB as usize..MIB as usize + 5], b"hello");
}

#[test]
fn a_failed_template_clone_leaves_nothing() {
    let (f, kit) = template_fixture("library-clone-fails");
    // Smaller than the template: refused by the copy, after the folder
    // was made.
    let mut job = f
        .library
        .clone_template(&request("Small", MIB), Some(&kit), || {})
        .unwrap();
    let id = job.def.id.clone();
    let (_, outcome) = wait(&mut job);
    let why = outcome.unwrap_err();
    assert!(
        why.starts_with("cannot copy the Debian 12 disk to ") && why.contains("too small"),
        "{why}"
    );
    assert!(!f.library.machine_dir(&id).unwrap().exists());
    assert!(f.library.machines().unwrap().is_empty());

    assert!(matches!(
        f.library
            .clone_template(&request("NoKit", 4 * MIB), None, || {}),
        Err(LibraryError::NoKit)
    ));
    let mut unknown = request("Other", 4 * MIB);
    unknown.template = "plan9".into();
    assert!(matches!(
        f.library.clone_template(&unknown, Some(&kit), || {}),
        Err(LibraryError::NoTemplate(_))
    ));
    std::fs::remove_file(f.data.join("templates/debian-12/disk.raw")).unwrap();
    let missing = f
        .library
        .clone_template(&request("Gone", 4 * MIB), Some(&kit), || {})
        .err()
        .unwrap();
    assert_eq!(
        missing.to_string(),
        "cannot create Gone: Debian 12 is not available: run packaging/setup.sh to build it"
    );
}
