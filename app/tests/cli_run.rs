//! `hangar run` with a screen: the real binary booting the `framebuffer`
//! test guest on this machine's /dev/kvm, typing on its PS/2 keyboard
//! (`--type`) and summing up its screen (`--screen-summary`); and the
//! argument checks. KVM tests skip, loudly, when /dev/kvm cannot be opened.

// Test code: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output, Stdio};

fn hangar(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn typed_text_reaches_the_guest_keyboard_and_the_screen_is_summed_up() {
    if !common::kvm_available() {
        return;
    }
    let kernel = common::guest("framebuffer");
    let out = hangar(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "64",
        "--display",
        "320x200",
        "--type",
        "aB\\e",
        "--screen-summary",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {stdout} stderr {stderr}"
    );
    // The guest saw its screen, then echoed the scancodes of a, Shift+B
    // and Escape, whose release ended it.
    assert_eq!(
        stdout, "fb 320x200 stride 1280 type 35\n1e 9e 2a 30 b0 aa 01 81 \n",
        "{stderr}"
    );
    // Drawn on: rows 4-11 (band 0), 60-67 (bands 3 and 4), 199 (band 12).
    assert!(
        stderr.contains("hangar: screen 320x200: 4 of 13 bands of 16 rows drawn on"),
        "{stderr}"
    );
}

#[test]
fn screen_options_are_checked_before_anything_runs() {
    let out = hangar(&["run", "--kernel", "/nonexistent", "--display", "100x100"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr.contains("100×100 screen is not possible"),
        "{stderr}"
    );

    let out = hangar(&["run", "--kernel", "/k", "--display", "wide"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("WIDTHxHEIGHT"));

    let out = hangar(&["run", "--kernel", "/k", "--display", "none", "--type", "x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("need a screen"));

    let out = hangar(&["run", "--kernel", "/k", "--type", "é"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no key types 'é'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = hangar(&["run", "--kernel", "/k", "--type", "\\q"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown escape \\q"));
}
