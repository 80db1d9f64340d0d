//! `hangar machine …` as a user runs it: the real binary over a config and
//! a data directory of the test's own, with a small template image, so the
//! CLI and the window share one library and its rules.

// Test code: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use hangar_testkit::TempDir;

fn hangar(dir: &TempDir, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env("HANGAR_CONFIG_DIR", dir.join("config"))
        .env("HANGAR_DATA_DIR", dir.join("data"))
        .output()
        .unwrap()
}

fn ok(dir: &TempDir, args: &[&str]) -> String {
    let out = hangar(dir, args);
    assert!(
        out.status.success(),
        "hangar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A template image with a recognisable block, and a kit whose files the
/// definition names (nothing boots here).
fn library_dir() -> TempDir {
    let dir = TempDir::new("cli-machine");
    let template = dir.join("data/templates/debian-12");
    std::fs::create_dir_all(&template).unwrap();
    let mut image = vec![0u8; 4 << 20];
    image[1 << 20..(1 << 20) + 5].copy_from_slice(b"hello");
    std::fs::write(template.join("disk.raw"), image).unwrap();
    let kit = dir.join("data/kit");
    std::fs::create_dir_all(&kit).unwrap();
    for f in ["vmlinuz", "initramfs.cpio.gz", "VERSION"] {
        std::fs::write(kit.join(f), b"test\n").unwrap();
    }
    dir
}

fn machine_dirs(dir: &TempDir) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(dir.join("data/machines")) {
        Ok(d) => d.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn machines_are_made_changed_and_deleted_from_the_command_line() {
    let dir = library_dir();
    let created = ok(
        &dir,
        &["machine", "from-template", "Deb One", "--disk", "8"],
    );
    assert!(created.starts_with("created Deb One ("), "{created}");
    let dirs = machine_dirs(&dir);
    assert_eq!(dirs.len(), 1, "one machine folder: {dirs:?}");
    let own = dirs[0].clone();
    let disk = std::fs::read(own.join("disk.raw")).unwrap();
    assert_eq!(disk.len(), 8 << 20);
    assert_eq!(&disk[1 << 20..(1 << 20) + 5], b"hello");

    let listed = ok(&dir, &["machine", "ls"]);
    assert!(
        listed.contains("\tDeb One\t2 vCPU\t1024 MiB\t1 disk(s)\t"),
        "{listed}"
    );

    let added = ok(
        &dir,
        &["machine", "add-disk", "deb one", "--new", "16", "--qcow2"],
    );
    let qcow = own.join("disk-1.qcow2");
    assert_eq!(
        added.trim(),
        format!("new 16.0 MiB qcow2 disk {}", qcow.display())
    );
    let grown = ok(
        &dir,
        &[
            "machine",
            "grow-disk",
            "Deb One",
            qcow.to_str().unwrap(),
            "32",
        ],
    );
    assert_eq!(grown.trim(), format!("grew {} to 32.0 MiB", qcow.display()));
    let shrink = hangar(
        &dir,
        &[
            "machine",
            "grow-disk",
            "Deb One",
            qcow.to_str().unwrap(),
            "8",
        ],
    );
    assert!(!shrink.status.success());
    let why = String::from_utf8_lossy(&shrink.stderr);
    assert!(
        why.contains(&format!("cannot grow {}: ", qcow.display())),
        "{why}"
    );

    // A copy shares the disks, so deleting the original keeps them.
    let copy = ok(&dir, &["machine", "duplicate", "Deb One"]);
    assert!(copy.contains("created Deb One (copy) ("), "{copy}");
    assert!(copy.contains("shares its 2 disk file(s)"), "{copy}");
    let deleted = ok(&dir, &["machine", "rm", "Deb One", "--with-disks"]);
    assert_eq!(deleted.trim(), "deleted Deb One");
    assert!(own.join("disk.raw").is_file() && qcow.is_file());

    // The copy's own delete takes nothing outside its (empty) folder.
    let deleted = ok(&dir, &["machine", "rm", "Deb One (copy)", "--with-disks"]);
    assert_eq!(deleted.trim(), "deleted Deb One (copy)");
    assert!(own.join("disk.raw").is_file(), "not the copy's own file");
    assert_eq!(ok(&dir, &["machine", "ls"]), "");

    let missing = hangar(&dir, &["machine", "rm", "nosuch"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("there is no machine \"nosuch\""));
}

#[test]
fn a_disk_too_small_for_the_template_leaves_nothing() {
    let dir = library_dir();
    let out = hangar(&dir, &["machine", "from-template", "Tiny", "--disk", "1"]);
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("too small for Debian 12"), "{why}");
    assert_eq!(ok(&dir, &["machine", "ls"]), "");
    assert!(machine_dirs(&dir).is_empty(), "{:?}", machine_dirs(&dir));
}
