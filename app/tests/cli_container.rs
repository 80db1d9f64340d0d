//! `hangar container run` as a user runs it: the real binary, a data
//! directory of its own (the default image is imported on first use from
//! the set-up script's build), output, exit codes and plain-words limits.
//! As root; without root the tests say so loudly and return.

// Test code: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{is_root, DataDir};

/// A 100 MiB buffer in a 16 MiB container: the OOM killer ends it.
const OOM_RUN: &[&str] = &[
    "container",
    "run",
    "--memory",
    "16",
    "default",
    "--",
    "dd",
    "if=/dev/zero",
    "of=/dev/null",
    "bs=100M",
    "count=1",
];

/// Runs the real `hangar` with `d` as its data directory, `stdin` as input.
fn hangar(d: &DataDir, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env("HANGAR_DATA_DIR", d.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn container_run_prints_output_and_returns_the_exit_code() {
    if !is_root() {
        return;
    }
    let d = DataDir::new();
    let out = hangar(
        &d,
        &[
            "container",
            "run",
            "default",
            "--",
            "sh",
            "-c",
            "echo hello; id; hostname; exit 5",
        ],
        b"",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(5),
        "stdout {stdout} stderr {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "hello");
    assert!(lines[1].starts_with("uid=0(root)"), "{stdout}");
    assert_eq!(lines[2].len(), 12, "hostname is the 12-digit id: {stdout}");
    // Nothing is left of the container.
    let left: Vec<_> = std::fs::read_dir(d.path().join("containers"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "containers left: {left:?}");

    let out = hangar(
        &d,
        &["container", "run", "default", "--", "tr", "a-z", "A-Z"],
        b"quiet\n",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "QUIET\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn container_run_says_which_limit_killed_it() {
    if !is_root() {
        return;
    }
    let d = DataDir::new();
    let out = hangar(&d, OOM_RUN, b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{stderr}");
    assert!(
        stderr.contains("out of memory") && stderr.contains("16 MiB"),
        "{stderr}"
    );
    let out = hangar(&d, &["container", "run", "no-such-image"], b"");
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-image"));
}

/// An unprivileged user for the rootless run.
const NOBODY: u32 = 65534;

#[test]
fn container_run_works_for_an_unprivileged_user() {
    if !is_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // What root prepares once for a user (the set-up script does it for
    // the user who ran it with sudo).
    let delegate =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/delegate-cgroup");
    assert!(Command::new(&delegate)
        .arg("nobody")
        .status()
        .unwrap()
        .success());
    // The user's own data directory, with the default image's source.
    let home = hangar_testkit::TempDir::new("cli-nobody");
    let home_path = home.path();
    let data = home_path.join("data");
    let real = hangar_engine::kit::data_dir()
        .unwrap()
        .join("images-src/default");
    std::fs::create_dir_all(data.join("images-src")).unwrap();
    assert!(Command::new("cp")
        .args(["-a", "--no-preserve=ownership"])
        .arg(&real)
        .arg(data.join("images-src/default"))
        .status()
        .unwrap()
        .success());
    std::fs::create_dir_all(home_path.join("run")).unwrap();
    assert!(Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(home_path)
        .status()
        .unwrap()
        .success());
    std::fs::set_permissions(home_path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(args)
            .env("HOME", home_path)
            .env("HANGAR_DATA_DIR", &data)
            .env("XDG_RUNTIME_DIR", home_path.join("run"))
            .current_dir(home_path)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&[
        "container",
        "run",
        "default",
        "--",
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; exit 3",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout} {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "0", "root inside: {stdout}");
    let map: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        map,
        ["0", "65534", "1"],
        "which is nobody outside: {stdout}"
    );
    let out = run(OOM_RUN);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{stderr}");
    assert!(stderr.contains("out of memory"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(data.join("containers"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "containers left: {left:?}");
}
