//! `hangar container run` as a user runs it: the real binary, a data
//! directory of its own (the default image is imported on first use from
//! the set-up script's build), output, exit codes and plain-words limits.
//! As root; without root the tests say so loudly and return.

// Test code: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = writeln!(
        std::io::stderr(),
        "*** SKIPPED: not root: {test} did not run (it runs containers as root) ***"
    );
    false
}

struct DataDir(PathBuf);

impl DataDir {
    /// A fresh data dir whose images-src is the real one.
    fn new(tag: &str) -> Self {
        let real = hangar_engine::kit::data_dir().unwrap().join("images-src");
        assert!(
            real.join("default/index.json").exists(),
            "{} is missing: run packaging/setup.sh",
            real.display()
        );
        let d = std::env::temp_dir().join(format!("hangar-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink(&real, d.join("images-src")).unwrap();
        DataDir(d)
    }

    fn hangar(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(args)
            .env("HANGAR_DATA_DIR", &self.0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn container_run_prints_output_and_returns_the_exit_code() {
    if !is_root() {
        return;
    }
    let d = DataDir::new("run");
    let out = d.hangar(
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
    let left: Vec<_> = std::fs::read_dir(d.0.join("containers")).unwrap().collect();
    assert!(left.is_empty(), "containers left: {left:?}");

    let out = d.hangar(
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
    let d = DataDir::new("oom");
    let out = d.hangar(
        &[
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
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{stderr}");
    assert!(
        stderr.contains("out of memory") && stderr.contains("16 MiB"),
        "{stderr}"
    );
    let out = d.hangar(&["container", "run", "no-such-image"], b"");
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-image"));
}
